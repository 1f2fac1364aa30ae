//! `relaylog bench smtp`: a load generator for mail servers (relaylog's SMTP listener,
//! or the MTA behind it). Each of `sessions` connections sends `messages-per-session`
//! messages, pipelined as real clients send them (MAIL, RCPT…, DATA in one write),
//! then QUITs and connects again. Closed loop or open loop at a target rate, with the
//! latency of each message measured from when it was due, as `bench http` does.
//! Always bounded: by duration or by message count.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::TcpStream;

use super::{Percentiles, Rng, Schedule, Shared, histogram, micros_since};
use crate::smtp::{Io, Reply, Wire, WireError};

#[derive(Debug, Clone)]
pub struct SmtpBench {
    pub target: SocketAddr,
    /// Concurrent sessions.
    pub sessions: usize,
    /// Messages sent in one session before it QUITs and a new one starts.
    pub messages_per_session: u64,
    pub recipients: usize,
    /// Content bytes of each message (headers included), before the end of data.
    pub size: usize,
    pub duration: Option<Duration>,
    pub messages: Option<u64>,
    /// Open loop: messages per second over all sessions. `None`: closed loop.
    pub rate: Option<f64>,
    /// Recipient addresses are drawn from a pool of this size.
    pub pool: u64,
    /// Authenticate each session (AUTH PLAIN) as this user.
    pub auth: Option<String>,
    pub seed: u64,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SmtpBenchError {
    #[error("give --duration or --messages: the load stops by itself")]
    Unbounded,
    #[error("--sessions, --messages-per-session and --recipients must be at least 1")]
    Empty,
    #[error("--recipients must not exceed --pool (a message names each address once)")]
    PoolTooSmall,
    #[error("a load worker failed: {0}")]
    Worker(String),
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Errors {
    pub connect: u64,
    pub io: u64,
    pub timeout: u64,
    /// Messages refused, by the code of the first reply that refused them (greeting,
    /// AUTH, MAIL, every RCPT, DATA or the final reply).
    pub refused: std::collections::BTreeMap<u16, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SmtpReport {
    pub seconds: f64,
    pub sessions: u64,
    pub messages: u64,
    /// Messages the server took (a 250 to the end of data).
    pub ok: u64,
    pub messages_per_second: f64,
    pub recipients_per_message: usize,
    pub bytes_per_message: usize,
    pub latency_ms: Percentiles,
    pub errors: Errors,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// The content of every message: a few headers and lines of about 76 characters,
/// `size` bytes in all (at least the headers), ending in CRLF; no line starts with a
/// dot.
fn content(size: usize) -> Vec<u8> {
    let head = b"From: <bench@relaylog.test>\r\nSubject: relaylog bench\r\n\r\n";
    let mut out = Vec::with_capacity(size.max(head.len()) + 2);
    out.extend_from_slice(head);
    let mut remaining = size.saturating_sub(out.len());
    while remaining > 0 {
        // The last line takes what is left, so that the size comes out exact.
        let line = if remaining > 80 { 78 } else { remaining.max(2) };
        out.extend(std::iter::repeat_n(b'x', line - 2));
        out.extend_from_slice(b"\r\n");
        remaining = remaining.saturating_sub(line);
    }
    out
}

/// What one connection measured.
struct Worker {
    hist: Histogram<u64>,
    errors: Errors,
    ok: u64,
    messages: u64,
    sessions: u64,
}

/// Why a message did not go through.
enum Failed {
    /// The session broke (I/O error, timeout): connect again.
    Session(WireError),
    /// Refused with this code; a 421 ends the session.
    Refused(u16),
}

type Leg = Wire<Box<dyn Io>>;

async fn reply(w: &mut Leg) -> Result<Reply, Failed> {
    let r = w.reply(TIMEOUT).await.map_err(Failed::Session)?;
    if r.code == 421 {
        return Err(Failed::Refused(421));
    }
    Ok(r)
}

/// Opens a session: greeting, EHLO, and AUTH when asked for.
async fn open(b: &SmtpBench) -> Result<Leg, Failed> {
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(b.target))
        .await
        .map_err(|_| Failed::Session(WireError::Timeout))?
        .map_err(|e| Failed::Session(WireError::Io(e)))?;
    let _ = tcp.set_nodelay(true);
    let mut w: Leg = Wire::new(Box::new(tcp));
    let step = async |w: &mut Leg, line: &[u8], want: u16| -> Result<(), Failed> {
        if !line.is_empty() {
            w.send(line, TIMEOUT).await.map_err(Failed::Session)?;
        }
        match reply(w).await?.code {
            c if c == want => Ok(()),
            c => Err(Failed::Refused(c)),
        }
    };
    step(&mut w, b"", 220).await?;
    step(&mut w, b"EHLO bench.relaylog.test\r\n", 250).await?;
    if let Some(user) = &b.auth {
        use base64::Engine;
        let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0bench"));
        step(&mut w, format!("AUTH PLAIN {plain}\r\n").as_bytes(), 235).await?;
    }
    Ok(w)
}

/// One message: the envelope pipelined, then the content, then the final reply.
async fn message(
    w: &mut Leg,
    envelope: &[u8],
    recipients: usize,
    body: &[u8],
) -> Result<(), Failed> {
    w.send(envelope, TIMEOUT).await.map_err(Failed::Session)?;
    let mut refused = None;
    for want in std::iter::once(250).chain(std::iter::repeat_n(250, recipients)) {
        let code = reply(w).await?.code;
        if code != want {
            refused.get_or_insert(code);
        }
    }
    let data = reply(w).await?.code;
    if data != 354 {
        w.send(b"RSET\r\n", TIMEOUT)
            .await
            .map_err(Failed::Session)?;
        reply(w).await?;
        return Err(Failed::Refused(refused.unwrap_or(data)));
    }
    w.send(body, TIMEOUT).await.map_err(Failed::Session)?;
    match reply(w).await?.code {
        250 => match refused {
            None => Ok(()),
            Some(code) => Err(Failed::Refused(code)),
        },
        code => Err(Failed::Refused(code)),
    }
}

async fn worker(
    b: Arc<SmtpBench>,
    body: Arc<[u8]>,
    index: usize,
    shared: Arc<Shared>,
    deadline: Option<Instant>,
) -> Worker {
    let mut w = Worker {
        hist: histogram(),
        errors: Errors::default(),
        ok: 0,
        messages: 0,
        sessions: 0,
    };
    let mut rng = Rng::for_worker(b.seed, index);
    let mut schedule = Schedule::new(b.rate, b.sessions);
    let mut leg: Option<(Leg, u64)> = None;
    let mut envelope = Vec::new();
    while let Some(due) = schedule.due(deadline) {
        if !shared.issue(b.messages) {
            break;
        }
        let start = schedule.wait(due).await;
        w.messages += 1;
        if leg.is_none() {
            w.sessions += 1;
            match open(&b).await {
                Ok(l) => leg = Some((l, 0)),
                Err(failed) => {
                    match failed {
                        Failed::Refused(code) => *w.errors.refused.entry(code).or_default() += 1,
                        Failed::Session(_) => w.errors.connect += 1,
                    }
                    shared.done();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some((l, sent)) = leg.as_mut() else {
            continue;
        };
        envelope.clear();
        envelope.extend_from_slice(b"MAIL FROM:<bench@relaylog.test>\r\n");
        // Distinct addresses within a message, as `bench http` draws its numbers.
        let pool = b.pool.max(1);
        let first = rng.next() % pool;
        for i in 0..b.recipients as u64 {
            let n = (first + i) % pool;
            envelope.extend_from_slice(format!("RCPT TO:<user{n}@example.net>\r\n").as_bytes());
        }
        envelope.extend_from_slice(b"DATA\r\n");
        let result = message(l, &envelope, b.recipients, &body).await;
        *sent += 1;
        match result {
            Ok(()) => {
                let _ = w.hist.record(micros_since(start));
                w.ok += 1;
            }
            Err(Failed::Refused(code)) => {
                *w.errors.refused.entry(code).or_default() += 1;
                if code == 421 {
                    leg = None;
                }
            }
            Err(Failed::Session(WireError::Timeout)) => {
                w.errors.timeout += 1;
                leg = None;
            }
            Err(Failed::Session(_)) => {
                w.errors.io += 1;
                leg = None;
            }
        }
        if let Some((l, sent)) = leg.as_mut()
            && *sent >= b.messages_per_session
        {
            let _ = l.send(b"QUIT\r\n", TIMEOUT).await;
            let _ = l.reply(TIMEOUT).await;
            leg = None;
        }
        shared.done();
    }
    if let Some((mut l, _)) = leg {
        let _ = l.send(b"QUIT\r\n", TIMEOUT).await;
        let _ = l.reply(TIMEOUT).await;
    }
    w
}

pub async fn run(b: SmtpBench) -> Result<SmtpReport, SmtpBenchError> {
    if b.duration.is_none() && b.messages.is_none() {
        return Err(SmtpBenchError::Unbounded);
    }
    if b.sessions == 0 || b.messages_per_session == 0 || b.recipients == 0 {
        return Err(SmtpBenchError::Empty);
    }
    if b.recipients as u64 > b.pool.max(1) {
        return Err(SmtpBenchError::PoolTooSmall);
    }
    let mut body = content(b.size);
    let bytes_per_message = body.len();
    body.extend_from_slice(b".\r\n");
    let body: Arc<[u8]> = body.into();
    let b = Arc::new(b);
    let started = Instant::now();
    let deadline = b.duration.map(|d| started + d);
    let workers = super::run_workers(b.sessions, b.progress, "messages", |i, shared| {
        worker(b.clone(), body.clone(), i, shared, deadline)
    })
    .await
    .map_err(SmtpBenchError::Worker)?;
    let mut hist = histogram();
    let mut errors = Errors::default();
    let (mut ok, mut messages, mut sessions) = (0u64, 0u64, 0u64);
    for w in workers {
        let _ = hist.add(&w.hist);
        ok += w.ok;
        messages += w.messages;
        sessions += w.sessions;
        errors.connect += w.errors.connect;
        errors.io += w.errors.io;
        errors.timeout += w.errors.timeout;
        for (code, n) in w.errors.refused {
            *errors.refused.entry(code).or_default() += n;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(SmtpReport {
        seconds,
        sessions,
        messages,
        ok,
        messages_per_second: ok as f64 / seconds,
        recipients_per_message: b.recipients,
        bytes_per_message,
        latency_ms: Percentiles::of(&hist),
        errors,
    })
}

impl SmtpReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} messages in {} sessions in {:.2} s, {} ok: {:.0} messages/s ({} recipient(s), {} bytes each)\n{}",
            self.messages,
            self.sessions,
            self.seconds,
            self.ok,
            self.messages_per_second,
            self.recipients_per_message,
            self.bytes_per_message,
            self.latency_ms.to_text(),
        );
        let e = &self.errors;
        s.push_str(&format!(
            "errors: connect {}  io {}  timeout {}",
            e.connect, e.io, e.timeout
        ));
        for (code, n) in &e.refused {
            s.push_str(&format!("  smtp {code}: {n}"));
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_has_the_size_asked_for_and_no_line_starting_with_a_dot() {
        let head = content(0).len();
        for size in [head, head + 2, 100, 137, 138, 139, 4096, 100_000] {
            let c = content(size);
            assert_eq!(c.len(), size);
            assert!(c.ends_with(b"\r\n"));
            assert!(!c.windows(2).any(|w| w == b"\n."));
            assert!(c.split(|&b| b == b'\n').all(|l| l.len() <= 81));
        }
        assert_eq!(
            content(head + 1).len(),
            head + 2,
            "one byte more is one line"
        );
    }
}
