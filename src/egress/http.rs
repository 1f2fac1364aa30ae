//! Forwarding one request upstream and reading its bounded reply.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::pool::{Conn, Pool, Target};

use crate::config::Forward;
use crate::ingress::tls::{TlsError, client_config};

/// Why a connection to the upstream could not be made or broke before its reply: what
/// an operator needs to tell a stopped gateway from a firewall, a certificate problem
/// or a gateway that hangs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCause {
    /// Nothing listens there (connection refused).
    Refused,
    /// No answer to the TCP or TLS handshake within the timeout.
    TimedOut,
    /// No route to the host or network.
    Unreachable,
    /// The host name did not resolve.
    Resolve,
    /// The TLS handshake failed (certificate, protocol version, name).
    Tls,
    /// The connection was reset or closed before the reply.
    Reset,
    Other,
}

impl ConnectCause {
    /// Classifies the error of a TCP connect (name resolution, TLS and the HTTP
    /// handshake are told apart by the step that failed, in `pool::Pool::connect`).
    pub fn of_tcp(e: &std::io::Error) -> ConnectCause {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => ConnectCause::Refused,
            K::TimedOut => ConnectCause::TimedOut,
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                ConnectCause::Unreachable
            }
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                ConnectCause::Reset
            }
            _ => ConnectCause::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectCause::Refused => "connection refused",
            ConnectCause::TimedOut => "connect timed out",
            ConnectCause::Unreachable => "host unreachable",
            ConnectCause::Resolve => "name does not resolve",
            ConnectCause::Tls => "TLS handshake failed",
            ConnectCause::Reset => "connection reset",
            ConnectCause::Other => "connect failed",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            ConnectCause::Refused => "connect_refused",
            ConnectCause::TimedOut => "connect_timeout",
            ConnectCause::Unreachable => "connect_unreachable",
            ConnectCause::Resolve => "connect_resolve",
            ConnectCause::Tls => "tls",
            ConnectCause::Reset => "connection_reset",
            ConnectCause::Other => "connect",
        }
    }
}

impl std::fmt::Display for ConnectCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request got no usable reply from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The cause is kept typed for the metric label; `source` (the OS's or rustls's
    /// own words, no request data in them) goes to the log line.
    #[error("upstream unreachable ({cause})")]
    Connect {
        cause: ConnectCause,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke after the request was sent, before the reply: the gateway
    /// may or may not have the message.
    #[error("upstream connection broke before its reply")]
    Broken(#[source] std::io::Error),
    #[error("upstream did not answer in time")]
    Timeout,
    #[error("upstream reply larger than max-response-bytes")]
    TooLarge,
    #[error("upstream reply broken off")]
    Body,
    #[error("request cannot be forwarded: {0}")]
    Request(&'static str),
}

impl UpstreamError {
    fn connect(e: super::pool::ConnectError) -> UpstreamError {
        UpstreamError::Connect {
            cause: e.cause,
            source: e.source,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { cause, .. } => cause.reason(),
            Self::Broken(_) => "connection_broken",
            Self::Timeout => "timeout",
            Self::TooLarge => "response_too_large",
            Self::Body => "body",
            Self::Request(_) => "request",
        }
    }

    /// The status relaylog answers the client with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl crate::relay::Failure for UpstreamError {
    fn reason(&self) -> &'static str {
        UpstreamError::reason(self)
    }
}

/// A reply, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct Upstream {
    pool: Arc<Pool>,
    base: Uri,
    host: HeaderValue,
    rewrite_host: bool,
    timeout: Duration,
    max_response_bytes: usize,
}

/// How one attempt at an exchange ended, when it did not give a reply.
enum Attempt {
    /// The connection went away before the request was written: safe to send again.
    NotSent(Box<Request<Full<Bytes>>>),
    Failed(UpstreamError),
}

impl Upstream {
    pub fn new(base: Uri, cfg: &Forward) -> Result<Self, TlsError> {
        let host_str = base.host().unwrap_or("localhost");
        // `[::1]` in a URI, `::1` to connect to and to name in TLS.
        let host = host_str
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = base.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = base.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let config = client_config(cfg.ca_file.as_deref())?;
            let name = ServerName::try_from(host.clone())
                .map_err(|_| TlsError::Invalid("upstream host is not a valid TLS server name"))?;
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        let pool = Pool::new(
            Target {
                host,
                port,
                tls,
                connect_timeout: cfg.timeout,
            },
            cfg.pool_idle,
        );
        let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
        let host = HeaderValue::from_str(authority)
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Ok(Self {
            pool,
            base,
            host,
            rewrite_host: cfg.rewrite_host,
            timeout: cfg.timeout,
            max_response_bytes: cfg.max_response_bytes,
        })
    }

    pub fn base(&self) -> &Uri {
        &self.base
    }

    /// Forwards a request (head as received, body already read) and reads the reply.
    /// The head is reused, not rebuilt: a new header map and URI per request were
    /// allocations on the hot path.
    pub async fn forward(
        &self,
        mut head: http::request::Parts,
        body: Bytes,
    ) -> Result<Reply, UpstreamError> {
        // Origin form: the connection already names the upstream. A client's
        // absolute-form target is cut to its path.
        if head.uri.scheme().is_some() || head.uri.authority().is_some() {
            let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
            head.uri = path
                .parse()
                .map_err(|_| UpstreamError::Request("bad request head"))?;
        }
        // As a request built anew would be: HTTP/1.1 on the pooled connection whatever
        // the client spoke, and none of the client connection's extensions (hyper's
        // client reads some, e.g. a header-case map, from them).
        head.version = http::Version::HTTP_11;
        head.extensions.clear();
        strip_hop_by_hop(&mut head.headers);
        if self.rewrite_host || !head.headers.contains_key(header::HOST) {
            head.headers.insert(header::HOST, self.host.clone());
        }
        let req = Request::from_parts(head, Full::new(body));
        tokio::time::timeout(self.timeout, self.exchange(req))
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }

    /// Sends on a pooled connection; if that connection turns out closed before the
    /// request was written (the upstream dropped it while idle), once more on a new one.
    async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<Reply, UpstreamError> {
        let mut conn = self.pool.checkout().await.map_err(UpstreamError::connect)?;
        let req = match self.attempt(&mut conn, req).await {
            Ok(reply) => {
                self.pool.checkin(conn);
                return Ok(reply);
            }
            Err(Attempt::Failed(e)) => return Err(e),
            Err(Attempt::NotSent(req)) => *req,
        };
        let mut conn = self.pool.connect().await.map_err(UpstreamError::connect)?;
        match self.attempt(&mut conn, req).await {
            Ok(reply) => {
                self.pool.checkin(conn);
                Ok(reply)
            }
            Err(Attempt::Failed(e)) => Err(e),
            Err(Attempt::NotSent(_)) => Err(UpstreamError::Connect {
                cause: ConnectCause::Reset,
                source: std::io::Error::other("a new connection closed before the request"),
            }),
        }
    }

    async fn attempt(&self, conn: &mut Conn, req: Request<Full<Bytes>>) -> Result<Reply, Attempt> {
        let send = conn.send(req);
        let max = self.max_response_bytes;
        conn.drive_while(async move {
            let resp = send.await.map_err(|mut e| match e.take_message() {
                Some(req) => Attempt::NotSent(Box::new(req)),
                None => {
                    Attempt::Failed(UpstreamError::Broken(std::io::Error::other(e.into_error())))
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max)
                .collect()
                .await
                .map_err(|e| {
                    Attempt::Failed(if e.is::<http_body_util::LengthLimitError>() {
                        UpstreamError::TooLarge
                    } else {
                        UpstreamError::Body
                    })
                })?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        })
        .await
    }
}

impl Reply {
    /// The reply as it goes back to the client: status, end-to-end headers, body.
    pub fn into_response(mut self) -> Response<Full<Bytes>> {
        strip_hop_by_hop(&mut self.headers);
        let mut resp = Response::new(Full::new(self.body));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that a proxy must not forward; `content-length`
/// is dropped too and set again by hyper from the body it sends.
pub(crate) const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Removes, in place, the hop-by-hop headers, those the `Connection` header names, and
/// `content-length`: what is left is end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Allocates only when a Connection header names a header that is there and not
    // already hop-by-hop (`keep-alive`, `close` and the like do not).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            headers.contains_key(*token)
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove(header::CONTENT_LENGTH);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: the upstream's connect errors keep their cause.
    #[test]
    fn connect_errors_keep_their_cause() {
        use std::io::{Error, ErrorKind as K};
        for (e, cause) in [
            (Error::from(K::ConnectionRefused), ConnectCause::Refused),
            (Error::from(K::TimedOut), ConnectCause::TimedOut),
            (Error::from(K::HostUnreachable), ConnectCause::Unreachable),
            (Error::from(K::ConnectionReset), ConnectCause::Reset),
            (Error::other("something else"), ConnectCause::Other),
        ] {
            assert_eq!(ConnectCause::of_tcp(&e), cause, "{e}");
        }
        let e = UpstreamError::connect(super::super::pool::ConnectError {
            cause: ConnectCause::Refused,
            source: Error::from(K::ConnectionRefused),
        });
        assert_eq!(e.reason(), "connect_refused");
        assert_eq!(e.to_string(), "upstream unreachable (connection refused)");
        assert_eq!(
            UpstreamError::Broken(Error::other("x")).reason(),
            "connection_broken"
        );
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut from = HeaderMap::new();
        from.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        from.insert("x-secret-hop", HeaderValue::from_static("1"));
        from.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        from.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        from.insert("x-kannel-username", HeaderValue::from_static("tester"));
        from.append("x-kannel-to", HeaderValue::from_static("1"));
        from.append("x-kannel-to", HeaderValue::from_static("2"));
        from.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        from.insert("X-Upper", HeaderValue::from_static("kept"));
        from.append(header::CONNECTION, HeaderValue::from_static("X-UPPER-HOP"));
        from.insert("x-upper-hop", HeaderValue::from_static("1"));
        let mut to = from.clone();
        strip_hop_by_hop(&mut to);
        let mut names: Vec<_> = to.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["x-kannel-to", "x-kannel-username", "x-upper"]);
        let to_values: Vec<_> = to.get_all("x-kannel-to").iter().collect();
        assert_eq!(to_values, ["1", "2"], "repeated values keep their order");
    }
}
