-- Creates or replaces an endpoint's settings and moves the endpoints version forward, in one
-- step: a node that caches the endpoints learns of the write from the version before it can
-- read an event appended after the write.
--
-- Health (`<id>:enabled`, `:disabledReason`, `:failingSinceMs` in the health hash) is written
-- only for a new endpoint or when `enabled` changes (enabling clears failingSinceMs too): an
-- update of other settings keeps the health recorded meanwhile. The settings' own time becomes
-- the endpoint's `updatedAtMs` again (a disabling's time is dropped).
--
-- KEYS: 1 endpoints hash, 2 endpoints version (string counter), 3 health hash
-- ARGV: 1 endpoint id, 2 endpoint JSON, 3 enabled '1' | '0', 4 disabled reason ('' for none),
--       5 failingSinceMs ('' for none), 6 partner id ('' for none), 7 webhook key prefix
-- The endpoint joins its partner's set (see webhook_create_endpoint.lua); no limit applies here.
-- Returns: the new version.
local id = ARGV[1]
local health = KEYS[3]
local stored = redis.call('HGET', health, id .. ':enabled')
redis.call('HSET', KEYS[1], id, ARGV[2])
if ARGV[6] ~= '' then
  redis.call('SADD', ARGV[7] .. 'by_partner:' .. ARGV[6], id)
end
if stored ~= ARGV[3] then
  -- New (or stored before health had its own fields), or `enabled` changes.
  redis.call('HSET', health, id .. ':enabled', ARGV[3])
  if ARGV[4] ~= '' then
    redis.call('HSET', health, id .. ':disabledReason', ARGV[4])
  else
    redis.call('HDEL', health, id .. ':disabledReason')
  end
  if not stored and ARGV[5] ~= '' then
    redis.call('HSET', health, id .. ':failingSinceMs', ARGV[5])
  elseif ARGV[3] == '1' then
    redis.call('HDEL', health, id .. ':failingSinceMs')
  end
end
redis.call('HDEL', health, id .. ':updatedAtMs')
return redis.call('INCR', KEYS[2])
