-- Sliding-window log over one or more keys, all or nothing.
--
-- A ZSET per key holds one member per admitted request, scored by its time: the count is
-- exact under any concurrency (the script runs atomically) and Retry-After is exact too,
-- because the entry that must leave the window before the next admission is known.
--
-- KEYS[1..n]      the logs (e.g. per organization+agent and per principal+agent)
-- KEYS[n+1..2n]   the sample keys: one "rate.limited" event per key per 10 s
-- KEYS[2n+1..3n]  the rejected-counter hashes (one per agent)
-- ARGV[1] now (us) or ''; ARGV[2] limit; ARGV[3] window (us); ARGV[4] a unique token (the
-- member: two requests in the same microsecond must still be two entries);
-- ARGV[5..4+n] the scope names (the counters' fields)
--
-- Returns the remaining allowance (an integer: the hot path parses no array) when admitted,
-- else {retry_after_us, refusing key index, sampled}.
local n = #KEYS / 3
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local now = now_us()

local counts = {}
local worst_wait, worst = -1, 0
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[i])
  counts[i] = count
  if count >= limit then
    -- Admission needs (count - limit + 1) entries to leave the window: wait for the
    -- entry at rank count - limit (rank 0 when the limit did not change meanwhile).
    local wait = window
    if limit > 0 then
      local entry = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
      wait = tonumber(entry[2]) + window - now
    end
    -- Every full key must have room, so the answer is the longest wait among them.
    if wait > worst_wait then
      worst_wait, worst = wait, i
    end
  end
end

if worst > 0 then
  redis.call('HINCRBY', KEYS[2 * n + worst], ARGV[4 + worst], 1)
  -- NX makes exactly one caller per 10 s win the right to publish an event, so an attack
  -- cannot flood the event table while the counter still counts every refusal.
  local sampled = redis.call('SET', KEYS[n + worst], '1', 'PX', 10000, 'NX')
  return {worst_wait, worst, sampled and 1 or 0}
end

local member = ARGV[4]
local ttl_ms = math.ceil(window / 1000)
local remaining = limit
for i = 1, n do
  redis.call('ZADD', KEYS[i], now, member)
  -- An idle key disappears by itself once its whole log has left the window.
  redis.call('PEXPIRE', KEYS[i], ttl_ms)
  remaining = math.min(remaining, limit - counts[i] - 1)
end
return remaining
