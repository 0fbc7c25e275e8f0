-- One health observation of one backend, with hysteresis. Returns {health, changed (0/1), previous health}.
-- KEYS[1]: the backend's state hash; KEYS[2]: the pool's version counter (bumped when a health changes)
-- ARGV: kind ("ok" probe passed, "fail" probe failed, "passive" a job saw it fail, "quarantine"),
--       now (s), down_after, up_after, url, latency_s, queue_remaining, detail
local h = KEYS[1]
local kind, now = ARGV[1], ARGV[2]
local down_after, up_after = tonumber(ARGV[3]), tonumber(ARGV[4])
local old = redis.call('HGET', h, 'health') or 'unknown'
local fails = tonumber(redis.call('HGET', h, 'fails') or '0')
local oks = tonumber(redis.call('HGET', h, 'oks') or '0')
local new = old
if kind == 'ok' then
  fails, oks = 0, oks + 1
  if old == 'unknown' or (old ~= 'up' and oks >= up_after) then new = 'up' end
elseif kind == 'quarantine' then
  fails, oks, new = fails + 1, 0, 'quarantined'
else
  fails, oks = fails + 1, 0
  if old == 'unknown' or (old == 'up' and fails >= down_after) then new = 'down' end
end
redis.call('HSET', h, 'url', ARGV[5], 'health', new, 'fails', fails, 'oks', oks)
if kind == 'ok' or kind == 'fail' then
  redis.call('HSET', h, 'checked_at', now, 'latency_s', ARGV[6], 'queue_remaining', ARGV[7], 'detail', ARGV[8])
end
if new ~= old then
  redis.call('HSET', h, 'changed_at', now, 'reason', ARGV[8])
  redis.call('INCR', KEYS[2])
  return {new, 1, old}
end
return {new, 0, old}
