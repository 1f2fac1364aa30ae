//! The command line: `init`, `serve`, `check-config`, `mock-gateway`, `query`.
//! Errors here are `anyhow`; `main` prints them and exits non-zero.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::canonical::NumberNormalizer;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, LogFormat, ProfileKind};
use crate::export::{CSV_HEADER, found_csv, found_json, rfc3339};
use crate::store::keys;

#[derive(Debug, Parser)]
#[command(
    name = "relaylog",
    version,
    about = "Relays SMS to a gateway and records traffic metadata, never content"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        default_value = "config/relaylog.toml",
        env = "RELAYLOG_CONFIG"
    )]
    pub config: PathBuf,
    /// Log format; overrides [log] format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the data directories, the master key (mode 0600) and the keyring.
    /// Never overwrites existing keys.
    Init,
    /// Run the relay (and the admin listener).
    Serve,
    /// Validate the configuration and the files it names; print warnings.
    CheckConfig,
    /// Run a gateway simulator that answers like Kannel, Jasmin or a JSON API.
    MockGateway(MockArgs),
    /// Look up records by recipient, account, client IP or originator.
    Query(QueryArgs),
    /// Remove partitions past retention and shred their keys (serve does this itself).
    Expire(ExpireArgs),
    /// Legal holds: partitions they cover are kept past retention.
    #[command(subcommand)]
    Hold(HoldCommand),
    /// Compliance officers: add (prints the TOTP enrolment URI once), list, disable.
    #[command(subcommand)]
    Officer(OfficerCommand),
    /// Cases: the only way records are disclosed (open, approve by another approver,
    /// then disclose).
    #[command(subcommand)]
    Case(CaseCommand),
    /// Export an approved case's records with a signed manifest (password on standard
    /// input, and a TOTP code).
    Disclose(DiscloseArgs),
    /// Customer accounts: contract-end return and deletion.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Statistics without personal data.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Data-subject requests.
    #[command(subcommand)]
    Subject(SubjectCommand),
    /// Check an export's manifest signature and the export's digest. With
    /// --public-key, needs nothing else of the installation.
    VerifyExport {
        manifest: PathBuf,
        /// The installation's `signing.key.pub`; default: the configured one.
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// The hash-chained audit log: list it, or check that no entry was edited.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Recompute every partition's Merkle tree and check its signed heads.
    Verify {
        #[arg(long)]
        since: Option<String>,
        /// A date includes that day.
        #[arg(long)]
        until: Option<String>,
    },
}

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
}

#[derive(Debug, Args)]
pub struct ExpireArgs {
    /// Expire as of this time (RFC 3339 or date) instead of now.
    #[arg(long)]
    pub now: Option<String>,
    /// Show what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum OfficerCommand {
    /// Add an officer. The password is read from the first line of standard input;
    /// the TOTP enrolment URI is printed once, for the officer's authenticator app.
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: crate::compliance::officers::Role,
    },
    /// List officers, their roles and whether they are enabled.
    List,
    /// Disable an officer (kept, for the audit trail).
    Disable { name: String },
}

#[derive(Debug, Subcommand)]
pub enum CaseCommand {
    /// Open a case (the officer's password is read from standard input).
    Open(Box<CaseOpenArgs>),
    /// Approve an open case: an approver other than its opener, password on standard
    /// input and a TOTP code.
    Approve(DecideArgs),
    /// Reject an open case, with a reason.
    Reject(DecideArgs),
    /// Close a case: nothing more is disclosed under it.
    Close {
        id: i64,
        #[arg(long)]
        officer: String,
    },
    /// Show a case (identifiers by kind and audit tag only).
    Show { id: i64 },
    /// List the cases.
    List,
}

#[derive(Debug, clap::Args)]
pub struct CaseOpenArgs {
    #[arg(long)]
    pub officer: String,
    /// The requesting authority, by name.
    #[arg(long)]
    pub authority: String,
    /// ETSI TS 102 657 request id, part 1: the country code (e.g. NL).
    #[arg(long)]
    pub country: String,
    /// Part 2: the authorised organisation's id.
    #[arg(long)]
    pub organisation: String,
    /// Part 3: the organisation's request number.
    #[arg(long)]
    pub request: String,
    #[arg(long)]
    pub legal_basis: String,
    #[arg(long)]
    pub order_ref: String,
    #[arg(long)]
    pub order_date: String,
    #[arg(long)]
    pub deadline: String,
    /// Records of a confidential case are left out of data-subject exports.
    #[arg(long)]
    pub confidential: bool,
    #[arg(long)]
    pub since: String,
    /// End of the window (a date includes that day).
    #[arg(long)]
    pub until: String,
    #[arg(long)]
    pub recipient: Vec<String>,
    #[arg(long)]
    pub originator: Vec<String>,
    #[arg(long)]
    pub account: Vec<String>,
    #[arg(long)]
    pub ip: Vec<String>,
    #[arg(long)]
    pub email: Vec<String>,
}

impl CaseOpenArgs {
    fn form(&self) -> crate::compliance::cases::CaseForm {
        use crate::compliance::cases::{CaseForm, Identifiers};
        CaseForm {
            authority: self.authority.clone(),
            country: self.country.clone(),
            organisation: self.organisation.clone(),
            request: self.request.clone(),
            legal_basis: self.legal_basis.clone(),
            order_reference: self.order_ref.clone(),
            order_date: self.order_date.clone(),
            deadline: self.deadline.clone(),
            confidential: self.confidential,
            since: self.since.clone(),
            until: self.until.clone(),
            identifiers: Identifiers {
                recipient: self.recipient.clone(),
                originator: self.originator.clone(),
                account: self.account.clone(),
                ip: self.ip.clone(),
                email: self.email.clone(),
            },
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Export an account's records to DIR, erase them (and their outcome events) from
    /// every partition, and write a signed deletion statement. An admin officer's
    /// password on standard input, and a TOTP code.
    Offboard {
        name: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        officer: String,
        #[arg(long)]
        totp: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Lawful requests of a year: cases, records disclosed, the age of the records
    /// asked for, requests that could not be met.
    Cases {
        #[arg(long)]
        year: i32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubjectCommand {
    /// Everything held about one number or address, with each record's deletion date
    /// (password on standard input, and a TOTP code).
    Export(SubjectExportArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).args(["recipient", "email"])))]
pub struct SubjectExportArgs {
    #[arg(long)]
    pub recipient: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long)]
    pub officer: String,
    #[arg(long)]
    pub totp: String,
    /// Only JSON: the machine-readable form the subject is entitled to.
    #[arg(long, value_parser = ["json"], default_value = "json")]
    pub format: String,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DiscloseArgs {
    #[arg(long)]
    pub case: i64,
    #[arg(long)]
    pub officer: String,
    #[arg(long)]
    pub totp: String,
    #[arg(long, value_enum, default_value = "json")]
    pub format: crate::compliance::disclosure::Format,
    /// The export file; the manifest goes beside it (`<out>.manifest.json`, `.sig`).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DecideArgs {
    pub id: i64,
    #[arg(long)]
    pub officer: String,
    /// The current code of the officer's authenticator.
    #[arg(long)]
    pub totp: String,
    #[arg(long, default_value = "")]
    pub note: String,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the audit log, oldest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Recompute the hash chain; non-zero exit if any entry was edited or removed.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum HoldCommand {
    /// Place a hold on the partitions overlapping a window.
    Add {
        /// The case reference (e.g. the authority's request number).
        #[arg(long)]
        case: String,
        #[arg(long)]
        since: String,
        /// End of the window (a date includes that day).
        #[arg(long)]
        until: String,
        #[arg(long)]
        reason: String,
    },
    /// List the holds in force.
    List,
    /// Release every hold of a case.
    Release {
        #[arg(long)]
        case: String,
    },
}

#[derive(Debug, Args)]
pub struct MockArgs {
    #[arg(long, default_value = "127.0.0.1:13013")]
    pub listen: SocketAddr,
    #[arg(long, value_enum, default_value = "kannel")]
    pub api: ApiArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ApiArg {
    Kannel,
    Jasmin,
    Json,
}

impl From<ApiArg> for ProfileKind {
    fn from(a: ApiArg) -> Self {
        match a {
            ApiArg::Kannel => ProfileKind::Kannel,
            ApiArg::Jasmin => ProfileKind::Jasmin,
            ApiArg::Json => ProfileKind::Json,
        }
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("identifier").required(true).args(["recipient", "account", "ip", "originator"])))]
pub struct QueryArgs {
    /// A recipient phone number (any format; national numbers use store.default-region).
    #[arg(long)]
    pub recipient: Option<String>,
    /// An account (gateway user name).
    #[arg(long)]
    pub account: Option<String>,
    /// A client IP address.
    #[arg(long)]
    pub ip: Option<IpAddr>,
    /// An originator: sender number or alphanumeric sender id.
    #[arg(long)]
    pub originator: Option<String>,
    /// Start of the window: RFC 3339 time or a date (its midnight, UTC). Default: all.
    #[arg(long)]
    pub since: Option<String>,
    /// End of the window: RFC 3339 time (exclusive) or a date (that whole day included).
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, value_enum, default_value = "json")]
    pub format: OutputFormat,
    /// Most records printed (all are counted). The query is audited, with its count,
    /// before anything is printed, so its results are held in memory until then.
    #[arg(long, default_value_t = 100_000)]
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    Csv,
}

pub fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only on a terminal: a log file or journal must not get escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn log_format(cli: &Cli, config: Option<&Config>) -> LogFormat {
    match cli.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => config.map_or(LogFormat::Text, |c| c.log.format),
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::MockGateway(args) => {
            init_tracing(log_format(&cli, None), "info");
            mock_gateway(args)
        }
        // A machine that only checks exports needs only the public key.
        Command::VerifyExport {
            manifest,
            public_key: Some(key),
        } => verify_export(manifest, key),
        Command::Bench(b @ BenchCommand::Http { .. }) => {
            init_tracing(log_format(&cli, None), "warn");
            let config = Config::parse("", &cli.config)?;
            bench(&config, b)
        }
        command => {
            let config = Config::load(&cli.config)?;
            init_tracing(log_format(&cli, Some(&config)), &config.log.level);
            match command {
                Command::Init => init(&config),
                Command::Serve => serve(config),
                Command::CheckConfig => check_config(&cli, &config),
                Command::Query(args) => run_query(&config, args),
                Command::Expire(args) => expire(&config, args),
                Command::Hold(h) => hold(&config, h),
                Command::Officer(o) => officer(&config, o),
                Command::Audit(a) => audit(&config, a),
                Command::Case(c) => case(&config, c),
                Command::Disclose(d) => disclose(&config, d),
                Command::Account(AccountCommand::Offboard {
                    name,
                    out,
                    officer,
                    totp,
                }) => offboard(&config, name, out, officer, totp),
                Command::Report(ReportCommand::Cases { year, json }) => {
                    let mut ledger = crate::ledger::Ledger::open(&config.store.ledger)?;
                    let report = crate::compliance::report::cases_in_year(&ledger, *year)?;
                    ledger.audit(
                        SystemClock.now_micros(),
                        &actor(),
                        "report.cases",
                        serde_json::json!({"year": year}),
                    )?;
                    if *json {
                        println!("{}", serde_json::to_string_pretty(&report)?);
                    } else {
                        print!("{}", report.to_text());
                    }
                    Ok(())
                }
                Command::Subject(SubjectCommand::Export(a)) => subject_export(&config, a),
                Command::VerifyExport { manifest, .. } => verify_export(
                    manifest,
                    &crate::store::integrity::public_key_path(&config.store.signing_key),
                ),
                Command::Bench(b) => bench(&config, b),
                Command::Verify { since, until } => {
                    verify(&config, since.as_deref(), until.as_deref())
                }
                Command::MockGateway(_) => unreachable!("handled above"),
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init(config: &Config) -> Result<()> {
    let store = &config.store;
    std::fs::create_dir_all(&store.path)
        .with_context(|| format!("cannot create {}", store.path.display()))?;
    std::fs::create_dir_all(&store.keyring)
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

fn check_config(cli: &Cli, config: &Config) -> Result<()> {
    keys::MasterKey::load(&config.store.master_key)?;
    for l in &config.listeners {
        if let Some(tls) = &l.tls {
            crate::ingress::tls::server_config(&tls.cert, &tls.key)
                .with_context(|| format!("listener `{}`", l.name))?;
        }
        if let Some(ca) = &l.forward.ca_file {
            crate::ingress::tls::load_certs(ca)
                .with_context(|| format!("listener `{}`", l.name))?;
        }
    }
    if let Some(tls) = config.admin.as_ref().and_then(|a| a.tls.as_ref()) {
        crate::ingress::tls::server_config(&tls.cert, &tls.key).context("admin")?;
        crate::store::integrity::load_signing_key(&config.store.signing_key)
            .context("admin: the compliance API signs exports")?;
    }
    println!("{}: ok", cli.config.display());
    for w in config.warnings() {
        println!("warning: {w}");
    }
    Ok(())
}

fn serve(config: Config) -> Result<()> {
    runtime()?.block_on(async move {
        let running = crate::serve::start(config, Arc::new(SystemClock)).await?;
        wait_for_signal().await?;
        running.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    Ok(())
}

fn mock_gateway(args: &MockArgs) -> Result<()> {
    runtime()?.block_on(async move {
        let sim = crate::simulator::Simulator::bind(args.listen, crate::simulator::Simulator::profile_for(args.api.into()))
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = sim.local_addr()?;
        tracing::info!(addr = %addr, api = ?args.api, "gateway simulator listening (GET /stats for counts)");
        let (trigger, shutdown) = crate::shutdown::channel();
        let task = tokio::spawn(sim.run(shutdown));
        wait_for_signal().await?;
        trigger.trigger();
        let _ = task.await;
        Ok(())
    })
}

fn verify(config: &Config, since: Option<&str>, until: Option<&str>) -> Result<()> {
    use crate::store::integrity;
    let since = since
        .map(|s| parse_time(s, false))
        .transpose()?
        .map_or(0, |t| t.timestamp_micros());
    let until = until
        .map(|s| parse_time(s, true))
        .transpose()?
        .map_or(i64::MAX / 2, |t| t.timestamp_micros());
    let public_key = integrity::load_public_key(&config.store.signing_key)?;
    // The keyring is optional here: verify needs only the public key.
    let keyring = crate::store::open_keyring(&config.store).ok();
    let reports =
        integrity::verify_store(&config.store, keyring.as_ref(), &public_key, since, until)
            .with_context(|| format!("cannot list {}", config.store.path.display()))?;
    let mut bad = 0;
    for r in &reports {
        let v = &r.verified;
        let mut counts = format!(
            "{} records, {} outcomes, {} signed heads",
            v.records, v.outcomes, v.heads
        );
        if v.erasures > 0 {
            counts += &format!(
                "; {} rows erased under {} signed erasure statement(s)",
                v.erased, v.erasures
            );
        }
        if v.damage.is_empty() {
            println!("{}  ok  {counts}", r.partition);
        } else {
            bad += 1;
            for d in &v.damage {
                println!("{}  DAMAGED  {d}", r.partition);
            }
        }
        if r.keys_missing {
            bad += 1;
            println!(
                "{}  KEYS MISSING  values unreadable; hashes and signatures checked ({counts})",
                r.partition
            );
        }
    }
    println!("{} partition(s) verified, {bad} problem(s)", reports.len());
    if bad > 0 {
        bail!("integrity check failed for {bad} partition(s)");
    }
    Ok(())
}

fn bench(config: &Config, command: &BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Store {
            records,
            days,
            start,
            recipients_pool,
            seed,
            producers,
            quiet,
        } => {
            let b = crate::bench::StoreBench {
                records: *records,
                days: *days,
                start: start.unwrap_or_else(|| SystemClock.now().date_naive()),
                recipients_pool: *recipients_pool,
                seed: *seed,
                producers: *producers,
                progress: !quiet,
            };
            let report = crate::bench::store(config.store.clone(), &b)?;
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
                profile: (*api).into(),
                connections: *connections,
                duration: duration.map(Into::into),
                requests: *requests,
                rate: *rate,
                recipients: *recipients,
                pool: *pool,
                seed: *seed,
                progress: !quiet,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads((*threads).max(1))
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let report = rt.block_on(crate::bench::http::run(b))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }
    }
}

/// Who is acting, for the audit log: the login name until officers exist.
fn actor() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

fn expire(config: &Config, args: &ExpireArgs) -> Result<()> {
    use crate::store::expiry;
    let now = match &args.now {
        Some(t) => parse_time(t, false)?,
        None => SystemClock.now(),
    };
    let keyring = crate::store::open_keyring(&config.store)?;
    let mut ledger = crate::ledger::Ledger::open(&config.store.ledger)?;
    let plan = expiry::plan(&config.store, &keyring, &ledger.holds()?, now)?;
    let cutoff = plan.cutoff.map(|c| c.to_rfc3339()).unwrap_or_default();
    println!(
        "retention cutoff {cutoff}: {} partition(s) to remove, {} held",
        plan.expire.len(),
        plan.held.len()
    );
    for (p, cases) in &plan.held {
        println!("held     {p} (cases: {})", cases.join(", "));
    }
    if args.dry_run {
        for (p, records) in &plan.expire {
            println!("would remove {p} ({records} records)");
        }
        return Ok(());
    }
    use std::io::IsTerminal;
    let bar = if plan.expire.len() > 10 && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(plan.expire.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} partitions {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    expiry::execute(
        &config.store,
        &keyring,
        &mut ledger,
        &plan,
        &actor(),
        now,
        |p| {
            if let Some(b) = &bar {
                b.set_message(p.to_string());
                b.inc(1);
            }
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for (p, records) in &plan.expire {
        println!("removed  {p} ({records} records), keys shredded");
    }
    Ok(())
}

/// The first line of standard input, without its line end: how secrets reach the CLI
/// (never as arguments, which `ps` shows).
fn read_secret_line(what: &str) -> Result<String> {
    use std::io::{BufRead, IsTerminal, Read};
    if std::io::stdin().is_terminal() {
        eprint!("{what}: ");
    }
    // Bounded like every other input: a secret longer than this is refused, not read on.
    const MAX_SECRET: u64 = 1024;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(MAX_SECRET + 1)
        .read_line(&mut line)?;
    if line.len() as u64 > MAX_SECRET {
        bail!("the {what} on standard input is longer than {MAX_SECRET} bytes");
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn officer(config: &Config, command: &OfficerCommand) -> Result<()> {
    let mut ledger = crate::ledger::Ledger::open(&config.store.ledger)?;
    let now = SystemClock.now_micros();
    match command {
        OfficerCommand::Add { name, role } => {
            let master = crate::store::keys::MasterKey::load(&config.store.master_key)?;
            let password = read_secret_line("password")?;
            let e = ledger.add_officer(&master, name, *role, &password, now, &actor())?;
            println!(
                "officer {} added with role {}",
                e.officer.name,
                e.officer.role.as_str()
            );
            println!("TOTP enrolment (shown once; scan or type it into an authenticator app):");
            println!("{}", e.otpauth_uri);
        }
        OfficerCommand::List => {
            for o in ledger.officers()? {
                println!(
                    "{}\t{}\t{}\tadded by {} at {}",
                    o.name,
                    o.role.as_str(),
                    if o.enabled { "enabled" } else { "disabled" },
                    o.created_by,
                    rfc3339(o.created_at)
                );
            }
        }
        OfficerCommand::Disable { name } => {
            ledger.disable_officer(name, now, &actor())?;
            println!("officer {name} disabled");
        }
    }
    Ok(())
}

fn case(config: &Config, command: &CaseCommand) -> Result<()> {
    use crate::compliance::officers::{Credentials, Role};
    let mut ledger = crate::ledger::Ledger::open(&config.store.ledger)?;
    let now = SystemClock.now_micros();
    ledger.note_four_eyes(config.compliance.four_eyes, now, &actor())?;
    let master = || crate::store::keys::MasterKey::load(&config.store.master_key);
    match command {
        CaseCommand::Open(a) => {
            let master = master()?;
            let password = read_secret_line("password")?;
            let who = Credentials {
                name: &a.officer,
                password: &password,
                totp: None,
            };
            let officer = ledger.authenticate(&master, who, Role::Officer, now, "case.open")?;
            let numbers = NumberNormalizer::new(config.store.default_region);
            let cutoff = config.store.retention.cutoff(SystemClock.now());
            let new = a
                .form()
                .validate(&numbers, now, Some(cutoff.timestamp_micros()))?;
            let id = ledger.open_case(&master, &officer, &new, now)?;
            println!(
                "case {id} opened ({}); it needs an approver's approval",
                new.details.request
            );
        }
        CaseCommand::Approve(d) | CaseCommand::Reject(d) => {
            let approve = matches!(command, CaseCommand::Approve(_));
            if !approve && d.note.trim().is_empty() {
                bail!("a rejection needs --note with the reason");
            }
            let master = master()?;
            let password = read_secret_line("password")?;
            let who = Credentials {
                name: &d.officer,
                password: &password,
                totp: Some(&d.totp),
            };
            let action = if approve {
                "case.approve"
            } else {
                "case.reject"
            };
            let officer = ledger.authenticate(&master, who, Role::Approver, now, action)?;
            ledger.decide_case(
                &officer,
                d.id,
                approve,
                &d.note,
                config.compliance.four_eyes,
                now,
            )?;
            println!(
                "case {} {}",
                d.id,
                if approve { "approved" } else { "rejected" }
            );
        }
        CaseCommand::Close { id, officer } => {
            let master = master()?;
            let password = read_secret_line("password")?;
            let who = Credentials {
                name: officer,
                password: &password,
                totp: None,
            };
            let officer = ledger.authenticate(&master, who, Role::Officer, now, "case.close")?;
            ledger.close_case(&officer, *id, now)?;
            println!("case {id} closed");
        }
        CaseCommand::Show { id } => {
            let found = ledger.case(*id);
            ledger.audit(
                now,
                &actor(),
                "case.show",
                serde_json::json!({"case": id, "found": found.is_ok()}),
            )?;
            let c = found?;
            println!("case {}\t{}\t{}", c.id, c.details.request, c.state.as_str());
            println!("authority\t{}", c.details.authority);
            println!("legal basis\t{}", c.details.legal_basis);
            println!(
                "order\t{} of {}",
                c.details.order_reference, c.details.order_date
            );
            println!("deadline\t{}", c.details.deadline);
            println!("confidential\t{}", c.details.confidential);
            println!(
                "window\t{} .. {}",
                rfc3339(c.details.since),
                rfc3339(c.details.until)
            );
            for (kind, tag) in &c.criteria_tags {
                println!("identifier\t{}\t{tag}", kind.as_str());
            }
            println!("opened\tby {} at {}", c.opened_by, rfc3339(c.opened_at));
            if let (Some(by), Some(at)) = (&c.decided_by, c.decided_at) {
                println!(
                    "decided\tby {by} at {}: {}",
                    rfc3339(at),
                    c.decision_note.as_deref().unwrap_or("")
                );
            }
        }
        CaseCommand::List => {
            ledger.audit(now, &actor(), "case.list", serde_json::json!({}))?;
            for c in ledger.cases()? {
                println!(
                    "{}\t{}\t{}\t{}\topened by {}\tdeadline {}",
                    c.id,
                    c.details.request,
                    c.state.as_str(),
                    c.details.authority,
                    c.opened_by,
                    c.details.deadline
                );
            }
        }
    }
    Ok(())
}

/// The keys an export needs, and the officer, authenticated with password and TOTP.
struct Exporter {
    ledger: crate::ledger::Ledger,
    keys: ExportKeys,
    officer: crate::compliance::officers::Officer,
    now: i64,
}

struct ExportKeys {
    master: crate::store::keys::MasterKey,
    keyring: crate::store::keys::Keyring,
    signer: ring::signature::Ed25519KeyPair,
}

impl ExportKeys {
    fn installation<'a>(
        &'a self,
        config: &'a Config,
    ) -> crate::compliance::disclosure::Installation<'a> {
        crate::compliance::disclosure::Installation {
            store: &config.store,
            keyring: &self.keyring,
            master: &self.master,
            signer: &self.signer,
        }
    }
}

impl Exporter {
    fn login(
        config: &Config,
        officer: &str,
        totp: &str,
        action: &str,
        role: crate::compliance::officers::Role,
    ) -> Result<Exporter> {
        use crate::compliance::officers::Credentials;
        let mut ledger = crate::ledger::Ledger::open(&config.store.ledger)?;
        let now = SystemClock.now_micros();
        let master = crate::store::keys::MasterKey::load(&config.store.master_key)?;
        let password = read_secret_line("password")?;
        let who = Credentials {
            name: officer,
            password: &password,
            totp: Some(totp),
        };
        let officer = ledger.authenticate(&master, who, role, now, action)?;
        Ok(Exporter {
            ledger,
            keys: ExportKeys {
                master,
                keyring: crate::store::open_keyring(&config.store)?,
                signer: crate::store::integrity::load_signing_key(&config.store.signing_key)?,
            },
            officer,
            now,
        })
    }
}

fn subject_export(config: &Config, args: &SubjectExportArgs) -> Result<()> {
    use crate::compliance::cases::{IdentifierKind, criterion};
    let numbers = NumberNormalizer::new(config.store.default_region);
    let subject = match (&args.recipient, &args.email) {
        (Some(n), _) => criterion(IdentifierKind::Recipient, n, &numbers)?,
        (_, Some(e)) => criterion(IdentifierKind::Email, e, &numbers)?,
        _ => bail!("give --recipient or --email"),
    };
    let mut x = Exporter::login(
        config,
        &args.officer,
        &args.totp,
        "subject.export",
        crate::compliance::officers::Role::Officer,
    )?;
    let inst = x.keys.installation(config);
    let d = crate::compliance::disclosure::subject_export(
        &inst,
        &mut x.ledger,
        &x.officer,
        &subject,
        config.store.retention,
        &args.out,
        x.now,
    )?;
    println!(
        "{} records to {}\nmanifest {} (sha256 of the export {})",
        d.records,
        d.export.display(),
        d.manifest.display(),
        d.sha256
    );
    Ok(())
}

fn offboard(
    config: &Config,
    name: &str,
    out: &std::path::Path,
    officer: &str,
    totp: &str,
) -> Result<()> {
    let mut x = Exporter::login(
        config,
        officer,
        totp,
        "account.offboard",
        crate::compliance::officers::Role::Admin,
    )?;
    let inst = x.keys.installation(config);
    let o = crate::compliance::offboard::offboard(
        &inst,
        &mut x.ledger,
        &x.officer,
        name,
        crate::compliance::offboard::Out {
            dir: out,
            stem: None,
        },
        x.now,
    )?;
    println!(
        "account {name}: {} records and {} outcome events exported to {} and erased from {} partition(s)\ndeletion statement {}",
        o.records,
        o.outcomes,
        o.export.display(),
        o.partitions.len(),
        o.statement.display()
    );
    Ok(())
}

fn disclose(config: &Config, args: &DiscloseArgs) -> Result<()> {
    let mut x = Exporter::login(
        config,
        &args.officer,
        &args.totp,
        "case.disclose",
        crate::compliance::officers::Role::Officer,
    )?;
    let inst = x.keys.installation(config);
    let d = crate::compliance::disclosure::disclose(
        &inst,
        &mut x.ledger,
        &x.officer,
        args.case,
        args.format,
        &args.out,
        x.now,
    )?;
    println!(
        "case {}: {} records to {}\nmanifest {} (sha256 of the export {})",
        args.case,
        d.records,
        d.export.display(),
        d.manifest.display(),
        d.sha256
    );
    Ok(())
}

fn verify_export(manifest: &std::path::Path, public_key: &std::path::Path) -> Result<()> {
    let key = crate::store::integrity::read_public_key(public_key)?;
    let m = crate::compliance::disclosure::verify_export(manifest, &key)?;
    println!(
        "export verified: case {} ({}), {} records, sha256 {}",
        m.case, m.request, m.records, m.export_sha256
    );
    Ok(())
}

fn audit(config: &Config, command: &AuditCommand) -> Result<()> {
    let ledger = crate::ledger::Ledger::open(&config.store.ledger)?;
    match command {
        AuditCommand::List { json } => {
            for e in ledger.entries()? {
                if *json {
                    let details: serde_json::Value =
                        serde_json::from_str(&e.details).unwrap_or(serde_json::Value::Null);
                    println!(
                        "{}",
                        serde_json::json!({"seq": e.seq, "at": rfc3339(e.at), "actor": e.actor, "action": e.action, "details": details})
                    );
                } else {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        e.seq,
                        rfc3339(e.at),
                        e.actor,
                        e.action,
                        e.details
                    );
                }
            }
        }
        AuditCommand::Verify => {
            let n = ledger.verify_audit()?;
            println!("audit log intact: {n} entries");
        }
    }
    Ok(())
}

fn hold(config: &Config, command: &HoldCommand) -> Result<()> {
    let mut ledger = crate::ledger::Ledger::open(&config.store.ledger)?;
    match command {
        HoldCommand::Add {
            case,
            since,
            until,
            reason,
        } => {
            let hold = crate::ledger::Hold {
                case: case.clone(),
                since: parse_time(since, false)?.timestamp_micros(),
                until: parse_time(until, true)?.timestamp_micros(),
                reason: reason.clone(),
                placed_at: SystemClock.now_micros(),
                placed_by: actor(),
            };
            ledger.add_hold(&hold)?;
            println!("hold placed for case {case}");
        }
        HoldCommand::List => {
            for h in ledger.holds()? {
                println!(
                    "{}\t{} .. {}\tby {} at {}\t{}",
                    h.case,
                    rfc3339(h.since),
                    rfc3339(h.until),
                    h.placed_by,
                    rfc3339(h.placed_at),
                    h.reason
                );
            }
        }
        HoldCommand::Release { case } => {
            let n = ledger.release(case, SystemClock.now_micros(), &actor())?;
            println!(
                "released {n} hold(s) of case {case}; the next expiry removes what is past retention"
            );
        }
    }
    Ok(())
}

/// Parses `--since`/`--until` (see [`crate::clock::parse_time`]).
pub fn parse_time(s: &str, end_of_day: bool) -> Result<DateTime<Utc>> {
    Ok(crate::clock::parse_time(s, end_of_day)?)
}

fn run_query(config: &Config, args: &QueryArgs) -> Result<()> {
    let since = match &args.since {
        Some(s) => parse_time(s, false)?.timestamp_micros(),
        None => 0,
    };
    let until = match &args.until {
        Some(s) => parse_time(s, true)?.timestamp_micros(),
        None => SystemClock.now_micros() + 86_400_000_000,
    };
    // The same canonical forms, and the same refusals, as a case's identifiers.
    use crate::compliance::cases::{IdentifierKind, criterion};
    use crate::compliance::lookup::{self, Window};
    let numbers = NumberNormalizer::new(config.store.default_region);
    let ip = args.ip.map(|ip| ip.to_string());
    let (kind, raw) = match (&args.recipient, &args.account, &ip, &args.originator) {
        (Some(r), ..) => (IdentifierKind::Recipient, r),
        (_, Some(a), ..) => (IdentifierKind::Account, a),
        (_, _, Some(ip), _) => (IdentifierKind::Ip, ip),
        (.., Some(o)) => (IdentifierKind::Originator, o),
        _ => bail!("give one of --recipient, --account, --ip, --originator"),
    };
    let criterion = criterion(kind, raw, &numbers)?;
    let keyring = crate::store::open_keyring(&config.store)?;
    let master = keys::MasterKey::load(&config.store.master_key)?;
    let mut ledger = crate::ledger::Ledger::open(&config.store.ledger)?;
    let window = Window {
        since,
        until,
        limit: args.limit,
    };
    let lookup::Lookup { found, stats } = lookup::audited(
        &config.store,
        &keyring,
        &master,
        &mut ledger,
        &actor(),
        &criterion,
        &window,
        SystemClock.now_micros(),
    )
    .map_err(|e| match e {
        lookup::LookupError::EmptyWindow => anyhow::anyhow!("--until must be after --since"),
        e => e.into(),
    })?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.format == OutputFormat::Csv {
        writeln!(out, "{}", CSV_HEADER.join(","))?;
    }
    for f in &found {
        match args.format {
            OutputFormat::Json => writeln!(out, "{}", found_json(f))?,
            OutputFormat::Csv => writeln!(out, "{}", found_csv(f))?,
        }
    }
    out.flush()?;
    if stats.matches > found.len() as u64 {
        eprintln!(
            "warning: {} records matched; the first {} are shown (--limit)",
            stats.matches,
            found.len()
        );
    }
    for p in &stats.partitions_shredded {
        eprintln!(
            "warning: partition {p} is in the window but its keys are shredded: its records cannot be read"
        );
    }
    eprintln!(
        "{} record(s) from {} partition(s)",
        stats.matches, stats.partitions_searched
    );
    Ok(())
}
