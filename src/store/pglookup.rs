//! Lookups on PostgreSQL ([`run`], for [`super::query::run`]): the records of one
//! blind index value over a window, every node's, oldest first.
//!
//! Each partition has keys of its own, so the value's blind index differs from one
//! partition to the next: one index seek a partition (a seek a time bucket in a
//! partition still written, whose indexes lead with the bucket; one seek by tag alone
//! in a closed one whose read-optimised indexes are built). The partitions go
//! [`LOOKUP_CHUNK`] to a statement ([`chunk_sql`]): over 13 months of days, one
//! statement a partition made 396 round trips and plannings, most of a lookup's
//! time. Partition numbers are written into the statement (each branch is then
//! pruned to its table by the planner, and a partition dropped meanwhile reads as
//! empty); every value looked for is a parameter, never a literal.
//!
//! Memory: a statement brings at most [`LOOKUP_ROWS`]` + 1` matches a partition, so
//! at most [`LOOKUP_CHUNK`] times that; a partition with more is read again alone,
//! [`LOOKUP_ROWS`] at a time through a portal ([`Reader::alone`]).

use std::collections::HashMap;
use std::sync::Arc;

use postgres::types::{ToSql, Type};

use super::keys::{IndexKind, KeyError, Keyring, PartitionKeys};
use super::partition::PartitionId;
use super::pgrows;
use super::pgstore::outcome_row;
use super::query::{Criteria, Found, Hit, QueryError, QueryStats, read_events};
use crate::config::Granularity;
use crate::pg::{PgError, Pool, schema};

/// Matches a lookup reads from the server at a time, a partition.
const LOOKUP_ROWS: i32 = 1024;

/// Partitions a lookup searches in one statement.
pub const LOOKUP_CHUNK: usize = 32;

/// Time buckets a statement's partitions may look in, together (a partition still
/// written is searched by bucket): a statement ends before it would pass this many,
/// so that narrow buckets are bound a partition at a time (a month of 1-s buckets
/// is still 2.7 M in one statement, as before statements held several partitions).
const LOOKUP_BUCKETS: usize = 65_536;

/// Partitions whose keys a lookup reads in one query (see `Keyring::prefetch`).
const KEY_SLICE: usize = 4 * LOOKUP_CHUNK;

/// The columns a match is read from, in [`Reader::take`]'s order (of the record `r`).
const MATCH_COLUMNS: &str = "r.node, r.id, r.submission, r.ordinal, r.at_us, r.protocol, \
     r.service, r.segments, r.sealed";

/// The records of `kind` = `tag` in partition `part` (a literal or a parameter)
/// within the window, in time order. Recipients by their B-tree on the record table
/// (`(bucket, recipient_ix)`, or `recipient_ix` alone once `indexed`); the other kinds
/// by their postings (`(bucket, kind, tag)`, or `(kind, tag)` once `indexed`), each id
/// joined to its record by the primary key (see `crate::pg::schema`'s migration 6).
/// Parameters from `$first` on: the window's buckets first unless `indexed`, then the
/// tag, since and until. Returns the SQL and the next parameter's number.
fn search_sql(
    kind: IndexKind,
    part: &str,
    indexed: bool,
    first: usize,
    extra: &str,
    limit: Option<i32>,
) -> (String, usize) {
    let mut n = first;
    let posted = pgrows::posted(kind);
    let buckets = if indexed {
        String::new()
    } else {
        n += 1;
        let table = if posted { "p" } else { "r" };
        format!("{table}.bucket = ANY(${}::bigint[]) AND ", n - 1)
    };
    let (from, tag) = if posted {
        (
            format!(
                "relaylog.posting p CROSS JOIN LATERAL unnest(p.ids) AS i(id) \
                 JOIN relaylog.record r ON r.part = {part} AND r.node = p.node AND r.id = i.id \
                 WHERE p.part = {part} AND p.kind = {}::smallint AND ",
                kind as u8
            ),
            "p.tag",
        )
    } else {
        (
            format!("relaylog.record r WHERE r.part = {part} AND "),
            "r.recipient_ix",
        )
    };
    let limit = limit.map_or(String::new(), |l| format!(" LIMIT {l}"));
    let sql = format!(
        "SELECT {MATCH_COLUMNS}{extra} FROM {from}{buckets}{tag} = ${n}::bigint \
         AND r.at_us >= ${}::bigint AND r.at_us < ${}::bigint \
         ORDER BY r.at_us, r.node, r.id{limit}",
        n + 1,
        n + 2,
    );
    (sql, n + 3)
}

/// One partition's share of a lookup: where, and for which blind index value.
pub struct Search {
    partition: PartitionId,
    keys: Arc<PartitionKeys>,
    /// Its read-optimised index (by tag alone) is built: no time buckets needed.
    indexed: bool,
    tag: i64,
    since: i64,
    until: i64,
    /// The window's time buckets under the partition's key (empty when `indexed`).
    buckets: Vec<i64>,
}

impl Search {
    pub fn new(
        partition: PartitionId,
        indexed: bool,
        keys: Arc<PartitionKeys>,
        criteria: &Criteria,
    ) -> Self {
        let since = criteria.since.max(partition.start_micros());
        let until = criteria.until.min(partition.end_micros());
        let buckets = if indexed {
            Vec::new()
        } else {
            (keys.bucket(since)..=keys.bucket(until - 1)).collect()
        };
        Search {
            partition,
            indexed,
            tag: keys.blind_index(criteria.kind, &criteria.value),
            keys,
            since,
            until,
            buckets,
        }
    }

    /// Its values, as [`search_sql`] numbers them, typed.
    fn push_params<'a>(&'a self, params: &mut Vec<(&'a (dyn ToSql + Sync), Type)>) {
        if !self.indexed {
            params.push((&self.buckets, Type::INT8_ARRAY));
        }
        params.extend([
            (&self.tag as &(dyn ToSql + Sync), Type::INT8),
            (&self.since, Type::INT8),
            (&self.until, Type::INT8),
        ]);
    }
}

/// One statement for `searches`: per partition, in order, its first
/// [`LOOKUP_ROWS`]` + 1` matches in time order, each row ending with the partition's
/// place in `searches`.
pub fn chunk_sql(kind: IndexKind, searches: &[Search]) -> String {
    let mut sql = String::with_capacity(searches.len() * 320);
    sql.push_str("SELECT * FROM (");
    let mut n = 1;
    for (k, s) in searches.iter().enumerate() {
        if k > 0 {
            sql.push_str(" UNION ALL ");
        }
        let (branch, next) = search_sql(
            kind,
            &schema::part(s.partition).to_string(),
            s.indexed,
            n,
            &format!(", {k}::integer AS k"),
            Some(LOOKUP_ROWS + 1),
        );
        sql.push('(');
        sql.push_str(&branch);
        sql.push(')');
        n = next;
    }
    sql.push_str(") found ORDER BY k, at_us, node, id");
    sql
}

/// The parameters of [`chunk_sql`], in its order, typed.
pub fn chunk_params(searches: &[Search]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    let mut params = Vec::with_capacity(searches.len() * 4);
    for s in searches {
        s.push_params(&mut params);
    }
    params
}

/// [`super::query::run`] on PostgreSQL: the partitions in the window that have keys,
/// oldest first, a statement for [`LOOKUP_CHUNK`] of them at a time; the matches
/// opened and compared (a truncated index collides), with their events.
pub fn run(
    pool: &Arc<Pool>,
    granularity: Granularity,
    keyring: &Keyring,
    criteria: &Criteria,
    mut emit: impl FnMut(Found),
) -> Result<QueryStats, QueryError> {
    let mut pooled = pool.get()?;
    // Read-only, and each statement planned for its values: a generic plan of a
    // statement on the partitioned table locks every partition (and its indexes) at
    // each run, which over 13 months of days cost more than the seeks themselves.
    let mut client = pooled
        .build_transaction()
        .read_only(true)
        .start()
        .map_err(PgError::from)?;
    client
        .batch_execute("SET LOCAL plan_cache_mode = force_custom_plan")
        .map_err(PgError::from)?;
    let partitions: Vec<(PartitionId, bool)> =
        schema::partitions_indexed(&mut client, granularity)?
            .into_iter()
            .filter(|(p, _)| p.start_micros() < criteria.until && p.end_micros() > criteria.since)
            .collect();
    let events = client
        .prepare(&super::pgevents::of_submission_sql())
        .map_err(PgError::from)?;
    let mut stats = QueryStats::default();
    let mut reader = Reader {
        client: &mut client,
        criteria,
        events: &events,
        stats: &mut stats,
    };
    let mut chunk: Vec<Search> = Vec::with_capacity(LOOKUP_CHUNK);
    let mut buckets = 0;
    for (i, &(p, indexed)) in partitions.iter().enumerate() {
        // The keys of the next partitions in one query, a slice at a time (fewer
        // than the keyring keeps in memory, so none is pushed out before its turn).
        if i % KEY_SLICE == 0 {
            let next = partitions[i..].iter().take(KEY_SLICE).map(|(p, _)| *p);
            keyring.prefetch(&next.collect::<Vec<_>>())?;
        }
        let search = match keyring.keys(p) {
            Ok(keys) => Search::new(p, indexed, keys, criteria),
            Err(KeyError::Shredded { .. }) => {
                reader.stats.partitions_shredded.push(p);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if chunk.len() == LOOKUP_CHUNK
            || (!chunk.is_empty() && buckets + search.buckets.len() > LOOKUP_BUCKETS)
        {
            reader.chunk(&chunk, &mut emit)?;
            chunk.clear();
            buckets = 0;
        }
        buckets += search.buckets.len();
        chunk.push(search);
    }
    if !chunk.is_empty() {
        reader.chunk(&chunk, &mut emit)?;
    }
    client.commit().map_err(PgError::from)?;
    Ok(stats)
}

/// A lookup's transaction and what it has found so far.
struct Reader<'a, 't> {
    client: &'a mut postgres::Transaction<'t>,
    criteria: &'a Criteria,
    /// A record's outcome events, by (part, node, submission).
    events: &'a postgres::Statement,
    stats: &'a mut QueryStats,
}

impl Reader<'_, '_> {
    /// Searches `searches` in one statement (one round trip: its parameters' types
    /// given, nothing to prepare) and takes their matches in order.
    fn chunk(
        &mut self,
        searches: &[Search],
        emit: &mut impl FnMut(Found),
    ) -> Result<(), QueryError> {
        self.stats.partitions_searched += searches.len();
        let rows = self
            .client
            .query_typed(
                &chunk_sql(self.criteria.kind, searches),
                &chunk_params(searches),
            )
            .map_err(|e| QueryError::Partitions {
                first: searches[0].partition,
                last: searches[searches.len() - 1].partition,
                message: PgError::from(e).to_string(),
            })?;
        let k_column = MATCH_COLUMNS.split(',').count();
        let mut rows = rows.into_iter().peekable();
        for (k, search) in searches.iter().enumerate() {
            let mine: Vec<postgres::Row> =
                std::iter::from_fn(|| rows.next_if(|r| r.get::<_, i32>(k_column) == k as i32))
                    .collect();
            if mine.len() > LOOKUP_ROWS as usize {
                self.alone(search, emit)?;
            } else {
                for r in &mine {
                    self.take(search, r, emit)?;
                }
            }
        }
        Ok(())
    }

    /// A match (a row of [`MATCH_COLUMNS`]) opened and compared (a truncated index
    /// collides), with its events.
    fn take(
        &mut self,
        s: &Search,
        r: &postgres::Row,
        emit: &mut impl FnMut(Found),
    ) -> Result<(), QueryError> {
        let p = s.partition;
        let hit = Hit {
            node: r.get(0),
            record_id: r.get(1),
            submission: crate::record::SubmissionId(r.get(2)),
            ordinal: r.get::<_, i32>(3) as u32,
            at: r.get(4),
            protocol: r.get::<_, i16>(5) as u8,
            service: r.get::<_, i16>(6) as u8,
            segments: r.get::<_, i32>(7) as u16,
            sealed: r.get(8),
        };
        let Some(fields) = hit.open_if_match(p, &s.keys, self.criteria, self.stats)? else {
            return Ok(());
        };
        let evs = self
            .client
            .query(
                self.events,
                &[&schema::part(p), &hit.node, &hit.submission.0],
            )
            .map_err(|e| partition_error(p, e))?;
        let (outcome, receipt) = read_events(
            evs.iter().map(|r| outcome_row(r).1),
            &s.keys,
            hit.submission,
            hit.ordinal,
        )
        .map_err(|what| QueryError::Partition {
            partition: p,
            message: format!("record {}: {what}", hit.record_id),
        })?;
        self.stats.matches += 1;
        emit(hit.found(p, fields, outcome, receipt)?);
        Ok(())
    }

    /// All of one partition's matches, [`LOOKUP_ROWS`] at a time through a portal
    /// (each slice's events read before the next slice).
    fn alone(&mut self, s: &Search, emit: &mut impl FnMut(Found)) -> Result<(), QueryError> {
        let p = s.partition;
        let (sql, _) = search_sql(self.criteria.kind, "$1", s.indexed, 2, "", None);
        let mut types = vec![Type::INT4];
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        let part = schema::part(p);
        params.push(&part);
        let mut typed = Vec::new();
        s.push_params(&mut typed);
        for (v, t) in typed {
            params.push(v);
            types.push(t);
        }
        let stmt = self
            .client
            .prepare_typed(&sql, &types)
            .map_err(|e| partition_error(p, e))?;
        let portal = self
            .client
            .bind(&stmt, &params)
            .map_err(|e| partition_error(p, e))?;
        loop {
            let rows = self
                .client
                .query_portal(&portal, LOOKUP_ROWS)
                .map_err(|e| partition_error(p, e))?;
            for r in &rows {
                self.take(s, r, emit)?;
            }
            if rows.len() < LOOKUP_ROWS as usize {
                return Ok(());
            }
        }
    }
}

fn partition_error(partition: PartitionId, e: postgres::Error) -> QueryError {
    QueryError::Partition {
        partition,
        message: PgError::from(e).to_string(),
    }
}

/// Files a server process keeps open for each partition a lookup searches: the
/// record table and its indexes (the planner reads the size of each), the postings
/// and theirs (a lookup by account, address or originator), the outcome rows and
/// blocks and theirs, their free-space and visibility maps and the TOAST tables of
/// postings and blocks: 25 counted.
pub const FILES_PER_PARTITION: i64 = 25;

/// What an operator should know about the server's settings for this store, as
/// warnings (a setting that cannot be read is one too, never an error):
///
/// - `max_files_per_process` below what a lookup over the whole retention keeps open
///   ([`FILES_PER_PARTITION`] a partition): a server process then closes and opens
///   files again at every lookup (measured over 396 daily partitions: 71 ms a lookup
///   with PostgreSQL's default of 1,000, 39 ms with 8,000);
/// - statements logged with their parameters (`log_statement`, or a duration
///   threshold, and `log_parameter_max_length` not 0; or
///   `log_parameter_max_length_on_error` not 0): the server's log would then keep
///   each batch's blind indexes and sealed values, and the ledger's, out of reach of
///   expiry and erasure.
pub fn server_warnings(pool: &Arc<Pool>, cfg: &crate::config::StoreConfig) -> Vec<String> {
    // As this session has them (the role's settings applied), in their base units
    // (`current_setting` would add one: "250ms").
    let settings = (|| -> Result<HashMap<String, String>, PgError> {
        Ok(pool
            .get()?
            .query(
                "SELECT name, setting FROM pg_settings WHERE name = ANY($1)",
                &[&[
                    "max_files_per_process",
                    "log_statement",
                    "log_min_duration_statement",
                    "log_min_duration_sample",
                    "log_statement_sample_rate",
                    "log_transaction_sample_rate",
                    "log_parameter_max_length",
                    "log_parameter_max_length_on_error",
                ]
                .as_slice()],
            )?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    })();
    let settings = match settings {
        Ok(s) => s,
        Err(e) => return vec![format!("the server's settings could not be read: {e}")],
    };
    // A setting this server does not have (an older release) reads as off.
    let number = |name: &str| -> f64 {
        settings
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    let files = number("max_files_per_process") as i64;
    let statements = settings.get("log_statement").map_or("none", String::as_str);
    let logged = matches!(statements, "mod" | "all")
        || number("log_min_duration_statement") >= 0.0
        || (number("log_min_duration_sample") >= 0.0 && number("log_statement_sample_rate") > 0.0)
        || number("log_transaction_sample_rate") > 0.0;
    let (parameters, on_error) = (
        number("log_parameter_max_length"),
        number("log_parameter_max_length_on_error"),
    );
    let mut out = Vec::new();
    let now = chrono::Utc::now();
    // Counted, not listed: a retention of millions of days is accepted.
    let days = (now - cfg.retention.cutoff(now)).num_days() + 1;
    let kept = match cfg.partition {
        Granularity::Day => days,
        Granularity::Month => days / 28 + 1,
    }
    .min(1 << 20);
    let need = kept * FILES_PER_PARTITION;
    if files < need {
        out.push(format!(
            "the server's max_files_per_process is {files}: a lookup over the retention's \
             {kept} partitions keeps about {need} files open, and with fewer each lookup \
             reopens them (set it to {need} or more in postgresql.conf, and the server's \
             open-file limit with it)"
        ));
    }
    if (logged && parameters != 0.0) || on_error != 0.0 {
        out.push(
            "the server logs statements with their parameters: its log would keep blind \
             indexes and sealed values past expiry and erasure (ALTER ROLE <relaylog's role> \
             SET log_parameter_max_length = 0, and log_parameter_max_length_on_error = 0)"
                .into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_numbers_its_parameters_as_they_are_sent() {
        // Partitions with and without their tag index, mixed: each search's
        // placeholders follow the previous one's, and each one is sent.
        let kinds = [false, true, true, false, true];
        let mut n = 1;
        let mut sql = String::new();
        for indexed in kinds {
            let (branch, next) = search_sql(IndexKind::Recipient, "7", indexed, n, "", None);
            assert_eq!(next - n, if indexed { 3 } else { 4 });
            for k in n..next {
                assert!(branch.contains(&format!("${k}::")), "${k} in {branch}");
            }
            assert!(!branch.contains(&format!("${next}")), "{branch}");
            sql.push_str(&branch);
            n = next;
        }
        assert_eq!(n - 1, 3 * 5 + 2);
        assert!(sql.contains("r.bucket = ANY($1::bigint[]) AND r.recipient_ix = $2::bigint"));
        assert!(sql.contains("r.recipient_ix = $5::bigint AND r.at_us >= $6::bigint"));
        let (posted, _) = search_sql(IndexKind::Account, "7", false, 1, "", None);
        assert!(
            posted.contains(
                "p.kind = 1::smallint AND p.bucket = ANY($1::bigint[]) AND p.tag = $2::bigint"
            ),
            "{posted}"
        );
    }
}
