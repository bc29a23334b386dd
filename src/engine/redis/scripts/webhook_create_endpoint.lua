-- Stores a new endpoint unless its partner already has the most endpoints allowed, counting and
-- inserting in one atomic step: two creates racing for a partner's last slot cannot both pass.
-- Each partner's endpoint ids are kept in a set (`by_partner:<partner id>`), written by this
-- script, by webhook_put_endpoint.lua and by webhook_delete_endpoint.lua; endpoints stored
-- before the sets existed are indexed once, by the first create that needs a count (the marker
-- key says it was done). Endpoints without a partner (admin endpoints for every order) are not
-- limited. A new endpoint's health fields are written beside it, and the endpoints version
-- moves forward.
--
-- KEYS: 1 endpoints hash, 2 endpoints version (string counter), 3 health hash, 4 marker: the
--       partner sets were built
-- ARGV: 1 endpoint id, 2 endpoint JSON, 3 partner id ('' for none), 4 most endpoints per
--       partner, 5 webhook key prefix, 6 enabled '1' | '0', 7 disabled reason ('' for none)
-- Returns: {'created'} | {'limit', the partner's current count}
local endpoints, health = KEYS[1], KEYS[3]
local id, partner, prefix = ARGV[1], ARGV[3], ARGV[5]
if partner ~= '' then
  if redis.call('EXISTS', KEYS[4]) == 0 then
    local all = redis.call('HGETALL', endpoints)
    for i = 1, #all, 2 do
      local ok, e = pcall(cjson.decode, all[i + 1])
      if ok and type(e) == 'table' and type(e['partnerId']) == 'string' then
        redis.call('SADD', prefix .. 'by_partner:' .. e['partnerId'], all[i])
      end
    end
    redis.call('SET', KEYS[4], '1')
  end
  local set = prefix .. 'by_partner:' .. partner
  local count = redis.call('SCARD', set) - redis.call('SISMEMBER', set, id)
  if count >= tonumber(ARGV[4]) then
    return {'limit', count}
  end
  redis.call('SADD', set, id)
end
redis.call('HSET', endpoints, id, ARGV[2])
redis.call('HDEL', health, id .. ':disabledReason', id .. ':failingSinceMs', id .. ':updatedAtMs')
redis.call('HSET', health, id .. ':enabled', ARGV[6])
if ARGV[7] ~= '' then
  redis.call('HSET', health, id .. ':disabledReason', ARGV[7])
end
redis.call('INCR', KEYS[2])
return {'created'}
