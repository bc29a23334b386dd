-- Intake group commit: the accepts and enqueues that arrived together from concurrent requests
-- (see intake.rs), in one script call, each as if alone: its checks before its first write
-- (Redis keeps the writes a script made before an error), its own result. One call instead of
-- one per request saves Redis the per-call overhead of a script (most of an accept's Redis
-- time).
--
-- KEYS: 1 events stream, 2 commands stream, then each request's own keys
-- ARGV: 1 event retention, then per request: kind ('accept' | 'enqueue'), its number of keys,
--       its number of values, the values
--   accept keys: order hash, the partition's orders index, idempotency key (optional); values: order JSON, customerId,
--     '1' if a partnerId follows, partnerId, status, version, updatedAt, event JSON, history
--     entry JSON without eventId, messageId, orderId (of the command), command JSON,
--     idempotent response JSON, its TTL in ms, the claim the key must still hold ('' for none)
--   enqueue keys: order hash, order's cmdq list, idempotency key (optional); values:
--     messageId, orderId, command JSON, idempotent response JSON, its TTL in ms, the claim
--     the key must still hold ('' for none)
-- Returns: per request, in order: accept: 'exists' or the new event id; enqueue: 'unknown'
--          (no such order, nothing written) or 'ok'; either: 'claim-lost' (the idempotency
--          key no longer holds the request's claim: it was abandoned after a timeout, maybe
--          taken by a retry; nothing written); {'error', message} for a request that failed.
local events, commands, retention = KEYS[1], KEYS[2], ARGV[1]

-- Accepts a new order: the order hash (the order, its status, its first history entry as field
-- `h:1`, and the `processOrder` command's messageId as `firstCommand`: the order's FIFO gate
-- while that command is unfinished, see apply.lua), the `order.accepted` event, the command's
-- stream entry and, when given, the idempotent response. The history entry learns its event id
-- from the XADD: it is spliced in front of the other fields. One ZADD files the order in the
-- partition's orders index under its id, its customer and its partner (see `orders_index`).
local function accept(k, v)
  if k[3] and v[15] ~= '' and redis.call('GET', k[3]) ~= v[15] then
    return 'claim-lost'
  end
  if redis.call('EXISTS', k[1]) == 1 then
    return 'exists'
  end
  local event_id = redis.call('XADD', events, 'MAXLEN', '~', retention, '*', 'event', v[8])
  local fields = {
    'order', v[1], 'customerId', v[2], 'status', v[5], 'version', v[6], 'updatedAt', v[7],
    'h:' .. v[6], '{"eventId":"' .. event_id .. '",' .. string.sub(v[9], 2),
    'firstCommand', v[10],
  }
  if v[3] == '1' then
    fields[#fields + 1] = 'partnerId'
    fields[#fields + 1] = v[4]
  end
  redis.call('HSET', k[1], unpack(fields))
  local members = {0, 'o:' .. v[11], 0, 'c:' .. v[2] .. '\0' .. v[11]}
  if v[3] == '1' then
    members[5] = 0
    members[6] = 'p:' .. v[4] .. '\0' .. v[11]
  end
  redis.call('ZADD', k[2], unpack(members))
  redis.call('XADD', commands, '*', 'messageId', v[10], 'orderId', v[11], 'message', v[12])
  if k[3] then
    redis.call('SET', k[3], v[13], 'PX', v[14])
  end
  return event_id
end

-- Queues a command for an existing order behind its earlier ones (the cmdq list), with the
-- idempotent response if given.
local function enqueue(k, v)
  if k[3] and v[6] ~= '' and redis.call('GET', k[3]) ~= v[6] then
    return 'claim-lost'
  end
  if redis.call('EXISTS', k[1]) == 0 then
    return 'unknown'
  end
  redis.call('XADD', commands, '*', 'messageId', v[1], 'orderId', v[2], 'message', v[3])
  redis.call('RPUSH', k[2], v[1])
  if k[3] then
    redis.call('SET', k[3], v[4], 'PX', v[5])
  end
  return 'ok'
end

local results = {}
local key, arg = 3, 2
while arg <= #ARGV do
  local kind, nkeys, nvalues = ARGV[arg], tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2])
  local k, v = {}, {}
  for i = 1, nkeys do
    k[i] = KEYS[key + i - 1]
  end
  for i = 1, nvalues do
    v[i] = ARGV[arg + 2 + i]
  end
  key, arg = key + nkeys, arg + 3 + nvalues
  -- pcall: a request that fails (data of the wrong type under its key) answers its own error
  -- and leaves the others' outcomes as they are, instead of failing the whole call after the
  -- earlier requests were stored.
  local ok, result = pcall(kind == 'accept' and accept or enqueue, k, v)
  if ok then
    results[#results + 1] = result
  else
    -- Not an error reply: the client would fail the whole call on a nested one.
    local message = type(result) == 'table' and result.err or tostring(result)
    results[#results + 1] = {'error', message}
  end
end
return results
