//! Jasmin's HTTP API `/send`: `username`, `to` (one recipient), `from`, `content` or
//! `hex-content`, `coding`; GET query or form-encoded POST. Replies
//! `200 Success "<message id>"`.

use http::StatusCode;

use super::{Extract, Extracted, FormFields, Params, ParseError, RequestView, Seen, bounded_id};

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

pub fn extract(req: &RequestView<'_>) -> Result<Extract, ParseError> {
    let mut out = Extracted::default();
    let mut to: Option<String> = None;
    let mut seen = Seen::default();
    FormFields::of(req).each(|k, v| {
        if seen.note(PARAMS, k)?.is_none() {
            return Ok(());
        }
        match k {
            "username" => out.account = v.to_owned(),
            "from" => out.originator = Some(v.to_owned()),
            "to" => to = Some(v.trim().to_owned()),
            "content" => out.text_chars = v.chars().count(),
            "hex-content" => out.text_chars = v.len() / 2,
            "coding" => {
                out.coding = match v.trim() {
                    "8" => 2,
                    "4" | "2" => 1,
                    _ => 0,
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    match to {
        Some(to) if !to.is_empty() => out.recipients.push(to),
        _ => return Err(ParseError::MissingRecipient),
    }
    if out.account.trim().is_empty() {
        return Err(ParseError::MissingAccount);
    }
    Ok(Extract::Message(out))
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
            headers: h,
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
