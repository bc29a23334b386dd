-- Makes deliveries pending and due at a given time, whatever their state (their attempt count
-- is kept): one delivery (manual retry), or every failed delivery of an endpoint created at or
-- after a time (recovery), atomically.
--
-- KEYS: 1 schedule zset
-- ARGV: 1 webhook key prefix, 2 due at ms, 3 now ms (updatedAtMs), 4 mode: 'one' | 'failed',
--       5 the delivery id ('one') or the endpoint id ('failed'), 6 since ms ('failed')
-- Returns: how many deliveries were scheduled.
local schedule = KEYS[1]
local prefix, at, now = ARGV[1], ARGV[2], ARGV[3]

-- An ordered delivery (it has an orderId) goes back into its order's line: it is scheduled
-- when it is the line's head (the one scheduled, or alone in the line), else it waits (pending,
-- no nextAttemptAtMs) for its turn.
local function is_head(key, endpoint, id)
  local order = redis.call('HMGET', key, 'orderId', 'orderVersion')
  if not order[1] then
    return true
  end
  local line = prefix .. 'line:' .. endpoint .. ':' .. order[1]
  if redis.call('ZSCORE', line, id) then
    return redis.call('ZSCORE', schedule, id) ~= false
  end
  redis.call('ZADD', line, order[2] or 0, id)
  return redis.call('ZCARD', line) == 1
end

local function reschedule(id)
  local key = prefix .. 'delivery:' .. id
  local endpoint = redis.call('HGET', key, 'endpointId')
  if not endpoint then
    return 0
  end
  if is_head(key, endpoint, id) then
    redis.call('HSET', key, 'state', 'pending', 'nextAttemptAtMs', at, 'updatedAtMs', now)
    redis.call('ZADD', schedule, at, id)
  else
    redis.call('HSET', key, 'state', 'pending', 'updatedAtMs', now)
    redis.call('HDEL', key, 'nextAttemptAtMs')
  end
  redis.call('ZREM', prefix .. 'failed:' .. endpoint, id)
  return 1
end

if ARGV[4] == 'one' then
  return reschedule(ARGV[5])
end
local failed = prefix .. 'failed:' .. ARGV[5]
local count = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', failed, ARGV[6], '+inf')) do
  if reschedule(id) == 1 then
    count = count + 1
  else
    -- The record is gone: so is its place in the index.
    redis.call('ZREM', failed, id)
  end
end
return count
