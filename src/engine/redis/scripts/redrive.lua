-- Moves up to N of the oldest dead letters back to the command queue: a new stream entry (so
-- the delivery count starts again), the same messageId, appended to its order's FIFO gate.
--
-- KEYS: 1 dead-letter stream, 2 commands stream
-- ARGV: 1 limit, 2 cmdq key prefix (the order id completes it; same hash tag as KEYS)
-- Returns: how many were moved.
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1])
local moved = 0
for _, entry in ipairs(entries) do
  local id, raw = entry[1], entry[2]
  local f = {}
  for i = 1, #raw, 2 do
    f[raw[i]] = raw[i + 1]
  end
  if f['messageId'] and f['messageId'] ~= '' and f['orderId'] and f['message'] then
    redis.call('XADD', KEYS[2], '*', 'messageId', f['messageId'], 'orderId', f['orderId'],
      'message', f['message'])
    redis.call('RPUSH', ARGV[2] .. f['orderId'], f['messageId'])
    redis.call('XDEL', KEYS[1], id)
    moved = moved + 1
  end
end
return moved
