-- Completes a batch of received commands, in order, each as if alone: per-order FIFO gate,
-- optimistic version check, then the status change (hash with its history field
-- `h:<version>`, event) and the acknowledgement, all or nothing per command. A command's checks
-- come before its first write (Redis keeps writes made before a script error), and a later
-- command sees the changes of the earlier ones. The acknowledgements of the whole batch go out
-- as one XACK and one XDEL at the end.
--
-- The FIFO gate of an order is its hash field `firstCommand` (the messageId of its
-- `processOrder` while unfinished, '' or absent after) followed by its cmdq list (the commands
-- queued later, and every command of an order written before the field existed). A command
-- is at the head if it is `firstCommand`, or if that is empty and it heads the list.
--
-- KEYS: 1 events stream, 2 commands stream, then per command: order hash, order's cmdq list
-- ARGV: 1 consumer group, 2 event retention, 3 history limit, then per command 9 values:
--       stream entry id of the delivery, messageId, '1' if a change follows (else the next
--       six are ''), expected version, new status, new version, updatedAt, event JSON,
--       history entry JSON without eventId
-- Returns: per command, in order: {'done'} | {'blocked'} | {'stale', current version} |
--          {'missing'} | {'applied', event id or ''}
local events, commands = KEYS[1], KEYS[2]
local group, retention, history_limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local acked = {}

local function apply(order, cmdq, a)
  local entry, message_id, has_change = ARGV[a], ARGV[a + 1], ARGV[a + 2] == '1'
  local gate = redis.call('HMGET', order, 'firstCommand', 'version')
  local first, version = gate[1], gate[2]
  local head_of_hash = first == message_id
  if not head_of_hash then
    local position = redis.call('LPOS', cmdq, message_id)
    if not position then
      -- Applied or dead-lettered before (by this or another receiver): acknowledge this copy.
      acked[#acked + 1] = entry
      return {'done'}
    end
    if position ~= 0 or (first and first ~= '') then
      return {'blocked'}
    end
  end

  local event_id = ''
  local fields = {}
  if has_change then
    if not version then
      return {'missing'}
    end
    -- Versions are compared as the decimal strings Herald writes: exact for any u64.
    if version ~= ARGV[a + 3] then
      return {'stale', version}
    end
    local new_version = ARGV[a + 5]
    event_id = redis.call('XADD', events, 'MAXLEN', '~', retention, '*', 'event', ARGV[a + 7])
    fields = {'status', ARGV[a + 4], 'version', new_version, 'updatedAt', ARGV[a + 6],
      'h:' .. new_version, '{"eventId":"' .. event_id .. '",' .. string.sub(ARGV[a + 8], 2)}
    -- One change adds one history field; past the limit the oldest one goes (the version
    -- one limit below the new one). Nothing to delete for a short-lived order.
    local oldest = tonumber(new_version) - history_limit
    if oldest >= 1 then
      redis.call('HDEL', order, 'h:' .. string.format('%d', oldest))
    end
  end
  if head_of_hash then
    -- Emptied in the same HSET as the change: the gate opens for the order's later commands.
    fields[#fields + 1] = 'firstCommand'
    fields[#fields + 1] = ''
  end
  if #fields > 0 then
    redis.call('HSET', order, unpack(fields))
  end
  if not head_of_hash then
    redis.call('LPOP', cmdq)
  end
  acked[#acked + 1] = entry
  return {'applied', event_id}
end

local results = {}
for i = 1, (#KEYS - 2) / 2 do
  results[i] = apply(KEYS[1 + 2 * i], KEYS[2 + 2 * i], 4 + 9 * (i - 1))
end
if #acked > 0 then
  -- pcall: a vanished group (Redis restarted empty) must not fail the script half-way.
  redis.pcall('XACK', commands, group, unpack(acked))
  redis.call('XDEL', commands, unpack(acked))
end
return results
