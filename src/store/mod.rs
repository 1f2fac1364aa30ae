//! The store: partitions of SQLite files, per-partition keys, and the single writer.
//!
//! [`Store::open`] loads the master key, opens the keyring and starts the writer thread.
//! A [`Recorder`] (cheap to clone) is what ingress holds: it normalises nothing and
//! decides nothing, it seals a [`Submission`] in the caller's thread — blind indexes
//! and AEAD run in parallel on every core — and hands the rows to the writer.

pub mod backup;
pub mod batch;
pub mod codec;
pub mod compact;
pub mod deletion;
pub mod events;
pub mod expiry;
pub mod filter;
mod front;
pub mod index;
pub mod integrity;
pub mod journal;
pub mod keys;
pub mod partition;
pub mod pgevents;
pub mod pglookup;
pub mod pgrows;
pub mod pgstore;
pub mod postings;
pub mod query;
pub mod rows;
pub mod schema;
pub mod writer;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::clock::{Micros, SharedClock};
use crate::config::{Durability, StoreConfig};
use crate::metrics::Metrics;
use crate::record::{OutcomeEvent, Submission, SubmissionId, SubmissionIds};
use keys::{IndexParams, KeyError, Keyring, MasterKey, PartitionKeys};
use partition::PartitionId;
use writer::{Job, OutcomeRow, Row, WriteError};

pub use keys::IndexKind;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("cannot create store directory {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the writer or read its journal back: {0}")]
    Thread(std::io::Error),
    #[error("store journal {path}: {source}")]
    Journal {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Signing(#[from] integrity::SigningKeyError),
    #[error(transparent)]
    Database(#[from] crate::pg::PgError),
}

/// Creates the installation's keys: the master key and the Ed25519 signing key pair.
/// Refuses to overwrite either.
pub fn init_keys(cfg: &StoreConfig) -> Result<(), OpenError> {
    if cfg.signing_key.exists() {
        return Err(integrity::SigningKeyError::Exists {
            path: cfg.signing_key.clone(),
        }
        .into());
    }
    keys::create_master_key(&cfg.master_key)?;
    integrity::create_signing_key(&cfg.signing_key)?;
    Ok(())
}

/// Why a submission's records were not committed. Every variant means: do not forward.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record queue full")]
    QueueFull,
    #[error("store is shutting down")]
    Closed,
    #[error("commit failed: {0}")]
    Commit(#[from] WriteError),
    #[error("commit did not complete within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The caller or the task recording it failed (a bug, logged where it is seen).
    #[error("recording failed")]
    Internal,
}

impl RecordError {
    /// A short, fixed label for metrics and client replies. A failed commit says why
    /// (`disk_full`, `busy`, `corrupt`, `read_only`, `cannot_open`, `io`, `sqlite`).
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::QueueFull => "queue_full",
            RecordError::Closed => "shutting_down",
            RecordError::Commit(e) => e.reason(),
            RecordError::Timeout(_) => "commit_timeout",
            RecordError::Keys(_) => "keys",
            RecordError::Internal => "internal",
        }
    }
}

/// How long a durable submission waits for its commit before the relay gives up and
/// answers with a temporary error. Generous: a commit normally takes well under 10 ms.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The journal's directory under the store's (see [`journal`]).
pub const JOURNAL_DIR: &str = "journal";

pub struct Store {
    recorder: Recorder,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Inner {
    cfg: StoreConfig,
    keyring: Keyring,
    clock: SharedClock,
    ids: SubmissionIds,
    /// The writer's queue, the signals that wake it, and the wait for room in the queue.
    route: batch::Route,
    metrics: Arc<Metrics>,
    /// The keys of the partition written most recently: the hot path's only lookup.
    current: Mutex<Option<Arc<PartitionKeys>>>,
    /// One key file access at a time from the async path (see `Recorder::keys_async`).
    key_io: Arc<tokio::sync::Mutex<()>>,
    /// The database, when the store is on PostgreSQL.
    pg: Option<pgstore::PgTarget>,
}

/// A place kept in the writer's queue for one outcome event (see
/// [`Recorder::reserve_outcome`]). Dropped unused, the place is given back.
pub struct OutcomeSlot {
    permit: mpsc::OwnedPermit<Job>,
    recorder: Recorder,
}

/// An outcome event sealed and ready for its kept place ([`OutcomeSlot::send`]).
pub struct PreparedOutcome(Job);

impl OutcomeSlot {
    /// Seals the outcome (its upstream message id) without spending the slot: a caller
    /// dropped during this wait still holds the slot, and can still write an outcome.
    /// If the message id cannot be sealed (the partition's keys are unreadable), the
    /// outcome is prepared without it rather than lost.
    pub async fn prepare(&self, ev: &OutcomeEvent) -> Option<PreparedOutcome> {
        match self.recorder.sealed_outcome(ev).await {
            Ok(job) => Some(PreparedOutcome(job)),
            Err(e) => {
                tracing::error!(reason = e.reason(), error = %e, "outcome's message id not sealed; recorded without it");
                self.unsealed(ev)
            }
        }
    }

    /// Queues a prepared outcome in the kept place: no wait.
    pub fn send(self, prepared: PreparedOutcome) {
        self.permit.send(prepared.0);
    }

    /// [`OutcomeSlot::prepare`], then [`OutcomeSlot::send`].
    pub async fn record(self, ev: &OutcomeEvent) {
        if let Some(prepared) = self.prepare(ev).await {
            self.send(prepared);
        }
    }

    /// Queues an outcome without a message id at once, from synchronous code (a drop
    /// guard): no sealing is needed, so no wait.
    pub fn record_now(self, ev: &OutcomeEvent) {
        if let Some(prepared) = self.unsealed(ev) {
            self.send(prepared);
        }
    }

    /// The outcome without its upstream message id (there are no keys to seal it).
    fn unsealed(&self, ev: &OutcomeEvent) -> Option<PreparedOutcome> {
        let partition = self.recorder.partition_of(ev.submitted_at);
        self.recorder
            .outcome_job(ev, partition, None)
            .ok()
            .map(PreparedOutcome)
    }
}

/// The blind indexes of the last sender sealed on this thread (account, client IP,
/// originator) and the keys they were made with. A client sends many messages in a
/// row: without this each one cost three more HMACs and three allocations (the address
/// as text, the copies compared next time), half of sealing. It holds the last
/// sender's identifiers in this thread's memory until the thread seals another
/// sender's message (never on disk, in a log or a metric), and no keys: they are
/// known by their serial, so expired keys still leave the process.
#[derive(Default)]
struct SenderTags {
    /// [`PartitionKeys::serial`] of the keys the tags were made with (0: none yet).
    keys: u64,
    last: Option<(
        String,
        std::net::IpAddr,
        Option<crate::canonical::Identifier>,
    )>,
    tags: (i64, i64, Option<i64>),
}

thread_local! {
    static LAST_SENDER: std::cell::RefCell<SenderTags> = std::cell::RefCell::default();
    /// A record's plaintext on its way to being sealed: one buffer per thread, reused
    /// (and zeroed once the record is sealed), instead of one allocated per record.
    static PLAIN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The rows of one `record_many` call on their way into a batch: a joiner's go into
    /// the batch open on the thread, and the room they leave is kept for the next.
    static ROWS: std::cell::RefCell<Vec<Row>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// More than the octets a record's encoding adds to its account, originator and
/// recipient (its version, lengths, forms, address, port and SMPP details: 34), so
/// that [`PLAIN`] is given all the room a record needs before it is encoded.
const PLAIN_FIXED: usize = 64;

/// The most room [`PLAIN`] keeps between records (a record with a long recipient can
/// need more; its buffer is then let go).
const PLAIN_KEPT: usize = 4 * 1024;

/// The most rows [`ROWS`] keeps room for between calls.
const ROWS_KEPT: usize = 256;

/// Gives the thread's spare row vector back, empty, unless it grew past [`ROWS_KEPT`].
fn keep_rows(rows: Vec<Row>) {
    debug_assert!(rows.is_empty(), "rows left behind in the spare vector");
    if rows.capacity() <= ROWS_KEPT {
        ROWS.set(rows);
    }
}

impl SenderTags {
    /// The sender's tags under `keys`, made again only when the sender or the keys
    /// differ from the last call on this thread.
    fn of(sub: &Submission, keys: &PartitionKeys) -> (i64, i64, Option<i64>) {
        LAST_SENDER.with_borrow_mut(|last| last.get(sub, keys))
    }

    fn get(&mut self, sub: &Submission, keys: &PartitionKeys) -> (i64, i64, Option<i64>) {
        let same = self.keys == keys.serial()
            && self.last.as_ref().is_some_and(|(account, ip, originator)| {
                *account == sub.account && *ip == sub.client_ip && *originator == sub.originator
            });
        if !same {
            let ip = crate::canonical::canonical_ip(sub.client_ip).to_string();
            self.tags = (
                keys.blind_index(IndexKind::Account, &sub.account),
                keys.blind_index(IndexKind::ClientIp, &ip),
                sub.originator
                    .as_ref()
                    .map(|o| keys.blind_index(IndexKind::Originator, &o.index_value())),
            );
            self.keys = keys.serial();
            self.last = Some((sub.account.clone(), sub.client_ip, sub.originator.clone()));
        }
        self.tags
    }
}

/// Seals submissions and outcomes and queues them for the writer.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

/// Why the partitions' sizes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SizesError {
    #[error("store directory {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Database(#[from] crate::pg::PgError),
}

/// Each partition the store holds, oldest first, with the bytes it takes on disk: its
/// file (and write-ahead log) in SQLite, its tables with their indexes and TOAST in
/// PostgreSQL. Counts only, for the console's traffic page.
pub fn partition_sizes(cfg: &StoreConfig) -> Result<Vec<(PartitionId, u64)>, SizesError> {
    match &cfg.backend {
        crate::config::Backend::Sqlite => {
            let parts = partition::list(&cfg.path).map_err(|source| SizesError::Dir {
                path: cfg.path.clone(),
                source,
            })?;
            let size = |f: &std::path::Path| std::fs::metadata(f).map_or(0, |m| m.len());
            Ok(parts
                .into_iter()
                .map(|p| {
                    let file = p.path_in(&cfg.path);
                    let mut wal = file.clone().into_os_string();
                    wal.push("-wal");
                    (p, size(&file) + size(std::path::Path::new(&wal)))
                })
                .collect())
        }
        crate::config::Backend::Postgres(pg) => {
            Ok(pgstore::partition_sizes(&crate::pg::Pool::shared(pg)?)?)
        }
    }
}

/// Opens the keyring named by the config, with the index shape for new partitions.
pub fn open_keyring(cfg: &StoreConfig) -> Result<Keyring, KeyError> {
    keys::check_directories(cfg)?;
    let master = MasterKey::load(&cfg.master_key)?;
    let params = IndexParams {
        bytes: cfg.index_bytes,
        bucket_secs: (cfg.index_bucket_us / 1_000_000) as u32,
    };
    match &cfg.backend {
        crate::config::Backend::Sqlite => Keyring::open(&cfg.keyring, master, params),
        crate::config::Backend::Postgres(pg) => Ok(Keyring::open_postgres(
            crate::pg::Pool::shared(pg)?,
            master,
            params,
        )),
    }
}

/// Ingests what a stopped relaylog left in the journal (a crash between answering
/// clients and writing their rows into the partitions), so that a command that reads
/// or changes the partitions (a query, a disclosure, an erasure, expiry) sees every
/// record a client was answered for. Nothing to do, `Ok(false)`, when the journal is
/// empty or a running relaylog has it (which ingests it within `INGEST_DELAY`).
///
/// On PostgreSQL the journal is this node's, which answers from it with
/// `store.acknowledge = "journal"`; one a run with that setting left is ingested
/// here whatever the setting now (a node answering from the database opens its store
/// this way first). A node that never answered from its journal has none.
pub fn recover_journal(cfg: &StoreConfig) -> Result<bool, OpenError> {
    recover_with(
        cfg,
        Arc::new(crate::clock::SystemClock),
        Arc::new(Metrics::new()),
    )
}

/// Whose rows the journal of a store with `cfg` holds (see [`journal::claim`]).
pub fn journal_owner(cfg: &StoreConfig) -> String {
    match &cfg.backend {
        crate::config::Backend::Sqlite => journal::SQLITE_OWNER.into(),
        crate::config::Backend::Postgres(pg) => journal::postgres_owner(&pg.node),
    }
}

fn recover_with(
    cfg: &StoreConfig,
    clock: SharedClock,
    metrics: Arc<Metrics>,
) -> Result<bool, OpenError> {
    let dir = cfg.path.join(JOURNAL_DIR);
    let journal_error = |source| OpenError::Journal {
        path: dir.clone(),
        source,
    };
    // Refused if it holds another's rows (a SQLite store's, another node's): they are
    // not this store's to write, nor to leave unsaid.
    let owner = journal::foreign(&dir, &journal_owner(cfg)).map_err(journal_error)?;
    if matches!(cfg.backend, crate::config::Backend::Postgres(_)) && owner.is_none() {
        // A node that never answered from its journal.
        return Ok(false);
    }
    let pending = || journal::needs_recovery(&dir).map_err(journal_error);
    if !pending()? {
        return Ok(false);
    }
    let mut journaled = cfg.clone();
    if let crate::config::Backend::Postgres(pg) = &mut journaled.backend {
        pg.journal = true;
    }
    Store::open_without_recovery(journaled, clock, metrics)?.close_blocking();
    // What could not go in stays in the journal: the command must not go on over
    // partitions without it.
    if pending()? {
        return Err(journal_error(std::io::Error::other(
            "rows it holds could not all be put into the partitions (the log says why)",
        )));
    }
    Ok(true)
}

impl Store {
    pub fn open(
        cfg: StoreConfig,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Store, OpenError> {
        // A node that answers from the database puts what a run that answered from
        // its journal left there into the database first.
        if !cfg.answers_from_journal() {
            recover_with(&cfg, clock.clone(), metrics.clone())?;
        }
        Store::open_without_recovery(cfg, clock, metrics)
    }

    /// [`Store::open`] past the recovery of a journal the store does not answer from.
    fn open_without_recovery(
        cfg: StoreConfig,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Store, OpenError> {
        let keyring = open_keyring(&cfg)?;
        let signer = Arc::new(integrity::load_signing_key(&cfg.signing_key)?);
        let postgres = match &cfg.backend {
            crate::config::Backend::Sqlite => {
                std::fs::create_dir_all(&cfg.path).map_err(|source| OpenError::Dir {
                    path: cfg.path.clone(),
                    source,
                })?;
                None
            }
            crate::config::Backend::Postgres(pg) => Some(pgstore::target(&cfg, pg, &signer)?),
        };
        // The writer's connection made now, and this node's lock taken with it: a
        // second process under this node's name does not start.
        let sink = match &postgres {
            Some(target) => {
                let mut sink = pgstore::PgSink::new(target.clone());
                sink.connect_owning(std::time::Duration::from_secs(3))?;
                Some(sink)
            }
            None => None,
        };
        if let Some(target) = &postgres {
            for warning in pglookup::server_warnings(&target.pool, &cfg) {
                tracing::warn!("{warning}");
            }
        }
        let files = postgres.is_none();
        let journaled = cfg.answers_from_journal();
        let signals = Arc::new(writer::Signals::default());
        let enqueue_timeout = cfg.enqueue_timeout;
        let (tx, handle) = writer::spawn(
            writer::WriterConfig {
                store_dir: cfg.path.clone(),
                sync: cfg.sync,
                cache_mib: cfg.cache_mib,
                batch_max: cfg.batch_max,
                queue_capacity: cfg.queue_capacity,
                checkpoint_rows: writer::CHECKPOINT_ROWS,
                signals: signals.clone(),
                signer: Some(signer),
                clock: clock.clone(),
                journal: journaled.then(|| cfg.path.join(JOURNAL_DIR)),
                expired: files.then(|| writer::Expired {
                    keyring: cfg.keyring.clone(),
                    retention: cfg.retention,
                }),
                postgres: sink,
            },
            metrics.clone(),
        )
        .map_err(OpenError::Thread)?;
        Ok(Store {
            recorder: Recorder {
                inner: Arc::new(Inner {
                    cfg,
                    keyring,
                    route: batch::Route {
                        tx,
                        signals,
                        wait: enqueue_timeout,
                    },
                    metrics,
                    clock,
                    ids: SubmissionIds::default(),
                    current: Mutex::new(None),
                    key_io: Default::default(),
                    pg: postgres,
                }),
            },
            writer: Mutex::new(Some(handle)),
        })
    }

    pub fn recorder(&self) -> Recorder {
        self.recorder.clone()
    }

    /// Creates (durably) and caches the keys of the partition holding `now` and of the
    /// next one (on PostgreSQL, their tables too), so that the first message of a day does not create key files, with
    /// their fsyncs, on a request thread. Keys of a day that then sees no traffic are
    /// removed by expiry like any others.
    pub fn prepare_keys(&self, now: chrono::DateTime<chrono::Utc>) -> Result<(), KeyError> {
        let inner = &self.recorder.inner;
        let current = PartitionId::containing(inner.cfg.partition, now.timestamp_micros());
        inner.keyring.keys_or_create(current)?;
        inner.keyring.keys_or_create(current.next())?;
        if let Some(pg) = &inner.pg {
            // And on PostgreSQL, their tables: made ahead of traffic, by whichever
            // node gets there first.
            let mut client = pg.pool.get()?;
            for p in [current, current.next()] {
                crate::pg::schema::ensure_partition(&mut client, p, now.timestamp_micros())?;
            }
        }
        Ok(())
    }

    /// Runs expiry through this store's own keyring, so that the keys it shreds leave
    /// this process's memory too.
    pub fn expire(
        &self,
        actor: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<expiry::Plan, expiry::ExpiryError> {
        let inner = &self.recorder.inner;
        let plan = expiry::run(&inner.cfg, &inner.keyring, actor, now)?;
        let mut current = inner.current.lock().unwrap_or_else(|p| p.into_inner());
        if current
            .as_ref()
            .is_some_and(|k| plan.expire.iter().any(|(p, _)| *p == k.partition()))
        {
            *current = None;
        }
        Ok(plan)
    }

    /// Drops the keys this store's keyring read longer ago than their time to live.
    pub fn forget_stale_keys(&self) {
        self.recorder.inner.keyring.forget_stale();
    }

    /// Compacts the partitions whose period is over (see [`compact`]) with this
    /// store's keyring; blocking, for a thread of its own.
    pub fn compact_due(
        &self,
        stop: &dyn Fn() -> bool,
    ) -> Vec<(
        PartitionId,
        Result<compact::Compacted, compact::CompactError>,
    )> {
        let inner = &self.recorder.inner;
        if let Some(pg) = &inner.pg {
            return pgstore::index_closed_due(
                &pg.pool,
                inner.cfg.partition,
                inner.clock.now_micros(),
                stop,
            )
            .into_iter()
            .map(|(p, r)| (p, r.map_err(compact::CompactError::from)))
            .collect();
        }
        compact::compact_due(
            &inner.cfg.path,
            &inner.keyring,
            inner.clock.now_micros(),
            stop,
        )
    }

    /// Commits everything queued so far, stops the writer and waits for it. Later
    /// submissions get [`RecordError::Closed`].
    pub async fn close(&self) {
        self.recorder.inner.route.signals.request_stop();
        let _ = self.recorder.inner.route.tx.send(Job::Stop).await;
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    /// Blocking variant of [`Store::close`], for the CLI and benches.
    pub fn close_blocking(&self) {
        self.recorder.inner.route.signals.request_stop();
        let _ = self.recorder.inner.route.tx.blocking_send(Job::Stop);
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Recorder {
    /// Journal frames the relay's threads appended themselves (see `front`).
    #[cfg(test)]
    fn relay_frames(&self) -> u64 {
        self.inner.metrics.journal_relay_frames.get()
    }

    /// Makes every journal append fail, or work again.
    #[cfg(test)]
    fn fail_journal_appends(&self, fail: bool) {
        if let Some(appender) = self.inner.route.signals.appender.get() {
            appender.fail_appends(fail);
        }
    }

    /// The store's keyring: readers in the same process use it, so that a shred
    /// (expiry) drops the keys they hold at once, and `serve` sweeps what they read.
    pub fn keyring(&self) -> &Keyring {
        &self.inner.keyring
    }

    pub fn now(&self) -> Micros {
        self.inner.clock.now_micros()
    }

    pub fn next_submission_id(&self, at: Micros) -> SubmissionId {
        self.inner.ids.next(at)
    }

    /// The keys of `partition` if they are the ones cached: the hot path's lookup.
    fn cached_keys(&self, partition: PartitionId) -> Option<Arc<PartitionKeys>> {
        let current = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .filter(|k| k.partition() == partition)
            .cloned()
    }

    fn cache_keys(&self, keys: &Arc<PartitionKeys>) {
        *self.inner.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(keys.clone());
    }

    /// The keys of `partition`, read or created (file I/O and fsyncs) on this thread.
    /// For blocking callers; async ones use [`Recorder::keys_async`].
    fn keys_for(&self, partition: PartitionId) -> Result<Arc<PartitionKeys>, KeyError> {
        if let Some(k) = self.cached_keys(partition) {
            return Ok(k);
        }
        let keys = self.inner.keyring.keys_or_create(partition)?;
        self.cache_keys(&keys);
        Ok(keys)
    }

    /// The keys of `partition`. A miss in both caches (the first message of a partition
    /// whose keys `prepare_keys` did not make ahead) reads or creates the key file on a
    /// blocking thread: a slow disk then holds the submissions of that partition, not
    /// the runtime's workers and every client on them. One such file access runs at a
    /// time (the gate goes with it onto the blocking thread, so a stalled disk ties up
    /// one thread, not one per waiting request), and a submission waits for it at most
    /// [`COMMIT_TIMEOUT`], then fails closed (`keys`).
    async fn keys_async(&self, partition: PartitionId) -> Result<Arc<PartitionKeys>, KeyError> {
        if let Some(k) = self.cached_keys(partition) {
            return Ok(k);
        }
        if let Some(k) = self.inner.keyring.cached(partition) {
            self.cache_keys(&k);
            return Ok(k);
        }
        let load = async {
            let gate = self.inner.key_io.clone().lock_owned().await;
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || {
                let keys = inner.keyring.keys_or_create(partition);
                drop(gate);
                keys
            })
            .await
        };
        let keys = match tokio::time::timeout(COMMIT_TIMEOUT, load).await {
            Err(_) => return Err(KeyError::TimedOut(COMMIT_TIMEOUT)),
            Ok(Err(join)) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Ok(Err(_)) => return Err(KeyError::Cancelled),
            Ok(Ok(keys)) => keys?,
        };
        self.cache_keys(&keys);
        Ok(keys)
    }

    fn partition_of(&self, at: Micros) -> PartitionId {
        PartitionId::containing(self.inner.cfg.partition, at)
    }

    /// Seals a submission into rows: blind indexes and AEAD, no I/O beyond reading or
    /// creating a new partition's keys (on this thread).
    pub fn seal(&self, sub: &Submission) -> Result<(PartitionId, Vec<Row>), KeyError> {
        let partition = self.partition_of(sub.at);
        let keys = self.keys_for(partition)?;
        Ok((partition, self.seal_with(sub, &keys)?))
    }

    /// Seals a submission with its partition's keys: no I/O.
    fn seal_with(&self, sub: &Submission, keys: &PartitionKeys) -> Result<Vec<Row>, KeyError> {
        let mut rows = Vec::with_capacity(sub.recipients.len());
        self.seal_into(sub, keys, &mut rows)?;
        Ok(rows)
    }

    /// Seals a submission's rows onto `rows`. The sender's blind indexes (account, IP,
    /// originator) are made once for the messages a sender sends in a row on this
    /// thread (see [`SenderTags`]).
    fn seal_into(
        &self,
        sub: &Submission,
        keys: &PartitionKeys,
        rows: &mut Vec<Row>,
    ) -> Result<(), KeyError> {
        let (account_ix, ip_ix, originator_ix) = SenderTags::of(sub, keys);
        let bucket = keys.bucket(sub.at);
        for rec in sub.records() {
            let sealed = PLAIN.with_borrow_mut(|plain| {
                let before = plain.capacity();
                // Room first: a buffer that grew while the record was encoded would
                // leave the part written so far in the blocks it let go.
                plain.reserve(
                    PLAIN_FIXED
                        + sub.account.len()
                        + sub.originator.as_ref().map_or(0, |o| o.value.len())
                        + rec.recipient.value.len(),
                );
                let room = plain.capacity();
                codec::encode(&rec, plain);
                debug_assert_eq!(plain.capacity(), room, "a record outgrew its room");
                let sealed = keys.seal(&codec::record_aad(sub.id, rec.ordinal), plain);
                // The plaintext names the recipient: zeroed (writes the compiler may
                // not leave out) before it is kept or let go. All of the room when it
                // is new (it may hold what the allocator's last user left); otherwise
                // only what this record wrote: `encode` writes within the length, in
                // the room reserved above, and the rest was zeroed before.
                if room != before {
                    zeroize::Zeroize::zeroize(plain);
                } else {
                    zeroize::Zeroize::zeroize(plain.as_mut_slice());
                    plain.clear();
                }
                if plain.capacity() > PLAIN_KEPT {
                    *plain = Vec::new();
                }
                sealed
            })?;
            rows.push(Row {
                submission: sub.id.0,
                ordinal: rec.ordinal,
                at_us: sub.at,
                bucket,
                protocol: sub.protocol as u8,
                service: sub.service as u8,
                recipient_form: rec.recipient.form as u8,
                segments: sub.segments,
                account_ix,
                ip_ix,
                originator_ix,
                recipient_ix: keys.blind_index(IndexKind::Recipient, &rec.recipient.index_value()),
                sealed,
                leaf: [0; 32],
            });
            if let Some(row) = rows.last_mut() {
                row.leaf = integrity::record_leaf(row);
            }
        }
        Ok(())
    }

    /// Records a submission. In `record-before-forward` mode it returns once the rows
    /// are committed (waiting at most `enqueue-timeout` for room in the queue plus
    /// `COMMIT_TIMEOUT`); in `async` mode once they are queued (at most
    /// `enqueue-timeout`).
    pub async fn record(&self, sub: &Submission) -> Result<(), RecordError> {
        self.record_many(std::slice::from_ref(sub)).await
    }

    /// Records submissions of one partition together (see
    /// [`Recorder::same_partition`]): in one job (durable: with the other submissions
    /// this thread seals in the same pass, see [`batch`]) and one commit, all or
    /// none. At most [`Recorder::batch_cap`] at once. Submissions of several
    /// partitions are refused (`Internal`: a caller's bug), nothing recorded.
    pub async fn record_many(&self, subs: &[Submission]) -> Result<(), RecordError> {
        let Some(first) = subs.first() else {
            return Ok(());
        };
        let partition = self.partition_of(first.at);
        if subs.iter().any(|s| self.partition_of(s.at) != partition) {
            debug_assert!(false, "a batch of several partitions");
            return Err(RecordError::Internal);
        }
        let keys = self.keys_async(partition).await?;
        // No await from here until the rows are in the batch. The thread's spare
        // vector is taken here; a joiner's rows move into the open batch and the room
        // they leave is given back below (an opener's vector becomes the batch's, and
        // async rows go in their job: the next call then starts a new one).
        let mut rows = ROWS.take();
        rows.clear();
        rows.reserve(subs.iter().map(|s| s.recipients.len()).sum());
        let sealing = subs
            .iter()
            .try_for_each(|sub| self.seal_into(sub, &keys, &mut rows));
        if let Err(e) = sealing {
            rows.clear();
            keep_rows(rows);
            return Err(e.into());
        }
        if self.inner.cfg.durability != Durability::RecordBeforeForward {
            return self.enqueue(Job::records(partition, rows, None)).await;
        }
        // Durable: gathered with the other submissions this thread seals before it
        // next polls for I/O, then committed together (see `batch`).
        let sealed = std::time::Instant::now();
        let (waiter, owner) = batch::join(
            partition,
            &mut rows,
            subs.len(),
            self.inner.cfg.batch_max,
            &self.inner.route,
        );
        keep_rows(rows);
        if let Some(owner) = owner {
            tokio::task::yield_now().await;
            owner.queue();
        }
        let answer = waiter.wait(COMMIT_TIMEOUT).await;
        self.inner
            .metrics
            .durable_wait_seconds
            .observe(sealed.elapsed().as_secs_f64());
        match answer {
            Some(Ok(())) => Ok(()),
            Some(Err(batch::BatchError::Write(e))) => Err(RecordError::Commit(e)),
            Some(Err(batch::BatchError::QueueFull)) => Err(RecordError::QueueFull),
            Some(Err(batch::BatchError::Closed)) => Err(RecordError::Closed),
            None => Err(RecordError::Timeout(self.inner.route.wait + COMMIT_TIMEOUT)),
        }
    }

    /// Whether two times fall in one partition (one batch, one commit).
    pub fn same_partition(&self, a: Micros, b: Micros) -> bool {
        self.partition_of(a) == self.partition_of(b)
    }

    /// The most submissions a caller records at once (with an outcome place kept for
    /// each): a small share of the writer's queue, so that one batch always fits.
    pub fn batch_cap(&self) -> usize {
        (self.inner.cfg.queue_capacity / 8).clamp(1, 256)
    }

    /// Blocking variant of [`Recorder::record`], never durable-waiting: for the bench
    /// and tools that fill a store. Use [`Recorder::barrier_blocking`] to wait.
    pub fn record_blocking(&self, sub: &Submission) -> Result<(), RecordError> {
        let (partition, rows) = self.seal(sub)?;
        self.inner
            .route
            .tx
            .blocking_send(Job::records(partition, rows, None))
            .map_err(|_| RecordError::Closed)
    }

    /// Appends an outcome event. Waits for queue space (bounded), not for the commit.
    /// The relay uses [`Recorder::reserve_outcome`] instead, so that a full queue can
    /// never leave a forwarded message without its outcome.
    pub async fn record_outcome(&self, ev: &OutcomeEvent) -> Result<(), RecordError> {
        let job = self.sealed_outcome(ev).await?;
        self.enqueue(job).await
    }

    /// Keeps one place in the writer's queue for a message's outcome event, before its
    /// records are queued: however full the queue gets while the message is forwarded,
    /// its outcome goes in. Waits for the place as long as a record would
    /// (`enqueue-timeout`); a relay that cannot get one fails closed.
    pub async fn reserve_outcome(&self) -> Result<OutcomeSlot, RecordError> {
        // A place free now (the queue is not full: nearly always) is taken without the
        // timeout (a clock read and a timer built and dropped).
        match self.inner.route.tx.clone().try_reserve_owned() {
            Ok(permit) => return Ok(self.slot_of(permit)),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(RecordError::Closed),
            Err(mpsc::error::TrySendError::Full(_)) => {}
        }
        match tokio::time::timeout(self.inner.route.wait, self.slot()).await {
            Ok(slot) => slot,
            Err(_) => Err(RecordError::QueueFull),
        }
    }

    /// [`Recorder::reserve_outcome`] for `n` outcomes, all within one `enqueue-timeout`.
    pub async fn reserve_outcomes(&self, n: usize) -> Result<Vec<OutcomeSlot>, RecordError> {
        let reserve = async {
            let mut slots = Vec::with_capacity(n);
            for _ in 0..n {
                slots.push(self.slot().await?);
            }
            Ok(slots)
        };
        match tokio::time::timeout(self.inner.route.wait, reserve).await {
            Ok(slots) => slots,
            Err(_) => Err(RecordError::QueueFull),
        }
    }

    /// One place in the writer's queue, however long it takes.
    async fn slot(&self) -> Result<OutcomeSlot, RecordError> {
        let permit = self.inner.route.tx.clone().reserve_owned().await;
        Ok(self.slot_of(permit.map_err(|_| RecordError::Closed)?))
    }

    fn slot_of(&self, permit: mpsc::OwnedPermit<Job>) -> OutcomeSlot {
        OutcomeSlot {
            permit,
            recorder: self.clone(),
        }
    }

    /// An outcome event as a job, its upstream message id sealed.
    async fn sealed_outcome(&self, ev: &OutcomeEvent) -> Result<Job, RecordError> {
        let partition = self.partition_of(ev.submitted_at);
        let keys = match &ev.upstream_message_id {
            Some(_) => Some(self.keys_async(partition).await?),
            None => None,
        };
        self.outcome_job(ev, partition, keys.as_deref())
    }

    /// An outcome event as a job; `keys` seal the upstream message id, if there is one.
    fn outcome_job(
        &self,
        ev: &OutcomeEvent,
        partition: PartitionId,
        keys: Option<&PartitionKeys>,
    ) -> Result<Job, RecordError> {
        let message_id_sealed = match (&ev.upstream_message_id, keys) {
            (Some(id), Some(keys)) => {
                Some(keys.seal(&codec::outcome_aad(ev.submission), id.as_bytes())?)
            }
            _ => None,
        };
        let mut row = OutcomeRow {
            submission: ev.submission.0,
            at_us: ev.at,
            outcome: ev.outcome as u8,
            upstream_status: ev.upstream_status,
            gateway_code: ev.gateway_code,
            message_id_sealed,
            enhanced_status: ev.enhanced_status.clone(),
            size_bytes: ev.size_bytes,
            ordinal: ev.ordinal,
            receipt_state: ev.receipt.as_ref().and_then(|r| r.state.clone()),
            receipt_error: ev.receipt.as_ref().and_then(|r| r.error.clone()),
            receipt_done: ev.receipt.as_ref().and_then(|r| r.done.clone()),
            leaf: [0; 32],
        };
        row.leaf = integrity::outcome_leaf(&row);
        Ok(Job::outcome(partition, row))
    }

    /// Waits until everything queued before this call is committed.
    pub async fn barrier(&self) -> Result<(), RecordError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Job::Barrier(tx)).await?;
        self.inner.route.signals.durable_queued();
        rx.await
            .map_err(|_| RecordError::Closed)?
            .map_err(RecordError::from)
    }

    pub fn barrier_blocking(&self) -> Result<(), RecordError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .route
            .tx
            .blocking_send(Job::Barrier(tx))
            .map_err(|_| RecordError::Closed)?;
        self.inner.route.signals.durable_queued();
        rx.blocking_recv()
            .map_err(|_| RecordError::Closed)?
            .map_err(RecordError::from)
    }

    async fn enqueue(&self, job: Job) -> Result<(), RecordError> {
        use mpsc::error::SendTimeoutError;
        match self
            .inner
            .route
            .tx
            .send_timeout(job, self.inner.route.wait)
            .await
        {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(_)) => Err(RecordError::QueueFull),
            Err(SendTimeoutError::Closed(_)) => Err(RecordError::Closed),
        }
    }

    /// False once the writer thread has stopped (shutdown, or a crash): every record
    /// is then refused and the relay fails closed.
    pub fn writer_alive(&self) -> bool {
        !self.inner.route.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Form, Identifier};
    use crate::clock::{Clock, ManualClock};
    use crate::config::{StoreConfig, SyncMode};
    use crate::record::{Outcome, Protocol, Service};
    use chrono::TimeZone;
    use std::net::{IpAddr, Ipv4Addr};

    fn at(h: u32, m: u32, s: u32) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc.with_ymd_and_hms(2026, 11, 22, h, m, s).unwrap()
    }

    fn submission(rec: &Recorder, at_us: Micros, account: &str, number: &str) -> Submission {
        Submission {
            smpp: None,
            id: rec.next_submission_id(at_us),
            at: at_us,
            protocol: Protocol::Http,
            service: Service::Sms,
            account: account.into(),
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            client_port: 4000,
            originator: None,
            segments: 1,
            recipients: vec![Identifier {
                form: Form::E164,
                value: number.into(),
            }],
        }
    }

    /// A store made afresh under `cfg` (keys and all), on a clock at 10:00.
    fn open_at_ten(cfg: &StoreConfig) -> (ManualClock, Store) {
        init_keys(cfg).unwrap();
        let clock = ManualClock::new(at(10, 0, 0));
        let store = open(cfg, &clock);
        (clock, store)
    }

    fn open(cfg: &StoreConfig, clock: &ManualClock) -> Store {
        Store::open(
            cfg.clone(),
            Arc::new(clock.clone()),
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    fn lookup(
        cfg: &StoreConfig,
        kind: IndexKind,
        value: &str,
    ) -> (Vec<query::Found>, query::QueryStats) {
        lookup_with(cfg, kind, value, true)
    }

    /// [`lookup`], with or without letting filters rule partitions out.
    fn lookup_with(
        cfg: &StoreConfig,
        kind: IndexKind,
        value: &str,
        filters: bool,
    ) -> (Vec<query::Found>, query::QueryStats) {
        let keyring = open_keyring(cfg).unwrap();
        let criteria = query::Criteria {
            kind,
            value: value.into(),
            since: 0,
            until: i64::MAX / 2,
            filters,
        };
        let mut out = Vec::new();
        let stats = query::run(cfg, &keyring, &criteria, |f| out.push(f)).unwrap();
        (out, stats)
    }

    /// A time at which the test days' partitions (22–24 November 2026) are due for
    /// compaction.
    fn compaction_time() -> Micros {
        chrono::Utc
            .with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
            .unwrap()
            .timestamp_micros()
    }

    fn find(cfg: &StoreConfig, kind: IndexKind, value: &str) -> Vec<query::Found> {
        lookup(cfg, kind, value).0
    }

    fn indexed_through(cfg: &StoreConfig, day: &str) -> i64 {
        let conn = schema::open_for_read(&cfg.path.join(format!("{day}.sqlite"))).unwrap();
        conn.query_row(schema::GET_INDEXED_THROUGH, [], |r| r.get(0))
            .unwrap()
    }

    /// A store (whose recorder seals the rows) and a writer of its own beside it,
    /// writing under `dir/other`, with the Merkle tree and signed heads if `signed`.
    struct SideWriter {
        dir: tempfile::TempDir,
        store: Store,
        tx: mpsc::Sender<Job>,
        writer: std::thread::JoinHandle<()>,
    }

    impl SideWriter {
        fn start(checkpoint_rows: u64, signed: bool) -> SideWriter {
            let dir = tempfile::tempdir().unwrap();
            let cfg = StoreConfig::under(dir.path());
            init_keys(&cfg).unwrap();
            let signer =
                signed.then(|| Arc::new(integrity::load_signing_key(&cfg.signing_key).unwrap()));
            let clock = ManualClock::new(at(10, 0, 0));
            let store = open(&cfg, &clock);
            let (tx, writer) = writer::spawn(
                writer::WriterConfig {
                    store_dir: dir.path().join("other"),
                    sync: cfg.sync,
                    cache_mib: cfg.cache_mib,
                    batch_max: 64,
                    queue_capacity: 1024,
                    checkpoint_rows,
                    signals: Default::default(),
                    signer,
                    clock: Arc::new(clock),
                    journal: None,
                    expired: None,
                    postgres: None,
                },
                Arc::new(Metrics::new()),
            )
            .unwrap();
            SideWriter {
                dir,
                store,
                tx,
                writer,
            }
        }

        fn file(&self) -> std::path::PathBuf {
            self.dir.path().join("other").join("2026-11-22.sqlite")
        }

        async fn stop(self) {
            self.tx.send(Job::Stop).await.unwrap();
            let writer = self.writer;
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .unwrap()
                .unwrap();
            self.store.close().await;
        }
    }

    /// A record's plaintext names its recipient: the thread's buffer it is encoded in
    /// is zeroed once it is sealed, and kept for the next record.
    #[tokio::test]
    async fn sealing_leaves_no_plaintext_behind() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        let (_, store) = open_at_ten(&cfg);
        let rec = store.recorder();
        let sub = submission(
            &rec,
            at(10, 0, 0).timestamp_micros(),
            "acct",
            "+31612345678",
        );
        let mut plain = Vec::new();
        codec::encode(&sub.records().next().unwrap(), &mut plain);
        assert!(plain.windows(9).any(|w| w == b"612345678"), "{plain:?}");
        rec.seal(&sub).unwrap();
        let whole_room_is_zero = || {
            PLAIN.with_borrow(|kept| {
                assert!(kept.is_empty());
                // SAFETY: this thread's buffer had new room for its first record and
                // for the long one below, and new room is zeroed whole once the
                // record is sealed; what later records write is zeroed too: every
                // byte up to the capacity is initialised.
                let room = unsafe { std::slice::from_raw_parts(kept.as_ptr(), kept.capacity()) };
                assert!(room.iter().all(|&b| b == 0), "{room:?}");
                (kept.as_ptr(), kept.capacity())
            })
        };
        let (_, capacity) = whole_room_is_zero();
        assert!(capacity >= plain.len());
        // A long record (new room), then a short one in the same room: none of either
        // is left, up to the capacity.
        let t = at(10, 0, 1).timestamp_micros();
        let long = submission(&rec, t, "an-account-with-a-long-name", "+31612345678");
        rec.seal(&long).unwrap();
        let after_long = whole_room_is_zero();
        rec.seal(&submission(&rec, t, "a", "+31612345678")).unwrap();
        assert_eq!(
            whole_room_is_zero(),
            after_long,
            "the same block, not grown"
        );
        store.close().await;
    }

    /// The checkpointer copies the WAL into the partition file while the writer keeps
    /// it open: without it the file would hold only the schema until the backstop
    /// checkpoint at 65,536 pages.
    #[tokio::test]
    async fn checkpointer_copies_the_wal_beside_the_writer() {
        let side = SideWriter::start(256, false);
        let (rec, tx, file) = (side.store.recorder(), side.tx.clone(), side.file());
        for i in 0..4_000 {
            let t = at(10, 0, 0).timestamp_micros() + i;
            let (partition, rows) = rec
                .seal(&submission(&rec, t, "acct", "+31612345678"))
                .unwrap();
            tx.send(Job::records(partition, rows, None)).await.unwrap();
        }
        let (done, answer) = oneshot::channel();
        tx.send(Job::Barrier(done)).await.unwrap();
        answer.await.unwrap().unwrap();
        // The checkpointer runs on its own thread: give it a moment, bounded.
        let mut size = 0;
        for _ in 0..100 {
            size = std::fs::metadata(&file).unwrap().len();
            if size > 64 * 1024 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            size > 64 * 1024,
            "partition file still {size} bytes: WAL not checkpointed"
        );
        drop(tx);
        side.stop().await;
    }

    /// A commit that fails part-way leaves nothing of itself: not when a record id
    /// is already taken (only rows put in from outside the writer can do that; the
    /// insert ends the transaction), nor when a later statement of the commit is
    /// refused (the transaction is rolled back). The waiter gets the error, an outcome
    /// no one waits on is tried again, the next batch reopens the partition and goes
    /// in after the stranger, and the signed tree still verifies.
    #[tokio::test]
    async fn a_commit_that_fails_part_way_leaves_nothing_and_the_next_goes_in() {
        let side = SideWriter::start(writer::CHECKPOINT_ROWS, true);
        let (rec, tx) = (side.store.recorder(), side.tx.clone());
        let mut sealed = 0i64;
        let mut seal = |rows: usize| {
            let mut all = Vec::new();
            let mut partition = None;
            for _ in 0..rows {
                sealed += 1;
                let t = at(10, 0, 0).timestamp_micros() + sealed;
                let (p, r) = rec
                    .seal(&submission(&rec, t, "acct", "+31612345678"))
                    .unwrap();
                partition = Some(p);
                all.extend(r);
            }
            (partition.unwrap(), all)
        };
        let write = |(partition, rows): (partition::PartitionId, Vec<Row>)| {
            let tx = tx.clone();
            async move {
                let (done, answer) = oneshot::channel();
                tx.send(Job::records(partition, rows, Some(writer::Done::One(done))))
                    .await
                    .unwrap();
                answer.await.unwrap()
            }
        };
        write(seal(1)).await.unwrap();
        let outside = rusqlite::Connection::open(side.file()).unwrap();
        let ids = |table: &str| -> Vec<i64> {
            let id = if table == "outcome_block" {
                "first"
            } else {
                "id"
            };
            let mut stmt = outside
                .prepare(&format!("SELECT {id} FROM {table} ORDER BY {id}"))
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        // Id 4 taken: the commit of ids 2, 3 (one statement) and 4 (the next) fails.
        outside
            .execute_batch(
                "INSERT INTO record SELECT 4, submission, ordinal, at_us, bucket, protocol, service, \
                 recipient_form, segments, account_ix, ip_ix, originator_ix, recipient_ix, sealed \
                 FROM record WHERE id = 1",
            )
            .unwrap();
        let err = write(seal(3)).await.unwrap_err();
        assert!(
            matches!(
                err,
                writer::WriteError::Sqlite {
                    code: rusqlite::ErrorCode::ConstraintViolation,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(ids("record"), [1, 4], "nothing of the failed commit stays");
        // Outcomes refused: a record and an outcome committed together fail together.
        outside
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON outcome_block BEGIN SELECT RAISE(ABORT, 'refused'); END",
            )
            .unwrap();
        let (partition, rows) = seal(1);
        let mut event = rows::OutcomeRow::bare(
            rows[0].submission,
            rows[0].at_us,
            crate::record::Outcome::Accepted as u8,
        );
        event.upstream_status = Some(202);
        event.leaf = integrity::outcome_leaf(&event);
        tx.send(Job::outcome(partition, event)).await.unwrap();
        assert!(write((partition, rows)).await.is_err());
        assert_eq!(ids("record"), [1, 4], "the record went with its outcome");
        outside.execute_batch("DROP TRIGGER refuse").unwrap();
        write(seal(2)).await.unwrap();
        assert_eq!(ids("record"), [1, 4, 5, 6], "ids go on after the stranger");
        assert_eq!(ids("outcome_block"), [1], "the outcome was tried again");
        assert_eq!(ids("outcome"), Vec::<i64>::new(), "in its block, not a row");
        // The stranger is no leaf of the tree; everything the writer wrote is, so
        // verify finds the rows it folds hash to the signed roots (nothing `Changed`),
        // and reads the ids passed over for the stranger, once it is gone, as removed.
        outside
            .execute("DELETE FROM record WHERE id = 4", [])
            .unwrap();
        let (done, answer) = oneshot::channel();
        tx.send(Job::Barrier(done)).await.unwrap();
        answer.await.unwrap().unwrap();
        let public =
            integrity::load_public_key(&StoreConfig::under(side.dir.path()).signing_key).unwrap();
        let verified = integrity::verify(&outside, partition, &public, i64::MAX / 2);
        assert_eq!(
            verified.damage,
            [integrity::Damage::Removed {
                table: "record",
                ids: vec![2, 3, 4]
            }]
        );
        assert_eq!((verified.records, verified.outcomes), (3, 1));
        drop(tx);
        side.stop().await;
    }

    /// Records in many buckets and across midnight are found through the index runs,
    /// through the unindexed tail, and through both at once; a 1-byte index collides
    /// constantly and still returns exactly the matching records.
    #[tokio::test]
    async fn index_runs_and_tail_find_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::under(dir.path());
        cfg.index_bytes = 1;
        init_keys(&cfg).unwrap();
        let clock = ManualClock::new(at(23, 50, 0));
        let store = open(&cfg, &clock);
        let rec = store.recorder();
        // 20 minutes across midnight, a record every 30 s, alternating two numbers.
        for i in 0..40 {
            let t = at(23, 50, 0).timestamp_micros() + i * 30_000_000;
            let n = if i % 2 == 0 {
                "+31612345678"
            } else {
                "+31687654321"
            };
            rec.record(&submission(&rec, t, &format!("acct{}", i % 3), n))
                .await
                .unwrap();
        }
        store.close().await;
        assert!(
            indexed_through(&cfg, "2026-11-22") > 0,
            "closing flushes the index"
        );
        let before = find(&cfg, IndexKind::Recipient, "+31612345678");
        assert_eq!(before.len(), 20);
        assert_eq!(
            before
                .iter()
                .filter(|f| f.partition.to_string() == "2026-11-23")
                .count(),
            10
        );
        assert!(before.windows(2).all(|w| w[0].at < w[1].at), "time order");

        // Reopen and add more without flushing: now index runs and a tail together.
        let store = open(&cfg, &clock);
        let rec = store.recorder();
        let late = at(23, 59, 59).timestamp_micros() + 2_000_000; // 00:00:01 next day
        rec.record(&submission(&rec, late, "acct9", "+31612345678"))
            .await
            .unwrap();
        // Journaled; queries see it once ingested.
        rec.barrier().await.unwrap();
        let through = indexed_through(&cfg, "2026-11-23");
        let all = find(&cfg, IndexKind::Recipient, "+31612345678");
        assert_eq!(all.len(), 21);
        assert!(
            all.iter().any(|f| f.record_id > through),
            "one comes from the tail"
        );
        assert_eq!(find(&cfg, IndexKind::Account, "acct9").len(), 1);
        assert_eq!(find(&cfg, IndexKind::Account, "acct0").len(), 14);
        assert_eq!(find(&cfg, IndexKind::ClientIp, "192.0.2.1").len(), 41);
        assert!(find(&cfg, IndexKind::Recipient, "+31600000000").is_empty());
        store.close().await;
    }

    /// A lookup gives each record its latest outcome and its latest receipt, with the
    /// message id of that outcome; an event about another recipient of the submission
    /// is not this one's.
    #[tokio::test]
    async fn a_lookup_gives_the_latest_outcome_and_receipt() {
        use crate::record::{Outcome, OutcomeEvent, Receipt};
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        let (_, store) = open_at_ten(&cfg);
        let rec = store.recorder();
        let t = at(10, 0, 0).timestamp_micros();
        let mut sub = submission(&rec, t, "acct", "+31612345678");
        sub.recipients.push(Identifier {
            form: Form::E164,
            value: "+31687654321".into(),
        });
        rec.record(&sub).await.unwrap();
        let event = |n: i64, outcome, id: Option<&str>, ordinal, state: Option<&str>| {
            let mut ev = OutcomeEvent::new(sub.id, t, t + n, outcome);
            ev.upstream_message_id = id.map(Into::into);
            ev.ordinal = ordinal;
            ev.receipt = state.map(|s| Receipt {
                state: Some(s.into()),
                error: None,
                done: None,
            });
            ev
        };
        for ev in [
            event(1, Outcome::Failed, Some("first"), None, None),
            event(2, Outcome::Receipt, None, Some(0), Some("ENROUTE")),
            event(3, Outcome::Accepted, Some("second"), None, None),
            event(4, Outcome::Receipt, None, Some(0), Some("DELIVRD")),
            // About the other recipient only.
            event(5, Outcome::Rejected, None, Some(1), None),
            event(6, Outcome::Receipt, None, Some(1), Some("UNDELIV")),
        ] {
            rec.record_outcome(&ev).await.unwrap();
        }
        store.close().await;
        let (found, _) = lookup(&cfg, IndexKind::Recipient, "+31612345678");
        assert_eq!(found.len(), 1);
        let outcome = found[0].outcome.as_ref().expect("an outcome");
        assert_eq!(
            (
                outcome.outcome,
                outcome.at,
                outcome.upstream_message_id.as_deref()
            ),
            (Outcome::Accepted, t + 3, Some("second"))
        );
        let receipt = found[0].receipt.as_ref().expect("a receipt");
        assert_eq!(
            (receipt.at, receipt.state.as_deref()),
            (t + 4, Some("DELIVRD"))
        );
        let (other, _) = lookup(&cfg, IndexKind::Recipient, "+31687654321");
        let outcome = other[0].outcome.as_ref().expect("an outcome");
        assert_eq!(
            (outcome.outcome, outcome.upstream_message_id.as_deref()),
            (Outcome::Rejected, None)
        );
        assert_eq!(
            other[0].receipt.as_ref().and_then(|r| r.state.as_deref()),
            Some("UNDELIV")
        );
    }

    /// Compacted partitions answer exactly as before; a partition without the
    /// identifier is ruled out by its filter; a record that comes into a compacted
    /// partition takes its filter away and is found; a damaged filter is searched
    /// around, and said so.
    #[tokio::test]
    async fn compacted_partitions_answer_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        let (clock, store) = open_at_ten(&cfg);
        let rec = store.recorder();
        let hour = 3_600_000_000i64;
        // 60 hours from 10:00 on the 22nd: three days' partitions.
        for i in 0..60i64 {
            let t = at(10, 0, 0).timestamp_micros() + i * hour;
            let n = match i {
                0 => "+31611111111",
                _ if i % 2 == 0 => "+31612345678",
                _ => "+31687654321",
            };
            rec.record(&submission(&rec, t, &format!("acct{}", i % 4), n))
                .await
                .unwrap();
        }
        store.close().await;
        let asked = [
            (IndexKind::Recipient, "+31612345678"),
            (IndexKind::Recipient, "+31687654321"),
            (IndexKind::Recipient, "+31611111111"),
            (IndexKind::Account, "acct1"),
            (IndexKind::ClientIp, "192.0.2.1"),
            (IndexKind::Recipient, "+31600000000"),
        ];
        let before: Vec<_> = asked.iter().map(|&(k, v)| lookup(&cfg, k, v).0).collect();
        assert_eq!(before[0].len() + before[1].len() + before[2].len(), 60);

        let keyring = open_keyring(&cfg).unwrap();
        let later = compaction_time();
        let not_yet = compact::compact_due(
            &cfg.path,
            &keyring,
            at(23, 0, 0).timestamp_micros(),
            &|| false,
        );
        assert!(
            not_yet.is_empty(),
            "nothing is due before its day is over: {not_yet:?}"
        );
        let done = compact::compact_due(&cfg.path, &keyring, later, &|| false);
        assert_eq!(done.len(), 3);
        assert_eq!(
            done.iter()
                .map(|(_, r)| r.as_ref().unwrap().records)
                .sum::<u64>(),
            60
        );
        for (p, _) in &done {
            let keys = keyring.keys(*p).unwrap();
            let path = p.path_in(&cfg.path);
            assert!(filter::path_of(&path).exists());
            assert_eq!(
                compact::check(&path, &keys).unwrap(),
                Vec::<String>::new(),
                "{p}"
            );
        }
        assert!(
            compact::compact_due(&cfg.path, &keyring, later, &|| false).is_empty(),
            "once"
        );
        for (&(k, v), expected) in asked.iter().zip(&before) {
            assert_eq!(&lookup(&cfg, k, v).0, expected, "{v}");
        }
        let (_, stats) = lookup(&cfg, IndexKind::Recipient, "+31611111111");
        assert_eq!(
            (stats.partitions_searched, stats.partitions_ruled_out),
            (3, 2)
        );
        let (_, stats) = lookup(&cfg, IndexKind::Recipient, "+31600000000");
        assert_eq!(stats.partitions_ruled_out, 3);

        // A record late into the 23rd, compacted: its filter goes, the record is found
        // (past the compacted ids), and the next run compacts the day again.
        let day23 = PartitionId::parse("2026-11-23").unwrap();
        let filter23 = filter::path_of(&day23.path_in(&cfg.path));
        let store = open(&cfg, &clock);
        let rec = store.recorder();
        let t = at(10, 0, 0).timestamp_micros() + 20 * hour;
        rec.record(&submission(&rec, t, "acct9", "+31622222222"))
            .await
            .unwrap();
        rec.barrier().await.unwrap();
        assert!(!filter23.exists(), "the writer removed the filter");
        assert_eq!(
            lookup(&cfg, IndexKind::Recipient, "+31622222222").0.len(),
            1
        );
        store.close().await;
        let again = compact::compact_due(&cfg.path, &keyring, later, &|| false);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0, day23);
        assert!(filter23.exists());
        let (found, stats) = lookup(&cfg, IndexKind::Recipient, "+31622222222");
        assert_eq!((found.len(), stats.partitions_ruled_out), (1, 2));

        // A filter that does not check out is not trusted.
        let mut bytes = std::fs::read(&filter23).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&filter23, &bytes).unwrap();
        let (found, stats) = lookup(&cfg, IndexKind::Recipient, "+31622222222");
        assert_eq!(found.len(), 1);
        assert_eq!(stats.filters_damaged, vec![day23]);
        let keys = keyring.keys(day23).unwrap();
        let path23 = day23.path_in(&cfg.path);
        let problems = compact::check(&path23, &keys).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");

        // A record that got past the filter (as if the writer had not deleted it): a
        // lookup the filter lets through finds it and says the filter is stale, and
        // verify's check names it.
        std::fs::remove_file(&filter23).unwrap();
        assert_eq!(
            compact::compact_due(&cfg.path, &keyring, later, &|| false).len(),
            1
        );
        let side = schema::open_for_read(&path23).unwrap();
        side.execute_batch(
            "CREATE TEMP TABLE copy AS SELECT * FROM record WHERE id = (SELECT max(id) FROM record);
             UPDATE copy SET id = id + 1000;
             INSERT INTO record SELECT * FROM copy;",
        )
        .unwrap();
        let (found, stats) = lookup(&cfg, IndexKind::Recipient, "+31622222222");
        assert_eq!(found.len(), 2, "the copy, from past the compacted ids");
        assert_eq!(stats.filters_stale, vec![day23]);
        let problems = compact::check(&path23, &keys).unwrap();
        assert!(
            problems[0].contains("the filter covers records up to"),
            "{problems:?}"
        );
        drop(side);

        // A record that comes while compaction runs: the filter is not put in place,
        // and the next run compacts the partition with it.
        std::fs::remove_file(&filter23).unwrap();
        // The record comes once compaction has begun to empty the index it rebuilds:
        // after it read which ids it covers.
        let rows = |conn: &rusqlite::Connection| -> i64 {
            conn.query_row("SELECT count(*) FROM cx_recipient", [], |r| r.get(0))
                .unwrap()
        };
        let side = schema::open_for_read(&path23).unwrap();
        let before = rows(&side);
        let arrived = std::cell::Cell::new(false);
        let arrive = || {
            if !arrived.get() && rows(&side) < before {
                arrived.set(true);
                side.execute_batch(
                    "CREATE TEMP TABLE copy2 AS SELECT * FROM record WHERE id = (SELECT max(id) FROM record);
                     UPDATE copy2 SET id = id + 1;
                     INSERT INTO record SELECT * FROM copy2;",
                )
                .unwrap();
            }
            false
        };
        let raced = compact::compact_due(&cfg.path, &keyring, later, &arrive);
        assert!(raced.is_empty(), "{raced:?}");
        assert!(arrived.get(), "the record came during the compaction");
        drop(side);
        assert!(
            !filter23.exists(),
            "not put in place over a record it does not hold"
        );
        assert!(
            !compact::check(&path23, &keys)
                .unwrap()
                .iter()
                .any(|p| p.contains("filter"))
        );
        let again = compact::compact_due(&cfg.path, &keyring, later, &|| false);
        assert_eq!(again.len(), 1);
        assert!(filter23.exists());
        assert_eq!(
            compact::check(&path23, &keys).unwrap(),
            Vec::<String>::new()
        );
        let (found, stats) = lookup(&cfg, IndexKind::Recipient, "+31622222222");
        assert_eq!(found.len(), 3);
        assert!(stats.filters_stale.is_empty());
    }

    /// A filter that no longer covers its partition (saved before a late record came,
    /// then put back) may rule the record out of a lookup but not out of what a
    /// disclosure reads, and the next compaction finds it out and rebuilds it. An
    /// erasure while a compaction runs keeps that compaction's filter (built partly
    /// before it) out, and the next one leaves what it erased out of the index.
    #[tokio::test]
    async fn stale_filters_are_rebuilt_and_erasures_keep_compaction_out() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        let (clock, store) = open_at_ten(&cfg);
        let t = at(10, 0, 0).timestamp_micros();
        let rec = store.recorder();
        for (i, n) in ["+31611111111", "+31622222222", "+31633333333"]
            .iter()
            .enumerate()
        {
            rec.record(&submission(&rec, t + i as i64, "acct", n))
                .await
                .unwrap();
        }
        store.close().await;
        let keyring = open_keyring(&cfg).unwrap();
        let later = compaction_time();
        let compact =
            |stop: &dyn Fn() -> bool| compact::compact_due(&cfg.path, &keyring, later, stop);
        assert_eq!(compact(&|| false).len(), 1);
        let day = PartitionId::parse("2026-11-22").unwrap();
        let path = day.path_in(&cfg.path);
        let keys = keyring.keys(day).unwrap();
        let filter_file = filter::path_of(&path);
        let saved = std::fs::read(&filter_file).unwrap();

        let store = open(&cfg, &clock);
        let rec = store.recorder();
        rec.record(&submission(&rec, t + 10, "gone", "+31644444444"))
            .await
            .unwrap();
        // Not the newest: an erasure of it leaves the highest id as it was.
        rec.record(&submission(&rec, t + 11, "acct", "+31655555555"))
            .await
            .unwrap();
        store.close().await;
        assert!(!filter_file.exists(), "the writer took it away");
        std::fs::write(&filter_file, &saved).unwrap();
        // At most a false alarm of the old filter lets a lookup see it now...
        assert!(
            lookup_with(&cfg, IndexKind::Recipient, "+31644444444", true)
                .0
                .len()
                <= 1
        );
        // ...what a disclosure reads has it.
        let (late, _) = lookup_with(&cfg, IndexKind::Recipient, "+31644444444", false);
        assert_eq!(late.len(), 1);
        let healed = compact(&|| false);
        assert_eq!(healed.len(), 1, "{healed:?}");
        assert_ne!(std::fs::read(&filter_file).unwrap(), saved);
        assert_eq!(find(&cfg, IndexKind::Recipient, "+31644444444").len(), 1);
        assert_eq!(compact::check(&path, &keys).unwrap(), Vec::<String>::new());

        // The erasure comes at compaction's second step: after it wrote the accounts'
        // lists, the erased one's among them.
        compact::remove_filter(&path).unwrap();
        let signer = integrity::load_signing_key(&cfg.signing_key).unwrap();
        let side = std::cell::RefCell::new(schema::open_for_read(&path).unwrap());
        let steps = std::cell::Cell::new(0);
        let erase = || {
            steps.set(steps.get() + 1);
            if steps.get() == 2 {
                let erased = integrity::erase_records(
                    &mut side.borrow_mut(),
                    day,
                    &signer,
                    later,
                    "test",
                    &[late[0].record_id],
                )
                .unwrap();
                assert_eq!(erased.0, 1);
            }
            false
        };
        let raced = compact(&erase);
        assert!(raced.is_empty(), "{raced:?}");
        assert!(steps.get() >= 2);
        assert!(!filter_file.exists(), "not put in place past an erasure");
        assert_eq!(compact(&|| false).len(), 1);
        assert!(filter_file.exists());
        let gone = keys.blind_index(IndexKind::Account, "gone");
        let listed: i64 = side
            .borrow()
            .query_row(
                "SELECT count(*) FROM cx_account WHERE tag = ?1",
                [gone],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(listed, 0, "the erased account is out of the rebuilt index");
        assert_eq!(compact::check(&path, &keys).unwrap(), Vec::<String>::new());
        assert!(find(&cfg, IndexKind::Account, "gone").is_empty());
        assert_eq!(find(&cfg, IndexKind::Account, "acct").len(), 4);

        // `verify` finds a record missing from the index.
        let tag = keys.blind_index(IndexKind::Recipient, "+31655555555");
        side.borrow()
            .execute("DELETE FROM cx_recipient WHERE tag = ?1", [tag])
            .unwrap();
        assert_eq!(
            compact::check(&path, &keys).unwrap(),
            vec!["cx_recipient: 1 record(s) not in the read-optimised index".to_string()]
        );
    }

    /// Expiry of a compacted partition leaves nothing of it: its file, its filter, a
    /// filter being written, a journal.
    #[tokio::test]
    async fn expiry_leaves_nothing_of_a_compacted_partition() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        let (_, store) = open_at_ten(&cfg);
        let rec = store.recorder();
        for day in 0..2i64 {
            let t = at(10, 0, 0).timestamp_micros() + day * 86_400_000_000;
            rec.record(&submission(&rec, t, "acct", "+31612345678"))
                .await
                .unwrap();
        }
        store.close().await;
        let keyring = open_keyring(&cfg).unwrap();
        let later = compaction_time();
        assert_eq!(
            compact::compact_due(&cfg.path, &keyring, later, &|| false).len(),
            2
        );
        let day = PartitionId::parse("2026-11-22").unwrap();
        let path = day.path_in(&cfg.path);
        assert!(filter::path_of(&path).exists());
        for stray in [
            filter::tmp_path_of(&path),
            cfg.path.join("2026-11-22.sqlite-journal"),
        ] {
            std::fs::write(stray, b"left by a crash").unwrap();
        }
        expiry::remove(&cfg, &keyring, day).unwrap();
        let left: Vec<String> = std::fs::read_dir(&cfg.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("2026-11-22"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(!keyring.exists(day));

        // A filter left without its partition (a crash beside a compaction) goes at
        // the next compaction run.
        let orphans = [filter::path_of(&path), filter::tmp_path_of(&path)];
        for orphan in &orphans {
            std::fs::write(orphan, b"left").unwrap();
        }
        compact::compact_due(&cfg.path, &keyring, later, &|| false);
        assert!(orphans.iter().all(|o| !o.exists()));
        assert!(filter::path_of(&cfg.path.join("2026-11-23.sqlite")).exists());
    }

    /// Compaction goes on while another connection commits into the partition between
    /// its pages (late outcomes do): no statement of its own is pending when it writes,
    /// so none has a snapshot to upgrade.
    #[tokio::test]
    async fn compaction_goes_on_while_others_commit_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        let (_, store) = open_at_ten(&cfg);
        let rec = store.recorder();
        let subs: Vec<Submission> = (0..5_000i64)
            .map(|i| {
                let t = at(10, 0, 0).timestamp_micros() + i * 1_000_000;
                submission(&rec, t, "acct", &format!("+3161{i:07}"))
            })
            .collect();
        for chunk in subs.chunks(500) {
            rec.record_many(chunk).await.unwrap();
        }
        store.close().await;
        let keyring = open_keyring(&cfg).unwrap();
        let day = PartitionId::parse("2026-11-22").unwrap();
        let path = day.path_in(&cfg.path);
        let side = schema::open_for_read(&path).unwrap();
        let commits = std::cell::Cell::new(0);
        let beside = || {
            side.execute_batch(
                "BEGIN IMMEDIATE; UPDATE meta SET value = value WHERE key = 'schema'; COMMIT;",
            )
            .unwrap();
            commits.set(commits.get() + 1);
            false
        };
        let later = compaction_time();
        let done = compact::compact_due(&cfg.path, &keyring, later, &beside);
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].1.as_ref().unwrap().records, 5_000);
        assert!(commits.get() >= 4, "between pages: {}", commits.get());
        let keys = keyring.keys(day).unwrap();
        assert_eq!(compact::check(&path, &keys).unwrap(), Vec::<String>::new());
        assert_eq!(find(&cfg, IndexKind::Recipient, "+31610004321").len(), 1);
    }

    #[tokio::test]
    async fn next_partitions_keys_are_made_ahead_of_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        init_keys(&cfg).unwrap();
        let clock = ManualClock::new(at(23, 59, 59));
        let store = open(&cfg, &clock);
        store.prepare_keys(clock.now()).unwrap();
        let today = PartitionId::containing(cfg.partition, clock.now_micros());
        let keyring = open_keyring(&cfg).unwrap();
        assert!(keyring.exists(today) && keyring.exists(today.next()));
        assert_eq!(today.next().to_string(), "2026-11-23");
        store.close().await;
    }

    /// Expiry through the store drops the shredded keys from the running process too.
    #[tokio::test]
    async fn expired_keys_leave_the_running_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::under(dir.path());
        cfg.retention = crate::config::Retention::Days(5);
        let (clock, store) = open_at_ten(&cfg);
        let rec = store.recorder();
        let first = at(10, 0, 0).timestamp_micros();
        rec.record(&submission(&rec, first, "a", "+31612345678"))
            .await
            .unwrap();
        let p = PartitionId::containing(cfg.partition, first);
        assert!(
            store.recorder.inner.keyring.keys(p).is_ok(),
            "cached while in use"
        );
        clock.advance(chrono::Duration::days(10));
        let plan = store.expire("test", clock.now()).unwrap();
        assert_eq!(plan.expire.len(), 1);
        assert!(matches!(
            store.recorder.inner.keyring.keys(p),
            Err(KeyError::Shredded { .. })
        ));
        assert!(store.recorder.inner.current.lock().unwrap().is_none());
        store.close().await;
    }

    /// A metric's value from the store's metrics text.
    fn metric(metrics: &Metrics, name: &str) -> f64 {
        metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in the metrics"))
    }

    /// A store at 10:00 with its keys loaded and one record committed, so that no
    /// submission of a test waits on a key file: all of them seal in the same pass.
    async fn warm(cfg: &StoreConfig, metrics: Arc<Metrics>) -> (Store, Recorder, Micros) {
        init_keys(cfg).unwrap();
        let clock = ManualClock::new(at(10, 0, 0));
        let store = Store::open(cfg.clone(), Arc::new(clock), metrics).unwrap();
        let rec = store.recorder();
        let t = at(10, 0, 0).timestamp_micros();
        rec.record(&submission(&rec, t, "warm", "+31600000000"))
            .await
            .unwrap();
        (store, rec, t)
    }

    /// The sender's tags kept from one message to the next on a thread are those of
    /// this message's sender under this message's keys: a change of account, of IP, of
    /// originator or of day (keys) makes them again.
    #[tokio::test]
    async fn sender_tags_follow_the_sender_and_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        let (_, store) = open_at_ten(&cfg);
        let rec = store.recorder();
        let day = at(10, 0, 0).timestamp_micros();
        let next_day = day + 86_400_000_000;
        let from = |account: &str, ip: u8, originator: Option<&str>, at: Micros| {
            let mut sub = submission(&rec, at, account, "+31612345678");
            sub.client_ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, ip));
            sub.originator = originator.map(|o| Identifier {
                form: Form::Raw,
                value: o.into(),
            });
            sub
        };
        // Each step changes one thing from the one before.
        let sequence = [
            from("a", 1, None, day),
            from("a", 1, None, day),
            from("b", 1, None, day),
            from("b", 2, None, day),
            from("b", 2, Some("ACME"), day),
            from("b", 2, Some("ACME2"), day),
            from("b", 2, Some("ACME2"), next_day),
            from("b", 2, Some("ACME2"), day),
        ];
        for sub in &sequence {
            let (partition, rows) = rec.seal(sub).unwrap();
            let keys = rec.keys_for(partition).unwrap();
            let ip = crate::canonical::canonical_ip(sub.client_ip).to_string();
            let want = (
                keys.blind_index(IndexKind::Account, &sub.account),
                keys.blind_index(IndexKind::ClientIp, &ip),
                sub.originator
                    .as_ref()
                    .map(|o| keys.blind_index(IndexKind::Originator, &o.index_value())),
            );
            assert_eq!(
                (rows[0].account_ix, rows[0].ip_ix, rows[0].originator_ix),
                want,
                "{} {} {:?} on {partition}",
                sub.account,
                sub.client_ip,
                sub.originator
            );
        }
        store.close().await;
    }

    /// The files of a directory, to put back later as they were.
    fn files_of(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect()
    }

    fn put_back(dir: &std::path::Path, files: &[(std::path::PathBuf, Vec<u8>)]) {
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        for (path, bytes) in files {
            std::fs::write(path, bytes).unwrap();
        }
    }

    /// A durable batch is journaled by the thread that sealed it, with no hop to the
    /// front, and its records are found after the store closes; with `sync = "full"`
    /// the front takes every batch (a `fdatasync` would hold the relay's thread).
    #[tokio::test]
    async fn relay_threads_journal_their_own_batches_but_not_with_full_sync() {
        for (sync, by_relay) in [(SyncMode::Normal, true), (SyncMode::Full, false)] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = StoreConfig::under(dir.path());
            cfg.sync = sync;
            let (_, store) = open_at_ten(&cfg);
            let rec = store.recorder();
            let t = at(10, 0, 0).timestamp_micros();
            for i in 0..5 {
                rec.record(&submission(&rec, t + i, "a", "+31612345678"))
                    .await
                    .unwrap();
            }
            let frames = rec.relay_frames();
            store.close().await;
            assert_eq!(frames > 0, by_relay, "{sync:?}: {frames} frames");
            assert_eq!(find(&cfg, IndexKind::Recipient, "+31612345678").len(), 5);
        }
    }

    /// A relay thread whose append fails hands its batch to the front (here the
    /// front's append fails too: the rows are committed before the client is
    /// answered), and relay threads append again only once the front's own append has
    /// worked. One that would need a new segment (the journal's directory replaced)
    /// hands its batch over without an error of its own.
    #[tokio::test]
    async fn a_failed_relay_append_goes_through_the_front_until_the_fronts_works() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        let metrics = Arc::new(Metrics::new());
        let (store, rec, t) = warm(&cfg, metrics.clone()).await;
        // A place kept in the recorders' queue keeps the ticker from waking the
        // front, whose lock would send a relay thread's batch to it.
        let _quiet = rec.reserve_outcomes(1).await.unwrap();
        rec.barrier().await.unwrap();
        let frames = rec.relay_frames();
        assert!(frames > 0);
        let record = |n: i64, number: &'static str| {
            let rec = rec.clone();
            async move { rec.record(&submission(&rec, t + n, "a", number)).await }
        };

        let errors = metrics.store_errors.get();
        rec.fail_journal_appends(true);
        record(1, "+31611111111").await.unwrap();
        assert_eq!(rec.relay_frames(), frames, "not by the relay's thread");
        assert_eq!(
            metrics.store_errors.get(),
            errors + 2,
            "the relay thread's failure and the front's"
        );
        rec.fail_journal_appends(false);
        record(2, "+31622222222").await.unwrap();
        assert_eq!(rec.relay_frames(), frames, "the front's, first");
        record(3, "+31633333333").await.unwrap();
        assert_eq!(rec.relay_frames(), frames + 1, "the relay's again");

        // The journal's directory replaced under the running store.
        let journal = cfg.path.join(JOURNAL_DIR);
        let moved = cfg.path.join("journal.moved");
        std::fs::rename(&journal, &moved).unwrap();
        std::fs::create_dir(&journal).unwrap();
        let errors = metrics.store_errors.get();
        record(4, "+31644444444").await.unwrap();
        assert_eq!(rec.relay_frames(), frames + 1);
        assert_eq!(metrics.store_errors.get(), errors + 1, "the front's alone");
        std::fs::remove_dir(&journal).unwrap();
        std::fs::rename(&moved, &journal).unwrap();
        store.close().await;
        for number in [
            "+31611111111",
            "+31622222222",
            "+31633333333",
            "+31644444444",
        ] {
            assert_eq!(
                find(&cfg, IndexKind::Recipient, number).len(),
                1,
                "{number}"
            );
        }
    }

    /// A store directory taken away under a running store is not made again, empty,
    /// where it was: a record for a partition not open yet fails (closed) instead of
    /// starting that partition anew beside the moved store.
    #[tokio::test]
    async fn a_store_directory_taken_away_is_not_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        let (_, store) = open_at_ten(&cfg);
        let rec = store.recorder();
        let today = at(10, 0, 0).timestamp_micros();
        rec.record(&submission(&rec, today, "acct", "+31611111111"))
            .await
            .unwrap();
        let moved = dir.path().join("store.moved");
        std::fs::rename(&cfg.path, &moved).unwrap();
        let tomorrow = today + 86_400_000_000;
        let refused = rec
            .record(&submission(&rec, tomorrow, "acct", "+31622222222"))
            .await;
        assert!(refused.is_err(), "recorded into a store made again");
        assert!(!cfg.path.exists(), "the store directory was made again");
        std::fs::rename(&moved, &cfg.path).unwrap();
        store.close().await;
    }

    /// Relay threads and the front append side by side (durable batches sealed on
    /// four runtime threads, their outcomes through the front): frames reach the
    /// writer in the order of their numbers (the writer asserts it in debug builds),
    /// and every row goes in once.
    #[test]
    fn frames_of_relay_threads_and_the_front_reach_the_writer_in_order() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        let (_, store) = open_at_ten(&cfg);
        let rec = store.recorder();
        let t = at(10, 0, 0).timestamp_micros();
        runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for task in 0..8 {
                let rec = rec.clone();
                tasks.spawn(async move {
                    for i in 0..50 {
                        let sub = submission(&rec, t + task * 1_000 + i, "a", "+31612345678");
                        rec.record(&sub).await.unwrap();
                        let slot = rec.reserve_outcome().await.unwrap();
                        let event =
                            OutcomeEvent::new(sub.id, sub.at, sub.at + 1, Outcome::Accepted);
                        slot.record(&event).await;
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
            assert!(rec.relay_frames() > 0, "the relay's threads appended");
            // A writer that found frames out of order has panicked: the barrier
            // is not answered.
            rec.barrier().await.unwrap();
            store.close().await;
        });
        let found = find(&cfg, IndexKind::Account, "a");
        assert_eq!(found.len(), 400);
        assert!(
            found
                .iter()
                .all(|f| f.outcome.as_ref().map(|o| o.outcome) == Some(Outcome::Accepted)),
            "every outcome in"
        );
    }

    /// A crash after the journal took rows and before the partitions did loses
    /// nothing: the next start ingests them. One after the partitions took them and
    /// before the journal let them go writes nothing twice. Either way the partition
    /// verifies against its signed heads.
    #[tokio::test]
    async fn journaled_rows_go_in_once_whenever_the_crash_falls() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        init_keys(&cfg).unwrap();
        let clock = ManualClock::new(at(10, 0, 0));
        let t = at(10, 0, 0).timestamp_micros();
        let journal_dir = cfg.path.join(JOURNAL_DIR);
        let count = |number: &str| find(&cfg, IndexKind::Recipient, number).len();

        // After the ingest: the journal comes back as it was when the clients were
        // answered.
        let store = open(&cfg, &clock);
        let rec = store.recorder();
        for i in 0..5 {
            rec.record(&submission(&rec, t + i, "a", "+31612345678"))
                .await
                .unwrap();
        }
        let answered = files_of(&journal_dir);
        store.close().await;
        assert_eq!(count("+31612345678"), 5);
        put_back(&journal_dir, &answered);
        let store = open(&cfg, &clock);
        store.recorder().barrier().await.unwrap();
        assert_eq!(count("+31612345678"), 5, "not written twice");

        // Before the ingest: one frame of rows of two days, appended while no writer
        // runs (sealed by the store, as its front would have journaled them).
        let rec = store.recorder();
        let next_day = at(23, 59, 59).timestamp_micros() + 60_000_000;
        let sealed: Vec<(PartitionId, Vec<Row>)> = [t + 100, t + 101, next_day]
            .into_iter()
            .map(|at_us| {
                rec.seal(&submission(&rec, at_us, "b", "+31687654321"))
                    .unwrap()
            })
            .collect();
        let (today, tomorrow) = (sealed[0].0, sealed[2].0);
        assert_ne!(today, tomorrow);
        store.close().await;
        {
            let (mut journal, _) = journal::Journal::open(&journal_dir, false).unwrap();
            journal.start(0).unwrap();
            journal
                .append(
                    sealed
                        .iter()
                        .map(|(partition, rows)| journal::EntryRef::Records(*partition, rows)),
                )
                .unwrap();
        }
        let crashed = files_of(&journal_dir);
        assert_eq!(count("+31687654321"), 0);
        let store = open(&cfg, &clock);
        assert_eq!(count("+31687654321"), 3, "in before the store opens");
        store.close().await;

        // The crash fell between the two days' commits: today's partition holds the
        // frame, tomorrow's file was never made.
        let unmake_tomorrow = || {
            for suffix in ["", "-wal", "-shm"] {
                let path = format!("{}{suffix}", tomorrow.path_in(&cfg.path).display());
                let _ = std::fs::remove_file(path);
            }
        };
        put_back(&journal_dir, &crashed);
        unmake_tomorrow();
        assert_eq!(count("+31687654321"), 2);
        let store = open(&cfg, &clock);
        assert_eq!(
            count("+31687654321"),
            3,
            "tomorrow's row once, today's not twice"
        );
        store.close().await;

        // A partition expiry removed (past retention, its keys gone) while the frame
        // waited: its rows are dropped, its file not made again.
        put_back(&journal_dir, &crashed);
        unmake_tomorrow();
        std::fs::remove_file(crate::store::keys::key_file(&cfg.keyring, tomorrow)).unwrap();
        let much_later = ManualClock::new(at(10, 0, 0) + chrono::Months::new(14));
        let store = open(&cfg, &much_later);
        store.close().await;
        assert!(!tomorrow.path_in(&cfg.path).exists(), "not brought back");
        assert_eq!(count("+31687654321"), 2);

        let conn = schema::open_for_read(&today.path_in(&cfg.path)).unwrap();
        let public = integrity::load_public_key(&cfg.signing_key).unwrap();
        let verified = integrity::verify(&conn, today, &public, i64::MAX / 2);
        assert!(verified.damage.is_empty(), "{:?}", verified.damage);
        assert_eq!(verified.records, 7);
        assert!(
            !journal::needs_recovery(&journal_dir).unwrap(),
            "a clean stop leaves nothing to read back"
        );
    }

    /// Durable submissions sealed on one thread in one pass are committed together:
    /// fewer commits than submissions, each answered, every record stored once.
    #[tokio::test]
    async fn durable_submissions_of_one_pass_share_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        let metrics = Arc::new(Metrics::new());
        let (store, rec, t) = warm(&cfg, metrics.clone()).await;
        let before = metric(&metrics, "relaylog_journal_frame_records_count");
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let sub = submission(&rec, t, "a", &format!("+316100000{i:02}"));
                    rec.record(&sub).await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        // One job: the journal's front cannot split it, so one append.
        let commits = metric(&metrics, "relaylog_journal_frame_records_count") - before;
        assert_eq!(
            commits, 1.0,
            "40 submissions of one pass took {commits} appends"
        );
        // In the partitions once ingested.
        rec.barrier().await.unwrap();
        assert_eq!(metric(&metrics, "relaylog_records_written_total"), 41.0);
        assert_eq!(
            metric(&metrics, "relaylog_durable_wait_seconds_count"),
            41.0,
            "each durable submission's wait observed"
        );
        store.close().await;
        for i in 0..40 {
            let found = find(&cfg, IndexKind::Recipient, &format!("+316100000{i:02}"));
            assert_eq!(found.len(), 1, "recipient {i}");
        }
    }

    /// The owner of a batch cancelled before it queued the batch (its client went
    /// away) still queues it on drop: the other submissions are committed.
    #[tokio::test]
    async fn a_cancelled_owner_does_not_strand_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        let (store, rec, t) = warm(&cfg, Arc::new(Metrics::new())).await;
        let waiting = || {
            rec.inner
                .route
                .signals
                .waiting
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let member = member_of_a_dropped_owner(&rec, t, "+31611111111", "+31622222222", || {
            assert_eq!(waiting(), 2, "both gathered, neither queued");
        })
        .await;
        assert_eq!(waiting(), 0, "one batch held both, queued on drop");
        member.await.unwrap().unwrap();
        store.close().await;
        assert_eq!(find(&cfg, IndexKind::Recipient, "+31622222222").len(), 1);
        // The owner's own rows were gathered and go in too: recorded, never forwarded,
        // as for any submission whose client leaves before the commit's answer.
        assert_eq!(find(&cfg, IndexKind::Recipient, "+31611111111").len(), 1);
    }

    /// A batch that finds the queue full waits for room from a task of its own, at
    /// most `enqueue-timeout`: committed if room comes in time, otherwise every
    /// submission of it is refused (not forwarded).
    #[tokio::test]
    async fn a_batch_meeting_a_full_queue_waits_for_room_then_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = four_places(dir.path(), Duration::from_millis(300));
        let (store, rec, t) = warm(&cfg, Arc::new(Metrics::new())).await;
        // Every place in the queue kept (as outcome places are), given back after
        // 50 ms: the batch waits for it and goes in.
        let held = rec.reserve_outcomes(4).await.unwrap();
        let started = std::time::Instant::now();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(held);
        });
        rec.record(&submission(&rec, t, "a", "+31644444444"))
            .await
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "it waited for room"
        );
        release.await.unwrap();
        // Kept for good: refused once enqueue-timeout has passed, not before.
        let held = rec.reserve_outcomes(4).await.unwrap();
        let started = std::time::Instant::now();
        let refused = rec.record(&submission(&rec, t, "a", "+31633333333")).await;
        assert!(
            matches!(refused, Err(RecordError::QueueFull)),
            "{refused:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "it waited for room"
        );
        drop(held);
        store.close().await;
        assert_eq!(find(&cfg, IndexKind::Recipient, "+31633333333").len(), 0);
        assert_eq!(find(&cfg, IndexKind::Recipient, "+31644444444").len(), 1);
    }

    /// With the recorders' queue full (every place kept for an outcome), a durable
    /// record still goes in at once: the relay's thread journals it, and the queue
    /// holds only outcomes and async rows. The writer's own queue bounds it.
    #[tokio::test]
    async fn a_full_queue_leaves_the_relay_threads_journal_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = four_places(dir.path(), Duration::from_millis(300));
        cfg.sync = SyncMode::Normal;
        let (store, rec, t) = warm(&cfg, Arc::new(Metrics::new())).await;
        // (The ticker, which wakes the front, does not while the queue is full.)
        let held = rec.reserve_outcomes(4).await.unwrap();
        let before = rec.relay_frames();
        rec.record(&submission(&rec, t, "a", "+31644444444"))
            .await
            .unwrap();
        assert_eq!(rec.relay_frames(), before + 1);
        drop(held);
        store.close().await;
        assert_eq!(find(&cfg, IndexKind::Recipient, "+31644444444").len(), 1);
    }

    /// An owner cancelled while the queue is full: its batch waits for room from a
    /// task of its own, and goes in when room comes.
    #[tokio::test]
    async fn a_batch_dropped_at_a_full_queue_goes_in_when_room_comes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = four_places(dir.path(), Duration::from_millis(500));
        let (store, rec, t) = warm(&cfg, Arc::new(Metrics::new())).await;
        // Every place in the queue kept (as outcome places are).
        let held = rec.reserve_outcomes(4).await.unwrap();
        let member =
            member_of_a_dropped_owner(&rec, t, "+31655555555", "+31666666666", || {}).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        member.await.unwrap().unwrap();
        store.close().await;
        assert_eq!(find(&cfg, IndexKind::Recipient, "+31655555555").len(), 1);
        assert_eq!(find(&cfg, IndexKind::Recipient, "+31666666666").len(), 1);
    }

    /// A store whose recorders' queue has four places, waited for at most `wait`.
    /// With `sync = "full"`, so that durable batches go through that queue: otherwise
    /// the relay's thread journals them itself (see
    /// `a_full_queue_leaves_the_relay_threads_journal_open`).
    fn four_places(dir: &std::path::Path, wait: Duration) -> StoreConfig {
        let mut cfg = StoreConfig::under(dir);
        cfg.queue_capacity = 4;
        cfg.enqueue_timeout = wait;
        cfg.sync = SyncMode::Full;
        cfg
    }

    /// Opens a batch with an owner (to `owner_number`) polled once, so that it waits
    /// in its yield; lets a spawned member (to `member_number`) join it; runs `between`;
    /// then drops the owner before it queues the batch. Returns the member's task.
    async fn member_of_a_dropped_owner(
        rec: &Recorder,
        t: Micros,
        owner_number: &str,
        member_number: &str,
        between: impl FnOnce(),
    ) -> tokio::task::JoinHandle<Result<(), RecordError>> {
        let owner_sub = submission(rec, t, "owner", owner_number);
        let mut owner = Box::pin(rec.record(&owner_sub));
        assert!(futures_poll_once(owner.as_mut()).is_pending());
        let member = {
            let rec = rec.clone();
            let number = member_number.to_string();
            tokio::spawn(async move { rec.record(&submission(&rec, t, "member", &number)).await })
        };
        tokio::task::yield_now().await;
        between();
        drop(owner);
        member
    }

    /// Polls a future once with a waker that does nothing.
    fn futures_poll_once<F: std::future::Future>(
        f: std::pin::Pin<&mut F>,
    ) -> std::task::Poll<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.poll(&mut cx)
    }

    /// Records `n` messages from account "a" to +31612345678, a second apart from
    /// 10:00:00, and closes the store.
    async fn record_one_a_second(cfg: &StoreConfig, clock: &ManualClock, n: u32) {
        let store = open(cfg, clock);
        let rec = store.recorder();
        for i in 0..n {
            rec.record(&submission(
                &rec,
                at(10, 0, i).timestamp_micros(),
                "a",
                "+31612345678",
            ))
            .await
            .unwrap();
        }
        store.close().await;
    }

    /// While a frozen set is being written, its postings are in the `ix_*` tables
    /// but past the watermark: a query finds those records once, through the tail.
    #[tokio::test]
    async fn postings_past_the_watermark_are_not_counted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        init_keys(&cfg).unwrap();
        let clock = ManualClock::new(at(10, 0, 0));
        record_one_a_second(&cfg, &clock, 10).await;
        assert_eq!(indexed_through(&cfg, "2026-11-22"), 10);
        // What a writer half-way through a set leaves: postings of ids 6..=10 written,
        // the watermark not yet moved.
        let conn = schema::open_for_read(&cfg.path.join("2026-11-22.sqlite")).unwrap();
        conn.execute_batch("UPDATE ix_state SET indexed_through = 5;")
            .unwrap();
        drop(conn);
        let found = find(&cfg, IndexKind::Recipient, "+31612345678");
        let ids: Vec<i64> = found.iter().map(|f| f.record_id).collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>(), "each record once");
    }

    /// A writer killed before flushing leaves an unindexed tail; the next writer
    /// rebuilds the pending entries from it and indexes them.
    #[tokio::test]
    async fn unflushed_tail_is_indexed_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::under(dir.path());
        init_keys(&cfg).unwrap();
        let clock = ManualClock::new(at(10, 0, 0));
        record_one_a_second(&cfg, &clock, 5).await;
        // What a writer killed before its flush leaves: rows committed, no index runs.
        let conn = schema::open_for_read(&cfg.path.join("2026-11-22.sqlite")).unwrap();
        conn.execute_batch(
            "DELETE FROM ix_account; DELETE FROM ix_ip; DELETE FROM ix_originator; DELETE FROM ix_recipient;
             UPDATE ix_state SET indexed_through = 0;",
        )
        .unwrap();
        drop(conn);
        assert_eq!(
            find(&cfg, IndexKind::Recipient, "+31612345678").len(),
            5,
            "found by the tail scan"
        );
        let store = open(&cfg, &clock);
        let rec = store.recorder();
        rec.record(&submission(
            &rec,
            at(10, 5, 0).timestamp_micros(),
            "a",
            "+31612345678",
        ))
        .await
        .unwrap();
        store.close().await;
        assert_eq!(indexed_through(&cfg, "2026-11-22"), 6);
        assert_eq!(find(&cfg, IndexKind::Recipient, "+31612345678").len(), 6);
    }
}
