-- Takes the deliveries due at `now`, earliest first, and leases each one: it is re-scheduled at
-- `now + lease` before it is returned, so a node that dies mid-attempt leaves it to be taken
-- again, and no other node takes it meanwhile. A scheduled id whose delivery record or endpoint
-- is gone is dropped from the schedule.
--
-- KEYS: 1 schedule zset, 2 endpoints hash
-- ARGV: 1 now ms, 2 at most this many, 3 leased until (ms), 4 webhook key prefix
-- Returns: the leased deliveries, each as its hash (field, value, ...), in due order.
local schedule, endpoints = KEYS[1], KEYS[2]
local ids = redis.call('ZRANGEBYSCORE', schedule, '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[4] .. 'delivery:' .. id
  local endpoint = redis.call('HGET', key, 'endpointId')
  if endpoint and redis.call('HEXISTS', endpoints, endpoint) == 1 then
    redis.call('ZADD', schedule, ARGV[3], id)
    out[#out + 1] = redis.call('HGETALL', key)
  else
    redis.call('ZREM', schedule, id)
  end
end
return out
