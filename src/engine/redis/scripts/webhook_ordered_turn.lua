-- The second half of an ordered delivery's turn check (WebhookStore::ordered_turn), after the
-- caller found no earlier event of the log still unacknowledged: when a lower version of the
-- delivery's order line exists (another dispatcher created it after this one), that one is
-- scheduled at `now` and this one leaves the schedule to wait behind it, atomically.
--
-- KEYS: 1 schedule zset
-- ARGV: 1 webhook key prefix, 2 delivery id, 3 now ms
-- Returns: 0 when the delivery may be attempted, 1 when it gave its turn to a lower version.
local schedule = KEYS[1]
local prefix, id, now = ARGV[1], ARGV[2], ARGV[3]
local key = prefix .. 'delivery:' .. id
local record = redis.call('HMGET', key, 'endpointId', 'orderId')
if not record[1] or not record[2] then
  return 0
end
local line = prefix .. 'line:' .. record[1] .. ':' .. record[2]
local lowest = redis.call('ZRANGE', line, 0, 0)[1]
if not lowest or lowest == id then
  return 0
end
redis.call('ZREM', schedule, id)
redis.call('HDEL', key, 'nextAttemptAtMs')
redis.call('ZADD', schedule, now, lowest)
redis.call('HSET', prefix .. 'delivery:' .. lowest, 'nextAttemptAtMs', now)
return 1
