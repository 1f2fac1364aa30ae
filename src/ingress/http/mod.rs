//! The HTTP(S) listener: the shared accept loop ([`crate::net::run`]) with a "busy"
//! reply at the connection limit; per socket, the fast path (`lean.rs`) and hyper's
//! http1 server from the first request the fast path leaves to it; a watchdog per
//! connection for idle and slow-head timeouts and for shutdown; and the request phases
//! in `request.rs`, which both share.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::net::{Connections, Live};

mod lean;
mod request;

use crate::shutdown::{Drain, Shutdown};
pub use request::{Listener, handle};

/// How long an HTTP thread waits for its runtime's blocking work (a key file read) once
/// its connections are done.
const RUNTIME_END: Duration = Duration::from_secs(1);

/// One thread's accept loop of an HTTP listener (see [`HttpThreads`]).
struct HttpServer {
    listener: TcpListener,
    /// What each new connection relays with: the HTTP phases and the relay core, with
    /// the listener's limits as last (re)loaded.
    http: Live<Listener>,
    tls: Option<TlsAcceptor>,
    /// The listener's connection limits, shared by every thread that serves it.
    connections: Connections,
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 36\r\nRetry-After: 1\r\nConnection: close\r\n\r\nrelaylog: too many connections, busy";

impl HttpServer {
    /// Accepts until shutdown. Each connection holds a [`Drain`] token until it ends.
    async fn run(self, shutdown: Shutdown, drain: Drain) {
        let relay = self.http.get().relay.clone();
        let gate = crate::net::Gate {
            name: relay.name.clone(),
            connections: self.connections,
            tls: self.tls,
            busy: BUSY,
            metrics: relay.metrics.clone(),
        };
        let live = self.http;
        let sessions = shutdown.clone();
        let session = move |stream, peer| {
            let (http, shutdown, drain) = (live.get(), sessions.clone(), drain.clone());
            async move {
                serve(stream, peer, http, shutdown, &drain).await;
                drop(drain);
            }
        };
        crate::net::run(self.listener, gate, shutdown, session).await;
    }
}

/// An HTTP listener served by threads of its own, each running a current-thread
/// runtime on a copy of the listening socket (the same socket: one bind, one accept
/// queue, which every thread's poller watches; a connection goes to the thread whose
/// `accept` gets it first, and stays there) and relaying with a [`Listener`] of its own
/// (its own upstream connections, which belong to that runtime). A connection and
/// everything it does (parse, seal, wait for the journal, forward, answer) stay on one
/// thread: no task moves between threads, and no thread wakes another to run it, as a
/// shared multi-threaded runtime's workers did when they stole each other's tasks.
///
/// Each thread's connections hold a drain token of the thread's own; the thread holds
/// one of the server's until the last of them is done, so `serve`'s shutdown waits for
/// them as for the connections on its own runtime.
pub struct HttpThreads {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl HttpThreads {
    /// Starts a thread for each of `listeners` (one [`Listener`] per thread), all on
    /// `socket`, within `connections` between them. Returns once
    /// every thread serves, or with the first failure (threads already started then
    /// stop with `shutdown`'s trigger).
    pub fn spawn(
        socket: std::net::TcpListener,
        listeners: Vec<Live<Listener>>,
        connections: Connections,
        tls: Option<TlsAcceptor>,
        shutdown: &Shutdown,
        drain: &Drain,
    ) -> io::Result<HttpThreads> {
        if listeners.is_empty() {
            return Err(io::Error::other(
                "an HTTP listener needs at least one thread",
            ));
        }
        socket.set_nonblocking(true)?;
        // The threads log where the code that started them logs (the process's
        // subscriber, or a test's). A scoped default on a thread costs an event a
        // thread-local look-up, and only events past the level filter: not the
        // per-request debug lines of a relaylog logging at info.
        let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
        let mut started = HttpThreads {
            threads: Vec::with_capacity(listeners.len()),
        };
        for http in listeners {
            let socket = socket.try_clone()?;
            let (tls, connections) = (tls.clone(), connections.clone());
            let (shutdown, server_drain) = (shutdown.clone(), drain.clone());
            let dispatch = dispatch.clone();
            let (ready, serving) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
            let thread = std::thread::Builder::new()
                .name("relaylog-http".into())
                .spawn(move || {
                    let _logs = tracing::dispatcher::set_default(&dispatch);
                    if let Err(e) = crate::sched::short_slices() {
                        tracing::debug!(error = %e, "the kernel keeps the relay thread's default slice");
                    }
                    let name = http.get().relay.name.clone();
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let rt = &runtime;
                    let serve = std::panic::AssertUnwindSafe(move || {
                        rt.block_on(async move {
                            let listener = match TcpListener::from_std(socket) {
                                Ok(l) => l,
                                Err(e) => {
                                    let _ = ready.send(Err(e));
                                    return;
                                }
                            };
                            let _ = ready.send(Ok(()));
                            let (drain, connections_done) = crate::shutdown::drain();
                            let server = HttpServer {
                                listener,
                                http,
                                tls,
                                connections,
                            };
                            server.run(shutdown, drain).await;
                            // Accepting is over; the connections (and the messages
                            // they detached) finish on this runtime.
                            connections_done.wait().await;
                            drop(server_drain);
                        })
                    });
                    if let Err(panic) = std::panic::catch_unwind(serve) {
                        let what = panic
                            .downcast_ref::<&str>()
                            .copied()
                            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                            .unwrap_or("(no message)");
                        // Its connections went with it: a recorded message among them
                        // got its outcome (`failed: shutdown`) from its dropped ticket.
                        tracing::error!(listener = %name, panic = what, "an HTTP listener thread panicked; the listener's other threads serve on");
                    }
                    // Before the log dispatch goes, so that what its end logs is kept;
                    // bounded, as a key file read on its blocking pool could hang.
                    runtime.shutdown_timeout(RUNTIME_END);
                })?;
            started.threads.push(thread);
            serving.recv().unwrap_or_else(|_| {
                Err(io::Error::other(
                    "the thread ended before it could serve (see the log)",
                ))
            })?;
        }
        Ok(started)
    }

    /// Waits until `deadline` for the threads, which end once their connections have
    /// (what `serve`'s drain waited for). Whether they all did.
    pub async fn join(self, deadline: Instant) -> bool {
        for thread in self.threads {
            while !thread.is_finished() {
                if Instant::now() >= deadline {
                    tracing::warn!("an HTTP listener thread did not end in time; left to the exit");
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // A panic was logged by the thread itself.
            let _ = thread.join();
        }
        true
    }
}

/// What the watchdog knows of a connection. Times are milliseconds since `base`.
struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    last: AtomicU64,
    /// When the first byte of a request head arrived with no request in flight
    /// (`u64::MAX`: none pending).
    head_started: AtomicU64,
    /// Shutdown or the idle timeout: the fast path closes after the request in flight.
    close_after: AtomicBool,
    /// Nothing read yet. The first head must be in within header-timeout of the
    /// connection's start, whether or not a byte of it came: a connection that says
    /// nothing is cut then, not after idle-timeout.
    silent: AtomicBool,
}

impl Activity {
    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }
    fn read_some(&self) {
        let now = self.now();
        self.silent.store(false, Ordering::Relaxed);
        self.last.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self.head_started.compare_exchange(
                u64::MAX,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(u64::MAX, Ordering::Relaxed);
    }
    fn end(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An IO stream that reports reads to the connection's [`Activity`], with the bytes
/// the fast path read and did not use put back in front.
struct Watched<I> {
    prefix: Bytes,
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            if self.prefix.is_empty() {
                // Let go of the copy.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_some();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves one connection until it ends, the idle timeout closes it, or shutdown: the
/// fast path (`lean.rs`) first, hyper from the first request the fast path does not
/// take. At shutdown the request in flight is finished and the connection closed. The
/// header timeout keeps applying while closing (a client that never finishes its head
/// cannot hold the drain), and past `shutdown-timeout` (the listener's `abort`) the
/// connection is dropped at once; a recorded message in it still gets its outcome
/// (see `relay`).
async fn serve<I>(
    mut io: I,
    peer: SocketAddr,
    http: Arc<Listener>,
    shutdown: Shutdown,
    drain: &Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        base: Instant::now(),
        in_flight: AtomicUsize::new(0),
        last: AtomicU64::new(0),
        head_started: AtomicU64::new(u64::MAX),
        silent: AtomicBool::new(true),
        close_after: AtomicBool::new(false),
    });
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let fast = lean::serve(&mut io, &mut buf, &http, peer, drain, &activity);
    // The fast path closes by itself after the request in flight; between requests
    // (no head begun: the header timeout bounds one that has), the watchdog drops it.
    let close_after = |_: Pin<&mut _>| {
        activity.close_after.store(true, Ordering::Relaxed);
        activity.in_flight.load(Ordering::Relaxed) == 0
            && activity.head_started.load(Ordering::Relaxed) == u64::MAX
    };
    if !matches!(
        watch(
            std::pin::pin!(fast),
            &activity,
            &http,
            &shutdown,
            close_after
        )
        .await,
        Some(lean::End::Handoff)
    ) {
        return;
    }
    // Handed over while closing: hyper answers the request it was handed (the
    // watchdog's next tick turns its keep-alive off) and closes.

    let svc = {
        let activity = activity.clone();
        let drain = drain.clone();
        let http = http.clone();
        service_fn(move |req| {
            let http = http.clone();
            let activity = activity.clone();
            let drain = drain.clone();
            async move {
                activity.begin();
                let resp = handle(&http, req, peer, drain).await;
                activity.end();
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let io = Watched {
        // A copy: the fast path's buffer may have grown large; the prefix is at most
        // a head and a body.
        prefix: Bytes::copy_from_slice(&buf),
        io,
        activity: activity.clone(),
    };
    drop(buf);
    let conn = http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(crate::http1::MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), svc);
    let close_after = |conn: Pin<&mut _>| {
        hyper::server::conn::http1::Connection::graceful_shutdown(conn);
        false
    };
    if let Some(Err(e)) = watch(
        std::pin::pin!(conn),
        &activity,
        &http,
        &shutdown,
        close_after,
    )
    .await
    {
        if e.is_parse_too_large() {
            http.relay.metrics.cut(&http.relay.name, "head_too_large");
        }
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Runs a connection's future under the watchdog: idle and slow-head timeouts,
/// shutdown and its deadline. Once shutdown or the idle timeout asks the connection to
/// close, `close_after` is called on every tick with nothing in flight: it tells the
/// connection to close after what is in flight (idempotent), and returns `true` when
/// the watchdog should drop it now. `None`: the watchdog dropped the connection.
async fn watch<F: Future>(
    mut conn: Pin<&mut F>,
    activity: &Activity,
    http: &Listener,
    shutdown: &Shutdown,
    mut close_after: impl FnMut(Pin<&mut F>) -> bool,
) -> Option<F::Output> {
    let limits = http.limits;
    let tick = Duration::from_millis(250)
        .min(limits.header_timeout)
        .min(limits.idle_timeout);
    let mut asked = false;
    loop {
        tokio::select! {
            out = conn.as_mut() => return Some(out),
            // Shutdown and its deadline are looked at on the tick, not awaited: a
            // watch awaited here would take its lock on every poll of every
            // connection (twice a request), for news that comes once.
            _ = tokio::time::sleep(tick) => {
                if http.relay.abort.is_triggered() {
                    tracing::debug!("shutdown-timeout passed; closing the connection");
                    return None;
                }
                if !asked && shutdown.is_triggered() {
                    asked = true;
                    if close_after(conn.as_mut()) {
                        return None;
                    }
                }
                if activity.in_flight.load(Ordering::Relaxed) > 0 {
                    continue;
                }
                let now = activity.now();
                let mut head = activity.head_started.load(Ordering::Relaxed);
                if head == u64::MAX && activity.silent.load(Ordering::Relaxed) {
                    head = 0;
                }
                if head != u64::MAX && now.saturating_sub(head) >= limits.header_timeout.as_millis() as u64 {
                    tracing::debug!("request head not received in time; closing");
                    http.relay.metrics.cut(&http.relay.name, "header_timeout");
                    return None;
                }
                let quiet = now.saturating_sub(activity.last.load(Ordering::Relaxed));
                let idle = head == u64::MAX && quiet >= limits.idle_timeout.as_millis() as u64;
                if idle && !asked {
                    http.relay.metrics.cut(&http.relay.name, "idle_timeout");
                }
                asked |= idle;
                // Also when asked while a request was in flight that has ended since.
                if asked && close_after(conn.as_mut()) {
                    return None;
                }
                // Asked, nothing in flight, no head begun, and still open a
                // request-timeout later: stuck writing to a client that does not read.
                if asked && head == u64::MAX && quiet >= (limits.idle_timeout + limits.request_timeout).as_millis() as u64 {
                    tracing::debug!("reply not taken by the client in time; closing");
                    http.relay.metrics.cut(&http.relay.name, "reply_timeout");
                    return None;
                }
            }
        }
    }
}
