//! The officers' web console under `/console/`: server-rendered pages (askama
//! templates compiled into the binary), plain forms, one small stylesheet, no script.
//!
//! It is served only where the API is (the admin listener with TLS) and asks for
//! nothing the API does not: every page and form calls the operations in
//! [`super::ops`], which check roles, the four-eyes rule and write the audit entries,
//! as the API and the command line do. What the console adds is presentation and the
//! browser's own defences:
//!
//! - the session (the API's, with its lifetime) rides in a cookie that is `Secure`,
//!   `HttpOnly`, `SameSite=Strict` and scoped to `/console/`;
//! - every form carries a CSRF token derived from the session's token (or, before
//!   login, from a cookie of its own), checked before anything is done;
//! - a strict Content-Security-Policy (no script at all, styles and images from
//!   here only, no framing), `no-store` caching, no referrer;
//! - sensitive acts (approving, rejecting, exporting, offboarding) ask again for the
//!   password and a fresh TOTP code, as the command line does for each.

pub mod pages;
pub mod svg;
pub mod traffic;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::api::{Api, ApiError, Authed, MAX_BODY};
use crate::compliance::officers::Role;
use crate::compliance::refusals;

/// The session cookie: the API's session token.
pub const SESSION_COOKIE: &str = "relaylog_console";
/// The login form's own CSRF cookie (random, before there is a session).
pub const LOGIN_COOKIE: &str = "relaylog_login";

/// The policy every console reply carries: nothing runs, nothing loads from
/// elsewhere, forms post only here, no page may frame it.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub struct Console {
    pub api: Arc<Api>,
    pub traffic: Arc<traffic::Traffic>,
    /// Each relay listener's name and protocol, from the configuration.
    pub listeners: Vec<(String, &'static str)>,
}

impl Console {
    pub fn router(self: Arc<Self>) -> Router {
        pages::routes()
            .layer(axum::middleware::map_response(harden))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(self)
    }
}

/// The headers every console reply carries.
async fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// The CSRF token of a secret (a session token, or the login cookie): a digest of
/// it, so that a page can carry it and only whoever holds the secret can make it.
pub fn csrf_of(secret: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("relaylog console csrf v1|{secret}").as_bytes(),
    );
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn csrf_matches(secret: &str, given: &str) -> bool {
    let want = csrf_of(secret);
    // In constant time: the comparison says nothing of how much of a guess was right.
    want.len() == given.len()
        && want
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A cookie's value from the request.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value with the console's attributes; `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: i64) -> HeaderValue {
    let v = format!(
        "{name}={value}; Path=/console/; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        max_age.max(0)
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The signed-in officer of a console request, with the CSRF token its forms carry.
pub struct Signed {
    pub who: Authed,
    pub csrf: String,
}

impl Signed {
    pub fn is(&self, role: Role) -> bool {
        self.who.officer.role.allows(role)
    }
}

/// Why a console request was not served: a page to show, or the login to go to.
pub enum Refusal {
    /// No session: to the login page (nothing is audited for a visitor without any
    /// cookie; a cookie that is no session is, by [`Api::session_officer`]).
    Login,
    /// The session cookie is no (longer a) session: to the login page, the cookie
    /// cleared.
    Ended,
    /// The API's error, shown as a page with its status.
    Error(ApiError),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        Refusal::Error(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Login => {
                let mut r = (StatusCode::SEE_OTHER, "").into_response();
                r.headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("/console/login"));
                r
            }
            Refusal::Ended => {
                let mut r = Refusal::Login.into_response();
                r.headers_mut()
                    .insert(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
                r
            }
            Refusal::Error(e) => pages::error_page(e.status, &e.message),
        }
    }
}

fn call_of(parts: &Parts) -> String {
    let route = parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    format!("{} {route}", parts.method.as_str())
}

impl FromRequestParts<Arc<Console>> for Signed {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Refusal> {
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE).map(str::to_owned) else {
            return Err(Refusal::Login);
        };
        let call = call_of(parts);
        let from = super::api::peer(parts);
        let api = console.api.clone();
        let who = super::ops::blocking(move || api.session_officer(Some(token), &call, &from))
            .await
            .map_err(|e| match e.status {
                StatusCode::UNAUTHORIZED => Refusal::Ended,
                _ => Refusal::Error(e),
            })?;
        let csrf = csrf_of(&who.token);
        Ok(Signed { who, csrf })
    }
}

/// A form posted by a signed-in officer, its CSRF token checked before the handler
/// runs. A wrong or missing token is refused with 403 and counted as a refusal
/// (audited one entry per peer and minute).
pub struct Posted<T> {
    pub signed: Signed,
    pub form: T,
    pub peer: String,
}

/// The CSRF field every console form carries.
const CSRF_FIELD: &str = "csrf";

impl<T: serde::de::DeserializeOwned + Send> FromRequest<Arc<Console>> for Posted<T> {
    type Rejection = Refusal;

    async fn from_request(req: Request, console: &Arc<Console>) -> Result<Self, Refusal> {
        let (mut parts, body) = req.into_parts();
        let signed = Signed::from_request_parts(&mut parts, console).await?;
        let peer = super::api::peer(&parts);
        let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the form is larger than {MAX_BODY} bytes"),
            )
        })?;
        let given = form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == CSRF_FIELD)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if !csrf_matches(&signed.who.token, &given) {
            let (api, call, from, actor) = (
                console.api.clone(),
                call_of(&parts),
                peer.clone(),
                signed.who.officer.name.clone(),
            );
            super::ops::blocking(move || api.refuse(&from, &actor, &call, "csrf")).await?;
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the form's security token does not match this session: reload the page and send it again",
            )
            .into());
        }
        let form = parse_form::<T>(&bytes)?;
        Ok(Posted { signed, form, peer })
    }
}

/// A form's fields (extra ones, such as the CSRF token, ignored).
pub fn parse_form<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_urlencoded::from_bytes::<T>(bytes)
        .map_err(|e| ApiError::bad_request(format!("the form is incomplete: {e}")))
}

/// The client's address, as refusals are counted against it.
pub fn peer_of(c: &ConnectInfo<SocketAddr>) -> String {
    super::api::refusal_peer(c.0.ip())
}

impl Api {
    /// Counts a refused console form (a bad CSRF token) like a call without a session.
    pub fn refuse(
        &self,
        from: &str,
        actor: &str,
        call: &str,
        reason: &str,
    ) -> Result<(), ApiError> {
        let mut ledger = self.ledger()?;
        ledger.count_refusal(
            self.now(),
            refusals::UNAUTHENTICATED,
            from,
            actor,
            call,
            reason,
        )?;
        Ok(())
    }
}
