-- A local module for examples/lua/json_plugin.lua, found through --luajit-package-path.
local utils = {}

-- The number of entries of a table (pairs, not only the array part).
function utils.count(tbl)
    local n = 0
    for _ in pairs(tbl) do n = n + 1 end
    return n
end

return utils
