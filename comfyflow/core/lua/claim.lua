-- KEYS: job, events, stream   ARGV: attempt, worker, now, msg_id
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'msg_id', 'owner', 'id')
if not st[1] then return {'gone'} end
if st[1] ~= 'queued' or st[2] ~= ARGV[1] or st[3] ~= ARGV[4] then return {'stale', st[1], st[2]} end
if owner_full(KEYS[1], st[4]) then
  -- The owner runs as many jobs as its role allows: park this one (still queued, same attempt, message gone)
  -- until one of the owner's jobs stops running (lib.lua owner_release).
  ack(KEYS[1])
  redis.call('RPUSH', owner_key(KEYS[1], st[4], 'waiting'), st[5])
  redis.call('HSET', KEYS[1], 'progress', cjson.encode({value = 0, phase = 'waiting'}))
  emit(KEYS[2], 'status', {status = 'queued', attempt = tonumber(ARGV[1]), reason = 'owner_limit'})
  return {'deferred'}
end
if st[4] and st[4] ~= '' then redis.call('SADD', owner_key(KEYS[1], st[4], 'running'), st[5]) end
count(KEYS[1], 'running')
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[2], 'started_at', ARGV[3],
  'msg_stream', KEYS[3], 'msg_id', ARGV[4], 'progress', cjson.encode({value = 0, phase = 'starting'}))
emit(KEYS[2], 'status', {status = 'running', attempt = tonumber(ARGV[1])})
return {'ok'}
