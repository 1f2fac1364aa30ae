//! The writer: one thread that owns every partition connection, fed by a bounded queue,
//! and the journal's front before it (`src/store/front.rs`; see [`super::journal`]).
//!
//! A durable batch is appended to the journal by the relay thread that sealed it,
//! which answers its clients and passes the frame to the writer itself (see
//! `super::front`). Everything else goes through the front: it takes the first job
//! from the recorders' queue, drains whatever else is already queued up to
//! `batch-max` records, appends the lot to the journal in one write and answers every
//! waiting submission; then it passes the lot to the writer, which gathers thousands
//! of rows and writes them in one transaction per partition.
//! Without a journal (benchmarks that compare, tests of the writer alone) the writer
//! takes the recorders' queue itself and answers after its commit. While the writer's
//! commits fail or stall (see [`STUCK_AFTER`]), or the journal cannot take a group,
//! the front passes the rows clients wait on unjournaled with their waiters, one batch
//! at a time: they are answered after the commit, as without a journal. A failed commit answers each
//! of its waiters with the error and drops the connection, so the next batch reopens
//! the partition: the store recovers by itself when the fault goes away.
//!
//! The blind indexes are written late and sorted, a slice at a time: in transactions of
//! their own whenever the queue is empty, and as a share of each commit when it never
//! is (see [`super::index`]). Once the queue has been idle for [`IDLE_FLUSH`], the
//! entries not yet due are written too; all of them when the writer stops.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::events;
use super::index::{BlindIndex, Budget};
use super::journal::{self, Journal};
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
    /// The partition's record of the journal frames it holds is not one the writer
    /// wrote: which frames it holds cannot be told.
    #[error("partition's journal mark is malformed")]
    JournalMeta,
    /// PostgreSQL's (see [`crate::pg::describe`]: never a bound value).
    #[error("{message}")]
    Database {
        reason: &'static str,
        message: String,
    },
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
            WriteError::IdsExhausted | WriteError::JournalMeta => "corrupt",
            WriteError::Database { reason, .. } => reason,
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
    pub(super) fn send(self, result: Result<(), WriteError>) {
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
        /// The journal frame holding these rows (see [`super::journal`]); 0 until
        /// the front has journaled them.
        frame: u64,
    },
    /// An outcome event: no one waits for its commit (a failed one is tried again).
    Outcome {
        partition: PartitionId,
        row: OutcomeRow,
        frame: u64,
    },
    /// A group of jobs the front passes to the writer whole: those in a journal frame
    /// (their `frame` set, their waiters answered), and any it sent past the journal
    /// (`frame` 0, waiters kept). Whole, so that a partition takes a frame's rows in
    /// one transaction (its `meta` then says which frames it holds).
    Frame(Vec<Job>),
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
            Job::Frame(jobs) => jobs.iter().map(Job::rows).sum(),
            Job::Tick => 0,
            _ => 1,
        }
    }

    /// Records to write, not journaled yet.
    pub fn records(partition: PartitionId, rows: Vec<Row>, done: Option<Done>) -> Job {
        Job::Records {
            partition,
            rows,
            done,
            frame: 0,
        }
    }

    /// An outcome event to write, not journaled yet.
    pub fn outcome(partition: PartitionId, row: OutcomeRow) -> Job {
        Job::Outcome {
            partition,
            row,
            frame: 0,
        }
    }

    /// The records this job holds.
    pub(super) fn record_rows(&self) -> usize {
        match self {
            Job::Records { rows, .. } => rows.len(),
            _ => 0,
        }
    }

    /// Someone waits for this job's commit.
    pub(super) fn waited_on(&self) -> bool {
        matches!(
            self,
            Job::Records { done: Some(_), .. } | Job::Barrier(_) | Job::Stop
        )
    }

    /// The journal frame holding this job (0: none).
    fn frame(&self) -> u64 {
        match self {
            Job::Records { frame, .. } | Job::Outcome { frame, .. } => *frame,
            _ => 0,
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
    /// a batch not yet queued, and a way to cut short the front's wait for more work.
    pub signals: Arc<Signals>,
    /// Rows between requests to the checkpointer ([`CHECKPOINT_ROWS`]).
    pub checkpoint_rows: u64,
    /// Signs each commit's Merkle head. `None` only in benchmarks that measure the
    /// writer without integrity.
    pub signer: Option<Arc<ring::signature::Ed25519KeyPair>>,
    /// The store's clock: head timestamps are its time, like everything else stored.
    pub clock: crate::clock::SharedClock,
    /// The journal's directory (see [`super::journal`]); `None`: commits that clients
    /// wait on go straight to the partitions (a PostgreSQL node answering from the
    /// database, benchmarks that compare the two, and tests of the writer alone).
    pub journal: Option<PathBuf>,
    /// How to tell a partition that expiry removed: rows for it (read back from the
    /// journal, or late) are dropped, not written into a file made anew for them.
    /// `None`: all are written.
    pub expired: Option<Expired>,
    /// The partitions are in PostgreSQL, not files (a journal in front only with
    /// `store.acknowledge = "journal"`: see [`super::pgstore`]): the writer's side,
    /// connected (holding this node's lock).
    pub postgres: Option<super::pgstore::PgSink>,
}

/// A partition expiry removed: wholly past retention, and its key file gone.
#[derive(Clone)]
pub struct Expired {
    pub keyring: PathBuf,
    pub retention: crate::config::Retention,
}

impl Expired {
    /// Whether `partition` was removed by expiry. Only a key file that is not there
    /// counts as gone: one that cannot be looked at (a keyring not mounted, no
    /// permission) is an error, never a reason to drop rows.
    pub fn removed(
        &self,
        partition: PartitionId,
        now: crate::clock::Micros,
    ) -> std::io::Result<bool> {
        let now = crate::clock::micros_to_datetime(now);
        if !super::expiry::past_retention(self.retention, partition, now) {
            return Ok(false);
        }
        match std::fs::metadata(super::keys::key_file(&self.keyring, partition)) {
            Ok(_) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// Longest wait for sibling submissions before a commit (a journal append, or a
/// commit into the partitions without one) that clients wait on.
pub const SIBLING_DELAY: Duration = Duration::from_micros(200);

/// Longest wait before committing (or journaling) a batch no one waits on (outcomes,
/// async records).
pub const ASYNC_DELAY: Duration = Duration::from_millis(2);

/// Write the index entries not yet due (their bucket still open, fewer than
/// `index::FLUSH_ROWS`) when no job has arrived for this long.
pub const IDLE_FLUSH: Duration = Duration::from_secs(1);

/// Ask the checkpointer to copy a partition's WAL into its file after this many rows.
pub const CHECKPOINT_ROWS: u64 = 32_768;

/// What the recorder, the journal's front and the writer share besides the queues.
///
/// The thread that takes the recorders' queue (the front; the writer without a
/// journal) lingers for more work by sleeping, not by waiting on the queue: a thread
/// waiting on the queue is woken by every job, and at 40,000 jobs/s those wake-ups
/// cost more than the commits. A durable batch queued while it lingers wakes it with
/// [`Signals::durable_queued`]. The writer behind a journal lingers the same way, and
/// the front wakes it only for what still waits on it (a barrier, a stop, rows the
/// journal did not take).
#[derive(Default)]
pub struct Signals {
    /// Durable submissions sealed and gathered on a runtime thread whose batch is not
    /// queued yet (see [`super::batch`]).
    pub waiting: AtomicUsize,
    /// The thread that takes the recorders' queue: the journal's front, or the writer
    /// itself when there is no journal.
    pub(super) front: Lingering,
    /// The writer (the ingester, behind a journal).
    pub(super) writer: Lingering,
    /// The writer waits on an empty queue with heads to sign or index entries to
    /// write: the ticker wakes it. Ticks go only to an idle writer, so they never take
    /// queue space a submission is waiting for.
    idle_with_duties: AtomicBool,
    /// A stop was asked for ([`Signals::request_stop`]): a writer holding journaled rows
    /// it cannot commit stops waiting for the store to come back (they stay in the
    /// journal, read back at the next start).
    stopping: AtomicBool,
    /// The number of the journal segment this process started (0 until the front has
    /// read the journal back): frames below it were read back, and a partition that
    /// holds one already does not take it again; this process's frames are at or
    /// above it.
    pub(super) first_new: AtomicU64,
    /// The journal's active segment holds frames: the ticker wakes the front so that
    /// it rotates them out once [`journal::ROTATE_AFTER`] old.
    pub(super) journal_unrotated: AtomicBool,
    /// The journal, for the relay threads to append their durable batches to
    /// themselves (see [`super::front`]); unset without a journal.
    pub(super) appender: OnceLock<Arc<super::front::Appender>>,
    /// The writer's last commit failed in some partition.
    failing: AtomicBool,
    /// The writer holds [`MAX_RETRY_ROWS`] journaled rows it cannot commit and takes
    /// no more.
    retry_full: AtomicBool,
    /// When the writer's commit under way began (nanoseconds after `epoch`, plus
    /// one); 0 when it is not committing.
    committing_since: AtomicU64,
    epoch: OnceLock<Instant>,
}

/// A thread that sleeps while it lingers for more work, and the way to wake it.
#[derive(Default)]
pub(super) struct Lingering {
    now: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

impl Lingering {
    pub(super) fn wake(&self) {
        // SeqCst pairs with the sleeper's store before it looks at its queue: either it
        // sees the job, or this sees it lingering. A missed wake-up would cost at most
        // the linger.
        if self.now.load(Ordering::SeqCst)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
    }
}

impl Signals {
    /// Called after a durable batch (or a barrier) is queued.
    pub fn durable_queued(&self) {
        self.front.wake();
    }

    /// Asks the writer to stop: set before [`Job::Stop`] is queued, so that a writer
    /// holding rows it cannot commit stops waiting for the store to come back (they
    /// stay in the journal) and lets the Stop through.
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn now(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
    }

    /// The partitions are not keeping up with the journal: the writer's last commit
    /// failed, or the one under way has taken longer than [`STUCK_AFTER`]. Clients
    /// then wait for the partitions, and hear why they cannot be written.
    pub(super) fn partitions_stuck(&self) -> bool {
        if self.failing.load(Ordering::Relaxed) {
            return true;
        }
        let since = self.committing_since.load(Ordering::Relaxed);
        since != 0 && self.now().saturating_sub(since) > STUCK_AFTER.as_nanos() as u64
    }
}

/// A commit of the writer's that takes longer than this (a lock held by another
/// process, a disk that stalls) sends the clients' next rows past the journal, to
/// wait for the partitions as they did before there was a journal. A normal commit
/// of thousands of rows takes a few tens of milliseconds.
pub const STUCK_AFTER: Duration = Duration::from_millis(100);

/// How a thread gathers jobs into one commit (or one journal frame).
#[derive(Clone, Copy)]
pub(super) struct Pace {
    /// Rows past which it commits at once.
    rows: usize,
    /// Longest wait for more jobs when no one waits on those in hand.
    unwaited: Duration,
    /// Wait up to [`SIBLING_DELAY`] for durable submissions being gathered.
    siblings: bool,
}

impl Pace {
    /// How much longer to wait for more jobs before committing, if at all.
    ///
    /// - A batch that someone waits on (durable submissions, a barrier) waits up to
    ///   [`SIBLING_DELAY`] while a runtime thread is gathering more durable
    ///   submissions (see [`super::batch`]): they are about to arrive, and one commit
    ///   for both is cheaper than one each (PostgreSQL's commit_delay/commit_siblings).
    ///   Otherwise, and always with a barrier, it commits at once.
    /// - A batch no one waits on (outcome events, async records, journaled rows)
    ///   lingers up to `unwaited` to ride along with the next one.
    ///
    /// Either wait ends early when the thread is woken (a durable batch queued, see
    /// [`Signals::durable_queued`]; for the writer behind a journal, a job that waits
    /// on it).
    fn linger(
        &self,
        jobs: &[Job],
        rows: usize,
        stop: bool,
        started: Instant,
        signals: &Signals,
    ) -> Option<Duration> {
        if stop || rows >= self.rows {
            return None;
        }
        let limit = if !jobs.iter().any(Job::waited_on) {
            self.unwaited
        } else if !self.siblings || jobs.iter().any(|j| matches!(j, Job::Barrier(_))) {
            return None;
        } else if signals.waiting.load(Ordering::Relaxed) > 0 {
            SIBLING_DELAY
        } else {
            return None;
        };
        limit
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
    }
}

/// Takes `first` and whatever else is queued into `jobs`, lingering as `pace` says
/// (asleep, woken through `me`); a journal frame's jobs are taken whole. Ticks among
/// them are dropped: a writer with jobs in hand does its timed duties as it commits.
/// Returns whether [`Job::Stop`] came.
pub(super) fn gather(
    rx: &mut mpsc::Receiver<Job>,
    jobs: &mut Vec<Job>,
    first: Job,
    pace: Pace,
    signals: &Signals,
    me: &Lingering,
) -> bool {
    let started = Instant::now();
    let mut rows = 0;
    // Takes one job; true for Stop.
    let take = |job: Job, jobs: &mut Vec<Job>, rows: &mut usize| {
        *rows += job.rows();
        match job {
            Job::Tick => {}
            Job::Frame(inner) => jobs.extend(inner),
            Job::Stop => {
                jobs.push(Job::Stop);
                return true;
            }
            job => jobs.push(job),
        }
        false
    };
    let mut stopped = take(first, jobs, &mut rows);
    loop {
        while rows < pace.rows && !stopped {
            match rx.try_recv() {
                Ok(job) => stopped = take(job, jobs, &mut rows),
                Err(_) => break,
            }
        }
        let Some(left) = pace.linger(jobs, rows, stopped, started, signals) else {
            return stopped;
        };
        // Sleep rather than wait on the queue (see Signals): the next durable batch
        // queued wakes this thread.
        me.now.store(true, Ordering::SeqCst);
        // A durable job queued before the flag was up is seen here.
        if rx.is_empty() {
            std::thread::park_timeout(left);
        }
        me.now.store(false, Ordering::SeqCst);
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
    /// The last journal frame this partition holds (0: none of this journal's).
    journal_through: u64,
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
    /// Jobs no one waits on (outcome events, async records, journaled rows) whose
    /// commit failed: tried again with the next batch, so that a passing fault (a full
    /// disk, a lock held too long) does not lose a forwarded message's outcome. Of
    /// those not journaled, at most [`MAX_RETRY_ROWS`] rows; journaled ones past it
    /// stop the writer taking more (see [`MAX_RETRY_ROWS`]).
    retry: Vec<Job>,
    /// Scratch of [`Writer::commit`], kept between commits (an allocation each less):
    /// each partition's job indexes, and each job's result.
    groups: Vec<(PartitionId, Vec<usize>)>,
    results: Vec<Result<(), WriteError>>,
    /// How it gathers jobs into a commit: as the front does without a journal, in
    /// thousands of rows behind one.
    pace: Pace,
    /// Behind a journal: which frames the partitions hold, and which segments can go.
    ingest: Option<Ingest>,
    /// The partitions in PostgreSQL (`open` then stays empty).
    pg: Option<super::pgstore::PgSink>,
}

/// The writer's side of the journal.
struct Ingest {
    id: Arc<str>,
    dir: PathBuf,
    /// The journal's lock, held until the writer has released what it ingested.
    _lock: Arc<std::fs::File>,
    /// The newest frame taken (frames come whole and in order).
    seen: u64,
    last_release: Instant,
}

/// Most rows kept for another try after failed commits. Past it, rows not in the
/// journal are dropped, oldest first, each drop logged and counted as a store error;
/// journaled rows (their clients were answered) are never dropped: while this many
/// wait, the writer takes no more (its queue fills, the front blocks, the recorders'
/// queue fills and the relay refuses new messages), until they go in or a stop is
/// asked for (they stay in the journal for the next start).
pub const MAX_RETRY_ROWS: usize = 65_536;

/// Pause between tries while [`MAX_RETRY_ROWS`] journaled rows wait.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Ingested segments are deleted at most this often.
const RELEASE_EVERY: Duration = Duration::from_secs(1);

/// Journal frames passed to the writer and not yet taken, at most (each of at most
/// `batch-max` records); past it the front waits, and the recorders' queue fills.
const INGEST_QUEUE: usize = 256;

/// Starts the writer, and in front of it the journal when `cfg.journal` names one
/// (its frames not yet in the partitions are ingested first). Returns the recorders'
/// queue and the thread to join: the last to stop.
pub fn spawn(
    cfg: WriterConfig,
    metrics: Arc<Metrics>,
) -> std::io::Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>)> {
    // Made here, once: a store directory that goes away under a running writer (moved,
    // replaced) is not made again empty beside it, where partitions would then start
    // anew; opening a partition in it fails until it is back (fail closed).
    if cfg.postgres.is_none() {
        std::fs::create_dir_all(&cfg.store_dir)?;
    }
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let checkpointer = match cfg.postgres {
        None => Some(spawn_checkpointer(metrics.clone())?),
        Some(_) => None,
    };
    let mut cfg = cfg;
    let pg = cfg.postgres.take();
    let signals = cfg.signals.clone();
    let front_pace = Pace {
        rows: cfg.batch_max,
        unwaited: ASYNC_DELAY,
        siblings: true,
    };
    let sync_full = cfg.sync == SyncMode::Full;
    let mut journal = match &cfg.journal {
        Some(dir) => Some(Journal::open(dir, sync_full)?),
        None => None,
    };
    let mut pg = pg;
    if let Some((j, _)) = &mut journal {
        // Its lock held: the journal is made this store's (or refused).
        let owner = pg.as_ref().map_or_else(
            || journal::SQLITE_OWNER.to_owned(),
            |pg| journal::postgres_owner(pg.node_name()),
        );
        journal::claim(j.dir(), &owner)?;
        if let Some(pg) = &mut pg {
            pg.journaled(j.id());
            j.raise_floor(pg.journal_floor().map_err(std::io::Error::other)?);
        }
    }
    let expired = cfg.expired.clone();
    let clock = cfg.clock.clone();
    let mut writer = Writer {
        ingest: journal.as_ref().map(|(j, _)| Ingest {
            id: j.id().into(),
            dir: j.dir().to_owned(),
            _lock: j.lock(),
            seen: 0,
            last_release: Instant::now(),
        }),
        pace: front_pace,
        pg,
        cfg,
        open: HashMap::new(),
        metrics: metrics.clone(),
        tick: 0,
        last_job: Instant::now(),
        checkpointer,
        retry: Vec::new(),
        groups: Vec::new(),
        results: Vec::new(),
    };
    let Some((journal, segments)) = journal else {
        let handle = std::thread::Builder::new()
            .name("relaylog-writer".into())
            .spawn(move || writer.run(rx))?;
        let _ = signals.front.thread.set(handle.thread().clone());
        let _ = signals.writer.thread.set(handle.thread().clone());
        spawn_ticker(tx.downgrade(), signals)?;
        return Ok((tx, handle));
    };
    writer.pace = Pace {
        rows: journal::INGEST_ROWS.max(writer.cfg.batch_max),
        unwaited: journal::INGEST_DELAY,
        siblings: false,
    };
    let (to_writer, from_front) = mpsc::channel(INGEST_QUEUE);
    // The front's handle, for the writer to join when it ends: the writer can end on
    // the Stop the front passes on, before the front has let go of the journal (and
    // its lock); joining the writer must mean both are gone. Its queue is dropped
    // first, so a front still sending to it is not left waiting.
    // Handed over once the front is spawned, and waited for even when the writer ends
    // before that; a front that could not be spawned drops the sender.
    let (front_handle, front_of_writer) =
        std::sync::mpsc::sync_channel::<std::thread::JoinHandle<()>>(1);
    let handle = std::thread::Builder::new()
        .name("relaylog-writer".into())
        .spawn(move || {
            writer.run(from_front);
            if let Ok(front) = front_of_writer.recv() {
                let _ = front.join();
            }
        })?;
    let _ = signals.writer.thread.set(handle.thread().clone());
    let appender = Arc::new(super::front::Appender::new(
        journal,
        to_writer,
        !sync_full,
        metrics.clone(),
    ));
    let _ = signals.appender.set(appender.clone());
    let front = super::front::Front::new(
        appender,
        signals.clone(),
        metrics,
        front_pace,
        expired,
        clock,
    );
    let (replayed, wait) = std::sync::mpsc::sync_channel(1);
    let front = std::thread::Builder::new()
        .name("relaylog-journal".into())
        .spawn(move || front.run(rx, segments, replayed))?;
    let _ = signals.front.thread.set(front.thread().clone());
    let _ = front_handle.send(front);
    // The store opens once the journal's frames are in the partitions (or could not
    // all be: then they stay in the writer's hands and the journal, tried again).
    loop {
        match wait.recv_timeout(RETRY_PAUSE) {
            Ok(Ok(())) => break,
            Ok(Err(e)) => return Err(e),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Frames read back that the partitions keep refusing fill the writer:
                // it would wait for them for ever, and the store never open.
                if signals.retry_full.load(Ordering::SeqCst) {
                    signals.request_stop();
                    return Err(std::io::Error::other(format!(
                        "the partitions refuse the journal's rows ({MAX_RETRY_ROWS} wait; the log says why)"
                    )));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(std::io::Error::other(
                    "the journal's thread stopped at start",
                ));
            }
        }
    }
    spawn_ticker(tx.downgrade(), signals)?;
    // The writer joins the front when it ends: joining it waits for both.
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
                // Only into an empty queue: a tick never takes a place a submission
                // waits for (the front may be held up, waiting on the writer).
                let idle = tx.capacity() == tx.max_capacity();
                if !idle
                    || !(signals.idle_with_duties.load(Ordering::Relaxed)
                        || signals.journal_unrotated.load(Ordering::Relaxed))
                {
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
            // Journaled rows are never dropped: while too many wait for another try,
            // no more are taken (the queues fill and the relay refuses new messages).
            let full = self.retry_is_full();
            self.cfg.signals.retry_full.store(full, Ordering::SeqCst);
            if full {
                if self.cfg.signals.stopping.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(RETRY_PAUSE);
                self.commit(&mut Vec::new());
                continue;
            }
            let duties = !self.retry.is_empty()
                || self.pg.as_ref().is_some_and(|pg| pg.unsigned() > 0)
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
            let signals = self.cfg.signals.clone();
            // Without a journal the writer takes the recorders' queue: woken as the front.
            let me = if self.ingest.is_some() {
                &signals.writer
            } else {
                &signals.front
            };
            stop = gather(&mut rx, &mut jobs, first, self.pace, &signals, me);
            if self.ingest.is_none() {
                self.metrics.queue_depth.set(rx.len() as i64);
            }
            self.commit(&mut jobs);
        }
        if !self.retry.is_empty() {
            let rows: usize = self.retry.iter().map(Job::rows).sum();
            self.metrics.store_errors.inc();
            tracing::error!(
                rows,
                "stopping with failed commits: outcome events or async records lost, journaled rows kept for the next start"
            );
        }
        self.flush_all();
        self.release_journal(true);
        // Close connections cleanly (checkpoints the WAL).
        self.open.clear();
    }

    /// Journaled rows waiting for another try fill [`MAX_RETRY_ROWS`].
    fn retry_is_full(&self) -> bool {
        self.retry
            .iter()
            .filter(|j| j.frame() != 0)
            .map(Job::rows)
            .sum::<usize>()
            >= MAX_RETRY_ROWS
    }

    /// Time-based duties: sign the heads of leaves written since the last head, and
    /// write the waiting index entries once the queue has been idle for
    /// [`IDLE_FLUSH`], a step per transaction until a job arrives.
    fn on_tick(&mut self, rx: &mpsc::Receiver<Job>) {
        if !self.retry.is_empty() {
            self.commit(&mut Vec::new());
        }
        // The front rotates the journal on ticks: what it rotated out goes now.
        self.release_journal(true);
        let idle = self.last_job.elapsed();
        if idle >= IDLE_FLUSH {
            let left = |w: &Writer| -> usize {
                w.open
                    .values()
                    .map(|p| p.index.remaining() + p.tree.unsigned())
                    .sum::<usize>()
                    + w.pg.as_ref().map_or(0, super::pgstore::PgSink::unsigned)
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
            && (self.open.values().any(|p| p.tree.unsigned() > 0)
                || self.pg.as_ref().is_some_and(|pg| pg.unsigned() > 0))
        {
            self.seal_all(None);
        }
    }

    /// Signs every open partition's waiting leaves and writes all its waiting index
    /// entries, one transaction each.
    fn flush_all(&mut self) {
        self.seal_all(Some(Budget::All));
    }

    /// Signs every open partition's waiting leaves (and writes its waiting index
    /// entries as far as `index` allows), one transaction each.
    fn seal_all(&mut self, index: Option<Budget>) {
        if let (Some(pg), Some(key)) = (&mut self.pg, &self.cfg.signer) {
            for (partition, e) in pg.seal_all(key, self.cfg.clock.now_micros()) {
                self.metrics.store_errors.inc();
                tracing::error!(partition = %partition, reason = e.reason(), error = %e, "signing failed; partition will be reopened");
            }
        }
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
        // Frames come in the order of their numbers, whoever appended them (the
        // front's lock, see `super::front`): `release_journal` and the partitions'
        // record of the frames they hold rely on it.
        #[cfg(debug_assertions)]
        if let Some(ingest) = &self.ingest {
            let mut last = ingest.seen;
            for frame in jobs.iter().map(Job::frame).filter(|&f| f > 0) {
                assert!(frame >= last, "journal frame {frame} came after {last}");
                last = frame;
            }
        }
        if !self.retry.is_empty() {
            let mut again = std::mem::take(&mut self.retry);
            again.append(jobs);
            *jobs = again;
        }
        // A barrier promises that what came before it is committed and signed.
        let barrier = jobs.iter().any(|j| matches!(j, Job::Barrier(_)));
        if let Some(ingest) = &mut self.ingest {
            ingest.seen = jobs.iter().map(Job::frame).fold(ingest.seen, u64::max);
        }
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
        let signals = self.cfg.signals.clone();
        signals
            .committing_since
            .store(signals.now(), Ordering::Relaxed);
        let mut failed: Option<WriteError> = None;
        for (partition, idx) in &by_partition {
            let result = self.write_partition(*partition, idx, jobs);
            if let Err(e) = &result {
                failed.get_or_insert_with(|| e.clone());
            }
            match &result {
                Ok((r, o)) => {
                    records += r;
                    self.metrics.outcomes_written.inc_by(*o);
                }
                Err(e) => {
                    self.metrics.store_errors.inc();
                    tracing::error!(partition = %partition, reason = e.reason(), error = %e, "commit failed; records refused, partition will be reopened");
                    self.open.remove(partition);
                    if let Some(pg) = &mut self.pg {
                        pg.forget(*partition);
                    }
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
        signals.committing_since.store(0, Ordering::Relaxed);
        signals.failing.store(failed.is_some(), Ordering::Relaxed);
        // Past the cap, rows not in the journal go, oldest first; journaled ones stay
        // (see `retry_is_full`).
        let mut kept: usize = self
            .retry
            .iter()
            .filter(|j| j.frame() == 0)
            .map(Job::rows)
            .sum();
        while kept > MAX_RETRY_ROWS {
            let Some(oldest) = self.retry.iter().position(|j| j.frame() == 0) else {
                break;
            };
            let dropped = self.retry.remove(oldest);
            kept -= dropped.rows();
            self.metrics.store_errors.inc();
            tracing::error!(
                rows = dropped.rows(),
                "commits keep failing: rows kept for another try dropped (outcome events or async records lost)"
            );
        }
        if barrier {
            self.seal_all(None);
            // A barrier promises what came before it is in: not so when some of it
            // failed here.
            if let Some(e) = failed {
                for (job, result) in jobs.iter().zip(results.iter_mut()) {
                    if matches!(job, Job::Barrier(_)) {
                        *result = Err(e.clone());
                    }
                }
            }
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
                Job::Outcome { .. } | Job::Frame(_) | Job::Stop | Job::Tick => None,
            };
            if let Some(done) = done {
                done.send(result);
            }
        }
        self.groups = by_partition;
        self.results = results;
        self.release_journal(false);
    }

    /// Deletes the journal segments whose frames are all in the partitions (at most
    /// every [`RELEASE_EVERY`] unless `now`): older than the oldest frame waiting for
    /// another try, and than the newest taken.
    fn release_journal(&mut self, now: bool) {
        let Some(ingest) = &mut self.ingest else {
            return;
        };
        if !now && ingest.last_release.elapsed() < RELEASE_EVERY {
            return;
        }
        ingest.last_release = Instant::now();
        // Every frame read back at start (below `first_new`) was taken before anything
        // new: it is in, or waiting for another try.
        let taken = ingest.seen.max(
            self.cfg
                .signals
                .first_new
                .load(Ordering::SeqCst)
                .saturating_sub(1),
        );
        let through = self
            .retry
            .iter()
            .map(Job::frame)
            .filter(|f| *f > 0)
            .min()
            .map_or(taken, |f| f - 1);
        if let Err(e) = journal::release(&ingest.dir, through) {
            let e = io(&ingest.dir, e);
            self.metrics.store_errors.inc();
            tracing::warn!(reason = e.reason(), error = %e, "ingested journal segments could not be deleted; tried again later");
        }
    }

    fn write_partition(
        &mut self,
        partition: PartitionId,
        idx: &[usize],
        jobs: &[Job],
    ) -> Result<(u64, u64), WriteError> {
        if let Some(pg) = &mut self.pg {
            let (signer, now) = (self.cfg.signer.as_deref(), self.cfg.clock.now_micros());
            // Opened first: what it holds of the journal decides what is written.
            let Some(held) = pg.journal_through(partition, now, signer)? else {
                self.metrics.store_errors.inc();
                tracing::warn!(partition = %partition, jobs = idx.len(), "rows of a partition expiry removed dropped");
                return Ok((0, 0));
            };
            // Frames the partition holds are never written again, this process's
            // too: a commit whose reply was lost (the connection dropped at that
            // moment) did go in, and its rows, retried, must not go in twice. A
            // partition takes its frames in order (its jobs, retried ones first, go
            // in one write), so a frame it holds is one it wrote.
            let (mut records, mut outcomes) = (Vec::<&Row>::new(), Vec::<&OutcomeRow>::new());
            let mut held_rows = 0;
            for job in idx.iter().map(|&i| &jobs[i]) {
                if !fresh(job, held, 0) {
                    held_rows += job.rows();
                    continue;
                }
                match job {
                    Job::Records { rows, .. } => records.extend(rows),
                    Job::Outcome { row, .. } => outcomes.push(row),
                    _ => {}
                }
            }
            if held_rows > 0 {
                tracing::warn!(partition = %partition, rows = held_rows, "journaled rows the database holds already not written again");
            }
            if records.is_empty() && outcomes.is_empty() {
                return Ok((0, 0));
            }
            let newest = idx.iter().map(|&i| jobs[i].frame()).max().unwrap_or(0);
            let written = pg.write(partition, &records, &outcomes, newest, signer, now)?;
            if written == (0, 0) {
                self.metrics.store_errors.inc();
            }
            return Ok(written);
        }
        let signer = self.cfg.signer.clone();
        let clock = self.cfg.clock.clone();
        let checkpointer = self.checkpointer.clone();
        let checkpoint_rows = self.cfg.checkpoint_rows;
        let journal_id = self.ingest.as_ref().map(|i| i.id.clone());
        let first_new = self.cfg.signals.first_new.load(Ordering::SeqCst);
        if self.expired_and_gone(partition)? {
            // Late rows (an outcome, a retry) of a partition expiry removed: written,
            // they would bring its file back, unreadable, past retention.
            self.metrics.store_errors.inc();
            tracing::warn!(partition = %partition, jobs = idx.len(), "rows of a partition expiry removed dropped");
            return Ok((0, 0));
        }
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
        // Jobs of frames read back at start that this partition holds already (the
        // crash fell after its commit) are not written twice; this process's frames
        // are written whatever (journal numbers only grow).
        let held = open.journal_through;
        let newest = idx.iter().map(|&i| jobs[i].frame()).max().unwrap_or(0);
        {
            // Records go in with multi-row INSERTs (fewer statement executions per row,
            // the writer's main cost), each with the id the writer gives it.
            let rows: Vec<&Row> = idx
                .iter()
                .map(|&i| &jobs[i])
                .filter(|j| fresh(j, held, first_new))
                .filter_map(|job| match job {
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
            if !rows.is_empty() {
                // A record into a compacted partition (late, or a clock set back):
                // its filter would hide it, so it goes, under this transaction's write
                // lock (see `compact`), and compaction builds it anew later; if it
                // cannot go, neither do the rows (the batch fails and is retried).
                // Looked for at every commit with records (one `unlink`, failing when
                // there is none): compaction may have put it there since the partition
                // was opened.
                super::compact::remove_filter(&open.path).map_err(|e| {
                    let filter = super::filter::path_of(&open.path);
                    io(
                        &filter,
                        std::io::Error::new(
                            e.kind(),
                            format!("{e}; records cannot go into the partition while its filter is there: remove it, or let relaylog write to the store directory"),
                        ),
                    )
                })?;
            }
            let events: Vec<&OutcomeRow> = idx
                .iter()
                .map(|&i| &jobs[i])
                .filter(|j| fresh(j, held, first_new))
                .filter_map(|job| match job {
                    Job::Outcome { row, .. } => Some(row),
                    _ => None,
                })
                .collect();
            // Ids in the order the events came, the tree's leaf order; most go into
            // one block, any others into rows (see `events`).
            let (blocks, in_rows) = events::place(&events, next_outcome);
            for o in &events {
                if signer.is_some() {
                    tree.push_outcome(next_outcome, o.leaf);
                }
                next_outcome += 1;
            }
            for block in blocks {
                block.insert(&tx).map_err(sql)?;
            }
            for chunk in schema::power_of_two_runs(&in_rows) {
                let mut stmt = tx
                    .prepare_cached(schema::insert_many(schema::Batched::Outcome, chunk.len()))
                    .map_err(sql)?;
                for (k, (id, o)) in chunk.iter().enumerate() {
                    events::bind_row(&mut stmt, 1 + k * schema::OUTCOME_COLUMNS, *id, o)
                        .map_err(sql)?;
                }
                stmt.raw_execute().map_err(sql)?;
            }
            outcomes += events.len() as u64;
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
        if newest > held
            && let Some(journal) = journal_id
        {
            tx.prepare_cached(schema::SET_JOURNAL)
                .and_then(|mut s| s.execute([journal::meta_value(&journal, newest)]))
                .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        open.last_record = next_record - 1;
        open.last_outcome = next_outcome - 1;
        open.journal_through = open.journal_through.max(newest);
        open.wrote(
            records + outcomes + postings as u64,
            checkpointer.as_ref(),
            checkpoint_rows,
        );
        Ok((records, outcomes))
    }

    /// Whether `partition` is not open, has no file and was removed by expiry.
    fn expired_and_gone(&self, partition: PartitionId) -> Result<bool, WriteError> {
        let Some(expired) = &self.cfg.expired else {
            return Ok(false);
        };
        if self.open.contains_key(&partition) {
            return Ok(false);
        }
        let path = partition.path_in(&self.cfg.store_dir);
        if path.exists() {
            return Ok(false);
        }
        expired
            .removed(partition, self.cfg.clock.now_micros())
            .map_err(|e| io(&expired.keyring, e))
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
            let journal_through = match &self.ingest {
                Some(ingest) => journal::held_through(
                    schema::journal_meta(&conn).map_err(sql)?.as_deref(),
                    &ingest.id,
                )
                .ok_or(WriteError::JournalMeta)?,
                None => 0,
            };
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
                journal_through,
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

/// Whether a job is written into a partition that holds the journal through frame
/// `held`: jobs of frames read back at start that it holds already (the crash fell
/// after its commit) are not written twice; this process's frames (from `first_new`
/// on, 0 for none) are written whatever, journal numbers only growing; jobs that
/// never went through the journal (frame 0) always are.
fn fresh(job: &Job, held: u64, first_new: u64) -> bool {
    let frame = job.frame();
    frame == 0 || frame > held || (first_new != 0 && frame >= first_new)
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

/// (device, inode) of the regular file at `path`: whether a path still names the file
/// that was opened.
pub(super) fn file_identity(path: &Path) -> Option<(u64, u64)> {
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

pub(super) fn io(path: &Path, e: std::io::Error) -> WriteError {
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

    /// A frame a partition holds is written again only from this process on SQLite
    /// (its commits cannot be lost on the way back); on PostgreSQL (no `first_new`)
    /// never, so that rows retried after a commit whose reply was lost go in once.
    #[test]
    fn a_frame_a_partition_holds_is_not_written_again() {
        let job = |frame| Job::Records {
            partition: PartitionId::containing(crate::config::Granularity::Day, 0),
            rows: Vec::new(),
            done: None,
            frame,
        };
        let (held, first_new) = (40, 30);
        assert!(fresh(&job(0), held, first_new), "never journaled");
        assert!(fresh(&job(41), held, first_new), "past what it holds");
        assert!(!fresh(&job(20), held, first_new), "read back, held");
        assert!(
            fresh(&job(35), held, first_new),
            "this process's, on SQLite"
        );
        assert!(!fresh(&job(35), held, 0), "held, on PostgreSQL");
        assert!(fresh(&job(41), held, 0) && fresh(&job(0), held, 0));
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
