-- wrk script for bench/run.sh: every request is a distinct, valid delivery.
--
--   wrk ... -s bench/webhook.lua URL -- MODE PHASE [LAG [PROJECTS LOAD_TESTS [QUOTA]]]
--
-- MODE  "webhook": POST Load Impact webhooks to the exporter's /webhook
--       (or to the path in the environment's BENCH_PATH: run.sh's probe).
--       "push":    POST a one-line metric to a Pushgateway's /metrics/job/bench
--                  (the reference). Both modes build each request in request(),
--                  so wrk spends the same Lua work per request on either side.
-- PHASE a small positive integer, different for every wrk invocation against
--       the same exporter (warm-up vs. measured run), so run ids never repeat.
-- LAG   how many steps a run's test.finished trails its test.started (default
--       2000 per thread). The start of a run is answered long before its finish
--       is sent, so no finish overtakes its start (which would make the late
--       start "ignored" instead of "accepted").
-- PROJECTS, LOAD_TESTS  how many of each the runs spread over (default 1 and
--       8): load test = 1 + run % LOAD_TESTS, project = 1 + load test % PROJECTS.
-- QUOTA deliveries per thread (even, > 2 LAG); past it the thread sends
--       GET /-/healthy instead. The last LAG steps before it are finishes
--       only, so exactly QUOTA / 2 runs start and finish. bench/fill.lua stops
--       the thread there.
--
-- Per thread, step j (0-based) sends:
--   j < LAG                : test.started  of run j
--   j >= LAG, (j-LAG) even : test.started  of run LAG + (j-LAG)/2
--   j >= LAG, (j-LAG) odd  : test.finished of run (j-LAG-1)/2
-- load_test_run_id = PHASE .. thread(2 digits) .. run(10 digits): unique per
-- run across threads and phases. X-LoadImpact-ID is unique per request.
-- Finished statuses cycle through 3..12 (every Load Impact 3.0 final status),
-- load_test_id through 1..8, one organization and project: bounded series.
--
-- wrk builds the first thread's first request once to check the script and
-- never sends it, so that run's finish arrives with no start (still accepted).
--
-- wrk runs on the same 2 cores as the server it measures, so every
-- microsecond it spends building a request is one the server does not get.
-- A request is therefore one concatenation of constant parts, made once in
-- init(), with the few values that change: wrk.format (a table of headers,
-- a string.format per header, table.concat) cost wrk about 4 µs more of CPU
-- per ingest request (23.4 -> 19.3 and 21.9 -> 17.4 µs in two alternate runs).
--
-- done() prints one line "BENCH_RESULT {json}" for run.sh to parse:
-- requests = responses wrk read; generated = requests built for sending (the
-- ones in flight when wrk stops are built, maybe served, but not in requests).

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local mode, phase, lag, projects, load_tests, quota
n = 0                -- steps taken by this thread (a global: done() reads it)
local prefix         -- PHASE .. thread id, the high digits of the run id
local head, id_header, healthy -- the constant parts of every request

local status_text = {
  [3] = "Finished", [4] = "Timed out", [5] = "Aborting by user",
  [6] = "Aborted by user", [7] = "Aborting by system", [8] = "Aborted by system",
  [9] = "Aborted by script error", [10] = "Aborting by threshold",
  [11] = "Aborted by threshold", [12] = "Failed threshold",
}

function init(args)
  path = os.getenv("BENCH_PATH") -- nil: the URL's path
  mode = args[1] or "webhook"
  phase = tonumber(args[2] or "1")
  lag = tonumber(args[3] or "2000")
  projects = tonumber(args[4] or "1")
  load_tests = tonumber(args[5] or "8")
  quota = tonumber(args[6] or "0")
  if quota > 0 and (quota % 2 ~= 0 or quota <= 2 * lag) then
    error("QUOTA must be even and larger than 2 LAG")
  end
  if mode ~= "webhook" and mode ~= "push" then
    error("MODE must be webhook or push, not " .. tostring(mode))
  end
  if not phase or phase < 1 or phase > 999 or phase % 1 ~= 0 then
    error("PHASE must be an integer 1..999")
  end
  prefix = string.format("%d%02d", phase, tid)
  local host = "\r\nHost: " .. wrk.headers["Host"] .. "\r\n"
  if mode == "push" then
    head = "POST " .. wrk.path .. " HTTP/1.1" .. host ..
      "Content-Type: text/plain; version=0.0.4\r\nContent-Length: "
  else
    head = "POST " .. (path or wrk.path) .. " HTTP/1.1" .. host ..
      "Content-Type: application/json\r\nUser-Agent: LoadImpactWebHook/bench\r\n" ..
      "X-LoadImpact-Event: "
  end
  id_header = "\r\nX-LoadImpact-ID: bench-" .. prefix .. "-"
  healthy = "GET /-/healthy HTTP/1.1" .. host .. "\r\n"
end

-- The run id's low ten digits, zero-padded (string.format's %010d, cheaper).
local function digits10(run)
  return string.sub(tostring(1e10 + run), 2)
end

local function webhook(event, run, status, text)
  local lt = 1 + run % load_tests
  local project = 1 + lt % projects
  local body = '{"event":"' .. event .. '","status":' .. status ..
    ',"status_text":"' .. text .. '","user_id":1,"name":"bench-' .. lt ..
    '","organization_id":1,"project_id":' .. project .. ',"load_test_id":' .. lt ..
    ',"load_test_run_id":' .. prefix .. digits10(run) .. '}'
  return head .. event .. id_header .. n .. "\r\nContent-Length: " .. #body ..
    "\r\n\r\n" .. body
end

function request()
  local j = n
  n = n + 1
  if mode == "push" then
    local body = "bench_metric " .. j .. "\n"
    return head .. #body .. "\r\n\r\n" .. body
  end
  if quota > 0 and j >= quota then
    return healthy
  end
  if j < lag then
    return webhook("test.started", j, 2, "Running")
  end
  if quota > 0 and j >= quota - lag then
    -- The tail: the finishes of the runs still open.
    local run = (quota - 2 * lag) / 2 + (j - (quota - lag))
    local status = 3 + run % 10
    return webhook("test.finished", run, status, status_text[status])
  end
  local k = j - lag
  if k % 2 == 0 then
    return webhook("test.started", lag + k / 2, 2, "Running")
  end
  local run = (k - 1) / 2
  local status = 3 + run % 10
  return webhook("test.finished", run, status, status_text[status])
end

-- For bench/fill.lua: whether this thread has built all its deliveries.
function quota_reached()
  return quota > 0 and n >= quota
end

function done(summary, latency, requests)
  -- wrk calls request() once on the first thread to check the script
  -- (script_verify_request) and never sends that request: not counted.
  local generated = -1
  for _, t in ipairs(threads) do
    generated = generated + (t:get("n") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"generated":%d,"duration_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, generated, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
