-- Move jobs whose retry delay is over from the delayed set onto their queue.
-- KEYS: delayed, notify   ARGV: prefix, now_ms, limit
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, jid in ipairs(ids) do
  redis.call('ZREM', KEYS[1], jid)
  local job = ARGV[1] .. ':job:' .. jid
  local st = redis.call('HMGET', job, 'state', 'attempt', 'priority')
  if st[1] == 'queued' then enqueue(job, ARGV[1], KEYS[2], jid, tonumber(st[2]), st[3]) end
end
return #ids
