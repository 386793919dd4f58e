//! Synthesized failures: protocol.md "Errors from the MCP server and
//! synthesized failures" — the `-32603 Bad Gateway` JSON-RPC error with
//! `data.tunnel_failure` provenance, and its `resp_code` (502, or 504 for
//! timeouts: our documented choice).
//!
//! The written object always satisfies the published schema invariants:
//! `target_http` carries `upstream_status` 400..=599 and received=true; no
//! other source carries a status; `transport_closed` has received=false. A
//! `TunnelFailure` that breaks them is written as `protocol`/`client_internal`
//! rather than emitting something the schema forbids. Never holds URLs,
//! bodies, error text or secrets: only enum values and a status number.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureSource {
    TargetHttp,
    Dns,
    Tls,
    Connect,
    TransportClosed,
    Timeout,
    Protocol,
    ClientInternal,
}

impl FailureSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureSource::TargetHttp => "target_http",
            FailureSource::Dns => "dns",
            FailureSource::Tls => "tls",
            FailureSource::Connect => "connect",
            FailureSource::TransportClosed => "transport_closed",
            FailureSource::Timeout => "timeout",
            FailureSource::Protocol => "protocol",
            FailureSource::ClientInternal => "client_internal",
        }
    }
}

impl fmt::Display for FailureSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportErrorKind {
    ClosedPipe,
    ConnectionAborted,
    ConnectionClosed,
    ConnectionRefused,
    ConnectionReset,
    Dial,
    Dns,
    Eof,
    HostUnreachable,
    HttpStatus,
    InvalidMcpError,
    InvalidProtocolResponse,
    MalformedJson,
    NetworkUnreachable,
    NonProtocolResponse,
    ResponseBodyMissing,
    ResponseBodyTooLarge,
    ResponseBodyUnreadable,
    Timeout,
    Tls,
    UnexpectedEof,
    Unknown,
}

impl TransportErrorKind {
    /// Every kind, in protocol.md's order (the conformance test checks it
    /// against the OpenAPI enum).
    pub const ALL: [TransportErrorKind; 22] = {
        use TransportErrorKind::*;
        [
            ClosedPipe,
            ConnectionAborted,
            ConnectionClosed,
            ConnectionRefused,
            ConnectionReset,
            Dial,
            Dns,
            Eof,
            HostUnreachable,
            HttpStatus,
            InvalidMcpError,
            InvalidProtocolResponse,
            MalformedJson,
            NetworkUnreachable,
            NonProtocolResponse,
            ResponseBodyMissing,
            ResponseBodyTooLarge,
            ResponseBodyUnreadable,
            Timeout,
            Tls,
            UnexpectedEof,
            Unknown,
        ]
    };
}

impl TransportErrorKind {
    pub fn as_str(self) -> &'static str {
        use TransportErrorKind::*;
        match self {
            ClosedPipe => "closed_pipe",
            ConnectionAborted => "connection_aborted",
            ConnectionClosed => "connection_closed",
            ConnectionRefused => "connection_refused",
            ConnectionReset => "connection_reset",
            Dial => "dial",
            Dns => "dns",
            Eof => "eof",
            HostUnreachable => "host_unreachable",
            HttpStatus => "http_status",
            InvalidMcpError => "invalid_mcp_error",
            InvalidProtocolResponse => "invalid_protocol_response",
            MalformedJson => "malformed_json",
            NetworkUnreachable => "network_unreachable",
            NonProtocolResponse => "non_protocol_response",
            ResponseBodyMissing => "response_body_missing",
            ResponseBodyTooLarge => "response_body_too_large",
            ResponseBodyUnreadable => "response_body_unreadable",
            Timeout => "timeout",
            Tls => "tls",
            UnexpectedEof => "unexpected_eof",
            Unknown => "unknown",
        }
    }

    /// Best-effort mapping of an I/O error kind (the caller's socket/pipe error).
    pub fn from_io(kind: std::io::ErrorKind) -> TransportErrorKind {
        use std::io::ErrorKind as K;
        match kind {
            K::BrokenPipe => TransportErrorKind::ClosedPipe,
            K::ConnectionAborted => TransportErrorKind::ConnectionAborted,
            K::ConnectionRefused => TransportErrorKind::ConnectionRefused,
            K::ConnectionReset => TransportErrorKind::ConnectionReset,
            K::HostUnreachable => TransportErrorKind::HostUnreachable,
            K::NetworkUnreachable => TransportErrorKind::NetworkUnreachable,
            K::UnexpectedEof => TransportErrorKind::UnexpectedEof,
            K::TimedOut => TransportErrorKind::Timeout,
            K::NotConnected => TransportErrorKind::ConnectionClosed,
            _ => TransportErrorKind::Unknown,
        }
    }
}

impl fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the tunnel could not deliver a valid MCP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TunnelFailure {
    pub source: FailureSource,
    pub kind: Option<TransportErrorKind>,
    /// Only meaningful for `TargetHttp` (400..=599).
    pub upstream_status: Option<u16>,
}

impl TunnelFailure {
    pub fn new(source: FailureSource, kind: Option<TransportErrorKind>) -> Self {
        TunnelFailure {
            source,
            kind,
            upstream_status: None,
        }
    }

    /// The MCP server answered `status` (4xx/5xx) without a usable JSON-RPC error.
    pub fn target_http(status: u16) -> Self {
        TunnelFailure {
            source: FailureSource::TargetHttp,
            kind: Some(TransportErrorKind::HttpStatus),
            upstream_status: Some(status),
        }
    }

    pub fn timeout() -> Self {
        Self::new(FailureSource::Timeout, Some(TransportErrorKind::Timeout))
    }

    /// Garbage, a missing/mismatched id or a server→client request on the MCP stream.
    pub fn protocol(kind: TransportErrorKind) -> Self {
        Self::new(FailureSource::Protocol, Some(kind))
    }

    /// The (source, status) actually written, after enforcing the schema invariants.
    fn normalized(&self) -> (FailureSource, Option<u16>) {
        match (self.source, self.upstream_status) {
            (FailureSource::TargetHttp, Some(s)) if (400..=599).contains(&s) => {
                (FailureSource::TargetHttp, Some(s))
            }
            // target_http needs a real error status; without one it is a protocol problem.
            (FailureSource::TargetHttp, _) => (FailureSource::Protocol, None),
            (src, _) => (src, None),
        }
    }

    /// Did the target return an HTTP response before the failure?
    /// True for `target_http`, and for protocol/timeout failures whose kind
    /// can only arise after a response head arrived (bad body, bad JSON).
    pub fn upstream_response_received(&self) -> bool {
        use TransportErrorKind as K;
        match self.normalized().0 {
            FailureSource::TargetHttp => true,
            FailureSource::Dns
            | FailureSource::Tls
            | FailureSource::Connect
            | FailureSource::TransportClosed => false,
            FailureSource::Protocol | FailureSource::Timeout | FailureSource::ClientInternal => {
                matches!(
                    self.kind,
                    Some(
                        K::HttpStatus
                            | K::InvalidMcpError
                            | K::InvalidProtocolResponse
                            | K::MalformedJson
                            | K::NonProtocolResponse
                            | K::ResponseBodyMissing
                            | K::ResponseBodyTooLarge
                            | K::ResponseBodyUnreadable
                    )
                )
            }
        }
    }

    /// `resp_code` for the synthesized answer: 504 for timeouts, else 502.
    pub fn resp_code(&self) -> u16 {
        if self.source == FailureSource::Timeout {
            504
        } else {
            502
        }
    }
}

impl fmt::Display for TunnelFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (source, status) = self.normalized();
        write!(f, "{source}")?;
        if let Some(k) = self.kind {
            write!(f, " ({k})")?;
        }
        if let Some(s) = status {
            write!(f, " upstream status {s}")?;
        }
        Ok(())
    }
}

/// Write the synthesized JSON-RPC error (`out` is appended to):
/// `{"jsonrpc":"2.0","id":<raw id or null>,"error":{"code":-32603,"message":"Bad Gateway","data":{"tunnel_failure":{...}}}}`.
/// `id_raw` is copied verbatim; the caller passes the raw id bytes of the request.
pub fn write_error(id_raw: Option<&[u8]>, f: &TunnelFailure, out: &mut Vec<u8>) {
    let (source, status) = f.normalized();
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id_raw.unwrap_or(b"null"));
    out.extend_from_slice(
        b",\"error\":{\"code\":-32603,\"message\":\"Bad Gateway\",\"data\":{\"tunnel_failure\":{\"version\":1,\"source\":\"",
    );
    out.extend_from_slice(source.as_str().as_bytes());
    out.push(b'"');
    if let Some(k) = f.kind {
        out.extend_from_slice(b",\"transport_error_kind\":\"");
        out.extend_from_slice(k.as_str().as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b",\"upstream_response_received\":");
    out.extend_from_slice(if f.upstream_response_received() {
        b"true"
    } else {
        b"false"
    });
    if let Some(s) = status {
        out.extend_from_slice(format!(",\"upstream_status\":{s}").as_bytes());
    }
    out.extend_from_slice(b"}}}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::json;

    fn written(id: Option<&[u8]>, f: TunnelFailure) -> String {
        let mut out = Vec::new();
        write_error(id, &f, &mut out);
        assert_eq!(json::validate(&out, &json::Limits::default()), Ok(()));
        String::from_utf8(out).unwrap()
    }

    const PREFIX: &str = r#"{"jsonrpc":"2.0","id":"#;
    const MID: &str = r#","error":{"code":-32603,"message":"Bad Gateway","data":{"tunnel_failure":{"version":1,"source":"#;

    #[test]
    fn exact_shape_target_http() {
        assert_eq!(
            written(Some(b"\"rpc-1\""), TunnelFailure::target_http(503)),
            format!(
                r#"{PREFIX}"rpc-1"{MID}"target_http","transport_error_kind":"http_status","upstream_response_received":true,"upstream_status":503}}}}}}}}"#
            )
        );
        assert_eq!(TunnelFailure::target_http(503).resp_code(), 502);
    }

    #[test]
    fn exact_shape_for_each_source() {
        use FailureSource as S;
        use TransportErrorKind as K;
        let cases = [
            (
                S::Dns,
                Some(K::Dns),
                r#""dns","transport_error_kind":"dns","upstream_response_received":false"#,
                502,
            ),
            (
                S::Tls,
                Some(K::Tls),
                r#""tls","transport_error_kind":"tls","upstream_response_received":false"#,
                502,
            ),
            (
                S::Connect,
                Some(K::ConnectionRefused),
                r#""connect","transport_error_kind":"connection_refused","upstream_response_received":false"#,
                502,
            ),
            (
                S::TransportClosed,
                Some(K::ConnectionReset),
                r#""transport_closed","transport_error_kind":"connection_reset","upstream_response_received":false"#,
                502,
            ),
            (
                S::Timeout,
                Some(K::Timeout),
                r#""timeout","transport_error_kind":"timeout","upstream_response_received":false"#,
                504,
            ),
            (
                S::Protocol,
                Some(K::MalformedJson),
                r#""protocol","transport_error_kind":"malformed_json","upstream_response_received":true"#,
                502,
            ),
            (
                S::Protocol,
                Some(K::UnexpectedEof),
                r#""protocol","transport_error_kind":"unexpected_eof","upstream_response_received":false"#,
                502,
            ),
            (
                S::ClientInternal,
                None,
                r#""client_internal","upstream_response_received":false"#,
                502,
            ),
        ];
        for (src, kind, tail, code) in cases {
            let f = TunnelFailure::new(src, kind);
            assert_eq!(
                written(Some(b"7"), f),
                format!("{PREFIX}7{MID}{tail}}}}}}}}}"),
                "{src:?}"
            );
            assert_eq!(f.resp_code(), code);
        }
    }

    #[test]
    fn missing_id_is_null() {
        assert!(
            written(None, TunnelFailure::timeout()).starts_with(r#"{"jsonrpc":"2.0","id":null,"#)
        );
    }

    #[test]
    fn schema_invariants_are_enforced() {
        // A status on a non-target_http source is dropped.
        let f = TunnelFailure {
            source: FailureSource::TransportClosed,
            kind: None,
            upstream_status: Some(500),
        };
        let s = written(None, f);
        assert!(
            !s.contains("upstream_status") && s.contains("\"upstream_response_received\":false"),
            "{s}"
        );
        // target_http without a 4xx/5xx status cannot be expressed: written as protocol.
        for st in [None, Some(200), Some(302), Some(600)] {
            let f = TunnelFailure {
                source: FailureSource::TargetHttp,
                kind: Some(TransportErrorKind::HttpStatus),
                upstream_status: st,
            };
            let s = written(None, f);
            assert!(
                s.contains("\"source\":\"protocol\"") && !s.contains("upstream_status"),
                "{s}"
            );
        }
        assert!(written(None, TunnelFailure::target_http(400)).contains("\"upstream_status\":400"));
        assert!(written(None, TunnelFailure::target_http(599)).contains("\"upstream_status\":599"));
    }

    #[test]
    fn as_str_matches_protocol_lists() {
        use TransportErrorKind::*;
        let all = [
            ClosedPipe,
            ConnectionAborted,
            ConnectionClosed,
            ConnectionRefused,
            ConnectionReset,
            Dial,
            Dns,
            Eof,
            HostUnreachable,
            HttpStatus,
            InvalidMcpError,
            InvalidProtocolResponse,
            MalformedJson,
            NetworkUnreachable,
            NonProtocolResponse,
            ResponseBodyMissing,
            ResponseBodyTooLarge,
            ResponseBodyUnreadable,
            Timeout,
            Tls,
            UnexpectedEof,
            Unknown,
        ];
        let names: Vec<&str> = all.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names.join(","),
            "closed_pipe,connection_aborted,connection_closed,connection_refused,connection_reset,dial,dns,eof,host_unreachable,http_status,invalid_mcp_error,invalid_protocol_response,malformed_json,network_unreachable,non_protocol_response,response_body_missing,response_body_too_large,response_body_unreadable,timeout,tls,unexpected_eof,unknown"
        );
        assert_eq!(
            TransportErrorKind::from_io(std::io::ErrorKind::ConnectionRefused),
            ConnectionRefused
        );
        assert_eq!(
            TransportErrorKind::from_io(std::io::ErrorKind::Other),
            Unknown
        );
    }
}
