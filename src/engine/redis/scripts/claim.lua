-- Claims commands whose visibility timeout ran out (idle >= visibility) for this consumer.
-- A claim counts as a delivery, except for a command that waits behind an earlier unfinished
-- command of its order (its FIFO gate, see apply.lua): waiting its turn is not a failed
-- receive, so that claim is taken back (RETRYCOUNT) and never brings it closer to the
-- dead-letter queue. A command that does not wait and was delivered more than max_receives
-- times is poisoned: it is not handed out but returned apart, and the caller moves it to the
-- dead-letter stream with its order's later commands (dead_letter.lua).
--
-- KEYS: 1 commands stream
-- ARGV: 1 group, 2 consumer, 3 min idle ms, 4 XAUTOCLAIM cursor, 5 how many to claim,
--       6 max receives, 7 cmdq key prefix (the order id completes it), 8 order hash key
--       prefix (likewise)
-- The cmdq and order keys are built here because they depend on the entry; they carry the
-- same hash tag as KEYS, so they live in the same cluster slot.
-- Returns: {next cursor, pending count, {{id, receives, fields}, ...} poisoned,
--           {{id, receives, fields}, ...} claimed}; receives are the counted ones.
local commands = KEYS[1]
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local cursor, want = ARGV[4], tonumber(ARGV[5])
local max_receives = tonumber(ARGV[6])
local cmdq_prefix, order_prefix = ARGV[7], ARGV[8]

local claimed, poisoned = {}, {}
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
      local f = fields_of(raw)
      if waits_its_turn(order_prefix, cmdq_prefix, f['orderId'], f['messageId']) then
        deliveries = math.max(deliveries - 1, 0)
        redis.call('XCLAIM', commands, group, consumer, 0, id, 'RETRYCOUNT', deliveries, 'JUSTID')
        claimed[#claimed + 1] = {id, deliveries, raw}
      elseif deliveries > max_receives then
        -- This claim is not a receive: the message was received deliveries - 1 times.
        poisoned[#poisoned + 1] = {id, deliveries - 1, raw}
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
return {cursor, summary[1], poisoned, claimed}
