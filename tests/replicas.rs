//! Several replicas on one real Redis (`--storage.backend=redis`): two or
//! three exporter processes share one `redis-server` (Debian's, with
//! `appendonly yes` and `appendfsync always`; `support::redis`), each test
//! with its own Redis and key prefix. Deliveries of both formats go to any
//! replica; every answer is recorded.
//!
//! It proves that:
//! - a run started on one replica and finished on another is one run on
//!   every replica (counted once, not running, the body's duration) with
//!   exactly one span at a real OTLP receiver that both replicas point at,
//!   also after the lease holder stops and the other takes over;
//! - one delivery id posted to three replicas, one after another or at the
//!   same moment, is accepted once and answered `duplicate` by the others;
//! - after a mixed stream spread round-robin, every replica that has applied
//!   the whole log (`loadimpact_exporter_log_lag_entries` 0, the same
//!   position) renders the same `loadimpact_*` exposition byte for byte, less
//!   the per-process series, and that state is the stream's exact count;
//! - `kill -9` of a replica under concurrent posters loses no acknowledged
//!   delivery (each answers `duplicate` when re-sent to the survivor), the
//!   survivor takes the lease and carries on, and after re-sending what got
//!   no 2xx every run counts exactly once;
//! - a replica stopped (SIGTERM, then `kill -9`) and started again on its
//!   `--storage.path` catches up from its own snapshot and the log's tail (no
//!   start-over from Redis), and a new replica with an empty store, started
//!   after the leader trimmed the log, starts from the snapshot in Redis; all
//!   then equal the replica that stayed up;
//! - with Redis stopped, the webhook answers 503 and `/-/ready` 503 with no
//!   2xx; once Redis is back on its append-only file, without a restart of
//!   the exporters, deliveries are accepted again, the 503'd ones re-sent
//!   count once, and the request counters hold exactly the answers given;
//! - Redis `kill -9`ed under concurrent posters and started again loses no
//!   acknowledged delivery, and after re-sending what got no 2xx every run
//!   counts exactly once on both replicas.
//! - the Redis password, read from `--storage.redis-url-file`, shows in no
//!   log line (debug level), page or answer, with the right password or a
//!   wrong one (then: healthy, not ready, 503);
//! - `--storage.redis-wait-replicas=1` answers 2xx while a Redis replica
//!   has the entry, and 503 once there is none.
//!
//! Each exporter logs to a file that is printed when a test fails.

mod otlp_receiver;
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use otlp_receiver::spans::{pointed_at, the_one_span, trace_id};
use otlp_receiver::{Protocol, Receiver};
use serde_json::{json, Value};
use support::deliveries::{headers, test_hook, Delivery, Fate, Run};
use support::exporter::{api_run, state_lines, Exporter, Launch};
use support::http::{self, Response};
use support::posters::{
    all_runs, assert_counted_once, assert_none_running, check_then_resend, finished, join, planned,
    start_posters, started, tally, PlannedRun, Ports, Posted, Refusals,
};
use support::redis::Redis;
use support::samples::{
    assert_value, events_total, parse_samples, requests_total, sample, Samples, OUTCOMES,
};
use support::wait_for;

/// How long the replicas may take to agree once the posts are answered.
const AGREE: Duration = Duration::from_secs(30);
const LAG: &str = "loadimpact_exporter_log_lag_entries";
const POSITION: &str = "loadimpact_exporter_log_position_entries";
const LEASE_HELD: &str = "loadimpact_exporter_log_lease_held";
const BOOTSTRAPS: &str = "loadimpact_exporter_log_bootstraps_total";

// ---------------------------------------------------------------------------
// logs, replicas, agreement

/// A directory for the replicas' log files, printed (their tails) when the
/// test fails.
struct Logs {
    dir: tempfile::TempDir,
}

impl Logs {
    fn new() -> Logs {
        Logs {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(150)..];
            eprintln!(
                "---- {} (last {} lines) ----\n{}",
                path.display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// A replica named `name` on `redis` under `prefix`, logging to `logs`.
fn replica(launch: Launch, redis: &Redis, prefix: &str, logs: &Logs, name: &str) -> Launch {
    launch.on_redis(redis, prefix).log_to(&logs.path(name))
}

/// One scrape of a replica: where it is in the log, and its state.
struct View {
    lag: f64,
    position: f64,
    state: Vec<String>,
}

fn view(exporter: &Exporter) -> View {
    let text = exporter.scrape();
    let s = parse_samples(&text, "loadimpact_");
    View {
        lag: *s.get(LAG).expect("a replica exports its lag"),
        position: *s.get(POSITION).expect("a replica exports its position"),
        state: state_lines(&text),
    }
}

/// Waits until every replica has applied the whole log (lag 0, all at one
/// position) and their state expositions are the same bytes; the common
/// state. Panics with the differences after `AGREE`.
fn agreed(replicas: &[&Exporter]) -> Vec<String> {
    let deadline = Instant::now() + AGREE;
    loop {
        let views: Vec<View> = replicas.iter().map(|r| view(r)).collect();
        let first = &views[0];
        let level = views
            .iter()
            .all(|v| v.lag == 0.0 && v.position == first.position);
        if level && views.iter().all(|v| v.state == first.state) {
            return first.state.clone();
        }
        if Instant::now() > deadline {
            let mut report = String::new();
            for (i, v) in views.iter().enumerate() {
                report += &format!("replica {i}: lag {}, position {}\n", v.lag, v.position);
            }
            for (i, v) in views.iter().enumerate().skip(1) {
                let only_first: Vec<&String> = first
                    .state
                    .iter()
                    .filter(|l| !v.state.contains(l))
                    .collect();
                let only_this: Vec<&String> = v
                    .state
                    .iter()
                    .filter(|l| !first.state.contains(l))
                    .collect();
                report += &format!(
                    "only in replica 0 (vs {i}): {only_first:#?}\nonly in replica {i}: {only_this:#?}\n"
                );
            }
            panic!("the replicas did not agree within {AGREE:?}\n{report}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The samples of state lines.
fn samples_of(state: &[String]) -> Samples {
    parse_samples(&state.join("\n"), "loadimpact_")
}

// ---------------------------------------------------------------------------
// deliveries

fn copy(d: &Delivery) -> Delivery {
    Delivery {
        headers: d.headers.clone(),
        payload: d.payload.clone(),
    }
}

fn send(exporter: &Exporter, delivery: &Delivery) -> Response {
    delivery.send(&exporter.delivery_url())
}

/// The `result` of a JSON answer ("" if none).
fn result_of(resp: &Response) -> String {
    serde_json::from_str::<Value>(&resp.body)
        .ok()
        .and_then(|v| v["result"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Sends `delivery` to `exporter`; the answer must be 200 `{"result":…}`.
fn expect(exporter: &Exporter, delivery: &Delivery, result: &str) {
    let resp = send(exporter, delivery);
    assert!(
        resp.status == 200 && resp.body == format!(r#"{{"result":"{result}"}}"#),
        "sent {}: expected 200 {{\"result\":\"{result}\"}}, got {} {:?}",
        String::from_utf8_lossy(&delivery.payload),
        resp.status,
        resp.body
    );
}

/// The bookkeeping of [`check_then_resend`] across replicas, whose 503 may
/// have reached the log; then every run counts exactly once on every replica
/// of `to`, once they agree.
fn resend_until_counted_once(posted: &Posted, org: u64, s: &Samples, to: &[&Exporter]) {
    check_then_resend(posted, org, s, to, Refusals::MayBeStored);
    let state = samples_of(&agreed(to));
    assert_counted_once(&state, all_runs(posted), "after the re-send");
    assert_none_running(posted, to, "after the re-send");
}

// ---------------------------------------------------------------------------
// the tests

#[test]
fn the_redis_guard_answers_and_keeps_a_key_across_kill_9_and_sigterm() {
    let mut redis = Redis::start();
    assert!(redis.answers(), "a raw PING is answered +PONG");
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(redis.cli(&["SET", "guard-key", "kept"]), "OK");
    let port = redis.port();

    redis.kill9();
    assert!(!redis.is_running());
    assert!(!redis.answers(), "nothing answers after kill -9");
    redis.start_again();
    assert_eq!(redis.port(), port, "started again on the same port");
    assert_eq!(
        redis.cli(&["GET", "guard-key"]),
        "kept",
        "the append-only file kept the key across kill -9\n{}",
        redis.log()
    );

    redis.stop();
    assert!(!redis.answers(), "nothing answers after SIGTERM");
    redis.start_again();
    assert_eq!(redis.cli(&["GET", "guard-key"]), "kept");
    assert!(
        redis.dir().join("appendonlydir").is_dir(),
        "the append-only file is in the guard's directory"
    );
}

#[test]
fn a_run_started_on_one_replica_and_finished_on_another_counts_once_with_one_span() {
    let logs = Logs::new();
    let redis = Redis::start();
    let receiver = Receiver::start(Protocol::Grpc);
    let launch = |name: &str| replica(pointed_at(&receiver), &redis, "across", &logs, name);
    let mut replicas = [launch("a").start(), launch("b").start()];

    let run = Run::new(21, 2100, 210, 2_100_001);
    let start = Delivery::k6(&run, "test.started", 2, None, json!(null), "across-start");
    expect(&replicas[0], &start, "accepted");
    let finish = Delivery::k6(
        &run,
        "test.finished.finished",
        3,
        Some(0),
        json!("2024-05-06T10:01:30Z"),
        "across-finish",
    );
    expect(&replicas[1], &finish, "accepted");

    let s = samples_of(&agreed(&[&replicas[0], &replicas[1]]));
    assert_value(&s, &run.started_total_by("manual"), 1.0);
    assert_eq!(started(&s, 21, 2100), 1.0, "started once, by any trigger");
    assert_value(&s, &run.finished_total("finished"), 1.0);
    assert_eq!(finished(&s, 21, 2100), 1.0, "finished once, by any outcome");
    assert_value(&s, &run.running(), 0.0);
    assert_value(&s, &run.duration_count("finished"), 1.0);
    // 10:00:00 to 10:01:30, as the bodies say.
    assert_value(&s, &run.duration_sum("finished"), 90.0);
    for r in &replicas {
        let api = r.runs_api();
        assert!(
            api_run(&api, "running", run.id).is_none(),
            "not running: {api}"
        );
        assert!(
            api_run(&api, "recent", run.id).is_some(),
            "a recent run: {api}"
        );
    }

    // One span, with the body's times, whichever replica exported it.
    let spans = wait_for("the run's span", Duration::from_secs(20), || {
        let spans = receiver.spans_with_trace_id(&trace_id(run.id));
        (!spans.is_empty()).then_some(spans)
    });
    let span = &spans[0].span;
    assert_eq!(span.start_time_unix_nano, 1_714_989_600_000 * 1_000_000);
    assert_eq!(span.end_time_unix_nano, 1_714_989_690_000 * 1_000_000);
    // Both replicas know it was acknowledged.
    for r in &replicas {
        r.wait_sample("loadimpact_spans_exported_total", AGREE, |v| v == 1.0);
        r.wait_sample("loadimpact_spans_pending", AGREE, |v| v == 0.0);
    }
    let holders: Vec<usize> = wait_for("one lease holder", AGREE, || {
        let held: Vec<usize> = (0..2)
            .filter(|&i| replicas[i].sample(LEASE_HELD) == 1.0)
            .collect();
        (held.len() == 1).then_some(held)
    });
    let (holder, other) = (holders[0], 1 - holders[0]);

    // The lease holder stops; the other takes the lease (and the outbox)
    // and sends nothing again.
    let status = replicas[holder].terminate();
    assert!(status.success(), "SIGTERM exit status: {status}");
    replicas[other].wait_sample(LEASE_HELD, Duration::from_secs(15), |v| v == 1.0);
    std::thread::sleep(Duration::from_secs(3));
    the_one_span(&receiver, run.id);
    assert_eq!(receiver.spans().len(), 1, "one span received in all");
    assert_eq!(
        replicas[other].sample("loadimpact_spans_exported_total"),
        1.0
    );
}

#[test]
fn one_delivery_posted_to_three_replicas_counts_once() {
    let logs = Logs::new();
    let redis = Redis::start();
    let launch = |name: &str| replica(Exporter::builder(), &redis, "dups", &logs, name);
    let (a, b, c) = (
        launch("a").start(),
        launch("b").start(),
        launch("c").start(),
    );

    // One after another.
    let run = Run::new(22, 2200, 220, 2_200_001);
    let start = Delivery::new(&run.started(), "dup-start");
    expect(&a, &start, "accepted");
    expect(&b, &start, "duplicate");
    expect(&c, &start, "duplicate");
    let finish = Delivery::new(&run.finished(3, Some("Finished")), "dup-finish");
    expect(&c, &finish, "accepted");
    expect(&a, &finish, "duplicate");
    expect(&b, &finish, "duplicate");

    // At the same moment on all three.
    let raced = Run::new(22, 2200, 221, 2_200_002);
    for delivery in [
        Delivery::new(&raced.started(), "race-start"),
        Delivery::new(&raced.finished(3, Some("Finished")), "race-finish"),
    ] {
        let barrier = Barrier::new(3);
        let mut results: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = [&a, &b, &c]
                .into_iter()
                .map(|r| {
                    let (url, delivery, barrier) = (r.delivery_url(), &delivery, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        delivery.send(&url)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    let resp = h.join().expect("poster");
                    assert_eq!(resp.status, 200, "{}", resp.body);
                    result_of(&resp)
                })
                .collect()
        });
        results.sort();
        assert_eq!(
            results,
            ["accepted", "duplicate", "duplicate"],
            "one delivery at once on three replicas"
        );
    }

    let s = samples_of(&agreed(&[&a, &b, &c]));
    for r in [&run, &raced] {
        assert_value(&s, &r.running(), 0.0);
    }
    assert_value(&s, &run.started_total(), 2.0);
    assert_value(&s, &run.finished_total("finished"), 2.0);
    assert_eq!(started(&s, 22, 2200), 2.0);
    assert_eq!(finished(&s, 22, 2200), 2.0);
    assert_value(&s, &run.duration_count("finished"), 2.0);
    assert_value(&s, &events_total("test.started", "accepted"), 2.0);
    assert_value(&s, &events_total("test.started", "duplicate"), 4.0);
    assert_value(&s, &events_total("test.finished", "accepted"), 2.0);
    assert_value(&s, &events_total("test.finished", "duplicate"), 4.0);
    assert_value(&s, &requests_total(200), 12.0);
}

#[test]
fn every_replica_renders_the_same_state_after_a_mixed_stream() {
    let logs = Logs::new();
    let redis = Redis::start();
    let launch = |name: &str| replica(Exporter::builder(), &redis, "mixed", &logs, name);
    let replicas = [
        launch("a").start(),
        launch("b").start(),
        launch("c").start(),
    ];
    const ORG: u64 = 23;
    const RUNS: u64 = 24;
    let runs: Vec<PlannedRun> = (0..RUNS)
        .map(|i| planned(ORG, 2300 + i % 4, 2_300_000 + i, i))
        .collect();
    // Left running: every seventh run's finish is never sent.
    let left_running = |i: u64| i % 7 == 6;

    // (delivery, expected status, expected result): runs overlap (a start,
    // then the previous run's finish), with retries, test hooks and bad
    // bodies between them.
    let mut stream: Vec<(Delivery, u16, &str)> = Vec::new();
    for i in 0..RUNS as usize {
        stream.push((copy(&runs[i].start), 200, "accepted"));
        if i >= 1 && !left_running(i as u64 - 1) {
            stream.push((copy(&runs[i - 1].finish), 200, "accepted"));
        }
        if i % 5 == 2 {
            stream.push((copy(&runs[i].start), 200, "duplicate"));
        }
        if i % 10 == 3 {
            stream.push((
                Delivery::new(&test_hook(), &format!("hook-{i}")),
                200,
                "accepted",
            ));
        }
        if i % 12 == 5 {
            let bad = Delivery {
                headers: headers("test.started", &format!("bad-{i}")),
                payload: b"{\"event\": ".to_vec(),
            };
            stream.push((bad, 400, "rejected"));
        }
    }
    stream.push((copy(&runs[RUNS as usize - 1].finish), 200, "accepted"));
    let mut codes: BTreeMap<u16, f64> = BTreeMap::new();
    for (j, (delivery, status, result)) in stream.iter().enumerate() {
        let resp = send(&replicas[j % 3], delivery);
        assert_eq!(
            (resp.status, result_of(&resp).as_str()),
            (*status, *result),
            "delivery {j} to replica {}: {}",
            j % 3,
            resp.body
        );
        *codes.entry(resp.status).or_default() += 1.0;
    }

    let state = agreed(&[&replicas[0], &replicas[1], &replicas[2]]);
    let s = samples_of(&state);
    // Per project: every run started once, the finished ones by outcome,
    // the others running.
    for project in 2300..2304 {
        let mine: Vec<(u64, &PlannedRun)> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u64, r))
            .filter(|(_, r)| r.run.project == project)
            .collect();
        let run = Run::new(ORG, project, 0, 0);
        assert_eq!(
            started(&s, ORG, project),
            mine.len() as f64,
            "project {project} started"
        );
        let running = mine.iter().filter(|(i, _)| left_running(*i)).count();
        assert_eq!(
            sample(&s, &run.running()),
            running as f64,
            "project {project} running"
        );
        for outcome in OUTCOMES {
            let want = mine
                .iter()
                .filter(|(i, r)| !left_running(*i) && r.outcome == outcome)
                .count();
            assert_eq!(
                sample(&s, &run.finished_total(outcome)),
                want as f64,
                "project {project} finished as {outcome}"
            );
        }
    }
    for (code, n) in codes {
        assert_value(&s, &requests_total(code), n);
    }
    assert!(
        state
            .iter()
            .any(|l| l.starts_with("loadimpact_webhook_requests_total")),
        "the request counter is compared too"
    );
}

#[test]
fn kill_9_of_a_replica_under_posters_loses_no_acknowledged_delivery_and_the_other_carries_on() {
    const ORG: u64 = 24;
    let logs = Logs::new();
    let redis = Redis::start();
    let launch = |name: &str| replica(Exporter::builder(), &redis, "kill-replica", &logs, name);
    // A holds the lease (ticks, spans, snapshots) before B starts.
    let mut a = launch("a").start();
    a.wait_sample(LEASE_HELD, AGREE, |v| v == 1.0);
    let b = launch("b").start();

    let ports: Ports = Arc::new([AtomicU16::new(a.port()), AtomicU16::new(b.port())]);
    let (stop, killed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let posters = start_posters(4, ORG, &ports, &stop, &killed);
    std::thread::sleep(Duration::from_millis(1500));
    // From now on the posters send everything to B (a load balancer would).
    ports[0].store(0, Ordering::Release);
    killed.store(true, Ordering::Release);
    a.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let posted = join(posters);
    let fates = tally(&posted);
    eprintln!("replicas: kill -9 of A, deliveries {fates:?}");

    let after_kill = posted
        .iter()
        .flat_map(|(_, sent)| sent)
        .filter(|d| d.after_marker && matches!(d.fate, Fate::Acknowledged(_)))
        .count();
    assert!(
        after_kill > 0,
        "B acknowledged nothing after A was killed: {fates:?}"
    );
    let before_kill = posted
        .iter()
        .flat_map(|(_, sent)| sent)
        .filter(|d| !d.after_marker && matches!(d.fate, Fate::Acknowledged(_)))
        .count();
    assert!(
        before_kill > 0,
        "nothing was acknowledged before the kill: {fates:?}"
    );
    // B takes the lease over once A's expires.
    b.wait_sample(LEASE_HELD, Duration::from_secs(15), |v| v == 1.0);

    let s = samples_of(&agreed(&[&b]));
    resend_until_counted_once(&posted, ORG, &s, &[&b]);
}

/// The runs of batch `batch` of the restart test.
fn batch(batch: u64) -> Vec<PlannedRun> {
    (0..12)
        .map(|i| planned(25, 2500 + i % 3, 2_500_000 + batch * 1000 + i, i + batch))
        .collect()
}

/// Posts `runs` round-robin over `to`, each run's start then its finish,
/// except every fifth run's finish, which is kept in `unfinished` for later;
/// first the finishes `unfinished` held from before.
fn post_batch(to: &[&Exporter], runs: &[PlannedRun], unfinished: &mut Vec<Delivery>) {
    let mut k = 0;
    let mut next = || {
        k += 1;
        to[k % to.len()]
    };
    for finish in unfinished.drain(..) {
        expect(next(), &finish, "accepted");
    }
    for (i, planned) in runs.iter().enumerate() {
        expect(next(), &planned.start, "accepted");
        if i % 5 == 4 {
            unfinished.push(copy(&planned.finish));
        } else {
            expect(next(), &planned.finish, "accepted");
        }
    }
}

#[test]
fn a_restarted_replica_catches_up_from_its_snapshot_and_a_new_one_from_redis() {
    let logs = Logs::new();
    let redis = Redis::start();
    let prefix = "restart";
    let launch = |name: &str| {
        replica(Exporter::builder(), &redis, prefix, &logs, name)
            .arg("--storage.redis-snapshot-interval=1s")
    };
    let mut a = launch("a").start();
    let b = launch("b").start();
    let mut unfinished = Vec::new();
    let batches: Vec<Vec<PlannedRun>> = (0..4).map(batch).collect();

    post_batch(&[&a, &b], &batches[0], &mut unfinished);
    agreed(&[&a, &b]);

    // The lease holder snapshots the state and trims the log: entry 1 goes.
    // The first entry left says so (its length alone would not: the lease
    // holder's ticks go on appending between two reads).
    let log = format!("{prefix}:log");
    let first = wait_for("the log to be trimmed", AGREE, || {
        let first = first_ordinal(&redis.cli(&["XRANGE", &log, "-", "+", "COUNT", "1"]));
        (first > 1).then_some(first)
    });
    eprintln!("replicas: the log now starts at entry {first}");
    // A new replica with an empty store starts from the snapshot in Redis.
    let c = launch("c").start();
    let state = agreed(&[&a, &b, &c]);
    assert!(
        c.sample(BOOTSTRAPS) >= 1.0,
        "the new replica started from the snapshot in Redis"
    );
    assert_eq!(
        started(&samples_of(&state), 25, 2500)
            + started(&samples_of(&state), 25, 2501)
            + started(&samples_of(&state), 25, 2502),
        12.0,
        "the first batch's runs"
    );

    // SIGTERM of A; more to B; A again on its store.
    let status = a.terminate();
    assert!(status.success(), "SIGTERM exit status: {status}");
    post_batch(&[&b], &batches[1], &mut unfinished);
    a.restart();
    agreed(&[&a, &b, &c]);
    assert_eq!(
        a.sample(BOOTSTRAPS),
        0.0,
        "after SIGTERM, A caught up from its own snapshot and the log's tail"
    );

    // kill -9 of A; more to B and C; A again on its store.
    post_batch(&[&a, &b, &c], &batches[2], &mut unfinished);
    a.kill9();
    post_batch(&[&b, &c], &batches[3], &mut unfinished);
    a.restart();
    let state = agreed(&[&a, &b, &c]);
    assert_eq!(
        a.sample(BOOTSTRAPS),
        0.0,
        "after kill -9, A caught up from its own snapshot and the log's tail"
    );

    // The state is the four batches: each run started once, all finished
    // but the last batch's unfinished ones.
    let s = samples_of(&state);
    let all: Vec<&PlannedRun> = batches.iter().flatten().collect();
    let total: f64 = (2500..2503).map(|p| started(&s, 25, p)).sum();
    assert_eq!(total, all.len() as f64, "every run started once");
    let done: f64 = (2500..2503).map(|p| finished(&s, 25, p)).sum();
    assert_eq!(
        done,
        (all.len() - unfinished.len()) as f64,
        "every run finished once but the last batch's unfinished ones"
    );
    let running: f64 = (2500..2503)
        .map(|p| sample(&s, &Run::new(25, p, 0, 0).running()))
        .sum();
    assert_eq!(running, unfinished.len() as f64, "running");
}

/// The ordinal of the entry `XRANGE log - + COUNT 1` printed (its id, then
/// field and value on a line each, `o` the ordinal), or 0 for none.
fn first_ordinal(xrange: &str) -> u64 {
    let lines: Vec<&str> = xrange.lines().collect();
    lines
        .iter()
        .skip(1)
        .step_by(2)
        .zip(lines.iter().skip(2).step_by(2))
        .find(|(field, _)| **field == "o")
        .map_or(0, |(_, value)| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("the ordinal in {xrange:?}"))
        })
}
#[test]
fn redis_stopped_and_started_again_means_503_then_recovery_without_a_restart() {
    const ORG: u64 = 26;
    let logs = Logs::new();
    let mut redis = Redis::start();
    let launch = |name: &str| replica(Exporter::builder(), &redis, "outage", &logs, name);
    let replicas = [launch("a").start(), launch("b").start()];
    let runs: Vec<PlannedRun> = (0..7)
        .map(|i| planned(ORG, 2600 + i % 2, 2_600_000 + i, i))
        .collect();
    let (mut ok, mut refused) = (0.0, 0.0);
    for (i, planned) in runs[..3].iter().enumerate() {
        expect(&replicas[i % 2], &planned.start, "accepted");
        expect(&replicas[(i + 1) % 2], &planned.finish, "accepted");
        ok += 2.0;
    }
    agreed(&[&replicas[0], &replicas[1]]);

    redis.stop();
    for r in &replicas {
        wait_for("/-/ready to answer 503", AGREE, || {
            http::try_get(&r.url("/-/ready"))
                .is_some_and(|resp| resp.status == 503)
                .then_some(())
        });
    }
    // While Redis is down: 503 for every delivery, on either replica.
    let mut refused_deliveries: Vec<(usize, &Delivery)> = Vec::new();
    for (i, planned) in runs[3..].iter().enumerate() {
        for (to, delivery) in [(i % 2, &planned.start), ((i + 1) % 2, &planned.finish)] {
            let resp = send(&replicas[to], delivery);
            assert_eq!(resp.status, 503, "Redis is down: {}", resp.body);
            refused += 1.0;
            refused_deliveries.push((to, delivery));
        }
    }
    for r in &replicas {
        let resp = http::get(&r.url("/-/ready"));
        assert_eq!(
            resp.status, 503,
            "not ready while Redis is down: {}",
            resp.body
        );
    }

    // Redis again, on its append-only file; the exporters are not restarted.
    redis.start_again();
    let back = Instant::now();
    for (to, delivery) in refused_deliveries {
        loop {
            let resp = send(&replicas[to], delivery);
            if resp.status == 200 {
                assert_eq!(
                    result_of(&resp),
                    "accepted",
                    "a 503'd delivery re-sent: {}",
                    resp.body
                );
                ok += 1.0;
                break;
            }
            assert_eq!(resp.status, 503, "while Redis comes back: {}", resp.body);
            refused += 1.0;
            assert!(
                back.elapsed() < AGREE,
                "deliveries still refused {AGREE:?} after Redis came back: {}",
                resp.body
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    eprintln!(
        "replicas: all 503'd deliveries accepted {:.1?} after Redis came back",
        back.elapsed()
    );
    for r in &replicas {
        wait_for("/-/ready to answer 200 again", AGREE, || {
            http::try_get(&r.url("/-/ready"))
                .is_some_and(|resp| resp.status == 200)
                .then_some(())
        });
    }

    let s = samples_of(&agreed(&[&replicas[0], &replicas[1]]));
    assert_counted_once(&s, &runs, "after Redis came back");
    assert_value(&s, &requests_total(200), ok);
    assert_value(&s, &requests_total(503), refused);
}

#[test]
fn redis_killed_under_posters_and_started_again_loses_no_acknowledged_delivery() {
    const ORG: u64 = 27;
    let logs = Logs::new();
    let mut redis = Redis::start();
    let launch = |name: &str| replica(Exporter::builder(), &redis, "kill-redis", &logs, name);
    let (a, b) = (launch("a").start(), launch("b").start());

    let ports: Ports = Arc::new([AtomicU16::new(a.port()), AtomicU16::new(b.port())]);
    let (stop, back) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let posters = start_posters(4, ORG, &ports, &stop, &back);
    std::thread::sleep(Duration::from_millis(1500));
    redis.kill9();
    std::thread::sleep(Duration::from_millis(1000));
    redis.start_again();
    back.store(true, Ordering::Release);
    // Until both replicas are ready again, and a little more.
    for r in [&a, &b] {
        wait_for("/-/ready to answer 200 again", AGREE, || {
            http::try_get(&r.url("/-/ready"))
                .is_some_and(|resp| resp.status == 200)
                .then_some(())
        });
    }
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let posted = join(posters);
    let fates = tally(&posted);
    eprintln!("replicas: kill -9 of Redis, deliveries {fates:?}");
    let sent = || posted.iter().flat_map(|(_, sent)| sent);
    assert!(
        sent().all(|d| d.fate != Fate::Unanswered),
        "the exporters stayed up: every delivery has an answer: {fates:?}"
    );
    assert!(
        sent().any(|d| matches!(d.fate, Fate::Refused(503, _))),
        "Redis down refused deliveries: {fates:?}"
    );
    assert!(
        sent().any(|d| d.after_marker && matches!(d.fate, Fate::Acknowledged(_))),
        "deliveries were acknowledged again after Redis came back: {fates:?}"
    );

    let s = samples_of(&agreed(&[&a, &b]));
    resend_until_counted_once(&posted, ORG, &s, &[&a, &b]);
}

#[test]
fn the_redis_password_comes_from_a_file_and_never_shows() {
    const PASSWORD: &str = "s3cr3t-Pa55word-9f8e7d";
    let redis = Redis::start_with(&["--requirepass", PASSWORD]);
    let logs = Logs::new();
    let secrets = tempfile::tempdir().expect("temp dir");
    let url_file = secrets.path().join("url");
    std::fs::write(
        &url_file,
        format!("redis://:{PASSWORD}@127.0.0.1:{}/0\n", redis.port()),
    )
    .expect("write the URL file");
    let launch = |name: &str, file: &std::path::Path| {
        Exporter::builder()
            .args([
                "--storage.backend=redis".to_owned(),
                format!("--storage.redis-url-file={}", file.display()),
                "--storage.redis-prefix=password".to_owned(),
                "--log.level=debug".to_owned(),
            ])
            .log_to(&logs.path(name))
    };
    let good = launch("good", &url_file).start();
    good.post_expect(&Run::new(1, 2, 3, 4).started(), "accepted");
    // A wrong password: the replica runs, healthy and never ready, and says
    // why without showing either password.
    let wrong_file = secrets.path().join("wrong");
    std::fs::write(
        &wrong_file,
        format!("redis://:not-the-{PASSWORD}@127.0.0.1:{}/0", redis.port()),
    )
    .expect("write the URL file");
    let wrong = launch("wrong", &wrong_file)
        .ready_when(|port| {
            http::try_get(&format!("http://127.0.0.1:{port}/-/healthy"))
                .is_some_and(|r| r.status == 200)
        })
        .start();
    let answer = wrong.post(&Run::new(1, 2, 3, 5).started());
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(http::get(&wrong.url("/-/ready")).status, 503);
    let mut shown = vec![answer.body.clone()];
    for exporter in [&good, &wrong] {
        for page in ["/metrics", "/", "/api/v1/runs", "/-/ready"] {
            shown.push(http::get(&exporter.url(page)).body);
        }
    }
    // Give the wrong one time to log its retries.
    std::thread::sleep(Duration::from_secs(2));
    for name in ["good", "wrong"] {
        let log = std::fs::read_to_string(logs.path(name)).expect("the log");
        assert!(
            log.contains("***@127.0.0.1"),
            "{name}: the URL is logged redacted\n{log}"
        );
        shown.push(log);
    }
    for text in shown {
        assert!(!text.contains(PASSWORD), "the password shows in:\n{text}");
    }
}

#[test]
fn wait_replicas_answers_only_once_a_redis_replica_has_the_entry() {
    let primary = Redis::start();
    let mut secondary =
        Redis::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    wait_for("the Redis replica to sync", Duration::from_secs(20), || {
        primary
            .cli(&["INFO", "replication"])
            .contains("state=online")
            .then_some(())
    });
    let logs = Logs::new();
    let exporter = replica(
        Exporter::builder().arg("--storage.redis-wait-replicas=1"),
        &primary,
        "wait",
        &logs,
        "a",
    )
    .start();
    let run = Run::new(6, 60, 600, 6_000);
    exporter.post_expect(&run.started(), "accepted");
    // The entry is on the Redis replica too.
    assert!(secondary.cli_int(&["XLEN", "wait:log"]) >= 1);
    // Without the Redis replica, WAIT sees none: 503, and the sender retries.
    // Killed rather than stopped: a replica's SIGTERM once took over 20 s
    // to exit on a busy machine, and only its absence matters here.
    secondary.kill9();
    wait_for(
        "the primary to see its replica gone",
        Duration::from_secs(20),
        || {
            primary
                .cli(&["INFO", "replication"])
                .contains("connected_slaves:0")
                .then_some(())
        },
    );
    let answer = exporter.post(&run.finished(3, Some("Finished")));
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.body.contains("replicas"), "{}", answer.body);
}
