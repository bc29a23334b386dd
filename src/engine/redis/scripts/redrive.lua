-- Moves dead letters back to the command queue, oldest first, a whole order at a time: the
-- first `limit` entries name the orders; each order's dead letters (its dead-letter index, in
-- the order they died) go back together, so more than `limit` may move. Each becomes a new
-- stream entry (so the delivery count starts again) with the same messageId, and the order's
-- messageIds are put at the FRONT of its FIFO gate (the cmdq list; a pending `firstCommand` is
-- older than any dead letter of its order and stays ahead) in their original order: ahead of
-- anything queued for the order while they were dead.
--
-- KEYS: 1 dead-letter stream, 2 commands stream
-- ARGV: 1 limit, 2 cmdq key prefix, 3 dead-letter index key prefix (the order id completes
--       each; same hash tag as KEYS)
-- Returns: how many were moved.
local dlq, commands, limit = KEYS[1], KEYS[2], tonumber(ARGV[1])
local entries = redis.call('XRANGE', dlq, '-', '+', 'COUNT', limit)

local moved, seen = 0, {}
for _, entry in ipairs(entries) do
  if moved >= limit then
    break
  end
  local order_id = fields_of(entry[2])['orderId']
  if order_id and order_id ~= '' and not seen[order_id] then
    seen[order_id] = true
    local index = ARGV[3] .. order_id
    -- This entry first if the index lacks it (written before the index existed: older).
    local ids = redis.call('LRANGE', index, 0, -1)
    local listed = false
    for _, id in ipairs(ids) do
      if id == entry[1] then
        listed = true
      end
    end
    if not listed then
      table.insert(ids, 1, entry[1])
    end
    local back = {}
    for _, id in ipairs(ids) do
      local found = redis.call('XRANGE', dlq, id, id)
      if found[1] then
        local f = fields_of(found[1][2])
        if f['messageId'] and f['messageId'] ~= '' and f['orderId'] == order_id then
          redis.call('XADD', commands, '*', 'messageId', f['messageId'], 'orderId', order_id,
            'message', f['message'] or '')
          redis.call('XDEL', dlq, id)
          back[#back + 1] = f['messageId']
        end
      end
    end
    for i = #back, 1, -1 do
      redis.call('LPUSH', ARGV[2] .. order_id, back[i])
    end
    redis.call('DEL', index)
    moved = moved + #back
  end
end
return moved
