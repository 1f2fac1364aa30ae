//! Compliance officers: who may open, approve and export cases.
//!
//! Kept in the ledger (outside the store, never expired with it). A password is stored
//! as an argon2id hash; the TOTP seed is sealed under the master key, bound to the
//! officer's name. Approving and exporting need the password and a current TOTP code;
//! a code is accepted once (its step is remembered). Every change and every failed
//! authentication is appended to the audit log.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use ring::rand::{SecureRandom, SystemRandom};

use super::refusals;
use super::totp;
use crate::clock::Micros;
use crate::ledger::{Ledger, LedgerError, sql_err};
use crate::store::keys::{KeyError, MasterKey};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Opens cases and runs approved disclosures.
    Officer,
    /// Also approves or rejects other officers' cases.
    Approver,
    /// Also manages officers.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Officer => "officer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "officer" => Some(Role::Officer),
            "approver" => Some(Role::Approver),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Whether this role may act as `needed` (admin ⊇ approver ⊇ officer).
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

/// What an officer presents: name, password and, for approving and exporting, a
/// TOTP code.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub name: &'a str,
    pub password: &'a str,
    pub totp: Option<&'a str>,
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An officer row as stored, secrets included (never leaves this module).
struct Stored {
    role: String,
    hash: String,
    sealed_totp: Vec<u8>,
    last_step: i64,
    enabled: bool,
    created_at: Micros,
    created_by: String,
    locked_until: Micros,
}

/// A login refused, with the reason its audit entry gives.
struct Refused(OfficerError, &'static str);

/// Failed logins in a row (wrong password or TOTP code) after which an officer is
/// locked out, and for how long.
pub const LOCK_AFTER: i64 = 5;
pub const LOCK_FOR_MICROS: Micros = 15 * 60 * 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Officer {
    pub name: String,
    pub role: Role,
    pub enabled: bool,
    pub created_at: Micros,
    pub created_by: String,
}

/// What `officer add` hands out once: the enrolment URI for an authenticator app.
#[derive(Debug)]
pub struct Enrolment {
    pub officer: Officer,
    pub otpauth_uri: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OfficerError {
    #[error("officer names are 1-64 characters of a-z, 0-9, '.', '_' and '-'")]
    BadName,
    #[error("officer `{0}` already exists")]
    Exists(String),
    #[error("no officer `{0}`")]
    Unknown(String),
    #[error("a password needs at least {MIN_PASSWORD} characters")]
    WeakPassword,
    /// Unknown officer and wrong password read the same, so that the reply does not
    /// say which names exist.
    #[error("authentication failed")]
    BadCredentials,
    #[error("officer is disabled")]
    Disabled,
    #[error("`{0}` is the last enabled admin: enrol another admin first")]
    LastAdmin(String),
    #[error("TOTP code missing, wrong, or already used")]
    BadTotp,
    #[error("this needs the {needed} role")]
    Forbidden { needed: &'static str },
    /// Said only to whoever gives the right password: to anyone else a locked officer
    /// reads as a wrong password, so that locking does not tell which names exist.
    #[error("officer is locked out until {until} after repeated failed logins")]
    Locked { until: String },
    #[error("too many failed logins from here: try again in a minute")]
    TooManyAttempts,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("password hashing failed")]
    Hash,
}

pub const MIN_PASSWORD: usize = 12;

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

fn totp_context(name: &str) -> Vec<u8> {
    format!("relaylog officer totp v1|{name}").into_bytes()
}

fn hash_password(password: &str) -> Result<String, OfficerError> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| OfficerError::Key(KeyError::Random))?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| OfficerError::Hash)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| OfficerError::Hash)
}

fn password_matches(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

impl Ledger {
    /// Adds an officer and returns the TOTP enrolment to hand over once.
    pub fn add_officer(
        &mut self,
        master: &MasterKey,
        name: &str,
        role: Role,
        password: &str,
        at: Micros,
        actor: &str,
    ) -> Result<Enrolment, OfficerError> {
        if !valid_name(name) {
            return Err(OfficerError::BadName);
        }
        if password.chars().count() < MIN_PASSWORD {
            return Err(OfficerError::WeakPassword);
        }
        let mut seed = [0u8; 20];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| OfficerError::Key(KeyError::Random))?;
        let sealed = master.seal_secret(&totp_context(name), &seed)?;
        let hash = hash_password(password)?;
        let err = sql_err(&self.path);
        let mut conn = self.db();
        let mut tx = conn.begin().map_err(err)?;
        let exists = tx
            .query_opt("SELECT 1 FROM officer WHERE name = ?1", &[&name])
            .map_err(err)?;
        if exists.is_some() {
            return Err(OfficerError::Exists(name.to_owned()));
        }
        tx.execute(
            "INSERT INTO officer (name, role, password, totp, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            &[&name, &role.as_str(), &hash, &sealed, &at, &actor],
        )
        .map_err(err)?;
        Ledger::append(
            &mut tx,
            at,
            actor,
            "officer.add",
            &serde_json::json!({"officer": name, "role": role.as_str()}),
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Enrolment {
            officer: Officer {
                name: name.to_owned(),
                role,
                enabled: true,
                created_at: at,
                created_by: actor.to_owned(),
            },
            otpauth_uri: totp::otpauth_uri("relaylog", name, &seed),
        })
    }

    pub fn officers(&self) -> Result<Vec<Officer>, OfficerError> {
        let err = sql_err(&self.path);
        let rows = self
            .db()
            .query(
                "SELECT name, role, enabled, created_at, created_by FROM officer ORDER BY name",
                &[],
            )
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(Officer {
                    name: r.text(0)?,
                    role: Role::parse(&r.text(1)?).unwrap_or(Role::Officer),
                    enabled: r.int(2)? != 0,
                    created_at: r.int(3)?,
                    created_by: r.text(4)?,
                })
            })
            .collect::<Result<Vec<_>, crate::ledger::db::DbError>>()
            .map_err(err)?)
    }

    pub fn disable_officer(
        &mut self,
        name: &str,
        at: Micros,
        actor: &str,
    ) -> Result<(), OfficerError> {
        // Never the last enabled admin: nobody could enrol again. Checked in the
        // update itself, so that two admins disabling each other at once cannot both
        // pass (writers take turns on the ledger).
        let kept = self.change_officer(
            name,
            "enabled = 0",
            "officer.disable",
            at,
            actor,
            " AND (role <> 'admin' OR enabled = 0 OR (SELECT count(*) FROM officer o \
               WHERE o.enabled = 1 AND o.role = 'admin' AND o.name <> ?1) > 0)",
        );
        match kept {
            Err(OfficerError::Unknown(n)) if self.officers()?.iter().any(|o| o.name == n) => {
                Err(OfficerError::LastAdmin(n))
            }
            other => other,
        }
    }

    /// Sets `assignments` on one officer's row and audits `action` naming the officer,
    /// in one transaction; `Unknown` when there is no such officer.
    /// `and`: a further condition on the row (`""` for none); a row it excludes
    /// reads as `Unknown`.
    fn change_officer(
        &mut self,
        name: &str,
        assignments: &str,
        action: &str,
        at: Micros,
        actor: &str,
        and: &str,
    ) -> Result<(), OfficerError> {
        let err = sql_err(&self.path);
        let mut conn = self.db();
        let mut tx = conn.begin().map_err(err)?;
        let n = tx
            .execute(
                &format!("UPDATE officer SET {assignments} WHERE name = ?1{and}"),
                &[&name],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(OfficerError::Unknown(name.to_owned()));
        }
        Ledger::append(
            &mut tx,
            at,
            actor,
            action,
            &serde_json::json!({"officer": name}),
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(())
    }

    /// Checks an officer's password, and the TOTP code when `totp` is given (approving
    /// and exporting need one), and the role. A login refused is counted against `peer`
    /// (the client's address, or `local:USER` on the command line) and audited
    /// coalesced, one entry per peer and minute (`compliance::refusals`); a peer past
    /// [`refusals::LOGINS_PER_MINUTE`] is turned away before its password is hashed.
    /// [`LOCK_AFTER`] wrong passwords or codes in a row lock the officer out for
    /// [`LOCK_FOR_MICROS`] (audited as `officer.locked`). A role too low is audited at
    /// once. A success is not audited here (the action it authorises is).
    pub fn authenticate(
        &mut self,
        master: &MasterKey,
        who: Credentials<'_>,
        needed: Role,
        at: Micros,
        action: &str,
        peer: &str,
    ) -> Result<Officer, OfficerError> {
        // The name as typed may be a password pasted into the wrong field: only a
        // name that exists goes into the log.
        let known = |l: &Ledger| {
            l.officers()
                .map(|o| o.iter().any(|o| o.name == who.name))
                .unwrap_or(false)
        };
        if self.over_limit(at, refusals::LOGIN, peer, refusals::LOGINS_PER_MINUTE)? {
            let actor = if known(self) { who.name } else { "(unknown)" };
            self.count_refusal(at, refusals::LOGIN, peer, actor, action, "rate-limited")?;
            return Err(OfficerError::TooManyAttempts);
        }
        let (result, reason) = match self.check_credentials(master, who, needed, at) {
            Ok(officer) => return Ok(officer),
            Err(Refused(e @ OfficerError::Forbidden { .. }, _)) => {
                self.audit(
                    at,
                    who.name,
                    refusals::LOGIN,
                    serde_json::json!({"for": action, "reason": "role", "peer": peer}),
                )?;
                return Err(e);
            }
            Err(Refused(e, reason)) => (Err(e), reason),
        };
        let actor = if known(self) { who.name } else { "(unknown)" };
        self.count_refusal(at, refusals::LOGIN, peer, actor, action, reason)?;
        result
    }

    /// Counts a wrong password or code against a known officer, and locks the officer
    /// out at [`LOCK_AFTER`] in a row (audited). Not while locked: a lock is not
    /// lengthened by more attempts. One IMMEDIATE transaction, so that attempts at the
    /// same time (the API's two logins at once, processes of the command line) each
    /// count.
    fn count_failure(&mut self, name: &str, at: Micros) -> Result<(), OfficerError> {
        let err = sql_err(&self.path);
        let mut conn = self.db();
        let mut tx = conn.begin().map_err(err)?;
        let failed = tx
            .query_opt(
                "UPDATE officer SET failed_logins = failed_logins + 1
                 WHERE name = ?1 AND locked_until <= ?2 RETURNING failed_logins",
                &[&name, &at],
            )
            .and_then(|r| r.map(|r| r.int(0)).transpose())
            .map_err(err)?;
        if let Some(failed) = failed.filter(|n| *n >= LOCK_AFTER) {
            let until = at + LOCK_FOR_MICROS;
            tx.execute(
                "UPDATE officer SET failed_logins = 0, locked_until = ?1 WHERE name = ?2",
                &[&until, &name],
            )
            .map_err(err)?;
            Ledger::append(
                &mut tx,
                at,
                name,
                "officer.locked",
                &serde_json::json!({"officer": name, "until": crate::export::rfc3339(until), "failed_logins": failed}),
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(())
    }

    /// Lifts an officer's lockout before its time (an admin's act, audited).
    pub fn unlock_officer(
        &mut self,
        name: &str,
        at: Micros,
        actor: &str,
    ) -> Result<(), OfficerError> {
        self.change_officer(
            name,
            "locked_until = 0, failed_logins = 0",
            "officer.unlock",
            at,
            actor,
            "",
        )
    }

    /// The officer, or why not, with the reason the audit log gives.
    fn check_credentials(
        &mut self,
        master: &MasterKey,
        who: Credentials<'_>,
        needed: Role,
        at: Micros,
    ) -> Result<Officer, Refused> {
        let path = self.path.clone();
        let err = |e| Refused(sql_err(&path)(e).into(), "error");
        let row = self
            .db()
            .query_opt(
                "SELECT role, password, totp, totp_last_step, enabled, created_at, created_by, locked_until FROM officer WHERE name = ?1",
                &[&who.name],
            )
            .and_then(|r| {
                r.map(|r| {
                    Ok(Stored {
                        role: r.text(0)?,
                        hash: r.text(1)?,
                        sealed_totp: r.blob(2)?,
                        last_step: r.int(3)?,
                        enabled: r.int(4)? != 0,
                        created_at: r.int(5)?,
                        created_by: r.text(6)?,
                        locked_until: r.int(7)?,
                    })
                })
                .transpose()
            })
            .map_err(err)?;
        let Some(stored) = row else {
            // Spend the same time as for a wrong password.
            let _ = password_matches(who.password, UNKNOWN_OFFICER_HASH);
            return Err(Refused(OfficerError::BadCredentials, "credentials"));
        };
        let count = |l: &mut Ledger, e, reason| match l.count_failure(who.name, at) {
            Ok(()) => Refused(e, reason),
            Err(e) => Refused(e, "error"),
        };
        if !password_matches(who.password, &stored.hash) {
            return Err(count(self, OfficerError::BadCredentials, "credentials"));
        }
        let totp_step = |code: &str| -> Result<Option<i64>, Refused> {
            let seed = master
                .open_secret(&totp_context(who.name), &stored.sealed_totp)
                .map_err(|e| Refused(e.into(), "error"))?;
            Ok(totp::matching_step(&seed, code, at.div_euclid(1_000_000))
                .filter(|s| *s > stored.last_step))
        };
        // Spends the code's step, unless a login at the same time spent it first: then
        // it is a replay.
        let use_step = |l: &mut Ledger, step: i64| {
            l.db().execute(
                "UPDATE officer SET totp_last_step = ?1, failed_logins = 0
                 WHERE name = ?2 AND totp_last_step < ?1",
                &[&step, &who.name],
            )
        };
        if stored.locked_until > at {
            // Only a right password and a right code learn of the lock; anything less
            // reads as wrong credentials, so that a lock is no oracle for passwords.
            if let Some(code) = who.totp
                && let Some(step) = totp_step(code)?
            {
                if use_step(self, step).map_err(err)? == 0 {
                    return Err(Refused(OfficerError::BadCredentials, "locked"));
                }
                return Err(Refused(
                    OfficerError::Locked {
                        until: crate::export::rfc3339(stored.locked_until),
                    },
                    "locked",
                ));
            }
            return Err(Refused(OfficerError::BadCredentials, "locked"));
        }
        if !stored.enabled {
            return Err(Refused(OfficerError::Disabled, "disabled"));
        }
        let role = Role::parse(&stored.role).unwrap_or(Role::Officer);
        // Only a login with both factors clears the count of failures: a password alone
        // (opening a case) must not reset the guesses at a code.
        if let Some(code) = who.totp {
            let Some(step) = totp_step(code)? else {
                return Err(count(self, OfficerError::BadTotp, "totp"));
            };
            if use_step(self, step).map_err(err)? == 0 {
                return Err(count(self, OfficerError::BadTotp, "totp"));
            }
        }
        if !role.allows(needed) {
            return Err(Refused(
                OfficerError::Forbidden {
                    needed: needed.as_str(),
                },
                "role",
            ));
        }
        Ok(Officer {
            name: who.name.to_owned(),
            role,
            enabled: true,
            created_at: stored.created_at,
            created_by: stored.created_by,
        })
    }
}

/// An argon2id hash of nothing anyone knows, verified against when the officer does
/// not exist so that the reply takes as long as for a wrong password.
const UNKNOWN_OFFICER_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Ledger, MasterKey) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        crate::store::keys::create_master_key(&key).unwrap();
        let master = MasterKey::load(&key).unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
        (dir, ledger, master)
    }

    fn seed_of(uri: &str) -> Vec<u8> {
        totp::secret_of(uri).unwrap()
    }

    pub(crate) fn code_at(seed: &[u8], at: Micros) -> String {
        format!(
            "{:06}",
            totp::hotp(seed, totp::step_at(at / 1_000_000) as u64, 6)
        )
    }

    #[test]
    fn the_last_enabled_admin_is_not_disabled() {
        let (_dir, mut l, master) = setup();
        for (name, role) in [
            ("ada", Role::Admin),
            ("bob", Role::Admin),
            ("cy", Role::Officer),
        ] {
            l.add_officer(&master, name, role, "correct horse battery", 1, "root")
                .unwrap();
        }
        l.disable_officer("cy", 2, "ada").unwrap();
        l.disable_officer("bob", 3, "ada").unwrap();
        assert!(matches!(
            l.disable_officer("ada", 4, "ada"),
            Err(OfficerError::LastAdmin(n)) if n == "ada"
        ));
        assert!(
            l.officers()
                .unwrap()
                .iter()
                .any(|o| o.name == "ada" && o.enabled)
        );
        // Disabling one already disabled stays allowed; an unknown name stays unknown.
        l.disable_officer("bob", 5, "ada").unwrap();
        assert!(matches!(
            l.disable_officer("zed", 6, "ada"),
            Err(OfficerError::Unknown(_))
        ));
    }

    #[test]
    fn officers_authenticate_with_password_and_a_fresh_totp_code() {
        let (_dir, mut l, master) = setup();
        let t = 1_800_000_000_000_000;
        let e = l
            .add_officer(
                &master,
                "anna",
                Role::Approver,
                "correct horse battery",
                t,
                "root",
            )
            .unwrap();
        assert!(
            e.otpauth_uri
                .starts_with("otpauth://totp/relaylog:anna?secret=")
        );
        let seed = seed_of(&e.otpauth_uri);
        let code = code_at(&seed, t);
        let ok = l.authenticate(
            &master,
            Credentials {
                name: "anna",
                password: "correct horse battery",
                totp: Some(&code),
            },
            Role::Approver,
            t,
            "case.approve",
            "local:test",
        );
        assert_eq!(ok.unwrap().role, Role::Approver);
        // The same code again: refused (replay), and audited.
        let again = l.authenticate(
            &master,
            Credentials {
                name: "anna",
                password: "correct horse battery",
                totp: Some(&code),
            },
            Role::Approver,
            t,
            "case.approve",
            "local:test",
        );
        assert!(matches!(again, Err(OfficerError::BadTotp)));
        let wrong_pw = l.authenticate(
            &master,
            Credentials {
                name: "anna",
                password: "wrong horse battery",
                totp: None,
            },
            Role::Officer,
            t,
            "case.open",
            "local:test",
        );
        assert!(matches!(wrong_pw, Err(OfficerError::BadCredentials)));
        let nobody = l.authenticate(
            &master,
            Credentials {
                name: "bob",
                password: "whatever password",
                totp: None,
            },
            Role::Officer,
            t,
            "case.open",
            "local:test",
        );
        assert!(matches!(nobody, Err(OfficerError::BadCredentials)));
        let later = t + 60_000_000;
        let code = code_at(&seed, later);
        let role = l.authenticate(
            &master,
            Credentials {
                name: "anna",
                password: "correct horse battery",
                totp: Some(&code),
            },
            Role::Admin,
            later,
            "officer.add",
            "local:test",
        );
        assert!(matches!(
            role,
            Err(OfficerError::Forbidden { needed: "admin" })
        ));
        l.disable_officer("anna", later, "root").unwrap();
        let disabled = l.authenticate(
            &master,
            Credentials {
                name: "anna",
                password: "correct horse battery",
                totp: None,
            },
            Role::Officer,
            later,
            "case.open",
            "local:test",
        );
        assert!(matches!(disabled, Err(OfficerError::Disabled)));
        // The refusals of a minute are one entry, written when the minute is over (here
        // at the next audit entry) or when the log is read; a role too low at once.
        l.flush_refusals(later, true).unwrap();
        let entries = l.entries().unwrap();
        let actions: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.actor.as_str(), e.action.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("root", "officer.add"),
                ("(several)", "auth.failure"),
                ("anna", "auth.failure"),
                ("root", "officer.disable"),
                ("anna", "auth.failure"),
            ]
        );
        let first: serde_json::Value = serde_json::from_str(&entries[1].details).unwrap();
        assert_eq!(first["count"], 3);
        assert_eq!(first["peer"], "local:test");
        assert_eq!(
            first["reasons"],
            serde_json::json!({"totp": 1, "credentials": 2})
        );
        assert_eq!(
            first["actors"],
            serde_json::json!({"anna": 2, "(unknown)": 1})
        );
        assert!(
            entries[2].details.contains("\"role\""),
            "{}",
            entries[2].details
        );
        assert!(
            entries[4].details.contains("\"disabled\""),
            "{}",
            entries[4].details
        );
        assert_eq!(l.verify_audit().unwrap(), 5);
        // Nothing secret in the ledger file in the clear.
        let bytes = std::fs::read(_dir.path().join("ledger.sqlite")).unwrap();
        assert!(!crate::test_util::contains(
            &bytes,
            b"correct horse battery"
        ));
    }

    #[test]
    fn bad_names_weak_passwords_and_duplicates_are_refused() {
        let (_dir, mut l, master) = setup();
        assert!(matches!(
            l.add_officer(
                &master,
                "Anna Smith",
                Role::Officer,
                "long enough password",
                0,
                "root"
            ),
            Err(OfficerError::BadName)
        ));
        assert!(matches!(
            l.add_officer(&master, "anna", Role::Officer, "short", 0, "root"),
            Err(OfficerError::WeakPassword)
        ));
        l.add_officer(
            &master,
            "anna",
            Role::Officer,
            "long enough password",
            0,
            "root",
        )
        .unwrap();
        assert!(matches!(
            l.add_officer(
                &master,
                "anna",
                Role::Admin,
                "long enough password",
                0,
                "root"
            ),
            Err(OfficerError::Exists(_))
        ));
        assert!(matches!(
            l.disable_officer("nobody", 0, "root"),
            Err(OfficerError::Unknown(_))
        ));
        assert_eq!(l.officers().unwrap().len(), 1);
    }

    fn login(
        l: &mut Ledger,
        master: &MasterKey,
        password: &str,
        totp: Option<&str>,
        at: Micros,
        peer: &str,
    ) -> Result<Officer, OfficerError> {
        l.authenticate(
            master,
            Credentials {
                name: "anna",
                password,
                totp,
            },
            Role::Officer,
            at,
            "case.list",
            peer,
        )
    }

    /// [`LOCK_AFTER`] wrong passwords or codes in a row lock an officer out (audited
    /// once) for [`LOCK_FOR_MICROS`]. Meanwhile anything short of the right password
    /// and a right code reads as wrong credentials (no oracle for guessing either), and
    /// does not lengthen the lock; an admin may lift it. Only a login with both factors
    /// resets the count: a password alone (opening a case) does not.
    #[test]
    fn repeated_failures_lock_an_officer_out_for_a_while() {
        let (_dir, mut l, master) = setup();
        let t = 1_800_000_000_000_000;
        let pw = "correct horse battery";
        let e = l
            .add_officer(&master, "anna", Role::Officer, pw, t, "root")
            .unwrap();
        let seed = seed_of(&e.otpauth_uri);
        // Each from a peer of its own: the per-peer limit is not what is tested here.
        let peer = |i: i64| format!("192.0.2.{i}");
        let locks = |l: &Ledger| {
            l.entries()
                .unwrap()
                .iter()
                .filter(|e| e.action == "officer.locked")
                .count()
        };
        // Four failures, a login with both factors: the count starts again.
        for i in 0..LOCK_AFTER - 1 {
            assert!(login(&mut l, &master, "wrong", None, t + i, &peer(i)).is_err());
        }
        let code = code_at(&seed, t + 10);
        login(&mut l, &master, pw, Some(&code), t + 10, &peer(10)).unwrap();
        // Four more, a password alone: the count goes on, and the fifth locks.
        for i in 0..LOCK_AFTER - 1 {
            assert!(login(&mut l, &master, "wrong", None, t + 20 + i, &peer(i)).is_err());
        }
        login(&mut l, &master, pw, None, t + 29, &peer(29)).unwrap();
        assert_eq!(locks(&l), 0);
        let at = t + 30;
        assert!(matches!(
            login(&mut l, &master, pw, Some("000000"), at, &peer(30)),
            Err(OfficerError::BadTotp)
        ));
        assert_eq!(locks(&l), 1);
        // Locked: wrong password, right password without a code, right password with a
        // wrong code all read as wrong credentials; only both right say "locked".
        for (i, (password, totp)) in [("wrong", None), (pw, None), (pw, Some("000000"))]
            .into_iter()
            .cycle()
            .take(3 * LOCK_AFTER as usize)
            .enumerate()
        {
            assert!(matches!(
                login(
                    &mut l,
                    &master,
                    password,
                    totp,
                    at + 2 + i as i64,
                    &peer(40 + i as i64)
                ),
                Err(OfficerError::BadCredentials)
            ));
        }
        let code = code_at(&seed, at + 60_000_000);
        assert!(matches!(
            login(&mut l, &master, pw, Some(&code), at + 60_000_000, &peer(31)),
            Err(OfficerError::Locked { .. })
        ));
        assert_eq!(locks(&l), 1, "more attempts do not lock again");
        // Still locked just before the end; not after.
        let end = at + LOCK_FOR_MICROS;
        let code = code_at(&seed, end - 1);
        assert!(matches!(
            login(&mut l, &master, pw, Some(&code), end - 1, &peer(60)),
            Err(OfficerError::Locked { .. })
        ));
        let code = code_at(&seed, end + 60_000_000);
        login(
            &mut l,
            &master,
            pw,
            Some(&code),
            end + 60_000_000,
            &peer(61),
        )
        .unwrap();
        // Locked again, and lifted by an admin (audited).
        let later = end + 120_000_000;
        for i in 0..LOCK_AFTER {
            assert!(login(&mut l, &master, "wrong", None, later + i, &peer(70 + i)).is_err());
        }
        assert_eq!(locks(&l), 2);
        l.unlock_officer("anna", later + 10, "root").unwrap();
        let code = code_at(&seed, later + 60_000_000);
        login(
            &mut l,
            &master,
            pw,
            Some(&code),
            later + 60_000_000,
            &peer(80),
        )
        .unwrap();
        assert!(
            l.entries()
                .unwrap()
                .iter()
                .any(|e| e.action == "officer.unlock")
        );
        assert!(matches!(
            l.unlock_officer("nobody", later, "root"),
            Err(OfficerError::Unknown(_))
        ));
    }

    /// A peer past [`refusals::LOGINS_PER_MINUTE`] refused logins in a minute is turned
    /// away unchecked, right password included, until the minute is over; other peers
    /// are not.
    #[test]
    fn a_peer_that_keeps_failing_is_turned_away_for_the_minute() {
        let (_dir, mut l, master) = setup();
        // The start of a minute (1.8e15 µs is a whole number of minutes).
        let t = 1_800_000_000_000_000;
        let pw = "correct horse battery";
        l.add_officer(&master, "anna", Role::Officer, pw, t, "root")
            .unwrap();
        l.add_officer(&master, "bert", Role::Officer, pw, t, "root")
            .unwrap();
        for i in 0..refusals::LOGINS_PER_MINUTE {
            // Unknown names: no officer is locked out on the way.
            let r = l.authenticate(
                &master,
                Credentials {
                    name: &format!("guess{i}"),
                    password: "guess",
                    totp: None,
                },
                Role::Officer,
                t + i,
                "session.login",
                "198.51.100.9",
            );
            assert!(matches!(r, Err(OfficerError::BadCredentials)));
        }
        assert!(matches!(
            login(&mut l, &master, pw, None, t + 100, "198.51.100.9"),
            Err(OfficerError::TooManyAttempts)
        ));
        login(&mut l, &master, pw, None, t + 101, "198.51.100.10").unwrap();
        login(&mut l, &master, pw, None, t + 60_000_000, "198.51.100.9").unwrap();
        l.flush_refusals(t + 60_000_000, true).unwrap();
        let coalesced: Vec<serde_json::Value> = l
            .entries()
            .unwrap()
            .iter()
            .filter(|e| e.action == "auth.failure")
            .map(|e| serde_json::from_str(&e.details).unwrap())
            .collect();
        assert_eq!(coalesced.len(), 1, "{coalesced:?}");
        assert_eq!(coalesced[0]["count"], refusals::LOGINS_PER_MINUTE + 1);
        assert_eq!(coalesced[0]["reasons"]["rate-limited"], 1);
    }
}
