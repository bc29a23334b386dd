-- A callback's completion claims the order's open wait: if the order's hash field `wait` is
-- this wait id, it is closed and the command queued, exactly as intake.lua's enqueue does
-- (stream entry, then the order's cmdq list: the per-order FIFO gate, see apply.lua), in one
-- atomic step; otherwise nothing is written (the wait timed out, was completed before, or the
-- order moved on), so a callback token works once.
--
-- KEYS: 1 order hash, 2 order's cmdq list, 3 commands stream
-- ARGV: 1 wait id, 2 messageId, 3 orderId, 4 command JSON
-- Returns: 'unknown' (no such order) | 'notwaiting' | 'queued'
local order, cmdq, commands = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', order) == 0 then
  return 'unknown'
end
local wait = redis.call('HGET', order, 'wait')
if ARGV[1] == '' or wait ~= ARGV[1] then
  return 'notwaiting'
end
redis.call('HSET', order, 'wait', '')
redis.call('XADD', commands, '*', 'messageId', ARGV[2], 'orderId', ARGV[3], 'message', ARGV[4])
redis.call('RPUSH', cmdq, ARGV[2])
return 'queued'
