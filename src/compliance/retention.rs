//! `relaylog report retention`: the evidence that traffic data is kept no longer than
//! the retention period. It states the oldest record held, which partitions past
//! retention are still kept and why (legal holds), the backups still readable, whether
//! every partition on record is accounted for (present, or removed under a deletion
//! certificate), and lists the certificates with the public keys that verify them.
//! `--out FILE` writes it signed with the installation's key (`FILE.sig`: Ed25519 over
//! [`REPORT_DOMAIN`] and the file's exact bytes), so that an auditor checks it, and
//! every certificate in it, with that key alone: `relaylog verify-retention FILE
//! --public-key KEY`.

use std::path::Path;

use chrono::{DateTime, Utc};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::config::{Backend, StoreConfig};
use crate::export::rfc3339;
use crate::ledger::{Hold, Ledger};
use crate::store::deletion::{self, OnRecord, StoredCertificate, TrustedKey};
use crate::store::expiry::past_retention;
use crate::store::keys::{Keyring, hex, sha256_hex, unhex};
use crate::store::partition::PartitionId;

/// What a report's signature covers, ahead of the report file's exact bytes.
pub const REPORT_DOMAIN: &[u8] = b"relaylog retention report v1\n";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionReport {
    pub generated_at: String,
    /// SHA-256 of the public key whose signature (`FILE.sig`) covers the report.
    pub signed_by: String,
    pub retention: String,
    /// Records older than this are past retention.
    pub cutoff: String,
    /// The oldest record the store holds, and its partition.
    pub oldest_record: Option<String>,
    pub oldest_partition: Option<String>,
    pub partitions_present: usize,
    /// Partitions wholly past retention kept by legal holds, with the cases.
    pub held: Vec<HeldPartition>,
    /// Partitions wholly past retention that nothing holds: expiry has yet to run.
    pub overdue: Vec<String>,
    /// No partition wholly past retention is kept but those legal holds keep.
    pub nothing_older_in_store: bool,
    /// Backups whose keys are not shredded yet (still readable), oldest first.
    pub unshredded_backups: Vec<ReportBackup>,
    /// No unshredded backup holds a partition that is past retention by now.
    pub nothing_older_in_backups: bool,
    /// Directories backups were restored into (or a restore began in): copies of
    /// traffic data this store's expiry does not reach.
    pub restored_copies: Vec<crate::store::backup::RestoredCopy>,
    /// The first partition on record, and how every one from it is accounted for.
    pub accounted_from: Option<String>,
    pub removed_under_certificate: usize,
    /// Left out by the restore that made this store (past retention then).
    pub left_out_at_restore: usize,
    pub never_made: u64,
    /// Partitions not accounted for, and why (see `relaylog verify`).
    pub problems: Vec<ReportProblem>,
    pub audit_log_intact: bool,
    /// The keys the certificates are signed with.
    pub public_keys: Vec<ReportKey>,
    pub certificates: Vec<ReportCertificate>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReportBackup {
    pub id: String,
    pub created_at: String,
    pub oldest_partition: Option<String>,
    /// When expiry shreds its key.
    pub shred_at: String,
    /// It holds partitions past retention by now (kept readable until `shred_at`).
    pub holds_past_retention: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeldPartition {
    pub partition: String,
    pub cases: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReportProblem {
    pub partition: String,
    pub problem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReportKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The raw Ed25519 public key, hex.
    pub public_key: String,
    pub fingerprint: String,
}

/// A certificate as filed: the exact signed document and its signature (hex).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReportCertificate {
    pub partition: String,
    pub certificate: String,
    pub signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(transparent)]
    Present(#[from] deletion::PresentError),
    #[error(transparent)]
    Trust(#[from] deletion::TrustError),
    #[error("partition {partition}: {message}")]
    Partition { partition: String, message: String },
    #[error("the store's database: {0}")]
    Database(#[from] crate::pg::PgError),
}

/// The report as of `now`.
pub fn report(
    cfg: &StoreConfig,
    ledger: &Ledger,
    keyring: Option<&Keyring>,
    now: DateTime<Utc>,
) -> Result<RetentionReport, RetentionError> {
    let present = deletion::present(cfg)?;
    let holds = ledger.holds()?;
    let (mut held, mut overdue) = (Vec::new(), Vec::new());
    for &p in present
        .iter()
        .filter(|p| past_retention(cfg.retention, **p, now))
    {
        let cases = Hold::cases_holding(&holds, p);
        if cases.is_empty() {
            overdue.push(p.to_string());
        } else {
            held.push(HeldPartition {
                partition: p.to_string(),
                cases,
            });
        }
    }
    let oldest = oldest_record(cfg, &present)?;
    let unshredded_backups: Vec<ReportBackup> = ledger
        .backups()?
        .into_iter()
        .filter(|b| b.readable())
        .map(|b| ReportBackup {
            holds_past_retention: b
                .oldest
                .as_deref()
                .and_then(PartitionId::parse)
                .is_some_and(|p| past_retention(cfg.retention, p, now)),
            id: b.id,
            created_at: b.created_at,
            oldest_partition: b.oldest,
            shred_at: b.shred_at,
        })
        .collect();
    let keys = deletion::trusted_keys(cfg, keyring)?;
    let mut record = OnRecord::read(ledger)?;
    let a = deletion::account(cfg.partition, &present, &record, &keys, 0, i64::MAX / 2);
    let certificates = std::mem::take(&mut record.certificates)
        .into_iter()
        .map(|c| ReportCertificate {
            partition: c.partition,
            certificate: c.document,
            signature: hex(&c.signature),
        })
        .collect();
    Ok(RetentionReport {
        generated_at: rfc3339(now.timestamp_micros()),
        signed_by: String::new(),
        retention: cfg.retention.to_string(),
        cutoff: rfc3339(cfg.retention.cutoff(now).timestamp_micros()),
        oldest_record: oldest.map(|(_, at)| rfc3339(at)),
        oldest_partition: oldest.map(|(p, _)| p.to_string()),
        partitions_present: present.len(),
        nothing_older_in_store: overdue.is_empty(),
        nothing_older_in_backups: !unshredded_backups.iter().any(|b| b.holds_past_retention),
        restored_copies: ledger.restored_copies()?,
        unshredded_backups,
        held,
        overdue,
        accounted_from: a.first.map(|p| p.to_string()),
        removed_under_certificate: a.removed.len(),
        left_out_at_restore: a.left_out.len(),
        never_made: a.never,
        problems: a
            .problems
            .iter()
            .map(|(p, e)| ReportProblem {
                partition: p.to_string(),
                problem: e.to_string(),
            })
            .collect(),
        audit_log_intact: ledger.verify_audit().is_ok(),
        public_keys: keys
            .iter()
            .map(|k| ReportKey {
                node: k.node.clone(),
                public_key: hex(&k.public_key),
                fingerprint: k.fingerprint(),
            })
            .collect(),
        certificates,
    })
}

/// The oldest record's time, from the oldest partition that has one.
fn oldest_record(
    cfg: &StoreConfig,
    present: &[PartitionId],
) -> Result<Option<(PartitionId, i64)>, RetentionError> {
    for &p in present {
        let at: Option<i64> = match &cfg.backend {
            Backend::Sqlite => {
                let err = |e: rusqlite::Error| RetentionError::Partition {
                    partition: p.to_string(),
                    message: e.to_string(),
                };
                let conn = rusqlite::Connection::open_with_flags(
                    p.path_in(&cfg.path),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .map_err(err)?;
                if !crate::store::schema::is_ready(&conn).map_err(err)? {
                    continue;
                }
                conn.query_row("SELECT min(at_us) FROM record", [], |r| r.get(0))
                    .map_err(err)?
            }
            Backend::Postgres(pg) => crate::pg::Pool::shared(pg)?
                .get()?
                .query_one(
                    "SELECT min(at_us) FROM relaylog.record WHERE part = $1",
                    &[&crate::pg::schema::part(p)],
                )
                .map_err(crate::pg::PgError::from)?
                .get(0),
        };
        if let Some(at) = at {
            return Ok(Some((p, at)));
        }
    }
    Ok(None)
}

impl RetentionReport {
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "retention {}: records before {} are past it (report made {})\n",
            self.retention, self.cutoff, self.generated_at
        );
        match (&self.oldest_record, &self.oldest_partition) {
            (Some(at), Some(p)) => out += &format!("oldest record held: {at} (partition {p})\n"),
            _ => out += "oldest record held: none (the store holds no records)\n",
        }
        out += &format!("partitions present: {}\n", self.partitions_present);
        for h in &self.held {
            out += &format!(
                "past retention, kept by legal hold: {} (cases: {})\n",
                h.partition,
                h.cases.join(", ")
            );
        }
        for p in &self.overdue {
            out += &format!("PAST RETENTION, NOT HELD: {p} (expiry has yet to run)\n");
        }
        out += if self.nothing_older_in_store {
            "nothing past retention is kept in the store but what legal holds keep\n"
        } else {
            "PARTITIONS PAST RETENTION ARE STILL KEPT\n"
        };
        for b in &self.unshredded_backups {
            let past = if b.holds_past_retention {
                ", HOLDS PARTITIONS PAST RETENTION until then"
            } else {
                ""
            };
            out += &format!(
                "backup {} (made {}, oldest partition {}): its key is shredded {}{past}\n",
                b.id,
                b.created_at,
                b.oldest_partition.as_deref().unwrap_or("-"),
                b.shred_at
            );
        }
        out += if self.nothing_older_in_backups {
            "no unshredded backup holds anything past retention\n"
        } else {
            "unshredded backups hold partitions past retention until their keys are shredded\n"
        };
        match &self.accounted_from {
            Some(first) => {
                out += &format!(
                    "every partition from {first}: {} present, {} removed under deletion certificates, {} never made, {} problem(s)\n",
                    self.partitions_present,
                    self.removed_under_certificate,
                    self.never_made,
                    self.problems.len()
                )
            }
            None => out += "no partition on record\n",
        }
        for p in &self.problems {
            out += &format!("PROBLEM {}: {}\n", p.partition, p.problem);
        }
        if !self.audit_log_intact {
            out += "AUDIT LOG BROKEN: the register of partitions cannot be trusted\n";
        }
        for k in &self.public_keys {
            let node = k
                .node
                .as_deref()
                .map(|n| format!(" (node {n})"))
                .unwrap_or_default();
            out += &format!(
                "signing key{node}: {} (sha256 {})\n",
                k.public_key, k.fingerprint
            );
        }
        for c in &self.certificates {
            match serde_json::from_str::<deletion::Certificate>(&c.certificate) {
                Ok(cert) => {
                    out += &format!(
                        "certificate {}: {} records, {} outcomes, keys shredded {}, cutoff {}\n",
                        c.partition, cert.records, cert.outcomes, cert.shredded_at, cert.cutoff
                    )
                }
                Err(_) => out += &format!("certificate {}: unreadable\n", c.partition),
            }
        }
        out
    }
}

impl RetentionReport {
    /// The report as a file, signed with `key` (the installation's, or this node's):
    /// its bytes (pretty JSON) and the signature over [`REPORT_DOMAIN`] and them, as
    /// hex with a newline (`FILE.sig`).
    pub fn signed(mut self, key: &Ed25519KeyPair) -> (Vec<u8>, String) {
        self.signed_by = sha256_hex(key.public_key().as_ref());
        let mut bytes = serde_json::to_vec_pretty(&self).expect("a report serialises");
        bytes.push(b'\n');
        let signature = key.sign(&signed_bytes(&bytes));
        (bytes, format!("{}\n", hex(signature.as_ref())))
    }
}

fn signed_bytes(file: &[u8]) -> Vec<u8> {
    let mut m = REPORT_DOMAIN.to_vec();
    m.extend_from_slice(file);
    m
}

/// What checking a report with public keys alone found.
#[derive(Debug, Clone)]
pub struct ReportCheck {
    pub report: RetentionReport,
    pub certificates: usize,
    /// Why the report does not show the promise kept: a certificate that does not
    /// verify, or what the report itself states is wrong.
    pub failures: Vec<String>,
}

/// Checks a report file and its signature (as `report retention --out` wrote them)
/// with `public_keys` alone: the signature over the file's exact bytes; every
/// certificate's signature, and that each partition had ended before the cutoff it
/// was removed under, by its removal's time and by its signing's; then what the
/// signed report states (problems, partitions past retention kept but not held,
/// backups past their shred date still readable, a broken audit log).
pub fn check_report(
    file: &[u8],
    signature_hex: &str,
    public_keys: &[Vec<u8>],
) -> Result<ReportCheck, CheckError> {
    let signature = unhex(signature_hex.trim()).ok_or(CheckError::Signature)?;
    let key = public_keys
        .iter()
        .find(|k| {
            UnparsedPublicKey::new(&ED25519, k)
                .verify(&signed_bytes(file), &signature)
                .is_ok()
        })
        .ok_or(CheckError::Signature)?;
    let report: RetentionReport =
        serde_json::from_slice(file).map_err(|e| CheckError::Malformed(e.to_string()))?;
    if report.signed_by != sha256_hex(key) {
        return Err(CheckError::Malformed(
            "it names another key than the one its signature verifies with".into(),
        ));
    }
    let keys: Vec<TrustedKey> = public_keys
        .iter()
        .map(|k| TrustedKey {
            node: None,
            public_key: k.clone(),
        })
        .collect();
    let mut failures = Vec::new();
    for c in &report.certificates {
        let Some(signature) = unhex(&c.signature) else {
            failures.push(format!("{}: the signature is not hex", c.partition));
            continue;
        };
        let stored = StoredCertificate {
            partition: c.partition.clone(),
            document: c.certificate.clone(),
            signature,
        };
        if let Err(e) = deletion::check(&stored, &keys) {
            failures.push(format!("{}: {e}", c.partition));
        }
    }
    failures.extend(
        report
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.partition, p.problem)),
    );
    failures.extend(
        report
            .overdue
            .iter()
            .map(|p| format!("{p}: past retention and held by nothing, still kept")),
    );
    failures.extend(
        report
            .unshredded_backups
            .iter()
            .filter(|b| b.shred_at <= report.generated_at)
            .map(|b| {
                format!(
                    "backup {}: past its shred date ({}), its key not shredded",
                    b.id, b.shred_at
                )
            }),
    );
    if !report.audit_log_intact {
        failures
            .push("the audit log is broken: the register of partitions cannot be trusted".into());
    }
    Ok(ReportCheck {
        certificates: report.certificates.len(),
        report,
        failures,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("not a retention report: {0}")]
    Malformed(String),
    #[error(
        "the report's signature does not verify with the keys given: it was changed after it was made, or another installation made it"
    )]
    Signature,
}

/// Reads the raw public key files given to `verify-retention`.
pub fn read_keys(
    paths: &[impl AsRef<Path>],
) -> Result<Vec<Vec<u8>>, crate::store::integrity::SigningKeyError> {
    paths
        .iter()
        .map(|p| crate::store::integrity::read_public_key(p.as_ref()))
        .collect()
}
