//! The admin listener: `/metrics` (Prometheus text) and `/healthz`, which expose
//! counts, never records, and need no login; and, when the listener has TLS, the
//! compliance API under `/api/v1` ([`api`]). Without TLS the API is not served at all:
//! passwords and exports do not cross a network in the clear.

pub mod api;
pub mod session;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
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
        let router = self.api.as_ref().map(|(_, api)| api.router());
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
        let session = move |stream, peer| {
            let conn = Connection {
                metrics: metrics.clone(),
                recorder: recorder.clone(),
                router: router.clone(),
                peer,
            };
            let shutdown = sessions.clone();
            async move { conn.serve(stream, shutdown).await }
        };
        crate::net::run(self.listener, gate, shutdown, session).await;
    }
}

/// One admin connection: `/metrics` and `/healthz` answered here, `/api/` handed to
/// the API's router (or refused when there is none).
#[derive(Clone)]
struct Connection {
    metrics: Arc<Metrics>,
    recorder: Recorder,
    router: Option<axum::Router>,
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
                if !req.uri().path().starts_with("/api/") {
                    let healthy = this.recorder.writer_alive();
                    return Ok::<_, Infallible>(
                        answer(&this.metrics, healthy, req).map(axum::body::Body::new),
                    );
                }
                match this.router {
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
                    None => Ok(no_api()),
                }
            }
        });
        if crate::net::serve_http1_io(stream, svc, shutdown)
            .await
            .is_some_and(|e| e.is_timeout())
        {
            metrics.cut(NAME, "header_timeout");
        }
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

fn no_api() -> Response<axum::body::Body> {
    let mut r = Response::new(axum::body::Body::from(
        "{\"error\":\"the compliance API is served only over TLS: set admin.tls-cert and admin.tls-key\"}\n",
    ));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
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
