//! Benchmark commands: `bench store` (the write path through the real store) and
//! `bench http` (a load generator for SMS submission APIs).

pub mod http;
mod store;

pub use self::store::{BenchError, StoreBench, StoreBenchReport, store};
