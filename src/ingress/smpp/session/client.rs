//! What the client sends: messages to record, requests to pass on, answers to the
//! upstream's requests, and what relaylog refuses or answers itself.

use std::time::Instant;

use bytes::BytesMut;

use super::upstream::MAX_AWAITED;
use super::wire::{ReadError, answer, nack};
use super::{End, Session};
use crate::relay::Exit;
use crate::smpp::{Header, id, status};

impl Session<'_> {
    pub(super) async fn client_read(&mut self, pdu: Result<BytesMut, ReadError>) -> Option<End> {
        match pdu {
            Ok(pdu) => self.client_pdu(pdu).await,
            Err(ReadError::Closed) => {
                self.client_alive = false;
                Some(End::ClientGone)
            }
            Err(ReadError::Frame) => {
                // The stream cannot be read on: the nack, then close.
                let relay = &self.l.relay;
                relay.metrics.cut(&relay.name, "pdu_length");
                self.send_client(&nack(0, status::INVALID_CMD_LENGTH)).await;
                self.flush().await;
                self.client_alive = false;
                Some(End::ClientGone)
            }
        }
    }

    /// relaylog's own refusal of a client request, logged under `reason`.
    pub(super) async fn refuse(
        &mut self,
        h: &Header,
        code: u32,
        reason: &'static str,
    ) -> Option<End> {
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
        self.l.metrics.pdu(false, h.id);
        if h.is_response() {
            return self.client_answer(&h, &pdu).await;
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
                self.record_unsent();
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

    /// A client response: it passes only as the answer to a request the upstream sent;
    /// for an inbound message, it is the message's outcome.
    async fn client_answer(&mut self, h: &Header, pdu: &[u8]) -> Option<End> {
        let answers = self
            .upstream_requests
            .get(&h.sequence)
            .is_some_and(|r| h.id == id::resp(r.command) || h.id == id::GENERIC_NACK);
        let Some(request) = answers
            .then(|| self.take_upstream_request(h.sequence))
            .flatten()
        else {
            self.l
                .relay
                .log(Exit::Rejected("unexpected_response"), 0, Instant::now());
            return None;
        };
        if let Some(ticket) = request.inbound {
            super::upstream::settle(ticket, h, request.at.elapsed()).await;
        }
        let end = self.send_upstream(pdu).await;
        end.or((h.id == id::resp(id::UNBIND)).then_some(End::Unbound))
    }
}
