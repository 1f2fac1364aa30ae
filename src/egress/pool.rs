//! Keep-alive connections to one upstream, used by the request that checks one out.
//!
//! hyper's pooled client runs every connection as a task of its own: a request is
//! handed to that task through a channel and its reply comes back through another,
//! two cross-task wake-ups per message. Here a request checks a connection out, writes
//! and reads on it itself (`egress::http`, with `http1`), and puts it back. An idle
//! connection is read by no one; the next request that takes it first looks whether
//! the upstream has closed it meanwhile, and drops it if so.

use super::http::ConnectCause;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A plain or TLS connection to the upstream.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One keep-alive connection to the upstream and what was read from it and not used.
pub struct Conn {
    pub stream: Stream,
    pub buf: BytesMut,
}

impl Conn {
    /// Whether an idle connection can still take a request: the upstream has neither
    /// closed it nor sent anything unasked (a read now would block).
    fn alive(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(
            Pin::new(&mut self.stream).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// `Some` for https.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    pub connect_timeout: Duration,
}

/// Why a new upstream connection failed, and the OS's, rustls's or hyper's words.
#[derive(Debug)]
pub struct ConnectError {
    pub cause: ConnectCause,
    pub source: io::Error,
}

impl ConnectError {
    fn tcp(source: io::Error) -> ConnectError {
        ConnectError {
            cause: ConnectCause::of_tcp(&source),
            source,
        }
    }
}

/// Idle connections to one upstream, most recently used first out.
pub struct Pool {
    target: Target,
    idle: Mutex<Vec<Conn>>,
    max_idle: usize,
}

impl Pool {
    pub fn new(target: Target, max_idle: usize) -> Arc<Self> {
        Arc::new(Self {
            target,
            idle: Mutex::new(Vec::with_capacity(max_idle)),
            max_idle,
        })
    }

    /// An empty pool to the same target (its TLS configuration shared, not built
    /// again), for another runtime: a connection belongs to the runtime that made it.
    pub fn another(&self) -> Arc<Self> {
        Pool::new(self.target.clone(), self.max_idle)
    }

    /// An idle connection that is still open (`true`: from the pool), or a new one.
    pub async fn checkout(&self) -> Result<(Conn, bool), ConnectError> {
        loop {
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            let Some(mut conn) = idle else { break };
            if conn.alive() {
                return Ok((conn, true));
            }
        }
        Ok((self.connect().await?, false))
    }

    /// Returns a connection after a complete exchange that left it fit for another;
    /// dropped (closed) if the pool is full.
    pub fn checkin(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(conn);
        }
    }

    /// A new connection, not from the pool. Each step says how it failed: name
    /// resolution, TCP connect, TLS handshake.
    pub async fn connect(&self) -> Result<Conn, ConnectError> {
        let t = &self.target;
        let timed_out = |what: &str| ConnectError {
            cause: ConnectCause::TimedOut,
            source: io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out")),
        };
        let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout(
            t.connect_timeout,
            tokio::net::lookup_host((t.host.as_str(), t.port)),
        )
        .await
        .map_err(|_| timed_out("name resolution"))?
        .map_err(|source| ConnectError {
            cause: ConnectCause::Resolve,
            source,
        })?
        .collect();
        if addrs.is_empty() {
            return Err(ConnectError {
                cause: ConnectCause::Resolve,
                source: io::Error::new(io::ErrorKind::NotFound, "the name has no address"),
            });
        }
        let tcp = tokio::time::timeout(t.connect_timeout, TcpStream::connect(&addrs[..]))
            .await
            .map_err(|_| timed_out("connect"))?
            .map_err(ConnectError::tcp)?;
        tcp.set_nodelay(true).map_err(ConnectError::tcp)?;
        let stream = match &t.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(t.connect_timeout, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| ConnectError {
                            cause: ConnectCause::Tls,
                            source: io::Error::new(
                                io::ErrorKind::TimedOut,
                                "TLS handshake timed out",
                            ),
                        })?
                        .map_err(|source| ConnectError {
                            cause: ConnectCause::Tls,
                            source,
                        })?;
                Stream::Tls(Box::new(tls))
            }
        };
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        })
    }
}
