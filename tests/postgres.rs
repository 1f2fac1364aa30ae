//! The private PostgreSQL cluster the PostgreSQL store's tests will run against
//! (`common::pg`), reached the way relaylog will reach it: tokio-postgres over rustls
//! with the ring provider, TLS required, a password, parameters and never literals.

mod common;

use common::pg::{Cluster, ROLE};
use relaylog::store::IndexKind;

#[tokio::test]
async fn a_private_cluster_takes_tls_connections_only() {
    let Some(pg) = Cluster::start() else { return };
    let mut config: tokio_postgres::Config = pg.url("postgres").parse().unwrap();
    config.password(pg.password.as_bytes());
    let (client, connection) = config.connect(pg.tls()).await.unwrap();
    let connection = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl, current_user::text, $1::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[&"a parameter"],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the session is over TLS");
    assert_eq!(row.get::<_, String>(1), ROLE);
    assert_eq!(row.get::<_, String>(2), "a parameter");
    drop(client);
    let _ = connection.await;

    // Without TLS, or with a wrong password, nothing gets in.
    let mut plain: tokio_postgres::Config = pg.url("postgres").parse().unwrap();
    plain.password(pg.password.as_bytes());
    plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
    assert!(plain.connect(tokio_postgres::NoTls).await.is_err());
    let mut wrong: tokio_postgres::Config = pg.url("postgres").parse().unwrap();
    wrong.password("not the password");
    assert!(wrong.connect(pg.tls()).await.is_err());
}

/// One node on PostgreSQL: `init` migrates the database and registers the node (and
/// runs again harmlessly), `check-config` passes, and messages relayed through it are
/// in the database, sealed and blind-indexed, with a signed head, before their
/// clients are answered; nothing identifying is in any table in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_records_into_postgres_before_it_forwards() {
    let Some(pg) = Cluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let up = common::CaptureUpstream::start("0: Accepted for delivery").await;
    let store = pg.store_lines(dir.path(), "relaylog", "a");
    let text = common::config_text(dir.path(), "kannel", Some(&up.url()), "", &store);
    let config = common::write_config(dir.path(), &text);
    let (ok, out) = common::cli(&config, &["check-config"]);
    assert!(!ok, "check-config before init: {out}");
    assert!(out.contains("relaylog init"), "{out}");
    let out = common::cli_ok(&config, &["init"]);
    assert!(out.contains("migrated from version 0 to"), "{out}");
    assert!(out.contains("node `a` registered (id 1)"), "{out}");
    let out = common::cli_ok(&config, &["init"]);
    assert!(
        out.contains("already") && out.contains("master key"),
        "{out}"
    );
    common::cli_ok(&config, &["check-config"]);

    let relay = common::Relay::start(dir.path(), &text).await;
    let client = common::client();
    let canary = "31612345678";
    for n in 0..20 {
        let (status, _) = common::get(
            &client,
            &common::sendsms(&relay.url, "alice", &common::number(n)),
        )
        .await;
        assert_eq!(status, 202);
    }
    let (status, _) = common::get(
        &client,
        &common::sendsms(&relay.url, "alice", &format!("%2B{canary}")),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(up.count(), 21);
    relay.settle().await;
    let store = relay.config.store.clone();
    let found = tokio::task::spawn_blocking(move || {
        (
            common::query_store_cfg(&store, IndexKind::Recipient, &format!("+{canary}")),
            common::query_store_cfg(&store, IndexKind::Account, "alice"),
        )
    })
    .await
    .unwrap();
    assert_eq!(found.0.len(), 1);
    let one = &found.0[0];
    assert_eq!((one.node, one.fields.account.as_str()), (1, "alice"));
    assert_eq!(
        one.outcome.as_ref().map(|o| o.upstream_status),
        Some(Some(202))
    );
    assert_eq!(found.1.len(), 21);

    tokio::task::spawn_blocking(move || {
        let mut db = pg.client("relaylog");
        let records: i64 = db
            .query_one("SELECT count(*) FROM relaylog.record WHERE node = 1", &[])
            .unwrap()
            .get(0);
        assert_eq!(records, 21);
        let outcomes: i64 = db
            .query_one("SELECT count(*) FROM relaylog.outcome WHERE node = 1", &[])
            .unwrap()
            .get(0);
        assert_eq!(outcomes, 21);
        let heads: i64 = db
            .query_one("SELECT count(*) FROM relaylog.head WHERE node = 1", &[])
            .unwrap()
            .get(0);
        assert!(heads >= 1);
        // Every table, as text: no number, account or address in the clear.
        let tables = db
            .query(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
                 WHERE schemaname IN ('relaylog', 'relaylog_keys')",
                &[],
            )
            .unwrap();
        // Each node's tree of each partition checks out, and a changed row is damage.
        let out = common::cli_ok(&config, &["verify"]);
        assert!(out.contains("/a  ok  21 records, 21 outcomes"), "{out}");
        db.execute(
            "UPDATE relaylog.record SET segments = segments + 1 WHERE node = 1 AND id = 3",
            &[],
        )
        .unwrap();
        let (ok, out) = common::cli(&config, &["verify"]);
        assert!(!ok && out.contains("/a  DAMAGED  record changed"), "{out}");
        db.execute(
            "UPDATE relaylog.record SET segments = segments - 1 WHERE node = 1 AND id = 3",
            &[],
        )
        .unwrap();
        db.execute("DELETE FROM relaylog.record WHERE node = 1 AND id = 5", &[])
            .unwrap();
        let (ok, out) = common::cli(&config, &["verify"]);
        assert!(!ok && out.contains("/a  DAMAGED  record removed: id 5"), "{out}");
        for t in tables {
            let name: String = t.get(0);
            let dump: Vec<String> = db
                .query(&format!("SELECT t::text FROM {name} t"), &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let dump = dump.join("\n");
            for needle in [canary, "alice", "127.0.0.1", "hello"] {
                assert!(!dump.contains(needle), "{needle} in {name}");
            }
        }
    })
    .await
    .unwrap();
}

/// Two nodes' command lines on one database: the second node joins with a copy of the
/// first's master key; a hold placed through one keeps a partition from the other's
/// expiry, which otherwise drops the partition's tables and its keys; both see one
/// audit chain, which stays one chain when both append at the same moment.
#[test]
fn two_nodes_share_one_ledger_and_expiry_drops_whole_partitions() {
    let Some(pg) = Cluster::start() else { return };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &std::path::Path, node: &str| {
        let store = pg.store_lines(dir, "shared", node);
        let text = common::config_text(dir, "kannel", None, "", &store) + common::SINGLE_OPERATOR;
        common::write_config(dir, &text)
    };
    let (config_a, config_b) = (config(a.path(), "a"), config(b.path(), "b"));
    common::cli_ok(&config_a, &["init"]);
    // Node b without the installation's master key is turned away.
    let (ok, out) = common::cli(&config_b, &["init"]);
    assert!(!ok && out.contains("master key is not the one"), "{out}");
    std::fs::copy(
        a.path().join("keys/master.key"),
        b.path().join("keys/master.key"),
    )
    .unwrap();
    let out = common::cli_ok(&config_b, &["init"]);
    assert!(out.contains("node `b` registered (id 2)"), "{out}");

    let out = common::cli_ok(
        &config_a,
        &[
            "bench",
            "store",
            "--records",
            "20",
            "--days",
            "2",
            "--start",
            "2024-06-01",
            "--quiet",
        ],
    );
    assert!(out.contains("20 records"), "{out}");
    common::cli_ok(
        &config_b,
        &[
            "hold",
            "add",
            "--case",
            "NL-7",
            "--since",
            "2024-06-02",
            "--until",
            "2024-06-02",
            "--reason",
            "order 17",
        ],
    );
    let list = common::cli_ok(&config_a, &["hold", "list"]);
    assert!(list.contains("NL-7") && list.contains("order 17"), "{list}");
    let out = common::cli_ok(&config_b, &["expire"]);
    assert!(
        out.contains("removed  2024-06-01") && out.contains("held     2024-06-02 (cases: NL-7)"),
        "{out}"
    );
    let mut db = pg.client("shared");
    let exists = |db: &mut postgres::Client, table: &str| -> bool {
        db.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .unwrap()
            .get(0)
    };
    let keys = |db: &mut postgres::Client, p: &str| -> i64 {
        db.query_one(
            "SELECT count(*) FROM relaylog_keys.partition_key WHERE partition = $1",
            &[&p],
        )
        .unwrap()
        .get(0)
    };
    assert!(!exists(&mut db, "relaylog.record_2024_06_01"));
    assert!(!exists(&mut db, "relaylog.outcome_2024_06_01"));
    assert_eq!(keys(&mut db, "2024-06-01"), 0);
    assert!(exists(&mut db, "relaylog.record_2024_06_02"));
    assert_eq!(keys(&mut db, "2024-06-02"), 1);

    common::cli_ok(&config_a, &["hold", "release", "--case", "NL-7"]);
    let (ok, out) = common::cli(&config_b, &["hold", "release", "--case", "NL-7"]);
    assert!(!ok && out.contains("has no hold"), "{out}");
    let out = common::cli_ok(&config_a, &["expire"]);
    assert!(out.contains("removed  2024-06-02"), "{out}");
    assert!(!exists(&mut db, "relaylog.record_2024_06_02"));
    assert_eq!(keys(&mut db, "2024-06-02"), 0);
    let partitions: i64 = db
        .query_one("SELECT count(*) FROM relaylog.partition", &[])
        .unwrap()
        .get(0);
    assert_eq!(partitions, 0);

    // Both nodes append at once: still one chain, every entry in it.
    let verified = |config: &std::path::Path| -> usize {
        let out = common::cli_ok(config, &["audit", "verify"]);
        out.split("intact: ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{out}"))
    };
    let before = verified(&config_a);
    assert_eq!(verified(&config_b), before);
    std::thread::scope(|s| {
        for config in [&config_a, &config_b] {
            s.spawn(move || {
                let text = std::fs::read_to_string(config).unwrap();
                let cfg = relaylog::config::Config::parse(&text, config).unwrap();
                let mut ledger = relaylog::ledger::Ledger::open_store(&cfg.store).unwrap();
                for i in 0..50 {
                    ledger
                        .audit(i, "test", "test.append", serde_json::json!({"i": i}))
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(verified(&config_b), before + 100);
}
