//! The phases of one relayed HTTP request, after the pingora model:
//!
//! 1. **read**: the body, bounded by `max-body-bytes` and `request-timeout`;
//! 2. **extract**: the profile finds the message metadata (or says there is none);
//! 3. **record**: the submission is sealed and committed (or queued, in async mode) —
//!    if the store cannot take it, the client gets 503 and nothing is forwarded;
//! 4. **forward**: the request goes upstream unchanged;
//! 5. **outcome**: the upstream's answer is appended as an outcome event;
//! 6. **logging**: one access-log line and the metrics, on every exit ([`Exit`]).
//!
//! Phases 3 to 6 run in a [`Detached`] future holding a drain token: once a submission
//! is recorded, a client that disconnects cannot leave it without its outcome, and
//! `serve` does not close the store before that outcome is written. A client gone
//! before the forward starts is not forwarded for (`failed: client gone`); past
//! `shutdown-timeout` a forward is cut short (`failed: shutdown`). Every refusal is
//! turned into a client reply in [`Exit::reply`], one place.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::canonical::{self, NumberNormalizer};
use crate::config::{Limits, Profile};
use crate::egress::http::{Upstream, UpstreamError};
use crate::ingress::profile::{Extract, Extracted, ParseError, RequestView};
use crate::metrics::{ListenerLabels, Metrics, ReasonLabels, RequestLabels};
use crate::record::{Outcome, OutcomeEvent, Protocol, Service, Submission, sms_segments};
use crate::shutdown::{Drain, Shutdown};
use crate::store::{OutcomeSlot, RecordError, Recorder};

/// Everything one listener needs to relay a request. Shared by its connections.
pub struct Listener {
    pub name: String,
    pub profile: Profile,
    pub limits: Limits,
    pub upstream: Upstream,
    pub recorder: Recorder,
    pub normalizer: NumberNormalizer,
    pub metrics: Arc<Metrics>,
    /// Fires when `shutdown-timeout` has passed: forwards still running are cut short.
    pub abort: Arc<Shutdown>,
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

/// Why a request was refused before anything was recorded or forwarded.
#[derive(Debug)]
enum Refusal {
    BodyTooLarge,
    BodyTimeout,
    BodyBroken,
    Invalid(ParseError),
}

/// Why a recorded message was not forwarded, or not to the end.
#[derive(Debug, Clone, Copy)]
enum NotForwarded {
    /// Its client left before the forward began (and will send again).
    ClientGone,
    /// `shutdown-timeout` passed: not begun, or cut short.
    Shutdown,
}

impl NotForwarded {
    fn outcome(self) -> Outcome {
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
#[derive(Debug)]
enum End {
    Relayed,
    Upstream(UpstreamError),
    NotForwarded(NotForwarded),
}

/// How a request ended: what the logging phase counts and writes, one line each, and
/// (for the refusals) what the client is told, in [`Exit::reply`].
#[derive(Debug)]
enum Exit {
    /// Bad input: nothing recorded, nothing forwarded.
    Rejected(Refusal),
    /// The store could not take the records: 503, nothing forwarded.
    FailClosed(RecordError),
    /// No message in it (a passthrough path): forwarded without a record.
    Passthrough(Option<UpstreamError>),
    /// Recorded, then forwarded or not.
    Message {
        submission: u64,
        recipients: usize,
        /// How long a forward that ran to its end took.
        forward: Option<Duration>,
        end: End,
    },
}

impl Exit {
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
            Exit::Rejected(Refusal::BodyTooLarge) => Some("body_too_large"),
            Exit::Rejected(Refusal::BodyTimeout) => Some("body_timeout"),
            Exit::Rejected(Refusal::BodyBroken) => Some("body_broken"),
            Exit::Rejected(Refusal::Invalid(e)) => Some(e.reason()),
            Exit::FailClosed(e) => Some(e.reason()),
            Exit::Passthrough(e) => e.as_ref().map(UpstreamError::reason),
            Exit::Message { end, .. } => match end {
                End::Relayed => None,
                End::Upstream(e) => Some(e.reason()),
                End::NotForwarded(n) => Some(n.label()),
            },
        }
    }

    /// The reply relaylog gives itself: every exit but a forward that got an answer.
    fn reply(&self) -> Response<Full<Bytes>> {
        let (status, text, retry): (StatusCode, String, bool) = match self {
            Exit::Rejected(Refusal::BodyTooLarge) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body larger than max-body-bytes".into(),
                false,
            ),
            Exit::Rejected(Refusal::BodyTimeout) => (
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time".into(),
                false,
            ),
            Exit::Rejected(Refusal::BodyBroken) => (
                StatusCode::BAD_REQUEST,
                "request body broken off".into(),
                false,
            ),
            Exit::Rejected(Refusal::Invalid(e)) => (e.status(), format!("{e}, rejected"), false),
            Exit::FailClosed(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("temporary failure, try again later ({})", e.reason()),
                true,
            ),
            Exit::Passthrough(Some(e))
            | Exit::Message {
                end: End::Upstream(e),
                ..
            } => (e.status(), e.to_string(), false),
            Exit::Message {
                end: End::NotForwarded(NotForwarded::ClientGone),
                ..
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "client gone, not sent".into(),
                true,
            ),
            Exit::Message {
                end: End::NotForwarded(NotForwarded::Shutdown),
                ..
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting down, not sent; try again later".into(),
                true,
            ),
            Exit::Passthrough(None)
            | Exit::Message {
                end: End::Relayed, ..
            } => (StatusCode::BAD_GATEWAY, "no reply".into(), false),
        };
        let mut resp = Response::new(Full::new(Bytes::from(format!("relaylog: {text}\n"))));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if retry {
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

impl Listener {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        profile: Profile,
        limits: Limits,
        upstream: Upstream,
        recorder: Recorder,
        normalizer: NumberNormalizer,
        metrics: Arc<Metrics>,
        abort: Arc<Shutdown>,
    ) -> Self {
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
        Self {
            name,
            profile,
            limits,
            upstream,
            recorder,
            normalizer,
            metrics,
            abort,
            counters,
        }
    }

    fn reason(&self, reason: &'static str) -> ReasonLabels {
        ReasonLabels {
            listener: self.name.clone(),
            reason,
        }
    }

    /// Builds the submission from the extracted metadata: canonical forms, time, id.
    fn submission(&self, x: Extracted, peer: SocketAddr) -> Submission {
        let at = self.recorder.now();
        Submission {
            id: self.recorder.next_submission_id(at),
            at,
            protocol: Protocol::Http,
            service: Service::Sms,
            account: canonical::canonical_account(&x.account),
            client_ip: canonical::canonical_ip(peer.ip()),
            client_port: peer.port(),
            originator: x
                .originator
                .as_deref()
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(|o| self.normalizer.normalize(o)),
            segments: sms_segments(x.text_chars, x.coding),
            recipients: x
                .recipients
                .iter()
                .map(|r| self.normalizer.normalize(r))
                .collect(),
        }
    }

    /// The logging phase: every exit of every request passes here once, and only
    /// here are requests counted and the access-log line written (target
    /// `relaylog::access`). The line holds ids, counts, status and fixed labels: no
    /// query string, body or identifier. `resp` is the upstream's answer, if the
    /// request got one; otherwise relaylog answers for itself.
    fn finish(
        &self,
        exit: Exit,
        resp: Option<Response<Full<Bytes>>>,
        started: Instant,
    ) -> Response<Full<Bytes>> {
        let resp = resp.unwrap_or_else(|| exit.reply());
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
            family.get_or_create(&self.reason(reason)).inc();
        }
        let (submission, recipients) = match &exit {
            Exit::Message {
                submission,
                recipients,
                ..
            } => (Some(*submission), Some(*recipients)),
            _ => (None, None),
        };
        let micros = started.elapsed().as_micros() as u64;
        let status = resp.status().as_u16();
        let listener = self.name.as_str();
        match &exit {
            Exit::FailClosed(e) => tracing::warn!(
                target: "relaylog::access", listener, exit = kind, reason, status, micros,
                error = %e, "store cannot record; message refused, not forwarded"
            ),
            Exit::Passthrough(Some(e))
            | Exit::Message {
                end: End::Upstream(e),
                ..
            } => {
                let cause = std::error::Error::source(e).map(ToString::to_string);
                tracing::warn!(
                    target: "relaylog::access", listener, exit = kind, reason, status,
                    submission, recipients, micros, error = %e, cause, "upstream failed"
                )
            }
            Exit::Message {
                end: End::NotForwarded(_),
                ..
            } => tracing::warn!(
                target: "relaylog::access", listener, exit = kind, reason, status, submission,
                recipients, micros, "recorded, not forwarded"
            ),
            _ => tracing::debug!(
                target: "relaylog::access", listener, exit = kind, reason, status, submission,
                recipients, micros, "request"
            ),
        }
        resp
    }

    /// Phases 3 to 6 for a message: record, forward, outcome, logging.
    async fn relay_message(
        self: Arc<Self>,
        submission: Submission,
        head: http::request::Parts,
        body: Bytes,
        started: Instant,
        client_gone: Arc<AtomicBool>,
    ) -> Response<Full<Bytes>> {
        // The outcome's place in the queue is kept before the records go in; from
        // here on the guard writes `failed: shutdown` if this future is dropped.
        let slot = match self.recorder.reserve_outcome().await {
            Ok(slot) => slot,
            Err(e) => return self.finish(Exit::FailClosed(e), None, started),
        };
        let message = |forward, end| Exit::Message {
            submission: submission.id.0 as u64,
            recipients: submission.recipients.len(),
            forward,
            end,
        };
        let guard = CutShort {
            listener: &self,
            submission: &submission,
            slot: Some(slot),
            started,
        };
        if let Err(e) = self.recorder.record(&submission).await {
            let slot = guard.disarm();
            if matches!(e, RecordError::Timeout(_)) {
                // The records may still be committed: say that this message was not sent.
                slot.record(&outcome_event(&self, &submission, Outcome::Failed, None))
                    .await;
            }
            return self.finish(Exit::FailClosed(e), None, started);
        }
        // Recorded. Past shutdown-timeout, or with its client gone meanwhile (it had no
        // answer and will send again, so forwarding now could deliver it twice), the
        // message is not forwarded.
        let not_now = if self.abort.is_triggered() {
            Some(NotForwarded::Shutdown)
        } else if client_gone.load(Ordering::Acquire) {
            Some(NotForwarded::ClientGone)
        } else {
            None
        };
        if let Some(why) = not_now {
            guard
                .disarm()
                .record(&outcome_event(&self, &submission, why.outcome(), None))
                .await;
            return self.finish(message(None, End::NotForwarded(why)), None, started);
        }
        // Cut short at shutdown-timeout by dropping this future (see `Detached`): the
        // guard then writes the outcome.
        let forwarding = Instant::now();
        let result = self.upstream.forward(&head, body).await;
        let slot = guard.disarm();
        let forward = Some(forwarding.elapsed());
        let (event, exit, resp) = match result {
            Ok(r) => {
                let read = self.profile.read_outcome(r.status, &r.body);
                let mut ev =
                    outcome_event(&self, &submission, read.outcome, Some(r.status.as_u16()));
                ev.gateway_code = read.gateway_code;
                ev.upstream_message_id = read.message_id;
                (ev, message(forward, End::Relayed), Some(r.into_response()))
            }
            Err(e) => (
                outcome_event(&self, &submission, Outcome::Failed, None),
                message(forward, End::Upstream(e)),
                None,
            ),
        };
        slot.record(&event).await;
        self.finish(exit, resp, started)
    }
}

/// A recorded message's outcome, written as `failed: shutdown` (with its log line) if
/// its phases are dropped before they write one themselves: that is how a forward is
/// cut short when `shutdown-timeout` passes.
struct CutShort<'a> {
    listener: &'a Listener,
    submission: &'a Submission,
    slot: Option<OutcomeSlot>,
    started: Instant,
}

impl CutShort<'_> {
    /// The kept place, for the phases to write the outcome themselves.
    fn disarm(mut self) -> OutcomeSlot {
        // Built with `Some`, and only this method, which consumes the guard, takes it.
        self.slot
            .take()
            .expect("a CutShort guard holds its slot until disarmed")
    }
}

impl Drop for CutShort<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        let l = self.listener;
        slot.record_now(&outcome_event(
            l,
            self.submission,
            Outcome::FailedShutdown,
            None,
        ));
        l.finish(
            Exit::Message {
                submission: self.submission.id.0 as u64,
                recipients: self.submission.recipients.len(),
                forward: None,
                end: End::NotForwarded(NotForwarded::Shutdown),
            },
            None,
            self.started,
        );
    }
}

/// Relays one request. Never fails: every error becomes a reply. `drain` is a token
/// of the connection's: a recorded message's phases hold it to the end.
pub async fn handle(
    listener: &Arc<Listener>,
    req: Request<Incoming>,
    peer: SocketAddr,
    drain: Drain,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (head, body) = req.into_parts();
    let body = match read_body(body, &listener.limits).await {
        Ok(b) => b,
        Err(refusal) => return listener.finish(Exit::Rejected(refusal), None, started),
    };
    let view = RequestView::of(&head, &body);
    let extracted = match listener.profile.extract(&view) {
        Ok(Extract::Passthrough) => {
            return match listener.upstream.forward(&head, body).await {
                Ok(r) => listener.finish(Exit::Passthrough(None), Some(r.into_response()), started),
                Err(e) => listener.finish(Exit::Passthrough(Some(e)), None, started),
            };
        }
        Ok(Extract::Message(x)) => x,
        Err(e) => {
            return listener.finish(Exit::Rejected(Refusal::Invalid(e)), None, started);
        }
    };
    let submission = listener.submission(extracted, peer);
    let l = listener.clone();
    let client_gone = Arc::new(AtomicBool::new(false));
    let gone = client_gone.clone();
    Detached::new(
        async move {
            let resp = l
                .relay_message(submission, head, body, started, client_gone)
                .await;
            drop(drain);
            resp
        },
        gone,
        listener.abort.clone(),
    )
    .await
}

/// A future that runs to completion even if the one awaiting it is dropped: polled in
/// place while awaited (no task, no cross-task wake-up per request), handed to a task
/// of its own if the awaiting future goes away first (a client that disconnects while
/// its message is forwarded).
///
/// `dropped` is set when that happens, so the work can tell that no one will read its
/// result. Once `abort` (shutdown-timeout) has fired, detached work is dropped instead,
/// or when it fires later: that is how relaylog cuts it short.
struct Detached<T: Send + 'static> {
    fut: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    dropped: Arc<AtomicBool>,
    /// The listener's `abort` (shutdown-timeout), looked at only when detaching.
    abort: Arc<Shutdown>,
}

impl<T: Send + 'static> Detached<T> {
    fn new(
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

fn outcome_event(
    l: &Listener,
    s: &Submission,
    outcome: Outcome,
    status: Option<u16>,
) -> OutcomeEvent {
    OutcomeEvent {
        submission: s.id,
        submitted_at: s.at,
        at: l.recorder.now(),
        outcome,
        upstream_status: status,
        gateway_code: None,
        upstream_message_id: None,
    }
}

async fn read_body(body: Incoming, limits: &Limits) -> Result<Bytes, Refusal> {
    let collect = Limited::new(body, limits.max_body_bytes).collect();
    match tokio::time::timeout(limits.request_timeout, collect).await {
        Err(_) => Err(Refusal::BodyTimeout),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::BodyTooLarge),
        Ok(Err(_)) => Err(Refusal::BodyBroken),
        Ok(Ok(c)) => Ok(c.to_bytes()),
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
