//! Closed partitions made fast to read.
//!
//! The write-optimised blind index is keyed by `(bucket, tag)` (see `index`), so a
//! lookup seeks once per minute of its window: 1,440 seeks a day. Once a partition's
//! day is over (plus [`GRACE`]), compaction builds beside it, from its records:
//!
//! - a **read-optimised index**: the `cx_*` tables, one per identifier kind, keyed by
//!   `(tag, first id)` with the ids as posting lists (see `postings`): one seek per
//!   partition. Written in transactions of [`ROWS_PER_TX`] rows so that the writer,
//!   which may still put outcomes and receipts into the partition, never waits long
//!   for it; `meta.compacted` (the highest record id it covers) is set in the last, so
//!   an unfinished build is never read, and is started afresh after a crash;
//! - a **filter** (see `filter`): a partition without the identifier is ruled out
//!   without opening it.
//!
//! Both are derived from the records alone, so they are verifiable from them (`verify`
//! rebuilds them and compares) rather than covered by the partition's signed heads;
//! the filter carries MACs under the partition's key.
//!
//! A lookup uses the `cx_*` index for ids up to `meta.compacted` and scans the records
//! past it by their tag column (none, unless a record arrived late). The writer deletes
//! the filter before it puts a record into a partition that has one (under its write
//! lock), and compaction, after writing the filter, checks under the write lock that no
//! record came meanwhile: a filter present never hides a record.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::filter;
use super::keys::{IndexKind, PartitionKeys};
use super::partition::PartitionId;
use super::postings;
use super::schema;
use crate::clock::Micros;

/// How long after its period ends a partition is compacted: records reach the writer
/// within seconds of their time (queue and journal), far less than this.
pub const GRACE: Duration = Duration::from_secs(3600);

/// Posting rows written per transaction: a few milliseconds of the write lock.
pub const ROWS_PER_TX: usize = 2_048;

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

/// The `cx_*` table of an identifier kind.
pub fn table(kind: IndexKind) -> &'static str {
    match kind {
        IndexKind::Account => "cx_account",
        IndexKind::ClientIp => "cx_ip",
        IndexKind::Originator => "cx_originator",
        IndexKind::Recipient => "cx_recipient",
    }
}

/// The tag column of `record` for an identifier kind.
pub fn column(kind: IndexKind) -> &'static str {
    match kind {
        IndexKind::Account => "account_ix",
        IndexKind::ClientIp => "ip_ix",
        IndexKind::Originator => "originator_ix",
        IndexKind::Recipient => "recipient_ix",
    }
}

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
    #[error("partition {partition}: {source}")]
    Sql {
        partition: PartitionId,
        source: rusqlite::Error,
    },
    #[error("partition {partition}: cannot write its filter: {source}")]
    Filter {
        partition: PartitionId,
        source: std::io::Error,
    },
    #[error("partition {partition}: damaged posting list")]
    Postings { partition: PartitionId },
}

/// What compacting one partition did.
#[derive(Debug, Clone, Default)]
pub struct Compacted {
    pub records: u64,
    /// Posting rows written to the `cx_*` tables.
    pub rows: u64,
    pub filter_bytes: u64,
    pub seconds: f64,
}

/// The highest record id of a partition now.
fn newest(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT coalesce(max(id), 0) FROM record", [], |r| r.get(0))
}

/// The `(tag, id)` of every record up to `through` that has a tag of `kind`, sorted.
/// One kind at a time: 16 bytes a record at most, whatever the partition holds.
fn read_list(
    conn: &Connection,
    kind: IndexKind,
    through: i64,
) -> rusqlite::Result<Vec<(i64, i64)>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {0}, id FROM record WHERE id <= ?1 AND {0} IS NOT NULL",
        column(kind)
    ))?;
    let mut list = stmt
        .query_map([through], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(i64, i64)>>>()?;
    list.sort_unstable();
    Ok(list)
}

/// The distinct tags of a sorted list, as filter entries.
fn distinct(kind: IndexKind, list: &[(i64, i64)], out: &mut Vec<(IndexKind, i64)>) {
    let mut last = None;
    for &(tag, _) in list {
        if last != Some(tag) {
            out.push((kind, tag));
            last = Some(tag);
        }
    }
}

/// A list's posting rows: `(tag, first id, ids blob)`, at most [`postings::MAX_IDS`]
/// ids each.
fn posting_rows(list: &[(i64, i64)]) -> impl Iterator<Item = (i64, i64, Vec<u8>)> + '_ {
    list.chunk_by(|a, b| a.0 == b.0).flat_map(|same| {
        same.chunks(postings::MAX_IDS).map(|chunk| {
            let ids: Vec<i64> = chunk.iter().map(|&(_, id)| id).collect();
            let mut blob = Vec::with_capacity(ids.len() * 3);
            postings::encode(&ids, &mut blob);
            (chunk[0].0, ids[0], blob)
        })
    })
}

/// Compacts the partition at `path` (see the module's text). Nothing is done to a
/// partition whose filter is there already; `stop` is looked at between transactions,
/// and a build cut short is started afresh next time.
pub fn compact(
    path: &Path,
    keys: &PartitionKeys,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Compacted>, CompactError> {
    let partition = keys.partition();
    let sql = |source| CompactError::Sql { partition, source };
    let filter_path = filter::path_of(path);
    if filter_path.exists() {
        return Ok(None);
    }
    let began = Instant::now();
    let conn = schema::open_for_read(path).map_err(sql)?;
    if !schema::is_ready(&conn).map_err(sql)? {
        return Ok(None);
    }
    conn.execute_batch(DDL).map_err(sql)?;
    // A lookup in a compacted partition takes every outcome column to be there.
    schema::complete_outcome_table(&conn).map_err(sql)?;
    let through = newest(&conn).map_err(sql)?;
    let records: i64 = conn
        .query_row(
            "SELECT count(*) FROM record WHERE id <= ?1",
            [through],
            |r| r.get(0),
        )
        .map_err(sql)?;
    // Built afresh whenever the filter is missing (a late record, a repair): until
    // `meta.compacted` is back, lookups use the bucketed index.
    conn.execute("DELETE FROM meta WHERE key = 'compacted'", [])
        .map_err(sql)?;
    let (mut rows, mut entries) = (0u64, Vec::new());
    for kind in KINDS {
        let list = read_list(&conn, kind, through).map_err(sql)?;
        distinct(kind, &list, &mut entries);
        conn.execute(&format!("DELETE FROM {}", table(kind)), [])
            .map_err(sql)?;
        let mut rows_of = posting_rows(&list).peekable();
        while rows_of.peek().is_some() {
            if stop() {
                return Ok(None);
            }
            let tx = conn.unchecked_transaction().map_err(sql)?;
            {
                let mut insert = tx
                    .prepare_cached(&format!(
                        "INSERT INTO {} (tag, first, ids) VALUES (?1, ?2, ?3)",
                        table(kind)
                    ))
                    .map_err(sql)?;
                for (tag, first, blob) in rows_of.by_ref().take(ROWS_PER_TX) {
                    insert
                        .execute(rusqlite::params![tag, first, blob])
                        .map_err(sql)?;
                    rows += 1;
                }
            }
            tx.commit().map_err(sql)?;
        }
    }
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('compacted', ?1)",
        [through],
    )
    .map_err(sql)?;
    let filter_bytes = filter::write(&filter_path, keys, through, &entries)
        .map_err(|source| CompactError::Filter { partition, source })?;
    // A record the writer put in meanwhile, before it could see the filter to delete:
    // then the filter goes (it would hide that record), and the next run builds anew.
    let mut conn = conn;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    if newest(&tx).map_err(sql)? != through {
        remove_filter(path);
    }
    tx.commit().map_err(sql)?;
    drop(conn);
    to_rollback_journal(path);
    Ok(Some(Compacted {
        records: records.max(0) as u64,
        rows,
        filter_bytes,
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
pub fn to_rollback_journal(path: &Path) {
    if !in_wal_mode(path) {
        return;
    }
    let Ok(conn) = schema::open_for_read(path) else {
        return;
    };
    let _ = conn.busy_timeout(Duration::ZERO);
    let _ = conn.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()));
}

/// Removes a partition's filter, if it has one. Called by the writer, holding the
/// partition's write lock, before it puts a record into it.
pub fn remove_filter(partition_file: &Path) {
    let path = filter::path_of(partition_file);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "a record came into a compacted partition; its filter is removed until it is compacted again")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a partition's filter")
        }
    }
}

/// Whether a compacted partition's `cx_*` index and filter are what its records give
/// (what `verify` checks). `Ok(None)`: the partition is not compacted.
pub fn check(path: &Path, keys: &PartitionKeys) -> Result<Option<Vec<String>>, CompactError> {
    let partition = keys.partition();
    let sql = |source| CompactError::Sql { partition, source };
    let conn = schema::open_for_read(path).map_err(sql)?;
    if !schema::is_ready(&conn).map_err(sql)? {
        return Ok(None);
    }
    let Some(through) = compacted_through(&conn).map_err(sql)? else {
        return Ok(None);
    };
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    for kind in KINDS {
        let list = read_list(&conn, kind, through).map_err(sql)?;
        distinct(kind, &list, &mut entries);
        let mut stored = Vec::new();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT tag, ids FROM {} ORDER BY tag, first",
                table(kind)
            ))
            .map_err(sql)?;
        let mut rows = stmt.query([]).map_err(sql)?;
        let mut ids = Vec::new();
        while let Some(row) = rows.next().map_err(sql)? {
            let tag: i64 = row.get(0).map_err(sql)?;
            let blob: Vec<u8> = row.get(1).map_err(sql)?;
            ids.clear();
            postings::decode(&blob, &mut ids).map_err(|_| CompactError::Postings { partition })?;
            stored.extend(ids.iter().map(|&id| (tag, id)));
        }
        // Erasure removes records and leaves their ids in the lists (a lookup skips
        // them): what must hold is that every record is listed.
        let mut missing = 0usize;
        let mut at = 0usize;
        for entry in &list {
            while at < stored.len() && stored[at] < *entry {
                at += 1;
            }
            if stored.get(at) != Some(entry) {
                missing += 1;
            }
        }
        if missing > 0 {
            problems.push(format!(
                "{}: {missing} record(s) not in the read-optimised index",
                table(kind)
            ));
        }
    }
    let filter_path = filter::path_of(path);
    if filter_path.exists() {
        match filter::holds_all(&filter_path, keys, &entries) {
            Ok(true) => {}
            Ok(false) => problems.push("the filter leaves out records' identifiers".into()),
            Err(state) => problems.push(format!("the filter does not check out ({state:?})")),
        }
    }
    Ok(Some(problems))
}

/// Compacts every partition in `store_dir` that is due at `now` and not compacted
/// yet, oldest first, until `stop` says so; partitions whose keys are gone are left.
/// Returns what was done, and the failures (the next run tries them again).
pub fn compact_due(
    store_dir: &Path,
    keyring: &super::keys::Keyring,
    now: Micros,
    stop: &dyn Fn() -> bool,
) -> Vec<(PartitionId, Result<Compacted, String>)> {
    let partitions = match super::partition::list(store_dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the partitions to compact");
            return Vec::new();
        }
    };
    let mut done = Vec::new();
    for p in partitions.into_iter().filter(|&p| is_due(p, now)) {
        if stop() {
            break;
        }
        let path = p.path_in(store_dir);
        if filter::path_of(&path).exists() {
            to_rollback_journal(&path);
            continue;
        }
        let keys = match keyring.keys(p) {
            Ok(k) => k,
            Err(super::keys::KeyError::Shredded { .. }) => continue,
            Err(e) => {
                done.push((p, Err(e.to_string())));
                continue;
            }
        };
        match compact(&path, &keys, stop) {
            Ok(Some(c)) => done.push((p, Ok(c))),
            Ok(None) => {}
            Err(e) => done.push((p, Err(e.to_string()))),
        }
    }
    done
}

/// Lowers the calling thread's CPU priority (nice 10): compaction runs beside the
/// relay and must not take its time. Linux applies `setpriority` with `who = 0` to
/// the calling thread alone.
pub fn lower_priority() {
    // SAFETY: setpriority reads no memory of ours; an error leaves the priority as is.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
}
