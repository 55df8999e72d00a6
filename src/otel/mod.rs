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
//!
//! - [`span`]: the pure run-to-span translation and the ids;
//! - [`export`]: the OTLP exporter built from the flags, and the loop.

mod export;
mod span;

pub use export::{build_exporter, export_loop};
pub use span::trace_id;
