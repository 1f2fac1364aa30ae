//! SMTP on the wire, as much as a proxy, a sink and a load generator need: bounded
//! line and reply reading ([`Wire`]), command verbs, replies with their enhanced codes
//! and queue ids, and the end of `DATA` ([`DotScanner`]).
//!
//! Nothing here looks at message content beyond the bytes that end it.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A byte stream a session can run over: TCP, TLS, or an in-memory pipe in tests.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A stream that is over: reads end at once, writes fail. What a session's leg is
/// replaced with when it is closed or handed to TLS.
pub struct Closed;

impl AsyncRead for Closed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Closed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::task::Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The longest command line taken, CRLF included: Postfix's `line_length_limit`. RFC
/// 5321 sets 512, and extensions (SIZE, DSN's ORCPT and ENVID, SMTPUTF8 addresses)
/// add to it.
pub const MAX_COMMAND_LINE: usize = 2048;

/// The longest reply line taken from an upstream (RFC 5321 says 512).
pub const MAX_REPLY_LINE: usize = 2048;

/// Most lines in one reply (an EHLO reply has a dozen).
pub const MAX_REPLY_LINES: usize = 64;

/// Bytes read from a socket at a time. A [`Wire`] holds at most about twice this
/// (what is left of one read and the next), plus one line being looked for.
pub const READ_CHUNK: usize = 16 * 1024;

/// Why reading from a peer stopped.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A reply broke the grammar (no code, mixed codes, too long): not an SMTP server.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
}

/// What [`Wire::line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line without its terminator (CRLF, or LF alone, which commands may end in).
    Text { len: usize },
    /// Longer than the limit: skipped to its end.
    TooLong,
}

/// One side of a session: a stream and what has been read from it but not consumed.
pub struct Wire<S> {
    pub io: S,
    buf: BytesMut,
    /// Skipping the rest of a line that was too long.
    skipping: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub fn new(io: S) -> Self {
        Wire {
            io,
            buf: BytesMut::with_capacity(4096),
            skipping: false,
        }
    }

    /// Bytes read but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Whether a whole line is already buffered (so reading it will not wait).
    pub fn has_line(&self) -> bool {
        memchr::memchr(b'\n', &self.buf).is_some()
    }

    pub fn consume(&mut self, n: usize) {
        self.buf.advance(n);
    }

    /// Drops whatever is buffered (pipelined input after STARTTLS), returning how much.
    pub fn discard_buffered(&mut self) -> usize {
        let n = self.buf.len();
        self.buf.clear();
        n
    }

    /// Reads more into the buffer; `Closed` at end of stream.
    pub async fn fill(&mut self) -> Result<usize, WireError> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK.max(self.buf.len()));
        }
        let n = self.io.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(WireError::Closed);
        }
        Ok(n)
    }

    /// The next line, at most `max` bytes with its terminator, within `timeout`. The
    /// line stays in the buffer (`&self.buffered()[..len]`) until [`Wire::consume_line`].
    pub async fn line(&mut self, max: usize, timeout: Duration) -> Result<Line, WireError> {
        let read = async {
            loop {
                if let Some(i) = memchr::memchr(b'\n', &self.buf) {
                    if self.skipping {
                        self.buf.advance(i + 1);
                        self.skipping = false;
                        return Ok(Line::TooLong);
                    }
                    if i + 1 > max {
                        self.buf.advance(i + 1);
                        return Ok(Line::TooLong);
                    }
                    let cr = i > 0 && self.buf[i - 1] == b'\r';
                    return Ok(Line::Text {
                        len: if cr { i - 1 } else { i },
                    });
                }
                if self.skipping || self.buf.len() >= max {
                    // Too long already: keep memory bounded, remember to skip to LF.
                    self.buf.clear();
                    self.skipping = true;
                }
                self.fill().await?;
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| WireError::Timeout)?
    }

    /// Consumes a line of `len` bytes returned by [`Wire::line`] and its terminator.
    pub fn consume_line(&mut self, len: usize) {
        let term = if self.buf.get(len) == Some(&b'\r') {
            2
        } else {
            1
        };
        self.buf.advance((len + term).min(self.buf.len()));
    }

    /// Reads a whole reply (`ddd-text` lines, then `ddd text`), bounded in lines and
    /// length, within `timeout`.
    pub async fn reply(&mut self, timeout: Duration) -> Result<Reply, WireError> {
        let read = async {
            let mut raw = Vec::new();
            let mut code = None;
            for _ in 0..MAX_REPLY_LINES {
                let len = match self.line(MAX_REPLY_LINE, Duration::MAX).await? {
                    Line::Text { len, .. } => len,
                    Line::TooLong => return Err(WireError::Malformed("reply line too long")),
                };
                let line = &self.buf[..len];
                let parsed = reply_line(line);
                raw.extend_from_slice(line);
                raw.extend_from_slice(b"\r\n");
                self.consume_line(len);
                let (this, last) = parsed.ok_or(WireError::Malformed("no reply code"))?;
                if *code.get_or_insert(this) != this {
                    return Err(WireError::Malformed("reply lines with different codes"));
                }
                if last {
                    return Ok(Reply { code: this, raw });
                }
            }
            Err(WireError::Malformed("reply has too many lines"))
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| WireError::Timeout)?
    }

    /// Writes all of `bytes` and flushes, within `timeout`.
    pub async fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), WireError> {
        let write = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(WireError::Timeout),
        }
    }
}

/// A reply line's code, and whether it is the last line (`ddd ` or `ddd` alone).
fn reply_line(line: &[u8]) -> Option<(u16, bool)> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match line.get(3) {
        None | Some(b' ') => Some((code, true)),
        Some(b'-') => Some((code, false)),
        _ => None,
    }
}

/// A whole reply: its code and its lines as received, each ending in CRLF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub raw: Vec<u8>,
}

impl Reply {
    /// A one-line reply of relaylog's own.
    pub fn local(code: u16, text: &str) -> Reply {
        Reply {
            code,
            raw: format!("{code} {text}\r\n").into_bytes(),
        }
    }

    /// The lines without their codes and separators.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.raw
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                l.get(4..).unwrap_or_default()
            })
    }

    /// The enhanced status code (RFC 3463) that starts the last line, as `x.y.z`.
    pub fn enhanced(&self) -> Option<String> {
        let last = self.lines().last()?;
        let word = last.split(|&b| b == b' ').next()?;
        let mut parts = word.split(|&b| b == b'.');
        let class = parts.next()?;
        let subject = parts.next()?;
        let detail = parts.next()?;
        let ok = |p: &[u8], max: usize| {
            !p.is_empty() && p.len() <= max && p.iter().all(u8::is_ascii_digit)
        };
        if parts.next().is_some()
            || class.len() != 1
            || !matches!(class[0], b'2' | b'4' | b'5')
            || !ok(subject, 3)
            || !ok(detail, 3)
        {
            return None;
        }
        std::str::from_utf8(word).ok().map(str::to_owned)
    }

    /// The queue id in a final reply such as Postfix's `250 2.0.0 Ok: queued as
    /// 4Xyz12abc`: letters and digits, at most 64.
    pub fn queue_id(&self) -> Option<String> {
        let last = self.lines().last()?;
        let at = memchr::memmem::find(last, b"queued as ")? + b"queued as ".len();
        let id: Vec<u8> = last[at..]
            .iter()
            .copied()
            .take_while(u8::is_ascii_alphanumeric)
            .take(64)
            .collect();
        if id.is_empty() {
            return None;
        }
        String::from_utf8(id).ok()
    }
}

/// The commands a proxy tells apart. Anything else is [`Verb::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth,
    Other,
}

/// The verb of a command line (case-insensitive), and its arguments after one space.
pub fn verb(line: &[u8]) -> (Verb, &[u8]) {
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let (word, rest) = line.split_at(end);
    let args = rest.strip_prefix(b" ").unwrap_or(rest);
    let v = match word.to_ascii_uppercase().as_slice() {
        b"EHLO" => Verb::Ehlo,
        b"HELO" => Verb::Helo,
        b"MAIL" => Verb::Mail,
        b"RCPT" => Verb::Rcpt,
        b"DATA" => Verb::Data,
        b"BDAT" => Verb::Bdat,
        b"RSET" => Verb::Rset,
        b"NOOP" => Verb::Noop,
        b"QUIT" => Verb::Quit,
        b"VRFY" => Verb::Vrfy,
        b"HELP" => Verb::Help,
        b"STARTTLS" => Verb::StartTls,
        b"AUTH" => Verb::Auth,
        _ => Verb::Other,
    };
    (v, args)
}

/// The path of `MAIL FROM:<path> params` or `RCPT TO:<path> params`, without its angle
/// brackets, and the parameters after it. `prefix` is `FROM:` or `TO:`
/// (case-insensitive). A quoted local part may hold `>` and spaces.
pub fn path_arg<'a>(args: &'a [u8], prefix: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    if args.len() < prefix.len() || !args[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &args[prefix.len()..];
    // Some clients put a space after the colon; RFC 5321 does not, servers accept it.
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    let inner = rest.strip_prefix(b"<")?;
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in inner.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                let params = &inner[i + 1..];
                return Some((&inner[..i], params.strip_prefix(b" ").unwrap_or(params)));
            }
            _ => {}
        }
    }
    None
}

/// The mailbox of a path as relaylog records it, or `None` when the path is refused:
/// a source route (`@a,@b:`, obsolete, which servers ignore) is taken off; a path that
/// is not UTF-8, or holds what addresses never hold outside quotes (white space,
/// control characters, comments, lists, angle brackets), is refused, so that what is
/// recorded is what the upstream delivers to.
pub fn mailbox(path: &[u8]) -> Option<&str> {
    let path = match path.first() {
        Some(b'@') => &path[path.iter().position(|&b| b == b':')? + 1..],
        _ => path,
    };
    let text = std::str::from_utf8(path).ok()?;
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        match c {
            _ if c.is_control() => return None,
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' | '(' | ')' | ',' | ';' | '<' | '>' if !quoted => return None,
            _ => {}
        }
    }
    (!quoted).then_some(text)
}

/// The value of an ESMTP parameter (`SIZE=1234`) among `params`, case-insensitive.
pub fn param<'a>(params: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    params.split(|&b| b == b' ').find_map(|p| {
        let eq = p.iter().position(|&b| b == b'=')?;
        p[..eq].eq_ignore_ascii_case(name).then(|| &p[eq + 1..])
    })
}

/// `BDAT <size> [LAST]`'s arguments.
pub fn bdat_args(args: &[u8]) -> Option<(u64, bool)> {
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words.next()?;
    if size.is_empty() || size.len() > 18 || !size.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = std::str::from_utf8(size).ok()?.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

/// Finds the end of `DATA` content (`CRLF . CRLF`, the first CRLF being the `DATA`
/// line's own) in the bytes as they stream past, and refuses line endings that
/// receivers read differently: a bare LF, or a CR not followed by LF. Those are how
/// SMTP smuggling hides a second message inside the first; a proxy that ends DATA
/// where its upstream does not would let that message through unrecorded.
#[derive(Debug, Clone, Copy)]
pub struct DotScanner {
    state: At,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// After CRLF.
    LineStart,
    /// A dot at the start of a line.
    LeadingDot,
    /// `CRLF . CR`.
    LeadingDotCr,
    /// A CR inside a line.
    Cr,
    /// Inside a line.
    Mid,
}

/// What [`DotScanner::scan`] found in a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No end yet: this many bytes of the chunk are content. A CR, or a dot that
    /// begins a line, at the very end is left out (scan it again with what follows).
    More(usize),
    /// The content ends after this many bytes of the chunk, the whole `.CRLF`
    /// included: the content in this chunk is three bytes fewer.
    End(usize),
    /// A bare LF or bare CR at this offset: the bytes before it are content.
    Bare(usize),
}

impl Default for DotScanner {
    fn default() -> Self {
        DotScanner {
            state: At::LineStart,
        }
    }
}

impl DotScanner {
    /// Scans the next chunk: the bytes the last scan did not take, then what came
    /// after. Between chunks the state is `LineStart` or `Mid` (a chunk never ends
    /// just after a CR or a line's leading dot: those wait), so the CR that `Bare(i -
    /// 1)` points at is always in this chunk.
    pub fn scan(&mut self, chunk: &[u8]) -> Scan {
        let mut i = 0;
        while i < chunk.len() {
            if self.state == At::Mid {
                match memchr::memchr2(b'\r', b'\n', &chunk[i..]) {
                    None => return Scan::More(chunk.len()),
                    Some(k) => i += k,
                }
            }
            let b = chunk[i];
            // A CR, or a dot at the start of a line, as the chunk's last byte waits
            // for what follows: so that a CR is never sent before it is known not to be
            // bare, and the end `.CRLF` is always whole in the chunk that ends.
            if i + 1 == chunk.len() {
                match (self.state, b) {
                    (At::LineStart, b'.') | (At::Mid | At::LineStart, b'\r') => {
                        return Scan::More(i);
                    }
                    (At::LeadingDot, b'\r') => {
                        // `.CR` at the end: both wait (the dot was taken in this
                        // chunk, since a dot that ends a chunk waits).
                        self.state = At::LineStart;
                        return Scan::More(i - 1);
                    }
                    _ => {}
                }
            }
            self.state = match (self.state, b) {
                (At::LineStart, b'.') => At::LeadingDot,
                (At::LeadingDot, b'\r') => At::LeadingDotCr,
                (At::LeadingDotCr, b'\n') => return Scan::End(i + 1),
                (At::Cr, b'\n') => At::LineStart,
                // The CR before this byte, never the last of a chunk, is bare.
                (At::LeadingDotCr | At::Cr, _) => return Scan::Bare(i - 1),
                (_, b'\n') => return Scan::Bare(i),
                (_, b'\r') => At::Cr,
                _ => At::Mid,
            };
            i += 1;
        }
        Scan::More(chunk.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes_are_what_the_upstream_delivers_to() {
        assert_eq!(mailbox(b"jan@example.nl"), Some("jan@example.nl"));
        assert_eq!(mailbox(b""), Some(""), "the null sender");
        assert_eq!(
            mailbox(b"@relay.example,@b.example:jan@example.nl"),
            Some("jan@example.nl")
        );
        assert_eq!(
            mailbox(b"\"jan jansen\"@example.nl"),
            Some("\"jan jansen\"@example.nl")
        );
        assert_eq!(
            mailbox("jürgen@bücher.example".as_bytes()),
            Some("jürgen@bücher.example")
        );
        for refused in [
            &b"bob(comment)@example.com"[..],
            b"bob @example.com",
            b"a@b,c@d",
            b"\"unterminated@example.com",
            b"bell\x07@example.com",
            b"\xff@example.com",
            b"@route.example",
        ] {
            assert_eq!(
                mailbox(refused),
                None,
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
    }

    #[test]
    fn verbs_and_paths() {
        assert_eq!(verb(b"ehlo client.example").0, Verb::Ehlo);
        assert_eq!(verb(b"QUIT").0, Verb::Quit);
        assert_eq!(verb(b"XCLIENT ADDR=1.2.3.4").0, Verb::Other);
        let (v, args) = verb(b"MAIL FROM:<a@b.example> SIZE=12 BODY=8BITMIME");
        assert_eq!(v, Verb::Mail);
        let (path, params) = path_arg(args, b"FROM:").unwrap();
        assert_eq!(path, b"a@b.example");
        assert_eq!(param(params, b"size"), Some(&b"12"[..]));
        assert_eq!(
            path_arg(b"to:<\"odd> name\"@x.example> NOTIFY=NEVER", b"TO:"),
            Some((&b"\"odd> name\"@x.example"[..], &b"NOTIFY=NEVER"[..]))
        );
        assert_eq!(path_arg(b"FROM:<>", b"FROM:"), Some((&b""[..], &b""[..])));
        assert_eq!(path_arg(b"FROM:a@b", b"FROM:"), None);
        assert_eq!(path_arg(b"TO:<a@b", b"TO:"), None);
        assert_eq!(bdat_args(b"100 LAST"), Some((100, true)));
        assert_eq!(bdat_args(b"0 last"), Some((0, true)));
        assert_eq!(bdat_args(b"7"), Some((7, false)));
        assert_eq!(bdat_args(b"7 LAST x"), None);
        assert_eq!(bdat_args(b"-1"), None);
        assert_eq!(bdat_args(b"99999999999999999999"), None);
    }

    #[test]
    fn replies_give_their_enhanced_code_and_queue_id() {
        let r = Reply {
            code: 250,
            raw: b"250 2.0.0 Ok: queued as 4XyZ12abc\r\n".to_vec(),
        };
        assert_eq!(r.enhanced().as_deref(), Some("2.0.0"));
        assert_eq!(r.queue_id().as_deref(), Some("4XyZ12abc"));
        let r = Reply {
            code: 550,
            raw: b"550-5.1.1 first\r\n550 5.1.1 <x@y>: Recipient address rejected\r\n".to_vec(),
        };
        assert_eq!(r.enhanced().as_deref(), Some("5.1.1"));
        assert_eq!(r.queue_id(), None);
        assert_eq!(Reply::local(221, "Bye").enhanced(), None);
        assert_eq!(Reply::local(250, "1.2.3 wrong class").enhanced(), None);
    }

    #[tokio::test]
    async fn replies_are_read_whole_and_bounded() {
        let (mut a, b) = tokio::io::duplex(64 * 1024);
        let mut wire = Wire::new(b);
        a.write_all(b"250-one\r\n250-two\r\n250 three\r\n220 next\r\n")
            .await
            .unwrap();
        let t = Duration::from_secs(1);
        let r = wire.reply(t).await.unwrap();
        assert_eq!((r.code, r.lines().count()), (250, 3));
        assert_eq!(wire.reply(t).await.unwrap().code, 220);
        a.write_all(b"250-one\r\n354 mixed\r\n").await.unwrap();
        assert!(matches!(wire.reply(t).await, Err(WireError::Malformed(_))));
        let long = format!("250 {}\r\n", "x".repeat(MAX_REPLY_LINE));
        a.write_all(long.as_bytes()).await.unwrap();
        assert!(matches!(wire.reply(t).await, Err(WireError::Malformed(_))));
        drop(a);
        assert!(matches!(wire.reply(t).await, Err(WireError::Closed)));
    }

    #[tokio::test]
    async fn long_lines_are_skipped_without_buffering_them() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut wire = Wire::new(b);
        let writer = tokio::spawn(async move {
            a.write_all(&vec![b'x'; 100_000]).await.unwrap();
            a.write_all(b"\r\nNOOP\r\n").await.unwrap();
            a
        });
        let t = Duration::from_secs(5);
        assert_eq!(wire.line(512, t).await.unwrap(), Line::TooLong);
        assert!(wire.buffered().len() <= 512 + READ_CHUNK);
        let Line::Text { len } = wire.line(512, t).await.unwrap() else {
            panic!("a line")
        };
        assert_eq!(&wire.buffered()[..len], &b"NOOP"[..]);
        drop(writer.await.unwrap());
    }

    /// Where the content ends, read the plain way: CRLF.CRLF ends it, a bare LF or a
    /// CR not followed by LF is refused, and the bytes that could still become either
    /// (a last CR, a line's leading dot or `.CR`) wait.
    fn reference(input: &[u8]) -> Scan {
        let (mut i, mut line_start) = (0, true);
        while i < input.len() {
            let rest = &input[i..];
            if line_start && rest.starts_with(b".\r\n") {
                return Scan::End(i + 3);
            }
            if line_start && (rest == b"." || rest == b".\r") {
                return Scan::More(i);
            }
            match input[i] {
                b'\n' => return Scan::Bare(i),
                b'\r' if i + 1 == input.len() => return Scan::More(i),
                b'\r' if input[i + 1] != b'\n' => return Scan::Bare(i),
                b'\r' => {
                    i += 2;
                    line_start = true;
                }
                _ => {
                    i += 1;
                    line_start = false;
                }
            }
        }
        Scan::More(input.len())
    }

    /// Feeds `input` in chunks cut at `cuts`, as a session does (what a scan did not
    /// take is offered again with the next bytes), and says what was found overall.
    fn scan_in_chunks(input: &[u8], cuts: &[usize]) -> Scan {
        let mut s = DotScanner::default();
        let mut taken = 0;
        let mut got = Scan::More(0);
        for end in cuts.iter().copied().chain([input.len()]) {
            if end < taken {
                continue;
            }
            got = match s.scan(&input[taken..end]) {
                Scan::More(n) => {
                    taken += n;
                    Scan::More(taken)
                }
                Scan::End(n) => {
                    // So content = n - 3 in the chunk that ends, exactly.
                    assert!(n >= 3, "the end .CRLF is whole in the chunk that ends");
                    Scan::End(taken + n)
                }
                Scan::Bare(n) => Scan::Bare(taken + n),
            };
            if !matches!(got, Scan::More(_)) {
                break;
            }
        }
        got
    }

    proptest::proptest! {
        /// The scanner agrees with the plain reading however the bytes are chunked.
        #[test]
        fn the_scanner_agrees_with_the_reference(
            input in proptest::collection::vec(proptest::sample::select(b"a.\r\n".to_vec()), 0..24),
            mut cuts in proptest::collection::vec(0usize..24, 0..4),
        ) {
            cuts.sort_unstable();
            let cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            proptest::prop_assert_eq!(scan_in_chunks(&input, &cuts), reference(&input));
        }
    }

    /// Every way to split the content finds the same end (and has the whole `.CRLF` in
    /// the chunk that ends, so sizes come out exact), and bare line endings are caught
    /// wherever the split falls, before any byte of them counts as content.
    #[test]
    fn the_end_of_data_is_found_across_any_split() {
        let cases: [(&[u8], Scan); 12] = [
            (b"a\r\r\n.\r\n", Scan::Bare(1)),
            (b"a\r\n.\r\r\n", Scan::Bare(4)),
            (b"hello\r\n.", Scan::More(7)),
            (b"hello\r\n.\r\nMAIL", Scan::End(10)),
            (b".\r\n", Scan::End(3)),
            (b"..stuffed\r\n.\r\n", Scan::End(14)),
            (b"a\r\n.x\r\n.\r\n", Scan::End(10)),
            (b"smuggle\n.\nMAIL", Scan::Bare(7)),
            (b"smuggle\r\n.\nMAIL", Scan::Bare(10)),
            (b"cr\r.\r\n", Scan::Bare(2)),
            (b"a\r\n.\rx", Scan::Bare(4)),
            (b"no end yet\r\n", Scan::More(12)),
        ];
        for (input, want) in cases {
            for split in 0..=input.len() {
                let got = scan_in_chunks(input, &[split]);
                let shown = String::from_utf8_lossy(input);
                assert_eq!(got, want, "{shown:?} split at {split}");
            }
        }
    }
}
