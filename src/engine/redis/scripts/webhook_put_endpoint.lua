-- Creates or replaces an endpoint and moves the endpoints version forward, in one step: a node
-- that caches the endpoints learns of the write from the version before it can read an event
-- appended after the write.
--
-- KEYS: 1 endpoints hash, 2 endpoints version (string counter)
-- ARGV: 1 endpoint id, 2 endpoint JSON
-- Returns: the new version.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])
