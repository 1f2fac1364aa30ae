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

use super::cases::{Criterion, IdentifierKind};
use super::disclosure::{
    Describe, DiscloseError, Erased, Format, Installation, Manifest, TaggedCriterion, collect,
    everything_until, render, signature_path, write_manifest, write_new,
};
use super::officers::Officer;
use crate::clock::Micros;
use crate::ledger::Ledger;
use crate::store::integrity;
use crate::store::partition::PartitionId;

#[derive(Debug)]
pub struct Offboarding {
    pub export: PathBuf,
    pub statement: PathBuf,
    pub records: u64,
    pub outcomes: u64,
    pub partitions: Vec<PartitionId>,
}

/// Exports `account`'s records to `dir/<account>-records.json`, erases them and their
/// outcome events from every partition, and writes `dir/<account>-deletion.json`
/// (signed, `.sig` beside it; `verify-export` checks it). Audited.
pub fn offboard(
    inst: &Installation<'_>,
    ledger: &mut Ledger,
    officer: &Officer,
    account: &str,
    dir: &Path,
    now: Micros,
) -> Result<Offboarding, DiscloseError> {
    let account = crate::canonical::canonical_account(account);
    let export = dir.join(format!("{}-records.json", safe_name(&account)));
    let statement = dir.join(format!("{}-deletion.json", safe_name(&account)));
    for p in [&export, &statement, &signature_path(&statement)] {
        if p.exists() {
            return Err(DiscloseError::Exists(p.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| DiscloseError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let criterion = Criterion {
        kind: IdentifierKind::Account,
        value: account.clone(),
    };
    let (since, until) = everything_until(now);
    let found = collect(
        inst.store,
        inst.keyring,
        std::slice::from_ref(&criterion),
        since,
        until,
    )?;
    // 1. The customer's copy, first: nothing is erased that was not exported.
    let body = render(&found.records, Format::Json);
    write_new(&export, &body)?;
    // 2. Erase, partition by partition.
    let mut by_partition: BTreeMap<PartitionId, Vec<i64>> = BTreeMap::new();
    for f in &found.records {
        by_partition
            .entry(f.partition)
            .or_default()
            .push(f.record_id);
    }
    let reason = format!(
        "contract end of account tag {}",
        inst.master.audit_tag("account", &account)
    );
    let (mut records, mut outcomes) = (0u64, 0u64);
    for (p, ids) in &by_partition {
        let mut conn =
            crate::store::schema::open_for_read(&p.path_in(&inst.store.path)).map_err(|e| {
                DiscloseError::Partition {
                    partition: *p,
                    message: e.to_string(),
                }
            })?;
        let (r, o) = integrity::erase_records(&mut conn, *p, inst.signer, now, &reason, ids)
            .map_err(|e| DiscloseError::Partition {
                partition: *p,
                message: e.to_string(),
            })?;
        records += r as u64;
        outcomes += o as u64;
    }
    // 3. The statement: signed like a disclosure manifest, over the export.
    let tag = inst.master.audit_tag("account", &account);
    let touched: Vec<PartitionId> = by_partition.keys().copied().collect();
    let describe = Describe {
        kind: "relaylog deletion statement v1",
        out: &export,
        body: &body,
        found: &found,
        records,
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
