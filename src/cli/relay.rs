//! Commands that run or test the relay: `init`, `check-config`, `serve`,
//! `mock-gateway`, `bench`.

use super::*;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Write synthetic records through the real store; print records/s per tenth.
    Store {
        #[arg(long)]
        records: u64,
        /// Spread the records evenly over this many UTC days.
        #[arg(long, default_value_t = 1)]
        days: u32,
        /// First day (YYYY-MM-DD); default today.
        #[arg(long)]
        start: Option<NaiveDate>,
        /// Recipient numbers are drawn from a pool of this size.
        #[arg(long, default_value_t = 1_000_000)]
        recipients_pool: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Threads sealing records. One keeps up with the writer; on two cores a
        /// second one only takes time from it.
        #[arg(long, default_value_t = 1)]
        producers: usize,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// `postgres` with a SQLite config: into a private PostgreSQL cluster made
        /// for the run and removed after (a PostgreSQL config's store is used as is).
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
    },
    /// Look up random recipients over a store's whole window, after compacting its
    /// closed partitions; fills the store first (as `bench store`) when it is empty.
    Query {
        /// Records to fill an empty store with.
        #[arg(long, default_value_t = 8_000_000)]
        records: u64,
        #[arg(long, default_value_t = 396)]
        days: u32,
        /// First day (YYYY-MM-DD) of the filled store and of the lookups' window.
        #[arg(long, default_value = "2025-11-01")]
        start: NaiveDate,
        #[arg(long, default_value_t = 200_000)]
        recipients_pool: u64,
        #[arg(long, default_value_t = 3)]
        seed: u64,
        /// Warm lookups.
        #[arg(long, default_value_t = 200)]
        lookups: usize,
        /// Also this many cold lookups, the page cache dropped before each (root).
        #[arg(long, default_value_t = 0)]
        drop_caches: usize,
        #[arg(long)]
        json: bool,
        /// No progress bar while filling.
        #[arg(long)]
        quiet: bool,
        /// As `bench store --backend`.
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
    },
    /// Load an SMS submission API (relaylog, or a gateway directly) and report
    /// throughput, errors and latency percentiles.
    Http {
        /// http://host:port of the relay or gateway.
        #[arg(long)]
        target: http::Uri,
        #[arg(long, value_enum, default_value = "kannel")]
        api: ApiArg,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// How long to run, e.g. "10s" (stops at whichever of --duration and --requests comes first).
        #[arg(long)]
        duration: Option<humantime::Duration>,
        #[arg(long)]
        requests: Option<u64>,
        /// Open loop at this many requests/s; default: closed loop.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 1)]
        recipients: usize,
        /// Recipient numbers are drawn from a pool of this size.
        #[arg(long, default_value_t = 1_000_000)]
        pool: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Runtime threads for the load generator.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Load a mail server (relaylog's SMTP listener, or the MTA directly): sessions
    /// sending pipelined messages; throughput, errors and latency percentiles.
    Smtp {
        /// host:port of the relay or mail server (plain SMTP, no TLS).
        #[arg(long)]
        target: SocketAddr,
        /// Concurrent sessions.
        #[arg(long, default_value_t = 20)]
        sessions: usize,
        /// Messages per session before it QUITs and a new one starts.
        #[arg(long, default_value_t = 10)]
        messages_per_session: u64,
        #[arg(long, default_value_t = 1)]
        recipients: usize,
        /// Bytes of each message's content (headers included).
        #[arg(long, default_value_t = 2048)]
        size: usize,
        /// How long to run, e.g. "10s" (stops at whichever of --duration and --messages comes first).
        #[arg(long)]
        duration: Option<humantime::Duration>,
        #[arg(long)]
        messages: Option<u64>,
        /// Open loop at this many messages/s; default: closed loop.
        #[arg(long)]
        rate: Option<f64>,
        /// Recipient addresses are drawn from a pool of this size.
        #[arg(long, default_value_t = 1_000_000)]
        pool: u64,
        /// AUTH PLAIN as this user in each session (the password is "bench").
        #[arg(long)]
        auth: Option<String>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Runtime threads for the load generator.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Load an SMSC (relaylog's SMPP listener, or the SMSC directly): transceiver
    /// binds keeping a window of submit_sm outstanding; submits/s, errors by
    /// command_status, response latency percentiles.
    Smpp {
        /// host:port of the relay or SMSC (plain SMPP, no TLS).
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 8)]
        sessions: usize,
        /// submit_sm outstanding per session at most.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// How long to run, e.g. "10s" (stops at whichever of --duration and --submits comes first).
        #[arg(long)]
        duration: Option<humantime::Duration>,
        #[arg(long)]
        submits: Option<u64>,
        /// Open loop at this many submits/s; default: closed loop.
        #[arg(long)]
        rate: Option<f64>,
        /// Destination numbers are drawn from a pool of this size.
        #[arg(long, default_value_t = 1_000_000)]
        pool: u64,
        /// Ask for delivery receipts (acknowledged and counted).
        #[arg(long)]
        receipts: bool,
        #[arg(long, default_value = "bench")]
        system_id: String,
        /// The bind password (a test account's; it is sent, never printed).
        #[arg(long, default_value = "bench")]
        password: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Runtime threads for the load generator.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Run a bare HTTP/1.1 pass-through proxy (hyper, one thread, nothing recorded) on
    /// loopback: the floor `benches/compare.sh` measures relaylog against. Until
    /// SIGTERM. Hidden: it forwards without recording.
    #[command(hide = true)]
    Passthrough {
        #[arg(long)]
        listen: SocketAddr,
        /// host:port of the HTTP upstream.
        #[arg(long)]
        upstream: SocketAddr,
    },
    /// Run `relaylog serve` (a child of this command, with its own store and
    /// upstreams) under HTTP, SMTP and SMPP traffic while faults come one after
    /// another: upstream restarts and stalls, the store's disk full, its directories
    /// read-only, SIGTERM and `kill -9` with restarts. At the end, check that every
    /// message an upstream accepted or a client was told was accepted has its record,
    /// and that RSS and open files stayed flat; exit 1 if not. As root the store goes
    /// on a tmpfs of its own (for the disk-full fault) and relaylog runs as `nobody`.
    Soak {
        /// How long the traffic runs.
        #[arg(long, default_value = "60s")]
        duration: humantime::Duration,
        /// A fault this often, the first after half of it.
        #[arg(long, default_value = "10s")]
        fault_every: humantime::Duration,
        /// Messages a second over HTTP, SMTP and SMPP.
        #[arg(long, default_value_t = 200.0)]
        http_rate: f64,
        #[arg(long, default_value_t = 50.0)]
        smtp_rate: f64,
        #[arg(long, default_value_t = 100.0)]
        smpp_rate: f64,
        /// Where the store, keys and logs go (default: a new temporary directory,
        /// removed at the end unless --keep).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        keep: bool,
        /// The faults, in the order they come round.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = crate::bench::soak::FAULTS)]
        faults: Vec<crate::bench::soak::Fault>,
        /// Fail unless every kind of fault given was injected and felt (the disk-full
        /// fault needs root).
        #[arg(long)]
        all_faults: bool,
        /// The size of the store's tmpfs, in MiB (as root).
        #[arg(long, default_value_t = 2048)]
        disk_mib: u64,
        /// Also write the report, with every sample, as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct MockArgs {
    #[arg(long, default_value = "127.0.0.1:13013")]
    pub listen: SocketAddr,
    #[arg(long, value_enum, default_value = "kannel")]
    pub api: ApiArg,
    /// SMSC simulator: how long after a submit its delivery receipt comes.
    #[arg(long, default_value = "1s")]
    pub receipt_delay: humantime::Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ApiArg {
    Kannel,
    Jasmin,
    Json,
    /// A sink MTA that answers like Postfix and discards every message.
    Smtp,
    /// An SMSC simulator: binds, message ids, delivery receipts.
    Smpp,
}

impl ApiArg {
    /// The HTTP gateway profile; `None` for SMTP and SMPP.
    pub fn profile(self) -> Option<ProfileKind> {
        match self {
            ApiArg::Kannel => Some(ProfileKind::Kannel),
            ApiArg::Jasmin => Some(ProfileKind::Jasmin),
            ApiArg::Json => Some(ProfileKind::Json),
            ApiArg::Smtp | ApiArg::Smpp => None,
        }
    }
}

pub(super) fn init(config: &Config) -> Result<()> {
    let store = &config.store;
    if let crate::config::Backend::Postgres(pg) = &store.backend {
        return init_postgres(config, pg);
    }
    std::fs::create_dir_all(&store.path)
        .with_context(|| format!("cannot create {}", store.path.display()))?;
    keys::create_private_dir(&store.keyring)
        .with_context(|| format!("cannot create {}", store.keyring.display()))?;
    crate::store::init_keys(store)?;
    println!(
        "created master key {} (mode 0600)",
        store.master_key.display()
    );
    println!(
        "created signing key {} (mode 0600) and {}",
        store.signing_key.display(),
        crate::store::integrity::public_key_path(&store.signing_key).display()
    );
    println!("keyring {}", store.keyring.display());
    println!("store   {}", store.path.display());
    for w in config.warnings() {
        println!("warning: {w}");
    }
    Ok(())
}

/// `init` with the PostgreSQL store: this node's keys made where missing (the master
/// key is the installation's: the first node makes it, the others are given a copy),
/// then the database brought to this version and the node registered. Safe to run
/// again, as an upgrade does.
fn init_postgres(config: &Config, pg: &crate::config::PgConfig) -> Result<()> {
    let store = &config.store;
    if store.master_key.exists() {
        println!("master key {} kept", store.master_key.display());
    } else {
        keys::create_master_key(&store.master_key)?;
        println!(
            "created master key {} (mode 0600): every other node needs a copy of it",
            store.master_key.display()
        );
    }
    if store.signing_key.exists() {
        println!("signing key {} kept", store.signing_key.display());
    } else {
        crate::store::integrity::create_signing_key(&store.signing_key)?;
        println!(
            "created signing key {} (mode 0600) and {}",
            store.signing_key.display(),
            crate::store::integrity::public_key_path(&store.signing_key).display()
        );
    }
    let done = crate::store::pgstore::init(store, pg, chrono::Utc::now().timestamp_micros())?;
    if done.applied.from == done.applied.to {
        println!("database schema at version {} already", done.applied.to);
    } else {
        println!(
            "database schema migrated from version {} to {}",
            done.applied.from, done.applied.to
        );
    }
    println!("node `{}` registered (id {})", pg.node, done.node);
    if done.tagged {
        println!(
            "node `{}`: its row's tag written (the database upgraded, or its tag cleared by hand)",
            pg.node
        );
    }
    for w in config.warnings() {
        println!("warning: {w}");
    }
    Ok(())
}

pub(super) fn check_config(cli: &Cli, config: &Config) -> Result<()> {
    keys::check_directories(&config.store)?;
    keys::MasterKey::load(&config.store.master_key)?;
    // `serve` signs the partitions' heads with it.
    let signer = crate::store::integrity::load_signing_key(&config.store.signing_key)?;
    let mut warnings = config.warnings();
    // A journal holding another store's or node's rows would stop serve.
    let journal = config.store.path.join(crate::store::JOURNAL_DIR);
    crate::store::journal::foreign(&journal, &crate::store::journal_owner(&config.store))
        .with_context(|| format!("store journal {}", journal.display()))?;
    if let crate::config::Backend::Postgres(pg) = &config.store.backend {
        // Reached, at this version, with this node registered under this key.
        let target = crate::store::pgstore::target(&config.store, pg, &signer)?;
        refuse_bench_database(pg)?;
        // Rows that say which journal frames this node's partitions hold, each
        // authenticated, as `serve` checks them before it starts.
        crate::store::pgstore::journal_frames(
            &mut *target.pool.get()?,
            target.node,
            "",
            &target.tagger,
        )?;
        warnings.extend(crate::store::pglookup::server_warnings(
            &target.pool,
            &config.store,
        ));
    }
    for l in &config.listeners {
        if let Some(tls) = &l.tls {
            crate::ingress::tls::server_config(&tls.cert, &tls.key)
                .with_context(|| format!("listener `{}`", l.name))?;
        }
        if let Some(ca) = l.upstream_ca() {
            crate::ingress::tls::load_certs(ca)
                .with_context(|| format!("listener `{}`", l.name))?;
        }
    }
    if let Some(tls) = config.admin.as_ref().and_then(|a| a.tls.as_ref()) {
        crate::ingress::tls::server_config(&tls.cert, &tls.key).context("admin")?;
    }
    println!("{}: ok", cli.config.display());
    for w in warnings {
        println!("warning: {w}");
    }
    Ok(())
}

/// A database a benchmark filled holds made-up records: never served from.
fn refuse_bench_database(pg: &crate::config::PgConfig) -> Result<()> {
    let pool = crate::pg::Pool::shared(pg)?;
    if crate::pg::schema::is_bench(&mut *pool.get()?)? {
        bail!(
            "the database of store.url was filled by `relaylog bench`: its records are made up; serve from a database of its own"
        );
    }
    Ok(())
}

/// Serves until SIGTERM or SIGINT; each SIGHUP reloads the certificates and the
/// listener limits from `path` (see [`crate::reload`]).
pub(super) fn serve(config: Config, path: &std::path::Path) -> Result<()> {
    if let crate::config::Backend::Postgres(pg) = &config.store.backend {
        refuse_bench_database(pg)?;
    }
    super::report_huge_pages();
    runtime(Some(config.serve.workers))?.block_on(async move {
        let stop = StopSignals::watch()?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot watch SIGHUP")?;
        let running = crate::serve::start(config, Arc::new(SystemClock)).await?;
        let mut stopping = std::pin::pin!(stop.wait());
        loop {
            tokio::select! {
                () = &mut stopping => break,
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading certificates and listener limits");
                    // Problems are logged by the reload; the old settings stay.
                    let _ = running.reload(Config::load(path));
                }
            }
        }
        running.shutdown().await;
        Ok(())
    })
}

/// SIGTERM and SIGINT, watched from the moment this is made: made before a command
/// says it is listening, so that a signal sent once it has said so stops it cleanly
/// rather than killing it (the default action, before a watch is in place).
pub(super) struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(super) fn watch() -> Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    /// Until one of them comes.
    pub(super) async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM"),
            _ = self.int.recv() => tracing::info!("SIGINT"),
        }
    }
}

pub(super) fn mock_gateway(args: &MockArgs) -> Result<()> {
    runtime(None)?.block_on(async move {
        let stop = StopSignals::watch()?;
        let (trigger, shutdown) = crate::shutdown::channel();
        let task = match args.api.profile() {
            Some(kind) => {
                let profile = crate::simulator::Simulator::profile_for(kind);
                let sim = crate::simulator::Simulator::bind(args.listen, profile)
                    .await
                    .with_context(|| format!("cannot listen on {}", args.listen))?;
                let addr = sim.local_addr()?;
                tracing::info!(addr = %addr, api = ?args.api, "gateway simulator listening (GET /stats for counts)");
                tokio::spawn(sim.run(shutdown))
            }
            None if matches!(args.api, ApiArg::Smpp) => {
                let smsc = crate::simulator::smpp::Smsc::bind(args.listen, args.receipt_delay.into())
                    .await
                    .with_context(|| format!("cannot listen on {}", args.listen))?;
                let addr = smsc.local_addr()?;
                tracing::info!(addr = %addr, "SMSC simulator listening");
                let stats = smsc.stats.clone();
                let task = tokio::spawn(smsc.run(shutdown));
                stop.wait().await;
                tracing::info!(counts = %stats.to_json(), "SMSC simulator stopping");
                trigger.trigger();
                let _ = task.await;
                return Ok(());
            }
            None => {
                let sink = crate::simulator::smtp::SmtpSink::bind(args.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", args.listen))?;
                let addr = sink.local_addr()?;
                tracing::info!(addr = %addr, "sink MTA listening; it discards every message");
                let stats = sink.stats.clone();
                let task = tokio::spawn(sink.run(shutdown));
                stop.wait().await;
                tracing::info!(counts = %stats.to_json(), "sink MTA stopping");
                trigger.trigger();
                let _ = task.await;
                return Ok(());
            }
        };
        stop.wait().await;
        trigger.trigger();
        let _ = task.await;
        Ok(())
    })
}

/// `bench store|query --backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Sqlite,
    Postgres,
}

/// The store a benchmark writes to: the config's, or one in a private PostgreSQL
/// cluster (kept running while the returned guard lives).
fn bench_store(
    config: &Config,
    backend: Option<BackendArg>,
) -> Result<(
    crate::config::StoreConfig,
    Option<crate::bench::pgcluster::Cluster>,
)> {
    use crate::config::Backend;
    match (backend, &config.store.backend) {
        (None | Some(BackendArg::Sqlite), Backend::Sqlite)
        | (None | Some(BackendArg::Postgres), Backend::Postgres(_)) => {
            Ok((config.store.clone(), None))
        }
        (Some(BackendArg::Sqlite), Backend::Postgres(_)) => {
            bail!("--backend sqlite, but the config's store is on PostgreSQL")
        }
        (Some(BackendArg::Postgres), Backend::Sqlite) => {
            let cluster = crate::bench::pgcluster::Cluster::start()?;
            let store = cluster.store(&config.store)?;
            eprintln!(
                "PostgreSQL: a private cluster for this run, on a Unix socket; {}",
                crate::bench::pgcluster::SETTINGS.trim().replace('\n', ", ")
            );
            Ok((store, Some(cluster)))
        }
    }
}

pub(super) fn bench(config: &Config, command: &BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Store {
            records,
            days,
            start,
            recipients_pool,
            seed,
            producers,
            quiet,
            backend,
        } => {
            let (store, _cluster) = bench_store(config, *backend)?;
            let b = crate::bench::StoreBench {
                records: *records,
                days: *days,
                start: start.unwrap_or_else(|| SystemClock.now().date_naive()),
                recipients_pool: *recipients_pool,
                seed: *seed,
                producers: *producers,
                progress: !quiet,
            };
            let report = crate::bench::store(store, &b)?;
            for (i, rate) in report.tenths.iter().enumerate() {
                println!("tenth {:>2}: {:>10.0} records/s", i + 1, rate);
            }
            println!(
                "{} records over {} day(s) from {} in {:.2} s: {:.0} records/s",
                report.records,
                b.days,
                b.start,
                report.seconds,
                report.overall()
            );
            Ok(())
        }
        BenchCommand::Query {
            records,
            days,
            start,
            recipients_pool,
            seed,
            lookups,
            drop_caches,
            json,
            quiet,
            backend,
        } => {
            let (store, _cluster) = bench_store(config, *backend)?;
            let b = crate::bench::query::QueryBench {
                fill: crate::bench::StoreBench {
                    records: *records,
                    days: *days,
                    start: *start,
                    recipients_pool: *recipients_pool,
                    seed: *seed,
                    producers: 1,
                    progress: !quiet,
                },
                lookups: *lookups,
                cold: *drop_caches,
            };
            let r = crate::bench::query::run(store, &b)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            if let Some(rate) = r.filled_records_per_second {
                println!("filled: {records} records over {days} day(s), {rate:.0} records/s");
            }
            if r.compacted_partitions == 0 {
                println!("compacted: nothing was due (compacted before)");
            } else {
                println!(
                    "compacted: {} partition(s), {} records in {:.2} s: {:.0} records/s",
                    r.compacted_partitions,
                    r.compacted_records,
                    r.compaction_seconds,
                    r.compaction_records_per_second
                );
            }
            println!(
                "disk: {:.0} bytes per record, of which filters {:.1}",
                r.bytes_per_record, r.filter_bytes_per_record
            );
            for (name, l) in [("warm", Some(&r.warm)), ("cold", r.cold.as_ref())] {
                let Some(l) = l else { continue };
                println!(
                    "{name}: {} lookups over {} partitions: p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({:.1} matches, {:.1} partitions opened per lookup)",
                    l.lookups,
                    r.partitions,
                    l.latency_ms.p50,
                    l.latency_ms.p90,
                    l.latency_ms.p99,
                    l.latency_ms.max,
                    l.mean_matches,
                    l.mean_partitions_opened
                );
            }
            Ok(())
        }
        BenchCommand::Http {
            target,
            api,
            connections,
            duration,
            requests,
            rate,
            recipients,
            pool,
            seed,
            threads,
            json,
            quiet,
        } => {
            let b = crate::bench::http::HttpBench {
                target: target.clone(),
                profile: api.profile().context(
                    "bench http loads an HTTP API; --api smtp and smpp are for mock-gateway",
                )?,
                connections: *connections,
                duration: duration.map(Into::into),
                requests: *requests,
                rate: *rate,
                recipients: *recipients,
                pool: *pool,
                seed: *seed,
                progress: !quiet,
            };
            let report = load_runtime(*threads)?.block_on(crate::bench::http::run(b))?;
            print_report(&report, report.to_text(), *json)
        }
        BenchCommand::Smtp {
            target,
            sessions,
            messages_per_session,
            recipients,
            size,
            duration,
            messages,
            rate,
            pool,
            auth,
            seed,
            threads,
            json,
            quiet,
        } => {
            let b = crate::bench::smtp::SmtpBench {
                target: *target,
                sessions: *sessions,
                messages_per_session: *messages_per_session,
                recipients: *recipients,
                size: *size,
                duration: duration.map(Into::into),
                messages: *messages,
                rate: *rate,
                pool: *pool,
                auth: auth.clone(),
                seed: *seed,
                progress: !quiet,
            };
            let report = load_runtime(*threads)?.block_on(crate::bench::smtp::run(b))?;
            print_report(&report, report.to_text(), *json)
        }
        BenchCommand::Smpp {
            target,
            sessions,
            window,
            duration,
            submits,
            rate,
            pool,
            receipts,
            system_id,
            password,
            seed,
            threads,
            json,
            quiet,
        } => {
            let b = crate::bench::smpp::SmppBench {
                target: *target,
                sessions: *sessions,
                window: *window,
                duration: duration.map(Into::into),
                submits: *submits,
                rate: *rate,
                pool: *pool,
                receipts: *receipts,
                system_id: system_id.clone(),
                password: password.clone(),
                seed: *seed,
                progress: !quiet,
            };
            let report = load_runtime(*threads)?.block_on(crate::bench::smpp::run(b))?;
            print_report(&report, report.to_text(), *json)
        }
        BenchCommand::Soak {
            duration,
            fault_every,
            http_rate,
            smtp_rate,
            smpp_rate,
            dir,
            keep,
            faults,
            all_faults,
            disk_mib,
            json,
        } => {
            let args = crate::bench::soak::SoakArgs {
                duration: (*duration).into(),
                fault_every: (*fault_every).into(),
                rates: [*http_rate, *smtp_rate, *smpp_rate],
                dir: dir.clone(),
                keep: *keep,
                faults: faults.clone(),
                all_faults: *all_faults,
                disk_mib: *disk_mib,
            };
            let report = crate::bench::soak::soak(&args)?;
            report.print();
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            let problems = report.problems();
            if !problems.is_empty() {
                bail!("soak failed: {}", problems.join("; "));
            }
            println!("soak: ok");
            Ok(())
        }
        BenchCommand::Passthrough { listen, upstream } => {
            if !listen.ip().is_loopback() {
                bail!("bench passthrough forwards without recording: it listens on loopback only");
            }
            // One current-thread runtime, as the floor is defined.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                let stop = StopSignals::watch()?;
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                tokio::select! {
                    () = crate::bench::passthrough::run(listener, *upstream) => {}
                    () = stop.wait() => {}
                }
                Ok(())
            })
        }
    }
}

/// A load generator's report: JSON, or its text.
fn print_report<R: serde::Serialize>(report: &R, text: String, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

/// The load generators' runtime, on `threads` threads.
fn load_runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
