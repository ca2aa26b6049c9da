//! TLS for both servers and for the edge's link to the locator, written once (rustls).
//!
//! - [`ServerTls`]: the certificate and key a server presents (`--tls-cert`/`--tls-key`).
//!   The serve loop asks it for the current configuration on every accepted connection;
//!   it compares the two files' modification times, sizes and inodes with what it loaded
//!   (two `stat` calls, no reading) and loads them again when either changed, so a renewed
//!   certificate (certbot, cert-manager) is served from the next connection on without a
//!   restart. A pair that does not load (half written, key of another certificate) is
//!   logged and the previous one is kept; it is tried again when the files change again.
//! - [`client_config`]: whom the edge trusts when it dials `https://`/`wss://` locators.
//!   The roots are Mozilla's, compiled in (`webpki-roots`), not the system store
//!   (`rustls-native-certs`): the edge image is distroless and a bare host may lack or
//!   carry a stale `ca-certificates`, and the same binary should trust the same roots on
//!   every machine. A locator behind a private CA is reached with `--ca-file`, which
//!   *replaces* the public roots: an edge told to trust its operator's CA trusts nothing
//!   else for the link, so a public certificate for the same name cannot stand in.
//!
//! The cryptography is rustls' `ring` provider, named explicitly at each builder: the
//! process installs no global provider, and the workspace builds ring already (WebRTC's
//! DTLS), where `aws-lc-rs` would add a C and cmake toolchain to every build.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The rustls the servers and the link are built with (to name its errors).
pub use rustls;
pub use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{RootCertStore, ServerConfig};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS client configuration of the edge's link: Mozilla's roots, or only the
/// certificates of `ca_file` (PEM, one or more) when given. The error names the file and
/// what is wrong with it; the caller adds the flag.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let roots = match ca_file {
        None => RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certificates = read_certificates(path)?;
            let mut roots = RootCertStore::empty();
            for (index, certificate) in certificates.into_iter().enumerate() {
                roots.add(certificate).map_err(|e| {
                    format!(
                        "{}: certificate {} is not a usable CA certificate: {e}",
                        path.display(),
                        index + 1
                    )
                })?;
            }
            roots
        }
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Reads every certificate of a PEM file; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text =
        std::fs::read(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{}: holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
            path.display()
        ));
    }
    Ok(certificates)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text =
        std::fs::read(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        format!(
            "{}: holds no PEM private key (PKCS#8, RSA or EC): {e}",
            path.display()
        )
    })
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(Stamp {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(&metadata),
        })
    }
}

/// A server's certificate and key, reloaded when their files change (see the module
/// documentation).
#[derive(Debug)]
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    config: Arc<ServerConfig>,
    /// The files' stamps at the last attempt to load them, successful or not: a bad pair
    /// is logged once, not on every connection.
    tried: (Option<Stamp>, Option<Stamp>),
}

impl ServerTls {
    /// Loads the pair; the error names the file and what is wrong (the caller adds the
    /// flags).
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, String> {
        let tried = (Stamp::of(cert), Stamp::of(key));
        let config = server_config(cert, key)?;
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            state: Mutex::new(Loaded { config, tried }),
        })
    }

    /// The configuration to serve the next connection with: reloaded first if either
    /// file changed since the last attempt.
    pub fn current(&self) -> Arc<ServerConfig> {
        let stamps = (Stamp::of(&self.cert), Stamp::of(&self.key));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if stamps != state.tried {
            state.tried = stamps;
            match server_config(&self.cert, &self.key) {
                Ok(config) => {
                    state.config = config;
                    tracing::info!(cert = %self.cert.display(), key = %self.key.display(), "TLS certificate reloaded");
                }
                Err(error) => tracing::error!(
                    "TLS certificate NOT reloaded, serving the previous one until the files change again: {error}"
                ),
            }
        }
        state.config.clone()
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = read_certificates(cert)?;
    let key_der = read_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS server setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!(
                "{} and {}: the key does not go with the certificate, or is not usable: {e}",
                cert.display(),
                key.display()
            )
        })?;
    // Only HTTP/1.1 is served (the loop's header-read timeout is hyper's HTTP/1 one).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `--tls-cert` and `--tls-key` as both servers take them: both (TLS) or neither (plain
/// HTTP, behind a TLS-terminating proxy or on a private network). The error names the
/// flag and the file.
pub fn from_flags(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<ServerTls>, String> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => ServerTls::load(cert, key)
            .map(Some)
            .map_err(|e| format!("--tls-cert/--tls-key: {e}")),
        (Some(_), None) => Err(
            "--tls-cert needs --tls-key: give the certificate chain and its private key (PEM), or neither to serve plain HTTP".into(),
        ),
        (None, Some(_)) => Err(
            "--tls-key needs --tls-cert: give the certificate chain and its private key (PEM), or neither to serve plain HTTP".into(),
        ),
    }
}
