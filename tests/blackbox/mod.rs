//! Helpers for the black-box tests of issue 2 (`webhook_api.rs`, `restart.rs`,
//! `exposition.rs`): Load Impact bodies for a run, posting to any path, metric
//! snapshots and the assertions on what moved between two of them.
//!
//! They are written from the specification (issue 2), not from the exporter's
//! code: every expectation here is what a Load Impact sender or a Prometheus
//! user sees from outside.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{self, Exporter, Response};

pub type Samples = BTreeMap<String, f64>;

/// The fixed set of outcomes, in no particular order.
pub const OUTCOMES: [&str; 9] = [
    "finished",
    "timed_out",
    "aborted_by_user",
    "aborted_by_system",
    "aborted_by_script_error",
    "aborted_by_threshold",
    "aborted_by_limit",
    "failed_threshold",
    "unknown",
];

/// Telemetry of the process itself, not part of the state kept in the store.
pub const PER_PROCESS_PREFIX: &str = "loadimpact_exporter_store_";

/// A fresh `X-LoadImpact-ID`, unique within the test binary.
pub fn fresh_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "req-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One Load Impact test run: who it belongs to and its ids.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub org: u64,
    pub project: u64,
    pub load_test: u64,
    pub id: u64,
}

impl Run {
    pub fn new(org: u64, project: u64, load_test: u64, id: u64) -> Run {
        Run {
            org,
            project,
            load_test,
            id,
        }
    }

    pub fn name(&self) -> String {
        format!("Load test {}", self.load_test)
    }

    /// A full body as Load Impact sends it.
    pub fn body(&self, event: &str, status: i64, status_text: Option<&str>) -> Value {
        let mut body = json!({
            "event": event,
            "status": status,
            "user_id": 4242,
            "name": self.name(),
            "organization_id": self.org,
            "project_id": self.project,
            "load_test_id": self.load_test,
            "load_test_run_id": self.id,
        });
        if let Some(text) = status_text {
            body["status_text"] = json!(text);
        }
        body
    }

    pub fn started(&self) -> Value {
        self.body("test.started", 2, Some("Running"))
    }

    pub fn finished(&self, status: i64, status_text: Option<&str>) -> Value {
        self.body("test.finished", status, status_text)
    }

    /// `organization_id="..",project_id=".."`
    pub fn project_labels(&self) -> String {
        format!(
            "organization_id=\"{}\",project_id=\"{}\"",
            self.org, self.project
        )
    }

    /// `name{organization_id="..",project_id=".."<extra>}`; `extra` starts with a comma.
    pub fn series(&self, name: &str, extra: &str) -> String {
        format!("{name}{{{}{extra}}}", self.project_labels())
    }

    pub fn started_total(&self) -> String {
        self.series("loadimpact_test_runs_started_total", "")
    }

    pub fn running(&self) -> String {
        self.series("loadimpact_test_runs_running", "")
    }

    pub fn expired_total(&self) -> String {
        self.series("loadimpact_test_runs_expired_total", "")
    }

    pub fn abort_ratio(&self) -> String {
        self.series("loadimpact_project_abort_ratio", "")
    }

    pub fn finished_total(&self, outcome: &str) -> String {
        self.series(
            "loadimpact_test_runs_finished_total",
            &format!(",outcome=\"{outcome}\""),
        )
    }

    pub fn duration_count(&self, outcome: &str) -> String {
        self.series(
            "loadimpact_test_run_duration_seconds_count",
            &format!(",outcome=\"{outcome}\""),
        )
    }

    pub fn duration_sum(&self, outcome: &str) -> String {
        self.series(
            "loadimpact_test_run_duration_seconds_sum",
            &format!(",outcome=\"{outcome}\""),
        )
    }

    pub fn last_run_status(&self) -> String {
        self.series(
            "loadimpact_load_test_last_run_status",
            &format!(",load_test_id=\"{}\"", self.load_test),
        )
    }

    pub fn info(&self) -> String {
        self.series(
            "loadimpact_load_test_info",
            &format!(
                ",load_test_id=\"{}\",name=\"{}\"",
                self.load_test,
                self.name()
            ),
        )
    }

    /// Sum of the duration histogram's `_count` over every outcome.
    pub fn durations_observed(&self, samples: &Samples) -> f64 {
        OUTCOMES
            .iter()
            .map(|o| common::sample(samples, &self.duration_count(o)))
            .sum()
    }
}

pub fn events_total(event: &str, result: &str) -> String {
    format!("loadimpact_webhook_events_total{{event=\"{event}\",result=\"{result}\"}}")
}

pub fn requests_total(code: u16) -> String {
    format!("loadimpact_webhook_requests_total{{code=\"{code}\"}}")
}

pub fn last_event_timestamp(event: &str) -> String {
    format!("loadimpact_webhook_last_event_timestamp_seconds{{event=\"{event}\"}}")
}

/// The headers Load Impact sends, for `event`, with `id` as `X-LoadImpact-ID`.
pub fn li_headers(event: &str, id: &str) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("User-Agent".into(), "LoadImpactWebHook/1.0".into()),
        ("X-LoadImpact-ID".into(), id.into()),
        ("X-LoadImpact-Event".into(), event.into()),
    ]
}

/// A response with its headers (names lower-cased).
pub type Full = common::Response;

/// Sends a request and keeps the response headers; `None` when the connection failed.
pub fn try_send(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> Option<Full> {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    common::try_request(method, url, &headers, body)
}

pub fn send(method: &str, url: &str, headers: &[(String, String)], body: Option<&[u8]>) -> Full {
    try_send(method, url, headers, body)
        .unwrap_or_else(|| panic!("{method} {url}: connection failed"))
}

/// Posts `body` to `url` with Load Impact's headers and a fresh id.
pub fn post_to(url: &str, body: &Value) -> Full {
    let event = body["event"].as_str().unwrap_or_default();
    let payload = serde_json::to_vec(body).expect("serialize");
    send("POST", url, &li_headers(event, &fresh_id()), Some(&payload))
}

/// Posts with a fresh `X-LoadImpact-ID`.
pub fn post(exporter: &Exporter, body: &Value) -> Response {
    exporter.post_event(body, &fresh_id())
}

/// Posts and asserts the answer is 200 `{"result":"<result>"}`.
pub fn post_expect(exporter: &Exporter, body: &Value, result: &str) {
    let resp = post(exporter, body);
    expect_result(resp.status, &resp.body, result, body);
}

/// Posts with the given id and asserts the answer is 200 `{"result":"<result>"}`.
pub fn post_id_expect(exporter: &Exporter, body: &Value, id: &str, result: &str) {
    let resp = exporter.post_event(body, id);
    expect_result(resp.status, &resp.body, result, body);
}

pub fn expect_result(status: u16, body: &str, result: &str, sent: &Value) {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    assert!(
        status == 200 && parsed == Some(json!({ "result": result })),
        "sent {sent}: expected 200 {{\"result\":\"{result}\"}}, got {status} {body:?}"
    );
}

/// Every `loadimpact_` sample except the per-process store telemetry.
pub fn state_samples(samples: &Samples) -> Samples {
    samples
        .iter()
        .filter(|(k, _)| !k.starts_with(PER_PROCESS_PREFIX))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Series whose value differs (or that appeared or went away), store telemetry excluded.
pub fn changes(before: &Samples, after: &Samples) -> BTreeMap<String, (Option<f64>, Option<f64>)> {
    let before = state_samples(before);
    let after = state_samples(after);
    let mut out = BTreeMap::new();
    for key in before.keys().chain(after.keys()) {
        let (b, a) = (before.get(key).copied(), after.get(key).copied());
        if b != a {
            out.insert(key.clone(), (b, a));
        }
    }
    out
}

/// Asserts that exactly the `expected` series moved, each by its delta
/// (an absent series counts as 0), and nothing else did.
pub fn assert_only_moved(before: &Samples, after: &Samples, expected: &[(&str, f64)], what: &str) {
    let moved = changes(before, after);
    for (series, delta) in expected {
        let got = common::sample(after, series) - common::sample(before, series);
        assert_eq!(
            got, *delta,
            "{what}: `{series}` moved by {got}, expected {delta}; all moves: {moved:#?}"
        );
    }
    let unexpected: Vec<_> = moved
        .iter()
        .filter(|(k, _)| !expected.iter().any(|(e, _)| e == k))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{what}: series moved that should not have: {unexpected:#?}"
    );
}

/// `after - before` for one series (absent = 0).
pub fn delta(before: &Samples, after: &Samples, series: &str) -> f64 {
    common::sample(after, series) - common::sample(before, series)
}

/// Asserts that the series exists with exactly this value.
pub fn assert_value(samples: &Samples, series: &str, value: f64) {
    assert_eq!(
        samples.get(series),
        Some(&value),
        "`{series}`: expected {value}"
    );
}

/// Scrapes `path` (for a custom `--web.telemetry-path`).
pub fn samples_at(exporter: &Exporter, path: &str) -> Samples {
    let resp = common::get(&exporter.url(path));
    assert_eq!(resp.status, 200, "GET {path}: {}", resp.body);
    common::parse_samples(&resp.body, "loadimpact_")
}

/// Sum of every series of the metric `name` (any labels).
pub fn sum_of(samples: &Samples, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| *v)
        .sum()
}

/// Seconds since the Unix epoch, now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// `GET /api/v1/runs`, parsed.
pub fn runs_api(exporter: &Exporter) -> Value {
    let resp = common::get(&exporter.url("/api/v1/runs"));
    assert_eq!(resp.status, 200, "GET /api/v1/runs: {}", resp.body);
    resp.json()
}

/// The entry of `list` ("running" or "recent") for run `id`.
pub fn api_run(runs: &Value, list: &str, id: u64) -> Option<Value> {
    runs[list]
        .as_array()
        .unwrap_or_else(|| panic!("/api/v1/runs has no `{list}` array: {runs}"))
        .iter()
        .find(|r| r["load_test_run_id"] == json!(id))
        .cloned()
}

/// The binary started by hand (not through `common::Exporter`), for what that
/// helper fixes: the working directory (the default `./data` store) and the
/// process's output (the log lines).
pub struct Spawned {
    pub child: std::process::Child,
    pub port: u16,
}

impl Spawned {
    /// Starts the binary in `cwd` with `args` (plus a free listen address) and
    /// waits for `/-/ready`. stdout and stderr go to `log` when given.
    pub fn start(cwd: &std::path::Path, args: &[&str], log: Option<&std::path::Path>) -> Spawned {
        Self::start_with_env(cwd, args, &[], log)
    }

    pub fn start_with_env(
        cwd: &std::path::Path,
        args: &[&str],
        envs: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Spawned {
        use std::process::{Command, Stdio};
        let port = common::free_port();
        let output = |log: Option<&std::path::Path>| match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("open the log file"),
            ),
            None => Stdio::null(),
        };
        let child = Command::new(common::exporter_bin())
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(args)
            .current_dir(cwd)
            .envs(envs.iter().copied())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(output(log))
            .stderr(output(log))
            .spawn()
            .expect("spawn loadimpact-exporter");
        let mut spawned = Spawned { child, port };
        let url = spawned.url("/-/ready");
        common::wait_for("the exporter to be ready", Duration::from_secs(20), || {
            if let Ok(Some(status)) = spawned.child.try_wait() {
                panic!("exporter exited during start-up: {status}");
            }
            common::try_request("GET", &url, &[], None)
                .is_some_and(|r| r.status == 200)
                .then_some(())
        });
        spawned
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// SIGTERM and the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.stop("TERM")
    }

    /// Sends `signal` (a name for `kill`, e.g. "INT") and waits for the exit status.
    pub fn stop(mut self, signal: &str) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
        common::wait_for("the exporter to exit", Duration::from_secs(20), || {
            self.child.try_wait().expect("try_wait")
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
