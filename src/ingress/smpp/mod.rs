//! The SMPP listener: the shared accept loop ([`crate::net::run`]), TLS from the first
//! byte when the listener has a certificate, and one [`session`] per connection, each
//! with its own upstream session opened at bind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Smpp;
use crate::egress::smpp::SmppUpstream;
use crate::net::ClientStream;
use crate::relay::Relay;
use crate::shutdown::{Drain, Shutdown};
use crate::smtp::Io;

pub mod session;

/// What every session of one SMPP listener shares.
pub struct SmppListener {
    pub relay: Arc<Relay>,
    pub settings: Smpp,
    pub upstream: SmppUpstream,
    /// Sessions bound per account (system_id), for `max-sessions-per-account`.
    pub accounts: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

pub struct SmppServer {
    pub listener: TcpListener,
    pub smpp: Arc<SmppListener>,
    pub tls: Option<TlsAcceptor>,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
}

impl SmppServer {
    /// Accepts until shutdown. Each session holds a [`Drain`] token until it ends.
    pub async fn run(self, shutdown: Shutdown, drain: Drain) {
        let relay = &self.smpp.relay;
        let refused = relay.metrics.connections_refused.get_or_create_owned(
            &crate::metrics::ListenerLabels {
                listener: relay.name.clone(),
            },
        );
        let gate = crate::net::Gate {
            name: relay.name.clone(),
            max_connections: self.max_connections,
            tls: self.tls,
            handshake_timeout: self.handshake_timeout,
        };
        // SMPP has no greeting to say "busy" with: a refused connection just closes.
        let refuse = crate::net::refuse_busy(refused, false, b"");
        let smpp = self.smpp.clone();
        let sessions = shutdown.clone();
        let serve = move |stream: ClientStream, peer: SocketAddr| {
            let (smpp, shutdown, drain) = (smpp.clone(), sessions.clone(), drain.clone());
            async move {
                let io: Box<dyn Io> = Box::new(stream);
                let mut abort = Shutdown::clone(&smpp.relay.abort);
                tokio::select! {
                    () = session::serve(&smpp, io, peer, shutdown) => {}
                    () = abort.wait() => {}
                }
                drop(drain);
            }
        };
        crate::net::run(self.listener, gate, shutdown, refuse, serve).await;
    }
}
