//! Key custody: the master key, and the keyring of per-partition keys it wraps.
//!
//! Each partition has a random 256-bit *data key* (AES-256-GCM, seals the identifying
//! fields) and a random 256-bit *index key* (HMAC-SHA256, makes the blind index). They
//! are stored wrapped by the master key in the keyring directory, which lives apart from
//! the store directory: destroying a partition's key file shreds every copy of that
//! partition, backups included.
//!
//! Key file layout (`<keyring>/<partition>.key`, 101 bytes):
//!
//! ```text
//! magic "RLK1" | index_bytes u8 | bucket_secs u32 | nonce [12]
//!   | AES-256-GCM(master, data_key [32] | index_key [32]) + tag [16]
//! AAD = magic | index_bytes | bucket_secs | partition name
//! ```
//!
//! The blind-index parameters live with the index key: they are fixed when a partition
//! is created, so changing them in the config never makes an older partition unsearchable.
//!
//! The master key file holds 64 hex digits and a newline, mode 0600.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ring::aead::{self, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::partition::PartitionId;

const KEY_MAGIC: &[u8; 4] = b"RLK1";

/// Most partitions whose unwrapped keys a keyring keeps in memory: more than a
/// lookup over 13 months of day partitions (396) touches.
const MAX_CACHED: usize = 512;
/// How long unwrapped keys stay in memory after they were read from their file. A
/// burst of lookups over a year unwraps each partition's keys once instead of once
/// per lookup, and keys shredded by another process (`relaylog expire` beside
/// `serve`) leave this one within it; a shred in this process drops them at once.
pub const KEY_TTL: std::time::Duration = std::time::Duration::from_secs(30);
const KEY_FILE_LEN: usize = 4 + 1 + 4 + NONCE_LEN + 64 + 16;
const HEADER_LEN: usize = 4 + 1 + 4;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path} already exists: relaylog init never overwrites keys")]
    Exists { path: PathBuf },
    #[error("master key file {path} is missing: run `relaylog init` first")]
    MasterMissing { path: PathBuf },
    #[error("master key file {path} is readable by group or others (mode {mode:o}): chmod 600 it")]
    MasterPermissions { path: PathBuf, mode: u32 },
    #[error("master key file {path} is malformed: expected 64 hex digits")]
    MasterMalformed { path: PathBuf },
    #[error(
        "key directory {path} is writable by group or others (mode {mode:o}): they could replace the keys in it; chmod go-w it"
    )]
    DirectoryWritable { path: PathBuf, mode: u32 },
    #[error(
        "keys of partition {partition} are gone (shredded at expiry, or the keyring was not restored)"
    )]
    Shredded { partition: PartitionId },
    #[error(
        "key file of partition {partition} cannot be unwrapped: wrong master key or a damaged file"
    )]
    Unwrap { partition: PartitionId },
    #[error("sealed value cannot be opened: damaged, or sealed under other keys")]
    Open,
    #[error("the system random generator failed")]
    Random,
    /// Reading or creating a key file took longer than the relay waits (a stalled
    /// disk): the message is refused, the file access goes on in the background.
    #[error("key file access did not finish within {0:?}")]
    TimedOut(std::time::Duration),
    /// The blocking task for a key file was cancelled (the runtime is shutting down).
    #[error("key file access was cancelled")]
    Cancelled,
    #[error("key I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The keys live in the database (`store.backend = "postgres"`), which failed.
    #[error("partition keys in the database: {0}")]
    Database(#[from] crate::pg::PgError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates the master key file (mode 0600, parent directories as needed). Refuses to
/// overwrite an existing file.
pub fn create_master_key(path: &Path) -> Result<(), KeyError> {
    if path.exists() {
        return Err(KeyError::Exists {
            path: path.to_owned(),
        });
    }
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(io_err(dir))?;
    }
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| KeyError::Random)?;
    let text = format!("{}\n", hex(&key));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_owned(),
            },
            _ => KeyError::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
    f.write_all(text.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    Ok(())
}

/// Creates a directory for keys, and any missing above it, for the owner alone (0700,
/// whatever the umask: a umask of 002 would otherwise give group write, which
/// [`check_directories`] refuses). An existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Refuses key directories that group or others may write to: the directories holding
/// the master key and the signing key (and, where a key's path is a symbolic link, the
/// one holding what it points to), and the keyring. Whoever can write there can put keys of their own in place
/// of the installation's (records sealed under a key they know, heads signed by a key
/// they hold) or move them away.
pub fn check_directories(cfg: &crate::config::StoreConfig) -> Result<(), KeyError> {
    // The directory holding each key's path and, when it is a link, the one holding
    // what it points to: whoever can write to either can swap the key.
    let parents = |p: &Path| {
        let real = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        [
            p.parent().map(Path::to_owned),
            real.parent().map(Path::to_owned),
        ]
    };
    let dirs = parents(&cfg.master_key)
        .into_iter()
        .chain(parents(&cfg.signing_key))
        .chain([Some(cfg.keyring.clone())]);
    for dir in dirs.flatten() {
        // An empty parent is the working directory.
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let meta = match std::fs::metadata(&dir) {
            Ok(m) => m,
            // Not made yet (`init` makes it): nothing to refuse.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(KeyError::DirectoryWritable { path: dir, mode });
        }
    }
    Ok(())
}

/// The installation's master key: wraps every partition's keys, seals the secrets kept
/// outside the keyring, and (through a key derived from it) tags the identifiers of a
/// case in the audit log.
pub struct MasterKey(LessSafeKey, ring::hmac::Key);

impl MasterKey {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyError::MasterMissing {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::MasterPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let bytes = decode_hex(text.trim()).ok_or_else(|| KeyError::MasterMalformed {
            path: path.to_owned(),
        })?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| KeyError::MasterMalformed {
            path: path.to_owned(),
        })?;
        // A separate key for audit tags, so that a tag never equals anything sealed.
        let derive = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes);
        let audit = ring::hmac::sign(&derive, b"relaylog audit criteria v1");
        Ok(Self(
            LessSafeKey::new(key),
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, audit.as_ref()),
        ))
    }
}

impl MasterKey {
    /// Seals a small secret kept outside the keyring (an officer's TOTP seed, a case's
    /// identifiers), bound to `context` so that it cannot be moved to another row.
    /// `nonce | ciphertext | tag`, AES-256-GCM under the master key.
    pub fn seal_secret(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        seal_with(&self.0, context, plaintext)
    }

    pub fn open_secret(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        open_with(&self.0, context, sealed)
    }

    /// What authenticates the nodes' rows in a shared database (see [`NodeTagger`]):
    /// a key of its own, derived from the audit tags' (never the same key for two
    /// uses).
    pub fn node_tagger(&self) -> NodeTagger {
        let derived = ring::hmac::sign(&self.1, b"relaylog node key tag key v1");
        NodeTagger(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            derived.as_ref(),
        ))
    }

    /// A keyed tag of an identifier for the audit log: the same identifier gives the
    /// same tag in every entry (so entries can be related), but the log holds no
    /// number or address in the clear, and without the master key a tag cannot be
    /// tested against a guess.
    pub fn audit_tag(&self, kind: &str, value: &str) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.1);
        ctx.update(kind.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        hex(&ctx.sign().as_ref()[..16])
    }
}

/// Authenticates a node's registration in a shared database (PostgreSQL): its id,
/// name and public signing key, under a MAC with a key derived from the master key,
/// which is never in the database. A node row someone with write access to the
/// database adds or changes (or whose tag they copy from another row) does not
/// verify, so its key signs nothing relaylog believes (heads, erasure statements,
/// exports).
#[derive(Clone)]
pub struct NodeTagger(ring::hmac::Key);

impl NodeTagger {
    pub fn tag(&self, id: i16, name: &str, public_key: &[u8]) -> Vec<u8> {
        ring::hmac::sign(&self.0, &Self::message(id, name, public_key))
            .as_ref()
            .to_vec()
    }

    /// In constant time.
    pub fn verify(&self, id: i16, name: &str, public_key: &[u8], tag: &[u8]) -> bool {
        ring::hmac::verify(&self.0, &Self::message(id, name, public_key), tag).is_ok()
    }

    /// The tag of a `relaylog.journal_frame` row: that node `node`'s rows in partition
    /// `part` hold its journal `journal` through frame `frame`. Without it someone who
    /// can write the database could raise the frame, and the node would skip the rows
    /// of the frames read back after a crash, or stop writing new ones.
    pub fn frame_tag(&self, part: i32, node: i16, journal: &str, frame: i64) -> [u8; 32] {
        let mut tag = [0u8; 32];
        let signed = ring::hmac::sign(&self.0, &Self::frame_message(part, node, journal, frame));
        tag.copy_from_slice(signed.as_ref());
        tag
    }

    /// In constant time.
    pub fn verify_frame(
        &self,
        part: i32,
        node: i16,
        journal: &str,
        frame: i64,
        tag: &[u8],
    ) -> bool {
        let m = Self::frame_message(part, node, journal, frame);
        ring::hmac::verify(&self.0, &m, tag).is_ok()
    }

    /// The journal's id last: the fixed-width fields before it part cleanly.
    fn frame_message(part: i32, node: i16, journal: &str, frame: i64) -> Vec<u8> {
        let mut m = b"relaylog journal frame v1\0".to_vec();
        m.extend_from_slice(&part.to_be_bytes());
        m.extend_from_slice(&node.to_be_bytes());
        m.extend_from_slice(&frame.to_be_bytes());
        m.extend_from_slice(journal.as_bytes());
        m
    }

    /// A node's name is `[a-z0-9-]` (`store.node`): no NUL, so the fields part cleanly.
    fn message(id: i16, name: &str, public_key: &[u8]) -> Vec<u8> {
        let mut m = b"relaylog node key v1\0".to_vec();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(name.as_bytes());
        m.push(0);
        m.extend_from_slice(public_key);
        m
    }
}

/// Lower-case hex, as key files are written.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 as lower-case hex (key fingerprints, documents' digests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    unhex(s)?.try_into().ok()
}

/// What a blind index is computed over. Domain-separated so that the same string used
/// as an account and as a recipient gives unrelated tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum IndexKind {
    Account = 1,
    ClientIp = 2,
    Originator = 3,
    Recipient = 4,
}

/// How a partition's blind index is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexParams {
    /// Bytes of HMAC kept (1..=8).
    pub bytes: u8,
    /// Width of the time bucket leading every index, in seconds.
    pub bucket_secs: u32,
}

/// The keys of one partition, unwrapped. Built once per partition and shared.
pub struct PartitionKeys {
    partition: PartitionId,
    data: LessSafeKey,
    index: hmac::Key,
    params: IndexParams,
    /// Unique to this unwrapping in this process (never 0): what is derived from these
    /// keys can be remembered by it without holding the keys.
    serial: u64,
}

impl PartitionKeys {
    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    pub fn serial(&self) -> u64 {
        self.serial
    }

    pub fn params(&self) -> IndexParams {
        self.params
    }

    /// The index bucket holding time `at_us`.
    pub fn bucket(&self, at_us: i64) -> i64 {
        at_us.div_euclid(i64::from(self.params.bucket_secs) * 1_000_000)
    }

    /// Truncated HMAC-SHA256 of `kind | value` under the index key, as an integer
    /// (SQLite compares integers faster than blobs and stores them in ≤ 8 bytes).
    pub fn blind_index(&self, kind: IndexKind, value: &str) -> i64 {
        let mut ctx = hmac::Context::with_key(&self.index);
        ctx.update(&[kind as u8]);
        ctx.update(value.as_bytes());
        let tag = ctx.sign();
        let mut head = [0u8; 8];
        head.copy_from_slice(&tag.as_ref()[..8]);
        let shift = 8 * (8 - u32::from(self.params.bytes));
        (u64::from_be_bytes(head) >> shift) as i64
    }

    /// A MAC over `parts` under the index key, for what is derived from the index and
    /// kept beside it (the filter, see [`super::compact`]): HMAC-SHA256 truncated to 16
    /// bytes. Domain-separated from [`Self::blind_index`], whose first byte is an
    /// [`IndexKind`] (1 to 4), by a leading `0xFF`.
    pub fn derived_mac(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut ctx = hmac::Context::with_key(&self.index);
        ctx.update(&[0xFF]);
        for part in parts {
            ctx.update(part);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        out
    }

    /// Seals `plaintext` in place: the result is `nonce | ciphertext | tag`. `aad` binds
    /// the sealed value to its row, so it cannot be moved to another.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        seal_with(&self.data, aad, plaintext)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        open_with(&self.data, aad, sealed)
    }
}

/// AES-256-GCM with a fresh random nonce: `nonce | ciphertext | tag`.
fn seal_with(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
    let nonce = next_nonce()?;
    // One buffer, sealed in place after the nonce: nonce ‖ ciphertext ‖ tag.
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let sealed = key.seal_in_place_separate_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut out[NONCE_LEN..],
    );
    let Ok(tag) = sealed else {
        // Not sealed: it may still hold the plaintext.
        zeroize::Zeroize::zeroize(&mut out);
        return Err(KeyError::Open);
    };
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn open_with(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
    if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(KeyError::Open);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Open)?;
    let mut buf = body.to_vec();
    let n = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| KeyError::Open)?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// Random 96-bit nonces, drawn from the system generator 100 at a time so that
/// sealing does not make a syscall per record. A fresh random nonce per seal (rather
/// than a counter) stays safe when several processes seal under one partition's key.
fn next_nonce() -> Result<[u8; NONCE_LEN], KeyError> {
    const BATCH: usize = 100;
    struct Pool {
        buf: [u8; NONCE_LEN * BATCH],
        used: usize,
    }
    thread_local! {
        static POOL: RefCell<Pool> = const { RefCell::new(Pool { buf: [0; NONCE_LEN * BATCH], used: BATCH }) };
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.used == BATCH {
            SystemRandom::new()
                .fill(&mut pool.buf)
                .map_err(|_| KeyError::Random)?;
            pool.used = 0;
        }
        let at = pool.used * NONCE_LEN;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&pool.buf[at..at + NONCE_LEN]);
        // Never hand the same bytes out twice.
        pool.buf[at..at + NONCE_LEN].fill(0);
        pool.used += 1;
        Ok(nonce)
    })
}

/// Where the wrapped partition keys are kept.
enum Vault {
    /// One file per partition in the keyring directory.
    Files(PathBuf),
    /// `relaylog_keys.partition_key`, shared by every node (see [`crate::pg::schema`]).
    Postgres(Arc<crate::pg::Pool>),
}

/// The keyring: wrapped partition keys on disk (or in the database), unwrapped ones
/// cached in memory.
pub struct Keyring {
    vault: Vault,
    master: MasterKey,
    /// Index shape for partitions created from now on; existing ones keep theirs.
    params: IndexParams,
    /// Unwrapped keys and when they were read, for at most `ttl`.
    cache: Mutex<HashMap<PartitionId, (Arc<PartitionKeys>, Instant)>>,
    ttl: std::time::Duration,
    /// Held while a key file is created: two threads of this process never write key
    /// material for one partition at once (another process is told apart by the
    /// hard link below).
    creating: Mutex<()>,
    rng: SystemRandom,
}

impl Keyring {
    pub fn open(dir: &Path, master: MasterKey, params: IndexParams) -> Result<Self, KeyError> {
        create_private_dir(dir).map_err(io_err(dir))?;
        Ok(Self::with_vault(
            Vault::Files(dir.to_owned()),
            master,
            params,
        ))
    }

    /// A keyring whose wrapped keys are rows of `relaylog_keys.partition_key`.
    pub fn open_postgres(
        pool: Arc<crate::pg::Pool>,
        master: MasterKey,
        params: IndexParams,
    ) -> Self {
        Self::with_vault(Vault::Postgres(pool), master, params)
    }

    /// The master key the partition keys are wrapped with.
    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    fn with_vault(vault: Vault, master: MasterKey, params: IndexParams) -> Self {
        Self {
            vault,
            master,
            params,
            cache: Mutex::new(HashMap::new()),
            ttl: KEY_TTL,
            creating: Mutex::new(()),
            rng: SystemRandom::new(),
        }
    }

    /// Partitions that have keys, oldest first.
    pub fn partitions(&self) -> Result<Vec<PartitionId>, KeyError> {
        let mut out = Vec::new();
        match &self.vault {
            Vault::Files(dir) => {
                for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
                    let name = entry.map_err(io_err(dir))?.file_name();
                    if let Some(p) = name
                        .to_str()
                        .and_then(|n| n.strip_suffix(".key"))
                        .and_then(PartitionId::parse)
                    {
                        out.push(p);
                    }
                }
            }
            Vault::Postgres(pool) => {
                let rows = pool
                    .get()?
                    .query("SELECT partition FROM relaylog_keys.partition_key", &[])
                    .map_err(crate::pg::PgError::from)?;
                out.extend(
                    rows.iter()
                        .filter_map(|r| PartitionId::parse(r.get::<_, &str>(0))),
                );
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether `partition` has keys. One that cannot be looked at (a keyring not
    /// mounted, the database down) is an error, never "gone".
    pub fn has_keys(&self, partition: PartitionId) -> Result<bool, KeyError> {
        match &self.vault {
            // Looked at, not read: a key file that blocks its readers (a stalled disk)
            // must not stall this too.
            Vault::Files(dir) => {
                let path = key_file(dir, partition);
                match std::fs::metadata(&path) {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(io_err(&path)(e)),
                }
            }
            Vault::Postgres(pool) => Ok(pool
                .get()?
                .query_opt(
                    "SELECT 1 FROM relaylog_keys.partition_key WHERE partition = $1",
                    &[&partition.to_string()],
                )
                .map_err(crate::pg::PgError::from)?
                .is_some()),
        }
    }

    /// [`Keyring::has_keys`], an error read as "no" (as a file that cannot be looked
    /// at was: `verify` then reports the keys missing).
    pub fn exists(&self, partition: PartitionId) -> bool {
        self.has_keys(partition).unwrap_or(false)
    }

    /// The wrapped keys of `partition`, if it has any.
    fn read_wrapped(&self, partition: PartitionId) -> Result<Option<Vec<u8>>, KeyError> {
        match &self.vault {
            Vault::Files(dir) => {
                let path = key_file(dir, partition);
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err(&path)(e)),
                }
            }
            Vault::Postgres(pool) => Ok(pool
                .get()?
                .query_opt(
                    "SELECT wrapped FROM relaylog_keys.partition_key WHERE partition = $1",
                    &[&partition.to_string()],
                )
                .map_err(crate::pg::PgError::from)?
                .map(|r| r.get(0))),
        }
    }

    /// Reads the keys of those of `partitions` not in memory in one query (on
    /// PostgreSQL; nothing to do for key files), so that the [`Keyring::keys`] calls
    /// that follow need no round trip each: a lookup over 13 months of days otherwise
    /// made 396 before its first search. A key that does not unwrap is left out
    /// ([`Keyring::keys`] then says why).
    pub fn prefetch(&self, partitions: &[PartitionId]) -> Result<(), KeyError> {
        let Vault::Postgres(pool) = &self.vault else {
            return Ok(());
        };
        let missing: Vec<String> = partitions
            .iter()
            .filter(|p| self.cached(**p).is_none())
            .map(PartitionId::to_string)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let rows = pool
            .get()?
            .query(
                "SELECT partition, wrapped FROM relaylog_keys.partition_key WHERE partition = ANY($1)",
                &[&missing],
            )
            .map_err(crate::pg::PgError::from)?;
        for r in rows {
            let (name, wrapped): (String, Vec<u8>) = (r.get(0), r.get(1));
            let Some(partition) = PartitionId::parse(&name) else {
                continue;
            };
            if let Ok(keys) = self.unwrap_keys(partition, &wrapped) {
                self.remember(Arc::new(keys));
            }
        }
        Ok(())
    }

    /// The keys of an existing partition; [`KeyError::Shredded`] when its key file is gone.
    pub fn keys(&self, partition: PartitionId) -> Result<Arc<PartitionKeys>, KeyError> {
        if let Some(k) = self.cached(partition) {
            return Ok(k);
        }
        let bytes = self
            .read_wrapped(partition)?
            .ok_or(KeyError::Shredded { partition })?;
        let keys = Arc::new(self.unwrap_keys(partition, &bytes)?);
        Ok(self.remember(keys))
    }

    /// The keys of a partition, creating and durably storing them first if it has none.
    pub fn keys_or_create(&self, partition: PartitionId) -> Result<Arc<PartitionKeys>, KeyError> {
        match self.keys(partition) {
            Err(KeyError::Shredded { .. }) => {}
            other => return other,
        }
        // A poisoned lock guards nothing but this section: still usable.
        let _creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        // Another thread may have created them while this one waited.
        match self.keys(partition) {
            Err(KeyError::Shredded { .. }) => {}
            other => return other,
        }
        let mut material = [0u8; 64];
        self.rng.fill(&mut material).map_err(|_| KeyError::Random)?;
        let file = self.wrap_keys(partition, &material)?;
        let dir =
            match &self.vault {
                Vault::Files(dir) => dir,
                Vault::Postgres(pool) => {
                    // Another node may create them at the same moment: the first row
                    // stays, and both use it.
                    pool.get()?
                    .execute(
                        "INSERT INTO relaylog_keys.partition_key (partition, wrapped, created_us) \
                         VALUES ($1, $2, $3) ON CONFLICT (partition) DO NOTHING",
                        &[&partition.to_string(), &file, &chrono::Utc::now().timestamp_micros()],
                    )
                    .map_err(crate::pg::PgError::from)?;
                    return self.keys(partition);
                }
            };
        let path = key_file(dir, partition);
        // Named by process: another process creating the same keys has its own file.
        let tmp = dir.join(format!(".{partition}.key.{}.tmp", std::process::id()));
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            f.write_all(&file).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        // Another process may have created the keys meanwhile: never replace them.
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&tmp);
                return self.keys(partition);
            }
            Err(e) => return Err(io_err(&path)(e)),
        }
        let _ = std::fs::remove_file(&tmp);
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        let keys = Arc::new(self.unwrap_keys(partition, &file)?);
        Ok(self.remember(keys))
    }

    /// Destroys a partition's keys: the key file is overwritten, synced and removed.
    pub fn shred(&self, partition: PartitionId) -> Result<(), KeyError> {
        self.cache_lock().remove(&partition);
        // And again once the file is gone: a read of it that began before the shred
        // may have put them back meanwhile (`remember` does not after it is gone).
        let result = self.shred_file(partition);
        self.cache_lock().remove(&partition);
        result
    }

    fn shred_file(&self, partition: PartitionId) -> Result<(), KeyError> {
        let dir = match &self.vault {
            Vault::Files(dir) => dir,
            Vault::Postgres(pool) => return shred_row(pool, partition),
        };
        let path = key_file(dir, partition);
        match OpenOptions::new().write(true).open(&path) {
            Ok(mut f) => {
                f.write_all(&[0u8; KEY_FILE_LEN]).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        }
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    }

    #[allow(clippy::type_complexity)]
    fn cache_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<PartitionId, (Arc<PartitionKeys>, Instant)>> {
        // A panic while holding this lock cannot leave the map inconsistent (each
        // operation is a single insert or remove), so a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The keys of `partition` if they are in memory: no I/O.
    pub fn cached(&self, partition: PartitionId) -> Option<Arc<PartitionKeys>> {
        let mut cache = self.cache_lock();
        match cache.get(&partition) {
            Some((keys, read)) if read.elapsed() < self.ttl => Some(keys.clone()),
            Some(_) => {
                cache.remove(&partition);
                None
            }
            None => None,
        }
    }

    /// Drops the keys read more than their time to live ago. Reads drop them too, but
    /// only those they come across: a process that stops reading calls this.
    pub fn forget_stale(&self) {
        let ttl = self.ttl;
        self.cache_lock()
            .retain(|_, (_, read)| read.elapsed() < ttl);
    }

    fn remember(&self, keys: Arc<PartitionKeys>) -> Arc<PartitionKeys> {
        let mut cache = self.cache_lock();
        // Keys stay in memory for `ttl` after they were read: a lookup over a year
        // leaves a year of keys behind it for that long, not longer.
        // Keys whose file a shred removed since they were read are not kept (see
        // `shred`): checked under the lock that `shred` takes after the removal.
        // (A file's presence only: on PostgreSQL no query under this lock, which the
        // runtime's threads take; a shred elsewhere reaches this cache within `ttl`.)
        if matches!(self.vault, Vault::Files(_)) && !self.has_keys(keys.partition).unwrap_or(false)
        {
            return keys;
        }
        let ttl = self.ttl;
        cache.retain(|_, (_, read)| read.elapsed() < ttl);
        if cache.len() >= MAX_CACHED
            && !cache.contains_key(&keys.partition)
            && let Some(first_read) = cache
                .iter()
                .min_by_key(|(_, (_, read))| *read)
                .map(|(p, _)| *p)
        {
            cache.remove(&first_read);
        }
        cache
            .entry(keys.partition)
            .or_insert((keys, Instant::now()))
            .0
            .clone()
    }

    fn aad(partition: PartitionId, header: &[u8]) -> Vec<u8> {
        let mut aad = header.to_vec();
        aad.extend_from_slice(partition.to_string().as_bytes());
        aad
    }

    fn wrap_keys(&self, partition: PartitionId, material: &[u8; 64]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| KeyError::Random)?;
        let mut file = Vec::with_capacity(KEY_FILE_LEN);
        file.extend_from_slice(KEY_MAGIC);
        file.push(self.params.bytes);
        file.extend_from_slice(&self.params.bucket_secs.to_be_bytes());
        let mut body = material.to_vec();
        self.master
            .0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(partition, &file)),
                &mut body,
            )
            .map_err(|_| KeyError::Random)?;
        file.extend_from_slice(&nonce);
        file.extend_from_slice(&body);
        Ok(file)
    }

    fn unwrap_keys(&self, partition: PartitionId, file: &[u8]) -> Result<PartitionKeys, KeyError> {
        if file.len() != KEY_FILE_LEN || &file[..4] != KEY_MAGIC {
            return Err(KeyError::Unwrap { partition });
        }
        let params = IndexParams {
            bytes: file[4],
            bucket_secs: u32::from_be_bytes([file[5], file[6], file[7], file[8]]),
        };
        if !(1..=8).contains(&params.bytes) || params.bucket_secs == 0 {
            return Err(KeyError::Unwrap { partition });
        }
        let header = &file[..HEADER_LEN];
        let nonce = Nonce::try_assume_unique_for_key(&file[HEADER_LEN..HEADER_LEN + NONCE_LEN])
            .map_err(|_| KeyError::Unwrap { partition })?;
        let mut body = file[HEADER_LEN + NONCE_LEN..].to_vec();
        let material = self
            .master
            .0
            .open_in_place(nonce, Aad::from(Self::aad(partition, header)), &mut body)
            .map_err(|_| KeyError::Unwrap { partition })?;
        let data = UnboundKey::new(&aead::AES_256_GCM, &material[..32])
            .map_err(|_| KeyError::Unwrap { partition })?;
        let index = hmac::Key::new(hmac::HMAC_SHA256, &material[32..64]);
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(PartitionKeys {
            partition,
            data: LessSafeKey::new(data),
            index,
            params,
            serial: SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }
}

/// Destroys a partition's row of wrapped keys, and the dead copy MVCC leaves behind:
/// `VACUUM FULL` writes the (small) table anew, without it, and removes the old
/// file. What it cannot reach (the WAL, its archive, base backups, replicas) the
/// README tells the operator how to bound.
fn shred_row(pool: &Arc<crate::pg::Pool>, partition: PartitionId) -> Result<(), KeyError> {
    let mut client = pool.get()?;
    client
        .execute(
            "DELETE FROM relaylog_keys.partition_key WHERE partition = $1",
            &[&partition.to_string()],
        )
        .map_err(crate::pg::PgError::from)?;
    // Every time, not only when a row went: a run that deleted it and failed here
    // is finished by the next. (A transaction older than the delete still sees the
    // row, and VACUUM FULL keeps it for that one: see the README.)
    crate::pg::unbounded(&mut client, |c| {
        c.batch_execute("VACUUM FULL relaylog_keys.partition_key")
    })
    .map_err(crate::pg::PgError::from)?;
    Ok(())
}

/// A partition's key file in the keyring directory `dir`.
pub fn key_file(dir: &Path, partition: PartitionId) -> PathBuf {
    dir.join(format!("{partition}.key"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Granularity;
    use chrono::NaiveDate;

    pub(crate) fn keyring(dir: &Path, bytes: u8) -> Keyring {
        let master = dir.join("master.key");
        if !master.exists() {
            create_master_key(&master).unwrap();
        }
        let params = IndexParams {
            bytes,
            bucket_secs: 60,
        };
        Keyring::open(
            &dir.join("keyring"),
            MasterKey::load(&master).unwrap(),
            params,
        )
        .unwrap()
    }

    fn day(d: u32) -> PartitionId {
        PartitionId::of_date(
            Granularity::Day,
            NaiveDate::from_ymd_opt(2026, 11, d).unwrap(),
        )
    }

    #[test]
    fn master_key_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/master.key");
        create_master_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            create_master_key(&path),
            Err(KeyError::Exists { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            MasterKey::load(&path),
            Err(KeyError::MasterPermissions { .. })
        ));
    }

    /// Key directories are made for their owner alone, whatever the umask.
    #[test]
    fn key_directories_are_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("a/b/master.key");
        create_master_key(&key).unwrap();
        for d in [dir.path().join("a"), dir.path().join("a/b")] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", d.display());
        }
    }

    /// A key directory group or others may write to is refused, whichever of the three
    /// it is; one not made yet is not.
    #[test]
    fn key_directories_others_may_write_to_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::StoreConfig::under(dir.path());
        check_directories(&cfg).unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(keys.join("keyring")).unwrap();
        let set = |p: &Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(&keys, 0o750);
        set(&keys.join("keyring"), 0o700);
        check_directories(&cfg).unwrap();
        for (p, mode) in [
            (keys.clone(), 0o757),
            (keys.clone(), 0o770),
            (keys.join("keyring"), 0o1777),
        ] {
            set(&p, mode);
            let err = check_directories(&cfg).unwrap_err();
            assert!(
                matches!(&err, KeyError::DirectoryWritable { path, .. } if *path == p),
                "{err}"
            );
            assert!(err.to_string().contains("chmod go-w"), "{err}");
            set(&p, 0o700);
        }
        check_directories(&cfg).unwrap();
    }

    #[test]
    fn keys_survive_reopen_and_differ_per_partition() {
        let dir = tempfile::tempdir().unwrap();
        let a = keyring(dir.path(), 8).keys_or_create(day(1)).unwrap();
        let b = keyring(dir.path(), 8).keys_or_create(day(2)).unwrap();
        let a_again = keyring(dir.path(), 8).keys(day(1)).unwrap();
        let tag = a.blind_index(IndexKind::Recipient, "+31612345678");
        assert_eq!(
            tag,
            a_again.blind_index(IndexKind::Recipient, "+31612345678")
        );
        assert_ne!(tag, b.blind_index(IndexKind::Recipient, "+31612345678"));
        assert_ne!(tag, a.blind_index(IndexKind::Originator, "+31612345678"));
    }

    #[test]
    fn shredded_partition_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let ring = keyring(dir.path(), 8);
        let keys = ring.keys_or_create(day(3)).unwrap();
        let sealed = keys.seal(b"row", b"secret").unwrap();
        ring.shred(day(3)).unwrap();
        let fresh = keyring(dir.path(), 8);
        assert!(matches!(fresh.keys(day(3)), Err(KeyError::Shredded { .. })));
        // New keys for the same day do not open the old value.
        let new = fresh.keys_or_create(day(3)).unwrap();
        assert!(new.open(b"row", &sealed).is_err());
    }

    /// Keys another keyring (another process) shredded stay usable through this one
    /// only until its cache lets them go: once their time to live is over.
    #[test]
    fn keys_shredded_elsewhere_leave_the_cache_with_their_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let mut reader = keyring(dir.path(), 8);
        let writer = keyring(dir.path(), 8);
        writer.keys_or_create(day(6)).unwrap();
        reader.keys(day(6)).unwrap();
        writer.shred(day(6)).unwrap();
        assert!(reader.keys(day(6)).is_ok(), "within its ttl, from memory");
        reader.ttl = std::time::Duration::ZERO;
        assert!(reader.cached(day(6)).is_none());
        assert!(matches!(
            reader.keys(day(6)),
            Err(KeyError::Shredded { .. })
        ));
        // And a shred in this process drops them at once, whatever their ttl.
        reader.ttl = KEY_TTL;
        writer.keys_or_create(day(7)).unwrap();
        reader.keys(day(7)).unwrap();
        reader.shred(day(7)).unwrap();
        assert!(matches!(
            reader.keys(day(7)),
            Err(KeyError::Shredded { .. })
        ));
        // Keys read just before a shred are not kept once their file is gone.
        writer.keys_or_create(day(8)).unwrap();
        let read = reader.keys(day(8)).unwrap();
        reader.shred(day(8)).unwrap();
        reader.remember(read);
        assert!(reader.cached(day(8)).is_none());
    }

    #[test]
    fn wrong_master_key_fails_to_unwrap() {
        let dir = tempfile::tempdir().unwrap();
        keyring(dir.path(), 8).keys_or_create(day(4)).unwrap();
        std::fs::remove_file(dir.path().join("master.key")).unwrap();
        assert!(matches!(
            keyring(dir.path(), 8).keys(day(4)),
            Err(KeyError::Unwrap { .. })
        ));
    }

    #[test]
    fn short_index_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keyring(dir.path(), 1).keys_or_create(day(5)).unwrap();
        for v in ["a", "b", "c", "+31612345678"] {
            let t = keys.blind_index(IndexKind::Recipient, v);
            assert!((0..256).contains(&t), "{t}");
        }
    }

    #[test]
    fn seal_binds_aad() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keyring(dir.path(), 8).keys_or_create(day(6)).unwrap();
        let sealed = keys.seal(b"row-1", b"payload").unwrap();
        assert_eq!(keys.open(b"row-1", &sealed).unwrap(), b"payload");
        assert!(keys.open(b"row-2", &sealed).is_err());
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(keys.open(b"row-1", &bad).is_err());
    }
}
