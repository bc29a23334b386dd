-- Accepts a new order in one atomic step: status hash (with the first history entry as field
-- `h:1`, and the `processOrder` command's messageId as field `firstCommand`: the order's FIFO
-- gate while that command is unfinished, so a new order needs no cmdq list), the
-- `order.accepted` event, the command's stream entry and, when given, the idempotent response. Every check happens before the first write,
-- because Redis does not roll back the writes a script made before it failed.
--
-- KEYS: 1 order hash, 2 events stream, 3 commands stream, 4 idempotency key (optional)
-- ARGV: 1 order JSON, 2 customerId, 3 '1' if a partnerId follows, 4 partnerId, 5 status,
--       6 version, 7 updatedAt, 8 event JSON, 9 event retention, 10 history entry JSON without
--       eventId, 11 messageId, 12 orderId (of the command), 13 command JSON,
--       14 idempotent response JSON, 15 its TTL in ms
-- Returns: 'exists', or the new event id.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'exists'
end

local event_id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[9], '*', 'event', ARGV[8])

-- The history entry learns its event id only now: splice it in front of the other fields.
local fields = {
  'order', ARGV[1], 'customerId', ARGV[2], 'status', ARGV[5], 'version', ARGV[6],
  'updatedAt', ARGV[7],
  'h:' .. ARGV[6], '{"eventId":"' .. event_id .. '",' .. string.sub(ARGV[10], 2),
  'firstCommand', ARGV[11],
}
if ARGV[3] == '1' then
  fields[#fields + 1] = 'partnerId'
  fields[#fields + 1] = ARGV[4]
end
redis.call('HSET', KEYS[1], unpack(fields))

redis.call('XADD', KEYS[3], '*', 'messageId', ARGV[11], 'orderId', ARGV[12], 'message', ARGV[13])

if KEYS[4] then
  redis.call('SET', KEYS[4], ARGV[14], 'PX', ARGV[15])
end
return event_id
