//! Recording before forwarding: a message read is identified (its addresses by their
//! type of number), recorded with the others read in the same step (one task, one
//! commit), then forwarded, or refused with the protocol's "not now".

use std::time::Instant;

use bytes::BytesMut;

use super::upstream::InFlight;
use super::wire::answer;
use super::{End, Session};
use crate::ingress::smpp::address;
use crate::record::{Direction, Part, SmppDetail, Submission};
use crate::relay::{Exit, Identified, NotForwarded, Ticket};
use crate::smpp::{Dest, HEADER_LEN, Header, Message, segment, status};
use crate::store::RecordError;

/// registered_delivery bits that ask for an SMSC delivery receipt (0-1) or an
/// intermediate notification (4).
const RECEIPT_REQUESTED: u8 = 0x13;

/// A message read, to be recorded with the others read in the same step.
pub(super) struct Pending {
    submission: Submission,
    item: Item,
}

/// A message on its way to be recorded: its header and PDU, and what its response
/// needs (see `InFlight`).
pub(super) struct Item {
    pub h: Header,
    pub pdu: BytesMut,
    pub recipients: Box<[u64]>,
    pub wants_receipt: bool,
}

/// Messages whose records are being committed together: which way they go, when the
/// task began, each one. Kept by the session (by its task's id), not by the task, so
/// that a task that panics cannot take its messages with it.
pub(super) struct Batch {
    inbound: bool,
    started: Instant,
    items: Vec<Item>,
}

/// What a record task ends with: its id, and each message's ticket or the error.
pub(super) type Recorded =
    Result<(tokio::task::Id, Result<Vec<Ticket>, RecordError>), tokio::task::JoinError>;

impl Session<'_> {
    /// The record of a message: its identifiers (by their type of number), its SMPP
    /// details, and its recipients' keys when it has several. `Err`: the status to
    /// refuse it with (an empty destination).
    pub(super) fn identify(
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
        let identified = Identified {
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
        Ok((identified, detail, keys))
    }

    /// A submit_sm, submit_multi or data_sm from the client: read, then kept in
    /// `unsent` until the step ends ([`Session::record_unsent`]).
    pub(super) async fn message(&mut self, h: Header, pdu: BytesMut) -> Option<End> {
        let message = match Message::read(h.id, &pdu[HEADER_LEN..]) {
            Ok(m) => m,
            Err(e) => return self.refuse(&h, e.status, "bad_pdu").await,
        };
        let (identified, detail, recipients) =
            match self.identify(&message, Direction::MobileTerminated) {
                Ok(identified) => identified,
                Err(code) => return self.refuse(&h, code, "bad_pdu").await,
            };
        let submission = self.l.relay.submission_of(identified, Some(detail));
        drop(message);
        self.outstanding.insert(h.sequence);
        // A batch is of one partition, and of a size the writer's queue always has
        // room for.
        let recorder = &self.l.relay.recorder;
        if self.unsent.len() >= recorder.batch_cap()
            || self
                .unsent
                .first()
                .is_some_and(|first| !recorder.same_partition(first.submission.at, submission.at))
        {
            self.record_unsent();
        }
        let wants_receipt = detail.registered_delivery & RECEIPT_REQUESTED != 0;
        self.unsent.push(Pending {
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
    pub(super) fn record_unsent(&mut self) {
        if self.unsent.is_empty() {
            return;
        }
        let (submissions, items) = self
            .unsent
            .drain(..)
            .map(|p| (p.submission, p.item))
            .unzip();
        self.spawn_record(false, submissions, items);
    }

    /// At the end: messages read and not yet handed to the store are refused
    /// (`ESME_RTHROTTLED`), never recorded.
    pub(super) async fn refuse_unsent(&mut self) {
        for p in std::mem::take(&mut self.unsent) {
            self.outstanding.remove(&p.item.h.sequence);
            self.refuse(&p.item.h, status::THROTTLED, "session_ending")
                .await;
        }
    }

    /// Records messages of one partition in a task of their own.
    pub(super) fn spawn_record(
        &mut self,
        inbound: bool,
        submissions: Vec<Submission>,
        items: Vec<Item>,
    ) {
        if inbound {
            self.inbound_recording += items.len();
        }
        let relay = self.l.relay.clone();
        let started = Instant::now();
        let task = self
            .records
            .spawn(async move { relay.record_many(&submissions, started).await });
        self.committing.insert(
            task.id(),
            Batch {
                inbound,
                started,
                items,
            },
        );
    }

    /// A record task is done: each of its messages goes on (or is refused).
    pub(super) async fn record_done(&mut self, done: Recorded) -> Option<End> {
        let (id, result) = match done {
            Ok((id, result)) => (id, result),
            Err(e) => {
                // Short of a bug a record task does not panic; its messages are refused.
                // Only whether it panicked: a panic's message is not for the log.
                tracing::error!(
                    panicked = e.is_panic(),
                    "an SMPP record task failed; its messages are refused"
                );
                (e.id(), Err(RecordError::Internal))
            }
        };
        let batch = self.committing.remove(&id)?;
        self.committed(batch, result).await
    }

    /// A batch's commit is done: each message goes on (outbound: upstream; inbound: to
    /// the client), or is refused (`ESME_RTHROTTLED` to the client, `ESME_RX_T_APPN`
    /// to the upstream). Every message of the batch is settled, whatever ends.
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
        if inbound {
            self.inbound_recording -= items.len();
        }
        let busy = if inbound {
            status::TEMPORARY_APP_ERROR
        } else {
            status::THROTTLED
        };
        let mut end = None;
        match result {
            Ok(tickets) => {
                for (item, ticket) in items.into_iter().zip(tickets) {
                    let step = self.forward(inbound, item, ticket, busy).await;
                    end = end.or(step);
                }
            }
            Err(e) => {
                for item in &items {
                    self.l.relay.log(Exit::FailClosed(&e), busy as u16, started);
                    end = end.or(self.busy(inbound, &item.h, busy).await);
                }
            }
        }
        end
    }

    /// A recorded message on its way: upstream (outbound) or to the client (inbound);
    /// once the session is ending, or past shutdown-timeout, settled and refused.
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
        let stop = match self.ending {
            Some(End::UpstreamGone(loss)) => {
                ticket
                    .outcome(Err(&loss.error()), std::time::Duration::ZERO, busy as u16)
                    .await;
                return self.busy(inbound, &h, busy).await;
            }
            Some(End::Shutdown) => Some(NotForwarded::Shutdown),
            Some(_) => Some(NotForwarded::ClientGone),
            None => ticket.not_now(inbound && !self.client_alive),
        };
        if let Some(why) = stop {
            ticket.not_forwarded(why, busy as u16).await;
            return self.busy(inbound, &h, busy).await;
        }
        if inbound {
            self.upstream_request(&h, Some(ticket)).await;
            return self.send_client(&pdu).await;
        }
        // In flight before it is queued: whatever becomes of the write, `end` settles
        // it (drained, or failed with the upstream).
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

    /// relaylog's "not now" to a message it did not forward: to the client for its
    /// own (its number free again), to the upstream for an inbound one.
    async fn busy(&mut self, inbound: bool, h: &Header, code: u32) -> Option<End> {
        if inbound {
            self.send_upstream(&answer(h, code)).await
        } else {
            self.outstanding.remove(&h.sequence);
            self.send_client(&answer(h, code)).await
        }
    }
}
