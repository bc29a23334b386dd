-- Completes a received command: per-order FIFO gate, optimistic version check, then the status
-- change (hash with its history field `h:<version>`, event) and the acknowledgement, all or
-- nothing. All checks come before the first write (Redis keeps writes made before a script
-- error).
--
-- The FIFO gate of an order is its hash field `firstCommand` (the messageId of its
-- `processOrder` while unfinished, '' or absent after) followed by its cmdq list (the commands
-- queued later, and every command of an order written before the field existed). A command
-- is at the head if it is `firstCommand`, or if that is empty and it heads the list.
--
-- KEYS: 1 order hash, 2 events stream, 3 commands stream, 4 order's cmdq list
-- ARGV: 1 consumer group, 2 stream entry id of the delivery, 3 messageId,
--       4 '1' if a change follows, 5 expected version, 6 new status, 7 new version,
--       8 updatedAt, 9 event JSON, 10 event retention, 11 history entry JSON without eventId,
--       12 history limit
-- Returns: {'done'} | {'blocked'} | {'stale', current version} | {'missing'} |
--          {'applied', event id or ''}
local function ack()
  -- pcall: a vanished group (Redis restarted empty) must not fail the script half-way.
  redis.pcall('XACK', KEYS[3], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[3], ARGV[2])
end

local gate = redis.call('HMGET', KEYS[1], 'firstCommand', 'version')
local first, version = gate[1], gate[2]
local head_of_hash = first == ARGV[3]
if not head_of_hash then
  local position = redis.call('LPOS', KEYS[4], ARGV[3])
  if not position then
    -- Applied or dead-lettered before (by this or another receiver): acknowledge this copy.
    ack()
    return {'done'}
  end
  if position ~= 0 or (first and first ~= '') then
    return {'blocked'}
  end
end

local event_id = ''
local fields = {}
if ARGV[4] == '1' then
  if not version then
    return {'missing'}
  end
  -- Versions are compared as the decimal strings Herald writes: exact for any u64.
  if version ~= ARGV[5] then
    return {'stale', version}
  end
  event_id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[10], '*', 'event', ARGV[9])
  fields = {'status', ARGV[6], 'version', ARGV[7], 'updatedAt', ARGV[8],
    'h:' .. ARGV[7], '{"eventId":"' .. event_id .. '",' .. string.sub(ARGV[11], 2)}
end
if head_of_hash then
  -- Emptied in the same HSET as the change: the gate opens for the order's later commands.
  fields[#fields + 1] = 'firstCommand'
  fields[#fields + 1] = ''
end
if #fields > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
end
if ARGV[4] == '1' then
  -- One change adds one history field; past the limit the oldest one goes (the version one
  -- limit below the new one). Nothing to delete in the common case of a short-lived order.
  local oldest = tonumber(ARGV[7]) - tonumber(ARGV[12])
  if oldest >= 1 then
    redis.call('HDEL', KEYS[1], 'h:' .. string.format('%d', oldest))
  end
end
if not head_of_hash then
  redis.call('LPOP', KEYS[4])
end
ack()
return {'applied', event_id}
