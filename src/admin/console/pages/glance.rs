//! Traffic at a glance: counts only, drawn as SVG on the server.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::State;

use super::{Nav, Page, St, nav, ok};
use crate::admin::api::ApiError;
use crate::admin::console::traffic::{Family, HOURS, Week};
use crate::admin::console::{Signed, svg};
use crate::admin::ops::blocking;
use crate::clock::Micros;

/// Partitions the page draws (the newest); the rest are counted in the total.
const PARTITIONS_DRAWN: usize = 14;

const HOUR_US: Micros = 3_600_000_000;

/// One listener's week: its chart and its counts by day, for the table beside it.
struct ListenerWeek {
    title: String,
    chart: String,
    days: Vec<(String, u64)>,
    total: u64,
}

#[derive(Template)]
#[template(path = "traffic.html", config = "src/admin/console/askama.toml")]
struct TrafficPage {
    nav: Option<Nav>,
    listeners: Vec<ListenerWeek>,
    outcomes: String,
    fail_closed: String,
    fail_closed_total: u64,
    partitions: usize,
    store_size: String,
    next_expiry: Option<String>,
    sizes: String,
}

/// Bytes as people read them.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A listener's hourly messages over the week (zeros where nothing was counted).
fn hourly(week: &Week, listener: &str) -> Vec<u64> {
    week.series
        .iter()
        .filter(|(k, _)| k.family == Family::Messages && k.listener == listener)
        .fold(vec![0; HOURS], |mut acc, (_, v)| {
            for (a, n) in acc.iter_mut().zip(v) {
                *a += n;
            }
            acc
        })
}

/// Each family's totals over the week, by `listener · label`.
fn totals(week: &Week, family: Family) -> Vec<(String, u64, String)> {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in week.series.iter().filter(|(k, _)| k.family == family) {
        *by.entry(format!("{} · {}", k.listener, k.label))
            .or_default() += v.iter().sum::<u64>();
    }
    by.into_iter().map(|(l, n)| (l, n, n.to_string())).collect()
}

/// The date the next expiry run deletes a partition: the oldest partition no hold
/// keeps, at its end plus the retention. `None` when there is none; a date already
/// past means the next run (expiry runs at `store.expiry-interval`).
fn next_expiry(
    sizes: &[(crate::store::partition::PartitionId, u64)],
    holds: &[crate::ledger::Hold],
    retention: crate::config::Retention,
    today: chrono::NaiveDate,
) -> Option<String> {
    let (p, _) = sizes
        .iter()
        .find(|(p, _)| !holds.iter().any(|h| h.covers(*p)))?;
    let at = retention
        .expires(crate::clock::micros_to_datetime(p.end_micros()))
        .date_naive();
    Some(if at <= today {
        format!("{p}, due at the next expiry run")
    } else {
        format!("{p} on {at}")
    })
}

pub(super) async fn traffic(State(c): St, s: Signed) -> Page {
    let (api, traffic) = (c.api.clone(), c.traffic.clone());
    let (week, sizes, holds) = blocking(move || {
        let week = traffic.week()?;
        let sizes =
            crate::store::partition_sizes(&api.config.store).map_err(|e| ApiError::internal(&e))?;
        Ok((week, sizes, api.ledger()?.holds()?))
    })
    .await?;

    let first_hour = week.first_hour / HOUR_US;
    let day_offset = (24 - first_hour.rem_euclid(24)) as usize % 24;
    let day = |d: i64| {
        crate::clock::micros_to_datetime((first_hour + day_offset as i64 + d * 24) * HOUR_US)
    };
    let day_labels: Vec<String> = (0..8)
        .map(|d| day(d).format("%a %d %b").to_string())
        .collect();
    let listeners = c
        .listeners
        .iter()
        .enumerate()
        .map(|(i, (name, protocol))| {
            let counts = hourly(&week, name);
            let title = format!("Messages per hour: {name} ({protocol})");
            let chart = svg::hourly(
                &format!("messages-{i}"),
                &title,
                &counts,
                week.first_hour,
                day_offset,
                &day_labels,
            );
            // Counts by day, the first (part of a) day included.
            let mut days: Vec<(String, u64)> = Vec::new();
            for (i, n) in counts.iter().enumerate() {
                let at = crate::clock::micros_to_datetime(week.first_hour + i as i64 * HOUR_US);
                let label = at.format("%a %d %b").to_string();
                match days.last_mut() {
                    Some((l, sum)) if *l == label => *sum += n,
                    _ => days.push((label, *n)),
                }
            }
            ListenerWeek {
                title,
                chart,
                total: counts.iter().sum(),
                days,
            }
        })
        .collect();
    let mut outcomes = totals(&week, Family::Requests);
    for (l, n, shown) in totals(&week, Family::UpstreamErrors) {
        outcomes.push((format!("{l} (upstream error)"), n, shown));
    }
    for (l, n, shown) in totals(&week, Family::NotForwarded) {
        outcomes.push((format!("{l} (not forwarded)"), n, shown));
    }
    let fail_closed = totals(&week, Family::FailClosed);
    let fail_closed_total = fail_closed.iter().map(|r| r.1).sum();
    let today = c.api.clock.now().date_naive();
    let next_expiry = next_expiry(&sizes, &holds, c.api.config.store.retention, today);
    let total: u64 = sizes.iter().map(|(_, b)| b).sum();
    let drawn: Vec<(String, u64, String)> = sizes
        .iter()
        .rev()
        .take(PARTITIONS_DRAWN)
        .map(|(p, b)| (p.to_string(), *b, human(*b)))
        .collect();
    ok(&TrafficPage {
        nav: nav(&s),
        listeners,
        outcomes: svg::bars("outcomes", "Requests by what became of them", &outcomes),
        fail_closed: svg::bars("fail-closed", "Fail-closed by reason", &fail_closed),
        fail_closed_total,
        partitions: sizes.len(),
        store_size: human(total),
        next_expiry,
        sizes: svg::bars(
            "sizes",
            &format!("Size of the newest {} partitions", drawn.len()),
            &drawn,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::partition::PartitionId;

    #[test]
    fn the_next_expiry_skips_held_partitions_and_says_when_it_is_due() {
        let day = |d: &str| PartitionId::parse(d).unwrap();
        let sizes = [(day("2025-10-01"), 1), (day("2025-10-02"), 1)];
        let hold = crate::ledger::Hold {
            case: "7".into(),
            since: day("2025-10-01").start_micros(),
            until: day("2025-10-01").end_micros(),
            reason: "r".into(),
            placed_at: 0,
            placed_by: "anna".into(),
        };
        let months = crate::config::Retention::Months(13);
        let today = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        assert_eq!(
            next_expiry(&sizes, &[], months, today).unwrap(),
            "2025-10-01 on 2026-11-02"
        );
        assert_eq!(
            next_expiry(&sizes, std::slice::from_ref(&hold), months, today).unwrap(),
            "2025-10-02 on 2026-11-03"
        );
        let late = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        assert!(
            next_expiry(&sizes, &[], months, late)
                .unwrap()
                .ends_with("due at the next expiry run")
        );
        assert_eq!(next_expiry(&[], &[], months, today), None);
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(12), "12 B");
    }
}
