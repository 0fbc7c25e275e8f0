-- KEYS: job   ARGV: attempt, field/value pairs...
-- Notes about one attempt that may arrive after it ended (e.g. its Prefect flow run id): written only while the
-- job is still at that attempt, never touching its state.
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 'stale' end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 'ok'
