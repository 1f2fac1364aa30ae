//! A gateway look-alike: answers sendsms (Kannel), /send (Jasmin) or a JSON API the way
//! the real gateway does, and counts what it accepted (`GET /stats`). It is the default
//! upstream when the config names none, and the upstream of tests and benchmarks.
//! It reads metadata with the same profile parsers as the relay and keeps nothing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use crate::config::{AccountFrom, JsonProfile, Profile, ProfileKind};
use crate::ingress::profile::{Extract, ParseError, RequestView};
use crate::shutdown::Shutdown;

pub mod smpp;
pub mod smtp;

/// Counts, as served on `/stats`.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    /// Submissions answered with an acceptance.
    pub accepted: AtomicU64,
    /// Recipients in accepted submissions.
    pub recipients: AtomicU64,
    pub rejected: AtomicU64,
}

impl Stats {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "accepted": self.accepted.load(Ordering::Relaxed),
            "recipients": self.recipients.load(Ordering::Relaxed),
            "rejected": self.rejected.load(Ordering::Relaxed),
        })
        .to_string()
    }
}

pub struct Simulator {
    listener: TcpListener,
    profile: Profile,
    pub stats: Arc<Stats>,
}

/// The JSON shape the simulator expects when no listener config says otherwise:
/// `{"from": …, "to": [...], "text": …}` with the account in basic auth.
pub fn default_json_profile() -> JsonProfile {
    JsonProfile {
        account: AccountFrom::BasicAuth,
        originator_pointer: Some("/from".into()),
        recipients_pointer: "/to".into(),
        text_pointer: Some("/text".into()),
        message_id_pointer: Some("/id".into()),
    }
}

impl Simulator {
    pub async fn bind(addr: SocketAddr, profile: Profile) -> std::io::Result<Simulator> {
        Ok(Simulator {
            listener: TcpListener::bind(addr).await?,
            profile,
            stats: Arc::new(Stats::default()),
        })
    }

    pub fn profile_for(kind: ProfileKind) -> Profile {
        Profile::new(
            kind,
            kind.default_path().to_owned(),
            kind.default_passthrough(),
            (kind == ProfileKind::Json).then(default_json_profile),
        )
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run(self, mut shutdown: Shutdown) {
        let profile = Arc::new(self.profile);
        while let Some((stream, _)) =
            crate::net::accept(&self.listener, &mut shutdown, "simulator").await
        {
            let profile = profile.clone();
            let stats = self.stats.clone();
            let svc = service_fn(move |req| {
                let profile = profile.clone();
                let stats = stats.clone();
                async move { Ok::<_, Infallible>(answer(&profile, &stats, req).await) }
            });
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                crate::net::serve_http1(stream, svc, shutdown).await;
            });
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html"),
    );
    r
}

async fn answer(profile: &Profile, stats: &Stats, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (head, body) = req.into_parts();
    if head.method == Method::GET && head.uri.path() == "/stats" {
        let mut r = text(StatusCode::OK, stats.to_json());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return r;
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let Ok(body) = Limited::new(body, 1024 * 1024)
        .collect()
        .await
        .map(|c| c.to_bytes())
    else {
        return text(StatusCode::BAD_REQUEST, "Body too large");
    };
    let view = RequestView::of(&head, &body);
    let n = stats.accepted.load(Ordering::Relaxed);
    match (profile.kind, profile.extract(&view)) {
        (_, Ok(Extract::Message(m))) => {
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            stats
                .recipients
                .fetch_add(m.recipients.len() as u64, Ordering::Relaxed);
            match profile.kind {
                ProfileKind::Kannel => text(StatusCode::ACCEPTED, "0: Accepted for delivery"),
                ProfileKind::Jasmin => text(StatusCode::OK, format!("Success \"sim-{n:012}\"")),
                ProfileKind::Json => {
                    let mut r = text(
                        StatusCode::OK,
                        format!("{{\"id\":\"sim-{n:012}\",\"status\":\"accepted\"}}"),
                    );
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    r
                }
            }
        }
        (kind, Ok(Extract::Passthrough) | Err(ParseError::UnknownPath)) => match kind {
            ProfileKind::Kannel => text(StatusCode::NOT_FOUND, "Unknown request."),
            _ => text(StatusCode::NOT_FOUND, "Not found"),
        },
        (kind, Err(e)) => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            match kind {
                ProfileKind::Kannel => text(StatusCode::BAD_REQUEST, format!("{e}, rejected")),
                _ => text(StatusCode::BAD_REQUEST, format!("Error \"{e}\"")),
            }
        }
    }
}
