//! The admin listener: `/metrics` (Prometheus text) and `/healthz`. It exposes counts,
//! never records.

pub mod metrics;
