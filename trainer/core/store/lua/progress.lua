-- KEYS: trainer:through, trainer:state, trainer:state:chunks. Returns {through or false, chunks...}:
-- one snapshot, however many chunks the state has.
local out = {redis.call('GET', KEYS[1]) or false}
local chunks = tonumber(redis.call('GET', KEYS[3]) or '1')
out[2] = redis.call('GET', KEYS[2]) or false
for i = 1, chunks - 1 do
  out[2 + i] = redis.call('GET', KEYS[2] .. ':' .. i)
end
return out
