//! `relaylog bench passthrough`: the floor `benches/compare.sh` measures relaylog
//! against. A bare HTTP/1.1 pass-through on hyper 1.x: one current-thread runtime, one
//! upstream connection per client connection, each body collected (up to
//! [`MAX_BODY`]) and forwarded; nothing parsed, recorded or logged. Whatever relaylog
//! spends above it is relaylog's own.

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

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Serves until the task is dropped: each accepted connection gets its own upstream
/// connection to `upstream`.
pub async fn run(listener: TcpListener, upstream: SocketAddr) -> std::io::Result<()> {
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
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
