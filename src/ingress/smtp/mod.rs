//! The SMTP listener: the shared accept loop ([`crate::net::run`]) with `421 4.7.0` at
//! the connection limit, TLS from the first byte on an implicit-TLS listener, and one
//! [`session`] per connection, each with its own upstream leg.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Smtp;
use crate::egress::smtp::SmtpUpstream;
use crate::net::{ClientStream, Connections, Io, Live};
use crate::relay::Relay;
use crate::shutdown::{Drain, Shutdown};

pub mod offer;
pub mod session;

/// What every session of one SMTP listener shares.
pub struct SmtpListener {
    pub relay: Arc<Relay>,
    pub settings: Smtp,
    /// Offered through STARTTLS (`None`: no certificate, or TLS from the first byte).
    pub starttls: Option<TlsAcceptor>,
    pub upstream: Arc<SmtpUpstream>,
    /// How long a client's STARTTLS handshake may take (the listener's header-timeout).
    pub handshake_timeout: Duration,
}

impl SmtpListener {
    /// The same listener with `settings` and `handshake_timeout` (a reload's), sharing
    /// the rest.
    pub fn with_settings(&self, settings: Smtp, handshake_timeout: Duration) -> SmtpListener {
        SmtpListener {
            relay: self.relay.clone(),
            settings,
            starttls: self.starttls.clone(),
            upstream: self.upstream.clone(),
            handshake_timeout,
        }
    }
}

pub struct SmtpServer {
    pub listener: TcpListener,
    /// What each new session is served with, as last (re)loaded.
    pub smtp: Live<SmtpListener>,
    pub connections: Connections,
    /// TLS from the first byte (an implicit-TLS listener).
    pub implicit_tls: Option<TlsAcceptor>,
}

const BUSY: &[u8] = b"421 4.7.0 relaylog: too many connections, try again later\r\n";

impl SmtpServer {
    /// Accepts until shutdown. Each session holds a [`Drain`] token until it ends.
    pub async fn run(self, shutdown: Shutdown, drain: Drain) {
        let relay = self.smtp.get().relay.clone();
        let gate = crate::net::Gate {
            name: relay.name.clone(),
            connections: self.connections,
            tls: self.implicit_tls,
            busy: BUSY,
            metrics: relay.metrics.clone(),
        };
        let live = self.smtp;
        let sessions = shutdown.clone();
        let serve = move |stream: ClientStream, peer: SocketAddr| {
            let (smtp, shutdown, drain) = (live.get(), sessions.clone(), drain.clone());
            async move {
                let tls = matches!(stream, ClientStream::Tls(_));
                let io: Box<dyn Io> = Box::new(stream);
                serve(&smtp, io, peer, tls, shutdown).await;
                drop(drain);
            }
        };
        crate::net::run(self.listener, gate, shutdown, serve).await;
    }
}

/// One session, cut short when `shutdown-timeout` passes (a message still on its way
/// then gets `failed: shutdown` from its dropped ticket).
pub async fn serve(
    smtp: &SmtpListener,
    io: Box<dyn Io>,
    peer: SocketAddr,
    tls: bool,
    shutdown: Shutdown,
) {
    let mut abort = Shutdown::clone(&smtp.relay.abort);
    tokio::select! {
        () = session::serve(smtp, io, peer, tls, shutdown) => {}
        () = abort.wait() => {}
    }
}
