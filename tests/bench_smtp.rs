//! `bench smtp` counts what it sends and what comes back, and stops by itself.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use relaylog::bench::smtp::{self, SmtpBench};
use relaylog::simulator::smtp::SmtpSink;
use relaylog::store::IndexKind;

fn bench(target: SocketAddr) -> SmtpBench {
    SmtpBench {
        target,
        sessions: 4,
        messages_per_session: 7,
        recipients: 2,
        size: 1_000,
        duration: None,
        messages: Some(200),
        rate: None,
        pool: 1_000,
        auth: None,
        seed: 7,
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_what_the_sink_queued() {
    let sink = SmtpSink::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = sink.local_addr().unwrap();
    let stats = sink.stats.clone();
    let (trigger, shutdown) = relaylog::shutdown::channel();
    tokio::spawn(sink.run(shutdown));
    let report = smtp::run(bench(addr)).await.unwrap();
    assert_eq!(
        (report.messages, report.ok),
        (200, 200),
        "{}",
        report.to_text()
    );
    assert_eq!(report.bytes_per_message, 1_000);
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.p50 <= report.latency_ms.max);
    // Each session sends at most 7 messages; each of the 4 ends with a short one.
    assert!((29..=32).contains(&report.sessions), "{}", report.sessions);
    assert_eq!(stats.sessions.load(Ordering::SeqCst), report.sessions);
    assert_eq!(stats.messages.load(Ordering::SeqCst), 200);
    assert_eq!(stats.recipients.load(Ordering::SeqCst), 400);
    assert_eq!(stats.bytes.load(Ordering::SeqCst), 200 * 1_000);
    trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_relaylog_every_recipient_is_recorded_under_the_auth_identity() {
    let dir = tempfile::tempdir().unwrap();
    init_keys(dir.path());
    let text = smtp_config_text(dir.path(), "", "");
    let config = relaylog::config::Config::parse(&text, Path::new("test.toml")).unwrap();
    let running = common::start_serve(config.clone(), Arc::new(relaylog::clock::SystemClock))
        .await
        .unwrap();
    let mut b = bench(running.addr("mail").unwrap());
    b.auth = Some("bench".into());
    b.rate = Some(1_000.0);
    let report = smtp::run(b).await.unwrap();
    assert_eq!(report.ok, 200, "{}", report.to_text());
    running.settle().await.unwrap();
    assert_eq!(query_store(&config, IndexKind::Account, "bench").len(), 400);
    running.shutdown().await;
}

#[tokio::test]
async fn a_dead_target_is_counted_and_the_run_still_ends() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut b = bench(closed);
    b.messages = None;
    b.duration = Some(Duration::from_millis(300));
    let report = tokio::time::timeout(Duration::from_secs(10), smtp::run(b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.ok, 0);
    assert!(report.errors.connect > 0, "{}", report.to_text());
    let mut unbounded = bench(closed);
    unbounded.messages = None;
    assert!(smtp::run(unbounded).await.is_err(), "a run must be bounded");
}
