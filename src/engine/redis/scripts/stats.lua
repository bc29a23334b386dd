-- Queue figures in one consistent look. A pending command whose visibility ran out (idle >=
-- visibility timeout, or released) counts as visible, as it would in SQS.
--
-- KEYS: 1 commands stream, 2 dead-letter stream
-- ARGV: 1 group, 2 visibility timeout ms, 3 at most this many expired entries are counted
-- Returns: {stream length, pending, pending but expired, dead letters}
local length = redis.call('XLEN', KEYS[1])
local pending, expired = 0, 0
local summary = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(summary) == 'table' and not summary.err then
  pending = summary[1]
  if pending > 0 then
    expired = #redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[2], '-', '+', ARGV[3])
  end
end
return {length, pending, expired, redis.call('XLEN', KEYS[2])}
