//! Cases: the list, opening one, its page, deciding, disclosing, closing, and the
//! downloads of its exports.

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use serde::Deserialize;

use super::{Empty, EntryRow, Nav, Page, St, case_id, nav, ok, redirect, render};
use crate::admin::api::{ApiError, busy, send_file};
use crate::admin::console::{Posted, Signed};
use crate::admin::ops::{CaseExport, blocking};
use crate::compliance::cases::{Case, CaseForm, Identifiers};
use crate::compliance::disclosure::Format;
use crate::compliance::officers::Role;
use crate::compliance::purpose::Purpose;
use crate::export::rfc3339;

/// Cases the list shows at most (the newest that pass the filters).
const MAX_LISTED: usize = 500;

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
    /// `today`: `YYYY-MM-DD`, as deadlines are kept (checked when a case is opened).
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

fn today(c: &crate::admin::console::Console) -> String {
    c.api.clock.now().format("%Y-%m-%d").to_string()
}

#[derive(Deserialize, Default)]
pub(super) struct CaseFilter {
    #[serde(default)]
    state: String,
    #[serde(default)]
    due: String,
}

#[derive(Template)]
#[template(path = "cases.html", config = "src/admin/console/askama.toml")]
struct CasesPage {
    nav: Option<Nav>,
    states: [(&'static str, &'static str); 5],
    filter: CaseFilter,
    total: usize,
    matching: usize,
    rows: Vec<CaseView>,
}

pub(super) async fn list(
    State(c): St,
    s: Signed,
    q: Result<Query<CaseFilter>, QueryRejection>,
) -> Page {
    let filter = q.map(|Query(f)| f).unwrap_or_default();
    let api = c.api.clone();
    let who = s.who.clone();
    let all = blocking(move || api.cases(&who)).await?;
    let today = today(&c);
    let matching: Vec<&Case> = all
        .iter()
        .filter(|k| filter.state.is_empty() || k.state.as_str() == filter.state)
        .filter(|k| filter.due.is_empty() || k.details.deadline <= filter.due)
        .collect();
    let rows = matching
        .iter()
        .rev()
        .take(MAX_LISTED)
        .map(|k| CaseView::of(k, &today))
        .collect();
    ok(&CasesPage {
        nav: nav(&s),
        states: [
            ("", "any"),
            ("open", "open"),
            ("approved", "approved"),
            ("rejected", "rejected"),
            ("closed", "closed"),
        ],
        total: all.len(),
        matching: matching.len(),
        filter,
        rows,
    })
}

/// The open-a-case form as typed: identifiers one per line.
#[derive(Deserialize, Default)]
pub(super) struct NewCaseForm {
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

pub(super) async fn new(s: Signed) -> Page {
    ok(&NewCasePage {
        csrf: s.csrf.clone(),
        nav: nav(&s),
        f: &NewCaseForm::default(),
        error: None,
    })
}

pub(super) async fn open(State(c): St, p: Posted<NewCaseForm>) -> Page {
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

#[derive(Template)]
#[template(path = "case.html", config = "src/admin/console/askama.toml")]
struct CasePage {
    nav: Option<Nav>,
    csrf: String,
    c: CaseView,
    notice: Option<&'static str>,
    history: Vec<EntryRow>,
    history_cut: bool,
    exports: Vec<CaseExport>,
    public_key: String,
    purposes: (&'static str, &'static str),
}

#[derive(Deserialize, Default)]
pub(super) struct CaseNotice {
    #[serde(default)]
    done: String,
}

pub(super) async fn page(
    State(c): St,
    s: Signed,
    Path(raw): Path<String>,
    q: Result<Query<CaseNotice>, QueryRejection>,
) -> Page {
    let id = case_id(&raw)?;
    let api = c.api.clone();
    let who = s.who.clone();
    let (case, (history, history_cut), exports) = blocking(move || {
        let case = api.case(&who, id)?;
        Ok((case, api.case_history(id)?, api.case_exports(id)?))
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
    let key = crate::store::integrity::public_key_path(&c.api.config.store.signing_key);
    ok(&CasePage {
        csrf: s.csrf.clone(),
        nav: nav(&s),
        c: CaseView::of(&case, &today(&c)),
        notice,
        history: history.iter().map(EntryRow::of).collect(),
        history_cut,
        exports,
        public_key: crate::admin::ops::file_name(&key),
        purposes: super::purpose(Purpose::LawfulRequest),
    })
}

#[derive(Deserialize)]
pub(super) struct DecisionForm {
    decision: String,
    #[serde(default)]
    note: String,
}

pub(super) async fn decide(State(c): St, Path(raw): Path<String>, p: Posted<DecisionForm>) -> Page {
    let id = case_id(&raw)?;
    let (approve, action) = match p.form.decision.as_str() {
        "approve" => (true, "case.approve"),
        "reject" => (false, "case.reject"),
        _ => return Err(ApiError::bad_request("approve or reject").into()),
    };
    p.confirm(&c, Role::Approver, action).await?;
    let api = c.api.clone();
    blocking(move || api.decide(&p.signed.who, id, approve, &p.form.note)).await?;
    let done = if approve { "approve" } else { "reject" };
    Ok(redirect(&format!("/console/cases/{id}?done={done}")))
}

#[derive(Deserialize)]
pub(super) struct DiscloseForm {
    format: Format,
    purpose: Purpose,
}

pub(super) async fn disclose(
    State(c): St,
    Path(raw): Path<String>,
    p: Posted<DiscloseForm>,
) -> Page {
    let id = case_id(&raw)?;
    // The second factor before the one export slot is taken, so that a wrong
    // password cannot hold it.
    p.confirm(&c, Role::Officer, "case.disclose").await?;
    let _permit = c.api.exporting.try_acquire().map_err(|_| busy())?;
    c.api.settled().await?;
    let api = c.api.clone();
    blocking(move || api.disclose(&p.signed.who, p.form.purpose, id, p.form.format)).await?;
    Ok(redirect(&format!(
        "/console/cases/{id}?done=disclosed#exports"
    )))
}

/// A closed case discloses nothing more: the second factor first.
pub(super) async fn close(State(c): St, Path(raw): Path<String>, p: Posted<Empty>) -> Page {
    let id = case_id(&raw)?;
    p.confirm(&c, Role::Officer, "case.close").await?;
    let api = c.api.clone();
    blocking(move || api.close_case(&p.signed.who, id)).await?;
    Ok(redirect(&format!("/console/cases/{id}?done=closed")))
}

pub(super) async fn download(
    State(c): St,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    s: Signed,
    Path(name): Path<String>,
) -> Page {
    let api = c.api.clone();
    let name2 = name.clone();
    let from = crate::admin::api::refusal_peer(peer.ip());
    let (file, len) = blocking(move || api.download(&s.who, &name2, &from)).await?;
    let mut r = send_file(tokio::fs::File::from_std(file), len, &name);
    // `servable` names only: no quote or path can be in it.
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

/// The installation's public signing key, which `verify-export` checks exports with.
pub(super) async fn public_key(State(c): St, _s: Signed) -> Page {
    let path = crate::store::integrity::public_key_path(&c.api.config.store.signing_key);
    let key = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let name = Some(crate::admin::ops::file_name(&path))
        .filter(|n| crate::admin::ops::servable(n))
        .unwrap_or_else(|| "signing.key.pub".to_owned());
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        key,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_form_takes_one_identifier_a_line() {
        let f = NewCaseForm {
            recipient: " +31612345678\r\n\r\n0612345679 \n".into(),
            email: "a@example.org".into(),
            confidential: Some("on".into()),
            ..NewCaseForm::default()
        };
        let c = f.case_form();
        assert_eq!(c.identifiers.recipient, ["+31612345678", "0612345679"]);
        assert_eq!(c.identifiers.email, ["a@example.org"]);
        assert!(c.identifiers.account.is_empty());
        assert!(c.confidential);
    }
}
