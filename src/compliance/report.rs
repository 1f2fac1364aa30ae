//! Yearly statistics of lawful requests, with no personal data: counts of cases, of
//! records disclosed, how old the records were when asked for, and the requests that
//! could not be met. Built from the case table and the audit log alone.

use std::collections::BTreeMap;

use chrono::Datelike;
use serde::Serialize;

use super::cases::State;
use super::disclosure::AGE_BANDS;
use super::requests::RequestState;
use crate::clock::micros_to_datetime;
use crate::ledger::Ledger;

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct YearReport {
    pub year: i32,
    /// Cases opened in the year.
    pub cases: u64,
    /// Of those, by state now.
    pub by_state: BTreeMap<&'static str, u64>,
    pub by_country: BTreeMap<String, u64>,
    /// Disclosures made in the year and the records they held.
    pub disclosures: u64,
    pub records_disclosed: u64,
    /// Records disclosed by their age when the case was opened, in months.
    pub record_age_months: BTreeMap<&'static str, u64>,
    /// Cases of the year that could not be met: rejected, answered with no records
    /// (nothing held, or already deleted), or closed without a disclosure.
    pub not_met_rejected: u64,
    pub not_met_no_records: u64,
    pub not_met_closed_without_disclosure: u64,
    /// Reads of traffic data in the year (queries, disclosures, subject exports,
    /// offboardings) by the purpose each stated; `unstated` for reads audited before
    /// purposes were asked for.
    pub reads_by_purpose: BTreeMap<String, u64>,
    /// Data subjects' requests received in the year, and where they stand on the day
    /// the report is made.
    pub subject_requests: SubjectRequests,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct SubjectRequests {
    pub received: u64,
    pub answered_in_time: u64,
    pub answered_late: u64,
    pub open: u64,
    /// Open past their deadline on the day of the report.
    pub overdue: u64,
}

/// The audit actions that read traffic data, each with the purpose it states (a
/// download reads an export again, for the purpose it was made for).
pub const READS: [&str; 6] = [
    "query",
    "case.disclose",
    "subject.export",
    "account.offboard",
    "account.offboard.incomplete",
    "export.download",
];

/// The report of `year`, made on `today` (which decides which requests are overdue).
pub fn cases_in_year(
    ledger: &Ledger,
    year: i32,
    today: chrono::NaiveDate,
) -> Result<YearReport, ReportError> {
    let mut r = YearReport {
        year,
        record_age_months: AGE_BANDS.iter().map(|b| (*b, 0)).collect(),
        reads_by_purpose: super::purpose::Purpose::ALL
            .iter()
            .map(|p| (p.as_str().to_owned(), 0))
            .collect(),
        ..Default::default()
    };
    let cases: Vec<_> = ledger
        .cases()?
        .into_iter()
        .filter(|c| micros_to_datetime(c.opened_at).year() == year)
        .collect();
    // Disclosures per case (any year) and this year's records.
    let mut disclosed: BTreeMap<i64, u64> = BTreeMap::new();
    for e in ledger.entries()? {
        if !READS.contains(&e.action.as_str()) {
            continue;
        }
        let d: serde_json::Value = serde_json::from_str(&e.details).unwrap_or_default();
        if micros_to_datetime(e.at).year() == year {
            let purpose = d["purpose"].as_str().unwrap_or("unstated").to_owned();
            *r.reads_by_purpose.entry(purpose).or_default() += 1;
        }
        if e.action != "case.disclose" {
            continue;
        }
        let case = d["case"].as_i64().unwrap_or(0);
        let records = d["records"].as_u64().unwrap_or(0);
        *disclosed.entry(case).or_default() += records;
        if micros_to_datetime(e.at).year() == year {
            r.disclosures += 1;
            r.records_disclosed += records;
            for band in AGE_BANDS {
                *r.record_age_months.entry(band).or_default() +=
                    d["record_age_months"][band].as_u64().unwrap_or(0);
            }
        }
    }
    for c in &cases {
        r.cases += 1;
        *r.by_state.entry(c.state.as_str()).or_default() += 1;
        *r.by_country
            .entry(c.details.request.country.clone())
            .or_default() += 1;
        match (c.state, disclosed.get(&c.id)) {
            (State::Rejected, _) => r.not_met_rejected += 1,
            (_, Some(0)) => r.not_met_no_records += 1,
            (State::Closed, None) => r.not_met_closed_without_disclosure += 1,
            _ => {}
        }
    }
    for q in ledger
        .requests()?
        .iter()
        .filter(|q| q.received.year() == year)
    {
        let s = &mut r.subject_requests;
        s.received += 1;
        match q.state(today) {
            RequestState::Answered => s.answered_in_time += 1,
            RequestState::AnsweredLate => s.answered_late += 1,
            RequestState::Open => s.open += 1,
            RequestState::Overdue => {
                s.open += 1;
                s.overdue += 1;
            }
        }
    }
    Ok(r)
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Case(#[from] super::cases::CaseError),
    #[error(transparent)]
    Request(#[from] super::requests::RequestError),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
}

impl YearReport {
    pub fn to_text(&self) -> String {
        let mut s = format!("lawful requests in {}\n", self.year);
        s += &format!("cases opened\t{}\n", self.cases);
        for (k, v) in &self.by_state {
            s += &format!("  {k}\t{v}\n");
        }
        for (k, v) in &self.by_country {
            s += &format!("  from {k}\t{v}\n");
        }
        s += &format!(
            "disclosures\t{}\nrecords disclosed\t{}\n",
            self.disclosures, self.records_disclosed
        );
        s += "record age when requested (months)\n";
        for band in AGE_BANDS {
            s += &format!(
                "  {band}\t{}\n",
                self.record_age_months.get(band).copied().unwrap_or(0)
            );
        }
        s += &format!(
            "not met\trejected {}, no records {}, closed without disclosure {}\n",
            self.not_met_rejected, self.not_met_no_records, self.not_met_closed_without_disclosure
        );
        s += "reads of traffic data by purpose\n";
        for (k, v) in &self.reads_by_purpose {
            s += &format!("  {k}\t{v}\n");
        }
        let q = &self.subject_requests;
        s += &format!(
            "subject requests\treceived {}, answered in time {}, answered late {}, open {}, OVERDUE {}\n",
            q.received, q.answered_in_time, q.answered_late, q.open, q.overdue
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::cases::{CaseDetails, Criterion, IdentifierKind, NewCase, RequestId};
    use crate::compliance::officers::{Officer, Role};
    use crate::store::keys::MasterKey;

    #[test]
    fn requests_not_met_are_counted_by_reason() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        crate::store::keys::create_master_key(&key).unwrap();
        let master = MasterKey::load(&key).unwrap();
        let mut l = Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
        let officer = |name: &str| Officer {
            name: name.into(),
            role: Role::Approver,
            enabled: true,
            created_at: 0,
            created_by: "root".into(),
        };
        // 2026-03-01 and 2025-03-01.
        let (t2026, t2025) = (1_772_323_200_000_000, 1_740_787_200_000_000);
        let mut open = |n: &str, at| {
            let case = NewCase {
                details: CaseDetails {
                    request: RequestId {
                        country: "NL".into(),
                        organisation: "OM".into(),
                        number: n.into(),
                    },
                    authority: "A".into(),
                    legal_basis: "L".into(),
                    order_reference: "R".into(),
                    order_date: "D".into(),
                    deadline: "D".into(),
                    confidential: false,
                    since: 0,
                    until: 1,
                },
                criteria: vec![Criterion {
                    kind: IdentifierKind::Account,
                    value: "x".into(),
                }],
            };
            l.open_case(&master, &officer("anna"), &case, at).unwrap()
        };
        let rejected = open("1", t2026);
        let empty = open("2", t2026);
        let dropped = open("3", t2026);
        let _last_year = open("4", t2025);
        l.decide_case(
            &officer("bob"),
            rejected,
            false,
            "no legal basis",
            true,
            t2026,
        )
        .unwrap();
        l.decide_case(&officer("bob"), empty, true, "", true, t2026)
            .unwrap();
        l.audit(
            t2026,
            "anna",
            "case.disclose",
            serde_json::json!({"case": empty, "records": 0, "record_age_months": {}}),
        )
        .unwrap();
        l.close_case(&officer("anna"), dropped, t2026).unwrap();
        let r = cases_in_year(
            &l,
            2026,
            chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
        )
        .unwrap();
        assert_eq!(r.cases, 3);
        assert_eq!(
            (
                r.not_met_rejected,
                r.not_met_no_records,
                r.not_met_closed_without_disclosure
            ),
            (1, 1, 1)
        );
        assert_eq!((r.disclosures, r.records_disclosed), (1, 0));
        assert_eq!(
            cases_in_year(
                &l,
                2025,
                chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap()
            )
            .unwrap()
            .cases,
            1
        );
    }
}
