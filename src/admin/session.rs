//! Officers' API sessions: a random bearer token handed out at login (password and
//! TOTP), valid for a fixed time from then, not extended by use. Only the token's
//! SHA-256 is held, in memory: a restart logs everyone out, and a memory dump does not
//! hand out live tokens.

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
}

impl SessionError {
    /// The reason as the audit log records it.
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Missing => "no token",
            SessionError::Unknown => "unknown token",
            SessionError::Expired => "expired token",
            SessionError::Full => "sessions full",
        }
    }
}

type TokenHash = [u8; 32];

pub struct Sessions {
    ttl_us: Micros,
    by_hash: Mutex<HashMap<TokenHash, Session>>,
    rng: SystemRandom,
}

fn hash(token: &str) -> TokenHash {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    out
}

impl Sessions {
    pub fn new(ttl: std::time::Duration) -> Sessions {
        Sessions {
            ttl_us: Micros::try_from(ttl.as_micros()).unwrap_or(Micros::MAX),
            by_hash: Mutex::default(),
            rng: SystemRandom::new(),
        }
    }

    /// Opens a session for an officer who has just authenticated; returns the token
    /// (256 random bits, base64url) and the session.
    pub fn open(&self, officer: Officer, now: Micros) -> Result<(String, Session), SessionError> {
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes).map_err(|_| SessionError::Full)?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let session = Session {
            officer,
            expires_at: now.saturating_add(self.ttl_us),
        };
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires_at > now);
            if map.len() >= MAX_SESSIONS {
                return Err(SessionError::Full);
            }
        }
        map.insert(hash(&token), session.clone());
        Ok((token, session))
    }

    /// The session a token stands for, if it is live. An expired session is removed
    /// on the way, and said to be expired (not unknown) so the officer knows to log in.
    pub fn get(&self, token: &str, now: Micros) -> Result<Session, SessionError> {
        let key = hash(token);
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
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
    pub fn close(&self, token: &str) -> bool {
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&hash(token)).is_some()
    }

    /// Ends every session of an officer (disabled through the API).
    pub fn close_officer(&self, name: &str) {
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.officer.name != name);
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
        let (token, session) = s.open(officer("anna"), 1_000_000).unwrap();
        assert_eq!(session.expires_at, 61_000_000);
        assert_eq!(token.len(), 43, "256 bits in base64url");
        assert_eq!(s.get(&token, 60_999_999).unwrap().officer.name, "anna");
        assert_eq!(
            s.get(&token, 61_000_000).unwrap_err(),
            SessionError::Expired
        );
        // Gone once seen expired.
        assert_eq!(
            s.get(&token, 61_000_000).unwrap_err(),
            SessionError::Unknown
        );
        assert_eq!(s.get("forged", 0).unwrap_err(), SessionError::Unknown);
    }

    #[test]
    fn logout_and_disabling_end_sessions() {
        let s = Sessions::new(std::time::Duration::from_secs(60));
        let (a, _) = s.open(officer("anna"), 0).unwrap();
        let (b, _) = s.open(officer("bob"), 0).unwrap();
        assert_ne!(a, b);
        assert!(s.close(&a));
        assert!(!s.close(&a));
        assert_eq!(s.get(&a, 1).unwrap_err(), SessionError::Unknown);
        s.close_officer("bob");
        assert_eq!(s.get(&b, 1).unwrap_err(), SessionError::Unknown);
    }

    #[test]
    fn sessions_are_capped_and_expired_ones_make_room() {
        let s = Sessions::new(std::time::Duration::from_secs(60));
        for _ in 0..MAX_SESSIONS {
            s.open(officer("anna"), 0).unwrap();
        }
        assert_eq!(s.open(officer("anna"), 1).unwrap_err(), SessionError::Full);
        // All of them expired by now: room again.
        assert!(s.open(officer("anna"), 61_000_000).is_ok());
    }
}
