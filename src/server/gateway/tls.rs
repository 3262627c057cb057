//! The gateway's HTTPS: a certificate from PEM files (reloaded when they change, for a certbot renewal) or
//! one the server makes (`certificate.rs`). New connections take the current certificate; connections
//! already open keep theirs, so a renewal drops nobody.

use super::certificate;
use crate::config::GatewayTlsConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

/// How often configured certificate files are looked at for a change.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Why HTTPS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A configured file could not be read.
    #[error("gateway.tls: cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A configured file holds no PEM item of the kind it must.
    #[error("gateway.tls: {} holds no {what} in PEM ({detail})", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
        /// The parser's words.
        detail: String,
    },
    /// The key is of a kind rustls cannot sign with, or is not the certificate's.
    #[error("gateway.tls: the key in {} does not serve the certificate: {detail}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// rustls's words.
        detail: String,
    },
    /// Making a certificate failed.
    #[error("gateway.tls: cannot make a certificate: {0}")]
    Make(rcgen::Error),
    /// The state folder could not be written.
    #[error("gateway.tls: cannot keep the certificate in {}: {source}", dir.display())]
    State {
        /// The folder.
        dir: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Where the served certificate comes from.
#[derive(Debug, Clone)]
enum Origin {
    /// Configured files, looked at for changes.
    Files { cert: PathBuf, key: PathBuf },
    /// Made by the server; `kept` is the folder it lives in, if any.
    Made { kept: Option<PathBuf> },
}

/// The certificate new connections get; swapped whole on a reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner)))
    }
}

/// HTTPS for the gateway: the acceptor, and what pages and the log are told of the certificate.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    current: Arc<Current>,
    origin: Origin,
}

impl Tls {
    /// Loads the configured files, or the kept certificate, or makes one for the names the gateway is
    /// reached at (`listen` decides which addresses).
    pub fn setup(config: &GatewayTlsConfig, listen: IpAddr) -> Result<Self, TlsError> {
        let (key, origin) = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => (load_files(cert, key)?, Origin::Files { cert: cert.clone(), key: key.clone() }),
            _ => {
                let kept = config
                    .state_dir
                    .clone()
                    .or_else(|| certificate::default_state_dir(|name| std::env::var(name).ok()));
                let wanted = certificate::wanted_names(
                    &config.names,
                    certificate::host_name().as_deref(),
                    listen,
                    &certificate::machine_addresses(),
                );
                let (pem, made) = match certificate::load_or_make(kept.as_deref(), &wanted, SystemTime::now()) {
                    Ok(found) => found,
                    Err(e @ TlsError::State { .. }) => {
                        // A read-only home (a locked-down service) still gets HTTPS, only not a lasting one.
                        tracing::warn!(error = %e, "gateway: browsers will have to accept the certificate again after a restart");
                        certificate::load_or_make(None, &wanted, SystemTime::now())?
                    }
                    Err(e) => return Err(e),
                };
                let path = kept.clone().unwrap_or_default();
                let key = certified(pem.cert.as_bytes(), pem.key.as_bytes(), &path, &path)?;
                if made {
                    tracing::info!(names = ?wanted, "gateway: made a self-signed certificate");
                }
                (key, Origin::Made { kept })
            }
        };
        let current = Arc::new(Current(RwLock::new(Arc::new(key))));
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = Self { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)), current, origin };
        tls.log_certificate("serving");
        Ok(tls)
    }

    /// The acceptor for a connection that opened with a TLS handshake.
    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// The SHA-256 fingerprint of the certificate served now, as browsers show it (`AB:CD:...`).
    pub fn fingerprint(&self) -> String {
        let key = Arc::clone(&self.current.0.read().unwrap_or_else(PoisonError::into_inner));
        key.cert.first().map(|leaf| fingerprint(leaf)).unwrap_or_default()
    }

    fn log_certificate(&self, what: &str) {
        let fingerprint = self.fingerprint();
        match &self.origin {
            Origin::Files { cert, .. } => {
                tracing::info!(file = %cert.display(), %fingerprint, "gateway: HTTPS {what} the certificate")
            }
            Origin::Made { kept } => tracing::info!(
                kept = %kept.as_deref().map_or("nowhere (made anew at each start)".into(), |d| d.display().to_string()),
                %fingerprint,
                "gateway: HTTPS {what} its own self-signed certificate; check this fingerprint where the browser shows the certificate"
            ),
        }
    }

    /// Looks at configured files every few seconds and serves them anew when they changed and still make a
    /// certificate; a half-written or bad pair is logged and the one in service kept. Returns at once for a
    /// made certificate.
    pub async fn watch(self) {
        let Origin::Files { cert, key } = self.origin.clone() else { return };
        let mut seen = stamp(&cert, &key);
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            let now = stamp(&cert, &key);
            if now == seen {
                continue;
            }
            match load_files(&cert, &key) {
                Ok(fresh) => {
                    *self.current.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
                    seen = now;
                    self.log_certificate("now serves");
                }
                Err(e) => {
                    // Not marked seen: certbot may still be writing; the next look tries again.
                    tracing::warn!(error = %e, "gateway: the certificate files changed but do not load; still serving the previous certificate");
                }
            }
        }
    }
}

/// What tells that a file changed: its modification time and size, through symlinks (certbot's `live/`).
type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    [cert, key].map(|p| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())))
}

fn load_files(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source });
    certified(&read(cert)?, &read(key)?, cert, key)
}

/// A certificate chain and its key from PEM bytes, checked to belong together.
fn certified(cert_pem: &[u8], key_pem: &[u8], cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let pem_error = |path: &Path, what, detail: String| TlsError::Pem { path: path.to_path_buf(), what, detail };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, "certificate", e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(cert_path, "certificate", "no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_error(key_path, "private key", e.to_string()))?;
    let provider =
        CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| TlsError::Key { path: key_path.to_path_buf(), detail: e.to_string() })
}

/// SHA-256 of a certificate's DER, in colon-separated upper-case hex.
pub fn fingerprint(cert: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> certificate::Pem {
        let names = ["localhost".to_string()].into();
        certificate::make(&names, SystemTime::now()).unwrap().0
    }

    #[test]
    fn a_pair_loads_and_a_mismatched_or_empty_one_is_named() {
        let (a, b) = (pair(), pair());
        let p = Path::new("x.pem");
        assert!(certified(a.cert.as_bytes(), a.key.as_bytes(), p, p).is_ok());
        let err = certified(a.cert.as_bytes(), b.key.as_bytes(), p, Path::new("k.pem")).unwrap_err().to_string();
        assert!(err.contains("k.pem") && err.contains("does not serve"), "{err}");
        let err = certified(b"", a.key.as_bytes(), Path::new("c.pem"), p).unwrap_err().to_string();
        assert!(err.contains("c.pem holds no certificate"), "{err}");
        let err = certified(a.cert.as_bytes(), a.cert.as_bytes(), p, Path::new("k.pem")).unwrap_err().to_string();
        assert!(err.contains("k.pem holds no private key"), "{err}");
    }

    #[test]
    fn the_fingerprint_is_colon_hex_of_sha256() {
        let f = fingerprint(b"abc");
        assert_eq!(f.len(), 32 * 3 - 1);
        assert!(f.starts_with("BA:78:16:BF:8F:01:CF:EA"), "{f}");
    }
}
