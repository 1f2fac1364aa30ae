//! Proof of deletion: what lets an auditor check, with the public key alone, that
//! nothing older than the retention period is kept.
//!
//! - **Certificates.** When expiry removes a partition it writes a deletion certificate
//!   to the ledger: the partition and its window, its record and outcome counts, the
//!   last signed head of each of its trees (root, size, signature), the retention,
//!   the cutoff and the time its keys were shredded. The certificate is a JSON
//!   document signed with the installation's Ed25519 key (on PostgreSQL, the expiring
//!   node's), over [`CERTIFICATE_DOMAIN`] followed by the document's exact bytes.
//! - **The register.** Every partition a store holds is named in the hash-chained
//!   audit log (`partition.register`; two nodes at once may both name one), by `serve`
//!   (at start-up and every
//!   `store.expire-interval`) and by `relaylog expire`, before anything is removed.
//!   A partition on record is then present, removed under a valid certificate, or
//!   (in a store a restore made) named left out by that restore: one gone otherwise
//!   is damage, and a day never registered had no partition (nothing was recorded).
//!
//! Order, for crash safety (see `expiry::remove_certified`): the facts are read from
//! the partition, its keys shredded, the certificate written, then its file or tables
//! removed. A crash before the certificate leaves the partition a candidate for the
//! next run (its file is still there); one after it finds the certificate already
//! written and keeps the first.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rusqlite::OpenFlags;
use serde::{Deserialize, Serialize};

use super::integrity::{self, SigningKeyError};
use super::keys::{Keyring, hex};
use super::partition::{self, PartitionId};
use crate::config::{Backend, Granularity, Retention, StoreConfig};
use crate::export::rfc3339;
use crate::ledger::{Ledger, LedgerError, sql_err};

/// What a certificate's signature covers, ahead of the document's bytes.
pub const CERTIFICATE_DOMAIN: &[u8] = b"relaylog deletion certificate v1\n";

/// The audit action that names partitions as they are first seen.
pub const REGISTER: &str = "partition.register";

/// Partitions one register entry names at most (a first run on a store of years).
const REGISTER_CHUNK: usize = 500;

/// The last signed head of one tree of a removed partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertifiedHead {
    /// PostgreSQL: the node whose tree it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub seq: i64,
    pub size: u64,
    pub record_through: i64,
    pub outcome_through: i64,
    pub root: String,
    pub at: String,
    pub signature: String,
}

/// A deletion certificate: what was removed, and when its keys were shredded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Certificate {
    /// Always `relaylog deletion certificate v1`.
    pub certificate: String,
    pub partition: String,
    /// The partition's window, `[from, until)`.
    pub from: String,
    pub until: String,
    /// Records and outcomes it had held (ids are never reused: erased rows count).
    pub records: u64,
    pub outcomes: u64,
    /// Whether its rows were there to remove: `false` when only its keys were (a day
    /// whose keys were made ahead and that saw no traffic).
    pub rows_found: bool,
    /// Why its rows could not be counted, if they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    pub heads: Vec<CertifiedHead>,
    pub retention: String,
    pub cutoff: String,
    /// The time of the run that removed it (`expire --now` may say another).
    pub shredded_at: String,
    /// When it was signed, by the clock: a partition not past retention by then was
    /// removed early, whatever time the run was told it was.
    pub signed_at: String,
    /// PostgreSQL: the node that removed it and signed this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// SHA-256 of the public key that verifies the signature.
    pub key_fingerprint: String,
}

const VERSION: &str = "relaylog deletion certificate v1";

/// A certificate as the ledger keeps it: the signed document and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCertificate {
    pub partition: String,
    pub document: String,
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CertificateError {
    #[error("not a deletion certificate: {0}")]
    Malformed(String),
    #[error("signed by a key this installation does not know (fingerprint {0})")]
    UnknownKey(String),
    #[error("its signature does not verify: the certificate was changed")]
    Signature,
    #[error("it certifies partition {certified}, but is filed under {filed}")]
    Misfiled { certified: String, filed: String },
    #[error(
        "it does not show the partition past retention when removed, by the run's time or the clock's when it was signed (it ends {until}, the run's cutoff was {cutoff})"
    )]
    Early { until: String, cutoff: String },
}

/// A public key certificates may be signed with: the installation's, or on
/// PostgreSQL each node's that the master key authenticates.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub node: Option<String>,
    pub public_key: Vec<u8>,
}

impl TrustedKey {
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.public_key)
    }
}

use super::keys::sha256_hex;

/// The keys certificates of this store are checked with. On PostgreSQL the master
/// key (in `keyring`) decides which nodes' keys are trusted.
pub fn trusted_keys(
    cfg: &StoreConfig,
    keyring: Option<&Keyring>,
) -> Result<Vec<TrustedKey>, TrustError> {
    let Backend::Postgres(pg) = &cfg.backend else {
        return Ok(vec![TrustedKey {
            node: None,
            public_key: integrity::load_public_key(&cfg.signing_key)?,
        }]);
    };
    let keyring = keyring.ok_or(TrustError::NoMasterKey)?;
    let tagger = keyring.master().node_tagger();
    let pool = crate::pg::Pool::shared(pg)?;
    let nodes = crate::pg::schema::nodes(&mut *pool.get()?)?;
    Ok(nodes
        .into_iter()
        .filter(|n| n.authentic(&tagger))
        .map(|n| TrustedKey {
            node: Some(n.name),
            public_key: n.public_key,
        })
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Key(#[from] SigningKeyError),
    #[error("on PostgreSQL the nodes' keys are trusted only with the master key")]
    NoMasterKey,
    #[error("the store's database: {0}")]
    Database(#[from] crate::pg::PgError),
}

/// Checks a stored certificate: a trusted key's signature over its exact bytes, and
/// filed under the partition it names.
pub fn check(
    stored: &StoredCertificate,
    keys: &[TrustedKey],
) -> Result<Certificate, CertificateError> {
    let cert: Certificate = serde_json::from_str(&stored.document)
        .map_err(|e| CertificateError::Malformed(e.to_string()))?;
    if cert.certificate != VERSION {
        return Err(CertificateError::Malformed(format!(
            "unknown kind `{}`",
            cert.certificate
        )));
    }
    let key = keys
        .iter()
        .find(|k| k.fingerprint() == cert.key_fingerprint)
        .ok_or_else(|| CertificateError::UnknownKey(cert.key_fingerprint.clone()))?;
    UnparsedPublicKey::new(&ED25519, &key.public_key)
        .verify(&signed_bytes(&stored.document), &stored.signature)
        .map_err(|_| CertificateError::Signature)?;
    if cert.partition != stored.partition {
        return Err(CertificateError::Misfiled {
            certified: cert.partition,
            filed: stored.partition.clone(),
        });
    }
    // Past retention when removed: by the run's time, and by the clock's when it was
    // signed (a run told a later time than it was removes early).
    let time = |s: &str| DateTime::parse_from_rfc3339(s).ok().map(|t| t.to_utc());
    let by_the_clock = Retention::parse(&cert.retention)
        .zip(time(&cert.signed_at))
        .map(|(r, at)| r.cutoff(at));
    match (time(&cert.until), time(&cert.cutoff), by_the_clock) {
        (Some(until), Some(cutoff), Some(clock)) if until <= cutoff && until <= clock => Ok(cert),
        _ => Err(CertificateError::Early {
            until: cert.until,
            cutoff: cert.cutoff,
        }),
    }
}

fn signed_bytes(document: &str) -> Vec<u8> {
    let mut m = CERTIFICATE_DOMAIN.to_vec();
    m.extend_from_slice(document.as_bytes());
    m
}

/// What the partition held, read before anything of it is removed.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub records: u64,
    pub outcomes: u64,
    pub rows_found: bool,
    pub unreadable: Option<String>,
    pub heads: Vec<CertifiedHead>,
}

fn certified_head(node: Option<String>, h: &integrity::Head, signature: &[u8]) -> CertifiedHead {
    CertifiedHead {
        node,
        seq: h.seq,
        size: h.size,
        record_through: h.record_through,
        outcome_through: h.outcome_through,
        root: hex(&h.root),
        at: rfc3339(h.at_us),
        signature: hex(signature),
    }
}

/// Reads a partition's counts and last signed heads (values stay sealed: no key
/// is needed).
pub fn facts(cfg: &StoreConfig, keyring: &Keyring, p: PartitionId) -> Result<Facts, FactsError> {
    match &cfg.backend {
        Backend::Sqlite => sqlite_facts(&p.path_in(&cfg.path)).map_err(|source| FactsError::Busy {
            partition: p.to_string(),
            source,
        }),
        Backend::Postgres(pg) => {
            let pool = crate::pg::Pool::shared(pg)?;
            let tagger = keyring.master().node_tagger();
            let heads = super::pgstore::latest_heads(&pool, &[p], &tagger)?;
            let (records, outcomes, listed) = super::pgstore::partition_counts(&pool, p)?;
            Ok(Facts {
                records,
                outcomes,
                rows_found: listed,
                unreadable: None,
                heads: heads
                    .iter()
                    .map(|(_, node, _, h, sig)| certified_head(Some(node.clone()), h, sig))
                    .collect(),
            })
        }
    }
}

/// A partition file's facts; one that cannot be read as a partition (damaged) is
/// certified as such, `unreadable`; busy or locked is an error.
fn sqlite_facts(path: &std::path::Path) -> rusqlite::Result<Facts> {
    if !path.exists() {
        return Ok(Facts::default());
    }
    let read = || -> rusqlite::Result<Facts> {
        let conn = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        if !super::schema::is_ready(&conn)? {
            return Ok(Facts {
                rows_found: true,
                ..Facts::default()
            });
        }
        let top = |table: &str| -> rusqlite::Result<i64> {
            conn.query_row(
                &format!("SELECT coalesce(max(id), 0) FROM {table}"),
                [],
                |r| r.get(0),
            )
        };
        let (records, outcomes) = (top("record")?, top("outcome")?);
        let head = integrity::latest_head(&conn)?;
        let (r_through, o_through) = head
            .as_ref()
            .map_or((0, 0), |(h, _)| (h.record_through, h.outcome_through));
        Ok(Facts {
            records: records.max(r_through).max(0) as u64,
            outcomes: outcomes.max(o_through).max(0) as u64,
            rows_found: true,
            unreadable: None,
            heads: head
                .iter()
                .map(|(h, sig)| certified_head(None, h, sig))
                .collect(),
        })
    };
    match read() {
        Ok(f) => Ok(f),
        // Busy or locked: a moment's doing; the partition waits for the next run.
        Err(
            e @ rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error {
                    code: rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked,
                    ..
                },
                _,
            ),
        ) => Err(e),
        Err(e) => Ok(Facts {
            rows_found: true,
            unreadable: Some(e.to_string()),
            ..Facts::default()
        }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("partition {partition} is busy; it is removed at the next run: {source}")]
    Busy {
        partition: String,
        source: rusqlite::Error,
    },
    #[error("the store's database: {0}")]
    Database(#[from] crate::pg::PgError),
}

/// Who signs certificates: the installation's (or this node's) signing key.
pub struct Signer {
    key: Ed25519KeyPair,
    node: Option<String>,
}

impl Signer {
    pub fn load(cfg: &StoreConfig) -> Result<Signer, SigningKeyError> {
        Ok(Signer {
            key: integrity::load_signing_key(&cfg.signing_key)?,
            node: match &cfg.backend {
                Backend::Sqlite => None,
                Backend::Postgres(pg) => Some(pg.node.clone()),
            },
        })
    }

    /// The certificate of `p`'s removal, signed now: (document, signature).
    pub fn certify(
        &self,
        p: PartitionId,
        facts: Facts,
        retention: Retention,
        cutoff: DateTime<Utc>,
        shredded_at: DateTime<Utc>,
    ) -> (String, Vec<u8>) {
        self.certify_at(p, facts, retention, cutoff, shredded_at, Utc::now())
    }

    fn certify_at(
        &self,
        p: PartitionId,
        facts: Facts,
        retention: Retention,
        cutoff: DateTime<Utc>,
        shredded_at: DateTime<Utc>,
        signed_at: DateTime<Utc>,
    ) -> (String, Vec<u8>) {
        let cert = Certificate {
            certificate: VERSION.to_owned(),
            partition: p.to_string(),
            from: rfc3339(p.start_micros()),
            until: rfc3339(p.end_micros()),
            records: facts.records,
            outcomes: facts.outcomes,
            rows_found: facts.rows_found,
            unreadable: facts.unreadable,
            heads: facts.heads,
            retention: retention.to_string(),
            cutoff: rfc3339(cutoff.timestamp_micros()),
            shredded_at: rfc3339(shredded_at.timestamp_micros()),
            signed_at: rfc3339(signed_at.timestamp_micros()),
            node: self.node.clone(),
            key_fingerprint: sha256_hex(self.key.public_key().as_ref()),
        };
        let document = serde_json::to_string(&cert).expect("a certificate serialises");
        let signature = self.key.sign(&signed_bytes(&document)).as_ref().to_vec();
        (document, signature)
    }
}

fn stored_of_row(r: &crate::ledger::db::Row) -> crate::ledger::db::DbResult<StoredCertificate> {
    Ok(StoredCertificate {
        partition: r.text(0)?,
        document: r.text(1)?,
        signature: r.blob(2)?,
    })
}

impl Ledger {
    /// Files a certificate; the first one filed for a partition is kept (a run that
    /// crashed after filing it and is finished by the next files none). Returns
    /// whether this one was filed.
    pub fn file_certificate(
        &mut self,
        partition: &str,
        document: &str,
        signature: &[u8],
        at: crate::clock::Micros,
    ) -> Result<bool, LedgerError> {
        let err = sql_err(&self.path);
        let n = self
            .db()
            .execute(
                "INSERT INTO deletion (partition, certificate, signature, at_us) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (partition) DO NOTHING",
                &[&partition, &document, &signature.to_vec(), &at],
            )
            .map_err(err)?;
        Ok(n == 1)
    }

    /// The certificate filed for `partition`, if any.
    pub fn certificate(&self, partition: &str) -> Result<Option<StoredCertificate>, LedgerError> {
        let err = sql_err(&self.path);
        let row = self
            .db()
            .query_opt(
                "SELECT partition, certificate, signature FROM deletion WHERE partition = ?1",
                &[&partition],
            )
            .map_err(err)?;
        row.map(|r| stored_of_row(&r)).transpose().map_err(err)
    }

    /// Every certificate filed, by partition.
    pub fn certificates(&self) -> Result<Vec<StoredCertificate>, LedgerError> {
        let err = sql_err(&self.path);
        self.db()
            .query(
                "SELECT partition, certificate, signature FROM deletion ORDER BY partition",
                &[],
            )
            .map_err(err)?
            .iter()
            .map(stored_of_row)
            .collect::<crate::ledger::db::DbResult<Vec<_>>>()
            .map_err(err)
    }

    /// Every partition the audit log's register entries name.
    pub fn registered(&self) -> Result<BTreeSet<String>, LedgerError> {
        self.partitions_named_by(REGISTER)
    }

    /// Partitions a restore left out of this (restored) ledger's store: past
    /// retention and held by nothing (see [`super::backup::LEFT_OUT`]).
    pub fn left_out_at_restore(&self) -> Result<BTreeSet<String>, LedgerError> {
        self.partitions_named_by(super::backup::LEFT_OUT)
    }

    /// The partitions every audit entry of `action` names; an entry that names none
    /// is an error (these entries are the accounting's evidence).
    fn partitions_named_by(&self, action: &str) -> Result<BTreeSet<String>, LedgerError> {
        let err = sql_err(&self.path);
        let rows = self
            .db()
            .query(
                "SELECT details FROM audit WHERE action = ?1 ORDER BY seq",
                &[&action],
            )
            .map_err(err)?;
        let mut out = BTreeSet::new();
        for r in rows {
            let details = r.text(0).map_err(err)?;
            out.extend(named_partitions(&details).ok_or_else(|| LedgerError::Sql {
                path: self.path.clone(),
                message: format!("a `{action}` entry names no partitions: {details}"),
            })?);
        }
        Ok(out)
    }
}

/// The `partitions` an audit entry's details name.
fn named_partitions(details: &str) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(details).ok()?;
    v.get("partitions")?
        .as_array()?
        .iter()
        .map(|p| p.as_str().map(str::to_owned))
        .collect()
}

/// The partitions the store holds now (files, or the PostgreSQL partitions' rows).
pub fn present(cfg: &StoreConfig) -> Result<Vec<PartitionId>, PresentError> {
    match &cfg.backend {
        Backend::Sqlite => partition::list(&cfg.path).map_err(|source| PresentError::List {
            path: cfg.path.clone(),
            source,
        }),
        Backend::Postgres(pg) => {
            let pool = crate::pg::Pool::shared(pg)?;
            Ok(crate::pg::schema::partitions(
                &mut *pool.get()?,
                cfg.partition,
            )?)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PresentError {
    #[error("cannot list {path}: {source}")]
    List {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the store's database: {0}")]
    Database(#[from] crate::pg::PgError),
}

/// Names in the audit log every present partition it does not name yet. Returns
/// those it named.
pub fn register(
    cfg: &StoreConfig,
    ledger: &mut Ledger,
    actor: &str,
    at: crate::clock::Micros,
) -> Result<Vec<PartitionId>, RegisterError> {
    let known = ledger.registered()?;
    let new: Vec<PartitionId> = present(cfg)?
        .into_iter()
        .filter(|p| !known.contains(&p.to_string()))
        .collect();
    for chunk in new.chunks(REGISTER_CHUNK) {
        let names: Vec<String> = chunk.iter().map(|p| p.to_string()).collect();
        ledger.audit(
            at,
            actor,
            REGISTER,
            serde_json::json!({"partitions": names}),
        )?;
    }
    Ok(new)
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Present(#[from] PresentError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What is wrong with one partition's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// On record, but neither present nor removed under a certificate.
    Missing,
    /// Its certificate does not check out: the partition counts as missing.
    Certificate(CertificateError),
    /// Present, though certified removed: an expiry cut short (the next run
    /// finishes it), or rows written for it after it went.
    PresentThoughCertified,
    /// On record with rows, certified removed, but its rows had gone before expiry.
    GoneBeforeExpiry,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing => write!(
                f,
                "missing: registered in the audit log, but neither present nor removed under a deletion certificate"
            ),
            Problem::Certificate(e) => write!(f, "deletion certificate invalid: {e}"),
            Problem::PresentThoughCertified => write!(
                f,
                "present, though a deletion certificate says it was removed (an expiry cut short: run `relaylog expire`)"
            ),
            Problem::GoneBeforeExpiry => write!(
                f,
                "its rows were gone before expiry came: the certificate found only its keys"
            ),
        }
    }
}

/// Every partition accounted for.
#[derive(Debug, Clone, Default)]
pub struct Accounting {
    /// The first partition on record (registered, present or certified).
    pub first: Option<PartitionId>,
    pub present: Vec<PartitionId>,
    pub removed: Vec<(PartitionId, Certificate)>,
    /// Left out by the restore that made this store (past retention, held by nothing).
    pub left_out: Vec<PartitionId>,
    /// Partitions between the first and the last on record that never existed (no
    /// traffic, or relaylog not running): neither registered, present nor certified.
    pub never: u64,
    pub problems: Vec<(PartitionId, Problem)>,
}

/// Accounts for every partition in `[since, until)` from the first on record:
/// present, removed under a valid certificate, or never made; anything else is a
/// problem.
/// What the ledger says of the store's partitions (see [`account`]).
#[derive(Debug, Clone, Default)]
pub struct OnRecord {
    pub registered: BTreeSet<String>,
    pub certificates: Vec<StoredCertificate>,
    /// Left out by the restore that made this store.
    pub left_out: BTreeSet<String>,
}

impl OnRecord {
    pub fn read(ledger: &Ledger) -> Result<OnRecord, LedgerError> {
        Ok(OnRecord {
            registered: ledger.registered()?,
            certificates: ledger.certificates()?,
            left_out: ledger.left_out_at_restore()?,
        })
    }
}

pub fn account(
    granularity: Granularity,
    present: &[PartitionId],
    record: &OnRecord,
    keys: &[TrustedKey],
    since: i64,
    until: i64,
) -> Accounting {
    let ours = |p: &PartitionId| p.granularity() == granularity;
    let parse = |names: &BTreeSet<String>| -> BTreeSet<PartitionId> {
        names
            .iter()
            .filter_map(|n| PartitionId::parse(n))
            .filter(ours)
            .collect()
    };
    let present: BTreeSet<PartitionId> = present.iter().copied().filter(ours).collect();
    let registered = parse(&record.registered);
    let left_out = parse(&record.left_out);
    let certified: BTreeMap<PartitionId, &StoredCertificate> = record
        .certificates
        .iter()
        .filter_map(|c| PartitionId::parse(&c.partition).map(|p| (p, c)))
        .filter(|(p, _)| ours(p))
        .collect();
    let mut all: BTreeSet<PartitionId> = present.clone();
    all.extend(registered.iter().copied());
    all.extend(certified.keys().copied());
    all.extend(left_out.iter().copied());
    let in_window = |p: &PartitionId| p.start_micros() < until && p.end_micros() > since;
    let mut out = Accounting {
        first: all.iter().copied().find(in_window),
        ..Accounting::default()
    };
    for &p in all.iter().filter(|p| in_window(p)) {
        let cert = certified.get(&p).map(|c| check(c, keys));
        match (present.contains(&p), cert) {
            (true, None) => out.present.push(p),
            (true, Some(_)) => {
                out.present.push(p);
                out.problems.push((p, Problem::PresentThoughCertified));
            }
            (false, Some(Ok(c))) => {
                if registered.contains(&p) && !c.rows_found {
                    out.problems.push((p, Problem::GoneBeforeExpiry));
                }
                out.removed.push((p, c));
            }
            (false, Some(Err(e))) => out.problems.push((p, Problem::Certificate(e))),
            (false, None) if left_out.contains(&p) => out.left_out.push(p),
            (false, None) => out.problems.push((p, Problem::Missing)),
        }
    }
    let last = all.iter().copied().rfind(in_window);
    if let (Some(first), Some(last)) = (out.first, last) {
        let mut p = first;
        while p <= last {
            if !all.contains(&p) {
                out.never += 1;
            }
            p = p.next();
        }
    }
    out
}

/// The store's account as of now: present partitions, the ledger's register and
/// certificates, checked with `keys`.
pub fn account_store(
    cfg: &StoreConfig,
    ledger: &Ledger,
    keys: &[TrustedKey],
    since: i64,
    until: i64,
) -> Result<Accounting, RegisterError> {
    let present = present(cfg)?;
    Ok(account(
        cfg.partition,
        &present,
        &OnRecord::read(ledger)?,
        keys,
        since,
        until,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};

    fn day(d: u32) -> PartitionId {
        PartitionId::of_date(
            Granularity::Day,
            NaiveDate::from_ymd_opt(2026, 1, d).unwrap(),
        )
    }

    fn signer() -> (Signer, TrustedKey) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public_key = key.public_key().as_ref().to_vec();
        (
            Signer { key, node: None },
            TrustedKey {
                node: None,
                public_key,
            },
        )
    }

    fn certificate(s: &Signer, p: PartitionId, rows_found: bool) -> StoredCertificate {
        let at = Utc.with_ymd_and_hms(2027, 3, 1, 0, 0, 0).unwrap();
        let (document, signature) = s.certify_at(
            p,
            Facts {
                records: 3,
                outcomes: 2,
                rows_found,
                ..Facts::default()
            },
            Retention::Months(13),
            Retention::Months(13).cutoff(at),
            at,
            at,
        );
        StoredCertificate {
            partition: p.to_string(),
            document,
            signature,
        }
    }

    fn names(ps: &[PartitionId]) -> BTreeSet<String> {
        ps.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn every_partition_is_present_certified_or_never_made() {
        let (s, key) = signer();
        let certs = [certificate(&s, day(1), true), certificate(&s, day(2), true)];
        // Day 4 never existed; days 3, 5, 6 are present; day 7 is missing.
        let present = [day(3), day(5), day(6)];
        let registered = names(&[day(1), day(2), day(3), day(5), day(6), day(7)]);
        let a = account(
            Granularity::Day,
            &present,
            &OnRecord {
                registered,
                certificates: certs.to_vec(),
                left_out: BTreeSet::new(),
            },
            &[key],
            0,
            day(8).start_micros(),
        );
        assert_eq!(a.first, Some(day(1)));
        assert_eq!(a.present, present);
        assert_eq!(a.removed.len(), 2);
        assert_eq!(a.removed[0].1.records, 3);
        assert_eq!(a.never, 1, "day 4");
        assert_eq!(a.problems, [(day(7), Problem::Missing)]);
    }

    #[test]
    fn a_changed_misfiled_or_foreign_certificate_does_not_count() {
        let (s, key) = signer();
        let (other, _) = signer();
        let mut edited = certificate(&s, day(1), true);
        edited.document = edited.document.replace("\"records\":3", "\"records\":2");
        let mut misfiled = certificate(&s, day(2), true);
        misfiled.partition = day(3).to_string();
        let foreign = certificate(&other, day(4), true);
        let registered = names(&[day(1), day(2), day(3), day(4)]);
        let a = account(
            Granularity::Day,
            &[],
            &OnRecord {
                registered,
                certificates: [edited, misfiled, foreign].to_vec(),
                left_out: BTreeSet::new(),
            },
            &[key],
            0,
            day(5).start_micros(),
        );
        assert!(a.removed.is_empty());
        let problems: Vec<_> = a.problems.iter().map(|(p, e)| (p.to_string(), e)).collect();
        assert!(matches!(
            problems[0],
            (ref d, Problem::Certificate(CertificateError::Signature)) if d == "2026-01-01"
        ));
        // Day 2 is registered, its certificate filed under day 3.
        assert!(matches!(problems[1], (ref d, Problem::Missing) if d == "2026-01-02"));
        assert!(matches!(
            problems[2],
            (ref d, Problem::Certificate(CertificateError::Misfiled { .. })) if d == "2026-01-03"
        ));
        assert!(matches!(
            problems[3],
            (ref d, Problem::Certificate(CertificateError::UnknownKey(_))) if d == "2026-01-04"
        ));
    }

    #[test]
    fn rows_gone_before_expiry_and_unfinished_expiry_are_said() {
        let (s, key) = signer();
        // Day 1 had rows (registered) that were gone when expiry came; day 2 only ever
        // had keys (never registered): a quiet day, not a problem.
        let certs = [
            certificate(&s, day(1), false),
            certificate(&s, day(2), false),
            certificate(&s, day(3), true),
        ];
        let a = account(
            Granularity::Day,
            &[day(3)],
            &OnRecord {
                registered: names(&[day(1), day(3)]),
                certificates: certs.to_vec(),
                left_out: BTreeSet::new(),
            },
            &[key],
            0,
            day(4).start_micros(),
        );
        assert_eq!(
            a.problems,
            [
                (day(1), Problem::GoneBeforeExpiry),
                (day(3), Problem::PresentThoughCertified)
            ]
        );
        assert_eq!(a.removed.len(), 2);
    }

    #[test]
    fn an_early_certificate_is_refused_and_a_restore_s_left_out_accounted() {
        let (s, key) = signer();
        // Removed 2027-03-01 under a 13-month retention: the cutoff is 2026-02-01.
        let march = PartitionId::of_date(
            Granularity::Day,
            NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
        );
        let early = certificate(&s, march, true);
        assert!(matches!(
            check(&early, std::slice::from_ref(&key)),
            Err(CertificateError::Early { .. })
        ));
        // A run told a later time than the clock's (`expire --now` ahead): early too.
        let (told, clock) = (
            Utc.with_ymd_and_hms(2027, 3, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap(),
        );
        let r = Retention::Months(13);
        let (document, signature) =
            s.certify_at(day(1), Facts::default(), r, r.cutoff(told), told, clock);
        let ahead = StoredCertificate {
            partition: day(1).to_string(),
            document,
            signature,
        };
        assert!(matches!(
            check(&ahead, std::slice::from_ref(&key)),
            Err(CertificateError::Early { .. })
        ));
        let record = OnRecord {
            registered: names(&[day(1), day(2)]),
            certificates: vec![],
            left_out: names(&[day(1)]),
        };
        let a = account(
            Granularity::Day,
            &[],
            &record,
            &[key],
            0,
            day(3).start_micros(),
        );
        assert_eq!(a.left_out, [day(1)]);
        assert_eq!(a.problems, [(day(2), Problem::Missing)]);
    }
}
