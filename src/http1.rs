//! HTTP/1.1 on the wire, for the relay's own fast path (see `ingress::http::lean`) and
//! its upstream client (`egress::http`): which requests the fast path takes, the
//! end-to-end headers a proxy passes on, the heads it writes, and a bounded reader of
//! an upstream's reply. Sans-IO but for [`read_reply`]; everything is bounded: heads by
//! [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`], bodies by the caller's limit.

use std::cell::RefCell;
use std::io::{self, Write};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most header fields in one head, request or reply (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// Largest head, request or reply (the request side is hyper's `max_buf_size`).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line (with extensions) of a chunked reply.
const MAX_CHUNK_LINE: usize = 1024;

/// Hop-by-hop headers (RFC 9110 §7.6.1) that a proxy must not forward.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// The header fields of a head: a hyper header map (requests hyper parsed) or httparse's
/// fields as received (the fast path). Names compare without case either way.
#[derive(Clone, Copy)]
pub enum Fields<'a> {
    Map(&'a HeaderMap),
    Raw(&'a [httparse::Header<'a>]),
}

/// Names only: values may be credentials.
impl std::fmt::Debug for Fields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(name, _)| name))
            .finish()
    }
}

/// The (name, value) pairs of [`Fields`], in order, repeated names repeated.
pub enum FieldsIter<'a> {
    Map(http::header::Iter<'a, HeaderValue>),
    Raw(std::slice::Iter<'a, httparse::Header<'a>>),
}

impl<'a> Iterator for FieldsIter<'a> {
    type Item = (&'a str, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            FieldsIter::Map(i) => i.next().map(|(n, v)| (n.as_str(), v.as_bytes())),
            FieldsIter::Raw(i) => i.next().map(|h| (h.name, h.value)),
        }
    }
}

impl<'a> Fields<'a> {
    pub fn iter(self) -> FieldsIter<'a> {
        match self {
            Fields::Map(m) => FieldsIter::Map(m.iter()),
            Fields::Raw(r) => FieldsIter::Raw(r.iter()),
        }
    }

    /// Every value of the header `name`, in order.
    pub fn get_all(self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of the header `name`.
    pub fn get(self, name: &'a str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    pub fn contains(self, name: &'a str) -> bool {
        self.get(name).is_some()
    }

    /// The comma-separated tokens of every `name` header, trimmed.
    pub fn tokens(self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
    }

    /// Whether a `Connection` header names `name`: a proxy drops those.
    pub fn named_by_connection(self, name: &str) -> bool {
        self.tokens("connection")
            .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// Whether `name` is passed on by a proxy: not hop-by-hop, not named by
    /// `Connection`, and not `Content-Length`, which the writer sets from the body.
    pub fn end_to_end(self, name: &str) -> bool {
        !HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
            && !name.eq_ignore_ascii_case("content-length")
            && !self.named_by_connection(name)
    }
}

/// A header value as text, as [`HeaderValue::to_str`] has it: visible ASCII and tabs.
pub fn text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// What the fast path does with a request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Relay it here: `content_length` body octets follow the head; `close`: the client
    /// asked to close after the reply.
    Lean { content_length: usize, close: bool },
    /// Leave it and the rest of the connection to hyper: HTTP/1.0, another method than
    /// GET or POST, a target not in origin form or with characters outside RFC 3986's, a body not framed by one plain
    /// Content-Length (chunked, several lengths), `Expect`, `Upgrade`.
    Hyper,
}

/// Decides who serves a parsed request head (see [`Take`]). Anything ambiguous goes to
/// hyper, which refuses or handles it as it always did: the fast path never frames a
/// body differently from it.
pub fn take(req: &httparse::Request<'_, '_>) -> Take {
    let plain_method = matches!(req.method, Some("GET" | "POST"));
    let origin_form = req
        .path
        .is_some_and(|p| p.starts_with('/') && p.bytes().all(uri_char));
    if req.version != Some(1) || !plain_method || !origin_form {
        return Take::Hyper;
    }
    let fields = Fields::Raw(req.headers);
    let mut length = None;
    for (name, value) in fields.iter() {
        if ["transfer-encoding", "expect", "upgrade"]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
        {
            return Take::Hyper;
        }
        if name.eq_ignore_ascii_case("content-length") {
            match (length, digits(value)) {
                (None, Some(n)) => length = Some(n),
                _ => return Take::Hyper,
            }
        }
    }
    Take::Lean {
        content_length: length.unwrap_or(0),
        close: fields
            .tokens("connection")
            .any(|t| t.eq_ignore_ascii_case(b"close")),
    }
}

/// Room for a head's header fields, left uninitialised for httparse's
/// `*_with_uninit_headers` parsers (the same parse as `parse`): they write the fields
/// they find, where filling MAX_HEADERS `EMPTY_HEADER`s first cost hundreds of
/// instructions a parse.
pub fn header_room<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// A character RFC 3986 allows in a path and query (no fragment): what hyper's URI
/// parser and the fast path read alike. A table: a search of the punctuation list for
/// each octet of a Kannel query string cost about 1,400 instructions per request.
fn uri_char(b: u8) -> bool {
    URI_CHARS[usize::from(b)]
}

const URI_PUNCTUATION: &[u8] = b"-._~!$&'()*+,;=:@/?%";

static URI_CHARS: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < URI_PUNCTUATION.len() {
        table[URI_PUNCTUATION[i] as usize] = true;
        i += 1;
    }
    table
};

/// A Content-Length value: decimal digits only, at most 18 of them.
fn digits(v: &[u8]) -> Option<usize> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// Writes a request for the upstream: the request line in origin form and HTTP/1.1,
/// `fields`' end-to-end headers (Host as given, or `host` in its place when set or when
/// the client sent none), a Content-Length for the body when it has one or the method
/// carries one, and the body. `host` (the upstream's authority) replaces the client's
/// Host when `rewrite_host` is set, and stands in for a Host the client did not send.
pub fn write_request(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    fields: Fields<'_>,
    (host, rewrite_host): (&str, bool),
    body: &[u8],
) {
    // Room for all of it at once (the head's fields are bounded by MAX_HEAD_BYTES): a
    // buffer that grew midway would leave what was written so far in the block it let
    // go, and the caller zeroes only the last.
    let fields_len: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    out.reserve(64 + method.len() + target.len() + host.len() + fields_len + body.len());
    let room = out.capacity();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Its own Host also when the client's would not go on (a `Connection: Host`):
    // the request always carries exactly one.
    let own_host = rewrite_host || !fields.contains("host") || !fields.end_to_end("host");
    if own_host {
        header(out, "host", host.as_bytes());
    }
    for (name, value) in fields.iter() {
        if fields.end_to_end(name) && !(own_host && name.eq_ignore_ascii_case("host")) {
            header(out, name, value);
        }
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        length(out, body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    debug_assert_eq!(out.capacity(), room, "a request outgrew its room");
}

/// Writes a reply head: the status line, `fields`' end-to-end headers, a Date if they
/// have none, the body's Content-Length, and `Connection: close` when closing.
pub fn write_reply_head(
    out: &mut Vec<u8>,
    status: u16,
    fields: Fields<'_>,
    body_len: usize,
    close: bool,
) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(b"HTTP/1.1 ");
    decimal(out, usize::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    for (name, value) in fields.iter() {
        if fields.end_to_end(name) {
            dated |= name.eq_ignore_ascii_case("date");
            header(out, name, value);
        }
    }
    if !dated {
        DATE.with_borrow_mut(|d| header(out, "date", d.now()));
    }
    // RFC 9110 §8.6: none on 1xx and 204; a 304's would describe another reply.
    if !(status < 200 || status == 204 || status == 304) {
        length(out, body_len);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn length(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(b"content-length: ");
    decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal digits, without the formatting machinery (`write!` cost a few hundred
/// instructions a reply).
fn decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut text = [0u8; usize::MAX.ilog10() as usize + 1];
    let mut at = text.len();
    loop {
        at -= 1;
        text[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&text[at..]);
}

/// The IMF-fixdate of the current second, formatted once a second per thread.
struct Date {
    second: i64,
    text: Vec<u8>,
}

impl Date {
    fn now(&mut self) -> &[u8] {
        let now = chrono::Utc::now();
        if now.timestamp() != self.second {
            self.second = now.timestamp();
            self.text.clear();
            let _ = write!(self.text, "{}", now.format("%a, %d %b %Y %H:%M:%S GMT"));
        }
        &self.text
    }
}

thread_local! {
    static DATE: RefCell<Date> = const { RefCell::new(Date { second: i64::MIN, text: Vec::new() }) };
}

/// An upstream's reply, read whole: status, head as received, body de-chunked.
pub struct Reply {
    pub status: u16,
    /// The status line and header fields, as received (parsed again by [`Reply::fields`]).
    head: Bytes,
    pub body: Bytes,
    /// The connection may carry another request.
    pub reusable: bool,
}

/// Status and sizes only: the body may echo a message's text.
impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("head_len", &self.head.len())
            .field("body_len", &self.body.len())
            .field("reusable", &self.reusable)
            .finish()
    }
}

impl Reply {
    /// Runs `f` over the reply's header fields.
    pub fn fields<R>(&self, f: impl FnOnce(Fields<'_>) -> R) -> R {
        let mut headers = header_room();
        let mut resp = httparse::Response::new(&mut []);
        // Parsed once already by `read_reply`; the same bytes parse the same way.
        let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            &self.head,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(_)) => resp.headers.len(),
            _ => 0,
        };
        f(Fields::Raw(&resp.headers[..n]))
    }

    /// The reply as hyper's server sends it on: status, end-to-end headers, body.
    /// Headers hyper's types cannot hold (obs-text names, say) are left out.
    pub fn into_response(self) -> http::Response<http_body_util::Full<Bytes>> {
        let mut resp = http::Response::new(http_body_util::Full::new(self.body.clone()));
        *resp.status_mut() =
            http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        self.fields(|fields| {
            for (name, value) in fields.iter() {
                if !fields.end_to_end(name) {
                    continue;
                }
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_bytes(value),
                ) {
                    resp.headers_mut().append(n, v);
                }
            }
        });
        resp
    }
}

/// Why a reply could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection closed, or failed, before the reply's head was whole: the
    /// upstream may or may not have the request.
    Broken(io::Error),
    /// It broke off in the reply's body.
    Body(io::Error),
    /// Not a valid HTTP/1.1 reply (the reason is fixed text, no reply data in it).
    Malformed(&'static str),
    /// The body is larger than the limit.
    TooLarge,
}

/// How a reply's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    Close,
}

/// Reads one reply from `io`, `buf` holding what was read and not used yet (on return
/// it holds what followed the reply). Interim (1xx) replies are skipped. `head_request`:
/// the request was HEAD, so the reply has no body.
pub async fn read_reply<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    head_request: bool,
    max_body: usize,
) -> Result<Reply, ReadError> {
    let (head, head_len) = loop {
        // Nothing read yet (the usual case: the reply is awaited): read before parsing.
        let parsed = if buf.is_empty() {
            None
        } else {
            let mut headers = header_room();
            let mut resp = httparse::Response::new(&mut []);
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                buf,
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(n)) if n > MAX_HEAD_BYTES => {
                    return Err(ReadError::Malformed("reply head too large"));
                }
                Ok(httparse::Status::Complete(n)) => Some((reply_head(&resp, head_request)?, n)),
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                    return Err(ReadError::Malformed("reply head too large"));
                }
                Ok(httparse::Status::Partial) => None,
                Err(_) => return Err(ReadError::Malformed("reply head not valid HTTP/1.1")),
            }
        };
        match parsed {
            Some((Some(head), n)) => break (head, n),
            // An interim reply: skip it.
            Some((None, n)) => buf.advance(n),
            None => read_more(io, buf).await.map_err(ReadError::Broken)?,
        }
    };
    let ReplyHead {
        status,
        framing,
        mut reusable,
    } = head;
    let head = buf.split_to(head_len).freeze();
    let body = match framing {
        Framing::Empty => Bytes::new(),
        Framing::Length(n) => {
            if n > max_body {
                return Err(ReadError::TooLarge);
            }
            while buf.len() < n {
                // Grown as the body comes, not to the length it announces.
                buf.reserve((n - buf.len()).min(64 * 1024));
                read_more(io, buf).await.map_err(ReadError::Body)?;
            }
            buf.split_to(n).freeze()
        }
        Framing::Chunked => {
            let mut body = BytesMut::new();
            let mut state = Chunked::Size;
            loop {
                let used = dechunk(buf, &mut state, &mut body, max_body)?;
                buf.advance(used);
                if state == Chunked::Done {
                    break;
                }
                read_more(io, buf).await.map_err(ReadError::Body)?;
            }
            body.freeze()
        }
        Framing::Close => {
            reusable = false;
            loop {
                if buf.len() > max_body {
                    return Err(ReadError::TooLarge);
                }
                buf.reserve(8 * 1024);
                match io.read_buf(buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(ReadError::Body(e)),
                }
            }
            buf.split().freeze()
        }
    };
    Ok(Reply {
        status,
        head,
        body,
        reusable: reusable && buf.is_empty(),
    })
}

/// Reads more into `buf`; the end of the stream is an error here.
async fn read_more<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> io::Result<()> {
    buf.reserve(8 * 1024);
    match io.read_buf(buf).await? {
        0 => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before the reply's end",
        )),
        _ => Ok(()),
    }
}

/// What a final reply's head says of the rest.
struct ReplyHead {
    status: u16,
    framing: Framing,
    /// The connection may be kept for another request.
    reusable: bool,
}

/// Reads a reply head; `None` for an interim (1xx) reply.
fn reply_head(
    resp: &httparse::Response<'_, '_>,
    head_request: bool,
) -> Result<Option<ReplyHead>, ReadError> {
    let status = resp.code.unwrap_or(0);
    match status {
        // httparse takes any three digits; a status is 100 to 999 (as hyper's type).
        0..=99 => return Err(ReadError::Malformed("reply status not valid")),
        101 => {
            return Err(ReadError::Malformed(
                "upgrade reply to a request that asked none",
            ));
        }
        100..=199 => return Ok(None),
        _ => {}
    }
    let fields = Fields::Raw(resp.headers);
    let mut reusable = resp.version == Some(1)
        && !fields
            .tokens("connection")
            .any(|t| t.eq_ignore_ascii_case(b"close"));
    let mut length: Option<usize> = None;
    for value in fields.get_all("content-length") {
        for item in value.split(|&b| b == b',') {
            let n = digits(item).ok_or(ReadError::Malformed("reply content-length not valid"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ReadError::Malformed("reply has two content-lengths"));
            }
            length = Some(n);
        }
    }
    let chunked = fields.contains("transfer-encoding").then(|| {
        fields
            .tokens("transfer-encoding")
            .last()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
    });
    let framing = if head_request || status == 204 || status == 304 {
        // A HEAD's and a 304's length are another reply's; a 204 that gives one may
        // send a body anyway, which would be read as the next request's reply: its
        // connection is not used again.
        if status == 204 && !head_request {
            reusable &= length.unwrap_or(0) == 0 && chunked.is_none();
        }
        Framing::Empty
    } else if let Some(chunked) = chunked {
        // Transfer-Encoding overrides Content-Length; a reply with both is suspect,
        // so its connection is not used again.
        reusable &= length.is_none();
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    Ok(Some(ReplyHead {
        status,
        framing,
        reusable,
    }))
}

/// Where a chunked body's decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    Size,
    Data(usize),
    DataEnd,
    Trailers(usize),
    Done,
}

/// Decodes what it can of a chunked body from `input` into `out`; returns how many
/// octets of `input` it used. Strict: lines end in CRLF, sizes are hex.
fn dechunk(
    input: &[u8],
    state: &mut Chunked,
    out: &mut BytesMut,
    max: usize,
) -> Result<usize, ReadError> {
    let bad = |why| Err(ReadError::Malformed(why));
    let mut at = 0;
    loop {
        let rest = &input[at..];
        match *state {
            Chunked::Done => return Ok(at),
            Chunked::Size => {
                let Some(end) = memchr::memmem::find(rest, b"\r\n") else {
                    return if rest.len() > MAX_CHUNK_LINE {
                        bad("chunk-size line too long")
                    } else {
                        Ok(at)
                    };
                };
                if end > MAX_CHUNK_LINE {
                    return bad("chunk-size line too long");
                }
                let line = &rest[..end];
                let size_end = line
                    .iter()
                    .position(|&b| !b.is_ascii_hexdigit())
                    .unwrap_or(line.len());
                let ext = &line[size_end..];
                if size_end == 0
                    || size_end > 15
                    || !(ext.is_empty() || matches!(ext.trim_ascii_start().first(), Some(b';')))
                {
                    return bad("chunk size not valid");
                }
                let size = line[..size_end].iter().fold(0usize, |n, &d| {
                    n * 16 + (d as char).to_digit(16).unwrap_or(0) as usize
                });
                at += end + 2;
                *state = if size == 0 {
                    Chunked::Trailers(0)
                } else if out.len() + size > max {
                    return Err(ReadError::TooLarge);
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(left) => {
                if rest.is_empty() {
                    return Ok(at);
                }
                let n = left.min(rest.len());
                out.extend_from_slice(&rest[..n]);
                at += n;
                *state = if n == left {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left - n)
                };
            }
            Chunked::DataEnd => {
                if rest.len() < 2 {
                    return Ok(at);
                }
                if &rest[..2] != b"\r\n" {
                    return bad("chunk not followed by CRLF");
                }
                at += 2;
                *state = Chunked::Size;
            }
            Chunked::Trailers(seen) => {
                let Some(end) = memchr::memmem::find(rest, b"\r\n") else {
                    return if seen + rest.len() > MAX_HEAD_BYTES {
                        bad("trailers too long")
                    } else {
                        Ok(at)
                    };
                };
                if seen + end + 2 > MAX_HEAD_BYTES {
                    return bad("trailers too long");
                }
                at += end + 2;
                *state = if end == 0 {
                    Chunked::Done
                } else {
                    Chunked::Trailers(seen + end + 2)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table says what RFC 3986's unreserved and sub-delims characters, `:`, `@`,
    /// `/`, `?` and `%` are, octet by octet: every other octet (space, `#`, `"`, `<`,
    /// controls, anything above 0x7f) sends the request to hyper.
    #[test]
    fn uri_chars_are_rfc_3986_path_and_query_characters() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b);
            assert_eq!(uri_char(b), expected, "octet {b:#04x}");
        }
        assert!(!uri_char(b' ') && !uri_char(b'#') && !uri_char(0x80));
        assert!(uri_char(b'~') && uri_char(b'%') && uri_char(b'z'));
    }

    fn parse_take(head: &[u8]) -> Take {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut h);
        assert!(req.parse(head).unwrap().is_complete());
        take(&req)
    }

    #[test]
    fn only_plain_requests_take_the_fast_path() {
        let lean = |n, close| Take::Lean {
            content_length: n,
            close,
        };
        assert_eq!(
            parse_take(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n"),
            lean(0, false)
        );
        assert_eq!(
            parse_take(
                b"POST / HTTP/1.1\r\nContent-Length: 12\r\nConnection: keep-alive, Close\r\n\r\n"
            ),
            lean(12, true)
        );
        for head in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"PUT / HTTP/1.1\r\n\r\n",
            b"HEAD / HTTP/1.1\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\n\r\n",
            b"GET /a{b} HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert_eq!(
                parse_take(head),
                Take::Hyper,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn requests_go_upstream_end_to_end_with_their_host() {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut h);
        req.parse(
            b"POST /s?x=1 HTTP/1.1\r\nHost: client\r\nConnection: X-Hop, keep-alive\r\nX-Hop: 1\r\n\
              Keep-Alive: 5\r\nContent-Length: 3\r\nX-Kannel-To: 1\r\nX-Kannel-To: 2\r\nTE: trailers\r\n\r\n",
        )
        .unwrap();
        let fields = Fields::Raw(req.headers);
        let mut out = Vec::new();
        write_request(
            &mut out,
            "POST",
            "/s?x=1",
            fields,
            ("gw:13013", false),
            b"abc",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /s?x=1 HTTP/1.1\r\nHost: client\r\nX-Kannel-To: 1\r\nX-Kannel-To: 2\r\n\
             content-length: 3\r\n\r\nabc"
        );
        let mut out = Vec::new();
        write_request(&mut out, "GET", "/", fields, ("gw:13013", true), b"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nhost: gw:13013\r\nX-Kannel-To: 1\r\nX-Kannel-To: 2\r\n\r\n"
        );
        // A client that names Host in Connection (found by fuzzing): its Host does not
        // go on, the upstream's does; still exactly one.
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut h);
        req.parse(b"GET /ce HTTP/1.1\r\nHost: client\r\nConnection: Host\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let fields = Fields::Raw(req.headers);
        write_request(&mut out, "GET", "/ce", fields, ("gw:13013", false), b"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /ce HTTP/1.1\r\nhost: gw:13013\r\n\r\n"
        );
    }

    async fn read(input: &[u8], head: bool, max: usize) -> (Result<Reply, ReadError>, BytesMut) {
        // One octet at a time: every partial state is met.
        let mut io = tokio_test_reader(input);
        let mut buf = BytesMut::new();
        let r = read_reply(&mut io, &mut buf, head, max).await;
        (r, buf)
    }

    /// A reader that gives one octet per read.
    fn tokio_test_reader(input: &[u8]) -> impl AsyncRead + Unpin {
        struct Slow(Vec<u8>, usize);
        impl AsyncRead for Slow {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                if self.1 < self.0.len() {
                    let b = self.0[self.1];
                    buf.put_slice(&[b]);
                    self.1 += 1;
                }
                std::task::Poll::Ready(Ok(()))
            }
        }
        Slow(input.to_vec(), 0)
    }

    #[tokio::test]
    async fn replies_are_read_whole_by_their_framing() {
        let (r, rest) = read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nX: y\r\n\r\nokNEXT", false, 10).await;
        let r = r.unwrap();
        assert_eq!((r.status, &r.body[..], r.reusable), (202, &b"ok"[..], true));
        assert!(rest.is_empty(), "nothing past the reply was read");
        assert_eq!(
            r.fields(|f| f.get("x").map(<[u8]>::to_vec)),
            Some(b"y".to_vec())
        );
        // Read in one go, what followed stays in the buffer and the connection is not
        // used again.
        let mut buf = BytesMut::new();
        let mut io = &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokNEXT"[..];
        let r = read_reply(&mut io, &mut buf, false, 10).await.unwrap();
        assert_eq!(
            (&r.body[..], r.reusable, &buf[..]),
            (&b"ok"[..], false, &b"NEXT"[..])
        );

        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n";
        let r = read(chunked, false, 100).await.0.unwrap();
        assert_eq!(
            (&r.body[..], r.reusable),
            (&b"abc0123456789abcdef"[..], true)
        );
        assert!(matches!(
            read(chunked, false, 10).await.0,
            Err(ReadError::TooLarge)
        ));

        let r = read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, 10)
            .await
            .0
            .unwrap();
        assert_eq!((&r.body[..], r.reusable), (&b""[..], true), "HEAD: no body");
        let r = read(b"HTTP/1.1 200 OK\r\n\r\nuntil close", false, 100)
            .await
            .0
            .unwrap();
        assert_eq!((&r.body[..], r.reusable), (&b"until close"[..], false));
        let r = read(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
            10,
        )
        .await
        .0
        .unwrap();
        assert!(!r.reusable);
        let r = read(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false, 10)
            .await
            .0
            .unwrap();
        assert!(!r.reusable, "an HTTP/1.0 reply's connection is not kept");
        let r = read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", false, 10).await.0.unwrap();
        assert_eq!(
            (&r.body[..], r.reusable),
            (&b"x"[..], false),
            "chunked wins, connection dropped"
        );
    }

    #[tokio::test]
    async fn broken_replies_are_errors_that_say_how() {
        for (input, want) in [
            (&b""[..], "broken"),
            (b"HTTP/1.1 200 OK\r\nContent-Le", "broken"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", "body"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n",
                "body",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                "malformed",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "malformed",
            ),
            (b"HTTP/1.1 101 Switching\r\n\r\n", "malformed"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "malformed",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxyz",
                "malformed",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",
                "too large",
            ),
            (b"NOT HTTP\r\n\r\n", "malformed"),
            (b"HTTP/1.1 010 Low\r\n\r\n", "malformed"),
        ] {
            let got = match read(input, false, 10).await.0 {
                Ok(_) => "ok",
                Err(ReadError::Broken(_)) => "broken",
                Err(ReadError::Body(_)) => "body",
                Err(ReadError::Malformed(_)) => "malformed",
                Err(ReadError::TooLarge) => "too large",
            };
            assert_eq!(got, want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn reply_heads_carry_length_date_and_close() {
        let mut h = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut h);
        resp.parse(b"HTTP/1.1 202 Whatever\r\nContent-Length: 99\r\nConnection: x\r\nX: 1\r\nKeep-Alive: 1\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        write_reply_head(&mut out, 202, Fields::Raw(resp.headers), 2, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 202 Accepted\r\n"), "{text}");
        assert!(
            text.contains("\r\ndate: ")
                && text.ends_with("content-length: 2\r\nconnection: close\r\n\r\n"),
            "{text}"
        );
        assert!(
            !text.contains("X: 1") && !text.contains("Connection: x"),
            "named by Connection: {text}"
        );
        assert!(
            !text.contains("Keep-Alive") && !text.contains("99"),
            "{text}"
        );
    }

    #[test]
    fn decimals_are_written_as_display_writes_them() {
        for n in [0, 7, 10, 99, 100, 204, 65_536, usize::MAX] {
            let mut out = b"x".to_vec();
            decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    proptest::proptest! {
        /// Any body, cut into any chunks, comes back whole.
        #[test]
        fn chunked_bodies_decode_to_what_was_chunked(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300), cuts in proptest::collection::vec(1usize..40, 0..20)) {
            let mut wire = Vec::new();
            let mut rest = &body[..];
            for c in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                if rest.is_empty() { break; }
                let n = (*c).min(rest.len());
                let _ = write!(wire, "{n:x}\r\n");
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let mut state = Chunked::Size;
            let mut out = BytesMut::new();
            // Fed in two halves at every split point of the first 50.
            let split = cuts.first().copied().unwrap_or(0).min(wire.len());
            let mut input = BytesMut::from(&wire[..split]);
            let used = dechunk(&input, &mut state, &mut out, 1000).unwrap();
            input.advance(used);
            input.extend_from_slice(&wire[split..]);
            let used = dechunk(&input, &mut state, &mut out, 1000).unwrap();
            proptest::prop_assert_eq!(state, Chunked::Done);
            proptest::prop_assert_eq!(used, input.len());
            proptest::prop_assert_eq!(&out[..], &body[..]);
        }
    }
}
