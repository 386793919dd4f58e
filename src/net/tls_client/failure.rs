//! TLS handshake failures in words an operator can act on, and as the
//! protocol's `tunnel_failure` (`source: tls`).
//!
//! Local verdicts on the server's certificate arrive as
//! `rustls::Error::InvalidCertificate`; the peer's verdict on *our* client
//! certificate arrives as an alert (`certificate_required`, `unknown_ca`, …).

use std::fmt;

use rustls::{AlertDescription as Alert, CertificateError as CertErr};

use crate::proto::failure::{FailureSource, TransportErrorKind, TunnelFailure};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server's chain does not lead to a trusted root.
    UnknownCa,
    ServerCertExpired,
    ServerCertNotYetValid,
    /// The server's certificate does not name the host we connected to.
    HostnameMismatch,
    ServerCertRevoked,
    /// Any other problem with the server's certificate.
    BadServerCert,
    /// The server demands a client certificate and none was configured.
    ClientCertRequired,
    /// The server refused the client certificate we presented.
    ClientCertRejected,
    /// No common protocol version or cipher suite.
    Incompatible,
    /// The URL's host cannot be used as a TLS server name.
    InvalidServerName,
    /// Anything else in the handshake.
    Handshake,
}

impl TlsFailure {
    pub fn reason(&self) -> &'static str {
        use TlsFailure::*;
        match self {
            UnknownCa => "server certificate is signed by an unknown CA (add it with --ca-bundle)",
            ServerCertExpired => "server certificate has expired",
            ServerCertNotYetValid => {
                "server certificate is not valid yet (check the clocks on both sides)"
            }
            HostnameMismatch => "server certificate does not match the host name in the URL",
            ServerCertRevoked => "server certificate has been revoked",
            BadServerCert => "server certificate is invalid",
            ClientCertRequired => "server requires a client certificate and none is configured",
            ClientCertRejected => "server rejected our client certificate",
            Incompatible => "no TLS version or cipher suite in common with the server",
            InvalidServerName => "the URL's host is not a valid TLS server name",
            Handshake => "TLS handshake failed",
        }
    }

    /// Short stable code for readiness and metrics.
    pub fn code(&self) -> &'static str {
        use TlsFailure::*;
        match self {
            UnknownCa => "tls_unknown_ca",
            ServerCertExpired => "tls_cert_expired",
            ServerCertNotYetValid => "tls_cert_not_yet_valid",
            HostnameMismatch => "tls_hostname_mismatch",
            ServerCertRevoked => "tls_cert_revoked",
            BadServerCert => "tls_bad_certificate",
            ClientCertRequired => "tls_client_cert_required",
            ClientCertRejected => "tls_client_cert_rejected",
            Incompatible => "tls_incompatible",
            InvalidServerName => "tls_invalid_server_name",
            Handshake => "tls_handshake",
        }
    }

    pub fn tunnel_failure(&self) -> TunnelFailure {
        TunnelFailure::new(FailureSource::Tls, Some(TransportErrorKind::Tls))
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// The TLS failure inside a ureq error, if it is one. rustls errors reach
/// ureq either directly or wrapped in an `io::Error` (handshake and reads).
pub fn tls_failure(e: &ureq::Error) -> Option<TlsFailure> {
    match e {
        ureq::Error::Rustls(r) => Some(classify_rustls(r)),
        ureq::Error::Tls(_) => Some(TlsFailure::InvalidServerName),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(classify_rustls),
        _ => None,
    }
}

pub fn classify_rustls(e: &rustls::Error) -> TlsFailure {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertErr::UnknownIssuer => TlsFailure::UnknownCa,
            CertErr::Expired | CertErr::ExpiredContext { .. } => TlsFailure::ServerCertExpired,
            CertErr::NotValidYet | CertErr::NotValidYetContext { .. } => {
                TlsFailure::ServerCertNotYetValid
            }
            CertErr::NotValidForName | CertErr::NotValidForNameContext { .. } => {
                TlsFailure::HostnameMismatch
            }
            CertErr::Revoked => TlsFailure::ServerCertRevoked,
            _ => TlsFailure::BadServerCert,
        },
        rustls::Error::AlertReceived(alert) => match alert {
            Alert::CertificateRequired => TlsFailure::ClientCertRequired,
            Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::CertificateUnknown
            | Alert::UnknownCA
            | Alert::AccessDenied => TlsFailure::ClientCertRejected,
            Alert::ProtocolVersion | Alert::HandshakeFailure | Alert::InsufficientSecurity => {
                TlsFailure::Incompatible
            }
            _ => TlsFailure::Handshake,
        },
        rustls::Error::PeerIncompatible(_) => TlsFailure::Incompatible,
        _ => TlsFailure::Handshake,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_wrapped(e: rustls::Error) -> ureq::Error {
        ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    #[test]
    fn server_certificate_verdicts() {
        let cases = [
            (CertErr::UnknownIssuer, TlsFailure::UnknownCa),
            (CertErr::Expired, TlsFailure::ServerCertExpired),
            (CertErr::NotValidYet, TlsFailure::ServerCertNotYetValid),
            (CertErr::NotValidForName, TlsFailure::HostnameMismatch),
            (CertErr::Revoked, TlsFailure::ServerCertRevoked),
            (CertErr::BadSignature, TlsFailure::BadServerCert),
        ];
        for (c, want) in cases {
            let e = rustls::Error::InvalidCertificate(c);
            assert_eq!(classify_rustls(&e), want);
            assert_eq!(tls_failure(&io_wrapped(e.clone())), Some(want));
            assert_eq!(tls_failure(&ureq::Error::Rustls(e)), Some(want));
        }
    }

    #[test]
    fn alerts_about_our_client_certificate() {
        let e = rustls::Error::AlertReceived(Alert::CertificateRequired);
        assert_eq!(classify_rustls(&e), TlsFailure::ClientCertRequired);
        for a in [
            Alert::UnknownCA,
            Alert::BadCertificate,
            Alert::CertificateExpired,
        ] {
            let e = rustls::Error::AlertReceived(a);
            assert_eq!(classify_rustls(&e), TlsFailure::ClientCertRejected, "{a:?}");
        }
        let e = rustls::Error::AlertReceived(Alert::ProtocolVersion);
        assert_eq!(classify_rustls(&e), TlsFailure::Incompatible);
    }

    #[test]
    fn non_tls_errors_are_none() {
        assert_eq!(tls_failure(&ureq::Error::HostNotFound), None);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(tls_failure(&ureq::Error::Io(refused)), None);
    }

    #[test]
    fn every_failure_is_source_tls_with_distinct_codes() {
        use TlsFailure::*;
        let all = [
            UnknownCa,
            ServerCertExpired,
            ServerCertNotYetValid,
            HostnameMismatch,
            ServerCertRevoked,
            BadServerCert,
            ClientCertRequired,
            ClientCertRejected,
            Incompatible,
            InvalidServerName,
            Handshake,
        ];
        let mut codes: Vec<_> = all.iter().map(|f| f.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for f in all {
            assert_eq!(f.tunnel_failure().source, FailureSource::Tls);
            assert_eq!(f.tunnel_failure().kind, Some(TransportErrorKind::Tls));
        }
    }
}
