//! A data subject's export, and an account's offboarding at contract end. Both ask
//! for the second factor, then take the one export slot.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::{Nav, Page, St, nav, ok, render};
use crate::admin::api::{ApiError, busy};
use crate::admin::console::{Posted, Signed};
use crate::admin::ops::blocking;
use crate::compliance::cases::{IdentifierKind, criterion};
use crate::compliance::officers::Role;
use crate::compliance::purpose::Purpose;

#[derive(Template)]
#[template(path = "subject.html", config = "src/admin/console/askama.toml")]
struct SubjectPage<'a> {
    nav: Option<Nav>,
    csrf: String,
    error: Option<&'a str>,
    purposes: (&'static str, &'static str),
}

pub(super) async fn subject_page(s: Signed) -> Page {
    ok(&SubjectPage {
        csrf: s.csrf.clone(),
        nav: nav(&s),
        error: None,
        purposes: super::purpose(Purpose::SubjectAccess),
    })
}

/// What an export wrote, with links to its files.
#[derive(Template)]
#[template(path = "exported.html", config = "src/admin/console/askama.toml")]
struct ExportedPage {
    nav: Option<Nav>,
    title: &'static str,
    summary: String,
    files: Vec<(&'static str, String)>,
}

#[derive(Deserialize)]
pub(super) struct SubjectForm {
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    email: String,
    purpose: Purpose,
}

pub(super) async fn subject_export(State(c): St, p: Posted<SubjectForm>) -> Page {
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
                    purposes: super::purpose(Purpose::SubjectAccess),
                },
            ));
        }
    }
    .map_err(ApiError::from)?;
    p.confirm(&c, Role::Officer, "subject.export").await?;
    let _permit = c.api.exporting.try_acquire().map_err(|_| busy())?;
    c.api.settled().await?;
    let api = c.api.clone();
    let page_nav = nav(&p.signed);
    let x =
        blocking(move || api.subject_export(&p.signed.who, p.form.purpose, Some(&subject), None))
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
struct OffboardPage {
    nav: Option<Nav>,
    csrf: String,
    purposes: (&'static str, &'static str),
}

pub(super) async fn offboard_page(s: Signed) -> Page {
    ok(&OffboardPage {
        csrf: s.csrf.clone(),
        nav: nav(&s),
        purposes: super::purpose(Purpose::ContractEnd),
    })
}

#[derive(Deserialize)]
pub(super) struct OffboardForm {
    account: String,
    purpose: Purpose,
}

pub(super) async fn offboard(State(c): St, p: Posted<OffboardForm>) -> Page {
    // An admin's act: the role and the second factor before the export slot.
    p.confirm(&c, Role::Admin, "account.offboard").await?;
    let _permit = c.api.exporting.try_acquire().map_err(|_| busy())?;
    c.api.settled().await?;
    let api = c.api.clone();
    let page_nav = nav(&p.signed);
    let o = blocking(move || api.offboard(&p.signed.who, p.form.purpose, p.form.account.trim()))
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
