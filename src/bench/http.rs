//! `relaylog bench http`: a load generator for SMS submission APIs (Kannel, Jasmin,
//! JSON). Closed loop (each connection sends as soon as it has its answer) or open loop
//! at a target rate; latency in an HDR histogram, measured from the moment a request
//! was *due* in open loop, so that a stalled server cannot hide its queueing
//! (coordinated omission). Always bounded: by duration or by request count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use http::Uri;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
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
    #[error("Jasmin's HTTP API takes one recipient per request: --recipients 1")]
    OneRecipient,
    #[error("--recipients must not exceed --pool (a message names each number once)")]
    PoolTooSmall,
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

/// Writes one submission request of the profile, to `recipients` numbers from the
/// pool, as HTTP/1.1 bytes into `out` (cleared first).
fn request(b: &HttpBench, rng: &mut Rng, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    let authority = b
        .target
        .authority()
        .map(|a| a.as_str())
        .unwrap_or("localhost");
    // Distinct numbers within a message, as a client sends them: a number listed twice
    // is one message to the gateway (Kannel sends it once) and one record, so drawn
    // pairs that met made the records fewer than the recipients sent, at random. The
    // first at random, the others after it in the pool (no allocation per request).
    let pool = b.pool.max(1);
    let first = rng.next() % pool;
    let mut numbers = (0..b.recipients as u64).map(|i| (first + i) % pool);
    // Writing into a Vec cannot fail.
    match b.profile {
        ProfileKind::Kannel => {
            let _ = write!(
                out,
                "GET /cgi-bin/sendsms?username=bench&password=bench&from=BENCH&to="
            );
            for (i, n) in numbers.enumerate() {
                let _ = write!(out, "{}%2B3161{n:07}", if i == 0 { "" } else { "+" });
            }
            let _ = write!(
                out,
                "&text=Your+code+is+123456 HTTP/1.1\r\nHost: {authority}\r\n\r\n"
            );
        }
        ProfileKind::Jasmin => {
            let n = numbers.next().unwrap_or(0);
            let _ = write!(
                out,
                "GET /send?username=bench&password=bench&from=BENCH&to=%2B3161{n:07}&content=Your%20code%20is%20123456 HTTP/1.1\r\nHost: {authority}\r\n\r\n"
            );
        }
        ProfileKind::Json => {
            let to: Vec<String> = numbers.map(|n| format!("+3161{n:07}")).collect();
            let body =
                serde_json::json!({"from": "BENCH", "to": to, "text": "Your code is 123456"})
                    .to_string();
            // "bench:bench"
            let _ = write!(
                out,
                "POST /messages HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nAuthorization: Basic YmVuY2g6YmVuY2g=\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    }
}

/// What one connection measured.
struct Worker {
    hist: Histogram<u64>,
    errors: Errors,
    ok: u64,
    requests: u64,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer body the load generator reads.
const MAX_ANSWER: usize = 64 * 1024;

/// One keep-alive HTTP/1.1 connection, spoken directly: a request's bytes written
/// whole, the answer read with the relay's own reader ([`http1::read_reply`]: httparse,
/// then the body by its framing). hyper's client connection (a task of its own, its
/// header maps) cost the load generator about 13 µs of CPU per request, wrk 8: the
/// comparison measured the load generator as much as the proxies.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
}

#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// The server keeps the connection open for the next request.
    keep_alive: bool,
}

impl Conn {
    async fn connect(addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
        })
    }

    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<Answer> {
        use crate::http1::ReadError;
        use std::io::{Error, ErrorKind};
        self.stream.write_all(request).await?;
        let reply = crate::http1::read_reply(&mut self.stream, &mut self.buf, false, MAX_ANSWER)
            .await
            .map_err(|e| match e {
                ReadError::Broken(e) | ReadError::Body(e) => e,
                ReadError::Malformed(what) => Error::new(ErrorKind::InvalidData, what),
                ReadError::TooLarge => Error::other("answer body larger than 64 KiB"),
            })?;
        Ok(Answer {
            status: reply.status,
            keep_alive: reply.reusable,
        })
    }
}

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
    let mut conn: Option<Conn> = None;
    let mut bytes = Vec::with_capacity(512);
    while let Some(due) = schedule.due(deadline) {
        if !shared.issue(b.requests) {
            break;
        }
        let start = schedule.wait(due).await;
        if conn.is_none() {
            conn = tokio::time::timeout(REQUEST_TIMEOUT, Conn::connect(&addr))
                .await
                .ok()
                .and_then(Result::ok);
            if conn.is_none() {
                w.errors.connect += 1;
                w.requests += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        request(&b, &mut rng, &mut bytes);
        w.requests += 1;
        match tokio::time::timeout(REQUEST_TIMEOUT, c.exchange(&bytes)).await {
            Ok(Ok(answer)) => {
                let micros = super::micros_since(start);
                let _ = w.hist.record(micros);
                if (200..300).contains(&answer.status) {
                    w.ok += 1;
                } else {
                    *w.errors.status.entry(answer.status).or_default() += 1;
                }
                if !answer.keep_alive {
                    conn = None;
                }
            }
            Ok(Err(_)) => {
                w.errors.io += 1;
                conn = None;
            }
            Err(_) => {
                w.errors.timeout += 1;
                conn = None;
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
    if b.profile == ProfileKind::Jasmin && b.recipients > 1 {
        return Err(HttpBenchError::OneRecipient);
    }
    if b.recipients as u64 > b.pool.max(1) {
        return Err(HttpBenchError::PoolTooSmall);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An interim answer is passed over; the final one is the request's, and one cut
    /// off by an error is not an answer.
    #[tokio::test]
    async fn interim_answers_are_skipped_and_a_reset_is_an_error() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 256];
            let _ = s.read(&mut req).await.unwrap();
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            let _ = s.read(&mut req).await.unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            let _ = s.read(&mut req).await.unwrap();
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
            let _ = s.read(&mut req).await.unwrap();
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\npartial")
                .await
                .unwrap();
            // Zero linger: the close is a reset (it does not block on drop).
            #[allow(deprecated)]
            s.set_linger(Some(Duration::ZERO)).unwrap();
            drop(s);
        });
        let mut conn = Conn::connect(&addr).await.unwrap();
        let a = conn.exchange(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(
            a,
            Answer {
                status: 202,
                keep_alive: true
            }
        );
        for status in [204, 200] {
            let a = conn.exchange(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            assert_eq!(
                a,
                Answer {
                    status,
                    keep_alive: true
                },
                "no body, then a chunked one"
            );
        }
        let cut = conn.exchange(b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(cut.is_err(), "a reset is not an answer: {cut:?}");
        server.await.unwrap();
    }

    #[test]
    fn requests_are_one_message_per_profile() {
        let b = |profile, recipients| HttpBench {
            target: "http://127.0.0.1:8080".parse().unwrap(),
            profile,
            connections: 1,
            duration: None,
            requests: Some(1),
            rate: None,
            recipients,
            pool: 1_000,
            seed: 1,
            progress: false,
        };
        let mut out = Vec::new();
        let mut rng = Rng::for_worker(1, 0);
        request(&b(ProfileKind::Kannel, 2), &mut rng, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with(
            "GET /cgi-bin/sendsms?username=bench&password=bench&from=BENCH&to=%2B3161"
        ));
        assert_eq!(text.matches("%2B3161").count(), 2);
        assert!(text.ends_with(" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"));
        request(&b(ProfileKind::Json, 3), &mut rng, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["to"].as_array().unwrap().len(), 3);
    }

    /// A message's recipients are distinct numbers, even from a pool no larger than
    /// them (a number listed twice is one record); a pool smaller than them is refused.
    #[tokio::test]
    async fn a_message_never_names_a_number_twice() {
        let mut b = HttpBench {
            target: "http://127.0.0.1:9".parse().unwrap(),
            profile: ProfileKind::Json,
            connections: 1,
            duration: None,
            requests: Some(1),
            rate: None,
            recipients: 4,
            pool: 4,
            seed: 1,
            progress: false,
        };
        let mut out = Vec::new();
        let mut rng = Rng::for_worker(1, 0);
        for _ in 0..50 {
            request(&b, &mut rng, &mut out);
            let text = String::from_utf8(out.clone()).unwrap();
            let body = text.split_once("\r\n\r\n").unwrap().1;
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            let mut to: Vec<&str> = json["to"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect();
            to.sort_unstable();
            to.dedup();
            assert_eq!(to.len(), 4, "{body}");
        }
        b.pool = 3;
        assert!(matches!(run(b).await, Err(HttpBenchError::PoolTooSmall)));
    }
}
