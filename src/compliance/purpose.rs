//! Why records are read. Every read of traffic data (a query, a disclosure, a subject's
//! export, an offboarding) states one purpose from this fixed list, and its audit
//! entry carries it, so that `report` can count reads by purpose and an auditor can
//! see that traffic data served nothing else.
//!
//! There is deliberately no purpose for marketing, profiling or analytics: the privacy
//! statements relaylog keeps say traffic data is never used for them, and a read that
//! cannot name a purpose here is refused.

use serde::{Deserialize, Serialize};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// An authority's lawful request (a case).
    LawfulRequest,
    /// A data subject's access request (GDPR Art. 15).
    SubjectAccess,
    /// A customer's contract ended: its data returned and deleted.
    ContractEnd,
    /// A security incident being investigated.
    SecurityIncident,
    /// Running the service: a delivery complaint, a misrouted message.
    Operations,
}

impl Purpose {
    pub const ALL: [Purpose; 5] = [
        Purpose::LawfulRequest,
        Purpose::SubjectAccess,
        Purpose::ContractEnd,
        Purpose::SecurityIncident,
        Purpose::Operations,
    ];

    /// The purpose as the audit log, the command line and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::LawfulRequest => "lawful-request",
            Purpose::SubjectAccess => "subject-access",
            Purpose::ContractEnd => "contract-end",
            Purpose::SecurityIncident => "security-incident",
            Purpose::Operations => "operations",
        }
    }

    pub fn parse(s: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// What people read in a form's choice.
    pub fn label(self) -> &'static str {
        match self {
            Purpose::LawfulRequest => "An authority's lawful request",
            Purpose::SubjectAccess => "A data subject's access request",
            Purpose::ContractEnd => "A customer's contract end",
            Purpose::SecurityIncident => "A security incident",
            Purpose::Operations => "Operations (delivery, misrouting)",
        }
    }
}

/// A read whose stated purpose is not the one its act serves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{act} reads for {wanted}, not for {given}")]
pub struct WrongPurpose {
    pub act: &'static str,
    pub wanted: &'static str,
    pub given: Purpose,
}

impl Purpose {
    /// The purpose an act with a purpose of its own serves (a disclosure answers a
    /// lawful request, a subject's export an access request, an offboarding a
    /// contract's end): anything else stated for it is refused, so that what is
    /// signed and counted says why the records were read.
    pub fn must_be(self, wanted: Purpose, act: &'static str) -> Result<(), WrongPurpose> {
        if self == wanted {
            return Ok(());
        }
        Err(WrongPurpose {
            act,
            wanted: wanted.as_str(),
            given: self,
        })
    }

    /// A query's purpose: any but a lawful request, which is answered through an
    /// approved case (four eyes), never by one officer's query.
    pub fn for_query(self) -> Result<(), WrongPurpose> {
        if self != Purpose::LawfulRequest {
            return Ok(());
        }
        Err(WrongPurpose {
            act: "a query",
            wanted: "anything but lawful-request (a lawful request is answered through an approved case)",
            given: self,
        })
    }
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_read_back_and_none_is_for_marketing() {
        for p in Purpose::ALL {
            assert_eq!(Purpose::parse(p.as_str()), Some(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        for nope in ["marketing", "analytics", "profiling", ""] {
            assert_eq!(Purpose::parse(nope), None);
        }
    }
}
