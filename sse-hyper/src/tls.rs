//! TLS for [`serve_with`](crate::serve_with): rustls, ALPN `h2` and `http/1.1` (so browsers speak
//! HTTP/2, one connection for all of an origin's streams, instead of six HTTP/1.1 connections
//! at most), TLS 1.2 and 1.3.
//!
//! The certificate is reloaded without a restart and without dropping open streams: the server
//! checks its files every [`WATCH_INTERVAL`] and [`Tls::reload`] reads them at once (the hub
//! binary calls it on `SIGHUP`). A handshake after a reload gets the new certificate; open
//! connections keep theirs. A reload that fails (a half-written file, a key that does not match)
//! keeps the certificate in use and says why.
//!
//! Each connection is the server's own stream on rustls' unbuffered API, which holds no buffer while
//! idle: an idle TLS event stream costs rustls' session and little more (see `tls/stream.rs`).
//!
//! With a publisher CA ([`TlsFiles::publish_client_ca`]) the server asks every client for a
//! certificate and accepts one only if that CA signed it; a connection without one is still
//! served (browsers have none), and its requests carry no [`ClientCertificate`], which is what
//! the publish endpoint then requires.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;

mod stream;
pub(crate) use stream::TlsStream;

/// How often the server looks whether the certificate or key file changed.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Where the server's certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFiles {
    /// The certificate chain, PEM: the server's certificate first, then its intermediates.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 RSA or SEC1 EC; RSA, ECDSA P-256/P-384 or Ed25519).
    pub key: PathBuf,
    /// CA certificates, PEM, whose client certificates may publish (see the [module docs](self)).
    pub publish_client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The certificate chain at `cert` and its key at `key`.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsFiles {
        TlsFiles {
            cert: cert.into(),
            key: key.into(),
            publish_client_ca: None,
        }
    }

    /// Publishing needs a client certificate signed by a CA in `ca` (PEM).
    pub fn publish_client_ca(mut self, ca: impl Into<PathBuf>) -> TlsFiles {
        self.publish_client_ca = Some(ca.into());
        self
    }
}

/// Why a certificate, key or CA could not be used; each names its file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file holds no PEM item of the kind needed, or one that does not parse.
    #[error("{}: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The key is of a kind rustls cannot sign with.
    #[error("{}: unsupported private key: {message}", path.display())]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// rustls' reason.
        message: String,
    },
    /// The key is not the certificate's.
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The server's certificate has expired (or is not valid yet).
    #[error("the certificate in {} is valid only from {not_before} to {not_after} (UTC)", path.display())]
    NotValidNow {
        /// The certificate file.
        path: PathBuf,
        /// Its `notBefore`.
        not_before: String,
        /// Its `notAfter`.
        not_after: String,
    },
    /// The publisher CA holds no usable certificate.
    #[error("{}: no usable CA certificate: {message}", path.display())]
    ClientCa {
        /// The CA file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// A request came on a TLS connection whose client presented a certificate that the publisher
/// CA signed (see [`TlsFiles::publish_client_ca`]); set as a request extension by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCertificate;

/// Why a TLS handshake failed, as counted in `sse_tls_handshake_failures_total{reason}` (the
/// order is that of the router's counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// No handshake within the first-request timeout.
    Timeout,
    /// The client closed or reset the connection.
    Closed,
    /// A client certificate the publisher CA did not sign, or one that is invalid.
    ClientCertificate,
    /// Anything else TLS refused: not TLS at all, no common version or cipher suite, an alert.
    Protocol,
}

impl HandshakeFailure {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::ClientCertificate => "client_certificate",
            HandshakeFailure::Protocol => "protocol",
        }
    }

    fn of(error: &io::Error) -> HandshakeFailure {
        if let Some(tls) = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return match tls {
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                    HandshakeFailure::ClientCertificate
                }
                _ => HandshakeFailure::Protocol,
            };
        }
        match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => HandshakeFailure::Closed,
            _ => HandshakeFailure::Protocol,
        }
    }
}

/// A server's TLS: its configuration and the certificate it serves, reloadable (see the
/// [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ServerConfig>,
    certificate: Arc<Current>,
    files: Arc<TlsFiles>,
    publishers_verified: bool,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

/// The certificate handed to each handshake, and the files' state it was read from.
#[derive(Debug)]
struct Current {
    key: RwLock<Arc<CertifiedKey>>,
    read_from: Mutex<Stamp>,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.key
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// What the certificate and key files looked like (modified time and length of each), to tell
/// when they change.
type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(files: &TlsFiles) -> Stamp {
    [&files.cert, &files.key].map(|path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    })
}

impl Tls {
    /// Reads the certificate, key and publisher CA of `files`; an error names the file at fault.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let read_from = stamp(&files);
        let key = certified_key(&files, &provider)?;
        let certificate = Arc::new(Current {
            key: RwLock::new(Arc::new(key)),
            read_from: Mutex::new(read_from),
        });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pem {
                path: files.cert.clone(),
                message: e.to_string(),
            })?;
        let builder = match &files.publish_client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = client_roots(ca)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| TlsError::ClientCa {
                            path: ca.clone(),
                            message: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            certificate,
            publishers_verified: files.publish_client_ca.is_some(),
            files: Arc::new(files),
        })
    }

    /// The files this was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether publishing needs a client certificate (a publisher CA is set).
    pub fn requires_publisher_certificates(&self) -> bool {
        self.publishers_verified
    }

    /// Reads the certificate and key again and serves them to new connections; on an error the
    /// certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let read_from = stamp(&self.files);
        let provider = rustls::crypto::ring::default_provider();
        let key = certified_key(&self.files, &provider);
        // Whatever came of it, this state of the files was tried: a broken file is not read
        // again every interval, only once it changes again.
        *self
            .certificate
            .read_from
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = read_from;
        *self
            .certificate
            .key
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(key?);
        Ok(())
    }

    /// Reloads when the files changed since they were last read, and logs the outcome.
    pub(crate) fn reload_if_changed(&self) {
        let now = stamp(&self.files);
        let before = *self
            .certificate
            .read_from
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if now == before {
            return;
        }
        match self.reload() {
            Ok(()) => tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded"),
            Err(error) => {
                tracing::warn!(%error, "TLS certificate not reloaded; the one in use stays");
            }
        }
    }

    /// The TLS handshake on `socket`, within `timeout`; the connection and, when its client
    /// presented one the publisher CA signed, the [`ClientCertificate`] mark.
    pub(crate) async fn accept(
        &self,
        socket: TcpStream,
        timeout: Duration,
    ) -> Result<(TlsStream<TcpStream>, Option<ClientCertificate>), HandshakeFailure> {
        let stream = tokio::time::timeout(timeout, TlsStream::accept(socket, self.config.clone()))
            .await
            .map_err(|_| HandshakeFailure::Timeout)?
            .map_err(|error| HandshakeFailure::of(&error))?;
        let presented = stream.has_peer_certificate();
        Ok((stream, presented.then_some(ClientCertificate)))
    }
}

/// The chain and key of `files`, checked: parsed, matching, and valid now.
fn certified_key(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_pem_all::<CertificateDer<'static>>(&files.cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_error(&files.key, e))?;
    let signer =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::UnsupportedKey {
                path: files.key.clone(),
                message: e.to_string(),
            })?;
    check_validity(&files.cert, &chain[0])?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        Err(other) => Err(TlsError::Pem {
            path: files.cert.clone(),
            message: other.to_string(),
        }),
    }
}

/// Every item of `kind` in the PEM file at `path`; at least one.
fn read_pem_all<T: PemObject>(path: &Path, kind: &str) -> Result<Vec<T>, TlsError> {
    let items = T::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if items.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            message: format!("no PEM {kind} in the file"),
        });
    }
    Ok(items)
}

fn pem_error(path: &Path, error: rustls::pki_types::pem::Error) -> TlsError {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(source) => TlsError::Read {
            path: path.to_owned(),
            source,
        },
        Error::NoItemsFound => TlsError::Pem {
            path: path.to_owned(),
            message: "no PEM item of the needed kind in the file".to_owned(),
        },
        other => TlsError::Pem {
            path: path.to_owned(),
            message: other.to_string(),
        },
    }
}

/// Refuses a server certificate outside its validity period: every browser would refuse it.
fn check_validity(path: &Path, certificate: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(certificate).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: format!("the first certificate does not parse: {e}"),
        })?;
    let validity = parsed.validity();
    if validity.is_valid() {
        return Ok(());
    }
    Err(TlsError::NotValidNow {
        path: path.to_owned(),
        not_before: validity.not_before.to_string(),
        not_after: validity.not_after.to_string(),
    })
}

/// The publisher CA's certificates as a root store.
fn client_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in read_pem_all::<CertificateDer<'static>>(path, "CA certificate")? {
        roots.add(ca).map_err(|e| TlsError::ClientCa {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}
