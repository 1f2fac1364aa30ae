//! An SMSC simulator: takes binds (any system_id; the password `wrong` is refused),
//! answers submit_sm, submit_multi and data_sm with message ids, sends a delivery
//! receipt after `receipt-delay` when one was asked for (registered_delivery), and
//! mobile-originated messages on demand ([`MoSender::deliver_mo`]). It is what
//! `mock-gateway --api smpp` runs, the upstream of the SMPP tests and benchmarks. It
//! keeps counts, and a receipt's few bytes of the message only until it is sent.
//!
//! Test hooks: a submit_multi destination whose address starts with `999` is refused
//! (`ESME_RINVDSTADR` in unsuccess_sme); [`Smsc::receipts_before_responses`] sends each
//! receipt ahead of the response that carries its message id, as an SMSC answering on
//! one path and delivering on another may. A receipt's `text:` holds the first 20
//! bytes of the message, as real SMSCs write it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::shutdown::Shutdown;
use crate::smpp::{
    Address, Bind, Dest, Header, Message, Writer, frame_len, id, status, tag, tlv_bytes,
};

/// The largest PDU the simulator reads.
const MAX_PDU: u32 = 64 * 1024;

/// PDUs waiting to be written to one session (responses, receipts, MO).
const OUTBOX: usize = 1024;

/// Receipts waiting for their time, per session.
const MAX_PENDING_RECEIPTS: usize = 100_000;

#[derive(Debug, Default)]
pub struct SmscStats {
    pub sessions: AtomicU64,
    pub binds: AtomicU64,
    pub binds_refused: AtomicU64,
    /// submit_sm, submit_multi and data_sm answered with ESME_ROK.
    pub submits: AtomicU64,
    /// Destinations of those.
    pub destinations: AtomicU64,
    pub receipts_sent: AtomicU64,
    pub mo_sent: AtomicU64,
    /// deliver_sm_resp and data_sm_resp from clients with ESME_ROK.
    pub delivery_acks: AtomicU64,
    /// deliver_sm_resp and data_sm_resp with another status (to be sent again).
    pub delivery_refusals: AtomicU64,
    /// The status of the last of those.
    pub last_refusal: AtomicU64,
}

impl SmscStats {
    pub fn to_json(&self) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "sessions": n(&self.sessions),
            "binds": n(&self.binds),
            "binds_refused": n(&self.binds_refused),
            "submits": n(&self.submits),
            "destinations": n(&self.destinations),
            "receipts_sent": n(&self.receipts_sent),
            "mo_sent": n(&self.mo_sent),
            "delivery_acks": n(&self.delivery_acks),
            "delivery_refusals": n(&self.delivery_refusals),
        })
        .to_string()
    }
}

/// What a session's writer is handed.
enum Out {
    Now(Vec<u8>),
    /// A receipt, written at its time.
    Later(Instant, Vec<u8>),
    /// Written, then the session ends (after unbind_resp, or a generic_nack for an
    /// unreadable stream).
    Last(Vec<u8>),
}

/// Sessions that can take deliver_sm (receiver and transceiver binds), for MO.
#[derive(Default)]
struct Receivers(Mutex<Vec<mpsc::Sender<Out>>>);

pub struct Smsc {
    listener: TcpListener,
    /// TLS from the first byte (`smpps`), when given a certificate.
    tls: Option<tokio_rustls::TlsAcceptor>,
    receipt_delay: Duration,
    receipts_first: bool,
    receivers: Arc<Receivers>,
    pub stats: Arc<SmscStats>,
}

impl Smsc {
    pub async fn bind(addr: SocketAddr, receipt_delay: Duration) -> std::io::Result<Smsc> {
        Ok(Smsc {
            listener: TcpListener::bind(addr).await?,
            tls: None,
            receipt_delay,
            receipts_first: false,
            receivers: Arc::default(),
            stats: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Speaks TLS from the first byte.
    pub fn with_tls(mut self, acceptor: tokio_rustls::TlsAcceptor) -> Smsc {
        self.tls = Some(acceptor);
        self
    }

    /// Sends each receipt before the response to its submit (the receipt delay is
    /// ignored).
    pub fn receipts_before_responses(mut self) -> Smsc {
        self.receipts_first = true;
        self
    }

    /// A handle that sends mobile-originated messages while the simulator runs.
    pub fn mo(&self) -> MoSender {
        MoSender {
            receivers: self.receivers.clone(),
            stats: self.stats.clone(),
            sequence: Arc::new(AtomicU64::new(0x4000_0000)),
        }
    }

    pub async fn run(self, mut shutdown: Shutdown) {
        while let Some((stream, _)) =
            crate::net::accept(&self.listener, &mut shutdown, "smsc simulator").await
        {
            let _ = stream.set_nodelay(true);
            let (stats, receivers) = (self.stats.clone(), self.receivers.clone());
            let delay = if self.receipts_first {
                None
            } else {
                Some(self.receipt_delay)
            };
            let tls = self.tls.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let served = async {
                    match tls {
                        None => session(stream, &stats, &receivers, delay).await,
                        Some(acceptor) => {
                            let handshake = acceptor.accept(stream);
                            if let Ok(Ok(tls)) =
                                tokio::time::timeout(Duration::from_secs(10), handshake).await
                            {
                                session(tls, &stats, &receivers, delay).await;
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = served => {}
                    _ = shutdown.wait() => {}
                }
            });
        }
    }
}

/// Sends MO messages (deliver_sm, esm_class 0) to a bound receiver or transceiver:
/// from an international number to a number or (up to 8 digits) a short code.
#[derive(Clone)]
pub struct MoSender {
    receivers: Arc<Receivers>,
    stats: Arc<SmscStats>,
    sequence: Arc<AtomicU64>,
}

impl MoSender {
    /// True when a session took it.
    pub fn deliver_mo(&self, from: &[u8], to: &[u8], text: &[u8]) -> bool {
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed) as u32;
        let pdu = Message {
            service_type: b"",
            source: Address {
                ton: 1,
                npi: 1,
                addr: from,
            },
            // A short code (up to 8 digits) as network specific, TON 3.
            dests: vec![Dest::Sme(Address {
                ton: if to.len() <= 8 { 3 } else { 1 },
                npi: 1,
                addr: to,
            })],
            esm_class: 0,
            registered_delivery: 0,
            data_coding: 0,
            short_message: text,
            tlvs: crate::smpp::Tlvs::none(),
        }
        .write(id::DELIVER_SM, seq);
        let mut receivers = self.receivers.0.lock().unwrap_or_else(|p| p.into_inner());
        receivers.retain(|r| !r.is_closed());
        let taken = receivers
            .iter()
            .any(|r| r.try_send(Out::Now(pdu.clone())).is_ok());
        if taken {
            self.stats.mo_sent.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }
}

/// One SMPP session against the simulator, until unbind, an unreadable stream or the
/// client leaving.
async fn session<S>(
    io: S,
    stats: &SmscStats,
    receivers: &Receivers,
    receipt_delay: Option<Duration>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    let (mut reader, writer) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel(OUTBOX);
    let writing = tokio::spawn(write_out(writer, rx));
    let mut state = State {
        bound: None,
        next_id: 0,
        sequence: 0,
        receipt_delay,
    };
    let mut buf = BytesMut::with_capacity(8192);
    'session: loop {
        loop {
            let len = match frame_len(&buf, MAX_PDU) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(_) => {
                    let nack =
                        Writer::new(id::GENERIC_NACK, status::INVALID_CMD_LENGTH, 0).finish();
                    let _ = tx.send(Out::Last(nack)).await;
                    break 'session;
                }
            };
            let pdu = buf.split_to(len);
            let Some(out) = state.answer(&pdu, stats, receivers, &tx) else {
                continue;
            };
            let last = matches!(out, Out::Last(_));
            if tx.send(out).await.is_err() || last {
                break 'session;
            }
        }
        match reader.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    // No MO goes to a session that has ended, and its writer can finish.
    receivers
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|r| !r.same_channel(&tx));
    drop(tx);
    let _ = writing.await;
}

struct State {
    /// The bind, once accepted: can this session take deliver_sm?
    bound: Option<bool>,
    next_id: u64,
    sequence: u32,
    /// `None`: each receipt goes before its response.
    receipt_delay: Option<Duration>,
}

impl State {
    fn answer(
        &mut self,
        pdu: &[u8],
        stats: &SmscStats,
        receivers: &Receivers,
        tx: &mpsc::Sender<Out>,
    ) -> Option<Out> {
        let h = Header::read(pdu)?;
        let body = &pdu[crate::smpp::HEADER_LEN..];
        let resp = |status: u32| Writer::new(id::resp(h.id), status, h.sequence);
        Some(Out::Now(match h.id {
            id::BIND_RECEIVER | id::BIND_TRANSMITTER | id::BIND_TRANSCEIVER => {
                let status = match Bind::read(body) {
                    _ if self.bound.is_some() => status::ALREADY_BOUND,
                    Err(e) => e.status,
                    Ok(b) if b.password == b"wrong" => status::INVALID_PASSWORD,
                    Ok(_) => status::OK,
                };
                if status == status::OK {
                    stats.binds.fetch_add(1, Ordering::Relaxed);
                    let receives = h.id != id::BIND_TRANSMITTER;
                    self.bound = Some(receives);
                    if receives {
                        let mut r = receivers.0.lock().unwrap_or_else(|p| p.into_inner());
                        r.push(tx.clone());
                    }
                } else {
                    stats.binds_refused.fetch_add(1, Ordering::Relaxed);
                }
                resp(status).cstr(b"relaylog-smsc").finish()
            }
            id::ENQUIRE_LINK => resp(status::OK).finish(),
            id::UNBIND => return Some(Out::Last(resp(status::OK).finish())),
            id::SUBMIT_SM | id::SUBMIT_MULTI | id::DATA_SM if self.bound.is_none() => {
                resp(status::INVALID_BIND_STATUS).finish()
            }
            id::SUBMIT_SM | id::SUBMIT_MULTI | id::DATA_SM => match Message::read(h.id, body) {
                Err(e) => resp(e.status).finish(),
                Ok(m) => {
                    self.next_id += 1;
                    let message_id = format!("{:08X}", self.next_id);
                    let mut w = resp(status::OK);
                    w.cstr(message_id.as_bytes());
                    let mut delivered = Vec::new();
                    let mut refused = Vec::new();
                    for d in &m.dests {
                        match d {
                            Dest::Sme(a) if a.addr.starts_with(b"999") => refused.push(*a),
                            Dest::Sme(a) => delivered.push(*a),
                            Dest::List(_) => {}
                        }
                    }
                    if h.id == id::SUBMIT_MULTI {
                        w.u8(refused.len() as u8);
                        for a in &refused {
                            w.address(*a).u32(status::INVALID_DEST_ADDR);
                        }
                    }
                    stats.submits.fetch_add(1, Ordering::Relaxed);
                    stats
                        .destinations
                        .fetch_add(m.dests.len() as u64, Ordering::Relaxed);
                    if m.registered_delivery & 0x03 != 0 && self.bound == Some(true) {
                        for dest in delivered {
                            let receipt = self.receipt(&message_id, dest, m.source, m.content());
                            let out = match self.receipt_delay {
                                Some(delay) => Out::Later(Instant::now() + delay, receipt),
                                None => Out::Now(receipt),
                            };
                            if tx.try_send(out).is_ok() {
                                stats.receipts_sent.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    w.finish()
                }
            },
            id::DELIVER_SM_RESP | id::DATA_SM_RESP => {
                let count = if h.status == status::OK {
                    &stats.delivery_acks
                } else {
                    stats
                        .last_refusal
                        .store(u64::from(h.status), Ordering::Relaxed);
                    &stats.delivery_refusals
                };
                count.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            id::GENERIC_NACK => return None,
            other if id::known(other) && other & id::RESPONSE == 0 => {
                resp(status::SYSTEM_ERROR).finish()
            }
            _ => Writer::new(id::GENERIC_NACK, status::INVALID_CMD_ID, h.sequence).finish(),
        }))
    }

    /// A delivery receipt for `message_id`, from the destination back to the source.
    fn receipt(
        &mut self,
        message_id: &str,
        from: Address<'_>,
        to: Address<'_>,
        content: &[u8],
    ) -> Vec<u8> {
        self.sequence = self.sequence.wrapping_add(1);
        let now = chrono::Utc::now().format("%y%m%d%H%M");
        let mut text = format!(
            "id:{message_id} sub:001 dlvrd:001 submit date:{now} done date:{now} stat:DELIVRD err:000 text:"
        )
        .into_bytes();
        text.extend_from_slice(&content[..content.len().min(20)]);
        let mut id_nul = message_id.as_bytes().to_vec();
        id_nul.push(0);
        let tlvs = tlv_bytes(&[
            (tag::RECEIPTED_MESSAGE_ID, &id_nul),
            (tag::MESSAGE_STATE, &[2]),
        ]);
        Message {
            service_type: b"",
            source: from,
            dests: vec![Dest::Sme(to)],
            esm_class: 0x04,
            registered_delivery: 0,
            data_coding: 0,
            short_message: &text,
            tlvs: crate::smpp::Tlvs::raw(&tlvs),
        }
        .write(id::DELIVER_SM, self.sequence)
    }
}

/// Writes what the session hands over, receipts at their time.
async fn write_out<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Out>) {
    let mut later: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    loop {
        let next_due = later.front().map(|(due, _)| *due);
        let out = tokio::select! {
            out = rx.recv() => match out {
                Some(out) => out,
                None => break,
            },
            () = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let Some((_, pdu)) = later.pop_front() else { continue };
                Out::Now(pdu)
            }
        };
        match out {
            Out::Now(pdu) => {
                if w.write_all(&pdu).await.is_err() {
                    return;
                }
            }
            // One delay for all: the queue stays in time order.
            Out::Later(due, pdu) if later.len() < MAX_PENDING_RECEIPTS => {
                later.push_back((due, pdu))
            }
            Out::Later(..) => {}
            Out::Last(pdu) => {
                let _ = w.write_all(&pdu).await;
                let _ = w.shutdown().await;
                return;
            }
        }
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smpp::SubmitResp;

    /// Reads one PDU from the client side.
    async fn next(r: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> Vec<u8> {
        loop {
            if let Ok(Some(len)) = frame_len(buf, MAX_PDU) {
                return buf.split_to(len).to_vec();
            }
            let n = tokio::time::timeout(Duration::from_secs(5), r.read_buf(buf))
                .await
                .expect("a PDU in time")
                .unwrap();
            assert!(n > 0, "closed");
        }
    }

    fn bind(command: u32, password: &[u8]) -> Vec<u8> {
        Bind {
            system_id: b"esme",
            password,
            system_type: b"",
            interface_version: 0x34,
            addr_ton: 0,
            addr_npi: 0,
            address_range: b"",
        }
        .write(command, 1)
    }

    fn submit(registered_delivery: u8, seq: u32) -> Vec<u8> {
        Message {
            service_type: b"",
            source: Address {
                ton: 5,
                npi: 0,
                addr: b"ACME",
            },
            dests: vec![Dest::Sme(Address {
                ton: 1,
                npi: 1,
                addr: b"31612345678",
            })],
            esm_class: 0,
            registered_delivery,
            data_coding: 0,
            short_message: b"hello",
            tlvs: crate::smpp::Tlvs::none(),
        }
        .write(id::SUBMIT_SM, seq)
    }

    #[tokio::test]
    async fn binds_submits_receipts_and_mo() {
        let smsc = Smsc::bind("127.0.0.1:0".parse().unwrap(), Duration::from_millis(50))
            .await
            .unwrap();
        let addr = smsc.local_addr().unwrap();
        let (stats, mo) = (smsc.stats.clone(), smsc.mo());
        let (_stop, shutdown) = crate::shutdown::channel();
        tokio::spawn(smsc.run(shutdown));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = tcp.into_split();
        let mut buf = BytesMut::new();

        // Before a bind: refused.
        w.write_all(&submit(0, 2)).await.unwrap();
        let h = Header::read(&next(&mut r, &mut buf).await).unwrap();
        assert_eq!(
            (h.id, h.status),
            (id::resp(id::SUBMIT_SM), status::INVALID_BIND_STATUS)
        );
        w.write_all(&bind(id::BIND_TRANSCEIVER, b"secret"))
            .await
            .unwrap();
        let h = Header::read(&next(&mut r, &mut buf).await).unwrap();
        assert_eq!(
            (h.id, h.status),
            (id::resp(id::BIND_TRANSCEIVER), status::OK)
        );

        // A window of submits, answered in order with distinct ids; receipts follow.
        let mut all = Vec::new();
        for seq in 10..20 {
            all.extend_from_slice(&submit(1, seq));
        }
        w.write_all(&all).await.unwrap();
        let mut ids = Vec::new();
        for seq in 10..20 {
            let pdu = next(&mut r, &mut buf).await;
            let h = Header::read(&pdu).unwrap();
            assert_eq!(
                (h.id, h.status, h.sequence),
                (id::resp(id::SUBMIT_SM), 0, seq)
            );
            let resp = SubmitResp::read(h.id, &pdu[16..]).unwrap();
            ids.push(String::from_utf8(resp.message_id.to_vec()).unwrap());
        }
        for want in &ids {
            let pdu = next(&mut r, &mut buf).await;
            let h = Header::read(&pdu).unwrap();
            assert_eq!(h.id, id::DELIVER_SM);
            let m = Message::read(h.id, &pdu[16..]).unwrap();
            assert!(m.is_receipt());
            let receipt = crate::smpp::receipt(m.content(), &m.tlvs).unwrap();
            assert_eq!(&receipt.id, want);
            assert_eq!(receipt.stat.as_deref(), Some("DELIVRD"));
            let ack = Writer::new(id::resp(id::DELIVER_SM), 0, h.sequence)
                .cstr(b"")
                .finish();
            w.write_all(&ack).await.unwrap();
        }
        assert!(mo.deliver_mo(b"31687654321", b"ACME", b"reply"));
        let pdu = next(&mut r, &mut buf).await;
        let m = Message::read(id::DELIVER_SM, &pdu[16..]).unwrap();
        assert!(!m.is_receipt());

        // Unknown command: generic_nack; unbind: its response, then the end.
        w.write_all(&Writer::new(0x0000_0042, 0, 30).finish())
            .await
            .unwrap();
        let h = Header::read(&next(&mut r, &mut buf).await).unwrap();
        assert_eq!(
            (h.id, h.status, h.sequence),
            (id::GENERIC_NACK, status::INVALID_CMD_ID, 30)
        );
        w.write_all(&Writer::new(id::UNBIND, 0, 31).finish())
            .await
            .unwrap();
        let h = Header::read(&next(&mut r, &mut buf).await).unwrap();
        assert_eq!(h.id, id::resp(id::UNBIND));
        assert_eq!(
            r.read_buf(&mut buf).await.unwrap(),
            0,
            "closed after unbind"
        );
        assert_eq!(stats.submits.load(Ordering::SeqCst), 10);
        assert_eq!(stats.receipts_sent.load(Ordering::SeqCst), 10);
        assert_eq!(stats.delivery_acks.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn a_bad_password_and_a_bad_length_are_refused() {
        let (client, server) = tokio::io::duplex(4096);
        let stats = Arc::new(SmscStats::default());
        let receivers = Arc::new(Receivers::default());
        let st = stats.clone();
        tokio::spawn(async move { session(server, &st, &receivers, Some(Duration::ZERO)).await });
        let (mut r, mut w) = tokio::io::split(client);
        let mut buf = BytesMut::new();
        w.write_all(&bind(id::BIND_TRANSMITTER, b"wrong"))
            .await
            .unwrap();
        let h = Header::read(&next(&mut r, &mut buf).await).unwrap();
        assert_eq!(h.status, status::INVALID_PASSWORD);
        w.write_all(&[0, 0, 0, 8, 0, 0, 0, 0]).await.unwrap();
        let h = Header::read(&next(&mut r, &mut buf).await).unwrap();
        assert_eq!(
            (h.id, h.status),
            (id::GENERIC_NACK, status::INVALID_CMD_LENGTH)
        );
        assert_eq!(r.read_buf(&mut buf).await.unwrap(), 0, "closed");
        assert_eq!(stats.binds_refused.load(Ordering::SeqCst), 1);
    }
}
