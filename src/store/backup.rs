//! Backups that expire. `relaylog backup create` writes one archive of the partitions,
//! the ledger and the wrapped keyring, sealed under a key of its own; that key is kept
//! in the ledger wrapped by the master key, and expiry shreds it `backup.retention`
//! after the backup was made, after which every copy of the archive is unreadable.
//!
//! Archive layout (all integers big-endian):
//!
//! ```text
//! header : "RLBACKUP" | format u8 (1) | backup id [16] | created_us i64
//! frame  : last u8 (0|1) | length u32 | AES-256-GCM(backup key, chunk) + tag
//!          nonce = 0u32 | frame number u64;  AAD = header | frame number u64 | last
//! chunks : at most 1 MiB each; the last frame (last = 1) ends the archive, so that a
//!          truncated archive, frames swapped or dropped, or bytes after it are refused
//! ```
//!
//! The chunks, joined, are a sequence of entries:
//!
//! ```text
//! entry  : kind u8 | name length u16 | name | size u64 | bytes
//! kinds  : 'p' a partition file ("2026-11-05"), 'k' its wrapped keys (the key file's
//!          bytes, as wrapped by the master key), 'l' the ledger, 'e' the end
//! ```
//!
//! Each partition and the ledger are copied with SQLite's online backup API, so that
//! `serve` keeps writing meanwhile. A partition is copied as of its last signed head:
//! rows a running writer had not signed yet are left out of the copy (they are in the
//! next backup), so that every restored partition verifies. Filters are not copied
//! (compaction rebuilds them).
//!
//! A restore decrypts into a directory beside the target, checks every partition's
//! signed heads there, and only then moves it into place; partitions past retention
//! by then are left out with their keys, each under a deletion certificate in the
//! restored ledger (see [`super::deletion`]).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;

use super::deletion::{self, Signer};
use super::expiry::past_retention;
use super::keys::{MasterKey, hex};
use super::partition::{self, PartitionId};
use crate::clock::Micros;
use crate::config::{Backend, Retention, StoreConfig};
use crate::export::rfc3339;
use crate::ledger::{Ledger, LedgerError, sql_err};

const MAGIC: &[u8; 8] = b"RLBACKUP";
const FORMAT: u8 = 1;
const HEADER_LEN: usize = 8 + 1 + 16 + 8;
/// The largest chunk sealed in one frame.
const CHUNK: usize = 1 << 20;
const TAG_LEN: usize = 16;
/// Longest entry name (partition names are 7 or 10 bytes).
const MAX_NAME: usize = 64;
/// A key file is 101 bytes; anything much larger in a key entry is refused.
const MAX_KEY_ENTRY: u64 = 4096;
/// What binds a backup's key to its backup, when the master key wraps it.
const KEY_CONTEXT: &[u8] = b"relaylog backup key v1";

const KIND_PARTITION: u8 = b'p';
const KIND_KEYS: u8 = b'k';
const KIND_LEDGER: u8 = b'l';
const KIND_END: u8 = b'e';

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "backups are of SQLite stores: on PostgreSQL back up the database (pg_basebackup, or pg_dump of the relaylog schemas) and keep its backups no longer than backup.retention"
    )]
    Postgres,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} exists: a backup never overwrites a file, and a restore only fills a new or empty directory"
    )]
    Exists(PathBuf),
    #[error("partition {partition}: {message}")]
    Partition { partition: String, message: String },
    #[error("the ledger's copy: {0}")]
    LedgerCopy(String),
    #[error("not a relaylog backup: {0}")]
    NotABackup(String),
    #[error(
        "backup {0} is not in this installation's ledger: it is another installation's, or its record is gone"
    )]
    Unknown(String),
    #[error("backup {id} was shredded on {at}: its key is gone, and no copy of it can be read")]
    Shredded { id: String, at: String },
    #[error("backup {0}: its key does not unwrap with this master key")]
    Key(String),
    #[error("the archive is damaged or was changed: {0}")]
    Damaged(String),
    #[error("restored partitions do not verify; nothing was restored:\n{0}")]
    Verify(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Keys(#[from] super::keys::KeyError),
    #[error(transparent)]
    Signing(#[from] super::integrity::SigningKeyError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A backup as the ledger records it (never its key).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BackupRecord {
    pub id: String,
    pub created_at: String,
    pub created_by: String,
    /// When expiry shreds its key (by the retention when it was made; a shorter
    /// `backup.retention` set since brings it forward).
    pub shred_at: String,
    pub shredded_at: Option<String>,
    /// `None` while it is being written, or if that was cut short.
    pub partitions: Option<i64>,
    pub oldest: Option<String>,
    pub newest: Option<String>,
    pub bytes: Option<i64>,
    pub sha256: Option<String>,
}

impl BackupRecord {
    /// Whether the archive can still be read (its key is not shredded).
    pub fn readable(&self) -> bool {
        self.shredded_at.is_none()
    }
}

const BACKUP_COLUMNS: &str =
    "id, created_at, created_by, shred_at, shredded_at, partitions, oldest, newest, bytes, sha256";

fn backup_of_row(r: &crate::ledger::db::Row) -> crate::ledger::db::DbResult<BackupRecord> {
    Ok(BackupRecord {
        id: r.text(0)?,
        created_at: rfc3339(r.int(1)?),
        created_by: r.text(2)?,
        shred_at: rfc3339(r.int(3)?),
        shredded_at: r.opt_int(4)?.map(rfc3339),
        partitions: r.opt_int(5)?,
        oldest: r.opt_text(6)?,
        newest: r.opt_text(7)?,
        bytes: r.opt_int(8)?,
        sha256: r.opt_text(9)?,
    })
}

struct WrappedKey {
    wrapped: Vec<u8>,
    shredded_at: Option<Micros>,
}

impl Ledger {
    /// Every backup made, oldest first.
    pub fn backups(&self) -> Result<Vec<BackupRecord>, LedgerError> {
        let err = sql_err(&self.path);
        self.db()
            .query(
                &format!("SELECT {BACKUP_COLUMNS} FROM backup ORDER BY created_at, id"),
                &[],
            )
            .map_err(err)?
            .iter()
            .map(backup_of_row)
            .collect::<crate::ledger::db::DbResult<Vec<_>>>()
            .map_err(err)
    }

    /// A backup's wrapped key and when it was shredded (then the key is empty).
    fn backup_key(&self, id: &str) -> Result<Option<WrappedKey>, LedgerError> {
        let err = sql_err(&self.path);
        let row = self
            .db()
            .query_opt(
                "SELECT wrapped_key, shredded_at FROM backup WHERE id = ?1",
                &[&id],
            )
            .map_err(err)?;
        row.map(|r| {
            Ok(WrappedKey {
                wrapped: r.blob(0)?,
                shredded_at: r.opt_int(1)?,
            })
        })
        .transpose()
        .map_err(err)
    }

    /// Shreds the keys of every backup due by `now` (made `retention` ago or more, or
    /// past the shred date it was made with); each audited. Returns their ids.
    pub fn shred_backups(
        &mut self,
        retention: Retention,
        now: DateTime<Utc>,
        actor: &str,
    ) -> Result<Vec<String>, LedgerError> {
        let err = sql_err(&self.path);
        let cutoff = retention.cutoff(now).timestamp_micros();
        let now_us = now.timestamp_micros();
        let due: Vec<(String, i64)> = self
            .db()
            .query(
                "SELECT id, created_at FROM backup WHERE shredded_at IS NULL \
                 AND (shred_at <= ?1 OR created_at <= ?2) ORDER BY created_at",
                &[&now_us, &cutoff],
            )
            .map_err(err)?
            .iter()
            .map(|r| Ok((r.text(0)?, r.int(1)?)))
            .collect::<crate::ledger::db::DbResult<Vec<_>>>()
            .map_err(err)?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        {
            let mut db = self.db();
            // Freed space is overwritten with zeros, so that the wrapped key does not
            // linger in the file's free pages.
            if let crate::ledger::db::Db::Sqlite(c) = &*db {
                c.pragma_update(None, "secure_delete", "ON")
                    .map_err(|e| err(e.into()))?;
            }
            for (id, created) in &due {
                let mut tx = db.begin().map_err(err)?;
                tx.execute(
                    "UPDATE backup SET wrapped_key = zeroblob(length(wrapped_key)) WHERE id = ?1",
                    &[id],
                )
                .map_err(err)?;
                tx.execute(
                    "UPDATE backup SET wrapped_key = X'', shredded_at = ?2 WHERE id = ?1",
                    &[id, &now_us],
                )
                .map_err(err)?;
                Ledger::append(
                    &mut tx,
                    now_us,
                    actor,
                    "backup.shred",
                    &serde_json::json!({"backup": id, "created": rfc3339(*created)}),
                )
                .map_err(err)?;
                tx.commit().map_err(err)?;
            }
            // And out of the write-ahead log, whose frames held the key when it was
            // written: a checkpoint that empties it (best effort: a reader in the
            // middle of a transaction keeps it until the next).
            if let crate::ledger::db::Db::Sqlite(c) = &*db
                && let Err(e) = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            {
                tracing::warn!(error = %e, "the ledger's write-ahead log could not be emptied after a backup's key was shredded; the next checkpoint does");
            }
        }
        Ok(due.into_iter().map(|(id, _)| id).collect())
    }
}

/// What `backup create` made.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    pub partitions: usize,
    pub bytes: u64,
    pub sha256: String,
    pub shred_at: DateTime<Utc>,
}

/// Writes a sealed archive of the store to `out` (a new file).
pub fn create(
    cfg: &StoreConfig,
    retention: Retention,
    ledger: &mut Ledger,
    master: &MasterKey,
    out: &Path,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Created, BackupError> {
    if matches!(cfg.backend, Backend::Postgres(_)) {
        return Err(BackupError::Postgres);
    }
    if out.exists() {
        return Err(BackupError::Exists(out.to_owned()));
    }
    let rng = SystemRandom::new();
    let mut id = [0u8; 16];
    let mut key = [0u8; 32];
    rng.fill(&mut id)
        .and_then(|()| rng.fill(&mut key))
        .map_err(|_| BackupError::Damaged("no randomness".into()))?;
    let id_hex = hex(&id);
    let wrapped = master.seal_secret(&key_context(&id_hex), &key)?;
    let created_us = now.timestamp_micros();
    let shred_at = retention.expires(now);
    {
        let err = sql_err(&ledger.path);
        ledger
            .db()
            .execute(
                "INSERT INTO backup (id, created_at, created_by, shred_at, wrapped_key) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[&id_hex, &created_us, &actor, &shred_at.timestamp_micros(), &wrapped],
            )
            .map_err(err)?;
    }

    let partial = with_suffix(out, ".partial");
    let work = with_suffix(out, ".partial.d");
    let result = write_archive(cfg, &id, &key, created_us, &partial, &work);
    let _ = std::fs::remove_dir_all(&work);
    let (partitions, oldest, newest) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let (bytes, sha256) = digest_file(&partial)?;
    std::fs::hard_link(&partial, out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => BackupError::Exists(out.to_owned()),
        _ => io(out)(e),
    })?;
    std::fs::remove_file(&partial).map_err(io(&partial))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    let err = sql_err(&ledger.path);
    {
        let mut db = ledger.db();
        let mut tx = db.begin().map_err(err)?;
        let n = partitions as i64;
        let size = bytes as i64;
        tx.execute(
            "UPDATE backup SET partitions = ?2, oldest = ?3, newest = ?4, bytes = ?5, sha256 = ?6 WHERE id = ?1",
            &[&id_hex, &n, &oldest, &newest, &size, &sha256],
        )
        .map_err(err)?;
        Ledger::append(
            &mut tx,
            created_us,
            actor,
            "backup.create",
            &serde_json::json!({
                "backup": id_hex,
                "partitions": partitions,
                "oldest": oldest,
                "newest": newest,
                "bytes": bytes,
                "sha256": sha256,
                "shred_at": rfc3339(shred_at.timestamp_micros()),
            }),
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(Created {
        id: id_hex,
        partitions,
        bytes,
        sha256,
        shred_at,
    })
}

fn key_context(id_hex: &str) -> Vec<u8> {
    let mut c = KEY_CONTEXT.to_vec();
    c.push(0);
    c.extend_from_slice(id_hex.as_bytes());
    c
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

fn digest_file(path: &Path) -> Result<(u64, String), BackupError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let read = f.read(&mut buf).map_err(io(path))?;
        if read == 0 {
            break;
        }
        ctx.update(&buf[..read]);
        n += read as u64;
    }
    Ok((n, hex(ctx.finish().as_ref())))
}

/// Writes the archive to `partial`, copying each database through `work` first.
/// Returns the partitions written, the oldest and the newest.
fn write_archive(
    cfg: &StoreConfig,
    id: &[u8; 16],
    key: &[u8; 32],
    created_us: Micros,
    partial: &Path,
    work: &Path,
) -> Result<(usize, Option<String>, Option<String>), BackupError> {
    super::keys::create_private_dir(work).map_err(io(work))?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(partial)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => BackupError::Exists(partial.to_owned()),
            _ => io(partial)(e),
        })?;
    let mut sealed = SealedWriter::new(BufWriter::new(file), id, key, created_us);
    let w = |e: std::io::Error| io(partial)(e);
    let mut written = Vec::new();
    let partitions = partition::list(&cfg.path).map_err(io(&cfg.path))?;
    for p in partitions {
        let key_file = cfg.keyring.join(format!("{p}.key"));
        let keys = match std::fs::read(&key_file) {
            Ok(k) => k,
            // Shredded: expiry is removing it; nothing of it could be read anyway.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&key_file)(e)),
        };
        let copy = work.join(p.file_name());
        copy_partition(&p.path_in(&cfg.path), &copy, p)?;
        entry_from_file(&mut sealed, KIND_PARTITION, &p.to_string(), &copy).map_err(w)?;
        std::fs::remove_file(&copy).map_err(io(&copy))?;
        entry(&mut sealed, KIND_KEYS, &p.to_string(), &keys).map_err(w)?;
        written.push(p);
    }
    let ledger_copy = work.join("ledger.sqlite");
    copy_database(&cfg.ledger, &ledger_copy).map_err(BackupError::LedgerCopy)?;
    entry_from_file(&mut sealed, KIND_LEDGER, "ledger", &ledger_copy).map_err(w)?;
    entry(&mut sealed, KIND_END, "", &[]).map_err(w)?;
    let file = sealed.finish().map_err(w)?;
    let file = file.into_inner().map_err(|e| w(e.into_error()))?;
    file.sync_all().map_err(w)?;
    Ok((
        written.len(),
        written.first().map(|p| p.to_string()),
        written.last().map(|p| p.to_string()),
    ))
}

/// SQLite's online backup of `from` into the new file `to`, in one step (a read
/// transaction: writers go on meanwhile).
fn copy_database(from: &Path, to: &Path) -> Result<(), String> {
    let src =
        rusqlite::Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
    src.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let mut dst = rusqlite::Connection::open(to).map_err(|e| e.to_string())?;
    {
        use rusqlite::backup::StepResult;
        let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| e.to_string())?;
        // All pages in one step; a writer holding a lock at that moment is waited
        // for, a few seconds at most.
        let mut tries = 0;
        loop {
            match backup.step(-1).map_err(|e| e.to_string())? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                _ => return Err("the database stayed locked for 5 s".into()),
            }
        }
    }
    // A single file, whatever journal mode the source was in.
    dst.pragma_update(None, "journal_mode", "DELETE")
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Copies a partition as of its last signed head (see the module's notes).
fn copy_partition(from: &Path, to: &Path, p: PartitionId) -> Result<(), BackupError> {
    let err = |message: String| BackupError::Partition {
        partition: p.to_string(),
        message,
    };
    copy_database(from, to).map_err(err)?;
    let conn = rusqlite::Connection::open(to).map_err(|e| err(e.to_string()))?;
    if !super::schema::is_ready(&conn).map_err(|e| err(e.to_string()))? {
        return Ok(());
    }
    let head = super::integrity::latest_head(&conn).map_err(|e| err(e.to_string()))?;
    let (records, outcomes) = head
        .as_ref()
        .map_or((0, 0), |(h, _)| (h.record_through, h.outcome_through));
    trim(&conn, records, outcomes).map_err(|e| err(e.to_string()))
}

/// Takes out of a copy what its last signed head does not cover: records and outcome
/// events past it (an outcome block is written in one transaction with the head that
/// covers it, so none straddles a head), and the blind-index postings of the records
/// taken out, whose ids the restored store's writer gives out again.
fn trim(conn: &rusqlite::Connection, records: i64, outcomes: i64) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    let taken = tx.execute("DELETE FROM record WHERE id > ?1", [records])?;
    tx.execute("DELETE FROM outcome WHERE id > ?1", [outcomes])?;
    if super::events::has_blocks(&tx)? {
        tx.execute("DELETE FROM outcome_block WHERE first > ?1", [outcomes])?;
    }
    if taken > 0 {
        for table in ["ix_account", "ix_ip", "ix_originator", "ix_recipient"] {
            let rows: Vec<(i64, i64, i64, Vec<u8>)> = tx
                .prepare(&format!("SELECT bucket, tag, first, ids FROM {table}"))?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut ids = Vec::new();
            for (bucket, tag, first, blob) in rows {
                ids.clear();
                if super::postings::decode(&blob, &mut ids).is_err() {
                    // Left as it is: `verify` and the queries report a malformed list.
                    continue;
                }
                if ids.last().is_none_or(|&last| last <= records) {
                    continue;
                }
                // Only ids past the head go: the row keeps its first id, or goes.
                ids.retain(|&id| id <= records);
                let key = "WHERE bucket = ?1 AND tag = ?2 AND first = ?3";
                if ids.is_empty() {
                    tx.execute(&format!("DELETE FROM {table} {key}"), (bucket, tag, first))?;
                } else {
                    let mut blob = Vec::new();
                    super::postings::encode(&ids, &mut blob);
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

fn entry_header(kind: u8, name: &str, size: u64) -> Vec<u8> {
    let mut h = vec![kind];
    h.extend_from_slice(&(name.len() as u16).to_be_bytes());
    h.extend_from_slice(name.as_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h
}

fn entry(out: &mut impl Write, kind: u8, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(&entry_header(kind, name, bytes.len() as u64))?;
    out.write_all(bytes)
}

fn entry_from_file(out: &mut impl Write, kind: u8, name: &str, path: &Path) -> std::io::Result<()> {
    let mut f = File::open(path)?;
    let size = f.metadata()?.len();
    out.write_all(&entry_header(kind, name, size))?;
    let copied = std::io::copy(&mut (&mut f).take(size), out)?;
    if copied != size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the copy shrank while it was archived",
        ));
    }
    Ok(())
}

fn header(id: &[u8; 16], created_us: Micros) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.push(FORMAT);
    h.extend_from_slice(id);
    h.extend_from_slice(&created_us.to_be_bytes());
    h
}

fn frame_aad(header: &[u8], n: u64, last: bool) -> Vec<u8> {
    let mut a = header.to_vec();
    a.extend_from_slice(&n.to_be_bytes());
    a.push(u8::from(last));
    a
}

fn frame_nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 256-bit key"))
}

/// Seals what is written to it in frames of at most [`CHUNK`] bytes.
struct SealedWriter<W: Write> {
    out: W,
    key: LessSafeKey,
    header: Vec<u8>,
    buf: Vec<u8>,
    frame: u64,
    started: bool,
}

impl<W: Write> SealedWriter<W> {
    fn new(out: W, id: &[u8; 16], key: &[u8; 32], created_us: Micros) -> Self {
        SealedWriter {
            out,
            key: aead_key(key),
            header: header(id, created_us),
            buf: Vec::with_capacity(CHUNK),
            frame: 0,
            started: false,
        }
    }

    fn seal(&mut self, last: bool) -> std::io::Result<()> {
        if !self.started {
            self.out.write_all(&self.header)?;
            self.started = true;
        }
        let aad = frame_aad(&self.header, self.frame, last);
        self.key
            .seal_in_place_append_tag(frame_nonce(self.frame), Aad::from(aad), &mut self.buf)
            .map_err(|_| std::io::Error::other("sealing failed"))?;
        self.out.write_all(&[u8::from(last)])?;
        self.out.write_all(&(self.buf.len() as u32).to_be_bytes())?;
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        self.frame += 1;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<W> {
        self.seal(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.seal(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a backup's header: its id and when it was made.
fn read_header(r: &mut impl Read) -> Result<([u8; 16], Micros), BackupError> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h)
        .map_err(|_| BackupError::NotABackup("shorter than a header".into()))?;
    if &h[..8] != MAGIC {
        return Err(BackupError::NotABackup("no RLBACKUP header".into()));
    }
    if h[8] != FORMAT {
        return Err(BackupError::NotABackup(format!(
            "format {} (this relaylog reads {FORMAT})",
            h[8]
        )));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[9..25]);
    let created = i64::from_be_bytes(h[25..33].try_into().expect("8 bytes"));
    Ok((id, created))
}

/// Opens the frames of an archive whose header was read.
struct SealedReader<R: Read> {
    inp: R,
    key: LessSafeKey,
    header: Vec<u8>,
    frame: u64,
    plain: Vec<u8>,
    pos: usize,
    last_seen: bool,
}

impl<R: Read> SealedReader<R> {
    fn next_frame(&mut self) -> std::io::Result<()> {
        let damaged = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
        let mut fh = [0u8; 5];
        self.inp
            .read_exact(&mut fh)
            .map_err(|_| damaged("it ends before its last frame (truncated)"))?;
        let last = match fh[0] {
            0 => false,
            1 => true,
            _ => return Err(damaged("a frame is malformed")),
        };
        let len = u32::from_be_bytes(fh[1..5].try_into().expect("4 bytes")) as usize;
        if !(TAG_LEN..=CHUNK + TAG_LEN).contains(&len) {
            return Err(damaged("a frame has an impossible length"));
        }
        self.plain.resize(len, 0);
        self.inp
            .read_exact(&mut self.plain)
            .map_err(|_| damaged("it ends inside a frame (truncated)"))?;
        let aad = frame_aad(&self.header, self.frame, last);
        let n = self
            .key
            .open_in_place(frame_nonce(self.frame), Aad::from(aad), &mut self.plain)
            .map_err(|_| {
                damaged("a frame does not open: changed, reordered, or sealed with another key")
            })?
            .len();
        self.plain.truncate(n);
        self.pos = 0;
        self.frame += 1;
        if last {
            self.last_seen = true;
            let mut extra = [0u8; 1];
            if self.inp.read(&mut extra)? != 0 {
                return Err(damaged("bytes follow its last frame"));
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for SealedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.last_seen {
                return Ok(0);
            }
            self.next_frame()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What `backup restore` did.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub id: String,
    pub partitions: Vec<PartitionId>,
    /// Past retention by now: not restored, nor their keys.
    pub expired: Vec<PartitionId>,
}

/// Restores backup `file` into the new directory `into` (`store/`, `keyring/`,
/// `ledger.sqlite`), as of `now`'s retention. Nothing is put in `into` unless
/// every restored partition verifies with `public_key`.
#[allow(clippy::too_many_arguments)]
pub fn restore(
    cfg: &StoreConfig,
    ledger: &mut Ledger,
    master: &MasterKey,
    public_key: &[u8],
    file: &Path,
    into: &Path,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Restored, BackupError> {
    let mut inp = BufReader::new(File::open(file).map_err(io(file))?);
    let (id, created_us) = read_header(&mut inp)?;
    let id_hex = hex(&id);
    let WrappedKey {
        wrapped,
        shredded_at,
    } = ledger
        .backup_key(&id_hex)?
        .ok_or_else(|| BackupError::Unknown(id_hex.clone()))?;
    if let Some(at) = shredded_at {
        return Err(BackupError::Shredded {
            id: id_hex,
            at: rfc3339(at),
        });
    }
    let key: [u8; 32] = master
        .open_secret(&key_context(&id_hex), &wrapped)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| BackupError::Key(id_hex.clone()))?;
    if into.exists() && std::fs::read_dir(into).map_err(io(into))?.next().is_some() {
        return Err(BackupError::Exists(into.to_owned()));
    }
    let staging = with_suffix(into, ".restoring");
    if staging.exists() {
        return Err(BackupError::Exists(staging));
    }
    let result = (|| {
        let restored = unpack(
            SealedReader {
                inp,
                key: aead_key(&key),
                header: header(&id, created_us),
                frame: 0,
                plain: Vec::new(),
                pos: 0,
                last_seen: false,
            },
            cfg,
            &staging,
            now,
        )?;
        check_staged(&staging, &restored, public_key, now)?;
        certify_expired(cfg, &staging, &restored, actor, now)?;
        Ok(restored)
    })();
    let mut restored = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if into.exists() {
        std::fs::remove_dir(into).map_err(io(into))?;
    }
    std::fs::rename(&staging, into).map_err(io(into))?;
    if let Some(dir) = into.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    restored.id = id_hex.clone();
    let names = |ps: &[PartitionId]| ps.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    ledger.audit(
        now.timestamp_micros(),
        actor,
        "backup.restore",
        serde_json::json!({
            "backup": id_hex,
            "into": into.display().to_string(),
            "partitions": restored.partitions.len(),
            "not_restored_past_retention": names(&restored.expired),
        }),
    )?;
    Ok(restored)
}

/// Reads the entries into `staging`, leaving out partitions past retention and
/// their keys (an expired partition is written only to a scratch file, for its
/// certificate's counts, and removed).
fn unpack(
    mut r: impl Read,
    cfg: &StoreConfig,
    staging: &Path,
    now: DateTime<Utc>,
) -> Result<Restored, BackupError> {
    let damaged = |m: String| BackupError::Damaged(m);
    let (store, keyring) = (staging.join("store"), staging.join("keyring"));
    for d in [staging, &store, &keyring] {
        super::keys::create_private_dir(d).map_err(io(d))?;
    }
    let scratch = staging.join("expired");
    let mut out = Restored::default();
    let mut ledger_seen = false;
    loop {
        let mut kind = [0u8; 1];
        r.read_exact(&mut kind)
            .map_err(|e| damaged(format!("it ends before its end entry ({e})")))?;
        let mut len = [0u8; 2];
        r.read_exact(&mut len).map_err(|e| damaged(e.to_string()))?;
        let len = u16::from_be_bytes(len) as usize;
        if len > MAX_NAME {
            return Err(damaged("an entry's name is too long".into()));
        }
        let mut name = vec![0u8; len];
        r.read_exact(&mut name)
            .map_err(|e| damaged(e.to_string()))?;
        let name =
            String::from_utf8(name).map_err(|_| damaged("an entry's name is not UTF-8".into()))?;
        let mut size = [0u8; 8];
        r.read_exact(&mut size)
            .map_err(|e| damaged(e.to_string()))?;
        let size = u64::from_be_bytes(size);
        let partition = || {
            PartitionId::parse(&name)
                .filter(|p| p.granularity() == cfg.partition)
                .ok_or_else(|| damaged(format!("`{name}` is not a partition of this store")))
        };
        let target = match kind[0] {
            KIND_END => break,
            KIND_PARTITION => {
                let p = partition()?;
                if past_retention(cfg.retention, p, now) {
                    out.expired.push(p);
                    scratch.join(p.file_name())
                } else {
                    out.partitions.push(p);
                    store.join(p.file_name())
                }
            }
            KIND_KEYS => {
                let p = partition()?;
                if size > MAX_KEY_ENTRY {
                    return Err(damaged(format!("the keys of {p} are too large")));
                }
                if past_retention(cfg.retention, p, now) {
                    std::io::copy(&mut (&mut r).take(size), &mut std::io::sink())
                        .map_err(|e| damaged(e.to_string()))?;
                    continue;
                }
                keyring.join(format!("{p}.key"))
            }
            KIND_LEDGER if !ledger_seen => {
                ledger_seen = true;
                staging.join("ledger.sqlite")
            }
            other => return Err(damaged(format!("unknown or repeated entry kind {other}"))),
        };
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .map_err(io(&target))?;
        let copied =
            std::io::copy(&mut (&mut r).take(size), &mut f).map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => damaged(e.to_string()),
                _ => io(&target)(e),
            })?;
        if copied != size {
            return Err(damaged(format!("`{name}` is cut short")));
        }
        f.sync_all().map_err(io(&target))?;
    }
    if !ledger_seen {
        return Err(damaged("it holds no ledger".into()));
    }
    // Anything after the end entry would be read as damage by the reader itself
    // (the last frame must end the file); nothing more is expected inside it.
    let mut rest = [0u8; 1];
    if r.read(&mut rest).map_err(|e| damaged(e.to_string()))? != 0 {
        return Err(damaged("entries follow its end entry".into()));
    }
    Ok(out)
}

/// Every restored partition's signed heads, checked before anything is moved into
/// place; and every one has its keys.
fn check_staged(
    staging: &Path,
    restored: &Restored,
    public_key: &[u8],
    now: DateTime<Utc>,
) -> Result<(), BackupError> {
    let mut problems = Vec::new();
    for &p in &restored.partitions {
        let path = p.path_in(&staging.join("store"));
        match super::schema::open_for_read(&path) {
            Ok(conn) => {
                let v = super::integrity::verify(&conn, p, public_key, now.timestamp_micros());
                problems.extend(v.damage.iter().map(|d| format!("{p}: {d}")));
            }
            Err(e) => problems.push(format!("{p}: {e}")),
        }
        if !staging.join("keyring").join(format!("{p}.key")).exists() {
            problems.push(format!("{p}: its keys are not in the backup"));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(BackupError::Verify(problems.join("\n"))),
    }
}

/// Files, in the restored ledger, a deletion certificate for each partition left out
/// as past retention (so that `verify` there accounts for it), then removes the
/// scratch copies.
fn certify_expired(
    cfg: &StoreConfig,
    staging: &Path,
    restored: &Restored,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<(), BackupError> {
    let scratch = staging.join("expired");
    if restored.expired.is_empty() {
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok(());
    }
    let signer = Signer::load(cfg)?;
    let mut ledger = Ledger::open(&staging.join("ledger.sqlite"))?;
    let cutoff = cfg.retention.cutoff(now);
    for &p in &restored.expired {
        let copy = p.path_in(&scratch);
        let facts = deletion::sqlite_facts(&copy);
        let (document, signature) = signer.certify(p, facts, cfg.retention, cutoff, now);
        ledger.file_certificate(
            &p.to_string(),
            &document,
            &signature,
            now.timestamp_micros(),
        )?;
    }
    ledger.audit(
        now.timestamp_micros(),
        actor,
        "backup.restore.expired",
        serde_json::json!({
            "partitions": restored.expired.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        }),
    )?;
    drop(ledger);
    std::fs::remove_dir_all(&scratch).map_err(io(&scratch))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::postings;
    use super::*;

    fn sealed(data: &[u8]) -> Vec<u8> {
        let mut w = SealedWriter::new(Vec::new(), &[7; 16], &[9; 32], 42);
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn open(archive: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut r = archive;
        let (id, created) = read_header(&mut r).unwrap();
        let mut reader = SealedReader {
            inp: r,
            key: aead_key(&[9; 32]),
            header: header(&id, created),
            frame: 0,
            plain: Vec::new(),
            pos: 0,
            last_seen: false,
        };
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_copy_is_trimmed_to_its_last_signed_head_postings_included() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::schema::open_for_write(
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

    #[test]
    fn frames_round_trip_and_refuse_truncation_reordering_and_trailing_bytes() {
        let data: Vec<u8> = (0..(CHUNK * 2 + 100)).map(|i| (i % 251) as u8).collect();
        let archive = sealed(&data);
        assert_eq!(open(&archive).unwrap(), data);
        assert_eq!(open(&sealed(b"")).unwrap(), b"");

        // Cut at the end of a whole frame (the last one dropped).
        let frame = 5 + CHUNK + TAG_LEN;
        let cut = &archive[..HEADER_LEN + 2 * frame];
        assert!(open(cut).unwrap_err().to_string().contains("truncated"));
        // Two frames swapped.
        let mut swapped = archive[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&archive[HEADER_LEN + frame..HEADER_LEN + 2 * frame]);
        swapped.extend_from_slice(&archive[HEADER_LEN..HEADER_LEN + frame]);
        swapped.extend_from_slice(&archive[HEADER_LEN + 2 * frame..]);
        assert!(
            open(&swapped)
                .unwrap_err()
                .to_string()
                .contains("does not open")
        );
        // A byte changed, and a byte added after the end.
        let mut changed = archive.clone();
        changed[HEADER_LEN + 100] ^= 1;
        assert!(open(&changed).is_err());
        let mut longer = archive.clone();
        longer.push(0);
        assert!(open(&longer).unwrap_err().to_string().contains("follow"));
        // Another backup's header (id) on the same frames.
        let mut other = archive.clone();
        other[9] ^= 1;
        assert!(open(&other).is_err());
    }
}
