"""The LuaJIT middleware: the operator's script sees every request and response."""
