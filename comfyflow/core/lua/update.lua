-- KEYS: job, events   ARGV: attempt, worker, event_type ('' = none), event_json, field/value pairs...
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'worker')
if st[1] ~= 'running' or st[2] ~= ARGV[1] or st[3] ~= ARGV[2] then return 'lost' end
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 2000, '*', 'type', ARGV[3], 'data', ARGV[4])
end
return 'ok'
