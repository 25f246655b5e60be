-- The test script of tests/lua/test_lua.py: one behaviour per path or model.
local cjson = require("cjson")
local utils = require("utils")

function HandleServerRequest(request)
    print("seen " .. request.method .. " " .. request.path)
    if request.path == "/boom" then error("the script broke on purpose") end
    if request.path == "/spin" then while true do end end
    if request.path == "/spin-pcall" then  -- tries to swallow its time-out
        while true do pcall(function() while true do end end) end
    end
    if request.path == "/info" then
        return false, {
            status_code = 200, headers = { ["content-type"] = "application/json" },
            body = cjson.encode({ headers = utils.count(request.headers),
                                  nested = { list = { 1, 2, 3 }, name = "lua" } }),
        }
    end
    if request.path == "/echo-header" then  -- a request header's bytes, as a response header
        return false, { status_code = 200, headers = { ["x-echo"] = request.headers["x-utf"] },
                        body = "echoed" }
    end
    if request.path == "/split-header" then  -- a value that would inject a second header
        return false, { status_code = 200, headers = { ["x-split"] = "a\r\nx-injected: 1" } }
    end
    if request.path == "/v1/renamed-tags" then request.path = "/api/tags" end
    if request.body:find('"house-model', 1, true) then
        local payload = cjson.decode(request.body)
        payload.model = "qwen2.5"
        request.body = cjson.encode(payload)
    end
    request.headers["x-lua-request"] = "yes"
    return true, request
end

function HandleServerResponse(response)
    response.headers["x-lua-stream"] = tostring(response.stream)
    response.headers["x-lua-body-nil"] = tostring(response.body == nil)
    if response.body and response.status_code == 200 then
        response.body = response.body:gsub("Echo:", "Lua-echo:")
    end
    return response
end

function HandleStreamChunk(chunk, format)
    return (chunk:gsub("Echo", "Lua-" .. format))
end
