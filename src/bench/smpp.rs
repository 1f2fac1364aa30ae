//! `relaylog bench smpp`: a load generator for SMSCs (relaylog's SMPP listener, or the
//! SMSC behind it). `sessions` binds (transceiver), each keeping up to `window`
//! submit_sm outstanding, as a real ESME does; delivery receipts are acknowledged and
//! counted. Closed loop, or open loop at a rate, with each submit's response latency
//! measured from when it was due. Always bounded: by duration or by submit count.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Percentiles, Rng, Schedule, Shared, histogram, micros_since};
use crate::smpp::{Address, Bind, Dest, Header, Message, Tlvs, Writer, frame_len, id, status};

#[derive(Debug, Clone)]
pub struct SmppBench {
    pub target: SocketAddr,
    pub sessions: usize,
    /// submit_sm outstanding per session at most.
    pub window: usize,
    pub duration: Option<Duration>,
    pub submits: Option<u64>,
    /// Open loop: submits per second over all sessions. `None`: closed loop.
    pub rate: Option<f64>,
    /// Destination numbers are drawn from a pool of this size.
    pub pool: u64,
    /// Ask for delivery receipts (registered_delivery = 1).
    pub receipts: bool,
    pub system_id: String,
    pub password: String,
    pub seed: u64,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SmppBenchError {
    #[error("give --duration or --submits: the load stops by itself")]
    Unbounded,
    #[error("--sessions and --window must be at least 1")]
    Empty,
    #[error("--system-id is at most 15 bytes and --password at most 8 (SMPP 3.4)")]
    Credentials,
    #[error("a load worker failed: {0}")]
    Worker(String),
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Errors {
    pub connect: u64,
    /// Binds refused, by command_status.
    pub bind: BTreeMap<u32, u64>,
    pub io: u64,
    /// Submits still unanswered when the session ended.
    pub unanswered: u64,
    /// Submits answered with an error, by command_status (generic_nack included).
    pub status: BTreeMap<u32, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SmppReport {
    pub seconds: f64,
    pub sessions: usize,
    pub window: usize,
    pub submits: u64,
    pub ok: u64,
    pub submits_per_second: f64,
    pub receipts: u64,
    pub latency_ms: Percentiles,
    pub errors: Errors,
}

/// How long outstanding submits may take to be answered once sending has stopped.
const DRAIN: Duration = Duration::from_secs(10);

const MAX_PDU: u32 = 64 * 1024;

struct Worker {
    hist: Histogram<u64>,
    errors: Errors,
    ok: u64,
    submits: u64,
    receipts: u64,
}

fn submit(b: &SmppBench, rng: &mut Rng, sequence: u32) -> Vec<u8> {
    let to = format!("3161{:07}", rng.next() % b.pool.max(1));
    Message {
        service_type: b"",
        source: Address {
            ton: 5,
            npi: 0,
            addr: b"BENCH",
        },
        dests: vec![Dest::Sme(Address {
            ton: 1,
            npi: 1,
            addr: to.as_bytes(),
        })],
        esm_class: 0,
        registered_delivery: u8::from(b.receipts),
        data_coding: 0,
        short_message: b"Your code is 123456",
        tlvs: Tlvs::none(),
    }
    .write(id::SUBMIT_SM, sequence)
}

async fn worker(
    b: Arc<SmppBench>,
    index: usize,
    shared: Arc<Shared>,
    deadline: Option<Instant>,
) -> Worker {
    let mut w = Worker {
        hist: histogram(),
        errors: Errors::default(),
        ok: 0,
        submits: 0,
        receipts: 0,
    };
    let Ok(Ok(mut tcp)) = tokio::time::timeout(DRAIN, TcpStream::connect(b.target)).await else {
        w.errors.connect += 1;
        return w;
    };
    let _ = tcp.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let bind = Bind {
        system_id: b.system_id.as_bytes(),
        password: b.password.as_bytes(),
        system_type: b"",
        interface_version: 0x34,
        addr_ton: 0,
        addr_npi: 0,
        address_range: b"",
    }
    .write(id::BIND_TRANSCEIVER, 1);
    if tcp.write_all(&bind).await.is_err() {
        w.errors.io += 1;
        return w;
    }
    match next_pdu(&mut tcp, &mut buf, DRAIN).await {
        Some(pdu) => {
            let h = Header::read(&pdu).unwrap_or(Header {
                length: 16,
                id: 0,
                status: status::SYSTEM_ERROR,
                sequence: 0,
            });
            if h.id != id::resp(id::BIND_TRANSCEIVER) || h.status != status::OK {
                *w.errors.bind.entry(h.status).or_default() += 1;
                return w;
            }
        }
        None => {
            w.errors.io += 1;
            return w;
        }
    }
    let mut rng = Rng::for_worker(b.seed, index);
    let mut schedule = Schedule::new(b.rate, b.sessions);
    let mut sent: HashMap<u32, Instant> = HashMap::with_capacity(b.window);
    let mut sequence: u32 = 1;
    let mut sending = true;
    let mut held: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let mut out = Vec::new();
    loop {
        // Fill the window with what is due.
        // Everything already due goes in one write; a due time still ahead is held
        // for the next round.
        let mut next_due = None;
        let now = Instant::now();
        while sending && sent.len() < b.window {
            let Some(due) = held.take().or_else(|| schedule.due(deadline)) else {
                sending = false;
                break;
            };
            if b.rate.is_some() && due > now {
                held = Some(due);
                next_due = Some(due);
                break;
            }
            if !shared.issue(b.submits) {
                sending = false;
                break;
            }
            sequence = if sequence >= 0x7FFF_FFFE {
                2
            } else {
                sequence + 1
            };
            out.extend_from_slice(&submit(&b, &mut rng, sequence));
            // Open loop: latency counts from when the submit was due.
            sent.insert(sequence, if b.rate.is_some() { due } else { now });
            w.submits += 1;
        }
        if !out.is_empty() {
            if tcp.write_all(&out).await.is_err() {
                w.errors.io += 1;
                break;
            }
            out.clear();
        }
        if !sending && sent.is_empty() {
            break;
        }
        if !sending && drain_until.is_none() {
            drain_until = Some(Instant::now() + DRAIN);
        }
        let wait = match (drain_until, next_due) {
            (Some(until), _) => until.saturating_duration_since(Instant::now()),
            (None, Some(due)) if sent.len() < b.window => {
                due.saturating_duration_since(Instant::now())
            }
            _ => DRAIN,
        };
        if drain_until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        match tokio::time::timeout(wait, tcp.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                w.errors.io += 1;
                break;
            }
            Err(_) => continue,
        }
        while let Ok(Some(len)) = frame_len(&buf, MAX_PDU) {
            let pdu = buf.split_to(len);
            let Some(h) = Header::read(&pdu) else {
                continue;
            };
            match h.id {
                id::GENERIC_NACK | id::SUBMIT_SM_RESP => {
                    let Some(start) = sent.remove(&h.sequence) else {
                        continue;
                    };
                    if h.status == status::OK && h.id == id::SUBMIT_SM_RESP {
                        let _ = w.hist.record(micros_since(start));
                        w.ok += 1;
                    } else {
                        *w.errors.status.entry(h.status).or_default() += 1;
                    }
                    shared.done();
                }
                id::DELIVER_SM => {
                    w.receipts += 1;
                    out.extend_from_slice(
                        &Writer::new(id::resp(id::DELIVER_SM), 0, h.sequence)
                            .cstr(b"")
                            .finish(),
                    );
                }
                id::ENQUIRE_LINK => {
                    out.extend_from_slice(
                        &Writer::new(id::resp(id::ENQUIRE_LINK), 0, h.sequence).finish(),
                    );
                }
                id::UNBIND => {
                    let _ = tcp
                        .write_all(&Writer::new(id::resp(id::UNBIND), 0, h.sequence).finish())
                        .await;
                    w.errors.unanswered += sent.len() as u64;
                    return w;
                }
                _ => {}
            }
        }
    }
    w.errors.unanswered += sent.len() as u64;
    let _ = tcp.write_all(&out).await;
    let _ = tcp.write_all(&Writer::new(id::UNBIND, 0, 1).finish()).await;
    // Until the unbind is answered: everything sent before it has been read.
    let until = Instant::now() + Duration::from_secs(1);
    while let Some(pdu) = next_pdu(
        &mut tcp,
        &mut buf,
        until.saturating_duration_since(Instant::now()),
    )
    .await
    {
        if Header::read(&pdu).is_some_and(|h| h.id == id::resp(id::UNBIND)) {
            break;
        }
    }
    w
}

/// The next PDU, within `wait`; `None` on a stream that closed, timed out or cannot
/// be framed (a command_length out of bounds: reading on would only wait).
pub(crate) async fn next_pdu(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    wait: Duration,
) -> Option<BytesMut> {
    let until = Instant::now() + wait;
    loop {
        match frame_len(buf, MAX_PDU) {
            Ok(Some(len)) => return Some(buf.split_to(len)),
            Ok(None) => {}
            Err(_) => return None,
        }
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

pub async fn run(b: SmppBench) -> Result<SmppReport, SmppBenchError> {
    if b.duration.is_none() && b.submits.is_none() {
        return Err(SmppBenchError::Unbounded);
    }
    if b.sessions == 0 || b.window == 0 {
        return Err(SmppBenchError::Empty);
    }
    if b.system_id.len() > 15 || b.password.len() > 8 {
        return Err(SmppBenchError::Credentials);
    }
    let b = Arc::new(b);
    let started = Instant::now();
    let deadline = b.duration.map(|d| started + d);
    let workers = super::run_workers(b.sessions, b.progress, "submits", |i, shared| {
        worker(b.clone(), i, shared, deadline)
    })
    .await
    .map_err(SmppBenchError::Worker)?;
    let mut hist = histogram();
    let mut errors = Errors::default();
    let (mut ok, mut submits, mut receipts) = (0, 0, 0);
    for w in workers {
        let _ = hist.add(&w.hist);
        ok += w.ok;
        submits += w.submits;
        receipts += w.receipts;
        errors.connect += w.errors.connect;
        errors.io += w.errors.io;
        errors.unanswered += w.errors.unanswered;
        for (s, n) in w.errors.bind {
            *errors.bind.entry(s).or_default() += n;
        }
        for (s, n) in w.errors.status {
            *errors.status.entry(s).or_default() += n;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(SmppReport {
        seconds,
        sessions: b.sessions,
        window: b.window,
        submits,
        ok,
        submits_per_second: ok as f64 / seconds,
        receipts,
        latency_ms: Percentiles::of(&hist),
        errors,
    })
}

impl SmppReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} submits over {} sessions (window {}) in {:.2} s, {} ok: {:.0} submits/s; {} receipts\n{}",
            self.submits,
            self.sessions,
            self.window,
            self.seconds,
            self.ok,
            self.submits_per_second,
            self.receipts,
            self.latency_ms.to_text(),
        );
        let e = &self.errors;
        s.push_str(&format!(
            "errors: connect {}  io {}  unanswered {}",
            e.connect, e.io, e.unanswered
        ));
        for (st, n) in &e.bind {
            s.push_str(&format!("  bind {st:#04x}: {n}"));
        }
        for (st, n) in &e.status {
            s.push_str(&format!("  status {st:#04x}: {n}"));
        }
        s.push('\n');
        s
    }
}
