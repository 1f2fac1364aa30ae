//! The real `relaylog` binary: canaries never leak, a kill -9 loses nothing that was
//! forwarded, configuration and key errors are clear, `query` works from the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use http::Method;
use relaylog::config::Config;
use relaylog::store::IndexKind;

/// Single-operator: these tests read with `query`, `hold` and `audit list` without an
/// officer's login (which tests/compliance.rs tests).
fn plain_config(dir: &Path, upstream: Option<&str>) -> PathBuf {
    let text = config_text(dir, "kannel", upstream, "", "") + SINGLE_OPERATOR;
    write_config(dir, &text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_never_leave_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let config = plain_config(dir.path(), None);
    let init = bin()
        .args(["--config", config.to_str().unwrap(), "init"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let served = Served::start(dir.path(), &config);
    let url = served.addr("listening");
    let admin = served.addr("admin listening");
    let log = String::from_utf8_lossy(&served.output()).into_owned();
    let first = log.lines().next().unwrap_or_default();
    assert!(
        first.contains("built-in kannel gateway simulator"),
        "first log line: {first}"
    );

    let c = client();
    let mut canaries = Vec::new();
    let sendsms = format!("{url}/cgi-bin/sendsms");
    for form in 0..4 {
        let (text, password) = (
            format!("text{}", random_token(24)),
            format!("pw{}", random_token(24)),
        );
        // Random digits: a round number could turn up in a metric's float (a sum of
        // seconds printed as 0.0031610000000000003) and fail the test by chance.
        let digits: String = random_token(8)
            .bytes()
            .map(|b| char::from(b'0' + (b - b'a') % 10))
            .collect();
        let number = format!("+316{form}{}", &digits[1..]);
        let (s, reply) = match form {
            0 => {
                get(
                    &c,
                    &format!(
                        "{sendsms}?username=canary&password={password}&to={}&text={text}",
                        number.replace('+', "%2B")
                    ),
                )
                .await
            }
            1 => {
                let body = format!(
                    "username=canary&password={password}&to={}&text={text}",
                    number.replace('+', "%2B")
                );
                send(
                    &c,
                    Method::POST,
                    &sendsms,
                    &[("content-type", "application/x-www-form-urlencoded")],
                    body,
                )
                .await
            }
            2 => {
                let h = [
                    ("content-type", "text/plain"),
                    ("x-kannel-username", "canary"),
                    ("x-kannel-password", password.as_str()),
                    ("x-kannel-to", number.as_str()),
                ];
                send(&c, Method::POST, &sendsms, &h, text.clone()).await
            }
            _ => {
                let xml = format!(
                    "<message><submit><da><number>{number}</number></da><ud>{text}</ud><from><username>canary</username><password>{password}</password></from></submit></message>"
                );
                send(
                    &c,
                    Method::POST,
                    &sendsms,
                    &[("content-type", "text/xml")],
                    xml,
                )
                .await
            }
        };
        assert_eq!(s.as_u16(), 202, "form {form}: {reply}");
        canaries.extend([text, password, number.clone(), number[1..].to_string()]);
    }
    let metrics = wait_metric(&admin, "relaylog_records_written_total 4").await;

    // Query from the CLI while serve is running.
    let q = bin()
        .args([
            "--config",
            config.to_str().unwrap(),
            "query",
            "--purpose",
            "operations",
            "--account",
            "canary",
        ])
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    assert_eq!(String::from_utf8_lossy(&q.stdout).lines().count(), 4);
    // The query is in the audit log, with its count and without the account in clear.
    let (ok, audit) = cli(&config, &["audit", "list"]);
    assert!(
        ok && audit.contains("\tquery\t") && audit.contains("\"records\":4"),
        "{audit}"
    );
    assert!(!audit.contains("canary"), "{audit}");

    let (status, output) = served.terminate();
    assert!(status.success(), "serve exited with {status}");
    assert!(contains(&output, b"last batch committed"));
    assert!(
        contains(&output, b"relayed"),
        "debug access log was on, so the leak check saw it"
    );
    // Nor, at debug, a database client's bound values (PostgreSQL).
    assert!(!contains(&output, b"with parameters"));
    // Everything at rest: the files under the data directory (the store, the keys,
    // the ledger) and, on PostgreSQL, every table's rows.
    let stored = stored_bytes(dir.path());
    assert!(stored.iter().any(|(name, _)| name.contains("keys")));
    for canary in &canaries {
        let needle = canary.as_bytes();
        assert!(
            !contains(&output, needle),
            "canary {canary} in the process output"
        );
        assert!(
            !contains(metrics.as_bytes(), needle),
            "canary {canary} in /metrics: {:?}",
            metrics
                .lines()
                .filter(|l| l.contains(canary.as_str()))
                .collect::<Vec<_>>()
        );
        for (name, bytes) in &stored {
            assert!(!contains(bytes, needle), "canary {canary} in {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_forwarded_message() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start("0: Accepted for delivery").await;
    let config = plain_config(dir.path(), Some(&up.url()));
    init_keys(dir.path());
    let served = Served::start(dir.path(), &config);
    let url = served.addr("listening");

    // 16 clients send numbered messages until the relay is killed under them.
    let mut clients = Vec::new();
    for worker in 0..16u64 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let c = client();
            for i in 0..10_000u64 {
                let n = 31_600_000_000 + worker * 100_000 + i;
                let target =
                    format!("{url}/cgi-bin/sendsms?username=crash&password=pw&to=%2B{n}&text=x");
                let req = http::Request::get(target).body(Default::default()).unwrap();
                if c.request(req).await.is_err() {
                    break;
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while up.count() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unsafe_kill(served.child.id(), "KILL");
    drop(served);
    for c in clients {
        let _ = c.await;
    }
    let forwarded: Vec<String> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            let q = r.path_and_query.split_once('?').unwrap().1;
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "to")
                .unwrap()
                .1
                .into_owned()
        })
        .collect();
    assert!(
        forwarded.len() >= 300,
        "load did not get going: {}",
        forwarded.len()
    );

    // Restart on the same store; then look every forwarded message up.
    let again = Served::start(dir.path(), &config);
    again.addr("listening");
    let cfg = Config::load(&config).unwrap();
    let stored: std::collections::HashSet<String> = query_store(&cfg, IndexKind::Account, "crash")
        .into_iter()
        .map(|f| f.fields.recipient.value)
        .collect();
    let missing: Vec<_> = forwarded.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "{} forwarded message(s) have no record, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let (status, _) = again.terminate();
    assert!(status.success());
    // The rows the killed writer had not yet signed were signed by the next one.
    let (ok, text) = cli(&config, &["verify"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(" ok ") && text.contains("0 problem(s)"),
        "{text}"
    );

    // The CLI reads what was committed after the process is gone.
    let q = bin()
        .args([
            "--config",
            config.to_str().unwrap(),
            "query",
            "--purpose",
            "operations",
            "--recipient",
            &forwarded[0],
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let csv = String::from_utf8_lossy(&q.stdout);
    assert!(csv.starts_with("time,protocol,"), "{csv}");
    assert!(csv.lines().nth(1).unwrap().contains(&forwarded[0]), "{csv}");
}

#[test]
fn configuration_and_key_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[store]\nretension = \"13 months\"\n").unwrap();
    let (ok, text) = cli(&bad, &["check-config"]);
    assert!(!ok && text.contains("retension"), "{text}");
    let (ok, text) = cli(&bad, &["serve"]);
    assert!(!ok && text.contains("retension"), "{text}");

    let missing = dir.path().join("missing.toml");
    let (ok, text) = cli(&missing, &["serve"]);
    assert!(!ok && text.contains("cannot read config file"), "{text}");

    let config = plain_config(dir.path(), Some("http://127.0.0.1:9"));
    let (ok, text) = cli(&config, &["serve"]);
    assert!(
        !ok && text.contains("relaylog init"),
        "missing master key: {text}"
    );
    let (ok, text) = cli(&config, &["check-config"]);
    assert!(!ok && text.contains("relaylog init"), "{text}");

    let (ok, text) = cli(&config, &["init"]);
    assert!(ok, "{text}");
    let (ok, text) = cli(&config, &["init"]);
    if on_postgres() {
        // Safe to run again on a database: an upgrade, keys kept.
        assert!(ok && text.contains("schema at version"), "{text}");
        assert!(!text.contains("NOTICE"), "{text}");
    } else {
        assert!(!ok && text.contains("never overwrites"), "{text}");
    }
    let (ok, text) = cli(&config, &["check-config"]);
    assert!(ok && text.contains(": ok"), "{text}");

    // Keys others may read, and key directories others may write to: `serve` does
    // not start, `check-config` says why.
    let keys = dir.path().join("keys");
    let set = |p: &std::path::Path, mode| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    for (path, mode, kept, says) in [
        (keys.join("signing.key"), 0o644, 0o600, "signing key"),
        (keys.join("master.key"), 0o640, 0o600, "master key"),
        (keys.clone(), 0o777, 0o700, "writable by group or others"),
    ] {
        set(&path, mode);
        for command in ["check-config", "serve"] {
            let (ok, text) = cli_refused_within(&config, &[command], 30);
            assert!(
                !ok && text.contains(says) && text.contains(&path.display().to_string()),
                "{command}: {text}"
            );
        }
        set(&path, kept);
    }
    let (ok, text) = cli(&config, &["check-config"]);
    assert!(ok && text.contains(": ok"), "{text}");

    // The admin listener's TLS files are checked too (config_text ends with [admin]).
    let tls = dir.path().join("admin-tls.toml");
    let admin = format!(
        "{}tls-cert = \"{d}/nope.crt\"\ntls-key = \"{d}/nope.key\"\n",
        std::fs::read_to_string(&config).unwrap(),
        d = dir.path().display()
    );
    std::fs::write(&tls, admin).unwrap();
    let (ok, text) = cli(&tls, &["check-config"]);
    assert!(
        !ok && text.contains("admin") && text.contains("nope.crt"),
        "{text}"
    );

    let (ok, text) = cli(
        &config,
        &[
            "query",
            "--purpose",
            "operations",
            "--recipient",
            "0612345678",
            "--since",
            "yesterday",
        ],
    );
    assert!(!ok && text.contains("RFC 3339"), "{text}");
    let (ok, text) = cli(&config, &["query"]);
    assert!(!ok && text.contains("--recipient"), "{text}");
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("mock.err");
    let mut child = bin()
        .args([
            "--log-format",
            "json",
            "mock-gateway",
            "--listen",
            "127.0.0.1:0",
            "--api",
            "jasmin",
        ])
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&err).unwrap_or_default();
        if text.contains("simulator listening") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let first = text.lines().next().expect("a log line");
    let v: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(v["level"], "INFO");
    assert!(
        v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("simulator listening"),
        "{v}"
    );
}

#[test]
fn serve_expires_old_partitions_at_start_up() {
    if sqlite_only(
        "serve refuses a database `bench store` filled (tests/postgres.rs expires on PostgreSQL)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = plain_config(dir.path(), Some("http://127.0.0.1:9"));
    let run = |args: &[&str]| cli_ok(&config, args);
    run(&["init"]);
    // Three days of history two years ago, and one day now.
    let report = run(&[
        "bench",
        "store",
        "--records",
        "300",
        "--days",
        "3",
        "--start",
        "2024-06-01",
        "--quiet",
    ]);
    assert!(report.contains("300 records over 3 day(s)"), "{report}");
    let today = chrono::Utc::now().date_naive().to_string();
    run(&[
        "bench",
        "store",
        "--records",
        "10",
        "--start",
        &today,
        "--quiet",
    ]);
    let store = dir.path().join("store");
    assert!(store.join("2024-06-01.sqlite").exists());
    let dry = run(&["expire", "--dry-run"]);
    assert!(
        dry.contains("would remove 2024-06-01 (100 records)"),
        "{dry}"
    );
    assert!(
        store.join("2024-06-01.sqlite").exists(),
        "a dry run removes nothing"
    );

    let served = Served::start(dir.path(), &config);
    served.addr("listening");
    let (status, output) = served.terminate();
    assert!(
        status.success(),
        "{status:?}: {}",
        String::from_utf8_lossy(&output)
    );
    let log = String::from_utf8_lossy(&output);
    for day in ["2024-06-01", "2024-06-02", "2024-06-03"] {
        assert!(
            !store.join(format!("{day}.sqlite")).exists(),
            "{day} expired at start-up"
        );
        assert!(
            !dir.path().join(format!("keys/keyring/{day}.key")).exists(),
            "{day} keys shredded"
        );
        assert!(
            log.contains(&format!("partition={day}")),
            "expiry logs {day}: {log}"
        );
    }
    assert!(
        store.join(format!("{today}.sqlite")).exists(),
        "today stays"
    );
    let verify = run(&["verify"]);
    assert!(
        verify.contains(&format!("{today}  ok  10 records")),
        "{verify}"
    );
}

#[test]
fn holds_from_the_command_line_keep_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let config = plain_config(dir.path(), Some("http://127.0.0.1:9"));
    let run = |args: &[&str]| cli(&config, args);
    assert!(run(&["init"]).0);
    assert!(
        run(&[
            "bench",
            "store",
            "--records",
            "20",
            "--days",
            "2",
            "--start",
            "2024-06-01",
            "--quiet"
        ])
        .0
    );
    let (ok, text) = run(&[
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
    ]);
    assert!(ok, "{text}");
    let (_, list) = run(&["hold", "list"]);
    assert!(list.contains("NL-7") && list.contains("order 17"), "{list}");
    let (ok, text) = run(&["expire"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("removed  2024-06-01") && text.contains("held     2024-06-02 (cases: NL-7)"),
        "{text}"
    );
    let (ok, text) = run(&["hold", "release", "--case", "NL-7"]);
    assert!(ok, "{text}");
    let (ok, text) = run(&["hold", "release", "--case", "NL-7"]);
    assert!(!ok && text.contains("has no hold"), "{text}");
    let (_, text) = run(&["expire"]);
    assert!(text.contains("removed  2024-06-02"), "{text}");
    let (ok, text) = run(&[
        "hold",
        "add",
        "--case",
        "X",
        "--since",
        "2024-06-03",
        "--until",
        "2024-06-01",
        "--reason",
        "r",
    ]);
    assert!(!ok && text.contains("window is empty"), "{text}");
}

/// Issue 10, as a new user met it: two accounts' messages, `serve` stopped (by SIGTERM,
/// or by `kill -9` with rows still unsigned), the second account offboarded, `serve`
/// again with a third account's messages. Before ids were the writer's, SQLite gave
/// the erased ids out again and `verify` reported a clean store as DAMAGED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offboarding_then_more_traffic_verifies_clean_after_sigterm_and_kill_9() {
    for stop in ["TERM", "KILL"] {
        let dir = tempfile::tempdir().unwrap();
        let up = CaptureUpstream::start("0: Accepted for delivery").await;
        let config = plain_config(dir.path(), Some(&up.url()));
        init_keys(dir.path());
        let c = client();
        // As a person sends them: apart, so that each gets a signed head of its own...
        let send = |url: String, user: &'static str, n: u32, pause: u64| {
            let c = c.clone();
            async move {
                let (s, _) = get(&c, &sendsms(&url, user, &number(n))).await;
                assert_eq!(s.as_u16(), 202, "{user}");
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        };
        let served = Served::start(dir.path(), &config);
        let url = served.addr("listening");
        // ...but aay's two back to back, and the stop right after: with kill -9 the
        // last rows are still waiting for their head (signed at most every 100 ms).
        for (user, n, pause) in [
            ("bee", 1, 250),
            ("bee", 2, 250),
            ("aay", 3, 0),
            ("aay", 4, 0),
        ] {
            send(url.clone(), user, n, pause).await;
        }
        let offboard_aay = |officer: &str, totp: &str, password: &str| {
            let out = dir.path().join("returned");
            let args = [
                "account",
                "offboard",
                "aay",
                "--purpose",
                "contract-end",
                "--out",
                out.to_str().unwrap(),
            ];
            let login = ["--officer", officer, "--totp", totp];
            let all: Vec<&str> = args.iter().chain(&login).copied().collect();
            cli_with_input(&config, &all, password)
        };
        // Not while serve runs: rows it put in after the erasure would outlive it
        // (SQLite; a PostgreSQL node commits before it answers).
        let (ok, out) = offboard_aay("nobody", "000000", "x\n");
        if !on_postgres() {
            assert!(!ok && out.contains("serve is running"), "{stop}: {out}");
        }
        if stop == "TERM" {
            let (status, _) = served.terminate();
            assert!(status.success());
        } else {
            unsafe_kill(served.child.id(), stop);
            drop(served);
        }

        let root = add_officer(&config, "root1", "admin");
        let (ok, out) = offboard_aay("root1", &totp_now(&root), "root1-long-password\n");
        assert!(ok && out.contains("2 records"), "{stop}: {out}");

        let served = Served::start(dir.path(), &config);
        let url = served.addr("listening");
        send(url.clone(), "cee", 5, 250).await;
        send(url, "cee", 6, 0).await;
        let (status, _) = served.terminate();
        assert!(status.success());

        let (ok, text) = cli(&config, &["verify"]);
        assert!(ok && text.contains("0 problem(s)"), "{stop}: {text}");
        assert!(!text.contains("DAMAGED"), "{stop}: {text}");
        let cfg = Config::load(&config).unwrap();
        for (account, n) in [("bee", 2), ("aay", 0), ("cee", 2)] {
            assert_eq!(
                query_store(&cfg, IndexKind::Account, account).len(),
                n,
                "{stop}: {account}"
            );
        }
    }
}

/// `serve` compacts the partitions whose day is over, at start-up; a query answers
/// the same before and after; `verify` checks what compaction built; `bench query`
/// looks up over them and reports in JSON.
#[test]
fn serve_compacts_closed_partitions_and_lookups_answer_the_same() {
    if sqlite_only("compaction's filter files; serve refuses a database `bench store` filled") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = plain_config(dir.path(), Some("http://127.0.0.1:9"));
    let run = |args: &[&str]| cli_ok(&config, args);
    run(&["init"]);
    let start = (chrono::Utc::now() - chrono::Duration::days(4))
        .date_naive()
        .to_string();
    let today = chrono::Utc::now().date_naive().to_string();
    run(&[
        "bench",
        "store",
        "--records",
        "300",
        "--days",
        "3",
        "--start",
        &start,
        "--recipients-pool",
        "50",
        "--quiet",
    ]);
    let lookup = || {
        let mut lines: Vec<String> = run(&[
            "query",
            "--purpose",
            "operations",
            "--recipient",
            "+31610000007",
            "--since",
            &start,
            "--until",
            &today,
        ])
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(str::to_owned)
        .collect();
        lines.sort();
        lines
    };
    let before = lookup();
    assert!(!before.is_empty());

    let store = dir.path().join("store");
    let filters = || {
        std::fs::read_dir(&store)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".sqlite-filter")
            })
            .count()
    };
    assert_eq!(filters(), 0);
    let served = Served::start(dir.path(), &config);
    served.addr("listening");
    let began = Instant::now();
    while filters() < 3 && began.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, output) = served.terminate();
    assert!(status.success());
    assert_eq!(filters(), 3, "{}", String::from_utf8_lossy(&output));
    assert_eq!(lookup(), before);
    let verify = run(&["verify"]);
    assert!(!verify.contains("INDEX"), "{verify}");
    assert!(
        verify.contains("3 partition(s) verified, 0 problem(s)"),
        "{verify}"
    );

    let report = run(&[
        "bench",
        "query",
        "--days",
        "3",
        "--start",
        &start,
        "--recipients-pool",
        "50",
        "--lookups",
        "20",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["partitions"], 3, "{report}");
    assert_eq!(
        report["compacted_partitions"], 0,
        "serve compacted them: {report}"
    );
    assert_eq!(report["warm"]["lookups"], 20, "{report}");
    assert!(
        report["warm"]["mean_matches"].as_f64().unwrap() > 1.0,
        "{report}"
    );
}

/// SIGHUP under load: the listener's certificate is renewed (new handshakes present
/// the new one), its per-peer limit lowered (new connections over it are refused), and
/// the connections already open go on relaying without a failure. A reload that would
/// need a restart is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_renews_the_certificate_under_load() {
    use http_body_util::{BodyExt, Empty};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let (old, tls) = cert_files(dir.path(), "tls");
    let text = |per_peer: usize, listen: &str| {
        config_text(
            dir.path(),
            "kannel",
            None,
            &format!("{tls}max-connections-per-peer = {per_peer}\n"),
            "",
        )
        .replace(
            "listen = \"127.0.0.1:0\"\nprofile",
            &format!("listen = \"{listen}\"\nprofile"),
        ) + SINGLE_OPERATOR
    };
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let config = write_config(dir.path(), &text(64, &listen));
    init_keys(dir.path());
    let served = Served::start(dir.path(), &config);
    served.addr("listening");
    let admin = served.addr("admin listening");
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    // The value of the metric line `name` (0 when absent).
    let metric = |name: &'static str| {
        let admin = admin.clone();
        async move {
            let text = get(&client(), &format!("{admin}/metrics")).await.1;
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map_or(0, |v| v.trim().parse::<u64>().unwrap())
        }
    };
    const PER_PEER: &str =
        "relaylog_connections_refused_total{listener=\"sms\",reason=\"max_connections_per_peer\"} ";

    // Four clients, each on one kept-alive TLS connection, sending until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for c in 0..4u32 {
        let tls = trusting(&old)
            .connect(
                name.clone(),
                tokio::net::TcpStream::connect(addr).await.unwrap(),
            )
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let req = http::Request::get(format!(
                    "/cgi-bin/sendsms?username=load&password=pw&to=%2B3161{c}{n:06}&text=hi"
                ))
                .header("host", "localhost")
                .body(Empty::new())
                .unwrap();
                match sender.send_request(req).await {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.into_body().collect().await;
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    let wait_sent = |at_least: u64| {
        let sent = sent.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while sent.load(Ordering::Relaxed) < at_least {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_sent(200).await;

    // Renew the certificate and lower the per-peer limit below what is open; reload.
    let (new, _) = cert_files(dir.path(), "tls");
    std::fs::write(&config, text(2, &listen)).unwrap();
    unsafe_kill(served.child.id(), "HUP");
    // Waits (up to 10 s) for `what` in the log.
    let logged = |what: &'static str| {
        let served = &served;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let log = String::from_utf8_lossy(&served.output()).into_owned();
                if log.contains(what) {
                    return;
                }
                assert!(Instant::now() < deadline, "`{what}` not logged:\n{log}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    logged("reloaded: certificates read again").await;
    let before = sent.load(Ordering::Relaxed);
    wait_sent(before + 200).await;

    // A fifth connection from this peer is over the new limit of 2.
    let over_the_limit = || async {
        let before = metric(PER_PEER).await;
        let fifth = trusting(&new)
            .connect(
                name.clone(),
                tokio::net::TcpStream::connect(addr).await.unwrap(),
            )
            .await;
        assert!(fifth.is_err());
        assert_eq!(
            metric(PER_PEER).await,
            before + 1,
            "refused for its peer's limit"
        );
    };
    over_the_limit().await;
    // New handshakes present the new certificate only.
    let from_other = |ip: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    };
    let (_, renewed) = trusting(&new)
        .connect(name.clone(), from_other("127.0.0.2").await)
        .await
        .expect("the renewed certificate is presented")
        .into_inner();
    assert_eq!(
        renewed.peer_certificates().unwrap()[0].as_ref(),
        new.cert.der().as_ref()
    );
    assert!(
        trusting(&old)
            .connect(name.clone(), from_other("127.0.0.3").await)
            .await
            .is_err(),
        "the old certificate is no longer presented"
    );

    // A change that needs a restart: refused, nothing applied, still serving.
    std::fs::write(&config, text(64, "127.0.0.1:1")).unwrap();
    unsafe_kill(served.child.id(), "HUP");
    logged("which needs a restart").await;
    let before = sent.load(Ordering::Relaxed);
    wait_sent(before + 100).await;
    let applied = metric("relaylog_reloads_total{result=\"applied\"} ").await;
    let refused = metric("relaylog_reloads_total{result=\"refused\"} ").await;
    assert_eq!((applied, refused), (1, 1));
    over_the_limit().await;

    // A certificate that does not load, beside a limit raised back to 64: nothing is
    // applied, not even the limit, and the renewed certificate stays in use.
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    std::fs::write(&config, text(64, &listen)).unwrap();
    unsafe_kill(served.child.id(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric("relaylog_reloads_total{result=\"refused\"} ").await < 2 {
        assert!(Instant::now() < deadline, "the reload was not refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    logged("its certificate").await;
    over_the_limit().await;
    trusting(&new)
        .connect(name.clone(), from_other("127.0.0.4").await)
        .await
        .expect("the renewed certificate is still presented");

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    let (status, out) = served.terminate();
    assert!(status.success(), "{}", String::from_utf8_lossy(&out));
}
