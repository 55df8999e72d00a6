//! Durability across restarts: a `kill -9` and a SIGTERM, each followed by a
//! restart on the same store, with every metric compared exactly before and
//! after (the whole exposition text byte for byte); counters continue; a run
//! started before the kill finishes after it; a SIGTERM in the middle of
//! concurrent deliveries loses none that got a 200 and serves none that came
//! after it; expiry by the stored start time; where the store is by default,
//! and a store that cannot be opened.
//!
//! Written from the specification, not from the exporter's code.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::deliveries::{self, fresh_id, test_hook, Delivery, Run};
use support::exporter::{api_run, Exporter};
use support::http::{send, NO_HEADERS};
use support::samples::*;
use support::{assert_duration_between, wait_for, Window};

/// The two ways the exporter goes down before a restart on the same store.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Kill9,
    Sigterm,
}

const STOPS: [Stop; 2] = [Stop::Kill9, Stop::Sigterm];

/// Stops the exporter `how` (a SIGTERM must end in exit status 0) and starts
/// it again on the same store.
fn stop_and_restart(exporter: &mut Exporter, how: Stop) {
    match how {
        Stop::Kill9 => exporter.kill9(),
        Stop::Sigterm => {
            let status = exporter.terminate();
            assert!(status.success(), "SIGTERM exit status: {status}");
        }
    }
    exporter.restart();
}

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
        exporter.post_id_expect(&run.started(), &format!("pre-s-{i}"), "accepted");
        exporter.post_id_expect(&run.finished(code, text), &format!("pre-f-{i}"), "accepted");
    }
    // Still running at the kill.
    exporter.post_id_expect(&Run::new(1, 10, 20, 2000).started(), "pre-r-0", "accepted");
    exporter.post_id_expect(&Run::new(2, 30, 40, 2001).started(), "pre-r-1", "accepted");
    // Out of order.
    let late = Run::new(2, 30, 41, 2002);
    exporter.post_expect(&late.finished(7, None), "accepted");
    exporter.post_expect(&late.started(), "ignored");
    // Duplicates both ways.
    exporter.post_id_expect(&Run::new(1, 10, 20, 1000).started(), "pre-s-0", "duplicate");
    exporter.post_expect(&Run::new(1, 11, 21, 1001).finished(4, None), "duplicate");
    exporter.post_expect(&test_hook(), "accepted");
    // Rejections.
    let url = exporter.url("/webhook");
    let headers = deliveries::headers("test.started", "bad");
    assert_eq!(send("POST", &url, &headers, Some(b"{")).status, 400);
    assert_eq!(send("GET", &url, &headers, None).status, 405);
    let unknown = json!({"event": "test.exploded"});
    assert_eq!(deliveries::post_fresh(&url, &unknown).status, 422);
}

#[test]
fn kill_9_and_sigterm_restarts_keep_every_metric_exactly() {
    let mut exporter = Exporter::start(&[]);
    populate(&exporter);
    let across = Run::new(1, 10, 20, 3000);
    let start =
        Window::around(|| exporter.post_id_expect(&across.started(), "across-start", "accepted"));

    let before = exporter.samples();
    let api_before = exporter.runs_api();
    assert_value(&before, &across.running(), 2.0);
    assert!(before.keys().any(|k| is_per_process(k)));

    for how in STOPS {
        stop_and_restart(&mut exporter, how);
        assert_unchanged(&before, &exporter.samples(), &format!("after {how:?}"));
        assert_eq!(
            exporter.runs_api(),
            api_before,
            "/api/v1/runs after {how:?}"
        );
    }

    // Deliveries from before the restarts are still known.
    exporter.post_id_expect(&across.started(), "across-start", "duplicate");
    exporter.post_id_expect(&test_hook(), "pre-s-3", "duplicate");
    exporter.post_expect(&Run::new(1, 11, 21, 1001).finished(4, None), "duplicate");

    // The run started before the kill finishes after it, with its duration.
    let finish = Window::around(|| exporter.post_expect(&across.finished(3, None), "accepted"));
    // And counters continue.
    let fresh = Run::new(1, 10, 20, 3001);
    exporter.post_expect(&fresh.started(), "accepted");
    let bad = send("PUT", &exporter.url("/webhook"), NO_HEADERS, None);
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
    assert_duration_between(duration, start, finish, "across the restarts");
    let api = exporter.runs_api();
    assert!(api_run(&api, "running", 3000).is_none(), "{api}");
    let entry = api_run(&api, "recent", 3000).expect("the run is recent");
    assert_eq!(entry["outcome"], json!("finished"));
    assert!(api_run(&api, "running", 3001).is_some(), "{api}");
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
            exporter.post_expect(&run.started(), "accepted");
        }
        for run in chunk {
            // Each project's runs go through every outcome.
            let i = (run.id - 70_000) as usize;
            let (status, text) = outcomes[(i / 60) % outcomes.len()];
            exporter.post_expect(&run.finished(status, text), "accepted");
        }
    }
    let before = exporter.state_exposition();
    let sums = before
        .iter()
        .filter(|l| l.starts_with("loadimpact_test_run_duration_seconds_sum"))
        .count();
    assert_eq!(sums, 60 * outcomes.len(), "duration sums: {before:#?}");

    for how in STOPS {
        stop_and_restart(&mut exporter, how);
        let after = exporter.state_exposition();
        assert_same_lines(&before, &after, &format!("after {how:?}"));
    }
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
                        let delivery = Delivery::new(&body, &fresh_id());
                        tally.attempted += 1;
                        match delivery.try_send(&url) {
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
        wait_for("deliveries to flow", Duration::from_secs(20), || {
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
    exporter.post_expect(&Run::new(5, 50, 60, 99_999_999).started(), "accepted");
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
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", exporter.port())).expect("connect");
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
    wait_for(
        "the exporter to read the request head",
        Duration::from_secs(10),
        || server_has_read(exporter.port(), client_port).then_some(()),
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
        Delivery::new(&Run::new(6, 60, 600, 6001).started(), "newcomer")
            .try_send(&url)
            .map(|r| (r.status, r.body))
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
    exporter.post_expect(&run.started(), "accepted");
    exporter.kill9();
    // Down for longer than --run.max-duration: nothing to poll meanwhile.
    std::thread::sleep(Duration::from_millis(3500));
    exporter.restart();
    let restarted = std::time::Instant::now();
    // Due already: it must not wait another --run.max-duration (3 s) after the restart.
    wait_for("the run to expire", Duration::from_millis(2500), || {
        let s = exporter.samples();
        (sample(&s, &run.expired_total()) == 1.0 && sample(&s, &run.running()) == 0.0).then_some(())
    });
    assert!(restarted.elapsed() < Duration::from_millis(2900));
    assert_value(&exporter.samples(), &run.started_total(), 1.0);
}

#[test]
fn the_default_store_is_data_under_the_working_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut exporter = Exporter::builder()
        .current_dir(dir.path())
        .default_storage()
        .start();
    let run = Run::new(3, 3, 3, 3);
    exporter.post_expect(&run.started(), "accepted");
    // SIGINT (Ctrl-C in a terminal) stops it as cleanly as SIGTERM.
    let status = exporter.stop("INT");
    assert!(status.success(), "exit status after SIGINT: {status}");
    let data = dir.path().join("data");
    assert!(
        data.is_dir() && std::fs::read_dir(&data).expect("read ./data").count() > 0,
        "the store is not in ./data"
    );
    exporter.restart();
    assert_value(&exporter.samples(), &run.started_total(), 1.0);
}

#[test]
fn a_store_that_cannot_be_opened_stops_the_start_with_an_error() {
    let exporter = Exporter::start(&[]);
    let run = Run::new(1, 1, 1, 1);
    exporter.post_expect(&run.started(), "accepted");

    // A second process on the same store must not share it.
    let (status, output) = Exporter::builder()
        .storage(exporter.storage())
        .run_until_exit();
    assert!(!status.success(), "a second exporter ran on the same store");
    assert!(!output.trim().is_empty(), "no word on why it stopped");
    // The first one is unharmed.
    exporter.post_expect(&Run::new(1, 1, 1, 2).started(), "accepted");
    assert_value(&exporter.samples(), &run.started_total(), 2.0);

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let (status, output) = Exporter::builder()
        .storage(&file.join("data"))
        .run_until_exit();
    assert!(!status.success(), "started with a store under a file");
    assert!(!output.trim().is_empty(), "no word on why it stopped");

    let (status, _) = Exporter::builder()
        .arg("--run.max-duration=banana")
        .run_until_exit();
    assert!(!status.success(), "started with an invalid duration");
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
