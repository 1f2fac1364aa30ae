//! `relaylog bench passthrough`: the floor `benches/compare.sh` measures relaylog
//! against. A bare HTTP/1.1 pass-through on hyper 1.x: one current-thread runtime, one
//! upstream connection per client connection, each body collected (up to
//! [`MAX_BODY`]) and forwarded; nothing parsed, recorded or logged. Whatever relaylog
//! spends above it is relaylog's own.
//!
//! It forwards without recording, so it is no relay to put in front of a gateway: the
//! command is hidden, listens on loopback only (checked by the CLI), and is bounded
//! ([`MAX_CONNECTIONS`], [`HEAD_TIMEOUT`], [`MAX_BODY`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// Largest request or response body it forwards.
pub const MAX_BODY: usize = 1 << 20;

/// Most client connections at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1_024;

/// Longest wait for a request head.
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Serves until the task is dropped: each accepted connection gets its own upstream
/// connection to `upstream`.
pub async fn run(listener: TcpListener, upstream: SocketAddr) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // The semaphore is never closed.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // Out of descriptors, a connection reset before it was taken: wait, go on.
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection(client, upstream).await {
                tracing::debug!(error = %e, "pass-through connection ended");
            }
        });
    }
}

async fn connection(client: TcpStream, upstream: SocketAddr) -> Result<(), BoxError> {
    client.set_nodelay(true)?;
    let up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
    tokio::spawn(conn);
    // HTTP/1.1 serves one request at a time per connection: the lock is never contended.
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = service_fn(move |req: Request<Incoming>| forward(sender.clone(), req));
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(client), service)
        .await?;
    Ok(())
}

async fn forward(
    sender: Arc<tokio::sync::Mutex<Sender>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY).collect().await?.to_bytes();
    let mut sender = sender.lock().await;
    sender.ready().await?;
    let answer = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = answer.into_parts();
    let body = Limited::new(body, MAX_BODY).collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}
