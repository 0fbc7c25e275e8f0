-- Renew (or give up) a runner's lease on a batch or pipeline run; 'lost' when another runner holds it now.
-- KEYS: runs, record   ARGV: member, runner, now_ms, lease_ms, mode ('beat' | 'release' | 'done')
if redis.call('HGET', KEYS[2], 'runner') ~= ARGV[2] then return 'lost' end
if ARGV[5] == 'beat' then
  redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
elseif ARGV[5] == 'release' then
  -- Let another runner take it at once (this one is shutting down).
  redis.call('ZADD', KEYS[1], 'XX', 0, ARGV[1])
  redis.call('HSET', KEYS[2], 'runner', '')
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HSET', KEYS[2], 'runner', '')
end
return 'ok'
