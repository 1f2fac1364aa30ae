//! The admin listener: `/metrics` (Prometheus text) and `/healthz`. It exposes counts,
//! never records.

pub mod metrics;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
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
        while let Some((stream, _)) =
            crate::net::accept(&self.listener, &mut shutdown, "admin").await
        {
            let metrics = self.metrics.clone();
            let recorder = self.recorder.clone();
            let svc = service_fn(move |req| {
                let metrics = metrics.clone();
                let healthy = recorder.writer_alive();
                async move { Ok::<_, Infallible>(answer(&metrics, healthy, req)) }
            });
            tokio::spawn(crate::net::serve_http1(stream, svc, shutdown.clone()));
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
