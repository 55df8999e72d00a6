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

#[test]
fn sigterm_finishes_in_flight_deliveries() {
    const THREADS: u64 = 6;
    let mut exporter = Exporter::start(&[]);
    let url = exporter.url("/webhook");
    let answered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (url, answered, stop) = (url.clone(), answered.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut accepted = Vec::new();
                let mut other = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let run = Run::new(5, 50 + t, 60, t * 1_000_000 + i);
                    let body: Value = run.started();
                    let payload = serde_json::to_vec(&body).expect("json");
                    let headers = li_headers("test.started", &fresh_id());
                    match try_send("POST", &url, &headers, Some(&payload)) {
                        Some(r) if r.status == 200 => {
                            assert_eq!(r.json(), json!({"result": "accepted"}));
                            accepted.push(run.id);
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(r) => other.push((r.status, r.body)),
                        // The listener is gone: the exporter stopped accepting.
                        None => break,
                    }
                }
                (accepted, other)
            })
        })
        .collect();

    common::wait_for("deliveries to flow", Duration::from_secs(20), || {
        (answered.load(Ordering::Relaxed) >= 60).then_some(())
    });
    let status = exporter.terminate();
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "SIGTERM exit status: {status}");

    let mut accepted = 0;
    for worker in workers {
        let (ok, other) = worker.join().expect("worker");
        accepted += ok.len();
        for (status, body) in other {
            assert_eq!(
                status, 503,
                "only a 503 (retry later) may refuse a valid delivery: {body}"
            );
        }
    }
    exporter.restart();
    let s = exporter.samples();
    let accepted = accepted as f64;
    assert_eq!(
        sample(&s, &events_total("test.started", "accepted")),
        accepted,
        "every delivery answered 200 is counted, and no other"
    );
    assert_eq!(sum_of(&s, "loadimpact_test_runs_started_total"), accepted);
    assert_eq!(sum_of(&s, "loadimpact_test_runs_running"), accepted);
    assert_eq!(sample(&s, &requests_total(200)), accepted);
}
