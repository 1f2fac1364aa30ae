//! The facts of a delivery receipt: which message (`id`), its final state (`stat`),
//! the error (`err`) and when it ended (`done date`). From the receipted_message_id
//! and message_state TLVs when the SMSC sends them, else from the conventional text
//! (`id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…`). The `text:`
//! field repeats the start of the original message, content: it is never read.

use super::pdu::{Tlvs, tag};

/// The longest field value kept (message ids are at most 65 bytes with their NUL).
const MAX_FIELD: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Receipt {
    /// The SMSC's message id, as its submit response gave it.
    pub id: String,
    /// The final state: `DELIVRD`, `UNDELIV`, `EXPIRED`, `REJECTD`, …
    pub stat: Option<String>,
    pub err: Option<String>,
    /// `YYMMDDhhmm` (or with seconds), as the SMSC wrote it.
    pub done: Option<String>,
}

/// message_state values (SMPP 3.4 §5.3.2.35) in the words receipts use.
fn state_word(state: u8) -> Option<&'static str> {
    Some(match state {
        1 => "ENROUTE",
        2 => "DELIVRD",
        3 => "EXPIRED",
        4 => "DELETED",
        5 => "UNDELIV",
        6 => "ACCEPTD",
        7 => "UNKNOWN",
        8 => "REJECTD",
        _ => return None,
    })
}

/// A field value as text: printable ASCII only, capped.
fn field(v: &[u8]) -> Option<String> {
    let v = &v[..v.len().min(MAX_FIELD)];
    (!v.is_empty() && v.iter().all(|b| b.is_ascii_graphic()))
        .then(|| String::from_utf8_lossy(v).into_owned())
}

/// The receipt in a deliver_sm or data_sm marked as one, or `None` when it names no
/// message.
pub fn receipt(content: &[u8], tlvs: &Tlvs<'_>) -> Option<Receipt> {
    let from_text = parse_text(content);
    let id = tlvs
        .get(tag::RECEIPTED_MESSAGE_ID)
        .map(|v| v.strip_suffix(&[0]).unwrap_or(v))
        .and_then(field)
        .or_else(|| from_text.as_ref().map(|r| r.id.clone()))?;
    let stat = tlvs
        .get(tag::MESSAGE_STATE)
        .and_then(|v| match v {
            [s] => state_word(*s).map(str::to_owned),
            _ => None,
        })
        .or_else(|| from_text.as_ref().and_then(|r| r.stat.clone()));
    let (err, done) = from_text.map(|r| (r.err, r.done)).unwrap_or_default();
    Some(Receipt {
        id,
        stat,
        err,
        done,
    })
}

/// The conventional text, up to `text:`: each known key and its value.
fn parse_text(content: &[u8]) -> Option<Receipt> {
    // Everything from ` text:` on is content.
    let end = find(content, b" text:")
        .or_else(|| find(content, b" Text:"))
        .unwrap_or(content.len());
    let head = &content[..end];
    let value = |key: &[u8]| -> Option<String> {
        let at = find_key(head, key)?;
        let rest = &head[at + key.len()..];
        let len = if key == b"done date:" || key == b"submit date:" {
            // Dates are digits; stop at the first that is not.
            rest.iter().take_while(|b| b.is_ascii_digit()).count()
        } else {
            rest.iter().take_while(|&&b| b != b' ').count()
        };
        field(&rest[..len])
    };
    Some(Receipt {
        id: value(b"id:")?,
        stat: value(b"stat:"),
        err: value(b"err:"),
        done: value(b"done date:"),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// A key at the start or after a space (so `id:` does not match inside `xid:`).
fn find_key(hay: &[u8], key: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = find(&hay[from..], key) {
        let at = from + i;
        if at == 0 || hay[at - 1] == b' ' {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[u8] = b"id:7f3a0c12 sub:001 dlvrd:001 submit date:2612011200 done date:2612011201 stat:DELIVRD err:000 text:canary-secret stat:EVIL";

    #[test]
    fn receipt_facts_come_from_the_text_up_to_its_content() {
        let r = receipt(TEXT, &Tlvs::none()).unwrap();
        assert_eq!(
            r,
            Receipt {
                id: "7f3a0c12".into(),
                stat: Some("DELIVRD".into()),
                err: Some("000".into()),
                done: Some("2612011201".into()),
            }
        );
        assert!(!format!("{r:?}").contains("canary"));
        assert_eq!(receipt(b"no receipt here", &Tlvs::none()), None);
        // The key only at the start or after a space.
        let r = receipt(b"xid:1 id:2 stat:UNDELIV", &Tlvs::none()).unwrap();
        assert_eq!(r.id, "2");
    }

    #[test]
    fn receipt_tlvs_win_over_the_text() {
        let bytes = crate::smpp::pdu::tlv_bytes(&[
            (tag::RECEIPTED_MESSAGE_ID, b"ABC123\0"),
            (tag::MESSAGE_STATE, &[5]),
        ]);
        let r = receipt(TEXT, &Tlvs::raw(&bytes)).unwrap();
        assert_eq!(
            (r.id.as_str(), r.stat.as_deref()),
            ("ABC123", Some("UNDELIV"))
        );
        assert_eq!(r.done.as_deref(), Some("2612011201"));
        let r = receipt(b"", &Tlvs::raw(&bytes)).unwrap();
        assert_eq!((r.id.as_str(), r.err), ("ABC123", None));
    }

    proptest::proptest! {
        #[test]
        fn receipt_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = receipt(&bytes, &Tlvs::none());
        }
    }
}
