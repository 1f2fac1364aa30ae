//! The writer: one thread that owns every partition connection, fed by a bounded queue.
//!
//! It takes the first job, drains whatever else is already queued up to `batch-max`
//! records, writes the lot in one transaction per partition (group commit), then
//! answers every waiting submission. A failed commit answers each of its waiters with
//! the error and drops the connection, so the next batch reopens the partition: the
//! store recovers by itself when the fault goes away.
//!
//! The blind indexes are written late and sorted, a slice at a time: in transactions of
//! their own whenever the queue is empty, and as a share of each commit when it never
//! is (see [`super::index`]). Once the queue has been idle for [`IDLE_FLUSH`], the
//! entries not yet due are written too; all of them when the writer stops.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::index::{BlindIndex, Budget};
use super::partition::PartitionId;
use super::schema;
use crate::config::SyncMode;
use crate::metrics::Metrics;

pub use super::rows::{OutcomeRow, Row};

/// Why a batch could not be committed, typed so that a full disk, a lock held too long
/// and a damaged file are told apart (metrics label, log line, client reply). The
/// messages are SQLite's or the OS's, which never contain a bound value. Clone: one
/// failed commit answers every submission in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("SQLite: {message}")]
    Sqlite {
        code: rusqlite::ErrorCode,
        /// SQLite's extended result code (0 when the failure was not SQLite's own).
        extended: i32,
        message: String,
    },
    #[error("{path}: {message}")]
    Io {
        path: PathBuf,
        kind: std::io::ErrorKind,
        message: String,
    },
    #[error("{0} vanished after opening")]
    Vanished(PathBuf),
    /// A partition's ids are near the end of their range: only rows put there from
    /// outside the writer can do that.
    #[error("partition ids exhausted (rows from outside the writer?)")]
    IdsExhausted,
}

impl WriteError {
    /// A short, fixed label for metrics, log lines and the client's reply.
    pub fn reason(&self) -> &'static str {
        use rusqlite::ErrorCode as C;
        use std::io::ErrorKind as K;
        match self {
            WriteError::Sqlite { code, .. } => match code {
                C::DiskFull => "disk_full",
                C::DatabaseBusy | C::DatabaseLocked => "busy",
                C::DatabaseCorrupt | C::NotADatabase => "corrupt",
                C::ReadOnly | C::PermissionDenied => "read_only",
                C::CannotOpen => "cannot_open",
                C::SystemIoFailure => "io",
                _ => "sqlite",
            },
            WriteError::Io { kind, .. } => match kind {
                K::StorageFull | K::QuotaExceeded => "disk_full",
                K::PermissionDenied | K::ReadOnlyFilesystem => "read_only",
                K::NotFound | K::NotADirectory | K::AlreadyExists => "cannot_open",
                _ => "io",
            },
            WriteError::Vanished(_) => "cannot_open",
            WriteError::IdsExhausted => "corrupt",
        }
    }
}

/// Who waits for a job's commit.
pub enum Done {
    /// One waiter (a barrier).
    One(oneshot::Sender<Result<(), WriteError>>),
    /// Every submission of a batch gathered on one thread (see [`super::batch`]).
    Many(tokio::sync::watch::Sender<super::batch::Answer>),
}

impl Done {
    /// Answers; a waiter that gave up (timeout, client gone) is no one's concern.
    fn send(self, result: Result<(), WriteError>) {
        match self {
            Done::One(tx) => {
                let _ = tx.send(result);
            }
            Done::Many(tx) => {
                tx.send_replace(Some(result.map_err(super::batch::BatchError::Write)));
            }
        }
    }
}

pub enum Job {
    Records {
        partition: PartitionId,
        rows: Vec<Row>,
        done: Option<Done>,
    },
    /// An outcome event: no one waits for its commit (a failed one is tried again).
    Outcome {
        partition: PartitionId,
        row: OutcomeRow,
    },
    /// Answered once everything queued before it is committed.
    Barrier(oneshot::Sender<Result<(), WriteError>>),
    /// Commit what is queued before it, then stop.
    Stop,
    /// Sent by the ticker every [`super::integrity::HEAD_INTERVAL`]: time-based duties
    /// (sign heads, write the index entries not yet due when idle) without a timed
    /// wait on the queue.
    Tick,
}

impl Job {
    fn rows(&self) -> usize {
        match self {
            Job::Records { rows, .. } => rows.len(),
            Job::Tick => 0,
            _ => 1,
        }
    }
}

pub struct WriterConfig {
    pub store_dir: PathBuf,
    pub sync: SyncMode,
    pub cache_mib: u32,
    pub batch_max: usize,
    pub queue_capacity: usize,
    /// Shared with the recorder: how many durable submissions are being gathered into
    /// a batch not yet queued, and a way to cut short the writer's wait for more work.
    pub signals: Arc<Signals>,
    /// Rows between requests to the checkpointer ([`CHECKPOINT_ROWS`]).
    pub checkpoint_rows: u64,
    /// Signs each commit's Merkle head. `None` only in benchmarks that measure the
    /// writer without integrity.
    pub signer: Option<Arc<ring::signature::Ed25519KeyPair>>,
    /// The store's clock: head timestamps are its time, like everything else stored.
    pub clock: crate::clock::SharedClock,
}

/// Longest wait for sibling submissions before a commit that clients wait on.
pub const SIBLING_DELAY: Duration = Duration::from_micros(200);

/// Longest wait before committing a batch no one waits on (outcomes, async records).
pub const ASYNC_DELAY: Duration = Duration::from_millis(2);

/// Write the index entries not yet due (their bucket still open, fewer than
/// `index::FLUSH_ROWS`) when no job has arrived for this long.
pub const IDLE_FLUSH: Duration = Duration::from_secs(1);

/// Ask the checkpointer to copy a partition's WAL into its file after this many rows.
pub const CHECKPOINT_ROWS: u64 = 32_768;

/// What the recorder and the writer share besides the queue.
///
/// The writer lingers for more work by sleeping, not by waiting on the queue: a thread
/// waiting on the queue is woken by every job, and at 40,000 jobs/s those wake-ups
/// cost more than the commits. A durable batch queued while the writer lingers wakes
/// it with [`Signals::durable_queued`].
#[derive(Default)]
pub struct Signals {
    /// Durable submissions sealed and gathered on a runtime thread whose batch is not
    /// queued yet (see [`super::batch`]).
    pub waiting: AtomicUsize,
    /// The writer is sleeping on a batch, lingering for more.
    lingering: AtomicBool,
    /// The writer waits on an empty queue with heads to sign or index entries to
    /// write: the ticker wakes it. Ticks go only to an idle writer, so they never take
    /// queue space a submission is waiting for.
    idle_with_duties: AtomicBool,
    writer: OnceLock<std::thread::Thread>,
}

impl Signals {
    /// Called after a durable batch (or a barrier) is queued.
    pub fn durable_queued(&self) {
        // SeqCst pairs with the writer's store before it drains the queue: either it
        // sees this job when it drains, or this sees it lingering. A missed wake-up
        // would cost at most ASYNC_DELAY.
        if self.lingering.load(Ordering::SeqCst)
            && let Some(t) = self.writer.get()
        {
            t.unpark();
        }
    }
}

struct OpenPartition {
    /// The file's path, made once: formatting it per commit cost allocations.
    path: PathBuf,
    conn: Connection,
    index: BlindIndex,
    tree: super::integrity::TreeState,
    /// (device, inode) of the file when opened: if the path stops naming this file
    /// (deleted, replaced), writing on would put records where no one can find them.
    identity: (u64, u64),
    last_used: u64,
    /// Rows committed since the checkpointer was last asked to copy this WAL.
    since_checkpoint: u64,
    /// The highest record and outcome ids this partition has ever held; the next
    /// rows get the ids after them (see `schema::INSERT_RECORD`). Advanced only when a
    /// commit succeeds: a failed one drops the partition, and the reopen derives them
    /// again from the file.
    last_record: i64,
    last_outcome: i64,
}

impl OpenPartition {
    /// Counts rows written (records, outcomes, posting rows) and asks the checkpointer
    /// to copy the WAL once [`CHECKPOINT_ROWS`] have been.
    fn wrote(
        &mut self,
        rows: u64,
        checkpointer: Option<&std::sync::mpsc::SyncSender<PathBuf>>,
        checkpoint_rows: u64,
    ) {
        self.since_checkpoint += rows;
        if self.since_checkpoint >= checkpoint_rows
            && let Some(c) = checkpointer
            // A busy checkpointer (queue full) is asked again after the next rows.
            && c.try_send(self.path.clone()).is_ok()
        {
            self.since_checkpoint = 0;
        }
    }
}

/// Most partitions the writer keeps open; traffic normally touches one, two around
/// midnight (late outcomes of yesterday's submissions).
const MAX_OPEN: usize = 4;

struct Writer {
    cfg: WriterConfig,
    open: HashMap<PartitionId, OpenPartition>,
    metrics: Arc<Metrics>,
    tick: u64,
    /// When the last job other than a tick arrived.
    last_job: Instant,
    checkpointer: Option<std::sync::mpsc::SyncSender<PathBuf>>,
    /// Jobs no one waits on (outcome events, async records) whose commit failed: tried
    /// again with the next batch, so that a passing fault (a full disk, a lock held too
    /// long) does not lose a forwarded message's outcome. At most [`MAX_RETRY_ROWS`].
    retry: Vec<Job>,
    /// Scratch of [`Writer::commit`], kept between commits (an allocation each less):
    /// each partition's job indexes, and each job's result.
    groups: Vec<(PartitionId, Vec<usize>)>,
    results: Vec<Result<(), WriteError>>,
}

/// Most rows kept for another try after failed commits; past it the oldest are
/// dropped, each drop logged and counted as a store error.
pub const MAX_RETRY_ROWS: usize = 65_536;

pub fn spawn(
    cfg: WriterConfig,
    metrics: Arc<Metrics>,
) -> std::io::Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let checkpointer = spawn_checkpointer(metrics.clone())?;
    let signals = cfg.signals.clone();
    let writer = Writer {
        cfg,
        open: HashMap::new(),
        metrics,
        tick: 0,
        last_job: Instant::now(),
        checkpointer: Some(checkpointer),
        retry: Vec::new(),
        groups: Vec::new(),
        results: Vec::new(),
    };
    let handle = std::thread::Builder::new()
        .name("relaylog-writer".into())
        .spawn(move || writer.run(rx))?;
    let _ = signals.writer.set(handle.thread().clone());
    spawn_ticker(tx.downgrade(), signals)?;
    Ok((tx, handle))
}

/// Sends [`Job::Tick`] every head interval until the writer is gone. Holds only a
/// weak sender, so the queue still closes when the last recorder goes.
fn spawn_ticker(tx: mpsc::WeakSender<Job>, signals: Arc<Signals>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("relaylog-ticker".into())
        .spawn(move || {
            loop {
                std::thread::sleep(super::integrity::HEAD_INTERVAL);
                let Some(tx) = tx.upgrade() else { return };
                if !signals.idle_with_duties.load(Ordering::Relaxed) {
                    continue;
                }
                // A full queue means the writer is busy and will sign as it commits.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Job::Tick) {
                    return;
                }
            }
        })?;
    Ok(())
}

/// Copies partitions' WALs into their files on a connection of its own, so the writer
/// does not stop for a whole checkpoint: inline, a 32 MiB checkpoint held every client
/// waiting on a commit for ~100 ms. The writer's own automatic checkpoint stays on, at
/// a larger interval, as the backstop.
fn spawn_checkpointer(
    metrics: Arc<Metrics>,
) -> std::io::Result<std::sync::mpsc::SyncSender<PathBuf>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<PathBuf>(4);
    std::thread::Builder::new()
        .name("relaylog-checkpoint".into())
        .spawn(move || {
            let mut conns: Vec<(PathBuf, Connection)> = Vec::new();
            while let Ok(path) = rx.recv() {
                let conn = match conns.iter().position(|(p, _)| *p == path) {
                    Some(i) => &conns[i].1,
                    None => match schema::open_for_checkpoint(&path) {
                        Ok(c) => {
                            if conns.len() >= MAX_OPEN {
                                conns.remove(0);
                            }
                            conns.push((path.clone(), c));
                            &conns[conns.len() - 1].1
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "checkpoint connection failed");
                            continue;
                        }
                    },
                };
                match checkpoint(conn) {
                    Ok(true) => {}
                    Ok(false) => {
                        metrics.checkpoints_kept_out.inc();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "checkpoint failed; the writer's automatic checkpoint remains");
                        conns.retain(|(p, _)| *p != path);
                    }
                }
            }
        })?;
    Ok(tx)
}

/// Copies a partition's WAL into its file and starts the WAL again from its beginning;
/// false when a RESTART could not get in (tried again after the next rows).
///
/// Two PASSIVE passes copy beside the writer: the bulk, then what the writer appended
/// during the bulk. The RESTART that follows holds the writer back while it waits for
/// a commit to end and for readers to leave the WAL (at most
/// `schema::CHECKPOINT_BUSY_TIMEOUT`), then while it copies the little that is left and
/// syncs the file; the writer's next commit then starts the WAL from its beginning. A
/// RESTART kept out answers a row saying so (`busy` = 1), not an error.
fn checkpoint(conn: &Connection) -> rusqlite::Result<bool> {
    for _ in 0..2 {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    }
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get(0))?;
    Ok(busy == 0)
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs: Vec<Job> = Vec::with_capacity(1024);
        let mut stop = false;
        while !stop {
            // A gap in the work: write index slices until a job arrives.
            if rx.is_empty() && self.open.values().any(|p| p.index.busy()) {
                self.index_gap(&rx);
                continue;
            }
            let duties = !self.retry.is_empty()
                || self
                    .open
                    .values()
                    .any(|p| p.tree.unsigned() > 0 || p.index.waiting() > 0);
            self.cfg
                .signals
                .idle_with_duties
                .store(duties, Ordering::Relaxed);
            let next = rx.blocking_recv();
            self.cfg
                .signals
                .idle_with_duties
                .store(false, Ordering::Relaxed);
            let Some(first) = next else {
                break;
            };
            if matches!(first, Job::Tick) {
                self.on_tick(&rx);
                continue;
            }
            self.last_job = Instant::now();
            let started = Instant::now();
            let mut rows = first.rows();
            stop = matches!(first, Job::Stop);
            jobs.push(first);
            loop {
                while rows < self.cfg.batch_max && !stop {
                    match rx.try_recv() {
                        Ok(Job::Tick) => {}
                        Ok(job) => {
                            rows += job.rows();
                            stop = matches!(job, Job::Stop);
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
                // Group commit that groups: wait briefly for more when it pays (see
                // SIBLING_DELAY and ASYNC_DELAY); otherwise commit what is in hand.
                let Some(left) = self.linger(&jobs, rows, stop, started) else {
                    break;
                };
                // Sleep rather than wait on the queue (see Signals): the next durable
                // batch queued wakes the writer.
                self.cfg.signals.lingering.store(true, Ordering::SeqCst);
                // A durable job queued before the flag was up is seen here.
                if rx.is_empty() {
                    std::thread::park_timeout(left);
                }
                self.cfg.signals.lingering.store(false, Ordering::SeqCst);
            }
            self.metrics.queue_depth.set(rx.len() as i64);
            self.commit(&mut jobs);
        }
        if !self.retry.is_empty() {
            let rows: usize = self.retry.iter().map(Job::rows).sum();
            self.metrics.store_errors.inc();
            tracing::error!(
                rows,
                "stopping with failed commits: outcome events or async records lost"
            );
        }
        self.flush_all();
        // Close connections cleanly (checkpoints the WAL).
        self.open.clear();
    }

    /// Time-based duties: sign the heads of leaves written since the last head, and
    /// write the waiting index entries once the queue has been idle for
    /// [`IDLE_FLUSH`], a step per transaction until a job arrives.
    fn on_tick(&mut self, rx: &mpsc::Receiver<Job>) {
        if !self.retry.is_empty() {
            self.commit(&mut Vec::new());
        }
        let idle = self.last_job.elapsed();
        if idle >= IDLE_FLUSH {
            let left = |w: &Writer| -> usize {
                w.open
                    .values()
                    .map(|p| p.index.remaining() + p.tree.unsigned())
                    .sum()
            };
            // Each pass writes at least a slice of each partition with entries waiting
            // (or drops a partition that fails); one that changes nothing ends it.
            let mut before = left(self);
            while rx.is_empty() && before > 0 {
                self.seal_all(Some(Budget::Idle));
                let after = left(self);
                if after == before {
                    break;
                }
                before = after;
            }
        } else if idle >= super::integrity::HEAD_INTERVAL
            && self.open.values().any(|p| p.tree.unsigned() > 0)
        {
            self.seal_all(None);
        }
    }

    /// How much longer to wait for more jobs before committing, if at all.
    ///
    /// - A batch that someone waits on (durable submissions, a barrier) waits up to
    ///   [`SIBLING_DELAY`] while a runtime thread is gathering more durable
    ///   submissions (see [`super::batch`]): they are about to arrive, and one commit
    ///   for both is cheaper than one each (PostgreSQL's commit_delay/commit_siblings).
    ///   Otherwise, and always with a barrier, it commits at once.
    /// - A batch no one waits on (outcome events, async records) lingers up to
    ///   [`ASYNC_DELAY`] to ride along with the next one.
    ///
    /// Either wait ends early when a durable batch is queued ([`Signals::durable_queued`]).
    fn linger(&self, jobs: &[Job], rows: usize, stop: bool, started: Instant) -> Option<Duration> {
        if stop || rows >= self.cfg.batch_max {
            return None;
        }
        let waited_on = jobs
            .iter()
            .any(|j| matches!(j, Job::Records { done: Some(_), .. } | Job::Barrier(_)));
        let limit = if !waited_on {
            ASYNC_DELAY
        } else if jobs.iter().any(|j| matches!(j, Job::Barrier(_))) {
            return None;
        } else if self.cfg.signals.waiting.load(Ordering::Relaxed) > 0 {
            SIBLING_DELAY
        } else {
            return None;
        };
        limit
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
    }

    /// Signs every open partition's waiting leaves and writes all its waiting index
    /// entries, one transaction each.
    fn flush_all(&mut self) {
        self.seal_all(Some(Budget::All));
    }

    /// Signs every open partition's waiting leaves (and writes its waiting index
    /// entries as far as `index` allows), one transaction each.
    fn seal_all(&mut self, index: Option<Budget>) {
        let ids: Vec<PartitionId> = self
            .open
            .iter()
            .filter(|(_, p)| p.tree.unsigned() > 0 || (index.is_some() && p.index.waiting() > 0))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.maintain(id, true, index);
        }
    }

    /// A gap in the work: index slices of the partitions with a set to write, a
    /// transaction each of up to [`super::index::GAP_BUDGET`], until a job arrives.
    fn index_gap(&mut self, rx: &mpsc::Receiver<Job>) {
        let ids: Vec<PartitionId> = self
            .open
            .iter()
            .filter(|(_, p)| p.index.busy())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if !rx.is_empty() {
                return;
            }
            self.maintain(id, false, Some(Budget::Gap));
        }
    }

    /// One transaction on an open partition besides a batch: sign its waiting leaves
    /// (with `sign`) and write index entries as far as `index` allows. A failure drops
    /// the partition: the next job reopens it, and its index entries are rebuilt.
    ///
    /// With `sync = "full"`, an index-only transaction does not wait for an fsync:
    /// nothing in it needs to survive a power loss (the entries are rebuilt from the
    /// records), and the next full commit syncs the WAL up to and past it.
    fn maintain(&mut self, id: PartitionId, sign: bool, index: Option<Budget>) {
        let now = self.cfg.clock.now_micros();
        let (checkpointer, checkpoint_rows) = (self.checkpointer.clone(), self.cfg.checkpoint_rows);
        let full = self.cfg.sync == SyncMode::Full;
        let Some(open) = self.open.get_mut(&id) else {
            return;
        };
        // A head is signed only over leaves waiting; with none, nothing is.
        let signer = if sign && open.tree.unsigned() > 0 {
            self.cfg.signer.clone()
        } else {
            None
        };
        let relaxed = full && signer.is_none();
        if signer.is_none() && index.is_none() {
            return;
        }
        let result = (|| {
            if relaxed {
                open.conn.pragma_update(None, "synchronous", "NORMAL")?;
            }
            let tx = WriteTx::begin(&open.conn)?;
            if let Some(key) = &signer {
                open.tree.sign_head(&tx, key, id, now)?;
            }
            let postings = match index {
                Some(budget) => open.index.write(&tx, 0, budget)?,
                None => 0,
            };
            tx.commit()?;
            if relaxed {
                open.conn.pragma_update(None, "synchronous", "FULL")?;
            }
            open.wrote(postings as u64, checkpointer.as_ref(), checkpoint_rows);
            Ok(())
        })();
        if let Err(e) = result {
            self.metrics.store_errors.inc();
            let e = sql(e);
            tracing::error!(partition = %id, reason = e.reason(), error = %e, "signing or index write failed; partition will be reopened");
            self.open.remove(&id);
        }
    }

    fn commit(&mut self, jobs: &mut Vec<Job>) {
        let started = Instant::now();
        if !self.retry.is_empty() {
            let mut again = std::mem::take(&mut self.retry);
            again.append(jobs);
            *jobs = again;
        }
        // A barrier promises that what came before it is committed and signed.
        let barrier = jobs.iter().any(|j| matches!(j, Job::Barrier(_)));
        // Each partition's jobs, partitions in order (a batch rarely holds more than one).
        let mut by_partition = std::mem::take(&mut self.groups);
        by_partition.iter_mut().for_each(|(_, idx)| idx.clear());
        for (i, job) in jobs.iter().enumerate() {
            if let Job::Records { partition, .. } | Job::Outcome { partition, .. } = job {
                match by_partition.iter_mut().find(|(p, _)| p == partition) {
                    Some((_, idx)) => idx.push(i),
                    None => by_partition.push((*partition, vec![i])),
                }
            }
        }
        by_partition.retain(|(_, idx)| !idx.is_empty());
        by_partition.sort_unstable_by_key(|(p, _)| *p);
        let mut results = std::mem::take(&mut self.results);
        results.clear();
        results.resize(jobs.len(), Ok(()));
        let mut records = 0u64;
        for (partition, idx) in &by_partition {
            let result = self.write_partition(*partition, idx, jobs);
            match &result {
                Ok((r, o)) => {
                    records += r;
                    self.metrics.outcomes_written.inc_by(*o);
                }
                Err(e) => {
                    self.metrics.store_errors.inc();
                    tracing::error!(partition = %partition, reason = e.reason(), error = %e, "commit failed; records refused, partition will be reopened");
                    self.open.remove(partition);
                    for &i in idx {
                        let unwaited = matches!(
                            jobs[i],
                            Job::Records { done: None, .. } | Job::Outcome { .. }
                        );
                        if unwaited {
                            self.retry.push(std::mem::replace(&mut jobs[i], Job::Tick));
                        }
                    }
                }
            }
            for &i in idx {
                results[i] = result.clone().map(|_| ());
            }
        }
        let mut kept: usize = self.retry.iter().map(Job::rows).sum();
        while kept > MAX_RETRY_ROWS && !self.retry.is_empty() {
            let dropped = self.retry.remove(0);
            kept -= dropped.rows();
            self.metrics.store_errors.inc();
            tracing::error!(
                rows = dropped.rows(),
                "commits keep failing: rows kept for another try dropped (outcome events or async records lost)"
            );
        }
        if barrier {
            self.seal_all(None);
        }
        self.metrics.records_written.inc_by(records);
        self.metrics.batch_records.observe(records as f64);
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        for (job, result) in jobs.drain(..).zip(results.drain(..)) {
            let done = match job {
                Job::Records { done, .. } => done,
                Job::Barrier(done) => Some(Done::One(done)),
                Job::Outcome { .. } | Job::Stop | Job::Tick => None,
            };
            if let Some(done) = done {
                done.send(result);
            }
        }
        self.groups = by_partition;
        self.results = results;
    }

    fn write_partition(
        &mut self,
        partition: PartitionId,
        idx: &[usize],
        jobs: &[Job],
    ) -> Result<(u64, u64), WriteError> {
        let signer = self.cfg.signer.clone();
        let clock = self.cfg.clock.clone();
        let checkpointer = self.checkpointer.clone();
        let checkpoint_rows = self.cfg.checkpoint_rows;
        let open = self.connection(partition)?;
        let (conn, index, tree) = (&open.conn, &mut open.index, &mut open.tree);
        let tx = WriteTx::begin(conn).map_err(sql)?;
        let (mut records, mut outcomes) = (0u64, 0u64);
        // Far from i64::MAX in any store this writer wrote: a batch cannot overflow.
        const ID_LIMIT: i64 = i64::MAX / 2;
        if open.last_record > ID_LIMIT || open.last_outcome > ID_LIMIT {
            return Err(WriteError::IdsExhausted);
        }
        let (mut next_record, mut next_outcome) = (open.last_record + 1, open.last_outcome + 1);
        {
            // Records go in with multi-row INSERTs (fewer statement executions per row,
            // the writer's main cost), each with the id the writer gives it.
            let rows: Vec<&Row> = idx
                .iter()
                .filter_map(|&i| match &jobs[i] {
                    Job::Records { rows, .. } => Some(rows.iter()),
                    _ => None,
                })
                .flatten()
                .collect();
            for chunk in schema::power_of_two_runs(&rows) {
                let mut stmt = tx
                    .prepare_cached(schema::insert_many(schema::Batched::Record, chunk.len()))
                    .map_err(sql)?;
                for (k, r) in chunk.iter().enumerate() {
                    bind_record(
                        &mut stmt,
                        1 + k * schema::RECORD_COLUMNS,
                        next_record + k as i64,
                        r,
                    )
                    .map_err(sql)?;
                }
                stmt.raw_execute().map_err(sql)?;
                for r in chunk {
                    let id = next_record;
                    next_record += 1;
                    if signer.is_some() {
                        tree.push_record(id, r.leaf);
                    }
                    index.push(
                        id,
                        r.bucket,
                        [
                            Some(r.account_ix),
                            Some(r.ip_ix),
                            r.originator_ix,
                            Some(r.recipient_ix),
                        ],
                    );
                }
                records += chunk.len() as u64;
            }
            let events: Vec<&OutcomeRow> = idx
                .iter()
                .filter_map(|&i| match &jobs[i] {
                    Job::Outcome { row, .. } => Some(row),
                    _ => None,
                })
                .collect();
            for chunk in schema::power_of_two_runs(&events) {
                let mut stmt = tx
                    .prepare_cached(schema::insert_many(schema::Batched::Outcome, chunk.len()))
                    .map_err(sql)?;
                for (k, o) in chunk.iter().enumerate() {
                    let n = 1 + k * schema::OUTCOME_COLUMNS;
                    stmt.raw_bind_parameter(n, next_outcome + k as i64)
                        .map_err(sql)?;
                    stmt.raw_bind_parameter(n + 1, o.submission).map_err(sql)?;
                    stmt.raw_bind_parameter(n + 2, o.at_us).map_err(sql)?;
                    stmt.raw_bind_parameter(n + 3, o.outcome).map_err(sql)?;
                    stmt.raw_bind_parameter(n + 4, o.upstream_status)
                        .map_err(sql)?;
                    stmt.raw_bind_parameter(n + 5, o.gateway_code)
                        .map_err(sql)?;
                    stmt.raw_bind_parameter(n + 6, &o.message_id_sealed)
                        .map_err(sql)?;
                    stmt.raw_bind_parameter(n + 7, &o.enhanced_status)
                        .map_err(sql)?;
                    stmt.raw_bind_parameter(
                        n + 8,
                        o.size_bytes.map(|n| n.min(i64::MAX as u64) as i64),
                    )
                    .map_err(sql)?;
                    stmt.raw_bind_parameter(n + 9, o.ordinal).map_err(sql)?;
                    stmt.raw_bind_parameter(n + 10, &o.receipt_state)
                        .map_err(sql)?;
                    stmt.raw_bind_parameter(n + 11, &o.receipt_error)
                        .map_err(sql)?;
                    stmt.raw_bind_parameter(n + 12, &o.receipt_done)
                        .map_err(sql)?;
                }
                stmt.raw_execute().map_err(sql)?;
                for o in chunk {
                    if signer.is_some() {
                        tree.push_outcome(next_outcome, o.leaf);
                    }
                    next_outcome += 1;
                }
                outcomes += chunk.len() as u64;
            }
        }
        // A signed head at most every HEAD_INTERVAL: signing (Ed25519) per commit cost
        // a tenth of the relay's CPU under load. Idle, barrier and stop sign the rest.
        if let Some(key) = &signer
            && tree.due()
        {
            let now = clock.now_micros();
            tree.sign_head(&tx, key, partition, now).map_err(sql)?;
        }
        let postings = index
            .write(&tx, records as usize, Budget::Share)
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        open.last_record = next_record - 1;
        open.last_outcome = next_outcome - 1;
        open.wrote(
            records + outcomes + postings as u64,
            checkpointer.as_ref(),
            checkpoint_rows,
        );
        Ok((records, outcomes))
    }

    /// The open connection of a partition, (re)opened if it is not open or if its path
    /// no longer names the file that is open.
    fn connection(&mut self, partition: PartitionId) -> Result<&mut OpenPartition, WriteError> {
        self.tick += 1;
        let stale = self
            .open
            .get(&partition)
            .is_some_and(|open| file_identity(&open.path) != Some(open.identity));
        if stale {
            tracing::warn!(partition = %partition, "partition file was moved or replaced; reopening");
            self.open.remove(&partition);
        }
        if !self.open.contains_key(&partition) {
            let path = partition.path_in(&self.cfg.store_dir);
            if self.open.len() >= MAX_OPEN
                && let Some(oldest) = self
                    .open
                    .iter()
                    .min_by_key(|(_, p)| p.last_used)
                    .map(|(id, _)| *id)
            {
                self.close_partition(oldest);
            }
            std::fs::create_dir_all(&self.cfg.store_dir).map_err(|e| io(&self.cfg.store_dir, e))?;
            let conn = schema::open_for_write(
                &path,
                &partition.to_string(),
                self.cfg.sync,
                self.cfg.cache_mib,
            )
            .map_err(sql)?;
            let identity =
                file_identity(&path).ok_or_else(|| WriteError::Vanished(path.clone()))?;
            let index = BlindIndex::rebuild(&conn).map_err(sql)?;
            let tree =
                super::integrity::TreeState::load(&conn, partition, self.cfg.signer.as_deref())
                    .map_err(sql)?;
            let (last_record, last_outcome) = (tree.last_record(), tree.last_outcome());
            let fresh = OpenPartition {
                path,
                conn,
                index,
                tree,
                identity,
                last_used: self.tick,
                since_checkpoint: 0,
                last_record,
                last_outcome,
            };
            self.open.insert(partition, fresh);
        }
        let Some(open) = self.open.get_mut(&partition) else {
            // Inserted just above when absent; kept for the type, never taken.
            return Err(WriteError::Vanished(partition.path_in(&self.cfg.store_dir)));
        };
        open.last_used = self.tick;
        Ok(open)
    }

    /// Closes a partition to make room, its waiting leaves signed. Its waiting index
    /// entries are not written here, on the way to a commit clients wait on: they are
    /// rebuilt when it is next opened, and a query scans them meanwhile.
    fn close_partition(&mut self, id: PartitionId) {
        self.maintain(id, true, None);
        self.open.remove(&id);
    }
}

/// Binds one record's columns from parameter `first` on.
fn bind_record(
    stmt: &mut rusqlite::CachedStatement<'_>,
    first: usize,
    id: i64,
    r: &Row,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(first, id)?;
    stmt.raw_bind_parameter(first + 1, r.submission)?;
    stmt.raw_bind_parameter(first + 2, r.ordinal)?;
    stmt.raw_bind_parameter(first + 3, r.at_us)?;
    stmt.raw_bind_parameter(first + 4, r.bucket)?;
    stmt.raw_bind_parameter(first + 5, r.protocol)?;
    stmt.raw_bind_parameter(first + 6, r.service)?;
    stmt.raw_bind_parameter(first + 7, r.recipient_form)?;
    stmt.raw_bind_parameter(first + 8, r.segments)?;
    stmt.raw_bind_parameter(first + 9, r.account_ix)?;
    stmt.raw_bind_parameter(first + 10, r.ip_ix)?;
    stmt.raw_bind_parameter(first + 11, r.originator_ix)?;
    stmt.raw_bind_parameter(first + 12, r.recipient_ix)?;
    stmt.raw_bind_parameter(first + 13, &r.sealed)?;
    Ok(())
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| (m.dev(), m.ino()))
}

/// A transaction on the writer's connection, begun and committed with cached
/// statements (rusqlite's `Transaction` parses `BEGIN` and `COMMIT` again each time);
/// rolled back when dropped while SQLite still has it open (not after a commit, nor
/// after a statement that failed with `OR ROLLBACK` ended it). The caller drops the
/// connection after any failure anyway.
struct WriteTx<'c>(&'c Connection);

impl<'c> WriteTx<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN")?.execute([])?;
        Ok(WriteTx(conn))
    }

    fn commit(self) -> rusqlite::Result<()> {
        self.0.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.0
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            let _ = self
                .0
                .prepare_cached("ROLLBACK")
                .and_then(|mut s| s.execute([]));
        }
    }
}

fn sql(e: rusqlite::Error) -> WriteError {
    let (code, extended) = match &e {
        rusqlite::Error::SqliteFailure(f, _) => (f.code, f.extended_code),
        _ => (rusqlite::ErrorCode::Unknown, 0),
    };
    WriteError::Sqlite {
        code,
        extended,
        message: e.to_string(),
    }
}

fn io(path: &Path, e: std::io::Error) -> WriteError {
    WriteError::Io {
        path: path.to_owned(),
        kind: e.kind(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition with a WAL of 2,000 rows' pages, its writer and a checkpointer
    /// connection.
    fn wal_of_2000_rows() -> (tempfile::TempDir, Connection, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("2026-11-22.sqlite");
        let writer = schema::open_for_write(&path, "2026-11-22", SyncMode::Normal, 1).unwrap();
        writer
            .execute_batch(
                "BEGIN; CREATE TABLE t (v BLOB);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                 INSERT INTO t SELECT zeroblob(500) FROM n; COMMIT;",
            )
            .unwrap();
        let checkpointer = schema::open_for_checkpoint(&path).unwrap();
        (dir, writer, checkpointer)
    }

    /// A reader in a transaction that has seen the 2,000 rows (its snapshot in the WAL).
    fn reading_2000_rows(dir: &tempfile::TempDir) -> Connection {
        let reader = schema::open_for_read(&dir.path().join("2026-11-22.sqlite")).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 2000);
        reader
    }

    /// The WAL's length in frames, read without copying anything.
    fn wal_frames(c: &Connection) -> i64 {
        c.query_row("PRAGMA wal_checkpoint(NOOP)", [], |r| r.get(1))
            .unwrap()
    }

    /// A reader whose snapshot is the WAL's end leaves PASSIVE nothing to hold back, but
    /// it still reads from the WAL: only a RESTART sees it, waits, and says it could
    /// not restart the WAL.
    #[test]
    fn a_reader_at_the_wals_end_still_keeps_the_restart_out() {
        let (dir, _writer, checkpointer) = wal_of_2000_rows();
        let reader = reading_2000_rows(&dir);
        assert!(
            !checkpoint(&checkpointer).unwrap(),
            "kept out by the reader"
        );
        reader.execute_batch("COMMIT").unwrap();
        assert!(checkpoint(&checkpointer).unwrap());
    }

    /// A checkpoint copies the WAL and restarts it: the writer's next commit writes
    /// from the WAL's beginning.
    #[test]
    fn a_checkpoint_restarts_the_wal() {
        let (_dir, writer, checkpointer) = wal_of_2000_rows();
        let before = wal_frames(&checkpointer);
        assert!(before > 100, "a WAL of {before} frames to copy");
        assert!(checkpoint(&checkpointer).unwrap(), "restarted");
        writer
            .execute_batch("INSERT INTO t VALUES (zeroblob(10))")
            .unwrap();
        let after = wal_frames(&checkpointer);
        assert!(
            after < 5,
            "the WAL started again: {after} frames (was {before})"
        );
    }

    /// A reader in the WAL keeps the RESTART out: it gives up after
    /// CHECKPOINT_BUSY_TIMEOUT (holding the writer back no longer), says so, and the
    /// rows are still all there.
    #[test]
    fn a_reader_in_the_wal_keeps_the_restart_out_briefly() {
        let (dir, writer, checkpointer) = wal_of_2000_rows();
        let reader = reading_2000_rows(&dir);
        writer
            .execute_batch("INSERT INTO t VALUES (zeroblob(10))")
            .unwrap();
        let started = Instant::now();
        assert!(
            !checkpoint(&checkpointer).unwrap(),
            "kept out by the reader"
        );
        let waited = started.elapsed();
        assert!(
            waited >= schema::CHECKPOINT_BUSY_TIMEOUT && waited < Duration::from_millis(900),
            "waited for the reader, then gave up, not the old second: {waited:?}"
        );
        reader.execute_batch("COMMIT").unwrap();
        assert!(
            checkpoint(&checkpointer).unwrap(),
            "in once the reader left"
        );
        let rows: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2001);
    }

    /// Issue 10: a full disk, a lock held too long and a damaged file each have a label
    /// of their own, from SQLite's code or the OS's error kind.
    #[test]
    fn write_errors_keep_their_cause() {
        use rusqlite::ffi;
        use std::io::ErrorKind as K;
        for (code, reason) in [
            (ffi::SQLITE_FULL, "disk_full"),
            (ffi::SQLITE_BUSY, "busy"),
            (ffi::SQLITE_LOCKED, "busy"),
            (ffi::SQLITE_CORRUPT, "corrupt"),
            (ffi::SQLITE_NOTADB, "corrupt"),
            (ffi::SQLITE_READONLY, "read_only"),
            (ffi::SQLITE_CANTOPEN, "cannot_open"),
            (ffi::SQLITE_IOERR, "io"),
            (ffi::SQLITE_CONSTRAINT, "sqlite"),
        ] {
            let e = sql(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None));
            assert_eq!(e.reason(), reason, "{code}");
        }
        for (kind, reason) in [
            (K::StorageFull, "disk_full"),
            (K::PermissionDenied, "read_only"),
            (K::ReadOnlyFilesystem, "read_only"),
            (K::NotADirectory, "cannot_open"),
            (K::Other, "io"),
        ] {
            let e = io(Path::new("/store"), std::io::Error::from(kind));
            assert_eq!(e.reason(), reason, "{kind:?}");
            assert!(e.to_string().starts_with("/store: "), "{e}");
        }
    }
}
