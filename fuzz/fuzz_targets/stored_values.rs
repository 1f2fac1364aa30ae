//! What the store reads back from disk, where damage or tampering puts any bytes:
//! posting lists, sealed payloads, outcome blocks (checked against their columns),
//! journal segments and frames; and number and e-mail normalisation, which must be
//! idempotent.
//! None of them may panic; a block's events lie within its columns.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use relaylog::canonical::{NumberNormalizer, email_index_form, normalize_email};
use relaylog::store::{codec, events, journal, postings};

/// Built once: the region's rules come from phonenumber's metadata.
static NORMALIZER: LazyLock<NumberNormalizer> =
    LazyLock::new(|| NumberNormalizer::new(phonenumber::country::Id::NL));

fuzz_target!(|data: &[u8]| {
    let _ = postings::decode(data, &mut Vec::new());
    let _ = codec::decode(data);
    let _ = journal::decode_frame(data);
    let _ = journal::read_frames(data, |_| true);
    if let Some((columns, blob)) = data.split_first_chunk::<32>() {
        let column = |i: usize| i64::from_le_bytes(columns[i * 8..i * 8 + 8].try_into().unwrap());
        let (first, last) = (column(0), column(1));
        if let Ok(events) = events::decode(first, last, (column(2), column(3)), blob, |_| true) {
            for (id, _) in &events {
                assert!(
                    (first..=last).contains(id),
                    "an event outside its block's ids"
                );
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let once = NORMALIZER.normalize(s);
        assert_eq!(NORMALIZER.normalize(&once.value), once);
        // E-mail addresses too: as sealed, and as indexed.
        let email = normalize_email(s);
        assert_eq!(normalize_email(&email.value), email);
        let indexed = email_index_form(&email.value);
        assert_eq!(email_index_form(&indexed), indexed);
    }
});
