-- Completes a batch of received commands, in order, each as if alone: per-order FIFO gate,
-- optimistic version check, then the status change (hash with its history field
-- `h:<version>`, event), the workflow's step writes (step records, open wait, follow-up
-- command or timer) and the acknowledgement, all or nothing per command. A command's checks
-- come before its first write (Redis keeps writes made before a script error), and a later
-- command sees the changes of the earlier ones. The acknowledgements of the whole batch go out
-- as one XACK and one XDEL at the end.
--
-- The FIFO gate of an order is its hash field `firstCommand` (the messageId of its
-- `processOrder` while unfinished, '' or absent after) followed by its cmdq list (the commands
-- queued later, and every command of an order written before the field existed). A command
-- is at the head if it is `firstCommand`, or if that is empty and it heads the list.
--
-- Step writes (see src/engine/steps.rs): records go to hash fields `s:<n>` numbered by the
-- counter field `stepSeq`, the newest `step history limit` kept (like `h:<version>`); the open
-- wait is the hash field `wait` ('' or absent: none); a follow-up queued now is queued exactly
-- as intake.lua's enqueue does (stream entry, then the order's cmdq list), one due later is a
-- member of the partition's timers zset (fire_timers.lua queues it when due). A heartbeat
-- timer is a timers zset member too, and the order's only one: the hash field `hb` holds its
-- member ('' or absent: none), and a new one ZREMs the old one (as heartbeat.lua does).
--
-- KEYS: 1 events stream, 2 commands stream, 3 timers zset, then per command: order hash,
--       order's cmdq list
-- ARGV: 1 consumer group, 2 event retention, 3 history limit, 4 step history limit, then per
--       command 18 values and its step records:
--        1 stream entry id of the delivery, 2 messageId,
--        3 mode: '0' acknowledge only, '1' status change, '2' step (version check, no change),
--        4 expected version ('' in mode 0),
--        5 new status, 6 new version, 7 updatedAt, 8 event JSON, 9 history entry JSON without
--          eventId (mode 1; else ''),
--        10 open wait: '' leave it as is, else '=' followed by the new wait id ('=' alone
--           closes it),
--        11 follow-up: '' none, 'now' (queued now), 'at' (a timer),
--        12 its messageId, 13 its orderId, 14 for 'now' its command JSON, for 'at' the timer's
--           zset member, 15 for 'at' its due ms,
--        16 the heartbeat timer's zset member ('' none: the order's one is left as it is),
--        17 its due ms,
--        18 how many step records follow (JSON each)
-- Returns: per command, in order: {'done'} | {'blocked'} | {'stale', current version} |
--          {'missing'} | {'applied', event id or ''}
local events, commands, timers = KEYS[1], KEYS[2], KEYS[3]
local group, retention, history_limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local step_limit = tonumber(ARGV[4])
local acked = {}

-- The step writes of the command whose values start at ARGV[a]: hash fields are added to
-- `fields` (written by the caller's one HSET), the rest written here.
local function write_steps(order, cmdq, a, fields, state)
  local wait = ARGV[a + 9]
  if wait ~= '' then
    local id = string.sub(wait, 2)
    -- Only when it changes: an order that never waits keeps no `wait` field.
    if id ~= (state.wait or '') then
      fields[#fields + 1] = 'wait'
      fields[#fields + 1] = id
    end
  end

  local count = tonumber(ARGV[a + 17])
  if count > 0 then
    local before = tonumber(state.seq or '0')
    local last = before + count
    local oldest_kept = last - step_limit + 1
    for i = 1, count do
      local n = before + i
      if n >= oldest_kept then
        fields[#fields + 1] = 's:' .. string.format('%d', n)
        fields[#fields + 1] = ARGV[a + 17 + i]
      end
    end
    -- The records this append pushes out of the newest `step_limit`.
    local gone = {}
    for n = math.max(1, before - step_limit + 1), math.min(before, oldest_kept - 1) do
      gone[#gone + 1] = 's:' .. string.format('%d', n)
    end
    if #gone > 0 then
      redis.call('HDEL', order, unpack(gone))
    end
    fields[#fields + 1] = 'stepSeq'
    fields[#fields + 1] = string.format('%d', last)
  end

  local follow = ARGV[a + 10]
  if follow == 'now' then
    redis.call('XADD', commands, '*', 'messageId', ARGV[a + 11], 'orderId', ARGV[a + 12],
      'message', ARGV[a + 13])
    redis.call('RPUSH', cmdq, ARGV[a + 11])
  elseif follow == 'at' then
    redis.call('ZADD', timers, ARGV[a + 14], ARGV[a + 13])
  end

  local heartbeat = ARGV[a + 15]
  if heartbeat ~= '' then
    if state.hb and state.hb ~= '' and state.hb ~= heartbeat then
      redis.call('ZREM', timers, state.hb)
    end
    redis.call('ZADD', timers, ARGV[a + 16], heartbeat)
    fields[#fields + 1] = 'hb'
    fields[#fields + 1] = heartbeat
  end
end

local function apply(order, cmdq, a)
  local entry, message_id, mode = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local gate = redis.call('HMGET', order, 'firstCommand', 'version', 'wait', 'stepSeq', 'hb')
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
  if mode ~= '0' then
    if not version then
      return {'missing'}
    end
    -- Versions are compared as the decimal strings Herald writes: exact for any u64.
    if version ~= ARGV[a + 3] then
      return {'stale', version}
    end
  end
  if mode == '1' then
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
  if not head_of_hash then
    redis.call('LPOP', cmdq)
  end
  if mode ~= '0' then
    -- After the LPOP: a follow-up queued now goes behind the order's earlier commands.
    write_steps(order, cmdq, a, fields, {wait = gate[3], seq = gate[4], hb = gate[5]})
  end
  if #fields > 0 then
    redis.call('HSET', order, unpack(fields))
  end
  acked[#acked + 1] = entry
  return {'applied', event_id}
end

local results = {}
local a = 5
for i = 1, (#KEYS - 3) / 2 do
  results[i] = apply(KEYS[2 + 2 * i], KEYS[3 + 2 * i], a)
  a = a + 18 + tonumber(ARGV[a + 17])
end
if #acked > 0 then
  -- pcall: a vanished group (Redis restarted empty) must not fail the script half-way.
  redis.pcall('XACK', commands, group, unpack(acked))
  redis.call('XDEL', commands, unpack(acked))
end
return results
