//! The ledger's database, SQLite or PostgreSQL behind one small interface: statements
//! written once, with `?1`-style parameters (rewritten to `$1` for PostgreSQL), values
//! of four kinds, and write transactions that are serialised as SQLite's `BEGIN
//! IMMEDIATE` serialises them (on PostgreSQL: one advisory lock, so that two nodes
//! appending to the audit chain at once take turns and it stays one chain).
//!
//! The ledger's traffic is a few statements per officer action: plain statements are
//! enough, and the same SQL runs on both engines (upserts as `ON CONFLICT`, new ids
//! through `RETURNING`).

use std::borrow::Cow;
use std::sync::Arc;

/// A statement's parameter.
#[derive(Debug)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// What can be bound: integers (and booleans, as 0 or 1), text, bytes, and options.
pub trait Param {
    fn value(&self) -> Value<'_>;
}

impl Param for i64 {
    fn value(&self) -> Value<'_> {
        Value::Int(*self)
    }
}
impl Param for bool {
    fn value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}
impl Param for str {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl Param for &str {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl Param for String {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl Param for [u8] {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
impl Param for Vec<u8> {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value<'_> {
        match self {
            Some(v) => v.value(),
            None => Value::Null,
        }
    }
}

/// One cell of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// A result row: cells by position.
#[derive(Debug, Clone)]
pub struct Row(Vec<Cell>);

/// Why a statement failed: the engine's message (never a bound value: SQLite's do not
/// hold them, and PostgreSQL's `DETAIL` is dropped, see [`crate::pg::describe`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DbError(pub String);

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError(e.to_string())
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        DbError(crate::pg::describe(&e).to_string())
    }
}

impl From<crate::pg::PgError> for DbError {
    fn from(e: crate::pg::PgError) -> Self {
        DbError(e.to_string())
    }
}

pub type DbResult<T> = Result<T, DbError>;

fn mismatch(i: usize, want: &str, got: &Cell) -> DbError {
    // The kind only, never the value (a password hash, a sealed secret).
    let found = match got {
        Cell::Null => "null",
        Cell::Int(_) => "an integer",
        Cell::Text(_) => "text",
        Cell::Blob(_) => "bytes",
    };
    DbError(format!("column {i}: expected {want}, found {found}"))
}

impl Row {
    pub fn int(&self, i: usize) -> DbResult<i64> {
        match self.0.get(i) {
            Some(Cell::Int(v)) => Ok(*v),
            other => Err(mismatch(i, "an integer", other.unwrap_or(&Cell::Null))),
        }
    }

    pub fn opt_int(&self, i: usize) -> DbResult<Option<i64>> {
        match self.0.get(i) {
            Some(Cell::Null) => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    pub fn text(&self, i: usize) -> DbResult<String> {
        match self.0.get(i) {
            Some(Cell::Text(v)) => Ok(v.clone()),
            other => Err(mismatch(i, "text", other.unwrap_or(&Cell::Null))),
        }
    }

    pub fn opt_text(&self, i: usize) -> DbResult<Option<String>> {
        match self.0.get(i) {
            Some(Cell::Null) => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    pub fn blob(&self, i: usize) -> DbResult<Vec<u8>> {
        match self.0.get(i) {
            Some(Cell::Blob(v)) => Ok(v.clone()),
            other => Err(mismatch(i, "bytes", other.unwrap_or(&Cell::Null))),
        }
    }
}

/// The advisory lock every ledger write transaction takes on PostgreSQL.
const WRITE_LOCK: i64 = crate::pg::schema::lock::AUDIT;

/// A connection to the ledger.
pub enum Db {
    Sqlite(rusqlite::Connection),
    /// Boxed: a pooled client is three times a SQLite connection's size.
    Postgres(Box<crate::pg::Pooled>),
}

impl Db {
    pub fn postgres(pool: &Arc<crate::pg::Pool>) -> DbResult<Db> {
        Ok(Db::Postgres(Box::new(pool.get()?)))
    }

    /// Runs a statement; the rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> DbResult<u64> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(
                    params.iter().map(|p| Lite(p.value())),
                ))? as u64)
            }
            Db::Postgres(c) => {
                let values = pg_params(params);
                let wrapped = pg_refs(&values);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    wrapped.iter().map(|p| p as _).collect();
                Ok(c.execute(&*pg_sql(sql), &refs)?)
            }
        }
    }

    /// Every row of a query.
    pub fn query(&mut self, sql: &str, params: &[&dyn Param]) -> DbResult<Vec<Row>> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let n = stmt.column_count();
                let rows = stmt.query_map(
                    rusqlite::params_from_iter(params.iter().map(|p| Lite(p.value()))),
                    |r| {
                        (0..n)
                            .map(|i| {
                                Ok(match r.get_ref(i)? {
                                    rusqlite::types::ValueRef::Null => Cell::Null,
                                    rusqlite::types::ValueRef::Integer(v) => Cell::Int(v),
                                    rusqlite::types::ValueRef::Real(v) => Cell::Int(v as i64),
                                    rusqlite::types::ValueRef::Text(t) => {
                                        Cell::Text(String::from_utf8_lossy(t).into_owned())
                                    }
                                    rusqlite::types::ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
                                })
                            })
                            .collect::<rusqlite::Result<Vec<Cell>>>()
                            .map(Row)
                    },
                )?;
                Ok(rows.collect::<rusqlite::Result<Vec<Row>>>()?)
            }
            Db::Postgres(c) => {
                let values = pg_params(params);
                let wrapped = pg_refs(&values);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    wrapped.iter().map(|p| p as _).collect();
                let rows = c.query(&*pg_sql(sql), &refs)?;
                rows.iter().map(pg_row).collect()
            }
        }
    }

    /// The first row of a query, if any.
    pub fn query_opt(&mut self, sql: &str, params: &[&dyn Param]) -> DbResult<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The one row of a query (an error without one).
    pub fn query_one(&mut self, sql: &str, params: &[&dyn Param]) -> DbResult<Row> {
        self.query_opt(sql, params)?
            .ok_or_else(|| DbError("the query returned no row".into()))
    }

    /// Runs several statements without parameters (schema).
    pub fn batch(&mut self, sql: &str) -> DbResult<()> {
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Db::Postgres(c) => Ok(c.batch_execute(sql)?),
        }
    }

    /// Begins a write transaction, serialised with every other one on the ledger
    /// (whichever process or node): rolled back if dropped uncommitted.
    pub fn begin(&mut self) -> DbResult<Tx<'_>> {
        match self {
            Db::Sqlite(c) => c.execute_batch("BEGIN IMMEDIATE")?,
            Db::Postgres(c) => {
                c.batch_execute("BEGIN")?;
                if let Err(e) = c.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK]) {
                    let _ = c.batch_execute("ROLLBACK");
                    return Err(e.into());
                }
            }
        }
        Ok(Tx {
            db: self,
            done: false,
        })
    }

    /// Begins a transaction that, on PostgreSQL, does not wait for the audit chain's
    /// writers: for writes that conflict only row by row (upserts), which the engine
    /// orders itself. On SQLite every write transaction takes its turn anyway
    /// (`IMMEDIATE`, so that it does not fail on upgrading a read lock).
    pub fn begin_unserialised(&mut self) -> DbResult<Tx<'_>> {
        match self {
            Db::Sqlite(c) => c.execute_batch("BEGIN IMMEDIATE")?,
            Db::Postgres(c) => c.batch_execute("BEGIN")?,
        }
        Ok(Tx {
            db: self,
            done: false,
        })
    }
}

/// A write transaction (see [`Db::begin`]).
pub struct Tx<'d> {
    db: &'d mut Db,
    done: bool,
}

impl Tx<'_> {
    pub fn commit(mut self) -> DbResult<()> {
        self.done = true;
        self.db.batch("COMMIT")
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Db {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done && self.db.batch("ROLLBACK").is_err() {
            // Still in the transaction, and holding the ledger's lock: never given
            // back to the pool like that.
            if let Db::Postgres(c) = self.db {
                c.discard();
            }
        }
    }
}

struct Lite<'a>(Value<'a>);

impl rusqlite::ToSql for Lite<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match &self.0 {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// A parameter as PostgreSQL is sent it: an integer in whichever width the server
/// expects there, a NULL of any type.
#[derive(Debug)]
struct PgParam<'a>(&'a Value<'a>);

impl postgres::types::ToSql for PgParam<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        match self.0 {
            Value::Null => Ok(postgres::types::IsNull::Yes),
            Value::Int(v) if *ty == Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::BOOL => (*v != 0).to_sql(ty, out),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Text(t) => t.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        // Checked per value in `to_sql_checked`.
        true
    }

    fn to_sql_checked(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        let fits = match self.0 {
            Value::Null => true,
            Value::Int(_) => [Type::INT2, Type::INT4, Type::INT8, Type::BOOL].contains(ty),
            Value::Text(_) => <&str as postgres::types::ToSql>::accepts(ty),
            Value::Blob(_) => <&[u8] as postgres::types::ToSql>::accepts(ty),
        };
        if !fits {
            return Err(format!("a parameter of the wrong kind for {ty}").into());
        }
        self.to_sql(ty, out)
    }
}

fn pg_params<'a>(params: &'a [&'a dyn Param]) -> Vec<Value<'a>> {
    params.iter().map(|p| p.value()).collect()
}

fn pg_refs<'a>(values: &'a [Value<'a>]) -> Vec<PgParam<'a>> {
    values.iter().map(PgParam).collect()
}

/// `?1` → `$1`: a `?` followed by a digit is a parameter; any other is left alone.
fn pg_sql(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn pg_row(r: &postgres::Row) -> DbResult<Row> {
    use postgres::types::Type;
    let mut cells = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        let t = c.type_();
        let cell = if *t == Type::INT8 {
            r.get::<_, Option<i64>>(i).map_or(Cell::Null, Cell::Int)
        } else if *t == Type::INT4 {
            r.get::<_, Option<i32>>(i)
                .map_or(Cell::Null, |v| Cell::Int(v.into()))
        } else if *t == Type::INT2 {
            r.get::<_, Option<i16>>(i)
                .map_or(Cell::Null, |v| Cell::Int(v.into()))
        } else if *t == Type::BOOL {
            r.get::<_, Option<bool>>(i)
                .map_or(Cell::Null, |v| Cell::Int(v.into()))
        } else if *t == Type::TEXT || *t == Type::VARCHAR || *t == Type::NAME {
            r.get::<_, Option<String>>(i).map_or(Cell::Null, Cell::Text)
        } else if *t == Type::BYTEA {
            r.get::<_, Option<Vec<u8>>>(i)
                .map_or(Cell::Null, Cell::Blob)
        } else {
            return Err(DbError(format!("column {i}: unexpected type {t}")));
        };
        cells.push(cell);
    }
    Ok(Row(cells))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_for_postgres_only() {
        assert_eq!(
            pg_sql("SELECT a FROM t WHERE b = ?1 AND c = ?2"),
            "SELECT a FROM t WHERE b = $1 AND c = $2"
        );
        assert!(matches!(pg_sql("SELECT 1"), Cow::Borrowed(_)));
        assert_eq!(
            pg_sql("SELECT '?' WHERE a = ?12"),
            "SELECT '?' WHERE a = $12"
        );
    }

    #[test]
    fn sqlite_rows_come_back_as_cells_and_a_dropped_transaction_rolls_back() {
        let mut db = Db::Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        db.batch("CREATE TABLE t (a INTEGER, b TEXT, c BLOB)")
            .unwrap();
        db.execute(
            "INSERT INTO t (a, b, c) VALUES (?1, ?2, ?3)",
            &[&7i64, &"seven", &vec![7u8]],
        )
        .unwrap();
        {
            let mut tx = db.begin().unwrap();
            tx.execute("DELETE FROM t", &[]).unwrap();
        }
        let row = db.query_one("SELECT a, b, c, NULL FROM t", &[]).unwrap();
        assert_eq!(row.int(0).unwrap(), 7);
        assert_eq!(row.text(1).unwrap(), "seven");
        assert_eq!(row.blob(2).unwrap(), vec![7]);
        assert_eq!(row.opt_int(3).unwrap(), None);
        assert!(row.text(0).is_err());
    }
}
