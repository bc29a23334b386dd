-- Retention of delivery records: deletes up to a number of one endpoint's deliveries created
-- before a time (of a deleted endpoint, whatever their age), each with its attempt log, its
-- places in the by_endpoint and failed indexes, on the schedule and in its order's line (an
-- ordered delivery), in one atomic step. Bounded
-- work per call; the caller calls again while a call deletes as many as it may. Safe on several
-- nodes at once: what one deletes, the other no longer finds. A deleted endpoint whose records
-- are all gone leaves the set of deleted endpoints to sweep.
--
-- KEYS: 1 schedule zset, 2 endpoints hash, 3 deleted endpoints to sweep (set)
-- ARGV: 1 webhook key prefix, 2 endpoint id, 3 created before (ms), 4 at most this many
-- Returns: how many deliveries were deleted.
local schedule, endpoints, deleted = KEYS[1], KEYS[2], KEYS[3]
local prefix, endpoint = ARGV[1], ARGV[2]
local by_endpoint = prefix .. 'by_endpoint:' .. endpoint
local failed = prefix .. 'failed:' .. endpoint
local live = redis.call('HEXISTS', endpoints, endpoint) == 1
local upto = '+inf'
if live then
  upto = '(' .. ARGV[3]
end
local ids = redis.call('ZRANGEBYSCORE', by_endpoint, '-inf', upto, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  local order = redis.call('HGET', prefix .. 'delivery:' .. id, 'orderId')
  if order then
    redis.call('ZREM', prefix .. 'line:' .. endpoint .. ':' .. order, id)
  end
  redis.call('DEL', prefix .. 'delivery:' .. id, prefix .. 'attempts:' .. id)
end
-- In slices: unpack has a limit on how many values it returns.
for i = 1, #ids, 1000 do
  local last = math.min(i + 999, #ids)
  redis.call('ZREM', by_endpoint, unpack(ids, i, last))
  redis.call('ZREM', failed, unpack(ids, i, last))
  redis.call('ZREM', schedule, unpack(ids, i, last))
end
if not live and redis.call('EXISTS', by_endpoint) == 0 then
  redis.call('SREM', deleted, endpoint)
  redis.call('DEL', failed)
end
return #ids
