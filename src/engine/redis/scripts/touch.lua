-- Resets the idle time of a delivery, without counting a delivery: idle 0 extends its
-- visibility, idle = visibility timeout makes it claimable at once (release). Only if the
-- delivery is still this consumer's and still the same delivery (same delivery count): a
-- command another consumer took over after a timeout is left alone.
--
-- KEYS: 1 commands stream
-- ARGV: 1 group, 2 consumer, 3 entry id, 4 delivery count of this delivery, 5 idle ms
-- Returns: 1 if reset, 0 if the delivery is no longer this one.
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if type(pending) ~= 'table' or pending.err or not pending[1] then
  return 0
end
local entry = pending[1]
if entry[2] ~= ARGV[2] or entry[4] ~= tonumber(ARGV[4]) then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[5], 'JUSTID')
return 1
