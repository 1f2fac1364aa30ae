//! The console's pages and forms. Each handler asks [`super::super::ops`] and renders
//! the answer; refusals (roles, four eyes, bad input) come back as the API's errors
//! and are shown with their status.

use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{
    Console, LOGIN_COOKIE, Posted, Refusal, SESSION_COOKIE, Signed, cookie, csrf_matches, csrf_of,
    parse_form, set_cookie, svg, traffic,
};
use crate::admin::api::{ApiError, busy, send_file};
use crate::admin::ops::{Exported, StepUp, blocking};
use crate::compliance::cases::{Case, CaseForm, IdentifierKind, Identifiers, criterion};
use crate::compliance::disclosure::Format;
use crate::compliance::officers::Role;
use crate::export::rfc3339;

type St = State<Arc<Console>>;
type Page = Result<Response, Refusal>;

/// Audit entries one console page shows.
const AUDIT_PAGE: usize = 100;

/// Partitions the traffic page draws (the newest); the rest are counted in the total.
const PARTITIONS_DRAWN: usize = 14;

/// Longest password a form may carry (as the API).
const MAX_PASSWORD: usize = 1024;

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/style.css", get(style))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/cases", get(cases).post(open_case))
        .route("/console/cases/new", get(new_case))
        .route("/console/cases/{id}", get(case_page))
        .route("/console/cases/{id}/decision", post(decide))
        .route("/console/cases/{id}/disclosures", post(disclose))
        .route("/console/cases/{id}/close", post(close_case))
        .route("/console/exports/{file}", get(download))
        .route("/console/subject", get(subject_page).post(subject_export))
        .route("/console/offboard", get(offboard_page).post(offboard))
        .route("/console/holds", get(holds).post(add_hold))
        .route("/console/holds/release", post(release_hold))
        .route("/console/audit", get(audit))
        .route("/console/audit/verify", post(audit_verify))
        .route("/console/officers", get(officers).post(add_officer))
        .route("/console/officers/disable", post(disable_officer))
        .route("/console/traffic", get(traffic_page))
        .fallback(not_found)
}

// ---------------------------------------------------------------------------------
// Rendering.
// ---------------------------------------------------------------------------------

/// What the page's header shows of the signed-in officer.
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

fn redirect(to: &str) -> Response {
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
            nav: None,
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
        include_str!("templates/style.css"),
    )
        .into_response()
}

/// A case id from the path, or a 400 page.
fn case_id(raw: &str) -> Result<i64, Refusal> {
    raw.parse::<i64>()
        .map_err(|_| ApiError::bad_request("a case is named by its number").into())
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
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &secret, 900));
    r
}

async fn login_page() -> Response {
    login_form(StatusCode::OK, "", None)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    officer: String,
    password: String,
    totp: String,
}

async fn login(
    State(c): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let f: LoginForm = match parse_form(&body) {
        Ok(f) => f,
        Err(e) => return login_form(e.status, "", Some(&e.message)),
    };
    let secret = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if secret.is_empty() || !csrf_matches(secret, &f.csrf) {
        return login_form(
            StatusCode::FORBIDDEN,
            &f.officer,
            Some("the login form had expired or came from elsewhere: log in again"),
        );
    }
    if f.password.len() > MAX_PASSWORD {
        return login_form(
            StatusCode::BAD_REQUEST,
            &f.officer,
            Some("the password is longer than 1024 bytes"),
        );
    }
    let Ok(_permit) = c.api.logins.try_acquire() else {
        return login_form(
            StatusCode::SERVICE_UNAVAILABLE,
            &f.officer,
            Some("too many logins at once; try again in a moment"),
        );
    };
    let api = c.api.clone();
    let (name, password, totp) = (f.officer.clone(), f.password, f.totp);
    let done = blocking(move || {
        let opened = api.log_in(
            &name,
            &password,
            &totp,
            &crate::admin::api::refusal_peer(peer.ip()),
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

#[derive(Deserialize)]
struct Empty {}

async fn logout(State(c): St, p: Posted<Empty>) -> Page {
    let api = c.api.clone();
    blocking(move || api.log_out(&p.signed.who)).await?;
    let mut r = redirect("/console/login");
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
    Ok(r)
}

// ---------------------------------------------------------------------------------
// Cases.
// ---------------------------------------------------------------------------------

/// A case as the pages show it.
struct CaseView {
    id: i64,
    request: String,
    authority: String,
    state: &'static str,
    legal_basis: String,
    order_reference: String,
    order_date: String,
    deadline: String,
    overdue: bool,
    confidential: bool,
    since: String,
    until: String,
    opened_by: String,
    opened_at: String,
    decided: Option<String>,
    criteria: Vec<(&'static str, String)>,
}

impl CaseView {
    fn of(c: &Case, today: &str) -> CaseView {
        let d = &c.details;
        let live = matches!(c.state.as_str(), "open" | "approved");
        CaseView {
            id: c.id,
            request: d.request.to_string(),
            authority: d.authority.clone(),
            state: c.state.as_str(),
            legal_basis: d.legal_basis.clone(),
            order_reference: d.order_reference.clone(),
            order_date: d.order_date.clone(),
            deadline: d.deadline.clone(),
            overdue: live && d.deadline.as_str() < today,
            confidential: d.confidential,
            since: rfc3339(d.since),
            until: rfc3339(d.until),
            opened_by: c.opened_by.clone(),
            opened_at: rfc3339(c.opened_at),
            decided: c.decided_by.as_ref().map(|by| {
                let at = c.decided_at.map(rfc3339).unwrap_or_default();
                match c.decision_note.as_deref().filter(|n| !n.is_empty()) {
                    Some(note) => format!("by {by} at {at}: {note}"),
                    None => format!("by {by} at {at}"),
                }
            }),
            criteria: c
                .criteria_tags
                .iter()
                .map(|(k, t)| (k.as_str(), t.clone()))
                .collect(),
        }
    }
}

fn today(c: &Console) -> String {
    c.api.clock.now().format("%Y-%m-%d").to_string()
}

#[derive(Deserialize, Default)]
struct CaseFilter {
    #[serde(default)]
    state: String,
    #[serde(default)]
    due: String,
}

#[derive(Template)]
#[template(path = "cases.html", config = "src/admin/console/askama.toml")]
struct CasesPage {
    nav: Option<Nav>,
    states: Vec<(&'static str, &'static str)>,
    filter: CaseFilter,
    total: usize,
    rows: Vec<CaseView>,
}

async fn cases(State(c): St, s: Signed, q: Result<Query<CaseFilter>, QueryRejection>) -> Page {
    let filter = q.map(|Query(f)| f).unwrap_or_default();
    let api = c.api.clone();
    let who = s.who.clone();
    let all = blocking(move || api.cases(&who)).await?;
    let today = today(&c);
    let rows: Vec<CaseView> = all
        .iter()
        .filter(|k| filter.state.is_empty() || k.state.as_str() == filter.state)
        .filter(|k| filter.due.is_empty() || k.details.deadline <= filter.due)
        .map(|k| CaseView::of(k, &today))
        .rev()
        .collect();
    ok(&CasesPage {
        nav: nav(&s),
        states: vec![
            ("", "any"),
            ("open", "open"),
            ("approved", "approved"),
            ("rejected", "rejected"),
            ("closed", "closed"),
        ],
        total: all.len(),
        filter,
        rows,
    })
}

/// The open-a-case form as typed: identifiers one per line.
#[derive(Deserialize, Default)]
struct NewCaseForm {
    #[serde(default)]
    authority: String,
    #[serde(default)]
    country: String,
    #[serde(default)]
    organisation: String,
    #[serde(default)]
    request: String,
    #[serde(default)]
    legal_basis: String,
    #[serde(default)]
    order_reference: String,
    #[serde(default)]
    order_date: String,
    #[serde(default)]
    deadline: String,
    confidential: Option<String>,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    originator: String,
    #[serde(default)]
    account: String,
    #[serde(default)]
    ip: String,
    #[serde(default)]
    email: String,
}

impl NewCaseForm {
    /// The same form the API and `case open` take.
    fn case_form(&self) -> CaseForm {
        let lines = |s: &str| -> Vec<String> {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        };
        CaseForm {
            authority: self.authority.clone(),
            country: self.country.clone(),
            organisation: self.organisation.clone(),
            request: self.request.clone(),
            legal_basis: self.legal_basis.clone(),
            order_reference: self.order_reference.clone(),
            order_date: self.order_date.clone(),
            deadline: self.deadline.clone(),
            confidential: self.confidential.is_some(),
            since: self.since.clone(),
            until: self.until.clone(),
            identifiers: Identifiers {
                recipient: lines(&self.recipient),
                originator: lines(&self.originator),
                account: lines(&self.account),
                ip: lines(&self.ip),
                email: lines(&self.email),
            },
        }
    }
}

#[derive(Template)]
#[template(path = "case_new.html", config = "src/admin/console/askama.toml")]
struct NewCasePage<'a> {
    nav: Option<Nav>,
    csrf: String,
    f: &'a NewCaseForm,
    error: Option<&'a str>,
}

async fn new_case(s: Signed) -> Page {
    ok(&NewCasePage {
        csrf: s.csrf.clone(),
        nav: nav(&s),
        f: &NewCaseForm::default(),
        error: None,
    })
}

async fn open_case(State(c): St, p: Posted<NewCaseForm>) -> Page {
    let form = p.form.case_form();
    let api = c.api.clone();
    let who = p.signed.who.clone();
    match blocking(move || api.open_case(&who, &form)).await {
        Ok(case) => Ok(redirect(&format!("/console/cases/{}", case.id))),
        // What was typed comes back with the reason, nothing lost.
        Err(e) if e.status.is_client_error() => Ok(render(
            e.status,
            &NewCasePage {
                csrf: p.signed.csrf.clone(),
                nav: nav(&p.signed),
                f: &p.form,
                error: Some(&e.message),
            },
        )),
        Err(e) => Err(e.into()),
    }
}

struct HistoryRow {
    seq: i64,
    at: String,
    actor: String,
    action: String,
    details: String,
}

impl HistoryRow {
    fn of(e: &crate::ledger::AuditEntry) -> HistoryRow {
        HistoryRow {
            seq: e.seq,
            at: rfc3339(e.at),
            actor: e.actor.clone(),
            action: e.action.clone(),
            details: e.details.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "case.html", config = "src/admin/console/askama.toml")]
struct CasePage {
    nav: Option<Nav>,
    csrf: String,
    c: CaseView,
    notice: Option<&'static str>,
    history: Vec<HistoryRow>,
    exports: Vec<Exported>,
}

#[derive(Deserialize, Default)]
struct CaseNotice {
    #[serde(default)]
    done: String,
}

async fn case_page(
    State(c): St,
    s: Signed,
    Path(raw): Path<String>,
    q: Result<Query<CaseNotice>, QueryRejection>,
) -> Page {
    let id = case_id(&raw)?;
    let api = c.api.clone();
    let who = s.who.clone();
    let (case, history, exports) = blocking(move || {
        let case = api.case(&who, id)?;
        let history = api.case_history(id)?;
        let exports = api.case_exports(id)?;
        Ok((case, history, exports))
    })
    .await?;
    // Fixed words only: nothing from the query string reaches the page.
    let notice = match q.ok().map(|Query(n)| n.done).as_deref() {
        Some("approve") => Some("The case is approved."),
        Some("reject") => Some("The case is rejected."),
        Some("disclosed") => Some("The export is written; download it below."),
        Some("closed") => Some("The case is closed."),
        _ => None,
    };
    ok(&CasePage {
        csrf: s.csrf.clone(),
        nav: nav(&s),
        c: CaseView::of(&case, &today(&c)),
        notice,
        history: history.iter().map(HistoryRow::of).collect(),
        exports,
    })
}

#[derive(Deserialize)]
struct DecisionForm {
    decision: String,
    #[serde(default)]
    note: String,
    password: String,
    totp: String,
}

async fn decide(State(c): St, Path(raw): Path<String>, p: Posted<DecisionForm>) -> Page {
    let id = case_id(&raw)?;
    let approve = match p.form.decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(ApiError::bad_request("approve or reject").into()),
    };
    if p.form.password.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request("the password is longer than 1024 bytes").into());
    }
    let _permit = c.api.logins.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many password checks at once; try again in a moment",
        )
    })?;
    let api = c.api.clone();
    let done = p.form.decision.clone();
    blocking(move || {
        let step = StepUp {
            password: &p.form.password,
            totp: &p.form.totp,
            peer: &p.peer,
        };
        api.decide(&p.signed.who, id, approve, &p.form.note, Some(&step))
    })
    .await?;
    Ok(redirect(&format!("/console/cases/{id}?done={done}")))
}

#[derive(Deserialize)]
struct DiscloseForm {
    format: Format,
    password: String,
    totp: String,
}

async fn disclose(State(c): St, Path(raw): Path<String>, p: Posted<DiscloseForm>) -> Page {
    let id = case_id(&raw)?;
    if p.form.password.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request("the password is longer than 1024 bytes").into());
    }
    let _permit = c.api.exporting.try_acquire().map_err(|_| busy())?;
    c.api.settled().await?;
    let api = c.api.clone();
    blocking(move || {
        let step = StepUp {
            password: &p.form.password,
            totp: &p.form.totp,
            peer: &p.peer,
        };
        api.disclose(&p.signed.who, id, p.form.format, Some(&step))
    })
    .await?;
    Ok(redirect(&format!(
        "/console/cases/{id}?done=disclosed#exports"
    )))
}

async fn close_case(State(c): St, Path(raw): Path<String>, p: Posted<Empty>) -> Page {
    let id = case_id(&raw)?;
    let api = c.api.clone();
    blocking(move || api.close_case(&p.signed.who, id)).await?;
    Ok(redirect(&format!("/console/cases/{id}?done=closed")))
}

async fn download(State(c): St, s: Signed, Path(name): Path<String>) -> Page {
    let api = c.api.clone();
    let name2 = name.clone();
    let (file, len) = blocking(move || api.download(&s.who, &name2)).await?;
    let mut r = send_file(tokio::fs::File::from_std(file), len, &name);
    // `servable` names only: no quote or path can be in it.
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------
// Subject export and offboarding.
// ---------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "subject.html", config = "src/admin/console/askama.toml")]
struct SubjectPage<'a> {
    nav: Option<Nav>,
    csrf: String,
    error: Option<&'a str>,
}

async fn subject_page(s: Signed) -> Page {
    ok(&SubjectPage {
        csrf: s.csrf.clone(),
        nav: nav(&s),
        error: None,
    })
}

#[derive(Template)]
#[template(path = "exported.html", config = "src/admin/console/askama.toml")]
struct ExportedPage {
    nav: Option<Nav>,
    title: &'static str,
    summary: String,
    files: Vec<(&'static str, String)>,
}

#[derive(Deserialize)]
struct SubjectForm {
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    email: String,
    password: String,
    totp: String,
}

async fn subject_export(State(c): St, p: Posted<SubjectForm>) -> Page {
    let (n, e) = (p.form.recipient.trim(), p.form.email.trim());
    let subject = match (n.is_empty(), e.is_empty()) {
        (false, true) => criterion(IdentifierKind::Recipient, n, &c.api.numbers),
        (true, false) => criterion(IdentifierKind::Email, e, &c.api.numbers),
        _ => {
            return Ok(render(
                StatusCode::BAD_REQUEST,
                &SubjectPage {
                    csrf: p.signed.csrf.clone(),
                    nav: nav(&p.signed),
                    error: Some("give a phone number or an e-mail address, not both"),
                },
            ));
        }
    }
    .map_err(ApiError::from)?;
    if p.form.password.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request("the password is longer than 1024 bytes").into());
    }
    let _permit = c.api.exporting.try_acquire().map_err(|_| busy())?;
    c.api.settled().await?;
    let api = c.api.clone();
    let page_nav = nav(&p.signed);
    let x = blocking(move || {
        let step = StepUp {
            password: &p.form.password,
            totp: &p.form.totp,
            peer: &p.peer,
        };
        api.subject_export(&p.signed.who, &subject, Some(&step))
    })
    .await?;
    Ok(render(
        StatusCode::CREATED,
        &ExportedPage {
            nav: page_nav,
            title: "Subject export",
            summary: format!("{} records exported (SHA-256 {}).", x.records, x.sha256),
            files: vec![
                ("Export", x.export),
                ("Manifest", x.manifest),
                ("Signature", x.signature),
            ],
        },
    ))
}

#[derive(Template)]
#[template(path = "offboard.html", config = "src/admin/console/askama.toml")]
struct OffboardPage<'a> {
    nav: Option<Nav>,
    csrf: String,
    error: Option<&'a str>,
}

async fn offboard_page(s: Signed) -> Page {
    ok(&OffboardPage {
        csrf: s.csrf.clone(),
        nav: nav(&s),
        error: None,
    })
}

#[derive(Deserialize)]
struct OffboardForm {
    account: String,
    password: String,
    totp: String,
}

async fn offboard(State(c): St, p: Posted<OffboardForm>) -> Page {
    if p.form.password.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request("the password is longer than 1024 bytes").into());
    }
    let _permit = c.api.exporting.try_acquire().map_err(|_| busy())?;
    c.api.settled().await?;
    let api = c.api.clone();
    let page_nav = nav(&p.signed);
    let o = blocking(move || {
        let step = StepUp {
            password: &p.form.password,
            totp: &p.form.totp,
            peer: &p.peer,
        };
        api.offboard(&p.signed.who, p.form.account.trim(), Some(&step))
    })
    .await?;
    Ok(render(
        StatusCode::CREATED,
        &ExportedPage {
            nav: page_nav,
            title: "Account offboarded",
            summary: format!(
                "{} records and {} outcomes exported and erased from {} partitions; the signed statement says so.",
                o.records,
                o.outcomes,
                o.partitions.len()
            ),
            files: vec![
                ("Records", o.export),
                ("Deletion statement", o.statement),
                ("Its signature", o.signature),
            ],
        },
    ))
}

// ---------------------------------------------------------------------------------
// Holds.
// ---------------------------------------------------------------------------------

struct HoldRow {
    case: String,
    since: String,
    until: String,
    reason: String,
    placed_by: String,
    placed_at: String,
}

#[derive(Template)]
#[template(path = "holds.html", config = "src/admin/console/askama.toml")]
struct HoldsPage<'a> {
    nav: Option<Nav>,
    csrf: String,
    holds: Vec<HoldRow>,
    error: Option<&'a str>,
}

async fn holds_page(c: &Console, s: &Signed, status: StatusCode, error: Option<&str>) -> Page {
    let api = c.api.clone();
    let who = s.who.clone();
    let holds = blocking(move || api.holds(&who)).await?;
    Ok(render(
        status,
        &HoldsPage {
            csrf: s.csrf.clone(),
            nav: nav(s),
            holds: holds
                .iter()
                .map(|h| HoldRow {
                    case: h.case.clone(),
                    since: rfc3339(h.since),
                    until: rfc3339(h.until),
                    reason: h.reason.clone(),
                    placed_by: h.placed_by.clone(),
                    placed_at: rfc3339(h.placed_at),
                })
                .collect(),
            error,
        },
    ))
}

async fn holds(State(c): St, s: Signed) -> Page {
    holds_page(&c, &s, StatusCode::OK, None).await
}

#[derive(Deserialize)]
struct HoldForm {
    case: String,
    since: String,
    until: String,
    reason: String,
}

async fn add_hold(State(c): St, p: Posted<HoldForm>) -> Page {
    let api = c.api.clone();
    let who = p.signed.who.clone();
    let f = p.form;
    match blocking(move || api.add_hold(&who, f.case, &f.since, &f.until, f.reason)).await {
        Ok(_) => Ok(redirect("/console/holds")),
        Err(e) if e.status.is_client_error() => {
            holds_page(&c, &p.signed, e.status, Some(&e.message)).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct ReleaseForm {
    case: String,
}

async fn release_hold(State(c): St, p: Posted<ReleaseForm>) -> Page {
    let api = c.api.clone();
    blocking(move || api.release_hold(&p.signed.who, &p.form.case)).await?;
    Ok(redirect("/console/holds"))
}

// ---------------------------------------------------------------------------------
// Audit log.
// ---------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "audit.html", config = "src/admin/console/askama.toml")]
struct AuditPage {
    nav: Option<Nav>,
    csrf: String,
    entries: Vec<HistoryRow>,
    previous: Option<i64>,
    next: Option<i64>,
    verified: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuditQuery {
    #[serde(default)]
    after: i64,
}

async fn audit_page(c: &Console, s: &Signed, after: i64, verified: Option<String>) -> Page {
    let api = c.api.clone();
    let who = s.who.clone();
    let after = after.max(0);
    let entries = blocking(move || api.audit_page(&who, after, AUDIT_PAGE)).await?;
    let next = (entries.len() == AUDIT_PAGE)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    let previous = (after > 0).then(|| (after - AUDIT_PAGE as i64).max(0));
    ok(&AuditPage {
        csrf: s.csrf.clone(),
        nav: nav(s),
        entries: entries.iter().map(HistoryRow::of).collect(),
        previous,
        next,
        verified,
    })
}

async fn audit(State(c): St, s: Signed, q: Result<Query<AuditQuery>, QueryRejection>) -> Page {
    let after = q.map(|Query(q)| q.after).unwrap_or(0);
    audit_page(&c, &s, after, None).await
}

async fn audit_verify(State(c): St, p: Posted<Empty>) -> Page {
    let api = c.api.clone();
    let who = p.signed.who.clone();
    let n = blocking(move || api.audit_verify(&who)).await?;
    let said = format!("The chain holds: {n} entries verified.");
    audit_page(&c, &p.signed, 0, Some(said)).await
}

// ---------------------------------------------------------------------------------
// Officers.
// ---------------------------------------------------------------------------------

struct OfficerRow {
    name: String,
    role: &'static str,
    enabled: bool,
    created_by: String,
    created_at: String,
}

struct Enrolled {
    name: String,
    uri: String,
    qr: String,
}

#[derive(Template)]
#[template(path = "officers.html", config = "src/admin/console/askama.toml")]
struct OfficersPage<'a> {
    nav: Option<Nav>,
    csrf: String,
    officers: Vec<OfficerRow>,
    enrolled: Option<Enrolled>,
    error: Option<&'a str>,
}

async fn officers_page(
    c: &Console,
    s: &Signed,
    status: StatusCode,
    enrolled: Option<Enrolled>,
    error: Option<&str>,
) -> Page {
    let api = c.api.clone();
    let who = s.who.clone();
    let list = blocking(move || api.officers(&who)).await?;
    Ok(render(
        status,
        &OfficersPage {
            csrf: s.csrf.clone(),
            nav: nav(s),
            officers: list
                .iter()
                .map(|o| OfficerRow {
                    name: o.name.clone(),
                    role: o.role.as_str(),
                    enabled: o.enabled,
                    created_by: o.created_by.clone(),
                    created_at: rfc3339(o.created_at),
                })
                .collect(),
            enrolled,
            error,
        },
    ))
}

async fn officers(State(c): St, s: Signed) -> Page {
    officers_page(&c, &s, StatusCode::OK, None, None).await
}

#[derive(Deserialize)]
struct OfficerForm {
    name: String,
    role: String,
    password: String,
}

async fn add_officer(State(c): St, p: Posted<OfficerForm>) -> Page {
    let Some(role) = Role::parse(&p.form.role) else {
        return Err(ApiError::bad_request("the role is officer, approver or admin").into());
    };
    if p.form.password.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request("the password is longer than 1024 bytes").into());
    }
    let _permit = c.api.logins.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many password operations at once; try again in a moment",
        )
    })?;
    let api = c.api.clone();
    let who = p.signed.who.clone();
    let (name, password) = (p.form.name.clone(), p.form.password.clone());
    match blocking(move || api.add_officer(&who, &name, role, &password)).await {
        Ok(e) => {
            let qr = svg::qr(&e.otpauth_uri).map_err(|e| ApiError::internal(&e))?;
            let enrolled = Enrolled {
                name: e.officer.name.clone(),
                uri: e.otpauth_uri,
                qr,
            };
            officers_page(&c, &p.signed, StatusCode::CREATED, Some(enrolled), None).await
        }
        Err(e) if e.status.is_client_error() && e.status != StatusCode::FORBIDDEN => {
            officers_page(&c, &p.signed, e.status, None, Some(&e.message)).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct DisableForm {
    name: String,
}

async fn disable_officer(State(c): St, p: Posted<DisableForm>) -> Page {
    let api = c.api.clone();
    blocking(move || api.disable_officer(&p.signed.who, &p.form.name)).await?;
    Ok(redirect("/console/officers"))
}

// ---------------------------------------------------------------------------------
// Traffic.
// ---------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "traffic.html", config = "src/admin/console/askama.toml")]
struct TrafficPage {
    nav: Option<Nav>,
    since: Option<String>,
    /// (title, chart, total) per listener.
    messages: Vec<(String, String, u64)>,
    outcomes: String,
    fail_closed: String,
    fail_closed_total: u64,
    partitions: usize,
    store_size: String,
    next_expiry: Option<String>,
    sizes: String,
}

/// Bytes as people read them.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn traffic_page(State(c): St, s: Signed) -> Page {
    let week = c.traffic.week();
    let store = c.api.config.store.clone();
    let sizes =
        blocking(move || crate::store::partition_sizes(&store).map_err(|e| ApiError::internal(&e)))
            .await?;

    // Day labels under the first hour of each day.
    let first_hour = week.first_hour / 3_600_000_000;
    let day_offset = (24 - first_hour.rem_euclid(24)) as usize % 24;
    let day_labels: Vec<String> = (0..8)
        .map(|d| {
            let at = (first_hour + day_offset as i64 + d * 24) * 3_600_000_000;
            crate::clock::micros_to_datetime(at)
                .format("%a %d %b")
                .to_string()
        })
        .collect();
    let sum = |f: traffic::Family, listener: &str, label: &str| -> Vec<u64> {
        week.series
            .iter()
            .filter(|(k, _)| k.family == f && k.listener == listener && k.label == label)
            .flat_map(|(_, v)| v.iter().copied().enumerate())
            .fold(vec![0; traffic::HOURS], |mut acc, (i, n)| {
                acc[i] += n;
                acc
            })
    };
    let messages = c
        .listeners
        .iter()
        .map(|(name, protocol)| {
            let counts = sum(traffic::Family::Messages, name, "");
            let title = format!("Messages per hour: {name} ({protocol})");
            let chart = svg::hourly(&title, &counts, day_offset, &day_labels);
            (title, chart, counts.iter().sum())
        })
        .collect();
    let totals = |f: traffic::Family| -> Vec<(String, u64, String)> {
        let mut by: std::collections::BTreeMap<String, u64> = Default::default();
        for (k, v) in week.series.iter().filter(|(k, _)| k.family == f) {
            *by.entry(format!("{} · {}", k.listener, k.label))
                .or_default() += v.iter().sum::<u64>();
        }
        by.into_iter().map(|(l, n)| (l, n, n.to_string())).collect()
    };
    let mut outcomes = totals(traffic::Family::Requests);
    for (l, n, shown) in totals(traffic::Family::UpstreamErrors) {
        outcomes.push((format!("{l} (upstream error)"), n, shown));
    }
    for (l, n, shown) in totals(traffic::Family::NotForwarded) {
        outcomes.push((format!("{l} (not forwarded)"), n, shown));
    }
    let fail_closed_rows = totals(traffic::Family::FailClosed);
    let fail_closed_total = fail_closed_rows.iter().map(|r| r.1).sum();

    let store_cfg = &c.api.config.store;
    let next_expiry = sizes.first().map(|(p, _)| {
        let end = crate::clock::micros_to_datetime(p.end_micros());
        store_cfg
            .retention
            .expires(end)
            .format("%Y-%m-%d")
            .to_string()
    });
    let total: u64 = sizes.iter().map(|(_, b)| b).sum();
    let drawn: Vec<(String, u64, String)> = sizes
        .iter()
        .rev()
        .take(PARTITIONS_DRAWN)
        .map(|(p, b)| (p.to_string(), *b, human(*b)))
        .collect();
    let since = (week.since > week.first_hour).then(|| rfc3339(week.since));
    ok(&TrafficPage {
        nav: nav(&s),
        since,
        messages,
        outcomes: svg::bars("Requests by what became of them", &outcomes),
        fail_closed: svg::bars("Fail-closed by reason", &fail_closed_rows),
        fail_closed_total,
        partitions: sizes.len(),
        store_size: human(total),
        next_expiry,
        sizes: svg::bars(
            &format!("Size of the newest {} partitions", drawn.len()),
            &drawn,
        ),
    })
}
