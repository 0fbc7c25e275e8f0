-- KEYS: job, events, notify   ARGV: prefix, fresh_attempts, flow_run_id ('' = none)
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'id', 'priority')
if not st[1] then return {'gone'} end
if st[1] ~= 'failed' and st[1] ~= 'canceled' then return {'state', st[1]} end
local attempt = tonumber(st[2]) + 1
count(KEYS[1], 'queued')
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempt', tostring(attempt), 'cancel', '0', 'error', '',
  'result', '', 'finished_at', '', 'started_at', '', 'render_started_at', '', 'render_finished_at', '',
  'max_attempts', tostring(attempt + tonumber(ARGV[2]) - 1), 'retry_flow_run_id', ARGV[3],
  'progress', cjson.encode({value = 0, phase = 'queued'}))
if st[1] == 'canceled' then
  -- The canceled attempt's prompt was interrupted (or is being): never adopt it, render afresh.
  redis.call('HSET', KEYS[1], 'prompts', '')
end
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
enqueue(KEYS[1], ARGV[1], KEYS[3], st[3], attempt, st[4])
emit(KEYS[2], 'status', {status = 'queued', attempt = attempt, reason = 'retry'})
if redis.call('HEXISTS', KEYS[1], 'webhook') == 1 then
  redis.call('ZADD', ARGV[1] .. ':wh:jobs', tonumber(redis.call('HGET', KEYS[1], 'created_at') or '0'), st[3])
end
return {'queued', attempt}
