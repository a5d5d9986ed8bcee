-- Feed one call's outcome to the circuit (keys as described in circuit_acquire.lua).
-- KEYS[1] hash, KEYS[2] window, KEYS[3] probes
-- ARGV[1] now (us) or ''; ARGV[2] "1" success / "0" failure; ARGV[3] probe id or '';
-- ARGV[4] failure threshold (consecutive); ARGV[5] window size; ARGV[6] minimum calls;
-- ARGV[7] failure-rate threshold (percent); ARGV[8] wait_in_open (us), kept for snapshots
--
-- Returns the new state when it changed ('OPEN' or 'CLOSED'), else 0.
local h = redis.call('HMGET', KEYS[1], 'state', 'forced', 'cf', 'wf', 'wn')
if h[2] then
  return 0 -- an operator's override: outcomes change nothing until it is released
end
local state = h[1] or 'CLOSED'

local function trip(now)
  redis.call('HSET', KEYS[1], 'state', 'OPEN', 'opened_at', now, 'wait', ARGV[8],
    'cf', 0, 'wf', 0, 'wn', 0)
  redis.call('DEL', KEYS[2], KEYS[3])
  return 'OPEN'
end

if ARGV[3] ~= '' then
  -- A probe counts only while its reservation is live: a reservation that expired (or was
  -- dropped when the circuit moved on) belongs to a probe the circuit stopped waiting for.
  local expiry = redis.call('ZSCORE', KEYS[3], ARGV[3])
  if not expiry then
    return 0
  end
  redis.call('ZREM', KEYS[3], ARGV[3])
  local now = now_us()
  if tonumber(expiry) <= now or state ~= 'HALF_OPEN' then
    return 0
  end
  if ARGV[2] == '1' then
    redis.call('HSET', KEYS[1], 'state', 'CLOSED', 'cf', 0, 'wf', 0, 'wn', 0)
    redis.call('HDEL', KEYS[1], 'opened_at', 'wait')
    redis.call('DEL', KEYS[2], KEYS[3])
    return 'CLOSED'
  end
  return trip(now)
end

if state ~= 'CLOSED' then
  return 0 -- an outcome of a call admitted before the circuit opened
end

local old_cf, old_wf, old_wn = tonumber(h[3]) or 0, tonumber(h[4]) or 0, tonumber(h[5]) or 0
local size = tonumber(ARGV[5])
local failed = 1
if ARGV[2] == '1' then
  failed = 0
  -- The steady state of a healthy agent: a success pushed into a full window of successes
  -- leaves it as it was (and no failures in the window means none in a row), so the whole
  -- decision is one HMGET.
  if old_wf == 0 and old_wn == size and tonumber(ARGV[7]) > 0 then
    return 0
  end
end
-- Failure and call counts are kept beside the list so no call reads the whole window.
local failures = old_wf + failed
local calls = redis.call('RPUSH', KEYS[2], failed)
while calls > size do
  if redis.call('LPOP', KEYS[2]) == '1' then
    failures = failures - 1
  end
  calls = calls - 1
end
local consecutive = 0
if failed == 1 then
  consecutive = old_cf + 1
end

if consecutive >= tonumber(ARGV[4]) then
  return trip(now_us())
end
-- Same expression as LocalPolicyStore so both stores round identically.
if calls >= tonumber(ARGV[6]) and 100.0 * failures / calls >= tonumber(ARGV[7]) then
  return trip(now_us())
end
redis.call('HSET', KEYS[1], 'cf', consecutive, 'wf', failures, 'wn', calls)
return 0
