//! Partitions: one SQLite file per UTC day (or month), named by the period it covers.
//! A partition is the unit of writing, querying, key custody and expiry.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{Datelike, NaiveDate};

use crate::clock::{Micros, micros_to_datetime};
use crate::config::Granularity;

/// One period of the store: `2026-11-22` (day) or `2026-11` (month).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    /// First day of the period; for a month partition, the 1st.
    start: NaiveDate,
    granularity: Granularity,
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

impl PartitionId {
    pub fn containing(granularity: Granularity, at: Micros) -> Self {
        thread_local! {
            /// The partition this thread found last, with its bounds: every message
            /// asks (its records, its outcome), and nearly all of them ask for the
            /// same one, which costs a calendar date to find afresh.
            static LAST: std::cell::Cell<Option<(PartitionId, Micros, Micros)>> =
                const { std::cell::Cell::new(None) };
        }
        let last = LAST.try_with(std::cell::Cell::get).ok().flatten();
        if let Some((p, start, end)) = last
            && p.granularity == granularity
            && (start..end).contains(&at)
        {
            return p;
        }
        let p = Self::of_date(granularity, micros_to_datetime(at).date_naive());
        let _ = LAST.try_with(|l| l.set(Some((p, p.start_micros(), p.end_micros()))));
        p
    }

    pub fn of_date(granularity: Granularity, date: NaiveDate) -> Self {
        let start = match granularity {
            Granularity::Day => date,
            Granularity::Month => date.with_day(1).unwrap_or(date),
        };
        Self { start, granularity }
    }

    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    pub fn start_date(&self) -> NaiveDate {
        self.start
    }

    /// The first day after the period.
    pub fn end_date(&self) -> NaiveDate {
        match self.granularity {
            Granularity::Day => self.start.succ_opt().unwrap_or(self.start),
            Granularity::Month => self
                .start
                .checked_add_months(chrono::Months::new(1))
                .unwrap_or(self.start),
        }
    }

    pub fn start_micros(&self) -> Micros {
        date_micros(self.start)
    }

    /// Exclusive end.
    pub fn end_micros(&self) -> Micros {
        date_micros(self.end_date())
    }

    pub fn next(&self) -> Self {
        Self::of_date(self.granularity, self.end_date())
    }

    /// Parses a partition name as written by [`fmt::Display`].
    pub fn parse(name: &str) -> Option<Self> {
        if let Ok(d) = NaiveDate::parse_from_str(name, "%Y-%m-%d") {
            return (d.format("%Y-%m-%d").to_string() == name)
                .then_some(Self::of_date(Granularity::Day, d));
        }
        let d = NaiveDate::parse_from_str(&format!("{name}-01"), "%Y-%m-%d").ok()?;
        (d.format("%Y-%m").to_string() == name).then_some(Self::of_date(Granularity::Month, d))
    }

    pub fn file_name(&self) -> String {
        format!("{self}.sqlite")
    }

    pub fn path_in(&self, store_dir: &Path) -> PathBuf {
        store_dir.join(self.file_name())
    }

    /// Every partition of this granularity that overlaps `[since, until)`, oldest first.
    pub fn range(granularity: Granularity, since: Micros, until: Micros) -> Vec<PartitionId> {
        let mut out = Vec::new();
        if until <= since {
            return out;
        }
        let mut p = Self::containing(granularity, since);
        while p.start_micros() < until {
            out.push(p);
            let next = p.next();
            if next == p {
                break;
            }
            p = next;
        }
        out
    }
}

fn date_micros(d: NaiveDate) -> Micros {
    let days = d.signed_duration_since(NaiveDate::default()).num_days();
    days.saturating_mul(MICROS_PER_DAY)
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand rather than through `format`: a lookup over a year names
        // hundreds of partitions, and strftime parsing showed in its profile.
        let (y, m) = (self.start.year(), self.start.month());
        match self.granularity {
            Granularity::Day => write!(f, "{y:04}-{m:02}-{:02}", self.start.day()),
            Granularity::Month => write!(f, "{y:04}-{m:02}"),
        }
    }
}

/// The partitions present in a store directory, oldest first. Files that are not
/// partitions (`-wal`, `-shm`, strays) are ignored.
pub fn list(store_dir: &Path) -> std::io::Result<Vec<PartitionId>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(store_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".sqlite")
            && let Some(p) = PartitionId::parse(stem)
        {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn us(y: i32, m: u32, d: u32, h: u32) -> Micros {
        chrono::Utc
            .with_ymd_and_hms(y, m, d, h, 0, 0)
            .unwrap()
            .timestamp_micros()
    }

    /// The partition a thread found last is given again only for a time inside it and
    /// of its granularity: at its bounds, across them and back, and from one
    /// granularity to the other, the answer is the one found afresh.
    #[test]
    fn the_last_partition_kept_is_given_only_inside_it() {
        let fresh = |g: Granularity, at: Micros| {
            PartitionId::of_date(g, micros_to_datetime(at).date_naive())
        };
        let day = us(2026, 12, 4, 0);
        let times = [
            day,
            day + 1,
            day + MICROS_PER_DAY - 1,
            day + MICROS_PER_DAY,
            day - 1,
            day,
            us(2026, 12, 31, 23),
            us(2027, 1, 1, 0),
            us(2026, 12, 31, 23),
            us(2028, 2, 29, 23),
            us(2028, 3, 1, 0),
            -1,
            0,
            -MICROS_PER_DAY,
            i64::MIN,
            i64::MAX,
        ];
        for g in [Granularity::Day, Granularity::Month, Granularity::Day] {
            for at in times {
                assert_eq!(PartitionId::containing(g, at), fresh(g, at), "{g:?} {at}");
            }
        }
    }

    #[test]
    fn names_and_bounds() {
        let p = PartitionId::containing(Granularity::Day, us(2026, 11, 22, 23));
        assert_eq!(p.to_string(), "2026-11-22");
        assert_eq!(p.file_name(), "2026-11-22.sqlite");
        assert_eq!(p.start_micros(), us(2026, 11, 22, 0));
        assert_eq!(p.end_micros(), us(2026, 11, 23, 0));
        let m = PartitionId::containing(Granularity::Month, us(2026, 12, 31, 23));
        assert_eq!(m.to_string(), "2026-12");
        assert_eq!(m.next().to_string(), "2027-01");
        assert_eq!(m.end_micros(), us(2027, 1, 1, 0));
    }

    #[test]
    fn rollover_across_days_months_years_and_leap_days() {
        let table = [
            (us(2026, 12, 31, 23), "2026-12-31", "2027-01-01"),
            (us(2028, 2, 28, 12), "2028-02-28", "2028-02-29"),
            (us(2028, 2, 29, 23), "2028-02-29", "2028-03-01"),
            (us(2026, 3, 29, 1), "2026-03-29", "2026-03-30"), // EU DST change: UTC has none
        ];
        for (at, name, next) in table {
            let p = PartitionId::containing(Granularity::Day, at);
            assert_eq!(
                (p.to_string().as_str(), p.next().to_string().as_str()),
                (name, next)
            );
            assert_eq!(
                p.end_micros() - p.start_micros(),
                MICROS_PER_DAY,
                "{name} is 24 h"
            );
        }
        let last_us_of_year = us(2027, 1, 1, 0) - 1;
        assert_eq!(
            PartitionId::containing(Granularity::Day, last_us_of_year).to_string(),
            "2026-12-31"
        );
        assert_eq!(
            PartitionId::containing(Granularity::Month, last_us_of_year).to_string(),
            "2026-12"
        );
        assert_eq!(
            PartitionId::containing(Granularity::Month, us(2028, 2, 29, 0)).end_micros(),
            us(2028, 3, 1, 0)
        );
    }

    #[test]
    fn parse_round_trips_and_rejects_strays() {
        for name in ["2026-11-22", "2024-02-29", "2026-11"] {
            assert_eq!(PartitionId::parse(name).unwrap().to_string(), name);
        }
        for name in ["2026-11-22-wal", "2025-02-29", "2026-13", "2026-1-2", "x"] {
            assert!(PartitionId::parse(name).is_none(), "{name}");
        }
    }

    #[test]
    fn range_covers_the_window_and_nothing_else() {
        let r = PartitionId::range(Granularity::Day, us(2026, 2, 27, 12), us(2026, 3, 2, 0));
        let names: Vec<_> = r.iter().map(|p| p.to_string()).collect();
        assert_eq!(names, ["2026-02-27", "2026-02-28", "2026-03-01"]);
        assert!(PartitionId::range(Granularity::Day, 10, 10).is_empty());
    }
}
