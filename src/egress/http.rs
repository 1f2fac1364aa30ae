//! Forwarding one request upstream and reading its bounded reply.

use std::sync::Arc;
use std::time::Duration;

use http::{StatusCode, Uri};
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;

use super::pool::{Conn, Pool, Target};

use crate::config::Forward;
use crate::http1::{self, Fields, ReadError};
use crate::ingress::tls::{TlsError, client_config};

/// Why a connection to the upstream could not be made or broke before its reply: what
/// an operator needs to tell a stopped gateway from a firewall, a certificate problem
/// or a gateway that hangs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCause {
    /// Nothing listens there (connection refused).
    Refused,
    /// No answer to the TCP or TLS handshake within the timeout.
    TimedOut,
    /// No route to the host or network.
    Unreachable,
    /// The host name did not resolve.
    Resolve,
    /// The TLS handshake failed (certificate, protocol version, name).
    Tls,
    /// The connection was reset or closed before the reply.
    Reset,
    Other,
}

impl ConnectCause {
    /// Classifies the error of a TCP connect (name resolution, TLS and the HTTP
    /// handshake are told apart by the step that failed, in `pool::Pool::connect`).
    pub fn of_tcp(e: &std::io::Error) -> ConnectCause {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => ConnectCause::Refused,
            K::TimedOut => ConnectCause::TimedOut,
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                ConnectCause::Unreachable
            }
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                ConnectCause::Reset
            }
            _ => ConnectCause::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectCause::Refused => "connection refused",
            ConnectCause::TimedOut => "connect timed out",
            ConnectCause::Unreachable => "host unreachable",
            ConnectCause::Resolve => "name does not resolve",
            ConnectCause::Tls => "TLS handshake failed",
            ConnectCause::Reset => "connection reset",
            ConnectCause::Other => "connect failed",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            ConnectCause::Refused => "connect_refused",
            ConnectCause::TimedOut => "connect_timeout",
            ConnectCause::Unreachable => "connect_unreachable",
            ConnectCause::Resolve => "connect_resolve",
            ConnectCause::Tls => "tls",
            ConnectCause::Reset => "connection_reset",
            ConnectCause::Other => "connect",
        }
    }
}

impl std::fmt::Display for ConnectCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request got no usable reply from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The cause is kept typed for the metric label; `source` (the OS's or rustls's
    /// own words, no request data in them) goes to the log line.
    #[error("upstream unreachable ({cause})")]
    Connect {
        cause: ConnectCause,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke after the request was sent, before the reply: the gateway
    /// may or may not have the message.
    #[error("upstream connection broke before its reply")]
    Broken(#[source] std::io::Error),
    #[error("upstream did not answer in time")]
    Timeout,
    #[error("upstream reply larger than max-response-bytes")]
    TooLarge,
    #[error("upstream reply broken off")]
    Body(#[source] std::io::Error),
    /// Not a valid HTTP/1.1 reply (fixed text saying what, no reply data).
    #[error("upstream reply not valid HTTP/1.1: {0}")]
    Malformed(&'static str),
}

impl UpstreamError {
    fn connect(e: super::pool::ConnectError) -> UpstreamError {
        UpstreamError::Connect {
            cause: e.cause,
            source: e.source,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { cause, .. } => cause.reason(),
            Self::Broken(_) => "connection_broken",
            Self::Timeout => "timeout",
            Self::TooLarge => "response_too_large",
            Self::Body(_) => "body",
            Self::Malformed(_) => "malformed_reply",
        }
    }

    /// The status relaylog answers the client with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl crate::relay::Failure for UpstreamError {
    fn reason(&self) -> &'static str {
        UpstreamError::reason(self)
    }
}

pub use crate::http1::Reply;

/// A request as it goes upstream, written once (see [`Upstream::outbound`]).
pub struct Outbound {
    bytes: Vec<u8>,
    /// Its room is new (a buffer made or grown for it): what lies past the request in
    /// it is whatever the allocator's last user left there.
    new_room: bool,
    /// A HEAD request: its reply has no body.
    head: bool,
}

thread_local! {
    /// The buffers of requests sent from this thread, zeroed, for the next ones: no
    /// allocation per request once a thread has as many as it has requests in flight.
    /// Bounded: [`SPARE_BUFFERS`] of at most [`SPARE_BYTES`] each.
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The most spare request buffers a thread keeps.
const SPARE_BUFFERS: usize = 64;

/// The largest request buffer kept for reuse (a larger one is let go).
const SPARE_BYTES: usize = 16 * 1024;

impl Drop for Outbound {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.bytes);
        // It held the message: zeroed, whether it is kept for the next request or let
        // go (writes the compiler may not leave out). All of its room when the room is
        // new, which may hold what the allocator's last user left (other messages:
        // ingress buffers are freed unzeroed); otherwise only what this request wrote:
        // `write_request` writes within the length, with all the room it needs taken
        // first, and the rest of a kept buffer's room was zeroed before. Zeroing all of
        // it every time cost each request the largest one the buffer had held (up to
        // SPARE_BYTES).
        if self.new_room {
            zeroize::Zeroize::zeroize(&mut bytes);
        } else {
            zeroize::Zeroize::zeroize(bytes.as_mut_slice());
            bytes.clear();
        }
        if bytes.capacity() > SPARE_BYTES {
            return;
        }
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < SPARE_BUFFERS {
                spare.push(bytes);
            }
        });
    }
}

pub struct Upstream {
    pool: Arc<Pool>,
    base: Uri,
    /// The upstream's authority, for the Host header.
    host: String,
    rewrite_host: bool,
    timeout: Duration,
    max_response_bytes: usize,
}

/// How one attempt at an exchange ended, when it did not give a reply.
enum Attempt {
    /// Writing the request failed: the upstream did not take it, safe to send again.
    NotSent(std::io::Error),
    Failed(UpstreamError),
}

impl Upstream {
    pub fn new(base: Uri, cfg: &Forward) -> Result<Self, TlsError> {
        let host_str = base.host().unwrap_or("localhost");
        // `[::1]` in a URI, `::1` to connect to and to name in TLS.
        let host = host_str
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = base.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = base.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let config = client_config(cfg.ca_file.as_deref())?;
            let name = ServerName::try_from(host.clone())
                .map_err(|_| TlsError::Invalid("upstream host is not a valid TLS server name"))?;
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        let pool = Pool::new(
            Target {
                host,
                port,
                tls,
                connect_timeout: cfg.timeout,
            },
            cfg.pool_idle,
        );
        let authority = base.authority().map_or("localhost", |a| a.as_str());
        Ok(Self {
            pool,
            host: authority.to_owned(),
            base,
            rewrite_host: cfg.rewrite_host,
            timeout: cfg.timeout,
            max_response_bytes: cfg.max_response_bytes,
        })
    }

    /// The same upstream with a pool of its own, for another runtime's connections
    /// (see `ingress::http::HttpThreads`): the TLS configuration and its session cache
    /// are shared.
    pub fn with_own_pool(&self) -> Upstream {
        Upstream {
            pool: self.pool.another(),
            base: self.base.clone(),
            host: self.host.clone(),
            rewrite_host: self.rewrite_host,
            timeout: self.timeout,
            max_response_bytes: self.max_response_bytes,
        }
    }

    pub fn base(&self) -> &Uri {
        &self.base
    }

    /// The request as it goes upstream: `target` in origin form, HTTP/1.1, the
    /// end-to-end headers of `fields` (Host as configured), the body.
    pub fn outbound(
        &self,
        method: &str,
        target: &str,
        fields: Fields<'_>,
        body: &[u8],
    ) -> Outbound {
        let mut bytes = SPARE.with_borrow_mut(Vec::pop).unwrap_or_default();
        let room = bytes.capacity();
        http1::write_request(
            &mut bytes,
            method,
            target,
            fields,
            (&self.host, self.rewrite_host),
            body,
        );
        Outbound {
            new_room: bytes.capacity() != room,
            bytes,
            head: method == "HEAD",
        }
    }

    /// Sends a request and reads its reply, within the upstream timeout.
    pub async fn forward(&self, req: &Outbound) -> Result<Reply, UpstreamError> {
        tokio::time::timeout(self.timeout, self.exchange(req))
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }

    /// Sends on a pooled connection; if writing to it fails (the upstream dropped it
    /// while idle), once more on a new one.
    async fn exchange(&self, req: &Outbound) -> Result<Reply, UpstreamError> {
        let (mut conn, pooled) = self.pool.checkout().await.map_err(UpstreamError::connect)?;
        let not_sent = match self.attempt(&mut conn, req).await {
            Ok(reply) => return Ok(self.keep(conn, reply)),
            Err(Attempt::Failed(e)) => return Err(e),
            Err(Attempt::NotSent(e)) => e,
        };
        let new_conn_closed = |source| UpstreamError::Connect {
            cause: ConnectCause::Reset,
            source,
        };
        if !pooled {
            return Err(new_conn_closed(not_sent));
        }
        let mut conn = self.pool.connect().await.map_err(UpstreamError::connect)?;
        match self.attempt(&mut conn, req).await {
            Ok(reply) => Ok(self.keep(conn, reply)),
            Err(Attempt::Failed(e)) => Err(e),
            Err(Attempt::NotSent(e)) => Err(new_conn_closed(e)),
        }
    }

    fn keep(&self, mut conn: Conn, reply: Reply) -> Reply {
        if reply.reusable {
            if reply.body.len() > 64 * 1024 {
                // What is left of a large reply's buffer shares its allocation.
                conn.buf = bytes::BytesMut::with_capacity(8 * 1024);
            }
            self.pool.checkin(conn);
        }
        reply
    }

    async fn attempt(&self, conn: &mut Conn, req: &Outbound) -> Result<Reply, Attempt> {
        let written = async {
            conn.stream.write_all(&req.bytes).await?;
            conn.stream.flush().await
        };
        written.await.map_err(Attempt::NotSent)?;
        http1::read_reply(
            &mut conn.stream,
            &mut conn.buf,
            req.head,
            self.max_response_bytes,
        )
        .await
        .map_err(|e| {
            Attempt::Failed(match e {
                ReadError::Broken(e) => UpstreamError::Broken(e),
                ReadError::Body(e) => UpstreamError::Body(e),
                ReadError::Malformed(why) => UpstreamError::Malformed(why),
                ReadError::TooLarge => UpstreamError::TooLarge,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's buffer is kept for the thread's next request, zeroed first (the
    /// request was written into room reserved at once, so that buffer is the only
    /// block that held it). One too large is let go.
    #[test]
    fn request_buffers_are_reused_zeroed() {
        let forward = crate::config::Forward {
            upstream: None,
            ca_file: None,
            rewrite_host: false,
            timeout: Duration::from_secs(1),
            pool_idle: 1,
            max_response_bytes: 1024,
        };
        let up = Upstream::new("http://127.0.0.1:9".parse().unwrap(), &forward).unwrap();
        SPARE.with_borrow_mut(Vec::clear);
        let secret = b"text=very+secret+words";
        let first = up.outbound("POST", "/send", Fields::Raw(&[]), secret);
        let (at, len) = (first.bytes.as_ptr(), first.bytes.len());
        assert!(first.bytes.windows(secret.len()).any(|w| w == secret));
        drop(first);
        SPARE.with_borrow(|spare| {
            let [kept] = spare.as_slice() else {
                panic!("one buffer kept, not {}", spare.len())
            };
            assert_eq!((kept.as_ptr(), kept.len()), (at, 0));
            // SAFETY: its room was new, so all of it was zeroed when the request was
            // done (whatever the allocator had left there too): every byte up to the
            // capacity is initialised, and nothing else holds it.
            let room = unsafe { std::slice::from_raw_parts(kept.as_ptr(), kept.capacity()) };
            assert!(room.iter().all(|&b| b == 0), "{room:?}");
        });
        let second = up.outbound("GET", "/next", Fields::Raw(&[]), b"");
        assert_eq!(second.bytes.as_ptr(), at, "the next request reuses it");
        assert!(second.bytes.starts_with(b"GET /next HTTP/1.1\r\n"));
        let short = second.bytes.len();
        assert!(short < len);
        drop(second);
        // A kept buffer's next request zeroes what it wrote, and the rest of the room
        // stays as zero as it was.
        SPARE.with_borrow(|spare| {
            let [kept] = spare.as_slice() else {
                panic!("one buffer kept, not {}", spare.len())
            };
            assert_eq!(kept.as_ptr(), at, "the same block");
            // SAFETY: as above: the whole room was zeroed after the first request.
            let room = unsafe { std::slice::from_raw_parts(kept.as_ptr(), kept.capacity()) };
            assert!(room.iter().all(|&b| b == 0), "{room:?}");
        });
        let large = up.outbound("POST", "/send", Fields::Raw(&[]), &[b'x'; SPARE_BYTES + 1]);
        drop(large);
        assert_eq!(SPARE.with_borrow(Vec::len), 0, "a large buffer is not kept");
    }

    /// Issue 10: the upstream's connect errors keep their cause.
    #[test]
    fn connect_errors_keep_their_cause() {
        use std::io::{Error, ErrorKind as K};
        for (e, cause) in [
            (Error::from(K::ConnectionRefused), ConnectCause::Refused),
            (Error::from(K::TimedOut), ConnectCause::TimedOut),
            (Error::from(K::HostUnreachable), ConnectCause::Unreachable),
            (Error::from(K::ConnectionReset), ConnectCause::Reset),
            (Error::other("something else"), ConnectCause::Other),
        ] {
            assert_eq!(ConnectCause::of_tcp(&e), cause, "{e}");
        }
        let e = UpstreamError::connect(super::super::pool::ConnectError {
            cause: ConnectCause::Refused,
            source: Error::from(K::ConnectionRefused),
        });
        assert_eq!(e.reason(), "connect_refused");
        assert_eq!(e.to_string(), "upstream unreachable (connection refused)");
        assert_eq!(
            UpstreamError::Broken(Error::other("x")).reason(),
            "connection_broken"
        );
    }
}
