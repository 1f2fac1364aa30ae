//! The plaintext inside a record's sealed value, and the AAD that binds it to its row.
//!
//! Layout, all integers big-endian:
//!
//! ```text
//! version u8 = 1, or 2 when the SMPP part follows
//! account      len u16 | utf-8
//! client ip    len u8 (4 or 16) | octets
//! client port  u16
//! originator   form u8 (0 = none) | len u16 | utf-8
//! recipient    form u8 | len u16 | utf-8
//! version 2:   direction u8 | registered_delivery u8
//!              | part u8 (0 = none, 1 = reference u16 | number u8)
//! ```
//!
//! A record without SMPP details is written as version 1, so every record written
//! before them reads as it did.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::canonical::{Form, Identifier};
use crate::record::{Direction, Part, SmppDetail, SubmissionId, TrafficRecord};

const VERSION: u8 = 1;
const VERSION_SMPP: u8 = 2;

/// The identifying fields of one record, as sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedFields {
    pub account: String,
    pub client_ip: IpAddr,
    pub client_port: u16,
    pub originator: Option<Identifier>,
    pub recipient: Identifier,
    pub smpp: Option<SmppDetail>,
}

#[derive(Debug, thiserror::Error)]
#[error("sealed record payload is malformed")]
pub struct CodecError;

pub fn record_aad(submission: SubmissionId, ordinal: u32) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[0] = b'r';
    aad[1..9].copy_from_slice(&submission.0.to_be_bytes());
    aad[9..].copy_from_slice(&ordinal.to_be_bytes());
    aad
}

pub fn outcome_aad(submission: SubmissionId) -> [u8; 9] {
    let mut aad = [0u8; 9];
    aad[0] = b'o';
    aad[1..].copy_from_slice(&submission.0.to_be_bytes());
    aad
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Identifiers are capped at MAX_IDENTIFIER_BYTES (256) upstream; the cap here only
    // keeps the length field honest.
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

pub fn encode(record: &TrafficRecord<'_>, out: &mut Vec<u8>) {
    let s = record.submission;
    out.push(if s.smpp.is_some() {
        VERSION_SMPP
    } else {
        VERSION
    });
    put_str(out, &s.account);
    match s.client_ip {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(16);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&s.client_port.to_be_bytes());
    match &s.originator {
        Some(o) => {
            out.push(o.form as u8);
            put_str(out, &o.value);
        }
        None => out.push(0),
    }
    out.push(record.recipient.form as u8);
    put_str(out, &record.recipient.value);
    if let Some(d) = &s.smpp {
        out.push(d.direction as u8);
        out.push(d.registered_delivery);
        match d.part {
            Some(p) => {
                out.push(1);
                out.extend_from_slice(&p.reference.to_be_bytes());
                out.push(p.number);
            }
            None => out.push(0),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn string(&mut self) -> Result<String, CodecError> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| CodecError)
    }
    fn identifier(&mut self, form: u8) -> Result<Identifier, CodecError> {
        let form = Form::from_u8(form).ok_or(CodecError)?;
        Ok(Identifier {
            form,
            value: self.string()?,
        })
    }
}

pub fn decode(bytes: &[u8]) -> Result<SealedFields, CodecError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != VERSION && version != VERSION_SMPP {
        return Err(CodecError);
    }
    let account = r.string()?;
    let client_ip = match r.u8()? {
        4 => {
            let b: [u8; 4] = r.take(4)?.try_into().map_err(|_| CodecError)?;
            IpAddr::V4(Ipv4Addr::from(b))
        }
        16 => {
            let b: [u8; 16] = r.take(16)?.try_into().map_err(|_| CodecError)?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return Err(CodecError),
    };
    let client_port = r.u16()?;
    let originator = match r.u8()? {
        0 => None,
        form => Some(r.identifier(form)?),
    };
    let form = r.u8()?;
    let recipient = r.identifier(form)?;
    let smpp = if version == VERSION_SMPP {
        let direction = Direction::from_u8(r.u8()?).ok_or(CodecError)?;
        let registered_delivery = r.u8()?;
        let part = match r.u8()? {
            0 => None,
            1 => Some(Part {
                reference: r.u16()?,
                number: r.u8()?,
            }),
            _ => return Err(CodecError),
        };
        Some(SmppDetail {
            direction,
            registered_delivery,
            part,
        })
    } else {
        None
    };
    if !r.0.is_empty() {
        return Err(CodecError);
    }
    Ok(SealedFields {
        account,
        client_ip,
        client_port,
        originator,
        recipient,
        smpp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Granularity;
    use crate::record::{Protocol, Service, Submission};
    use crate::store::keys::IndexKind;
    use crate::store::keys::tests::keyring;
    use crate::store::partition::PartitionId;
    use proptest::prelude::*;

    fn identifier() -> impl Strategy<Value = Identifier> {
        (
            (1u8..=6).prop_map(|f| Form::from_u8(f).unwrap()),
            "\\PC{0,40}",
        )
            .prop_map(|(form, value)| Identifier { form, value })
    }

    fn submission() -> impl Strategy<Value = Submission> {
        (
            any::<i64>(),
            "\\PC{0,40}",
            any::<[u8; 16]>(),
            any::<bool>(),
            any::<u16>(),
            proptest::option::of(identifier()),
            proptest::collection::vec(identifier(), 1..5),
            proptest::option::of((
                1u8..=2,
                any::<u8>(),
                proptest::option::of((any::<u16>(), any::<u8>())),
            )),
        )
            .prop_map(
                |(id, account, ip, v4, port, originator, recipients, smpp)| Submission {
                    id: SubmissionId(id),
                    at: 1_790_000_000_000_000,
                    protocol: Protocol::Http,
                    service: Service::Sms,
                    account,
                    client_ip: if v4 {
                        IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
                    } else {
                        IpAddr::V6(Ipv6Addr::from(ip))
                    },
                    client_port: port,
                    originator,
                    segments: 1,
                    recipients,
                    smpp: smpp.map(|(direction, registered_delivery, part)| SmppDetail {
                        direction: Direction::from_u8(direction).unwrap(),
                        registered_delivery,
                        part: part.map(|(reference, number)| Part { reference, number }),
                    }),
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn record_round_trips_through_seal_and_unseal(sub in submission()) {
            let dir = tempfile::tempdir().unwrap();
            let keys = keyring(dir.path(), 8)
                .keys_or_create(PartitionId::containing(Granularity::Day, sub.at))
                .unwrap();
            for rec in sub.records() {
                let mut plain = Vec::new();
                encode(&rec, &mut plain);
                let aad = record_aad(sub.id, rec.ordinal);
                let sealed = keys.seal(&aad, &plain).unwrap();
                let fields = decode(&keys.open(&aad, &sealed).unwrap()).unwrap();
                prop_assert_eq!(&fields.account, &sub.account);
                prop_assert_eq!(fields.client_ip, sub.client_ip);
                prop_assert_eq!(fields.client_port, sub.client_port);
                prop_assert_eq!(&fields.originator, &sub.originator);
                prop_assert_eq!(&fields.recipient, rec.recipient);
                prop_assert_eq!(fields.smpp, sub.smpp);
                // Bound to its row: another ordinal does not open it.
                prop_assert!(keys.open(&record_aad(sub.id, rec.ordinal + 1), &sealed).is_err());
            }
        }

        #[test]
        fn blind_index_is_stable_within_and_differs_across_partitions(value in "\\PC{1,30}", day in 1u32..28) {
            let dir = tempfile::tempdir().unwrap();
            let ring = keyring(dir.path(), 8);
            let date = chrono::NaiveDate::from_ymd_opt(2026, 2, day).unwrap();
            let a = ring.keys_or_create(PartitionId::of_date(Granularity::Day, date)).unwrap();
            let b = ring.keys_or_create(PartitionId::of_date(Granularity::Day, date.succ_opt().unwrap())).unwrap();
            let tag = a.blind_index(IndexKind::Recipient, &value);
            prop_assert_eq!(tag, a.blind_index(IndexKind::Recipient, &value));
            prop_assert_eq!(tag, ring.keys(a.partition()).unwrap().blind_index(IndexKind::Recipient, &value));
            // 64-bit tags under independent keys: equal with probability 2^-64.
            prop_assert_ne!(tag, b.blind_index(IndexKind::Recipient, &value));
        }
    }

    #[test]
    fn truncated_payloads_are_rejected() {
        let sub = Submission {
            id: SubmissionId(1),
            at: 0,
            protocol: Protocol::Http,
            service: Service::Sms,
            account: "acme".into(),
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            client_port: 1,
            originator: None,
            segments: 1,
            recipients: vec![Identifier {
                form: Form::E164,
                value: "+31612345678".into(),
            }],
            smpp: None,
        };
        let smpp = Submission {
            smpp: Some(SmppDetail {
                direction: Direction::MobileOriginated,
                registered_delivery: 1,
                part: Some(Part {
                    reference: 0x1234,
                    number: 2,
                }),
            }),
            ..sub.clone()
        };
        for sub in [sub, smpp] {
            let mut plain = Vec::new();
            encode(&sub.records().next().unwrap(), &mut plain);
            assert_eq!(decode(&plain).unwrap().smpp, sub.smpp);
            for cut in 0..plain.len() {
                assert!(decode(&plain[..cut]).is_err(), "cut at {cut}");
            }
            plain.push(0);
            assert!(decode(&plain).is_err(), "trailing byte");
        }
    }
}
