//! The end of `DATA` (`relaylog::smtp::DotScanner`), where SMTP smuggling lives: the
//! same bytes end the content at the same place, or are refused at the same bare line
//! ending, however the network cuts them into reads; and an end is always a
//! `CRLF . CRLF` (the first CRLF being the `DATA` line's own).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaylog::smtp::{DotScanner, Scan};

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Ends after this many bytes of the stream.
    End(usize),
    /// A bare CR or LF at this offset.
    Bare(usize),
    /// No end in the stream; this many bytes taken as content.
    Open(usize),
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let whole = scan(data, data.len().max(1));
    for step in [1, 2, usize::from(selector) + 1] {
        assert_eq!(
            scan(data, step),
            whole,
            "{step}-byte reads end DATA elsewhere"
        );
    }
    match whole {
        Outcome::End(end) => {
            assert!(end >= 3 && &data[end - 3..end] == b".\r\n");
            assert!(
                end == 3 || &data[end - 5..end - 3] == b"\r\n",
                "an end not at a line's start"
            );
            assert!(
                !has_bare(&data[..end - 3]),
                "content with a bare line ending was taken"
            );
        }
        Outcome::Bare(at) => {
            assert!(matches!(data[at], b'\r' | b'\n'));
            assert!(
                !has_bare(&data[..at]),
                "an earlier bare line ending was missed"
            );
        }
        Outcome::Open(taken) => {
            assert!(taken <= data.len());
            assert!(
                !has_bare(&data[..taken]),
                "content with a bare line ending was taken"
            );
        }
    }
});

/// The stream fed to one scanner `step` bytes at a time, as a session feeds it: what a
/// scan leaves (a CR or a line's leading dot at a chunk's end) comes again with more.
fn scan(data: &[u8], step: usize) -> Outcome {
    let mut scanner = DotScanner::default();
    let mut pending = Vec::new();
    let (mut taken, mut at) = (0, 0);
    loop {
        let next = (at + step).min(data.len());
        pending.extend_from_slice(&data[at..next]);
        at = next;
        match scanner.scan(&pending) {
            Scan::End(n) => return Outcome::End(taken + n),
            Scan::Bare(i) => return Outcome::Bare(taken + i),
            Scan::More(n) => {
                assert!(n <= pending.len());
                taken += n;
                pending.drain(..n);
                if at == data.len() {
                    return Outcome::Open(taken);
                }
            }
        }
    }
}

/// A CR not followed by LF, or an LF not preceded by CR.
fn has_bare(content: &[u8]) -> bool {
    content.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => content.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || content[i - 1] != b'\r',
        _ => false,
    })
}
