//! Officers' API sessions: a random bearer token handed out at login (password and
//! TOTP), valid for a fixed time from then, not extended by use. Only the token's
//! SHA-256 is held: in memory with the SQLite store (a restart logs everyone out), in
//! the database with PostgreSQL, so that an officer's session works on every node
//! behind the load balancer. A memory dump or a database dump hands out no live token.
//!
//! With PostgreSQL every call does blocking I/O: call them off the runtime's threads.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

use crate::clock::Micros;
use crate::compliance::officers::Officer;

/// Sessions held at once; logins beyond it are refused until some expire.
pub const MAX_SESSIONS: usize = 1024;

#[derive(Debug, Clone)]
pub struct Session {
    pub officer: Officer,
    pub expires_at: Micros,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("no session token: log in with POST /api/v1/session")]
    Missing,
    #[error("unknown session token: log in with POST /api/v1/session")]
    Unknown,
    #[error("session expired: log in again with POST /api/v1/session")]
    Expired,
    #[error("too many sessions open; try again when some have expired")]
    Full,
    #[error("sessions cannot be read: {0}")]
    Store(String),
}

impl SessionError {
    /// The reason as the audit log records it.
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Missing => "no token",
            SessionError::Unknown => "unknown token",
            SessionError::Expired => "expired token",
            SessionError::Full => "sessions full",
            SessionError::Store(_) => "sessions unavailable",
        }
    }
}

type TokenHash = [u8; 32];

/// Which door a session was opened at. A token works only at its own: a console
/// session (a cookie) is no bearer token for the API, where the console's second
/// factor for sensitive acts would not be asked. The scope goes into the token's
/// hash, so sessions of both kinds share one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Api,
    Console,
}

pub struct Sessions {
    ttl_us: Micros,
    held: Held,
    rng: SystemRandom,
}

/// Where sessions are kept.
enum Held {
    Memory(Mutex<HashMap<TokenHash, Session>>),
    /// `relaylog.session`, shared by every node.
    Postgres(std::sync::Arc<crate::pg::Pool>),
}

fn store_err(e: impl std::fmt::Display) -> SessionError {
    SessionError::Store(e.to_string())
}

fn hash(scope: Scope, token: &str) -> TokenHash {
    let d = match scope {
        Scope::Api => digest::digest(&digest::SHA256, token.as_bytes()),
        Scope::Console => {
            let mut c = digest::Context::new(&digest::SHA256);
            c.update(b"relaylog console session v1|");
            c.update(token.as_bytes());
            c.finish()
        }
    };
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Sessions {
    /// Sessions in this process's memory.
    pub fn new(ttl: std::time::Duration) -> Sessions {
        Sessions::with(ttl, Held::Memory(Mutex::default()))
    }

    /// Sessions in the PostgreSQL store's database.
    pub fn in_database(
        ttl: std::time::Duration,
        pool: std::sync::Arc<crate::pg::Pool>,
    ) -> Sessions {
        Sessions::with(ttl, Held::Postgres(pool))
    }

    fn with(ttl: std::time::Duration, held: Held) -> Sessions {
        Sessions {
            ttl_us: Micros::try_from(ttl.as_micros()).unwrap_or(Micros::MAX),
            held,
            rng: SystemRandom::new(),
        }
    }

    /// Opens a session for an officer who has just authenticated; returns the token
    /// (256 random bits, base64url) and the session.
    pub fn open(
        &self,
        scope: Scope,
        officer: Officer,
        now: Micros,
    ) -> Result<(String, Session), SessionError> {
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes).map_err(|_| SessionError::Full)?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let session = Session {
            officer,
            expires_at: now.saturating_add(self.ttl_us),
        };
        let map = match &self.held {
            Held::Memory(map) => map,
            Held::Postgres(pool) => {
                let mut db = pool.get().map_err(store_err)?;
                let mut tx = db.transaction().map_err(store_err)?;
                tx.execute(
                    "DELETE FROM relaylog.session WHERE expires_at <= $1",
                    &[&now],
                )
                .map_err(store_err)?;
                let open: i64 = tx
                    .query_one("SELECT count(*) FROM relaylog.session", &[])
                    .map_err(store_err)?
                    .get(0);
                if open >= MAX_SESSIONS as i64 {
                    return Err(SessionError::Full);
                }
                let o = &session.officer;
                tx.execute(
                    "INSERT INTO relaylog.session (token_hash, officer, role, created_at, created_by, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&hash(scope, &token).as_slice(), &o.name, &o.role.as_str(), &o.created_at, &o.created_by, &session.expires_at],
                )
                .map_err(store_err)?;
                tx.commit().map_err(store_err)?;
                return Ok((token, session));
            }
        };
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires_at > now);
            if map.len() >= MAX_SESSIONS {
                return Err(SessionError::Full);
            }
        }
        map.insert(hash(scope, &token), session.clone());
        Ok((token, session))
    }

    /// The session a token stands for, if it is live. An expired session is removed
    /// on the way, and said to be expired (not unknown) so the officer knows to log in.
    pub fn get(&self, scope: Scope, token: &str, now: Micros) -> Result<Session, SessionError> {
        let key = hash(scope, token);
        let map = match &self.held {
            Held::Memory(map) => map,
            Held::Postgres(pool) => {
                let mut db = pool.get().map_err(store_err)?;
                let row = db
                    .query_opt(
                        "SELECT officer, role, created_at, created_by, expires_at FROM relaylog.session \
                         WHERE token_hash = $1",
                        &[&key.as_slice()],
                    )
                    .map_err(store_err)?
                    .ok_or(SessionError::Unknown)?;
                let expires_at: i64 = row.get(4);
                if expires_at <= now {
                    db.execute(
                        "DELETE FROM relaylog.session WHERE token_hash = $1",
                        &[&key.as_slice()],
                    )
                    .map_err(store_err)?;
                    return Err(SessionError::Expired);
                }
                let role: &str = row.get(1);
                return Ok(Session {
                    officer: Officer {
                        name: row.get(0),
                        role: crate::compliance::officers::Role::parse(role)
                            .unwrap_or(crate::compliance::officers::Role::Officer),
                        enabled: true,
                        created_at: row.get(2),
                        created_by: row.get(3),
                    },
                    expires_at,
                });
            }
        };
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            None => Err(SessionError::Unknown),
            Some(s) if s.expires_at <= now => {
                map.remove(&key);
                Err(SessionError::Expired)
            }
            Some(s) => Ok(s.clone()),
        }
    }

    /// Ends a session (logout). Whether it existed is returned.
    pub fn close(&self, scope: Scope, token: &str) -> Result<bool, SessionError> {
        let key = hash(scope, token);
        match &self.held {
            Held::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                Ok(map.remove(&key).is_some())
            }
            Held::Postgres(pool) => Ok(pool
                .get()
                .map_err(store_err)?
                .execute(
                    "DELETE FROM relaylog.session WHERE token_hash = $1",
                    &[&key.as_slice()],
                )
                .map_err(store_err)?
                > 0),
        }
    }

    /// Ends every session of an officer (disabled through the API).
    pub fn close_officer(&self, name: &str) -> Result<(), SessionError> {
        match &self.held {
            Held::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                map.retain(|_, s| s.officer.name != name);
            }
            Held::Postgres(pool) => {
                pool.get()
                    .map_err(store_err)?
                    .execute("DELETE FROM relaylog.session WHERE officer = $1", &[&name])
                    .map_err(store_err)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::officers::Role;

    fn officer(name: &str) -> Officer {
        Officer {
            name: name.into(),
            role: Role::Officer,
            enabled: true,
            created_at: 0,
            created_by: "test".into(),
        }
    }

    #[test]
    fn a_session_lasts_its_ttl_from_login_and_not_longer() {
        let s = Sessions::new(std::time::Duration::from_secs(60));
        let (token, session) = s.open(Scope::Api, officer("anna"), 1_000_000).unwrap();
        assert_eq!(session.expires_at, 61_000_000);
        assert_eq!(token.len(), 43, "256 bits in base64url");
        assert_eq!(
            s.get(Scope::Api, &token, 60_999_999).unwrap().officer.name,
            "anna"
        );
        assert_eq!(
            s.get(Scope::Api, &token, 61_000_000).unwrap_err(),
            SessionError::Expired
        );
        // Gone once seen expired.
        assert_eq!(
            s.get(Scope::Api, &token, 61_000_000).unwrap_err(),
            SessionError::Unknown
        );
        assert_eq!(
            s.get(Scope::Api, "forged", 0).unwrap_err(),
            SessionError::Unknown
        );
    }

    #[test]
    fn logout_and_disabling_end_sessions() {
        let s = Sessions::new(std::time::Duration::from_secs(60));
        let (a, _) = s.open(Scope::Api, officer("anna"), 0).unwrap();
        let (b, _) = s.open(Scope::Api, officer("bob"), 0).unwrap();
        assert_ne!(a, b);
        assert!(s.close(Scope::Api, &a).unwrap());
        assert!(!s.close(Scope::Api, &a).unwrap());
        assert_eq!(s.get(Scope::Api, &a, 1).unwrap_err(), SessionError::Unknown);
        s.close_officer("bob").unwrap();
        assert_eq!(s.get(Scope::Api, &b, 1).unwrap_err(), SessionError::Unknown);
    }

    #[test]
    fn a_token_works_only_at_the_door_it_was_opened_at() {
        let s = Sessions::new(std::time::Duration::from_secs(60));
        let (console, _) = s.open(Scope::Console, officer("anna"), 0).unwrap();
        let (api, _) = s.open(Scope::Api, officer("anna"), 0).unwrap();
        assert_eq!(
            s.get(Scope::Console, &console, 1).unwrap().officer.name,
            "anna"
        );
        assert_eq!(
            s.get(Scope::Api, &console, 1).unwrap_err(),
            SessionError::Unknown
        );
        assert_eq!(
            s.get(Scope::Console, &api, 1).unwrap_err(),
            SessionError::Unknown
        );
        assert!(!s.close(Scope::Api, &console).unwrap());
        assert!(s.close(Scope::Console, &console).unwrap());
    }

    #[test]
    fn sessions_are_capped_and_expired_ones_make_room() {
        let s = Sessions::new(std::time::Duration::from_secs(60));
        for _ in 0..MAX_SESSIONS {
            s.open(Scope::Api, officer("anna"), 0).unwrap();
        }
        assert_eq!(
            s.open(Scope::Api, officer("anna"), 1).unwrap_err(),
            SessionError::Full
        );
        // All of them expired by now: room again.
        assert!(s.open(Scope::Api, officer("anna"), 61_000_000).is_ok());
    }
}
