//! HTTP routing: thin. Each handler reads the request, hands it to the parser
//! or the writer, and turns the answer into a response. No state is changed
//! here; the only write path is `ingest::Ingest` (the local writer, or the
//! shared log).

mod api;
mod landing;

use crate::access::{Allowlist, Tokens};
use crate::clock::now_millis;
use crate::ingest::Ingest;
use crate::state::{EventResult, Input};
use crate::webhook::{self, Headers, WebhookError};
use crate::writer::Shared;
use bytes::Bytes;
use flate2::write::GzEncoder;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCEPT_ENCODING, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_TYPE, VARY,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

/// Everything a request handler needs.
pub struct App {
    pub shared: Arc<Shared>,
    pub writer: Ingest,
    pub registry: prometheus::Registry,
    pub telemetry_path: String,
    pub webhook_path: String,
    pub max_body_bytes: usize,
    /// The longest a webhook body may take to arrive.
    pub read_timeout: std::time::Duration,
    pub tokens: Arc<Tokens>,
    pub allowlist: Allowlist,
    pub throttle: Throttles,
    /// The length of the last exposition, so that the next is written into
    /// a buffer of about its size at once.
    pub exposition_len: std::sync::atomic::AtomicUsize,
}

/// Log lines about refused requests, at most one a minute of each kind.
#[derive(Default)]
pub struct Throttles {
    unauthorized: Throttle,
    forbidden: Throttle,
    refused: Throttle,
}

/// At most one `true` a minute.
#[derive(Default)]
struct Throttle {
    last: std::sync::atomic::AtomicI64,
}

impl Throttle {
    fn due(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = now_millis();
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= 60_000)
            && self
                .last
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything: the webhook, the metrics, the API and the probes.
    All,
    /// Everything but the webhook, which has a listener of its own.
    Pages,
    /// The webhook alone.
    Webhook,
}

impl Role {
    /// The `listener` label of the connection metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All | Role::Pages => "main",
            Role::Webhook => "webhook",
        }
    }

    fn serves_webhook(self) -> bool {
        matches!(self, Role::All | Role::Webhook)
    }

    fn serves_pages(self) -> bool {
        matches!(self, Role::All | Role::Pages)
    }
}

pub type Body = Full<Bytes>;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(super) fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    respond(status, "application/json", value.to_string())
}

fn error_response(status: StatusCode, message: &str, field: Option<&str>) -> Response<Body> {
    let mut body = serde_json::Map::new();
    body.insert("result".into(), json!("rejected"));
    body.insert("error".into(), json!(message));
    if let Some(field) = field {
        body.insert("field".into(), json!(field));
    }
    json_response(status, serde_json::Value::Object(body))
}

/// The read-only pages, besides the webhook.
enum Page {
    Metrics,
    Healthy,
    Ready,
    Runs,
    Landing,
}

/// Routes one request from `peer` on a listener of `role`: the webhook, or
/// a page (GET or HEAD only), or 404.
pub async fn handle(
    app: Arc<App>,
    role: Role,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path();
    if role.serves_webhook() {
        if let Some(token) = webhook_target(path, &app.webhook_path, !app.tokens.is_open()) {
            let token = token.map(str::to_owned);
            return webhook(&app, peer, token.as_deref(), req).await;
        }
    }
    if !role.serves_pages() {
        return error_response(StatusCode::NOT_FOUND, "not found", None);
    }
    let page = match path {
        p if p == app.telemetry_path => Page::Metrics,
        "/-/healthy" => Page::Healthy,
        "/-/ready" => Page::Ready,
        "/api/v1/runs" => Page::Runs,
        "/" => Page::Landing,
        _ => return error_response(StatusCode::NOT_FOUND, "not found", None),
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = error_response(StatusCode::METHOD_NOT_ALLOWED, "use GET", None);
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let text = "text/plain; charset=utf-8";
    match page {
        Page::Metrics => metrics_page(&app, accepts_gzip(req.headers())),
        Page::Healthy if app.shared.is_healthy() => respond(StatusCode::OK, text, "Healthy.\n"),
        Page::Healthy => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            "Unhealthy: the store failed and cannot be reopened.\n",
        ),
        Page::Ready if app.shared.is_ready() => respond(StatusCode::OK, text, "Ready.\n"),
        Page::Ready => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            "Not ready: the store is not open, or the shared log (Redis) is unreachable or not caught up yet.\n",
        ),
        Page::Runs => api::runs(&app),
        Page::Landing => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            landing::landing_page(&app),
        ),
    }
}

/// `GET <telemetry path>`: the exposition, rendered under the state's read
/// lock, then compressed outside it when the scraper accepts gzip (as
/// Prometheus does: a large scrape shrinks about tenfold).
fn metrics_page(app: &App, gzip: bool) -> Response<Body> {
    use std::sync::atomic::Ordering;
    // A little more than last time: the state may have grown since.
    let capacity = app.exposition_len.load(Ordering::Relaxed) / 16 * 17;
    let mut text = {
        let state = app.shared.read();
        crate::metrics::render_state(&state, &app.shared.machine, now_millis(), capacity)
    };
    crate::metrics::append_registry(&mut text, &app.registry);
    app.exposition_len.store(text.len(), Ordering::Relaxed);
    let mut response = if gzip {
        let mut encoder = GzEncoder::new(
            Vec::with_capacity(text.len() / 8),
            flate2::Compression::fast(),
        );
        // Writing to a Vec cannot fail.
        let compressed = encoder
            .write_all(text.as_bytes())
            .and_then(|()| encoder.finish());
        match compressed {
            Ok(bytes) => {
                let mut response = respond(StatusCode::OK, crate::metrics::CONTENT_TYPE, bytes);
                response
                    .headers_mut()
                    .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                response
            }
            Err(_) => respond(StatusCode::OK, crate::metrics::CONTENT_TYPE, text),
        }
    } else {
        respond(StatusCode::OK, crate::metrics::CONTENT_TYPE, text)
    };
    response
        .headers_mut()
        .insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    response
}

/// True when `Accept-Encoding` lists gzip (or `*`) with a non-zero quality.
fn accepts_gzip(headers: &hyper::HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// Whether `path` is the webhook's: the path itself (`Some(None)`), or with
/// a token as one more segment (`Some(Some(token))`) when tokens are in use.
fn webhook_target<'a>(path: &'a str, webhook_path: &str, tokens: bool) -> Option<Option<&'a str>> {
    if path == webhook_path {
        return Some(None);
    }
    let rest = path.strip_prefix(webhook_path)?;
    let rest = match webhook_path.ends_with('/') {
        true => rest,
        false => rest.strip_prefix('/')?,
    };
    // `/webhook/?token=...` too: an empty segment presents no token.
    (tokens && !rest.contains('/')).then_some((!rest.is_empty()).then_some(rest))
}

/// The `token` parameter of a query string.
fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

/// Who may post: the address ranges, then the token. `None` admits the
/// request, else its rejection. The token never reaches a log line or a
/// response.
fn admit(
    app: &App,
    peer: SocketAddr,
    path_token: Option<&str>,
    req: &Request<Incoming>,
) -> Option<Rejection> {
    // A value that is not text (bytes above 0x7f) stays in as one that names
    // no address, which refuses the request: dropped, it would leave the
    // proxy itself as the client.
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    if !app.allowlist.permits(peer.ip(), &forwarded) {
        if app.throttle.forbidden.due() {
            tracing::warn!(peer = %peer.ip(), "refused a webhook request from an address outside --webhook.allowed-cidrs (logged once a minute)");
        }
        return Some(reject(
            StatusCode::FORBIDDEN,
            "this address may not post to the webhook",
            None,
        ));
    }
    let presented = path_token.or_else(|| query_token(req.uri().query()));
    if !app.tokens.permits(presented) {
        if app.throttle.unauthorized.due() {
            tracing::warn!(peer = %peer.ip(), "refused a webhook request without a valid token (logged once a minute)");
        }
        let mut rejection = reject(
            StatusCode::UNAUTHORIZED,
            "a valid token is required, as the last path segment or as ?token=",
            None,
        );
        rejection
            .1
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Some(rejection);
    }
    None
}

/// `POST <webhook path>`: admit, parse, submit, answer only once durable.
async fn webhook(
    app: &App,
    peer: SocketAddr,
    path_token: Option<&str>,
    req: Request<Incoming>,
) -> Response<Body> {
    let at = now_millis();
    let read = match admit(app, peer, path_token, &req) {
        None => read_and_parse(app, req).await,
        Some(rejection) => Err(rejection),
    };
    let (code, response) = match read {
        Err(rejection) => rejection,
        Ok(delivery) => {
            return match app.writer.submit_webhook(delivery, at).await {
                Ok(applied) if applied.result == EventResult::Refused => {
                    let limit = applied.refused.map_or("", |l| l.as_str());
                    let flag = format!("--limits.max-{}", limit.replace('_', "-"));
                    if app.throttle.refused.due() {
                        tracing::warn!(
                            limit,
                            flag,
                            "refused deliveries for a new project or load test past its cap (logged once a minute)"
                        );
                    }
                    let body = json!({
                        "result": applied.result.as_str(),
                        "error": format!("too many distinct {}; the operator can raise {flag}", limit.replace('_', " ")),
                        "limit": limit,
                    });
                    json_response(StatusCode::TOO_MANY_REQUESTS, body)
                }
                // The answer to almost every delivery: written as text rather
                // than built as a JSON value (the result is a plain word).
                Ok(applied) => respond(
                    StatusCode::OK,
                    "application/json",
                    format!(r#"{{"result":"{}"}}"#, applied.result.as_str()),
                ),
                Err(e) => error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("{e}; retry later"),
                    None,
                ),
            };
        }
    };
    // A rejected request changes no run metric; it is counted by its code.
    if let Err(e) = app.writer.submit(Input::Rejected { code }).await {
        tracing::warn!(error = %e, code, "a rejected request's count was not stored with it");
    }
    response
}

type Rejection = (u16, Response<Body>);

fn reject(status: StatusCode, message: &str, field: Option<&str>) -> Rejection {
    (status.as_u16(), error_response(status, message, field))
}

async fn read_and_parse(app: &App, req: Request<Incoming>) -> Result<webhook::Delivery, Rejection> {
    if req.method() != Method::POST {
        let (code, mut resp) = reject(
            StatusCode::METHOD_NOT_ALLOWED,
            "the webhook takes POST",
            None,
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return Err((code, resp));
    }
    let too_large = || {
        reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body is larger than {} bytes", app.max_body_bytes),
            None,
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > app.max_body_bytes as u64) {
        return Err(too_large());
    }
    // A header the webhook reads, as text. Given twice with two values it is
    // refused: which one names the event or the delivery would be a guess.
    let header = |name: &str| -> Result<Option<String>, String> {
        let mut values = req.headers().get_all(name).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.any(|other| other != first) {
            return Err(format!(
                "header {name} is given more than once, with different values"
            ));
        }
        first
            .to_str()
            .map(|v| Some(v.to_owned()))
            .map_err(|_| format!("header {name} is not valid text"))
    };
    let header_error = |message: String| reject(StatusCode::BAD_REQUEST, &message, None);
    let content_type = header("content-type").map_err(header_error)?;
    let event = header("x-loadimpact-event").map_err(header_error)?;
    let request_id = header("x-loadimpact-id").map_err(header_error)?;
    let k6_event = header("x-k6cloud-event").map_err(header_error)?;
    let k6_id = header("x-k6cloud-id").map_err(header_error)?;
    // Only read to tell the formats apart: an odd one is no error.
    let user_agent = req
        .headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    let collecting = Limited::new(req.into_body(), app.max_body_bytes).collect();
    let Ok(collected) = tokio::time::timeout(app.read_timeout, collecting).await else {
        return Err(reject(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the body did not arrive within {:?}", app.read_timeout),
            None,
        ));
    };
    let body = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
                None,
            ))
        }
    };
    let headers = Headers {
        content_type: content_type.as_deref(),
        event: event.as_deref(),
        request_id: request_id.as_deref(),
        k6_event: k6_event.as_deref(),
        k6_id: k6_id.as_deref(),
        user_agent: user_agent.as_deref(),
    };
    webhook::parse(headers, &body).map_err(|e: WebhookError| {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        tracing::debug!(error = %e, status = status.as_u16(), "webhook rejected");
        reject(status, &e.to_string(), e.field())
    })
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;
    use hyper::header::{HeaderMap, HeaderValue, ACCEPT_ENCODING};

    #[test]
    fn gzip_is_used_when_accepted_with_a_quality_above_zero() {
        let accepts = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                ACCEPT_ENCODING,
                HeaderValue::from_str(value).expect("header"),
            );
            accepts_gzip(&headers)
        };
        assert!(accepts("gzip"));
        assert!(accepts("deflate, GZIP;q=0.5"));
        assert!(accepts("*"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
