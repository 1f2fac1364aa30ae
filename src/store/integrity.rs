//! Tamper evidence: an RFC 6962 Merkle tree per partition over its records and outcome
//! events, with a head signed by the installation's Ed25519 key after every commit.
//!
//! ```text
//! leaf(row)   = SHA-256(0x00 | "r" | record fields without id)      (outcome: "o")
//! node(l, r)  = SHA-256(0x01 | l | r)
//! root(empty) = SHA-256("")
//! leaf order  : per commit, that commit's records by id, then its outcomes by id
//! head        : (seq, size, record_through, outcome_through, root, frontier, at_us, sig)
//! signed msg  : "relaylog head v1" | partition | 0x00 | seq | size | record_through
//!               | outcome_through | root | at_us          (integers big-endian u64/i64)
//! ```
//!
//! A leaf leaves out the row id: the leaf's position binds it, so the sealing threads
//! can hash a row before the writer gives it its id, and the writer only folds hashes
//! into the tree's right edge (the frontier: one hash per set bit of the size). Ids are
//! never reused (see `schema::INSERT_RECORD`): an erased row's id stays taken, its
//! kept leaf standing in for it.
//! [`verify`] needs no data key: it reads stored bytes and the public key only.

use std::path::{Path, PathBuf};

use std::collections::{BTreeMap, HashMap};

use ring::digest::{self, SHA256};
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use rusqlite::Connection;

use super::events;
use super::keys::{hex, unhex};
use super::partition::PartitionId;
use super::rows::{OutcomeRow, Row};

pub use super::rows::Hash;

#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("signing key {path} already exists: relaylog init never overwrites keys")]
    Exists { path: PathBuf },
    #[error("signing key {path} is missing: run `relaylog init` first")]
    Missing { path: PathBuf },
    #[error("signing key {path} is malformed")]
    Malformed { path: PathBuf },
    #[error("signing key {path} is readable by group or others (mode {mode:o}): chmod 600 it")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("signing key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `<signing-key>.pub`: 64 hex digits of the Ed25519 public key.
pub fn public_key_path(signing_key: &Path) -> PathBuf {
    let mut p = signing_key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Creates the Ed25519 key pair: PKCS#8 private key (mode 0600) and the public key.
pub fn create_signing_key(path: &Path) -> Result<(), SigningKeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| SigningKeyError::Io {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        return Err(SigningKeyError::Exists {
            path: path.to_owned(),
        });
    }
    if let Some(dir) = path.parent() {
        crate::store::keys::create_private_dir(dir).map_err(io)?;
    }
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).map_err(|_| {
        SigningKeyError::Malformed {
            path: path.to_owned(),
        }
    })?;
    let pair =
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| SigningKeyError::Malformed {
            path: path.to_owned(),
        })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(format!("{}\n", hex(pkcs8.as_ref())).as_bytes())
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::write(
        public_key_path(path),
        format!("{}\n", hex(pair.public_key().as_ref())),
    )
    .map_err(io)?;
    Ok(())
}

/// The private signing key, refused when group or others may read it (as the master
/// key is).
pub fn load_signing_key(path: &Path) -> Result<Ed25519KeyPair, SigningKeyError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let io = |source| SigningKeyError::Io {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SigningKeyError::Missing {
                path: path.to_owned(),
            });
        }
        Err(source) => return Err(io(source)),
    };
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SigningKeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    // A PKCS#8 Ed25519 key is 85 bytes, 171 as hex: anything much larger is not one.
    file.take(4096).read_to_string(&mut text).map_err(io)?;
    let der = unhex(text.trim()).ok_or_else(|| SigningKeyError::Malformed {
        path: path.to_owned(),
    })?;
    Ed25519KeyPair::from_pkcs8(&der).map_err(|_| SigningKeyError::Malformed {
        path: path.to_owned(),
    })
}

/// The public key, from `<signing-key>.pub`: all that `verify` needs.
pub fn load_public_key(signing_key: &Path) -> Result<Vec<u8>, SigningKeyError> {
    read_public_key(&public_key_path(signing_key))
}

/// Reads a `.pub` file (64 hex digits) wherever it is: a machine that checks exports
/// may hold only this file.
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, SigningKeyError> {
    let path = path.to_owned();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SigningKeyError::Missing { path });
        }
        Err(source) => return Err(SigningKeyError::Io { path, source }),
    };
    unhex(text.trim())
        .filter(|k| k.len() == 32)
        .ok_or(SigningKeyError::Malformed { path })
}

fn sha(parts: &[&[u8]]) -> Hash {
    let mut ctx = digest::Context::new(&SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

pub fn node(left: &Hash, right: &Hash) -> Hash {
    // One call on the bytes laid out (the writer makes a node for every leaf).
    let mut bytes = [0u8; 65];
    bytes[0] = 1;
    bytes[1..33].copy_from_slice(left);
    bytes[33..].copy_from_slice(right);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&SHA256, &bytes).as_ref());
    out
}

/// A leaf's bytes fed into SHA-256 as they are laid out, through a buffer on the
/// stack: the digest of the same bytes, with no allocation per row and a few calls of
/// `Context::update` per leaf rather than one per field (each call has a cost of its
/// own, and a leaf has a dozen fields of a few bytes).
struct LeafHasher {
    ctx: digest::Context,
    buf: [u8; LEAF_BUFFER],
    len: usize,
}

/// What [`LeafHasher`] gathers before it hashes: every fixed field of a record's or
/// an outcome's leaf (up to about 80 bytes) at once.
const LEAF_BUFFER: usize = 128;

impl LeafHasher {
    fn new() -> Self {
        LeafHasher {
            ctx: digest::Context::new(&SHA256),
            buf: [0; LEAF_BUFFER],
            len: 0,
        }
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > LEAF_BUFFER {
            self.ctx.update(&self.buf[..self.len]);
            self.len = 0;
            if bytes.len() > LEAF_BUFFER {
                self.ctx.update(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }

    fn finish(mut self) -> Hash {
        self.ctx.update(&self.buf[..self.len]);
        let mut out = [0u8; 32];
        out.copy_from_slice(self.ctx.finish().as_ref());
        out
    }
}

/// The leaf of a record row (everything but its id).
pub fn record_leaf(r: &Row) -> Hash {
    let mut b = LeafHasher::new();
    b.extend_from_slice(&[0, b'r']);
    b.extend_from_slice(&r.submission.to_be_bytes());
    b.extend_from_slice(&r.ordinal.to_be_bytes());
    b.extend_from_slice(&r.at_us.to_be_bytes());
    b.extend_from_slice(&r.bucket.to_be_bytes());
    b.extend_from_slice(&[r.protocol, r.service, r.recipient_form]);
    b.extend_from_slice(&r.segments.to_be_bytes());
    b.extend_from_slice(&r.account_ix.to_be_bytes());
    b.extend_from_slice(&r.ip_ix.to_be_bytes());
    match r.originator_ix {
        Some(o) => {
            b.push(1);
            b.extend_from_slice(&o.to_be_bytes());
        }
        None => b.push(0),
    }
    b.extend_from_slice(&r.recipient_ix.to_be_bytes());
    b.extend_from_slice(&(r.sealed.len() as u32).to_be_bytes());
    b.extend_from_slice(&r.sealed);
    b.finish()
}

/// The leaf of an outcome event (everything but its id).
pub fn outcome_leaf(o: &OutcomeRow) -> Hash {
    let mut b = LeafHasher::new();
    b.extend_from_slice(&[0, b'o']);
    b.extend_from_slice(&o.submission.to_be_bytes());
    b.extend_from_slice(&o.at_us.to_be_bytes());
    b.push(o.outcome);
    match o.upstream_status {
        Some(s) => {
            b.push(1);
            b.extend_from_slice(&s.to_be_bytes());
        }
        None => b.push(0),
    }
    match o.gateway_code {
        Some(c) => {
            b.push(1);
            b.extend_from_slice(&c.to_be_bytes());
        }
        None => b.push(0),
    }
    match &o.message_id_sealed {
        Some(m) => {
            b.push(1);
            b.extend_from_slice(&(m.len() as u32).to_be_bytes());
            b.extend_from_slice(m);
        }
        None => b.push(0),
    }
    // The SMTP fields, only where there are any: older leaves hash as they did.
    if o.enhanced_status.is_some() || o.size_bytes.is_some() {
        b.push(b'x');
        match &o.enhanced_status {
            Some(e) => {
                b.push(1);
                b.extend_from_slice(&(e.len() as u32).to_be_bytes());
                b.extend_from_slice(e.as_bytes());
            }
            None => b.push(0),
        }
        match o.size_bytes {
            Some(n) => {
                b.push(1);
                b.extend_from_slice(&n.to_be_bytes());
            }
            None => b.push(0),
        }
    }
    // The SMPP fields, likewise only where there are any.
    if o.ordinal.is_some()
        || o.receipt_state.is_some()
        || o.receipt_error.is_some()
        || o.receipt_done.is_some()
    {
        b.push(b'd');
        match o.ordinal {
            Some(n) => {
                b.push(1);
                b.extend_from_slice(&n.to_be_bytes());
            }
            None => b.push(0),
        }
        for text in [&o.receipt_state, &o.receipt_error, &o.receipt_done] {
            match text {
                Some(t) => {
                    b.push(1);
                    b.extend_from_slice(&(t.len() as u32).to_be_bytes());
                    b.extend_from_slice(t.as_bytes());
                }
                None => b.push(0),
            }
        }
    }
    b.finish()
}

/// The right edge of a Merkle tree: enough to append leaves and compute the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees of the right edge, largest first.
    stack: Vec<Hash>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut n = self.size;
        while n & 1 == 1 {
            // The stack has one entry per set bit of size: it cannot be empty here.
            let Some(left) = self.stack.pop() else { break };
            h = node(&left, &h);
            n >>= 1;
        }
        self.stack.push(h);
        self.size += 1;
    }

    /// RFC 6962 Merkle Tree Hash of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(mut acc) = it.next().copied() else {
            return sha(&[]);
        };
        for left in it {
            acc = node(left, &acc);
        }
        acc
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.stack.concat()
    }

    pub fn from_bytes(size: u64, bytes: &[u8]) -> Option<Frontier> {
        if !bytes.len().is_multiple_of(32) || bytes.len() / 32 != size.count_ones() as usize {
            return None;
        }
        let stack = bytes
            .chunks(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Some(Frontier { size, stack })
    }
}

/// One signed head, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub size: u64,
    pub record_through: i64,
    pub outcome_through: i64,
    pub root: Hash,
    pub at_us: i64,
}

impl Head {
    pub fn message(&self, partition: PartitionId) -> Vec<u8> {
        self.message_of(partition, None)
    }

    /// The signed bytes of this head of `partition`'s tree on `node` (PostgreSQL, where
    /// each node keeps a tree per partition): the node's name follows the partition's,
    /// so that one node's head cannot pass for another's. Without a node (SQLite, one
    /// tree per partition) the bytes are those of [`Head::message`].
    pub fn message_of(&self, partition: PartitionId, node: Option<&str>) -> Vec<u8> {
        let mut m = b"relaylog head v1".to_vec();
        m.extend_from_slice(partition.to_string().as_bytes());
        if let Some(node) = node {
            m.push(b'/');
            m.extend_from_slice(node.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&self.seq.to_be_bytes());
        m.extend_from_slice(&self.size.to_be_bytes());
        m.extend_from_slice(&self.record_through.to_be_bytes());
        m.extend_from_slice(&self.outcome_through.to_be_bytes());
        m.extend_from_slice(&self.root);
        m.extend_from_slice(&self.at_us.to_be_bytes());
        m
    }
}

const HEAD_SELECT: &str =
    "SELECT seq, size, record_through, outcome_through, root, at_us, signature FROM head";

/// A head row and its signature. A root of the wrong length reads as zeros, which the
/// signature over it then fails to verify: damage, reported as such.
fn read_head(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Head, Vec<u8>)> {
    let root: Vec<u8> = r.get(4)?;
    let mut hash = [0u8; 32];
    if root.len() == 32 {
        hash.copy_from_slice(&root);
    }
    Ok((
        Head {
            seq: r.get(0)?,
            size: r.get::<_, i64>(1)? as u64,
            record_through: r.get(2)?,
            outcome_through: r.get(3)?,
            root: hash,
            at_us: r.get(5)?,
        },
        r.get(6)?,
    ))
}

/// The last signed head of a partition and its signature, if it has one.
pub fn latest_head(conn: &Connection) -> rusqlite::Result<Option<(Head, Vec<u8>)>> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        &format!("{HEAD_SELECT} ORDER BY seq DESC LIMIT 1"),
        [],
        read_head,
    )
    .optional()
}

pub const INSERT_HEAD: &str = "INSERT INTO head (seq, size, record_through, outcome_through, root, frontier, at_us, signature) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Sign a head at least this often while leaves arrive.
pub const HEAD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// ... or as soon as this many leaves wait for one.
pub const HEAD_MAX_LEAVES: usize = 65_536;

/// Rows this recent may still be waiting for their signed head when `verify` runs
/// beside a live writer.
const PENDING_GRACE_US: i64 = 10_000_000;

/// The writer's view of a partition's tree: the tree as of the last signed head, and
/// the leaves since, kept apart (records, outcomes) until the next head folds them in
/// the order `verify` uses: that head's records by id, then its outcomes by id.
#[derive(Debug, Clone)]
pub struct TreeState {
    pub frontier: Frontier,
    pub seq: i64,
    pub record_through: i64,
    pub outcome_through: i64,
    records: Vec<Hash>,
    outcomes: Vec<Hash>,
    last_record: i64,
    last_outcome: i64,
    last_signed: std::time::Instant,
}

impl Default for TreeState {
    fn default() -> Self {
        Self {
            frontier: Frontier::default(),
            seq: 0,
            record_through: 0,
            outcome_through: 0,
            records: Vec::new(),
            outcomes: Vec::new(),
            last_record: 0,
            last_outcome: 0,
            last_signed: std::time::Instant::now(),
        }
    }
}

impl TreeState {
    /// Loads the state from the last head, and the leaves of every row written after
    /// it (a writer that stopped before signing them), in id order. A row erased
    /// before its head was signed contributes the leaf its erasure statement kept, as
    /// [`verify`] will fold it.
    ///
    /// With the installation's key, only erasure statements signed by it count: a
    /// statement forged into the file cannot put its leaves (or its ids) into the
    /// next signed head. (`verify` reports it as damage.)
    pub fn load(
        conn: &Connection,
        partition: PartitionId,
        key: Option<&Ed25519KeyPair>,
    ) -> rusqlite::Result<TreeState> {
        use rusqlite::OptionalExtension;
        let last = conn
            .query_row(
                "SELECT seq, size, record_through, outcome_through, frontier FROM head ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok(LastHead { seq: r.get(0)?, size: r.get(1)?, record_through: r.get(2)?, outcome_through: r.get(3)?, frontier: r.get(4)? }),
            )
            .optional()?;
        let statements = erasure_statements(conn)?;
        let (rt, ot) = last
            .as_ref()
            .map_or((0, 0), |h| (h.record_through, h.outcome_through));
        let mut stmt = conn.prepare(&format!("{RECORD_SELECT} WHERE id > ?1 ORDER BY id"))?;
        let records = stmt.query_map([rt], read_record)?;
        let mut scan = events::Scan::after(conn, ot)?;
        let outcomes = scan.events()?;
        TreeState::resume(last, &statements, key, partition, None, records, outcomes)
    }

    /// [`TreeState::load`] from what it reads: the last head, the erasure statements,
    /// and the rows after the head (in id order), of `node`'s tree (PostgreSQL) or the
    /// partition's one tree (`None`).
    pub fn resume<E>(
        last: Option<LastHead>,
        statements: &[ErasureStatement],
        key: Option<&Ed25519KeyPair>,
        partition: PartitionId,
        node: Option<&str>,
        records: impl Iterator<Item = Result<(i64, Row), E>>,
        outcomes: impl Iterator<Item = Result<(i64, OutcomeRow), E>>,
    ) -> Result<TreeState, E> {
        let mut t = TreeState::after(last);
        let public = key.map(|k| k.public_key().as_ref());
        let public = public.map(|k| signature::UnparsedPublicKey::new(&signature::ED25519, k));
        let erased = erased_leaves(statements, (t.record_through, t.outcome_through), |s| {
            public.as_ref().is_none_or(|p| s.signed(partition, node, p))
        });
        let mut leaves: BTreeMap<i64, Hash> = erased.records.into_iter().collect();
        for row in records {
            let (id, row) = row?;
            leaves.insert(id, record_leaf(&row));
        }
        for (id, leaf) in leaves {
            t.push_record(id, leaf);
        }
        let mut leaves: BTreeMap<i64, Hash> = erased.outcomes.into_iter().collect();
        for event in outcomes {
            let (id, row) = event?;
            leaves.insert(id, outcome_leaf(&row));
        }
        for (id, leaf) in leaves {
            t.push_outcome(id, leaf);
        }
        Ok(t)
    }

    /// The highest record id this partition has ever held (signed, unsigned or
    /// erased): the next record's id is one more. Ids are never reused.
    pub fn last_record(&self) -> i64 {
        self.last_record
    }

    /// As [`TreeState::last_record`], for outcome events.
    pub fn last_outcome(&self) -> i64 {
        self.last_outcome
    }

    pub fn push_record(&mut self, id: i64, leaf: Hash) {
        self.records.push(leaf);
        self.last_record = id;
    }

    pub fn push_outcome(&mut self, id: i64, leaf: Hash) {
        self.outcomes.push(leaf);
        self.last_outcome = id;
    }

    pub fn unsigned(&self) -> usize {
        self.records.len() + self.outcomes.len()
    }

    /// Time for a head: leaves waiting, and the interval passed or the cap reached.
    pub fn due(&self) -> bool {
        let n = self.unsigned();
        n >= HEAD_MAX_LEAVES || (n > 0 && self.last_signed.elapsed() >= HEAD_INTERVAL)
    }

    /// Folds the waiting leaves into the tree and appends a signed head for them.
    pub fn sign_head(
        &mut self,
        conn: &Connection,
        key: &Ed25519KeyPair,
        partition: PartitionId,
        at_us: i64,
    ) -> rusqlite::Result<()> {
        let Some(next) = self.next_head(key, partition, None, at_us) else {
            return Ok(());
        };
        conn.prepare_cached(INSERT_HEAD)?
            .execute(rusqlite::params![
                next.head.seq,
                next.head.size as i64,
                next.head.record_through,
                next.head.outcome_through,
                next.head.root.to_vec(),
                next.frontier.to_bytes(),
                next.head.at_us,
                next.signature,
            ])?;
        // Only now, with the head written into the caller's transaction: if that fails,
        // the writer drops this state and reloads it from the file.
        self.signed(next);
        Ok(())
    }

    /// The state a tree resumes from after its last signed head (`None`: none yet),
    /// before the leaves written after it are pushed.
    pub fn after(last: Option<LastHead>) -> TreeState {
        match last {
            None => TreeState::default(),
            Some(h) => TreeState {
                frontier: Frontier::from_bytes(h.size as u64, &h.frontier).unwrap_or_default(),
                seq: h.seq,
                record_through: h.record_through,
                outcome_through: h.outcome_through,
                last_record: h.record_through,
                last_outcome: h.outcome_through,
                ..TreeState::default()
            },
        }
    }

    /// The head over the waiting leaves, signed (for `node`'s tree, see
    /// [`Head::message_of`]); `None` when none wait. The state does not change until
    /// the caller has written it and calls [`TreeState::signed`].
    pub fn next_head(
        &self,
        key: &Ed25519KeyPair,
        partition: PartitionId,
        node: Option<&str>,
        at_us: i64,
    ) -> Option<NextHead> {
        if self.unsigned() == 0 {
            return None;
        }
        let mut frontier = self.frontier.clone();
        for leaf in self.records.iter().chain(&self.outcomes) {
            frontier.push(*leaf);
        }
        let head = Head {
            seq: self.seq + 1,
            size: frontier.size(),
            record_through: self.last_record,
            outcome_through: self.last_outcome,
            root: frontier.root(),
            at_us,
        };
        let signature = key
            .sign(&head.message_of(partition, node))
            .as_ref()
            .to_vec();
        Some(NextHead {
            head,
            frontier,
            signature,
        })
    }

    /// Moves the tree to `next`, written into the transaction about to commit.
    pub fn signed(&mut self, next: NextHead) {
        self.frontier = next.frontier;
        self.seq = next.head.seq;
        self.record_through = next.head.record_through;
        self.outcome_through = next.head.outcome_through;
        self.records.clear();
        self.outcomes.clear();
        self.last_signed = std::time::Instant::now();
    }
}

/// A partition's last signed head, as the writer resumes from it.
#[derive(Debug, Clone)]
pub struct LastHead {
    pub seq: i64,
    pub size: i64,
    pub record_through: i64,
    pub outcome_through: i64,
    pub frontier: Vec<u8>,
}

/// A head ready to be written: the head, the tree's frontier after it, its signature.
#[derive(Debug, Clone)]
pub struct NextHead {
    pub head: Head,
    pub frontier: Frontier,
    pub signature: Vec<u8>,
}

const RECORD_SELECT: &str = "SELECT id, submission, ordinal, at_us, bucket, protocol, service, recipient_form, segments, \
     account_ix, ip_ix, originator_ix, recipient_ix, sealed FROM record";
/// What `verify` found in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// Rows exist that no signed head covers, and there is no head at all.
    NoHeads {
        records: i64,
        outcomes: i64,
    },
    HeadSignature {
        seq: i64,
    },
    /// Rows in a head's range are gone.
    Removed {
        table: &'static str,
        ids: Vec<i64>,
    },
    /// Rows past the last signed head.
    Inserted {
        table: &'static str,
        ids: Vec<i64>,
    },
    /// The leaves of a head's range do not hash to its signed root: a row was changed.
    Changed {
        seq: i64,
        records: (i64, i64),
        outcomes: (i64, i64),
    },
    /// The heads themselves are not consecutive (a head row was deleted or edited).
    HeadsBroken {
        seq: i64,
    },
    /// An erasure statement whose signature does not verify: its rows count as removed.
    ErasureSignature {
        id: i64,
    },
    /// PostgreSQL: the posting lists (account, client IP and originator blind indexes)
    /// do not hold exactly the records' entries. `unlisted`: entries of records no
    /// posting holds, records that lookups, disclosures and offboarding by those
    /// kinds would miss; `unmatched`: posting entries that are no record's.
    Postings {
        unlisted: i64,
        unmatched: i64,
    },
    Unreadable(String),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids = |v: &Vec<i64>| {
            let shown: Vec<String> = v.iter().take(10).map(|i| i.to_string()).collect();
            let more = if v.len() > 10 {
                format!(" and {} more", v.len() - 10)
            } else {
                String::new()
            };
            format!("{}{more}", shown.join(", "))
        };
        match self {
            Damage::NoHeads { records, outcomes } => write!(
                f,
                "tree truncated: no signed head, but {records} record(s) and {outcomes} outcome(s)"
            ),
            Damage::HeadSignature { seq } => write!(f, "head {seq}: signature bad"),
            Damage::Removed { table, ids: v } => write!(f, "{table} removed: id {}", ids(v)),
            Damage::Inserted { table, ids: v } => write!(
                f,
                "{table} inserted after the last signed head: id {}",
                ids(v)
            ),
            Damage::Changed {
                seq,
                records,
                outcomes,
            } => write!(
                f,
                "record changed: head {seq} (records {}..={}, outcomes {}..={}) does not match its signed root",
                records.0, records.1, outcomes.0, outcomes.1
            ),
            Damage::HeadsBroken { seq } => {
                write!(f, "heads broken at {seq}: a head was removed or edited")
            }
            Damage::ErasureSignature { id } => {
                write!(
                    f,
                    "erasure statement {id} is not signed by this installation"
                )
            }
            Damage::Postings {
                unlisted,
                unmatched,
            } => write!(
                f,
                "postings do not match the records: {unlisted} record entr(ies) in no posting \
                 (lookups by account, address or originator miss them), {unmatched} posting \
                 entr(ies) of no record"
            ),
            Damage::Unreadable(m) => write!(f, "unreadable: {m}"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Verified {
    /// Rows written in the last seconds that no signed head covers yet (a live writer
    /// signs within `HEAD_INTERVAL`): not damage.
    pub pending: i64,
    pub records: i64,
    pub outcomes: i64,
    pub heads: i64,
    /// Rows removed under signed erasure statements (contract end), their leaves kept.
    pub erased: i64,
    pub erasures: i64,
    pub damage: Vec<Damage>,
}

fn read_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Row)> {
    Ok((
        r.get(0)?,
        Row {
            submission: r.get(1)?,
            ordinal: r.get(2)?,
            at_us: r.get(3)?,
            bucket: r.get(4)?,
            protocol: r.get(5)?,
            service: r.get(6)?,
            recipient_form: r.get(7)?,
            segments: r.get(8)?,
            account_ix: r.get(9)?,
            ip_ix: r.get(10)?,
            originator_ix: r.get(11)?,
            recipient_ix: r.get(12)?,
            sealed: r.get(13)?,
            leaf: [0; 32],
        },
    ))
}

/// Recomputes a partition's tree head by head and checks every signature.
pub fn verify(
    conn: &Connection,
    partition: PartitionId,
    public_key: &[u8],
    now_us: i64,
) -> Verified {
    match verify_inner(conn, partition, public_key, now_us) {
        Ok(v) => v,
        Err(e) => Verified {
            damage: vec![Damage::Unreadable(e.to_string())],
            ..Verified::default()
        },
    }
}

fn verify_inner(
    conn: &Connection,
    partition: PartitionId,
    public_key: &[u8],
    now_us: i64,
) -> rusqlite::Result<Verified> {
    let heads = conn
        .prepare(&format!("{HEAD_SELECT} ORDER BY seq"))?
        .query_map([], read_head)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut records = conn.prepare(&format!("{RECORD_SELECT} ORDER BY id"))?;
    let mut outcomes = events::Scan::all(conn)?;
    let statements = erasure_statements(conn)?;
    let input = TreeInput {
        heads,
        records: records.query_map([], read_record)?,
        outcomes: outcomes.events()?,
        statements,
        frontier_at: |seq| rebuild_frontier_from_head(conn, seq),
    };
    verify_tree(input, partition, None, public_key, now_us)
}

/// What verifying one tree reads: its signed heads in order (each with its
/// signature), its rows in id order, its erasure statements, and the frontier any
/// head stored (to resynchronise after damage).
pub struct TreeInput<R, O, F> {
    pub heads: Vec<(Head, Vec<u8>)>,
    pub records: R,
    pub outcomes: O,
    pub statements: Vec<ErasureStatement>,
    pub frontier_at: F,
}

/// Recomputes a tree head by head and checks every signature: `node`'s tree of
/// `partition` (PostgreSQL), or the partition's one tree (`None`, SQLite). The engine
/// that read the input fails with its own error type.
pub fn verify_tree<E, R, O, F>(
    input: TreeInput<R, O, F>,
    partition: PartitionId,
    node: Option<&str>,
    public_key: &[u8],
    now_us: i64,
) -> Result<Verified, E>
where
    R: Iterator<Item = Result<(i64, Row), E>>,
    O: Iterator<Item = Result<(i64, OutcomeRow), E>>,
    F: FnMut(i64) -> Option<Frontier>,
{
    let TreeInput {
        heads,
        records,
        outcomes,
        statements,
        mut frontier_at,
    } = input;
    let key = signature::UnparsedPublicKey::new(&signature::ED25519, public_key);
    let mut out = Verified {
        heads: heads.len() as i64,
        ..Verified::default()
    };
    let mut rec_iter = records.peekable();
    let mut out_iter = outcomes.peekable();
    let (erased_r, erased_o, accepted) =
        load_erased(&statements, partition, node, &key, &mut out.damage);
    out.erasures = accepted;
    let mut frontier = Frontier::default();
    let (mut prev_r, mut prev_o) = (0i64, 0i64);
    for (i, (head, sig)) in heads.iter().enumerate() {
        if head.seq != i as i64 + 1 || head.record_through < prev_r || head.outcome_through < prev_o
        {
            out.damage.push(Damage::HeadsBroken { seq: head.seq });
            return Ok(out);
        }
        if key.verify(&head.message_of(partition, node), sig).is_err() {
            out.damage.push(Damage::HeadSignature { seq: head.seq });
        }
        // This head's records by id, then its outcomes by id: the writer's leaf order.
        let (n, removed_r) = fold_range(
            &mut rec_iter,
            (prev_r, head.record_through),
            &erased_r,
            &mut out.erased,
            &mut frontier,
            record_leaf,
        )?;
        out.records += n;
        let (n, removed_o) = fold_range(
            &mut out_iter,
            (prev_o, head.outcome_through),
            &erased_o,
            &mut out.erased,
            &mut frontier,
            outcome_leaf,
        )?;
        out.outcomes += n;
        if !removed_r.is_empty() {
            out.damage.push(Damage::Removed {
                table: "record",
                ids: removed_r,
            });
        }
        if !removed_o.is_empty() {
            out.damage.push(Damage::Removed {
                table: "outcome",
                ids: removed_o,
            });
        }
        if frontier.root() != head.root || frontier.size() != head.size {
            if !out
                .damage
                .iter()
                .any(|d| matches!(d, Damage::Removed { .. }))
            {
                out.damage.push(Damage::Changed {
                    seq: head.seq,
                    records: (prev_r + 1, head.record_through),
                    outcomes: (prev_o + 1, head.outcome_through),
                });
            }
            // Later heads cannot match a tree that already diverged: resynchronise on
            // the signed state so that later damage is still told apart.
            frontier = frontier_at(head.seq).unwrap_or(frontier);
        }
        prev_r = head.record_through;
        prev_o = head.outcome_through;
    }
    // Rows past the last signed head: a running writer signs within HEAD_INTERVAL, so
    // only the last moments may be unsigned. Anything older (or dated in the future)
    // was put there by someone else.
    let recent = |at: i64| at >= now_us - PENDING_GRACE_US && at <= now_us + 1_000_000;
    let (mut extra_r, mut extra_o) = (Vec::new(), Vec::new());
    let mut pending = 0i64;
    for next in rec_iter {
        let (id, row) = next?;
        if recent(row.at_us) {
            pending += 1
        } else {
            extra_r.push(id)
        }
    }
    for next in out_iter {
        let (id, row) = next?;
        if recent(row.at_us) {
            pending += 1
        } else {
            extra_o.push(id)
        }
    }
    out.pending = pending;
    if heads.is_empty() && (!extra_r.is_empty() || !extra_o.is_empty()) {
        out.damage.push(Damage::NoHeads {
            records: extra_r.len() as i64,
            outcomes: extra_o.len() as i64,
        });
        return Ok(out);
    }
    out.records += extra_r.len() as i64;
    out.outcomes += extra_o.len() as i64;
    if !extra_r.is_empty() {
        out.damage.push(Damage::Inserted {
            table: "record",
            ids: extra_r,
        });
    }
    if !extra_o.is_empty() {
        out.damage.push(Damage::Inserted {
            table: "outcome",
            ids: extra_o,
        });
    }
    Ok(out)
}

/// One partition's verdict, as `relaylog verify` reports it.
#[derive(Debug, Clone)]
pub struct PartitionReport {
    pub partition: PartitionId,
    /// Whose tree (PostgreSQL: each node keeps one per partition); `None` on SQLite.
    pub node: Option<String>,
    pub verified: Verified,
    /// The partition's keys are gone: values unreadable, hashes still checked.
    pub keys_missing: bool,
}

impl PartitionReport {
    pub fn ok(&self) -> bool {
        self.verified.damage.is_empty() && !self.keys_missing
    }
}

/// Verifies every partition overlapping `[since, until)`, oldest first.
pub fn verify_store(
    cfg: &crate::config::StoreConfig,
    keyring: Option<&super::keys::Keyring>,
    public_key: &[u8],
    since: i64,
    until: i64,
) -> std::io::Result<Vec<PartitionReport>> {
    if let crate::config::Backend::Postgres(pg) = &cfg.backend {
        return super::pgstore::verify_store(cfg, pg, keyring, public_key, since, until)
            .map_err(std::io::Error::other);
    }
    let mut out = Vec::new();
    for p in super::partition::list(&cfg.path)?
        .into_iter()
        .filter(|p| p.start_micros() < until && p.end_micros() > since)
    {
        let verified = match super::schema::open_for_read(&p.path_in(&cfg.path)) {
            Ok(conn) => verify(&conn, p, public_key, chrono::Utc::now().timestamp_micros()),
            Err(e) => Verified {
                damage: vec![Damage::Unreadable(e.to_string())],
                ..Verified::default()
            },
        };
        let keys_missing = keyring.is_some_and(|k| !k.exists(p));
        out.push(PartitionReport {
            partition: p,
            node: None,
            verified,
            keys_missing,
        });
    }
    Ok(out)
}

/// Folds the rows with ids in `(prev, through]` into the tree, in id order. Returns
/// how many rows there were and which ids of the range are missing. A row that cannot
/// be read is an error (the partition is unreadable), never a gap.
/// Folds the rows of one head's id range into the tree, in id order. A row that is
/// gone but named by a signed erasure statement contributes its kept leaf (counted in
/// `erased_n`); any other gap is a removal.
fn fold_range<T, E>(
    rows: &mut std::iter::Peekable<impl Iterator<Item = Result<(i64, T), E>>>,
    (prev, through): (i64, i64),
    erased: &HashMap<i64, Hash>,
    erased_n: &mut i64,
    frontier: &mut Frontier,
    leaf: fn(&T) -> Hash,
) -> Result<(i64, Vec<i64>), E> {
    let (mut n, mut missing, mut expect) = (0i64, Vec::new(), prev + 1);
    let mut gap = |from: i64, to: i64, frontier: &mut Frontier, missing: &mut Vec<i64>| {
        for id in from..to {
            match erased.get(&id) {
                Some(l) => {
                    frontier.push(*l);
                    *erased_n += 1;
                }
                None => missing.push(id),
            }
        }
    };
    while let Some(next) = rows.next_if(|r| r.as_ref().map_or(true, |(id, _)| *id <= through)) {
        let (id, row) = next?;
        gap(expect, id, frontier, &mut missing);
        expect = id + 1;
        frontier.push(leaf(&row));
        n += 1;
    }
    gap(expect, through + 1, frontier, &mut missing);
    Ok((n, missing))
}

const ERASED_RECORD: u8 = b'r';
const ERASED_OUTCOME: u8 = b'o';

/// What an erasure statement keeps of the rows it removes: per row a kind byte, its
/// id and its Merkle leaf (41 bytes), which is all a tree needs to be recomputed.
#[derive(Default)]
pub struct ErasedEntries(pub Vec<u8>);

impl ErasedEntries {
    pub fn record(&mut self, id: i64, row: &Row) {
        self.push(ERASED_RECORD, id, record_leaf(row));
    }

    pub fn outcome(&mut self, id: i64, row: &OutcomeRow) {
        self.push(ERASED_OUTCOME, id, outcome_leaf(row));
    }

    fn push(&mut self, kind: u8, id: i64, leaf: Hash) {
        self.0.push(kind);
        self.0.extend_from_slice(&id.to_be_bytes());
        self.0.extend_from_slice(&leaf);
    }
}

/// What an erasure statement's signature covers.
pub fn erasure_message(
    partition: PartitionId,
    id: i64,
    at_us: i64,
    reason: &str,
    entries: &[u8],
) -> Vec<u8> {
    erasure_message_of(partition, None, id, at_us, reason, entries)
}

/// [`erasure_message`] of `node`'s tree (PostgreSQL; see [`Head::message_of`]).
pub fn erasure_message_of(
    partition: PartitionId,
    node: Option<&str>,
    id: i64,
    at_us: i64,
    reason: &str,
    entries: &[u8],
) -> Vec<u8> {
    let mut m = b"relaylog erasure v1".to_vec();
    m.extend_from_slice(partition.to_string().as_bytes());
    if let Some(node) = node {
        m.push(b'/');
        m.extend_from_slice(node.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&at_us.to_be_bytes());
    m.extend_from_slice(reason.as_bytes());
    m.push(0);
    m.extend_from_slice(&sha(&[entries]));
    m
}

/// The kept leaves of every validly signed erasure: (records, outcomes, statements).
#[allow(clippy::type_complexity)]
fn load_erased(
    statements: &[ErasureStatement],
    partition: PartitionId,
    node: Option<&str>,
    key: &signature::UnparsedPublicKey<&[u8]>,
    damage: &mut Vec<Damage>,
) -> (HashMap<i64, Hash>, HashMap<i64, Hash>, i64) {
    let mut accepted = 0;
    let erased = erased_leaves(statements, (0, 0), |s| {
        if !s.signed(partition, node, key) {
            damage.push(Damage::ErasureSignature { id: s.id });
            return false;
        }
        accepted += 1;
        true
    });
    (erased.records, erased.outcomes, accepted)
}

/// One stored erasure statement.
pub struct ErasureStatement {
    pub id: i64,
    pub at_us: i64,
    pub reason: String,
    pub entries: Vec<u8>,
    pub signature: Vec<u8>,
    /// The public key that signed it when not the tree's own (PostgreSQL: an officer
    /// on one node erases another node's rows); `None`: the tree's key.
    pub signer_key: Option<Vec<u8>>,
}

impl ErasureStatement {
    /// Whether it is signed, for `node`'s tree of `partition`, by its signer's key
    /// (`tree_key` unless it names another).
    fn signed(
        &self,
        partition: PartitionId,
        node: Option<&str>,
        tree_key: &signature::UnparsedPublicKey<&[u8]>,
    ) -> bool {
        let message = erasure_message_of(
            partition,
            node,
            self.id,
            self.at_us,
            &self.reason,
            &self.entries,
        );
        match &self.signer_key {
            Some(k) => signature::UnparsedPublicKey::new(&signature::ED25519, k)
                .verify(&message, &self.signature)
                .is_ok(),
            None => tree_key.verify(&message, &self.signature).is_ok(),
        }
    }
}

/// Kept leaves of erased rows, by row id.
#[derive(Default)]
struct Erased {
    records: HashMap<i64, Hash>,
    outcomes: HashMap<i64, Hash>,
}

/// The erasure statements of a partition file, in id order (none in a partition
/// written before erasure existed).
fn erasure_statements(conn: &Connection) -> rusqlite::Result<Vec<ErasureStatement>> {
    let exists: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'erasure'",
        [],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    let mut stmt =
        conn.prepare("SELECT id, at_us, reason, entries, signature FROM erasure ORDER BY id")?;
    stmt.query_map([], |r| {
        Ok(ErasureStatement {
            id: r.get(0)?,
            at_us: r.get(1)?,
            reason: r.get(2)?,
            entries: r.get(3)?,
            signature: r.get(4)?,
            signer_key: None,
        })
    })?
    .collect()
}

/// The kept leaves of every erasure statement that `accept` takes, of rows with ids
/// above `(records, outcomes)` (the writer needs only those past its last head).
fn erased_leaves(
    statements: &[ErasureStatement],
    (above_r, above_o): (i64, i64),
    mut accept: impl FnMut(&ErasureStatement) -> bool,
) -> Erased {
    let mut out = Erased::default();
    for s in statements {
        if !accept(s) {
            continue;
        }
        for e in s.entries.chunks_exact(41) {
            let mut leaf = [0u8; 32];
            leaf.copy_from_slice(&e[9..41]);
            let row_id = i64::from_be_bytes(e[1..9].try_into().unwrap_or_default());
            match e[0] {
                ERASED_RECORD if row_id > above_r => out.records.insert(row_id, leaf),
                ERASED_RECORD => None,
                _ if row_id > above_o => out.outcomes.insert(row_id, leaf),
                _ => None,
            };
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error(
        "cannot remove the partition's filter (nothing erased; fix the store directory's permissions and run it again): {0}"
    )]
    Filter(std::io::Error),
    #[error(
        "of the {found} outcome events of the records, {removed} could be removed (nothing erased; run `relaylog verify` on the partition)"
    )]
    Outcomes { found: usize, removed: usize },
}

/// Erases records (and the outcome events of their submissions) from a partition
/// under a signed statement: the rows go, their leaves stay, so `verify` still
/// recomputes every signed head and reports the erasure as such. One transaction.
/// Returns (records, outcomes) erased.
pub fn erase_records(
    conn: &mut Connection,
    partition: PartitionId,
    signer: &Ed25519KeyPair,
    at_us: i64,
    reason: &str,
    record_ids: &[i64],
) -> Result<(usize, usize), EraseError> {
    // Immediate: wait (busy timeout) for a live writer to commit, rather than read
    // first and fail at once when upgrading to write.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(super::schema::ERASURE_DDL)?;
    let mut entries = ErasedEntries::default();
    let mut submissions = std::collections::BTreeSet::new();
    let mut ids: Vec<i64> = record_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    {
        let mut stmt = tx.prepare(&format!("{RECORD_SELECT} WHERE id = ?1"))?;
        for id in &ids {
            let (id, row) = stmt.query_row([id], read_record)?;
            entries.record(id, &row);
            submissions.insert(row.submission);
        }
    }
    let mut outcome_ids = Vec::new();
    let lookup = events::Lookup::new(&tx)?;
    for s in &submissions {
        for (id, row) in lookup.of(&tx, *s)? {
            entries.outcome(id, &row);
            outcome_ids.push(id);
        }
    }
    let id: i64 = tx.query_row("SELECT coalesce(max(id), 0) + 1 FROM erasure", [], |r| {
        r.get(0)
    })?;
    let sig = signer.sign(&erasure_message(partition, id, at_us, reason, &entries.0));
    tx.execute(
        "INSERT INTO erasure (id, at_us, reason, entries, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![id, at_us, reason, entries.0, sig.as_ref()],
    )?;
    {
        let mut del = tx.prepare("DELETE FROM record WHERE id = ?1")?;
        for id in &ids {
            del.execute([id])?;
        }
    }
    let removed = events::remove(&tx, &outcome_ids)?;
    if removed != outcome_ids.len() {
        // Read a moment ago in this transaction: only a damaged partition gets here.
        return Err(EraseError::Outcomes {
            found: outcome_ids.len(),
            removed,
        });
    }
    // The read-optimised index and the filter hold the erased records' tags: the
    // index is no longer read (and a compaction running beside does not put its
    // filter in place), the filter goes before the erasure commits, and the next
    // compaction rebuilds both from what is left.
    if !ids.is_empty() {
        tx.execute("DELETE FROM meta WHERE key = 'compacted'", [])?;
        if let Some(path) = tx.path().filter(|p| !p.is_empty()) {
            super::compact::remove_filter(std::path::Path::new(path))
                .map_err(EraseError::Filter)?;
        }
    }
    tx.commit()?;
    Ok((ids.len(), outcome_ids.len()))
}

fn rebuild_frontier_from_head(conn: &Connection, seq: i64) -> Option<Frontier> {
    let (size, bytes): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT size, frontier FROM head WHERE seq = ?1",
            [seq],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()?;
    Frontier::from_bytes(size as u64, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The signing key is refused when group or others may read it, as the master
    /// key is.
    #[test]
    fn a_signing_key_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        create_signing_key(&path).unwrap();
        load_signing_key(&path).unwrap();
        for mode in [0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = load_signing_key(&path).err().unwrap();
            assert!(matches!(err, SigningKeyError::Permissions { .. }), "{err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        load_signing_key(&path).unwrap();
    }

    /// An outcome written before the SMTP and SMPP columns hashes as it always did:
    /// the sections for those are only there when one of their fields is.
    #[test]
    fn an_outcome_without_the_newer_fields_keeps_its_leaf() {
        let mut row = OutcomeRow::bare(7, 70, 1);
        row.upstream_status = Some(202);
        row.gateway_code = Some(0);
        row.message_id_sealed = Some(vec![9; 3]);
        let mut legacy = vec![0, b'o'];
        legacy.extend_from_slice(&7i64.to_be_bytes());
        legacy.extend_from_slice(&70i64.to_be_bytes());
        legacy.push(1);
        legacy.push(1);
        legacy.extend_from_slice(&202u16.to_be_bytes());
        legacy.push(1);
        legacy.extend_from_slice(&0i32.to_be_bytes());
        legacy.push(1);
        legacy.extend_from_slice(&3u32.to_be_bytes());
        legacy.extend_from_slice(&[9; 3]);
        assert_eq!(outcome_leaf(&row), sha(&[&legacy]));
        // A receipt's fields change it.
        row.receipt_state = Some("DELIVRD".into());
        assert_ne!(outcome_leaf(&row), sha(&[&legacy]));
    }

    fn sample_row(sealed: Vec<u8>, originator_ix: Option<i64>) -> Row {
        Row {
            submission: 7,
            ordinal: 2,
            at_us: 70,
            bucket: 1,
            protocol: 1,
            service: 2,
            recipient_form: 3,
            segments: 4,
            account_ix: 11,
            ip_ix: 12,
            originator_ix,
            recipient_ix: 14,
            sealed,
            leaf: [0; 32],
        }
    }

    /// The bytes of `sample_row(sealed, originator)`'s leaf, laid out by hand.
    fn sample_layout(sealed: &[u8], originator: Option<i64>) -> Vec<u8> {
        let mut b = vec![0, b'r'];
        b.extend_from_slice(&7i64.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&70i64.to_be_bytes());
        b.extend_from_slice(&1i64.to_be_bytes());
        b.extend_from_slice(&[1, 2, 3]);
        b.extend_from_slice(&4u16.to_be_bytes());
        b.extend_from_slice(&11i64.to_be_bytes());
        b.extend_from_slice(&12i64.to_be_bytes());
        match originator {
            Some(o) => {
                b.push(1);
                b.extend_from_slice(&o.to_be_bytes());
            }
            None => b.push(0),
        }
        b.extend_from_slice(&14i64.to_be_bytes());
        b.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
        b.extend_from_slice(sealed);
        b
    }

    /// A record's leaf is SHA-256 over its fields in the layout stored leaves were
    /// made with (signed heads depend on it), with and without an originator.
    #[test]
    fn a_record_leaf_hashes_its_fields_as_laid_out() {
        for originator in [Some(13), None] {
            let row = sample_row(vec![9; 5], originator);
            let layout = sample_layout(&[9; 5], originator);
            assert_eq!(record_leaf(&row), sha(&[&layout]), "{originator:?}");
        }
    }

    /// The leaf hasher's buffer changes nothing whatever the lengths: a sealed field
    /// that fits beside the fixed ones, one that overflows the buffer, one longer than
    /// it (hashed past it), against the bytes laid out in one piece.
    #[test]
    fn leaves_hash_the_same_across_the_hashers_buffer() {
        for n in [0, 1, 40, 63, 64, 65, 100, 127, 128, 129, 200, 1000] {
            let sealed: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let row = sample_row(sealed.clone(), None);
            let layout = sample_layout(&sealed, None);
            assert_eq!(record_leaf(&row), sha(&[&layout]), "sealed of {n} bytes");

            // An outcome with a sealed message id and a receipt's done text that long:
            // small fields before and after each.
            let mut o = OutcomeRow::bare(7, 70, 1);
            o.message_id_sealed = Some(sealed.clone());
            o.receipt_done = Some("d".repeat(n));
            let mut b = vec![0, b'o'];
            b.extend_from_slice(&7i64.to_be_bytes());
            b.extend_from_slice(&70i64.to_be_bytes());
            b.extend_from_slice(&[1, 0, 0, 1]);
            b.extend_from_slice(&(n as u32).to_be_bytes());
            b.extend_from_slice(&sealed);
            b.extend_from_slice(&[b'd', 0, 0, 0, 1]);
            b.extend_from_slice(&(n as u32).to_be_bytes());
            b.extend_from_slice("d".repeat(n).as_bytes());
            assert_eq!(outcome_leaf(&o), sha(&[&b]), "texts of {n} bytes");
        }
    }

    /// A node is SHA-256 over 0x01, the left hash and the right (RFC 6962 §2.1).
    #[test]
    fn a_node_hashes_one_and_its_children() {
        let (l, r) = ([3u8; 32], [4u8; 32]);
        assert_eq!(node(&l, &r), sha(&[&[1], &l, &r]));
        assert_ne!(node(&l, &r), node(&r, &l));
    }

    /// RFC 6962 §2.1, written the recursive way, as the reference.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => sha(&[]),
            1 => leaves[0],
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                node(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    proptest! {
        #[test]
        fn frontier_root_is_the_rfc6962_tree_hash(n in 0usize..70) {
            let leaves: Vec<Hash> = (0..n).map(|i| sha(&[&[0], &(i as u64).to_be_bytes()])).collect();
            let mut f = Frontier::default();
            for (i, l) in leaves.iter().enumerate() {
                f.push(*l);
                let back = Frontier::from_bytes(f.size(), &f.to_bytes()).unwrap();
                prop_assert_eq!(&back, &f);
                prop_assert_eq!(f.root(), mth(&leaves[..=i]));
            }
            prop_assert_eq!(f.root(), mth(&leaves));
        }
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            hex(&Frontier::default().root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
