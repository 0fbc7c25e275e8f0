-- Retention: a succeeded job whose artifacts were deleted becomes expired. Any other state just leaves the set.
-- KEYS: job, events, retention   ARGV: job_id, now, ttl
redis.call('ZREM', KEYS[3], ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'succeeded' then return state or 'gone' end
count(KEYS[1], 'expired')
redis.call('HSET', KEYS[1], 'state', 'expired', 'expired_at', ARGV[2])
emit(KEYS[2], 'status', {status = 'expired'})
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return 'expired'
