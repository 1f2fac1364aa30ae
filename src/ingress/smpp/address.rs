//! An SMPP address as the record holds it. SMPP says what kind of address it is (the
//! type of number, TON), so it is read by that, not guessed:
//!
//! | TON | recorded as |
//! |---|---|
//! | 1 international | E.164 (`+` and the digits) when valid, else raw with its `+` |
//! | 5 alphanumeric | alphanumeric, in canonical raw form |
//! | 3 network specific, 6 abbreviated | a short code |
//! | 0 unknown, 2 national, 4 subscriber | letters: alphanumeric; a valid number in the listener's region: E.164; up to 8 digits: a short code; else raw |
//!
//! The index value of each is the value itself, so `query --recipient 1234` finds a
//! short code however it was marked.

use crate::canonical::{Form, Identifier, NumberNormalizer, canonical_raw};
use crate::smpp::Address;

/// SMPP 3.4 §5.2.5 type-of-number values relaylog reads.
const INTERNATIONAL: u8 = 1;
const NETWORK_SPECIFIC: u8 = 3;
const ALPHANUMERIC: u8 = 5;
const ABBREVIATED: u8 = 6;

/// The longest digit string taken for a short code when the TON does not say.
const SHORT_CODE_DIGITS: usize = 8;

/// The identifier of an address; `None` when it is empty (the SMSC's default
/// originator).
pub fn identifier(normalizer: &NumberNormalizer, a: &Address<'_>) -> Option<Identifier> {
    let raw = canonical_raw(&String::from_utf8_lossy(a.addr));
    if raw.is_empty() {
        return None;
    }
    let digits = raw.bytes().all(|b| b.is_ascii_digit());
    let marked = |form| {
        Some(Identifier {
            form,
            value: raw.clone(),
        })
    };
    match a.ton {
        INTERNATIONAL if digits => Some(normalizer.normalize(&format!("+{raw}"))),
        ALPHANUMERIC => marked(Form::Alphanumeric),
        NETWORK_SPECIFIC | ABBREVIATED if digits => marked(Form::ShortCode),
        _ if raw.bytes().any(|b| b.is_ascii_alphabetic()) => marked(Form::Alphanumeric),
        _ => {
            let id = normalizer.normalize(&raw);
            if id.form == Form::Raw && digits && raw.len() <= SHORT_CODE_DIGITS {
                marked(Form::ShortCode)
            } else {
                Some(id)
            }
        }
    }
}

/// A distribution list's name.
pub fn list(name: &[u8]) -> Identifier {
    Identifier {
        form: Form::List,
        value: canonical_raw(&String::from_utf8_lossy(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ton: u8, addr: &str) -> Option<(Form, String)> {
        let nl = NumberNormalizer::new(phonenumber::country::Id::NL);
        identifier(
            &nl,
            &Address {
                ton,
                npi: 1,
                addr: addr.as_bytes(),
            },
        )
        .map(|i| (i.form, i.value))
    }

    #[test]
    fn the_type_of_number_decides_the_form() {
        let table = [
            (1, "31612345678", Form::E164, "+31612345678"),
            (1, "999", Form::Raw, "+999"),
            (0, "0612345678", Form::E164, "+31612345678"),
            (2, "0612345678", Form::E164, "+31612345678"),
            (0, "+31612345678", Form::E164, "+31612345678"),
            (5, "ACME", Form::Alphanumeric, "ACME"),
            (5, "12345", Form::Alphanumeric, "12345"),
            (0, "ACME Bank", Form::Alphanumeric, "ACMEBank"),
            (3, "4411", Form::ShortCode, "4411"),
            (6, "112", Form::ShortCode, "112"),
            (0, "4411", Form::ShortCode, "4411"),
            (0, "123456789012", Form::Raw, "123456789012"),
        ];
        for (ton, addr, form, value) in table {
            assert_eq!(
                id(ton, addr),
                Some((form, value.to_owned())),
                "TON {ton} {addr:?}"
            );
        }
        assert_eq!(id(1, ""), None, "the SMSC's default originator");
        assert_eq!(list(b"customers").form, Form::List);
    }
}
