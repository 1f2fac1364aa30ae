//! The writer: one thread that owns every partition connection, fed by a bounded queue.
//!
//! It takes the first job, drains whatever else is already queued up to `batch-max`
//! records, writes the lot in one transaction per partition (group commit), then
//! answers every waiting submission. A failed commit answers each of its waiters with
//! the error and drops the connection, so the next batch reopens the partition: the
//! store recovers by itself when the fault goes away.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use super::partition::PartitionId;
use super::schema;
use crate::admin::metrics::Metrics;
use crate::config::SyncMode;

/// One recipient row, sealed and indexed, ready to insert.
#[derive(Debug, Clone)]
pub struct Row {
    pub submission: i64,
    pub ordinal: u32,
    pub at_us: i64,
    pub bucket: i64,
    pub protocol: u8,
    pub service: u8,
    pub recipient_form: u8,
    pub segments: u16,
    pub account_ix: i64,
    pub ip_ix: i64,
    pub originator_ix: Option<i64>,
    pub recipient_ix: i64,
    pub sealed: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct OutcomeRow {
    pub submission: i64,
    pub at_us: i64,
    pub outcome: u8,
    pub upstream_status: Option<u16>,
    pub gateway_code: Option<i32>,
    pub message_id_sealed: Option<Vec<u8>>,
}

/// Why a batch could not be committed. Carries SQLite's or the OS's message, which
/// never contains a bound value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct WriteError(pub String);

pub type Done = oneshot::Sender<Result<(), WriteError>>;

pub enum Job {
    Records {
        partition: PartitionId,
        rows: Vec<Row>,
        done: Option<Done>,
    },
    Outcome {
        partition: PartitionId,
        row: OutcomeRow,
        done: Option<Done>,
    },
    /// Answered once everything queued before it is committed.
    Barrier(Done),
    /// Commit what is queued before it, then stop.
    Stop,
}

impl Job {
    fn rows(&self) -> usize {
        match self {
            Job::Records { rows, .. } => rows.len(),
            _ => 1,
        }
    }
}

pub struct WriterConfig {
    pub store_dir: PathBuf,
    pub sync: SyncMode,
    pub cache_mib: u32,
    pub batch_max: usize,
    pub queue_capacity: usize,
}

struct OpenPartition {
    conn: Connection,
    /// (device, inode) of the file when opened: if the path stops naming this file
    /// (deleted, replaced), writing on would put records where no one can find them.
    identity: (u64, u64),
    last_used: u64,
}

/// Most partitions the writer keeps open; traffic normally touches one, two around
/// midnight (late outcomes of yesterday's submissions).
const MAX_OPEN: usize = 4;

struct Writer {
    cfg: WriterConfig,
    open: HashMap<PartitionId, OpenPartition>,
    metrics: Arc<Metrics>,
    tick: u64,
}

pub fn spawn(
    cfg: WriterConfig,
    metrics: Arc<Metrics>,
) -> std::io::Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let writer = Writer {
        cfg,
        open: HashMap::new(),
        metrics,
        tick: 0,
    };
    let handle = std::thread::Builder::new()
        .name("relaylog-writer".into())
        .spawn(move || writer.run(rx))?;
    Ok((tx, handle))
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs: Vec<Job> = Vec::with_capacity(1024);
        let mut stop = false;
        while !stop {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut rows = first.rows();
            stop = matches!(first, Job::Stop);
            jobs.push(first);
            while rows < self.cfg.batch_max && !stop {
                match rx.try_recv() {
                    Ok(job) => {
                        rows += job.rows();
                        stop = matches!(job, Job::Stop);
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.metrics.queue_depth.set(rx.len() as i64);
            self.commit(&mut jobs);
        }
        // Close connections cleanly (checkpoints the WAL).
        self.open.clear();
    }

    fn commit(&mut self, jobs: &mut Vec<Job>) {
        let started = Instant::now();
        let mut by_partition: BTreeMap<PartitionId, Vec<usize>> = BTreeMap::new();
        for (i, job) in jobs.iter().enumerate() {
            match job {
                Job::Records { partition, .. } | Job::Outcome { partition, .. } => {
                    by_partition.entry(*partition).or_default().push(i)
                }
                Job::Barrier(_) | Job::Stop => {}
            }
        }
        let mut results: Vec<Result<(), WriteError>> = vec![Ok(()); jobs.len()];
        let mut records = 0u64;
        for (partition, idx) in &by_partition {
            let result = self.write_partition(*partition, idx, jobs);
            match &result {
                Ok((r, o)) => {
                    records += r;
                    self.metrics.outcomes_written.inc_by(*o);
                }
                Err(e) => {
                    self.metrics.store_errors.inc();
                    tracing::error!(partition = %partition, error = %e, "commit failed; records refused, partition will be reopened");
                    self.open.remove(partition);
                }
            }
            for &i in idx {
                results[i] = result.clone().map(|_| ());
            }
        }
        self.metrics.records_written.inc_by(records);
        self.metrics.batch_records.observe(records as f64);
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        for (job, result) in jobs.drain(..).zip(results) {
            let done = match job {
                Job::Records { done, .. } | Job::Outcome { done, .. } => done,
                Job::Barrier(done) => Some(done),
                Job::Stop => None,
            };
            if let Some(done) = done {
                // The waiter may have given up (timeout, client gone): nothing to do.
                let _ = done.send(result);
            }
        }
    }

    fn write_partition(
        &mut self,
        partition: PartitionId,
        idx: &[usize],
        jobs: &[Job],
    ) -> Result<(u64, u64), WriteError> {
        let conn = self.connection(partition)?;
        let tx = conn.unchecked_transaction().map_err(sql)?;
        let (mut records, mut outcomes) = (0u64, 0u64);
        {
            let mut rec = tx.prepare_cached(schema::INSERT_RECORD).map_err(sql)?;
            let mut out = tx.prepare_cached(schema::INSERT_OUTCOME).map_err(sql)?;
            for &i in idx {
                match &jobs[i] {
                    Job::Records { rows, .. } => {
                        for r in rows {
                            rec.execute(params![
                                r.submission,
                                r.ordinal,
                                r.at_us,
                                r.bucket,
                                r.protocol,
                                r.service,
                                r.recipient_form,
                                r.segments,
                                r.account_ix,
                                r.ip_ix,
                                r.originator_ix,
                                r.recipient_ix,
                                r.sealed,
                            ])
                            .map_err(sql)?;
                            records += 1;
                        }
                    }
                    Job::Outcome { row: o, .. } => {
                        out.execute(params![
                            o.submission,
                            o.at_us,
                            o.outcome,
                            o.upstream_status,
                            o.gateway_code,
                            o.message_id_sealed,
                        ])
                        .map_err(sql)?;
                        outcomes += 1;
                    }
                    Job::Barrier(_) | Job::Stop => {}
                }
            }
        }
        tx.commit().map_err(sql)?;
        Ok((records, outcomes))
    }

    /// The open connection of a partition, (re)opened if it is not open or if its path
    /// no longer names the file that is open.
    fn connection(&mut self, partition: PartitionId) -> Result<&Connection, WriteError> {
        self.tick += 1;
        let path = partition.path_in(&self.cfg.store_dir);
        let current = file_identity(&path);
        let stale = match (self.open.get(&partition), current) {
            (Some(open), Some(id)) => open.identity != id,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if stale {
            tracing::warn!(partition = %partition, "partition file was moved or replaced; reopening");
            self.open.remove(&partition);
        }
        if !self.open.contains_key(&partition) {
            if self.open.len() >= MAX_OPEN
                && let Some(oldest) = self
                    .open
                    .iter()
                    .min_by_key(|(_, p)| p.last_used)
                    .map(|(id, _)| *id)
            {
                self.open.remove(&oldest);
            }
            std::fs::create_dir_all(&self.cfg.store_dir).map_err(|e| io(&self.cfg.store_dir, e))?;
            let conn = schema::open_for_write(
                &path,
                &partition.to_string(),
                self.cfg.sync,
                self.cfg.cache_mib,
            )
            .map_err(sql)?;
            let identity = file_identity(&path)
                .ok_or_else(|| WriteError(format!("{} vanished after opening", path.display())))?;
            self.open.insert(
                partition,
                OpenPartition {
                    conn,
                    identity,
                    last_used: self.tick,
                },
            );
        }
        let open = self
            .open
            .get_mut(&partition)
            .ok_or_else(|| WriteError("partition not open".into()))?;
        open.last_used = self.tick;
        Ok(&open.conn)
    }
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| (m.dev(), m.ino()))
}

fn sql(e: rusqlite::Error) -> WriteError {
    WriteError(e.to_string())
}

fn io(path: &Path, e: std::io::Error) -> WriteError {
    WriteError(format!("{}: {e}", path.display()))
}
