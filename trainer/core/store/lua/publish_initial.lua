-- The meta JSON arrives without its leading '{"version": N' since only the script knows N.
-- KEYS: version:last, models, pointer. ARGV: prefix, meta tail, weights, channel.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], 1)
redis.call('SET', ARGV[1] .. ':model:1:weights', ARGV[3])
redis.call('SET', ARGV[1] .. ':model:1:meta', '{"version": 1' .. ARGV[2])
redis.call('ZADD', KEYS[2], 1, 1)
redis.call('HSET', KEYS[3], 'version', 1, 'pinned', 0)
redis.call('PUBLISH', ARGV[4], 1)
return 1
