//! The SMPP listener: the shared accept loop ([`crate::net::run`]), TLS from the first
//! byte when the listener has a certificate, and one [`session`] per connection, each
//! with its own upstream session opened at bind.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Smpp;
use prometheus_client::metrics::counter::Counter;

use crate::egress::smpp::SmppUpstream;
use crate::metrics::ListenerLabels;
use crate::net::{ClientStream, Connections, Io, Live};
use crate::relay::Relay;
use crate::shutdown::{Drain, Shutdown};

pub mod address;
pub mod receipts;
pub mod session;

/// What every session of one SMPP listener shares.
pub struct SmppListener {
    pub relay: Arc<Relay>,
    pub settings: Smpp,
    pub upstream: Arc<SmppUpstream>,
    /// Sessions bound per account (system_id), for `max-sessions-per-account`.
    pub accounts: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// Accepted messages' ids, for their delivery receipts.
    pub book: Arc<receipts::ReceiptBook>,
    pub metrics: Arc<SmppMetrics>,
}

impl SmppListener {
    /// The same listener with `settings` (a reload's), sharing the rest: its
    /// sessions per account and its receipt book (whose receipt-wait and
    /// receipt-book stay as they started) count across the reload.
    pub fn with_settings(&self, settings: Smpp) -> SmppListener {
        SmppListener {
            relay: self.relay.clone(),
            settings,
            upstream: self.upstream.clone(),
            accounts: self.accounts.clone(),
            book: self.book.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The listener's SMPP counters, made once so that a PDU costs a lookup by a fixed
/// name, not a label set.
pub struct SmppMetrics {
    binds: prometheus_client::metrics::family::Family<crate::metrics::BindLabels, Counter>,
    listener: String,
    /// By side (client, upstream), then by [`crate::smpp::id::index`].
    pdus: [Vec<Counter>; 2],
    pub window: prometheus_client::metrics::gauge::Gauge,
    /// Delivery receipts attached to their message.
    pub receipts_matched: Counter,
    /// Delivery receipts that found no message.
    pub receipts_unmatched: Counter,
    /// Delivery receipts matched but not recorded (the store could not take them).
    pub receipts_unrecorded: Counter,
}

impl SmppMetrics {
    pub fn new(metrics: &crate::metrics::Metrics, listener: &str) -> SmppMetrics {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        let pdus = ["client", "upstream"].map(|from| {
            crate::smpp::id::NAMES
                .iter()
                .map(|command| {
                    metrics
                        .smpp_pdus
                        .get_or_create_owned(&crate::metrics::PduLabels {
                            listener: listener.to_owned(),
                            from,
                            command,
                        })
                })
                .collect()
        });
        let receipts = |result| {
            metrics
                .smpp_receipts
                .get_or_create_owned(&crate::metrics::ReceiptLabels {
                    listener: listener.to_owned(),
                    result,
                })
        };
        SmppMetrics {
            binds: metrics.smpp_binds.clone(),
            listener: listener.to_owned(),
            pdus,
            window: metrics.smpp_window.get_or_create_owned(&labels),
            receipts_matched: receipts("matched"),
            receipts_unmatched: receipts("unmatched"),
            receipts_unrecorded: receipts("unrecorded"),
        }
    }

    /// A PDU received from the client (or, `upstream`, from the SMSC).
    pub fn pdu(&self, upstream: bool, command_id: u32) {
        self.pdus[usize::from(upstream)][crate::smpp::id::index(command_id)].inc();
    }

    /// A bind of `command_id`, bound by the SMSC or not.
    pub fn bind(&self, command_id: u32, bound: bool) {
        let kind = match command_id {
            crate::smpp::id::BIND_RECEIVER => "receiver",
            crate::smpp::id::BIND_TRANSMITTER => "transmitter",
            _ => "transceiver",
        };
        self.binds
            .get_or_create(&crate::metrics::BindLabels {
                listener: self.listener.clone(),
                kind,
                result: if bound { "ok" } else { "refused" },
            })
            .inc();
    }
}

pub struct SmppServer {
    pub listener: TcpListener,
    /// What each new session is served with, as last (re)loaded.
    pub smpp: Live<SmppListener>,
    pub tls: Option<TlsAcceptor>,
    pub connections: Connections,
}

impl SmppServer {
    /// Accepts until shutdown. Each session holds a [`Drain`] token until it ends.
    pub async fn run(self, shutdown: Shutdown, drain: Drain) {
        let relay = self.smpp.get().relay.clone();
        let gate = crate::net::Gate {
            name: relay.name.clone(),
            connections: self.connections,
            tls: self.tls,
            // SMPP has no greeting to say "busy" with: a refused connection just closes.
            busy: b"",
            metrics: relay.metrics.clone(),
        };
        let live = self.smpp;
        let sessions = shutdown.clone();
        let serve = move |stream: ClientStream, peer: SocketAddr| {
            let (smpp, shutdown, drain) = (live.get(), sessions.clone(), drain.clone());
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
        crate::net::run(self.listener, gate, shutdown, serve).await;
    }
}
