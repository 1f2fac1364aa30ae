//! The end of `DATA` content, found as the bytes stream past.

/// Finds the end of `DATA` content (`CRLF . CRLF`, the first CRLF being the `DATA`
/// line's own) in the bytes as they stream past, and refuses line endings that
/// receivers read differently: a bare LF, or a CR not followed by LF. Those are how
/// SMTP smuggling hides a second message inside the first; a proxy that ends DATA
/// where its upstream does not would let that message through unrecorded.
#[derive(Debug, Clone, Copy)]
pub struct DotScanner {
    state: At,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// After CRLF.
    LineStart,
    /// A dot at the start of a line.
    LeadingDot,
    /// `CRLF . CR`.
    LeadingDotCr,
    /// A CR inside a line.
    Cr,
    /// Inside a line.
    Mid,
}

/// What [`DotScanner::scan`] found in a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No end yet: this many bytes of the chunk are content. A CR, or a dot that
    /// begins a line, at the very end is left out (scan it again with what follows).
    More(usize),
    /// The content ends after this many bytes of the chunk, the whole `.CRLF`
    /// included: the content in this chunk is three bytes fewer.
    End(usize),
    /// A bare LF or bare CR at this offset: the bytes before it are content.
    Bare(usize),
}

impl Default for DotScanner {
    fn default() -> Self {
        DotScanner {
            state: At::LineStart,
        }
    }
}

impl DotScanner {
    /// Scans the next chunk: the bytes the last scan did not take, then what came
    /// after. Between chunks the state is `LineStart` or `Mid` (a chunk never ends
    /// just after a CR or a line's leading dot: those wait), so the CR that `Bare(i -
    /// 1)` points at is always in this chunk.
    pub fn scan(&mut self, chunk: &[u8]) -> Scan {
        let mut i = 0;
        while i < chunk.len() {
            if self.state == At::Mid {
                match memchr::memchr2(b'\r', b'\n', &chunk[i..]) {
                    None => return Scan::More(chunk.len()),
                    Some(k) => i += k,
                }
            }
            let b = chunk[i];
            // A CR, or a dot at the start of a line, as the chunk's last byte waits
            // for what follows: so that a CR is never sent before it is known not to be
            // bare, and the end `.CRLF` is always whole in the chunk that ends.
            if i + 1 == chunk.len() {
                match (self.state, b) {
                    (At::LineStart, b'.') | (At::Mid | At::LineStart, b'\r') => {
                        return Scan::More(i);
                    }
                    (At::LeadingDot, b'\r') => {
                        // `.CR` at the end: both wait (the dot was taken in this
                        // chunk, since a dot that ends a chunk waits).
                        self.state = At::LineStart;
                        return Scan::More(i - 1);
                    }
                    _ => {}
                }
            }
            self.state = match (self.state, b) {
                (At::LineStart, b'.') => At::LeadingDot,
                (At::LeadingDot, b'\r') => At::LeadingDotCr,
                (At::LeadingDotCr, b'\n') => return Scan::End(i + 1),
                (At::Cr, b'\n') => At::LineStart,
                // The CR before this byte, never the last of a chunk, is bare.
                (At::LeadingDotCr | At::Cr, _) => return Scan::Bare(i - 1),
                (_, b'\n') => return Scan::Bare(i),
                (_, b'\r') => At::Cr,
                _ => At::Mid,
            };
            i += 1;
        }
        Scan::More(chunk.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the content ends, read the plain way: CRLF.CRLF ends it, a bare LF or a
    /// CR not followed by LF is refused, and the bytes that could still become either
    /// (a last CR, a line's leading dot or `.CR`) wait.
    fn reference(input: &[u8]) -> Scan {
        let (mut i, mut line_start) = (0, true);
        while i < input.len() {
            let rest = &input[i..];
            if line_start && rest.starts_with(b".\r\n") {
                return Scan::End(i + 3);
            }
            if line_start && (rest == b"." || rest == b".\r") {
                return Scan::More(i);
            }
            match input[i] {
                b'\n' => return Scan::Bare(i),
                b'\r' if i + 1 == input.len() => return Scan::More(i),
                b'\r' if input[i + 1] != b'\n' => return Scan::Bare(i),
                b'\r' => {
                    i += 2;
                    line_start = true;
                }
                _ => {
                    i += 1;
                    line_start = false;
                }
            }
        }
        Scan::More(input.len())
    }

    /// Feeds `input` in chunks cut at `cuts`, as a session does (what a scan did not
    /// take is offered again with the next bytes), and says what was found overall.
    fn scan_in_chunks(input: &[u8], cuts: &[usize]) -> Scan {
        let mut s = DotScanner::default();
        let mut taken = 0;
        let mut got = Scan::More(0);
        for end in cuts.iter().copied().chain([input.len()]) {
            if end < taken {
                continue;
            }
            got = match s.scan(&input[taken..end]) {
                Scan::More(n) => {
                    taken += n;
                    Scan::More(taken)
                }
                Scan::End(n) => {
                    // So content = n - 3 in the chunk that ends, exactly.
                    assert!(n >= 3, "the end .CRLF is whole in the chunk that ends");
                    Scan::End(taken + n)
                }
                Scan::Bare(n) => Scan::Bare(taken + n),
            };
            if !matches!(got, Scan::More(_)) {
                break;
            }
        }
        got
    }

    proptest::proptest! {
        /// The scanner agrees with the plain reading however the bytes are chunked.
        #[test]
        fn the_scanner_agrees_with_the_reference(
            input in proptest::collection::vec(proptest::sample::select(b"a.\r\n".to_vec()), 0..24),
            mut cuts in proptest::collection::vec(0usize..24, 0..4),
        ) {
            cuts.sort_unstable();
            let cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            proptest::prop_assert_eq!(scan_in_chunks(&input, &cuts), reference(&input));
        }
    }

    /// Every way to split the content finds the same end (and has the whole `.CRLF` in
    /// the chunk that ends, so sizes come out exact), and bare line endings are caught
    /// wherever the split falls, before any byte of them counts as content.
    #[test]
    fn the_end_of_data_is_found_across_any_split() {
        let cases: [(&[u8], Scan); 12] = [
            (b"a\r\r\n.\r\n", Scan::Bare(1)),
            (b"a\r\n.\r\r\n", Scan::Bare(4)),
            (b"hello\r\n.", Scan::More(7)),
            (b"hello\r\n.\r\nMAIL", Scan::End(10)),
            (b".\r\n", Scan::End(3)),
            (b"..stuffed\r\n.\r\n", Scan::End(14)),
            (b"a\r\n.x\r\n.\r\n", Scan::End(10)),
            (b"smuggle\n.\nMAIL", Scan::Bare(7)),
            (b"smuggle\r\n.\nMAIL", Scan::Bare(10)),
            (b"cr\r.\r\n", Scan::Bare(2)),
            (b"a\r\n.\rx", Scan::Bare(4)),
            (b"no end yet\r\n", Scan::More(12)),
        ];
        for (input, want) in cases {
            for split in 0..=input.len() {
                let got = scan_in_chunks(input, &[split]);
                let shown = String::from_utf8_lossy(input);
                assert_eq!(got, want, "{shown:?} split at {split}");
            }
        }
    }
}
