-- Moves a poisoned command to the dead-letter stream together with every later command of its
-- order that is still queued, in their order right behind it, and takes them all out of the
-- order's FIFO gate (the hash's `firstCommand`, then the cmdq list; see apply.lua), so the
-- order is not blocked and nothing is reordered: redrive.lua puts the group back in front of
-- the order's gate. Each dead letter's entry id is appended to the order's dead-letter index
-- (a list), so redrive finds all of an order's dead letters without scanning.
--
-- The later commands' stream entries are found by scanning the partition's commands stream,
-- which holds only unfinished commands (applied ones are deleted); this runs only when a
-- command is poisoned.
--
-- KEYS: 1 commands stream, 2 dead-letter stream
-- ARGV: 1 group, 2 stream entry id of the poisoned command, 3 its messageId, 4 its orderId,
--       5 its `message` field as written ('' if none), 6 its counted receives, 7 deadAt,
--       8 reason, 9 cmdq key prefix, 10 order hash key prefix, 11 dead-letter index key
--       prefix (the order id completes each; they carry the same hash tag as KEYS)
-- Returns: {messageIds moved, in order (the poisoned one first), followers not found}; nothing
-- moved if the entry is gone (completed since the caller read it); {{}, -1} and nothing moved
-- if the command waits behind an earlier command of its order (it stays pending).
local commands, dlq = KEYS[1], KEYS[2]
local group, entry, message_id, order_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local raw, receives, dead_at, reason = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local cmdq = ARGV[9] .. order_id
local order = ARGV[10] .. order_id
local index = ARGV[11] .. order_id

-- Completed meanwhile (apply.lua deletes what it acknowledges): nothing to move.
if #redis.call('XRANGE', commands, entry, entry) == 0 then
  return {{}, 0}
end

-- Its place in the gate, and the commands after it, which leave the gate with it.
local followers = {}
local first = redis.call('HGET', order, 'firstCommand')
local queued = redis.call('LRANGE', cmdq, 0, -1)

-- Only a head is poisoned: a command still waiting behind an earlier unfinished command of
-- its order (see apply.lua) stays where it is, or the earlier ones would run after it once
-- redriven (redrive puts dead letters in front of the gate). It goes when it heads its order.
local behind = false
if first and first ~= '' and first ~= message_id then
  for _, id in ipairs(queued) do
    if id == message_id then
      behind = true
      break
    end
  end
elseif first ~= message_id then
  for i, id in ipairs(queued) do
    if id == message_id then
      behind = i > 1
      break
    end
  end
end
if behind then
  return {{}, -1}
end
if first == message_id then
  followers = queued
  redis.call('HSET', order, 'firstCommand', '')
  redis.call('DEL', cmdq)
else
  for i, id in ipairs(queued) do
    if id == message_id then
      for j = i + 1, #queued do
        followers[#followers + 1] = queued[j]
      end
      if i == 1 then
        redis.call('DEL', cmdq)
      else
        redis.call('LTRIM', cmdq, 0, i - 2)
      end
      break
    end
  end
end

-- The followers' stream entries, by messageId.
local wanted, left, found = {}, 0, {}
for _, id in ipairs(followers) do
  wanted[id] = true
  left = left + 1
end
local start = '-'
while left > 0 do
  local chunk = redis.call('XRANGE', commands, start, '+', 'COUNT', 500)
  for _, e in ipairs(chunk) do
    local f = fields_of(e[2])
    local id = f['messageId']
    if id and f['orderId'] == order_id and wanted[id] and not found[id] then
      found[id] = {e[1], f['message'] or ''}
      left = left - 1
    end
  end
  if #chunk < 500 then
    break
  end
  start = '(' .. chunk[#chunk][1]
end

local moved, acked, missing = {}, {}, 0
local function bury(entry_id, id, message, count, why)
  local dead_id = redis.call('XADD', dlq, '*', 'messageId', id, 'orderId', order_id,
    'message', message, 'receiveCount', count, 'deadAt', dead_at, 'reason', why)
  redis.call('RPUSH', index, dead_id)
  moved[#moved + 1] = id
  acked[#acked + 1] = entry_id
end

bury(entry, message_id, raw, receives, reason)
for _, id in ipairs(followers) do
  local hit = found[id]
  if hit then
    local pending = redis.call('XPENDING', commands, group, hit[1], hit[1], 1)
    local count = 0
    if pending[1] then
      count = pending[1][4]
    end
    bury(hit[1], id, hit[2], count, 'behind ' .. message_id)
  else
    missing = missing + 1
  end
end
-- pcall: a vanished group (Redis restarted empty) must not fail the script half-way.
redis.pcall('XACK', commands, group, unpack(acked))
redis.call('XDEL', commands, unpack(acked))
return {moved, missing}
