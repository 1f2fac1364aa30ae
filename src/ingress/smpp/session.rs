//! One SMPP session: the client's bind opens an upstream session with the same bind
//! PDU, whose bind_resp goes back unchanged; after it, PDUs pass byte for byte in both
//! directions with their sequence numbers, many outstanding at once (up to `window`).
//!
//! submit_sm, submit_multi and data_sm are recorded before they go upstream: each is
//! read, its records committed through the relay core (records of a window commit
//! together), and only then written upstream; if they cannot be, the client gets the
//! response with `ESME_RTHROTTLED` and nothing goes upstream. The upstream's response
//! (status, message_id) is the outcome. enquire_link is answered on each leg by
//! relaylog itself. An unbind passes through; a leg that goes away, shutdown or
//! inactivity ends the other with an unbind.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::task::JoinSet;

use crate::egress::smpp::SmppUpstreamError;
use crate::record::Outcome;
use crate::relay::{Answer, Exit, Found, NotForwarded, Ticket};
use crate::shutdown::Shutdown;
use crate::smpp::{
    Address, Bind, Dest, HEADER_LEN, Header, Message, SubmitResp, Writer, frame_len, id, segment,
    status,
};
use crate::smtp::Io;
use crate::store::RecordError;

use super::SmppListener;

/// Reads whole PDUs from one leg, each at most `max` bytes.
struct PduReader {
    io: ReadHalf<Box<dyn Io>>,
    buf: BytesMut,
    max: u32,
}

enum ReadError {
    Closed,
    Frame,
}

impl PduReader {
    fn new(io: ReadHalf<Box<dyn Io>>, max: u32) -> Self {
        PduReader {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
            max,
        }
    }

    /// The next PDU. Cancel-safe: what was read stays in the buffer.
    async fn next(&mut self) -> Result<BytesMut, ReadError> {
        loop {
            match frame_len(&self.buf, self.max) {
                Ok(Some(n)) => return Ok(self.buf.split_to(n)),
                Ok(None) => {}
                Err(_) => return Err(ReadError::Frame),
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(n) if n > 0 => {}
                _ => return Err(ReadError::Closed),
            }
        }
    }
}

/// The most a write to either leg may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The sequence number of PDUs relaylog sends itself (an unbind at the end).
const OWN_SEQUENCE: u32 = 0x7FFF_FFFF;

async fn send(w: &mut WriteHalf<Box<dyn Io>>, pdu: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, w.write_all(pdu)).await,
        Ok(Ok(()))
    )
}

/// A response with no body (or an empty message_id) to a request.
fn answer(h: &Header, status: u32) -> Vec<u8> {
    let mut w = Writer::new(id::resp(h.id), status, h.sequence);
    if matches!(
        h.id,
        id::SUBMIT_SM | id::SUBMIT_MULTI | id::DATA_SM | id::DELIVER_SM
    ) {
        w.cstr(b"");
    }
    w.finish()
}

fn nack(sequence: u32, status: u32) -> Vec<u8> {
    Writer::new(id::GENERIC_NACK, status, sequence).finish()
}

/// An address as the record holds it: international numbers with their `+`, the
/// rest (national, alphanumeric, short codes) as sent, for the normaliser to mark.
fn address_text(a: &Address<'_>) -> String {
    let text = String::from_utf8_lossy(a.addr);
    if a.ton == 1 && !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        format!("+{text}")
    } else {
        text.into_owned()
    }
}

/// A bound session's place in `max-sessions-per-account`, given back on drop.
struct AccountSlot<'l> {
    listener: &'l SmppListener,
    account: String,
}

impl<'l> AccountSlot<'l> {
    fn take(listener: &'l SmppListener, account: &str) -> Option<Self> {
        let mut accounts = listener.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let n = accounts.entry(account.to_owned()).or_default();
        if *n >= listener.settings.max_sessions_per_account {
            return None;
        }
        *n += 1;
        Some(AccountSlot {
            listener,
            account: account.to_owned(),
        })
    }
}

impl Drop for AccountSlot<'_> {
    fn drop(&mut self) {
        let mut accounts = self
            .listener
            .accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = accounts.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                accounts.remove(&self.account);
            }
        }
    }
}

/// Serves one client until unbind, either leg going away, inactivity or shutdown.
pub async fn serve(l: &SmppListener, io: Box<dyn Io>, peer: SocketAddr, mut shutdown: Shutdown) {
    let started = Instant::now();
    let max = l.settings.max_pdu_bytes;
    let (r, mut cw) = tokio::io::split(io);
    let mut client = PduReader::new(r, max);

    // Until the bind: enquire_link answered, anything else refused.
    let bind_deadline = tokio::time::Instant::from_std(started + l.settings.bind_timeout);
    let (bind_pdu, h) = loop {
        let pdu = match tokio::time::timeout_at(bind_deadline, client.next()).await {
            Ok(Ok(pdu)) => pdu,
            Ok(Err(ReadError::Frame)) => {
                send(&mut cw, &nack(0, status::INVALID_CMD_LENGTH)).await;
                return;
            }
            _ => return,
        };
        let Some(h) = Header::read(&pdu) else { return };
        let reply = match h.id {
            id::BIND_RECEIVER | id::BIND_TRANSMITTER | id::BIND_TRANSCEIVER => break (pdu, h),
            id::ENQUIRE_LINK => answer(&h, status::OK),
            other if !id::known(other) => nack(h.sequence, status::INVALID_CMD_ID),
            _ if h.is_response() => continue,
            _ => answer(&h, status::INVALID_BIND_STATUS),
        };
        if !send(&mut cw, &reply).await {
            return;
        }
    };
    let bind = match Bind::read(&bind_pdu[HEADER_LEN..]) {
        Ok(b) => b,
        Err(e) => {
            l.relay
                .log(Exit::Rejected("bad_bind"), e.status as u16, started);
            send(&mut cw, &answer(&h, e.status)).await;
            return;
        }
    };
    let account = crate::canonical::canonical_account(&String::from_utf8_lossy(bind.system_id));
    let Some(_slot) = AccountSlot::take(l, &account) else {
        l.relay.log(
            Exit::Rejected("too_many_sessions"),
            status::BIND_FAILED as u16,
            started,
        );
        send(&mut cw, &answer(&h, status::BIND_FAILED)).await;
        return;
    };
    let (mut up, uw, bound) = match bind_upstream(l, &bind_pdu, &h, &mut cw).await {
        Ok(leg) => leg,
        Err(e) => {
            l.relay.log(
                Exit::Passthrough(Some(&e)),
                status::BIND_FAILED as u16,
                started,
            );
            send(&mut cw, &answer(&h, status::BIND_FAILED)).await;
            return;
        }
    };
    if !bound {
        return;
    }
    let mut s = Session {
        l,
        peer,
        account,
        cw,
        uw,
        records: JoinSet::new(),
        in_flight: HashMap::new(),
        outstanding: Default::default(),
    };
    s.run(&mut client, &mut up, &mut shutdown).await;
}

/// Opens the upstream session with the client's bind PDU and passes its bind_resp
/// back unchanged (an enquire_link before it is answered). Whether it bound.
async fn bind_upstream(
    l: &SmppListener,
    bind_pdu: &[u8],
    h: &Header,
    cw: &mut WriteHalf<Box<dyn Io>>,
) -> Result<(PduReader, WriteHalf<Box<dyn Io>>, bool), SmppUpstreamError> {
    let (ur, mut uw) = tokio::io::split(l.upstream.connect().await?);
    let mut up = PduReader::new(ur, l.settings.max_pdu_bytes);
    if !send(&mut uw, bind_pdu).await {
        return Err(SmppUpstreamError::Closed);
    }
    loop {
        let pdu = match tokio::time::timeout(l.upstream.timeout, up.next()).await {
            Ok(Ok(pdu)) => pdu,
            Ok(Err(ReadError::Frame)) => return Err(SmppUpstreamError::Malformed),
            Ok(Err(ReadError::Closed)) => return Err(SmppUpstreamError::Closed),
            Err(_) => return Err(SmppUpstreamError::Timeout),
        };
        let uh = Header::read(&pdu).ok_or(SmppUpstreamError::Malformed)?;
        if uh.id == id::ENQUIRE_LINK {
            send(&mut uw, &answer(&uh, status::OK)).await;
            continue;
        }
        // Passed on as it is; a client that cannot take it is gone anyway.
        send(cw, &pdu).await;
        let bound = uh.id == id::resp(h.id) && uh.status == status::OK;
        return Ok((up, uw, bound));
    }
}

/// A recorded message waiting for its commit: its sequence number and PDU.
type Recorded = (u32, BytesMut, Instant, Result<Ticket, RecordError>);

struct Session<'l> {
    l: &'l SmppListener,
    peer: SocketAddr,
    account: String,
    cw: WriteHalf<Box<dyn Io>>,
    uw: WriteHalf<Box<dyn Io>>,
    /// Records being committed; their PDUs go upstream when they are.
    records: JoinSet<Recorded>,
    /// Sent upstream, waiting for the response: by sequence number.
    in_flight: HashMap<u32, (Ticket, Instant)>,
    /// Sequence numbers of messages being recorded or with the upstream: a second
    /// message under one of them is refused, so that each response finds its message.
    outstanding: std::collections::HashSet<u32>,
}

/// How a bound session ends.
enum End {
    /// Unbound by either side (the response passed on): just close.
    Unbound,
    /// The client went away: the upstream gets an unbind.
    ClientGone,
    /// The upstream went away: the client gets an unbind.
    UpstreamGone(SmppUpstreamError),
    /// Inactivity or shutdown: both get an unbind.
    Both,
}

impl Session<'_> {
    async fn run(&mut self, client: &mut PduReader, up: &mut PduReader, shutdown: &mut Shutdown) {
        let inactivity = self.l.settings.inactivity_timeout;
        let mut idle_until = tokio::time::Instant::now() + inactivity;
        let end = loop {
            let room = self.records.len() + self.in_flight.len() < self.l.settings.window;
            tokio::select! {
                biased;
                _ = shutdown.wait() => break End::Both,
                Some(done) = self.records.join_next(), if !self.records.is_empty() => {
                    if let Ok(done) = done && !self.committed(done).await {
                        break End::UpstreamGone(SmppUpstreamError::Closed);
                    }
                }
                pdu = up.next() => match pdu {
                    Ok(pdu) => match self.upstream_pdu(pdu).await {
                        Some(end) => break end,
                        None => continue,
                    },
                    Err(ReadError::Closed) => break End::UpstreamGone(SmppUpstreamError::Closed),
                    Err(ReadError::Frame) => break End::UpstreamGone(SmppUpstreamError::Malformed),
                },
                pdu = client.next(), if room => match pdu {
                    Ok(pdu) => {
                        idle_until = tokio::time::Instant::now() + inactivity;
                        if let Some(end) = self.client_pdu(pdu).await {
                            break end;
                        }
                    }
                    Err(ReadError::Closed) => break End::ClientGone,
                    Err(ReadError::Frame) => {
                        // The stream cannot be read on: the nack, then close (the
                        // upstream gets its unbind).
                        send(&mut self.cw, &nack(0, status::INVALID_CMD_LENGTH)).await;
                        break End::ClientGone;
                    }
                },
                () = tokio::time::sleep_until(idle_until) => break End::Both,
            }
        };
        self.end(end, up).await;
    }

    /// A client PDU: recorded, answered, passed on or refused. `Some` ends the session.
    async fn client_pdu(&mut self, pdu: BytesMut) -> Option<End> {
        let h = Header::read(&pdu)?;
        match h.id {
            id::SUBMIT_SM | id::SUBMIT_MULTI | id::DATA_SM => {
                if self.outstanding.contains(&h.sequence) {
                    self.l.relay.log(
                        Exit::Rejected("sequence_in_use"),
                        status::SYSTEM_ERROR as u16,
                        Instant::now(),
                    );
                    return (!send(&mut self.cw, &answer(&h, status::SYSTEM_ERROR)).await)
                        .then_some(End::ClientGone);
                }
                let message = match Message::read(h.id, &pdu[HEADER_LEN..]) {
                    Ok(m) => m,
                    Err(e) => {
                        self.l.relay.log(
                            Exit::Rejected("bad_pdu"),
                            e.status as u16,
                            Instant::now(),
                        );
                        return (!send(&mut self.cw, &answer(&h, e.status)).await)
                            .then_some(End::ClientGone);
                    }
                };
                let recipients: Vec<String> = message
                    .dests
                    .iter()
                    .map(|d| match d {
                        Dest::Sme(a) => address_text(a),
                        Dest::List(name) => format!("list:{}", String::from_utf8_lossy(name)),
                    })
                    .collect();
                let source = address_text(&message.source);
                let segments = segment(message.esm_class, message.content(), &message.tlvs)
                    .ok()
                    .flatten()
                    .map_or(1, |s| u16::from(s.total));
                let relay = self.l.relay.clone();
                let submission = relay.submission(Found {
                    account: &self.account,
                    originator: Some(&source),
                    recipients: &recipients,
                    segments,
                    peer: self.peer,
                });
                let started = Instant::now();
                self.outstanding.insert(h.sequence);
                self.records.spawn(async move {
                    let result = relay.record(&submission, started).await;
                    (h.sequence, pdu, started, result)
                });
                None
            }
            id::ENQUIRE_LINK => {
                (!send(&mut self.cw, &answer(&h, status::OK)).await).then_some(End::ClientGone)
            }
            id::BIND_RECEIVER | id::BIND_TRANSMITTER | id::BIND_TRANSCEIVER => {
                (!send(&mut self.cw, &answer(&h, status::ALREADY_BOUND)).await)
                    .then_some(End::ClientGone)
            }
            other if !id::known(other) => {
                (!send(&mut self.cw, &nack(h.sequence, status::INVALID_CMD_ID)).await)
                    .then_some(End::ClientGone)
            }
            // Requests without a new message (query_sm, cancel_sm, replace_sm, which
            // changes a message's content, never its destination), unbind, and
            // responses (to the upstream's deliver_sm, unbind…): passed on.
            id::QUERY_SM | id::CANCEL_SM | id::REPLACE_SM | id::UNBIND => {
                (!send(&mut self.uw, &pdu).await)
                    .then_some(End::UpstreamGone(SmppUpstreamError::Closed))
            }
            _ if h.is_response() => (!send(&mut self.uw, &pdu).await)
                .then_some(End::UpstreamGone(SmppUpstreamError::Closed)),
            // What only an SMSC sends (deliver_sm, outbind, alert_notification) is not
            // taken from a client: a message in it would go unrecorded.
            _ => (!send(&mut self.cw, &nack(h.sequence, status::INVALID_CMD_ID)).await)
                .then_some(End::ClientGone),
        }
    }

    /// A record's commit is done: its PDU goes upstream, or the client hears
    /// `ESME_RTHROTTLED`. False when the upstream cannot be written to.
    async fn committed(&mut self, (sequence, pdu, started, result): Recorded) -> bool {
        // Outstanding again only if it goes in flight below.
        self.outstanding.remove(&sequence);
        match result {
            Ok(ticket) => {
                if let Some(why) = ticket.not_now(false) {
                    ticket.not_forwarded(why, status::THROTTLED as u16).await;
                    send(
                        &mut self.cw,
                        &answer(
                            &Header::read(&pdu).unwrap_or(Header {
                                length: 16,
                                id: id::SUBMIT_SM,
                                status: 0,
                                sequence,
                            }),
                            status::THROTTLED,
                        ),
                    )
                    .await;
                    return true;
                }
                if !send(&mut self.uw, &pdu).await {
                    ticket
                        .outcome(
                            Err(&SmppUpstreamError::Closed),
                            Duration::ZERO,
                            status::SYSTEM_ERROR as u16,
                        )
                        .await;
                    return false;
                }
                self.in_flight.insert(sequence, (ticket, Instant::now()));
                self.outstanding.insert(sequence);
                true
            }
            Err(e) => {
                self.l
                    .relay
                    .log(Exit::FailClosed(&e), status::THROTTLED as u16, started);
                if let Some(h) = Header::read(&pdu) {
                    send(&mut self.cw, &answer(&h, status::THROTTLED)).await;
                }
                true
            }
        }
    }

    /// An upstream PDU: an outcome when it answers a message, then passed on
    /// (enquire_link answered here). `Some` ends the session.
    async fn upstream_pdu(&mut self, pdu: BytesMut) -> Option<End> {
        let h = Header::read(&pdu)?;
        match h.id {
            id::ENQUIRE_LINK => {
                return (!send(&mut self.uw, &answer(&h, status::OK)).await)
                    .then_some(End::UpstreamGone(SmppUpstreamError::Closed));
            }
            id::GENERIC_NACK | id::SUBMIT_SM_RESP | 0x8000_0021 | id::DATA_SM_RESP => {
                if let Some((ticket, forwarded)) = self.in_flight.remove(&h.sequence) {
                    self.outstanding.remove(&h.sequence);
                    let resp = SubmitResp::read(h.id, &pdu[HEADER_LEN..]).unwrap_or(SubmitResp {
                        message_id: &[],
                        unsuccess: Vec::new(),
                    });
                    let outcome = match h.status {
                        status::OK if h.id != id::GENERIC_NACK => Outcome::Accepted,
                        // Temporary: the SMSC is busy or broken.
                        status::THROTTLED | status::SYSTEM_ERROR | 0x14 => Outcome::Failed,
                        _ => Outcome::Rejected,
                    };
                    let answer = Answer {
                        gateway_code: Some(h.status as i32),
                        message_id: (!resp.message_id.is_empty())
                            .then(|| String::from_utf8_lossy(resp.message_id).into_owned()),
                        ..Answer::default()
                    };
                    ticket
                        .outcome(Ok((outcome, answer)), forwarded.elapsed(), h.status as u16)
                        .await;
                }
            }
            _ => {}
        }
        if !send(&mut self.cw, &pdu).await {
            return Some(End::ClientGone);
        }
        (h.id == id::resp(id::UNBIND)).then_some(End::Unbound)
    }

    async fn end(&mut self, end: End, up: &mut PduReader) {
        // Messages whose records were being committed never went upstream.
        while let Some(done) = self.records.join_next().await {
            if let Ok((_, _, _, Ok(ticket))) = done {
                ticket.not_forwarded(NotForwarded::ClientGone, 0).await;
            }
        }
        let unbind = Writer::new(id::UNBIND, 0, OWN_SEQUENCE).finish();
        match &end {
            End::ClientGone | End::Both => {
                // What is with the upstream may still be answered: its outcomes.
                let until = tokio::time::Instant::now()
                    + self.l.upstream.timeout.min(Duration::from_secs(5));
                while !self.in_flight.is_empty() {
                    match tokio::time::timeout_at(until, up.next()).await {
                        Ok(Ok(pdu)) => {
                            let _ = self.upstream_pdu(pdu).await;
                        }
                        _ => break,
                    }
                }
                send(&mut self.uw, &unbind).await;
                if matches!(end, End::Both) {
                    send(&mut self.cw, &unbind).await;
                }
            }
            End::UpstreamGone(_) => {
                send(&mut self.cw, &unbind).await;
            }
            End::Unbound => {}
        }
        let lost = match end {
            End::UpstreamGone(e) => e,
            _ => SmppUpstreamError::Closed,
        };
        for (_, (ticket, forwarded)) in self.in_flight.drain() {
            ticket
                .outcome(Err(&lost), forwarded.elapsed(), status::SYSTEM_ERROR as u16)
                .await;
        }
        let _ = shutdown_write(&mut self.cw).await;
        let _ = shutdown_write(&mut self.uw).await;
    }
}

async fn shutdown_write<W: AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    tokio::time::timeout(Duration::from_secs(1), w.shutdown())
        .await
        .unwrap_or(Ok(()))
}
