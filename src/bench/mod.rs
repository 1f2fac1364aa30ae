//! Benchmark commands: `bench store` (the write path through the real store) and
//! `bench http` (a load generator for SMS submission APIs).

pub mod http;
mod store;

pub use self::store::{BenchError, StoreBench, StoreBenchReport, store};

/// xorshift64*: fixed-seed, fast, good enough to spread synthetic identifiers.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
