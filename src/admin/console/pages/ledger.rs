//! What the ledger holds beside cases: legal holds, the audit log and the officers.

use askama::Template;
use axum::extract::Query;
use axum::extract::State;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use serde::Deserialize;

use super::{Empty, EntryRow, Nav, Page, St, nav, ok, redirect, render};
use crate::admin::api::ApiError;
use crate::admin::console::{Console, Posted, Signed, svg};
use crate::admin::ops::blocking;
use crate::compliance::officers::Role;
use crate::export::rfc3339;

/// Audit entries one console page shows.
const AUDIT_PAGE: usize = 100;

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

pub(super) async fn holds(State(c): St, s: Signed) -> Page {
    holds_page(&c, &s, StatusCode::OK, None).await
}

#[derive(Deserialize)]
pub(super) struct HoldForm {
    case: String,
    since: String,
    until: String,
    reason: String,
}

pub(super) async fn add_hold(State(c): St, p: Posted<HoldForm>) -> Page {
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
pub(super) struct ReleaseForm {
    case: String,
}

/// Releasing a hold lets expiry delete what it kept: the second factor first.
pub(super) async fn release_hold(State(c): St, p: Posted<ReleaseForm>) -> Page {
    p.confirm(&c, Role::Officer, "hold.release").await?;
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
    entries: Vec<EntryRow>,
    /// `after` of the pages before and after this one, and of the newest page.
    earlier: Option<i64>,
    later: Option<i64>,
    latest: Option<i64>,
    verified: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct AuditQuery {
    #[serde(default)]
    after: i64,
}

async fn audit_page(c: &Console, s: &Signed, after: i64, verified: Option<String>) -> Page {
    let api = c.api.clone();
    let who = s.who.clone();
    let after = after.max(0);
    let (entries, last) = blocking(move || api.audit_page(&who, after, AUDIT_PAGE)).await?;
    let page = AUDIT_PAGE as i64;
    let shown_to = entries.last().map_or(after, |e| e.seq);
    let newest = (last - page).max(0);
    ok(&AuditPage {
        csrf: s.csrf.clone(),
        nav: nav(s),
        entries: entries.iter().map(EntryRow::of).collect(),
        earlier: (after > 0).then(|| (after - page).max(0)),
        later: (shown_to < last).then_some(shown_to),
        latest: (shown_to < last && newest > shown_to).then_some(newest),
        verified,
    })
}

pub(super) async fn audit(
    State(c): St,
    s: Signed,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Page {
    let after = q.map(|Query(q)| q.after).unwrap_or(0);
    audit_page(&c, &s, after, None).await
}

pub(super) async fn audit_verify(State(c): St, p: Posted<Empty>) -> Page {
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

/// An officer just enrolled: the otpauth URI, shown this once.
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

pub(super) async fn officers(State(c): St, s: Signed) -> Page {
    officers_page(&c, &s, StatusCode::OK, None, None).await
}

#[derive(Deserialize)]
pub(super) struct OfficerForm {
    name: String,
    role: String,
    /// The new officer's first password (the admin's own is the second factor's).
    new_password: String,
}

/// Enrolling an officer hands out a way in: an admin's act, with the second factor.
pub(super) async fn add_officer(State(c): St, p: Posted<OfficerForm>) -> Page {
    let Some(role) = Role::parse(&p.form.role) else {
        return Err(ApiError::bad_request("the role is officer, approver or admin").into());
    };
    if p.form.new_password.len() > crate::admin::ops::MAX_PASSWORD {
        return Err(crate::admin::api::too_long().into());
    }
    p.confirm(&c, Role::Admin, "officer.add").await?;
    let api = c.api.clone();
    let who = p.signed.who.clone();
    let (name, password) = (p.form.name.clone(), p.form.new_password.clone());
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
pub(super) struct DisableForm {
    name: String,
}

/// Disabling cannot be undone (only a new enrolment brings an officer back): the
/// second factor first.
pub(super) async fn disable_officer(State(c): St, p: Posted<DisableForm>) -> Page {
    p.confirm(&c, Role::Admin, "officer.disable").await?;
    let api = c.api.clone();
    blocking(move || api.disable_officer(&p.signed.who, &p.form.name)).await?;
    Ok(redirect("/console/officers"))
}
