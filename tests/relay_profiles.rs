//! Every profile and every Kannel request form, relayed through `serve` on loopback:
//! the upstream receives the request byte for byte, the store holds one record per
//! recipient with the right account, originator, normalised recipient and client IP.

mod common;

use common::*;
use http::Method;
use relaylog::canonical::Form;
use relaylog::record::Outcome;
use relaylog::store::IndexKind;

const KANNEL_OK: &str = "0: Accepted for delivery";

#[tokio::test]
async fn kannel_get_query_several_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let c = client();
    let pq = "/cgi-bin/sendsms?username=tester&password=foobar&from=ACME&to=0612345678+%2B31687654321&text=Hello+there%21&dlr-mask=31";
    let (status, body) = get(&c, &format!("{}{pq}", relay.url)).await;
    assert_eq!((status.as_u16(), body.as_str()), (202, KANNEL_OK));
    let seen = up.last();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(
        seen.path_and_query, pq,
        "query string forwarded unchanged, password and text included"
    );

    relay.settle().await;
    for number in ["+31612345678", "+31687654321"] {
        let found = relay.query(IndexKind::Recipient, number).await;
        assert_eq!(found.len(), 1, "{number}");
        let f = &found[0];
        assert_eq!(f.fields.account, "tester");
        assert_eq!(f.fields.client_ip.to_string(), "127.0.0.1");
        assert_eq!(f.fields.originator.as_ref().unwrap().value, "ACME");
        assert_eq!(f.fields.recipient.form, Form::E164);
        assert_eq!(f.segments, 1);
        let o = f.outcome.as_ref().expect("outcome appended");
        assert_eq!(
            (o.outcome, o.upstream_status, o.gateway_code),
            (Outcome::Accepted, Some(202), Some(0))
        );
    }
    let both = relay.query(IndexKind::Account, "tester").await;
    assert_eq!(both.len(), 2);
    assert_eq!(
        both[0].submission, both[1].submission,
        "one submission, two recipient rows"
    );
    assert_eq!(relay.query(IndexKind::ClientIp, "127.0.0.1").await.len(), 2);
    assert_eq!(relay.query(IndexKind::Originator, "ACME").await.len(), 2);
    relay.running.shutdown().await;
}

#[tokio::test]
async fn kannel_post_forms_are_forwarded_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let c = client();
    let url = format!("{}/cgi-bin/sendsms", relay.url);

    // application/x-www-form-urlencoded
    let form =
        "username=formuser&password=pw1&to=%2B31611111111&from=%2B31622222222&text=caf%C3%A9";
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let (s, _) = send(&c, Method::POST, &url, &[ct], form).await;
    assert_eq!(s.as_u16(), 202);
    let seen = up.last();
    assert_eq!(
        (seen.method.as_str(), seen.body.as_ref()),
        ("POST", form.as_bytes())
    );
    assert_eq!(
        seen.headers.get("content-type").unwrap(),
        "application/x-www-form-urlencoded"
    );
    let f = relay.query(IndexKind::Recipient, "+31611111111").await;
    assert_eq!((f.len(), f[0].fields.account.as_str()), (1, "formuser"));
    assert_eq!(
        f[0].fields.originator.as_ref().unwrap().value,
        "+31622222222"
    );

    // text/plain with X-Kannel-* headers
    let text = "plain body text";
    let headers = [
        ("content-type", "text/plain"),
        ("x-kannel-username", "plainuser"),
        ("x-kannel-password", "pw2"),
        ("x-kannel-to", "+31633333333 0644444444"),
        ("x-kannel-from", "Shop"),
    ];
    let (s, _) = send(&c, Method::POST, &url, &headers, text).await;
    assert_eq!(s.as_u16(), 202);
    let seen = up.last();
    assert_eq!(seen.body.as_ref(), text.as_bytes());
    for (k, v) in &headers[1..] {
        assert_eq!(seen.headers.get(*k).unwrap(), v, "{k} forwarded");
    }
    assert_eq!(relay.query(IndexKind::Account, "plainuser").await.len(), 2);
    assert_eq!(
        relay.query(IndexKind::Recipient, "+31644444444").await[0]
            .fields
            .originator
            .as_ref()
            .unwrap()
            .value,
        "Shop"
    );

    // text/xml with several <da>
    let xml = r#"<?xml version="1.0"?>
<message><submit><da><number>+31655555555</number></da><da><number>+31666666666</number></da><da><number>+31677777777</number></da><oa><number>4477</number></oa><ud>xml text</ud><from><username>xmluser</username><password>pw3</password></from></submit></message>"#;
    let (s, _) = send(&c, Method::POST, &url, &[("content-type", "text/xml")], xml).await;
    assert_eq!(s.as_u16(), 202);
    assert_eq!(up.last().body.as_ref(), xml.as_bytes());
    let x = relay.query(IndexKind::Account, "xmluser").await;
    assert_eq!(x.len(), 3);
    let mut numbers: Vec<_> = x.iter().map(|f| f.fields.recipient.value.clone()).collect();
    numbers.sort();
    assert_eq!(numbers, ["+31655555555", "+31666666666", "+31677777777"]);
    relay.running.shutdown().await;
}

#[tokio::test]
async fn jasmin_send_records_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start("Success \"9d5c3e2a-0000-4000-8000-000000000001\"").await;
    up.status.store(200, std::sync::atomic::Ordering::SeqCst);
    let relay = relay_in_front_of(dir.path(), &up, "jasmin", "", "").await;
    let c = client();
    let pq =
        "/send?username=jasuser&password=jaspw&to=%2B4915112345678&from=Bank&content=code%201234";
    let (s, body) = get(&c, &format!("{}{pq}", relay.url)).await;
    assert_eq!(s.as_u16(), 200);
    assert!(body.starts_with("Success"));
    assert_eq!(up.last().path_and_query, pq);
    relay.settle().await;
    let f = relay.query(IndexKind::Recipient, "+4915112345678").await;
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].fields.account, "jasuser");
    assert_eq!(
        f[0].outcome
            .as_ref()
            .unwrap()
            .upstream_message_id
            .as_deref(),
        Some("9d5c3e2a-0000-4000-8000-000000000001")
    );
    relay.running.shutdown().await;
}

#[tokio::test]
async fn json_api_with_basic_auth_and_pointers() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(r#"{"id":"msg-77"}"#).await;
    up.status.store(201, std::sync::atomic::Ordering::SeqCst);
    let extra = "[listener.json]\naccount-from = \"basic-auth\"\noriginator-pointer = \"/sender\"\n\
                 recipients-pointer = \"/recipients\"\ntext-pointer = \"/body\"\nmessage-id-pointer = \"/id\"\n";
    let relay = relay_in_front_of(dir.path(), &up, "json", extra, "").await;
    let c = client();
    let body = r#"{"sender":"+31699999999","recipients":["+31612340001","+31612340002"],"body":"json text"}"#;
    // "apiuser:apisecret"
    let headers = [
        ("content-type", "application/json"),
        ("authorization", "Basic YXBpdXNlcjphcGlzZWNyZXQ="),
    ];
    let (s, reply) = send(
        &c,
        Method::POST,
        &format!("{}/messages", relay.url),
        &headers,
        body,
    )
    .await;
    assert_eq!((s.as_u16(), reply.as_str()), (201, r#"{"id":"msg-77"}"#));
    let seen = up.last();
    assert_eq!(seen.body.as_ref(), body.as_bytes());
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        "Basic YXBpdXNlcjphcGlzZWNyZXQ="
    );
    relay.settle().await;
    let f = relay.query(IndexKind::Account, "apiuser").await;
    assert_eq!(f.len(), 2);
    assert_eq!(
        f[0].outcome
            .as_ref()
            .unwrap()
            .upstream_message_id
            .as_deref(),
        Some("msg-77")
    );
    assert_eq!(
        f[0].fields.originator.as_ref().unwrap().value,
        "+31699999999"
    );
    relay.running.shutdown().await;
}

/// Only the paths a listener names are forwarded without a record; anything else gets
/// 404 from relaylog itself and is counted, and never reaches the gateway.
#[tokio::test]
async fn requests_without_a_message_pass_through_unrecorded() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start("status ok").await;
    up.status.store(200, std::sync::atomic::Ordering::SeqCst);
    let relay = relay_in_front_of(
        dir.path(),
        &up,
        "kannel",
        "passthrough = [\"/status\"]\n",
        "",
    )
    .await;
    let c = client();
    let (s, body) = get(&c, &format!("{}/status?password=adminpw", relay.url)).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "status ok"));
    assert_eq!(up.last().path_and_query, "/status?password=adminpw");
    for other in [
        "/cgi-bin/sendota?username=a&to=1",
        "/",
        "/cgi-bin/sendsmsx?to=1",
    ] {
        let (s, body) = get(&c, &format!("{}{other}", relay.url)).await;
        assert_eq!(
            (s.as_u16(), body.as_str()),
            (404, "relaylog: unknown path, rejected\n"),
            "{other}"
        );
    }
    assert_eq!(up.count(), 1, "unknown paths never reach the gateway");
    let metrics = relay.metrics().await;
    assert_metric(
        &metrics,
        "relaylog_requests_total{listener=\"sms\",kind=\"passthrough\"} 1",
    );
    assert_metric(&metrics, "reason=\"unknown_path\"} 3");
    assert_metric(&metrics, "relaylog_records_written_total 0");
    relay.running.shutdown().await;
}

/// Issue 10: only a byte-exact path was recorded, so `/cgi-bin/sendsms/` and friends,
/// which frameworks in front of gateways route to the same handler, were forwarded
/// unrecorded. Every spelling of the message path is now a message.
#[tokio::test]
async fn every_spelling_of_the_message_path_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let c = client();
    let spellings = [
        "/cgi-bin/sendsms/",
        "//cgi-bin//sendsms",
        "/cgi-bin/%73endsms",
        "/CGI-BIN/SendSMS",
        "/cgi-bin/sendsms;jsessionid=1",
    ];
    for (i, path) in spellings.iter().enumerate() {
        let pq = format!("{path}?username=spell&to=%2B3161200{i:04}&text=x");
        let (s, body) = get(&c, &format!("{}{pq}", relay.url)).await;
        assert_eq!((s.as_u16(), body.as_str()), (202, KANNEL_OK), "{path}");
        assert_eq!(
            up.last().path_and_query,
            pq,
            "forwarded as the client spelt it"
        );
    }
    relay.settle().await;
    assert_eq!(
        relay.query(IndexKind::Account, "spell").await.len(),
        spellings.len()
    );
    relay.running.shutdown().await;
}

/// The JSON profile: a request on the message path that is not a POST is no message,
/// and is not forwarded either. Jasmin's `/balance` passes through by default.
#[tokio::test]
async fn json_non_post_on_the_message_path_is_refused_and_jasmin_balance_passes() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start("{}").await;
    let json = "[listener.json]\naccount-from = \"field\"\naccount-pointer = \"/user\"\nrecipients-pointer = \"/to\"\n";
    let relay = relay_in_front_of(dir.path(), &up, "json", json, "").await;
    let c = client();
    let (s, _) = get(&c, &format!("{}/messages/", relay.url)).await;
    assert_eq!(s.as_u16(), 405);
    assert_eq!(up.count(), 0);
    assert_metric(&relay.metrics().await, "reason=\"method_not_allowed\"} 1");
    relay.running.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start("{\"balance\": 1}").await;
    up.status.store(200, std::sync::atomic::Ordering::SeqCst);
    let relay = relay_in_front_of(dir.path(), &up, "jasmin", "", "").await;
    let (s, _) = get(&c, &format!("{}/balance?username=a&password=b", relay.url)).await;
    assert_eq!(s.as_u16(), 200);
    assert_eq!(up.count(), 1);
    let (s, _) = get(&c, &format!("{}/secret?username=a&password=b", relay.url)).await;
    assert_eq!(s.as_u16(), 404);
    assert_eq!(up.count(), 1);
    relay.running.shutdown().await;
}

#[tokio::test]
async fn invalid_recipient_is_recorded_raw_and_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let c = client();
    let (s, _) = get(
        &c,
        &format!(
            "{}/cgi-bin/sendsms?username=u&password=p&to=12-34&text=x",
            relay.url
        ),
    )
    .await;
    assert_eq!(s.as_u16(), 202, "the gateway decides");
    assert_eq!(up.count(), 1);
    let f = relay.query(IndexKind::Recipient, "1234").await;
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].fields.recipient.form, Form::Raw);
    relay.running.shutdown().await;
}

#[tokio::test]
async fn without_upstream_serve_starts_the_simulator_which_counts() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &config_text(dir.path(), "jasmin", None, "", "")).await;
    let sim = &relay.running.simulators[0];
    let c = client();
    let (s, body) = get(
        &c,
        &format!(
            "{}/send?username=u&password=p&to=%2B31612345678&content=x",
            relay.url
        ),
    )
    .await;
    assert_eq!(s.as_u16(), 200);
    assert!(body.starts_with("Success \""), "{body}");
    let (s, _) = get(
        &c,
        &format!("{}/send?username=u&password=p&content=x", relay.url),
    )
    .await;
    assert_eq!(
        s.as_u16(),
        400,
        "refused by relaylog, never reaches the simulator"
    );
    let (s, stats) = get(&c, &format!("http://{}/stats", sim.addr)).await;
    assert_eq!(s.as_u16(), 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        (
            stats["accepted"].as_u64(),
            stats["recipients"].as_u64(),
            stats["rejected"].as_u64()
        ),
        (Some(1), Some(1), Some(0))
    );
    relay.running.shutdown().await;
}
