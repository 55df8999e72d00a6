//! What Prometheus and people see: `promtool check metrics` on a real scrape
//! holding data of every kind, the metric families and histogram buckets, the
//! landing page, health and readiness, `/api/v1/runs`, the configurable paths
//! and body limit, and the log lines.
//!
//! Written from the specification, not from the exporter's code.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::deliveries::{self, expect_result, test_hook, Run};
use support::exporter::{api_run, run_binary, Exporter};
use support::http::{get, send, NO_HEADERS};
use support::samples::*;
use support::tools::{describe, require_tool, run_with_input};
use support::{wait_for, Window};

/// A load test name that needs escaping in a label value (and a newline,
/// which the parser turns into a space before anything shows it).
const AWKWARD_NAME: &str = "Checkout \"peak\" C:\\runs\nline two ünïcödé €";

/// The same name as the exposition format writes it.
const AWKWARD_NAME_ESCAPED: &str = "Checkout \\\"peak\\\" C:\\\\runs line two ünïcödé €";

const FAMILIES: [(&str, &str); 12] = [
    ("loadimpact_webhook_requests_total", "counter"),
    ("loadimpact_webhook_events_total", "counter"),
    ("loadimpact_test_runs_started_total", "counter"),
    ("loadimpact_test_runs_finished_total", "counter"),
    ("loadimpact_test_runs_running", "gauge"),
    ("loadimpact_test_run_duration_seconds", "histogram"),
    ("loadimpact_project_abort_ratio", "gauge"),
    ("loadimpact_load_test_last_run_status", "gauge"),
    ("loadimpact_load_test_info", "gauge"),
    ("loadimpact_test_runs_expired_total", "counter"),
    ("loadimpact_webhook_last_event_timestamp_seconds", "gauge"),
    ("loadimpact_exporter_build_info", "gauge"),
];

fn promtool_check(text: &str) -> std::process::Output {
    run_with_input(
        &require_tool("promtool"),
        &["check", "metrics"],
        text.as_bytes(),
    )
}

#[test]
fn promtool_accepts_a_scrape_with_data_of_every_kind() {
    let exporter = Exporter::start(&["--run.max-duration=2s"]);
    let doomed = Run::new(1, 1, 1, 1);
    exporter.post_expect(&doomed.started(), "accepted");
    // Every outcome, one project per organization to have several series.
    let texts = [
        "Finished",
        "Timed out",
        "Aborting by user",
        "Aborted by system",
        "Aborted by script error",
        "Aborted by threshold",
        "Aborted by limit",
        "Failed threshold",
        "Lost in space",
    ];
    for (i, text) in texts.iter().enumerate() {
        let run = Run::new(1 + i as u64 % 2, 2, 3 + i as u64, 100 + i as u64);
        exporter.post_expect(&run.started(), "accepted");
        exporter.post_expect(&run.finished(77, Some(text)), "accepted");
    }
    let awkward_run = Run::new(1, 2, 99, 200);
    let mut awkward = awkward_run.started();
    awkward["name"] = json!(AWKWARD_NAME);
    exporter.post_expect(&awkward, "accepted");
    let late = Run::new(2, 2, 50, 300);
    exporter.post_expect(&late.finished(3, None), "accepted");
    exporter.post_expect(&late.started(), "ignored");
    exporter.post_expect(&late.started(), "duplicate");
    exporter.post_expect(&test_hook(), "accepted");
    let url = exporter.url("/webhook");
    assert_eq!(send("GET", &url, NO_HEADERS, None).status, 405);
    assert_eq!(
        deliveries::post_fresh(&url, &json!({"event": "test.nope"})).status,
        422
    );
    assert_eq!(
        deliveries::post_fresh(&url, &json!({"event": "test.started"})).status,
        400
    );

    // The awkward run never finishes either: both must have expired before
    // the one run below is the only one running in its project.
    wait_for(
        "the unfinished runs to expire",
        Duration::from_secs(10),
        || {
            let s = exporter.samples();
            (sample(&s, &doomed.expired_total()) == 1.0
                && sample(&s, &awkward_run.expired_total()) == 1.0)
                .then_some(())
        },
    );
    let running = Run::new(1, 2, 3, 400);
    exporter.post_expect(&running.started(), "accepted");

    let resp = get(&exporter.url("/metrics"));
    assert_eq!(resp.status, 200);
    let content_type = resp.content_type.clone().unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "content type {content_type:?}"
    );
    let text = resp.body;

    // Data of every kind is in this very scrape.
    let s = parse_samples(&text, "loadimpact_");
    assert_eq!(sample(&s, &running.running()), 1.0, "a run is running");
    assert_eq!(sample(&s, &doomed.expired_total()), 1.0);
    for (i, text) in texts.iter().enumerate() {
        let outcome = OUTCOMES[i];
        let run = Run::new(1 + i as u64 % 2, 2, 3, 0);
        assert!(
            sample(&s, &run.finished_total(outcome)) >= 1.0,
            "status_text {text:?}"
        );
    }
    for result in ["accepted", "duplicate", "ignored"] {
        assert!(
            sample(&s, &events_total("test.started", result)) >= 1.0,
            "{result}"
        );
    }
    for code in [200, 400, 405, 422] {
        assert!(sample(&s, &requests_total(code)) > 0.0, "{code}");
    }
    for event in ["test.started", "test.finished", "test.notification_channel"] {
        assert!(sample(&s, &last_event_timestamp(event)) > 1.6e9, "{event}");
    }
    assert!(
        text.contains(&format!("name=\"{AWKWARD_NAME_ESCAPED}\"}} 1")),
        "the awkward name is escaped as the format says"
    );
    let lines = format!("\n{text}");
    for (family, kind) in FAMILIES {
        assert!(
            lines.contains(&format!("\n# HELP {family} ")),
            "HELP of {family}"
        );
        assert!(
            lines.contains(&format!("\n# TYPE {family} {kind}\n")),
            "TYPE {kind} of {family}"
        );
    }
    let build = s
        .keys()
        .find(|k| k.starts_with("loadimpact_exporter_build_info{"))
        .expect("build info");
    assert!(build.contains("version=\"") && build.contains("revision=\""));
    assert_eq!(s[build], 1.0);
    check_duration_buckets(&s);

    let out = promtool_check(&text);
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "promtool check metrics: {}",
        describe(&out)
    );
}

/// Buckets from 10 s to a day, cumulative, `+Inf` equal to `_count`.
fn check_duration_buckets(s: &Samples) {
    let prefix = "loadimpact_test_run_duration_seconds_bucket{";
    let mut histograms: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for (series, value) in s.iter().filter(|(k, _)| k.starts_with(prefix)) {
        let (labels, le) = series.rsplit_once(",le=\"").expect("le label");
        let le = le.trim_end_matches("\"}");
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().expect("le")
        };
        histograms
            .entry(labels[prefix.len()..].to_owned())
            .or_default()
            .push((le, *value));
    }
    assert!(!histograms.is_empty());
    for (labels, mut buckets) in histograms {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let les: Vec<f64> = buckets.iter().map(|b| b.0).collect();
        assert_eq!(les.first(), Some(&10.0), "{labels}: first bucket");
        assert_eq!(les[les.len() - 2], 86_400.0, "{labels}: last finite bucket");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{labels}: cumulative"
        );
        let count = sample(
            s,
            &format!("loadimpact_test_run_duration_seconds_count{{{labels}}}"),
        );
        assert_eq!(buckets.last().map(|b| b.1), Some(count), "{labels}: +Inf");
    }
}

#[test]
fn landing_page_health_readiness_and_runs_api() {
    let exporter = Exporter::start(&[]);
    let landing = get(&exporter.url("/"));
    assert_eq!(landing.status, 200);
    assert!(landing
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("text/html")));
    assert!(
        landing.body.contains("href=\"/metrics\""),
        "{}",
        landing.body
    );
    assert!(landing.body.contains("/webhook"), "{}", landing.body);
    for path in ["/-/healthy", "/-/ready"] {
        assert_eq!(get(&exporter.url(path)).status, 200, "{path}");
    }
    for method in ["GET", "POST", "PUT"] {
        let resp = send(
            method,
            &exporter.url("/no/such/page"),
            NO_HEADERS,
            Some(b"{}"),
        );
        assert_eq!(resp.status, 404, "{method} /no/such/page");
    }

    let empty = exporter.runs_api();
    assert_eq!(empty, json!({"running": [], "recent": []}));

    let (a, b, c) = (
        Run::new(1, 2, 3, 10),
        Run::new(1, 2, 3, 11),
        Run::new(4, 5, 6, 12),
    );
    let posted = Window::around(|| {
        exporter.post_expect(&a.started(), "accepted");
        exporter.post_expect(&b.started(), "accepted");
        exporter.post_expect(&c.finished(6, Some("Aborted by user")), "accepted");
        exporter.post_expect(&a.finished(3, Some("Finished")), "accepted");
    });
    let resp = get(&exporter.url("/api/v1/runs"));
    assert!(resp
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("application/json")));
    let runs = resp.json();
    let ids = |list: &str| -> Vec<Value> {
        let mut ids: Vec<Value> = runs[list]
            .as_array()
            .expect(list)
            .iter()
            .map(|r| r["load_test_run_id"].clone())
            .collect();
        ids.sort_by_key(|v| v.as_u64());
        ids
    };
    assert_eq!(ids("running"), vec![json!(11)]);
    assert_eq!(ids("recent"), vec![json!(10), json!(12)]);

    let running = api_run(&runs, "running", 11).expect("b");
    let started = running["started_at"].as_f64().expect("started_at");
    assert!(posted.contains(started), "{running}");
    let done = api_run(&runs, "recent", 10).expect("a");
    assert_eq!(done["outcome"], json!("finished"));
    assert_eq!(done["organization_id"], json!(1));
    assert_eq!(done["project_id"], json!(2));
    assert_eq!(done["load_test_id"], json!(3));
    let (started, finished) = (
        done["started_at"].as_f64().expect("started_at"),
        done["finished_at"].as_f64().expect("finished_at"),
    );
    assert!(posted.contains(started) && started <= finished && posted.contains(finished));
    let duration = done["duration_seconds"].as_f64().expect("duration");
    assert!((duration - (finished - started)).abs() < 0.002, "{done}");
    let unstarted = api_run(&runs, "recent", 12).expect("c");
    assert_eq!(unstarted["outcome"], json!("aborted_by_user"));
    assert_eq!(unstarted["duration_seconds"], Value::Null);

    // Many more finish: "recent" holds the most recent ones, whatever its size.
    for id in 100..250 {
        exporter.post_expect(&Run::new(1, 2, 3, id).finished(3, None), "accepted");
    }
    let runs = exporter.runs_api();
    let recent: Vec<u64> = runs["recent"]
        .as_array()
        .expect("recent")
        .iter()
        .map(|r| r["load_test_run_id"].as_u64().expect("id"))
        .collect();
    assert!(!recent.is_empty() && recent.len() <= 152);
    let newest: Vec<u64> = (100..250).rev().take(recent.len()).collect();
    let mut sorted = recent.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(
        sorted, newest,
        "recent is not the most recent finished runs"
    );
    let running = runs["running"].as_array().expect("running");
    assert_eq!(running.len(), 1, "{runs}");
    assert_eq!(running[0]["load_test_run_id"], json!(11));
}

#[test]
fn paths_and_body_limit_are_configurable_by_flag_and_environment() {
    let exporter = Exporter::builder()
        .arg("--web.telemetry-path=/internal/prom")
        .env("LOADIMPACT_EXPORTER_WEBHOOK_PATH", "/hooks/loadimpact")
        .env("LOADIMPACT_EXPORTER_WEBHOOK_MAX_BODY_BYTES", "1000")
        .start();
    let hook = exporter.url("/hooks/loadimpact");
    assert_eq!(get(&exporter.url("/metrics")).status, 404);
    let landing = get(&exporter.url("/")).body;
    assert!(landing.contains("href=\"/internal/prom\""), "{landing}");
    assert!(landing.contains("/hooks/loadimpact"), "{landing}");

    let run = Run::new(1, 2, 3, 4);
    let before = exporter.samples_at("/internal/prom");
    // The default path is nothing special now: not found, and not counted.
    let resp = deliveries::post_fresh(&exporter.url("/webhook"), &run.started());
    assert_eq!(resp.status, 404, "POST /webhook: {}", resp.body);
    assert_only_moved(
        &before,
        &exporter.samples_at("/internal/prom"),
        &[],
        "POST to the default path",
    );

    let body_of = |len: usize| {
        let mut bytes = serde_json::to_vec(&run.started()).expect("json");
        bytes.resize(len, b' ');
        bytes
    };
    let headers = deliveries::headers("test.started", "limit-1");
    let resp = send("POST", &hook, &headers, Some(&body_of(1001)));
    assert_eq!(resp.status, 413, "{}", resp.body);
    assert_eq!(resp.json()["result"], json!("rejected"));
    let resp = send("POST", &hook, &headers, Some(&body_of(1000)));
    expect_result(&resp, "accepted", &run.started());
    let resp = send("GET", &hook, NO_HEADERS, None);
    assert_eq!(resp.status, 405);
    assert!(resp.header("allow").is_some_and(|a| a.contains("POST")));

    let s = exporter.samples_at("/internal/prom");
    assert_value(&s, &run.started_total(), 1.0);
    assert_value(&s, &run.running(), 1.0);
    assert_value(&s, &requests_total(413), 1.0);
    assert_value(&s, &requests_total(200), 1.0);
    assert_value(&s, &requests_total(405), 1.0);
    assert!(!s.contains_key(&requests_total(404)));
}

/// `--log.level=error` (set by environment) keeps accepted events out of the log.
fn quiet_at_error_level() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("exporter.log");
    let mut exporter = Exporter::builder()
        .env("LOADIMPACT_EXPORTER_LOG_LEVEL", "error")
        .log_to(&log)
        .start();
    let body = Run::new(1, 2, 3, 4711).started();
    exporter.post_expect(&body, "accepted");
    assert!(exporter.terminate().success());
    let text = std::fs::read_to_string(&log).expect("read the log");
    assert!(!text.contains("4711"), "logged at error level: {text}");
}

/// Whether `value`, or anything inside it, is `needle` (as a number or a string).
fn json_mentions(value: &Value, needle: &str) -> bool {
    match value {
        Value::Object(map) => map.values().any(|v| json_mentions(v, needle)),
        Value::Array(items) => items.iter().any(|v| json_mentions(v, needle)),
        Value::String(s) => s == needle,
        Value::Number(n) => n.to_string() == needle,
        _ => false,
    }
}

#[test]
fn one_structured_log_line_per_accepted_event_in_both_formats() {
    for format in ["logfmt", "json"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("exporter.log");
        let mut exporter = Exporter::builder()
            .arg(format!("--log.format={format}"))
            .arg("--log.level=info")
            .log_to(&log)
            .start();
        let run = Run::new(1, 2, 3, 4711);
        for body in [run.started(), run.finished(6, Some("Aborted by user"))] {
            exporter.post_expect(&body, "accepted");
        }
        // A repeat is applied too (it decides "duplicate"); a finish with a
        // status no table knows is also warned about; a rejected request is
        // not applied and has no line.
        let repeated = Run::new(1, 2, 3, 4712);
        exporter.post_id_expect(&repeated.started(), "log-repeat", "accepted");
        exporter.post_id_expect(&repeated.started(), "log-repeat", "duplicate");
        let odd = Run::new(1, 2, 3, 4713);
        exporter.post_expect(&odd.started(), "accepted");
        exporter.post_expect(&odd.finished(99, None), "accepted");
        let bad = send(
            "POST",
            &exporter.url("/webhook"),
            &[("Content-Type", "application/json")],
            Some(b"{not json"),
        );
        assert_eq!(bad.status, 400, "{}", bad.body);
        assert!(exporter.terminate().success());

        let text = std::fs::read_to_string(&log).expect("read the log");
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mentions = |line: &str, needle: &str| match format {
            "json" => serde_json::from_str::<Value>(line).is_ok_and(|v| json_mentions(&v, needle)),
            _ => line.contains(&format!("={needle}")) || line.contains(&format!("=\"{needle}\"")),
        };
        let lines_with = |needles: &[&str]| -> Vec<&str> {
            lines
                .iter()
                .copied()
                .filter(|line| needles.iter().all(|n| mentions(line, n)))
                .collect()
        };
        let started = lines_with(&["4711", "test.started"]);
        let finished = lines_with(&["4711", "test.finished", "aborted_by_user"]);
        assert_eq!(
            (started.len(), finished.len()),
            (1, 1),
            "{format}: one line per accepted event with its run id, event and outcome:\n{text}"
        );
        let applied = lines
            .iter()
            .filter(|l| l.contains("webhook applied"))
            .count();
        assert_eq!(
            applied, 6,
            "{format}: one line per applied delivery:\n{text}"
        );
        assert_eq!(
            lines_with(&["4712", "test.started", "duplicate"]).len(),
            1,
            "{format}: the repeat's line says duplicate:\n{text}"
        );
        let warned: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("has an unknown status") && mentions(l, "4713"))
            .filter(|l| mentions(l, "warn") || mentions(l, "WARN"))
            .collect();
        assert_eq!(
            warned.len(),
            1,
            "{format}: one warning for the unknown status:\n{text}"
        );
        if format == "json" {
            quiet_at_error_level();
            for line in &lines {
                assert!(
                    serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()),
                    "not a JSON object: {line}"
                );
            }
        } else {
            for line in &lines {
                assert!(
                    serde_json::from_str::<Value>(line).is_err() && line.contains('='),
                    "not logfmt: {line}"
                );
            }
        }
    }
}

#[test]
fn version_flag_prints_the_version() {
    let out = run_binary(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {text:?}"
    );
}
