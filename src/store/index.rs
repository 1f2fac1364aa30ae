//! The blind indexes' writes: late, sorted, and spread over the writer's idle moments.
//!
//! The writer keeps each record's `(bucket, tag, id)` entries in memory (`Pending`)
//! and writes them into the `ix_*` tables sorted and grouped into posting lists (see
//! [`super::schema`] for why). Written in one go, 65,536 records' entries took 60–80 ms
//! inside a commit that durable clients waited on. So a set that is due is *frozen*
//! (`Flushing`) and written a slice at a time (at most 64 posting rows and
//! [`SLICE_IDS`] ids; a list is sorted when the cursor enters it):
//!
//! - in the writer's gaps: when its queue is empty, it writes slices in a transaction
//!   of its own for up to [`GAP_BUDGET`], then looks at the queue again. A submission
//!   arriving meanwhile waits for the slice under way and that transaction's commit;
//! - inside each commit, only its share: enough that the frozen set is written by the
//!   time another `FLUSH_ROWS / 2` records have been committed, gaps or not. Gaps
//!   usually write it all first, and then the share is nothing; a saturated writer
//!   has no gaps and writes its share (sorts included) in its commits. So the pending
//!   set, which keeps filling meanwhile, is never more than about `FLUSH_ROWS` behind,
//!   and the records past the watermark (the tail a query scans) about 1.5 ×
//!   `FLUSH_ROWS`: twice that after a restart that rebuilt a large tail;
//! - the slices follow the sorted order, so they dirty mostly the pages one write of
//!   the set would have; the pages at the edges of each gap transaction are written to
//!   the WAL again, which the writer's bulk rate pays a few percent for;
//! - the watermark (`ix_state.indexed_through`) moves only when the whole frozen set
//!   is written, in the transaction that writes its last slice.
//!
//! A query trusts the `ix_*` tables only up to the watermark and scans the records
//! past it by their tag columns, so the postings of a set still being written are
//! ignored, not counted twice. A crash between two slices leaves such postings behind:
//! [`BlindIndex::rebuild`] deletes them (their first id is past the watermark, which no
//! finished set's is) and rebuilds the entries from the records.

use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::{postings, schema};

/// Freeze the pending entries for writing once this many rows are waiting, even inside
/// one bucket: bounds the writer's memory and the unindexed tail a query scans.
///
/// Larger sets are cheaper per row: each write of a set rewrites most index pages of
/// the open bucket, whatever the set's size (flushing every 8,192 rows cost a quarter
/// of the writer's throughput, criterion: 347k → 257k records/s).
pub const FLUSH_ROWS: usize = 65_536;

/// Longest a writer with nothing queued spends on index slices before it looks at its
/// queue again (a frozen set of 65,536 records takes 60–80 ms in all on the 2-core
/// test machine).
pub const GAP_BUDGET: Duration = Duration::from_micros(500);

/// Most record ids one slice writes: with few tags and long lists (an account's, an
/// IP's) a slice of 64 postings could otherwise hold 65,536 ids.
pub const SLICE_IDS: usize = 4_096;

/// `(bucket, tag, record id)`.
type Entry = (i64, i64, i64);

/// A posting row before insertion: `(bucket, tag, first id, ids blob)`.
type PostingRow = (i64, i64, i64, Vec<u8>);

/// Entries of rows not yet frozen, one list per [`crate::store::IndexKind`] (account,
/// ip, originator, recipient).
/// Every list, and `records`, is in ascending id order (the order rows are pushed in).
#[derive(Default)]
struct Pending {
    entries: [Vec<Entry>; 4],
    /// `(id, bucket)` of each record.
    records: Vec<(i64, i64)>,
    /// The bucket range of `records`, kept as they are pushed: `due` is asked often.
    min_bucket: i64,
    max_bucket: i64,
}

impl Pending {
    fn rows(&self) -> usize {
        self.records.len()
    }

    /// A bucket has closed (a later one has begun) or the cap is reached.
    fn due(&self) -> bool {
        self.rows() >= FLUSH_ROWS || (self.rows() > 0 && self.max_bucket > self.min_bucket)
    }

    /// Takes the entries of the first `FLUSH_ROWS` records at most (a tail rebuilt
    /// after failures can be longer), leaving the rest pending; with them, how many
    /// records they are and the last id taken. Not called on an empty set.
    ///
    /// `spare` are the empty lists of the set written before, which the pending
    /// entries go on filling: lists grown afresh for every set (doubling, copying and
    /// faulting in new pages up to 1.5 MiB each) were 5% of the writer's time.
    fn take_set(&mut self, spare: [Vec<Entry>; 4]) -> ([Vec<Entry>; 4], usize, i64) {
        debug_assert!(
            spare.iter().all(Vec::is_empty),
            "a written set's lists are emptied as the cursor passes them"
        );
        if self.rows() <= FLUSH_ROWS {
            let through = self.records.last().map_or(0, |r| r.0);
            let rows = self.rows();
            self.records.clear();
            return (std::mem::replace(&mut self.entries, spare), rows, through);
        }
        let through = self.records[FLUSH_ROWS - 1].0;
        let mut entries: [Vec<Entry>; 4] = Default::default();
        for (taken, list) in entries.iter_mut().zip(self.entries.iter_mut()) {
            let rest = list.split_off(list.partition_point(|e| e.2 <= through));
            *taken = std::mem::replace(list, rest);
            taken.shrink_to_fit();
        }
        self.records.drain(..FLUSH_ROWS);
        self.min_bucket = self.records.iter().map(|r| r.1).min().unwrap_or(0);
        self.max_bucket = self.records.iter().map(|r| r.1).max().unwrap_or(0);
        (entries, FLUSH_ROWS, through)
    }
}

/// A frozen set being written: each kind's list is sorted when the cursor reaches it.
struct Flushing {
    entries: [Vec<Entry>; 4],
    /// The cursor: the list being written and the next entry in it.
    kind: usize,
    pos: usize,
    /// The list under the cursor is sorted.
    sorted: bool,
    /// Entries in all four lists, and how many of them are written.
    total: usize,
    written: usize,
    /// Records committed since it was frozen: what the pace is reckoned against.
    rows_since: usize,
    /// Records it covers.
    rows: usize,
    /// The watermark once it is written: every record id up to this is indexed.
    through: i64,
}

impl Flushing {
    fn done(&self) -> bool {
        self.kind == self.entries.len()
    }

    /// Moves the cursor past written (or empty) lists, emptying them (their room is
    /// used again by the next pending set, see [`Pending::take_set`]).
    fn skip_written(&mut self) {
        while self.kind < self.entries.len() && self.pos >= self.entries[self.kind].len() {
            self.entries[self.kind].clear();
            self.kind += 1;
            self.pos = 0;
            self.sorted = false;
        }
    }

    /// Entries that must be written by now to finish within `FLUSH_ROWS / 2` rows.
    fn share(&self) -> usize {
        let due = self.total as u128 * self.rows_since as u128 * 2 / FLUSH_ROWS as u128;
        due.min(self.total as u128) as usize
    }
}

/// How much one call may write.
#[derive(Clone, Copy)]
pub enum Budget {
    /// Inside a commit: its share of the frozen set (module docs), nothing more.
    Share,
    /// A gap in the writer's work: slices for up to [`GAP_BUDGET`] (at least one).
    Gap,
    /// An idle writer: like `Gap`, and pending entries are frozen even if not due.
    Idle,
    /// Everything, pending entries included (closing a partition, stopping).
    All,
}

/// One open partition's index entries waiting to be written.
pub struct BlindIndex {
    pending: Pending,
    flushing: Option<Flushing>,
    /// [`GAP_BUDGET`]; tests set 0 to write exactly one slice per gap.
    gap_budget: Duration,
    /// Scratch, kept between steps.
    ids: Vec<i64>,
    rows: Vec<PostingRow>,
    /// The emptied lists of the last set written, for the next pending set.
    spare: [Vec<Entry>; 4],
}

impl Default for BlindIndex {
    fn default() -> Self {
        BlindIndex {
            pending: Pending::default(),
            flushing: None,
            gap_budget: GAP_BUDGET,
            ids: Vec::new(),
            rows: Vec::new(),
            spare: Default::default(),
        }
    }
}

impl BlindIndex {
    pub fn push(&mut self, id: i64, bucket: i64, tags: [Option<i64>; 4]) {
        let p = &mut self.pending;
        debug_assert!(
            p.records.last().is_none_or(|r| r.0 < id),
            "ids pushed in order"
        );
        if p.records.is_empty() {
            p.min_bucket = bucket;
            p.max_bucket = bucket;
        }
        p.min_bucket = p.min_bucket.min(bucket);
        p.max_bucket = p.max_bucket.max(bucket);
        for (list, tag) in p.entries.iter_mut().zip(tags) {
            if let Some(tag) = tag {
                list.push((bucket, tag, id));
            }
        }
        p.records.push((id, bucket));
    }

    /// Rows whose entries are not in the `ix_*` tables yet.
    pub fn waiting(&self) -> usize {
        self.pending.rows() + self.flushing.as_ref().map_or(0, |f| f.rows)
    }

    /// Entries not written yet: every slice makes it smaller.
    pub fn remaining(&self) -> usize {
        let pending: usize = self.pending.entries.iter().map(Vec::len).sum();
        pending + self.flushing.as_ref().map_or(0, |f| f.total - f.written)
    }

    /// A set is being written, or is due to be: work for the writer's gaps.
    pub fn busy(&self) -> bool {
        self.flushing.is_some() || self.pending.due()
    }

    /// Writes index entries inside the caller's transaction, as much as `budget`
    /// allows, and says how many posting rows it wrote; `records` is how many records
    /// the transaction commits (the pace is reckoned in them, see the module docs). If the transaction fails, the partition
    /// is dropped and reopened, and [`BlindIndex::rebuild`] starts again from the file.
    pub fn write(
        &mut self,
        tx: &Connection,
        records: usize,
        budget: Budget,
    ) -> rusqlite::Result<usize> {
        let started = Instant::now();
        let gap_budget = self.gap_budget;
        let spent = || started.elapsed() >= gap_budget;
        if let Some(f) = &mut self.flushing {
            f.rows_since += records;
        }
        let (mut slices, mut written) = (0usize, 0usize);
        loop {
            if self.flushing.is_none() {
                let wanted = match budget {
                    Budget::Share | Budget::Gap => self.pending.due(),
                    Budget::Idle | Budget::All => self.pending.rows() > 0,
                };
                if !wanted {
                    return Ok(written);
                }
                self.freeze();
            }
            let Some(f) = self.flushing.as_mut() else {
                return Ok(written);
            };
            while !f.done() {
                let enough = match budget {
                    Budget::Share => f.written >= f.share(),
                    Budget::Gap | Budget::Idle => slices > 0 && spent(),
                    Budget::All => false,
                };
                if enough {
                    return Ok(written);
                }
                written += write_slice(tx, f, &mut self.ids, &mut self.rows)?;
                slices += 1;
            }
            tx.prepare_cached(schema::SET_INDEXED_THROUGH)?
                .execute([f.through])?;
            if let Some(done) = self.flushing.take() {
                self.spare = done.entries;
            }
            if matches!(budget, Budget::Idle | Budget::All) {
                // Idle or closing: the room is given back rather than kept.
                self.spare = Default::default();
            }
        }
    }

    fn freeze(&mut self) {
        let (entries, rows, through) = self.pending.take_set(std::mem::take(&mut self.spare));
        let mut f = Flushing {
            total: entries.iter().map(Vec::len).sum(),
            entries,
            kind: 0,
            pos: 0,
            sorted: false,
            written: 0,
            rows_since: 0,
            rows,
            through,
        };
        f.skip_written();
        self.flushing = Some(f);
    }

    /// The entries of every row past the watermark, after a restart or a reopen.
    /// Postings a set cut short left behind (ids past the watermark) are deleted first:
    /// their entries are rebuilt with the rest.
    pub fn rebuild(conn: &Connection) -> rusqlite::Result<BlindIndex> {
        let mut index = BlindIndex::default();
        let through: i64 = conn.query_row(schema::GET_INDEXED_THROUGH, [], |r| r.get(0))?;
        let first_bucket: Option<i64> = conn.query_row(
            "SELECT min(bucket) FROM record WHERE id > ?1",
            [through],
            |r| r.get(0),
        )?;
        if let Some(bucket) = first_bucket {
            for table in schema::INDEX_TABLES {
                conn.execute(
                    &format!("DELETE FROM {table} WHERE bucket >= ?1 AND first > ?2"),
                    params![bucket, through],
                )?;
            }
        }
        let mut stmt = conn.prepare(
            "SELECT id, bucket, account_ix, ip_ix, originator_ix, recipient_ix FROM record WHERE id > ?1 ORDER BY id",
        )?;
        let mut rows = stmt.query([through])?;
        while let Some(r) = rows.next()? {
            index.push(
                r.get(0)?,
                r.get(1)?,
                [Some(r.get(2)?), Some(r.get(3)?), r.get(4)?, Some(r.get(5)?)],
            );
        }
        Ok(index)
    }
}

/// Writes the next slice from the cursor: at most [`schema::POSTINGS_PER_INSERT`]
/// posting rows holding at most [`SLICE_IDS`] ids. A posting is a run of one
/// `(bucket, tag)`'s ids, at most [`postings::MAX_IDS`]; a long run is split over
/// postings and slices (each keyed by its own first id, and a query reads them all).
/// The list is sorted when the cursor enters it.
fn write_slice(
    tx: &Connection,
    f: &mut Flushing,
    ids: &mut Vec<i64>,
    out: &mut Vec<PostingRow>,
) -> rusqlite::Result<usize> {
    let kind = f.kind;
    let list = &mut f.entries[kind];
    if !f.sorted {
        list.sort_unstable();
        f.sorted = true;
    }
    out.clear();
    let last = (f.pos + SLICE_IDS).min(list.len());
    let mut at = f.pos;
    while at < last && out.len() < schema::POSTINGS_PER_INSERT {
        let (bucket, tag) = (list[at].0, list[at].1);
        let limit = (at + postings::MAX_IDS).min(last);
        let run = list[at..limit]
            .iter()
            .take_while(|e| (e.0, e.1) == (bucket, tag))
            .count();
        ids.clear();
        ids.extend(list[at..at + run].iter().map(|e| e.2));
        let mut blob = Vec::with_capacity(ids.len() * 2);
        postings::encode(ids, &mut blob);
        out.push((bucket, tag, ids[0], blob));
        at += run;
    }
    if out.len() == schema::POSTINGS_PER_INSERT {
        // Many rows per statement: the index is the writer's second-largest cost.
        let mut stmt = tx.prepare_cached(schema::insert_postings_many(kind))?;
        for (k, (bucket, tag, first, blob)) in out.iter().enumerate() {
            stmt.raw_bind_parameter(4 * k + 1, bucket)?;
            stmt.raw_bind_parameter(4 * k + 2, tag)?;
            stmt.raw_bind_parameter(4 * k + 3, first)?;
            stmt.raw_bind_parameter(4 * k + 4, blob)?;
        }
        stmt.raw_execute()?;
    } else {
        let mut stmt = tx.prepare_cached(schema::INSERT_INDEX[kind])?;
        for (bucket, tag, first, blob) in out.iter() {
            stmt.execute(params![bucket, tag, first, blob])?;
        }
    }
    f.written += at - f.pos;
    f.pos = at;
    f.skip_written();
    Ok(out.len())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::SyncMode;

    /// Tags of record `id`: few accounts and IPs (long posting lists), many recipients.
    fn tags(id: i64) -> [Option<i64>; 4] {
        [
            Some(id % 3),
            Some(1_000 + id % 7),
            (id % 2 == 0).then_some(2_000 + id % 11),
            Some(10_000 + (id * 7_919) % 1_301),
        ]
    }

    fn bucket(id: i64) -> i64 {
        100 + id / 2_000
    }

    /// A partition file holding records `1..=n`.
    fn partition(dir: &tempfile::TempDir, n: i64) -> Connection {
        let conn = schema::open_for_write(
            &dir.path().join("2026-11-22.sqlite"),
            "2026-11-22",
            SyncMode::Normal,
            2,
        )
        .unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for id in 1..=n {
            let t = tags(id);
            tx.execute(
                "INSERT INTO record (id, submission, ordinal, at_us, bucket, protocol, service, recipient_form, segments, account_ix, ip_ix, originator_ix, recipient_ix, sealed) VALUES (?1, ?1, 0, ?1, ?2, 1, 1, 1, 1, ?3, ?4, ?5, ?6, x'00')",
                params![id, bucket(id), t[0], t[1], t[2], t[3]],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        conn
    }

    fn watermark(conn: &Connection) -> i64 {
        conn.query_row(schema::GET_INDEXED_THROUGH, [], |r| r.get(0))
            .unwrap()
    }

    /// Every `(bucket, tag)` of one index table with its ids, each as often as stored.
    fn stored(conn: &Connection, kind: usize) -> BTreeMap<(i64, i64), Vec<i64>> {
        let mut out: BTreeMap<(i64, i64), Vec<i64>> = BTreeMap::new();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT bucket, tag, ids FROM {}",
                schema::INDEX_TABLES[kind]
            ))
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let blob: Vec<u8> = r.get(2).unwrap();
            let ids = out
                .entry((r.get(0).unwrap(), r.get(1).unwrap()))
                .or_default();
            postings::decode(&blob, ids).unwrap();
        }
        for ids in out.values_mut() {
            ids.sort_unstable();
        }
        out
    }

    /// What the tables must hold once records `1..=n` are indexed.
    fn expected(n: i64, kind: usize) -> BTreeMap<(i64, i64), Vec<i64>> {
        let mut out: BTreeMap<(i64, i64), Vec<i64>> = BTreeMap::new();
        for id in 1..=n {
            if let Some(tag) = tags(id)[kind] {
                out.entry((bucket(id), tag)).or_default().push(id);
            }
        }
        out
    }

    /// An index holding records `ids`, writing one slice per gap.
    fn slow_index(ids: std::ops::RangeInclusive<i64>) -> BlindIndex {
        let mut index = BlindIndex {
            gap_budget: Duration::ZERO,
            ..Default::default()
        };
        for id in ids {
            index.push(id, bucket(id), tags(id));
        }
        index
    }

    /// Records `1..=n` are all indexed, each id once, and the watermark says so.
    fn assert_indexed(conn: &Connection, n: i64) {
        assert_eq!(watermark(conn), n);
        for kind in 0..4 {
            assert_eq!(stored(conn, kind), expected(n, kind), "index {kind}");
        }
    }

    /// Posting rows and ids in all four index tables.
    fn stored_sizes(conn: &Connection) -> (usize, usize) {
        (0..4)
            .map(|k| {
                let s = stored(conn, k);
                let rows: i64 = conn
                    .query_row(
                        &format!("SELECT count(*) FROM {}", schema::INDEX_TABLES[k]),
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                (rows as usize, s.values().map(Vec::len).sum::<usize>())
            })
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    fn step(conn: &Connection, index: &mut BlindIndex, rows: usize, budget: Budget) {
        let tx = conn.unchecked_transaction().unwrap();
        let _ = index.write(&tx, rows, budget).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn a_frozen_set_is_written_a_slice_per_step_and_the_watermark_moves_last() {
        let dir = tempfile::tempdir().unwrap();
        let n = 5_000;
        let conn = partition(&dir, n);
        let mut index = slow_index(1..=n);
        assert_eq!(index.waiting(), n as usize);
        let mut steps = 0;
        let (mut rows, mut ids) = (0, 0);
        while index.waiting() > 0 {
            step(&conn, &mut index, 0, Budget::Gap);
            steps += 1;
            let (r, i) = stored_sizes(&conn);
            assert!(
                r - rows <= 64 && i - ids <= SLICE_IDS,
                "a slice of {} rows, {} ids",
                r - rows,
                i - ids
            );
            (rows, ids) = (r, i);
            if index.waiting() > 0 {
                assert_eq!(watermark(&conn), 0, "moved before the set was written");
            }
            assert!(steps < 10_000, "no progress");
        }
        // 5,000 recipients' postings alone are far more than one slice of 64.
        assert!(steps > 20, "written in {steps} steps");
        assert_indexed(&conn, n);
    }

    /// The lists of a written set are filled again by the next pending entries: set
    /// after set, with records pushed between the steps, every id is indexed once.
    #[test]
    fn written_sets_lend_their_room_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let n = 9_000;
        let conn = partition(&dir, n);
        let mut index = BlindIndex {
            gap_budget: Duration::ZERO,
            ..Default::default()
        };
        let mut reused = 0;
        for chunk in [1..=2_500, 2_501..=4_500, 4_501..=6_500, 6_501..=n] {
            for id in chunk {
                index.push(id, bucket(id), tags(id));
                // The first entry after a freeze: a list grown by itself would hold
                // room for a few, one lent holds a written set's.
                if index.pending.rows() == 1 && index.pending.entries[3].capacity() >= 1_000 {
                    reused += 1;
                }
                if id % 500 == 0 {
                    step(&conn, &mut index, 500, Budget::Gap);
                }
            }
            while index.flushing.is_some() || index.pending.due() {
                step(&conn, &mut index, 0, Budget::Gap);
            }
        }
        assert!(reused >= 2, "room lent {reused} times");
        step(&conn, &mut index, 0, Budget::All);
        assert_indexed(&conn, n);
    }

    #[test]
    fn a_set_not_yet_due_waits_for_its_bucket_to_close() {
        let dir = tempfile::tempdir().unwrap();
        let conn = partition(&dir, 2_001);
        let mut index = BlindIndex::default();
        for id in 1..2_000 {
            index.push(id, bucket(id), tags(id));
        }
        step(&conn, &mut index, 1_999, Budget::Share);
        assert_eq!(index.waiting(), 1_999, "one open bucket: nothing due");
        index.push(2_000, bucket(2_000), tags(2_000));
        index.push(2_001, bucket(2_001), tags(2_001));
        step(&conn, &mut index, 2, Budget::Share);
        assert_eq!(
            index.pending.rows(),
            0,
            "a closed bucket is frozen for writing"
        );
        let f = index.flushing.as_ref().unwrap();
        assert_eq!(f.written, 0, "its share is nothing yet");
        assert_eq!(watermark(&conn), 0);
        step(&conn, &mut index, 0, Budget::All);
        assert_eq!(index.waiting(), 0);
        assert_eq!(watermark(&conn), 2_001);
    }

    /// Each commit's share finishes a frozen set by `FLUSH_ROWS / 2` rows, whatever the
    /// time budget.
    #[test]
    fn the_pace_finishes_a_set_within_half_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let n = 3_000;
        let conn = partition(&dir, n);
        let mut index = slow_index(1..=n);
        step(&conn, &mut index, 0, Budget::Share);
        assert_eq!(
            index.flushing.as_ref().unwrap().written,
            0,
            "no rows, no share"
        );
        let total: usize = (0..4)
            .map(|k| expected(n, k).values().map(Vec::len).sum::<usize>())
            .sum();
        let f = index.flushing.as_ref().unwrap();
        assert_eq!(f.total, total);
        step(&conn, &mut index, FLUSH_ROWS / 4, Budget::Share);
        let half = index.flushing.as_ref().unwrap().written;
        assert!(
            half >= total / 2 && half < total,
            "{half} of {total} after a quarter of the cap"
        );
        step(&conn, &mut index, FLUSH_ROWS / 4, Budget::Share);
        assert_eq!(index.waiting(), 0, "done at half the cap");
        assert_eq!(watermark(&conn), n);
    }

    /// A writer that stops between two slices leaves postings past the watermark; the
    /// next one deletes them, rebuilds the entries from the records, and ends with
    /// every id stored exactly once.
    #[test]
    fn a_set_cut_short_is_rebuilt_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let n = 5_000;
        let conn = partition(&dir, n);
        let mut index = slow_index(1..=n / 2);
        step(&conn, &mut index, 0, Budget::All);
        assert_eq!(watermark(&conn), n / 2);
        for id in n / 2 + 1..=n {
            index.push(id, bucket(id), tags(id));
        }
        for _ in 0..10 {
            step(&conn, &mut index, 0, Budget::Idle);
        }
        assert!(index.waiting() > 0, "cut short");
        assert!(
            stored(&conn, 0).values().flatten().any(|&id| id > n / 2),
            "postings past the watermark"
        );
        drop(index);

        let mut index = BlindIndex::rebuild(&conn).unwrap();
        assert_eq!(index.waiting(), (n / 2) as usize);
        assert!(
            (0..4).all(|k| stored(&conn, k).values().flatten().all(|&id| id <= n / 2)),
            "the partial set's postings are gone"
        );
        step(&conn, &mut index, 0, Budget::All);
        assert_indexed(&conn, n);
    }

    /// An idle writer writes entries not yet due; a gap does not.
    #[test]
    fn idle_writes_what_is_not_due_and_a_gap_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let conn = partition(&dir, 100);
        let mut index = BlindIndex::default();
        for id in 1..=100 {
            index.push(id, bucket(id), tags(id));
        }
        assert!(!index.busy(), "one open bucket, under the cap");
        step(&conn, &mut index, 0, Budget::Gap);
        assert_eq!(index.waiting(), 100);
        while index.waiting() > 0 {
            step(&conn, &mut index, 0, Budget::Idle);
        }
        assert_eq!(watermark(&conn), 100);
        assert_eq!(stored(&conn, 3), expected(100, 3));
    }

    /// One tag with thousands of ids (an account's) is split over postings of at most
    /// MAX_IDS and slices of at most SLICE_IDS; a kind with no entries at all (no
    /// originators) is passed over.
    #[test]
    fn a_long_list_is_split_and_an_empty_one_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let n = 10_000;
        let conn = partition(&dir, n);
        let mut index = BlindIndex {
            gap_budget: Duration::ZERO,
            ..Default::default()
        };
        for id in 1..=n {
            // All in one bucket, one account, one IP, no originator.
            index.push(id, 7, [Some(1), Some(2), None, Some(3 + id % 5)]);
        }
        step(&conn, &mut index, 0, Budget::Idle);
        let (rows, ids) = stored_sizes(&conn);
        assert!(
            rows <= 64 && ids <= SLICE_IDS,
            "first slice: {rows} rows, {ids} ids"
        );
        while index.waiting() > 0 {
            step(&conn, &mut index, 0, Budget::Idle);
        }
        assert_eq!(watermark(&conn), n);
        let account = stored(&conn, 0);
        assert_eq!(account.len(), 1);
        assert_eq!(account[&(7, 1)], (1..=n).collect::<Vec<_>>());
        let mut stmt = conn.prepare("SELECT ids FROM ix_account").unwrap();
        let blobs: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(blobs.len() >= n as usize / postings::MAX_IDS);
        for blob in blobs {
            let mut ids = Vec::new();
            postings::decode(&blob, &mut ids).unwrap();
            assert!(
                ids.len() <= postings::MAX_IDS,
                "a posting of {} ids",
                ids.len()
            );
        }
        assert!(stored(&conn, 2).is_empty(), "no originators");
    }

    /// A tail longer than the cap (rebuilt after failures) is frozen a cap at a time,
    /// the watermark moving at each set's end.
    #[test]
    fn a_long_tail_is_frozen_a_cap_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let n = FLUSH_ROWS as i64 + 500;
        let conn = partition(&dir, n);
        let mut index = BlindIndex::rebuild(&conn).unwrap();
        assert_eq!(index.waiting(), n as usize);
        step(&conn, &mut index, 0, Budget::Share);
        let f = index.flushing.as_ref().unwrap();
        assert_eq!((f.rows, f.through), (FLUSH_ROWS, FLUSH_ROWS as i64));
        assert_eq!(index.pending.rows(), 500);
        assert_eq!(
            index.pending.entries[0].first().map(|e| e.2),
            Some(FLUSH_ROWS as i64 + 1)
        );
        step(&conn, &mut index, FLUSH_ROWS / 2, Budget::Share);
        assert_eq!(
            watermark(&conn),
            FLUSH_ROWS as i64,
            "the first set is written"
        );
        step(&conn, &mut index, 0, Budget::All);
        assert_eq!(watermark(&conn), n);
        assert_eq!(stored(&conn, 3), expected(n, 3));
    }
}
