-- Per-team model aliases: each team asks for a stable name ("chat", "coder"), the script
-- maps it to the model that team runs today, and refuses names it does not know.
-- The team comes from the X-Team header (in shared mode, set it at your proxy or derive
-- it from the client key's name instead). The rewritten body is what the cache keys on,
-- what shared mode checks against a client key's allowed models, and what the upstream
-- receives.
--   deepseek-ollama-bridge --enable-luajit --luajit-script examples/lua/model_aliases.lua
local cjson = require("cjson")

local ALIASES = {
    default = { chat = "qwen2.5", coder = "deepseek-coder" },
    research = { chat = "deepseek-r1:7b", coder = "deepseek-coder" },
}

local MODEL_PATHS = {
    ["/v1/chat/completions"] = true, ["/v1/completions"] = true,
    ["/api/chat"] = true, ["/api/generate"] = true,
}

local function refuse(request, message)
    local body
    if request.path:sub(1, 5) == "/api/" then
        body = cjson.encode({ error = message })
    else
        body = cjson.encode({ error = { message = message, type = "invalid_request_error",
                                        param = "model", code = "model_not_found" } })
    end
    return false, { status_code = 404, headers = { ["content-type"] = "application/json" },
                    body = body }
end

function HandleServerRequest(request)
    if not MODEL_PATHS[request.path] then return true, request end
    local ok, payload = pcall(cjson.decode, request.body)
    if not ok or type(payload) ~= "table" or type(payload.model) ~= "string" then
        return true, request  -- the bridge answers a malformed body itself
    end
    local team = request.headers["x-team"] or "default"
    local aliases = ALIASES[team] or ALIASES.default
    local model = aliases[payload.model]
    if model == nil then
        return refuse(request, "unknown model alias '" .. payload.model .. "' for team '"
                      .. team .. "'")
    end
    payload.model = model
    request.body = cjson.encode(payload)
    request.headers["x-model-alias"] = team .. "/" .. model
    return true, request
end

function HandleServerResponse(response)
    return response
end
