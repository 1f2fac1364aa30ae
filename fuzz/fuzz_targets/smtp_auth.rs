//! The SMTP AUTH watcher (`relaylog::ingress::smtp::offer::AuthWatch`), which reads a
//! client's AUTH PLAIN or LOGIN exchange to keep the account it logs in as, while the
//! exchange carries its password:
//!
//! - any exchange (AUTH's arguments, the upstream's 334 challenges, the client's
//!   responses, one a line): never a panic; an identity kept has no control
//!   character and fits an identifier;
//! - a PLAIN login built from the input (`\0 user \0 password`): the identity kept is
//!   the user, never the password.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use relaylog::canonical::MAX_IDENTIFIER_BYTES;
use relaylog::ingress::smtp::offer::AuthWatch;
use relaylog::smtp::Reply;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    if selector & 1 == 0 {
        exchange(data);
    } else {
        plain(data);
    }
});

fn exchange(data: &[u8]) {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let Some(args) = lines.next() else { return };
    let Ok(mut watch) = AuthWatch::start(args) else {
        return;
    };
    for line in lines {
        if line.starts_with(b"334 ") {
            let mut raw = line.to_vec();
            raw.extend_from_slice(b"\r\n");
            watch.challenge(&Reply { code: 334, raw });
        } else if watch.response(line).is_err() {
            return;
        }
    }
    if let Some(identity) = watch.identity() {
        assert!(!identity.chars().any(char::is_control), "{identity:?}");
        assert!(!identity.is_empty() && identity.len() <= MAX_IDENTIFIER_BYTES);
    }
}

fn plain(data: &[u8]) {
    let split = data.iter().position(|&b| b == 0xff).unwrap_or(data.len());
    let (user, password) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    if user.contains(&0) || password.contains(&0) {
        return;
    }
    let mut message = vec![0];
    message.extend_from_slice(user);
    message.push(0);
    message.extend_from_slice(password);
    let response = base64::engine::general_purpose::STANDARD.encode(&message);
    let Ok(watch) = AuthWatch::start(format!("PLAIN {response}").as_bytes()) else {
        return;
    };
    let Some(identity) = watch.identity() else {
        return;
    };
    // A user name of plain text (no backslash, no control character) is kept as it is
    // (so never the password, unless the two are the same); anything else is escaped,
    // one for one.
    if let Ok(user) = std::str::from_utf8(user)
        && !user.contains('\\')
        && !user.chars().any(char::is_control)
    {
        assert_eq!(identity, user, "the identity is not the user");
    }
    assert!(identity.len() <= MAX_IDENTIFIER_BYTES);
}
