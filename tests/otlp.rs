//! OpenTelemetry (issue 3): one span per load test run, delivered over OTLP
//! exactly once through the durable outbox.
//!
//! Every test runs the real binary against a real OTLP receiver in-process
//! (`otlp_receiver`: the `opentelemetry-proto` `TraceService` over tonic for
//! gRPC, a hyper endpoint for HTTP/protobuf), posts webhooks, and asserts on
//! the decoded spans: ids from the documented formula, start and end within
//! the client's request times, every attribute, status, events and resource.
//!
//! The exporter keeps times in milliseconds, so a bracket's lower bound is the
//! client's time just before the request, truncated to the millisecond.

mod common;
mod otlp_receiver;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{parse_samples, wait_for, Exporter};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use otlp_receiver::{attributes, Attr, Protocol, ReceivedSpan, Receiver};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How long a span may take to reach a receiver that is up.
const ARRIVAL: Duration = Duration::from_secs(15);
/// How long the tests watch for a span that must not come (a second copy, an
/// export with tracing off): longer than the `--otlp.max-backoff=1s` retry cap.
const QUIET: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------
// ids, clock, webhooks

/// The trace id of a run: the first 16 bytes of SHA-256 of
/// `loadimpact-exporter/trace/<load_test_run_id>`.
fn trace_id(run: u64) -> Vec<u8> {
    Sha256::digest(format!("loadimpact-exporter/trace/{run}").as_bytes())[..16].to_vec()
}

/// The span id of a run: the first 8 bytes of SHA-256 of
/// `loadimpact-exporter/span/<load_test_run_id>`.
fn span_id(run: u64) -> Vec<u8> {
    Sha256::digest(format!("loadimpact-exporter/span/{run}").as_bytes())[..8].to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// The client's times around one request: `lo` is the time just before,
/// truncated to the millisecond (the exporter's resolution), `hi` just after.
#[derive(Debug, Clone, Copy)]
struct Bracket {
    lo: u64,
    hi: u64,
}

impl Bracket {
    fn contains(&self, t: u64) -> bool {
        self.lo <= t && t <= self.hi
    }
}

/// One load test run's identity, as the webhooks carry it.
#[derive(Debug, Clone)]
struct RunInfo {
    run: u64,
    org: u64,
    project: u64,
    load_test: u64,
    user: u64,
    name: String,
}

fn run_info(run: u64) -> RunInfo {
    RunInfo {
        run,
        org: 4100 + run % 7,
        project: 5200 + run % 11,
        load_test: 6300 + run % 13,
        user: 7400 + run % 17,
        name: format!("checkout flow {run}"),
    }
}

fn started_body(r: &RunInfo) -> Value {
    json!({
        "event": "test.started",
        "load_test_run_id": r.run,
        "load_test_id": r.load_test,
        "organization_id": r.org,
        "project_id": r.project,
        "user_id": r.user,
        "name": r.name,
        "status": 2,
        "status_text": "Running",
    })
}

fn finished_body(r: &RunInfo, status: i64, status_text: &str) -> Value {
    json!({
        "event": "test.finished",
        "load_test_run_id": r.run,
        "load_test_id": r.load_test,
        "organization_id": r.org,
        "project_id": r.project,
        "user_id": r.user,
        "name": r.name,
        "status": status,
        "status_text": status_text,
    })
}

/// Posts a webhook, asserts it was accepted (200), and returns the bracket.
fn post(exporter: &Exporter, body: &Value, request_id: &str) -> Bracket {
    let lo = now_ns() / 1_000_000 * 1_000_000;
    let resp = exporter.post_event(body, request_id);
    let hi = now_ns();
    assert_eq!(
        resp.status, 200,
        "webhook {request_id} not accepted: {}",
        resp.body
    );
    Bracket { lo, hi }
}

fn start_run(exporter: &Exporter, r: &RunInfo) -> Bracket {
    post(exporter, &started_body(r), &format!("start-{}", r.run))
}

fn finish_run(exporter: &Exporter, r: &RunInfo, status: i64, status_text: &str) -> Bracket {
    post(
        exporter,
        &finished_body(r, status, status_text),
        &format!("finish-{}", r.run),
    )
}

// ---------------------------------------------------------------------------
// exporter and metrics

/// Flags that point the exporter at `receiver`, with a 1 s retry cap.
fn otlp_args(receiver: &Receiver) -> Vec<String> {
    vec![
        format!("--otlp.endpoint={}", receiver.endpoint()),
        format!("--otlp.protocol={}", receiver.protocol.flag_value()),
        "--otlp.max-backoff=1s".to_owned(),
    ]
}

fn start_exporter(args: &[String], envs: &[(&str, &str)]) -> Exporter {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Exporter::start_with_env(&args, envs)
}

/// The value of an unlabelled series, or 0 when absent.
fn metric(exporter: &Exporter, name: &str) -> f64 {
    common::sample(&exporter.samples(), name)
}

/// Waits until the unlabelled series `name` satisfies `ok`; returns its value.
fn wait_metric(exporter: &Exporter, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let mut last = f64::NAN;
    let what = format!("{name} to reach the expected value");
    wait_for(&what, ARRIVAL, || {
        last = metric(exporter, name);
        ok(last).then_some(last)
    })
}

/// The label sets of every `loadimpact_test_run_info` series, and their values.
fn run_info_series(exporter: &Exporter) -> Vec<(BTreeMap<String, String>, f64)> {
    let text = exporter.scrape();
    parse_samples(&text, "loadimpact_test_run_info")
        .into_iter()
        .filter(|(series, _)| series.starts_with("loadimpact_test_run_info{"))
        .map(|(series, value)| (labels(&series), value))
        .collect()
}

/// Parses `name{a="x",b="y"}` into its labels (no escapes in these tests).
fn labels(series: &str) -> BTreeMap<String, String> {
    let inner = series
        .split_once('{')
        .and_then(|(_, rest)| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not a labelled series: {series}"));
    let mut out = BTreeMap::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").expect("label=\"value\"");
        let end = after.find('"').expect("closing quote");
        out.insert(
            name.trim_start_matches(',').to_owned(),
            after[..end].to_owned(),
        );
        rest = after[end + 1..].trim_start_matches(',');
    }
    out
}

// ---------------------------------------------------------------------------
// span assertions

/// Waits until the receiver holds at least one span of `run`; returns them all.
fn wait_span(receiver: &Receiver, run: u64) -> Vec<ReceivedSpan> {
    let what = format!("the span of run {run} to reach the receiver");
    wait_for(&what, ARRIVAL, || {
        let spans = receiver.spans_with_trace_id(&trace_id(run));
        (!spans.is_empty()).then_some(spans)
    })
}

/// Exactly one span of `run` across everything received, checked also by
/// the run id attribute (a span with a wrong trace id would escape the first).
fn the_one_span(receiver: &Receiver, run: u64) -> ReceivedSpan {
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
fn arrived_once(receiver: &Receiver, run: u64) -> ReceivedSpan {
    wait_span(receiver, run);
    the_one_span(receiver, run)
}

/// What a run's span must say.
struct Expect<'a> {
    info: &'a RunInfo,
    /// `None`: finish with no start (zero-length span at the finish).
    start: Option<Bracket>,
    end: Bracket,
    status: i64,
    status_text: &'a str,
    outcome: &'a str,
    suite_status: &'a str,
    /// `true`: span status Ok; `false`: Error with `status_text` as message.
    ok: bool,
}

/// A run that started (within `start`) and finished normally (within `end`).
fn finished_ok<'a>(info: &'a RunInfo, start: Option<Bracket>, end: Bracket) -> Expect<'a> {
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

fn int(v: u64) -> Attr {
    Attr::Int(v as i64)
}

fn string(s: &str) -> Attr {
    Attr::Str(s.to_owned())
}

/// The identity attributes every span of `info` carries.
fn assert_identity(span: &ReceivedSpan, info: &RunInfo) {
    let s = &span.span;
    let run = info.run;
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
    for (key, value) in want {
        assert_eq!(
            attrs.get(key),
            Some(&value),
            "run {run}: attribute {key} (all: {attrs:?})"
        );
    }
}

/// The events of a span as (name, time), in time order.
fn events(span: &ReceivedSpan) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = span
        .span
        .events
        .iter()
        .map(|e| (e.name.clone(), e.time_unix_nano))
        .collect();
    out.sort_by_key(|(_, t)| *t);
    out
}

fn assert_span(span: &ReceivedSpan, want: &Expect<'_>) {
    assert_identity(span, want.info);
    let s = &span.span;
    let run = want.info.run;
    let attrs = attributes(&s.attributes);
    let more = [
        ("loadimpact.status", Attr::Int(want.status)),
        ("loadimpact.status_text", string(want.status_text)),
        ("loadimpact.outcome", string(want.outcome)),
        ("test.suite.run.status", string(want.suite_status)),
    ];
    for (key, value) in more {
        assert_eq!(
            attrs.get(key),
            Some(&value),
            "run {run}: attribute {key} (all: {attrs:?})"
        );
    }

    assert!(
        want.end.contains(s.end_time_unix_nano),
        "run {run}: end {} not within the finish request [{}, {}]",
        s.end_time_unix_nano,
        want.end.lo,
        want.end.hi
    );
    match want.start {
        Some(start) => {
            assert!(
                start.contains(s.start_time_unix_nano),
                "run {run}: start {} not within the start request [{}, {}]",
                s.start_time_unix_nano,
                start.lo,
                start.hi
            );
            assert_ne!(
                attrs.get("loadimpact.start_unknown"),
                Some(&Attr::Bool(true)),
                "run {run}: the start is known"
            );
            assert_eq!(
                events(span),
                vec![
                    ("started".to_owned(), s.start_time_unix_nano),
                    ("finished".to_owned(), s.end_time_unix_nano),
                ],
                "run {run}: events"
            );
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

fn resource_attrs(resource: &Resource) -> BTreeMap<String, Attr> {
    attributes(&resource.attributes)
}

fn assert_resource(span: &ReceivedSpan, service_name: &str, extra: &[(&str, &str)]) {
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
fn assert_headers(receiver: &Receiver, want: &[(&str, &str)]) {
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
fn assert_exactly_once(receiver: &Receiver, runs: &[u64]) {
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

// ---------------------------------------------------------------------------
// the receiver itself

/// The receiver is known good: the `opentelemetry-otlp` exporter (the client
/// the binary uses) delivers to it over both protocols, errors are answered as
/// errors, and it comes back on the same port after going down.
/// Exports one span named `name` with the `opentelemetry-otlp` exporter (the
/// client the binary uses) through the SDK, from a blocking thread of a tokio
/// runtime (which suits both its tonic and its HTTP clients).
fn export_with_sdk(protocol: Protocol, endpoint: String, name: &'static str) {
    use opentelemetry::trace::{Tracer, TracerProvider as _};
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let exporter = match protocol {
            Protocol::Grpc => SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build(),
            Protocol::HttpProtobuf => SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .build(),
        }
        .expect("OTLP exporter");
        tokio::task::spawn_blocking(move || {
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder_empty()
                        .with_service_name("receiver-self-test")
                        .build(),
                )
                .build();
            provider.tracer("self-test").start(name);
            provider.force_flush().expect("flush");
            provider.shutdown().expect("shutdown");
        })
        .await
        .expect("export thread");
    });
}

/// The receiver is known good: the `opentelemetry-otlp` exporter delivers to
/// it over both protocols, errors are answered as errors, and it comes back on
/// the same port after going down.
#[test]
fn receiver_self_test() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    // gRPC.
    let mut grpc = Receiver::start(Protocol::Grpc);
    export_with_sdk(Protocol::Grpc, grpc.endpoint(), "grpc span");
    let spans = grpc.spans();
    assert_eq!(spans.len(), 1, "one span over gRPC");
    assert_eq!(spans[0].span.name, "grpc span");
    assert_eq!(
        spans[0].span.kind,
        SpanKind::Internal as i32,
        "the SDK's default kind"
    );
    assert_resource(&spans[0], "receiver-self-test", &[]);

    // Failing on purpose: Unavailable, nothing recorded; down: refused; up
    // again on the same port: accepted, earlier data kept.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let raw_export = |endpoint: String| {
        rt.block_on(async move {
            let mut client = TraceServiceClient::connect(endpoint).await?;
            client
                .export(ExportTraceServiceRequest::default())
                .await
                .map(|_| ())
                .map_err(|status| Box::new(status) as Box<dyn std::error::Error>)
        })
    };
    grpc.fail();
    let err = raw_export(grpc.endpoint()).expect_err("failing receiver");
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(grpc.rejected(), 1);
    grpc.accept();
    grpc.down();
    assert!(raw_export(grpc.endpoint()).is_err(), "down: refused");
    grpc.up();
    raw_export(grpc.endpoint()).expect("up again on the same port");
    assert_eq!(
        grpc.exports().len(),
        2,
        "earlier export kept, new one added"
    );
    assert_eq!(grpc.attempts(), 3);

    // HTTP/protobuf.
    let mut http = Receiver::start(Protocol::HttpProtobuf);
    export_with_sdk(Protocol::HttpProtobuf, http.endpoint(), "http span");
    let spans = http.spans();
    assert_eq!(spans.len(), 1, "one span over HTTP");
    assert_eq!(spans[0].span.name, "http span");
    assert_resource(&spans[0], "receiver-self-test", &[]);

    let body = ExportTraceServiceRequest::default().encode_to_vec();
    let raw_post = |url: &str| {
        common::try_request(
            "POST",
            url,
            &[("Content-Type", "application/x-protobuf")],
            Some(&body),
        )
    };
    http.fail();
    assert_eq!(raw_post(&http.endpoint()).expect("answered").status, 503);
    http.accept();
    let ok = raw_post(&http.endpoint()).expect("answered");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.content_type.as_deref(), Some("application/x-protobuf"));
    assert_eq!(
        raw_post(&format!("{}/v1/metrics", http.base_url()))
            .expect("answered")
            .status,
        404
    );
    http.down();
    assert!(raw_post(&http.endpoint()).is_none(), "down: refused");
    http.up();
    assert_eq!(raw_post(&http.endpoint()).expect("up again").status, 200);
    assert_eq!(http.exports().len(), 3);
}

// ---------------------------------------------------------------------------
// the span, exactly

/// Runs two runs (one finished, one aborted) through an exporter pointed at
/// `receiver` and checks both spans field by field.
fn exact_spans(
    receiver: &Receiver,
    exporter: &Exporter,
    base: u64,
) -> (ReceivedSpan, ReceivedSpan) {
    let ok = run_info(base);
    let aborted = run_info(base + 1);
    let ok_start = start_run(exporter, &ok);
    let aborted_start = start_run(exporter, &aborted);
    let ok_end = finish_run(exporter, &ok, 3, "Finished");
    let aborted_end = finish_run(exporter, &aborted, 5, "Aborted by user");

    let ok_span = arrived_once(receiver, ok.run);
    assert_span(&ok_span, &finished_ok(&ok, Some(ok_start), ok_end));
    let aborted_span = arrived_once(receiver, aborted.run);
    assert_span(
        &aborted_span,
        &Expect {
            info: &aborted,
            start: Some(aborted_start),
            end: aborted_end,
            status: 5,
            status_text: "Aborted by user",
            outcome: "aborted_by_user",
            suite_status: "aborted",
            ok: false,
        },
    );
    (ok_span, aborted_span)
}

#[test]
fn grpc_span_is_exact() {
    let receiver = Receiver::start(Protocol::Grpc);
    let mut args = otlp_args(&receiver);
    args.push("--otlp.header=x-tenant=acme".to_owned());
    args.push("--otlp.header=x-team=perf".to_owned());
    let exporter = start_exporter(
        &args,
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,cloud.region=eu-north-1",
        )],
    );
    let (ok, aborted) = exact_spans(&receiver, &exporter, 1000);
    for span in [&ok, &aborted] {
        assert_resource(
            span,
            "loadimpact",
            &[
                ("deployment.environment", "test"),
                ("cloud.region", "eu-north-1"),
            ],
        );
    }
    assert_headers(&receiver, &[("x-tenant", "acme"), ("x-team", "perf")]);

    wait_metric(&exporter, "loadimpact_spans_exported_total", |v| v == 2.0);
    assert_eq!(metric(&exporter, "loadimpact_spans_pending"), 0.0);
    assert_eq!(
        metric(&exporter, "loadimpact_span_export_failures_total"),
        0.0
    );
    assert_eq!(metric(&exporter, "loadimpact_spans_dropped_total"), 0.0);
    std::thread::sleep(QUIET);
    assert_exactly_once(&receiver, &[1000, 1001]);
}

#[test]
fn http_span_is_exact() {
    // The default protocol is http/protobuf: only the endpoint is given.
    let receiver = Receiver::start(Protocol::HttpProtobuf);
    let exporter = start_exporter(
        &[
            format!("--otlp.endpoint={}", receiver.endpoint()),
            "--otlp.max-backoff=1s".to_owned(),
            "--otlp.header=authorization=Bearer s3cret".to_owned(),
        ],
        &[],
    );
    let (ok, aborted) = exact_spans(&receiver, &exporter, 2000);
    assert_resource(&ok, "loadimpact", &[]);
    assert_resource(&aborted, "loadimpact", &[]);
    assert_headers(&receiver, &[("authorization", "Bearer s3cret")]);

    // The other outcomes' status mapping, over the same exporter.
    let cases: [(u64, i64, &str, &str, &str); 4] = [
        (2010, 4, "Timed out", "timed_out", "timed_out"),
        (2011, 12, "Failed threshold", "failed_threshold", "failure"),
        (2012, 8, "Aborted by system", "aborted_by_system", "aborted"),
        (2013, 1, "Queued", "unknown", "failure"),
    ];
    let mut brackets = Vec::new();
    for (run, status, text, _, _) in cases {
        let info = run_info(run);
        let start = start_run(&exporter, &info);
        let end = finish_run(&exporter, &info, status, text);
        brackets.push((info, start, end));
    }
    for ((run, status, text, outcome, suite), (info, start, end)) in cases.iter().zip(&brackets) {
        let span = arrived_once(&receiver, *run);
        assert_span(
            &span,
            &Expect {
                info,
                start: Some(*start),
                end: *end,
                status: *status,
                status_text: text,
                outcome,
                suite_status: suite,
                ok: false,
            },
        );
    }
    wait_metric(&exporter, "loadimpact_spans_exported_total", |v| v == 6.0);
    assert_eq!(metric(&exporter, "loadimpact_spans_pending"), 0.0);
    assert_exactly_once(&receiver, &[2000, 2001, 2010, 2011, 2012, 2013]);
}

/// The standard environment variables configure the exporter: the base
/// endpoint (`/v1/traces` appended for HTTP), the protocol, headers, service
/// name and resource attributes; and the traces endpoint, used as is.
#[test]
fn standard_environment_variables() {
    // HTTP through OTEL_EXPORTER_OTLP_ENDPOINT (the base URL).
    let http = Receiver::start(Protocol::HttpProtobuf);
    let base = http.base_url();
    let span = one_run_configured_by_env(
        &http,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &base),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme,x-env=ci"),
            ("OTEL_SERVICE_NAME", "perf-runs"),
            ("OTEL_RESOURCE_ATTRIBUTES", "team=perf"),
        ],
        3000,
    );
    assert_resource(&span, "perf-runs", &[("team", "perf")]);
    assert_headers(&http, &[("x-tenant", "acme"), ("x-env", "ci")]);

    // gRPC through OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (which wins over
    // OTEL_EXPORTER_OTLP_ENDPOINT) and the protocol variable; service.name
    // from OTEL_RESOURCE_ATTRIBUTES.
    let grpc = Receiver::start(Protocol::Grpc);
    let decoy = Receiver::start(Protocol::Grpc);
    let endpoint = grpc.endpoint();
    let decoy_url = decoy.base_url();
    let span = one_run_configured_by_env(
        &grpc,
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &decoy_url),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=runs-from-attrs,service.namespace=qa",
            ),
        ],
        3001,
    );
    assert_resource(&span, "runs-from-attrs", &[("service.namespace", "qa")]);
    assert_eq!(
        decoy.attempts(),
        0,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT wins over OTEL_EXPORTER_OTLP_ENDPOINT"
    );
}

/// Starts an exporter configured by `envs` only (plus the retry cap), runs
/// `run` through it and returns the span `receiver` got.
fn one_run_configured_by_env(receiver: &Receiver, envs: &[(&str, &str)], run: u64) -> ReceivedSpan {
    let exporter = start_exporter(&["--otlp.max-backoff=1s".to_owned()], envs);
    let info = run_info(run);
    start_run(&exporter, &info);
    finish_run(&exporter, &info, 3, "Finished");
    let span = arrived_once(receiver, run);
    assert_identity(&span, &info);
    span
}

// ---------------------------------------------------------------------------
// the durable outbox

/// Collector down, then up (gRPC): the spans wait in the outbox, failed
/// attempts are counted, and every span arrives once when it is back. Then the
/// collector answers `Unavailable` for a while: same again.
#[test]
fn receiver_down_then_up_grpc() {
    let mut receiver = Receiver::down_on_free_port(Protocol::Grpc);
    let exporter = start_exporter(&otlp_args(&receiver), &[]);
    let a = run_info(4000);
    let b = run_info(4001);
    let a_start = start_run(&exporter, &a);
    let b_start = start_run(&exporter, &b);
    let a_end = finish_run(&exporter, &a, 3, "Finished");
    let b_end = finish_run(&exporter, &b, 9, "Aborted by script error");

    wait_metric(&exporter, "loadimpact_span_export_failures_total", |v| {
        v >= 2.0
    });
    assert_eq!(metric(&exporter, "loadimpact_spans_pending"), 2.0);
    assert_eq!(metric(&exporter, "loadimpact_spans_exported_total"), 0.0);

    receiver.up();
    let a_span = arrived_once(&receiver, a.run);
    let b_span = arrived_once(&receiver, b.run);
    assert_span(&a_span, &finished_ok(&a, Some(a_start), a_end));
    assert_span(
        &b_span,
        &Expect {
            info: &b,
            start: Some(b_start),
            end: b_end,
            status: 9,
            status_text: "Aborted by script error",
            outcome: "aborted_by_script_error",
            suite_status: "aborted",
            ok: false,
        },
    );
    wait_metric(&exporter, "loadimpact_spans_pending", |v| v == 0.0);
    assert_eq!(metric(&exporter, "loadimpact_spans_exported_total"), 2.0);

    // The collector is up but refuses (Unavailable): retried, counted, then delivered.
    let failures_before = metric(&exporter, "loadimpact_span_export_failures_total");
    receiver.fail();
    let c = run_info(4002);
    start_run(&exporter, &c);
    finish_run(&exporter, &c, 3, "Finished");
    wait_for("two refused export attempts", ARRIVAL, || {
        (receiver.rejected() >= 2).then_some(())
    });
    wait_metric(&exporter, "loadimpact_span_export_failures_total", |v| {
        v >= failures_before + 2.0
    });
    assert_eq!(metric(&exporter, "loadimpact_spans_pending"), 1.0);
    receiver.accept();
    arrived_once(&receiver, c.run);
    wait_metric(&exporter, "loadimpact_spans_exported_total", |v| v == 3.0);
    assert_eq!(metric(&exporter, "loadimpact_spans_pending"), 0.0);
    // Each refused attempt was counted once (all of them ended before the
    // accepted one began).
    assert_eq!(
        metric(&exporter, "loadimpact_span_export_failures_total") - failures_before,
        receiver.rejected() as f64,
        "loadimpact_span_export_failures_total counts the refused attempts"
    );

    // The collector restarts under an established connection: the exporter
    // reconnects.
    receiver.down();
    let failures_before = metric(&exporter, "loadimpact_span_export_failures_total");
    let d = run_info(4003);
    start_run(&exporter, &d);
    finish_run(&exporter, &d, 3, "Finished");
    wait_metric(&exporter, "loadimpact_span_export_failures_total", |v| {
        v > failures_before
    });
    receiver.up();
    arrived_once(&receiver, d.run);
    wait_metric(&exporter, "loadimpact_spans_exported_total", |v| v == 4.0);
    std::thread::sleep(QUIET);
    assert_exactly_once(&receiver, &[4000, 4001, 4002, 4003]);
    assert_eq!(metric(&exporter, "loadimpact_spans_pending"), 0.0);
}

/// `--otlp.timeout`: an export to a collector that hangs is abandoned after the
/// timeout, counted as failed and retried; the span arrives once the collector
/// answers again.
fn hanging_collector(protocol: Protocol, run: u64) {
    let receiver = Receiver::start(protocol);
    let mut args = otlp_args(&receiver);
    args.push("--otlp.timeout=1s".to_owned());
    let exporter = start_exporter(&args, &[]);
    receiver.stall(Duration::from_secs(60));
    let info = run_info(run);
    let start = start_run(&exporter, &info);
    let end = finish_run(&exporter, &info, 3, "Finished");
    // With the 1 s timeout and 1 s backoff cap, two abandoned attempts take a
    // few seconds; the default 10 s timeout would not get there in time.
    let deadline = Duration::from_secs(8);
    wait_for("two abandoned export attempts", deadline, || {
        (receiver.stalled() >= 2).then_some(())
    });
    wait_metric(&exporter, "loadimpact_span_export_failures_total", |v| {
        v >= 2.0
    });
    assert_eq!(metric(&exporter, "loadimpact_spans_pending"), 1.0);
    receiver.accept();
    let span = arrived_once(&receiver, run);
    assert_span(&span, &finished_ok(&info, Some(start), end));
    wait_metric(&exporter, "loadimpact_spans_pending", |v| v == 0.0);
}

#[test]
fn hanging_collector_grpc() {
    hanging_collector(Protocol::Grpc, 4100);
}

#[test]
fn hanging_collector_http() {
    hanging_collector(Protocol::HttpProtobuf, 4200);
}

/// `kill -9` between a run's start and its finish: the span keeps the start
/// received by the first process.
#[test]
fn kill9_between_start_and_finish_keeps_the_start() {
    let receiver = Receiver::start(Protocol::HttpProtobuf);
    let mut exporter = start_exporter(&otlp_args(&receiver), &[]);
    let info = run_info(5000);
    let start = start_run(&exporter, &info);
    exporter.kill9();
    exporter.restart();
    let end = finish_run(&exporter, &info, 3, "Finished");
    assert!(end.lo > start.hi, "the finish came after the restart");
    let span = arrived_once(&receiver, info.run);
    assert_span(&span, &finished_ok(&info, Some(start), end));
}

/// Killed (`kill -9`) while spans wait for a collector that is down, then
/// restarted and stopped (SIGTERM) with the collector still down: after the
/// last restart they arrive, once, with their original timestamps.
#[test]
fn kill_while_pending_then_restart() {
    let mut receiver = Receiver::down_on_free_port(Protocol::Grpc);
    let mut exporter = start_exporter(&otlp_args(&receiver), &[]);
    let runs: Vec<RunInfo> = (6000..6003).map(run_info).collect();
    let mut brackets = Vec::new();
    for info in &runs {
        let start = start_run(&exporter, info);
        let end = finish_run(&exporter, info, 3, "Finished");
        brackets.push((start, end));
    }
    wait_metric(&exporter, "loadimpact_spans_pending", |v| v == 3.0);
    wait_metric(&exporter, "loadimpact_span_export_failures_total", |v| {
        v >= 1.0
    });
    exporter.kill9();

    // Back with the collector still down: the spans are still pending. A
    // graceful stop now is prompt (the export loop does not hold it up) and
    // keeps them too.
    exporter.restart();
    assert_eq!(metric(&exporter, "loadimpact_spans_pending"), 3.0);
    let stopped = exporter.terminate();
    assert!(stopped.success(), "SIGTERM with spans pending: {stopped}");

    receiver.up();
    let restarted_at = now_ns();
    exporter.restart();
    for (info, (start, end)) in runs.iter().zip(&brackets) {
        let span = arrived_once(&receiver, info.run);
        assert!(
            span.span.end_time_unix_nano < restarted_at,
            "run {}: original end kept",
            info.run
        );
        assert_span(&span, &finished_ok(info, Some(*start), *end));
    }
    wait_metric(&exporter, "loadimpact_spans_pending", |v| v == 0.0);
    std::thread::sleep(QUIET);
    assert_exactly_once(&receiver, &[6000, 6001, 6002]);
}

/// Retried deliveries (same X-LoadImpact-ID) and repeated events (new ids)
/// make one span, with the first start and the first finish.
#[test]
fn duplicate_webhooks_make_one_span() {
    let receiver = Receiver::start(Protocol::Grpc);
    let exporter = start_exporter(&otlp_args(&receiver), &[]);
    let info = run_info(7000);
    let finished = finished_body(&info, 3, "Finished");
    let start = post(&exporter, &started_body(&info), "dup-start");
    let end = post(&exporter, &finished, "dup-finish");
    let repeats = [
        (started_body(&info), "dup-start"),
        (started_body(&info), "dup-start-again"),
        (finished.clone(), "dup-finish"),
        (
            finished_body(&info, 5, "Aborted by user"),
            "dup-finish-other",
        ),
        (started_body(&info), "dup-start-late"),
    ];
    for (body, request_id) in &repeats {
        post(&exporter, body, request_id);
    }

    let span = arrived_once(&receiver, info.run);
    assert_span(&span, &finished_ok(&info, Some(start), end));
    wait_metric(&exporter, "loadimpact_spans_exported_total", |v| v == 1.0);
    // The same deliveries after the span was acknowledged, and a new one: still one.
    for (body, request_id) in &repeats {
        post(&exporter, body, request_id);
    }
    post(&exporter, &finished, "dup-finish-after-ack");
    std::thread::sleep(QUIET);
    assert_exactly_once(&receiver, &[7000]);
    assert_eq!(metric(&exporter, "loadimpact_spans_exported_total"), 1.0);
    assert_eq!(metric(&exporter, "loadimpact_spans_pending"), 0.0);
}

/// A finish with no start: a zero-length span at the finish, marked
/// `loadimpact.start_unknown`, with only the `finished` event.
#[test]
fn finish_without_start() {
    let receiver = Receiver::start(Protocol::HttpProtobuf);
    let exporter = start_exporter(&otlp_args(&receiver), &[]);
    let info = run_info(8000);
    let end = finish_run(&exporter, &info, 12, "Failed threshold");
    let span = arrived_once(&receiver, info.run);
    assert_span(
        &span,
        &Expect {
            info: &info,
            start: None,
            end,
            status: 12,
            status_text: "Failed threshold",
            outcome: "failed_threshold",
            suite_status: "failure",
            ok: false,
        },
    );
}

/// The span of a run that started within `start` and expired (with
/// `--run.max-duration=2s`) before `seen_at`.
fn assert_expired(span: &ReceivedSpan, info: &RunInfo, start: Bracket, seen_at: u64) {
    assert_identity(span, info);
    let s = &span.span;
    assert!(
        start.contains(s.start_time_unix_nano),
        "start {} not within [{}, {}]",
        s.start_time_unix_nano,
        start.lo,
        start.hi
    );
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
    assert_eq!(
        events(span),
        vec![
            ("started".to_owned(), s.start_time_unix_nano),
            ("expired".to_owned(), s.end_time_unix_nano),
        ]
    );
}

/// A run with no finish within `--run.max-duration` ends its span at the
/// expiry: outcome `expired`, status Error, events `started` and `expired`.
/// A finish that comes later makes no second span.
#[test]
fn expired_run() {
    let receiver = Receiver::start(Protocol::Grpc);
    let mut args = otlp_args(&receiver);
    args.push("--run.max-duration=2s".to_owned());
    let exporter = start_exporter(&args, &[]);
    let info = run_info(9000);
    let start = start_run(&exporter, &info);
    let span = arrived_once(&receiver, info.run);
    assert_expired(&span, &info, start, now_ns());

    finish_run(&exporter, &info, 3, "Finished");
    std::thread::sleep(QUIET);
    assert_exactly_once(&receiver, &[9000]);
}

/// Killed after a run's start, and back only after its max duration: the run
/// still expires, and its span keeps the original start.
#[test]
fn expiry_across_a_restart() {
    let receiver = Receiver::start(Protocol::HttpProtobuf);
    let mut args = otlp_args(&receiver);
    args.push("--run.max-duration=2s".to_owned());
    let mut exporter = start_exporter(&args, &[]);
    let info = run_info(9050);
    let start = start_run(&exporter, &info);
    exporter.kill9();
    std::thread::sleep(Duration::from_millis(2100));
    exporter.restart();
    let span = arrived_once(&receiver, info.run);
    assert_expired(&span, &info, start, now_ns());
}

// ---------------------------------------------------------------------------
// configuration and metrics

/// No endpoint: tracing is off. Nothing is exported (not even to the default
/// OTLP ports, watched here when free) and no span metric moves.
#[test]
fn tracing_off_without_endpoint() {
    // Receivers on the standard ports catch an exporter that falls back to them.
    let watch = |protocol: Protocol, port: u16| {
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        free.then(|| Receiver::start_on(protocol, port))
    };
    let default_grpc = watch(Protocol::Grpc, 4317);
    let default_http = watch(Protocol::HttpProtobuf, 4318);
    if default_grpc.is_none() || default_http.is_none() {
        eprintln!("4317 or 4318 busy: default-port exports not watched on the busy one");
    }
    let exporter = start_exporter(&[], &[]);
    for run in [9500, 9501] {
        let info = run_info(run);
        start_run(&exporter, &info);
        finish_run(&exporter, &info, 3, "Finished");
    }
    std::thread::sleep(QUIET);
    for receiver in default_grpc.iter().chain(default_http.iter()) {
        assert_eq!(
            receiver.attempts(),
            0,
            "tracing off, yet an export reached the default port {}",
            receiver.port
        );
    }
    let samples = exporter.samples();
    for name in [
        "loadimpact_spans_exported_total",
        "loadimpact_span_export_failures_total",
        "loadimpact_spans_pending",
        "loadimpact_spans_dropped_total",
    ] {
        assert_eq!(
            common::sample(&samples, name),
            0.0,
            "{name} with tracing off"
        );
    }
}

/// `loadimpact_test_run_info` lists the most recent finished runs, at most
/// `--runs.info-limit`, with the trace id to link to.
#[test]
fn runs_info_limit() {
    let receiver = Receiver::start(Protocol::HttpProtobuf);
    let mut args = otlp_args(&receiver);
    args.push("--runs.info-limit=3".to_owned());
    let exporter = start_exporter(&args, &[]);
    let outcomes = [
        (3, "Finished", "finished"),
        (5, "Aborted by user", "aborted_by_user"),
        (4, "Timed out", "timed_out"),
        (12, "Failed threshold", "failed_threshold"),
        (3, "Finished", "finished"),
    ];
    for (i, (status, text, _)) in outcomes.iter().enumerate() {
        let info = run_info(9100 + i as u64);
        start_run(&exporter, &info);
        finish_run(&exporter, &info, *status, text);
        // Distinct finish times (the exporter's clock counts milliseconds).
        std::thread::sleep(Duration::from_millis(3));
    }
    let series = run_info_series(&exporter);
    assert_eq!(
        series.len(),
        3,
        "at most --runs.info-limit=3 series: {series:?}"
    );
    let mut runs: Vec<u64> = Vec::new();
    for (labels, value) in &series {
        assert_eq!(*value, 1.0, "{labels:?}");
        let run: u64 = labels["load_test_run_id"].parse().expect("numeric run id");
        let info = run_info(run);
        let (_, _, outcome) = outcomes[(run - 9100) as usize];
        let want: BTreeMap<String, String> = [
            ("organization_id", info.org.to_string()),
            ("project_id", info.project.to_string()),
            ("load_test_id", info.load_test.to_string()),
            ("load_test_run_id", run.to_string()),
            ("outcome", outcome.to_owned()),
            ("trace_id", hex(&trace_id(run))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(labels, &want, "labels of run {run}");
        runs.push(run);
    }
    runs.sort();
    assert_eq!(runs, vec![9102, 9103, 9104], "the three most recent runs");

    // The trace ids in the metric are those of the spans delivered.
    for run in 9100..9105 {
        arrived_once(&receiver, run);
    }
}

/// The outbox is bounded by `--otlp.max-pending`: beyond it spans are dropped
/// and counted; the ones kept are delivered when the collector is back.
#[test]
fn outbox_is_bounded() {
    let mut receiver = Receiver::down_on_free_port(Protocol::HttpProtobuf);
    let mut args = otlp_args(&receiver);
    args.push("--otlp.max-pending=2".to_owned());
    let exporter = start_exporter(&args, &[]);
    for run in 9200..9203 {
        let info = run_info(run);
        start_run(&exporter, &info);
        finish_run(&exporter, &info, 3, "Finished");
    }
    assert_eq!(metric(&exporter, "loadimpact_spans_dropped_total"), 1.0);
    assert_eq!(metric(&exporter, "loadimpact_spans_pending"), 2.0);
    receiver.up();
    arrived_once(&receiver, 9200);
    arrived_once(&receiver, 9201);
    wait_metric(&exporter, "loadimpact_spans_pending", |v| v == 0.0);
    std::thread::sleep(QUIET);
    assert_exactly_once(&receiver, &[9200, 9201]);
    assert_eq!(metric(&exporter, "loadimpact_spans_dropped_total"), 1.0);
}

/// `--otlp.batch-size`: a backlog goes out in requests of at most that many
/// spans, each span once.
#[test]
fn backlog_goes_out_in_batches() {
    let mut receiver = Receiver::down_on_free_port(Protocol::HttpProtobuf);
    let mut args = otlp_args(&receiver);
    args.push("--otlp.batch-size=2".to_owned());
    let exporter = start_exporter(&args, &[]);
    let runs: Vec<u64> = (9300..9305).collect();
    for run in &runs {
        let info = run_info(*run);
        start_run(&exporter, &info);
        finish_run(&exporter, &info, 3, "Finished");
    }
    assert_eq!(metric(&exporter, "loadimpact_spans_pending"), 5.0);
    receiver.up();
    for run in &runs {
        wait_span(&receiver, *run);
    }
    wait_metric(&exporter, "loadimpact_spans_pending", |v| v == 0.0);
    let sizes: Vec<usize> = receiver
        .exports()
        .iter()
        .map(|e| {
            e.resource_spans
                .iter()
                .map(|rs| {
                    rs.scope_spans
                        .iter()
                        .map(|ss| ss.spans.len())
                        .sum::<usize>()
                })
                .sum()
        })
        .collect();
    assert!(
        sizes.iter().all(|n| (1..=2).contains(n)),
        "every request holds one or two spans: {sizes:?}"
    );
    assert_exactly_once(&receiver, &runs);
    assert_eq!(metric(&exporter, "loadimpact_spans_exported_total"), 5.0);
}

/// A full outbox says so in a log line (the metric is checked in
/// `outbox_is_bounded`). The binary is started here by hand to read its stderr.
#[test]
fn full_outbox_is_logged() {
    let receiver = Receiver::down_on_free_port(Protocol::Grpc);
    let tmp = tempfile::tempdir().expect("temp dir");
    let log_path = tmp.path().join("stderr.log");
    let port = common::free_port();
    let mut child = std::process::Command::new(common::exporter_bin())
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!(
            "--storage.path={}",
            tmp.path().join("data").display()
        ))
        .args(otlp_args(&receiver))
        .args(["--otlp.max-pending=1", "--log.format=json"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("spawn the exporter");
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = KillOnDrop(&mut child);
    let base = format!("http://127.0.0.1:{port}");
    wait_for("the exporter to be ready", Duration::from_secs(20), || {
        common::try_request("GET", &format!("{base}/-/ready"), &[], None)
            .filter(|r| r.status == 200)
    });
    for run in [9400, 9401] {
        let body = finished_body(&run_info(run), 3, "Finished");
        let resp = common::request(
            "POST",
            &format!("{base}/webhook"),
            &[
                ("Content-Type", "application/json"),
                ("X-LoadImpact-Event", "test.finished"),
                ("X-LoadImpact-ID", &format!("finish-{run}")),
            ],
            Some(body.to_string().as_bytes()),
        );
        assert_eq!(resp.status, 200, "{}", resp.body);
    }
    let line = wait_for("a log line about the full outbox", ARRIVAL, || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| {
                let message = l["message"].as_str().unwrap_or("").to_ascii_lowercase();
                message.contains("full") || message.contains("max-pending")
            })
    });
    let level = line["level"].as_str().unwrap_or("");
    assert!(
        level == "WARN" || level == "ERROR",
        "a full outbox is a warning: {line}"
    );
}

/// A burst of runs posted from several clients at once: every span arrives,
/// once, while spans are exported during the burst.
#[test]
fn burst_of_runs_all_arrive_once() {
    let receiver = Receiver::start(Protocol::Grpc);
    let exporter = start_exporter(&otlp_args(&receiver), &[]);
    let runs: Vec<u64> = (10_000..10_080).collect();
    std::thread::scope(|scope| {
        for chunk in runs.chunks(20) {
            let exporter = &exporter;
            scope.spawn(move || {
                for run in chunk {
                    let info = run_info(*run);
                    start_run(exporter, &info);
                    finish_run(exporter, &info, 3, "Finished");
                }
            });
        }
    });
    let what = format!("all {} spans", runs.len());
    wait_for(&what, ARRIVAL, || {
        (receiver.spans().len() >= runs.len()).then_some(())
    });
    wait_metric(&exporter, "loadimpact_spans_pending", |v| v == 0.0);
    assert_exactly_once(&receiver, &runs);
    assert_eq!(
        metric(&exporter, "loadimpact_spans_exported_total"),
        runs.len() as f64
    );
}
