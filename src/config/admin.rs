//! `[admin]`: the admin listener, its TLS and the compliance API's sessions and exports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, TlsFiles, invalid, parse_duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAdmin {
    pub listen: String,
    /// TLS for the admin listener. The compliance API is served only with it.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How long an officer's API session lasts after login (not extended by use).
    #[serde(default = "d_session_ttl")]
    pub session_ttl: String,
    /// Where API disclosures, subject exports and offboarding files are written.
    /// Defaults to `exports` beside the ledger.
    pub exports: Option<PathBuf>,
    /// How long files in `exports` are kept before `serve` deletes them: they are
    /// copies of traffic data, and must not outlive their purpose.
    #[serde(default = "d_exports_keep")]
    pub exports_keep: String,
}

fn d_session_ttl() -> String {
    "15m".into()
}

fn d_exports_keep() -> String {
    "30days".into()
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// With TLS, the admin listener also serves the compliance API under `/api/v1`.
    pub tls: Option<TlsFiles>,
    pub session_ttl: Duration,
    pub exports: PathBuf,
    pub exports_keep: Duration,
}

/// Bounds of `admin.session-ttl`: short enough that a session stands for a recent
/// second factor, long enough to work a case.
pub const SESSION_TTL_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(8 * 3600));

pub(super) fn validate_admin(a: RawAdmin, ledger: &Path) -> Result<AdminConfig, ConfigError> {
    let listen = a.listen.parse().map_err(|_| {
        invalid(
            "admin.listen",
            format!("`{}` is not an address such as 127.0.0.1:13090", a.listen),
        )
    })?;
    let tls = match (a.tls_cert, a.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "admin.tls-cert",
                "tls-cert and tls-key go together",
            ));
        }
    };
    let session_ttl = parse_duration("admin.session-ttl", &a.session_ttl)?;
    let (min, max) = SESSION_TTL_BOUNDS;
    if !(min..=max).contains(&session_ttl) {
        return Err(invalid(
            "admin.session-ttl",
            format!("`{}` is outside 1m..8h", a.session_ttl),
        ));
    }
    let exports_keep = parse_duration("admin.exports-keep", &a.exports_keep)?;
    if !(Duration::from_secs(3600)..=Duration::from_secs(400 * 86_400)).contains(&exports_keep) {
        return Err(invalid(
            "admin.exports-keep",
            format!("`{}` is outside 1h..400days", a.exports_keep),
        ));
    }
    let exports = a.exports.unwrap_or_else(|| {
        ledger
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("exports")
    });
    Ok(AdminConfig {
        listen,
        tls,
        session_ttl,
        exports,
        exports_keep,
    })
}
