-- The seed's example Lua middleware, and the documentation of the contract.
-- Run it with:  deepseek-ollama-bridge --enable-luajit --luajit-script ./plugin.lua
--
-- The script runs in LuaJIT (2^P runtimes per worker, --luajit-instances-power P), with
-- the JIT compiler off so that every call can be held to --luajit-timeout (default
-- 1000 ms): a call past it answers 504, a Lua error answers 500 with its message. Each
-- runtime's memory is held to --luajit-max-memory (default 64 MiB): a call past it answers
-- 500 and its runtime starts afresh. `debug.sethook` is ignored. Both functions below
-- must exist (an empty body is fine): the bridge checks at start.
-- `print` writes to the bridge's log with the request id; `require` searches
-- --luajit-package-path (Lua modules) and --luajit-package-cpath (C modules such as
-- Debian's lua-cjson). Globals persist within one runtime, not across runtimes or workers.

-- HandleServerRequest(request) sees every request (but /health, /ready and /metrics)
-- before the key checks, the cache, the rate limit and the upstream:
--   request = { path = "/v1/chat/completions", method = "POST", query = "a=1",
--               headers = { ["content-type"] = "...", ... },  -- lower-case names,
--                                                             -- the client's own
--               body = "<raw request body>" }
-- returns:  true, request   -- go on with the (possibly changed) request: a changed body
--                           -- is what the cache keys on and the upstream receives; a
--                           -- changed header, path or query reaches the upstream
--      or:  false, { status_code = 403, body = "...", headers = {...} }  -- answer now
--                           -- (no cache, no upstream; HandleServerResponse still runs)
-- A path the bridge does not serve and the script lets through is a 404.
function HandleServerRequest(request)
    print("Lua middleware: " .. request.method .. " " .. request.path)
    request.headers["x-modified-by"] = "Lua-Middleware-Request"
    if request.path == "/blocked" then
        return false, {
            status_code = 403,
            headers = { ["content-type"] = "text/plain" },
            body = "Access denied by Lua middleware",
        }
    end
    return true, request
end

-- HandleServerResponse(response) sees every response the client gets (upstream answers,
-- cache hits, refusals, errors), after the think filter:
--   response = { status_code = 200, headers = { ... lower-case ... }, body = "...",
--                stream = false }
-- For a stream it is called before the first byte with body = nil and stream = true:
-- status and headers may change; a body returned then replaces the whole stream.
-- returns the (possibly changed) response: status, headers and body as the client gets them
function HandleServerResponse(response)
    response.headers["x-powered-by"] = "Lua-Middleware-Response"
    local content_type = response.headers["content-type"] or ""
    if response.body and content_type:find("text/plain", 1, true) then
        response.body = response.body .. "\n(Modified by Lua)"
    end
    return response
end

-- Optional: HandleStreamChunk(chunk, format) is called for each chunk of a stream, as it
-- passes, when the script defines it. `chunk` is the payload of one SSE event (without
-- "data: ", e.g. a JSON object or "[DONE]") or one NDJSON line; `format` is "sse" or
-- "ndjson". Return the chunk (changed or not), or nil to drop it.
-- function HandleStreamChunk(chunk, format) return chunk end
