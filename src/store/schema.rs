//! The on-disk layout of a partition file, and how it is opened.
//!
//! ```sql
//! record(id INTEGER PRIMARY KEY,   -- record id within the partition, in commit order,
//!                                  --   given by the writer and never reused
//!        submission, ordinal,      -- submission id (time-ordered) and recipient position
//!        at_us, bucket,            -- receive time (µs UTC) and its index bucket
//!        protocol, service, recipient_form, segments,      -- plain, identify no one
//!        account_ix, ip_ix, originator_ix, recipient_ix,   -- blind indexes (integers)
//!        sealed)                   -- nonce | AES-256-GCM(codec payload) | tag
//! outcome(id INTEGER PRIMARY KEY, -- given by the writer, never reused, like record.id
//!         submission, at_us, outcome, upstream_status,
//!         gateway_code, message_id_sealed,   -- appended, never updated (but erased)
//!         enhanced_status, size_bytes,       -- SMTP; added by ALTER to older files
//!         ordinal, receipt_state,            -- SMPP: one recipient's event, a receipt;
//!         receipt_error, receipt_done)       --   added by ALTER to older files
//!                                  -- (events of submissions long past; the others go in
//!                                  --   `outcome_block`, one row per transaction: see `events`)
//! ix_account / ix_ip / ix_originator / ix_recipient
//!        (bucket, tag, first, ids) PRIMARY KEY (bucket, tag, first), WITHOUT ROWID
//!                                  -- blind-index posting lists (see `postings`)
//! ix_state(indexed_through)        -- every record with id <= this is in the ix_* tables
//! head(seq, size, record_through, outcome_through, root, frontier, at_us, signature)
//!                                  -- a signed Merkle head per commit (see `integrity`)
//! ```
//!
//! **Why the indexes are separate tables, written late.** A B-tree index over a random
//! HMAC dirties one random page per row: at a few million rows a partition's write rate
//! collapses (measured here: 1.5 M rows/s with no index, tens of k/s with four). So
//! `record` is append-only with no secondary index, and the writer keeps each row's
//! `(bucket, tag, id)` entries in memory until a time bucket closes (or a cap or an idle
//! second is reached), then inserts them sorted and grouped: one row per `(bucket,
//! tag)` holding the record ids (an account sends thousands of messages a minute; one
//! row covers them all). The bucket leads every key and only grows, so the inserts
//! land at the right edge of each tree. The writes are spread over the commits that
//! follow, and `ix_state` moves with the last of them (see `index`). A query seeks the
//! `ix_*` tables once per bucket of its window, and scans the short unindexed tail
//! (`id > indexed_through`) by its tag columns. After a crash the writer rebuilds the
//! pending entries from that tail; nothing depends on memory.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::config::SyncMode;

pub const SCHEMA_VERSION: i64 = 1;

/// Bytes per database page, for new partitions. Measured: 16 KiB pages write bulk
/// loads as fast but quadruple the WAL bytes of the relay's many small commits (p99
/// 59 ms against 10 ms under 64 connections); 4 KiB suits both.
pub const PAGE_SIZE: i64 = 4_096;

/// WAL pages between the writer's own automatic checkpoints: the backstop behind the
/// checkpointer thread (see `writer::spawn_checkpointer`), which normally copies the
/// WAL every [`super::writer::CHECKPOINT_ROWS`] rows, long before this.
pub const WAL_AUTOCHECKPOINT_PAGES: i64 = 65_536;

/// A WAL file larger than this is truncated back to it once checkpointed.
pub const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;

/// How long the writer waits for a lock held by another connection.
pub const WRITER_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const DDL: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS record (
    id             INTEGER PRIMARY KEY,
    submission     INTEGER NOT NULL,
    ordinal        INTEGER NOT NULL,
    at_us          INTEGER NOT NULL,
    bucket         INTEGER NOT NULL,
    protocol       INTEGER NOT NULL,
    service        INTEGER NOT NULL,
    recipient_form INTEGER NOT NULL,
    segments       INTEGER NOT NULL,
    account_ix     INTEGER NOT NULL,
    ip_ix          INTEGER NOT NULL,
    originator_ix  INTEGER,
    recipient_ix   INTEGER NOT NULL,
    sealed         BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ix_account (bucket INTEGER, tag INTEGER, first INTEGER, ids BLOB NOT NULL, PRIMARY KEY (bucket, tag, first)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_ip (bucket INTEGER, tag INTEGER, first INTEGER, ids BLOB NOT NULL, PRIMARY KEY (bucket, tag, first)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_originator (bucket INTEGER, tag INTEGER, first INTEGER, ids BLOB NOT NULL, PRIMARY KEY (bucket, tag, first)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_recipient (bucket INTEGER, tag INTEGER, first INTEGER, ids BLOB NOT NULL, PRIMARY KEY (bucket, tag, first)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_state (one INTEGER PRIMARY KEY CHECK (one = 1), indexed_through INTEGER NOT NULL);
INSERT OR IGNORE INTO ix_state (one, indexed_through) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS head (
    seq             INTEGER PRIMARY KEY,
    size            INTEGER NOT NULL,
    record_through  INTEGER NOT NULL,
    outcome_through INTEGER NOT NULL,
    root            BLOB NOT NULL,
    frontier        BLOB NOT NULL,
    at_us           INTEGER NOT NULL,
    signature       BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outcome (
    id                INTEGER PRIMARY KEY,
    submission        INTEGER NOT NULL,
    at_us             INTEGER NOT NULL,
    outcome           INTEGER NOT NULL,
    upstream_status   INTEGER,
    gateway_code      INTEGER,
    message_id_sealed BLOB,
    enhanced_status   TEXT,
    size_bytes        INTEGER,
    ordinal           INTEGER,
    receipt_state     TEXT,
    receipt_error     TEXT,
    receipt_done      TEXT
);
CREATE INDEX IF NOT EXISTS outcome_submission ON outcome(submission);
";

/// Erasure statements (contract end): created with new partitions, and on older ones
/// when they are first erased from.
pub const ERASURE_DDL: &str = "
CREATE TABLE IF NOT EXISTS erasure (
    id        INTEGER PRIMARY KEY,
    at_us     INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    entries   BLOB NOT NULL,  -- (table byte, id, leaf) of every row erased, in id order
    signature BLOB NOT NULL   -- Ed25519 over integrity::erasure_message
);
";

/// Records and outcomes are inserted with their ids given, never left to SQLite: an
/// `INTEGER PRIMARY KEY` without AUTOINCREMENT hands out `max(id) + 1`, so once an
/// erasure removed a partition's highest rows their ids came back, and the Merkle fold
/// and the `id > watermark` scans no longer lined up. The writer assigns ids above a
/// high-water mark it derives when it opens a partition (the last signed head, the
/// rows after it and the erasure statements: see `integrity::TreeState::load`), so
/// partitions written before need no migration.
///
/// The writer's inserts say `OR ROLLBACK`: a constraint they break (an id taken, which
/// only rows put there from outside the writer can cause) ends the whole transaction
/// at once rather than the one statement; the commit fails either way. What it saves:
/// with SQLite's default (`ABORT`) a multi-row insert inside a transaction keeps a
/// statement journal, a copy of each page before it changes (6–8% of the writer's
/// time under load). Only the posting inserts are spared it: record and outcome
/// inserts keep one, because SQLite checks an explicit `INTEGER PRIMARY KEY` with an
/// opcode that may abort.
pub const INSERT_RECORD: &str = "INSERT OR ROLLBACK INTO record (id, submission, ordinal, at_us, bucket, protocol, service, \
    recipient_form, segments, account_ix, ip_ix, originator_ix, recipient_ix, sealed) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

/// The index tables, in [`crate::store::IndexKind`] order: account, ip, originator, recipient.
pub const INDEX_TABLES: [&str; 4] = ["ix_account", "ix_ip", "ix_originator", "ix_recipient"];

impl super::keys::IndexKind {
    /// The write-optimised (bucketed) index table of this kind (see `index`).
    pub fn ix_table(self) -> &'static str {
        INDEX_TABLES[self as usize - 1]
    }

    /// The read-optimised index table of this kind, made by compaction (see `compact`).
    pub fn cx_table(self) -> &'static str {
        use super::keys::IndexKind::*;
        match self {
            Account => "cx_account",
            ClientIp => "cx_ip",
            Originator => "cx_originator",
            Recipient => "cx_recipient",
        }
    }

    /// The column of `record` holding this kind's tag.
    pub fn tag_column(self) -> &'static str {
        use super::keys::IndexKind::*;
        match self {
            Account => "account_ix",
            ClientIp => "ip_ix",
            Originator => "originator_ix",
            Recipient => "recipient_ix",
        }
    }
}

pub const INSERT_INDEX: [&str; 4] = [
    "INSERT OR ROLLBACK INTO ix_account (bucket, tag, first, ids) VALUES (?1, ?2, ?3, ?4)",
    "INSERT OR ROLLBACK INTO ix_ip (bucket, tag, first, ids) VALUES (?1, ?2, ?3, ?4)",
    "INSERT OR ROLLBACK INTO ix_originator (bucket, tag, first, ids) VALUES (?1, ?2, ?3, ?4)",
    "INSERT OR ROLLBACK INTO ix_recipient (bucket, tag, first, ids) VALUES (?1, ?2, ?3, ?4)",
];

pub const SET_INDEXED_THROUGH: &str = "UPDATE ix_state SET indexed_through = ?1 WHERE one = 1";
pub const GET_INDEXED_THROUGH: &str = "SELECT indexed_through FROM ix_state WHERE one = 1";

/// Most rows per multi-row record or outcome INSERT.
pub const ROWS_PER_INSERT: usize = 32;

/// Columns of [`INSERT_RECORD`] and [`INSERT_OUTCOME`].
pub const RECORD_COLUMNS: usize = 14;
pub const OUTCOME_COLUMNS: usize = 13;

/// The tables written a batch at a time by [`insert_many`].
#[derive(Debug, Clone, Copy)]
pub enum Batched {
    Record,
    Outcome,
}

/// `INSERT INTO <table> (...) VALUES (...), (...), ...` for `rows` rows, a power of two
/// up to [`ROWS_PER_INSERT`]: a batch of any size is written with at most six
/// statement executions (its binary digits), each prepared once per connection.
pub fn insert_many(table: Batched, rows: usize) -> &'static str {
    const SIZES: usize = ROWS_PER_INSERT.trailing_zeros() as usize + 1;
    static SQL: std::sync::OnceLock<[[String; SIZES]; 2]> = std::sync::OnceLock::new();
    debug_assert!(rows.is_power_of_two() && rows <= ROWS_PER_INSERT);
    let all = SQL.get_or_init(|| {
        [
            (INSERT_RECORD, RECORD_COLUMNS),
            (INSERT_OUTCOME, OUTCOME_COLUMNS),
        ]
        .map(|(single, columns)| {
            let head = single.split(" VALUES").next().unwrap_or(single);
            std::array::from_fn(|k| {
                let values: Vec<String> = (0..1usize << k)
                    .map(|r| {
                        let params: Vec<String> = (1..=columns)
                            .map(|c| format!("?{}", r * columns + c))
                            .collect();
                        format!("({})", params.join(", "))
                    })
                    .collect();
                format!("{head} VALUES {}", values.join(", "))
            })
        })
    });
    &all[table as usize][rows.trailing_zeros() as usize]
}

/// Splits `items` into runs whose lengths are powers of two (largest first), at most
/// [`ROWS_PER_INSERT`] each: the statement sizes [`insert_many`] has.
pub fn power_of_two_runs<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let n = ROWS_PER_INSERT.min(1 << items.len().ilog2());
        let (run, rest) = items.split_at(n);
        items = rest;
        Some(run)
    })
}

/// Posting rows per multi-row index INSERT.
pub const POSTINGS_PER_INSERT: usize = 64;

/// The multi-row form of [`INSERT_INDEX`]`[kind]`, for [`POSTINGS_PER_INSERT`] rows.
pub fn insert_postings_many(kind: usize) -> &'static str {
    static SQL: std::sync::OnceLock<[String; 4]> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        INDEX_TABLES.map(|table| {
            let rows: Vec<String> = (0..POSTINGS_PER_INSERT)
                .map(|r| {
                    format!(
                        "(?{}, ?{}, ?{}, ?{})",
                        4 * r + 1,
                        4 * r + 2,
                        4 * r + 3,
                        4 * r + 4
                    )
                })
                .collect();
            format!(
                "INSERT OR ROLLBACK INTO {table} (bucket, tag, first, ids) VALUES {}",
                rows.join(", ")
            )
        })
    });
    &all[kind]
}

/// See [`INSERT_RECORD`]: ids are the writer's.
pub const INSERT_OUTCOME: &str = "INSERT OR ROLLBACK INTO outcome (id, submission, at_us, outcome, upstream_status, \
    gateway_code, message_id_sealed, enhanced_status, size_bytes, ordinal, receipt_state, receipt_error, \
    receipt_done) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// The outcome columns added after the first partitions were written, each group by
/// one release: a partition written before a group lacks its columns until a writer
/// opens it (and adds them, nullable, without a rewrite).
const OUTCOME_GROUPS: [&[(&str, &str)]; GROUPS] = [
    // SMTP
    &[("enhanced_status", "TEXT"), ("size_bytes", "INTEGER")],
    // SMPP
    &[
        ("ordinal", "INTEGER"),
        ("receipt_state", "TEXT"),
        ("receipt_error", "TEXT"),
        ("receipt_done", "TEXT"),
    ],
];

const GROUPS: usize = 2;

/// Which groups of [`OUTCOME_GROUPS`] the partition's outcome table has.
fn outcome_groups(conn: &Connection) -> rusqlite::Result<[bool; GROUPS]> {
    let mut stmt = conn.prepare("SELECT 1 FROM pragma_table_info('outcome') WHERE name = ?1")?;
    let mut has = [false; GROUPS];
    for (group, columns) in OUTCOME_GROUPS.iter().enumerate() {
        has[group] = stmt.exists([columns[0].0])?;
    }
    Ok(has)
}

/// What a reader selects from a partition's outcome table, in this order: id,
/// submission, at_us, outcome, upstream_status, gateway_code, message_id_sealed,
/// enhanced_status, size_bytes, ordinal, receipt_state, receipt_error, receipt_done
/// (NULL for those the partition predates).
pub fn outcome_columns(conn: &Connection) -> rusqlite::Result<String> {
    Ok(columns_of(outcome_groups(conn)?))
}

/// The outcome columns of a partition that has every group: one compaction or the
/// writer has completed (see [`complete_outcome_table`]), known without asking.
pub fn all_outcome_columns() -> String {
    columns_of([true; GROUPS])
}

fn columns_of(has: [bool; GROUPS]) -> String {
    let mut select = vec![
        "id",
        "submission",
        "at_us",
        "outcome",
        "upstream_status",
        "gateway_code",
        "message_id_sealed",
    ];
    for (group, columns) in OUTCOME_GROUPS.iter().enumerate() {
        select.extend(
            columns
                .iter()
                .map(|(name, _)| if has[group] { *name } else { "NULL" }),
        );
    }
    select.join(", ")
}

/// Adds the groups of outcome columns an older partition lacks: nullable columns, no
/// rewrite, a group all or none.
pub fn complete_outcome_table(conn: &Connection) -> rusqlite::Result<()> {
    for (has, columns) in outcome_groups(conn)?.into_iter().zip(OUTCOME_GROUPS) {
        if !has {
            let mut sql = String::from("BEGIN;");
            for (name, kind) in columns {
                sql.push_str(&format!(" ALTER TABLE outcome ADD COLUMN {name} {kind};"));
            }
            sql.push_str(" COMMIT;");
            conn.execute_batch(&sql)?;
        }
    }
    Ok(())
}

/// Opens (creating if needed) a partition for the writer.
pub fn open_for_write(
    path: &Path,
    partition: &str,
    sync: SyncMode,
    cache_mib: u32,
) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Another connection (the checkpointer's RESTART, a query's WAL recovery, a
    // maintenance command) may hold the write lock for a moment: wait for it rather
    // than fail the batch. While the writer waits the queue fills, and past
    // enqueue-timeout the relay fails closed.
    conn.busy_handler(Some(fine_busy(WRITER_BUSY_TIMEOUT)))?;
    // Takes effect only when the file is new (before its first write).
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Checkpoints run on another thread (see `writer::spawn_checkpointer`): the
    // automatic one is only a backstop, far apart.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            SyncMode::Normal => "NORMAL",
            SyncMode::Full => "FULL",
        },
    )?;
    conn.pragma_update(None, "cache_size", -(i64::from(cache_mib) * 1024))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // The writer's statements (multi-row inserts of each size, index slices, heads,
    // the watermark) are more than rusqlite's default cache of 16.
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(DDL)?;
    conn.execute_batch(ERASURE_DDL)?;
    conn.execute_batch(super::events::DDL)?;
    complete_outcome_table(&conn)?;
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?1), ('partition', ?2)",
        rusqlite::params![SCHEMA_VERSION, partition],
    )?;
    Ok(conn)
}

/// How long a RESTART checkpoint may wait, for the writer's commit to end and for
/// readers to leave the WAL together (holding the writer back during the latter),
/// before it gives up and is tried again after the next rows.
pub const CHECKPOINT_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(20);

/// A busy handler that waits for locks other connections hold, in fine steps, until
/// `limit` has passed since the statement first found one taken (all the waits of one
/// statement share the limit; then SQLite answers `SQLITE_BUSY`): 50 µs steps for the
/// first 20 tries, then 1 ms. SQLite's own busy timeout sleeps 1, 2, 5, 10… ms between
/// tries, so a lock held 4 ms cost whoever waited 8 ms, and every commit queued behind
/// the writer as long.
pub fn fine_busy(limit: std::time::Duration) -> impl FnMut(i32) -> bool + Send + 'static {
    let mut since = std::time::Instant::now();
    let mut last = -1;
    move |retries| {
        // SQLite counts from 0 for each statement; anything else starts afresh too.
        if retries <= 0 || retries != last + 1 {
            since = std::time::Instant::now();
        }
        last = retries;
        if since.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(if retries < 20 {
            std::time::Duration::from_micros(50)
        } else {
            std::time::Duration::from_millis(1)
        });
        true
    }
}

/// Opens an existing partition for the checkpointer thread.
pub fn open_for_checkpoint(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_handler(Some(fine_busy(CHECKPOINT_BUSY_TIMEOUT)))?;
    Ok(conn)
}

/// Whether a partition's tables are all there: the writer creates a new partition's
/// file, then its tables, then its `meta` row; a reader that opens the file in between
/// sees a partition with nothing in it yet (`Ok(false)`). Any other failure is an
/// error, never a partition silently left out.
pub fn is_ready(conn: &Connection) -> rusqlite::Result<bool> {
    match conn.query_row("SELECT 1 FROM meta WHERE key = 'schema'", [], |_| Ok(())) {
        Ok(()) => Ok(true),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(false),
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.starts_with("no such table") => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Records, in the transaction that writes them, the last journal frame a partition
/// holds (see [`super::journal`]).
pub const SET_JOURNAL: &str = "INSERT OR REPLACE INTO meta (key, value) VALUES ('journal', ?1)";

/// The journal frame a partition last recorded holding, as [`SET_JOURNAL`] wrote it.
pub fn journal_meta(conn: &Connection) -> rusqlite::Result<Option<String>> {
    use rusqlite::OptionalExtension;
    conn.query_row("SELECT value FROM meta WHERE key = 'journal'", [], |r| {
        r.get(0)
    })
    .optional()
}

/// Opens an existing partition for queries. Read-write without create, so that a WAL
/// left by a killed writer is recovered rather than refused; queries never write.
pub fn open_for_read(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Plans that do not depend on bound values: without this a statement comparing
    // a column with `?` is prepared again when the value bound becomes 0 or 1 (a
    // record's first ordinal), which was an eighth of a lookup's time.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy handler gives up once its limit has passed since the statement first
    /// found a lock taken, counted afresh for the next statement, and waits in fine
    /// steps first.
    #[test]
    fn fine_busy_gives_up_at_its_limit() {
        let limit = std::time::Duration::from_millis(20);
        let mut handler = fine_busy(limit);
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let mut tries = 0;
            while handler(tries) {
                tries += 1;
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(2),
                    "it gives up"
                );
            }
            assert!(
                started.elapsed() >= limit,
                "gave up after {:?}",
                started.elapsed()
            );
            assert!(
                tries > 20,
                "fine steps first, then 1 ms ones: {tries} tries"
            );
        }
    }

    /// The writer waits out a write lock another connection holds for a while (as a
    /// checkpoint's RESTART does), and commits.
    #[test]
    fn the_writer_waits_for_a_lock_held_by_another_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("2026-11-22.sqlite");
        let writer = open_for_write(&path, "2026-11-22", SyncMode::Normal, 1).unwrap();
        let other = open_for_checkpoint(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            other.execute_batch("COMMIT").unwrap();
        });
        let started = std::time::Instant::now();
        writer
            .execute_batch(
                "BEGIN IMMEDIATE; INSERT INTO meta (key, value) VALUES ('t', 'x'); COMMIT;",
            )
            .unwrap();
        assert!(started.elapsed() >= std::time::Duration::from_millis(25));
        holder.join().unwrap();
    }

    #[test]
    fn a_partition_is_ready_once_its_meta_row_is_there() {
        let conn = Connection::open_in_memory().unwrap();
        assert!(!is_ready(&conn).unwrap(), "no tables yet");
        conn.execute_batch("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            .unwrap();
        assert!(!is_ready(&conn).unwrap(), "tables, no meta row");
        conn.execute("INSERT INTO meta VALUES ('schema', '1')", [])
            .unwrap();
        assert!(is_ready(&conn).unwrap());
    }

    /// A partition from before the SMTP and SMPP columns reads with NULL for them,
    /// and gets them (both groups, no rewrite) when a writer opens it.
    #[test]
    fn older_outcome_tables_are_read_as_they_are_and_extended_by_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE outcome (id INTEGER PRIMARY KEY, submission INTEGER NOT NULL, \
                 at_us INTEGER NOT NULL, outcome INTEGER NOT NULL, upstream_status INTEGER, \
                 gateway_code INTEGER, message_id_sealed BLOB); \
                 INSERT INTO outcome VALUES (1, 7, 70, 1, 202, 0, NULL);",
            )
            .unwrap();
            let columns = outcome_columns(&conn).unwrap();
            assert!(!super::super::events::has_blocks(&conn).unwrap());
            let row: (i64, Option<String>, Option<i64>) = conn
                .query_row(&format!("SELECT {columns} FROM outcome"), [], |r| {
                    Ok((r.get(1)?, r.get(7)?, r.get(9)?))
                })
                .unwrap();
            assert_eq!(row, (7, None, None));
        }
        let conn = open_for_write(&path, "old", SyncMode::Normal, 2).unwrap();
        let columns = outcome_columns(&conn).unwrap();
        assert!(!columns.contains("NULL"), "{columns}");
        assert!(super::super::events::has_blocks(&conn).unwrap());
        // The event written before reads as it did, from its row: no ordinal (the
        // submission's), no receipt.
        let found = super::super::events::Lookup::new(&conn)
            .unwrap()
            .of(&conn, 7)
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].0, found[0].1.at_us, found[0].1.ordinal),
            (1, 70, None)
        );
        let stmt = conn.prepare(INSERT_OUTCOME).unwrap();
        assert_eq!(stmt.parameter_count(), OUTCOME_COLUMNS);
    }

    #[test]
    fn batches_split_into_power_of_two_statements() {
        for n in 0..200usize {
            let items: Vec<usize> = (0..n).collect();
            let runs: Vec<&[usize]> = power_of_two_runs(&items).collect();
            assert_eq!(runs.concat(), items, "n = {n}");
            assert!(
                runs.iter()
                    .all(|r| r.len().is_power_of_two() && r.len() <= ROWS_PER_INSERT)
            );
            assert!(runs.windows(2).all(|w| w[0].len() >= w[1].len()));
        }
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(DDL).unwrap();
        for k in 0..=ROWS_PER_INSERT.ilog2() {
            let rows = 1usize << k;
            for (table, columns) in [
                (Batched::Record, RECORD_COLUMNS),
                (Batched::Outcome, OUTCOME_COLUMNS),
            ] {
                let stmt = conn.prepare(insert_many(table, rows)).unwrap();
                assert_eq!(stmt.parameter_count(), rows * columns);
            }
        }
    }
}
