//! JSON-RPC for the sample server, sans-IO: one POST body in, one [`Reply`]
//! out. Ids are copied from the request as raw bytes, so a big integer or an
//! escaped string id comes back exactly as the client wrote it.

use crate::proto::json::{self, JsonError, Limits};
use crate::proto::jsonrpc::{self, MessageKind};

use super::tools;

pub const SERVER_NAME: &str = "mcp-tunnel-sample";

/// Protocol revisions answered with themselves in `initialize`, newest first;
/// any other requested revision gets the newest.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const INVALID_PARAMS: i32 = -32602;

#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// A notification or a client's answer: 202, no body.
    Accepted,
    /// One JSON-RPC message (result or error) with this HTTP status.
    Message { status: u16, body: Vec<u8> },
    /// Progress notifications, then the final message: an SSE stream.
    Progress {
        notifications: Vec<Vec<u8>>,
        last: Vec<u8>,
    },
}

/// The reply plus what the HTTP layer needs to know about the request.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reply: Reply,
    /// The JSON-RPC method, when the body had one (for the log line).
    pub method: Option<String>,
    /// A successful `initialize`: the HTTP layer issues a session.
    pub opens_session: bool,
}

/// Handles one POSTed JSON-RPC message. `can_stream`: the client accepts
/// `text/event-stream`, so progress may precede the answer.
pub fn handle(body: &[u8], can_stream: bool) -> Outcome {
    let limits = Limits::default();
    if let Err(e) = json::validate(body, &limits) {
        return failure(PARSE_ERROR, &e.to_string());
    }
    let start = json::skip_ws(body, 0);
    if body.get(start) == Some(&b'[') {
        return failure(INVALID_REQUEST, "batches are not supported");
    }
    let info = match jsonrpc::inspect(body, &limits) {
        Ok(info) => info,
        Err(JsonError::NotJsonRpc(what)) => return failure(INVALID_REQUEST, what),
        Err(JsonError::NotAnObject) => return failure(INVALID_REQUEST, "not a JSON object"),
        // Parsers disagree on which duplicate wins: refuse rather than guess.
        Err(JsonError::DuplicateKey(_)) => return failure(INVALID_REQUEST, "duplicate key"),
        Err(e) => return failure(PARSE_ERROR, &e.to_string()),
    };
    let method = info.method.clone();
    let id = match (info.kind, info.id_bytes(body)) {
        (MessageKind::Request, Some(id)) => id,
        // Notifications and answers to server requests need no reply.
        _ => {
            return Outcome {
                reply: Reply::Accepted,
                method,
                opens_session: false,
            }
        }
    };
    let params = match params(body, &limits) {
        Ok(p) => p,
        Err(why) => return answer(method, error(id, INVALID_PARAMS, why)),
    };
    let name = method.as_deref().unwrap_or_default();
    match name {
        "initialize" => match negotiate(params, &limits) {
            Ok(version) => Outcome {
                reply: message(result(id, &initialize_result(version))),
                method,
                opens_session: true,
            },
            Err(why) => answer(method, error(id, INVALID_PARAMS, why)),
        },
        "ping" => answer(method, result(id, b"{}")),
        "tools/list" => answer(method, result(id, tools::LIST_RESULT.as_bytes())),
        "tools/call" => {
            let reply = call_tool(id, params.unwrap_or(b"{}"), can_stream, &limits);
            Outcome {
                reply,
                method,
                opens_session: false,
            }
        }
        other => {
            let msg = format!("method not found: {}", truncate(other, 64));
            answer(method, error(id, METHOD_NOT_FOUND, &msg))
        }
    }
}

fn answer(method: Option<String>, body: Vec<u8>) -> Outcome {
    Outcome {
        reply: message(body),
        method,
        opens_session: false,
    }
}

fn message(body: Vec<u8>) -> Reply {
    Reply::Message { status: 200, body }
}

/// A message that is not a usable request at all: HTTP 400, id null.
fn failure(code: i32, why: &str) -> Outcome {
    let text = match code {
        PARSE_ERROR => format!("parse error: {why}"),
        _ => format!("invalid request: {why}"),
    };
    Outcome {
        reply: Reply::Message {
            status: 400,
            body: error(b"null", code, &text),
        },
        method: None,
        opens_session: false,
    }
}

/// `params` as raw bytes when present; it must be an object.
fn params<'a>(body: &'a [u8], limits: &Limits) -> Result<Option<&'a [u8]>, &'static str> {
    let members = json::object_members(body, limits).map_err(|_| "unreadable message")?;
    let Some((_, range)) = members.iter().find(|(k, _)| k == "params") else {
        return Ok(None);
    };
    let raw = body.get(range.clone()).ok_or("unreadable params")?;
    if json::is_null(raw) {
        return Ok(None);
    }
    if !json::is_object(raw) {
        return Err("params must be an object");
    }
    Ok(Some(raw))
}

fn negotiate(params: Option<&[u8]>, limits: &Limits) -> Result<&'static str, &'static str> {
    let params = params.ok_or("initialize needs params")?;
    let members = json::object_members(params, limits).map_err(|_| "unreadable params")?;
    let (_, r) = members
        .iter()
        .find(|(k, _)| k == "protocolVersion")
        .ok_or("protocolVersion is required")?;
    let raw = params.get(r.clone()).ok_or("unreadable protocolVersion")?;
    if !json::is_string(raw) {
        return Err("protocolVersion must be a string");
    }
    let asked = json::parse_string(raw).map_err(|_| "protocolVersion must be a string")?;
    let newest = SUPPORTED_VERSIONS[0];
    Ok(SUPPORTED_VERSIONS
        .iter()
        .copied()
        .find(|v| *v == asked)
        .unwrap_or(newest))
}

fn initialize_result(version: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"protocolVersion\":");
    json::write_string(&mut out, version);
    out.extend_from_slice(
        b",\"capabilities\":{\"tools\":{\"listChanged\":false}},\"serverInfo\":{\"name\":",
    );
    json::write_string(&mut out, SERVER_NAME);
    out.extend_from_slice(b",\"version\":");
    json::write_string(&mut out, env!("CARGO_PKG_VERSION"));
    out.extend_from_slice(b"},\"instructions\":");
    json::write_string(
        &mut out,
        "A sample server for trying mcp-tunnel: echo, add, progress.",
    );
    out.push(b'}');
    out
}

fn call_tool(id: &[u8], params: &[u8], can_stream: bool, limits: &Limits) -> Reply {
    let output = match tools::call(params, limits) {
        Ok((_, output)) => output,
        // MCP answers an unknown tool with -32602 like any other bad params.
        Err(e) => return message(error(id, INVALID_PARAMS, &truncate(&e.to_string(), 200))),
    };
    let mut content = Vec::with_capacity(output.text.len() + 64);
    content.extend_from_slice(b"{\"content\":[{\"type\":\"text\",\"text\":");
    json::write_string(&mut content, &output.text);
    content.extend_from_slice(b"}],\"isError\":false}");
    let last = result(id, &content);
    match output.progress {
        Some((token, steps)) if can_stream => Reply::Progress {
            notifications: (1..=steps).map(|i| progress(&token, i, steps)).collect(),
            last,
        },
        _ => message(last),
    }
}

fn progress(token: &[u8], step: u64, total: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":");
    out.extend_from_slice(token);
    out.extend_from_slice(
        format!(",\"progress\":{step},\"total\":{total},\"message\":\"step {step}\"}}}}")
            .as_bytes(),
    );
    out
}

/// `{"jsonrpc":"2.0","id":<id>,"result":<result>}` with `id` and `result` raw.
pub fn result(id: &[u8], result: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(id.len() + result.len() + 32);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id);
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result);
    out.push(b'}');
    out
}

/// `{"jsonrpc":"2.0","id":<id>,"error":{"code":..,"message":..}}` with `id` raw.
pub fn error(id: &[u8], code: i32, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(id.len() + message.len() + 64);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id);
    out.extend_from_slice(format!(",\"error\":{{\"code\":{code},\"message\":").as_bytes());
    json::write_string(&mut out, message);
    out.extend_from_slice(b"}}");
    out
}

/// At most `max` characters, so echoed client input stays small.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(outcome: &Outcome) -> (u16, String) {
        match &outcome.reply {
            Reply::Message { status, body } => (*status, String::from_utf8(body.clone()).unwrap()),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn call(body: &str) -> (u16, String) {
        body_of(&handle(body.as_bytes(), false))
    }

    fn valid(s: &str) {
        json::validate(s.as_bytes(), &Limits::default()).unwrap_or_else(|e| panic!("{s}: {e}"));
    }

    #[test]
    fn initialize_answers_the_asked_version_when_supported() {
        let req = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
        let outcome = handle(req.as_bytes(), false);
        assert!(outcome.opens_session);
        let (status, body) = body_of(&outcome);
        assert_eq!(status, 200);
        valid(&body);
        assert!(body.starts_with(r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":"#));
        assert!(body.contains(r#""serverInfo":{"name":"mcp-tunnel-sample""#));
    }

    #[test]
    fn initialize_offers_the_newest_for_an_unknown_version() {
        let req = r#"{"jsonrpc":"2.0","id":"i","method":"initialize","params":{"protocolVersion":"1999-01-01"}}"#;
        let (_, body) = call(req);
        assert!(body.contains(r#""protocolVersion":"2025-11-25""#), "{body}");
    }

    #[test]
    fn initialize_without_version_is_invalid_params() {
        let outcome = handle(
            br#"{"jsonrpc":"2.0","id":2,"method":"initialize","params":{}}"#,
            false,
        );
        assert!(!outcome.opens_session);
        let (_, body) = body_of(&outcome);
        assert!(
            body.starts_with(r#"{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"#),
            "{body}"
        );
    }

    #[test]
    fn ids_come_back_byte_for_byte() {
        for id in [
            "12345678901234567890123",
            "-7",
            r#""a\"b\u00e9\ud83d\ude00""#,
            "null",
            "0",
        ] {
            let req = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
            let (status, body) = call(&req);
            assert_eq!(status, 200);
            assert_eq!(
                body,
                format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#)
            );
        }
    }

    #[test]
    fn notifications_and_client_answers_are_accepted() {
        for msg in [
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
            r#"{"jsonrpc":"2.0","id":5,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":5,"error":{"code":1,"message":"m"}}"#,
        ] {
            assert_eq!(handle(msg.as_bytes(), true).reply, Reply::Accepted, "{msg}");
        }
    }

    #[test]
    fn unknown_method_is_method_not_found() {
        let (status, body) = call(r#"{"jsonrpc":"2.0","id":3,"method":"resources/list"}"#);
        assert_eq!(status, 200);
        valid(&body);
        assert!(body.starts_with(r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"#));
    }

    #[test]
    fn malformed_messages_are_400_with_id_null() {
        let cases = [
            (r#"{"jsonrpc":"2.0","id":1,"method":"#, PARSE_ERROR),
            ("\u{0}", PARSE_ERROR),
            (
                r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
                INVALID_REQUEST,
            ),
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
                INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
                INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
                INVALID_REQUEST,
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":7}"#, INVALID_REQUEST),
            (r#""just a string""#, INVALID_REQUEST),
        ];
        for (msg, code) in cases {
            let (status, body) = call(msg);
            assert_eq!(status, 400, "{msg}");
            valid(&body);
            let expected = format!(r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":{code},"#);
            assert!(body.starts_with(&expected), "{msg} → {body}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed() {
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":{}{}}}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(call(&deep).0, 400);
    }

    #[test]
    fn params_must_be_an_object() {
        let (_, body) = call(r#"{"jsonrpc":"2.0","id":4,"method":"tools/list","params":[1]}"#);
        assert!(body.contains(r#""code":-32602"#), "{body}");
    }

    #[test]
    fn tools_call_echo_and_bad_arguments() {
        let (_, body) = call(
            r#"{"jsonrpc":"2.0","id":"e","method":"tools/call","params":{"name":"echo","arguments":{"message":"hi \"there\""}}}"#,
        );
        valid(&body);
        assert_eq!(
            body,
            r#"{"jsonrpc":"2.0","id":"e","result":{"content":[{"type":"text","text":"hi \"there\""}],"isError":false}}"#
        );
        let (status, body) = call(
            r#"{"jsonrpc":"2.0","id":"e","method":"tools/call","params":{"name":"add","arguments":{"a":"x","b":1}}}"#,
        );
        assert_eq!(status, 200);
        assert!(body.contains(r#""code":-32602"#), "{body}");
        let (_, body) =
            call(r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"nope"}}"#);
        assert!(
            body.contains(r#""code":-32602"#) && body.contains("unknown tool: nope"),
            "{body}"
        );
    }

    #[test]
    fn progress_streams_notifications_then_the_result() {
        let req = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"progress","arguments":{"steps":3},"_meta":{"progressToken":42}}}"#;
        match handle(req, true).reply {
            Reply::Progress {
                notifications,
                last,
            } => {
                assert_eq!(notifications.len(), 3);
                for (i, n) in notifications.iter().enumerate() {
                    let n = String::from_utf8(n.clone()).unwrap();
                    valid(&n);
                    let step = i + 1;
                    assert!(
                        n.contains(&format!(
                            r#""progressToken":42,"progress":{step},"total":3"#
                        )),
                        "{n}"
                    );
                }
                let last = String::from_utf8(last).unwrap();
                assert!(
                    last.starts_with(r#"{"jsonrpc":"2.0","id":7,"result":"#)
                        && last.contains("done 3")
                );
            }
            other => panic!("expected progress, got {other:?}"),
        }
        // Without SSE in Accept there is nowhere to put progress: the answer alone.
        assert!(matches!(
            handle(req, false).reply,
            Reply::Message { status: 200, .. }
        ));
    }

    #[test]
    fn long_method_names_are_truncated_in_errors() {
        let req = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"{}"}}"#,
            "m".repeat(10_000)
        );
        let (_, body) = call(&req);
        assert!(body.len() < 400, "{} bytes", body.len());
    }
}
