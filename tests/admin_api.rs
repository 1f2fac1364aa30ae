//! The compliance API over HTTPS, in-process on a manual clock (so that session
//! expiry is tested without waiting), against the command line's results.

mod common;

use std::path::Path;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use common::admin::*;
use common::*;
use relaylog::clock::Clock;

fn audit_actions(config: &Path) -> Vec<(String, Value)> {
    let (ok, out) = cli(config, &["audit", "list", "--json"]);
    assert!(ok, "{out}");
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["action"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

fn case_form(request: &str, recipient: &str) -> Value {
    let today = chrono::Utc::now().date_naive();
    json!({
        "authority": "Openbaar Ministerie",
        "country": "nl",
        "organisation": "OM-0042",
        "request": request,
        "legal_basis": "Sv 126n",
        "order_reference": "RC 26/1234",
        "order_date": "2026-11-20",
        "deadline": "2026-12-04",
        "since": (today - chrono::Days::new(1)).to_string(),
        "until": today.to_string(),
        "identifiers": {"recipient": [recipient]},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_through_the_api_matches_the_command_line_and_every_call_is_audited() {
    let s = start(true).await;
    let anna = add_officer(&s.config_path, "anna", "officer");
    let bert = add_officer(&s.config_path, "bert", "approver");
    let carl = add_officer(&s.config_path, "carl", "admin");
    let target = "+31612345678";
    relay_one(&s, "acme", "%2B31612345678").await;
    relay_one(&s, "acme", "%2B31612345678").await;
    relay_one(&s, "acme", "%2B31687654321").await;
    relay_one(&s, "leaver", "%2B31611111111").await;
    s.running.settle().await.unwrap();

    // No session: 401, audited with the route template (never the query string).
    let r = s
        .admin
        .call(Method::GET, "/api/v1/cases?who=x", None, None)
        .await;
    assert_eq!(
        r.expect(StatusCode::UNAUTHORIZED)["error"],
        "no session token: log in with POST /api/v1/session"
    );
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = s.admin.get("/api/v1/cases", "forged-token").await;
    r.expect(StatusCode::UNAUTHORIZED);
    // A wrong TOTP code at login: 401, audited as an authentication failure.
    let wrong = format!(
        "{:06}",
        (totp_at(&anna, s.clock.now_micros()).parse::<u32>().unwrap() + 1) % 1_000_000
    );
    let r = s
        .admin
        .call(
            Method::POST,
            "/api/v1/session",
            None,
            Some(json!({"officer": "anna", "password": "anna-long-password", "totp": wrong})),
        )
        .await;
    assert!(
        r.expect(StatusCode::UNAUTHORIZED)["error"]
            .as_str()
            .unwrap()
            .contains("TOTP")
    );

    // /metrics and /healthz need no login, over the same TLS listener.
    let r = s.admin.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!contains(&r.body, b"31612345678"));
    assert_eq!(
        s.admin
            .call(Method::GET, "/healthz", None, None)
            .await
            .status,
        StatusCode::OK
    );

    let anna_t = s.admin.login("anna", &anna, &s.clock).await;
    // The same TOTP code again is a replay.
    let r = s
        .admin
        .call(
            Method::POST,
            "/api/v1/session",
            None,
            Some(json!({"officer": "anna", "password": "anna-long-password", "totp": totp_at(&anna, s.clock.now_micros())})),
        )
        .await;
    r.expect(StatusCode::UNAUTHORIZED);

    // Bad input, each a clear error.
    let mut bad = case_form("0001", "not-a-number");
    let r = s
        .admin
        .post("/api/v1/cases", &anna_t, Some(bad.clone()))
        .await;
    assert!(
        r.expect(StatusCode::BAD_REQUEST)["error"]
            .as_str()
            .unwrap()
            .contains("recipient identifier is malformed")
    );
    bad["identifiers"]["recipient"] = json!([target]);
    bad["since"] = json!("2020-01-01");
    bad["until"] = json!("2020-01-31");
    let r = s.admin.post("/api/v1/cases", &anna_t, Some(bad)).await;
    assert!(
        r.expect(StatusCode::BAD_REQUEST)["error"]
            .as_str()
            .unwrap()
            .contains("retention cutoff")
    );
    let r = s.admin.get("/api/v1/cases/999", &anna_t).await;
    assert_eq!(r.expect(StatusCode::NOT_FOUND)["error"], "no case 999");
    let r = s
        .admin
        .raw(
            Method::POST,
            "/api/v1/cases",
            Some(&anna_t),
            Bytes::from_static(b"{not json"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"].is_string());
    let huge = Bytes::from(vec![b' '; 70 * 1024]);
    let r = s
        .admin
        .raw(Method::POST, "/api/v1/cases", Some(&anna_t), huge)
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Open, try to disclose before approval, try to approve without the role.
    let case = s
        .admin
        .post("/api/v1/cases", &anna_t, Some(case_form("0001", target)))
        .await
        .expect(StatusCode::CREATED);
    let id = case["id"].as_i64().unwrap();
    assert_eq!(case["state"], "open");
    assert_eq!(case["request_id"], "NL/OM-0042/0001");
    assert!(!case.to_string().contains("612345678"), "{case}");
    let disclosures = format!("/api/v1/cases/{id}/disclosures");
    let r = s
        .admin
        .post(
            &disclosures,
            &anna_t,
            Some(json!({"format": "json", "purpose": "lawful-request"})),
        )
        .await;
    assert!(
        r.expect(StatusCode::CONFLICT)["error"]
            .as_str()
            .unwrap()
            .contains("needs it approved")
    );
    let approve = format!("/api/v1/cases/{id}/approve");
    let r = s.admin.post(&approve, &anna_t, Some(json!({}))).await;
    r.expect(StatusCode::FORBIDDEN);

    let bert_t = s.admin.login("bert", &bert, &s.clock).await;
    let approved = s
        .admin
        .post(&approve, &bert_t, Some(json!({"note": "order checked"})))
        .await
        .expect(StatusCode::OK);
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["decided_by"], "bert");
    let r = s.admin.delete("/api/v1/session", &bert_t).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = s.admin.get("/api/v1/cases", &bert_t).await;
    r.expect(StatusCode::UNAUTHORIZED);

    // A disclosure reads for a lawful request, nothing else, and states it.
    let r = s
        .admin
        .post(&disclosures, &anna_t, Some(json!({"format": "json"})))
        .await;
    r.expect(StatusCode::BAD_REQUEST);
    let r = s
        .admin
        .post(
            &disclosures,
            &anna_t,
            Some(json!({"format": "json", "purpose": "operations"})),
        )
        .await;
    assert!(
        r.expect(StatusCode::BAD_REQUEST)["error"]
            .as_str()
            .unwrap()
            .contains("reads for lawful-request")
    );

    // Disclose through the API, fetch the three files, verify them as the authority would.
    let d = s
        .admin
        .post(
            &disclosures,
            &anna_t,
            Some(json!({"format": "json", "purpose": "lawful-request"})),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(d["records"], 2);
    let fetched = tempfile::tempdir().unwrap();
    for key in ["export", "manifest", "signature"] {
        let name = d[key].as_str().unwrap();
        let r = s
            .admin
            .get(&format!("/api/v1/exports/{name}"), &anna_t)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{name}");
        std::fs::write(fetched.path().join(name), &r.body).unwrap();
    }
    let r = s
        .admin
        .get("/api/v1/exports/..%2Fledger.sqlite", &anna_t)
        .await;
    assert!(
        r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::NOT_FOUND,
        "{}",
        r.status
    );
    let manifest = fetched.path().join(d["manifest"].as_str().unwrap());
    let pubkey = s.dir.path().join("keys/signing.key.pub");
    let (ok, out) = cli(
        &s.config_path,
        &[
            "verify-export",
            manifest.to_str().unwrap(),
            "--public-key",
            pubkey.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("2 records"), "{out}");

    // The command line's disclosure of the same case holds the same bytes.
    let cli_out = s.dir.path().join("cli-export.json");
    let (ok, out) = cli_with_input(
        &s.config_path,
        &[
            "disclose",
            "--purpose",
            "lawful-request",
            "--case",
            &id.to_string(),
            "--officer",
            "anna",
            "--totp",
            &totp_ahead(&anna, 1),
            "--format",
            "json",
            "--out",
            cli_out.to_str().unwrap(),
        ],
        "anna-long-password\n",
    );
    assert!(ok, "{out}");
    let api_export = std::fs::read(fetched.path().join(d["export"].as_str().unwrap())).unwrap();
    assert_eq!(std::fs::read(&cli_out).unwrap(), api_export);
    let exported: Value = serde_json::from_slice(&api_export).unwrap();
    let records = exported.as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert!(
        records.iter().all(|r| r.to_string().contains(target)),
        "{exported}"
    );

    // An ad hoc query, audited.
    let q = s
        .admin
        .post(
            "/api/v1/queries",
            &anna_t,
            Some(json!({"kind": "recipient", "value": "0612345678", "purpose": "operations"})),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(q["matches"], 2);
    // A read that states no purpose, or one not on the list, is refused: a query, a
    // subject's export, an offboarding (the disclosure's is above).
    for (path, body) in [
        (
            "/api/v1/subject-exports",
            json!({"recipient": "+31611111111"}),
        ),
        ("/api/v1/accounts/leaver/offboard", json!({})),
        (
            "/api/v1/accounts/leaver/offboard",
            json!({"purpose": "analytics"}),
        ),
    ] {
        let r = s.admin.post(path, &anna_t, Some(body)).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    for body in [
        json!({"kind": "recipient", "value": "0612345678"}),
        json!({"kind": "recipient", "value": "0612345678", "purpose": "marketing"}),
    ] {
        let r = s.admin.post("/api/v1/queries", &anna_t, Some(body)).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }

    // Subject access and contract end, by the admin.
    let carl_t = s.admin.login("carl", &carl, &s.clock).await;
    let subject = s
        .admin
        .post(
            "/api/v1/subject-exports",
            &anna_t,
            Some(json!({"recipient": "+31611111111", "purpose": "subject-access"})),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(subject["records"], 1);
    let r = s
        .admin
        .post(
            "/api/v1/accounts/leaver/offboard",
            &anna_t,
            Some(json!({"purpose": "contract-end"})),
        )
        .await;
    r.expect(StatusCode::FORBIDDEN);
    let o = s
        .admin
        .post(
            "/api/v1/accounts/leaver/offboard",
            &carl_t,
            Some(json!({"purpose": "contract-end"})),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(o["records"], 1);
    assert!(
        o["statement"].as_str().unwrap().starts_with("offboard-"),
        "{o}"
    );
    let q = s
        .admin
        .post(
            "/api/v1/queries",
            &anna_t,
            Some(json!({"kind": "account", "value": "leaver", "purpose": "contract-end"})),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(q["matches"], 0);
    let statement = s
        .config
        .admin
        .as_ref()
        .unwrap()
        .exports
        .join(o["statement"].as_str().unwrap());
    let (ok, out) = cli(
        &s.config_path,
        &["verify-export", statement.to_str().unwrap()],
    );
    assert!(ok, "{out}");

    let report = s
        .admin
        .call(
            Method::GET,
            &format!(
                "/api/v1/reports/cases?year={}",
                chrono::Utc::now().format("%Y")
            ),
            Some(&anna_t),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(report["cases"], 1);
    assert_eq!(report["disclosures"], 2);

    // The audit log through the API: admins only.
    s.admin
        .get("/api/v1/audit", &anna_t)
        .await
        .expect(StatusCode::FORBIDDEN);
    let v = s
        .admin
        .get("/api/v1/audit/verify", &carl_t)
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["intact"], true);
    let page = s
        .admin
        .get("/api/v1/audit?after=0&limit=3", &carl_t)
        .await
        .expect(StatusCode::OK);
    let seqs: Vec<i64> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    let officers = s
        .admin
        .get("/api/v1/officers", &carl_t)
        .await
        .expect(StatusCode::OK);
    assert_eq!(officers["officers"].as_array().unwrap().len(), 3);

    // Legal holds.
    let hold = json!({"case": "NL/OM-0042/0001", "since": "2026-01-01", "until": "2026-01-31", "reason": "order RC 26/1234"});
    s.admin
        .post("/api/v1/holds", &anna_t, Some(hold))
        .await
        .expect(StatusCode::CREATED);
    let holds = s
        .admin
        .get("/api/v1/holds", &anna_t)
        .await
        .expect(StatusCode::OK);
    assert_eq!(holds["holds"][0]["placed_by"], "anna");
    let released = s
        .admin
        .post("/api/v1/holds/NL%2FOM-0042%2F0001/release", &anna_t, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(released["released"], 1);
    let r = s
        .admin
        .post("/api/v1/holds/NL%2FOM-0042%2F0001/release", &anna_t, None)
        .await;
    r.expect(StatusCode::NOT_FOUND);

    // Disabling an officer ends her session at once.
    s.admin
        .post("/api/v1/officers/anna/disable", &carl_t, None)
        .await
        .expect(StatusCode::OK);
    let r = s.admin.get("/api/v1/cases", &anna_t).await;
    r.expect(StatusCode::UNAUTHORIZED);

    // Sessions end after session-ttl, with an error that says so.
    s.clock.advance(chrono::Duration::minutes(16));
    let r = s.admin.get("/api/v1/cases", &carl_t).await;
    assert!(
        r.expect(StatusCode::UNAUTHORIZED)["error"]
            .as_str()
            .unwrap()
            .contains("session expired")
    );

    // Exports are copies of traffic data: serve deletes them after exports-keep.
    let later = s.clock.now_micros();
    let export = s
        .config
        .admin
        .as_ref()
        .unwrap()
        .exports
        .join(d["export"].as_str().unwrap());
    assert!(
        off_runtime(|| relaylog::admin::api::expire_exports(&s.config, later))
            .unwrap()
            .is_empty()
    );
    let removed = off_runtime(|| {
        relaylog::admin::api::expire_exports(&s.config, later + 31 * 86_400_000_000)
    })
    .unwrap();
    assert_eq!(removed.len(), 9, "{removed:?}"); // disclosure, subject export, offboarding: 3 files each
    assert!(!export.exists());

    let actions = audit_actions(&s.config_path);
    let names: Vec<&str> = actions.iter().map(|(a, _)| a.as_str()).collect();
    // Refusals are coalesced, one entry per peer and minute with counts (the manual
    // clock may put them in one minute or several); a role too low is an entry of its
    // own, at once.
    let totals = |action: &str, map: &str| -> std::collections::BTreeMap<String, i64> {
        let mut totals = std::collections::BTreeMap::new();
        for (_, v) in actions
            .iter()
            .filter(|(a, v)| a == action && v["details"]["count"].is_i64())
        {
            assert_eq!(v["details"]["peer"], "127.0.0.1", "{v}");
            for (k, n) in v["details"][map].as_object().unwrap() {
                *totals.entry(k.clone()).or_default() += n.as_i64().unwrap();
            }
        }
        totals
    };
    let expect = |pairs: &[(&str, i64)]| -> std::collections::BTreeMap<String, i64> {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    };
    assert_eq!(
        totals("api.unauthenticated", "reasons"),
        expect(&[
            ("no token", 1),
            ("unknown token", 2),
            ("officer disabled", 1),
            ("expired token", 1)
        ])
    );
    let calls = totals("api.unauthenticated", "calls");
    assert!(calls.contains_key("GET /api/v1/cases"), "{calls:?}");
    assert_eq!(calls.values().sum::<i64>(), 5, "{calls:?}");
    assert_eq!(totals("auth.failure", "reasons"), expect(&[("totp", 2)]));
    assert_eq!(
        totals("auth.failure", "calls"),
        expect(&[("session.login", 2)])
    );
    let why: Vec<(&str, &str)> = actions
        .iter()
        .filter(|(a, v)| a == "auth.failure" && v["details"]["reason"].is_string())
        .map(|(_, v)| {
            (
                v["details"]["for"].as_str().unwrap(),
                v["details"]["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        why,
        [
            ("case.approve", "role"),
            ("account.offboard", "role"),
            ("audit.list", "role")
        ]
    );
    let case_steps: Vec<&str> = names
        .iter()
        .copied()
        .filter(|a| a.starts_with("case.") || *a == "export.download" || *a == "query")
        .collect();
    assert_eq!(
        case_steps,
        [
            "case.show",
            "case.open",
            "case.disclose.refused",
            "case.approve",
            "case.disclose",
            "export.download",
            "export.download",
            "export.download",
            "case.disclose",
            "query",
            "query",
        ]
    );
    for action in [
        "export.expired",
        "hold.add",
        "hold.list",
        "hold.release",
        "officer.list",
        "audit.list",
        "audit.verify",
        "session.login",
        "session.logout",
        "subject.export",
        "account.offboard",
        "report.cases",
        "officer.disable",
    ] {
        assert!(names.contains(&action), "{action} not in {names:?}");
    }
    let (ok, out) = cli(&s.config_path, &["audit", "verify"]);
    assert!(ok, "{out}");
    let ledger = ledger_bytes(s.config_path.parent().unwrap());
    for number in ["31612345678", "612345678", "31611111111", "leaver"] {
        for (name, bytes) in &ledger {
            assert!(!contains(bytes, number.as_bytes()), "{number} in {name}");
        }
        assert!(
            !actions.iter().any(|(_, v)| v.to_string().contains(number)),
            "{number} in the audit log"
        );
    }
    s.running.shutdown().await;
}

#[tokio::test]
async fn without_tls_the_admin_listener_serves_no_api() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &config_text(dir.path(), "kannel", None, "", "")).await;
    let c = client();
    let (status, body) = send(
        &c,
        Method::POST,
        &format!("{}/api/v1/session", relay.admin),
        &[("content-type", "application/json")],
        r#"{"officer":"anna","password":"anna-long-password","totp":"000000"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("served only over TLS"), "{body}");
    // Nor is the console.
    let (status, body) = get(&c, &format!("{}/console/login", relay.admin)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("console is served only over TLS"), "{body}");
    assert_eq!(
        get(&c, &format!("{}/healthz", relay.admin)).await.0,
        StatusCode::OK
    );
    relay.running.shutdown().await;
}

#[tokio::test]
async fn every_documented_route_is_served_and_asks_for_a_session() {
    let spec: Value = serde_json::from_str(include_str!("../docs/openapi.json")).unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if path.starts_with("/api/") {
                documented.push((method.to_uppercase(), path.clone()));
            }
            // Every operation says what it answers, and the secured ones say 401.
            let responses = op["responses"].as_object().unwrap();
            let public = op.get("security").is_some_and(|s| s == &json!([]));
            assert!(public || responses.contains_key("401"), "{method} {path}");
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = relaylog::admin::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(
        documented, served,
        "docs/openapi.json and the router differ"
    );

    let s = start(true).await;
    for (method, path) in relaylog::admin::api::ROUTES {
        let path = path
            .replace("{id}", "1")
            .replace("{name}", "x")
            .replace("{file}", "x.json")
            .replace("{case}", "x");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let r = s
            .admin
            .call(
                method.clone(),
                &path,
                Some("not-a-session"),
                Some(json!({})),
            )
            .await;
        let expected = if path == "/api/v1/session" && method == Method::POST {
            StatusCode::BAD_REQUEST // the login form itself is checked
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(
            r.status,
            expected,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = s
        .admin
        .call(Method::GET, "/api/v1/nothing-here", None, None)
        .await;
    r.expect(StatusCode::NOT_FOUND);

    // A malformed path parameter is a clear JSON error too.
    let anna = add_officer(&s.config_path, "anna", "officer");
    let token = s.admin.login("anna", &anna, &s.clock).await;
    let r = s.admin.get("/api/v1/cases/abc", &token).await;
    assert!(r.expect(StatusCode::BAD_REQUEST)["error"].is_string());
    let r = s
        .admin
        .post(
            "/api/v1/queries",
            &token,
            Some(json!({"kind": "recipient", "value": "+31612345678", "limit": 0, "purpose": "operations"})),
        )
        .await;
    r.expect(StatusCode::BAD_REQUEST);
    let r = s
        .admin
        .post("/api/v1/subject-exports", &token, Some(json!({})))
        .await;
    r.expect(StatusCode::BAD_REQUEST);
    s.running.shutdown().await;
}

/// A flood from one address: calls without a session get 401 up to the limit, then
/// 429; failed logins likewise, after which even the right password and code are
/// turned away until the minute is over; and each kind of refusal of that minute is
/// one audit entry with its count, not one entry a call.
#[tokio::test]
async fn a_flood_of_refused_calls_is_turned_away_and_audited_as_one_entry() {
    use relaylog::compliance::refusals::{LOGINS_PER_MINUTE, UNAUTHENTICATED_PER_MINUTE};
    let s = start(true).await;
    let anna = add_officer(&s.config_path, "anna", "officer");
    let mut statuses = Vec::new();
    for _ in 0..UNAUTHENTICATED_PER_MINUTE + 5 {
        let r = s
            .admin
            .call(Method::GET, "/api/v1/cases", Some("not-a-session"), None)
            .await;
        statuses.push(r.status);
    }
    let (under, over) = statuses.split_at(UNAUTHENTICATED_PER_MINUTE as usize);
    assert!(
        under.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    assert!(
        over.iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );

    let login = |officer: String, totp: String| {
        let admin = &s.admin;
        async move {
            admin
                .call(
                    Method::POST,
                    "/api/v1/session",
                    None,
                    Some(json!({"officer": officer, "password": "guessed-long-password", "totp": totp})),
                )
                .await
                .status
        }
    };
    // Names that do not exist: no officer is locked out on the way.
    for i in 0..LOGINS_PER_MINUTE {
        assert_eq!(
            login(format!("guess{i}"), "123456".into()).await,
            StatusCode::UNAUTHORIZED
        );
    }
    let right = json!({
        "officer": "anna",
        "password": "anna-long-password",
        "totp": totp_at(&anna, s.clock.now_micros()),
    });
    let r = s
        .admin
        .call(Method::POST, "/api/v1/session", None, Some(right))
        .await;
    r.expect(StatusCode::TOO_MANY_REQUESTS);
    // The next minute, the same address logs in.
    s.clock.advance(chrono::Duration::seconds(61));
    let token = s.admin.login("anna", &anna, &s.clock).await;
    assert!(!token.is_empty());

    let actions = audit_actions(&s.config_path);
    let counted = |action: &str| -> Vec<i64> {
        actions
            .iter()
            .filter(|(a, v)| a == action && v["details"]["count"].is_i64())
            .map(|(_, v)| v["details"]["count"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        counted("api.unauthenticated"),
        [UNAUTHENTICATED_PER_MINUTE + 5]
    );
    assert_eq!(counted("auth.failure"), [LOGINS_PER_MINUTE + 1]);
    let entries = actions.len();
    assert!(
        entries < 10,
        "{entries} audit entries for a flood of {}",
        statuses.len()
    );
    s.running.shutdown().await;
}

/// Subject requests have a deadline: one month from receipt, extended once to three.
/// Past it a request is overdue: in `subject request list` at an injected day, in
/// `report cases`, and, with `serve` on a clock 40 days on, in `/metrics` (a count)
/// and the API; `subject export --request` answers one on the command line and one,
/// late, through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_requests_have_deadlines_and_overdue_ones_show_everywhere() {
    let today = chrono::Utc::now().date_naive();
    let late = today - chrono::Days::new(45);
    let in_40_days = today + chrono::Days::new(40);
    let clock = relaylog::clock::ManualClock::new(chrono::Utc::now() + chrono::Duration::days(40));
    let mut seed = Vec::new();
    let s = start_with(true, clock, |config| {
        seed = add_officer(config, "anna", "officer");
        let open = |subject: &[&str], received: &str| {
            let mut args = vec!["subject", "request", "open"];
            args.extend(subject);
            args.extend(["--received", received]);
            cli_ok(config, &args)
        };
        let out = open(&["--recipient", "+31612345678"], &late.to_string());
        let due = relaylog::compliance::requests::deadline(late, false);
        assert!(
            out.contains(&format!(
                "subject request 1: received {late}, answer by {due}"
            )),
            "{out}"
        );
        let out = open(&["--email", "Jan@Example.org"], &today.to_string());
        assert!(out.contains("subject request 2"), "{out}");
        // Received in the future: refused.
        let tomorrow = (today + chrono::Days::new(1)).to_string();
        let (ok, out) = cli(
            config,
            &[
                "subject",
                "request",
                "open",
                "--recipient",
                "+31612345678",
                "--received",
                &tomorrow,
            ],
        );
        assert!(!ok && out.contains("in the future"), "{out}");

        // A reason naming the subject is refused: it would put the address in the
        // audit log.
        let (ok, out) = cli(
            config,
            &[
                "subject",
                "request",
                "extend",
                "2",
                "--reason",
                "jan@example.org asked twice",
            ],
        );
        assert!(!ok && out.contains("names the subject"), "{out}");
        // Extended once, within the first month, with a reason.
        let out = cli_ok(
            config,
            &[
                "subject",
                "request",
                "extend",
                "2",
                "--reason",
                "many records across two systems",
            ],
        );
        let extended = relaylog::compliance::requests::deadline(today, true);
        assert!(out.contains(&format!("answer by {extended}")), "{out}");
        let (ok, out) = cli(
            config,
            &["subject", "request", "extend", "2", "--reason", "again"],
        );
        assert!(!ok && out.contains("may be extended once"), "{out}");
        let (ok, out) = cli(
            config,
            &["subject", "request", "extend", "1", "--reason", "too late"],
        );
        assert!(!ok && out.contains("within it"), "{out}");

        // Today request 1 is overdue; 40 days on, 2 is not (extended).
        let list = |now: &str| -> Vec<Value> {
            serde_json::from_str(&cli_ok(
                config,
                &["subject", "request", "list", "--json", "--now", now],
            ))
            .unwrap()
        };
        let states = |v: Vec<Value>| -> Vec<String> {
            v.iter()
                .map(|r| r["state"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(states(list(&today.to_string())), ["overdue", "open"]);
        assert_eq!(states(list(&in_40_days.to_string())), ["overdue", "open"]);
        let listed = list(&today.to_string());
        assert_eq!(listed[1]["kind"], "email");
        assert!(
            !listed
                .iter()
                .any(|r| r.to_string().contains("12345678") || r.to_string().contains("xample"))
        );
        let report = cli_ok(
            config,
            &[
                "report",
                "cases",
                "--year",
                &late.format("%Y").to_string(),
                "--json",
            ],
        );
        let report: Value = serde_json::from_str(&report).unwrap();
        assert!(
            report["subject_requests"]["overdue"].as_u64().unwrap() >= 1,
            "{report}"
        );

        // Request 2 answered on the command line: its subject's export, and it closes.
        let out_file = config.with_file_name("subject-2.json");
        let (ok, out) = cli_with_input(
            config,
            &[
                "subject",
                "export",
                "--purpose",
                "subject-access",
                "--request",
                "2",
                "--officer",
                "anna",
                "--totp",
                &totp_now(&seed),
                "--out",
                out_file.to_str().unwrap(),
            ],
            "anna-long-password\n",
        );
        assert!(ok && out.contains("subject request 2 answered"), "{out}");
        let export: Value = serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
        assert_eq!(export["subject"]["kind"], "email", "{export}");
    })
    .await;

    // serve, 40 days on: one overdue request, as a count in /metrics.
    let r = s.admin.call(Method::GET, "/metrics", None, None).await;
    assert!(
        std::str::from_utf8(&r.body)
            .unwrap()
            .lines()
            .any(|l| l == "relaylog_subject_requests_overdue 1"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let anna = s.admin.login("anna", &seed, &s.clock).await;
    let listed = s
        .admin
        .get("/api/v1/subject-requests", &anna)
        .await
        .expect(StatusCode::OK);
    assert_eq!(listed["overdue"], 1, "{listed}");
    assert_eq!(listed["requests"][0]["state"], "overdue");
    assert_eq!(listed["requests"][1]["state"], "answered");
    assert_eq!(listed["today"], in_40_days.to_string());

    // The export answers request 1 (late), and only once.
    let body = json!({"request": 1, "purpose": "subject-access"});
    let done = s
        .admin
        .post("/api/v1/subject-exports", &anna, Some(body.clone()))
        .await;
    assert_eq!(done.expect(StatusCode::CREATED)["request"], 1);
    let again = s
        .admin
        .post("/api/v1/subject-exports", &anna, Some(body))
        .await;
    assert!(
        again.expect(StatusCode::CONFLICT)["error"]
            .as_str()
            .unwrap()
            .contains("was answered")
    );
    // A request and a subject at once: refused (one subject, as on the command line).
    let both = json!({"request": 1, "recipient": "+31600000000", "purpose": "subject-access"});
    let r = s
        .admin
        .post("/api/v1/subject-exports", &anna, Some(both))
        .await;
    assert!(
        r.expect(StatusCode::BAD_REQUEST)["error"]
            .as_str()
            .unwrap()
            .contains("one of recipient, email or request")
    );
    let listed = s
        .admin
        .get("/api/v1/subject-requests", &anna)
        .await
        .expect(StatusCode::OK);
    assert_eq!(listed["overdue"], 0, "{listed}");
    assert_eq!(listed["requests"][0]["state"], "answered-late");

    let actions = audit_actions(&s.config_path);
    let of = |a: &str| actions.iter().filter(|(x, _)| x == a).count();
    assert_eq!(
        (of("subject.request.open"), of("subject.request.extend")),
        (2, 1)
    );
    let answered: Vec<&Value> = actions
        .iter()
        .filter(|(a, _)| a == "subject.export")
        .map(|(_, v)| &v["details"]["request"])
        .collect();
    assert_eq!(answered, [2, 1], "the command line's, then the API's");
    assert!(
        !actions
            .iter()
            .any(|(_, v)| v.to_string().contains("12345678"))
    );
    s.running.shutdown().await;
}
