//! The relay core every protocol session calls: record before forward, exactly one
//! outcome after, and one logging phase on every exit, after the pingora model.
//!
//! A session parses its own wire format into a [`Submission`], then:
//!
//! 1. [`Relay::record`] keeps a place in the writer's queue for the outcome, commits the
//!    records (or queues them, in async mode) and hands back a [`Ticket`] — or a
//!    [`RecordError`], and the session refuses the message with its own "try later"
//!    (HTTP 503, SMTP 451 4.3.0, SMPP `ESME_RTHROTTLED`) and forwards nothing;
//! 2. the session forwards the message its own way (an HTTP request, an SMTP `DATA`, an
//!    SMPP `submit_sm`), unless [`Ticket::not_now`] says not to;
//! 3. [`Ticket::outcome`] appends the outcome event and writes the log line. A ticket
//!    dropped before that (a forward cut short at `shutdown-timeout`) writes
//!    `failed: shutdown` itself: no recorded message is left without an outcome.
//!
//! Every exit of every request, the refusals included, is counted and logged in one
//! place, [`Relay::log`]: listener, exit, reason, status, submission, recipients, µs;
//! never the content, a password or an identifier. Each protocol turns an exit into its
//! own reply in one function of its own.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::canonical::{self, Identifier, NumberNormalizer};
use crate::metrics::{ListenerLabels, Metrics, ReasonLabels, RequestLabels};
use crate::record::{
    Outcome, OutcomeEvent, Protocol, Service, SmppDetail, Submission, SubmissionId,
};
use crate::shutdown::Shutdown;
use crate::store::{OutcomeSlot, RecordError, Recorder};

/// An error a session's upstream step can end with: its text for the log line (the
/// upstream's or the OS's words, never request data) and a fixed label.
pub trait Failure: std::error::Error + Send + Sync {
    fn reason(&self) -> &'static str;
}

/// Why a recorded message was not forwarded, or not to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotForwarded {
    /// Its client left before the forward began (and will send again).
    ClientGone,
    /// `shutdown-timeout` passed: not begun, or cut short.
    Shutdown,
}

impl NotForwarded {
    pub fn outcome(self) -> Outcome {
        match self {
            NotForwarded::ClientGone => Outcome::FailedClientGone,
            NotForwarded::Shutdown => Outcome::FailedShutdown,
        }
    }

    fn label(self) -> &'static str {
        match self {
            NotForwarded::ClientGone => "client_gone",
            NotForwarded::Shutdown => "shutdown",
        }
    }
}

/// How a recorded message's forward ended.
pub enum End<'e> {
    Relayed,
    Upstream(&'e dyn Failure),
    NotForwarded(NotForwarded),
}

/// How a request ended: what the logging phase counts and writes.
pub enum Exit<'e> {
    /// Bad input, with the session's fixed label: nothing recorded, nothing forwarded.
    Rejected(&'static str),
    /// The store could not take the records: nothing forwarded.
    FailClosed(&'e RecordError),
    /// No message in it: forwarded without a record (`Some`: and the forward failed).
    Passthrough(Option<&'e dyn Failure>),
    /// Recorded, then forwarded or not.
    Message {
        submission: u64,
        recipients: usize,
        /// How long a forward that ran to its end took.
        forward: Option<Duration>,
        end: End<'e>,
    },
}

impl Exit<'_> {
    /// The `exit` of the access-log line.
    fn kind(&self) -> &'static str {
        match self {
            Exit::Rejected(_) => "rejected",
            Exit::FailClosed(_) => "fail_closed",
            Exit::Passthrough(_) => "passthrough",
            Exit::Message { end, .. } => match end {
                End::Relayed => "relayed",
                End::Upstream(_) => "upstream_error",
                End::NotForwarded(n) => n.label(),
            },
        }
    }

    /// A short, fixed label for metrics and the log line; `None` when all went well.
    fn reason(&self) -> Option<&'static str> {
        match self {
            Exit::Rejected(reason) => Some(reason),
            Exit::FailClosed(e) => Some(e.reason()),
            Exit::Passthrough(e) => e.map(Failure::reason),
            Exit::Message { end, .. } => match end {
                End::Relayed => None,
                End::Upstream(e) => Some(e.reason()),
                End::NotForwarded(n) => Some(n.label()),
            },
        }
    }
}

/// The protocol-neutral part of one listener: its store, its metrics, its shutdown
/// deadline. Shared by the listener's sessions.
pub struct Relay {
    pub name: String,
    pub protocol: Protocol,
    pub service: Service,
    pub recorder: Recorder,
    pub normalizer: NumberNormalizer,
    pub metrics: Arc<Metrics>,
    /// Fires when `shutdown-timeout` has passed: forwards still running are cut short.
    pub abort: Arc<Shutdown>,
    /// The status a session's own reply has when its message is cut short at shutdown,
    /// for the log line written by a dropped [`Ticket`] (HTTP 503, SMTP 421).
    cut_short_status: u16,
    counters: Counters,
}

/// Metric handles resolved once per listener, so the hot path does no label lookups.
struct Counters {
    message: Counter,
    passthrough: Counter,
    rejected_requests: Counter,
    fail_closed_requests: Counter,
    messages: Counter,
    forward_seconds: Histogram,
}

/// A message's metadata as a session found it, not yet canonical.
pub struct Found<'a> {
    pub account: &'a str,
    pub originator: Option<&'a str>,
    pub recipients: &'a [String],
    /// SMS parts, or an e-mail transaction's recipient count.
    pub segments: u16,
    pub peer: SocketAddr,
}

/// A message's metadata with its identifiers already canonical.
pub struct Identified<'a> {
    pub account: &'a str,
    pub peer: SocketAddr,
    pub originator: Option<Identifier>,
    pub recipients: Vec<Identifier>,
    pub segments: u16,
}

impl Relay {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        protocol: Protocol,
        service: Service,
        recorder: Recorder,
        normalizer: NumberNormalizer,
        metrics: Arc<Metrics>,
        abort: Arc<Shutdown>,
        cut_short_status: u16,
    ) -> Relay {
        let req = |kind| {
            metrics.requests.get_or_create_owned(&RequestLabels {
                listener: name.clone(),
                kind,
            })
        };
        let l = ListenerLabels {
            listener: name.clone(),
        };
        let counters = Counters {
            message: req("message"),
            passthrough: req("passthrough"),
            rejected_requests: req("rejected"),
            fail_closed_requests: req("fail_closed"),
            messages: metrics.messages.get_or_create_owned(&l),
            forward_seconds: metrics.forward_seconds.get_or_create_owned(&l),
        };
        Relay {
            name,
            protocol,
            service,
            recorder,
            normalizer,
            metrics,
            abort,
            cut_short_status,
            counters,
        }
    }

    /// The submission of what a session found: canonical forms, time, id.
    pub fn submission(&self, found: Found<'_>) -> Submission {
        let normalize = |v: &str| -> Identifier {
            match self.service {
                Service::Sms => self.normalizer.normalize(v),
                Service::Email => canonical::normalize_email(v),
            }
        };
        self.submission_of(
            Identified {
                account: found.account,
                peer: found.peer,
                originator: found
                    .originator
                    .map(str::trim_ascii)
                    .filter(|o| !o.is_empty())
                    .map(normalize),
                recipients: found.recipients.iter().map(|r| normalize(r)).collect(),
                segments: found.segments,
            },
            None,
        )
    }

    /// The submission of identifiers a session has already put in canonical form
    /// (SMPP, whose addresses say what kind they are), with its SMPP details.
    pub fn submission_of(&self, found: Identified<'_>, smpp: Option<SmppDetail>) -> Submission {
        let at = self.recorder.now();
        Submission {
            id: self.recorder.next_submission_id(at),
            at,
            protocol: self.protocol,
            service: self.service,
            account: canonical::canonical_account(found.account),
            client_ip: canonical::canonical_ip(found.peer.ip()),
            client_port: found.peer.port(),
            originator: found.originator,
            segments: found.segments,
            recipients: found.recipients,
            smpp,
        }
    }

    /// Records a submission before it is forwarded. The outcome's place in the writer's
    /// queue is kept first, so that a full queue can never lose it. An error means:
    /// nothing is recorded (or, on a commit timeout, the records may be and their
    /// outcome says the message was not sent); refuse it, forward nothing.
    pub async fn record(
        self: &Arc<Self>,
        submission: &Submission,
        started: Instant,
    ) -> Result<Ticket, RecordError> {
        // One submission, the hot path: no vectors of places and tickets.
        let slot = self.recorder.reserve_outcome().await?;
        let ticket = self.ticket(submission, slot, started);
        match self.recorder.record(submission).await {
            Ok(()) => Ok(ticket),
            Err(e) => {
                self.unrecorded(ticket, &e).await;
                Err(e)
            }
        }
    }

    /// Appends a later event about a message already recorded (a delivery receipt, one
    /// destination's refusal): waits for queue space (at most `enqueue-timeout`), not
    /// for the commit. The message's own outcome does not depend on it.
    pub async fn event(&self, ev: &OutcomeEvent) -> Result<(), RecordError> {
        self.recorder.record_outcome(ev).await
    }

    /// [`Relay::record`] for submissions of one partition together (the SMPP messages
    /// read at once: see [`crate::store::Recorder::same_partition`]): one commit, a
    /// ticket each, all or none.
    pub async fn record_many(
        self: &Arc<Self>,
        submissions: &[Submission],
        started: Instant,
    ) -> Result<Vec<Ticket>, RecordError> {
        // The places first: a ticket made before a later place failed would write an
        // outcome for a message never recorded.
        let slots = self.recorder.reserve_outcomes(submissions.len()).await?;
        let tickets: Vec<Ticket> = submissions
            .iter()
            .zip(slots)
            .map(|(submission, slot)| self.ticket(submission, slot, started))
            .collect();
        match self.recorder.record_many(submissions).await {
            Ok(()) => Ok(tickets),
            Err(e) => {
                for ticket in tickets {
                    self.unrecorded(ticket, &e).await;
                }
                Err(e)
            }
        }
    }

    fn ticket(
        self: &Arc<Self>,
        submission: &Submission,
        slot: OutcomeSlot,
        started: Instant,
    ) -> Ticket {
        Ticket {
            relay: self.clone(),
            submission: submission.id,
            submitted_at: submission.at,
            recipients: submission.recipients.len(),
            slot: Some(slot),
            started,
        }
    }

    /// Spends the ticket of a submission the store did not take (`e`) without a log
    /// line (the caller logs the refusal): after a commit timeout the records may
    /// still be committed, so its outcome says it was not sent.
    async fn unrecorded(&self, ticket: Ticket, e: &RecordError) {
        let (submission, submitted_at) = ticket.submission();
        let slot = ticket.disarm();
        if matches!(e, RecordError::Timeout(_)) {
            let now = self.recorder.now();
            slot.record(&OutcomeEvent::new(
                submission,
                submitted_at,
                now,
                Outcome::Failed,
            ))
            .await;
        }
    }

    /// The logging phase: every exit of every request passes here once, and only
    /// here are requests counted and the access-log line written (target
    /// `relaylog::access`). `status` is the session's reply (HTTP status, SMTP reply
    /// code, SMPP command status).
    pub fn log(&self, exit: Exit<'_>, status: u16, started: Instant) {
        let family = match &exit {
            Exit::Rejected(_) => {
                self.counters.rejected_requests.inc();
                &self.metrics.rejected
            }
            Exit::FailClosed(_) => {
                self.counters.fail_closed_requests.inc();
                &self.metrics.fail_closed
            }
            Exit::Passthrough(_) => {
                self.counters.passthrough.inc();
                &self.metrics.upstream_errors
            }
            Exit::Message { forward, end, .. } => {
                self.counters.message.inc();
                self.counters.messages.inc();
                if let Some(d) = forward {
                    self.counters.forward_seconds.observe(d.as_secs_f64());
                }
                match end {
                    End::NotForwarded(_) => &self.metrics.not_forwarded,
                    _ => &self.metrics.upstream_errors,
                }
            }
        };
        let (kind, reason) = (exit.kind(), exit.reason());
        if let Some(reason) = reason {
            family
                .get_or_create(&ReasonLabels {
                    listener: self.name.clone(),
                    reason,
                })
                .inc();
        }
        let (submission, recipients) = match &exit {
            Exit::Message {
                submission,
                recipients,
                ..
            } => (Some(*submission), Some(*recipients)),
            _ => (None, None),
        };
        // Read in each event's fields, so that a line not written costs no clock read.
        let micros = || started.elapsed().as_micros() as u64;
        let listener = self.name.as_str();
        match &exit {
            Exit::FailClosed(e) => tracing::warn!(
                target: "relaylog::access", listener, exit = kind, reason, status, micros = micros(),
                error = %e, "store cannot record; message refused, not forwarded"
            ),
            Exit::Passthrough(Some(e))
            | Exit::Message {
                end: End::Upstream(e),
                ..
            } => {
                let cause = e.source().map(ToString::to_string);
                tracing::warn!(
                    target: "relaylog::access", listener, exit = kind, reason, status,
                    submission, recipients, micros = micros(), error = %e, cause, "upstream failed"
                )
            }
            Exit::Message {
                end: End::NotForwarded(_),
                ..
            } => tracing::warn!(
                target: "relaylog::access", listener, exit = kind, reason, status, submission,
                recipients, micros = micros(), "recorded, not forwarded"
            ),
            _ => tracing::debug!(
                target: "relaylog::access", listener, exit = kind, reason, status, submission,
                recipients, micros = micros(), "request"
            ),
        }
    }
}

/// What the upstream made of a forwarded message, as the outcome event records it.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub upstream_status: Option<u16>,
    pub gateway_code: Option<i32>,
    pub message_id: Option<String>,
    /// SMTP: the enhanced status code of the final reply (`2.0.0`).
    pub enhanced_status: Option<String>,
    /// SMTP: the message's size in bytes as it went upstream.
    pub size_bytes: Option<u64>,
}

/// A recorded message on its way: the promise of exactly one outcome. Spent by
/// [`Ticket::outcome`] or [`Ticket::not_forwarded`]; dropped unspent (its forward cut
/// short at `shutdown-timeout`), it writes `failed: shutdown` and its log line itself.
pub struct Ticket {
    relay: Arc<Relay>,
    submission: SubmissionId,
    submitted_at: i64,
    recipients: usize,
    slot: Option<OutcomeSlot>,
    started: Instant,
}

impl Ticket {
    /// The recorded submission: its id, and when it was received (its partition).
    pub fn submission(&self) -> (SubmissionId, i64) {
        (self.submission, self.submitted_at)
    }

    /// Whether the message must not be forwarded now: past `shutdown-timeout`, or its
    /// client gone (it had no answer and will send again, so a forward now could
    /// deliver it twice).
    pub fn not_now(&self, client_gone: bool) -> Option<NotForwarded> {
        if self.relay.abort.is_triggered() {
            Some(NotForwarded::Shutdown)
        } else if client_gone {
            Some(NotForwarded::ClientGone)
        } else {
            None
        }
    }

    /// The message was not forwarded: its outcome says why; `status` is the session's
    /// reply.
    pub async fn not_forwarded(self, why: NotForwarded, status: u16) {
        let relay = self.relay.clone();
        let (submission, recipients, started) = (self.submission, self.recipients, self.started);
        let at = relay.recorder.now();
        let event = OutcomeEvent::new(submission, self.submitted_at, at, why.outcome());
        self.spend(&event).await;
        relay.log(
            Exit::Message {
                submission: submission.0 as u64,
                recipients,
                forward: None,
                end: End::NotForwarded(why),
            },
            status,
            started,
        );
    }

    /// The forward ended after `forward` with `outcome` (`Err`: the upstream step
    /// failed, and the outcome is `failed`); `status` is the session's reply.
    pub async fn outcome(
        self,
        outcome: Result<(Outcome, Answer), &dyn Failure>,
        forward: Duration,
        status: u16,
    ) {
        let relay = self.relay.clone();
        let (submission, recipients, started) = (self.submission, self.recipients, self.started);
        let at = relay.recorder.now();
        let (event, end) = match outcome {
            Ok((outcome, answer)) => {
                let mut event = OutcomeEvent::new(submission, self.submitted_at, at, outcome);
                event.upstream_status = answer.upstream_status;
                event.gateway_code = answer.gateway_code;
                event.upstream_message_id = answer.message_id;
                event.enhanced_status = answer.enhanced_status;
                event.size_bytes = answer.size_bytes;
                (event, End::Relayed)
            }
            Err(e) => (
                OutcomeEvent::new(submission, self.submitted_at, at, Outcome::Failed),
                End::Upstream(e),
            ),
        };
        self.spend(&event).await;
        relay.log(
            Exit::Message {
                submission: submission.0 as u64,
                recipients,
                forward: Some(forward),
                end,
            },
            status,
            started,
        );
    }

    /// Writes the ticket's outcome. Sealing may wait (a key file); dropped during that
    /// wait, the ticket still holds its slot and writes `failed: shutdown` instead.
    async fn spend(self, event: &OutcomeEvent) {
        let prepared = match &self.slot {
            Some(slot) => slot.prepare(event).await,
            None => None,
        };
        let slot = self.disarm();
        if let Some(prepared) = prepared {
            slot.send(prepared);
        }
    }

    /// The kept place, for the ticket's owner to write the outcome itself.
    fn disarm(mut self) -> OutcomeSlot {
        // Built with `Some`, and only this method, which consumes the ticket, takes it.
        self.slot
            .take()
            .expect("a ticket holds its slot until it is spent")
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        let why = NotForwarded::Shutdown;
        let at = self.relay.recorder.now();
        slot.record_now(&OutcomeEvent::new(
            self.submission,
            self.submitted_at,
            at,
            why.outcome(),
        ));
        self.relay.log(
            Exit::Message {
                submission: self.submission.0 as u64,
                recipients: self.recipients,
                forward: None,
                end: End::NotForwarded(why),
            },
            self.relay.cut_short_status,
            self.started,
        );
    }
}

/// A future that runs to completion even if the one awaiting it is dropped: polled in
/// place while awaited (no task, no cross-task wake-up per request), handed to a task
/// of its own if the awaiting future goes away first (a client that disconnects while
/// its message is forwarded).
///
/// `dropped` is set when that happens, so the work can tell that no one will read its
/// result. Once `abort` (shutdown-timeout) has fired, detached work is dropped instead,
/// or when it fires later: that is how relaylog cuts it short.
pub struct Detached<T: Send + 'static> {
    fut: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    dropped: Arc<AtomicBool>,
    /// The listener's `abort` (shutdown-timeout), looked at only when detaching.
    abort: Arc<Shutdown>,
}

impl<T: Send + 'static> Detached<T> {
    pub fn new(
        fut: impl Future<Output = T> + Send + 'static,
        dropped: Arc<AtomicBool>,
        abort: Arc<Shutdown>,
    ) -> Self {
        Self {
            fut: Some(Box::pin(fut)),
            dropped,
            abort,
        }
    }
}

impl<T: Send + 'static> Future for Detached<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Pending;
        };
        let out = std::task::ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(out)
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        let Some(fut) = self.fut.take() else { return };
        self.dropped.store(true, Ordering::Release);
        if self.abort.is_triggered() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            tracing::debug!(target: "relaylog::access", "client gone; the message goes on detached");
            let mut abort = Shutdown::clone(&self.abort);
            rt.spawn(async move {
                tokio::select! {
                    _ = fut => {}
                    () = abort.wait() => {}
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Dropped while its work waits, a detached future still finishes on a task.
    #[tokio::test]
    async fn detached_work_finishes_when_its_waiter_is_dropped() {
        let finished = Arc::new(AtomicBool::new(false));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let flag = finished.clone();
        let dropped = Arc::new(AtomicBool::new(false));
        let (_trigger, abort) = crate::shutdown::channel();
        let mut work = Box::pin(Detached::new(
            async move {
                let _ = wait.await;
                flag.store(true, Ordering::SeqCst);
            },
            dropped.clone(),
            Arc::new(abort),
        ));
        // Polled once in place: pending on the channel.
        assert!(futures_poll_once(work.as_mut()).is_pending());
        drop(work);
        assert!(dropped.load(Ordering::SeqCst), "the work is told");
        go.send(()).unwrap();
        for _ in 0..100 {
            if finished.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(finished.load(Ordering::SeqCst));
    }

    fn futures_poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        f.poll(&mut Context::from_waker(waker))
    }
}
