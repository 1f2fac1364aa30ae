//! Benchmark commands: `bench store` (the write path through the real store),
//! `bench http` (a load generator for SMS submission APIs), `bench smtp` (one for
//! mail servers), `bench smpp` (one for SMSCs) and `bench passthrough` (the bare proxy
//! relaylog is compared with). The load generators share their schedule, histogram and
//! report.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

pub mod http;
pub mod passthrough;
pub mod pgcluster;
pub mod query;
pub mod smpp;
pub mod smtp;
pub mod soak;
pub(crate) mod store;

pub use self::store::{BenchError, StoreBench, StoreBenchReport, store};

/// xorshift64*: fixed-seed, fast, good enough to spread synthetic identifiers.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// One load-generator connection's stream, distinct per `index`.
    pub(crate) fn for_worker(seed: u64, index: usize) -> Rng {
        Rng(seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Latencies from 1 µs to 60 s with 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    // new_with_bounds fails only for low < 1, high < 2 * low or sigfig > 5: not these.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

/// Microseconds since `start`, as a histogram takes them.
pub(crate) fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros().clamp(1, 60_000_000) as u64
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Percentiles {
    pub(crate) fn of(hist: &Histogram<u64>) -> Percentiles {
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            p99_9: ms(0.999),
            max: hist.max() as f64 / 1000.0,
        }
    }

    pub fn to_text(&self) -> String {
        format!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
            self.p50, self.p90, self.p99, self.p99_9, self.max
        )
    }
}

/// Wake-up lateness of tokio's timer that is not charged to the server.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// When one connection's next request is due: at once (closed loop) or on a fixed
/// schedule that is its share of an open-loop rate.
pub(crate) struct Schedule {
    interval: Option<Duration>,
    begin: Instant,
    n: u64,
}

impl Schedule {
    pub(crate) fn new(rate: Option<f64>, connections: usize) -> Schedule {
        Schedule {
            interval: rate.map(|r| Duration::from_secs_f64(connections as f64 / r.max(1e-6))),
            begin: Instant::now(),
            n: 0,
        }
    }

    /// The next request's due time, or `None` once it falls past the deadline.
    pub(crate) fn due(&mut self, deadline: Option<Instant>) -> Option<Instant> {
        let due = match self.interval {
            Some(i) => self.begin + i.mul_f64(self.n as f64),
            None => Instant::now(),
        };
        if deadline.is_some_and(|d| due >= d) {
            return None;
        }
        self.n += 1;
        Some(due)
    }

    /// Waits until `due` (open loop) and says where its latency counts from: the due
    /// time, so that queueing behind a slow answer is seen (no coordinated omission).
    /// The timer itself wakes up to ~1 ms late; that lateness is the load generator's,
    /// not the server's, and is not counted.
    pub(crate) async fn wait(&self, due: Instant) -> Instant {
        if self.interval.is_none() {
            return due;
        }
        tokio::time::sleep_until(due.into()).await;
        let woke = Instant::now();
        if woke.duration_since(due) < TIMER_SLACK {
            woke
        } else {
            due
        }
    }
}

/// A progress spinner on a terminal (`what` counted per second), unless asked not to.
fn spinner(progress: bool, what: &str) -> Option<indicatif::ProgressBar> {
    (progress && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{spinner}} {{elapsed}} {{pos}} {what} {{per_sec}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    })
}

/// What a run's load workers share: submissions issued (against a count limit) and
/// done (for the progress spinner).
#[derive(Default)]
pub(crate) struct Shared {
    issued: AtomicU64,
    pub(crate) done: AtomicU64,
}

impl Shared {
    /// Takes one submission from `limit`: false once all are issued.
    pub(crate) fn issue(&self, limit: Option<u64>) -> bool {
        limit.is_none_or(|l| self.issued.fetch_add(1, Ordering::Relaxed) < l)
    }

    pub(crate) fn done(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `n` load workers (`spawn(index, shared)`) to their end, a spinner counting
/// `what` when `progress`: what each measured, or why one failed.
pub(crate) async fn run_workers<W, F>(
    n: usize,
    progress: bool,
    what: &str,
    spawn: impl Fn(usize, Arc<Shared>) -> F,
) -> Result<Vec<W>, String>
where
    F: std::future::Future<Output = W> + Send + 'static,
    W: Send + 'static,
{
    let shared = Arc::new(Shared::default());
    let bar = spinner(progress, what);
    let workers: Vec<_> = (0..n)
        .map(|i| tokio::spawn(spawn(i, shared.clone())))
        .collect();
    if let Some(bar) = &bar {
        while !workers.iter().all(|w| w.is_finished()) {
            bar.set_position(shared.done.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut out = Vec::with_capacity(n);
    for w in workers {
        out.push(w.await.map_err(|e| e.to_string())?);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(out)
}
