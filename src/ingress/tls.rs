//! TLS for listeners: certificate chain and key from PEM files, rustls with the ring
//! provider. Loaded at start-up so that a bad file stops `serve` with a clear message,
//! and again on a reload ([`Certificate::reload`]), keeping the old pair when the new
//! one is bad.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
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
    with_certificate(&Certificate::load(cert, key)?, alpn)
}

/// A server config presenting whatever `certificate` holds at each handshake.
pub fn with_certificate(
    certificate: &Arc<Certificate>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A listener's certificate chain and key, read from their PEM files at start and
/// again at each [`Certificate::reload`]: handshakes from then on present the new
/// pair, connections already open keep the session they have.
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

/// The files, not the key.
impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificate>, TlsError> {
        Ok(Arc::new(Certificate {
            current: RwLock::new(Arc::new(Self::read(cert, key)?)),
            cert: cert.to_owned(),
            key: key.to_owned(),
        }))
    }

    /// Reads the files again, without presenting what they hold yet ([`Self::put`]
    /// does): a file missing or not PEM, a key that is not the certificate's, is an
    /// error, and the pair in use stays. (A chain file cut short after a whole
    /// certificate still reads: replace the files by renaming, not by writing over.)
    pub fn read_again(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        Ok(Arc::new(Self::read(&self.cert, &self.key)?))
    }

    /// Presents `pair` (from [`Self::read_again`]) from the next handshake on.
    pub fn put(&self, pair: Arc<CertifiedKey>) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = pair;
    }

    /// The end-entity certificate in use (DER).
    pub fn end_entity(&self) -> CertificateDer<'static> {
        self.now().cert[0].clone()
    }

    fn now(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn read(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
        let certs = load_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
            path: key.to_owned(),
            message: e.to_string(),
        })?;
        Ok(CertifiedKey::from_der(certs, key, &ring_provider())?)
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.now())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_that_does_not_load_keeps_the_pair_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let pair = || rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (a, b) = (pair(), pair());
        let write = |c: &rcgen::CertifiedKey<rcgen::KeyPair>,
                     k: &rcgen::CertifiedKey<rcgen::KeyPair>| {
            std::fs::write(&cert, c.cert.pem()).unwrap();
            std::fs::write(&key, k.signing_key.serialize_pem()).unwrap();
        };
        write(&a, &a);
        let certificate = Certificate::load(&cert, &key).unwrap();
        assert_eq!(certificate.end_entity().as_ref(), a.cert.der().as_ref());
        // b's certificate with a's key; then a certificate file that is not PEM.
        write(&b, &a);
        assert!(matches!(certificate.read_again(), Err(TlsError::Config(_))));
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
        assert!(certificate.read_again().is_err());
        assert_eq!(certificate.end_entity().as_ref(), a.cert.der().as_ref());
        write(&b, &b);
        certificate.put(certificate.read_again().unwrap());
        assert_eq!(certificate.end_entity().as_ref(), b.cert.der().as_ref());
    }
}
