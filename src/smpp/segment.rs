//! Which part of a concatenated message a PDU carries: from the user data header
//! (esm_class UDHI, IE 0x00 with an 8-bit reference or IE 0x08 with a 16-bit one) or
//! from the sar_* TLVs. The header is read; the text after it never is.

use super::pdu::{Tlvs, tag};

/// One part of a concatenated message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The reference the parts share (8-bit references widened).
    pub reference: u16,
    /// How many parts the message has.
    pub total: u8,
    /// This part's number, from 1.
    pub part: u8,
}

/// esm_class bit 6: the short message begins with a user data header.
pub const UDHI: u8 = 0x40;

/// Why segment information cannot be believed: the PDU is passed on, and recorded
/// as one part (the gateway decides what it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("the user data header is cut short")]
    Truncated,
    #[error("the concatenation element is malformed")]
    BadElement,
    #[error("the sar_* parameters are incomplete or out of range")]
    BadSar,
}

/// The segment a message PDU carries, if it is part of a concatenated message.
pub fn segment(
    esm_class: u8,
    content: &[u8],
    tlvs: &Tlvs<'_>,
) -> Result<Option<Segment>, SegmentError> {
    if esm_class & UDHI != 0
        && let Some(s) = from_udh(content)?
    {
        return Ok(Some(s));
    }
    from_sar(tlvs)
}

fn from_udh(content: &[u8]) -> Result<Option<Segment>, SegmentError> {
    let (&udhl, rest) = content.split_first().ok_or(SegmentError::Truncated)?;
    let mut ies = rest.get(..udhl as usize).ok_or(SegmentError::Truncated)?;
    while let [iei, len, tail @ ..] = ies {
        let value = tail.get(..*len as usize).ok_or(SegmentError::Truncated)?;
        let seg = match (*iei, value) {
            (0x00, [reference, total, part]) => (*reference as u16, *total, *part),
            (0x08, [hi, lo, total, part]) => (u16::from_be_bytes([*hi, *lo]), *total, *part),
            (0x00 | 0x08, _) => return Err(SegmentError::BadElement),
            _ => {
                ies = &tail[*len as usize..];
                continue;
            }
        };
        let (reference, total, part) = seg;
        if total == 0 || part == 0 || part > total {
            return Err(SegmentError::BadElement);
        }
        return Ok(Some(Segment {
            reference,
            total,
            part,
        }));
    }
    if !ies.is_empty() {
        return Err(SegmentError::Truncated);
    }
    Ok(None)
}

fn from_sar(tlvs: &Tlvs<'_>) -> Result<Option<Segment>, SegmentError> {
    let reference = tlvs.get(tag::SAR_MSG_REF_NUM);
    let total = tlvs.get(tag::SAR_TOTAL_SEGMENTS);
    let part = tlvs.get(tag::SAR_SEGMENT_SEQNUM);
    match (reference, total, part) {
        (None, None, None) => Ok(None),
        (Some([hi, lo]), Some(&[total]), Some(&[part]))
            if total > 0 && part > 0 && part <= total =>
        {
            Ok(Some(Segment {
                reference: u16::from_be_bytes([*hi, *lo]),
                total,
                part,
            }))
        }
        _ => Err(SegmentError::BadSar),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlvs(pairs: &[(u16, &[u8])]) -> Vec<u8> {
        crate::smpp::pdu::tlv_bytes(pairs)
    }

    #[test]
    fn concatenation_is_read_from_the_udh_or_the_sar_parameters() {
        let none = Tlvs::none();
        let eight = [0x05, 0x00, 0x03, 0x7A, 0x03, 0x02, b'h', b'i'];
        assert_eq!(
            segment(UDHI, &eight, &none),
            Ok(Some(Segment {
                reference: 0x7A,
                total: 3,
                part: 2
            }))
        );
        let sixteen = [0x06, 0x08, 0x04, 0x12, 0x34, 0x02, 0x01];
        assert_eq!(
            segment(UDHI, &sixteen, &none),
            Ok(Some(Segment {
                reference: 0x1234,
                total: 2,
                part: 1
            }))
        );
        // Another element first (a port address), then concatenation.
        let ports = [
            0x0B, 0x05, 0x04, 0x0B, 0x84, 0x23, 0xF0, 0x00, 0x03, 0x01, 0x02, 0x02,
        ];
        assert_eq!(
            segment(UDHI, &ports, &none),
            Ok(Some(Segment {
                reference: 1,
                total: 2,
                part: 2
            }))
        );
        // Without UDHI the same bytes are text.
        assert_eq!(segment(0, &eight, &none), Ok(None));
        let sar = tlvs(&[
            (tag::SAR_MSG_REF_NUM, &[0x00, 0x09]),
            (tag::SAR_TOTAL_SEGMENTS, &[4]),
            (tag::SAR_SEGMENT_SEQNUM, &[4]),
        ]);
        assert_eq!(
            segment(0, b"text", &Tlvs::raw(&sar)),
            Ok(Some(Segment {
                reference: 9,
                total: 4,
                part: 4
            }))
        );
    }

    #[test]
    fn malformed_segment_information_is_refused_not_guessed() {
        let none = Tlvs::none();
        for (udh, want) in [
            (&[][..], SegmentError::Truncated),
            (&[0x05, 0x00, 0x03, 0x01][..], SegmentError::Truncated),
            (
                &[0x04, 0x00, 0x02, 0x01, 0x02][..],
                SegmentError::BadElement,
            ),
            (
                &[0x05, 0x00, 0x03, 0x01, 0x02, 0x03][..],
                SegmentError::BadElement,
            ),
            (
                &[0x05, 0x00, 0x03, 0x01, 0x00, 0x00][..],
                SegmentError::BadElement,
            ),
            (&[0x03, 0x0B, 0x04, 0x00][..], SegmentError::Truncated),
        ] {
            assert_eq!(segment(UDHI, udh, &none), Err(want), "{udh:02x?}");
        }
        let partial = tlvs(&[(tag::SAR_MSG_REF_NUM, &[0, 1])]);
        assert_eq!(
            segment(0, b"", &Tlvs::raw(&partial)),
            Err(SegmentError::BadSar)
        );
        let zero = tlvs(&[
            (tag::SAR_MSG_REF_NUM, &[0, 1]),
            (tag::SAR_TOTAL_SEGMENTS, &[0]),
            (tag::SAR_SEGMENT_SEQNUM, &[0]),
        ]);
        assert_eq!(
            segment(0, b"", &Tlvs::raw(&zero)),
            Err(SegmentError::BadSar)
        );
    }

    proptest::proptest! {
        #[test]
        fn segment_never_panics(esm in proptest::num::u8::ANY, bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = segment(esm, &bytes, &Tlvs::none());
        }
    }
}
