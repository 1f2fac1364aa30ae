//! Where a partition keeps its outcome events, and how every reader gets them back.
//!
//! Two places, one sequence of ids (the writer's, never reused) over both:
//!
//! ```sql
//! outcome_block(first INTEGER PRIMARY KEY,  -- the lowest event id it holds
//!               last,                       -- the highest
//!               sub_min, sub_max,           -- its lowest and highest submission id, at most SPAN apart
//!                                           --   (the columns are exactly what the events span)
//!               events)                     -- per event, in id order: its id (i64 LE) and its
//!                                           --   fields as `journal::put_outcome` writes them
//! outcome(id INTEGER PRIMARY KEY, submission, ...)   -- one row per event (see `schema`)
//! ```
//!
//! The writer puts the events of one transaction whose submissions lie within [`SPAN`]
//! of the newest one's into one block: nearly all of them, since an HTTP or SMTP
//! outcome follows its submission by milliseconds, and a transaction's events come
//! from the same few milliseconds of submissions. The rest (an SMPP delivery receipt
//! hours later) go into `outcome` one row each, as every event did before blocks. One
//! block row and one entry of its index per transaction cost the writer less than a
//! row and an index entry per event (measured: `benches/instructions.sh`, see the
//! README's Performance section).
//!
//! A block is found by submission through its index on `(sub_min, sub_max)`: the
//! blocks that can hold submission `s` are those with `sub_min` in `[s - SPAN, s]`, a
//! range seek that compares `sub_max` in the index, so only the blocks that span `s`
//! are read (one or two). Readers take events from both places and merge them by id, so the
//! Merkle fold (`integrity`) and a record's latest outcome (`query`) see one sequence.
//! A block whose contents disagree with its columns (an id or a submission outside
//! them, ids out of order, bounds further apart than `SPAN`) is an error, never
//! skipped: `verify` reports the partition damaged.
//!
//! Erasure writes a block again without the erased events, under columns that bound
//! only what is left ([`remove`]).
//!
//! Partitions written before blocks have no `outcome_block` table until a writer opens
//! them (and creates it, empty): readers ask once ([`has_blocks`]).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::journal::{Cursor, put_outcome};
use super::rows::OutcomeRow;
use super::schema;

/// Widest span of submission ids in one block: 2^28 units of `SubmissionId` (µs << 8),
/// about 1.05 s of submissions.
pub const SPAN: i64 = 1 << 28;

/// The block table and its index; created with new partitions and on older ones when
/// a writer opens them.
pub const DDL: &str = "
CREATE TABLE IF NOT EXISTS outcome_block (
    first   INTEGER PRIMARY KEY,
    last    INTEGER NOT NULL,
    sub_min INTEGER NOT NULL,
    sub_max INTEGER NOT NULL,
    events  BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outcome_block_sub ON outcome_block(sub_min, sub_max);
";

/// See `schema::INSERT_RECORD` for why `OR ROLLBACK`.
const INSERT_BLOCK: &str = "INSERT OR ROLLBACK INTO outcome_block (first, last, sub_min, sub_max, events) \
     VALUES (?1, ?2, ?3, ?4, ?5)";

const BLOCK_COLUMNS: &str = "first, last, sub_min, sub_max, events";

/// Gives a transaction's events their ids, from `next` on in the order they came, and
/// places them: those of submissions within [`SPAN`] of the newest one's in blocks
/// (one, unless it passes [`BLOCK_BYTES`]), the others (a receipt long after its
/// submission) for rows.
pub fn place<'a>(events: &[&'a OutcomeRow], next: i64) -> (Vec<Block>, Vec<(i64, &'a OutcomeRow)>) {
    let floor = block_floor(events);
    let (mut blocks, mut rows) = (vec![Block::default()], Vec::new());
    for (id, o) in (next..).zip(events) {
        if o.submission < floor {
            rows.push((id, *o));
            continue;
        }
        if blocks.last().is_some_and(|b| b.events.len() >= BLOCK_BYTES) {
            blocks.push(Block::default());
        }
        if let Some(block) = blocks.last_mut() {
            block.push(id, o);
        }
    }
    (blocks, rows)
}

/// The oldest submission whose events go into a block with these: [`SPAN`] before the
/// newest (older ones, rows).
pub fn block_floor(events: &[&OutcomeRow]) -> i64 {
    events
        .iter()
        .map(|o| o.submission)
        .max()
        .map_or(i64::MIN, |newest| newest.saturating_sub(SPAN))
}

/// A block is closed once it holds this many bytes, and the next event starts another:
/// a reader decodes one block whole.
pub const BLOCK_BYTES: usize = 1 << 20;

/// Largest block a reader decodes: [`BLOCK_BYTES`] and one event, with room to spare
/// (an event's strings are bounded far below this by the protocols' parsers).
const MAX_BLOCK_BYTES: usize = 4 * BLOCK_BYTES;

/// A block being filled by the writer, events in id order; its columns are what they
/// span.
#[derive(Debug, Default)]
pub struct Block {
    events: Vec<u8>,
    first: i64,
    last: i64,
    sub_min: i64,
    sub_max: i64,
}

impl Block {
    fn push(&mut self, id: i64, o: &OutcomeRow) {
        if self.events.is_empty() {
            (self.first, self.sub_min, self.sub_max) = (id, o.submission, o.submission);
        }
        debug_assert!(id > self.last || self.events.is_empty());
        self.last = id;
        self.sub_min = self.sub_min.min(o.submission);
        self.sub_max = self.sub_max.max(o.submission);
        self.events.extend_from_slice(&id.to_le_bytes());
        put_outcome(&mut self.events, o);
    }

    /// Inserts the block; nothing when it is empty.
    pub fn insert(self, tx: &Connection) -> rusqlite::Result<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        debug_assert!(self.sub_max - self.sub_min <= SPAN);
        tx.prepare_cached(INSERT_BLOCK)?.execute(params![
            self.first,
            self.last,
            self.sub_min,
            self.sub_max,
            self.events
        ])?;
        Ok(())
    }
}

/// An SQL expression, true when the partition has the block table (see the module's
/// last paragraph): for readers that ask it beside other questions in one statement.
pub const HAS_BLOCKS: &str =
    "EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outcome_block')";

/// Whether the partition has the block table ([`HAS_BLOCKS`]).
pub fn has_blocks(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(&format!("SELECT {HAS_BLOCKS}"), [], |r| r.get(0))
}

/// `SELECT <outcome columns> FROM outcome` for this partition (see
/// [`schema::outcome_columns`]), read by [`read_row`].
pub fn row_select(conn: &Connection) -> rusqlite::Result<String> {
    Ok(format!(
        "SELECT {} FROM outcome",
        schema::outcome_columns(conn)?
    ))
}

/// One row of [`row_select`]: its id and event (the leaf left empty).
pub fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, OutcomeRow)> {
    Ok((
        r.get(0)?,
        OutcomeRow {
            submission: r.get(1)?,
            at_us: r.get(2)?,
            outcome: r.get(3)?,
            upstream_status: r.get(4)?,
            gateway_code: r.get(5)?,
            message_id_sealed: r.get(6)?,
            enhanced_status: r.get(7)?,
            size_bytes: r.get::<_, Option<i64>>(8)?.map(|n| n.max(0) as u64),
            ordinal: r.get(9)?,
            receipt_state: r.get(10)?,
            receipt_error: r.get(11)?,
            receipt_done: r.get(12)?,
            leaf: [0; 32],
        },
    ))
}

/// Binds an event as one row of `schema::INSERT_OUTCOME`'s columns, from parameter `n`
/// on: what [`read_row`] reads back.
pub fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    n: usize,
    id: i64,
    o: &OutcomeRow,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(n, id)?;
    stmt.raw_bind_parameter(n + 1, o.submission)?;
    stmt.raw_bind_parameter(n + 2, o.at_us)?;
    stmt.raw_bind_parameter(n + 3, o.outcome)?;
    stmt.raw_bind_parameter(n + 4, o.upstream_status)?;
    stmt.raw_bind_parameter(n + 5, o.gateway_code)?;
    stmt.raw_bind_parameter(n + 6, &o.message_id_sealed)?;
    stmt.raw_bind_parameter(n + 7, &o.enhanced_status)?;
    stmt.raw_bind_parameter(n + 8, o.size_bytes.map(|n| n.min(i64::MAX as u64) as i64))?;
    stmt.raw_bind_parameter(n + 9, o.ordinal)?;
    stmt.raw_bind_parameter(n + 10, &o.receipt_state)?;
    stmt.raw_bind_parameter(n + 11, &o.receipt_error)?;
    stmt.raw_bind_parameter(n + 12, &o.receipt_done)
}

/// A block whose contents do not match its columns or do not decode.
#[derive(Debug, thiserror::Error)]
#[error("outcome block {first}: {what}")]
pub struct Malformed {
    first: i64,
    what: &'static str,
}

impl From<Malformed> for rusqlite::Error {
    /// As rusqlite reports a column that does not convert: the block's blob (column 4).
    fn from(m: Malformed) -> Self {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Blob, m.into())
    }
}

/// The events of one row of `SELECT {BLOCK_COLUMNS} FROM outcome_block` that `keep`
/// takes, every one checked against its columns.
fn read_block(
    r: &rusqlite::Row<'_>,
    keep: impl Fn(&OutcomeRow) -> bool,
) -> rusqlite::Result<Vec<(i64, OutcomeRow)>> {
    let (first, last, sub_min, sub_max): (i64, i64, i64, i64) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
    let bytes = r.get_ref(4)?.as_blob()?;
    Ok(decode(first, last, (sub_min, sub_max), bytes, keep)?)
}

/// A block's events, checked against its columns (`first`, `last`, the submissions'
/// bounds), those `keep` takes: what every reader of `outcome_block` does.
pub fn decode(
    first: i64,
    last: i64,
    (sub_min, sub_max): (i64, i64),
    bytes: &[u8],
    keep: impl Fn(&OutcomeRow) -> bool,
) -> Result<Vec<(i64, OutcomeRow)>, Malformed> {
    let bad = |what| Malformed { first, what };
    // Ids start at 1; the bounds are compared without overflowing (a span that
    // wrapped round would pass for a narrow one and hide the block from lookups).
    if first < 1 || first > last {
        return Err(bad("ids out of order or below 1"));
    }
    if sub_max
        .checked_sub(sub_min)
        .is_none_or(|span| !(0..=SPAN).contains(&span))
    {
        return Err(bad("submission bounds out of order or too far apart"));
    }
    if bytes.len() > MAX_BLOCK_BYTES {
        return Err(bad("larger than any block written"));
    }
    let mut c = Cursor(bytes);
    let mut out = Vec::new();
    // What the events span: the columns must say exactly that (a wider column would
    // let a lookup or an erasure pass over ids or submissions it does not hold).
    let (mut ids, mut subs) = (None::<(i64, i64)>, (i64::MAX, i64::MIN));
    while !c.0.is_empty() {
        let (id, o) = c
            .i64()
            .zip(c.outcome())
            .ok_or_else(|| bad("an event does not decode"))?;
        if ids.is_some_and(|(_, prev)| id <= prev) {
            return Err(bad("event ids out of order"));
        }
        ids = Some((ids.map_or(id, |(low, _)| low), id));
        subs = (subs.0.min(o.submission), subs.1.max(o.submission));
        if keep(&o) {
            out.push((id, o));
        }
    }
    if ids != Some((first, last)) || subs != (sub_min, sub_max) {
        return Err(bad("its columns are not the ids and submissions it holds"));
    }
    Ok(out)
}

/// Reads a partition's events in id order from both places: the Merkle fold's view of
/// it (`integrity::TreeState::load` and `verify`).
pub struct Scan<'c> {
    rows: rusqlite::Statement<'c>,
    blocks: Option<rusqlite::Statement<'c>>,
    after: Option<i64>,
}

/// An event (id, fields) or the error that stopped the reading.
pub type Event = rusqlite::Result<(i64, OutcomeRow)>;

impl<'c> Scan<'c> {
    /// Every event, whatever its id: `verify` must see an id no writer gives (0 or
    /// below) to report it.
    pub fn all(conn: &'c Connection) -> rusqlite::Result<Scan<'c>> {
        let rows = conn.prepare(&format!("{} ORDER BY id", row_select(conn)?))?;
        let blocks = match has_blocks(conn)? {
            true => Some(conn.prepare(&format!(
                "SELECT {BLOCK_COLUMNS} FROM outcome_block ORDER BY first"
            ))?),
            false => None,
        };
        Ok(Scan {
            rows,
            blocks,
            after: None,
        })
    }

    /// The events with ids above `after`: the writer's, past its last signed head.
    pub fn after(conn: &'c Connection, after: i64) -> rusqlite::Result<Scan<'c>> {
        let rows = conn.prepare(&format!("{} WHERE id > ?1 ORDER BY id", row_select(conn)?))?;
        let blocks = match has_blocks(conn)? {
            true => Some(conn.prepare(&blocks_after())?),
            false => None,
        };
        Ok(Scan {
            rows,
            blocks,
            after: Some(after),
        })
    }

    /// The events, in id order.
    pub fn events(&mut self) -> rusqlite::Result<impl Iterator<Item = Event> + '_> {
        let after = self.after;
        let rows = match after {
            Some(id) => self.rows.query_map([id], read_row)?,
            None => self.rows.query_map([], read_row)?,
        };
        let blocks = match &mut self.blocks {
            Some(stmt) => Some(BlockEvents {
                rows: match after {
                    Some(id) => stmt.query([id])?,
                    None => stmt.query([])?,
                },
                block: 0,
                current: Vec::new().into_iter(),
                after,
                prev: None,
            }),
            None => None,
        };
        Ok(merge(rows, blocks.into_iter().flatten()))
    }
}

/// The blocks that can hold ids above `?1`: from the one holding `?1` (the last to
/// begin at or before it: blocks' ids do not overlap) on, found by the primary key,
/// not a scan of every block.
fn blocks_after() -> String {
    format!(
        "SELECT {BLOCK_COLUMNS} FROM outcome_block WHERE first >= \
         coalesce((SELECT max(first) FROM outcome_block WHERE first <= ?1), ?1) ORDER BY first"
    )
}

/// The events of a block query's rows, one block decoded at a time: those above
/// `after` (of the first block: `decode` keeps every later block's ids at or above its
/// `first`), each checked to come after the one before (blocks come by `first`, and
/// the writer never gives a block ids below an earlier one's).
struct BlockEvents<'s> {
    rows: rusqlite::Rows<'s>,
    /// The block being read: its `first` and the events left.
    block: i64,
    current: std::vec::IntoIter<(i64, OutcomeRow)>,
    after: Option<i64>,
    prev: Option<i64>,
}

impl Iterator for BlockEvents<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.current.next() {
                if self.after.is_some_and(|after| e.0 <= after) {
                    continue;
                }
                if self.prev.is_some_and(|prev| e.0 <= prev) {
                    self.current = Vec::new().into_iter();
                    return Some(Err(Malformed {
                        first: self.block,
                        what: "its events overlap an earlier block's",
                    }
                    .into()));
                }
                self.prev = Some(e.0);
                return Some(Ok(e));
            }
            match self.rows.next() {
                Ok(Some(r)) => match r
                    .get(0)
                    .and_then(|first| Ok((first, read_block(r, |_| true)?)))
                {
                    Ok((first, events)) => (self.block, self.current) = (first, events.into_iter()),
                    Err(e) => return Some(Err(e)),
                },
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Two iterators of events in id order merged into one; an error comes as soon as
/// it is met. Rows and blocks, on SQLite as on PostgreSQL (`pgevents`).
pub struct Merge<A: Iterator, B: Iterator<Item = A::Item>> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

/// [`Merge`] of `a` and `b`.
pub fn merge<A: Iterator, B: Iterator<Item = A::Item>>(a: A, b: B) -> Merge<A, B> {
    Merge {
        a: a.peekable(),
        b: b.peekable(),
    }
}

impl<T, E, A, B> Iterator for Merge<A, B>
where
    A: Iterator<Item = Result<(i64, T), E>>,
    B: Iterator<Item = A::Item>,
{
    type Item = A::Item;

    fn next(&mut self) -> Option<A::Item> {
        let take_a = match (self.a.peek(), self.b.peek()) {
            (None, None) => return None,
            (Some(_), None) | (Some(Err(_)), _) => true,
            (None, Some(_)) | (_, Some(Err(_))) => false,
            (Some(Ok((x, _))), Some(Ok((y, _)))) => x <= y,
        };
        if take_a { self.a.next() } else { self.b.next() }
    }
}

/// Reads the events of one submission: a record's outcomes (`query`) and what an
/// erasure removes with it.
pub struct Lookup {
    rows: Option<String>,
    blocks: Option<String>,
}

impl Lookup {
    pub fn new(conn: &Connection) -> rusqlite::Result<Lookup> {
        Ok(Lookup::with_columns(
            &schema::outcome_columns(conn)?,
            true,
            has_blocks(conn)?,
        ))
    }

    /// With the partition's outcome columns known, looking in rows and blocks only
    /// where told to (a partition with none of either need not be asked).
    pub fn with_columns(columns: &str, rows: bool, blocks: bool) -> Lookup {
        Lookup {
            rows: rows.then(|| {
                format!("SELECT {columns} FROM outcome WHERE submission = ?1 ORDER BY id")
            }),
            blocks: blocks.then(|| {
                format!(
                    "SELECT {BLOCK_COLUMNS} FROM outcome_block \
                     WHERE sub_min BETWEEN ?1 - {SPAN} AND ?1 AND sub_max >= ?1 ORDER BY first"
                )
            }),
        }
    }

    /// The submission's events, in id order.
    pub fn of(
        &self,
        conn: &Connection,
        submission: i64,
    ) -> rusqlite::Result<Vec<(i64, OutcomeRow)>> {
        let mut found = BTreeMap::new();
        if let Some(sql) = &self.rows {
            let mut stmt = conn.prepare_cached(sql)?;
            for e in stmt.query_map([submission], read_row)? {
                let (id, o) = e?;
                found.insert(id, o);
            }
        }
        if let Some(sql) = &self.blocks {
            let mut stmt = conn.prepare_cached(sql)?;
            let mut rows = stmt.query([submission])?;
            while let Some(r) = rows.next()? {
                for (id, o) in read_block(r, |o| o.submission == submission)? {
                    // One id in two places: one would hide the other (an erasure
                    // would remove one of them).
                    if found.insert(id, o).is_some() {
                        return Err(Malformed {
                            first: r.get(0)?,
                            what: "holds an event id held elsewhere too",
                        }
                        .into());
                    }
                }
            }
        }
        Ok(found.into_iter().collect())
    }
}

/// Removes events, wherever they are: their rows deleted, their blocks written again
/// without them, under columns that bound only what is left (deleted once empty).
/// Returns how many were removed. Holds one block's events at a time.
pub fn remove(tx: &Connection, ids: &[i64]) -> rusqlite::Result<usize> {
    let mut removed = 0;
    let mut del = tx.prepare_cached("DELETE FROM outcome WHERE id = ?1")?;
    for id in ids {
        removed += del.execute([id])?;
    }
    if !has_blocks(tx)? {
        return Ok(removed);
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    // An id's block: the last to begin at or before it.
    let mut holding = tx.prepare_cached(&format!(
        "SELECT {BLOCK_COLUMNS} FROM outcome_block WHERE first <= ?1 ORDER BY first DESC LIMIT 1"
    ))?;
    let mut rest = &ids[..];
    while let Some(&id) = rest.first() {
        let found = holding
            .query_row([id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    read_block(r, |_| true)?,
                ))
            })
            .optional()?;
        // The ids this block's range covers (at least `id`'s, to move on).
        let (gone, later) = match &found {
            Some((_, last, _)) => rest.split_at(rest.partition_point(|i| i <= last).max(1)),
            None => rest.split_at(1),
        };
        rest = later;
        let Some((first, _, events)) = found else {
            continue;
        };
        let mut kept = Block::default();
        let mut taken = 0;
        for (eid, o) in &events {
            if gone.binary_search(eid).is_ok() {
                taken += 1;
            } else {
                kept.push(*eid, o);
            }
        }
        if taken > 0 {
            tx.execute("DELETE FROM outcome_block WHERE first = ?1", [first])?;
            kept.insert(tx)?;
            removed += taken;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SyncMode;
    use crate::store::integrity::outcome_leaf;

    /// A new partition as the writer opens it.
    fn partition() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            schema::open_for_write(&dir.path().join("p.sqlite"), "p", SyncMode::Normal, 2).unwrap();
        (dir, conn)
    }

    fn event(submission: i64, outcome: u8) -> OutcomeRow {
        let mut o = OutcomeRow::bare(submission, (submission >> 8) + 5, outcome);
        o.upstream_status = Some(202);
        o
    }

    /// Writes one transaction's events as the writer does; returns the ids put in rows.
    fn write(conn: &Connection, events: &[OutcomeRow], next: i64) -> Vec<i64> {
        let refs: Vec<&OutcomeRow> = events.iter().collect();
        let (blocks, rows) = place(&refs, next);
        for block in blocks {
            block.insert(conn).unwrap();
        }
        let mut stmt = conn.prepare(schema::INSERT_OUTCOME).unwrap();
        for (id, o) in &rows {
            bind_row(&mut stmt, 1, *id, o).unwrap();
            stmt.raw_execute().unwrap();
        }
        rows.iter().map(|(id, _)| *id).collect()
    }

    fn scan(conn: &Connection, after: i64) -> rusqlite::Result<Vec<(i64, OutcomeRow)>> {
        Scan::after(conn, after)?.events()?.collect()
    }

    fn leaves(events: &[(i64, OutcomeRow)]) -> Vec<(i64, [u8; 32])> {
        events
            .iter()
            .map(|(id, o)| (*id, outcome_leaf(o)))
            .collect()
    }

    const S: i64 = 1_790_000_000_000_000 << 8;

    /// Events go into the block or rows by their submission; every reader gets them
    /// back whole, from both places, merged in id order.
    #[test]
    fn events_read_back_in_id_order_from_blocks_and_rows() {
        let (_dir, conn) = partition();
        let mut receipt = event(S + 5, 4);
        receipt.ordinal = Some(2);
        receipt.message_id_sealed = Some(vec![1, 2, 3]);
        receipt.receipt_state = Some("DELIVRD".into());
        receipt.enhanced_status = Some("2.0.0".into());
        receipt.size_bytes = Some(1234);
        // A receipt hours after its submission, then two prompt events.
        let late = event(S - (3600 << 28), 4);
        let first = [late.clone(), event(S, 1), receipt.clone()];
        assert_eq!(
            write(&conn, &first, 1),
            [1],
            "the late event goes into a row"
        );
        assert_eq!(write(&conn, &[event(S + 10, 1)], 4), Vec::<i64>::new());
        let blocks: Vec<(i64, i64)> = conn
            .prepare("SELECT first, last FROM outcome_block ORDER BY first")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(blocks, [(2, 3), (4, 4)]);
        let all = scan(&conn, 0).unwrap();
        let expected = [
            (1, late.clone()),
            (2, event(S, 1)),
            (3, receipt.clone()),
            (4, event(S + 10, 1)),
        ];
        assert_eq!(leaves(&all), leaves(&expected), "every field read back");
        assert_eq!(leaves(&scan(&conn, 2).unwrap()), leaves(&expected[2..]));
        assert_eq!(leaves(&scan(&conn, 4).unwrap()), []);
        let lookup = Lookup::new(&conn).unwrap();
        for (submission, ids) in [
            (S, vec![2]),
            (S + 5, vec![3]),
            (S + 10, vec![4]),
            (late.submission, vec![1]),
            (S + 7, vec![]),
        ] {
            let found = lookup.of(&conn, submission).unwrap();
            assert_eq!(
                found.iter().map(|e| e.0).collect::<Vec<_>>(),
                ids,
                "{submission}"
            );
        }
    }

    /// A block spans at most SPAN of submissions, both ends included, and is found
    /// from either end.
    #[test]
    fn a_block_holds_and_is_found_at_both_ends_of_its_span() {
        let (_dir, conn) = partition();
        let events = [event(S - SPAN - 1, 1), event(S - SPAN, 1), event(S, 1)];
        assert_eq!(write(&conn, &events, 1), [1]);
        let lookup = Lookup::new(&conn).unwrap();
        assert_eq!(lookup.of(&conn, S - SPAN).unwrap()[0].0, 2);
        assert_eq!(lookup.of(&conn, S).unwrap()[0].0, 3);
        assert_eq!(lookup.of(&conn, S - SPAN - 1).unwrap()[0].0, 1);
    }

    /// What a block says of itself is checked against what it holds: a block that
    /// could hide an event from a lookup, or put one out of order, is an error.
    #[test]
    fn a_block_that_disagrees_with_its_columns_is_an_error() {
        let mut good = Block::default();
        good.push(5, &event(S, 1));
        good.push(6, &event(S + 9, 1));
        let bytes = good.events.clone();
        let all = |_: &OutcomeRow| true;
        assert_eq!(decode(5, 6, (S, S + 9), &bytes, all).unwrap().len(), 2);
        let one = decode(5, 6, (S, S + 9), &bytes, |o| o.submission == S + 9).unwrap();
        assert_eq!(one.iter().map(|e| e.0).collect::<Vec<_>>(), [6]);
        for (what, first, last, subs, bytes) in [
            ("cut short", 5, 6, (S, S + 9), &bytes[..bytes.len() - 1]),
            ("an id below first", 6, 6, (S, S + 9), &bytes[..]),
            ("an id above last", 5, 5, (S, S + 9), &bytes[..]),
            ("a submission below", 5, 6, (S + 1, S + 9), &bytes[..]),
            ("a submission above", 5, 6, (S, S + 8), &bytes[..]),
            ("too wide", 5, 6, (S - SPAN, S + 9), &bytes[..]),
            ("wrapping round", 5, 6, (i64::MIN, S + 9), &bytes[..]),
            ("a last beyond its events", 5, 7, (S, S + 9), &bytes[..]),
            (
                "bounds wider than its events",
                5,
                6,
                (S - 1, S + 9),
                &bytes[..],
            ),
            ("reversed", 5, 6, (S + 9, S), &bytes[..]),
            ("empty", 5, 6, (S, S + 9), &[][..]),
        ] {
            assert!(decode(first, last, subs, bytes, all).is_err(), "{what}");
        }
        let mut low = Block::default();
        low.push(0, &event(S, 1));
        assert!(decode(0, 0, (S, S), &low.events, all).is_err(), "id 0");
        // Two blocks whose events overlap: the scan stops at the second.
        let (_dir, conn) = partition();
        write(&conn, &[event(S, 1), event(S, 1)], 1);
        let mut overlapping = Block::default();
        overlapping.push(2, &event(S, 1));
        overlapping.push(3, &event(S, 1));
        overlapping.insert(&conn).unwrap();
        let err = scan(&conn, 0).unwrap_err().to_string();
        assert!(err.contains("outcome block 2: its events overlap"), "{err}");
    }

    /// A transaction's block is closed at BLOCK_BYTES and the next event starts
    /// another, each with the columns of what it holds.
    #[test]
    fn a_large_transaction_fills_several_blocks() {
        let events: Vec<OutcomeRow> = (0..40_000).map(|k| event(S + k, 1)).collect();
        let refs: Vec<&OutcomeRow> = events.iter().collect();
        let (blocks, rows) = place(&refs, 1);
        assert!(rows.is_empty());
        assert!(blocks.len() > 1, "{} blocks", blocks.len());
        let mut next = 1;
        for b in &blocks {
            assert!(b.events.len() < BLOCK_BYTES + 200);
            assert_eq!(b.first, next);
            let held =
                decode(b.first, b.last, (b.sub_min, b.sub_max), &b.events, |_| true).unwrap();
            next = b.last + 1;
            assert_eq!(held.len() as i64, b.last - b.first + 1);
        }
        assert_eq!(next, 40_001);
    }

    /// The statements that find blocks seek their keys: by submission through the
    /// index, by id through the primary key.
    #[test]
    fn blocks_are_found_by_seeking_never_by_scanning() {
        let (dir, conn) = partition();
        write(&conn, &[event(S, 1)], 1);
        drop(conn);
        let conn = schema::open_for_read(&dir.path().join("p.sqlite")).unwrap();
        let plan = |sql: &str| -> Vec<String> {
            conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map([S], |r| r.get(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        let lookup = Lookup::new(&conn).unwrap();
        let by_submission = plan(lookup.blocks.as_deref().unwrap());
        assert!(
            by_submission
                .iter()
                .any(|d| d.contains("USING INDEX outcome_block_sub (sub_min>? AND sub_min<?)")),
            "{by_submission:?}"
        );
        let by_id = plan(&blocks_after());
        assert!(by_id.iter().all(|d| !d.starts_with("SCAN")), "{by_id:?}");
        assert!(
            by_id
                .iter()
                .any(|d| d.contains("INTEGER PRIMARY KEY (rowid>?)")),
            "{by_id:?}"
        );
    }

    /// Removed events leave their block written again without them, under columns
    /// that bound only what is left, and the block goes with the last of them; rows
    /// go one by one.
    #[test]
    fn removing_events_rewrites_or_deletes_their_blocks() {
        let (_dir, conn) = partition();
        let late = event(S - (3600 << 28), 4);
        let events = [late, event(S, 1), event(S + 1, 1), event(S + 2, 1)];
        assert_eq!(write(&conn, &events, 1), [1]);
        // The late event's row and the block's first two (9 is nowhere).
        assert_eq!(remove(&conn, &[9, 3, 1, 2]).unwrap(), 3);
        let ids = |conn: &Connection| -> Vec<i64> {
            scan(conn, 0).unwrap().into_iter().map(|e| e.0).collect()
        };
        assert_eq!(ids(&conn), [4]);
        let columns: (i64, i64, i64, i64) = conn
            .query_row(
                "SELECT first, last, sub_min, sub_max FROM outcome_block",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(
            columns,
            (4, 4, S + 2, S + 2),
            "nothing of the removed events kept"
        );
        let lookup = Lookup::new(&conn).unwrap();
        assert_eq!(
            lookup.of(&conn, S + 2).unwrap()[0].0,
            4,
            "the rest still found"
        );
        assert!(lookup.of(&conn, S).unwrap().is_empty());
        assert_eq!(remove(&conn, &[4]).unwrap(), 1);
        assert_eq!(ids(&conn), Vec::<i64>::new());
        let blocks: i64 = conn
            .query_row("SELECT count(*) FROM outcome_block", [], |r| r.get(0))
            .unwrap();
        assert_eq!(blocks, 0);
    }

    /// The scan `verify` makes reads every event, an id no writer gives included.
    #[test]
    fn the_whole_scan_reads_ids_below_one() {
        let (_dir, conn) = partition();
        write(&conn, &[event(S, 1)], 1);
        conn.execute(
            "INSERT INTO outcome (id, submission, at_us, outcome) VALUES (0, 7, 7, 1), (-5, 7, 7, 1)",
            [],
        )
        .unwrap();
        let all: Vec<i64> = Scan::all(&conn)
            .unwrap()
            .events()
            .unwrap()
            .map(|e| e.unwrap().0)
            .collect();
        assert_eq!(all, [-5, 0, 1]);
        assert_eq!(scan(&conn, 0).unwrap().len(), 1);
    }
}
