//! Traffic at a glance: counts per hour over the last week, read from the process's
//! own counters (`/metrics`), never from records.
//!
//! A sampler reads the counters once a minute (and when the page is asked for) and
//! adds what each grew by to the current hour, in the ledger (`traffic`), where every
//! node adds its own: the page shows the installation's week, and a restart loses
//! nothing but the minute it was in. Nothing is added to the relay's hot path. Counts
//! the ledger could not take wait in memory for the next try, bounded by [`HOURS`]
//! times [`MAX_SERIES`]; series come from configured listener names and fixed labels.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::clock::{Micros, SharedClock};
use crate::ledger::{Ledger, LedgerError, TrafficCount};
use crate::metrics::Metrics;

/// Hours kept: a week.
pub const HOURS: usize = 7 * 24;

const HOUR_US: Micros = 3_600_000_000;

/// How often the sampler reads the counters.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Series counted at most (listeners × labels); more are not. Generous: labels come
/// from configuration and fixed words.
pub const MAX_SERIES: usize = 1024;

/// The counters drawn, by their exposition names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `relaylog_messages_total{listener}`: messages recorded.
    Messages,
    /// `relaylog_requests_total{listener,kind}`: what became of each request.
    Requests,
    /// `relaylog_fail_closed_total{listener,reason}`: refused because the store could
    /// not take them.
    FailClosed,
    /// `relaylog_upstream_errors_total{listener,reason}`.
    UpstreamErrors,
    /// `relaylog_not_forwarded_total{listener,reason}`.
    NotForwarded,
}

impl Family {
    /// (family, exposition name, its second label, its name in the ledger).
    const ALL: [(Family, &'static str, &'static str, &'static str); 5] = [
        (Family::Messages, "relaylog_messages_total", "", "messages"),
        (
            Family::Requests,
            "relaylog_requests_total",
            "kind",
            "requests",
        ),
        (
            Family::FailClosed,
            "relaylog_fail_closed_total",
            "reason",
            "fail_closed",
        ),
        (
            Family::UpstreamErrors,
            "relaylog_upstream_errors_total",
            "reason",
            "upstream_errors",
        ),
        (
            Family::NotForwarded,
            "relaylog_not_forwarded_total",
            "reason",
            "not_forwarded",
        ),
    ];

    fn stored(self) -> &'static str {
        Family::ALL.iter().find(|f| f.0 == self).map_or("", |f| f.3)
    }

    fn of_stored(name: &str) -> Option<Family> {
        Family::ALL.iter().find(|f| f.3 == name).map(|f| f.0)
    }
}

/// One counter: its family, listener and second label (kind or reason; empty for
/// messages).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Series {
    pub family: Family,
    pub listener: String,
    pub label: String,
}

/// Opens the ledger the hours go into.
pub type OpenLedger = Box<dyn Fn() -> Result<Ledger, LedgerError> + Send + Sync>;

pub struct Traffic {
    metrics: Arc<Metrics>,
    clock: SharedClock,
    ledger: OpenLedger,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each counter's value when last read.
    last: HashMap<Series, u64>,
    /// What the counters grew by, by hour, not yet in the ledger (sorted: see
    /// [`Ledger::add_traffic`]).
    pending: BTreeMap<(i64, Series), u64>,
}

/// What the page draws: for each series, [`HOURS`] counts ending with the current
/// hour (oldest first).
pub struct Week {
    /// The first hour's start.
    pub first_hour: Micros,
    pub series: BTreeMap<Series, Vec<u64>>,
}

impl Traffic {
    /// A sampler of this process's counters (which start at zero with it: all they
    /// count is counted).
    pub fn new(metrics: Arc<Metrics>, clock: SharedClock, ledger: OpenLedger) -> Arc<Traffic> {
        let t = Arc::new(Traffic {
            metrics,
            clock,
            ledger,
            state: Mutex::default(),
        });
        t.sample();
        t
    }

    /// Reads the counters and adds their growth to the current hour's pending counts.
    fn sample(&self) {
        let hour = self.clock.now_micros().div_euclid(HOUR_US);
        let read = parse(&self.metrics.encode());
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (series, value) in read {
            if !st.last.contains_key(&series) && st.last.len() >= MAX_SERIES {
                continue;
            }
            // The process's counters start at zero: a counter seen for the first
            // time grew from zero.
            let before = st.last.insert(series.clone(), value).unwrap_or(0);
            let delta = value.saturating_sub(before);
            if delta > 0 {
                *st.pending.entry((hour, series)).or_default() += delta;
            }
        }
        // Hours past the week are not worth keeping for a ledger that is away.
        st.pending.retain(|(h, _), _| *h > hour - HOURS as i64);
    }

    /// Samples, and writes what is pending into the ledger. On failure the counts
    /// stay pending for the next try. Blocking.
    pub fn store(&self) -> Result<(), LedgerError> {
        self.sample();
        let pending =
            std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).pending);
        // Even with nothing new: the hours past the week are forgotten.
        let hour = self.clock.now_micros().div_euclid(HOUR_US);
        let rows: Vec<TrafficCount> = pending
            .iter()
            .map(|((h, s), n)| TrafficCount {
                hour: *h,
                family: s.family.stored().to_owned(),
                listener: s.listener.clone(),
                label: s.label.clone(),
                count: i64::try_from(*n).unwrap_or(i64::MAX),
            })
            .collect();
        let written =
            (self.ledger)().and_then(|mut l| l.add_traffic(&rows, hour - HOURS as i64 + 1));
        if written.is_err() {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            for (k, n) in pending {
                *st.pending.entry(k).or_default() += n;
            }
        }
        written
    }

    /// The week up to now, every node's counts, sampled and stored afresh. Blocking.
    pub fn week(&self) -> Result<Week, LedgerError> {
        if let Err(e) = self.store() {
            tracing::warn!(error = %e, "traffic counts could not be stored; kept for the next try");
        }
        let hour = self.clock.now_micros().div_euclid(HOUR_US);
        let first = hour - HOURS as i64 + 1;
        let rows = (self.ledger)()?.traffic_since(first)?;
        let mut series: BTreeMap<Series, Vec<u64>> = BTreeMap::new();
        for s in self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last
            .keys()
        {
            series.insert(s.clone(), vec![0; HOURS]);
        }
        for c in rows {
            let (Some(family), Ok(i)) = (
                Family::of_stored(&c.family),
                usize::try_from(c.hour - first),
            ) else {
                continue;
            };
            let key = Series {
                family,
                listener: c.listener,
                label: c.label,
            };
            if i >= HOURS || (series.len() >= MAX_SERIES && !series.contains_key(&key)) {
                continue;
            }
            series.entry(key).or_insert_with(|| vec![0; HOURS])[i] +=
                u64::try_from(c.count).unwrap_or(0);
        }
        Ok(Week {
            first_hour: first * HOUR_US,
            series,
        })
    }

    /// Stores every [`SAMPLE_EVERY`], and once more at `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: crate::shutdown::Shutdown) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                () = shutdown.wait() => true,
            };
            let t = self.clone();
            let stored = tokio::task::spawn_blocking(move || t.store()).await;
            if let Ok(Err(e)) = stored {
                tracing::warn!(error = %e, "traffic counts could not be stored; kept for the next try");
            }
            if last {
                return;
            }
        }
    }
}

/// The drawn families' counters in an OpenMetrics exposition (the process's own,
/// from [`Metrics::encode`]): `name{label="value",...} number` lines.
fn parse(text: &str) -> Vec<(Series, u64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((family, name, second, _)) = Family::ALL
            .iter()
            .find(|(_, name, _, _)| line.starts_with(name) && line[name.len()..].starts_with('{'))
        else {
            continue;
        };
        let Some((labels, value)) = labels(&line[name.len() + 1..]) else {
            continue;
        };
        let value = value.trim();
        let Some(value) = value
            .parse::<u64>()
            .ok()
            .or_else(|| value.parse::<f64>().ok().map(|v| v as u64))
        else {
            continue;
        };
        let get = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let Some(listener) = get("listener") else {
            continue;
        };
        let label = if second.is_empty() {
            String::new()
        } else {
            match get(second) {
                Some(l) => l,
                None => continue,
            }
        };
        out.push((
            Series {
                family: *family,
                listener,
                label,
            },
            value,
        ));
    }
    out
}

/// The labels of `key="value",...}` (escapes `\\`, `\"`, `\n` undone) and what
/// follows the closing brace.
fn labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((out, after));
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((key.trim_start_matches(',').to_owned(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::metrics::{ListenerLabels, ReasonLabels, RequestLabels};

    #[test]
    fn the_exposition_is_read_with_its_escapes() {
        let text = "# TYPE relaylog_requests counter\n\
            relaylog_requests_total{listener=\"a\\\"b\",kind=\"message\"} 7\n\
            relaylog_requests_total{kind=\"rejected\",listener=\"sms\"} 2.0\n\
            relaylog_requests_created{listener=\"sms\",kind=\"message\"} 1.7e9\n\
            relaylog_messages_total{listener=\"sms\"} 3\n\
            relaylog_messages_total{listener=\"sms\" 3\n";
        let got = parse(text);
        let s = |family, listener: &str, label: &str| Series {
            family,
            listener: listener.into(),
            label: label.into(),
        };
        assert_eq!(
            got,
            [
                (s(Family::Requests, "a\"b", "message"), 7),
                (s(Family::Requests, "sms", "rejected"), 2),
                (s(Family::Messages, "sms", ""), 3),
            ]
        );
    }

    #[test]
    fn counts_land_in_their_hour_survive_a_restart_and_leave_after_a_week() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let open = |p: std::path::PathBuf| -> OpenLedger { Box::new(move || Ledger::open(&p)) };
        let start = chrono::DateTime::parse_from_rfc3339("2026-12-06T10:15:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let clock = ManualClock::new(start);
        let metrics = Arc::new(Metrics::new());
        let sms = ListenerLabels {
            listener: "sms".into(),
        };
        let msgs = metrics.messages.get_or_create_owned(&sms);
        // Counted before the sampler starts (the relay takes traffic first): counted.
        msgs.inc_by(5);
        let t = Traffic::new(metrics.clone(), Arc::new(clock.clone()), open(path.clone()));
        msgs.inc_by(3);
        // A family whose first counter comes later counts from zero.
        metrics
            .fail_closed
            .get_or_create(&ReasonLabels {
                listener: "sms".into(),
                reason: "queue_full",
            })
            .inc();
        metrics
            .requests
            .get_or_create(&RequestLabels {
                listener: "sms".into(),
                kind: "message",
            })
            .inc_by(8);
        t.store().unwrap();
        clock.advance(chrono::Duration::seconds(3600));
        msgs.inc_by(2);
        let key = |family, label: &str| Series {
            family,
            listener: "sms".into(),
            label: label.into(),
        };
        let w = t.week().unwrap();
        let m = &w.series[&key(Family::Messages, "")];
        assert_eq!(m.len(), HOURS);
        assert_eq!(&m[HOURS - 2..], &[8, 2]);
        assert_eq!(m.iter().sum::<u64>(), 10);
        assert_eq!(
            w.series[&key(Family::FailClosed, "queue_full")]
                .iter()
                .sum::<u64>(),
            1
        );
        assert_eq!(
            w.series[&key(Family::Requests, "message")]
                .iter()
                .sum::<u64>(),
            8
        );
        assert_eq!(w.first_hour % HOUR_US, 0);
        // Stored once: asking again adds nothing.
        assert_eq!(t.week().unwrap().series[&key(Family::Messages, "")], *m);

        // A second node (or the next process) adds to the same hours.
        let other = Arc::new(Metrics::new());
        let t2 = Traffic::new(other.clone(), Arc::new(clock.clone()), open(path.clone()));
        other.messages.get_or_create_owned(&sms).inc_by(4);
        let w = t2.week().unwrap();
        assert_eq!(&w.series[&key(Family::Messages, "")][HOURS - 2..], &[8, 6]);

        // Counts the ledger could not take wait for the next try, and go in once.
        let blocked = dir.path().join("away");
        std::fs::write(&blocked, b"a file where a directory should be").unwrap();
        let third = Arc::new(Metrics::new());
        let away = Traffic::new(
            third.clone(),
            Arc::new(clock.clone()),
            open(blocked.join("ledger.sqlite")),
        );
        third.messages.get_or_create_owned(&sms).inc();
        assert!(away.store().is_err());
        assert!(away.store().is_err());
        std::fs::remove_file(&blocked).unwrap();
        std::fs::create_dir(&blocked).unwrap();
        away.store().unwrap();
        away.store().unwrap();
        let stored = Ledger::open(&blocked.join("ledger.sqlite"))
            .unwrap()
            .traffic_since(0)
            .unwrap();
        assert_eq!(stored.iter().map(|c| c.count).sum::<i64>(), 1, "{stored:?}");

        // A week later the first hours are gone, from the page and from the ledger.
        clock.advance(chrono::Duration::seconds(7 * 24 * 3600 - 1800));
        let w = t.week().unwrap();
        assert_eq!(w.series[&key(Family::Messages, "")].iter().sum::<u64>(), 6);
        let first_hour = start.timestamp_micros().div_euclid(HOUR_US);
        let rows = Ledger::open(&path)
            .unwrap()
            .traffic_since(i64::MIN)
            .unwrap();
        assert!(rows.iter().all(|c| c.hour > first_hour), "{rows:?}");
        clock.advance(chrono::Duration::seconds(3600));
        let w = t.week().unwrap();
        assert_eq!(w.series[&key(Family::Messages, "")].iter().sum::<u64>(), 0);
    }
}
