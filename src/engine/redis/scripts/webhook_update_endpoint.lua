-- Changes some of an endpoint's settings (PATCH) or rotates its secret, field by field in one
-- atomic step: the stored record is read, the named fields alone are changed and it is written
-- back, so another PATCH's fields, a secret rotated meanwhile and the health the sender records
-- (in the health hash, never in the record) all stay. Moves the endpoints version forward.
--
-- cjson encodes an empty table as `{}`: an empty `eventTypes` (all types) is left out of the
-- record instead, which reads back as empty. Secrets are never empty.
--
-- KEYS: 1 endpoints hash, 2 endpoints version (string counter), 3 health hash
-- ARGV: 1 endpoint id, 2 updatedAtMs, 3 mode 'patch' | 'rotate', then
--       patch: 4 enabled ('' unchanged | '1' | '0'), 5 reason recorded when disabling,
--              6 number of settings n, then n pairs (field name, JSON value)
--       rotate: 4 the new secret, 5 when the current secret stops signing (ms)
-- Returns: false when there is no such endpoint, else {endpoint JSON, then the health fields
--          enabled, disabledReason, failingSinceMs, updatedAtMs (false when unset)}
local endpoints, health = KEYS[1], KEYS[3]
local id, mode = ARGV[1], ARGV[3]
local raw = redis.call('HGET', endpoints, id)
if not raw then
  return false
end
local ok, endpoint = pcall(cjson.decode, raw)
if not ok or type(endpoint) ~= 'table' then
  return redis.error_reply('endpoint ' .. id .. ': record does not decode')
end

if mode == 'patch' then
  local n = tonumber(ARGV[6])
  for i = 7, 6 + 2 * n, 2 do
    endpoint[ARGV[i]] = cjson.decode(ARGV[i + 1])
  end
  local enable = ARGV[4]
  if enable ~= '' then
    local stored = redis.call('HGET', health, id .. ':enabled')
    local enabled
    if stored then
      enabled = stored == '1'
    else
      enabled = endpoint['enabled'] ~= false
    end
    if enable == '1' and not enabled then
      redis.call('HSET', health, id .. ':enabled', '1')
      redis.call('HDEL', health, id .. ':disabledReason', id .. ':failingSinceMs')
      endpoint['enabled'], endpoint['disabledReason'] = true, cjson.null
      endpoint['failingSinceMs'] = cjson.null
    elseif enable == '0' and enabled then
      redis.call('HSET', health, id .. ':enabled', '0', id .. ':disabledReason', ARGV[5])
      endpoint['enabled'], endpoint['disabledReason'] = false, ARGV[5]
    end
  end
elseif mode == 'rotate' then
  -- The current secret (the one without an expiry, else the newest) keeps signing beside the
  -- new one; older ones stop now.
  local previous = nil
  if type(endpoint['secrets']) == 'table' then
    for _, s in ipairs(endpoint['secrets']) do
      if type(s) == 'table' and (s['expiresAtMs'] == nil or s['expiresAtMs'] == cjson.null) then
        previous = s['secret']
        break
      end
    end
    local first = endpoint['secrets'][1]
    if not previous and type(first) == 'table' then
      previous = first['secret']
    end
  end
  local secrets = {{secret = ARGV[4], expiresAtMs = cjson.null}}
  if type(previous) == 'string' then
    secrets[2] = {secret = previous, expiresAtMs = tonumber(ARGV[5])}
  end
  endpoint['secrets'] = secrets
else
  return redis.error_reply('unknown mode ' .. mode)
end

if type(endpoint['eventTypes']) == 'table' and next(endpoint['eventTypes']) == nil then
  endpoint['eventTypes'] = nil
end
endpoint['updatedAtMs'] = tonumber(ARGV[2])
local json = cjson.encode(endpoint)
redis.call('HSET', endpoints, id, json)
-- The settings' own time becomes the endpoint's updatedAtMs again (as webhook_put_endpoint).
redis.call('HDEL', health, id .. ':updatedAtMs')
redis.call('INCR', KEYS[2])
local h = redis.call('HMGET', health, id .. ':enabled', id .. ':disabledReason',
  id .. ':failingSinceMs', id .. ':updatedAtMs')
return {json, h[1], h[2], h[3], h[4]}
