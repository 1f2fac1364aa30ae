//! Decoders of what the store reads back (posting lists, sealed payloads) and number
//! normalisation: never panic; normalisation is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaylog::canonical::NumberNormalizer;
use relaylog::store::{codec, postings};

fuzz_target!(|data: &[u8]| {
    let _ = postings::decode(data, &mut Vec::new());
    let _ = codec::decode(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let n = NumberNormalizer::new(phonenumber_region());
        let once = n.normalize(s);
        assert_eq!(n.normalize(&once.value), once);
    }
});

fn phonenumber_region() -> phonenumber::country::Id {
    phonenumber::country::Id::NL
}
