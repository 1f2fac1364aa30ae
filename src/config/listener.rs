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
    /// `http` (the default).
    pub protocol: Option<String>,
    pub profile: String,
    pub upstream: Option<String>,
    pub upstream_ca: Option<PathBuf>,
    #[serde(default = "default_true")]
    pub rewrite_host: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub path: Option<String>,
    pub passthrough: Option<Vec<String>>,
    #[serde(default = "d_max_body")]
    pub max_body_bytes: usize,
    #[serde(default = "d_max_response")]
    pub max_response_bytes: usize,
    #[serde(default = "d_header_timeout")]
    pub header_timeout: String,
    #[serde(default = "d_idle_timeout")]
    pub idle_timeout: String,
    #[serde(default = "d_request_timeout")]
    pub request_timeout: String,
    #[serde(default = "d_upstream_timeout")]
    pub upstream_timeout: String,
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    #[serde(default = "d_upstream_pool")]
    pub upstream_pool_idle: usize,
    pub json: Option<RawJsonProfile>,
}

fn default_true() -> bool {
    true
}

fn d_max_body() -> usize {
    64 * 1024
}

fn d_max_response() -> usize {
    64 * 1024
}

fn d_header_timeout() -> String {
    "10s".into()
}

fn d_idle_timeout() -> String {
    "60s".into()
}

fn d_request_timeout() -> String {
    "30s".into()
}

fn d_upstream_timeout() -> String {
    "30s".into()
}

fn d_max_connections() -> usize {
    4096
}

fn d_upstream_pool() -> usize {
    256
}

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
    Http { profile: Profile, forward: Forward },
}

impl ListenerConfig {
    /// The upstream side of the listener.
    pub fn forward(&self) -> &Forward {
        match &self.protocol {
            ListenerProtocol::Http { forward, .. } => forward,
        }
    }
}

pub(super) fn validate_listener(i: usize, l: RawListener) -> Result<ListenerConfig, ConfigError> {
    let key = |k: &str| format!("listener[{i}].{k}");
    if l.name.trim().is_empty() {
        return Err(invalid(key("name"), "must not be empty"));
    }
    let listen: SocketAddr = l.listen.parse().map_err(|_| {
        invalid(
            key("listen"),
            format!("`{}` is not an address such as 127.0.0.1:13080", l.listen),
        )
    })?;
    let kind = ProfileKind::parse(&l.profile).ok_or_else(|| {
        invalid(
            key("profile"),
            format!("`{}`: expected kannel, jasmin or json", l.profile),
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
    let upstream_timeout = parse_duration(&key("upstream-timeout"), &l.upstream_timeout)?;
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
    let tls = match (l.tls_cert, l.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => return Err(invalid(key("tls-cert"), "tls-cert and tls-key go together")),
    };
    if l.max_connections == 0 {
        return Err(invalid(key("max-connections"), "must be at least 1"));
    }
    if l.max_body_bytes == 0 || l.max_body_bytes > 64 * 1024 * 1024 {
        return Err(invalid(
            key("max-body-bytes"),
            "must be between 1 and 67108864",
        ));
    }
    let protocol = match l.protocol.as_deref().unwrap_or("http") {
        "http" => ListenerProtocol::Http {
            profile: Profile::new(kind, path, &passthrough, json),
            forward: Forward {
                upstream,
                ca_file: l.upstream_ca,
                rewrite_host: l.rewrite_host,
                timeout: upstream_timeout,
                pool_idle: l.upstream_pool_idle,
                max_response_bytes: l.max_response_bytes,
            },
        },
        other => {
            return Err(invalid(
                key("protocol"),
                format!("`{other}`: expected \"http\" (SMTP and SMPP listeners are not built yet)"),
            ));
        }
    };
    Ok(ListenerConfig {
        name: l.name,
        listen,
        protocol,
        tls,
        limits: Limits {
            max_body_bytes: l.max_body_bytes,
            header_timeout: parse_duration(&key("header-timeout"), &l.header_timeout)?,
            idle_timeout: parse_duration(&key("idle-timeout"), &l.idle_timeout)?,
            request_timeout: parse_duration(&key("request-timeout"), &l.request_timeout)?,
            max_connections: l.max_connections,
        },
    })
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
