-- GCRA (the generic cell rate algorithm) over one or more keys, all or nothing.
--
-- Each key holds one integer: its theoretical arrival time (TAT, us), the instant at which
-- the key is back to a full allowance. A request moves it one emission interval T later
-- (T = window / limit, counted from now when the TAT lies in the past) and is admitted while
-- the moved TAT is at most `limit` intervals (the burst, B = limit * T) ahead of now. So an
-- idle key admits a burst of exactly `limit`, then one request per T; over any span of L us
-- at most limit + floor(L / T) are admitted. O(1) state, exact under any concurrency (the
-- script runs atomically), and the Retry-After is exact: the wait until the moved TAT is
-- within B of now.
--
-- KEYS[1..n]      the TATs (e.g. per organization+agent and per principal+agent)
-- KEYS[n+1..2n]   the sample keys, "...|<scope>": one "rate.limited" event per key per 10 s;
--                 their names end with the key's scope, the field its refusals count in
-- KEYS[2n+1]      the agent's rejected-counter hash (a decision is about one agent)
-- KEYS[2n+2]      optional: the agent's circuit hash (circuit_acquire.lua), read on admission
-- ARGV[1] the emission interval T (us, an integer); ARGV[2] limit; with the circuit hash,
-- ARGV[3] the circuit's window size; then now (us), only from tests driving a fake clock
-- (production reads the server's TIME)
--
-- Returns the remaining allowance (an integer: the hot path parses no array) when admitted,
-- else {retry_after_us, refusing key index, sampled}. With the circuit hash, an admission
-- answers remaining * 4 + the circuit's code: 1 CLOSED, 2 FORCED_CLOSED (admitted without a
-- probe, exactly as circuit_acquire.lua would answer), 3 CLOSED and steady -- a full window
-- without a failure, where a success changes nothing (circuit_record.lua's first exit) --,
-- 0 anything else (the caller asks circuit_acquire.lua). A sync run saves that round trip
-- on the path every request takes.
--
-- This runs in front of every request, and in Redis a script's cost is mostly its commands
-- and the Lua it interprets (bench/policies.py), so the path of two keys in use is three
-- commands (TIME, one INCRBY per key) and a few arithmetic operators: INCRBY moves a TAT that
-- lies ahead of now in one step, answers an integer (nothing to parse or format) and keeps
-- the key's expiry. An idle key (INCRBY moved a TAT that had passed, or created the key)
-- takes one more write, and a refusal undoes the moves with DECRBY. Numbers go to commands
-- through "%d" (integers below 2^53, exact; far cheaper than the "%.17g" Redis applies to a
-- bare number). The prelude is not prepended (its helpers would be created on every call):
-- time is read here the same way, from the server.
local n = math.floor((#KEYS - 1) / 2)
local with_circuit = #KEYS > 2 * n + 1
local interval = tonumber(ARGV[1])
local burst = interval * tonumber(ARGV[2])
-- A key must outlive its TAT (an absent key means a full allowance) but is not re-armed on
-- every write: a TAT in span k (spans of B us) gets the expiry "end of span k + 1", at
-- least B after it, and keeps it until the TAT moves into the next span. (A limit of 0
-- admits nothing; its spans are one interval long.)
local span = burst > interval and burst or interval
-- (Not `with_circuit and ARGV[4] or ARGV[3]`: with no ARGV[4] that yields ARGV[3].)
local now = tonumber(ARGV[3])
if with_circuit then
  now = tonumber(ARGV[4])
end
if not now then
  local t = redis.call('TIME')
  now = t[1] * 1000000 + t[2]
end

local worst_wait, worst, remaining = 0, 0, burst
for i = 1, n do
  local tat = redis.call('INCRBY', KEYS[i], ARGV[1])
  local previous = tat - interval
  if previous < now then
    -- Idle (or new: INCRBY started from 0): a full allowance again, counted from now.
    tat = now + interval
    local start = tat - tat % span
    if previous > 0 and previous - previous % span == start then
      -- Still in the span the key's expiry was armed for (stale keys outlive their TAT):
      -- move it the rest of the way; INCRBY keeps the expiry.
      redis.call('INCRBY', KEYS[i], string.format('%d', now - previous))
    else
      redis.call('SET', KEYS[i], string.format('%d', tat), 'PX',
        string.format('%d', math.ceil((start + 2 * span - now) / 1000)))
    end
  elseif tat % span < interval then
    -- This move crossed into the next span.
    redis.call('PEXPIRE', KEYS[i],
      string.format('%d', math.ceil((tat - tat % span + 2 * span - now) / 1000)))
  end
  -- Every key must have room, so the answer is the longest wait among them (the first
  -- key on a tie); the remaining allowance is the smallest room left.
  local wait = tat - burst - now
  if wait > worst_wait then
    worst_wait, worst = wait, i
  end
  if -wait < remaining then
    remaining = -wait
  end
end

if worst > 0 then
  -- Not admitted: no key moves. (A key SET afresh above goes back to now, which means a
  -- full allowance, exactly like the absent or stale key it was.)
  for i = 1, n do
    redis.call('DECRBY', KEYS[i], ARGV[1])
  end
  redis.call('HINCRBY', KEYS[2 * n + 1], string.match(KEYS[n + worst], '|([^|]*)$'), 1)
  -- NX makes exactly one caller per 10 s win the right to publish an event, so an attack
  -- cannot flood the event table while the counter still counts every refusal.
  local sampled = redis.call('SET', KEYS[n + worst], '1', 'PX', 10000, 'NX')
  return {worst_wait, worst, sampled and 1 or 0}
end
remaining = math.floor(remaining / interval)
if with_circuit then
  local c = redis.call('HMGET', KEYS[#KEYS], 'state', 'forced', 'wf', 'wn')
  if c[2] == 'CLOSED' then
    return remaining * 4 + 2
  elseif not c[2] and (not c[1] or c[1] == 'CLOSED') then
    local size = tonumber(ARGV[3])
    if size > 0 and tonumber(c[3]) == 0 and tonumber(c[4]) == size then
      return remaining * 4 + 3
    end
    return remaining * 4 + 1
  end
  return remaining * 4
end
return remaining
