//! A real OTLP trace receiver, in-process, for the OpenTelemetry tests: the
//! `opentelemetry-proto` `TraceService` over tonic for gRPC, and a hyper
//! HTTP/1 endpoint `POST /v1/traces` for HTTP/protobuf. `spans` says what the
//! span of a run must be.
//!
//! It runs on its own tokio runtime (one worker thread), so tests stay plain
//! `#[test]` functions. It records every export it accepts (the request's
//! `ResourceSpans` and headers), can answer errors for a while (gRPC
//! `Unavailable`, HTTP 503) to exercise retries, and can be stopped and started
//! again on the same port to play "collector down, then up". Stopping drops the
//! runtime, which closes the listener and every open connection at once, as a
//! crashed collector would.
#![allow(dead_code)]

pub mod spans;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use prost::Message;

use crate::support::http::free_port;

/// The OTLP transport a receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// The value of `--otlp.protocol` / `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn flag_value(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// One accepted export request.
#[derive(Debug, Clone)]
pub struct Export {
    /// Request headers (gRPC metadata), names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub resource_spans: Vec<ResourceSpans>,
}

/// A received span with the resource it came with.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub resource: Resource,
    pub span: Span,
}

/// State shared between the test and the server tasks; survives restarts.
#[derive(Default)]
struct Shared {
    exports: Mutex<Vec<Export>>,
    /// While true, every export is answered with an error and not recorded.
    failing: Mutex<bool>,
    /// Export requests received, accepted or not.
    attempts: AtomicUsize,
    /// Export requests answered with an error.
    rejected: AtomicUsize,
    /// While set, every export is held this long before an error answer (a
    /// collector that hangs), and not recorded.
    stall: Mutex<Option<Duration>>,
    /// Export requests that were held.
    stalled: AtomicUsize,
}

impl Shared {
    /// Holds the request when stalling; `true` when it was held (and must be
    /// answered with an error).
    async fn stalled(&self) -> bool {
        let stall = *self.stall.lock().unwrap();
        let Some(stall) = stall else {
            return false;
        };
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.stalled.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(stall).await;
        true
    }

    /// Records the request unless failing; `true` when accepted.
    fn handle(
        &self,
        headers: BTreeMap<String, String>,
        request: ExportTraceServiceRequest,
    ) -> bool {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if *self.failing.lock().unwrap() {
            self.rejected.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        self.exports.lock().unwrap().push(Export {
            headers,
            resource_spans: request.resource_spans,
        });
        true
    }
}

/// Request headers (or gRPC metadata) as lower-case name -> value.
fn header_map(headers: &hyper::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

struct GrpcService(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.0.stalled().await {
            return Err(tonic::Status::unavailable(
                "test receiver stalled on purpose",
            ));
        }
        let headers = header_map(&request.metadata().clone().into_headers());
        if self.0.handle(headers, request.into_inner()) {
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        } else {
            Err(tonic::Status::unavailable(
                "test receiver is failing on purpose",
            ))
        }
    }
}

async fn http_handler(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let plain = |status: StatusCode, text: &str| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(text.to_owned())))
            .unwrap()
    };
    if req.uri().path() != "/v1/traces" {
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    }
    if req.method() != hyper::Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "POST only"));
    }
    let headers = header_map(req.headers());
    let content_type = headers.get("content-type").cloned().unwrap_or_default();
    if content_type != "application/x-protobuf" {
        return Ok(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("content-type {content_type:?} is not application/x-protobuf"),
        ));
    }
    if let Some(encoding) = headers.get("content-encoding") {
        if encoding != "identity" {
            return Ok(plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("content-encoding {encoding:?} is not supported by the test receiver"),
            ));
        }
    }
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, &format!("body: {e}"))),
    };
    if shared.stalled().await {
        return Ok(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "test receiver stalled on purpose",
        ));
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, &format!("protobuf: {e}"))),
    };
    if !shared.handle(headers, request) {
        return Ok(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "test receiver is failing on purpose",
        ));
    }
    let answer = ExportTraceServiceResponse {
        partial_success: None,
    }
    .encode_to_vec();
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(answer)))
        .unwrap())
}

/// An OTLP trace receiver on 127.0.0.1.
pub struct Receiver {
    pub protocol: Protocol,
    pub port: u16,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Starts a receiver on a free port.
    pub fn start(protocol: Protocol) -> Receiver {
        Self::start_on(protocol, free_port())
    }

    /// Starts a receiver on `port`.
    pub fn start_on(protocol: Protocol, port: u16) -> Receiver {
        let mut receiver = Self::down_on(protocol, port);
        receiver.up();
        receiver
    }

    /// A receiver that is not listening yet, with `port` reserved for it (free
    /// a moment ago): the exporter can be pointed at it before it comes up.
    pub fn down_on_free_port(protocol: Protocol) -> Receiver {
        Self::down_on(protocol, free_port())
    }

    fn down_on(protocol: Protocol, port: u16) -> Receiver {
        Receiver {
            protocol,
            port,
            shared: Arc::new(Shared::default()),
            runtime: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.runtime.is_some()
    }

    /// (Re)starts listening on the same port; keeps what was received.
    pub fn up(&mut self) {
        assert!(self.runtime.is_none(), "receiver already up");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-receiver")
            .enable_all()
            .build()
            .expect("receiver runtime");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        // Bind synchronously so that the receiver listens when `up` returns.
        // The port was just released by `down` (or never used): retry briefly.
        let listener = {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match StdTcpListener::bind(addr) {
                    Ok(l) => break l,
                    Err(e) if std::time::Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("receiver cannot bind {addr}: {e}"),
                }
            }
        };
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = self.shared.clone();
        match self.protocol {
            Protocol::Grpc => {
                let _guard = runtime.enter();
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                runtime.spawn(async move {
                    let result = tonic::transport::Server::builder()
                        .add_service(TraceServiceServer::new(GrpcService(shared)))
                        .serve_with_incoming(incoming)
                        .await;
                    if let Err(e) = result {
                        eprintln!("OTLP gRPC receiver stopped: {e}");
                    }
                });
            }
            Protocol::HttpProtobuf => {
                let _guard = runtime.enter();
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                runtime.spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |req| http_handler(shared.clone(), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            }
        }
        self.runtime = Some(runtime);
    }

    /// Stops listening and drops every open connection at once.
    pub fn down(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// From now on, answer every export with an error (gRPC `Unavailable`,
    /// HTTP 503) and record nothing.
    pub fn fail(&self) {
        *self.shared.failing.lock().unwrap() = true;
    }

    /// From now on, hold every export for `how_long` (a hanging collector),
    /// then answer it with an error; nothing is recorded.
    pub fn stall(&self, how_long: Duration) {
        *self.shared.stall.lock().unwrap() = Some(how_long);
    }

    /// From now on, accept exports again (no failing, no stalling).
    pub fn accept(&self) {
        *self.shared.failing.lock().unwrap() = false;
        *self.shared.stall.lock().unwrap() = None;
    }

    /// Export requests that were held by `stall`.
    pub fn stalled(&self) -> usize {
        self.shared.stalled.load(Ordering::SeqCst)
    }

    /// Export requests received (accepted or rejected).
    pub fn attempts(&self) -> usize {
        self.shared.attempts.load(Ordering::SeqCst)
    }

    /// Export requests answered with an error.
    pub fn rejected(&self) -> usize {
        self.shared.rejected.load(Ordering::SeqCst)
    }

    /// For `--otlp.endpoint`: the base URL for gRPC, the full traces URL for
    /// HTTP/protobuf.
    pub fn endpoint(&self) -> String {
        match self.protocol {
            Protocol::Grpc => self.base_url(),
            Protocol::HttpProtobuf => format!("{}/v1/traces", self.base_url()),
        }
    }

    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every accepted export so far.
    pub fn exports(&self) -> Vec<Export> {
        self.shared.exports.lock().unwrap().clone()
    }

    /// Every span accepted so far, with its resource, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let exports = self.shared.exports.lock().unwrap();
        let mut out = Vec::new();
        for export in exports.iter() {
            for rs in &export.resource_spans {
                let resource = rs.resource.clone().unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push(ReceivedSpan {
                            resource: resource.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// The spans received with this trace id.
    pub fn spans_with_trace_id(&self, trace_id: &[u8]) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.span.trace_id == trace_id)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A decoded attribute value, for comparisons.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Other(String),
}

impl Attr {
    fn from_any(value: &Option<AnyValue>) -> Attr {
        match value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => Attr::Str(s.clone()),
            Some(any_value::Value::IntValue(i)) => Attr::Int(*i),
            Some(any_value::Value::BoolValue(b)) => Attr::Bool(*b),
            Some(any_value::Value::DoubleValue(d)) => Attr::Double(*d),
            other => Attr::Other(format!("{other:?}")),
        }
    }
}

/// Attributes as a map (a repeated key fails the test: OTLP forbids it).
pub fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, Attr> {
    let mut out = BTreeMap::new();
    for kv in kvs {
        let previous = out.insert(kv.key.clone(), Attr::from_any(&kv.value));
        assert!(previous.is_none(), "attribute {:?} appears twice", kv.key);
    }
    out
}
