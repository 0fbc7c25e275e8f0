-- KEYS: job, events   ARGV: attempt, worker ('*' = any), new_state, now, ttl, field/value pairs...
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'worker')
if st[1] ~= 'running' or st[2] ~= ARGV[1] or (ARGV[2] ~= '*' and st[3] ~= ARGV[2]) then
  return {'lost', st[1] or 'gone'}
end
local extra = nil
if #ARGV > 5 then extra = {unpack(ARGV, 6)} end
finish(KEYS[1], KEYS[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), extra)
return {'ok'}
