//! Commands on the store: `query`, `verify`, `expire`, `hold`.

use super::*;

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
pub enum BackupCommand {
    /// Write a sealed archive of the partitions, the ledger and the wrapped keyring
    /// (while `serve` runs); readable until expiry shreds its key, `backup.retention`
    /// from now.
    Create {
        #[arg(long)]
        out: PathBuf,
    },
    /// Each backup made, with its shred date.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into a new directory (`store/`, `keyring/`, `ledger.sqlite`),
    /// as of today's retention, once every partition in it verifies.
    Restore {
        file: PathBuf,
        #[arg(long)]
        into: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum HoldCommand {
    /// Place a hold on the partitions overlapping a window (an officer's login).
    Add {
        #[command(flatten)]
        login: Login,
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
    /// List the holds in force (an officer's login).
    List {
        #[command(flatten)]
        login: Login,
    },
    /// Release every hold of a case (an officer's login).
    Release {
        #[arg(long)]
        case: String,
        #[command(flatten)]
        login: Login,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("identifier").required(true).args(["recipient", "account", "ip", "originator", "email"])))]
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
    /// An originator: sender number, alphanumeric sender id, or a mail's envelope
    /// sender (an address with `@`).
    #[arg(long)]
    pub originator: Option<String>,
    /// A mail recipient's address (the domain may be given in Unicode or IDNA form).
    #[arg(long)]
    pub email: Option<String>,
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
    /// Why the records are read: lawful-request, subject-access, contract-end,
    /// security-incident or operations (there is none for marketing or analytics).
    #[arg(long, value_enum)]
    pub purpose: crate::compliance::purpose::Purpose,
    #[command(flatten)]
    pub login: Login,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    Csv,
}

pub(super) fn verify(config: &Config, since: Option<&str>, until: Option<&str>) -> Result<()> {
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
    // The keyring is optional here on SQLite: verify needs only the public key (a
    // machine that checks a copy may have no keys). Key directories others may write
    // to are not, and on PostgreSQL it is needed: its master key authenticates the
    // nodes' keys the database holds.
    let on_postgres = matches!(config.store.backend, crate::config::Backend::Postgres(_));
    let keyring = match crate::store::open_keyring(&config.store) {
        Ok(k) => Some(k),
        Err(e @ keys::KeyError::DirectoryWritable { .. }) => return Err(e.into()),
        Err(e) if on_postgres => {
            return Err(anyhow::Error::new(e).context(
                "verify on PostgreSQL needs the master key (it authenticates the nodes' keys)",
            ));
        }
        Err(e) => {
            tracing::info!(error = %e, "verifying without the keyring: checks that need the partitions' keys are skipped");
            None
        }
    };
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
        // On PostgreSQL each node's tree of the partition: `2026-12-05/node-a`.
        let tree = match &r.node {
            Some(node) => format!("{}/{node}", r.partition),
            None => r.partition.to_string(),
        };
        if v.damage.is_empty() {
            println!("{tree}  ok  {counts}");
        } else {
            bad += 1;
            for d in &v.damage {
                println!("{tree}  DAMAGED  {d}");
            }
        }
        if r.keys_missing {
            bad += 1;
            println!(
                "{tree}  KEYS MISSING  values unreadable; hashes and signatures checked ({counts})"
            );
        }
        // The read-optimised index and filter of a compacted partition (SQLite) are
        // derived from its records: checked against them.
        let Some(keyring) = keyring.as_ref().filter(|_| r.node.is_none()) else {
            continue;
        };
        match keyring.keys(r.partition) {
            Ok(keys) => {
                let path = r.partition.path_in(&config.store.path);
                match crate::store::compact::check(&path, &keys) {
                    Ok(problems) if !problems.is_empty() => {
                        bad += 1;
                        for p in problems {
                            println!("{}  INDEX DAMAGED  {p}", r.partition);
                        }
                        println!(
                            "{}  (remove its -filter file: serve's next compaction rebuilds both)",
                            r.partition
                        );
                    }
                    Ok(_) => {}
                    Err(e) => {
                        bad += 1;
                        println!("{}  INDEX UNREADABLE  {e}", r.partition);
                    }
                }
            }
            // Said above.
            Err(crate::store::keys::KeyError::Shredded { .. }) => {}
            Err(e) => {
                bad += 1;
                println!("{}  INDEX NOT CHECKED  {e}", r.partition);
            }
        }
    }
    bad += account_retention(config, keyring.as_ref(), since, until)?;
    let trees = match reports.iter().filter(|r| r.node.is_some()).count() {
        0 => format!("{} partition(s)", reports.len()),
        n => format!("{n} node tree(s) of partitions"),
    };
    println!("{trees} verified, {bad} problem(s)");
    if bad > 0 {
        bail!("integrity check failed for {bad} partition(s)");
    }
    Ok(())
}

/// `verify`'s account of every partition in the window, from the first on record:
/// present (checked above), removed under a valid deletion certificate, or never made.
/// Prints removals and problems; returns how many problems.
fn account_retention(
    config: &Config,
    keyring: Option<&keys::Keyring>,
    since: i64,
    until: i64,
) -> Result<usize> {
    use crate::store::deletion;
    if matches!(config.store.backend, crate::config::Backend::Sqlite)
        && !config.store.ledger.exists()
    {
        // A copy of the store checked without its ledger (the signed trees need only
        // the public key): what was removed, and why, is the ledger's to say.
        println!(
            "retention: not accounted for: no ledger at {} (removed partitions cannot be told from lost ones without it)",
            config.store.ledger.display()
        );
        return Ok(0);
    }
    let ledger = crate::ledger::Ledger::open_store(&config.store)?;
    let mut bad = 0;
    // The register is read from the audit log: an entry taken out breaks the chain.
    if let Err(e) = ledger.verify_audit() {
        bad += 1;
        println!("retention  AUDIT LOG BROKEN  {e}");
    }
    let keys = deletion::trusted_keys(&config.store, keyring)?;
    let a = deletion::account_store(&config.store, &ledger, &keys, since, until)?;
    for (p, c) in &a.removed {
        let unreadable = c
            .unreadable
            .as_deref()
            .map(|why| format!("; its file was unreadable: {why}"))
            .unwrap_or_default();
        println!(
            "{p}  removed  deletion certificate ok ({} records, {} outcomes; keys shredded {}{unreadable})",
            c.records, c.outcomes, c.shredded_at
        );
    }
    for p in &a.left_out {
        println!("{p}  left out  by the restore that made this store (past retention then)");
    }
    for (p, problem) in &a.problems {
        bad += 1;
        println!("{p}  DAMAGED  {problem}");
    }
    match a.first {
        Some(first) => println!(
            "retention: every partition from {first} accounted for: {} present, {} removed under certificates, {} left out at restore, {} never made (no records), {} problem(s)",
            a.present.len(),
            a.removed.len(),
            a.left_out.len(),
            a.never,
            a.problems.len()
        ),
        None => println!("retention: no partition on record"),
    }
    Ok(bad)
}

pub(super) fn expire(config: &Config, args: &ExpireArgs) -> Result<()> {
    use crate::store::expiry;
    let now = match &args.now {
        Some(t) => parse_time(t, false)?,
        None => SystemClock.now(),
    };
    let keyring = crate::store::open_keyring(&config.store)?;
    let mut ledger = crate::ledger::Ledger::open_store(&config.store)?;
    // A dry run changes nothing, the audit log's register included.
    // Neither step is a reason to keep partitions past retention: a failure is said,
    // expiry goes on, and the command fails at its end.
    let mut unfinished = None;
    if !args.dry_run {
        match ledger.shred_backups(config.backup.retention, now, &actor()) {
            Ok(ids) => {
                for id in ids {
                    println!("backup {id}: key shredded, no copy of it can be read");
                }
            }
            Err(e) => {
                eprintln!("warning: backups' keys not shredded: {e}");
                unfinished = Some(e.to_string());
            }
        }
        match crate::store::deletion::register(
            &config.store,
            &mut ledger,
            &actor(),
            now.timestamp_micros(),
        ) {
            Ok(named) if !named.is_empty() => {
                println!(
                    "{} partition(s) named in the audit log's register",
                    named.len()
                )
            }
            Ok(_) => {}
            Err(e) => eprintln!("warning: partitions not named in the audit log's register: {e}"),
        }
    }
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
        println!("removed  {p} ({records} records), keys shredded, deletion certificate filed");
    }
    if let Some(e) = unfinished {
        bail!("expiry done, but backups due were not shredded: {e}");
    }
    Ok(())
}

pub(super) fn hold(config: &Config, command: &HoldCommand) -> Result<()> {
    use crate::compliance::officers::Role;
    let mut ledger = crate::ledger::Ledger::open_store(&config.store)?;
    match command {
        HoldCommand::Add {
            login: l,
            case,
            since,
            until,
            reason,
        } => {
            let who = login(config, &mut ledger, l, Role::Officer, "hold.add")?;
            let hold = crate::ledger::Hold {
                case: case.clone(),
                since: parse_time(since, false)?.timestamp_micros(),
                until: parse_time(until, true)?.timestamp_micros(),
                reason: reason.clone(),
                placed_at: SystemClock.now_micros(),
                placed_by: who,
            };
            ledger.add_hold(&hold)?;
            println!("hold placed for case {case}");
        }
        HoldCommand::List { login: l } => {
            login_and_audit(config, &mut ledger, l, Role::Officer, "hold.list")?;
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
        HoldCommand::Release { case, login: l } => {
            let who = login(config, &mut ledger, l, Role::Officer, "hold.release")?;
            let n = ledger.release(case, SystemClock.now_micros(), &who)?;
            println!(
                "released {n} hold(s) of case {case}; the next expiry removes what is past retention"
            );
        }
    }
    Ok(())
}

pub(super) fn run_query(config: &Config, args: &QueryArgs) -> Result<()> {
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
    let given = [
        (IdentifierKind::Recipient, args.recipient.as_ref()),
        (IdentifierKind::Account, args.account.as_ref()),
        (IdentifierKind::Ip, ip.as_ref()),
        (IdentifierKind::Originator, args.originator.as_ref()),
        (IdentifierKind::Email, args.email.as_ref()),
    ];
    // The argument group admits exactly one.
    let Some((kind, raw)) = given.into_iter().find_map(|(k, v)| Some((k, v?))) else {
        bail!("give one of --recipient, --account, --ip, --originator, --email");
    };
    let criterion = criterion(kind, raw, &numbers)?;
    let mut ledger = crate::ledger::Ledger::open_store(&config.store)?;
    let who = login(
        config,
        &mut ledger,
        &args.login,
        crate::compliance::officers::Role::Officer,
        "query",
    )?;
    let keyring = crate::store::open_keyring(&config.store)?;
    let master = keys::MasterKey::load(&config.store.master_key)?;
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
        &who,
        args.purpose,
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
    for p in stats.filters_damaged.iter().chain(&stats.filters_stale) {
        eprintln!(
            "warning: partition {p}: its filter does not check out or does not cover its records; searched without it (run `relaylog verify`)"
        );
    }
    for p in &stats.filters_unreadable {
        eprintln!(
            "warning: partition {p}: its filter cannot be read (see the log); searched without it"
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

pub(super) fn backup(config: &Config, command: &BackupCommand) -> Result<()> {
    use crate::store::backup;
    let mut ledger = crate::ledger::Ledger::open_store(&config.store)?;
    let now = SystemClock.now();
    match command {
        BackupCommand::Create { out } => {
            let master = keys::MasterKey::load(&config.store.master_key)?;
            let made = backup::create(
                &config.store,
                config.backup.retention,
                &mut ledger,
                &master,
                out,
                &actor(),
                now,
            )?;
            println!(
                "backup {} written to {}: {} partition(s) ({} left out: past retention or expiring), {} bytes, sha256 {}; its key is shredded on {}",
                made.id,
                out.display(),
                made.partitions,
                made.left_out,
                made.bytes,
                made.sha256,
                made.shred_at.format("%Y-%m-%d")
            );
            for p in &made.damaged {
                eprintln!(
                    "warning: partition {p} is not in the backup: within retention but without its keys, or gone (run `relaylog verify`)"
                );
            }
        }
        BackupCommand::List { json } => {
            let backups = ledger.backups()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&backups)?);
            } else {
                for b in &backups {
                    let state = match &b.shredded_at {
                        Some(at) => format!("shredded {at}"),
                        None => format!("readable until {}", b.shred_at),
                    };
                    println!(
                        "{}  made {}  {} partition(s) {}..{}  {}",
                        b.id,
                        b.created_at,
                        b.partitions,
                        b.oldest.as_deref().unwrap_or("-"),
                        b.newest.as_deref().unwrap_or("-"),
                        state
                    );
                }
                if backups.is_empty() {
                    println!("no backups made");
                }
            }
        }
        BackupCommand::Restore { file, into } => {
            let master = keys::MasterKey::load(&config.store.master_key)?;
            let public_key = crate::store::integrity::load_public_key(&config.store.signing_key)?;
            let restored = backup::restore(
                &config.store,
                config.backup.retention,
                &mut ledger,
                &master,
                &public_key,
                file,
                into,
                &actor(),
                now,
            )?;
            for p in &restored.left_out {
                println!("not restored  {p} (past retention, held by nothing), nor its keys");
            }
            if restored.offboarded_since > 0 {
                eprintln!(
                    "warning: {} offboarding(s) since the backup was made (see `audit list`): those accounts' records are back in the restored store; offboard them again there before it serves",
                    restored.offboarded_since
                );
            }
            let d = into.display();
            println!(
                "backup {} restored into {d}: {} partition(s), every one verified. Point a configuration at it:\n  \
                 [store]\n  path = \"{d}/store\"\n  keyring = \"{d}/keyring\"\n  ledger = \"{d}/ledger.sqlite\"\n  \
                 (master-key and signing-key: this installation's)",
                restored.id,
                restored.partitions.len()
            );
        }
    }
    Ok(())
}
