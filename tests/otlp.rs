//! OpenTelemetry: one span per load test run, exported over OTLP. This file
//! proves the test receiver sound, then each span exact field by field (ids
//! from the documented formula, start and end within the client's request
//! times, every attribute, status, event and resource) over gRPC and
//! HTTP/protobuf, configured by flags or by the standard environment
//! variables; tracing off without an endpoint; and the span metrics and
//! limits. `otlp_outbox.rs` proves the delivery exactly once.
//!
//! Every test runs the real binary against a real OTLP receiver in-process
//! (`otlp_receiver`: the `opentelemetry-proto` `TraceService` over tonic for
//! gRPC, a hyper endpoint for HTTP/protobuf).

mod otlp_receiver;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use otlp_receiver::spans::*;
use otlp_receiver::{Protocol, ReceivedSpan, Receiver};
use serde_json::Value;
use support::exporter::Exporter;
use support::http::{self, port_is_free};
use support::samples::{labelled, sample};
use support::wait_for;

// ---------------------------------------------------------------------------
// the receiver itself

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
        http::try_send(
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

    let ok_span = arrived_once(receiver, ok.id);
    assert_span(&ok_span, &finished_ok(&ok, Some(ok_start), ok_end));
    let aborted_span = arrived_once(receiver, aborted.id);
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
    let exporter = pointed_at(&receiver)
        .arg("--otlp.header=x-tenant=acme")
        .arg("--otlp.header=x-team=perf")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,cloud.region=eu-north-1",
        )
        .start();
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
    assert_eq!(exporter.sample("loadimpact_spans_pending"), 0.0);
    assert_eq!(
        exporter.sample("loadimpact_span_export_failures_total"),
        0.0
    );
    assert_eq!(exporter.sample("loadimpact_spans_dropped_total"), 0.0);
    std::thread::sleep(QUIET);
    assert_exactly_once(&receiver, &[1000, 1001]);
}

#[test]
fn http_span_is_exact() {
    // The default protocol is http/protobuf: only the endpoint is given.
    let receiver = Receiver::start(Protocol::HttpProtobuf);
    let exporter = Exporter::builder()
        .arg(format!("--otlp.endpoint={}", receiver.endpoint()))
        .arg("--otlp.max-backoff=1s")
        .arg("--otlp.header=authorization=Bearer s3cret")
        .start();
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
    assert_eq!(exporter.sample("loadimpact_spans_pending"), 0.0);
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
    let exporter = Exporter::builder()
        .arg("--otlp.max-backoff=1s")
        .envs(envs)
        .start();
    let info = run_info(run);
    start_run(&exporter, &info);
    finish_run(&exporter, &info, 3, "Finished");
    let span = arrived_once(receiver, run);
    assert_identity(&span, &info);
    span
}

// ---------------------------------------------------------------------------
// configuration and metrics

/// No endpoint: tracing is off. Nothing is exported (not even to the default
/// OTLP ports, watched here when free) and no span metric moves.
#[test]
fn tracing_off_without_endpoint() {
    // Receivers on the standard ports catch an exporter that falls back to them.
    let watch = |protocol: Protocol, port: u16| {
        port_is_free(port).then(|| Receiver::start_on(protocol, port))
    };
    let default_grpc = watch(Protocol::Grpc, 4317);
    let default_http = watch(Protocol::HttpProtobuf, 4318);
    if default_grpc.is_none() || default_http.is_none() {
        eprintln!("4317 or 4318 busy: default-port exports not watched on the busy one");
    }
    let exporter = Exporter::start(&[]);
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
        assert_eq!(sample(&samples, name), 0.0, "{name} with tracing off");
    }
}

/// `loadimpact_test_run_info` lists the most recent finished runs, at most
/// `--runs.info-limit`, with the trace id to link to.
#[test]
fn runs_info_limit() {
    let receiver = Receiver::start(Protocol::HttpProtobuf);
    let exporter = pointed_at(&receiver).arg("--runs.info-limit=3").start();
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
    let series = labelled(&exporter.samples(), "loadimpact_test_run_info");
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
    let exporter = pointed_at(&receiver).arg("--otlp.max-pending=2").start();
    for run in 9200..9203 {
        let info = run_info(run);
        start_run(&exporter, &info);
        finish_run(&exporter, &info, 3, "Finished");
    }
    assert_eq!(exporter.sample("loadimpact_spans_dropped_total"), 1.0);
    assert_eq!(exporter.sample("loadimpact_spans_pending"), 2.0);
    receiver.up();
    arrived_once(&receiver, 9200);
    arrived_once(&receiver, 9201);
    wait_metric(&exporter, "loadimpact_spans_pending", |v| v == 0.0);
    std::thread::sleep(QUIET);
    assert_exactly_once(&receiver, &[9200, 9201]);
    assert_eq!(exporter.sample("loadimpact_spans_dropped_total"), 1.0);
}

/// `--otlp.batch-size`: a backlog goes out in requests of at most that many
/// spans, each span once.
#[test]
fn backlog_goes_out_in_batches() {
    let mut receiver = Receiver::down_on_free_port(Protocol::HttpProtobuf);
    let exporter = pointed_at(&receiver).arg("--otlp.batch-size=2").start();
    let runs: Vec<u64> = (9300..9305).collect();
    for run in &runs {
        let info = run_info(*run);
        start_run(&exporter, &info);
        finish_run(&exporter, &info, 3, "Finished");
    }
    assert_eq!(exporter.sample("loadimpact_spans_pending"), 5.0);
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
    assert_eq!(exporter.sample("loadimpact_spans_exported_total"), 5.0);
}

/// A full outbox says so in a log line (the metric is checked in
/// `outbox_is_bounded`).
#[test]
fn full_outbox_is_logged() {
    let receiver = Receiver::down_on_free_port(Protocol::Grpc);
    let tmp = tempfile::tempdir().expect("temp dir");
    let log_path = tmp.path().join("exporter.log");
    let exporter = pointed_at(&receiver)
        .args(["--otlp.max-pending=1", "--log.format=json"])
        .log_to(&log_path)
        .start();
    for run in [9400, 9401] {
        let body = run_info(run).finished(3, Some("Finished"));
        let resp = exporter.post_id(&body, &format!("finish-{run}"));
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
    let exporter = pointed_at(&receiver).start();
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
        exporter.sample("loadimpact_spans_exported_total"),
        runs.len() as f64
    );
}
