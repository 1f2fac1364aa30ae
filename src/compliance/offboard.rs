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
    DiscloseError, Format, Installation, Manifest, TaggedCriterion, collect, heads, render,
    sha256_hex, signature_path, write_new,
};
use super::officers::Officer;
use crate::clock::Micros;
use crate::export::rfc3339;
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
    let until = now + 2 * 86_400_000_000;
    let found = collect(
        inst.store,
        inst.keyring,
        std::slice::from_ref(&criterion),
        0,
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
    let manifest = Manifest {
        kind: "relaylog deletion statement v1".into(),
        case: 0,
        request: format!("contract end: account {account}"),
        authority: String::new(),
        legal_basis: "GDPR art. 28(3)(g): return and deletion at the end of the contract".into(),
        order_reference: format!(
            "{records} records and {outcomes} outcome events erased from {} partition(s)",
            touched.len()
        ),
        criteria: vec![TaggedCriterion {
            kind: "account".into(),
            tag: tag.clone(),
        }],
        since: rfc3339(0),
        until: rfc3339(until),
        format: Format::Json,
        export: export
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        export_sha256: sha256_hex(&body),
        records,
        collisions_dropped: found.collisions,
        partitions: heads(inst.store, &touched)?,
        partitions_unreadable: found.unreadable.iter().map(|p| p.to_string()).collect(),
        officer: officer.name.clone(),
        created_at: rfc3339(now),
        key_fingerprint: sha256_hex(ring::signature::KeyPair::public_key(inst.signer).as_ref()),
    };
    let mut bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    bytes.push(b'\n');
    write_new(&statement, &bytes)?;
    let sig = inst.signer.sign(&bytes);
    write_new(
        &signature_path(&statement),
        format!("{}\n", crate::store::keys::hex(sig.as_ref())).as_bytes(),
    )?;
    ledger.audit(
        now,
        &officer.name,
        "account.offboard",
        serde_json::json!({
            "account": tag,
            "records": records,
            "outcomes": outcomes,
            "partitions": touched.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
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
