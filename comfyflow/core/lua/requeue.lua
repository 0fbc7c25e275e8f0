-- KEYS: job, events, delayed, notify
-- ARGV: attempt, worker, prefix, now, delay_ms, err_retry, err_final, ttl, reason, free ('1': a release)
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'worker')
if st[1] ~= 'running' or st[2] ~= ARGV[1] or st[3] ~= ARGV[2] then return {'lost', st[1] or 'gone'} end
return requeue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7],
  tonumber(ARGV[8]), ARGV[9], ARGV[10] == '1')
