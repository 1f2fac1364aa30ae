//! The fast path: plain HTTP/1.1 requests relayed without hyper.
//!
//! hyper's server builds a header map, a URI and a body stream per request, and its
//! reply a header map again; at saturation that was a fifth of relaylog's CPU per
//! message. Here a request's head is parsed with httparse from the connection's
//! buffer, the profile reads the fields in place ([`Fields::Raw`]), the request goes
//! upstream as one write, and the upstream's reply goes back as one.
//!
//! Only what hyper would frame the same way is taken (see [`http1::take`]): HTTP/1.1,
//! GET or POST, an origin-form target, no body or one framed by a single plain
//! Content-Length, no `Expect` or `Upgrade`. At the first request that is anything
//! else the connection is handed to hyper, its buffered bytes first, and hyper serves
//! it to the end: chunked bodies, `100-continue`, HTTP/1.0 and every refusal of a
//! smuggling attempt stay hyper's.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Activity;
use super::request::{Listener, Prepared, Refusal, Request};
use crate::http1::{self, Fields, MAX_HEAD_BYTES, Take};
use crate::ingress::profile::RequestView;
use crate::shutdown::Drain;

/// How the fast path left a connection.
pub(super) enum End {
    /// Closed, or to be closed: the client went, asked to close, sent a head that
    /// cannot be read, or the listener is closing.
    Closed,
    /// A request the fast path does not take: hyper serves the connection from here,
    /// starting with the bytes still in the buffer.
    Handoff,
}

/// Why a request head cannot be read; hyper's answers to the same.
enum BadHead {
    Invalid,
    TooLarge,
}

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Serves requests from `io` until the connection ends or a request needs hyper.
/// `buf` holds what was read and not used yet.
pub(super) async fn serve<I>(
    io: &mut I,
    buf: &mut BytesMut,
    listener: &Arc<Listener>,
    peer: SocketAddr,
    drain: &Drain,
    activity: &Activity,
) -> End
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let limits = listener.limits;
    let mut out = Vec::with_capacity(1024);
    loop {
        // Phase 1a: a whole head; and when the whole request is in the buffer (a GET,
        // or a body that came with its head), phase 2 from the same parse.
        let head = loop {
            // Nothing read yet (a keep-alive connection between requests): read before
            // parsing.
            let parsed = if buf.is_empty() {
                None
            } else {
                let mut headers = http1::header_room();
                let mut req = httparse::Request::new(&mut []);
                match req.parse_with_uninit_headers(buf, &mut headers) {
                    Ok(httparse::Status::Complete(n)) if n > MAX_HEAD_BYTES => {
                        Some(Err(BadHead::TooLarge))
                    }
                    Ok(httparse::Status::Complete(n)) => Some(Ok(match http1::take(&req) {
                        Take::Lean {
                            content_length,
                            close,
                        } if content_length <= limits.max_body_bytes
                            && buf.len() >= n + content_length =>
                        {
                            let started = begin(activity);
                            Head::Whole {
                                prepared: extract(listener, &req, n, content_length, buf, peer),
                                used: n + content_length,
                                close,
                                started,
                            }
                        }
                        take => Head::Partial { head_len: n, take },
                    })),
                    Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                        Some(Err(BadHead::TooLarge))
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(httparse::Error::TooManyHeaders) => Some(Err(BadHead::TooLarge)),
                    Err(_) => Some(Err(BadHead::Invalid)),
                }
            };
            match parsed {
                Some(Ok(head)) => break head,
                Some(Err(bad)) => {
                    tracing::debug!("request head not valid HTTP/1.1; closing");
                    let reply = match bad {
                        BadHead::Invalid => BAD_REQUEST,
                        BadHead::TooLarge => {
                            let relay = &listener.relay;
                            relay.metrics.cut(&relay.name, "head_too_large");
                            HEAD_TOO_LARGE
                        }
                    };
                    let _ = write_and_close(io, reply).await;
                    return End::Closed;
                }
                None => {
                    if !read(io, buf, activity).await {
                        return End::Closed;
                    }
                }
            }
        };
        let (prepared, used, close, started) = match head {
            Head::Whole {
                prepared,
                used,
                close,
                started,
            } => (prepared, used, close, started),
            Head::Partial { head_len, take } => {
                let Take::Lean {
                    content_length,
                    close,
                } = take
                else {
                    return End::Handoff;
                };
                let started = begin(activity);

                // Phase 1b: the body, bounded by max-body-bytes and request-timeout.
                let refusal = if content_length > limits.max_body_bytes {
                    Some(Refusal::BodyTooLarge)
                } else {
                    let need = head_len + content_length;
                    match tokio::time::timeout(
                        limits.request_timeout,
                        read_to(io, buf, need, activity),
                    )
                    .await
                    {
                        Ok(true) => None,
                        Ok(false) => Some(Refusal::BodyBroken),
                        Err(_) => Some(Refusal::BodyTimeout),
                    }
                };
                if let Some(refusal) = refusal {
                    // The rest of the body is not read: the connection cannot go on.
                    out.clear();
                    listener.reject(refusal, started).write(&mut out, true);
                    let _ = tokio::time::timeout(limits.request_timeout, write_and_close(io, &out))
                        .await;
                    activity.end();
                    return End::Closed;
                }

                // Phase 2 once the body is in: the head parsed again, as the buffer
                // may have moved while it grew.
                let mut headers = http1::header_room();
                let mut req = httparse::Request::new(&mut []);
                // The same bytes parsed above: complete, and taken (the parser looks no
                // further than the head's last line end).
                let parsed = req.parse_with_uninit_headers(&buf[..head_len], &mut headers);
                debug_assert!(
                    matches!(parsed, Ok(httparse::Status::Complete(n)) if n == head_len),
                    "the head parses again as it did"
                );
                let prepared = extract(listener, &req, head_len, content_length, buf, peer);
                (prepared, head_len + content_length, close, started)
            }
        };

        // Phases 3 to 5: only the prepared request (owned) is kept across the awaits.
        // A large request leaves a large buffer: shrunk once it is answered.
        let large = buf.capacity() > 64 * 1024;
        buf.advance(used);
        // The connection is read meanwhile, as hyper does: a client that hangs up
        // drops the answer, which goes on detached and is not forwarded if it had not
        // been yet (see `relay::Detached`); as with hyper's default, a client that
        // closes its side is gone. Once the client has sent more (its next request),
        // it is not read until this one is answered.
        let mut answer = std::pin::pin!(listener.answer(prepared, drain.clone(), started));
        let answered = loop {
            if !buf.is_empty() {
                break Some(answer.as_mut().await);
            }
            tokio::select! {
                biased;
                answered = answer.as_mut() => break Some(answered),
                more = read(io, buf, activity) => if !more {
                    break None;
                },
            }
        };
        let Some(answered) = answered else {
            activity.end();
            return End::Closed;
        };
        let close = close || activity.close_after.load(Ordering::Relaxed);
        out.clear();
        answered.write(&mut out, close);
        drop(answered);
        // A client that does not read its reply is dropped after request-timeout; one
        // whose socket takes it at once (nearly always) needs no timer for it.
        let written = match write_now(io, &mut out) {
            Ok(true) => true,
            Ok(false) => {
                let write = async {
                    io.write_all(&out).await?;
                    io.flush().await
                };
                match tokio::time::timeout(limits.request_timeout, write).await {
                    Ok(r) => r.is_ok(),
                    Err(_) => {
                        let relay = &listener.relay;
                        relay.metrics.cut(&relay.name, "reply_timeout");
                        false
                    }
                }
            }
            Err(_) => false,
        };
        activity.end();
        if !written {
            return End::Closed;
        }
        if close {
            let _ = io.shutdown().await;
            return End::Closed;
        }
        if !buf.is_empty() {
            // The next head has begun: the header timeout runs from now.
            activity.read_some();
        }
        // A connection's buffers stay small between requests.
        if out.capacity() > 64 * 1024 {
            out = Vec::with_capacity(1024);
        }
        if large && buf.len() <= 8 * 1024 {
            let mut small = BytesMut::with_capacity(8 * 1024);
            small.extend_from_slice(buf);
            *buf = small;
        }
    }
}

/// A request head read from the buffer.
enum Head {
    /// The whole request was there: extracted and prepared from the same parse.
    Whole {
        prepared: Prepared,
        /// Octets of the buffer it took (head and body).
        used: usize,
        close: bool,
        started: Instant,
    },
    /// What [`http1::take`] made of a head of `head_len` octets: the body (if any) is
    /// still to come, or too large, or the request is not the fast path's.
    Partial { head_len: usize, take: Take },
}

/// A request taken by the fast path begins: it is in flight, and its time runs.
fn begin(activity: &Activity) -> Instant {
    activity.begin();
    Instant::now()
}

/// Phase 2, extraction: the request `req` parsed from `buf` (its head the first
/// `head_len` octets, its body the `content_length` after them), prepared for phases 3
/// to 5. Borrows the buffer; what it returns owns its data.
fn extract(
    listener: &Listener,
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    content_length: usize,
    buf: &[u8],
    peer: SocketAddr,
) -> Prepared {
    let method = if req.method == Some("POST") {
        Method::POST
    } else {
        Method::GET
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let request = Request {
        view: RequestView {
            method: &method,
            path,
            query,
            headers: Fields::Raw(req.headers),
            body: &buf[head_len..head_len + content_length],
        },
        target,
    };
    listener.prepare(&request, peer)
}

/// Reads more of the connection into `buf`. `false`: the client closed it, or it broke.
async fn read<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut, activity: &Activity) -> bool {
    buf.reserve(4 * 1024);
    match io.read_buf(buf).await {
        Ok(0) | Err(_) => false,
        Ok(_) => {
            activity.read_some();
            true
        }
    }
}

/// Reads until `buf` holds `need` octets, growing it as they come (a client that
/// announces a large body and sends none holds no more memory than it sent).
/// `false`: the connection ended first.
async fn read_to<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    need: usize,
    activity: &Activity,
) -> bool {
    while buf.len() < need {
        buf.reserve((need - buf.len()).min(64 * 1024));
        if !read(io, buf, activity).await {
            return false;
        }
    }
    true
}

/// Writes `out` and flushes the stream if both are done at once, without waiting:
/// `Ok(true)`. `Ok(false)` when the stream would wait; what it took of `out` is then
/// cut from the front of it (`out` is left holding the rest, to write by waiting, which
/// polls the stream again with the task's waker). Before, every reply was written
/// under a timeout: a clock read and a timer built and dropped (never armed).
fn write_now<I: AsyncWrite + Unpin>(io: &mut I, out: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut written = 0;
    let done = loop {
        if written == out.len() {
            break match Pin::new(&mut *io).poll_flush(&mut cx) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => false,
            };
        }
        match Pin::new(&mut *io).poll_write(&mut cx, &out[written..]) {
            Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => written += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break false,
        }
    };
    out.drain(..written);
    Ok(done)
}

async fn write_and_close<I: AsyncWrite + Unpin>(io: &mut I, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await?;
    io.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A reply the stream takes whole is written and flushed at once; of one it takes
    /// in part, what it took is cut from the front and the rest is left to write by
    /// waiting, which then delivers every octet once, in order.
    #[tokio::test]
    async fn a_reply_is_written_at_once_or_its_rest_by_waiting() {
        let (mut near, mut far) = tokio::io::duplex(64);
        let mut out = b"HTTP/1.1 202 Accepted\r\n\r\n".to_vec();
        assert!(write_now(&mut near, &mut out).unwrap());
        assert!(out.is_empty());
        let mut got = vec![0; 25];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 202 Accepted\r\n\r\n");

        let (mut near, mut far) = tokio::io::duplex(8);
        let reply: Vec<u8> = (0..100u8).collect();
        let mut out = reply.clone();
        assert!(
            !write_now(&mut near, &mut out).unwrap(),
            "the stream would wait"
        );
        assert_eq!(out, reply[8..], "the first 8 octets were taken");
        let reader = tokio::spawn(async move {
            let mut got = vec![0; 100];
            far.read_exact(&mut got).await.unwrap();
            got
        });
        near.write_all(&out).await.unwrap();
        near.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), reply);
    }

    /// A stream that fails is an error, not a wait.
    #[tokio::test]
    async fn a_stream_that_fails_is_an_error() {
        let (mut near, far) = tokio::io::duplex(8);
        drop(far);
        let mut out = b"reply".to_vec();
        assert!(write_now(&mut near, &mut out).is_err());
    }
}
