-- KEYS: job, events, stream   ARGV: attempt, worker, now, msg_id
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'msg_id')
if not st[1] then return {'gone'} end
if st[1] ~= 'queued' or st[2] ~= ARGV[1] or st[3] ~= ARGV[4] then return {'stale', st[1], st[2]} end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[2], 'started_at', ARGV[3],
  'msg_stream', KEYS[3], 'msg_id', ARGV[4], 'progress', cjson.encode({value = 0, phase = 'starting'}))
emit(KEYS[2], 'status', {status = 'running', attempt = tonumber(ARGV[1])})
return {'ok'}
