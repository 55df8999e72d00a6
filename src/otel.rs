//! Runs as OpenTelemetry spans: the webhook-to-trace translation in one place,
//! and the loop that drains the durable outbox to an OTLP collector.
//!
//! A finished (or expired) run puts a [`SpanRecord`] in the store's outbox in
//! the same commit that counts it. This module builds the span from the record
//! alone ([`span_data`], pure), exports batches with the OTLP exporter
//! (gRPC or HTTP/protobuf), and removes a span from the outbox only once the
//! collector acknowledged it. The collector down for an hour, or the exporter
//! killed, loses nothing: the spans wait in the store with their original
//! timestamps. Ids are derived from the run id ([`trace_id`], [`span_id`]), so
//! a re-export after a crash, or from another replica, is the same span and a
//! backend de-duplicates it.

use crate::outcome::Outcome;
use crate::state::{Input, Millis, SpanEnd, SpanRecord};
use crate::writer::{Shared, WriteError, WriterHandle};
use clap::ValueEnum;
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The span's name: low cardinality; the test's name is an attribute.
pub const SPAN_NAME: &str = "load test run";
/// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "loadimpact";
/// First wait after a failed export; doubles up to `--otlp.max-backoff`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// With nothing pending, the outbox is looked at again after this long even
/// without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    #[value(name = "grpc")]
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Flags of the trace export.
#[derive(Debug, Clone, clap::Args)]
pub struct OtlpArgs {
    /// OTLP traces endpoint: `http://host:4317` for grpc, the full URL
    /// (`http://host:4318/v1/traces`) for http/protobuf. Unset: the standard
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT apply;
    /// none of them set: tracing is off.
    #[arg(long = "otlp.endpoint", env = "LOADIMPACT_EXPORTER_OTLP_ENDPOINT")]
    pub endpoint: Option<String>,

    /// OTLP protocol. Unset: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    /// OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf.
    #[arg(
        long = "otlp.protocol",
        env = "LOADIMPACT_EXPORTER_OTLP_PROTOCOL",
        value_enum
    )]
    pub protocol: Option<OtlpProtocol>,

    /// Header sent with every export, `key=value` (the value may hold commas
    /// and `=`); repeat the flag for several. OTEL_EXPORTER_OTLP_HEADERS also
    /// applies.
    #[arg(long = "otlp.header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,

    /// Timeout of one export request.
    #[arg(
        long = "otlp.timeout",
        env = "LOADIMPACT_EXPORTER_OTLP_TIMEOUT",
        default_value = "10s",
        value_parser = crate::config::parse_duration
    )]
    pub timeout: Duration,

    /// Most spans kept waiting for the collector; beyond it new spans are
    /// dropped and counted in loadimpact_spans_dropped_total.
    #[arg(
        long = "otlp.max-pending",
        env = "LOADIMPACT_EXPORTER_OTLP_MAX_PENDING",
        default_value_t = 100_000
    )]
    pub max_pending: usize,

    /// Longest wait between retries of a failed export (backoff doubles up to it).
    #[arg(
        long = "otlp.max-backoff",
        env = "LOADIMPACT_EXPORTER_OTLP_MAX_BACKOFF",
        default_value = "60s",
        value_parser = crate::config::parse_duration
    )]
    pub max_backoff: Duration,

    /// Most spans in one export request.
    #[arg(
        long = "otlp.batch-size",
        env = "LOADIMPACT_EXPORTER_OTLP_BATCH_SIZE",
        default_value_t = 512,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub batch_size: u32,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{s:?}: empty header name"));
    }
    Ok((key.to_owned(), value.trim().to_owned()))
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

impl OtlpArgs {
    /// Tracing is on when an endpoint is configured, by flag or standard variable.
    pub fn enabled(&self) -> bool {
        self.endpoint.as_deref().is_some_and(|e| !e.is_empty())
            || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            || env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
    }

    /// The protocol from the flag or the standard variables.
    pub fn resolved_protocol(&self) -> anyhow::Result<OtlpProtocol> {
        if let Some(p) = self.protocol {
            return Ok(p);
        }
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Ok(value) = std::env::var(var) {
                return match value.trim() {
                    "grpc" => Ok(OtlpProtocol::Grpc),
                    "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
                    other => Err(anyhow::anyhow!(
                        "{var}={other:?} is not supported (use grpc or http/protobuf)"
                    )),
                };
            }
        }
        Ok(OtlpProtocol::HttpProtobuf)
    }

    /// Builds the OTLP exporter. Must run inside the tokio runtime (tonic).
    /// Retries are the outbox loop's, not the exporter's.
    pub fn build_exporter(&self) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
        let endpoint = self.endpoint.clone().filter(|e| !e.is_empty());
        let exporter = match self.resolved_protocol()? {
            OtlpProtocol::Grpc => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_timeout(self.timeout)
                    .with_retry_policy(RetryPolicy::disabled());
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if !self.headers.is_empty() {
                    builder = builder.with_metadata(
                        opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(
                            header_map(&self.headers)?,
                        ),
                    );
                }
                builder.build()?
            }
            OtlpProtocol::HttpProtobuf => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_timeout(self.timeout)
                    .with_retry_policy(RetryPolicy::disabled());
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if !self.headers.is_empty() {
                    header_map(&self.headers)?; // the same validation as for grpc
                    builder = builder.with_headers(self.headers.iter().cloned().collect());
                }
                builder.build()?
            }
        };
        Ok(exporter)
    }
}

fn header_map(headers: &[(String, String)]) -> anyhow::Result<hyper::http::HeaderMap> {
    let mut map = hyper::http::HeaderMap::new();
    for (key, value) in headers {
        let name = hyper::http::HeaderName::from_bytes(key.as_bytes())
            .map_err(|e| anyhow::anyhow!("--otlp.header {key:?}: {e}"))?;
        let value = hyper::http::HeaderValue::from_str(value)
            .map_err(|e| anyhow::anyhow!("--otlp.header {key:?}: {e}"))?;
        map.insert(name, value);
    }
    Ok(map)
}

/// The resource: `service.name` defaults to `loadimpact`; the standard
/// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES apply.
pub fn resource() -> Resource {
    let named = env_set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attrs| {
            attrs
                .split(',')
                .any(|kv| kv.split('=').next().map(str::trim) == Some("service.name"))
        });
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(DEFAULT_SERVICE_NAME).build()
    }
}

fn digest(prefix: &str, run_id: u64) -> [u8; 32] {
    Sha256::digest(format!("{prefix}{run_id}").as_bytes()).into()
}

/// Trace id of a run: the first 16 bytes of
/// SHA-256("loadimpact-exporter/trace/" + decimal run id).
pub fn trace_id(run_id: u64) -> TraceId {
    let hash = digest("loadimpact-exporter/trace/", run_id);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    TraceId::from_bytes(bytes)
}

/// Span id of a run: the first 8 bytes of
/// SHA-256("loadimpact-exporter/span/" + decimal run id).
pub fn span_id(run_id: u64) -> SpanId {
    let hash = digest("loadimpact-exporter/span/", run_id);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash[..8]);
    SpanId::from_bytes(bytes)
}

fn time(at: Millis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap_or(0))
}

/// An id as an int attribute, or as a decimal string past i64::MAX (so no
/// two ids ever share a value).
fn int(value: u64) -> opentelemetry::Value {
    match i64::try_from(value) {
        Ok(v) => opentelemetry::Value::I64(v),
        Err(_) => opentelemetry::Value::from(value.to_string()),
    }
}

/// The OpenTelemetry test conventions' `test.suite.run.status`.
fn suite_status(end: &SpanEnd) -> &'static str {
    match end {
        SpanEnd::Expired => "timed_out",
        SpanEnd::Finished { outcome, .. } => match outcome {
            Outcome::Finished => "success",
            Outcome::TimedOut => "timed_out",
            o if o.is_abort() => "aborted",
            _ => "failure",
        },
    }
}

/// The span of one run, built from its outbox record alone.
pub fn span_data(run_id: u64, record: &SpanRecord) -> SpanData {
    let end = time(record.end);
    let start = record.start.map(time).unwrap_or(end);
    let mut attributes = vec![
        KeyValue::new(
            "loadimpact.organization_id",
            int(record.project.organization_id),
        ),
        KeyValue::new("loadimpact.project_id", int(record.project.project_id)),
        KeyValue::new("loadimpact.load_test_id", int(record.load_test_id)),
        KeyValue::new("loadimpact.load_test_run_id", int(run_id)),
    ];
    if let Some(user) = record.user_id {
        attributes.push(KeyValue::new("loadimpact.user_id", int(user)));
    }
    if let Some(name) = &record.name {
        attributes.push(KeyValue::new("loadimpact.test.name", name.clone()));
        attributes.push(KeyValue::new("test.suite.name", name.clone()));
    }
    let (outcome, status) = match &record.end_kind {
        SpanEnd::Finished {
            outcome,
            status,
            status_text,
        } => {
            attributes.push(KeyValue::new("loadimpact.status", *status));
            if let Some(text) = status_text {
                attributes.push(KeyValue::new("loadimpact.status_text", text.clone()));
            }
            let span_status = if *outcome == Outcome::Finished {
                Status::Ok
            } else {
                Status::error(status_text.clone().unwrap_or_else(|| outcome.to_string()))
            };
            (outcome.as_str(), span_status)
        }
        SpanEnd::Expired => (
            "expired",
            Status::error("no finish event within --run.max-duration"),
        ),
    };
    attributes.push(KeyValue::new("loadimpact.outcome", outcome));
    attributes.push(KeyValue::new(
        "test.suite.run.status",
        suite_status(&record.end_kind),
    ));
    let mut events = Vec::new();
    if record.start.is_some() {
        events.push(Event::new("started", start, Vec::new(), 0));
    } else {
        attributes.push(KeyValue::new("loadimpact.start_unknown", true));
    }
    let end_event = match record.end_kind {
        SpanEnd::Finished { .. } => "finished",
        SpanEnd::Expired => "expired",
    };
    events.push(Event::new(end_event, end, Vec::new(), 0));
    let mut span_events = SpanEvents::default();
    span_events.events = events;

    SpanData {
        span_context: SpanContext::new(
            trace_id(run_id),
            span_id(run_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: Cow::Borrowed(SPAN_NAME),
        start_time: start,
        end_time: end,
        attributes,
        dropped_attributes_count: 0,
        events: span_events,
        links: SpanLinks::default(),
        status,
        instrumentation_scope: InstrumentationScope::builder("loadimpact-exporter")
            .with_version(crate::metrics::VERSION)
            .build(),
    }
}

/// Drains the outbox to the collector until `stop` turns true. A batch is
/// removed from the outbox only after the collector acknowledged it.
pub async fn export_loop(
    mut exporter: opentelemetry_otlp::SpanExporter,
    shared: Arc<Shared>,
    writer: WriterHandle,
    batch_size: usize,
    max_backoff: Duration,
    mut stop: watch::Receiver<bool>,
) {
    exporter.set_resource(&resource());
    let mut backoff = INITIAL_BACKOFF;
    loop {
        if *stop.borrow() {
            break;
        }
        let batch: Vec<(u64, SpanRecord)> = shared
            .read()
            .outbox
            .iter()
            .take(batch_size)
            .map(|(id, record)| (*id, record.clone()))
            .collect();
        if batch.is_empty() {
            tokio::select! {
                _ = shared.outbox_notify.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => break,
            }
            continue;
        }
        let spans = batch.iter().map(|(id, r)| span_data(*id, r)).collect();
        // A shutdown does not wait for a slow collector: the batch stays in
        // the outbox and goes again after the restart, with the same ids.
        let result = tokio::select! {
            result = exporter.export(spans) => result,
            _ = stop.changed() => break,
        };
        match result {
            Ok(()) => {
                backoff = INITIAL_BACKOFF;
                let run_ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
                tracing::debug!(spans = run_ids.len(), "spans exported");
                match writer.submit(Input::SpansExported { run_ids }).await {
                    Ok(_) => {}
                    Err(WriteError::Closed) => break,
                    // They stay pending and go again: the ids make it the same span.
                    Err(e) => tracing::warn!(error = %e, "cannot record exported spans"),
                }
            }
            Err(e) => {
                let pending = shared.read().outbox.len();
                tracing::warn!(error = %e, pending, retry_in = ?backoff, "span export failed; spans stay in the outbox");
                if let Err(WriteError::Closed) = writer.submit(Input::SpanExportFailed).await {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
    if let Err(e) = exporter.shutdown() {
        tracing::debug!(error = %e, "OTLP exporter shutdown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::Project;
    use opentelemetry::Value;

    fn record(end_kind: SpanEnd, start: Option<Millis>) -> SpanRecord {
        SpanRecord {
            project: Project {
                organization_id: 1,
                project_id: 2,
            },
            load_test_id: 3,
            user_id: Some(4),
            name: Some("checkout".into()),
            start,
            end: 90_000,
            end_kind,
        }
    }

    fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn ids_follow_the_documented_formula() {
        let hash = Sha256::digest(b"loadimpact-exporter/trace/42");
        assert_eq!(trace_id(42).to_bytes().as_slice(), &hash[..16]);
        let hash = Sha256::digest(b"loadimpact-exporter/span/42");
        assert_eq!(span_id(42).to_bytes().as_slice(), &hash[..8]);
        assert_ne!(trace_id(42), trace_id(43));
    }

    #[test]
    fn a_failed_threshold_run_is_an_error_span_with_both_events() {
        let span = span_data(
            42,
            &record(
                SpanEnd::Finished {
                    outcome: Outcome::FailedThreshold,
                    status: 12,
                    status_text: Some("Failed threshold".into()),
                },
                Some(30_000),
            ),
        );
        assert_eq!(span.name, SPAN_NAME);
        assert_eq!(span.start_time, UNIX_EPOCH + Duration::from_secs(30));
        assert_eq!(span.end_time, UNIX_EPOCH + Duration::from_secs(90));
        assert_eq!(span.status, Status::error("Failed threshold"));
        assert_eq!(
            attr(&span, "test.suite.run.status"),
            Some(&Value::from("failure"))
        );
        assert_eq!(attr(&span, "loadimpact.status"), Some(&Value::I64(12)));
        assert_eq!(
            attr(&span, "loadimpact.outcome"),
            Some(&Value::from("failed_threshold"))
        );
        let names: Vec<_> = span.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(names, ["started", "finished"]);
        assert_eq!(span.parent_span_id, SpanId::INVALID);
    }

    #[test]
    fn a_finish_without_start_is_a_zero_length_span() {
        let span = span_data(
            1,
            &record(
                SpanEnd::Finished {
                    outcome: Outcome::Finished,
                    status: 3,
                    status_text: None,
                },
                None,
            ),
        );
        assert_eq!(span.start_time, span.end_time);
        assert_eq!(span.status, Status::Ok);
        assert_eq!(
            attr(&span, "loadimpact.start_unknown"),
            Some(&Value::Bool(true))
        );
        assert_eq!(span.events.len(), 1);
    }

    #[test]
    fn an_expired_run_ends_at_the_expiry() {
        let span = span_data(1, &record(SpanEnd::Expired, Some(0)));
        assert_eq!(
            attr(&span, "loadimpact.outcome"),
            Some(&Value::from("expired"))
        );
        assert!(matches!(span.status, Status::Error { .. }));
        assert_eq!(span.events.last().map(|e| e.name.as_ref()), Some("expired"));
    }

    #[test]
    fn suite_status_follows_the_test_conventions() {
        let finished = |outcome| SpanEnd::Finished {
            outcome,
            status: 0,
            status_text: None,
        };
        assert_eq!(suite_status(&finished(Outcome::Finished)), "success");
        assert_eq!(suite_status(&finished(Outcome::TimedOut)), "timed_out");
        assert_eq!(suite_status(&finished(Outcome::AbortedByLimit)), "aborted");
        assert_eq!(suite_status(&finished(Outcome::Unknown)), "failure");
        assert_eq!(suite_status(&SpanEnd::Expired), "timed_out");
    }

    #[test]
    fn ids_past_i64_stay_distinct_attributes() {
        assert_eq!(int(7), Value::I64(7));
        assert_eq!(int(u64::MAX), Value::from(u64::MAX.to_string()));
        assert_ne!(int(u64::MAX), int(u64::MAX - 1));
    }

    #[test]
    fn headers_parse() {
        assert_eq!(
            parse_header("authorization=Bearer x=y"),
            Ok(("authorization".into(), "Bearer x=y".into()))
        );
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("=v").is_err());
    }
}
