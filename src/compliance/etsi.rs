//! ETSI TS 102 657 delivery: a case's records as a `RetainedDataMessage` in the XML
//! encoding of the retained-data schema (namespace [`NAMESPACE`]), the format
//! authorities in Europe receive retained data in and forensic tools import.
//!
//! ```text
//! RetainedDataMessage
//!   retainedDataHeader/requestID/{countryCode, authorisedOrganisationID, requestNumber}
//!   retainedDataHeader/{cSPID, timeStamp}
//!   retainedDataPayload/responseMessage/responseStatus/responseComplete
//!   retainedDataPayload/responseMessage/responsePayload/ResponseRecord*   (one per record)
//!     recordNumber
//!     recordPayload/telephonyRecord/telephonyServiceUsage/partyInformation/
//!       TelephonyPartyInformation (sms-Originator leg, then sms-Recipient leg)
//!         partyRole/<sms-Originator|sms-Recipient>, partyNumber,
//!         communicationTime/startTime                       (an SMS)
//!     recordPayload/messagingRecord/messagingServiceUsage/
//!       {messagingPartyInformation/MessagingPartyInformation (sender, then
//!        receiver-to: partyRole, emailAddress, iPAddress for the sender),
//!        messagingEventTime}                                (an e-mail)
//!     additionalInformation/otherInformation  "key"="value"; pairs: relaylog's own
//!       fields (account, client IP, outcome, message id, exact time, ...)
//! ```
//!
//! Times are GeneralizedTime, UTC, whole seconds (`20261205143000Z`); the exact time,
//! to the microsecond, is in `otherInformation` as `time`. A value in
//! `otherInformation` has `%`, `"`, `;` and control characters percent-encoded, so that
//! the `"key"="value";` form importers split on stays whole. Element text is escaped
//! as XML requires, with `%`, control characters and the characters XML 1.0 cannot
//! carry (U+FFFE, U+FFFF) percent-encoded (an address can hold any of them).

use crate::clock::{Micros, micros_to_datetime};
use crate::export::found_json;
use crate::record::Service;
use crate::store::query::Found;

pub const NAMESPACE: &str = "http://uri.etsi.org/02657/v1.28.1#/RetainedData";

/// What the header states: the request answered and who answers it.
pub struct Header<'a> {
    pub country: &'a str,
    pub organisation: &'a str,
    pub request_number: &'a str,
    /// The provider's identifier (`compliance.csp-id`).
    pub csp_id: &'a str,
    pub at: Micros,
}

/// GeneralizedTime, UTC, whole seconds.
pub fn generalized_time(us: Micros) -> String {
    micros_to_datetime(us).format("%Y%m%d%H%M%SZ").to_string()
}

/// Renders the message (UTF-8, with its XML declaration).
pub fn render(header: &Header<'_>, records: &[Found]) -> Vec<u8> {
    let mut x = Xml::default();
    x.raw("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.raw(&format!("<RetainedDataMessage xmlns=\"{NAMESPACE}\">\n"));
    x.open("retainedDataHeader");
    x.open("requestID");
    x.leaf("countryCode", header.country);
    x.leaf("authorisedOrganisationID", header.organisation);
    x.leaf("requestNumber", header.request_number);
    x.close("requestID");
    x.leaf("cSPID", header.csp_id);
    x.leaf("timeStamp", &generalized_time(header.at));
    x.close("retainedDataHeader");
    x.open("retainedDataPayload");
    x.open("responseMessage");
    x.open("responseStatus");
    x.empty("responseComplete");
    x.close("responseStatus");
    x.open("responsePayload");
    for (n, f) in records.iter().enumerate() {
        record(&mut x, n + 1, f);
    }
    x.close("responsePayload");
    x.close("responseMessage");
    x.close("retainedDataPayload");
    x.raw("</RetainedDataMessage>\n");
    x.out.into_bytes()
}

fn record(x: &mut Xml, number: usize, f: &Found) {
    let time = generalized_time(f.at);
    let recipient = &f.fields.recipient.value;
    let originator = f.fields.originator.as_ref().map(|o| o.value.as_str());
    x.open("ResponseRecord");
    x.leaf("recordNumber", &number.to_string());
    x.open("recordPayload");
    match f.service {
        Service::Sms => {
            x.open("telephonyRecord");
            x.open("telephonyServiceUsage");
            x.open("partyInformation");
            // The originator's leg even when the client named none: the role stands,
            // its number unknown (an empty partyNumber).
            for (role, number) in [
                ("sms-Originator", originator.unwrap_or("")),
                ("sms-Recipient", recipient.as_str()),
            ] {
                x.open("TelephonyPartyInformation");
                x.open("partyRole");
                x.empty(role);
                x.close("partyRole");
                x.leaf("partyNumber", number);
                x.open("communicationTime");
                x.leaf("startTime", &time);
                x.close("communicationTime");
                x.close("TelephonyPartyInformation");
            }
            x.close("partyInformation");
            x.close("telephonyServiceUsage");
            x.close("telephonyRecord");
        }
        Service::Email => {
            x.open("messagingRecord");
            x.open("messagingServiceUsage");
            x.open("messagingPartyInformation");
            x.open("MessagingPartyInformation");
            x.open("partyRole");
            x.empty("sender");
            x.close("partyRole");
            x.leaf("emailAddress", originator.unwrap_or(""));
            x.leaf("iPAddress", &f.fields.client_ip.to_string());
            x.close("MessagingPartyInformation");
            x.open("MessagingPartyInformation");
            x.open("partyRole");
            x.empty("receiver-to");
            x.close("partyRole");
            x.leaf("emailAddress", recipient);
            x.close("MessagingPartyInformation");
            x.close("messagingPartyInformation");
            x.leaf("messagingEventTime", &time);
            x.close("messagingServiceUsage");
            x.close("messagingRecord");
        }
    }
    x.close("recordPayload");
    x.open("additionalInformation");
    x.encoded_leaf("otherInformation", &other_information(f));
    x.close("additionalInformation");
    x.close("ResponseRecord");
}

/// relaylog's own fields as `"key"="value";` pairs: every field of the JSON export
/// that is set and not already in the record's elements.
fn other_information(f: &Found) -> String {
    let v = found_json(f);
    let mut out = String::new();
    let Some(fields) = v.as_object() else {
        return out;
    };
    for (k, value) in fields {
        if matches!(k.as_str(), "recipient" | "originator") {
            continue;
        }
        let value = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out += &format!("\"{k}\"=\"{}\";", percent(&value, &['%', '"', ';']));
    }
    out
}

/// Characters XML 1.0 cannot carry at all, even escaped (outside its `Char`
/// production), and control characters (which it could, invisibly).
fn unfit(c: char) -> bool {
    c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}')
}

/// `s` with `specials` and [`unfit`] characters percent-encoded (UTF-8 bytes).
fn percent(s: &str, specials: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if unfit(c) || specials.contains(&c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out += &format!("%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// An indented XML writer for elements whose names are this module's constants.
#[derive(Default)]
struct Xml {
    out: String,
    depth: usize,
}

impl Xml {
    fn raw(&mut self, s: &str) {
        self.out += s;
    }

    fn indent(&mut self) {
        for _ in 0..self.depth {
            self.out += "  ";
        }
    }

    fn open(&mut self, name: &str) {
        self.depth += 1;
        self.indent();
        self.out += &format!("<{name}>\n");
    }

    fn close(&mut self, name: &str) {
        self.indent();
        self.out += &format!("</{name}>\n");
        self.depth -= 1;
    }

    fn empty(&mut self, name: &str) {
        self.depth += 1;
        self.indent();
        self.out += &format!("<{name}/>\n");
        self.depth -= 1;
    }

    /// An element holding `text`, as [`escape`] writes it.
    fn leaf(&mut self, name: &str, text: &str) {
        self.element(name, &escape(text));
    }

    /// An element holding `text` percent-encoded already (only markup is escaped).
    fn encoded_leaf(&mut self, name: &str, text: &str) {
        self.element(name, &markup(text));
    }

    fn element(&mut self, name: &str, content: &str) {
        self.depth += 1;
        self.indent();
        self.out += &format!("<{name}>{content}</{name}>\n");
        self.depth -= 1;
    }
}

/// Element content: the characters markup gives meaning to escaped (quotes need
/// none there, and stay readable in `otherInformation`).
fn markup(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            c => out.push(c),
        }
    }
    out
}

/// Text as element content: `%` and [`unfit`] characters percent-encoded (so that
/// the encoding can be undone), then markup escaped.
fn escape(s: &str) -> String {
    markup(&percent(s, &['%']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_stay_in_their_element_and_their_pair() {
        use crate::canonical::{Form, Identifier};
        use crate::record::{Protocol, SubmissionId};
        use crate::store::codec::SealedFields;
        let f = Found {
            partition: crate::store::partition::PartitionId::containing(
                crate::config::Granularity::Day,
                0,
            ),
            node: 0,
            record_id: 1,
            submission: SubmissionId(1),
            ordinal: 0,
            at: 0,
            protocol: Protocol::Http,
            service: Service::Sms,
            segments: 1,
            fields: SealedFields {
                account: "a\";\"outcome\"=\"x</otherInformation><x>".into(),
                client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                client_port: 1,
                originator: None,
                recipient: Identifier {
                    form: Form::Raw,
                    value: "<&\u{FFFF}>".into(),
                },
                smpp: None,
            },
            outcome: None,
            receipt: None,
        };
        let xml = String::from_utf8(render(
            &Header {
                country: "NL",
                organisation: "OM",
                request_number: "1",
                csp_id: "CSP",
                at: 0,
            },
            &[f],
        ))
        .unwrap();
        assert!(
            xml.contains("<partyNumber>&lt;&amp;%EF%BF%BF&gt;</partyNumber>"),
            "{xml}"
        );
        assert!(
            xml.contains("<partyNumber></partyNumber>"),
            "no originator: {xml}"
        );
        assert!(
            xml.contains(
                "\"account\"=\"a%22%3B%22outcome%22=%22x&lt;/otherInformation&gt;&lt;x&gt;\";"
            ),
            "{xml}"
        );
        assert_eq!(xml.matches("<otherInformation>").count(), 1);
    }

    #[test]
    fn times_and_escapes() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-05T14:30:00.123456Z").unwrap();
        assert_eq!(generalized_time(at.timestamp_micros()), "20261205143000Z");
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;\"c'");
        assert_eq!(escape("50%\u{1}\u{FFFF}"), "50%25%01%EF%BF%BF");
        assert_eq!(percent("x\"y;z%", &['%', '"', ';']), "x%22y%3Bz%25");
    }
}
