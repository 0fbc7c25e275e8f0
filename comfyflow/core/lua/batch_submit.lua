-- Commit a staged batch: idempotency, the daily quota counted for every item, the batch record, its counts and
-- its run entry, in one short script (its cost does not grow with the batch's items). The items were staged
-- before (a hash of job id -> the job's fields as JSON, and the list of ids in order, both expiring): invisible
-- and unclaimable. After the commit, batch_release.lua turns them into queued jobs a chunk at a time; any
-- process may do that (the API that committed, or the batch's watcher if that API died). A crash before the
-- commit leaves nothing that lasts; after it, everything.
-- KEYS: batch, counts, owner_batches, quota_key, idem_key, backlog, runs, staging, order
-- ARGV: prefix, now, quota_limit (-1 = none), quota_ttl, idem_fp ('' = none), idem_ttl, n_items, staging_ttl,
--       batch field/value pairs...
local function drop() redis.call('UNLINK', KEYS[8], KEYS[9]) end
if ARGV[5] ~= '' then
  local cur = redis.call('GET', KEYS[5])
  if cur then
    drop()
    local fp, id = string.match(cur, '^batch:([^:]+):(.+)$')
    if fp == ARGV[5] then return {'existing', id} end
    return {'mismatch', id or ''}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then drop() return {'exists'} end
local n = tonumber(ARGV[7])
if redis.call('LLEN', KEYS[9]) ~= n or redis.call('HLEN', KEYS[8]) ~= n then drop() return {'incomplete'} end
local limit = tonumber(ARGV[3])
if limit >= 0 then
  local used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if used + n > limit then drop() return {'quota', tostring(used)} end
  redis.call('INCRBY', KEYS[4], n)
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[4]))
end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('HSET', KEYS[1], 'releasing', '1')
local bid = redis.call('HGET', KEYS[1], 'id')
-- Committed items are released by batch_release.lua; until then they wait here, without expiry.
redis.call('PERSIST', KEYS[8])
redis.call('PERSIST', KEYS[9])
redis.call('HSET', KEYS[2], 'queued', n)
redis.call('INCRBY', KEYS[6], n)
redis.call('ZADD', KEYS[3], ARGV[2], bid)
redis.call('ZADD', KEYS[7], 0, 'batch:' .. bid)
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[5], 'batch:' .. ARGV[5] .. ':' .. bid, 'EX', tonumber(ARGV[6]))
end
return {'ok', bid}
