//! The load generator counts what it sends and what comes back, and stops by itself.

mod common;

use std::time::Duration;

use common::*;
use relaylog::bench::http::{self, HttpBench};
use relaylog::config::ProfileKind;
use relaylog::simulator::Simulator;
use relaylog::store::IndexKind;

fn bench(target: String, profile: ProfileKind) -> HttpBench {
    HttpBench {
        target: target.parse().unwrap(),
        profile,
        connections: 4,
        duration: None,
        requests: Some(300),
        rate: None,
        recipients: 2,
        pool: 1_000,
        seed: 7,
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_what_the_simulator_accepted() {
    for profile in [ProfileKind::Kannel, ProfileKind::Json] {
        let sim = Simulator::bind(
            "127.0.0.1:0".parse().unwrap(),
            Simulator::profile_for(profile),
        )
        .await
        .unwrap();
        let addr = sim.local_addr().unwrap();
        let stats = sim.stats.clone();
        let (trigger, shutdown) = relaylog::shutdown::channel();
        tokio::spawn(sim.run(shutdown));
        let report = http::run(bench(format!("http://{addr}"), profile))
            .await
            .unwrap();
        assert_eq!(
            (report.requests, report.ok),
            (300, 300),
            "{profile:?}: {}",
            report.to_text()
        );
        assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.p50 <= report.latency_ms.max);
        assert_eq!(
            stats.accepted.load(std::sync::atomic::Ordering::SeqCst),
            300
        );
        assert_eq!(
            stats.recipients.load(std::sync::atomic::Ordering::SeqCst),
            600
        );
        trigger.trigger();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_relay_every_message_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &config_text(dir.path(), "kannel", None, "", "")).await;
    let mut b = bench(relay.url.clone(), ProfileKind::Kannel);
    b.rate = Some(2_000.0);
    let report = http::run(b).await.unwrap();
    assert_eq!(report.ok, 300, "{}", report.to_text());
    assert!((report.messages_per_second - report.requests_per_second * 2.0).abs() < 1e-6);
    relay.settle().await;
    // Account "bench", two recipients per message.
    assert_eq!(relay.query(IndexKind::Account, "bench").await.len(), 600);
    relay.running.shutdown().await;
}

#[tokio::test]
async fn a_dead_target_is_counted_and_the_run_still_ends() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut b = bench(format!("http://{closed}"), ProfileKind::Jasmin);
    b.recipients = 1;
    b.requests = None;
    b.duration = Some(Duration::from_millis(300));
    let report = tokio::time::timeout(Duration::from_secs(10), http::run(b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.ok, 0);
    assert!(report.errors.connect > 0, "{}", report.to_text());
    let mut unbounded = bench(format!("http://{closed}"), ProfileKind::Jasmin);
    unbounded.recipients = 1;
    unbounded.requests = None;
    assert!(
        matches!(
            http::run(unbounded).await,
            Err(http::HttpBenchError::Unbounded)
        ),
        "a run must be bounded"
    );
    let mut several = bench(format!("http://{closed}"), ProfileKind::Jasmin);
    several.recipients = 2;
    assert!(
        matches!(
            http::run(several).await,
            Err(http::HttpBenchError::OneRecipient)
        ),
        "Jasmin's API takes one recipient"
    );
}
