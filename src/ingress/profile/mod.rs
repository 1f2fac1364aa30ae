//! API profiles: how to find a message's metadata in a request, and its outcome in the
//! upstream's reply. Parsers only: they read a borrowed view of a request, do no I/O and
//! keep nothing but the metadata. Message text is measured (for the segment count),
//! never copied.

pub mod jasmin;
pub mod json;
pub mod kannel;

use std::borrow::Cow;

use http::{Method, StatusCode};

use crate::http1::{self, Fields};

use crate::config::{Profile, ProfileKind};
use crate::record::Outcome;

/// Most recipients accepted in one request. Kannel splits `to` itself; a request past
/// this is refused rather than recorded in part.
pub const MAX_RECIPIENTS: usize = 1_000;

/// A request as the parsers see it: everything borrowed, the body already bounded.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: Fields<'a>,
    pub body: &'a [u8],
}

/// Method, path, header names and the body's size: the query, header values and body
/// may hold passwords and message text.
impl std::fmt::Debug for RequestView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestView")
            .field("method", self.method)
            .field("path", &self.path)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl<'a> RequestView<'a> {
    pub fn of(head: &'a http::request::Parts, body: &'a [u8]) -> Self {
        Self {
            method: &head.method,
            path: head.uri.path(),
            query: head.uri.query(),
            headers: Fields::Map(&head.headers),
            body,
        }
    }
}

/// The metadata of one message, still as the client wrote it (not normalised).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extracted {
    pub account: String,
    pub originator: Option<String>,
    pub recipients: Vec<String>,
    /// Length of the text in characters (or octets for binary content), for segments.
    pub text_chars: usize,
    /// 0 GSM 7-bit, 1 8-bit, 2 UCS-2.
    pub coding: u8,
}

/// Why a request that carries a message cannot be recorded, and so is not relayed.
/// Messages name the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("missing receiver number (to)")]
    MissingRecipient,
    #[error("missing account (username)")]
    MissingAccount,
    #[error("more than {MAX_RECIPIENTS} recipients in one request")]
    TooManyRecipients,
    #[error("malformed XML body")]
    MalformedXml,
    #[error("malformed JSON body")]
    MalformedJson,
    #[error("field {0} has the wrong type")]
    WrongType(&'static str),
    #[error("content type not understood for a message submission")]
    UnsupportedContentType,
    #[error("malformed Authorization header")]
    BadAuthorization,
    /// A message parameter given twice (or under two of its names): the relay and the
    /// gateway could each read a different one, so the request is ambiguous.
    #[error("field {0} given more than once")]
    Duplicate(&'static str),
    /// Neither the message path nor one the listener passes through: relaylog forwards
    /// only what it knows to carry no message, or what it records.
    #[error("unknown path")]
    UnknownPath,
    /// The message path with a method that sends no message (the JSON profile: not POST).
    #[error("method not allowed on the message path")]
    MethodNotAllowed,
    /// The `Connection` header names an end-to-end header: it would not be forwarded
    /// (a proxy drops the headers `Connection` names) while relaylog read it.
    #[error("Connection header names a header that carries the message")]
    ConnectionNamesHeader,
    /// A percent-escape that is not `%` and two hex digits, or a control character in
    /// a field: gateways decode these differently (Kannel cuts a name at a trailing
    /// `%`), so what relaylog reads may not be what the gateway acts on.
    #[error("malformed escape or control character in field {0}")]
    MalformedField(&'static str),
    /// A path with dot segments or an encoded `/` or `\\`: routers resolve these in
    /// different ways.
    #[error("ambiguous path")]
    AmbiguousPath,
}

impl ParseError {
    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingRecipient => "missing_recipient",
            Self::MissingAccount => "missing_account",
            Self::TooManyRecipients => "too_many_recipients",
            Self::MalformedXml => "malformed_xml",
            Self::MalformedJson => "malformed_json",
            Self::WrongType(_) => "wrong_type",
            Self::UnsupportedContentType => "unsupported_content_type",
            Self::BadAuthorization => "bad_authorization",
            Self::Duplicate(_) => "duplicate_field",
            Self::UnknownPath => "unknown_path",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::ConnectionNamesHeader => "connection_header",
            Self::MalformedField(_) => "malformed_field",
            Self::AmbiguousPath => "ambiguous_path",
        }
    }

    /// The HTTP status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownPath => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// What a request is, to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extract {
    /// Not a message submission (another path, a status query): forward, no record.
    Passthrough,
    Message(Extracted),
}

/// The upstream's answer, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    pub outcome: Outcome,
    pub gateway_code: Option<i32>,
    pub message_id: Option<String>,
}

/// A request path as a web framework in front of a gateway may route it: percent-escapes
/// decoded, empty segments dropped, `;parameters` cut from each segment, ASCII
/// lower-cased, no trailing slash. So `/send/`, `//send`, `/%73end` and `/Send;x=1`
/// are all `/send`. Matching more spellings than a gateway does only ever records more,
/// never less. Paths that routers resolve in different ways (dot segments, an encoded
/// `/` or `\\`, a `\\`) are not guessed at: `None`, and the request is refused.
pub fn normalize_path(path: &str) -> Option<String> {
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
    let decoded = String::from_utf8_lossy(&decoded);
    let raw_slashes = path.matches('/').count();
    if decoded.contains('\\') || decoded.matches('/').count() != raw_slashes {
        return None;
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for segment in decoded.split('/') {
        let segment = segment.split(';').next().unwrap_or("");
        match segment {
            "" => {}
            "." | ".." => return None,
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out.make_ascii_lowercase();
    Some(out)
}

/// Refuses a request whose `Connection` header names a header relaylog reads (the
/// content type, framing, `Authorization`, `X-Kannel-*`): a proxy drops what
/// `Connection` names, so the gateway would not see what relaylog read. Other names
/// (`keep-alive`, `Upgrade, HTTP2-Settings`, …) only drop headers no profile reads.
fn check_connection(headers: Fields<'_>) -> Result<(), ParseError> {
    for value in headers.get_all("connection") {
        let value = http1::text(value).ok_or(ParseError::ConnectionNamesHeader)?;
        for token in value.split(',').map(str::trim) {
            let token = token.to_ascii_lowercase();
            let read = matches!(
                token.as_str(),
                "content-type" | "content-length" | "authorization" | "host"
            ) || token.starts_with("x-kannel-");
            if read {
                return Err(ParseError::ConnectionNamesHeader);
            }
        }
    }
    Ok(())
}

/// The value of the header `name`, if there is one; two are refused as a duplicate
/// `label`: parsers differ on which one counts, and so may the hops after relaylog.
fn single<'a>(
    headers: Fields<'a>,
    name: &'a str,
    label: &'static str,
) -> Result<Option<&'a [u8]>, ParseError> {
    let mut all = headers.get_all(name);
    let first = all.next();
    if all.next().is_some() {
        return Err(ParseError::Duplicate(label));
    }
    Ok(first)
}

/// Refuses a request with two `Host` headers (RFC 9112 §3.2: a server answers 400):
/// the gateway and anything between could each take another one.
fn check_host(headers: Fields<'_>) -> Result<(), ParseError> {
    single(headers, "host", "Host").map(|_| ())
}

/// Refuses a request with two `Content-Type` headers or one that is not plain text
/// (relaylog would not read it; a gateway might, up to its first `;`).
fn check_content_type(headers: Fields<'_>) -> Result<(), ParseError> {
    let first = single(headers, "content-type", "Content-Type")?;
    if first.is_some_and(|v| http1::text(v).is_none()) {
        return Err(ParseError::MalformedField("Content-Type"));
    }
    Ok(())
}

impl Profile {
    pub fn extract(&self, req: &RequestView<'_>) -> Result<Extract, ParseError> {
        check_connection(req.headers)?;
        check_host(req.headers)?;
        check_content_type(req.headers)?;
        // The exact configured path is the hot path: no normalisation, no allocation.
        if req.path != self.path {
            // Passthrough paths match as configured (a trailing slash aside): only what
            // the operator named goes through unrecorded.
            let trimmed = req.path.strip_suffix('/').unwrap_or(req.path);
            if self.passthrough.iter().any(|p| p == trimmed) {
                return Ok(Extract::Passthrough);
            }
            let path = normalize_path(req.path).ok_or(ParseError::AmbiguousPath)?;
            if path != self.message_path {
                return Err(ParseError::UnknownPath);
            }
        }
        match self.kind {
            ProfileKind::Kannel => kannel::extract(req),
            ProfileKind::Jasmin => jasmin::extract(req),
            ProfileKind::Json => match &self.json {
                Some(cfg) => json::extract(cfg, req),
                None => Ok(Extract::Passthrough),
            },
        }
    }

    /// Reads the outcome from the upstream's status and (bounded) body.
    pub fn read_outcome(&self, status: StatusCode, body: &[u8]) -> ReadOutcome {
        let outcome = outcome_of(status);
        match self.kind {
            ProfileKind::Kannel => ReadOutcome {
                outcome,
                gateway_code: kannel::reply_code(body),
                message_id: None,
            },
            ProfileKind::Jasmin => ReadOutcome {
                outcome,
                gateway_code: None,
                message_id: jasmin::reply_message_id(status, body),
            },
            ProfileKind::Json => ReadOutcome {
                outcome,
                gateway_code: None,
                message_id: self
                    .json
                    .as_ref()
                    .and_then(|c| c.message_id_pointer.as_deref())
                    .and_then(|p| json::reply_message_id(p, body)),
            },
        }
    }
}

pub fn outcome_of(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Accepted
    } else if status.is_client_error() {
        Outcome::Rejected
    } else {
        Outcome::Failed
    }
}

/// Longest upstream message id kept.
const MAX_MESSAGE_ID: usize = 128;

fn bounded_id(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s.len() <= MAX_MESSAGE_ID).then(|| s.to_owned())
}

/// Splits a recipient list on white space as Kannel does (C `isspace`: space, tab,
/// line feed, vertical tab, form feed, carriage return; `+` in a query has already
/// become a space).
fn split_recipients(to: &str, out: &mut Vec<String>) -> Result<(), ParseError> {
    let space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r');
    for number in to.split(space).filter(|n| !n.is_empty()) {
        if out.len() == MAX_RECIPIENTS {
            return Err(ParseError::TooManyRecipients);
        }
        out.push(number.to_owned());
    }
    Ok(())
}

/// The media type of a request, lower-cased, without parameters.
fn media_type(headers: Fields<'_>) -> Option<String> {
    let v = http1::text(headers.get("content-type")?)?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// The form fields of a request that a sendsms-style API reads: its query string, and a
/// form-encoded body if there is one. The body wins where both name a field.
struct FormFields<'a> {
    query: Option<&'a str>,
    body: Option<&'a [u8]>,
}

impl<'a> FormFields<'a> {
    fn of(req: &RequestView<'a>) -> Self {
        let form_body = *req.method == Method::POST
            && media_type(req.headers).as_deref() == Some("application/x-www-form-urlencoded");
        Self {
            query: req.query,
            body: form_body.then_some(req.body),
        }
    }

    /// Visits every (name, value) pair, query first, then body. Stops at the first
    /// error `f` returns.
    ///
    /// A malformed percent-escape anywhere is refused, and so is a control character
    /// in a name (see [`ParseError::MalformedField`]); the profiles check the values
    /// they record with [`identity`].
    ///
    /// Pairs are split as `application/x-www-form-urlencoded` says (and as
    /// `form_urlencoded::parse` does): on `&`, empty ones skipped, at the first `=`.
    /// Names are decoded; a value only when the profile asks for it ([`FormValue`]):
    /// a password is never decoded, and a text is counted where it lies.
    fn each(
        &self,
        mut f: impl FnMut(&str, FormValue<'_>) -> Result<(), ParseError>,
    ) -> Result<(), ParseError> {
        for part in [self.query.map(str::as_bytes), self.body]
            .into_iter()
            .flatten()
        {
            check_escapes(part)?;
            for pair in part.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
                let (name, value) = match pair.iter().position(|&b| b == b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, &pair[pair.len()..]),
                };
                let name = match plain(name) {
                    Some(name) => Cow::Borrowed(name),
                    None => {
                        let name = form_decode(name);
                        if has_control(&name) {
                            return Err(ParseError::MalformedField("(a field name)"));
                        }
                        name
                    }
                };
                f(&name, FormValue(value))?;
            }
        }
        Ok(())
    }
}

/// A form field's value as it came (still `+`- and percent-encoded).
#[derive(Clone, Copy)]
struct FormValue<'a>(&'a [u8]);

impl<'a> FormValue<'a> {
    /// The decoded value (invalid UTF-8 replaced, as `form_urlencoded` does).
    fn text(self) -> Cow<'a, str> {
        form_decode(self.0)
    }

    /// The decoded value of a field relaylog records (account, originator, recipients),
    /// checked as [`identity`] checks it, and refused if it is not UTF-8: replacing
    /// invalid sequences would record two different values (`%FF`, `%FE`) as one,
    /// while the gateway acts on the octets.
    fn identity(self, field: &'static str) -> Result<Cow<'a, str>, ParseError> {
        if let Some(value) = plain(self.0) {
            return Ok(Cow::Borrowed(value));
        }
        let value: Option<Cow<'a, str>> = match form_octets(self.0) {
            Cow::Borrowed(octets) => std::str::from_utf8(octets).ok().map(Cow::Borrowed),
            Cow::Owned(octets) => String::from_utf8(octets).ok().map(Cow::Owned),
        };
        let value = value.ok_or(ParseError::MalformedField(field))?;
        identity(field, &value)?;
        Ok(value)
    }

    /// How many characters [`text`](Self::text) has, without building it when nothing
    /// is percent-encoded (a `+` is one character either way).
    fn chars(self) -> usize {
        if !self.0.contains(&b'%')
            && let Ok(s) = std::str::from_utf8(self.0)
        {
            return s.chars().count();
        }
        self.text().chars().count()
    }
}

/// A form name or value as it stands when decoding would change nothing and it holds no
/// control character: printable ASCII other than `%` and `+` (what clients send for
/// names, numbers and accounts): an ASCII scan, where decoding and then checking took
/// several passes and, for a value, a copy when it held a `+`.
fn plain(raw: &[u8]) -> Option<&str> {
    if raw
        .iter()
        .all(|&b| b.is_ascii_graphic() && b != b'%' && b != b'+')
    {
        std::str::from_utf8(raw).ok()
    } else {
        None
    }
}

/// `+` to space, then percent-decoding, then UTF-8 with invalid sequences replaced:
/// `form_urlencoded`'s decoding, borrowing wherever it has nothing to change.
fn form_decode(raw: &[u8]) -> Cow<'_, str> {
    match form_octets(raw) {
        Cow::Borrowed(bytes) => String::from_utf8_lossy(bytes),
        Cow::Owned(bytes) => Cow::Owned(
            String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
    }
}

/// The octets a form value stands for: `+` to space, then percent-decoding.
fn form_octets(raw: &[u8]) -> Cow<'_, [u8]> {
    let spaced: Cow<'_, [u8]> = if raw.contains(&b'+') {
        Cow::Owned(
            raw.iter()
                .map(|&b| if b == b'+' { b' ' } else { b })
                .collect(),
        )
    } else {
        Cow::Borrowed(raw)
    };
    match percent_encoding::percent_decode(&spaced).into() {
        Cow::Owned(bytes) => Cow::Owned(bytes),
        Cow::Borrowed(_) => spaced,
    }
}

/// Every `%` is followed by two hex digits.
fn check_escapes(raw: &[u8]) -> Result<(), ParseError> {
    let mut i = 0;
    while let Some(at) = raw[i..].iter().position(|&b| b == b'%') {
        let at = i + at;
        match raw.get(at + 1..at + 3) {
            Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => i = at + 3,
            _ => return Err(ParseError::MalformedField("(a percent-escape)")),
        }
    }
    Ok(())
}

/// A value relaylog records (account, originator, recipients), refused if it holds a
/// control character: gateways written in C may cut it there.
fn identity<'v>(field: &'static str, v: &'v str) -> Result<&'v str, ParseError> {
    if has_control(v) || v.contains('\0') {
        return Err(ParseError::MalformedField(field));
    }
    Ok(v)
}

/// A C0 control character or DEL, other than recipient-separating white space.
fn has_control(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_ascii_control() && !matches!(c, '\t' | '\n' | '\x0b' | '\x0c' | '\r'))
}

/// The message parameters of a form-style API, each with its names (aliases), the
/// first being the one errors give. At most 64.
type Params = &'static [&'static [&'static str]];

/// Which of an API's message parameters a request has given so far, wherever it gave
/// them (query, form body, headers). A gateway reads one occurrence of a parameter,
/// Kannel the first and others the last; relaylog cannot know which, so a parameter
/// given twice, or under two of its names, is refused rather than guessed at.
#[derive(Debug, Default)]
struct Seen(u64);

const _: () = assert!(kannel::PARAM_COUNT <= 64 && jasmin::PARAM_COUNT <= 64);

impl Seen {
    /// Notes one occurrence of `name`: its index in `params`, `None` for a name that is
    /// not a message parameter.
    fn note(&mut self, params: Params, name: &str) -> Result<Option<usize>, ParseError> {
        let Some(i) = params.iter().position(|names| names.contains(&name)) else {
            return Ok(None);
        };
        self.once(params, i)?;
        Ok(Some(i))
    }

    /// Notes parameter `i`, refusing a second occurrence.
    fn once(&mut self, params: Params, i: usize) -> Result<(), ParseError> {
        let bit = 1u64 << i;
        if self.0 & bit != 0 {
            return Err(ParseError::Duplicate(params[i][0]));
        }
        self.0 |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Profile, ProfileKind};
    use http::HeaderMap;

    /// Review of issue 10: a `Connection` header that names a header relaylog reads
    /// makes the proxy drop it on the way; passthrough paths match as configured, so
    /// `/send/../balance` is no way around the record.
    #[test]
    fn requests_the_gateway_would_read_otherwise_are_refused() {
        let jasmin = Profile::new(
            ProfileKind::Jasmin,
            "/send".into(),
            ProfileKind::Jasmin.default_passthrough(),
            None,
        );
        let mut h = HeaderMap::new();
        fn view<'a>(path: &'a str, h: &'a HeaderMap) -> RequestView<'a> {
            RequestView {
                method: &Method::GET,
                path,
                query: Some("username=a&to=1"),
                headers: Fields::Map(h),
                body: b"",
            }
        }
        let empty = &HeaderMap::new();
        assert_eq!(
            jasmin.extract(&view("/balance", empty)),
            Ok(Extract::Passthrough)
        );
        assert_eq!(
            jasmin.extract(&view("/balance/", empty)),
            Ok(Extract::Passthrough)
        );
        for path in ["/send/../balance", "/send%2F..%2Fbalance", "/x/../send"] {
            assert_eq!(
                jasmin.extract(&view(path, empty)),
                Err(ParseError::AmbiguousPath),
                "{path}"
            );
        }
        assert_eq!(
            jasmin.extract(&view("/Balance", empty)),
            Err(ParseError::UnknownPath)
        );
        h.insert(
            "connection",
            http::HeaderValue::from_static("keep-alive, content-type"),
        );
        let h = &h;
        assert_eq!(
            jasmin.extract(&view("/send", h)),
            Err(ParseError::ConnectionNamesHeader)
        );
        let mut ok = HeaderMap::new();
        ok.insert(
            "connection",
            http::HeaderValue::from_static("Keep-Alive, close, TE"),
        );
        let ok = &ok;
        assert!(matches!(
            jasmin.extract(&view("/send", ok)),
            Ok(Extract::Message(_))
        ));
    }

    /// The fast path's fields, as received: names in any case, repeats kept. What the
    /// profiles refuse in a header map they refuse here too.
    #[test]
    fn fields_as_received_are_read_as_a_header_map_is() {
        let kannel = Profile::new(
            ProfileKind::Kannel,
            "/cgi-bin/sendsms".into(),
            ProfileKind::Kannel.default_passthrough(),
            None,
        );
        let post = |headers: &[httparse::Header<'_>]| {
            kannel.extract(&RequestView {
                method: &Method::POST,
                path: "/cgi-bin/sendsms",
                query: None,
                headers: Fields::Raw(headers),
                body: b"hi",
            })
        };
        let h = |name, value| httparse::Header { name, value };
        let plain = h("Content-Type", &b"text/plain"[..]);
        let user = h("X-KANNEL-USERNAME", b"acct");
        let Ok(Extract::Message(m)) = post(&[plain, user, h("x-Kannel-To", b"+31612345678")])
        else {
            panic!("a text/plain POST with X-Kannel-* headers in any case is a message");
        };
        assert_eq!((m.account.as_str(), m.recipients.len()), ("acct", 1));
        assert_eq!(
            post(&[plain, user, h("X-Kannel-To", b"1"), h("x-kannel-to", b"2")]),
            Err(ParseError::Duplicate("to"))
        );
        assert_eq!(
            post(&[
                plain,
                user,
                h("X-Kannel-To", b"1"),
                h("Connection", b"X-KANNEL-TO")
            ]),
            Err(ParseError::ConnectionNamesHeader)
        );
        assert_eq!(
            post(&[plain, h("content-type", b"text/xml"), user]),
            Err(ParseError::Duplicate("Content-Type"))
        );
        assert_eq!(
            post(&[plain, user, h("Host", b"a"), h("host", b"b")]),
            Err(ParseError::Duplicate("Host"))
        );
    }

    #[test]
    fn paths_normalise_as_a_router_would_match_them() {
        for (path, expected) in [
            ("/send", Some("/send")),
            ("/send/", Some("/send")),
            ("//send", Some("/send")),
            ("/%73end", Some("/send")),
            ("/%73%65%6E%64", Some("/send")),
            ("/SEND", Some("/send")),
            ("/send;x=1", Some("/send")),
            ("/", Some("/")),
            ("", Some("/")),
            ("/%zz", Some("/%zz")),
            ("/sendx", Some("/sendx")),
            // Routers resolve these differently: refused, not guessed at.
            ("/a/../send", None),
            ("/./send", None),
            ("/send/..", None),
            ("/%2e%2e/send", None),
            ("/cgi-bin%2Fsendsms", None),
            ("/cgi-bin%5Csendsms", None),
            ("\\send", None),
        ] {
            assert_eq!(normalize_path(path).as_deref(), expected, "{path}");
        }
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// The form reader splits and decodes as `form_urlencoded` does (which it
        /// replaced on the hot path), counts a value's characters as its decoded text
        /// has them, and reads a recorded field strictly (UTF-8, no control
        /// character) or refuses it, for any bytes whose escapes are well formed.
        #[test]
        fn form_fields_read_as_form_urlencoded_does(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    // Mostly what forms are made of, so that most inputs are read
                    // whole: separators, escapes (some of invalid UTF-8), letters.
                    4 => proptest::sample::select(vec!["&", "=", "+", "a", "Z", "9", " ", "é"])
                        .prop_map(|p| p.as_bytes().to_vec()),
                    3 => "%[0-9A-Fa-f]{2}".prop_map(String::into_bytes),
                    // Any byte: stray `%`, control characters, invalid UTF-8.
                    1 => proptest::prelude::any::<u8>().prop_map(|b| vec![b]),
                ],
                0..40,
            )
        ) {
            let raw: Vec<u8> = pieces.concat();
            let fields = FormFields { query: None, body: Some(&raw) };
            let mut ours = Vec::new();
            let read = fields.each(|k, v| {
                // A recorded field's strict reading: the text itself where that is
                // UTF-8 with no control character, a refusal otherwise.
                let strict = std::str::from_utf8(&form_octets(v.0)).is_ok_and(|t| identity("f", t).is_ok());
                match v.identity("f") {
                    Ok(t) => assert!(strict && t == v.text()),
                    Err(e) => assert!(!strict && e == ParseError::MalformedField("f")),
                }
                ours.push((k.to_owned(), v.text().into_owned(), v.chars()));
                Ok(())
            });
            let theirs: Vec<(String, String)> = form_urlencoded::parse(&raw)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            match read {
                // Refused: a malformed escape, or a control character in a name.
                Err(_) => proptest::prop_assert!(
                    check_escapes(&raw).is_err() || theirs.iter().any(|(k, _)| has_control(k))
                ),
                Ok(()) => {
                    for (_, text, chars) in &ours {
                        proptest::prop_assert_eq!(*chars, text.chars().count());
                    }
                    let ours: Vec<(String, String)> =
                        ours.into_iter().map(|(k, v, _)| (k, v)).collect();
                    proptest::prop_assert_eq!(ours, theirs);
                }
            }
        }
    }
}
