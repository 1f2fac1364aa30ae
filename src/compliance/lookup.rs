//! An ad hoc lookup (`relaylog query`, `POST /api/v1/queries`): one identifier over a
//! window, audited before anything is shown. The identifier goes through the same
//! parser as a case's, so both accept and refuse the same input.

use super::cases::{CaseError, Criterion};
use crate::clock::Micros;
use crate::config::StoreConfig;
use crate::ledger::{Ledger, LedgerError};
use crate::store::keys::{KeyError, Keyring, MasterKey};
use crate::store::query::{self, Criteria, Found, QueryError, QueryStats};

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("the window is empty: until must be after since")]
    EmptyWindow,
    #[error(transparent)]
    Case(#[from] CaseError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Purpose(#[from] super::purpose::WrongPurpose),
}

pub struct Lookup {
    /// The first `limit` matches.
    pub found: Vec<Found>,
    pub stats: QueryStats,
}

pub struct Window {
    pub since: Micros,
    pub until: Micros,
    /// Matches held (and shown); the rest are counted only.
    pub limit: usize,
}

/// Runs the lookup, then appends who asked, the criterion as a keyed tag, the window
/// and the count to the audit log; only then are the matches returned.
#[allow(clippy::too_many_arguments)]
pub fn audited(
    store: &StoreConfig,
    keyring: &Keyring,
    master: &MasterKey,
    ledger: &mut Ledger,
    actor: &str,
    purpose: super::purpose::Purpose,
    criterion: &Criterion,
    window: &Window,
    now: Micros,
) -> Result<Lookup, LookupError> {
    purpose.for_query()?;
    if window.until <= window.since {
        return Err(LookupError::EmptyWindow);
    }
    let criteria = Criteria {
        kind: criterion.kind.index(),
        value: criterion.value.clone(),
        since: window.since,
        until: window.until,
        filters: true,
    };
    let mut found = Vec::new();
    let stats = query::run(store, keyring, &criteria, |f| {
        if found.len() < window.limit {
            found.push(f);
        }
    })?;
    let kind = criterion.kind.as_str();
    ledger.audit(
        now,
        actor,
        "query",
        serde_json::json!({
            "criteria": [{"kind": kind, "tag": master.audit_tag(kind, &criterion.value)}],
            "since_us": window.since,
            "until_us": window.until,
            "records": stats.matches,
            "purpose": purpose,
        }),
    )?;
    Ok(Lookup { found, stats })
}
