-- KEYS: job, events, delayed, control   ARGV: now, ttl
local st = redis.call('HMGET', KEYS[1], 'state', 'id')
if not st[1] then return 'gone' end
if st[1] == 'queued' then
  redis.call('ZREM', KEYS[3], st[2])
  finish(KEYS[1], KEYS[2], 'canceled', ARGV[1], tonumber(ARGV[2]), nil)
  return 'canceled'
end
if st[1] == 'running' then
  if redis.call('HGET', KEYS[1], 'cancel') ~= '1' then
    redis.call('HSET', KEYS[1], 'cancel', '1')
    emit(KEYS[2], 'status', {status = 'running', cancel_requested = true})
  end
  redis.call('PUBLISH', KEYS[4], st[2])
  return 'requested'
end
return st[1]
