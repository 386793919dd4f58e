//! Client-side TLS for the agent's two hops (control plane, MCP servers):
//! which roots to trust and which certificate to present, as a ureq
//! `TlsConfig` (rustls with ring).
//!
//! Trust = the operating system's roots (rustls-native-certs) **plus** every
//! certificate in `--ca-bundle` / `CA_BUNDLE`: the bundle adds, never replaces.
//! rustls-native-certs honours `SSL_CERT_FILE` (one PEM file) and
//! `SSL_CERT_DIR` (directories separated by `:`) the way OpenSSL does: when
//! either is set it loads those *instead of* the system store, so pointing
//! `SSL_CERT_FILE` at a private CA alone drops the public roots — use
//! `--ca-bundle` to add a CA. Unreadable OS entries are skipped and reported
//! in [`Trust::os_errors`]; a `--ca-bundle` that cannot be used is an error.
//!
//! Client certificates: PEM chain (leaf first) and PEM key (PKCS#8, PKCS#1 or
//! SEC1, unencrypted). The key must match the leaf's public key and the leaf
//! must be valid at `now`; both are checked here so that a bad pair is a
//! startup error naming the files (ureq would panic on a mismatched key).

mod failure;
mod validity;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};

pub use failure::{classify_rustls, tls_failure, TlsFailure};

use crate::net::cert_names::{cert_names, CertName};
pub use validity::{validity, UtcSeconds, Validity};

/// PEM files bigger than this are refused (the Mozilla bundle is ~250 KiB).
const MAX_PEM_BYTES: u64 = 8 * 1024 * 1024;
/// At most this many OS-store errors are kept for the warning.
const MAX_OS_ERRORS: usize = 16;

/// Why a TLS setting cannot be used. Every variant names the file(s); none
/// carries key material.
#[derive(Debug)]
pub enum TlsError {
    /// Missing, unreadable, too large, or not valid PEM.
    Read {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    /// The file holds no item of the expected kind.
    NoItems {
        path: PathBuf,
        what: &'static str,
    },
    /// A certificate that does not parse (or cannot be a trust anchor).
    BadCertificate {
        path: PathBuf,
        /// 1-based position in the file.
        index: usize,
        reason: String,
    },
    UnsupportedKey {
        path: PathBuf,
        reason: String,
    },
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
    },
    Expired {
        path: PathBuf,
        not_after: UtcSeconds,
        now: UtcSeconds,
    },
    NotYetValid {
        path: PathBuf,
        not_before: UtcSeconds,
        now: UtcSeconds,
    },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, what, reason } => {
                write!(f, "cannot read {what} from {}: {reason}", path.display())
            }
            TlsError::NoItems { path, what } => {
                write!(f, "{} holds no PEM {what}", path.display())
            }
            TlsError::BadCertificate {
                path,
                index,
                reason,
            } => write!(
                f,
                "certificate #{index} in {} is unusable: {reason}",
                path.display()
            ),
            TlsError::UnsupportedKey { path, reason } => {
                write!(f, "private key in {} is unusable: {reason}", path.display())
            }
            TlsError::KeyMismatch { cert, key } => write!(
                f,
                "private key in {} does not belong to the certificate in {}",
                key.display(),
                cert.display()
            ),
            TlsError::Expired {
                path,
                not_after,
                now,
            } => write!(
                f,
                "certificate in {} expired at {not_after} (now {now})",
                path.display()
            ),
            TlsError::NotYetValid {
                path,
                not_before,
                now,
            } => write!(
                f,
                "certificate in {} is not valid before {not_before} (now {now})",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TlsError {}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let err = |reason: String| TlsError::Read {
        path: path.to_owned(),
        what,
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(err(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(bytes)
}

fn pem_reason(e: pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "malformed PEM BEGIN line".into(),
        pem::Error::Base64Decode(_) => "invalid base64 inside a PEM section".into(),
        other => other.to_string(),
    }
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read {
            path: path.to_owned(),
            what,
            reason: pem_reason(e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoItems {
            path: path.to_owned(),
            what,
        });
    }
    Ok(certs)
}

/// The roots a hop trusts.
#[derive(Clone)]
pub struct Trust {
    /// Shared by every TLS configuration made from it (each hop, each
    /// channel): the system store is ~150 certificates, copied per hop it
    /// was a few hundred KiB of the agent's resident memory.
    roots: Arc<Vec<Certificate<'static>>>,
    /// Certificates from the OS store (or `SSL_CERT_FILE`/`SSL_CERT_DIR`).
    pub os_count: usize,
    /// Certificates from `--ca-bundle`.
    pub bundle_count: usize,
    /// OS-store entries that could not be loaded (skipped), for a warning.
    pub os_errors: Vec<String>,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("os_count", &self.os_count)
            .field("bundle_count", &self.bundle_count)
            .field("os_errors", &self.os_errors.len())
            .finish()
    }
}

impl Trust {
    /// OS roots plus the bundle, if any. The bundle must hold at least one
    /// PEM certificate and each must be usable as a trust anchor.
    pub fn load(ca_bundle: Option<&Path>) -> Result<Trust, TlsError> {
        let mut trust = Trust::os();
        if let Some(path) = ca_bundle {
            trust.add_bundle(path)?;
        }
        Ok(trust)
    }

    /// The operating system's roots (or `SSL_CERT_FILE`/`SSL_CERT_DIR`).
    pub fn os() -> Trust {
        let native = rustls_native_certs::load_native_certs();
        let roots: Vec<Certificate<'static>> = native
            .certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        Trust {
            os_count: roots.len(),
            roots: Arc::new(roots),
            bundle_count: 0,
            os_errors: native
                .errors
                .iter()
                .take(MAX_OS_ERRORS)
                .map(|e| e.to_string())
                .collect(),
        }
    }

    /// No roots at all: for an agent that dials no `https://` URL (the
    /// system store is then never read).
    pub fn none() -> Trust {
        Trust {
            roots: Arc::default(),
            os_count: 0,
            bundle_count: 0,
            os_errors: Vec::new(),
        }
    }

    /// These roots plus those of `bundle` (one checked at startup with
    /// [`Trust::bundle_only`], so the file is read once).
    pub fn with(mut self, bundle: &Trust) -> Trust {
        Arc::make_mut(&mut self.roots).extend(bundle.roots.iter().cloned());
        self.bundle_count += bundle.bundle_count;
        self
    }

    /// Only the bundle's certificates (no OS roots): for a hop that must
    /// trust nothing but a private CA.
    pub fn bundle_only(ca_bundle: &Path) -> Result<Trust, TlsError> {
        let mut trust = Trust::none();
        trust.add_bundle(ca_bundle)?;
        Ok(trust)
    }

    fn add_bundle(&mut self, path: &Path) -> Result<(), TlsError> {
        let certs = load_certs(path, "CA certificate")?;
        let mut check = RootCertStore::empty();
        for (i, cert) in certs.into_iter().enumerate() {
            check
                .add(cert.clone())
                .map_err(|e| TlsError::BadCertificate {
                    path: path.to_owned(),
                    index: i + 1,
                    reason: e.to_string(),
                })?;
            Arc::make_mut(&mut self.roots).push(Certificate::from_der(cert.as_ref()).to_owned());
            self.bundle_count += 1;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The ureq TLS configuration: rustls with ring, these roots, and the
    /// client certificate when one is given.
    pub fn config(&self, identity: Option<&ClientIdentity>) -> TlsConfig {
        TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(provider())
            .root_certs(RootCerts::Specific(Arc::clone(&self.roots)))
            .client_cert(identity.map(|i| i.cert.clone()))
            .build()
    }
}

/// A checked client certificate chain and its key.
#[derive(Clone)]
pub struct ClientIdentity {
    cert: ClientCert,
    pub validity: Validity,
    /// The leaf's subject CN and SAN DNS/URI names (what a relay binds to).
    pub names: Vec<CertName>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain_len", &self.cert.certs().len())
            .field("validity", &self.validity)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

fn to_utc(t: SystemTime) -> UtcSeconds {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UtcSeconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        Err(e) => UtcSeconds(-i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX)),
    }
}

impl ClientIdentity {
    /// Loads and checks a client certificate (chain, leaf first) and its key.
    pub fn load(cert: &Path, key: &Path, now: SystemTime) -> Result<ClientIdentity, TlsError> {
        let chain = load_certs(cert, "certificate")?;
        let (key_der, key_pem) = load_key(key)?;
        let bad_leaf = |reason: String| TlsError::BadCertificate {
            path: cert.to_owned(),
            index: 1,
            reason,
        };
        let signing = provider()
            .key_provider
            .load_private_key(key_der.clone_key())
            .map_err(|e| TlsError::UnsupportedKey {
                path: key.to_owned(),
                reason: e.to_string(),
            })?;
        match CertifiedKey::new(chain.clone(), signing).keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                })
            }
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(TlsError::UnsupportedKey {
                    path: key.to_owned(),
                    reason: "its public key cannot be derived to check it against the certificate"
                        .into(),
                })
            }
            Err(e) => return Err(bad_leaf(e.to_string())),
        }
        let leaf = chain
            .first()
            .ok_or_else(|| bad_leaf("empty chain".into()))?;
        let validity = validity(leaf.as_ref()).map_err(|e| bad_leaf(e.to_string()))?;
        let names = cert_names(leaf.as_ref()).map_err(|e| bad_leaf(e.to_string()))?;
        let now = to_utc(now);
        if now < validity.not_before {
            return Err(TlsError::NotYetValid {
                path: cert.to_owned(),
                not_before: validity.not_before,
                now,
            });
        }
        if now > validity.not_after {
            return Err(TlsError::Expired {
                path: cert.to_owned(),
                not_after: validity.not_after,
                now,
            });
        }
        let certs: Vec<Certificate<'static>> = chain
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        // ureq does not export its key-kind enum, so it parses the same PEM
        // itself; both take the first key in the file, and this proves it.
        let key = PrivateKey::from_pem(&key_pem)
            .ok()
            .filter(|k| k.der() == key_der.secret_der())
            .ok_or_else(|| TlsError::UnsupportedKey {
                path: key.to_owned(),
                reason: "unknown key encoding".into(),
            })?;
        Ok(ClientIdentity {
            cert: ClientCert::new_with_certs(&certs, key),
            validity,
            names,
        })
    }
}

/// The key, and the PEM text it came from.
fn load_key(path: &Path) -> Result<(PrivateKeyDer<'static>, Vec<u8>), TlsError> {
    let what = "private key";
    let bytes = read_pem(path, what)?;
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound if contains(&bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY") => {
            TlsError::UnsupportedKey {
                path: path.to_owned(),
                reason: "encrypted keys are not supported; decrypt it with `openssl pkey`".into(),
            }
        }
        pem::Error::NoItemsFound => TlsError::NoItems {
            path: path.to_owned(),
            what: "private key (PKCS#8, PKCS#1 or SEC1)",
        },
        e => TlsError::Read {
            path: path.to_owned(),
            what,
            reason: pem_reason(e),
        },
    })?;
    Ok((key, bytes))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Paths and clock for [`tls_config`].
#[derive(Clone, Copy, Debug)]
pub struct TlsOptions<'a> {
    /// `--ca-bundle` / `CA_BUNDLE`: added to the OS roots.
    pub ca_bundle: Option<&'a Path>,
    /// (certificate chain, private key) to present, if any.
    pub client_cert: Option<(&'a Path, &'a Path)>,
    /// The instant the client certificate must be valid at.
    pub now: SystemTime,
}

/// One call for a hop: OS roots + bundle, and the checked client certificate.
/// (To share one OS-store load between hops, use [`Trust::load`] and
/// [`Trust::config`].)
pub fn tls_config(opts: &TlsOptions<'_>) -> Result<TlsConfig, TlsError> {
    let trust = Trust::load(opts.ca_bundle)?;
    let identity = match opts.client_cert {
        Some((cert, key)) => Some(ClientIdentity::load(cert, key, opts.now)?),
        None => None,
    };
    Ok(trust.config(identity.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, body: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mcp-tunnel-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn missing_bundle_names_the_file() {
        let e = Trust::bundle_only(Path::new("/nonexistent/ca.pem")).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, TlsError::Read { .. }));
        assert!(
            text.contains("/nonexistent/ca.pem") && text.contains("CA certificate"),
            "{text}"
        );
    }

    #[test]
    fn bundle_without_certificates_is_an_error() {
        let p = temp_file("empty.pem", b"just some text\n");
        let e = Trust::bundle_only(&p).unwrap_err();
        assert!(matches!(e, TlsError::NoItems { .. }), "{e}");
        assert!(e.to_string().contains("holds no PEM CA certificate"));
    }

    #[test]
    fn bundle_with_bad_base64_is_an_error() {
        let p = temp_file(
            "bad.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        );
        let e = Trust::bundle_only(&p).unwrap_err();
        assert!(e.to_string().contains("invalid base64"), "{e}");
        let p = temp_file("unterminated.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n");
        let e = Trust::bundle_only(&p).unwrap_err();
        assert!(e.to_string().contains("no END line"), "{e}");
    }

    #[test]
    fn bundle_with_a_non_certificate_is_an_error_naming_its_position() {
        let p = temp_file(
            "junk-cert.pem",
            b"-----BEGIN CERTIFICATE-----\nAAECAwQ=\n-----END CERTIFICATE-----\n",
        );
        let e = Trust::bundle_only(&p).unwrap_err();
        assert!(
            matches!(e, TlsError::BadCertificate { index: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("certificate #1 in"));
    }

    #[test]
    fn oversized_files_are_refused() {
        let p = temp_file("huge.pem", &vec![b'a'; (MAX_PEM_BYTES + 1) as usize]);
        let e = Trust::bundle_only(&p).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn key_files_without_a_key() {
        let p = temp_file("nokey.pem", b"nothing\n");
        let e = load_key(&p).unwrap_err();
        assert!(matches!(e, TlsError::NoItems { .. }), "{e}");
        let p = temp_file(
            "enc.pem",
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let e = load_key(&p).unwrap_err();
        assert!(
            e.to_string().contains("encrypted keys are not supported"),
            "{e}"
        );
    }

    #[test]
    fn os_store_loads_without_a_bundle() {
        let t = Trust::load(None).unwrap();
        assert_eq!(t.bundle_count, 0);
        assert_eq!(t.os_count, t.roots.len());
    }

    #[test]
    fn tls_configs_of_one_trust_share_its_roots_and_a_wider_trust_copies_them() {
        let t = Trust::os();
        let (a, b) = (t.config(None), t.config(None));
        let (RootCerts::Specific(x), RootCerts::Specific(y)) = (a.root_certs(), b.root_certs())
        else {
            panic!("specific roots expected");
        };
        assert!(Arc::ptr_eq(x, y));
        let extra = Trust {
            roots: Arc::new(x.iter().take(1).cloned().collect()),
            os_count: 0,
            bundle_count: 1,
            os_errors: Vec::new(),
        };
        let n = t.roots.len();
        let wider = t.clone().with(&extra);
        assert_eq!(wider.roots.len(), n + extra.roots.len());
        assert_eq!(t.roots.len(), n, "the shared roots are not changed");
        assert!(!Arc::ptr_eq(&wider.roots, &t.roots) || extra.roots.is_empty());
    }

    #[test]
    fn times_before_the_epoch() {
        assert_eq!(to_utc(UNIX_EPOCH), UtcSeconds(0));
        let before = UNIX_EPOCH - std::time::Duration::from_secs(5);
        assert_eq!(to_utc(before), UtcSeconds(-5));
    }
}
