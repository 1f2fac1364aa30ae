//! JSON profile parsing with the simulator's default pointers and basic auth.
#![no_main]

use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use relaylog::config::ProfileKind;
use relaylog::http1::Fields;
use relaylog::ingress::profile::{Extract, RequestView};
use relaylog::simulator::Simulator;

fuzz_target!(|data: &[u8]| {
    let profile = Simulator::profile_for(ProfileKind::Json);
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Basic dTpw"));
    let view = RequestView {
        method: &Method::POST,
        path: &profile.path,
        query: None,
        headers: Fields::Map(&headers),
        body: data,
    };
    if let Ok(Extract::Message(m)) = profile.extract(&view) {
        assert!(!m.recipients.is_empty());
    }
    let _ = profile.read_outcome(http::StatusCode::OK, data);
});
