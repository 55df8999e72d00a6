#!/usr/bin/env bash
# Benchmark: durable webhook throughput of loadimpact-exporter beside a
# Pushgateway taking POSTs of a one-line metric, same wrk settings, same run.
#
#   bench/run.sh                      # c = 1, 16, 64; 3 s warm-up + 10 s each
#   BENCH_CONNECTIONS="64" BENCH_DURATION=20 bench/run.sh
#
# Settings (environment):
#   BENCH_CONNECTIONS  wrk connection counts to run        (default "1 16 64")
#   BENCH_DURATION     measured seconds per wrk run        (default 10)
#   BENCH_WARMUP       warm-up seconds before it           (default 3)
#   BENCH_BIN          exporter binary   (default target/release/loadimpact-exporter,
#                      built with `cargo build --release` if missing)
#   BENCH_PUSHGATEWAY  Pushgateway binary                  (default prometheus-pushgateway)
#   BENCH_TMPDIR       where the stores live; must be a real disk, not tmpfs
#                      (default $TMPDIR or /tmp)
#   BENCH_KEEP=1       keep the work directory (logs, scrapes, wrk output)
#
# For each connection count c: a fresh exporter (fresh --storage.path) and a
# fresh Pushgateway (--persistence.file= : in memory), each on a free port of
# 127.0.0.1; wrk -t min(2,c) -c c warm-up, then the measured run with
# --latency. Every webhook is a distinct delivery (bench/webhook.lua), so every
# 200 is an "accepted" event that was fsync'd by redb before the answer.
# After the run the exporter's /metrics is read to check that the accepted
# events match what wrk counted and to get the group-commit figures.
# Peak RSS is VmHWM from /proc/PID/status. Every process started here is
# stopped by PID on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CONNECTIONS=${BENCH_CONNECTIONS:-"1 16 64"}
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-3}
BIN=${BENCH_BIN:-$ROOT/target/release/loadimpact-exporter}
PUSHGATEWAY=${BENCH_PUSHGATEWAY:-prometheus-pushgateway}
LUA=$ROOT/bench/webhook.lua

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

[[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "BENCH_DURATION must be whole seconds > 0"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be whole seconds"
for tool in wrk curl jq awk ss "$PUSHGATEWAY"; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install wrk curl jq prometheus-pushgateway)"
done

if [[ ! -x $BIN ]]; then
  log "building the release binary (cargo build --release; a few minutes on 2 cores)"
  cargo build --release --locked >&2
fi
[[ -x $BIN ]] || die "no exporter binary at $BIN"

WORK=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/loadimpact-bench.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then
    echo "== work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

FSTYPE=$(df -T "$WORK" | awk 'NR==2 {print $2}')
[[ $FSTYPE != tmpfs && $FSTYPE != ramfs ]] \
  || die "$WORK is on $FSTYPE: fsync would cost nothing; set BENCH_TMPDIR to a disk"

# A TCP port of 127.0.0.1 that no socket uses, in any state, below the
# ephemeral range (a client's TIME-WAIT on an ephemeral port blocks bind).
free_port() {
  local port tries=0 low
  low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range)
  ((low > 11000)) || low=61000
  while ((tries++ < 200)); do
    port=$((10000 + RANDOM % (low - 10000)))
    if ! ss -Htan "sport = :$port" | grep -q .; then
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

wait_ready() {
  local url=$1 pid=$2 i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || die "process $pid exited before $url was ready"
    curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return
    sleep 0.1
  done
  die "$url not ready after 10 s"
}

# CPU seconds (user + system) used so far by a process.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz}' "/proc/$1/stat"
}

# kB from /proc/PID/status (VmHWM = peak resident, VmRSS = now).
vm_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# Sum of a metric's samples in a scrape, optionally only lines matching a regex.
msum() {
  awk -v n="$2" -v f="${3:-}" '
    { name = $1; sub(/[{].*/, "", name) }
    name == n && (f == "" || $1 ~ f) { s += $NF }
    END { printf "%.6f\n", s + 0 }' "$1"
}

# wrk with the script; writes its output to $out and the BENCH_RESULT JSON to
# $out.json. Args: out url c mode phase seconds. wrk runs in the background
# and is waited for, so Ctrl-C / SIGTERM stop the run at once.
run_wrk() {
  local out=$1 url=$2 c=$3 mode=$4 phase=$5 secs=$6 threads=$(($3 < 2 ? $3 : 2)) pid rc=0
  timeout $((secs + 30)) wrk -t"$threads" -c"$c" -d"${secs}s" --latency \
    -s "$LUA" "$url" -- "$mode" "$phase" >"$out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait "$pid" || rc=$?
  forget "$pid"
  ((rc == 0)) || { cat "$out" >&2; die "wrk failed with status $rc (see above)"; }
  grep -q '^BENCH_RESULT ' "$out" || { cat "$out" >&2; die "wrk printed no BENCH_RESULT line"; }
  sed -n 's/^BENCH_RESULT //p' "$out" >"$out.json"
}

# Drops a PID that has been waited for from the list cleanup() stops.
forget() {
  local p keep=()
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}

# Args: name pid url c mode dir. Warm-up, then the measured run; writes
# $dir/result.json with wrk's figures, CPU and memory.
measure() {
  local name=$1 pid=$2 url=$3 c=$4 mode=$5 dir=$6 metrics_url=$7
  local cpu0 cpu1
  if ((WARMUP > 0)); then
    run_wrk "$dir/warmup.txt" "$url" "$c" "$mode" 1 "$WARMUP"
    sleep 1
  fi
  curl -fsS --max-time 10 "$metrics_url" >"$dir/before.prom"
  cpu0=$(cpu_seconds "$pid")
  run_wrk "$dir/wrk.txt" "$url" "$c" "$mode" 2 "$DURATION"
  cpu1=$(cpu_seconds "$pid")
  sleep 1 # requests cut off when wrk stopped finish their commit
  curl -fsS --max-time 10 "$metrics_url" >"$dir/after.prom"
  jq -c --arg name "$name" --argjson c "$c" --argjson cpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{print b - a}')" \
    --argjson hwm "$(vm_kb "$pid" VmHWM)" --argjson rss "$(vm_kb "$pid" VmRSS)" \
    '{name: $name, c: $c, cpu_s: $cpu, vmhwm_kb: $hwm, vmrss_kb: $rss} + .' "$dir/wrk.txt.json" >"$dir/result.json"
}

stop() { # pid name: SIGTERM, wait (10 s at most, then SIGKILL), report a non-zero exit
  local pid=$1 rc=0 i
  kill -TERM "$pid"
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "!! $2 (pid $pid) still running 10 s after SIGTERM; sending SIGKILL" >&2
    kill -KILL "$pid"
  fi
  wait "$pid" || rc=$?
  forget "$pid"
  ((rc == 0)) || echo "!! $2 (pid $pid) exited with status $rc after SIGTERM" >&2
}

bench_exporter() {
  local c=$1 dir=$WORK/exporter-c$1 port pid
  mkdir -p "$dir"
  port=$(free_port)
  "$BIN" --web.listen-address="127.0.0.1:$port" --storage.path="$dir/store" >"$dir/exporter.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_ready "http://127.0.0.1:$port/-/ready" "$pid"
  log "exporter c=$c (pid $pid, port $port): ${WARMUP}s warm-up + ${DURATION}s"
  measure exporter "$pid" "http://127.0.0.1:$port/webhook" "$c" webhook "$dir" "http://127.0.0.1:$port/metrics"
  stop "$pid" exporter
  local b=$dir/before.prom a=$dir/after.prom
  # Deltas over the measured run, from the exporter's own metrics.
  jq -c \
    --argjson acc "$(awk -v x="$(msum "$a" loadimpact_webhook_events_total 'result="accepted"')" -v y="$(msum "$b" loadimpact_webhook_events_total 'result="accepted"')" 'BEGIN{print x - y}')" \
    --argjson dup "$(awk -v x="$(msum "$a" loadimpact_webhook_events_total 'result="duplicate"')" -v y="$(msum "$b" loadimpact_webhook_events_total 'result="duplicate"')" 'BEGIN{print x - y}')" \
    --argjson ign "$(awk -v x="$(msum "$a" loadimpact_webhook_events_total 'result="ignored"')" -v y="$(msum "$b" loadimpact_webhook_events_total 'result="ignored"')" 'BEGIN{print x - y}')" \
    --argjson non200 "$(awk -v x="$(msum "$a" loadimpact_webhook_requests_total)" -v y="$(msum "$b" loadimpact_webhook_requests_total)" \
        -v x200="$(msum "$a" loadimpact_webhook_requests_total 'code="200"')" -v y200="$(msum "$b" loadimpact_webhook_requests_total 'code="200"')" \
        'BEGIN{print (x - x200) - (y - y200)}')" \
    --argjson commits "$(awk -v x="$(msum "$a" loadimpact_exporter_store_commits_total)" -v y="$(msum "$b" loadimpact_exporter_store_commits_total)" 'BEGIN{print x - y}')" \
    --argjson failures "$(awk -v x="$(msum "$a" loadimpact_exporter_store_commit_failures_total)" -v y="$(msum "$b" loadimpact_exporter_store_commit_failures_total)" 'BEGIN{print x - y}')" \
    --argjson ipc_sum "$(awk -v x="$(msum "$a" loadimpact_exporter_store_inputs_per_commit_sum)" -v y="$(msum "$b" loadimpact_exporter_store_inputs_per_commit_sum)" 'BEGIN{print x - y}')" \
    --argjson ipc_count "$(awk -v x="$(msum "$a" loadimpact_exporter_store_inputs_per_commit_count)" -v y="$(msum "$b" loadimpact_exporter_store_inputs_per_commit_count)" 'BEGIN{print x - y}')" \
    --argjson cd_sum "$(awk -v x="$(msum "$a" loadimpact_exporter_store_commit_duration_seconds_sum)" -v y="$(msum "$b" loadimpact_exporter_store_commit_duration_seconds_sum)" 'BEGIN{print x - y}')" \
    --argjson slow "$(awk -v x="$(msum "$a" loadimpact_exporter_store_commit_duration_seconds_count)" -v y="$(msum "$b" loadimpact_exporter_store_commit_duration_seconds_count)" \
        -v x64="$(msum "$a" loadimpact_exporter_store_commit_duration_seconds_bucket 'le="0.064"')" -v y64="$(msum "$b" loadimpact_exporter_store_commit_duration_seconds_bucket 'le="0.064"')" \
        'BEGIN{print (x - x64) - (y - y64)}')" \
    --argjson accepted_total "$(msum "$a" loadimpact_webhook_events_total 'result="accepted"')" \
    --argjson logged "$(grep -c 'webhook applied' "$dir/exporter.log" || true)" \
    '. + {accepted: $acc, duplicate: $dup, ignored: $ign, non200: $non200, commits: $commits,
          commit_failures: $failures, slow_commits: $slow, commit_s: $cd_sum, inputs_per_commit: (if $ipc_count > 0 then $ipc_sum / $ipc_count else null end),
          commit_ms_mean: (if $commits > 0 then 1000 * $cd_sum / $commits else null end),
          accepted_total: $accepted_total, log_lines_applied: $logged}' \
    "$dir/result.json" >"$dir/result.full.json"
  mv "$dir/result.full.json" "$dir/result.json"
}

bench_pushgateway() {
  local c=$1 dir=$WORK/pushgateway-c$1 port pid
  mkdir -p "$dir"
  port=$(free_port)
  "$PUSHGATEWAY" --web.listen-address="127.0.0.1:$port" --persistence.file= >"$dir/pushgateway.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_ready "http://127.0.0.1:$port/-/ready" "$pid"
  log "pushgateway c=$c (pid $pid, port $port): ${WARMUP}s warm-up + ${DURATION}s"
  measure pushgateway "$pid" "http://127.0.0.1:$port/metrics/job/bench" "$c" push "$dir" "http://127.0.0.1:$port/metrics"
  stop "$pid" pushgateway
  local a=$dir/after.prom b=$dir/before.prom
  jq -c --argjson ok "$(awk -v x="$(msum "$a" pushgateway_http_requests_total 'handler="push".*code="200"|code="200".*handler="push"')" -v y="$(msum "$b" pushgateway_http_requests_total 'handler="push".*code="200"|code="200".*handler="push"')" 'BEGIN{print x - y}')" \
    '. + {push_200: $ok}' "$dir/result.json" >"$dir/result.full.json"
  mv "$dir/result.full.json" "$dir/result.json"
}

# ---- the machine ------------------------------------------------------------
echo "# loadimpact-exporter benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo
echo "- command: ${BENCH_BIN:+BENCH_BIN=$BENCH_BIN }BENCH_CONNECTIONS=\"$CONNECTIONS\" BENCH_DURATION=$DURATION BENCH_WARMUP=$WARMUP bench/run.sh"
echo "- exporter: $BIN: $("$BIN" --version 2>&1 | head -1); default flags (log level info, logfmt to a file)"
echo "- bench scripts: git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" status --porcelain -- bench 2>/dev/null | grep -q . && echo ' + uncommitted bench/ changes')"
echo "- reference: $("$PUSHGATEWAY" --version 2>&1 | head -1), --persistence.file= (in memory, no fsync)"
echo "- load generator: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), on the same machine"
echo "- machine: nproc=$(nproc), $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
echo "- store: $WORK on $FSTYPE, device $(df "$WORK" | awk 'NR==2 {print $1}') ($(lsblk -dno TYPE,SIZE,ROTA "$(df "$WORK" | awk 'NR==2 {print $1}')" 2>/dev/null | awk '{print $1", "$2", rotational="$3}' || echo '?'))"
# What one synchronous 4 KiB write costs on the store's disk right now.
FSYNC_PROBE=$(dd if=/dev/zero of="$WORK/fsync-probe" bs=4k count=500 oflag=dsync 2>&1 \
  | awk '/copied/ {for (i = 1; i <= NF; i++) if ($i ~ /^s,?$/) t = $(i - 1); printf "%.3f ms", t * 1000 / 500}')
rm -f "$WORK/fsync-probe"
echo "- disk probe: dd bs=4k count=500 oflag=dsync in the store's directory: ${FSYNC_PROBE:-?} per synchronous write"
echo "- load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# ---- the runs ---------------------------------------------------------------
for c in $CONNECTIONS; do
  [[ $c =~ ^[0-9]+$ && $c -gt 0 ]] || die "bad connection count: $c"
  bench_exporter "$c"
  bench_pushgateway "$c"
done

# ---- the report -------------------------------------------------------------
echo "| c | exporter events/s | Pushgateway POST/s | ratio | p50 exp / PGW (ms) | p99 exp / PGW (ms) | p99 ratio | peak RSS exp / PGW (MB) | RSS ratio | CPU exp / PGW (cores) | inputs/commit | commits/s | mean commit (ms) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
CHECKS=()
for c in $CONNECTIONS; do
  e=$WORK/exporter-c$c/result.json
  p=$WORK/pushgateway-c$c/result.json
  jq -r -s '
    def rps: .requests / (.duration_us / 1e6);
    def ms($x): ($x / 1000 * 100 | round / 100);
    def mb($x): ($x / 1024 * 10 | round / 10);
    def r($x): ($x * 100 | round / 100);
    .[0] as $e | .[1] as $p |
    "| \($e.c) | \($e | rps | round) | \($p | rps | round) | \(r(($e | rps) / ($p | rps))) "
    + "| \(ms($e.latency_us.p50)) / \(ms($p.latency_us.p50)) "
    + "| \(ms($e.latency_us.p99)) / \(ms($p.latency_us.p99)) | \(r($e.latency_us.p99 / $p.latency_us.p99)) "
    + "| \(mb($e.vmhwm_kb)) / \(mb($p.vmhwm_kb)) | \(r($e.vmhwm_kb / $p.vmhwm_kb)) "
    + "| \(r($e.cpu_s / ($e.duration_us / 1e6))) / \(r($p.cpu_s / ($p.duration_us / 1e6))) "
    + "| \(if $e.inputs_per_commit then r($e.inputs_per_commit) else "-" end) "
    + "| \($e.commits / ($e.duration_us / 1e6) | round) "
    + "| \(if $e.commit_ms_mean then r($e.commit_ms_mean) else "-" end) |"' "$e" "$p"
  CHECKS+=("$(jq -r -s '
    .[0] as $e | .[1] as $p |
    ($e.requests - $e.errors.status) as $ok |
    "c=\($e.c): exporter: wrk \($e.requests) responses (\($e.errors.status) non-2xx, "
    + "\($e.errors.connect + $e.errors.read + $e.errors.write) socket errors, \($e.errors.timeout) timeouts), "
    + "\($e.generated) requests built; /metrics: accepted +\($e.accepted), duplicate +\($e.duplicate), "
    + "ignored +\($e.ignored), non-200 answers +\($e.non200), commit failures +\($e.commit_failures), "
    + "commits +\($e.commits) taking \($e.commit_s * 100 | round / 100) s in all, \($e.slow_commits) of them over 64 ms; accepted - wrk 2xx = \($e.accepted - $ok) (requests cut off when wrk stopped, <= c); "
    + "log lines \"webhook applied\" \($e.log_lines_applied) vs accepted total \($e.accepted_total); "
    + "VmRSS at end \($e.vmrss_kb / 1024 * 10 | round / 10) MB -> "
    + (if $e.accepted >= $ok and $e.accepted <= $e.generated and $e.duplicate == 0 and $e.ignored == 0
          and $e.non200 == 0 and $e.errors.status == 0 and $e.commit_failures == 0
          and $e.log_lines_applied == $e.accepted_total
       then "OK" else "MISMATCH" end)
    + "\n  pushgateway: wrk \($p.requests) responses (\($p.errors.status) non-2xx), push 200s +\($p.push_200)"' "$e" "$p")")
done
echo
echo "exporter = loadimpact-exporter (every 200 after redb's fsync'd commit); PGW = Pushgateway (in memory)."
echo "ratio = exporter / Pushgateway in this run; inputs/commit = mean of loadimpact_exporter_store_inputs_per_commit over the measured run."
echo
echo "Checks:"
for line in "${CHECKS[@]}"; do echo "- $line"; done
