//! The officers' web console under `/console/`: server-rendered pages (askama
//! templates compiled into the binary), plain forms, one small stylesheet, no script.
//!
//! It is served only where the API is (the admin listener with TLS) and decides
//! nothing the API does not: every page and form calls the operations in
//! [`super::ops`], which check roles and the four-eyes rule and write the audit
//! entries, as the API and the command line do. What the console adds is
//! presentation and the browser's own defences:
//!
//! - the session (the API's kind and lifetime, but of its own scope: a console cookie
//!   is no API bearer token) rides in a `__Host-` cookie that is `Secure`, `HttpOnly`
//!   and `SameSite=Strict`;
//! - every form carries a CSRF token derived from the session's token (or, before
//!   login, from a cookie of the login form's own), checked with the request's origin
//!   before anything is done;
//! - a strict Content-Security-Policy (no script at all, styles from here only, no
//!   framing), `no-store` caching, no referrer beyond the console itself;
//! - sensitive acts (approving, rejecting, exporting, offboarding, enrolling an
//!   officer, releasing a hold) ask again for the password and a fresh TOTP code
//!   ([`super::ops::Api::confirm`]).

pub mod pages;
pub mod svg;
pub mod traffic;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::api::{Api, ApiError, Authed, MAX_BODY};
use super::ops::{StepUp, blocking};
use super::session::Scope;
use crate::compliance::officers::Role;

/// The session cookie: a console session's token. `__Host-`: set only over HTTPS, by
/// this host, for every path, so that no other site or subdomain can plant one.
pub const SESSION_COOKIE: &str = "__Host-relaylog_console";
/// The login form's own CSRF cookie (random, before there is a session).
pub const LOGIN_COOKIE: &str = "__Host-relaylog_login";

/// The policy every console reply carries: nothing runs, nothing loads from
/// elsewhere (the charts and the QR code are inline SVG), forms post only here, no
/// page may frame it.
pub const CSP: &str = "default-src 'none'; style-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

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
    // Same-origin: links out of the console carry no address of it, and its own
    // form posts carry their origin (with `no-referrer` browsers send `null`).
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
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

/// Whether `given` is `secret`'s CSRF token, compared in constant time.
pub fn csrf_matches(secret: &str, given: &str) -> bool {
    let want = csrf_of(secret);
    want.len() == given.len()
        && want
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A cookie's value from the request. A name sent twice counts as none: one of the
/// two was planted.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// A `Set-Cookie` value with the console's attributes; `max_age` 0 deletes it.
/// Values are base64url or hex (tokens), which a header always takes.
pub fn set_cookie(name: &str, value: &str, max_age: i64) -> HeaderValue {
    let v = format!(
        "{name}={value}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        max_age.max(0)
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

/// Whether a form post comes from a page of this console: the browser's own word
/// (`Sec-Fetch-Site`) when it gives one, else the `Origin` against the `Host` when
/// there is one to compare. A client that sends neither (not a browser) still needs
/// the CSRF token.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    match (text("origin"), text("host")) {
        (Some(o), Some(h)) if o != "null" => o.strip_prefix("https://") == Some(h),
        _ => true,
    }
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

/// Why a console request was not served.
pub enum Refusal {
    /// No session cookie: to the login page (a visitor, not audited).
    Login,
    /// The cookie is no (longer a) session: to the login page, the cookie cleared
    /// (audited by [`Api::session_officer`]).
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
            Refusal::Login => pages::redirect("/console/login"),
            Refusal::Ended => {
                let mut r = pages::redirect("/console/login");
                r.headers_mut()
                    .insert(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
                r
            }
            Refusal::Error(e) => pages::error_page(e.status, &e.message),
        }
    }
}

/// `METHOD /route/{template}` of a request, as refusals are audited.
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
        // A page of another site (a sibling subdomain's image, say) gets nothing done
        // in an officer's name, not even a view that is audited; a form it posts is
        // refused and counted (as by [`Posted`]).
        if !same_origin(&parts.headers) {
            if parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD {
                return Err(Refusal::Login);
            }
            let (api, call, from) = (console.api.clone(), call_of(parts), super::api::peer(parts));
            blocking(move || api.refuse(&from, "(unauthenticated)", &call, "origin")).await?;
            return Err(ApiError::new(StatusCode::FORBIDDEN, NOT_FROM_HERE).into());
        }
        let call = call_of(parts);
        let from = super::api::peer(parts);
        let api = console.api.clone();
        let who = blocking(move || api.session_officer(Scope::Console, Some(token), &call, &from))
            .await
            .map_err(|e| match e.status {
                StatusCode::UNAUTHORIZED => Refusal::Ended,
                _ => Refusal::Error(e),
            })?;
        let csrf = csrf_of(&who.token);
        Ok(Signed { who, csrf })
    }
}

/// The second factor a sensitive form carries.
#[derive(Deserialize, Default)]
struct Confirmation {
    #[serde(default)]
    password: String,
    #[serde(default)]
    totp: String,
}

/// A form posted by a signed-in officer, its origin (by [`Signed`]) and CSRF token
/// checked before the handler runs. A refused one is answered 403 and counted as a refusal (audited
/// one entry per peer and minute).
pub struct Posted<T> {
    pub signed: Signed,
    pub form: T,
    /// The client's address, as refusals are counted against it.
    pub peer: String,
    confirmation: Confirmation,
}

/// The answer to a form refused for its origin or CSRF token.
const NOT_FROM_HERE: &str = "the form did not come from this console's page for this session: reload the page and send it again";

/// The CSRF field every console form carries.
const CSRF_FIELD: &str = "csrf";

impl<T: serde::de::DeserializeOwned + Send> FromRequest<Arc<Console>> for Posted<T> {
    type Rejection = Refusal;

    async fn from_request(req: Request, console: &Arc<Console>) -> Result<Self, Refusal> {
        let (mut parts, body) = req.into_parts();
        let signed = Signed::from_request_parts(&mut parts, console).await?;
        let peer = super::api::peer(&parts);
        let bytes = read_form(body).await?;
        let given = form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == CSRF_FIELD)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        // The origin was checked with the session (`Signed`): only the token is left.
        if !csrf_matches(&signed.who.token, &given) {
            let (api, call, from, actor) = (
                console.api.clone(),
                call_of(&parts),
                peer.clone(),
                signed.who.officer.name.clone(),
            );
            blocking(move || api.refuse(&from, &actor, &call, "csrf")).await?;
            return Err(ApiError::new(StatusCode::FORBIDDEN, NOT_FROM_HERE).into());
        }
        Ok(Posted {
            form: parse_form::<T>(&bytes)?,
            confirmation: parse_form::<Confirmation>(&bytes).unwrap_or_default(),
            signed,
            peer,
        })
    }
}

impl<T> Posted<T> {
    /// Checks the form's password and code for a sensitive act needing `role`
    /// ([`Api::confirm`]) before the act is done.
    pub async fn confirm(
        &self,
        console: &Console,
        role: Role,
        action: &'static str,
    ) -> Result<(), Refusal> {
        if self.confirmation.password.is_empty() || self.confirmation.totp.is_empty() {
            return Err(ApiError::bad_request(
                "this asks for your password and a fresh code from your authenticator app",
            )
            .into());
        }
        let api = console.api.clone();
        let who = self.signed.who.clone();
        let (password, totp, peer) = (
            self.confirmation.password.clone(),
            self.confirmation.totp.clone(),
            self.peer.clone(),
        );
        blocking(move || {
            let step = StepUp {
                password: &password,
                totp: &totp,
                peer: &peer,
            };
            api.confirm(&who, &step, role, action)
        })
        .await?;
        Ok(())
    }
}

/// A form's body, whole, within [`MAX_BODY`].
pub async fn read_form(body: axum::body::Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the form is larger than {MAX_BODY} bytes"),
            )
        } else {
            ApiError::bad_request("the form could not be read whole; send it again")
        }
    })
}

/// A form's fields (extra ones, such as the CSRF token, ignored).
pub fn parse_form<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_urlencoded::from_bytes::<T>(bytes)
        .map_err(|e| ApiError::bad_request(format!("the form is incomplete: {e}")))
}
