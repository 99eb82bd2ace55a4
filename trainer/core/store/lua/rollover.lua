-- KEYS: period. ARGV: prefix. Returns the closed period, or minus the open one when it is empty.
local period = tonumber(redis.call('GET', KEYS[1]) or '1')
if redis.call('XLEN', ARGV[1] .. ':log:' .. period) == 0 then
  return -period
end
redis.call('SET', KEYS[1], period + 1)
local now = redis.call('TIME')
redis.call('SET', KEYS[1] .. ':opened', now[1] .. '.' .. string.format('%06d', tonumber(now[2])))
return period
