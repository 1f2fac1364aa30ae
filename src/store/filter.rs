//! A closed partition's filter: a blocked Bloom filter of every blind-index tag its
//! records hold, in a file beside it (`<day>.sqlite-filter`), so that a lookup rules out
//! a partition without the identifier without opening its database.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! header  "RLF1" | pages u32 | through i64 | entries u64 | reserved [8]   (32 bytes)
//! macs    pages × 16 bytes: MAC of page i (see below)
//! pages   pages × 1,024 bytes of bits: 16 blocks of 512 bits each
//! ```
//!
//! An entry (an identifier kind and its tag) sets [`K`] bits of one block: a lookup
//! reads one page. Each page carries its own MAC under the partition's index key
//! ([`PartitionKeys::derived_mac`] over the partition's name, the header, the page's
//! number and its bits), so that a lookup checks what it reads (two `pread`s, three
//! past a 250 KiB bitmap) and not
//! the whole file, and a filter cannot be moved to another partition or have bits
//! cleared unseen. A filter that does not check out is not used: the lookup opens the
//! partition as if there were none.
//!
//! The filter holds the tags of the records with ids up to `through`. It is put in
//! place under the partition's write lock once no record past `through` exists, and
//! the writer deletes it, under that lock, before it commits a record into the
//! partition (see `compact`); so a filter present says "absent" of no record that is
//! there: at most it answers "maybe" for one that is not (about 1 in 200 at
//! [`BITS_PER_ENTRY`]).

use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::keys::{IndexKind, PartitionKeys};

const MAGIC: &[u8; 4] = b"RLF1";
const HEADER: usize = 32;
const MAC: usize = 16;
const PAGE: usize = 1024;
const BLOCK: usize = 64;
const BLOCKS_PER_PAGE: usize = PAGE / BLOCK;
/// Bits set per entry, all in one 512-bit block.
pub const K: u32 = 7;
/// Bits of filter per distinct entry (a false positive about 1 time in 200).
pub const BITS_PER_ENTRY: usize = 12;
/// Most pages a filter has: 1 GiB of bits, a partition of ~700 M distinct identifiers.
/// A larger header is refused as damaged.
const MAX_PAGES: u32 = 1 << 20;

/// The filter's path: beside the partition, named like SQLite's side files
/// (`-wal`, `-shm`); expiry removes it with them.
pub fn path_of(partition_file: &Path) -> PathBuf {
    let mut name = partition_file.as_os_str().to_owned();
    name.push(SUFFIX);
    PathBuf::from(name)
}

/// The suffix of a partition's filter, and of the filter being written.
pub const SUFFIX: &str = "-filter";
pub const TMP_SUFFIX: &str = "-filter.tmp";

/// Where a filter is written before it is put in place.
pub fn tmp_path_of(partition_file: &Path) -> PathBuf {
    let mut name = partition_file.as_os_str().to_owned();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

/// What a filter says of one identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// No record of the partition holds it: ruled out.
    Absent,
    /// A record up to `through` may hold it (or none: a false alarm, about 1 in 200).
    Maybe { through: i64 },
    /// No filter (not built yet, or removed by the writer).
    Missing,
    /// A filter that does not check out (damaged, truncated, another partition's).
    Damaged,
    /// A filter that could not be opened (permissions, too many open files).
    Unreadable(std::io::ErrorKind),
}

/// Opens a filter for reading: never through a link, and never waiting on something
/// that is not a file (a FIFO at its name reads as empty, so as damaged).
fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

fn position(kind: IndexKind, tag: i64, blocks: u64) -> (u64, u64) {
    let h = mix(tag as u64 ^ (kind as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // Fast range: the block is the high half of h times the count.
    let block = ((h >> 32) * blocks) >> 32;
    (block, mix(h))
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn bits(bits: u64) -> impl Iterator<Item = usize> {
    (0..K).map(move |j| ((bits >> (9 * j)) & 511) as usize)
}

/// Whether every bit of `h` is set in `block` (one 512-bit block).
fn all_set(block: &[u8], h: u64) -> bool {
    bits(h).all(|bit| block[bit / 8] & (1 << (bit % 8)) != 0)
}

/// A header's page count and `through`, if it is one (magic, pages in bounds).
fn read_header(head: &[u8]) -> Option<(u32, i64)> {
    if head.len() < HEADER || &head[..4] != MAGIC {
        return None;
    }
    let pages = u32::from_be_bytes(head[4..8].try_into().ok()?);
    let through = i64::from_be_bytes(head[8..16].try_into().ok()?);
    (pages > 0 && pages <= MAX_PAGES).then_some((pages, through))
}

/// Whether a page's MAC is the one stored, compared whole (no early exit).
fn mac_ok(keys: &PartitionKeys, head: &[u8], page: u32, bits: &[u8], stored: &[u8]) -> bool {
    let expected = page_mac(keys, head, page, bits);
    expected.len() == stored.len()
        && expected
            .iter()
            .zip(stored)
            .fold(0u8, |d, (a, b)| d | (a ^ b))
            == 0
}

fn header(pages: u32, through: i64, entries: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&pages.to_be_bytes());
    h[8..16].copy_from_slice(&through.to_be_bytes());
    h[16..24].copy_from_slice(&entries.to_be_bytes());
    h
}

fn page_mac(keys: &PartitionKeys, header: &[u8], page: u32, bits: &[u8]) -> [u8; MAC] {
    let name = keys.partition().to_string();
    keys.derived_mac(&[
        b"relaylog filter v1",
        name.as_bytes(),
        header,
        &page.to_be_bytes(),
        bits,
    ])
}

/// A filter being built: sized for `entries` distinct entries, then filled one entry
/// at a time (an entry added twice costs nothing more), so that building it holds its
/// bits and nothing else.
pub struct Builder {
    pages: u32,
    bitmap: Vec<u8>,
    entries: u64,
}

impl Builder {
    pub fn new(entries: u64) -> Self {
        let wanted = (entries.max(1) as usize).saturating_mul(BITS_PER_ENTRY) / 8;
        let pages = wanted.div_ceil(PAGE).clamp(1, MAX_PAGES as usize) as u32;
        Self {
            pages,
            bitmap: vec![0u8; pages as usize * PAGE],
            entries,
        }
    }

    pub fn add(&mut self, kind: IndexKind, tag: i64) {
        let (block, h) = position(kind, tag, u64::from(self.pages) * BLOCKS_PER_PAGE as u64);
        let base = block as usize * BLOCK;
        for bit in bits(h) {
            self.bitmap[base + bit / 8] |= 1 << (bit % 8);
        }
    }

    /// Writes the filter, for records up to `through`, durably to `path` (the
    /// temporary path: [`publish`] puts it in place).
    pub fn write(self, path: &Path, keys: &PartitionKeys, through: i64) -> std::io::Result<()> {
        let head = header(self.pages, through, self.entries);
        // Made afresh, never through a link left at its name: a stale one goes first.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let mut f = std::io::BufWriter::new(file);
        f.write_all(&head)?;
        for (i, page) in self.bitmap.chunks(PAGE).enumerate() {
            f.write_all(&page_mac(keys, &head, i as u32, page))?;
        }
        f.write_all(&self.bitmap)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    }
}

/// Puts a written filter in place (rename, then the directory synced).
pub fn publish(tmp: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(tmp, path)?;
    sync_parent(path)
}

/// Syncs the directory holding `path`, so that a rename or an unlink in it is durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Looks `(kind, tag)` up in the filter at `path`: reads the header and the page's MAC,
/// then the page, and checks the MAC before answering.
pub fn probe(path: &Path, keys: &PartitionKeys, kind: IndexKind, tag: i64) -> Probe {
    let file = match open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Probe::Missing,
        // A link where the filter should be (ELOOP) is no filter of ours.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Probe::Damaged,
        Err(e) => return Probe::Unreadable(e.kind()),
    };
    match probe_file(&file, keys, kind, tag) {
        Some(p) => p,
        None => Probe::Damaged,
    }
}

fn probe_file(
    file: &std::fs::File,
    keys: &PartitionKeys,
    kind: IndexKind,
    tag: i64,
) -> Option<Probe> {
    // The header and the first MACs in one read (enough for a 250 KiB bitmap).
    let mut first = [0u8; 4096];
    let got = read_up_to(file, &mut first, 0)?;
    let (pages, through) = read_header(&first[..got])?;
    let head = &first[..HEADER];
    let (block, h) = position(kind, tag, u64::from(pages) * BLOCKS_PER_PAGE as u64);
    let page = (block / BLOCKS_PER_PAGE as u64) as u32;
    let mac_at = HEADER + page as usize * MAC;
    let mut mac = [0u8; MAC];
    if mac_at + MAC <= got {
        mac.copy_from_slice(&first[mac_at..mac_at + MAC]);
    } else {
        file.read_exact_at(&mut mac, mac_at as u64).ok()?;
    }
    let mut bitmap = vec![0u8; PAGE];
    let page_at = HEADER + pages as usize * MAC + page as usize * PAGE;
    file.read_exact_at(&mut bitmap, page_at as u64).ok()?;
    if !mac_ok(keys, head, page, &bitmap, &mac) {
        return None;
    }
    let base = (block as usize % BLOCKS_PER_PAGE) * BLOCK;
    Some(if all_set(&bitmap[base..base + BLOCK], h) {
        Probe::Maybe { through }
    } else {
        Probe::Absent
    })
}

fn read_up_to(file: &std::fs::File, buf: &mut [u8], at: u64) -> Option<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(got)
}

/// A whole filter read into memory and checked page by page: what `verify` asks of
/// a compacted partition.
pub struct Checked {
    pub through: i64,
    pages: u32,
    bitmap: Vec<u8>,
}

impl Checked {
    /// `None` when the filter does not check out (any page).
    pub fn read(path: &Path, keys: &PartitionKeys) -> std::io::Result<Option<Checked>> {
        use std::io::Read;
        let mut file = open(path)?;
        let mut head = [0u8; HEADER];
        if read_up_to(&file, &mut head, 0) != Some(HEADER) {
            return Ok(None);
        }
        let Some((pages, through)) = read_header(&head) else {
            return Ok(None);
        };
        // Read only what the header (bounded) says, and only if that is the file.
        let len = HEADER + pages as usize * (MAC + PAGE);
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() != len as u64 {
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(len);
        file.read_to_end(&mut bytes)?;
        if bytes.len() != len {
            return Ok(None);
        }
        let (head, rest) = bytes.split_at(HEADER);
        let (macs, bitmap) = rest.split_at(pages as usize * MAC);
        for (i, (mac, page)) in macs.chunks(MAC).zip(bitmap.chunks(PAGE)).enumerate() {
            if !mac_ok(keys, head, i as u32, page, mac) {
                return Ok(None);
            }
        }
        bytes.drain(..HEADER + pages as usize * MAC);
        Ok(Some(Checked {
            through,
            pages,
            bitmap: bytes,
        }))
    }

    pub fn holds(&self, kind: IndexKind, tag: i64) -> bool {
        let (block, h) = position(kind, tag, u64::from(self.pages) * BLOCKS_PER_PAGE as u64);
        let base = block as usize * BLOCK;
        all_set(&self.bitmap[base..base + BLOCK], h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::partition::PartitionId;

    fn write(path: &Path, keys: &PartitionKeys, through: i64, entries: &[(IndexKind, i64)]) {
        let mut b = Builder::new(entries.len() as u64);
        for &(kind, tag) in entries {
            b.add(kind, tag);
        }
        b.write(path, keys, through).unwrap();
    }

    fn keys(dir: &Path, day: &str) -> std::sync::Arc<PartitionKeys> {
        let ring = crate::store::keys::tests::keyring(dir, 8);
        ring.keys_or_create(PartitionId::parse(day).unwrap())
            .unwrap()
    }

    /// A link planted where a filter is written or read is never followed: the file it
    /// points at is left as it was, and a linked filter is no filter.
    #[test]
    fn links_at_a_filters_names_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path(), "2026-01-01");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let tmp = dir.path().join("2026-01-01.sqlite-filter.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        write(&tmp, &k, 1, &[(IndexKind::Account, 7)]);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&tmp).unwrap().is_file());
        let path = dir.path().join("2026-01-01.sqlite-filter");
        std::os::unix::fs::symlink(&tmp, &path).unwrap();
        assert_eq!(probe(&path, &k, IndexKind::Account, 7), Probe::Damaged);
        assert!(Checked::read(&path, &k).is_err());
        std::fs::remove_file(&path).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(
            probe(&path, &k, IndexKind::Account, 7),
            Probe::Maybe { through: 1 }
        );
    }

    /// Every entry put in is found; of 20,000 never put in, few are "maybe".
    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path(), "2026-01-01");
        let path = dir.path().join("2026-01-01.sqlite-filter");
        let entries: Vec<(IndexKind, i64)> = (0..20_000i64)
            .map(|i| {
                (
                    IndexKind::Recipient,
                    k.blind_index(IndexKind::Recipient, &format!("+3161{i:07}")),
                )
            })
            .chain((0..200).map(|i| {
                (
                    IndexKind::Account,
                    k.blind_index(IndexKind::Account, &format!("a{i}")),
                )
            }))
            .collect();
        write(&path, &k, 99, &entries);
        let checked = Checked::read(&path, &k).unwrap().unwrap();
        assert_eq!(checked.through, 99);
        assert!(entries.iter().all(|&(kind, tag)| checked.holds(kind, tag)));
        let mut maybe = 0;
        for i in 20_000..40_000i64 {
            let tag = k.blind_index(IndexKind::Recipient, &format!("+3161{i:07}"));
            match probe(&path, &k, IndexKind::Recipient, tag) {
                Probe::Maybe { through: 99 } => maybe += 1,
                Probe::Absent => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(
            maybe < 200,
            "{maybe} false positives in 20,000 (1 in 200 expected)"
        );
        // The same tag under another kind is another entry.
        let tag = k.blind_index(IndexKind::Account, "a1");
        assert_eq!(
            probe(&path, &k, IndexKind::Account, tag),
            Probe::Maybe { through: 99 }
        );
    }

    /// A flipped bit, a truncated file, another partition's filter, another partition's
    /// keys: not used.
    #[test]
    fn a_filter_that_does_not_check_out_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path(), "2026-01-01");
        let other = keys(dir.path(), "2026-01-02");
        let path = dir.path().join("f");
        let tag = k.blind_index(IndexKind::Recipient, "+31612345678");
        write(&path, &k, 1, &[(IndexKind::Recipient, tag)]);
        assert_eq!(
            probe(&path, &k, IndexKind::Recipient, tag),
            Probe::Maybe { through: 1 }
        );
        assert_eq!(
            probe(&path, &other, IndexKind::Recipient, tag),
            Probe::Damaged
        );
        let good = std::fs::read(&path).unwrap();
        for at in [0, 5, 10, HEADER + 3, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert_eq!(
                probe(&path, &k, IndexKind::Recipient, tag),
                Probe::Damaged,
                "byte {at}"
            );
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert_eq!(probe(&path, &k, IndexKind::Recipient, tag), Probe::Damaged);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(probe(&path, &k, IndexKind::Recipient, tag), Probe::Missing);
    }
}
