//! What went wrong on the way through a CONNECT proxy, in words an operator
//! can act on, and as the protocol's `tunnel_failure` (`source: connect`).

use std::fmt;

use crate::proto::failure::{FailureSource, TransportErrorKind, TunnelFailure};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyFailure {
    /// 407 (or 401, which tinyproxy sends for a wrong password): the proxy
    /// wants credentials, or other ones. On CONNECT the only credentials sent
    /// are the proxy's, so both mean the same thing.
    Auth(u16),
    /// The proxy answered CONNECT with another non-200 status (403 = policy).
    Refused(u16),
    /// The proxy closed or stalled without an answer to CONNECT.
    NoAnswer,
}

impl ProxyFailure {
    pub fn reason(&self) -> String {
        match self {
            ProxyFailure::Auth(s) => format!(
                "proxy authentication failed ({s} to CONNECT): the proxy URL has no or wrong \
                 user:password (percent-encode special characters)"
            ),
            ProxyFailure::Refused(403) => {
                "proxy answered 403 to CONNECT: its policy forbids this destination or port"
                    .to_string()
            }
            ProxyFailure::Refused(s) => format!("proxy answered {s} to CONNECT"),
            ProxyFailure::NoAnswer => "proxy did not answer the CONNECT request".to_string(),
        }
    }

    /// Short stable code for readiness and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyFailure::Auth(_) => "proxy_auth_failed",
            ProxyFailure::Refused(_) => "proxy_refused",
            ProxyFailure::NoAnswer => "proxy_no_answer",
        }
    }

    pub fn tunnel_failure(&self) -> TunnelFailure {
        TunnelFailure::new(FailureSource::Connect, Some(TransportErrorKind::Dial))
    }
}

impl fmt::Display for ProxyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason())
    }
}

/// The proxy failure inside a ureq error, if it is one. ureq reports CONNECT
/// failures only as text (`proxy server responded 407/…`), so the status is
/// read back from it.
pub fn proxy_failure(e: &ureq::Error) -> Option<ProxyFailure> {
    let ureq::Error::ConnectProxyFailed(text) = e else {
        return None;
    };
    let status = text
        .strip_prefix("proxy server responded ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse::<u16>().ok());
    Some(match status {
        Some(s @ (401 | 407)) => ProxyFailure::Auth(s),
        Some(s) => ProxyFailure::Refused(s),
        None => ProxyFailure::NoAnswer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(text: &str) -> Option<ProxyFailure> {
        proxy_failure(&ureq::Error::ConnectProxyFailed(text.to_string()))
    }

    #[test]
    fn statuses_from_ureq_text() {
        assert_eq!(
            of("proxy server responded 407/Proxy Authentication Required"),
            Some(ProxyFailure::Auth(407))
        );
        assert_eq!(
            of("proxy server responded 401/401"),
            Some(ProxyFailure::Auth(401))
        );
        assert_eq!(
            of("proxy server responded 403/Forbidden"),
            Some(ProxyFailure::Refused(403))
        );
        assert_eq!(
            of("proxy server responded 502/Bad Gateway"),
            Some(ProxyFailure::Refused(502))
        );
        assert_eq!(
            of("proxy server did not respond"),
            Some(ProxyFailure::NoAnswer)
        );
    }

    #[test]
    fn other_errors_are_not_proxy_failures() {
        assert_eq!(proxy_failure(&ureq::Error::HostNotFound), None);
        assert_eq!(proxy_failure(&ureq::Error::StatusCode(407)), None);
    }

    #[test]
    fn reasons_and_protocol_source() {
        assert!(ProxyFailure::Auth(407).reason().contains("407"));
        assert!(ProxyFailure::Auth(401).reason().contains("user:password"));
        assert!(ProxyFailure::Refused(403).to_string().contains("403"));
        assert_eq!(ProxyFailure::Auth(407).code(), "proxy_auth_failed");
        let f = ProxyFailure::Auth(407).tunnel_failure();
        assert_eq!(f.source, FailureSource::Connect);
        assert!(!f.upstream_response_received());
    }
}
