//! One listening socket and the connections it accepts, under limits that
//! hold against slow and greedy clients:
//!
//! - at most `max_connections` open at once: past it the socket is not
//!   accepted from (the kernel's backlog queues newcomers in order), as
//!   exporter-toolkit's limit listener does;
//! - a connection must deliver a request's whole head within the header
//!   timeout, counted from the accept, or for a keep-alive connection from
//!   the first byte of its next request (slowloris);
//! - a keep-alive connection with no request in flight and nothing received
//!   is closed after the idle timeout.
//!
//! The body's own deadline (`--web.read-timeout`) is the handler's, which
//! answers 408. A connection past a deadline is closed, never answered
//! half-way: a watchdog per connection drops it.
//!
//! Each listener is secured by its web configuration file
//! (`webconfig::Source`), read again for each connection: the TLS handshake
//! (within the header timeout), HTTP/2 only when ALPN chose it, basic auth
//! and the rate limit before every request, the configured headers on every
//! response. While the file is invalid, new connections are closed at once.

use crate::http::{handle, App, Body, Role};
use crate::webconfig::{Refusal, Source};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The limits one listener holds its connections to (from the flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most connections open at once.
    pub max_connections: usize,
    /// The longest a request's head may take to arrive.
    pub header_timeout: Duration,
    /// The longest a keep-alive connection may wait, silent, for its next request.
    pub idle_timeout: Duration,
}

/// Connection counts, by listener: what the limits did.
#[derive(Clone)]
pub struct ListenMetrics {
    open: IntGaugeVec,
    closed: IntCounterVec,
}

impl ListenMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<ListenMetrics> {
        let open = IntGaugeVec::new(
            Opts::new(
                "loadimpact_exporter_connections",
                "HTTP connections open now, by listener.",
            ),
            &["listener"],
        )?;
        let closed = IntCounterVec::new(
            Opts::new(
                "loadimpact_exporter_connections_closed_total",
                "HTTP connections the exporter closed for a limit (header_timeout, idle_timeout), by listener.",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        Ok(ListenMetrics { open, closed })
    }
}

/// A bound socket with its role and limits.
pub struct Listener {
    tcp: TcpListener,
    role: Role,
    limits: Limits,
    slots: Arc<Semaphore>,
    metrics: ListenMetrics,
    /// The web configuration file that secures it.
    security: Arc<Source>,
}

/// An accepted connection, holding its slot until it ends.
pub struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
}

impl Listener {
    pub async fn bind(
        address: SocketAddr,
        role: Role,
        limits: Limits,
        metrics: ListenMetrics,
        security: Arc<Source>,
    ) -> io::Result<Listener> {
        let tcp = TcpListener::bind(address).await?;
        // Create the series at zero, so that a dashboard sees the listener at once.
        metrics.open.with_label_values(&[role.as_str()]).set(0);
        Ok(Listener {
            tcp,
            role,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            metrics,
            security,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Whether it serves TLS (its web configuration file says so).
    pub fn tls(&self) -> bool {
        self.security.tls()
    }

    /// The next connection, once a slot is free. An accept error (out of
    /// file descriptors, say) is logged and retried after a pause.
    pub async fn accept(&self) -> Accepted {
        loop {
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                // The semaphore is never closed; wait for ever rather than spin.
                return std::future::pending().await;
            };
            match self.tcp.accept().await {
                Ok((stream, peer)) => return Accepted { stream, peer, slot },
                Err(e) => {
                    tracing::warn!(error = %e, listener = self.role.as_str(), "accept failed");
                    drop(slot);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Serves one accepted connection to its end, on its own task, under
    /// the listener's limits and web configuration; `graceful` lets a
    /// shutdown wait for it.
    pub fn serve(&self, accepted: Accepted, app: Arc<App>, graceful: &GracefulShutdown) {
        let Accepted { stream, peer, slot } = accepted;
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = Watched {
            inner: stream,
            activity: activity.clone(),
        };
        let role = self.role;
        let source = self.security.clone();
        let watcher = graceful.watcher();
        let limits = self.limits;
        let open = self.metrics.open.with_label_values(&[role.as_str()]);
        let closed = self.metrics.closed.clone();
        open.inc();
        tokio::spawn(async move {
            let connection = async {
                // The file is read for each connection (a renewed certificate
                // needs no restart); off the runtime, as it reads files.
                let security = if source.has_file() {
                    tokio::task::spawn_blocking(move || source.current_or_log())
                        .await
                        .ok()
                        .flatten()
                } else {
                    source.current_or_log()
                };
                let Some(security) = security else {
                    return; // invalid: the connection is closed unanswered
                };
                // Each request: the rate limit and basic auth first, then the
                // handler; the configured headers on every response.
                let service = {
                    let security = security.clone();
                    let activity = activity.clone();
                    service_fn(move |req| {
                        let app = app.clone();
                        let security = security.clone();
                        let activity = activity.clone();
                        async move {
                            activity.request_began();
                            let mut response = match security.admit(req.headers()).await {
                                Ok(()) => handle(app, role, peer, req).await,
                                Err(refusal) => refused(refusal),
                            };
                            security.add_headers(response.headers_mut());
                            activity.request_ended();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    })
                };
                let builder = auto::Builder::new(TokioExecutor::new());
                let ended = match &security.tls {
                    None => {
                        // Without TLS, HTTP/2 comes only with prior knowledge
                        // (h2c); `http2: false` turns it off here too.
                        let builder = if security.http2 {
                            builder
                        } else {
                            builder.http1_only()
                        };
                        let conn = builder.serve_connection(TokioIo::new(io), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        let tls = match acceptor.accept(io).await {
                            Ok(tls) => tls,
                            Err(e) => {
                                tracing::debug!(error = %e, %peer, listener = role.as_str(), "TLS handshake failed");
                                return;
                            }
                        };
                        let h2 = security.http2 && tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let builder = if h2 {
                            builder.http2_only()
                        } else {
                            builder.http1_only()
                        };
                        let conn = builder.serve_connection(TokioIo::new(tls), service);
                        watcher.watch(conn.into_owned()).await
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
            };
            tokio::select! {
                () = connection => {}
                reason = activity.overdue(limits) => {
                    tracing::debug!(%peer, reason, listener = role.as_str(), "closing a connection");
                    closed.with_label_values(&[role.as_str(), reason]).inc();
                }
            }
            open.dec();
            drop(slot);
        });
    }
}

/// The answer to a request the web configuration refuses (401 or 429).
fn refused(refusal: Refusal) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(refusal.body().as_bytes())));
    *response.status_mut() = refusal.status();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    refusal.add_headers(response.headers_mut());
    response
}

/// What a connection's watchdog knows of it: requests in flight, and when
/// it last became idle or began sending a request's head.
struct Activity {
    /// Requests whose head has been read and whose response is not yet written.
    in_flight: AtomicUsize,
    /// Milliseconds since `origin` at which the connection became idle
    /// (the accept, or the end of its last request).
    idle_since: AtomicU64,
    /// A byte arrived since it became idle: a head is under way.
    head_started: AtomicBool,
    /// Milliseconds since `origin` at which that first byte arrived.
    head_started_at: AtomicU64,
    /// Whether the connection has served a request (then silence is idleness,
    /// not a slow head).
    served: AtomicBool,
    origin: Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicBool::new(false),
            head_started_at: AtomicU64::new(0),
            served: AtomicBool::new(false),
            origin: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn request_began(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_started.store(false, Ordering::SeqCst);
    }

    fn request_ended(&self) {
        self.served.store(true, Ordering::SeqCst);
        self.idle_since.store(self.now(), Ordering::SeqCst);
        self.head_started.store(false, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn received(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0
            && !self.head_started.swap(true, Ordering::SeqCst)
        {
            self.head_started_at.store(self.now(), Ordering::SeqCst);
        }
    }

    /// The deadline the connection is under now, and what it is for; `None`
    /// while a request is in flight.
    fn deadline(&self, limits: Limits) -> Option<(u64, &'static str)> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let header = limits.header_timeout.as_millis() as u64;
        let idle = limits.idle_timeout.as_millis() as u64;
        let since = self.idle_since.load(Ordering::SeqCst);
        if !self.served.load(Ordering::SeqCst) {
            // The first request's head is due within the header timeout of the accept.
            return Some((since.saturating_add(header), "header_timeout"));
        }
        if self.head_started.load(Ordering::SeqCst) {
            let started = self.head_started_at.load(Ordering::SeqCst);
            return Some((started.saturating_add(header), "header_timeout"));
        }
        Some((since.saturating_add(idle), "idle_timeout"))
    }

    /// Resolves, with the reason, once the connection is past a deadline.
    async fn overdue(&self, limits: Limits) -> &'static str {
        // Checked at least this often while a request is in flight.
        const RECHECK: Duration = Duration::from_millis(250);
        loop {
            let now = self.now();
            match self.deadline(limits) {
                Some((due, reason)) if due <= now => return reason,
                Some((due, _)) => {
                    let wait = Duration::from_millis(due - now).min(Duration::from_secs(1));
                    tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
                }
                None => tokio::time::sleep(RECHECK).await,
            }
        }
    }
}

/// A stream that tells its connection's [`Activity`] when bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.received();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_connections: 4,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };

    #[test]
    fn a_new_connection_owes_its_head_within_the_header_timeout() {
        let a = Activity::new();
        assert_eq!(a.deadline(LIMITS), Some((10_000, "header_timeout")));
        // Bytes of the first head do not move the deadline.
        a.received();
        assert_eq!(a.deadline(LIMITS), Some((10_000, "header_timeout")));
    }

    #[test]
    fn a_request_in_flight_has_no_deadline_and_after_it_the_idle_one_runs() {
        let a = Activity::new();
        a.request_began();
        assert_eq!(a.deadline(LIMITS), None);
        a.request_ended();
        let (due, reason) = a.deadline(LIMITS).expect("a deadline");
        assert_eq!(reason, "idle_timeout");
        assert!((60_000..61_000).contains(&due), "{due}");
        // The first byte of the next head starts the header timeout.
        a.received();
        let (due, reason) = a.deadline(LIMITS).expect("a deadline");
        assert_eq!(reason, "header_timeout");
        assert!((10_000..11_000).contains(&due), "{due}");
    }
}
