//! JSON-RPC message shape: protocol.md "Forwarding to an MCP server" and
//! "Errors from the MCP server" (request vs notification, the id that
//! correlates the final answer, `Mcp-Name` must match the body).
//!
//! Only the classification is read; the message bytes are never re-encoded.
//! A batch (top-level array) is refused with [`JsonError::NotAnObject`]:
//! MCP removed batching and the tunnel carries one message per command.

use std::ops::Range;

use super::json::{self, After, JsonError, Mode};

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
///
/// One strict pass over the message, `params` included (its `name`/`uri`
/// are picked up on the way); only an unusual message (many unknown keys,
/// escaped keys in `params`) is read again.
pub fn inspect(msg: &[u8], limits: &json::Limits) -> Result<MessageInfo, JsonError> {
    let parts = match scan_message(msg, limits)? {
        Some(parts) => parts,
        None => {
            let members = json::members(msg, limits, Mode::STRICT, usize::MAX)?;
            Parts::from_members(&members)
        }
    };
    classify(msg, parts, limits)
}

/// The members `inspect` looks at (raw value ranges).
#[derive(Default)]
struct Parts {
    jsonrpc: Option<Range<usize>>,
    id: Option<Range<usize>>,
    method: Option<Range<usize>>,
    params: Option<Range<usize>>,
    result: Option<Range<usize>>,
    error: Option<Range<usize>>,
    targets: Targets,
}

/// What the one pass learnt about `params`.
#[derive(Default)]
enum Targets {
    /// Not read: look `params` up again if a target is needed.
    #[default]
    Rescan,
    /// Duplicate keys in `params`: no target.
    Duplicates,
    /// First `name` and `uri` values.
    Found {
        name: Option<Range<usize>>,
        uri: Option<Range<usize>>,
    },
}

impl Parts {
    /// The slot for an (unescaped) key.
    fn slot(&mut self, key: &[u8]) -> Option<&mut Option<Range<usize>>> {
        Some(match key {
            b"jsonrpc" => &mut self.jsonrpc,
            b"id" => &mut self.id,
            b"method" => &mut self.method,
            b"params" => &mut self.params,
            b"result" => &mut self.result,
            b"error" => &mut self.error,
            _ => return None,
        })
    }

    fn from_members(members: &json::Members<'_>) -> Parts {
        let mut p = Parts::default();
        for (k, r) in members {
            if let Some(slot) = p.slot(k.as_bytes()) {
                slot.get_or_insert_with(|| r.clone());
            }
        }
        p
    }
}

/// Unknown top-level keys compared for duplicates in the one pass; more
/// goes to the general object reader.
const FAST_UNKNOWN_KEYS: usize = 16;

/// The top-level object, as `json::members` in strict mode would read it
/// (same errors, in the same order); `Ok(None)` when the caller should use
/// `json::members` instead (many unknown keys, or an escaped key: keys
/// compare after unescaping).
fn scan_message(msg: &[u8], limits: &json::Limits) -> Result<Option<Parts>, JsonError> {
    if msg.len() > limits.max_len {
        return Err(JsonError::TooLarge);
    }
    let (mut i, inner_depth) = json::open_object(msg, limits.max_depth)?;
    let mut parts = Parts::default();
    let mut unknown: Vec<&[u8]> = Vec::new();
    if msg.get(i) == Some(&b'}') {
        json::expect_end(msg, i + 1)?;
        return Ok(Some(parts));
    }
    loop {
        if msg.get(i).is_some_and(|&b| b != b'"') {
            return Err(JsonError::Syntax {
                offset: i,
                what: "an object key",
            });
        }
        let key_end = json::scan_string(msg, i, true)?;
        let key = &msg[i + 1..key_end - 1];
        if key.contains(&b'\\') {
            return Ok(None);
        }
        i = json::skip_ws(msg, key_end);
        json::expect_byte(msg, i, b':', "':'")?;
        let vstart = json::skip_ws(msg, i + 1);
        let vend = if key == b"params" && parts.params.is_none() && msg.get(vstart) == Some(&b'{') {
            let (end, targets) = scan_params(msg, vstart, inner_depth)?;
            parts.targets = targets;
            end
        } else {
            json::scan_value(msg, vstart, inner_depth, true)?
        };
        let duplicate = || {
            // Unescaped and strictly scanned: the key is its own text.
            JsonError::DuplicateKey(json::truncate_key(
                String::from_utf8_lossy(key).into_owned(),
            ))
        };
        match parts.slot(key) {
            Some(Some(_)) => return Err(duplicate()),
            Some(slot) => *slot = Some(vstart..vend),
            None if unknown.contains(&key) => return Err(duplicate()),
            None if unknown.len() >= FAST_UNKNOWN_KEYS => return Ok(None),
            None => unknown.push(key),
        }
        match json::after_value(msg, vend, b'}')? {
            After::Next(next) => i = next,
            After::Closed(end) => {
                json::expect_end(msg, end)?;
                return Ok(Some(parts));
            }
        }
    }
}

/// Keys of `params` remembered for the duplicate check in the one pass.
const FAST_PARAMS_KEYS: usize = 16;

/// Scan the `params` object at `i` (its `{`) as `json::scan_value` would
/// (same errors), noting its `name` and `uri`. `depth_left` counts the
/// object itself.
fn scan_params(msg: &[u8], i: usize, depth_left: usize) -> Result<(usize, Targets), JsonError> {
    if depth_left == 0 {
        return Err(JsonError::TooDeep);
    }
    let inner_depth = depth_left - 1;
    let (mut name, mut uri) = (None, None);
    let mut keys = [(0usize, 0usize); FAST_PARAMS_KEYS];
    let mut nkeys = 0;
    let (mut rescan, mut duplicates) = (false, false);
    let mut j = json::skip_ws(msg, i + 1);
    if msg.get(j) == Some(&b'}') {
        return Ok((j + 1, Targets::Found { name, uri }));
    }
    loop {
        if msg.get(j).is_some_and(|&b| b != b'"') {
            return Err(JsonError::Syntax {
                offset: j,
                what: "an object key",
            });
        }
        let key_end = json::scan_string(msg, j, true)?;
        let key = (j + 1, key_end - 1);
        j = json::skip_ws(msg, key_end);
        json::expect_byte(msg, j, b':', "':'")?;
        let vstart = json::skip_ws(msg, j + 1);
        let vend = json::scan_value(msg, vstart, inner_depth, true)?;
        let raw_key = &msg[key.0..key.1];
        if raw_key.contains(&b'\\') || nkeys == FAST_PARAMS_KEYS {
            // Escaped keys compare after unescaping: left to the general reader.
            rescan = true;
        } else if !rescan {
            duplicates |= keys[..nkeys].iter().any(|&(a, b)| &msg[a..b] == raw_key);
            keys[nkeys] = key;
            nkeys += 1;
            match raw_key {
                b"name" if name.is_none() => name = Some(vstart..vend),
                b"uri" if uri.is_none() => uri = Some(vstart..vend),
                _ => {}
            }
        }
        match json::after_value(msg, vend, b'}')? {
            After::Next(next) => j = next,
            After::Closed(end) => {
                let targets = if rescan {
                    Targets::Rescan
                } else if duplicates {
                    Targets::Duplicates
                } else {
                    Targets::Found { name, uri }
                };
                return Ok((end, targets));
            }
        }
    }
}

fn classify(msg: &[u8], p: Parts, limits: &json::Limits) -> Result<MessageInfo, JsonError> {
    match p.jsonrpc.clone().map(|r| &msg[r]) {
        Some(v) if v == b"\"2.0\"" => {}
        _ => return Err(JsonError::NotJsonRpc("\"jsonrpc\":\"2.0\" missing")),
    }
    let id = p.id.clone();
    if let Some(r) = &id {
        match msg[r.clone()].first() {
            Some(b'"' | b'-' | b'0'..=b'9' | b'n') => {}
            _ => return Err(JsonError::NotJsonRpc("id is not a string, number or null")),
        }
    }
    if let Some(mr) = p.method.clone() {
        // Strictly scanned above: a string needs no second check.
        let method = json::scanned_string(&msg[mr])
            .ok_or(JsonError::NotJsonRpc("method is not a string"))?;
        let tool_name = p
            .params
            .clone()
            .map(|r| &msg[r])
            .filter(|params| json::is_object(params))
            .and_then(|params| match p.targets {
                Targets::Rescan => named_target(&method, params, limits),
                Targets::Duplicates => None,
                Targets::Found { name, uri } => match method.as_str() {
                    "tools/call" | "prompts/get" => name,
                    "resources/read" => uri,
                    _ => None,
                }
                .and_then(|r| json::scanned_string(&msg[r])),
            });
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
    let kind = match (p.result, p.error) {
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

    /// inspect before the one-pass rewrite: `json::members`, then `params` again.
    fn reference_inspect(msg: &[u8], limits: &json::Limits) -> Result<MessageInfo, JsonError> {
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

    #[test]
    fn one_pass_params_cases() {
        let many = |n: usize, prefix: &str| {
            (0..n)
                .map(|k| format!("\"{prefix}{k}\":{k}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let cases = [
            // Duplicate keys in params: no target, not an error.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"x":1,"name":"a","x":2}}"#.to_string(),
            // Escaped keys compare after unescaping.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"n\u0061me":"a"}}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","n\u0061me":"b"}}"#.to_string(),
            // params before method, uri for resources/read, second params.
            r#"{"params":{"uri":"u","name":"n"},"jsonrpc":"2.0","id":1,"method":"resources/read"}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"},"params":{}}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[{"name":"a"}]}"#.to_string(),
            // More keys than the one pass remembers.
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{{},"name":"t"}}}}"#, many(20, "p")),
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{{},"p3":0}}}}"#, many(20, "p")),
            format!(r#"{{"jsonrpc":"2.0","id":1,{},"method":"m"}}"#, many(20, "u")),
            format!(r#"{{"jsonrpc":"2.0","id":1,{},"u19":0,"method":"m"}}"#, many(20, "u")),
            // Escaped top-level keys go to the general reader.
            r#"{"json\u0072pc":"2.0","id":1,"method":"m"}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":1,"\u0069d":2,"result":1}"#.to_string(),
            // Errors inside params, in order.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name" "a"}}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a",}}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"a":[[[1]]]}}"#.to_string(),
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"\u{e9}\"".to_string(),
        ];
        let l = json::Limits {
            max_depth: 4,
            ..lim()
        };
        for c in &cases {
            assert_eq!(
                inspect(c.as_bytes(), &l),
                reference_inspect(c.as_bytes(), &l),
                "{c}"
            );
        }
        assert_eq!(info(&cases[0]).tool_name, None);
        assert_eq!(info(&cases[2]).tool_name.as_deref(), Some("a"));
        assert_eq!(info(&cases[4]).tool_name.as_deref(), Some("u"));
        assert_eq!(info(&cases[7]).tool_name.as_deref(), Some("t"));
        assert_eq!(info(&cases[8]).tool_name, None);
        assert_eq!(
            inspect(cases[10].as_bytes(), &lim()),
            Err(JsonError::DuplicateKey("u19".into()))
        );
        assert_eq!(inspect(cases[15].as_bytes(), &l), Err(JsonError::TooDeep));
        assert_eq!(info(&cases[11]).method.as_deref(), Some("m"));
        assert_eq!(
            inspect(cases[12].as_bytes(), &lim()),
            Err(JsonError::DuplicateKey("id".into()))
        );
    }

    #[test]
    fn one_pass_matches_the_two_pass_reference_on_mutations() {
        let samples: [&[u8]; 4] = [
            br#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"t","arguments":{"a":[1,"\u00e9"]}}}"#,
            br#"{"params":{"uri":"file:///a"},"jsonrpc":"2.0","id":3,"method":"resources/read","z":null}"#,
            br#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#,
            br#"{"jsonrpc":"2.0","method":"prompts/get","params":{"name":"p","name":"q"}}"#,
        ];
        let l = json::Limits {
            max_depth: 5,
            max_len: 512,
        };
        let mut rng = crate::proto::testutil::XorShift::new(0x1e5);
        for round in 0..8000 {
            let input = rng.mutate(samples[round % samples.len()]);
            assert_eq!(
                inspect(&input, &l),
                reference_inspect(&input, &l),
                "{}",
                String::from_utf8_lossy(&input)
            );
        }
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
