//! `relaylog bench store`: synthetic records through the real store (sealing, the
//! writer, group commit, index flushes), spread evenly over a number of UTC days, with
//! records/s reported for each successive tenth of the run. Also how a demo or a test
//! fills a store with history.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;

use super::Rng;
use crate::canonical::{Form, Identifier};
use crate::clock::SystemClock;
use crate::config::StoreConfig;
use crate::metrics::Metrics;
use crate::record::{Protocol, Service, Submission};
use crate::store::{OpenError, RecordError, Store};

#[derive(Debug, Clone)]
pub struct StoreBench {
    pub records: u64,
    pub days: u32,
    pub start: NaiveDate,
    pub recipients_pool: u64,
    pub seed: u64,
    /// Threads sealing records (the writer is one more).
    pub producers: usize,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("--records and --days must be at least 1")]
    Empty,
    #[error(
        "{0} holds records that no benchmark made: point --config at a store of its own (benchmarks fill an empty one)"
    )]
    NotABenchStore(std::path::PathBuf),
    #[error("cannot mark {path} as a benchmark's store: {message}")]
    Mark {
        path: std::path::PathBuf,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct StoreBenchReport {
    pub records: u64,
    pub seconds: f64,
    /// Records/s committed in each tenth of the run.
    pub tenths: Vec<f64>,
}

impl StoreBenchReport {
    pub fn overall(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

/// The file that marks a store directory as a benchmark's: its records are made up.
const BENCH_MARK: &str = ".relaylog-bench";

/// Makes sure a store is a benchmark's, marking it so when it is empty: a benchmark
/// never puts made-up records among real ones, nor looks real ones up. On PostgreSQL
/// the mark is in the database (`relaylog.installation.bench`).
pub(crate) fn claim(cfg: &StoreConfig) -> Result<(), BenchError> {
    match &cfg.backend {
        crate::config::Backend::Sqlite => claim_dir(&cfg.path),
        crate::config::Backend::Postgres(pg) => {
            let what = std::path::PathBuf::from(format!("the database of store.url ({})", pg.url));
            let mark = |e: crate::pg::PgError| BenchError::Mark {
                path: what.clone(),
                message: e.to_string(),
            };
            let pool = crate::pg::Pool::shared(pg).map_err(mark)?;
            if crate::pg::schema::claim_for_bench(&mut *pool.get().map_err(mark)?).map_err(mark)? {
                Ok(())
            } else {
                Err(BenchError::NotABenchStore(what))
            }
        }
    }
}

fn claim_dir(store_dir: &std::path::Path) -> Result<(), BenchError> {
    let mark = store_dir.join(BENCH_MARK);
    if mark.exists() {
        return Ok(());
    }
    let listed = crate::store::partition::list(store_dir).map_err(|e| BenchError::Mark {
        path: store_dir.to_owned(),
        message: e.to_string(),
    })?;
    if !listed.is_empty() {
        return Err(BenchError::NotABenchStore(store_dir.to_owned()));
    }
    std::fs::create_dir_all(store_dir)
        .and_then(|()| {
            std::fs::write(
                &mark,
                "made by relaylog bench: the records here are made up\n",
            )
        })
        .map_err(|e| BenchError::Mark {
            path: mark,
            message: e.to_string(),
        })
}

/// The recipient number a random `n` draws from a pool of `pool` numbers.
pub(crate) fn pool_number(n: u64, pool: u64) -> String {
    format!("+3161{:07}", n % pool.max(1))
}

/// The `i`th synthetic submission: the same for the same seed, whatever the thread.
fn synthetic(
    b: &StoreBench,
    i: u64,
    start_us: i64,
    span_us: i64,
    rec: &crate::store::Recorder,
) -> Submission {
    let mut rng = Rng((b.seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
    let at = start_us + ((i as i128 * span_us as i128) / b.records as i128) as i64;
    let (a, ip, n) = (rng.next(), rng.next(), rng.next());
    Submission {
        smpp: None,
        id: rec.next_submission_id(at),
        at,
        protocol: Protocol::Http,
        service: Service::Sms,
        account: format!("account{:03}", a % 200),
        client_ip: IpAddr::V4(Ipv4Addr::new(198, 51, (ip >> 8) as u8 % 4, ip as u8)),
        client_port: (ip >> 16) as u16,
        originator: Some(Identifier {
            form: Form::Raw,
            value: format!("SENDER{}", a % 20),
        }),
        segments: 1,
        recipients: vec![Identifier {
            form: Form::E164,
            value: pool_number(n, b.recipients_pool),
        }],
    }
}

pub fn store(cfg: StoreConfig, b: &StoreBench) -> Result<StoreBenchReport, BenchError> {
    if b.records == 0 || b.days == 0 {
        return Err(BenchError::Empty);
    }
    claim(&cfg)?;
    let metrics = Arc::new(Metrics::new());
    let store = Store::open(cfg, Arc::new(SystemClock), metrics.clone())?;
    let start_us = b
        .start
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc()
        .timestamp_micros();
    let span_us = i64::from(b.days) * 86_400_000_000;
    let bar = (b.progress && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(b.records);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} records {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let began = Instant::now();
    let producers: Vec<_> = (0..b.producers.max(1))
        .map(|t| {
            let rec = store.recorder();
            let b = b.clone();
            let step = b.producers.max(1) as u64;
            std::thread::spawn(move || -> Result<(), RecordError> {
                let mut i = t as u64;
                while i < b.records {
                    rec.record_blocking(&synthetic(&b, i, start_us, span_us, &rec))?;
                    i += step;
                }
                Ok(())
            })
        })
        .collect();
    // Watch what is committed; note when each tenth is crossed.
    let mut marks = Vec::with_capacity(10);
    loop {
        let done = metrics.records_written.get();
        mark_tenths(&mut marks, done, b.records, began.elapsed().as_secs_f64());
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
        if marks.len() == 10 || producers.iter().all(|p| p.is_finished()) && done >= b.records {
            break;
        }
        if producers.iter().all(|p| p.is_finished()) {
            // A producer failed, or records are still in the queue: flush and look again.
            store.recorder().barrier_blocking()?;
            if metrics.records_written.get() < b.records {
                break;
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in producers {
        p.join().unwrap_or(Ok(()))?;
    }
    store.recorder().barrier_blocking()?;
    let seconds = began.elapsed().as_secs_f64();
    store.close_blocking();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(StoreBenchReport {
        records: b.records,
        seconds,
        tenths: tenth_rates(&marks, b.records),
    })
}

/// Notes, in `marks`, the time (`now`, seconds into the run) at which each tenth of
/// `total` records not yet marked has been committed, `done` being committed so far.
/// Tenths crossed between two looks (one commit can carry several) share the time
/// since the last mark, so none is reported as crossed in no time.
fn mark_tenths(marks: &mut Vec<f64>, done: u64, total: u64, now: f64) {
    // Tenth t is crossed at t/10 of the records, compared without rounding (for fewer
    // than ten records, `total * t / 10` would put some tenths at none).
    let crossed = (1..=10u64)
        .filter(|&t| u128::from(done) * 10 >= u128::from(total) * u128::from(t))
        .count()
        .saturating_sub(marks.len());
    if crossed == 0 {
        return;
    }
    let last = marks.last().copied().unwrap_or(0.0);
    let step = (now - last) / crossed as f64;
    for k in 1..=crossed {
        marks.push(last + step * k as f64);
    }
}

/// Records/s in each tenth, from the times [`mark_tenths`] noted.
fn tenth_rates(marks: &[f64], total: u64) -> Vec<f64> {
    let mut prev = 0.0;
    marks
        .iter()
        .map(|&m| {
            let rate = (total as f64 / 10.0) / (m - prev).max(1e-9);
            prev = m;
            rate
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tenths committed between two looks share the time since the last mark:
    /// neither is reported at a rate of a division by nearly zero (a commit that
    /// carried the last two tenths printed 3.9e11 records/s).
    #[test]
    fn tenths_crossed_together_share_their_time() {
        let mut marks = Vec::new();
        mark_tenths(&mut marks, 50, 1000, 0.5);
        assert!(marks.is_empty());
        mark_tenths(&mut marks, 100, 1000, 1.0);
        assert_eq!(marks, [1.0]);
        mark_tenths(&mut marks, 100, 1000, 1.5);
        assert_eq!(marks, [1.0], "nothing new crossed");
        mark_tenths(&mut marks, 1000, 1000, 10.0);
        assert_eq!(marks.len(), 10);
        assert_eq!(marks[9], 10.0);
        let rates = tenth_rates(&marks, 1000);
        assert_eq!(rates[0], 100.0);
        for r in &rates[1..] {
            assert!((r - 100.0).abs() < 1e-6, "{rates:?}");
        }
        // Past the end (more committed than asked for, later looks): still ten.
        mark_tenths(&mut marks, 1200, 1000, 11.0);
        assert_eq!(marks.len(), 10);
        assert_eq!(marks[9], 10.0);
    }

    /// With fewer records than tenths, no tenth is marked before a record is in.
    #[test]
    fn a_tenth_of_a_few_records_waits_for_them() {
        let mut marks = Vec::new();
        mark_tenths(&mut marks, 0, 3, 0.1);
        assert!(marks.is_empty(), "{marks:?}");
        mark_tenths(&mut marks, 1, 3, 1.0);
        assert_eq!(marks.len(), 3, "a third of the records is three tenths");
        mark_tenths(&mut marks, 3, 3, 2.0);
        assert_eq!(marks.len(), 10);
        assert_eq!(marks[9], 2.0);
    }

    /// A benchmark takes an empty store (and marks it), or one it marked; never one
    /// holding records it did not make.
    #[test]
    fn benchmarks_keep_to_stores_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        claim_dir(&store).unwrap();
        std::fs::write(store.join("2026-01-01.sqlite"), b"").unwrap();
        claim_dir(&store).unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("2026-01-01.sqlite"), b"").unwrap();
        let refused = claim_dir(&real).unwrap_err();
        assert!(
            matches!(refused, BenchError::NotABenchStore(_)),
            "{refused}"
        );
        assert!(!real.join(BENCH_MARK).exists());
    }
}
