//! The phases of one relayed HTTP request, after the pingora model:
//!
//! 1. **read**: the body, bounded by `max-body-bytes` and `request-timeout`;
//! 2. **extract**: the profile finds the message metadata (or says there is none);
//! 3. **record**: the submission is sealed and committed (or queued, in async mode) —
//!    if the store cannot take it, the client gets 503 and nothing is forwarded;
//! 4. **forward**: the request goes upstream unchanged;
//! 5. **outcome**: the upstream's answer is appended as an outcome event.
//!
//! Once a submission is recorded, phases 4 and 5 run in a task of their own, so a
//! client that disconnects cannot leave a recorded message without its forward and its
//! outcome. Every refusal is turned into a client reply in [`reply`], one place.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

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
}

impl Listener {
    pub fn new(
        name: String,
        profile: Profile,
        limits: Limits,
        upstream: Upstream,
        recorder: Recorder,
        normalizer: NumberNormalizer,
        metrics: Arc<Metrics>,
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
}

/// Relays one request. Never fails: every error becomes a reply.
pub async fn handle(
    listener: &Arc<Listener>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (head, body) = req.into_parts();
    let body = match read_body(body, &listener.limits).await {
        Ok(b) => b,
        Err(refusal) => return reply(listener, refusal),
    };
    let view = RequestView::of(&head, &body);
    let extracted = match listener.profile.extract(&view) {
        Ok(Extract::Passthrough) => {
            listener.counters.passthrough.inc();
            return match listener.upstream.forward(&head, body).await {
                Ok(r) => r.into_response(),
                Err(e) => reply(listener, Refusal::Upstream(e)),
            };
        }
        Ok(Extract::Message(x)) => x,
        Err(e) => return reply(listener, Refusal::Invalid(e)),
    };
    let submission = listener.submission(extracted, peer);
    if let Err(e) = listener.recorder.record(&submission).await {
        if matches!(e, RecordError::Timeout(_)) {
            // The records may still be committed: say that this message was not sent.
            let _ = listener
                .recorder
                .record_outcome(&outcome_event(listener, &submission, Outcome::Failed, None))
                .await;
        }
        return reply(listener, Refusal::Store(e));
    }
    listener.counters.message.inc();
    listener.counters.messages.inc();
    let (submission_id, recipients) = (submission.id.0, submission.recipients.len());
    // From here on the message is recorded: forward and outcome must happen even if the
    // client goes away, so they run to completion whatever happens to this future.
    let l = listener.clone();
    let task = Detached::new(async move {
        let result = l.upstream.forward(&head, body).await;
        l.counters
            .forward_seconds
            .observe(started.elapsed().as_secs_f64());
        let event = match &result {
            Ok(r) => {
                let read = l.profile.read_outcome(r.status, &r.body);
                let mut ev = outcome_event(&l, &submission, read.outcome, Some(r.status.as_u16()));
                ev.gateway_code = read.gateway_code;
                ev.upstream_message_id = read.message_id;
                ev
            }
            Err(_) => outcome_event(&l, &submission, Outcome::Failed, None),
        };
        if let Err(e) = l.recorder.record_outcome(&event).await {
            l.metrics.store_errors.inc();
            tracing::error!(listener = %l.name, error = %e, "outcome event could not be queued");
        }
        result
    });
    let resp = match task.await {
        Ok(r) => r.into_response(),
        Err(e) => reply(listener, Refusal::Upstream(e)),
    };
    // The access log: ids, counts and status only. No query string, body or identifier.
    tracing::debug!(
        listener = %listener.name,
        submission = submission_id,
        recipients,
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "relayed"
    );
    resp
}

/// A future that runs to completion even if the one awaiting it is dropped: polled in
/// place while awaited (no task, no cross-task wake-up per request), handed to a task
/// of its own if the awaiting future goes away first (a client that disconnects while
/// its message is forwarded).
struct Detached<T: Send + 'static> {
    fut: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
}

impl<T: Send + 'static> Detached<T> {
    fn new(fut: impl Future<Output = T> + Send + 'static) -> Self {
        Self {
            fut: Some(Box::pin(fut)),
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

/// The one place where a refusal becomes a client reply and a metric.
fn reply(l: &Listener, refusal: Refusal) -> Response<Full<Bytes>> {
    let (status, text, retry): (StatusCode, String, bool) = match &refusal {
        Refusal::BodyTooLarge => {
            l.counters.rejected_requests.inc();
            l.metrics
                .rejected
                .get_or_create(&l.reason("body_too_large"))
                .inc();
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body larger than max-body-bytes".into(),
                false,
            )
        }
        Refusal::BodyTimeout => {
            l.counters.rejected_requests.inc();
            l.metrics
                .rejected
                .get_or_create(&l.reason("body_timeout"))
                .inc();
            (
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time".into(),
                false,
            )
        }
        Refusal::BodyBroken => {
            l.counters.rejected_requests.inc();
            l.metrics
                .rejected
                .get_or_create(&l.reason("body_broken"))
                .inc();
            (
                StatusCode::BAD_REQUEST,
                "request body broken off".into(),
                false,
            )
        }
        Refusal::Invalid(e) => {
            l.counters.rejected_requests.inc();
            l.metrics
                .rejected
                .get_or_create(&l.reason(e.reason()))
                .inc();
            (e.status(), format!("{e}, rejected"), false)
        }
        Refusal::Store(e) => {
            l.counters.fail_closed_requests.inc();
            l.metrics
                .fail_closed
                .get_or_create(&l.reason(e.reason()))
                .inc();
            tracing::warn!(listener = %l.name, reason = e.reason(), error = %e, "store cannot record; message refused, not forwarded");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("temporary failure, try again later ({})", e.reason()),
                true,
            )
        }
        Refusal::Upstream(e) => {
            l.metrics
                .upstream_errors
                .get_or_create(&l.reason(e.reason()))
                .inc();
            tracing::warn!(listener = %l.name, reason = e.reason(), "upstream failed");
            (e.status(), e.to_string(), false)
        }
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
        let mut work = Box::pin(Detached::new(async move {
            let _ = wait.await;
            flag.store(true, Ordering::SeqCst);
        }));
        // Polled once in place: pending on the channel.
        assert!(futures_poll_once(work.as_mut()).is_pending());
        drop(work);
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
