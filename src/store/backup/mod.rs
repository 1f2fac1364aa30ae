//! Backups that expire. `relaylog backup create` writes one archive of the ledger, the
//! partitions and their wrapped keys, sealed under a key of its own. That key exists
//! in one place only: the row of the installation's ledger that records the backup,
//! wrapped by the master key. Expiry shreds it `backup.retention` after the backup was
//! made, after which every copy of the archive is unreadable. (The ledger inside an
//! archive holds no backup's key: [`copy::scrubbed_ledger`].)
//!
//! Archive layout (all integers big-endian; see [`archive`]):
//!
//! ```text
//! header : "RLBACKUP" | format u8 (1) | backup id [16] | created_us i64
//! frame  : last u8 (0|1) | length u32 | AES-256-GCM(backup key, chunk) + tag
//!          nonce = 0u32 | frame number u64;  AAD = header | frame number u64 | last
//! chunks : at most 1 MiB each; the last frame (last = 1) ends the archive, so that a
//!          truncated archive, frames swapped or dropped, or bytes after it are refused
//! entry  : kind u8 | name length u16 | name | size u64 | bytes   (the chunks, joined)
//! kinds  : 'l' the ledger, first; then per partition 'p' its file and 'k' its wrapped
//!          keys, or 'x' (no bytes) when it was left out; 'e' the end
//! ```
//!
//! The ledger and each partition are copied with SQLite's online backup API, so that
//! `serve` keeps writing meanwhile; the ledger first, so that every partition its
//! register names is in the archive or named as left out. A partition is copied as
//! of its last signed head: rows a running writer had not signed yet are left out
//! (they are in the next backup), so that every restored partition verifies; and
//! compacted, so that no free page carries erased rows. Partitions past retention
//! that no legal hold keeps are left out, as are filters (compaction rebuilds them).
//!
//! A restore decrypts into a hidden directory beside the target, checks every
//! partition's signed heads there, and only then moves it into place. Partitions past
//! retention by then that no hold (in the installation's ledger) keeps are not
//! restored, nor their keys: their bytes are skipped, and the restored ledger names
//! them (`backup.restore.left-out`), so that `verify` there accounts for them.

mod archive;
mod copy;

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;

use self::archive::{Kind, SealedReader, SealedWriter};
use super::expiry::expired;
use super::keys::{MasterKey, hex};
use super::partition::{self, PartitionId};
use crate::clock::Micros;
use crate::config::{Backend, Retention, StoreConfig};
use crate::export::rfc3339;
use crate::ledger::{Hold, Ledger, LedgerError, sql_err};

/// A key file is 101 bytes; anything much larger in a key entry is refused.
const MAX_KEY_ENTRY: u64 = 4096;
/// What binds a backup's key to its backup, when the master key wraps it.
const KEY_CONTEXT: &[u8] = b"relaylog backup key v1";
/// The audit action, in a restored ledger, that names the partitions left out.
pub const LEFT_OUT: &str = "backup.restore.left-out";
/// Partitions one such entry names at most.
const LEFT_OUT_CHUNK: usize = 500;

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
    #[error(
        "{0} exists: a backup or restore cut short left it (it may hold traffic data); remove it, then try again"
    )]
    Leftover(PathBuf),
    #[error("{0}: name a file or directory, not a root")]
    NoName(PathBuf),
    #[error("partition {partition}: {message}")]
    Partition { partition: String, message: String },
    #[error("the ledger's copy: {0}")]
    LedgerCopy(#[from] rusqlite::Error),
    #[error("not a relaylog backup: {0}")]
    NotABackup(String),
    #[error(
        "backup {0} is not in this installation's ledger: it is another installation's, or its record is gone (a backup's key is only in the ledger of the installation that made it)"
    )]
    Unknown(String),
    #[error(
        "backup {0}: this ledger holds no key for it (a ledger restored from a backup holds none): restore with the installation's own ledger"
    )]
    NoKeyHere(String),
    #[error("backup {id} was shredded on {at}: its key is gone, and no copy of it can be read")]
    Shredded { id: String, at: String },
    #[error("backup {0}: its key does not unwrap with this master key")]
    Key(String),
    #[error("the archive is damaged or was changed: {0}")]
    Damaged(String),
    #[error("restored partitions do not verify; nothing was restored:\n{0}")]
    Verify(String),
    #[error("no randomness for the backup's key")]
    Random,
    #[error(
        "restored into {into}, but its audit entry could not be written ({error}); `backup.restore.start` records it"
    )]
    RestoredUnaudited { into: PathBuf, error: LedgerError },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Keys(#[from] super::keys::KeyError),
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
    /// When expiry shreds its key, by the retention when it was made (a shorter
    /// `backup.retention` set since shreds it sooner).
    pub shred_at: String,
    pub shredded_at: Option<String>,
    pub partitions: i64,
    pub oldest: Option<String>,
    pub newest: Option<String>,
    pub bytes: i64,
    pub sha256: String,
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
        partitions: r.int(5)?,
        oldest: r.opt_text(6)?,
        newest: r.opt_text(7)?,
        bytes: r.int(8)?,
        sha256: r.text(9)?,
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
        // relaylog makes backups of SQLite stores only (see `create`).
        if matches!(&*self.db(), crate::ledger::db::Db::Postgres(_)) {
            return Ok(Vec::new());
        }
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
            // The ledger's connection overwrites freed space with zeros
            // (`secure_delete`, see `Ledger::open`): the key does not linger in the
            // file's free pages.
            let mut db = self.db();
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
            if let crate::ledger::db::Db::Sqlite(c) = &*db {
                let busy = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                });
                if !matches!(busy, Ok(0)) {
                    tracing::warn!(result = ?busy, "the ledger's write-ahead log could not be emptied after a backup's key was shredded; the next checkpoint does");
                }
            }
        }
        Ok(due.into_iter().map(|(id, _)| id).collect())
    }
}

/// A directory a backup was restored into, from the audit log.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RestoredCopy {
    pub backup: String,
    pub into: String,
    pub at: String,
    /// `false`: the restore began and did not finish (its `.restoring` directory
    /// may be left beside `into`).
    pub finished: bool,
}

impl Ledger {
    /// Every restore begun, with whether it finished, oldest first.
    pub fn restored_copies(&self) -> Result<Vec<RestoredCopy>, LedgerError> {
        let err = sql_err(&self.path);
        let rows = self
            .db()
            .query(
                "SELECT action, at_us, details FROM audit WHERE action IN ('backup.restore.start', 'backup.restore') ORDER BY seq",
                &[],
            )
            .map_err(err)?;
        let mut out: Vec<RestoredCopy> = Vec::new();
        for r in rows {
            let (action, at, details) = (
                r.text(0).map_err(err)?,
                r.int(1).map_err(err)?,
                r.text(2).map_err(err)?,
            );
            let v: serde_json::Value = serde_json::from_str(&details).unwrap_or_default();
            let (backup, into) = (
                v["backup"].as_str().unwrap_or_default().to_owned(),
                v["into"].as_str().unwrap_or_default().to_owned(),
            );
            match action.as_str() {
                "backup.restore" => {
                    if let Some(c) = out
                        .iter_mut()
                        .rev()
                        .find(|c| c.backup == backup && c.into == into && !c.finished)
                    {
                        c.finished = true;
                    }
                }
                _ => out.push(RestoredCopy {
                    backup,
                    into,
                    at: rfc3339(at),
                    finished: false,
                }),
            }
        }
        Ok(out)
    }
}

/// What `backup create` made.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    pub partitions: usize,
    /// Left out: past retention and held by nothing.
    pub left_out: usize,
    /// Not in the archive though within retention: without keys, or gone (damage
    /// `verify` reports on the live store too).
    pub damaged: Vec<PartitionId>,
    pub bytes: u64,
    pub sha256: String,
    pub shred_at: DateTime<Utc>,
}

/// Paths removed when it is dropped (a run's scratch files, whatever the outcome).
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
                Ok(_) => std::fs::remove_file(p),
                Err(_) => Ok(()),
            };
        }
    }
}

/// `.<name>.<what>` beside `path` (a trailing `/` is not a name of its own).
fn beside(path: &Path, what: &str) -> Result<PathBuf, BackupError> {
    let name = path
        .file_name()
        .ok_or_else(|| BackupError::NoName(path.to_owned()))?;
    let parent = path.parent().unwrap_or(Path::new(""));
    Ok(parent.join(format!(".{}.{what}", name.to_string_lossy())))
}

/// A new directory only this user may enter: one that exists (planted, or left by a
/// run cut short) is refused, never reused.
fn fresh_private_dir(path: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => BackupError::Leftover(path.to_owned()),
            _ => io(path)(e),
        })
}

fn fail_if_there(path: &Path) -> Result<(), BackupError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Err(BackupError::Leftover(path.to_owned())),
        Err(_) => Ok(()),
    }
}

fn key_context(id_hex: &str) -> Vec<u8> {
    let mut c = KEY_CONTEXT.to_vec();
    c.push(0);
    c.extend_from_slice(id_hex.as_bytes());
    c
}

fn sync_dir_of(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
}

/// Writes a sealed archive of the store to `out` (a new file). The backup's row, with
/// its wrapped key, goes into the ledger with its audit entry once the archive is
/// complete: an archive cut short has no key anywhere.
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
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(BackupError::Exists(out.to_owned()));
    }
    let (partial, work) = (beside(out, "partial")?, beside(out, "partial.d")?);
    fail_if_there(&partial)?;
    fail_if_there(&work)?;
    let rng = SystemRandom::new();
    let (mut id, mut key) = ([0u8; 16], [0u8; 32]);
    rng.fill(&mut id)
        .and_then(|()| rng.fill(&mut key))
        .map_err(|_| BackupError::Random)?;
    let id_hex = hex(&id);
    let created_us = now.timestamp_micros();
    let holds = ledger.holds()?;
    let _scratch = Scratch(vec![partial.clone(), work.clone()]);
    let written = write_archive(cfg, &holds, &id, &key, now, &partial, &work)?;
    std::fs::hard_link(&partial, out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => BackupError::Exists(out.to_owned()),
        _ => io(out)(e),
    })?;
    sync_dir_of(out);
    let shred_at = retention.expires(now);
    let recorded = record_backup(
        ledger, master, &id_hex, &key, created_us, shred_at, actor, &written,
    );
    if let Err(e) = recorded {
        // Without its row the archive has no key: not left to look like a backup.
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    Ok(Created {
        id: id_hex,
        partitions: written.partitions.len(),
        left_out: written.left_out.len(),
        damaged: written.damaged.clone(),
        bytes: written.bytes,
        sha256: written.sha256,
        shred_at,
    })
}

/// The backup's row (its wrapped key) and its audit entry, in one transaction.
#[allow(clippy::too_many_arguments)]
fn record_backup(
    ledger: &mut Ledger,
    master: &MasterKey,
    id_hex: &str,
    key: &[u8; 32],
    created_us: Micros,
    shred_at: DateTime<Utc>,
    actor: &str,
    w: &Written,
) -> Result<(), BackupError> {
    let wrapped = master.seal_secret(&key_context(id_hex), key)?;
    let err = sql_err(&ledger.path);
    let (oldest, newest) = (
        w.partitions.first().map(|p| p.to_string()),
        w.partitions.last().map(|p| p.to_string()),
    );
    let (n, size) = (w.partitions.len() as i64, w.bytes as i64);
    let mut db = ledger.db();
    let mut tx = db.begin().map_err(err)?;
    tx.execute(
        "INSERT INTO backup (id, created_at, created_by, shred_at, wrapped_key, partitions, oldest, newest, bytes, sha256) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        &[
            &id_hex, &created_us, &actor, &shred_at.timestamp_micros(), &wrapped, &n, &oldest,
            &newest, &size, &w.sha256,
        ],
    )
    .map_err(err)?;
    Ledger::append(
        &mut tx,
        created_us,
        actor,
        "backup.create",
        &serde_json::json!({
            "backup": id_hex,
            "partitions": n,
            "left_out": w.left_out.len(),
            "damaged": w.damaged.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "oldest": oldest,
            "newest": newest,
            "bytes": w.bytes,
            "sha256": w.sha256,
            "shred_at": rfc3339(shred_at.timestamp_micros()),
        }),
    )
    .map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(())
}

/// What went into an archive.
struct Written {
    partitions: Vec<PartitionId>,
    left_out: Vec<PartitionId>,
    /// Within retention but without keys, or registered and gone: not in the archive.
    damaged: Vec<PartitionId>,
    bytes: u64,
    sha256: String,
}

/// Writes the archive to `partial`, copying each database through `work` first.
fn write_archive(
    cfg: &StoreConfig,
    holds: &[Hold],
    id: &[u8; 16],
    key: &[u8; 32],
    now: DateTime<Utc>,
    partial: &Path,
    work: &Path,
) -> Result<Written, BackupError> {
    fresh_private_dir(work)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(partial)
        .map_err(io(partial))?;
    let mut sealed = SealedWriter::new(BufWriter::new(file), id, key, now.timestamp_micros());
    let w = |e: std::io::Error| io(partial)(e);
    // The ledger first: every partition its register names is, by the time the
    // partitions are listed, there, or named left out below.
    let ledger_copy = work.join("ledger.sqlite");
    copy::scrubbed_ledger(&cfg.ledger, &work.join("ledger.unscrubbed"), &ledger_copy)?;
    let registered = Ledger::open(&ledger_copy)?.registered()?;
    archive::entry_from_file(&mut sealed, Kind::Ledger, "ledger", &ledger_copy).map_err(w)?;
    std::fs::remove_file(&ledger_copy).map_err(io(&ledger_copy))?;
    let (mut partitions, mut left_out, mut damaged) = (Vec::new(), Vec::new(), Vec::new());
    for p in partition::list(&cfg.path).map_err(io(&cfg.path))? {
        if expired(cfg, holds, p, now) {
            left_out.push(p);
            continue;
        }
        let keys = cfg.keyring.join(format!("{p}.key"));
        let keys = match std::fs::read(&keys) {
            Ok(k) => k,
            // Within retention without its keys: damage (`verify` says so), not
            // something to name as left out; the restored store reports it missing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                damaged.push(p);
                continue;
            }
            Err(e) => return Err(io(&keys)(e)),
        };
        let copy = work.join(p.file_name());
        copy::partition(&p.path_in(&cfg.path), &copy, p)?;
        archive::entry_from_file(&mut sealed, Kind::Partition, &p.to_string(), &copy).map_err(w)?;
        std::fs::remove_file(&copy).map_err(io(&copy))?;
        archive::entry(&mut sealed, Kind::Keys, &p.to_string(), &keys).map_err(w)?;
        partitions.push(p);
    }
    // Registered in the ledger's copy and gone since: named left out only when expiry
    // may have removed it (past retention, held by nothing); else it is damage.
    for p in registered.iter().filter_map(|n| PartitionId::parse(n)) {
        if partitions.contains(&p) || left_out.contains(&p) {
            continue;
        }
        match expired(cfg, holds, p, now) {
            true => left_out.push(p),
            false if !damaged.contains(&p) => damaged.push(p),
            false => {}
        }
    }
    left_out.sort();
    damaged.sort();
    for p in &left_out {
        archive::entry(&mut sealed, Kind::LeftOut, &p.to_string(), &[]).map_err(w)?;
    }
    archive::entry(&mut sealed, Kind::End, "", &[]).map_err(w)?;
    let (out, bytes, digest) = sealed.finish().map_err(w)?;
    let file = out.into_inner().map_err(|e| w(e.into_error()))?;
    file.sync_all().map_err(w)?;
    Ok(Written {
        partitions,
        left_out,
        damaged,
        bytes,
        sha256: hex(&digest),
    })
}

/// What `backup restore` did.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub id: String,
    pub partitions: Vec<PartitionId>,
    /// Not restored, nor their keys: past retention (by the backup, or by now) and
    /// held by nothing.
    pub left_out: Vec<PartitionId>,
    /// Accounts offboarded (records erased at contract end) since the backup was
    /// made: their records are back in the restored store, to be erased there again.
    pub offboarded_since: usize,
}

/// Restores backup `file` into the new directory `into` (`store/`, `keyring/`,
/// `ledger.sqlite`), as of `now`'s retention and the installation's holds. Nothing is
/// put in `into` unless every restored partition verifies with `public_key`. A backup
/// due to be shredded (`backup_retention`) is shredded now, not restored.
#[allow(clippy::too_many_arguments)]
pub fn restore(
    cfg: &StoreConfig,
    backup_retention: Retention,
    ledger: &mut Ledger,
    master: &MasterKey,
    public_key: &[u8],
    file: &Path,
    into: &Path,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Restored, BackupError> {
    if matches!(cfg.backend, Backend::Postgres(_)) {
        return Err(BackupError::Postgres);
    }
    ledger.shred_backups(backup_retention, now, actor)?;
    let mut inp = BufReader::new(File::open(file).map_err(io(file))?);
    let (id, created_us) = archive::read_header(&mut inp)?;
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
    if wrapped.is_empty() {
        return Err(BackupError::NoKeyHere(id_hex));
    }
    let key: [u8; 32] = master
        .open_secret(&key_context(&id_hex), &wrapped)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| BackupError::Key(id_hex.clone()))?;
    let into: PathBuf = into.components().collect();
    if std::fs::read_dir(&into).map_or(std::fs::symlink_metadata(&into).is_ok(), |mut d| {
        d.next().is_some()
    }) {
        return Err(BackupError::Exists(into));
    }
    let staging = beside(&into, "restoring")?;
    fail_if_there(&staging)?;
    // Said before anything is decrypted: a restore cut short (its staging directory
    // left behind) is on record too.
    ledger.audit(
        now.timestamp_micros(),
        actor,
        "backup.restore.start",
        serde_json::json!({"backup": id_hex, "into": into.display().to_string()}),
    )?;
    let mut scratch = Scratch(vec![staging.clone()]);
    let holds = ledger.holds()?;
    let reader = SealedReader::new(inp, &id, created_us, &key);
    let mut restored = unpack(reader, cfg, &holds, &staging, now)?;
    check_staged(&staging, &restored, public_key, now)?;
    // Archives hold a ledger without backups' keys; emptied again here whatever made
    // this one, so that no restored copy opens a backup.
    copy::scrub_in_place(&staging.join("ledger.sqlite"))?;
    name_left_out(&staging, &restored, &id_hex, actor, now)?;
    if into.exists() {
        std::fs::remove_dir(&into).map_err(io(&into))?;
    }
    std::fs::rename(&staging, &into).map_err(io(&into))?;
    scratch.0.clear();
    sync_dir_of(&into);
    restored.id = id_hex.clone();
    restored.offboarded_since = ledger
        .db()
        .query_one(
            "SELECT count(*) FROM audit WHERE action = 'account.offboard' AND at_us > ?1",
            &[&created_us],
        )
        .and_then(|r| r.int(0))
        .map_err(sql_err(&ledger.path))?
        .max(0) as usize;
    ledger
        .audit(
            now.timestamp_micros(),
            actor,
            "backup.restore",
            serde_json::json!({
                "backup": id_hex,
                "into": into.display().to_string(),
                "partitions": restored.partitions.len(),
                "left_out": restored.left_out.len(),
                "offboarded_since": restored.offboarded_since,
            }),
        )
        .map_err(|e| BackupError::RestoredUnaudited {
            into: into.clone(),
            error: e,
        })?;
    Ok(restored)
}

/// Reads the entries into `staging`. A partition past retention that no hold keeps is
/// skipped, bytes and keys, and named left out.
fn unpack(
    mut r: impl Read,
    cfg: &StoreConfig,
    holds: &[Hold],
    staging: &Path,
    now: DateTime<Utc>,
) -> Result<Restored, BackupError> {
    let damaged = BackupError::Damaged;
    let (store, keyring) = (staging.join("store"), staging.join("keyring"));
    for d in [staging, &store, &keyring] {
        fresh_private_dir(d)?;
    }
    let mut out = Restored::default();
    let mut ledger_seen = false;
    loop {
        let (kind, name, size) = archive::next_entry(&mut r)?;
        let partition = || {
            PartitionId::parse(&name)
                .filter(|p| p.granularity() == cfg.partition)
                .ok_or_else(|| damaged(format!("`{name}` is not a partition of this store")))
        };
        let expired = |p: PartitionId| expired(cfg, holds, p, now);
        let target = match kind {
            Kind::End => break,
            Kind::Ledger if !ledger_seen => {
                ledger_seen = true;
                staging.join("ledger.sqlite")
            }
            Kind::Ledger => return Err(damaged("it holds two ledgers".into())),
            Kind::LeftOut => {
                out.left_out.push(partition()?);
                continue;
            }
            Kind::Partition if expired(partition()?) => {
                out.left_out.push(partition()?);
                skip(&mut r, size)?;
                continue;
            }
            Kind::Partition => {
                let p = partition()?;
                out.partitions.push(p);
                store.join(p.file_name())
            }
            Kind::Keys if size > MAX_KEY_ENTRY => {
                return Err(damaged(format!("the keys of `{name}` are too large")));
            }
            Kind::Keys if expired(partition()?) => {
                skip(&mut r, size)?;
                continue;
            }
            Kind::Keys => keyring.join(format!("{}.key", partition()?)),
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => damaged(format!("`{name}` is in it twice")),
                _ => io(&target)(e),
            })?;
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
    let mut rest = [0u8; 1];
    if r.read(&mut rest).map_err(|e| damaged(e.to_string()))? != 0 {
        return Err(damaged("entries follow its end entry".into()));
    }
    out.left_out.sort();
    out.left_out.dedup();
    Ok(out)
}

/// Reads past `size` bytes of an entry (an authenticated stream: no byte of it is kept).
fn skip(r: &mut impl Read, size: u64) -> Result<(), BackupError> {
    let skipped = std::io::copy(&mut r.take(size), &mut std::io::sink())
        .map_err(|e| BackupError::Damaged(e.to_string()))?;
    if skipped != size {
        return Err(BackupError::Damaged("an entry is cut short".into()));
    }
    Ok(())
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

/// Names, in the restored ledger, the partitions left out (see [`LEFT_OUT`]).
fn name_left_out(
    staging: &Path,
    restored: &Restored,
    id_hex: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<(), BackupError> {
    if restored.left_out.is_empty() {
        return Ok(());
    }
    let mut ledger = Ledger::open(&staging.join("ledger.sqlite"))?;
    for chunk in restored.left_out.chunks(LEFT_OUT_CHUNK) {
        let names: Vec<String> = chunk.iter().map(|p| p.to_string()).collect();
        ledger.audit(
            now.timestamp_micros(),
            actor,
            LEFT_OUT,
            serde_json::json!({"backup": id_hex, "partitions": names}),
        )?;
    }
    Ok(())
}
