//! `relaylog bench http`: a load generator for SMS submission APIs (Kannel, Jasmin,
//! JSON). Closed loop (each connection sends as soon as it has its answer) or open loop
//! at a target rate; latency in an HDR histogram, measured from the moment a request
//! was *due* in open loop, so that a stalled server cannot hide its queueing
//! (coordinated omission). Always bounded: by duration or by request count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

use super::{Percentiles, Rng, Schedule, Shared, histogram};
use crate::config::ProfileKind;

#[derive(Debug, Clone)]
pub struct HttpBench {
    /// scheme://host:port of the relay (or gateway) under test; http only.
    pub target: Uri,
    pub profile: ProfileKind,
    pub connections: usize,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    /// Open loop: requests per second over all connections. `None`: closed loop.
    pub rate: Option<f64>,
    pub recipients: usize,
    pub pool: u64,
    pub seed: u64,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpBenchError {
    #[error("--target must be http://host:port (no TLS in the load generator)")]
    Target,
    #[error("give --duration or --requests: the load stops by itself")]
    Unbounded,
    #[error("--connections and --recipients must be at least 1")]
    Empty,
    #[error("a load worker failed: {0}")]
    Worker(String),
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Errors {
    pub connect: u64,
    pub io: u64,
    pub timeout: u64,
    /// Answers with a status outside 2xx, by status.
    pub status: std::collections::BTreeMap<u16, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpReport {
    pub seconds: f64,
    pub requests: u64,
    pub ok: u64,
    pub requests_per_second: f64,
    pub messages_per_second: f64,
    pub recipients_per_message: usize,
    pub latency_ms: Percentiles,
    pub errors: Errors,
}

/// One submission request of the profile, to `recipients` numbers from the pool.
fn request(b: &HttpBench, rng: &mut Rng) -> Request<Full<Bytes>> {
    let authority = b
        .target
        .authority()
        .map(|a| a.as_str())
        .unwrap_or("localhost");
    let numbers: Vec<String> = (0..b.recipients)
        .map(|_| format!("+3161{:07}", rng.next() % b.pool.max(1)))
        .collect();
    let text = "Your code is 123456";
    let (method, path, body, json) = match b.profile {
        ProfileKind::Kannel => {
            let to = numbers
                .iter()
                .map(|n| n.replace('+', "%2B"))
                .collect::<Vec<_>>()
                .join("+");
            let q = format!(
                "/cgi-bin/sendsms?username=bench&password=bench&from=BENCH&to={to}&text=Your+code+is+123456"
            );
            (Method::GET, q, Bytes::new(), false)
        }
        ProfileKind::Jasmin => {
            let q = format!(
                "/send?username=bench&password=bench&from=BENCH&to={}&content=Your%20code%20is%20123456",
                numbers[0].replace('+', "%2B")
            );
            (Method::GET, q, Bytes::new(), false)
        }
        ProfileKind::Json => {
            let body =
                serde_json::json!({"from": "BENCH", "to": numbers, "text": text}).to_string();
            (
                Method::POST,
                "/messages".to_owned(),
                Bytes::from(body),
                true,
            )
        }
    };
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority);
    if json {
        req = req
            .header(http::header::CONTENT_TYPE, "application/json")
            // "bench:bench"
            .header(http::header::AUTHORIZATION, "Basic YmVuY2g6YmVuY2g=");
    }
    req.body(Full::new(body)).unwrap_or_default()
}

/// What one connection measured.
struct Worker {
    hist: Histogram<u64>,
    errors: Errors,
    ok: u64,
    requests: u64,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn worker(
    b: Arc<HttpBench>,
    index: usize,
    shared: Arc<Shared>,
    deadline: Option<Instant>,
) -> Worker {
    let mut w = Worker {
        hist: histogram(),
        errors: Errors::default(),
        ok: 0,
        requests: 0,
    };
    let mut rng = Rng::for_worker(b.seed, index);
    let addr = format!(
        "{}:{}",
        b.target.host().unwrap_or("127.0.0.1"),
        b.target.port_u16().unwrap_or(80)
    );
    let mut schedule = Schedule::new(b.rate, b.connections);
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    while let Some(due) = schedule.due(deadline) {
        if !shared.issue(b.requests) {
            break;
        }
        let start = schedule.wait(due).await;
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = match TcpStream::connect(&addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                        Ok((s, conn)) => {
                            tokio::spawn(conn);
                            Some(s)
                        }
                        Err(_) => None,
                    }
                }
                Err(_) => None,
            };
            if sender.is_none() {
                w.errors.connect += 1;
                w.requests += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let req = request(&b, &mut rng);
        w.requests += 1;
        let exchange = async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(status)) => {
                let micros = super::micros_since(start);
                let _ = w.hist.record(micros);
                if status.is_success() {
                    w.ok += 1;
                } else {
                    *w.errors.status.entry(status.as_u16()).or_default() += 1;
                }
            }
            Ok(Err(_)) => {
                w.errors.io += 1;
                sender = None;
            }
            Err(_) => {
                w.errors.timeout += 1;
                sender = None;
            }
        }
        shared.done();
    }
    w
}

pub async fn run(b: HttpBench) -> Result<HttpReport, HttpBenchError> {
    if b.target.scheme_str() != Some("http") || b.target.host().is_none() {
        return Err(HttpBenchError::Target);
    }
    if b.duration.is_none() && b.requests.is_none() {
        return Err(HttpBenchError::Unbounded);
    }
    if b.connections == 0 || b.recipients == 0 {
        return Err(HttpBenchError::Empty);
    }
    let b = Arc::new(b);
    let started = Instant::now();
    let deadline = b.duration.map(|d| started + d);
    let workers = super::run_workers(b.connections, b.progress, "requests", |i, shared| {
        worker(b.clone(), i, shared, deadline)
    })
    .await
    .map_err(HttpBenchError::Worker)?;
    let mut hist = histogram();
    let mut errors = Errors::default();
    let (mut ok, mut requests) = (0u64, 0u64);
    for w in workers {
        let _ = hist.add(&w.hist);
        ok += w.ok;
        requests += w.requests;
        errors.connect += w.errors.connect;
        errors.io += w.errors.io;
        errors.timeout += w.errors.timeout;
        for (s, n) in w.errors.status {
            *errors.status.entry(s).or_default() += n;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(HttpReport {
        seconds,
        requests,
        ok,
        requests_per_second: ok as f64 / seconds,
        messages_per_second: (ok * b.recipients as u64) as f64 / seconds,
        recipients_per_message: b.recipients,
        latency_ms: Percentiles::of(&hist),
        errors,
    })
}

impl HttpReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} requests in {:.2} s, {} ok: {:.0} requests/s, {:.0} messages/s ({} recipient(s) each)\n{}",
            self.requests,
            self.seconds,
            self.ok,
            self.requests_per_second,
            self.messages_per_second,
            self.recipients_per_message,
            self.latency_ms.to_text(),
        );
        let e = &self.errors;
        s.push_str(&format!(
            "errors: connect {}  io {}  timeout {}",
            e.connect, e.io, e.timeout
        ));
        for (status, n) in &e.status {
            s.push_str(&format!("  http {status}: {n}"));
        }
        s.push('\n');
        s
    }
}
