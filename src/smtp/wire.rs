//! Bounded reading of lines and replies, and writing, over any byte stream.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use crate::net::Io;

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

    /// [`Wire::fill`] within `timeout`.
    pub async fn fill_within(&mut self, timeout: Duration) -> Result<usize, WireError> {
        tokio::time::timeout(timeout, self.fill())
            .await
            .map_err(|_| WireError::Timeout)?
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
