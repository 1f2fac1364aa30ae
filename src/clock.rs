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
    /// Read from `SystemTime` directly: `Utc::now()` makes a calendar date of it first
    /// (two a relayed message, on the hot path), which `timestamp_micros` then undoes.
    fn now_micros(&self) -> Micros {
        let micros = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => micros(after),
            // A clock set before 1970 (where chrono's `Utc::now` panics): rounded down,
            // as chrono rounds a negative time.
            Err(e) => {
                let before = e.duration();
                -micros(before) - i64::from(before.subsec_nanos() % 1_000 != 0)
            }
        }
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

/// Parses a `since`/`until` as officers write them: an RFC 3339 time, or a date. A
/// date as `until` (`end_of_day`) means the end of that day, so since 2026-03-01 until
/// 2026-03-01 is all of 1 March.
pub fn parse_time(s: &str, end_of_day: bool) -> Result<DateTime<Utc>, BadTime> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| BadTime(s.to_owned()))?;
    let d = if end_of_day {
        d.succ_opt().unwrap_or(d)
    } else {
        d
    };
    Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is neither an RFC 3339 time nor a date (YYYY-MM-DD)")]
pub struct BadTime(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    /// The wall clock read without chrono gives what chrono gives.
    #[test]
    fn the_system_clock_reads_as_chrono_does() {
        let before = Utc::now().timestamp_micros();
        let now = SystemClock.now_micros();
        let after = Utc::now().timestamp_micros();
        assert!((before..=after).contains(&now), "{before} {now} {after}");
    }
}
