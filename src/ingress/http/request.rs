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
//! refusal is worded in [`own`], one place.
//!
//! Phase 1 is the front end's: hyper's ([`handle`]) or the fast path's (`lean.rs`).
//! From phase 2 on both go through [`Listener::answer`], and each writes the
//! [`Answered`] in its own form.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::config::{Limits, Profile};
use crate::egress::http::{Outbound, Reply, Upstream, UpstreamError};
use crate::http1::{self, Fields};
use crate::ingress::profile::{Extract, ParseError, RequestView};
use crate::record::{Submission, sms_segments};
use crate::relay::{Answer, Detached, Exit, Found, NotForwarded, Relay, Ticket};
use crate::shutdown::Drain;
use crate::store::RecordError;

/// Everything one HTTP listener needs to relay a request. Shared by its connections.
pub struct Listener {
    pub relay: Arc<Relay>,
    pub profile: Profile,
    pub limits: Limits,
    /// Its thread's upstream connections (see `HttpThreads`).
    pub upstream: Arc<Upstream>,
}

/// Why a request was refused before anything was recorded or forwarded.
#[derive(Debug)]
pub(super) enum Refusal {
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

/// The answer to one request, in neither front end's form yet: the upstream's reply,
/// or relaylog's own (see [`own`]).
pub enum Answered {
    Upstream(Reply),
    Own {
        status: StatusCode,
        text: String,
        /// Tell the client to try again (`Retry-After: 1`).
        retry: bool,
    },
}

impl Answered {
    pub fn status(&self) -> u16 {
        match self {
            Answered::Upstream(r) => r.status,
            Answered::Own { status, .. } => status.as_u16(),
        }
    }

    /// As hyper's server sends it (requests hyper parsed).
    fn into_response(self) -> Response<Full<Bytes>> {
        match self {
            Answered::Upstream(reply) => reply.into_response(),
            Answered::Own {
                status,
                text,
                retry,
            } => {
                let mut resp = Response::new(Full::new(Bytes::from(text)));
                *resp.status_mut() = status;
                let headers = resp.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(PLAIN_TEXT),
                );
                if retry {
                    headers.insert(
                        http::header::RETRY_AFTER,
                        http::HeaderValue::from_static("1"),
                    );
                }
                resp
            }
        }
    }

    /// As the fast path writes it: the reply's head and body into `out`.
    pub(super) fn write(&self, out: &mut Vec<u8>, close: bool) {
        match self {
            Answered::Upstream(reply) => {
                reply.fields(|f| {
                    http1::write_reply_head(out, reply.status, f, reply.body.len(), close)
                });
                out.extend_from_slice(&reply.body);
            }
            Answered::Own {
                status,
                text,
                retry,
            } => {
                let headers = [
                    httparse::Header {
                        name: "content-type",
                        value: PLAIN_TEXT.as_bytes(),
                    },
                    httparse::Header {
                        name: "retry-after",
                        value: b"1",
                    },
                ];
                let fields = Fields::Raw(&headers[..if *retry { 2 } else { 1 }]);
                http1::write_reply_head(out, status.as_u16(), fields, text.len(), close);
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
}

/// The content type of relaylog's own replies.
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// A request read whole, as the core takes it from either front end.
pub(super) struct Request<'a> {
    pub view: RequestView<'a>,
    /// The target as it goes upstream: origin form.
    pub target: &'a str,
}

/// What extraction made of a request.
pub(super) enum Prepared {
    Refused(Refusal),
    Passthrough(Outbound),
    Message(Submission, Outbound),
}

impl Listener {
    /// The same listener with `limits` (a reload's), sharing the rest.
    pub fn with_limits(&self, limits: Limits) -> Listener {
        Listener {
            relay: self.relay.clone(),
            profile: self.profile.clone(),
            limits,
            upstream: self.upstream.clone(),
        }
    }

    /// Ends a request that was refused before it was recorded or forwarded.
    pub(super) fn reject(&self, refusal: Refusal, started: Instant) -> Answered {
        let answer = own(Own::Rejected(&refusal));
        self.relay
            .log(Exit::Rejected(refusal.reason()), answer.status(), started);
        if matches!(refusal, Refusal::BodyTimeout | Refusal::BodyTooLarge) {
            // The rest of the body is not read: the connection ends with the answer.
            self.relay.metrics.cut(&self.relay.name, refusal.reason());
        }
        answer
    }

    /// Phase 2, extraction, and the request as it will go upstream: no I/O, and
    /// nothing borrowed from the request is kept.
    pub(super) fn prepare(&self, req: &Request<'_>, peer: SocketAddr) -> Prepared {
        let outbound = || {
            self.upstream.outbound(
                req.view.method.as_str(),
                req.target,
                req.view.headers,
                req.view.body,
            )
        };
        match self.profile.extract(&req.view) {
            Ok(Extract::Passthrough) => Prepared::Passthrough(outbound()),
            Ok(Extract::Message(x)) => Prepared::Message(
                self.relay.submission(Found {
                    account: &x.account,
                    originator: x.originator.as_deref(),
                    recipients: &x.recipients,
                    segments: sms_segments(x.text_chars, x.coding),
                    peer,
                }),
                outbound(),
            ),
            Err(e) => Prepared::Refused(Refusal::Invalid(e)),
        }
    }

    /// Phases 3 to 5 of a [`prepare`](Self::prepare)d request. `drain` is a token of
    /// the connection's: a recorded message's phases hold it to the end.
    pub(super) async fn answer(
        self: &Arc<Self>,
        prepared: Prepared,
        drain: Drain,
        started: Instant,
    ) -> Answered {
        let (submission, outbound) = match prepared {
            Prepared::Refused(refusal) => return self.reject(refusal, started),
            Prepared::Passthrough(outbound) => {
                let (answer, failure) = match self.upstream.forward(&outbound).await {
                    Ok(r) => (Answered::Upstream(r), None),
                    Err(e) => (own(Own::Upstream(&e)), Some(e)),
                };
                let failure = failure.as_ref().map(|e| e as &dyn crate::relay::Failure);
                self.relay
                    .log(Exit::Passthrough(failure), answer.status(), started);
                return answer;
            }
            Prepared::Message(submission, outbound) => (submission, outbound),
        };
        let l = self.clone();
        let client_gone = Arc::new(AtomicBool::new(false));
        let gone = client_gone.clone();
        Detached::new(
            async move {
                let answer = l
                    .relay_message(submission, outbound, started, client_gone)
                    .await;
                drop(drain);
                answer
            },
            gone,
            self.relay.abort.clone(),
        )
        .await
    }

    /// Phases 3 to 5 for a message: record, forward, outcome (and the log line).
    async fn relay_message(
        self: Arc<Self>,
        submission: Submission,
        outbound: Outbound,
        started: Instant,
        client_gone: Arc<AtomicBool>,
    ) -> Answered {
        let ticket: Ticket = match self.relay.record(&submission, started).await {
            Ok(ticket) => ticket,
            Err(e) => {
                let answer = own(Own::FailClosed(&e));
                self.relay
                    .log(Exit::FailClosed(&e), answer.status(), started);
                return answer;
            }
        };
        if let Some(why) = ticket.not_now(client_gone.load(Ordering::Acquire)) {
            let answer = own(Own::NotForwarded(why));
            ticket.not_forwarded(why, answer.status()).await;
            return answer;
        }
        // Cut short at shutdown-timeout by dropping this future (see `Detached`): the
        // ticket then writes the outcome.
        let forwarding = Instant::now();
        let result = self.upstream.forward(&outbound).await;
        let forward = forwarding.elapsed();
        match result {
            Ok(r) => {
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
                let read = self.profile.read_outcome(status, &r.body);
                let answer = Answer {
                    upstream_status: Some(r.status),
                    gateway_code: read.gateway_code,
                    message_id: read.message_id,
                    ..Answer::default()
                };
                let status = r.status;
                ticket
                    .outcome(Ok((read.outcome, answer)), forward, status)
                    .await;
                Answered::Upstream(r)
            }
            Err(e) => {
                let answer = own(Own::Upstream(&e));
                ticket.outcome(Err(&e), forward, answer.status()).await;
                answer
            }
        }
    }
}

/// Relays one request hyper parsed. Never fails: every error becomes a reply.
pub async fn handle(
    listener: &Arc<Listener>,
    req: http::Request<Incoming>,
    peer: SocketAddr,
    drain: Drain,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (head, body) = req.into_parts();
    let body = match read_body(body, &listener.limits).await {
        Ok(b) => b,
        Err(refusal) => return listener.reject(refusal, started).into_response(),
    };
    // Origin form: the connection already names the upstream. A client's absolute-form
    // target is cut to its path.
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let req = Request {
        view: RequestView::of(&head, &body),
        target,
    };
    let prepared = listener.prepare(&req, peer);
    listener
        .answer(prepared, drain, started)
        .await
        .into_response()
}

/// The one place where relaylog's own answers are worded.
fn own(own: Own<'_>) -> Answered {
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
    Answered::Own {
        status,
        text: format!("relaylog: {text}\n"),
        retry,
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
