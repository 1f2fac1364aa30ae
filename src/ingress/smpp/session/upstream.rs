//! What the upstream sends: responses (a message's outcome, its message id into the
//! receipt book, unsuccess_sme per destination), delivery receipts (attached to their
//! message), mobile-originated messages (recorded before the client sees them), and
//! requests for the client to answer.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::wire::{ReadError, answer};
use super::{End, Session, UpstreamLoss};
use crate::egress::smpp::SmppUpstreamError;
use crate::ingress::smpp::SmppListener;
use crate::ingress::smpp::address;
use crate::ingress::smpp::receipts::{Attached, Match};
use crate::record::{Direction, Outcome, OutcomeEvent, Receipt, SubmissionId};
use crate::relay::{Answer, Exit, Ticket};
use crate::smpp::{HEADER_LEN, Header, Message, SubmitResp, id, is_receipt, receipt, status};

/// A message with the upstream, waiting for its response.
pub(super) struct InFlight {
    pub ticket: Ticket,
    /// submit_sm, submit_multi or data_sm: only its response (or a generic_nack)
    /// is its outcome.
    pub command: u32,
    pub forwarded: Instant,
    /// A message's recipients' keys
    /// ([`ReceiptBook::recipient_key`](crate::ingress::smpp::receipts::ReceiptBook::recipient_key)),
    /// in ordinal order, when it has several: what tells which one an unsuccess_sme
    /// entry or a receipt is about.
    pub recipients: Box<[u64]>,
    /// It asked for a receipt (registered_delivery): its message id goes in the book.
    pub wants_receipt: bool,
}

/// A request from the upstream the client is to answer.
pub(super) struct UpstreamRequest {
    pub command: u32,
    pub at: Instant,
    /// A mobile-originated message: the client's answer is its outcome.
    pub inbound: Option<Ticket>,
}

/// Requests from the upstream (deliver_sm, unbind…) the client has not answered yet
/// that relaylog keeps track of (the oldest is forgotten beyond this).
const MAX_UPSTREAM_REQUESTS: usize = 10_000;

/// Client requests other than messages (query_sm…) with the upstream at once.
pub(super) const MAX_AWAITED: usize = 10_000;

/// command_status values a proxy maps to "failed" (temporary) rather than "rejected".
const TEMPORARY: [u32; 4] = [
    status::SYSTEM_ERROR,
    status::MESSAGE_QUEUE_FULL,
    status::THROTTLED,
    status::TEMPORARY_APP_ERROR,
];

/// The outcome a command_status says.
fn outcome_of(status: u32) -> Outcome {
    match status {
        status::OK => Outcome::Accepted,
        s if TEMPORARY.contains(&s) => Outcome::Failed,
        _ => Outcome::Rejected,
    }
}

/// A response's outcome: its status (a generic_nack is never an acceptance).
fn answered(h: &Header) -> Outcome {
    if h.id == id::GENERIC_NACK && h.status == status::OK {
        Outcome::Rejected
    } else {
        outcome_of(h.status)
    }
}

/// Settles a message with the response `h` that answered it after `took`.
pub(super) async fn settle(ticket: Ticket, h: &Header, took: Duration) {
    settle_with(ticket, h, took, None).await;
}

async fn settle_with(ticket: Ticket, h: &Header, took: Duration, message_id: Option<String>) {
    let answer = Answer {
        gateway_code: Some(h.status as i32),
        message_id,
        ..Answer::default()
    };
    let code = h.status.min(u32::from(u16::MAX)) as u16;
    ticket.outcome(Ok((answered(h), answer)), took, code).await;
}

/// An inbound message the client did not answer: `failed`.
pub(super) async fn settle_unanswered(r: UpstreamRequest, why: &SmppUpstreamError) {
    if let Some(ticket) = r.inbound {
        ticket
            .outcome(Err(why), r.at.elapsed(), status::TEMPORARY_APP_ERROR as u16)
            .await;
    }
}

/// An event of a recorded submission, now.
fn event(
    l: &SmppListener,
    submission: SubmissionId,
    submitted_at: i64,
    outcome: Outcome,
) -> OutcomeEvent {
    OutcomeEvent::new(submission, submitted_at, l.relay.recorder.now(), outcome)
}

/// Records a receipt's facts as an event of its message.
async fn attach(l: &SmppListener, to: Attached, facts: Receipt) {
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
            tracing::warn!(
                listener = l.relay.name.as_str(), reason = e.reason(), error = %e,
                submission = to.submission.0, "delivery receipt not recorded"
            );
            l.metrics.receipts_unrecorded.inc();
        }
    }
}

impl Session<'_> {
    pub(super) async fn upstream_read(&mut self, pdu: Result<BytesMut, ReadError>) -> Option<End> {
        match pdu {
            Ok(pdu) => self.upstream_pdu(pdu).await,
            Err(ReadError::Closed) => Some(End::UpstreamGone(UpstreamLoss::Closed)),
            Err(ReadError::Frame) => Some(End::UpstreamGone(UpstreamLoss::Malformed)),
        }
    }

    /// An upstream PDU: an outcome when it answers a message, a receipt attached, an
    /// inbound message recorded, then passed on (enquire_link answered here). `Some`
    /// ends the session.
    pub(super) async fn upstream_pdu(&mut self, pdu: BytesMut) -> Option<End> {
        let h = Header::read(&pdu)?;
        self.l.metrics.pdu(true, h.id);
        match h.id {
            id::ENQUIRE_LINK => return self.send_upstream(&answer(&h, status::OK)).await,
            id::DELIVER_SM | id::DATA_SM => return self.delivery(h, pdu).await,
            // What only an ESME sends: a message in it would reach the client
            // unrecorded.
            id::SUBMIT_SM
            | id::SUBMIT_MULTI
            | id::QUERY_SM
            | id::CANCEL_SM
            | id::REPLACE_SM
            | id::BIND_RECEIVER
            | id::BIND_TRANSMITTER
            | id::BIND_TRANSCEIVER => {
                self.l.relay.log(
                    Exit::Rejected("esme_only_from_upstream"),
                    status::INVALID_BIND_STATUS as u16,
                    Instant::now(),
                );
                return self
                    .send_upstream(&answer(&h, status::INVALID_BIND_STATUS))
                    .await;
            }
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
    /// goes to the client. One that cannot be read (and so not recorded), or that comes
    /// while the session ends, is not passed on: the upstream hears `ESME_RX_T_APPN`
    /// and sends it again later.
    async fn delivery(&mut self, h: Header, pdu: BytesMut) -> Option<End> {
        let body = &pdu[HEADER_LEN..];
        if Message::esm_class_of(h.id, body).is_some_and(is_receipt) {
            self.receipt(h.id, body).await;
            self.upstream_request(&h, None).await;
            return self.send_client(&pdu).await;
        }
        let not_now = |reason| {
            self.l.relay.log(
                Exit::Rejected(reason),
                status::TEMPORARY_APP_ERROR as u16,
                Instant::now(),
            );
            answer(&h, status::TEMPORARY_APP_ERROR)
        };
        if self.ending.is_some() {
            let reply = not_now("session_ending");
            return self.send_upstream(&reply).await;
        }
        let identified = Message::read(h.id, body)
            .map_err(|e| e.status)
            .and_then(|m| {
                self.identify(&m, Direction::MobileOriginated)
                    .map(|(found, detail, _)| self.l.relay.submission_of(found, Some(detail)))
            });
        let submission = match identified {
            Ok(submission) => submission,
            Err(_) => {
                let reply = not_now("bad_pdu_upstream");
                return self.send_upstream(&reply).await;
            }
        };
        let item = super::record::Item {
            h,
            pdu,
            recipients: Box::new([]),
            wants_receipt: false,
        };
        self.spawn_record(true, vec![submission], vec![item]);
        None
    }

    /// A delivery receipt: attached to its message if the book knows its id (or once
    /// it does), its `text:` never read. One that cannot be read is unmatched.
    async fn receipt(&mut self, command: u32, body: &[u8]) {
        let metrics = &self.l.metrics;
        let Ok(message) = Message::read(command, body) else {
            metrics.receipts_unmatched.inc();
            return;
        };
        let Some(r) = receipt(message.content(), &message.tlvs) else {
            metrics.receipts_unmatched.inc();
            return;
        };
        let sender = address::identifier(&self.l.relay.normalizer, &message.source);
        let facts = Receipt {
            state: r.stat,
            error: r.err,
            done: r.done,
        };
        match self
            .l
            .book
            .receipt(&self.account, &r.id, facts, sender.as_ref())
        {
            Match::Attached(to, facts) => attach(self.l, to, facts).await,
            Match::Waiting { replaced } => {
                if replaced {
                    metrics.receipts_unmatched.inc();
                }
            }
            Match::Unknown => {
                metrics.receipts_unmatched.inc();
            }
        }
    }

    /// A request from the upstream for the client to answer (alert_notification and
    /// outbind have no answer): kept, so that only the client's answer to it passes.
    pub(super) async fn upstream_request(&mut self, h: &Header, inbound: Option<Ticket>) {
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
                && let Some(old) = self.take_upstream_request(seq)
            {
                settle_unanswered(old, &SmppUpstreamError::Timeout).await;
            }
        }
        if let Some(old) = self.take_upstream_request(h.sequence) {
            // The upstream reused a number still unanswered: the old request can no
            // longer be told apart.
            settle_unanswered(old, &SmppUpstreamError::Malformed).await;
        }
        if inbound.is_some() {
            self.inbound_waiting += 1;
        }
        let request = UpstreamRequest {
            command: h.id,
            at: Instant::now(),
            inbound,
        };
        self.upstream_requests.insert(h.sequence, request);
    }

    /// Takes a request from `upstream_requests`, keeping `inbound_waiting` with it.
    pub(super) fn take_upstream_request(&mut self, sequence: u32) -> Option<UpstreamRequest> {
        let request = self.upstream_requests.remove(&sequence)?;
        if request.inbound.is_some() {
            self.inbound_waiting -= 1;
        }
        Some(request)
    }

    /// A message's outcome from its response; its message id into the book; each
    /// unsuccess_sme entry its destination's own event.
    async fn outcome(&mut self, f: InFlight, h: &Header, pdu: &[u8]) {
        let resp = SubmitResp::read(h.id, &pdu[HEADER_LEN..]).ok();
        let message_id = resp
            .as_ref()
            .filter(|r| !r.message_id.is_empty())
            .map(|r| String::from_utf8_lossy(r.message_id).into_owned());
        let (submission, submitted_at) = f.ticket.submission();
        settle_with(f.ticket, h, f.forwarded.elapsed(), message_id.clone()).await;
        if let Some(resp) = &resp {
            self.unsuccessful(&resp.unsuccess, &f.recipients, submission, submitted_at)
                .await;
        }
        if answered(h) == Outcome::Accepted
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
            match early {
                Some((Some(to), facts)) => attach(self.l, to, facts).await,
                Some((None, _)) => {
                    self.l.metrics.receipts_unmatched.inc();
                }
                None => {}
            }
        }
    }

    /// unsuccess_sme entries: each its destination's own outcome (once per
    /// destination; an address that is none of them is not recorded).
    async fn unsuccessful(
        &mut self,
        entries: &[(crate::smpp::Address<'_>, u32)],
        recipients: &[u64],
        submission: SubmissionId,
        submitted_at: i64,
    ) {
        let mut seen = std::collections::HashSet::new();
        for (addr, error) in entries {
            let ordinal = if recipients.is_empty() {
                // One destination: the submission's own.
                None
            } else {
                let key = address::identifier(&self.l.relay.normalizer, addr)
                    .map(|id| self.l.book.recipient_key(&id));
                match key.and_then(|key| recipients.iter().position(|k| *k == key)) {
                    Some(i) => Some(i as u32),
                    None => continue,
                }
            };
            if !seen.insert(ordinal) {
                continue;
            }
            let event = OutcomeEvent {
                gateway_code: Some(*error as i32),
                ordinal,
                ..event(self.l, submission, submitted_at, outcome_of(*error))
            };
            if let Err(e) = self.l.relay.event(&event).await {
                tracing::warn!(
                    listener = self.l.relay.name.as_str(), reason = e.reason(), error = %e,
                    submission = submission.0, "unsuccess_sme entry not recorded"
                );
            }
        }
    }
}
