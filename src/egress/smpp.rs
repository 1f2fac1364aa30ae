//! The upstream leg of an SMPP session: one connection per client bind, opened when
//! the bind arrives, over TCP or TLS (`smpps://`, verified against `upstream-ca` or
//! the web PKI roots).

use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{Smpp, SmppTarget};
use crate::egress::http::ConnectCause;
use crate::ingress::tls::{TlsError, upstream_connector};
use crate::net::Io;
use crate::relay::Failure;

/// Why the upstream leg could not be opened or broke. Texts hold the OS's words or a
/// status, never session data.
#[derive(Debug, thiserror::Error)]
pub enum SmppUpstreamError {
    #[error("cannot connect to the upstream: {0}")]
    Connect(ConnectCause),
    #[error("upstream TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("the upstream closed the session")]
    Closed,
    #[error("the upstream sent an unreadable PDU")]
    Malformed,
}

impl Failure for SmppUpstreamError {
    fn reason(&self) -> &'static str {
        match self {
            SmppUpstreamError::Connect(cause) => cause.reason(),
            SmppUpstreamError::Tls(_) => "upstream_tls",
            SmppUpstreamError::Timeout => "upstream_timeout",
            SmppUpstreamError::Closed => "upstream_closed",
            SmppUpstreamError::Malformed => "upstream_malformed",
        }
    }
}

pub struct SmppUpstream {
    target: SmppTarget,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    pub timeout: Duration,
}

impl SmppUpstream {
    pub fn new(target: SmppTarget, cfg: &Smpp) -> Result<Self, TlsError> {
        let tls = if target.tls {
            Some(upstream_connector(
                &target.host,
                cfg.upstream_ca.as_deref(),
            )?)
        } else {
            None
        };
        Ok(SmppUpstream {
            target,
            tls,
            timeout: cfg.upstream_timeout,
        })
    }

    pub fn target(&self) -> &SmppTarget {
        &self.target
    }

    /// Opens a connection to the upstream.
    pub async fn connect(&self) -> Result<Box<dyn Io>, SmppUpstreamError> {
        let addr = (self.target.host.as_str(), self.target.port);
        let tcp = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SmppUpstreamError::Connect(ConnectCause::of_tcp(&e))),
            Err(_) => return Err(SmppUpstreamError::Connect(ConnectCause::TimedOut)),
        };
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        match tokio::time::timeout(self.timeout, connector.connect(name.clone(), tcp)).await {
            Ok(Ok(s)) => Ok(Box::new(s)),
            Ok(Err(e)) => Err(SmppUpstreamError::Tls(e)),
            Err(_) => Err(SmppUpstreamError::Timeout),
        }
    }
}
