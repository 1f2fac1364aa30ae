//! One SMPP session: the client's bind opens an upstream session with the same bind
//! PDU, whose bind_resp goes back unchanged (`bind`); after it, PDUs pass byte for
//! byte in both directions with their sequence numbers, many outstanding at once (up
//! to `window`).
//!
//! - submit_sm, submit_multi and data_sm (`client`) are recorded before they go
//!   upstream: the messages read in one step are committed together (`record`), and
//!   only then written upstream; if they cannot be, the client gets `ESME_RTHROTTLED`
//!   and nothing goes upstream.
//! - The upstream's response is the outcome (`upstream`); a submit_multi_resp's
//!   unsuccess_sme entries are each their destination's own. The message id goes into
//!   the listener's [`ReceiptBook`](super::receipts::ReceiptBook), so that a delivery
//!   receipt (on any session of the account) is attached to its message.
//! - A mobile-originated deliver_sm or data_sm is recorded (inbound) before it goes to
//!   the client, whose response is its outcome.
//! - enquire_link is answered on each leg by relaylog itself. An unbind passes
//!   through; a leg that goes away, shutdown or inactivity ends the other with an
//!   unbind (`Session::end`).

mod bind;
mod client;
mod record;
mod upstream;
mod wire;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::WriteHalf;
use tokio::task::JoinSet;

use crate::egress::smpp::SmppUpstreamError;
use crate::net::Io;
use crate::relay::Ticket;
use crate::shutdown::Shutdown;
use crate::smpp::status;
use crate::store::RecordError;

use super::SmppListener;
use record::{Batch, Pending};
use upstream::{InFlight, UpstreamRequest};
use wire::{MAX_OUT, PduReader, ReadError, send, shutdown_write, unbind};

/// Serves one client until unbind, either leg going away, inactivity or shutdown.
pub async fn serve(l: &SmppListener, io: Box<dyn Io>, peer: SocketAddr, mut shutdown: Shutdown) {
    let (r, cw) = tokio::io::split(io);
    let mut client = PduReader::new(r, l.settings.max_pdu_bytes);
    let Some(bound) = bind::bind(l, &mut client, cw, &mut shutdown).await else {
        return;
    };
    let bind::Bound {
        account,
        cw,
        mut up,
        uw,
        slot,
    } = bound;
    let mut s = Session {
        l,
        peer,
        account,
        cw,
        uw,
        client_alive: true,
        up_alive: true,
        ending: None,
        unsent: Vec::new(),
        records: JoinSet::new(),
        committing: HashMap::new(),
        inbound_recording: 0,
        inbound_waiting: 0,
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

/// One bound session. Where a message is, from the client's side:
///
/// 1. `unsent`: read in this step, to be recorded with the others read with it;
/// 2. `records` (its task) and `committing` (its PDU): being committed;
/// 3. `in_flight`: with the upstream, until its response (or upstream-timeout).
///
/// What holds between PDUs:
///
/// - `outstanding` is the sequence numbers of the messages in 1–3: no other client
///   request may use one, so that a response (or a generic_nack the client could
///   provoke) finds only its own message. The window is its size.
/// - `awaited` is the other client requests with the upstream (query_sm, cancel_sm,
///   replace_sm, unbind) and messages given up at upstream-timeout: their numbers are
///   in use too, until their response (or twice upstream-timeout).
/// - A client response passes only if it answers a request the upstream sent
///   (`upstream_requests`): the upstream never sees one it could nack.
/// - Inbound (mobile-originated) messages are in `records`/`committing` while being
///   committed (`inbound_recording` of them), then in `upstream_requests` until the
///   client answers (`inbound_waiting`); the upstream is not read while `window` of
///   them are in either, so that they cannot fill the store's queue.
/// - Order among messages is not kept (each goes on when its records are committed).
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
    /// Set by [`Session::end`]: recorded messages are settled, not forwarded, and no
    /// new inbound message is taken.
    ending: Option<End>,
    unsent: Vec<Pending>,
    records: JoinSet<Result<Vec<Ticket>, RecordError>>,
    /// The messages of each task in `records`, by the task's id.
    committing: HashMap<tokio::task::Id, Batch>,
    inbound_recording: usize,
    inbound_waiting: usize,
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

/// A PDU from one leg or the other.
enum Read {
    Client(Result<BytesMut, ReadError>),
    Upstream(Result<BytesMut, ReadError>),
}

/// The next PDU of whichever leg has one, chosen at random when both do (neither
/// leg's traffic can starve the other), from the legs that may be read.
async fn either(
    client: &mut PduReader,
    up: &mut PduReader,
    read_client: bool,
    read_up: bool,
) -> Read {
    tokio::select! {
        pdu = client.next(), if read_client => Read::Client(pdu),
        pdu = up.next(), if read_up => Read::Upstream(pdu),
        else => std::future::pending().await,
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
            self.record_unsent();
            if let Some(end) = self.flush().await {
                break end;
            }
            let (read_client, read_up) = (self.room(), self.inbound_room());
            let step = tokio::select! {
                biased;
                _ = shutdown.wait() => Some(End::Shutdown),
                // Ready once a second at most, and never starved by busy legs.
                _ = tick.tick() => {
                    if Instant::now() >= idle_until {
                        self.l.relay.metrics.cut(&self.l.relay.name, "inactivity_timeout");
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
                read = either(client, up, read_client, read_up) => match read {
                    Read::Upstream(pdu) => {
                        let mut step = self.upstream_read(pdu).await;
                        // And every other PDU already read.
                        while step.is_none()
                            && self.inbound_room()
                            && let Some(pdu) = up.buffered()
                        {
                            step = self.upstream_read(pdu).await;
                        }
                        step
                    }
                    Read::Client(pdu) => {
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
                },
            };
            self.report_window();
            if let Some(end) = step {
                break end;
            }
        };
        self.end(end, up).await;
        self.report_window();
    }

    /// Room in the window for another message from the client.
    fn room(&self) -> bool {
        self.outstanding.len() < self.l.settings.window
    }

    /// Room for another inbound message (the upstream is not read while `window` of
    /// them are being recorded or wait for the client's answer).
    fn inbound_room(&self) -> bool {
        self.inbound_recording + self.inbound_waiting < self.l.settings.window
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

    /// Once a second: messages the upstream has not answered within upstream-timeout
    /// are `failed` (a late response still passes to the client) and their window
    /// places free; inbound messages the client has not answered within twice that
    /// are `failed`; receipts that waited too long for their message id give up.
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
            if let Some(r) = self.take_upstream_request(seq) {
                upstream::settle_unanswered(r, &SmppUpstreamError::Timeout).await;
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

    /// Ends both legs: messages not yet recorded are refused, those being recorded
    /// are settled (not forwarded) and refused, what is with the upstream gets its
    /// outcome if it answers within a few seconds, then the unbinds.
    async fn end(&mut self, end: End, up: &mut PduReader) {
        self.ending = Some(end);
        // What was queued goes first (a leg that is gone fails it at once).
        let _ = self.flush().await;
        self.refuse_unsent().await;
        while let Some(done) = self.records.join_next_with_id().await {
            self.record_done(done).await;
        }
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
            self.up_out.extend_from_slice(&unbind());
        }
        if matches!(end, End::UpstreamGone(_) | End::Idle | End::Shutdown) {
            self.send_client(&unbind()).await;
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
        let unanswered: Vec<u32> = self.upstream_requests.keys().copied().collect();
        for seq in unanswered {
            if let Some(r) = self.take_upstream_request(seq) {
                upstream::settle_unanswered(r, &lost).await;
            }
        }
        self.outstanding.clear();
        let _ = self.flush().await;
        let _ = shutdown_write(&mut self.cw).await;
        let _ = shutdown_write(&mut self.uw).await;
    }
}
