//! The sample server's tools: `echo`, `add`, `progress`. Arguments are read
//! from the raw `params` bytes with the validating scanner, so a hostile
//! argument is a `-32602`, never a panic or an unbounded allocation.

use std::fmt;

use crate::proto::json::{self, JsonError, Limits};

/// `progress` reports at most this many steps: a request cannot make the
/// server build an unbounded stream.
pub const MAX_STEPS: u64 = 100;

/// The `tools/list` result (static: the tool set never changes).
pub const LIST_RESULT: &str = concat!(
    r#"{"tools":["#,
    r#"{"name":"echo","description":"Returns the message unchanged.","#,
    r#""inputSchema":{"type":"object","properties":{"message":{"type":"string"}},"required":["message"]}},"#,
    r#"{"name":"add","description":"Adds two integers.","#,
    r#""inputSchema":{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}},"required":["a","b"]}},"#,
    r#"{"name":"progress","description":"Reports progress `steps` times (when the caller sent a progressToken), then answers.","#,
    r#""inputSchema":{"type":"object","properties":{"steps":{"type":"integer","minimum":0,"maximum":100}},"required":["steps"]}}"#,
    r#"]}"#
);

/// What a successful call produced: the answer's text, and when the caller
/// asked for progress, the raw progressToken and the number of steps to report
/// before the answer.
#[derive(Debug, PartialEq, Eq)]
pub struct ToolOutput {
    pub text: String,
    pub progress: Option<(Vec<u8>, u64)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ToolError {
    /// `params` is not an object with a string `name`.
    BadParams(&'static str),
    UnknownTool(String),
    /// The arguments do not fit the tool's input schema.
    BadArguments {
        tool: &'static str,
        why: String,
    },
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolError::BadParams(why) => write!(f, "invalid tools/call params: {why}"),
            ToolError::UnknownTool(name) => write!(f, "unknown tool: {name}"),
            ToolError::BadArguments { tool, why } => {
                write!(f, "invalid arguments for {tool}: {why}")
            }
        }
    }
}

impl std::error::Error for ToolError {}

/// The tool name of a `tools/call`, and what calling it produced.
pub fn call(params: &[u8], limits: &Limits) -> Result<(&'static str, ToolOutput), ToolError> {
    let members =
        json::object_members(params, limits).map_err(|_| ToolError::BadParams("not an object"))?;
    let raw = |key: &str| {
        members
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, r)| params.get(r.clone()))
    };
    let name = raw("name")
        .filter(|r| json::is_string(r))
        .and_then(|r| json::parse_string(r).ok())
        .ok_or(ToolError::BadParams("name must be a string"))?;
    let empty: &[u8] = b"{}";
    let args = raw("arguments").unwrap_or(empty);
    let args = Args::new(args, limits).map_err(|why| ToolError::BadArguments {
        tool: tool_static(&name),
        why,
    })?;
    match name.as_str() {
        "echo" => {
            let text = args.string("message").map_err(bad("echo"))?;
            Ok((
                "echo",
                ToolOutput {
                    text,
                    progress: None,
                },
            ))
        }
        "add" => {
            let a = args.integer("a").map_err(bad("add"))?;
            let b = args.integer("b").map_err(bad("add"))?;
            let sum = a
                .checked_add(b)
                .ok_or_else(|| "the sum does not fit a 64-bit integer".to_owned())
                .map_err(bad("add"))?;
            Ok((
                "add",
                ToolOutput {
                    text: sum.to_string(),
                    progress: None,
                },
            ))
        }
        "progress" => {
            let steps = args.integer("steps").map_err(bad("progress"))?;
            let steps = u64::try_from(steps)
                .ok()
                .filter(|s| *s <= MAX_STEPS)
                .ok_or_else(|| format!("steps must be 0..={MAX_STEPS}"))
                .map_err(bad("progress"))?;
            let token = progress_token(&members, params, limits);
            let text = format!("done {steps}");
            Ok((
                "progress",
                ToolOutput {
                    text,
                    progress: token.map(|t| (t, steps)),
                },
            ))
        }
        _ => Err(ToolError::UnknownTool(name)),
    }
}

fn bad(tool: &'static str) -> impl Fn(String) -> ToolError {
    move |why| ToolError::BadArguments { tool, why }
}

fn tool_static(name: &str) -> &'static str {
    match name {
        "echo" => "echo",
        "add" => "add",
        "progress" => "progress",
        _ => "tool",
    }
}

/// `params._meta.progressToken`, raw (a string or an integer), when present.
fn progress_token(
    members: &[(String, std::ops::Range<usize>)],
    params: &[u8],
    limits: &Limits,
) -> Option<Vec<u8>> {
    let (_, meta) = members.iter().find(|(k, _)| k == "_meta")?;
    let meta = params.get(meta.clone())?;
    let inner = json::object_members(meta, limits).ok()?;
    let (_, token) = inner.iter().find(|(k, _)| k == "progressToken")?;
    let token = meta.get(token.clone())?;
    let usable = json::is_string(token) || token.iter().all(|b| b.is_ascii_digit() || *b == b'-');
    usable.then(|| token.to_vec())
}

/// A tool's `arguments` object.
struct Args<'a> {
    raw: &'a [u8],
    members: Vec<(String, std::ops::Range<usize>)>,
}

impl<'a> Args<'a> {
    fn new(raw: &'a [u8], limits: &Limits) -> Result<Args<'a>, String> {
        let members = json::object_members(raw, limits).map_err(|e| match e {
            JsonError::NotAnObject => "arguments must be an object".to_owned(),
            other => other.to_string(),
        })?;
        Ok(Args { raw, members })
    }

    fn get(&self, key: &str) -> Result<&'a [u8], String> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, r)| self.raw.get(r.clone()))
            .ok_or_else(|| format!("{key} is required"))
    }

    fn string(&self, key: &str) -> Result<String, String> {
        let raw = self.get(key)?;
        if !json::is_string(raw) {
            return Err(format!("{key} must be a string"));
        }
        json::parse_string(raw).map_err(|e| format!("{key}: {e}"))
    }

    /// A JSON integer literal within i64 (no fraction, no exponent).
    fn integer(&self, key: &str) -> Result<i64, String> {
        let raw = self.get(key)?;
        let digits = raw.strip_prefix(b"-").unwrap_or(raw);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(format!("{key} must be an integer"));
        }
        std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| format!("{key} does not fit a 64-bit integer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(params: &str) -> Result<(&'static str, ToolOutput), ToolError> {
        call(params.as_bytes(), &Limits::default())
    }

    fn text(params: &str) -> String {
        match run(params) {
            Ok((_, ToolOutput { text, .. })) => text,
            other => panic!("{params}: {other:?}"),
        }
    }

    #[test]
    fn list_result_is_valid_json() {
        json::validate(LIST_RESULT.as_bytes(), &Limits::default()).unwrap();
    }

    #[test]
    fn echo_returns_the_message_decoded() {
        assert_eq!(
            text(r#"{"name":"echo","arguments":{"message":"a\"b\\c \u00fc \ud83d\ude00"}}"#),
            "a\"b\\c ü 😀"
        );
    }

    #[test]
    fn add_handles_negative_and_rejects_overflow_and_fractions() {
        assert_eq!(text(r#"{"name":"add","arguments":{"a":40,"b":-2}}"#), "38");
        for args in [
            r#"{"a":9223372036854775807,"b":1}"#,
            r#"{"a":1.5,"b":1}"#,
            r#"{"a":1e3,"b":1}"#,
            r#"{"a":"1","b":1}"#,
            r#"{"a":1}"#,
            r#"{"a":99999999999999999999,"b":1}"#,
        ] {
            let p = format!(r#"{{"name":"add","arguments":{args}}}"#);
            assert!(
                matches!(run(&p), Err(ToolError::BadArguments { tool: "add", .. })),
                "{p}"
            );
        }
    }

    #[test]
    fn progress_keeps_the_raw_token_and_bounds_steps() {
        let got = run(
            r#"{"name":"progress","arguments":{"steps":3},"_meta":{"progressToken":"t\u00e9"}}"#,
        );
        assert_eq!(
            got,
            Ok((
                "progress",
                ToolOutput {
                    text: "done 3".into(),
                    progress: Some((br#""t\u00e9""#.to_vec(), 3))
                }
            ))
        );
        let no_token = run(r#"{"name":"progress","arguments":{"steps":2}}"#);
        assert!(matches!(
            no_token,
            Ok((_, ToolOutput { progress: None, .. }))
        ));
        for steps in ["101", "-1", "1000000000000"] {
            let p = format!(r#"{{"name":"progress","arguments":{{"steps":{steps}}}}}"#);
            assert!(
                matches!(run(&p), Err(ToolError::BadArguments { .. })),
                "{p}"
            );
        }
    }

    #[test]
    fn unknown_tool_and_bad_params() {
        assert_eq!(
            run(r#"{"name":"nope"}"#),
            Err(ToolError::UnknownTool("nope".into()))
        );
        assert!(matches!(run(r#"{"name":7}"#), Err(ToolError::BadParams(_))));
        assert!(matches!(run(r#"[]"#), Err(ToolError::BadParams(_))));
        assert!(matches!(
            run(r#"{"name":"echo","arguments":[1]}"#),
            Err(ToolError::BadArguments { tool: "echo", .. })
        ));
        assert!(matches!(
            run(r#"{"name":"echo","arguments":{"message":1}}"#),
            Err(ToolError::BadArguments { .. })
        ));
    }
}
