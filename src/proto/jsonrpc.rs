//! JSON-RPC message shape: protocol.md "Forwarding to an MCP server" and
//! "Errors from the MCP server" (request vs notification, the id that
//! correlates the final answer, `Mcp-Name` must match the body).
//!
//! Only the classification is read; the message bytes are never re-encoded.
//! A batch (top-level array) is refused with [`JsonError::NotAnObject`]:
//! MCP removed batching and the tunnel carries one message per command.

use std::ops::Range;

use super::json::{self, JsonError, Mode};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Has `method` and an `id` member (even `null`).
    Request,
    /// Has `method`, no `id` member.
    Notification,
    /// Has `result`.
    Response,
    /// Has `error`.
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    pub kind: MessageKind,
    /// Raw bytes range of the `id` value in the inspected message.
    pub id: Option<Range<usize>>,
    pub method: Option<String>,
    /// `params.name` for `tools/call` and `prompts/get`, `params.uri` for `resources/read`.
    pub tool_name: Option<String>,
}

impl MessageInfo {
    /// The raw id bytes within `msg` (the slice `inspect` was given).
    pub fn id_bytes<'a>(&self, msg: &'a [u8]) -> Option<&'a [u8]> {
        self.id.clone().and_then(|r| msg.get(r))
    }
}

/// Classify one JSON-RPC 2.0 message. Requires `"jsonrpc":"2.0"`, a string
/// method, an id that is a string, number or null, and exactly one of
/// `result`/`error` on answers. Duplicate top-level keys are refused.
pub fn inspect(msg: &[u8], limits: &json::Limits) -> Result<MessageInfo, JsonError> {
    let members = json::members(msg, limits, Mode::STRICT, usize::MAX)?;
    let get = |name: &str| {
        members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, r)| r.clone())
    };
    match get("jsonrpc").map(|r| &msg[r]) {
        Some(v) if v == b"\"2.0\"" => {}
        _ => return Err(JsonError::NotJsonRpc("\"jsonrpc\":\"2.0\" missing")),
    }
    let id = get("id");
    if let Some(r) = &id {
        match msg[r.clone()].first() {
            Some(b'"' | b'-' | b'0'..=b'9' | b'n') => {}
            _ => return Err(JsonError::NotJsonRpc("id is not a string, number or null")),
        }
    }
    if let Some(mr) = get("method") {
        let raw = &msg[mr];
        if !json::is_string(raw) {
            return Err(JsonError::NotJsonRpc("method is not a string"));
        }
        let method = json::parse_string(raw)?;
        let tool_name = get("params")
            .map(|r| &msg[r])
            .filter(|p| json::is_object(p))
            .and_then(|p| named_target(&method, p, limits));
        let kind = if id.is_some() {
            MessageKind::Request
        } else {
            MessageKind::Notification
        };
        return Ok(MessageInfo {
            kind,
            id,
            method: Some(method),
            tool_name,
        });
    }
    let kind = match (get("result"), get("error")) {
        (Some(_), None) => MessageKind::Response,
        (None, Some(e)) if json::is_object(&msg[e.clone()]) => MessageKind::Error,
        (None, Some(_)) => return Err(JsonError::NotJsonRpc("error is not an object")),
        (Some(_), Some(_)) => return Err(JsonError::NotJsonRpc("both result and error")),
        (None, None) => return Err(JsonError::NotJsonRpc("no method, result or error")),
    };
    if id.is_none() {
        return Err(JsonError::NotJsonRpc("answer without id"));
    }
    Ok(MessageInfo {
        kind,
        id,
        method: None,
        tool_name: None,
    })
}

/// What the `Mcp-Name` header must equal for `method`, read from `params`.
fn named_target(method: &str, params: &[u8], limits: &json::Limits) -> Option<String> {
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        _ => return None,
    };
    let m = json::members(params, limits, Mode::STRICT, usize::MAX).ok()?;
    let (_, r) = m.iter().find(|(k, _)| k == key)?;
    json::parse_string(&params[r.clone()]).ok()
}

/// True when two raw ids denote the same JSON value: strings compare after
/// unescaping (`"a"` == `"\u0061"`), numbers compare as written
/// integers (`1` == `1`, but `1` != `1.0` and `"1"` != `1`), `null` == `null`.
pub fn same_id(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (a.trim_ascii(), b.trim_ascii());
    if a == b {
        return json::is_string(a) || is_number(a) || json::is_null(a);
    }
    if json::is_string(a) && json::is_string(b) {
        return matches!((json::parse_string(a), json::parse_string(b)), (Ok(x), Ok(y)) if x == y);
    }
    // Different spellings of one integer only differ by a negative zero.
    matches!((a, b), (b"-0", b"0") | (b"0", b"-0"))
}

fn is_number(raw: &[u8]) -> bool {
    let digits = raw.strip_prefix(b"-").unwrap_or(raw);
    !digits.is_empty()
        && digits
            .iter()
            .all(|b| b.is_ascii_digit() || b".eE+-".contains(b))
        && digits[0].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> json::Limits {
        json::Limits::default()
    }

    fn info(s: &str) -> MessageInfo {
        inspect(s.as_bytes(), &lim()).unwrap()
    }

    #[test]
    fn classifies_messages() {
        let m = r#"{"jsonrpc":"2.0","id":"rpc-1","method":"tools/list"}"#;
        let i = info(m);
        assert_eq!(i.kind, MessageKind::Request);
        assert_eq!(i.id_bytes(m.as_bytes()), Some(&b"\"rpc-1\""[..]));
        assert_eq!(i.method.as_deref(), Some("tools/list"));
        assert_eq!(i.tool_name, None);

        let n = info(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!((n.kind, n.id), (MessageKind::Notification, None));

        let m = r#"{"id": 12345678901234567890123 ,"jsonrpc":"2.0","result":{}}"#;
        let r = info(m);
        assert_eq!(r.kind, MessageKind::Response);
        assert_eq!(
            r.id_bytes(m.as_bytes()),
            Some(&b"12345678901234567890123"[..])
        );

        let e = info(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#);
        assert_eq!(e.kind, MessageKind::Error);

        let nullid = info(r#"{"jsonrpc":"2.0","id":null,"method":"m"}"#);
        assert_eq!(nullid.kind, MessageKind::Request);
    }

    #[test]
    fn extracts_named_targets() {
        let t = info(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{}}}"#,
        );
        assert_eq!(t.tool_name.as_deref(), Some("get_weather"));
        let r = info(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#,
        );
        assert_eq!(r.tool_name.as_deref(), Some("file:///a"));
        let p =
            info(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p\u00e9"}}"#);
        assert_eq!(p.tool_name.as_deref(), Some("p\u{e9}"));
        let none = info(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"name":"x"}}"#);
        assert_eq!(none.tool_name, None);
        let weird = info(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#);
        assert_eq!(weird.tool_name, None);
    }

    #[test]
    fn rejects_non_messages() {
        for bad in [
            r#"[{"jsonrpc":"2.0","id":1,"method":"a"}]"#,
            r#"{"id":1,"method":"a"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"a"}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#,
            r#"{"jsonrpc":"2.0","result":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":"x"}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"a"}"#,
            r#"{"jsonrpc":"2.0","id":true,"result":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"result":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":1"#,
            "",
        ] {
            assert!(inspect(bad.as_bytes(), &lim()).is_err(), "{bad}");
        }
        assert_eq!(inspect(br#"[1]"#, &lim()), Err(JsonError::NotAnObject));
    }

    #[test]
    fn id_equality() {
        assert!(same_id(b"1", b"1"));
        assert!(same_id(b"\"a\"", b"\"a\""));
        assert!(same_id(b"\"a\"", b"\"\\u0061\""));
        assert!(same_id(
            b"12345678901234567890123",
            b"12345678901234567890123"
        ));
        assert!(same_id(b"null", b"null"));
        assert!(same_id(b" 7 ", b"7"));
        assert!(!same_id(b"\"1\"", b"1"));
        assert!(!same_id(b"1", b"2"));
        assert!(!same_id(b"1", b"1.0"));
        assert!(!same_id(b"\"a\"", b"\"b\""));
        assert!(!same_id(b"null", b"\"null\""));
        assert!(!same_id(b"{}", b"{}"));
        assert!(!same_id(b"", b""));
    }

    #[test]
    fn fuzz_smoke_inspect() {
        let samples: [&[u8]; 3] = [
            br#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"t"}}"#,
            br#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#,
            br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#,
        ];
        let l = json::Limits {
            max_depth: 8,
            max_len: 512,
        };
        let mut rng = crate::proto::testutil::XorShift::new(0x1d);
        for round in 0..4000 {
            let input = rng.mutate(samples[round % 3]);
            if let Ok(i) = inspect(&input, &l) {
                assert_eq!(json::validate(&input, &l), Ok(()));
                if let Some(id) = i.id_bytes(&input) {
                    assert!(same_id(id, id), "{id:?}");
                }
                assert_eq!(
                    i.method.is_some(),
                    matches!(i.kind, MessageKind::Request | MessageKind::Notification)
                );
            }
        }
    }
}
