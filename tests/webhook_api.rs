//! The webhook over HTTP, on the real binary: every event, every status
//! code of both status tables, each outcome (by code and by `status_text`),
//! duplicates both ways, out of order, expiry, and every bad input, each
//! asserting the status code, the body and what the metrics did.
//!
//! Written from the specification, not from the exporter's code.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::deliveries::{self, expect_result, fresh_id, test_hook, Delivery, Run};
use support::exporter::{api_run, Exporter};
use support::http::{send, Response, NO_HEADERS};
use support::samples::*;
use support::{assert_duration_between, wait_for, Window};

// ---------------------------------------------------------------------------
// outcomes

/// The status codes the tests send, each with its outcome in Load Impact
/// 3.0's table (the default) and in Load Impact 4.0's (k6 Cloud); `None`
/// where the code is not sent under that table.
const STATUS_TABLES: &[(i64, Option<&str>, Option<&str>)] = &[
    (-3, None, Some("unknown")),
    (-2, Some("unknown"), Some("unknown")),
    (-1, Some("unknown"), Some("unknown")),
    (0, Some("unknown"), Some("unknown")),
    (1, Some("unknown"), Some("unknown")),
    (2, Some("unknown"), Some("unknown")),
    (3, Some("finished"), Some("finished")),
    (4, Some("timed_out"), Some("timed_out")),
    (5, Some("aborted_by_user"), Some("aborted_by_user")),
    (6, Some("aborted_by_user"), Some("aborted_by_system")),
    (
        7,
        Some("aborted_by_system"),
        Some("aborted_by_script_error"),
    ),
    (8, Some("aborted_by_system"), Some("aborted_by_threshold")),
    (9, Some("aborted_by_script_error"), Some("aborted_by_limit")),
    (10, Some("aborted_by_threshold"), Some("unknown")),
    (11, Some("aborted_by_threshold"), Some("unknown")),
    (12, Some("failed_threshold"), Some("unknown")),
    (13, Some("unknown"), None),
    (99, Some("unknown"), None),
    (1_000_000_000_000, Some("unknown"), None),
];

/// Which of `STATUS_TABLES` a test goes by.
#[derive(Clone, Copy)]
enum Table {
    V3,
    V4,
}

/// A finished run's `status_text` variant: absent, null, or a text no table
/// knows (all three must fall back to the code).
fn text_variant(i: usize) -> Option<Value> {
    match i % 3 {
        0 => None,
        1 => Some(Value::Null),
        _ => Some(json!("Some wording Load Impact has not used yet")),
    }
}

/// One run per entry, each in its own project; start and finish it, then check
/// from one scrape that it landed in exactly the expected outcome.
fn check_outcomes(exporter: &Exporter, cases: &[(i64, Option<Value>, &str)]) {
    let runs: Vec<Run> = (0..cases.len() as u64)
        .map(|i| Run::new(7, 100 + i, 200 + i, 300 + i))
        .collect();
    for (run, (code, text, _)) in runs.iter().zip(cases) {
        exporter.post_expect(&run.started(), "accepted");
        let mut finish = run.finished(*code, None);
        if let Some(text) = text {
            finish["status_text"] = text.clone();
        }
        exporter.post_expect(&finish, "accepted");
    }
    let s = exporter.samples();
    for (run, (code, text, outcome)) in runs.iter().zip(cases) {
        let what = format!("status {code} with status_text {text:?}");
        for o in OUTCOMES {
            let want = if o == *outcome { 1.0 } else { 0.0 };
            assert_eq!(
                s.get(&run.finished_total(o)),
                Some(&want),
                "{what}: `{}` (every outcome is exported for a known project)",
                run.finished_total(o)
            );
            assert_eq!(sample(&s, &run.duration_count(o)), want, "{what}: {o}");
        }
        assert_value(&s, &run.started_total(), 1.0);
        assert_value(&s, &run.running(), 0.0);
        assert_value(&s, &run.last_run_status(), *code as f64);
        let aborted = if outcome.starts_with("aborted_") {
            1.0
        } else {
            0.0
        };
        assert_value(&s, &run.abort_ratio(), aborted);
    }
    let n = cases.len() as f64;
    assert_value(&s, &events_total("test.started", "accepted"), n);
    assert_value(&s, &events_total("test.finished", "accepted"), n);
    assert_value(&s, &requests_total(200), 2.0 * n);
}

/// The cases of `table`, in ascending order of code: each code with the
/// `status_text` variant of its place, and the outcome it must give.
fn by_code(table: Table) -> Vec<(i64, Option<Value>, &'static str)> {
    STATUS_TABLES
        .iter()
        .filter_map(|(code, v3, v4)| {
            let outcome = match table {
                Table::V3 => v3,
                Table::V4 => v4,
            };
            outcome.map(|outcome| (*code, outcome))
        })
        .enumerate()
        .map(|(i, (code, outcome))| (code, text_variant(i), outcome))
        .collect()
}

#[test]
fn every_status_code_of_the_v3_table_is_the_default() {
    let exporter = Exporter::start(&[]);
    check_outcomes(&exporter, &by_code(Table::V3));
}

#[test]
fn every_status_code_of_the_v4_table_set_by_environment() {
    let exporter = Exporter::builder()
        .env("LOADIMPACT_EXPORTER_STATUS_TABLE", "v4")
        .start();
    let mut cases = by_code(Table::V4);
    // status_text still comes first whatever the table.
    cases.push((9, Some(json!("Timed out")), "timed_out"));
    cases.push((6, Some(json!("Aborting by user")), "aborted_by_user"));
    check_outcomes(&exporter, &cases);
}

#[test]
fn every_outcome_by_status_text_before_the_code() {
    let exporter = Exporter::start(&["--status-table=v3"]);
    let cases: Vec<(i64, Option<Value>, &str)> = [
        (3, "Finished", "finished"),
        (2, "finished", "finished"),
        (3, "Timed out", "timed_out"),
        (3, "TIMED OUT", "timed_out"),
        (3, "Aborted by user", "aborted_by_user"),
        (3, "Aborting by user", "aborted_by_user"),
        (12, "aborted By User", "aborted_by_user"),
        (3, "Aborted by system", "aborted_by_system"),
        (3, "aborting by system", "aborted_by_system"),
        (3, "Aborted by script error", "aborted_by_script_error"),
        (3, "Aborting by script error", "aborted_by_script_error"),
        (3, "Aborted by threshold", "aborted_by_threshold"),
        (3, "Aborting by threshold", "aborted_by_threshold"),
        (3, "Aborted by limit", "aborted_by_limit"),
        (3, "Aborting by limit", "aborted_by_limit"),
        (5, "Failed threshold", "failed_threshold"),
        (5, "FAILED THRESHOLD", "failed_threshold"),
        // Unknown or empty text: the code decides.
        (5, "Something else", "aborted_by_user"),
        (9, "", "aborted_by_script_error"),
        (77, "Whatever", "unknown"),
    ]
    .into_iter()
    .map(|(code, text, outcome)| (code, Some(json!(text)), outcome))
    .collect();
    check_outcomes(&exporter, &cases);
}

// ---------------------------------------------------------------------------
// events

/// `event` was counted once as accepted between `before` and `after`, and
/// its last-event timestamp is a time of `window`.
fn assert_accepted_once_within(before: &Samples, after: &Samples, event: &str, window: Window) {
    let accepted = delta(before, after, &events_total(event, "accepted"));
    assert_eq!(accepted, 1.0, "{event} accepted");
    let stamp = sample(after, &last_event_timestamp(event));
    assert!(window.contains(stamp), "{event}: {stamp} not in {window:?}");
}

/// Between `before` and `after` one Test Hook was accepted and nothing else
/// moved: one more 200, one more accepted `test.notification_channel`, and
/// its last-event timestamp.
fn assert_only_a_test_hook_moved(before: &Samples, after: &Samples, what: &str) {
    let stamp = last_event_timestamp("test.notification_channel");
    assert_only_moved(
        before,
        after,
        &[
            (&requests_total(200), 1.0),
            (&events_total("test.notification_channel", "accepted"), 1.0),
            (&stamp, delta(before, after, &stamp)),
        ],
        what,
    );
}

#[test]
fn every_event_through_a_run_lifecycle() {
    let exporter = Exporter::start(&[]);

    // The "Test Hook" button: the body is only the event.
    let hook = test_hook();
    let before = exporter.samples();
    let pressed = Window::around(|| exporter.post_id_expect(&hook, "hook-1", "accepted"));
    let after = exporter.samples();
    let stamp = sample(&after, &last_event_timestamp("test.notification_channel"));
    assert!(pressed.contains(stamp), "{stamp} not in {pressed:?}");
    assert_only_a_test_hook_moved(&before, &after, "test.notification_channel");
    // A second press of the button is a new delivery; a retry of the first is not.
    exporter.post_expect(&hook, "accepted");
    exporter.post_id_expect(&hook, "hook-1", "duplicate");

    // test.started
    let run = Run::new(1, 2, 3, 4);
    let before = exporter.samples();
    let start = Window::around(|| exporter.post_expect(&run.started(), "accepted"));
    let s = exporter.samples();
    assert_eq!(delta(&before, &s, &run.started_total()), 1.0);
    assert_value(&s, &run.running(), 1.0);
    assert_value(&s, &run.info(), 1.0);
    assert_accepted_once_within(&before, &s, "test.started", start);
    assert_eq!(run.durations_observed(&s), 0.0);
    for o in OUTCOMES {
        assert_eq!(sample(&s, &run.finished_total(o)), 0.0, "{o}");
    }
    assert!(
        !s.contains_key(&run.abort_ratio()),
        "no abort ratio while no run of the project finished"
    );
    let api = exporter.runs_api();
    let entry = api_run(&api, "running", 4).expect("the run is listed as running");
    assert!(entry["started_at"].as_f64().is_some(), "{entry}");
    assert!(api_run(&api, "recent", 4).is_none());

    // A deliberate run length, so the duration has something to measure.
    std::thread::sleep(Duration::from_millis(300));

    // test.finished
    let before = s;
    let finish =
        Window::around(|| exporter.post_expect(&run.finished(3, Some("Finished")), "accepted"));
    let s = exporter.samples();
    assert_value(&s, &run.running(), 0.0);
    assert_eq!(delta(&before, &s, &run.finished_total("finished")), 1.0);
    assert_eq!(delta(&before, &s, &run.started_total()), 0.0);
    assert_value(&s, &run.duration_count("finished"), 1.0);
    let duration = sample(&s, &run.duration_sum("finished"));
    assert_duration_between(duration, start, finish, "a run of 300 ms");
    let bucket = run.series(
        "loadimpact_test_run_duration_seconds_bucket",
        ",outcome=\"finished\",le=\"10\"",
    );
    assert_value(&s, &bucket, 1.0);
    assert_value(&s, &run.last_run_status(), 3.0);
    assert_value(&s, &run.abort_ratio(), 0.0);
    assert_accepted_once_within(&before, &s, "test.finished", finish);
    let api = exporter.runs_api();
    assert!(api_run(&api, "running", 4).is_none());
    let entry = api_run(&api, "recent", 4).expect("the run is listed as recent");
    assert_eq!(entry["outcome"], json!("finished"), "{entry}");
    let (started_at, finished_at) = (
        entry["started_at"].as_f64().expect("started_at"),
        entry["finished_at"].as_f64().expect("finished_at"),
    );
    assert!((entry["duration_seconds"].as_f64().expect("duration") - duration).abs() < 0.002);
    assert!(
        (finished_at - started_at - duration).abs() < 0.002,
        "{entry}"
    );

    // The load test is renamed: its info series follows, the old name goes.
    let renamed = Run::new(1, 2, 3, 5);
    let mut start = renamed.started();
    start["name"] = json!("Renamed test");
    exporter.post_expect(&start, "accepted");
    let s = exporter.samples();
    let info: Vec<_> = s
        .iter()
        .filter(|(k, _)| {
            k.starts_with("loadimpact_load_test_info{") && k.contains("load_test_id=\"3\"")
        })
        .collect();
    assert_eq!(
        info,
        vec![(
            &renamed.series(
                "loadimpact_load_test_info",
                ",load_test_id=\"3\",name=\"Renamed test\""
            ),
            &1.0
        )],
        "one info series per load test, with its latest name"
    );
    exporter.post_expect(&renamed.finished(3, None), "accepted");

    // Abort ratio: failed_threshold is not an abort.
    for (i, (code, text)) in [(6, "Aborted by user"), (12, "Failed threshold"), (8, "")]
        .into_iter()
        .enumerate()
    {
        let other = Run::new(1, 2, 3, 10 + i as u64);
        exporter.post_expect(&other.started(), "accepted");
        exporter.post_expect(&other.finished(code, Some(text)), "accepted");
    }
    let s = exporter.samples();
    assert_value(&s, &run.abort_ratio(), 0.4);
    assert_value(&s, &run.last_run_status(), 8.0);
    assert_value(&s, &run.started_total(), 5.0);
}

#[test]
fn optional_fields_may_be_missing_or_null_and_headers_are_lenient() {
    let exporter = Exporter::start(&[]);
    let url = exporter.url("/webhook");
    let run = Run::new(3, 4, 5, 6);
    let mut start = run.started();
    for field in ["status_text", "name", "user_id"] {
        start[field] = Value::Null;
    }
    exporter.post_expect(&start, "accepted");
    let mut finish = run.finished(3, None);
    for field in ["name", "user_id"] {
        finish.as_object_mut().expect("object").remove(field);
    }
    exporter.post_expect(&finish, "accepted");

    // No Content-Type, no X-LoadImpact-ID, no X-LoadImpact-Event, another
    // User-Agent, a JSON content type with parameters: all accepted.
    let variants: [&[(&str, &str)]; 5] = [
        &[
            ("User-Agent", "LoadImpactWebHook/1.0"),
            ("X-LoadImpact-ID", "{id}"),
        ],
        &[("Content-Type", "application/json")],
        &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("User-Agent", "curl/8.5.0"),
        ],
        &[
            ("Content-Type", "application/json"),
            ("User-Agent", "k6-cloud"),
            ("X-LoadImpact-ID", "{id}"),
        ],
        &[("Content-Type", "Application/JSON")],
    ];
    for (i, headers) in variants.iter().enumerate() {
        let run = Run::new(3, 4, 5, 100 + i as u64);
        for body in [run.started(), run.finished(4, None)] {
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.replace("{id}", &fresh_id())))
                .collect();
            let resp = send(
                "POST",
                &url,
                &headers,
                Some(&serde_json::to_vec(&body).expect("json")),
            );
            expect_result(&resp, "accepted", &body);
        }
    }
    // Fields Load Impact may add some day are no reason to refuse a delivery.
    let extra = Run::new(3, 4, 5, 200);
    let mut start = extra.started();
    start["started"] = json!("2020-01-01T00:00:00Z");
    start["test"] = json!({"id": 1, "tags": ["a", "b"]});
    exporter.post_expect(&start, "accepted");
    exporter.post_expect(&extra.finished(3, None), "accepted");
    // The Test Hook with run fields is still only the Test Hook.
    let before = exporter.samples();
    let mut hook = Run::new(8, 8, 8, 8).started();
    hook["event"] = json!("test.notification_channel");
    exporter.post_expect(&hook, "accepted");
    let after = exporter.samples();
    assert_only_a_test_hook_moved(&before, &after, "a Test Hook carrying run fields");

    // A query string (a token in the URL set in Load Impact) is still the webhook.
    let query = Run::new(3, 4, 5, 300);
    let resp = deliveries::post_fresh(&format!("{url}?token=s3cr%C3%A9t&x=1"), &query.started());
    expect_result(&resp, "accepted", &query.started());

    // Without an id, a repeat is still recognised by (run, event).
    let run = Run::new(3, 4, 5, 100);
    let resp = send(
        "POST",
        &url,
        NO_HEADERS,
        Some(&serde_json::to_vec(&run.finished(4, None)).expect("json")),
    );
    expect_result(&resp, "duplicate", &run.finished(4, None));

    let s = exporter.samples();
    assert_value(&s, &run.started_total(), 8.0);
    assert_value(&s, &run.finished_total("finished"), 2.0);
    assert_value(&s, &run.finished_total("timed_out"), 5.0);
    assert_value(&s, &run.running(), 1.0);
    assert_value(&s, &requests_total(200), 17.0);
}

// ---------------------------------------------------------------------------
// duplicates, order, expiry

#[test]
fn duplicates_by_id_and_by_run_and_event_change_nothing_else() {
    let exporter = Exporter::start(&[]);
    let run = Run::new(1, 1, 1, 1);
    exporter.post_id_expect(&run.started(), "id-start", "accepted");

    let dup = |body: &Value, id: &str, what: &str| {
        let event = body["event"].as_str().expect("event").to_owned();
        let before = exporter.samples();
        exporter.post_id_expect(body, id, "duplicate");
        let after = exporter.samples();
        assert_only_moved(
            &before,
            &after,
            &[
                (&requests_total(200), 1.0),
                (&events_total(&event, "duplicate"), 1.0),
            ],
            what,
        );
    };
    dup(&run.started(), "id-start", "the same start, same id");
    dup(&run.started(), "id-start-again", "the same start, new id");
    // A repeated id is a retry, whatever the body now says.
    dup(
        &run.finished(3, None),
        "id-start",
        "a finish reusing the start's id",
    );
    let other = Run::new(1, 1, 1, 2);
    dup(&other.started(), "id-start", "another run reusing the id");

    exporter.post_id_expect(&run.finished(3, None), "id-finish", "accepted");
    dup(
        &run.finished(3, None),
        "id-finish",
        "the same finish, same id",
    );
    dup(
        &run.finished(6, Some("Aborted by user")),
        "id-finish-2",
        "a second finish with another outcome, new id",
    );
    dup(
        &run.started(),
        "id-start-3",
        "a start after the finish, new id",
    );

    let s = exporter.samples();
    assert_value(&s, &run.started_total(), 1.0);
    assert_value(&s, &run.finished_total("finished"), 1.0);
    assert_value(&s, &run.finished_total("aborted_by_user"), 0.0);
    assert_value(&s, &run.last_run_status(), 3.0);
    assert_value(&s, &run.duration_count("finished"), 1.0);
    assert_value(&s, &events_total("test.started", "duplicate"), 4.0);
    assert_value(&s, &events_total("test.finished", "duplicate"), 3.0);
}

#[test]
fn a_finish_before_its_start_counts_once_and_never_runs() {
    let exporter = Exporter::start(&[]);
    let run = Run::new(5, 6, 7, 8);

    let before = exporter.samples();
    exporter.post_expect(&run.finished(5, None), "accepted");
    let s = exporter.samples();
    assert_eq!(
        delta(&before, &s, &run.finished_total("aborted_by_user")),
        1.0
    );
    assert_eq!(sample(&s, &run.running()), 0.0);
    assert_eq!(sample(&s, &run.started_total()), 0.0);
    assert_eq!(run.durations_observed(&s), 0.0, "no start, no duration");
    assert_value(&s, &run.last_run_status(), 5.0);

    // The late start: ignored for running, counted once in started_total.
    let before = s;
    exporter.post_expect(&run.started(), "ignored");
    let s = exporter.samples();
    assert_value(&s, &run.started_total(), 1.0);
    assert_eq!(sample(&s, &run.running()), 0.0);
    assert_eq!(run.durations_observed(&s), 0.0);
    assert_eq!(
        delta(&before, &s, &events_total("test.started", "ignored")),
        1.0
    );
    assert_eq!(
        delta(&before, &s, &events_total("test.started", "accepted")),
        0.0
    );
    for o in OUTCOMES {
        assert_eq!(delta(&before, &s, &run.finished_total(o)), 0.0, "{o}");
    }

    // And it starts at most once.
    let before = s;
    exporter.post_expect(&run.started(), "duplicate");
    let s = exporter.samples();
    assert_only_moved(
        &before,
        &s,
        &[
            (&requests_total(200), 1.0),
            (&events_total("test.started", "duplicate"), 1.0),
        ],
        "a second late start",
    );

    let api = exporter.runs_api();
    assert!(api_run(&api, "running", 8).is_none(), "{api}");
    let entry = api_run(&api, "recent", 8).expect("listed as recent");
    assert_eq!(entry["outcome"], json!("aborted_by_user"));
    assert_eq!(entry["duration_seconds"], Value::Null, "{entry}");
}

#[test]
fn a_run_without_finish_expires_after_max_duration() {
    let exporter = Exporter::start(&["--run.max-duration=2s"]);
    let run = Run::new(9, 9, 9, 1);
    let quick = Run::new(9, 9, 9, 2);
    let started = Instant::now();
    exporter.post_expect(&run.started(), "accepted");
    exporter.post_expect(&quick.started(), "accepted");
    exporter.post_expect(&quick.finished(3, None), "accepted");
    let s = exporter.samples();
    assert_value(&s, &run.running(), 1.0);
    assert_value(&s, &run.expired_total(), 0.0);

    let s = wait_for("the run to expire", Duration::from_secs(10), || {
        let s = exporter.samples();
        (sample(&s, &run.expired_total()) == 1.0).then_some(s)
    });
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "expired after {:?}, before --run.max-duration",
        started.elapsed()
    );
    assert_value(&s, &run.running(), 0.0);
    assert_value(&s, &run.started_total(), 2.0);
    assert_value(&s, &run.finished_total("finished"), 1.0);
    for o in OUTCOMES.iter().filter(|o| **o != "finished") {
        assert_value(&s, &run.finished_total(o), 0.0);
    }
    assert!(api_run(&exporter.runs_api(), "running", 1).is_none());

    // A finish that still comes is counted with its duration (README, "What
    // exactly is counted") and does not bring the run back.
    let before = s;
    exporter.post_expect(&run.finished(4, None), "accepted");
    let elapsed = started.elapsed().as_secs_f64();
    let s = exporter.samples();
    assert_value(&s, &run.running(), 0.0);
    assert_value(&s, &run.expired_total(), 1.0);
    assert_eq!(delta(&before, &s, &run.finished_total("timed_out")), 1.0);
    assert_eq!(delta(&before, &s, &run.duration_count("timed_out")), 1.0);
    let duration = delta(&before, &s, &run.duration_sum("timed_out"));
    assert!(
        duration >= 2.0 && duration <= elapsed + 0.01,
        "duration {duration}, {elapsed} s since the start was sent"
    );
    exporter.post_expect(&run.finished(4, None), "duplicate");
}

#[test]
fn windows_and_ttls_let_series_and_ids_go() {
    let exporter = Exporter::start(&[
        "--abort-ratio.window=2s",
        "--series.ttl=3s",
        "--dedup.ttl=2s",
    ]);
    let run = Run::new(4, 4, 4, 4);
    exporter.post_expect(&run.started(), "accepted");
    exporter.post_expect(&run.finished(6, None), "accepted");
    let hook = test_hook();
    exporter.post_id_expect(&hook, "hook-id", "accepted");
    let running = Run::new(4, 4, 5, 5);
    exporter.post_id_expect(&running.started(), "running-start", "accepted");
    let s = exporter.samples();
    assert_value(&s, &run.abort_ratio(), 1.0);
    assert_value(&s, &run.info(), 1.0);
    assert_value(&s, &run.last_run_status(), 6.0);

    wait_for("the abort ratio to leave", Duration::from_secs(10), || {
        (!exporter.samples().contains_key(&run.abort_ratio())).then_some(())
    });
    wait_for(
        "the load test's series to go",
        Duration::from_secs(10),
        || {
            let s = exporter.samples();
            (!s.contains_key(&run.info()) && !s.contains_key(&run.last_run_status())).then_some(())
        },
    );
    // Counters stay.
    let s = exporter.samples();
    assert_value(&s, &run.finished_total("aborted_by_user"), 1.0);
    // The id is forgotten after --dedup.ttl: the same id is a new delivery.
    wait_for("the id to be forgotten", Duration::from_secs(10), || {
        let resp = exporter.post_id(&hook, "hook-id");
        assert_eq!(resp.status, 200, "{}", resp.body);
        (resp.json() == json!({"result": "accepted"})).then_some(())
    });
    // A run still running is remembered whatever --dedup.ttl says: its start,
    // under the old id or a new one, is still a duplicate.
    exporter.post_id_expect(&running.started(), "running-start", "duplicate");
    exporter.post_expect(&running.started(), "duplicate");
    let s = exporter.samples();
    assert_value(&s, &running.started_total(), 2.0);
    assert_value(&s, &running.running(), 1.0);
    // What is past its retention also leaves the store's file, a tick later,
    // and the exporter counts it.
    let pruned = |kind: &str| format!("loadimpact_exporter_store_pruned_total{{kind=\"{kind}\"}}");
    wait_for(
        "the store to delete the stale entries",
        Duration::from_secs(10),
        || {
            let s = exporter.samples();
            (sample(&s, &pruned("request_ids")) >= 3.0 && sample(&s, &pruned("runs")) >= 1.0)
                .then_some(())
        },
    );
    assert!(sample(&exporter.samples(), "loadimpact_exporter_store_size_bytes") > 0.0);
}

// ---------------------------------------------------------------------------
// bad input

/// One bad request and what it must get.
struct Bad {
    what: String,
    method: &'static str,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    status: u16,
    field: Option<&'static str>,
}

impl Bad {
    fn post(
        what: impl Into<String>,
        body: &Value,
        status: u16,
        field: Option<&'static str>,
    ) -> Bad {
        let event = body["event"].as_str().unwrap_or_default();
        Bad {
            what: what.into(),
            method: "POST",
            headers: deliveries::headers(event, &fresh_id()),
            body: Some(serde_json::to_vec(body).expect("json")),
            status,
            field,
        }
    }

    fn raw(what: &str, headers: Vec<(String, String)>, body: &[u8], status: u16) -> Bad {
        Bad {
            what: what.into(),
            method: "POST",
            headers,
            body: Some(body.to_vec()),
            status,
            field: None,
        }
    }
}

const REQUIRED_INTEGERS: [&str; 4] = [
    "load_test_run_id",
    "load_test_id",
    "organization_id",
    "project_id",
];

/// Missing and wrongly typed fields of a run event.
fn field_cases(valid: &Value) -> Vec<Bad> {
    let event = valid["event"].as_str().expect("event").to_owned();
    let mut out = Vec::new();
    let with = |field: &'static str, value: Option<Value>| {
        let mut body = valid.clone();
        match value {
            Some(v) => body[field] = v,
            None => {
                body.as_object_mut().expect("object").remove(field);
            }
        }
        body
    };
    for field in REQUIRED_INTEGERS.into_iter().chain(["status"]) {
        out.push(Bad::post(
            format!("{event} without {field}"),
            &with(field, None),
            400,
            Some(field),
        ));
        let mut wrong = vec![json!(null), json!("12"), json!(1.5), json!(true), json!({})];
        if field != "status" {
            wrong.push(json!(-1));
        }
        for value in wrong {
            out.push(Bad::post(
                format!("{event} with {field}: {value}"),
                &with(field, Some(value)),
                400,
                Some(field),
            ));
        }
        // Numbers that JSON can write but the field cannot hold.
        let too_big = if field == "status" {
            "9223372036854775808"
        } else {
            "18446744073709551616"
        };
        for number in ["1e400", "-1e400", too_big] {
            let mut bad = Bad::post(
                format!("{event} with {field}: {number}"),
                &with(field, Some(json!(0))),
                400,
                Some(field),
            );
            let text = String::from_utf8(bad.body.take().expect("body")).expect("utf-8");
            let text = text.replace(&format!("\"{field}\":0"), &format!("\"{field}\":{number}"));
            assert!(text.contains(number), "{text}");
            bad.body = Some(text.into_bytes());
            out.push(bad);
        }
    }
    for (field, value) in [
        ("status_text", json!(3)),
        ("name", json!(7)),
        ("name", json!(["a"])),
        ("user_id", json!("someone")),
        ("user_id", json!(2.5)),
    ] {
        out.push(Bad::post(
            format!("{event} with {field}: {value}"),
            &with(field, Some(value)),
            400,
            Some(field),
        ));
    }
    out
}

fn bad_inputs(running: &Run, new: &Run) -> Vec<Bad> {
    let start = new.started();
    let finish = running.finished(3, None);
    let mut cases = field_cases(&start);
    cases.extend(field_cases(&finish));

    let json_headers = deliveries::headers("test.started", "raw");
    for (what, body) in [
        (
            "truncated JSON",
            &br#"{"event": "test.started", "status": 2"#[..],
        ),
        ("not JSON", b"event=test.started"),
        ("an empty body", b""),
        ("trailing garbage", br#"{"event": "test.started"} x"#),
        ("a JSON array", b"[1, 2, 3]"),
        ("a JSON string", br#""test.started""#),
        ("JSON null", b"null"),
    ] {
        cases.push(Bad::raw(what, json_headers.clone(), body, 400));
    }
    let mut invalid_utf8 = serde_json::to_vec(&start).expect("json");
    let at = invalid_utf8.len() - 1;
    invalid_utf8.splice(at..at, *b",\"x\":\"\xff\xfe\"");
    cases.push(Bad::raw(
        "invalid UTF-8",
        json_headers.clone(),
        &invalid_utf8,
        400,
    ));
    let deep = "[".repeat(20_000) + &"]".repeat(20_000);
    cases.push(Bad::raw(
        "20000 nested arrays",
        json_headers.clone(),
        deep.as_bytes(),
        400,
    ));
    let mut deep_field = serde_json::to_vec(&start).expect("json");
    deep_field.pop();
    deep_field.extend(format!(",\"extra\":{deep}}}").bytes());
    cases.push(Bad::raw(
        "20000 nested arrays in an extra field",
        json_headers.clone(),
        &deep_field,
        400,
    ));

    // The event itself.
    let mut no_event = start.clone();
    no_event.as_object_mut().expect("object").remove("event");
    cases.push(Bad::post("no event at all", &no_event, 400, Some("event")));
    let mut number_event = start.clone();
    number_event["event"] = json!(5);
    cases.push(Bad::post(
        "a numeric event",
        &number_event,
        400,
        Some("event"),
    ));
    for (header, body) in [
        ("test.finished", &start),
        ("test.notification_channel", &start),
        ("test.started", &finish),
        ("test.started", &test_hook()),
    ] {
        cases.push(Bad {
            what: format!("header {header} contradicting body {}", body["event"]),
            method: "POST",
            headers: deliveries::headers(header, &fresh_id()),
            body: Some(serde_json::to_vec(body).expect("json")),
            status: 400,
            field: None,
        });
    }
    // A header given twice with two values: which one counts would be a guess.
    for (name, other) in [
        ("X-LoadImpact-Event", "test.finished"),
        ("X-LoadImpact-ID", "another-id"),
    ] {
        let mut headers = deliveries::headers("test.started", &fresh_id());
        headers.push((name.to_owned(), other.to_owned()));
        cases.push(Bad {
            what: format!("header {name} given twice with two values"),
            method: "POST",
            headers,
            body: Some(serde_json::to_vec(&start).expect("json")),
            status: 400,
            field: None,
        });
    }
    for name in ["test.deleted", "test.created", "test"] {
        let mut body = start.clone();
        body["event"] = json!(name);
        cases.push(Bad::post(
            format!("unknown event {name}"),
            &body,
            422,
            Some("event"),
        ));
    }

    // Methods.
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        cases.push(Bad {
            what: format!("{method} on the webhook path"),
            method,
            headers: deliveries::headers("test.started", &fresh_id()),
            body: (method != "GET" && method != "DELETE")
                .then(|| serde_json::to_vec(&start).expect("json")),
            status: 405,
            field: None,
        });
    }

    // Content types (with an otherwise valid body).
    let payload = serde_json::to_vec(&start).expect("json");
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "multipart/form-data; boundary=x",
    ] {
        let mut headers = deliveries::headers("test.started", &fresh_id());
        headers[0].1 = content_type.into();
        cases.push(Bad::raw(
            &format!("content type {content_type}"),
            headers,
            &payload,
            415,
        ));
    }

    // One byte over the default limit (65536), otherwise valid.
    cases.push(Bad::raw(
        "a body of 65537 bytes",
        deliveries::headers("test.started", &fresh_id()),
        &padded(&start, 65_537),
        413,
    ));
    cases
}

/// `body` serialized and padded with trailing whitespace to exactly `len` bytes.
fn padded(body: &Value, len: usize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(body).expect("json");
    assert!(bytes.len() <= len);
    bytes.resize(len, b' ');
    bytes
}

#[test]
fn every_bad_input_is_rejected_and_moves_nothing() {
    let exporter = Exporter::start(&[]);
    let url = exporter.url("/webhook");
    // Some state that a wrongly accepted request would move.
    let running = Run::new(1, 2, 3, 50);
    let new = Run::new(1, 2, 3, 51);
    exporter.post_expect(&running.started(), "accepted");
    exporter.post_expect(&test_hook(), "accepted");

    let cases = bad_inputs(&running, &new);
    let mut failures = Vec::new();
    for case in &cases {
        let before = exporter.samples();
        let resp = send(case.method, &url, &case.headers, case.body.as_deref());
        let after = exporter.samples();
        if let Err(e) = check_rejection(case, &resp, &before, &after) {
            failures.push(format!("{}: {e}", case.what));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not handled as specified:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Exactly at the limit is fine.
    let resp = send(
        "POST",
        &url,
        &deliveries::headers("test.started", &fresh_id()),
        Some(&padded(&new.started(), 65_536)),
    );
    expect_result(&resp, "accepted", &new.started());
    let s = exporter.samples();
    assert_value(&s, &new.started_total(), 2.0);
    assert_value(&s, &new.running(), 2.0);
}

/// What a rejection must look like: the status, a JSON error naming the field,
/// and no series moved but `loadimpact_webhook_requests_total{code}`.
fn check_rejection(
    case: &Bad,
    resp: &Response,
    before: &Samples,
    after: &Samples,
) -> Result<(), String> {
    if resp.status != case.status {
        return Err(format!(
            "expected {}, got {} {:?}",
            case.status, resp.status, resp.body
        ));
    }
    let body: Value = serde_json::from_str(&resp.body)
        .map_err(|e| format!("error body is not JSON ({e}): {:?}", resp.body))?;
    if !resp
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
    {
        return Err(format!("content type {:?}", resp.header("content-type")));
    }
    if body["result"] != json!("rejected") {
        return Err(format!("result is not \"rejected\": {body}"));
    }
    let error = body["error"].as_str().unwrap_or_default();
    if error.is_empty() {
        return Err(format!("no error message: {body}"));
    }
    if let Some(field) = case.field {
        if body["field"] != json!(field) || !error.contains(field) {
            return Err(format!("the error does not name `{field}`: {body}"));
        }
    }
    if case.status == 405 && !resp.header("allow").is_some_and(|a| a.contains("POST")) {
        return Err(format!("405 without Allow: POST ({:?})", resp.headers));
    }
    let moved = changes(before, after);
    let counted = requests_total(case.status);
    let only_counted = moved.len() == 1
        && moved
            .get(&counted)
            .is_some_and(|(b, a)| a.unwrap_or(0.0) - b.unwrap_or(0.0) == 1.0);
    if !only_counted {
        return Err(format!("expected only `{counted}` +1, moved: {moved:?}"));
    }
    Ok(())
}

#[test]
fn an_oversized_chunked_body_is_rejected_too() {
    use std::io::{Read, Write};
    let exporter = Exporter::start(&[]);
    let before = exporter.samples();
    let body = padded(&Run::new(1, 1, 1, 1).started(), 70_000);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", exporter.port())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut request = b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
        X-LoadImpact-Event: test.started\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for chunk in body.chunks(4096) {
        request.extend(format!("{:x}\r\n", chunk.len()).bytes());
        request.extend(chunk);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    // The server may answer and close before reading it all.
    let _ = stream.write_all(&request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "expected 413, got {answer:?}"
    );
    let after = exporter.samples();
    assert_only_moved(
        &before,
        &after,
        &[(&requests_total(413), 1.0)],
        "chunked 413",
    );
}

// ---------------------------------------------------------------------------
// concurrency and extremes

/// Posts every (body, id) at once, one thread each; the answers' results, sorted.
fn post_at_once(url: &str, batch: Vec<(Value, String)>) -> Vec<String> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(batch.len()));
    let threads: Vec<_> = batch
        .into_iter()
        .map(|(body, id)| {
            let (url, barrier) = (url.to_owned(), barrier.clone());
            std::thread::spawn(move || {
                let delivery = Delivery::new(&body, &id);
                barrier.wait();
                let resp = delivery.send(&url);
                assert_eq!(resp.status, 200, "{}", resp.body);
                resp.json()["result"].as_str().expect("result").to_owned()
            })
        })
        .collect();
    let mut results: Vec<String> = threads
        .into_iter()
        .map(|t| t.join().expect("poster"))
        .collect();
    results.sort();
    results
}

/// `copies` copies of `body`, each with its own id, or all with `id`.
fn copies(body: &Value, copies: usize, id: Option<&str>) -> Vec<(Value, String)> {
    (0..copies)
        .map(|_| (body.clone(), id.map_or_else(fresh_id, str::to_owned)))
        .collect()
}

#[test]
fn concurrent_copies_of_a_delivery_count_once() {
    let exporter = Exporter::start(&[]);
    let url = exporter.url("/webhook");
    let once = |results: Vec<String>, what: &str| {
        let mut expected = vec!["duplicate".to_owned(); results.len() - 1];
        expected.insert(0, "accepted".to_owned());
        assert_eq!(results, expected, "{what}");
    };
    let run = Run::new(2, 2, 2, 1);
    once(
        post_at_once(&url, copies(&run.started(), 8, None)),
        "8 starts, 8 ids",
    );
    once(
        post_at_once(&url, copies(&run.finished(4, None), 8, None)),
        "8 finishes, 8 ids",
    );
    let other = Run::new(2, 2, 2, 2);
    once(
        post_at_once(&url, copies(&other.started(), 8, Some("same-id"))),
        "8 starts, one id",
    );

    // A start and its finish racing: either order is fine, but consistently.
    let racing = Run::new(2, 3, 2, 3);
    let (start, finish) = (racing.started(), racing.finished(3, None));
    let start = std::thread::spawn({
        let url = url.clone();
        move || deliveries::post_fresh(&url, &start).json()["result"].clone()
    });
    let finished = deliveries::post_fresh(&url, &finish);
    let start = start.join().expect("start");
    assert_eq!(finished.json(), json!({"result": "accepted"}));

    let s = exporter.samples();
    assert_value(&s, &run.started_total(), 2.0);
    assert_value(&s, &run.running(), 1.0);
    assert_value(&s, &run.finished_total("timed_out"), 1.0);
    assert_value(&s, &run.duration_count("timed_out"), 1.0);
    assert_value(&s, &events_total("test.started", "duplicate"), 14.0);
    assert_value(&s, &events_total("test.finished", "duplicate"), 7.0);
    assert_value(&s, &racing.started_total(), 1.0);
    assert_value(&s, &racing.running(), 0.0);
    assert_value(&s, &racing.finished_total("finished"), 1.0);
    let observed = if start == json!("accepted") {
        1.0
    } else {
        assert_eq!(start, json!("ignored"));
        0.0
    };
    assert_eq!(racing.durations_observed(&s), observed, "start was {start}");
}

#[test]
fn ids_are_kept_exactly_from_zero_to_u64_max() {
    let exporter = Exporter::start(&[]);
    let big = Run::new(
        u64::MAX,
        9_007_199_254_740_993,
        u64::MAX - 1,
        12_345_678_901_234_567_891,
    );
    let zero = Run::new(0, 0, 0, 0);
    for run in [&big, &zero] {
        exporter.post_expect(&run.started(), "accepted");
        exporter.post_expect(&run.finished(3, None), "accepted");
    }
    let s = exporter.samples();
    for run in [&big, &zero] {
        assert_value(&s, &run.started_total(), 1.0);
        assert_value(&s, &run.finished_total("finished"), 1.0);
        assert_value(&s, &run.info(), 1.0);
        assert_value(&s, &run.last_run_status(), 3.0);
        let api = exporter.runs_api();
        let entry = api_run(&api, "recent", run.id).expect("listed with its exact id");
        assert_eq!(entry["organization_id"], json!(run.org));
        assert_eq!(entry["project_id"], json!(run.project));
        assert_eq!(entry["load_test_id"], json!(run.load_test));
    }
}

#[test]
fn concurrent_deliveries_share_commits() {
    let exporter = Exporter::start(&[]);
    let url = exporter.url("/webhook");
    let commits = "loadimpact_exporter_store_commits_total";
    let before = exporter.samples();
    // 64 different runs at once.
    let batch = (0..64)
        .map(|i| (Run::new(1, 1, 1, i).started(), fresh_id()))
        .collect();
    assert_eq!(post_at_once(&url, batch), vec!["accepted"; 64]);
    let after = exporter.samples();
    assert_value(&after, &Run::new(1, 1, 1, 0).started_total(), 64.0);
    let made = delta(&before, &after, commits);
    assert!(
        (1.0..64.0).contains(&made),
        "64 concurrent deliveries took {made} commits: no group commit"
    );
}
