-- The seed's example Lua middleware (used with --enable-luajit, coming soon).
--
-- request:  { path = "/v1/chat/completions", method = "POST",
--             headers = { ["content-type"] = "...", ... },  -- lower-case names
--             body = "<raw request body>" }
-- returns:  true, request   -- go on, with the (possibly modified) request
--      or:  false, { status_code = 403, body = "...", headers = {...} }  -- answer now
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

-- response: { status_code = 200, headers = { ... lower-case ... }, body = "..." }
-- returns the (possibly modified) response
function HandleServerResponse(response)
    response.headers["x-powered-by"] = "Lua-Middleware-Response"
    local content_type = response.headers["content-type"] or ""
    if content_type:find("text/plain", 1, true) then
        response.body = response.body .. "\n(Modified by Lua)"
    end
    return response
end
