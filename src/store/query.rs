//! Lookups by identifier and time window.
//!
//! For each partition overlapping the window: compute the identifier's blind index
//! under that partition's index key; if the partition has a filter (closed and
//! compacted, see `compact`) and it says the tag is absent, go on to the next without
//! opening it. Otherwise, in one read transaction: in a compacted partition, seek `tag`
//! in its `cx_*` table once (keeping the ids up to `meta.compacted`); in any other,
//! seek `(bucket, tag)` in its `ix_*` table once per bucket in the window (keeping the
//! ids up to `indexed_through`); then scan the records past those ids (none in a
//! compacted partition, unless one came late; the unindexed tail, bounded by the
//! writer's flush cap, see `index`) by their tag column.
//! Each hit is decrypted and kept only if the decrypted value equals the identifier
//! (a truncated HMAC can collide). Sealed values are never scanned.

use std::path::Path;

use rusqlite::params;

use super::codec::{self, SealedFields};
use super::events;
use super::filter::{self, Probe};
use super::keys::{IndexKind, KeyError, Keyring, PartitionKeys};
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
    /// Partitions searched in one statement (on PostgreSQL) that failed together.
    #[error("partitions {first} to {last} (searched in one statement): {message}")]
    Partitions {
        first: PartitionId,
        last: PartitionId,
        message: String,
    },
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("the time window is empty: --since must be before --until")]
    EmptyWindow,
    #[error("the store's database: {0}")]
    Database(#[from] crate::pg::PgError),
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
    /// Whether a partition's filter may rule it out unopened. Lookups: yes.
    /// Disclosures, access requests and erasure: no, every partition in the window is
    /// opened (its read-optimised index still serves it), so that what is handed over
    /// or erased never rests on a derived file saying "absent" (one restored from a
    /// backup would be wrong until the next compaction finds it out).
    pub filters: bool,
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
    /// The node that wrote it (PostgreSQL; 0 on SQLite): a record is
    /// `(partition, node, record_id)`.
    pub node: i16,
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
    /// Of those, partitions their filter ruled out without opening them.
    pub partitions_ruled_out: usize,
    /// Partitions whose filter did not check out (searched without it).
    pub filters_damaged: Vec<PartitionId>,
    /// Partitions whose filter could not be opened (permissions, open files): searched
    /// without it.
    pub filters_unreadable: Vec<PartitionId>,
    /// Partitions whose filter did not cover their records: a lookup that it ruled out
    /// may have missed some there (`verify` tells; a new compaction mends it).
    pub filters_stale: Vec<PartitionId>,
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
    store: &crate::config::StoreConfig,
    keyring: &Keyring,
    criteria: &Criteria,
    emit: impl FnMut(Found),
) -> Result<QueryStats, QueryError> {
    if criteria.until <= criteria.since {
        return Err(QueryError::EmptyWindow);
    }
    match &store.backend {
        crate::config::Backend::Sqlite => run_files(&store.path, keyring, criteria, emit),
        crate::config::Backend::Postgres(pg) => {
            let pool = crate::pg::Pool::shared(pg)?;
            super::pglookup::run(&pool, store.partition, keyring, criteria, emit)
        }
    }
}

/// [`run`] on the partition files in `store_dir`.
fn run_files(
    store_dir: &Path,
    keyring: &Keyring,
    criteria: &Criteria,
    mut emit: impl FnMut(Found),
) -> Result<QueryStats, QueryError> {
    let partitions: Vec<PartitionId> = partition::list(store_dir)
        .map_err(|source| QueryError::List {
            path: store_dir.to_owned(),
            source,
        })?
        .into_iter()
        .filter(|p| p.start_micros() < criteria.until && p.end_micros() > criteria.since)
        .collect();
    let mut stats = QueryStats::default();
    for &p in &partitions {
        search(store_dir, keyring, criteria, p, &mut stats, &mut emit)?;
    }
    Ok(stats)
}

/// Searches one partition, handing each match to `emit` in time order.
fn search(
    store_dir: &Path,
    keyring: &Keyring,
    criteria: &Criteria,
    p: PartitionId,
    stats: &mut QueryStats,
    emit: &mut dyn FnMut(Found),
) -> Result<(), QueryError> {
    let keys = match keyring.keys(p) {
        Ok(k) => k,
        Err(KeyError::Shredded { .. }) => {
            stats.partitions_shredded.push(p);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    stats.partitions_searched += 1;
    let path = p.path_in(store_dir);
    let tag = keys.blind_index(criteria.kind, &criteria.value);
    let Some(filtered) = probe_filter(&path, &keys, criteria, tag, p, stats) else {
        stats.partitions_ruled_out += 1;
        return Ok(());
    };
    let conn = schema::open_for_read(&path).map_err(part_err(p))?;
    let tx = conn.unchecked_transaction().map_err(part_err(p))?;
    let Some(state) = partition_state(&tx).map_err(part_err(p))? else {
        // Being created this very moment: nothing in it yet.
        return Ok(());
    };
    // A filter that said "maybe" must cover what the partition holds; one that does
    // not (it should have been deleted) could have said "absent" of a record: said.
    if let Some(f) = filtered
        && (state.compacted != Some(f) || state.newest != f)
        // Unless the writer removed it since, as it should have.
        && filter::path_of(&path).exists()
    {
        tracing::warn!(partition = %p, "the partition's filter does not cover its records");
        stats.filters_stale.push(p);
    }
    let since = criteria.since.max(p.start_micros());
    let until = criteria.until.min(p.end_micros());
    // The read-optimised index serves a partition the window covers whole; a window
    // that ends inside it (an hour of an account's day) seeks its minutes instead of
    // reading every id of the day. The ids an index gives are those up to `through`;
    // the records past it are scanned by their tag column.
    let whole = criteria.since <= p.start_micros() && criteria.until >= p.end_micros();
    let compacted = state.compacted.filter(|_| whole);
    let through = compacted.unwrap_or(state.indexed_through);
    const COLUMNS: &str =
        "r.id, r.submission, r.ordinal, r.at_us, r.protocol, r.service, r.segments, r.sealed";
    let postings_sql = match compacted {
        // Read-optimised: one seek for the whole partition.
        Some(_) => format!(
            "SELECT ids FROM {} WHERE tag = ?2 AND ?1 IS NOT NULL",
            criteria.kind.cx_table()
        ),
        None => format!(
            "SELECT ids FROM {} WHERE bucket = ?1 AND tag = ?2",
            criteria.kind.ix_table()
        ),
    };
    let by_id = format!(
        "SELECT {COLUMNS} FROM record r WHERE r.id = ?1 AND r.at_us >= ?2 AND r.at_us < ?3"
    );
    let tail = format!(
        "SELECT {COLUMNS} FROM record r WHERE r.id > ?1 AND r.{} = ?2 AND r.at_us >= ?3 AND r.at_us < ?4 ORDER BY r.id",
        criteria.kind.tag_column()
    );
    // The events statement is made at the first match: most partitions a filter
    // lets through hold one, some none, and making statements is most of what
    // opening a partition costs.
    let mut lookup: Option<events::Lookup> = None;
    let mut take = |row: &rusqlite::Row<'_>| -> Result<(), QueryError> {
        let hit = Hit {
            node: 0,
            record_id: row.get(0).map_err(part_err(p))?,
            submission: SubmissionId(row.get(1).map_err(part_err(p))?),
            ordinal: row.get(2).map_err(part_err(p))?,
            at: row.get(3).map_err(part_err(p))?,
            protocol: row.get(4).map_err(part_err(p))?,
            service: row.get(5).map_err(part_err(p))?,
            segments: row.get(6).map_err(part_err(p))?,
            sealed: row.get(7).map_err(part_err(p))?,
        };
        let (record_id, submission, ordinal) = (hit.record_id, hit.submission, hit.ordinal);
        let corrupt = |what: &str| QueryError::Partition {
            partition: p,
            message: format!("record {record_id}: {what}"),
        };
        let Some(fields) = hit.open_if_match(p, &keys, criteria, stats)? else {
            return Ok(());
        };
        let lookup = match &mut lookup {
            Some(made) => &*made,
            slot @ None => {
                let columns = match state.compacted {
                    // Compaction completed the table: no need to ask.
                    Some(_) => schema::all_outcome_columns(),
                    None => schema::outcome_columns(&tx).map_err(part_err(p))?,
                };
                &*slot.insert(events::Lookup::with_columns(
                    &columns,
                    state.outcome_rows,
                    state.outcome_blocks,
                ))
            }
        };
        let events = lookup
            .of(&tx, submission.0)
            .map_err(part_err(p))?
            .into_iter()
            .map(|(_, e)| e);
        let (outcome, receipt) =
            read_events(events, &keys, submission, ordinal).map_err(corrupt)?;
        stats.matches += 1;
        emit(hit.found(p, fields, outcome, receipt)?);
        Ok(())
    };
    {
        let mut postings = tx.prepare(&postings_sql).map_err(part_err(p))?;
        let mut record = tx.prepare(&by_id).map_err(part_err(p))?;
        let mut ids = Vec::new();
        let buckets = match compacted {
            Some(_) => 0..=0,
            None => keys.bucket(since)..=keys.bucket(until - 1),
        };
        for bucket in buckets {
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
    if state.newest > through {
        let mut stmt = tx.prepare(&tail).map_err(part_err(p))?;
        let mut rows = stmt
            .query(params![through, tag, since, until])
            .map_err(part_err(p))?;
        while let Some(row) = rows.next().map_err(part_err(p))? {
            take(row)?;
        }
    }
    Ok(())
}

/// What the partition's filter says of `tag`: `None` when it rules the partition out;
/// otherwise the ids it covers (`Some(None)`: no filter to go by).
fn probe_filter(
    path: &Path,
    keys: &PartitionKeys,
    criteria: &Criteria,
    tag: i64,
    p: PartitionId,
    stats: &mut QueryStats,
) -> Option<Option<i64>> {
    // Present, a filter covers every record of its partition: the writer deletes
    // it before it adds one (see `compact`).
    if !criteria.filters {
        return Some(None);
    }
    match filter::probe(&filter::path_of(path), keys, criteria.kind, tag) {
        Probe::Absent => None,
        Probe::Maybe { through } => Some(Some(through)),
        Probe::Damaged => {
            tracing::warn!(partition = %p, "the partition's filter does not check out; searching the partition without it");
            stats.filters_damaged.push(p);
            Some(None)
        }
        Probe::Unreadable(error) => {
            tracing::warn!(partition = %p, ?error, "the partition's filter cannot be read; searching the partition without it");
            stats.filters_unreadable.push(p);
            Some(None)
        }
        Probe::Missing => Some(None),
    }
}

/// A record an index pointed at, before its sealed fields are opened.
pub(super) struct Hit {
    pub node: i16,
    pub record_id: i64,
    pub submission: SubmissionId,
    pub ordinal: u32,
    pub at: Micros,
    pub protocol: u8,
    pub service: u8,
    pub segments: u16,
    pub sealed: Vec<u8>,
}

impl Hit {
    fn corrupt(&self, p: PartitionId, what: &str) -> QueryError {
        QueryError::Partition {
            partition: p,
            message: format!("record {}: {what}", self.record_id),
        }
    }

    /// Its fields, opened, if they hold what `criteria` looks for; `None` for a
    /// collision of the truncated blind index (counted).
    pub(super) fn open_if_match(
        &self,
        p: PartitionId,
        keys: &PartitionKeys,
        criteria: &Criteria,
        stats: &mut QueryStats,
    ) -> Result<Option<SealedFields>, QueryError> {
        let plain = keys
            .open(
                &codec::record_aad(self.submission, self.ordinal),
                &self.sealed,
            )
            .map_err(|_| self.corrupt(p, "sealed value does not open (damaged or moved)"))?;
        let fields =
            codec::decode(&plain).map_err(|_| self.corrupt(p, "sealed payload malformed"))?;
        if !criteria.kind.matches(&fields, &criteria.value) {
            stats.collisions += 1;
            return Ok(None);
        }
        Ok(Some(fields))
    }

    pub(super) fn found(
        self,
        p: PartitionId,
        fields: SealedFields,
        outcome: Option<FoundOutcome>,
        receipt: Option<FoundReceipt>,
    ) -> Result<Found, QueryError> {
        Ok(Found {
            partition: p,
            node: self.node,
            record_id: self.record_id,
            submission: self.submission,
            ordinal: self.ordinal,
            at: self.at,
            protocol: Protocol::from_u8(self.protocol)
                .ok_or_else(|| self.corrupt(p, "unknown protocol"))?,
            service: Service::from_u8(self.service)
                .ok_or_else(|| self.corrupt(p, "unknown service"))?,
            segments: self.segments,
            fields,
            outcome,
            receipt,
        })
    }
}

/// A record's latest outcome (other than a receipt) and latest receipt: of its
/// submission's events (in id order), those about it (naming its ordinal, or none).
pub(super) fn read_events(
    events: impl IntoIterator<Item = super::rows::OutcomeRow>,
    keys: &PartitionKeys,
    submission: SubmissionId,
    ordinal: u32,
) -> Result<(Option<FoundOutcome>, Option<FoundReceipt>), &'static str> {
    // Events come in id order: the last of each kind is the latest.
    let (mut latest, mut receipt) = (None, None);
    for e in events {
        if e.ordinal.is_some_and(|o| o != ordinal) {
            continue;
        }
        if e.outcome == Outcome::Receipt as u8 {
            receipt = Some(FoundReceipt {
                at: e.at_us,
                state: e.receipt_state,
                error: e.receipt_error,
                done: e.receipt_done,
            });
        } else {
            latest = Some(e);
        }
    }
    let Some(e) = latest else {
        return Ok((None, receipt));
    };
    // Of the latest outcome only: a superseded event's message id is never opened.
    let upstream_message_id = match &e.message_id_sealed {
        Some(sealed) => {
            let id = keys
                .open(&codec::outcome_aad(submission), sealed)
                .map_err(|_| "sealed message id does not open")?;
            Some(String::from_utf8(id).map_err(|_| "message id is not UTF-8")?)
        }
        None => None,
    };
    let outcome = FoundOutcome {
        outcome: Outcome::from_u8(e.outcome).ok_or("unknown outcome")?,
        at: e.at_us,
        upstream_status: e.upstream_status,
        gateway_code: e.gateway_code,
        upstream_message_id,
        enhanced_status: e.enhanced_status,
        size_bytes: e.size_bytes,
    };
    Ok((Some(outcome), receipt))
}

/// What a lookup needs to know of a partition before it seeks, in one statement.
struct PartitionState {
    /// The highest record id the read-optimised index covers (compacted partitions).
    compacted: Option<i64>,
    /// The highest record id the bucketed index covers.
    indexed_through: i64,
    newest: i64,
    /// Whether it holds outcome events in rows, and has the table of blocks (see
    /// `events`): a record's events are looked for only where there can be any (in a
    /// partition written since blocks, rows are rare).
    outcome_rows: bool,
    outcome_blocks: bool,
}

/// The partition's state, or `None` if its tables are not all there yet (as
/// [`schema::is_ready`]).
fn partition_state(conn: &rusqlite::Connection) -> rusqlite::Result<Option<PartitionState>> {
    let row = conn.query_row(
        &format!(
            "SELECT (SELECT 1 FROM meta WHERE key = 'schema'), \
                    (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'compacted'), \
                    (SELECT indexed_through FROM ix_state WHERE one = 1), \
                    (SELECT coalesce(max(id), 0) FROM record), \
                    (SELECT max(id) IS NOT NULL FROM outcome), \
                    {}",
            events::HAS_BLOCKS
        ),
        [],
        |r| {
            Ok((
                r.get::<_, Option<i64>>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, bool>(5)?,
            ))
        },
    );
    match row {
        Ok((Some(_), compacted, indexed_through, newest, rows, blocks)) => {
            Ok(Some(PartitionState {
                compacted,
                indexed_through: indexed_through.unwrap_or(0),
                newest,
                outcome_rows: rows,
                outcome_blocks: blocks,
            }))
        }
        Ok((None, ..)) => Ok(None),
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.starts_with("no such table") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
