-- Stores the deliveries of one event and acknowledges the event in the dispatch group, in one
-- atomic step: a crash leaves either the event unacknowledged (another node takes it over and
-- creates the same deliveries) or every delivery scheduled and the event acknowledged.
-- A delivery whose id exists already is left exactly as it is.
--
-- KEYS: 1 schedule zset, 2 events stream
-- ARGV: 1 dispatch group, 2 event id ('' for deliveries no log entry stands behind, such as
--       operational notices: nothing to acknowledge), 3 webhook key prefix (`P{p0}:webhooks:`; the delivery,
--       by_endpoint and failed keys are built from it and carry the same hash tag),
--       4 number of deliveries, then per delivery: id, endpointId, createdAtMs, due ms (''
--       when not scheduled), '1' if failed, number of hash arguments n, n hash arguments
--       (field, value, ...)
-- Returns: how many deliveries were new.
local schedule, events = KEYS[1], KEYS[2]
local prefix = ARGV[3]
local created = 0
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  local id, endpoint, created_at, due, failed = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    ARGV[i + 4]
  local first, n = i + 6, tonumber(ARGV[i + 5])
  i = first + n
  local key = prefix .. 'delivery:' .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, unpack(ARGV, first, first + n - 1))
    redis.call('ZADD', prefix .. 'by_endpoint:' .. endpoint, created_at, id)
    if due ~= '' then
      redis.call('ZADD', schedule, due, id)
    end
    if failed == '1' then
      redis.call('ZADD', prefix .. 'failed:' .. endpoint, created_at, id)
    end
    created = created + 1
  end
end
if ARGV[2] ~= '' then
  -- pcall: a vanished group (Redis restarted empty) must not fail the script half-way.
  redis.pcall('XACK', events, ARGV[1], ARGV[2])
end
return created
