-- One submit, one round trip: rate limit, idempotency, admission, daily quota and the job itself, in one script. A crash (of the API or of Redis) leaves either nothing or everything: there is no
-- marker of a request in flight that could outlive its writer.
-- KEYS: job, notify, owner_jobs, events, idem_key, quota_key, ratelimit, batch_backlog, q:high, q:normal, q:low
-- ARGV: prefix, now, idem_fp ('' = none), idem_ttl, quota_limit (-1 = none), quota_ttl, max_depth (-1 = none),
--       rl_limit (-1 = none), rl_window_ms, rl_member, the job's field/value pairs as one JSON array of strings
-- Returns {outcome, rl_allowed (-1 = no limit), rl_remaining, rl_reset_ms, ...}: 'ok' msg,
-- 'existing' id job_pairs, 'mismatch' id, 'legacy' id (ask again with an untagged fingerprint), 'overloaded' depth,
-- 'quota' used, 'ratelimited', 'exists'.
local rl = {-1, 0, 0}
local rl_limit = tonumber(ARGV[8])
if rl_limit >= 0 then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local window = tonumber(ARGV[9])
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now_ms - window)
  local used = redis.call('ZCARD', KEYS[7])
  local allowed = 0
  if used < rl_limit then
    redis.call('ZADD', KEYS[7], now_ms, ARGV[10])
    used = used + 1
    allowed = 1
  end
  redis.call('PEXPIRE', KEYS[7], window)
  local oldest = redis.call('ZRANGE', KEYS[7], 0, 0, 'WITHSCORES')
  local reset = window
  if oldest[2] then reset = tonumber(oldest[2]) + window - now_ms end
  rl = {allowed, rl_limit - used, reset}
  if allowed == 0 then return {'ratelimited', rl[1], rl[2], rl[3]} end
end
local function reply(outcome, ...)
  return {outcome, rl[1], rl[2], rl[3], ...}
end
if ARGV[3] ~= '' then
  local cur = redis.call('GET', KEYS[5])
  if cur then
    local fp, id = string.match(cur, '^job:([^:]+):(.+)$')
    if fp == ARGV[3] then return reply('existing', id, redis.call('HGETALL', ARGV[1] .. ':job:' .. id)) end
    -- Recorded with an untagged fingerprint (before they carried a version, core/submission.py FINGERPRINT_TAG):
    -- the caller asks again with one of that kind.
    if fp and not string.find(fp, '.', 1, true) and string.find(ARGV[3], '.', 1, true) then
      return reply('legacy', id)
    end
    return reply('mismatch', id or '')
  end
end
local max_depth = tonumber(ARGV[7])
if max_depth >= 0 then
  -- Jobs waiting (not yet delivered to a worker), less the queued batch items, which have their own limit.
  local depth = 0
  for q = 9, 11 do
    local n = redis.call('XLEN', KEYS[q])
    if n > 0 then
      local p = redis.pcall('XPENDING', KEYS[q], GROUP)
      if type(p) == 'table' and not p.err then n = n - tonumber(p[1]) end
      depth = depth + math.max(0, n)
    end
  end
  depth = math.max(0, depth - tonumber(redis.call('GET', KEYS[8]) or '0'))
  if depth >= max_depth then return reply('overloaded', depth) end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return reply('exists') end
local limit = tonumber(ARGV[5])
if limit >= 0 then
  local used = tonumber(redis.call('GET', KEYS[6]) or '0')
  if used >= limit then return reply('quota', tostring(used)) end
  redis.call('INCR', KEYS[6])
  redis.call('EXPIRE', KEYS[6], tonumber(ARGV[6]))
end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[11])))
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
-- The caller has the hash: the fields it sent, and msg_stream and msg_id from the queue message.
return reply('ok', msg)
