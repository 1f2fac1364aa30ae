//! A JSON REST API: `POST` of a JSON object; where the account, originator, recipients
//! and text are is configured as JSON pointers (RFC 6901). The account can also come
//! from HTTP basic auth (the user part; the password is never read beyond the colon).

use base64::Engine;
use http::Method;
use serde_json::Value;

use super::{Extract, Extracted, ParseError, RequestView, bounded_id, split_recipients};
use crate::config::{AccountFrom, JsonProfile};

pub fn extract(cfg: &JsonProfile, req: &RequestView<'_>) -> Result<Extract, ParseError> {
    if *req.method != Method::POST {
        return Err(ParseError::MethodNotAllowed);
    }
    // A body that is not declared JSON may be read as a form by the gateway.
    match super::media_type(req.headers).as_deref() {
        Some(m) if m == "application/json" || m.ends_with("+json") => {}
        _ => return Err(ParseError::UnsupportedContentType),
    }
    let doc = parse_strict(cfg, req.body)?;
    let mut out = Extracted::default();
    match doc.pointer(&cfg.recipients_pointer) {
        Some(Value::String(s)) => split_recipients(s, &mut out.recipients)?,
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) => split_recipients(s, &mut out.recipients)?,
                    Value::Number(n) => out.recipients.push(integer(n, "recipients")?),
                    _ => return Err(ParseError::WrongType("recipients")),
                }
            }
        }
        Some(Value::Number(n)) => out.recipients.push(integer(n, "recipients")?),
        Some(Value::Null) | None => {}
        Some(_) => return Err(ParseError::WrongType("recipients")),
    }
    if out.recipients.is_empty() {
        return Err(ParseError::MissingRecipient);
    }
    out.account = match &cfg.account {
        AccountFrom::BasicAuth => basic_auth_user(req.headers)?.unwrap_or_default(),
        AccountFrom::Field(p) => match doc.pointer(p) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(_) => return Err(ParseError::WrongType("account")),
        },
    };
    if out.account.trim().is_empty() {
        return Err(ParseError::MissingAccount);
    }
    if let Some(p) = &cfg.originator_pointer {
        out.originator = match doc.pointer(p) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(integer(n, "originator")?),
            Some(Value::Null) | None => None,
            Some(_) => return Err(ParseError::WrongType("originator")),
        };
    }
    if let Some(p) = &cfg.text_pointer
        && let Some(Value::String(s)) = doc.pointer(p)
    {
        out.text_chars = s.chars().count();
        if s.chars().any(|c| !is_gsm_basic(c)) {
            out.coding = 2;
        }
    }
    Ok(Extract::Message(out))
}

/// A number given as a JSON number: only an integer is a phone number (`3.16e10` is
/// read differently by every parser).
fn integer(n: &serde_json::Number, field: &'static str) -> Result<String, ParseError> {
    if n.is_i64() || n.is_u64() {
        Ok(n.to_string())
    } else {
        Err(ParseError::WrongType(field))
    }
}

/// Parses the body as serde_json does, except that an object naming a key twice is
/// refused: serde_json keeps the last occurrence, other gateways' parsers the first,
/// so relaylog could record a different number or account than the gateway uses.
fn parse_strict(cfg: &JsonProfile, body: &[u8]) -> Result<Value, ParseError> {
    parse_unique_keys(body).map_err(|e| match e {
        Some(key) => ParseError::Duplicate(field_named(cfg, &key)),
        None => ParseError::MalformedJson,
    })
}

/// A JSON document whose objects name each key once. `Err(Some(key))`: a key given
/// twice (kept inside relaylog, never echoed); `Err(None)`: not JSON.
pub(super) fn parse_unique_keys(body: &[u8]) -> Result<Value, Option<String>> {
    use serde::de::DeserializeSeed;
    let duplicate = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = StrictSeed(&duplicate)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match (parsed, duplicate.into_inner()) {
        (_, Some(key)) => Err(Some(key)),
        (Ok(v), None) => Ok(v),
        (Err(_), None) => Err(None),
    }
}

/// Which configured field a JSON key is (the last token of its pointer), for the
/// error; the key itself is the client's text and is not echoed.
fn field_named(cfg: &JsonProfile, key: &str) -> &'static str {
    let last = |p: &str| {
        p.rsplit('/')
            .next()
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
    };
    let is = |p: Option<&str>| p.and_then(last).is_some_and(|t| t == key);
    if is(Some(&cfg.recipients_pointer)) {
        "recipients"
    } else if is(match &cfg.account {
        AccountFrom::Field(p) => Some(p),
        AccountFrom::BasicAuth => None,
    }) {
        "account"
    } else if is(cfg.originator_pointer.as_deref()) {
        "originator"
    } else if is(cfg.text_pointer.as_deref()) {
        "text"
    } else {
        "(a JSON object key)"
    }
}

/// Deserialises a [`Value`], noting the first key an object repeats (and failing).
struct StrictSeed<'a>(&'a std::cell::RefCell<Option<String>>);

impl<'de> serde::de::DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictSeed(self.0))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        use serde::de::Error;
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                *self.0.borrow_mut() = Some(key);
                return Err(A::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(StrictSeed(self.0))?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Rough test for the GSM 03.38 basic set, enough to choose 7-bit or UCS-2 segments.
fn is_gsm_basic(c: char) -> bool {
    c.is_ascii() || "£¥èéùìòÇØøÅåΔΦΓΛΩΠΨΣΘΞÆæßÉÄÖÑÜ§¿äöñüà¡€".contains(c)
}

/// The user name of `Authorization: Basic …`, if present.
fn basic_auth_user(headers: crate::http1::Fields<'_>) -> Result<Option<String>, ParseError> {
    let mut all = headers.get_all("authorization");
    let (value, again) = (all.next(), all.next());
    if again.is_some() {
        return Err(ParseError::Duplicate("Authorization"));
    }
    let Some(value) = value else {
        return Ok(None);
    };
    let value = crate::http1::text(value).ok_or(ParseError::BadAuthorization)?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Err(ParseError::BadAuthorization);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| ParseError::BadAuthorization)?;
    let user = decoded.split(|&b| b == b':').next().unwrap_or(&[]);
    let user = std::str::from_utf8(user).map_err(|_| ParseError::BadAuthorization)?;
    Ok(Some(user.to_owned()))
}

/// The message id at `pointer` in the upstream's JSON reply.
pub fn reply_message_id(pointer: &str, body: &[u8]) -> Option<String> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    match doc.pointer(pointer)? {
        Value::String(s) => bounded_id(s),
        Value::Number(n) => bounded_id(&n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn cfg(account: AccountFrom) -> JsonProfile {
        JsonProfile {
            account,
            originator_pointer: Some("/from".into()),
            recipients_pointer: "/to".into(),
            text_pointer: Some("/text".into()),
            message_id_pointer: Some("/id".into()),
        }
    }

    /// A POST of `body` with the headers `h` and, unless they say otherwise, a JSON
    /// content type.
    fn run(cfg: &JsonProfile, h: &HeaderMap, body: &[u8]) -> Result<Extract, ParseError> {
        let mut h = h.clone();
        if !h.contains_key("content-type") {
            h.insert("content-type", HeaderValue::from_static("application/json"));
        }
        extract(
            cfg,
            &RequestView {
                method: &Method::POST,
                path: "/messages",
                query: None,
                headers: crate::http1::Fields::Map(&h),
                body,
            },
        )
    }

    #[test]
    fn pointers_and_basic_auth() {
        let mut h = HeaderMap::new();
        // "acme:s3cret"
        h.insert(
            "authorization",
            HeaderValue::from_static("Basic YWNtZTpzM2NyZXQ="),
        );
        let body =
            br#"{"from":"ACME","to":["+31612345678","0687654321"],"text":"h\u00e9llo \u4e16"}"#;
        let Ok(Extract::Message(m)) = run(&cfg(AccountFrom::BasicAuth), &h, body) else {
            panic!()
        };
        assert_eq!(m.account, "acme");
        assert_eq!(m.recipients.len(), 2);
        assert_eq!(m.text_chars, 7);
        assert_eq!(m.coding, 2);
        let field = cfg(AccountFrom::Field("/auth/user".into()));
        let body = br#"{"auth":{"user":"bob"},"to":"+31612345678"}"#;
        let Ok(Extract::Message(m)) = run(&field, &HeaderMap::new(), body) else {
            panic!()
        };
        assert_eq!(m.account, "bob");
    }

    #[test]
    fn bad_bodies() {
        let h = HeaderMap::new();
        let c = cfg(AccountFrom::Field("/user".into()));
        let table: [(&[u8], ParseError); 5] = [
            (b"{not json", ParseError::MalformedJson),
            (br#"{"user":"a"}"#, ParseError::MissingRecipient),
            (
                br#"{"user":"a","to":[{}]}"#,
                ParseError::WrongType("recipients"),
            ),
            (br#"{"to":"1234"}"#, ParseError::MissingAccount),
            (
                br#"{"user":7,"to":"1234"}"#,
                ParseError::WrongType("account"),
            ),
        ];
        for (body, err) in table {
            assert_eq!(
                run(&c, &h, body),
                Err(err),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let mut bad = HeaderMap::new();
        bad.insert("authorization", HeaderValue::from_static("Basic !!!"));
        assert_eq!(
            run(&cfg(AccountFrom::BasicAuth), &bad, br#"{"to":"1"}"#),
            Err(ParseError::BadAuthorization)
        );
    }

    /// Issue 10: serde_json keeps a repeated key's last value, other parsers the first;
    /// a repeated key anywhere in the document, or a second Authorization header, is
    /// refused and named by its role, never by the client's text.
    #[test]
    fn a_key_given_twice_is_refused() {
        let h = HeaderMap::new();
        let c = cfg(AccountFrom::Field("/user".into()));
        let table: [(&[u8], &str); 5] = [
            (br#"{"user":"a","to":"1","to":"2"}"#, "recipients"),
            (br#"{"user":"a","user":"b","to":"1"}"#, "account"),
            (
                br#"{"user":"a","to":"1","from":"x","from":"y"}"#,
                "originator",
            ),
            (br#"{"user":"a","to":"1","text":"x","text":"y"}"#, "text"),
            (
                br#"{"user":"a","to":"1","opts":[{"+31612345678":1,"+31612345678":2}]}"#,
                "(a JSON object key)",
            ),
        ];
        for (body, field) in table {
            assert_eq!(
                run(&c, &h, body),
                Err(ParseError::Duplicate(field)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // The same keys in different objects are not a repetition.
        let Ok(Extract::Message(m)) = run(&c, &h, br#"{"user":"a","to":["1"],"x":{"to":"2"}}"#)
        else {
            panic!()
        };
        assert_eq!(m.recipients, ["1"]);
        let mut two = HeaderMap::new();
        two.append("authorization", HeaderValue::from_static("Basic YWNtZTpz"));
        two.append("authorization", HeaderValue::from_static("Basic Ym9iOnM="));
        assert_eq!(
            run(&cfg(AccountFrom::BasicAuth), &two, br#"{"to":"1"}"#),
            Err(ParseError::Duplicate("Authorization"))
        );
    }

    /// Review of issue 10: a float is no phone number, and a body not declared JSON may
    /// be read as something else by the gateway.
    #[test]
    fn only_json_with_integer_numbers_is_read() {
        let c = cfg(AccountFrom::Field("/user".into()));
        assert_eq!(
            run(
                &c,
                &HeaderMap::new(),
                br#"{"user":"a","to":3.1612000101e10}"#
            ),
            Err(ParseError::WrongType("recipients"))
        );
        assert_eq!(
            run(&c, &HeaderMap::new(), br#"{"user":"a","to":[3.5]}"#),
            Err(ParseError::WrongType("recipients"))
        );
        let mut form = HeaderMap::new();
        form.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert_eq!(
            run(&c, &form, br#"{"user":"a","to":"1"}"#),
            Err(ParseError::UnsupportedContentType)
        );
        let Ok(Extract::Message(m)) =
            run(&c, &HeaderMap::new(), br#"{"user":"a","to":31612000101}"#)
        else {
            panic!()
        };
        assert_eq!(m.recipients, ["31612000101"]);
    }

    #[test]
    fn reply_id() {
        assert_eq!(
            reply_message_id("/id", br#"{"id":"abc"}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(
            reply_message_id("/id", br#"{"id":42}"#).as_deref(),
            Some("42")
        );
        assert_eq!(reply_message_id("/id", b"nope"), None);
    }
}
