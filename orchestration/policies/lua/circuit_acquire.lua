-- May this call go to the agent? One circuit per agent:
--   hash  c:{agent}      state, forced, opened_at (us), wait (us), cf (consecutive failures),
--                        wf (failures in the window)
--   list  c:{agent}:w    the count-based window of outcomes ("1" = failure), newest last
--   zset  c:{agent}:p    HALF_OPEN probe reservations: member = probe id, score = expiry (us)
--   str   c:{agent}:seq  mints probe ids; outlives resets so an old permit never matches
-- KEYS[1] hash, KEYS[2] probes, KEYS[3] seq
-- ARGV[1] now (us) or ''; ARGV[2] wait_in_open (us); ARGV[3] permitted probes;
-- ARGV[4] reservation ttl (us); ARGV[5] the window size when the failure rate counts, else 0
--
-- Returns 1 (CLOSED), 3 (CLOSED and steady: a full window without a failure, where the
-- call's success changes nothing -- circuit_record.lua's first exit -- so the caller need
-- not send it) or 2 (FORCED_CLOSED) when admitted without a probe -- integers, so the path
-- every request takes parses no array -- else {allowed, state, retry_after_us, probe id or
-- '', transition or ''}.
local h = redis.call('HMGET', KEYS[1], 'state', 'forced', 'opened_at', 'wf', 'wn')
local state, forced = h[1] or 'CLOSED', h[2]
local wait = tonumber(ARGV[2])

if forced == 'OPEN' then
  return {0, 'FORCED_OPEN', wait, '', ''}
elseif forced == 'CLOSED' then
  return 2
end
-- The hot path: a closed circuit needs neither the clock nor a write.
if state == 'CLOSED' then
  local size = tonumber(ARGV[5])
  if size > 0 and tonumber(h[4]) == 0 and tonumber(h[5]) == size then
    return 3
  end
  return 1
end

local now = now_us()
local transition = ''
if state == 'OPEN' then
  local left = (tonumber(h[3]) or 0) + wait - now
  if left > 0 then
    return {0, 'OPEN', left, '', ''}
  end
  -- The first caller after the wait moves the circuit; everyone else sees HALF_OPEN.
  redis.call('HSET', KEYS[1], 'state', 'HALF_OPEN')
  redis.call('DEL', KEYS[2])
  transition = 'HALF_OPEN'
end

-- HALF_OPEN: a bounded number of probes across the whole cluster. A reservation expires
-- so that a probe whose process died (or never reported) cannot hold the circuit half
-- open forever; an expired reservation's late outcome is ignored by circuit_record.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return {0, 'HALF_OPEN', wait, '', transition}
end
local ttl = tonumber(ARGV[4])
-- The time keeps ids unique across a Redis restart that lost the counter.
local probe = us(now) .. '-' .. redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], now + ttl, probe)
local ttl_ms = math.ceil(ttl / 1000)
if redis.call('PTTL', KEYS[2]) < ttl_ms then
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
end
return {1, 'HALF_OPEN', 0, probe, transition}
