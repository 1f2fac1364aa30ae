//! The soak's upstreams: a Kannel-like HTTP gateway, a mail server and an SMSC, each
//! as small as relaylog's traffic needs, that note every recipient they accept (the
//! [`Tap`]), and that the soak stalls (answers held back) and restarts (listener and
//! connections closed, the same port bound again).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::smpp::{Dest, HEADER_LEN, Header, Message, Writer, frame_len, id, status};
use crate::smtp::{DotScanner, Line, Scan, Wire};

/// How long an upstream waits on its client before giving up on it.
const WAIT: Duration = Duration::from_secs(30);

/// What the soak sees of its upstreams: how many messages each recipient was accepted
/// for (the number as `+316…`, which the store's canonical form keeps; the address as
/// sent, which the soak's clients spell as the store keeps it), and the stall switch.
#[derive(Default)]
pub struct Tap {
    stalled: AtomicBool,
    pub(super) accepted: super::PerRecipient,
}

impl Tap {
    pub fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::Relaxed);
    }

    /// Until the stall (if any) is over.
    async fn unstalled(&self) {
        while self.stalled.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The three upstreams on fixed ports, running or stopped.
pub struct Upstreams {
    pub tap: Arc<Tap>,
    pub http: SocketAddr,
    pub smtp: SocketAddr,
    pub smpp: SocketAddr,
    /// Each upstream's accept loop; dropping one closes its listener and connections.
    running: Vec<tokio::task::JoinHandle<()>>,
}

impl Upstreams {
    pub fn new(http: SocketAddr, smtp: SocketAddr, smpp: SocketAddr) -> Upstreams {
        Upstreams {
            tap: Arc::new(Tap::default()),
            http,
            smtp,
            smpp,
            running: Vec::new(),
        }
    }

    /// Binds the three ports (retrying for a few seconds while the old sockets go).
    pub async fn start(&mut self) -> std::io::Result<()> {
        for (addr, kind) in [(self.http, 0), (self.smtp, 1), (self.smpp, 2)] {
            let listener = bind(addr).await?;
            let tap = self.tap.clone();
            self.running.push(tokio::spawn(async move {
                let mut connections = JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    let tap = tap.clone();
                    // Finished ones are let go of as new ones come.
                    while connections.try_join_next().is_some() {}
                    match kind {
                        0 => connections.spawn(http(stream, tap)),
                        1 => connections.spawn(smtp(stream, tap)),
                        _ => connections.spawn(smsc(stream, tap)),
                    };
                }
            }));
        }
        Ok(())
    }

    /// Closes the listeners and every connection.
    pub async fn stop(&mut self) {
        for task in self.running.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if tries < 100 => {
                tries += 1;
                tracing::debug!(error = %e, %addr, "upstream port not free yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Kannel's sendsms: `to` noted, `202 0: Accepted for delivery`.
async fn http(stream: TcpStream, tap: Arc<Tap>) {
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let tap = tap.clone();
        async move {
            let to = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("to="))
                    .map(|v| v.replace("%2B", "+").replace("%2b", "+"))
            });
            let _ = Limited::new(req.into_body(), 64 * 1024).collect().await;
            tap.unstalled().await;
            let (status, text) = match to {
                Some(to) => {
                    tap.accepted.add(to);
                    (StatusCode::ACCEPTED, "0: Accepted for delivery")
                }
                None => (StatusCode::BAD_REQUEST, "Missing receiver number"),
            };
            let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
            *r.status_mut() = status;
            Ok::<_, Infallible>(r)
        }
    });
    // half_close: a request whose sender went away (relaylog killed while the stall
    // held it) is still answered, and so noted, as a real gateway that had it would.
    let _ = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await;
}

/// A mail server: EHLO, MAIL, RCPT (noted), DATA (each RCPT accepted once the data's
/// end comes), RSET, NOOP, QUIT.
async fn smtp(stream: TcpStream, tap: Arc<Tap>) {
    let mut w = Wire::new(stream);
    if w.send(b"220 soak ESMTP\r\n", WAIT).await.is_err() {
        return;
    }
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        let len = match w.line(crate::smtp::MAX_COMMAND_LINE, WAIT).await {
            Ok(Line::Text { len, .. }) => len,
            _ => return,
        };
        let line = w.buffered()[..len].to_ascii_uppercase();
        let original = String::from_utf8_lossy(&w.buffered()[..len]).into_owned();
        w.consume_line(len);
        let reply: &[u8] = if line.starts_with(b"EHLO") || line.starts_with(b"HELO") {
            b"250-soak\r\n250 PIPELINING\r\n"
        } else if line.starts_with(b"MAIL") {
            rcpts.clear();
            b"250 2.1.0 Ok\r\n"
        } else if line.starts_with(b"RCPT") {
            let to = original
                .split_once('<')
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(addr, _)| addr.to_owned());
            match to {
                Some(to) if rcpts.len() < 1000 => {
                    rcpts.push(to);
                    b"250 2.1.5 Ok\r\n"
                }
                _ => b"501 5.5.4 Syntax: RCPT TO:<address>\r\n",
            }
        } else if line.starts_with(b"DATA") {
            if rcpts.is_empty() {
                b"554 5.5.1 Error: no valid recipients\r\n"
            } else {
                if w.send(b"354 End data with <CR><LF>.<CR><LF>\r\n", WAIT)
                    .await
                    .is_err()
                {
                    return;
                }
                let mut scanner = DotScanner::default();
                loop {
                    if w.buffered().is_empty() && w.fill_within(WAIT).await.is_err() {
                        return;
                    }
                    match scanner.scan(w.buffered()) {
                        Scan::More(n) => {
                            w.consume(n);
                            if n == 0 && w.fill_within(WAIT).await.is_err() {
                                return;
                            }
                        }
                        Scan::End(n) => {
                            w.consume(n);
                            break;
                        }
                        Scan::Bare(_) => return,
                    }
                }
                tap.unstalled().await;
                for to in rcpts.drain(..) {
                    tap.accepted.add(to);
                }
                b"250 2.0.0 Ok: queued\r\n"
            }
        } else if line.starts_with(b"RSET") {
            rcpts.clear();
            b"250 2.0.0 Ok\r\n"
        } else if line.starts_with(b"NOOP") {
            b"250 2.0.0 Ok\r\n"
        } else if line.starts_with(b"QUIT") {
            let _ = w.send(b"221 2.0.0 Bye\r\n", WAIT).await;
            return;
        } else {
            b"502 5.5.2 Error: command not recognized\r\n"
        };
        if w.send(reply, WAIT).await.is_err() {
            return;
        }
    }
}

/// An SMSC: binds, submit_sm (its destination noted, `+` and the digits for an
/// international one), enquire_link, unbind; no receipts.
async fn smsc(mut stream: TcpStream, tap: Arc<Tap>) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut next_id = 0u64;
    loop {
        let len = loop {
            match frame_len(&buf, 64 * 1024) {
                Ok(Some(len)) => break len,
                Ok(None) => {}
                Err(_) => return,
            }
            match tokio::time::timeout(WAIT, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        };
        let pdu = buf.split_to(len);
        let Some(h) = Header::read(&pdu) else { return };
        let body = &pdu[HEADER_LEN..];
        let reply = match h.id {
            id::BIND_RECEIVER | id::BIND_TRANSMITTER | id::BIND_TRANSCEIVER => {
                Writer::new(id::resp(h.id), status::OK, h.sequence)
                    .cstr(b"soak")
                    .finish()
            }
            id::SUBMIT_SM => match Message::read(h.id, body) {
                Ok(m) => {
                    let to = m.dests.iter().find_map(|d| match d {
                        Dest::Sme(a) => Some((a.ton, String::from_utf8_lossy(a.addr).into_owned())),
                        Dest::List(_) => None,
                    });
                    tap.unstalled().await;
                    if let Some((ton, addr)) = to {
                        tap.accepted
                            .add(if ton == 1 { format!("+{addr}") } else { addr });
                    }
                    next_id += 1;
                    Writer::new(id::resp(h.id), status::OK, h.sequence)
                        .cstr(format!("soak{next_id}").as_bytes())
                        .finish()
                }
                Err(e) => Writer::new(id::resp(h.id), e.status, h.sequence)
                    .cstr(b"")
                    .finish(),
            },
            id::ENQUIRE_LINK | id::UNBIND => {
                Writer::new(id::resp(h.id), status::OK, h.sequence).finish()
            }
            _ if h.is_response() => continue,
            _ => Writer::new(id::GENERIC_NACK, status::INVALID_CMD_ID, h.sequence).finish(),
        };
        if stream.write_all(&reply).await.is_err() || h.id == id::UNBIND {
            return;
        }
    }
}
