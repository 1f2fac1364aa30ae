//! Traffic at a glance: counts per hour over the last week, read from the process's
//! own counters (`/metrics`), never from records.
//!
//! A sampler reads the counters once a minute (and when the page is asked for) and
//! adds what each grew by to the current hour. Nothing is added to the relay's hot
//! path. The hours live in memory: a restart begins the week again, and the page says
//! since when it counts. Memory is bounded by [`HOURS`] times the series, which come
//! from configured listener names and fixed labels only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::clock::{Micros, SharedClock};
use crate::metrics::Metrics;

/// Hours kept: a week.
pub const HOURS: usize = 7 * 24;

const HOUR_US: Micros = 3_600_000_000;

/// How often the sampler reads the counters.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Series kept at most (listeners × labels); more are not counted. Generous: labels
/// come from configuration and fixed words.
const MAX_SERIES: usize = 1024;

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
    const ALL: [(Family, &'static str, &'static str); 5] = [
        (Family::Messages, "relaylog_messages_total", ""),
        (Family::Requests, "relaylog_requests_total", "kind"),
        (Family::FailClosed, "relaylog_fail_closed_total", "reason"),
        (
            Family::UpstreamErrors,
            "relaylog_upstream_errors_total",
            "reason",
        ),
        (
            Family::NotForwarded,
            "relaylog_not_forwarded_total",
            "reason",
        ),
    ];
}

/// One counter: its family, listener and second label (kind or reason; empty for
/// messages).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Series {
    pub family: Family,
    pub listener: String,
    pub label: String,
}

pub struct Traffic {
    metrics: Arc<Metrics>,
    clock: SharedClock,
    since: Micros,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each counter's value when last read.
    last: HashMap<Series, u64>,
    /// (hour number since the epoch, what each series grew by in it), oldest first.
    hours: VecDeque<(i64, HashMap<Series, u64>)>,
}

/// What the page draws: for each series, [`HOURS`] counts ending with the current
/// hour (oldest first).
pub struct Week {
    /// The first hour's start.
    pub first_hour: Micros,
    /// When counting began (the process's start), if within the week.
    pub since: Micros,
    pub series: BTreeMap<Series, Vec<u64>>,
}

impl Traffic {
    pub fn new(metrics: Arc<Metrics>, clock: SharedClock) -> Arc<Traffic> {
        let t = Arc::new(Traffic {
            since: clock.now_micros(),
            metrics,
            clock,
            state: Mutex::default(),
        });
        // The counters' values at start are the baseline: what came before (none,
        // in a new process) is not this week's.
        t.sample();
        t
    }

    /// Reads the counters and adds their growth to the current hour.
    pub fn sample(&self) {
        let now = self.clock.now_micros();
        let text = self.metrics.encode();
        let read = parse(&text);
        let hour = now.div_euclid(HOUR_US);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let first = st.last.is_empty();
        let mut grew = Vec::new();
        for (series, value) in read {
            if !st.last.contains_key(&series) && st.last.len() >= MAX_SERIES {
                continue;
            }
            let before = st.last.insert(series.clone(), value);
            // A counter seen for the first time after the start counts from zero.
            let delta = match before {
                Some(b) => value.saturating_sub(b),
                None if first => 0,
                None => value,
            };
            if delta > 0 {
                grew.push((series, delta));
            }
        }
        if st.hours.back().is_none_or(|(h, _)| *h < hour) {
            st.hours.push_back((hour, HashMap::new()));
        }
        while st
            .hours
            .front()
            .is_some_and(|(h, _)| *h <= hour - HOURS as i64)
        {
            st.hours.pop_front();
        }
        if let Some((_, counts)) = st.hours.back_mut() {
            for (series, delta) in grew {
                *counts.entry(series).or_default() += delta;
            }
        }
    }

    /// The week up to now, sampled afresh.
    pub fn week(&self) -> Week {
        self.sample();
        let hour = self.clock.now_micros().div_euclid(HOUR_US);
        let first = hour - HOURS as i64 + 1;
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut series: BTreeMap<Series, Vec<u64>> = BTreeMap::new();
        for s in st.last.keys() {
            series.insert(s.clone(), vec![0; HOURS]);
        }
        for (h, counts) in &st.hours {
            let Ok(i) = usize::try_from(h - first) else {
                continue;
            };
            for (s, n) in counts {
                if let Some(v) = series.get_mut(s).and_then(|v| v.get_mut(i)) {
                    *v += n;
                }
            }
        }
        Week {
            first_hour: first * HOUR_US,
            since: self.since,
            series,
        }
    }

    /// Samples every [`SAMPLE_EVERY`] until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: crate::shutdown::Shutdown) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(),
                () = shutdown.wait() => return,
            }
        }
    }
}

/// The drawn families' counters in an OpenMetrics exposition (the process's own,
/// from [`Metrics::encode`]): `name{label="value",...} number` lines.
fn parse(text: &str) -> Vec<(Series, u64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((family, name, second)) = Family::ALL
            .iter()
            .find(|(_, name, _)| line.starts_with(name) && line[name.len()..].starts_with('{'))
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
    fn counts_land_in_their_hour_and_leave_after_a_week() {
        let metrics = Arc::new(Metrics::new());
        let start = chrono::DateTime::parse_from_rfc3339("2026-12-06T10:15:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let clock = ManualClock::new(start);
        let msgs = metrics.messages.get_or_create_owned(&ListenerLabels {
            listener: "sms".into(),
        });
        msgs.inc_by(5); // before the start: not this week's
        let t = Traffic::new(metrics.clone(), Arc::new(clock.clone()));
        msgs.inc_by(3);
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
            .inc_by(3);
        t.sample();
        clock.advance(chrono::Duration::seconds(3600));
        msgs.inc_by(2);
        let w = t.week();
        let key = |family, label: &str| Series {
            family,
            listener: "sms".into(),
            label: label.into(),
        };
        let m = &w.series[&key(Family::Messages, "")];
        assert_eq!(m.len(), HOURS);
        assert_eq!(&m[HOURS - 2..], &[3, 2]);
        assert_eq!(m.iter().sum::<u64>(), 5);
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
            3
        );
        assert_eq!(w.first_hour % HOUR_US, 0);
        // A week later the first hours are gone.
        clock.advance(chrono::Duration::seconds(7 * 24 * 3600 - 1800));
        let w = t.week();
        assert_eq!(w.series[&key(Family::Messages, "")].iter().sum::<u64>(), 2);
        clock.advance(chrono::Duration::seconds(3600));
        let w = t.week();
        assert_eq!(w.series[&key(Family::Messages, "")].iter().sum::<u64>(), 0);
    }
}
