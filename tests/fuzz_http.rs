//! A proptest of the webhook's request path, headers and body, in both
//! formats, against one real exporter driven over raw TCP, so that what no
//! HTTP client would send (broken request lines, framing and headers,
//! non-UTF-8 bytes, random bytes) reaches the server.
//!
//! Every case is a valid delivery (Load Impact's or Grafana Cloud k6's)
//! mutated at every level (JSON values, body bytes, headers, framing, method,
//! path, version, the raw request), a clean delivery whose answer is known in
//! advance, or random bytes. Per case it proves: every answer is a
//! well-formed HTTP response, none is a 5xx but 503, nothing hangs, no
//! request whose body was read goes unanswered, the process lives and
//! `/-/healthy` answers 200; every run metric moved exactly as the answers
//! imply (the webhook counters by the answers the client read, by code and
//! result; the run counters by the accepted and ignored events the webhook
//! counters then show; nothing but the request, duplicate and refusal
//! counters when no answer accepted anything); and the projects and load
//! tests with series stay within the caps. A clean case must get its
//! predicted answer and move exactly its own project's series. At the end
//! the totals equal what the client read, the runs API agrees with the clean
//! runs, and `promtool check metrics` accepts the scrape.
//!
//! The second test runs the same with a webhook token: a request whose bytes
//! do not carry it gets no webhook answer but 401, so it moves no run metric.
//!
//! `FUZZ_HTTP_CASES` sets the number of cases of each test (default below,
//! for CI).

mod support;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use serde_json::{json, Value};

use support::deliveries::{headers, k6_headers, test_hook, Run};
use support::exporter::{api_run, Exporter};
use support::http;
use support::process::has_exited;
use support::samples::{self, labelled, labels, sample, state_samples, Samples};
use support::tools::{describe, require_tool, run_with_input};

/// Cases run by each test when `FUZZ_HTTP_CASES` is not set: both tests
/// together well under a minute on two shared cores.
const DEFAULT_CASES: u32 = 2000;

/// The webhook's token in the test that sets one; it cannot arise from a
/// mutation by chance.
const TOKEN: &str = "fuzzTOKEN-7f3a9c41";

/// Caps low enough that the fuzz reaches them (429): room for the clean
/// cases' 4 projects and 3 load tests (posted first), the mutated cases' 6
/// and 4, and a few more.
const MAX_PROJECTS: usize = 13;
const MAX_LOAD_TESTS: usize = 10;

fn caps() -> [String; 2] {
    [
        format!("--limits.max-projects={MAX_PROJECTS}"),
        format!("--limits.max-load-tests={MAX_LOAD_TESTS}"),
    ]
}

// ---- the wire ---------------------------------------------------------------

/// Sent after every case on the same connection: a request that answers and
/// closes. A case that left a request head open is ended by its blank line.
const SENTINEL: &[u8] = b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

/// How long the server may stay silent before the client assumes it waits
/// for more of a body the case promised.
const IDLE: Duration = Duration::from_millis(250);

/// How long an exchange may take in all before it counts as a hang.
const HANG: Duration = Duration::from_secs(20);

/// Sent after `IDLE` of silence: more than any body the server reads
/// (`--webhook.max-body-bytes` is 65,536 by default), so that a body waiting
/// for bytes completes (or a chunk size breaks), then a request line that no
/// parser accepts, so that the server answers and closes.
fn filler() -> Vec<u8> {
    let mut bytes = vec![b'x'; 70_000];
    bytes.extend_from_slice(b" \x00\r\n\r\n");
    bytes
}

/// What the server sent back on one connection.
#[derive(Debug)]
struct Exchange {
    responses: Vec<Response>,
    /// The client had to send the filler: the server waited for a body.
    filled: bool,
}

/// One HTTP response as read off the wire.
#[derive(Debug, Clone)]
struct Response {
    status: u16,
    /// An `HTTP/1.0` status line.
    http10: bool,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the server says it closes the connection after this
    /// response (HTTP/1.0 closes unless it keeps alive).
    fn closes(&self) -> bool {
        let connection = self
            .header("connection")
            .unwrap_or_default()
            .to_ascii_lowercase();
        connection.contains("close") || (self.http10 && !connection.contains("keep-alive"))
    }

    fn summary(&self) -> String {
        format!(
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// Sends `request` and then the sentinel on a fresh connection, and reads
/// every response until the server closes. `Err` for a hang or a malformed
/// response.
fn exchange(port: u16, request: &[u8]) -> Result<Exchange, String> {
    let started = Instant::now();
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).ok();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut wire = request.to_vec();
    wire.extend_from_slice(SENTINEL);
    write_or_closed(&mut stream, &wire)?;
    let mut received = Vec::new();
    let mut filled = false;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let timeout = if filled {
            HANG.saturating_sub(started.elapsed())
        } else {
            IDLE
        };
        if timeout.is_zero() {
            return Err(format!(
                "hang: the server neither answered nor closed within {HANG:?}; read so far: {:?}",
                String::from_utf8_lossy(&received)
            ));
        }
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if filled {
                    continue;
                }
                filled = true;
                write_or_closed(&mut stream, &filler())?;
            }
            // The server closed with bytes of ours unread: a close.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    let head_request = contains(request, b"HEAD");
    let responses = parse_responses(&received, head_request)?;
    // The sentinel (or the filler) makes the server answer and close. The
    // server may also close after answering a request whose body it did not
    // read (another page, 405, 413, a body it could not read); a connection
    // that ends otherwise lost a request, as when a handler panics.
    let lost = match responses.last() {
        None => true,
        Some(last) => read_its_body(last) && !last.closes(),
    };
    if lost {
        return Err(format!(
            "the connection closed without an answer to its last request: {:?}",
            String::from_utf8_lossy(&received)
        ));
    }
    Ok(Exchange { responses, filled })
}

/// Whether `response` answers a request whose body the server read to its
/// end: the webhook's answers but 401, 403, 405, 408, 413 and a body it
/// could not read.
fn read_its_body(response: &Response) -> bool {
    webhook_answer(response).is_some_and(|answer| match answer.code {
        401 | 403 | 405 | 408 | 413 => false,
        400 => !contains(&response.body, b"cannot read the body"),
        _ => true,
    })
}

/// Writes all of `bytes`; a server that closed meanwhile is no error (it
/// answered, or will be seen to have closed), one that stops reading is.
fn write_or_closed(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), String> {
    match stream.write_all(bytes) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err("hang: the server stopped reading the request without closing".to_owned())
        }
        Err(_) => Ok(()),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits what the server sent into responses; each must have a status line
/// `HTTP/1.x DDD reason`, headers and a `content-length` body. A response to
/// HEAD has no body; `head_request` says one may have been sent.
fn parse_responses(bytes: &[u8], head_request: bool) -> Result<Vec<Response>, String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let malformed = |why: &str| {
        format!(
            "malformed response ({why}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    };
    while !rest.is_empty() {
        let end = find(rest, b"\r\n\r\n").ok_or_else(|| malformed("no end of head"))?;
        let head = std::str::from_utf8(&rest[..end]).map_err(|_| malformed("head not UTF-8"))?;
        rest = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = parse_status_line(status_line).ok_or_else(|| malformed("status line"))?;
        let http10 = status_line.starts_with("HTTP/1.0 ");
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| malformed("header line"))?;
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut response = Response {
            status,
            http10,
            headers,
            body: Vec::new(),
        };
        if (100..200).contains(&status) {
            out.push(response);
            continue;
        }
        let length: usize = response
            .header("content-length")
            .ok_or_else(|| malformed("no content-length"))?
            .parse()
            .map_err(|_| malformed("content-length"))?;
        let bodiless = head_request
            && length > 0
            && (rest.is_empty()
                || rest.starts_with(b"HTTP/1.1 ")
                || rest.starts_with(b"HTTP/1.0 "));
        if !bodiless {
            if rest.len() < length {
                return Err(malformed("body shorter than content-length"));
            }
            response.body = rest[..length].to_vec();
            rest = &rest[length..];
        }
        out.push(response);
    }
    Ok(out)
}

fn parse_status_line(line: &str) -> Option<u16> {
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let (code, reason) = rest.split_at_checked(3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !(reason.is_empty() || reason.starts_with(' ')) {
        return None;
    }
    if reason.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

// ---- what the answers say ---------------------------------------------------

/// An answer of the webhook handler (not of another page, not hyper's own).
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    code: u16,
    /// `accepted`, `duplicate`, `ignored` (200) or `rejected`; `None` for a
    /// response to HEAD (no body).
    result: Option<String>,
}

/// The webhook's answer in `response`, if it is one. The handler always
/// sets a content type; hyper's own answers (a request it cannot parse) have
/// none. Pages answer 200 (no `result`), 404, 405 with `Allow: GET, HEAD`
/// and 503 as text; only the webhook answers 400, 401, 403, 408, 413, 415,
/// 422 and 429, a 405 with `Allow: POST`, a 200 with a `result` and a 503
/// in JSON.
fn webhook_answer(response: &Response) -> Option<Answer> {
    let content_type = response.header("content-type")?;
    let json: Option<Value> = serde_json::from_slice(&response.body).ok();
    let result = json
        .as_ref()
        .and_then(|j| j.get("result"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let webhook = match response.status {
        200 => result.is_some(),
        400 | 401 | 403 | 408 | 413 | 415 | 422 | 429 => true,
        405 => response.header("allow") == Some("POST"),
        503 => content_type.starts_with("application/json"),
        _ => false,
    };
    webhook.then_some(Answer {
        code: response.status,
        result,
    })
}

/// What the client read from the webhook over some cases.
#[derive(Debug, Default, Clone, PartialEq)]
struct Tally {
    by_code: BTreeMap<u16, u64>,
    accepted: u64,
    duplicate: u64,
    ignored: u64,
    /// 429: a new project or load test past its cap.
    refused: u64,
}

impl Tally {
    fn add(&mut self, answer: &Answer) -> Result<(), String> {
        *self.by_code.entry(answer.code).or_default() += 1;
        match (answer.code, answer.result.as_deref()) {
            (200, Some("accepted")) => self.accepted += 1,
            (200, Some("duplicate")) => self.duplicate += 1,
            (200, Some("ignored")) => self.ignored += 1,
            (200, other) => return Err(format!("a 200 with result {other:?}")),
            (429, Some("refused")) => self.refused += 1,
            (_, Some("rejected") | None) => {}
            (code, other) => return Err(format!("a {code} with result {other:?}")),
        }
        Ok(())
    }

    fn merge(&mut self, other: &Tally) {
        for (code, n) in &other.by_code {
            *self.by_code.entry(*code).or_default() += n;
        }
        self.accepted += other.accepted;
        self.duplicate += other.duplicate;
        self.ignored += other.ignored;
        self.refused += other.refused;
    }
}

/// Checks every response of an exchange on its own: no 500, no 5xx but
/// 503. Returns what the webhook answered.
fn check_responses(exchange: &Exchange) -> Result<Tally, String> {
    let mut tally = Tally::default();
    for response in &exchange.responses {
        if response.status >= 500 && response.status != 503 {
            return Err(format!(
                "a {} answer: {}",
                response.status,
                response.summary()
            ));
        }
        if let Some(answer) = webhook_answer(response) {
            tally
                .add(&answer)
                .map_err(|e| format!("{e}: {}", response.summary()))?;
        }
    }
    Ok(tally)
}

// ---- accounting ---------------------------------------------------------------

const EVENTS: [&str; 3] = ["test.started", "test.finished", "test.notification_channel"];
const RESULTS: [&str; 4] = ["accepted", "duplicate", "ignored", "refused"];
/// Every code the webhook answers, as `loadimpact_webhook_requests_total`
/// exports them.
const CODES: [u16; 11] = [200, 400, 401, 403, 405, 408, 413, 415, 422, 429, 503];

fn name_of(series: &str) -> &str {
    series.split_once('{').map_or(series, |(name, _)| name)
}

/// The sum of every series of `name` (any labels).
fn total(s: &Samples, name: &str) -> f64 {
    samples::sum_of(s, name)
}

fn events(s: &Samples, event: &str, result: &str) -> f64 {
    sample(s, &samples::events_total(event, result))
}

/// Checks that the scrape moved from `before` to `after` exactly as the
/// webhook answers of one case (`tally`) imply.
fn check_moves(before: &Samples, after: &Samples, tally: &Tally) -> Result<(), String> {
    let (b, a) = (state_samples(before), state_samples(after));
    let d = |series: &str| sample(&a, series) - sample(&b, series);
    let dt = |name: &str| total(&a, name) - total(&b, name);
    let de = |event: &str, result: &str| events(&a, event, result) - events(&b, event, result);
    let mut moved = Vec::new();
    for series in b.keys().chain(a.keys().filter(|k| !b.contains_key(*k))) {
        let (old, new) = (b.get(series).copied(), a.get(series).copied());
        if old == new {
            continue;
        }
        let name = name_of(series);
        // An entry of the recent runs may leave (only 50 are kept), and a
        // load test's info when its name changes; nothing else goes away.
        if new.is_none()
            && name != "loadimpact_test_run_info"
            && name != "loadimpact_load_test_info"
        {
            return Err(format!("{series} went away (was {old:?})"));
        }
        let counter = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .any(|suffix| name.ends_with(suffix));
        if counter && new.unwrap_or(0.0) < old.unwrap_or(0.0) {
            return Err(format!("counter {series} went down: {old:?} -> {new:?}"));
        }
        if name == "loadimpact_webhook_events_total" {
            let l = labels(series);
            if !EVENTS.contains(&l["event"].as_str()) || !RESULTS.contains(&l["result"].as_str()) {
                return Err(format!("unexpected series {series}"));
            }
        }
        // A series that appears at 0 (a new project's) moved nothing.
        if old.is_none() && new == Some(0.0) {
            continue;
        }
        moved.push((series.clone(), old, new));
    }
    let explain = || format!("answers {tally:?}; moves {moved:#?}");

    // The webhook's own counters follow the answers the client read.
    for code in CODES {
        let want = if code == 200 {
            tally.accepted + tally.duplicate + tally.ignored
        } else {
            tally.by_code.get(&code).copied().unwrap_or(0)
        };
        let got = d(&samples::requests_total(code));
        if got != want as f64 {
            return Err(format!(
                "requests_total{{code={code}}} moved by {got}, the client read {want}: {}",
                explain()
            ));
        }
    }
    let codes_read: u64 = tally.by_code.values().sum();
    if dt("loadimpact_webhook_requests_total") != codes_read as f64 {
        return Err(format!(
            "requests_total moved by {} in all, the client read {codes_read} answers: {}",
            dt("loadimpact_webhook_requests_total"),
            explain()
        ));
    }
    for (result, want) in [
        ("accepted", tally.accepted),
        ("duplicate", tally.duplicate),
        ("ignored", tally.ignored),
        ("refused", tally.refused),
    ] {
        let got: f64 = EVENTS.iter().map(|e| de(e, result)).sum();
        if got != want as f64 {
            return Err(format!(
                "events_total{{result={result}}} moved by {got}, the client read {want}: {}",
                explain()
            ));
        }
    }

    let applied = tally.accepted + tally.ignored;
    if applied == 0 {
        // Nothing was accepted: only the request, duplicate and refusal
        // counters move.
        let stray: Vec<_> = moved
            .iter()
            .filter(|(series, _, _)| {
                let name = name_of(series);
                !(name == "loadimpact_webhook_requests_total"
                    || (name == "loadimpact_webhook_events_total"
                        && ["duplicate", "refused"].contains(&labels(series)["result"].as_str())))
            })
            .collect();
        if !stray.is_empty() {
            return Err(format!(
                "no answer accepted anything, yet these moved: {stray:#?}; answers {tally:?}"
            ));
        }
        return Ok(());
    }

    let (started_acc, started_ign) = (
        de("test.started", "accepted"),
        de("test.started", "ignored"),
    );
    let finished_acc = de("test.finished", "accepted");
    let checks = [
        (
            "started_total = accepted + ignored starts",
            dt("loadimpact_test_runs_started_total") == started_acc + started_ign,
        ),
        (
            "finished_total = accepted finishes",
            dt("loadimpact_test_runs_finished_total") == finished_acc,
        ),
        (
            "load test finished_total = accepted finishes",
            dt("loadimpact_load_test_runs_finished_total") == finished_acc,
        ),
        (
            "a finish observes at most one duration",
            dt("loadimpact_test_run_duration_seconds_count") <= finished_acc,
        ),
        (
            "running moves by the accepted starts less at most the accepted finishes",
            dt("loadimpact_test_runs_running") <= started_acc
                && dt("loadimpact_test_runs_running") >= started_acc - finished_acc,
        ),
        (
            "only a finish ignores nothing: ignored results are starts",
            de("test.finished", "ignored") == 0.0
                && de("test.notification_channel", "ignored") == 0.0,
        ),
        (
            "no run expires",
            dt("loadimpact_test_runs_expired_total") == 0.0,
        ),
    ];
    for (what, ok) in checks {
        if !ok {
            return Err(format!("{what} does not hold: {}", explain()));
        }
    }
    for event in EVENTS {
        let series = samples::last_event_timestamp(event);
        if de(event, "accepted") + de(event, "ignored") == 0.0 && d(&series) != 0.0 {
            return Err(format!(
                "{series} moved with no {event} accepted: {}",
                explain()
            ));
        }
    }
    Ok(())
}

// ---- requests -----------------------------------------------------------------

/// A request before it is written out: each part can be mutated.
#[derive(Debug, Clone)]
struct Request {
    method: Vec<u8>,
    target: Vec<u8>,
    /// Empty: no version on the request line.
    version: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    framing: Framing,
}

/// How the body is delimited.
#[derive(Debug, Clone, PartialEq)]
enum Framing {
    /// `Content-Length` with the body's length.
    Length,
    /// No length and no chunking: the body is sent after the head anyway.
    None,
    /// `Content-Length` off by this much (saturating at 0).
    LengthOff(i32),
    /// `Content-Length: <text>` as given.
    LengthText(&'static str),
    /// Two `Content-Length` headers, the second off by this much.
    TwoLengths(i32),
    /// Chunked, split at these fractions (per mille) of the body.
    Chunked(Chunking),
    /// Chunked and a `Content-Length` both.
    ChunkedAndLength(Chunking),
    /// `Transfer-Encoding` with this value and the body chunked.
    TransferEncoding(&'static str, Chunking),
}

#[derive(Debug, Clone, PartialEq)]
struct Chunking {
    splits: Vec<u16>,
    upper_hex: bool,
    extension: bool,
    trailer: bool,
    /// No `0\r\n\r\n` at the end.
    unterminated: bool,
    /// One chunk's size line says one more byte than it carries.
    size_off: bool,
}

impl Chunking {
    fn plain(splits: Vec<u16>) -> Chunking {
        Chunking {
            splits,
            upper_hex: false,
            extension: false,
            trailer: false,
            unterminated: false,
            size_off: false,
        }
    }
}

fn chunked_body(body: &[u8], c: &Chunking) -> Vec<u8> {
    let mut points: Vec<usize> = c
        .splits
        .iter()
        .map(|p| body.len() * usize::from((*p).min(1000)) / 1000)
        .collect();
    points.push(body.len());
    points.sort_unstable();
    let mut out = Vec::new();
    let mut from = 0;
    for (i, to) in points.into_iter().enumerate() {
        if to <= from {
            continue;
        }
        let mut size = to - from;
        if c.size_off && i == 0 {
            size += 1;
        }
        let size = if c.upper_hex {
            format!("{size:X}")
        } else {
            format!("{size:x}")
        };
        out.extend_from_slice(size.as_bytes());
        if c.extension {
            out.extend_from_slice(b";name=value");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body[from..to]);
        out.extend_from_slice(b"\r\n");
        from = to;
    }
    if !c.unterminated {
        out.extend_from_slice(b"0\r\n");
        if c.trailer {
            out.extend_from_slice(b"X-Trailer: 1\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Request {
    fn new(headers: Vec<(String, String)>, body: Vec<u8>) -> Request {
        let mut all = vec![(b"Host".to_vec(), b"127.0.0.1".to_vec())];
        all.extend(
            headers
                .into_iter()
                .map(|(n, v)| (n.into_bytes(), v.into_bytes())),
        );
        Request {
            method: b"POST".to_vec(),
            target: b"/webhook".to_vec(),
            version: b"HTTP/1.1".to_vec(),
            headers: all,
            body,
            framing: Framing::Length,
        }
    }

    /// The bytes on the wire.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.method);
        out.push(b' ');
        out.extend_from_slice(&self.target);
        if !self.version.is_empty() {
            out.push(b' ');
            out.extend_from_slice(&self.version);
        }
        out.extend_from_slice(b"\r\n");
        let mut headers = self.headers.clone();
        let len = self.body.len() as i64;
        let length = |off: i32| (len + i64::from(off)).max(0).to_string().into_bytes();
        let body = match &self.framing {
            Framing::Length => {
                headers.push((b"Content-Length".to_vec(), length(0)));
                self.body.clone()
            }
            Framing::None => self.body.clone(),
            Framing::LengthOff(off) => {
                headers.push((b"Content-Length".to_vec(), length(*off)));
                self.body.clone()
            }
            Framing::LengthText(text) => {
                headers.push((b"Content-Length".to_vec(), text.as_bytes().to_vec()));
                self.body.clone()
            }
            Framing::TwoLengths(off) => {
                headers.push((b"Content-Length".to_vec(), length(0)));
                headers.push((b"Content-Length".to_vec(), length(*off)));
                self.body.clone()
            }
            Framing::Chunked(c) => {
                headers.push((b"Transfer-Encoding".to_vec(), b"chunked".to_vec()));
                chunked_body(&self.body, c)
            }
            Framing::ChunkedAndLength(c) => {
                headers.push((b"Transfer-Encoding".to_vec(), b"chunked".to_vec()));
                headers.push((b"Content-Length".to_vec(), length(0)));
                chunked_body(&self.body, c)
            }
            Framing::TransferEncoding(value, c) => {
                headers.push((b"Transfer-Encoding".to_vec(), value.as_bytes().to_vec()));
                chunked_body(&self.body, c)
            }
        };
        for (name, value) in &headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        out
    }
}

// ---- deliveries of the mutated cases ----------------------------------------

/// A valid delivery to start from. Its ids come from small pools, so that
/// starts, finishes and repeats of the same runs and ids meet; the clean
/// cases use ids these never reach.
#[derive(Debug, Clone)]
struct Base {
    k6: bool,
    /// 0 start, 1 finish, 2 the Test Hook (Load Impact only).
    event: u8,
    run: u64,
    org: u64,
    project: u64,
    load_test: u64,
    delivery_id: u32,
    event_id: u32,
    /// Index into `LEGACY_FINISHES` or `K6_FINISHES`.
    finish: usize,
    with_errors: bool,
}

const LEGACY_FINISHES: [(i64, Option<&str>); 5] = [
    (3, Some("Finished")),
    (12, Some("Failed threshold")),
    (5, Some("Aborted by user")),
    (42, None),
    (8, Some("Aborting by script error")),
];
const K6_FINISHES: [&str; 5] = [
    "test.finished.finished",
    "test.finished.failed",
    "test.finished.aborted_user",
    "test.finished.timed_out",
    "test.finished.all",
];

impl Base {
    fn delivery(&self) -> (Vec<(String, String)>, Value) {
        let run = Run::new(self.org, self.project, self.load_test, self.run);
        let id = format!("fz-{}", self.delivery_id);
        if !self.k6 {
            let body = match self.event {
                0 => run.started(),
                1 => {
                    let (status, text) = LEGACY_FINISHES[self.finish % LEGACY_FINISHES.len()];
                    run.finished(status, text)
                }
                _ => test_hook(),
            };
            let event = body["event"].as_str().unwrap_or_default().to_owned();
            return (headers(&event, &id), body);
        }
        let (event, status, result, ended) = if self.event == 0 {
            ("test.started", 2, None, Value::Null)
        } else {
            (
                K6_FINISHES[self.finish % K6_FINISHES.len()],
                3,
                Some(0),
                json!("2024-05-06T10:01:30Z"),
            )
        };
        let mut body = run.k6(event, status, result, "2024-05-06T10:00:00Z", ended);
        body["event"]["id"] = json!(format!("fz-ev-{}", self.event_id));
        if self.with_errors {
            body["errors"] =
                json!([{"code": 1001, "detail": "x", "created": "2024-05-06T10:00:05Z"}]);
        }
        let short = if self.event == 0 {
            "test.started"
        } else {
            "test.finished"
        };
        (k6_headers(short, &id), body)
    }
}

fn base() -> impl Strategy<Value = Base> {
    (
        any::<bool>(),
        prop_oneof![4 => Just(0u8), 4 => Just(1u8), 1 => Just(2u8)],
        1u64..300,
        1u64..=2,
        // Now and then a project or load test of its own, up to the caps.
        prop_oneof![9 => 10u64..=12, 1 => 1000u64..1100],
        prop_oneof![9 => 20u64..=23, 1 => 5000u64..5100],
        0u32..400,
        0u32..400,
        0usize..5,
        any::<bool>(),
    )
        .prop_map(
            |(
                k6,
                event,
                run,
                org,
                project,
                load_test,
                delivery_id,
                event_id,
                finish,
                with_errors,
            )| {
                Base {
                    k6,
                    event: if k6 { event.min(1) } else { event },
                    run,
                    org,
                    project,
                    load_test,
                    delivery_id,
                    event_id,
                    finish,
                    with_errors,
                }
            },
        )
}

/// Where in a body a JSON mutation lands (either format's fields, and a few
/// it has never heard of).
const PATHS: [&str; 33] = [
    "event",
    "status",
    "status_text",
    "user_id",
    "name",
    "organization_id",
    "project_id",
    "load_test_id",
    "load_test_run_id",
    "test",
    "test.organization_id",
    "test.project_id",
    "test.id",
    "test.load_test_id",
    "test.status",
    "test.status_text",
    "test.result",
    "test.name",
    "test.was_scheduled",
    "test.started",
    "test.ended",
    "test.url",
    "test.load_test_url",
    "event.id",
    "event.type",
    "user",
    "user.id",
    "errors",
    "errors.0.code",
    "errors.0.created",
    "errors.0.detail",
    "extra",
    "test.extra.deep",
];

/// JSON text (valid or not) to put where a value was.
fn raw_value() -> impl Strategy<Value = String> {
    let fixed: &[&str] = &[
        "null",
        "true",
        "false",
        "\"\"",
        "\"12\"",
        "[]",
        "{}",
        "[1]",
        "{\"a\":1}",
        "-1",
        "0",
        "-0",
        "1.5",
        "1.0",
        "1e400",
        "-1e400",
        "1e-400",
        "1E2",
        "0.0",
        "1e19",
        "18446744073709551615",
        "18446744073709551616",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "9007199254740993",
        "123456789012345678901234567890",
        "\"\\ud800\"",
        "\"\\udc00x\"",
        "\"\\u0000\"",
        "\"é\"",
        "\"\\\"\"",
        "\"test.started\"",
        "\"test.finished\"",
        "\"TEST.STARTED\"",
        "\" test.started \"",
        "\"<any>\"",
        "\"test.ended\"",
        "\"test.finished.aborted_user\"",
        "\"test.notification_channel\"",
        "\"2024-05-06T10:00:00Z\"",
        "\"9999-12-31T23:59:59Z\"",
        "\"1970-01-01T00:00:00Z\"",
        "\"0000-01-01T00:00:00Z\"",
        "\"2024-05-06 10:00:00.250\"",
        "NaN",
        "Infinity",
        "01",
        "+1",
        "1.",
        ".5",
        "0x10",
        "'x'",
        "undefined",
        "\"unterminated",
        "[1,",
        "{\"a\"}",
        "[{\"code\":\"x\"}]",
        "[{\"code\":1e400}]",
        "[1,2]",
        "[null]",
    ];
    prop_oneof![
        6 => proptest::sample::select(fixed).prop_map(str::to_owned),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => (0u64..100_000).prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| f.to_string()),
        1 => "[a-z0-9 ._-]{0,12}".prop_map(|s| format!("\"{s}\"")),
        1 => (1usize..600).prop_map(|n| "9".repeat(n)),
        1 => prop_oneof![Just(100usize), Just(127), Just(128), Just(129), Just(2000)]
            .prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        1 => prop_oneof![Just(100usize), Just(129), Just(5000)]
            .prop_map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))),
        1 => prop_oneof![Just(1000usize), Just(60_000), Just(70_000)]
            .prop_map(|n| format!("\"{}\"", "a".repeat(n))),
    ]
}

#[derive(Debug, Clone)]
enum JsonMut {
    Set(usize, String),
    Remove(usize),
    /// Serialized with indentation and newlines.
    Pretty,
}

#[derive(Debug, Clone)]
enum ByteMut {
    /// Keep this fraction (per mille) of the body.
    Truncate(u16),
    Flip(u16, u8),
    Insert(u16, Vec<u8>),
    Delete(u16, u16),
    Prefix(Vec<u8>),
    /// The same key twice (the first one kept is the later one).
    DuplicateKey(String),
    Replace(Vec<u8>),
}

#[derive(Debug, Clone)]
enum HeaderMut {
    Remove(usize),
    Duplicate(usize),
    /// 0 lower, 1 upper, 2 alternating case of the name.
    Recase(usize, u8),
    SetValue(usize, Vec<u8>),
    Add(Vec<u8>, Vec<u8>),
    /// Many headers of their own.
    Many(usize),
    /// `Name : value`.
    SpaceBeforeColon(usize),
    /// The value continued on a folded line.
    Fold(usize),
}

#[derive(Debug, Clone)]
enum RawMut {
    /// Keep this fraction (per mille) of the whole request.
    Truncate(u16),
    /// Flip a byte of the head.
    FlipHead(u16, u8),
    /// Bare `\n` line ends in the head.
    LfOnly,
    LeadingCrlf,
}

#[derive(Debug, Clone)]
enum Mutation {
    Json(JsonMut),
    Bytes(ByteMut),
    Header(HeaderMut),
    Framing(Framing),
    Method(Vec<u8>),
    Target(Vec<u8>),
    Version(Vec<u8>),
    Raw(RawMut),
}

fn header_name() -> impl Strategy<Value = Vec<u8>> {
    let fixed: &[&str] = &[
        "Content-Type",
        "Content-Length",
        "Transfer-Encoding",
        "X-LoadImpact-Event",
        "X-LoadImpact-ID",
        "X-k6cloud-Event",
        "X-k6cloud-ID",
        "User-Agent",
        "Host",
        "Connection",
        "Expect",
        "Accept-Encoding",
        "Content-Encoding",
        "Upgrade",
        "Authorization",
        "X-Webhook-Token",
    ];
    prop_oneof![
        8 => proptest::sample::select(fixed).prop_map(|s| s.as_bytes().to_vec()),
        1 => "[A-Za-z0-9-]{1,20}".prop_map(String::into_bytes),
        1 => prop_oneof![
            Just(b"X Bad".to_vec()),
            Just(Vec::new()),
            Just(b"X-\x00".to_vec()),
            Just("Ünïcode".as_bytes().to_vec()),
            Just(b"X-\xff".to_vec()),
        ],
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    let fixed: &[&str] = &[
        "",
        " ",
        "application/json",
        "text/plain",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/vnd.loadimpact+json",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "test.started",
        "test.finished",
        "test.notification_channel",
        "test.finished.aborted_user",
        "test.ended",
        "test.started.all",
        "<any>",
        "K6CloudWebHook",
        "LoadImpactWebHook/1.0",
        "chunked",
        "gzip",
        "close",
        "keep-alive",
        "100-continue",
        "h2c",
        "0",
        "-1",
        "99999999999999999999",
        "fz-1",
        "fz-ev-1",
    ];
    prop_oneof![
        8 => proptest::sample::select(fixed).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop_oneof![Just(1000usize), Just(8000), Just(20_000), Just(100_000)]
            .prop_map(|n| vec![b'a'; n]),
        1 => prop_oneof![
            Just(b"\xff\xfe".to_vec()),
            Just(b"\xc3\x28".to_vec()),
            Just(b"ok\x01".to_vec()),
            Just(b"\x7f".to_vec()),
            Just("é".as_bytes().to_vec()),
        ],
        1 => proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

fn method() -> impl Strategy<Value = Vec<u8>> {
    let fixed: &[&str] = &[
        "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "post", "P0ST", "",
        "PRI",
    ];
    prop_oneof![
        6 => proptest::sample::select(fixed).prop_map(|s| s.as_bytes().to_vec()),
        1 => "[A-Z]{1,12}".prop_map(String::into_bytes),
        1 => Just(vec![b'P'; 2000]),
    ]
}

fn target() -> impl Strategy<Value = Vec<u8>> {
    let fixed: &[&str] = &[
        "/webhook?x=1",
        "/webhook?token=abc",
        "/webhook?token=",
        "/webhook?",
        "/webhook/",
        "/webhook/abc",
        "/webhook/abc/def",
        "/webhook/%2e%2e",
        "/webhook/..",
        "//webhook",
        "/WEBHOOK",
        "/web%68ook",
        "/webhook%3Fx",
        "/webhook#frag",
        "/webhook;x",
        "*",
        "http://127.0.0.1/webhook",
        "http://elsewhere.example/webhook?x=1",
        "/webhook/../webhook",
        "/./webhook",
        "/metrics",
        "/-/healthy",
        "/-/ready",
        "/api/v1/runs",
        "/",
        "",
        "webhook",
        "/webhook\x00",
        "/web hook",
        // `@T@` is the token (also when the exporter has none).
        "/webhook/@T@",
        "/webhook?token=@T@",
        "/webhook/@T@?x=1",
        "/webhook/@T@/more",
        "/webhook/@T@x",
        "/webhook/x@T@",
        "/webhook?x=1&token=@T@",
        "/webhook?token=wrong&token=@T@",
        "/webhook?token=@T@&token=wrong",
        "/webhook/?token=@T@",
        "/webhook/@T@%20",
        "/WEBHOOK/@T@",
        "http://127.0.0.1/webhook/@T@",
        "/webhook/@T@#frag",
        "/metrics/@T@",
        "/other/@T@",
    ];
    prop_oneof![
        8 => proptest::sample::select(fixed).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop_oneof![Just(1000usize), Just(10_000), Just(100_000)]
            .prop_map(|n| format!("/webhook/{}", "a".repeat(n)).into_bytes()),
        1 => prop_oneof![Just(1000usize), Just(100_000)]
            .prop_map(|n| format!("/webhook?{}", "q=1&".repeat(n / 4)).into_bytes()),
        1 => Just(b"/webhook/\xff\xfe".to_vec()),
        1 => "/[a-zA-Z0-9%/?=&._~-]{0,40}".prop_map(String::into_bytes),
    ]
}

fn version() -> impl Strategy<Value = Vec<u8>> {
    let fixed: &[&str] = &[
        "HTTP/1.0",
        "HTTP/2.0",
        "HTTP/0.9",
        "HTTP/1.2",
        "HTTP/3",
        "",
        "http/1.1",
        "HTTP/1.1 extra",
        "HTTP/1.1\x00",
    ];
    proptest::sample::select(fixed).prop_map(|s| s.as_bytes().to_vec())
}

fn chunking() -> impl Strategy<Value = Chunking> {
    (
        proptest::collection::vec(0u16..=1000, 0..6),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(splits, upper_hex, extension, trailer, unterminated, size_off)| Chunking {
                splits,
                upper_hex,
                extension,
                trailer,
                unterminated,
                size_off,
            },
        )
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        Just(Framing::None),
        (-50i32..50).prop_map(Framing::LengthOff),
        proptest::sample::select(
            &[
                "abc",
                "-1",
                "+5",
                " 5",
                "5,5",
                "0x10",
                "99999999999999999999",
                "18446744073709551616",
                "",
                "65537",
                "65536",
            ][..]
        )
        .prop_map(Framing::LengthText),
        (-3i32..3).prop_map(Framing::TwoLengths),
        chunking().prop_map(Framing::Chunked),
        chunking().prop_map(Framing::ChunkedAndLength),
        (
            proptest::sample::select(
                &[
                    "gzip, chunked",
                    "chunked, gzip",
                    "CHUNKED",
                    "chunked, chunked",
                    "identity"
                ][..]
            ),
            chunking()
        )
            .prop_map(|(v, c)| Framing::TransferEncoding(v, c)),
    ]
}

fn per_mille() -> impl Strategy<Value = u16> {
    0u16..=1000
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => prop_oneof![
            4 => (0..PATHS.len(), raw_value()).prop_map(|(p, v)| JsonMut::Set(p, v)),
            2 => (0..PATHS.len()).prop_map(JsonMut::Remove),
            1 => Just(JsonMut::Pretty),
        ]
        .prop_map(Mutation::Json),
        3 => prop_oneof![
            (per_mille()).prop_map(ByteMut::Truncate),
            (per_mille(), 1u8..=255).prop_map(|(at, x)| ByteMut::Flip(at, x)),
            (per_mille(), prop_oneof![
                proptest::collection::vec(any::<u8>(), 1..8),
                Just(b"\xff".to_vec()),
                Just(b"\xc0\xaf".to_vec()),
                Just(b"\xed\xa0\x80".to_vec()),
                Just(b"\x00".to_vec()),
            ])
                .prop_map(|(at, b)| ByteMut::Insert(at, b)),
            (per_mille(), 1u16..50).prop_map(|(at, n)| ByteMut::Delete(at, n)),
            prop_oneof![
                Just(b"\xef\xbb\xbf".to_vec()),
                Just(b" \n\t".to_vec()),
                Just(b"\x00".to_vec()),
            ]
            .prop_map(ByteMut::Prefix),
            (proptest::sample::select(&PATHS[..9]), raw_value())
                .prop_map(|(k, v)| ByteMut::DuplicateKey(format!("\"{k}\":{v},"))),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(ByteMut::Replace),
        ]
        .prop_map(Mutation::Bytes),
        4 => prop_oneof![
            (0usize..8).prop_map(HeaderMut::Remove),
            (0usize..8).prop_map(HeaderMut::Duplicate),
            (0usize..8, 0u8..3).prop_map(|(i, m)| HeaderMut::Recase(i, m)),
            (0usize..8, header_value()).prop_map(|(i, v)| HeaderMut::SetValue(i, v)),
            (header_name(), header_value()).prop_map(|(n, v)| HeaderMut::Add(n, v)),
            prop_oneof![Just(50usize), Just(99), Just(101), Just(500)].prop_map(HeaderMut::Many),
            (0usize..8).prop_map(HeaderMut::SpaceBeforeColon),
            (0usize..8).prop_map(HeaderMut::Fold),
        ]
        .prop_map(Mutation::Header),
        2 => framing().prop_map(Mutation::Framing),
        1 => method().prop_map(Mutation::Method),
        2 => target().prop_map(Mutation::Target),
        1 => version().prop_map(Mutation::Version),
        1 => prop_oneof![
            per_mille().prop_map(RawMut::Truncate),
            (per_mille(), 1u8..=255).prop_map(|(at, x)| RawMut::FlipHead(at, x)),
            Just(RawMut::LfOnly),
            Just(RawMut::LeadingCrlf),
        ]
        .prop_map(Mutation::Raw),
    ]
}

/// Sets `path` (dotted; a number indexes an array) in `value` to `new`,
/// making the containers on the way.
fn set_path(value: &mut Value, path: &str, new: Value) {
    let mut at = value;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if let Ok(index) = part.parse::<usize>() {
            if !at.is_array() {
                *at = json!([]);
            }
            let Some(array) = at.as_array_mut() else {
                return;
            };
            while array.len() <= index {
                array.push(json!({}));
            }
            at = &mut array[index];
        } else {
            if !at.is_object() {
                *at = json!({});
            }
            let Some(object) = at.as_object_mut() else {
                return;
            };
            at = object.entry(*part).or_insert(Value::Null);
        }
        if last {
            *at = new;
            return;
        }
    }
}

fn remove_path(value: &mut Value, path: &str) {
    let mut at = value;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if let Ok(index) = part.parse::<usize>() {
            let Some(array) = at.as_array_mut() else {
                return;
            };
            if last {
                if index < array.len() {
                    array.remove(index);
                }
                return;
            }
            let Some(next) = array.get_mut(index) else {
                return;
            };
            at = next;
        } else {
            let Some(object) = at.as_object_mut() else {
                return;
            };
            if last {
                object.remove(*part);
                return;
            }
            let Some(next) = object.get_mut(*part) else {
                return;
            };
            at = next;
        }
    }
}

/// `target` with the token where it says `@T@`.
fn with_token(target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(target.len());
    let mut rest = target;
    while let Some(i) = find(rest, b"@T@") {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(TOKEN.as_bytes());
        rest = &rest[i + 3..];
    }
    out.extend_from_slice(rest);
    out
}

fn at_fraction(len: usize, per_mille: u16) -> usize {
    len * usize::from(per_mille.min(1000)) / 1000
}

fn recase(name: &[u8], mode: u8) -> Vec<u8> {
    name.iter()
        .enumerate()
        .map(|(i, b)| match mode {
            0 => b.to_ascii_lowercase(),
            1 => b.to_ascii_uppercase(),
            _ if i % 2 == 0 => b.to_ascii_lowercase(),
            _ => b.to_ascii_uppercase(),
        })
        .collect()
}

/// A mutated delivery: the bytes to send.
#[derive(Debug, Clone)]
struct Mutated {
    base: Base,
    mutations: Vec<Mutation>,
}

impl Mutated {
    /// The request, sent to `target` unless a mutation says otherwise.
    fn to_bytes(&self, target: &[u8]) -> Vec<u8> {
        let (headers, mut body) = self.base.delivery();
        // JSON values first: raw text goes in through placeholders.
        let mut raws = Vec::new();
        let mut pretty = false;
        for m in &self.mutations {
            match m {
                Mutation::Json(JsonMut::Set(path, raw)) => {
                    set_path(
                        &mut body,
                        PATHS[*path],
                        json!(format!("@@RAW{}@@", raws.len())),
                    );
                    raws.push(raw.clone());
                }
                Mutation::Json(JsonMut::Remove(path)) => remove_path(&mut body, PATHS[*path]),
                Mutation::Json(JsonMut::Pretty) => pretty = true,
                _ => {}
            }
        }
        let mut text = if pretty {
            serde_json::to_string_pretty(&body)
        } else {
            serde_json::to_string(&body)
        }
        .unwrap_or_default();
        for (i, raw) in raws.iter().enumerate() {
            text = text.replace(&format!("\"@@RAW{i}@@\""), raw);
        }
        let mut bytes = text.into_bytes();
        for m in &self.mutations {
            let Mutation::Bytes(m) = m else { continue };
            match m {
                ByteMut::Truncate(keep) => bytes.truncate(at_fraction(bytes.len(), *keep)),
                ByteMut::Flip(at, x) => {
                    let i = at_fraction(bytes.len(), *at);
                    if let Some(b) = bytes.get_mut(i) {
                        *b ^= x;
                    }
                }
                ByteMut::Insert(at, new) => {
                    let i = at_fraction(bytes.len(), *at);
                    bytes.splice(i..i, new.iter().copied());
                }
                ByteMut::Delete(at, n) => {
                    let i = at_fraction(bytes.len(), *at);
                    let j = (i + usize::from(*n)).min(bytes.len());
                    bytes.drain(i..j);
                }
                ByteMut::Prefix(p) => {
                    bytes.splice(0..0, p.iter().copied());
                }
                ByteMut::DuplicateKey(pair) => {
                    if let Some(i) = bytes.iter().position(|b| *b == b'{') {
                        bytes.splice(i + 1..i + 1, pair.bytes());
                    }
                }
                ByteMut::Replace(new) => bytes = new.clone(),
            }
        }
        let mut request = Request::new(headers, bytes);
        request.target = target.to_vec();
        for m in &self.mutations {
            let Mutation::Header(m) = m else { continue };
            let n = request.headers.len();
            match m {
                HeaderMut::Remove(i) if n > 0 => {
                    request.headers.remove(i % n);
                }
                HeaderMut::Duplicate(i) if n > 0 => {
                    let h = request.headers[i % n].clone();
                    request.headers.push(h);
                }
                HeaderMut::Recase(i, mode) if n > 0 => {
                    let name = recase(&request.headers[i % n].0, *mode);
                    request.headers[i % n].0 = name;
                }
                HeaderMut::SetValue(i, v) if n > 0 => request.headers[i % n].1 = v.clone(),
                HeaderMut::Add(name, v) => request.headers.push((name.clone(), v.clone())),
                HeaderMut::Many(count) => {
                    for k in 0..*count {
                        request
                            .headers
                            .push((format!("X-Many-{k}").into_bytes(), b"1".to_vec()));
                    }
                }
                HeaderMut::SpaceBeforeColon(i) if n > 0 => request.headers[i % n].0.push(b' '),
                HeaderMut::Fold(i) if n > 0 => {
                    request.headers[i % n].1.extend_from_slice(b"\r\n folded")
                }
                _ => {}
            }
        }
        for m in &self.mutations {
            match m {
                Mutation::Framing(f) => request.framing = f.clone(),
                Mutation::Method(v) => request.method = v.clone(),
                Mutation::Target(v) => request.target = with_token(v),
                Mutation::Version(v) => request.version = v.clone(),
                _ => {}
            }
        }
        let mut wire = request.to_bytes();
        let head_end = find(&wire, b"\r\n\r\n").map_or(wire.len(), |i| i + 4);
        for m in &self.mutations {
            let Mutation::Raw(m) = m else { continue };
            match m {
                RawMut::Truncate(keep) => wire.truncate(at_fraction(wire.len(), *keep)),
                RawMut::FlipHead(at, x) => {
                    let i = at_fraction(head_end.min(wire.len()), *at);
                    if let Some(b) = wire.get_mut(i) {
                        *b ^= x;
                    }
                }
                RawMut::LfOnly => {
                    let (head, rest) = wire.split_at(head_end.min(wire.len()));
                    let mut out: Vec<u8> = Vec::with_capacity(wire.len());
                    let mut i = 0;
                    while i < head.len() {
                        if head[i..].starts_with(b"\r\n") {
                            out.push(b'\n');
                            i += 2;
                        } else {
                            out.push(head[i]);
                            i += 1;
                        }
                    }
                    out.extend_from_slice(rest);
                    wire = out;
                }
                RawMut::LeadingCrlf => {
                    wire.splice(0..0, b"\r\n".iter().copied());
                }
            }
        }
        wire
    }
}

fn mutated() -> impl Strategy<Value = Mutated> {
    (base(), proptest::collection::vec(mutation(), 1..5))
        .prop_map(|(base, mutations)| Mutated { base, mutations })
}

/// Random bytes, after a request line or not.
fn random_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just(Vec::new()),
            Just(b"POST /webhook HTTP/1.1\r\n".to_vec()),
            Just(b"POST /webhook HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n".to_vec()),
        ],
        proptest::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(mut prefix, bytes)| {
            prefix.extend(bytes);
            prefix
        })
}

// ---- clean cases ----------------------------------------------------------------

/// The organization of the clean cases' runs: no mutation of the small ids
/// above reaches it.
const CLEAN_ORG: u64 = 8_123_456_789_012_345;
/// The clean runs' ids start here.
const CLEAN_RUN: u64 = 5_000_000_000_000_000;

/// Variations a sender may make that change nothing of a delivery.
#[derive(Debug, Clone)]
enum Benign {
    LowerCaseNames,
    UpperCaseNames,
    ExtraHeaders,
    Chunked(Vec<u16>),
    Query,
    AbsoluteForm,
    Http10,
    ExtraField,
    Pretty,
    Expect100,
    Charset,
    KeepAlive,
}

/// A valid delivery whose answer the model knows.
#[derive(Debug, Clone)]
struct Clean {
    /// The format of a new run.
    k6: bool,
    /// 0 start a new run, 1 finish a running one, 2 send a delivery again
    /// (same ids), 3 send a known run's start again (new ids), 4 finish a new
    /// run before its start, 5 start such a run.
    op: u8,
    /// Which run or delivery the op takes.
    pick: usize,
    benign: Vec<Benign>,
}

fn clean() -> impl Strategy<Value = Clean> {
    let benign = prop_oneof![
        Just(Benign::LowerCaseNames),
        Just(Benign::UpperCaseNames),
        Just(Benign::ExtraHeaders),
        proptest::collection::vec(0u16..=1000, 0..4).prop_map(Benign::Chunked),
        Just(Benign::Query),
        Just(Benign::AbsoluteForm),
        Just(Benign::Http10),
        Just(Benign::ExtraField),
        Just(Benign::Pretty),
        Just(Benign::Expect100),
        Just(Benign::Charset),
        Just(Benign::KeepAlive),
    ];
    (
        any::<bool>(),
        prop_oneof![4 => Just(0u8), 3 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8), 1 => Just(4u8), 1 => Just(5u8)],
        any::<usize>(),
        proptest::collection::vec(benign, 0..4),
    )
        .prop_map(|(k6, op, pick, benign)| Clean {
            k6,
            op,
            pick,
            benign,
        })
}

#[derive(Debug, Clone)]
struct CleanRun {
    n: u64,
    k6: bool,
}

impl CleanRun {
    fn run(&self) -> Run {
        Run::new(
            CLEAN_ORG,
            CLEAN_ORG + 1 + self.n % 4,
            CLEAN_ORG + 10 + self.n % 3,
            CLEAN_RUN + self.n,
        )
    }

    fn trigger(&self) -> &'static str {
        if self.k6 {
            "manual"
        } else {
            "unknown"
        }
    }

    fn outcome(&self) -> &'static str {
        if self.k6 {
            "aborted_by_user"
        } else {
            "finished"
        }
    }
}

/// What the clean cases have done so far.
#[derive(Debug, Default)]
struct CleanModel {
    next_run: u64,
    next_delivery: u64,
    running: Vec<CleanRun>,
    /// Started, then finished (or started after their finish).
    ended: Vec<CleanRun>,
    /// Finished, never started.
    finished_first: Vec<CleanRun>,
    /// Deliveries sent: headers and body.
    sent: Vec<(Vec<(String, String)>, Value)>,
    /// Starts counted (accepted or ignored) and finishes accepted.
    starts: u64,
    finishes: u64,
}

/// What a clean case must get and move.
struct Expected {
    result: &'static str,
    /// `(series, delta)` of the clean organization's run series.
    moves: Vec<(String, f64)>,
}

impl CleanModel {
    fn delivery(&mut self, run: &CleanRun, start: bool) -> (Vec<(String, String)>, Value) {
        self.next_delivery += 1;
        let id = format!("clean-{}", self.next_delivery);
        let r = run.run();
        let delivery = if run.k6 {
            let mut body = if start {
                r.k6("test.started", 2, None, "2024-05-06T10:00:00Z", Value::Null)
            } else {
                r.k6(
                    "test.finished.aborted_user",
                    5,
                    Some(0),
                    "2024-05-06T10:00:00Z",
                    json!("2024-05-06T10:01:30Z"),
                )
            };
            body["event"]["id"] = json!(format!("clean-ev-{}", self.next_delivery));
            let short = if start {
                "test.started"
            } else {
                "test.finished"
            };
            (k6_headers(short, &id), body)
        } else if start {
            (headers("test.started", &id), r.started())
        } else {
            (
                headers("test.finished", &id),
                r.finished(3, Some("Finished")),
            )
        };
        self.sent.push(delivery.clone());
        delivery
    }

    fn new_run(&mut self, k6: bool) -> CleanRun {
        self.next_run += 1;
        CleanRun {
            n: self.next_run,
            k6,
        }
    }

    /// Applies `case` to the model: the delivery to send and what it must do.
    fn next(&mut self, case: &Clean) -> ((Vec<(String, String)>, Value), Expected) {
        let mut op = case.op;
        if op == 1 && self.running.is_empty() || op == 2 && self.sent.is_empty() {
            op = 0;
        }
        if op == 3 && self.running.is_empty() && self.ended.is_empty() {
            op = 0;
        }
        if op == 5 && self.finished_first.is_empty() {
            op = 4;
        }
        let started = |run: &CleanRun| (run.run().started_total_by(run.trigger()), 1.0);
        match op {
            0 => {
                let run = self.new_run(case.k6);
                let delivery = self.delivery(&run, true);
                let moves = vec![started(&run), (run.run().running(), 1.0)];
                self.starts += 1;
                self.running.push(run);
                (
                    delivery,
                    Expected {
                        result: "accepted",
                        moves,
                    },
                )
            }
            1 => {
                let run = self.running.remove(case.pick % self.running.len());
                let delivery = self.delivery(&run, false);
                let moves = vec![
                    (run.run().finished_total(run.outcome()), 1.0),
                    (run.run().running(), -1.0),
                ];
                self.finishes += 1;
                self.ended.push(run);
                (
                    delivery,
                    Expected {
                        result: "accepted",
                        moves,
                    },
                )
            }
            2 => {
                let delivery = self.sent[case.pick % self.sent.len()].clone();
                (
                    delivery,
                    Expected {
                        result: "duplicate",
                        moves: Vec::new(),
                    },
                )
            }
            3 => {
                let known: Vec<CleanRun> =
                    self.running.iter().chain(&self.ended).cloned().collect();
                let run = known[case.pick % known.len()].clone();
                let delivery = self.delivery(&run, true);
                (
                    delivery,
                    Expected {
                        result: "duplicate",
                        moves: Vec::new(),
                    },
                )
            }
            4 => {
                let run = self.new_run(case.k6);
                let delivery = self.delivery(&run, false);
                let moves = vec![(run.run().finished_total(run.outcome()), 1.0)];
                self.finishes += 1;
                self.finished_first.push(run);
                (
                    delivery,
                    Expected {
                        result: "accepted",
                        moves,
                    },
                )
            }
            _ => {
                let run = self
                    .finished_first
                    .remove(case.pick % self.finished_first.len());
                let delivery = self.delivery(&run, true);
                let moves = vec![started(&run)];
                self.starts += 1;
                self.ended.push(run);
                (
                    delivery,
                    Expected {
                        result: "ignored",
                        moves,
                    },
                )
            }
        }
    }
}

/// The request of a clean delivery with its benign variations.
fn clean_request(
    (headers, mut body): (Vec<(String, String)>, Value),
    benign: &[Benign],
    token: bool,
) -> Vec<u8> {
    let mut pretty = false;
    for b in benign {
        match b {
            Benign::ExtraField => body["fuzz_extra"] = json!({"nested": [1, "x", null, 1e300]}),
            Benign::Pretty => pretty = true,
            _ => {}
        }
    }
    let text = if pretty {
        serde_json::to_vec_pretty(&body)
    } else {
        serde_json::to_vec(&body)
    }
    .unwrap_or_default();
    let mut request = Request::new(headers, text);
    let path = if token {
        format!("/webhook/{TOKEN}")
    } else {
        "/webhook".to_owned()
    };
    request.target = path.clone().into_bytes();
    let mut http10 = false;
    for b in benign {
        match b {
            Benign::LowerCaseNames | Benign::UpperCaseNames => {
                let mode = u8::from(matches!(b, Benign::UpperCaseNames));
                for (name, _) in &mut request.headers {
                    *name = recase(name, mode);
                }
            }
            Benign::ExtraHeaders => {
                request.headers.push((b"Accept".to_vec(), b"*/*".to_vec()));
                request
                    .headers
                    .push((b"X-Forwarded-For".to_vec(), b"10.0.0.1".to_vec()));
            }
            Benign::Chunked(splits) => {
                request.framing = Framing::Chunked(Chunking::plain(splits.clone()))
            }
            Benign::Query if token => {
                request.target = format!("/webhook?source=fuzz&token={TOKEN}&x=%20y").into_bytes()
            }
            Benign::Query => request.target = b"/webhook?source=fuzz&x=%20y".to_vec(),
            Benign::AbsoluteForm => request.target = format!("http://127.0.0.1{path}").into_bytes(),
            Benign::Http10 => http10 = true,
            Benign::Expect100 => request
                .headers
                .push((b"Expect".to_vec(), b"100-continue".to_vec())),
            Benign::Charset => {
                for (name, value) in &mut request.headers {
                    if name.eq_ignore_ascii_case(b"content-type") {
                        *value = b"application/json; charset=UTF-8".to_vec();
                    }
                }
            }
            Benign::KeepAlive => request
                .headers
                .push((b"Connection".to_vec(), b"keep-alive".to_vec())),
            Benign::ExtraField | Benign::Pretty => {}
        }
    }
    if http10 {
        // HTTP/1.0 has no chunked encoding.
        request.version = b"HTTP/1.0".to_vec();
        request.framing = Framing::Length;
    }
    request.to_bytes()
}

// ---- the test ---------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Case {
    Clean(Clean),
    Mutated(Mutated),
    Random(Vec<u8>),
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        3 => clean().prop_map(Case::Clean),
        6 => mutated().prop_map(Case::Mutated),
        1 => random_bytes().prop_map(Case::Random),
    ]
}

/// What the run has seen so far.
struct Fuzz {
    port: u16,
    pid: u32,
    /// The exporter takes `TOKEN`.
    token: bool,
    started: Instant,
    /// The scrape after the last case.
    last: Samples,
    /// Every webhook answer read.
    total: Tally,
    clean: CleanModel,
    cases: u64,
    filled: u64,
    responses: BTreeMap<u16, u64>,
    /// The first failure, as it happened (before shrinking).
    first_failure: Option<String>,
    dead: bool,
}

fn scrape_text(port: u16) -> Result<String, String> {
    match http::try_get(&format!("http://127.0.0.1:{port}/metrics")) {
        Some(r) if r.status == 200 => Ok(r.body),
        Some(r) => Err(format!("GET /metrics: {} {}", r.status, r.body)),
        None => Err("GET /metrics: no answer".to_owned()),
    }
}

fn scrape(port: u16) -> Result<Samples, String> {
    scrape_text(port).map(|text| samples::parse_samples(&text, "loadimpact_"))
}

fn escaped(bytes: &[u8]) -> String {
    let shown: Vec<u8> = bytes.iter().take(4000).copied().collect();
    let mut out = String::new();
    for b in shown {
        out.extend(std::ascii::escape_default(b).map(char::from));
    }
    if bytes.len() > 4000 {
        out.push_str(&format!("… ({} bytes in all)", bytes.len()));
    }
    out
}

impl Fuzz {
    fn run(&mut self, case: &Case) -> Result<(), String> {
        let (wire, expected) = match case {
            Case::Clean(c) => {
                let (delivery, expected) = self.clean.next(c);
                (
                    clean_request(delivery, &c.benign, self.token),
                    Some(expected),
                )
            }
            Case::Mutated(m) => {
                let target = if self.token {
                    format!("/webhook/{TOKEN}")
                } else {
                    "/webhook".to_owned()
                };
                (m.to_bytes(target.as_bytes()), None)
            }
            Case::Random(bytes) => (bytes.clone(), None),
        };
        let what = || format!("request: b\"{}\"", escaped(&wire));
        self.cases += 1;
        let exchange = exchange(self.port, &wire);
        if has_exited(self.pid) {
            self.dead = true;
            return Err(format!("the exporter exited; {}", what()));
        }
        let after = scrape(self.port).map_err(|e| format!("{e}; {}", what()))?;
        let before = std::mem::replace(&mut self.last, after);
        let exchange = exchange.map_err(|e| format!("{e}; {}", what()))?;
        self.filled += u64::from(exchange.filled);
        for r in &exchange.responses {
            *self.responses.entry(r.status).or_default() += 1;
        }
        let tally = check_responses(&exchange).map_err(|e| format!("{e}; {}", what()))?;
        // Without the token nothing passes the webhook's door.
        if self.token && !contains(&wire, TOKEN.as_bytes()) {
            let passed: Vec<_> = exchange
                .responses
                .iter()
                .filter(|r| webhook_answer(r).is_some_and(|a| a.code != 401))
                .map(Response::summary)
                .collect();
            if !passed.is_empty() {
                return Err(format!(
                    "a request without the token got past the webhook's check: {passed:?}; {}",
                    what()
                ));
            }
        }
        self.total.merge(&tally);
        check_moves(&before, &self.last, &tally).map_err(|e| format!("{e}; {}", what()))?;
        // Whatever the deliveries say, the series stay within the caps.
        let projects = labelled(&self.last, "loadimpact_test_runs_running").len();
        let load_tests = labelled(&self.last, "loadimpact_load_test_info").len();
        if projects > MAX_PROJECTS || load_tests > MAX_LOAD_TESTS {
            return Err(format!(
                "{projects} projects (cap {MAX_PROJECTS}) and {load_tests} load tests (cap {MAX_LOAD_TESTS}) have series; {}",
                what()
            ));
        }
        if let Some(expected) = expected {
            let answers: Vec<Answer> = exchange
                .responses
                .iter()
                .filter_map(webhook_answer)
                .collect();
            let want = Answer {
                code: 200,
                result: Some(expected.result.to_owned()),
            };
            if answers != [want] {
                return Err(format!(
                    "a clean delivery must get exactly 200 {{\"result\":\"{}\"}}, got {answers:?} ({:?}); {}",
                    expected.result,
                    exchange.responses.iter().map(Response::summary).collect::<Vec<_>>(),
                    what()
                ));
            }
            let clean_series = |s: &Samples| -> Samples {
                state_samples(s)
                    .into_iter()
                    .filter(|(k, _)| {
                        k.contains(&format!("organization_id=\"{CLEAN_ORG}\""))
                            && [
                                "loadimpact_test_runs_started_total",
                                "loadimpact_test_runs_finished_total",
                                "loadimpact_test_runs_running",
                                "loadimpact_test_runs_expired_total",
                            ]
                            .contains(&name_of(k))
                    })
                    .collect()
            };
            let (b, a) = (clean_series(&before), clean_series(&self.last));
            for series in b.keys().chain(a.keys()) {
                let got = sample(&a, series) - sample(&b, series);
                let want = expected
                    .moves
                    .iter()
                    .find(|(s, _)| s == series)
                    .map_or(0.0, |(_, d)| *d);
                if got != want {
                    return Err(format!(
                        "clean delivery: {series} moved by {got}, expected {want} (expected moves {:?}); {}",
                        expected.moves,
                        what()
                    ));
                }
            }
            for (series, want) in &expected.moves {
                if !a.contains_key(series) {
                    return Err(format!(
                        "clean delivery: {series} (+{want}) is not exported"
                    ));
                }
            }
        }
        if self.cases % 10_000 == 0 {
            eprintln!(
                "fuzz_http: {} exchanges in {:.0?}, {} series",
                self.cases,
                self.started.elapsed(),
                self.last.len()
            );
        }
        if self.cases % 25 == 0 {
            let healthy = http::try_get(&format!("http://127.0.0.1:{}/-/healthy", self.port));
            if healthy.as_ref().map(|r| r.status) != Some(200) {
                return Err(format!("/-/healthy answered {healthy:?} after {}", what()));
            }
        }
        Ok(())
    }

    /// The totals against what the client read, the runs API against the
    /// clean model, the scrape through promtool.
    fn check_end(&self) {
        let text = scrape_text(self.port).expect("scrape");
        let s = samples::parse_samples(&text, "loadimpact_");
        let t = &self.total;
        assert_eq!(
            sample(&s, &samples::requests_total(200)),
            (t.accepted + t.duplicate + t.ignored) as f64,
            "200s counted against 200s read: {t:?}"
        );
        for code in CODES.into_iter().filter(|c| *c != 200) {
            assert_eq!(
                sample(&s, &samples::requests_total(code)),
                t.by_code.get(&code).copied().unwrap_or(0) as f64,
                "{code}s counted against {code}s read: {t:?}"
            );
        }
        for (result, read) in [
            ("accepted", t.accepted),
            ("duplicate", t.duplicate),
            ("ignored", t.ignored),
            ("refused", t.refused),
        ] {
            let counted: f64 = EVENTS.iter().map(|e| events(&s, e, result)).sum();
            assert_eq!(counted, read as f64, "events {result} against answers read");
        }
        let started =
            events(&s, "test.started", "accepted") + events(&s, "test.started", "ignored");
        assert_eq!(
            total(&s, "loadimpact_test_runs_started_total"),
            started,
            "every counted start was answered accepted or ignored"
        );
        assert_eq!(
            total(&s, "loadimpact_test_runs_finished_total"),
            events(&s, "test.finished", "accepted"),
            "every counted finish was answered accepted"
        );

        // The clean organization's runs are exactly the model's.
        let clean = &self.clean;
        let of_clean = |name: &str| -> f64 {
            labelled(&s, name)
                .into_iter()
                .filter(|(l, _)| l["organization_id"] == CLEAN_ORG.to_string())
                .map(|(_, v)| v)
                .sum()
        };
        assert_eq!(
            of_clean("loadimpact_test_runs_started_total"),
            clean.starts as f64
        );
        assert_eq!(
            of_clean("loadimpact_test_runs_finished_total"),
            clean.finishes as f64
        );
        assert_eq!(
            of_clean("loadimpact_test_runs_running"),
            clean.running.len() as f64
        );
        let api = http::get_ok(&format!("http://127.0.0.1:{}/api/v1/runs", self.port)).json();
        for run in &clean.running {
            let entry = api_run(&api, "running", run.run().id)
                .unwrap_or_else(|| panic!("clean run {} is not running in {api}", run.run().id));
            assert_eq!(entry["project_id"], json!(run.run().project), "{entry}");
        }
        for run in clean.ended.iter().chain(&clean.finished_first) {
            assert!(
                api_run(&api, "running", run.run().id).is_none(),
                "ended clean run {} is running",
                run.run().id
            );
        }
        let running = api["running"].as_array().map_or(0, Vec::len);
        assert_eq!(
            running as f64,
            total(&s, "loadimpact_test_runs_running"),
            "the runs API and the running gauge"
        );

        let promtool = require_tool("promtool");
        let output = run_with_input(&promtool, &["check", "metrics"], text.as_bytes());
        assert!(
            output.status.success(),
            "promtool check metrics:\n{}",
            describe(&output)
        );
    }
}

fn cases_to_run() -> u32 {
    match std::env::var("FUZZ_HTTP_CASES") {
        Ok(n) => n
            .parse()
            .unwrap_or_else(|_| panic!("FUZZ_HTTP_CASES={n:?} is not a number of cases")),
        Err(_) => DEFAULT_CASES,
    }
}

/// Runs the cases against `exporter` (which takes `TOKEN` if `token`).
fn fuzz(exporter: &Exporter, token: bool) {
    let cases = cases_to_run();
    let started = Instant::now();
    let mut fuzz = Fuzz {
        port: exporter.port(),
        pid: exporter.pid(),
        token,
        started,
        last: exporter.samples(),
        total: Tally::default(),
        clean: CleanModel::default(),
        cases: 0,
        filled: 0,
        responses: BTreeMap::new(),
        first_failure: None,
        dead: false,
    };
    // The clean cases' projects and load tests first, before the fuzz
    // reaches the caps.
    for _ in 0..12 {
        let warm_up = Clean {
            k6: false,
            op: 0,
            pick: 0,
            benign: Vec::new(),
        };
        if let Err(e) = fuzz.run(&Case::Clean(warm_up)) {
            panic!("a clean start before the fuzz: {e}");
        }
    }
    let fuzz = RefCell::new(fuzz);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/fuzz_http.txt"
        )))),
        max_shrink_iters: 500,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        let mut fuzz = fuzz.borrow_mut();
        if fuzz.dead {
            return Err(TestCaseError::fail(
                "the exporter died in an earlier case (see the first failure)",
            ));
        }
        fuzz.run(&case).map_err(|e| {
            if fuzz.first_failure.is_none() {
                fuzz.first_failure = Some(format!("{e}\ncase: {case:?}"));
            }
            TestCaseError::fail(e)
        })
    });
    let fuzz = fuzz.into_inner();
    eprintln!(
        "fuzz_http: {} exchanges ({cases} cases) in {:.1?}, {} series ({} projects, {} load tests) at the end; {} needed the filler; statuses {:?}; webhook answers {:?}",
        fuzz.cases,
        started.elapsed(),
        fuzz.last.len(),
        labelled(&fuzz.last, "loadimpact_test_runs_running").len(),
        labelled(&fuzz.last, "loadimpact_load_test_info").len(),
        fuzz.filled,
        fuzz.responses,
        fuzz.total
    );
    if let Err(e) = result {
        panic!(
            "{e}\n\nfirst failure, before shrinking:\n{}",
            fuzz.first_failure.unwrap_or_default()
        );
    }
    fuzz.check_end();
}

#[test]
fn malformed_requests_get_clean_answers_and_move_only_what_they_acknowledge() {
    let exporter = Exporter::builder().args(caps()).start();
    fuzz(&exporter, false);
}

#[test]
fn with_a_token_only_requests_that_carry_it_move_anything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).expect("write the token file");
    let exporter = Exporter::builder()
        .args(caps())
        .arg(format!("--webhook.token-file={}", tokens.display()))
        .start();
    fuzz(&exporter, true);
}
