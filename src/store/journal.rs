//! The journal: a commit that clients wait on costs one append.
//!
//! A group commit into SQLite costs about 135 µs whatever it holds (the WAL frames of
//! every page it touched, the B-tree walks, the statement journal), and under load a
//! group holds some eighteen records: 7.5 µs a message before a row is written. So
//! each group's rows, sealed, indexed and hashed exactly as they will be stored, are
//! appended to a file in one `write` (and `fdatasync` with `sync = "full"`), by the
//! relay thread that sealed them or by the writer's front (see `super::front`), the
//! clients waiting on them are answered, and the rows are passed on to
//! the ingester, which writes them into the partitions in transactions of thousands
//! ([`INGEST_DELAY`], [`INGEST_ROWS`]). A crash between the two loses nothing: at
//! start the frames the partitions do not hold yet are ingested before anything new.
//!
//! Which frames a partition holds is written in the same transaction as its rows
//! (`meta` key `journal`: this journal's id and the last frame's number), so a frame
//! read back after a crash goes into each partition once, even when the crash fell
//! between one partition's commit and another's. Frame numbers only grow, across
//! restarts too, whatever the clock (see [`Journal::start`]; on PostgreSQL also
//! above what the database records, [`Journal::raise_floor`], should the directory be
//! restored from a backup). The id, made with the journal directory,
//! keeps a journal made again from scratch from being mistaken for the old one.
//! On PostgreSQL (`store.acknowledge = "journal"`) the same holds through a row per
//! partition and node (`relaylog.journal_frame`, see `super::pgstore`), and the
//! journal names the store it is for ([`claim`]): its frames go only there.
//!
//! Segments are files named by a number no greater than their first frame's; the
//! writer deletes those whose frames are all in the partitions, never the newest, and
//! the front starts a new segment every [`ROTATE_AFTER`], so rows leave the journal
//! seconds after they are in the partitions. A frame is `len u32 | check [8] | body`
//! (the check is the body's CRC-32, or its SHA-256's first bytes in frames written
//! before 2026-12-04: see [`check`]), so a frame torn by a crash is
//! told from a whole one; reading stops at the first frame that is not whole, and a
//! new process appends to a new segment. Integers are little-endian.
//!
//! What a query sees: the partitions, so a record is found once its frame is in them,
//! within [`INGEST_DELAY`] and a commit of the moment its client was answered when
//! the store keeps up. The journal holds what the partitions hold, sealed the same
//! way: no content, no identifier in the clear.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::partition::PartitionId;
use super::rows::{OutcomeRow, Row};
use super::writer::file_identity;
use crate::config::Granularity;

/// Longest a journaled row waits for the ingester's next transaction.
pub const INGEST_DELAY: Duration = Duration::from_millis(20);

/// Rows that make the ingester commit without waiting for [`INGEST_DELAY`].
pub const INGEST_ROWS: usize = 4096;

/// A segment past this size is followed by a new one.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// A segment is followed by a new one once its first frame is this old, so that it
/// can be deleted soon after its rows are in the partitions.
pub const ROTATE_AFTER: Duration = Duration::from_secs(5);

/// Largest frame: one the journal cannot take is committed to the partitions before
/// its clients are answered.
const MAX_FRAME: usize = 256 << 20;

const FRAME_HEAD: usize = 4 + 8;
const KIND_RECORDS: u8 = 1;
const KIND_OUTCOME: u8 = 2;

/// One journaled job: a partition's records or one outcome event.
#[derive(Debug, Clone)]
pub enum Entry {
    Records(PartitionId, Vec<Row>),
    Outcome(PartitionId, OutcomeRow),
}

/// A frame read back: its sequence number and entries.
pub struct Frame {
    pub seq: u64,
    pub entries: Vec<Entry>,
}

pub struct Journal {
    dir: PathBuf,
    /// Held locked while this journal is open, by the front and the writer both (the
    /// writer goes on ingesting and releasing after the front stops): one process
    /// appends and ingests.
    lock: Arc<File>,
    id: String,
    /// The segment appended to: `None` before [`Journal::start`].
    active: Option<Segment>,
    next: u64,
    sync: bool,
    buf: Vec<u8>,
    /// Tests: every append fails, as on a disk that refuses writes.
    #[cfg(test)]
    pub(super) fail_appends: bool,
}

struct Segment {
    file: File,
    /// The path and (device, inode): an append checks the path still names this
    /// file, so that frames never go where no one will read them (the store directory
    /// deleted or replaced under a running relay).
    path: PathBuf,
    identity: (u64, u64),
    bytes: u64,
    /// When its first frame was appended.
    first_frame: Option<Instant>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and locks it for this process. Returns
    /// it, not yet appending, with its segments to read back ([`read_segment`]),
    /// oldest first; [`Journal::start`] then begins a new segment.
    pub fn open(dir: &Path, sync: bool) -> std::io::Result<(Journal, Vec<PathBuf>)> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        let lock = lock(dir)?;
        let segments = segments(dir)?;
        let id = journal_id(dir, !segments.is_empty())?;
        let journal = Journal {
            dir: dir.to_owned(),
            lock: Arc::new(lock),
            id,
            active: None,
            next: segments.last().map_or(1, |(start, _)| start + 1),
            sync,
            buf: Vec::new(),
            #[cfg(test)]
            fail_appends: false,
        };
        Ok((journal, segments.into_iter().map(|(_, p)| p).collect()))
    }

    /// Numbers the frames of the next [`Journal::start`] above `floor`: the newest frame
    /// of this journal a store records holding (on PostgreSQL, where the journal's
    /// `epoch` file, restored from a backup or a snapshot, can be behind the
    /// database). A frame numbered at or below it would be taken for one the store
    /// holds and never written.
    pub fn raise_floor(&mut self, floor: u64) {
        self.next = self.next.max(floor.saturating_add(1));
    }

    /// Begins appending in a new segment. Each start takes the next epoch (a counter
    /// in `journal/epoch`, synced before any frame of the epoch is written) and numbers
    /// its frames from `epoch << EPOCH_SHIFT`: above every frame of every earlier
    /// start, whether or not it was read back, so a frame's number is never one a
    /// partition may already hold, even when the journal lost its last frames to a
    /// power cut that the partitions survived (`sync = "normal"`). Not when the
    /// directory was restored from a backup (its epoch behind the frames used since):
    /// on PostgreSQL [`Journal::raise_floor`] covers that, before each start. `last` is the last
    /// frame read back. Returns the first number.
    pub fn start(&mut self, last: u64) -> std::io::Result<u64> {
        let epoch = next_epoch(&self.dir)?;
        self.next = self.next.max(last + 1).max(epoch << EPOCH_SHIFT);
        self.start_segment(self.next)?;
        Ok(self.next)
    }

    /// Starts a new segment for the next frame, so that every frame appended so far
    /// can be released (see [`release`]) once ingested: before a clean stop, and once
    /// a segment's first frame is [`ROTATE_AFTER`] old, so that rows leave the journal
    /// soon after they are in the partitions.
    pub fn rotate(&mut self) -> std::io::Result<()> {
        if self.active.as_ref().is_some_and(|a| a.bytes > 0) {
            self.still_ours()?;
            self.start_segment(self.next)?;
        }
        Ok(())
    }

    /// The directory is still this journal's (its `id`): not deleted, nor replaced
    /// by another journal's, where a new segment would be read by no one or as
    /// someone else's.
    fn still_ours(&self) -> std::io::Result<()> {
        let id = std::fs::read_to_string(self.dir.join("id")).unwrap_or_default();
        if id.trim() != self.id {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is gone or replaced", self.dir.display()),
            ));
        }
        Ok(())
    }

    /// The active segment holds frames.
    pub fn holds_frames(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.bytes > 0)
    }

    /// The active segment has held frames for [`ROTATE_AFTER`].
    pub fn due_for_rotation(&self) -> bool {
        self.active
            .as_ref()
            .and_then(|a| a.first_frame)
            .is_some_and(|t| t.elapsed() >= ROTATE_AFTER)
    }

    fn start_segment(&mut self, start: u64) -> std::io::Result<()> {
        let (file, path) = new_segment(&self.dir, start, self.sync)?;
        let identity = file_identity(&path).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} vanished after it was made", path.display()),
            )
        })?;
        self.active = Some(Segment {
            identity,
            file,
            path,
            bytes: 0,
            first_frame: None,
        });
        Ok(())
    }

    /// This journal's id, as partitions keep it.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock, for the writer to hold until it has released what it ingested.
    pub fn lock(&self) -> Arc<File> {
        self.lock.clone()
    }

    /// Appends one frame of `entries` and returns its sequence number. On an error
    /// nothing of the frame is left in the segment (what reached it is cut off
    /// again; if even that fails, the next frame goes to a new segment and this one
    /// ends its reading there), and nothing may be acknowledged.
    pub fn append<'a>(
        &mut self,
        entries: impl Iterator<Item = EntryRef<'a>>,
    ) -> std::io::Result<u64> {
        self.append_where(entries, true)
    }

    /// [`Journal::append`] into the active segment only: an error of kind
    /// `WouldBlock`, with nothing written, when the frame would need a new one (the
    /// segment full or due for rotation, its path no longer naming it). A relay thread
    /// appends so and leaves making files to the front (see `super::front`).
    pub fn append_in_place<'a>(
        &mut self,
        entries: impl Iterator<Item = EntryRef<'a>>,
    ) -> std::io::Result<u64> {
        self.append_where(entries, false)
    }

    fn append_where<'a>(
        &mut self,
        entries: impl Iterator<Item = EntryRef<'a>>,
        new_segment: bool,
    ) -> std::io::Result<u64> {
        #[cfg(test)]
        if self.fail_appends {
            return Err(std::io::Error::other("an append made to fail"));
        }
        if !new_segment && self.due_for_rotation() {
            return Err(not_in_place());
        }
        let seq = self.next;
        self.buf.clear();
        self.buf.extend_from_slice(&[0; FRAME_HEAD]);
        self.buf.extend_from_slice(&seq.to_le_bytes());
        let count_at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        let mut count = 0u32;
        for entry in entries {
            encode_entry(&mut self.buf, entry);
            count += 1;
        }
        self.buf[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        let body = self.buf.len() - FRAME_HEAD;
        if body > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a frame of {body} bytes is over the journal's {MAX_FRAME}"),
            ));
        }
        let check = check(&self.buf[FRAME_HEAD..]);
        self.buf[..4].copy_from_slice(&(body as u32).to_le_bytes());
        self.buf[4..FRAME_HEAD].copy_from_slice(&check);
        self.place(seq, new_segment)?;
        let sync = self.sync;
        let Some(active) = self.active.as_mut() else {
            return Err(std::io::Error::other("the journal was not started"));
        };
        let written = active.file.write_all(&self.buf).and_then(|()| {
            if sync {
                active.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Cut off what reached the segment; if that fails, end it here.
            if active.file.set_len(active.bytes).is_err() {
                active.bytes = SEGMENT_BYTES;
            }
            return Err(e);
        }
        active.bytes += self.buf.len() as u64;
        active.first_frame.get_or_insert_with(Instant::now);
        self.next = seq + 1;
        Ok(seq)
    }

    /// Makes sure frame `seq` goes where the next start will read it: a new segment
    /// when this one is full, or when its path no longer names it (in a journal
    /// whose id is still this one's).
    fn place(&mut self, seq: u64, new_segment: bool) -> std::io::Result<()> {
        let Some(active) = &self.active else {
            return Err(std::io::Error::other("the journal was not started"));
        };
        let moved = file_identity(&active.path) != Some(active.identity);
        if !new_segment && (moved || active.bytes >= SEGMENT_BYTES) {
            return Err(not_in_place());
        }
        if moved {
            self.still_ours()?;
            return self.start_segment(seq);
        }
        if active.bytes >= SEGMENT_BYTES {
            self.start_segment(seq)?;
        }
        Ok(())
    }
}

/// What [`Journal::append_in_place`] answers when the frame needs a new segment.
fn not_in_place() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::WouldBlock,
        "the frame needs a new journal segment",
    )
}

/// Frames a start may number: 2^40, a million a second for twelve days.
const EPOCH_SHIFT: u32 = 40;

/// Takes the next epoch: reads `dir/epoch`, writes it back one higher and syncs it
/// (and the directory) before returning.
fn next_epoch(dir: &Path) -> std::io::Result<u64> {
    let path = dir.join("epoch");
    let current = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a number", path.display()),
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let next = current + 1;
    if next >= 1 << (64 - EPOCH_SHIFT) {
        return Err(std::io::Error::other("the journal's epochs are used up"));
    }
    write_synced(dir, "epoch", next.to_string().as_bytes())?;
    Ok(next)
}

/// Writes the small file `dir/name` whole or not at all (a file beside it, synced,
/// renamed over it, the directory synced).
fn write_synced(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// What `append` takes: borrowed, so that the jobs stay whole for the ingester.
#[derive(Clone, Copy)]
pub enum EntryRef<'a> {
    Records(PartitionId, &'a [Row]),
    Outcome(PartitionId, &'a OutcomeRow),
}

/// Deletes the segments whose frames are all at or below `through`, never the newest
/// (it may be the one being appended to). Returns how many went.
pub fn release(dir: &Path, through: u64) -> std::io::Result<usize> {
    let segments = segments(dir)?;
    let mut gone = 0;
    for pair in segments.windows(2) {
        let ((_, path), (next_start, _)) = (&pair[0], &pair[1]);
        if *next_start <= through.saturating_add(1) {
            std::fs::remove_file(path)?;
            gone += 1;
        }
    }
    Ok(gone)
}

/// Whether the journal in `dir` holds frames that may not be in the partitions yet
/// (a segment that is not empty), and no process has it open: then they should be
/// ingested before the partitions are read or changed.
pub fn needs_recovery(dir: &Path) -> std::io::Result<bool> {
    if !has_frames(dir)? {
        return Ok(false);
    }
    Ok(!in_use(dir)?)
}

/// Whose journal one with no `owner` file is: the SQLite store's, which wrote none.
pub const SQLITE_OWNER: &str = "sqlite";

/// The owner name of PostgreSQL node `node`'s journal (see [`claim`]).
pub fn postgres_owner(node: &str) -> String {
    format!("postgres node {node}")
}

/// Whose rows the journal in `dir` holds, as [`claim`] wrote it; `None` when it wrote
/// nothing there (no journal, or the SQLite store's).
pub fn owner(dir: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(dir.join("owner")) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes the journal in `dir` `owner`'s (the SQLite store's, [`SQLITE_OWNER`], or a
/// PostgreSQL node's): refused while it holds frames of another's, whose rows would go
/// into the wrong store or under the wrong node's name (a store directory copied to
/// another node, a node renamed, a SQLite store's journal under a node switched to
/// PostgreSQL). A journal holding none is taken over. Called with the journal's lock
/// held ([`Journal::open`]): a process that cannot have the journal must not rename
/// it under the one that has.
pub fn claim(dir: &Path, owner_name: &str) -> std::io::Result<()> {
    let found = foreign(dir, owner_name)?;
    if found.as_deref() == Some(owner_name) || (found.is_none() && owner_name == SQLITE_OWNER) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    write_synced(dir, "owner", owner_name.as_bytes())
}

/// An error when the journal in `dir` holds frames of another than `owner_name`
/// (see [`claim`]); otherwise its `owner` file's name, if it has one.
pub fn foreign(dir: &Path, owner_name: &str) -> std::io::Result<Option<String>> {
    let found = owner(dir)?;
    let theirs = found.as_deref().unwrap_or(SQLITE_OWNER);
    if theirs != owner_name && has_frames(dir)? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} holds rows journaled for {theirs}, not for {owner_name}: run relaylog with the configuration that wrote them until they are in (`relaylog query` does it), or move the directory away",
                dir.display()
            ),
        ));
    }
    Ok(found)
}

/// Whether any segment of the journal in `dir` holds a byte.
fn has_frames(dir: &Path) -> std::io::Result<bool> {
    let segments = match segments(dir) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for (_, path) in segments {
        if std::fs::metadata(path)?.len() > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a process has the journal in `dir` open (a running `serve`). Probed
/// read-only: an operator who may only read the store can still ask.
pub fn in_use(dir: &Path) -> std::io::Result<bool> {
    let probe = match File::open(dir.join("lock")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match probe.try_lock_shared() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Locks the journal in `dir` for this process; `WouldBlock` when another has it.
fn lock(dir: &Path) -> std::io::Result<File> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!("{} is held by another relaylog process", path.display()),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The value partitions keep under `meta` key `journal`.
pub fn meta_value(id: &str, seq: u64) -> String {
    format!("{id}:{seq}")
}

/// The last frame of journal `id` that a partition holds (0: none, or another
/// journal's); `None` when the value is not one [`meta_value`] writes.
pub fn held_through(meta: Option<&str>, id: &str) -> Option<u64> {
    let Some(value) = meta else {
        return Some(0);
    };
    let (held, seq) = value.split_once(':')?;
    let seq: u64 = seq.parse().ok()?;
    Some(if held == id { seq } else { 0 })
}

/// A frame's check, against a write cut short or damaged: its CRC-32 (IEEE, as
/// `crc32fast` computes it, with the CPU's carry-less multiply), then [`CRC_TAG`].
/// Not a defence against someone who can write the journal (no unkeyed check is):
/// the rows' Merkle leaves and signed heads are. It replaced the first 8 bytes of the
/// body's SHA-256 (2026-12-04), which cost a relay thread about 0.15 µs a message:
/// frames written before are read with that check ([`old_check`]).
fn check(body: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    out[4..].copy_from_slice(CRC_TAG);
    out
}

/// The second half of a CRC [`check`]: what tells it from the former one, so that
/// each frame is held to one check (and zeros, whose CRC is 0, to neither).
const CRC_TAG: &[u8; 4] = b"crc1";

/// Whether `stored` is the check of `body`, in the form it was written in.
fn checks(body: &[u8], stored: &[u8]) -> bool {
    if stored[4..] == CRC_TAG[..] {
        check(body) == stored
    } else {
        old_check(body) == stored
    }
}

/// The check of frames written before [`check`]: the first 8 bytes of the body's
/// SHA-256.
fn old_check(body: &[u8]) -> [u8; 8] {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest.as_ref()[..8]);
    out
}

/// The journal's id, made when the journal is. Segments without it are refused: their
/// frames could not be told from another journal's (the partitions would take them
/// again).
fn journal_id(dir: &Path, has_segments: bool) -> std::io::Result<String> {
    let path = dir.join("id");
    match std::fs::read_to_string(&path) {
        Ok(id) if id.trim().len() == 32 && id.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Ok(id.trim().to_owned());
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a journal id", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !has_segments => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is missing but segments are there: restore it, or move the segments away once their rows are known to be in the partitions",
                    path.display()
                ),
            ));
        }
        Err(e) => return Err(e),
    }
    let mut raw = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| std::io::Error::other("no randomness for the journal id"))?;
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    write_synced(dir, "id", id.as_bytes())?;
    Ok(id)
}

/// The segments in `dir`, by first sequence number.
fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(start) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((start, entry.path()));
    }
    out.sort();
    Ok(out)
}

fn new_segment(dir: &Path, start: u64, sync: bool) -> std::io::Result<(File, PathBuf)> {
    let path = dir.join(format!("{start:020}.log"));
    // Always a new file: frames never follow one cut short by a crash.
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    if sync {
        File::open(dir)?.sync_all()?;
    }
    Ok((file, path))
}

/// Reads a segment back, passing each whole frame to `each` (which returns false to
/// stop). Returns false when the segment ends in a frame that is not whole: a write
/// cut short by a crash, or damage; nothing after it is read.
pub fn read_segment(path: &Path, each: impl FnMut(Frame) -> bool) -> std::io::Result<bool> {
    let mut bytes = Vec::new();
    // A segment is at most SEGMENT_BYTES and one frame.
    File::open(path)?
        .take(SEGMENT_BYTES + (FRAME_HEAD + MAX_FRAME) as u64)
        .read_to_end(&mut bytes)?;
    Ok(read_frames(&bytes, each))
}

/// [`read_segment`] on a segment's bytes.
pub fn read_frames(bytes: &[u8], mut each: impl FnMut(Frame) -> bool) -> bool {
    let mut at = 0;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + FRAME_HEAD) else {
            return false;
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_FRAME {
            return false;
        }
        let Some(body) = bytes.get(at + FRAME_HEAD..at + FRAME_HEAD + len) else {
            return false;
        };
        if !checks(body, &head[4..FRAME_HEAD]) {
            return false;
        }
        let Some(frame) = decode_frame(body) else {
            return false;
        };
        if !each(frame) {
            return true;
        }
        at += FRAME_HEAD + len;
    }
    true
}

fn put_partition(buf: &mut Vec<u8>, p: PartitionId) {
    buf.push(match p.granularity() {
        Granularity::Day => 0,
        Granularity::Month => 1,
    });
    buf.extend_from_slice(&p.start_micros().to_le_bytes());
}

fn put_opt<T>(buf: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => buf.push(0),
        Some(v) => {
            buf.push(1);
            put(buf, v);
        }
    }
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

fn encode_entry(buf: &mut Vec<u8>, entry: EntryRef<'_>) {
    match entry {
        EntryRef::Records(p, rows) => {
            buf.push(KIND_RECORDS);
            put_partition(buf, p);
            buf.extend_from_slice(&(rows.len() as u32).to_le_bytes());
            for r in rows {
                buf.extend_from_slice(&r.submission.to_le_bytes());
                buf.extend_from_slice(&r.ordinal.to_le_bytes());
                buf.extend_from_slice(&r.at_us.to_le_bytes());
                buf.extend_from_slice(&r.bucket.to_le_bytes());
                buf.extend_from_slice(&[r.protocol, r.service, r.recipient_form]);
                buf.extend_from_slice(&r.segments.to_le_bytes());
                buf.extend_from_slice(&r.account_ix.to_le_bytes());
                buf.extend_from_slice(&r.ip_ix.to_le_bytes());
                put_opt(buf, r.originator_ix, |b, v| {
                    b.extend_from_slice(&v.to_le_bytes())
                });
                buf.extend_from_slice(&r.recipient_ix.to_le_bytes());
                put_bytes(buf, &r.sealed);
                buf.extend_from_slice(&r.leaf);
            }
        }
        EntryRef::Outcome(p, o) => {
            buf.push(KIND_OUTCOME);
            put_partition(buf, p);
            put_outcome(buf, o);
            buf.extend_from_slice(&o.leaf);
        }
    }
}

/// An outcome event's fields (not its leaf), as journal frames and outcome blocks
/// (see `events`) hold them; read back by [`Cursor::outcome`].
pub(super) fn put_outcome(buf: &mut Vec<u8>, o: &OutcomeRow) {
    buf.extend_from_slice(&o.submission.to_le_bytes());
    buf.extend_from_slice(&o.at_us.to_le_bytes());
    buf.push(o.outcome);
    put_opt(buf, o.upstream_status, |b, v| {
        b.extend_from_slice(&v.to_le_bytes())
    });
    put_opt(buf, o.gateway_code, |b, v| {
        b.extend_from_slice(&v.to_le_bytes())
    });
    put_opt(buf, o.message_id_sealed.as_deref(), put_bytes);
    put_opt(buf, o.enhanced_status.as_deref(), |b, s| {
        put_bytes(b, s.as_bytes())
    });
    put_opt(buf, o.size_bytes, |b, v| {
        b.extend_from_slice(&v.to_le_bytes())
    });
    put_opt(buf, o.ordinal, |b, v| b.extend_from_slice(&v.to_le_bytes()));
    for s in [&o.receipt_state, &o.receipt_error, &o.receipt_done] {
        put_opt(buf, s.as_deref(), |b, s| put_bytes(b, s.as_bytes()));
    }
}

/// Reads a frame body; `None` for anything malformed (the check makes that damage,
/// not a torn write).
pub(super) struct Cursor<'a>(pub(super) &'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.array()?))
    }

    pub(super) fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = self.u32()? as usize;
        Some(self.take(len)?.to_vec())
    }

    fn text(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }

    fn opt<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(read(self)?)),
            _ => None,
        }
    }

    fn partition(&mut self) -> Option<PartitionId> {
        let granularity = match self.u8()? {
            0 => Granularity::Day,
            1 => Granularity::Month,
            _ => return None,
        };
        let start = self.i64()?;
        let p = PartitionId::containing(granularity, start);
        (p.start_micros() == start).then_some(p)
    }

    /// The fields [`put_outcome`] wrote; the leaf is left empty.
    pub(super) fn outcome(&mut self) -> Option<OutcomeRow> {
        Some(OutcomeRow {
            submission: self.i64()?,
            at_us: self.i64()?,
            outcome: self.u8()?,
            upstream_status: self.opt(Cursor::u16)?,
            gateway_code: self.opt(Cursor::i32)?,
            message_id_sealed: self.opt(Cursor::bytes)?,
            enhanced_status: self.opt(Cursor::text)?,
            size_bytes: self.opt(Cursor::u64)?,
            ordinal: self.opt(Cursor::u32)?,
            receipt_state: self.opt(Cursor::text)?,
            receipt_error: self.opt(Cursor::text)?,
            receipt_done: self.opt(Cursor::text)?,
            leaf: [0; 32],
        })
    }
}

/// A frame's body (after its length and check) read back: `None` when it does not
/// read as frames are written.
pub fn decode_frame(body: &[u8]) -> Option<Frame> {
    let mut c = Cursor(body);
    let seq = c.u64()?;
    let count = c.u32()?;
    let mut entries = Vec::new();
    for _ in 0..count {
        entries.push(match c.u8()? {
            KIND_RECORDS => {
                let p = c.partition()?;
                let n = c.u32()? as usize;
                // Each row takes more than 64 bytes: a count past what is left is damage.
                if n > c.0.len() / 64 {
                    return None;
                }
                let mut rows = Vec::with_capacity(n);
                for _ in 0..n {
                    rows.push(Row {
                        submission: c.i64()?,
                        ordinal: c.u32()?,
                        at_us: c.i64()?,
                        bucket: c.i64()?,
                        protocol: c.u8()?,
                        service: c.u8()?,
                        recipient_form: c.u8()?,
                        segments: c.u16()?,
                        account_ix: c.i64()?,
                        ip_ix: c.i64()?,
                        originator_ix: c.opt(Cursor::i64)?,
                        recipient_ix: c.i64()?,
                        sealed: c.bytes()?,
                        leaf: c.array()?,
                    });
                }
                Entry::Records(p, rows)
            }
            KIND_OUTCOME => {
                let p = c.partition()?;
                let mut row = c.outcome()?;
                row.leaf = c.array()?;
                Entry::Outcome(p, row)
            }
            _ => return None,
        });
    }
    c.0.is_empty().then_some(Frame { seq, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day() -> PartitionId {
        PartitionId::parse("2026-11-22").unwrap()
    }

    fn month() -> PartitionId {
        PartitionId::parse("2026-11").unwrap()
    }

    fn row(n: i64, originator: bool) -> Row {
        Row {
            submission: n,
            ordinal: n as u32 % 3,
            at_us: 1_700_000_000_000_000 + n,
            bucket: 28_000_000 + n,
            protocol: 1,
            service: 2,
            recipient_form: 3,
            segments: 4,
            account_ix: -n,
            ip_ix: n << 20,
            originator_ix: originator.then_some(n * 7),
            recipient_ix: i64::MIN + n,
            sealed: vec![n as u8; 40 + n as usize % 5],
            leaf: [n as u8; 32],
        }
    }

    fn outcomes() -> Vec<OutcomeRow> {
        let bare = OutcomeRow::bare(9, 90, 1);
        let mut full = OutcomeRow::bare(10, 100, 2);
        full.upstream_status = Some(202);
        full.gateway_code = Some(-3);
        full.message_id_sealed = Some(vec![1, 2, 3]);
        full.enhanced_status = Some("2.0.0".into());
        full.size_bytes = Some(u64::MAX);
        full.ordinal = Some(5);
        full.receipt_state = Some("DELIVRD".into());
        full.receipt_error = Some("000".into());
        full.receipt_done = Some("2611221200".into());
        full.leaf = [7; 32];
        vec![bare, full]
    }

    /// The entries `append_sample(first)` writes, as read back.
    fn sample(first: i64) -> Vec<String> {
        let o = outcomes();
        [
            Entry::Records(day(), vec![row(first, true), row(first + 1, false)]),
            Entry::Outcome(day(), o[0].clone()),
            Entry::Records(month(), vec![row(first + 2, true)]),
            Entry::Outcome(month(), o[1].clone()),
        ]
        .iter()
        .map(|e| format!("{e:?}"))
        .collect()
    }

    /// Appends one frame of two partitions' records and outcomes, as the front does.
    fn append_sample(journal: &mut Journal, first: i64) -> u64 {
        let a = vec![row(first, true), row(first + 1, false)];
        let b = vec![row(first + 2, true)];
        let o = outcomes();
        journal
            .append(
                [
                    EntryRef::Records(day(), &a),
                    EntryRef::Outcome(day(), &o[0]),
                    EntryRef::Records(month(), &b),
                    EntryRef::Outcome(month(), &o[1]),
                ]
                .into_iter(),
            )
            .unwrap()
    }

    /// Opens the journal as the front does: every frame read back, the segments that
    /// end in one not whole, and the journal started after the last.
    fn reopen(dir: &Path) -> (Journal, Vec<Frame>, Vec<PathBuf>) {
        let (mut journal, segments) = Journal::open(dir, false).unwrap();
        let (mut frames, mut torn) = (Vec::new(), Vec::new());
        for path in segments {
            if !read_segment(&path, |f| {
                frames.push(f);
                true
            })
            .unwrap()
            {
                torn.push(path);
            }
        }
        let last = frames.iter().map(|f| f.seq).max().unwrap_or(0);
        journal.start(last).unwrap();
        (journal, frames, torn)
    }

    fn seqs(frames: &[Frame]) -> Vec<u64> {
        frames.iter().map(|f| f.seq).collect()
    }

    /// A relay thread's append goes into the active segment or nowhere: with the
    /// segment's path no longer naming it, nothing is written and no file made, and
    /// the front's append then starts a new segment.
    #[test]
    fn an_append_in_place_makes_no_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path(), false).unwrap();
        journal.start(0).unwrap();
        let first = append_sample(&mut journal, 1);
        let rows = vec![row(10, true)];
        let entries = || std::iter::once(EntryRef::Records(day(), &rows));
        assert_eq!(journal.append_in_place(entries()).unwrap(), first + 1);
        // The active segment renamed away: its path names nothing.
        let active = journal.active.as_ref().unwrap().path.clone();
        std::fs::rename(&active, dir.path().join("elsewhere")).unwrap();
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        let before = files();
        let refused = journal.append_in_place(entries()).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::WouldBlock);
        assert_eq!(files(), before, "no file made");
        assert_eq!(
            journal.append(entries()).unwrap(),
            first + 2,
            "the number unused"
        );
        assert_eq!(files(), before + 1, "the front's append starts a segment");
    }

    /// A rotation in a journal directory replaced under the process makes no
    /// segment there: one that no start would read as this journal's.
    #[test]
    fn a_rotation_makes_no_segment_in_a_replaced_directory() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("journal");
        let (mut journal, _) = Journal::open(&dir, false).unwrap();
        journal.start(0).unwrap();
        append_sample(&mut journal, 1);
        std::fs::rename(&dir, parent.path().join("moved")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        let refused = journal.rotate().unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing made");
        // Back in place: it rotates.
        std::fs::remove_dir(&dir).unwrap();
        std::fs::rename(parent.path().join("moved"), &dir).unwrap();
        let before = std::fs::read_dir(&dir).unwrap().count();
        journal.rotate().unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), before + 1);
    }

    #[test]
    fn frames_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, frames, torn) = reopen(dir.path());
        assert!(frames.is_empty() && torn.is_empty());
        let first = append_sample(&mut journal, 1);
        let second = append_sample(&mut journal, 10);
        assert!(second > first);
        let id = journal.id().to_owned();
        drop(journal);
        let (mut journal, frames, torn) = reopen(dir.path());
        assert!(torn.is_empty());
        assert_eq!(seqs(&frames), [first, second]);
        let got: Vec<String> = frames[1].entries.iter().map(|e| format!("{e:?}")).collect();
        assert_eq!(got, sample(10));
        // Numbering goes on above everything before a restart; the id stays.
        assert!(append_sample(&mut journal, 20) > second);
        assert_eq!(journal.id(), id);
    }

    /// A frame cut short (a crash in the middle of its write) or damaged ends its
    /// segment's reading: the whole frames before it are read, the segment is named,
    /// and frames appended after the restart go to a new segment, read back in full.
    #[test]
    fn a_frame_cut_short_or_damaged_ends_the_reading() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _, _) = reopen(dir.path());
        let first = append_sample(&mut journal, 1);
        append_sample(&mut journal, 10);
        drop(journal);
        let path = written_segment(dir.path());
        let whole = std::fs::read(&path).unwrap();
        for cut in [whole.len() - 1, whole.len() - 40] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let (_, frames, torn) = reopen(dir.path());
            assert_eq!(seqs(&frames), [first], "cut at {cut}");
            assert_eq!(torn, std::slice::from_ref(&path));
        }
        let mut damaged = whole.clone();
        let last = damaged.len() - 10;
        damaged[last] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        let (mut journal, frames, _) = reopen(dir.path());
        assert_eq!(seqs(&frames), [first]);
        let after = append_sample(&mut journal, 30);
        drop(journal);
        let (_, frames, torn) = reopen(dir.path());
        assert_eq!(
            seqs(&frames),
            [first, after],
            "the new frame is not behind the damage"
        );
        assert_eq!(torn, std::slice::from_ref(&path));
        // Nothing read from garbage, whatever it holds.
        std::fs::write(&path, [0xff; 64]).unwrap();
        let (_, frames, _) = reopen(dir.path());
        assert_eq!(seqs(&frames), [after]);
    }

    /// The one segment of `dir` with frames in it.
    fn written_segment(dir: &Path) -> PathBuf {
        segments(dir)
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .find(|p| std::fs::metadata(p).unwrap().len() > 0)
            .unwrap()
    }

    /// Frames written before the CRC (checked by their SHA-256's first bytes) are read
    /// as they were; a frame that matches neither check ends the reading.
    #[test]
    fn frames_with_the_former_check_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _, _) = reopen(dir.path());
        let first = append_sample(&mut journal, 1);
        let second = append_sample(&mut journal, 10);
        drop(journal);
        let path = written_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let body = at + FRAME_HEAD..at + FRAME_HEAD + len;
            let former = old_check(&bytes[body.clone()]);
            assert_ne!(former, check(&bytes[body.clone()]));
            bytes[at + 4..at + FRAME_HEAD].copy_from_slice(&former);
            at = body.end;
        }
        std::fs::write(&path, &bytes).unwrap();
        let (_, frames, torn) = reopen(dir.path());
        assert_eq!(seqs(&frames), [first, second]);
        assert!(torn.is_empty());
        // The second frame's check matches neither any more.
        let last = bytes.len() - 10;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (_, frames, _) = reopen(dir.path());
        assert_eq!(seqs(&frames), [first]);
        // Zeros (a tail a crash left zero-filled) pass neither check, CRC 0 or not.
        assert!(!checks(&[], &[0; 8]));
        assert!(checks(&[], &check(&[])));
    }

    /// A frame over the limit is refused before anything of it is written.
    #[test]
    fn an_oversized_frame_is_refused_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _, _) = reopen(dir.path());
        let first = append_sample(&mut journal, 1);
        // A frame over the limit is refused before anything is written.
        let huge = vec![Row {
            sealed: vec![0; MAX_FRAME],
            ..row(1, false)
        }];
        let refused = journal.append(std::iter::once(EntryRef::Records(day(), &huge)));
        assert_eq!(
            refused.unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
        let second = append_sample(&mut journal, 10);
        drop(journal);
        let (_, frames, torn) = reopen(dir.path());
        assert_eq!(seqs(&frames), [first, second]);
        assert!(torn.is_empty());
    }

    /// Release deletes the segments whose frames are all ingested, never the newest;
    /// a segment with a frame past `through` stays.
    #[test]
    fn release_keeps_what_is_not_ingested_and_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut ends = Vec::new();
        for n in 0..3 {
            // Each start makes a segment: three of one frame each.
            let (mut journal, _, _) = reopen(dir.path());
            ends.push(append_sample(&mut journal, n * 10));
        }
        let (journal, frames, _) = reopen(dir.path());
        assert_eq!(seqs(&frames), ends);
        let starts: Vec<u64> = segments(dir.path()).unwrap().iter().map(|s| s.0).collect();
        assert_eq!(starts.len(), 4, "one per start, the last empty");
        assert!(starts.windows(2).all(|w| w[0] < w[1]));
        // A segment goes once everything below the next one's start is in.
        assert_eq!(release(dir.path(), starts[1] - 2).unwrap(), 0);
        assert_eq!(release(dir.path(), starts[1] - 1).unwrap(), 1);
        assert_eq!(release(dir.path(), starts[3] - 1).unwrap(), 2);
        assert_eq!(segments(dir.path()).unwrap().len(), 1, "the newest stays");
        drop(journal);
        let (mut journal, frames, _) = reopen(dir.path());
        assert!(frames.is_empty());
        assert!(
            append_sample(&mut journal, 0) > ends[2],
            "numbering goes on"
        );
    }

    /// One process at a time; segments without their id are refused, not numbered
    /// as a new journal's.
    #[test]
    fn one_process_and_one_id() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _, _) = reopen(dir.path());
        append_sample(&mut journal, 1);
        let held = Journal::open(dir.path(), false).err().unwrap();
        assert_eq!(held.kind(), std::io::ErrorKind::WouldBlock);
        assert!(!needs_recovery(dir.path()).unwrap(), "its process has it");
        drop(journal);
        assert!(needs_recovery(dir.path()).unwrap());
        std::fs::remove_file(dir.path().join("id")).unwrap();
        let lost = Journal::open(dir.path(), false).err().unwrap();
        assert!(lost.to_string().contains("missing"), "{lost}");
    }

    #[test]
    fn a_partition_holds_frames_of_its_own_journal_only() {
        assert_eq!(held_through(Some(&meta_value("abc", 42)), "abc"), Some(42));
        assert_eq!(held_through(Some(&meta_value("abc", 42)), "def"), Some(0));
        assert_eq!(held_through(None, "abc"), Some(0));
        assert_eq!(held_through(Some("garbage"), "abc"), None);
    }
}
