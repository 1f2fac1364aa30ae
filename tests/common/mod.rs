//! Shared test harness: a capturing upstream, an in-process relay on loopback, and a
//! small HTTP client. Everything binds 127.0.0.1:0.
#![allow(dead_code)]

pub mod admin;
pub mod pg;
pub mod smpp;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use relaylog::clock::SystemClock;
use relaylog::config::Config;
use relaylog::serve::Running;
use relaylog::store::query::{self, Criteria, Found};
use relaylog::store::{IndexKind, keys, open_keyring};

/// A request exactly as the upstream received it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An upstream that records every request and answers like the named gateway.
pub struct CaptureUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Captured>>>,
    /// Status the next replies use (202 Kannel acceptance by default).
    pub status: Arc<AtomicU16>,
    /// Milliseconds to wait before answering.
    pub delay_ms: Arc<AtomicU64>,
    /// TCP connections accepted (keep-alive reuse shows as few connections).
    pub connections: Arc<AtomicU64>,
    /// Requests that have arrived, counted before the delay (`seen` fills after it).
    pub arrived: Arc<AtomicU64>,
    scheme: &'static str,
}

impl CaptureUpstream {
    pub async fn start(reply_body: &'static str) -> CaptureUpstream {
        Self::start_with(reply_body, None).await
    }

    /// An https upstream with the given rustls server config.
    pub async fn start_tls(
        reply_body: &'static str,
        tls: Arc<rustls::ServerConfig>,
    ) -> CaptureUpstream {
        Self::start_with(reply_body, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(
        reply_body: &'static str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> CaptureUpstream {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Captured>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(202));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let arrived = Arc::new(AtomicU64::new(0));
        let (s2, st2, d2, c2, a2) = (
            seen.clone(),
            status.clone(),
            delay_ms.clone(),
            connections.clone(),
            arrived.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c2.fetch_add(1, Ordering::SeqCst);
                let tls = tls.clone();
                let (seen, status, delay, arrived) =
                    (s2.clone(), st2.clone(), d2.clone(), a2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (seen, status, delay) = (seen.clone(), status.clone(), delay.clone());
                        arrived.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let wait = delay.load(Ordering::SeqCst);
                            if wait > 0 {
                                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                            }
                            let (head, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            seen.lock().unwrap().push(Captured {
                                method: head.method,
                                path_and_query: head
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: head.headers,
                                body,
                            });
                            let mut r =
                                Response::new(Full::new(Bytes::from_static(reply_body.as_bytes())));
                            *r.status_mut() =
                                StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    });
                    match tls {
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        CaptureUpstream {
            addr,
            seen,
            status,
            delay_ms,
            connections,
            arrived,
            scheme,
        }
    }

    pub fn url(&self) -> String {
        match self.scheme {
            // The certificate names localhost.
            "https" => format!("https://localhost:{}", self.addr.port()),
            _ => format!("http://{}", self.addr),
        }
    }

    /// Waits until `n` requests have arrived (before any delay); fails after 30 s.
    pub async fn wait_arrived(&self, n: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.arrived.load(Ordering::SeqCst) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} requests arrived",
                self.arrived.load(Ordering::SeqCst)
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Captured {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }
}

/// Writes a config for one listener into `dir` and returns its text.
pub fn config_text(
    dir: &Path,
    profile: &str,
    upstream: Option<&str>,
    extra_listener: &str,
    extra_store: &str,
) -> String {
    let upstream = upstream
        .map(|u| format!("upstream = \"{u}\"\n"))
        .unwrap_or_default();
    format!(
        "{}[[listener]]\nname = \"sms\"\nlisten = \"127.0.0.1:0\"\nprofile = \"{profile}\"\n{upstream}{extra_listener}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        store_table(dir, extra_store)
    )
}

/// A configuration with one SMTP listener named `mail` (in front of the built-in sink
/// unless `listener` names an upstream).
pub fn smtp_config_text(dir: &Path, listener: &str, store: &str) -> String {
    format!(
        "{}[[listener]]\nname = \"mail\"\nprotocol = \"smtp\"\nlisten = \"127.0.0.1:0\"\n{listener}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        store_table(dir, store)
    )
}

/// The `[store]` table of a test's store under `dir`, with `extra` lines: its files
/// under `dir`, and on PostgreSQL (see [`on_postgres`]) its database.
pub fn store_table(dir: &Path, extra: &str) -> String {
    let d = dir.display();
    let backend = backend_lines(dir, extra);
    format!(
        "[store]\npath = \"{d}/store\"\nkeyring = \"{d}/keys/keyring\"\nmaster-key = \"{d}/keys/master.key\"\nsigning-key = \"{d}/keys/signing.key\"\nledger = \"{d}/ledger.sqlite\"\n{extra}\n{backend}\n"
    )
}

/// Whether this run puts the stores the tests make on PostgreSQL: with
/// `RELAYLOG_TEST_BACKEND=postgres`, [`config_text`] and [`smtp_config_text`] give each
/// test directory a database of its own in one private cluster per test binary
/// ([`pg::shared`]), so that the suites about the store's users (`serve`, `query`,
/// `expire`, holds, `verify`, cases, disclosure, offboarding, the admin API) run
/// against both backends. Tests about SQLite's files say so and stop early
/// ([`sqlite_only`]).
pub fn on_postgres() -> bool {
    match std::env::var("RELAYLOG_TEST_BACKEND").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("RELAYLOG_TEST_BACKEND={other}: sqlite or postgres"),
    }
}

/// The `[store]` line that makes the store answer from its journal on either backend
/// (always so on SQLite; `store.acknowledge = "journal"` on PostgreSQL): for tests of
/// what the journal does while the writer is held up.
pub fn answering_from_journal() -> &'static str {
    if on_postgres() {
        "acknowledge = \"journal\"\n"
    } else {
        ""
    }
}

/// True (and says so) when the run is on PostgreSQL and this test is about SQLite's
/// files (`why`): the caller returns.
pub fn sqlite_only(why: &str) -> bool {
    let skip = on_postgres();
    if skip {
        eprintln!("not on PostgreSQL: {why}");
    }
    skip
}

/// The `[store]` lines that put `dir`'s store on PostgreSQL when the run is (the same
/// database each time for one directory), unless `extra` chooses a backend itself.
fn backend_lines(dir: &Path, extra: &str) -> String {
    if extra.contains("backend =") {
        return String::new();
    }
    match database(dir) {
        Some(db) => pg::shared().store_lines(dir, &db, "n1"),
        None => String::new(),
    }
}

/// On PostgreSQL, the database of `dir`'s store (one per test directory).
pub fn database(dir: &Path) -> Option<String> {
    static DATABASES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    if !on_postgres() {
        return None;
    }
    let mut dbs = DATABASES.lock().unwrap();
    let n = match dbs.iter().position(|d| d == dir) {
        Some(n) => n,
        None => {
            dbs.push(dir.to_owned());
            dbs.len() - 1
        }
    };
    Some(format!("suite_{n}"))
}

/// Where [`tamper`] changes data on SQLite.
pub enum Stored {
    /// `dir/ledger.sqlite`.
    Ledger,
    /// The store's one partition file ([`partition_file`]).
    Partition,
}

/// Changes stored data behind relaylog's back, as an attacker or a failing disk would:
/// `sql` on a SQLite file or, on PostgreSQL, `pg_sql` on `dir`'s database (schema
/// `relaylog` first on the search path).
pub fn tamper(dir: &Path, file: Stored, sql: &str, pg_sql: &str) {
    if let Some(db) = database(dir) {
        return pg::shared().batch(&db, &format!("SET search_path = relaylog; {pg_sql}"));
    }
    let file = match file {
        Stored::Ledger => dir.join("ledger.sqlite"),
        Stored::Partition => partition_file(dir),
    };
    rusqlite::Connection::open(file)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
}

/// The ledger at rest (officers, cases, holds, the audit log, refusals, sessions):
/// `dir/ledger.sqlite` and its WAL, or on PostgreSQL those tables' rows ([`stored_bytes`]).
pub fn ledger_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    const TABLES: [&str; 6] = [
        "relaylog.officer",
        "relaylog.cases",
        "relaylog.hold",
        "relaylog.audit",
        "relaylog.refusal",
        "relaylog.session",
    ];
    let ledger: Vec<_> = stored_bytes(dir)
        .into_iter()
        .filter(|(name, _)| name.contains("ledger.sqlite") || TABLES.contains(&name.as_str()))
        .collect();
    assert!(!ledger.is_empty(), "no ledger under {}", dir.display());
    ledger
}

/// Everything relaylog keeps at rest for `dir`: each file under it, and on PostgreSQL
/// each table of its database as text (every row, every column; `bytea` in escape
/// form, its printable bytes as they are), by name.
pub fn stored_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = files_under(dir)
        .into_iter()
        .map(|f| {
            (
                f.display().to_string(),
                std::fs::read(&f).unwrap_or_default(),
            )
        })
        .collect();
    if let Some(db) = database(dir) {
        off_runtime(|| {
            let mut c = pg::shared().client(&db);
            // bytea as its bytes where they are printable (not hex): text kept in a
            // bytea column is found too.
            c.batch_execute("SET bytea_output = 'escape'").unwrap();
            let tables: Vec<String> = c
                .query(
                    "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
                     WHERE schemaname IN ('relaylog', 'relaylog_keys')",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            for t in tables {
                let text: Option<String> = c
                    .query_one(
                        &format!("SELECT string_agg(t::text, E'\\n') FROM {t} t"),
                        &[],
                    )
                    .unwrap()
                    .get(0);
                out.push((t, text.unwrap_or_default().into_bytes()));
            }
        });
    }
    out
}

/// The settings of a store under `dir` as `StoreConfig::under` makes them, on
/// PostgreSQL when the run is (`dir`'s database: see [`on_postgres`]).
pub fn store_config(dir: &Path) -> relaylog::config::StoreConfig {
    let mut cfg = relaylog::config::StoreConfig::under(dir);
    let lines = backend_lines(dir, "");
    if !lines.is_empty() {
        let text = format!("[store]\n{lines}");
        cfg.backend = Config::parse(&text, Path::new("test.toml"))
            .unwrap()
            .store
            .backend;
    }
    cfg
}

/// Creates a store's keys and, on PostgreSQL, its database's schema and this node
/// (what `relaylog init` does), off the runtime's threads.
pub fn init_store(cfg: &relaylog::config::StoreConfig) {
    relaylog::store::init_keys(cfg).unwrap();
    if let relaylog::config::Backend::Postgres(pg) = &cfg.backend {
        off_runtime(|| {
            relaylog::store::pgstore::init(cfg, pg, chrono::Utc::now().timestamp_micros()).unwrap()
        });
    }
}

/// The partitions a store holds, oldest first: its files, or its database's.
pub fn partitions(
    cfg: &relaylog::config::StoreConfig,
) -> Vec<relaylog::store::partition::PartitionId> {
    match &cfg.backend {
        relaylog::config::Backend::Sqlite => relaylog::store::partition::list(&cfg.path).unwrap(),
        relaylog::config::Backend::Postgres(pg) => off_runtime(|| {
            let pool = relaylog::pg::Pool::shared(pg).unwrap();
            let mut client = pool.get().unwrap();
            relaylog::pg::schema::partitions(&mut *client, cfg.partition).unwrap()
        }),
    }
}

/// Runs `f` on a thread of its own: the PostgreSQL client blocks, and must not on a
/// runtime's thread (async tests).
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

/// The `[compliance]` table that lets the command line's reads run without an
/// officer's login: for tests about something else (the login itself is tested in
/// tests/compliance.rs).
pub const SINGLE_OPERATOR: &str = "\n[compliance]\nsingle-operator = true\n";

/// The audit log read straight from the ledger, oldest first: (actor, action, details);
/// refusals not written to it yet (`compliance::refusals`) are written first, as
/// `audit list` does.
pub fn audit_entries(dir: &Path) -> Vec<(String, String, String)> {
    let written = dir.join("relaylog.toml");
    let store = if written.exists() {
        Config::load(&written).unwrap().store
    } else {
        let text = config_text(dir, "kannel", None, "", "");
        Config::parse(&text, Path::new("test.toml")).unwrap().store
    };
    off_runtime(|| {
        let mut ledger = relaylog::ledger::Ledger::open_store(&store).unwrap();
        ledger
            .flush_refusals(chrono::Utc::now().timestamp_micros(), true)
            .unwrap();
        ledger
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| (e.actor, e.action, e.details))
            .collect()
    })
}

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("relaylog.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Creates the master and signing keys where [`config_text`] names them; on
/// PostgreSQL, with `dir/relaylog.toml` written, the database's schema and this node
/// too (see [`init_database`]; [`Relay::start`] does that itself).
pub fn init_keys(dir: &Path) {
    let master = dir.join("keys/master.key");
    if !master.exists() {
        keys::create_master_key(&master).unwrap();
        relaylog::store::integrity::create_signing_key(&dir.join("keys/signing.key")).unwrap();
    }
    let config = dir.join("relaylog.toml");
    if on_postgres() && config.exists() {
        init_database(&Config::load(&config).unwrap());
    }
}

/// On PostgreSQL: what `relaylog init` does to the database (migrations, the
/// installation, this node); nothing on SQLite.
pub fn init_database(config: &Config) {
    if let relaylog::config::Backend::Postgres(pg) = &config.store.backend {
        off_runtime(|| {
            relaylog::store::pgstore::init(&config.store, pg, chrono::Utc::now().timestamp_micros())
                .unwrap()
        });
    }
}

/// `relaylog::serve::start`, with the database initialised first on PostgreSQL (as
/// `relaylog init` would have).
pub async fn start_serve(
    config: Config,
    clock: relaylog::clock::SharedClock,
) -> Result<Running, relaylog::serve::ServeError> {
    init_database(&config);
    relaylog::serve::start(config, clock).await
}

pub struct Relay {
    pub running: Running,
    pub config: Config,
    pub url: String,
    pub admin: String,
}

impl Relay {
    pub async fn start(dir: &Path, text: &str) -> Relay {
        init_keys(dir);
        let config = Config::parse(text, Path::new("test.toml")).unwrap();
        let running = start_serve(config.clone(), Arc::new(SystemClock))
            .await
            .unwrap();
        let url = format!("http://{}", running.addr("sms").unwrap());
        let admin = format!("http://{}", running.admin.unwrap());
        Relay {
            running,
            config,
            url,
            admin,
        }
    }

    /// Waits until every queued record and outcome event is committed (outcomes are
    /// queued when the reply goes back, and committed a moment later).
    pub async fn settle(&self) {
        self.running.settle().await.unwrap();
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        get(&client(), &format!("{}/metrics", self.admin)).await.1
    }

    /// Looks records up through the store's query path, as `relaylog query` does,
    /// once everything queued is in the partitions (a client is answered when its
    /// records are in the journal, a moment before).
    pub async fn query(&self, kind: IndexKind, value: &str) -> Vec<Found> {
        self.settle().await;
        query_store(&self.config, kind, value)
    }
}

pub fn query_store(config: &Config, kind: IndexKind, value: &str) -> Vec<Found> {
    query_store_cfg(&config.store, kind, value)
}

/// [`query_store`] on a store's own config.
pub fn query_store_cfg(
    store: &relaylog::config::StoreConfig,
    kind: IndexKind,
    value: &str,
) -> Vec<Found> {
    let criteria = Criteria {
        kind,
        value: value.to_owned(),
        since: 0,
        until: i64::MAX / 2,
        filters: true,
    };
    off_runtime(|| {
        let keyring = open_keyring(store).unwrap();
        let mut out = Vec::new();
        query::run(store, &keyring, &criteria, |f| out.push(f)).unwrap();
        out
    })
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn get(client: &HttpClient, url: &str) -> (StatusCode, String) {
    send(client, Method::GET, url, &[], Bytes::new()).await
}

/// A random string of lowercase letters, for canaries.
pub fn random_token(len: usize) -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = vec![0u8; len];
    SystemRandom::new().fill(&mut bytes).unwrap();
    bytes.iter().map(|b| (b'a' + b % 26) as char).collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Fails if any file under `dir` holds `needle`.
pub fn assert_nowhere(dir: &Path, needle: &[u8]) {
    for f in files_under(dir) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !contains(&bytes, needle),
            "{} in {}",
            String::from_utf8_lossy(needle),
            f.display()
        );
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A Kannel sendsms GET URL; `to` as it goes in the query (`%2B31…`).
pub fn sendsms(base: &str, user: &str, to: &str) -> String {
    format!("{base}/cgi-bin/sendsms?username={user}&password=pw&to={to}&text=hello")
}

/// The `n`th test number, query-encoded: `%2B316nnnnnnnn`.
pub fn number(n: u32) -> String {
    format!("%2B316{n:08}")
}

/// One SMS to one recipient, recorded at `at`, as the relay would build it.
pub fn one_recipient(
    rec: &relaylog::store::Recorder,
    at: i64,
    account: &str,
    number: &str,
) -> relaylog::record::Submission {
    relaylog::record::Submission {
        smpp: None,
        id: rec.next_submission_id(at),
        at,
        protocol: relaylog::record::Protocol::Http,
        service: relaylog::record::Service::Sms,
        account: account.into(),
        client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        client_port: 1000,
        originator: None,
        segments: 1,
        recipients: vec![relaylog::canonical::Identifier {
            form: relaylog::canonical::Form::E164,
            value: number.into(),
        }],
    }
}

/// A relay with one listener of `profile` in front of `up`.
pub async fn relay_in_front_of(
    dir: &Path,
    up: &CaptureUpstream,
    profile: &str,
    extra_listener: &str,
    extra_store: &str,
) -> Relay {
    let text = config_text(dir, profile, Some(&up.url()), extra_listener, extra_store);
    Relay::start(dir, &text).await
}

/// Fails with the whole metrics text when `needle` is not in it.
#[track_caller]
/// The end of a line of the exposition, value included: `…} 1` does not match
/// `…} 10`.
pub fn assert_metric(metrics: &str, line_end: &str) {
    assert!(
        metrics.lines().any(|l| l.ends_with(line_end)),
        "`{line_end}` not in:\n{metrics}"
    );
}

/// Waits, after a test put a fault in the partitions' way and sent one message into
/// the journal, until the writer has failed on it or been stuck on it past
/// `writer::STUCK_AFTER` (the front, woken by the ticker while its journal holds
/// frames, then reports `relaylog_journal_bypassed 1`): from then on clients wait for
/// the partitions and hear why they cannot be written, as they did before the journal.
pub async fn writer_stuck(admin: &str) {
    wait_metric(admin, "relaylog_journal_bypassed 1").await;
}

/// Waits (up to 10 s) until the metrics at `admin` have a line ending in `line_end`:
/// rows are counted as written once the writer takes them from the journal, a moment
/// after their clients were answered. Fails with the last metrics text.
pub async fn wait_metric(admin: &str, line_end: &str) -> String {
    let c = client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = get(&c, &format!("{admin}/metrics")).await.1;
        if metrics.lines().any(|l| l.ends_with(line_end)) || std::time::Instant::now() > deadline {
            assert_metric(&metrics, line_end);
            return metrics;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs the relaylog binary with a config: (succeeded, stdout and stderr).
pub fn cli(config: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relaylog"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// [`cli`] for a command expected to stop by itself (`serve` refusing to start): one
/// still running after `secs` is killed, and the test fails instead of hanging.
pub fn cli_refused_within(config: &Path, args: &[&str], secs: u64) -> (bool, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relaylog"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{args:?} still running after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// [`cli`], which must succeed: its output.
pub fn cli_ok(config: &Path, args: &[&str]) -> String {
    let (ok, text) = cli(config, args);
    assert!(ok, "{args:?}: {text}");
    text
}

/// Runs the relaylog binary with `stdin` as its standard input.
pub fn cli_with_input(config: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relaylog"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails before it reads its input (bad arguments) has closed the
    // pipe already: that is its answer, not a test failure.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A store on `cfg` driven by a manual clock (keys must exist: see `init_keys`).
pub fn open_store(
    cfg: &relaylog::config::StoreConfig,
    clock: &relaylog::clock::ManualClock,
) -> relaylog::store::Store {
    relaylog::store::Store::open(
        cfg.clone(),
        Arc::new(clock.clone()),
        Arc::new(relaylog::metrics::Metrics::new()),
    )
    .unwrap()
}

pub fn seed_from(uri: &str) -> Vec<u8> {
    relaylog::compliance::totp::secret_of(uri).unwrap()
}

pub fn totp_now(seed: &[u8]) -> String {
    totp_ahead(seed, 0)
}

/// The code `steps` 30-second steps ahead: a second use by one officer within the
/// same step would be a replay, so tests that act twice take the next step's code
/// (one step of clock skew is accepted).
pub fn totp_ahead(seed: &[u8], steps: i64) -> String {
    use relaylog::compliance::totp;
    let now = chrono::Utc::now().timestamp();
    format!(
        "{:06}",
        totp::hotp(seed, (totp::step_at(now) + steps) as u64, 6)
    )
}

pub fn add_officer(config: &std::path::Path, name: &str, role: &str) -> Vec<u8> {
    let (ok, out) = cli_with_input(
        config,
        &["officer", "add", name, "--role", role],
        &format!("{name}-long-password\n"),
    );
    assert!(ok, "{out}");
    seed_from(out.lines().find(|l| l.starts_with("otpauth://")).unwrap())
}

/// `relaylog account offboard ACCOUNT --out OUT` as `officer` (password
/// `<officer>-long-password`, as [`add_officer`] sets it) with TOTP `code`.
pub fn offboard_cli(
    config: &Path,
    account: &str,
    out: &Path,
    officer: &str,
    code: &str,
) -> (bool, String) {
    let args = [
        "account",
        "offboard",
        account,
        "--purpose",
        "contract-end",
        "--out",
        out.to_str().unwrap(),
        "--officer",
        officer,
        "--totp",
        code,
    ];
    cli_with_input(config, &args, &format!("{officer}-long-password\n"))
}

/// The TOTP code for the step of `at` (microseconds), for servers on a manual clock.
pub fn totp_at(seed: &[u8], at: i64) -> String {
    use relaylog::compliance::totp;
    format!(
        "{:06}",
        totp::hotp(seed, totp::step_at(at.div_euclid(1_000_000)) as u64, 6)
    )
}

/// The log lines written while it lives by this test's thread and the threads the
/// relay starts from it that take their starter's subscriber (its HTTP listeners'
/// threads). The store's threads and a multi-thread runtime's workers and blocking
/// threads log to the global subscriber, which writes nowhere: a test that looks for
/// their lines must run the relay on a current-thread runtime, or read them elsewhere.
///
/// One global subscriber (debug level, writing nowhere) is installed first and stays:
/// tracing caches whether a callsite is enabled, and without a subscriber that wants
/// every level, a test running beside this one with none could leave an access-log
/// callsite cached as disabled. Each capture is then a subscriber of its own, the
/// default on the test's thread while it lives.
pub struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
    _default: tracing::subscriber::DefaultGuard,
}

/// Writes to one capture's buffer.
#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    pub fn start() -> LogCapture {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(std::io::sink)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in the tests");
        });
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        LogCapture {
            buf,
            _default: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Every captured line that contains `needle`.
    pub fn lines(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.buf.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits (up to 30 s) until a line containing `needle` has been written.
    pub async fn wait_for(&self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.lines(needle).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "no `{needle}` in the log:\n{}",
                self.text()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}

/// The one partition file of a store under `dir` (`dir/store/<day>.sqlite`).
pub fn partition_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join("store"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sqlite"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

/// Another connection takes the write lock of the store's one partition (on
/// PostgreSQL: of the record and outcome tables): the writer waits on it until
/// [`HeldWriter::release`].
pub fn hold_writer(dir: &Path) -> HeldWriter {
    let Some(db) = database(dir) else {
        let lock = rusqlite::Connection::open(partition_file(dir)).unwrap();
        lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
        return HeldWriter::Sqlite(lock);
    };
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let mut c = pg::shared().client(&db);
        let mut tx = c.transaction().unwrap();
        tx.batch_execute("LOCK TABLE relaylog.record, relaylog.outcome, relaylog.outcome_block IN ACCESS EXCLUSIVE MODE")
            .unwrap();
        locked_tx.send(()).unwrap();
        let _ = released.recv();
        tx.commit().unwrap();
    });
    locked.recv().unwrap();
    HeldWriter::Postgres { release, thread }
}

/// The store made unable to write until [`Broken::mend`]: on SQLite its directory
/// taken away and a plain file put in its place; on PostgreSQL a constraint no row
/// meets on the record and outcome tables (the role is a superuser: `REVOKE` would
/// not stop it).
pub fn break_store(dir: &Path) -> Broken {
    let db = database(dir);
    match &db {
        Some(db) => pg::shared().batch(
            db,
            "ALTER TABLE relaylog.record ADD CONSTRAINT test_broken CHECK (false) NOT VALID; \
             ALTER TABLE relaylog.outcome ADD CONSTRAINT test_broken CHECK (false) NOT VALID; \
             ALTER TABLE relaylog.outcome_block ADD CONSTRAINT test_broken CHECK (false) NOT VALID",
        ),
        None => {
            let store = dir.join("store");
            std::fs::rename(&store, dir.join("store.moved")).unwrap();
            std::fs::write(&store, b"not a directory").unwrap();
        }
    }
    Broken {
        dir: dir.to_owned(),
        db,
    }
}

/// A store [`break_store`] broke.
pub struct Broken {
    dir: PathBuf,
    db: Option<String>,
}

impl Broken {
    /// The `reason` label its failed commits are counted under.
    pub fn reason(&self) -> &'static str {
        if self.db.is_some() {
            "database_error"
        } else {
            "cannot_open"
        }
    }

    /// Puts the store back as it was.
    pub fn mend(self) {
        match &self.db {
            Some(db) => pg::shared().batch(
                db,
                "ALTER TABLE relaylog.record DROP CONSTRAINT test_broken; \
                 ALTER TABLE relaylog.outcome DROP CONSTRAINT test_broken; \
                 ALTER TABLE relaylog.outcome_block DROP CONSTRAINT test_broken",
            ),
            None => {
                let store = self.dir.join("store");
                std::fs::remove_file(&store).unwrap();
                std::fs::rename(self.dir.join("store.moved"), &store).unwrap();
            }
        }
    }
}

/// What [`hold_writer`] holds.
pub enum HeldWriter {
    Sqlite(rusqlite::Connection),
    Postgres {
        release: std::sync::mpsc::Sender<()>,
        thread: std::thread::JoinHandle<()>,
    },
}

impl HeldWriter {
    /// Lets the writer go on.
    pub fn release(self) {
        match self {
            HeldWriter::Sqlite(c) => c.execute_batch("COMMIT").unwrap(),
            HeldWriter::Postgres { release, thread } => {
                release.send(()).unwrap();
                thread.join().unwrap();
            }
        }
    }
}

/// A self-signed certificate for `localhost`, written as `<name>.crt` and `<name>.key`
/// in `dir`; with the `tls-cert`/`tls-key` lines that name them.
pub fn cert_files(dir: &Path, name: &str) -> (rcgen::CertifiedKey<rcgen::KeyPair>, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let keys = format!(
        "tls-cert = \"{}\"\ntls-key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    (ck, keys)
}

/// A TLS client that trusts only `cert`.
pub fn trusting(cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

const SMTP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A test's SMTP client: one command, its reply; every wait bounded by 10 s.
pub struct SmtpClient {
    pub wire: relaylog::smtp::Wire<Box<dyn relaylog::smtp::Io>>,
    /// Its own port, as relaylog should record it.
    pub port: u16,
}

impl SmtpClient {
    pub async fn connect(addr: SocketAddr) -> (SmtpClient, relaylog::smtp::Reply) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        Self::over(tcp).await
    }

    /// A client over a connection already made; with the greeting.
    pub async fn over(tcp: tokio::net::TcpStream) -> (SmtpClient, relaylog::smtp::Reply) {
        let port = tcp.local_addr().unwrap().port();
        let mut c = SmtpClient {
            wire: relaylog::smtp::Wire::new(Box::new(tcp)),
            port,
        };
        let greeting = c.reply().await;
        (c, greeting)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.wire.send(bytes, SMTP_WAIT).await.unwrap();
    }

    pub async fn reply(&mut self) -> relaylog::smtp::Reply {
        self.wire.reply(SMTP_WAIT).await.unwrap()
    }

    pub async fn cmd(&mut self, line: &str) -> relaylog::smtp::Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    pub async fn code(&mut self, line: &str) -> u16 {
        self.cmd(line).await.code
    }

    pub async fn closed(&mut self) -> bool {
        matches!(
            self.wire.reply(SMTP_WAIT).await,
            Err(relaylog::smtp::WireError::Closed | relaylog::smtp::WireError::Io(_))
        )
    }
}

/// A port free on loopback now (for a peer the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 30 s) until something listens on `port`.
pub fn wait_port(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not open port {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A plain HTTP/1.0 GET on loopback, the reply as text ("" on any error).
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Starts a Kannel box (`bearerbox` or `smsbox`) on `conf`, its output in
/// `<dir>/<name>.out` and `.err`.
pub fn spawn_kannel_box(binary: &str, conf: &Path, dir: &Path, name: &str) -> std::process::Child {
    let log = |ext: &str| std::fs::File::create(dir.join(format!("{name}.{ext}"))).unwrap();
    std::process::Command::new(binary)
        .args(["-v", "1"])
        .arg(conf)
        .stdout(log("out"))
        .stderr(log("err"))
        .spawn()
        .unwrap()
}

/// Waits (up to 30 s) until bearerbox's status page shows SMSC `smsc_id` online.
pub fn wait_smsc_online(admin: u16, smsc_id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = http_get(admin, "/status.txt?password=adminpw");
        if text.contains(smsc_id) && text.contains("online") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SMSC {smsc_id} never came online:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The `relaylog` binary under test.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_relaylog"))
}

/// A running `relaylog serve` with its output in files.
pub struct Served {
    pub child: std::process::Child,
    out: PathBuf,
    err: PathBuf,
}

impl Served {
    pub fn start(dir: &Path, config: &Path) -> Served {
        let (out, err) = (dir.join("serve.out"), dir.join("serve.err"));
        let child = bin()
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("RUST_LOG", "debug")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Served { child, out, err }
    }

    /// Waits for the log line that names the bound address of the listener or admin.
    pub fn addr(&self, what: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&self.err).unwrap_or_default();
            for line in log.lines().filter(|l| l.contains(what)) {
                if let Some(i) = line.find("addr=") {
                    let rest = &line[i + 5..];
                    let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
                    return format!("http://{}", rest[..end].trim_matches('"'));
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not start:\n{log}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn output(&self) -> Vec<u8> {
        let mut all = std::fs::read(&self.out).unwrap_or_default();
        all.extend(std::fs::read(&self.err).unwrap_or_default());
        all
    }

    pub fn terminate(mut self) -> (std::process::ExitStatus, Vec<u8>) {
        unsafe_kill(self.child.id(), "TERM");
        let status = self.child.wait().unwrap();
        let out = self.output();
        (status, out)
    }
}

/// A failed assertion must not leave a relay running.
impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` to `pid` with kill(1).
pub fn unsafe_kill(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}
