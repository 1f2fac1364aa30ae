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
/// (case-insensitive). A quoted local part may hold `>` and spaces; a backslash
/// escapes the next byte anywhere in the path, as Postfix reads it, so that the path
/// ends where the upstream's does.
pub fn path_arg<'a>(args: &'a [u8], prefix: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    if args.len() < prefix.len() || !args[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &args[prefix.len()..];
    // Some clients put white space after the colon; RFC 5321 does not, servers accept it.
    let rest = rest.trim_ascii_start();
    let inner = rest.strip_prefix(b"<")?;
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in inner.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => quoted = !quoted,
            // Postfix reads `<` as nesting: where its path ends, relaylog's would not.
            b'<' if !quoted => return None,
            b'>' if !quoted => {
                let params = &inner[i + 1..];
                return Some((&inner[..i], params.strip_prefix(b" ").unwrap_or(params)));
            }
            _ => {}
        }
    }
    None
}

/// The longest mailbox relaylog passes on: RFC 5321's path limit (256) less its
/// angle brackets. Longer is refused, never cut: a cut address is another address.
pub const MAX_MAILBOX: usize = 254;

/// The mailbox of a path as relaylog records it, or `None` when the path is refused.
/// Only RFC 5321's own forms pass, so that what is recorded is what the upstream
/// delivers to: a local part that is a dot-string or one quoted string, then `@` and
/// a domain of labels (UTF-8 allowed, a trailing dot too) or an address literal; or
/// `Postmaster` alone. A source route (`@a,@b:`, obsolete, which servers ignore) is
/// taken off. Refused as well: a backslash outside quotes, and `%`, `!` or `@` in the
/// local part (routing that servers may act on: `a%b@c`, `b!a@c`, `"a@b"@c`).
pub fn mailbox(path: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(path).ok()?;
    let text = match text.strip_prefix('@') {
        Some(routed) => {
            // `@a.example,@b.example:` then a mailbox, never the null sender.
            let (route, mailbox) = routed.split_once(':')?;
            let hops_ok = route
                .split(",@")
                .all(|hop| domain_ok(hop) && !hop.starts_with('['));
            if !hops_ok || mailbox.is_empty() {
                return None;
            }
            mailbox
        }
        None => text,
    };
    if text.is_empty() || text.eq_ignore_ascii_case("postmaster") {
        return Some(text);
    }
    if text.len() > MAX_MAILBOX {
        return None;
    }
    let (local, domain) = match text.strip_prefix('"') {
        Some(rest) => {
            let close = quoted_end(rest)?;
            let (inner, after) = rest.split_at(close);
            let domain = after[1..].strip_prefix('@')?;
            let plain = inner
                .chars()
                .all(|c| !c.is_control() && !matches!(c, '@' | '%' | '!'));
            (plain.then_some(text)?, domain)
        }
        None => text.split_once('@')?,
    };
    // A dot-string: atext and dots (runs of dots too: legacy addresses such as
    // `taro..yamada.@docomo.ne.jp` are delivered, and route nothing).
    let atext =
        |c: char| c.is_ascii_alphanumeric() || unicode_text(c) || "#$&'*+-/=?^_`{|}~.".contains(c);
    let dot_string = local.chars().all(atext) && local.chars().any(|c| c != '.');
    if !(local.starts_with('"') || dot_string) {
        return None;
    }
    domain_ok(domain).then_some(text)
}

/// A domain of labels (UTF-8 allowed, a trailing dot too) or an address literal.
fn domain_ok(domain: &str) -> bool {
    match domain.strip_prefix('[') {
        Some(literal) => literal.strip_suffix(']').is_some_and(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_graphic() && !matches!(c, '[' | ']' | '\\'))
        }),
        None => {
            let labels = domain.strip_suffix('.').unwrap_or(domain);
            labels.split('.').all(|l| {
                !l.is_empty()
                    && l.chars().all(|c| {
                        c.is_ascii_alphanumeric() || c == '-' || c == '_' || unicode_text(c)
                    })
            })
        }
    }
}

/// A character beyond ASCII that an address may hold (RFC 6531): not a control, not
/// white space, and not an invisible format character (zero-width, bidi overrides,
/// byte order mark), which make one address look like another.
fn unicode_text(c: char) -> bool {
    !c.is_ascii()
        && !c.is_control()
        && !c.is_whitespace()
        && !matches!(c,
            '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206f}' | '\u{feff}')
}

/// Where a quoted string that began before `rest` ends: the index of its closing
/// quote (a backslash escapes the next character).
fn quoted_end(rest: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// The value of an ESMTP parameter (`SIZE=1234`) among `params`, case-insensitive.
pub fn param<'a>(params: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    // Split on any white space: servers split on tabs too.
    params.split(u8::is_ascii_whitespace).find_map(|p| {
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
        for (path, mailbox_) in [
            (&b"jan@example.nl"[..], Some("jan@example.nl")),
            (b"", Some("")),
            (b"Postmaster", Some("Postmaster")),
            (
                b"@relay.example,@b.example:jan@example.nl",
                Some("jan@example.nl"),
            ),
            (
                b"\"jan jansen\"@example.nl",
                Some("\"jan jansen\"@example.nl"),
            ),
            (b"jan@[192.0.2.1]", Some("jan@[192.0.2.1]")),
            (b"jan@example.nl.", Some("jan@example.nl.")),
            (
                b"taro..yamada.@docomo.ne.jp",
                Some("taro..yamada.@docomo.ne.jp"),
            ),
            (b"jan@[IPv6:2001:db8::1]", Some("jan@[IPv6:2001:db8::1]")),
            (
                "jürgen@bücher.example".as_bytes(),
                Some("jürgen@bücher.example"),
            ),
        ] {
            assert_eq!(mailbox(path), mailbox_, "{}", String::from_utf8_lossy(path));
        }
        let long = format!("{}@example.nl", "x".repeat(MAX_MAILBOX));
        for refused in [
            &b"bob(comment)@example.com"[..],
            b"bob @example.com",
            b"a@b,c@d",
            b"\"unterminated@example.com",
            b"bell\x07@example.com",
            b"\xff@example.com",
            b"@route.example",
            b"@route.example:",
            b"@<:>evil@example.com",
            b"@[192.0.2.1]:jan@example.nl",
            "\u{3000}ceo@gmail.com".as_bytes(),
            "c\u{200b}eo@gmail.com".as_bytes(),
            "ceo@gm\u{202e}ail.com".as_bytes(),
            b"...@example.com",
            b"decoy\\@evil.example",
            b"victim%gmail.com@mail.example",
            b"gmail.com!victim@mail.example",
            b"victim@gmail.com@mail.example",
            b"\"victim@gmail.com\"@mail.example",
            b"\"vic\"tim@gmail.com",
            b"victim@\"gmail.com\"",
            b"nobody",
            b"a@",
            long.as_bytes(),
        ] {
            assert_eq!(
                mailbox(refused),
                None,
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
        // An unquoted `<` is where Postfix and relaylog would end the path apart.
        assert_eq!(path_arg(b"FROM:<@<:>evil@example.com>", b"FROM:"), None);
        assert!(path_arg(b"FROM:\t <a@example.com>", b"FROM:").is_some());
        // A backslash escapes anywhere: the path ends where Postfix's does.
        let (path, params) = path_arg(b"TO:<decoy\\>@evil.example> NOTIFY=NEVER", b"TO:").unwrap();
        assert_eq!(
            (path, params),
            (&b"decoy\\>@evil.example"[..], &b"NOTIFY=NEVER"[..])
        );
        assert_eq!(param(b"SIZE=10\tAUTH=<x@y>", b"AUTH"), Some(&b"<x@y>"[..]));
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
