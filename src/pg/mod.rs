//! PostgreSQL, the store's backend for more than one node (`store.backend =
//! "postgres"`): the connection (TLS through rustls with ring, the password from a file
//! or the environment, never the config), a bounded pool of blocking clients, and the
//! schema's versioned migrations (see [`schema`]), which only `relaylog init` runs.
//!
//! The clients are the blocking `postgres` crate's: everything that touches the
//! database (the writer, the ledger, queries, expiry) already runs on threads of its
//! own. Errors are rendered through [`describe`], which keeps PostgreSQL's code and
//! message and drops its `DETAIL`, where a constraint names the values it refused.

pub mod schema;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::config::{PASSWORD_ENV, PgConfig};

/// Why the database could not be reached or used. Never carries the password, a bound
/// value or a constraint's `DETAIL` (see [`describe`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PgError {
    #[error("store.password-file {path}: {message}")]
    Password { path: PathBuf, message: String },
    #[error("no database password: set store.password-file or {PASSWORD_ENV}")]
    NoPassword,
    #[error("store.ca-file: {0}")]
    Tls(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("PostgreSQL: {message}")]
    Sql {
        /// The SQLSTATE, when the server gave one.
        code: Option<String>,
        message: String,
    },
    #[error("no database connection free within {0:?} (store.pool-size)")]
    PoolTimeout(Duration),
    #[error(
        "the database schema is at version {found}, this relaylog needs {wanted}: run `relaylog init`"
    )]
    Schema { found: i32, wanted: i32 },
    #[error(
        "the database schema is at version {found}, newer than this relaylog knows ({known}): upgrade relaylog"
    )]
    SchemaAhead { found: i32, known: i32 },
    #[error("node `{0}` is not registered in the database: run `relaylog init` on it")]
    UnknownNode(String),
    #[error(
        "node `{0}` is registered with another signing key: a node's name and key go together (pick another name, or restore its key)"
    )]
    NodeKey(String),
    #[error(
        "node `{node}` is being written by another session ({holder}): another relaylog process under this name? each running node needs a name of its own (store.node)"
    )]
    NodeBusy { node: String, holder: String },
    #[error("{0}")]
    Other(String),
}

impl PgError {
    /// A short, fixed label for metrics and log lines.
    pub fn reason(&self) -> &'static str {
        match self {
            PgError::Password { .. } | PgError::NoPassword => "database_password",
            PgError::Tls(_) => "database_tls",
            PgError::Connect(_) => "database_unreachable",
            PgError::Sql { code, .. } => match code.as_deref() {
                // A statement or a lock wait cut short (statement_timeout, lock_timeout).
                Some("57014") | Some("55P03") => "database_timeout",
                // Connection and operator-intervention classes: the server went away.
                Some(c) if c.starts_with("08") || c.starts_with("57") => "database_unreachable",
                Some(c) if c.starts_with("53") => "database_full",
                Some("40001") | Some("40P01") => "database_conflict",
                Some("42501") => "database_permission",
                Some(c) if c.starts_with("28") => "database_password",
                // No code: the client's own failure, a connection closed or broken.
                None => "database_unreachable",
                _ => "database_error",
            },
            PgError::PoolTimeout(_) => "database_busy",
            PgError::Schema { .. } | PgError::SchemaAhead { .. } => "database_schema",
            PgError::UnknownNode(_) | PgError::NodeKey(_) | PgError::NodeBusy { .. } => {
                "database_node"
            }
            PgError::Other(_) => "database_error",
        }
    }

    /// The server refused what was asked (a constraint, a missing relation), as
    /// opposed to the connection failing.
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Sql { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// A `postgres::Error` as relaylog shows it: the SQLSTATE and the server's message
/// (never its `DETAIL` or `HINT`, which can quote a refused row), or the client's own
/// description (I/O, protocol), which holds no values.
pub fn describe(e: &postgres::Error) -> PgError {
    match e.as_db_error() {
        Some(db) => PgError::Sql {
            code: Some(db.code().code().to_owned()),
            message: format!("{} ({})", db.message(), db.code().code()),
        },
        None => PgError::Sql {
            code: e.code().map(|c| c.code().to_owned()),
            message: e.to_string(),
        },
    }
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> Self {
        describe(&e)
    }
}

/// The settings every relaylog session runs with: commits durable on the server
/// (`synchronous_commit`, whatever the server's default), statements and lock waits
/// bounded, the `relaylog` schema first (the ledger's statements name its tables
/// unqualified, as on SQLite), a name that tells the sessions of each node apart in
/// `pg_stat_activity`, and the server's side of TCP keepalives as short as the
/// client's: a session whose node vanished (a network cut) ends within seconds, and
/// with it the node's lock it held (see [`crate::store::pgstore::PgSink`]), instead
/// of after the system's two hours.
fn session_options(node: &str) -> String {
    format!(
        "-c synchronous_commit=on -c statement_timeout=60000 -c lock_timeout=30000 \
         -c idle_in_transaction_session_timeout=60000 -c search_path=relaylog \
         -c application_name=relaylog/{node} -c tcp_keepalives_idle=5 \
         -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 -c tcp_user_timeout=15000"
    )
}

/// Whether a connection stays on this machine: every host a Unix socket and no
/// `hostaddr` (which the client would reach over TCP whatever `host` says).
pub fn is_local(config: &postgres::Config) -> bool {
    config.get_hostaddrs().is_empty()
        && !config.get_hosts().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, postgres::config::Host::Unix(_)))
}

/// Runs `f` without the session's statement and lock timeouts (maintenance that may
/// rightly take long: an index built, a detach waiting for old snapshots, the key
/// table rewritten), then puts them back; a client whose timeouts cannot be put back
/// is closed rather than pooled.
pub fn unbounded<T>(
    client: &mut Pooled,
    f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
) -> Result<T, postgres::Error> {
    client.batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")?;
    let result = f(client);
    if client
        .batch_execute("RESET statement_timeout; RESET lock_timeout")
        .is_err()
    {
        client.discard();
    }
    result
}

/// How long [`Pool::get`] waits for a client when all are in use.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);

/// A bounded pool of clients to one database. Clients are made on demand, up to
/// `store.pool-size`; a client that saw its connection fail is not given back.
pub struct Pool {
    config: postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    size: usize,
    node: String,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    idle: Vec<postgres::Client>,
    /// Clients out of the pool plus idle ones.
    open: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("node", &self.node)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// The pool for `cfg`, shared by everything in this process that uses the same
    /// database as the same node (the writer, the ledger, the admin API's requests):
    /// made on first use, without connecting.
    pub fn shared(cfg: &PgConfig) -> Result<Arc<Pool>, PgError> {
        static POOLS: OnceLock<Mutex<HashMap<PgConfig, Weak<Pool>>>> = OnceLock::new();
        let mut pools = POOLS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pools.retain(|_, p| p.strong_count() > 0);
        if let Some(pool) = pools.get(cfg).and_then(Weak::upgrade) {
            return Ok(pool);
        }
        let pool = Arc::new(Pool::new(cfg)?);
        pools.insert(cfg.clone(), Arc::downgrade(&pool));
        Ok(pool)
    }

    /// A pool of its own (not shared): reads the password and the CA now.
    pub fn new(cfg: &PgConfig) -> Result<Pool, PgError> {
        let mut config: postgres::Config = cfg
            .url
            .parse()
            .map_err(|_| PgError::Other("store.url does not parse".into()))?;
        config.password(read_password(cfg)?);
        // Whatever the URL says (`disable` is refused by the config): TLS, checked,
        // to any host on the network. A Unix socket (a host that is a directory) is
        // this machine's own and takes no TLS: nothing travels.
        let local = is_local(&config);
        config.ssl_mode(if local {
            postgres::config::SslMode::Disable
        } else {
            postgres::config::SslMode::Require
        });
        config.connect_timeout(cfg.connect_timeout);
        // A server that vanished (power, network) is noticed within seconds, not at
        // the kernel's default two hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(2));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(15));
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {}", session_options(&cfg.node)),
            _ => session_options(&cfg.node),
        };
        config.options(&options);
        let client = crate::ingress::tls::client_config(cfg.ca_file.as_deref())
            .map_err(|e| PgError::Tls(e.to_string()))?;
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*client).clone());
        Ok(Pool {
            config,
            tls,
            size: cfg.pool_size,
            node: cfg.node.clone(),
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        })
    }

    /// A client of its own, outside the pool (the writer's).
    pub fn connect(&self) -> Result<postgres::Client, PgError> {
        self.config
            .connect(self.tls.clone())
            .map_err(|e| PgError::Connect(describe(&e).to_string()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client: an idle one, a new one while fewer than `pool-size` are open, or the
    /// first one given back within [`CHECKOUT_TIMEOUT`].
    pub fn get(self: &Arc<Self>) -> Result<Pooled, PgError> {
        self.get_within(CHECKOUT_TIMEOUT)
    }

    fn get_within(self: &Arc<Self>, wait: Duration) -> Result<Pooled, PgError> {
        let deadline = Instant::now() + wait;
        let mut state = self.lock();
        loop {
            if let Some(client) = state.idle.pop() {
                if client.is_closed() {
                    state.open -= 1;
                    discard(vec![client]);
                    continue;
                }
                return Ok(Pooled {
                    pool: self.clone(),
                    client: Some(client),
                    keep: true,
                });
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                return match self.connect() {
                    Ok(client) => Ok(Pooled {
                        pool: self.clone(),
                        client: Some(client),
                        keep: true,
                    }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_all();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PgError::PoolTimeout(wait));
            }
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Drops clients where that is allowed: a `postgres::Client` closes its connection on
/// its own runtime when dropped, which panics on a thread that drives a runtime (the
/// last `Arc` of a pool can go on any thread, a server shutting down included).
fn discard(clients: Vec<postgres::Client>) {
    if clients.is_empty() {
        return;
    }
    if tokio::runtime::Handle::try_current().is_ok() {
        let _ = std::thread::Builder::new()
            .name("relaylog-pg-close".into())
            .spawn(move || drop(clients));
    } else {
        drop(clients);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.lock().idle);
        discard(idle);
    }
}

/// A client out of the pool; given back when dropped, unless its connection failed
/// or [`Pooled::discard`] was called.
pub struct Pooled {
    pool: Arc<Pool>,
    client: Option<postgres::Client>,
    keep: bool,
}

impl Pooled {
    /// Closes this client when it is dropped instead of giving it back (its session
    /// holds something it must not pass on: a lock it could not release).
    pub fn discard(&mut self) {
        self.keep = false;
    }
}

impl std::ops::Deref for Pooled {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        self.client
            .as_ref()
            .expect("a pooled client is present until dropped")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        self.client
            .as_mut()
            .expect("a pooled client is present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let mut state = self.pool.lock();
        let mut gone = Vec::new();
        if !self.keep && !client.is_closed() {
            state.open -= 1;
            gone.push(client);
        } else if client.is_closed() {
            state.open -= 1;
            // The server went away (a restart, a failover): the idle clients are most
            // likely dead too, and each would fail one caller before it is noticed.
            gone = std::mem::take(&mut state.idle);
            state.open -= gone.len();
            gone.push(client);
        } else {
            state.idle.push(client);
        }
        drop(state);
        // Dropping the idle ones freed several places: every waiter may go on.
        self.pool.freed.notify_all();
        discard(gone);
    }
}

/// The database password: the file's first line, or the environment's.
fn read_password(cfg: &PgConfig) -> Result<Vec<u8>, PgError> {
    let mut password = match &cfg.password_file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| PgError::Password {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
            line.strip_suffix(b"\r").unwrap_or(line).to_vec()
        }
        None => std::env::var_os(PASSWORD_ENV)
            .map(std::os::unix::ffi::OsStringExt::into_vec)
            .ok_or(PgError::NoPassword)?,
    };
    if password.is_empty() {
        return Err(match &cfg.password_file {
            Some(path) => PgError::Password {
                path: path.clone(),
                message: "is empty".into(),
            },
            None => PgError::NoPassword,
        });
    }
    password.shrink_to_fit();
    Ok(password)
}
