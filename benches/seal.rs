//! Building and sealing one record: normalise the recipient (E.164), then blind
//! indexes (4 HMACs), AES-256-GCM and the Merkle leaf, as the request thread does.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use relaylog::canonical::NumberNormalizer;
use relaylog::clock::SystemClock;
use relaylog::config::StoreConfig;
use relaylog::metrics::Metrics;
use relaylog::record::{Protocol, Service, Submission};
use relaylog::store::{Store, init_keys};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::under(dir.path());
    init_keys(&cfg).unwrap();
    let store = Store::open(cfg, Arc::new(SystemClock), Arc::new(Metrics::new())).unwrap();
    let rec = store.recorder();
    let nl = NumberNormalizer::new(phonenumber::country::Id::NL);
    let mut g = c.benchmark_group("seal");
    // National format takes the national fast path (the region's patterns compiled
    // once), international format the international one (see `canonical::International`).
    g.bench_function("normalise", |b| {
        b.iter(|| nl.normalize(std::hint::black_box("0612345678")))
    });
    g.bench_function("normalise_international", |b| {
        b.iter(|| nl.normalize(std::hint::black_box("+31612345678")))
    });
    // Kannel's `to=31612345678`: the home country code without `+`, the national path.
    g.bench_function("normalise_international_without_plus", |b| {
        b.iter(|| nl.normalize(std::hint::black_box("31612345678")))
    });
    let at = rec.now();
    let sub = Submission {
        smpp: None,
        id: rec.next_submission_id(at),
        at,
        protocol: Protocol::Http,
        service: Service::Sms,
        account: "tester".into(),
        client_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        client_port: 40_000,
        originator: Some(nl.normalize("ACME")),
        segments: 1,
        recipients: vec![nl.normalize("+31612345678")],
    };
    g.bench_function("seal_one_recipient", |b| {
        b.iter(|| rec.seal(std::hint::black_box(&sub)).unwrap())
    });
    g.bench_function("normalise_and_seal", |b| {
        b.iter(|| {
            let mut s = sub.clone();
            s.recipients = vec![nl.normalize(std::hint::black_box("0612345678"))];
            rec.seal(&s).unwrap()
        })
    });
    g.finish();
    store.close_blocking();
}

criterion_group!(benches, bench);
criterion_main!(benches);
