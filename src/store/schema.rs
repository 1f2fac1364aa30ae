//! The on-disk layout of a partition file, and how it is opened.
//!
//! ```sql
//! record(id INTEGER PRIMARY KEY,   -- record id within the partition, in commit order
//!        submission, ordinal,      -- submission id (time-ordered) and recipient position
//!        at_us, bucket,            -- receive time (µs UTC) and at_us / index-bucket
//!        protocol, service, recipient_form, segments,      -- plain, identify no one
//!        account_ix, ip_ix, originator_ix, recipient_ix,   -- blind indexes (integers)
//!        sealed)                   -- nonce | AES-256-GCM(codec payload) | tag
//! outcome(id INTEGER PRIMARY KEY, submission, at_us, outcome, upstream_status,
//!         gateway_code, message_id_sealed)   -- appended, never updated
//! ```
//!
//! Every blind index leads with the time bucket: `(bucket, x_ix)`. Inserts then touch
//! only the current bucket's pages (a plain index on a random HMAC dirties a random page
//! per row and collapses write throughput as the partition grows); a lookup seeks once
//! per bucket of its window. `outcome` is indexed by submission id, which increases.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::config::SyncMode;

pub const SCHEMA_VERSION: i64 = 1;

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
CREATE INDEX IF NOT EXISTS record_recipient ON record(bucket, recipient_ix);
CREATE INDEX IF NOT EXISTS record_account ON record(bucket, account_ix);
CREATE INDEX IF NOT EXISTS record_ip ON record(bucket, ip_ix);
CREATE INDEX IF NOT EXISTS record_originator ON record(bucket, originator_ix);
CREATE TABLE IF NOT EXISTS outcome (
    id                INTEGER PRIMARY KEY,
    submission        INTEGER NOT NULL,
    at_us             INTEGER NOT NULL,
    outcome           INTEGER NOT NULL,
    upstream_status   INTEGER,
    gateway_code      INTEGER,
    message_id_sealed BLOB
);
CREATE INDEX IF NOT EXISTS outcome_submission ON outcome(submission);
";

pub const INSERT_RECORD: &str = "INSERT INTO record (submission, ordinal, at_us, bucket, protocol, service, \
    recipient_form, segments, account_ix, ip_ix, originator_ix, recipient_ix, sealed) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

pub const INSERT_OUTCOME: &str = "INSERT INTO outcome (submission, at_us, outcome, upstream_status, \
    gateway_code, message_id_sealed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Opens (creating if needed) a partition for the writer.
pub fn open_for_write(
    path: &Path,
    partition: &str,
    sync: SyncMode,
    cache_mib: u32,
) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
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
    conn.execute_batch(DDL)?;
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?1), ('partition', ?2)",
        rusqlite::params![SCHEMA_VERSION, partition],
    )?;
    Ok(conn)
}

/// Opens an existing partition for queries. Read-write without create, so that a WAL
/// left by a killed writer is recovered rather than refused; queries never write.
pub fn open_for_read(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}
