//! Expiry: a partition whose whole period lies before `now − retention` is removed as a
//! file, and its keys are shredded in the same step, so that every earlier copy of it
//! (backups included) becomes unreadable at that moment. A partition under a legal
//! hold is kept until every hold on it is released.
//!
//! Order, for crash safety: keys first (the step that makes the data unreadable), then
//! the file. Candidates are the union of partition files and key files, so a crash
//! between the two steps is finished by the next run.
//!
//! Each removal is proved by a signed deletion certificate in the ledger, written
//! between the two steps (see [`super::deletion`]); and before planning, a run names
//! in the audit log every partition not yet named, so that one later removed by any
//! other means than expiry shows as missing.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::OpenFlags;

use super::deletion::{self, Signer};
use super::keys::{KeyError, Keyring};
use super::partition::PartitionId;
use crate::config::StoreConfig;
use crate::ledger::{Hold, Ledger, LedgerError};

#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("the store's database: {0}")]
    Database(#[from] crate::pg::PgError),
    #[error("deletion certificates cannot be signed: {0}")]
    Signing(#[from] super::integrity::SigningKeyError),
    #[error(transparent)]
    Register(#[from] super::deletion::RegisterError),
    #[error(transparent)]
    Facts(#[from] super::deletion::FactsError),
    #[error(transparent)]
    Present(#[from] super::deletion::PresentError),
}

/// What a run will do (and, after [`execute`], did).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub cutoff: Option<DateTime<Utc>>,
    /// Partitions to remove, with their record counts.
    pub expire: Vec<(PartitionId, u64)>,
    /// Partitions past retention kept by holds, with the cases holding them.
    pub held: Vec<(PartitionId, Vec<String>)>,
}

/// Records a partition has held: its highest record id (ids are given from 1 and never
/// reused, so rows erased at contract end are counted too; O(log n), so planning costs
/// the same whatever the partition's size).
fn record_count(path: &Path) -> u64 {
    let Ok(conn) = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.query_row("SELECT coalesce(max(id), 0) FROM record", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n.max(0) as u64)
    .unwrap_or(0)
}

/// Is partition `p` past retention at `now` with no legal hold among `holds` keeping
/// it: what expiry removes, and what backups and restores leave out.
pub fn expired(cfg: &StoreConfig, holds: &[Hold], p: PartitionId, now: DateTime<Utc>) -> bool {
    past_retention(cfg.retention, p, now) && !holds.iter().any(|h| h.covers(p))
}

/// Is the whole of partition `p` older than `now − retention`?
pub fn past_retention(
    retention: crate::config::Retention,
    p: PartitionId,
    now: DateTime<Utc>,
) -> bool {
    p.end_micros() <= retention.cutoff(now).timestamp_micros()
}

pub fn plan(
    cfg: &StoreConfig,
    keyring: &Keyring,
    holds: &[Hold],
    now: DateTime<Utc>,
) -> Result<Plan, ExpiryError> {
    let cutoff = cfg.retention.cutoff(now);
    let pool = match &cfg.backend {
        crate::config::Backend::Sqlite => None,
        crate::config::Backend::Postgres(pg) => Some(crate::pg::Pool::shared(pg)?),
    };
    let mut candidates = deletion::present(cfg)?;
    candidates.extend(keyring.partitions()?);
    candidates.sort();
    candidates.dedup();
    let mut plan = Plan {
        cutoff: Some(cutoff),
        ..Plan::default()
    };
    for p in candidates
        .into_iter()
        .filter(|p| past_retention(cfg.retention, *p, now))
    {
        let cases = Hold::cases_holding(holds, p);
        if cases.is_empty() {
            let records = match &pool {
                None => record_count(&p.path_in(&cfg.path)),
                Some(pool) => super::pgstore::record_count(pool, p)?,
            };
            plan.expire.push((p, records));
        } else {
            plan.held.push((p, cases));
        }
    }
    Ok(plan)
}

fn remove_if_present(path: &Path) -> Result<(), ExpiryError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ExpiryError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes one partition: keys shredded, then the file, its WAL or journal and its
/// filter, with no certificate (tests of a crash between the two steps; expiry
/// files one between them: [`remove_certified`]).
#[cfg(test)]
pub(crate) fn remove(
    cfg: &StoreConfig,
    keyring: &Keyring,
    p: PartitionId,
) -> Result<(), ExpiryError> {
    keyring.shred(p)?;
    discard(cfg, p)
}

/// Removes one partition under a deletion certificate: what it held is read, its
/// keys shredded, the certificate filed, then its file or tables removed. Returns the
/// certificate's SHA-256, which the run's audit entry names.
fn remove_certified(
    cfg: &StoreConfig,
    keyring: &Keyring,
    ledger: &mut Ledger,
    signer: &Signer,
    cutoff: DateTime<Utc>,
    p: PartitionId,
    now: DateTime<Utc>,
) -> Result<String, ExpiryError> {
    let facts = deletion::facts(cfg, keyring, p)?;
    keyring.shred(p)?;
    let (document, signature) = signer.certify(p, facts, cfg.retention, cutoff, now);
    let name = p.to_string();
    let filed = if ledger.file_certificate(&name, &document, &signature, now.timestamp_micros())? {
        document
    } else {
        tracing::info!(partition = %p, "its deletion certificate was filed by an earlier run cut short: kept");
        ledger
            .certificate(&name)?
            .map(|c| c.document)
            .unwrap_or(document)
    };
    discard(cfg, p)?;
    Ok(super::keys::sha256_hex(filed.as_bytes()))
}

/// The second half of a removal, once the keys are gone: the partition's file (with
/// its WAL or journal and its filter), or its tables.
fn discard(cfg: &StoreConfig, p: PartitionId) -> Result<(), ExpiryError> {
    if let crate::config::Backend::Postgres(pg) = &cfg.backend {
        return Ok(super::pgstore::drop_partition(
            &crate::pg::Pool::shared(pg)?,
            p,
        )?);
    }
    let file = p.path_in(&cfg.path);
    for suffix in [
        "-wal",
        "-shm",
        "-journal",
        super::filter::SUFFIX,
        super::filter::TMP_SUFFIX,
    ] {
        let mut side = file.clone().into_os_string();
        side.push(suffix);
        remove_if_present(Path::new(&side))?;
    }
    remove_if_present(&file)?;
    // Once more: a compaction that checked the partition was there before it went may
    // have put its filter in place since (it looks again after, see `compact`).
    // Its keys and file are gone already: a failure here is said, not retried (the
    // filter holds no value, and the next compaction run removes a filter left alone).
    if let Err(e) = remove_if_present(&super::filter::path_of(&file)) {
        tracing::warn!(partition = %p, error = %e, "the expired partition's filter could not be removed");
    }
    if let Ok(dir) = std::fs::File::open(&cfg.path) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Carries out a plan, calling `progress` after each partition, and writes one audit
/// entry (partition ids and counts only).
pub fn execute(
    cfg: &StoreConfig,
    keyring: &Keyring,
    ledger: &mut Ledger,
    plan: &Plan,
    actor: &str,
    now: DateTime<Utc>,
    mut progress: impl FnMut(PartitionId),
) -> Result<(), ExpiryError> {
    // On PostgreSQL one node expires at a time (serve's runs, `relaylog expire`); the
    // others skip theirs.
    let _turn = match &cfg.backend {
        crate::config::Backend::Sqlite => None,
        crate::config::Backend::Postgres(pg) => {
            match super::pgstore::expiry_turn(&crate::pg::Pool::shared(pg)?)? {
                Some(turn) => Some(turn),
                None => {
                    tracing::info!("another node is running expiry; this run is skipped");
                    return Ok(());
                }
            }
        }
    };
    let mut done = Vec::new();
    let mut failure = None;
    if !plan.expire.is_empty() {
        // Loaded before anything is removed: a key that cannot sign stops the run.
        let signer = Signer::load(cfg)?;
        let cutoff = plan.cutoff.unwrap_or_else(|| cfg.retention.cutoff(now));
        for &(p, records) in &plan.expire {
            // A hold placed since the plan was made (on another node, or while an
            // earlier partition took its time) keeps the partition: read again before
            // each.
            if ledger.holds()?.iter().any(|h| h.covers(p)) {
                tracing::info!(partition = %p, "held since expiry was planned: kept");
                continue;
            }
            match remove_certified(cfg, keyring, ledger, &signer, cutoff, p, now) {
                Ok(certificate) => {
                    tracing::info!(partition = %p, records, "expired: partition removed, keys shredded, deletion certificate filed");
                    done.push(serde_json::json!({
                        "partition": p.to_string(),
                        "records": records,
                        "certificate_sha256": certificate,
                    }));
                    progress(p);
                }
                // One partition that cannot go now (busy, a file that will not be
                // removed) keeps no other past retention: the rest go on, and the
                // first error is returned at the end (the next run tries it again).
                Err(e) => {
                    tracing::error!(partition = %p, error = %e, "not expired this run");
                    failure.get_or_insert(e);
                }
            }
        }
    }
    for (p, cases) in &plan.held {
        tracing::info!(partition = %p, holds = cases.len(), "past retention but held: kept");
    }
    if !done.is_empty() || !plan.held.is_empty() {
        let held: Vec<_> = plan
            .held
            .iter()
            .map(|(p, cases)| serde_json::json!({"partition": p.to_string(), "cases": cases}))
            .collect();
        let cutoff = plan.cutoff.map(|c| c.to_rfc3339());
        ledger.audit(
            now.timestamp_micros(),
            actor,
            "expire",
            serde_json::json!({"cutoff": cutoff, "removed": done, "held": held}),
        )?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Plans and executes in one go: what `serve` runs at start-up and periodically.
pub fn run(
    cfg: &StoreConfig,
    keyring: &Keyring,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Plan, ExpiryError> {
    let mut ledger = Ledger::open_store(cfg)?;
    // Not a reason to keep anything past retention: said, and done at the next run.
    if let Err(e) = deletion::register(cfg, &mut ledger, actor, now.timestamp_micros()) {
        tracing::error!(error = %e, "partitions not named in the audit log's register; tried again at the next run");
    }
    let plan = plan(cfg, keyring, &ledger.holds()?, now)?;
    execute(cfg, keyring, &mut ledger, &plan, actor, now, |_| {})?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Granularity, Retention};
    use chrono::{NaiveDate, TimeZone};

    /// The first instant at which a day partition is past retention, searched for.
    fn first_expiry(r: Retention, y: i32, m: u32, d: u32) -> DateTime<Utc> {
        let p = PartitionId::of_date(Granularity::Day, NaiveDate::from_ymd_opt(y, m, d).unwrap());
        let mut t = Utc.timestamp_micros(p.end_micros()).unwrap();
        while !past_retention(r, p, t) {
            t += chrono::Duration::hours(1);
        }
        let mut lo = t - chrono::Duration::hours(1);
        while (t - lo).num_microseconds().unwrap_or(0) > 1 {
            let mid = lo + (t - lo) / 2;
            if past_retention(r, p, mid) {
                t = mid
            } else {
                lo = mid
            }
        }
        t
    }

    #[test]
    fn end_of_month_days_expire_when_the_calendar_says() {
        let at = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap();
        // 31 January + 1 month: the day ends 1 February 00:00, one month before 1 March,
        // so 31 January goes on 1 March, not on a "31 February".
        assert_eq!(
            first_expiry(Retention::Months(1), 2026, 1, 31),
            at(2026, 3, 1)
        );
        assert_eq!(
            first_expiry(Retention::Months(13), 2025, 1, 31),
            at(2026, 3, 1)
        );
        // 29 February 2028 ends 1 March 2028: gone 13 calendar months later.
        assert_eq!(
            first_expiry(Retention::Months(13), 2028, 2, 29),
            at(2029, 4, 1)
        );
        assert_eq!(
            first_expiry(Retention::Days(400), 2025, 1, 31),
            at(2025, 2, 1) + chrono::Duration::days(400)
        );
    }
}
