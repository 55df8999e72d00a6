#!/usr/bin/env bash
# The whole benchmark, in one run, written to bench/RESULTS.md:
#
#   bash bench/run.sh            # 6 to 8 minutes on 2 cores, plus the release build
#
# Every figure is measured here, in this run, beside its target, and every
# ratio compares two things measured in this same run on this machine:
#   1. ceiling: the same binary's GET /-/healthy under wrk -t2 -c64;
#   2. ingest: distinct durable webhook deliveries under the same wrk
#      settings (each 200 after redb's fsync), its ratio to the ceiling, and
#      the Pushgateway taking POSTs beside it (the reference peer);
#   3. what bounds ingest: the same requests POSTed to a path answered 404
#      at once (what the client and HTTP allow), CPU per request of the
#      exporter and of wrk in each run, the store writer's CPU, its wall
#      time split into on a core, waiting for one, and blocked (schedstat),
#      time in commits and bytes written per commit; fdatasync on the disk
#      after one page and after 32 scattered or contiguous ones
#      (bench/fsync.py); the same ingest with the store on tmpfs (what fsync
#      costs); a profile (perf record, where perf works);
#   4. latency at a steady 1,000 deliveries/s (an open loop: a fixed
#      schedule; the median p99 of three 15 s runs), on the disk and with the
#      store on tmpfs, beside the disk's own fdatasync tail at that rate
#      (bench/fsync.py), the CPU's own steadiness (bench/cpu.py) and the
#      same schedule to the path answered 404 (what wrk and HTTP add);
#   4b. the same ingest and steady latency with the Redis backend (a local
#      redis-server with appendfsync always, two replicas following it,
#      wrk posting to one), beside the embedded store's;
#   5. memory: resident idle, then after 1,000,000 deliveries (500,000 runs
#      started and finished over 1,000 projects and 10,000 load tests),
#      the scrape of that state (gzip and plain), and the time to ready after
#      a restart on that store, with the restarted exposition compared to the
#      one before.
# Settings (environment): BENCH_DURATION (s per measured wrk run, default 10),
# BENCH_DELIVERIES (memory phase, default 1000000), BENCH_TMPDIR (a real
# disk, not tmpfs), BENCH_OUT (default bench/RESULTS.md), BENCH_KEEP=1 keeps
# the work directory. Needs wrk, curl, jq, ss, python3, prometheus-pushgateway,
# redis-server (Debian);
# perf (linux-perf) is optional. Every process it starts is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${BENCH_DURATION:-10}
DELIVERIES=${BENCH_DELIVERIES:-1000000}
OUT=${BENCH_OUT:-$ROOT/bench/RESULTS.md}
BIN=$ROOT/target/release/loadimpact-exporter
PUSHGATEWAY=${BENCH_PUSHGATEWAY:-prometheus-pushgateway}

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

for tool in wrk curl jq awk ss python3 "$PUSHGATEWAY" redis-server; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install wrk curl jq python3 prometheus-pushgateway redis-server)"
done
((DELIVERIES % 4 == 0)) || die "BENCH_DELIVERIES must be a multiple of 4 (two threads, a start and a finish per run)"

log "building the release binary"
cargo build --release --locked >&2

WORK=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/loadimpact-bench.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do wait "$pid" 2>/dev/null || true; done
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
FSTYPE=$(df -T "$WORK" | awk 'NR==2 {print $2}')
[[ $FSTYPE != tmpfs && $FSTYPE != ramfs ]] || die "$WORK is on $FSTYPE: set BENCH_TMPDIR to a disk"

# A free TCP port of 127.0.0.1 below the ephemeral range.
free_port() {
  local port tries=0 low
  low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range)
  ((low > 11000)) || low=61000
  while ((tries++ < 200)); do
    port=$((10000 + RANDOM % (low - 10000)))
    ss -Htan "sport = :$port" | grep -q . || { echo "$port"; return; }
  done
  die "no free port found"
}
forget() {
  local p keep=()
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}
# Seconds (3 decimals) until URL answers 2xx; polled every 5 ms.
wait_ready() {
  local url=$1 pid=$2 t0 i
  t0=$(date +%s.%N)
  for ((i = 0; i < 4000; i++)); do
    kill -0 "$pid" 2>/dev/null || die "process $pid exited before $url was ready"
    if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
      awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.3f\n", b - a}'
      return
    fi
    sleep 0.005
  done
  die "$url not ready after 20 s"
}
stop() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}
vm_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k / 1024}'; }
# Sum of a metric's samples in a scrape file, optionally only lines matching a
# regex ("" for all), printed with a format (a whole number unless given).
msum() {
  awk -v n="$2" -v f="${3:-}" -v fmt="${4:-%.0f}" '
    { name = $1; sub(/[{].*/, "", name) }
    name == n && (f == "" || $1 ~ f) { s += $NF }
    END { printf fmt "\n", s + 0 }' "$1"
}
# wrk in the background, waited for; BENCH_RESULT json to $out.json.
# Args: out url c threads seconds script [args...]
run_wrk() {
  local out=$1 url=$2 c=$3 t=$4 secs=$5 script=$6 pid rc=0
  shift 6
  local sflag=()
  [[ $script == - ]] || sflag=(-s "$script")
  # In a subshell whose `times` gives wrk's own CPU (user and system) in $out.cpu.
  (
    rc=0
    timeout $((secs + 60)) wrk -t"$t" -c"$c" -d"${secs}s" --latency "${sflag[@]}" "$url" ${1+-- "$@"} >"$out" 2>&1 || rc=$?
    # `times` itself, not in a pipeline: a pipeline's subshell has no children.
    times >"$out.times"
    awk 'NR == 2 { n = split($1 " " $2, a, " "); s = 0
      for (i = 1; i <= n; i++) { split(a[i], b, "m"); sub(/s$/, "", b[2]); s += b[1] * 60 + b[2] }
      printf "%.3f\n", s }' "$out.times" >"$out.cpu"
    exit "$rc"
  ) &
  pid=$!
  PIDS+=("$pid")
  wait "$pid" || rc=$?
  forget "$pid"
  ((rc == 0)) || { cat "$out" >&2; die "wrk failed with status $rc"; }
}
# The steady-rate run against url $2, its outputs in dir $1 (steady.txt):
# bench/steady.lua sends 1,000 deliveries a second on a fixed schedule (an
# open loop: the rate does not fall when latency rises), over 32
# connections, so that one is free whenever a delivery is due. Phase $3 of
# webhook.lua (default 4): it may not have been used against that exporter
# before, or the deliveries would be repeats.
STEADY_CONNECTIONS=32 STEADY_THREADS=2
run_steady() {
  RATE=1000 THREADS=$STEADY_THREADS run_wrk "$1/steady.txt" "$2" "$STEADY_CONNECTIONS" "$STEADY_THREADS" 15 bench/steady.lua webhook "${3:-4}"
}
# Three steady runs (phases 4, 5, 6) into dir $1: one 15 s run's p99 moves
# by half or more on this shared machine, so the report reads the run with
# the median p99 (copied to steady.txt) and lists all three (steady.p99s).
run_steady3() {
  local i
  for i in 1 2 3; do
    run_steady "$1" "$2" $((3 + i))
    mv "$1/steady.txt" "$1/steady-$i.txt"
  done
  for i in 1 2 3; do echo "$(wrk_pct "$1/steady-$i.txt" 99) $i"; done | sort -g >"$1/steady.p99s"
  cp "$1/steady-$(awk 'NR == 2 {print $2}' "$1/steady.p99s").txt" "$1/steady.txt"
}
# The three p99s of run_steady3 in dir $1, lowest first ("a, b, c").
steady_p99s() { awk '{printf "%s%s", (NR > 1 ? ", " : ""), $1}' "$1/steady.p99s"; }
# Requests/s and latency percentiles (ms) from wrk's own output.
wrk_rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
wrk_n() { awk '/ requests in / {print $1}' "$1"; }
wrk_pct() { # file percent -> ms
  awk -v p="$2%" '$1 == p {v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
    if (u == "us") v /= 1000; else if (u == "s") v *= 1000; printf "%.2f\n", v}' "$1"
}
start_exporter() { # dir port [more flags...] -> pid (in $EXPORTER_PID)
  "$BIN" --web.listen-address="127.0.0.1:$2" --storage.path="$1/store" --log.level=warn "${@:3}" >>"$1/exporter.log" 2>&1 &
  EXPORTER_PID=$!
  PIDS+=("$EXPORTER_PID")
}
# CPU seconds (user + system) a process, or one thread (pid/task/tid), has used.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.3f\n", ($12 + $13) / hz }' "/proc/$1/stat"; }
# Nanoseconds a thread (pid/task/tid) has run, and waited runnable for a
# core: /proc/.../schedstat's first two fields.
sched_of() { cut -d' ' -f1,2 "/proc/$1/schedstat"; }
# Seconds since the epoch, with nanoseconds.
now_s() { date +%s.%N; }
# The tid of the exporter $1's thread named $2.
thread_of() { grep -lx "$2" /proc/"$1"/task/*/comm | head -1 | cut -d/ -f5; }
# A field of /proc/<pid or pid/task/tid>/io (syscw, write_bytes, ...).
io_of() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/io"; }
# Microseconds of CPU per request: seconds, requests.
us_per() { awk -v s="$1" -v n="$2" 'BEGIN{ if (n > 0) printf "%.1f", s * 1e6 / n; else print "-" }'; }
# b - a, for two readings of a counter in seconds.
delta() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b - a}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a / b; else print "-" }'; }
verdict() { # value op target -> met / NOT met
  awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN{ ok = (op == "<") ? (v < t) : (v >= t); print ok ? "met" : "**not met**" }'
}

DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock bench ':!bench/RESULTS.md' 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
FSYNC_PROBE=$(dd if=/dev/zero of="$WORK/fsync-probe" bs=4k count=500 oflag=dsync 2>&1 \
  | awk '/copied/ {for (i = 1; i <= NF; i++) if ($i ~ /^s,?$/) t = $(i - 1); printf "%.3f ms", t * 1000 / 500}')
rm -f "$WORK/fsync-probe"
# fdatasync by what preceded it: "<pages> <layout> <mean ms> <median ms>" lines.
FSYNC_PAGES=$(python3 "$ROOT/bench/fsync.py" "$WORK" 300) || die "bench/fsync.py failed"
fsync_ms() { awk -v n="$1" -v l="$2" '$1 == n && $2 == l {print $4}' <<<"$FSYNC_PAGES"; }
# The paced case's tail: fsync_p 99 or fsync_p 99.9 (ms).
fsync_p() { awk -v f="$([[ $1 == 99 ]] && echo 5 || echo 6)" '$2 == "paced" {print $f}' <<<"$FSYNC_PAGES"; }
# The same unit of CPU work, once a millisecond for 5 s:
# "<units> <median> <p99> <p99.9> <max> <units over 5x the median>" (ms).
CPU_STEADY=$(python3 "$ROOT/bench/cpu.py" 5) || die "bench/cpu.py failed"
cpu_f() { awk -v f="$1" '{print $f}' <<<"$CPU_STEADY"; }
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- 1, 2: ceiling, ingest, Pushgateway ---------------------------------------
D1=$WORK/ingest; mkdir -p "$D1"; PORT=$(free_port)
start_exporter "$D1" "$PORT"; E1=$EXPORTER_PID
wait_ready "http://127.0.0.1:$PORT/-/ready" "$E1" >/dev/null
log "ceiling: GET /-/healthy, wrk -t2 -c64 -d${DURATION}s"
CPU0=$(cpu_s "$E1")
run_wrk "$D1/healthy.txt" "http://127.0.0.1:$PORT/-/healthy" 64 2 "$DURATION" -
CPU_HEALTHY=$(delta "$CPU0" "$(cpu_s "$E1")")
# The same requests as the ingest below (webhook.lua builds each, so wrk
# spends the same Lua work), POSTed to a path the exporter answers 404 at
# once: what the client and HTTP alone allow, with no parse and no store.
log "probe: the ingest's requests to a path answered 404 at once, wrk -t2 -c64 -d${DURATION}s"
CPU0=$(cpu_s "$E1")
BENCH_PATH=/bench-probe run_wrk "$D1/probe.txt" "http://127.0.0.1:$PORT/webhook" 64 2 "$DURATION" bench/webhook.lua webhook 9
CPU_PROBE=$(delta "$CPU0" "$(cpu_s "$E1")")
log "ingest: distinct deliveries, wrk -t2 -c64, 3 s warm-up + ${DURATION}s"
run_wrk "$D1/warmup.txt" "http://127.0.0.1:$PORT/webhook" 64 2 3 bench/webhook.lua webhook 1
curl -fsS "http://127.0.0.1:$PORT/metrics" >"$D1/before.prom"
WRITER=$(thread_of "$E1" store-writer)
CPU0=$(cpu_s "$E1"); WCPU0=$(cpu_s "$E1/task/$WRITER")
SYSCW0=$(io_of "$E1/task/$WRITER" syscw); WBYTES0=$(io_of "$E1/task/$WRITER" write_bytes)
WSCHED0=$(sched_of "$E1/task/$WRITER"); T0=$(now_s)
run_wrk "$D1/ingest.txt" "http://127.0.0.1:$PORT/webhook" 64 2 "$DURATION" bench/webhook.lua webhook 2
CPU_INGEST=$(delta "$CPU0" "$(cpu_s "$E1")")
WCPU_INGEST=$(delta "$WCPU0" "$(cpu_s "$E1/task/$WRITER")")
# Where the writer's wall time went: on a core, runnable but waiting for
# one (wrk and the HTTP workers share the 2 cores), or off both: blocked,
# in the fsync while it commits, on an empty channel otherwise.
WALL_INGEST=$(delta "$T0" "$(now_s)")
read -r WON WWAIT < <(echo "$WSCHED0 $(sched_of "$E1/task/$WRITER") $WALL_INGEST" \
  | awk '{ printf "%.0f %.0f\n", 100 * ($3 - $1) / 1e9 / $5, 100 * ($4 - $2) / 1e9 / $5 }')
WRITES=$(($(io_of "$E1/task/$WRITER" syscw) - SYSCW0))
WBYTES=$(($(io_of "$E1/task/$WRITER" write_bytes) - WBYTES0))
sleep 1
curl -fsS "http://127.0.0.1:$PORT/metrics" >"$D1/after.prom"
ACCEPTED=$(($(msum "$D1/after.prom" loadimpact_webhook_events_total 'result="accepted"') - $(msum "$D1/before.prom" loadimpact_webhook_events_total 'result="accepted"')))
COMMITS=$(($(msum "$D1/after.prom" loadimpact_exporter_store_commits_total) - $(msum "$D1/before.prom" loadimpact_exporter_store_commits_total)))
COMMIT_S=$(delta "$(msum "$D1/before.prom" loadimpact_exporter_store_commit_duration_seconds_sum "" %.3f)" \
  "$(msum "$D1/after.prom" loadimpact_exporter_store_commit_duration_seconds_sum "" %.3f)")
NON200=$(awk '/^Non-2xx/ {print $NF}' "$D1/ingest.txt"); NON200=${NON200:-0}
# Over the same wall time as the split above, so the two can be subtracted.
IN_COMMITS=$(awk -v c="$COMMIT_S" -v d="$WALL_INGEST" 'BEGIN{printf "%.0f", 100 * c / d}')

PROFILE=""
if command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1; then
  log "profile: perf record of the exporter under the same ingest (5 s)"
  run_wrk "$D1/profiled.txt" "http://127.0.0.1:$PORT/webhook" 64 2 7 bench/webhook.lua webhook 3 &
  WRKP=$!
  sleep 1
  perf record -q -F 499 --call-graph dwarf,16384 -p "$E1" -o "$D1/perf.data" -- sleep 5 >/dev/null 2>&1 || true
  wait "$WRKP" || true
  if [[ -s $D1/perf.data ]]; then
    PROFILE=$(perf report -i "$D1/perf.data" --stdio --no-children --sort comm,dso 2>/dev/null \
      | awk '/^ +[0-9.]+%/ && n++ < 12 {print}' || true)
    PROFILE_WRITER=$(perf report -i "$D1/perf.data" --stdio --children --comm store-writer --sort sym -g none 2>/dev/null \
      | awk '/^ +[0-9.]+%/ && /Store>::commit|sync_data|Machine::apply|Store>::fetch|put_or_remove|evict_cold/ && n++ < 8 {print}' || true)
    PROFILE_SYMS=$(perf report -i "$D1/perf.data" --stdio --no-children --sort sym -g none 2>/dev/null \
      | awk '/^ +[0-9.]+%/ && n++ < 15 {print}' || true)
  fi
fi

# The same ingest with the store on tmpfs, where fsync costs nothing: how much
# of the gap to the ceiling the disk's fsync is.
SHM_INGEST=""
if [[ -d /dev/shm && $(df -T /dev/shm | awk 'NR==2 {print $2}') == tmpfs ]]; then
  DS=$(mktemp -d /dev/shm/loadimpact-bench.XXXXXX); PORT_S=$(free_port)
  start_exporter "$DS" "$PORT_S"; ES=$EXPORTER_PID
  wait_ready "http://127.0.0.1:$PORT_S/-/ready" "$ES" >/dev/null
  log "ingest with the store on tmpfs (no fsync cost): 3 s warm-up + ${DURATION}s"
  run_wrk "$D1/shm-warmup.txt" "http://127.0.0.1:$PORT_S/webhook" 64 2 3 bench/webhook.lua webhook 1
  run_wrk "$D1/shm.txt" "http://127.0.0.1:$PORT_S/webhook" 64 2 "$DURATION" bench/webhook.lua webhook 2
  SHM_INGEST=$(wrk_rps "$D1/shm.txt")
  log "latency at a steady 1,000 deliveries/s with the store on tmpfs: three runs of 15 s"
  mkdir -p "$D1/shm-steady"
  run_steady3 "$D1/shm-steady" "http://127.0.0.1:$PORT_S/webhook"
  stop "$ES"
  rm -rf "$DS"
fi

# ---- 4: steady rate ------------------------------------------------------------
log "latency at a steady 1,000 deliveries/s: three runs of 15 s on a fixed schedule, 32 connections"
run_steady3 "$D1" "http://127.0.0.1:$PORT/webhook"
# The same schedule and requests to the path answered 404 at once: the
# latency that wrk, the loopback and the HTTP layer add by themselves.
log "the same steady schedule to the path answered 404 (no parse, no store): 15 s"
mkdir -p "$D1/probe-steady"
BENCH_PATH=/bench-probe run_steady "$D1/probe-steady" "http://127.0.0.1:$PORT/webhook" 9
stop "$E1"

# ---- 4b: the Redis backend ------------------------------------------------------
# A local Redis that fsyncs every write (appendfsync always), two replicas
# following its log, wrk posting to the first: the same ingest and steady
# runs as above. Every 200 here waited for Redis's append (fsync'd) and the
# replica's own commit.
DR=$WORK/redis; mkdir -p "$DR/redis" "$DR/a" "$DR/b"; RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$DR/redis" --save "" \
  --appendonly yes --appendfsync always --daemonize no >"$DR/redis.log" 2>&1 &
RS=$!; PIDS+=("$RS")
for ((i = 0; i < 200; i++)); do
  [[ $(printf 'PING\r\n' | timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$RPORT; cat >&3; head -c5 <&3" 2>/dev/null) == +PONG ]] && break
  sleep 0.05
done
start_replica() { # dir port -> pid (in $EXPORTER_PID)
  start_exporter "$1" "$2" --storage.backend=redis --storage.redis-url="redis://127.0.0.1:$RPORT"
}
PORT_A=$(free_port); start_replica "$DR/a" "$PORT_A"; RA=$EXPORTER_PID
PORT_B=$(free_port); start_replica "$DR/b" "$PORT_B"; RB=$EXPORTER_PID
wait_ready "http://127.0.0.1:$PORT_A/-/ready" "$RA" >/dev/null
wait_ready "http://127.0.0.1:$PORT_B/-/ready" "$RB" >/dev/null
log "ingest with the Redis backend (two replicas): 3 s warm-up + ${DURATION}s"
run_wrk "$DR/warmup.txt" "http://127.0.0.1:$PORT_A/webhook" 64 2 3 bench/webhook.lua webhook 1
run_wrk "$DR/ingest.txt" "http://127.0.0.1:$PORT_A/webhook" 64 2 "$DURATION" bench/webhook.lua webhook 2
log "latency at a steady 1,000 deliveries/s with the Redis backend: 15 s"
run_steady "$DR" "http://127.0.0.1:$PORT_A/webhook"
# Both replicas caught up, then their state expositions compared.
for ((i = 0; i < 600; i++)); do
  LAG_B=$(curl -fsS "http://127.0.0.1:$PORT_B/metrics" | awk '$1 == "loadimpact_exporter_log_lag_entries" {print $2}')
  [[ ${LAG_B:-1} == 0 ]] && break
  sleep 0.1
done
state_of() { curl -fsS "http://127.0.0.1:$1/metrics" | grep -v '^loadimpact_exporter_\|^# [A-Z]* loadimpact_exporter_\|^process_\|^# [A-Z]* process_'; }
REPLICAS_SAME=$(cmp -s <(state_of "$PORT_A") <(state_of "$PORT_B") && echo "byte-identical" || echo "**differ**")
REDIS_NON200=$(awk '/^Non-2xx/ {print $NF}' "$DR/ingest.txt"); REDIS_NON200=${REDIS_NON200:-0}
stop "$RA"; stop "$RB"; stop "$RS"

PG_PORT=$(free_port)
"$PUSHGATEWAY" --web.listen-address="127.0.0.1:$PG_PORT" --persistence.file= >"$WORK/pushgateway.log" 2>&1 &
PG=$!; PIDS+=("$PG")
wait_ready "http://127.0.0.1:$PG_PORT/-/ready" "$PG" >/dev/null
log "reference: Pushgateway POSTs, wrk -t2 -c64, 3 s warm-up + ${DURATION}s"
run_wrk "$WORK/pg-warmup.txt" "http://127.0.0.1:$PG_PORT/metrics/job/bench" 64 2 3 bench/webhook.lua push 1
run_wrk "$WORK/pg.txt" "http://127.0.0.1:$PG_PORT/metrics/job/bench" 64 2 "$DURATION" bench/webhook.lua push 2
stop "$PG"

# ---- 5: memory, scrape, restart --------------------------------------------------
D2=$WORK/memory; mkdir -p "$D2"; PORT=$(free_port)
start_exporter "$D2" "$PORT"; E2=$EXPORTER_PID
wait_ready "http://127.0.0.1:$PORT/-/ready" "$E2" >/dev/null
sleep 2
RSS_IDLE=$(vm_kb "$E2" VmRSS)
QUOTA=$((DELIVERIES / 2))
log "memory: $DELIVERIES deliveries ($((DELIVERIES / 2)) runs) over 1000 projects and 10000 load tests"
T0=$(date +%s.%N)
timeout 1200 wrk -t2 -c64 -d1200s -s bench/fill.lua "http://127.0.0.1:$PORT/webhook" -- webhook 1 2000 1000 10000 "$QUOTA" >"$D2/fill.txt" 2>&1 &
WRKF=$!; PIDS+=("$WRKF")
while :; do
  sleep 1
  curl -fsS "http://127.0.0.1:$PORT/metrics" -o "$D2/progress.prom" 2>/dev/null || continue
  DONE=$(msum "$D2/progress.prom" loadimpact_webhook_requests_total 'code="200"')
  ((DONE >= DELIVERIES - 1)) && break
  kill -0 "$WRKF" 2>/dev/null || die "wrk stopped after $DONE of $DELIVERIES deliveries"
done
FILL_S=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}')
kill -INT "$WRKF" 2>/dev/null || true; wait "$WRKF" 2>/dev/null || true; forget "$WRKF"
sleep 2
curl -fsS "http://127.0.0.1:$PORT/metrics" -o "$D2/full.prom"
RSS_FULL=$(vm_kb "$E2" VmRSS)
STARTED=$(msum "$D2/full.prom" loadimpact_test_runs_started_total)
FINISHED=$(msum "$D2/full.prom" loadimpact_test_runs_finished_total)
SERIES=$(grep -vc '^#' "$D2/full.prom")
log "scrape: 5 with gzip, 5 plain"
scrape_times() { # extra curl args...
  local i
  for ((i = 0; i < 5; i++)); do
    curl -fsS -o /dev/null -w '%{time_total} %{size_download}\n' "$@" "http://127.0.0.1:$PORT/metrics"
  done | sort -n | awk 'NR == 3 {printf "%.0f %d\n", $1 * 1000, $2}'
}
read -r SCRAPE_GZ_MS SCRAPE_GZ_BYTES < <(scrape_times -H 'Accept-Encoding: gzip')
read -r SCRAPE_MS SCRAPE_BYTES < <(scrape_times)
RSS_SCRAPED=$(vm_kb "$E2" VmRSS)
HWM=$(vm_kb "$E2" VmHWM)
STORE_BYTES=$(du -sb "$D2/store" | awk '{print $1}')
grep -v '^loadimpact_exporter_store_\|^# [A-Z]* loadimpact_exporter_store_\|^process_\|^# [A-Z]* process_' "$D2/full.prom" >"$D2/before-restart.prom"
stop "$E2"
log "restart on that store"
start_exporter "$D2" "$PORT"; E3=$EXPORTER_PID
READY_S=$(wait_ready "http://127.0.0.1:$PORT/-/ready" "$E3")
RSS_RESTARTED=$(vm_kb "$E3" VmRSS)
curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -v '^loadimpact_exporter_store_\|^# [A-Z]* loadimpact_exporter_store_\|^process_\|^# [A-Z]* process_' >"$D2/after-restart.prom"
SAME=$(cmp -s "$D2/before-restart.prom" "$D2/after-restart.prom" && echo "byte-identical" || echo "**differs**")
stop "$E3"

# ---- the report --------------------------------------------------------------------
CEIL=$(wrk_rps "$D1/healthy.txt"); INGEST=$(wrk_rps "$D1/ingest.txt"); PROBE=$(wrk_rps "$D1/probe.txt"); PGW=$(wrk_rps "$WORK/pg.txt")
STEADY=$(wrk_rps "$D1/steady.txt")
# What bounds ingest: requests and wrk's CPU seconds of each run, and the CPU
# the ceiling's run used (both processes) spent at half its rate, less wrk's
# own cost per ingest request: what 0.5 of the ceiling would leave the
# exporter for each delivery.
N_HEALTHY=$(wrk_n "$D1/healthy.txt"); N_PROBE=$(wrk_n "$D1/probe.txt"); N_INGEST=$(wrk_n "$D1/ingest.txt")
WRK_HEALTHY=$(cat "$D1/healthy.txt.cpu"); WRK_PROBE=$(cat "$D1/probe.txt.cpu"); WRK_INGEST=$(cat "$D1/ingest.txt.cpu")
CORES_AT_CEIL=$(awk -v a="$CPU_HEALTHY" -v b="$WRK_HEALTHY" -v d="$DURATION" 'BEGIN{printf "%.2f", (a + b) / d}')
BUDGET=$(awk -v c="$CORES_AT_CEIL" -v r="$CEIL" -v w="$WRK_INGEST" -v n="$N_INGEST" \
  'BEGIN{ if (r > 0 && n > 0) printf "%.1f", c * 1e6 / (0.5 * r) - w * 1e6 / n; else print "-" }')
# The same CPU spent only on what the store writer does not do: the HTTP
# workers' and wrk's CPU per delivery of the ingest run. It bounds ingest
# whatever the store costs, even nothing.
HTTP_US=$(us_per "$(delta "$WCPU_INGEST" "$CPU_INGEST")" "$ACCEPTED"); WRK_US=$(us_per "$WRK_INGEST" "$N_INGEST")
STORELESS=$(awk -v c="$CORES_AT_CEIL" -v h="$HTTP_US" -v w="$WRK_US" 'BEGIN{ if (h + w > 0) printf "%.0f", c * 1e6 / (h + w); else print 0 }')
REDIS_INGEST=$(wrk_rps "$DR/ingest.txt"); REDIS_STEADY=$(wrk_rps "$DR/steady.txt")
{
  echo "# Benchmark results"
  echo
  echo "Written by \`bash bench/run.sh\` on $DATE, exporter revision $REV$DIRTY."
  echo "Every number below comes from that one run; the ratios compare figures measured in it."
  echo
  echo "## Machine"
  echo
  echo "- $(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  echo "- store on $FSTYPE ($(df "$WORK" | awk 'NR==2 {print $1}')); one synchronous 4 KiB write (dd oflag=dsync): $FSYNC_PROBE"
  echo "- fdatasync (bench/fsync.py, median of 300) after one 4 KiB page: $(fsync_ms 1 contiguous) ms; after 32 pages at random places: $(fsync_ms 32 scattered) ms; after the same 32 pages in one contiguous write: $(fsync_ms 32 contiguous) ms"
  echo "- fdatasync after 12 pages at random places (about one delivery's commit), one a millisecond for 3 s: median $(fsync_ms 12 paced) ms, p99 $(fsync_p 99) ms, p99.9 $(fsync_p 99.9) ms"
  echo "- the CPU's steadiness (bench/cpu.py, before any load): the same unit of work, one a millisecond for 5 s, by the thread's own CPU clock: median $(cpu_f 2) ms, p99 $(cpu_f 3) ms, p99.9 $(cpu_f 4) ms, max $(cpu_f 5) ms; $(cpu_f 6) of $(cpu_f 1) units took over 5× the median"
  echo "- load average before the run: $LOAD_BEFORE (a shared machine; wrk runs on the same 2 cores)"
  echo "- the exporter runs with its default flags but \`--log.level=warn\`: at the default \`info\` it also logs one line per delivery"
  echo "- $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $("$PUSHGATEWAY" --version 2>&1 | head -1)"
  echo
  echo "## Against the targets"
  echo
  echo "| figure | target | measured | |"
  echo "|---|---|---|---|"
  echo "| resident memory, idle | < 10 MiB | $(mib "$RSS_IDLE") MiB | $(verdict "$(mib "$RSS_IDLE")" "<" 10) |"
  echo "| resident memory after $DELIVERIES deliveries | < 64 MiB | $(mib "$RSS_FULL") MiB ($(mib "$RSS_SCRAPED") MiB after 10 scrapes; peak $(mib "$HWM") MiB) | $(verdict "$(mib "$RSS_SCRAPED")" "<" 64) |"
  echo "| ready after a restart on that store | < 1 s | $READY_S s (resident then: $(mib "$RSS_RESTARTED") MiB) | $(verdict "$READY_S" "<" 1) |"
  echo "| ingest ÷ GET /-/healthy ceiling, c=64 | ≥ 0.5 | $(ratio "$INGEST" "$CEIL") ($(printf '%.0f' "$INGEST") ÷ $(printf '%.0f' "$CEIL") requests/s) | $(verdict "$(ratio "$INGEST" "$CEIL")" ">=" 0.5) |"
  echo "| p99 at a steady rate ($(printf '%.0f' "$STEADY") deliveries/s) | < 5 ms | $(wrk_pct "$D1/steady.txt" 99) ms, the median of three 15 s runs ($(steady_p99s "$D1")); p50 $(wrk_pct "$D1/steady.txt" 50) ms | $(verdict "$(wrk_pct "$D1/steady.txt" 99)" "<" 5) |"
  echo "| scrape of $SERIES samples, gzip | < 100 ms | $SCRAPE_GZ_MS ms, $((SCRAPE_GZ_BYTES / 1024)) KiB (median of 5) | $(verdict "$SCRAPE_GZ_MS" "<" 100) |"
  echo
  echo "## Side by side (same run)"
  echo
  echo "| wrk -t2 -c64, ${DURATION} s | requests/s | p50 ms | p99 ms |"
  echo "|---|---|---|---|"
  echo "| exporter GET /-/healthy (the ceiling) | $(printf '%.0f' "$CEIL") | $(wrk_pct "$D1/healthy.txt" 50) | $(wrk_pct "$D1/healthy.txt" 99) |"
  echo "| exporter POST /webhook, distinct durable deliveries | $(printf '%.0f' "$INGEST") | $(wrk_pct "$D1/ingest.txt" 50) | $(wrk_pct "$D1/ingest.txt" 99) |"
  if [[ -n $SHM_INGEST ]]; then
    echo "| exporter POST /webhook, store on tmpfs (fsync free; diagnostic only) | $(printf '%.0f' "$SHM_INGEST") | $(wrk_pct "$D1/shm.txt" 50) | $(wrk_pct "$D1/shm.txt" 99) |"
  fi
  echo "| exporter POST /webhook, Redis backend (appendfsync always), two replicas | $(printf '%.0f' "$REDIS_INGEST") | $(wrk_pct "$DR/ingest.txt" 50) | $(wrk_pct "$DR/ingest.txt" 99) |"
  echo "| Pushgateway POST, in memory (reference) | $(printf '%.0f' "$PGW") | $(wrk_pct "$WORK/pg.txt" 50) | $(wrk_pct "$WORK/pg.txt" 99) |"
  echo
  echo "## What bounds ingest (same run)"
  echo
  echo "CPU per request, from /proc (the exporter) and the shell's \`times\` (wrk), over each measured run:"
  echo
  echo "| wrk -t2 -c64, ${DURATION} s | requests/s | exporter CPU µs per request | wrk CPU µs per request |"
  echo "|---|---|---|---|"
  echo "| GET /-/healthy (the ceiling) | $(printf '%.0f' "$CEIL") | $(us_per "$CPU_HEALTHY" "$N_HEALTHY") | $(us_per "$WRK_HEALTHY" "$N_HEALTHY") |"
  echo "| the ingest's requests, to a path answered 404 at once (no parse, no store) | $(printf '%.0f' "$PROBE") | $(us_per "$CPU_PROBE" "$N_PROBE") | $(us_per "$WRK_PROBE" "$N_PROBE") |"
  echo "| POST /webhook, distinct durable deliveries | $(printf '%.0f' "$INGEST") | $(us_per "$CPU_INGEST" "$N_INGEST") | $WRK_US |"
  echo
  echo "- the client: wrk building each distinct delivery in Lua reaches $(ratio "$PROBE" "$CEIL") of the ceiling with the exporter doing no work for it."
  echo "- the budget: at the ceiling the exporter and wrk used $CORES_AT_CEIL of the 2 cores. Half the ceiling's rate in that CPU, less wrk's own $WRK_US µs per ingest request, leaves the exporter $BUDGET µs per durable delivery, against $(us_per "$CPU_PROBE" "$N_PROBE") µs to answer the probe's 404 and $(us_per "$CPU_INGEST" "$N_INGEST") µs measured."
  echo "- without the store: at the HTTP workers' $HTTP_US µs and wrk's $WRK_US µs of CPU per delivery in this run, the $CORES_AT_CEIL cores the ceiling's run used allow at most $STORELESS deliveries/s, $(ratio "$STORELESS" "$CEIL") of the ceiling, even with a store writer that needed no CPU at all."
  echo "- the store writer, one thread by design (one durable order): $(us_per "$WCPU_INGEST" "$ACCEPTED") µs of CPU per delivery, the exporter's other threads (the HTTP workers) $HTTP_US µs; in commits $IN_COMMITS% of the run's wall time; per commit $(ratio "$WRITES" "$COMMITS") write calls and $(awk -v b="$WBYTES" -v c="$COMMITS" 'BEGIN{ if (c > 0) printf "%.0f", b / c / 1024; else print "-" }') KiB written, then one fsync (redb writes every copy-on-write page of every table a group touches)."
  echo "- the writer's wall time (from /proc schedstat): on a core $WON%, runnable and waiting for a core $WWAIT%, blocked $((100 - WON - WWAIT))%. It is in commits $IN_COMMITS% of the time, so about $((IN_COMMITS - WON - WWAIT < 0 ? 0 : IN_COMMITS - WON - WWAIT))% is spent blocked inside commits, waiting for the disk to finish the fsync; no other work of the writer overlaps that wait. That wait grows with the pages a commit writes where they fall (see the fdatasync line under Machine: 32 pages at random places against one page, or the same pages in one run)."
  echo
  echo "Steady rate (bench/steady.lua: 1,000 deliveries/s on a fixed schedule, whatever the latency, 15 s; each connection waits for its answer before it takes the next due delivery). The embedded rows are the run with the median p99 of three, the three p99s in brackets:"
  echo
  echo "| backend | connections | deliveries/s | p50 ms | p99 ms |"
  echo "|---|---|---|---|---|"
  echo "| embedded | $STEADY_CONNECTIONS | $(printf '%.0f' "$STEADY") | $(wrk_pct "$D1/steady.txt" 50) | $(wrk_pct "$D1/steady.txt" 99) ($(steady_p99s "$D1")) |"
  if [[ -n $SHM_INGEST ]]; then
    echo "| embedded, store on tmpfs (fsync free; diagnostic only) | $STEADY_CONNECTIONS | $(printf '%.0f' "$(wrk_rps "$D1/shm-steady/steady.txt")") | $(wrk_pct "$D1/shm-steady/steady.txt" 50) | $(wrk_pct "$D1/shm-steady/steady.txt" 99) ($(steady_p99s "$D1/shm-steady")) |"
  fi
  echo "| Redis, two replicas | $STEADY_CONNECTIONS | $(printf '%.0f' "$REDIS_STEADY") | $(wrk_pct "$DR/steady.txt" 50) | $(wrk_pct "$DR/steady.txt" 99) |"
  echo "| none: the same requests to the path answered 404 (no parse, no store; what wrk and HTTP add) | $STEADY_CONNECTIONS | $(printf '%.0f' "$(wrk_rps "$D1/probe-steady/steady.txt")") | $(wrk_pct "$D1/probe-steady/steady.txt" 50) | $(wrk_pct "$D1/probe-steady/steady.txt" 99) |"
  echo
  echo "- ingest ÷ ceiling: $(ratio "$INGEST" "$CEIL"); ingest ÷ the 404 probe (the same requests, no work done): $(ratio "$INGEST" "$PROBE"); ingest ÷ Pushgateway: $(ratio "$INGEST" "$PGW")${SHM_INGEST:+; ingest on disk ÷ on tmpfs: $(ratio "$INGEST" "$SHM_INGEST")}."
  echo "- wrk, the loopback and the HTTP layer alone, on the same schedule (the 404 row): p99 $(wrk_pct "$D1/probe-steady/steady.txt" 99) ms; the rest of a delivery's p99 is the writer's: its CPU and the disk."
  echo "- the disk alone at the steady rate (bench/fsync.py, under Machine): 12 pages at random places and an fdatasync every millisecond wait $(fsync_ms 12 paced) ms at the median and $(fsync_p 99) ms at p99. A delivery waits for the commit in flight, then for its own, so its p99 at the steady rate is bound to sit above that disk's p99${SHM_INGEST:+; with the store on tmpfs, where fdatasync costs nothing, the median of three runs gave a p99 of $(wrk_pct "$D1/shm-steady/steady.txt" 99) ms}. Without the disk the CPU keeps a tail of its own here: the same work sometimes takes several times its usual CPU time (bench/cpu.py, under Machine: p99.9 $(cpu_f 4) ms for a $(cpu_f 2) ms unit), and deliveries that arrive while the writer's work is slowed so queue behind it."
  echo "- Redis backend ÷ embedded, ingest: $(ratio "$REDIS_INGEST" "$INGEST"); p99 at the steady rate: $(ratio "$(wrk_pct "$DR/steady.txt" 99)" "$(wrk_pct "$D1/steady.txt" 99)")×. wrk saw $REDIS_NON200 non-2xx answers from the Redis replica; afterwards the two replicas' expositions (less their own telemetry) were $REPLICAS_SAME."
  echo "- durability: $ACCEPTED deliveries accepted in $COMMITS fsync'd commits ($(ratio "$ACCEPTED" "$COMMITS") per commit); wrk saw $NON200 non-2xx answers."
  echo "- plain scrape of the same state: $SCRAPE_MS ms, $((SCRAPE_BYTES / 1024)) KiB; gzip is $(ratio "$SCRAPE_BYTES" "$SCRAPE_GZ_BYTES")× smaller."
  echo
  echo "## Memory phase"
  echo
  echo "- $DELIVERIES deliveries by wrk -t2 -c64 (bench/fill.lua) in $FILL_S s: runs started $STARTED, finished $FINISHED (the one start wrk builds to check its script is never sent, so one run has a finish only)."
  echo "- store on disk afterwards: $((STORE_BYTES / 1048576)) MiB; request ids and ended runs are kept there, not in memory."
  echo "- the exposition after the restart, less the process's own telemetry: $SAME to the one before."
  if [[ -n $PROFILE ]]; then
    echo
    echo "## Where ingest time goes (perf record --call-graph dwarf, 5 s at c=64)"
    echo
    echo "By process and object (the exporter's threads; wrk is not profiled):"
    echo
    echo '```'
    echo "$PROFILE"
    echo '```'
    echo
    echo "Inside the store writer (share of all samples, with callees):"
    echo
    echo '```'
    echo "$PROFILE_WRITER"
    echo '```'
    echo
    echo "Top symbols (self time):"
    echo
    echo '```'
    echo "$PROFILE_SYMS"
    echo '```'
  fi
} >"$OUT"
log "written to $OUT"
cat "$OUT"
