-- Shared helpers, prepended to every script. Job hashes keep every field as a string.
local GROUP = 'workers'

local function emit(evkey, etype, data)
  redis.call('XADD', evkey, 'MAXLEN', '~', 2000, '*', 'type', etype, 'data', cjson.encode(data))
end

-- A batch item moves to state ``to``: keep its batch's counts by state, and the number of queued batch items
-- (keys.py: batch_counts, batch_backlog), in step with the job. Call just before the job's state is written.
local function count(job, to)
  local st = redis.call('HMGET', job, 'batch', 'state')
  if not st[1] or st[1] == '' or st[2] == to then return end
  local prefix = string.match(job, '^(.*):job:[^:]*$')
  local counts = prefix .. ':batch:' .. st[1] .. ':counts'
  if redis.call('EXISTS', counts) == 1 then  -- not after the batch's records expired
    if st[2] then redis.call('HINCRBY', counts, st[2], -1) end
    redis.call('HINCRBY', counts, to, 1)
  end
  if st[2] == 'queued' then redis.call('DECR', prefix .. ':batches:queued') end
  if to == 'queued' then redis.call('INCR', prefix .. ':batches:queued') end
end

-- Acknowledge and delete the job's current queue message, if any.
local function ack(job)
  local m = redis.call('HMGET', job, 'msg_stream', 'msg_id')
  if m[1] and m[2] and m[2] ~= '' then
    redis.call('XACK', m[1], GROUP, m[2])
    redis.call('XDEL', m[1], m[2])
  end
  redis.call('HSET', job, 'msg_id', '')
end

local function enqueue(job, prefix, notify, jid, attempt, priority)
  local stream = prefix .. ':q:' .. priority
  local msg = redis.call('XADD', stream, '*', 'job', jid, 'attempt', tostring(attempt))
  redis.call('HSET', job, 'msg_stream', stream, 'msg_id', msg)
  redis.call('XADD', notify, 'MAXLEN', '~', 100, '*', 'j', jid)
  return msg
end

-- A fact for the metrics, recorded atomically with the transition; comfyflow/core/recorder.py folds the list
-- into the fleet's counters. JSON array: kind, detail, id, attempt, role, size, priority, created_at,
-- render_started_at, render_finished_at, now, error code.
local function fact(job, kind, detail, now)
  local f = redis.call('HMGET', job, 'id', 'attempt', 'role', 'size', 'priority', 'created_at',
    'render_started_at', 'render_finished_at', 'error')
  local code = f[9] and string.match(f[9], '^{"code":"([^"]*)"') or false
  local prefix = string.match(job, '^(.*):job:[^:]*$')
  redis.call('RPUSH', prefix .. ':metrics:facts', cjson.encode({kind, detail or false, f[1], f[2], f[3], f[4],
    f[5], f[6], f[7], f[8], now or false, code}))
end

-- Per-owner running limit (the role's concurrent_jobs). Keys mirror comfyflow/core/keys.py: <prefix>:owner:<owner>:
-- limits (hash: max_running, written by the API), :running (set of the owner's running job ids), :waiting (list of
-- job ids parked at the limit: still queued, same attempt, on no stream until one of the owner's jobs stops).
local function owner_key(job, owner, suffix)
  return string.match(job, '^(.-):job:') .. ':owner:' .. owner .. ':' .. suffix
end

local function owner_limit(job, owner)
  return tonumber(redis.call('HGET', owner_key(job, owner, 'limits'), 'max_running') or '')
end

-- Whether the owner runs as many jobs as its limit allows. Forgets members that no longer run (self-healing).
local function owner_full(job, owner)
  if not owner or owner == '' then return false end
  local limit = owner_limit(job, owner)
  if not limit then return false end
  local prefix = string.match(job, '^(.-):job:')
  local running = owner_key(job, owner, 'running')
  for _, jid in ipairs(redis.call('SMEMBERS', running)) do
    if redis.call('HGET', prefix .. ':job:' .. jid, 'state') ~= 'running' then redis.call('SREM', running, jid) end
  end
  return redis.call('SCARD', running) >= limit
end

-- Put the owner's parked jobs back on their queues, as many as it has free running slots.
local function owner_wake(job, owner)
  local prefix = string.match(job, '^(.-):job:')
  local waiting = owner_key(job, owner, 'waiting')
  local free = (owner_limit(job, owner) or 1000) - redis.call('SCARD', owner_key(job, owner, 'running'))
  while free > 0 do
    local jid = redis.call('LPOP', waiting)
    if not jid then return end
    local jk = prefix .. ':job:' .. jid
    local st = redis.call('HMGET', jk, 'state', 'attempt', 'priority', 'msg_id')
    -- Skip jobs canceled (or retried onto a queue) while parked.
    if st[1] == 'queued' and (st[4] or '') == '' and not redis.call('ZSCORE', prefix .. ':delayed', jid) then
      enqueue(jk, prefix, prefix .. ':notify', jid, tonumber(st[2]), st[3])
      free = free - 1
    end
  end
end

-- The job left the running state or the queue (finished, canceled, or given up for another attempt): free its
-- owner's slot and wake parked jobs. Call after the job's new state is written, so it never wakes itself.
local function owner_release(job)
  local st = redis.call('HMGET', job, 'owner', 'id')
  if not st[1] or st[1] == '' then return end
  redis.call('SREM', owner_key(job, st[1], 'running'), st[2])
  -- Also when a woken job is canceled before it ran: its turn passes to the next parked job.
  if redis.call('LLEN', owner_key(job, st[1], 'waiting')) > 0 then owner_wake(job, st[1]) end
end

local function finish(job, evkey, state, now, ttl, extra)
  ack(job)
  count(job, state)
  redis.call('HSET', job, 'state', state, 'finished_at', now, 'worker', '')
  if state ~= 'succeeded' then  -- a canceled or failed job is not left "rendering": its phase is its end
    local ok, p = pcall(cjson.decode, redis.call('HGET', job, 'progress') or '{}')
    redis.call('HSET', job, 'progress', cjson.encode({value = (ok and type(p) == 'table' and p.value) or 0, phase = state}))
  end
  owner_release(job)
  if extra then redis.call('HSET', job, unpack(extra)) end
  local attempt = tonumber(redis.call('HGET', job, 'attempt'))
  emit(evkey, 'done', {status = state, attempt = attempt})
  redis.call('EXPIRE', job, ttl)
  redis.call('EXPIRE', evkey, ttl)
  fact(job, 'finish', state, now)
end

-- Give a running attempt up: next attempt (maybe after a delay), or final failure, or canceled.
-- Returns {outcome, attempt}.
-- ``free``: the attempt was released (its worker shut down), not failed: it does not use up one of the job's
-- attempts (the budget grows by one, so attempt numbers still only increase).
local function requeue(job, evkey, delayed, notify, prefix, now, delay_ms, err_retry, err_final, ttl, reason, free)
  local st = redis.call('HMGET', job, 'attempt', 'cancel', 'max_attempts', 'priority', 'id')
  local attempt = tonumber(st[1])
  if st[2] == '1' then
    finish(job, evkey, 'canceled', now, ttl, nil)
    return {'canceled', attempt}
  end
  if free then
    redis.call('HINCRBY', job, 'max_attempts', 1)
  elseif attempt >= tonumber(st[3]) then
    finish(job, evkey, 'failed', now, ttl, {'error', err_final})
    return {'failed', attempt}
  end
  ack(job)
  attempt = attempt + 1
  count(job, 'queued')
  redis.call('HSET', job, 'state', 'queued', 'attempt', tostring(attempt), 'worker', '', 'last_error', err_retry,
    'progress', cjson.encode({value = 0, phase = 'retrying'}))
  owner_release(job)
  if delay_ms > 0 then
    local due = tonumber(now) * 1000 + delay_ms
    redis.call('ZADD', delayed, due, st[5])
    redis.call('HSET', job, 'not_before', tostring(due / 1000))
  else
    enqueue(job, prefix, notify, st[5], attempt, st[4])
  end
  emit(evkey, 'status', {status = 'queued', attempt = attempt, reason = reason})
  fact(job, 'retry', reason, now)
  return {'queued', attempt}
end
