-- Log a batch in the open period, then push each positive onto its user's recent-click list.
-- A user's first event of the period is logged with that list as it stood just before it
-- (field 'hist': the list's JSON entries as one JSON list, oldest first; field 'keep': the
-- list's length limit); their later events in the period carry an empty 'hist', since the
-- period's own events since then say how the list moved (Store.read_period rebuilds it).
-- KEYS: period. ARGV: prefix, history_length, then per event: user, item, cats, label, ts, click ("" if negative).
local period = redis.call('GET', KEYS[1]) or '1'
local stream = ARGV[1] .. ':log:' .. period
local seen = stream .. ':users'
local keep = tonumber(ARGV[2])
for i = 3, #ARGV, 6 do
  local clicks = ARGV[1] .. ':clicks:' .. ARGV[i]
  if keep > 0 and redis.call('SADD', seen, ARGV[i]) == 1 then
    local hist = '[' .. table.concat(redis.call('LRANGE', clicks, -keep, -1), ',') .. ']'
    redis.call('XADD', stream, '*', 'user', ARGV[i], 'item', ARGV[i + 1], 'cats', ARGV[i + 2],
               'label', ARGV[i + 3], 'ts', ARGV[i + 4], 'hist', hist, 'keep', keep)
  else
    redis.call('XADD', stream, '*', 'user', ARGV[i], 'item', ARGV[i + 1], 'cats', ARGV[i + 2],
               'label', ARGV[i + 3], 'ts', ARGV[i + 4], 'hist', '')
  end
  if ARGV[i + 5] ~= '' and keep > 0 then
    redis.call('RPUSH', clicks, ARGV[i + 5])
    redis.call('LTRIM', clicks, -keep, -1)
  end
end
return tonumber(period)
