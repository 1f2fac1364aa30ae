//! The console's pages and forms. Each handler asks [`crate::admin::ops`] and renders
//! the answer; refusals (roles, four eyes, bad input) come back as the API's errors
//! and are shown with their status.
//!
//! - [`cases`]: the case list, opening a case, a case's page and its acts, downloads;
//! - [`subjects`]: a data subject's export and an account's offboarding;
//! - [`ledger`]: holds, the audit log and officers;
//! - [`glance`]: traffic at a glance.

mod cases;
mod glance;
mod ledger;
mod subjects;

use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{
    Console, LOGIN_COOKIE, Posted, Refusal, SESSION_COOKIE, Signed, cookie, csrf_matches, csrf_of,
    parse_form, read_form, same_origin, set_cookie,
};
use crate::admin::api::refusal_peer;
use crate::admin::ops::blocking;
use crate::admin::session::Scope;
use crate::compliance::officers::{Credentials, Role};
use crate::compliance::purpose::Purpose;
use crate::export::rfc3339;

type St = State<Arc<Console>>;
type Page = Result<Response, Refusal>;

/// How long the login form's cookie lasts: a login form older than this is sent
/// again.
const LOGIN_FORM_SECS: i64 = 900;

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/style.css", get(style))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/cases", get(cases::list).post(cases::open))
        .route("/console/cases/new", get(cases::new))
        .route("/console/cases/{id}", get(cases::page))
        .route("/console/cases/{id}/decision", post(cases::decide))
        .route("/console/cases/{id}/disclosures", post(cases::disclose))
        .route("/console/cases/{id}/close", post(cases::close))
        .route("/console/exports/{file}", get(cases::download))
        .route("/console/signing-key.pub", get(cases::public_key))
        .route(
            "/console/subject",
            get(subjects::subject_page).post(subjects::subject_export),
        )
        .route(
            "/console/offboard",
            get(subjects::offboard_page).post(subjects::offboard),
        )
        .route("/console/holds", get(ledger::holds).post(ledger::add_hold))
        .route("/console/holds/release", post(ledger::release_hold))
        .route("/console/audit", get(ledger::audit))
        .route("/console/audit/verify", post(ledger::audit_verify))
        .route(
            "/console/officers",
            get(ledger::officers).post(ledger::add_officer),
        )
        .route("/console/officers/disable", post(ledger::disable_officer))
        .route("/console/traffic", get(glance::traffic))
        .fallback(not_found)
}

// ---------------------------------------------------------------------------------
// Rendering.
// ---------------------------------------------------------------------------------

/// What the page's header shows: the links, and for a signed-in officer her name,
/// role and session, and the logout form.
pub struct Nav {
    officer: String,
    role: &'static str,
    until: String,
    admin: bool,
    csrf: String,
}

fn nav(s: &Signed) -> Option<Nav> {
    Some(Nav {
        officer: s.who.officer.name.clone(),
        role: s.who.officer.role.as_str(),
        until: rfc3339(s.who.expires_at),
        admin: s.is(Role::Admin),
        csrf: s.csrf.clone(),
    })
}

/// The links alone, for a page that does not know who asks (an error).
fn links_only() -> Option<Nav> {
    Some(Nav {
        officer: String::new(),
        role: "",
        until: String::new(),
        admin: false,
        csrf: String::new(),
    })
}

fn render(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console page could not be rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

fn ok(t: &impl Template) -> Page {
    Ok(render(StatusCode::OK, t))
}

/// A 303 to a path of the console (fixed, or made of numbers and fixed words).
pub fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[derive(Template)]
#[template(path = "error.html", config = "src/admin/console/askama.toml")]
struct ErrorPage<'a> {
    nav: Option<Nav>,
    status: String,
    message: &'a str,
}

pub fn error_page(status: StatusCode, message: &str) -> Response {
    render(
        status,
        &ErrorPage {
            nav: links_only(),
            status: status.to_string(),
            message,
        },
    )
}

async fn not_found() -> Response {
    error_page(StatusCode::NOT_FOUND, "no such page")
}

async fn home(_s: Signed) -> Response {
    redirect("/console/cases")
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../templates/style.css"),
    )
        .into_response()
}

/// A case id from the path, or a 400 page.
fn case_id(raw: &str) -> Result<i64, Refusal> {
    raw.parse::<i64>().map_err(|_| {
        crate::admin::api::ApiError::bad_request("a case is named by its number").into()
    })
}

/// The purpose an act's form states, as the page shows it: (value, label).
fn purpose(p: Purpose) -> (&'static str, &'static str) {
    (p.as_str(), p.label())
}

/// A form with no fields of its own (its CSRF token is checked by [`Posted`]).
#[derive(Deserialize)]
struct Empty {}

/// An audit entry as a table row.
struct EntryRow {
    seq: i64,
    at: String,
    actor: String,
    action: String,
    details: String,
}

impl EntryRow {
    fn of(e: &crate::ledger::AuditEntry) -> EntryRow {
        EntryRow {
            seq: e.seq,
            at: rfc3339(e.at),
            actor: e.actor.clone(),
            action: e.action.clone(),
            details: e.details.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------
// Login.
// ---------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "login.html", config = "src/admin/console/askama.toml")]
struct LoginPage<'a> {
    nav: Option<Nav>,
    csrf: String,
    officer: &'a str,
    error: Option<&'a str>,
}

/// The login form, with a fresh login cookie whose digest the form carries.
fn login_form(status: StatusCode, officer: &str, error: Option<&str>) -> Response {
    let mut secret = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).is_err() {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    }
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut r = render(
        status,
        &LoginPage {
            nav: None,
            csrf: csrf_of(&secret),
            officer,
            error,
        },
    );
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &secret, LOGIN_FORM_SECS),
    );
    r
}

async fn login_page() -> Response {
    login_form(StatusCode::OK, "", None)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    officer: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    totp: String,
}

async fn login(
    State(c): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let f: LoginForm = match read_form(body).await.and_then(|b| parse_form(&b)) {
        Ok(f) => f,
        Err(e) => return login_form(e.status, "", Some(&e.message)),
    };
    let secret = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    let origin_ok = same_origin(&headers);
    if secret.is_empty() || !csrf_matches(secret, &f.csrf) || !origin_ok {
        // Counted like a form refused after login (audited per peer and minute).
        let (api, from) = (c.api.clone(), refusal_peer(peer.ip()));
        let reason = if origin_ok { "csrf" } else { "origin" };
        if let Err(e) =
            blocking(move || api.refuse(&from, "(unauthenticated)", "POST /console/login", reason))
                .await
        {
            return error_page(e.status, &e.message);
        }
        return login_form(
            StatusCode::FORBIDDEN,
            &f.officer,
            Some("the login form had expired or came from elsewhere: log in again"),
        );
    }
    let api = c.api.clone();
    let previous = cookie(&headers, SESSION_COOKIE).map(str::to_owned);
    let (name, password, totp) = (f.officer.clone(), f.password, f.totp);
    let done = blocking(move || {
        let who = Credentials {
            name: &name,
            password: &password,
            totp: Some(&totp),
        };
        let opened = api.log_in(
            Scope::Console,
            previous.as_deref(),
            who,
            &refusal_peer(peer.ip()),
            &peer.ip().to_string(),
        )?;
        Ok((opened, api.now()))
    })
    .await;
    match done {
        Ok(((token, session), now)) => {
            let mut r = redirect("/console/cases");
            let h = r.headers_mut();
            h.append(
                header::SET_COOKIE,
                set_cookie(
                    SESSION_COOKIE,
                    &token,
                    (session.expires_at - now) / 1_000_000,
                ),
            );
            h.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0));
            r
        }
        Err(e) => login_form(e.status, &f.officer, Some(&e.message)),
    }
}

async fn logout(State(c): St, p: Posted<Empty>) -> Page {
    let api = c.api.clone();
    blocking(move || api.log_out(&p.signed.who)).await?;
    let mut r = redirect("/console/login");
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
    Ok(r)
}
