//! The compliance side: officers, cases, disclosures and the audit trail around them.

pub mod cases;
pub mod disclosure;
pub mod etsi;
pub mod lookup;
pub mod offboard;
pub mod officers;
pub mod purpose;
pub mod refusals;
pub mod report;
pub mod requests;
pub mod retention;
pub mod totp;
