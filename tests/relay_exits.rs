//! Issue 10: every exit of a relayed request passes through one logging phase (one
//! access-log line, its metrics), and every recorded message gets exactly one outcome,
//! whatever happens: client gone, shutdown, slow clients, a shutdown deadline.

mod common;

use std::time::Duration;

use common::*;
use relaylog::record::Outcome;
use relaylog::store::IndexKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KANNEL_OK: &str = "0: Accepted for delivery";

/// The one access-log line of the request whose exit is `exit`.
fn one_line(log: &LogCapture, exit: &str) -> String {
    let lines = log.lines(&format!("exit=\"{exit}\""));
    assert_eq!(lines.len(), 1, "{exit}: {lines:#?}\n{}", log.text());
    lines.into_iter().next().unwrap()
}

/// Relayed, rejected, passthrough, upstream error: each request writes
/// exactly one line naming its exit and is counted once. No line holds the query.
#[tokio::test]
async fn every_exit_writes_one_log_line_and_its_metrics() {
    let log = LogCapture::start();
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let extra = "passthrough = [\"/status\"]\nupstream-timeout = \"300ms\"\n";
    let relay = relay_in_front_of(dir.path(), &up, "kannel", extra, "").await;
    let c = client();

    let (s, _) = get(&c, &sendsms(&relay.url, "ok", &number(1))).await;
    assert_eq!(s.as_u16(), 202);
    let line = one_line(&log, "relayed");
    assert!(
        line.contains("status=202") && line.contains("recipients=1"),
        "{line}"
    );

    let (s, _) = get(
        &c,
        &format!("{}/cgi-bin/sendsms?username=x&text=secret", relay.url),
    )
    .await;
    assert_eq!(s.as_u16(), 400);
    let line = one_line(&log, "rejected");
    assert!(line.contains("reason=\"missing_recipient\""), "{line}");

    up.status.store(200, std::sync::atomic::Ordering::SeqCst);
    let (s, _) = get(&c, &format!("{}/status?password=adminpw", relay.url)).await;
    assert_eq!(s.as_u16(), 200);
    assert!(one_line(&log, "passthrough").contains("status=200"));

    // The upstream answers after upstream-timeout: the message is recorded, its
    // forward fails, the client gets 504.
    up.delay_ms
        .store(2_000, std::sync::atomic::Ordering::SeqCst);
    let (s, _) = get(&c, &sendsms(&relay.url, "slow", &number(2))).await;
    assert_eq!(s.as_u16(), 504);
    let line = one_line(&log, "upstream_error");
    assert!(
        line.contains("reason=\"timeout\"") && line.contains("status=504"),
        "{line}"
    );

    let all = log.text();
    for secret in ["password", "secret", "adminpw", "31600000001"] {
        assert!(!all.contains(secret), "{secret} in the log:\n{all}");
    }
    let metrics = relay.metrics().await;
    for needle in [
        "relaylog_requests_total{listener=\"sms\",kind=\"message\"} 2",
        "relaylog_requests_total{listener=\"sms\",kind=\"rejected\"} 1",
        "relaylog_requests_total{listener=\"sms\",kind=\"passthrough\"} 1",
        "relaylog_rejected_total{listener=\"sms\",reason=\"missing_recipient\"} 1",
        "relaylog_upstream_errors_total{listener=\"sms\",reason=\"timeout\"} 1",
        "relaylog_forward_seconds_count{listener=\"sms\"} 2",
    ] {
        assert_metric(&metrics, needle);
    }
    relay.settle().await;
    let slow = relay.query(IndexKind::Account, "slow").await;
    assert_eq!(slow[0].outcome.as_ref().unwrap().outcome, Outcome::Failed);
    relay.running.shutdown().await;
}

/// The store refuses: 503, one `fail_closed` line with its reason, nothing forwarded.
#[tokio::test]
async fn fail_closed_writes_one_log_line_and_its_metric() {
    let log = LogCapture::start();
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let c = client();
    let broken = break_store(dir.path());
    let (s, _) = get(&c, &sendsms(&relay.url, "during", &number(3))).await;
    assert_eq!(s.as_u16(), 503);
    let line = one_line(&log, "fail_closed");
    assert!(
        line.contains("reason=\"") && line.contains("status=503"),
        "{line}"
    );
    assert_metric(
        &relay.metrics().await,
        "relaylog_requests_total{listener=\"sms\",kind=\"fail_closed\"} 1",
    );
    assert_eq!(up.count(), 0);
    broken.mend();
    relay.running.shutdown().await;
}

/// Issue 10: a forward detached because its client left held no drain token, so
/// `serve` closed the store before the outcome came, and the message was left without
/// one. Now shutdown (what SIGTERM runs) waits for it.
#[tokio::test]
async fn shutdown_waits_for_a_detached_forward_and_records_its_outcome() {
    let log = LogCapture::start();
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    up.delay_ms.store(800, std::sync::atomic::Ordering::SeqCst);
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let config = relay.config.clone();
    let addr = relay.running.addr("sms").unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /cgi-bin/sendsms?username=detached&password=p&to=%2B31612345607&text=x HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    up.wait_arrived(1).await;
    drop(s);
    // The connection notices its client is gone and detaches the forward.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        up.count(),
        0,
        "the forward is still waiting on the upstream"
    );
    relay.running.shutdown().await;
    let found = query_store(&config, IndexKind::Account, "detached");
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].outcome.as_ref().map(|o| o.outcome),
        Some(Outcome::Accepted),
        "the detached forward's outcome is committed before serve returns"
    );
    one_line(&log, "relayed");
}

/// Issue 10: graceful shutdown switched off the connection watchdog, so a client that
/// never finished its request head held the drain, and serve, forever.
#[tokio::test]
async fn a_client_that_never_finishes_its_head_cannot_hold_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let limits = "header-timeout = \"1s\"\n";
    let store = "";
    let text = config_text(dir.path(), "kannel", Some(&up.url()), limits, store)
        + "[serve]\nshutdown-timeout = \"1h\"\n";
    let relay = Relay::start(dir.path(), &text).await;
    let addr = relay.running.addr("sms").unwrap();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /cgi-bin/sendsms?username=u HTTP/1.1\r\nHo")
        .await
        .unwrap();
    // Time for the server to read the half head (it has a second before timing out).
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A liveness bound, not a speed measure: before the fix this never returned.
    tokio::time::timeout(Duration::from_secs(30), relay.running.shutdown())
        .await
        .expect("shutdown held by a client that never finished its head");
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest).await;
    assert_eq!(up.count(), 0);
}

/// Past `shutdown-timeout`, a forward still waiting on the upstream is cut short and
/// recorded as `failed: shutdown`; serve exits.
#[tokio::test]
async fn past_the_shutdown_timeout_what_is_in_flight_is_recorded_failed_shutdown() {
    let log = LogCapture::start();
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    up.delay_ms
        .store(3_600_000, std::sync::atomic::Ordering::SeqCst);
    let text = config_text(
        dir.path(),
        "kannel",
        Some(&up.url()),
        "upstream-timeout = \"1h\"\n",
        "",
    ) + "[serve]\nshutdown-timeout = \"300ms\"\n";
    let relay = Relay::start(dir.path(), &text).await;
    let config = relay.config.clone();
    let metrics = relay.running.metrics.clone();
    let c = client();
    let url = sendsms(&relay.url, "stuck", &number(4));
    let request = tokio::spawn(async move { get(&c, &url).await });
    up.wait_arrived(1).await;
    tokio::time::timeout(Duration::from_secs(30), relay.running.shutdown())
        .await
        .expect("shutdown-timeout did not end the drain");
    let _ = request.await;
    let found = query_store(&config, IndexKind::Account, "stuck");
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].outcome.as_ref().map(|o| o.outcome),
        Some(Outcome::FailedShutdown)
    );
    let line = one_line(&log, "shutdown");
    assert!(line.contains("reason=\"shutdown\""), "{line}");
    assert_metric(
        &metrics.encode(),
        "relaylog_not_forwarded_total{listener=\"sms\",reason=\"shutdown\"} 1",
    );
}

/// A client that leaves while its message is being recorded: the record stands, the
/// message is not forwarded (the client had no answer and will send again), and the
/// outcome says so.
#[tokio::test]
async fn a_client_gone_before_the_forward_is_not_forwarded_for_and_the_outcome_says_so() {
    let log = LogCapture::start();
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    // On PostgreSQL, a node answering from its journal: the same as on SQLite.
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", answering_from_journal()).await;
    let c = client();
    assert_eq!(
        get(&c, &sendsms(&relay.url, "first", &number(5)))
            .await
            .0
            .as_u16(),
        202
    );
    relay.settle().await;
    // Another connection holds the partition's write lock: the journal takes the next
    // message, the writer is stuck on it, and the record after waits.
    let lock = hold_writer(dir.path());
    assert_eq!(
        get(&c, &sendsms(&relay.url, "journaled", &number(6)))
            .await
            .0
            .as_u16(),
        202
    );
    writer_stuck(&relay.admin).await;
    let addr = relay.running.addr("sms").unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /cgi-bin/sendsms?username=leaver&password=p&to=%2B31612345608&text=x HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    // The request waits for its record (the writer is held up) when its client
    // leaves; the record goes on detached.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    log.wait_for("goes on detached").await;
    lock.release();
    // The record commits; the message is not forwarded; its outcome is written.
    let mut found = Vec::new();
    for _ in 0..100 {
        relay.settle().await;
        found = relay.query(IndexKind::Account, "leaver").await;
        if found.first().is_some_and(|f| f.outcome.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].outcome.as_ref().map(|o| o.outcome),
        Some(Outcome::FailedClientGone)
    );
    assert_eq!(up.count(), 2, "only the messages before it were forwarded");
    one_line(&log, "client_gone");
    assert_metric(
        &relay.metrics().await,
        "relaylog_not_forwarded_total{listener=\"sms\",reason=\"client_gone\"} 1",
    );
    relay.running.shutdown().await;
}

/// Review of issue 10: an outcome waited for queue space like any job, so with the
/// queue full of other submissions (the writer held up), a message already forwarded
/// lost its outcome after `enqueue-timeout`. Its place is now kept before its records
/// go in.
#[tokio::test]
async fn a_full_queue_cannot_take_a_forwarded_message_s_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    // On PostgreSQL, a node answering from its journal: the same as on SQLite.
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
    // The message whose outcome is at stake: at the upstream for 800 ms.
    up.delay_ms.store(800, std::sync::atomic::Ordering::SeqCst);
    let (c2, url) = (c.clone(), sendsms(&relay.url, "slow", &number(2)));
    let slow = tokio::spawn(async move { get(&c2, &url).await });
    up.wait_arrived(2).await;
    // The writer is held up and others fill the queue meanwhile.
    let lock = hold_writer(dir.path());
    let mut others = Vec::new();
    for i in 0..4 {
        let (c, url) = (c.clone(), sendsms(&relay.url, "other", &number(10 + i)));
        others.push(tokio::spawn(async move { get(&c, &url).await }));
    }
    // The slow message's answer comes back while the queue is full; its outcome must
    // not wait past enqueue-timeout for space.
    assert_eq!(slow.await.unwrap().0.as_u16(), 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.release();
    for o in others {
        let _ = o.await;
    }
    relay.settle().await;
    let found = relay.query(IndexKind::Account, "slow").await;
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].outcome.as_ref().map(|o| o.outcome),
        Some(Outcome::Accepted),
        "the forwarded message's outcome was lost to a full queue"
    );
    relay.running.shutdown().await;
}

/// Review of issue 10: a failed commit dropped every job in its batch, the outcome
/// events of messages already forwarded among them. Jobs no one waits on are now tried
/// again with the next batch, so the outcome is there once the fault clears.
#[tokio::test]
async fn an_outcome_whose_commit_failed_is_written_once_the_store_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    up.delay_ms.store(500, std::sync::atomic::Ordering::SeqCst);
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let c = client();
    let url = sendsms(&relay.url, "survivor", &number(1));
    let request = tokio::spawn(async move { get(&c, &url).await });
    // Recorded and at the upstream; then the store directory goes away.
    up.wait_arrived(1).await;
    let broken = break_store(dir.path());
    assert_eq!(request.await.unwrap().0.as_u16(), 202);
    // The outcome's commit fails while the directory is gone...
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !relay
        .metrics()
        .await
        .contains("relaylog_store_errors_total 1")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the commit did not fail"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and succeeds when it is back.
    broken.mend();
    relay.settle().await;
    let found = relay.query(IndexKind::Account, "survivor").await;
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].outcome.as_ref().map(|o| o.outcome),
        Some(Outcome::Accepted),
        "the outcome was lost with its failed commit"
    );
    relay.running.shutdown().await;
}
