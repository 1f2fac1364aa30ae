//! Backups that expire: an archive made while `serve` runs under load restores into a
//! new directory that verifies clean; a restore leaves out what is past retention by
//! then; once expiry is past `backup.retention` the backup, and any copy of it, is
//! refused; a damaged archive restores nothing.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use chrono::{Duration, Utc};
use common::*;
use relaylog::clock::ManualClock;
use relaylog::config::Config;
use relaylog::store::IndexKind;
use relaylog::store::partition::PartitionId;

/// A configuration whose store is the one a restore made under `restored` (the
/// installation's own master and signing keys).
fn restored_config(dir: &Path, restored: &Path) -> PathBuf {
    let (d, r) = (dir.display(), restored.display());
    let text = format!(
        "[store]\npath = \"{r}/store\"\nkeyring = \"{r}/keyring\"\nledger = \"{r}/ledger.sqlite\"\n\
         master-key = \"{d}/keys/master.key\"\nsigning-key = \"{d}/keys/signing.key\"\n"
    );
    let path = dir.join(format!(
        "{}.toml",
        restored.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// `relaylog backup restore FILE --into DIR`: (succeeded, output).
fn restore(config: &Path, file: &Path, into: &Path) -> (bool, String) {
    let (file, into) = (file.display().to_string(), into.display().to_string());
    cli(config, &["backup", "restore", &file, "--into", &into])
}

fn restore_ok(config: &Path, file: &Path, into: &Path) -> String {
    let (ok, out) = restore(config, file, into);
    assert!(ok, "{out}");
    out
}

/// The `wrapped_key` column of every backup a ledger file records.
fn wrapped_keys(ledger: &Path) -> Vec<Vec<u8>> {
    rusqlite::Connection::open(ledger)
        .unwrap()
        .prepare("SELECT wrapped_key FROM backup")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `backup::restore` as of `at` (the command line restores as of now), with the
/// installation's own ledger and keys.
fn restore_at(
    config: &Config,
    archive: &Path,
    into: &Path,
    at: chrono::DateTime<Utc>,
) -> relaylog::store::backup::Restored {
    off_runtime(|| {
        let mut ledger = relaylog::ledger::Ledger::open_store(&config.store).unwrap();
        let master = relaylog::store::keys::MasterKey::load(&config.store.master_key).unwrap();
        let public_key =
            relaylog::store::integrity::load_public_key(&config.store.signing_key).unwrap();
        relaylog::store::backup::restore(
            &config.store,
            config.backup.retention,
            &mut ledger,
            &master,
            &public_key,
            archive,
            into,
            "test",
            at,
        )
        .unwrap()
    })
}

const OLD_NUMBER: &str = "+31687654321";

#[tokio::test]
async fn a_backup_made_under_load_restores_verified_and_is_unreadable_once_shredded() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start("0: Accepted for delivery").await;
    let text = config_text(dir.path(), "kannel", Some(&up.url()), "", "");
    let config_path = write_config(dir.path(), &text);
    if on_postgres() {
        init_keys(dir.path());
        init_database(&Config::load(&config_path).unwrap());
        let (ok, out) = cli(&config_path, &["backup", "create", "--out", "x.rlbackup"]);
        assert!(
            !ok && out.contains("on PostgreSQL back up the database"),
            "{out}"
        );
        return;
    }
    let config = Config::load(&config_path).unwrap();

    // History: one record on a day that passes retention three days from now.
    let now = Utc::now();
    let old_day = config.store.retention.cutoff(now) + Duration::days(1);
    let old = PartitionId::containing(config.store.partition, old_day.timestamp_micros());
    init_keys(dir.path());
    {
        let clock = ManualClock::new(old_day);
        let store = off_runtime(|| open_store(&config.store, &clock));
        let rec = store.recorder();
        let sub = one_recipient(&rec, rec.now(), "acme", OLD_NUMBER);
        rec.record(&sub).await.unwrap();
        store.close().await;
    }

    // serve, with clients sending all the while the backup is made.
    let relay = Relay::start(dir.path(), &text).await;
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU32::new(0)),
    );
    let mut senders = Vec::new();
    for s in 0..4u32 {
        let (url, stop, sent) = (relay.url.clone(), stop.clone(), sent.clone());
        senders.push(tokio::spawn(async move {
            let c = client();
            let mut n = s * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                let (status, _) = get(&c, &sendsms(&url, "acme", &number(n))).await;
                assert_eq!(status.as_u16(), 202);
                sent.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    // Load for a second first: the writer signs a head at most every 100 ms, and a
    // backup holds each partition as of its last signed head.
    let started = std::time::Instant::now();
    while sent.load(Ordering::Relaxed) < 200 || started.elapsed().as_millis() < 1000 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Every message answered by now is signed for within a head interval: sure to
    // be in a backup begun 300 ms later.
    let before = sent.load(Ordering::Relaxed);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let archive = dir.path().join("store.rlbackup");
    let archive_arg = archive.display().to_string();
    let made = {
        let config_path = config_path.clone();
        let archive_arg = archive_arg.clone();
        tokio::task::spawn_blocking(move || {
            cli(&config_path, &["backup", "create", "--out", &archive_arg])
        })
        .await
        .unwrap()
    };
    let during = sent.load(Ordering::Relaxed);
    // Some more after it, so that the backup was made under load, not at its end.
    while sent.load(Ordering::Relaxed) < during + 100 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    relay.settle().await;
    relay.running.shutdown().await;
    assert!(made.0, "{}", made.1);
    assert!(made.1.contains("2 partition(s)"), "{}", made.1);
    // Never overwritten.
    let (ok, out) = cli(&config_path, &["backup", "create", "--out", &archive_arg]);
    assert!(!ok && out.contains("exists"), "{out}");

    let list = cli_ok(&config_path, &["backup", "list", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(list.len(), 1, "the refused one is not recorded: {list:?}");
    assert_eq!(list[0]["partitions"], 2);
    let shred_at = list[0]["shred_at"].as_str().unwrap();
    assert!(
        shred_at.starts_with(&(now + Duration::days(56)).format("%Y-%m-%d").to_string()),
        "{shred_at}"
    );

    // Restored into a new directory: every partition verifies, and the records are
    // there to be found.
    let restored = dir.path().join("restored");
    let out = restore_ok(&config_path, &archive, &restored);
    assert!(out.contains("2 partition(s), every one verified"), "{out}");
    let restored_cfg = restored_config(dir.path(), &restored);
    let out = cli_ok(&restored_cfg, &["verify"]);
    assert!(
        out.contains("2 partition(s) verified, 0 problem(s)"),
        "{out}"
    );
    let restored_store = Config::load(&restored_cfg).unwrap().store;
    assert_eq!(
        query_store_cfg(&restored_store, IndexKind::Recipient, OLD_NUMBER).len(),
        1
    );
    // A record per message, and the old day's: all of those answered 300 ms before
    // the backup began, none that were not sent.
    let restored_records = query_store_cfg(&restored_store, IndexKind::Account, "acme").len();
    let total = sent.load(Ordering::Relaxed) as usize;
    assert!(
        restored_records > before as usize && restored_records <= total + 1,
        "{restored_records} records restored; {before} answered 300 ms before the backup, {total} in all"
    );
    // The restored partitions' blind-index postings name only records they hold
    // (those of records past the last signed head went with them).
    for p in relaylog::store::partition::list(&restored_store.path).unwrap() {
        let c = rusqlite::Connection::open(p.path_in(&restored_store.path)).unwrap();
        let top: i64 = c
            .query_row("SELECT coalesce(max(id), 0) FROM record", [], |r| r.get(0))
            .unwrap();
        let mut postings = 0;
        for table in ["ix_account", "ix_ip", "ix_recipient"] {
            let mut stmt = c.prepare(&format!("SELECT ids FROM {table}")).unwrap();
            for blob in stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap() {
                let mut ids = Vec::new();
                relaylog::store::postings::decode(&blob.unwrap(), &mut ids).unwrap();
                assert!(ids.iter().all(|&id| id <= top), "{p}: {ids:?} past {top}");
                postings += ids.len();
            }
        }
        let through: i64 = c
            .query_row("SELECT indexed_through FROM ix_state", [], |r| r.get(0))
            .unwrap();
        assert!(through <= top, "{p}: watermark {through} past {top}");
        eprintln!("{p}: {top} records, {postings} postings, indexed through {through}");
    }
    // A second restore into the same directory is refused.
    let (ok, out) = restore(&config_path, &archive, &restored);
    assert!(!ok && out.contains("exists"), "{out}");

    // Four days on, the old day is past retention: not restored, nor its keys, and
    // the restored ledger names it left out.
    let later = dir.path().join("restored-later");
    let restored_later = restore_at(&config, &archive, &later, now + Duration::days(4));
    assert_eq!(restored_later.left_out, [old]);
    assert_eq!(restored_later.partitions.len(), 1);
    assert!(!old.path_in(&later.join("store")).exists());
    assert!(!later.join(format!("keyring/{old}.key")).exists());
    let out = cli_ok(&restored_config(dir.path(), &later), &["verify"]);
    assert!(
        out.contains("1 present, 0 removed under certificates, 1 left out at restore")
            && out.contains("1 partition(s) verified, 0 problem(s)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{old}  left out  by the restore")),
        "{out}"
    );
    // A backup's key is only in the ledger that made it: through a restored copy of
    // the ledger no backup opens, neither this one (made after the copy) nor, through
    // a later backup's ledger, an earlier one (its key emptied in the copy). Else a
    // shredded backup could be opened through a restored copy.
    let (ok, out) = restore(&restored_cfg, &archive, &dir.path().join("through-copy"));
    assert!(
        !ok && out.contains("is not in this installation's ledger"),
        "{out}"
    );
    let second = dir.path().join("second.rlbackup");
    cli_ok(
        &config_path,
        &["backup", "create", "--out", &second.display().to_string()],
    );
    let restored2 = dir.path().join("restored2");
    restore_ok(&config_path, &second, &restored2);
    assert_eq!(
        wrapped_keys(&restored2.join("ledger.sqlite")),
        [Vec::<u8>::new()],
        "the first backup's row, its key emptied"
    );
    let (ok, out) = restore(
        &restored_config(dir.path(), &restored2),
        &archive,
        &dir.path().join("through-copy"),
    );
    assert!(!ok && out.contains("holds no key for it"), "{out}");
    assert!(!dir.path().join("through-copy").exists());

    // What a legal hold keeps past retention is restored past it too.
    let held = dir.path().join("restored-held");
    let hold = relaylog::ledger::Hold {
        case: "NL-7".into(),
        since: old.start_micros(),
        until: old.end_micros(),
        reason: "production order".into(),
        placed_at: now.timestamp_micros(),
        placed_by: "test".into(),
    };
    off_runtime(|| {
        relaylog::ledger::Ledger::open_store(&config.store)
            .unwrap()
            .add_hold(&hold)
            .unwrap()
    });
    let restored_held = restore_at(&config, &archive, &held, now + Duration::days(4));
    off_runtime(|| {
        relaylog::ledger::Ledger::open_store(&config.store)
            .unwrap()
            .release("NL-7", now.timestamp_micros(), "test")
            .unwrap()
    });
    assert!(restored_held.left_out.is_empty());
    assert!(restored_held.partitions.contains(&old));
    assert!(old.path_in(&held.join("store")).exists());

    // A damaged archive restores nothing.
    let mut bytes = std::fs::read(&archive).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    let damaged = dir.path().join("damaged.rlbackup");
    std::fs::write(&damaged, &bytes).unwrap();
    let target = dir.path().join("from-damaged");
    let (ok, out) = restore(&config_path, &damaged, &target);
    assert!(!ok && out.contains("damaged or was changed"), "{out}");
    assert!(!target.exists() && !dir.path().join(".from-damaged.restoring").exists());

    // Past backup.retention, expiry shreds the key: the archive, and a copy of it
    // taken before, are refused, and the wrapped key is gone from the ledger.
    let copy = dir.path().join("copy-of-store.rlbackup");
    std::fs::copy(&archive, &copy).unwrap();
    let when = (now + Duration::days(57)).to_rfc3339();
    let out = cli_ok(&config_path, &["expire", "--now", &when]);
    assert!(out.contains("key shredded"), "{out}");
    for file in [&archive, &copy] {
        let target = dir.path().join("too-late");
        let (ok, out) = restore(&config_path, file, &target);
        assert!(!ok && out.contains("was shredded on"), "{out}");
        assert!(!target.exists());
    }
    let keys = wrapped_keys(&config.store.ledger);
    assert_eq!(keys, [Vec::<u8>::new(), Vec::new()]);
    let list = cli_ok(&config_path, &["backup", "list"]);
    assert!(list.contains("shredded"), "{list}");
    let actions: Vec<String> = audit_entries(dir.path())
        .into_iter()
        .map(|(_, a, _)| a)
        .filter(|a| a.starts_with("backup."))
        .collect();
    assert_eq!(
        actions,
        [
            "backup.create",
            "backup.restore.start",
            "backup.restore",
            "backup.restore.start",
            "backup.restore",
            "backup.create",
            "backup.restore.start",
            "backup.restore",
            "backup.restore.start",
            "backup.restore",
            // The damaged archive's: begun, not finished.
            "backup.restore.start",
            "backup.shred",
            "backup.shred"
        ]
    );
}
