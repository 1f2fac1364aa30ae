//! The compliance API: the officer's commands over HTTPS on the admin listener, under
//! `/api/v1` (documented in `docs/openapi.json`).
//!
//! An officer logs in with password and TOTP and gets a bearer token that lasts
//! `admin.session-ttl` from then (see [`super::session`]). Every call runs the same
//! library functions as the command line, so it is refused, and audited, the same
//! way; calls without a live session get 401 and are audited as `api.unauthenticated`
//! (method, route template and peer, never the query string or body). Ledger and store
//! work runs on the blocking pool: password hashing and exports are slow on purpose or
//! by size, and never hold up `/metrics` or the relay.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::ops::{Exported, MAX_PASSWORD, blocking};
use super::session::{Scope, Sessions};
use crate::canonical::NumberNormalizer;
use crate::clock::{Micros, SharedClock};
use crate::compliance::cases::{Case, CaseError, CaseForm, IdentifierKind, criterion};
use crate::compliance::disclosure::{DiscloseError, Format, Installation};
use crate::compliance::lookup::{LookupError, Window};
use crate::compliance::officers::{Credentials, Officer, OfficerError, Role};
use crate::compliance::purpose::Purpose;
use crate::compliance::requests::{RequestError, RequestState};
use crate::config::Config;
use crate::export::{found_json, rfc3339};
use crate::ledger::{AuditEntry, Ledger, LedgerError};
use crate::store::keys::{KeyError, MasterKey};

/// Largest request body the API reads (JSON forms; no upload is larger).
pub const MAX_BODY: usize = 64 * 1024;
/// Password checks (argon2id, ~50 ms and 19 MiB each) running at once; more logins
/// at the same moment are told to retry.
const CONCURRENT_LOGINS: usize = 2;
/// Records a query answers with at most (they are held in memory to be audited first).
pub const MAX_QUERY_LIMIT: usize = 10_000;
/// Audit entries one page of `GET /api/v1/audit` holds at most.
pub const MAX_AUDIT_PAGE: usize = 10_000;

/// Every route the API serves, as (method, path template): the router is built from
/// the same handlers, and a test holds `docs/openapi.json` to this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/session"),
    ("DELETE", "/api/v1/session"),
    ("GET", "/api/v1/cases"),
    ("POST", "/api/v1/cases"),
    ("GET", "/api/v1/cases/{id}"),
    ("POST", "/api/v1/cases/{id}/approve"),
    ("POST", "/api/v1/cases/{id}/reject"),
    ("POST", "/api/v1/cases/{id}/close"),
    ("POST", "/api/v1/cases/{id}/disclosures"),
    ("POST", "/api/v1/subject-exports"),
    ("GET", "/api/v1/subject-requests"),
    ("POST", "/api/v1/accounts/{name}/offboard"),
    ("GET", "/api/v1/exports/{file}"),
    ("POST", "/api/v1/queries"),
    ("GET", "/api/v1/reports/cases"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/audit/verify"),
    ("GET", "/api/v1/officers"),
    ("POST", "/api/v1/officers"),
    ("POST", "/api/v1/officers/{name}/disable"),
    ("GET", "/api/v1/holds"),
    ("POST", "/api/v1/holds"),
    ("POST", "/api/v1/holds/{case}/release"),
];

pub struct Api {
    pub(super) config: Config,
    pub(super) exports: PathBuf,
    pub(super) clock: SharedClock,
    pub(super) master: MasterKey,
    signer: ring::signature::Ed25519KeyPair,
    pub(super) numbers: NumberNormalizer,
    pub(super) sessions: Sessions,
    /// Password checks running at once (logins, enrolments, step-ups).
    pub(super) logins: Semaphore,
    /// One export or offboarding at a time: each holds its records in memory.
    pub(super) exporting: Semaphore,
    /// The running store: what it has accepted is brought into the partitions before
    /// a disclosure, an access request or an offboarding reads or erases them (a
    /// client is answered once its records are in the journal, a moment before).
    recorder: Option<crate::store::Recorder>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiSetupError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("signing key: {0}")]
    Signing(String),
    #[error("exports directory {path}: {source}")]
    Exports {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Longest a disclosure, access request or offboarding waits for the store to bring
/// in what it accepted before it reads the partitions.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Api {
    pub fn new(
        config: Config,
        clock: SharedClock,
        recorder: Option<crate::store::Recorder>,
    ) -> Result<Arc<Api>, ApiSetupError> {
        let admin = config.admin.as_ref();
        let exports = admin.map(|a| a.exports.clone()).unwrap_or_default();
        std::fs::create_dir_all(&exports).map_err(|source| ApiSetupError::Exports {
            path: exports.clone(),
            source,
        })?;
        let ttl = admin.map_or(std::time::Duration::from_secs(900), |a| a.session_ttl);
        Ok(Arc::new(Api {
            master: MasterKey::load(&config.store.master_key)?,
            signer: crate::store::integrity::load_signing_key(&config.store.signing_key)
                .map_err(|e| ApiSetupError::Signing(e.to_string()))?,
            numbers: NumberNormalizer::warmed(config.store.default_region),
            sessions: match &config.store.backend {
                crate::config::Backend::Sqlite => Sessions::new(ttl),
                crate::config::Backend::Postgres(pg) => Sessions::in_database(
                    ttl,
                    crate::pg::Pool::shared(pg)
                        .map_err(|e| ApiSetupError::Signing(e.to_string()))?,
                ),
            },
            logins: Semaphore::new(CONCURRENT_LOGINS),
            exporting: Semaphore::new(1),
            exports,
            clock,
            config,
            recorder,
        }))
    }

    /// Waits (at most [`SETTLE_TIMEOUT`]) until everything the store accepted so far
    /// is in the partitions.
    pub(super) async fn settled(&self) -> Result<(), ApiError> {
        let Some(r) = &self.recorder else {
            return Ok(());
        };
        let unavailable = |why: String| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the store could not bring in what it accepted ({why}); retry"),
            )
        };
        match tokio::time::timeout(SETTLE_TIMEOUT, r.barrier()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(unavailable("timed out".into())),
        }
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/v1/session", post(login).delete(logout))
            .route("/api/v1/cases", get(list_cases).post(open_case))
            .route("/api/v1/cases/{id}", get(show_case))
            .route("/api/v1/cases/{id}/approve", post(approve_case))
            .route("/api/v1/cases/{id}/reject", post(reject_case))
            .route("/api/v1/cases/{id}/close", post(close_case))
            .route("/api/v1/cases/{id}/disclosures", post(disclose))
            .route("/api/v1/subject-exports", post(subject_export))
            .route("/api/v1/subject-requests", get(list_subject_requests))
            .route("/api/v1/accounts/{name}/offboard", post(offboard))
            .route("/api/v1/exports/{file}", get(download))
            .route("/api/v1/queries", post(query))
            .route("/api/v1/reports/cases", get(report))
            .route("/api/v1/audit", get(audit_list))
            .route("/api/v1/audit/verify", get(audit_verify))
            .route("/api/v1/officers", get(list_officers).post(add_officer))
            .route("/api/v1/officers/{name}/disable", post(disable_officer))
            .route("/api/v1/holds", get(list_holds).post(add_hold))
            .route("/api/v1/holds/{case}/release", post(release_hold))
            .fallback(not_found)
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.clone())
    }

    pub(super) fn ledger(&self) -> Result<Ledger, ApiError> {
        Ok(Ledger::open_store(&self.config.store)?)
    }

    pub(super) fn now(&self) -> Micros {
        self.clock.now_micros()
    }

    /// The installation's keys for an export; the keyring is opened per export, as
    /// partitions get keys day by day.
    pub(super) fn with_installation<T>(
        &self,
        f: impl FnOnce(&Installation<'_>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        self.with_keyring(|keyring| {
            f(&Installation {
                store: &self.config.store,
                keyring,
                master: &self.master,
                signer: &self.signer,
                csp_id: &self.config.compliance.csp_id,
            })
        })
    }

    /// The keyring readers use: the running store's (its keys cached for seconds, a
    /// shred dropping them at once, `serve` sweeping the rest); without a store in
    /// this process, one opened for the request and dropped with it, so that nothing
    /// stays in memory between requests.
    pub(super) fn with_keyring<T>(
        &self,
        f: impl FnOnce(&crate::store::keys::Keyring) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match &self.recorder {
            Some(recorder) => f(recorder.keyring()),
            None => f(&crate::store::open_keyring(&self.config.store)?),
        }
    }
}

// ---------------------------------------------------------------------------------
// Errors: JSON `{"error": "..."}` with the status that says what to do.
// ---------------------------------------------------------------------------------

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A failure of the installation, not of the request: logged in full, answered
    /// without detail.
    pub fn internal(e: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "compliance API call failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the server log has the cause",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // Refusals are limited per minute (compliance::refusals).
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        r
    }
}

impl From<OfficerError> for ApiError {
    fn from(e: OfficerError) -> ApiError {
        let status = match &e {
            OfficerError::BadCredentials
            | OfficerError::Disabled
            | OfficerError::BadTotp
            | OfficerError::Locked { .. } => StatusCode::UNAUTHORIZED,
            OfficerError::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
            OfficerError::Forbidden { .. } => StatusCode::FORBIDDEN,
            OfficerError::BadName | OfficerError::WeakPassword => StatusCode::BAD_REQUEST,
            OfficerError::Exists(_) | OfficerError::LastAdmin(_) => StatusCode::CONFLICT,
            OfficerError::Unknown(_) => StatusCode::NOT_FOUND,
            OfficerError::Ledger(e) => return ApiError::from_ledger(e),
            OfficerError::Key(_) | OfficerError::Hash => return ApiError::internal(&e),
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<CaseError> for ApiError {
    fn from(e: CaseError) -> ApiError {
        let status = match &e {
            CaseError::Unknown(_) => StatusCode::NOT_FOUND,
            CaseError::BadIdentifier { .. }
            | CaseError::NoCriteria
            | CaseError::TooManyIdentifiers
            | CaseError::BadTime(_)
            | CaseError::Missing(_)
            | CaseError::BadDate(_)
            | CaseError::EmptyWindow
            | CaseError::OutsideRetention { .. }
            | CaseError::FutureWindow => StatusCode::BAD_REQUEST,
            CaseError::Duplicate(_) | CaseError::WrongState { .. } => StatusCode::CONFLICT,
            CaseError::SameOfficer(_) => StatusCode::FORBIDDEN,
            CaseError::Officer(_) | CaseError::Ledger(_) | CaseError::Key(_) => {
                return match e {
                    CaseError::Officer(e) => e.into(),
                    CaseError::Ledger(e) => ApiError::from_ledger(&e),
                    e => ApiError::internal(&e),
                };
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<DiscloseError> for ApiError {
    fn from(e: DiscloseError) -> ApiError {
        match e {
            DiscloseError::Case(e) => e.into(),
            DiscloseError::Exists(_) => ApiError::new(
                StatusCode::CONFLICT,
                "an export of that name exists already; try again in a moment",
            ),
            DiscloseError::Purpose(_) | DiscloseError::NoCspId => {
                ApiError::bad_request(e.to_string())
            }
            DiscloseError::Request(e) => e.into(),
            DiscloseError::TooMany => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            DiscloseError::Database(e) => ApiError::internal(&e),
            DiscloseError::Ledger(e) => ApiError::from_ledger(&e),
            e => ApiError::internal(&e),
        }
    }
}

impl From<crate::compliance::report::ReportError> for ApiError {
    fn from(e: crate::compliance::report::ReportError) -> ApiError {
        use crate::compliance::report::ReportError;
        match e {
            ReportError::Case(e) => e.into(),
            ReportError::Request(e) => e.into(),
            ReportError::Ledger(e) => ApiError::from_ledger(&e),
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> ApiError {
        let status = match &e {
            RequestError::Unknown(_) => StatusCode::NOT_FOUND,
            RequestError::Closed { .. }
            | RequestError::Extended(_)
            | RequestError::TooLate { .. } => StatusCode::CONFLICT,
            RequestError::Ledger(e) => return ApiError::from_ledger(e),
            RequestError::Key(_) => return ApiError::internal(&e),
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<LookupError> for ApiError {
    fn from(e: LookupError) -> ApiError {
        match e {
            LookupError::EmptyWindow | LookupError::Purpose(_) => {
                ApiError::bad_request(e.to_string())
            }
            LookupError::Case(e) => e.into(),
            LookupError::Ledger(e) => ApiError::from_ledger(&e),
            e => ApiError::internal(&e),
        }
    }
}

impl ApiError {
    fn from_ledger(e: &LedgerError) -> ApiError {
        match e {
            LedgerError::NoHold(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            LedgerError::Incomplete | LedgerError::EmptyWindow => {
                ApiError::bad_request(e.to_string())
            }
            LedgerError::Broken { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            LedgerError::Sql { .. } => ApiError::internal(e),
        }
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> ApiError {
        ApiError::from_ledger(&e)
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> ApiError {
        ApiError::internal(&e)
    }
}

impl From<crate::clock::BadTime> for ApiError {
    fn from(e: crate::clock::BadTime) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

// ---------------------------------------------------------------------------------
// Extractors: a JSON body with JSON errors, and the session.
// ---------------------------------------------------------------------------------

/// A JSON body whose rejections (not JSON, wrong fields, too large) answer in the
/// API's error format.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(r) => {
                let status = match &r {
                    JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    _ => StatusCode::BAD_REQUEST,
                };
                let message = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        format!("the request body is larger than {MAX_BODY} bytes")
                    }
                    _ => r.body_text(),
                };
                Err(ApiError::new(status, message))
            }
        }
    }
}

/// A path parameter whose rejection (`/cases/abc`) answers in the API's error format.
pub struct Param<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Param<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Param(v))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

/// The officer behind a live session. Extracting it checks the bearer token and that
/// the officer is still enabled (disabling ends sessions at once); a failure is
/// audited and answered with 401.
#[derive(Clone)]
pub struct Authed {
    pub officer: Officer,
    pub(super) token: String,
    /// Where the session was opened (the API's bearer tokens, the console's cookies).
    pub(super) scope: super::session::Scope,
    /// When the session ends.
    pub expires_at: Micros,
}

pub(super) fn peer(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| refusal_peer(c.0.ip()))
        .unwrap_or_default()
}

/// The peer refusals are counted against (`compliance::refusals`): an IPv4 address,
/// or an IPv6 address's /64, which one host is commonly given whole.
pub(super) fn refusal_peer(ip: std::net::IpAddr) -> String {
    match crate::canonical::canonical_ip(ip) {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{net}/64")
        }
        v4 => v4.to_string(),
    }
}

impl FromRequestParts<Arc<Api>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        let call = format!("{} {route}", parts.method.as_str());
        let from = peer(parts);
        let api = api.clone();
        blocking(move || api.session_officer(Scope::Api, token, &call, &from)).await
    }
}

impl Authed {
    /// Refuses (403, audited like the command line's role check) an officer whose
    /// role is below `needed`.
    pub(super) fn require(
        &self,
        ledger: &mut Ledger,
        needed: Role,
        action: &str,
        now: Micros,
    ) -> Result<(), ApiError> {
        if self.officer.role.allows(needed) {
            return Ok(());
        }
        ledger.audit(
            now,
            &self.officer.name,
            "auth.failure",
            json!({"for": action, "reason": "role"}),
        )?;
        Err(OfficerError::Forbidden {
            needed: needed.as_str(),
        }
        .into())
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such API route; see docs/openapi.json",
    )
}

// ---------------------------------------------------------------------------------
// Session.
// ---------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    officer: String,
    password: String,
    totp: String,
}

async fn login(
    axum::extract::State(api): axum::extract::State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(login): Body<Login>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let who = Credentials {
            name: &login.officer,
            password: &login.password,
            totp: Some(&login.totp),
        };
        let (token, session) = api.log_in(
            Scope::Api,
            None,
            who,
            &refusal_peer(peer.ip()),
            &peer.ip().to_string(),
        )?;
        Ok((
            StatusCode::CREATED,
            Json(json!({
                "token": token,
                "expires_at": rfc3339(session.expires_at),
                "officer": session.officer.name,
                "role": session.officer.role.as_str(),
            })),
        )
            .into_response())
    })
    .await
}

async fn logout(
    axum::extract::State(api): axum::extract::State<Arc<Api>>,
    who: Authed,
) -> Result<StatusCode, ApiError> {
    blocking(move || api.log_out(&who).map(|()| StatusCode::NO_CONTENT)).await
}

type State = axum::extract::State<Arc<Api>>;

// ---------------------------------------------------------------------------------
// Cases.
// ---------------------------------------------------------------------------------

fn case_json(c: &Case) -> Value {
    let d = &c.details;
    json!({
        "id": c.id,
        "request": {
            "country": d.request.country,
            "organisation": d.request.organisation,
            "number": d.request.number,
        },
        "request_id": d.request.to_string(),
        "state": c.state.as_str(),
        "authority": d.authority,
        "legal_basis": d.legal_basis,
        "order_reference": d.order_reference,
        "order_date": d.order_date,
        "deadline": d.deadline,
        "confidential": d.confidential,
        "since": rfc3339(d.since),
        "until": rfc3339(d.until),
        "identifiers": c.criteria_tags.iter()
            .map(|(k, tag)| json!({"kind": k.as_str(), "tag": tag}))
            .collect::<Vec<_>>(),
        "opened_by": c.opened_by,
        "opened_at": rfc3339(c.opened_at),
        "decided_by": c.decided_by,
        "decided_at": c.decided_at.map(rfc3339),
        "decision_note": c.decision_note,
    })
}

async fn list_cases(
    axum::extract::State(api): State,
    who: Authed,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let cases = api.cases(&who)?;
        Ok(Json(
            json!({ "cases": cases.iter().map(case_json).collect::<Vec<_>>() }),
        ))
    })
    .await
}

async fn open_case(
    axum::extract::State(api): State,
    who: Authed,
    Body(form): Body<CaseForm>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let case = api.open_case(&who, &form)?;
        Ok((StatusCode::CREATED, Json(case_json(&case))).into_response())
    })
    .await
}

async fn show_case(
    axum::extract::State(api): State,
    who: Authed,
    Param(id): Param<i64>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || Ok(Json(case_json(&api.case(&who, id)?)))).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Decision {
    #[serde(default)]
    note: String,
}

async fn decide(
    api: Arc<Api>,
    who: Authed,
    id: i64,
    approve: bool,
    note: String,
) -> Result<Json<Value>, ApiError> {
    blocking(move || Ok(Json(case_json(&api.decide(&who, id, approve, &note)?)))).await
}

async fn approve_case(
    axum::extract::State(api): State,
    who: Authed,
    Param(id): Param<i64>,
    Body(d): Body<Decision>,
) -> Result<Json<Value>, ApiError> {
    decide(api, who, id, true, d.note).await
}

async fn reject_case(
    axum::extract::State(api): State,
    who: Authed,
    Param(id): Param<i64>,
    Body(d): Body<Decision>,
) -> Result<Json<Value>, ApiError> {
    decide(api, who, id, false, d.note).await
}

async fn close_case(
    axum::extract::State(api): State,
    who: Authed,
    Param(id): Param<i64>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || Ok(Json(case_json(&api.close_case(&who, id)?)))).await
}

// ---------------------------------------------------------------------------------
// Exports: written to `admin.exports` with manifest and signature, fetched by name.
// ---------------------------------------------------------------------------------

fn exported(e: &Exported) -> Value {
    json!({
        "records": e.records,
        "sha256": e.sha256,
        "export": e.export,
        "manifest": e.manifest,
        "signature": e.signature,
        "download": format!("/api/v1/exports/{}", e.export),
    })
}

/// A password past [`MAX_PASSWORD`].
pub(super) fn too_long() -> ApiError {
    ApiError::bad_request(format!("the password is longer than {MAX_PASSWORD} bytes"))
}

pub(super) fn busy() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "another export is running; retry when it is done",
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscloseForm {
    #[serde(default = "json_format")]
    format: Format,
    /// Why the records are read (every read states one).
    purpose: Purpose,
}

fn json_format() -> Format {
    Format::Json
}

async fn disclose(
    axum::extract::State(api): State,
    who: Authed,
    Param(id): Param<i64>,
    Body(form): Body<DiscloseForm>,
) -> Result<Response, ApiError> {
    let _permit = api.exporting.try_acquire().map_err(|_| busy())?;
    api.settled().await?;
    let api2 = api.clone();
    let v = blocking(move || {
        let mut v = exported(&api2.disclose(&who, form.purpose, id, form.format)?);
        v["case"] = id.into();
        Ok(v)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectForm {
    recipient: Option<String>,
    email: Option<String>,
    /// The subject request the export answers (and closes).
    request: Option<i64>,
    purpose: Purpose,
}

async fn subject_export(
    axum::extract::State(api): State,
    who: Authed,
    Body(form): Body<SubjectForm>,
) -> Result<Response, ApiError> {
    // One subject: a number, an address, or a recorded request's (as on the command
    // line).
    let subject = match (&form.recipient, &form.email, form.request) {
        (Some(n), None, None) => Some(criterion(IdentifierKind::Recipient, n, &api.numbers)?),
        (None, Some(e), None) => Some(criterion(IdentifierKind::Email, e, &api.numbers)?),
        (None, None, Some(_)) => None,
        _ => {
            return Err(ApiError::bad_request(
                "give one of recipient, email or request",
            ));
        }
    };
    let _permit = api.exporting.try_acquire().map_err(|_| busy())?;
    api.settled().await?;
    let api2 = api.clone();
    let v = blocking(move || {
        let mut v =
            exported(&api2.subject_export(&who, form.purpose, subject.as_ref(), form.request)?);
        if let Some(id) = form.request {
            v["request"] = id.into();
        }
        Ok(v)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OffboardForm {
    purpose: Purpose,
}

async fn offboard(
    axum::extract::State(api): State,
    who: Authed,
    Param(name): Param<String>,
    Body(form): Body<OffboardForm>,
) -> Result<Response, ApiError> {
    let _permit = api.exporting.try_acquire().map_err(|_| busy())?;
    api.settled().await?;
    let api2 = api.clone();
    let v = blocking(move || {
        let o = api2.offboard(&who, form.purpose, &name)?;
        Ok(json!({
            "account": o.account,
            "records": o.records,
            "outcomes": o.outcomes,
            "partitions": o.partitions,
            "export": o.export,
            "statement": o.statement,
            "signature": o.signature,
        }))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn download(
    axum::extract::State(api): State,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    who: Authed,
    Param(name): Param<String>,
) -> Result<Response, ApiError> {
    let name2 = name.clone();
    let from = refusal_peer(peer.ip());
    let (file, len) = blocking(move || api.download(&who, &name2, &from)).await?;
    Ok(send_file(tokio::fs::File::from_std(file), len, &name))
}

/// An export file's reply: its type by extension, streamed in 64 KiB reads (an
/// export may be far larger than memory should hold).
pub(super) fn send_file(file: tokio::fs::File, len: u64, name: &str) -> Response {
    let ctype = match Path::new(name).extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        Some("csv") => "text/csv; charset=utf-8",
        Some("xml") => "application/xml",
        _ => "text/plain; charset=utf-8",
    };
    let body =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024));
    (
        [
            (header::CONTENT_TYPE, ctype.to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------
// Queries, reports, audit.
// ---------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryForm {
    kind: IdentifierKind,
    value: String,
    purpose: Purpose,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

async fn query(
    axum::extract::State(api): State,
    who: Authed,
    Body(q): Body<QueryForm>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_QUERY_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_QUERY_LIMIT}"
        )));
    }
    let since = match &q.since {
        Some(s) => crate::clock::parse_time(s, false)?.timestamp_micros(),
        None => 0,
    };
    let until = match &q.until {
        Some(s) => crate::clock::parse_time(s, true)?.timestamp_micros(),
        None => api.now() + 86_400_000_000,
    };
    let c = criterion(q.kind, &q.value, &api.numbers)?;
    blocking(move || {
        let found = api.query(&who, q.purpose, &c, &Window { since, until, limit })?;
        Ok(Json(json!({
            "matches": found.stats.matches,
            "shown": found.found.len(),
            "partitions_searched": found.stats.partitions_searched,
            "partitions_shredded": found.stats.partitions_shredded.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "records": found.found.iter().map(found_json).collect::<Vec<_>>(),
        })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportParams {
    year: i32,
}

async fn report(
    axum::extract::State(api): State,
    who: Authed,
    params: Result<Query<ReportParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|r| ApiError::bad_request(r.body_text()))?;
    blocking(move || {
        let mut ledger = api.ledger()?;
        let today = crate::clock::micros_to_datetime(api.now()).date_naive();
        let report = crate::compliance::report::cases_in_year(&ledger, p.year, today)?;
        ledger.audit(
            api.now(),
            &who.officer.name,
            "report.cases",
            json!({"year": p.year}),
        )?;
        Ok(Json(serde_json::to_value(&report).unwrap_or_default()))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    #[serde(default)]
    after: i64,
    limit: Option<usize>,
}

async fn audit_list(
    axum::extract::State(api): State,
    who: Authed,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let limit = p.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_AUDIT_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_AUDIT_PAGE}"
        )));
    }
    blocking(move || {
        let (entries, _) = api.audit_page(&who, p.after, limit)?;
        Ok(Json(
            json!({ "entries": entries.iter().map(audit_json).collect::<Vec<_>>() }),
        ))
    })
    .await
}

fn audit_json(e: &AuditEntry) -> Value {
    let details: Value = serde_json::from_str(&e.details).unwrap_or(Value::Null);
    json!({"seq": e.seq, "at": rfc3339(e.at), "actor": e.actor, "action": e.action, "details": details})
}

async fn audit_verify(
    axum::extract::State(api): State,
    who: Authed,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let n = api.audit_verify(&who)?;
        Ok(Json(json!({ "intact": true, "entries": n })))
    })
    .await
}

// ---------------------------------------------------------------------------------
// Officers and holds.
// ---------------------------------------------------------------------------------

fn officer_json(o: &Officer) -> Value {
    json!({
        "name": o.name,
        "role": o.role.as_str(),
        "enabled": o.enabled,
        "created_by": o.created_by,
        "created_at": rfc3339(o.created_at),
    })
}

async fn list_officers(
    axum::extract::State(api): State,
    who: Authed,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let officers = api.officers(&who)?;
        Ok(Json(
            json!({ "officers": officers.iter().map(officer_json).collect::<Vec<_>>() }),
        ))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOfficer {
    name: String,
    role: Role,
    password: String,
}

async fn add_officer(
    axum::extract::State(api): State,
    who: Authed,
    Body(new): Body<NewOfficer>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let e = api.add_officer(&who, &new.name, new.role, &new.password)?;
        let mut v = officer_json(&e.officer);
        v["otpauth_uri"] = e.otpauth_uri.into();
        Ok((StatusCode::CREATED, Json(v)).into_response())
    })
    .await
}

async fn disable_officer(
    axum::extract::State(api): State,
    who: Authed,
    Param(name): Param<String>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let officer = api.disable_officer(&who, &name)?;
        Ok(Json(officer.as_ref().map(officer_json).unwrap_or_default()))
    })
    .await
}

fn hold_json(h: &crate::ledger::Hold) -> Value {
    json!({
        "case": h.case,
        "since": rfc3339(h.since),
        "until": rfc3339(h.until),
        "reason": h.reason,
        "placed_by": h.placed_by,
        "placed_at": rfc3339(h.placed_at),
    })
}

/// Every subject request with where it stands today, and how many are overdue (its
/// subject only as kind and tag).
async fn list_subject_requests(
    axum::extract::State(api): State,
    who: Authed,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let (requests, today) = api.subject_requests(&who)?;
        let overdue = requests
            .iter()
            .filter(|r| r.state(today) == RequestState::Overdue)
            .count();
        let rows: Vec<Value> = requests.iter().map(|r| r.view(today)).collect();
        Ok(Json(
            json!({"today": today.to_string(), "overdue": overdue, "requests": rows}),
        ))
    })
    .await
}

async fn list_holds(
    axum::extract::State(api): State,
    who: Authed,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let holds = api.holds(&who)?;
        Ok(Json(
            json!({ "holds": holds.iter().map(hold_json).collect::<Vec<_>>() }),
        ))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewHold {
    case: String,
    since: String,
    until: String,
    reason: String,
}

async fn add_hold(
    axum::extract::State(api): State,
    who: Authed,
    Body(h): Body<NewHold>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let hold = api.add_hold(&who, h.case, &h.since, &h.until, h.reason)?;
        Ok((StatusCode::CREATED, Json(hold_json(&hold))).into_response())
    })
    .await
}

async fn release_hold(
    axum::extract::State(api): State,
    who: Authed,
    Param(case): Param<String>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let n = api.release_hold(&who, &case)?;
        Ok(Json(json!({ "case": case, "released": n })))
    })
    .await
}

/// Deletes files in `admin.exports` last written more than `admin.exports-keep`
/// before `now`, each deletion audited as `export.expired`. `serve` runs it with
/// expiry. Returns the names deleted.
pub fn expire_exports(config: &Config, now: Micros) -> Result<Vec<String>, ApiError> {
    let Some(admin) = &config.admin else {
        return Ok(Vec::new());
    };
    let keep = Micros::try_from(admin.exports_keep.as_micros()).unwrap_or(Micros::MAX);
    let entries = match std::fs::read_dir(&admin.exports) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ApiError::internal(&e)),
    };
    let mut old = Vec::new();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let written = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| Micros::try_from(d.as_micros()).ok());
        if meta.is_file() && written.is_some_and(|w| w.saturating_add(keep) <= now) {
            old.push(entry.path());
        }
    }
    old.sort();
    let mut ledger = Ledger::open_store(&config.store)?;
    let mut removed = Vec::new();
    for path in old {
        std::fs::remove_file(&path).map_err(|e| ApiError::internal(&e))?;
        let name = super::ops::file_name(&path);
        ledger.audit(now, "serve", "export.expired", json!({"file": name}))?;
        removed.push(name);
    }
    Ok(removed)
}
