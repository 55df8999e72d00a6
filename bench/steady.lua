-- wrk script for bench/run.sh: bench/webhook.lua at a steady rate. Each
-- connection waits PAUSE_MS (environment, default 10) after every answer, so
-- c connections send about c * 1000 / (PAUSE_MS + latency) requests a second.
dofile("bench/webhook.lua")

local pause = tonumber(os.getenv("PAUSE_MS") or "10")

function delay()
  return pause
end
