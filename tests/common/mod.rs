//! Shared test support: start the real `loadimpact-exporter` binary on a free
//! port, talk HTTP to it, and find the outside tools (promtool, Prometheus, …)
//! that the tests drive. Every integration test file does `mod common;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the exporter binary built by cargo for these tests.
pub fn exporter_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_loadimpact-exporter"))
}

/// Finds an outside tool on PATH (or in the project's `.venv-tools/bin`).
/// A missing tool fails the test: `tests/run.sh` installs them all, and a test
/// never passes by skipping.
pub fn require_tool(name: &str) -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-tools/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(venv).chain(std::env::split_paths(&path));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed: run `bash tests/run.sh`, which installs every tool the tests need");
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A response: status code, headers (names lower-cased) and body text.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
    pub content_type: Option<String>,
    pub headers: BTreeMap<String, String>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

fn into_response(result: Result<ureq::Response, ureq::Error>) -> Option<Response> {
    let resp = match result {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(ureq::Error::Transport(_)) => return None,
    };
    let status = resp.status();
    let content_type = resp.header("content-type").map(str::to_owned);
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|name| {
            let value = resp.header(&name).unwrap_or_default().to_owned();
            (name.to_ascii_lowercase(), value)
        })
        .collect();
    let body = resp.into_string().unwrap_or_default();
    Some(Response {
        status,
        body,
        content_type,
        headers,
    })
}

/// Sends a request; `None` when the connection itself failed.
pub fn try_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Option<Response> {
    let mut req = agent().request(method, url);
    for (name, value) in headers {
        req = req.set(name, value);
    }
    into_response(match body {
        Some(body) => req.send_bytes(body),
        None => req.call(),
    })
}

/// Sends a request and panics when the connection fails.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Response {
    try_request(method, url, headers, body)
        .unwrap_or_else(|| panic!("{method} {url}: connection failed"))
}

pub fn get(url: &str) -> Response {
    request("GET", url, &[], None)
}

/// A running exporter process with its own storage directory.
pub struct Exporter {
    child: Option<Child>,
    pub port: u16,
    pub storage: PathBuf,
    pub extra_args: Vec<String>,
    pub envs: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

impl Exporter {
    /// Starts the exporter with a fresh temporary store and `args`.
    pub fn start(args: &[&str]) -> Exporter {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Exporter {
        let tmp = tempfile::tempdir().expect("temp dir");
        let storage = tmp.path().join("data");
        let mut exporter = Exporter {
            child: None,
            port: 0,
            storage,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _tmp: Some(tmp),
        };
        exporter.spawn();
        exporter
    }

    fn spawn(&mut self) {
        self.port = free_port();
        let mut cmd = Command::new(exporter_bin());
        cmd.arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg(format!("--storage.path={}", self.storage.display()))
            .args(&self.extra_args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("EXPORTER_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn loadimpact-exporter");
        self.child = Some(child);
        let url = self.url("/-/ready");
        let child = self.child.as_mut().expect("child");
        wait_for("the exporter to be ready", Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("exporter exited during start-up: {status}");
            }
            match try_request("GET", &url, &[], None) {
                Some(r) if r.status == 200 => Some(()),
                _ => None,
            }
        });
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("wait");
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("exporter did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the binary again on the same store (and a new port).
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop the exporter before restarting it"
        );
        self.spawn();
    }

    /// Posts a webhook with Load Impact's headers; the event header is taken from the body.
    pub fn post_event(&self, body: &serde_json::Value, request_id: &str) -> Response {
        let event = body
            .get("event")
            .and_then(|e| e.as_str())
            .unwrap_or("")
            .to_owned();
        let payload = serde_json::to_vec(body).expect("serialize");
        request(
            "POST",
            &self.url("/webhook"),
            &[
                ("Content-Type", "application/json"),
                ("User-Agent", "LoadImpactWebHook/1.0"),
                ("X-LoadImpact-ID", request_id),
                ("X-LoadImpact-Event", &event),
            ],
            Some(&payload),
        )
    }

    pub fn scrape(&self) -> String {
        let resp = get(&self.url("/metrics"));
        assert_eq!(resp.status, 200, "scrape failed: {}", resp.body);
        resp.body
    }

    /// Every sample of the scrape whose name starts with `loadimpact_`, keyed by
    /// the series as written (name and labels).
    pub fn samples(&self) -> BTreeMap<String, f64> {
        parse_samples(&self.scrape(), "loadimpact_")
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Parses exposition text into `series -> value` for names starting with `prefix`.
pub fn parse_samples(text: &str, prefix: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with(prefix) {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        out.insert(series.to_owned(), value);
    }
    out
}

/// The value of one series, written exactly as in the exposition
/// (`name{label="v",...}`), or 0 when absent.
pub fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}
