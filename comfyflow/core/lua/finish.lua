-- KEYS: job, events, retention   ARGV: attempt, worker ('*' = any), new_state, now, ttl, field/value pairs...
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'worker')
if st[1] ~= 'running' or st[2] ~= ARGV[1] or (ARGV[2] ~= '*' and st[3] ~= ARGV[2]) then
  return {'lost', st[1] or 'gone'}
end
local extra = nil
if #ARGV > 5 then extra = {unpack(ARGV, 6)} end
local ttl = tonumber(ARGV[5])
if ARGV[3] == 'succeeded' then
  -- Retention: the sweeper deletes the artifacts when this date passes; keep the record a week longer.
  local keep = tonumber(redis.call('HGET', KEYS[1], 'retention_s') or '')
  if keep and keep > 0 then
    redis.call('ZADD', KEYS[3], tonumber(ARGV[4]) + keep, redis.call('HGET', KEYS[1], 'id'))
    ttl = math.max(ttl, math.floor(keep) + 7 * 86400)
  end
end
finish(KEYS[1], KEYS[2], ARGV[3], ARGV[4], ttl, extra)
return {'ok'}
