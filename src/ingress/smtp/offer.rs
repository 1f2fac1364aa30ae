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

/// Follows an AUTH PLAIN or LOGIN exchange, seeing each client response once, and
/// keeps the authentication identity. The password is decoded only to be skipped and
/// is dropped with the response.
#[derive(Debug)]
pub struct AuthWatch {
    mechanism: Mechanism,
    responses: usize,
    identity: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mechanism {
    Plain,
    Login,
}

impl AuthWatch {
    /// For `AUTH <mechanism> [initial-response]`; `None` for a mechanism not passed.
    pub fn start(args: &[u8]) -> Option<(AuthWatch, Option<&[u8]>)> {
        let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let mechanism = match words.next()?.to_ascii_uppercase().as_slice() {
            b"PLAIN" => Mechanism::Plain,
            b"LOGIN" => Mechanism::Login,
            _ => return None,
        };
        let initial = words.next();
        if words.next().is_some() {
            return None;
        }
        let mut watch = AuthWatch {
            mechanism,
            responses: 0,
            identity: None,
        };
        if let Some(r) = initial {
            watch.response(r);
        }
        Some((watch, initial))
    }

    /// A client response (base64, `=` for empty, `*` to cancel).
    pub fn response(&mut self, line: &[u8]) {
        self.responses += 1;
        if self.responses != 1 || line == b"*" {
            return;
        }
        let line = if line == b"=" { &b""[..] } else { line };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(line) else {
            return;
        };
        let identity = match self.mechanism {
            // authzid NUL authcid NUL passwd: the authentication identity is authcid.
            Mechanism::Plain => decoded.split(|&b| b == 0).nth(1).map(<[u8]>::to_vec),
            // The first response is the user name; the second, never kept, the password.
            Mechanism::Login => Some(decoded),
        };
        self.identity = identity
            .and_then(|i| String::from_utf8(i).ok())
            .filter(|i| !i.is_empty() && !i.chars().any(char::is_control));
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
        let args = format!("PLAIN {plain}");
        let (watch, initial) = AuthWatch::start(args.as_bytes()).unwrap();
        assert!(initial.is_some());
        assert_eq!(watch.identity().as_deref(), Some("alice@example.com"));

        let (mut watch, initial) = AuthWatch::start(b"login").unwrap();
        assert!(initial.is_none());
        watch.response(b64(b"bob").as_bytes());
        watch.response(b64(b"canary-password").as_bytes());
        let kept = format!("{watch:?}");
        assert!(!kept.contains("canary"), "{kept}");
        assert_eq!(watch.identity().as_deref(), Some("bob"));

        let (mut watch, _) = AuthWatch::start(b"PLAIN").unwrap();
        watch.response(b"*");
        assert_eq!(watch.identity(), None);
        assert!(AuthWatch::start(b"CRAM-MD5").is_none());
        assert!(AuthWatch::start(b"PLAIN a b").is_none());
    }
}
