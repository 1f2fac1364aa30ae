//! Manifests given to `verify-export` (`relaylog::compliance::disclosure::
//! verify_manifest`): a signature file and a manifest, both from whoever hands them
//! over. Most inputs are signed here with a test key, so that the manifest reader
//! behind the signature check is reached; the rest take their signature text from
//! the input. None passes unsigned, and none still passes once a byte is changed.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use relaylog::compliance::disclosure::verify_manifest;
use ring::signature::{Ed25519KeyPair, KeyPair};

static KEY: LazyLock<Ed25519KeyPair> =
    LazyLock::new(|| Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("a 32-byte seed"));

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let public = KEY.public_key().as_ref();
    if selector & 1 == 0 {
        let mut sig = hex(KEY.sign(data).as_ref());
        if selector & 2 != 0 {
            sig = format!("  {}\n", sig.to_uppercase());
        }
        if !data.is_empty() && verify_manifest(data, sig.as_bytes(), public).is_ok() {
            // One byte changed anywhere, and the signature no longer holds.
            let mut changed = data.to_vec();
            let at = usize::from(selector) % changed.len();
            changed[at] ^= 0x20;
            assert!(
                verify_manifest(&changed, sig.as_bytes(), public).is_err(),
                "a changed manifest passed"
            );
        }
    } else {
        let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
        let (sig, manifest) = data.split_at(split);
        assert!(
            verify_manifest(manifest, sig, public).is_err(),
            "a manifest passed unsigned"
        );
    }
});

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
