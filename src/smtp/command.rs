//! Commands as a proxy reads them: the verb, paths and their mailboxes, parameters.

/// The commands a proxy tells apart. Anything else is [`Verb::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth,
    Other,
}

/// The verb of a command line (case-insensitive), and its arguments after one space.
pub fn verb(line: &[u8]) -> (Verb, &[u8]) {
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let (word, rest) = line.split_at(end);
    let args = rest.strip_prefix(b" ").unwrap_or(rest);
    let v = match word.to_ascii_uppercase().as_slice() {
        b"EHLO" => Verb::Ehlo,
        b"HELO" => Verb::Helo,
        b"MAIL" => Verb::Mail,
        b"RCPT" => Verb::Rcpt,
        b"DATA" => Verb::Data,
        b"BDAT" => Verb::Bdat,
        b"RSET" => Verb::Rset,
        b"NOOP" => Verb::Noop,
        b"QUIT" => Verb::Quit,
        b"VRFY" => Verb::Vrfy,
        b"HELP" => Verb::Help,
        b"STARTTLS" => Verb::StartTls,
        b"AUTH" => Verb::Auth,
        _ => Verb::Other,
    };
    (v, args)
}

/// The path of `MAIL FROM:<path> params` or `RCPT TO:<path> params`, without its angle
/// brackets, and the parameters after it. `prefix` is `FROM:` or `TO:`
/// (case-insensitive). A quoted local part may hold `>` and spaces.
pub fn path_arg<'a>(args: &'a [u8], prefix: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    if args.len() < prefix.len() || !args[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &args[prefix.len()..];
    // Some clients put a space after the colon; RFC 5321 does not, servers accept it.
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    let inner = rest.strip_prefix(b"<")?;
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in inner.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                let params = &inner[i + 1..];
                return Some((&inner[..i], params.strip_prefix(b" ").unwrap_or(params)));
            }
            _ => {}
        }
    }
    None
}

/// The mailbox of a path as relaylog records it, or `None` when the path is refused:
/// a source route (`@a,@b:`, obsolete, which servers ignore) is taken off; a path that
/// is not UTF-8, or holds what addresses never hold outside quotes (white space,
/// control characters, comments, lists, angle brackets), is refused, so that what is
/// recorded is what the upstream delivers to.
pub fn mailbox(path: &[u8]) -> Option<&str> {
    let path = match path.first() {
        Some(b'@') => &path[path.iter().position(|&b| b == b':')? + 1..],
        _ => path,
    };
    let text = std::str::from_utf8(path).ok()?;
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        match c {
            _ if c.is_control() => return None,
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' | '(' | ')' | ',' | ';' | '<' | '>' if !quoted => return None,
            _ => {}
        }
    }
    (!quoted).then_some(text)
}

/// The value of an ESMTP parameter (`SIZE=1234`) among `params`, case-insensitive.
pub fn param<'a>(params: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    params.split(|&b| b == b' ').find_map(|p| {
        let eq = p.iter().position(|&b| b == b'=')?;
        p[..eq].eq_ignore_ascii_case(name).then(|| &p[eq + 1..])
    })
}

/// `BDAT <size> [LAST]`'s arguments.
pub fn bdat_args(args: &[u8]) -> Option<(u64, bool)> {
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words.next()?;
    if size.is_empty() || size.len() > 18 || !size.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = std::str::from_utf8(size).ok()?.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes_are_what_the_upstream_delivers_to() {
        assert_eq!(mailbox(b"jan@example.nl"), Some("jan@example.nl"));
        assert_eq!(mailbox(b""), Some(""), "the null sender");
        assert_eq!(
            mailbox(b"@relay.example,@b.example:jan@example.nl"),
            Some("jan@example.nl")
        );
        assert_eq!(
            mailbox(b"\"jan jansen\"@example.nl"),
            Some("\"jan jansen\"@example.nl")
        );
        assert_eq!(
            mailbox("jürgen@bücher.example".as_bytes()),
            Some("jürgen@bücher.example")
        );
        for refused in [
            &b"bob(comment)@example.com"[..],
            b"bob @example.com",
            b"a@b,c@d",
            b"\"unterminated@example.com",
            b"bell\x07@example.com",
            b"\xff@example.com",
            b"@route.example",
        ] {
            assert_eq!(
                mailbox(refused),
                None,
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
    }

    #[test]
    fn verbs_and_paths() {
        assert_eq!(verb(b"ehlo client.example").0, Verb::Ehlo);
        assert_eq!(verb(b"QUIT").0, Verb::Quit);
        assert_eq!(verb(b"XCLIENT ADDR=1.2.3.4").0, Verb::Other);
        let (v, args) = verb(b"MAIL FROM:<a@b.example> SIZE=12 BODY=8BITMIME");
        assert_eq!(v, Verb::Mail);
        let (path, params) = path_arg(args, b"FROM:").unwrap();
        assert_eq!(path, b"a@b.example");
        assert_eq!(param(params, b"size"), Some(&b"12"[..]));
        assert_eq!(
            path_arg(b"to:<\"odd> name\"@x.example> NOTIFY=NEVER", b"TO:"),
            Some((&b"\"odd> name\"@x.example"[..], &b"NOTIFY=NEVER"[..]))
        );
        assert_eq!(path_arg(b"FROM:<>", b"FROM:"), Some((&b""[..], &b""[..])));
        assert_eq!(path_arg(b"FROM:a@b", b"FROM:"), None);
        assert_eq!(path_arg(b"TO:<a@b", b"TO:"), None);
        assert_eq!(bdat_args(b"100 LAST"), Some((100, true)));
        assert_eq!(bdat_args(b"0 last"), Some((0, true)));
        assert_eq!(bdat_args(b"7"), Some((7, false)));
        assert_eq!(bdat_args(b"7 LAST x"), None);
        assert_eq!(bdat_args(b"-1"), None);
        assert_eq!(bdat_args(b"99999999999999999999"), None);
    }
}
