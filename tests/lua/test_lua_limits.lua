-- The test script of tests/lua/test_lua_limits.py: scripts that try to get out of the
-- bridge's limits (time, memory), one per path.
grown = {}  -- global: what a runaway request piles up stays in its runtime

-- What a C module could do behind debug's back: clear LuaJIT's hook (one per Lua state)
-- through the C API, given any of the state's threads.
local ffi = require("ffi")
ffi.cdef("int lua_sethook(void *L, void *f, int mask, int count);")
local function clear_hook()
    local thread = tostring(coroutine.create(function() end)):match("0x(%x+)")
    ffi.C.lua_sethook(ffi.cast("void *", tonumber(thread, 16)), nil, 0, 0)
end

function HandleServerRequest(request)
    if request.path == "/unhook-spin" then  -- removes the time hook, then never ends
        debug.sethook()
        while true do end
    end
    if request.path == "/spin" then while true do end end
    if request.path == "/ffi-unhook" then  -- returns normally, its runtime without the hook
        clear_hook()
        return false, { status_code = 200, headers = { ["x-unhook"] = "yes" }, body = "ok" }
    end
    if request.path == "/disarm-spin" then  -- replaces what the hook raises with
        error = function() end
        while true do end
    end
    if request.path == "/grow" then  -- piles up memory without end
        while true do grown[#grown + 1] = string.rep("x", 100000) .. #grown end
    end
    if request.path == "/grow-pcall" then  -- and tries to swallow its out-of-memory error
        while true do
            pcall(function()
                while true do grown[#grown + 1] = string.rep("x", 100000) .. #grown end
            end)
        end
    end
    return true, request
end

function HandleServerResponse(response)
    if response.headers["x-unhook"] then clear_hook() end  -- this runtime too
    return response
end
