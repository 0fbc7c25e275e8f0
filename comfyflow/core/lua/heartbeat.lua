-- KEYS: job, stream   ARGV: attempt, worker, consumer, msg_id
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'worker', 'cancel', 'msg_id')
if st[1] ~= 'running' or st[2] ~= ARGV[1] or st[3] ~= ARGV[2] or st[5] ~= ARGV[4] then return 'lost' end
-- XCLAIM by the same consumer resets the message's idle time: this is the lease renewal the reaper reads.
redis.call('XCLAIM', KEYS[2], GROUP, ARGV[3], 0, ARGV[4], 'JUSTID')
if st[4] == '1' then return 'cancel' end
return 'ok'
