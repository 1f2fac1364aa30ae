//! The configuration file (`relaylog::config::Config::parse`): any text is a
//! configuration or an error naming what is wrong, never a panic; what parses gives
//! its warnings.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use relaylog::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            let _ = config.warnings();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
