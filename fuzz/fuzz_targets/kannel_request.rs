//! Kannel and Jasmin request parsing (any query, content type and body) and their
//! replies' reading: the parsers never panic, and every message they accept has a
//! recipient and an account.
#![no_main]

use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use relaylog::config::ProfileKind;
use relaylog::http1::Fields;
use relaylog::ingress::profile::{Extract, RequestView};
use relaylog::simulator::Simulator;

const TYPES: [&str; 5] = [
    "text/xml",
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/octet-stream",
    "x/y",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (query, body) = rest.split_at(split);
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static(TYPES[selector as usize % TYPES.len()]),
    );
    let method = if selector & 0x80 != 0 {
        Method::POST
    } else {
        Method::GET
    };
    for kind in [ProfileKind::Kannel, ProfileKind::Jasmin] {
        let profile = Simulator::profile_for(kind);
        let view = RequestView {
            method: &method,
            path: &profile.path,
            query: Some(query),
            headers: Fields::Map(&headers),
            body,
        };
        if let Ok(Extract::Message(m)) = profile.extract(&view) {
            assert!(!m.recipients.is_empty());
            assert!(!m.account.trim().is_empty());
        }
        // The same bytes as the gateway's reply (its outcome and message id).
        let _ = profile.read_outcome(http::StatusCode::ACCEPTED, body);
    }
});
