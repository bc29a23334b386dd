-- Deletes an idempotency claim only if the record is still exactly that claim (its token):
-- a claim whose reply was lost, never a retry's. Sent as a plain EVAL (see
-- `release_lost_claim` in idempotency.rs), so it must not rely on being loaded.
--
-- KEYS: 1 idempotency key
-- ARGV: 1 the claim's record, exactly as it was SET
-- Returns: 1 if deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
