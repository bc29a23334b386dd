-- Stores the deliveries of a claimed batch of events and acknowledges every event of the batch
-- in the dispatch group, in one atomic step: a crash leaves either the events unacknowledged
-- (another node takes them over and creates the same deliveries) or every delivery scheduled
-- and every event acknowledged. Events no endpoint wants are acknowledged here too.
-- A delivery whose id exists already is left exactly as it is: its place in the by_endpoint
-- index is written together with its record, so `ZADD NX` answering 0 means "exists" (no
-- separate EXISTS).
--
-- KEYS: 1 schedule zset, 2 events stream
-- ARGV: 1 dispatch group, 2 webhook key prefix (`P{p0}:webhooks:`; the delivery, by_endpoint
--       and failed keys are built from it and carry the same hash tag), 3 number of event ids
--       to acknowledge (0 for deliveries no log entry stands behind, such as operational
--       notices), then the event ids, then the number of deliveries, then per delivery: id,
--       endpointId, createdAtMs, due ms ('' when not scheduled), '1' if failed, order id ('' for
--       a delivery to an unordered endpoint), the order's version, number of hash arguments n,
--       n hash arguments (field, value, ...)
-- An ordered delivery (order id given) joins its order's line (`line:<endpoint>:<order>`,
-- scored by version) and is scheduled only when the line was empty: otherwise it waits
-- (pending, no nextAttemptAtMs) until the line's head ends (webhook_finish.lua).
-- Returns: how many new deliveries were made to wait in their order's line.
local schedule, events = KEYS[1], KEYS[2]
local prefix = ARGV[2]
local acks = tonumber(ARGV[3])
local i = 4 + acks
local held = 0
local live = {}
for _ = 1, tonumber(ARGV[i]) do
  i = i + 1
  local id, endpoint, created_at, due, failed = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    ARGV[i + 4]
  local order, version = ARGV[i + 5], ARGV[i + 6]
  local first, n = i + 8, tonumber(ARGV[i + 7])
  i = first + n - 1
  if redis.call('ZADD', prefix .. 'by_endpoint:' .. endpoint, 'NX', created_at, id) == 1 then
    local key = prefix .. 'delivery:' .. id
    redis.call('HSET', key, unpack(ARGV, first, first + n - 1))
    if due ~= '' and order ~= '' then
      local line = prefix .. 'line:' .. endpoint .. ':' .. order
      redis.call('ZADD', line, version, id)
      if redis.call('ZCARD', line) > 1 then
        due = ''
        held = held + 1
        redis.call('HDEL', key, 'nextAttemptAtMs')
      end
    end
    if due ~= '' then
      redis.call('ZADD', schedule, due, id)
    end
    if failed == '1' then
      redis.call('ZADD', prefix .. 'failed:' .. endpoint, created_at, id)
    end
    -- An endpoint deleted after the caller matched the event: the retention sweep deletes its
    -- records (webhook_sweep.lua), so it must know of it.
    if live[endpoint] == nil then
      live[endpoint] = redis.call('HEXISTS', prefix .. 'endpoints', endpoint) == 1
      if not live[endpoint] then
        redis.call('SADD', prefix .. 'deleted', endpoint)
      end
    end
  end
end
if acks > 0 then
  -- pcall: a vanished group (Redis restarted empty) must not fail the script half-way. In
  -- slices: unpack has a limit on how many values it returns.
  for j = 4, 3 + acks, 1000 do
    redis.pcall('XACK', events, ARGV[1], unpack(ARGV, j, math.min(j + 999, 3 + acks)))
  end
end
return held
