-- Records a batch of attempts and their outcomes, in order, in one atomic step. Per attempt:
-- the attempt joins the capped log, the delivery's state, counters and schedule change, the
-- failed index follows the state, and the endpoint's health is updated (a success clears
-- failingSinceMs; a failure sets it if unset and disables the endpoint when now -
-- failingSinceMs > disable_after; `gone` disables it). A disabling moves the endpoints version
-- forward. An attempt whose delivery is damaged is reported and skipped before it writes
-- anything; the others are recorded.
--
-- Health lives in plain fields of the health hash (`<endpoint id>:enabled` '1' | '0',
-- `:disabledReason`, `:failingSinceMs`, `:updatedAtMs`), never in the endpoint's JSON, so no
-- attempt decodes or re-encodes it, and settings written meanwhile are never overwritten. An
-- endpoint stored before health had its own fields is moved over on its first attempt.
--
-- KEYS: 1 schedule zset, 2 endpoints hash, 3 endpoints version, 4 health hash
-- ARGV: 1 webhook key prefix, 2 attempts kept, 3 disable_after ms, 4 reason for failing longer
--       than disable_after, 5 number of attempts, then per attempt 7 values: delivery id,
--       attempt JSON, now ms (the attempt's time), status code ('' for none), outcome
--       ('succeeded' | 'retry' | 'failed' | 'gone'), retry at ms, reason for 'gone'
-- Returns: per attempt {'unchanged'} | {'disabled', reason} | {'corrupt', what}
local schedule, endpoints, version, health_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, kept = ARGV[1], tonumber(ARGV[2])
local disable_after, too_long = tonumber(ARGV[3]), ARGV[4]

-- Each endpoint's health, read once per call: {enabled = bool, since = number | nil} or false
-- when the endpoint is gone.
local healths = {}
local function health_of(endpoint_id)
  local h = healths[endpoint_id]
  if h ~= nil then
    return h
  end
  local f = redis.call('HMGET', health_key, endpoint_id .. ':enabled',
    endpoint_id .. ':failingSinceMs')
  if f[1] then
    h = {enabled = f[1] == '1', since = tonumber(f[2])}
  else
    local raw = redis.call('HGET', endpoints, endpoint_id)
    if not raw then
      h = false
    else
      -- Stored before health had its own fields: move it over once.
      local ok, decoded = pcall(cjson.decode, raw)
      if not ok or type(decoded) ~= 'table' then
        decoded = {}
      end
      h = {enabled = decoded['enabled'] ~= false, since = nil}
      if type(decoded['failingSinceMs']) == 'number' then
        h.since = decoded['failingSinceMs']
      end
      local fields = {endpoint_id .. ':enabled', h.enabled and '1' or '0'}
      if h.since then
        fields[#fields + 1] = endpoint_id .. ':failingSinceMs'
        fields[#fields + 1] = string.format('%d', h.since)
      end
      if type(decoded['disabledReason']) == 'string' then
        fields[#fields + 1] = endpoint_id .. ':disabledReason'
        fields[#fields + 1] = decoded['disabledReason']
      end
      redis.call('HSET', health_key, unpack(fields))
    end
  end
  healths[endpoint_id] = h
  return h
end

-- An ordered delivery that ended (succeeded or failed) leaves its order's line, and the line's
-- next one (lowest version) is scheduled at `now` unless one of the line is scheduled already.
-- Unordered deliveries never come here.
local function leave_line(endpoint_id, order, id, now)
  local line = prefix .. 'line:' .. endpoint_id .. ':' .. order
  redis.call('ZREM', line, id)
  local members = redis.call('ZRANGE', line, 0, -1)
  if #members == 0 then
    return
  end
  for _, member in ipairs(members) do
    if redis.call('ZSCORE', schedule, member) then
      return
    end
  end
  redis.call('ZADD', schedule, now, members[1])
  redis.call('HSET', prefix .. 'delivery:' .. members[1], 'nextAttemptAtMs', now)
end

local function finish(id, attempt, now, code, outcome, retry_at, gone_reason)
  local key = prefix .. 'delivery:' .. id
  local record = redis.call('HMGET', key, 'endpointId', 'createdAtMs', 'state', 'orderId')
  local endpoint_id, created_at, state, order = record[1], record[2], record[3], record[4]
  if not endpoint_id then
    return {'unchanged'}
  end
  if not created_at then
    return {'corrupt', 'delivery ' .. id .. ' has no createdAtMs'}
  end

  -- The attempt log and the delivery.
  local attempts = prefix .. 'attempts:' .. id
  redis.call('RPUSH', attempts, attempt)
  if redis.call('HINCRBY', key, 'attempts', 1) > kept then
    redis.call('LTRIM', attempts, -kept, -1)
  end
  local set, del = {'updatedAtMs', now}, {}
  if code ~= '' then
    set[#set + 1], set[#set + 2] = 'lastStatusCode', code
  else
    del[#del + 1] = 'lastStatusCode'
  end
  local failed = prefix .. 'failed:' .. endpoint_id
  if outcome == 'succeeded' then
    set[#set + 1], set[#set + 2] = 'state', 'succeeded'
    del[#del + 1] = 'nextAttemptAtMs'
    redis.call('ZREM', schedule, id)
  elseif outcome == 'retry' then
    set[#set + 1], set[#set + 2] = 'state', 'pending'
    set[#set + 1], set[#set + 2] = 'nextAttemptAtMs', retry_at
    redis.call('ZADD', schedule, retry_at, id)
  else
    set[#set + 1], set[#set + 2] = 'state', 'failed'
    del[#del + 1] = 'nextAttemptAtMs'
    redis.call('ZREM', schedule, id)
    redis.call('ZADD', failed, created_at, id)
  end
  -- Only a delivery that was failed (an attempt finishing after another node's, past its
  -- lease) can be in the failed index while not failing now.
  if state == 'failed' and outcome ~= 'failed' and outcome ~= 'gone' then
    redis.call('ZREM', failed, id)
  end
  redis.call('HSET', key, unpack(set))
  if #del > 0 then
    redis.call('HDEL', key, unpack(del))
  end
  if order and outcome ~= 'retry' then
    leave_line(endpoint_id, order, id, now)
  end

  -- The endpoint's health.
  local h = health_of(endpoint_id)
  if not h then
    return {'unchanged'}
  end
  if outcome == 'succeeded' then
    if h.since then
      redis.call('HDEL', health_key, endpoint_id .. ':failingSinceMs')
      h.since = nil
    end
    return {'unchanged'}
  end
  if not h.since then
    h.since = tonumber(now)
    redis.call('HSET', health_key, endpoint_id .. ':failingSinceMs', now)
  end
  local reason = nil
  if outcome == 'gone' then
    reason = gone_reason
  elseif tonumber(now) - h.since > disable_after then
    reason = too_long
  end
  if reason and h.enabled then
    h.enabled = false
    redis.call('HSET', health_key, endpoint_id .. ':enabled', '0',
      endpoint_id .. ':disabledReason', reason, endpoint_id .. ':updatedAtMs', now)
    redis.call('INCR', version)
    return {'disabled', reason}
  end
  return {'unchanged'}
end

local out = {}
local i = 6
for n = 1, tonumber(ARGV[5]) do
  out[n] = finish(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5],
    ARGV[i + 6])
  i = i + 7
end
return out
