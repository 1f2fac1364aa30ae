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
    // The test cluster keeps PostgreSQL's default of 1,000 open files a process, too
    // few for lookups over 13 months of days (396 partitions): said, not refused.
    let out = common::cli_ok(&config, &["check-config"]);
    let most = 13 * 31 * relaylog::store::pglookup::FILES_PER_PARTITION;
    assert!(
        out.contains("warning: the server's max_files_per_process is 1000")
            && (most - 20 * relaylog::store::pglookup::FILES_PER_PARTITION..=most)
                .any(|n| out.contains(&format!("set it to {n} or more"))),
        "{out}"
    );
    // A server that logs slow statements logs their parameters with them: said (the
    // settings read in their units), until their length is set to 0.
    pg.batch(
        "relaylog",
        &format!(
            "ALTER ROLE {ROLE} SET log_min_duration_statement = '1s'; \
             ALTER ROLE {ROLE} SET log_parameter_max_length = '64B'"
        ),
    );
    let out = common::cli_ok(&config, &["check-config"]);
    assert!(
        out.contains("logs statements with their parameters")
            && out.contains("max_files_per_process is 1000"),
        "{out}"
    );
    pg.batch(
        "relaylog",
        &format!("ALTER ROLE {ROLE} SET log_parameter_max_length = 0"),
    );
    let out = common::cli_ok(&config, &["check-config"]);
    assert!(!out.contains("with their parameters"), "{out}");
    pg.batch(
        "relaylog",
        &format!(
            "ALTER ROLE {ROLE} RESET log_min_duration_statement; \
             ALTER ROLE {ROLE} RESET log_parameter_max_length"
        ),
    );
    // Every statement relaylog sends is kept, as text, by pg_stat_statements: checked
    // below for values in the clear.
    pg.batch("relaylog", "CREATE EXTENSION pg_stat_statements");

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
            .query_one(
                "SELECT count(*) FROM relaylog.outcome_event WHERE node = 1",
                &[],
            )
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
        assert!(
            !ok && out.contains("/a  DAMAGED  record removed: id 5"),
            "{out}"
        );
        let statements: Vec<String> = db
            .query("SELECT query FROM pg_stat_statements", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            statements.iter().any(|q| q.contains("relaylog.record")),
            "pg_stat_statements saw relaylog's statements"
        );
        for q in &statements {
            for needle in [canary, "alice", "127.0.0.1", "hello"] {
                assert!(!q.contains(needle), "{needle} in a statement: {q}");
            }
        }
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
    // A node whose store settings differ (here a shorter retention, which would
    // expire everyone's records) is turned away too.
    let c = tempfile::tempdir().unwrap();
    let store = pg.store_lines(c.path(), "shared", "c") + "retention = \"400 days\"\n";
    let config_c = common::write_config(
        c.path(),
        &(common::config_text(c.path(), "kannel", None, "", &store) + common::SINGLE_OPERATOR),
    );
    std::fs::create_dir_all(c.path().join("keys")).unwrap();
    std::fs::copy(
        a.path().join("keys/master.key"),
        c.path().join("keys/master.key"),
    )
    .unwrap();
    let (ok, out) = common::cli(&config_c, &["init"]);
    assert!(!ok && out.contains("store settings"), "{out}");

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
    assert!(!exists(&mut db, "relaylog.outcome_block_2024_06_01"));
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

/// The `to` of every request the upstream received.
fn forwarded_numbers(up: &common::CaptureUpstream) -> Vec<String> {
    up.seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| {
            let q = r.path_and_query.split_once('?')?.1;
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "to")
                .map(|(_, v)| v.into_owned())
        })
        .collect()
}

/// Clients sending numbered messages as `account` to `url` until told to stop; each
/// returns the statuses it got.
fn load(
    url: &str,
    account: &'static str,
    base: u64,
    clients: u64,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    (0..clients)
        .map(|worker| {
            let (url, stop) = (url.to_owned(), stop.clone());
            tokio::spawn(async move {
                let c = common::client();
                let mut statuses = Vec::new();
                for i in 0..100_000u64 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let n = base + worker * 100_000 + i;
                    let target = format!(
                        "{url}/cgi-bin/sendsms?username={account}&password=pw&to=%2B{n}&text=x"
                    );
                    let req = http::Request::get(target).body(Default::default()).unwrap();
                    match c.request(req).await {
                        Ok(r) => statuses.push(r.status().as_u16()),
                        Err(_) => break,
                    }
                }
                statuses
            })
        })
        .collect()
}

/// Two nodes, `a` and `b`, of one installation in database `db`, initialised, their
/// upstream at `upstream`.
struct TwoNodes {
    a: tempfile::TempDir,
    b: tempfile::TempDir,
    config_a: std::path::PathBuf,
    config_b: std::path::PathBuf,
}

impl TwoNodes {
    fn init(pg: &Cluster, db: &str, upstream: &str) -> TwoNodes {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let config = |dir: &std::path::Path, node: &str| {
            let store = pg.store_lines(dir, db, node);
            let text = common::config_text(dir, "kannel", Some(upstream), "", &store)
                + common::SINGLE_OPERATOR;
            common::write_config(dir, &text)
        };
        let (config_a, config_b) = (config(a.path(), "a"), config(b.path(), "b"));
        common::cli_ok(&config_a, &["init"]);
        std::fs::create_dir_all(b.path().join("keys")).unwrap();
        std::fs::copy(
            a.path().join("keys/master.key"),
            b.path().join("keys/master.key"),
        )
        .unwrap();
        common::cli_ok(&config_b, &["init"]);
        TwoNodes {
            a,
            b,
            config_a,
            config_b,
        }
    }
}

/// Offboarding on PostgreSQL: an admin on node a erases an account's records and
/// outcome events from both nodes' trees while node b keeps writing, each tree's rows
/// under a statement node a signs and names itself the signer of. Node b, restarted,
/// takes that statement in when it resumes its tree and signs on over it; `verify`
/// recomputes every head of both trees and reports the erasures, no damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offboarding_erases_an_account_from_every_nodes_tree() {
    let Some(pg) = Cluster::start() else { return };
    let up = common::CaptureUpstream::start("0: Accepted for delivery").await;
    let TwoNodes {
        a,
        b,
        config_a,
        config_b,
    } = TwoNodes::init(&pg, "offboard", &up.url());
    let node_a = common::Served::start(a.path(), &config_a);
    let node_b = common::Served::start(b.path(), &config_b);
    let c = common::client();
    let send = |url: String, user: &'static str, n: u32| {
        let c = c.clone();
        async move {
            let to = format!("%2B3161234{n:04}");
            let (s, _) = common::get(&c, &common::sendsms(&url, user, &to)).await;
            assert_eq!(s.as_u16(), 202);
        }
    };
    let (url_a, url_b) = (node_a.addr("listening"), node_b.addr("listening"));
    for (i, user) in ["leaving", "staying", "leaving"].into_iter().enumerate() {
        send(url_a.clone(), user, i as u32).await;
        send(url_b.clone(), user, 10 + i as u32).await;
    }
    let (status, _) = node_a.terminate();
    assert!(status.success());

    let root = common::add_officer(&config_a, "root1", "admin");
    let out = a.path().join("returned");
    let (ok, text) = common::offboard_cli(
        &config_a,
        "leaving",
        &out,
        "root1",
        &common::totp_now(&root),
    );
    assert!(
        ok && text.contains("4 records and 4 outcome events"),
        "{text}"
    );
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("leaving-records.json")).unwrap()).unwrap();
    assert_eq!(rows.len(), 4);
    let (ok, s) = common::cli(
        &config_b,
        &[
            "verify-export",
            out.join("leaving-deletion.json").to_str().unwrap(),
        ],
    );
    assert!(ok && s.contains("signed by node `a`"), "{s}");

    // Node b writes on with the tree it holds, then resumes it from the database.
    send(url_b.clone(), "staying", 20).await;
    let (status, _) = node_b.terminate();
    assert!(status.success());
    let node_b = common::Served::start(b.path(), &config_b);
    send(node_b.addr("listening"), "staying", 21).await;
    let (status, _) = node_b.terminate();
    assert!(status.success());

    let store = relaylog::config::Config::load(&config_b).unwrap().store;
    let (leaving, staying) = tokio::task::spawn_blocking(move || {
        (
            common::query_store_cfg(&store, IndexKind::Account, "leaving").len(),
            common::query_store_cfg(&store, IndexKind::Account, "staying").len(),
        )
    })
    .await
    .unwrap();
    assert_eq!((leaving, staying), (0, 4));
    // The erased records' ids are out of their postings, and a posting left with
    // none is gone (its tags with it); the others' are as they were.
    let (dangling, empty, listed, tagged) = std::thread::scope(|s| {
        s.spawn(|| {
            let mut db = pg.client("offboard");
            let r = db
                .query_one(
                    "SELECT (SELECT count(*) FROM relaylog.posting p, unnest(p.ids) AS i \
                     WHERE NOT EXISTS (SELECT 1 FROM relaylog.record r \
                     WHERE r.part = p.part AND r.node = p.node AND r.id = i)), \
                     (SELECT count(*) FROM relaylog.posting WHERE cardinality(ids) = 0), \
                     (SELECT coalesce(sum(cardinality(ids)), 0)::bigint FROM relaylog.posting), \
                     (SELECT count(*) FROM relaylog.record r, LATERAL (VALUES (r.account_ix), \
                     (r.ip_ix), (r.originator_ix)) AS x(tag) WHERE x.tag IS NOT NULL)",
                    &[],
                )
                .unwrap();
            (
                r.get::<_, i64>(0),
                r.get::<_, i64>(1),
                r.get::<_, i64>(2),
                r.get::<_, i64>(3),
            )
        })
        .join()
        .unwrap()
    });
    assert_eq!((dangling, empty), (0, 0));
    assert!(tagged > 0);
    assert_eq!(listed, tagged, "the staying records' postings are whole");
    let (ok, v) = common::cli(&config_a, &["verify"]);
    assert!(ok, "{v}");
    for node in ["a", "b"] {
        assert!(
            v.lines().any(|l| l.contains(&format!("/{node}  ok"))
                && l.contains("4 rows erased under 1 signed erasure statement")),
            "{v}"
        );
    }
    assert!(!v.contains("DAMAGED"), "{v}");

    // Someone with write access to the database alone registers a node of their own
    // (with node a's tag copied onto it), and with its key signs an erasure statement
    // in node a's tree and a deletion statement: none of it is believed.
    use ring::signature::KeyPair;
    let forger = ring::signature::Ed25519KeyPair::from_pkcs8(
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let public: String = forger
        .public_key()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let day = relaylog::store::partition::PartitionId::containing(
        relaylog::config::Granularity::Day,
        chrono::Utc::now().timestamp_micros(),
    );
    let mut entries = vec![b'r'];
    entries.extend_from_slice(&2i64.to_be_bytes());
    entries.extend_from_slice(&[7u8; 32]);
    let message =
        relaylog::store::integrity::erasure_message_of(day, Some("a"), 2, 0, "forged", &entries);
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    pg.batch(
        "offboard",
        &format!(
            "INSERT INTO relaylog.node (id, name, public_key, registered_us, key_tag) \
             SELECT 9, 'relay-x', '\\x{public}', 0, key_tag FROM relaylog.node WHERE name = 'a'; \
             INSERT INTO relaylog.erasure (part, node, id, at_us, reason, entries, signature, signer) \
             SELECT part, 1, 2, 0, 'forged', '\\x{}', '\\x{}', 9 FROM relaylog.partition WHERE name = '{day}'",
            hex(&entries),
            hex(forger.sign(&message).as_ref())
        ),
    );
    let (ok, v) = common::cli(&config_a, &["verify"]);
    assert!(!ok, "{v}");
    assert!(
        v.contains("/relay-x  DAMAGED") && v.contains("not authenticated by the master key"),
        "{v}"
    );
    assert!(
        v.contains("/a  DAMAGED  erasure statement 2 is not signed by this installation"),
        "{v}"
    );
    let statement = out.join("leaving-deletion.json");
    let mut forged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&statement).unwrap()).unwrap();
    forged["records"] = 0.into();
    let forged_bytes = serde_json::to_vec_pretty(&forged).unwrap();
    std::fs::write(&statement, &forged_bytes).unwrap();
    std::fs::write(
        relaylog::compliance::disclosure::signature_path(&statement),
        hex(forger.sign(&forged_bytes).as_ref()),
    )
    .unwrap();
    let (ok, s) = common::cli(&config_b, &["verify-export", statement.to_str().unwrap()]);
    assert!(!ok && s.contains("does not verify"), "{s}");

    // A node row without its tag (registered before tags, the database upgraded by
    // `init` elsewhere) is not trusted, and its node does not start, until `init` runs
    // on it (an operator's act, which says it wrote the tag); nor does a node whose
    // row changed in the database (here its id swapped with relay-x's).
    pg.batch(
        "offboard",
        "UPDATE relaylog.node SET key_tag = NULL WHERE name = 'b'",
    );
    let (_, v) = common::cli(&config_a, &["verify"]);
    assert!(v.contains("/b  DAMAGED"), "{v}");
    let (ok, out) = common::cli_refused_within(&config_b, &["serve"], 30);
    assert!(!ok && out.contains("has no tag yet"), "{out}");
    let out = common::cli_ok(&config_b, &["init"]);
    assert!(out.contains("its row's tag written"), "{out}");
    let (_, v) = common::cli(&config_a, &["verify"]);
    assert!(
        v.lines().any(|l| l.contains("/b  ok")) && !v.contains("/b  DAMAGED"),
        "{v}"
    );
    pg.batch(
        "offboard",
        "UPDATE relaylog.node SET id = 99 WHERE name = 'relay-x'; \
         UPDATE relaylog.node SET id = 9 WHERE name = 'b'; \
         UPDATE relaylog.node SET id = 2 WHERE name = 'relay-x'",
    );
    let (ok, out) = common::cli(&config_b, &["check-config"]);
    assert!(
        !ok && out.contains("not the one `relaylog init` wrote"),
        "{out}"
    );
    // Nor does `init` bless it: the operator clears the tag, by hand, to accept it.
    let (ok, out) = common::cli(&config_b, &["init"]);
    assert!(
        !ok && out.contains("carries a tag that is not its own"),
        "{out}"
    );
}

/// Two `serve` processes, two nodes, one database: messages through both are found by
/// one disclosure, whose manifest carries both nodes' signed heads; `kill -9` of one
/// node under load loses no record of a message its upstream received while the
/// other relays on; PostgreSQL stopped under load gets fail-closed answers (nothing
/// forwarded unrecorded) and the nodes recover by themselves when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serving_nodes_share_one_store_and_survive_losing_a_node_or_the_database() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(pg) = Cluster::start() else { return };
    let up = common::CaptureUpstream::start("0: Accepted for delivery").await;
    let TwoNodes {
        a,
        b,
        config_a,
        config_b,
    } = TwoNodes::init(&pg, "nodes", &up.url());
    let node_a = common::Served::start(a.path(), &config_a);
    let node_b = common::Served::start(b.path(), &config_b);
    let (url_a, url_b) = (node_a.addr("listening"), node_b.addr("listening"));

    // A second process as node a (its keys copied: one name, one key) does not start:
    // two writers of one tree.
    let twin = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(twin.path().join("keys")).unwrap();
    for key in ["master.key", "signing.key", "signing.key.pub"] {
        std::fs::copy(
            a.path().join("keys").join(key),
            twin.path().join("keys").join(key),
        )
        .unwrap();
    }
    let store = pg.store_lines(twin.path(), "nodes", "a");
    let config_twin = common::write_config(
        twin.path(),
        &common::config_text(twin.path(), "kannel", Some(&up.url()), "", &store),
    );
    let (ok, out) = common::cli_refused_within(&config_twin, &["serve"], 30);
    assert!(
        !ok && out.contains("node `a` is being written by another session (pid "),
        "{out}"
    );

    // One number, messages through both nodes; one disclosure finds them all.
    let c = common::client();
    for (url, user) in [(&url_a, "via-a"), (&url_b, "via-b")] {
        for _ in 0..3 {
            let (s, _) = common::get(&c, &common::sendsms(url, user, "%2B31612345601")).await;
            assert_eq!(s.as_u16(), 202);
        }
    }
    let anna = common::add_officer(&config_a, "anna", "approver");
    let bob = common::add_officer(&config_b, "bob", "approver");
    let day = chrono::Utc::now().date_naive().to_string();
    let (ok, out) = common::cli_with_input(
        &config_a,
        &[
            "case",
            "open",
            "--officer",
            "anna",
            "--authority",
            "Openbaar Ministerie",
            "--country",
            "NL",
            "--organisation",
            "OM-0042",
            "--request",
            "2026-300",
            "--legal-basis",
            "Sv 126n",
            "--order-ref",
            "RC 26/1",
            "--order-date",
            "2026-11-20",
            "--deadline",
            "2026-12-04",
            "--since",
            &day,
            "--until",
            &day,
            "--recipient",
            "+31612345601",
        ],
        "anna-long-password\n",
    );
    assert!(ok, "{out}");
    // Opened on node a, approved on node b: one ledger.
    let (ok, out) = common::cli_with_input(
        &config_b,
        &[
            "case",
            "approve",
            "1",
            "--officer",
            "bob",
            "--totp",
            &common::totp_now(&bob),
        ],
        "bob-long-password\n",
    );
    assert!(ok, "{out}");
    let export = a.path().join("case1.json");
    let (ok, out) = common::cli_with_input(
        &config_a,
        &[
            "disclose",
            "--purpose",
            "lawful-request",
            "--case",
            "1",
            "--officer",
            "anna",
            "--totp",
            &common::totp_ahead(&anna, 1),
            "--out",
            export.to_str().unwrap(),
        ],
        "anna-long-password\n",
    );
    assert!(ok && out.contains("6 records"), "{out}");
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    let mut accounts: Vec<&str> = rows
        .iter()
        .map(|r| r["account"].as_str().unwrap())
        .collect();
    accounts.sort();
    assert_eq!(
        accounts,
        ["via-a", "via-a", "via-a", "via-b", "via-b", "via-b"]
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.path().join("case1.json.manifest.json")).unwrap())
            .unwrap();
    let mut nodes: Vec<&str> = manifest["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["node"].as_str().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["a", "b"], "{manifest}");

    // Node a killed under load: node b relays on, and nothing forwarded is unrecorded.
    let stop = Arc::new(AtomicBool::new(false));
    let on_a = load(&url_a, "crash-a", 31_600_000_000, 6, &stop);
    let on_b = load(&url_b, "crash-b", 31_700_000_000, 6, &stop);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while up.count() < 400 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    common::unsafe_kill(node_a.child.id(), "KILL");
    drop(node_a);
    let at_kill = up.count();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(up.count() > at_kill + 50, "node b stopped relaying");

    // The database stopped under load: fail-closed answers, nothing forwarded.
    pg.halt();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let halted = up.count();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(up.count(), halted, "forwarded while the database was down");
    pg.resume();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while up.count() < halted + 100 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        up.count() >= halted + 100,
        "node b did not recover by itself"
    );
    stop.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    for h in on_a.into_iter().chain(on_b) {
        statuses.extend(h.await.unwrap());
    }
    assert!(statuses.contains(&503), "no fail-closed answer");
    assert!(
        statuses.iter().all(|s| [202, 503].contains(s)),
        "{statuses:?}"
    );
    let (status, out) = node_b.terminate();
    let out = String::from_utf8_lossy(&out);
    assert!(
        status.success(),
        "{}",
        &out[out.len().saturating_sub(3000)..]
    );

    let forwarded = forwarded_numbers(&up);
    let store = relaylog::config::Config::load(&config_b).unwrap().store;
    let stored: std::collections::HashSet<String> = tokio::task::spawn_blocking(move || {
        ["crash-a", "crash-b"]
            .iter()
            .flat_map(|account| common::query_store_cfg(&store, IndexKind::Account, account))
            .map(|f| f.fields.recipient.value)
            .collect()
    })
    .await
    .unwrap();
    let missing: Vec<_> = forwarded
        .iter()
        .filter(|n| n.starts_with("+316") && !n.ends_with("12345601"))
        .filter(|n| !stored.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "{} forwarded message(s) have no record, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    // Node a's unsigned rows (kill -9 came between two heads) are signed when it next
    // opens the partition: node a back, one message through it, and every tree of
    // both nodes verifies.
    let node_a = common::Served::start(a.path(), &config_a);
    let (s, _) = common::get(
        &c,
        &common::sendsms(&node_a.addr("listening"), "back", "%2B31612345699"),
    )
    .await;
    assert_eq!(s.as_u16(), 202);
    let (status, _) = node_a.terminate();
    assert!(status.success());
    let out = common::cli_ok(&config_b, &["verify"]);
    assert!(out.contains("/a  ok") && out.contains("/b  ok"), "{out}");
}

/// A lookup by number over a window touches that window's partitions only, and in
/// each the statement it runs is planned as one partition's index scan: the blind
/// index by (bucket, tag) while the partition is written, by tag alone once it is
/// closed and indexed for reading (`EXPLAIN` of the lookup's own statement).
#[test]
fn a_lookup_by_number_reads_only_its_window_through_the_blind_index() {
    use relaylog::store::keys::IndexKind;
    use relaylog::store::partition::PartitionId;
    let Some(pg) = Cluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = pg.store_lines(dir.path(), "explain", "a");
    let text = common::config_text(dir.path(), "kannel", None, "", &store);
    let config = common::write_config(dir.path(), &text);
    common::cli_ok(&config, &["init"]);
    common::cli_ok(
        &config,
        &[
            "bench",
            "store",
            "--records",
            "60000",
            "--days",
            "3",
            "--start",
            "2026-11-01",
            "--recipients-pool",
            "20000",
            "--quiet",
        ],
    );
    let cfg = relaylog::config::Config::load(&config).unwrap().store;
    let keyring = relaylog::store::open_keyring(&cfg).unwrap();
    let mut db = pg.client("explain");
    db.batch_execute("ANALYZE").unwrap();
    let number = "+31610000042";
    let day = |d: u32| {
        PartitionId::of_date(
            cfg.partition,
            chrono::NaiveDate::from_ymd_opt(2026, 11, d).unwrap(),
        )
    };
    // The window: 2 and 3 November. The lookup searches those two partitions only.
    let (since, until) = (day(2).start_micros(), day(3).end_micros());
    let criteria = relaylog::store::query::Criteria {
        kind: IndexKind::Recipient,
        value: number.into(),
        since,
        until,
        filters: false,
    };
    let stats = relaylog::store::query::run(&cfg, &keyring, &criteria, |_| {}).unwrap();
    assert_eq!(stats.partitions_searched, 2);
    // The statement the lookup sends for its partitions (one, for up to 32), explained.
    let account = relaylog::store::query::Criteria {
        kind: IndexKind::Account,
        value: "account007".into(),
        ..criteria.clone()
    };
    let explain = |db: &mut postgres::Client,
                   criteria: &relaylog::store::query::Criteria,
                   indexed: bool|
     -> String {
        use relaylog::store::pglookup::{Search, chunk_params, chunk_sql};
        let searches: Vec<Search> = [day(2), day(3)]
            .into_iter()
            .map(|p| Search::new(p, indexed, keyring.keys(p).unwrap(), criteria))
            .collect();
        let sql = format!("EXPLAIN {}", chunk_sql(criteria.kind, &searches));
        db.query_typed(&sql, &chunk_params(&searches))
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // A number: the records' B-tree by (bucket, recipient tag).
    let plan = explain(&mut db, &criteria, false);
    for d in [2, 3] {
        assert!(plan.contains(&format!("record_2026_11_0{d}")), "{plan}");
    }
    assert!(!plan.contains("2026_11_01"), "{plan}");
    assert!(
        plan.contains("Index") && plan.contains("recipient_ix"),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");
    // An account: its postings by (bucket, kind, tag), each id to its record by the
    // primary key. A day's postings are a few pages here, which a sequential scan
    // reads cheapest: sequential scans off, to see that the index serves the
    // statement.
    db.batch_execute("SET enable_seqscan = off").unwrap();
    let plan = explain(&mut db, &account, false);
    db.batch_execute("RESET enable_seqscan").unwrap();
    for d in [2, 3] {
        assert!(
            plan.contains(&format!("posting_2026_11_0{d}_bucket_kind_tag_idx")),
            "{plan}"
        );
        assert!(
            plan.contains(&format!("record_2026_11_0{d}_pkey")),
            "{plan}"
        );
    }
    assert!(!plan.contains("2026_11_01"), "{plan}");
    // Every column of the postings' index in the seek: bucket, kind, tag.
    assert!(
        plan.contains("::bigint[])) AND (kind = '1'::smallint) AND (tag = "),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");
    let found = relaylog::store::query::run(&cfg, &keyring, &account, |_| {}).unwrap();
    assert!(found.matches > 0, "{found:?}");
    // Closed and indexed for reading (what serve's compaction thread does): one
    // seek on the tag index.
    let pool = relaylog::pg::Pool::shared(match &cfg.backend {
        relaylog::config::Backend::Postgres(pg) => pg,
        _ => unreachable!(),
    })
    .unwrap();
    let done = relaylog::store::pgstore::index_closed_due(
        &pool,
        cfg.partition,
        chrono::Utc::now().timestamp_micros(),
        &|| false,
    );
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|(_, r)| r.is_ok()));
    db.batch_execute("ANALYZE").unwrap();
    let plan = explain(&mut db, &criteria, true);
    for d in [2, 3] {
        assert!(
            plan.contains(&format!("record_2026_11_0{d}_recipient_ix_tag")),
            "{plan}"
        );
    }
    assert!(!plan.contains("2026_11_01"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    db.batch_execute("SET enable_seqscan = off").unwrap();
    let plan = explain(&mut db, &account, true);
    db.batch_execute("RESET enable_seqscan").unwrap();
    for d in [2, 3] {
        assert!(
            plan.contains(&format!("posting_2026_11_0{d}_tag")),
            "{plan}"
        );
    }
    assert!(!plan.contains("2026_11_01"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    // A record's outcome events: its partition's rows and blocks, each by its index
    // (the blocks' seek bounded on both sides by the submission). The tables are
    // a few rows here, which a sequential scan reads cheapest: sequential scans off,
    // to see that the indexes serve the statement.
    db.batch_execute("SET enable_seqscan = off").unwrap();
    let sub: i64 = db
        .query_one(
            "SELECT submission FROM relaylog.record WHERE part = $1 LIMIT 1",
            &[&relaylog::pg::schema::part(day(2))],
        )
        .unwrap()
        .get(0);
    let plan = db
        .query(
            &format!("EXPLAIN {}", relaylog::store::pgevents::of_submission_sql()),
            &[&relaylog::pg::schema::part(day(2)), &1i16, &sub],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    db.batch_execute("RESET enable_seqscan").unwrap();
    assert!(
        plan.contains("outcome_block_2026_11_02_node_sub_min_sub_max_idx"),
        "{plan}"
    );
    assert!(
        plan.contains("Index Cond: ((node = '1'::smallint) AND (sub_min >= "),
        "{plan}"
    );
    assert!(
        plan.contains("outcome_2026_11_02_node_submission_idx"),
        "{plan}"
    );
    assert!(!plan.contains("2026_11_03"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    // And the lookup finds the same through it.
    let again = relaylog::store::query::run(&cfg, &keyring, &criteria, |_| {}).unwrap();
    assert_eq!(
        (again.partitions_searched, again.matches),
        (2, stats.matches)
    );
}

/// The store of node `n1` in `database`, initialised, its keys under `dir`.
fn initialised_store(
    pg: &Cluster,
    dir: &std::path::Path,
    database: &str,
) -> relaylog::config::StoreConfig {
    let store = pg.store_lines(dir, database, "n1");
    let text = common::config_text(dir, "kannel", None, "", &store);
    let cfg = relaylog::config::Config::parse(&text, std::path::Path::new("t.toml"))
        .unwrap()
        .store;
    common::init_store(&cfg);
    cfg
}

/// A lookup with more matches in one partition than it reads in one round trip
/// (1,024) gets them all, in time order: the rest through a portal, a slice at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_with_more_matches_in_a_day_than_one_read_gets_them_all() {
    let Some(pg) = Cluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = initialised_store(&pg, dir.path(), "busy");
    // One day's noon, a millisecond a message: all in one partition.
    let noon = today_noon();
    let clock = relaylog::clock::ManualClock::new(noon);
    let opened = common::off_runtime(|| common::open_store(&cfg, &clock));
    let rec = opened.recorder();
    // The day before and the day after hold one each: the busy day is read alone
    // from the middle of a statement's partitions.
    for at in [
        noon - chrono::Duration::days(1),
        noon + chrono::Duration::days(1),
    ] {
        clock.set(at);
        let sub = common::one_recipient(&rec, rec.now(), "busy", "+31687654321");
        rec.record(&sub).await.unwrap();
    }
    for i in 0..1_100 {
        clock.set(noon + chrono::Duration::milliseconds(i));
        let sub = common::one_recipient(&rec, rec.now(), "busy", &format!("+3161{i:07}"));
        rec.record(&sub).await.unwrap();
    }
    opened.close().await;
    let found = common::query_store_cfg(&cfg, IndexKind::Account, "busy");
    assert_eq!(found.len(), 1_102);
    assert!(found.windows(2).all(|w| w[0].at <= w[1].at));
    let mut numbers: Vec<String> = found
        .iter()
        .map(|f| f.fields.recipient.value.clone())
        .collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), 1_101);
}

/// A lookup over more partitions than one statement searches (32) finds every match,
/// oldest first, and nothing of another number's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_over_more_days_than_one_statement_searches_finds_them_all() {
    let Some(pg) = Cluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = initialised_store(&pg, dir.path(), "days");
    // Three statements' worth of days and some, ending today: one message a day to
    // the number looked for, one to another; every other day, a second one at night.
    let days = 2 * relaylog::store::pglookup::LOOKUP_CHUNK as i64 + 6;
    let today = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(6, 0, 0)
        .unwrap()
        .and_utc();
    let clock = relaylog::clock::ManualClock::new(today - chrono::Duration::days(days - 1));
    let opened = common::off_runtime(|| common::open_store(&cfg, &clock));
    let rec = opened.recorder();
    let mut sent = 0;
    for d in (0..days).rev() {
        let mut at = vec![today - chrono::Duration::days(d)];
        if d % 2 == 0 {
            at.push(at[0] + chrono::Duration::hours(17));
        }
        for at in at.into_iter().filter(|at| *at <= chrono::Utc::now()) {
            clock.set(at);
            for number in ["+31612345678", "+31687654321"] {
                let sub = common::one_recipient(&rec, rec.now(), "days", number);
                rec.record(&sub).await.unwrap();
            }
            sent += 1;
        }
    }
    opened.close().await;
    let found = common::query_store_cfg(&cfg, IndexKind::Recipient, "+31612345678");
    assert_eq!(found.len(), sent);
    assert!(found.len() as i64 > days);
    assert!(found.windows(2).all(|w| w[0].at < w[1].at));
    assert!(
        found
            .iter()
            .all(|f| f.fields.recipient.value == "+31612345678")
    );
    // Two days' keys shredded: the first of the second statement and the last
    // (today). The lookup names them and finds everything else.
    use relaylog::store::partition::PartitionId;
    let partitions = common::partitions(&cfg);
    let shredded = [
        partitions[relaylog::store::pglookup::LOOKUP_CHUNK],
        *partitions.last().unwrap(),
    ];
    common::off_runtime(|| {
        let mut db = pg.client("days");
        for p in shredded {
            let n = db
                .execute(
                    "DELETE FROM relaylog_keys.partition_key WHERE partition = $1",
                    &[&p.to_string()],
                )
                .unwrap();
            assert_eq!(n, 1, "{p}");
        }
    });
    let kept = found
        .iter()
        .filter(|f| !shredded.contains(&PartitionId::containing(cfg.partition, f.at)))
        .count();
    assert!(kept < found.len());
    let criteria = relaylog::store::query::Criteria {
        kind: IndexKind::Recipient,
        value: "+31612345678".into(),
        since: 0,
        until: i64::MAX / 2,
        filters: true,
    };
    let stats = common::off_runtime(|| {
        let keyring = relaylog::store::open_keyring(&cfg).unwrap();
        relaylog::store::query::run(&cfg, &keyring, &criteria, |_| {}).unwrap()
    });
    assert_eq!(stats.partitions_shredded, shredded);
    assert_eq!(stats.partitions_searched, partitions.len() - 2);
    assert_eq!(stats.matches, kept as u64);
}

/// The writer sends a batch of fewer than `ONE_STATEMENT_ROWS` rows as one statement
/// of array parameters (a head among them when one is due), and a larger one by COPY:
/// the same rows read back the same either way, every column and every NULL, and the
/// heads signed along verify.
#[test]
fn small_and_large_batches_store_the_same_rows() {
    use relaylog::store::integrity::{load_signing_key, outcome_leaf, record_leaf};
    use relaylog::store::pgstore::{ONE_STATEMENT_ROWS, PARALLEL_ROWS, PgSink, target};
    // The rows of each table: the small batches' and the large one's on either side
    // of the threshold, the large one's records split over two connections.
    let (n, chunk) = (PARALLEL_ROWS + 512, ONE_STATEMENT_ROWS / 4);
    assert!(n >= PARALLEL_ROWS && 2 * chunk < ONE_STATEMENT_ROWS);
    use relaylog::store::events::SPAN;
    use relaylog::store::rows::{OutcomeRow, Row};
    let Some(pg) = Cluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = pg.store_lines(dir.path(), "batches", "n1");
    let text = common::config_text(dir.path(), "kannel", None, "", &store);
    let config = common::write_config(dir.path(), &text);
    let cfg = relaylog::config::Config::load(&config).unwrap().store;
    common::init_store(&cfg);
    let relaylog::config::Backend::Postgres(pg_cfg) = &cfg.backend else {
        panic!("a PostgreSQL store")
    };
    let signer = load_signing_key(&cfg.signing_key).unwrap();
    let mut sink = PgSink::new(target(&cfg, pg_cfg, &signer).unwrap());
    sink.connect_owning(std::time::Duration::from_secs(3))
        .unwrap();
    // Two days: the small batches into yesterday, the one large batch into today.
    let today = today_noon();
    let yesterday = today - chrono::Duration::days(1);
    let day = |at: chrono::DateTime<chrono::Utc>| {
        relaylog::store::partition::PartitionId::containing(cfg.partition, at.timestamp_micros())
    };
    let rows = |at: chrono::DateTime<chrono::Utc>| {
        let base = at.timestamp_micros();
        let records: Vec<Row> = (0..n as i64)
            .map(|i| {
                let mut r = Row {
                    submission: (base + i) << 8,
                    ordinal: (i % 3) as u32,
                    at_us: base + i,
                    bucket: base / 1_000_000,
                    protocol: (i % 3) as u8,
                    service: (i % 2) as u8,
                    recipient_form: (i % 4) as u8,
                    segments: (i % 5) as u16 + 1,
                    account_ix: i * 7 - 300,
                    ip_ix: i64::MAX - i,
                    originator_ix: (i % 2 == 0).then_some(i64::MIN + i),
                    recipient_ix: i * 31,
                    sealed: vec![i as u8; 40 + (i % 7) as usize],
                    leaf: [0; 32],
                };
                r.leaf = record_leaf(&r);
                r
            })
            .collect();
        let outcomes: Vec<OutcomeRow> = (0..n as i64)
            .map(|i| {
                // Every 50th a receipt for a submission long before the batch's
                // (an outcome row, the others in blocks).
                let old = if i % 50 == 7 { 2 * SPAN } else { 0 };
                let mut o =
                    OutcomeRow::bare(((base + i) << 8) - old, base + i + 5, 1 + (i % 6) as u8);
                if i % 2 == 1 {
                    o.upstream_status = Some(200 + i as u16);
                    o.gateway_code = Some(-(i as i32));
                    o.message_id_sealed = Some(vec![0xab; i as usize % 9]);
                    o.enhanced_status = Some(format!("2.0.{i}"));
                    o.size_bytes = Some(i as u64 * 1_000);
                    o.ordinal = Some(i as u32);
                }
                if i % 3 == 0 {
                    o.receipt_state = Some("DELIVRD".into());
                    o.receipt_error = Some(String::new());
                    o.receipt_done = Some(format!("2612051200{i:02}"));
                }
                o.leaf = outcome_leaf(&o);
                o
            })
            .collect();
        (records, outcomes)
    };
    let key = load_signing_key(&cfg.signing_key).unwrap();
    let now = today.timestamp_micros();
    // Small batches, the outcome events one batch behind the records: the first holds
    // records only, the last outcome events only; before the last, a head falls due.
    let (small_r, small_o) = rows(yesterday);
    let (r_chunks, o_chunks): (Vec<&[Row]>, Vec<&[OutcomeRow]>) = (
        small_r.chunks(chunk).collect(),
        small_o.chunks(chunk).collect(),
    );
    for k in 0..=r_chunks.len() {
        let r: Vec<&Row> = r_chunks.get(k).map_or(Vec::new(), |c| c.iter().collect());
        let o: Vec<&OutcomeRow> = k
            .checked_sub(1)
            .map_or(Vec::new(), |k| o_chunks[k].iter().collect());
        if k == r_chunks.len() {
            std::thread::sleep(relaylog::store::integrity::HEAD_INTERVAL);
        }
        assert_eq!(
            sink.write(day(yesterday), &r, &o, 0, Some(&key), now)
                .unwrap(),
            (r.len() as u64, o.len() as u64)
        );
    }
    let (large_r, large_o) = rows(today);
    let (r, o): (Vec<&Row>, Vec<&OutcomeRow>) =
        (large_r.iter().collect(), large_o.iter().collect());
    assert_eq!(
        sink.write(day(today), &r, &o, 0, Some(&key), now).unwrap(),
        (n as u64, n as u64)
    );
    let mut db = pg.client("batches");
    // The last small batch's statement carried a head over every row written.
    let through: (Option<i64>, Option<i64>) = {
        let r = db
            .query_one(
                "SELECT max(record_through), max(outcome_through) FROM relaylog.head \
                 WHERE part = $1",
                &[&relaylog::pg::schema::part(day(yesterday))],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(through, (Some(n as i64), Some(n as i64)));
    assert!(sink.seal_all(&key, now).is_empty());
    drop(sink);

    // Every column but the partition's and the id, as JSON, in submission order
    // (the events' ids depend on the batches: blocks' events take them first); the
    // values made from the day's time differ by exactly one day's worth.
    let mut shift = |table: &str, at: chrono::DateTime<chrono::Utc>| -> Vec<String> {
        let base = at.timestamp_micros();
        let bucket = if table == "record" {
            ", 'bucket', t.bucket - $2 / 1000000"
        } else {
            ""
        };
        db.query(
            &format!(
                "SELECT ((to_jsonb(t) - 'part' - 'id' - 'submission' - 'at_us' - 'bucket') \
                 || jsonb_build_object('sub', t.submission - ($2::bigint << 8), \
                 'at', t.at_us - $2{bucket}))::text \
                 FROM relaylog.{table} t WHERE part = $1 ORDER BY submission, at_us"
            ),
            &[&relaylog::pg::schema::part(day(at)), &base],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
    };
    for table in ["record", "outcome_event"] {
        let (small, large) = (shift(table, yesterday), shift(table, today));
        assert_eq!((small.len(), large.len()), (n, n), "{table}");
        if let Some(k) = (0..n).find(|&k| small[k] != large[k]) {
            panic!(
                "{table} row {k}: {} as one statement, {} by COPY",
                small[k], large[k]
            );
        }
    }
    let nulls: i64 = db
        .query_one(
            "SELECT count(*) FROM relaylog.outcome_event WHERE upstream_status IS NULL \
             AND receipt_state IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    // The old submissions' receipts in rows, every other event in blocks: one per
    // small batch with events, as many as BLOCK_EVENTS takes for the large one.
    let (rows, blocks): (i64, i64) = {
        let r = db
            .query_one(
                "SELECT (SELECT count(*) FROM relaylog.outcome), \
                 (SELECT count(*) FROM relaylog.outcome_block)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        (rows, blocks),
        (
            2 * (0..n).filter(|i| i % 50 == 7).count() as i64,
            n.div_ceil(chunk) as i64
                + (n - (0..n).filter(|i| i % 50 == 7).count())
                    .div_ceil(relaylog::store::pgevents::BLOCK_EVENTS) as i64
        )
    );
    // The events with neither an upstream status (the even-numbered) nor a receipt
    // (all but every third), on both days.
    assert_eq!(
        nulls,
        2 * (0..n).filter(|i| i % 2 == 0 && i % 3 != 0).count() as i64
    );
    // Every record's account, address and originator tags are in a posting of its
    // day holding its id (the
    // one-statement batches', the COPY's, the helper connection's half too), and the
    // postings hold no other id.
    let tags = "CROSS JOIN LATERAL (VALUES (1::smallint, r.account_ix), (2::smallint, r.ip_ix), \
                (3::smallint, r.originator_ix)) AS x(kind, tag)";
    let (missing, tagged, listed): (i64, i64, i64) = {
        let r = db
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM relaylog.record r {tags} WHERE x.tag IS NOT NULL \
                     AND NOT EXISTS (SELECT 1 FROM relaylog.posting p WHERE p.part = r.part \
                     AND p.node = r.node AND p.kind = x.kind AND p.bucket = r.bucket AND p.tag = x.tag \
                     AND r.id = ANY(p.ids))), \
                     (SELECT count(*) FROM relaylog.record r {tags} WHERE x.tag IS NOT NULL), \
                     (SELECT coalesce(sum(cardinality(ids)), 0) FROM relaylog.posting)::bigint"
                ),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(missing, 0);
    // A day's table made by the writer keeps its ids uncompressed too.
    let storage: Vec<String> = db
        .query(
            "SELECT attstorage::text FROM pg_attribute a JOIN pg_inherits i ON i.inhrelid = a.attrelid \
             WHERE i.inhparent = 'relaylog.posting'::regclass AND a.attname = 'ids'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        storage.len() >= 2 && storage.iter().all(|s| s == "e"),
        "{storage:?}"
    );
    assert_eq!(
        tagged,
        2 * (2 * n as i64 + (0..n).filter(|i| i % 2 == 0).count() as i64)
    );
    assert_eq!(listed, tagged);
    // The rows' hashes and heads check out (no keys were made for these rows, which
    // `verify` reports as well: the values are not sealed under a partition's key).
    let (_, out) = common::cli(&config, &["verify"]);
    assert!(!out.contains("DAMAGED"), "{out}");
    for at in [yesterday, today] {
        assert!(
            out.contains(&format!("{}/n1  ok  {n} records, {n} outcomes", day(at))),
            "{out}"
        );
    }
}

/// The files of a directory, to put back later as they were.
fn files_of(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn put_back(files: &[(std::path::PathBuf, Vec<u8>)]) {
    for (path, bytes) in files {
        std::fs::write(path, bytes).unwrap();
    }
}

/// A node that answers from its journal (`store.acknowledge = "journal"`) loses
/// nothing to a crash after answering and before PostgreSQL took the rows, and writes
/// nothing twice after one between PostgreSQL's commit and the journal letting go of
/// them: each partition records, in the transaction that writes a frame's rows, the
/// last frame it holds. A node that answers from the database puts a journal such a
/// run left into the database before it opens. The trees verify throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_rows_go_into_postgres_once_whenever_the_crash_falls() {
    use relaylog::store::journal::{EntryRef, Journal};
    use relaylog::store::pgstore::ONE_STATEMENT_ROWS;
    let Some(pg) = Cluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lines = pg.store_lines(dir.path(), "journaled", "n1");
    let text = |ack: &str| {
        let store = format!("{lines}\nacknowledge = \"{ack}\"\n");
        common::config_text(dir.path(), "kannel", None, "", &store)
    };
    let config = common::write_config(dir.path(), &text("journal"));
    let cfg = relaylog::config::Config::load(&config).unwrap().store;
    common::init_store(&cfg);
    let noon = today_noon();
    let clock = relaylog::clock::ManualClock::new(noon);
    let journal_dir = cfg.path.join(relaylog::store::JOURNAL_DIR);
    let count = |cfg: &relaylog::config::StoreConfig, account: &str| {
        common::query_store_cfg(cfg, IndexKind::Account, account).len()
    };
    let verified = || {
        let out = common::cli_ok(&config, &["verify"]);
        assert!(!out.contains("damage"), "{out}");
    };
    // Why a store with `cfg` does not open.
    let refused_open = |cfg: &relaylog::config::StoreConfig| {
        common::off_runtime(|| {
            relaylog::store::Store::open(
                cfg.clone(),
                std::sync::Arc::new(clock.clone()),
                std::sync::Arc::new(relaylog::metrics::Metrics::new()),
            )
            .err()
            .expect("refused")
            .to_string()
        })
    };

    // After PostgreSQL took them: the journal comes back as it was when the clients
    // were answered, and nothing goes in twice.
    let opened = common::off_runtime(|| common::open_store(&cfg, &clock));
    let rec = opened.recorder();
    for i in 0..5 {
        let sub = common::one_recipient(&rec, rec.now() + i, "a", "+31612345678");
        rec.record(&sub).await.unwrap();
    }
    let answered = files_of(&journal_dir);
    assert!(
        answered.iter().any(|(_, bytes)| bytes.len() > 64),
        "answered from the journal"
    );
    opened.close().await;
    assert_eq!(count(&cfg, "a"), 5);
    put_back(&answered);
    let opened = common::off_runtime(|| common::open_store(&cfg, &clock));
    opened.recorder().barrier().await.unwrap();
    opened.close().await;
    assert_eq!(count(&cfg, "a"), 5, "not written twice");
    verified();

    // Before PostgreSQL took them: a frame of rows of two days, appended while no
    // writer runs, goes in before the store opens. Today's share is large enough to
    // go in by COPY, the frame recorded beside it.
    let opened = common::off_runtime(|| common::open_store(&cfg, &clock));
    let rec = opened.recorder();
    // Off the runtime: the next day's key is read from the database.
    let sealed: Vec<_> = common::off_runtime(|| {
        let big =
            (0..ONE_STATEMENT_ROWS as i64 + 100).map(|i| (noon.timestamp_micros() + i, "big"));
        [(noon, "b"), (noon + chrono::Duration::days(1), "b")]
            .map(|(at, account)| (at.timestamp_micros(), account))
            .into_iter()
            .chain(big)
            .map(|(at, account)| {
                let sub = common::one_recipient(&rec, at, account, "+31687654321");
                rec.seal(&sub).unwrap()
            })
            .collect()
    });
    opened.close().await;
    let append = || {
        let (mut journal, _) = Journal::open(&journal_dir, false).unwrap();
        journal.start(0).unwrap();
        journal
            .append(sealed.iter().map(|(p, rows)| EntryRef::Records(*p, rows)))
            .unwrap();
    };
    append();
    let crashed = files_of(&journal_dir);
    // Not another node's to write: the journal names the node it is for.
    let other = {
        let lines = pg.store_lines(dir.path(), "journaled", "n2");
        let store = format!("{lines}\nacknowledge = \"journal\"\n");
        let text = common::config_text(dir.path(), "kannel", None, "", &store);
        relaylog::config::Config::parse(&text, &config)
            .unwrap()
            .store
    };
    let relaylog::config::Backend::Postgres(other_pg) = &other.backend else {
        panic!("a PostgreSQL store")
    };
    common::off_runtime(|| {
        relaylog::store::pgstore::init(&other, other_pg, chrono::Utc::now().timestamp_micros())
            .unwrap()
    });
    let refused = refused_open(&other);
    assert!(
        refused.contains("rows journaled for postgres node n1, not for postgres node n2"),
        "{refused}"
    );
    let opened = common::off_runtime(|| common::open_store(&cfg, &clock));
    assert_eq!(count(&cfg, "b"), 2, "in before the store opens");
    assert_eq!(count(&cfg, "big"), ONE_STATEMENT_ROWS + 100);
    opened.close().await;
    put_back(&crashed);
    let opened = common::off_runtime(|| common::open_store(&cfg, &clock));
    opened.close().await;
    assert_eq!(count(&cfg, "b"), 2, "each day's row once");
    assert_eq!(
        count(&cfg, "big"),
        ONE_STATEMENT_ROWS + 100,
        "COPY's rows once"
    );
    verified();

    // A node that answers from the database takes in what such a run left first.
    append();
    assert!(relaylog::store::journal::needs_recovery(&journal_dir).unwrap());
    let by_database = relaylog::config::Config::parse(&text("database"), &config)
        .unwrap()
        .store;
    let opened = common::off_runtime(|| common::open_store(&by_database, &clock));
    assert!(!relaylog::store::journal::needs_recovery(&journal_dir).unwrap());
    assert_eq!(
        count(&by_database, "b"),
        4,
        "the frame of a new journal run"
    );
    assert_eq!(count(&by_database, "big"), 2 * (ONE_STATEMENT_ROWS + 100));
    let rec = opened.recorder();
    let sub = common::one_recipient(&rec, rec.now(), "c", "+31611111111");
    rec.record(&sub).await.unwrap();
    assert!(
        !relaylog::store::journal::needs_recovery(&journal_dir).unwrap()
            && files_of(&journal_dir)
                .iter()
                .all(|(_, bytes)| bytes.len() <= 64),
        "answered from the database: no journal written"
    );
    opened.close().await;
    assert_eq!(count(&by_database, "c"), 1);
    verified();

    // A journal directory restored from a backup (the first run's: its epoch and
    // segments behind the database's frames) numbers its new frames above what the
    // database holds, not among them, where they would be taken for frames it holds
    // and never written.
    for (path, _) in files_of(&journal_dir) {
        std::fs::remove_file(path).unwrap();
    }
    put_back(&answered);
    let opened = common::off_runtime(|| common::open_store(&cfg, &clock));
    let rec = opened.recorder();
    for i in 0..3 {
        let sub = common::one_recipient(&rec, rec.now() + i, "late", "+31612345678");
        rec.record(&sub).await.unwrap();
    }
    opened.close().await;
    assert_eq!(count(&cfg, "late"), 3, "recorded");

    // A row raised in the database alone (its tag no longer verifies) is not taken
    // at its word: the node does not start, rather than skip rows or stop writing them.
    let raise = |by: &str| {
        pg.batch(
            "journaled",
            &format!("UPDATE relaylog.journal_frame SET frame = frame {by} (1::bigint << 50)"),
        )
    };
    raise("+");
    let refused = refused_open(&cfg);
    assert!(refused.contains("its tag does not verify"), "{refused}");
    assert!(
        refused.contains("DELETE FROM relaylog.journal_frame WHERE part = "),
        "{refused}"
    );
    let (ok, out) = common::cli(&config, &["check-config"]);
    assert!(!ok && out.contains("its tag does not verify"), "{out}");
    raise("-");
    // Met while the node runs (a partition the writer opens after the change): that
    // partition's rows are refused, kept in the journal, and go in once the row is
    // put right.
    let opened = common::off_runtime(|| common::open_store(&cfg, &clock));
    let rec = opened.recorder();
    raise("+");
    let tomorrow = (noon + chrono::Duration::days(1)).timestamp_micros();
    let sub = common::one_recipient(&rec, tomorrow, "runtime", "+31612345678");
    assert!(rec.record(&sub).await.is_ok(), "answered from the journal");
    let barrier = rec.barrier().await;
    assert!(
        barrier
            .as_ref()
            .is_err_and(|e| e.to_string().contains("its tag does not verify")),
        "{barrier:?}"
    );
    raise("-");
    rec.barrier().await.unwrap();
    opened.close().await;
    assert_eq!(count(&cfg, "runtime"), 1, "in once the row is right");
    verified();
}

/// Noon today (UTC): a partition that is open, with room on both sides of it.
fn today_noon() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
        .date_naive()
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc()
}

/// A database as an earlier relaylog left it (schema version 4: outcome events in
/// rows, the blind indexes four B-trees on `record`, a closed day's by-tag indexes),
/// upgraded by `init`'s migrations: the day gets its outcome blocks' and postings'
/// tables, postings are made of the records already there (one list a node, kind,
/// bucket and tag, its ids ascending) for accounts, addresses and originators, their
/// B-trees go (the recipients' stay), and the closed day is to be indexed again.
#[test]
fn an_upgrade_makes_postings_of_the_records_already_there() {
    use relaylog::pg::schema;
    let Some(pg) = Cluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    pg.store_lines(dir.path(), "upgrade", "n1");
    let mut db = pg.client("upgrade");
    let now = chrono::Utc::now().timestamp_micros();
    let applied = schema::migrate_to(&mut db, now, 4).unwrap();
    assert_eq!((applied.from, applied.to), (0, 4));
    let day = relaylog::store::partition::PartitionId::parse("2026-11-02").unwrap();
    let (part, end) = (schema::part(day), schema::part(day.next()));
    db.batch_execute(&format!(
        "INSERT INTO relaylog.partition (name, part, end_part, created_us, indexed_us) \
         VALUES ('2026-11-02', {part}, {end}, 1, 2);
         CREATE TABLE relaylog.record_2026_11_02 PARTITION OF relaylog.record FOR VALUES FROM ({part}) TO ({end});
         CREATE TABLE relaylog.outcome_2026_11_02 PARTITION OF relaylog.outcome FOR VALUES FROM ({part}) TO ({end});
         CREATE INDEX record_2026_11_02_recipient_ix_tag ON relaylog.record_2026_11_02 (recipient_ix);
         CREATE INDEX record_2026_11_02_account_ix_tag ON relaylog.record_2026_11_02 (account_ix);"
    ))
    .unwrap();
    // Node 1's records 1–6 (two buckets), node 2's 1–2: one account and address each
    // node, an originator on the even ids, three recipients.
    let records: Vec<(i16, i64)> = (1..=6).map(|id| (1, id)).chain([(2, 1), (2, 2)]).collect();
    let bucket = |id: i64| if id <= 4 { 100i64 } else { 101 };
    for &(node, id) in &records {
        let originator = (id % 2 == 0).then_some(9i64);
        db.execute(
            "INSERT INTO relaylog.record (part, node, id, submission, ordinal, at_us, bucket, protocol, \
             service, recipient_form, segments, account_ix, ip_ix, originator_ix, recipient_ix, sealed) \
             VALUES ($1, $2, $3, $3, 0, $3, $4, 0, 0, 0, 1, $5, $6, $7, $8, '\\x00')",
            &[
                &part,
                &node,
                &id,
                &bucket(id),
                &(7 + i64::from(node) * 100),
                &(8 + i64::from(node) * 100),
                &originator,
                &(10 + id % 3),
            ],
        )
        .unwrap();
    }
    // Not while a node is writing (its writer's lock held): it would write rows the
    // migration does not see.
    db.execute(
        "INSERT INTO relaylog.node (id, name, public_key, registered_us) VALUES (1, 'n1', '\\x00', 0)",
        &[],
    )
    .unwrap();
    let mut serving = pg.client("upgrade");
    serving
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&(schema::lock::NODE_BASE + 1)],
        )
        .unwrap();
    let refused = schema::migrate(&mut db, now).unwrap_err().to_string();
    assert!(
        refused.contains("node(s) n1 are running") && refused.contains("relaylog init"),
        "{refused}"
    );
    assert_eq!(schema::version(&mut db).unwrap(), 4, "nothing applied");
    drop(serving);
    let applied = schema::migrate(&mut db, now).unwrap();
    assert_eq!((applied.from, applied.to), (4, schema::VERSION));

    // What the postings must be, made here from the same rows.
    let mut want: std::collections::BTreeMap<(i16, i16, i64, i64), Vec<i64>> = Default::default();
    for &(node, id) in &records {
        let tags = [
            (1i16, Some(7 + i64::from(node) * 100)),
            (2, Some(8 + i64::from(node) * 100)),
            (3, (id % 2 == 0).then_some(9)),
        ];
        for (kind, tag) in tags {
            if let Some(tag) = tag {
                want.entry((node, kind, bucket(id), tag))
                    .or_default()
                    .push(id);
            }
        }
    }
    let found: std::collections::BTreeMap<(i16, i16, i64, i64), Vec<i64>> = db
        .query(
            "SELECT node, kind, bucket, tag, ids FROM relaylog.posting WHERE part = $1",
            &[&part],
        )
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2), r.get(3)), r.get(4)))
        .collect();
    assert_eq!(found, want);
    let exists = |db: &mut postgres::Client, name: &str| -> bool {
        db.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .unwrap()
            .get(0)
    };
    assert!(exists(&mut db, "relaylog.outcome_block_2026_11_02"));
    assert!(exists(
        &mut db,
        "relaylog.posting_2026_11_02_bucket_kind_tag_idx"
    ));
    assert!(!exists(
        &mut db,
        "relaylog.record_2026_11_02_account_ix_tag"
    ));
    let record_indexes: Vec<String> = db
        .query(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'relaylog' AND tablename = 'record_2026_11_02'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // The recipients' B-trees stay: the parent's and the closed day's.
    let mut record_indexes = record_indexes;
    record_indexes.sort();
    assert_eq!(
        record_indexes,
        [
            "record_2026_11_02_bucket_recipient_ix_idx",
            "record_2026_11_02_pkey",
            "record_2026_11_02_recipient_ix_tag"
        ]
    );
    let storage: String = db
        .query_one(
            "SELECT attstorage::text FROM pg_attribute WHERE attrelid = 'relaylog.posting_2026_11_02'::regclass \
             AND attname = 'ids'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(storage, "e", "the ids are stored uncompressed");
    let indexed: Option<i64> = db
        .query_one(
            "SELECT indexed_us FROM relaylog.partition WHERE part = $1",
            &[&part],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        indexed, None,
        "the closed day is indexed again, its postings now"
    );
}
