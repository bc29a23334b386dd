-- Queues a command for an existing order, with the idempotent response if given, atomically.
--
-- KEYS: 1 order hash, 2 commands stream, 3 order's cmdq list, 4 idempotency key (optional)
-- ARGV: 1 messageId, 2 orderId, 3 command JSON, 4 idempotent response JSON, 5 its TTL in ms
-- Returns: 'unknown' (no such order, nothing written) or 'ok'.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 'unknown'
end
redis.call('XADD', KEYS[2], '*', 'messageId', ARGV[1], 'orderId', ARGV[2], 'message', ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[1])
if KEYS[4] then
  redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[5])
end
return 'ok'
