-- KEYS: trainer:through, logs:dropped. ARGV: prefix, through.
-- Returns {1, periods deleted} or {0, trained_through} when ``through`` is not trained yet.
local trained = tonumber(redis.call('GET', KEYS[1]) or '0')
local target = tonumber(ARGV[2])
if target > trained then
  return {0, trained}
end
local dropped = tonumber(redis.call('GET', KEYS[2]) or '0')
local deleted = 0
for period = dropped + 1, target do
  deleted = deleted + redis.call('DEL', ARGV[1] .. ':log:' .. period)
  redis.call('DEL', ARGV[1] .. ':log:' .. period .. ':users')
end
if target > dropped then
  redis.call('SET', KEYS[2], target)
end
return {1, deleted}
