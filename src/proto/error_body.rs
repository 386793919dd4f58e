//! Control-plane error bodies: protocol.md "Error bodies look like
//! `{"error":{"code":"tunnel_queue_full","message":…}}`". We also write the
//! `type` member, which the OpenAPI `APIErrorBody` schema requires.

use super::json::{self, Mode};

/// Largest body [`parse_code`] looks at; error bodies are small, and a proxy's
/// HTML page is not worth scanning.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// The OpenAI error category for a tunnel error code.
pub fn error_type(code: &str) -> &'static str {
    match code {
        "tunnel_client_not_connected"
        | "tunnel_client_not_seen"
        | "tunnel_transport_unavailable" => "server_error",
        _ => "invalid_request_error",
    }
}

/// Append `{"error":{"code":..,"message":..,"type":..}}` to `out`.
pub fn write(code: &str, message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"error\":{\"code\":");
    json::write_string(out, code);
    out.extend_from_slice(b",\"message\":");
    json::write_string(out, message);
    out.extend_from_slice(b",\"type\":");
    json::write_string(out, error_type(code));
    out.extend_from_slice(b"}}");
}

/// `error.code` of an error body, when it is a string; anything else → `None`.
pub fn parse_code(body: &[u8]) -> Option<String> {
    let limits = json::Limits {
        max_depth: 16,
        max_len: MAX_ERROR_BODY,
    };
    let top = json::members(body, &limits, Mode::STRICT, 64).ok()?;
    let (_, r) = top.iter().find(|(k, _)| k == "error")?;
    let err = &body[r.clone()];
    let inner = json::members(err, &limits, Mode::STRICT, 64).ok()?;
    let (_, c) = inner.iter().find(|(k, _)| k == "code")?;
    let code = &err[c.clone()];
    json::is_string(code)
        .then(|| json::parse_string(code).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_exact_and_parse_back() {
        let mut out = Vec::new();
        write("tunnel_queue_full", "queue \"full\"", &mut out);
        assert_eq!(
            out,
            br#"{"error":{"code":"tunnel_queue_full","message":"queue \"full\"","type":"invalid_request_error"}}"#
        );
        assert_eq!(parse_code(&out).as_deref(), Some("tunnel_queue_full"));
        let mut out = Vec::new();
        write("tunnel_client_not_connected", "m", &mut out);
        assert!(out.ends_with(br#""type":"server_error"}}"#));
    }

    #[test]
    fn parse_code_cases() {
        assert_eq!(
            parse_code(br#"{"error":{"message":"m","type":"t","param":null,"code":"rate_limit_exceeded"}}"#).as_deref(),
            Some("rate_limit_exceeded")
        );
        for body in [
            &br#"{"error":{"code":null,"message":"m"}}"#[..],
            br#"{"error":{"message":"m"}}"#,
            br#"{"error":"tunnel_queue_full"}"#,
            br#"{"code":"x"}"#,
            br#"{"error":{"code":5}}"#,
            br#"{"error":{"code":"a","code":"b"}}"#,
            b"<html>502 Bad Gateway</html>",
            b"",
            br#"{"error":{"code":"x""#,
        ] {
            assert_eq!(parse_code(body), None, "{}", String::from_utf8_lossy(body));
        }
        let mut big = br#"{"error":{"code":"x"},"pad":""#.to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_ERROR_BODY));
        big.extend_from_slice(b"\"}");
        assert_eq!(parse_code(&big), None);
    }
}
