//! The two places where relaylog reads more of a session than the envelope: the
//! upstream's EHLO offer, which it edits, and the AUTH exchange, from which it takes the
//! authentication identity (never the password).

use base64::Engine;

use crate::smtp::Reply;

/// The extensions passed on to clients, as the upstream offers them. Everything else
/// is dropped: STARTTLS (relaylog offers its own), XCLIENT and XFORWARD (only relaylog
/// may say who the client is), BINARYMIME (BDAT carries it, but relaylog does not
/// check BODY= against it), ETRN, ATRN, EXPN and vendor extensions (not proxied).
const PASSED: &[&str] = &[
    "PIPELINING",
    "SIZE",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "DSN",
    "CHUNKING",
    "VRFY",
    "HELP",
];

/// The AUTH mechanisms relaylog passes through: those whose exchange names the user.
pub const MECHANISMS: &[&str] = &["PLAIN", "LOGIN"];

/// What a session may offer on top of (or instead of) the upstream's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Offer {
    /// STARTTLS: the listener has a certificate and the session is not under TLS yet.
    pub starttls: bool,
    /// AUTH: not while `require-tls` waits for STARTTLS.
    pub auth: bool,
    /// The listener's `max-message-bytes`.
    pub max_message_bytes: u64,
}

/// The upstream's EHLO reply, edited: its first line as sent, the extensions
/// relaylog proxies (AUTH narrowed to PLAIN and LOGIN, SIZE to the listener's limit
/// when that is lower), and STARTTLS when relaylog offers it.
pub fn edit_ehlo(reply: &Reply, offer: Offer) -> Reply {
    if reply.code != 250 {
        return reply.clone();
    }
    let mut lines: Vec<String> = Vec::new();
    let mut all = reply.lines();
    lines.push(String::from_utf8_lossy(all.next().unwrap_or_default()).into_owned());
    for ext in all {
        let ext = String::from_utf8_lossy(ext);
        let mut words = ext.split_ascii_whitespace();
        let Some(keyword) = words.next().map(str::to_ascii_uppercase) else {
            continue;
        };
        match keyword.as_str() {
            "AUTH" if offer.auth => {
                let mechs: Vec<&str> = words
                    .filter(|m| MECHANISMS.iter().any(|k| m.eq_ignore_ascii_case(k)))
                    .collect();
                if !mechs.is_empty() {
                    lines.push(format!("AUTH {}", mechs.join(" ")));
                }
            }
            "SIZE" => {
                let theirs: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let size = match theirs {
                    0 => offer.max_message_bytes,
                    n => n.min(offer.max_message_bytes),
                };
                lines.push(format!("SIZE {size}"));
            }
            k if PASSED.contains(&k) => lines.push(ext.into_owned()),
            _ => {}
        }
    }
    if offer.starttls {
        lines.push("STARTTLS".into());
    }
    let mut raw = Vec::new();
    let n = lines.len();
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == n { ' ' } else { '-' };
        raw.extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
    }
    Reply { code: 250, raw }
}

/// Does an EHLO reply offer `keyword` (`CHUNKING`), in any case?
pub fn offers(ehlo: &Reply, keyword: &[u8]) -> bool {
    ehlo.code == 250
        && ehlo.lines().skip(1).any(|l| {
            l.split(|&b| b == b' ')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
}

/// Follows an AUTH PLAIN or LOGIN exchange and keeps the identity the upstream will
/// know the client by. The password is decoded only to be skipped and is dropped with
/// the response.
///
/// - PLAIN (`authzid NUL authcid NUL password`, in the initial response or the first
///   response after a `334`): the authorization identity when one is given (what
///   Postfix and Cyrus then call the user), else the authentication identity.
/// - LOGIN: the response to the upstream's `Username:` challenge, or a non-empty
///   initial response (`AUTH LOGIN =` gives none; the server then asks).
///
/// Base64 is read as leniently as the SASL libraries read it (padding optional,
/// trailing bits ignored), so that no spelling the upstream accepts hides the identity.
#[derive(Debug)]
pub struct AuthWatch {
    mechanism: Mechanism,
    /// The next client response is the one that names the identity.
    naming: bool,
    identity: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mechanism {
    Plain,
    Login,
}

/// Why an AUTH command is answered by relaylog itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefusal {
    /// Not PLAIN or LOGIN: `504`.
    Mechanism,
    /// No mechanism, or more than one initial response: `501`.
    Syntax,
    /// PLAIN naming someone else to act as: `535`.
    Proxy,
    /// A user name with white space at either end, a NUL or a control character:
    /// `535`.
    Identity,
}

/// An identity as text, one for one: UTF-8 as it is, but for backslashes, control
/// characters and bytes that are not UTF-8, which are written as escapes (`\\`,
/// `\u{7}`, `\xff`), so that no two identities are recorded alike.
fn escape_identity(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Base64 as SASL implementations accept it.
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn decode(line: &[u8]) -> Option<Vec<u8>> {
    let line = if line == b"=" { &b""[..] } else { line };
    LENIENT.decode(line).ok()
}

impl AuthWatch {
    /// For `AUTH <mechanism> [initial-response]`.
    pub fn start(args: &[u8]) -> Result<AuthWatch, AuthRefusal> {
        let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let first = words.next().ok_or(AuthRefusal::Syntax)?;
        let mechanism = match first.to_ascii_uppercase().as_slice() {
            b"PLAIN" => Mechanism::Plain,
            b"LOGIN" => Mechanism::Login,
            _ => return Err(AuthRefusal::Mechanism),
        };
        let initial = words.next();
        if words.next().is_some() {
            return Err(AuthRefusal::Syntax);
        }
        let mut watch = AuthWatch {
            mechanism,
            naming: true,
            identity: None,
        };
        if let Some(r) = initial {
            watch.response(r)?;
        }
        Ok(watch)
    }

    /// A `334` challenge from the upstream, before the client's next response.
    pub fn challenge(&mut self, reply: &crate::smtp::Reply) {
        let text = reply.raw.get(4..).unwrap_or_default();
        let text = text.strip_suffix(b"\r\n").unwrap_or(text);
        let prompt = decode(text).unwrap_or_default().to_ascii_lowercase();
        match self.mechanism {
            // The server asks for the user name (again): its answer names the
            // identity, whatever came before.
            Mechanism::Login if prompt.starts_with(b"user") => {
                self.identity = None;
                self.naming = true;
            }
            Mechanism::Login => {}
            // PLAIN asked again after a response: the next response is the one.
            Mechanism::Plain if !self.naming => {
                self.identity = None;
                self.naming = true;
            }
            Mechanism::Plain => {}
        }
    }

    /// A client response (base64, `=` for empty, `*` to cancel). Refused: PLAIN with
    /// an authorization identity other than the login (proxy authentication), which
    /// upstreams honour differently; relaylog would not know whom to record.
    pub fn response(&mut self, line: &[u8]) -> Result<(), AuthRefusal> {
        if !std::mem::take(&mut self.naming) || line == b"*" {
            return Ok(());
        }
        let Some(decoded) = decode(line) else {
            return Ok(());
        };
        let identity = match self.mechanism {
            Mechanism::Plain => {
                let mut parts = decoded.split(|&b| b == 0);
                let authzid = parts.next().unwrap_or_default();
                let authcid = parts.next().unwrap_or_default();
                if !authzid.is_empty() && authzid != authcid {
                    return Err(AuthRefusal::Proxy);
                }
                authcid.to_vec()
            }
            Mechanism::Login => decoded,
        };
        // What the SASL library would strip or cut (white space at either end, a NUL
        // in a LOGIN name) or what no name holds (control characters): relaylog and
        // the upstream would not agree on whom to record.
        let trimmed = identity.trim_ascii();
        if trimmed.len() != identity.len() || identity.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(AuthRefusal::Identity);
        }
        self.identity = Some(escape_identity(&identity))
            .filter(|i| !i.is_empty() && i.len() <= crate::canonical::MAX_IDENTIFIER_BYTES);
        Ok(())
    }

    /// The identity, once the upstream has answered 235.
    pub fn identity(self) -> Option<String> {
        self.identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(raw: &str) -> Reply {
        Reply {
            code: raw[..3].parse().unwrap(),
            raw: raw.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_ehlo_offer_is_edited_only_where_it_must_be() {
        let up = reply(
            "250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n250-AUTH=PLAIN\r\n250-XCLIENT ADDR PORT\r\n250-XFORWARD NAME\r\n250-ETRN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
        );
        let offer = Offer {
            starttls: true,
            auth: true,
            max_message_bytes: 10_000_000,
        };
        let edited = String::from_utf8(edit_ehlo(&up, offer).raw).unwrap();
        assert_eq!(
            edited,
            "250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 10000000\r\n250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 STARTTLS\r\n"
        );
        let hidden = edit_ehlo(
            &up,
            Offer {
                starttls: false,
                auth: false,
                max_message_bytes: 100_000_000,
            },
        );
        let hidden = String::from_utf8(hidden.raw).unwrap();
        assert!(!hidden.contains("AUTH") && !hidden.contains("STARTTLS"));
        assert!(hidden.contains("250-SIZE 52428800\r\n"));
        assert!(hidden.ends_with("250 CHUNKING\r\n"));
        let refused = reply("550 5.7.1 go away\r\n");
        assert_eq!(edit_ehlo(&refused, offer), refused);
    }

    #[test]
    fn auth_keeps_the_identity_and_never_the_password() {
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let plain = b64(b"\0alice@example.com\0canary-password");
        let watch = AuthWatch::start(format!("PLAIN {plain}").as_bytes()).unwrap();
        assert_eq!(watch.identity().as_deref(), Some("alice@example.com"));
        // Acting as someone else is refused; naming oneself is not.
        let proxy = b64(b"bob\0alice\0canary-password");
        assert_eq!(
            AuthWatch::start(format!("PLAIN {proxy}").as_bytes()).unwrap_err(),
            AuthRefusal::Proxy
        );
        let same = b64(b"alice\0alice\0canary-password");
        let watch = AuthWatch::start(format!("PLAIN {same}").as_bytes()).unwrap();
        assert_eq!(watch.identity().as_deref(), Some("alice"));
        // Identities are kept one for one, however they are spelled.
        let odd = b64(b"\0a\\b\xff\0pw");
        let watch = AuthWatch::start(format!("PLAIN {odd}").as_bytes()).unwrap();
        assert_eq!(watch.identity().as_deref(), Some("a\\\\b\\xff"));
        // What the SASL library would trim or cut is refused.
        for name in [&b"\0\talice\0pw"[..], b"\0alice\n\0pw", b"\0al\x07ice\0pw"] {
            let plain = b64(name);
            assert_eq!(
                AuthWatch::start(format!("PLAIN {plain}").as_bytes()).unwrap_err(),
                AuthRefusal::Identity
            );
        }
        let mut watch = AuthWatch::start(b"LOGIN").unwrap();
        assert_eq!(
            watch.response(b64(b"alice\0x").as_bytes()),
            Err(AuthRefusal::Identity)
        );
        // Unpadded, or with trailing bits set, as SASL libraries accept it.
        let unpadded = plain.trim_end_matches('=');
        let watch = AuthWatch::start(format!("PLAIN {unpadded}").as_bytes()).unwrap();
        assert_eq!(watch.identity().as_deref(), Some("alice@example.com"));

        let challenge = |text: &[u8]| crate::smtp::Reply {
            code: 334,
            raw: format!("334 {}\r\n", b64(text)).into_bytes(),
        };
        let mut watch = AuthWatch::start(b"login").unwrap();
        watch.challenge(&challenge(b"Username:"));
        watch.response(b64(b"bob").as_bytes()).unwrap();
        watch.challenge(&challenge(b"Password:"));
        watch.response(b64(b"canary-password").as_bytes()).unwrap();
        let kept = format!("{watch:?}");
        assert!(!kept.contains("canary"), "{kept}");
        assert_eq!(watch.identity().as_deref(), Some("bob"));
        // `AUTH LOGIN =`: the server asks for the user name, which names the identity.
        let mut watch = AuthWatch::start(b"LOGIN =").unwrap();
        watch.challenge(&challenge(b"Username:"));
        watch.response(b64(b"carol").as_bytes()).unwrap();
        watch.challenge(&challenge(b"Password:"));
        watch.response(b64(b"canary-password").as_bytes()).unwrap();
        assert_eq!(watch.identity().as_deref(), Some("carol"));
        // An initial user name the server asks again for: the answer to its question
        // is the identity.
        let mut watch = AuthWatch::start(format!("LOGIN {}", b64(b"alice")).as_bytes()).unwrap();
        watch.challenge(&challenge(b"Username:"));
        watch.response(b64(b"bob").as_bytes()).unwrap();
        watch.challenge(&challenge(b"Password:"));
        watch.response(b64(b"canary-password").as_bytes()).unwrap();
        assert_eq!(watch.identity().as_deref(), Some("bob"));
        // A prompt that is not for the user name never names it (a password could).
        let mut watch = AuthWatch::start(b"LOGIN =").unwrap();
        watch.challenge(&challenge(b"Mot de passe:"));
        watch.response(b64(b"canary-password").as_bytes()).unwrap();
        assert_eq!(watch.identity(), None);

        let mut watch = AuthWatch::start(b"PLAIN").unwrap();
        watch.response(b"*").unwrap();
        assert_eq!(watch.identity(), None);
        assert_eq!(
            AuthWatch::start(b"CRAM-MD5").unwrap_err(),
            AuthRefusal::Mechanism
        );
        assert_eq!(
            AuthWatch::start(b"PLAIN a b").unwrap_err(),
            AuthRefusal::Syntax
        );
        assert_eq!(AuthWatch::start(b"").unwrap_err(), AuthRefusal::Syntax);
    }
}
