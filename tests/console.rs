//! The officers' web console, in process over HTTPS on a manual clock: status codes,
//! the browser defences (cookies, CSRF, Content-Security-Policy), role refusals and
//! the audit entries its forms leave, which are the API's and the command line's.
//! The same flow in a real browser is `console_browser.rs`.

mod common;

use http::{Method, StatusCode};

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
        code: String,
        fields: &[(&str, &str)],
    ) -> Reply {
        let password = format!("{officer}-long-password");
        let mut all = vec![
            ("csrf", token),
            ("password", password.as_str()),
            ("totp", code.as_str()),
        ];
        all.extend_from_slice(fields);
        self.post(path, &all).await
    }
}

fn actions(config: &std::path::Path) -> Vec<(String, String)> {
    let (ok, out) = cli(config, &["audit", "list", "--json"]);
    assert!(ok, "{out}");
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["actor"].as_str().unwrap().to_owned(),
                v["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn has(actions: &[(String, String)], actor: &str, action: &str) -> bool {
    actions.iter().any(|(a, b)| a == actor && b == action)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_logs_in_opens_approves_and_discloses_with_its_defences_on() {
    let s = start(true).await;
    let anna = add_officer(&s.config_path, "anna", "officer");
    let bert = add_officer(&s.config_path, "bert", "approver");
    let carl = add_officer(&s.config_path, "carl", "admin");
    relay_one(&s, "acme", "%2B31612345678").await;
    relay_one(&s, "acme", "%2B31687654321").await;
    s.running.settle().await.unwrap();
    let now = || s.clock.now_micros();
    let next_step = || s.clock.advance(chrono::Duration::seconds(30));

    // Without a session: to the login page, every reply with the strict policy.
    let mut a = ConsoleClient::new(&s.admin);
    let r = a.get("/console/cases").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/console/login");
    let page = a.get("/console/login").await;
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
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
    assert!(set_cookie(&r, "relaylog_console").is_none());

    // A wrong code: the form again, with the reason, and no session.
    let wrong = format!(
        "{:06}",
        (totp_at(&anna, now()).parse::<u32>().unwrap() + 1) % 1_000_000
    );
    let r = a.log_in("anna", &wrong).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(text(&r).contains("TOTP"), "{}", text(&r));
    assert!(a.session.is_none());

    // The right one: a session cookie with the API's lifetime and every attribute.
    let r = a.log_in("anna", &totp_at(&anna, now())).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let (_, attrs) = set_cookie(&r, "relaylog_console").unwrap();
    for attr in [
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console/",
        "Max-Age=900",
    ] {
        assert!(attrs.contains(attr), "{attr} in {attrs}");
    }
    let token = a.token().await;

    // A form with another session's token, or none: 403, and nothing done.
    let case_fields = |t: &'static str| -> Vec<(&'static str, String)> {
        let today = chrono::Utc::now().date_naive();
        vec![
            ("csrf", t.to_owned()),
            ("authority", "Openbaar Ministerie".into()),
            ("country", "nl".into()),
            ("organisation", "OM-0042".into()),
            ("request", "2026-0815".into()),
            ("legal_basis", "Sv 126n".into()),
            ("order_reference", "RC 26/1234".into()),
            ("order_date", "2026-11-20".into()),
            ("deadline", "2026-12-24".into()),
            ("since", (today - chrono::Days::new(1)).to_string()),
            ("until", today.to_string()),
            ("recipient", "+31612345678\r\n".into()),
        ]
    };
    let r = a
        .send(
            "/console/cases",
            case_fields("ffffffffffffffffffffffffffffffff"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    let mut no_token = case_fields("");
    no_token.retain(|(k, _)| *k != "csrf");
    let r = a.send("/console/cases", no_token).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let (ok, out) = cli(&s.config_path, &["case", "list"]);
    assert!(ok && !out.contains("2026-0815"), "no case opened: {out}");

    // A bad form: 400, what was typed kept, the reason shown.
    let mut bad = case_fields("");
    bad[0].1 = token.clone();
    bad.retain(|(k, _)| *k != "recipient");
    let r = a.send("/console/cases", bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let html = text(&r);
    assert!(html.contains("at least one identifier"), "{html}");
    assert!(
        html.contains("value=\"Openbaar Ministerie\""),
        "kept: {html}"
    );

    // The case opened: to its page, which shows the criterion as a kind and tag.
    let mut good = case_fields("");
    good[0].1 = token.clone();
    let r = a.send("/console/cases", good).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let case_url = r.headers["location"].to_str().unwrap().to_owned();
    assert_eq!(case_url, "/console/cases/1");
    let html = text(&a.get(&case_url).await);
    assert!(
        html.contains("recipient") && html.contains("open"),
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

    // An officer may not approve (role), nor reach the admin pages; both audited.
    next_step();
    let code = totp_at(&anna, now());
    let r = a
        .confirmed(
            "/console/cases/1/decision",
            &token,
            "anna",
            code,
            &[("decision", "approve")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    let r = a.get("/console/officers").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(text(&r).contains("admin"), "{}", text(&r));

    // The approver approves, with password and a fresh code.
    let mut b = ConsoleClient::new(&s.admin);
    assert_eq!(
        b.log_in("bert", &totp_at(&bert, now())).await.status,
        StatusCode::SEE_OTHER
    );
    let bert_token = b.token().await;
    // The login's own code again: refused as a replay.
    let replay = b
        .confirmed(
            "/console/cases/1/decision",
            &bert_token,
            "bert",
            totp_at(&bert, now()),
            &[("decision", "approve")],
        )
        .await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    // An expired page sends back to the login: the session is still there, though.
    assert!(b.get("/console/cases").await.status.is_success());
    next_step();
    let r = b
        .confirmed(
            "/console/cases/1/decision",
            &bert_token,
            "bert",
            totp_at(&bert, now()),
            &[("decision", "approve")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    assert!(text(&b.get("/console/cases/1").await).contains("state approved"));

    // The opener discloses (fresh code), and downloads the export it lists.
    next_step();
    let r = a
        .confirmed(
            "/console/cases/1/disclosures",
            &token,
            "anna",
            totp_at(&anna, now()),
            &[("format", "json")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let html = text(&a.get("/console/cases/1").await);
    let at = html
        .find("/console/exports/case-1-")
        .expect("the export is listed");
    let href = &html[at..at + html[at..].find('"').unwrap()];
    let export = a.get(href).await;
    assert_eq!(export.status, StatusCode::OK);
    assert!(
        export.headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment;")
    );
    let body: serde_json::Value = serde_json::from_slice(&export.body).unwrap();
    assert_eq!(body.as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body[0]["recipient"], "+31612345678");
    // A path outside the exports: refused.
    let r = a.get("/console/exports/..%2Fledger.sqlite").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // The admin enrols an officer: the otpauth URI as an inline SVG QR code.
    let mut c = ConsoleClient::new(&s.admin);
    assert_eq!(
        c.log_in("carl", &totp_at(&carl, now())).await.status,
        StatusCode::SEE_OTHER
    );
    let carl_token = c.token().await;
    let r = c
        .send(
            "/console/officers",
            vec![
                ("csrf", carl_token.clone()),
                ("name", "dora".into()),
                ("role", "officer".into()),
                ("password", "dora-long-password".into()),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", text(&r));
    let html = text(&r);
    assert!(html.contains("<svg role=\"img\"") && html.contains("otpauth://totp/relaylog:dora"));
    // The audit log, a page of it, and the chain verified.
    let html = text(&c.get("/console/audit").await);
    assert!(html.contains("case.approve") && html.contains("export.download"));
    let r = c
        .send("/console/audit/verify", vec![("csrf", carl_token.clone())])
        .await;
    assert!(text(&r).contains("The chain holds"), "{}", text(&r));

    // Traffic: counts and charts, no identifier.
    let r = c.get("/console/traffic").await;
    assert_eq!(r.status, StatusCode::OK);
    let html = text(&r);
    assert!(html.contains("Messages per hour: sms (http)"), "{html}");
    assert!(html.contains("<svg") && html.contains("Store size by partition"));
    let day = s.clock.now().format("%Y-%m-%d").to_string();
    assert!(
        html.contains(&format!(">{day}</text>")),
        "today's partition drawn: {html}"
    );
    assert!(!html.contains(" 0 B<"), "its size is read: {html}");
    for secret in ["31612345678", "acme"] {
        assert!(!html.contains(secret), "{secret} on the traffic page");
    }

    // Log out: the cookie cleared and the session gone for good.
    let old = a.session.clone();
    let r = a
        .send("/console/logout", vec![("csrf", token.clone())])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(set_cookie(&r, "relaylog_console").unwrap().0, "");
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
    assert_eq!(set_cookie(&r, "relaylog_console").unwrap().0, "");

    let log = actions(&s.config_path);
    for (actor, action) in [
        ("anna", "session.login"),
        ("anna", "case.open"),
        ("anna", "auth.failure"),
        ("bert", "case.approve"),
        ("anna", "case.disclose"),
        ("anna", "export.download"),
        ("carl", "officer.add"),
        ("carl", "audit.verify"),
        ("anna", "session.logout"),
    ] {
        assert!(has(&log, actor, action), "{actor} {action} in {log:?}");
    }
}
