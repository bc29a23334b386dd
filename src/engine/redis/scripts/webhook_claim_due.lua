-- Takes the deliveries due at `now`, earliest first, and leases each one: it is re-scheduled at
-- `now + lease` before it is returned, so a node that dies mid-attempt leaves it to be taken
-- again, and no other node takes it meanwhile. A scheduled id whose delivery record or endpoint
-- is gone is dropped from the schedule. Bodies are not returned (the sender keeps those it
-- knows); each endpoint is looked up once per call.
--
-- KEYS: 1 schedule zset, 2 endpoints hash, 3 endpoints version (string counter)
-- ARGV: 1 now ms, 2 at most this many, 3 leased until (ms), 4 webhook key prefix
-- Returns: {endpoints version, {{id, endpointId, attempts, due ms, event id of an ordered
--          delivery ('' for an unordered one)}, ...}} in due order.
local schedule, endpoints = KEYS[1], KEYS[2]
local due = redis.call('ZRANGEBYSCORE', schedule, '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
  ARGV[2])
local out = {}
local exists = {}
for i = 1, #due, 2 do
  local id = due[i]
  local record = redis.call('HMGET', ARGV[4] .. 'delivery:' .. id, 'endpointId', 'attempts',
    'orderId', 'eventId')
  local endpoint = record[1]
  if endpoint and exists[endpoint] == nil then
    exists[endpoint] = redis.call('HEXISTS', endpoints, endpoint) == 1
  end
  if endpoint and exists[endpoint] then
    redis.call('ZADD', schedule, ARGV[3], id)
    local ordered = ''
    if record[3] then
      ordered = record[4] or ''
    end
    out[#out + 1] = {id, endpoint, record[2] or '0', due[i + 1], ordered}
  else
    redis.call('ZREM', schedule, id)
  end
end
return {redis.call('GET', KEYS[3]) or '0', out}
