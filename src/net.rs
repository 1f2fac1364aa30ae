//! Plumbing every TCP listener shares: accepting until shutdown, and serving one HTTP/1
//! connection that closes gracefully when shutdown comes.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::shutdown::Shutdown;

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
