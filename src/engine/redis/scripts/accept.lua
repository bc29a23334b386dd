-- Accepts a new order in one atomic step: status hash, `order.accepted` event, first history
-- entry, the `processOrder` command (stream entry + per-order FIFO gate) and, when given, the
-- idempotent response. Every check happens before the first write, because Redis does not roll
-- back the writes a script made before it failed.
--
-- KEYS: 1 order hash, 2 history list, 3 events stream, 4 commands stream, 5 order's cmdq list,
--       6 idempotency key (optional)
-- ARGV: 1 order JSON, 2 customerId, 3 '1' if a partnerId follows, 4 partnerId, 5 status,
--       6 version, 7 updatedAt, 8 event JSON, 9 event retention, 10 history entry JSON without
--       eventId, 11 history limit, 12 messageId, 13 orderId (of the command), 14 command JSON,
--       15 idempotent response JSON, 16 its TTL in ms
-- Returns: 'exists', or the new event id.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'exists'
end

local fields = {
  'order', ARGV[1], 'customerId', ARGV[2], 'status', ARGV[5], 'version', ARGV[6],
  'updatedAt', ARGV[7],
}
if ARGV[3] == '1' then
  fields[#fields + 1] = 'partnerId'
  fields[#fields + 1] = ARGV[4]
end
redis.call('HSET', KEYS[1], unpack(fields))

local event_id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 'event', ARGV[8])

-- The history entry learns its event id only now: splice it in front of the other fields.
redis.call('RPUSH', KEYS[2], '{"eventId":"' .. event_id .. '",' .. string.sub(ARGV[10], 2))
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[11]), -1)

redis.call('XADD', KEYS[4], '*', 'messageId', ARGV[12], 'orderId', ARGV[13], 'message', ARGV[14])
redis.call('RPUSH', KEYS[5], ARGV[12])

if KEYS[6] then
  redis.call('SET', KEYS[6], ARGV[15], 'PX', ARGV[16])
end
return event_id
