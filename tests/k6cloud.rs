//! Grafana Cloud k6 notifications against the real binary: the README's
//! template rendered by real Jinja2 and accepted; every event identifier
//! mapped to its outcome, with durations from the body's times; the span
//! with the body's times and the run's links, received by a real OTLP
//! receiver; one run across both formats; a mixed, duplicated, reordered
//! stream counted exactly; and every bad input answered with its code and
//! field while no run metric moves.

mod otlp_receiver;
mod support;

use otlp_receiver::spans::{pointed_at, trace_id};
use otlp_receiver::{attributes, Attr, Protocol, Receiver};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::deliveries::{expect_result, fresh_id, k6_headers, Run};
use support::exporter::{run_binary, Exporter};
use support::http::{send, Response};
use support::samples::*;
use support::tools::require_tool;

/// A Generic Template body (see `Run::k6`) with `times` as (started, ended).
fn k6_body(run: &Run, event: &str, status: i64, result: Option<u8>, times: (&str, Value)) -> Value {
    run.k6(event, status, result, times.0, times.1)
}

/// Posts `body` as k6 Cloud does (its headers unless `bare`), returning the answer.
fn post_k6(exporter: &Exporter, body: &Value, bare: bool) -> Response {
    let event = body["event"]["type"].as_str().unwrap_or("test.started");
    let headers = if bare {
        vec![("Content-Type".to_owned(), "application/json".to_owned())]
    } else {
        k6_headers(event, &fresh_id())
    };
    let payload = serde_json::to_vec(body).expect("json");
    send("POST", &exporter.url("/webhook"), &headers, Some(&payload))
}

fn post_k6_expect(exporter: &Exporter, body: &Value, result: &str) {
    let resp = post_k6(exporter, body, false);
    expect_result(&resp, result, body);
}

#[test]
fn the_readmes_template_rendered_by_jinja2_is_accepted() {
    let readme = support::files::read("README.md");
    let start = readme
        .find("<!-- k6cloud-template:start -->")
        .expect("template start marker");
    let end = readme
        .find("<!-- k6cloud-template:end -->")
        .expect("template end marker");
    let block = &readme[start..end];
    let template = block
        .split_once("```jinja\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(t, _)| t)
        .expect("a ```jinja block between the markers");
    let dir = tempfile::tempdir().expect("tempdir");
    let template_file = dir.path().join("template.j2");
    std::fs::write(&template_file, template).expect("write template");

    let exporter = Exporter::start(&[]);
    let name = "Checkout \"Black Friday\" – Ünïcødé ✓ \\ end";
    let render = |event: &str, started: &str, ended: Value, status: i64, result: Value| {
        let variables = json!({
            "event": {"id": format!("ev-{event}"), "type": event, "text": "Test run"},
            "test": {
                "organization_id": 11, "project_id": 4242, "id": 987_654, "url": "https://app.k6.io/runs/987654",
                "load_test_id": 5150, "load_test_url": "https://app.k6.io/tests/5150",
                "name": name, "was_scheduled": true, "started": started, "ended": ended,
                "status": status, "status_text": if status == 2 { "Running" } else { "Finished" },
                "result": result, "result_text": "Failed"
            },
            // A scheduled run may have no user: Jinja2 writes a bare None
            // as `None`, which only `tojson` turns into `null`.
            "user": {"id": if event.starts_with("test.started") { Value::Null } else { json!(77) }, "name": "Zoë"},
            "errors": [{"code": 1, "created": "2024-05-06T10:00:00Z", "detail": "a \"quoted\" error"}]
        });
        let vars_file = dir.path().join(format!("{event}.json"));
        std::fs::write(&vars_file, variables.to_string()).expect("write variables");
        let out = Command::new(require_tool("python3"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/render_template.py"))
            .arg(&template_file)
            .arg(&vars_file)
            .output()
            .expect("run python3 with Jinja2");
        assert!(
            out.status.success(),
            "Jinja2 failed (is it installed? `bash tests/run.sh` installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let started = render(
        "test.started.scheduled",
        "2024-05-06T10:00:00Z",
        Value::Null,
        2,
        Value::Null,
    );
    let finished = render(
        "test.finished.failed",
        "2024-05-06T10:00:00Z",
        json!("2024-05-06T10:01:30Z"),
        3,
        json!(1),
    );
    for (body, event) in [
        (&started, "test.started.scheduled"),
        (&finished, "test.finished.failed"),
    ] {
        let parsed: Value = serde_json::from_slice(body).expect("the template renders JSON");
        assert_eq!(
            parsed["test"]["name"],
            json!(name),
            "the name survives the template"
        );
        let resp = send(
            "POST",
            &exporter.url("/webhook"),
            &k6_headers(event, &fresh_id()),
            Some(body),
        );
        assert_eq!(
            (resp.status, resp.body.as_str()),
            (200, r#"{"result":"accepted"}"#)
        );
    }
    let run = Run::new(11, 4242, 5150, 987_654);
    let s = exporter.samples();
    assert_value(&s, &run.started_total_by("scheduled"), 1.0);
    assert_value(&s, &run.started_total(), 0.0);
    assert_value(&s, &run.finished_total("failed_threshold"), 1.0);
    assert_value(&s, &run.running(), 0.0);
    // 90 s as the body says, though both arrived within a second.
    assert_value(&s, &run.duration_sum("failed_threshold"), 90.0);
    let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
    let info = format!(
        "loadimpact_load_test_info{{organization_id=\"11\",project_id=\"4242\",load_test_id=\"5150\",name=\"{escaped}\"}}"
    );
    assert_value(&s, &info, 1.0);
}

#[test]
fn every_event_identifier_counts_its_outcome_with_the_bodys_duration() {
    let receiver = Receiver::start(Protocol::Grpc);
    let exporter = pointed_at(&receiver).start();
    let cases: [(&str, i64, Option<u8>, &str); 10] = [
        ("test.finished.finished", 3, Some(0), "finished"),
        ("test.finished.success", 3, Some(0), "finished"),
        ("test.finished.failed", 3, Some(1), "failed_threshold"),
        ("test.finished.timed_out", 4, None, "timed_out"),
        ("test.finished.aborted_user", 5, None, "aborted_by_user"),
        ("test.finished.aborted_system", 6, None, "aborted_by_system"),
        (
            "test.finished.aborted_script_error",
            7,
            None,
            "aborted_by_script_error",
        ),
        (
            "test.finished.aborted_threshold",
            8,
            None,
            "aborted_by_threshold",
        ),
        ("test.finished.aborted_limit", 9, None, "aborted_by_limit"),
        // The catch-all says nothing: the k6 table reads 9 as aborted by limit.
        ("test.finished.all", 9, None, "aborted_by_limit"),
    ];
    for (i, (event, status, result, outcome)) in cases.into_iter().enumerate() {
        let run = Run::new(3, 300 + i as u64, 30, 40_000 + i as u64);
        let before = exporter.samples();
        let start_event = if i % 2 == 0 {
            "test.started.manual"
        } else {
            "test.started"
        };
        post_k6_expect(
            &exporter,
            &k6_body(
                &run,
                start_event,
                2,
                None,
                ("2024-05-06T10:00:00Z", Value::Null),
            ),
            "accepted",
        );
        let seconds = 60 + i as u64;
        let ended = format!("2024-05-06T10:{:02}:{:02}Z", seconds / 60, seconds % 60);
        post_k6_expect(
            &exporter,
            &k6_body(
                &run,
                event,
                status,
                result,
                ("2024-05-06T10:00:00Z", json!(ended)),
            ),
            "accepted",
        );
        let after = exporter.samples();
        assert_eq!(
            delta(&before, &after, &run.finished_total(outcome)),
            1.0,
            "{event}"
        );
        // Started manually: by the identifier, or by `was_scheduled` 0.
        assert_eq!(
            delta(&before, &after, &run.started_total_by("manual")),
            1.0,
            "{event}"
        );
        assert_eq!(
            sample(&after, &run.duration_sum(outcome)),
            seconds as f64,
            "{event}: the duration is the body's"
        );
        // Its span: the body's times, the identifier's outcome.
        let spans = support::wait_for("the run's span", Duration::from_secs(20), || {
            let spans = receiver.spans_with_trace_id(&trace_id(run.id));
            (!spans.is_empty()).then_some(spans)
        });
        assert_eq!(spans.len(), 1, "{event}: {spans:#?}");
        let span = &spans[0].span;
        let start_ns = 1_714_989_600_000_000_000u64;
        assert_eq!(span.start_time_unix_nano, start_ns, "{event}");
        assert_eq!(
            span.end_time_unix_nano,
            start_ns + seconds * 1_000_000_000,
            "{event}"
        );
        let attrs = attributes(&span.attributes);
        assert_eq!(
            attrs.get("loadimpact.outcome"),
            Some(&Attr::Str(outcome.into())),
            "{event}"
        );
    }
}

#[test]
fn a_run_started_in_one_format_and_finished_in_the_other_is_one_run() {
    let exporter = Exporter::start(&[]);
    let a = Run::new(5, 50, 500, 5_000);
    exporter.post_expect(&a.started(), "accepted");
    post_k6_expect(
        &exporter,
        &k6_body(&a, "test.finished.aborted_user", 5, None, ("", Value::Null)),
        "accepted",
    );
    let b = Run::new(5, 50, 501, 5_001);
    post_k6_expect(
        &exporter,
        &k6_body(
            &b,
            "test.started",
            2,
            None,
            ("2024-05-06T10:00:00Z", Value::Null),
        ),
        "accepted",
    );
    exporter.post_expect(&b.finished(3, Some("Finished")), "accepted");
    // Repeats in the other format are duplicates of the same runs.
    post_k6_expect(
        &exporter,
        &k6_body(&a, "test.started", 2, None, ("", Value::Null)),
        "duplicate",
    );
    exporter.post_expect(&b.started(), "duplicate");
    let s = exporter.samples();
    // a by Load Impact (no trigger), b by k6 Cloud (`was_scheduled` 0).
    assert_value(&s, &a.started_total(), 1.0);
    assert_value(&s, &a.started_total_by("manual"), 1.0);
    assert_value(&s, &a.finished_total("aborted_by_user"), 1.0);
    assert_value(&s, &b.finished_total("finished"), 1.0);
    assert_value(&s, &a.running(), 0.0);
    // Without both times in the body, the duration is from receipt.
    assert_value(&s, &a.duration_count("aborted_by_user"), 1.0);
    assert!(sample(&s, &a.duration_sum("aborted_by_user")) < 5.0);
}

/// The run metrics of a scrape: what the runs produced, whatever the
/// format (the started runs summed over their triggers, which only k6
/// Cloud's format says).
fn run_counts(exporter: &Exporter) -> Vec<(String, f64)> {
    let mut counts = std::collections::BTreeMap::new();
    for (series, value) in exporter.samples() {
        let series = match series.split_once(",trigger=") {
            Some((head, _)) => format!("{head}}}"),
            None => series,
        };
        // Not the durations' count: a run observes one only when its start
        // arrived before its finish, and the simulator's concurrent posts of
        // a 30 ms run may arrive either way round under load.
        if series.starts_with("loadimpact_test_runs_")
            || series.starts_with("loadimpact_load_test_runs_finished_total")
        {
            *counts.entry(series).or_insert(0.0) += value;
        }
    }
    counts.into_iter().collect()
}

/// Started runs by trigger, over every project.
fn started_by_trigger(exporter: &Exporter) -> std::collections::BTreeMap<String, f64> {
    let mut by = std::collections::BTreeMap::new();
    for (labels, value) in labelled(&exporter.samples(), "loadimpact_test_runs_started_total") {
        *by.entry(labels["trigger"].clone()).or_insert(0.0) += value;
    }
    by
}

#[test]
fn a_mixed_stream_duplicated_and_reordered_counts_exactly() {
    let simulate = |exporter: &Exporter, format: &str| {
        let url = exporter.url("/webhook");
        let out = run_binary(&[
            "simulate",
            "--url",
            &url,
            "--projects",
            "3",
            "--runs",
            "12",
            "--seed",
            "21",
            "--duplicate-ratio",
            "0.4",
            "--concurrency",
            "16",
            "--interval",
            "2ms",
            "--run-duration",
            "30ms",
            "--format",
            format,
        ]);
        assert!(
            out.status.success(),
            "simulate --format {format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let legacy = Exporter::start(&[]);
    simulate(&legacy, "legacy");
    let mixed = Exporter::start(&[]);
    simulate(&mixed, "mixed");
    let k6 = Exporter::start(&[]);
    simulate(&k6, "k6cloud");
    let want = run_counts(&legacy);
    assert!(want.len() > 20, "{want:?}");
    assert_eq!(
        run_counts(&mixed),
        want,
        "mixed formats count as Load Impact's"
    );
    assert_eq!(
        run_counts(&k6),
        want,
        "k6 Cloud's format counts as Load Impact's"
    );
    // Only k6 Cloud says how a run was started; the simulator schedules some.
    let legacy_triggers = started_by_trigger(&legacy);
    let k6_triggers = started_by_trigger(&k6);
    assert_eq!(legacy_triggers["unknown"], 36.0, "{legacy_triggers:?}");
    assert_eq!(
        legacy_triggers["scheduled"] + legacy_triggers["manual"],
        0.0
    );
    assert_eq!(k6_triggers["unknown"], 0.0, "{k6_triggers:?}");
    assert!(k6_triggers["scheduled"] > 0.0 && k6_triggers["manual"] > 0.0);
    assert_eq!(k6_triggers["scheduled"] + k6_triggers["manual"], 36.0);
    // A duration for at most every finished run, whatever the format.
    for exporter in [&legacy, &mixed, &k6] {
        let s = exporter.samples();
        let durations = sum_of(&s, "loadimpact_test_run_duration_seconds_count");
        let finished = sum_of(&s, "loadimpact_test_runs_finished_total");
        assert!(
            durations > 0.0 && durations <= finished,
            "{durations} durations for {finished} finished runs"
        );
    }
    // Everything again, in the other mix: nothing moves.
    let durations = sum_of(
        &mixed.samples(),
        "loadimpact_test_run_duration_seconds_count",
    );
    simulate(&mixed, "k6cloud");
    simulate(&mixed, "legacy");
    assert_eq!(run_counts(&mixed), want, "replays changed a count");
    assert_eq!(
        sum_of(
            &mixed.samples(),
            "loadimpact_test_run_duration_seconds_count"
        ),
        durations,
        "replays observed a duration again"
    );
}

#[test]
fn every_bad_k6cloud_input_is_rejected_with_its_field_and_moves_nothing() {
    let exporter = Exporter::start(&[]);
    let run = Run::new(9, 90, 900, 9_000);
    let good = k6_body(
        &run,
        "test.finished.finished",
        3,
        Some(0),
        ("", Value::Null),
    );
    let mut cases: Vec<(String, Value, bool, u16, Option<&str>)> = Vec::new();
    for field in [
        "id",
        "load_test_id",
        "organization_id",
        "project_id",
        "status",
    ] {
        let path = format!("test.{field}");
        let mut missing = good.clone();
        missing["test"].as_object_mut().map(|o| o.remove(field));
        cases.push((format!("without {path}"), missing, false, 400, None));
        for bad in [json!("12"), json!(1.5), json!(true), json!({})] {
            let mut wrong = good.clone();
            wrong["test"][field] = bad.clone();
            cases.push((format!("{path}: {bad}"), wrong, false, 400, None));
        }
    }
    let named = [
        "test.id",
        "test.load_test_id",
        "test.organization_id",
        "test.project_id",
        "test.status",
    ];
    for (what, mutate, field) in [
        ("test not an object", json!({"test": 7}), "test"),
        ("user not an object", json!({"user": [1]}), "user"),
        ("user.id a string", json!({"user": {"id": "x"}}), "user.id"),
        (
            "test.name a number",
            json!({"test": {"name": 5}}),
            "test.name",
        ),
        ("event.id a number", json!({"event": {"id": 5}}), "event.id"),
    ] {
        let mut body = good.clone();
        for (key, value) in mutate.as_object().expect("object") {
            match (body[key].as_object_mut(), value.as_object()) {
                (Some(target), Some(fields)) => {
                    for (k, v) in fields {
                        target.insert(k.clone(), v.clone());
                    }
                }
                _ => body[key] = value.clone(),
            }
        }
        cases.push((what.into(), body, false, 400, Some(field)));
    }
    let mut no_event = good.clone();
    no_event.as_object_mut().map(|o| o.remove("event"));
    cases.push((
        "no event anywhere".into(),
        no_event,
        true,
        400,
        Some("event.type"),
    ));
    let mut unknown = good.clone();
    unknown["event"]["type"] = json!("test.exploded");
    cases.push((
        "an unknown event".into(),
        unknown,
        true,
        422,
        Some("event.type"),
    ));

    let before = exporter.samples();
    let mut failures = Vec::new();
    for (i, (what, body, bare, status, field)) in cases.iter().enumerate() {
        let resp = post_k6(&exporter, body, *bare);
        let answer = serde_json::from_str::<Value>(&resp.body).unwrap_or(Value::Null);
        let want_field = field.map(str::to_owned).or_else(|| {
            named
                .iter()
                .find(|n| what.contains(*n))
                .map(|n| (*n).to_owned())
        });
        if resp.status != *status || answer["field"] != json!(want_field) {
            failures.push(format!("{i} {what}: got {} {}", resp.status, resp.body));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let after = exporter.samples();
    for (series, (was, now)) in changes(&before, &after) {
        assert!(
            series.starts_with("loadimpact_webhook_requests_total") || is_per_process(&series),
            "a rejection moved {series}: {was:?} -> {now:?}"
        );
    }
    assert_eq!(
        delta(&before, &after, &requests_total(400)),
        (cases.len() - 1) as f64
    );
    assert_eq!(delta(&before, &after, &requests_total(422)), 1.0);
}

#[test]
fn the_span_has_the_bodys_times_and_the_runs_links() {
    let receiver = Receiver::start(Protocol::Grpc);
    let exporter = pointed_at(&receiver).start();
    let run = Run::new(12, 1200, 120, 777_001);
    let started = run.k6(
        "test.started.manual",
        2,
        None,
        "2024-05-06T10:00:00Z",
        Value::Null,
    );
    post_k6_expect(&exporter, &started, "accepted");
    let ended = json!("2024-05-06T10:01:30.500Z");
    let finished = run.k6(
        "test.finished.finished",
        3,
        Some(0),
        "2024-05-06T10:00:00Z",
        ended,
    );
    post_k6_expect(&exporter, &finished, "accepted");

    let spans = support::wait_for("the run's span", Duration::from_secs(20), || {
        let spans = receiver.spans_with_trace_id(&trace_id(run.id));
        (!spans.is_empty()).then_some(spans)
    });
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0].span;
    // 10:00:00 and 10:01:30.5 on 2024-05-06, as the body says, in ns.
    assert_eq!(span.start_time_unix_nano, 1_714_989_600_000 * 1_000_000);
    assert_eq!(span.end_time_unix_nano, 1_714_989_690_500 * 1_000_000);
    let attrs = attributes(&span.attributes);
    let url = format!("https://app.k6.io/runs/{}", run.id);
    assert_eq!(attrs.get("url.full"), Some(&Attr::Str(url.clone())));
    assert_eq!(
        attrs.get("loadimpact.load_test.url"),
        Some(&Attr::Str(format!(
            "https://app.k6.io/tests/{}",
            run.load_test
        )))
    );
    assert_eq!(
        attrs.get("loadimpact.outcome"),
        Some(&Attr::Str("finished".into()))
    );

    // The run's info series links to its page too.
    let info = labelled(&exporter.samples(), "loadimpact_test_run_info");
    let ours: Vec<_> = info
        .iter()
        .filter(|(labels, _)| labels.get("load_test_run_id") == Some(&run.id.to_string()))
        .collect();
    assert_eq!(ours.len(), 1, "{info:?}");
    assert_eq!(ours[0].0.get("url"), Some(&url));
    assert_eq!(
        ours[0].0.get("load_test_url"),
        Some(&format!("https://app.k6.io/tests/{}", run.load_test))
    );
}

#[test]
fn a_finishs_errors_are_counted_by_code_once() {
    let exporter = Exporter::start(&[]);
    let run = Run::new(13, 1300, 130, 888_001);
    let mut finished = run.k6(
        "test.finished.aborted_script_error",
        7,
        None,
        "",
        Value::Null,
    );
    finished["errors"] = json!([
        {"code": 1001, "created": "2024-05-06T10:00:05Z", "detail": "a \"quoted\" detail"},
        {"code": 1001, "created": "2024-05-06T10:00:06Z", "detail": "again"},
        {"code": 7, "created": null, "detail": null}
    ]);
    post_k6_expect(&exporter, &finished, "accepted");
    // A retry of the same notification (same event.id, new request id).
    post_k6_expect(&exporter, &finished, "duplicate");
    let s = exporter.samples();
    let errors = |code: &str| {
        run.series(
            "loadimpact_test_run_errors_total",
            &format!(",code=\"{code}\""),
        )
    };
    assert_value(&s, &errors("1001"), 2.0);
    assert_value(&s, &errors("7"), 1.0);
    assert_value(&s, &run.finished_total("aborted_by_script_error"), 1.0);
    // A malformed list is refused and counts nothing.
    let mut bad = run.k6("test.finished.finished", 3, Some(0), "", Value::Null);
    bad["errors"] = json!([{"code": "1001"}]);
    let resp = post_k6(&exporter, &bad, false);
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert_eq!(resp.json()["field"], json!("errors.code"));
    assert_only_moved(
        &s,
        &exporter.samples(),
        &[(&requests_total(400), 1.0)],
        "a refused errors list",
    );
}

#[test]
fn a_hostile_name_and_links_are_cleaned_everywhere_they_are_shown() {
    let receiver = Receiver::start(Protocol::Grpc);
    let exporter = pointed_at(&receiver).start();
    // Terminal escapes, a newline, a bidirectional override and 10,000
    // characters: what a made-up delivery may send.
    let hostile = format!("pay\u{1b}[31m\nment\u{202E}flow {}", "x".repeat(10_000));
    let run = Run::new(13, 1300, 130, 777_013).named(hostile);
    let mut started = run.k6(
        "test.started.manual",
        2,
        None,
        "2024-05-06T10:00:00Z",
        Value::Null,
    );
    started["test"]["url"] = json!("javascript:alert(document.cookie)");
    started["test"]["load_test_url"] = json!(format!("https://app.k6.io/{}", "a".repeat(5000)));
    post_k6_expect(&exporter, &started, "accepted");

    let shown = |name: &str| {
        assert!(name.starts_with("pay [31m ment flow x"), "{name:?}");
        assert!(!name.chars().any(char::is_control), "{name:?}");
        assert!(!name.contains('\u{202E}'), "{name:?}");
        assert_eq!(name.chars().count(), 200, "{name:?}");
        assert!(name.ends_with('…'), "{name:?}");
    };
    // The label of the load test's info series.
    let s = exporter.samples();
    let info = labelled(&s, "loadimpact_load_test_info");
    let ours: Vec<_> = info
        .iter()
        .filter(|(labels, _)| labels.get("load_test_id") == Some(&"130".to_owned()))
        .collect();
    assert_eq!(ours.len(), 1, "{info:?}");
    shown(ours[0].0.get("name").map_or("", String::as_str));
    // The runs API.
    let api = support::http::get(&exporter.url("/api/v1/runs")).json();
    let listed = support::exporter::api_run(&api, "running", run.id).expect("listed");
    shown(listed["name"].as_str().unwrap_or_default());

    let mut finished = run.k6(
        "test.finished.finished",
        3,
        Some(0),
        "2024-05-06T10:00:00Z",
        json!("2024-05-06T10:01:00Z"),
    );
    finished["test"]["url"] = started["test"]["url"].clone();
    finished["test"]["load_test_url"] = started["test"]["load_test_url"].clone();
    post_k6_expect(&exporter, &finished, "accepted");
    // The run's info series: no `javascript:` link, the long one cut.
    let runs = labelled(&exporter.samples(), "loadimpact_test_run_info");
    let ours: Vec<_> = runs
        .iter()
        .filter(|(labels, _)| labels.get("load_test_run_id") == Some(&run.id.to_string()))
        .collect();
    assert_eq!(ours.len(), 1, "{runs:?}");
    assert!(
        ours[0].0.get("url").is_none_or(String::is_empty),
        "{ours:?}"
    );
    let link = ours[0].0.get("load_test_url").cloned().unwrap_or_default();
    assert_eq!(link.chars().count(), 2048, "{link}");
    // The span.
    let spans = support::wait_for("the run's span", Duration::from_secs(20), || {
        let spans = receiver.spans_with_trace_id(&trace_id(run.id));
        (!spans.is_empty()).then_some(spans)
    });
    let attrs = attributes(&spans[0].span.attributes);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    match attrs.get("loadimpact.test.name") {
        Some(Attr::Str(name)) => shown(name),
        other => panic!("loadimpact.test.name is {other:?}"),
    }
    assert!(!attrs.contains_key("url.full"), "{attrs:?}");
}
