//! TLS for listeners: certificate chain and key from PEM files, rustls with the ring
//! provider. Loaded at start-up so that a bad file stops `serve` with a clear message.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {message}")]
    Certs { path: PathBuf, message: String },
    #[error("no certificate in {path}")]
    NoCerts { path: PathBuf },
    #[error("cannot read private key from {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
    #[error("{0}")]
    Invalid(&'static str),
}

pub fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certs {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCerts {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A server config for HTTP listeners (ALPN `http/1.1`).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_alpn(cert, key, &[b"http/1.1"])
}

/// A server config offering `alpn` (none for SMTP, whose clients send none).
pub fn server_config_alpn(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        message: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client config trusting the CA certificates in `ca_file` when given, else the web
/// PKI roots: how relaylog checks its upstreams.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    // A private CA, when named, is the only one trusted: the public roots would let
    // any publicly certified name stand in for the upstream.
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(ca) => {
            for cert in load_certs(ca)? {
                roots.add(cert)?;
            }
        }
        None => roots.roots = webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
    let config = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS connector for an upstream at `host`, checked against `ca_file` (see
/// [`client_config`]), with the server name it must present.
pub fn upstream_connector(
    host: &str,
    ca_file: Option<&Path>,
) -> Result<
    (
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    ),
    TlsError,
> {
    let config = client_config(ca_file)?;
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| TlsError::Invalid("upstream host is not a valid TLS server name"))?;
    Ok((tokio_rustls::TlsConnector::from(config), name))
}
