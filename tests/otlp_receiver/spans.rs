//! What the span of a run must say, and the helpers of the OpenTelemetry
//! tests that check it: the documented ids (SHA-256 of the run id), the
//! client's time around each webhook (a span's start and end must fall
//! within), every attribute, status, event and resource, and "exactly once"
//! across everything a receiver got.
//!
//! The exporter keeps times in milliseconds, so a bracket's lower bound is the
//! client's time just before the request, truncated to the millisecond.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{attributes, Attr, ReceivedSpan, Receiver};
use crate::support::deliveries::Run;
use crate::support::exporter::{Exporter, Launch};
use crate::support::{now_ns, wait_for};

/// How long a span may take to reach a receiver that is up.
pub const ARRIVAL: Duration = Duration::from_secs(15);
/// How long the tests watch for a span that must not come (a second copy, an
/// export with tracing off): longer than the `--otlp.max-backoff=1s` retry cap.
pub const QUIET: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------
// ids, clock, webhooks

/// The trace id of a run: the first 16 bytes of SHA-256 of
/// `loadimpact-exporter/trace/<load_test_run_id>`.
pub fn trace_id(run: u64) -> Vec<u8> {
    Sha256::digest(format!("loadimpact-exporter/trace/{run}").as_bytes())[..16].to_vec()
}

/// The span id of a run: the first 8 bytes of SHA-256 of
/// `loadimpact-exporter/span/<load_test_run_id>`.
pub fn span_id(run: u64) -> Vec<u8> {
    Sha256::digest(format!("loadimpact-exporter/span/{run}").as_bytes())[..8].to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The client's times around one request: `lo` is the time just before,
/// truncated to the millisecond (the exporter's resolution), `hi` just after.
#[derive(Debug, Clone, Copy)]
pub struct Bracket {
    pub lo: u64,
    pub hi: u64,
}

impl Bracket {
    fn contains(&self, t: u64) -> bool {
        self.lo <= t && t <= self.hi
    }
}

/// Run `run` of these tests: its other ids, its user and its name derive
/// from its id.
pub fn run_info(run: u64) -> Run {
    Run::new(4100 + run % 7, 5200 + run % 11, 6300 + run % 13, run)
        .by_user(7400 + run % 17)
        .named(format!("checkout flow {run}"))
}

/// Posts a webhook, asserts it was accepted (200), and returns the bracket.
pub fn post(exporter: &Exporter, body: &Value, request_id: &str) -> Bracket {
    let lo = now_ns() / 1_000_000 * 1_000_000;
    let resp = exporter.post_id(body, request_id);
    let hi = now_ns();
    assert_eq!(
        resp.status, 200,
        "webhook {request_id} not accepted: {}",
        resp.body
    );
    Bracket { lo, hi }
}

pub fn start_run(exporter: &Exporter, r: &Run) -> Bracket {
    post(exporter, &r.started(), &format!("start-{}", r.id))
}

pub fn finish_run(exporter: &Exporter, r: &Run, status: i64, status_text: &str) -> Bracket {
    post(
        exporter,
        &r.finished(status, Some(status_text)),
        &format!("finish-{}", r.id),
    )
}

// ---------------------------------------------------------------------------
// the exporter

/// Flags that point the exporter at `receiver`, with a 1 s retry cap.
pub fn otlp_args(receiver: &Receiver) -> Vec<String> {
    vec![
        format!("--otlp.endpoint={}", receiver.endpoint()),
        format!("--otlp.protocol={}", receiver.protocol.flag_value()),
        "--otlp.max-backoff=1s".to_owned(),
    ]
}

/// An exporter to start with `otlp_args(receiver)`.
pub fn pointed_at(receiver: &Receiver) -> Launch {
    Exporter::builder().args(otlp_args(receiver))
}

/// Waits until the unlabelled series `name` satisfies `ok`; returns its value.
pub fn wait_metric(exporter: &Exporter, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    exporter.wait_sample(name, ARRIVAL, ok)
}

// ---------------------------------------------------------------------------
// span assertions

/// Waits until the receiver holds at least one span of `run`; returns them all.
pub fn wait_span(receiver: &Receiver, run: u64) -> Vec<ReceivedSpan> {
    let what = format!("the span of run {run} to reach the receiver");
    wait_for(&what, ARRIVAL, || {
        let spans = receiver.spans_with_trace_id(&trace_id(run));
        (!spans.is_empty()).then_some(spans)
    })
}

/// Exactly one span of `run` across everything received, checked also by
/// the run id attribute (a span with a wrong trace id would escape the first).
pub fn the_one_span(receiver: &Receiver, run: u64) -> ReceivedSpan {
    let by_trace = receiver.spans_with_trace_id(&trace_id(run));
    let by_attr: Vec<ReceivedSpan> = receiver
        .spans()
        .into_iter()
        .filter(|s| {
            attributes(&s.span.attributes).get("loadimpact.load_test_run_id")
                == Some(&Attr::Int(run as i64))
        })
        .collect();
    assert_eq!(
        by_trace.len(),
        1,
        "run {run}: expected exactly one span with trace id {}, got {}",
        hex(&trace_id(run)),
        by_trace.len()
    );
    assert_eq!(
        by_attr.len(),
        1,
        "run {run}: expected exactly one span with loadimpact.load_test_run_id={run}, got {}",
        by_attr.len()
    );
    by_trace.into_iter().next().unwrap()
}

/// Waits for the span of `run`, then checks that it is the only one.
pub fn arrived_once(receiver: &Receiver, run: u64) -> ReceivedSpan {
    wait_span(receiver, run);
    the_one_span(receiver, run)
}

/// What a run's span must say.
pub struct Expect<'a> {
    pub info: &'a Run,
    /// `None`: finish with no start (zero-length span at the finish).
    pub start: Option<Bracket>,
    pub end: Bracket,
    pub status: i64,
    pub status_text: &'a str,
    pub outcome: &'a str,
    pub suite_status: &'a str,
    /// `true`: span status Ok; `false`: Error with `status_text` as message.
    pub ok: bool,
}

/// A run that started (within `start`) and finished normally (within `end`).
pub fn finished_ok<'a>(info: &'a Run, start: Option<Bracket>, end: Bracket) -> Expect<'a> {
    Expect {
        info,
        start,
        end,
        status: 3,
        status_text: "Finished",
        outcome: "finished",
        suite_status: "success",
        ok: true,
    }
}

pub fn int(v: u64) -> Attr {
    Attr::Int(v as i64)
}

pub fn string(s: &str) -> Attr {
    Attr::Str(s.to_owned())
}

/// Every attribute of `want` is in `attrs` (of the span of `run`) with its value.
fn assert_attributes(attrs: &BTreeMap<String, Attr>, want: &[(&str, Attr)], run: u64) {
    for (key, value) in want {
        assert_eq!(
            attrs.get(*key),
            Some(value),
            "run {run}: attribute {key} (all: {attrs:?})"
        );
    }
}

/// The identity attributes every span of `info` carries.
pub fn assert_identity(span: &ReceivedSpan, info: &Run) {
    let s = &span.span;
    let run = info.id;
    assert_eq!(
        hex(&s.trace_id),
        hex(&trace_id(run)),
        "trace id of run {run}"
    );
    assert_eq!(hex(&s.span_id), hex(&span_id(run)), "span id of run {run}");
    assert!(
        s.parent_span_id.is_empty(),
        "run {run}: a root span has no parent, got {}",
        hex(&s.parent_span_id)
    );
    assert_eq!(s.name, "load test run", "span name");
    assert_eq!(s.kind, SpanKind::Internal as i32, "span kind");
    let attrs = attributes(&s.attributes);
    let want = [
        ("loadimpact.organization_id", int(info.org)),
        ("loadimpact.project_id", int(info.project)),
        ("loadimpact.load_test_id", int(info.load_test)),
        ("loadimpact.load_test_run_id", int(run)),
        ("loadimpact.user_id", int(info.user)),
        ("loadimpact.test.name", string(&info.name)),
        ("test.suite.name", string(&info.name)),
    ];
    assert_attributes(&attrs, &want, run);
}

/// The events of a span as (name, time), in time order.
pub fn events(span: &ReceivedSpan) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = span
        .span
        .events
        .iter()
        .map(|e| (e.name.clone(), e.time_unix_nano))
        .collect();
    out.sort_by_key(|(_, t)| *t);
    out
}

/// The span of `run` starts within `start`, the request of the run's start.
fn assert_starts_within(span: &ReceivedSpan, start: Bracket, run: u64) {
    let s = &span.span;
    assert!(
        start.contains(s.start_time_unix_nano),
        "run {run}: start {} not within the start request [{}, {}]",
        s.start_time_unix_nano,
        start.lo,
        start.hi
    );
}

/// The events of the span of `run` are `started` at its start, then `last`
/// at its end.
fn assert_started_then(span: &ReceivedSpan, last: &str, run: u64) {
    let s = &span.span;
    assert_eq!(
        events(span),
        vec![
            ("started".to_owned(), s.start_time_unix_nano),
            (last.to_owned(), s.end_time_unix_nano),
        ],
        "run {run}: events"
    );
}

/// The span says everything `want` says.
pub fn assert_span(span: &ReceivedSpan, want: &Expect<'_>) {
    assert_identity(span, want.info);
    let s = &span.span;
    let run = want.info.id;
    let attrs = attributes(&s.attributes);
    let more = [
        ("loadimpact.status", Attr::Int(want.status)),
        ("loadimpact.status_text", string(want.status_text)),
        ("loadimpact.outcome", string(want.outcome)),
        ("test.suite.run.status", string(want.suite_status)),
    ];
    assert_attributes(&attrs, &more, run);

    assert!(
        want.end.contains(s.end_time_unix_nano),
        "run {run}: end {} not within the finish request [{}, {}]",
        s.end_time_unix_nano,
        want.end.lo,
        want.end.hi
    );
    match want.start {
        Some(start) => {
            assert_starts_within(span, start, run);
            assert_ne!(
                attrs.get("loadimpact.start_unknown"),
                Some(&Attr::Bool(true)),
                "run {run}: the start is known"
            );
            assert_started_then(span, "finished", run);
        }
        None => {
            assert_eq!(
                s.start_time_unix_nano, s.end_time_unix_nano,
                "run {run}: a finish with no start is a zero-length span"
            );
            assert_eq!(
                attrs.get("loadimpact.start_unknown"),
                Some(&Attr::Bool(true)),
                "run {run}: loadimpact.start_unknown (all: {attrs:?})"
            );
            assert_eq!(
                events(span),
                vec![("finished".to_owned(), s.end_time_unix_nano)],
                "run {run}: only the finished event"
            );
        }
    }

    let status = s.status.clone().unwrap_or_default();
    if want.ok {
        assert_eq!(status.code, StatusCode::Ok as i32, "run {run}: status Ok");
    } else {
        assert_eq!(
            status.code,
            StatusCode::Error as i32,
            "run {run}: status Error"
        );
        assert_eq!(
            status.message, want.status_text,
            "run {run}: the error message is the status text"
        );
    }
}

pub fn resource_attrs(resource: &Resource) -> BTreeMap<String, Attr> {
    attributes(&resource.attributes)
}

pub fn assert_resource(span: &ReceivedSpan, service_name: &str, extra: &[(&str, &str)]) {
    let attrs = resource_attrs(&span.resource);
    assert_eq!(
        attrs.get("service.name"),
        Some(&string(service_name)),
        "resource service.name (all: {attrs:?})"
    );
    for (key, value) in extra {
        assert_eq!(
            attrs.get(*key),
            Some(&string(value)),
            "resource attribute {key} (all: {attrs:?})"
        );
    }
}

/// Every export `receiver` accepted carried these headers.
pub fn assert_headers(receiver: &Receiver, want: &[(&str, &str)]) {
    let exports = receiver.exports();
    assert!(!exports.is_empty(), "no export received");
    for export in exports {
        for (name, value) in want {
            assert_eq!(
                export.headers.get(*name).map(String::as_str),
                Some(*value),
                "header {name} (all: {:?})",
                export.headers
            );
        }
    }
}

/// Every span received belongs to one of `runs`, and each of them has exactly one.
pub fn assert_exactly_once(receiver: &Receiver, runs: &[u64]) {
    for run in runs {
        the_one_span(receiver, *run);
    }
    let total = receiver.spans().len();
    assert_eq!(
        total,
        runs.len(),
        "{total} spans received in all, expected one for each of {runs:?}"
    );
}

/// The span of a run that started within `start` and expired (with
/// `--run.max-duration=2s`) before `seen_at`.
pub fn assert_expired(span: &ReceivedSpan, info: &Run, start: Bracket, seen_at: u64) {
    assert_identity(span, info);
    let s = &span.span;
    assert_starts_within(span, start, info.id);
    assert!(
        s.end_time_unix_nano >= s.start_time_unix_nano + 2_000_000_000,
        "ends at the expiry, at least 2 s after the start: {} .. {}",
        s.start_time_unix_nano,
        s.end_time_unix_nano
    );
    assert!(
        s.end_time_unix_nano <= seen_at,
        "ends before it was exported"
    );
    let attrs = attributes(&s.attributes);
    assert_eq!(attrs.get("loadimpact.outcome"), Some(&string("expired")));
    assert_eq!(
        attrs.get("test.suite.run.status"),
        Some(&string("timed_out"))
    );
    let status = s.status.clone().unwrap_or_default();
    assert_eq!(status.code, StatusCode::Error as i32, "status Error");
    assert!(
        status.message.to_ascii_lowercase().contains("finish"),
        "the error message says no finish came: {:?}",
        status.message
    );
    assert_started_then(span, "expired", info.id);
}
