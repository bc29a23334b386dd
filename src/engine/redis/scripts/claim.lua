-- Claims commands whose visibility timeout ran out (idle >= visibility) for this consumer.
-- A claim counts as a delivery; a command delivered more than max_receives times goes to the
-- dead-letter stream instead, in the same atomic step (acknowledged, deleted, and removed from
-- its order's FIFO gate so the order's later commands can run).
--
-- KEYS: 1 commands stream, 2 dead-letter stream
-- ARGV: 1 group, 2 consumer, 3 min idle ms, 4 XAUTOCLAIM cursor, 5 how many to claim,
--       6 max receives, 7 deadAt timestamp, 8 cmdq key prefix (the order id completes it),
--       9 order hash key prefix (likewise)
-- The cmdq and order keys are built here because they depend on the entry; they carry the
-- same hash tag as KEYS, so they live in the same cluster slot.
-- Returns: {next cursor, pending count, dead-lettered count, {{id, deliveries, fields}, ...}}
local commands, dlq = KEYS[1], KEYS[2]
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local cursor, want = ARGV[4], tonumber(ARGV[5])
local max_receives = tonumber(ARGV[6])
local dead_at, cmdq_prefix, order_prefix = ARGV[7], ARGV[8], ARGV[9]

local claimed, dead = {}, 0
-- A few rounds at most: XAUTOCLAIM scans a bounded part of the pending list per call.
for _ = 1, 4 do
  local reply = redis.call('XAUTOCLAIM', commands, group, consumer, min_idle, cursor,
    'COUNT', want - #claimed)
  cursor = reply[1]
  for _, entry in ipairs(reply[2]) do
    -- Redis 6.2 reports an entry deleted from the stream with nil fields (7.x lists its id in
    -- reply[3] instead): either way it is simply gone.
    if type(entry) == 'table' and type(entry[2]) == 'table' then
      local id, raw = entry[1], entry[2]
      local pending = redis.call('XPENDING', commands, group, id, id, 1)
      local deliveries = 1
      if pending[1] then
        deliveries = pending[1][4]
      end
      if deliveries > max_receives then
        local f = {}
        for i = 1, #raw, 2 do
          f[raw[i]] = raw[i + 1]
        end
        local message = f['message'] or 'null'
        -- This claim is not a receive: the message was received deliveries - 1 times.
        local dead_letter = '{"message":' .. message .. ',"receiveCount":' ..
          tostring(deliveries - 1) .. ',"deadAt":"' .. dead_at .. '"}'
        redis.call('XADD', dlq, '*', 'deadLetter', dead_letter, 'messageId', f['messageId'] or '',
          'orderId', f['orderId'] or '', 'message', message)
        redis.call('XACK', commands, group, id)
        redis.call('XDEL', commands, id)
        if f['orderId'] and f['messageId'] then
          -- Out of the order's FIFO gate, wherever it stands (see apply.lua).
          redis.call('LREM', cmdq_prefix .. f['orderId'], 0, f['messageId'])
          local order = order_prefix .. f['orderId']
          if redis.call('HGET', order, 'firstCommand') == f['messageId'] then
            redis.call('HSET', order, 'firstCommand', '')
          end
        end
        dead = dead + 1
      else
        claimed[#claimed + 1] = {id, deliveries, raw}
      end
    end
  end
  if #claimed >= want or cursor == '0-0' then
    break
  end
end

local summary = redis.call('XPENDING', commands, group)
return {cursor, summary[1], dead, claimed}
