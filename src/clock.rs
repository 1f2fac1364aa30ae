//! Time, injected: every component that stamps a record or picks a partition asks a
//! [`Clock`], so tests can cross day, month and year boundaries without waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// Microseconds since the Unix epoch, UTC. The store's unit of time.
pub type Micros = i64;

pub trait Clock: Send + Sync + 'static {
    fn now_micros(&self) -> Micros;

    fn now(&self) -> DateTime<Utc> {
        micros_to_datetime(self.now_micros())
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> Micros {
        Utc::now().timestamp_micros()
    }
}

/// A clock that only moves when told to. Cloning shares the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Arc::new(AtomicI64::new(at.timestamp_micros())))
    }

    pub fn set(&self, at: DateTime<Utc>) {
        self.0.store(at.timestamp_micros(), Ordering::SeqCst);
    }

    pub fn advance(&self, by: chrono::Duration) {
        let by = by.num_microseconds().unwrap_or(i64::MAX);
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> Micros {
        self.0.load(Ordering::SeqCst)
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// Converts store time to a calendar time. Out-of-range values (beyond year 262143)
/// cannot come from a clock; they clamp to the epoch rather than panic.
pub fn micros_to_datetime(us: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}
