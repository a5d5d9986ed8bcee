-- Everything an operator sees about one circuit, read at one instant.
-- KEYS[1] hash, KEYS[2] window, KEYS[3] probes (see circuit_acquire.lua); ARGV[1] now or ''.
-- Returns {state, forced, cf, wf, opened_at, wait, window calls, live probes}.
local h = redis.call('HMGET', KEYS[1], 'state', 'forced', 'cf', 'wf', 'opened_at', 'wait')
local calls = redis.call('LLEN', KEYS[2])
local probes = redis.call('ZCOUNT', KEYS[3], '(' .. us(now_us()), '+inf')
return {h[1] or 'CLOSED', h[2] or '', h[3] or '0', h[4] or '0', h[5] or '', h[6] or '',
  calls, probes}
