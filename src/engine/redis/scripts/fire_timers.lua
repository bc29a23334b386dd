-- Fires the workflow timers due at `now`, earliest first, up to a limit over all the
-- partitions given (one partition on a cluster, where a script touches one slot; all of them
-- on one Redis). Each timer is a member of its partition's timers zset (score: due ms) holding
-- the command it queues (see apply.lua). Per timer, in this one atomic step, so a timer fires
-- once whichever node sweeps: it leaves the zset; then, if its order is gone, or it claims a
-- callback wait (`claimsWait`) that is no longer the order's open wait (the hash field `wait`),
-- nothing more; else it closes the wait it claims and its command is queued exactly as
-- intake.lua's enqueue does (stream entry, then the order's cmdq list: the per-order FIFO
-- gate, see apply.lua). A timer that is its order's heartbeat timer (the hash field `hb`) is
-- no longer the order's once off the schedule: `hb` is deleted with it.
--
-- KEYS: per partition: 1 timers zset, 2 commands stream
-- ARGV: 1 now ms, 2 at most this many, then per partition: 1 order hash key prefix, 2 cmdq key
--       prefix (the order id completes each; same hash tag as the partition's KEYS)
-- Returns: {{due ms of each timer queued, in firing order}, earliest due ms still scheduled
--          (-1: none), {members that do not decode (removed)}}
local now, limit = ARGV[1], tonumber(ARGV[2])
local partitions = #KEYS / 2

local due = {}
for p = 1, partitions do
  local found = redis.call('ZRANGEBYSCORE', KEYS[2 * p - 1], '-inf', now, 'WITHSCORES', 'LIMIT',
    0, limit)
  for i = 1, #found, 2 do
    due[#due + 1] = {p = p, member = found[i], score = tonumber(found[i + 1])}
  end
end
table.sort(due, function(x, y)
  if x.score ~= y.score then
    return x.score < y.score
  end
  if x.p ~= y.p then
    return x.p < y.p
  end
  return x.member < y.member
end)

local fired, malformed = {}, {}
for i = 1, math.min(limit, #due) do
  local t = due[i]
  local timers, commands = KEYS[2 * t.p - 1], KEYS[2 * t.p]
  redis.call('ZREM', timers, t.member)
  local ok, timer = pcall(cjson.decode, t.member)
  if not ok or type(timer) ~= 'table' or type(timer.messageId) ~= 'string'
      or type(timer.orderId) ~= 'string' or type(timer.message) ~= 'string' then
    malformed[#malformed + 1] = t.member
  else
    local order = ARGV[1 + 2 * t.p] .. timer.orderId
    local claims = timer.claimsWait
    local queue = redis.call('EXISTS', order) == 1
    if queue and redis.call('HGET', order, 'hb') == t.member then
      redis.call('HDEL', order, 'hb')
    end
    if queue and type(claims) == 'string' then
      queue = redis.call('HGET', order, 'wait') == claims
      if queue then
        redis.call('HSET', order, 'wait', '')
      end
    end
    if queue then
      redis.call('XADD', commands, '*', 'messageId', timer.messageId, 'orderId', timer.orderId,
        'message', timer.message)
      redis.call('RPUSH', ARGV[2 + 2 * t.p] .. timer.orderId, timer.messageId)
      fired[#fired + 1] = t.score
    end
  end
end

local next_due = -1
for p = 1, partitions do
  local first = redis.call('ZRANGE', KEYS[2 * p - 1], 0, 0, 'WITHSCORES')
  if first[2] then
    local score = tonumber(first[2])
    if next_due < 0 or score < next_due then
      next_due = score
    end
  end
end
return {fired, next_due, malformed}
