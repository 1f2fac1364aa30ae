//! Kannel smsbox `sendsms`: GET query, form-encoded POST, `text/plain` POST with
//! `X-Kannel-*` headers, and the XML POST (`<message><submit>…`) with several `<da>`.

use http::{HeaderMap, Method};
use quick_xml::events::Event;

use super::{
    Extract, Extracted, FormFields, ParseError, RequestView, media_type, split_recipients,
};

pub fn extract(req: &RequestView<'_>) -> Result<Extract, ParseError> {
    let mut out = Extracted::default();
    if *req.method == Method::POST {
        match media_type(req.headers).as_deref() {
            Some("text/xml") | Some("application/xml") => {
                xml(req.body, &mut out)?;
                return finish(out);
            }
            Some("text/plain") | Some("text/html") | Some("application/octet-stream") => {
                headers(req.headers, &mut out)?;
                out.text_chars = text_len(req.body, out.coding);
                // Fields missing from the headers may still be in the query string.
                form(
                    &FormFields {
                        query: req.query,
                        body: None,
                    },
                    &mut out,
                    false,
                )?;
                return finish(out);
            }
            Some("application/x-www-form-urlencoded") | None => {}
            Some(_) => return Err(ParseError::UnsupportedContentType),
        }
    }
    form(&FormFields::of(req), &mut out, true)?;
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

/// Reads sendsms CGI fields into whatever `out` does not have yet (the `text/plain`
/// form fills from its headers first). A repeated field keeps its last value, as
/// Kannel's CGI parser does. `text` and `coding` are read only when the text is a
/// field, not the body.
fn form(
    fields: &FormFields<'_>,
    out: &mut Extracted,
    text_is_field: bool,
) -> Result<(), ParseError> {
    let (mut account, mut from, mut to, mut text_len, mut coding) = (None, None, None, None, None);
    fields.each(|k, v| match k {
        "username" | "user" => account = Some(v.to_owned()),
        "from" => from = Some(v.to_owned()),
        "to" => to = Some(v.to_owned()),
        "text" => text_len = Some(v.chars().count()),
        "coding" => coding = v.trim().parse().ok(),
        _ => {}
    });
    if out.account.is_empty() {
        out.account = account.unwrap_or_default();
    }
    if out.originator.is_none() {
        out.originator = from;
    }
    if out.recipients.is_empty()
        && let Some(to) = to
    {
        split_recipients(&to, &mut out.recipients)?;
    }
    if text_is_field {
        out.text_chars = text_len.unwrap_or(0);
        out.coding = coding.unwrap_or(0);
    }
    Ok(())
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn headers(h: &HeaderMap, out: &mut Extracted) -> Result<(), ParseError> {
    if let Some(u) = header(h, "x-kannel-username") {
        out.account = u.to_owned();
    }
    if let Some(f) = header(h, "x-kannel-from") {
        out.originator = Some(f.to_owned());
    }
    if let Some(c) = header(h, "x-kannel-coding") {
        out.coding = c.trim().parse().unwrap_or(0);
    }
    for to in h.get_all("x-kannel-to") {
        if let Ok(to) = to.to_str() {
            split_recipients(to, &mut out.recipients)?;
        }
    }
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
    loop {
        let event = reader.read_event().map_err(|_| ParseError::MalformedXml)?;
        match event {
            Event::Start(e) => {
                if path.len() == MAX_DEPTH {
                    return Err(ParseError::MalformedXml);
                }
                path.push(e.name().as_ref().to_vec());
                saw_message |= path.len() == 1 && path[0] == b"message";
                value.clear();
            }
            Event::End(_) => {
                match field_at(&path) {
                    Some(Field::Recipient) => super::split_recipients(&value, &mut out.recipients)?,
                    Some(Field::Originator) => out.originator = Some(value.trim().to_owned()),
                    Some(Field::Account) => out.account = value.trim().to_owned(),
                    Some(Field::Coding) => out.coding = value.trim().parse().unwrap_or(0),
                    Some(Field::Text) | None => {}
                }
                value.clear();
                path.pop();
            }
            Event::Text(t) => match field_at(&path) {
                Some(Field::Text) => {
                    text_chars += t
                        .decode()
                        .map_err(|_| ParseError::MalformedXml)?
                        .chars()
                        .count()
                }
                Some(_) => value.push_str(&t.decode().map_err(|_| ParseError::MalformedXml)?),
                None => {}
            },
            Event::CData(t) => match field_at(&path) {
                Some(Field::Text) => text_chars += String::from_utf8_lossy(&t).chars().count(),
                Some(_) => value.push_str(&String::from_utf8_lossy(&t)),
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
    use http::HeaderValue;

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
            headers,
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

    #[test]
    fn reply_codes() {
        assert_eq!(reply_code(b"0: Accepted for delivery"), Some(0));
        assert_eq!(reply_code(b"3: Queued for later delivery"), Some(3));
        assert_eq!(reply_code(b"Authorization failed for sendsms"), None);
        assert_eq!(reply_code(b""), None);
    }
}
