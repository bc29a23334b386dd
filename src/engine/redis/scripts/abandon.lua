-- Deletes an idempotency record only while it is still in flight: a completed response must
-- survive a late abandon.
--
-- KEYS: 1 idempotency key
-- Returns: 1 if deleted, else 0.
local value = redis.call('GET', KEYS[1])
if not value then
  return 0
end
local ok, record = pcall(cjson.decode, value)
if ok and type(record) == 'table' and record['state'] == 'inflight' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
