//! Cases: the only way records are disclosed.
//!
//! A case carries who asks and on what authority (ETSI TS 102 657's request id: the
//! country code, the authorised organisation's id and its request number), the window
//! and the identifiers asked about. The identifiers are sealed under the master key in
//! the ledger; the audit log names them only by keyed tag. A case is opened by an
//! officer and must be approved, with password and TOTP, by an approver who is not
//! that officer (four-eyes; `compliance.four-eyes = false` allows one person for a
//! single-officer installation) before any record of it is decrypted.

use std::net::IpAddr;

use crate::ledger::db::{DbError, Param};
use serde::{Deserialize, Serialize};

use super::officers::{Officer, OfficerError, Role};
use crate::canonical::{self, Form, NumberNormalizer};
use crate::clock::Micros;
use crate::ledger::{Ledger, LedgerError, sql_err};
use crate::store::IndexKind;
use crate::store::keys::{KeyError, MasterKey};

/// What a case asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum IdentifierKind {
    Recipient,
    Originator,
    Account,
    Ip,
    Email,
}

impl IdentifierKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recipient => "recipient",
            Self::Originator => "originator",
            Self::Account => "account",
            Self::Ip => "ip",
            Self::Email => "email",
        }
    }

    /// The blind index a criterion of this kind is looked up in. E-mail recipients
    /// share the recipient index with numbers (their canonical forms cannot collide).
    pub fn index(self) -> IndexKind {
        match self {
            Self::Recipient | Self::Email => IndexKind::Recipient,
            Self::Originator => IndexKind::Originator,
            Self::Account => IndexKind::Account,
            Self::Ip => IndexKind::ClientIp,
        }
    }
}

/// One identifier of a case, in the canonical form the store indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Criterion {
    pub kind: IdentifierKind,
    pub value: String,
}

impl Criterion {
    /// The roles a data subject's number or address can have in a record: recipient,
    /// and originator (the SMS sender number, the envelope sender of a mail). Other
    /// kinds are one role.
    pub fn every_role(&self) -> Vec<Criterion> {
        let mut roles = vec![self.clone()];
        if matches!(self.kind, IdentifierKind::Recipient | IdentifierKind::Email) {
            roles.push(Criterion {
                kind: IdentifierKind::Originator,
                value: self.value.clone(),
            });
        }
        roles
    }
}

/// Turns what an officer typed into the canonical form, or says why it cannot be one.
pub fn criterion(
    kind: IdentifierKind,
    raw: &str,
    numbers: &NumberNormalizer,
) -> Result<Criterion, CaseError> {
    let bad = |why: &str| CaseError::BadIdentifier {
        kind: kind.as_str(),
        why: why.to_owned(),
    };
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(bad("it is empty"));
    }
    let value = match kind {
        IdentifierKind::Recipient => {
            let id = numbers.normalize(raw);
            if id.form == Form::Raw && !id.value.bytes().all(|b| b.is_ascii_digit() || b == b'+') {
                return Err(bad("not a phone number (digits, an optional leading +)"));
            }
            id.value
        }
        IdentifierKind::Originator if raw.contains('@') => {
            // An envelope sender (MAIL FROM): indexed like any e-mail address.
            let id = canonical::normalize_email(raw);
            if id.form != Form::Email {
                return Err(bad("not an e-mail address (local@domain)"));
            }
            id.index_value().into_owned()
        }
        IdentifierKind::Originator => {
            let id = numbers.normalize(raw);
            if id.value.is_empty() {
                canonical::canonical_raw(raw)
            } else {
                id.value
            }
        }
        IdentifierKind::Account => canonical::canonical_account(raw),
        IdentifierKind::Ip => {
            let ip: IpAddr = raw
                .parse()
                .map_err(|_| bad("not an IPv4 or IPv6 address"))?;
            canonical::canonical_ip(ip).to_string()
        }
        IdentifierKind::Email => {
            let id = canonical::normalize_email(raw);
            if id.form != Form::Email {
                return Err(bad("not an e-mail address (local@domain)"));
            }
            id.index_value().into_owned()
        }
    };
    Ok(Criterion { kind, value })
}

/// The request id of ETSI TS 102 657: country, authorised organisation, request number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    pub country: String,
    pub organisation: String,
    pub number: String,
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.country, self.organisation, self.number)
    }
}

/// Who asks, on what authority, about which window: what an officer fills in and what
/// a case shows.
#[derive(Debug, Clone)]
pub struct CaseDetails {
    pub request: RequestId,
    pub authority: String,
    pub legal_basis: String,
    pub order_reference: String,
    pub order_date: String,
    pub deadline: String,
    pub confidential: bool,
    pub since: Micros,
    pub until: Micros,
}

/// What an officer fills in to open a case.
#[derive(Debug, Clone)]
pub struct NewCase {
    pub details: CaseDetails,
    pub criteria: Vec<Criterion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    Approved,
    Rejected,
    Closed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Approved => "approved",
            State::Rejected => "rejected",
            State::Closed => "closed",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "approved" => State::Approved,
            "rejected" => State::Rejected,
            "closed" => State::Closed,
            _ => State::Open,
        }
    }
}

/// A case as stored, criteria sealed (see [`Ledger::case_criteria`]).
#[derive(Debug, Clone)]
pub struct Case {
    pub id: i64,
    pub details: CaseDetails,
    /// Kinds and audit tags of the criteria: what may be shown without the values.
    pub criteria_tags: Vec<(IdentifierKind, String)>,
    pub state: State,
    pub opened_by: String,
    pub opened_at: Micros,
    pub decided_by: Option<String>,
    pub decided_at: Option<Micros>,
    pub decision_note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("no case {0}")]
    Unknown(i64),
    #[error("the {kind} identifier is malformed: {why}")]
    BadIdentifier { kind: &'static str, why: String },
    #[error("a case needs at least one identifier")]
    NoCriteria,
    #[error("a case names at most {MAX_IDENTIFIERS} identifiers")]
    TooManyIdentifiers,
    #[error(transparent)]
    BadTime(#[from] crate::clock::BadTime),
    #[error("a case needs {0}")]
    Missing(&'static str),
    #[error("the {0} is not a date: give it as YYYY-MM-DD")]
    BadDate(&'static str),
    #[error("the window is empty: since must be before until")]
    EmptyWindow,
    #[error(
        "the window ends at or before the retention cutoff ({cutoff}): its records have been deleted"
    )]
    OutsideRetention { cutoff: String },
    #[error("the window starts in the future")]
    FutureWindow,
    #[error("request {0} already has a case")]
    Duplicate(String),
    #[error("case {id} is {state}; this needs it {needed}")]
    WrongState {
        id: i64,
        state: &'static str,
        needed: &'static str,
    },
    #[error(
        "four-eyes: case {0} must be approved by an approver other than the officer who opened it"
    )]
    SameOfficer(i64),
    #[error(transparent)]
    Officer(#[from] OfficerError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

fn criteria_context(id: i64) -> Vec<u8> {
    format!("relaylog case criteria v1|{id}").into_bytes()
}

fn db(path: &str) -> impl Fn(DbError) -> CaseError + '_ {
    move |e| CaseError::Ledger(sql_err(path)(e))
}

impl Ledger {
    /// Records the current four-eyes setting; an entry is appended when it differs
    /// from the one last recorded (so turning it off, or on again, is audited).
    pub fn note_four_eyes(
        &mut self,
        four_eyes: bool,
        at: Micros,
        actor: &str,
    ) -> Result<(), LedgerError> {
        self.note_setting("four_eyes", four_eyes, None, at, actor)
    }

    /// Records a compliance setting (`field` of `[compliance]`, as `snake_case`) in the
    /// audit log as `setting.<field>` when it differs from the last value recorded, or
    /// when none was and it is not `unrecorded` (the value a log without any entry
    /// stands for; `None`: the first value seen is recorded whatever it is).
    pub fn note_setting(
        &mut self,
        field: &str,
        value: bool,
        unrecorded: Option<bool>,
        at: Micros,
        actor: &str,
    ) -> Result<(), LedgerError> {
        let action = format!("setting.{}", field.replace('_', "-"));
        // The last recorded value: one indexed lookup, not a read of the whole log.
        let last: Option<String> = self
            .db()
            .query_opt(
                "SELECT details FROM audit WHERE action = ?1 ORDER BY seq DESC LIMIT 1",
                &[&action],
            )
            .and_then(|r| r.map(|r| r.text(0)).transpose())
            .map_err(sql_err(&self.path))?;
        let last = last
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .and_then(|v| v[field].as_bool())
            .or(unrecorded);
        if last != Some(value) {
            self.audit(at, actor, &action, serde_json::json!({ field: value }))?;
        }
        Ok(())
    }

    /// Opens a case for an authenticated officer. Returns its id.
    pub fn open_case(
        &mut self,
        master: &MasterKey,
        officer: &Officer,
        new: &NewCase,
        at: Micros,
    ) -> Result<i64, CaseError> {
        let d = &new.details;
        for (what, v) in [
            ("a country code", &d.request.country),
            ("an organisation id", &d.request.organisation),
            ("a request number", &d.request.number),
            ("the requesting authority", &d.authority),
            ("a legal basis", &d.legal_basis),
            ("an order reference", &d.order_reference),
            ("an order date", &d.order_date),
            ("a deadline", &d.deadline),
        ] {
            if v.trim().is_empty() {
                return Err(CaseError::Missing(what));
            }
        }
        if new.criteria.is_empty() {
            return Err(CaseError::NoCriteria);
        }
        if d.until <= d.since {
            return Err(CaseError::EmptyWindow);
        }
        let tags: Vec<(IdentifierKind, String)> = new
            .criteria
            .iter()
            .map(|c| (c.kind, master.audit_tag(c.kind.as_str(), &c.value)))
            .collect();
        let tags_json = serde_json::to_string(&tags).unwrap_or_default();
        let path = self.path.clone();
        let mut conn = self.db();
        let mut tx = conn.begin().map_err(db(&path))?;
        let duplicate = tx
            .query_opt(
                "SELECT id FROM cases WHERE country = ?1 AND organisation = ?2 AND request_number = ?3",
                &[&d.request.country, &d.request.organisation, &d.request.number],
            )
            .map_err(db(&path))?;
        if duplicate.is_some() {
            return Err(CaseError::Duplicate(d.request.to_string()));
        }
        let id = tx
            .query_one(
                "INSERT INTO cases (country, organisation, request_number, authority, legal_basis, order_reference, order_date, deadline, confidential, since_us, until_us, criteria, criteria_tags, state, opened_by, opened_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'open', ?14, ?15) RETURNING id",
                &[
                    &d.request.country,
                    &d.request.organisation,
                    &d.request.number,
                    &d.authority,
                    &d.legal_basis,
                    &d.order_reference,
                    &d.order_date,
                    &d.deadline,
                    &d.confidential,
                    &d.since,
                    &d.until,
                    &Vec::<u8>::new(),
                    &tags_json,
                    &officer.name,
                    &at,
                ],
            )
            .and_then(|r| r.int(0))
            .map_err(db(&path))?;
        let plain = serde_json::to_vec(&new.criteria).unwrap_or_default();
        let sealed = master.seal_secret(&criteria_context(id), &plain)?;
        tx.execute(
            "UPDATE cases SET criteria = ?1 WHERE id = ?2",
            &[&sealed, &id],
        )
        .map_err(db(&path))?;
        Ledger::append(
            &mut tx,
            at,
            &officer.name,
            "case.open",
            &serde_json::json!({
                "case": id,
                "request": d.request.to_string(),
                "since_us": d.since,
                "until_us": d.until,
                "confidential": d.confidential,
                "criteria": tags.iter().map(|(k, t)| serde_json::json!({"kind": k.as_str(), "tag": t})).collect::<Vec<_>>(),
            }),
        )
        .map_err(db(&path))?;
        tx.commit().map_err(db(&path))?;
        Ok(id)
    }

    pub fn case(&self, id: i64) -> Result<Case, CaseError> {
        self.cases_where("WHERE id = ?1", &[&id])?
            .pop()
            .ok_or(CaseError::Unknown(id))
    }

    pub fn cases(&self) -> Result<Vec<Case>, CaseError> {
        self.cases_where("", &[])
    }

    fn cases_where(&self, filter: &str, p: &[&dyn Param]) -> Result<Vec<Case>, CaseError> {
        let e = db(&self.path);
        let sql = format!(
            "SELECT id, country, organisation, request_number, authority, legal_basis, order_reference, order_date, deadline, confidential, since_us, until_us, criteria_tags, state, opened_by, opened_at, decided_by, decided_at, decision_note FROM cases {filter} ORDER BY id"
        );
        let rows = self.db().query(&sql, p).map_err(&e)?;
        rows.iter()
            .map(|r| {
                let tags = r.text(12)?;
                Ok(Case {
                    id: r.int(0)?,
                    details: CaseDetails {
                        request: RequestId {
                            country: r.text(1)?,
                            organisation: r.text(2)?,
                            number: r.text(3)?,
                        },
                        authority: r.text(4)?,
                        legal_basis: r.text(5)?,
                        order_reference: r.text(6)?,
                        order_date: r.text(7)?,
                        deadline: r.text(8)?,
                        confidential: r.int(9)? != 0,
                        since: r.int(10)?,
                        until: r.int(11)?,
                    },
                    criteria_tags: serde_json::from_str(&tags).unwrap_or_default(),
                    state: State::parse(&r.text(13)?),
                    opened_by: r.text(14)?,
                    opened_at: r.int(15)?,
                    decided_by: r.opt_text(16)?,
                    decided_at: r.opt_int(17)?,
                    decision_note: r.opt_text(18)?,
                })
            })
            .collect::<Result<Vec<_>, DbError>>()
            .map_err(&e)
    }

    /// The case's identifiers in the clear, for running it. Only for an approved case.
    pub fn case_criteria(&self, master: &MasterKey, id: i64) -> Result<Vec<Criterion>, CaseError> {
        let case = self.case(id)?;
        if case.state != State::Approved {
            return Err(CaseError::WrongState {
                id,
                state: case.state.as_str(),
                needed: "approved",
            });
        }
        self.criteria_of(master, id)
    }

    /// A case's identifiers whatever its state: for keeping a confidential case's
    /// records out of data-subject exports, never for disclosure.
    pub(crate) fn criteria_of(
        &self,
        master: &MasterKey,
        id: i64,
    ) -> Result<Vec<Criterion>, CaseError> {
        let sealed = self
            .db()
            .query_opt("SELECT criteria FROM cases WHERE id = ?1", &[&id])
            .and_then(|r| r.map(|r| r.blob(0)).transpose())
            .map_err(db(&self.path))?
            .ok_or(CaseError::Unknown(id))?;
        let plain = master.open_secret(&criteria_context(id), &sealed)?;
        serde_json::from_slice(&plain).map_err(|_| CaseError::Key(KeyError::Open))
    }

    /// Approves or rejects an open case. The approver has been authenticated with
    /// password and TOTP and holds the approver role.
    pub fn decide_case(
        &mut self,
        approver: &Officer,
        id: i64,
        approve: bool,
        note: &str,
        four_eyes: bool,
        at: Micros,
    ) -> Result<(), CaseError> {
        let case = self.case(id)?;
        let action = if approve {
            "case.approve"
        } else {
            "case.reject"
        };
        let refusal = if case.state != State::Open {
            Some(CaseError::WrongState {
                id,
                state: case.state.as_str(),
                needed: "open",
            })
        } else if !approver.role.allows(Role::Approver) {
            Some(CaseError::Officer(OfficerError::Forbidden {
                needed: "approver",
            }))
        } else if four_eyes && approver.name == case.opened_by {
            Some(CaseError::SameOfficer(id))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.audit(
                at,
                &approver.name,
                &format!("{action}.refused"),
                serde_json::json!({"case": id, "reason": refusal.to_string()}),
            )?;
            return Err(refusal);
        }
        let path = self.path.clone();
        let mut conn = self.db();
        let mut tx = conn.begin().map_err(db(&path))?;
        let state = if approve { "approved" } else { "rejected" };
        tx.execute(
            "UPDATE cases SET state = ?1, decided_by = ?2, decided_at = ?3, decision_note = ?4 WHERE id = ?5",
            &[&state, &approver.name, &at, &note, &id],
        )
        .map_err(db(&path))?;
        Ledger::append(
            &mut tx,
            at,
            &approver.name,
            action,
            &serde_json::json!({"case": id, "four_eyes": four_eyes, "opened_by": case.opened_by, "note": note}),
        )
        .map_err(db(&path))?;
        tx.commit().map_err(db(&path))?;
        Ok(())
    }

    /// Closes a case (answered, or withdrawn): nothing more is disclosed under it.
    pub fn close_case(&mut self, officer: &Officer, id: i64, at: Micros) -> Result<(), CaseError> {
        let case = self.case(id)?;
        if case.state == State::Closed {
            return Err(CaseError::WrongState {
                id,
                state: "closed",
                needed: "open, approved or rejected",
            });
        }
        let path = self.path.clone();
        let mut conn = self.db();
        let mut tx = conn.begin().map_err(db(&path))?;
        tx.execute(
            "UPDATE cases SET state = 'closed', closed_at = ?1 WHERE id = ?2",
            &[&at, &id],
        )
        .map_err(db(&path))?;
        Ledger::append(
            &mut tx,
            at,
            &officer.name,
            "case.close",
            &serde_json::json!({"case": id, "was": case.state.as_str()}),
        )
        .map_err(db(&path))?;
        tx.commit().map_err(db(&path))?;
        Ok(())
    }
}

/// A case as an officer fills it in, on the command line or as the API's JSON body:
/// free text, times as written, identifiers as typed. [`CaseForm::validate`] turns it
/// into a [`NewCase`] or says what is wrong, the same way for both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseForm {
    pub authority: String,
    pub country: String,
    pub organisation: String,
    pub request: String,
    pub legal_basis: String,
    pub order_reference: String,
    pub order_date: String,
    pub deadline: String,
    #[serde(default)]
    pub confidential: bool,
    pub since: String,
    pub until: String,
    #[serde(default)]
    pub identifiers: Identifiers,
}

/// A case's identifiers by kind, each as typed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identifiers {
    #[serde(default)]
    pub recipient: Vec<String>,
    #[serde(default)]
    pub originator: Vec<String>,
    #[serde(default)]
    pub account: Vec<String>,
    #[serde(default)]
    pub ip: Vec<String>,
    #[serde(default)]
    pub email: Vec<String>,
}

/// Identifiers one case may name; a longer list is a mistake or a trawl, not a case.
pub const MAX_IDENTIFIERS: usize = 256;

impl CaseForm {
    /// Canonical identifiers, parsed window (checked against `now` and the retention
    /// cutoff), and the trimmed request id.
    pub fn validate(
        &self,
        numbers: &NumberNormalizer,
        now: Micros,
        cutoff: Option<Micros>,
    ) -> Result<NewCase, CaseError> {
        let ids = &self.identifiers;
        let mut criteria = Vec::new();
        for (kind, values) in [
            (IdentifierKind::Recipient, &ids.recipient),
            (IdentifierKind::Originator, &ids.originator),
            (IdentifierKind::Account, &ids.account),
            (IdentifierKind::Ip, &ids.ip),
            (IdentifierKind::Email, &ids.email),
        ] {
            for v in values {
                if criteria.len() == MAX_IDENTIFIERS {
                    return Err(CaseError::TooManyIdentifiers);
                }
                criteria.push(criterion(kind, v, numbers)?);
            }
        }
        let since = crate::clock::parse_time(&self.since, false)?.timestamp_micros();
        let until = crate::clock::parse_time(&self.until, true)?.timestamp_micros();
        check_window(since, until, now, cutoff)?;
        // Dates, so that deadlines compare and sort as dates wherever they are read.
        let date = |field, needs, value: &str| {
            if value.trim().is_empty() {
                return Err(CaseError::Missing(needs));
            }
            chrono::NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d")
                .map(|d| d.format("%Y-%m-%d").to_string())
                .map_err(|_| CaseError::BadDate(field))
        };
        let order_date = date("order date", "an order date", &self.order_date)?;
        let deadline = date("deadline", "a deadline", &self.deadline)?;
        Ok(NewCase {
            details: CaseDetails {
                request: RequestId {
                    country: self.country.trim().to_ascii_uppercase(),
                    organisation: self.organisation.trim().to_owned(),
                    number: self.request.trim().to_owned(),
                },
                authority: self.authority.clone(),
                legal_basis: self.legal_basis.clone(),
                order_reference: self.order_reference.clone(),
                order_date,
                deadline,
                confidential: self.confidential,
                since,
                until,
            },
            criteria,
        })
    }
}

/// A case's window must be non-empty, must not start in the future, and must reach past
/// the retention cutoff (before it, everything has been deleted).
pub fn check_window(
    since: Micros,
    until: Micros,
    now: Micros,
    cutoff: Option<Micros>,
) -> Result<(), CaseError> {
    if until <= since {
        return Err(CaseError::EmptyWindow);
    }
    if since > now {
        return Err(CaseError::FutureWindow);
    }
    if let Some(cutoff) = cutoff
        && until <= cutoff
    {
        return Err(CaseError::OutsideRetention {
            cutoff: chrono::DateTime::from_timestamp_micros(cutoff)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country;

    fn officer(name: &str, role: Role) -> Officer {
        Officer {
            name: name.into(),
            role,
            enabled: true,
            created_at: 0,
            created_by: "root".into(),
        }
    }

    fn new_case(numbers: &NumberNormalizer) -> NewCase {
        NewCase {
            details: CaseDetails {
                request: RequestId {
                    country: "NL".into(),
                    organisation: "OM-0042".into(),
                    number: "2026-117".into(),
                },
                authority: "Openbaar Ministerie".into(),
                legal_basis: "Sv art. 126n".into(),
                order_reference: "RC 26/1234".into(),
                order_date: "2026-11-20".into(),
                deadline: "2026-12-04".into(),
                confidential: false,
                since: 0,
                until: 1_000,
            },
            criteria: vec![criterion(IdentifierKind::Recipient, "06-1234 5678", numbers).unwrap()],
        }
    }

    #[test]
    fn identifiers_are_canonical_or_refused_with_a_reason() {
        let nl = NumberNormalizer::new(country::Id::NL);
        let c = |k, v| criterion(k, v, &nl);
        assert_eq!(
            c(IdentifierKind::Recipient, "06-1234 5678").unwrap().value,
            "+31612345678"
        );
        assert_eq!(
            c(IdentifierKind::Ip, "::ffff:203.0.113.7").unwrap().value,
            "203.0.113.7"
        );
        assert_eq!(
            c(IdentifierKind::Email, "<Jan@Example.NL>").unwrap().value,
            "Jan@example.nl"
        );
        assert_eq!(
            c(IdentifierKind::Email, "Jan@Bücher.example")
                .unwrap()
                .value,
            "Jan@xn--bcher-kva.example"
        );
        // An envelope sender is searched as an address, not as a phone number.
        assert_eq!(
            c(IdentifierKind::Originator, "No.Reply@Shop.Example")
                .unwrap()
                .value,
            "No.Reply@shop.example"
        );
        assert_eq!(c(IdentifierKind::Originator, "ACME").unwrap().value, "ACME");
        for (kind, bad) in [
            (IdentifierKind::Recipient, "call me maybe"),
            (IdentifierKind::Ip, "300.1.2.3"),
            (IdentifierKind::Email, "nobody"),
            (IdentifierKind::Account, "  "),
        ] {
            let e = c(kind, bad).unwrap_err();
            assert!(matches!(e, CaseError::BadIdentifier { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn windows_outside_retention_or_in_the_future_are_refused() {
        assert!(check_window(10, 20, 100, Some(5)).is_ok());
        assert!(matches!(
            check_window(20, 20, 100, None),
            Err(CaseError::EmptyWindow)
        ));
        assert!(matches!(
            check_window(200, 300, 100, None),
            Err(CaseError::FutureWindow)
        ));
        assert!(matches!(
            check_window(10, 20, 100, Some(20)),
            Err(CaseError::OutsideRetention { .. })
        ));
    }

    #[test]
    fn a_case_form_is_validated_whole() {
        let nl = NumberNormalizer::new(country::Id::NL);
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
            .unwrap()
            .timestamp_micros();
        let mut form = CaseForm {
            authority: "OM".into(),
            country: " nl ".into(),
            organisation: "OM-0042 ".into(),
            request: "7".into(),
            order_date: "2026-11-20".into(),
            deadline: " 2026-12-04".into(),
            since: "2026-11-01".into(),
            until: "2026-11-21".into(),
            ..CaseForm::default()
        };
        form.identifiers.recipient.push("0612345678".into());
        form.identifiers.ip.push("192.0.2.1".into());
        let new = form.validate(&nl, now, None).unwrap();
        assert_eq!(new.details.deadline, "2026-12-04");
        assert_eq!(new.details.request.to_string(), "NL/OM-0042/7");
        assert_eq!(new.criteria[0].value, "+31612345678");
        assert_eq!(new.criteria[1].kind, IdentifierKind::Ip);
        // The whole of 21 November is in the window.
        assert_eq!(new.details.until - new.details.since, 21 * 86_400_000_000);

        // Dates are dates, so that deadlines compare as dates.
        let mut vague = form.clone();
        vague.deadline = "4 December".into();
        assert!(matches!(
            vague.validate(&nl, now, None),
            Err(CaseError::BadDate("deadline"))
        ));
        vague.deadline = String::new();
        assert!(matches!(
            vague.validate(&nl, now, None),
            Err(CaseError::Missing("a deadline"))
        ));
        let mut late = form.clone();
        late.until = "next week".into();
        assert!(matches!(
            late.validate(&nl, now, None),
            Err(CaseError::BadTime(_))
        ));
        let mut trawl = form.clone();
        trawl.identifiers.recipient = (0..MAX_IDENTIFIERS)
            .map(|n| format!("+3161{n:07}"))
            .collect();
        assert!(matches!(
            trawl.validate(&nl, now, None),
            Err(CaseError::TooManyIdentifiers)
        ));
        let mut future = form;
        future.since = "2026-12-01".into();
        future.until = "2026-12-02".into();
        assert!(matches!(
            future.validate(&nl, now, None),
            Err(CaseError::FutureWindow)
        ));
    }

    /// Four-eyes: the opener cannot approve; a plain officer cannot; an approver can,
    /// once. The criteria are sealed until then and never in the audit log.
    #[test]
    fn a_case_is_decrypted_only_after_another_approver_approves() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        crate::store::keys::create_master_key(&key).unwrap();
        let master = MasterKey::load(&key).unwrap();
        let mut l = Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
        let nl = NumberNormalizer::new(country::Id::NL);
        let (anna, bob, carl) = (
            officer("anna", Role::Approver),
            officer("bob", Role::Approver),
            officer("carl", Role::Officer),
        );
        let id = l.open_case(&master, &anna, &new_case(&nl), 1).unwrap();
        assert!(matches!(
            l.open_case(&master, &anna, &new_case(&nl), 2),
            Err(CaseError::Duplicate(_))
        ));
        assert!(matches!(
            l.case_criteria(&master, id),
            Err(CaseError::WrongState { .. })
        ));
        assert!(matches!(
            l.decide_case(&anna, id, true, "", true, 3),
            Err(CaseError::SameOfficer(_))
        ));
        assert!(matches!(
            l.decide_case(&carl, id, true, "", true, 4),
            Err(CaseError::Officer(_))
        ));
        l.decide_case(&bob, id, true, "order checked", true, 5)
            .unwrap();
        assert!(matches!(
            l.decide_case(&bob, id, true, "", true, 6),
            Err(CaseError::WrongState { .. })
        ));
        let criteria = l.case_criteria(&master, id).unwrap();
        assert_eq!(criteria[0].value, "+31612345678");
        l.close_case(&anna, id, 7).unwrap();
        assert!(matches!(
            l.case_criteria(&master, id),
            Err(CaseError::WrongState { .. })
        ));

        let actions: Vec<String> = l.entries().unwrap().into_iter().map(|e| e.action).collect();
        assert_eq!(
            actions,
            [
                "case.open",
                "case.approve.refused",
                "case.approve.refused",
                "case.approve",
                "case.approve.refused",
                "case.close"
            ]
        );
        let audit: String = l
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| e.details)
            .collect();
        assert!(!audit.contains("612345678"), "{audit}");
        assert!(audit.contains(&master.audit_tag("recipient", "+31612345678")));
        let bytes = std::fs::read(dir.path().join("ledger.sqlite")).unwrap();
        assert!(!crate::test_util::contains(&bytes, b"612345678"));

        // A single-officer installation: the opener approves, and the setting is audited.
        let mut second = new_case(&nl);
        second.details.request.number = "2026-118".into();
        let id2 = l.open_case(&master, &anna, &second, 8).unwrap();
        l.note_four_eyes(false, 9, "root").unwrap();
        l.note_four_eyes(false, 10, "root").unwrap();
        l.decide_case(&anna, id2, true, "", false, 11).unwrap();
        let settings = l
            .entries()
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "setting.four-eyes")
            .count();
        assert_eq!(settings, 1, "recorded once, when it changed");
        assert!(l.verify_audit().is_ok());
    }
}
