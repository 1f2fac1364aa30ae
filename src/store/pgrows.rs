//! A small batch's rows as PostgreSQL array parameters of one statement
//! ([`insert_sql`]): its records, its outcome events and the head when one is due, in
//! one round trip and one implicit transaction. COPY needs five round trips a batch
//! (BEGIN, two COPYs of two each, COMMIT), and at the relay's batches of a few dozen
//! rows those round trips, not the rows, were most of a commit's time.
//!
//! Each array is encoded straight from the rows ([`Column`]), with no vector of
//! values per column: a batch costs the relay no allocation per row.

use postgres::types::{IsNull, Kind, ToSql, Type, to_sql_checked};

use super::partition::PartitionId;
use super::rows::{OutcomeRow, Row};
use crate::pg::schema;

/// The statement writing a batch into `p`'s own tables (the rows skip the parent's
/// routing). Parameters: `$1` part, `$2` node, `$3`/`$4` the first record and
/// outcome ids, `$5..$17` the records' columns, `$18..$29` the outcome events', and
/// `$30..$37` the head (all NULL when none is due). A data-modifying `WITH` runs
/// whether or not it is read, all in the statement's one transaction.
pub fn insert_sql(p: PartitionId) -> String {
    let s = schema::table_suffix(p);
    format!(
        "WITH r AS (INSERT INTO relaylog.record_{s} (part, node, id, submission, ordinal, at_us, \
         bucket, protocol, service, recipient_form, segments, account_ix, ip_ix, originator_ix, \
         recipient_ix, sealed) \
         SELECT $1::integer, $2::smallint, $3::bigint + n - 1, submission, ordinal, at_us, bucket, \
         protocol, service, recipient_form, segments, account_ix, ip_ix, originator_ix, \
         recipient_ix, sealed \
         FROM unnest($5::bigint[], $6::integer[], $7::bigint[], $8::bigint[], $9::smallint[], \
         $10::smallint[], $11::smallint[], $12::integer[], $13::bigint[], $14::bigint[], \
         $15::bigint[], $16::bigint[], $17::bytea[]) WITH ORDINALITY AS t(submission, ordinal, \
         at_us, bucket, protocol, service, recipient_form, segments, account_ix, ip_ix, \
         originator_ix, recipient_ix, sealed, n)), \
         o AS (INSERT INTO relaylog.outcome_{s} (part, node, id, submission, at_us, outcome, \
         upstream_status, gateway_code, message_id_sealed, enhanced_status, size_bytes, ordinal, \
         receipt_state, receipt_error, receipt_done) \
         SELECT $1::integer, $2::smallint, $4::bigint + n - 1, submission, at_us, outcome, \
         upstream_status, gateway_code, message_id_sealed, enhanced_status, size_bytes, ordinal, \
         receipt_state, receipt_error, receipt_done \
         FROM unnest($18::bigint[], $19::bigint[], $20::smallint[], $21::integer[], \
         $22::integer[], $23::bytea[], $24::text[], $25::bigint[], $26::integer[], $27::text[], \
         $28::text[], $29::text[]) WITH ORDINALITY AS t(submission, at_us, outcome, \
         upstream_status, gateway_code, message_id_sealed, enhanced_status, size_bytes, ordinal, \
         receipt_state, receipt_error, receipt_done, n)), \
         h AS (INSERT INTO relaylog.head (part, node, seq, size, record_through, \
         outcome_through, root, frontier, at_us, signature) \
         SELECT $1::integer, $2::smallint, $30::bigint, $31::bigint, $32::bigint, $33::bigint, \
         $34::bytea, $35::bytea, $36::bigint, $37::bytea WHERE $30::bigint IS NOT NULL) \
         SELECT 1"
    )
}

/// One value of a column, as [`Column`] reads it from a row.
pub enum Field<'a> {
    Null,
    I16(i16),
    I32(i32),
    I64(i64),
    Bytes(&'a [u8]),
}

/// A one-dimensional array parameter, each element read from a row by `field`, in
/// PostgreSQL's binary array form (dimensions, then each element as a length, -1 for
/// NULL, and its bytes). The element type is the parameter's, as the statement
/// declares it; `field` must give values of that type (checked: a mismatch is an
/// error, never a wrong value).
pub struct Column<'r, T> {
    pub rows: &'r [&'r T],
    pub field: for<'a> fn(&'a T) -> Field<'a>,
}

impl<T> std::fmt::Debug for Column<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Column({} rows)", self.rows.len())
    }
}

impl<T> ToSql for Column<'_, T> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        let Kind::Array(member) = ty.kind() else {
            return Err(format!("{ty} is not an array").into());
        };
        let width = match *member {
            Type::INT2 => 2,
            Type::INT4 => 4,
            Type::INT8 => 8,
            Type::BYTEA | Type::TEXT => 0,
            _ => return Err(format!("no rows column of type {member}").into()),
        };
        let nulls = self
            .rows
            .iter()
            .any(|r| matches!((self.field)(r), Field::Null));
        out.put_i32(if self.rows.is_empty() { 0 } else { 1 });
        out.put_i32(i32::from(nulls));
        out.put_u32(member.oid());
        if !self.rows.is_empty() {
            out.put_i32(self.rows.len() as i32);
            out.put_i32(1);
        }
        for r in self.rows {
            match ((self.field)(r), width) {
                (Field::Null, _) => out.put_i32(-1),
                (Field::I16(v), 2) => {
                    out.put_i32(2);
                    out.put_i16(v);
                }
                (Field::I32(v), 4) => {
                    out.put_i32(4);
                    out.put_i32(v);
                }
                (Field::I64(v), 8) => {
                    out.put_i32(8);
                    out.put_i64(v);
                }
                (Field::Bytes(b), 0) => {
                    out.put_i32(i32::try_from(b.len())?);
                    out.put_slice(b);
                }
                _ => return Err(format!("a value of the wrong type for {member}").into()),
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }

    to_sql_checked!();
}

/// The records' thirteen columns (`$5..$17` of [`insert_sql`]).
pub fn record_columns<'r>(rows: &'r [&'r Row]) -> [Column<'r, Row>; 13] {
    let c = |field| Column { rows, field };
    [
        c(|r| Field::I64(r.submission)),
        c(|r| Field::I32(r.ordinal as i32)),
        c(|r| Field::I64(r.at_us)),
        c(|r| Field::I64(r.bucket)),
        c(|r| Field::I16(i16::from(r.protocol))),
        c(|r| Field::I16(i16::from(r.service))),
        c(|r| Field::I16(i16::from(r.recipient_form))),
        c(|r| Field::I32(i32::from(r.segments))),
        c(|r| Field::I64(r.account_ix)),
        c(|r| Field::I64(r.ip_ix)),
        c(|r| r.originator_ix.map_or(Field::Null, Field::I64)),
        c(|r| Field::I64(r.recipient_ix)),
        c(|r| Field::Bytes(&r.sealed)),
    ]
}

fn text(s: &str) -> Field<'_> {
    Field::Bytes(s.as_bytes())
}

/// The outcome events' twelve columns (`$18..$29` of [`insert_sql`]).
pub fn outcome_columns<'r>(rows: &'r [&'r OutcomeRow]) -> [Column<'r, OutcomeRow>; 12] {
    let c = |field| Column { rows, field };
    [
        c(|o| Field::I64(o.submission)),
        c(|o| Field::I64(o.at_us)),
        c(|o| Field::I16(i16::from(o.outcome))),
        c(|o| {
            o.upstream_status
                .map_or(Field::Null, |v| Field::I32(i32::from(v)))
        }),
        c(|o| o.gateway_code.map_or(Field::Null, Field::I32)),
        c(|o| {
            o.message_id_sealed
                .as_deref()
                .map_or(Field::Null, Field::Bytes)
        }),
        c(|o| o.enhanced_status.as_deref().map_or(Field::Null, text)),
        c(|o| o.size_bytes.map_or(Field::Null, |v| Field::I64(v as i64))),
        c(|o| o.ordinal.map_or(Field::Null, |v| Field::I32(v as i32))),
        c(|o| o.receipt_state.as_deref().map_or(Field::Null, text)),
        c(|o| o.receipt_error.as_deref().map_or(Field::Null, text)),
        c(|o| o.receipt_done.as_deref().map_or(Field::Null, text)),
    ]
}
