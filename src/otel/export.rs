//! The OTLP exporter built from the flags (gRPC or HTTP/protobuf, its own
//! retries off), and the loop that drains the outbox through it, removing a
//! span only once the collector acknowledged it.

use super::span::{resource, span_data};
use crate::config::{OtlpArgs, OtlpProtocol};
use crate::ingest::Ingest;
use crate::state::{Input, SpanRecord};
use crate::writer::{Shared, WriteError};
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::SpanExporter as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// First wait after a failed export; doubles up to `--otlp.max-backoff`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// With nothing pending, the outbox is looked at again after this long even
/// without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// Builds the OTLP exporter from the flags. Must run inside the tokio
/// runtime (tonic). Retries are the outbox loop's, not the exporter's.
pub fn build_exporter(args: &OtlpArgs) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    let endpoint = args.endpoint.clone().filter(|e| !e.is_empty());
    let exporter = match args.resolved_protocol()? {
        OtlpProtocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(args.timeout)
                .with_retry_policy(RetryPolicy::disabled());
            if let Some(endpoint) = endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if !args.headers.is_empty() {
                builder = builder.with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(
                        header_map(&args.headers)?,
                    ),
                );
            }
            builder.build()?
        }
        OtlpProtocol::HttpProtobuf => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(args.timeout)
                .with_retry_policy(RetryPolicy::disabled());
            if let Some(endpoint) = endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if !args.headers.is_empty() {
                header_map(&args.headers)?; // the same validation as for grpc
                builder = builder.with_headers(args.headers.iter().cloned().collect());
            }
            builder.build()?
        }
    };
    Ok(exporter)
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

/// Drains the outbox to the collector until `stop` turns true. A batch is
/// removed from the outbox only after the collector acknowledged it.
pub async fn export_loop(
    mut exporter: opentelemetry_otlp::SpanExporter,
    shared: Arc<Shared>,
    writer: Ingest,
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
        // With several replicas, only the lease holder exports, once it
        // has caught up with the log.
        let exports = shared.exports_spans() && shared.is_ready();
        let batch: Vec<(u64, SpanRecord)> = shared
            .read()
            .outbox
            .iter()
            .take(if exports { batch_size } else { 0 })
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
                    Ok(()) => {}
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
