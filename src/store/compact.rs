//! Closed partitions made fast to read.
//!
//! The write-optimised blind index is keyed by `(bucket, tag)` (see `index`), so a
//! lookup seeks once per minute of its window: 1,440 seeks a day. Once a partition's
//! day is over (plus [`GRACE`]), compaction builds beside it, from its records:
//!
//! - a **read-optimised index**: the `cx_*` tables, one per identifier kind, keyed by
//!   `(tag, first id)` with the ids as posting lists (see `postings`): one seek per
//!   partition. Written in transactions of [`ROWS_PER_TX`] rows (and emptied in such
//!   steps before a rebuild) so that the writer, which may still put outcomes and
//!   receipts into the partition, never waits long for it; `meta.compacted` (the
//!   highest record id it covers) is set once all are written, so an unfinished build
//!   is never read, and is started afresh after a crash;
//! - a **filter** (see `filter`): a partition without the identifier is ruled out
//!   without opening it.
//!
//! Both are derived from the records alone, so they are verifiable from them rather
//! than covered by the partition's signed heads (`verify` checks that every record's
//! tags are in the index and in the filter); the filter carries MACs under the
//! partition's key.
//!
//! What keeps a filter from hiding a record: it is written to a temporary file, and put
//! in place (renamed) only under the partition's write lock (`BEGIN IMMEDIATE`) after
//! checking that no record past the ids it covers exists and that no erasure came
//! meanwhile; the writer, and an erasure, under that same lock, delete it before they
//! commit (the writer fails its batch, retried, if it
//! cannot). One compaction runs at a time per store (a lock file). Each run checks the
//! filters already in place against their partitions and rebuilds any that does not
//! cover its records (one restored from a backup, say); a lookup that opens a
//! partition checks the filter's `through` too (`query`), `verify` checks it against
//! the records, and disclosures, access requests and erasure do not let a filter rule
//! a partition out at all.
//!
//! Memory: the bits of the filter (12 per distinct identifier) and a page of
//! [`ROWS_PER_TX`] `(tag, id)` pairs; the sorting is SQLite's (its sorter spills to
//! its temporary directory past its cache).

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::filter;
use super::keys::{IndexKind, KeyError, Keyring, PartitionKeys};
use super::partition::PartitionId;
use super::postings;
use super::schema;
use crate::clock::Micros;

/// How long after its period ends a partition is compacted: records reach the writer
/// within seconds of their time (queue and journal), far less than this.
pub const GRACE: Duration = Duration::from_secs(3600);

/// Posting rows written (at most: they are the records' `(tag, id)` of one page of
/// `sorted_tags`) or deleted per transaction: a few milliseconds of the write lock.
pub const ROWS_PER_TX: usize = 2_048;

/// The lock file that lets one compaction run at a time in a store directory.
const LOCK_FILE: &str = ".compaction.lock";

const KINDS: [IndexKind; 4] = [
    IndexKind::Account,
    IndexKind::ClientIp,
    IndexKind::Originator,
    IndexKind::Recipient,
];

/// The read-optimised index tables, created by compaction.
const DDL: &str = "
CREATE TABLE IF NOT EXISTS cx_account (tag INTEGER, first INTEGER, ids BLOB NOT NULL, PRIMARY KEY (tag, first)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cx_ip (tag INTEGER, first INTEGER, ids BLOB NOT NULL, PRIMARY KEY (tag, first)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cx_originator (tag INTEGER, first INTEGER, ids BLOB NOT NULL, PRIMARY KEY (tag, first)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cx_recipient (tag INTEGER, first INTEGER, ids BLOB NOT NULL, PRIMARY KEY (tag, first)) WITHOUT ROWID;
";

/// The highest record id a partition's `cx_*` index covers, if it has one.
pub fn compacted_through(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'compacted'",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// Whether a partition's period is over, with [`GRACE`], at `now`.
pub fn is_due(p: PartitionId, now: Micros) -> bool {
    p.end_micros().saturating_add(GRACE.as_micros() as i64) <= now
}

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
    #[error("its filter: {0}")]
    Filter(#[from] std::io::Error),
    #[error("its keys: {0}")]
    Keys(#[from] KeyError),
    #[error("a damaged posting list in {0}")]
    Postings(&'static str),
    #[error("the store's database: {0}")]
    Database(#[from] crate::pg::PgError),
}

/// What compacting one partition did.
#[derive(Debug, Clone, Default)]
pub struct Compacted {
    pub records: u64,
    pub seconds: f64,
}

/// The id of a partition's latest erasure statement (0: none).
fn last_erasure(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT coalesce(max(id), 0) FROM erasure", [], |r| r.get(0))
}

/// The highest record id of a partition now.
pub(crate) fn newest(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT coalesce(max(id), 0) FROM record", [], |r| r.get(0))
}

/// The `(tag, id)` of every record up to `through` with a tag of `kind`, in order,
/// handed to `each` a page at a time; stops early when it answers false. They are
/// copied first into a temporary table keyed by them (SQLite's temporary storage,
/// which spills to disk past its cache), and each page is read whole before `each`
/// sees it: no statement is pending while the caller writes (a write on a connection
/// whose read is still open would have to upgrade that read's snapshot, which SQLite
/// refuses at once when another connection committed meanwhile).
fn sorted_tags(
    conn: &Connection,
    kind: IndexKind,
    through: i64,
    mut each: impl FnMut(&[(i64, i64)]) -> Result<bool, CompactError>,
) -> Result<(), CompactError> {
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.tags;
         CREATE TEMP TABLE tags (tag INTEGER, id INTEGER, PRIMARY KEY (tag, id)) WITHOUT ROWID;",
    )?;
    conn.execute(
        &format!(
            "INSERT INTO temp.tags SELECT {0}, id FROM record WHERE id <= ?1 AND {0} IS NOT NULL",
            kind.tag_column()
        ),
        [through],
    )?;
    let mut after = (i64::MIN, i64::MIN);
    let mut page = Vec::with_capacity(ROWS_PER_TX);
    loop {
        page.clear();
        {
            let mut stmt = conn.prepare_cached(
                "SELECT tag, id FROM temp.tags WHERE (tag, id) > (?1, ?2) ORDER BY tag, id LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                rusqlite::params![after.0, after.1, ROWS_PER_TX as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            for row in rows {
                page.push(row?);
            }
        }
        let Some(&last) = page.last() else { break };
        after = last;
        if !each(&page)? {
            break;
        }
    }
    conn.execute_batch("DROP TABLE temp.tags")?;
    Ok(())
}

/// Empties a `cx_*` table a step at a time (see [`ROWS_PER_TX`]).
fn empty(
    conn: &Connection,
    kind: IndexKind,
    stop: &dyn Fn() -> bool,
) -> Result<bool, CompactError> {
    let sql = format!(
        "DELETE FROM {0} WHERE (tag, first) IN (SELECT tag, first FROM {0} LIMIT {ROWS_PER_TX})",
        kind.cx_table()
    );
    while conn.execute(&sql, [])? > 0 {
        if stop() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The posting rows of one `cx_*` table as they are written: the ids of one tag, at
/// most [`postings::MAX_IDS`] a row (the caller holds the transaction).
struct Lists<'c> {
    conn: &'c Connection,
    insert: String,
    tag: Option<i64>,
    ids: Vec<i64>,
    blob: Vec<u8>,
}

impl Lists<'_> {
    /// Adds a record's `(tag, id)`, in `(tag, id)` order.
    fn push(&mut self, tag: i64, id: i64) -> Result<(), CompactError> {
        if self.tag != Some(tag) || self.ids.len() >= postings::MAX_IDS {
            self.flush()?;
            self.tag = Some(tag);
        }
        self.ids.push(id);
        Ok(())
    }

    /// Writes the row being gathered.
    fn flush(&mut self) -> Result<(), CompactError> {
        let Some(tag) = self.tag else { return Ok(()) };
        if self.ids.is_empty() {
            return Ok(());
        }
        self.blob.clear();
        postings::encode(&self.ids, &mut self.blob);
        self.conn
            .prepare_cached(&self.insert)?
            .execute(rusqlite::params![tag, self.ids[0], self.blob])?;
        self.ids.clear();
        Ok(())
    }
}

/// Compacts the partition at `path` (see the module's text). `None`: nothing done
/// (compacted already, not ready, stopped, or a record or an erasure came meanwhile),
/// done afresh next time.
fn compact(
    path: &Path,
    keys: &PartitionKeys,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Compacted>, CompactError> {
    let filter_path = filter::path_of(path);
    if filter_path.exists() {
        return Ok(None);
    }
    let began = Instant::now();
    let mut conn = schema::open_for_read(path)?;
    if !schema::is_ready(&conn)? {
        // Being created this moment: next time.
        return Ok(None);
    }
    // In WAL mode while it works: its reads then hold off neither the writer's commits
    // (late outcomes) nor a lookup's. Put back to a rollback journal at the end.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "the partition cannot be put in WAL mode to be compacted; tried again next time");
        return Ok(None);
    }
    conn.execute_batch(DDL)?;
    conn.execute_batch(schema::ERASURE_DDL)?;
    // A lookup in a compacted partition takes every outcome column to be there.
    schema::complete_outcome_table(&conn)?;
    let through = newest(&conn)?;
    let erasures = last_erasure(&conn)?;
    let records: i64 = conn.query_row(
        "SELECT count(*) FROM record WHERE id <= ?1",
        [through],
        |r| r.get(0),
    )?;
    // Built afresh whenever the filter is missing (a late record, an erasure, a
    // repair): until `meta.compacted` is back, lookups use the bucketed index.
    conn.execute("DELETE FROM meta WHERE key = 'compacted'", [])?;
    // The filter is sized for the distinct identifiers (SQLite counts them, in its
    // bounded memory), and filled as the lists are written.
    let mut distinct = 0u64;
    for kind in KINDS {
        let n: i64 = conn.query_row(
            &format!(
                "SELECT count(DISTINCT {0}) FROM record WHERE id <= ?1",
                kind.tag_column()
            ),
            [through],
            |r| r.get(0),
        )?;
        distinct += n.max(0) as u64;
    }
    let mut bits = filter::Builder::new(distinct);
    for kind in KINDS {
        if !empty(&conn, kind, stop)? {
            return Ok(None);
        }
        let mut list = Lists {
            conn: &conn,
            insert: format!(
                "INSERT INTO {} (tag, first, ids) VALUES (?1, ?2, ?3)",
                kind.cx_table()
            ),
            tag: None,
            ids: Vec::new(),
            blob: Vec::new(),
        };
        let mut stopped = false;
        sorted_tags(&conn, kind, through, |page| {
            conn.execute_batch("BEGIN")?;
            for &(tag, id) in page {
                if list.tag != Some(tag) {
                    bits.add(kind, tag);
                }
                list.push(tag, id)?;
            }
            conn.execute_batch("COMMIT")?;
            stopped = stop();
            Ok(!stopped)
        })?;
        if stopped {
            return Ok(None);
        }
        conn.execute_batch("BEGIN")?;
        list.flush()?;
        conn.execute_batch("COMMIT")?;
    }
    let tmp = filter::tmp_path_of(path);
    bits.write(&tmp, keys, through)?;
    // The index is put in use, and the filter in place, under the write lock, once
    // sure that no record came meanwhile (the writer deletes a filter under this lock
    // before it commits a record), that no erasure did (the lists may hold what it
    // erased), and that expiry has not removed the partition (no filter beside
    // nothing).
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if newest(&tx)? != through || last_erasure(&tx)? != erasures || !path.exists() {
        drop(tx);
        let _ = std::fs::remove_file(&tmp);
        tracing::info!(path = %path.display(), "the partition changed while it was compacted (a record, an erasure or its expiry); compacted again next time");
        return Ok(None);
    }
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('compacted', ?1)",
        [through],
    )?;
    if let Err(e) = filter::publish(&tmp, &filter_path) {
        let _ = std::fs::remove_file(&tmp);
        // Renamed but not synced: it must not stay where a crash could leave it.
        let _ = std::fs::remove_file(&filter_path);
        return Err(e.into());
    }
    if let Err(e) = tx.commit() {
        // Not in use without its index (a filter left would be rebuilt anyway).
        let _ = remove_filter(path);
        return Err(e.into());
    }
    // Expiry takes no SQLite lock: it may have removed the partition since it was
    // seen above; then the filter, which it may have looked for too early, goes too
    // (expiry looks for it again after the partition's file is gone).
    if !std::fs::exists(path)? {
        remove_filter(path)?;
        return Ok(None);
    }
    drop(conn);
    to_rollback_journal(path);
    Ok(Some(Compacted {
        records: records.max(0) as u64,
        seconds: began.elapsed().as_secs_f64(),
    }))
}

/// Whether the partition file's header says WAL mode (bytes 18 and 19 are 2).
fn in_wal_mode(path: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let mut version = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut version, 18))
        .is_ok_and(|()| version == [2, 2])
}

/// Takes a closed partition out of WAL mode, into a rollback journal: a lookup then
/// opens one file, not three, and its close does not checkpoint and delete a WAL (in
/// WAL mode, opening and closing were a third of a lookup's time). Only possible
/// while no one else has it open (the writer keeps recent partitions open): tried
/// again at each run until it is done. The writer puts the partition back in WAL mode
/// when it next opens it (a late outcome), which is correct either way.
fn to_rollback_journal(path: &Path) {
    if !in_wal_mode(path) {
        return;
    }
    let Ok(conn) = schema::open_for_read(path) else {
        return;
    };
    let _ = conn.busy_timeout(Duration::ZERO);
    let _ = conn.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()));
}

/// Removes a partition's filter, if it has one, durably. The writer calls it holding
/// the partition's write lock, before it commits a record into it, and fails its batch
/// on an error: a filter left in place would hide the record.
pub fn remove_filter(partition_file: &Path) -> std::io::Result<()> {
    let path = filter::path_of(partition_file);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "the partition's filter is removed (a record came, an erasure, or it did not cover the partition) until it is compacted again");
            filter::sync_parent(&path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether a compacted partition's `cx_*` index and filter are what its records give
/// (what `verify` checks): the problems found, none when it is not compacted.
///
/// Holds the store's compaction lock (shared) while it reads, waiting for a
/// compaction that runs: one that set `meta.compacted` and then put its filter in
/// place between this check's two reads would otherwise look like damage.
pub fn check(path: &Path, keys: &PartitionKeys) -> Result<Vec<String>, CompactError> {
    // No lock file that this reader may make: no compaction can be running.
    let lock = match open_lock(path.parent().unwrap_or(Path::new("."))) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(lock) = &lock {
        match lock.try_lock_shared() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!(path = %path.display(), "waiting for the compaction that runs");
                lock.lock_shared()?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
    let conn = schema::open_for_read(path)?;
    if !schema::is_ready(&conn)? {
        return Ok(Vec::new());
    }
    let tx = conn.unchecked_transaction()?;
    // The snapshot begins here; the filter is read after, so that one the writer
    // removed before it is not taken for damage.
    let compacted = compacted_through(&tx)?;
    let newest = newest(&tx)?;
    let filter_path = filter::path_of(path);
    let filter = match filter::Checked::read(&filter_path, keys) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let mut problems = Vec::new();
    let Some(through) = compacted else {
        if filter.is_some() {
            problems.push("a filter without a read-optimised index".into());
        }
        return Ok(problems);
    };
    let filter = match filter {
        Some(Some(f)) if f.through != through || through != newest => {
            problems.push(format!(
                "the filter covers records up to {}, the index up to {through}, the partition holds up to {newest}",
                f.through
            ));
            None
        }
        Some(None) => {
            problems.push("the filter does not check out".into());
            None
        }
        other => other.flatten(),
    };
    for kind in KINDS {
        // What the index holds, as (tag, id), read a page of rows at a time beside
        // the records' (no statement pending between pages).
        let mut listed = Listed::new(kind);
        let (mut missing, mut unfiltered, mut last_tag) = (0usize, 0usize, None);
        sorted_tags(&tx, kind, through, |page| {
            for entry in page {
                if listed.seek(&tx, *entry)? != Some(*entry) {
                    missing += 1;
                }
                if last_tag != Some(entry.0) {
                    last_tag = Some(entry.0);
                    if filter.as_ref().is_some_and(|f| !f.holds(kind, entry.0)) {
                        unfiltered += 1;
                    }
                }
            }
            Ok(true)
        })?;
        if missing > 0 {
            problems.push(format!(
                "{}: {missing} record(s) not in the read-optimised index",
                kind.cx_table()
            ));
        }
        if unfiltered > 0 {
            problems.push(format!(
                "the filter leaves out {unfiltered} identifier(s) of {}",
                kind.cx_table()
            ));
        }
    }
    Ok(problems)
}

/// A `cx_*` table read as its `(tag, id)` entries in order, [`LISTED_ROWS`] rows at a
/// time: what `check` walks beside the records'.
struct Listed {
    kind: IndexKind,
    /// The rows read and not passed yet, decoded, in order.
    entries: std::collections::VecDeque<(i64, i64)>,
    /// Where the next page starts: after this `(tag, first)`.
    after: (i64, i64),
    /// The last entry read.
    last: Option<(i64, i64)>,
    done: bool,
}

/// Rows `check` reads at a time: `Listed` then holds at most 64 K entries (1 MiB).
const LISTED_ROWS: usize = 64;

impl Listed {
    fn new(kind: IndexKind) -> Self {
        Self {
            kind,
            entries: Default::default(),
            after: (i64::MIN, i64::MIN),
            last: None,
            done: false,
        }
    }

    /// The first entry at or after `target` (entries before it are passed for good).
    fn seek(
        &mut self,
        conn: &Connection,
        target: (i64, i64),
    ) -> Result<Option<(i64, i64)>, CompactError> {
        loop {
            while let Some(&front) = self.entries.front() {
                if front >= target {
                    return Ok(Some(front));
                }
                self.entries.pop_front();
            }
            if self.done || !self.next_page(conn)? {
                self.done = true;
                return Ok(None);
            }
        }
    }

    /// Reads the next [`LISTED_ROWS`] rows, checking that they are as compaction
    /// writes them: each at most [`postings::MAX_IDS`] ids, keyed by its first, every
    /// entry after the one before. Memory: at most `LISTED_ROWS × MAX_IDS` entries.
    fn next_page(&mut self, conn: &Connection) -> Result<bool, CompactError> {
        let table = self.kind.cx_table();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT tag, first, ids FROM {table} WHERE (tag, first) > (?1, ?2) ORDER BY tag, first LIMIT ?3"
        ))?;
        let mut rows = stmt.query(rusqlite::params![
            self.after.0,
            self.after.1,
            LISTED_ROWS as i64
        ])?;
        let mut ids = Vec::new();
        let mut any = false;
        while let Some(row) = rows.next()? {
            any = true;
            let (tag, first): (i64, i64) = (row.get(0)?, row.get(1)?);
            let blob: Vec<u8> = row.get(2)?;
            ids.clear();
            postings::decode(&blob, &mut ids).map_err(|_| CompactError::Postings(table))?;
            let in_order = ids.first() == Some(&first)
                && ids.len() <= postings::MAX_IDS
                && ids.windows(2).all(|w| w[0] < w[1])
                && self.last.is_none_or(|last| (tag, first) > last);
            if !in_order {
                return Err(CompactError::Postings(table));
            }
            self.entries.extend(ids.iter().map(|&id| (tag, id)));
            self.last = ids.last().map(|&id| (tag, id));
            self.after = (tag, first);
        }
        Ok(any)
    }
}

/// Compacts every partition in `store_dir` that is due at `now` and not compacted
/// yet, oldest first, until `stop` says so; partitions whose keys are gone are left,
/// and so is everything while another compaction holds the store's lock. Returns what
/// was done, and the failures (the next run tries them again).
pub fn compact_due(
    store_dir: &Path,
    keyring: &Keyring,
    now: Micros,
    stop: &dyn Fn() -> bool,
) -> Vec<(PartitionId, Result<Compacted, CompactError>)> {
    let mut done = Vec::new();
    let due: Vec<PartitionId> = match super::partition::list(store_dir) {
        Ok(p) => p.into_iter().filter(|&p| is_due(p, now)).collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot list the partitions to compact");
            return done;
        }
    };
    // Nothing due: the store directory is not touched (no lock file made).
    if due.is_empty() {
        return done;
    }
    let _lock = match lock_store(store_dir) {
        Ok(Some(held)) => held,
        // Another compaction runs (serve, or a bench): it does this; or a verify
        // reads: the next run does.
        Ok(None) => {
            tracing::info!(
                "the store's compaction lock is held (another compaction, or verify); this run is skipped"
            );
            return done;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot take the store's compaction lock");
            return done;
        }
    };
    remove_orphan_filters(store_dir);
    for p in due {
        if stop() {
            break;
        }
        // A run reads every partition's keys: those of the partitions done leave
        // memory as the run goes, not only after it.
        keyring.forget_stale();
        let path = p.path_in(store_dir);
        let keys = match keyring.keys(p) {
            Ok(k) => k,
            Err(KeyError::Shredded { .. }) => continue,
            Err(e) => {
                done.push((p, Err(e.into())));
                continue;
            }
        };
        if filter::path_of(&path).exists() {
            // A filter that does not cover the partition (restored from a backup, or
            // left by a fault) would rule out records it holds: it goes, and the
            // partition is compacted again.
            match filter_is_current(&path, &keys) {
                Ok(true) => {
                    to_rollback_journal(&path);
                    continue;
                }
                Ok(false) => {
                    tracing::warn!(partition = %p, "its filter does not cover its records; removed, and the partition compacted again");
                    if let Err(e) = remove_filter(&path) {
                        done.push((p, Err(e.into())));
                        continue;
                    }
                }
                Err(e) => {
                    done.push((p, Err(e)));
                    continue;
                }
            }
        }
        match compact(&path, &keys, stop) {
            Ok(Some(c)) => done.push((p, Ok(c))),
            Ok(None) => {}
            Err(e) => {
                let _ = std::fs::remove_file(filter::tmp_path_of(&path));
                done.push((p, Err(e)));
            }
        }
    }
    done
}

/// Opens the store's compaction lock file, made if missing: never through a symbolic
/// link, and only a regular file. Opened for reading (a lock needs no more): whoever
/// made it, root running a bench included, anyone may lock it.
fn open_lock(store_dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = store_dir.join(LOCK_FILE);
    // Whoever cannot make it (a reader without write access) opens it if it is there.
    if let Ok(made) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        // Whatever the umask of whoever made it (root running verify, say): serve
        // must be able to open it.
        use std::os::unix::fs::PermissionsExt;
        let _ = made.set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// Takes the store's compaction lock if no one holds it (`None`: someone does).
fn lock_store(store_dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    let file = open_lock(store_dir)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Removes filters (and filters being written) whose partition is gone: left by an
/// expiry or a crash beside a compaction. Run under the store's compaction lock.
fn remove_orphan_filters(store_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(store_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(partition) = name
            .strip_suffix(filter::TMP_SUFFIX)
            .or_else(|| name.strip_suffix(filter::SUFFIX))
        else {
            continue;
        };
        if !store_dir.join(partition).exists() {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "a filter without its partition removed")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "a filter without its partition could not be removed")
                }
            }
        }
    }
}

/// Whether the filter beside a partition checks out (every page) and covers exactly
/// the records its read-optimised index does, which are all the partition holds. Run
/// under the store's compaction lock: the only change that can come meanwhile is the
/// writer or an erasure removing the filter, after which it is compacted again anyway.
fn filter_is_current(path: &Path, keys: &PartitionKeys) -> Result<bool, CompactError> {
    // Unreadable (gone meanwhile, a link, not a file): not current either; removing it
    // says what is wrong if anything still is.
    let Ok(Some(filter)) = filter::Checked::read(&filter::path_of(path), keys) else {
        return Ok(false);
    };
    let conn = schema::open_for_read(path)?;
    let tx = conn.unchecked_transaction()?;
    Ok(compacted_through(&tx)? == Some(filter.through) && newest(&tx)? == filter.through)
}

/// Lowers the calling thread's CPU priority (nice 10): compaction runs beside the
/// relay and must not take its time. On Linux, `setpriority` with `who = 0` applies to
/// the calling thread alone (elsewhere it would lower the whole process: not done).
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority reads no memory of ours; an error leaves the priority as is.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Listed` gives a `cx_*` table's entries in order across rows of one tag and
    /// across pages, finds what is there and only that, and refuses rows out of order.
    #[test]
    fn listed_walks_a_table_across_rows_and_pages() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(DDL).unwrap();
        let kind = IndexKind::Recipient;
        // Tag 5 with 3,000 ids (three rows), then 200 tags of two ids each: 203 rows,
        // more than three pages.
        let mut entries: Vec<(i64, i64)> = (1..=3_000).map(|id| (5, id * 2)).collect();
        entries.extend((0..200).flat_map(|t| [(100 + t, 7), (100 + t, 9)]));
        let mut blob = Vec::new();
        for chunk in entries.chunk_by(|a, b| a.0 == b.0) {
            for row in chunk.chunks(postings::MAX_IDS) {
                let ids: Vec<i64> = row.iter().map(|e| e.1).collect();
                blob.clear();
                postings::encode(&ids, &mut blob);
                conn.execute(
                    "INSERT INTO cx_recipient (tag, first, ids) VALUES (?1, ?2, ?3)",
                    rusqlite::params![row[0].0, ids[0], blob],
                )
                .unwrap();
            }
        }
        let mut listed = Listed::new(kind);
        // Every entry is found, in order; what lies between entries is not.
        for (i, &e) in entries.iter().enumerate() {
            if i % 97 == 0 {
                let before = (e.0, e.1 - 1);
                assert_eq!(listed.seek(&conn, before).unwrap(), Some(e));
            }
            assert_eq!(listed.seek(&conn, e).unwrap(), Some(e));
        }
        assert_eq!(listed.seek(&conn, (299, 10)).unwrap(), None, "past the end");

        // A row whose key is not its first id is damage.
        conn.execute(
            "INSERT INTO cx_recipient (tag, first, ids) VALUES (1000, 3, ?1)",
            [&blob],
        )
        .unwrap();
        let mut listed = Listed::new(kind);
        let walked = (|| -> Result<(), CompactError> {
            while listed.seek(&conn, (i64::MAX, i64::MAX))?.is_some() {}
            Ok(())
        })();
        assert!(
            matches!(walked, Err(CompactError::Postings(_))),
            "{walked:?}"
        );
    }
}
