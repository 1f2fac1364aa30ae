//! Canonical forms of the identifiers a record holds: phone numbers (E.164 where the
//! number can be parsed), e-mail addresses and IP addresses. The blind index is computed
//! over these forms, so a lookup finds a record however the client spelled the value.

use std::net::IpAddr;

use phonenumber::country;

/// How an identifier was normalised. Stored plain beside the record: it tells a
/// compliance officer whether a match was exact E.164 or a raw string comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Form {
    /// Parsed as a phone number and formatted E.164 (`+31612345678`).
    E164 = 1,
    /// Not parseable as a phone number (short code, alphanumeric sender id, junk):
    /// kept in a canonical raw form, see [`canonical_raw`].
    Raw = 2,
    /// An e-mail address, domain lower-cased, local part as given.
    Email = 3,
}

impl Form {
    pub fn from_u8(v: u8) -> Option<Form> {
        match v {
            1 => Some(Form::E164),
            2 => Some(Form::Raw),
            3 => Some(Form::Email),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Form::E164 => "e164",
            Form::Raw => "raw",
            Form::Email => "email",
        }
    }
}

/// A normalised identifier: the value the blind index and the sealed copy are made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identifier {
    pub form: Form,
    pub value: String,
}

/// The longest identifier relaylog records. Longer input is cut (at a char boundary)
/// so that a hostile client cannot make one record arbitrarily large.
pub const MAX_IDENTIFIER_BYTES: usize = 256;

/// Normalises phone numbers with a default region for national formats.
///
/// ```
/// use relaylog::canonical::{Form, NumberNormalizer};
/// let nl = NumberNormalizer::new(phonenumber::country::Id::NL);
/// let id = nl.normalize("06-1234 5678");
/// assert_eq!((id.form, id.value.as_str()), (Form::E164, "+31612345678"));
/// assert_eq!(nl.normalize("ACME").form, Form::Raw);
/// ```
///
/// `phonenumber` loads its metadata on first use (~100 ms): [`NumberNormalizer::new`]
/// warms it so the first request does not pay for it.
#[derive(Debug, Clone, Copy)]
pub struct NumberNormalizer {
    region: country::Id,
}

impl NumberNormalizer {
    pub fn new(region: country::Id) -> Self {
        let n = Self { region };
        let _ = n.normalize("+31612345678");
        n
    }

    /// E.164 when the number parses, otherwise the canonical raw form marked
    /// [`Form::Raw`]. Idempotent: normalising the output again yields the output.
    pub fn normalize(&self, input: &str) -> Identifier {
        let raw = canonical_raw(input);
        if let Some(e164) = self.parse_e164(&raw) {
            return Identifier {
                form: Form::E164,
                value: e164,
            };
        }
        Identifier {
            form: Form::Raw,
            value: raw,
        }
    }

    fn parse_e164(&self, raw: &str) -> Option<String> {
        // A phone number has at most 15 digits (E.164) and at least a few; anything
        // else is not worth handing to the parser. Letters mean an alphanumeric sender.
        let digits = raw.bytes().filter(u8::is_ascii_digit).count();
        if !(3..=17).contains(&digits) || raw.bytes().any(|b| !(b.is_ascii_digit() || b == b'+')) {
            return None;
        }
        let region = self.region;
        // phonenumber has panicked on odd input in the past; a panic here must not take
        // a connection down with it.
        let parsed = std::panic::catch_unwind(|| phonenumber::parse(Some(region), raw)).ok()?;
        let number = parsed.ok()?;
        // Only a number the metadata knows as valid gets the E.164 form: a guess (such
        // as `31612345678` read as a national NL number) would index a value no one
        // typed; the raw form matches what the client sent.
        if !number.is_valid() {
            return None;
        }
        let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
        // Only a result that is itself stable counts: "+" followed by digits.
        let stable = e164.len() > 1
            && e164.starts_with('+')
            && e164[1..].bytes().all(|b| b.is_ascii_digit())
            && e164.len() <= 16;
        stable.then_some(e164)
    }
}

/// The canonical raw form of a number-like string: surrounding white space and the
/// visual separators people type (` -.()/`) removed, a leading `00` kept as given,
/// length capped. Idempotent.
pub fn canonical_raw(input: &str) -> String {
    let mut out = String::with_capacity(input.len().min(MAX_IDENTIFIER_BYTES));
    for c in input.trim().chars() {
        if matches!(c, ' ' | '-' | '.' | '(' | ')' | '/' | '\t') {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_IDENTIFIER_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

/// An e-mail address: domain lower-cased, local part kept as given (RFC 5321 leaves
/// its case to the receiving domain). Returns a raw form when there is no `@`.
pub fn normalize_email(input: &str) -> Identifier {
    let trimmed = cap(input.trim().trim_start_matches('<').trim_end_matches('>'));
    match trimmed.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Identifier {
            form: Form::Email,
            value: format!("{local}@{}", domain.to_ascii_lowercase()),
        },
        _ => Identifier {
            form: Form::Raw,
            value: trimmed.to_owned(),
        },
    }
}

/// An IP address in canonical text: IPv4-mapped IPv6 shown as IPv4, IPv6 compressed.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An account name as recorded: trimmed and capped, case kept (gateways compare
/// user names case-sensitively).
pub fn canonical_account(input: &str) -> String {
    cap(input.trim()).to_owned()
}

fn cap(s: &str) -> &str {
    if s.len() <= MAX_IDENTIFIER_BYTES {
        return s;
    }
    let mut end = MAX_IDENTIFIER_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nl() -> NumberNormalizer {
        NumberNormalizer::new(country::Id::NL)
    }

    #[test]
    fn numbers_normalise_to_e164_or_raw() {
        let cases = [
            ("+31612345678", Form::E164, "+31612345678"),
            ("0612345678", Form::E164, "+31612345678"),
            ("06-1234 5678", Form::E164, "+31612345678"),
            ("+31 (0)6 12345678", Form::E164, "+31612345678"),
            ("0031612345678", Form::E164, "+31612345678"),
            ("+44 20 7946 0958", Form::E164, "+442079460958"),
            ("ACME", Form::Raw, "ACME"),
            ("12", Form::Raw, "12"),
            ("  +31 6 1234  ", Form::Raw, "+3161234"),
        ];
        for (input, form, value) in cases {
            let id = nl().normalize(input);
            assert_eq!(
                (id.form, id.value.as_str()),
                (form, value),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn email_lowercases_domain_only() {
        let id = normalize_email("<Jan.Jansen@Example.NL>");
        assert_eq!(id.form, Form::Email);
        assert_eq!(id.value, "Jan.Jansen@example.nl");
        assert_eq!(normalize_email("nobody").form, Form::Raw);
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        let ip: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(canonical_ip(ip).to_string(), "203.0.113.7");
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_ip(ip), ip);
    }

    #[test]
    fn long_input_is_capped_at_a_char_boundary() {
        let long = "é".repeat(400);
        assert!(canonical_account(&long).len() <= MAX_IDENTIFIER_BYTES);
        assert!(canonical_raw(&long).len() <= MAX_IDENTIFIER_BYTES);
    }

    proptest! {
        #[test]
        fn number_normalisation_is_idempotent(s in "[+0-9 ()./A-Za-z-]{0,24}") {
            let n = nl();
            let once = n.normalize(&s);
            let twice = n.normalize(&once.value);
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn digits_only_numbers_are_idempotent(s in "\\+?[0-9]{3,16}") {
            let n = nl();
            let once = n.normalize(&s);
            prop_assert_eq!(n.normalize(&once.value), once);
        }
    }
}
