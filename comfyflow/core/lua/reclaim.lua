-- A queue message whose consumer went silent (found by XAUTOCLAIM).
-- KEYS: job, events, delayed, notify, stream
-- ARGV: msg_id, msg_attempt, prefix, now, err_retry, err_final, ttl
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'msg_id', 'id', 'priority')
local function drop()
  redis.call('XACK', KEYS[5], GROUP, ARGV[1])
  redis.call('XDEL', KEYS[5], ARGV[1])
end
if not st[1] then drop() return {'gone'} end
if st[2] ~= ARGV[2] or st[3] ~= ARGV[1] then drop() return {'stale'} end
if st[1] == 'queued' then
  -- Read but never claimed: the reader died in between. Deliver it again.
  drop()
  enqueue(KEYS[1], ARGV[3], KEYS[4], st[4], tonumber(st[2]), st[5])
  return {'redelivered'}
end
if st[1] ~= 'running' then drop() return {'terminal'} end
return requeue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[3], ARGV[4], 0, ARGV[5], ARGV[6], tonumber(ARGV[7]),
  'lease expired')
