//! The soak's clients: Kannel sendsms over kept-alive HTTP connections, SMTP sessions
//! and SMPP transceiver binds, each message to a recipient of its own (so that the
//! upstream's notes and the store's records can be matched one by one), paced to a
//! rate, reconnecting whenever relaylog is down or drops them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::smpp::{Address, Bind, Dest, Header, Message, Tlvs, id};
use crate::smtp::Wire;

/// How long a client waits for one answer.
const WAIT: Duration = Duration::from_secs(15);
/// The pause before connecting again.
const BACKOFF: Duration = Duration::from_millis(100);

/// What one protocol's clients did.
#[derive(Default)]
pub struct Tally {
    /// Messages sent (whole, to a connection that took them).
    pub sent: AtomicU64,
    /// Answered with an acceptance.
    pub acked: AtomicU64,
    /// Answered with a refusal (relaylog's own, as fail-closed, or the upstream's).
    pub refused: AtomicU64,
    /// Connections that failed or broke off (relaylog down, restarting, cutting).
    pub broken: AtomicU64,
    /// The recipients of the acknowledged messages, each with how many.
    pub(super) acked_to: super::PerRecipient,
}

impl Tally {
    fn ack(&self, to: String) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        self.acked_to.add(to);
    }
}

/// One protocol's load: `connections` clients sharing `rate` messages a second.
#[derive(Clone)]
pub struct Load {
    pub target: SocketAddr,
    pub connections: usize,
    pub rate: f64,
    pub tally: Arc<Tally>,
    pub stop: Arc<AtomicBool>,
    /// Numbers recipients; the protocols use disjoint ranges.
    pub next: Arc<AtomicU64>,
}

impl Load {
    /// Waits for this client's next turn; false once the soak is over.
    async fn turn(&self, due: &mut Instant) -> bool {
        let every = Duration::from_secs_f64(self.connections as f64 / self.rate.max(0.001));
        *due += every;
        let now = Instant::now();
        if *due > now {
            tokio::time::sleep(*due - now).await;
        } else if now - *due > Duration::from_secs(1) {
            // Behind by more than a second (relaylog was down): no burst to catch up.
            *due = now;
        }
        !self.stop.load(Ordering::Relaxed)
    }

    fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    async fn backoff(&self) -> bool {
        self.tally.broken.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(BACKOFF).await;
        !self.stop.load(Ordering::Relaxed)
    }
}

/// Runs every client of the three loads until `stop`.
pub async fn run(http: Load, smtp: Load, smpp: Load) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..http.connections {
        tasks.spawn(http_client(http.clone()));
    }
    for _ in 0..smtp.connections {
        tasks.spawn(smtp_client(smtp.clone()));
    }
    for _ in 0..smpp.connections {
        tasks.spawn(smpp_client(smpp.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn http_client(load: Load) {
    let mut due = Instant::now();
    'connect: loop {
        let Ok(mut conn) = TcpStream::connect(load.target).await else {
            if load.backoff().await {
                continue;
            }
            return;
        };
        let _ = conn.set_nodelay(true);
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            if !load.turn(&mut due).await {
                return;
            }
            let n = load.number();
            let to = format!("+316{n:08}");
            let req = format!(
                "GET /cgi-bin/sendsms?username=soak&password=pw&to=%2B316{n:08}&text=soak HTTP/1.1\r\nHost: soak\r\n\r\n"
            );
            if conn.write_all(req.as_bytes()).await.is_err() {
                load.backoff().await;
                continue 'connect;
            }
            load.tally.sent.fetch_add(1, Ordering::Relaxed);
            let reply = tokio::time::timeout(
                WAIT,
                crate::http1::read_reply(&mut conn, &mut buf, false, 64 * 1024),
            )
            .await;
            match reply {
                Ok(Ok(r)) if (200..300).contains(&r.status) => {
                    load.tally.ack(to);
                    if !r.reusable {
                        continue 'connect;
                    }
                }
                Ok(Ok(r)) => {
                    load.tally.refused.fetch_add(1, Ordering::Relaxed);
                    if !r.reusable {
                        continue 'connect;
                    }
                }
                _ => {
                    if !load.backoff().await {
                        return;
                    }
                    continue 'connect;
                }
            }
        }
    }
}

async fn smtp_client(load: Load) {
    let mut due = Instant::now();
    loop {
        if load.stop.load(Ordering::Relaxed) {
            return;
        }
        match smtp_session(&load, &mut due).await {
            Ok(()) => return,
            Err(()) => {
                if !load.backoff().await {
                    return;
                }
            }
        }
    }
}

/// One session, until the soak is over (`Ok`) or it breaks.
async fn smtp_session(load: &Load, due: &mut Instant) -> Result<(), ()> {
    let conn = TcpStream::connect(load.target).await.map_err(|_| ())?;
    let _ = conn.set_nodelay(true);
    let mut w = Wire::new(conn);
    let code = |r: Result<crate::smtp::Reply, _>| r.map(|r| r.code).map_err(|_| ());
    if code(w.reply(WAIT).await)? != 220 {
        return Err(());
    }
    w.send(b"EHLO soak.example\r\n", WAIT)
        .await
        .map_err(|_| ())?;
    if code(w.reply(WAIT).await)? != 250 {
        return Err(());
    }
    loop {
        if !load.turn(due).await {
            let _ = w.send(b"QUIT\r\n", WAIT).await;
            return Ok(());
        }
        let n = load.number();
        let to = format!("soak-{n}@example.org");
        w.send(
            format!("MAIL FROM:<soak@example.org>\r\nRCPT TO:<{to}>\r\nDATA\r\n").as_bytes(),
            WAIT,
        )
        .await
        .map_err(|_| ())?;
        let (mail, rcpt, data) = (
            code(w.reply(WAIT).await)?,
            code(w.reply(WAIT).await)?,
            code(w.reply(WAIT).await)?,
        );
        if data != 354 {
            load.tally.refused.fetch_add(1, Ordering::Relaxed);
            if (mail, rcpt) == (250, 250) || data >= 400 {
                w.send(b"RSET\r\n", WAIT).await.map_err(|_| ())?;
                code(w.reply(WAIT).await)?;
            }
            if data == 421 || mail == 421 {
                return Err(());
            }
            continue;
        }
        w.send(b"Subject: soak\r\n\r\nsoak\r\n.\r\n", WAIT)
            .await
            .map_err(|_| ())?;
        load.tally.sent.fetch_add(1, Ordering::Relaxed);
        match code(w.reply(WAIT).await)? {
            250 => load.tally.ack(to),
            421 => {
                load.tally.refused.fetch_add(1, Ordering::Relaxed);
                return Err(());
            }
            _ => {
                load.tally.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn smpp_client(load: Load) {
    let mut due = Instant::now();
    loop {
        if load.stop.load(Ordering::Relaxed) {
            return;
        }
        match smpp_session(&load, &mut due).await {
            Ok(()) => return,
            Err(()) => {
                if !load.backoff().await {
                    return;
                }
            }
        }
    }
}

/// The next PDU from `conn` (answering the relay's enquire_links on the way).
async fn next_pdu(conn: &mut TcpStream, buf: &mut BytesMut) -> Result<Header, ()> {
    loop {
        let pdu = crate::bench::smpp::next_pdu(conn, buf, WAIT)
            .await
            .ok_or(())?;
        let h = Header::read(&pdu).ok_or(())?;
        if h.id != id::ENQUIRE_LINK {
            return Ok(h);
        }
        let resp = crate::smpp::Writer::new(id::resp(h.id), 0, h.sequence).finish();
        conn.write_all(&resp).await.map_err(|_| ())?;
    }
}

async fn smpp_session(load: &Load, due: &mut Instant) -> Result<(), ()> {
    let mut conn = TcpStream::connect(load.target).await.map_err(|_| ())?;
    let _ = conn.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(1024);
    let bind = Bind {
        system_id: b"soak",
        password: b"pw",
        system_type: b"",
        interface_version: 0x34,
        addr_ton: 0,
        addr_npi: 0,
        address_range: b"",
    }
    .write(id::BIND_TRANSCEIVER, 1);
    conn.write_all(&bind).await.map_err(|_| ())?;
    let h = next_pdu(&mut conn, &mut buf).await?;
    if h.id != id::resp(id::BIND_TRANSCEIVER) || h.status != 0 {
        return Err(());
    }
    let mut sequence = 1u32;
    loop {
        if !load.turn(due).await {
            let unbind = crate::smpp::Writer::new(id::UNBIND, 0, sequence + 1).finish();
            let _ = conn.write_all(&unbind).await;
            return Ok(());
        }
        let n = load.number();
        let digits = format!("316{n:08}");
        sequence += 1;
        let submit = Message {
            service_type: b"",
            source: Address {
                ton: 5,
                npi: 0,
                addr: b"SOAK",
            },
            dests: vec![Dest::Sme(Address {
                ton: 1,
                npi: 1,
                addr: digits.as_bytes(),
            })],
            esm_class: 0,
            registered_delivery: 0,
            data_coding: 0,
            short_message: b"soak",
            tlvs: Tlvs::none(),
        }
        .write(id::SUBMIT_SM, sequence);
        conn.write_all(&submit).await.map_err(|_| ())?;
        load.tally.sent.fetch_add(1, Ordering::Relaxed);
        loop {
            let h = next_pdu(&mut conn, &mut buf).await?;
            if h.id == id::resp(id::SUBMIT_SM) && h.sequence == sequence {
                if h.status == 0 {
                    load.tally.ack(format!("+{digits}"));
                } else {
                    load.tally.refused.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            if h.id == id::UNBIND || h.id == id::GENERIC_NACK {
                return Err(());
            }
            // Anything else (a deliver_sm: none are sent here) is not waited on.
        }
    }
}
