-- Claim batch and pipeline runs nobody holds (new, or whose runner's lease lapsed).
-- KEYS: runs   ARGV: prefix, now_ms, lease_ms, runner, limit
-- A member is '<kind>:<id>' and its record is the hash '<prefix>:<kind>:<id>'. Returns the claimed members.
local out = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[5]))) do
  local record = ARGV[1] .. ':' .. member
  if redis.call('EXISTS', record) == 0 then
    redis.call('ZREM', KEYS[1], member)
  else
    redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), member)
    redis.call('HSET', record, 'runner', ARGV[4])
    redis.call('HINCRBY', record, 'claims', 1)
    out[#out + 1] = member
  end
end
return out
