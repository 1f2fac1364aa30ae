//! The archive's format (see the parent module's notes): a header, then frames sealed
//! under the backup's key, whose plaintext, joined, is a sequence of entries.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use super::BackupError;
use crate::clock::Micros;

const MAGIC: &[u8; 8] = b"RLBACKUP";
const FORMAT: u8 = 1;
const HEADER_LEN: usize = 8 + 1 + 16 + 8;
/// The largest chunk sealed in one frame.
const CHUNK: usize = 1 << 20;
const TAG_LEN: usize = 16;
/// Longest entry name (partition names are 7 or 10 bytes).
const MAX_NAME: usize = 64;

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A partition file, named by its partition.
    Partition,
    /// A partition's wrapped keys (its key file's bytes).
    Keys,
    /// A partition left out (past retention, or expiring as the backup was made):
    /// named, no bytes.
    LeftOut,
    /// The ledger (its backups' keys taken out).
    Ledger,
    /// The end: nothing may follow.
    End,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Partition => b'p',
            Kind::Keys => b'k',
            Kind::LeftOut => b'x',
            Kind::Ledger => b'l',
            Kind::End => b'e',
        }
    }

    fn of(b: u8) -> Option<Kind> {
        Some(match b {
            b'p' => Kind::Partition,
            b'k' => Kind::Keys,
            b'x' => Kind::LeftOut,
            b'l' => Kind::Ledger,
            b'e' => Kind::End,
            _ => return None,
        })
    }
}

fn entry_header(kind: Kind, name: &str, size: u64) -> Vec<u8> {
    let mut h = vec![kind.byte()];
    h.extend_from_slice(&(name.len() as u16).to_be_bytes());
    h.extend_from_slice(name.as_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h
}

/// Writes one entry with its bytes.
pub(super) fn entry(
    out: &mut impl Write,
    kind: Kind,
    name: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    out.write_all(&entry_header(kind, name, bytes.len() as u64))?;
    out.write_all(bytes)
}

/// Writes one entry with a file's bytes, streamed.
pub(super) fn entry_from_file(
    out: &mut impl Write,
    kind: Kind,
    name: &str,
    path: &Path,
) -> std::io::Result<()> {
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

/// Reads the next entry's kind, name and size (its bytes follow in `r`).
pub(super) fn next_entry(r: &mut impl Read) -> Result<(Kind, String, u64), BackupError> {
    let damaged = |m: String| BackupError::Damaged(m);
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind)
        .map_err(|e| damaged(format!("it ends before its end entry ({e})")))?;
    let kind =
        Kind::of(kind[0]).ok_or_else(|| damaged(format!("unknown entry kind {}", kind[0])))?;
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
    Ok((kind, name, u64::from_be_bytes(size)))
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

/// Seals what is written to it in frames of at most [`CHUNK`] bytes, and hashes and
/// counts the archive's bytes as they go out.
pub(super) struct SealedWriter<W: Write> {
    out: W,
    key: LessSafeKey,
    header: Vec<u8>,
    buf: Vec<u8>,
    frame: u64,
    started: bool,
    digest: ring::digest::Context,
    written: u64,
}

impl<W: Write> SealedWriter<W> {
    pub(super) fn new(out: W, id: &[u8; 16], key: &[u8; 32], created_us: Micros) -> Self {
        SealedWriter {
            out,
            key: aead_key(key),
            header: header(id, created_us),
            buf: Vec::with_capacity(CHUNK),
            frame: 0,
            started: false,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            written: 0,
        }
    }

    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.digest.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn seal(&mut self, last: bool) -> std::io::Result<()> {
        if !self.started {
            let header = self.header.clone();
            self.emit(&header)?;
            self.started = true;
        }
        let aad = frame_aad(&self.header, self.frame, last);
        let mut sealed = std::mem::take(&mut self.buf);
        self.key
            .seal_in_place_append_tag(frame_nonce(self.frame), Aad::from(aad), &mut sealed)
            .map_err(|_| std::io::Error::other("sealing failed"))?;
        self.emit(&[u8::from(last)])?;
        self.emit(&(sealed.len() as u32).to_be_bytes())?;
        self.emit(&sealed)?;
        sealed.clear();
        self.buf = sealed;
        self.frame += 1;
        Ok(())
    }

    /// Seals the last frame; returns the output, the archive's size and its SHA-256.
    pub(super) fn finish(mut self) -> std::io::Result<(W, u64, Vec<u8>)> {
        self.seal(true)?;
        self.out.flush()?;
        Ok((
            self.out,
            self.written,
            self.digest.finish().as_ref().to_vec(),
        ))
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
pub(super) fn read_header(r: &mut impl Read) -> Result<([u8; 16], Micros), BackupError> {
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

/// Opens the frames of an archive whose header was read: reads give the entries'
/// bytes, and fail (`InvalidData`) on anything changed, reordered, cut short or added.
pub(super) struct SealedReader<R: Read> {
    inp: R,
    key: LessSafeKey,
    header: Vec<u8>,
    frame: u64,
    plain: Vec<u8>,
    pos: usize,
    last_seen: bool,
}

impl<R: Read> SealedReader<R> {
    pub(super) fn new(inp: R, id: &[u8; 16], created_us: Micros, key: &[u8; 32]) -> Self {
        SealedReader {
            inp,
            key: aead_key(key),
            header: header(id, created_us),
            frame: 0,
            plain: Vec::new(),
            pos: 0,
            last_seen: false,
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(data: &[u8]) -> Vec<u8> {
        let mut w = SealedWriter::new(Vec::new(), &[7; 16], &[9; 32], 42);
        w.write_all(data).unwrap();
        let (out, n, digest) = w.finish().unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(
            digest,
            ring::digest::digest(&ring::digest::SHA256, &out).as_ref()
        );
        out
    }

    fn open(archive: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut r = archive;
        let (id, created) = read_header(&mut r).unwrap();
        let mut out = Vec::new();
        SealedReader::new(r, &id, created, &[9; 32]).read_to_end(&mut out)?;
        Ok(out)
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

    #[test]
    fn entries_round_trip_and_refuse_long_names_and_unknown_kinds() {
        let mut buf = Vec::new();
        entry(&mut buf, Kind::Keys, "2026-12-01", b"abc").unwrap();
        entry(&mut buf, Kind::End, "", b"").unwrap();
        let mut r = buf.as_slice();
        assert_eq!(
            next_entry(&mut r).unwrap(),
            (Kind::Keys, "2026-12-01".into(), 3)
        );
        let mut bytes = [0u8; 3];
        r.read_exact(&mut bytes).unwrap();
        assert_eq!(next_entry(&mut r).unwrap().0, Kind::End);
        let long = entry_header(Kind::Partition, &"x".repeat(MAX_NAME + 1), 0);
        assert!(next_entry(&mut long.as_slice()).is_err());
        assert!(next_entry(&mut [b'z', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0].as_slice()).is_err());
    }
}
