-- Retention of delivery records: deletes up to a number of one endpoint's deliveries created
-- before a time (of a deleted endpoint, whatever their age), each with its attempt log, its
-- places in the by_endpoint and failed indexes, on the schedule and in its order's line (an
-- ordered delivery), in one atomic step. Bounded
-- work per call; the caller calls again while a call deletes as many as it may. Safe on several
-- nodes at once: what one deletes, the other no longer finds. A deleted endpoint whose records
-- are all gone leaves the set of deleted endpoints to sweep.
--
-- KEYS: 1 schedule zset, 2 endpoints hash, 3 deleted endpoints to sweep (set)
-- ARGV: 1 webhook key prefix, 2 endpoint id, 3 created before (ms), 4 at most this many
-- Returns: how many deliveries were deleted.
local schedule, endpoints, deleted = KEYS[1], KEYS[2], KEYS[3]
local prefix, endpoint = ARGV[1], ARGV[2]
local by_endpoint = prefix .. 'by_endpoint:' .. endpoint
local failed = prefix .. 'failed:' .. endpoint
local live = redis.call('HEXISTS', endpoints, endpoint) == 1
local upto = '+inf'
if live then
  upto = '(' .. ARGV[3]
end
local ids = redis.call('ZRANGEBYSCORE', by_endpoint, '-inf', upto, 'LIMIT', 0, tonumber(ARGV[4]))
local swept_lines = {}
for _, id in ipairs(ids) do
  local order = redis.call('HGET', prefix .. 'delivery:' .. id, 'orderId')
  if order then
    local line = prefix .. 'line:' .. endpoint .. ':' .. order
    redis.call('ZREM', line, id)
    swept_lines[line] = true
  end
  redis.call('DEL', prefix .. 'delivery:' .. id, prefix .. 'attempts:' .. id)
end
-- In slices: unpack has a limit on how many values it returns.
for i = 1, #ids, 1000 do
  local last = math.min(i + 999, #ids)
  redis.call('ZREM', by_endpoint, unpack(ids, i, last))
  redis.call('ZREM', failed, unpack(ids, i, last))
  redis.call('ZREM', schedule, unpack(ids, i, last))
end
-- A swept member may have been its line's scheduled head: what is left of the line gets its
-- lowest version scheduled now (as webhook_finish.lua's leave_line), or it would wait for ever
-- and then be swept unsent. Lines of a deleted endpoint are only emptied.
if live then
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  for line in pairs(swept_lines) do
    local members = redis.call('ZRANGE', line, 0, -1)
    local scheduled = false
    for _, member in ipairs(members) do
      if redis.call('ZSCORE', schedule, member) then
        scheduled = true
        break
      end
    end
    if #members > 0 and not scheduled then
      redis.call('ZADD', schedule, now_ms, members[1])
      redis.call('HSET', prefix .. 'delivery:' .. members[1], 'nextAttemptAtMs', now_ms)
    end
  end
end
if not live and redis.call('EXISTS', by_endpoint) == 0 then
  redis.call('SREM', deleted, endpoint)
  redis.call('DEL', failed)
end
return #ids
