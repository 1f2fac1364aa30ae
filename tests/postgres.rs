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
