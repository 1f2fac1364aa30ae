//! Copies of the databases an archive holds: taken online, and holding nothing that
//! is not meant to be in a backup.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::BackupError;
use crate::store::partition::PartitionId;

/// SQLite's online backup of `from` into `dst`, in one step (a read transaction:
/// writers go on meanwhile; one holding a lock at that moment is waited for, about
/// 5 s in all).
fn online_copy(from: &Path, dst: &mut Connection) -> rusqlite::Result<()> {
    use rusqlite::backup::StepResult;
    let src = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    src.busy_timeout(std::time::Duration::from_millis(50))?;
    let backup = rusqlite::backup::Backup::new(&src, dst)?;
    for _ in 0..100 {
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            _ => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        Some("the database stayed locked for 5 s".into()),
    ))
}

/// Empties every backup's key in a ledger file, and leaves no free page holding one.
pub(super) fn scrub_in_place(ledger: &Path) -> rusqlite::Result<()> {
    let conn = Connection::open(ledger)?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.execute("UPDATE backup SET wrapped_key = X''", [])?;
    conn.execute_batch("VACUUM")
}

/// A copy of the ledger for an archive, without any backup's key: a backup's key
/// lives only in the ledger that made it, so that shredding it there leaves no copy
/// that opens the archive (or an older one). Copied to `scratch` (in the run's
/// private directory), the keys emptied there, and written to `to` compacted (no free
/// page keeps a key); `scratch` is removed.
pub(super) fn scrubbed_ledger(from: &Path, scratch: &Path, to: &Path) -> rusqlite::Result<()> {
    {
        let mut conn = Connection::open(scratch)?;
        online_copy(from, &mut conn)?;
        conn.pragma_update(None, "journal_mode", "DELETE")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.execute("UPDATE backup SET wrapped_key = X''", [])?;
        conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])?;
    }
    let _ = std::fs::remove_file(scratch);
    Ok(())
}

/// Copies a partition as of its last signed head (see the parent module's notes),
/// compacted: no free page carries rows erased or trimmed.
pub(super) fn partition(from: &Path, to: &Path, p: PartitionId) -> Result<(), BackupError> {
    let err = |e: rusqlite::Error| BackupError::Partition {
        partition: p.to_string(),
        message: e.to_string(),
    };
    let mut conn = Connection::open(to).map_err(err)?;
    online_copy(from, &mut conn).map_err(err)?;
    // A single file, whatever journal mode the source was in.
    conn.pragma_update(None, "journal_mode", "DELETE")
        .map_err(err)?;
    if crate::store::schema::is_ready(&conn).map_err(err)? {
        let head = crate::store::integrity::latest_head(&conn).map_err(err)?;
        let (records, outcomes) = head
            .as_ref()
            .map_or((0, 0), |(h, _)| (h.record_through, h.outcome_through));
        trim(&conn, records, outcomes).map_err(err)?;
    }
    conn.execute_batch("VACUUM").map_err(err)
}

/// Takes out of a copy what its last signed head does not cover: records and outcome
/// events past it (an outcome block is written in one transaction with the head that
/// covers it, so none straddles a head), and the blind-index postings of the records
/// taken out, whose ids the restored store's writer gives out again.
fn trim(conn: &rusqlite::Connection, records: i64, outcomes: i64) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    let taken = tx.execute("DELETE FROM record WHERE id > ?1", [records])?;
    tx.execute("DELETE FROM outcome WHERE id > ?1", [outcomes])?;
    if crate::store::events::has_blocks(&tx)? {
        tx.execute("DELETE FROM outcome_block WHERE first > ?1", [outcomes])?;
    }
    if taken > 0 {
        for table in ["ix_account", "ix_ip", "ix_originator", "ix_recipient"] {
            // Only the lists that name a record taken out are held, not the table.
            let mut touched: Vec<(i64, i64, i64, Vec<i64>)> = Vec::new();
            {
                let mut stmt =
                    tx.prepare(&format!("SELECT bucket, tag, first, ids FROM {table}"))?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let blob: Vec<u8> = r.get(3)?;
                    let mut ids = Vec::new();
                    // A malformed list is left as it is: `verify` and queries report it.
                    if crate::store::postings::decode(&blob, &mut ids).is_err()
                        || ids.last().is_none_or(|&last| last <= records)
                    {
                        continue;
                    }
                    touched.push((r.get(0)?, r.get(1)?, r.get(2)?, ids));
                }
            }
            for (bucket, tag, first, mut ids) in touched {
                // Only ids past the head go: the row keeps its first id, or goes.
                ids.retain(|&id| id <= records);
                let key = "WHERE bucket = ?1 AND tag = ?2 AND first = ?3";
                if ids.is_empty() {
                    tx.execute(&format!("DELETE FROM {table} {key}"), (bucket, tag, first))?;
                } else {
                    let mut blob = Vec::new();
                    crate::store::postings::encode(&ids, &mut blob);
                    tx.execute(
                        &format!("UPDATE {table} SET ids = ?4 {key}"),
                        (bucket, tag, first, blob),
                    )?;
                }
            }
        }
        tx.execute(
            "UPDATE ix_state SET indexed_through = min(indexed_through, ?1)",
            [records],
        )?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postings;

    #[test]
    fn a_copy_is_trimmed_to_its_last_signed_head_postings_included() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::schema::open_for_write(
            &dir.path().join("p.sqlite"),
            "2026-12-01",
            crate::config::SyncMode::Normal,
            1,
        )
        .unwrap();
        for id in 1..=9 {
            conn.execute(
                "INSERT INTO record (id, submission, ordinal, at_us, bucket, protocol, service, \
                 recipient_form, segments, account_ix, ip_ix, recipient_ix, sealed) \
                 VALUES (?1, ?1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, x'00')",
                [id],
            )
            .unwrap();
        }
        let list = |ids: &[i64]| {
            let mut b = Vec::new();
            postings::encode(ids, &mut b);
            b
        };
        conn.execute_batch("UPDATE ix_state SET indexed_through = 9")
            .unwrap();
        for (tag, ids) in [(1, vec![1, 2, 5, 9]), (2, vec![6, 8]), (3, vec![3])] {
            conn.execute(
                "INSERT INTO ix_recipient (bucket, tag, first, ids) VALUES (0, ?1, ?2, ?3)",
                rusqlite::params![tag, ids[0], list(&ids)],
            )
            .unwrap();
        }
        trim(&conn, 5, 0).unwrap();
        let top: i64 = conn
            .query_row("SELECT max(id) FROM record", [], |r| r.get(0))
            .unwrap();
        assert_eq!(top, 5);
        let mut rows: Vec<(i64, i64, Vec<i64>)> = conn
            .prepare("SELECT tag, first, ids FROM ix_recipient ORDER BY tag")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, Vec<u8>>(2)?)))
            .unwrap()
            .map(|r| {
                let (tag, first, blob) = r.unwrap();
                let mut ids = Vec::new();
                postings::decode(&blob, &mut ids).unwrap();
                (tag, first, ids)
            })
            .collect();
        rows.sort();
        assert_eq!(rows, [(1, 1, vec![1, 2, 5]), (3, 3, vec![3])]);
        let through: i64 = conn
            .query_row("SELECT indexed_through FROM ix_state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(through, 5);
    }
}
