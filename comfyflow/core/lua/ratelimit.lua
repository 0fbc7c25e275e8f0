-- Sliding-window log: at most `limit` requests in any `window_ms`, counted atomically (50 concurrent requests
-- with a limit of 5 let exactly 5 through). Refused requests are not counted.
-- KEYS: zset of request times[, a hash the request reads]   ARGV: now_ms ('' = the Redis server's clock), limit,
-- window_ms, member
-- Returns {allowed (1/0), remaining, ms until the oldest counted request leaves the window[, the hash's fields]}:
-- a read counted and done in one round trip (the hash is read whether or not the request is allowed).
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local limit, window = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
local allowed = 0
if used < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  used = used + 1
  allowed = 1
end
redis.call('PEXPIRE', KEYS[1], window)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = window
if oldest[2] then reset = tonumber(oldest[2]) + window - now end
if KEYS[2] then return {allowed, limit - used, reset, redis.call('HGETALL', KEYS[2])} end
return {allowed, limit - used, reset}
