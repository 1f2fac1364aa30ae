//! The store's life cycle with an injected clock: 400 days of records, expiry at 13
//! calendar months with crypto-shredding, a restored backup that stays unreadable, and
//! legal holds. On either backend (`RELAYLOG_TEST_BACKEND`, see `common::on_postgres`);
//! the sync steps run off the runtime (`common::off_runtime`, for PostgreSQL's client).

mod common;

use common::{
    init_store, off_runtime, on_postgres, one_recipient, open_store, partitions, sqlite_only,
    store_config,
};

use std::path::Path;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use relaylog::clock::ManualClock;
use relaylog::config::{Granularity, StoreConfig};
use relaylog::ledger::{Hold, Ledger};
use relaylog::store::partition::PartitionId;
use relaylog::store::query::{self, Criteria};
use relaylog::store::{IndexKind, deletion, expiry, open_keyring};

const NUMBER: &str = "+31612345678";

fn day(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 10, 1, 12, 0, 0).unwrap() + Duration::days(n)
}

/// One record per day for `days` days from 2025-10-01, each at noon.
async fn fill(cfg: &StoreConfig, days: i64) {
    init_store(cfg);
    let clock = ManualClock::new(day(0));
    let store = off_runtime(|| open_store(cfg, &clock));
    let rec = store.recorder();
    for n in 0..days {
        clock.set(day(n));
        let at = rec.now();
        let sub = one_recipient(&rec, at, "acme", NUMBER);
        rec.record(&sub).await.unwrap();
    }
    store.close().await;
}

fn lookup(cfg: &StoreConfig) -> (usize, Vec<PartitionId>) {
    off_runtime(|| {
        let keyring = open_keyring(cfg).unwrap();
        let criteria = Criteria {
            kind: IndexKind::Recipient,
            value: NUMBER.into(),
            since: 0,
            until: i64::MAX / 2,
            filters: true,
        };
        let mut n = 0;
        let stats = query::run(cfg, &keyring, &criteria, |_| n += 1).unwrap();
        (n, stats.partitions_shredded)
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

#[tokio::test]
async fn four_hundred_days_expire_at_thirteen_calendar_months() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path());
    fill(&cfg, 400).await;
    assert_eq!(partitions(&cfg).len(), 400);
    assert_eq!(lookup(&cfg).0, 400);
    let backup = dir.path().join("backup-of-store");
    if !on_postgres() {
        copy_dir(&cfg.path, &backup); // restored below
    }

    // Day 400 is 2026-11-05 12:00; 13 months earlier is 2025-10-05 12:00: the days
    // 2025-10-01 .. 2025-10-04 lie wholly before it, 2025-10-05 does not.
    let now = day(400);
    assert_eq!(now.date_naive(), date(2026, 11, 5));
    let keyring = off_runtime(|| open_keyring(&cfg).unwrap());
    let expire = || off_runtime(|| expiry::run(&cfg, &keyring, "test", now).unwrap());
    let plan = expire();
    let gone: Vec<String> = plan.expire.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(
        gone,
        ["2025-10-01", "2025-10-02", "2025-10-03", "2025-10-04"]
    );
    assert!(plan.expire.iter().all(|(_, records)| *records == 1));
    let left = partitions(&cfg);
    assert_eq!(left.len(), 396);
    assert_eq!(
        left[0],
        PartitionId::of_date(Granularity::Day, date(2025, 10, 5))
    );
    for (p, _) in &plan.expire {
        assert!(!off_runtime(|| keyring.exists(*p)), "keys of {p} shredded");
        assert!(!p.path_in(&cfg.path).exists());
    }
    let (found, shredded) = lookup(&cfg);
    assert_eq!(
        (found, shredded.len()),
        (396, 0),
        "everything newer is still queryable"
    );

    // A second run removes nothing more.
    assert!(expire().expire.is_empty());

    // The old copy of the store, restored: the expired days cannot be read. (On
    // PostgreSQL the copies are the database's backups: see the README.)
    if !sqlite_only("a copy of the store's files restored") {
        std::fs::remove_dir_all(&cfg.path).unwrap();
        copy_dir(&backup, &cfg.path);
        let (found, shredded) = lookup(&cfg);
        assert_eq!(found, 396, "only what is still within retention");
        let shredded: Vec<String> = shredded.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shredded, gone,
            "the restored expired days are reported as shredded"
        );
    }

    // Expiry is audited with partition ids and counts, nothing else.
    let (entries, verified) = off_runtime(|| {
        let ledger = Ledger::open_store(&cfg).unwrap();
        (ledger.entries().unwrap(), ledger.verify_audit().unwrap())
    });
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["partition.register", "expire"]);
    assert!(entries[1].details.contains("2025-10-04") && !entries[1].details.contains(NUMBER));
    assert_eq!(verified, 2);
}

#[tokio::test]
async fn a_held_partition_survives_expiry_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path());
    fill(&cfg, 10).await;
    // Hold 2025-10-03 and 2025-10-04 (case NL-42).
    off_runtime(|| {
        Ledger::open_store(&cfg)
            .unwrap()
            .add_hold(&Hold {
                case: "NL-42".into(),
                since: day(2).timestamp_micros(),
                until: day(3).timestamp_micros(),
                reason: "production order".into(),
                placed_at: 0,
                placed_by: "officer".into(),
            })
            .unwrap()
    });
    let keyring = off_runtime(|| open_keyring(&cfg).unwrap());
    let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(); // everything is past retention
    let expire = || off_runtime(|| expiry::run(&cfg, &keyring, "test", now).unwrap());
    let plan = expire();
    let held: Vec<String> = plan.held.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(held, ["2025-10-03", "2025-10-04"]);
    assert_eq!(plan.held[0].1, ["NL-42"]);
    assert_eq!(plan.expire.len(), 8);
    assert_eq!(lookup(&cfg).0, 2, "held records stay readable");

    off_runtime(|| {
        Ledger::open_store(&cfg)
            .unwrap()
            .release("NL-42", 1, "officer")
            .unwrap()
    });
    let plan = expire();
    assert_eq!(
        plan.expire.len(),
        2,
        "gone at the first expiry after release"
    );
    assert!(partitions(&cfg).is_empty());
    assert!(off_runtime(|| keyring.partitions().unwrap()).is_empty());
    let actions: Vec<String> = off_runtime(|| Ledger::open_store(&cfg).unwrap().entries().unwrap())
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            "hold.add",
            "partition.register",
            "expire",
            "hold.release",
            "expire"
        ]
    );
}

#[tokio::test]
async fn a_crash_between_shredding_and_removal_is_finished_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path());
    fill(&cfg, 3).await;
    let first = PartitionId::of_date(Granularity::Day, date(2025, 10, 1));
    let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    let plan = off_runtime(|| {
        let keyring = open_keyring(&cfg).unwrap();
        keyring.shred(first).unwrap(); // the step before the crash
        expiry::run(&cfg, &keyring, "test", now).unwrap()
    });
    assert_eq!(plan.expire.len(), 3);
    assert!(partitions(&cfg).is_empty());
    // The run that finished it filed the certificate the cut-short one could not,
    // with what the partition held.
    let certificates = off_runtime(|| Ledger::open_store(&cfg).unwrap().certificates().unwrap());
    assert_eq!(certificates.len(), 3);
    let first: deletion::Certificate = serde_json::from_str(&certificates[0].document).unwrap();
    assert_eq!(
        (first.partition.as_str(), first.records, first.rows_found),
        ("2025-10-01", 1, true)
    );
    assert_eq!(first.heads.len(), 1, "its last signed head");
}

/// Proof of deletion: 4 of 400 days expire under 4 signed certificates; `verify`
/// accounts for every day; a partition removed by hand, or a certificate edited, is
/// damage; the retention report's certificates check out with the public key alone.
#[tokio::test]
async fn every_expired_day_has_a_signed_certificate_and_every_day_is_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path());
    fill(&cfg, 400).await;
    let config = common::write_config(dir.path(), &common::store_table(dir.path(), ""));
    let now = day(400);
    let keyring = off_runtime(|| open_keyring(&cfg).unwrap());
    let plan = off_runtime(|| expiry::run(&cfg, &keyring, "test", now).unwrap());
    assert_eq!(plan.expire.len(), 4);

    let certificates = off_runtime(|| Ledger::open_store(&cfg).unwrap().certificates().unwrap());
    let keys = off_runtime(|| deletion::trusted_keys(&cfg, Some(&keyring)).unwrap());
    let checked: Vec<deletion::Certificate> = certificates
        .iter()
        .map(|c| deletion::check(c, &keys).unwrap())
        .collect();
    let names: Vec<&str> = checked.iter().map(|c| c.partition.as_str()).collect();
    assert_eq!(
        names,
        ["2025-10-01", "2025-10-02", "2025-10-03", "2025-10-04"]
    );
    for c in &checked {
        assert_eq!(
            (c.records, c.rows_found, c.retention.as_str()),
            (1, true, "13 months")
        );
        assert_eq!(c.shredded_at, "2026-11-05T12:00:00.000000Z");
        assert_eq!(c.cutoff, "2025-10-05T12:00:00.000000Z");
        assert!(!c.heads.is_empty() && c.heads.iter().all(|h| h.size >= 1));
        assert!(!c.until.is_empty() && c.until <= c.cutoff);
    }

    // verify: 396 days present and intact, 4 removed under certificates.
    let out = common::cli_ok(&config, &["verify"]);
    assert!(
        out.contains("every partition from 2025-10-01 accounted for: 396 present, 4 removed under certificates, 0 left out at restore, 0 never made (no records), 0 problem(s)"),
        "{out}"
    );
    assert!(
        out.contains("2025-10-02  removed  deletion certificate ok (1 records"),
        "{out}"
    );

    // Expiry as of today (the days ending before 13 months ago go too), then the
    // report: nothing past retention kept, the oldest record that of the oldest day
    // left; signed, it and its certificates check out with the public key alone.
    common::cli_ok(&config, &["expire"]);
    let left = partitions(&cfg);
    let public_key = dir.path().join("keys/signing.key.pub");
    let report = |name: &str| {
        let file = dir.path().join(name);
        common::cli_ok(
            &config,
            &["report", "retention", "--out", &file.display().to_string()],
        );
        file
    };
    let verify_retention = |file: &Path, key: &Path| {
        let (file, key) = (file.display().to_string(), key.display().to_string());
        common::cli(&config, &["verify-retention", &file, "--public-key", &key])
    };
    let clean = report("retention.json");
    let parsed: relaylog::compliance::retention::RetentionReport =
        serde_json::from_slice(&std::fs::read(&clean).unwrap()).unwrap();
    assert_eq!(parsed.oldest_partition, left.first().map(|p| p.to_string()));
    assert!(parsed.nothing_older_in_store && parsed.overdue.is_empty());
    assert!(parsed.nothing_older_in_backups && parsed.unshredded_backups.is_empty());
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    assert_eq!(parsed.certificates.len() + left.len(), 400);
    assert_eq!(parsed.removed_under_certificate, parsed.certificates.len());
    let (ok, out) = verify_retention(&clean, &public_key);
    assert!(
        ok && out.contains(&format!(
            "report signature ok; {} deletion certificate(s) checked; 0 failure(s)",
            parsed.certificates.len()
        )),
        "{out}"
    );
    // Another installation's key does not verify it.
    let other = dir.path().join("other.key");
    relaylog::store::integrity::create_signing_key(&other).unwrap();
    let other_pub = relaylog::store::integrity::public_key_path(&other);
    let (ok, out) = verify_retention(&clean, &other_pub);
    assert!(!ok && out.contains("signature does not verify"), "{out}");
    // Changed after it was made (a certificate, or a claim): its signature fails.
    let original = std::fs::read_to_string(&clean).unwrap();
    for (from, to) in [
        ("\\\"records\\\":1", "\\\"records\\\":0"),
        ("\"overdue\": []", "\"overdue\": [ ]"),
    ] {
        assert!(original.contains(from), "{from} in {original}");
        std::fs::write(&clean, original.replacen(from, to, 1)).unwrap();
        let (ok, out) = verify_retention(&clean, &public_key);
        assert!(!ok && out.contains("signature does not verify"), "{out}");
    }

    // A day removed by hand, with no certificate: damage, in `verify` and in a
    // report made now, which does not pass the auditor's check.
    let Some(&newest) = left.last() else {
        return; // every day of the fill is past retention by now
    };
    match common::database(dir.path()) {
        Some(_) => common::tamper(
            dir.path(),
            common::Stored::Ledger,
            "",
            &format!("DELETE FROM partition WHERE name = '{newest}'"),
        ),
        None => std::fs::remove_file(newest.path_in(&cfg.path)).unwrap(),
    }
    let (ok, out) = common::cli(&config, &["verify"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("{newest}  DAMAGED  missing: registered in the audit log, but neither present nor removed under a deletion certificate")),
        "{out}"
    );
    let (ok, out) = verify_retention(&report("damaged.json"), &public_key);
    assert!(
        !ok && out.contains(&format!("FAILED  {newest}: missing")),
        "{out}"
    );

    // A certificate edited in the ledger: damage too, and a failure of the signed
    // report's certificate check.
    let edit = "UPDATE deletion SET certificate = replace(certificate, '\"records\":1', '\"records\":0') \
                WHERE partition = '2025-10-03'";
    common::tamper(dir.path(), common::Stored::Ledger, edit, edit);
    let (ok, out) = common::cli(&config, &["verify"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "2025-10-03  DAMAGED  deletion certificate invalid: its signature does not verify"
        ),
        "{out}"
    );
    let (ok, out) = verify_retention(&report("edited.json"), &public_key);
    assert!(
        !ok && out.contains("FAILED  2025-10-03: its signature does not verify"),
        "{out}"
    );
    // And a certificate taken out of the ledger leaves its day unaccounted for.
    common::tamper(
        dir.path(),
        common::Stored::Ledger,
        "DELETE FROM deletion WHERE partition = '2025-10-04'",
        "DELETE FROM deletion WHERE partition = '2025-10-04'",
    );
    let (_, out) = common::cli(&config, &["verify"]);
    assert!(out.contains("2025-10-04  DAMAGED  missing"), "{out}");
}

#[tokio::test]
async fn month_partitions_expire_as_whole_months() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = store_config(dir.path());
    cfg.partition = Granularity::Month;
    // 2025-10-01 .. 2026-01-28: months 2025-10, -11, -12 and 2026-01.
    fill(&cfg, 120).await;
    let names: Vec<String> = partitions(&cfg).iter().map(|p| p.to_string()).collect();
    assert_eq!(names, ["2025-10", "2025-11", "2025-12", "2026-01"]);
    assert_eq!(lookup(&cfg).0, 120);
    // On 2026-12-15, 13 months back is 2025-11-15: only October 2025 lies wholly before it.
    let now = Utc.with_ymd_and_hms(2026, 12, 15, 0, 0, 0).unwrap();
    let plan = off_runtime(|| {
        let keyring = open_keyring(&cfg).unwrap();
        expiry::run(&cfg, &keyring, "test", now).unwrap()
    });
    let gone: Vec<String> = plan.expire.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(gone, ["2025-10"]);
    assert_eq!(plan.expire[0].1, 31, "31 daily records in October");
    assert_eq!(lookup(&cfg).0, 120 - 31);
}

/// Issue 10: a partition's key file was read (or created and synced) under a lock on
/// the async worker that recorded the partition's first message, so a slow disk
/// stalled every client on that worker. Here the key file is a FIFO that no one
/// writes: reading it blocks like a stalled disk. On a one-thread runtime, other tasks
/// must still run while that record waits.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_key_file_stalls_only_its_own_record_not_the_runtime() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    if sqlite_only("the keyring's files (a FIFO for a key file)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::under(dir.path());
    relaylog::store::init_keys(&cfg).unwrap();
    // The real key file's bytes, made in a keyring of their own under the same master.
    let p = PartitionId::containing(cfg.partition, day(0).timestamp_micros());
    let spare = dir.path().join("spare-keyring");
    let mut spare_cfg = cfg.clone();
    spare_cfg.keyring = spare.clone();
    open_keyring(&spare_cfg).unwrap().keys_or_create(p).unwrap();
    let key_bytes = std::fs::read(spare.join(format!("{p}.key"))).unwrap();
    std::fs::create_dir_all(&cfg.keyring).unwrap();
    let fifo = cfg.keyring.join(format!("{p}.key"));
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );

    // The stalled disk: answers once the runtime has shown it runs, or after 10 s
    // (then it stalled the runtime: the old behaviour).
    let runtime_ran = Arc::new(AtomicBool::new(false));
    let stalled = Arc::new(AtomicBool::new(false));
    let disk = {
        let (ran, stalled, fifo) = (runtime_ran.clone(), stalled.clone(), fifo.clone());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !ran.load(Ordering::SeqCst) {
                if std::time::Instant::now() > deadline {
                    stalled.store(true, Ordering::SeqCst);
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            std::fs::write(&fifo, &key_bytes).unwrap();
            key_bytes
        })
    };

    let clock = ManualClock::new(day(0));
    let store = open_store(&cfg, &clock);
    let rec = store.recorder();
    let sub = one_recipient(&rec, rec.now(), "acme", NUMBER);
    let record = tokio::spawn(async move { rec.record(&sub).await });
    // Another client's work on the same (only) runtime thread.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    runtime_ran.store(true, Ordering::SeqCst);
    record.await.unwrap().unwrap();
    let key_bytes = disk.join().unwrap();
    assert!(
        !stalled.load(Ordering::SeqCst),
        "the runtime thread was blocked on the key file"
    );
    store.close().await;
    // The disk recovers: the key file is a file again, and the record is there.
    std::fs::remove_file(&fifo).unwrap();
    std::fs::write(&fifo, &key_bytes).unwrap();
    assert_eq!(lookup(&cfg).0, 1);
}

/// Review of issue 10: with key files created off the runtime, the first messages of a
/// partition arriving together each created keys, through one temporary file, so the
/// keys in memory could differ from those on disk and the partition read back as
/// nothing. Many first messages at once; after a restart every record is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_messages_of_a_partition_at_once_create_one_set_of_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path());
    init_store(&cfg);
    let clock = ManualClock::new(day(0));
    let store = off_runtime(|| open_store(&cfg, &clock));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let rec = store.recorder();
        tasks.push(tokio::spawn(async move {
            let sub = one_recipient(&rec, rec.now(), "acme", NUMBER);
            rec.record(&sub).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    store.close().await;
    if !sqlite_only("the keyring's temporary files") {
        let tmp_left: Vec<_> = std::fs::read_dir(&cfg.keyring)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(tmp_left.is_empty(), "{tmp_left:?}");
    }
    assert_eq!(
        lookup(&cfg).0,
        16,
        "every record reads back with the keys on disk"
    );
}
