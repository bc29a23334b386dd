-- Deletes an endpoint and its health fields, takes it out of its partner's set, takes its
-- deliveries off the retry schedule and moves the endpoints version forward, atomically. Its
-- delivery records and their logs are left to the retention sweep (webhook_sweep.lua): the
-- endpoint joins the set of deleted endpoints to sweep, whose records go whatever their age.
--
-- KEYS: 1 endpoints hash, 2 schedule zset, 3 endpoints version (string counter), 4 health hash,
--       5 deleted endpoints to sweep (set)
-- ARGV: 1 endpoint id, 2 webhook key prefix
-- Returns: 1 if the endpoint existed, else 0.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
local ok, e = pcall(cjson.decode, raw)
if ok and type(e) == 'table' and type(e['partnerId']) == 'string' then
  redis.call('SREM', ARGV[2] .. 'by_partner:' .. e['partnerId'], ARGV[1])
end
if redis.call('EXISTS', ARGV[2] .. 'by_endpoint:' .. ARGV[1]) == 1 then
  redis.call('SADD', KEYS[5], ARGV[1])
end
redis.call('INCR', KEYS[3])
redis.call('HDEL', KEYS[4], ARGV[1] .. ':enabled', ARGV[1] .. ':disabledReason',
  ARGV[1] .. ':failingSinceMs', ARGV[1] .. ':updatedAtMs')
local ids = redis.call('ZRANGE', ARGV[2] .. 'by_endpoint:' .. ARGV[1], 0, -1)
-- In slices: unpack has a limit on how many values it returns.
for i = 1, #ids, 1000 do
  redis.call('ZREM', KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
end
return 1
