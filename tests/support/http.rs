//! The HTTP client of the tests (blocking, `ureq`) and free loopback ports.
//! Every response keeps its status, headers and body, whatever the status:
//! a 4xx or 5xx is an answer to check, not an error.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::Duration;

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Whether `port` on 127.0.0.1 can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// For a request sent without headers.
pub const NO_HEADERS: &[(&str, &str)] = &[];

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
pub fn try_send<K: AsRef<str>, V: AsRef<str>>(
    method: &str,
    url: &str,
    headers: &[(K, V)],
    body: Option<&[u8]>,
) -> Option<Response> {
    let mut req = agent().request(method, url);
    for (name, value) in headers {
        req = req.set(name.as_ref(), value.as_ref());
    }
    into_response(match body {
        Some(body) => req.send_bytes(body),
        None => req.call(),
    })
}

/// Sends a request and panics when the connection fails.
pub fn send<K: AsRef<str>, V: AsRef<str>>(
    method: &str,
    url: &str,
    headers: &[(K, V)],
    body: Option<&[u8]>,
) -> Response {
    try_send(method, url, headers, body)
        .unwrap_or_else(|| panic!("{method} {url}: connection failed"))
}

/// `GET url`; `None` when the connection failed.
pub fn try_get(url: &str) -> Option<Response> {
    try_send("GET", url, NO_HEADERS, None)
}

/// `GET url`; panics when the connection fails.
pub fn get(url: &str) -> Response {
    send("GET", url, NO_HEADERS, None)
}

/// `GET url`, which must answer 200; its body.
pub fn get_ok(url: &str) -> Response {
    let resp = get(url);
    assert_eq!(resp.status, 200, "GET {url}: {}", resp.body);
    resp
}

/// `POST url` with a JSON body (`Content-Type: application/json` only).
pub fn post_json(url: &str, body: &serde_json::Value) -> Response {
    let payload = serde_json::to_vec(body).expect("serialize");
    send(
        "POST",
        url,
        &[("Content-Type", "application/json")],
        Some(&payload),
    )
}
