//! Plumbing every TCP listener shares: the one accept loop ([`run`]: a connection cap,
//! TLS with a handshake deadline, a task per connection, until shutdown), and serving
//! one HTTP/1 connection that closes gracefully when shutdown comes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
/// and closes. The error it ended with, if any (`is_timeout`: the header timeout).
pub async fn serve_http1<S>(stream: TcpStream, svc: S, shutdown: Shutdown) -> Option<hyper::Error>
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
pub async fn serve_http1_io<I, S>(stream: I, svc: S, mut shutdown: Shutdown) -> Option<hyper::Error>
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
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = shutdown.wait() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    ended.err()
}

/// A client connection, in the clear or over TLS.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The TCP connection under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.get_ref().0,
        }
    }
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

/// What a listener's connections are served with (its settings, with what they
/// share), replaced whole by a reload: each connection takes the one current when it
/// is accepted and keeps it to its end, so a reload closes nothing.
pub struct Live<T>(Arc<std::sync::RwLock<Arc<T>>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live(self.0.clone())
    }
}

impl<T> Live<T> {
    pub fn new(value: Arc<T>) -> Live<T> {
        Live(Arc::new(std::sync::RwLock::new(value)))
    }

    pub fn get(&self) -> Arc<T> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// What new connections get from now on.
    pub fn set(&self, value: Arc<T>) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = value;
    }
}

/// The place a connection holds at its listener until it ends (see [`Connections`]).
pub struct Place {
    places: Arc<Places>,
    peer: PeerKey,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.places.open();
        open.total -= 1;
        if let Some(n) = open.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.by_peer.remove(&self.peer);
            }
        }
    }
}

/// Why a connection was refused a place: the reason label of
/// `relaylog_connections_refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max-connections` are open.
    Listener,
    /// `max-connections-per-peer` are open from the connection's peer.
    Peer,
}

impl Full {
    pub fn reason(self) -> &'static str {
        match self {
            Full::Listener => "max_connections",
            Full::Peer => "max_connections_per_peer",
        }
    }
}

/// Whose connections count together against `max-connections-per-peer`: an IPv4
/// address, or an IPv6 address's /64 (which one host is commonly given whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PeerKey(u128);

impl PeerKey {
    fn of(ip: std::net::IpAddr) -> PeerKey {
        match ip {
            std::net::IpAddr::V4(v4) => PeerKey(u32::from(v4) as u128),
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey(u32::from(v4) as u128),
                None => PeerKey(u128::from(v6) & !((1u128 << 64) - 1)),
            },
        }
    }
}

struct Open {
    total: usize,
    /// Peers with a connection open: at most `total` entries.
    by_peer: std::collections::HashMap<PeerKey, usize>,
}

struct Places {
    max: AtomicUsize,
    per_peer: AtomicUsize,
    handshake_ms: AtomicU64,
    open: Mutex<Open>,
}

impl Places {
    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        // The counts are updated whole under the lock: a panic elsewhere cannot
        // leave them half-changed.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A listener's limits on connections: at most `max-connections` open at once, at most
/// `max-connections-per-peer` of them from one peer (so that one client's idle or slow
/// connections cannot take every place), and how long a TLS handshake may take. Shared
/// by every accept loop serving the listener (an HTTP listener's threads take from one
/// count), and changed in place by a reload: connections already open keep their place.
#[derive(Clone)]
pub struct Connections(Arc<Places>);

impl Connections {
    pub fn new(max: usize, per_peer: usize, handshake_timeout: Duration) -> Connections {
        let c = Connections(Arc::new(Places {
            max: AtomicUsize::new(0),
            per_peer: AtomicUsize::new(0),
            handshake_ms: AtomicU64::new(0),
            open: Mutex::new(Open {
                total: 0,
                by_peer: std::collections::HashMap::new(),
            }),
        }));
        c.set(max, per_peer, handshake_timeout);
        c
    }

    /// New limits, for the connections accepted from now on.
    pub fn set(&self, max: usize, per_peer: usize, handshake_timeout: Duration) {
        self.0.max.store(max, Ordering::Relaxed);
        self.0.per_peer.store(per_peer, Ordering::Relaxed);
        self.0
            .handshake_ms
            .store(handshake_timeout.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.0.handshake_ms.load(Ordering::Relaxed))
    }

    /// A place for a connection from `peer`, or why there is none.
    pub fn take(&self, peer: std::net::IpAddr) -> Result<Place, Full> {
        let key = PeerKey::of(peer);
        let mut open = self.0.open();
        if open.total >= self.0.max.load(Ordering::Relaxed) {
            return Err(Full::Listener);
        }
        let per_peer = self.0.per_peer.load(Ordering::Relaxed);
        let n = open.by_peer.entry(key).or_insert(0);
        if *n >= per_peer {
            if *n == 0 {
                open.by_peer.remove(&key);
            }
            return Err(Full::Peer);
        }
        *n += 1;
        open.total += 1;
        Ok(Place {
            places: self.0.clone(),
            peer: key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.open().total
    }
}

/// How a listener takes connections: within its [`Connections`] limits (a connection
/// refused is counted, and told `busy`, the protocol's "too many connections", when in
/// the clear), and with TLS when there is an acceptor.
pub struct Gate {
    pub name: String,
    pub connections: Connections,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// What a refused connection is told in the clear (nothing when empty).
    pub busy: &'static [u8],
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Accepts until shutdown, then returns. Each connection runs `serve` on a task of its
/// own, holding its [`Place`] (and whatever `serve` captures, such as a drain token)
/// until it ends. The one accept loop of every listener: relay and admin alike.
pub async fn run<S, F>(listener: TcpListener, gate: Gate, mut shutdown: Shutdown, serve: S)
where
    S: Fn(ClientStream, SocketAddr) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    while let Some((stream, peer)) = accept(&listener, &mut shutdown, &gate.name).await {
        let place = match gate.connections.take(peer.ip()) {
            Ok(place) => place,
            Err(full) => {
                gate.metrics.refused(&gate.name, full.reason());
                if gate.tls.is_none() && !gate.busy.is_empty() {
                    // A few dozen bytes fit in a new socket's send buffer: written at
                    // once, without a task per refused connection (which a flood
                    // could pile up).
                    let _ = stream.try_write(gate.busy);
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match &gate.tls {
            None => {
                let work = serve(ClientStream::Plain(stream), peer);
                tokio::spawn(async move {
                    work.await;
                    drop(place);
                });
            }
            Some(acceptor) => {
                let (acceptor, timeout) = (acceptor.clone(), gate.connections.handshake_timeout());
                let (serve, name, metrics) =
                    (serve.clone(), gate.name.clone(), gate.metrics.clone());
                tokio::spawn(async move {
                    let _place = place;
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve(ClientStream::Tls(Box::new(tls)), peer).await,
                        Ok(Err(e)) => {
                            metrics.cut(&name, "handshake_failed");
                            tracing::debug!(listener = %name, error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            metrics.cut(&name, "handshake_timeout");
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

    /// Accept loops on `n` sockets sharing `connections`; each connection is held
    /// until `release` says `true`.
    async fn loops(
        n: usize,
        connections: &Connections,
        shutdown: &Shutdown,
    ) -> (Vec<SocketAddr>, tokio::sync::watch::Sender<bool>) {
        let (release, held) = tokio::sync::watch::channel(false);
        let mut addrs = Vec::new();
        for _ in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let gate = Gate {
                name: "test".into(),
                connections: connections.clone(),
                tls: None,
                busy: b"busy",
                metrics: Arc::new(crate::metrics::Metrics::new()),
            };
            let held = held.clone();
            let serve = move |_stream: ClientStream, _peer| {
                let mut held = held.clone();
                async move {
                    let _ = held.wait_for(|released| *released).await;
                }
            };
            tokio::spawn(run(listener, gate, shutdown.clone(), serve));
        }
        (addrs, release)
    }

    /// Waits (at most 5 s) until `n` connections are open.
    async fn open(connections: &Connections, n: usize) {
        let wait = async {
            while connections.open() != n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap();
    }

    /// A connection to `addr` from `from`, held open.
    async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// What a new connection from `from` to `addr` is told before it closes (at most 5 s).
    async fn told(from: &str, addr: SocketAddr) -> Vec<u8> {
        let mut s = connect_from(from, addr).await;
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
            .await
            .expect("closed in time")
            .unwrap();
        reply
    }

    /// Two accept loops with one [`Connections`] (as an HTTP listener's threads have):
    /// a connection held on one takes the only place, and the other refuses the next.
    #[tokio::test]
    async fn accept_loops_share_one_connection_cap() {
        let (trigger, shutdown) = crate::shutdown::channel();
        let connections = Connections::new(1, 1, Duration::from_secs(5));
        let (addrs, release) = loops(2, &connections, &shutdown).await;
        let _first = connect_from("127.0.0.1", addrs[0]).await;
        // Once the first loop has taken it (and the place), the other refuses, even a
        // peer with nothing open...
        open(&connections, 1).await;
        assert_eq!(told("127.0.0.2", addrs[1]).await, b"busy");
        // ...and once the place is given back, the other loop serves the next (which
        // here ends at once, without a word).
        release.send(true).unwrap();
        open(&connections, 0).await;
        assert_eq!(
            told("127.0.0.1", addrs[1]).await,
            b"",
            "served, not refused"
        );
        trigger.trigger();
    }

    /// One peer at its `max-connections-per-peer` is refused; another is still served;
    /// a reload that raises the limit lets the first peer in again.
    #[tokio::test]
    async fn one_peer_cannot_take_every_place() {
        let (trigger, shutdown) = crate::shutdown::channel();
        let connections = Connections::new(10, 2, Duration::from_secs(5));
        let (addrs, release) = loops(1, &connections, &shutdown).await;
        let _held = [
            connect_from("127.0.0.1", addrs[0]).await,
            connect_from("127.0.0.1", addrs[0]).await,
        ];
        open(&connections, 2).await;
        assert_eq!(told("127.0.0.1", addrs[0]).await, b"busy");
        let _other = connect_from("127.0.0.2", addrs[0]).await;
        open(&connections, 3).await;
        connections.set(10, 3, Duration::from_secs(5));
        let _third = connect_from("127.0.0.1", addrs[0]).await;
        open(&connections, 4).await;
        release.send(true).unwrap();
        open(&connections, 0).await;
        assert!(
            connections.0.open().by_peer.is_empty(),
            "no peer left behind"
        );
        trigger.trigger();
    }

    #[test]
    fn peers_are_addresses_and_ipv6_prefixes() {
        let key = |s: &str| PeerKey::of(s.parse().unwrap());
        assert_eq!(key("192.0.2.1"), key("::ffff:192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }
}
