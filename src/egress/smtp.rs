//! The upstream leg of an SMTP session: one connection per client session, opened
//! when the client connects. TLS from the first byte (`smtps://`) or by STARTTLS
//! (`upstream-starttls`), then, with `xclient = true`, Postfix's XCLIENT so that the
//! upstream's policies and logs see the real client. What the client is greeted with
//! is the upstream's own greeting (after XCLIENT: the one it answers XCLIENT with).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{Smtp, SmtpTarget};
use crate::egress::http::ConnectCause;
use crate::ingress::tls::{TlsError, upstream_connector};
use crate::relay::Failure;
use crate::smtp::{Io, Reply, Wire, WireError};

/// The name relaylog gives in its own EHLO to the upstream (before STARTTLS or XCLIENT).
const EHLO_NAME: &str = "relaylog";

/// Why the upstream leg could not be opened or broke. Texts hold the upstream's reply
/// code or the OS's words, never session data.
#[derive(Debug, thiserror::Error)]
pub enum SmtpUpstreamError {
    #[error("cannot connect to the upstream: {0}")]
    Connect(ConnectCause),
    #[error("upstream TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("the upstream answered STARTTLS with {0}")]
    StartTls(u16),
    #[error(
        "the upstream answered XCLIENT with {0}: allow relaylog in its smtpd_authorized_xclient_hosts"
    )]
    Xclient(u16),
    #[error("the upstream answered RSET with {0}")]
    Reset(u16),
    #[error("upstream: {0}")]
    Wire(#[from] WireError),
}

impl Failure for SmtpUpstreamError {
    fn reason(&self) -> &'static str {
        match self {
            SmtpUpstreamError::Connect(cause) => cause.reason(),
            SmtpUpstreamError::Tls(_) => "upstream_tls",
            SmtpUpstreamError::StartTls(_) => "upstream_starttls",
            SmtpUpstreamError::Xclient(_) => "upstream_xclient",
            SmtpUpstreamError::Reset(_) => "upstream_reset",
            SmtpUpstreamError::Wire(WireError::Timeout) => "upstream_timeout",
            SmtpUpstreamError::Wire(WireError::Closed) => "upstream_closed",
            SmtpUpstreamError::Wire(WireError::Malformed(_)) => "upstream_malformed",
            SmtpUpstreamError::Wire(WireError::Io(_)) => "upstream_io",
        }
    }
}

/// The upstream leg of a session.
pub type Leg = Wire<Box<dyn Io>>;

pub struct SmtpUpstream {
    target: SmtpTarget,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    starttls: bool,
    xclient: bool,
    pub timeout: Duration,
}

impl SmtpUpstream {
    pub fn new(target: SmtpTarget, cfg: &Smtp) -> Result<Self, TlsError> {
        let tls = if target.implicit_tls || cfg.upstream_starttls {
            Some(upstream_connector(
                &target.host,
                cfg.upstream_ca.as_deref(),
            )?)
        } else {
            None
        };
        Ok(SmtpUpstream {
            target,
            tls,
            starttls: cfg.upstream_starttls,
            xclient: cfg.xclient,
            timeout: cfg.upstream_timeout,
        })
    }

    pub fn target(&self) -> &SmtpTarget {
        &self.target
    }

    /// Opens the leg for a client at `client`: the stream and the greeting to give it.
    pub async fn connect(&self, client: SocketAddr) -> Result<(Leg, Reply), SmtpUpstreamError> {
        let addr = (self.target.host.as_str(), self.target.port);
        let tcp = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SmtpUpstreamError::Connect(ConnectCause::of_tcp(&e))),
            Err(_) => return Err(SmtpUpstreamError::Connect(ConnectCause::TimedOut)),
        };
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match (&self.tls, self.target.implicit_tls) {
            (Some(tls), true) => Box::new(self.handshake(tls, tcp).await?),
            _ => Box::new(tcp),
        };
        let mut leg = Wire::new(io);
        let mut greeting = leg.reply(self.timeout).await?;
        if greeting.code != 220 {
            // Refused (554) or busy (421): the client hears it as the upstream said it.
            return Ok((leg, greeting));
        }
        if let (Some(tls), true) = (&self.tls, self.starttls) {
            self.ehlo(&mut leg).await?;
            leg.send(b"STARTTLS\r\n", self.timeout).await?;
            let r = leg.reply(self.timeout).await?;
            if r.code != 220 {
                return Err(SmtpUpstreamError::StartTls(r.code));
            }
            // Nothing may follow the 220 in the clear (RFC 3207).
            leg.discard_buffered();
            let Wire { io, .. } = leg;
            leg = Wire::new(Box::new(self.handshake(tls, io).await?));
        }
        if self.xclient {
            self.ehlo(&mut leg).await?;
            let addr = match crate::canonical::canonical_ip(client.ip()) {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("IPV6:{v6}"),
            };
            let cmd = format!("XCLIENT ADDR={addr} PORT={}\r\n", client.port());
            leg.send(cmd.as_bytes(), self.timeout).await?;
            greeting = leg.reply(self.timeout).await?;
            if greeting.code != 220 {
                return Err(SmtpUpstreamError::Xclient(greeting.code));
            }
        }
        Ok((leg, greeting))
    }

    async fn ehlo(&self, leg: &mut Leg) -> Result<Reply, SmtpUpstreamError> {
        leg.send(format!("EHLO {EHLO_NAME}\r\n").as_bytes(), self.timeout)
            .await?;
        Ok(leg.reply(self.timeout).await?)
    }

    async fn handshake<S>(
        &self,
        (connector, name): &(TlsConnector, ServerName<'static>),
        io: S,
    ) -> Result<tokio_rustls::client::TlsStream<S>, SmtpUpstreamError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match tokio::time::timeout(self.timeout, connector.connect(name.clone(), io)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(SmtpUpstreamError::Tls(e)),
            Err(_) => Err(SmtpUpstreamError::Wire(WireError::Timeout)),
        }
    }
}
