//! Configuration: TOML with kebab-case keys, read into raw serde structs that reject
//! unknown keys, then [`RawConfig::validate`]d into types that cannot hold bad values.
//! Every key and its default is documented in `config/relaylog.toml`.
//!
//! One file per section: `store.rs` (`[store]`), `listener.rs` (`[[listener]]`), `admin.rs`
//! (`[admin]`); the top level, `[log]`, `[compliance]` and `[serve]` are here.

mod admin;
mod listener;
mod store;

pub use admin::*;
pub use listener::*;
pub use store::*;

use std::path::{Path, PathBuf};
use std::time::Duration;

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
    #[serde(default)]
    pub backup: RawBackup,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawBackup {
    pub retention: String,
}

impl Default for RawBackup {
    fn default() -> Self {
        Self {
            retention: "56 days".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawServe {
    pub shutdown_timeout: String,
    /// A number, or "auto".
    pub workers: toml::Value,
    /// A number, or "auto".
    pub http_threads: toml::Value,
}

impl Default for RawServe {
    fn default() -> Self {
        Self {
            shutdown_timeout: "30s".into(),
            workers: toml::Value::String("auto".into()),
            http_threads: toml::Value::String("auto".into()),
        }
    }
}

/// Most runtime worker threads `serve.workers` may ask for.
pub const MAX_WORKERS: u32 = 256;

/// `serve.workers = "auto"`: a worker per core but one, which the store's writer thread
/// needs (at least one). On two cores a second worker cost 15–25% more CPU per
/// message and up to a fifth of the throughput: workers stealing each other's tasks and
/// waking each other, on cores the writer and the kernel also need.
pub fn auto_workers(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

/// `serve.http-threads = "auto"`: one per core. Each is a runtime of its own whose
/// connections never leave it, so, unlike the shared runtime's workers, they do not
/// steal each other's tasks: on two cores (a noisy host), two of them relayed 4–15%
/// more messages per second than one, at 0–8% more CPU per message depending on what
/// else shared the cores, where two workers of a shared runtime cost 15–25% more CPU
/// per message.
///
/// They are threads beside `serve.workers`' (the SMTP and SMPP listeners', the admin
/// API's), the journal's and the writer's: an HTTP-only installation leaves those
/// workers idle.
pub fn auto_http_threads(cores: usize) -> usize {
    cores.max(1)
}

/// A thread count: "auto" (`auto` of the cores this process may use) or 1 to
/// [`MAX_WORKERS`].
fn threads(key: &str, v: &toml::Value, auto: fn(usize) -> usize) -> Result<usize, ConfigError> {
    match v {
        toml::Value::String(s) if s == "auto" => Ok(auto(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        )),
        toml::Value::Integer(n) if (1..=i64::from(MAX_WORKERS)).contains(n) => Ok(*n as usize),
        _ => Err(invalid(
            key,
            format!("must be \"auto\" or a number from 1 to {MAX_WORKERS}"),
        )),
    }
}

/// How `serve` runs, beyond its listeners and store.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// How long a graceful shutdown lets requests in flight finish. Past it, what is
    /// still in flight is cut short and recorded as `failed: shutdown`.
    pub shutdown_timeout: Duration,
    /// Threads of the runtime that serves the SMTP and SMPP listeners, the admin API
    /// and the store's timers (see [`auto_workers`]).
    pub workers: usize,
    /// Threads that serve each HTTP listener, each a runtime of its own (see
    /// [`auto_http_threads`] and `ingress::http::HttpThreads`).
    pub http_threads: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawCompliance {
    pub four_eyes: bool,
    pub single_operator: bool,
    pub csp_id: String,
}

impl Default for RawCompliance {
    fn default() -> Self {
        Self {
            four_eyes: true,
            single_operator: false,
            csp_id: String::new(),
        }
    }
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
    pub backup: BackupConfig,
}

/// `[backup]`: how long `relaylog backup create`'s archives stay readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupConfig {
    /// After this, expiry shreds a backup's key: every copy of it is unreadable.
    pub retention: Retention,
}

/// How cases are decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComplianceConfig {
    /// A case must be approved by an approver other than the officer who opened it.
    /// Off only for a single-officer installation; every change of it is audited.
    pub four_eyes: bool,
    /// The command line's reads and ledger changes (`query`, `case show/list`, `hold`,
    /// `officer add/list/disable/unlock`, `audit list`) run without an officer's
    /// login, each run audited as a single operator's. Off unless an installation run
    /// by one person says so; every change of it is audited.
    pub single_operator: bool,
    /// The provider's identifier in ETSI TS 102 657 exports (`cSPID`): the one the
    /// authorities know it by. Empty: ETSI exports are refused.
    pub csp_id: String,
}

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
            if !l.has_upstream() {
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

pub fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        invalid(
            key,
            format!("`{s}` is not a duration ({e}); write e.g. \"10s\" or \"500ms\""),
        )
    })
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
        let backup = BackupConfig {
            retention: Retention::parse(&self.backup.retention).ok_or_else(|| {
                invalid(
                    "backup.retention",
                    format!(
                        "`{}`: expected a number of days or months, such as \"56 days\"",
                        self.backup.retention
                    ),
                )
            })?,
        };
        Ok(Config {
            backup,
            store,
            listeners,
            admin,
            log: LogConfig {
                format,
                level: self.log.level,
            },
            compliance: ComplianceConfig {
                four_eyes: self.compliance.four_eyes,
                single_operator: self.compliance.single_operator,
                csp_id: {
                    // ASN.1 PrintableString, as the ETSI header's cSPID is.
                    let id = self.compliance.csp_id.trim();
                    let printable =
                        |c: char| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c);
                    if id.len() > 256 || !id.chars().all(printable) {
                        return Err(invalid(
                            "compliance.csp-id",
                            "at most 256 characters, each a letter, a digit, a space or one of '()+,-./:=?",
                        ));
                    }
                    id.to_owned()
                },
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
                workers: threads("serve.workers", &self.serve.workers, auto_workers)?,
                http_threads: threads(
                    "serve.http-threads",
                    &self.serve.http_threads,
                    auto_http_threads,
                )?,
            },
        })
    }
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
    fn serve_workers_are_auto_or_a_bounded_number() {
        assert_eq!(auto_workers(1), 1);
        assert_eq!(auto_workers(2), 1);
        assert_eq!(auto_workers(8), 7);
        let workers = |v: &str| parse(&format!("[serve]\nworkers = {v}\n"));
        assert!(workers("\"auto\"").unwrap().serve.workers >= 1);
        assert_eq!(workers("3").unwrap().serve.workers, 3);
        for bad in ["0", "257", "\"many\"", "1.5"] {
            let e = workers(bad).unwrap_err().to_string();
            assert!(e.contains("serve.workers"), "{bad}: {e}");
        }
        assert_eq!(auto_http_threads(1), 1);
        assert_eq!(auto_http_threads(2), 2);
        let http = |v: &str| parse(&format!("[serve]\nhttp-threads = {v}\n"));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(http("\"auto\"").unwrap().serve.http_threads, cores);
        assert_eq!(http("4").unwrap().serve.http_threads, 4);
        for bad in ["0", "257", "\"all\"", "true"] {
            let e = http(bad).unwrap_err().to_string();
            assert!(e.contains("serve.http-threads"), "{bad}: {e}");
        }
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../../config/relaylog.toml");
        let cfg = parse(text).unwrap();
        assert_eq!(cfg.store.retention, Retention::Months(13));
        assert_eq!(cfg.store.durability, Durability::RecordBeforeForward);
        let ListenerProtocol::Http { profile, .. } = &cfg.listeners[0].protocol else {
            panic!("the shipped listener speaks HTTP");
        };
        assert_eq!(profile.kind, ProfileKind::Kannel);
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

    /// A PostgreSQL node answers from the database unless told to from its journal.
    #[test]
    fn a_postgres_node_acknowledges_from_the_database_by_default() {
        let journal = |ack: &str| {
            let text = format!(
                "[store]\nbackend = \"postgres\"\nurl = \"host=/tmp user=r\"\nnode = \"a\"\n{ack}"
            );
            match parse(&text).unwrap().store.backend {
                Backend::Postgres(pg) => pg.journal,
                Backend::Sqlite => panic!("postgres"),
            }
        };
        assert!(!journal(""));
        assert!(!journal("acknowledge = \"database\"\n"));
        assert!(journal("acknowledge = \"journal\"\n"));
        assert!(parse("[store]\nacknowledge = \"journal\"\n").is_ok());
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
            ("[store]\nacknowledge = \"database\"\n", "store.acknowledge"),
            (
                "[store]\nbackend = \"postgres\"\nurl = \"host=/tmp user=r\"\nnode = \"a\"\nacknowledge = \"soon\"\n",
                "store.acknowledge",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"nope\"\nprofile=\"kannel\"\n",
                "listener[0].listen",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprofile=\"smtp\"\n",
                "listener[0].profile",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"ftp\"\n",
                "listener[0].protocol",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smpp\"\nprofile=\"kannel\"\n",
                "listener[0].profile",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smpp\"\nwindow=0\n",
                "listener[0].window",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smpp\"\nupstream=\"http://h:2775\"\n",
                "listener[0].upstream",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smpp\"\nxclient=true\n",
                "listener[0].xclient",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smpp\"\nupstream=\"smpp://h\"\nupstream-ca=\"ca.pem\"\n",
                "listener[0].upstream-ca",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprofile=\"kannel\"\nwindow=10\n",
                "listener[0].window",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smpp\"\nreceipt-book=10\n",
                "listener[0].receipt-book",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smpp\"\nreceipt-wait=\"0s\"\n",
                "listener[0].receipt-wait",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smtp\"\nreceipt-wait=\"1h\"\n",
                "listener[0].receipt-wait",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smtp\"\nprofile=\"kannel\"\n",
                "listener[0].profile",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smtp\"\nupstream=\"http://h:25\"\n",
                "listener[0].upstream",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smtp\"\nrequire-tls=true\n",
                "listener[0].require-tls",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smtp\"\nupstream=\"smtps://h\"\nupstream-starttls=true\n",
                "listener[0].upstream-starttls",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprofile=\"kannel\"\nxclient=true\n",
                "listener[0].xclient",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smtp\"\nmax-body-bytes=10\n",
                "listener[0].max-body-bytes",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smtp\"\nupstream-starttls=true\n",
                "listener[0].upstream-starttls",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\nprotocol=\"smtp\"\nupstream=\"smtp://h\"\nupstream-ca=\"ca.pem\"\n",
                "listener[0].upstream-ca",
            ),
            (
                "[[listener]]\nname=\"a\"\nlisten=\"127.0.0.1:1\"\n",
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
