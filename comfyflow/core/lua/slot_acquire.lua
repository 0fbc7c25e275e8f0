-- Take one slot on the least-loaded candidate backend with room.
-- KEYS: slot zsets of the candidates, in preference order
-- ARGV: now_ms, lease_ms, token, capacity_1, ..., capacity_n
local now = tonumber(ARGV[1])
local best, best_load = nil, nil
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local used = redis.call('ZCARD', key)
  local cap = tonumber(ARGV[3 + i])
  if used < cap then
    local load = used / cap
    if best == nil or load < best_load then best, best_load = i, load end
  end
end
if best == nil then return 0 end
redis.call('ZADD', KEYS[best], now + tonumber(ARGV[2]), ARGV[3])
return best
