//! `relaylog bench soak`: relaylog (`serve`, as a child process) under HTTP, SMTP and
//! SMPP traffic for a set time while faults come one after another: its upstreams
//! restarted and stalled, its store's disk filled and freed, the store's directories
//! made read-only and back, SIGTERM and restart, `kill -9` (with messages held by a
//! stalled upstream) and restart. Each fault is checked to have been felt (relaylog's
//! metrics moved: upstream errors, store errors, fail-closed answers, the journal
//! bypassed). At the end it checks that every message an upstream accepted, and every
//! one a client was told was accepted, has its record in the store (counted per
//! recipient: a message forwarded twice needs two records), that all three protocols
//! were served after the last fault, and that relaylog's RSS and open files stayed
//! flat within each run of it.
//!
//! Run as root it puts the store on a tmpfs of its own (so that it can fill it) and
//! runs relaylog as `nobody` (so that a read-only directory is one to it). Otherwise,
//! or when the tmpfs cannot be mounted, the disk-full fault is skipped, and said so.
//!
//! Its upstreams (`upstream.rs`) are its own rather than `crate::simulator`'s: they
//! note every recipient, stall and restart on command, which the simulators (the
//! default upstreams of `serve` and of the tests) have no need for.

mod clients;
mod upstream;

use std::collections::HashMap;
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

/// Messages per recipient, as the soak's clients (acknowledged) and upstreams
/// (accepted) count them, to be matched with the store's records.
#[derive(Default)]
pub(crate) struct PerRecipient(std::sync::Mutex<HashMap<String, u32>>);

impl PerRecipient {
    fn add(&self, recipient: String) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(recipient)
            .or_default() += 1;
    }

    /// The counts so far, leaving none behind (read once, at the end).
    fn take(&self) -> HashMap<String, u32> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakArgs {
    pub duration: Duration,
    /// A fault this often (the first after half of it).
    pub fault_every: Duration,
    /// Messages a second: HTTP, SMTP, SMPP.
    pub rates: [f64; 3],
    /// Where the store, keys and logs go. Default: a new directory under the system's
    /// temporary one, removed at the end unless `keep` (a given one is kept). As root
    /// it is handed to `nobody`, and the store's tmpfs is unmounted at the end (its
    /// files go with it).
    pub dir: Option<PathBuf>,
    pub keep: bool,
    /// The faults, in the order they come round (each kind once at most).
    pub faults: Vec<Fault>,
    /// Fail unless every kind of fault in `faults` was injected and felt (CI, which
    /// runs as root).
    pub all_faults: bool,
    /// The size of the store's tmpfs, when run as root: room for the run's records
    /// (about 30 MiB a minute at the default rates), which the disk-full fault fills.
    pub disk_mib: u64,
}

/// The faults, in the order they come round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    UpstreamRestart,
    UpstreamStall,
    DiskFull,
    ReadOnly,
    Sigterm,
    Kill9,
}

/// Every kind, in the order they come round by default.
pub const FAULTS: [Fault; 6] = [
    Fault::UpstreamRestart,
    Fault::UpstreamStall,
    Fault::DiskFull,
    Fault::ReadOnly,
    Fault::Sigterm,
    Fault::Kill9,
];

impl Fault {
    /// How long it lasts: the upstreams down or stalled past relaylog's
    /// upstream-timeout (2 s); the disk full and the directories read-only past a
    /// journal rotation (`store::journal::ROTATE_AFTER`).
    fn hold(self) -> Duration {
        match self {
            Fault::UpstreamRestart | Fault::UpstreamStall => Duration::from_secs(3),
            Fault::DiskFull | Fault::ReadOnly => {
                crate::store::journal::ROTATE_AFTER + Duration::from_secs(2)
            }
            // Messages held by the stalled upstream when the kill comes.
            Fault::Sigterm | Fault::Kill9 => Duration::from_secs(1),
        }
    }
}

/// A fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    /// Seconds into the soak.
    pub at: f64,
    pub fault: Fault,
    /// relaylog showed it: for the upstream faults its upstream errors grew, for the
    /// store's its store errors or fail-closed answers grew or it bypassed the journal;
    /// a stop it answered by exiting (cleanly for SIGTERM).
    pub felt: bool,
}

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
    /// Acknowledged after the last fault was over.
    pub acked_at_the_end: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub seconds: f64,
    pub http: ProtocolCounts,
    pub smtp: ProtocolCounts,
    pub smpp: ProtocolCounts,
    pub faults: Vec<Injected>,
    /// Faults that could not be injected here, and why.
    pub skipped: Vec<(Fault, String)>,
    /// The kinds that were to come round.
    pub kinds: Vec<Fault>,
    /// Whether every one of them must have been injected and felt.
    pub all_faults: bool,
    /// Messages the upstreams accepted (per recipient, summed).
    pub upstream_accepted: u64,
    /// Records in the store.
    pub recorded: u64,
    /// Accepted by an upstream more often than recorded: forwarded unrecorded. Must be 0.
    pub lost: u64,
    /// Acknowledged to a client more often than recorded. Must be 0.
    pub acked_unrecorded: u64,
    /// Partitions whose keys were gone when the soak read the store (0).
    pub unreadable_partitions: usize,
    /// SIGTERMs after which relaylog did not exit cleanly (0).
    pub unclean_exits: u32,
    pub samples: Vec<Sample>,
}

/// The traffic the soak lets run after its last fault, at least.
const TAIL: Duration = Duration::from_secs(10);

/// A run's samples from its 10th second: before, it is starting (caches filling, the
/// journal replayed).
const STEADY_AFTER: f64 = 10.0;

impl SoakReport {
    /// Each run of relaylog with steady samples: (incarnation, first, last).
    fn runs(&self) -> Vec<(u32, &Sample, &Sample)> {
        let mut runs: Vec<(u32, &Sample, &Sample)> = Vec::new();
        for s in self.samples.iter().filter(|s| s.age >= STEADY_AFTER) {
            match runs.last_mut() {
                Some((n, _, last)) if *n == s.incarnation => *last = s,
                _ => runs.push((s.incarnation, s, s)),
            }
        }
        runs
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
        if self.unreadable_partitions > 0 {
            p.push(format!(
                "{} partitions could not be read",
                self.unreadable_partitions
            ));
        }
        if self.unclean_exits > 0 {
            p.push(format!("{} stops without a clean exit", self.unclean_exits));
        }
        for (name, c) in [
            ("http", &self.http),
            ("smtp", &self.smtp),
            ("smpp", &self.smpp),
        ] {
            if c.acked_at_the_end == 0 {
                p.push(format!("{name}: nothing acknowledged after the last fault"));
            }
        }
        if self.all_faults {
            for &kind in &self.kinds {
                let felt = self.faults.iter().any(|f| f.fault == kind && f.felt);
                if !felt {
                    p.push(format!("{kind:?} was not injected, or not felt"));
                }
            }
        }
        let runs = self.runs();
        if runs.is_empty() {
            p.push("no steady sample of relaylog's RSS and open files".into());
        }
        for (n, first, last) in runs {
            if last.rss_kib > first.rss_kib + first.rss_kib / 2 + 16 * 1024 {
                p.push(format!(
                    "run {n}: RSS grew from {} to {} MiB",
                    first.rss_kib / 1024,
                    last.rss_kib / 1024
                ));
            }
            if last.fds > first.fds + 32 {
                p.push(format!(
                    "run {n}: open files grew from {} to {}",
                    first.fds, last.fds
                ));
            }
        }
        p
    }

    pub fn print(&self) {
        let row = |name: &str, c: &ProtocolCounts| {
            println!(
                "  {name:<5} sent {:>8}  acked {:>8} ({} after the last fault)  refused {:>6}  connections broken {:>5}",
                c.sent, c.acked, c.acked_at_the_end, c.refused, c.broken_connections
            );
        };
        println!("soak: {:.0} s", self.seconds);
        row("http", &self.http);
        row("smtp", &self.smtp);
        row("smpp", &self.smpp);
        let mut kinds: Vec<(Fault, usize, usize)> = Vec::new();
        for f in &self.faults {
            match kinds.iter_mut().find(|(k, _, _)| *k == f.fault) {
                Some((_, n, felt)) => {
                    *n += 1;
                    *felt += f.felt as usize;
                }
                None => kinds.push((f.fault, 1, f.felt as usize)),
            }
        }
        let kinds: Vec<String> = kinds
            .iter()
            .map(|(k, n, felt)| format!("{k:?} {n} ({felt} felt)"))
            .collect();
        println!(
            "faults injected: {} ({})",
            self.faults.len(),
            kinds.join(", ")
        );
        for (f, why) in &self.skipped {
            println!("  skipped {f:?}: {why}");
        }
        println!(
            "upstreams accepted {} messages; records in the store {}; accepted but not recorded {}; acknowledged but not recorded {}",
            self.upstream_accepted, self.recorded, self.lost, self.acked_unrecorded
        );
        let runs = self.runs();
        let mib = |k: u64| k as f64 / 1024.0;
        if let (Some(first), Some(last)) = (runs.first(), runs.last()) {
            let max_rss = runs.iter().map(|r| r.2.rss_kib).max().unwrap_or(0);
            let max_fds = runs.iter().map(|r| r.2.fds).max().unwrap_or(0);
            println!(
                "relaylog, {} runs: RSS (MiB) first run {:.1} → {:.1}, last run {:.1} → {:.1}, highest {:.1}; open files first run {} → {}, last run {} → {}, highest {}",
                runs.len(),
                mib(first.1.rss_kib),
                mib(first.2.rss_kib),
                mib(last.1.rss_kib),
                mib(last.2.rss_kib),
                mib(max_rss),
                first.1.fds,
                first.2.fds,
                last.1.fds,
                last.2.fds,
                max_fds
            );
        }
    }
}

/// The relaylog under test: a child process, killed if the soak ends early.
struct Relay {
    child: Child,
    started: Instant,
    incarnation: u32,
}

/// How to start relaylog.
struct Launch {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// Run as `nobody` (uid, gid) when the soak is root's.
    user: Option<(u32, u32)>,
}

impl Launch {
    fn command(&self, what: &str) -> Result<Command> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("cannot open the serve log")?;
        let mut c = Command::new(&self.bin);
        c.arg("--config")
            .arg(&self.config)
            .arg(what)
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_LOG", "warn");
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        // SAFETY: prctl only, between fork and exec (after the switch to `nobody`,
        // which would clear it before): relaylog dies with the soak, however the soak
        // ends (CI's timeout, a kill).
        unsafe {
            c.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(c)
    }

    fn serve(&self, incarnation: u32) -> Result<Relay> {
        let child = self
            .command("serve")?
            .spawn()
            .context("cannot start relaylog serve")?;
        Ok(Relay {
            child,
            started: Instant::now(),
            incarnation,
        })
    }
}

impl Relay {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, sig);
        }
    }

    /// Waits up to `limit` for the child to exit.
    async fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops it with `sig` and waits: whether it exited cleanly (a SIGKILL's death
    /// counts as clean). Killed outright when it does not exit in 20 s.
    async fn stop(&mut self, sig: libc::c_int) -> bool {
        self.signal(sig);
        match self.wait(Duration::from_secs(20)).await {
            Some(s) => sig == libc::SIGKILL || s.success(),
            None => {
                tracing::error!("relaylog did not exit within 20 s");
                let _ = self.child.kill();
                let _ = self.child.wait();
                false
            }
        }
    }
}

/// A soak that ends early (an error) leaves no relaylog behind.
impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
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

/// What a fault shows in relaylog's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Signs {
    upstream_errors: u64,
    store_errors: u64,
    fail_closed: u64,
    bypassed: bool,
}

impl Signs {
    /// From the admin listener's `/metrics`; `None` when it cannot be read.
    async fn read(admin: SocketAddr) -> Option<Signs> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
            .await
            .ok()?
            .ok()?;
        let sum = |prefix: &str, reasons: &[&str]| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter(|l| {
                    reasons.is_empty()
                        || reasons
                            .iter()
                            .any(|r| l.contains(&format!("reason=\"{r}\"")))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        Some(Signs {
            upstream_errors: sum("relaylog_upstream_errors_total{", &[]),
            store_errors: sum("relaylog_store_errors_total ", &[]),
            // What the disk says, not what load alone can cause (a full queue, a slow
            // commit).
            fail_closed: sum(
                "relaylog_fail_closed_total{",
                &["disk_full", "read_only", "io", "cannot_open"],
            ),
            bypassed: sum("relaylog_journal_bypassed ", &[]) > 0,
        })
    }
}

/// Watches relaylog's metrics, from `before` (read before the fault began) until
/// `stop`: whether `fault` showed.
async fn watch_signs(
    admin: SocketAddr,
    before: Option<Signs>,
    fault: Fault,
    stop: Arc<AtomicBool>,
) -> bool {
    let Some(before) = before else {
        return false;
    };
    let mut felt = false;
    loop {
        if let Some(now) = Signs::read(admin).await {
            felt |= match fault {
                Fault::UpstreamRestart | Fault::UpstreamStall => {
                    now.upstream_errors > before.upstream_errors
                }
                _ => {
                    now.store_errors > before.store_errors
                        || now.fail_closed > before.fail_closed
                        || (now.bypassed && !before.bypassed)
                }
            };
        }
        if felt || stop.load(Ordering::Relaxed) {
            return felt;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

/// A new directory of the soak's own (not one that was there: root chowns it).
fn new_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let nonce = ring::rand::generate::<[u8; 8]>(&ring::rand::SystemRandom::new())
            .map(|r| u64::from_le_bytes(r.expose()))
            .unwrap_or(attempt as u64);
        let dir = base.join(format!("relaylog-soak-{nonce:016x}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).context("cannot create the soak's directory"),
        }
    }
    bail!("cannot create a new directory under {}", base.display())
}

async fn run(args: &SoakArgs) -> Result<SoakReport> {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => new_dir()?,
    };
    let store = dir.join("store");
    let mut skipped = Vec::new();
    let mut mounted = false;
    // nobody: the user a read-only directory stops.
    let user = root.then_some((65534u32, 65534u32));
    let result = async {
        std::fs::create_dir_all(&store)?;
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
            for path in [&dir, &store] {
                let chown = Command::new("chown")
                    .arg("65534:65534")
                    .arg(path)
                    .status()?;
                if !chown.success() {
                    bail!("cannot give {} to nobody", path.display());
                }
            }
        } else {
            skipped.push((
                Fault::DiskFull,
                "needs root (the store goes on a tmpfs of its own to be filled)".into(),
            ));
        }
        if args.all_faults && skipped.iter().any(|(f, _)| args.faults.contains(f)) {
            bail!("cannot inject every fault: {skipped:?}");
        }
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        );
        // Stopped early, it still unmounts and removes what it made (relaylog goes
        // with the soak's guard).
        tokio::select! {
            report = soak_in(args, &dir, &store, user, skipped) => report,
            _ = term.recv() => bail!("stopped by SIGTERM"),
            _ = int.recv() => bail!("stopped by SIGINT"),
        }
    }
    .await;
    if mounted {
        let umount = Command::new("umount").arg(&store).status();
        if !matches!(umount, Ok(s) if s.success()) {
            eprintln!(
                "soak: cannot unmount {} ({umount:?}); left as it is",
                store.display()
            );
            return result;
        }
    }
    if args.dir.is_none() && !args.keep {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("soak: cannot remove {}: {e}", dir.display());
        }
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
    skipped: Vec<(Fault, String)>,
) -> Result<SoakReport> {
    let ports = free_ports(7)?;
    let at = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    let admin = at(6);
    let data = store.join("data");
    let d = dir.display();
    let config_text = format!(
        "[store]\npath = \"{}\"\nkeyring = \"{d}/keys/keyring\"\nmaster-key = \"{d}/keys/master.key\"\nsigning-key = \"{d}/keys/signing.key\"\nledger = \"{d}/ledger/ledger.sqlite\"\n\n\
         [[listener]]\nname = \"sms\"\nlisten = \"{}\"\nprofile = \"kannel\"\nupstream = \"http://{}\"\nupstream-timeout = \"2s\"\n\n\
         [[listener]]\nname = \"mail\"\nprotocol = \"smtp\"\nlisten = \"{}\"\nupstream = \"smtp://{}\"\nupstream-timeout = \"2s\"\n\n\
         [[listener]]\nname = \"smpp\"\nprotocol = \"smpp\"\nlisten = \"{}\"\nupstream = \"smpp://{}\"\nupstream-timeout = \"2s\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n[serve]\nshutdown-timeout = \"5s\"\n",
        data.display(),
        at(0),
        at(3),
        at(1),
        at(4),
        at(2),
        at(5),
    );
    let config_path = dir.join("soak.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = crate::config::Config::parse(&config_text, &config_path)?;
    // A copy of this binary that `nobody` can run, wherever the build is.
    let bin = dir.join("relaylog");
    std::fs::copy(std::env::current_exe()?, &bin).context("cannot copy relaylog")?;
    let launch = Launch {
        bin,
        config: config_path,
        log: dir.join("serve.log"),
        user,
    };
    if !launch.command("init")?.status()?.success() {
        bail!("relaylog init failed: see {}", launch.log.display());
    }

    let mut upstreams = Upstreams::new(at(3), at(4), at(5));
    upstreams.start().await?;
    let mut relay = launch.serve(1)?;
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
    // HTTP's numbers from 0, SMPP's from 50,000,000: both +316…, never the same.
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
    let mut acked_before_the_end = [0u64; 3];
    if args.faults.is_empty() {
        bail!("no fault to inject");
    }
    for fault in args.faults.iter().cycle().copied() {
        if next_fault >= end {
            break;
        }
        tokio::time::sleep_until(next_fault.into()).await;
        next_fault += args.fault_every;
        if skipped.iter().any(|(f, _)| *f == fault) {
            continue;
        }
        let when = begun.elapsed().as_secs_f64();
        let watching = Arc::new(AtomicBool::new(false));
        let before = Signs::read(admin).await;
        let signs = tokio::spawn(watch_signs(admin, before, fault, watching.clone()));
        let mut felt = match fault {
            Fault::UpstreamRestart => {
                upstreams.stop().await;
                tokio::time::sleep(fault.hold()).await;
                upstreams.start().await?;
                false
            }
            Fault::UpstreamStall => {
                upstreams.tap.stall(true);
                tokio::time::sleep(fault.hold()).await;
                upstreams.tap.stall(false);
                false
            }
            Fault::DiskFull => {
                let ballast = store.join("ballast");
                let path = ballast.clone();
                let filled = tokio::task::spawn_blocking(move || fill(&path)).await?;
                tokio::time::sleep(fault.hold()).await;
                let freed = std::fs::remove_file(&ballast);
                filled?;
                freed?;
                false
            }
            Fault::ReadOnly => {
                chmod_dirs(&data, 0o500)?;
                tokio::time::sleep(fault.hold()).await;
                chmod_dirs(&data, 0o700)?;
                false
            }
            Fault::Sigterm | Fault::Kill9 => {
                // The kill comes with messages held by a stalled upstream: whatever
                // it accepts of them after the stall must have been recorded first.
                let kill = fault == Fault::Kill9;
                if kill {
                    upstreams.tap.stall(true);
                    tokio::time::sleep(fault.hold()).await;
                }
                let clean = relay
                    .stop(if kill { libc::SIGKILL } else { libc::SIGTERM })
                    .await;
                upstreams.tap.stall(false);
                if !clean {
                    tracing::error!(?fault, "relaylog did not exit cleanly");
                    unclean_exits += 1;
                }
                relay = launch.serve(relay.incarnation + 1)?;
                *current.lock().unwrap_or_else(|p| p.into_inner()) =
                    (relay.pid(), relay.incarnation, relay.started);
                wait_listening(at(0), Duration::from_secs(30)).await?;
                clean
            }
        };
        for (before, t) in acked_before_the_end.iter_mut().zip(&tallies) {
            *before = t.acked.load(Ordering::Relaxed);
        }
        // Signs that come a moment after the fault count.
        tokio::time::sleep(Duration::from_secs(2)).await;
        watching.store(true, Ordering::Relaxed);
        if matches!(fault, Fault::Sigterm | Fault::Kill9) {
            signs.abort();
        } else {
            felt = signs.await.unwrap_or(false);
        }
        eprintln!(
            "soak: {when:.0} s: {fault:?}, {}",
            if felt { "felt" } else { "NOT felt" }
        );
        faults.push(Injected {
            at: when,
            fault,
            felt,
        });
    }
    // Traffic after the last fault: at least TAIL of it, past `end` if need be.
    tokio::time::sleep_until(end.max(Instant::now() + TAIL).into()).await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(30), traffic).await;
    let samples = sampler.await.unwrap_or_default();
    let seconds = begun.elapsed().as_secs_f64();
    if !relay.stop(libc::SIGTERM).await {
        tracing::error!("relaylog did not exit cleanly at the end");
        unclean_exits += 1;
    }
    upstreams.stop().await;

    let (recorded, unreadable_partitions) = recorded(&config)?;
    let accepted = upstreams.tap.accepted.take();
    let short = |counts: &HashMap<String, u32>| -> u64 {
        counts
            .iter()
            .map(|(to, n)| n.saturating_sub(recorded.get(to).copied().unwrap_or(0)) as u64)
            .sum()
    };
    let mut acked: HashMap<String, u32> = HashMap::new();
    for t in &tallies {
        for (to, n) in t.acked_to.take() {
            *acked.entry(to).or_default() += n;
        }
    }
    let counts = |i: usize| {
        let t = &tallies[i];
        let acked = t.acked.load(Ordering::Relaxed);
        ProtocolCounts {
            sent: t.sent.load(Ordering::Relaxed),
            acked,
            refused: t.refused.load(Ordering::Relaxed),
            broken_connections: t.broken.load(Ordering::Relaxed),
            acked_at_the_end: acked.saturating_sub(acked_before_the_end[i]),
        }
    };
    Ok(SoakReport {
        seconds,
        http: counts(0),
        smtp: counts(1),
        smpp: counts(2),
        faults,
        skipped,
        kinds: args.faults.clone(),
        all_faults: args.all_faults,
        upstream_accepted: accepted.values().map(|&n| n as u64).sum(),
        recorded: recorded.values().map(|&n| n as u64).sum(),
        lost: short(&accepted),
        acked_unrecorded: short(&acked),
        unreadable_partitions,
        unclean_exits,
        samples,
    })
}

/// How many records each recipient has in the store (all of the soak's clients are
/// 127.0.0.1), once what the journal holds is in the partitions; and how many
/// partitions could not be read.
fn recorded(config: &crate::config::Config) -> Result<(HashMap<String, u32>, usize)> {
    use crate::store::query::{Criteria, run};
    // serve's clean stop leaves nothing in the journal; a kill -9's it took in at
    // its next start. Whatever is there goes in before the count.
    crate::store::recover_journal(&config.store)?;
    let keyring = crate::store::open_keyring(&config.store)?;
    let criteria = Criteria {
        kind: crate::store::IndexKind::ClientIp,
        value: "127.0.0.1".into(),
        since: 0,
        until: i64::MAX / 2,
        filters: false,
    };
    let mut found: HashMap<String, u32> = HashMap::new();
    let stats = run(&config.store, &keyring, &criteria, |f| {
        *found
            .entry(f.fields.recipient.index_value().into_owned())
            .or_default() += 1;
    })?;
    Ok((found, stats.partitions_shredded.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lost: u64, unclean: u32, rss: [u64; 2], fds: [u64; 2]) -> SoakReport {
        let counts = ProtocolCounts {
            sent: 10,
            acked: 10,
            refused: 0,
            broken_connections: 0,
            acked_at_the_end: 3,
        };
        let sample = |at: f64, rss_kib: u64, fds: u64| Sample {
            at,
            incarnation: 1,
            age: at,
            rss_kib,
            fds,
        };
        SoakReport {
            seconds: 60.0,
            http: counts.clone(),
            smtp: counts.clone(),
            smpp: counts,
            faults: FAULTS
                .iter()
                .map(|&fault| Injected {
                    at: 1.0,
                    fault,
                    felt: true,
                })
                .collect(),
            skipped: vec![],
            kinds: FAULTS.to_vec(),
            all_faults: true,
            upstream_accepted: 30,
            recorded: 30 - lost,
            lost,
            acked_unrecorded: lost,
            unreadable_partitions: 0,
            unclean_exits: unclean,
            // The start-up sample (age 5) is not a steady one.
            samples: vec![
                sample(5.0, 1, 1),
                sample(10.0, rss[0], fds[0]),
                sample(50.0, rss[1], fds[1]),
            ],
        }
    }

    #[test]
    fn a_soak_fails_on_a_lost_record_an_unclean_exit_growth_or_a_fault_not_felt() {
        let fine = || report(0, 0, [40_000, 44_000], [45, 47]);
        assert_eq!(fine().problems(), Vec::<String>::new());
        let problems = |r: SoakReport| r.problems().join("; ");
        assert!(problems(report(1, 0, [40_000, 40_000], [45, 45])).contains("upstream accepted"));
        assert!(problems(report(0, 1, [40_000, 40_000], [45, 45])).contains("clean exit"));
        assert!(problems(report(0, 0, [40_000, 90_000], [45, 45])).contains("RSS grew"));
        assert!(problems(report(0, 0, [40_000, 40_000], [45, 90])).contains("open files"));
        let mut r = fine();
        r.faults[2].felt = false;
        assert!(problems(r).contains("DiskFull was not injected, or not felt"));
        let mut r = fine();
        r.smtp.acked_at_the_end = 0;
        assert!(problems(r).contains("smtp: nothing acknowledged after the last fault"));
        let mut r = fine();
        r.samples.truncate(1);
        assert!(problems(r).contains("no steady sample"));
    }
}
