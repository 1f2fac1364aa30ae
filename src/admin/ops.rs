//! What an officer can do on the admin listener, once: the JSON API ([`super::api`])
//! and the web console ([`super::console`]) are two ways of asking for it, and each
//! only turns these results into its own replies. Each operation checks what the
//! command line checks for the same act (a role where it asks for one, the four-eyes
//! setting noted by case commands) and writes the audit entry it writes, through the
//! same library calls; reads that the command line does not audit (a case's history,
//! the exports on disk) are not audited here either.
//!
//! All of them block (ledger, store, password hashing): callers run them on the
//! blocking pool ([`blocking`]).

use std::path::Path;

use axum::http::StatusCode;
use serde_json::json;

use super::api::{Api, ApiError, Authed};
use super::session::{Scope, Session, SessionError};
use crate::clock::Micros;
use crate::compliance::cases::{Case, CaseForm, Criterion};
use crate::compliance::disclosure::{self, Format};
use crate::compliance::lookup::{self, Lookup, Window};
use crate::compliance::officers::{Credentials, Enrolment, Officer, OfficerError, Role};
use crate::compliance::purpose::Purpose;
use crate::compliance::refusals;
use crate::compliance::requests::SubjectRequest;
use crate::ledger::{AuditEntry, Hold, Ledger};

/// Runs ledger and store work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(&e)))
}

/// An export written to `admin.exports`: file names only (served by name).
pub struct Exported {
    pub records: u64,
    pub sha256: String,
    pub export: String,
    pub manifest: String,
    pub signature: String,
}

impl Exported {
    fn of(d: &disclosure::Disclosure) -> Exported {
        Exported {
            records: d.records,
            sha256: d.sha256.clone(),
            export: file_name(&d.export),
            manifest: file_name(&d.manifest),
            signature: file_name(&disclosure::signature_path(&d.manifest)),
        }
    }
}

/// A case's export still on disk: its three files' names.
pub struct CaseExport {
    pub export: String,
    pub manifest: String,
    pub signature: String,
}

/// An account offboarded: what was exported and erased, and the signed statement.
pub struct Offboarded {
    pub account: String,
    pub records: u64,
    pub outcomes: u64,
    pub partitions: Vec<String>,
    pub export: String,
    pub statement: String,
    pub signature: String,
}

/// Longest password a login, enrolment or step-up takes.
pub const MAX_PASSWORD: usize = 1024;

/// A second factor asked again before a sensitive act in the console (approving,
/// rejecting, exporting, offboarding, enrolling an officer, releasing a hold): the
/// officer's password and a fresh TOTP code, checked by the same library call as a
/// login ([`Api::confirm`]). The API asks for none: its bearer tokens come from a
/// login with both factors and are no console session (`session::Scope`).
pub struct StepUp<'a> {
    pub password: &'a str,
    pub totp: &'a str,
    /// The client's address, which refusals are counted against.
    pub peer: &'a str,
}

pub fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A file name unique to this moment and not to be guessed, e.g.
/// `case-7-20261122T101530.123456Z-3f9a0c2e5b7d1e84.json`: a download is served to
/// whoever names the file, so its name carries 64 random bits.
pub fn export_name(prefix: &str, now: Micros, ext: &str) -> String {
    format!("{}.{ext}", stamped(prefix, now))
}

/// `prefix-<UTC time to the microsecond>-<64 random bits in hex>`.
fn stamped(prefix: &str, now: Micros) -> String {
    let t = crate::clock::micros_to_datetime(now).format("%Y%m%dT%H%M%S%.6fZ");
    let mut random = [0u8; 8];
    // Without randomness the name is still unique, only guessable.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    let r: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{t}-{r}")
}

impl Api {
    // -----------------------------------------------------------------------------
    // Sessions.
    // -----------------------------------------------------------------------------

    /// Password and TOTP checked (refusals counted against `peer`; among the password
    /// checks, [`Api::logins`]), a session opened and the login audited. The token is
    /// the caller's to hand over, once. `replacing`: the session the client had, ended
    /// (and audited) once the new one is open.
    pub fn log_in(
        &self,
        scope: Scope,
        replacing: Option<&str>,
        who: Credentials<'_>,
        peer: &str,
        shown_peer: &str,
    ) -> Result<(String, Session), ApiError> {
        if who.password.len() > MAX_PASSWORD {
            return Err(super::api::too_long());
        }
        let _permit = self.password_slot()?;
        let now = self.now();
        let mut ledger = self.ledger()?;
        let officer =
            ledger.authenticate(&self.master, who, Role::Officer, now, "session.login", peer)?;
        let (token, session) = self
            .sessions
            .open(scope, officer.clone(), now)
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        ledger.audit(
            now,
            &officer.name,
            "session.login",
            json!({"expires_at": crate::export::rfc3339(session.expires_at), "peer": shown_peer}),
        )?;
        if let Some(old) = replacing
            && let Ok(s) = self.sessions.get(scope, old, now)
        {
            // The new session is open: nothing here may keep its token from the caller.
            let ended = self
                .sessions
                .close(scope, old)
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    ledger
                        .audit(
                            now,
                            &s.officer.name,
                            "session.logout",
                            json!({"replaced": true}),
                        )
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = ended {
                tracing::warn!(error = %e, "a session replaced at login could not be ended or audited");
            }
        }
        Ok((token, session))
    }

    pub fn log_out(&self, who: &Authed) -> Result<(), ApiError> {
        self.sessions
            .close(who.scope, &who.token)
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        self.ledger()?
            .audit(self.now(), &who.officer.name, "session.logout", json!({}))?;
        Ok(())
    }

    /// The officer behind a session token, still enabled (disabling ends sessions at
    /// once). A failure is counted against `from` and audited one entry per peer and
    /// minute (`compliance::refusals`), with `call` (method and route template, never
    /// a query string); a peer past its limit is told to slow down.
    pub fn session_officer(
        &self,
        scope: Scope,
        token: Option<String>,
        call: &str,
        from: &str,
    ) -> Result<Authed, ApiError> {
        let now = self.now();
        let session = match &token {
            None => Err(SessionError::Missing),
            Some(t) => self.sessions.get(scope, t, now),
        };
        if let Err(SessionError::Store(e)) = &session {
            // Not the caller's fault, nor a refusal to count: the database is away.
            // Its words go to the log, not to a caller without a session.
            tracing::error!(error = %e, "sessions cannot be read");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sessions cannot be read now; try again in a moment",
            ));
        }
        let mut ledger = self.ledger()?;
        let (actor, reason, message) = match session {
            Ok(s) => {
                let current = ledger
                    .officers()?
                    .into_iter()
                    .find(|o| o.name == s.officer.name);
                match current {
                    Some(officer) if officer.enabled => {
                        return Ok(Authed {
                            officer,
                            token: token.unwrap_or_default(),
                            scope,
                            expires_at: s.expires_at,
                        });
                    }
                    _ => {
                        if let Err(e) = self.sessions.close_officer(&s.officer.name) {
                            tracing::warn!(error = %e, "a disabled officer's sessions could not be ended; refused at each use");
                        }
                        (
                            s.officer.name,
                            "officer disabled",
                            "officer is disabled".to_owned(),
                        )
                    }
                }
            }
            Err(e) => ("(unauthenticated)".to_owned(), e.reason(), e.to_string()),
        };
        ledger.count_refusal(now, refusals::UNAUTHENTICATED, from, &actor, call, reason)?;
        if ledger.over_limit(
            now,
            refusals::UNAUTHENTICATED,
            from,
            refusals::UNAUTHENTICATED_PER_MINUTE + 1,
        )? {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many calls without a live session from here: try again in a minute",
            ));
        }
        Err(ApiError::new(StatusCode::UNAUTHORIZED, message))
    }

    /// One of the [`Api::logins`] places: argon2 is costly on purpose, so only so
    /// many passwords are hashed at once; past them a caller is told to retry. Taken
    /// on the blocking thread that hashes, so that a client that goes away does not
    /// free it mid-hash.
    fn password_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.logins.try_acquire().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many password checks at once; try again in a moment",
            )
        })
    }

    /// The step-up check before a sensitive act: the session's own officer, her
    /// password and a fresh code, and the role the act needs, as a login checks them
    /// (refusals counted against the peer, a wrong code counting towards the lock).
    /// A wrong password and a wrong code get the same answer, so that a session is no
    /// oracle for the password. Runs among the password checks ([`Api::logins`]).
    pub fn confirm(
        &self,
        who: &Authed,
        step: &StepUp<'_>,
        needed: Role,
        action: &str,
    ) -> Result<(), ApiError> {
        if step.password.len() > MAX_PASSWORD {
            return Err(ApiError::bad_request(format!(
                "the password is longer than {MAX_PASSWORD} bytes"
            )));
        }
        let _permit = self.password_slot()?;
        let mut ledger = self.ledger()?;
        let creds = Credentials {
            name: &who.officer.name,
            password: step.password,
            totp: Some(step.totp),
        };
        match ledger.authenticate(&self.master, creds, needed, self.now(), action, step.peer) {
            Ok(_) => Ok(()),
            Err(OfficerError::BadCredentials | OfficerError::BadTotp) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the password or the code is wrong (each code is taken once: wait for the next)",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Counts a refused console form (a bad CSRF token or origin) like a call without
    /// a session: audited one entry per peer and minute.
    pub fn refuse(
        &self,
        from: &str,
        actor: &str,
        call: &str,
        reason: &str,
    ) -> Result<(), ApiError> {
        self.ledger()?.count_refusal(
            self.now(),
            refusals::UNAUTHENTICATED,
            from,
            actor,
            call,
            reason,
        )?;
        Ok(())
    }

    // -----------------------------------------------------------------------------
    // Cases.
    // -----------------------------------------------------------------------------

    /// A case command: the ledger with the four-eyes setting noted (as every case
    /// command of the command line does), and the time.
    fn case_command<T>(
        &self,
        who: &Authed,
        f: impl FnOnce(&mut Ledger, Micros) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let now = self.now();
        let mut ledger = self.ledger()?;
        ledger.note_four_eyes(self.config.compliance.four_eyes, now, &who.officer.name)?;
        f(&mut ledger, now)
    }

    pub fn cases(&self, who: &Authed) -> Result<Vec<Case>, ApiError> {
        self.case_command(who, |ledger, now| {
            ledger.audit(now, &who.officer.name, "case.list", json!({}))?;
            Ok(ledger.cases()?)
        })
    }

    pub fn open_case(&self, who: &Authed, form: &CaseForm) -> Result<Case, ApiError> {
        self.case_command(who, |ledger, now| {
            let cutoff = self.config.store.retention.cutoff(self.clock.now());
            let new = form.validate(&self.numbers, now, Some(cutoff.timestamp_micros()))?;
            let id = ledger.open_case(&self.master, &who.officer, &new, now)?;
            Ok(ledger.case(id)?)
        })
    }

    pub fn case(&self, who: &Authed, id: i64) -> Result<Case, ApiError> {
        self.case_command(who, |ledger, now| {
            let found = ledger.case(id);
            ledger.audit(
                now,
                &who.officer.name,
                "case.show",
                json!({"case": id, "found": found.is_ok()}),
            )?;
            Ok(found?)
        })
    }

    /// A case's history from the audit log, and whether older entries were left out
    /// ([`Ledger::case_history`]).
    pub fn case_history(&self, id: i64) -> Result<(Vec<AuditEntry>, bool), ApiError> {
        Ok(self.ledger()?.case_history(id)?)
    }

    /// Approves or rejects a case (an approver, another than its opener under the
    /// four-eyes rule; a rejection needs its reason).
    pub fn decide(
        &self,
        who: &Authed,
        id: i64,
        approve: bool,
        note: &str,
    ) -> Result<Case, ApiError> {
        self.case_command(who, |ledger, now| {
            let action = if approve {
                "case.approve"
            } else {
                "case.reject"
            };
            who.require(ledger, Role::Approver, action, now)?;
            if !approve && note.trim().is_empty() {
                return Err(ApiError::bad_request(
                    "a rejection needs a note with the reason",
                ));
            }
            ledger.decide_case(
                &who.officer,
                id,
                approve,
                note,
                self.config.compliance.four_eyes,
                now,
            )?;
            Ok(ledger.case(id)?)
        })
    }

    pub fn close_case(&self, who: &Authed, id: i64) -> Result<Case, ApiError> {
        self.case_command(who, |ledger, now| {
            ledger.close_case(&who.officer, id, now)?;
            Ok(ledger.case(id)?)
        })
    }

    // -----------------------------------------------------------------------------
    // Exports. The caller holds [`Api::exporting`] and has waited for the store to
    // settle ([`Api::settled`]).
    // -----------------------------------------------------------------------------

    pub fn disclose(
        &self,
        who: &Authed,
        purpose: Purpose,
        id: i64,
        format: Format,
    ) -> Result<Exported, ApiError> {
        let now = self.now();
        let mut ledger = self.ledger()?;
        let ext = format.extension();
        let out = self
            .exports
            .join(export_name(&format!("case-{id}"), now, ext));
        self.with_installation(|inst| {
            let d = disclosure::disclose(
                inst,
                &mut ledger,
                &who.officer,
                purpose,
                id,
                format,
                &out,
                now,
            )?;
            Ok(Exported::of(&d))
        })
    }

    /// A data subject's export, of `subject` or of the subject of `request` (which
    /// it answers): one of the two.
    pub fn subject_export(
        &self,
        who: &Authed,
        purpose: Purpose,
        subject: Option<&Criterion>,
        request: Option<i64>,
    ) -> Result<Exported, ApiError> {
        let now = self.now();
        let mut ledger = self.ledger()?;
        let out = self.exports.join(export_name("subject", now, "json"));
        self.with_installation(|inst| {
            let subject = match (request, subject) {
                (Some(id), None) => ledger.request_subject(inst.master, id)?,
                (None, Some(s)) => s.clone(),
                _ => {
                    return Err(ApiError::bad_request(
                        "give one of recipient, email or request",
                    ));
                }
            };
            let d = disclosure::subject_export(
                inst,
                &mut ledger,
                &who.officer,
                purpose,
                &subject,
                request,
                self.config.store.retention,
                &out,
                now,
            )?;
            Ok(Exported::of(&d))
        })
    }

    /// Every subject request, with where it stands today; audited.
    pub fn subject_requests(
        &self,
        who: &Authed,
    ) -> Result<(Vec<SubjectRequest>, chrono::NaiveDate), ApiError> {
        let mut ledger = self.ledger()?;
        let now = self.now();
        ledger.audit(now, &who.officer.name, "subject.request.list", json!({}))?;
        let today = crate::clock::micros_to_datetime(now).date_naive();
        Ok((ledger.requests()?, today))
    }

    pub fn offboard(
        &self,
        who: &Authed,
        purpose: Purpose,
        account: &str,
    ) -> Result<Offboarded, ApiError> {
        let now = self.now();
        let mut ledger = self.ledger()?;
        who.require(&mut ledger, Role::Admin, "account.offboard", now)?;
        // Named by time, not account: download and expiry put file names in the
        // audit log, which names accounts only by tag.
        let stem = stamped("offboard", now);
        let out = crate::compliance::offboard::Out {
            dir: &self.exports,
            stem: Some(&stem),
        };
        self.with_installation(|inst| {
            let o = crate::compliance::offboard::offboard(
                inst,
                &mut ledger,
                &who.officer,
                purpose,
                account,
                out,
                now,
            )?;
            Ok(Offboarded {
                account: account.to_owned(),
                records: o.records,
                outcomes: o.outcomes,
                partitions: o.partitions.iter().map(|p| p.to_string()).collect(),
                export: file_name(&o.export),
                statement: file_name(&o.statement),
                signature: file_name(&disclosure::signature_path(&o.statement)),
            })
        })
    }

    /// The exports written for case `id` that are still in `admin.exports` (each with
    /// its manifest and signature), oldest first.
    pub fn case_exports(&self, id: i64) -> Result<Vec<CaseExport>, ApiError> {
        let prefix = format!("case-{id}-");
        let entries = match std::fs::read_dir(&self.exports) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ApiError::internal(&e)),
        };
        let mut exports: Vec<CaseExport> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = file_name(p);
                name.starts_with(&prefix)
                    && <Format as clap::ValueEnum>::value_variants()
                        .iter()
                        .any(|f| name.ends_with(&format!(".{}", f.extension())))
                    && !name.ends_with(".manifest.json")
            })
            .map(|export| {
                let manifest = disclosure::manifest_path(&export);
                CaseExport {
                    export: file_name(&export),
                    signature: file_name(&disclosure::signature_path(&manifest)),
                    manifest: file_name(&manifest),
                }
            })
            .collect();
        exports.sort_by(|a, b| a.export.cmp(&b.export));
        Ok(exports)
    }

    /// An export file to send, by name: opened, its size, and the download audited
    /// (with its case, for a case's export). A name that is no file is counted as a
    /// refusal against `peer`: names are not to be guessed.
    pub fn download(
        &self,
        who: &Authed,
        name: &str,
        peer: &str,
    ) -> Result<(std::fs::File, u64), ApiError> {
        if !servable(name) {
            return Err(ApiError::bad_request("not an export file name"));
        }
        let file = match std::fs::File::open(self.exports.join(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.refuse(peer, &who.officer.name, "GET export", "no such export")?;
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no export {name}"),
                ));
            }
            Err(e) => return Err(ApiError::internal(&e)),
        };
        let len = file.metadata().map_err(|e| ApiError::internal(&e))?.len();
        let mut details = json!({"file": name, "bytes": len});
        if let Some(case) = case_of_export(name) {
            details["case"] = case.into();
        }
        if let Some(purpose) = purpose_of_export(name) {
            details["purpose"] = purpose.as_str().into();
        }
        self.ledger()?
            .audit(self.now(), &who.officer.name, "export.download", details)?;
        Ok((file, len))
    }

    /// A lookup by one identifier, audited (the records held in memory: `window.limit`
    /// is capped by the caller).
    pub fn query(
        &self,
        who: &Authed,
        purpose: Purpose,
        criterion: &Criterion,
        window: &Window,
    ) -> Result<Lookup, ApiError> {
        let now = self.now();
        let mut ledger = self.ledger()?;
        self.with_keyring(|keyring| {
            Ok(lookup::audited(
                &self.config.store,
                keyring,
                &self.master,
                &mut ledger,
                &who.officer.name,
                purpose,
                criterion,
                window,
                now,
            )?)
        })
    }

    // -----------------------------------------------------------------------------
    // Audit log.
    // -----------------------------------------------------------------------------

    /// A page of the audit log after `after` (an admin's; audited, and every refusal
    /// so far, this minute's too, flushed into it first), and the newest entry's
    /// number.
    pub fn audit_page(
        &self,
        who: &Authed,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, i64), ApiError> {
        let now = self.now();
        let mut ledger = self.ledger()?;
        who.require(&mut ledger, Role::Admin, "audit.list", now)?;
        ledger.flush_refusals(now, true)?;
        ledger.audit(
            now,
            &who.officer.name,
            "audit.list",
            json!({"after": after, "limit": limit}),
        )?;
        Ok((ledger.entries_page(after, limit)?, ledger.last_seq()?))
    }

    /// Recomputes the audit chain; the number of entries when it holds.
    pub fn audit_verify(&self, who: &Authed) -> Result<usize, ApiError> {
        let now = self.now();
        let mut ledger = self.ledger()?;
        who.require(&mut ledger, Role::Admin, "audit.verify", now)?;
        let n = ledger.verify_audit()?;
        ledger.audit(
            now,
            &who.officer.name,
            "audit.verify",
            json!({"entries": n}),
        )?;
        Ok(n)
    }

    // -----------------------------------------------------------------------------
    // Officers and holds.
    // -----------------------------------------------------------------------------

    pub fn officers(&self, who: &Authed) -> Result<Vec<Officer>, ApiError> {
        let now = self.now();
        let mut ledger = self.ledger()?;
        who.require(&mut ledger, Role::Admin, "officer.list", now)?;
        ledger.audit(now, &who.officer.name, "officer.list", json!({}))?;
        Ok(ledger.officers()?)
    }

    /// Enrols an officer; the enrolment's otpauth URI is shown once, to the admin.
    pub fn add_officer(
        &self,
        who: &Authed,
        name: &str,
        role: Role,
        password: &str,
    ) -> Result<Enrolment, ApiError> {
        let now = self.now();
        let mut ledger = self.ledger()?;
        who.require(&mut ledger, Role::Admin, "officer.add", now)?;
        if password.len() > MAX_PASSWORD {
            return Err(super::api::too_long());
        }
        let _permit = self.password_slot()?;
        Ok(ledger.add_officer(&self.master, name, role, password, now, &who.officer.name)?)
    }

    /// Disables an officer (an admin's act; there is no undoing it but a new
    /// enrolment). The last enabled admin is not disabled: nobody could enrol again.
    pub fn disable_officer(&self, who: &Authed, name: &str) -> Result<Option<Officer>, ApiError> {
        let now = self.now();
        let mut ledger = self.ledger()?;
        who.require(&mut ledger, Role::Admin, "officer.disable", now)?;
        // Her sessions end at their next use, which says why (see `session_officer`).
        ledger.disable_officer(name, now, &who.officer.name)?;
        Ok(ledger.officers()?.into_iter().find(|o| o.name == name))
    }

    pub fn holds(&self, who: &Authed) -> Result<Vec<Hold>, ApiError> {
        let mut ledger = self.ledger()?;
        ledger.audit(self.now(), &who.officer.name, "hold.list", json!({}))?;
        Ok(ledger.holds()?)
    }

    /// Places a hold (window as typed, whole days at its ends).
    pub fn add_hold(
        &self,
        who: &Authed,
        case: String,
        since: &str,
        until: &str,
        reason: String,
    ) -> Result<Hold, ApiError> {
        let hold = Hold {
            case,
            since: crate::clock::parse_time(since, false)?.timestamp_micros(),
            until: crate::clock::parse_time(until, true)?.timestamp_micros(),
            reason,
            placed_at: self.now(),
            placed_by: who.officer.name.clone(),
        };
        self.ledger()?.add_hold(&hold)?;
        Ok(hold)
    }

    /// Releases a case's holds; how many were released.
    pub fn release_hold(&self, who: &Authed, case: &str) -> Result<usize, ApiError> {
        Ok(self
            .ledger()?
            .release(case, self.now(), &who.officer.name)?)
    }
}

/// The purpose an export file was made for, by the act its name says made it.
fn purpose_of_export(name: &str) -> Option<Purpose> {
    [
        ("case-", Purpose::LawfulRequest),
        ("subject-", Purpose::SubjectAccess),
        ("offboard-", Purpose::ContractEnd),
    ]
    .into_iter()
    .find(|(prefix, _)| name.starts_with(prefix))
    .map(|(_, p)| p)
}

/// The case an export file is of (`case-<id>-...`).
fn case_of_export(name: &str) -> Option<i64> {
    name.strip_prefix("case-")?.split('-').next()?.parse().ok()
}

/// Names `download` serves: what the admin listener writes, nothing else (no paths,
/// no dot files).
pub fn servable(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_export_names_are_served() {
        for ok in [
            "case-7-20261122T101530.123456Z.json",
            "acme-deletion.json.sig",
        ] {
            assert!(servable(ok), "{ok}");
        }
        for bad in [
            "",
            "../ledger.sqlite",
            ".hidden",
            "a/b",
            "a\\b",
            "x%2e",
            &"a".repeat(256),
        ] {
            assert!(!servable(bad), "{bad}");
        }
    }

    #[test]
    fn export_names_sort_by_time_carry_no_identifier_and_are_not_to_be_guessed() {
        let a = export_name("subject", 1_795_000_000_000_000, "json");
        let b = export_name("subject", 1_795_000_000_000_001, "json");
        assert!(a.starts_with("subject-20261118T110640.000000Z-"), "{a}");
        assert_eq!(
            a.len(),
            "subject-20261118T110640.000000Z-".len() + 16 + ".json".len()
        );
        assert!(servable(&a));
        assert!(a < b);
        assert_ne!(a, export_name("subject", 1_795_000_000_000_000, "json"));
        assert_eq!(case_of_export(&export_name("case-7", 0, "csv")), Some(7));
        assert_eq!(case_of_export("case-7.json"), None);
        assert_eq!(case_of_export(&a), None);
        assert_eq!(purpose_of_export(&a), Some(Purpose::SubjectAccess));
        assert_eq!(
            purpose_of_export("offboard-x-records.json"),
            Some(Purpose::ContractEnd)
        );
        assert_eq!(purpose_of_export("stray.json"), None);
    }
}
