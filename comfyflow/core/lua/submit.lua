-- KEYS: job, notify, owner_jobs, events   ARGV: prefix, now, field/value pairs...
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
local st = redis.call('HMGET', KEYS[1], 'id', 'priority')
local msg = enqueue(KEYS[1], ARGV[1], KEYS[2], st[1], 1, st[2])
redis.call('ZADD', KEYS[3], ARGV[2], st[1])
emit(KEYS[4], 'status', {status = 'queued', attempt = 1})
return {'ok', msg}
