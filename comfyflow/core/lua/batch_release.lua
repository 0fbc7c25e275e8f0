-- Release the next chunk of a committed batch's staged items: each becomes a normal queued job (as submit.lua
-- makes one) with its batch recorded, in submission order. Safe to run from several processes at once (each
-- chunk is popped atomically). The batch's counts were set at the commit.
-- A chunk also ends once the script has run ``budget_ms`` (its unreleased ids go back to the front of the order),
-- so it blocks Redis about that long even on a starved CPU.
-- KEYS: batch, staging, order, items, notify
-- ARGV: prefix, count, budget_ms
-- Returns the number of items still staged (0: the batch is fully released), or -1 when it is not committed.
if redis.call('HEXISTS', KEYS[1], 'id') == 0 then return -1 end
local ids = redis.call('LPOP', KEYS[3], tonumber(ARGV[2]))
if not ids then
  redis.call('HDEL', KEYS[1], 'releasing')
  redis.call('UNLINK', KEYS[2])
  return 0
end
local prefix = ARGV[1]
local b = redis.call('HMGET', KEYS[1], 'id', 'created_at', 'owner')
local bid, now = b[1], b[2]
local owner_jobs = prefix .. ':owner:' .. b[3] .. ':jobs'
local blobs = redis.call('HMGET', KEYS[2], unpack(ids))
local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local deadline = clock_ms() + tonumber(ARGV[3])
local released = {}
local done = #ids
for i, jid in ipairs(ids) do
  if i % 10 == 0 and i < #ids and clock_ms() >= deadline then
    done = i - 1
    for j = #ids, i, -1 do redis.call('LPUSH', KEYS[3], ids[j]) end
    break
  end
  if blobs[i] then
    local job = prefix .. ':job:' .. jid
    redis.call('HSET', job, unpack(cjson.decode(blobs[i])))
    local priority = redis.call('HGET', job, 'priority')
    local stream = prefix .. ':q:' .. priority
    local msg = redis.call('XADD', stream, '*', 'job', jid, 'attempt', '1')
    redis.call('HSET', job, 'msg_stream', stream, 'msg_id', msg, 'batch', bid)
    redis.call('ZADD', owner_jobs, now, jid)
    emit(prefix .. ':ev:' .. jid, 'status', {status = 'queued', attempt = 1})
    fact(job, 'submit', false, now)
    if redis.call('HEXISTS', job, 'webhook') == 1 then redis.call('ZADD', prefix .. ':wh:jobs', now, jid) end
    released[#released + 1] = jid
  end
end
if #released > 0 then redis.call('RPUSH', KEYS[4], unpack(released)) end
redis.call('HDEL', KEYS[2], unpack(ids, 1, done))
redis.call('XADD', KEYS[5], 'MAXLEN', '~', 100, '*', 'b', bid)
local left = redis.call('LLEN', KEYS[3])
if left == 0 then
  redis.call('HDEL', KEYS[1], 'releasing')
  redis.call('UNLINK', KEYS[2])
end
return left
