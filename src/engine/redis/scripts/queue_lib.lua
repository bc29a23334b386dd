-- Shared by the command queue's scripts (claim, uncount_waiting, dead_letter, redrive): Herald
-- prepends this file to each of them when it loads them (Scripts::new), so a rule of the FIFO
-- gate is written once. Defines functions only; touches no key.

-- A stream entry's flat field list as a table.
local function fields_of(raw)
  local f = {}
  for i = 1, #raw, 2 do
    f[raw[i]] = raw[i + 1]
  end
  return f
end

-- Whether a command waits behind an earlier unfinished command of its order (its FIFO gate, see
-- apply.lua): the order's unfinished `processOrder` (`firstCommand` of the order hash) is
-- another, or the command is queued behind the head of the order's cmdq list. The keys are
-- built from prefixes with the caller's hash tag, so they live in the caller's cluster slot.
local function waits_its_turn(order_prefix, cmdq_prefix, order_id, message_id)
  if not order_id or not message_id then
    return false
  end
  local first = redis.call('HGET', order_prefix .. order_id, 'firstCommand')
  local position = redis.call('LPOS', cmdq_prefix .. order_id, message_id)
  if first and first ~= '' and first ~= message_id then
    return position ~= false
  end
  return position ~= false and position > 0
end

