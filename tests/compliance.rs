//! Compliance officers and the audit log, through the binary.

mod common;

use common::*;

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

    let (ok, out) = cli(&config, &["audit", "list", "--json"]);
    assert!(ok, "{out}");
    let actions: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
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
