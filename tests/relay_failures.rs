//! Bad input, a store that cannot write, slow clients and TLS ingress: every refusal is
//! a clear reply, nothing unrecorded is forwarded, and the relay keeps serving.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use relaylog::store::IndexKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KANNEL_OK: &str = "0: Accepted for delivery";

#[tokio::test]
async fn bad_requests_are_refused_and_not_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let limits = "max-body-bytes = 1024\n";
    let relay = relay_in_front_of(dir.path(), &up, "kannel", limits, "").await;
    let c = client();

    let (s, _) = get(&c, &sendsms(&relay.url, "first", "%2B31612345678")).await;
    assert_eq!(s.as_u16(), 202);
    assert_eq!(up.count(), 1);

    let url = format!("{}/cgi-bin/sendsms", relay.url);
    // (method, target, headers, body, expected status, text the reply must contain)
    type Case<'a> = (
        Method,
        String,
        Vec<(&'a str, &'a str)>,
        String,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            format!("{url}?username=u&password=p&text=x"),
            vec![],
            String::new(),
            400,
            "missing receiver number",
        ),
        (
            Method::GET,
            format!("{url}?username=u&password=p&to=&text=x"),
            vec![],
            String::new(),
            400,
            "missing receiver number",
        ),
        (
            Method::GET,
            format!("{url}?password=p&to=0612345678"),
            vec![],
            String::new(),
            400,
            "missing account",
        ),
        (
            Method::POST,
            url.clone(),
            vec![("content-type", "text/xml")],
            "<message><submit><da><number>1</number>".into(),
            400,
            "malformed XML",
        ),
        (
            Method::POST,
            url.clone(),
            vec![("content-type", "application/x-www-form-urlencoded")],
            format!("username=u&to=0612345678&text={}", "x".repeat(2000)),
            413,
            "larger than max-body-bytes",
        ),
        (
            Method::POST,
            url.clone(),
            vec![("content-type", "image/png")],
            "x".into(),
            400,
            "content type",
        ),
    ];
    for (method, target, headers, body, status, text) in cases {
        let (s, reply) = send(&c, method, &target, &headers, body).await;
        assert_eq!(s.as_u16(), status, "{target}: {reply}");
        assert!(reply.contains(text), "{target}: {reply}");
    }
    assert_eq!(up.count(), 1, "no refused request reached the upstream");

    // Still serving, and nothing accepted earlier was lost.
    let (s, _) = get(&c, &sendsms(&relay.url, "after", "%2B31612345679")).await;
    assert_eq!(s.as_u16(), 202);
    assert_eq!(relay.query(IndexKind::Account, "first").await.len(), 1);
    assert_eq!(relay.query(IndexKind::Account, "after").await.len(), 1);
    let metrics = relay.metrics().await;
    assert_metric(
        &metrics,
        "relaylog_requests_total{listener=\"sms\",kind=\"rejected\"} 6",
    );
    assert_metric(&metrics, "reason=\"missing_recipient\"} 2");
    relay.running.shutdown().await;
}

#[tokio::test]
async fn malformed_json_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start("{}").await;
    let extra = "[listener.json]\naccount-from = \"field\"\naccount-pointer = \"/user\"\nrecipients-pointer = \"/to\"\n";
    let relay = relay_in_front_of(dir.path(), &up, "json", extra, "").await;
    let c = client();
    let url = format!("{}/messages", relay.url);
    for (body, text) in [
        ("{\"user\":", "malformed JSON"),
        ("{\"user\":\"a\"}", "missing receiver"),
        ("{\"to\":\"1\"}", "missing account"),
    ] {
        let (s, reply) = send(
            &c,
            Method::POST,
            &url,
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert_eq!(s.as_u16(), 400, "{body}");
        assert!(reply.contains(text), "{body}: {reply}");
    }
    assert_eq!(up.count(), 0);
    relay.running.shutdown().await;
}

#[tokio::test]
async fn unwritable_store_fails_closed_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let c = client();
    assert_eq!(
        get(&c, &sendsms(&relay.url, "before", "%2B31612345601"))
            .await
            .0
            .as_u16(),
        202
    );

    // Take the store directory away and put a plain file where it was (on
    // PostgreSQL: a constraint no row meets).
    let broken = break_store(dir.path());
    let (s, reply) = get(&c, &sendsms(&relay.url, "during", "%2B31612345602")).await;
    assert_eq!(s.as_u16(), 503, "{reply}");
    assert!(reply.contains("try again later"), "{reply}");
    assert_eq!(
        up.count(),
        1,
        "nothing forwarded while the store cannot write"
    );
    let metrics = relay.metrics().await;
    assert_metric(
        &metrics,
        &format!(
            "relaylog_fail_closed_total{{listener=\"sms\",reason=\"{}\"}} 1",
            broken.reason()
        ),
    );

    // The store comes back: relaying resumes.
    broken.mend();
    let (s, _) = get(&c, &sendsms(&relay.url, "after", "%2B31612345603")).await;
    assert_eq!(s.as_u16(), 202);
    assert_eq!(up.count(), 2);
    assert_eq!(relay.query(IndexKind::Account, "before").await.len(), 1);
    assert_eq!(relay.query(IndexKind::Account, "during").await.len(), 0);
    assert_eq!(relay.query(IndexKind::Account, "after").await.len(), 1);
    relay.running.shutdown().await;
}

#[tokio::test]
async fn slow_clients_time_out_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let limits = "request-timeout = \"300ms\"\nheader-timeout = \"300ms\"\n";
    let relay = relay_in_front_of(dir.path(), &up, "kannel", limits, "").await;
    let addr = relay.running.addr("sms").unwrap();

    // Body promised, never sent: 408.
    let mut slow_body = TcpStream::connect(addr).await.unwrap();
    slow_body
        .write_all(b"POST /cgi-bin/sendsms HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nusername=u")
        .await
        .unwrap();
    // Half a request head, then silence: the connection is closed.
    let mut slow_head = TcpStream::connect(addr).await.unwrap();
    slow_head
        .write_all(b"GET /cgi-bin/sendsms?username=u HTTP/1.1\r\nHo")
        .await
        .unwrap();

    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow_body.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), slow_head.read_to_end(&mut rest)).await;
    assert!(
        matches!(n, Ok(Ok(_)) | Ok(Err(_))),
        "slow head connection was not closed"
    );

    let c = client();
    assert_eq!(
        get(&c, &sendsms(&relay.url, "fast", "%2B31612345604"))
            .await
            .0
            .as_u16(),
        202
    );
    assert_eq!(up.count(), 1);
    relay.running.shutdown().await;
}

#[tokio::test]
async fn tls_ingress_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let (ck, tls) = cert_files(dir.path(), "relay");
    let relay = relay_in_front_of(dir.path(), &up, "kannel", &tls, "").await;
    let addr = relay.running.addr("sms").unwrap();
    let connector = trusting(&ck);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    // Keep-alive requests on the TLS connection, then one that asks to close.
    let mut buf = bytes::BytesMut::new();
    for _ in 0..2 {
        tls.write_all(b"GET /cgi-bin/sendsms?username=tlsuser&password=pw&to=%2B31612345605&text=x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let r = relaylog::http1::read_reply(&mut tls, &mut buf, false, 1 << 16)
            .await
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (202, KANNEL_OK.as_bytes()));
    }
    tls.write_all(b"GET /cgi-bin/sendsms?username=tlsuser&password=pw&to=%2B31612345605&text=x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
    assert!(reply.ends_with(KANNEL_OK), "{reply}");
    relay.settle().await;
    assert_eq!(relay.query(IndexKind::Account, "tlsuser").await.len(), 3);

    // Plain HTTP to the TLS port gets no relay.
    let c = client();
    let plain = c
        .get(
            format!("http://{addr}/cgi-bin/sendsms?username=x&to=1")
                .parse()
                .unwrap(),
        )
        .await;
    assert!(plain.is_err() || plain.unwrap().status().as_u16() >= 400);
    assert_eq!(up.count(), 3);
    relay.running.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_commits_them() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    up.delay_ms.store(400, std::sync::atomic::Ordering::SeqCst);
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let config = relay.config.clone();
    let addr = relay.running.addr("sms").unwrap();
    let c = client();
    let url = sendsms(&relay.url, "inflight", "%2B31612345606");
    let request = tokio::spawn(async move { get(&c, &url).await });
    // Wait until the request is at the upstream, then shut down under it.
    while up.count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shutdown = tokio::spawn(relay.running.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections during shutdown"
    );
    let (status, body) = request.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (202, KANNEL_OK));
    shutdown.await.unwrap();
    let found = query_store(&config, IndexKind::Account, "inflight");
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].outcome.as_ref().map(|o| o.outcome),
        Some(relaylog::record::Outcome::Accepted),
        "the outcome of the request in flight is committed before exit"
    );
}

#[tokio::test]
async fn full_queue_fails_closed_and_drains_when_the_writer_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    // Each message in flight holds two places: its records and its outcome's. On
    // PostgreSQL, a node answering from its journal: the same as on SQLite.
    let store = format!(
        "queue-capacity = 3\nenqueue-timeout = \"100ms\"\n{}",
        answering_from_journal()
    );
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", &store).await;
    let c = client();
    assert_eq!(
        get(&c, &sendsms(&relay.url, "first", &number(1)))
            .await
            .0
            .as_u16(),
        202
    );
    relay.settle().await;

    // Another process takes the partition's write lock (on PostgreSQL the tables'):
    // the writer waits on it with the next message, which the journal took (answered
    // and forwarded).
    let lock = hold_writer(dir.path());
    assert_eq!(
        get(&c, &sendsms(&relay.url, "journaled", &number(2)))
            .await
            .0
            .as_u16(),
        202
    );
    writer_stuck(&relay.admin).await;

    // One submission blocks in the writer, one fills the queue...
    let mut waiting = Vec::new();
    for (i, user) in ["blocked", "queued"].into_iter().enumerate() {
        let (c, url) = (c.clone(), sendsms(&relay.url, user, &number(10 + i as u32)));
        waiting.push(tokio::spawn(async move { get(&c, &url).await }));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // ...and the next finds it full past enqueue-timeout.
    let (s, reply) = get(&c, &sendsms(&relay.url, "refused", &number(20))).await;
    assert_eq!(s.as_u16(), 503, "{reply}");
    assert!(reply.contains("queue_full"), "{reply}");
    assert_eq!(up.count(), 2, "nothing forwarded once the writer was stuck");

    lock.release();
    for w in waiting {
        let (s, reply) = w.await.unwrap();
        assert_eq!(s.as_u16(), 202, "{reply}");
    }
    assert_eq!(up.count(), 4);
    relay.settle().await;
    assert_eq!(relay.query(IndexKind::Account, "refused").await.len(), 0);
    assert_eq!(relay.query(IndexKind::Account, "queued").await.len(), 1);
    assert_eq!(relay.query(IndexKind::Account, "journaled").await.len(), 1);
    let metrics = relay.metrics().await;
    assert_metric(&metrics, "reason=\"queue_full\"} 1");
    relay.running.shutdown().await;
}

/// A client that hangs up while its recorded message is being forwarded: the message
/// still reaches the upstream and its outcome is committed.
#[tokio::test]
async fn client_gone_mid_forward_still_forwards_and_records_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    up.delay_ms.store(300, std::sync::atomic::Ordering::SeqCst);
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let addr = relay.running.addr("sms").unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /cgi-bin/sendsms?username=gone&password=p&to=%2B31612345607&text=x HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    // Hang up once the request is at the upstream (its reply is 300 ms away).
    up.wait_arrived(1).await;
    drop(s);
    assert_eq!(up.count(), 0, "hung up before the upstream answered");
    tokio::time::sleep(Duration::from_millis(600)).await;
    relay.settle().await;
    let found = relay.query(IndexKind::Account, "gone").await;
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].outcome.as_ref().map(|o| o.outcome),
        Some(relaylog::record::Outcome::Accepted),
        "the upstream's answer is recorded although the client left"
    );
    relay.running.shutdown().await;
}

/// Issue 10: every commit failure was one opaque string and one label, `commit_error`.
/// A damaged partition file now fails closed as `corrupt`, in the metric and the reply,
/// and the relay recovers when the file is put back.
#[tokio::test]
async fn a_corrupt_partition_fails_closed_and_says_corrupt() {
    if sqlite_only("a partition file with garbage in it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let c = client();
    assert_eq!(
        get(&c, &sendsms(&relay.url, "before", &number(1)))
            .await
            .0
            .as_u16(),
        202
    );
    relay.settle().await;
    let day = partition_file(dir.path());
    // The file and its WAL moved aside (the WAL still holds its first page), garbage
    // in its place.
    let aside = |from: &std::path::Path, to: &std::path::Path| {
        for suffix in ["", "-wal", "-shm"] {
            let (f, t) = (
                format!("{}{suffix}", from.display()),
                format!("{}{suffix}", to.display()),
            );
            let _ = std::fs::remove_file(&t);
            if std::path::Path::new(&f).exists() {
                std::fs::rename(&f, &t).unwrap();
            }
        }
    };
    let kept = day.with_extension("kept");
    aside(&day, &kept);
    std::fs::write(&day, vec![0x5a; 8192]).unwrap();
    // The journal takes the first message; the writer fails to put it in.
    let (s, _) = get(&c, &sendsms(&relay.url, "journaled", &number(4))).await;
    assert_eq!(s.as_u16(), 202);
    writer_stuck(&relay.admin).await;
    let (s, reply) = get(&c, &sendsms(&relay.url, "during", &number(2))).await;
    assert_eq!(s.as_u16(), 503, "{reply}");
    assert!(reply.contains("(corrupt)"), "{reply}");
    let metrics = relay.metrics().await;
    assert_metric(
        &metrics,
        "relaylog_fail_closed_total{listener=\"sms\",reason=\"corrupt\"} 1",
    );
    assert_metric(&metrics, "relaylog_journal_bypassed 1");
    assert_eq!(up.count(), 2, "nothing forwarded once the writer failed");
    aside(&kept, &day);
    let (s, _) = get(&c, &sendsms(&relay.url, "after", &number(3))).await;
    assert_eq!(s.as_u16(), 202);
    // The writer commits again: the next message goes through the journal.
    let frames = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("relaylog_journal_frame_records_count "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    let before = frames(&relay.metrics().await);
    let (s, _) = get(&c, &sendsms(&relay.url, "later", &number(5))).await;
    assert_eq!(s.as_u16(), 202);
    let metrics = relay.metrics().await;
    assert_metric(&metrics, "relaylog_journal_bypassed 0");
    assert_eq!(frames(&metrics), before + 1, "journaled again");
    // The journaled message went in once the file was back; the refused one never.
    assert_eq!(relay.query(IndexKind::Account, "journaled").await.len(), 1);
    assert_eq!(relay.query(IndexKind::Account, "during").await.len(), 0);
    assert_eq!(relay.query(IndexKind::Account, "after").await.len(), 1);
    relay.running.shutdown().await;
}
