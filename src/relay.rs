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
//! turned into a client reply in [`reply`], one place.

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

use crate::admin::metrics::{ListenerLabels, Metrics, ReasonLabels, RequestLabels};
use crate::canonical::{self, NumberNormalizer};
use crate::config::{Limits, Profile};
use crate::egress::http::{Upstream, UpstreamError};
use crate::ingress::profile::{Extract, Extracted, ParseError, RequestView};
use crate::record::{Outcome, OutcomeEvent, Protocol, Service, Submission, sms_segments};
use crate::shutdown::{Drain, Shutdown};
use crate::store::{RecordError, Recorder};

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
    pub abort: Shutdown,
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

/// Why a request was not relayed, or failed on the way: each maps to one reply.
#[derive(Debug)]
enum Refusal {
    BodyTooLarge,
    BodyTimeout,
    BodyBroken,
    Invalid(ParseError),
    Store(RecordError),
    Upstream(UpstreamError),
    /// Recorded, then not forwarded (client gone) or cut short (shutdown): no one
    /// reads this reply, but the exit is logged like any other.
    NotForwarded(Outcome),
}

impl Refusal {
    /// A short, fixed label for metrics and the log line.
    fn reason(&self) -> &'static str {
        match self {
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::BodyBroken => "body_broken",
            Refusal::Invalid(e) => e.reason(),
            Refusal::Store(e) => e.reason(),
            Refusal::Upstream(e) => e.reason(),
            Refusal::NotForwarded(Outcome::FailedClientGone) => "client_gone",
            Refusal::NotForwarded(_) => "shutdown",
        }
    }
}

/// How a request ended: what the logging phase counts and writes, one line each.
enum Exit {
    /// Refused before anything was recorded or forwarded (bad input).
    Rejected,
    /// The store could not take the records: 503, nothing forwarded.
    FailClosed,
    /// No message in it (a passthrough path): forwarded, not recorded.
    Passthrough,
    /// Recorded, then forwarded (or not: `Refusal::Upstream`, `Refusal::NotForwarded`).
    Message {
        submission: u64,
        recipients: usize,
        /// How long the forward took, if there was one.
        forward: Option<Duration>,
    },
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
        abort: Shutdown,
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
    /// here are requests counted and the access-log line written. The line holds ids,
    /// counts, status and fixed labels: no query string, body or identifier.
    fn logging(
        &self,
        exit: &Exit,
        refusal: Option<&Refusal>,
        status: StatusCode,
        started: Instant,
    ) {
        let reason = refusal.map(Refusal::reason);
        let kind = match (exit, refusal) {
            (Exit::Rejected, _) => {
                self.counters.rejected_requests.inc();
                "rejected"
            }
            (Exit::FailClosed, _) => {
                self.counters.fail_closed_requests.inc();
                "fail_closed"
            }
            (Exit::Passthrough, _) => {
                self.counters.passthrough.inc();
                "passthrough"
            }
            (Exit::Message { forward, .. }, refusal) => {
                self.counters.message.inc();
                self.counters.messages.inc();
                if let Some(d) = forward {
                    self.counters.forward_seconds.observe(d.as_secs_f64());
                }
                match refusal {
                    None => "relayed",
                    Some(Refusal::NotForwarded(Outcome::FailedClientGone)) => "client_gone",
                    Some(Refusal::NotForwarded(_)) => "shutdown",
                    Some(_) => "upstream_error",
                }
            }
        };
        if let (Some(refusal), Some(reason)) = (refusal, reason) {
            let family = match refusal {
                Refusal::Store(_) => &self.metrics.fail_closed,
                Refusal::Upstream(_) => &self.metrics.upstream_errors,
                Refusal::NotForwarded(_) => &self.metrics.not_forwarded,
                _ => &self.metrics.rejected,
            };
            family.get_or_create(&self.reason(reason)).inc();
        }
        let (submission, recipients) = match exit {
            Exit::Message {
                submission,
                recipients,
                ..
            } => (Some(*submission), Some(*recipients)),
            _ => (None, None),
        };
        let micros = started.elapsed().as_micros() as u64;
        let status = status.as_u16();
        match refusal {
            Some(Refusal::Store(e)) => tracing::warn!(
                listener = %self.name, exit = kind, reason, status, micros, error = %e,
                "store cannot record; message refused, not forwarded"
            ),
            Some(Refusal::Upstream(e)) => {
                let cause = std::error::Error::source(e).map(ToString::to_string);
                tracing::warn!(
                    listener = %self.name, exit = kind, reason, status, submission, recipients,
                    micros, error = %e, cause, "upstream failed"
                )
            }
            Some(Refusal::NotForwarded(_)) => tracing::warn!(
                listener = %self.name, exit = kind, reason, status, submission, recipients,
                micros, "recorded, not forwarded"
            ),
            _ => tracing::debug!(
                listener = %self.name, exit = kind, reason, status, submission, recipients,
                micros, "request"
            ),
        }
    }

    /// Ends a request that never got as far as a record or a forward.
    fn refuse(&self, exit: Exit, refusal: Refusal, started: Instant) -> Response<Full<Bytes>> {
        let resp = reply(&refusal);
        self.logging(&exit, Some(&refusal), resp.status(), started);
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
        if let Err(e) = self.recorder.record(&submission).await {
            if matches!(e, RecordError::Timeout(_)) {
                // The records may still be committed: say that this message was not sent.
                self.outcome(outcome_event(&self, &submission, Outcome::Failed, None))
                    .await;
            }
            return self.refuse(Exit::FailClosed, Refusal::Store(e), started);
        }
        let exit = |forward| Exit::Message {
            submission: submission.id.0 as u64,
            recipients: submission.recipients.len(),
            forward,
        };
        // Recorded. Past shutdown-timeout, or with its client gone meanwhile (it had no
        // answer and will send again, so forwarding now could deliver it twice), the
        // message is not forwarded.
        let not_now = if self.abort.is_triggered() {
            Some(Outcome::FailedShutdown)
        } else if client_gone.load(Ordering::Acquire) {
            Some(Outcome::FailedClientGone)
        } else {
            None
        };
        if let Some(outcome) = not_now {
            self.outcome(outcome_event(&self, &submission, outcome, None))
                .await;
            return self.refuse(exit(None), Refusal::NotForwarded(outcome), started);
        }
        let forwarding = Instant::now();
        let mut abort = self.abort.clone();
        let result = tokio::select! {
            r = self.upstream.forward(&head, body) => Some(r),
            () = abort.wait() => None,
        };
        let forward = Some(forwarding.elapsed());
        let (event, refusal) = match result {
            Some(Ok(r)) => {
                let read = self.profile.read_outcome(r.status, &r.body);
                let mut ev =
                    outcome_event(&self, &submission, read.outcome, Some(r.status.as_u16()));
                ev.gateway_code = read.gateway_code;
                ev.upstream_message_id = read.message_id;
                self.outcome(ev).await;
                let resp = r.into_response();
                self.logging(&exit(forward), None, resp.status(), started);
                return resp;
            }
            Some(Err(e)) => (
                outcome_event(&self, &submission, Outcome::Failed, None),
                Refusal::Upstream(e),
            ),
            None => (
                outcome_event(&self, &submission, Outcome::FailedShutdown, None),
                Refusal::NotForwarded(Outcome::FailedShutdown),
            ),
        };
        self.outcome(event).await;
        self.refuse(exit(forward), refusal, started)
    }

    /// Appends an outcome event; a failure is counted and logged, never silent.
    async fn outcome(&self, event: OutcomeEvent) {
        if let Err(e) = self.recorder.record_outcome(&event).await {
            self.metrics.store_errors.inc();
            tracing::error!(listener = %self.name, reason = e.reason(), error = %e, "outcome event could not be queued");
        }
    }
}

/// Relays one request. Never fails: every error becomes a reply. `drain` is the
/// connection's token: a recorded message's phases hold a clone of it to the end.
pub async fn handle(
    listener: &Arc<Listener>,
    req: Request<Incoming>,
    peer: SocketAddr,
    drain: &Drain,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (head, body) = req.into_parts();
    let body = match read_body(body, &listener.limits).await {
        Ok(b) => b,
        Err(refusal) => return listener.refuse(Exit::Rejected, refusal, started),
    };
    let view = RequestView::of(&head, &body);
    let extracted = match listener.profile.extract(&view) {
        Ok(Extract::Passthrough) => {
            let result = listener.upstream.forward(&head, body).await;
            return match result {
                Ok(r) => {
                    let resp = r.into_response();
                    listener.logging(&Exit::Passthrough, None, resp.status(), started);
                    resp
                }
                Err(e) => listener.refuse(Exit::Passthrough, Refusal::Upstream(e), started),
            };
        }
        Ok(Extract::Message(x)) => x,
        Err(e) => return listener.refuse(Exit::Rejected, Refusal::Invalid(e), started),
    };
    let submission = listener.submission(extracted, peer);
    let (l, drain) = (listener.clone(), drain.clone());
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
    )
    .await
}

/// A future that runs to completion even if the one awaiting it is dropped: polled in
/// place while awaited (no task, no cross-task wake-up per request), handed to a task
/// of its own if the awaiting future goes away first (a client that disconnects while
/// its message is forwarded).
///
/// `dropped` is set when that happens, so the work can tell that no one will read its
/// result.
struct Detached<T: Send + 'static> {
    fut: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    dropped: Arc<AtomicBool>,
}

impl<T: Send + 'static> Detached<T> {
    fn new(fut: impl Future<Output = T> + Send + 'static, dropped: Arc<AtomicBool>) -> Self {
        Self {
            fut: Some(Box::pin(fut)),
            dropped,
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
        if let Some(fut) = self.fut.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            self.dropped.store(true, Ordering::Release);
            rt.spawn(async move {
                fut.await;
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

/// The one place where a refusal becomes a client reply.
fn reply(refusal: &Refusal) -> Response<Full<Bytes>> {
    let (status, text, retry): (StatusCode, String, bool) = match refusal {
        Refusal::BodyTooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body larger than max-body-bytes".into(),
            false,
        ),
        Refusal::BodyTimeout => (
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time".into(),
            false,
        ),
        Refusal::BodyBroken => (
            StatusCode::BAD_REQUEST,
            "request body broken off".into(),
            false,
        ),
        Refusal::Invalid(e) => (e.status(), format!("{e}, rejected"), false),
        Refusal::Store(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("temporary failure, try again later ({})", e.reason()),
            true,
        ),
        Refusal::Upstream(e) => (e.status(), e.to_string(), false),
        Refusal::NotForwarded(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down, not sent; try again later".into(),
            true,
        ),
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
        let mut work = Box::pin(Detached::new(
            async move {
                let _ = wait.await;
                flag.store(true, Ordering::SeqCst);
            },
            dropped.clone(),
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
