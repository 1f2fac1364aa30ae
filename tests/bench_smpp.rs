//! `bench smpp` keeps its window full, counts what comes back, and stops by itself.

use std::sync::atomic::Ordering;
use std::time::Duration;

use relaylog::bench::smpp::{self, SmppBench};
use relaylog::simulator::smpp::Smsc;

fn bench(target: std::net::SocketAddr) -> SmppBench {
    SmppBench {
        target,
        sessions: 4,
        window: 16,
        duration: None,
        submits: Some(500),
        rate: None,
        pool: 1_000,
        receipts: true,
        system_id: "bench".into(),
        password: "bench".into(),
        seed: 7,
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_what_the_smsc_answered() {
    let smsc = Smsc::bind("127.0.0.1:0".parse().unwrap(), Duration::ZERO)
        .await
        .unwrap();
    let addr = smsc.local_addr().unwrap();
    let stats = smsc.stats.clone();
    let (trigger, shutdown) = relaylog::shutdown::channel();
    tokio::spawn(smsc.run(shutdown));
    let report = smpp::run(bench(addr)).await.unwrap();
    assert_eq!(
        (report.submits, report.ok),
        (500, 500),
        "{}",
        report.to_text()
    );
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.p50 <= report.latency_ms.max);
    assert_eq!(stats.binds.load(Ordering::SeqCst), 4);
    assert_eq!(stats.submits.load(Ordering::SeqCst), 500);
    assert_eq!(stats.receipts_sent.load(Ordering::SeqCst), 500);
    // Receipts still on their way when a session unbinds are not counted.
    assert!(
        report.receipts > 0 && report.receipts <= 500,
        "{}",
        report.to_text()
    );
    assert_eq!(stats.delivery_acks.load(Ordering::SeqCst), report.receipts);

    // A refused bind is counted by its status, and the run still ends.
    let mut refused = bench(addr);
    refused.password = "wrong".into();
    let report = smpp::run(refused).await.unwrap();
    assert_eq!(report.ok, 0);
    assert_eq!(
        report.errors.bind.get(&0x0E),
        Some(&4),
        "{}",
        report.to_text()
    );
    trigger.trigger();
}

#[tokio::test]
async fn a_dead_target_is_counted_and_runs_are_bounded() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut b = bench(closed);
    b.submits = None;
    b.duration = Some(Duration::from_millis(200));
    let report = tokio::time::timeout(Duration::from_secs(10), smpp::run(b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((report.ok, report.errors.connect), (0, 4));
    let mut unbounded = bench(closed);
    unbounded.submits = None;
    assert!(smpp::run(unbounded).await.is_err(), "a run must be bounded");
    let mut long = bench(closed);
    long.system_id = "a-system-id-of-16".into();
    assert!(smpp::run(long).await.is_err(), "SMPP's field limits");
}
