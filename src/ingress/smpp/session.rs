//! One SMPP session: the client's bind opens an upstream session with the same bind
//! PDU, whose bind_resp goes back unchanged; after it, PDUs pass byte for byte in both
//! directions with their sequence numbers, many outstanding at once (up to `window`).
//!
//! submit_sm, submit_multi and data_sm are recorded before they go upstream: each is
//! read, its records committed through the relay core (records of a window commit
//! together), and only then written upstream; if they cannot be, the client gets the
//! response with `ESME_RTHROTTLED` and nothing goes upstream. The upstream's response
//! (status, message_id) is the outcome; a submit_multi_resp's unsuccess_sme entries
//! are each their destination's own. The message id goes into the listener's
//! [`ReceiptBook`](super::receipts::ReceiptBook), so that a delivery receipt from the
//! SMSC (on any session of the account) is attached to its message; a mobile-originated
//! deliver_sm or data_sm is recorded (inbound) before it goes to the client, whose
//! response is its outcome. enquire_link is answered on each leg by relaylog itself.
//! An unbind passes through; a leg that goes away, shutdown or inactivity ends the
//! other with an unbind.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::task::JoinSet;

use crate::egress::smpp::SmppUpstreamError;
use crate::net::Io;
use crate::record::{Direction, Outcome, OutcomeEvent, Part, SmppDetail, Submission};
use crate::relay::{Answer, Exit, Identified, NotForwarded, Ticket};
use crate::shutdown::Shutdown;
use crate::smpp::{
    Bind, Dest, HEADER_LEN, Header, Message, SubmitResp, Writer, frame_len, id, receipt, segment,
    status,
};
use crate::store::RecordError;

use super::SmppListener;
use super::address;
use super::receipts::{Attached, Found as Receipted};

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

    /// The next PDU if it is already whole in the buffer (no read).
    fn buffered(&mut self) -> Option<Result<BytesMut, ReadError>> {
        match frame_len(&self.buf, self.max) {
            Ok(Some(n)) => Some(Ok(self.buf.split_to(n))),
            Ok(None) => None,
            Err(_) => Some(Err(ReadError::Frame)),
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

/// PDUs for one leg are written together, at the latest when this many bytes wait.
const MAX_OUT: usize = 64 * 1024;

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

/// A bound session's place in `max-sessions-per-account`, given back on drop.
struct AccountSlot<'l> {
    listener: &'l SmppListener,
    account: String,
}

impl<'l> AccountSlot<'l> {
    /// Is there a place for one more session of `account`?
    fn free(listener: &SmppListener, account: &str) -> bool {
        let accounts = listener.accounts.lock().unwrap_or_else(|p| p.into_inner());
        accounts.get(account).copied().unwrap_or(0) < listener.settings.max_sessions_per_account
    }

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
        let pdu = tokio::select! {
            pdu = tokio::time::timeout_at(bind_deadline, client.next()) => pdu,
            _ = shutdown.wait() => return,
        };
        let pdu = match pdu {
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
    let refuse = |reason: &'static str, code: u32| {
        l.relay.log(Exit::Rejected(reason), code as u16, started);
    };
    let account = match Bind::read(&bind_pdu[HEADER_LEN..]) {
        // An id the SMSC could read apart from another (spaces, bytes that are not
        // UTF-8, controls) would share its records: refused.
        Ok(b) => match std::str::from_utf8(b.system_id) {
            Ok(id) if !id.is_empty() && id.bytes().all(|c| c.is_ascii_graphic() || c >= 0x80) => {
                id.to_owned()
            }
            _ => {
                refuse("bad_bind", status::INVALID_SYSTEM_ID);
                send(&mut cw, &answer(&h, status::INVALID_SYSTEM_ID)).await;
                return;
            }
        },
        Err(e) => {
            refuse("bad_bind", e.status);
            send(&mut cw, &answer(&h, e.status)).await;
            return;
        }
    };
    if !AccountSlot::free(l, &account) {
        refuse("too_many_sessions", status::BIND_FAILED);
        send(&mut cw, &answer(&h, status::BIND_FAILED)).await;
        return;
    }
    let (mut up, mut uw, resp) = match bind_upstream(l, &bind_pdu, &h).await {
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
    // The password is not kept past the bind.
    drop(bind_pdu);
    let bound =
        Header::read(&resp).is_some_and(|r| r.id == id::resp(h.id) && r.status == status::OK);
    l.metrics.bind(h.id, bound);
    // A place counts only once the SMSC has let the account in: a bind that fails
    // (a wrong password) never holds one.
    let slot = if bound {
        AccountSlot::take(l, &account)
    } else {
        None
    };
    if bound && slot.is_none() {
        refuse("too_many_sessions", status::BIND_FAILED);
        send(&mut uw, &Writer::new(id::UNBIND, 0, OWN_SEQUENCE).finish()).await;
        send(&mut cw, &answer(&h, status::BIND_FAILED)).await;
        return;
    }
    // The bind_resp, unchanged.
    if !send(&mut cw, &resp).await || !bound {
        return;
    }
    let mut s = Session {
        l,
        peer,
        account,
        cw,
        uw,
        client_alive: true,
        up_alive: true,
        batch: Vec::new(),
        records: JoinSet::new(),
        batches: HashMap::new(),
        recording: 0,
        inbound_recording: 0,
        in_flight: HashMap::new(),
        outstanding: HashSet::new(),
        upstream_requests: HashMap::new(),
        awaited: HashMap::new(),
        window_reported: 0,
        client_out: Vec::new(),
        up_out: Vec::new(),
    };
    s.run(&mut client, &mut up, &mut shutdown).await;
    drop(slot);
}

/// Opens the upstream session with the client's bind PDU; the upstream's bind_resp
/// (an enquire_link before it is answered), all within upstream-timeout.
async fn bind_upstream(
    l: &SmppListener,
    bind_pdu: &[u8],
    h: &Header,
) -> Result<(PduReader, WriteHalf<Box<dyn Io>>, BytesMut), SmppUpstreamError> {
    let until = tokio::time::Instant::now() + l.upstream.timeout;
    let (ur, mut uw) = tokio::io::split(l.upstream.connect().await?);
    let mut up = PduReader::new(ur, l.settings.max_pdu_bytes);
    if !send(&mut uw, bind_pdu).await {
        return Err(SmppUpstreamError::Closed);
    }
    loop {
        let pdu = match tokio::time::timeout_at(until, up.next()).await {
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
        if uh.sequence != h.sequence {
            return Err(SmppUpstreamError::Malformed);
        }
        return Ok((up, uw, pdu));
    }
}

/// A message read, to be recorded with the others read at once.
struct Pending {
    submission: Submission,
    item: Item,
}

/// A message on its way to be recorded: its header and PDU, and what its response
/// needs (see `InFlight`).
struct Item {
    h: Header,
    pdu: BytesMut,
    recipients: Box<[u64]>,
    wants_receipt: bool,
}

/// Messages whose records are being committed together: which way they go, when the
/// first came, each one. Kept by the session (by its task's id), not by the task, so
/// that a task that panics cannot take its messages with it.
struct Batch {
    inbound: bool,
    started: Instant,
    items: Vec<Item>,
}

/// What a record task ends with: its id, and each message's ticket or the error.
type Recorded = Result<(tokio::task::Id, Result<Vec<Ticket>, RecordError>), tokio::task::JoinError>;

/// A message with the upstream, waiting for its response.
struct InFlight {
    ticket: Ticket,
    /// submit_sm, submit_multi or data_sm: only its response (or a generic_nack)
    /// is its outcome.
    command: u32,
    forwarded: Instant,
    /// A submit_multi's recipients' keys ([`ReceiptBook::recipient_key`]), in ordinal
    /// order: what tells which one an unsuccess_sme entry or a receipt is about.
    ///
    /// [`ReceiptBook::recipient_key`]: super::receipts::ReceiptBook::recipient_key
    recipients: Box<[u64]>,
    /// It asked for a receipt (registered_delivery): its message id goes in the book.
    wants_receipt: bool,
}

/// A request from the upstream the client is to answer.
struct UpstreamRequest {
    command: u32,
    at: Instant,
    /// A mobile-originated message: the client's answer is its outcome.
    inbound: Option<Ticket>,
}

/// Requests from the upstream (deliver_sm, unbind…) the client has not answered yet
/// that relaylog keeps track of (the oldest is forgotten beyond this).
const MAX_UPSTREAM_REQUESTS: usize = 10_000;

/// Client requests other than messages (query_sm…) with the upstream at once.
const MAX_AWAITED: usize = 10_000;

/// command_status values a proxy maps to "failed" (temporary) rather than "rejected".
const TEMPORARY: [u32; 4] = [
    status::SYSTEM_ERROR,
    MESSAGE_QUEUE_FULL,
    status::THROTTLED,
    TEMPORARY_APP_ERROR,
];
const MESSAGE_QUEUE_FULL: u32 = 0x14;
/// registered_delivery bits that ask for an SMSC delivery receipt (0-1) or an
/// intermediate notification (4).
const RECEIPT_REQUESTED: u8 = 0x13;

/// ESME_RX_T_APPN: what an ESME answers a deliver_sm it cannot take now (the SMSC
/// retries it later).
const TEMPORARY_APP_ERROR: u32 = 0x64;

/// The outcome a command_status says.
fn outcome_of(command: u32, status: u32) -> Outcome {
    match status {
        status::OK if command != id::GENERIC_NACK => Outcome::Accepted,
        s if TEMPORARY.contains(&s) => Outcome::Failed,
        _ => Outcome::Rejected,
    }
}

/// One bound session. What holds between PDUs:
///
/// - A submit_sm, submit_multi or data_sm goes upstream only from `committed`, after
///   its records are; until then it is in `records`, then in `in_flight` until its
///   response (or upstream-timeout).
/// - `outstanding` is the sequence numbers in `records` and `in_flight`: no other
///   client request may use one, so that a response (or a generic_nack the client
///   could provoke) finds only its own message.
/// - `awaited` is the other client requests with the upstream (query_sm, cancel_sm,
///   replace_sm, unbind) and messages given up at upstream-timeout: their numbers
///   are in use too, until their response (or twice upstream-timeout).
/// - A client response passes only if it answers a request the upstream sent
///   (`upstream_requests`): the upstream never sees one it could nack.
/// - The window counts messages (`records` + `in_flight`); order among messages is
///   not kept (each goes upstream when its records are committed).
struct Session<'l> {
    l: &'l SmppListener,
    peer: SocketAddr,
    account: String,
    cw: WriteHalf<Box<dyn Io>>,
    uw: WriteHalf<Box<dyn Io>>,
    /// False once the client is gone: nothing more is written to it.
    client_alive: bool,
    /// False once a write to the upstream failed.
    up_alive: bool,
    /// Messages read and not yet handed to `records`: recorded together, one commit.
    batch: Vec<Pending>,
    records: JoinSet<Result<Vec<Ticket>, RecordError>>,
    /// The messages of each task in `records`.
    batches: HashMap<tokio::task::Id, Batch>,
    /// Outbound messages in `batch` and `records`.
    recording: usize,
    /// Inbound (mobile-originated) messages in `records`.
    inbound_recording: usize,
    in_flight: HashMap<u32, InFlight>,
    outstanding: HashSet<u32>,
    /// By sequence number: the requests from the upstream the client has still to
    /// answer.
    upstream_requests: HashMap<u32, UpstreamRequest>,
    /// By sequence number: client requests other than messages with the upstream, and
    /// messages given up at upstream-timeout (their command_id, and since when).
    awaited: HashMap<u32, (u32, Instant)>,
    /// This session's share of the window gauge, as last reported.
    window_reported: i64,
    /// PDUs queued for each leg (see `flush`).
    client_out: Vec<u8>,
    up_out: Vec<u8>,
}

/// How a bound session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Unbound by either side (the response passed on): just close.
    Unbound,
    /// The client went away (or sent what cannot be read): the upstream gets an unbind.
    ClientGone,
    /// The upstream went away: the client gets an unbind.
    UpstreamGone(UpstreamLoss),
    /// No PDU from the client for inactivity-timeout: both get an unbind.
    Idle,
    /// relaylog is stopping: both get an unbind.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpstreamLoss {
    Closed,
    Malformed,
}

impl UpstreamLoss {
    fn error(self) -> SmppUpstreamError {
        match self {
            UpstreamLoss::Closed => SmppUpstreamError::Closed,
            UpstreamLoss::Malformed => SmppUpstreamError::Malformed,
        }
    }
}

impl Session<'_> {
    async fn run(&mut self, client: &mut PduReader, up: &mut PduReader, shutdown: &mut Shutdown) {
        let inactivity = self.l.settings.inactivity_timeout;
        // Checked on the tick (a second's precision), not a timer reset per read.
        let mut idle_until = Instant::now() + inactivity;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let end = loop {
            // The messages the last step read are recorded together, and what it made
            // ready goes out together, before any wait.
            self.record_batch();
            if let Some(end) = self.flush().await {
                break end;
            }
            let step = tokio::select! {
                biased;
                _ = shutdown.wait() => Some(End::Shutdown),
                // Ready once a second at most, and never starved by busy legs.
                _ = tick.tick() => {
                    if Instant::now() >= idle_until {
                        Some(End::Idle)
                    } else {
                        self.expire().await;
                        None
                    }
                }
                Some(done) = self.records.join_next_with_id(), if !self.records.is_empty() => {
                    let mut step = self.record_done(done).await;
                    // And every other commit already done.
                    while step.is_none()
                        && let Some(done) = self.records.try_join_next_with_id()
                    {
                        step = self.record_done(done).await;
                    }
                    step
                }
                pdu = up.next(), if self.inbound_room() => {
                    let mut step = self.upstream_read(pdu).await;
                    while step.is_none()
                        && self.inbound_room()
                        && let Some(pdu) = up.buffered()
                    {
                        step = self.upstream_read(pdu).await;
                    }
                    step
                }
                pdu = client.next(), if self.room() => {
                    idle_until = Instant::now() + inactivity;
                    let mut step = self.client_read(pdu).await;
                    while step.is_none()
                        && self.room()
                        && let Some(pdu) = client.buffered()
                    {
                        step = self.client_read(pdu).await;
                    }
                    step
                }
            };
            self.report_window();
            if let Some(end) = step {
                break end;
            }
        };
        self.end(end, up).await;
        self.report_window();
    }

    /// Room in the window for another message.
    fn room(&self) -> bool {
        self.recording + self.in_flight.len() < self.l.settings.window
    }

    /// Room for another inbound message being recorded (the upstream is not read
    /// while `window` of them are).
    fn inbound_room(&self) -> bool {
        self.inbound_recording < self.l.settings.window
    }

    /// A record task is done: its messages and what became of their records.
    fn take_batch(&mut self, done: Recorded) -> Option<(Batch, Result<Vec<Ticket>, RecordError>)> {
        let (id, result) = match done {
            Ok((id, result)) => (id, result),
            // Short of a bug a record task does not panic; its messages are refused.
            Err(e) => (e.id(), Err(RecordError::Internal)),
        };
        let batch = self.batches.remove(&id)?;
        Some((batch, result))
    }

    async fn record_done(&mut self, done: Recorded) -> Option<End> {
        let (batch, result) = self.take_batch(done)?;
        self.committed(batch, result).await
    }

    async fn upstream_read(&mut self, pdu: Result<BytesMut, ReadError>) -> Option<End> {
        match pdu {
            Ok(pdu) => self.upstream_pdu(pdu).await,
            Err(ReadError::Closed) => Some(End::UpstreamGone(UpstreamLoss::Closed)),
            Err(ReadError::Frame) => Some(End::UpstreamGone(UpstreamLoss::Malformed)),
        }
    }

    async fn client_read(&mut self, pdu: Result<BytesMut, ReadError>) -> Option<End> {
        match pdu {
            Ok(pdu) => self.client_pdu(pdu).await,
            Err(ReadError::Closed) => {
                self.client_alive = false;
                Some(End::ClientGone)
            }
            Err(ReadError::Frame) => {
                // The stream cannot be read on: the nack, then close.
                self.send_client(&nack(0, status::INVALID_CMD_LENGTH)).await;
                self.flush().await;
                self.client_alive = false;
                Some(End::ClientGone)
            }
        }
    }

    /// Keeps the listener's window gauge at the sum of its sessions' outstanding
    /// messages.
    fn report_window(&mut self) {
        let now = self.outstanding.len() as i64;
        self.l.metrics.window.inc_by(now - self.window_reported);
        self.window_reported = now;
    }

    /// Queues a PDU for the client while it is there (written by `flush`, together
    /// with what else is ready). `Some(ClientGone)` when it is not there.
    async fn send_client(&mut self, pdu: &[u8]) -> Option<End> {
        if self.client_alive {
            self.client_out.extend_from_slice(pdu);
            if self.client_out.len() >= MAX_OUT {
                return self.flush_client().await;
            }
        }
        (!self.client_alive).then_some(End::ClientGone)
    }

    /// Queues a PDU for the upstream while it is there (written by `flush`).
    async fn send_upstream(&mut self, pdu: &[u8]) -> Option<End> {
        if self.up_alive {
            self.up_out.extend_from_slice(pdu);
            if self.up_out.len() >= MAX_OUT {
                return self.flush_up().await;
            }
        }
        (!self.up_alive).then_some(End::UpstreamGone(UpstreamLoss::Closed))
    }

    /// Writes what is queued for each leg: one write per leg for everything that was
    /// ready at once. Each leg on its own: one that is gone does not hold the other.
    async fn flush(&mut self) -> Option<End> {
        let up = self.flush_up().await;
        let client = self.flush_client().await;
        up.or(client)
    }

    async fn flush_up(&mut self) -> Option<End> {
        if !self.up_out.is_empty() {
            if self.up_alive && !send(&mut self.uw, &self.up_out).await {
                self.up_alive = false;
            }
            self.up_out.clear();
        }
        (!self.up_alive).then_some(End::UpstreamGone(UpstreamLoss::Closed))
    }

    async fn flush_client(&mut self) -> Option<End> {
        if !self.client_out.is_empty() {
            if self.client_alive && !send(&mut self.cw, &self.client_out).await {
                self.client_alive = false;
            }
            self.client_out.clear();
        }
        (!self.client_alive).then_some(End::ClientGone)
    }

    /// relaylog's own refusal of a client request, logged under `reason`.
    async fn refuse(&mut self, h: &Header, code: u32, reason: &'static str) -> Option<End> {
        self.l
            .relay
            .log(Exit::Rejected(reason), code as u16, Instant::now());
        // Commands without a response PDU get a generic_nack.
        let has_resp = !matches!(
            h.id,
            id::GENERIC_NACK | id::OUTBIND | id::ALERT_NOTIFICATION
        );
        let reply = if id::known(h.id) && has_resp {
            answer(h, code)
        } else {
            nack(h.sequence, code)
        };
        self.send_client(&reply).await
    }

    /// A client PDU: recorded, answered, passed on or refused. `Some` ends the session.
    async fn client_pdu(&mut self, pdu: BytesMut) -> Option<End> {
        let h = Header::read(&pdu)?;
        self.l.metrics.pdu("client", h.id);
        if h.is_response() {
            // Only an answer to what the upstream asked passes.
            let answers = self
                .upstream_requests
                .get(&h.sequence)
                .is_some_and(|r| h.id == id::resp(r.command) || h.id == id::GENERIC_NACK);
            let request = if answers {
                self.upstream_requests.remove(&h.sequence)
            } else {
                None
            };
            let Some(request) = request else {
                self.l
                    .relay
                    .log(Exit::Rejected("unexpected_response"), 0, Instant::now());
                return None;
            };
            if let Some(ticket) = request.inbound {
                let outcome = outcome_of(h.id, h.status);
                let answer = Answer {
                    gateway_code: Some(h.status as i32),
                    ..Answer::default()
                };
                let code = h.status.min(u32::from(u16::MAX)) as u16;
                ticket
                    .outcome(Ok((outcome, answer)), request.at.elapsed(), code)
                    .await;
            }
            let end = self.send_upstream(&pdu).await;
            return end.or((h.id == id::resp(id::UNBIND)).then_some(End::Unbound));
        }
        if h.sequence == 0
            || h.sequence > 0x7FFF_FFFF
            || self.outstanding.contains(&h.sequence)
            || self.awaited.contains_key(&h.sequence)
        {
            // Outside SMPP's range, or the number of a message still on its way.
            return self
                .refuse(&h, status::SYSTEM_ERROR, "sequence_in_use")
                .await;
        }
        match h.id {
            id::SUBMIT_SM | id::SUBMIT_MULTI | id::DATA_SM => self.message(h, pdu).await,
            id::ENQUIRE_LINK => self.send_client(&answer(&h, status::OK)).await,
            id::BIND_RECEIVER | id::BIND_TRANSMITTER | id::BIND_TRANSCEIVER => {
                self.refuse(&h, status::ALREADY_BOUND, "already_bound")
                    .await
            }
            // Requests without a new message (replace_sm changes a message's content,
            // never its destination): passed on.
            id::QUERY_SM | id::CANCEL_SM | id::REPLACE_SM => {
                if self.awaited.len() >= MAX_AWAITED {
                    return self
                        .refuse(&h, status::THROTTLED, "too_many_requests")
                        .await;
                }
                self.awaited.insert(h.sequence, (h.id, Instant::now()));
                self.send_upstream(&pdu).await
            }
            id::UNBIND => {
                // Messages being recorded go first: nothing overtakes them.
                self.record_batch();
                while let Some(done) = self.records.join_next_with_id().await {
                    if let Some(end) = self.record_done(done).await {
                        return Some(end);
                    }
                }
                self.send_upstream(&pdu).await
            }
            // What only an SMSC sends: not taken from a client (a message in it would
            // go unrecorded).
            id::DELIVER_SM | id::OUTBIND | id::ALERT_NOTIFICATION => {
                self.refuse(&h, status::INVALID_BIND_STATUS, "smsc_only")
                    .await
            }
            _ => {
                self.refuse(&h, status::INVALID_CMD_ID, "unknown_command")
                    .await
            }
        }
    }

    /// The record of a message read from `message`: its identifiers (by their type of
    /// number), its SMPP details, and its recipients' keys when it has several.
    fn identify(
        &self,
        message: &Message<'_>,
        direction: Direction,
    ) -> Result<(Identified<'_>, SmppDetail, Box<[u64]>), u32> {
        let normalizer = &self.l.relay.normalizer;
        let mut recipients = Vec::with_capacity(message.dests.len());
        for dest in &message.dests {
            recipients.push(match dest {
                Dest::Sme(a) => {
                    address::identifier(normalizer, a).ok_or(status::INVALID_DEST_ADDR)?
                }
                Dest::List(name) => address::list(name),
            });
        }
        let keys: Box<[u64]> = if recipients.len() > 1 {
            recipients
                .iter()
                .map(|r| self.l.book.recipient_key(r))
                .collect()
        } else {
            Box::new([])
        };
        // Segment facts that cannot be believed are not recorded; the PDU passes.
        let part = segment(message.esm_class, message.content(), &message.tlvs)
            .ok()
            .flatten();
        let found = Identified {
            account: &self.account,
            peer: self.peer,
            originator: address::identifier(normalizer, &message.source),
            recipients,
            segments: part.map_or(1, |s| u16::from(s.total)),
        };
        let detail = SmppDetail {
            direction,
            registered_delivery: message.registered_delivery,
            part: part.map(|s| Part {
                reference: s.reference,
                number: s.part,
            }),
        };
        Ok((found, detail, keys))
    }

    /// A submit_sm, submit_multi or data_sm: its records are committed (in a task, so
    /// that a window commits together), then `committed` forwards it.
    async fn message(&mut self, h: Header, pdu: BytesMut) -> Option<End> {
        let message = match Message::read(h.id, &pdu[HEADER_LEN..]) {
            Ok(m) => m,
            Err(e) => return self.refuse(&h, e.status, "bad_pdu").await,
        };
        let (found, detail, recipients) = match self.identify(&message, Direction::MobileTerminated)
        {
            Ok(identified) => identified,
            Err(code) => return self.refuse(&h, code, "bad_pdu").await,
        };
        let submission = self.l.relay.submission_of(found, Some(detail));
        drop(message);
        self.outstanding.insert(h.sequence);
        self.recording += 1;
        // A batch is of one partition, and of a size the writer's queue always has
        // room for.
        let recorder = &self.l.relay.recorder;
        if self.batch.len() >= recorder.batch_cap()
            || self
                .batch
                .first()
                .is_some_and(|first| !recorder.same_partition(first.submission.at, submission.at))
        {
            self.record_batch();
        }
        let wants_receipt = submission
            .smpp
            .is_some_and(|d| d.registered_delivery & RECEIPT_REQUESTED != 0);
        self.batch.push(Pending {
            submission,
            item: Item {
                h,
                pdu,
                recipients,
                wants_receipt,
            },
        });
        None
    }

    /// Hands the messages read so far to a task that records them together.
    fn record_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let (submissions, items) = self.batch.drain(..).map(|p| (p.submission, p.item)).unzip();
        self.spawn_record(false, submissions, items);
    }

    fn spawn_record(&mut self, inbound: bool, submissions: Vec<Submission>, items: Vec<Item>) {
        let relay = self.l.relay.clone();
        let started = Instant::now();
        let task = self
            .records
            .spawn(async move { relay.record_many(&submissions, started).await });
        self.batches.insert(
            task.id(),
            Batch {
                inbound,
                started,
                items,
            },
        );
    }

    /// A batch's commit is done: each message goes upstream (or the client hears
    /// `ESME_RTHROTTLED`), an inbound one goes to the client (or the upstream hears
    /// `ESME_RX_T_APPN`). Every message of the batch is settled, whatever ends.
    async fn committed(
        &mut self,
        batch: Batch,
        result: Result<Vec<Ticket>, RecordError>,
    ) -> Option<End> {
        let Batch {
            inbound,
            started,
            items,
        } = batch;
        let busy = if inbound {
            self.inbound_recording -= items.len();
            TEMPORARY_APP_ERROR
        } else {
            self.recording -= items.len();
            for item in &items {
                self.outstanding.remove(&item.h.sequence);
            }
            status::THROTTLED
        };
        let tickets = match result {
            Ok(tickets) => tickets,
            Err(e) => {
                let mut end = None;
                for item in &items {
                    self.l.relay.log(Exit::FailClosed(&e), busy as u16, started);
                    end = end.or(self.busy(inbound, &item.h, busy).await);
                }
                return end;
            }
        };
        let mut end = None;
        for (item, ticket) in items.into_iter().zip(tickets) {
            let step = self.forward(inbound, item, ticket, busy).await;
            end = end.or(step);
        }
        end
    }

    /// A recorded message on its way: upstream (outbound) or to the client (inbound).
    async fn forward(
        &mut self,
        inbound: bool,
        item: Item,
        ticket: Ticket,
        busy: u32,
    ) -> Option<End> {
        let Item {
            h,
            pdu,
            recipients,
            wants_receipt,
        } = item;
        if let Some(why) = ticket.not_now(inbound && !self.client_alive) {
            ticket.not_forwarded(why, busy as u16).await;
            return self.busy(inbound, &h, busy).await;
        }
        if inbound {
            self.upstream_request(&h, Some(ticket)).await;
            return self.send_client(&pdu).await;
        }
        // In flight before it is queued: whatever becomes of the write, `end` settles
        // it (drained, or failed with the upstream).
        self.outstanding.insert(h.sequence);
        self.in_flight.insert(
            h.sequence,
            InFlight {
                ticket,
                command: h.id,
                forwarded: Instant::now(),
                recipients,
                wants_receipt,
            },
        );
        self.send_upstream(&pdu).await
    }

    /// relaylog's "not now" to a message it could not record: to the client for its
    /// own, to the upstream for an inbound one.
    async fn busy(&mut self, inbound: bool, h: &Header, code: u32) -> Option<End> {
        if inbound {
            self.send_upstream(&answer(h, code)).await
        } else {
            self.send_client(&answer(h, code)).await
        }
    }

    /// A request from the upstream for the client to answer (alert_notification and
    /// outbind have no answer): kept, so that only the client's answer to it passes.
    async fn upstream_request(&mut self, h: &Header, inbound: Option<Ticket>) {
        if matches!(h.id, id::ALERT_NOTIFICATION | id::OUTBIND) {
            return;
        }
        if self.upstream_requests.len() >= MAX_UPSTREAM_REQUESTS
            && !self.upstream_requests.contains_key(&h.sequence)
        {
            // The oldest unanswered one is forgotten (its late answer dropped).
            let oldest = self
                .upstream_requests
                .iter()
                .min_by_key(|(_, r)| r.at)
                .map(|(seq, _)| *seq);
            if let Some(seq) = oldest
                && let Some(old) = self.upstream_requests.remove(&seq)
            {
                settle_unanswered(old, &SmppUpstreamError::Timeout).await;
            }
        }
        let request = UpstreamRequest {
            command: h.id,
            at: Instant::now(),
            inbound,
        };
        if let Some(old) = self.upstream_requests.insert(h.sequence, request) {
            // The upstream reused a number still unanswered: the old request can no
            // longer be told apart.
            settle_unanswered(old, &SmppUpstreamError::Malformed).await;
        }
    }

    /// An upstream PDU: an outcome when it answers a message, a receipt attached, an
    /// inbound message recorded, then passed on (enquire_link answered here). `Some`
    /// ends the session.
    async fn upstream_pdu(&mut self, pdu: BytesMut) -> Option<End> {
        let h = Header::read(&pdu)?;
        self.l.metrics.pdu("upstream", h.id);
        match h.id {
            id::ENQUIRE_LINK => return self.send_upstream(&answer(&h, status::OK)).await,
            id::DELIVER_SM | id::DATA_SM => return self.delivery(h, pdu).await,
            _ => {}
        }
        if h.is_response() {
            let answers_message = self
                .in_flight
                .get(&h.sequence)
                .is_some_and(|f| h.id == id::resp(f.command) || h.id == id::GENERIC_NACK);
            if answers_message && let Some(f) = self.in_flight.remove(&h.sequence) {
                self.outstanding.remove(&h.sequence);
                self.outcome(f, &h, &pdu).await;
            } else if self
                .awaited
                .get(&h.sequence)
                .is_some_and(|(cmd, _)| h.id == id::resp(*cmd) || h.id == id::GENERIC_NACK)
            {
                self.awaited.remove(&h.sequence);
            }
        } else {
            self.upstream_request(&h, None).await;
        }
        if let Some(end) = self.send_client(&pdu).await {
            return Some(end);
        }
        (h.id == id::resp(id::UNBIND)).then_some(End::Unbound)
    }

    /// A deliver_sm or data_sm from the upstream: a receipt is attached to its message
    /// and passed on; anything else is a mobile-originated message, recorded before it
    /// goes to the client. What cannot be read is not passed on (it could not be
    /// recorded): the upstream hears why.
    async fn delivery(&mut self, h: Header, pdu: BytesMut) -> Option<End> {
        let message = match Message::read(h.id, &pdu[HEADER_LEN..]) {
            Ok(m) => m,
            Err(e) => {
                self.l.relay.log(
                    Exit::Rejected("bad_pdu_upstream"),
                    e.status as u16,
                    Instant::now(),
                );
                return self.send_upstream(&answer(&h, e.status)).await;
            }
        };
        if message.is_receipt() {
            self.receipt(&message).await;
            drop(message);
            self.upstream_request(&h, None).await;
            return self.send_client(&pdu).await;
        }
        let identified = self.identify(&message, Direction::MobileOriginated);
        drop(message);
        let (found, detail, _) = match identified {
            Ok(identified) => identified,
            Err(code) => {
                self.l.relay.log(
                    Exit::Rejected("bad_pdu_upstream"),
                    code as u16,
                    Instant::now(),
                );
                return self.send_upstream(&answer(&h, code)).await;
            }
        };
        let submission = self.l.relay.submission_of(found, Some(detail));
        self.inbound_recording += 1;
        let item = Item {
            h,
            pdu,
            recipients: Box::new([]),
            wants_receipt: false,
        };
        self.spawn_record(true, vec![submission], vec![item]);
        None
    }

    /// A delivery receipt: attached to its message if the book knows its id (or
    /// once it does), its `text:` never read.
    async fn receipt(&mut self, message: &Message<'_>) {
        let metrics = &self.l.metrics;
        let Some(r) = receipt(message.content(), &message.tlvs) else {
            metrics.receipts_unmatched.inc();
            return;
        };
        let metrics = &self.l.metrics;
        let sender = address::identifier(&self.l.relay.normalizer, &message.source);
        let facts = crate::record::Receipt {
            state: r.stat,
            error: r.err,
            done: r.done,
        };
        match self
            .l
            .book
            .receipt(&self.account, &r.id, facts, sender.as_ref())
        {
            Receipted::Attached(to, facts) => Self::attach(self.l, to, facts).await,
            Receipted::Waiting => {}
            Receipted::Unknown => {
                metrics.receipts_unmatched.inc();
            }
        }
    }

    /// Records a receipt's facts as an event of its message.
    async fn attach(l: &SmppListener, to: Attached, facts: crate::record::Receipt) {
        let event = OutcomeEvent {
            receipt: Some(facts),
            ordinal: to.ordinal,
            ..event(l, to.submission, to.submitted_at, Outcome::Receipt)
        };
        match l.relay.event(&event).await {
            Ok(()) => {
                l.metrics.receipts_matched.inc();
            }
            Err(e) => {
                l.metrics.receipts_unrecorded.inc();
                tracing::warn!(
                    listener = l.relay.name.as_str(), reason = e.reason(), error = %e,
                    submission = to.submission.0, "delivery receipt not recorded"
                );
            }
        };
    }

    /// A message's outcome from its response; its message id into the book; each
    /// unsuccess_sme entry its destination's own event.
    async fn outcome(&mut self, f: InFlight, h: &Header, pdu: &[u8]) {
        let resp = SubmitResp::read(h.id, &pdu[HEADER_LEN..]).ok();
        let outcome = outcome_of(h.id, h.status);
        let message_id = resp
            .as_ref()
            .filter(|r| !r.message_id.is_empty())
            .map(|r| String::from_utf8_lossy(r.message_id).into_owned());
        let answer = Answer {
            gateway_code: Some(h.status as i32),
            message_id: message_id.clone(),
            ..Answer::default()
        };
        let (submission, submitted_at) = f.ticket.submission();
        let code = h.status.min(u32::from(u16::MAX)) as u16;
        f.ticket
            .outcome(Ok((outcome, answer)), f.forwarded.elapsed(), code)
            .await;
        if let Some(resp) = &resp {
            for (addr, error) in &resp.unsuccess {
                let ordinal = address::identifier(&self.l.relay.normalizer, addr)
                    .map(|id| self.l.book.recipient_key(&id))
                    .and_then(|key| f.recipients.iter().position(|k| *k == key));
                let event = OutcomeEvent {
                    gateway_code: Some(*error as i32),
                    // One destination of one: the submission's own.
                    ordinal: ordinal.map(|i| i as u32),
                    ..event(
                        self.l,
                        submission,
                        submitted_at,
                        outcome_of(id::SUBMIT_MULTI, *error),
                    )
                };
                if ordinal.is_none() && f.recipients.len() > 1 {
                    // Not one of the message's destinations: nothing to attach it to.
                    continue;
                }
                if let Err(e) = self.l.relay.event(&event).await {
                    tracing::warn!(
                        listener = self.l.relay.name.as_str(), reason = e.reason(), error = %e,
                        submission = submission.0, "unsuccess_sme entry not recorded"
                    );
                }
            }
        }
        if outcome == Outcome::Accepted
            && f.wants_receipt
            && let Some(message_id) = message_id
        {
            let early = self.l.book.sent(
                &self.account,
                &message_id,
                submission,
                submitted_at,
                f.recipients,
            );
            for (to, facts) in early {
                Self::attach(self.l, to, facts).await;
            }
        }
    }

    /// Messages the upstream has not answered within upstream-timeout: `failed`
    /// (a late response still passes to the client), and their window places free.
    /// Inbound messages the client has not answered within twice that: `failed`.
    async fn expire(&mut self) {
        let limit = self.l.upstream.timeout;
        self.awaited.retain(|_, (_, at)| at.elapsed() < 2 * limit);
        let unanswered: Vec<u32> = self
            .upstream_requests
            .iter()
            .filter(|(_, r)| r.at.elapsed() >= 2 * limit)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in unanswered {
            if let Some(r) = self.upstream_requests.remove(&seq) {
                settle_unanswered(r, &SmppUpstreamError::Timeout).await;
            }
        }
        let gave_up = self.l.book.expire();
        self.l.metrics.receipts_unmatched.inc_by(gave_up as u64);
        let late: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.forwarded.elapsed() >= limit)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in late {
            if let Some(f) = self.in_flight.remove(&seq) {
                self.outstanding.remove(&seq);
                // Its number stays in use until a late answer (or twice the timeout),
                // so that the answer cannot settle another message.
                self.awaited.insert(seq, (f.command, Instant::now()));
                let waited = f.forwarded.elapsed();
                f.ticket
                    .outcome(
                        Err(&SmppUpstreamError::Timeout),
                        waited,
                        status::SYSTEM_ERROR as u16,
                    )
                    .await;
            }
        }
    }

    async fn end(&mut self, end: End, up: &mut PduReader) {
        // What was queued goes first (a leg that is gone fails it at once).
        let _ = self.flush().await;
        // Messages whose records were being committed never went on.
        let why = if end == End::Shutdown {
            NotForwarded::Shutdown
        } else {
            NotForwarded::ClientGone
        };
        self.record_batch();
        while let Some(done) = self.records.join_next_with_id().await {
            let Some((done, result)) = self.take_batch(done) else {
                continue;
            };
            let code = if done.inbound {
                TEMPORARY_APP_ERROR
            } else {
                status::THROTTLED
            };
            match result {
                Ok(tickets) => {
                    for ticket in tickets {
                        ticket.not_forwarded(why, code as u16).await;
                    }
                }
                Err(e) => {
                    for _ in &done.items {
                        self.l
                            .relay
                            .log(Exit::FailClosed(&e), code as u16, done.started);
                    }
                }
            }
            for item in &done.items {
                self.busy(done.inbound, &item.h, code).await;
            }
        }
        self.recording = 0;
        self.inbound_recording = 0;
        let unbind = Writer::new(id::UNBIND, 0, OWN_SEQUENCE).finish();
        if matches!(end, End::ClientGone | End::Idle | End::Shutdown) {
            // What is with the upstream may still be answered: its outcomes, within
            // a few seconds in all.
            let until =
                tokio::time::Instant::now() + self.l.upstream.timeout.min(Duration::from_secs(5));
            // Only the read is under the deadline: handling a PDU (an outcome, a
            // queued write) is never cut off half-way.
            while !self.in_flight.is_empty() {
                match tokio::time::timeout_at(until, up.next()).await {
                    Ok(Ok(pdu)) => {
                        let _ = self.upstream_pdu(pdu).await;
                    }
                    _ => break,
                }
            }
            self.up_out.extend_from_slice(&unbind);
        }
        if matches!(end, End::UpstreamGone(_) | End::Idle | End::Shutdown) {
            self.send_client(&unbind).await;
        }
        let lost = match end {
            End::UpstreamGone(loss) => loss.error(),
            _ => SmppUpstreamError::Closed,
        };
        for (_, f) in self.in_flight.drain() {
            f.ticket
                .outcome(
                    Err(&lost),
                    f.forwarded.elapsed(),
                    status::SYSTEM_ERROR as u16,
                )
                .await;
        }
        // Inbound messages the client never answered.
        for (_, r) in self.upstream_requests.drain() {
            settle_unanswered(r, &SmppUpstreamError::Closed).await;
        }
        self.outstanding.clear();
        let _ = self.flush().await;
        let _ = shutdown_write(&mut self.cw).await;
        let _ = shutdown_write(&mut self.uw).await;
    }
}

/// An inbound message the client did not answer: `failed`.
async fn settle_unanswered(r: UpstreamRequest, why: &SmppUpstreamError) {
    if let Some(ticket) = r.inbound {
        ticket
            .outcome(Err(why), r.at.elapsed(), TEMPORARY_APP_ERROR as u16)
            .await;
    }
}

/// An event of a recorded submission, now.
fn event(
    l: &SmppListener,
    submission: crate::record::SubmissionId,
    submitted_at: i64,
    outcome: Outcome,
) -> OutcomeEvent {
    OutcomeEvent::new(submission, submitted_at, l.relay.recorder.now(), outcome)
}

async fn shutdown_write<W: AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    tokio::time::timeout(Duration::from_secs(1), w.shutdown())
        .await
        .unwrap_or(Ok(()))
}
