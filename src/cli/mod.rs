//! The command line: clap's definitions and the dispatch in [`run`]; the commands live by
//! family in `relay.rs` (init, check-config, serve, mock-gateway, bench), `store.rs`
//! (query, verify, expire, hold) and `compliance.rs` (officers, cases, disclosure,
//! subject export, offboarding, audit, report).
//! Errors here are `anyhow`; `main` prints them and exits non-zero.

mod compliance;
mod relay;
mod store;

pub use compliance::*;
pub use relay::*;
pub use store::*;

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
    /// Log format; overrides `[log] format`.
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
    /// Backups that expire: sealed archives whose keys expiry shreds after
    /// `backup.retention`.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Check an export's manifest signature and the export's digest. With
    /// --public-key, needs nothing else of the installation.
    VerifyExport {
        manifest: PathBuf,
        /// The installation's `signing.key.pub`; default: the configured one, and on
        /// PostgreSQL every other node's the master key authenticates (any node may
        /// have signed it).
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Check a signed retention report (`report retention --out FILE`, with FILE.sig
    /// beside it) and its deletion certificates with the public key(s) alone.
    VerifyRetention {
        report: PathBuf,
        /// `signing.key.pub` (on PostgreSQL, each node's: give it once per node).
        #[arg(long, required = true)]
        public_key: Vec<PathBuf>,
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

pub fn init_tracing(format: LogFormat, level: &str) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only on a terminal: a log file or journal must not get escape codes.
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let layer = match format {
        LogFormat::Json => layer.json().boxed(),
        LogFormat::Text => layer.boxed(),
    };
    // The level test in the closure too, and the hint: without them the filter below
    // would make every `debug!` in the program a call site checked at each run.
    let max = filter
        .max_level_hint()
        .unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    let quiet = tracing_subscriber::filter::filter_fn(move |m| {
        max >= *m.level() && quiet_enough(m.target(), *m.level())
    })
    .with_max_level_hint(max);
    tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(quiet))
        .init();
}

/// Whatever the level or `RUST_LOG` asks for, nothing below info from the PostgreSQL
/// client, which logs each statement's bound values at debug (sealed values, blind
/// indexes, officers' password hashes, case fields), nor from rustls (each
/// handshake's peer).
fn quiet_enough(target: &str, level: tracing::Level) -> bool {
    let chatty = ["tokio_postgres", "postgres", "rustls"].iter().any(|c| {
        target
            .strip_prefix(c)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    });
    !chatty || level <= tracing::Level::INFO
}

fn log_format(cli: &Cli, config: Option<&Config>) -> LogFormat {
    match cli.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => config.map_or(LogFormat::Text, |c| c.log.format),
    }
}

/// What turning transparent huge pages off gave: 0 not tried yet, 1 done, otherwise
/// the errno it failed with (negated).
static NO_HUGE_PAGES: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Turns transparent huge pages off for this process, before anything else runs (the
/// binary's `main`): with them each 2 MiB page of mimalloc's arena that is touched
/// becomes resident whole, which put `serve`'s peak under load at 98-109 MiB against
/// 57-58 without. Pages faulted in before it stay as they are. A refusal (an old
/// kernel, a seccomp filter) is logged by `serve` once logging is up.
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        let one: libc::c_ulong = 1;
        let zero: libc::c_ulong = 0;
        // SAFETY: PR_SET_THP_DISABLE reads no memory of ours (its arguments are
        // integers, passed as the unsigned longs the kernel reads); on error the
        // process keeps the system's setting.
        let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, one, zero, zero, zero) };
        let outcome = if done == 0 {
            1
        } else {
            // `last_os_error` right after a failed call always has an errno.
            -std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL)
        };
        NO_HUGE_PAGES.store(outcome, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Says, once logging is up, that huge pages could not be turned off.
fn report_huge_pages() {
    let outcome = NO_HUGE_PAGES.load(std::sync::atomic::Ordering::Relaxed);
    if outcome < 0 {
        tracing::warn!(
            error = %std::io::Error::from_raw_os_error(-outcome),
            "transparent huge pages could not be turned off: resident memory may be 40-50 MiB higher under load"
        );
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
        Command::VerifyRetention { report, public_key } => verify_retention(report, public_key),
        Command::Bench(
            b @ (BenchCommand::Http { .. }
            | BenchCommand::Smtp { .. }
            | BenchCommand::Smpp { .. }
            | BenchCommand::Passthrough { .. }
            | BenchCommand::Soak { .. }),
        ) => {
            init_tracing(log_format(&cli, None), "warn");
            let config = Config::parse("", &cli.config)?;
            bench(&config, b)
        }
        command => {
            let config = Config::load(&cli.config)?;
            init_tracing(log_format(&cli, Some(&config)), &config.log.level);
            // Commands that read or change the partitions first take in what a crash
            // left in the journal.
            if matches!(
                command,
                Command::Query(_)
                    | Command::Expire(_)
                    | Command::Disclose(_)
                    | Command::Account(_)
                    | Command::Subject(_)
            ) && crate::store::recover_journal(&config.store)
                .context("ingesting the journal a stopped relaylog left")?
            {
                tracing::info!("journal frames a stopped relaylog left were ingested");
            }
            match command {
                Command::Init => init(&config),
                Command::Serve => serve(config, &cli.config),
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
                    purpose,
                }) => offboard(&config, name, out, officer, totp, *purpose),
                Command::Report(ReportCommand::Cases { year, json }) => {
                    let mut ledger = crate::ledger::Ledger::open_store(&config.store)?;
                    let today = SystemClock.now().date_naive();
                    let report = crate::compliance::report::cases_in_year(&ledger, *year, today)?;
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
                Command::Report(ReportCommand::Retention { json, out }) => {
                    report_retention(&config, *json, out.as_deref())
                }
                Command::Subject(SubjectCommand::Export(a)) => subject_export(&config, a),
                Command::Subject(SubjectCommand::Request(r)) => subject_request(&config, r),
                Command::Backup(b) => backup(&config, b),
                Command::VerifyExport { manifest, .. } => {
                    verify_export_installed(&config, manifest)
                }
                Command::Bench(b) => bench(&config, b),
                Command::Verify { since, until } => {
                    verify(&config, since.as_deref(), until.as_deref())
                }
                Command::MockGateway(_) | Command::VerifyRetention { .. } => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

/// The multi-threaded runtime, with `workers` threads (tokio's default: one per core).
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Who is acting, for the audit log, where no officer logs in: the system user this
/// process runs as, by the account database (not `$USER`, which whoever runs it sets),
/// or its uid when the database has no name for it.
fn actor() -> String {
    let uid = {
        // SAFETY: getuid has no preconditions and cannot fail.
        unsafe { libc::getuid() }
    };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut entry = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to memory of ours, `buf` with its true length; on
    // success `found` points to `entry`, whose strings live in `buf`, read below
    // while both are alive.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            entry.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc == 0 && !found.is_null() {
        // SAFETY: found is non-null, so getpwuid_r filled `entry`; pw_name is a
        // NUL-terminated string in `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr((*found).pw_name) };
        if let Ok(name) = name.to_str()
            && !name.is_empty()
        {
            return name.to_owned();
        }
    }
    format!("uid {uid}")
}

/// The peer a login from the command line is counted against (see
/// `compliance::refusals`): the machine's user running it.
fn local_peer() -> String {
    format!("local:{}", actor())
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

/// Parses `--since`/`--until` (see [`crate::clock::parse_time`]).
pub fn parse_time(s: &str, end_of_day: bool) -> Result<DateTime<Utc>> {
    Ok(crate::clock::parse_time(s, end_of_day)?)
}

#[cfg(test)]
mod tests {
    use super::quiet_enough;
    use tracing::Level;

    /// The PostgreSQL client's statement log (bound values) stays out at any level.
    #[test]
    fn the_database_clients_debug_lines_never_pass() {
        for target in [
            "tokio_postgres::query",
            "tokio_postgres",
            "postgres::config",
            "rustls::client::hs",
        ] {
            assert!(!quiet_enough(target, Level::DEBUG), "{target}");
            assert!(!quiet_enough(target, Level::TRACE), "{target}");
            assert!(quiet_enough(target, Level::INFO), "{target}");
            assert!(quiet_enough(target, Level::WARN), "{target}");
        }
        assert!(quiet_enough("relaylog::serve", Level::DEBUG));
        assert!(quiet_enough("hyper::proto", Level::DEBUG));
    }
}
