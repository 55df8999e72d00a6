//! Issue 2, durability: a `kill -9` and a SIGTERM, each followed by a restart on
//! the same store, with every metric compared exactly before and after; counters
//! continue; a run started before the kill finishes after it; and a SIGTERM in
//! the middle of concurrent deliveries loses none that got a 200.
//!
//! Written from the specification, not from the exporter's code.

mod blackbox;
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blackbox::*;
use common::{sample, Exporter};
use serde_json::{json, Value};

/// Puts state of every kind into the exporter: runs of every outcome in two
/// projects, running runs, an out-of-order run, duplicates, the Test Hook and
/// rejected requests.
fn populate(exporter: &Exporter) {
    let codes: [(i64, Option<&str>); 11] = [
        (3, None),
        (4, None),
        (5, Some("Aborting by user")),
        (8, None),
        (9, None),
        (11, None),
        (3, Some("Aborted by limit")),
        (12, None),
        (42, None),
        (3, Some("Finished")),
        (6, None),
    ];
    for (i, (code, text)) in codes.into_iter().enumerate() {
        let run = Run::new(1, 10 + (i as u64 % 2), 20 + i as u64 % 3, 1000 + i as u64);
        post_id_expect(exporter, &run.started(), &format!("pre-s-{i}"), "accepted");
        post_id_expect(
            exporter,
            &run.finished(code, text),
            &format!("pre-f-{i}"),
            "accepted",
        );
    }
    // Still running at the kill.
    post_id_expect(
        exporter,
        &Run::new(1, 10, 20, 2000).started(),
        "pre-r-0",
        "accepted",
    );
    post_id_expect(
        exporter,
        &Run::new(2, 30, 40, 2001).started(),
        "pre-r-1",
        "accepted",
    );
    // Out of order.
    let late = Run::new(2, 30, 41, 2002);
    post_expect(exporter, &late.finished(7, None), "accepted");
    post_expect(exporter, &late.started(), "ignored");
    // Duplicates both ways.
    post_id_expect(
        exporter,
        &Run::new(1, 10, 20, 1000).started(),
        "pre-s-0",
        "duplicate",
    );
    post_expect(
        exporter,
        &Run::new(1, 11, 21, 1001).finished(4, None),
        "duplicate",
    );
    post_expect(
        exporter,
        &json!({"event": "test.notification_channel"}),
        "accepted",
    );
    // Rejections.
    let url = exporter.url("/webhook");
    let headers = li_headers("test.started", "bad");
    assert_eq!(send("POST", &url, &headers, Some(b"{")).status, 400);
    assert_eq!(send("GET", &url, &headers, None).status, 405);
    let unknown = json!({"event": "test.exploded"});
    assert_eq!(post_to(&url, &unknown).status, 422);
}

fn assert_same_state(before: &Samples, after: &Samples, what: &str) {
    let moved = changes(before, after);
    assert!(
        moved.is_empty(),
        "{what}: series differ after the restart (before, after): {moved:#?}"
    );
}

#[test]
fn kill_9_and_sigterm_restarts_keep_every_metric_exactly() {
    let mut exporter = Exporter::start(&[]);
    populate(&exporter);
    let across = Run::new(1, 10, 20, 3000);
    let start_sent = now();
    post_id_expect(&exporter, &across.started(), "across-start", "accepted");
    let start_answered = now();

    let before = exporter.samples();
    let api_before = runs_api(&exporter);
    assert_value(&before, &across.running(), 2.0);
    assert!(before.keys().any(|k| k.starts_with(PER_PROCESS_PREFIX)));

    exporter.kill9();
    exporter.restart();
    let after_kill = exporter.samples();
    assert_same_state(&before, &after_kill, "kill -9");
    assert_eq!(
        runs_api(&exporter),
        api_before,
        "/api/v1/runs after kill -9"
    );

    let status = exporter.terminate();
    assert!(status.success(), "SIGTERM exit status: {status}");
    exporter.restart();
    let after_term = exporter.samples();
    assert_same_state(&before, &after_term, "SIGTERM");
    assert_eq!(
        runs_api(&exporter),
        api_before,
        "/api/v1/runs after SIGTERM"
    );

    // Deliveries from before the restarts are still known.
    post_id_expect(&exporter, &across.started(), "across-start", "duplicate");
    post_id_expect(
        &exporter,
        &json!({"event": "test.notification_channel"}),
        "pre-s-3",
        "duplicate",
    );
    post_expect(
        &exporter,
        &Run::new(1, 11, 21, 1001).finished(4, None),
        "duplicate",
    );

    // The run started before the kill finishes after it, with its duration.
    let finish_sent = now();
    post_expect(&exporter, &across.finished(3, None), "accepted");
    let finish_answered = now();
    // And counters continue.
    let fresh = Run::new(1, 10, 20, 3001);
    post_expect(&exporter, &fresh.started(), "accepted");
    let bad = send("PUT", &exporter.url("/webhook"), &[], None);
    assert_eq!(bad.status, 405);

    let s = exporter.samples();
    let expect = |series: &str, change: f64| {
        assert_eq!(
            delta(&before, &s, series),
            change,
            "`{series}` after the restarts"
        );
    };
    expect(&across.running(), 0.0); // one left, one came
    expect(&across.started_total(), 1.0);
    expect(&across.finished_total("finished"), 1.0);
    expect(&across.duration_count("finished"), 1.0);
    expect(&requests_total(200), 5.0);
    expect(&requests_total(405), 1.0);
    expect(&requests_total(400), 0.0);
    expect(&events_total("test.started", "accepted"), 1.0);
    expect(&events_total("test.started", "duplicate"), 1.0);
    expect(&events_total("test.finished", "accepted"), 1.0);
    expect(&events_total("test.finished", "duplicate"), 1.0);
    expect(&events_total("test.notification_channel", "duplicate"), 1.0);
    assert_value(&s, &across.last_run_status(), 3.0);
    let duration = delta(&before, &s, &across.duration_sum("finished"));
    let (low, high) = (
        finish_sent - start_answered - 0.01,
        finish_answered - start_sent + 0.01,
    );
    assert!(
        duration >= low && duration <= high,
        "duration across the restarts {duration} not in [{low}, {high}]"
    );
    let api = runs_api(&exporter);
    assert!(api_run(&api, "running", 3000).is_none(), "{api}");
    let entry = api_run(&api, "recent", 3000).expect("the run is recent");
    assert_eq!(entry["outcome"], json!("finished"));
    assert!(api_run(&api, "running", 3001).is_some(), "{api}");
}

/// The exposition as text, less the process's own telemetry: every line
/// (HELP, TYPE and samples) of every `loadimpact_*` family that the webhooks
/// produced.
fn webhook_exposition(exporter: &Exporter) -> Vec<String> {
    exporter
        .scrape()
        .lines()
        .filter(|line| {
            let name = line
                .trim_start_matches("# HELP ")
                .trim_start_matches("# TYPE ");
            name.starts_with("loadimpact_") && !name.starts_with(PER_PROCESS_PREFIX)
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_sample_reads_byte_for_byte_the_same_after_restarts() {
    let mut exporter = Exporter::start(&[]);
    // 1,200 runs over 60 projects and several outcomes, durations of a few
    // milliseconds each: sums of such durations are what a float store
    // could not give back exactly.
    let runs: Vec<Run> = (0..1200u64)
        .map(|i| Run::new(1 + i % 3, 100 + i % 60, 500 + i % 97, 70_000 + i))
        .collect();
    let outcomes: [(i64, Option<&str>); 3] = [
        (3, Some("Finished")),
        (12, Some("Failed threshold")),
        (6, Some("Aborted by user")),
    ];
    for chunk in runs.chunks(50) {
        for run in chunk {
            post_expect(&exporter, &run.started(), "accepted");
        }
        for run in chunk {
            // Each project's runs go through every outcome.
            let i = (run.id - 70_000) as usize;
            let (status, text) = outcomes[(i / 60) % outcomes.len()];
            post_expect(&exporter, &run.finished(status, text), "accepted");
        }
    }
    let before = webhook_exposition(&exporter);
    let sums = before
        .iter()
        .filter(|l| l.starts_with("loadimpact_test_run_duration_seconds_sum"))
        .count();
    assert_eq!(sums, 60 * outcomes.len(), "duration sums: {before:#?}");

    exporter.kill9();
    exporter.restart();
    assert_same_lines(&before, &webhook_exposition(&exporter), "after kill -9");

    let status = exporter.terminate();
    assert!(status.success(), "SIGTERM exit status: {status}");
    exporter.restart();
    assert_same_lines(&before, &webhook_exposition(&exporter), "after SIGTERM");
}

/// Fails with the lines that differ, if any.
fn assert_same_lines(before: &[String], after: &[String], what: &str) {
    let gone: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    let new: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
    assert!(
        gone.is_empty() && new.is_empty() && before == after,
        "{what}: {} lines differ\nbefore: {gone:#?}\nafter: {new:#?}",
        gone.len().max(new.len())
    );
}

/// Threads posting starts of distinct runs (thread `t` in project `50 + t`)
/// as fast as they can, until told to stop or the connection fails.
struct Load {
    answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<Tally>>,
}

/// What one thread of a `Load` saw.
#[derive(Default)]
struct Tally {
    /// Deliveries answered 200 `accepted`.
    accepted: usize,
    /// Deliveries sent (or being sent) whatever happened to them.
    attempted: usize,
    /// Answers other than 200.
    refused: Vec<(u16, String)>,
}

const LOAD_THREADS: u64 = 6;

impl Load {
    fn start(url: &str) -> Load {
        let answered = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..LOAD_THREADS)
            .map(|t| {
                let (url, answered, stop) = (url.to_owned(), answered.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut tally = Tally::default();
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let body = Run::new(5, 50 + t, 60, t * 1_000_000 + i).started();
                        let payload = serde_json::to_vec(&body).expect("json");
                        let headers = li_headers("test.started", &fresh_id());
                        tally.attempted += 1;
                        match try_send("POST", &url, &headers, Some(&payload)) {
                            Some(r) if r.status == 200 => {
                                assert_eq!(r.json(), json!({"result": "accepted"}));
                                tally.accepted += 1;
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(r) => tally.refused.push((r.status, r.body)),
                            // The listener is gone.
                            None => break,
                        }
                    }
                    tally
                })
            })
            .collect();
        let load = Load {
            answered,
            stop,
            workers,
        };
        common::wait_for("deliveries to flow", Duration::from_secs(20), || {
            (load.answered.load(Ordering::Relaxed) >= 60).then_some(())
        });
        load
    }

    /// Stops the threads; their tallies, by thread.
    fn finish(self) -> Vec<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        let tallies: Vec<Tally> = self
            .workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect();
        for tally in &tallies {
            for (status, body) in &tally.refused {
                assert_eq!(
                    *status, 503,
                    "only a 503 (retry later) may refuse a valid delivery: {body}"
                );
            }
        }
        tallies
    }
}

fn project_of_thread(t: u64) -> Run {
    Run::new(5, 50 + t, 60, 0)
}

#[test]
fn sigterm_finishes_in_flight_deliveries() {
    let mut exporter = Exporter::start(&[]);
    let load = Load::start(&exporter.url("/webhook"));
    let status = exporter.terminate();
    assert!(status.success(), "SIGTERM exit status: {status}");
    let tallies = load.finish();

    exporter.restart();
    let s = exporter.samples();
    let accepted = tallies.iter().map(|t| t.accepted).sum::<usize>() as f64;
    assert_eq!(
        sample(&s, &events_total("test.started", "accepted")),
        accepted,
        "every delivery answered 200 is counted, and no other"
    );
    for (t, tally) in (0..).zip(&tallies) {
        let run = project_of_thread(t);
        assert_eq!(sample(&s, &run.started_total()), tally.accepted as f64);
        assert_eq!(sample(&s, &run.running()), tally.accepted as f64);
    }
    assert_eq!(sample(&s, &requests_total(200)), accepted);
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_delivery() {
    let mut exporter = Exporter::start(&[]);
    let load = Load::start(&exporter.url("/webhook"));
    exporter.kill9();
    let tallies = load.finish();

    exporter.restart();
    let s = exporter.samples();
    for (t, tally) in (0..).zip(&tallies) {
        // A delivery may be stored and its answer lost with the process, never
        // the other way round.
        let run = project_of_thread(t);
        let started = sample(&s, &run.started_total());
        assert!(
            started >= tally.accepted as f64 && started <= tally.attempted as f64,
            "thread {t}: {started} runs stored, {} acknowledged, {} sent",
            tally.accepted,
            tally.attempted
        );
        assert_eq!(sample(&s, &run.running()), started);
    }
    // And the exporter goes on from there.
    let before = s;
    post_expect(
        &exporter,
        &Run::new(5, 50, 60, 99_999_999).started(),
        "accepted",
    );
    let after = exporter.samples();
    assert_eq!(
        delta(&before, &after, &project_of_thread(0).started_total()),
        1.0
    );
    assert_eq!(delta(&before, &after, &requests_total(200)), 1.0);
}

#[test]
fn sigterm_waits_for_a_request_in_progress_and_stops_accepting() {
    use std::io::{Read, Write};
    let mut exporter = Exporter::start(&[]);
    let url = exporter.url("/webhook");
    let slow = Run::new(6, 60, 600, 6000);
    let body = serde_json::to_vec(&slow.started()).expect("json");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", exporter.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         X-LoadImpact-Event: test.started\r\nX-LoadImpact-ID: slow-1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send the head");
    stream
        .write_all(&body[..10])
        .expect("send part of the body");
    // Wait until the exporter has accepted the connection and read what was sent.
    let client_port = stream.local_addr().expect("local addr").port();
    common::wait_for(
        "the exporter to read the request head",
        Duration::from_secs(10),
        || server_has_read(exporter.port, client_port).then_some(()),
    );

    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        stream.write_all(&body[10..]).expect("send the rest");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    });
    // A new connection while the exporter drains must not be served.
    let newcomer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        let payload = serde_json::to_vec(&Run::new(6, 60, 600, 6001).started()).expect("json");
        let headers = li_headers("test.started", "newcomer");
        try_send("POST", &url, &headers, Some(&payload)).map(|r| (r.status, r.body))
    });
    let status = exporter.terminate();
    assert!(status.success(), "SIGTERM exit status: {status}");
    let answer = sender.join().expect("sender");
    let newcomer = newcomer.join().expect("newcomer");
    assert!(
        newcomer.as_ref().is_none_or(|(status, _)| *status != 200),
        "a request arriving after SIGTERM was served: {newcomer:?}"
    );
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains(r#"{"result":"accepted"}"#),
        "the request in progress at SIGTERM: {answer:?}"
    );
    exporter.restart();
    assert_eq!(sample(&exporter.samples(), &slow.started_total()), 1.0);
}

#[test]
fn a_run_expires_by_its_stored_start_time_after_downtime() {
    let mut exporter = Exporter::start(&["--run.max-duration=3s"]);
    let run = Run::new(8, 8, 8, 8);
    post_expect(&exporter, &run.started(), "accepted");
    exporter.kill9();
    // Down for longer than --run.max-duration: nothing to poll meanwhile.
    std::thread::sleep(Duration::from_millis(3500));
    exporter.restart();
    let restarted = std::time::Instant::now();
    // Due already: it must not wait another --run.max-duration (3 s) after the restart.
    common::wait_for("the run to expire", Duration::from_millis(2500), || {
        let s = exporter.samples();
        (sample(&s, &run.expired_total()) == 1.0 && sample(&s, &run.running()) == 0.0).then_some(())
    });
    assert!(restarted.elapsed() < Duration::from_millis(2900));
    assert_value(&exporter.samples(), &run.started_total(), 1.0);
}

#[test]
fn the_default_store_is_data_under_the_working_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exporter = Spawned::start(dir.path(), &[], None);
    let run = Run::new(3, 3, 3, 3);
    let resp = post_to(&exporter.url("/webhook"), &run.started());
    expect_result(resp.status, &resp.body, "accepted", &run.started());
    // SIGINT (Ctrl-C in a terminal) stops it as cleanly as SIGTERM.
    let status = exporter.stop("INT");
    assert!(status.success(), "exit status after SIGINT: {status}");
    let data = dir.path().join("data");
    assert!(
        data.is_dir() && std::fs::read_dir(&data).expect("read ./data").count() > 0,
        "the store is not in ./data"
    );
    let exporter = Spawned::start(dir.path(), &[], None);
    let resp = common::get(&exporter.url("/metrics"));
    let s = common::parse_samples(&resp.body, "loadimpact_");
    assert_value(&s, &run.started_total(), 1.0);
}

/// Runs the binary with `args` and a free listen address, expecting it to exit
/// on its own within 10 s; its exit status and what it wrote.
fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("out.log");
    let out = || Stdio::from(std::fs::File::create(&log).expect("log file"));
    let mut child = Command::new(common::exporter_bin())
        .arg(format!(
            "--web.listen-address=127.0.0.1:{}",
            common::free_port()
        ))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out())
        .stderr(out())
        .spawn()
        .expect("spawn");
    let status = common::wait_for(
        &format!("the exporter to exit with {args:?}"),
        Duration::from_secs(10),
        || child.try_wait().expect("try_wait"),
    );
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn a_store_that_cannot_be_opened_stops_the_start_with_an_error() {
    let exporter = Exporter::start(&[]);
    let run = Run::new(1, 1, 1, 1);
    post_expect(&exporter, &run.started(), "accepted");

    // A second process on the same store must not share it.
    let store = exporter.storage.display().to_string();
    let (status, output) = run_to_exit(&[&format!("--storage.path={store}")]);
    assert!(!status.success(), "a second exporter ran on the same store");
    assert!(!output.trim().is_empty(), "no word on why it stopped");
    // The first one is unharmed.
    post_expect(&exporter, &Run::new(1, 1, 1, 2).started(), "accepted");
    assert_value(&exporter.samples(), &run.started_total(), 2.0);

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let (status, output) = run_to_exit(&[&format!("--storage.path={}/data", file.display())]);
    assert!(!status.success(), "started with a store under a file");
    assert!(!output.trim().is_empty(), "no word on why it stopped");

    let (status, _) = run_to_exit(&["--run.max-duration=banana"]);
    assert!(!status.success(), "started with an invalid duration");
}

/// A running strace; on drop, what it runs is killed first (a tracer killed
/// alone would leave its tracee running), then strace itself.
struct Tracer(std::process::Child);

impl Drop for Tracer {
    fn drop(&mut self) {
        for child in children_of(self.0.id()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &child.to_string()])
                .status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pids of `pid`'s children.
fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// "A 200 is only sent after fsync": the exporter runs under `strace`, and each
/// `{"result":"accepted"}` answer must come after an fsync or fdatasync of a
/// file under `--storage.path` that completed after its request was read (the
/// requests are sent one at a time).
#[test]
fn every_acknowledgement_follows_a_completed_fsync() {
    use std::process::{Command, Stdio};
    let strace = common::require_tool("strace");
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = dir.path().join("trace.txt");
    let port = common::free_port();
    let tracer = Command::new(strace)
        .args(["-f", "-qq", "-s", "256", "-o"])
        .arg(&trace)
        .arg("-e")
        .arg("trace=openat,fsync,fdatasync,read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg")
        .arg("--")
        .arg(common::exporter_bin())
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn strace");
    let mut tracer = Tracer(tracer);
    let base = format!("http://127.0.0.1:{port}");
    common::wait_for(
        "the traced exporter to be ready",
        Duration::from_secs(30),
        || {
            if let Ok(Some(status)) = tracer.0.try_wait() {
                panic!("strace exited during start-up: {status}");
            }
            common::try_request("GET", &format!("{base}/-/ready"), &[], None)
                .is_some_and(|r| r.status == 200)
                .then_some(())
        },
    );
    const RUNS: u64 = 5;
    for id in 0..RUNS {
        let run = Run::new(1, 1, 1, id);
        for body in [run.started(), run.finished(3, None)] {
            let resp = post_to(&format!("{base}/webhook"), &body);
            expect_result(resp.status, &resp.body, "accepted", &body);
        }
    }
    let exporter = children_of(tracer.0.id());
    assert_eq!(exporter.len(), 1, "strace's child: {exporter:?}");
    let sent = Command::new("kill")
        .args(["-TERM", &exporter[0].to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = common::wait_for("strace to exit", Duration::from_secs(20), || {
        tracer.0.try_wait().expect("try_wait")
    });
    assert!(status.success(), "exporter under strace: {status}");

    let text = std::fs::read_to_string(&trace).expect("read the trace");
    let store = dir.path().join("data").display().to_string();
    let (mut request_read, mut synced, mut acknowledged) = (false, false, 0);
    let mut store_fds = std::collections::BTreeSet::new();
    let mut syncing = std::collections::BTreeMap::new(); // pid -> fd, while unfinished
    for line in text.lines() {
        let (pid, call) = line.split_once(' ').unwrap_or(("", line));
        let call = call.trim_start();
        let sync = ["fsync(", "fdatasync("]
            .iter()
            .find_map(|name| call.strip_prefix(name))
            .map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap_or("")
            });
        if call.starts_with("openat(") && call.contains(&format!("\"{store}/")) {
            if let Some((_, fd)) = call.rsplit_once("= ") {
                store_fds.insert(fd.trim().to_owned());
            }
        } else if call.contains("POST /webhook ") {
            (request_read, synced) = (true, false);
        } else if let Some(fd) = sync {
            if call.ends_with("<unfinished ...>") {
                syncing.insert(pid.to_owned(), fd.to_owned());
            } else if call.ends_with("= 0") && store_fds.contains(fd) {
                synced |= request_read;
            }
        } else if call.starts_with("<... fsync resumed>")
            || call.starts_with("<... fdatasync resumed>")
        {
            let fd = syncing.remove(pid).unwrap_or_default();
            if call.ends_with("= 0") && store_fds.contains(&fd) {
                synced |= request_read;
            }
        } else if call.contains("HTTP/1.1 200") && call.contains("accepted") {
            assert!(
                request_read && synced,
                "a 200 without a completed fsync of the store since its request was read: {line}"
            );
            (request_read, synced) = (false, false);
            acknowledged += 1;
        }
    }
    assert!(!store_fds.is_empty(), "no file opened under {store}");
    assert_eq!(acknowledged, 2 * RUNS, "answers found in the trace");
}

/// Whether every thread of `pid` is traced by `tracer` (or, with 0, by nobody).
fn traced_by(pid: u32, tracer: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("status"))
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split_whitespace().collect::<Vec<_>>() == ["TracerPid:", &tracer.to_string()]
            })
    })
}

/// Whether process `pid` has exited (a zombie not yet reaped counts).
fn has_exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

/// strace attached to the running exporter `pid`, failing its fsyncs with EIO:
/// the invocations `when` of each thread (strace's syntax, e.g. "1"), or all.
fn fail_fsyncs(pid: u32, when: Option<&str>) -> Tracer {
    use std::process::{Command, Stdio};
    let inject = match when {
        Some(when) => format!("inject=fsync,fdatasync:error=EIO:when={when}"),
        None => "inject=fsync,fdatasync:error=EIO".to_owned(),
    };
    let tracer = Command::new(common::require_tool("strace"))
        .args(["-f", "-qq", "-o", "/dev/null", "-p", &pid.to_string()])
        .args(["-e", "trace=fsync,fdatasync", "-e", &inject])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn strace");
    let tracer = Tracer(tracer);
    common::wait_for("strace to attach", Duration::from_secs(10), || {
        traced_by(pid, tracer.0.id()).then_some(())
    });
    tracer
}

/// Detaches strace from `pid`: the disk is healthy again.
fn detach(mut tracer: Tracer, pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &tracer.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    tracer.0.wait().expect("strace exits");
    common::wait_for("strace to detach", Duration::from_secs(10), || {
        (has_exited(pid) || traced_by(pid, 0)).then_some(())
    });
}

/// Posts `body` with `id` and asserts the 503 of a store that cannot commit.
fn expect_503(exporter: &Exporter, body: &Value, id: &str) {
    let resp = exporter.post_event(body, id);
    assert_eq!(
        resp.status, 503,
        "a delivery the store could not commit: {}",
        resp.body
    );
    assert_eq!(resp.json()["result"], json!("rejected"), "{}", resp.body);
}

/// Load Impact retrying one delivery: posts it until a 200 (for up to 10 s),
/// adding the 503s to `refused`. `None` when the exporter exited instead, or
/// (with `unhealthy_ends`) said it is unhealthy: its supervisor restarts it.
fn retry(
    exporter: &Exporter,
    body: &Value,
    id: &str,
    refused: &mut usize,
    unhealthy_ends: bool,
) -> Option<common::Response> {
    let pid = exporter.pid();
    let payload = serde_json::to_vec(body).expect("json");
    common::wait_for(
        "a retry of a 503'd delivery to get 200, or the exporter to exit or fail \
         /-/healthy (it kept answering 503 while alive and healthy)",
        Duration::from_secs(10),
        || {
            let unhealthy = unhealthy_ends
                && common::try_request("GET", &exporter.url("/-/healthy"), &[], None)
                    .is_none_or(|r| r.status != 200);
            if has_exited(pid) || unhealthy {
                return Some(None);
            }
            let headers = [
                ("Content-Type", "application/json"),
                ("X-LoadImpact-ID", id),
            ];
            match common::try_request("POST", &exporter.url("/webhook"), &headers, Some(&payload)) {
                Some(r) if r.status == 200 => Some(Some(r)),
                Some(r) if r.status == 503 => {
                    *refused += 1;
                    None
                }
                Some(r) => panic!("a retry got {} {}", r.status, r.body),
                None => Some(None),
            }
        },
    )
}

/// After `retry`: in place, the result is accepted (or duplicate: the failed
/// commit reached the disk after all) and every 503 is counted; otherwise the
/// exporter is restarted as its supervisor would, and the retry succeeds.
fn after_retry(
    exporter: &mut Exporter,
    retried: Option<common::Response>,
    body: &Value,
    id: &str,
    refused: usize,
) {
    match retried {
        Some(resp) => {
            let result = resp.json()["result"].clone();
            assert!(
                result == json!("accepted") || result == json!("duplicate"),
                "{result}"
            );
            assert_value(&exporter.samples(), &requests_total(503), refused as f64);
        }
        None => {
            exporter.kill9();
            exporter.restart();
            let resp = exporter.post_event(body, id);
            assert_eq!(resp.status, 200, "retry after the restart: {}", resp.body);
        }
    }
}

/// One fsync of the store fails (strace attached to the running exporter
/// injects EIO once, then detaches). That delivery gets 503 and "the sender
/// retries": a retry must succeed within seconds, either because the exporter
/// recovered in place, or because it exited or declared itself unhealthy and
/// its supervisor restarted it. It must not keep answering 503 while it lives
/// and says it is healthy. Whatever got a 200 survives a `kill -9`.
#[test]
fn a_transient_fsync_failure_is_answered_503_and_then_recovered() {
    let mut exporter = Exporter::start(&[]);
    let run = |id| Run::new(1, 1, 1, id);
    post_id_expect(&exporter, &run(1).started(), "id-1", "accepted");

    let pid = exporter.pid();
    let tracer = fail_fsyncs(pid, Some("1"));
    let failing = run(2).started();
    expect_503(&exporter, &failing, "id-2");
    detach(tracer, pid);

    let mut refused = 1;
    let retried = retry(&exporter, &failing, "id-2", &mut refused, true);
    after_retry(&mut exporter, retried, &failing, "id-2", refused);
    post_id_expect(&exporter, &run(3).started(), "id-3", "accepted");
    exporter.kill9();
    exporter.restart();
    let s = exporter.samples();
    assert_value(&s, &run(1).started_total(), 3.0);
    assert_value(&s, &run(1).running(), 3.0);
}

/// Every fsync fails for a while (a failing disk): deliveries get 503 and
/// change nothing, the exporter is not ready ("ready once the store is open";
/// README: `/-/ready` is 200 while the store takes writes, `/-/healthy` 503 when
/// it cannot be reopened). Once the disk is back, Load Impact's retries are
/// accepted, readiness returns, and every 503 answered is counted.
#[test]
fn a_failing_disk_makes_the_exporter_unready_until_it_recovers() {
    let mut exporter = Exporter::start(&[]);
    let run = |id| Run::new(2, 2, 2, id);
    post_expect(&exporter, &run(1).started(), "accepted");
    let pid = exporter.pid();
    let before = exporter.samples();
    let tracer = fail_fsyncs(pid, None);
    for id in 2..5 {
        expect_503(&exporter, &run(id).started(), &format!("disk-{id}"));
        // Not stored, so not counted (the 503s themselves may be counted late).
        let mut moved = changes(&before, &exporter.samples());
        moved.remove(&requests_total(503));
        assert!(
            moved.is_empty(),
            "after {} deliveries answered 503, the metrics show: {moved:#?}",
            id - 1
        );
    }
    // A group of concurrent deliveries fails together, and shows nothing either.
    std::thread::scope(|scope| {
        for id in 10..18 {
            let exporter = &exporter;
            scope.spawn(move || expect_503(exporter, &run(id).started(), &format!("disk-{id}")));
        }
    });
    let mut moved = changes(&before, &exporter.samples());
    moved.remove(&requests_total(503));
    assert!(moved.is_empty(), "after concurrent 503s: {moved:#?}");
    let status = |exporter: &Exporter, path: &str| common::get(&exporter.url(path)).status;
    common::wait_for(
        "/-/ready and /-/healthy to say 503",
        Duration::from_secs(10),
        || {
            (status(&exporter, "/-/ready") == 503 && status(&exporter, "/-/healthy") == 503)
                .then_some(())
        },
    );
    detach(tracer, pid);

    let mut refused = 11;
    for id in (2..5).chain(10..18) {
        let (body, id) = (run(id).started(), format!("disk-{id}"));
        let retried = retry(&exporter, &body, &id, &mut refused, false);
        after_retry(&mut exporter, retried, &body, &id, refused);
    }
    common::wait_for(
        "/-/ready and /-/healthy to say 200",
        Duration::from_secs(10),
        || {
            (status(&exporter, "/-/ready") == 200 && status(&exporter, "/-/healthy") == 200)
                .then_some(())
        },
    );
    let before = exporter.samples();
    assert_value(&before, &run(1).started_total(), 12.0);
    exporter.kill9();
    exporter.restart();
    assert!(
        changes(&before, &exporter.samples()).is_empty(),
        "state after kill -9"
    );
}

/// Whether the server side of the connection 127.0.0.1:`client_port` ->
/// 127.0.0.1:`server_port` has been accepted (it has an inode) and its receive
/// queue is empty (everything sent so far was read), from /proc/net/tcp.
fn server_has_read(server_port: u16, client_port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let (local, remote) = (
        format!("0100007F:{server_port:04X}"),
        format!("0100007F:{client_port:04X}"),
    );
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 9
            && f[1] == local
            && f[2] == remote
            && f[4]
                .rsplit_once(':')
                .is_some_and(|(_, rx)| u64::from_str_radix(rx, 16) == Ok(0))
            && f[9] != "0"
    })
}
