//! `relaylog bench query`: lookups by recipient over a store like the one `bench store`
//! fills (which it fills first when the store has no partitions), after compacting the
//! partitions whose period is over. Reports the compaction rate and lookup latency
//! percentiles, warm and, as root with `--drop-caches`, cold.

use std::time::Instant;

use chrono::NaiveDate;
use serde::Serialize;

use super::Rng;
use crate::config::StoreConfig;
use crate::store::compact;
use crate::store::keys::IndexKind;
use crate::store::query::{self, Criteria};

#[derive(Debug, Clone)]
pub struct QueryBench {
    /// How the store is filled when it is empty (see `bench store`).
    pub fill: super::StoreBench,
    /// Warm lookups (each over the whole window of `fill`).
    pub lookups: usize,
    /// Cold lookups: the page cache dropped before each (root only).
    pub cold: usize,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub lookups: usize,
    pub latency_ms: super::Percentiles,
    pub mean_matches: f64,
    /// Partitions opened per lookup (the others were ruled out by their filter).
    pub mean_partitions_opened: f64,
}

#[derive(Debug, Serialize)]
pub struct QueryBenchReport {
    pub partitions: usize,
    /// Filled by this run (records/s), if the store was empty.
    pub filled_records_per_second: Option<f64>,
    pub compacted_partitions: usize,
    pub compacted_records: u64,
    pub compaction_seconds: f64,
    pub compaction_records_per_second: f64,
    /// On-disk bytes of the store per record, and of the filters alone.
    pub bytes_per_record: f64,
    pub filter_bytes_per_record: f64,
    pub warm: Latency,
    pub cold: Option<Latency>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryBenchError {
    #[error(transparent)]
    Fill(#[from] super::BenchError),
    #[error(transparent)]
    Keys(#[from] crate::store::keys::KeyError),
    #[error(transparent)]
    Query(#[from] query::QueryError),
    #[error("cannot list the store: {0}")]
    List(std::io::Error),
    #[error("cannot drop the page cache (needs root): {0}")]
    DropCaches(std::io::Error),
    #[error("compaction: {0}")]
    Compact(String),
    #[error("reading the store: {0}")]
    Read(String),
}

fn day_micros(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc()
        .timestamp_micros()
}

fn drop_caches() -> std::io::Result<()> {
    // Dirty pages are written first (sync(1)): drop_caches drops clean pages only.
    std::process::Command::new("sync").status()?;
    std::fs::write("/proc/sys/vm/drop_caches", "3")
}

/// The store's partitions, oldest first.
fn listed(cfg: &StoreConfig) -> Result<Vec<crate::store::partition::PartitionId>, QueryBenchError> {
    match &cfg.backend {
        crate::config::Backend::Sqlite => {
            crate::store::partition::list(&cfg.path).map_err(QueryBenchError::List)
        }
        crate::config::Backend::Postgres(pg) => {
            let pool = crate::pg::Pool::shared(pg).map_err(database)?;
            let mut client = pool.get().map_err(database)?;
            crate::pg::schema::partitions(&mut *client, cfg.partition).map_err(database)
        }
    }
}

fn database(e: crate::pg::PgError) -> QueryBenchError {
    QueryBenchError::Read(e.to_string())
}

/// On PostgreSQL: the bytes of the record, posting and outcome tables with their indexes (the
/// heads and keys are small), and the records, as [`run`] counts them on SQLite.
fn postgres_sizes(
    pg: &crate::config::PgConfig,
    partitions: &[crate::store::partition::PartitionId],
) -> Result<(u64, u64), QueryBenchError> {
    let pool = crate::pg::Pool::shared(pg).map_err(database)?;
    let bytes: i64 = pool
        .get()
        .map_err(database)?
        .query_one(
            "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)::bigint FROM pg_inherits \
             WHERE inhparent IN ('relaylog.record'::regclass, 'relaylog.posting'::regclass, \
             'relaylog.outcome'::regclass, 'relaylog.outcome_block'::regclass)",
            &[],
        )
        .map_err(|e| database(e.into()))?
        .get(0);
    let mut records = 0;
    for &p in partitions {
        records += crate::store::pgstore::record_count(&pool, p).map_err(database)?;
    }
    Ok((bytes.max(0) as u64, records))
}

pub fn run(cfg: StoreConfig, b: &QueryBench) -> Result<QueryBenchReport, QueryBenchError> {
    if b.cold > 0 && matches!(cfg.backend, crate::config::Backend::Postgres(_)) {
        return Err(QueryBenchError::Read(
            "--drop-caches drops the page cache, not PostgreSQL's buffers: cold lookups need the SQLite store".into(),
        ));
    }
    let filled_records_per_second = if listed(&cfg)?.is_empty() {
        Some(super::store(cfg.clone(), &b.fill)?.overall())
    } else {
        // Real records are never looked up, nor compacted, by a benchmark.
        super::store::claim(&cfg)?;
        None
    };
    let keyring = crate::store::open_keyring(&cfg)?;
    let began = Instant::now();
    // What is due now, as serve would: a partition still being written is not.
    let now = crate::clock::Clock::now_micros(&crate::clock::SystemClock);
    let done: Vec<_> = match &cfg.backend {
        crate::config::Backend::Sqlite => compact::compact_due(&cfg.path, &keyring, now, &|| false)
            .into_iter()
            .map(|(p, r)| (p, r.map_err(|e| e.to_string())))
            .collect(),
        crate::config::Backend::Postgres(pg) => crate::store::pgstore::index_closed_due(
            &crate::pg::Pool::shared(pg).map_err(database)?,
            cfg.partition,
            now,
            &|| false,
        )
        .into_iter()
        .map(|(p, r)| (p, r.map_err(|e| e.to_string())))
        .collect(),
    };
    let compaction_seconds = began.elapsed().as_secs_f64();
    // The vacuum and statistics autovacuum gives a day's tables soon after the day
    // ends, given now: a lookup over 13 months meets partitions vacuumed long ago,
    // not autovacuum's workers at their first pass over the whole filled store.
    if let crate::config::Backend::Postgres(pg) = &cfg.backend {
        let mut client = crate::pg::Pool::shared(pg)
            .map_err(database)?
            .get()
            .map_err(database)?;
        crate::pg::unbounded(&mut client, |c| {
            c.batch_execute(
                "VACUUM (ANALYZE) relaylog.record, relaylog.posting, relaylog.outcome, relaylog.outcome_block",
            )
        })
        .map_err(|e| database(e.into()))?;
    }
    let mut compacted_records = 0;
    for (p, r) in &done {
        match r {
            Ok(c) => compacted_records += c.records,
            Err(e) => return Err(QueryBenchError::Compact(format!("partition {p}: {e}"))),
        }
    }
    let partitions = listed(&cfg)?;
    let (mut store_bytes, mut filter_bytes, mut records) = (0u64, 0u64, 0u64);
    if let crate::config::Backend::Postgres(pg) = &cfg.backend {
        (store_bytes, records) = postgres_sizes(pg, &partitions)?;
    }
    let files = match cfg.backend {
        crate::config::Backend::Sqlite => Some(&cfg.path),
        crate::config::Backend::Postgres(_) => None,
    };
    for entry in files
        .map(std::fs::read_dir)
        .transpose()
        .map_err(QueryBenchError::List)?
        .into_iter()
        .flatten()
    {
        let entry = entry.map_err(QueryBenchError::List)?;
        let len = entry.metadata().map_err(QueryBenchError::List)?.len();
        store_bytes += len;
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(crate::store::filter::SUFFIX)
        {
            filter_bytes += len;
        }
    }
    for p in partitions.iter().filter(|_| files.is_some()) {
        let conn = crate::store::schema::open_for_read(&p.path_in(&cfg.path))
            .map_err(|e| QueryBenchError::Read(format!("partition {p}: {e}")))?;
        // Ids are dense (erasure aside): the highest is the count, without a scan.
        let n = compact::newest(&conn)
            .map_err(|e| QueryBenchError::Read(format!("partition {p}: {e}")))?;
        records += n.max(0) as u64;
    }
    let since = day_micros(b.fill.start);
    let until = since + i64::from(b.fill.days) * 86_400_000_000;
    let mut rng = Rng(b.fill.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
    let mut lookups = |n: usize, cold: bool| -> Result<Latency, QueryBenchError> {
        let (mut times, mut matches, mut opened) = (super::histogram(), 0u64, 0usize);
        for _ in 0..n {
            let number = super::store::pool_number(rng.next(), b.fill.recipients_pool);
            if cold {
                drop_caches().map_err(QueryBenchError::DropCaches)?;
            }
            let criteria = Criteria {
                kind: IndexKind::Recipient,
                value: number,
                since,
                until,
                filters: true,
            };
            let t = Instant::now();
            // Cold: as a fresh process would, keys unwrapped from their files too.
            let fresh;
            let keyring = if cold {
                fresh = crate::store::open_keyring(&cfg)?;
                &fresh
            } else {
                &keyring
            };
            let stats = query::run(&cfg, keyring, &criteria, |_| {})?;
            let _ = times.record(super::micros_since(t));
            matches += stats.matches;
            opened += stats.partitions_searched - stats.partitions_ruled_out;
        }
        Ok(Latency {
            lookups: n,
            latency_ms: super::Percentiles::of(&times),
            mean_matches: matches as f64 / n.max(1) as f64,
            mean_partitions_opened: opened as f64 / n.max(1) as f64,
        })
    };
    let warm = lookups(b.lookups, false)?;
    let cold = if b.cold > 0 {
        Some(lookups(b.cold, true)?)
    } else {
        None
    };
    Ok(QueryBenchReport {
        partitions: partitions.len(),
        filled_records_per_second,
        compacted_partitions: done.len(),
        compacted_records,
        compaction_seconds,
        compaction_records_per_second: compacted_records as f64 / compaction_seconds.max(1e-9),
        bytes_per_record: store_bytes as f64 / records.max(1) as f64,
        filter_bytes_per_record: filter_bytes as f64 / records.max(1) as f64,
        warm,
        cold,
    })
}
