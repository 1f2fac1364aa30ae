//! The traffic record: the only data that crosses from ingress to the store.
//!
//! There is deliberately no field that can hold message content, a subject, a password
//! or an API key. A [`Submission`] is one message as a client sent it (who, from where,
//! when, from which originator, to which recipients); the store keeps one row per
//! recipient, all sharing the submission id. The upstream's answer is a separate
//! [`OutcomeEvent`], appended later: the store never updates a row.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::canonical::Identifier;
use crate::clock::Micros;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Protocol {
    Http = 1,
    Smpp = 2,
    Smtp = 3,
}

impl Protocol {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Http),
            2 => Some(Self::Smpp),
            3 => Some(Self::Smtp),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Smpp => "smpp",
            Self::Smtp => "smtp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Service {
    Sms = 1,
    Email = 2,
}

impl Service {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Sms),
            2 => Some(Self::Email),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Email => "email",
        }
    }
}

/// Identifies one submission across the whole store.
///
/// Layout: `micros_since_epoch << 8 | sequence`, made strictly increasing per process by
/// [`SubmissionIds`]. Increasing ids keep every index that leads with the id append-only,
/// and the id doubles as a coarse timestamp. Fits in an `i64` until the year 2540.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubmissionId(pub i64);

/// Hands out strictly increasing [`SubmissionId`]s.
#[derive(Debug, Default)]
pub struct SubmissionIds {
    last: AtomicU64,
}

impl SubmissionIds {
    pub fn next(&self, now: Micros) -> SubmissionId {
        let floor = (now.max(0) as u64) << 8;
        let prev = self
            .last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(floor.max(last + 1))
            })
            .unwrap_or_else(|v| v);
        SubmissionId(floor.max(prev + 1) as i64)
    }
}

/// What the upstream made of a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// The upstream took the message (HTTP 2xx, Kannel `0:`/`3:`).
    Accepted = 1,
    /// The upstream refused it (4xx: authentication, missing fields, lists).
    Rejected = 2,
    /// The upstream failed or could not be reached (5xx, connection error, timeout),
    /// or the relay could not confirm the record and did not forward.
    Failed = 3,
    /// `serve` was shutting down and `shutdown-timeout` passed: the forward was cut
    /// short (the gateway may or may not have the message) or never started.
    FailedShutdown = 4,
    /// The client went away after its message was recorded, before it was forwarded:
    /// not forwarded (the client, given no answer, will send it again).
    FailedClientGone = 5,
    /// Not an answer but a later event: the SMSC's delivery receipt for the message
    /// (see [`Receipt`]). A message's outcome is its latest event of another kind.
    Receipt = 6,
}

impl Outcome {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Accepted),
            2 => Some(Self::Rejected),
            3 => Some(Self::Failed),
            4 => Some(Self::FailedShutdown),
            5 => Some(Self::FailedClientGone),
            6 => Some(Self::Receipt),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::FailedShutdown => "failed: shutdown",
            Self::FailedClientGone => "failed: client gone",
            Self::Receipt => "receipt",
        }
    }
}

/// One message as the client submitted it, metadata only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub id: SubmissionId,
    /// When relaylog received it; also chooses the partition.
    pub at: Micros,
    pub protocol: Protocol,
    pub service: Service,
    /// Gateway user name, SMPP system_id or SMTP AUTH user. Never the password.
    pub account: String,
    pub client_ip: IpAddr,
    pub client_port: u16,
    pub originator: Option<Identifier>,
    /// SMS parts (estimated from the text length and coding), or an e-mail
    /// transaction's recipient count.
    pub segments: u16,
    pub recipients: Vec<Identifier>,
    /// What SMPP adds: direction, registered_delivery, which part of a long message.
    pub smpp: Option<SmppDetail>,
}

/// Which way an SMS went through relaylog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    /// From a client towards handsets (submit_sm, submit_multi, data_sm).
    MobileTerminated = 1,
    /// From a handset to a client (an SMSC's deliver_sm or data_sm that is not a
    /// receipt): the originator is the handset, the recipient the client's number.
    MobileOriginated = 2,
}

impl Direction {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::MobileTerminated),
            2 => Some(Self::MobileOriginated),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MobileTerminated => "mt",
            Self::MobileOriginated => "mo",
        }
    }
}

/// The SMPP facts of a message that name no one: sealed with the record all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmppDetail {
    pub direction: Direction,
    /// The PDU's registered_delivery octet (bits 0-1: SMSC receipt requested).
    pub registered_delivery: u8,
    /// Which part of a concatenated message this PDU carries.
    pub part: Option<Part>,
}

/// One part of a concatenated SMS (UDH or sar_* TLVs): the reference shared by its
/// parts and its number among them (the count is [`Submission::segments`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub reference: u16,
    pub number: u8,
}

impl Submission {
    /// One [`TrafficRecord`] per recipient, in the order the client gave them.
    pub fn records(&self) -> impl ExactSizeIterator<Item = TrafficRecord<'_>> {
        self.recipients
            .iter()
            .enumerate()
            .map(move |(ordinal, recipient)| TrafficRecord {
                submission: self,
                ordinal: ordinal as u32,
                recipient,
            })
    }
}

/// One recipient row of a submission.
#[derive(Debug, Clone, Copy)]
pub struct TrafficRecord<'a> {
    pub submission: &'a Submission,
    /// Position of the recipient within the submission; with the submission id it
    /// names the record uniquely and binds its sealed copy.
    pub ordinal: u32,
    pub recipient: &'a Identifier,
}

/// The upstream's answer to a submission, appended after forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeEvent {
    pub submission: SubmissionId,
    /// When the submission was received: the outcome goes to the same partition.
    pub submitted_at: Micros,
    pub at: Micros,
    pub outcome: Outcome,
    /// HTTP status from the upstream, `None` when it could not be reached.
    pub upstream_status: Option<u16>,
    /// The gateway's own status code where its body carries one (Kannel's `0:`).
    pub gateway_code: Option<i32>,
    /// The gateway's message id (an MTA's queue id), sealed in the store.
    pub upstream_message_id: Option<String>,
    /// SMTP: the final reply's enhanced status code (RFC 3463), such as `2.0.0`.
    pub enhanced_status: Option<String>,
    /// SMTP: the message's size in bytes as it went upstream.
    pub size_bytes: Option<u64>,
    /// The one recipient (by ordinal) this event is about; `None`: the whole
    /// submission. SMPP: a submit_multi_resp's unsuccess_sme entry, a receipt from one
    /// of several destinations.
    pub ordinal: Option<u32>,
    /// A delivery receipt's facts (with [`Outcome::Receipt`]).
    pub receipt: Option<Receipt>,
}

impl OutcomeEvent {
    /// An event with nothing but its kind, for the fields that apply to be set.
    pub fn new(
        submission: SubmissionId,
        submitted_at: Micros,
        at: Micros,
        outcome: Outcome,
    ) -> Self {
        OutcomeEvent {
            submission,
            submitted_at,
            at,
            outcome,
            upstream_status: None,
            gateway_code: None,
            upstream_message_id: None,
            enhanced_status: None,
            size_bytes: None,
            ordinal: None,
            receipt: None,
        }
    }
}

/// The facts relaylog keeps of a delivery receipt: never its `text:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// `DELIVRD`, `UNDELIV`, `EXPIRED`, `REJECTD`, … as the SMSC wrote it.
    pub state: Option<String>,
    /// The SMSC's error code (`err:`), as written.
    pub error: Option<String>,
    /// `done date`, as the SMSC wrote it (`YYMMDDhhmm[ss]`, its own time zone).
    pub done: Option<String>,
}

/// SMS parts needed for a text, from its length in characters and its coding
/// (0 GSM 7-bit, 1 8-bit, 2 UCS-2), as a gateway would split it with UDH concatenation.
/// Only the length is looked at; the text itself is never kept.
pub fn sms_segments(chars: usize, coding: u8) -> u16 {
    let (single, multi) = match coding {
        1 => (140, 134),
        2 => (70, 67),
        _ => (160, 153),
    };
    let parts = if chars <= single {
        1
    } else {
        chars.div_ceil(multi)
    };
    parts.min(u16::MAX as usize) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_ids_strictly_increase_even_within_one_microsecond() {
        let ids = SubmissionIds::default();
        let a = ids.next(1_000);
        let b = ids.next(1_000);
        let c = ids.next(999); // clock stepped back
        let d = ids.next(5_000);
        assert!(a < b && b < c && c < d, "{a:?} {b:?} {c:?} {d:?}");
        assert_eq!(a.0, 1_000 << 8);
        assert_eq!(d.0, 5_000 << 8);
    }

    #[test]
    fn segments_follow_gsm_and_ucs2_limits() {
        let table = [
            (0, 0, 1),
            (160, 0, 1),
            (161, 0, 2),
            (306, 0, 2),
            (307, 0, 3),
            (70, 2, 1),
            (71, 2, 2),
            (140, 1, 1),
            (141, 1, 2),
        ];
        for (chars, coding, parts) in table {
            assert_eq!(
                sms_segments(chars, coding),
                parts,
                "{chars} chars, coding {coding}"
            );
        }
    }
}
