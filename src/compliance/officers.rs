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
use rusqlite::{OptionalExtension, params};

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

    fn parse(s: &str) -> Option<Role> {
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
}

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
    #[error("TOTP code missing, wrong, or already used")]
    BadTotp,
    #[error("this needs the {needed} role")]
    Forbidden { needed: &'static str },
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
        let tx = self.conn.transaction().map_err(err)?;
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM officer WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        if exists.is_some() {
            return Err(OfficerError::Exists(name.to_owned()));
        }
        tx.execute(
            "INSERT INTO officer (name, role, password, totp, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, role.as_str(), hash, sealed, at, actor],
        )
        .map_err(err)?;
        Ledger::append(
            &tx,
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
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, role, enabled, created_at, created_by FROM officer ORDER BY name",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                let role: String = r.get(1)?;
                Ok(Officer {
                    name: r.get(0)?,
                    role: Role::parse(&role).unwrap_or(Role::Officer),
                    enabled: r.get::<_, i64>(2)? != 0,
                    created_at: r.get(3)?,
                    created_by: r.get(4)?,
                })
            })
            .map_err(err)?;
        Ok(rows.collect::<Result<Vec<_>, _>>().map_err(err)?)
    }

    pub fn disable_officer(
        &mut self,
        name: &str,
        at: Micros,
        actor: &str,
    ) -> Result<(), OfficerError> {
        let err = sql_err(&self.path);
        let tx = self.conn.transaction().map_err(err)?;
        let n = tx
            .execute("UPDATE officer SET enabled = 0 WHERE name = ?1", [name])
            .map_err(err)?;
        if n == 0 {
            return Err(OfficerError::Unknown(name.to_owned()));
        }
        Ledger::append(
            &tx,
            at,
            actor,
            "officer.disable",
            &serde_json::json!({"officer": name}),
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(())
    }

    /// Checks an officer's password, and the TOTP code when `totp` is given (approving
    /// and exporting need one), and the role. A failure is audited before it is
    /// returned; a success is not (the action it authorises is).
    pub fn authenticate(
        &mut self,
        master: &MasterKey,
        who: Credentials<'_>,
        needed: Role,
        at: Micros,
        action: &str,
    ) -> Result<Officer, OfficerError> {
        let result = self.check_credentials(master, who, needed, at);
        if let Err(e) = &result {
            let reason = match e {
                OfficerError::BadCredentials => "credentials",
                OfficerError::Disabled => "disabled",
                OfficerError::BadTotp => "totp",
                OfficerError::Forbidden { .. } => "role",
                _ => "error",
            };
            // The name as typed may be a password pasted into the wrong field: only a
            // name that exists goes into the log.
            let known = self
                .officers()
                .map(|o| o.iter().any(|o| o.name == who.name))
                .unwrap_or(false);
            self.audit(
                at,
                if known { who.name } else { "(unknown)" },
                "auth.failure",
                serde_json::json!({"for": action, "reason": reason}),
            )?;
        }
        result
    }

    fn check_credentials(
        &mut self,
        master: &MasterKey,
        who: Credentials<'_>,
        needed: Role,
        at: Micros,
    ) -> Result<Officer, OfficerError> {
        let err = sql_err(&self.path);
        let row: Option<Stored> = self
            .conn
            .query_row(
                "SELECT role, password, totp, totp_last_step, enabled, created_at, created_by FROM officer WHERE name = ?1",
                [who.name],
                |r| {
                    Ok(Stored {
                        role: r.get(0)?,
                        hash: r.get(1)?,
                        sealed_totp: r.get(2)?,
                        last_step: r.get(3)?,
                        enabled: r.get::<_, i64>(4)? != 0,
                        created_at: r.get(5)?,
                        created_by: r.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(err)?;
        let Some(stored) = row else {
            // Spend the same time as for a wrong password.
            let _ = password_matches(who.password, UNKNOWN_OFFICER_HASH);
            return Err(OfficerError::BadCredentials);
        };
        if !password_matches(who.password, &stored.hash) {
            return Err(OfficerError::BadCredentials);
        }
        if !stored.enabled {
            return Err(OfficerError::Disabled);
        }
        let role = Role::parse(&stored.role).unwrap_or(Role::Officer);
        if let Some(code) = who.totp {
            let seed = master.open_secret(&totp_context(who.name), &stored.sealed_totp)?;
            let step = totp::matching_step(&seed, code, at.div_euclid(1_000_000))
                .filter(|s| *s > stored.last_step)
                .ok_or(OfficerError::BadTotp)?;
            self.conn
                .execute(
                    "UPDATE officer SET totp_last_step = ?1 WHERE name = ?2",
                    params![step, who.name],
                )
                .map_err(err)?;
        }
        if !role.allows(needed) {
            return Err(OfficerError::Forbidden {
                needed: needed.as_str(),
            });
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
        );
        assert!(matches!(disabled, Err(OfficerError::Disabled)));
        let actions: Vec<(String, String)> = l
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| (e.actor, e.action))
            .collect();
        assert_eq!(
            actions,
            [
                ("root", "officer.add"),
                ("anna", "auth.failure"),
                ("anna", "auth.failure"),
                ("(unknown)", "auth.failure"),
                ("anna", "auth.failure"),
                ("root", "officer.disable"),
                ("anna", "auth.failure"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert_eq!(l.verify_audit().unwrap(), 7);
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
}
