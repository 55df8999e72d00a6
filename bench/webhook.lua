-- wrk script for bench/run.sh: every request is a distinct, valid delivery.
--
--   wrk ... -s bench/webhook.lua URL -- MODE PHASE [LAG]
--
-- MODE  "webhook": POST Load Impact webhooks to the exporter's /webhook.
--       "push":    POST a one-line metric to a Pushgateway's /metrics/job/bench
--                  (the reference). Both modes build each request in request(),
--                  so wrk spends the same Lua work per request on either side.
-- PHASE a small positive integer, different for every wrk invocation against
--       the same exporter (warm-up vs. measured run), so run ids never repeat.
-- LAG   how many steps a run's test.finished trails its test.started (default
--       2000 per thread). The start of a run is answered long before its finish
--       is sent, so no finish overtakes its start (which would make the late
--       start "ignored" instead of "accepted").
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

local mode, phase, lag
n = 0                -- steps taken by this thread (a global: done() reads it)
local prefix         -- PHASE .. thread id, the high digits of the run id

local status_text = {
  [3] = "Finished", [4] = "Timed out", [5] = "Aborting by user",
  [6] = "Aborted by user", [7] = "Aborting by system", [8] = "Aborted by system",
  [9] = "Aborted by script error", [10] = "Aborting by threshold",
  [11] = "Aborted by threshold", [12] = "Failed threshold",
}

function init(args)
  mode = args[1] or "webhook"
  phase = tonumber(args[2] or "1")
  lag = tonumber(args[3] or "2000")
  if mode ~= "webhook" and mode ~= "push" then
    error("MODE must be webhook or push, not " .. tostring(mode))
  end
  if not phase or phase < 1 or phase > 999 or phase % 1 ~= 0 then
    error("PHASE must be an integer 1..999")
  end
  prefix = string.format("%d%02d", phase, tid)
end

local function webhook(event, run, status, text)
  local lt = 1 + run % 8
  local run_id = prefix .. string.format("%010d", run)
  local body = string.format(
    '{"event":"%s","status":%d,"status_text":"%s","user_id":1,"name":"bench-%d",' ..
    '"organization_id":1,"project_id":1,"load_test_id":%d,"load_test_run_id":%s}',
    event, status, text, lt, lt, run_id)
  local headers = {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "LoadImpactWebHook/bench",
    ["X-LoadImpact-Event"] = event,
    ["X-LoadImpact-ID"] = string.format("bench-%s-%d", prefix, n),
  }
  return wrk.format("POST", nil, headers, body)
end

function request()
  local j = n
  n = n + 1
  if mode == "push" then
    local body = string.format("bench_metric %d\n", j)
    return wrk.format("POST", nil,
      { ["Content-Type"] = "text/plain; version=0.0.4" }, body)
  end
  if j < lag then
    return webhook("test.started", j, 2, "Running")
  end
  local k = j - lag
  if k % 2 == 0 then
    return webhook("test.started", lag + k / 2, 2, "Running")
  end
  local run = (k - 1) / 2
  local status = 3 + run % 10
  return webhook("test.finished", run, status, status_text[status])
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
