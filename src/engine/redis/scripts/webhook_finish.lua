-- Records one attempt and its outcome in one atomic step: the attempt joins the capped log, the
-- delivery's state, counters and schedule change, the failed index follows the state, and the
-- endpoint's health is updated (a success clears failingSinceMs; a failure sets it if unset and
-- disables the endpoint when now - failingSinceMs > disable_after; `gone` disables it). Every
-- read and check comes before the first write (Redis keeps writes made before a script error).
--
-- The endpoint is JSON written by Herald (serde, camelCase). cjson turns an empty array into
-- `{}` on the way back, so the array fields are put right after encoding; numbers survive
-- (cjson keeps 14 significant digits: millisecond times have 13).
--
-- KEYS: 1 schedule zset, 2 endpoints hash, 3 endpoints version (moved forward on a disabling)
-- ARGV: 1 webhook key prefix, 2 delivery id, 3 attempt JSON, 4 attempts kept, 5 now ms (the
--       attempt's time), 6 status code ('' for none), 7 outcome: 'succeeded' | 'retry' |
--       'failed' | 'gone', 8 retry at ms, 9 reason for 'gone', 10 disable_after ms,
--       11 reason for failing longer than disable_after
-- Returns: {'unchanged'} | {'disabled', reason} | {'corrupt', what}
local schedule, endpoints = KEYS[1], KEYS[2]
local prefix, id = ARGV[1], ARGV[2]
local now, outcome = ARGV[5], ARGV[7]
local key = prefix .. 'delivery:' .. id

local record = redis.call('HMGET', key, 'endpointId', 'createdAtMs')
local endpoint_id, created_at = record[1], record[2]
if not endpoint_id then
  return {'unchanged'}
end
if not created_at then
  return {'corrupt', 'delivery ' .. id .. ' has no createdAtMs'}
end
local endpoint = nil
local raw = redis.call('HGET', endpoints, endpoint_id)
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if not ok or type(decoded) ~= 'table' then
    return {'corrupt', 'endpoint ' .. endpoint_id .. ' is not a JSON object'}
  end
  endpoint = decoded
end

-- The attempt log and the delivery.
local attempts = prefix .. 'attempts:' .. id
redis.call('RPUSH', attempts, ARGV[3])
redis.call('LTRIM', attempts, -tonumber(ARGV[4]), -1)
redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSET', key, 'updatedAtMs', now)
if ARGV[6] ~= '' then
  redis.call('HSET', key, 'lastStatusCode', ARGV[6])
else
  redis.call('HDEL', key, 'lastStatusCode')
end
local failed = prefix .. 'failed:' .. endpoint_id
if outcome == 'succeeded' then
  redis.call('HSET', key, 'state', 'succeeded')
  redis.call('HDEL', key, 'nextAttemptAtMs')
  redis.call('ZREM', schedule, id)
  redis.call('ZREM', failed, id)
elseif outcome == 'retry' then
  redis.call('HSET', key, 'state', 'pending', 'nextAttemptAtMs', ARGV[8])
  redis.call('ZADD', schedule, ARGV[8], id)
  redis.call('ZREM', failed, id)
else
  redis.call('HSET', key, 'state', 'failed')
  redis.call('HDEL', key, 'nextAttemptAtMs')
  redis.call('ZREM', schedule, id)
  redis.call('ZADD', failed, created_at, id)
end

-- The endpoint's health.
if not endpoint then
  return {'unchanged'}
end
local changed, disabled = false, nil
local since = endpoint['failingSinceMs']
if outcome == 'succeeded' then
  if type(since) == 'number' then
    endpoint['failingSinceMs'] = cjson.null
    changed = true
  end
else
  if type(since) ~= 'number' then
    since = tonumber(now)
    endpoint['failingSinceMs'] = since
    changed = true
  end
  local reason = nil
  if outcome == 'gone' then
    reason = ARGV[9]
  elseif tonumber(now) - since > tonumber(ARGV[10]) then
    reason = ARGV[11]
  end
  if reason and endpoint['enabled'] == true then
    endpoint['enabled'] = false
    endpoint['disabledReason'] = reason
    endpoint['updatedAtMs'] = tonumber(now)
    changed = true
    disabled = reason
    redis.call('INCR', KEYS[3])
  end
end
if changed then
  local json = cjson.encode(endpoint)
  json = string.gsub(json, '"eventTypes":{}', '"eventTypes":[]')
  json = string.gsub(json, '"secrets":{}', '"secrets":[]')
  redis.call('HSET', endpoints, endpoint_id, json)
end
if disabled then
  return {'disabled', disabled}
end
return {'unchanged'}
