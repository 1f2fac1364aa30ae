//! Where a PostgreSQL partition keeps a node's outcome events, and how every reader
//! gets them back: as a SQLite partition does (see [`super::events`]), in blocks and
//! rows, one sequence of ids over both. Unlike SQLite, a commit's block events take
//! its first ids and its rows the ones after ([`Placed`]), so that a block's ids are
//! consecutive and need not be stored.
//!
//! ```sql
//! outcome_block(part, node,
//!               first, last,        -- its events' ids: first … last, in array order
//!               sub_min, sub_max,   -- its lowest and highest submission, at most SPAN apart
//!               submission[], at_us[], outcome[], …)   -- a column of `outcome` each, as an array
//! outcome(part, node, id, submission, at_us, outcome, …)  -- one row per event
//! ```
//!
//! The writer gives a partition's share of a commit's events their ids in the order
//! [`Placed`] puts them: first those whose submissions lie within [`SPAN`] of the
//! newest one's (nearly all: an outcome follows its submission by milliseconds), which
//! go into one block (or one per [`BLOCK_EVENTS`]), then the others (an SMPP receipt
//! hours later), rows of `outcome`. Events of one submission are placed together, so
//! their order, which a record's latest outcome is read by, is the order they came
//! in. One heap tuple and two index entries per commit instead of per event.
//!
//! Readers unnest a block into rows of [`OUTCOME_COLUMNS`] ([`select`]), each event
//! checked against its block's columns in the statement: a block whose arrays
//! disagree with them (lengths, an id or a submission outside them, bounds further
//! apart than `SPAN`) raises an error through `relaylog.outcome_block_damaged`, never
//! skipped, and `verify` reports the partition unreadable. Events out of order or
//! overlapping (ids in two blocks, or a block and a row) change the Merkle fold,
//! which `verify` reports. Blocks are found by submission through their index on
//! `(node, sub_min, sub_max)`, in id order through the primary key on `last`.
//!
//! Erasure writes a block again without the erased events ([`rewrite`]): each run of
//! consecutive ids left becomes a block of its own, bounded by what it holds.

use postgres::GenericClient;
use postgres::types::ToSql;

use super::events::{SPAN, block_floor};
use super::partition::PartitionId;
use super::pgrows::{self, OUTCOME_FIELDS};
use super::pgstore::{OUTCOME_COLUMNS, outcome_row};
use super::rows::OutcomeRow;
use crate::pg::schema;

/// Most events in one block: a reader reads a block whole (a lookup, a record's;
/// `verify`, a block at a time). A batch written as one statement fits in one
/// ([`super::pgstore::ONE_STATEMENT_ROWS`]).
pub const BLOCK_EVENTS: usize = 1024;

const _: () = assert!(super::pgstore::ONE_STATEMENT_ROWS <= BLOCK_EVENTS);

/// A partition's share of a commit's events in the order they get their ids: the
/// first `blocked` go into blocks, the rest into rows.
pub struct Placed<'s, 'a> {
    /// Borrowed as they came when all go into blocks (nearly always).
    pub events: std::borrow::Cow<'s, [&'a OutcomeRow]>,
    pub blocked: usize,
}

impl<'s, 'a> Placed<'s, 'a> {
    /// `outcomes` (in the order they came) placed: those within [`SPAN`] of the newest
    /// submission first, then the others, each group in its own order.
    pub fn of(outcomes: &'s [&'a OutcomeRow]) -> Self {
        let floor = block_floor(outcomes);
        if outcomes.iter().all(|o| o.submission >= floor) {
            return Placed {
                events: std::borrow::Cow::Borrowed(outcomes),
                blocked: outcomes.len(),
            };
        }
        let mut events = Vec::with_capacity(outcomes.len());
        events.extend(outcomes.iter().filter(|o| o.submission >= floor));
        let blocked = events.len();
        events.extend(outcomes.iter().filter(|o| o.submission < floor));
        Placed {
            events: std::borrow::Cow::Owned(events),
            blocked,
        }
    }

    /// The blocks' events, a block a slice, in id order.
    pub fn blocks(&self) -> std::slice::Chunks<'_, &'a OutcomeRow> {
        self.events[..self.blocked].chunks(BLOCK_EVENTS)
    }

    /// The events that go into rows, after the blocks' in id order.
    pub fn rows(&self) -> &[&'a OutcomeRow] {
        &self.events[self.blocked..]
    }
}

/// The lowest and highest submission of a block's events; (0, 0) for none (a block
/// with no events is not inserted).
pub fn bounds(events: &[&OutcomeRow]) -> (i64, i64) {
    let mut it = events.iter().map(|o| o.submission);
    let first = it.next().unwrap_or(0);
    it.fold((first, first), |(lo, hi), s| (lo.min(s), hi.max(s)))
}

/// `INSERT … SELECT` of one block into `p`'s table, nothing when its arrays are
/// empty: its first id at `$first`, its bounds at `$bounds` and `$bounds + 1`, one
/// array per column of [`OUTCOME_FIELDS`] from `$arrays` on; part and node at `$1`,
/// `$2`. Its last id follows from the arrays' length.
pub fn insert_block(p: PartitionId, first: u32, bounds: u32, arrays: u32) -> String {
    let values = pgrows::array_params(&OUTCOME_FIELDS, arrays);
    format!(
        "INSERT INTO relaylog.outcome_block_{suffix} (part, node, first, last, sub_min, sub_max, {names}) \
         SELECT $1::integer, $2::smallint, ${first}::bigint, ${first}::bigint + cardinality(${arrays}::bigint[]) - 1, \
         ${bounds}::bigint, ${}::bigint, {values} WHERE cardinality(${arrays}::bigint[]) > 0",
        bounds + 1,
        suffix = schema::table_suffix(p),
        names = names(),
    )
}

/// [`insert_block`] as a statement of its own: `$1` part, `$2` node, `$3` first id,
/// `$4`/`$5` bounds, the arrays from `$6`.
pub fn insert_sql(p: PartitionId) -> String {
    insert_block(p, 3, 4, 6)
}

/// Inserts `events` as one block with ids from `first` ([`insert_sql`] prepared as
/// `stmt`, or its text).
pub fn insert<S: postgres::ToStatement + ?Sized>(
    client: &mut impl GenericClient,
    stmt: &S,
    (part, node): (i32, i16),
    first: i64,
    events: &[&OutcomeRow],
) -> Result<u64, postgres::Error> {
    let (sub_min, sub_max) = bounds(events);
    let arrays = pgrows::arrays(events, &OUTCOME_FIELDS);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&part, &node, &first, &sub_min, &sub_max];
    params.extend(arrays.iter().map(|a| a as &(dyn ToSql + Sync)));
    client.execute(stmt, &params)
}

fn names() -> String {
    pgrows::names(&OUTCOME_FIELDS)
}

/// `SELECT` of blocks' events as rows of [`OUTCOME_COLUMNS`] (then `extra`, columns
/// of the block `b` or the event `e`, `e.n` its place in the block), `filter` after
/// `WHERE`. Each event is checked against its block's columns; one that disagrees
/// raises `relaylog.outcome_block_damaged` (see the module's comment).
pub fn select(extra: &str, filter: &str) -> String {
    let names = names();
    let arrays = OUTCOME_FIELDS
        .iter()
        .map(|c| format!("b.{}", c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let fields = OUTCOME_FIELDS
        .iter()
        .map(|c| format!("e.{}", c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let lengths = OUTCOME_FIELDS
        .iter()
        .map(|c| format!("cardinality(b.{}) = b.last - b.first + 1", c.name))
        .collect::<Vec<_>>()
        .join(" AND ");
    // Compared as numeric: bounds whose difference wraps round must not pass for
    // narrow ones. No larger than a writer makes: a reader holds a block whole.
    let ok = format!(
        "b.first >= 1 AND b.last - b.first < {BLOCK_EVENTS} AND {lengths} \
         AND e.submission BETWEEN b.sub_min AND b.sub_max \
         AND b.sub_max::numeric - b.sub_min BETWEEN 0 AND {SPAN} \
         AND e.at_us IS NOT NULL AND e.outcome IS NOT NULL"
    );
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "SELECT CASE WHEN {ok} THEN b.first + e.n - 1 \
         ELSE relaylog.outcome_block_damaged(b.part, b.node, b.first) END AS id, {fields}{extra} \
         FROM relaylog.outcome_block b \
         CROSS JOIN LATERAL unnest({arrays}) WITH ORDINALITY AS e({names}, n) \
         WHERE {filter}"
    )
}

/// `node`'s events in partition `part` ($1, $2) with ids above `$3`, rows then
/// blocks, each in id order ([`outcome_row`] reads both).
pub fn after_sql() -> (String, String) {
    (
        format!(
            "SELECT {OUTCOME_COLUMNS} FROM relaylog.outcome \
             WHERE part = $1 AND node = $2 AND id > $3 ORDER BY id"
        ),
        select(
            "",
            "b.part = $1 AND b.node = $2 AND b.last > $3 AND b.first + e.n - 1 > $3 \
             ORDER BY b.last, e.n",
        ),
    )
}

/// Every event of `node` in partition `part` ($1, $2), rows then blocks, each in id
/// order: `verify` must see an id no writer gives (0 or below) to report it.
pub fn all_sql() -> (String, String) {
    (
        format!(
            "SELECT {OUTCOME_COLUMNS} FROM relaylog.outcome \
             WHERE part = $1 AND node = $2 ORDER BY id"
        ),
        select("", "b.part = $1 AND b.node = $2 ORDER BY b.last, e.n"),
    )
}

/// The events of one submission (`$3`) of `node` in partition `part` ($1, $2), in id
/// order: a record's outcomes. The blocks that can hold it are those whose `sub_min`
/// lies in `[$3 - SPAN, $3]`, a range seek on their index that compares `sub_max` in
/// it.
pub fn of_submission_sql() -> String {
    format!(
        "SELECT {OUTCOME_COLUMNS} FROM relaylog.outcome WHERE part = $1 AND node = $2 AND submission = $3 \
         UNION ALL {} ORDER BY id",
        select(
            "",
            &format!(
                "b.part = $1 AND b.node = $2 AND b.sub_min BETWEEN $3::bigint - {SPAN} AND $3::bigint \
                 AND b.sub_max >= $3::bigint AND e.submission = $3::bigint"
            )
        )
    )
}

/// The blocks (their `last`, in order) of `node` in partition `part` that hold an
/// event of any of `submissions`: those whose span covers one and whose events
/// include it, found by the blocks' index.
pub fn blocks_holding(
    client: &mut impl GenericClient,
    (part, node): (i32, i16),
    submissions: &[i64],
) -> Result<Vec<i64>, postgres::Error> {
    Ok(client
        .query(
            &format!(
                "SELECT DISTINCT h.last FROM unnest($3::bigint[]) AS s(sub) \
                 JOIN relaylog.outcome_block h ON h.part = $1 AND h.node = $2 \
                 AND h.sub_min BETWEEN s.sub - {SPAN} AND s.sub AND h.sub_max >= s.sub \
                 AND s.sub = ANY(h.submission) ORDER BY h.last"
            ),
            &[&part, &node, &submissions],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Writes block `last` of `node` in partition `p` again without the events `erase`
/// takes, each run of consecutive ids left a block of its own: one block read at a
/// time. Returns the erased events, or `None` when the block was not there to delete
/// (found a moment ago in the same transaction: the caller rolls back).
pub fn rewrite(
    tx: &mut postgres::Transaction<'_>,
    p: PartitionId,
    node: i16,
    last: i64,
    erase: impl Fn(&OutcomeRow) -> bool,
) -> Result<Option<Vec<(i64, OutcomeRow)>>, postgres::Error> {
    let part = schema::part(p);
    let events: Vec<(i64, OutcomeRow)> = tx
        .query(
            &select(
                "",
                "b.part = $1 AND b.node = $2 AND b.last = $3 ORDER BY e.n",
            ),
            &[&part, &node, &last],
        )?
        .iter()
        .map(outcome_row)
        .collect();
    let deleted = tx.execute(
        "DELETE FROM relaylog.outcome_block WHERE part = $1 AND node = $2 AND last = $3",
        &[&part, &node, &last],
    )?;
    if deleted != 1 {
        return Ok(None);
    }
    let stmt = insert_sql(p);
    let mut erased = Vec::new();
    let mut run: Vec<(i64, &OutcomeRow)> = Vec::new();
    for (id, o) in &events {
        if erase(o) {
            erased.push((*id, o.clone()));
            continue;
        }
        if run.last().is_some_and(|(prev, _)| *prev + 1 != *id) {
            put_run(tx, &stmt, (part, node), &run)?;
            run.clear();
        }
        run.push((*id, o));
    }
    put_run(tx, &stmt, (part, node), &run)?;
    Ok(Some(erased))
}

/// One run of consecutive ids as a block (nothing for none).
fn put_run(
    tx: &mut postgres::Transaction<'_>,
    stmt: &str,
    (part, node): (i32, i16),
    run: &[(i64, &OutcomeRow)],
) -> Result<(), postgres::Error> {
    let Some(&(first, _)) = run.first() else {
        return Ok(());
    };
    let events: Vec<&OutcomeRow> = run.iter().map(|(_, o)| *o).collect();
    insert(tx, stmt, (part, node), first, &events)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(submission: i64) -> OutcomeRow {
        OutcomeRow::bare(submission, 1, 1)
    }

    #[test]
    fn events_of_one_submission_stay_together_and_in_order() {
        let new = 10 * SPAN;
        let (a, b, old, c) = (
            event(new),
            event(new - 5),
            event(new - 2 * SPAN),
            event(new),
        );
        let (a2, old2) = (event(new), event(new - 2 * SPAN));
        let came = [&a, &old, &b, &a2, &old2, &c];
        let placed = Placed::of(&came);
        assert_eq!(placed.blocked, 4);
        let order: Vec<*const OutcomeRow> = placed.events.iter().map(|o| *o as *const _).collect();
        let want: Vec<*const OutcomeRow> = [&a, &b, &a2, &c, &old, &old2]
            .iter()
            .map(|o| *o as *const _)
            .collect();
        assert_eq!(order, want);
        assert_eq!(placed.rows().len(), 2);
        assert_eq!(placed.blocks().count(), 1);
        assert_eq!(bounds(&placed.events[..placed.blocked]), (new - 5, new));
    }

    #[test]
    fn a_large_commit_fills_several_blocks() {
        let events: Vec<OutcomeRow> = (0..BLOCK_EVENTS as i64 * 2 + 1).map(event).collect();
        let refs: Vec<&OutcomeRow> = events.iter().collect();
        let placed = Placed::of(&refs);
        let sizes: Vec<usize> = placed.blocks().map(<[_]>::len).collect();
        assert_eq!(sizes, [BLOCK_EVENTS, BLOCK_EVENTS, 1]);
        assert!(placed.rows().is_empty());
    }

    #[test]
    fn the_statements_name_every_column_and_parameter_once() {
        let p = PartitionId::of_date(
            crate::config::Granularity::Day,
            chrono::NaiveDate::from_ymd_opt(2026, 12, 6).unwrap(),
        );
        let sql = insert_sql(p);
        for n in 1..=5 + OUTCOME_FIELDS.len() {
            assert!(sql.contains(&format!("${n}::")), "${n} in {sql}");
        }
        assert!(!sql.contains(&format!("${}", 6 + OUTCOME_FIELDS.len())));
        assert!(
            sql.contains("INTO relaylog.outcome_block_2026_12_06 "),
            "{sql}"
        );
        let read = select("", "true");
        assert_eq!(read.matches("cardinality(").count(), OUTCOME_FIELDS.len());
        assert!(read.contains(&format!("AS e({}, n)", names())), "{read}");
    }
}
