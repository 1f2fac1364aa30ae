//! Lookups by identifier and time window.
//!
//! For each partition overlapping the window, in one read transaction: compute the
//! identifier's blind index under that partition's index key, seek `(bucket, tag)` in
//! its `ix_*` table once per bucket in the window (keeping the ids up to
//! `indexed_through`), then scan the unindexed tail (`id > indexed_through`, bounded by
//! the writer's flush cap, see `index`) by its tag column.
//! Each hit is decrypted and kept only if the decrypted value equals the identifier
//! (a truncated HMAC can collide). Sealed values are never scanned.

use std::path::Path;

use rusqlite::{OptionalExtension, params};

use super::codec::{self, SealedFields};
use super::keys::{IndexKind, KeyError, Keyring};
use super::partition::{self, PartitionId};
use super::postings;
use super::schema;
use crate::clock::Micros;
use crate::record::{Outcome, Protocol, Service, SubmissionId};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot list the store directory {path}: {source}")]
    List {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("partition {partition}: {message}")]
    Partition {
        partition: PartitionId,
        message: String,
    },
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("the time window is empty: --since must be before --until")]
    EmptyWindow,
}

/// What to look for.
#[derive(Debug, Clone)]
pub struct Criteria {
    pub kind: IndexKind,
    /// The canonical value (see `canonical`): E.164 number, account, canonical IP.
    pub value: String,
    pub since: Micros,
    /// Exclusive.
    pub until: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundOutcome {
    pub outcome: Outcome,
    pub at: Micros,
    pub upstream_status: Option<u16>,
    pub gateway_code: Option<i32>,
    pub upstream_message_id: Option<String>,
    pub enhanced_status: Option<String>,
    pub size_bytes: Option<u64>,
}

/// One matching record, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub partition: PartitionId,
    pub record_id: i64,
    pub submission: SubmissionId,
    pub ordinal: u32,
    pub at: Micros,
    pub protocol: Protocol,
    pub service: Service,
    pub segments: u16,
    pub fields: SealedFields,
    /// The upstream's answer: the latest event about this record other than a receipt.
    pub outcome: Option<FoundOutcome>,
    /// The latest delivery receipt for this record.
    pub receipt: Option<FoundReceipt>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundReceipt {
    /// When relaylog saw it.
    pub at: Micros,
    pub state: Option<String>,
    pub error: Option<String>,
    pub done: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct QueryStats {
    pub partitions_searched: usize,
    /// Partitions in the window whose keys are gone: their records cannot be read.
    pub partitions_shredded: Vec<PartitionId>,
    /// Index hits whose decrypted value did not match (truncated-HMAC collisions).
    pub collisions: u64,
    pub matches: u64,
}

fn part_err(partition: PartitionId) -> impl Fn(rusqlite::Error) -> QueryError {
    move |e| QueryError::Partition {
        partition,
        message: e.to_string(),
    }
}

impl IndexKind {
    fn table(self) -> &'static str {
        schema::INDEX_TABLES[self as usize - 1]
    }

    fn column(self) -> &'static str {
        match self {
            IndexKind::Account => "account_ix",
            IndexKind::ClientIp => "ip_ix",
            IndexKind::Originator => "originator_ix",
            IndexKind::Recipient => "recipient_ix",
        }
    }

    /// Does the decrypted record hold `value` (in its indexed form) in this role?
    fn matches(self, fields: &SealedFields, value: &str) -> bool {
        match self {
            IndexKind::Account => fields.account == value,
            IndexKind::ClientIp => {
                crate::canonical::canonical_ip(fields.client_ip).to_string() == value
            }
            IndexKind::Originator => fields
                .originator
                .as_ref()
                .is_some_and(|o| o.index_value() == value),
            IndexKind::Recipient => fields.recipient.index_value() == value,
        }
    }
}

/// Runs a lookup, handing each match to `emit` in time order within each partition,
/// partitions oldest first.
pub fn run(
    store_dir: &Path,
    keyring: &Keyring,
    criteria: &Criteria,
    mut emit: impl FnMut(Found),
) -> Result<QueryStats, QueryError> {
    if criteria.until <= criteria.since {
        return Err(QueryError::EmptyWindow);
    }
    let partitions = partition::list(store_dir).map_err(|source| QueryError::List {
        path: store_dir.to_owned(),
        source,
    })?;
    let mut stats = QueryStats::default();
    for p in partitions
        .into_iter()
        .filter(|p| p.start_micros() < criteria.until && p.end_micros() > criteria.since)
    {
        let keys = match keyring.keys(p) {
            Ok(k) => k,
            Err(KeyError::Shredded { .. }) => {
                stats.partitions_shredded.push(p);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        stats.partitions_searched += 1;
        let conn = schema::open_for_read(&p.path_in(store_dir)).map_err(part_err(p))?;
        if !schema::is_ready(&conn).map_err(part_err(p))? {
            // Being created this very moment: nothing in it yet.
            continue;
        }
        let since = criteria.since.max(p.start_micros());
        let until = criteria.until.min(p.end_micros());
        let tag = keys.blind_index(criteria.kind, &criteria.value);
        let tx = conn.unchecked_transaction().map_err(part_err(p))?;
        let through: i64 = tx
            .query_row(schema::GET_INDEXED_THROUGH, [], |r| r.get(0))
            .map_err(part_err(p))?;
        const COLUMNS: &str =
            "r.id, r.submission, r.ordinal, r.at_us, r.protocol, r.service, r.segments, r.sealed";
        let postings_sql = format!(
            "SELECT ids FROM {} WHERE bucket = ?1 AND tag = ?2",
            criteria.kind.table()
        );
        let by_id = format!(
            "SELECT {COLUMNS} FROM record r WHERE r.id = ?1 AND r.at_us >= ?2 AND r.at_us < ?3"
        );
        let tail = format!(
            "SELECT {COLUMNS} FROM record r WHERE r.id > ?1 AND r.{} = ?2 AND r.at_us >= ?3 AND r.at_us < ?4 ORDER BY r.id",
            criteria.kind.column()
        );
        let columns = schema::outcome_columns(&tx).map_err(part_err(p))?;
        // An event is about this record when it names its ordinal or none.
        let about = if columns.per_recipient {
            "submission = ?1 AND (ordinal IS NULL OR ordinal = ?2)"
        } else {
            // Every event is the submission's; `?2` is still bound, so it is named.
            "submission = ?1 AND ?2 IS NOT NULL"
        };
        let receipt = Outcome::Receipt as u8;
        let mut outcome_stmt = tx
            .prepare(&format!(
                "SELECT {} FROM outcome WHERE {about} AND outcome != {receipt} ORDER BY id DESC LIMIT 1",
                columns.select
            ))
            .map_err(part_err(p))?;
        let mut receipt_stmt = tx
            .prepare(&format!(
                "SELECT at_us, {} FROM outcome WHERE {about} AND outcome = {receipt} ORDER BY id DESC LIMIT 1",
                if columns.per_recipient {
                    "receipt_state, receipt_error, receipt_done"
                } else {
                    "NULL, NULL, NULL"
                }
            ))
            .map_err(part_err(p))?;
        let mut take = |row: &rusqlite::Row<'_>| -> Result<(), QueryError> {
            let record_id: i64 = row.get(0).map_err(part_err(p))?;
            let submission = SubmissionId(row.get(1).map_err(part_err(p))?);
            let ordinal: u32 = row.get(2).map_err(part_err(p))?;
            let sealed: Vec<u8> = row.get(7).map_err(part_err(p))?;
            let corrupt = |what: &str| QueryError::Partition {
                partition: p,
                message: format!("record {record_id}: {what}"),
            };
            let plain = keys
                .open(&codec::record_aad(submission, ordinal), &sealed)
                .map_err(|_| corrupt("sealed value does not open (damaged or moved)"))?;
            let fields = codec::decode(&plain).map_err(|_| corrupt("sealed payload malformed"))?;
            if !criteria.kind.matches(&fields, &criteria.value) {
                stats.collisions += 1;
                return Ok(());
            }
            let outcome = outcome_stmt
                .query_row(params![submission.0, ordinal], |r| {
                    Ok((
                        (
                            r.get::<_, u8>(3)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<u16>>(4)?,
                            r.get::<_, Option<i32>>(5)?,
                            r.get::<_, Option<Vec<u8>>>(6)?,
                        ),
                        r.get::<_, Option<String>>(7)?,
                        r.get::<_, Option<i64>>(8)?,
                    ))
                })
                .optional()
                .map_err(part_err(p))?;
            let outcome = match outcome {
                Some(((o, at, status, code, msgid), enhanced_status, size)) => Some(FoundOutcome {
                    enhanced_status,
                    size_bytes: size.map(|n| n.max(0) as u64),
                    outcome: Outcome::from_u8(o).ok_or_else(|| corrupt("unknown outcome"))?,
                    at,
                    upstream_status: status,
                    gateway_code: code,
                    upstream_message_id: match msgid {
                        Some(sealed) => Some(
                            String::from_utf8(
                                keys.open(&codec::outcome_aad(submission), &sealed)
                                    .map_err(|_| corrupt("sealed message id does not open"))?,
                            )
                            .map_err(|_| corrupt("message id is not UTF-8"))?,
                        ),
                        None => None,
                    },
                }),
                None => None,
            };
            let receipt = receipt_stmt
                .query_row(params![submission.0, ordinal], |r| {
                    Ok(FoundReceipt {
                        at: r.get(0)?,
                        state: r.get(1)?,
                        error: r.get(2)?,
                        done: r.get(3)?,
                    })
                })
                .optional()
                .map_err(part_err(p))?;
            stats.matches += 1;
            emit(Found {
                partition: p,
                record_id,
                submission,
                ordinal,
                at: row.get(3).map_err(part_err(p))?,
                protocol: Protocol::from_u8(row.get(4).map_err(part_err(p))?)
                    .ok_or_else(|| corrupt("unknown protocol"))?,
                service: Service::from_u8(row.get(5).map_err(part_err(p))?)
                    .ok_or_else(|| corrupt("unknown service"))?,
                segments: row.get(6).map_err(part_err(p))?,
                fields,
                outcome,
                receipt,
            });
            Ok(())
        };
        {
            let mut postings = tx.prepare(&postings_sql).map_err(part_err(p))?;
            let mut record = tx.prepare(&by_id).map_err(part_err(p))?;
            let mut ids = Vec::new();
            for bucket in keys.bucket(since)..=keys.bucket(until - 1) {
                ids.clear();
                let mut rows = postings.query(params![bucket, tag]).map_err(part_err(p))?;
                while let Some(row) = rows.next().map_err(part_err(p))? {
                    let blob: Vec<u8> = row.get(0).map_err(part_err(p))?;
                    postings::decode(&blob, &mut ids).map_err(|_| QueryError::Partition {
                        partition: p,
                        message: format!("damaged posting list in bucket {bucket}"),
                    })?;
                }
                // Postings past the watermark belong to a set still being written
                // (see `index`): the tail scan below finds those records.
                ids.retain(|&id| id <= through);
                ids.sort_unstable();
                for &id in &ids {
                    let mut rows = record
                        .query(params![id, since, until])
                        .map_err(part_err(p))?;
                    if let Some(row) = rows.next().map_err(part_err(p))? {
                        take(row)?;
                    }
                }
            }
        }
        let mut stmt = tx.prepare(&tail).map_err(part_err(p))?;
        let mut rows = stmt
            .query(params![through, tag, since, until])
            .map_err(part_err(p))?;
        while let Some(row) = rows.next().map_err(part_err(p))? {
            take(row)?;
        }
    }
    Ok(stats)
}
