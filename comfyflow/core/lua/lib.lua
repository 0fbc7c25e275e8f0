-- Shared helpers, prepended to every script. Job hashes keep every field as a string.
local GROUP = 'workers'

local function emit(evkey, etype, data)
  redis.call('XADD', evkey, 'MAXLEN', '~', 2000, '*', 'type', etype, 'data', cjson.encode(data))
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

local function finish(job, evkey, state, now, ttl, extra)
  ack(job)
  redis.call('HSET', job, 'state', state, 'finished_at', now, 'worker', '')
  if extra then redis.call('HSET', job, unpack(extra)) end
  local attempt = tonumber(redis.call('HGET', job, 'attempt'))
  emit(evkey, 'done', {status = state, attempt = attempt})
  redis.call('EXPIRE', job, ttl)
  redis.call('EXPIRE', evkey, ttl)
end

-- Give a running attempt up: next attempt (maybe after a delay), or final failure, or canceled.
-- Returns {outcome, attempt}.
local function requeue(job, evkey, delayed, notify, prefix, now, delay_ms, err_retry, err_final, ttl, reason)
  local st = redis.call('HMGET', job, 'attempt', 'cancel', 'max_attempts', 'priority', 'id')
  local attempt = tonumber(st[1])
  if st[2] == '1' then
    finish(job, evkey, 'canceled', now, ttl, nil)
    return {'canceled', attempt}
  end
  if attempt >= tonumber(st[3]) then
    finish(job, evkey, 'failed', now, ttl, {'error', err_final})
    return {'failed', attempt}
  end
  ack(job)
  attempt = attempt + 1
  redis.call('HSET', job, 'state', 'queued', 'attempt', tostring(attempt), 'worker', '', 'last_error', err_retry,
    'progress', cjson.encode({value = 0, phase = 'retrying'}))
  if delay_ms > 0 then
    local due = tonumber(now) * 1000 + delay_ms
    redis.call('ZADD', delayed, due, st[5])
    redis.call('HSET', job, 'not_before', tostring(due / 1000))
  else
    enqueue(job, prefix, notify, st[5], attempt, st[4])
  end
  emit(evkey, 'status', {status = 'queued', attempt = attempt, reason = reason})
  return {'queued', attempt}
end
