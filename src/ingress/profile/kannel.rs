//! Kannel smsbox `sendsms`: GET query, form-encoded POST, `text/plain` POST with
//! `X-Kannel-*` headers, and the XML POST (`<message><submit>…`) with several `<da>`.

use http::Method;

use crate::http1::Fields;
use quick_xml::events::Event;

use super::{
    Extract, Extracted, FormFields, Params, ParseError, RequestView, Seen, identity, media_type,
    split_recipients,
};

/// Kannel's sendsms parameters (CGI names; the `X-Kannel-*` headers use the first name
/// of each). Any of them given twice is refused: Kannel reads the first, and a client
/// could otherwise have relaylog record a different account or number than the one
/// Kannel acts on.
const PARAMS: Params = &[
    &["username", "user"],
    &["password", "pass"],
    &["from"],
    &["to"],
    &["text"],
    &["coding"],
    &["charset"],
    &["udh"],
    &["smsc"],
    &["flash"],
    &["mclass"],
    &["mwi"],
    &["compress"],
    &["validity"],
    &["deferred"],
    &["dlr-mask"],
    &["dlr-url"],
    &["pid"],
    &["alt-dcs"],
    &["rpi"],
    &["account"],
    &["binfo"],
    &["priority"],
    &["meta-data"],
];
pub(super) const PARAM_COUNT: usize = PARAMS.len();
const USERNAME: usize = 0;
const FROM: usize = 2;
const TO: usize = 3;
const TEXT: usize = 4;
const CODING: usize = 5;

/// Reads a request as Kannel's smsbox dispatches it: a GET from its query string, a
/// POST from its body (`text/xml`) or its `X-Kannel-*` headers (`text/plain`,
/// `text/html`, `application/octet-stream`, or no content type, which Kannel takes as
/// octet-stream), never from the query string of a POST, which Kannel does not read.
/// Kannel discards the body of anything but a POST.
pub fn extract(req: &RequestView<'_>) -> Result<Extract, ParseError> {
    let mut out = Extracted::default();
    let mut seen = Seen::default();
    if *req.method != Method::POST {
        form(&FormFields::of(req), &mut seen, &mut out, true)?;
        return finish(out);
    }
    match media_type(req.headers).as_deref() {
        Some("text/xml") | Some("application/xml") => xml(req.body, &mut out)?,
        Some("text/plain") | Some("text/html") | Some("application/octet-stream") | None => {
            headers(req.headers, &mut seen, &mut out)?;
            out.text_chars = text_len(req.body, out.coding);
        }
        // Kannel 1.4.5 answers these `400 Invalid content-type`: relaylog records what
        // the form says and forwards, and the refusal is the outcome.
        Some("application/x-www-form-urlencoded") => {
            form(&FormFields::of(req), &mut seen, &mut out, true)?
        }
        Some(_) => return Err(ParseError::UnsupportedContentType),
    }
    finish(out)
}

fn finish(out: Extracted) -> Result<Extract, ParseError> {
    if out.recipients.is_empty() {
        return Err(ParseError::MissingRecipient);
    }
    if out.account.trim().is_empty() {
        return Err(ParseError::MissingAccount);
    }
    Ok(Extract::Message(out))
}

/// Reads sendsms CGI fields. `text` and `coding` are read only when the text is a
/// field, not the body (the `text/plain` form reads its coding from a header).
fn form(
    fields: &FormFields<'_>,
    seen: &mut Seen,
    out: &mut Extracted,
    text_is_field: bool,
) -> Result<(), ParseError> {
    fields.each(|k, v| {
        match seen.note(PARAMS, k)? {
            Some(USERNAME) => out.account = v.identity("username")?.into_owned(),
            Some(FROM) => out.originator = Some(v.identity("from")?.into_owned()),
            Some(TO) => kannel_recipients(&v.identity("to")?, &mut out.recipients)?,
            Some(TEXT) if text_is_field => out.text_chars = v.chars(),
            Some(CODING) if text_is_field => out.coding = v.text().trim().parse().unwrap_or(0),
            _ => {}
        }
        Ok(())
    })
}

/// Reads the `X-Kannel-*` headers of a `text/plain` POST. Any repeated `X-Kannel-*`
/// header is refused, and so is a sender, recipient or coding header that is not text
/// or holds a control character.
fn headers(h: Fields<'_>, seen: &mut Seen, out: &mut Extracted) -> Result<(), ParseError> {
    const PREFIX: &str = "x-kannel-";
    for (name, value) in h.iter() {
        let Some(suffix) = name
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .map(|_| &name[PREFIX.len()..])
        else {
            continue;
        };
        let param = PARAMS
            .iter()
            .position(|names| names[0].eq_ignore_ascii_case(suffix));
        if h.get_all(name).nth(1).is_some() {
            return Err(ParseError::Duplicate(
                param.map_or("X-Kannel-*", |i| PARAMS[i][0]),
            ));
        }
        let Some(i) = param else {
            continue;
        };
        seen.once(PARAMS, i)?;
        let text = || {
            crate::http1::text(value)
                .filter(|v| !super::has_control(v))
                .ok_or(ParseError::MalformedField(PARAMS[i][0]))
        };
        match i {
            USERNAME => out.account = text()?.to_owned(),
            FROM => out.originator = Some(text()?.to_owned()),
            TO => kannel_recipients(text()?, &mut out.recipients)?,
            CODING => out.coding = text()?.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    Ok(())
}

/// Kannel's receivers from a `to` list: split on white space, each number once
/// (Kannel sends one message to a number listed twice).
fn kannel_recipients(to: &str, out: &mut Vec<String>) -> Result<(), ParseError> {
    let start = out.len();
    split_recipients(to, out)?;
    let mut kept = start;
    for i in start..out.len() {
        if !out[..kept].contains(&out[i]) {
            out.swap(kept, i);
            kept += 1;
        }
    }
    out.truncate(kept);
    Ok(())
}

fn text_len(body: &[u8], coding: u8) -> usize {
    match coding {
        // 8-bit and UCS-2 bodies are counted in octets of the encoded text.
        1 => body.len(),
        2 => body.len() / 2,
        _ => String::from_utf8_lossy(body).chars().count(),
    }
}

/// Elements whose text relaylog reads, by their path below `<message>`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Recipient,
    Originator,
    Account,
    Text,
    Coding,
}

impl Field {
    /// The element's name, for errors.
    fn name(self) -> &'static str {
        match self {
            Field::Recipient => "da",
            Field::Originator => "oa",
            Field::Account => "username",
            Field::Text => "ud",
            Field::Coding => "coding",
        }
    }
}

fn field_at(path: &[Vec<u8>]) -> Option<Field> {
    let p: Vec<&[u8]> = path.iter().map(Vec::as_slice).collect();
    match p.as_slice() {
        [b"message", b"submit", b"da", b"number"] => Some(Field::Recipient),
        [b"message", b"submit", b"oa", b"number"] => Some(Field::Originator),
        [b"message", b"submit", b"from", b"username" | b"user"] => Some(Field::Account),
        [b"message", b"submit", b"ud"] => Some(Field::Text),
        [b"message", b"submit", b"dcs", b"coding"] => Some(Field::Coding),
        _ => None,
    }
}

/// Deepest element nesting accepted: Kannel's format has four levels.
const MAX_DEPTH: usize = 16;

fn xml(body: &[u8], out: &mut Extracted) -> Result<(), ParseError> {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut path: Vec<Vec<u8>> = Vec::with_capacity(8);
    // Text of the element being read, for the fields that are kept (not `ud`).
    let mut value = String::new();
    let mut text_chars = 0usize;
    let mut saw_message = false;
    // The single-valued fields met so far (by `Field as u8`): `<da>` repeats, they
    // must not.
    let mut once = 0u8;
    loop {
        let event = reader.read_event().map_err(|_| ParseError::MalformedXml)?;
        // Inside an element whose text relaylog records, that text must be one run, as
        // Kannel (libxml2) reads it: no child elements, comments or processing
        // instructions to split or hide part of it.
        let in_identity = matches!(field_at(&path), Some(f) if f != Field::Text);
        match event {
            Event::DocType(_) => return Err(ParseError::MalformedXml),
            Event::Decl(d) => {
                if let Some(enc) = d.encoding() {
                    let enc = enc.map_err(|_| ParseError::MalformedXml)?;
                    // The fields relaylog records are ASCII: any encoding that writes
                    // ASCII as ASCII reads them the same. Others (UTF-7, UTF-16, …)
                    // could hide markup in what quick_xml reads as text.
                    let ascii_compatible = [
                        &b"utf-8"[..],
                        b"us-ascii",
                        b"iso-8859-1",
                        b"iso-8859-15",
                        b"latin1",
                        b"windows-1252",
                    ]
                    .iter()
                    .any(|e| enc.eq_ignore_ascii_case(e));
                    if !ascii_compatible {
                        return Err(ParseError::MalformedXml);
                    }
                }
            }
            Event::Empty(_) | Event::Comment(_) | Event::PI(_) if in_identity => {
                return Err(ParseError::MalformedXml);
            }
            Event::Start(_) if in_identity => return Err(ParseError::MalformedXml),
            Event::Start(e) => {
                if path.len() == MAX_DEPTH {
                    return Err(ParseError::MalformedXml);
                }
                path.push(e.name().as_ref().to_vec());
                saw_message |= path.len() == 1 && path[0] == b"message";
                value.clear();
            }
            Event::End(_) => {
                let field = field_at(&path);
                if let Some(f) = field.filter(|f| *f != Field::Recipient) {
                    let bit = 1u8 << (f as u8);
                    if once & bit != 0 {
                        return Err(ParseError::Duplicate(f.name()));
                    }
                    once |= bit;
                }
                match field {
                    // One receiver per `<number>`, as Kannel reads it (no splitting).
                    Some(Field::Recipient) => {
                        if out.recipients.len() == super::MAX_RECIPIENTS {
                            return Err(ParseError::TooManyRecipients);
                        }
                        out.recipients
                            .push(identity("da", value.trim())?.to_owned())
                    }
                    Some(Field::Originator) => {
                        out.originator = Some(identity("oa", value.trim())?.to_owned())
                    }
                    Some(Field::Account) => {
                        out.account = identity("username", value.trim())?.to_owned()
                    }
                    Some(Field::Coding) => out.coding = value.trim().parse().unwrap_or(0),
                    Some(Field::Text) | None => {}
                }
                value.clear();
                path.pop();
            }
            Event::Text(t) => match field_at(&path) {
                // Counted, not read: a text in a declared single-byte encoding counts
                // a character per byte that is not UTF-8.
                Some(Field::Text) => text_chars += String::from_utf8_lossy(&t).chars().count(),
                Some(_) => value.push_str(&t.decode().map_err(|_| ParseError::MalformedXml)?),
                None => {}
            },
            Event::CData(t) => match field_at(&path) {
                Some(Field::Text) => text_chars += String::from_utf8_lossy(&t).chars().count(),
                Some(_) => return Err(ParseError::MalformedXml),
                None => {}
            },
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    _ => match &*r {
                        b"amp" => '&',
                        b"lt" => '<',
                        b"gt" => '>',
                        b"quot" => '"',
                        b"apos" => '\'',
                        _ => return Err(ParseError::MalformedXml),
                    },
                };
                match field_at(&path) {
                    Some(Field::Text) => text_chars += 1,
                    Some(_) => value.push(c),
                    None => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
        if value.len() > crate::canonical::MAX_IDENTIFIER_BYTES * 4 {
            return Err(ParseError::MalformedXml);
        }
    }
    if !path.is_empty() || !saw_message {
        return Err(ParseError::MalformedXml);
    }
    out.text_chars = text_chars;
    Ok(())
}

/// Kannel's reply body starts with a status number: `0: Accepted for delivery`,
/// `3: Queued for later delivery`.
pub fn reply_code(body: &[u8]) -> Option<i32> {
    let head = body.split(|&b| b == b':').next()?;
    if head.is_empty() || head.len() > 4 {
        return None;
    }
    std::str::from_utf8(head).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn view<'a>(
        method: &'a Method,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
        body: &'a [u8],
    ) -> RequestView<'a> {
        RequestView {
            method,
            path: "/cgi-bin/sendsms",
            query,
            headers: Fields::Map(headers),
            body,
        }
    }

    fn message(r: Result<Extract, ParseError>) -> Extracted {
        match r {
            Ok(Extract::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn get_query_with_several_recipients() {
        let h = HeaderMap::new();
        let q = "username=tester&password=foobar&from=ACME&to=0612345678+%2B31687654321&text=hello+world";
        let m = message(extract(&view(&Method::GET, Some(q), &h, b"")));
        assert_eq!(m.account, "tester");
        assert_eq!(m.originator.as_deref(), Some("ACME"));
        assert_eq!(m.recipients, ["0612345678", "+31687654321"]);
        assert_eq!(m.text_chars, 11);
    }

    #[test]
    fn form_post_body_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        let body = b"user=tester&pass=foobar&to=%2B31612345678&text=hi";
        let m = message(extract(&view(&Method::POST, None, &h, body)));
        assert_eq!(
            (m.account.as_str(), m.recipients.as_slice()),
            ("tester", &["+31612345678".to_string()][..])
        );
        assert_eq!(m.text_chars, 2);
    }

    #[test]
    fn text_plain_post_with_headers() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("x-kannel-username", HeaderValue::from_static("tester"));
        h.insert("x-kannel-password", HeaderValue::from_static("foobar"));
        h.insert(
            "x-kannel-to",
            HeaderValue::from_static("+31612345678 +31687654321"),
        );
        h.insert("x-kannel-from", HeaderValue::from_static("12345"));
        let m = message(extract(&view(&Method::POST, None, &h, "héllo".as_bytes())));
        assert_eq!(m.account, "tester");
        assert_eq!(m.recipients.len(), 2);
        assert_eq!(m.originator.as_deref(), Some("12345"));
        assert_eq!(m.text_chars, 5);
    }

    #[test]
    fn xml_post_with_several_da() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/xml"));
        let body = br#"<?xml version="1.0"?>
<message><submit>
  <da><number>+31612345678</number></da>
  <da><number>0687654321</number></da>
  <oa><number>ACME&amp;Co</number></oa>
  <ud>Hello &lt;world&gt;</ud>
  <from><username>tester</username><password>foobar</password></from>
</submit></message>"#;
        let m = message(extract(&view(&Method::POST, None, &h, body)));
        assert_eq!(m.recipients, ["+31612345678", "0687654321"]);
        assert_eq!(m.originator.as_deref(), Some("ACME&Co"));
        assert_eq!(m.account, "tester");
        assert_eq!(m.text_chars, "Hello <world>".len());
    }

    #[test]
    fn bad_requests_are_named() {
        let h = HeaderMap::new();
        let table = [
            ("username=a&text=x", ParseError::MissingRecipient),
            ("username=a&to=", ParseError::MissingRecipient),
            ("to=0612345678", ParseError::MissingAccount),
        ];
        for (q, err) in table {
            assert_eq!(
                extract(&view(&Method::GET, Some(q), &h, b"")),
                Err(err),
                "{q}"
            );
        }
        let mut xh = HeaderMap::new();
        xh.insert("content-type", HeaderValue::from_static("text/xml"));
        for body in [
            &b"<message><submit><da><number>1</number></da>"[..],
            b"not xml at all <",
            b"<other/>",
        ] {
            assert_eq!(
                extract(&view(&Method::POST, None, &xh, body)),
                Err(ParseError::MalformedXml)
            );
        }
        let many = format!("username=a&to={}", "0612345678+".repeat(1001));
        assert_eq!(
            extract(&view(&Method::GET, Some(&many), &h, b"")),
            Err(ParseError::TooManyRecipients)
        );
    }

    /// Issue 10: Kannel acts on a parameter's first occurrence; relaylog used to record
    /// the last, so a repeated `username` or `to` put someone else's account or number
    /// in the record. Every way of giving a parameter twice is refused, named.
    #[test]
    fn a_parameter_given_twice_is_refused_whatever_its_spelling() {
        let h = HeaderMap::new();
        for (q, field) in [
            (
                "username=tester&password=foobar&username=nobody&from=555&text=dup&to=%2B31612000101&to=%2B31612000202",
                "username",
            ),
            ("username=a&user=b&to=1", "username"),
            ("user=a&to=1&to=2", "to"),
            ("username=a&to=1&pass=x&password=y", "password"),
            ("username=a&to=1&from=x&from=x", "from"),
            ("username=a&to=1&text=x&text=y", "text"),
            ("username=a&to=1&smsc=x&smsc=y", "smsc"),
        ] {
            assert_eq!(
                extract(&view(&Method::GET, Some(q), &h, b"")),
                Err(ParseError::Duplicate(field)),
                "{q}"
            );
        }
        // A form body and the query naming one field.
        let mut form = HeaderMap::new();
        form.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert_eq!(
            extract(&view(
                &Method::POST,
                Some("username=a"),
                &form,
                b"username=b&to=1"
            )),
            Err(ParseError::Duplicate("username"))
        );
        // Headers: repeated, or beside the same field in the query.
        let plain = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static("text/plain"));
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        let cases: [(HeaderMap, Option<&str>, &str); 2] = [
            (
                plain(&[
                    ("x-kannel-username", "a"),
                    ("x-kannel-to", "1"),
                    ("x-kannel-to", "2"),
                ]),
                None,
                "to",
            ),
            (
                plain(&[
                    ("x-kannel-username", "a"),
                    ("x-kannel-username", "b"),
                    ("x-kannel-to", "1"),
                ]),
                None,
                "username",
            ),
        ];
        for (h, q, field) in cases {
            assert_eq!(
                extract(&view(&Method::POST, q, &h, b"hi")),
                Err(ParseError::Duplicate(field)),
                "{h:?} {q:?}"
            );
        }
        // Kannel never reads the query of a POST: neither does relaylog.
        let h = plain(&[("x-kannel-username", "a"), ("x-kannel-to", "1")]);
        let m = message(extract(&view(
            &Method::POST,
            Some("username=b&to=2"),
            &h,
            b"hi",
        )));
        assert_eq!(
            (m.account.as_str(), &m.recipients[..]),
            ("a", &["1".to_string()][..])
        );
        // XML: single-valued elements twice; several <da> stay fine.
        let mut xh = HeaderMap::new();
        xh.insert("content-type", HeaderValue::from_static("text/xml"));
        let submit = |inner: &str| {
            format!(
                "<message><submit><da><number>1</number></da><da><number>2</number></da>{inner}</submit></message>"
            )
        };
        for (inner, field) in [
            (
                "<from><username>a</username><username>b</username></from>",
                "username",
            ),
            (
                "<from><user>a</user><username>b</username></from>",
                "username",
            ),
            (
                "<from><username>a</username></from><from><username>b</username></from>",
                "username",
            ),
            (
                "<oa><number>1</number></oa><oa><number>2</number></oa><from><username>a</username></from>",
                "oa",
            ),
            (
                "<ud>x</ud><ud>y</ud><from><username>a</username></from>",
                "ud",
            ),
        ] {
            assert_eq!(
                extract(&view(&Method::POST, None, &xh, submit(inner).as_bytes())),
                Err(ParseError::Duplicate(field)),
                "{inner}"
            );
        }
        let ok = submit("<from><username>a</username></from>");
        assert_eq!(
            message(extract(&view(&Method::POST, None, &xh, ok.as_bytes()))).recipients,
            ["1", "2"]
        );
    }

    /// Review of issue 10: ways in which what relaylog read differed from what Kannel
    /// acts on. Each is now read Kannel's way or refused.
    #[test]
    fn kannel_and_relaylog_read_the_same_request_the_same_way() {
        // A POST with no content type: Kannel reads the X-Kannel-* headers (as
        // octet-stream), never the query.
        let mut h = HeaderMap::new();
        h.insert("x-kannel-username", HeaderValue::from_static("tester"));
        h.insert("x-kannel-to", HeaderValue::from_static("+31612000101"));
        let m = message(extract(&view(
            &Method::POST,
            Some("username=nobody&to=000"),
            &h,
            b"",
        )));
        assert_eq!(
            (m.account.as_str(), &m.recipients[..]),
            ("tester", &["+31612000101".to_string()][..])
        );
        // Kannel discards a GET's body: so does relaylog.
        let mut framed = HeaderMap::new();
        framed.insert("content-length", HeaderValue::from_static("4"));
        assert_eq!(
            message(extract(&view(
                &Method::GET,
                Some("username=a&to=1"),
                &framed,
                b"to=2"
            )))
            .recipients,
            ["1"]
        );
        let none = HeaderMap::new();
        // Kannel cuts a name or value at a trailing `%`; control characters end C strings.
        for q in [
            "username%=tester&to%=%2B31612000101&username=nobody&to=000",
            "username=a&to=%2B31612000101%",
            "username=a&to=%2B31612000101%2",
            "username=te%00ster&to=1",
            "username=a&to=%2B316120%01",
            // Not UTF-8: recorded, it would be one value for several the gateway tells apart.
            "username=%FF&to=1",
            "username=a&from=%C3&to=1",
            "username=a&to=%2B31612000101%E9",
        ] {
            assert!(
                matches!(
                    extract(&view(&Method::GET, Some(q), &none, b"")),
                    Err(ParseError::MalformedField(_))
                ),
                "{q}"
            );
        }
        // Kannel splits `to` on C white space, vertical tab included.
        let m = message(extract(&view(
            &Method::GET,
            Some("username=a&to=%2B31612000101%0B%2B31612000202"),
            &none,
            b"",
        )));
        assert_eq!(m.recipients, ["+31612000101", "+31612000202"]);
        // XML: a recorded field's text is one run; no DOCTYPE; UTF-8 only.
        let mut xh = HeaderMap::new();
        xh.insert("content-type", HeaderValue::from_static("text/xml"));
        for body in [
            "<message><submit><da><number>+31612000101<x></x></number></da><da><number>1</number></da><from><username>a</username></from></submit></message>",
            "<message><submit><da><number>1</number></da><from><username>te<x/>ster</username></from></submit></message>",
            "<message><submit><da><number>1<!-- -->2</number></da><from><username>a</username></from></submit></message>",
            "<message><submit><da><number><![CDATA[1]]></number></da><from><username>a</username></from></submit></message>",
            "<!DOCTYPE message [<!ENTITY n \"1\">]><message><submit><da><number>&n;</number></da><from><username>a</username></from></submit></message>",
            "<?xml version=\"1.0\" encoding=\"UTF-7\"?><message><submit><da><number>1</number></da><from><username>a</username></from></submit></message>",
        ] {
            assert_eq!(
                extract(&view(&Method::POST, None, &xh, body.as_bytes())),
                Err(ParseError::MalformedXml),
                "{body}"
            );
        }
    }

    /// Second review of issue 10: Kannel sends once to a number listed twice, takes a
    /// `<number>` whole, and reads ASCII-compatible encodings.
    #[test]
    fn recipients_are_counted_as_kannel_counts_them() {
        let none = HeaderMap::new();
        let m = message(extract(&view(
            &Method::GET,
            Some("username=a&to=%2B31612000101+%2B31612000101+0612000102"),
            &none,
            b"",
        )));
        assert_eq!(m.recipients, ["+31612000101", "0612000102"]);
        let mut xh = HeaderMap::new();
        xh.insert("content-type", HeaderValue::from_static("text/xml"));
        let body = "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><message><submit><da><number>+31612000101 +31612000202</number></da><from><username>a</username></from></submit></message>";
        let m = message(extract(&view(&Method::POST, None, &xh, body.as_bytes())));
        assert_eq!(m.recipients, ["+31612000101 +31612000202"]);
    }

    /// The sendsms parameter indexes name the parameters they stand for.
    #[test]
    fn parameter_indexes_match_their_names() {
        for (i, name) in [
            (USERNAME, "username"),
            (FROM, "from"),
            (TO, "to"),
            (TEXT, "text"),
            (CODING, "coding"),
        ] {
            assert_eq!(PARAMS[i][0], name);
        }
    }

    #[test]
    fn reply_codes() {
        assert_eq!(reply_code(b"0: Accepted for delivery"), Some(0));
        assert_eq!(reply_code(b"3: Queued for later delivery"), Some(3));
        assert_eq!(reply_code(b"Authorization failed for sendsms"), None);
        assert_eq!(reply_code(b""), None);
    }
}
