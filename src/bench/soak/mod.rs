//! `relaylog bench soak`: relaylog (`serve`, as a child process) under HTTP, SMTP and
//! SMPP traffic for a set time while faults come one after another: its upstreams
//! restarted and stalled, its store's disk filled and freed, the store's directories
//! made read-only and back, SIGTERM and restart, `kill -9` and restart. At the end it
//! checks that every message an upstream accepted, and every message a client was told
//! was accepted, has its record in the store (none forwarded unrecorded), and reports
//! relaylog's RSS and open files over time (they must stay flat).
//!
//! Run as root it puts the store on a tmpfs of its own (so that it can fill it) and
//! runs relaylog as `nobody` (so that a read-only directory is one to it); otherwise
//! the disk-full fault is skipped, and said so.

mod clients;
mod upstream;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use clients::{Load, Tally};
use upstream::Upstreams;

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakArgs {
    pub duration: Duration,
    /// A fault this often (the first after half of it).
    pub fault_every: Duration,
    /// Messages a second: HTTP, SMTP, SMPP.
    pub rates: [f64; 3],
    /// Where the store, keys and logs go (a new directory under the system's temporary
    /// one when not given); removed at the end unless `keep`.
    pub dir: Option<PathBuf>,
    pub keep: bool,
    /// Fail unless every kind of fault could be injected (CI, which runs as root).
    pub all_faults: bool,
    /// The store's tmpfs, when run as root.
    pub disk_mib: u64,
}

/// The faults, in the order they come round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    UpstreamRestart,
    UpstreamStall,
    DiskFull,
    ReadOnly,
    Sigterm,
    Kill9,
}

const FAULTS: [Fault; 6] = [
    Fault::UpstreamRestart,
    Fault::UpstreamStall,
    Fault::DiskFull,
    Fault::ReadOnly,
    Fault::Sigterm,
    Fault::Kill9,
];

/// How long the upstreams stay down, stall, the disk stays full, the directories read-only.
const FAULT_HOLD: Duration = Duration::from_secs(3);

/// A sample of relaylog's process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the soak started.
    pub at: f64,
    /// Which run of relaylog (1 = the first; each restart adds one).
    pub incarnation: u32,
    /// Seconds since this run started.
    pub age: f64,
    pub rss_kib: u64,
    pub fds: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProtocolCounts {
    pub sent: u64,
    pub acked: u64,
    pub refused: u64,
    pub broken_connections: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub seconds: f64,
    pub http: ProtocolCounts,
    pub smtp: ProtocolCounts,
    pub smpp: ProtocolCounts,
    /// Each fault injected, with when (seconds into the soak).
    pub faults: Vec<(f64, Fault)>,
    /// Faults that could not be injected here, and why.
    pub skipped: Vec<(Fault, String)>,
    pub upstream_accepted: usize,
    pub recorded: usize,
    /// Accepted by an upstream, not in the store: forwarded unrecorded. Must be 0.
    pub lost: usize,
    /// Acknowledged to a client, not in the store. Must be 0.
    pub acked_unrecorded: usize,
    /// SIGTERMs after which relaylog did not exit cleanly (0).
    pub unclean_exits: u32,
    pub samples: Vec<Sample>,
}

impl SoakReport {
    fn steady(&self) -> impl Iterator<Item = &Sample> {
        // A run's first seconds are its start-up (caches filling, journal replay).
        self.samples.iter().filter(|s| s.age >= 10.0)
    }

    /// (first, last, max) RSS in KiB of the steady samples.
    pub fn rss(&self) -> (u64, u64, u64) {
        let first = self.steady().next().map_or(0, |s| s.rss_kib);
        let last = self.steady().last().map_or(0, |s| s.rss_kib);
        let max = self.steady().map(|s| s.rss_kib).max().unwrap_or(0);
        (first, last, max)
    }

    pub fn fds(&self) -> (u64, u64, u64) {
        let first = self.steady().next().map_or(0, |s| s.fds);
        let last = self.steady().last().map_or(0, |s| s.fds);
        let max = self.steady().map(|s| s.fds).max().unwrap_or(0);
        (first, last, max)
    }

    /// What is wrong with the run, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.lost > 0 {
            p.push(format!(
                "{} messages an upstream accepted have no record",
                self.lost
            ));
        }
        if self.acked_unrecorded > 0 {
            p.push(format!(
                "{} messages acknowledged to a client have no record",
                self.acked_unrecorded
            ));
        }
        if self.unclean_exits > 0 {
            p.push(format!(
                "{} SIGTERMs without a clean exit",
                self.unclean_exits
            ));
        }
        let acked = self.http.acked + self.smtp.acked + self.smpp.acked;
        if acked == 0 {
            p.push("no message was acknowledged: nothing was tested".into());
        }
        let (rss0, rss1, _) = self.rss();
        if rss1 > rss0 + rss0 / 2 + 16 * 1024 {
            p.push(format!(
                "RSS grew from {} to {} MiB",
                rss0 / 1024,
                rss1 / 1024
            ));
        }
        let (fd0, fd1, _) = self.fds();
        if fd1 > fd0 + 32 {
            p.push(format!("open files grew from {fd0} to {fd1}"));
        }
        p
    }

    pub fn print(&self) {
        let row = |name: &str, c: &ProtocolCounts| {
            println!(
                "  {name:<5} sent {:>8}  acked {:>8}  refused {:>6}  connections broken {:>5}",
                c.sent, c.acked, c.refused, c.broken_connections
            );
        };
        println!("soak: {:.0} s", self.seconds);
        row("http", &self.http);
        row("smtp", &self.smtp);
        row("smpp", &self.smpp);
        let mut kinds: Vec<(Fault, usize)> = Vec::new();
        for (_, f) in &self.faults {
            match kinds.iter_mut().find(|(k, _)| k == f) {
                Some((_, n)) => *n += 1,
                None => kinds.push((*f, 1)),
            }
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k:?} {n}")).collect();
        println!(
            "faults injected: {} ({})",
            self.faults.len(),
            kinds.join(", ")
        );
        for (f, why) in &self.skipped {
            println!("  skipped {f:?}: {why}");
        }
        println!(
            "upstreams accepted {}; in the store {}; accepted but not recorded {}; acknowledged but not recorded {}",
            self.upstream_accepted, self.recorded, self.lost, self.acked_unrecorded
        );
        let (r0, r1, rmax) = self.rss();
        let (f0, f1, fmax) = self.fds();
        println!(
            "relaylog RSS (MiB) start {:.1} end {:.1} max {:.1}; open files start {f0} end {f1} max {fmax}; runs {}",
            r0 as f64 / 1024.0,
            r1 as f64 / 1024.0,
            rmax as f64 / 1024.0,
            self.samples.last().map_or(0, |s| s.incarnation)
        );
    }
}

/// The relaylog under test: a child process, restarted by the faults.
struct Relay {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// Run as `nobody` (uid, gid) when the soak is root's.
    user: Option<(u32, u32)>,
    child: Child,
    started: Instant,
    incarnation: u32,
}

impl Relay {
    fn command(bin: &Path, config: &Path, log: &Path, user: Option<(u32, u32)>) -> Result<Command> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .context("cannot open the serve log")?;
        let mut c = Command::new(bin);
        c.arg("--config")
            .arg(config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_LOG", "warn");
        if let Some((uid, gid)) = user {
            c.uid(uid).gid(gid);
        }
        Ok(c)
    }

    fn start(&mut self) -> Result<()> {
        self.child = Self::command(&self.bin, &self.config, &self.log, self.user)?
            .arg("serve")
            .spawn()
            .context("cannot start relaylog serve")?;
        self.started = Instant::now();
        self.incarnation += 1;
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }

    /// Waits up to `limit` for the child to exit.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Ports free on loopback now.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    Ok(held
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?)
}

async fn wait_listening(addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("relaylog did not listen on {addr} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// (RSS in KiB, open files) of `pid`.
fn sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// Sets the mode of `dir` and every directory below it.
fn chmod_dirs(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chmod_dirs(&entry.path(), mode)?;
        }
    }
    Ok(())
}

/// Fills the filesystem under `path` with one file until no byte is left.
fn fill(path: &Path) -> std::io::Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => return Ok(written),
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(written),
            Err(e) => return Err(e),
        }
    }
}

pub fn soak(args: &SoakArgs) -> Result<SoakReport> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: &SoakArgs) -> Result<SoakReport> {
    let root = unsafe { libc::geteuid() } == 0;
    let made = args.dir.is_none();
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("relaylog-soak-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let store = dir.join("store");
    std::fs::create_dir_all(&store)?;
    let mut skipped = Vec::new();
    let mut mounted = false;
    // nobody: the user a read-only directory stops.
    let user = root.then_some((65534u32, 65534u32));
    if root {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!(
                "size={}m,mode=0700,uid=65534,gid=65534",
                args.disk_mib
            ))
            .arg("tmpfs")
            .arg(&store)
            .status();
        match status {
            Ok(s) if s.success() => mounted = true,
            other => skipped.push((
                Fault::DiskFull,
                format!("cannot mount a tmpfs for the store: {other:?}"),
            )),
        }
        let _ = Command::new("chown").arg("65534:65534").arg(&dir).status();
    } else {
        skipped.push((
            Fault::DiskFull,
            "needs root (the store goes on a tmpfs of its own to be filled)".into(),
        ));
    }
    if args.all_faults && !skipped.is_empty() {
        bail!("cannot inject every fault: {skipped:?}");
    }
    let result = soak_in(args, &dir, &store, user, mounted, skipped).await;
    if mounted {
        let _ = Command::new("umount").arg(&store).status();
    }
    if made && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("soak: files kept in {}", dir.display());
    }
    result
}

async fn soak_in(
    args: &SoakArgs,
    dir: &Path,
    store: &Path,
    user: Option<(u32, u32)>,
    mounted: bool,
    skipped: Vec<(Fault, String)>,
) -> Result<SoakReport> {
    let ports = free_ports(7)?;
    let at = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    let data = store.join("data");
    let d = dir.display();
    let config_text = format!(
        "[store]\npath = \"{}\"\nkeyring = \"{d}/keys/keyring\"\nmaster-key = \"{d}/keys/master.key\"\nsigning-key = \"{d}/keys/signing.key\"\nledger = \"{d}/ledger/ledger.sqlite\"\n\n\
         [[listener]]\nname = \"sms\"\nlisten = \"{}\"\nprofile = \"kannel\"\nupstream = \"http://{}\"\nupstream-timeout = \"2s\"\n\n\
         [[listener]]\nname = \"mail\"\nprotocol = \"smtp\"\nlisten = \"{}\"\nupstream = \"smtp://{}\"\nupstream-timeout = \"2s\"\n\n\
         [[listener]]\nname = \"smpp\"\nprotocol = \"smpp\"\nlisten = \"{}\"\nupstream = \"smpp://{}\"\nupstream-timeout = \"2s\"\n\n\
         [admin]\nlisten = \"{}\"\n\n[serve]\nshutdown-timeout = \"5s\"\n",
        data.display(),
        at(0),
        at(3),
        at(1),
        at(4),
        at(2),
        at(5),
        at(6),
    );
    let config_path = dir.join("soak.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = crate::config::Config::parse(&config_text, &config_path)?;
    // A copy of this binary that `nobody` can run, wherever the build is.
    let bin = dir.join("relaylog");
    std::fs::copy(std::env::current_exe()?, &bin).context("cannot copy relaylog")?;
    let log = dir.join("serve.log");
    let init = Relay::command(&bin, &config_path, &log, user)?
        .arg("init")
        .status()?;
    if !init.success() {
        bail!("relaylog init failed: see {}", log.display());
    }

    let mut upstreams = Upstreams::new(at(3), at(4), at(5));
    upstreams.start().await?;
    let mut relay = Relay {
        child: Command::new("true").spawn()?,
        bin,
        config: config_path,
        log,
        user,
        started: Instant::now(),
        incarnation: 0,
    };
    let _ = relay.child.wait();
    relay.start()?;
    wait_listening(at(0), Duration::from_secs(30)).await?;

    let begun = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = |i: usize, connections: usize, first: u64| Load {
        target: at(i),
        connections,
        rate: args.rates[i],
        tally: Arc::new(Tally::default()),
        stop: stop.clone(),
        next: Arc::new(AtomicU64::new(first)),
    };
    let (http, smtp, smpp) = (load(0, 4, 0), load(1, 2, 0), load(2, 2, 50_000_000));
    let tallies = [http.tally.clone(), smtp.tally.clone(), smpp.tally.clone()];
    let traffic = tokio::spawn(clients::run(http, smtp, smpp));

    // Samples once a second, of whichever run of relaylog is current.
    let current = Arc::new(std::sync::Mutex::new((
        relay.pid(),
        relay.incarnation,
        relay.started,
    )));
    let sampler = {
        let (current, stop) = (current.clone(), stop.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (pid, incarnation, started) =
                    *current.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((rss_kib, fds)) = sample(pid) {
                    samples.push(Sample {
                        at: begun.elapsed().as_secs_f64(),
                        incarnation,
                        age: started.elapsed().as_secs_f64(),
                        rss_kib,
                        fds,
                    });
                }
            }
            samples
        })
    };

    let mut faults = Vec::new();
    let mut unclean_exits = 0;
    let mut next_fault = begun + args.fault_every / 2;
    let end = begun + args.duration;
    let mut round = 0usize;
    while next_fault < end {
        tokio::time::sleep_until(next_fault.into()).await;
        let fault = FAULTS[round % FAULTS.len()];
        round += 1;
        next_fault += args.fault_every;
        if skipped.iter().any(|(f, _)| *f == fault) {
            continue;
        }
        let when = begun.elapsed().as_secs_f64();
        tracing::info!(?fault, at = when, "fault");
        match fault {
            Fault::UpstreamRestart => {
                upstreams.stop().await;
                tokio::time::sleep(FAULT_HOLD).await;
                upstreams.start().await?;
            }
            Fault::UpstreamStall => {
                upstreams.tap.stall(true);
                tokio::time::sleep(FAULT_HOLD).await;
                upstreams.tap.stall(false);
            }
            Fault::DiskFull => {
                debug_assert!(mounted);
                let ballast = store.join("ballast");
                let path = ballast.clone();
                tokio::task::spawn_blocking(move || fill(&path)).await??;
                tokio::time::sleep(FAULT_HOLD).await;
                std::fs::remove_file(&ballast)?;
            }
            Fault::ReadOnly => {
                chmod_dirs(&data, 0o500)?;
                tokio::time::sleep(FAULT_HOLD).await;
                chmod_dirs(&data, 0o700)?;
            }
            Fault::Sigterm | Fault::Kill9 => {
                relay.signal(if fault == Fault::Sigterm {
                    "TERM"
                } else {
                    "KILL"
                });
                let status = tokio::task::block_in_place(|| relay.wait(Duration::from_secs(20)));
                match status {
                    Some(s) if fault == Fault::Kill9 || s.success() => {}
                    other => {
                        tracing::error!(?other, "relaylog did not exit cleanly on SIGTERM");
                        unclean_exits += 1;
                        let _ = relay.child.kill();
                        let _ = relay.child.wait();
                    }
                }
                relay.start()?;
                *current.lock().unwrap_or_else(|p| p.into_inner()) =
                    (relay.pid(), relay.incarnation, relay.started);
                wait_listening(at(0), Duration::from_secs(30)).await?;
            }
        }
        faults.push((when, fault));
    }
    tokio::time::sleep_until(end.into()).await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(30), traffic).await;
    let samples = sampler.await.unwrap_or_default();
    let seconds = begun.elapsed().as_secs_f64();
    relay.signal("TERM");
    match tokio::task::block_in_place(|| relay.wait(Duration::from_secs(30))) {
        Some(s) if s.success() => {}
        other => {
            tracing::error!(?other, "relaylog did not exit cleanly at the end");
            unclean_exits += 1;
            let _ = relay.child.kill();
            let _ = relay.child.wait();
        }
    }
    upstreams.stop().await;

    let recorded = tokio::task::block_in_place(|| recorded(&config))?;
    let accepted = upstreams.tap.accepted();
    let mut acked = HashSet::new();
    for t in &tallies {
        acked.extend(t.acked_to());
    }
    let counts = |t: &Tally| ProtocolCounts {
        sent: t.sent.load(Ordering::Relaxed),
        acked: t.acked.load(Ordering::Relaxed),
        refused: t.refused.load(Ordering::Relaxed),
        broken_connections: t.broken.load(Ordering::Relaxed),
    };
    Ok(SoakReport {
        seconds,
        http: counts(&tallies[0]),
        smtp: counts(&tallies[1]),
        smpp: counts(&tallies[2]),
        faults,
        skipped,
        upstream_accepted: accepted.len(),
        recorded: recorded.len(),
        lost: accepted.difference(&recorded).count(),
        acked_unrecorded: acked.difference(&recorded).count(),
        unclean_exits,
        samples,
    })
}

/// The recipients of every record in the store (all of the soak's clients are
/// 127.0.0.1), after what the journal holds is taken in.
fn recorded(config: &crate::config::Config) -> Result<HashSet<String>> {
    use crate::store::query::{Criteria, run};
    crate::store::recover_journal(&config.store)?;
    let keyring = crate::store::open_keyring(&config.store)?;
    let criteria = Criteria {
        kind: crate::store::IndexKind::ClientIp,
        value: "127.0.0.1".into(),
        since: 0,
        until: i64::MAX / 2,
        filters: false,
    };
    let mut found = HashSet::new();
    run(&config.store.path, &keyring, &criteria, |f| {
        found.insert(f.fields.recipient.index_value().into_owned());
    })?;
    Ok(found)
}
