//! TLS for the stream front: the server's certificate chain and key, read from PEM files, and a
//! handle that swaps them for new ones while connections keep flowing.
//!
//! rustls on its ring provider, TLS 1.3 and 1.2: 1.2 stays because many deployed desk phones
//! speak nothing newer, and rustls offers neither 1.1 and older nor any non-AEAD cipher suite.
//! A reload builds the new server config completely before it is swapped in, so a missing or
//! broken file leaves the running certificate in place; connections already open keep theirs.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use tokio_rustls::TlsAcceptor;

/// Where the certificate chain and its private key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server certificate first, then any intermediates.
    pub certificate: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate or key could not be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read (missing, no permission).
    #[error("cannot read {kind} file {path}: {source}", path = .path.display())]
    Unreadable {
        /// "certificate" or "key".
        kind: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or a broken one.
    #[error("no PEM certificate in {path}", path = .0.display())]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key, or a broken one.
    #[error("no PEM private key in {path}", path = .0.display())]
    NoKey(PathBuf),
    /// rustls refused the pair (the key does not belong to the certificate, or an unsupported
    /// key type).
    #[error("certificate {certificate} and key {key} cannot be used together: {source}",
        certificate = .certificate.display(), key = .key.display())]
    Rejected {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
}

/// The server certificate in use, shared by the TLS listeners, and the way to replace it.
/// Clones share one certificate: reloading through any of them changes it for all.
#[derive(Clone)]
pub struct TlsReload {
    current: Arc<RwLock<Current>>,
}

struct Current {
    files: TlsFiles,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReload")
            .field("files", &self.files())
            .finish_non_exhaustive()
    }
}

impl TlsReload {
    /// Reads and checks `files`; an error names the file that is missing, unreadable or wrong.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let acceptor = acceptor(&files)?;
        Ok(TlsReload {
            current: Arc::new(RwLock::new(Current { files, acceptor })),
        })
    }

    /// Reads the same files again (after the operator renewed the certificate). On error the
    /// certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.reload_from(self.files())
    }

    /// Switches to `files` (a reloaded config may name others). On error nothing changes.
    pub fn reload_from(&self, files: TlsFiles) -> Result<(), TlsError> {
        let acceptor = acceptor(&files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Current { files, acceptor };
        Ok(())
    }

    /// The files the certificate in use came from.
    pub fn files(&self) -> TlsFiles {
        self.read().files.clone()
    }

    /// What new connections are handshaken with.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.read().acceptor.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    Ok(TlsAcceptor::from(Arc::new(server_config(files)?)))
}

/// A rustls server config for `files`: ring provider, TLS 1.3 and 1.2, no client certificates.
fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = read(&files.certificate, "certificate")?;
    let certificates = CertificateDer::pem_slice_iter(&chain)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|certs| !certs.is_empty())
        .ok_or_else(|| TlsError::NoCertificate(files.certificate.clone()))?;
    let key_pem = read(&files.key, "key")?;
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey(files.key.clone()))?;
    let rejected = |source| TlsError::Rejected {
        certificate: files.certificate.clone(),
        key: files.key.clone(),
        source,
    };
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(rejected)
}

fn read(path: &Path, kind: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        kind,
        path: path.to_owned(),
        source,
    })
}
