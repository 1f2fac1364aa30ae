//! The writer's rows as PostgreSQL takes them, in one place: each column's name, type
//! and value ([`RECORD_FIELDS`], [`OUTCOME_FIELDS`]), from which both ways of writing
//! them are made.
//!
//! - A small batch (the relay's: a few dozen rows) is one statement ([`insert_sql`])
//!   of array parameters: its records, its outcome events (nearly all in one block,
//!   see [`super::pgevents`]) and the head when one is due, in one round trip and one
//!   implicit transaction. COPY takes six round trips
//!   a batch (BEGIN, two COPYs of two each, COMMIT), and at those sizes the round
//!   trips, not the rows, were most of a commit's time.
//! - A large batch goes in by `COPY … FROM STDIN (FORMAT binary)` ([`copy_sql`],
//!   [`CopyRows`]), cheaper per row once its round trips are shared by thousands; its
//!   outcome blocks by one `INSERT` each.
//!
//! Either way the values are encoded straight from the rows into the buffer sent,
//! with no vector of values per column: a batch costs the writer no allocation per
//! row.

use bytes::BufMut;
use postgres::types::{IsNull, Kind, ToSql, Type, to_sql_checked};

use super::keys::IndexKind;
use super::partition::PartitionId;
use super::rows::{OutcomeRow, Row};
use crate::pg::schema;

/// One value of a column, as a field of [`RECORD_FIELDS`] or [`OUTCOME_FIELDS`] reads
/// it from a row.
pub enum Field<'a> {
    Null,
    I16(i16),
    I32(i32),
    I64(i64),
    /// `bytea` or `text` (its UTF-8 bytes).
    Bytes(&'a [u8]),
}

impl Field<'_> {
    /// Its binary form, as COPY and arrays take it: a length (-1 for NULL) and the
    /// bytes (integers big-endian).
    fn put(&self, out: &mut impl BufMut) {
        match *self {
            Field::Null => out.put_i32(-1),
            Field::I16(v) => {
                out.put_i32(2);
                out.put_i16(v);
            }
            Field::I32(v) => {
                out.put_i32(4);
                out.put_i32(v);
            }
            Field::I64(v) => {
                out.put_i32(8);
                out.put_i64(v);
            }
            Field::Bytes(b) => {
                // Under 1 GiB: a row's fields are sealed records and short texts.
                out.put_i32(b.len() as i32);
                out.put_slice(b);
            }
        }
    }

    /// Whether it is a value of PostgreSQL type `ty`.
    fn is(&self, ty: &Type) -> bool {
        match self {
            Field::Null => true,
            Field::I16(_) => *ty == Type::INT2,
            Field::I32(_) => *ty == Type::INT4,
            Field::I64(_) => *ty == Type::INT8,
            Field::Bytes(_) => *ty == Type::BYTEA || *ty == Type::TEXT,
        }
    }
}

/// A column the writer fills: its name, its SQL type, and how a row gives its value.
pub struct Column<T> {
    pub name: &'static str,
    pub sql_type: &'static str,
    pub value: for<'a> fn(&'a T) -> Field<'a>,
}

const fn column<T>(
    name: &'static str,
    sql_type: &'static str,
    value: for<'a> fn(&'a T) -> Field<'a>,
) -> Column<T> {
    Column {
        name,
        sql_type,
        value,
    }
}

fn text(s: &str) -> Field<'_> {
    Field::Bytes(s.as_bytes())
}

/// A record's columns after `(part, node, id)`, which the writer gives.
pub const RECORD_FIELDS: [Column<Row>; 13] = [
    column("submission", "bigint", |r| Field::I64(r.submission)),
    column("ordinal", "integer", |r| Field::I32(r.ordinal as i32)),
    column("at_us", "bigint", |r| Field::I64(r.at_us)),
    column("bucket", "bigint", |r| Field::I64(r.bucket)),
    column("protocol", "smallint", |r| {
        Field::I16(i16::from(r.protocol))
    }),
    column("service", "smallint", |r| Field::I16(i16::from(r.service))),
    column("recipient_form", "smallint", |r| {
        Field::I16(i16::from(r.recipient_form))
    }),
    column("segments", "integer", |r| Field::I32(i32::from(r.segments))),
    column("account_ix", "bigint", |r| Field::I64(r.account_ix)),
    column("ip_ix", "bigint", |r| Field::I64(r.ip_ix)),
    column("originator_ix", "bigint", |r| {
        r.originator_ix.map_or(Field::Null, Field::I64)
    }),
    column("recipient_ix", "bigint", |r| Field::I64(r.recipient_ix)),
    column("sealed", "bytea", |r| Field::Bytes(&r.sealed)),
];

/// An outcome event's columns after `(part, node, id)`.
pub const OUTCOME_FIELDS: [Column<OutcomeRow>; 12] = [
    column("submission", "bigint", |o| Field::I64(o.submission)),
    column("at_us", "bigint", |o| Field::I64(o.at_us)),
    column("outcome", "smallint", |o| Field::I16(i16::from(o.outcome))),
    column("upstream_status", "integer", |o| {
        o.upstream_status
            .map_or(Field::Null, |v| Field::I32(i32::from(v)))
    }),
    column("gateway_code", "integer", |o| {
        o.gateway_code.map_or(Field::Null, Field::I32)
    }),
    column("message_id_sealed", "bytea", |o| {
        o.message_id_sealed
            .as_deref()
            .map_or(Field::Null, Field::Bytes)
    }),
    column("enhanced_status", "text", |o| {
        o.enhanced_status.as_deref().map_or(Field::Null, text)
    }),
    column("size_bytes", "bigint", |o| {
        o.size_bytes.map_or(Field::Null, |v| Field::I64(v as i64))
    }),
    column("ordinal", "integer", |o| {
        o.ordinal.map_or(Field::Null, |v| Field::I32(v as i32))
    }),
    column("receipt_state", "text", |o| {
        o.receipt_state.as_deref().map_or(Field::Null, text)
    }),
    column("receipt_error", "text", |o| {
        o.receipt_error.as_deref().map_or(Field::Null, text)
    }),
    column("receipt_done", "text", |o| {
        o.receipt_done.as_deref().map_or(Field::Null, text)
    }),
];

/// `fields`' names, as a column list.
pub fn names<T>(fields: &[Column<T>]) -> String {
    fields.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
}

/// `COPY` of `table` (`record` or `outcome`) into `p`'s own table (the rows skip the
/// parent's routing, a share of the server's time per row).
pub fn copy_sql<T>(table: &str, p: PartitionId, fields: &[Column<T>]) -> String {
    format!(
        "COPY relaylog.{table}_{} (part, node, id, {}) FROM STDIN (FORMAT binary)",
        schema::table_suffix(p),
        names(fields)
    )
}

/// One array parameter a column of `fields`, from `$first` on, typed:
/// `$5::bigint[], $6::integer[], …`.
pub fn array_params<T>(fields: &[Column<T>], first: u32) -> String {
    fields
        .iter()
        .enumerate()
        .map(|(k, c)| format!("${}::{}[]", first + k as u32, c.sql_type))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT … SELECT … FROM unnest(…)` of `table`'s rows in `p`'s own table, parameters
/// from `$first` on (one array a column), ids from parameter `$id` on.
fn insert_cte<T>(table: &str, p: PartitionId, fields: &[Column<T>], id: u32, first: u32) -> String {
    let arrays = array_params(fields, first);
    let names = names(fields);
    format!(
        "INSERT INTO relaylog.{table}_{suffix} (part, node, id, {names}) \
         SELECT $1::integer, $2::smallint, ${id}::bigint + n - 1, {names} \
         FROM unnest({arrays}) WITH ORDINALITY AS t({names}, n)",
        suffix = schema::table_suffix(p),
    )
}

/// Parameters of [`insert_sql`] before the records' columns: part, node, the first
/// record id, the first id of the outcome events in rows and of those in the block.
const LEADING: u32 = 5;

/// Where [`insert_sql`]'s parameters begin: the records' arrays, their postings'
/// arrays, the outcome rows' arrays, the block's bounds, the block's arrays, the head,
/// the journal frame.
pub struct Numbering {
    pub records: u32,
    pub postings: u32,
    pub rows: u32,
    pub bounds: u32,
    pub block: u32,
    pub head: u32,
    pub journal: u32,
    /// How many there are.
    pub count: u32,
}

pub const NUMBERING: Numbering = {
    let records = LEADING + 1;
    let postings = records + RECORD_FIELDS.len() as u32;
    let rows = postings + POSTING_PARAMS;
    let bounds = rows + OUTCOME_FIELDS.len() as u32;
    let block = bounds + 2;
    let head = block + OUTCOME_FIELDS.len() as u32;
    let journal = head + 8;
    Numbering {
        records,
        postings,
        rows,
        bounds,
        block,
        head,
        journal,
        count: journal + 2,
    }
};

/// The statement writing a small batch into `p`'s tables. Parameters ([`NUMBERING`]):
/// `$1` part, `$2` node, `$3`/`$4`/`$5` the first ids of the records, of the outcome
/// events in rows and of those in the block (see [`super::pgevents`]), then one array
/// a column of [`RECORD_FIELDS`] and of [`OUTCOME_FIELDS`] (the rows'), the block's
/// bounds and its arrays (empty: no block), then the head's eight values (see
/// [`HEAD_COLUMNS`]), all NULL when none is due, then the journal's id, the newest
/// journal frame the batch holds and the row's tag ([`SET_JOURNAL_FRAME`]), all NULL
/// without one. A data-modifying `WITH` runs whether or not it is read, all in the
/// statement's one transaction.
pub fn insert_sql(p: PartitionId) -> String {
    let n = NUMBERING;
    let head_values = (0..8)
        .map(|k| format!("${}::{}", n.head + k, HEAD_TYPES[k as usize]))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH r AS ({}), p AS ({}), o AS ({}), b AS ({}), \
         h AS (INSERT INTO relaylog.head (part, node, {HEAD_COLUMNS}) \
         SELECT $1::integer, $2::smallint, {head_values} WHERE ${}::bigint IS NOT NULL), \
         j AS ({}) \
         SELECT 1",
        insert_cte("record", p, &RECORD_FIELDS, 3, n.records),
        postings_insert(p, n.postings),
        insert_cte("outcome", p, &OUTCOME_FIELDS, 4, n.rows),
        super::pgevents::insert_block(p, 5, n.bounds, n.block),
        n.head,
        set_journal_frame(n.journal),
    )
}

/// The kinds whose blind indexes are posting lists (see `crate::pg::schema`'s
/// migration 6: recipients keep their B-tree on `record`).
const POSTED: [IndexKind; 3] = [
    IndexKind::Account,
    IndexKind::ClientIp,
    IndexKind::Originator,
];

/// Whether `kind`'s blind index is a posting list ([`POSTED`]).
pub fn posted(kind: IndexKind) -> bool {
    POSTED.contains(&kind)
}

/// A record's tag of `kind`, the column [`IndexKind::tag_column`] names (an
/// originator's may be absent).
fn tag_of(r: &Row, kind: IndexKind) -> Option<i64> {
    match kind {
        IndexKind::Account => Some(r.account_ix),
        IndexKind::ClientIp => Some(r.ip_ix),
        IndexKind::Originator => r.originator_ix,
        IndexKind::Recipient => Some(r.recipient_ix),
    }
}

/// `CROSS JOIN LATERAL` of a record (`alias`, with the blind index columns by their
/// names) to its tags of the [`POSTED`] kinds as rows `x(kind, tag)`, a NULL tag
/// among them (no originator).
fn tags_of(alias: &str) -> String {
    let values = POSTED
        .iter()
        .map(|k| format!("({}::smallint, {alias}.{})", *k as u8, k.tag_column()))
        .collect::<Vec<_>>()
        .join(", ");
    format!("CROSS JOIN LATERAL (VALUES {values}) AS x(kind, tag)")
}

/// Parameters of [`postings_insert`]: its arrays.
const POSTING_PARAMS: u32 = 6;

/// `INSERT` of a batch's postings ([`Postings`]) into `p`'s table: part and node at
/// `$1`, `$2`, the arrays from `$first` on (kind, bucket, tag, where each posting's
/// ids begin in the last one and how many, the ids).
fn postings_insert(p: PartitionId, first: u32) -> String {
    let n = |k: u32| first + k;
    format!(
        "INSERT INTO relaylog.posting_{suffix} (part, node, kind, bucket, tag, ids) \
         SELECT $1::integer, $2::smallint, u.kind, u.bucket, u.tag, (${}::bigint[])[u.start:u.start + u.len - 1] \
         FROM unnest(${}::smallint[], ${}::bigint[], ${}::bigint[], ${}::integer[], ${}::integer[]) \
         AS u(kind, bucket, tag, start, len)",
        n(5),
        n(0),
        n(1),
        n(2),
        n(3),
        n(4),
        suffix = schema::table_suffix(p),
    )
}

/// [`postings_insert`] as a statement of its own, beside COPY: `$1` part, `$2` node,
/// the arrays from `$3`.
pub fn postings_sql(p: PartitionId) -> String {
    postings_insert(p, 3)
}

/// A batch's blind index entries of the [`POSTED`] kinds grouped into postings by the
/// writer: one for each (bucket, kind, tag) its records share, with their ids
/// ascending, as the arrays [`postings_insert`] takes.
/// Its buffers are kept from one batch to the next ([`Postings::fill`]): the writer
/// makes a batch's postings without allocating once they have grown to its batches.
#[derive(Debug, Default)]
pub struct Postings {
    kind: Vec<i16>,
    bucket: Vec<i64>,
    tag: Vec<i64>,
    start: Vec<i32>,
    len: Vec<i32>,
    ids: Vec<i64>,
    /// (bucket, kind, tag, id) of each entry, sorted: the buffer they are grouped from.
    entries: Vec<(i64, i16, i64, i64)>,
}

impl Postings {
    /// Of `records`, whose ids are `first` on.
    pub fn of(records: &[&Row], first: i64) -> Self {
        let mut out = Postings::default();
        out.fill(records, first);
        out
    }

    /// Made again, of `records` (ids `first` on), in the buffers it has.
    pub fn fill(&mut self, records: &[&Row], first: i64) {
        let mut entries = std::mem::take(&mut self.entries);
        entries.clear();
        for (k, r) in records.iter().enumerate() {
            let id = first + k as i64;
            for kind in POSTED {
                if let Some(tag) = tag_of(r, kind) {
                    entries.push((r.bucket, i16::from(kind as u8), tag, id));
                }
            }
        }
        entries.sort_unstable();
        let out = self;
        out.kind.clear();
        out.bucket.clear();
        out.tag.clear();
        out.start.clear();
        out.len.clear();
        out.ids.clear();
        for &(bucket, kind, tag, id) in &entries {
            let same = out.kind.last() == Some(&kind)
                && out.bucket.last() == Some(&bucket)
                && out.tag.last() == Some(&tag);
            if same {
                if let Some(len) = out.len.last_mut() {
                    *len += 1;
                }
            } else {
                out.kind.push(kind);
                out.bucket.push(bucket);
                out.tag.push(tag);
                // 1-based, as PostgreSQL's arrays; a batch is far below 2^31 entries.
                out.start.push(out.ids.len() as i32 + 1);
                out.len.push(1);
            }
            out.ids.push(id);
        }
        out.entries = entries;
    }

    /// Its arrays, in [`postings_insert`]'s order.
    pub fn params(&self) -> [&(dyn ToSql + Sync); POSTING_PARAMS as usize] {
        [
            &self.kind,
            &self.bucket,
            &self.tag,
            &self.start,
            &self.len,
            &self.ids,
        ]
    }

    /// How many postings.
    pub fn len(&self) -> usize {
        self.kind.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kind.is_empty()
    }
}

/// `verify`'s check of the postings of node `$2` in partition `$1` against its
/// records: how many of the records' (bucket, kind, tag, id) entries no posting holds,
/// and how many posting entries are no record's (a NULL id, an id listed twice, a
/// tag that is not its record's among them). Both 0 for postings that are whole.
pub fn postings_check_sql() -> [String; 2] {
    let records = format!(
        "SELECT r.bucket, x.kind, x.tag, r.id FROM relaylog.record r {} \
         WHERE r.part = $1 AND r.node = $2 AND x.tag IS NOT NULL",
        tags_of("r")
    );
    let postings = "SELECT p.bucket, p.kind, p.tag, i.id FROM relaylog.posting p \
         CROSS JOIN LATERAL unnest(p.ids) AS i(id) WHERE p.part = $1 AND p.node = $2";
    [
        format!("SELECT count(*) FROM ({records} EXCEPT ALL {postings}) AS unlisted"),
        format!("SELECT count(*) FROM ({postings} EXCEPT ALL {records}) AS unmatched"),
    ]
}

/// Takes `node`'s records `$2` (`$1` the node) of `p` out of their postings, before
/// they are erased: two statements, run in this order, in the erasure's transaction.
/// The first takes their ids out of each posting holding one, the second removes the
/// postings left with none. Both find them by the records' tags, through their index.
pub fn unlist_sql(p: PartitionId) -> [String; 2] {
    let suffix = schema::table_suffix(p);
    let listed = format!(
        "WITH listed AS (SELECT DISTINCT r.bucket, x.kind, x.tag FROM relaylog.record_{suffix} r {} \
         WHERE r.node = $1::smallint AND r.id = ANY($2::bigint[]) AND x.tag IS NOT NULL)",
        tags_of("r"),
    );
    let theirs =
        "p.bucket = l.bucket AND p.kind = l.kind AND p.tag = l.tag AND p.node = $1::smallint";
    [
        format!(
            "{listed} UPDATE relaylog.posting_{suffix} p \
             SET ids = ARRAY(SELECT i FROM unnest(p.ids) AS i WHERE i <> ALL($2::bigint[]) ORDER BY i) \
             FROM listed l WHERE {theirs} AND p.ids && $2::bigint[]"
        ),
        format!(
            "{listed} DELETE FROM relaylog.posting_{suffix} p USING listed l \
             WHERE {theirs} AND cardinality(p.ids) = 0"
        ),
    ]
}

/// Records that a partition holds a node's journal through a frame: `$1` part, `$2`
/// node, then the journal's id, the frame and the row's tag at `$first` … `$first +
/// 2`; nothing when they are NULL (no journal in front). A frame number only grows: a lower one
/// for the same journal leaves the row as it is.
fn set_journal_frame(first: u32) -> String {
    format!(
        "INSERT INTO relaylog.journal_frame (part, node, journal, frame, tag) \
         SELECT $1::integer, $2::smallint, ${first}::text, ${}::bigint, ${}::bytea WHERE ${first}::text IS NOT NULL \
         ON CONFLICT (part, node) DO UPDATE SET journal = excluded.journal, frame = excluded.frame, tag = excluded.tag \
         WHERE journal_frame.journal <> excluded.journal OR journal_frame.frame < excluded.frame",
        first + 1,
        first + 2
    )
}

/// [`set_journal_frame`] as a statement of its own, beside COPY.
pub static SET_JOURNAL_FRAME: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| set_journal_frame(3));

/// A head row's columns after `(part, node)`, as the writer inserts them.
macro_rules! head_columns {
    () => {
        "seq, size, record_through, outcome_through, root, frontier, at_us, signature"
    };
}
pub const HEAD_COLUMNS: &str = head_columns!();

/// One signed head, in a transaction of its own or beside COPY.
pub const INSERT_HEAD: &str = concat!(
    "INSERT INTO relaylog.head (part, node, ",
    head_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);
const HEAD_TYPES: [&str; 8] = [
    "bigint", "bigint", "bigint", "bigint", "bytea", "bytea", "bigint", "bytea",
];

/// One column of a batch as an array parameter, each element read from a row, in
/// PostgreSQL's binary array form (dimensions, then each element as [`Field::put`]
/// writes it). The element type is the parameter's, as the statement declares it; a
/// value of another type is an error, never a wrong value.
pub struct Array<'r, T> {
    pub rows: &'r [&'r T],
    pub value: for<'a> fn(&'a T) -> Field<'a>,
}

impl<T> std::fmt::Debug for Array<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Array({} rows)", self.rows.len())
    }
}

impl<T> ToSql for Array<'_, T> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let Kind::Array(member) = ty.kind() else {
            return Err(format!("{ty} is not an array").into());
        };
        let nulls = self
            .rows
            .iter()
            .any(|r| matches!((self.value)(r), Field::Null));
        out.put_i32(i32::from(!self.rows.is_empty()));
        out.put_i32(i32::from(nulls));
        out.put_u32(member.oid());
        if !self.rows.is_empty() {
            out.put_i32(i32::try_from(self.rows.len())?);
            out.put_i32(1);
        }
        for r in self.rows {
            let v = (self.value)(r);
            if !v.is(member) {
                return Err(format!("a value of the wrong type for {member}").into());
            }
            v.put(out);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }

    to_sql_checked!();
}

/// `rows`' columns as the array parameters of [`insert_sql`].
pub fn arrays<'r, T, const N: usize>(
    rows: &'r [&'r T],
    fields: &[Column<T>; N],
) -> [Array<'r, T>; N] {
    std::array::from_fn(|k| Array {
        rows,
        value: fields[k].value,
    })
}

/// Rows in `COPY … (FORMAT binary)`'s encoding, written straight into one buffer (the
/// client library's writer checks and encodes each value through `ToSql`, a share
/// of the writer's time per row): the header, per row its field count and each field,
/// the trailer.
pub struct CopyRows {
    buf: Vec<u8>,
    rows: usize,
}

impl CopyRows {
    /// `rows` of a table whose columns are `(part, node, id)` and `fields`, the ids
    /// from `first` on.
    pub fn of<T>(part: i32, node: i16, first: i64, rows: &[&T], fields: &[Column<T>]) -> Self {
        let mut buf = Vec::with_capacity(rows.len() * 160 + 32);
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension
        for (k, r) in rows.iter().enumerate() {
            buf.put_i16(3 + fields.len() as i16);
            Field::I32(part).put(&mut buf);
            Field::I16(node).put(&mut buf);
            Field::I64(first + k as i64).put(&mut buf);
            for c in fields {
                (c.value)(r).put(&mut buf);
            }
        }
        buf.put_i16(-1);
        CopyRows {
            buf,
            rows: rows.len(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(bucket: i64, account: i64, originator: Option<i64>, recipient: i64) -> Row {
        Row {
            submission: 1,
            ordinal: 0,
            at_us: 1,
            bucket,
            protocol: 0,
            service: 0,
            recipient_form: 0,
            segments: 1,
            account_ix: account,
            ip_ix: 5,
            originator_ix: originator,
            recipient_ix: recipient,
            sealed: Vec::new(),
            leaf: [0; 32],
        }
    }

    #[test]
    fn a_batch_groups_into_one_posting_a_bucket_kind_and_tag() {
        let rows = [
            record(7, 1, None, 30),
            record(7, 1, Some(9), 31),
            record(8, 1, Some(9), 30),
            record(7, 2, None, 30),
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let p = Postings::of(&refs, 100);
        let got: Vec<(i64, i16, i64, Vec<i64>)> = (0..p.len())
            .map(|k| {
                let (start, len) = (p.start[k] as usize - 1, p.len[k] as usize);
                (
                    p.bucket[k],
                    p.kind[k],
                    p.tag[k],
                    p.ids[start..start + len].to_vec(),
                )
            })
            .collect();
        // Recipients are not posted (their B-tree is on the record table).
        assert_eq!(
            got,
            [
                (7, 1, 1, vec![100, 101]),
                (7, 1, 2, vec![103]),
                (7, 2, 5, vec![100, 101, 103]),
                (7, 3, 9, vec![101]),
                (8, 1, 1, vec![102]),
                (8, 2, 5, vec![102]),
                (8, 3, 9, vec![102]),
            ]
        );
        assert_eq!(p.ids.len(), 4 * 2 + 2);
        assert!(Postings::of(&[], 1).is_empty());
        assert!(!posted(IndexKind::Recipient) && posted(IndexKind::Originator));
    }

    #[test]
    fn the_statement_numbers_its_parameters_in_the_order_they_are_sent() {
        let sql = insert_sql(PartitionId::of_date(
            crate::config::Granularity::Day,
            chrono::NaiveDate::from_ymd_opt(2026, 12, 5).unwrap(),
        ));
        let sent = NUMBERING.count as usize;
        assert_eq!(
            sent,
            LEADING as usize
                + RECORD_FIELDS.len()
                + POSTING_PARAMS as usize
                + 2 * OUTCOME_FIELDS.len()
                + 2
                + 8
                + 3
        );
        assert_eq!(sent, 61);
        for n in 1..=sent {
            assert!(sql.contains(&format!("${n}::")), "${n} in {sql}");
        }
        assert!(!sql.contains(&format!("${}", sent + 1)), "{sql}");
        // Each column's array in its place: the records' first, their postings, the
        // outcome rows' next, the block's bounds and arrays, the head, the journal
        // frame.
        assert!(sql.contains("$6::bigint[], $7::integer[]"), "{sql}");
        assert!(sql.contains("($24::bigint[])[u.start:"), "{sql}");
        assert!(
            sql.contains("unnest($19::smallint[], $20::bigint[]"),
            "{sql}"
        );
        assert!(
            sql.contains("$36::text[]) WITH ORDINALITY AS t(submission, at_us"),
            "{sql}"
        );
        assert!(
            sql.contains("$37::bigint, $38::bigint, $39::bigint[]"),
            "{sql}"
        );
        assert!(sql.contains("cardinality($39::bigint[]) > 0"), "{sql}");
        assert!(sql.contains("$51::bigint, $52::bigint"), "{sql}");
        assert!(sql.contains("$59::text, $60::bigint, $61::bytea"), "{sql}");
        assert!(SET_JOURNAL_FRAME.contains("$3::text, $4::bigint, $5::bytea"));
    }
}
