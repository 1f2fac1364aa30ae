//! The ledger: legal holds, officers, cases and the audit log, in one SQLite file kept
//! outside the store directory (`store.ledger`), or in the PostgreSQL store's tables
//! (see [`db`]), so that what protects a partition and what records who touched it
//! never expire with it.
//!
//! The audit log is append-only and hash-chained:
//!
//! ```text
//! hash(n) = SHA-256( hash(n-1) | seq u64 | at_us i64 | actor | 0x00 | action | 0x00 | details )
//! hash(0) = SHA-256("relaylog audit v1")   -- the chain's anchor
//! ```
//!
//! `details` is JSON of ids, windows and counts, never a phone number or an address in
//! the clear.

pub mod db;

use std::path::Path;

use ring::digest;
use rusqlite::Connection;

use crate::clock::Micros;
use crate::store::partition::PartitionId;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {message}")]
    Sql { path: String, message: String },
    #[error("case `{0}` has no hold")]
    NoHold(String),
    #[error("a hold needs a case reference and a reason")]
    Incomplete,
    #[error("the hold's window is empty: --since must be before --until")]
    EmptyWindow,
    #[error("audit entry {seq} does not match the chain: the audit log was edited")]
    Broken { seq: i64 },
}

const DDL: &str = "
CREATE TABLE IF NOT EXISTS hold (
    id        INTEGER PRIMARY KEY,
    case_ref  TEXT NOT NULL,
    since_us  INTEGER NOT NULL,
    until_us  INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    placed_at INTEGER NOT NULL,
    placed_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS officer (
    name           TEXT PRIMARY KEY,
    role           TEXT NOT NULL CHECK (role IN ('officer', 'approver', 'admin')),
    password       TEXT NOT NULL,   -- argon2id, PHC string
    totp           BLOB NOT NULL,   -- TOTP seed sealed under the master key
    totp_last_step INTEGER NOT NULL DEFAULT -1,
    enabled        INTEGER NOT NULL DEFAULT 1,
    created_at     INTEGER NOT NULL,
    created_by     TEXT NOT NULL,
    failed_logins  INTEGER NOT NULL DEFAULT 0,  -- wrong passwords or codes in a row
    locked_until   INTEGER NOT NULL DEFAULT 0   -- locked out after too many, until then
);
CREATE TABLE IF NOT EXISTS cases (
    id              INTEGER PRIMARY KEY,
    country         TEXT NOT NULL,
    organisation    TEXT NOT NULL,
    request_number  TEXT NOT NULL,
    authority       TEXT NOT NULL,
    legal_basis     TEXT NOT NULL,
    order_reference TEXT NOT NULL,
    order_date      TEXT NOT NULL,
    deadline        TEXT NOT NULL,
    confidential    INTEGER NOT NULL,
    since_us        INTEGER NOT NULL,
    until_us        INTEGER NOT NULL,
    criteria        BLOB NOT NULL,   -- JSON of the identifiers, sealed under the master key
    criteria_tags   TEXT NOT NULL,   -- their kinds and audit tags
    state           TEXT NOT NULL,
    opened_by       TEXT NOT NULL,
    opened_at       INTEGER NOT NULL,
    decided_by      TEXT,
    decided_at      INTEGER,
    decision_note   TEXT,
    closed_at       INTEGER,
    UNIQUE (country, organisation, request_number)
);
CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER PRIMARY KEY,
    at_us   INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    details TEXT NOT NULL,
    hash    BLOB NOT NULL,
    case_id INTEGER   -- the details' case number, if any: a case's history, by index
);
CREATE INDEX IF NOT EXISTS audit_action ON audit (action, seq);
-- Refusals counted until their minute's one audit entry is written
-- (src/compliance/refusals.rs): bounded by peers per minute, emptied every minute.
CREATE TABLE IF NOT EXISTS refusal (
    kind     TEXT NOT NULL,
    peer     TEXT NOT NULL,
    minute   INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    written  INTEGER NOT NULL,   -- of count, already in the audit log (a listing mid-minute)
    first_at INTEGER NOT NULL,
    last_at  INTEGER NOT NULL,
    summary  TEXT NOT NULL,
    PRIMARY KEY (kind, peer, minute)
);
CREATE INDEX IF NOT EXISTS refusal_minute ON refusal (minute);
-- Traffic at a glance (src/admin/console/traffic.rs): what each counter of /metrics
-- grew by in each hour, summed over the nodes; counts only, a week of them kept.
CREATE TABLE IF NOT EXISTS traffic (
    hour     INTEGER NOT NULL,   -- hours since the epoch
    family   TEXT NOT NULL,
    listener TEXT NOT NULL,
    label    TEXT NOT NULL,
    count    INTEGER NOT NULL,
    PRIMARY KEY (hour, family, listener, label)
);
-- Deletion certificates (src/store/deletion.rs), one per partition expiry removed:
-- a JSON document and the Ed25519 signature over it; never updated or deleted.
CREATE TABLE IF NOT EXISTS deletion (
    partition   TEXT PRIMARY KEY,
    certificate TEXT NOT NULL,
    signature   BLOB NOT NULL,
    at_us       INTEGER NOT NULL
);
-- Backups (src/store/backup/): each archive's key, wrapped by the master key, until
-- expiry shreds it (wrapped_key emptied, shredded_at set). The only copy of that key:
-- the ledger inside an archive has every wrapped_key emptied.
CREATE TABLE IF NOT EXISTS backup (
    id          TEXT PRIMARY KEY,   -- 32 hex digits, the archive's header holds it
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    shred_at    INTEGER NOT NULL,
    wrapped_key BLOB NOT NULL,
    shredded_at INTEGER,
    partitions  INTEGER NOT NULL,
    oldest      TEXT,
    newest      TEXT,
    bytes       INTEGER NOT NULL,
    sha256      TEXT NOT NULL
);
-- Data subjects' requests (src/compliance/requests.rs), each with its deadline.
CREATE TABLE IF NOT EXISTS subject_request (
    id               INTEGER PRIMARY KEY,
    kind             TEXT NOT NULL,      -- recipient or email
    tag              TEXT NOT NULL,      -- the subject's audit tag
    subject          BLOB NOT NULL,      -- the identifier, sealed under the master key
    received         TEXT NOT NULL,      -- YYYY-MM-DD
    deadline         TEXT NOT NULL,      -- YYYY-MM-DD, one month on (three, extended)
    extension_reason TEXT,
    opened_by        TEXT NOT NULL,
    opened_at        INTEGER NOT NULL,
    answered_at      INTEGER,
    answered_by      TEXT
);
";

/// The ledger's schema version (`PRAGMA user_version`). 1: the officer's lockout
/// columns, which ledgers made before it lack. 2: `refusal.written` (the table holds
/// only the current minute's counts: one without the column is made again). 3:
/// `audit.case_id` and its index (filled from the entries already there). 4: the
/// `deletion`, `backup` and `subject_request` tables (made by [`DDL`]; the version keeps an older build,
/// which would expire partitions without certificates and never shred a backup's
/// key, from opening the ledger).
const SCHEMA_VERSION: i64 = 4;

/// Brings a ledger made by an older build to [`SCHEMA_VERSION`], in an IMMEDIATE
/// transaction (two processes opening the same old ledger take turns; the second finds
/// it done).
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version =
        |c: &Connection| c.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0));
    let found = version(conn)?;
    if found > SCHEMA_VERSION {
        // A newer build's ledger: this one would write entries it does not know how
        // to (the case index, say), which the newer one would take for damage.
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!(
                "the ledger is at schema version {found}, newer than this relaylog's {SCHEMA_VERSION}: run the newer relaylog"
            )),
        ));
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if version(&tx)? < 1 {
        let has_lockout: i64 = tx.query_row(
            "SELECT count(*) FROM pragma_table_info('officer') WHERE name = 'locked_until'",
            [],
            |r| r.get(0),
        )?;
        if has_lockout == 0 {
            tx.execute_batch(
                "ALTER TABLE officer ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE officer ADD COLUMN locked_until INTEGER NOT NULL DEFAULT 0;",
            )?;
        }
    }
    if version(&tx)? < 2 {
        let has_written: i64 = tx.query_row(
            "SELECT count(*) FROM pragma_table_info('refusal') WHERE name = 'written'",
            [],
            |r| r.get(0),
        )?;
        if has_written == 0 {
            tx.execute_batch("DROP TABLE IF EXISTS refusal;")?;
            tx.execute_batch(DDL)?;
        }
    }
    if version(&tx)? < 3 {
        let has_case: i64 = tx.query_row(
            "SELECT count(*) FROM pragma_table_info('audit') WHERE name = 'case_id'",
            [],
            |r| r.get(0),
        )?;
        if has_case == 0 {
            tx.execute_batch(
                "ALTER TABLE audit ADD COLUMN case_id INTEGER;
                 UPDATE audit SET case_id = json_extract(details, '$.case')
                  WHERE json_valid(details) AND json_type(details, '$.case') = 'integer';",
            )?;
        }
        // Views of a case are not history, and the one thing a busy case has many of.
        tx.execute_batch(
            "CREATE INDEX IF NOT EXISTS audit_case ON audit (case_id, seq) WHERE action <> 'case.show';",
        )?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// A legal hold: partitions overlapping `[since, until)` are kept past retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub case: String,
    pub since: Micros,
    pub until: Micros,
    pub reason: String,
    pub placed_at: Micros,
    pub placed_by: String,
}

impl Hold {
    pub fn covers(&self, p: PartitionId) -> bool {
        self.since < p.end_micros() && self.until > p.start_micros()
    }

    /// The cases whose holds among `holds` keep partition `p`.
    pub fn cases_holding(holds: &[Hold], p: PartitionId) -> Vec<String> {
        holds
            .iter()
            .filter(|h| h.covers(p))
            .map(|h| h.case.clone())
            .collect()
    }
}

/// What a counter of `/metrics` grew by in an hour (traffic at a glance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficCount {
    /// Hours since the epoch.
    pub hour: i64,
    pub family: String,
    pub listener: String,
    pub label: String,
    pub count: i64,
}

/// Entries of a case's course [`Ledger::case_history`] gives at most.
pub const MAX_CASE_HISTORY: usize = 1000;
/// Other entries naming a case (refusals, downloads) it gives at most, the newest.
pub const MAX_CASE_OTHER: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: Micros,
    pub actor: String,
    pub action: String,
    pub details: String,
}

impl AuditEntry {
    /// An entry from a row of `seq, at_us, actor, action, details` (in that order).
    fn of_row(r: &db::Row) -> db::DbResult<AuditEntry> {
        Ok(AuditEntry {
            seq: r.int(0)?,
            at: r.int(1)?,
            actor: r.text(2)?,
            action: r.text(3)?,
            details: r.text(4)?,
        })
    }
}

pub struct Ledger {
    /// Interior: reads take `&self`, and a PostgreSQL client needs `&mut`.
    pub(crate) db: std::cell::RefCell<db::Db>,
    /// What errors name: the file, or "the database".
    pub(crate) path: String,
}

pub(crate) fn sql_err(path: &str) -> impl Fn(db::DbError) -> LedgerError + Copy + '_ {
    move |e| LedgerError::Sql {
        path: path.to_owned(),
        message: e.0,
    }
}

fn anchor() -> Vec<u8> {
    digest::digest(&digest::SHA256, b"relaylog audit v1")
        .as_ref()
        .to_vec()
}

fn chain(prev: &[u8], e: &AuditEntry) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev);
    ctx.update(&(e.seq as u64).to_be_bytes());
    ctx.update(&e.at.to_be_bytes());
    ctx.update(e.actor.as_bytes());
    ctx.update(&[0]);
    ctx.update(e.action.as_bytes());
    ctx.update(&[0]);
    ctx.update(e.details.as_bytes());
    ctx.finish().as_ref().to_vec()
}

impl Ledger {
    /// The ledger of the store `cfg` describes: the file `store.ledger`, or the
    /// tables of the PostgreSQL store (made by `relaylog init`).
    pub fn open_store(cfg: &crate::config::StoreConfig) -> Result<Ledger, LedgerError> {
        match &cfg.backend {
            crate::config::Backend::Sqlite => Ledger::open(&cfg.ledger),
            crate::config::Backend::Postgres(pg) => {
                let path = "the store's database".to_owned();
                let err = sql_err(&path);
                let pool = crate::pg::Pool::shared(pg).map_err(|e| err(e.into()))?;
                let db = db::Db::postgres(&pool).map_err(err)?;
                Ok(Ledger {
                    db: std::cell::RefCell::new(db),
                    path,
                })
            }
        }
    }

    /// The ledger in the SQLite file `path`, made or brought up to date.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let name = path.display().to_string();
        let err = |e: rusqlite::Error| LedgerError::Sql {
            path: name.clone(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| LedgerError::Sql {
                path: name.clone(),
                message: e.to_string(),
            })?;
        }
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // Freed space is overwritten with zeros: a shredded backup key, a disabled
        // officer's secrets, do not linger in free pages.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(err)?;
        // And the write-ahead log is cut back to nothing after each checkpoint, so
        // that old frames (a backup's key before it was shredded) do not outlive it.
        conn.pragma_update(None, "journal_size_limit", 0)
            .map_err(err)?;
        conn.execute_batch(DDL).map_err(err)?;
        migrate(&mut conn).map_err(err)?;
        Ok(Ledger {
            db: std::cell::RefCell::new(db::Db::Sqlite(conn)),
            path: name,
        })
    }

    fn err(&self) -> impl Fn(db::DbError) -> LedgerError + '_ {
        sql_err(&self.path)
    }

    /// The connection, for one operation.
    pub(crate) fn db(&self) -> std::cell::RefMut<'_, db::Db> {
        self.db.borrow_mut()
    }

    /// Appends an audit entry inside the caller's transaction (see [`db::Db::begin`]:
    /// on PostgreSQL its lock keeps two nodes from taking the same place in the chain).
    pub(crate) fn append(
        db: &mut db::Db,
        at: Micros,
        actor: &str,
        action: &str,
        details: &serde_json::Value,
    ) -> db::DbResult<i64> {
        let last = db.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])?;
        let (seq, prev) = match last {
            Some(r) => (r.int(0)? + 1, r.blob(1)?),
            None => (1, anchor()),
        };
        let entry = AuditEntry {
            seq,
            at,
            actor: actor.to_owned(),
            action: action.to_owned(),
            details: details.to_string(),
        };
        let hash = chain(&prev, &entry);
        // Outside the chain's hash: an index, which the details it is read from prove.
        let case_id = details.get("case").and_then(serde_json::Value::as_i64);
        db.execute(
            "INSERT INTO audit (seq, at_us, actor, action, details, hash, case_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            &[&seq, &at, &entry.actor, &entry.action, &entry.details, &hash, &case_id],
        )?;
        Ok(seq)
    }

    /// Appends one audit entry.
    pub fn audit(
        &mut self,
        at: Micros,
        actor: &str,
        action: &str,
        details: serde_json::Value,
    ) -> Result<i64, LedgerError> {
        // Refusals of minutes now over go in first, ahead of this entry. Not this
        // entry's business: if they cannot go in now, the next write or serve's minute
        // timer writes them.
        if let Err(e) = self.flush_refusals(at, false) {
            tracing::warn!(error = %e, "refusals not yet written to the audit log");
        }
        let err = sql_err(&self.path);
        let mut db = self.db();
        let mut tx = db.begin().map_err(err)?;
        let seq = Self::append(&mut tx, at, actor, action, &details).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(seq)
    }

    /// Places a hold, audited in the same transaction.
    pub fn add_hold(&mut self, hold: &Hold) -> Result<(), LedgerError> {
        if hold.case.trim().is_empty() || hold.reason.trim().is_empty() {
            return Err(LedgerError::Incomplete);
        }
        if hold.until <= hold.since {
            return Err(LedgerError::EmptyWindow);
        }
        let err = sql_err(&self.path);
        let mut db = self.db();
        let mut tx = db.begin().map_err(err)?;
        tx.execute(
            "INSERT INTO hold (case_ref, since_us, until_us, reason, placed_at, placed_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            &[&hold.case, &hold.since, &hold.until, &hold.reason, &hold.placed_at, &hold.placed_by],
        )
        .map_err(err)?;
        let details = serde_json::json!({"case": hold.case, "since_us": hold.since, "until_us": hold.until, "reason": hold.reason});
        Self::append(
            &mut tx,
            hold.placed_at,
            &hold.placed_by,
            "hold.add",
            &details,
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Releases every hold of a case, audited. Returns how many were released.
    pub fn release(&mut self, case: &str, at: Micros, actor: &str) -> Result<usize, LedgerError> {
        let err = sql_err(&self.path);
        let mut db = self.db();
        let mut tx = db.begin().map_err(err)?;
        let n = tx
            .execute("DELETE FROM hold WHERE case_ref = ?1", &[&case])
            .map_err(err)?;
        if n == 0 {
            return Err(LedgerError::NoHold(case.to_owned()));
        }
        Self::append(
            &mut tx,
            at,
            actor,
            "hold.release",
            &serde_json::json!({"case": case, "holds": n}),
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(n as usize)
    }

    pub fn holds(&self) -> Result<Vec<Hold>, LedgerError> {
        let rows = self
            .db()
            .query("SELECT case_ref, since_us, until_us, reason, placed_at, placed_by FROM hold ORDER BY id", &[])
            .map_err(self.err())?;
        rows.iter()
            .map(|r| {
                Ok(Hold {
                    case: r.text(0)?,
                    since: r.int(1)?,
                    until: r.int(2)?,
                    reason: r.text(3)?,
                    placed_at: r.int(4)?,
                    placed_by: r.text(5)?,
                })
            })
            .collect::<db::DbResult<Vec<_>>>()
            .map_err(self.err())
    }

    /// Up to `limit` entries after sequence number `after`, oldest first.
    pub fn entries_page(&self, after: i64, limit: usize) -> Result<Vec<AuditEntry>, LedgerError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .db()
            .query("SELECT seq, at_us, actor, action, details FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2", &[&after, &limit])
            .map_err(self.err())?;
        rows.iter()
            .map(AuditEntry::of_row)
            .collect::<db::DbResult<Vec<_>>>()
            .map_err(self.err())
    }

    /// A case's history, oldest first: the newest [`MAX_CASE_HISTORY`] entries of
    /// its course (opened, decided, disclosed, closed) and the newest
    /// [`MAX_CASE_OTHER`] of the rest that name it (refusals, downloads), views of it
    /// left out; and whether older entries were left out. Found by the audit log's
    /// index by case.
    pub fn case_history(&self, id: i64) -> Result<(Vec<AuditEntry>, bool), LedgerError> {
        let read = |course: &str, limit: usize| -> Result<(Vec<AuditEntry>, bool), LedgerError> {
            let sql = format!(
                "SELECT seq, at_us, actor, action, details FROM audit \
                 WHERE case_id = ?1 AND action <> 'case.show' AND action {course} \
                 ('case.open', 'case.approve', 'case.reject', 'case.disclose', 'case.close') \
                 ORDER BY seq DESC LIMIT ?2"
            );
            let rows = self
                .db()
                .query(&sql, &[&id, &(limit as i64 + 1)])
                .map_err(self.err())?;
            let mut got = rows
                .iter()
                .map(AuditEntry::of_row)
                .collect::<db::DbResult<Vec<_>>>()
                .map_err(self.err())?;
            let cut = got.len() > limit;
            got.truncate(limit);
            Ok((got, cut))
        };
        let (mut all, course_cut) = read("IN", MAX_CASE_HISTORY)?;
        let (rest, rest_cut) = read("NOT IN", MAX_CASE_OTHER)?;
        all.extend(rest);
        all.sort_by_key(|e| e.seq);
        Ok((all, course_cut || rest_cut))
    }

    /// Adds counts to their hours (traffic at a glance; every node adds into the
    /// same rows) and forgets the hours before `keep_from`. One transaction, which
    /// does not wait for the audit log's writers; `counts` come sorted, so that two
    /// nodes adding at once take the rows in the same order.
    pub fn add_traffic(
        &mut self,
        counts: &[TrafficCount],
        keep_from: i64,
    ) -> Result<(), LedgerError> {
        let err = sql_err(&self.path);
        let mut db = self.db();
        let mut tx = db.begin_unserialised().map_err(&err)?;
        for c in counts {
            tx.execute(
                "INSERT INTO traffic (hour, family, listener, label, count) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (hour, family, listener, label) DO UPDATE SET count = traffic.count + excluded.count",
                &[&c.hour, &c.family, &c.listener, &c.label, &c.count],
            )
            .map_err(&err)?;
        }
        tx.execute("DELETE FROM traffic WHERE hour < ?1", &[&keep_from])
            .map_err(&err)?;
        tx.commit().map_err(&err)
    }

    /// The traffic counts of the hours from `from` on.
    pub fn traffic_since(&self, from: i64) -> Result<Vec<TrafficCount>, LedgerError> {
        let rows = self
            .db()
            .query(
                "SELECT hour, family, listener, label, count FROM traffic WHERE hour >= ?1",
                &[&from],
            )
            .map_err(self.err())?;
        rows.iter()
            .map(|r| {
                Ok(TrafficCount {
                    hour: r.int(0)?,
                    family: r.text(1)?,
                    listener: r.text(2)?,
                    label: r.text(3)?,
                    count: r.int(4)?,
                })
            })
            .collect::<db::DbResult<Vec<_>>>()
            .map_err(self.err())
    }

    /// The newest entry's number (0 for an empty log).
    pub fn last_seq(&self) -> Result<i64, LedgerError> {
        self.db()
            .query_one("SELECT coalesce(max(seq), 0) FROM audit", &[])
            .and_then(|r| r.int(0))
            .map_err(self.err())
    }

    pub fn entries(&self) -> Result<Vec<AuditEntry>, LedgerError> {
        self.entries_page(0, i64::MAX as usize)
    }

    /// Recomputes the chain; the number of entries when it holds. Read a page at a
    /// time: the log grows without end.
    pub fn verify_audit(&self) -> Result<usize, LedgerError> {
        const PAGE: i64 = 10_000;
        let mut prev = anchor();
        let mut expected_seq = 1;
        loop {
            let rows = self
                .db()
                .query(
                    "SELECT seq, at_us, actor, action, details, hash, case_id FROM audit WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
                    &[&expected_seq, &PAGE],
                )
                .map_err(self.err())?;
            let n = rows.len() as i64;
            for r in rows {
                let (e, stored, case_id) = (|| -> db::DbResult<_> {
                    Ok((AuditEntry::of_row(&r)?, r.blob(5)?, r.opt_int(6)?))
                })()
                .map_err(self.err())?;
                // The case index is outside the hash: it must say what the details say,
                // or a case's history could be made to miss an entry.
                let names = serde_json::from_str::<serde_json::Value>(&e.details)
                    .ok()
                    .and_then(|d| d.get("case").and_then(serde_json::Value::as_i64));
                if e.seq != expected_seq || chain(&prev, &e) != stored || names != case_id {
                    return Err(LedgerError::Broken { seq: e.seq });
                }
                prev = stored;
                expected_seq += 1;
            }
            if n < PAGE {
                break;
            }
        }
        // An entry below the first one read (seq 0 or less) is no entry of the chain.
        let stray = self
            .db()
            .query_opt("SELECT seq FROM audit WHERE seq < 1 LIMIT 1", &[])
            .map_err(self.err())?;
        if let Some(r) = stray {
            return Err(LedgerError::Broken {
                seq: r.int(0).map_err(self.err())?,
            });
        }
        Ok((expected_seq - 1) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(case: &str, since: Micros, until: Micros) -> Hold {
        Hold {
            case: case.into(),
            since,
            until,
            reason: "order 2026/17".into(),
            placed_at: 1,
            placed_by: "officer".into(),
        }
    }

    #[test]
    fn holds_are_added_released_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
        l.add_hold(&hold("NL-1", 0, 100)).unwrap();
        l.add_hold(&hold("NL-2", 50, 200)).unwrap();
        assert_eq!(l.holds().unwrap().len(), 2);
        assert!(matches!(
            l.add_hold(&hold("NL-3", 10, 10)),
            Err(LedgerError::EmptyWindow)
        ));
        assert_eq!(l.release("NL-1", 5, "officer").unwrap(), 1);
        assert!(matches!(
            l.release("NL-1", 6, "officer"),
            Err(LedgerError::NoHold(_))
        ));
        let actions: Vec<_> = l.entries().unwrap().into_iter().map(|e| e.action).collect();
        assert_eq!(actions, ["hold.add", "hold.add", "hold.release"]);
        assert_eq!(l.verify_audit().unwrap(), 3);
    }

    #[test]
    fn editing_the_audit_log_breaks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let mut l = Ledger::open(&path).unwrap();
        for i in 0..3 {
            l.audit(i, "x", "expire", serde_json::json!({"removed": i}))
                .unwrap();
        }
        l.db()
            .execute(
                "UPDATE audit SET details = '{\"removed\":9}' WHERE seq = 2",
                &[],
            )
            .unwrap();
        assert!(matches!(
            l.verify_audit(),
            Err(LedgerError::Broken { seq: 2 })
        ));
        let mut l = Ledger::open(&dir.path().join("other.sqlite")).unwrap();
        l.audit(1, "x", "a", serde_json::json!({})).unwrap();
        l.audit(2, "x", "b", serde_json::json!({})).unwrap();
        l.db()
            .execute("DELETE FROM audit WHERE seq = 1", &[])
            .unwrap();
        assert!(matches!(l.verify_audit(), Err(LedgerError::Broken { .. })));
    }

    /// A ledger made before the lockout columns gets them on open, its officers kept;
    /// a second open finds nothing to do.
    #[test]
    fn an_older_ledger_is_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE officer (name TEXT PRIMARY KEY, role TEXT NOT NULL, password TEXT NOT NULL,
                 totp BLOB NOT NULL, totp_last_step INTEGER NOT NULL DEFAULT -1,
                 enabled INTEGER NOT NULL DEFAULT 1, created_at INTEGER NOT NULL, created_by TEXT NOT NULL);
             INSERT INTO officer (name, role, password, totp, created_at, created_by)
                 VALUES ('anna', 'officer', 'x', x'00', 1, 'root');",
        )
        .unwrap();
        drop(old);
        // And a refusal table made before its `written` column (one build had it).
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE refusal (kind TEXT NOT NULL, peer TEXT NOT NULL, minute INTEGER NOT NULL,
                 count INTEGER NOT NULL, first_at INTEGER NOT NULL, last_at INTEGER NOT NULL,
                 summary TEXT NOT NULL, PRIMARY KEY (kind, peer, minute));",
        )
        .unwrap();
        drop(old);
        for _ in 0..2 {
            let mut l = Ledger::open(&path).unwrap();
            assert_eq!(
                l.count_refusal(60_000_000, "auth.failure", "192.0.2.1", "anna", "x", "y")
                    .unwrap(),
                1
            );
            l.db().execute("DELETE FROM refusal", &[]).unwrap();
            let row = l
                .db()
                .query_one(
                    "SELECT failed_logins, locked_until, (SELECT user_version FROM pragma_user_version) FROM officer WHERE name = 'anna'",
                    &[],
                )
                .unwrap();
            let (failed, locked, version) = (
                row.int(0).unwrap(),
                row.int(1).unwrap(),
                row.int(2).unwrap(),
            );
            assert_eq!((failed, locked, version), (0, 0, SCHEMA_VERSION));
        }
    }

    /// A case's history comes by the audit log's case index: the case's course
    /// whatever else names it, the newest of the rest, no views, no other case; an
    /// index that does not say what the details say is damage.
    #[test]
    fn a_case_history_is_its_course_and_the_newest_of_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
        l.audit(1, "anna", "case.open", serde_json::json!({"case": 7}))
            .unwrap();
        l.audit(2, "anna", "case.open", serde_json::json!({"case": 70}))
            .unwrap();
        for i in 0..(MAX_CASE_OTHER as i64 + 5) {
            l.audit(
                3 + i,
                "anna",
                "case.show",
                serde_json::json!({"case": 7, "found": true}),
            )
            .unwrap();
            l.audit(
                3 + i,
                "bert",
                "case.approve.refused",
                serde_json::json!({"case": 7, "n": i}),
            )
            .unwrap();
        }
        l.audit(900, "bert", "case.approve", serde_json::json!({"case": 7}))
            .unwrap();
        l.audit(901, "anna", "hold.add", serde_json::json!({"case": "7"}))
            .unwrap();
        let (h, cut) = l.case_history(7).unwrap();
        assert!(cut);
        assert_eq!(h.first().unwrap().action, "case.open");
        assert_eq!(h.last().unwrap().action, "case.approve");
        assert_eq!(h.len(), 2 + MAX_CASE_OTHER);
        assert!(h.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
        assert!(
            h.iter()
                .all(|e| e.action != "case.show" && e.details.contains("\"case\":7"))
        );
        // The refusals kept are the newest.
        assert!(h[1].details.contains("\"n\":5"), "{}", h[1].details);
        l.verify_audit().unwrap();
        l.db()
            .execute(
                "UPDATE audit SET case_id = 8 WHERE action = 'case.approve'",
                &[],
            )
            .unwrap();
        assert!(matches!(l.verify_audit(), Err(LedgerError::Broken { .. })));
    }

    /// A ledger from before the case index gets it on open, filled from its entries.
    #[test]
    fn the_case_index_is_filled_for_entries_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE audit (seq INTEGER PRIMARY KEY, at_us INTEGER NOT NULL, actor TEXT NOT NULL,
                 action TEXT NOT NULL, details TEXT NOT NULL, hash BLOB NOT NULL);
             PRAGMA user_version = 2;",
        )
        .unwrap();
        drop(old);
        // Entries written as the old build wrote them: no case index.
        let conn = Connection::open(&path).unwrap();
        let mut prev = anchor();
        for (seq, details) in [(1, r#"{"case":3}"#), (2, r#"{"case":"3"}"#), (3, "{}")] {
            let e = AuditEntry {
                seq,
                at: seq,
                actor: "anna".into(),
                action: "case.open".into(),
                details: details.into(),
            };
            let hash = chain(&prev, &e);
            conn.execute(
                "INSERT INTO audit (seq, at_us, actor, action, details, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![e.seq, e.at, e.actor, e.action, e.details, hash],
            )
            .unwrap();
            prev = hash;
        }
        drop(conn);
        let l = Ledger::open(&path).unwrap();
        l.verify_audit().unwrap();
        let (h, _) = l.case_history(3).unwrap();
        assert_eq!(h.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
    }

    /// A ledger a newer build has brought up is refused, not written to.
    #[test]
    fn a_ledger_of_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        drop(Ledger::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let e = Ledger::open(&path).err().expect("refused");
        assert!(e.to_string().contains("newer than this relaylog"), "{e}");
    }
}
