//! The officers' web console, in process over HTTPS on a manual clock: status codes,
//! the browser defences (cookies, CSRF, origin, Content-Security-Policy), role
//! refusals, the second factor for sensitive acts, and the audit entries its forms
//! leave, which are the API's and the command line's. The same flow in a real browser
//! is `console_browser.rs`.

mod common;

use http::{Method, StatusCode};
use serde_json::Value;

use common::admin::*;
use common::*;
use relaylog::clock::Clock;

impl ConsoleClient<'_> {
    /// Posts a sensitive form: the session's CSRF token, the officer's password (as
    /// `add_officer` sets it) and a TOTP code, with `fields`.
    async fn confirmed(
        &self,
        path: &str,
        token: &str,
        officer: &str,
        code: &str,
        fields: &[(&str, &str)],
    ) -> Reply {
        let password = format!("{officer}-long-password");
        let mut all = vec![("csrf", token), ("password", &password), ("totp", code)];
        all.extend_from_slice(fields);
        self.post(path, &all).await
    }
}

/// Every audit entry as (actor, action, details).
fn audit(config: &std::path::Path) -> Vec<(String, String, Value)> {
    let (ok, out) = cli(config, &["audit", "list", "--json"]);
    assert!(ok, "{out}");
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["actor"].as_str().unwrap().to_owned(),
                v["action"].as_str().unwrap().to_owned(),
                v["details"].clone(),
            )
        })
        .collect()
}

/// Whether the log has an entry by `actor` of `action` whose details hold `pairs`
/// (a JSON pointer and the value there).
fn has(
    log: &[(String, String, Value)],
    actor: &str,
    action: &str,
    pairs: &[(&str, Value)],
) -> bool {
    log.iter().any(|(a, b, d)| {
        a == actor && b == action && pairs.iter().all(|(p, v)| d.pointer(p) == Some(v))
    })
}

/// The fields of the open-a-case form, for `request` and a recipient.
fn case_fields(csrf: &str, request: &str, today: chrono::NaiveDate) -> Vec<(&'static str, String)> {
    vec![
        ("csrf", csrf.to_owned()),
        ("authority", "Openbaar Ministerie".into()),
        ("country", "nl".into()),
        ("organisation", "OM-0042".into()),
        ("request", request.into()),
        ("legal_basis", "Sv 126n".into()),
        ("order_reference", "RC 26/1234".into()),
        ("order_date", "2026-11-20".into()),
        ("deadline", "2026-12-24".into()),
        ("since", (today - chrono::Days::new(1)).to_string()),
        ("until", today.to_string()),
        ("recipient", "+31612345678\r\n".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_logs_in_opens_approves_and_discloses_with_its_defences_on() {
    let s = start(true).await;
    let anna = add_officer(&s.config_path, "anna", "officer");
    let bert = add_officer(&s.config_path, "bert", "approver");
    let carl = add_officer(&s.config_path, "carl", "admin");
    relay_one(&s, "acme", "%2B31612345678").await;
    relay_one(&s, "acme", "%2B31612345678").await;
    relay_one(&s, "acme", "%2B31687654321").await;
    s.running.settle().await.unwrap();
    let now = || s.clock.now_micros();
    let next_step = || s.clock.advance(chrono::Duration::seconds(30));
    let today = s.clock.now().date_naive();
    // The day the messages went into (the clock moves on during the test).
    let relayed_on = s.clock.now().format("%Y-%m-%d").to_string();

    // Without a session: to the login page, every reply with the strict policy.
    let mut a = ConsoleClient::new(&s.admin);
    let r = a.get("/console/cases").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/console/login");
    let page = a.get("/console/login").await;
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("data:"), "{csp}");
    assert_eq!(page.headers["cache-control"], "no-store");
    let html = text(&page);
    assert!(!html.contains("<script"), "no script on any page");
    for field in ["officer", "password", "totp"] {
        assert!(
            html.contains(&format!("<label for=\"{field}\"")),
            "{field} has a label"
        );
    }

    // A login post without the login form's cookie (from another site): refused.
    let r = s
        .admin
        .request(
            Method::POST,
            "/console/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            form(&[
                ("csrf", "00000000000000000000000000000000"),
                ("officer", "anna"),
                ("password", "anna-long-password"),
                ("totp", &totp_at(&anna, now())),
            ]),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(set_cookie(&r, "__Host-relaylog_console").is_none());

    // A wrong code: the form again, with the reason, and no session.
    let wrong = format!(
        "{:06}",
        (totp_at(&anna, now()).parse::<u32>().unwrap() + 1) % 1_000_000
    );
    let r = a.log_in("anna", &wrong).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(text(&r).contains("TOTP"), "{}", text(&r));
    assert!(a.session.is_none());

    // The right one: a `__Host-` session cookie with the API's lifetime.
    let r = a.log_in("anna", &totp_at(&anna, now())).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let (_, attrs) = set_cookie(&r, "__Host-relaylog_console").unwrap();
    for attr in [
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/;",
        "Max-Age=900",
    ] {
        assert!(attrs.contains(attr), "{attr} in {attrs}");
    }
    let token = a.token().await;
    // The cookie is no bearer token for the API, where no second factor is asked.
    let console_token = a.session.clone().unwrap();
    let r = s.admin.get("/api/v1/cases", &console_token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A form with another session's token, or none, or from another site: 403, and
    // nothing done; each counted as a refusal with its reason.
    let other = "ffffffffffffffffffffffffffffffff";
    let r = a
        .send("/console/cases", case_fields(other, "2026-0815", today))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    let mut no_token = case_fields("", "2026-0815", today);
    no_token.retain(|(k, _)| *k != "csrf");
    assert_eq!(
        a.send("/console/cases", no_token).await.status,
        StatusCode::FORBIDDEN
    );
    let fields = case_fields(&token, "2026-0815", today);
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cookie = format!("__Host-relaylog_console={console_token}");
    let r = s
        .admin
        .request(
            Method::POST,
            "/console/cases",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("cookie", &cookie),
                ("sec-fetch-site", "cross-site"),
            ],
            form(&pairs),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Nor does a page of another site get a page in the officer's name.
    let r = s
        .admin
        .request(
            Method::GET,
            "/console/cases",
            &[("cookie", &cookie), ("sec-fetch-site", "same-site")],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let (ok, out) = cli(&s.config_path, &["case", "list"]);
    assert!(ok && !out.contains("2026-0815"), "no case opened: {out}");
    let log = audit(&s.config_path);
    for reason in ["csrf", "origin"] {
        assert!(
            log.iter()
                .any(|(_, action, d)| action == "api.unauthenticated"
                    && d.pointer(&format!("/reasons/{reason}")).is_some()),
            "a {reason} refusal in {log:?}"
        );
    }

    // A bad form: 400, what was typed kept, the reason shown; a deadline not a date.
    let mut bad = case_fields(&token, "2026-0815", today);
    bad.retain(|(k, _)| *k != "recipient");
    let r = a.send("/console/cases", bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let html = text(&r);
    assert!(html.contains("at least one identifier"), "{html}");
    assert!(
        html.contains("value=\"Openbaar Ministerie\""),
        "kept: {html}"
    );
    let mut bad = case_fields(&token, "2026-0815", today);
    bad[8].1 = "24 Dec 2026".into();
    let r = a.send("/console/cases", bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        text(&r).contains("the deadline is not a date"),
        "{}",
        text(&r)
    );

    // The case opened: to its page, which shows the criterion as a kind and tag.
    let r = a
        .send("/console/cases", case_fields(&token, "2026-0815", today))
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    assert_eq!(r.headers["location"], "/console/cases/1");
    let html = text(&a.get("/console/cases/1").await);
    assert!(html.contains("class=\"state open\""), "{html}");
    assert!(
        html.contains("<span class=\"kind\">recipient</span>"),
        "{html}"
    );
    assert!(
        !html.contains("+31612345678"),
        "the number is sealed: not on the page"
    );
    assert!(
        html.contains("case.open"),
        "history from the audit log: {html}"
    );
    assert!(!html.contains(">case.show<"), "views are not history");

    // An officer may not approve (role), nor reach the admin pages: each refused and
    // audited for what was asked.
    next_step();
    let r = a
        .confirmed(
            "/console/cases/1/decision",
            &token,
            "anna",
            &totp_at(&anna, now()),
            &[("decision", "approve")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    let r = a.get("/console/officers").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(text(&r).contains("admin"), "{}", text(&r));
    next_step();
    let r = a
        .confirmed(
            "/console/offboard",
            &token,
            "anna",
            &totp_at(&anna, now()),
            &[("account", "acme"), ("purpose", "contract-end")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    let log = audit(&s.config_path);
    for asked in ["case.approve", "officer.list", "account.offboard"] {
        assert!(
            has(
                &log,
                "anna",
                "auth.failure",
                &[("/for", asked.into()), ("/reason", "role".into())]
            ),
            "{asked} refused in {log:?}"
        );
    }

    // The approver: the login's own code again is refused as a replay, with the
    // same words as a wrong password; a fresh one approves.
    let mut b = ConsoleClient::new(&s.admin);
    assert_eq!(
        b.log_in("bert", &totp_at(&bert, now())).await.status,
        StatusCode::SEE_OTHER
    );
    let bert_token = b.token().await;
    let replay = b
        .confirmed(
            "/console/cases/1/decision",
            &bert_token,
            "bert",
            &totp_at(&bert, now()),
            &[("decision", "approve")],
        )
        .await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert!(text(&replay).contains("the password or the code is wrong"));
    let wrong_password = b
        .post(
            "/console/cases/1/decision",
            &[
                ("csrf", &bert_token),
                ("decision", "approve"),
                ("password", "not-bert"),
                ("totp", "000000"),
            ],
        )
        .await;
    assert_eq!(wrong_password.status, StatusCode::UNAUTHORIZED);
    assert!(text(&wrong_password).contains("the password or the code is wrong"));
    // No second factor at all: asked for, nothing done.
    let r = b
        .post(
            "/console/cases/1/decision",
            &[("csrf", &bert_token), ("decision", "approve")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // The failures did not end the session.
    assert!(b.get("/console/cases").await.status.is_success());
    next_step();
    let r = b
        .confirmed(
            "/console/cases/1/decision",
            &bert_token,
            "bert",
            &totp_at(&bert, now()),
            &[("decision", "approve"), ("note", "checked")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    assert!(text(&b.get("/console/cases/1").await).contains("class=\"state approved\""));

    // The opener discloses (fresh code), and downloads the export it lists, with its
    // manifest, signature and the public key; `verify-export` checks them.
    next_step();
    let r = a
        .confirmed(
            "/console/cases/1/disclosures",
            &token,
            "anna",
            &totp_at(&anna, now()),
            &[("format", "json"), ("purpose", "lawful-request")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let html = text(&a.get("/console/cases/1").await);
    let downloads = tempfile::tempdir().unwrap();
    let mut manifest = None;
    for href in html
        .split("href=\"")
        .skip(1)
        .filter_map(|h| h.split('"').next())
        .filter(|h| h.starts_with("/console/exports/") || *h == "/console/signing-key.pub")
    {
        let r = a.get(href).await;
        assert_eq!(r.status, StatusCode::OK, "{href}");
        let disposition = r.headers["content-disposition"].to_str().unwrap();
        assert!(disposition.starts_with("attachment;"), "{disposition}");
        let name = href.rsplit('/').next().unwrap();
        std::fs::write(downloads.path().join(name), &r.body).unwrap();
        if name.ends_with(".manifest.json") {
            manifest = Some(downloads.path().join(name));
        }
    }
    let export = std::fs::read_dir(downloads.path())
        .unwrap()
        .flatten()
        .find(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".json") && !n.ends_with(".manifest.json")
        })
        .expect("the export downloaded");
    let body: Value = serde_json::from_slice(&std::fs::read(export.path()).unwrap()).unwrap();
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(body[0]["recipient"], "+31612345678");
    let key = downloads.path().join("signing-key.pub");
    let (ok, out) = cli(
        &s.config_path,
        &[
            "verify-export",
            manifest.unwrap().to_str().unwrap(),
            "--public-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok, "the downloads verify with the downloaded key: {out}");
    // A path outside the exports: refused.
    let r = a.get("/console/exports/..%2Fledger.sqlite").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // A name that is no export: 404, counted as a refusal (names are not guessed).
    let r = a
        .get("/console/exports/case-1-20261206T000000.000000Z-0000000000000000.json")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Closed, with the second factor.
    let r = a
        .send("/console/cases/1/close", vec![("csrf", token.clone())])
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "no second factor: not closed"
    );
    next_step();
    let r = a
        .confirmed(
            "/console/cases/1/close",
            &token,
            "anna",
            &totp_at(&anna, now()),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    assert!(text(&a.get("/console/cases/1").await).contains("class=\"state closed\""));

    // A second case, rejected with its reason; the filters find it.
    let r = a
        .send("/console/cases", case_fields(&token, "2026-0816", today))
        .await;
    assert_eq!(r.headers["location"], "/console/cases/2");
    next_step();
    let r = b
        .confirmed(
            "/console/cases/2/decision",
            &bert_token,
            "bert",
            &totp_at(&bert, now()),
            &[("decision", "reject"), ("note", "no order attached")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let html = text(&a.get("/console/cases?state=rejected").await);
    assert!(
        html.contains("/console/cases/2\"") && !html.contains("/console/cases/1\""),
        "{html}"
    );
    let html = text(&a.get("/console/cases?due=2026-12-01").await);
    assert!(html.contains("0 of 2 cases"), "{html}");

    // A subject's export, with the second factor.
    next_step();
    let r = a
        .confirmed(
            "/console/subject",
            &token,
            "anna",
            &totp_at(&anna, now()),
            &[("recipient", "+31687654321"), ("purpose", "subject-access")],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", text(&r));
    assert!(text(&r).contains("1 records exported"), "{}", text(&r));

    // A hold placed, and released only with the second factor.
    let r = a
        .send(
            "/console/holds",
            vec![
                ("csrf", token.clone()),
                ("case", "2026-0815".into()),
                ("since", today.to_string()),
                ("until", today.to_string()),
                ("reason", "appeal pending".into()),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    assert!(text(&a.get("/console/holds").await).contains("appeal pending"));
    let r = a
        .send(
            "/console/holds/release",
            vec![("csrf", token.clone()), ("case", "2026-0815".into())],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        text(&a.get("/console/holds").await).contains("appeal pending"),
        "still held"
    );
    next_step();
    let r = a
        .confirmed(
            "/console/holds/release",
            &token,
            "anna",
            &totp_at(&anna, now()),
            &[("case", "2026-0815")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    assert!(!text(&a.get("/console/holds").await).contains("appeal pending"));

    // The admin enrols an officer (second factor): the URI as an inline SVG QR code.
    let mut c = ConsoleClient::new(&s.admin);
    assert_eq!(
        c.log_in("carl", &totp_at(&carl, now())).await.status,
        StatusCode::SEE_OTHER
    );
    let carl_token = c.token().await;
    next_step();
    let r = c
        .confirmed(
            "/console/officers",
            &carl_token,
            "carl",
            &totp_at(&carl, now()),
            &[
                ("name", "dora"),
                ("role", "officer"),
                ("new_password", "dora-long-password"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", text(&r));
    let html = text(&r);
    assert!(html.contains("<svg role=\"img\"") && html.contains("otpauth://totp/relaylog:dora"));
    // Disabling: an admin's act with the second factor; never the last admin.
    next_step();
    let r = a
        .confirmed(
            "/console/officers/disable",
            &token,
            "anna",
            &totp_at(&anna, now()),
            &[("name", "dora")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    let r = c
        .send(
            "/console/officers/disable",
            vec![("csrf", carl_token.clone()), ("name", "dora".into())],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "no second factor: not disabled"
    );
    next_step();
    let r = c
        .confirmed(
            "/console/officers/disable",
            &carl_token,
            "carl",
            &totp_at(&carl, now()),
            &[("name", "dora")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let html = text(&c.get("/console/officers").await);
    assert!(
        html.contains("<td>dora</td><td>officer</td><td>no</td>"),
        "{html}"
    );
    next_step();
    let r = c
        .confirmed(
            "/console/officers/disable",
            &carl_token,
            "carl",
            &totp_at(&carl, now()),
            &[("name", "carl")],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", text(&r));
    assert!(text(&r).contains("last enabled admin"));
    // Offboarding by the admin.
    next_step();
    let r = c
        .confirmed(
            "/console/offboard",
            &carl_token,
            "carl",
            &totp_at(&carl, now()),
            &[("account", "acme"), ("purpose", "contract-end")],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", text(&r));
    assert!(text(&r).contains("3 records and"), "{}", text(&r));

    // The audit log: the first page, a link to the newest, and the chain verified.
    // Two pages' worth of entries more (each list is audited).
    for _ in 0..200 {
        c.get("/console/cases").await;
    }
    let html = text(&c.get("/console/audit").await);
    assert!(html.contains("case.approve") && html.contains("export.download"));
    assert!(
        html.contains("<td>1</td>") && !html.contains("<td>101</td>"),
        "the first page"
    );
    // The links of a page: its href before each link text.
    let link = |html: &str, name: &str| -> String {
        let at = html
            .find(&format!("\">{name}</a>"))
            .unwrap_or_else(|| panic!("a link {name}: {html}"));
        html[html[..at].rfind("href=\"").unwrap() + 6..at].to_owned()
    };
    assert_eq!(link(&html, "Later entries"), "/console/audit?after=100");
    let second = text(&c.get("/console/audit?after=100").await);
    assert!(second.contains("<td>101</td>") && !second.contains("<td>100</td>"));
    assert_eq!(link(&second, "Earlier entries"), "/console/audit?after=0");
    let html = text(&c.get(&link(&html, "Newest")).await);
    assert!(
        html.contains("audit.list") && !html.contains("session.login"),
        "{html}"
    );
    let r = c
        .send("/console/audit/verify", vec![("csrf", carl_token.clone())])
        .await;
    assert!(text(&r).contains("The chain holds"), "{}", text(&r));

    // Traffic: counts and charts, no identifier.
    let r = c.get("/console/traffic").await;
    assert_eq!(r.status, StatusCode::OK);
    let html = text(&r);
    assert!(html.contains("Messages per hour: sms (http)"), "{html}");
    assert!(html.contains("3 messages in 7 days"), "{html}");
    assert!(
        html.contains(&format!(">{relayed_on}</text>")),
        "today's partition drawn: {html}"
    );
    assert!(!html.contains(">0 B<"), "its size is read: {html}");
    for secret in ["31612345678", "acme"] {
        assert!(!html.contains(secret), "{secret} on the traffic page");
    }

    // Logging in again ends the session the browser had.
    let old = c.session.clone();
    next_step();
    assert_eq!(
        c.log_in("carl", &totp_at(&carl, now())).await.status,
        StatusCode::SEE_OTHER
    );
    let before = ConsoleClient {
        admin: &s.admin,
        session: old,
    };
    assert_eq!(
        before.get("/console/cases").await.status,
        StatusCode::SEE_OTHER
    );

    // Log out: the cookie cleared and the session gone for good.
    let old = a.session.clone();
    let r = a
        .send("/console/logout", vec![("csrf", token.clone())])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(set_cookie(&r, "__Host-relaylog_console").unwrap().0, "");
    let replayed = ConsoleClient {
        admin: &s.admin,
        session: old,
    };
    assert_eq!(
        replayed.get("/console/cases").await.status,
        StatusCode::SEE_OTHER
    );

    // A session past its lifetime: back to the login page, the cookie cleared.
    s.clock.advance(chrono::Duration::minutes(16));
    let r = b.get("/console/cases").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/console/login");
    assert_eq!(set_cookie(&r, "__Host-relaylog_console").unwrap().0, "");

    let log = audit(&s.config_path);
    for (actor, action, pairs) in [
        ("anna", "session.login", vec![]),
        ("anna", "case.open", vec![("/case", Value::from(1))]),
        (
            "bert",
            "case.approve",
            vec![("/case", Value::from(1)), ("/note", "checked".into())],
        ),
        ("bert", "case.reject", vec![("/case", Value::from(2))]),
        (
            "anna",
            "case.disclose",
            vec![
                ("/case", Value::from(1)),
                ("/purpose", "lawful-request".into()),
            ],
        ),
        (
            "anna",
            "subject.export",
            vec![("/purpose", "subject-access".into())],
        ),
        (
            "carl",
            "account.offboard",
            vec![("/purpose", "contract-end".into())],
        ),
        ("anna", "case.close", vec![("/case", Value::from(1))]),
        ("anna", "export.download", vec![]),
        ("anna", "subject.export", vec![]),
        ("anna", "hold.add", vec![]),
        ("anna", "hold.release", vec![]),
        (
            "anna",
            "auth.failure",
            vec![("/for", "officer.disable".into())],
        ),
        ("carl", "officer.disable", vec![("/officer", "dora".into())]),
        ("carl", "session.logout", vec![("/replaced", true.into())]),
        ("anna", "export.download", vec![("/case", Value::from(1))]),
        ("carl", "officer.add", vec![]),
        ("carl", "account.offboard", vec![]),
        ("carl", "audit.verify", vec![]),
        ("anna", "session.logout", vec![]),
    ] {
        assert!(
            has(&log, actor, action, &pairs),
            "{actor} {action} {pairs:?} in {log:?}"
        );
    }
}
