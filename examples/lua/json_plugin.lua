-- The seed's second example: a C module (Debian's lua-cjson) and a local Lua module.
--   apt-get install lua-cjson
--   deepseek-ollama-bridge --enable-luajit --luajit-script examples/lua/json_plugin.lua \
--       --luajit-package-path 'examples/lua/?.lua'
-- (Debian's /usr/lib/<arch>/lua/5.1 is searched for C modules by default;
-- --luajit-package-cpath adds other directories.)
local cjson = require("cjson")
local utils = require("utils")

function HandleServerRequest(request)
    -- answers /lua/info itself with a nested table encoded as JSON
    if request.path == "/lua/info" then
        local info = {
            middleware = { name = "json_plugin", modules = { "cjson", "utils" } },
            request = { method = request.method, header_count = utils.count(request.headers) },
        }
        return false, {
            status_code = 200,
            headers = { ["content-type"] = "application/json" },
            body = cjson.encode(info),
        }
    end
    return true, request
end

function HandleServerResponse(response)
    return response
end
