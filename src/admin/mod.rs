//! The admin listener: `/metrics` (Prometheus text) and `/healthz`. It exposes counts,
//! never records.

pub mod metrics;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;
use crate::store::Recorder;
use metrics::Metrics;

pub struct AdminServer {
    pub listener: TcpListener,
    pub metrics: Arc<Metrics>,
    /// Health is the writer's: without it every message is refused.
    pub recorder: Recorder,
}

impl AdminServer {
    pub async fn run(self, mut shutdown: Shutdown) {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.wait() => break,
                a = self.listener.accept() => match a {
                    Ok(a) => a,
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let metrics = self.metrics.clone();
            let recorder = self.recorder.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let metrics = metrics.clone();
                    let healthy = recorder.writer_alive();
                    async move { Ok::<_, Infallible>(answer(&metrics, healthy, req)) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = shutdown.wait() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    }
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
