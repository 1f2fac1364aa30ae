//! Disclosure: an approved case's records, exported with a signed manifest.
//!
//! The case's criteria run over the partitions of its window through the blind indexes
//! (`store::query`); every hit is decrypted and kept only if its decrypted value equals
//! the criterion (truncated-HMAC collisions fall out there). The export is written
//! next to a manifest (`<out>.manifest.json`) that names the case, its criteria by
//! audit tag, the window, the record count, the export's SHA-256 and the last signed
//! integrity head of every partition read; `<out>.manifest.json.sig` holds the
//! installation's Ed25519 signature over the manifest's exact bytes, so that changing
//! any byte of either file is detected by `verify-export` with the public key alone.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::digest;
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::cases::{CaseError, Criterion, State};
use super::officers::Officer;
use super::purpose::Purpose;
use crate::clock::Micros;
use crate::config::StoreConfig;
use crate::export::{CSV_HEADER, found_csv, found_json, rfc3339};
use crate::ledger::Ledger;
use crate::store::keys::{Keyring, MasterKey, hex, unhex};
use crate::store::partition::{self, PartitionId};
use crate::store::query::{self, Criteria, Found};
use crate::store::{integrity, schema};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Json,
    Csv,
    /// ETSI TS 102 657 XML (a RetainedDataMessage): see [`super::etsi`].
    EtsiXml,
}

impl Format {
    /// The export file's extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::EtsiXml => "xml",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscloseError {
    #[error(transparent)]
    Case(#[from] CaseError),
    #[error("{0} exists: a disclosure never overwrites a file")]
    Exists(PathBuf),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Query(#[from] query::QueryError),
    #[error("partition {partition}: {message}")]
    Partition {
        partition: PartitionId,
        message: String,
    },
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(
        "more than {MAX_EXPORT_RECORDS} records match: narrow the window, or split the request"
    )]
    TooMany,
    #[error(transparent)]
    Database(#[from] crate::pg::PgError),
    #[error(transparent)]
    Purpose(#[from] super::purpose::WrongPurpose),
    #[error(transparent)]
    Request(#[from] super::requests::RequestError),
    #[error(
        "an ETSI export names the provider: set compliance.csp-id (the identifier the authorities know it by)"
    )]
    NoCspId,
}

/// Most records one export holds: an export is assembled in memory (deduplicated
/// across criteria and sorted by time) before it is signed.
pub const MAX_EXPORT_RECORDS: usize = 2_000_000;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the manifest's signature does not verify with this public key: the manifest was changed, or signed by another installation"
    )]
    Signature,
    #[error("the manifest is not a relaylog manifest: {0}")]
    Malformed(String),
    #[error(
        "the export's SHA-256 is {actual}, the manifest says {expected}: the export was changed"
    )]
    Digest { expected: String, actual: String },
}

/// The last signed head of a partition read for the export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeadRef {
    pub partition: String,
    /// The node whose tree this head signs (PostgreSQL, where every node keeps one
    /// per partition), and the SHA-256 of its public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_key_fingerprint: Option<String>,
    pub seq: i64,
    pub size: u64,
    pub root: String,
    pub at: String,
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub kind: String,
    pub case: i64,
    pub request: String,
    pub authority: String,
    pub legal_basis: String,
    pub order_reference: String,
    pub criteria: Vec<TaggedCriterion>,
    pub since: String,
    pub until: String,
    pub format: Format,
    /// The export's file name, in the manifest's directory.
    pub export: String,
    pub export_sha256: String,
    pub records: u64,
    /// Index hits whose decrypted value did not match the criterion.
    pub collisions_dropped: u64,
    pub partitions: Vec<HeadRef>,
    /// Partitions in the window whose keys are gone (expired or shredded).
    pub partitions_unreadable: Vec<String>,
    pub officer: String,
    pub created_at: String,
    /// SHA-256 of the public key that verifies the signature.
    pub key_fingerprint: String,
    /// A deletion statement's erasure: what was removed from the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased: Option<Erased>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Erased {
    pub account: String,
    pub records: u64,
    pub outcome_events: u64,
    pub partitions: Vec<String>,
}

/// What every signed export says about itself; the caller adds who asked and why.
pub struct Describe<'a> {
    pub kind: &'static str,
    pub out: &'a Path,
    /// SHA-256 of the export, hex.
    pub export_sha256: String,
    pub found: &'a Collected,
    /// Records in the export (a subject export may hold fewer than were found).
    pub records: u64,
    pub criteria: Vec<TaggedCriterion>,
    pub window: (Micros, Micros),
    pub format: Format,
}

impl Manifest {
    /// A manifest with the fields every export shares filled in, and the request's
    /// own fields (case, request, authority, legal basis, order) empty.
    pub fn describe(
        inst: &Installation<'_>,
        d: Describe<'_>,
        officer: &Officer,
        now: Micros,
    ) -> Result<Manifest, DiscloseError> {
        Ok(Manifest {
            kind: d.kind.into(),
            case: 0,
            request: String::new(),
            authority: String::new(),
            legal_basis: String::new(),
            order_reference: String::new(),
            criteria: d.criteria,
            since: rfc3339(d.window.0),
            until: rfc3339(d.window.1),
            format: d.format,
            export: d
                .out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            export_sha256: d.export_sha256,
            records: d.records,
            collisions_dropped: d.found.collisions,
            partitions: heads(inst.store, &inst.master.node_tagger(), &d.found.read)?,
            partitions_unreadable: d.found.unreadable.iter().map(|p| p.to_string()).collect(),
            officer: officer.name.clone(),
            created_at: rfc3339(now),
            key_fingerprint: sha256_hex(ring::signature::KeyPair::public_key(inst.signer).as_ref()),
            erased: None,
        })
    }
}

/// Everything held from `now` back: the window of subject exports and offboarding
/// (the store keeps nothing older than retention; a little future covers clock skew).
pub fn everything_until(now: Micros) -> (Micros, Micros) {
    (0, now + 2 * 86_400_000_000)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaggedCriterion {
    pub kind: String,
    pub tag: String,
}

/// What a disclosure wrote.
#[derive(Debug)]
pub struct Disclosure {
    pub export: PathBuf,
    pub manifest: PathBuf,
    pub records: u64,
    pub sha256: String,
}

pub fn manifest_path(export: &Path) -> PathBuf {
    let mut p = export.as_os_str().to_owned();
    p.push(".manifest.json");
    PathBuf::from(p)
}

pub fn signature_path(manifest: &Path) -> PathBuf {
    let mut p = manifest.as_os_str().to_owned();
    p.push(".sig");
    PathBuf::from(p)
}

/// What criteria found over a window.
pub struct Collected {
    /// Each record once (a record may match several criteria), in time order.
    pub records: Vec<Found>,
    /// Partitions read.
    pub read: Vec<PartitionId>,
    /// Partitions in the window whose keys are gone.
    pub unreadable: Vec<PartitionId>,
    /// Index hits dropped because the decrypted value did not match.
    pub collisions: u64,
}

/// Runs criteria over a window.
pub fn collect(
    store: &StoreConfig,
    keyring: &Keyring,
    criteria: &[Criterion],
    since: Micros,
    until: Micros,
) -> Result<Collected, DiscloseError> {
    let mut found: BTreeMap<(Micros, PartitionId, i16, i64), Found> = BTreeMap::new();
    let mut collisions = 0;
    let mut unreadable = Vec::new();
    for c in criteria {
        let q = Criteria {
            kind: c.kind.index(),
            value: c.value.clone(),
            since,
            until,
            // What is handed over or erased never rests on a filter's "absent".
            filters: false,
        };
        let mut too_many = false;
        let stats = query::run(store, keyring, &q, |f| {
            let key = (f.at, f.partition, f.node, f.record_id);
            if found.len() < MAX_EXPORT_RECORDS || found.contains_key(&key) {
                found.insert(key, f);
            } else {
                too_many = true;
            }
        })?;
        if too_many {
            return Err(DiscloseError::TooMany);
        }
        collisions += stats.collisions;
        unreadable.extend(stats.partitions_shredded);
    }
    unreadable.sort();
    unreadable.dedup();
    let read = readable(store, since, until, &unreadable)?;
    Ok(Collected {
        records: found.into_values().collect(),
        read,
        unreadable,
        collisions,
    })
}

/// The partitions overlapping a window, but for those whose keys are gone.
pub fn readable(
    store: &StoreConfig,
    since: Micros,
    until: Micros,
    unreadable: &[PartitionId],
) -> Result<Vec<PartitionId>, DiscloseError> {
    let all = match &store.backend {
        crate::config::Backend::Sqlite => {
            partition::list(&store.path).map_err(|e| DiscloseError::Io {
                path: store.path.clone(),
                source: e,
            })?
        }
        crate::config::Backend::Postgres(pg) => {
            let pool = crate::pg::Pool::shared(pg).map_err(query::QueryError::from)?;
            let mut client = pool.get().map_err(query::QueryError::from)?;
            crate::pg::schema::partitions(&mut *client, store.partition)
                .map_err(query::QueryError::from)?
        }
    };
    Ok(all
        .into_iter()
        .filter(|p| p.start_micros() < until && p.end_micros() > since && !unreadable.contains(p))
        .collect())
}

/// The last signed head of each partition (on PostgreSQL, of each node's tree of it).
pub fn heads(
    store: &StoreConfig,
    tagger: &crate::store::keys::NodeTagger,
    partitions: &[PartitionId],
) -> Result<Vec<HeadRef>, DiscloseError> {
    if let crate::config::Backend::Postgres(pg) = &store.backend {
        let pool = crate::pg::Pool::shared(pg).map_err(query::QueryError::from)?;
        return crate::store::pgstore::latest_heads(&pool, partitions, tagger)
            .map_err(|e| DiscloseError::Query(query::QueryError::from(e)))
            .map(|heads| {
                heads
                    .into_iter()
                    .map(|(p, node, key, head, signature)| HeadRef {
                        partition: p.to_string(),
                        node: Some(node),
                        node_key_fingerprint: Some(sha256_hex(&key)),
                        seq: head.seq,
                        size: head.size,
                        root: hex(&head.root),
                        at: rfc3339(head.at_us),
                        signature: hex(&signature),
                    })
                    .collect()
            });
    }
    let mut out = Vec::new();
    for p in partitions {
        let err = |e: rusqlite::Error| DiscloseError::Partition {
            partition: *p,
            message: e.to_string(),
        };
        let conn = schema::open_for_read(&p.path_in(&store.path)).map_err(err)?;
        if !schema::is_ready(&conn).map_err(err)? {
            // Being created this very moment: no head yet, nothing in it.
            continue;
        }
        if let Some((head, signature)) = integrity::latest_head(&conn).map_err(err)? {
            out.push(HeadRef {
                partition: p.to_string(),
                node: None,
                node_key_fingerprint: None,
                seq: head.seq,
                size: head.size,
                root: hex(&head.root),
                at: rfc3339(head.at_us),
                signature: hex(&signature),
            });
        }
    }
    Ok(out)
}

/// Writes records as JSON (an array), CSV (a header row, then a row each) or an ETSI
/// RetainedDataMessage answering the request `header` names.
pub fn render(records: &[Found], format: Format, header: &super::etsi::Header<'_>) -> Vec<u8> {
    match format {
        Format::EtsiXml => super::etsi::render(header, records),
        Format::Json => {
            let rows: Vec<serde_json::Value> = records.iter().map(found_json).collect();
            let mut out = serde_json::to_vec_pretty(&rows).unwrap_or_default();
            out.push(b'\n');
            out
        }
        Format::Csv => {
            let mut out = CSV_HEADER.join(",");
            out.push('\n');
            for r in records {
                out.push_str(&found_csv(r));
                out.push('\n');
            }
            out.into_bytes()
        }
    }
}

/// A JSON array of records written one at a time, hashed as it goes: the same bytes
/// as [`render`] in JSON, without holding the records. For exports with no upper
/// bound (an account's whole history at contract end).
pub struct JsonArrayFile {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    digest: digest::Context,
    count: u64,
}

impl JsonArrayFile {
    /// Creates `path`, failing if it exists.
    pub fn create(path: &Path) -> Result<JsonArrayFile, DiscloseError> {
        let f = create_new(path)?;
        Ok(JsonArrayFile {
            path: path.to_owned(),
            out: std::io::BufWriter::with_capacity(256 * 1024, f),
            digest: digest::Context::new(&digest::SHA256),
            count: 0,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), DiscloseError> {
        self.digest.update(bytes);
        self.out
            .write_all(bytes)
            .map_err(|source| DiscloseError::Io {
                path: self.path.clone(),
                source,
            })
    }

    pub fn push(&mut self, value: &serde_json::Value) -> Result<(), DiscloseError> {
        let pretty = serde_json::to_string_pretty(value).unwrap_or_default();
        let sep: &[u8] = if self.count == 0 { b"[\n  " } else { b",\n  " };
        self.write(sep)?;
        // JSON strings cannot hold a raw newline: every one is a line break to indent.
        self.write(pretty.replace('\n', "\n  ").as_bytes())?;
        self.count += 1;
        Ok(())
    }

    /// Closes the array, syncs the file; returns (records, SHA-256 hex).
    pub fn finish(mut self) -> Result<(u64, String), DiscloseError> {
        let end: &[u8] = if self.count == 0 { b"[]\n" } else { b"\n]\n" };
        self.write(end)?;
        let io = |source| DiscloseError::Io {
            path: self.path.clone(),
            source,
        };
        let f = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        Ok((self.count, hex(self.digest.finish().as_ref())))
    }
}

pub use crate::store::keys::sha256_hex;

/// Creates `path` with `bytes`, failing if it exists (never overwrites).
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), DiscloseError> {
    let io = |source| DiscloseError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = create_new(path)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Creates `path` for writing; an existing file is [`DiscloseError::Exists`].
fn create_new(path: &Path) -> Result<std::fs::File, DiscloseError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                DiscloseError::Exists(path.to_owned())
            } else {
                DiscloseError::Io {
                    path: path.to_owned(),
                    source: e,
                }
            }
        })
}

/// Everything a disclosure needs from the installation.
pub struct Installation<'a> {
    pub store: &'a StoreConfig,
    pub keyring: &'a Keyring,
    pub master: &'a MasterKey,
    pub signer: &'a Ed25519KeyPair,
    /// The provider's identifier in ETSI exports (`compliance.csp-id`; empty: none).
    pub csp_id: &'a str,
}

/// Discloses an approved case to `out` (and its manifest). A case that is not
/// approved is refused, and the refusal audited. The disclosure is audited before
/// this returns; if the audit cannot be written, the files are removed again.
#[allow(clippy::too_many_arguments)]
pub fn disclose(
    inst: &Installation<'_>,
    ledger: &mut Ledger,
    officer: &Officer,
    purpose: Purpose,
    case_id: i64,
    format: Format,
    out: &Path,
    now: Micros,
) -> Result<Disclosure, DiscloseError> {
    purpose.must_be(Purpose::LawfulRequest, "a disclosure")?;
    // Before anything is read: a refused ETSI export must not have decrypted records.
    if format == Format::EtsiXml && inst.csp_id.trim().is_empty() {
        return Err(DiscloseError::NoCspId);
    }
    let case = ledger.case(case_id)?;
    if case.state != State::Approved {
        let e = CaseError::WrongState {
            id: case_id,
            state: case.state.as_str(),
            needed: "approved",
        };
        ledger.audit(
            now,
            &officer.name,
            "case.disclose.refused",
            serde_json::json!({"case": case_id, "reason": e.to_string()}),
        )?;
        return Err(e.into());
    }
    let manifest_file = manifest_path(out);
    let sig_file = signature_path(&manifest_file);
    for p in [out, manifest_file.as_path(), sig_file.as_path()] {
        if p.exists() {
            return Err(DiscloseError::Exists(p.to_owned()));
        }
    }
    let criteria = ledger.case_criteria(inst.master, case_id)?;
    let d = &case.details;
    let found = collect(inst.store, inst.keyring, &criteria, d.since, d.until)?;
    let header = super::etsi::Header {
        country: &d.request.country,
        organisation: &d.request.organisation,
        request_number: &d.request.number,
        csp_id: inst.csp_id,
        at: now,
    };
    let body = render(&found.records, format, &header);
    let tags = case
        .criteria_tags
        .iter()
        .map(|(k, t)| TaggedCriterion {
            kind: k.as_str().into(),
            tag: t.clone(),
        })
        .collect();
    let describe = Describe {
        kind: "relaylog disclosure v1",
        out,
        export_sha256: sha256_hex(&body),
        found: &found,
        records: found.records.len() as u64,
        criteria: tags,
        window: (d.since, d.until),
        format,
    };
    let manifest = Manifest {
        case: case_id,
        request: d.request.to_string(),
        authority: d.authority.clone(),
        legal_basis: d.legal_basis.clone(),
        order_reference: d.order_reference.clone(),
        ..Manifest::describe(inst, describe, officer, now)?
    };
    let details = serde_json::json!({
        "case": case_id,
        "criteria": manifest.criteria,
        "records": manifest.records,
        "record_age_months": age_buckets(&found.records, case.opened_at),
        "export_sha256": manifest.export_sha256,
        "format": format,
        "purpose": purpose,
    });
    write_signed(inst, out, &body, &manifest, || {
        Ok(ledger.audit(now, &officer.name, "case.disclose", details)?)
    })
}

/// Age bands of the records at the time of the request, for the yearly statistics
/// (how old traffic data is when authorities ask for it): `[0-3), [3-6), [6-12),
/// 12 and more` months.
pub const AGE_BANDS: [&str; 4] = ["0-3", "3-6", "6-12", "12+"];

fn age_buckets(records: &[Found], requested: Micros) -> serde_json::Value {
    const MONTH_US: i64 = 30 * 86_400_000_000;
    let mut counts = [0u64; 4];
    for r in records {
        let months = (requested - r.at).max(0) / MONTH_US;
        let band = match months {
            0..3 => 0,
            3..6 => 1,
            6..12 => 2,
            _ => 3,
        };
        counts[band] += 1;
    }
    AGE_BANDS
        .iter()
        .zip(counts)
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Writes the export, its manifest and the manifest's signature (none overwriting),
/// then runs `audit`; if any step fails, removes what was written.
fn write_signed(
    inst: &Installation<'_>,
    out: &Path,
    body: &[u8],
    manifest: &Manifest,
    audit: impl FnOnce() -> Result<i64, DiscloseError>,
) -> Result<Disclosure, DiscloseError> {
    let manifest_file = manifest_path(out);
    let sig_file = signature_path(&manifest_file);
    write_new(out, body)?;
    let written = write_manifest(inst, &manifest_file, manifest).and_then(|()| audit().map(|_| ()));
    if let Err(e) = written {
        for p in [out, manifest_file.as_path(), sig_file.as_path()] {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    Ok(Disclosure {
        export: out.to_owned(),
        manifest: manifest_file,
        records: manifest.records,
        sha256: manifest.export_sha256.clone(),
    })
}

/// Writes a manifest and, beside it (`.sig`), the Ed25519 signature over its exact
/// bytes. Neither file may exist.
pub fn write_manifest(
    inst: &Installation<'_>,
    manifest_file: &Path,
    manifest: &Manifest,
) -> Result<(), DiscloseError> {
    let mut bytes = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    bytes.push(b'\n');
    let signature = inst.signer.sign(&bytes);
    write_new(manifest_file, &bytes)?;
    write_new(
        &signature_path(manifest_file),
        format!("{}\n", hex(signature.as_ref())).as_bytes(),
    )
}

/// A data subject's access request (GDPR art. 15, and art. 20 portability): every
/// record held about one number or address, as recipient or as originator (see
/// [`Criterion::every_role`]), in every retained partition, each with
/// the date it will be deleted. Records that an open or approved confidential case
/// covers are left out (telling the subject would defeat the case). Signed and
/// audited like a disclosure. Given the subject request it answers (`request`), it
/// closes that request in the export's audit entry's transaction.
#[allow(clippy::too_many_arguments)]
pub fn subject_export(
    inst: &Installation<'_>,
    ledger: &mut Ledger,
    officer: &Officer,
    purpose: Purpose,
    subject: &Criterion,
    request: Option<i64>,
    retention: crate::config::Retention,
    out: &Path,
    now: Micros,
) -> Result<Disclosure, DiscloseError> {
    purpose.must_be(Purpose::SubjectAccess, "a subject's export")?;
    let manifest_file = manifest_path(out);
    for p in [
        out,
        manifest_file.as_path(),
        signature_path(&manifest_file).as_path(),
    ] {
        if p.exists() {
            return Err(DiscloseError::Exists(p.to_owned()));
        }
    }
    let (since, until) = everything_until(now);
    let found = collect(
        inst.store,
        inst.keyring,
        &subject.every_role(),
        since,
        until,
    )?;
    let mut hidden = std::collections::HashSet::new();
    for case in ledger.cases()? {
        if !case.details.confidential || !matches!(case.state, State::Open | State::Approved) {
            continue;
        }
        let criteria = ledger.criteria_of(inst.master, case.id)?;
        let covered = collect(
            inst.store,
            inst.keyring,
            &criteria,
            case.details.since,
            case.details.until,
        )?;
        // A record is (partition, node, id): ids are each node's own.
        hidden.extend(
            covered
                .records
                .iter()
                .map(|f| (f.partition, f.node, f.record_id)),
        );
    }
    let records: Vec<&Found> = found
        .records
        .iter()
        .filter(|f| !hidden.contains(&(f.partition, f.node, f.record_id)))
        .collect();
    let withheld = found.records.len() - records.len();
    let rows: Vec<serde_json::Value> = records
        .iter()
        .map(|f| {
            let mut v = found_json(f);
            let end = crate::clock::micros_to_datetime(f.partition.end_micros());
            v["retained_until"] =
                serde_json::Value::String(retention.expires(end).date_naive().to_string());
            v
        })
        .collect();
    let body_json = serde_json::json!({
        "subject": {"kind": subject.kind.as_str(), "value": subject.value},
        "generated_at": rfc3339(now),
        "records": rows,
    });
    let mut body = serde_json::to_vec_pretty(&body_json).unwrap_or_default();
    body.push(b'\n');
    let tag = inst.master.audit_tag(subject.kind.as_str(), &subject.value);
    let describe = Describe {
        kind: "relaylog subject export v1",
        out,
        export_sha256: sha256_hex(&body),
        found: &found,
        records: records.len() as u64,
        criteria: vec![TaggedCriterion {
            kind: subject.kind.as_str().into(),
            tag: tag.clone(),
        }],
        window: (since, until),
        format: Format::Json,
    };
    let manifest = Manifest {
        request: "data subject access".into(),
        authority: "data subject".into(),
        legal_basis: "GDPR art. 15 and 20".into(),
        ..Manifest::describe(inst, describe, officer, now)?
    };
    let details = serde_json::json!({
        "criteria": [{"kind": subject.kind.as_str(), "tag": tag}],
        "records": records.len(),
        "withheld_for_confidential_cases": withheld,
        "export_sha256": manifest.export_sha256,
        "purpose": purpose,
        "request": request,
    });
    write_signed(inst, out, &body, &manifest, || match request {
        Some(id) => Ok(ledger.audit_answer(id, now, &officer.name, details)?),
        None => Ok(ledger.audit(now, &officer.name, "subject.export", details)?),
    })
}

/// Checks a manifest's signature (over its exact bytes) with `public_key`, then the
/// export's digest. Returns the manifest.
pub fn verify_export(manifest_file: &Path, public_key: &[u8]) -> Result<Manifest, VerifyError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| VerifyError::Io {
            path: p.to_owned(),
            source,
        })
    };
    let bytes = read(manifest_file)?;
    let sig_text = read(&signature_path(manifest_file))?;
    let manifest = verify_manifest(&bytes, &sig_text, public_key)?;
    let export = manifest_file
        .parent()
        .unwrap_or(Path::new("."))
        .join(&manifest.export);
    let actual = sha256_hex(&read(&export)?);
    if actual != manifest.export_sha256 {
        return Err(VerifyError::Digest {
            expected: manifest.export_sha256.clone(),
            actual,
        });
    }
    Ok(manifest)
}

/// A manifest's bytes checked against its signature file's (hex, white space
/// around it allowed) with `public_key`, then read: the part of [`verify_export`]
/// that takes no file.
pub fn verify_manifest(
    bytes: &[u8],
    sig_text: &[u8],
    public_key: &[u8],
) -> Result<Manifest, VerifyError> {
    let sig = unhex(String::from_utf8_lossy(sig_text).trim()).ok_or(VerifyError::Signature)?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(bytes, &sig)
        .map_err(|_| VerifyError::Signature)?;
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if ![
        "relaylog disclosure v1",
        "relaylog subject export v1",
        "relaylog deletion statement v1",
    ]
    .contains(&manifest.kind.as_str())
    {
        return Err(VerifyError::Malformed(format!(
            "unknown kind `{}`",
            manifest.kind
        )));
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A streamed export is byte for byte what `render` makes of the same records, so
    /// both kinds of export read, and hash, alike.
    #[test]
    fn a_streamed_json_array_is_the_rendered_one() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<serde_json::Value> = (0..3)
            .map(|n| {
                serde_json::json!({
                    "time": format!("2026-11-2{n}T00:00:00Z"),
                    "recipient": "+31612345678",
                    "outcome": {"status": 202, "nested": [1, "a\nb"]},
                    "empty": {},
                })
            })
            .collect();
        for n in 0..=values.len() {
            let path = dir.path().join(format!("{n}.json"));
            let mut f = JsonArrayFile::create(&path).unwrap();
            for v in &values[..n] {
                f.push(v).unwrap();
            }
            let (count, sha) = f.finish().unwrap();
            let mut expected = serde_json::to_vec_pretty(&values[..n]).unwrap();
            expected.push(b'\n');
            let written = std::fs::read(&path).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&expected)
            );
            assert_eq!(count, n as u64);
            assert_eq!(sha, sha256_hex(&expected));
            assert!(matches!(
                JsonArrayFile::create(&path),
                Err(DiscloseError::Exists(_))
            ));
        }
    }
}
