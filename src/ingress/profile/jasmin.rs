//! Jasmin's HTTP API `/send`: `username`, `to` (one recipient), `from`, `content` or
//! `hex-content`, `coding`; GET query, form-encoded or JSON POST. Replies
//! `200 Success "<message id>"`.

use std::borrow::Cow;

use http::StatusCode;
use serde_json::Value;

use super::{
    Extract, Extracted, FormFields, FormValue, Params, ParseError, RequestView, Seen, bounded_id,
    identity, media_type,
};

/// Jasmin's `/send` parameters; `content` and `hex-content` are one parameter (the
/// text) under two names. Any of them given twice is refused (see [`Seen`]).
const PARAMS: Params = &[
    &["username"],
    &["password"],
    &["to"],
    &["from"],
    &["content", "hex-content"],
    &["coding"],
    &["priority"],
    &["sdt"],
    &["validity-period"],
    &["dlr"],
    &["dlr-url"],
    &["dlr-level"],
    &["dlr-method"],
    &["tags"],
];

pub(super) const PARAM_COUNT: usize = PARAMS.len();
const USERNAME: usize = 0;
const TO: usize = 2;
const FROM: usize = 3;
const CONTENT: usize = 4;
const CODING: usize = 5;

/// Reads `/send` as Jasmin (Twisted) does: the query string, a form-encoded POST body,
/// and the keys of a JSON body on any method (which Jasmin copies over the others). A parameter given
/// twice anywhere is refused; so is a raw `;` (Twisted's query parser may split on
/// it) and a multipart body (whose fields Twisted merges in too).
pub fn extract(req: &RequestView<'_>) -> Result<Extract, ParseError> {
    let mut out = Extracted::default();
    let mut to: Option<String> = None;
    let mut seen = Seen::default();
    let fields = FormFields::of(req);
    if [req.query.map(str::as_bytes), fields.body]
        .into_iter()
        .flatten()
        .any(|raw| raw.contains(&b';'))
    {
        return Err(ParseError::MalformedField("(a `;` between parameters)"));
    }
    let media = media_type(req.headers);
    // Jasmin reads a JSON body whatever the method (its GET handler is its POST one).
    let json_body = media.as_deref() == Some("application/json");
    if media
        .as_deref()
        .is_some_and(|m| m.starts_with("multipart/"))
    {
        return Err(ParseError::UnsupportedContentType);
    }
    let mut visit = |k: &str, v: Given<'_>| -> Result<(), ParseError> {
        match seen.note(PARAMS, k)? {
            Some(USERNAME) => out.account = v.identity("username")?.into_owned(),
            Some(FROM) => out.originator = Some(v.identity("from")?.into_owned()),
            Some(TO) => to = Some(v.identity("to")?.trim().to_owned()),
            Some(CONTENT) if k == "hex-content" => out.text_chars = v.text().len() / 2,
            Some(CONTENT) => out.text_chars = v.chars(),
            Some(CODING) => {
                out.coding = match v.text().trim() {
                    "8" => 2,
                    "4" | "2" => 1,
                    _ => 0,
                }
            }
            _ => {}
        }
        Ok(())
    };
    fields.each(|k, v| visit(k, Given::Form(v)))?;
    if json_body {
        let doc = super::json::parse_unique_keys(req.body).map_err(|e| match e {
            Some(_) => ParseError::Duplicate("(a JSON object key)"),
            None => ParseError::MalformedJson,
        })?;
        let Value::Object(map) = doc else {
            return Err(ParseError::MalformedJson);
        };
        for (k, v) in &map {
            match v {
                Value::String(s) => visit(k, Given::Json(s))?,
                Value::Number(n) if n.is_i64() || n.is_u64() => {
                    visit(k, Given::Json(&n.to_string()))?
                }
                _ => {
                    if let Some(name) = param_name(k) {
                        return Err(ParseError::WrongType(name));
                    }
                }
            }
        }
    }
    match to {
        Some(to) if !to.is_empty() => out.recipients.push(to),
        _ => return Err(ParseError::MissingRecipient),
    }
    if out.account.trim().is_empty() {
        return Err(ParseError::MissingAccount);
    }
    Ok(Extract::Message(out))
}

/// A parameter's value as Jasmin was given it: a form field, still encoded (decoded
/// only where it is read, a recorded one strictly: see [`FormValue::identity`]), or a
/// JSON string.
#[derive(Clone, Copy)]
enum Given<'v> {
    Form(FormValue<'v>),
    Json(&'v str),
}

impl<'v> Given<'v> {
    fn identity(self, field: &'static str) -> Result<Cow<'v, str>, ParseError> {
        match self {
            Given::Form(v) => v.identity(field),
            Given::Json(s) => identity(field, s).map(Cow::Borrowed),
        }
    }

    fn text(self) -> Cow<'v, str> {
        match self {
            Given::Form(v) => v.text(),
            Given::Json(s) => Cow::Borrowed(s),
        }
    }

    fn chars(self) -> usize {
        match self {
            Given::Form(v) => v.chars(),
            Given::Json(s) => s.chars().count(),
        }
    }
}

/// The parameter `name` is a name of, if it is one of Jasmin's message parameters.
fn param_name(name: &str) -> Option<&'static str> {
    PARAMS
        .iter()
        .find(|names| names.contains(&name))
        .map(|names| names[0])
}

/// The id in `Success "08391bd0-…"`.
pub fn reply_message_id(status: StatusCode, body: &[u8]) -> Option<String> {
    if status != StatusCode::OK {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let rest = text.trim().strip_prefix("Success")?.trim();
    bounded_id(rest.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method};

    fn view<'a>(q: &'a str, h: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method: &Method::GET,
            path: "/send",
            query: Some(q),
            headers: crate::http1::Fields::Map(h),
            body: b"",
        }
    }

    #[test]
    fn send_fields() {
        let h = HeaderMap::new();
        let r = extract(&view(
            "username=foo&password=bar&to=%2B31612345678&from=ACME&content=hi%20there",
            &h,
        ));
        let Ok(Extract::Message(m)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(m.account, "foo");
        assert_eq!(m.recipients, ["+31612345678"]);
        assert_eq!(m.originator.as_deref(), Some("ACME"));
        assert_eq!(m.text_chars, 8);
        assert_eq!(
            extract(&view("username=foo&content=x", &h)),
            Err(ParseError::MissingRecipient)
        );
        assert_eq!(
            extract(&view("to=1234", &h)),
            Err(ParseError::MissingAccount)
        );
    }

    /// Issue 10: a repeated parameter (or the text under both its names) is refused.
    #[test]
    fn a_parameter_given_twice_is_refused() {
        let h = HeaderMap::new();
        for (q, field) in [
            ("username=a&username=b&to=1", "username"),
            ("username=a&to=1&to=2", "to"),
            ("username=a&to=1&from=x&from=y", "from"),
            ("username=a&to=1&content=x&hex-content=41", "content"),
            ("username=a&password=x&to=1&password=y", "password"),
        ] {
            assert_eq!(
                extract(&view(q, &h)),
                Err(ParseError::Duplicate(field)),
                "{q}"
            );
        }
    }

    /// Review of issue 10: Jasmin also reads a JSON body's keys and (through Twisted)
    /// `;`-separated and multipart fields; relaylog reads the first and refuses the rest.
    #[test]
    fn jasmin_and_relaylog_read_the_same_request_the_same_way() {
        use http::HeaderValue;
        let post = |ct: &'static str, q: Option<&'static str>, body: &'static [u8]| {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static(ct));
            extract(&RequestView {
                method: &Method::POST,
                path: "/send",
                query: q,
                headers: crate::http1::Fields::Map(&h),
                body,
            })
        };
        let r = post(
            "application/json",
            None,
            br#"{"username":"tester","password":"x","to":"+31612000101","content":"hi"}"#,
        );
        let Ok(Extract::Message(m)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (m.account.as_str(), &m.recipients[..]),
            ("tester", &["+31612000101".to_string()][..])
        );
        assert_eq!(
            post(
                "application/json",
                Some("username=nobody&to=000"),
                br#"{"username":"tester","to":"+31612000101"}"#
            ),
            Err(ParseError::Duplicate("username"))
        );
        assert_eq!(
            post(
                "multipart/form-data; boundary=x",
                Some("username=a&to=1"),
                b"--x--"
            ),
            Err(ParseError::UnsupportedContentType)
        );
        let h = HeaderMap::new();
        assert!(matches!(
            extract(&view(
                "a=;username=tester;to=%2B31612000101&username=nobody&to=000",
                &h
            )),
            Err(ParseError::MalformedField(_))
        ));
        // A recorded value that is not UTF-8 is refused, not recorded as U+FFFD; the
        // content may be anything.
        for (q, refused) in [
            ("username=%FF&to=1&content=x", true),
            ("username=a&from=%C3&to=1&content=x", true),
            ("username=a&to=1%E9&content=x", true),
            ("username=a&to=%2B31612000101&content=%FF", false),
        ] {
            let read = extract(&view(q, &h));
            if refused {
                assert!(
                    matches!(read, Err(ParseError::MalformedField(_))),
                    "{q}: {read:?}"
                );
            } else {
                assert!(matches!(read, Ok(Extract::Message(_))), "{q}: {read:?}");
            }
        }
    }

    #[test]
    fn success_reply_carries_id() {
        let id = reply_message_id(
            StatusCode::OK,
            br#"Success "08391bd0-7b9d-4c5b-a6a7-5a8b9e9f0c1d""#,
        );
        assert_eq!(id.as_deref(), Some("08391bd0-7b9d-4c5b-a6a7-5a8b9e9f0c1d"));
        assert_eq!(
            reply_message_id(StatusCode::FORBIDDEN, b"Error \"x\""),
            None
        );
    }
}
