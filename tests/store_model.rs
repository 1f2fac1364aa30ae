//! Model-based test of the store's life cycle: random sequences of record / advance
//! the clock / expire / hold / release / query, checked against a plain in-memory
//! model of what must be visible.

mod common;

use common::{one_recipient, open_store};
use std::collections::HashMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use relaylog::clock::{Clock, ManualClock};
use relaylog::config::{Retention, StoreConfig};
use relaylog::ledger::{Hold, Ledger};
use relaylog::store::query::{self, Criteria};
use relaylog::store::{IndexKind, expiry, init_keys, open_keyring};

const NUMBERS: [&str; 3] = ["+31612345671", "+31612345672", "+31612345673"];
const CASES: [&str; 2] = ["NL-1", "NL-2"];

#[derive(Debug, Clone)]
enum Op {
    Record {
        number: usize,
    },
    Advance {
        hours: i64,
    },
    Expire,
    Hold {
        case: usize,
        from_day: i64,
        days: i64,
    },
    Release {
        case: usize,
    },
    Query {
        number: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NUMBERS.len()).prop_map(|number| Op::Record { number }),
        3 => (1i64..60).prop_map(|hours| Op::Advance { hours }),
        2 => Just(Op::Expire),
        2 => (0..CASES.len(), 0i64..8, 1i64..6).prop_map(|(case, from_day, days)| Op::Hold { case, from_day, days }),
        1 => (0..CASES.len()).prop_map(|case| Op::Release { case }),
        2 => (0..NUMBERS.len()).prop_map(|number| Op::Query { number }),
    ]
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 2, 25, 6, 0, 0).unwrap()
}

/// Days since the start's midnight: the model's partition of a time.
fn day_of(t: DateTime<Utc>) -> i64 {
    (t.date_naive() - start().date_naive()).num_days()
}

#[derive(Default)]
struct Model {
    /// (day, number) of every record that must still be visible.
    records: Vec<(i64, usize)>,
    /// case → held day windows [from, to)
    holds: HashMap<usize, Vec<(i64, i64)>>,
}

impl Model {
    fn held(&self, day: i64) -> bool {
        self.holds
            .values()
            .flatten()
            .any(|&(from, to)| from <= day && day < to)
    }

    fn expire(&mut self, now: DateTime<Utc>, retention: Retention) {
        let cutoff = retention.cutoff(now);
        let held: Vec<bool> = self.records.iter().map(|&(d, _)| self.held(d)).collect();
        let mut keep = held.into_iter();
        self.records.retain(|&(d, _)| {
            let end_of_day = start().date_naive() + Duration::days(d + 1);
            let past = end_of_day.and_hms_opt(0, 0, 0).unwrap().and_utc() <= cutoff;
            let held = keep.next().unwrap_or(false);
            !past || held
        });
    }
}

/// The store's answer for one number equals the model's, record for record (by day).
fn check(
    cfg: &StoreConfig,
    model: &Model,
    number: usize,
    clock: &ManualClock,
) -> Result<(), TestCaseError> {
    let keyring = open_keyring(cfg).unwrap();
    let criteria = Criteria {
        kind: IndexKind::Recipient,
        value: NUMBERS[number].into(),
        since: 0,
        until: i64::MAX / 2,
        filters: true,
    };
    let mut days = Vec::new();
    query::run(cfg, &keyring, &criteria, |f| {
        days.push(day_of(relaylog::clock::micros_to_datetime(f.at)))
    })
    .unwrap();
    let mut expected: Vec<i64> = model
        .records
        .iter()
        .filter(|r| r.1 == number)
        .map(|r| r.0)
        .collect();
    days.sort();
    expected.sort();
    prop_assert_eq!(
        days,
        expected,
        "query {} at {}",
        NUMBERS[number],
        clock.now()
    );
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::under(dir.path());
        cfg.retention = Retention::Days(5);
        init_keys(&cfg).unwrap();
        let clock = ManualClock::new(start());
        let store = open_store(&cfg, &clock);
        let rec = store.recorder();
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Record { number } => {
                    let at = rec.now();
                    let sub = one_recipient(&rec, at, "acme", NUMBERS[number]);
                    rec.record(&sub).await.unwrap();
                    model.records.push((day_of(clock.now()), number));
                }
                Op::Advance { hours } => clock.advance(Duration::hours(hours)),
                Op::Expire => {
                    // As serve does: what the journal holds goes in before expiry.
                    rec.barrier().await.unwrap();
                    let keyring = open_keyring(&cfg).unwrap();
                    expiry::run(&cfg, &keyring, "model", clock.now()).unwrap();
                    model.expire(clock.now(), cfg.retention);
                    for number in 0..NUMBERS.len() {
                        check(&cfg, &model, number, &clock)?;
                    }
                }
                Op::Hold {
                    case,
                    from_day,
                    days,
                } => {
                    let at = |d: i64| {
                        (start().date_naive() + Duration::days(d))
                            .and_hms_opt(0, 0, 0)
                            .unwrap()
                            .and_utc()
                            .timestamp_micros()
                    };
                    Ledger::open(&cfg.ledger)
                        .unwrap()
                        .add_hold(&Hold {
                            case: CASES[case].into(),
                            since: at(from_day),
                            until: at(from_day + days),
                            reason: "model".into(),
                            placed_at: 0,
                            placed_by: "model".into(),
                        })
                        .unwrap();
                    model
                        .holds
                        .entry(case)
                        .or_default()
                        .push((from_day, from_day + days));
                }
                Op::Release { case } => {
                    let released =
                        Ledger::open(&cfg.ledger)
                            .unwrap()
                            .release(CASES[case], 0, "model");
                    prop_assert_eq!(released.is_ok(), model.holds.remove(&case).is_some());
                }
                Op::Query { number } => {
                    // Queries see a record once it is in the partitions.
                    rec.barrier().await.unwrap();
                    check(&cfg, &model, number, &clock)?
                }
            }
        }
        store.close().await;
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
