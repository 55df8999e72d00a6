//! The one builder of deliveries: the bodies of a test run's events (`Run`),
//! in Load Impact's format and in Grafana Cloud k6's (`Run::k6`), the headers
//! each sends with them (`headers`, `k6_headers`, `Delivery`), posting them
//! and checking the answer. Written from the
//! webhook's documentation, not from the exporter's code: each is what a Load
//! Impact sender puts on the wire.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use super::http::{self, Response};

/// A fresh `X-LoadImpact-ID`, unique within the test binary.
pub fn fresh_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "req-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The headers Load Impact sends with a delivery of `event`, with `id` as
/// `X-LoadImpact-ID`.
pub fn headers(event: &str, id: &str) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("User-Agent".into(), "LoadImpactWebHook/1.0".into()),
        ("X-LoadImpact-ID".into(), id.into()),
        ("X-LoadImpact-Event".into(), event.into()),
    ]
}

/// The headers Grafana Cloud k6 sends with a notification of `event` (a
/// short or full identifier), with `id` as `X-k6cloud-ID`.
pub fn k6_headers(event: &str, id: &str) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("User-Agent".into(), "K6CloudWebHook".into()),
        ("X-k6cloud-Event".into(), event.into()),
        ("X-k6cloud-ID".into(), id.into()),
    ]
}

/// The `event` a body says it is ("" when it says none).
pub fn event_of(body: &Value) -> &str {
    body["event"].as_str().unwrap_or_default()
}

/// The Test Hook button's delivery: the body is only the event.
pub fn test_hook() -> Value {
    json!({"event": "test.notification_channel"})
}

/// A delivery ready to go: the body's bytes and Load Impact's headers.
pub struct Delivery {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Delivery {
    /// `body` with `id` as `X-LoadImpact-ID`; the event header is the body's.
    pub fn new(body: &Value, id: &str) -> Delivery {
        Delivery {
            headers: headers(event_of(body), id),
            payload: serde_json::to_vec(body).expect("serialize"),
        }
    }

    /// A Grafana Cloud k6 notification of `run` (started 10:00:00) with `id`
    /// as its `X-k6cloud-ID` and `<id>-event` as its `event.id`; the header
    /// names the start or the finish, the body the exact `event`.
    pub fn k6(
        run: &Run,
        event: &str,
        status: i64,
        result: Option<u8>,
        ended: Value,
        id: &str,
    ) -> Delivery {
        let mut body = run.k6(event, status, result, "2024-05-06T10:00:00Z", ended);
        body["event"]["id"] = json!(format!("{id}-event"));
        let short = if event.starts_with("test.started") {
            "test.started"
        } else {
            "test.finished"
        };
        Delivery {
            headers: k6_headers(short, id),
            payload: serde_json::to_vec(&body).expect("serialize"),
        }
    }

    /// POSTs it to `url`; `None` when the connection failed.
    pub fn try_send(&self, url: &str) -> Option<Response> {
        http::try_send("POST", url, &self.headers, Some(&self.payload))
    }

    /// POSTs it to `url`; panics when the connection fails.
    pub fn send(&self, url: &str) -> Response {
        http::send("POST", url, &self.headers, Some(&self.payload))
    }

    /// POSTs it to the webhook of the exporter listening on `port`, and
    /// what it got: a crash test's record of one delivery.
    pub fn fate_at(&self, port: u16) -> Fate {
        match self.try_send(&format!("http://127.0.0.1:{port}/webhook")) {
            Some(r) if (200..300).contains(&r.status) => {
                let result = r.json()["result"].as_str().unwrap_or_default().to_owned();
                Fate::Acknowledged(result)
            }
            Some(r) => Fate::Refused(r.status, r.body),
            None => Fate::Unanswered,
        }
    }
}

/// What one delivery got.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// A 2xx, with its `result`.
    Acknowledged(String),
    /// Another answer.
    Refused(u16, String),
    /// No answer: the connection failed or broke.
    Unanswered,
}

/// Posts `body` to `url` with Load Impact's headers and `id`.
pub fn post(url: &str, body: &Value, id: &str) -> Response {
    Delivery::new(body, id).send(url)
}

/// Asserts that `resp` is 200 `{"result":"<result>"}`; `sent` is what was posted.
pub fn expect_result(resp: &Response, result: &str, sent: &Value) {
    let parsed: Option<Value> = serde_json::from_str(&resp.body).ok();
    assert!(
        resp.status == 200 && parsed == Some(json!({ "result": result })),
        "sent {sent}: expected 200 {{\"result\":\"{result}\"}}, got {} {:?}",
        resp.status,
        resp.body
    );
}

/// Posts `body` to `url` with Load Impact's headers and a fresh id.
pub fn post_fresh(url: &str, body: &Value) -> Response {
    post(url, body, &fresh_id())
}

/// One Load Impact test run: who it belongs to, its ids, and the user and
/// load test name its events carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub org: u64,
    pub project: u64,
    pub load_test: u64,
    pub id: u64,
    pub user: u64,
    pub name: String,
}

impl Run {
    /// A run started by user 4242, its load test named `Load test <load_test>`.
    pub fn new(org: u64, project: u64, load_test: u64, id: u64) -> Run {
        Run {
            org,
            project,
            load_test,
            id,
            user: 4242,
            name: format!("Load test {load_test}"),
        }
    }

    /// The same run, started by `user`.
    pub fn by_user(mut self, user: u64) -> Run {
        self.user = user;
        self
    }

    /// The same run, its load test named `name`.
    pub fn named(mut self, name: impl Into<String>) -> Run {
        self.name = name.into();
        self
    }

    /// A full body as Load Impact sends it.
    pub fn body(&self, event: &str, status: i64, status_text: Option<&str>) -> Value {
        let mut body = json!({
            "event": event,
            "status": status,
            "user_id": self.user,
            "name": self.name,
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

    /// `test.started`, status 2 "Running".
    pub fn started(&self) -> Value {
        self.body("test.started", 2, Some("Running"))
    }

    /// `test.finished` with this status (and text, when given).
    pub fn finished(&self, status: i64, status_text: Option<&str>) -> Value {
        self.body("test.finished", status, status_text)
    }

    /// A Grafana Cloud k6 notification of `event` for this run, with the
    /// Generic Template's fields as the README's template renders them: a
    /// fresh `event.id`, the k6 `status`, `result` (0 passed, 1 failed;
    /// `None` while running) and the reported `started` and `ended`.
    pub fn k6(
        &self,
        event: &str,
        status: i64,
        result: Option<u8>,
        started: &str,
        ended: Value,
    ) -> Value {
        json!({
            "event": {"id": fresh_id(), "type": event, "text": "Test run"},
            "test": {
                "organization_id": self.org, "project_id": self.project, "id": self.id,
                "url": format!("https://app.k6.io/runs/{}", self.id),
                "load_test_id": self.load_test,
                "load_test_url": format!("https://app.k6.io/tests/{}", self.load_test),
                "name": self.name, "was_scheduled": 0,
                "started": started, "ended": ended,
                "status": status, "status_text": null, "result": result, "result_text": null
            },
            "user": {"id": self.user, "name": "someone"},
            "errors": []
        })
    }
}
