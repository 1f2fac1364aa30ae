//! Data subjects' requests and their deadlines. GDPR Art. 12(3): a request is answered
//! within one month of its receipt; that may be extended once, by two further months,
//! with the reasons given to the subject within the first month.
//!
//! A request names its subject (a number or an address) sealed under the master key,
//! as a case's criteria are, and by its audit tag; it is answered by `subject export
//! --request ID`, which closes it in the transaction that audits the export. One open
//! past its deadline is *overdue*: `subject request list`, `report cases`, the admin
//! API (`GET /api/v1/subject-requests`) and `/metrics` (a count, never an identifier)
//! say so.

use chrono::{Months, NaiveDate};
use serde::Serialize;

use super::cases::{Criterion, IdentifierKind};
use crate::clock::Micros;
use crate::export::rfc3339;
use crate::ledger::db::{DbError, Row};
use crate::ledger::{Ledger, LedgerError, sql_err};
use crate::store::keys::{KeyError, MasterKey};

/// Months to answer in, and the most an extension adds.
const ANSWER_MONTHS: u32 = 1;
const EXTENSION_MONTHS: u32 = 2;
/// Longest reason for an extension kept.
pub const MAX_REASON: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no subject request {0}")]
    Unknown(i64),
    #[error("the date the request was received is not a date: give it as YYYY-MM-DD")]
    BadDate,
    #[error("the request cannot have been received in the future ({0})")]
    Future(NaiveDate),
    #[error("subject request {id} was answered on {on}")]
    Closed { id: i64, on: String },
    #[error("subject request {0} was extended already: it may be extended once")]
    Extended(i64),
    #[error(
        "subject request {id} is past its first month (deadline {deadline}): an extension must be made, and the subject told why, within it"
    )]
    TooLate { id: i64, deadline: NaiveDate },
    #[error("an extension needs a reason (at most {MAX_REASON} characters)")]
    Reason,
    #[error(
        "the reason names the subject's number or address: it goes into the audit log, which names subjects by tag only; say why without it"
    )]
    ReasonNamesSubject,
    #[error("a request's subject is a recipient number or an e-mail address")]
    Kind,
    #[error("subject request {0}: its sealed subject does not read back: {1}")]
    Sealed(i64, String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

fn db(path: &str) -> impl Fn(DbError) -> RequestError + '_ {
    move |e| RequestError::Ledger(sql_err(path)(e))
}

fn subject_context(id: i64) -> Vec<u8> {
    format!("relaylog subject request v1|{id}").into_bytes()
}

/// Where a request stands on a given day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestState {
    Open,
    Overdue,
    Answered,
    AnsweredLate,
}

/// A request as the ledger keeps it (its subject only as kind and tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectRequest {
    pub id: i64,
    pub kind: &'static str,
    /// The subject's audit tag (see `MasterKey::audit_tag`).
    pub tag: String,
    #[serde(serialize_with = "date")]
    pub received: NaiveDate,
    /// The day by which it must be answered (extended, if it was).
    #[serde(serialize_with = "date")]
    pub deadline: NaiveDate,
    pub extension_reason: Option<String>,
    pub opened_by: String,
    pub opened_at: String,
    pub answered_at: Option<String>,
    #[serde(skip)]
    answered_us: Option<Micros>,
    pub answered_by: Option<String>,
}

fn date<S: serde::Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

impl SubjectRequest {
    /// The request as listed (command line, API): its fields and its state `today`.
    pub fn view(&self, today: NaiveDate) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a request serialises");
        v["state"] = serde_json::to_value(self.state(today)).expect("a state serialises");
        v
    }

    pub fn state(&self, today: NaiveDate) -> RequestState {
        match self.answered_us {
            Some(at) if crate::clock::micros_to_datetime(at).date_naive() > self.deadline => {
                RequestState::AnsweredLate
            }
            Some(_) => RequestState::Answered,
            None if today > self.deadline => RequestState::Overdue,
            None => RequestState::Open,
        }
    }
}

/// The deadline of a request received on `received` (a UTC date, as every date of a
/// request): one month on (the same date of the next month, or that month's last day
/// when it has no such date); extended, two months more.
pub fn deadline(received: NaiveDate, extended: bool) -> NaiveDate {
    let after = |d: NaiveDate, months| {
        d.checked_add_months(Months::new(months))
            .unwrap_or(NaiveDate::MAX)
    };
    let first = after(received, ANSWER_MONTHS);
    match extended {
        false => first,
        // Two further months from the first deadline, and no later than three from
        // receipt (31 January: 28 February, then 28 April, not 30 April).
        true => {
            after(first, EXTENSION_MONTHS).min(after(received, ANSWER_MONTHS + EXTENSION_MONTHS))
        }
    }
}

pub fn parse_date(s: &str) -> Result<NaiveDate, RequestError> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| RequestError::BadDate)
}

const COLUMNS: &str = "id, kind, tag, received, deadline, extension_reason, opened_by, opened_at, answered_at, answered_by";

fn of_row(r: &Row) -> Result<SubjectRequest, DbError> {
    let date = |i: usize| -> Result<NaiveDate, DbError> {
        let s = r.text(i)?;
        NaiveDate::parse_from_str(&s, "%Y-%m-%d")
            .map_err(|_| DbError(format!("subject request: `{s}` is not a date")))
    };
    let kind = match r.text(1)?.as_str() {
        "email" => IdentifierKind::Email,
        _ => IdentifierKind::Recipient,
    };
    let answered_us = r.opt_int(8)?;
    Ok(SubjectRequest {
        id: r.int(0)?,
        kind: kind.as_str(),
        tag: r.text(2)?,
        received: date(3)?,
        deadline: date(4)?,
        extension_reason: r.opt_text(5)?,
        opened_by: r.text(6)?,
        opened_at: rfc3339(r.int(7)?),
        answered_at: answered_us.map(rfc3339),
        answered_us,
        answered_by: r.opt_text(9)?,
    })
}

impl Ledger {
    /// Opens a request received on `received` (not after `today`); returns its id and
    /// deadline. Audited with the subject's tag.
    pub fn open_request(
        &mut self,
        master: &MasterKey,
        officer: &str,
        subject: &Criterion,
        received: NaiveDate,
        today: NaiveDate,
        at: Micros,
    ) -> Result<(i64, NaiveDate), RequestError> {
        if !matches!(
            subject.kind,
            IdentifierKind::Recipient | IdentifierKind::Email
        ) {
            return Err(RequestError::Kind);
        }
        if received > today {
            return Err(RequestError::Future(received));
        }
        let due = deadline(received, false);
        let tag = master.audit_tag(subject.kind.as_str(), &subject.value);
        let path = self.path.clone();
        let mut conn = self.db();
        let mut tx = conn.begin().map_err(db(&path))?;
        let id = tx
            .query_one(
                "INSERT INTO subject_request (kind, tag, subject, received, deadline, opened_by, opened_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                &[
                    &subject.kind.as_str(),
                    &tag,
                    &Vec::<u8>::new(),
                    &received.to_string(),
                    &due.to_string(),
                    &officer,
                    &at,
                ],
            )
            .and_then(|r| r.int(0))
            .map_err(db(&path))?;
        let plain = serde_json::to_vec(subject).expect("an identifier serialises");
        let sealed = master.seal_secret(&subject_context(id), &plain)?;
        tx.execute(
            "UPDATE subject_request SET subject = ?1 WHERE id = ?2",
            &[&sealed, &id],
        )
        .map_err(db(&path))?;
        Ledger::append(
            &mut tx,
            at,
            officer,
            "subject.request.open",
            &serde_json::json!({
                "request": id,
                "criteria": [{"kind": subject.kind.as_str(), "tag": tag}],
                "received": received.to_string(),
                "deadline": due.to_string(),
            }),
        )
        .map_err(db(&path))?;
        tx.commit().map_err(db(&path))?;
        Ok((id, due))
    }

    /// Extends an open request, once and within its first month, by two months (see
    /// [`deadline`]). Returns the new deadline. The reason goes into the audit log
    /// and the listing, which name the subject by tag only: one that names the
    /// subject's number or address is refused.
    pub fn extend_request(
        &mut self,
        master: &MasterKey,
        officer: &str,
        id: i64,
        reason: &str,
        today: NaiveDate,
        at: Micros,
    ) -> Result<NaiveDate, RequestError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON {
            return Err(RequestError::Reason);
        }
        let subject = self.request_subject(master, id)?;
        let (lower, value) = (reason.to_lowercase(), subject.value.to_lowercase());
        if lower.contains(&value) || lower.contains(value.trim_start_matches('+')) {
            return Err(RequestError::ReasonNamesSubject);
        }
        let path = self.path.clone();
        let mut conn = self.db();
        let mut tx = conn.begin().map_err(db(&path))?;
        let r = tx
            .query_opt(
                &format!("SELECT {COLUMNS} FROM subject_request WHERE id = ?1"),
                &[&id],
            )
            .map_err(db(&path))?
            .ok_or(RequestError::Unknown(id))?;
        let r = of_row(&r).map_err(db(&path))?;
        if let Some(on) = r.answered_at {
            return Err(RequestError::Closed { id, on });
        }
        if r.extension_reason.is_some() {
            return Err(RequestError::Extended(id));
        }
        if today > r.deadline {
            return Err(RequestError::TooLate {
                id,
                deadline: r.deadline,
            });
        }
        let due = deadline(r.received, true);
        tx.execute(
            "UPDATE subject_request SET deadline = ?1, extension_reason = ?2 WHERE id = ?3",
            &[&due.to_string(), &reason, &id],
        )
        .map_err(db(&path))?;
        Ledger::append(
            &mut tx,
            at,
            officer,
            "subject.request.extend",
            &serde_json::json!({"request": id, "deadline": due.to_string(), "reason": reason}),
        )
        .map_err(db(&path))?;
        tx.commit().map_err(db(&path))?;
        Ok(due)
    }

    /// Every request, oldest first.
    pub fn requests(&self) -> Result<Vec<SubjectRequest>, RequestError> {
        let path = self.path.clone();
        self.db()
            .query(
                &format!("SELECT {COLUMNS} FROM subject_request ORDER BY id"),
                &[],
            )
            .map_err(db(&path))?
            .iter()
            .map(|r| of_row(r).map_err(db(&path)))
            .collect()
    }

    /// How many requests are open past their deadline on `today` (by
    /// [`SubjectRequest::state`], the one definition of overdue).
    pub fn overdue_requests(&self, today: NaiveDate) -> Result<u64, RequestError> {
        Ok(self
            .requests()?
            .iter()
            .filter(|r| r.state(today) == RequestState::Overdue)
            .count() as u64)
    }

    /// The subject of an open request, unsealed, for its export.
    pub fn request_subject(&self, master: &MasterKey, id: i64) -> Result<Criterion, RequestError> {
        let path = self.path.clone();
        let row = self
            .db()
            .query_opt(
                "SELECT subject, answered_at FROM subject_request WHERE id = ?1",
                &[&id],
            )
            .map_err(db(&path))?
            .ok_or(RequestError::Unknown(id))?;
        if let Some(at) = row.opt_int(1).map_err(db(&path))? {
            return Err(RequestError::Closed {
                id,
                on: rfc3339(at),
            });
        }
        let sealed = row.blob(0).map_err(db(&path))?;
        let plain = master.open_secret(&subject_context(id), &sealed)?;
        serde_json::from_slice(&plain).map_err(|e| RequestError::Sealed(id, e.to_string()))
    }

    /// Appends the export's audit entry and closes request `id` in one transaction
    /// (a request answered twice at once: the second finds it closed).
    pub(crate) fn audit_answer(
        &mut self,
        id: i64,
        at: Micros,
        officer: &str,
        details: serde_json::Value,
    ) -> Result<i64, RequestError> {
        let path = self.path.clone();
        let mut conn = self.db();
        let mut tx = conn.begin().map_err(db(&path))?;
        let closed = tx
            .execute(
                "UPDATE subject_request SET answered_at = ?1, answered_by = ?2 WHERE id = ?3 AND answered_at IS NULL",
                &[&at, &officer, &id],
            )
            .map_err(db(&path))?;
        if closed != 1 {
            return Err(RequestError::Closed {
                id,
                on: "a moment ago, by another export".into(),
            });
        }
        let seq =
            Ledger::append(&mut tx, at, officer, "subject.export", &details).map_err(db(&path))?;
        tx.commit().map_err(db(&path))?;
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn one_month_from_receipt_and_two_more_when_extended() {
        assert_eq!(deadline(d(2026, 3, 15), false), d(2026, 4, 15));
        // No 31 February: the month's last day.
        assert_eq!(deadline(d(2026, 1, 31), false), d(2026, 2, 28));
        assert_eq!(deadline(d(2028, 1, 31), false), d(2028, 2, 29));
        // Two months from the first deadline, never later than three from receipt.
        assert_eq!(deadline(d(2026, 1, 31), true), d(2026, 4, 28));
        assert_eq!(deadline(d(2026, 11, 30), true), d(2027, 2, 28));
        assert_eq!(deadline(d(2026, 12, 6), true), d(2027, 3, 6));
    }

    #[test]
    fn answered_on_the_deadline_is_in_time_and_a_day_later_is_late() {
        let at = |y, m, day| {
            chrono::NaiveDate::from_ymd_opt(y, m, day)
                .unwrap()
                .and_hms_opt(23, 59, 0)
                .unwrap()
                .and_utc()
                .timestamp_micros()
        };
        let mut r = SubjectRequest {
            id: 1,
            kind: "recipient",
            tag: "t".into(),
            received: d(2026, 1, 10),
            deadline: d(2026, 2, 10),
            extension_reason: None,
            opened_by: "anna".into(),
            opened_at: String::new(),
            answered_at: None,
            answered_us: None,
            answered_by: None,
        };
        assert_eq!(r.state(d(2026, 2, 10)), RequestState::Open);
        assert_eq!(r.state(d(2026, 2, 11)), RequestState::Overdue);
        r.answered_us = Some(at(2026, 2, 10));
        assert_eq!(r.state(d(2026, 3, 1)), RequestState::Answered);
        r.answered_us = Some(at(2026, 2, 11));
        assert_eq!(r.state(d(2026, 3, 1)), RequestState::AnsweredLate);
    }
}
