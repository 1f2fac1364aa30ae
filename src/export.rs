//! How a record is written out: one JSON object or one CSV row per record, the same
//! fields either way. Used by `query`, disclosures and data-subject exports.

use crate::clock::micros_to_datetime;
use crate::store::query::Found;

pub const CSV_HEADER: [&str; 28] = [
    "time",
    "protocol",
    "service",
    "account",
    "client_ip",
    "client_port",
    "originator",
    "originator_form",
    "recipient",
    "recipient_form",
    "segments",
    "submission",
    "partition",
    "outcome",
    "outcome_time",
    "upstream_status",
    "gateway_code",
    "upstream_message_id",
    "enhanced_status",
    "size_bytes",
    "direction",
    "registered_delivery",
    "segment_reference",
    "segment_part",
    "receipt_state",
    "receipt_error",
    "receipt_done",
    "receipt_time",
];

pub fn rfc3339(us: i64) -> String {
    micros_to_datetime(us).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub fn found_json(f: &Found) -> serde_json::Value {
    let o = f.outcome.as_ref();
    let r = f.receipt.as_ref();
    let smpp = f.fields.smpp.as_ref();
    serde_json::json!({
        "time": rfc3339(f.at),
        "protocol": f.protocol.as_str(),
        "service": f.service.as_str(),
        "account": f.fields.account,
        "client_ip": f.fields.client_ip.to_string(),
        "client_port": f.fields.client_port,
        "originator": f.fields.originator.as_ref().map(|o| o.value.clone()),
        "originator_form": f.fields.originator.as_ref().map(|o| o.form.as_str()),
        "recipient": f.fields.recipient.value,
        "recipient_form": f.fields.recipient.form.as_str(),
        "segments": f.segments,
        "submission": f.submission.0,
        "partition": f.partition.to_string(),
        "outcome": o.map(|o| o.outcome.as_str()),
        "outcome_time": o.map(|o| rfc3339(o.at)),
        "upstream_status": o.and_then(|o| o.upstream_status),
        "gateway_code": o.and_then(|o| o.gateway_code),
        "upstream_message_id": o.and_then(|o| o.upstream_message_id.clone()),
        "enhanced_status": o.and_then(|o| o.enhanced_status.clone()),
        "size_bytes": o.and_then(|o| o.size_bytes),
        "direction": smpp.map(|d| d.direction.as_str()),
        "registered_delivery": smpp.map(|d| d.registered_delivery),
        "segment_reference": smpp.and_then(|d| d.part).map(|p| p.reference),
        "segment_part": smpp.and_then(|d| d.part).map(|p| p.number),
        "receipt_state": r.and_then(|r| r.state.clone()),
        "receipt_error": r.and_then(|r| r.error.clone()),
        "receipt_done": r.and_then(|r| r.done.clone()),
        "receipt_time": r.map(|r| rfc3339(r.at)),
    })
}

pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub fn found_csv(f: &Found) -> String {
    let v = found_json(f);
    CSV_HEADER
        .iter()
        .map(|k| match &v[*k] {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => csv_field(s),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Form, Identifier};
    use crate::config::Granularity;
    use crate::record::{Direction, Protocol, Service, SmppDetail, SubmissionId};
    use crate::store::codec::SealedFields;
    use crate::store::partition::PartitionId;

    /// Every CSV column is a field of the JSON object, and nothing else is.
    #[test]
    fn the_csv_columns_are_the_json_fields() {
        let f = Found {
            partition: PartitionId::containing(Granularity::Day, 0),
            node: 0,
            record_id: 1,
            submission: SubmissionId(1),
            ordinal: 0,
            at: 0,
            protocol: Protocol::Smpp,
            service: Service::Sms,
            segments: 1,
            fields: SealedFields {
                account: "acme".into(),
                client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                client_port: 1,
                originator: None,
                recipient: Identifier {
                    form: Form::E164,
                    value: "+31612345678".into(),
                },
                smpp: Some(SmppDetail {
                    direction: Direction::MobileTerminated,
                    registered_delivery: 1,
                    part: None,
                }),
            },
            outcome: None,
            receipt: None,
        };
        let v = found_json(&f);
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut columns = CSV_HEADER.to_vec();
        keys.sort_unstable();
        columns.sort_unstable();
        assert_eq!(keys, columns);
        assert_eq!(found_csv(&f).split(',').count(), CSV_HEADER.len());
    }
}
