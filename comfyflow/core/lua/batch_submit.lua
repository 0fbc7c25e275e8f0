-- A batch and all its items, in one script: idempotency, the daily quota counted for every item, each item a
-- normal queued job (as submit.lua makes one) with its batch recorded, the batch's counts, and its run entry.
-- A crash leaves either nothing or everything.
-- KEYS: batch, items, counts, notify, owner_jobs, owner_batches, quota_key, idem_key, backlog, runs
-- ARGV: prefix, now, quota_limit (-1 = none), quota_ttl, idem_fp ('' = none), idem_ttl, n_items,
--       n_batch_args, batch field/value pairs..., then per item: job_id, n_args, field/value pairs...
--       (every item's pairs include id, priority and the other job fields; see JobStore.job_fields)
local prefix, now = ARGV[1], ARGV[2]
if ARGV[5] ~= '' then
  local cur = redis.call('GET', KEYS[8])
  if cur then
    local fp, id = string.match(cur, '^batch:([^:]+):(.+)$')
    if fp == ARGV[5] then return {'existing', id} end
    return {'mismatch', id or ''}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
local n = tonumber(ARGV[7])
local limit = tonumber(ARGV[3])
if limit >= 0 then
  local used = tonumber(redis.call('GET', KEYS[7]) or '0')
  if used + n > limit then return {'quota', tostring(used)} end
  redis.call('INCRBY', KEYS[7], n)
  redis.call('EXPIRE', KEYS[7], tonumber(ARGV[4]))
end
local nb = tonumber(ARGV[8])
redis.call('HSET', KEYS[1], unpack(ARGV, 9, 8 + nb))
local bid = redis.call('HGET', KEYS[1], 'id')
local i = 9 + nb
local ids = {}
for _ = 1, n do
  local jid, na = ARGV[i], tonumber(ARGV[i + 1])
  local job = prefix .. ':job:' .. jid
  redis.call('HSET', job, unpack(ARGV, i + 2, i + 1 + na))
  i = i + 2 + na
  local priority = redis.call('HGET', job, 'priority')
  local stream = prefix .. ':q:' .. priority
  local msg = redis.call('XADD', stream, '*', 'job', jid, 'attempt', '1')
  redis.call('HSET', job, 'msg_stream', stream, 'msg_id', msg, 'batch', bid)
  redis.call('ZADD', KEYS[5], now, jid)
  emit(prefix .. ':ev:' .. jid, 'status', {status = 'queued', attempt = 1})
  fact(job, 'submit', false, now)
  if redis.call('HEXISTS', job, 'webhook') == 1 then redis.call('ZADD', prefix .. ':wh:jobs', now, jid) end
  ids[#ids + 1] = jid
  if #ids == 1000 then
    redis.call('RPUSH', KEYS[2], unpack(ids))
    ids = {}
  end
end
if #ids > 0 then redis.call('RPUSH', KEYS[2], unpack(ids)) end
redis.call('HSET', KEYS[3], 'queued', n)
redis.call('INCRBY', KEYS[9], n)
redis.call('ZADD', KEYS[6], now, bid)
redis.call('ZADD', KEYS[10], 0, 'batch:' .. bid)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100, '*', 'b', bid)
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[8], 'batch:' .. ARGV[5] .. ':' .. bid, 'EX', tonumber(ARGV[6]))
end
return {'ok', bid}
