//! The admin listener: `/metrics` (Prometheus text) and `/healthz`, which expose
//! counts, never records, and need no login; and, when the listener has TLS, the
//! compliance API under `/api/v1` ([`api`]) and the officers' web console under
//! `/console/` ([`console`]), both calling the same operations ([`ops`]). Without TLS
//! neither is served: passwords and exports do not cross a network in the clear.

pub mod api;
pub mod console;
pub mod ops;
pub mod session;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::Recorder;

pub struct AdminServer {
    pub listener: TcpListener,
    pub metrics: Arc<Metrics>,
    /// Health is the writer's: without it every message is refused.
    pub recorder: Recorder,
    /// TLS and the compliance API come together.
    pub api: Option<(TlsAcceptor, Arc<api::Api>)>,
    /// The officers' web console, served with the API.
    pub console: Option<Arc<console::Console>>,
}

/// Admin connections open at once; more are closed at accept. Scrapers, officers and
/// health checks need a handful.
const MAX_CONNECTIONS: usize = 64;

/// Admin connections open at once from one peer: one client cannot take every place.
const MAX_PER_PEER: usize = 16;

/// How long a client may take over the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request's body may take to arrive, from its head.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener's name in metrics.
const NAME: &str = "admin";

impl AdminServer {
    pub async fn run(self, shutdown: Shutdown) {
        let routers = self.api.as_ref().map(|(_, api)| Routers {
            api: api.router(),
            console: self.console.as_ref().map(|c| c.clone().router()),
        });
        let gate = crate::net::Gate {
            name: NAME.into(),
            connections: crate::net::Connections::new(
                MAX_CONNECTIONS,
                MAX_PER_PEER,
                HANDSHAKE_TIMEOUT,
            ),
            tls: self.api.as_ref().map(|(tls, _)| tls.clone()),
            busy: b"",
            metrics: self.metrics.clone(),
        };
        let (metrics, recorder, sessions) = (self.metrics, self.recorder, shutdown.clone());
        let session = move |stream: crate::net::ClientStream, peer| {
            small_send_buffer(stream.tcp());
            let conn = Connection {
                metrics: metrics.clone(),
                recorder: recorder.clone(),
                routers: routers.clone(),
                peer,
            };
            let shutdown = sessions.clone();
            async move { conn.serve(stream, shutdown).await }
        };
        crate::net::run(self.listener, gate, shutdown, session).await;
    }
}

/// The routers behind TLS: the API's (`/api/`) and the console's (`/console/`), each
/// with its own answer for what it does not serve.
#[derive(Clone)]
struct Routers {
    api: axum::Router,
    console: Option<axum::Router>,
}

/// One admin connection: `/metrics` and `/healthz` answered here, `/api/` and
/// `/console/` handed to their routers (or refused when there is no TLS).
#[derive(Clone)]
struct Connection {
    metrics: Arc<Metrics>,
    recorder: Recorder,
    routers: Option<Routers>,
    peer: SocketAddr,
}

impl Connection {
    async fn serve<S>(self, stream: S, shutdown: Shutdown)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = self.metrics.clone();
        let svc = service_fn(move |mut req: Request<Incoming>| {
            let this = self.clone();
            async move {
                let path = req.uri().path();
                let console = path == "/console" || path.starts_with("/console/");
                if !console && !path.starts_with("/api/") {
                    let healthy = this.recorder.writer_alive();
                    return Ok::<_, Infallible>(
                        answer(&this.metrics, healthy, req).map(axum::body::Body::new),
                    );
                }
                let router = this
                    .routers
                    .and_then(|r| if console { r.console } else { Some(r.api) });
                match router {
                    Some(router) => {
                        req.extensions_mut().insert(ConnectInfo(this.peer));
                        let metrics = this.metrics.clone();
                        let req = req.map(|body| {
                            axum::body::Body::new(Deadline {
                                body,
                                sleep: Box::pin(tokio::time::sleep(BODY_TIMEOUT)),
                                metrics,
                            })
                        });
                        router.oneshot(req).await
                    }
                    None => Ok(no_api(req.uri().path())),
                }
            }
        });
        let state = Arc::new(Seen::default());
        let stream = Guarded {
            io: stream,
            stalled: None,
            seen: state.clone(),
        };
        let ended = crate::net::serve_http1_io(stream, svc, shutdown).await;
        let cut = if state.write_stalled.load(Ordering::Relaxed) {
            Some("reply_timeout")
        } else if ended.is_some_and(|e| e.is_timeout()) {
            // hyper's header timeout runs between requests too.
            let idle = state.answered.load(Ordering::Relaxed)
                && !state.read_since_answer.load(Ordering::Relaxed);
            Some(if idle {
                "idle_timeout"
            } else {
                "header_timeout"
            })
        } else {
            None
        };
        if let Some(cut) = cut {
            metrics.cut(NAME, cut);
        }
    }
}

/// The socket's send buffer held to [`SEND_BUFFER`]: the kernel then reports it
/// writable again each time about half of it has gone, so a slow client that keeps
/// reading (an export over a slow link, down to a few KB/s) makes progress within
/// [`WRITE_STALL`], where an auto-grown buffer of megabytes would let none show for long.
fn small_send_buffer(tcp: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let size = SEND_BUFFER as libc::c_int;
    // SAFETY: setsockopt on an open socket with a pointer to an int and its size.
    let set = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "admin socket keeps its send buffer");
    }
}

/// An admin socket's send buffer (the kernel doubles it for its own bookkeeping).
const SEND_BUFFER: usize = 64 * 1024;

/// What [`Guarded`] saw of its connection.
#[derive(Default)]
struct Seen {
    /// A reply was written (the connection went on to wait for the next request).
    answered: AtomicBool,
    /// Bytes came since the last reply: a request head was under way.
    read_since_answer: AtomicBool,
    /// A write made no progress for [`WRITE_STALL`]: the client does not read.
    write_stalled: AtomicBool,
}

/// An admin connection's stream: a write that makes no progress for [`WRITE_STALL`]
/// fails, so that a client that stops reading its reply cannot keep its place; and
/// what the connection was doing when it ended ([`Seen`]).
struct Guarded<I> {
    io: I,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    seen: Arc<Seen>,
}

/// How long a reply's write may make no progress.
const WRITE_STALL: Duration = Duration::from_secs(10);

impl<I> Guarded<I> {
    /// A write's result: progress resets the stall clock; none starts it, and past
    /// [`WRITE_STALL`] turns into an error.
    /// `wrote`: the result is a write's (a flush is not a reply).
    fn written<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<T>>,
        wrote: bool,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        match r {
            Poll::Pending => {
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
                if sleep.as_mut().poll(cx).is_ready() {
                    self.seen.write_stalled.store(true, Ordering::Relaxed);
                    return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
                }
                Poll::Pending
            }
            done => {
                self.stalled = None;
                if wrote {
                    self.seen.answered.store(true, Ordering::Relaxed);
                    self.seen.read_since_answer.store(false, Ordering::Relaxed);
                }
                done
            }
        }
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.seen.read_since_answer.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Guarded<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.written(cx, r, true)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.written(cx, r, false)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // TLS's close_notify is a write too.
        let r = std::pin::Pin::new(&mut self.io).poll_shutdown(cx);
        self.written(cx, r, false)
    }
}

/// A request body that must arrive whole within [`BODY_TIMEOUT`] of its head: a client
/// that sends it slowly cannot hold a connection and a handler for longer.
struct Deadline {
    body: Incoming,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    metrics: Arc<Metrics>,
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.metrics.cut(NAME, "body_timeout");
            return Poll::Ready(Some(Err("request body not received in time".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The API's and the console's answer on a listener without TLS.
fn no_api(path: &str) -> Response<axum::body::Body> {
    let (body, ctype) = if path.starts_with("/api/") {
        (
            "{\"error\":\"the compliance API is served only over TLS: set admin.tls-cert and admin.tls-key\"}\n",
            "application/json",
        )
    } else {
        (
            "the console is served only over TLS: set admin.tls-cert and admin.tls-key\n",
            "text/plain; charset=utf-8",
        )
    };
    let mut r = Response::new(axum::body::Body::from(body));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

fn answer(metrics: &Metrics, healthy: bool, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (&Method::GET, "/healthz") if healthy => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/healthz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "store writer stopped: messages are refused\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}
