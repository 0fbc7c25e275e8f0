-- KEYS: idem_key   ARGV: fingerprint, pending_ttl_ms
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], 'pending:' .. ARGV[1], 'PX', tonumber(ARGV[2]))
  return {'new'}
end
if string.sub(cur, 1, 8) == 'pending:' then return {'in_progress'} end
local fp, id = string.match(cur, '^job:([^:]+):(.+)$')
if fp == ARGV[1] then return {'existing', id} end
return {'mismatch', id or ''}
