//! The store's write path, in batches of 1,000 one-recipient submissions:
//! - `writer/commit`: the writer thread alone, rows already sealed (group commit of
//!   1,000 queued jobs, four blind indexes, WAL);
//! - `writer/commit_with_integrity`: the same with the Merkle tree and a signed head
//!   per commit, as in production; `writer/leaf_hashes`: the leaf hashing that the
//!   sealing threads do for it;
//! - `writer/seal_and_commit`: the whole path a relayed message takes, blind indexes
//!   and AEAD in the caller's thread, then the commit;
//! - `writer/durable_shape`: the writer as durable relaying under load drives it
//!   (`benches/threads.sh`: ~18 records per commit): commits of 18 records someone
//!   waits on, each with the outcomes of the 18 before, integrity on. Throughput is
//!   in messages (a record and its outcome each); `writer/durable_shape_records`: the
//!   same commits without the outcomes, which tells their share.
//!
//! Throughput is in records; the partition grows across iterations, as it does in use.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tokio::sync::oneshot;

use relaylog::canonical::{Form, Identifier};
use relaylog::clock::{ManualClock, SharedClock};
use relaylog::config::StoreConfig;
use relaylog::metrics::Metrics;
use relaylog::record::{Protocol, Service, Submission, SubmissionId};
use relaylog::store::Store;
use relaylog::store::partition::PartitionId;
use relaylog::store::rows::OutcomeRow;
use relaylog::store::writer::{self, Job, Row, WriterConfig};

const BATCH: usize = 1_000;
const START_US: i64 = 1_795_000_000_000_000; // 2026-11-18

/// Fixed-seed submissions: numbers from a pool of 100,000, 50 accounts, 1,000 IPs.
fn submissions(n: usize, first: usize) -> Vec<Submission> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ first as u64;
    (first..first + n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Submission {
                smpp: None,
                id: SubmissionId(((START_US + i as i64 * 1_000) << 8) | 1),
                at: START_US + i as i64 * 1_000,
                protocol: Protocol::Http,
                service: Service::Sms,
                account: format!("account{}", x % 50),
                client_ip: IpAddr::V4(Ipv4Addr::new(10, 0, (x >> 8) as u8 % 4, (x >> 16) as u8)),
                client_port: (x >> 24) as u16,
                originator: Some(Identifier {
                    form: Form::Raw,
                    value: "ACME".into(),
                }),
                segments: 1,
                recipients: vec![Identifier {
                    form: Form::E164,
                    value: format!("+316{:08}", x % 100_000),
                }],
            }
        })
        .collect()
}

fn open_store(dir: &std::path::Path) -> Store {
    let cfg = StoreConfig::under(dir);
    relaylog::store::init_keys(&cfg).unwrap();
    let clock: SharedClock = Arc::new(ManualClock::new(
        chrono::DateTime::from_timestamp_micros(START_US).unwrap(),
    ));
    Store::open(cfg, clock, Arc::new(Metrics::new())).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("writer");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(30);

    // Seal everything up front with a real recorder, then time only the writer: once
    // without the Merkle tree and signed heads, once with them.
    let keys_dir = tempfile::tempdir().unwrap();
    let store = open_store(keys_dir.path());
    let recorder = store.recorder();
    let signer = Arc::new(
        relaylog::store::integrity::load_signing_key(
            &StoreConfig::under(keys_dir.path()).signing_key,
        )
        .unwrap(),
    );
    for (name, signer) in [
        ("commit", None),
        ("commit_with_integrity", Some(signer.clone())),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (tx, handle, signals) = spawn_writer(dir.path(), signer, false);
        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let rows: Vec<(PartitionId, Vec<Row>)> = submissions(BATCH, next)
                        .iter()
                        .map(|s| recorder.seal(s).unwrap())
                        .collect();
                    next += BATCH;
                    rows
                },
                |rows| {
                    for (partition, rows) in rows {
                        tx.blocking_send(Job::records(partition, rows, None))
                            .unwrap();
                    }
                    let (done, wait) = oneshot::channel();
                    tx.blocking_send(Job::Barrier(done)).unwrap();
                    // As the recorder does: a job someone waits on wakes a writer
                    // that lingers for more async work.
                    signals.durable_queued();
                    wait.blocking_recv().unwrap().unwrap();
                },
                BatchSize::PerIteration,
            )
        });
        tx.blocking_send(Job::Stop).unwrap();
        handle.join().unwrap();
    }
    durable_shape(&mut group, &recorder, signer);
    // The sealing threads' share of integrity: one leaf hash per record.
    let sealed: Vec<Row> = submissions(BATCH, 0)
        .iter()
        .flat_map(|s| recorder.seal(s).unwrap().1)
        .collect();
    group.bench_function("leaf_hashes", |b| {
        b.iter(|| {
            for r in &sealed {
                std::hint::black_box(relaylog::store::integrity::record_leaf(r));
            }
        })
    });
    store.close_blocking();

    {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let recorder = store.recorder();
        let mut next = 0usize;
        group.bench_function("seal_and_commit", |b| {
            b.iter_batched(
                || {
                    let s = submissions(BATCH, next);
                    next += BATCH;
                    s
                },
                |subs| {
                    for s in &subs {
                        recorder.record_blocking(s).unwrap();
                    }
                    recorder.barrier_blocking().unwrap();
                },
                BatchSize::PerIteration,
            )
        });
        store.close_blocking();
    }
    group.finish();
}

/// A writer of its own under `dir`, as the store configures it (synchronous NORMAL, the
/// default page cache), and the signals a durable submitter wakes it with.
fn spawn_writer(
    dir: &std::path::Path,
    signer: Option<Arc<ring::signature::Ed25519KeyPair>>,
    journal: bool,
) -> (
    tokio::sync::mpsc::Sender<Job>,
    std::thread::JoinHandle<()>,
    Arc<writer::Signals>,
) {
    let signals: Arc<writer::Signals> = Default::default();
    let (tx, handle) = writer::spawn(
        WriterConfig {
            store_dir: dir.join("store"),
            sync: relaylog::config::SyncMode::Normal,
            cache_mib: StoreConfig::under(dir).cache_mib,
            batch_max: 4_096,
            queue_capacity: 65_536,
            checkpoint_rows: relaylog::store::writer::CHECKPOINT_ROWS,
            signals: signals.clone(),
            signer,
            clock: Arc::new(relaylog::clock::SystemClock),
            journal: journal.then(|| dir.join("store").join(relaylog::store::JOURNAL_DIR)),
            expired: None,
            postgres: None,
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    (tx, handle, signals)
}

/// Records per commit in `durable_shape`, as measured under 64 connections.
const DURABLE_COMMIT: usize = 18;

fn durable_shape(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    recorder: &relaylog::store::Recorder,
    signer: Arc<ring::signature::Ed25519KeyPair>,
) {
    let messages = BATCH / DURABLE_COMMIT * DURABLE_COMMIT;
    group.throughput(Throughput::Elements(messages as u64));
    let mut next = 0usize;
    for (name, with_outcomes, journal) in [
        ("durable_shape", true, true),
        ("durable_shape_direct", true, false),
        ("durable_shape_records", false, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (tx, handle, signals) = spawn_writer(dir.path(), Some(signer.clone()), journal);
        // The outcomes of the last commit's records, sent with the next commit.
        let mut previous: Vec<(PartitionId, OutcomeRow)> = Vec::new();
        group.bench_function(name, |b| {
            b.iter_batched(
                // Sealed, cut into commits, and each record's outcome made (as the
                // relay's threads do), outside the timing.
                || {
                    let sealed: Vec<(PartitionId, Vec<Row>)> =
                        submissions(messages, 1_000_000_000 + next)
                            .iter()
                            .map(|s| recorder.seal(s).unwrap())
                            .collect();
                    next += messages;
                    sealed
                        .chunks(DURABLE_COMMIT)
                        .map(|commit| {
                            let partition = commit[0].0;
                            let rows: Vec<Row> =
                                commit.iter().flat_map(|(_, r)| r.clone()).collect();
                            let outcomes: Vec<(PartitionId, OutcomeRow)> = if with_outcomes {
                                rows.iter().map(|r| (partition, accepted(r))).collect()
                            } else {
                                Vec::new()
                            };
                            (partition, rows, outcomes)
                        })
                        .collect::<Vec<_>>()
                },
                |commits| {
                    for (partition, rows, outcomes) in commits {
                        for (partition, row) in std::mem::replace(&mut previous, outcomes) {
                            tx.blocking_send(Job::outcome(partition, row)).unwrap();
                        }
                        let (done, wait) = oneshot::channel();
                        tx.blocking_send(Job::records(
                            partition,
                            rows,
                            Some(writer::Done::One(done)),
                        ))
                        .unwrap();
                        signals.durable_queued();
                        wait.blocking_recv().unwrap().unwrap();
                    }
                    // Behind a journal, the rows are in the partitions only now.
                    let (done, wait) = oneshot::channel();
                    tx.blocking_send(Job::Barrier(done)).unwrap();
                    signals.durable_queued();
                    wait.blocking_recv().unwrap().unwrap();
                },
                BatchSize::PerIteration,
            )
        });
        tx.blocking_send(Job::Stop).unwrap();
        handle.join().unwrap();
    }
    group.throughput(Throughput::Elements(BATCH as u64));
}

/// The outcome the relay writes once a Kannel gateway accepted the record's message.
fn accepted(record: &Row) -> OutcomeRow {
    let mut o = OutcomeRow::bare(
        record.submission,
        record.at_us + 2_000,
        relaylog::record::Outcome::Accepted as u8,
    );
    o.upstream_status = Some(202);
    o.gateway_code = Some(0);
    o.leaf = relaylog::store::integrity::outcome_leaf(&o);
    o
}

criterion_group!(benches, bench);
criterion_main!(benches);
