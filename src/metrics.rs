//! Prometheus metrics. Label values come only from configuration (listener names,
//! profiles) and fixed strings chosen here, never from a request: no number, account,
//! address or content can reach `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: String,
    /// `message` (recorded), `passthrough` (no message in it), `rejected` (bad input,
    /// not forwarded), `fail_closed` (store could not take it, not forwarded).
    pub kind: &'static str,
}

/// An SMPP bind: its kind (`receiver`, `transmitter`, `transceiver`) and whether the
/// SMSC bound it (`ok`, `refused`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BindLabels {
    pub listener: String,
    pub kind: &'static str,
    pub result: &'static str,
}

/// An SMPP delivery receipt: `matched` (attached to its message), `unmatched` (no
/// message known by its id: sent before relaylog started, or past receipt-wait),
/// `unrecorded` (matched, but the store could not take it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiptLabels {
    pub listener: String,
    pub result: &'static str,
}

/// An SMPP PDU relayed: from whom (`client`, `upstream`) and its command's name
/// (`other` for what relaylog does not name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PduLabels {
    pub listener: String,
    pub from: &'static str,
    pub command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub listener: String,
    pub reason: &'static str,
}

/// What became of something: `result` is a fixed word.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub messages: Family<ListenerLabels, Counter>,
    pub records_written: Counter,
    pub outcomes_written: Counter,
    pub batch_records: Histogram,
    pub commit_seconds: Histogram,
    pub journal_frame_records: Histogram,
    pub journal_append_seconds: Histogram,
    pub journal_bypassed: Gauge,
    pub journal_relay_frames: Counter,
    pub durable_wait_seconds: Histogram,
    pub queue_depth: Gauge,
    pub forward_seconds: Family<ListenerLabels, Histogram>,
    pub fail_closed: Family<ReasonLabels, Counter>,
    pub upstream_errors: Family<ReasonLabels, Counter>,
    pub not_forwarded: Family<ReasonLabels, Counter>,
    pub rejected: Family<ReasonLabels, Counter>,
    pub connections_refused: Family<ReasonLabels, Counter>,
    pub connections_cut: Family<ReasonLabels, Counter>,
    /// Reloads (SIGHUP), by `result`: `applied`, `refused`.
    pub reloads: Family<ResultLabels, Counter>,
    pub store_errors: Counter,
    pub checkpoints_kept_out: Counter,
    pub smpp_binds: Family<BindLabels, Counter>,
    pub smpp_pdus: Family<PduLabels, Counter>,
    /// SMPP messages being recorded or with the SMSC, all sessions of a listener.
    pub smpp_window: Family<ListenerLabels, Gauge>,
    /// Delivery receipts from the SMSC, by whether they found their message.
    pub smpp_receipts: Family<ReceiptLabels, Counter>,
    /// Data subjects' requests open past their deadline (counted every minute).
    pub subject_requests_overdue: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("relaylog");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests received, by what became of them",
            requests.clone(),
        );
        let messages = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "messages",
            "Messages (submissions) recorded and forwarded",
            messages.clone(),
        );
        let records_written = Counter::default();
        registry.register(
            "records_written",
            "Recipient records committed to the store",
            records_written.clone(),
        );
        let outcomes_written = Counter::default();
        registry.register(
            "outcomes_written",
            "Outcome events committed to the store",
            outcomes_written.clone(),
        );
        let batch_records = Histogram::new(exponential_buckets(1.0, 4.0, 9));
        registry.register(
            "batch_records",
            "Records per group commit",
            batch_records.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.000_05, 2.5, 12));
        registry.register(
            "commit_seconds",
            "Time to write and commit one batch",
            commit_seconds.clone(),
        );
        let journal_frame_records = Histogram::new(exponential_buckets(1.0, 4.0, 9));
        registry.register(
            "journal_frame_records",
            "Records per journal frame (one append, answering the clients waiting on it)",
            journal_frame_records.clone(),
        );
        let journal_append_seconds = Histogram::new(exponential_buckets(0.000_005, 2.5, 12));
        registry.register(
            "journal_append_seconds",
            "Time to encode and append one journal frame",
            journal_append_seconds.clone(),
        );
        let journal_bypassed = Gauge::default();
        registry.register(
            "journal_bypassed",
            "1 while the partitions are failing or stuck: clients wait for their commit, not for the journal",
            journal_bypassed.clone(),
        );
        let subject_requests_overdue = Gauge::default();
        registry.register(
            "subject_requests_overdue",
            "Data subjects' requests open past their deadline (GDPR art. 12(3)), counted every minute",
            subject_requests_overdue.clone(),
        );
        let journal_relay_frames = Counter::default();
        registry.register(
            "journal_relay_frames",
            "Journal frames appended by the relay thread that sealed their durable batch (the others went through the journal's thread)",
            journal_relay_frames.clone(),
        );
        let durable_wait_seconds = Histogram::new(exponential_buckets(0.000_05, 2.5, 12));
        registry.register(
            "durable_wait_seconds",
            "Time a durable submission waits, sealed, for its commit's answer (gathering, queue, commit, wake-up)",
            durable_wait_seconds.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Jobs waiting for the writer",
            queue_depth.clone(),
        );
        let forward_seconds = Family::<ListenerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
        });
        registry.register(
            "forward_seconds",
            "Time the forward of a recorded message took, request sent to reply read",
            forward_seconds.clone(),
        );
        let fail_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "fail_closed",
            "Messages refused with a temporary error because the store could not take their records",
            fail_closed.clone(),
        );
        let upstream_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream could not be reached or answered badly",
            upstream_errors.clone(),
        );
        let not_forwarded = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "not_forwarded",
            "Recorded messages not forwarded (client_gone) or cut short (shutdown), each with its outcome",
            not_forwarded.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejected",
            "Requests refused for bad input, not forwarded",
            rejected.clone(),
        );
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused at accept: max_connections, max_connections_per_peer",
            connections_refused.clone(),
        );
        let connections_cut = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_cut",
            "Connections closed by a limit (a timeout, a size), by which",
            connections_cut.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reloads",
            "Reloads asked for (SIGHUP): applied, or refused (the old settings kept)",
            reloads.clone(),
        );
        let smpp_binds = Family::<BindLabels, Counter>::default();
        registry.register(
            "smpp_binds",
            "SMPP binds, by kind and whether the SMSC bound them",
            smpp_binds.clone(),
        );
        let smpp_pdus = Family::<PduLabels, Counter>::default();
        registry.register(
            "smpp_pdus",
            "SMPP PDUs received, by side and command",
            smpp_pdus.clone(),
        );
        let smpp_window = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "smpp_window",
            "SMPP messages being recorded or with the SMSC",
            smpp_window.clone(),
        );
        let smpp_receipts = Family::<ReceiptLabels, Counter>::default();
        registry.register(
            "smpp_receipts",
            "SMPP delivery receipts from the SMSC, by whether they found their message",
            smpp_receipts.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Failed commits and partition opens",
            store_errors.clone(),
        );
        let checkpoints_kept_out = Counter::default();
        registry.register(
            "checkpoints_kept_out",
            "WAL restarts the checkpointer gave up for a writer or reader in the way (tried again after the next rows; the WAL grows meanwhile)",
            checkpoints_kept_out.clone(),
        );
        Self {
            registry,
            requests,
            messages,
            records_written,
            outcomes_written,
            batch_records,
            commit_seconds,
            journal_frame_records,
            journal_append_seconds,
            journal_bypassed,
            subject_requests_overdue,
            journal_relay_frames,
            durable_wait_seconds,
            queue_depth,
            forward_seconds,
            fail_closed,
            upstream_errors,
            not_forwarded,
            rejected,
            connections_refused,
            connections_cut,
            reloads,
            store_errors,
            checkpoints_kept_out,
            smpp_binds,
            smpp_pdus,
            smpp_window,
            smpp_receipts,
        }
    }

    /// A connection to `listener` refused at accept, for `reason`.
    pub fn refused(&self, listener: &str, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
    }

    /// A connection to `listener` closed by a limit, `reason`.
    pub fn cut(&self, listener: &str, reason: &'static str) {
        self.connections_cut
            .get_or_create(&ReasonLabels {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
