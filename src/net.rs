//! Plumbing every TCP listener shares: the one accept loop ([`run`]: a connection cap,
//! TLS with a handshake deadline, a task per connection, until shutdown), and serving
//! one HTTP/1 connection that closes gracefully when shutdown comes.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::shutdown::Shutdown;

/// A byte stream a session can run over: TCP, TLS, or an in-memory pipe in tests.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The next connection, or `None` once shutdown is triggered. Accept errors (out of
/// file descriptors and the like) are logged and retried after a short pause: the
/// listener keeps serving.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &mut Shutdown,
    name: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// How long a request head may take to arrive (and an idle keep-alive connection
/// waits for the next one) on the admin listener and the simulator.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection until it ends; on shutdown, finishes the request in flight
/// and closes.
pub async fn serve_http1<S>(stream: TcpStream, svc: S, shutdown: Shutdown)
where
    S: HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    serve_http1_io(stream, svc, shutdown).await
}

/// [`serve_http1`] over any stream (a TLS one, say).
pub async fn serve_http1_io<I, S>(stream: I, svc: S, mut shutdown: Shutdown)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.wait() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A client connection, in the clear or over TLS.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for ClientStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for ClientStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A `refuse` for [`run`]: counts the refused connection and, in the clear, writes
/// `busy` (the protocol's "too many connections") before closing. Over TLS there is
/// no cheap way to say it: the connection just closes.
pub fn refuse_busy(
    refused: prometheus_client::metrics::counter::Counter,
    plain: bool,
    busy: &'static [u8],
) -> impl Fn(TcpStream, SocketAddr) {
    move |stream, _peer| {
        refused.inc();
        if plain {
            // A few dozen bytes fit in a new socket's send buffer: written at once,
            // without a task per refused connection (which a flood could pile up).
            let _ = stream.try_write(busy);
        }
    }
}

/// A listener's cap on connections at once, shared by every accept loop serving it
/// (an HTTP listener's runtime threads take from one cap).
#[derive(Clone)]
pub struct Connections(std::sync::Arc<tokio::sync::Semaphore>);

impl Connections {
    pub fn at_most(n: usize) -> Connections {
        Connections(std::sync::Arc::new(tokio::sync::Semaphore::new(n)))
    }
}

/// How a listener takes connections: at most `connections` at once (the next is
/// handed to `refuse`, which may answer "busy" in the protocol's words), and with TLS
/// when there is an acceptor, whose handshake must finish within `handshake_timeout`.
pub struct Gate {
    pub name: String,
    pub connections: Connections,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub handshake_timeout: Duration,
}

/// Accepts until shutdown, then returns. Each connection runs `serve` on a task of its
/// own, holding its permit (and whatever `serve` captures, such as a drain token)
/// until it ends. The one accept loop of every listener: relay and admin alike.
pub async fn run<S, F>(
    listener: TcpListener,
    gate: Gate,
    mut shutdown: Shutdown,
    refuse: impl Fn(TcpStream, SocketAddr),
    serve: S,
) where
    S: Fn(ClientStream, SocketAddr) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    while let Some((stream, peer)) = accept(&listener, &mut shutdown, &gate.name).await {
        let Ok(permit) = gate.connections.0.clone().try_acquire_owned() else {
            refuse(stream, peer);
            continue;
        };
        let _ = stream.set_nodelay(true);
        match &gate.tls {
            None => {
                let work = serve(ClientStream::Plain(stream), peer);
                tokio::spawn(async move {
                    work.await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let (acceptor, timeout) = (acceptor.clone(), gate.handshake_timeout);
                let (serve, name) = (serve.clone(), gate.name.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve(ClientStream::Tls(Box::new(tls)), peer).await,
                        Ok(Err(e)) => {
                            tracing::debug!(listener = %name, error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(listener = %name, "TLS handshake timed out")
                        }
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Two accept loops with one [`Connections`] (as an HTTP listener's threads have):
    /// a connection held on one takes the only place, and the other refuses the next.
    #[tokio::test]
    async fn accept_loops_share_one_connection_cap() {
        let (trigger, shutdown) = crate::shutdown::channel();
        let connections = Connections::at_most(1);
        let (release, held) = tokio::sync::watch::channel(false);
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let gate = Gate {
                name: "test".into(),
                connections: connections.clone(),
                tls: None,
                handshake_timeout: Duration::from_secs(5),
            };
            let held = held.clone();
            let serve = move |_stream: ClientStream, _peer| {
                let mut held = held.clone();
                async move {
                    let _ = held.wait_for(|released| *released).await;
                }
            };
            let refuse = |stream: TcpStream, _peer| {
                let _ = stream.try_write(b"busy");
            };
            tokio::spawn(run(listener, gate, shutdown.clone(), refuse, serve));
        }
        // Waits (at most 5 s) until `n` places are free.
        let places = |n: usize| {
            let connections = connections.clone();
            async move {
                let free = async {
                    while connections.0.available_permits() != n {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                };
                tokio::time::timeout(Duration::from_secs(5), free)
                    .await
                    .unwrap();
            }
        };
        // What a new connection to `addr` is told before it closes (at most 5 s).
        let told = |addr| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut reply = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
                .await
                .expect("closed in time")
                .unwrap();
            reply
        };
        let _first = TcpStream::connect(addrs[0]).await.unwrap();
        // Once the first loop has taken it (and the place), the other refuses...
        places(0).await;
        assert_eq!(told(addrs[1]).await, b"busy");
        // ...and once the place is given back, the other loop serves the next (which
        // here ends at once, without a word).
        release.send(true).unwrap();
        places(1).await;
        assert_eq!(told(addrs[1]).await, b"", "served, not refused");
        trigger.trigger();
    }
}
