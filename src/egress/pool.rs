//! Keep-alive connections to one upstream, driven by the request that uses them.
//!
//! hyper's pooled client runs every connection as a task of its own: a request is
//! handed to that task through a channel and its reply comes back through another,
//! two cross-task wake-ups per message. Here a request checks a connection out (the
//! hyper `SendRequest` and its `Connection` future together), polls the connection
//! itself while it waits for the reply and reads the body, and puts it back. An idle
//! connection is polled by no one; the next request that takes it first drives it to
//! ready, which is also where a connection the upstream has closed is found and
//! dropped.

use super::http::ConnectCause;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1};
use hyper_util::rt::TokioIo;
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

type Driver = Pin<Box<http1::Connection<TokioIo<Stream>, Full<Bytes>>>>;

/// One connection: the handle requests are sent through, and the future that does
/// its I/O.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: Driver,
    /// The driver has finished: the connection is closed.
    closed: bool,
}

impl Conn {
    /// Polls the connection until it can take a request. `false`: it is closed.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            self.drive(cx);
            if self.closed {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }

    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.closed && self.driver.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
    }

    /// Runs `work` (which sends through this connection and reads the reply) while
    /// polling the connection, so that the connection's I/O happens in this task.
    pub async fn drive_while<T>(&mut self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        poll_fn(|cx| {
            self.drive(cx);
            work.as_mut().poll(cx)
        })
        .await
    }

    /// Sends a request; the future does not borrow the connection, which
    /// [`Conn::drive_while`] polls meanwhile.
    pub fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<Full<Bytes>>>>> + use<>
    {
        self.sender.try_send_request(req)
    }
}

/// Where and how to connect.
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

    /// An idle connection that is still open, or a new one.
    pub async fn checkout(&self) -> Result<Conn, ConnectError> {
        loop {
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            let Some(mut conn) = idle else { break };
            if conn.ready().await {
                return Ok(conn);
            }
        }
        self.connect().await
    }

    /// Returns a connection after a complete exchange; dropped (closed) if the pool is
    /// full or the connection cannot take another request.
    pub fn checkin(&self, conn: Conn) {
        if conn.closed || conn.sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(conn);
        }
    }

    /// A new connection, not from the pool. Each step says how it failed: name
    /// resolution, TCP connect, TLS handshake, HTTP handshake.
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
        let (sender, driver) =
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ConnectError {
                    cause: ConnectCause::Other,
                    source: io::Error::other(e),
                })?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver),
            closed: false,
        })
    }
}
