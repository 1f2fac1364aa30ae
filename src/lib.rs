//! relaylog: a relay in front of SMS gateways (and mail relays) that forwards every
//! message unchanged and records who sent to whom, from where and when — never what.
//!
//! # Layout
//!
//! The modules follow the data flow:
//!
//! - [`config`]: TOML in, validated types out.
//! - [`ingress`]: client-facing listeners. [`ingress::profile`] parses a request into a
//!   message's metadata without doing I/O; [`ingress::http`] is the HTTP listener (its
//!   own HTTP/1.1 fast path, hyper's server for the rest) and the phases of one request; [`ingress::smtp`] the SMTP listener, one session per
//!   client with its upstream leg (envelope, AUTH, content); [`ingress::smpp`] the SMPP
//!   listener, one session per bind with its upstream session (records, outcomes,
//!   delivery receipts, mobile-originated messages).
//! - [`smtp`]: SMTP on the wire, shared by the listener, the upstream leg, the sink and
//!   the load generator: bounded line and reply reading, commands, the end of DATA.
//! - [`smpp`]: SMPP 3.4 PDUs, borrowed from the bytes they came in: framing, the
//!   messages, responses, TLVs, segments of long messages, delivery receipts.
//! - [`relay`]: the protocol-neutral core every session calls — record before forward
//!   ([`relay::Relay::record`]), exactly one outcome after ([`relay::Ticket`]), one
//!   logging phase on every exit.
//! - [`http1`]: HTTP/1.1 on the wire for the fast path and the upstream client: which
//!   requests the fast path takes, end-to-end headers, heads, a bounded reply reader.
//! - [`egress`]: the upstream side: a keep-alive HTTP/1.1 client pool (rustls for https), and
//!   the SMTP upstream leg (TLS, STARTTLS, XCLIENT).
//! - [`record`] and [`canonical`]: the metadata-only record and the canonical forms of
//!   numbers, addresses and accounts.
//! - [`store`]: partitions, keys (keyring, blind index, sealing), the group-commit
//!   writer, queries.
//! - [`metrics`]: the Prometheus registry every layer counts into (labels from config and
//!   fixed strings only).
//! - [`admin`]: the admin listener: `/metrics`, `/healthz`, the compliance API and the
//!   officers' web console, both over the same operations (`admin::ops`).
//! - [`simulator`]: a gateway look-alike, a sink MTA and an SMSC for tests, benchmarks
//!   and the default upstream; [`bench`](mod@bench): the load generators (`bench http`, `bench
//!   smtp`, `bench smpp`) and the store benchmark.
//! - [`serve`]: wires it together and handles shutdown.
//! - [`clock`]: injected time; [`shutdown`] and [`net`]: the plumbing every listener shares.

pub mod admin;
pub mod bench;
pub mod canonical;
mod canonical_tables;
pub mod cli;
pub mod clock;
pub mod compliance;
pub mod config;
pub mod egress;
pub mod export;
pub mod http1;
pub mod ingress;
pub mod ledger;
pub mod metrics;
pub mod net;
pub mod pg;
pub mod record;
pub mod relay;
pub mod reload;
pub mod sched;
pub mod serve;
pub mod shutdown;
pub mod simulator;
pub mod smpp;
pub mod smtp;
pub mod store;

#[cfg(test)]
pub(crate) mod test_util {
    pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }
}
