//! TLS in front of the HTTP/1.1 server driver (relay only): loading the
//! certificate, key and optional client-CA files into a rustls server config,
//! and an accept loop that handshakes each connection before serving it.

use std::fmt;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use async_io::{Async, Timer};
use futures_rustls::TlsAcceptor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use smol::LocalExecutor;

use crate::net::http_server::{
    reject_connection, run_server, serve_connection, Admission, Handler, Limits, Socket, TcpAccept,
};
use crate::ops::shutdown::Shutdown;

/// Whether clients must present a certificate, and which CA file vouches for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates are asked for.
    Off,
    /// A client may present a certificate; if it does, it must chain to the CA file.
    Optional(PathBuf),
    /// The handshake fails unless the client presents a certificate chaining to the CA file.
    Required(PathBuf),
}

/// Why the TLS configuration could not be built. Every variant names the file.
#[derive(Debug)]
pub enum TlsSetupError {
    /// A file could not be read or holds no valid PEM.
    Read {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    /// The file holds no item of the expected kind.
    Missing { path: PathBuf, what: &'static str },
    /// A CA certificate was not usable as a trust anchor.
    BadCa { path: PathBuf, reason: String },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    Config { reason: String },
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSetupError::Read { path, what, reason } => {
                write!(f, "cannot read {what} from {}: {reason}", path.display())
            }
            TlsSetupError::Missing { path, what } => {
                write!(f, "no {what} found in {}", path.display())
            }
            TlsSetupError::BadCa { path, reason } => {
                write!(f, "unusable client CA in {}: {reason}", path.display())
            }
            TlsSetupError::Config { reason } => write!(f, "TLS configuration rejected: {reason}"),
        }
    }
}

impl std::error::Error for TlsSetupError {}

fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let read_err = |e: rustls::pki_types::pem::Error| TlsSetupError::Read {
        path: path.to_owned(),
        what,
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(TlsSetupError::Missing {
            path: path.to_owned(),
            what,
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let what = "a private key";
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsSetupError::Missing {
            path: path.to_owned(),
            what,
        },
        // The error text never carries key material, only what went wrong.
        e => TlsSetupError::Read {
            path: path.to_owned(),
            what,
            reason: e.to_string(),
        },
    })
}

/// Builds the rustls server config (ring provider, TLS 1.2 and 1.3, ALPN
/// `http/1.1`) from PEM files: the certificate chain (leaf first), its private
/// key (PKCS#8, PKCS#1 or SEC1), and the client-certificate policy.
pub fn server_config(
    cert_chain: &Path,
    private_key: &Path,
    client_auth: &ClientAuth,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let certs = load_certs(cert_chain, "a certificate")?;
    let key = load_key(private_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_err = |e: rustls::Error| TlsSetupError::Config {
        reason: e.to_string(),
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?;
    let builder = match client_auth {
        ClientAuth::Off => builder.with_no_client_auth(),
        ClientAuth::Optional(ca) | ClientAuth::Required(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca, "a CA certificate")? {
                roots.add(cert).map_err(|e| TlsSetupError::BadCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if matches!(client_auth, ClientAuth::Optional(_)) {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| TlsSetupError::BadCa {
                path: ca.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(config_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A refused client certificate is a deployment problem the operator must see
/// (an agent or connector that will never get in); other failures (scanners,
/// plain HTTP on the TLS port, clients that hang up) stay at debug. Warnings
/// are limited to one per second so a hostile peer cannot flood the log.
fn log_handshake_failure(peer: Option<SocketAddr>, e: &std::io::Error) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_WARNED_SECOND: AtomicU64 = AtomicU64::new(0);
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let certificate = matches!(
        rustls_error,
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    );
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if certificate && LAST_WARNED_SECOND.swap(second, Ordering::Relaxed) != second {
        log::warn!("TLS handshake with {peer:?} refused: client certificate: {e}");
    } else {
        log::debug!("TLS handshake with {peer:?} failed: {e}");
    }
}

/// [`serve_tcp`](crate::net::http_server::serve_tcp) behind TLS. The handshake
/// must complete within `limits.head_timeout`; a failed one is logged (see
/// [`log_handshake_failure`]) and the connection closed. `Request::client_cert` carries the DER of the
/// client's leaf certificate when it presented one (verified against the CA).
/// Over the connection cap, the handshake is still done so the 503 is readable.
pub async fn serve_tls(
    listener: Async<TcpListener>,
    tls: Arc<ServerConfig>,
    handler: Rc<dyn Handler>,
    limits: Limits,
    ex: Rc<LocalExecutor<'static>>,
    shutdown: Shutdown,
) {
    let acceptor = TlsAcceptor::from(tls);
    let conn_shutdown = shutdown.clone();
    let connect = move |stream: Async<TcpStream>, peer: Option<SocketAddr>, admission| {
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let shutdown = conn_shutdown.clone();
        let fut: Pin<Box<dyn Future<Output = ()>>> = Box::pin(async move {
            if let Err(e) = stream.get_ref().set_nodelay(true) {
                log::debug!("set_nodelay failed: {e}");
            }
            let handshake = smol::future::or(
                async { Some(acceptor.accept(Socket::new(stream)).await) },
                async {
                    Timer::after(limits.head_timeout).await;
                    None
                },
            )
            .await;
            let tls = match handshake {
                Some(Ok(tls)) => tls,
                Some(Err(e)) => {
                    log_handshake_failure(peer, &e);
                    return;
                }
                None => {
                    log::debug!("TLS handshake with {peer:?} timed out");
                    return;
                }
            };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| leaf.as_ref().to_vec());
            match admission {
                Admission::Serve => {
                    serve_connection(tls, peer, client_cert, handler, limits, shutdown).await
                }
                Admission::Reject => reject_connection(tls, limits).await,
            }
        });
        fut
    };
    run_server(TcpAccept(listener), connect, limits, &ex, &shutdown).await;
}
