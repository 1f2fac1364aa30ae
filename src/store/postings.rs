//! Posting lists: the record ids that share one `(bucket, tag)` in a blind index,
//! stored as one row instead of one row per record.
//!
//! Layout of a posting blob: the ids in ascending order, the first as an unsigned
//! LEB128 varint, each next one as the varint of its difference to the previous
//! (never 0: ids are distinct). A row holds at most [`MAX_IDS`] ids so that a row stays
//! within a page or two; a longer list is split into rows keyed by their first id.

/// Most ids in one posting row.
pub const MAX_IDS: usize = 1_024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("posting list is malformed")]
pub struct PostingError;

/// Appends the encoding of `ids` (ascending, distinct, non-negative) to `out`.
pub fn encode(ids: &[i64], out: &mut Vec<u8>) {
    let mut prev = 0i64;
    for (i, &id) in ids.iter().enumerate() {
        let delta = if i == 0 { id } else { id - prev };
        put_varint(delta as u64, out);
        prev = id;
    }
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Decodes a posting blob, appending its ids to `out`.
pub fn decode(blob: &[u8], out: &mut Vec<i64>) -> Result<(), PostingError> {
    let mut prev: i64 = 0;
    let mut first = true;
    let mut v: u64 = 0;
    let mut shift = 0u32;
    for &b in blob {
        if shift >= 64 {
            return Err(PostingError);
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 != 0 {
            shift += 7;
            continue;
        }
        let delta = i64::try_from(v).map_err(|_| PostingError)?;
        if !first && delta == 0 {
            return Err(PostingError);
        }
        prev = prev.checked_add(delta).ok_or(PostingError)?;
        out.push(prev);
        first = false;
        v = 0;
        shift = 0;
    }
    if shift != 0 {
        return Err(PostingError);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(mut ids in proptest::collection::btree_set(0i64..i64::MAX / 2, 0..200)) {
            let ids: Vec<i64> = std::mem::take(&mut ids).into_iter().collect();
            let mut blob = Vec::new();
            encode(&ids, &mut blob);
            let mut back = Vec::new();
            decode(&blob, &mut back).unwrap();
            prop_assert_eq!(back, ids);
        }

        #[test]
        fn garbage_never_panics(blob in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&blob, &mut Vec::new());
        }
    }

    #[test]
    fn dense_ids_take_a_byte_each() {
        let ids: Vec<i64> = (1_000_000..1_001_000).collect();
        let mut blob = Vec::new();
        encode(&ids, &mut blob);
        assert_eq!(blob.len(), 3 + 999);
        assert_eq!(
            decode(&[0x80], &mut Vec::new()),
            Err(PostingError),
            "truncated varint"
        );
        assert_eq!(
            decode(&[1, 0], &mut Vec::new()),
            Err(PostingError),
            "repeated id"
        );
    }
}
