//! `[store]`: where the partitions, keys and ledger live, retention, durability and the
//! writer's limits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use phonenumber::country;
use serde::Deserialize;

use super::{ConfigError, invalid, parse_duration};

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
    pub backend: String,
    pub url: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub pool_size: usize,
    pub node: Option<String>,
    pub connect_timeout: String,
    pub acknowledge: Option<String>,
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
            cache_mib: 8,
            ledger: "data/ledger.sqlite".into(),
            expire_interval: "1h".into(),
            signing_key: "data/keys/signing.key".into(),
            backend: "sqlite".into(),
            url: None,
            password_file: None,
            ca_file: None,
            pool_size: 8,
            node: None,
            connect_timeout: "5s".into(),
            acknowledge: None,
        }
    }
}

/// Where the records, the partition keys and the ledger are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Files under `store.path`, `store.keyring` and `store.ledger`: one node.
    Sqlite,
    /// One PostgreSQL database shared by every node.
    Postgres(PgConfig),
}

/// `store.backend = "postgres"`: how this node reaches the database, and its name there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PgConfig {
    /// libpq-style: `postgresql://user@host:port/db?…` or `host=… user=… dbname=…`,
    /// without a password (checked).
    pub url: String,
    /// Where the password is read from; without it, `RELAYLOG_STORE_PASSWORD`.
    pub password_file: Option<PathBuf>,
    /// The CA certificates the server's certificate is checked against (PEM); the web
    /// PKI roots without it.
    pub ca_file: Option<PathBuf>,
    pub pool_size: usize,
    /// This relaylog instance's name among the nodes that share the database.
    pub node: String,
    pub connect_timeout: Duration,
    /// When a durable submission is answered (`store.acknowledge`): `false`
    /// ("database", the default) once its batch is committed in PostgreSQL; `true`
    /// ("journal") once it is in this node's journal under `store.path`, as on SQLite,
    /// the writer putting it into PostgreSQL a moment later.
    pub journal: bool,
}

/// The environment variable the database password is read from when
/// `store.password-file` is not set.
pub const PASSWORD_ENV: &str = "RELAYLOG_STORE_PASSWORD";

/// A node's name: what the database, the manifests and `verify` call it.
pub fn valid_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
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
    pub backend: Backend,
}

impl StoreConfig {
    /// Whether a durable submission is answered once it is in the journal (always on
    /// SQLite; `store.acknowledge = "journal"` on PostgreSQL), not once committed.
    pub fn answers_from_journal(&self) -> bool {
        match &self.backend {
            Backend::Sqlite => true,
            Backend::Postgres(pg) => pg.journal,
        }
    }

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

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retention::Months(n) => write!(f, "{n} months"),
            Retention::Days(n) => write!(f, "{n} days"),
        }
    }
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
    fn backend(&self) -> Result<Backend, ConfigError> {
        let postgres_only = [
            ("store.url", self.url.is_some()),
            ("store.password-file", self.password_file.is_some()),
            ("store.ca-file", self.ca_file.is_some()),
            ("store.node", self.node.is_some()),
        ];
        let journal = match (self.backend.as_str(), self.acknowledge.as_deref()) {
            (_, Some("journal")) | ("sqlite", None) => true,
            ("sqlite", Some("database")) => {
                return Err(invalid(
                    "store.acknowledge",
                    "\"database\" applies to store.backend = \"postgres\" only: the SQLite store answers from its journal",
                ));
            }
            (_, Some("database") | None) => false,
            (_, Some(other)) => {
                return Err(invalid(
                    "store.acknowledge",
                    format!("`{other}`: expected \"database\" or \"journal\""),
                ));
            }
        };
        match self.backend.as_str() {
            "sqlite" => match postgres_only.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(invalid(
                    *key,
                    "applies to store.backend = \"postgres\" only",
                )),
                None => Ok(Backend::Sqlite),
            },
            "postgres" => {
                let url = self.url.clone().ok_or_else(|| {
                    invalid("store.url", "is required with store.backend = \"postgres\"")
                })?;
                let parsed: postgres::Config = url.parse().map_err(|_| {
                    // Not the parser's message: it may quote the string, password and all.
                    invalid(
                        "store.url",
                        "is not a PostgreSQL URL (postgresql://user@host:port/database) or key=value string",
                    )
                })?;
                if parsed.get_password().is_some() {
                    return Err(invalid(
                        "store.url",
                        "must not hold the password: put it in store.password-file or RELAYLOG_STORE_PASSWORD",
                    ));
                }
                if parsed.get_user().is_none() || parsed.get_hosts().is_empty() {
                    return Err(invalid("store.url", "must name the user and the host"));
                }
                let local = crate::pg::is_local(&parsed);
                if parsed.get_ssl_mode() == postgres::config::SslMode::Disable && !local {
                    return Err(invalid(
                        "store.url",
                        "sslmode=disable: relaylog reaches PostgreSQL over TLS only",
                    ));
                }
                let node = self.node.clone().ok_or_else(|| {
                    invalid(
                        "store.node",
                        "is required with store.backend = \"postgres\"",
                    )
                })?;
                if !valid_node_name(&node) {
                    return Err(invalid(
                        "store.node",
                        format!("`{node}`: 1 to 63 of a-z, 0-9 and -, not starting with -"),
                    ));
                }
                // An expiry run holds three at once (its turn, the ledger, one more).
                if !(4..=256).contains(&self.pool_size) {
                    return Err(invalid("store.pool-size", "must be between 4 and 256"));
                }
                let connect_timeout =
                    parse_duration("store.connect-timeout", &self.connect_timeout)?;
                if connect_timeout < Duration::from_millis(100) {
                    return Err(invalid("store.connect-timeout", "must be at least 100ms"));
                }
                Ok(Backend::Postgres(PgConfig {
                    url,
                    password_file: self.password_file.clone(),
                    ca_file: self.ca_file.clone(),
                    pool_size: self.pool_size,
                    node,
                    connect_timeout,
                    journal,
                }))
            }
            other => Err(invalid(
                "store.backend",
                format!("`{other}`: expected \"sqlite\" or \"postgres\""),
            )),
        }
    }

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
        let backend = self.backend()?;
        Ok(StoreConfig {
            backend,
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
