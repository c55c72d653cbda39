//! Serving certificate from PEM files (a mounted Secret), reloaded without a restart: a
//! [`CertReloader`] is the rustls certificate resolver; [`CertReloader::reload_if_changed`]
//! (called periodically) swaps in the new pair when the files changed and parse. A pair that does
//! not parse is logged and the old one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn file_err(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Loads a certificate chain and its private key.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
    let signing = any_supported_type(&key_der).map_err(|e| file_err(key, e.to_string()))?;
    Ok(CertifiedKey::new(chain, signing))
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The current certificate, replaceable at run time.
#[derive(Debug)]
pub struct CertReloader {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>, Option<SystemTime>)>,
}

impl CertReloader {
    /// Loads the pair now (an error here is fatal for the caller).
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Arc<Self>, TlsError> {
        let ck = load(&cert, &key)?;
        let stamps = (mtime(&cert), mtime(&key));
        Ok(Arc::new(Self {
            current: RwLock::new((Arc::new(ck), stamps.0, stamps.1)),
            cert,
            key,
        }))
    }

    /// Reloads when either file's modification time changed. Returns whether a new pair was
    /// installed; a pair that fails to load is reported and the old one kept.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamps = (mtime(&self.cert), mtime(&self.key));
        {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            if (cur.1, cur.2) == stamps {
                return Ok(false);
            }
        }
        let ck = load(&self.cert, &self.key)?;
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        *cur = (Arc::new(ck), stamps.0, stamps.1);
        Ok(true)
    }

    /// A rustls server config resolving through this reloader.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
        )
    }
}
