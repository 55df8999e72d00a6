-- wrk script for bench/run.sh: bench/webhook.lua at a fixed rate, whatever
-- the latency. RATE (environment, default 1000) is the requests per second
-- of all THREADS (default 2) together: each thread sends its k-th request
-- at its start + k * THREADS / RATE seconds (delay() returns the wait, on
-- CLOCK_MONOTONIC), so the rate holds as long as a connection is free when
-- a request is due. Give it enough connections that one always is: with
-- 32, each connection has 32 ms at 1,000/s before it is late. A late
-- request is sent at once and the schedule goes on from where it stood, so
-- the run catches up rather than drifting.
dofile("bench/webhook.lua")

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local rate = tonumber(os.getenv("RATE") or "1000")
local period_ms = 1000 * tonumber(os.getenv("THREADS") or "2") / rate
local due -- when this thread's next request is due (ms)

function delay()
  local now = now_ms()
  due = (due or now) + period_ms
  local wait = due - now
  return wait > 0 and wait or 0
end
