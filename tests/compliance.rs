//! Compliance officers and the audit log, through the binary.

mod common;

use common::*;

/// The actions of `audit list --json`, in order.
fn audit_actions(config: &std::path::Path) -> (Vec<String>, String) {
    let (ok, out) = cli(config, &["audit", "list", "--json"]);
    assert!(ok, "{out}");
    let actions = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    (actions, out)
}

#[test]
fn officers_are_added_listed_disabled_and_every_step_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(dir.path(), "kannel", None, "", ""));
    let (ok, out) = cli(&config, &["init"]);
    assert!(ok, "{out}");
    let password = "Tr0ub4dor&3 horse staple";

    let (ok, out) = cli_with_input(
        &config,
        &["officer", "add", "anna", "--role", "approver"],
        &format!("{password}\n"),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("otpauth://totp/relaylog:anna?secret="),
        "{out}"
    );
    let (ok, out) = cli_with_input(
        &config,
        &["officer", "add", "bob", "--role", "officer"],
        "short\n",
    );
    assert!(!ok && out.contains("at least 12 characters"), "{out}");
    let (ok, out) = cli_with_input(
        &config,
        &["officer", "add", "anna", "--role", "admin"],
        &format!("{password}\n"),
    );
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = cli(&config, &["officer", "disable", "anna"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&config, &["officer", "list"]);
    assert!(ok && out.contains("anna\tapprover\tdisabled"), "{out}");

    let (actions, _) = audit_actions(&config);
    assert_eq!(actions, ["officer.add", "officer.disable"]);
    let (ok, out) = cli(&config, &["audit", "verify"]);
    assert!(ok && out.contains("intact: 2 entries"), "{out}");

    // No password or TOTP seed in the clear anywhere under the data directory.
    for f in files_under(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!contains(&bytes, password.as_bytes()), "{}", f.display());
    }

    // Editing one entry breaks the chain, and verify says which.
    let ledger = dir.path().join("ledger.sqlite");
    let conn = rusqlite::Connection::open(&ledger).unwrap();
    conn.execute(
        "UPDATE audit SET details = '{\"officer\":\"mallory\"}' WHERE seq = 1",
        [],
    )
    .unwrap();
    drop(conn);
    let (ok, out) = cli(&config, &["audit", "verify"]);
    assert!(!ok && out.contains("audit entry 1"), "{out}");
}

fn seed_from(uri: &str) -> Vec<u8> {
    relaylog::compliance::totp::secret_of(uri).unwrap()
}

fn totp_now(seed: &[u8]) -> String {
    use relaylog::compliance::totp;
    let now = chrono::Utc::now().timestamp();
    format!("{:06}", totp::hotp(seed, totp::step_at(now) as u64, 6))
}

fn add_officer(config: &std::path::Path, name: &str, role: &str) -> Vec<u8> {
    let (ok, out) = cli_with_input(
        config,
        &["officer", "add", name, "--role", role],
        &format!("{name}-long-password\n"),
    );
    assert!(ok, "{out}");
    seed_from(out.lines().find(|l| l.starts_with("otpauth://")).unwrap())
}

#[test]
fn a_case_is_opened_refused_to_its_opener_and_approved_by_another_approver() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(dir.path(), "kannel", None, "", ""));
    assert!(cli(&config, &["init"]).0);
    let anna = add_officer(&config, "anna", "approver");
    let _bob = add_officer(&config, "bob", "approver");
    add_officer(&config, "carl", "officer");
    let today = chrono::Utc::now().date_naive().to_string();
    let open = |officer: &str, request: &str, extra: &[&str]| {
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
            &today,
            "--until",
            &today,
        ];
        args.extend_from_slice(extra);
        cli_with_input(&config, &args, &format!("{officer}-long-password\n"))
    };
    // Bad input, each a clear error.
    let (ok, out) = open("carl", "2026-117", &["--recipient", "call me maybe"]);
    assert!(
        !ok && out.contains("recipient identifier is malformed"),
        "{out}"
    );
    let (ok, out) = open("carl", "2026-117", &[]);
    assert!(!ok && out.contains("at least one identifier"), "{out}");
    let (ok, out) = cli_with_input(
        &config,
        &[
            "case",
            "open",
            "--officer",
            "carl",
            "--authority",
            "A",
            "--country",
            "NL",
            "--organisation",
            "O",
            "--request",
            "1",
            "--legal-basis",
            "L",
            "--order-ref",
            "R",
            "--order-date",
            "D",
            "--deadline",
            "D",
            "--since",
            "2020-01-01",
            "--until",
            "2020-02-01",
            "--recipient",
            "+31612345678",
        ],
        "carl-long-password\n",
    );
    assert!(!ok && out.contains("retention cutoff"), "{out}");
    let (ok, out) = open("carl", "2026-117", &["--recipient", "06 1234 5678"]);
    assert!(
        ok && out.contains("case 1 opened (NL/OM-0042/2026-117)"),
        "{out}"
    );

    let approve = |officer: &str, code: &str| {
        cli_with_input(
            &config,
            &["case", "approve", "1", "--officer", officer, "--totp", code],
            &format!("{officer}-long-password\n"),
        )
    };
    let (ok, out) = approve("carl", "000000");
    assert!(!ok, "{out}");
    let (ok, out) = approve("anna", "12345");
    assert!(!ok && out.contains("TOTP"), "{out}");
    let (ok, out) = approve("anna", &totp_now(&anna));
    assert!(ok && out.contains("case 1 approved"), "{out}");
    let (ok, out) = cli(&config, &["case", "show", "1"]);
    assert!(
        ok && out.contains("approved") && out.contains("identifier\trecipient\t"),
        "{out}"
    );
    assert!(!out.contains("612345678"), "{out}");
    let (ok, out) = cli(&config, &["case", "show", "99"]);
    assert!(!ok && out.contains("no case 99"), "{out}");

    let (actions, out) = audit_actions(&config);
    let actions: Vec<String> = actions
        .into_iter()
        .filter(|a| a.starts_with("case") || a.starts_with("auth"))
        .collect();
    assert_eq!(
        actions,
        [
            "case.open",
            "auth.failure",
            "auth.failure",
            "case.approve",
            "case.show",
            "case.show"
        ],
        "{out}"
    );
    assert!(
        !out.contains("612345678"),
        "no number in the audit log: {out}"
    );
    assert!(cli(&config, &["audit", "verify"]).0);
}
