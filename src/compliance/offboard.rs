//! Contract end: a customer's account is exported, then erased from every partition,
//! and a signed deletion statement says what was removed.
//!
//! Erasure keeps the integrity proofs intact: each partition gets a signed erasure
//! statement holding the Merkle leaves of the rows it removes (`store::integrity::
//! erase_records`), so `verify` still recomputes every signed head and reports the
//! erasure instead of damage. The leaves are hashes of sealed rows: nothing of the
//! account's traffic can be read from them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::disclosure::{
    Collected, Describe, DiscloseError, Erased, Format, Installation, JsonArrayFile, Manifest,
    TaggedCriterion, everything_until, readable, signature_path, write_manifest,
};
use super::officers::Officer;
use super::purpose::Purpose;
use crate::clock::Micros;
use crate::config::Backend;
use crate::export::found_json;
use crate::ledger::Ledger;
use crate::store::IndexKind;
use crate::store::partition::PartitionId;
use crate::store::query::{self, Criteria};
use crate::store::{integrity, pgstore};

#[derive(Debug)]
pub struct Offboarding {
    pub export: PathBuf,
    pub statement: PathBuf,
    pub records: u64,
    pub outcomes: u64,
    pub partitions: Vec<PartitionId>,
}

/// Record ids one erasure statement covers at most: a statement holds ~41 bytes per
/// row, and on SQLite its transaction holds the partition's write lock while it runs
/// (on PostgreSQL: [`PG_ERASE_CHUNK`]).
pub const ERASE_CHUNK: usize = 100_000;

/// Exports `account`'s records to `dir/<stem>-records.json`, erases them and their
/// outcome events from every partition, and writes `dir/<stem>-deletion.json`
/// (signed, `.sig` beside it; `verify-export` checks it). Audited. The stem is the
/// account's name unless one is given: the API gives a neutral one, since its file
/// names reach the audit log, which names accounts only by tag.
///
/// Memory stays bounded whatever the account's size: the export is streamed to disk
/// (and synced) before anything is erased, and erasure then goes partition by
/// partition, [`ERASE_CHUNK`] records per signed statement. Only records that are in
/// the export are erased: a message recorded meanwhile stays (its id is above the
/// highest exported in its partition).
pub fn offboard(
    inst: &Installation<'_>,
    ledger: &mut Ledger,
    officer: &Officer,
    purpose: Purpose,
    account: &str,
    out: Out<'_>,
    now: Micros,
) -> Result<Offboarding, DiscloseError> {
    offboard_in_chunks(
        inst,
        ledger,
        officer,
        purpose,
        account,
        out,
        now,
        ERASE_CHUNK,
    )
}

/// Where offboarding writes its files.
#[derive(Debug, Clone, Copy)]
pub struct Out<'a> {
    pub dir: &'a Path,
    /// File name stem; `None`: the account's name.
    pub stem: Option<&'a str>,
}

/// [`offboard`] with the erasure chunk as a parameter (tests use small ones).
#[allow(clippy::too_many_arguments)]
pub fn offboard_in_chunks(
    inst: &Installation<'_>,
    ledger: &mut Ledger,
    officer: &Officer,
    purpose: Purpose,
    account: &str,
    out: Out<'_>,
    now: Micros,
    chunk: usize,
) -> Result<Offboarding, DiscloseError> {
    purpose.must_be(Purpose::ContractEnd, "an offboarding")?;
    let account = crate::canonical::canonical_account(account);
    let dir = out.dir;
    let stem = safe_name(out.stem.unwrap_or(&account));
    let export = dir.join(format!("{stem}-records.json"));
    let statement = dir.join(format!("{stem}-deletion.json"));
    for p in [&export, &statement, &signature_path(&statement)] {
        if p.exists() {
            return Err(DiscloseError::Exists(p.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| DiscloseError::Io {
        path: dir.to_owned(),
        source,
    })?;
    // Before the export: what would stop the erasure (on PostgreSQL, this node not
    // registered, the database away) stops it with nothing written.
    let eraser = Eraser::new(inst)?;
    let (since, until) = everything_until(now);
    let criteria = |since, until| Criteria {
        kind: IndexKind::Account,
        value: account.clone(),
        since,
        until,
        // What is handed over or erased never rests on a filter's "absent".
        filters: false,
    };

    // 1. The customer's copy, first and synced: nothing is erased that was not
    // exported. Per partition, and in it per node (PostgreSQL; 0 on SQLite): the
    // highest record id exported.
    let mut file = JsonArrayFile::create(&export)?;
    let mut exported: BTreeMap<PartitionId, Tops> = BTreeMap::new();
    let mut failed = None;
    let stats = query::run(inst.store, inst.keyring, &criteria(since, until), |f| {
        if failed.is_some() {
            return;
        }
        let tops = exported.entry(f.partition).or_default();
        let top = tops.entry(f.node).or_insert(f.record_id);
        *top = (*top).max(f.record_id);
        if let Err(e) = file.push(&found_json(&f)) {
            failed = Some(e);
        }
    });
    let stats = match (stats, failed) {
        (Ok(stats), None) => stats,
        (Err(e), _) => {
            let _ = std::fs::remove_file(&export);
            return Err(e.into());
        }
        (_, Some(e)) => {
            let _ = std::fs::remove_file(&export);
            return Err(e);
        }
    };
    let (exported_records, export_sha256) = file.finish()?;

    // 2. Erase, partition by partition, chunk by chunk.
    let tag = inst.master.audit_tag("account", &account);
    let reason = format!("contract end of account tag {tag}");
    let (mut records, mut outcomes) = (0u64, 0u64);
    let mut touched = Vec::new();
    for (&p, tops) in &exported {
        let erased = eraser.erase_partition(
            &criteria(p.start_micros(), p.end_micros()),
            p,
            tops,
            chunk,
            now,
            &reason,
        );
        match erased {
            Ok((r, o)) => {
                records += r;
                outcomes += o;
                touched.push(p);
            }
            Err(e) => {
                // What is erased stays erased (each under its own signed statement);
                // the audit log says how far it got before the error is returned.
                ledger.audit(
                    now,
                    &officer.name,
                    "account.offboard.incomplete",
                    serde_json::json!({
                        "account": tag,
                        "records": records,
                        "outcomes": outcomes,
                        "partitions": touched.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                        "failed_partition": p.to_string(),
                        "export_sha256": export_sha256,
                        "purpose": purpose,
                    }),
                )?;
                return Err(e);
            }
        }
    }

    // 3. The statement: signed like a disclosure manifest, over the export.
    let unreadable = stats.partitions_shredded;
    let found = Collected {
        records: Vec::new(),
        read: readable(inst.store, since, until, &unreadable)?,
        unreadable,
        collisions: stats.collisions,
    };
    let describe = Describe {
        kind: "relaylog deletion statement v1",
        out: &export,
        export_sha256,
        found: &found,
        records: exported_records,
        criteria: vec![TaggedCriterion {
            kind: "account".into(),
            tag: tag.clone(),
        }],
        window: (since, until),
        format: Format::Json,
    };
    let manifest = Manifest {
        request: format!("contract end: account {account}"),
        legal_basis: "GDPR art. 28(3)(g): return and deletion at the end of the contract".into(),
        erased: Some(Erased {
            account: account.clone(),
            records,
            outcome_events: outcomes,
            partitions: touched.iter().map(|p| p.to_string()).collect(),
        }),
        ..Manifest::describe(inst, describe, officer, now)?
    };
    write_manifest(inst, &statement, &manifest)?;
    ledger.audit(
        now,
        &officer.name,
        "account.offboard",
        serde_json::json!({
            "account": tag,
            "records": records,
            "outcomes": outcomes,
            "partitions": manifest.erased.as_ref().map(|e| e.partitions.clone()),
            "export_sha256": manifest.export_sha256,
            "purpose": purpose,
        }),
    )?;
    Ok(Offboarding {
        export,
        statement,
        records,
        outcomes,
        partitions: touched,
    })
}

/// Erasure on either backend, under the installation's signing key (on PostgreSQL
/// through this node's registration there: `pg`).
struct Eraser<'a> {
    inst: &'a Installation<'a>,
    pg: Option<pgstore::Eraser<'a>>,
}

impl<'a> Eraser<'a> {
    fn new(inst: &'a Installation<'a>) -> Result<Eraser<'a>, DiscloseError> {
        let pg = match &inst.store.backend {
            Backend::Sqlite => None,
            Backend::Postgres(pg) => Some(pgstore::Eraser::new(
                pg,
                inst.signer,
                &inst.master.node_tagger(),
            )?),
        };
        Ok(Eraser { inst, pg })
    }

    /// Erases the account's records of one partition with ids up to their node's top
    /// (the highest exported; on PostgreSQL each node's tree on its own), `chunk` per
    /// signed statement (at most [`PG_ERASE_CHUNK`] on PostgreSQL). Returns (records,
    /// outcome events).
    fn erase_partition(
        &self,
        criteria: &Criteria,
        p: PartitionId,
        tops: &Tops,
        chunk: usize,
        now: Micros,
        reason: &str,
    ) -> Result<(u64, u64), DiscloseError> {
        let inst = self.inst;
        let mut ids: BTreeMap<i16, Vec<i64>> = BTreeMap::new();
        query::run(inst.store, inst.keyring, criteria, |f| {
            if f.partition == p && tops.get(&f.node).is_some_and(|&top| f.record_id <= top) {
                ids.entry(f.node).or_default().push(f.record_id);
            }
        })?;
        let failed = |message: String| DiscloseError::Partition {
            partition: p,
            message,
        };
        let (mut records, mut outcomes) = (0u64, 0u64);
        let mut add = |(r, o): (usize, usize)| {
            records += r as u64;
            outcomes += o as u64;
        };
        match &self.pg {
            None => {
                let path = p.path_in(&inst.store.path);
                let mut conn = crate::store::schema::open_for_read(&path)
                    .map_err(|e| failed(e.to_string()))?;
                for ids in ids.values().flat_map(|ids| ids.chunks(chunk.max(1))) {
                    add(
                        integrity::erase_records(&mut conn, p, inst.signer, now, reason, ids)
                            .map_err(|e| failed(e.to_string()))?,
                    );
                }
            }
            Some(pg) => {
                for (&node, ids) in &ids {
                    for ids in ids.chunks(chunk.clamp(1, PG_ERASE_CHUNK)) {
                        add(pg
                            .erase(p, node, now, reason, ids)
                            .map_err(|e| failed(e.to_string()))?);
                    }
                }
            }
        }
        Ok((records, outcomes))
    }
}

/// Per node (0 on SQLite), the highest record id exported of a partition.
type Tops = BTreeMap<i16, i64>;

/// Record ids one erasure statement covers at most on PostgreSQL: its rows (sealed
/// values and all) are read into memory, and erasures take turns (an advisory lock).
pub const PG_ERASE_CHUNK: usize = 10_000;

/// An account name as a file name: anything but `[A-Za-z0-9._-]` becomes `_`.
fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
