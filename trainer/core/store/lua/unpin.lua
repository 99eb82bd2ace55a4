-- KEYS: models, pointer. ARGV: channel. Returns the newest version, or 0 when there is none.
local newest = redis.call('ZRANGE', KEYS[1], -1, -1)[1]
if newest then
  redis.call('HSET', KEYS[2], 'version', newest, 'pinned', 0)
else
  redis.call('HDEL', KEYS[2], 'version')
  redis.call('HSET', KEYS[2], 'pinned', 0)
  newest = 0
end
redis.call('PUBLISH', ARGV[1], newest)
return tonumber(newest)
