-- A callback's heartbeat: if the order's hash field `wait` is this wait id, the order's
-- heartbeat timer is replaced by this one, in one atomic step: the old one (its timers zset
-- member, kept in the hash field `hb`; '' or absent: none) leaves the schedule, the new one
-- joins it and `hb` names it. Otherwise nothing is written (the wait timed out, was
-- completed, or the order moved on). apply.lua replaces it the same way.
--
-- KEYS: 1 order hash, 2 the order's partition's timers zset
-- ARGV: 1 wait id, 2 the timer's zset member (see apply.lua), 3 its due ms
-- Returns: 'unknown' (no such order) | 'notwaiting' | 'queued'
local order, timers = KEYS[1], KEYS[2]
if redis.call('EXISTS', order) == 0 then
  return 'unknown'
end
local state = redis.call('HMGET', order, 'wait', 'hb')
if ARGV[1] == '' or state[1] ~= ARGV[1] then
  return 'notwaiting'
end
local old = state[2]
if old and old ~= '' and old ~= ARGV[2] then
  redis.call('ZREM', timers, old)
end
redis.call('ZADD', timers, ARGV[3], ARGV[2])
redis.call('HSET', order, 'hb', ARGV[2])
return 'queued'
