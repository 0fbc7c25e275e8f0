-- Idempotency, daily quota and enqueue, in one script: a crash leaves either nothing or everything.
-- KEYS: job, notify, owner_jobs, events, idem_key, quota_key
-- ARGV: prefix, now, idem_fp ('' = none), idem_ttl, quota_limit (-1 = none), quota_ttl, field/value pairs...
if ARGV[3] ~= '' then
  local cur = redis.call('GET', KEYS[5])
  if cur and string.sub(cur, 1, 4) == 'job:' then
    local fp, id = string.match(cur, '^job:([^:]+):(.+)$')
    if fp == ARGV[3] then return {'existing', id} end
    return {'mismatch', id}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
local limit = tonumber(ARGV[5])
if limit >= 0 then
  local used = tonumber(redis.call('GET', KEYS[6]) or '0')
  if used >= limit then return {'quota', tostring(used)} end
  redis.call('INCR', KEYS[6])
  redis.call('EXPIRE', KEYS[6], tonumber(ARGV[6]))
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
local st = redis.call('HMGET', KEYS[1], 'id', 'priority')
local msg = enqueue(KEYS[1], ARGV[1], KEYS[2], st[1], 1, st[2])
redis.call('ZADD', KEYS[3], ARGV[2], st[1])
emit(KEYS[4], 'status', {status = 'queued', attempt = 1})
fact(KEYS[1], 'submit', false, ARGV[2])
-- A job with a webhook is watched for notifications while it is live (comfyflow/core/webhooks/).
if redis.call('HEXISTS', KEYS[1], 'webhook') == 1 then redis.call('ZADD', ARGV[1] .. ':wh:jobs', ARGV[2], st[1]) end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[5], 'job:' .. ARGV[3] .. ':' .. st[1], 'EX', tonumber(ARGV[4]))
end
return {'ok', msg}
