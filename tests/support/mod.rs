//! What the integration tests share: the one launcher of the exporter binary
//! (`exporter`), a guard for every other child process (`process`), an HTTP
//! client and free ports (`http`), the Load Impact deliveries (`deliveries`),
//! reading a scrape (`samples`), concurrent posters and
//! their bookkeeping (`posters`), the outside tools (`tools`), a real Redis
//! for the replicas (`redis`), the
//! repository's files (`files`), and certificates with an HTTPS client
//! (`tls`). Every integration test file does `mod support;`;
//! `docs/development.md` says which helper to use for what.
#![allow(dead_code)]

pub mod deliveries;
pub mod exporter;
pub mod files;
pub mod http;
pub mod posters;
pub mod process;
pub mod redis;
pub mod samples;
pub mod tls;
pub mod tools;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Seconds since the Unix epoch, now.
pub fn now() -> f64 {
    since_epoch().as_secs_f64()
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    since_epoch().as_nanos() as u64
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
}

/// The client's clock around one request (seconds since the epoch): just
/// before it was sent, and once its answer came.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub sent: f64,
    pub answered: f64,
}

impl Window {
    /// Times `request`.
    pub fn around(request: impl FnOnce()) -> Window {
        let sent = now();
        request();
        Window {
            sent,
            answered: now(),
        }
    }

    /// Whether the exporter's time `t` can be one of this request (10 ms of
    /// slack either way: the clocks are read apart).
    pub fn contains(&self, t: f64) -> bool {
        t >= self.sent - 0.01 && t <= self.answered + 0.01
    }
}

/// Asserts that `duration`, measured by the exporter from a start posted
/// within `start` to a finish posted within `finish`, is one the client's
/// clock allows (10 ms of slack either way).
pub fn assert_duration_between(duration: f64, start: Window, finish: Window, what: &str) {
    let (low, high) = (
        finish.sent - start.answered - 0.01,
        finish.answered - start.sent + 0.01,
    );
    assert!(
        duration >= low && duration <= high,
        "{what}: duration {duration} not in [{low}, {high}]"
    );
}
