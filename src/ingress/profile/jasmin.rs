//! Jasmin's HTTP API `/send`: `username`, `to` (one recipient), `from`, `content` or
//! `hex-content`, `coding`; GET query or form-encoded POST. Replies
//! `200 Success "<message id>"`.

use http::StatusCode;

use super::{Extract, Extracted, FormFields, ParseError, RequestView, bounded_id};

pub fn extract(req: &RequestView<'_>) -> Result<Extract, ParseError> {
    let mut out = Extracted::default();
    let mut to: Option<String> = None;
    FormFields::of(req).each(|k, v| match k {
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
    });
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
