//! A sink MTA: answers like Postfix's smtpd (greeting, EHLO offer, enhanced codes,
//! `queued as` ids) and discards every message. The default upstream of an SMTP
//! listener that names none (`mock-gateway --api smtp`), and the upstream of the SMTP
//! tests and `bench smtp`. It counts what it took and keeps nothing else.
//!
//! With a certificate it offers STARTTLS, or speaks TLS from the first byte (smtps):
//! the upstream of the tests of relaylog's TLS towards its upstream.
//!
//! Test hooks, so that tests can drive refusals through a real session: a recipient
//! whose local part starts with `refuse` gets `550 5.1.1`, one starting with `later`
//! gets `450 4.2.0`, and the password `wrong` fails AUTH.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::shutdown::Shutdown;
use crate::smtp::{DotScanner, Io, Line, MAX_COMMAND_LINE, Scan, Verb, Wire, WireError};

/// The largest message the sink takes (Postfix's default `message_size_limit`).
pub const SINK_MAX_MESSAGE: u64 = 10_240_000;

/// How long the sink waits for a client.
const TIMEOUT: Duration = Duration::from_secs(300);

/// Counts, as `mock-gateway` logs them and tests read them.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub sessions: AtomicU64,
    /// Messages queued (a final 250).
    pub messages: AtomicU64,
    /// Recipients of queued messages.
    pub recipients: AtomicU64,
    /// Content bytes of queued messages.
    pub bytes: AtomicU64,
    /// Successful AUTH exchanges.
    pub auths: AtomicU64,
    /// XCLIENT commands taken; the last one's ADDR and PORT are in `xclient_last`.
    pub xclients: AtomicU64,
    pub xclient_last: std::sync::Mutex<Option<String>>,
}

impl SinkStats {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "sessions": self.sessions.load(Ordering::Relaxed),
            "messages": self.messages.load(Ordering::Relaxed),
            "recipients": self.recipients.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "auths": self.auths.load(Ordering::Relaxed),
            "xclients": self.xclients.load(Ordering::Relaxed),
        })
        .to_string()
    }
}

/// How the sink speaks TLS.
#[derive(Clone)]
pub enum SinkTls {
    /// Offers STARTTLS in its EHLO reply.
    StartTls(TlsAcceptor),
    /// TLS from the first byte (port 465 style).
    Implicit(TlsAcceptor),
}

pub struct SmtpSink {
    listener: TcpListener,
    tls: Option<SinkTls>,
    pub stats: Arc<SinkStats>,
}

impl SmtpSink {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<SmtpSink> {
        Ok(SmtpSink {
            listener: TcpListener::bind(addr).await?,
            tls: None,
            stats: Arc::new(SinkStats::default()),
        })
    }

    pub fn with_tls(mut self, tls: SinkTls) -> SmtpSink {
        self.tls = Some(tls);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run(self, mut shutdown: Shutdown) {
        while let Some((stream, _)) =
            crate::net::accept(&self.listener, &mut shutdown, "smtp sink").await
        {
            let _ = stream.set_nodelay(true);
            let stats = self.stats.clone();
            let tls = self.tls.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let served = async {
                    match tls {
                        None => session(stream, &stats, None).await,
                        Some(SinkTls::StartTls(acceptor)) => {
                            session(stream, &stats, Some(&acceptor)).await
                        }
                        Some(SinkTls::Implicit(acceptor)) => {
                            let handshake = acceptor.accept(stream);
                            if let Ok(Ok(tls)) = tokio::time::timeout(TIMEOUT, handshake).await {
                                session(tls, &stats, None).await
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = served => {}
                    _ = shutdown.wait() => {}
                }
            });
        }
    }
}

struct Tx {
    recipients: u64,
    bytes: u64,
    /// A BDAT chunk failed: the rest of the transaction is refused.
    failed: bool,
}

/// One SMTP session against the sink, until QUIT or the client leaves; with
/// `starttls`, the sink offers it.
pub async fn session<S: Io>(io: S, stats: &SinkStats, starttls: Option<&TlsAcceptor>) {
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    let mut w = Wire::new(io);
    if !matches!(
        serve(&mut w, stats, starttls.is_some()).await,
        Ok(Served::StartTls)
    ) {
        return;
    }
    let Some(acceptor) = starttls else { return };
    let Wire { io, .. } = w;
    if let Ok(Ok(tls)) = tokio::time::timeout(TIMEOUT, acceptor.accept(io)).await {
        // After the handshake the client speaks first (EHLO), with no greeting.
        let _ = serve_commands(&mut Wire::new(tls), stats, false).await;
    }
}

/// How a session ended.
enum Served {
    Quit,
    StartTls,
}

const GREETING: &[u8] = b"220 sink.relaylog.test ESMTP relaylog sink\r\n";

async fn serve<S: Io>(
    w: &mut Wire<S>,
    stats: &SinkStats,
    starttls: bool,
) -> Result<Served, WireError> {
    w.send(GREETING, TIMEOUT).await?;
    serve_commands(w, stats, starttls).await
}

async fn serve_commands<S: Io>(
    w: &mut Wire<S>,
    stats: &SinkStats,
    starttls: bool,
) -> Result<Served, WireError> {
    let mut tx: Option<Tx> = None;
    let mut out = Vec::new();
    loop {
        if !w.has_line() && !out.is_empty() {
            w.send(&out, TIMEOUT).await?;
            out.clear();
        }
        let len = match w.line(MAX_COMMAND_LINE, TIMEOUT).await? {
            Line::Text { len, .. } => len,
            Line::TooLong => {
                out.extend_from_slice(b"500 5.5.0 Error: line too long\r\n");
                continue;
            }
        };
        let line = w.buffered()[..len].to_vec();
        w.consume_line(len);
        let (verb, args) = crate::smtp::verb(&line);
        let reply: &[u8] = match verb {
            Verb::Ehlo if starttls => b"250-sink.relaylog.test\r\n250-STARTTLS\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 CHUNKING\r\n",
            Verb::StartTls if starttls && tx.is_none() && !w.has_line() => {
                out.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
                w.send(&out, TIMEOUT).await?;
                return Ok(Served::StartTls);
            }
            Verb::Ehlo => b"250-sink.relaylog.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
            Verb::Helo => b"250 sink.relaylog.test\r\n",
            Verb::Noop => b"250 2.0.0 Ok\r\n",
            Verb::Rset => {
                tx = None;
                b"250 2.0.0 Ok\r\n"
            }
            Verb::Vrfy => b"252 2.0.0 Send some mail, I'll try my best\r\n",
            Verb::Quit => {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                w.send(&out, TIMEOUT).await?;
                return Ok(Served::Quit);
            }
            Verb::Auth => {
                w.send(&out, TIMEOUT).await?;
                out.clear();
                let ok = auth(w, args).await?;
                if ok {
                    stats.auths.fetch_add(1, Ordering::Relaxed);
                    b"235 2.7.0 Authentication successful\r\n"
                } else {
                    b"535 5.7.8 Error: authentication failed: authentication failure\r\n"
                }
            }
            Verb::Mail if tx.is_some() => b"503 5.5.1 Error: nested MAIL command\r\n",
            Verb::Mail => {
                let size = crate::smtp::path_arg(args, b"FROM:")
                    .and_then(|(_, params)| crate::smtp::param(params, b"SIZE"))
                    .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u64>().ok());
                if size.is_some_and(|s| s > SINK_MAX_MESSAGE) {
                    b"552 5.3.4 Message size exceeds fixed limit\r\n"
                } else if crate::smtp::path_arg(args, b"FROM:").is_none() {
                    b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
                } else {
                    tx = Some(Tx {
                        recipients: 0,
                        bytes: 0,
                        failed: false,
                    });
                    b"250 2.1.0 Ok\r\n"
                }
            }
            Verb::Rcpt => match (&mut tx, crate::smtp::path_arg(args, b"TO:")) {
                (None, _) => b"503 5.5.1 Error: need MAIL command\r\n",
                (Some(_), None) => b"501 5.5.4 Syntax: RCPT TO:<address>\r\n",
                (Some(_), Some((path, _))) if path.starts_with(b"refuse") => {
                    b"550 5.1.1 Recipient address rejected: User unknown in local recipient table\r\n"
                }
                (Some(_), Some((path, _))) if path.starts_with(b"later") => {
                    b"450 4.2.0 Recipient address rejected: try again later\r\n"
                }
                (Some(t), Some(_)) => {
                    t.recipients += 1;
                    b"250 2.1.5 Ok\r\n"
                }
            },
            Verb::Data => match &mut tx {
                None => b"503 5.5.1 Error: need RCPT command\r\n",
                Some(t) if t.recipients == 0 => b"554 5.5.1 Error: no valid recipients\r\n",
                Some(t) => {
                    out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                    w.send(&out, TIMEOUT).await?;
                    out.clear();
                    match data(w).await? {
                        Some(bytes) => {
                            t.bytes = bytes;
                            let t = tx.take().expect("in a transaction");
                            out.extend_from_slice(queued(stats, &t).as_bytes());
                            continue;
                        }
                        None => {
                            w.send(b"521 5.5.2 Error: bare <LF> received\r\n", TIMEOUT)
                                .await?;
                            return Ok(Served::Quit);
                        }
                    }
                }
            },
            Verb::Bdat => {
                let Some((size, last)) = crate::smtp::bdat_args(args) else {
                    out.extend_from_slice(b"501 5.5.4 Syntax: BDAT count [LAST]\r\n");
                    continue;
                };
                discard(w, size).await?;
                match &mut tx {
                    None => b"503 5.5.1 Error: need RCPT command\r\n",
                    Some(t) if t.recipients == 0 || t.failed => {
                        t.failed = true;
                        b"554 5.5.1 Error: no valid recipients\r\n"
                    }
                    Some(t) if t.bytes + size > SINK_MAX_MESSAGE => {
                        t.failed = true;
                        b"552 5.3.4 Message size exceeds fixed limit\r\n"
                    }
                    Some(t) => {
                        t.bytes += size;
                        if last {
                            let t = tx.take().expect("in a transaction");
                            out.extend_from_slice(queued(stats, &t).as_bytes());
                            continue;
                        }
                        out.extend_from_slice(
                            format!("250 2.0.0 Ok: {size} bytes\r\n").as_bytes(),
                        );
                        continue;
                    }
                }
            }
            Verb::Other if line.len() >= 7 && line[..7].eq_ignore_ascii_case(b"XCLIENT") => {
                stats.xclients.fetch_add(1, Ordering::Relaxed);
                *stats.xclient_last.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(String::from_utf8_lossy(&line[7..]).trim().to_owned());
                tx = None;
                GREETING
            }
            _ => b"502 5.5.2 Error: command not recognized\r\n",
        };
        out.extend_from_slice(reply);
    }
}

fn queued(stats: &SinkStats, t: &Tx) -> String {
    let n = stats.messages.fetch_add(1, Ordering::Relaxed) + 1;
    stats.recipients.fetch_add(t.recipients, Ordering::Relaxed);
    stats.bytes.fetch_add(t.bytes, Ordering::Relaxed);
    format!("250 2.0.0 Ok: queued as S{n:010X}\r\n")
}

/// Reads DATA content to its end: its size, or `None` at a bare line ending.
async fn data<S: Io>(w: &mut Wire<S>) -> Result<Option<u64>, WireError> {
    let mut scanner = DotScanner::default();
    let mut size = 0u64;
    loop {
        if w.buffered().is_empty() {
            w.fill_within(TIMEOUT).await?;
        }
        match scanner.scan(w.buffered()) {
            Scan::More(n) => {
                size += n as u64;
                w.consume(n);
                if n == 0 {
                    w.fill_within(TIMEOUT).await?;
                }
            }
            Scan::End(n) => {
                size += n.saturating_sub(3) as u64;
                w.consume(n);
                return Ok(Some(size));
            }
            Scan::Bare(_) => return Ok(None),
        }
    }
}

/// Reads and drops `n` bytes of a BDAT chunk.
async fn discard<S: Io>(w: &mut Wire<S>, mut n: u64) -> Result<(), WireError> {
    while n > 0 {
        if w.buffered().is_empty() {
            w.fill_within(TIMEOUT).await?;
        }
        let take = (w.buffered().len() as u64).min(n) as usize;
        w.consume(take);
        n -= take as u64;
    }
    Ok(())
}

/// A PLAIN or LOGIN exchange; true when the password is not `wrong`.
async fn auth<S: Io>(w: &mut Wire<S>, args: &[u8]) -> Result<bool, WireError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut words = args.split(|&b| b == b' ');
    let mech = words.next().unwrap_or_default().to_ascii_uppercase();
    let initial = words.next().map(<[u8]>::to_vec);
    let response = async |w: &mut Wire<S>, challenge: &[u8]| -> Result<Vec<u8>, WireError> {
        w.send(challenge, TIMEOUT).await?;
        match w.line(MAX_COMMAND_LINE, TIMEOUT).await? {
            Line::Text { len, .. } => {
                let l = w.buffered()[..len].to_vec();
                w.consume_line(len);
                Ok(l)
            }
            Line::TooLong => Ok(b"*".to_vec()),
        }
    };
    let password = match mech.as_slice() {
        b"PLAIN" => {
            let r = match initial {
                Some(r) => r,
                None => response(w, b"334 \r\n").await?,
            };
            let Ok(decoded) = b64.decode(&r) else {
                return Ok(false);
            };
            decoded.split(|&b| b == 0).nth(2).map(<[u8]>::to_vec)
        }
        b"LOGIN" => {
            if initial.is_none() {
                response(w, b"334 VXNlcm5hbWU6\r\n").await?;
            }
            let r = response(w, b"334 UGFzc3dvcmQ6\r\n").await?;
            b64.decode(&r).ok()
        }
        _ => None,
    };
    Ok(password.is_some_and(|p| p != b"wrong"))
}
