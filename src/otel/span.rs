//! The webhook-to-trace translation, in one place and pure: a run's span
//! built from its outbox record alone, with ids derived from the run id, so
//! that a re-export after a crash is the same span.

use crate::clock::Millis;
use crate::config::env_set;
use crate::outcome::Outcome;
use crate::state::{SpanEnd, SpanRecord};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use opentelemetry_sdk::Resource;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The span's name: low cardinality; the test's name is an attribute.
pub const SPAN_NAME: &str = "load test run";
/// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "loadimpact";
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
    // The run's page in Grafana Cloud k6 (OpenTelemetry's `url.full`), and
    // its load test's.
    if let Some(url) = &record.url {
        attributes.push(KeyValue::new("url.full", url.clone()));
    }
    if let Some(url) = &record.load_test_url {
        attributes.push(KeyValue::new("loadimpact.load_test.url", url.clone()));
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
    // The errors k6 Cloud attached to the run, each when it happened (or at
    // the end, where it does not say).
    for error in &record.errors {
        let mut attributes = vec![KeyValue::new("loadimpact.error.code", error.code)];
        if let Some(detail) = &error.detail {
            attributes.push(KeyValue::new("loadimpact.error.detail", detail.clone()));
        }
        let at = error.created.map_or(end, time);
        events.push(Event::new("error", at, attributes, 0));
    }
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
            .with_version(crate::version::VERSION)
            .build(),
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
            url: None,
            load_test_url: None,
            errors: Vec::new(),
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
    fn k6_clouds_errors_are_span_events_at_their_time() {
        let mut r = record(
            SpanEnd::Finished {
                outcome: Outcome::AbortedByScriptError,
                status: 7,
                status_text: None,
            },
            Some(30_000),
        );
        r.errors = vec![
            crate::webhook::RunError {
                code: 1001,
                detail: Some("script error".into()),
                created: Some(45_000),
            },
            crate::webhook::RunError {
                code: 7,
                detail: None,
                created: None,
            },
        ];
        let span = span_data(5, &r);
        let errors: Vec<_> = span.events.iter().filter(|e| e.name == "error").collect();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].timestamp, time(45_000));
        assert_eq!(errors[1].timestamp, time(90_000), "no time: at the end");
        let code = |e: &opentelemetry::trace::Event| {
            e.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "loadimpact.error.code")
                .map(|kv| kv.value.clone())
        };
        assert_eq!(code(errors[0]), Some(Value::I64(1001)));
        assert_eq!(code(errors[1]), Some(Value::I64(7)));
        assert!(errors[0]
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "loadimpact.error.detail"));
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
}
