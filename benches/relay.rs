//! One relayed request end to end, in process: client → relaylog (durable) → built-in
//! simulator and back, over loopback keep-alive connections. Sequential, so the time
//! per iteration is the relay's latency including one group commit.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use relaylog::clock::SystemClock;
use relaylog::config::Config;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let text = format!(
        "[store]\npath = \"{d}/store\"\nkeyring = \"{d}/keys/keyring\"\nmaster-key = \"{d}/keys/master.key\"\n\
         signing-key = \"{d}/keys/signing.key\"\nledger = \"{d}/ledger.sqlite\"\n\
         [[listener]]\nname = \"sms\"\nlisten = \"127.0.0.1:0\"\nprofile = \"kannel\"\n"
    );
    let config = Config::parse(&text, std::path::Path::new("bench.toml")).unwrap();
    relaylog::store::init_keys(&config.store).unwrap();
    let running = rt
        .block_on(relaylog::serve::start(config, Arc::new(SystemClock)))
        .unwrap();
    let url: http::Uri = format!(
        "http://{}/cgi-bin/sendsms?username=tester&password=foobar&from=ACME&to=%2B31612345678&text=hello",
        running.addr("sms").unwrap()
    )
    .parse()
    .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    c.bench_function("relay/kannel_get_durable", |b| {
        b.iter(|| {
            rt.block_on(async {
                let resp = client.get(url.clone()).await.unwrap();
                assert_eq!(resp.status(), 202);
                resp.into_body().collect().await.unwrap();
            })
        })
    });
    rt.block_on(running.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
