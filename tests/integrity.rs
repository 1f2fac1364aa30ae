//! Tamper evidence: edits made directly to a partition's SQLite file (or, on
//! PostgreSQL, to its rows: `RELAYLOG_TEST_BACKEND`, see `common::on_postgres`) are
//! found by `verify`, named by partition and kind; an untouched store verifies clean.

mod common;

use common::{cli, off_runtime, on_postgres, one_recipient, open_store};

use chrono::{DateTime, Duration, TimeZone, Utc};
use relaylog::clock::ManualClock;
use relaylog::config::StoreConfig;
use relaylog::record::{Outcome, OutcomeEvent};
use relaylog::store::integrity::{self, Damage, PartitionReport};
use relaylog::store::open_keyring;

fn day(n: i64, minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap()
        + Duration::days(n)
        + Duration::minutes(minute)
}

/// One message from `account` to `number` at the clock's time, and its acceptance.
async fn accepted(rec: &relaylog::store::Recorder, account: &str, number: &str) {
    let at = rec.now();
    let sub = one_recipient(rec, at, account, number);
    rec.record(&sub).await.unwrap();
    rec.record_outcome(&accepted_event(sub.id, at))
        .await
        .unwrap();
}

/// The gateway's 202 for a submission made at `at`, at once.
fn accepted_event(submission: relaylog::record::SubmissionId, at: i64) -> OutcomeEvent {
    OutcomeEvent {
        submission,
        submitted_at: at,
        at,
        outcome: Outcome::Accepted,
        upstream_status: Some(202),
        gateway_code: Some(0),
        upstream_message_id: None,
        enhanced_status: None,
        size_bytes: None,
        ordinal: None,
        receipt: None,
    }
}

/// Three days, five messages a day, each with its outcome: many signed heads.
async fn fill(cfg: &StoreConfig) {
    common::init_store(cfg);
    let clock = ManualClock::new(day(0, 0));
    let store = off_runtime(|| open_store(cfg, &clock));
    let rec = store.recorder();
    for d in 0..3 {
        for m in 0..5 {
            clock.set(day(d, m));
            accepted(&rec, &format!("acct{m}"), &format!("+3161234567{m}")).await;
            rec.barrier().await.unwrap();
        }
    }
    store.close().await;
}

fn verify(cfg: &StoreConfig) -> Vec<PartitionReport> {
    off_runtime(|| {
        let key = integrity::load_public_key(&cfg.signing_key).unwrap();
        let keyring = open_keyring(cfg).unwrap();
        integrity::verify_store(cfg, Some(&keyring), &key, 0, i64::MAX / 2).unwrap()
    })
}

/// Runs `sql` on a partition's SQLite file, or `pg_sql` on the PostgreSQL store (where
/// `{part}` stands for the partition's `part`).
fn tamper(cfg: &StoreConfig, partition: &str, sql: &str, pg_sql: &str) {
    match &cfg.backend {
        relaylog::config::Backend::Sqlite => {
            let conn =
                rusqlite::Connection::open(cfg.path.join(format!("{partition}.sqlite"))).unwrap();
            conn.execute_batch(sql).unwrap();
        }
        relaylog::config::Backend::Postgres(pg) => off_runtime(|| {
            let pool = relaylog::pg::Pool::shared(pg).unwrap();
            pool.get()
                .unwrap()
                .batch_execute(&pg_sql.replace("{part}", &part_of(partition)))
                .unwrap();
        }),
    }
}

/// On PostgreSQL, a partition's `part` as a subquery.
fn part_of(partition: &str) -> String {
    format!("(SELECT part FROM relaylog.partition WHERE name = '{partition}')")
}

/// The integers `sql` selects from a partition's SQLite file, or `pg_sql` from the
/// PostgreSQL store (`{part}` as in [`tamper`]).
fn select(cfg: &StoreConfig, partition: &str, sql: &str, pg_sql: &str) -> Vec<i64> {
    match &cfg.backend {
        relaylog::config::Backend::Sqlite => {
            let conn =
                rusqlite::Connection::open(cfg.path.join(format!("{partition}.sqlite"))).unwrap();
            let mut stmt = conn.prepare(sql).unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        }
        relaylog::config::Backend::Postgres(pg) => off_runtime(|| {
            let pool = relaylog::pg::Pool::shared(pg).unwrap();
            pool.get()
                .unwrap()
                .query(&pg_sql.replace("{part}", &part_of(partition)), &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        }),
    }
}

/// The damage found in the one partition that has any; the others must be clean.
fn damage_in(reports: &[PartitionReport], partition: &str) -> Vec<Damage> {
    for r in reports {
        if r.partition.to_string() != partition {
            assert!(
                r.ok(),
                "{} should be clean: {:?}",
                r.partition,
                r.verified.damage
            );
        }
    }
    reports
        .iter()
        .find(|r| r.partition.to_string() == partition)
        .unwrap()
        .verified
        .damage
        .clone()
}

async fn fresh() -> (tempfile::TempDir, StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::store_config(dir.path());
    fill(&cfg).await;
    (dir, cfg)
}

#[tokio::test]
async fn untouched_store_verifies_clean() {
    let (_dir, cfg) = fresh().await;
    let reports = verify(&cfg);
    assert_eq!(reports.len(), 3);
    for r in &reports {
        assert!(r.ok(), "{}: {:?}", r.partition, r.verified.damage);
        assert_eq!((r.verified.records, r.verified.outcomes), (5, 5));
        assert!(r.verified.heads >= 5, "a head per commit");
    }
}

#[tokio::test]
async fn each_kind_of_damage_is_named() {
    // (what, the tampering SQL on SQLite, on PostgreSQL (none: SQLite's own layout),
    // the damage verify must report)
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        fn(&Damage) -> bool,
    );
    let cases: [Case; 11] = [
        (
            "changed field",
            "UPDATE record SET segments = 9 WHERE id = 3",
            Some("UPDATE record SET segments = 9 WHERE part = {part} AND id = 3"),
            |d| matches!(d, Damage::Changed { .. }),
        ),
        (
            // The outcome byte of the block's first event: after its id, submission
            // and time (8 bytes each).
            "changed outcome",
            "UPDATE outcome_block SET events = CAST(substr(events, 1, 24) || X'03' || substr(events, 26) AS BLOB) \
             WHERE first = 2",
            Some("UPDATE outcome_block SET outcome[1] = 3 WHERE part = {part} AND first = 2"),
            |d| matches!(d, Damage::Changed { .. }),
        ),
        (
            "outcome block removed",
            "DELETE FROM outcome_block WHERE first = 2",
            Some("DELETE FROM outcome_block WHERE part = {part} AND first = 2"),
            |d| matches!(d, Damage::Removed { table: "outcome", ids } if ids == &vec![2]),
        ),
        (
            // A block that claims to start later than its first event: lookups by
            // submission or id would be misled by it.
            "outcome block bounds",
            "UPDATE outcome_block SET sub_min = sub_min + 1 WHERE first = 2",
            Some(
                "UPDATE outcome_block SET sub_min = sub_min + 1 WHERE part = {part} AND first = 2",
            ),
            |d| matches!(d, Damage::Unreadable(why) if why.contains("outcome block 2")),
        ),
        (
            // Bounds whose difference wraps round would pass for narrow ones and hide
            // the block from every lookup.
            "outcome block bounds wrapping round",
            "UPDATE outcome_block SET sub_min = -9223372036854775808 WHERE first = 2",
            Some(
                "UPDATE outcome_block SET sub_min = -9223372036854775808 \
                 WHERE part = {part} AND first = 2",
            ),
            |d| matches!(d, Damage::Unreadable(why) if why.contains("outcome block 2")),
        ),
        (
            // An id no writer gives (0 or below) is read and folded all the same.
            "outcome row below the ids",
            "INSERT INTO outcome (id, submission, at_us, outcome) \
             SELECT 0, submission, at_us, 1 FROM record WHERE id = 1",
            Some(
                "INSERT INTO outcome (part, node, id, submission, at_us, outcome) \
                 SELECT part, node, 0, submission, at_us, 1 FROM record WHERE part = {part} AND id = 1",
            ),
            |d| matches!(d, Damage::Changed { .. }),
        ),
        (
            // An event put in as a row (where receipts long after their submission go).
            "inserted outcome row",
            "INSERT INTO outcome (id, submission, at_us, outcome) \
             SELECT 6, submission, at_us, 1 FROM record WHERE id = 1",
            Some(
                "INSERT INTO outcome (part, node, id, submission, at_us, outcome) \
                 SELECT part, node, 6, submission, at_us, 1 FROM record WHERE part = {part} AND id = 1",
            ),
            |d| matches!(d, Damage::Inserted { table: "outcome", ids } if ids == &vec![6]),
        ),
        (
            "deleted row",
            "DELETE FROM record WHERE id = 2",
            Some("DELETE FROM record WHERE part = {part} AND id = 2"),
            |d| matches!(d, Damage::Removed { table: "record", ids } if ids == &vec![2]),
        ),
        (
            "inserted row",
            "INSERT INTO record (submission, ordinal, at_us, bucket, protocol, service, recipient_form, segments, \
             account_ix, ip_ix, originator_ix, recipient_ix, sealed) \
             SELECT submission, 1, at_us, bucket, protocol, service, recipient_form, segments, account_ix, ip_ix, \
             originator_ix, recipient_ix, sealed FROM record WHERE id = 1",
            Some(
                "INSERT INTO record (part, node, id, submission, ordinal, at_us, bucket, protocol, service, \
                 recipient_form, segments, account_ix, ip_ix, originator_ix, recipient_ix, sealed) \
                 SELECT part, node, 6, submission, 1, at_us, bucket, protocol, service, recipient_form, segments, \
                 account_ix, ip_ix, originator_ix, recipient_ix, sealed FROM record WHERE part = {part} AND id = 1",
            ),
            |d| matches!(d, Damage::Inserted { table: "record", ids } if ids == &vec![6]),
        ),
        (
            "truncated tree",
            "DELETE FROM head",
            Some("DELETE FROM head WHERE part = {part}"),
            |d| {
                matches!(
                    d,
                    Damage::NoHeads {
                        records: 5,
                        outcomes: 5
                    }
                )
            },
        ),
        (
            "forged signature",
            "UPDATE head SET signature = zeroblob(64) WHERE seq = 2",
            Some(
                "UPDATE head SET signature = decode(repeat('00', 64), 'hex') \
                 WHERE part = {part} AND seq = 2",
            ),
            |d| matches!(d, Damage::HeadSignature { seq: 2 }),
        ),
    ];
    for (what, sql, pg_sql, expected) in cases {
        let pg_sql = match pg_sql {
            Some(q) => q,
            None if common::sqlite_only(what) => continue,
            None => "",
        };
        let (_dir, cfg) = fresh().await;
        tamper(&cfg, "2026-11-02", sql, pg_sql);
        let damage = damage_in(&verify(&cfg), "2026-11-02");
        assert!(damage.iter().any(expected), "{what}: found {damage:?}");
    }
}

/// PostgreSQL keeps the account, client-IP and originator blind indexes as posting
/// lists, derived from the records and outside their tree: `verify` checks them
/// against the records. A posting removed (its records then missed by lookups by
/// account, and by offboarding), an id taken out of one, or one listing an id that is
/// not its record's, are damage.
#[tokio::test]
async fn postings_that_do_not_match_the_records_are_damage() {
    if !on_postgres() {
        return;
    }
    // (what, the tampering SQL, the damage verify must report)
    type Case = (&'static str, &'static str, fn(&Damage) -> bool);
    let cases: [Case; 3] = [
        (
            "posting removed",
            "DELETE FROM posting WHERE part = {part} AND kind = 1",
            |d| matches!(d, Damage::Postings { unlisted, unmatched: 0 } if *unlisted > 0),
        ),
        (
            "an id taken out",
            "UPDATE posting SET ids = ids[2:] WHERE part = {part} AND kind = 2 \
             AND ctid = (SELECT ctid FROM posting WHERE part = {part} AND kind = 2 LIMIT 1)",
            |d| {
                matches!(
                    d,
                    Damage::Postings {
                        unlisted: 1,
                        unmatched: 0
                    }
                )
            },
        ),
        (
            "an id of another tag",
            "UPDATE posting SET tag = tag + 1 WHERE part = {part} AND kind = 2",
            |d| matches!(d, Damage::Postings { unlisted, unmatched } if *unlisted > 0 && unlisted == unmatched),
        ),
    ];
    for (what, pg_sql, expected) in cases {
        let (_dir, cfg) = fresh().await;
        tamper(&cfg, "2026-11-02", "", pg_sql);
        let damage = damage_in(&verify(&cfg), "2026-11-02");
        assert!(damage.iter().any(expected), "{what}: found {damage:?}");
        assert!(
            damage.iter().all(|d| matches!(d, Damage::Postings { .. })),
            "{what}: the tree itself is whole: {damage:?}"
        );
    }
}

#[tokio::test]
async fn shredded_keys_are_reported_and_hashes_still_checked() {
    let (_dir, cfg) = fresh().await;
    let p = relaylog::store::partition::PartitionId::parse("2026-11-03").unwrap();
    off_runtime(|| open_keyring(&cfg).unwrap().shred(p).unwrap());
    let reports = verify(&cfg);
    let r = reports.iter().find(|r| r.partition == p).unwrap();
    assert!(r.keys_missing && r.verified.damage.is_empty());
    assert_eq!(r.verified.records, 5, "hashes checked without the data key");
}

#[tokio::test]
async fn verify_command_names_the_partition_and_fails() {
    let (dir, cfg) = fresh().await;
    let config = dir.path().join("relaylog.toml");
    std::fs::write(&config, common::store_table(dir.path(), "")).unwrap();
    // A tree is named by its partition, and on PostgreSQL its node's name.
    let tree = if on_postgres() {
        "2026-11-01/n1"
    } else {
        "2026-11-01"
    };
    let run = |args: &[&str]| cli(&config, args);
    let (ok, text) = run(&["verify"]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("{tree}  ok  5 records")), "{text}");
    tamper(
        &cfg,
        "2026-11-01",
        "DELETE FROM record WHERE id = 4",
        "DELETE FROM record WHERE part = {part} AND id = 4",
    );
    let (ok, text) = run(&["verify", "--since", "2026-11-01", "--until", "2026-11-01"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("{tree}  DAMAGED  record removed: id 4")),
        "{text}"
    );
    assert!(!text.contains("2026-11-02"), "only the window: {text}");
    // verify works from the public key alone; on PostgreSQL it needs the master key
    // too, which authenticates the nodes' keys the database holds.
    std::fs::remove_file(&cfg.signing_key).unwrap();
    std::fs::remove_file(&cfg.master_key).unwrap();
    let (ok, text) = run(&["verify", "--since", "2026-11-02"]);
    if on_postgres() {
        assert!(!ok && text.contains("needs the master key"), "{text}");
    } else {
        assert!(ok, "{text}");
    }
}

/// Contract end for an account far larger than one erasure statement: the export is
/// streamed, erasure goes partition by partition in signed chunks, and `verify`
/// still passes and counts every erased row.
#[tokio::test]
async fn offboarding_erases_in_signed_chunks_and_the_store_still_verifies() {
    use relaylog::compliance::disclosure::Installation;
    use relaylog::store::IndexKind;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::store_config(dir.path());
    common::init_store(&cfg);
    let clock = ManualClock::new(day(0, 0));
    let store = off_runtime(|| open_store(&cfg, &clock));
    let rec = store.recorder();
    // Day 0: five of the leaving account's messages and one of another; day 1: two.
    for (d, m, account) in [
        (0, 0, "big"),
        (0, 1, "big"),
        (0, 2, "other"),
        (0, 3, "big"),
        (0, 4, "big"),
        (0, 5, "big"),
        (1, 0, "big"),
        (1, 1, "big"),
    ] {
        clock.set(day(d, m));
        accepted(&rec, account, &format!("+316123456{d}{m}")).await;
    }
    rec.barrier().await.unwrap();
    store.close().await;
    // The rest blocks (PostgreSQL's client): off the runtime.
    off_runtime(|| {
        let keyring = open_keyring(&cfg).unwrap();
        let master = relaylog::store::keys::MasterKey::load(&cfg.master_key).unwrap();
        let signer = integrity::load_signing_key(&cfg.signing_key).unwrap();
        let inst = Installation {
            store: &cfg,
            keyring: &keyring,
            master: &master,
            signer: &signer,
            csp_id: "",
        };
        let mut ledger = relaylog::ledger::Ledger::open_store(&cfg).unwrap();
        let root = root_officer();
        let now = day(3, 0).timestamp_micros();
        let offboard = |ledger: &mut relaylog::ledger::Ledger, out: &str| {
            relaylog::compliance::offboard::offboard_in_chunks(
                &inst,
                ledger,
                &root,
                relaylog::compliance::purpose::Purpose::ContractEnd,
                "big",
                relaylog::compliance::offboard::Out {
                    dir: &dir.path().join(out),
                    stem: None,
                },
                now,
                2,
            )
        };

        // Day 1's partition is locked by another writer (on PostgreSQL: refuses
        // deletions): day 0 is erased, day 1 is not, and the audit log says how far it
        // got.
        let day1 = (!on_postgres()).then(|| {
            let day1 = rusqlite::Connection::open(cfg.path.join("2026-11-02.sqlite")).unwrap();
            day1.execute_batch("BEGIN IMMEDIATE").unwrap();
            day1
        });
        tamper(
            &cfg,
            "2026-11-02",
            "",
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$BEGIN RAISE EXCEPTION 'refused'; END$$; \
             CREATE TRIGGER refuse BEFORE DELETE ON record_2026_11_02 \
             FOR EACH ROW EXECUTE FUNCTION refuse()",
        );
        let err = offboard(&mut ledger, "first").unwrap_err().to_string();
        assert!(err.contains("2026-11-02"), "{err}");
        if let Some(day1) = day1 {
            day1.execute_batch("ROLLBACK").unwrap();
        }
        tamper(
            &cfg,
            "2026-11-02",
            "",
            "DROP TRIGGER refuse ON record_2026_11_02",
        );
        let first: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("first/big-records.json")).unwrap(),
        )
        .unwrap();
        let times: Vec<&str> = first
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["time"].as_str().unwrap())
            .collect();
        assert_eq!(times.len(), 7, "the whole account was exported first");
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
        let incomplete = ledger.entries().unwrap().pop().unwrap();
        assert_eq!(incomplete.action, "account.offboard.incomplete");
        let details: serde_json::Value = serde_json::from_str(&incomplete.details).unwrap();
        assert_eq!(details["records"], 5);
        assert_eq!(details["failed_partition"], "2026-11-02");
        assert_eq!(
            common::query_store_cfg(&cfg, IndexKind::Account, "big").len(),
            2
        );

        // A second run into a new directory finishes it.
        let o = offboard(&mut ledger, "second").unwrap();
        assert_eq!((o.records, o.outcomes), (2, 2));
        assert_eq!(o.partitions.len(), 1);

        // Five rows of day 0 in chunks of two: three signed statements; day 1: one.
        let reports = verify(&cfg);
        let erasures: Vec<(i64, i64)> = reports
            .iter()
            .map(|r| (r.verified.erasures, r.verified.erased))
            .collect();
        assert_eq!(erasures, [(3, 10), (1, 4)]);
        assert!(reports.iter().all(|r| r.ok()), "{reports:?}");
        assert!(common::query_store_cfg(&cfg, IndexKind::Account, "big").is_empty());
        assert_eq!(
            common::query_store_cfg(&cfg, IndexKind::Account, "other").len(),
            1
        );
        let key = integrity::load_public_key(&cfg.signing_key).unwrap();
        let statement =
            relaylog::compliance::disclosure::verify_export(&o.statement, &key).unwrap();
        assert_eq!(statement.records, 2);
        assert_eq!(statement.erased.unwrap().records, 2);
        assert_eq!(
            ledger.entries().unwrap().pop().unwrap().action,
            "account.offboard"
        );
    });
}

/// The admin who offboards.
fn root_officer() -> relaylog::compliance::officers::Officer {
    use relaylog::compliance::officers::{Officer, Role};
    Officer {
        name: "root".into(),
        role: Role::Admin,
        enabled: true,
        created_at: 0,
        created_by: "test".into(),
    }
}

/// An empty store with its keys, in a directory of its own.
fn empty_store() -> (tempfile::TempDir, StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::store_config(dir.path());
    common::init_store(&cfg);
    (dir, cfg)
}

/// Offboards `account` from the closed or open store at `cfg` (chunks of 100).
/// [`erase_account`] the day after the partitions' (day 0).
fn erase_on_day_1(cfg: &StoreConfig, account: &str, out: &std::path::Path) -> (u64, u64) {
    erase_account(cfg, account, out, day(1, 0).timestamp_micros())
}

fn erase_account(cfg: &StoreConfig, account: &str, out: &std::path::Path, now: i64) -> (u64, u64) {
    off_runtime(|| {
        use relaylog::compliance::disclosure::Installation;
        let keyring = open_keyring(cfg).unwrap();
        let master = relaylog::store::keys::MasterKey::load(&cfg.master_key).unwrap();
        let signer = integrity::load_signing_key(&cfg.signing_key).unwrap();
        let inst = Installation {
            store: cfg,
            keyring: &keyring,
            master: &master,
            signer: &signer,
            csp_id: "",
        };
        let mut ledger = relaylog::ledger::Ledger::open_store(cfg).unwrap();
        let root = root_officer();
        let o = relaylog::compliance::offboard::offboard_in_chunks(
            &inst,
            &mut ledger,
            &root,
            relaylog::compliance::purpose::Purpose::ContractEnd,
            account,
            relaylog::compliance::offboard::Out {
                dir: out,
                stem: None,
            },
            now,
            100,
        )
        .unwrap();
        (o.records, o.outcomes)
    })
}

/// The ids of a partition's records, or of its outcome events (rows and blocks both),
/// in order.
fn ids(cfg: &StoreConfig, partition: &str, table: &str) -> Vec<i64> {
    if on_postgres() {
        // Every event, in blocks or rows.
        let table = if table == "outcome" {
            "outcome_event"
        } else {
            table
        };
        let sql = format!("SELECT id FROM {table} WHERE part = {{part}} ORDER BY id");
        return select(cfg, partition, "", &sql);
    }
    let conn = rusqlite::Connection::open(cfg.path.join(format!("{partition}.sqlite"))).unwrap();
    if table == "outcome" {
        let mut scan = relaylog::store::events::Scan::all(&conn).unwrap();
        return scan
            .events()
            .unwrap()
            .map(|e| e.map(|(id, _)| id))
            .collect::<rusqlite::Result<_>>()
            .unwrap();
    }
    select(
        cfg,
        partition,
        &format!("SELECT id FROM {table} ORDER BY id"),
        "",
    )
}

fn assert_clean(cfg: &StoreConfig, erased: i64) {
    let reports = verify(cfg);
    assert!(reports.iter().all(|r| r.ok()), "{reports:?}");
    assert_eq!(
        reports.iter().map(|r| r.verified.erased).sum::<i64>(),
        erased,
        "{reports:?}"
    );
}

/// Issue 10: erasing a partition's highest ids and then writing more made SQLite hand
/// those ids out again (`INTEGER PRIMARY KEY` is `max(id) + 1`), and `verify` cried
/// "record changed" over a store nobody had touched. Here the erasure runs with the
/// store closed, then with the writer live, and the store verifies clean each time.
#[tokio::test]
async fn erasing_the_highest_ids_then_writing_more_does_not_reuse_ids_or_cry_damage() {
    let (dir, cfg) = empty_store();
    let clock = ManualClock::new(day(0, 0));
    let send = |store: &relaylog::store::Store, account: &'static str, minute: i64| {
        clock.set(day(0, minute));
        let rec = store.recorder();
        async move {
            accepted(&rec, account, "+31612000001").await;
            accepted(&rec, account, "+31612000002").await;
            rec.barrier().await.unwrap();
        }
    };
    let store = off_runtime(|| open_store(&cfg, &clock));
    send(&store, "bee", 1).await;
    send(&store, "aay", 2).await;
    store.close().await;
    // aay's rows are the partition's highest (records 3, 4; outcomes 3, 4).
    assert_eq!(erase_on_day_1(&cfg, "aay", &dir.path().join("a")), (2, 2));
    assert_eq!(ids(&cfg, "2026-11-01", "record"), [1, 2]);

    let store = off_runtime(|| open_store(&cfg, &clock));
    send(&store, "cee", 3).await;
    // Erased while the writer has the partition open, then more traffic.
    assert_eq!(erase_on_day_1(&cfg, "cee", &dir.path().join("c")), (2, 2));
    send(&store, "dee", 4).await;
    store.close().await;
    assert_eq!(ids(&cfg, "2026-11-01", "record"), [1, 2, 7, 8]);
    assert_eq!(ids(&cfg, "2026-11-01", "outcome"), [1, 2, 7, 8]);
    assert_clean(&cfg, 8);
    for (account, n) in [("bee", 2), ("aay", 0), ("cee", 0), ("dee", 2)] {
        assert_eq!(
            common::query_store_cfg(&cfg, relaylog::store::IndexKind::Account, account).len(),
            n,
            "{account}"
        );
    }
}

/// The state a `kill -9` leaves: rows committed, their head not yet signed. Those rows
/// erased, the next writer must still fold their kept leaves into its first head and
/// never give their ids out again.
#[tokio::test]
async fn erasing_unsigned_rows_after_a_crash_does_not_reuse_ids_or_cry_damage() {
    let (dir, cfg) = empty_store();
    let clock = ManualClock::new(day(0, 1));
    let store = off_runtime(|| open_store(&cfg, &clock));
    let rec = store.recorder();
    accepted(&rec, "bee", "+31612000001").await;
    rec.barrier().await.unwrap();
    clock.set(day(0, 2));
    accepted(&rec, "aay", "+31612000002").await;
    accepted(&rec, "aay", "+31612000003").await;
    store.close().await;
    // Drop the heads that cover aay's rows, as if the writer died before signing them.
    tamper(
        &cfg,
        "2026-11-01",
        "DELETE FROM head WHERE record_through > 1 OR outcome_through > 1",
        "DELETE FROM head WHERE part = {part} AND (record_through > 1 OR outcome_through > 1)",
    );
    let covered_bee = select(
        &cfg,
        "2026-11-01",
        "SELECT count(*) FROM head",
        "SELECT count(*) FROM head WHERE part = {part}",
    );
    assert!(covered_bee[0] >= 1, "bee's rows keep their head");
    assert_eq!(erase_on_day_1(&cfg, "aay", &dir.path().join("a")), (2, 2));

    let store = off_runtime(|| open_store(&cfg, &clock));
    clock.set(day(0, 3));
    let rec = store.recorder();
    accepted(&rec, "cee", "+31612000004").await;
    rec.barrier().await.unwrap();
    store.close().await;
    assert_eq!(ids(&cfg, "2026-11-01", "record"), [1, 4]);
    assert_clean(&cfg, 4);
}

/// Issue 10: the writer stamped its signed heads with the wall clock while everything
/// else in the store used the injected one. Heads and erasure statements now carry the
/// store's time.
#[tokio::test]
async fn heads_and_erasures_carry_the_injected_clock_time() {
    let (dir, cfg) = empty_store();
    let clock = ManualClock::new(day(0, 1));
    let store = off_runtime(|| open_store(&cfg, &clock));
    let rec = store.recorder();
    accepted(&rec, "bee", "+31612000001").await;
    rec.barrier().await.unwrap();
    clock.set(day(0, 2));
    accepted(&rec, "aay", "+31612000002").await;
    store.close().await;
    let erased_at = day(1, 0).timestamp_micros();
    erase_account(&cfg, "aay", &dir.path().join("a"), erased_at);
    let heads = select(
        &cfg,
        "2026-11-01",
        "SELECT at_us FROM head ORDER BY seq",
        "SELECT at_us FROM head WHERE part = {part} ORDER BY seq",
    );
    assert!(!heads.is_empty());
    let window = day(0, 1).timestamp_micros()..=day(0, 2).timestamp_micros();
    assert!(heads.iter().all(|t| window.contains(t)), "{heads:?}");
    let erasure = select(
        &cfg,
        "2026-11-01",
        "SELECT at_us FROM erasure",
        "SELECT at_us FROM erasure WHERE part = {part}",
    );
    assert_eq!(erasure, [erased_at]);
    assert_clean(&cfg, 2);
}

/// Review of issue 10: the writer took every erasure statement in a partition as true
/// when it opened it. One forged into the file (here naming an erased record 1000)
/// would have moved the writer's ids and put its leaf into the next signed head. Only
/// statements signed by this installation count; `verify` names the forgery.
#[tokio::test]
async fn a_forged_erasure_statement_does_not_steer_the_writer() {
    let (_dir, cfg) = empty_store();
    let clock = ManualClock::new(day(0, 1));
    let store = off_runtime(|| open_store(&cfg, &clock));
    let rec = store.recorder();
    accepted(&rec, "bee", "+31612000001").await;
    accepted(&rec, "bee", "+31612000002").await;
    store.close().await;
    let mut entry = vec![b'r'];
    entry.extend_from_slice(&1000i64.to_be_bytes());
    entry.extend_from_slice(&[0u8; 32]);
    let entry: String = entry.iter().map(|b| format!("{b:02x}")).collect();
    tamper(
        &cfg,
        "2026-11-01",
        &format!(
            "INSERT INTO erasure (id, at_us, reason, entries, signature) \
             VALUES (1, 0, 'forged', x'{entry}', x'00')"
        ),
        // Signed, it says, by the node whose tree it is.
        &format!(
            "INSERT INTO erasure (part, node, id, at_us, reason, entries, signature, signer) \
             VALUES ({{part}}, 1, 1, 0, 'forged', '\\x{entry}', '\\x00', 1)"
        ),
    );
    let store = off_runtime(|| open_store(&cfg, &clock));
    let rec = store.recorder();
    accepted(&rec, "cee", "+31612000003").await;
    store.close().await;
    assert_eq!(ids(&cfg, "2026-11-01", "record"), [1, 2, 3]);
    let damage = damage_in(&verify(&cfg), "2026-11-01");
    assert_eq!(damage, [Damage::ErasureSignature { id: 1 }]);
}

/// Two accounts' events committed in one block: erasing one account writes the block
/// again without its events; `verify` still passes, and the other account's records
/// keep their outcomes.
#[tokio::test]
async fn erasing_from_a_block_shared_with_another_account_keeps_the_rest() {
    // The four events go one after the other, then one barrier, so one ingest takes
    // them all; a machine slow enough to split them is given another try.
    for attempt in 1..=3 {
        let (dir, cfg) = empty_store();
        if !two_accounts_in_one_block(&cfg).await {
            assert!(attempt < 3, "the events never shared a block");
            continue;
        }
        assert_eq!(erase_on_day_1(&cfg, "aay", &dir.path().join("a")), (2, 2));
        assert_clean(&cfg, 4);
        assert_eq!(ids(&cfg, "2026-11-01", "outcome").len(), 2);
        let bee = common::query_store_cfg(&cfg, relaylog::store::IndexKind::Account, "bee");
        assert_eq!(bee.len(), 2);
        assert!(
            bee.iter().all(|f| f.outcome.is_some()),
            "the rest keep their outcomes"
        );
        assert!(
            common::query_store_cfg(&cfg, relaylog::store::IndexKind::Account, "aay").is_empty()
        );
        return;
    }
}

/// Two messages each of accounts aay and bee, then their events; whether the events
/// share a block.
async fn two_accounts_in_one_block(cfg: &StoreConfig) -> bool {
    let clock = ManualClock::new(day(0, 1));
    let store = off_runtime(|| open_store(cfg, &clock));
    let rec = store.recorder();
    let mut sent = Vec::new();
    for (account, number) in [
        ("aay", "+31612000001"),
        ("bee", "+31612000002"),
        ("aay", "+31612000003"),
        ("bee", "+31612000004"),
    ] {
        let at = rec.now();
        let sub = one_recipient(&rec, at, account, number);
        rec.record(&sub).await.unwrap();
        sent.push((sub.id, at));
    }
    for (submission, at) in sent {
        rec.record_outcome(&accepted_event(submission, at))
            .await
            .unwrap();
    }
    rec.barrier().await.unwrap();
    store.close().await;
    let count = |table: &str| {
        select(
            cfg,
            "2026-11-01",
            &format!("SELECT count(*) FROM {table}"),
            &format!("SELECT count(*) FROM {table} WHERE part = {{part}}"),
        )[0]
    };
    let (blocks, rows) = (count("outcome_block"), count("outcome"));
    assert_eq!(rows, 0, "prompt events go into blocks");
    (1..4).contains(&blocks)
}

/// Rows of five days written one after another, quicker than a head is due: the
/// writer keeps four partitions open, and the first one it closes for the fifth has
/// its waiting rows signed as it goes (late rows of several days would otherwise stay
/// unsigned in a day written to no more).
#[tokio::test]
async fn a_partition_closed_for_others_has_its_rows_signed() {
    let (_dir, cfg) = empty_store();
    let clock = ManualClock::new(day(0, 1));
    let store = off_runtime(|| open_store(&cfg, &clock));
    let rec = store.recorder();
    for d in 0..5 {
        let at = day(d, 1).timestamp_micros();
        let sub = one_recipient(&rec, at, "bee", &format!("+3161200000{d}"));
        rec.record(&sub).await.unwrap();
    }
    rec.barrier().await.unwrap();
    store.close().await;
    let reports = verify(&cfg);
    assert_eq!(reports.len(), 5, "{reports:?}");
    for r in &reports {
        assert!(r.ok(), "{}: {:?}", r.partition, r.verified.damage);
        assert_eq!(r.verified.records, 1, "{}", r.partition);
        assert!(r.verified.heads >= 1, "{}: no head", r.partition);
    }
}
