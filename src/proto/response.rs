//! The response POST body: protocol.md "Response POST" —
//! `{"request_id","channel","resp_json","resp_headers","resp_code","resp_type"}`,
//! `request_id` and `resp_code` required, `resp_type` defaulting to
//! `jsonrpc_response`, `resp_json` carried byte-for-byte.
//!
//! Decoding (relay side) follows the OpenAPI schema, which closes this object
//! (`additionalProperties: false`): unknown fields are refused, unlike commands.

use std::fmt;
use std::ops::Range;

use super::channel::Channel;
use super::command::write_header_map;
use super::headers::{is_valid_name, is_valid_value};
use super::json::{self, JsonError, Mode};

/// Most `resp_headers` values accepted when decoding.
pub const MAX_RESP_HEADER_VALUES: usize = 100;
/// Most bytes of `resp_headers` names and values accepted when decoding.
pub const MAX_RESP_HEADER_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RespType {
    JsonrpcResponse,
    JsonrpcNotify,
    NotifyAck,
    SessionTerminationResponse,
}

impl RespType {
    pub fn as_str(self) -> &'static str {
        match self {
            RespType::JsonrpcResponse => "jsonrpc_response",
            RespType::JsonrpcNotify => "jsonrpc_notify",
            RespType::NotifyAck => "notify_ack",
            RespType::SessionTerminationResponse => "session_termination_response",
        }
    }

    pub fn parse(s: &str) -> Option<RespType> {
        [
            RespType::JsonrpcResponse,
            RespType::JsonrpcNotify,
            RespType::NotifyAck,
            RespType::SessionTerminationResponse,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }

    /// Final posts end a command; `jsonrpc_notify` does not.
    pub fn is_final(self) -> bool {
        self != RespType::JsonrpcNotify
    }
}

impl fmt::Display for RespType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Agent side: one response POST body.
#[derive(Clone, Copy, Debug)]
pub struct ResponsePost<'a> {
    pub request_id: &'a str,
    pub channel: &'a str,
    /// Raw valid JSON (the MCP message), copied verbatim; `None` omits the field.
    pub resp_json: Option<&'a [u8]>,
    pub resp_headers: &'a [(String, Vec<String>)],
    pub resp_code: u16,
    pub resp_type: RespType,
}

/// Encode `post` into `out` (cleared first). Field order matches the reference client.
pub fn encode(post: &ResponsePost<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"{\"request_id\":");
    json::write_string(out, post.request_id);
    out.extend_from_slice(b",\"channel\":");
    json::write_string(out, post.channel);
    if let Some(raw) = post.resp_json {
        out.extend_from_slice(b",\"resp_json\":");
        out.extend_from_slice(raw);
    }
    out.extend_from_slice(b",\"resp_headers\":");
    write_header_map(out, post.resp_headers);
    out.extend_from_slice(b",\"resp_code\":");
    write_u16(out, post.resp_code);
    out.extend_from_slice(b",\"resp_type\":\"");
    out.extend_from_slice(post.resp_type.as_str().as_bytes());
    out.extend_from_slice(b"\"}");
}

/// Decimal digits of `n` (no allocation, unlike `to_string`).
fn write_u16(out: &mut Vec<u8>, mut n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Relay side: a decoded response POST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedResponse {
    pub request_id: String,
    /// `None` when absent or null (the schema default is `main`).
    pub channel: Option<String>,
    /// Byte range of the `resp_json` object in the decoded body; `None` when absent or null.
    pub resp_json: Option<Range<usize>>,
    pub resp_headers: Vec<(String, Vec<String>)>,
    pub resp_code: u16,
    pub resp_type: RespType,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseError {
    Json(JsonError),
    MissingField(&'static str),
    BadField {
        field: &'static str,
        why: String,
    },
    /// `resp_type` not in the enum (clipped to 64 bytes).
    UnknownRespType(String),
    /// A field the closed schema does not have (clipped).
    UnknownField(String),
    /// `channel` is not canonical.
    BadChannel,
}

impl ResponseError {
    /// The `error.code` the relay answers with (HTTP 400).
    pub fn code(&self) -> &'static str {
        match self {
            ResponseError::BadChannel => "invalid_channel_format",
            _ => "invalid_response_body",
        }
    }
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::Json(e) => write!(f, "response body: {e}"),
            ResponseError::MissingField(n) => write!(f, "response body lacks {n}"),
            ResponseError::BadField { field, why } => write!(f, "response field {field}: {why}"),
            ResponseError::UnknownRespType(t) => {
                write!(f, "unknown resp_type {:?}", t.escape_debug().to_string())
            }
            ResponseError::UnknownField(n) => {
                write!(
                    f,
                    "unknown response field {:?}",
                    n.escape_debug().to_string()
                )
            }
            ResponseError::BadChannel => f.write_str("invalid channel name"),
        }
    }
}

impl std::error::Error for ResponseError {}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn bad(field: &'static str, why: impl Into<String>) -> ResponseError {
    ResponseError::BadField {
        field,
        why: why.into(),
    }
}

/// Relay side: decode and check a response POST body.
pub fn decode(body: &[u8], limits: &json::Limits) -> Result<DecodedResponse, ResponseError> {
    // Six known fields: a seventh member is an error anyway, so stop reading there.
    let members = json::members(body, limits, Mode::STRICT, 6).map_err(|e| match e {
        JsonError::TooManyItems { .. } => ResponseError::UnknownField(String::new()),
        e => ResponseError::Json(e),
    })?;
    let mut out = DecodedResponse {
        request_id: String::new(),
        channel: None,
        resp_json: None,
        resp_headers: Vec::new(),
        resp_code: 0,
        resp_type: RespType::JsonrpcResponse,
    };
    let (mut have_id, mut have_code) = (false, false);
    for (key, range) in members {
        let raw = &body[range.clone()];
        match &*key {
            "request_id" => {
                out.request_id = string(raw, "request_id")?;
                if out.request_id.is_empty() {
                    return Err(bad("request_id", "empty"));
                }
                have_id = true;
            }
            "channel" if json::is_null(raw) => {}
            "channel" => {
                let c = string(raw, "channel")?;
                Channel::parse(&c).map_err(|_| ResponseError::BadChannel)?;
                out.channel = Some(c);
            }
            "resp_json" if json::is_null(raw) => {}
            "resp_json" if json::is_object(raw) => out.resp_json = Some(range),
            "resp_json" => return Err(bad("resp_json", "not an object")),
            "resp_headers" if json::is_null(raw) => {}
            "resp_headers" => out.resp_headers = header_map(raw, limits)?,
            "resp_code" => {
                let code = json::parse_u64(raw).map_err(|_| bad("resp_code", "not an integer"))?;
                out.resp_code = u16::try_from(code)
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| bad("resp_code", "outside 100..=599"))?;
                have_code = true;
            }
            "resp_type" if json::is_null(raw) => {}
            "resp_type" => {
                let t = string(raw, "resp_type")?;
                out.resp_type =
                    RespType::parse(&t).ok_or_else(|| ResponseError::UnknownRespType(clip(&t)))?;
            }
            other => return Err(ResponseError::UnknownField(clip(other))),
        }
    }
    if !have_id {
        return Err(ResponseError::MissingField("request_id"));
    }
    if !have_code {
        return Err(ResponseError::MissingField("resp_code"));
    }
    Ok(out)
}

/// `raw` was accepted by a strict scan (every value here is), so a string
/// needs no second check.
fn string(raw: &[u8], field: &'static str) -> Result<String, ResponseError> {
    json::scanned_string(raw).ok_or_else(|| bad(field, "not a string"))
}

fn header_map(
    raw: &[u8],
    limits: &json::Limits,
) -> Result<Vec<(String, Vec<String>)>, ResponseError> {
    let too_many = || bad("resp_headers", "too many values");
    let names = match json::members(raw, limits, Mode::STRICT, MAX_RESP_HEADER_VALUES) {
        Ok(m) => m,
        Err(JsonError::TooManyItems { .. }) => return Err(too_many()),
        Err(JsonError::NotAnObject) => return Err(bad("resp_headers", "not an object")),
        Err(e) => return Err(ResponseError::Json(e)),
    };
    let (mut count, mut bytes) = (0usize, 0usize);
    let mut out = Vec::with_capacity(names.len());
    let mut elems = Vec::new();
    for (name, r) in names {
        if !is_valid_name(&name) {
            return Err(bad("resp_headers", "invalid header name"));
        }
        let values_raw = &raw[r];
        match json::elements_into(
            values_raw,
            limits,
            true,
            MAX_RESP_HEADER_VALUES - count,
            &mut elems,
        ) {
            Ok(()) => {}
            Err(JsonError::TooManyItems { .. }) => return Err(too_many()),
            Err(JsonError::NotAnArray) => {
                return Err(bad("resp_headers", "values are not an array"))
            }
            Err(e) => return Err(ResponseError::Json(e)),
        }
        let mut values = Vec::with_capacity(elems.len());
        for e in elems.drain(..) {
            let v = string(&values_raw[e], "resp_headers")?;
            if !is_valid_value(&v) {
                return Err(bad("resp_headers", "invalid header value"));
            }
            bytes = bytes.saturating_add(name.len() + v.len());
            if bytes > MAX_RESP_HEADER_BYTES {
                return Err(bad("resp_headers", "too large"));
            }
            values.push(v);
        }
        count += values.len();
        out.push((name.into_owned(), values));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> json::Limits {
        json::Limits::default()
    }

    #[test]
    fn status_digits_written_like_to_string() {
        for n in [
            0u16,
            7,
            10,
            99,
            100,
            200,
            404,
            599,
            1000,
            9999,
            10000,
            u16::MAX,
        ] {
            let mut out = b"x".to_vec();
            write_u16(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn resp_type_names() {
        for t in [
            RespType::JsonrpcResponse,
            RespType::JsonrpcNotify,
            RespType::NotifyAck,
            RespType::SessionTerminationResponse,
        ] {
            assert_eq!(RespType::parse(t.as_str()), Some(t));
            assert_eq!(t.is_final(), t != RespType::JsonrpcNotify);
        }
        assert_eq!(RespType::parse("JSONRPC_RESPONSE"), None);
    }

    #[test]
    fn encode_exact_bytes() {
        let headers = vec![(
            "Content-Type".to_string(),
            vec!["application/json".to_string()],
        )];
        let raw =
            br#"{"jsonrpc":"2.0","id":12345678901234567890123,"result":{"t":"\u00e9","k":1.50}}"#;
        let mut out = b"stale".to_vec();
        encode(
            &ResponsePost {
                request_id: "req\"1",
                channel: "main",
                resp_json: Some(raw),
                resp_headers: &headers,
                resp_code: 200,
                resp_type: RespType::JsonrpcResponse,
            },
            &mut out,
        );
        let want = format!(
            r#"{{"request_id":"req\"1","channel":"main","resp_json":{},"resp_headers":{{"Content-Type":["application/json"]}},"resp_code":200,"resp_type":"jsonrpc_response"}}"#,
            std::str::from_utf8(raw).unwrap()
        );
        assert_eq!(String::from_utf8(out.clone()).unwrap(), want);
        let d = decode(&out, &lim()).unwrap();
        assert_eq!(&out[d.resp_json.unwrap()], &raw[..]);
    }

    #[test]
    fn encode_without_resp_json() {
        let mut out = Vec::new();
        encode(
            &ResponsePost {
                request_id: "r",
                channel: "ch",
                resp_json: None,
                resp_headers: &[],
                resp_code: 204,
                resp_type: RespType::SessionTerminationResponse,
            },
            &mut out,
        );
        assert_eq!(
            out,
            br#"{"request_id":"r","channel":"ch","resp_headers":{},"resp_code":204,"resp_type":"session_termination_response"}"#
        );
    }

    #[test]
    fn decode_full_and_minimal() {
        let body = br#"{"request_id":"r1","channel":"harpoon","resp_json":{"a":[1]},"resp_headers":{"Mcp-Session-Id":["s"],"X":[]},"resp_code":202,"resp_type":"notify_ack"}"#;
        let d = decode(body, &lim()).unwrap();
        assert_eq!(d.request_id, "r1");
        assert_eq!(d.channel.as_deref(), Some("harpoon"));
        assert_eq!(&body[d.resp_json.clone().unwrap()], br#"{"a":[1]}"#);
        assert_eq!(
            d.resp_headers,
            vec![
                ("Mcp-Session-Id".to_string(), vec!["s".to_string()]),
                ("X".to_string(), vec![])
            ]
        );
        assert_eq!((d.resp_code, d.resp_type), (202, RespType::NotifyAck));

        let m = decode(br#"{"request_id":"r","resp_code":200}"#, &lim()).unwrap();
        assert_eq!(
            (m.channel, m.resp_json, m.resp_type),
            (None, None, RespType::JsonrpcResponse)
        );
        let n = decode(
            br#"{"request_id":"r","resp_code":200,"channel":null,"resp_json":null,"resp_headers":null,"resp_type":null}"#,
            &lim(),
        )
        .unwrap();
        assert_eq!(n.resp_type, RespType::JsonrpcResponse);
    }

    #[test]
    fn decode_errors() {
        let cases: &[(&[u8], ResponseError)] = &[
            (
                br#"{"resp_code":200}"#,
                ResponseError::MissingField("request_id"),
            ),
            (
                br#"{"request_id":"r"}"#,
                ResponseError::MissingField("resp_code"),
            ),
            (
                br#"{"request_id":"r","resp_code":200,"resp_type":"final"}"#,
                ResponseError::UnknownRespType("final".into()),
            ),
            (
                br#"{"request_id":"r","resp_code":200,"extra":1}"#,
                ResponseError::UnknownField("extra".into()),
            ),
            (
                br#"{"request_id":"r","resp_code":200,"channel":"Bad!"}"#,
                ResponseError::BadChannel,
            ),
            (
                br#"{"request_id":"r","resp_code":200,"request_id":"s"}"#,
                ResponseError::Json(JsonError::DuplicateKey("request_id".into())),
            ),
            (b"[]", ResponseError::Json(JsonError::NotAnObject)),
            (
                br#"{"request_id":"r""#,
                ResponseError::Json(JsonError::Truncated),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                &decode(body, &lim()).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for body in [
            &br#"{"request_id":"r","resp_code":"200"}"#[..],
            br#"{"request_id":"r","resp_code":99}"#,
            br#"{"request_id":"r","resp_code":600}"#,
            br#"{"request_id":"r","resp_code":200.0}"#,
            br#"{"request_id":"r","resp_code":-1}"#,
            br#"{"request_id":"","resp_code":200}"#,
            br#"{"request_id":1,"resp_code":200}"#,
            br#"{"request_id":"r","resp_code":200,"resp_json":[1]}"#,
            br#"{"request_id":"r","resp_code":200,"resp_json":"x"}"#,
            br#"{"request_id":"r","resp_code":200,"resp_headers":{"a":"b"}}"#,
            br#"{"request_id":"r","resp_code":200,"resp_headers":{"a b":["c"]}}"#,
            br#"{"request_id":"r","resp_code":200,"resp_headers":{"a":["c\nd"]}}"#,
            br#"{"request_id":"r","resp_code":200,"resp_headers":{"a":[1]}}"#,
        ] {
            assert!(
                matches!(decode(body, &lim()), Err(ResponseError::BadField { .. })),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(
            decode(b"{\"request_id\":\"\xff\",\"resp_code\":200}", &lim()),
            Err(ResponseError::Json(JsonError::InvalidUtf8 { .. }))
        ));
        let values: Vec<String> = (0..101).map(|i| format!("\"{i}\"")).collect();
        let body = format!(
            r#"{{"request_id":"r","resp_code":200,"resp_headers":{{"a":[{}]}}}}"#,
            values.join(",")
        );
        assert!(matches!(
            decode(body.as_bytes(), &lim()),
            Err(ResponseError::BadField {
                field: "resp_headers",
                ..
            })
        ));
        assert_eq!(ResponseError::BadChannel.code(), "invalid_channel_format");
        assert_eq!(
            ResponseError::MissingField("x").code(),
            "invalid_response_body"
        );
    }

    #[test]
    fn fuzz_smoke_decode() {
        let sample = br#"{"request_id":"r1","channel":"main","resp_json":{"jsonrpc":"2.0","id":1,"result":{}},"resp_headers":{"Content-Type":["application/json"]},"resp_code":200,"resp_type":"jsonrpc_response"}"#;
        let l = json::Limits {
            max_depth: 8,
            max_len: 1024,
        };
        let mut rng = crate::proto::testutil::XorShift::new(0xbeef);
        for _ in 0..4000 {
            let input = rng.mutate(sample);
            if let Ok(d) = decode(&input, &l) {
                assert!((100..=599).contains(&d.resp_code));
                assert!(!d.request_id.is_empty());
                if let Some(r) = d.resp_json {
                    assert_eq!(json::validate(&input[r], &l), Ok(()));
                }
            }
        }
    }
}
