"""The think filter: reasoning removed from answers, streamed or whole, and from the
history clients send back (the rule itself lives in `bridge.core.reasoning`)."""
