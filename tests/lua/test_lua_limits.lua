-- The test script of tests/lua/test_lua_limits.py: scripts that try to get out of the
-- bridge's limits (time, memory), one per path.
grown = {}  -- global: what a runaway request piles up stays in its runtime

function HandleServerRequest(request)
    if request.path == "/unhook-spin" then  -- removes the time hook, then never ends
        debug.sethook()
        while true do end
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
    return response
end
