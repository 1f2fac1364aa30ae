//! Configuration: TOML with kebab-case keys, read into raw serde structs that reject
//! unknown keys, then [`RawConfig::validate`]d into types that cannot hold bad values.
//! Every key and its default is documented in `config/relaylog.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use phonenumber::country;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------
// Raw, as written in the file.
// ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    #[serde(default)]
    pub store: RawStore,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub compliance: RawCompliance,
    #[serde(default)]
    pub serve: RawServe,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawServe {
    pub shutdown_timeout: String,
}

impl Default for RawServe {
    fn default() -> Self {
        Self {
            shutdown_timeout: "30s".into(),
        }
    }
}

/// How `serve` runs, beyond its listeners and store.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// How long a graceful shutdown lets requests in flight finish. Past it, what is
    /// still in flight is cut short and recorded as `failed: shutdown`.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawCompliance {
    pub four_eyes: bool,
}

impl Default for RawCompliance {
    fn default() -> Self {
        Self { four_eyes: true }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawStore {
    pub path: PathBuf,
    pub keyring: PathBuf,
    pub master_key: PathBuf,
    pub partition: String,
    pub retention: String,
    pub durability: String,
    pub default_region: String,
    pub sync: String,
    pub queue_capacity: usize,
    pub batch_max: usize,
    pub enqueue_timeout: String,
    pub index_bytes: u8,
    pub index_bucket: String,
    pub cache_mib: u32,
    pub ledger: PathBuf,
    pub expire_interval: String,
    pub signing_key: PathBuf,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            path: "data/store".into(),
            keyring: "data/keys/keyring".into(),
            master_key: "data/keys/master.key".into(),
            partition: "day".into(),
            retention: "13 months".into(),
            durability: "record-before-forward".into(),
            default_region: "NL".into(),
            sync: "normal".into(),
            queue_capacity: 65_536,
            batch_max: 4_096,
            enqueue_timeout: "1s".into(),
            index_bytes: 8,
            index_bucket: "1m".into(),
            cache_mib: 16,
            ledger: "data/ledger.sqlite".into(),
            expire_interval: "1h".into(),
            signing_key: "data/keys/signing.key".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawListener {
    pub name: String,
    pub listen: String,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAdmin {
    pub listen: String,
    /// TLS for the admin listener. The compliance API is served only with it.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How long an officer's API session lasts after login (not extended by use).
    #[serde(default = "d_session_ttl")]
    pub session_ttl: String,
    /// Where API disclosures, subject exports and offboarding files are written.
    /// Defaults to `exports` beside the ledger.
    pub exports: Option<PathBuf>,
    /// How long files in `exports` are kept before `serve` deletes them: they are
    /// copies of traffic data, and must not outlive their purpose.
    #[serde(default = "d_exports_keep")]
    pub exports_keep: String,
}

fn d_session_ttl() -> String {
    "15m".into()
}

fn d_exports_keep() -> String {
    "30days".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawLog {
    pub format: String,
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

// ---------------------------------------------------------------------------------
// Validated.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    pub store: StoreConfig,
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    pub compliance: ComplianceConfig,
    pub serve: ServeConfig,
}

/// How cases are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComplianceConfig {
    /// A case must be approved by an approver other than the officer who opened it.
    /// Off only for a single-officer installation; every change of it is audited.
    pub four_eyes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    Day,
    Month,
}

/// How long traffic data is kept. Calendar months are the legal unit (13 months).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Months(u32),
    Days(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Forward only after the records are committed (the default).
    RecordBeforeForward,
    /// Queue the records and forward at once; a crash can lose the queued records.
    Async,
}

/// SQLite `synchronous` under WAL: `normal` survives a process crash (kill -9) but can
/// lose the last commits on power loss; `full` fsyncs every commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Normal,
    Full,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub keyring: PathBuf,
    pub master_key: PathBuf,
    pub partition: Granularity,
    pub retention: Retention,
    pub durability: Durability,
    pub default_region: country::Id,
    pub sync: SyncMode,
    pub queue_capacity: usize,
    pub batch_max: usize,
    pub enqueue_timeout: Duration,
    /// Bytes of HMAC kept in a blind index (1..=8). Fewer bytes: more collisions, which
    /// disclosure resolves by decrypting; none of them identifies anyone by itself.
    pub index_bytes: u8,
    /// Width of the time bucket that leads every blind index, in microseconds.
    pub index_bucket_us: i64,
    pub cache_mib: u32,
    /// Legal holds and the audit log: outside the partitions they protect.
    pub ledger: PathBuf,
    /// How often `serve` runs expiry (it also runs it at start-up).
    pub expire_interval: Duration,
    /// The installation's Ed25519 key (PKCS#8, hex); its public key is `<path>.pub`.
    pub signing_key: PathBuf,
}

impl StoreConfig {
    /// Defaults with every path under `dir`: for tests, benches and examples.
    pub fn under(dir: &Path) -> Self {
        let raw = RawStore {
            path: dir.join("store"),
            keyring: dir.join("keys/keyring"),
            master_key: dir.join("keys/master.key"),
            ledger: dir.join("ledger.sqlite"),
            signing_key: dir.join("keys/signing.key"),
            ..RawStore::default()
        };
        raw.validate()
            .expect("the built-in store defaults are valid")
    }
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
    pub profile: Profile,
    pub forward: Forward,
    pub tls: Option<TlsFiles>,
    pub limits: Limits,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// With TLS, the admin listener also serves the compliance API under `/api/v1`.
    pub tls: Option<TlsFiles>,
    pub session_ttl: Duration,
    pub exports: PathBuf,
    pub exports_keep: Duration,
}

/// Bounds of `admin.session-ttl`: short enough that a session stands for a recent
/// second factor, long enough to work a case.
pub const SESSION_TTL_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(8 * 3600));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        raw.validate()
    }

    /// Problems that do not stop relaylog from running but that an operator should
    /// know about, as printed by `check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let store = absolute(&self.store.path);
        for (key, p) in [
            ("store.keyring", &self.store.keyring),
            ("store.master-key", &self.store.master_key),
            ("store.ledger", &self.store.ledger),
        ] {
            if absolute(p).starts_with(&store) {
                out.push(format!(
                    "{key} lies inside store.path: a backup of the store would carry the keys that are meant to shred it"
                ));
            }
        }
        for l in &self.listeners {
            if l.forward.upstream.is_none() {
                out.push(format!(
                    "listener `{}` has no upstream: serve will forward to the built-in simulator",
                    l.name
                ));
            }
        }
        if self.store.durability == Durability::Async {
            out.push(
                "store.durability = \"async\": a crash can lose records of messages already forwarded"
                    .into(),
            );
        }
        out
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

fn validate_admin(a: RawAdmin, ledger: &Path) -> Result<AdminConfig, ConfigError> {
    let listen = a.listen.parse().map_err(|_| {
        invalid(
            "admin.listen",
            format!("`{}` is not an address such as 127.0.0.1:13090", a.listen),
        )
    })?;
    let tls = match (a.tls_cert, a.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "admin.tls-cert",
                "tls-cert and tls-key go together",
            ));
        }
    };
    let session_ttl = parse_duration("admin.session-ttl", &a.session_ttl)?;
    let (min, max) = SESSION_TTL_BOUNDS;
    if !(min..=max).contains(&session_ttl) {
        return Err(invalid(
            "admin.session-ttl",
            format!("`{}` is outside 1m..8h", a.session_ttl),
        ));
    }
    let exports_keep = parse_duration("admin.exports-keep", &a.exports_keep)?;
    if !(Duration::from_secs(3600)..=Duration::from_secs(400 * 86_400)).contains(&exports_keep) {
        return Err(invalid(
            "admin.exports-keep",
            format!("`{}` is outside 1h..400days", a.exports_keep),
        ));
    }
    let exports = a.exports.unwrap_or_else(|| {
        ledger
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("exports")
    });
    Ok(AdminConfig {
        listen,
        tls,
        session_ttl,
        exports,
        exports_keep,
    })
}

pub fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        invalid(
            key,
            format!("`{s}` is not a duration ({e}); write e.g. \"10s\" or \"500ms\""),
        )
    })
}

impl Retention {
    /// The instant before which a partition must be wholly gone: `now` minus the
    /// retention, in calendar months (31 January − 1 month = 31 December; 31 March −
    /// 1 month = 28 or 29 February) or in days.
    pub fn cutoff(self, now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
        let earlier = match self {
            Retention::Months(n) => now.checked_sub_months(chrono::Months::new(n)),
            Retention::Days(n) => now.checked_sub_signed(chrono::Duration::days(i64::from(n))),
        };
        earlier.unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
    }

    /// The first day on which a partition ending at `end` is past retention: its
    /// records are deleted at the first expiry run from then on.
    pub fn expires(self, end: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
        let mut at = match self {
            Retention::Months(n) => end.checked_add_months(chrono::Months::new(n)),
            Retention::Days(n) => end.checked_add_signed(chrono::Duration::days(i64::from(n))),
        }
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        // Month arithmetic clamps at month ends (31 March + 1 month = 30 April, whose
        // cutoff is 30 March): step on to the first day whose cutoff reaches `end`.
        while self.cutoff(at) < end {
            at += chrono::Duration::days(1);
        }
        at
    }

    pub fn parse(s: &str) -> Option<Retention> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = s.split_at(split);
        let n: u32 = n.parse().ok()?;
        if n == 0 {
            return None;
        }
        match unit.trim() {
            "month" | "months" => Some(Retention::Months(n)),
            "day" | "days" | "d" => Some(Retention::Days(n)),
            _ => None,
        }
    }
}

impl RawStore {
    pub fn validate(self) -> Result<StoreConfig, ConfigError> {
        let partition = match self.partition.as_str() {
            "day" => Granularity::Day,
            "month" => Granularity::Month,
            other => {
                return Err(invalid(
                    "store.partition",
                    format!("`{other}`: expected \"day\" or \"month\""),
                ));
            }
        };
        let retention = Retention::parse(&self.retention).ok_or_else(|| {
            invalid(
                "store.retention",
                format!(
                    "`{}`: expected e.g. \"13 months\" or \"400 days\"",
                    self.retention
                ),
            )
        })?;
        let durability = match self.durability.as_str() {
            "record-before-forward" => Durability::RecordBeforeForward,
            "async" => Durability::Async,
            other => {
                return Err(invalid(
                    "store.durability",
                    format!("`{other}`: expected \"record-before-forward\" or \"async\""),
                ));
            }
        };
        let default_region: country::Id = self
            .default_region
            .trim()
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| {
            invalid(
                "store.default-region",
                format!(
                    "`{}` is not an ISO 3166 region code such as \"NL\"",
                    self.default_region
                ),
            )
        })?;
        let sync = match self.sync.as_str() {
            "normal" => SyncMode::Normal,
            "full" => SyncMode::Full,
            other => {
                return Err(invalid(
                    "store.sync",
                    format!("`{other}`: expected \"normal\" or \"full\""),
                ));
            }
        };
        if !(1..=8).contains(&self.index_bytes) {
            return Err(invalid("store.index-bytes", "must be between 1 and 8"));
        }
        // A message takes two places: its records, and the one kept for its outcome.
        if self.queue_capacity < 2 || self.queue_capacity > 16 * 1024 * 1024 {
            return Err(invalid(
                "store.queue-capacity",
                "must be between 2 and 16777216",
            ));
        }
        if self.batch_max == 0 || self.batch_max > 1_000_000 {
            return Err(invalid("store.batch-max", "must be between 1 and 1000000"));
        }
        let bucket = parse_duration("store.index-bucket", &self.index_bucket)?;
        if bucket < Duration::from_secs(1)
            || bucket > Duration::from_secs(86_400)
            || 86_400 % bucket.as_secs() != 0
            || bucket.subsec_nanos() != 0
        {
            return Err(invalid(
                "store.index-bucket",
                "must be a whole number of seconds between 1s and 1d that divides a day",
            ));
        }
        let expire_interval = parse_duration("store.expire-interval", &self.expire_interval)?;
        if expire_interval < Duration::from_secs(1) {
            return Err(invalid("store.expire-interval", "must be at least 1s"));
        }
        for (key, p) in [
            ("store.path", &self.path),
            ("store.keyring", &self.keyring),
            ("store.master-key", &self.master_key),
            ("store.ledger", &self.ledger),
            ("store.signing-key", &self.signing_key),
        ] {
            if p.as_os_str().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        Ok(StoreConfig {
            path: self.path,
            keyring: self.keyring,
            master_key: self.master_key,
            partition,
            retention,
            durability,
            default_region,
            sync,
            queue_capacity: self.queue_capacity,
            batch_max: self.batch_max,
            enqueue_timeout: parse_duration("store.enqueue-timeout", &self.enqueue_timeout)?,
            index_bytes: self.index_bytes,
            index_bucket_us: bucket.as_secs() as i64 * 1_000_000,
            cache_mib: self.cache_mib.clamp(1, 4096),
            ledger: self.ledger,
            expire_interval,
            signing_key: self.signing_key,
        })
    }
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let store = self.store.validate()?;
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for (i, l) in self.listeners.into_iter().enumerate() {
            let listener = validate_listener(i, l)?;
            if listeners
                .iter()
                .any(|o: &ListenerConfig| o.name == listener.name)
            {
                return Err(invalid(
                    format!("listener[{i}].name"),
                    format!("`{}` is used twice", listener.name),
                ));
            }
            listeners.push(listener);
        }
        let admin = match self.admin {
            Some(a) => Some(validate_admin(a, &store.ledger)?),
            None => None,
        };
        let format = match self.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("`{other}`: expected \"text\" or \"json\""),
                ));
            }
        };
        Ok(Config {
            store,
            listeners,
            admin,
            log: LogConfig {
                format,
                level: self.log.level,
            },
            compliance: ComplianceConfig {
                four_eyes: self.compliance.four_eyes,
            },
            serve: ServeConfig {
                shutdown_timeout: {
                    let key = "serve.shutdown-timeout";
                    let d = parse_duration(key, &self.serve.shutdown_timeout)?;
                    if d.is_zero() || d > Duration::from_secs(3600) {
                        return Err(invalid(key, "must be between 1ms and 1h"));
                    }
                    d
                },
            },
        })
    }
}

fn validate_listener(i: usize, l: RawListener) -> Result<ListenerConfig, ConfigError> {
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
    Ok(ListenerConfig {
        name: l.name,
        listen,
        profile: Profile::new(kind, path, &passthrough, json),
        forward: Forward {
            upstream,
            ca_file: l.upstream_ca,
            rewrite_host: l.rewrite_host,
            timeout: upstream_timeout,
            pool_idle: l.upstream_pool_idle,
            max_response_bytes: l.max_response_bytes,
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_expires_on_the_first_day_its_cutoff_reaches_its_end() {
        use chrono::TimeZone;
        let t = |y, m, d| chrono::Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap();
        let r = Retention::Months(13);
        assert_eq!(r.expires(t(2026, 11, 23)), t(2027, 12, 23));
        // 31 March + 1 month clamps to 30 April, whose cutoff (30 March) is too early.
        assert_eq!(Retention::Months(1).expires(t(2026, 3, 31)), t(2026, 5, 1));
        assert_eq!(Retention::Days(30).expires(t(2026, 1, 1)), t(2026, 1, 31));
        for end in [t(2026, 3, 31), t(2024, 2, 29), t(2026, 1, 31)] {
            let at = r.expires(end);
            assert!(r.cutoff(at) >= end);
            assert!(r.cutoff(at - chrono::Duration::days(1)) < end);
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../config/relaylog.toml");
        let cfg = parse(text).unwrap();
        assert_eq!(cfg.store.retention, Retention::Months(13));
        assert_eq!(cfg.store.durability, Durability::RecordBeforeForward);
        assert_eq!(cfg.listeners[0].profile.kind, ProfileKind::Kannel);
    }

    #[test]
    fn admin_tls_session_ttl_and_exports_are_checked() {
        let admin = |extra: &str| {
            parse(&format!(
                "[store]\nledger = \"/srv/rl/ledger.sqlite\"\n[admin]\nlisten = \"127.0.0.1:13090\"\n{extra}"
            ))
        };
        let a = admin("").unwrap().admin.unwrap();
        assert!(a.tls.is_none());
        assert_eq!(a.session_ttl, Duration::from_secs(900));
        assert_eq!(a.exports, Path::new("/srv/rl/exports"));
        assert_eq!(a.exports_keep, Duration::from_secs(30 * 86_400));
        let a = admin(
            "tls-cert = \"c.pem\"\ntls-key = \"k.pem\"\nsession-ttl = \"5m\"\nexports = \"/x\"\n",
        )
        .unwrap()
        .admin
        .unwrap();
        assert_eq!(a.tls.unwrap().cert, Path::new("c.pem"));
        assert_eq!(a.session_ttl, Duration::from_secs(300));
        assert_eq!(a.exports, Path::new("/x"));
        for (extra, key) in [
            ("tls-cert = \"c.pem\"\n", "admin.tls-cert"),
            ("session-ttl = \"10s\"\n", "admin.session-ttl"),
            ("session-ttl = \"9h\"\n", "admin.session-ttl"),
            ("session-ttl = \"soon\"\n", "admin.session-ttl"),
            ("exports-keep = \"1m\"\n", "admin.exports-keep"),
        ] {
            let err = admin(extra).unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[store]\npaht = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("paht"), "{err}");
        let err = parse("[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprofile=\"kannel\"\nupstreem=\"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstreem"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let table = [
            ("[store]\nretention = \"13 weeks\"\n", "store.retention"),
            ("[store]\ndurability = \"maybe\"\n", "store.durability"),
            (
                "[store]\ndefault-region = \"XX1\"\n",
                "store.default-region",
            ),
            ("[store]\nindex-bytes = 9\n", "store.index-bytes"),
            ("[store]\nindex-bucket = \"7s\"\n", "store.index-bucket"),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"nope\"\nprofile=\"kannel\"\n",
                "listener[0].listen",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprofile=\"smtp\"\n",
                "listener[0].profile",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprofile=\"kannel\"\nupstream=\"http://h:1/cgi-bin\"\n",
                "listener[0].upstream",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprofile=\"json\"\n",
                "listener[0].json",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprofile=\"kannel\"\nupstream=\"http://u:s3cret@h:1\"\n",
                "listener[0].upstream",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprofile=\"kannel\"\nupstream=\"http://u:s3cret@ h\"\n",
                "listener[0].upstream",
            ),
        ];
        for (text, key) in table {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err}");
            assert!(
                !err.contains("s3cret"),
                "a credential in the URL is never echoed: {err}"
            );
        }
    }

    #[test]
    fn retention_parses_months_and_days() {
        assert_eq!(Retention::parse("13 months"), Some(Retention::Months(13)));
        assert_eq!(Retention::parse("1 month"), Some(Retention::Months(1)));
        assert_eq!(Retention::parse("400 days"), Some(Retention::Days(400)));
        assert_eq!(Retention::parse("0 days"), None);
        assert_eq!(Retention::parse("months"), None);
    }

    #[test]
    fn retention_cutoff_is_calendar_arithmetic() {
        use chrono::TimeZone;
        let t = |y, m, d| chrono::Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap();
        let table = [
            (Retention::Months(13), t(2026, 11, 22), t(2025, 10, 22)),
            (Retention::Months(1), t(2026, 3, 31), t(2026, 2, 28)),
            (Retention::Months(1), t(2024, 3, 31), t(2024, 2, 29)),
            (Retention::Months(1), t(2027, 1, 31), t(2026, 12, 31)),
            (Retention::Months(13), t(2025, 1, 31), t(2023, 12, 31)),
            (Retention::Days(400), t(2026, 11, 22), t(2025, 10, 18)),
        ];
        for (r, now, cutoff) in table {
            assert_eq!(r.cutoff(now), cutoff, "{r:?} before {now}");
        }
    }

    #[test]
    fn keyring_inside_store_is_warned_about() {
        let cfg = parse("[store]\npath = \"d/store\"\nkeyring = \"d/store/keys\"\n").unwrap();
        assert!(cfg.warnings().iter().any(|w| w.contains("store.keyring")));
        let cfg = parse("[store]\n").unwrap();
        assert!(!cfg.warnings().iter().any(|w| w.contains("store.keyring")));
    }
}
