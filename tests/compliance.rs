//! Compliance officers and the audit log, through the binary.

mod common;

use common::*;

/// The audit log's actions, in order, and the whole log as text (to look for what must
/// not be in it), read from the ledger: `audit list` needs an admin's login, which
/// `reads_on_the_command_line_need_an_officer` tests.
fn audit_actions(config: &std::path::Path) -> (Vec<String>, String) {
    let entries = audit_entries(config.parent().unwrap());
    let actions = entries
        .iter()
        .map(|(_, action, _)| action.clone())
        .collect();
    let text = entries
        .iter()
        .map(|(actor, action, details)| format!("{actor}\t{action}\t{details}\n"))
        .collect();
    (actions, text)
}

#[test]
fn officers_are_added_listed_disabled_and_every_step_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(dir.path(), "kannel", None, "", ""));
    let (ok, out) = cli(&config, &["init"]);
    assert!(ok, "{out}");
    let password = "Tr0ub4dor&3 horse staple";

    // The first officer is an admin, who adds the others; it needs no login.
    let (ok, out) = cli_with_input(
        &config,
        &["officer", "add", "anna", "--role", "approver"],
        &format!("{password}\n"),
    );
    assert!(
        !ok && out.contains("first officer must be an admin"),
        "{out}"
    );
    let (ok, out) = cli_with_input(
        &config,
        &["officer", "add", "ada", "--role", "admin"],
        "short\n",
    );
    assert!(!ok && out.contains("at least 12 characters"), "{out}");
    let ada = add_officer(&config, "ada", "admin");
    // Every later one takes an admin's login: the admin's password first on standard
    // input, then the new officer's.
    let (ok, out) = cli_with_input(
        &config,
        &["officer", "add", "anna", "--role", "approver"],
        &format!("{password}\n"),
    );
    assert!(!ok && out.contains("--officer NAME --totp CODE"), "{out}");
    let as_admin = |admin: &str, seed: &[u8], steps, args: &[&str], more: &str| {
        let code = totp_ahead(seed, steps);
        let mut args = args.to_vec();
        args.extend(["--officer", admin, "--totp", &code]);
        cli_with_input(&config, &args, &format!("{admin}-long-password\n{more}"))
    };
    let (ok, out) = as_admin(
        "ada",
        &ada,
        0,
        &["officer", "add", "anna", "--role", "approver"],
        &format!("{password}\n"),
    );
    assert!(
        ok && out.contains("otpauth://totp/relaylog:anna?secret="),
        "{out}"
    );
    let (ok, out) = as_admin(
        "ada",
        &ada,
        1,
        &["officer", "add", "abe", "--role", "admin"],
        "abe-long-password\n",
    );
    assert!(ok, "{out}");
    let abe = seed_from(out.lines().find(|l| l.starts_with("otpauth://")).unwrap());
    // Disabling and listing officers take an admin's login too.
    let (ok, out) = cli(&config, &["officer", "disable", "anna"]);
    assert!(!ok && out.contains("--officer NAME --totp CODE"), "{out}");
    let (ok, out) = as_admin("abe", &abe, 0, &["officer", "disable", "anna"], "");
    assert!(ok, "{out}");
    let (ok, out) = as_admin("abe", &abe, 1, &["officer", "list"], "");
    assert!(ok && out.contains("anna\tapprover\tdisabled"), "{out}");

    let entries = audit_entries(dir.path());
    let steps: Vec<(&str, &str)> = entries
        .iter()
        .map(|(actor, action, _)| (actor.as_str(), action.as_str()))
        .collect();
    assert_eq!(
        steps[1..],
        [
            ("ada", "officer.add"),
            ("ada", "officer.add"),
            ("abe", "officer.disable"),
            ("abe", "officer.list")
        ]
    );
    assert_eq!(steps[0].1, "officer.add");
    let (ok, out) = cli(&config, &["audit", "verify"]);
    assert!(ok && out.contains("intact: 5 entries"), "{out}");

    // No password or TOTP seed in the clear anywhere under the data directory (or
    // in the database).
    for (name, bytes) in stored_bytes(dir.path()) {
        assert!(!contains(&bytes, password.as_bytes()), "{name}");
    }

    // Editing one entry breaks the chain, and verify says which.
    let edit = "UPDATE audit SET details = '{\"officer\":\"mallory\"}' WHERE seq = 1";
    tamper(dir.path(), Stored::Ledger, edit, edit);
    let (ok, out) = cli(&config, &["audit", "verify"]);
    assert!(!ok && out.contains("audit entry 1"), "{out}");
}

/// `case open` for the test request, with the officer's password on standard input.
fn open_case(
    config: &std::path::Path,
    officer: &str,
    request: &str,
    (since, until): (&str, &str),
    identifiers: &[&str],
) -> (bool, String) {
    let mut args = vec![
        "case",
        "open",
        "--officer",
        officer,
        "--authority",
        "Openbaar Ministerie",
        "--country",
        "NL",
        "--organisation",
        "OM-0042",
        "--request",
        request,
        "--legal-basis",
        "Sv 126n",
        "--order-ref",
        "RC 26/1234",
        "--order-date",
        "2026-11-20",
        "--deadline",
        "2026-12-04",
        "--since",
        since,
        "--until",
        until,
    ];
    args.extend_from_slice(identifiers);
    cli_with_input(config, &args, &format!("{officer}-long-password\n"))
}

/// Approvers anna and bob and officer carl (their TOTP seeds, in that order), and
/// case 1, opened by anna for `request` over the day of `now`.
fn officers_and_case(
    config: &std::path::Path,
    request: &str,
    now: chrono::DateTime<chrono::Utc>,
    identifiers: &[&str],
) -> [Vec<u8>; 3] {
    let seeds = [
        add_officer(config, "anna", "approver"),
        add_officer(config, "bob", "approver"),
        add_officer(config, "carl", "officer"),
    ];
    let day = now.date_naive().to_string();
    let (ok, out) = open_case(config, "anna", request, (&day, &day), identifiers);
    assert!(ok, "{out}");
    seeds
}

fn approve_case(config: &std::path::Path, id: i64, officer: &str, code: &str) -> (bool, String) {
    let id = id.to_string();
    cli_with_input(
        config,
        &["case", "approve", &id, "--officer", officer, "--totp", code],
        &format!("{officer}-long-password\n"),
    )
}

#[test]
fn a_case_is_opened_refused_to_its_opener_and_approved_by_another_approver() {
    let dir = tempfile::tempdir().unwrap();
    // Officers added without an admin's login (tested in officers_are_added_...).
    let text = config_text(dir.path(), "kannel", None, "", "") + SINGLE_OPERATOR;
    let config = write_config(dir.path(), &text);
    assert!(cli(&config, &["init"]).0);
    let anna = add_officer(&config, "anna", "approver");
    let _bob = add_officer(&config, "bob", "approver");
    let carl = add_officer(&config, "carl", "officer");
    let today = chrono::Utc::now().date_naive().to_string();
    let open = |officer: &str, request: &str, extra: &[&str]| {
        open_case(&config, officer, request, (&today, &today), extra)
    };
    // Bad input, each a clear error.
    let (ok, out) = open("carl", "2026-117", &["--recipient", "call me maybe"]);
    assert!(
        !ok && out.contains("recipient identifier is malformed"),
        "{out}"
    );
    let (ok, out) = open("carl", "2026-117", &[]);
    assert!(!ok && out.contains("at least one identifier"), "{out}");
    let (ok, out) = open_case(
        &config,
        "carl",
        "2026-116",
        ("2020-01-01", "2020-02-01"),
        &["--recipient", "+31612345678"],
    );
    assert!(!ok && out.contains("retention cutoff"), "{out}");
    let (ok, out) = open("carl", "2026-117", &["--recipient", "06 1234 5678"]);
    assert!(
        ok && out.contains("case 1 opened (NL/OM-0042/2026-117)"),
        "{out}"
    );

    let approve = |officer: &str, code: &str| approve_case(&config, 1, officer, code);
    let (ok, out) = approve("carl", "000000");
    assert!(!ok, "{out}");
    let (ok, out) = approve("anna", "12345");
    assert!(!ok && out.contains("TOTP"), "{out}");
    let (ok, out) = approve("anna", &totp_now(&anna));
    assert!(ok && out.contains("case 1 approved"), "{out}");
    let show = |id: &str, steps| {
        let code = totp_ahead(&carl, steps);
        cli_with_input(
            &config,
            &["case", "show", id, "--officer", "carl", "--totp", &code],
            "carl-long-password\n",
        )
    };
    let (ok, out) = show("1", 0);
    assert!(
        ok && out.contains("approved") && out.contains("identifier\trecipient\t"),
        "{out}"
    );
    assert!(!out.contains("612345678"), "{out}");
    let (ok, out) = show("99", 1);
    assert!(!ok && out.contains("no case 99"), "{out}");

    let (actions, out) = audit_actions(&config);
    let steps: Vec<&String> = actions.iter().filter(|a| a.starts_with("case")).collect();
    assert_eq!(
        steps,
        ["case.open", "case.approve", "case.show", "case.show"],
        "{out}"
    );
    // The two refused approvals (wrong codes), coalesced: one entry for their minute
    // (two if it turned meanwhile), written when the minute was over or the log read.
    let refused: Vec<serde_json::Value> = audit_entries(dir.path())
        .into_iter()
        .filter(|(_, action, _)| action == "auth.failure")
        .map(|(_, _, details)| serde_json::from_str(&details).unwrap())
        .collect();
    assert!((1..=2).contains(&refused.len()), "{out}");
    let count: i64 = refused.iter().map(|d| d["count"].as_i64().unwrap()).sum();
    let totp: i64 = refused
        .iter()
        .map(|d| d["reasons"]["totp"].as_i64().unwrap())
        .sum();
    assert_eq!((count, totp), (2, 2), "{out}");
    assert!(
        refused.iter().all(|d| d["calls"]["case.approve"].is_i64()),
        "{out}"
    );
    assert!(
        !out.contains("612345678"),
        "no number in the audit log: {out}"
    );
    assert!(cli(&config, &["audit", "verify"]).0);
}

/// The whole lawful-request path: traffic through `serve`, a case for one recipient,
/// disclosure refused before approval and approval refused to the case's own opener,
/// then approval by another approver and an export that holds exactly that recipient's
/// records of the window: none from outside it, and none of a number whose 1-byte blind
/// index collides with it. The manifest and export verify with the public key alone,
/// and fail after a one-byte change to either.
#[tokio::test]
async fn an_approved_case_discloses_exactly_its_records_with_a_signed_manifest() {
    use relaylog::store::IndexKind;
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start("0: Accepted for delivery").await;
    let text = config_text(
        dir.path(),
        "kannel",
        Some(&up.url()),
        "",
        "index-bytes = 1\n",
    ) + SINGLE_OPERATOR;
    let config = write_config(dir.path(), &text);
    let relay = Relay::start(dir.path(), &text).await;
    let target = "+31612345601";
    let c = client();
    for user in ["a1", "a2", "a3"] {
        let (s, _) = get(&c, &sendsms(&relay.url, user, "%2B31612345601")).await;
        assert_eq!(s.as_u16(), 202);
    }
    for n in 2..6 {
        let (s, _) = get(&c, &sendsms(&relay.url, "other", &number(n))).await;
        assert_eq!(s.as_u16(), 202);
    }
    relay.settle().await;
    let store_cfg = relay.config.store.clone();
    relay.running.shutdown().await;

    // The same number yesterday (outside the window), and today a number whose
    // 1-byte blind index equals the target's.
    let now = chrono::Utc::now();
    let keyring = off_runtime(|| relaylog::store::open_keyring(&store_cfg).unwrap());
    let today = relaylog::store::partition::PartitionId::containing(
        store_cfg.partition,
        now.timestamp_micros(),
    );
    let keys = off_runtime(|| keyring.keys(today).unwrap());
    let target_tag = keys.blind_index(IndexKind::Recipient, target);
    let collider = (0..100_000)
        .map(|i| format!("+3162{i:07}"))
        .find(|n| keys.blind_index(IndexKind::Recipient, n) == target_tag)
        .unwrap();
    drop(keyring);
    let clock = relaylog::clock::ManualClock::new(now);
    let store = off_runtime(|| open_store(&store_cfg, &clock));
    let rec = store.recorder();
    rec.record(&one_recipient(
        &rec,
        now.timestamp_micros(),
        "collider",
        &collider,
    ))
    .await
    .unwrap();
    let yesterday = (now - chrono::Duration::days(1)).timestamp_micros();
    rec.record(&one_recipient(&rec, yesterday, "yesterday", target))
        .await
        .unwrap();
    store.close().await;

    let [anna, bob, carl] =
        officers_and_case(&config, "2026-117", now, &["--recipient", "06 1234 5601"]);
    let day = now.date_naive().to_string();
    let export = dir.path().join("case1.json");
    let export_arg = export.to_str().unwrap().to_owned();
    let disclose = |officer: &str, code: &str| {
        cli_with_input(
            &config,
            &[
                "disclose",
                "--purpose",
                "lawful-request",
                "--case",
                "1",
                "--officer",
                officer,
                "--totp",
                code,
                "--out",
                &export_arg,
            ],
            &format!("{officer}-long-password\n"),
        )
    };
    let (ok, out) = disclose("carl", &totp_now(&carl));
    assert!(
        !ok && out.contains("is open; this needs it approved"),
        "{out}"
    );
    assert!(!export.exists());
    let approve = |officer: &str, code: &str| approve_case(&config, 1, officer, code);
    let (ok, out) = approve("anna", &totp_now(&anna));
    assert!(!ok && out.contains("four-eyes"), "{out}");
    let (ok, out) = approve("bob", &totp_now(&bob));
    assert!(ok, "{out}");
    let (ok, out) = disclose("carl", &totp_ahead(&carl, 1));
    assert!(ok && out.contains("3 records"), "{out}");

    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["recipient"] == target), "{rows:?}");
    let mut accounts: Vec<&str> = rows
        .iter()
        .map(|r| r["account"].as_str().unwrap())
        .collect();
    accounts.sort();
    assert_eq!(accounts, ["a1", "a2", "a3"]);
    let manifest = dir.path().join("case1.json.manifest.json");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["records"], 3);
    assert!(m["collisions_dropped"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(m["partitions"].as_array().unwrap().len(), 1, "{m}");

    // Verify with nothing but the public key, then break each file by one byte.
    let public = dir.path().join("keys/signing.key.pub");
    let nowhere = dir.path().join("no-such-config.toml");
    let verify = || {
        cli(
            &nowhere,
            &[
                "verify-export",
                manifest.to_str().unwrap(),
                "--public-key",
                public.to_str().unwrap(),
            ],
        )
    };
    let (ok, out) = verify();
    assert!(ok && out.contains("export verified: case 1"), "{out}");
    for (file, what) in [
        (&export, "export was changed"),
        (&manifest, "signature does not verify"),
    ] {
        let original = std::fs::read(file).unwrap();
        let mut changed = original.clone();
        let at = changed.len() / 2;
        changed[at] ^= 0x01;
        std::fs::write(file, &changed).unwrap();
        let (ok, out) = verify();
        assert!(!ok && out.contains(what), "{out}");
        std::fs::write(file, &original).unwrap();
    }
    assert!(verify().0);
    let (ok, out) = disclose("bob", &totp_ahead(&bob, 1));
    assert!(!ok && out.contains("never overwrites"), "{out}");

    // A data subject's access request: every record of the number in every retained
    // day (yesterday's too), each with its deletion date, except what a confidential
    // case covers (here: account a2's messages).
    let (ok, out) = open_case(
        &config,
        "anna",
        "2026-118",
        (&day, &day),
        &["--account", "a2", "--confidential"],
    );
    assert!(ok, "{out}");
    let dora = add_officer(&config, "dora", "officer");
    let subject = dir.path().join("subject.json");
    let (ok, out) = cli_with_input(
        &config,
        &[
            "subject",
            "export",
            "--purpose",
            "subject-access",
            "--recipient",
            "0612345601",
            "--officer",
            "dora",
            "--totp",
            &totp_now(&dora),
            "--out",
            subject.to_str().unwrap(),
        ],
        "dora-long-password\n",
    );
    assert!(ok, "{out}");
    let body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&subject).unwrap()).unwrap();
    let records = body["records"].as_array().unwrap();
    let mut accounts: Vec<&str> = records
        .iter()
        .map(|r| r["account"].as_str().unwrap())
        .collect();
    accounts.sort();
    assert_eq!(accounts, ["a1", "a3", "yesterday"], "{body}");
    let end = relaylog::clock::micros_to_datetime(today.end_micros());
    let retained = relaylog::config::Retention::Months(13)
        .expires(end)
        .date_naive()
        .to_string();
    assert!(
        records
            .iter()
            .filter(|r| r["account"] != "yesterday")
            .all(|r| r["retained_until"] == retained.as_str()),
        "{body}"
    );
    let (ok, out) = cli(
        &nowhere,
        &[
            "verify-export",
            &format!("{}.manifest.json", subject.display()),
            "--public-key",
            public.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli_with_input(
        &config,
        &[
            "subject",
            "export",
            "--purpose",
            "subject-access",
            "--officer",
            "dora",
            "--totp",
            "000000",
            "--out",
            "x.json",
        ],
        "dora-long-password\n",
    );
    assert!(!ok && out.contains("--recipient"), "{out}");

    // The year's statistics, without personal data.
    let year = now.format("%Y").to_string();
    let (ok, out) = cli(&config, &["report", "cases", "--year", &year, "--json"]);
    assert!(ok, "{out}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            r["cases"].as_u64(),
            r["disclosures"].as_u64(),
            r["records_disclosed"].as_u64()
        ),
        (Some(2), Some(1), Some(3)),
        "{r}"
    );
    assert_eq!(r["record_age_months"]["0-3"], 3, "{r}");
    assert_eq!(r["by_state"]["approved"], 1, "{r}");
    assert!(!out.contains("612345601") && !out.contains("a2"), "{out}");

    // The audit trail, in order, with no number in the clear.
    let (actions, out) = audit_actions(&config);
    let relevant: Vec<&str> = actions
        .iter()
        .map(String::as_str)
        .filter(|a| a.starts_with("case.") || a.starts_with("auth.") || a.starts_with("subject."))
        .collect();
    assert_eq!(
        relevant,
        [
            "case.open",
            "case.disclose.refused",
            "case.approve.refused",
            "case.approve",
            "case.disclose",
            "case.open",
            "subject.export"
        ],
        "{out}"
    );
    assert!(
        !out.contains("612345601") && !out.contains(&collider[3..]),
        "{out}"
    );
    // The ledger (the cases, the audit log) names no number.
    for (name, bytes) in ledger_bytes(dir.path()) {
        assert!(!contains(&bytes, b"612345601"), "{name}");
    }
    assert!(cli(&config, &["audit", "verify"]).0);
}

/// Contract end: the account's records are exported, erased from the store with their
/// outcomes, `verify` still passes and reports the erasure, the deletion statement
/// verifies, and other accounts keep their records. A forged erasure is damage.
#[tokio::test]
async fn an_offboarded_account_is_exported_erased_and_verify_reports_it() {
    use relaylog::store::IndexKind;
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start("0: Accepted for delivery").await;
    let text = config_text(dir.path(), "kannel", Some(&up.url()), "", "") + SINGLE_OPERATOR;
    let config = write_config(dir.path(), &text);
    let relay = Relay::start(dir.path(), &text).await;
    let c = client();
    for (user, n) in [
        ("leaving", 1),
        ("leaving", 2),
        ("staying", 3),
        ("leaving", 4),
        ("staying", 5),
    ] {
        let (s, _) = get(&c, &sendsms(&relay.url, user, &number(n))).await;
        assert_eq!(s.as_u16(), 202);
    }
    relay.settle().await;
    let cfg = relay.config.clone();
    relay.running.shutdown().await;

    let root = add_officer(&config, "root1", "admin");
    let carl = add_officer(&config, "carl", "officer");
    let out = dir.path().join("returned");
    let offboard =
        |officer: &str, code: &str| offboard_cli(&config, "leaving", &out, officer, code);
    let (ok, text_out) = offboard("carl", &totp_now(&carl));
    assert!(
        !ok && text_out.contains("needs the admin role"),
        "{text_out}"
    );
    let (ok, text_out) = offboard("root1", &totp_now(&root));
    assert!(
        ok && text_out.contains("3 records and 3 outcome events"),
        "{text_out}"
    );

    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("leaving-records.json")).unwrap()).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["account"] == "leaving"));
    assert!(query_store(&cfg, IndexKind::Account, "leaving").is_empty());
    assert_eq!(query_store(&cfg, IndexKind::Account, "staying").len(), 2);

    let (ok, v) = cli(&config, &["verify"]);
    assert!(ok, "{v}");
    assert!(
        v.contains("6 rows erased under 1 signed erasure statement"),
        "{v}"
    );
    let statement = out.join("leaving-deletion.json");
    let (ok, s) = cli(&config, &["verify-export", statement.to_str().unwrap()]);
    assert!(ok, "{s}");
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&statement).unwrap()).unwrap();
    assert_eq!(st["records"], 3);
    assert_eq!(st["officer"], "root1");
    let (actions, log) = audit_actions(&config);
    assert_eq!(
        actions.iter().filter(|a| *a == "account.offboard").count(),
        1
    );
    assert!(
        !log.contains("\"leaving\""),
        "the audit log names the account by tag: {log}"
    );

    // An erasure statement edited afterwards no longer verifies: its rows are damage.
    let edit = "UPDATE erasure SET reason = 'nothing to see'";
    tamper(dir.path(), Stored::Partition, edit, edit);
    let (ok, v) = cli(&config, &["verify"]);
    assert!(!ok && v.contains("not signed by this installation"), "{v}");
}

/// Sends one message through an SMTP listener (in front of the built-in sink), AUTH
/// PLAIN as `account` when given, and checks each reply.
async fn send_mail(addr: std::net::SocketAddr, account: Option<&str>, from: &str, to: &[&str]) {
    use base64::Engine;
    let (mut c, greeting) = SmtpClient::connect(addr).await;
    assert_eq!(greeting.code, 220);
    assert_eq!(c.code("EHLO client.example").await, 250);
    if let Some(account) = account {
        let plain = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{account}\0{account}-secret"));
        assert_eq!(c.code(&format!("AUTH PLAIN {plain}")).await, 235);
    }
    assert_eq!(c.code(&format!("MAIL FROM:<{from}> SMTPUTF8")).await, 250);
    for r in to {
        assert_eq!(c.code(&format!("RCPT TO:<{r}>")).await, 250);
    }
    assert_eq!(c.code("DATA").await, 354);
    assert_eq!(c.cmd("Subject: hello\r\n\r\nhello\r\n.").await.code, 250);
    assert_eq!(c.code("QUIT").await, 221);
}

/// Mail records are found by address wherever an e-mail identifier is accepted:
/// `query --email` and `--originator`, a case, a subject export (the address as
/// recipient and as envelope sender) and offboarding. The domain may be typed in
/// Unicode or IDNA form and in any case; the local part is compared as sent; the
/// records show the address as the client sent it.
#[tokio::test]
async fn mail_records_are_found_by_address_in_queries_cases_exports_and_offboarding() {
    let dir = tempfile::tempdir().unwrap();
    // Queried, and officers added, without an officer's login (tested apart).
    let text = smtp_config_text(dir.path(), "", "") + SINGLE_OPERATOR;
    let config = write_config(dir.path(), &text);
    init_keys(dir.path());
    let cfg = relaylog::config::Config::parse(&text, &config).unwrap();
    let running = common::start_serve(
        cfg.clone(),
        std::sync::Arc::new(relaylog::clock::SystemClock),
    )
    .await
    .unwrap();
    let addr = running.addr("mail").unwrap();
    let subject = "Jürgen@Bücher.Example";
    send_mail(
        addr,
        Some("shop"),
        "No.Reply@Shop.Example",
        &[subject, "piet@example.nl"],
    )
    .await;
    // Another local part (case counts there): not the subject.
    send_mail(
        addr,
        Some("shop"),
        "No.Reply@Shop.Example",
        &["JÜRGEN@xn--bcher-kva.example"],
    )
    .await;
    // The subject as the envelope sender, in IDNA form.
    send_mail(
        addr,
        Some("other"),
        "Jürgen@XN--BCHER-KVA.example",
        &["anna@example.com"],
    )
    .await;
    running.settle().await.unwrap();
    running.shutdown().await;

    let query = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["query", "--purpose", "operations"];
        all.extend_from_slice(args);
        let (ok, out) = cli(&config, &all);
        assert!(ok, "{out}");
        out.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let rows = query(&["--email", "Jürgen@xn--BCHER-KVA.example"]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    // Every read states its purpose, from the list only; the audit log names it and
    // the report counts reads by it.
    let (ok, out) = cli(&config, &["query", "--email", "a@b.c"]);
    assert!(!ok && out.contains("--purpose"), "{out}");
    // The other reads too: refused before any login is asked for.
    let out_dir = config.parent().unwrap().join("never");
    let out_file = out_dir.join("x.json");
    for read in [
        vec![
            "disclose",
            "--case",
            "1",
            "--officer",
            "x",
            "--totp",
            "000000",
            "--out",
            out_file.to_str().unwrap(),
        ],
        vec![
            "subject",
            "export",
            "--email",
            "a@b.c",
            "--officer",
            "x",
            "--totp",
            "000000",
            "--out",
            out_file.to_str().unwrap(),
        ],
        vec![
            "account",
            "offboard",
            "shop",
            "--officer",
            "x",
            "--totp",
            "000000",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    ] {
        let (ok, out) = cli(&config, &read);
        assert!(!ok && out.contains("--purpose"), "{read:?}: {out}");
    }
    assert!(!out_dir.exists(), "nothing written");
    let (ok, out) = cli(
        &config,
        &["query", "--purpose", "marketing", "--email", "a@b.c"],
    );
    assert!(
        !ok && out.contains("lawful-request"),
        "the list is offered: {out}"
    );
    // A lawful request is answered through an approved case, not one officer's query.
    let (ok, out) = cli(
        &config,
        &["query", "--purpose", "lawful-request", "--email", "a@b.c"],
    );
    assert!(!ok && out.contains("approved case"), "{out}");
    let (ok, audit) = cli(&config, &["audit", "list", "--json"]);
    assert!(ok, "{audit}");
    let purposes: Vec<String> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["action"] == "query")
        .map(|e| {
            e["details"]["purpose"]
                .as_str()
                .unwrap_or("none")
                .to_owned()
        })
        .collect();
    assert_eq!(purposes, ["operations"]);
    let year = chrono::Utc::now().format("%Y").to_string();
    let (ok, report) = cli(&config, &["report", "cases", "--year", &year, "--json"]);
    assert!(ok, "{report}");
    let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report["reads_by_purpose"]["operations"], 1, "{report}");
    let r = &rows[0];
    assert_eq!(r["protocol"], "smtp");
    assert_eq!(r["service"], "email");
    assert_eq!(r["account"], "shop");
    assert_eq!(r["recipient"], subject, "sealed as sent");
    assert_eq!(r["recipient_form"], "email");
    assert_eq!(r["originator"], "No.Reply@Shop.Example");
    assert_eq!(r["segments"], 2, "the transaction's recipient count");
    assert_eq!(r["outcome"], "accepted");
    assert_eq!(r["upstream_status"], 250);
    assert_eq!(r["enhanced_status"], "2.0.0");
    assert!(
        r["upstream_message_id"]
            .as_str()
            .is_some_and(|q| q.starts_with('S')),
        "{r}"
    );
    assert!(r["size_bytes"].as_u64().is_some_and(|n| n > 0), "{r}");
    assert_eq!(query(&["--email", "jürgen@bücher.example"]).len(), 0);
    assert_eq!(query(&["--originator", "No.Reply@shop.example"]).len(), 3);
    let (ok, out) = cli(
        &config,
        &["query", "--purpose", "operations", "--email", "nobody"],
    );
    assert!(!ok && out.contains("not an e-mail address"), "{out}");
    let (ok, out) = cli(
        &config,
        &[
            "query",
            "--purpose",
            "operations",
            "--email",
            "a@b.c",
            "--account",
            "x",
        ],
    );
    assert!(!ok && out.contains("cannot be used with"), "{out}");

    let anna = add_officer(&config, "anna", "approver");
    let bob = add_officer(&config, "bob", "approver");
    let carl = add_officer(&config, "carl", "officer");
    let root = add_officer(&config, "root1", "admin");
    let day = chrono::Utc::now().date_naive().to_string();
    let (ok, out) = open_case(
        &config,
        "anna",
        "2026-200",
        (&day, &day),
        &["--email", "jürgen@bücher.example", "--email", subject],
    );
    assert!(ok, "{out}");
    let (ok, out) = approve_case(&config, 1, "bob", &totp_now(&bob));
    assert!(ok, "{out}");
    let export = dir.path().join("case1.json");
    let (ok, out) = cli_with_input(
        &config,
        &[
            "disclose",
            "--purpose",
            "lawful-request",
            "--case",
            "1",
            "--officer",
            "carl",
            "--totp",
            &totp_now(&carl),
            "--out",
            export.to_str().unwrap(),
        ],
        "carl-long-password\n",
    );
    assert!(ok && out.contains("1 records"), "{out}");
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["recipient"], subject);
    drop(anna);

    let subject_out = dir.path().join("subject.json");
    let (ok, out) = cli_with_input(
        &config,
        &[
            "subject",
            "export",
            "--purpose",
            "subject-access",
            "--email",
            "Jürgen@bücher.EXAMPLE",
            "--officer",
            "carl",
            "--totp",
            &totp_ahead(&carl, 1),
            "--out",
            subject_out.to_str().unwrap(),
        ],
        "carl-long-password\n",
    );
    assert!(ok, "{out}");
    let export: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&subject_out).unwrap()).unwrap();
    let mut roles: Vec<(String, String)> = export["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["originator"].as_str().unwrap().to_owned(),
                r["recipient"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    roles.sort();
    assert_eq!(
        roles,
        [
            (
                "Jürgen@XN--BCHER-KVA.example".to_owned(),
                "anna@example.com".to_owned()
            ),
            ("No.Reply@Shop.Example".to_owned(), subject.to_owned()),
        ],
        "as recipient and as envelope sender"
    );

    let returned = dir.path().join("returned");
    let (ok, out) = offboard_cli(&config, "shop", &returned, "root1", &totp_now(&root));
    assert!(
        ok && out.contains("3 records and 2 outcome events"),
        "{out}"
    );
    assert_eq!(query(&["--originator", "No.Reply@shop.example"]).len(), 0);
    assert_eq!(query(&["--email", "anna@example.com"]).len(), 1);
}

/// `query`, `case show/list`, `hold`, `officer list/disable` and `audit list` need an
/// officer's login on the command line (password on standard input, a TOTP code), of
/// the role the API asks for, and the audit log names that officer; refusals are
/// audited. Under `compliance.single-operator = true` they run without one, each run
/// audited as a single operator's, and the setting's change too.
#[test]
fn reads_on_the_command_line_need_an_officer() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "kannel", None, "", "");
    let config = write_config(dir.path(), &text);
    assert!(cli(&config, &["init"]).0);
    // The first officer, an admin, adds the others with its login.
    let ada = add_officer(&config, "ada", "admin");
    let add = |name: &str, role: &str, steps| {
        let code = totp_ahead(&ada, steps);
        let (ok, out) = cli_with_input(
            &config,
            &[
                "officer",
                "add",
                name,
                "--role",
                role,
                "--officer",
                "ada",
                "--totp",
                &code,
            ],
            &format!("ada-long-password\n{name}-long-password\n"),
        );
        assert!(ok, "{out}");
        seed_from(out.lines().find(|l| l.starts_with("otpauth://")).unwrap())
    };
    let olga = add("olga", "officer", 0);
    let adam = add("adam", "admin", 1);
    let with = |who: &str, seed: &[u8], steps, password: &str, args: &[&str]| {
        let code = totp_ahead(seed, steps);
        let mut args = args.to_vec();
        args.extend(["--officer", who, "--totp", &code]);
        cli_with_input(&config, &args, &format!("{password}\n"))
    };
    let reads: [&[&str]; 7] = [
        &[
            "query",
            "--purpose",
            "operations",
            "--recipient",
            "+31612345678",
        ],
        &["case", "list"],
        &["case", "show", "1"],
        &["hold", "list"],
        &["hold", "release", "--case", "NL-1"],
        &["officer", "list"],
        &["audit", "list"],
    ];
    for args in reads {
        let (ok, out) = cli(&config, args);
        assert!(
            !ok && out.contains("needs an officer's login")
                && out.contains("--officer NAME --totp CODE"),
            "{args:?}: {out}"
        );
    }
    let (ok, out) = cli_with_input(
        &config,
        &["case", "list", "--officer", "olga"],
        "olga-long-password\n",
    );
    assert!(!ok && out.contains("--totp CODE"), "{out}");

    // An officer reads records; a wrong password and a role too low are refused.
    let query = [
        "query",
        "--purpose",
        "operations",
        "--recipient",
        "+31612345678",
    ];
    let (ok, out) = with("olga", &olga, 0, "olga-long-password", &query);
    assert!(ok, "{out}");
    let (ok, out) = with("olga", &olga, 1, "not olga's password", &["case", "list"]);
    assert!(!ok && out.contains("authentication failed"), "{out}");
    let (ok, out) = with("olga", &olga, 1, "olga-long-password", &["audit", "list"]);
    assert!(!ok && out.contains("needs the admin role"), "{out}");

    // An admin reads the audit log: every read and refusal names its officer.
    let (ok, out) = with(
        "adam",
        &adam,
        0,
        "adam-long-password",
        &["audit", "list", "--json"],
    );
    assert!(ok, "{out}");
    let entries: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by = |action: &str| -> Vec<(String, String)> {
        entries
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| {
                let why = e["details"]["for"].as_str().unwrap_or_default().to_owned()
                    + "/"
                    + e["details"]["reason"].as_str().unwrap_or_default();
                (e["actor"].as_str().unwrap().to_owned(), why)
            })
            .collect()
    };
    assert_eq!(by("query"), [("olga".to_owned(), "/".to_owned())]);
    // The wrong password, coalesced (one entry per peer and minute, counted); the
    // role too low, an entry of its own.
    assert_eq!(by("auth.failure").len(), 2, "{out}");
    assert!(by("auth.failure").contains(&("olga".to_owned(), "audit.list/role".to_owned())));
    let refused = entries
        .iter()
        .find(|e| e["action"] == "auth.failure" && e["details"]["count"].is_i64())
        .unwrap();
    assert_eq!(refused["actor"], "olga");
    assert_eq!(refused["details"]["count"], 1);
    assert_eq!(
        refused["details"]["reasons"],
        serde_json::json!({"credentials": 1})
    );
    assert_eq!(
        refused["details"]["calls"],
        serde_json::json!({"case.list": 1})
    );
    assert!(
        refused["details"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("local:")
    );
    assert_eq!(by("audit.list"), [("adam".to_owned(), "/".to_owned())]);
    assert!(by("single-operator.run").is_empty() && by("setting.single-operator").is_empty());

    // Single-operator: no login, each run audited as such, the change of setting too;
    // an officer may still log in.
    std::fs::write(&config, text + SINGLE_OPERATOR).unwrap();
    for args in [&["case", "list"][..], &["hold", "list"]] {
        let (ok, out) = cli(&config, args);
        assert!(ok, "{args:?}: {out}");
    }
    let (ok, out) = with("adam", &adam, 1, "adam-long-password", &["officer", "list"]);
    assert!(ok && out.contains("olga\tofficer\tenabled"), "{out}");
    let entries = audit_entries(dir.path());
    let of = |action: &str| -> Vec<(String, String)> {
        entries
            .iter()
            .filter(|(_, a, _)| a == action)
            .map(|(actor, _, details)| (actor.clone(), details.clone()))
            .collect()
    };
    let setting = of("setting.single-operator");
    assert_eq!(setting.len(), 1, "{setting:?}");
    assert!(setting[0].1.contains("true"), "{setting:?}");
    let runs = of("single-operator.run");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        runs[0].1.contains("case.list") && runs[1].1.contains("hold.list"),
        "{runs:?}"
    );
    for (actor, _) in runs.iter().chain(&of("case.list")).chain(&of("hold.list")) {
        assert!(actor.starts_with("single-operator:"), "{actor}");
    }
    assert_eq!(of("officer.list"), [("adam".to_owned(), "{}".to_owned())]);
    assert!(cli(&config, &["audit", "verify"]).0);
}

/// FQLite's way of reading an ETSI file: a `/`-separated path of local names, each
/// step the first child element of that name, whatever its namespace.
fn find<'a>(node: roxmltree::Node<'a, 'a>, path: &str) -> Option<roxmltree::Node<'a, 'a>> {
    path.split('/').try_fold(node, |n, part| {
        n.children()
            .find(|c| c.is_element() && c.tag_name().name() == part)
    })
}

fn text<'a>(node: roxmltree::Node<'a, 'a>, path: &str) -> Option<&'a str> {
    find(node, path).and_then(|n| n.text()).map(str::trim)
}

/// The local name of an element's first child element (an ASN.1 choice in XER).
fn choice<'a>(node: roxmltree::Node<'a, 'a>, path: &str) -> Option<&'a str> {
    find(node, path)?
        .children()
        .find(|c| c.is_element())
        .map(|c| c.tag_name().name())
}

/// `"key"="value";` pairs, split as FQLite splits `otherInformation`.
fn pairs(s: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut rest = s;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(k_end) = after.find('"') else { break };
        let key = &after[..k_end];
        let after = &after[k_end + 1..];
        let Some(v_start) = after.find("=\"") else {
            break;
        };
        let after = &after[v_start + 2..];
        let Some(v_end) = after.find('"') else { break };
        out.insert(key.to_owned(), after[..v_end].to_owned());
        rest = &after[v_end + 1..];
    }
    out
}

/// ETSI TS 102 657 delivery: a case with SMS and e-mail records disclosed as a
/// RetainedDataMessage. Well-formed, namespaced, one ResponseRecord per record, an SMS
/// with both party legs and an e-mail as a messaging record, times in GeneralizedTime,
/// relaylog's own fields in otherInformation; read along the element paths FQLite's
/// importer reads; signed and verified like the other exports.
#[tokio::test]
async fn an_etsi_export_holds_every_record_where_forensic_tools_read_it() {
    use relaylog::canonical::{Form, Identifier};
    use relaylog::record::{Protocol, Service, Submission};
    let dir = tempfile::tempdir().unwrap();
    let settings = config_text(dir.path(), "kannel", None, "", "") + SINGLE_OPERATOR;
    let config = write_config(
        dir.path(),
        &(settings.clone() + "csp-id = \"NL-RELAYLOG-01\"\n"),
    );
    let without_csp = dir.path().join("without-csp.toml");
    std::fs::write(&without_csp, &settings).unwrap();
    assert!(cli(&config, &["init"]).0);
    let store_cfg = relaylog::config::Config::load(&config).unwrap().store;
    let now = chrono::Utc::now();
    let clock = relaylog::clock::ManualClock::new(now);
    let store = off_runtime(|| open_store(&store_cfg, &clock));
    let rec = store.recorder();
    let at = now.timestamp_micros();
    let sms = |to: &str, from: &str| Submission {
        originator: Some(Identifier {
            form: Form::E164,
            value: from.into(),
        }),
        ..one_recipient(&rec, at, "acme", to)
    };
    rec.record(&sms("+31612345601", "+31687654321"))
        .await
        .unwrap();
    rec.record(&sms("+31612345601", "+31611111111"))
        .await
        .unwrap();
    let mail = Submission {
        protocol: Protocol::Smtp,
        service: Service::Email,
        originator: Some(Identifier {
            form: Form::Email,
            value: "anna@example.org".into(),
        }),
        recipients: vec![Identifier {
            form: Form::Email,
            value: "bob@example.net".into(),
        }],
        ..one_recipient(&rec, at, "mailer", "+31600000000")
    };
    rec.record(&mail).await.unwrap();
    // Another recipient's: not in the case.
    rec.record(&sms("+31699999999", "+31687654321"))
        .await
        .unwrap();
    store.close().await;

    let [_, bob, carl] = officers_and_case(
        &config,
        "2026-200",
        now,
        &["--recipient", "+31612345601", "--email", "bob@example.net"],
    );
    assert!(approve_case(&config, 1, "bob", &totp_now(&bob)).0);
    let export = dir.path().join("case1.xml");
    let disclose = |config: &std::path::Path, code: &str| {
        cli_with_input(
            config,
            &[
                "disclose",
                "--purpose",
                "lawful-request",
                "--case",
                "1",
                "--format",
                "etsi-xml",
                "--officer",
                "carl",
                "--totp",
                code,
                "--out",
                export.to_str().unwrap(),
            ],
            "carl-long-password\n",
        )
    };
    let (ok, out) = disclose(&without_csp, &totp_now(&carl));
    assert!(!ok && out.contains("set compliance.csp-id"), "{out}");
    assert!(!export.exists());
    let (ok, out) = disclose(&config, &totp_ahead(&carl, 1));
    assert!(ok && out.contains("3 records"), "{out}");

    let xml = std::fs::read_to_string(&export).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "RetainedDataMessage");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://uri.etsi.org/02657/v1.28.1#/RetainedData")
    );
    // The header, as FQLite reads it.
    let header = find(root, "retainedDataHeader").unwrap();
    assert_eq!(text(header, "requestID/countryCode"), Some("NL"));
    assert_eq!(
        text(header, "requestID/authorisedOrganisationID"),
        Some("OM-0042")
    );
    assert_eq!(text(header, "requestID/requestNumber"), Some("2026-200"));
    assert_eq!(text(header, "cSPID"), Some("NL-RELAYLOG-01"));
    let generalized =
        |s: &str| s.len() == 15 && s[..14].bytes().all(|b| b.is_ascii_digit()) && s.ends_with('Z');
    assert!(generalized(text(header, "timeStamp").unwrap()));
    // Every element in the namespace (no stray default-namespace elements).
    assert!(
        doc.descendants()
            .filter(|n| n.is_element())
            .all(|n| n.tag_name().namespace() == root.tag_name().namespace())
    );

    // One ResponseRecord per record, found anywhere (getElementsByTagNameNS("*", ...)).
    let records: Vec<_> = doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "ResponseRecord")
        .collect();
    assert_eq!(records.len(), 3);
    let (mut sms_legs, mut mails) = (Vec::new(), 0);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(text(*r, "recordNumber"), Some((i + 1).to_string().as_str()));
        let other = pairs(text(*r, "additionalInformation/otherInformation").unwrap());
        assert!(
            other.contains_key("time") && other.contains_key("client_ip"),
            "{other:?}"
        );
        let tsu = "recordPayload/telephonyRecord/telephonyServiceUsage";
        if let Some(parties) = find(*r, &format!("{tsu}/partyInformation")) {
            assert_eq!(other["account"], "acme");
            assert_eq!(other["service"], "sms");
            let legs: Vec<_> = parties
                .children()
                .filter(|c| c.is_element() && c.tag_name().name() == "TelephonyPartyInformation")
                .collect();
            assert_eq!(legs.len(), 2, "both party legs");
            let roles: Vec<_> = legs
                .iter()
                .map(|l| choice(*l, "partyRole").unwrap())
                .collect();
            assert_eq!(roles, ["sms-Originator", "sms-Recipient"]);
            assert!(roles.iter().all(|r| r.to_lowercase().starts_with("sms")));
            for l in &legs {
                assert!(generalized(
                    text(*l, "communicationTime/startTime").unwrap()
                ));
            }
            assert_eq!(text(legs[1], "partyNumber"), Some("+31612345601"));
            sms_legs.push(text(legs[0], "partyNumber").unwrap().to_owned());
        } else {
            let usage = find(*r, "recordPayload/messagingRecord/messagingServiceUsage").unwrap();
            let parties: Vec<_> = find(usage, "messagingPartyInformation")
                .unwrap()
                .children()
                .filter(|c| c.is_element())
                .collect();
            assert_eq!(choice(parties[0], "partyRole"), Some("sender"));
            assert_eq!(text(parties[0], "emailAddress"), Some("anna@example.org"));
            assert_eq!(text(parties[0], "iPAddress"), Some("192.0.2.1"));
            assert_eq!(choice(parties[1], "partyRole"), Some("receiver-to"));
            assert_eq!(text(parties[1], "emailAddress"), Some("bob@example.net"));
            assert!(generalized(text(usage, "messagingEventTime").unwrap()));
            assert_eq!(other["account"], "mailer");
            mails += 1;
        }
    }
    sms_legs.sort();
    assert_eq!(sms_legs, ["+31611111111", "+31687654321"]);
    assert_eq!(mails, 1);
    assert!(!xml.contains("+31699999999"), "only the case's records");

    // Signed like the other exports: verified with the public key alone.
    let manifest = dir.path().join("case1.xml.manifest.json");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["format"], "etsi-xml");
    let public = dir.path().join("keys/signing.key.pub");
    let (ok, out) = cli(
        &dir.path().join("no-such-config.toml"),
        &[
            "verify-export",
            manifest.to_str().unwrap(),
            "--public-key",
            public.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("export verified: case 1"), "{out}");
}
