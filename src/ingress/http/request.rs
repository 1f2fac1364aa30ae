//! The phases of one relayed HTTP request, around the relay core ([`crate::relay`]):
//!
//! 1. **read**: the body, bounded by `max-body-bytes` and `request-timeout`;
//! 2. **extract**: the profile finds the message metadata (or says there is none);
//! 3. **record**: [`Relay::record`] — if the store cannot take it, the client gets 503
//!    and nothing is forwarded;
//! 4. **forward**: the request goes upstream unchanged;
//! 5. **outcome** and **logging**: [`Ticket::outcome`], or [`Relay::log`] for the
//!    refusals.
//!
//! Phases 3 to 5 run in a [`Detached`] future holding a drain token: once a submission
//! is recorded, a client that disconnects cannot leave it without its outcome, and
//! `serve` does not close the store before that outcome is written. A client gone
//! before the forward starts is not forwarded for (`failed: client gone`); past
//! `shutdown-timeout` a forward is cut short (`failed: shutdown`, by the ticket). Every
//! refusal is turned into a client reply in [`reply`], one place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::config::{Limits, Profile};
use crate::egress::http::{Upstream, UpstreamError};
use crate::ingress::profile::{Extract, ParseError, RequestView};
use crate::record::sms_segments;
use crate::relay::{Answer, Detached, Exit, Found, NotForwarded, Relay, Ticket};
use crate::shutdown::Drain;
use crate::store::RecordError;

/// Everything one HTTP listener needs to relay a request. Shared by its connections.
pub struct Listener {
    pub relay: Arc<Relay>,
    pub profile: Profile,
    pub limits: Limits,
    pub upstream: Upstream,
}

/// Why a request was refused before anything was recorded or forwarded.
#[derive(Debug)]
enum Refusal {
    BodyTooLarge,
    BodyTimeout,
    BodyBroken,
    Invalid(ParseError),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::BodyBroken => "body_broken",
            Refusal::Invalid(e) => e.reason(),
        }
    }
}

/// What relaylog itself answers a client with.
enum Own<'a> {
    Rejected(&'a Refusal),
    FailClosed(&'a RecordError),
    Upstream(&'a UpstreamError),
    NotForwarded(NotForwarded),
}

impl Listener {
    /// Ends a request that was refused before it was recorded or forwarded.
    fn reject(&self, refusal: Refusal, started: Instant) -> Response<Full<Bytes>> {
        let resp = reply(Own::Rejected(&refusal));
        self.relay.log(
            Exit::Rejected(refusal.reason()),
            resp.status().as_u16(),
            started,
        );
        resp
    }

    /// Phases 3 to 5 for a message: record, forward, outcome (and the log line).
    async fn relay_message(
        self: Arc<Self>,
        submission: crate::record::Submission,
        head: http::request::Parts,
        body: Bytes,
        started: Instant,
        client_gone: Arc<AtomicBool>,
    ) -> Response<Full<Bytes>> {
        let ticket: Ticket = match self.relay.record(&submission, started).await {
            Ok(ticket) => ticket,
            Err(e) => {
                let resp = reply(Own::FailClosed(&e));
                self.relay
                    .log(Exit::FailClosed(&e), resp.status().as_u16(), started);
                return resp;
            }
        };
        if let Some(why) = ticket.not_now(client_gone.load(Ordering::Acquire)) {
            let resp = reply(Own::NotForwarded(why));
            ticket.not_forwarded(why, resp.status().as_u16()).await;
            return resp;
        }
        // Cut short at shutdown-timeout by dropping this future (see `Detached`): the
        // ticket then writes the outcome.
        let forwarding = Instant::now();
        let result = self.upstream.forward(head, body).await;
        let forward = forwarding.elapsed();
        match result {
            Ok(r) => {
                let read = self.profile.read_outcome(r.status, &r.body);
                let answer = Answer {
                    upstream_status: Some(r.status.as_u16()),
                    gateway_code: read.gateway_code,
                    message_id: read.message_id,
                    ..Answer::default()
                };
                let resp = r.into_response();
                let status = resp.status().as_u16();
                ticket
                    .outcome(Ok((read.outcome, answer)), forward, status)
                    .await;
                resp
            }
            Err(e) => {
                let resp = reply(Own::Upstream(&e));
                let status = resp.status().as_u16();
                ticket.outcome(Err(&e), forward, status).await;
                resp
            }
        }
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
        Err(refusal) => return listener.reject(refusal, started),
    };
    let view = RequestView::of(&head, &body);
    let extracted = match listener.profile.extract(&view) {
        Ok(Extract::Passthrough) => {
            let (resp, failure) = match listener.upstream.forward(head, body).await {
                Ok(r) => (r.into_response(), None),
                Err(e) => (reply(Own::Upstream(&e)), Some(e)),
            };
            let failure = failure.as_ref().map(|e| e as &dyn crate::relay::Failure);
            listener
                .relay
                .log(Exit::Passthrough(failure), resp.status().as_u16(), started);
            return resp;
        }
        Ok(Extract::Message(x)) => x,
        Err(e) => return listener.reject(Refusal::Invalid(e), started),
    };
    let submission = listener.relay.submission(Found {
        account: &extracted.account,
        originator: extracted.originator.as_deref(),
        recipients: &extracted.recipients,
        segments: sms_segments(extracted.text_chars, extracted.coding),
        peer,
    });
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
        listener.relay.abort.clone(),
    )
    .await
}

/// The one place where relaylog's own answers become HTTP replies.
fn reply(own: Own<'_>) -> Response<Full<Bytes>> {
    let (status, text, retry): (StatusCode, String, bool) = match own {
        Own::Rejected(Refusal::BodyTooLarge) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body larger than max-body-bytes".into(),
            false,
        ),
        Own::Rejected(Refusal::BodyTimeout) => (
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time".into(),
            false,
        ),
        Own::Rejected(Refusal::BodyBroken) => (
            StatusCode::BAD_REQUEST,
            "request body broken off".into(),
            false,
        ),
        Own::Rejected(Refusal::Invalid(e)) => (e.status(), format!("{e}, rejected"), false),
        Own::FailClosed(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("temporary failure, try again later ({})", e.reason()),
            true,
        ),
        Own::Upstream(e) => (e.status(), e.to_string(), false),
        Own::NotForwarded(NotForwarded::ClientGone) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "client gone, not sent".into(),
            true,
        ),
        Own::NotForwarded(NotForwarded::Shutdown) => (
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

async fn read_body(body: Incoming, limits: &Limits) -> Result<Bytes, Refusal> {
    let collect = Limited::new(body, limits.max_body_bytes).collect();
    match tokio::time::timeout(limits.request_timeout, collect).await {
        Err(_) => Err(Refusal::BodyTimeout),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::BodyTooLarge),
        Ok(Err(_)) => Err(Refusal::BodyBroken),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}
