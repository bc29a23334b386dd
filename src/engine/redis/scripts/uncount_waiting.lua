-- Takes back the receive that handing out a command counted (XREADGROUP counts every
-- delivery) when the command waits behind an earlier unfinished command of its order: waiting
-- its turn is not a failed receive, so it must not bring the command closer to the
-- dead-letter queue (see claim.lua for redeliveries).
--
-- KEYS: 1 commands stream
-- ARGV: 1 group, 2 consumer, 3 cmdq key prefix, 4 order hash key prefix (same hash tag as
--       KEYS), then per command: stream entry id, messageId, orderId
-- Returns: per command, its counted receives now.
local commands, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local cmdq_prefix, order_prefix = ARGV[3], ARGV[4]

local counts = {}
for a = 5, #ARGV, 3 do
  local id = ARGV[a]
  local pending = redis.call('XPENDING', commands, group, id, id, 1)
  local count = 0
  if pending[1] and pending[1][2] == consumer then
    count = pending[1][4]
    if count > 0 and waits_its_turn(order_prefix, cmdq_prefix, ARGV[a + 2], ARGV[a + 1]) then
      count = count - 1
      redis.call('XCLAIM', commands, group, consumer, 0, id, 'RETRYCOUNT', count, 'JUSTID')
    end
  end
  counts[#counts + 1] = count
end
return counts
