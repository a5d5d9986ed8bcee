-- Shared by the circuit scripts (prepended when a script is registered; rate_limit.lua
-- reads the time itself, the same way, to stay as cheap as it can).
--
-- Time comes from the Redis server, never from the callers: every process and machine then
-- agrees on windows and cool-downs even when their clocks drift. ARGV[1] is empty on the
-- production path; tests pass an explicit time in microseconds to drive a fake clock.
local function now_us()
  if ARGV[1] ~= '' then
    return tonumber(ARGV[1])
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Numbers passed to redis.call keep their precision (Redis formats them with "%.17g"), so
-- times go to commands as numbers. Lua's own number-to-string conversion ("%.14g", used by
-- "..") would round an epoch in microseconds (16 digits): build strings with this instead.
local function us(value)
  return string.format('%.0f', value)
end
