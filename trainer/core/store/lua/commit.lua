-- KEYS: trainer:through, trainer:state, version:last, models, pointer, trainer:state:chunks.
-- ARGV: prefix, trained_through, meta tail, weights, keep, channel, then the trainer state's chunks.
-- Returns {1, version} or {0, current trained_through}.
local through = tonumber(redis.call('GET', KEYS[1]) or '0')
local target = tonumber(ARGV[2])
if target ~= through + 1 then
  return {0, through}
end
local n = redis.call('INCR', KEYS[3])
redis.call('SET', ARGV[1] .. ':model:' .. n .. ':weights', ARGV[4])
redis.call('SET', ARGV[1] .. ':model:' .. n .. ':meta', '{"version": ' .. n .. ARGV[3])
redis.call('ZADD', KEYS[4], n, n)
redis.call('SET', KEYS[1], target)
local chunks = #ARGV - 6
local before = tonumber(redis.call('GET', KEYS[6]) or '1')
redis.call('SET', KEYS[2], ARGV[7])
for i = 1, chunks - 1 do
  redis.call('SET', KEYS[2] .. ':' .. i, ARGV[7 + i])
end
for i = chunks, before - 1 do
  redis.call('DEL', KEYS[2] .. ':' .. i)
end
if chunks > 1 then
  redis.call('SET', KEYS[6], chunks)
else
  redis.call('DEL', KEYS[6])
end
if redis.call('HGET', KEYS[5], 'pinned') ~= '1' then
  redis.call('HSET', KEYS[5], 'version', n, 'pinned', 0)
end
local pointed = tonumber(redis.call('HGET', KEYS[5], 'version'))
local excess = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[5])
if excess > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[4], 0, excess - 1)) do
    if tonumber(old) ~= pointed then
      redis.call('DEL', ARGV[1] .. ':model:' .. old .. ':weights', ARGV[1] .. ':model:' .. old .. ':meta')
      redis.call('ZREM', KEYS[4], old)
    end
  end
end
redis.call('PUBLISH', ARGV[6], n)
return {1, n}
