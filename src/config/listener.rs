//! `[[listener]]`: where a relay listens, its API profile, its upstream and its limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, parse_duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawListener {
    pub name: String,
    pub listen: String,
    /// `http` (the default) or `smtp`.
    pub protocol: Option<String>,
    /// HTTP: the gateway API (required).
    pub profile: Option<String>,
    pub upstream: Option<String>,
    pub upstream_ca: Option<PathBuf>,
    pub rewrite_host: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub path: Option<String>,
    pub passthrough: Option<Vec<String>>,
    // HTTP only; defaults applied in `validate`, so that an SMTP listener can refuse them.
    pub max_body_bytes: Option<usize>,
    pub max_response_bytes: Option<usize>,
    #[serde(default = "d_header_timeout")]
    pub header_timeout: String,
    pub idle_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    pub max_connections_per_peer: Option<usize>,
    pub upstream_pool_idle: Option<usize>,
    pub json: Option<RawJsonProfile>,
    // SMTP only.
    pub upstream_starttls: Option<bool>,
    pub implicit_tls: Option<bool>,
    pub require_tls: Option<bool>,
    pub xclient: Option<bool>,
    pub max_message_bytes: Option<u64>,
    pub max_recipients: Option<usize>,
    pub command_timeout: Option<String>,
    pub data_timeout: Option<String>,
    pub max_session: Option<String>,
    // SMPP only.
    pub window: Option<usize>,
    pub bind_timeout: Option<String>,
    pub inactivity_timeout: Option<String>,
    pub max_pdu_bytes: Option<u32>,
    pub max_sessions_per_account: Option<usize>,
    pub receipt_wait: Option<String>,
    pub receipt_book: Option<usize>,
}

impl RawListener {
    /// The keys given that belong to one protocol only, with that protocol.
    fn protocol_keys(&self) -> [(bool, &'static str, &'static str); 26] {
        let http = "HTTP";
        let smtp = "SMTP";
        let smpp = "SMPP";
        [
            (self.profile.is_some(), "profile", http),
            (self.path.is_some(), "path", http),
            (self.passthrough.is_some(), "passthrough", http),
            (self.json.is_some(), "json", http),
            (self.rewrite_host.is_some(), "rewrite-host", http),
            (self.max_body_bytes.is_some(), "max-body-bytes", http),
            (
                self.max_response_bytes.is_some(),
                "max-response-bytes",
                http,
            ),
            (self.idle_timeout.is_some(), "idle-timeout", http),
            (self.request_timeout.is_some(), "request-timeout", http),
            (
                self.upstream_pool_idle.is_some(),
                "upstream-pool-idle",
                http,
            ),
            (self.upstream_starttls.is_some(), "upstream-starttls", smtp),
            (self.implicit_tls.is_some(), "implicit-tls", smtp),
            (self.require_tls.is_some(), "require-tls", smtp),
            (self.xclient.is_some(), "xclient", smtp),
            (self.max_message_bytes.is_some(), "max-message-bytes", smtp),
            (self.max_recipients.is_some(), "max-recipients", smtp),
            (self.command_timeout.is_some(), "command-timeout", smtp),
            (self.data_timeout.is_some(), "data-timeout", smtp),
            (self.max_session.is_some(), "max-session", smtp),
            (self.window.is_some(), "window", smpp),
            (self.bind_timeout.is_some(), "bind-timeout", smpp),
            (
                self.inactivity_timeout.is_some(),
                "inactivity-timeout",
                smpp,
            ),
            (self.max_pdu_bytes.is_some(), "max-pdu-bytes", smpp),
            (
                self.max_sessions_per_account.is_some(),
                "max-sessions-per-account",
                smpp,
            ),
            (self.receipt_wait.is_some(), "receipt-wait", smpp),
            (self.receipt_book.is_some(), "receipt-book", smpp),
        ]
    }
}

const D_MAX_BODY: usize = 64 * 1024;
const D_MAX_RESPONSE: usize = 64 * 1024;
const D_IDLE_TIMEOUT: &str = "60s";
const D_REQUEST_TIMEOUT: &str = "30s";
const D_UPSTREAM_POOL: usize = 256;

fn d_header_timeout() -> String {
    "10s".into()
}

fn d_max_connections() -> usize {
    4096
}

/// The default `max-connections-per-peer`, or `max-connections` when that is lower.
const D_MAX_PER_PEER: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawJsonProfile {
    /// "basic-auth" or "field".
    #[serde(default = "d_account_from")]
    pub account_from: String,
    pub account_pointer: Option<String>,
    pub originator_pointer: Option<String>,
    pub recipients_pointer: String,
    pub text_pointer: Option<String>,
    pub message_id_pointer: Option<String>,
}

fn d_account_from() -> String {
    "basic-auth".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKind {
    Kannel,
    Jasmin,
    Json,
}

impl ProfileKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "kannel" => Some(Self::Kannel),
            "jasmin" => Some(Self::Jasmin),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kannel => "kannel",
            Self::Jasmin => "jasmin",
            Self::Json => "json",
        }
    }
    pub fn default_path(self) -> &'static str {
        match self {
            Self::Kannel => "/cgi-bin/sendsms",
            Self::Jasmin => "/send",
            Self::Json => "/messages",
        }
    }

    /// Paths forwarded without a record when a listener names none: the gateway's
    /// requests that carry no message. Kannel's sendsms port serves only sendsms and
    /// sendota (which sends, so it is not here); its status pages are on bearerbox's
    /// admin port. Jasmin's HTTP API has `/balance`, `/rate` and `/ping` beside `/send`.
    pub fn default_passthrough(self) -> &'static [&'static str] {
        match self {
            Self::Kannel | Self::Json => &[],
            Self::Jasmin => &["/balance", "/rate", "/ping"],
        }
    }
}

/// Most `passthrough` paths per listener.
pub const MAX_PASSTHROUGH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountFrom {
    BasicAuth,
    Field(String),
}

#[derive(Debug, Clone)]
pub struct JsonProfile {
    pub account: AccountFrom,
    pub originator_pointer: Option<String>,
    pub recipients_pointer: String,
    pub text_pointer: Option<String>,
    pub message_id_pointer: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub kind: ProfileKind,
    /// The request path that carries a message, as configured.
    pub path: String,
    /// The same, normalised (see [`crate::ingress::profile::normalize_path`]): a request
    /// whose path normalises to it is a message, however it is spelt.
    pub message_path: String,
    /// Normalised paths forwarded without a record. Any other path gets 404.
    pub passthrough: Vec<String>,
    pub json: Option<JsonProfile>,
}

impl Profile {
    pub fn new(
        kind: ProfileKind,
        path: String,
        passthrough: &[impl AsRef<str>],
        json: Option<JsonProfile>,
    ) -> Profile {
        use crate::ingress::profile::normalize_path;
        Profile {
            kind,
            // Validation refuses a path that does not normalise.
            message_path: normalize_path(&path).unwrap_or_else(|| path.clone()),
            path,
            passthrough: passthrough
                .iter()
                .map(|p| {
                    let p = p.as_ref();
                    p.strip_suffix('/')
                        .filter(|p| !p.is_empty())
                        .unwrap_or(p)
                        .to_owned()
                })
                .collect(),
            json,
        }
    }
}

/// How a listener forwards to its upstream.
#[derive(Debug, Clone)]
pub struct Forward {
    /// `None`: serve starts the built-in gateway simulator and forwards to it.
    pub upstream: Option<http::Uri>,
    /// Extra CA certificates (PEM) trusted for an https upstream, beside the web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Set `Host` to the upstream's authority (as nginx does); off keeps the client's.
    pub rewrite_host: bool,
    pub timeout: Duration,
    pub pool_idle: usize,
    pub max_response_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// Connections open at once from one peer (an IPv4 address, an IPv6 /64).
    pub max_connections_per_peer: usize,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub limits: Limits,
    /// What the listener speaks, with what that protocol needs.
    pub protocol: ListenerProtocol,
}

/// A listener's protocol (`protocol = "http"`, the default) and its settings.
#[derive(Debug, Clone)]
pub enum ListenerProtocol {
    /// An HTTP SMS API in front of an HTTP gateway.
    Http {
        profile: Box<Profile>,
        forward: Forward,
    },
    /// SMTP in front of a mail server.
    Smtp(Smtp),
    /// SMPP 3.4 in front of an SMSC.
    Smpp(Smpp),
}

impl ListenerProtocol {
    /// The protocol's name, as `protocol =` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            ListenerProtocol::Http { .. } => "http",
            ListenerProtocol::Smtp(_) => "smtp",
            ListenerProtocol::Smpp(_) => "smpp",
        }
    }
}

/// Where an SMPP listener relays to: `smpp://host:port` (2775 by default) or
/// `smpps://host:port` (TLS, 3550 by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmppTarget {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl std::fmt::Display for SmppTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "smpps" } else { "smpp" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// An SMPP listener's settings (see the README's SMPP section).
#[derive(Debug, Clone)]
pub struct Smpp {
    /// `None`: serve starts the built-in SMSC simulator and relays to it.
    pub upstream: Option<SmppTarget>,
    pub upstream_ca: Option<PathBuf>,
    /// Connecting to the upstream, and waiting for its bind_resp.
    pub upstream_timeout: Duration,
    /// A client's bind must come this soon after it connects.
    pub bind_timeout: Duration,
    /// A session with no PDU from the client for this long is unbound.
    pub inactivity_timeout: Duration,
    /// The largest command_length taken (`generic_nack` and close above it).
    pub max_pdu_bytes: u32,
    /// Requests of one session recorded or with the upstream at once.
    pub window: usize,
    pub max_sessions_per_account: usize,
    /// How long a sent message's id is kept to attach its delivery receipt.
    pub receipt_wait: Duration,
    /// The most message ids kept for receipts (the oldest go first).
    pub receipt_book: usize,
}

/// Where an SMTP listener relays to: `smtp://host:port` (25 by default) or
/// `smtps://host:port` (TLS from the first byte, 465 by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub implicit_tls: bool,
}

impl std::fmt::Display for SmtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.implicit_tls { "smtps" } else { "smtp" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// An SMTP listener's settings (see the README's SMTP section).
#[derive(Debug, Clone)]
pub struct Smtp {
    /// `None`: serve starts the built-in sink MTA and relays to it.
    pub upstream: Option<SmtpTarget>,
    /// STARTTLS towards a `smtp://` upstream before anything else.
    pub upstream_starttls: bool,
    /// Extra CA certificates (PEM) trusted for the upstream's TLS, beside the web PKI.
    pub upstream_ca: Option<PathBuf>,
    /// Connecting to the upstream, and each of its replies (the final one after DATA too).
    pub upstream_timeout: Duration,
    /// Tell the upstream the real client with Postfix's XCLIENT (ADDR, PORT).
    pub xclient: bool,
    /// TLS from the first byte (port 465 style) with the listener's certificate;
    /// otherwise the certificate, if any, is offered through STARTTLS.
    pub implicit_tls: bool,
    /// AUTH and MAIL only over TLS (`530 5.7.0` before it).
    pub require_tls: bool,
    pub max_message_bytes: u64,
    pub max_recipients: usize,
    /// Waiting for a command.
    pub command_timeout: Duration,
    /// Waiting for the next bytes of a message.
    pub data_timeout: Duration,
    /// The longest a session may last.
    pub max_session: Duration,
}

impl ListenerConfig {
    /// Whether the listener names its upstream (else serve starts a simulator).
    pub fn has_upstream(&self) -> bool {
        match &self.protocol {
            ListenerProtocol::Http { forward, .. } => forward.upstream.is_some(),
            ListenerProtocol::Smtp(smtp) => smtp.upstream.is_some(),
            ListenerProtocol::Smpp(smpp) => smpp.upstream.is_some(),
        }
    }

    /// The extra CA file trusted for the upstream's TLS.
    pub fn upstream_ca(&self) -> Option<&PathBuf> {
        match &self.protocol {
            ListenerProtocol::Http { forward, .. } => forward.ca_file.as_ref(),
            ListenerProtocol::Smtp(smtp) => smtp.upstream_ca.as_ref(),
            ListenerProtocol::Smpp(smpp) => smpp.upstream_ca.as_ref(),
        }
    }
}

pub(super) fn validate_listener(i: usize, l: RawListener) -> Result<ListenerConfig, ConfigError> {
    let key = |k: &str| format!("listener[{i}].{k}");
    if l.name.trim().is_empty() {
        return Err(invalid(key("name"), "must not be empty"));
    }
    let name = l.name.clone();
    let listen: SocketAddr = l.listen.parse().map_err(|_| {
        invalid(
            key("listen"),
            format!("`{}` is not an address such as 127.0.0.1:13080", l.listen),
        )
    })?;
    let tls = match (l.tls_cert.clone(), l.tls_key.clone()) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => return Err(invalid(key("tls-cert"), "tls-cert and tls-key go together")),
    };
    if l.max_connections == 0 {
        return Err(invalid(key("max-connections"), "must be at least 1"));
    }
    let max_connections_per_peer = l
        .max_connections_per_peer
        .unwrap_or(D_MAX_PER_PEER.min(l.max_connections));
    if max_connections_per_peer == 0 || max_connections_per_peer > l.max_connections {
        return Err(invalid(
            key("max-connections-per-peer"),
            "must be between 1 and max-connections",
        ));
    }
    let max_body_bytes = l.max_body_bytes.unwrap_or(D_MAX_BODY);
    if max_body_bytes == 0 || max_body_bytes > 64 * 1024 * 1024 {
        return Err(invalid(
            key("max-body-bytes"),
            "must be between 1 and 67108864",
        ));
    }
    let limits = Limits {
        max_body_bytes,
        header_timeout: parse_duration(&key("header-timeout"), &l.header_timeout)?,
        idle_timeout: parse_duration(
            &key("idle-timeout"),
            l.idle_timeout.as_deref().unwrap_or(D_IDLE_TIMEOUT),
        )?,
        request_timeout: parse_duration(
            &key("request-timeout"),
            l.request_timeout.as_deref().unwrap_or(D_REQUEST_TIMEOUT),
        )?,
        max_connections: l.max_connections,
        max_connections_per_peer,
    };
    let speaks = match l.protocol.as_deref().unwrap_or("http") {
        "http" => "HTTP",
        "smtp" => "SMTP",
        "smpp" => "SMPP",
        other => {
            return Err(invalid(
                key("protocol"),
                format!("`{other}`: expected \"http\", \"smtp\" or \"smpp\""),
            ));
        }
    };
    if let Some((_, k, owner)) = l
        .protocol_keys()
        .into_iter()
        .find(|(set, _, owner)| *set && *owner != speaks)
    {
        return Err(invalid(
            key(k),
            format!("is an {owner} setting: this listener speaks {speaks}"),
        ));
    }
    let protocol = match speaks {
        "HTTP" => validate_http(&key, l)?,
        "SMTP" => ListenerProtocol::Smtp(validate_smtp(&key, l, tls.is_some())?),
        _ => ListenerProtocol::Smpp(validate_smpp(&key, l)?),
    };
    Ok(ListenerConfig {
        name,
        listen,
        protocol,
        tls,
        limits,
    })
}

fn validate_http(
    key: &dyn Fn(&str) -> String,
    l: RawListener,
) -> Result<ListenerProtocol, ConfigError> {
    let Some(profile) = l.profile else {
        return Err(invalid(
            key("profile"),
            "an HTTP listener needs one: kannel, jasmin or json",
        ));
    };
    let kind = ProfileKind::parse(&profile).ok_or_else(|| {
        invalid(
            key("profile"),
            format!("`{profile}`: expected kannel, jasmin or json"),
        )
    })?;
    let path = l.path.unwrap_or_else(|| kind.default_path().to_owned());
    if !path.starts_with('/') {
        return Err(invalid(key("path"), "must start with /"));
    }
    let Some(message_path) = crate::ingress::profile::normalize_path(&path) else {
        return Err(invalid(
            key("path"),
            "must not hold dot segments or encoded slashes",
        ));
    };
    let passthrough = l.passthrough.unwrap_or_else(|| {
        kind.default_passthrough()
            .iter()
            .map(|p| p.to_string())
            .collect()
    });
    if passthrough.len() > MAX_PASSTHROUGH {
        return Err(invalid(
            key("passthrough"),
            format!("at most {MAX_PASSTHROUGH} paths"),
        ));
    }
    for p in &passthrough {
        if !p.starts_with('/') {
            return Err(invalid(
                key("passthrough"),
                format!("`{p}` must start with /"),
            ));
        }
        if crate::ingress::profile::normalize_path(p).is_none_or(|n| n == message_path) {
            return Err(invalid(
                key("passthrough"),
                format!(
                    "`{p}` is (a spelling of) the message path, or ambiguous: the message path is always recorded, never passed through"
                ),
            ));
        }
    }
    let json = match (kind, l.json) {
        (ProfileKind::Json, Some(j)) => Some(validate_json(&key("json"), j)?),
        (ProfileKind::Json, None) => {
            return Err(invalid(
                key("json"),
                "profile \"json\" needs a [listener.json] table with recipients-pointer",
            ));
        }
        (_, Some(_)) => {
            return Err(invalid(
                key("json"),
                "only a listener with profile \"json\" takes a json table",
            ));
        }
        (_, None) => None,
    };
    let upstream_timeout = parse_duration(
        &key("upstream-timeout"),
        l.upstream_timeout.as_deref().unwrap_or("30s"),
    )?;
    let upstream = match l.upstream {
        Some(u) => {
            let uri: http::Uri = u
                .parse()
                // The value is not echoed: an upstream URL may carry credentials.
                .map_err(|_| invalid(key("upstream"), "is not a URL"))?;
            match uri.scheme_str() {
                Some("http") | Some("https") => {}
                _ => {
                    return Err(invalid(
                        key("upstream"),
                        "must be an http:// or https:// URL",
                    ));
                }
            }
            if uri.host().is_none() {
                return Err(invalid(key("upstream"), "has no host"));
            }
            // Credentials in the URL would be logged (and sent as the Host header):
            // gateway credentials travel in the clients' own requests.
            if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(invalid(
                    key("upstream"),
                    "must not contain user:password@; gateway credentials come from the client requests",
                ));
            }
            if uri
                .path_and_query()
                .is_some_and(|pq| pq.as_str() != "/" && !pq.as_str().is_empty())
            {
                return Err(invalid(
                    key("upstream"),
                    "must be scheme://host:port only: the client's path and query are forwarded as sent",
                ));
            }
            Some(uri)
        }
        None => None,
    };
    Ok(ListenerProtocol::Http {
        profile: Box::new(Profile::new(kind, path, &passthrough, json)),
        forward: Forward {
            upstream,
            ca_file: l.upstream_ca,
            rewrite_host: l.rewrite_host.unwrap_or(true),
            timeout: upstream_timeout,
            pool_idle: l.upstream_pool_idle.unwrap_or(D_UPSTREAM_POOL),
            max_response_bytes: l.max_response_bytes.unwrap_or(D_MAX_RESPONSE),
        },
    })
}

fn validate_smtp(
    key: &dyn Fn(&str) -> String,
    l: RawListener,
    has_cert: bool,
) -> Result<Smtp, ConfigError> {
    let upstream = match &l.upstream {
        Some(u) => Some(parse_smtp_target(u).map_err(|why| invalid(key("upstream"), why))?),
        None => None,
    };
    let implicit_tls = l.implicit_tls.unwrap_or(false);
    if implicit_tls && !has_cert {
        return Err(invalid(key("implicit-tls"), "needs tls-cert and tls-key"));
    }
    let require_tls = l.require_tls.unwrap_or(false);
    if require_tls && !has_cert {
        return Err(invalid(
            key("require-tls"),
            "needs tls-cert and tls-key: clients could never send",
        ));
    }
    let upstream_starttls = l.upstream_starttls.unwrap_or(false);
    if upstream_starttls && upstream.as_ref().is_some_and(|u| u.implicit_tls) {
        return Err(invalid(
            key("upstream-starttls"),
            "an smtps:// upstream is TLS from the start; STARTTLS is for smtp://",
        ));
    }
    if upstream_starttls && upstream.is_none() {
        return Err(invalid(
            key("upstream-starttls"),
            "needs an upstream: the built-in sink has no certificate",
        ));
    }
    let tls_upstream = upstream_starttls || upstream.as_ref().is_some_and(|u| u.implicit_tls);
    if l.upstream_ca.is_some() && !tls_upstream {
        return Err(invalid(
            key("upstream-ca"),
            "is for a TLS upstream: set upstream = \"smtps://…\" or upstream-starttls = true",
        ));
    }
    let max_message_bytes = l.max_message_bytes.unwrap_or(10_240_000);
    if max_message_bytes == 0 {
        return Err(invalid(key("max-message-bytes"), "must be at least 1"));
    }
    let max_recipients = l.max_recipients.unwrap_or(1000);
    if !(1..=u16::MAX as usize).contains(&max_recipients) {
        return Err(invalid(
            key("max-recipients"),
            "must be between 1 and 65535",
        ));
    }
    let duration = |k: &str, v: &Option<String>, default: &str| {
        let d = parse_duration(&key(k), v.as_deref().unwrap_or(default))?;
        if d.is_zero() {
            return Err(invalid(key(k), "must be more than zero"));
        }
        Ok(d)
    };
    Ok(Smtp {
        upstream,
        upstream_starttls,
        upstream_ca: l.upstream_ca,
        upstream_timeout: duration("upstream-timeout", &l.upstream_timeout, "300s")?,
        xclient: l.xclient.unwrap_or(false),
        implicit_tls,
        require_tls,
        max_message_bytes,
        max_recipients,
        command_timeout: duration("command-timeout", &l.command_timeout, "300s")?,
        data_timeout: duration("data-timeout", &l.data_timeout, "300s")?,
        max_session: duration("max-session", &l.max_session, "1h")?,
    })
}

fn validate_smpp(key: &dyn Fn(&str) -> String, l: RawListener) -> Result<Smpp, ConfigError> {
    let upstream = match &l.upstream {
        Some(u) => Some(parse_smpp_target(u).map_err(|why| invalid(key("upstream"), why))?),
        None => None,
    };
    if l.upstream_ca.is_some() && !upstream.as_ref().is_some_and(|u| u.tls) {
        return Err(invalid(
            key("upstream-ca"),
            "is for a TLS upstream: set upstream = \"smpps://…\"",
        ));
    }
    let duration = |k: &str, v: &Option<String>, default: &str| {
        let d = parse_duration(&key(k), v.as_deref().unwrap_or(default))?;
        if d.is_zero() {
            return Err(invalid(key(k), "must be more than zero"));
        }
        Ok(d)
    };
    let window = l.window.unwrap_or(100);
    if !(1..=10_000).contains(&window) {
        return Err(invalid(key("window"), "must be between 1 and 10000"));
    }
    let max_pdu_bytes = l.max_pdu_bytes.unwrap_or(64 * 1024);
    if !(1024..=1024 * 1024).contains(&max_pdu_bytes) {
        return Err(invalid(
            key("max-pdu-bytes"),
            "must be between 1024 and 1048576",
        ));
    }
    let max_sessions_per_account = l.max_sessions_per_account.unwrap_or(16);
    if max_sessions_per_account == 0 {
        return Err(invalid(
            key("max-sessions-per-account"),
            "must be at least 1",
        ));
    }
    let receipt_book = l.receipt_book.unwrap_or(1_000_000);
    if !(1_000..=100_000_000).contains(&receipt_book) {
        return Err(invalid(
            key("receipt-book"),
            "must be between 1000 and 100000000",
        ));
    }
    Ok(Smpp {
        upstream,
        upstream_ca: l.upstream_ca,
        upstream_timeout: duration("upstream-timeout", &l.upstream_timeout, "30s")?,
        bind_timeout: duration("bind-timeout", &l.bind_timeout, "30s")?,
        inactivity_timeout: duration("inactivity-timeout", &l.inactivity_timeout, "300s")?,
        max_pdu_bytes,
        window,
        max_sessions_per_account,
        receipt_wait: duration("receipt-wait", &l.receipt_wait, "72h")?,
        receipt_book,
    })
}

/// `smpp://host[:port]` or `smpps://host[:port]`, nothing else.
fn parse_smpp_target(u: &str) -> Result<SmppTarget, &'static str> {
    let (host, port, tls) = parse_target(u, ("smpp", "smpps"), (2775, 3550))
        .map_err(|why| why.unwrap_or("must be an smpp:// or smpps:// URL"))?;
    Ok(SmppTarget { host, port, tls })
}

/// `smtp://host[:port]` or `smtps://host[:port]`, nothing else.
fn parse_smtp_target(u: &str) -> Result<SmtpTarget, &'static str> {
    let (host, port, implicit_tls) = parse_target(u, ("smtp", "smtps"), (25, 465))
        .map_err(|why| why.unwrap_or("must be an smtp:// or smtps:// URL"))?;
    Ok(SmtpTarget {
        host,
        port,
        implicit_tls,
    })
}

/// `plain://host[:port]` or `tls://host[:port]` (the schemes named), with its default
/// port: the host, the port, and whether it is the TLS scheme. `Err(None)`: another
/// scheme. The value is never echoed: it could carry credentials.
fn parse_target(
    u: &str,
    (plain, tls_scheme): (&str, &str),
    (plain_port, tls_port): (u16, u16),
) -> Result<(String, u16, bool), Option<&'static str>> {
    let uri: http::Uri = u.parse().map_err(|_| Some("is not a URL"))?;
    let tls = match uri.scheme_str() {
        Some(s) if s == plain => false,
        Some(s) if s == tls_scheme => true,
        _ => return Err(None),
    };
    let authority = uri.authority().ok_or(Some("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(Some(
            "must not contain user:password@; clients authenticate themselves",
        ));
    }
    if uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str() != "/" && !pq.as_str().is_empty())
    {
        return Err(Some("must be scheme://host:port only"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(Some("has no host"));
    }
    let port = authority
        .port_u16()
        .unwrap_or(if tls { tls_port } else { plain_port });
    Ok((host.to_owned(), port, tls))
}

fn validate_json(key: &str, j: RawJsonProfile) -> Result<JsonProfile, ConfigError> {
    let pointer = |k: &str, p: &Option<String>| -> Result<(), ConfigError> {
        match p {
            Some(p) if !p.is_empty() && !p.starts_with('/') => Err(invalid(
                format!("{key}.{k}"),
                format!("`{p}` is not a JSON pointer (RFC 6901): it starts with /"),
            )),
            _ => Ok(()),
        }
    };
    pointer("account-pointer", &j.account_pointer)?;
    pointer("originator-pointer", &j.originator_pointer)?;
    pointer("recipients-pointer", &Some(j.recipients_pointer.clone()))?;
    pointer("text-pointer", &j.text_pointer)?;
    pointer("message-id-pointer", &j.message_id_pointer)?;
    let account = match (j.account_from.as_str(), j.account_pointer) {
        ("basic-auth", _) => AccountFrom::BasicAuth,
        ("field", Some(p)) => AccountFrom::Field(p),
        ("field", None) => {
            return Err(invalid(
                format!("{key}.account-pointer"),
                "account-from = \"field\" needs account-pointer",
            ));
        }
        (other, _) => {
            return Err(invalid(
                format!("{key}.account-from"),
                format!("`{other}`: expected \"basic-auth\" or \"field\""),
            ));
        }
    };
    Ok(JsonProfile {
        account,
        originator_pointer: j.originator_pointer,
        recipients_pointer: j.recipients_pointer,
        text_pointer: j.text_pointer,
        message_id_pointer: j.message_id_pointer,
    })
}
