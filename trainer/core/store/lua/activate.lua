-- KEYS: models, pointer. ARGV: version, channel.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[2], 'version', ARGV[1], 'pinned', 1)
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
