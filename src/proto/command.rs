//! Poll commands: protocol.md "Poll" (the `{"commands":[...]}` body, command
//! fields, dispatch on `command_type`, unknown fields ignored, unknown types
//! skipped, `channel` absent = main, `response_timeout` fail-open).
//!
//! Outcomes for hostile bodies (documented contract for the agent):
//! - Whole body unusable ([`PollError`]): larger than `max_body`, not JSON
//!   structurally (truncated, trailing garbage, too deep), top level not an
//!   object, duplicate top-level keys, `commands` missing or not an array,
//!   more than `max_commands` commands. Nothing in it is executed.
//! - One command unusable ([`Decoded::Skipped`], the rest still run): invalid
//!   UTF-8 or duplicate keys inside it, missing/ill-typed required fields,
//!   bad channel, unknown `command_type`, bad/too many/too large headers.
//! - Usable with a warning: invalid `response_timeout` (no deadline).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use super::channel::Channel;
use super::headers::{is_valid_name, is_valid_value};
use super::json::{self, After, JsonError, Mode};
use super::timeout::{parse_response_timeout, TimeoutError};

/// Most members we look at in one command object or the poll object; a real
/// command has eight, so anything near this is an attack, not a newer server.
const MAX_FIELDS: usize = 1024;
/// Longest text echoed from the input into a diagnostic.
const MAX_ECHO: usize = 64;
/// Longest shard token we accept (it becomes a header value).
pub const MAX_SHARD_TOKEN: usize = 4096;

/// Routes the response POST to the right control-plane shard. Echoed only in
/// the `X-Tunnel-Shard-Token` header, so it is restricted to visible ASCII.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ShardToken(String);

impl ShardToken {
    /// `None` unless 1..=4096 bytes of visible ASCII (safe as a header value).
    pub fn parse(s: &str) -> Option<ShardToken> {
        ShardToken::is_valid(s).then(|| ShardToken(s.to_owned()))
    }

    fn is_valid(s: &str) -> bool {
        !s.is_empty() && s.len() <= MAX_SHARD_TOKEN && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
    }

    /// [`ShardToken::parse`] keeping the given string.
    fn from_string(s: String) -> Option<ShardToken> {
        ShardToken::is_valid(&s).then_some(ShardToken(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ShardToken {
    // Tokens can be long; the prefix is enough to correlate log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.0.chars().take(16).collect();
        if prefix.len() < self.0.len() {
            write!(f, "ShardToken({prefix}…)")
        } else {
            write!(f, "ShardToken({prefix})")
        }
    }
}

impl fmt::Display for ShardToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One header line; names as received.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

impl Header {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// True for header names whose values are credentials and must never be logged.
pub fn is_sensitive_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [
        "auth", "cookie", "token", "secret", "key", "password", "session",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_sensitive_header(&self.name) {
            write!(f, "{}: <redacted>", self.name)
        } else {
            write!(f, "{}: {:?}", self.name, self.value)
        }
    }
}

/// What the command asks for.
#[derive(Clone, PartialEq, Eq)]
pub enum CommandKind {
    /// Raw bytes of the `"jsonrpc"` value, exactly as in the poll body.
    JsonRpc { body: Vec<u8> },
    /// Close the MCP session named by the command's `Mcp-Session-Id` header.
    SessionTermination,
}

impl fmt::Debug for CommandKind {
    // The body is MCP payload: length only, never contents, in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandKind::JsonRpc { body } => write!(f, "JsonRpc({} bytes)", body.len()),
            CommandKind::SessionTermination => f.write_str("SessionTermination"),
        }
    }
}

/// Something odd in a command that did not stop it from running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandWarning {
    /// `response_timeout` did not match the grammar; the command runs without a deadline.
    ResponseTimeoutInvalid { raw: String, error: TimeoutError },
    /// `response_timeout` was a number or other non-string; no deadline.
    ResponseTimeoutNotAString,
}

impl fmt::Display for CommandWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandWarning::ResponseTimeoutInvalid { raw, error } => write!(
                f,
                "ignoring invalid response_timeout {:?} ({error}); no deadline",
                raw.escape_debug().to_string()
            ),
            CommandWarning::ResponseTimeoutNotAString => {
                f.write_str("ignoring non-string response_timeout; no deadline")
            }
        }
    }
}

/// One decoded command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub request_id: String,
    pub shard_token: ShardToken,
    /// `main` when absent or null.
    pub channel: Channel,
    /// Informational only: never used for deadlines.
    pub created_at: Option<String>,
    /// Absent, null or invalid → `None` (fail open); invalid is in `warnings`.
    pub response_timeout: Option<Duration>,
    /// The multi-valued map flattened, order preserved.
    pub headers: Vec<Header>,
    pub kind: CommandKind,
    pub warnings: Vec<CommandWarning>,
}

impl Command {
    /// Values of header `name` (case-insensitive), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

/// One entry of a poll batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    Command(Command),
    /// Not executed; log it with the request id (when one could be read) and move on.
    Skipped {
        request_id: Option<String>,
        reason: SkipReason,
    },
}

/// Why one command was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// `command_type` we do not know (clipped to 64 bytes).
    UnknownType(String),
    MissingField(&'static str),
    BadField {
        field: &'static str,
        why: String,
    },
    /// The command object itself is not acceptable JSON (UTF-8, duplicates, shape).
    Json(JsonError),
    /// The channel name (clipped) is not canonical.
    BadChannel(String),
    TooManyHeaders {
        max: usize,
    },
    HeadersTooLarge {
        max: usize,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::UnknownType(t) => {
                write!(f, "unknown command_type {:?}", t.escape_debug().to_string())
            }
            SkipReason::MissingField(n) => write!(f, "missing field {n}"),
            SkipReason::BadField { field, why } => write!(f, "bad field {field}: {why}"),
            SkipReason::Json(e) => write!(f, "command is not acceptable JSON: {e}"),
            SkipReason::BadChannel(c) => {
                write!(f, "invalid channel {:?}", c.escape_debug().to_string())
            }
            SkipReason::TooManyHeaders { max } => write!(f, "more than {max} header values"),
            SkipReason::HeadersTooLarge { max } => write!(f, "headers exceed {max} bytes"),
        }
    }
}

/// Bounds for one poll body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollLimits {
    pub max_body: usize,
    pub max_commands: usize,
    /// Header values per command (after flattening).
    pub max_headers: usize,
    /// Sum of header name and value bytes per command.
    pub max_header_bytes: usize,
    pub json: json::Limits,
}

impl Default for PollLimits {
    fn default() -> Self {
        PollLimits {
            max_body: 16 * 1024 * 1024,
            max_commands: 1000,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            json: json::Limits::default(),
        }
    }
}

/// The whole poll body is unusable; nothing in it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PollError {
    TooLarge { len: usize, max: usize },
    Json(JsonError),
    NotAnObject,
    MissingCommands,
    CommandsNotAnArray,
    TooManyCommands { max: usize },
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollError::TooLarge { len, max } => {
                write!(f, "poll body is {len} bytes, the limit is {max}")
            }
            PollError::Json(e) => write!(f, "poll body is not valid JSON: {e}"),
            PollError::NotAnObject => f.write_str("poll body is not a JSON object"),
            PollError::MissingCommands => f.write_str("poll body has no \"commands\""),
            PollError::CommandsNotAnArray => f.write_str("poll \"commands\" is not an array"),
            PollError::TooManyCommands { max } => {
                write!(f, "poll body has more than {max} commands")
            }
        }
    }
}

impl std::error::Error for PollError {}

fn clip(s: &str) -> String {
    s.chars().take(MAX_ECHO).collect()
}

fn field<'a>(
    body: &'a [u8],
    members: &[(Cow<'_, str>, Range<usize>)],
    name: &str,
) -> Option<&'a [u8]> {
    members
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, r)| &body[r.clone()])
}

/// Decode a 200 poll body. One bad command is a `Skipped` entry, not an error
/// for the batch. `{"commands":null}` is an empty batch, like the reference client.
///
/// One pass over the body: each command is decoded where the scanner meets
/// it. The outcome is the one of "check the whole body's structure, then
/// decode each command on its own": a structural error anywhere still fails
/// the batch (whatever was decoded before it is dropped), and the
/// batch-shape errors (missing or non-array `commands`, too many commands)
/// are reported only for a body that is structurally sound. A command that
/// is not acceptable JSON on its own (bad UTF-8, duplicate keys, too many
/// fields) is rare: it is scanned again by the per-command path, which gives
/// its skip reason and best-effort request id.
pub fn decode_poll(body: &[u8], limits: &PollLimits) -> Result<Vec<Decoded>, PollError> {
    if body.len() > limits.max_body {
        return Err(PollError::TooLarge {
            len: body.len(),
            max: limits.max_body,
        });
    }
    match poll_batch(body, limits).map_err(|e| match e {
        JsonError::NotAnObject => PollError::NotAnObject,
        e => PollError::Json(e),
    })? {
        Batch::Missing => Err(PollError::MissingCommands),
        Batch::Null => Ok(Vec::new()),
        Batch::NotAnArray => Err(PollError::CommandsNotAnArray),
        Batch::TooMany => Err(PollError::TooManyCommands {
            max: limits.max_commands,
        }),
        Batch::Commands(v) => Ok(v),
    }
}

/// What the `commands` member of a structurally sound poll body held.
enum Batch {
    Missing,
    Null,
    NotAnArray,
    TooMany,
    Commands(Vec<Decoded>),
}

/// The top-level object of a poll body; `Err` is a structural problem of the
/// whole body (or its own duplicate keys / member count).
fn poll_batch(body: &[u8], limits: &PollLimits) -> Result<Batch, JsonError> {
    let (mut i, inner_depth) = json::open_object(body, limits.json.max_depth)?;
    let mut keys: json::Members<'_> = Vec::new();
    let mut seen = None;
    let mut batch = Batch::Missing;
    if body.get(i) == Some(&b'}') {
        json::expect_end(body, i + 1)?;
        return Ok(batch);
    }
    loop {
        if body.get(i).is_some_and(|&b| b != b'"') {
            return Err(JsonError::Syntax {
                offset: i,
                what: "an object key",
            });
        }
        let key_end = json::scan_string(body, i, false)?;
        let key = json::scanned_str(&body[i + 1..key_end - 1]);
        i = json::skip_ws(body, key_end);
        json::expect_byte(body, i, b':', "':'")?;
        let vstart = json::skip_ws(body, i + 1);
        // A second `commands` is a duplicate: scanned only to report that.
        let vend = if key == "commands" && matches!(batch, Batch::Missing) {
            let (end, b) = commands_value(body, vstart, inner_depth, limits)?;
            batch = b;
            end
        } else {
            json::scan_value(body, vstart, inner_depth, false)?
        };
        if keys.len() >= MAX_FIELDS {
            return Err(JsonError::TooManyItems { max: MAX_FIELDS });
        }
        if json::is_duplicate(&key, &keys, &mut seen) {
            return Err(JsonError::DuplicateKey(json::truncate_key(
                key.into_owned(),
            )));
        }
        keys.push((key, vstart..vend));
        match json::after_value(body, vend, b'}')? {
            After::Next(next) => i = next,
            After::Closed(end) => {
                json::expect_end(body, end)?;
                return Ok(batch);
            }
        }
    }
}

/// The `commands` value at `i`, decoded in place; returns where it ends.
/// `depth_left` counts the array itself.
fn commands_value(
    body: &[u8],
    i: usize,
    depth_left: usize,
    limits: &PollLimits,
) -> Result<(usize, Batch), JsonError> {
    if body.get(i) != Some(&b'[') {
        let end = json::scan_value(body, i, depth_left, false)?;
        let batch = if json::is_null(&body[i..end]) {
            Batch::Null
        } else {
            Batch::NotAnArray
        };
        return Ok((end, batch));
    }
    if depth_left == 0 {
        return Err(JsonError::TooDeep);
    }
    let elem_depth = depth_left - 1;
    let mut out = Vec::new();
    let mut too_many = false;
    let mut j = json::skip_ws(body, i + 1);
    if body.get(j) == Some(&b']') {
        return Ok((j + 1, Batch::Commands(out)));
    }
    loop {
        // Past the limit the batch fails; the rest is only checked for structure.
        let end = if too_many || out.len() >= limits.max_commands {
            too_many = true;
            json::scan_value(body, j, elem_depth, false)?
        } else {
            let (end, decoded) = command_at(body, j, elem_depth, limits)?;
            out.push(decoded);
            end
        };
        match json::after_value(body, end, b']')? {
            After::Next(next) => j = next,
            After::Closed(end) if too_many => return Ok((end, Batch::TooMany)),
            After::Closed(end) => return Ok((end, Batch::Commands(out))),
        }
    }
}

/// The command element at `i`; `Err` only for a structural error of the body.
fn command_at(
    body: &[u8],
    i: usize,
    depth_left: usize,
    limits: &PollLimits,
) -> Result<(usize, Decoded), JsonError> {
    if body.get(i) == Some(&b'{') && depth_left > 0 {
        if let Some((end, fields)) = command_fields(body, i, depth_left - 1)? {
            if end - i <= limits.json.max_len {
                return Ok((end, decode_fields(&fields, limits)));
            }
        }
    }
    // Not an object, or not acceptable on its own: structure first (a
    // structural error is the batch's), then the per-command path.
    let end = json::scan_value(body, i, depth_left, false)?;
    Ok((end, decode_command(&body[i..end], limits)))
}

/// The fields of a command, each the raw value of its first occurrence.
#[derive(Default)]
struct Fields<'a> {
    request_id: Option<&'a [u8]>,
    command_type: Option<&'a [u8]>,
    shard_token: Option<&'a [u8]>,
    channel: Option<&'a [u8]>,
    created_at: Option<&'a [u8]>,
    response_timeout: Option<&'a [u8]>,
    headers: Option<&'a [u8]>,
    jsonrpc: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// The slot for an (unescaped) key.
    fn slot(&mut self, key: &[u8]) -> Option<&mut Option<&'a [u8]>> {
        Some(match key {
            b"request_id" => &mut self.request_id,
            b"command_type" => &mut self.command_type,
            b"shard_token" => &mut self.shard_token,
            b"channel" => &mut self.channel,
            b"created_at" => &mut self.created_at,
            b"response_timeout" => &mut self.response_timeout,
            b"headers" => &mut self.headers,
            b"jsonrpc" => &mut self.jsonrpc,
            _ => return None,
        })
    }

    fn from_members(bytes: &'a [u8], members: &[(Cow<'_, str>, Range<usize>)]) -> Fields<'a> {
        let mut f = Fields::default();
        for (k, r) in members {
            if let Some(slot) = f.slot(k.as_bytes()) {
                if slot.is_none() {
                    *slot = Some(&bytes[r.clone()]);
                }
            }
        }
        f
    }
}

/// Unknown keys of one command compared for duplicates on the fast path;
/// more than this goes to the per-command path.
const FAST_UNKNOWN_KEYS: usize = 16;

/// The members of the command object at `i` (its `{`), scanned strictly in
/// one pass. `Ok(None)` when the command is not acceptable JSON on its own
/// (UTF-8, duplicate keys, too many fields), or has an escaped key (compared
/// only after unescaping): the caller takes the per-command path.
/// `depth_left` is for the member values.
fn command_fields(
    body: &[u8],
    i: usize,
    depth_left: usize,
) -> Result<Option<(usize, Fields<'_>)>, JsonError> {
    /// Strict scanning differs from structural scanning only by UTF-8 errors.
    fn strict<T>(r: Result<T, JsonError>) -> Result<Option<T>, JsonError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(JsonError::InvalidUtf8 { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
    let mut fields = Fields::default();
    let mut unknown: Vec<&[u8]> = Vec::new();
    let mut count = 0usize;
    let mut j = json::skip_ws(body, i + 1);
    if body.get(j) == Some(&b'}') {
        return Ok(Some((j + 1, fields)));
    }
    loop {
        if body.get(j).is_some_and(|&b| b != b'"') {
            return Err(JsonError::Syntax {
                offset: j,
                what: "an object key",
            });
        }
        let Some(key_end) = strict(json::scan_string(body, j, true))? else {
            return Ok(None);
        };
        let key = &body[j + 1..key_end - 1];
        if key.contains(&b'\\') {
            return Ok(None);
        }
        j = json::skip_ws(body, key_end);
        json::expect_byte(body, j, b':', "':'")?;
        let vstart = json::skip_ws(body, j + 1);
        let Some(vend) = strict(json::scan_value(body, vstart, depth_left, true))? else {
            return Ok(None);
        };
        count += 1;
        if count > MAX_FIELDS {
            return Ok(None);
        }
        match fields.slot(key) {
            Some(Some(_)) => return Ok(None),
            Some(slot) => *slot = Some(&body[vstart..vend]),
            None if unknown.len() >= FAST_UNKNOWN_KEYS || unknown.contains(&key) => {
                return Ok(None)
            }
            None => unknown.push(key),
        }
        match json::after_value(body, vend, b'}')? {
            After::Next(next) => j = next,
            After::Closed(end) => return Ok(Some((end, fields))),
        }
    }
}

fn skipped(request_id: Option<&str>, reason: SkipReason) -> Decoded {
    Decoded::Skipped {
        request_id: request_id.map(str::to_owned),
        reason,
    }
}

fn bad(field: &'static str, why: impl Into<String>) -> SkipReason {
    SkipReason::BadField {
        field,
        why: why.into(),
    }
}

/// A request id for the log line of a command that is not acceptable JSON.
fn best_effort_request_id(bytes: &[u8], limits: &PollLimits) -> Option<String> {
    let m = json::members(bytes, &limits.json, Mode::LENIENT, MAX_FIELDS).ok()?;
    let raw = field(bytes, &m, "request_id")?;
    json::parse_string(raw).ok().filter(|s| !s.is_empty())
}

/// `raw` was accepted by a strict scan (every field value is), so a string
/// needs no second check.
fn string_field(raw: &[u8], name: &'static str) -> Result<String, SkipReason> {
    json::scanned_string(raw).ok_or_else(|| bad(name, "not a string"))
}

/// [`string_field`], borrowed when it has no escapes.
fn text_field<'a>(raw: &'a [u8], name: &'static str) -> Result<Cow<'a, str>, SkipReason> {
    json::scanned_text(raw).ok_or_else(|| bad(name, "not a string"))
}

/// One command on its own (the element's bytes): the path for commands the
/// one-pass scan did not accept.
fn decode_command(bytes: &[u8], limits: &PollLimits) -> Decoded {
    match json::members(bytes, &limits.json, Mode::STRICT, MAX_FIELDS) {
        Ok(m) => decode_fields(&Fields::from_members(bytes, &m), limits),
        Err(e) => Decoded::Skipped {
            request_id: best_effort_request_id(bytes, limits),
            reason: SkipReason::Json(e),
        },
    }
}

fn decode_fields(f: &Fields<'_>, limits: &PollLimits) -> Decoded {
    let request_id = match f.request_id.map(|r| string_field(r, "request_id")) {
        None => return skipped(None, SkipReason::MissingField("request_id")),
        Some(Err(e)) => return skipped(None, e),
        Some(Ok(id)) if id.is_empty() => return skipped(None, bad("request_id", "empty")),
        Some(Ok(id)) => id,
    };
    let id = Some(request_id.as_str());

    // The schema's default for command_type is "jsonrpc".
    let is_jsonrpc = match f.command_type.map(|r| text_field(r, "command_type")) {
        None => true,
        Some(Err(e)) => return skipped(id, e),
        Some(Ok(t)) if t == "jsonrpc" => true,
        Some(Ok(t)) if t == "session_termination" => false,
        Some(Ok(t)) => return skipped(id, SkipReason::UnknownType(clip(&t))),
    };

    let shard_token = match f.shard_token.map(|r| string_field(r, "shard_token")) {
        None => return skipped(id, SkipReason::MissingField("shard_token")),
        Some(Err(e)) => return skipped(id, e),
        Some(Ok(t)) => match ShardToken::from_string(t) {
            Some(t) => t,
            None => {
                return skipped(
                    id,
                    bad("shard_token", "must be 1..=4096 bytes of visible ASCII"),
                )
            }
        },
    };

    let channel = match f.channel {
        None => Channel::main(),
        Some(raw) if json::is_null(raw) => Channel::main(),
        Some(raw) => match text_field(raw, "channel") {
            Err(e) => return skipped(id, e),
            Ok(c) => match Channel::parse(&c) {
                Ok(c) => c,
                Err(_) => return skipped(id, SkipReason::BadChannel(clip(&c))),
            },
        },
    };

    let created_at = f.created_at.and_then(json::scanned_string);

    let mut warnings = Vec::new();
    let response_timeout = match f.response_timeout {
        None => None,
        Some(raw) if json::is_null(raw) => None,
        Some(raw) if json::is_string(raw) => {
            let s = json::scanned_text(raw).unwrap_or_default();
            match parse_response_timeout(&s) {
                Ok(d) => Some(d),
                Err(error) => {
                    warnings.push(CommandWarning::ResponseTimeoutInvalid {
                        raw: clip(&s),
                        error,
                    });
                    None
                }
            }
        }
        Some(_) => {
            warnings.push(CommandWarning::ResponseTimeoutNotAString);
            None
        }
    };

    let headers = match f.headers {
        None => Vec::new(),
        Some(raw) if json::is_null(raw) => Vec::new(),
        Some(raw) => match decode_headers(raw, limits) {
            Ok(h) => h,
            Err(reason) => return skipped(id, reason),
        },
    };

    let kind = if is_jsonrpc {
        match f.jsonrpc {
            None => return skipped(id, SkipReason::MissingField("jsonrpc")),
            Some(raw) if json::is_object(raw) => CommandKind::JsonRpc { body: raw.to_vec() },
            Some(_) => return skipped(id, bad("jsonrpc", "not an object")),
        }
    } else {
        CommandKind::SessionTermination
    };

    Decoded::Command(Command {
        request_id,
        shard_token,
        channel,
        created_at,
        response_timeout,
        headers,
        kind,
        warnings,
    })
}

/// `{"Name":["v1","v2"],...}` flattened, with count and byte caps applied
/// while reading so an absurd map costs no more than the caps.
fn decode_headers(raw: &[u8], limits: &PollLimits) -> Result<Vec<Header>, SkipReason> {
    let too_many = SkipReason::TooManyHeaders {
        max: limits.max_headers,
    };
    let names = match json::members(raw, &limits.json, Mode::STRICT, limits.max_headers) {
        Ok(m) => m,
        Err(JsonError::TooManyItems { .. }) => return Err(too_many),
        Err(JsonError::NotAnObject) => return Err(bad("headers", "not an object")),
        Err(e) => return Err(bad("headers", e.to_string())),
    };
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut elems = Vec::new();
    for (name, range) in names {
        if !is_valid_name(&name) {
            return Err(bad(
                "headers",
                format!("invalid header name {:?}", clip(&name)),
            ));
        }
        let values = &raw[range];
        if json::is_null(values) {
            continue;
        }
        if values.first() != Some(&b'[') {
            return Err(bad(
                "headers",
                format!("values of {} are not an array", clip(&name)),
            ));
        }
        let left = limits.max_headers - out.len();
        match json::elements_into(values, &limits.json, true, left, &mut elems) {
            Ok(()) => {}
            Err(JsonError::TooManyItems { .. }) => return Err(too_many),
            Err(e) => return Err(bad("headers", e.to_string())),
        }
        for r in elems.drain(..) {
            let value = string_field(&values[r], "headers")?;
            if !is_valid_value(&value) {
                return Err(bad("headers", format!("invalid value for {}", clip(&name))));
            }
            bytes = bytes.saturating_add(name.len() + value.len());
            if bytes > limits.max_header_bytes {
                return Err(SkipReason::HeadersTooLarge {
                    max: limits.max_header_bytes,
                });
            }
            out.push(Header {
                name: name.to_string(),
                value,
            });
        }
    }
    Ok(out)
}

/// Relay side: one command to put in a poll answer.
#[derive(Clone, Copy, Debug)]
pub struct CommandOut<'a> {
    pub request_id: &'a str,
    pub shard_token: &'a str,
    pub command_type: &'a str,
    pub channel: &'a str,
    pub created_at: &'a str,
    /// Already in the wire grammar (see `timeout::format_response_timeout`).
    pub response_timeout: Option<&'a str>,
    pub headers: &'a [(String, Vec<String>)],
    /// Raw JSON, copied verbatim: the caller guarantees it is one valid JSON object.
    pub jsonrpc: Option<&'a [u8]>,
}

/// Relay side: encode a batch as `{"commands":[...]}`. `out` is cleared first.
pub fn encode_poll(commands: &[CommandOut<'_>], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"{\"commands\":[");
    for (i, c) in commands.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"request_id\":");
        json::write_string(out, c.request_id);
        out.extend_from_slice(b",\"shard_token\":");
        json::write_string(out, c.shard_token);
        out.extend_from_slice(b",\"command_type\":");
        json::write_string(out, c.command_type);
        out.extend_from_slice(b",\"channel\":");
        json::write_string(out, c.channel);
        out.extend_from_slice(b",\"created_at\":");
        json::write_string(out, c.created_at);
        if let Some(t) = c.response_timeout {
            out.extend_from_slice(b",\"response_timeout\":");
            json::write_string(out, t);
        }
        out.extend_from_slice(b",\"headers\":");
        write_header_map(out, c.headers);
        if let Some(body) = c.jsonrpc {
            out.extend_from_slice(b",\"jsonrpc\":");
            out.extend_from_slice(body);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

/// `{"Name":["v",...],...}` — shared with the response body encoder.
pub(crate) fn write_header_map(out: &mut Vec<u8>, headers: &[(String, Vec<String>)]) {
    out.push(b'{');
    for (i, (name, values)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_string(out, name);
        out.push(b':');
        out.push(b'[');
        for (j, v) in values.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            json::write_string(out, v);
        }
        out.push(b']');
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> PollLimits {
        PollLimits::default()
    }

    fn one(cmd: &str) -> Decoded {
        let body = format!("{{\"commands\":[{cmd}]}}");
        let mut v = decode_poll(body.as_bytes(), &lim()).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn command(cmd: &str) -> Command {
        match one(cmd) {
            Decoded::Command(c) => c,
            other => panic!("expected a command, got {other:?}"),
        }
    }

    fn skip_reason(cmd: &str) -> (Option<String>, SkipReason) {
        match one(cmd) {
            Decoded::Skipped { request_id, reason } => (request_id, reason),
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    const BASE: &str =
        r#""request_id":"r1","shard_token":"s:1","created_at":"2026-01-01T00:00:00Z""#;

    fn rpc(extra: &str) -> String {
        format!(
            r#"{{{BASE},"command_type":"jsonrpc","jsonrpc":{{"jsonrpc":"2.0","id":1,"method":"ping"}}{extra}}}"#
        )
    }

    #[test]
    fn decodes_a_full_jsonrpc_command() {
        let raw = r#"{"jsonrpc":"2.0","id":12345678901234567890123,"method":"tools/call","params":{"name":"\u00e9","x":1.0e2}}"#;
        let c = command(&format!(
            r#"{{"request_id":"r1","shard_token":"s:1","command_type":"jsonrpc","channel":"harpoon","created_at":"t","response_timeout":"4500ms","headers":{{"x-a":["1","2"],"X-B":["3"]}},"jsonrpc":{raw}}}"#
        ));
        assert_eq!(c.request_id, "r1");
        assert_eq!(c.shard_token.as_str(), "s:1");
        assert_eq!(c.channel.as_str(), "harpoon");
        assert_eq!(c.created_at.as_deref(), Some("t"));
        assert_eq!(c.response_timeout, Some(Duration::from_millis(4500)));
        assert_eq!(
            c.headers,
            vec![
                Header::new("x-a", "1"),
                Header::new("x-a", "2"),
                Header::new("X-B", "3")
            ]
        );
        assert_eq!(
            c.kind,
            CommandKind::JsonRpc {
                body: raw.as_bytes().to_vec()
            }
        );
        assert!(c.warnings.is_empty());
        assert_eq!(c.header("X-A"), Some("1"));
        assert_eq!(c.header_values("x-a").count(), 2);
    }

    #[test]
    fn session_termination_needs_no_jsonrpc() {
        let c = command(&format!(
            r#"{{{BASE},"command_type":"session_termination","headers":{{"Mcp-Session-Id":["abc"]}}}}"#
        ));
        assert_eq!(c.kind, CommandKind::SessionTermination);
        assert_eq!(c.header("mcp-session-id"), Some("abc"));
    }

    #[test]
    fn missing_channel_and_null_channel_mean_main() {
        assert_eq!(command(&rpc("")).channel, Channel::main());
        assert_eq!(command(&rpc(r#","channel":null"#)).channel, Channel::main());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let c = command(&rpc(r#","future":{"deep":[1,2,{"x":null}]},"z":"\u00e9""#));
        assert_eq!(c.request_id, "r1");
    }

    #[test]
    fn unknown_command_type_is_skipped_with_request_id() {
        let (id, reason) = skip_reason(&format!(r#"{{{BASE},"command_type":"teleport"}}"#));
        assert_eq!(id.as_deref(), Some("r1"));
        assert_eq!(reason, SkipReason::UnknownType("teleport".into()));
    }

    #[test]
    fn absent_command_type_defaults_to_jsonrpc() {
        let c = command(&format!(
            r#"{{{BASE},"jsonrpc":{{"jsonrpc":"2.0","method":"x"}}}}"#
        ));
        assert!(matches!(c.kind, CommandKind::JsonRpc { .. }));
    }

    #[test]
    fn response_timeout_outcomes() {
        assert_eq!(
            command(&rpc(r#","response_timeout":"30s""#)).response_timeout,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            command(&rpc(r#","response_timeout":"0s""#)).response_timeout,
            Some(Duration::ZERO)
        );
        let c = command(&rpc(r#","response_timeout":null"#));
        assert_eq!((c.response_timeout, c.warnings.len()), (None, 0));
        for bad in [r#""1.5s""#, r#""1m30s""#, r#""-1s""#, r#""30""#] {
            let c = command(&rpc(&format!(r#","response_timeout":{bad}"#)));
            assert_eq!(c.response_timeout, None, "{bad}");
            assert!(
                matches!(
                    c.warnings[..],
                    [CommandWarning::ResponseTimeoutInvalid { .. }]
                ),
                "{bad}"
            );
        }
        let c = command(&rpc(r#","response_timeout":30"#));
        assert_eq!(c.response_timeout, None);
        assert_eq!(c.warnings, vec![CommandWarning::ResponseTimeoutNotAString]);
    }

    #[test]
    fn required_fields() {
        let (id, r) = skip_reason(r#"{"shard_token":"s","jsonrpc":{}}"#);
        assert_eq!((id, r), (None, SkipReason::MissingField("request_id")));
        let (id, r) = skip_reason(r#"{"request_id":"r","jsonrpc":{}}"#);
        assert_eq!(
            (id.as_deref(), r),
            (Some("r"), SkipReason::MissingField("shard_token"))
        );
        let (_, r) = skip_reason(&format!(r#"{{{BASE},"command_type":"jsonrpc"}}"#));
        assert_eq!(r, SkipReason::MissingField("jsonrpc"));
        let (_, r) = skip_reason(r#"{"request_id":7,"shard_token":"s","jsonrpc":{}}"#);
        assert!(matches!(
            r,
            SkipReason::BadField {
                field: "request_id",
                ..
            }
        ));
        let (_, r) = skip_reason(r#"{"request_id":"","shard_token":"s","jsonrpc":{}}"#);
        assert!(matches!(
            r,
            SkipReason::BadField {
                field: "request_id",
                ..
            }
        ));
        let (_, r) = skip_reason(&format!(r#"{{{BASE},"jsonrpc":[1]}}"#));
        assert!(matches!(
            r,
            SkipReason::BadField {
                field: "jsonrpc",
                ..
            }
        ));
    }

    #[test]
    fn shard_token_must_be_header_safe() {
        for bad in [r#""""#, r#""a\r\nX-Evil: 1""#, r#""a b""#, r#""\u00e9""#] {
            let (_, r) = skip_reason(&format!(
                r#"{{"request_id":"r","shard_token":{bad},"jsonrpc":{{}}}}"#
            ));
            assert!(
                matches!(
                    r,
                    SkipReason::BadField {
                        field: "shard_token",
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_channel_is_skipped() {
        let (id, r) = skip_reason(&rpc(r#","channel":"Main/../x""#));
        assert_eq!(
            (id.as_deref(), r),
            (Some("r1"), SkipReason::BadChannel("Main/../x".into()))
        );
        let (_, r) = skip_reason(&rpc(r#","channel":5"#));
        assert!(matches!(
            r,
            SkipReason::BadField {
                field: "channel",
                ..
            }
        ));
    }

    #[test]
    fn header_rules() {
        let (_, r) = skip_reason(&rpc(r#","headers":{"bad name":["v"]}"#));
        assert!(matches!(
            r,
            SkipReason::BadField {
                field: "headers",
                ..
            }
        ));
        let (_, r) = skip_reason(&rpc(r#","headers":{"x":["a\r\nb"]}"#));
        assert!(matches!(
            r,
            SkipReason::BadField {
                field: "headers",
                ..
            }
        ));
        let (_, r) = skip_reason(&rpc(r#","headers":{"x":"v"}"#));
        assert!(matches!(
            r,
            SkipReason::BadField {
                field: "headers",
                ..
            }
        ));
        let (_, r) = skip_reason(&rpc(r#","headers":{"x":[1]}"#));
        assert!(matches!(
            r,
            SkipReason::BadField {
                field: "headers",
                ..
            }
        ));
        let (_, r) = skip_reason(&rpc(r#","headers":{"x":["a"],"x":["b"]}"#));
        assert!(matches!(
            r,
            SkipReason::BadField {
                field: "headers",
                ..
            }
        ));
        let c = command(&rpc(r#","headers":{"x":null,"y":[]}"#));
        assert!(c.headers.is_empty());
    }

    #[test]
    fn absurd_header_counts_and_sizes() {
        let values: Vec<String> = (0..101).map(|i| format!("\"{i}\"")).collect();
        let (id, r) = skip_reason(&rpc(&format!(
            r#","headers":{{"x":[{}]}}"#,
            values.join(",")
        )));
        assert_eq!(
            (id.as_deref(), r),
            (Some("r1"), SkipReason::TooManyHeaders { max: 100 })
        );
        let names: Vec<String> = (0..101).map(|i| format!("\"h{i}\":[\"v\"]")).collect();
        let (_, r) = skip_reason(&rpc(&format!(r#","headers":{{{}}}"#, names.join(","))));
        assert_eq!(r, SkipReason::TooManyHeaders { max: 100 });
        let exactly: Vec<String> = (0..100).map(|i| format!("\"h{i}\":[\"v\"]")).collect();
        assert_eq!(
            command(&rpc(&format!(r#","headers":{{{}}}"#, exactly.join(","))))
                .headers
                .len(),
            100
        );
        let big = "a".repeat(70_000);
        let (_, r) = skip_reason(&rpc(&format!(r#","headers":{{"x":["{big}"]}}"#)));
        assert_eq!(r, SkipReason::HeadersTooLarge { max: 64 * 1024 });
    }

    #[test]
    fn duplicate_keys_skip_the_command() {
        let (id, r) =
            skip_reason(r#"{"request_id":"r1","shard_token":"a","shard_token":"b","jsonrpc":{}}"#);
        assert_eq!(id.as_deref(), Some("r1"));
        assert_eq!(
            r,
            SkipReason::Json(JsonError::DuplicateKey("shard_token".into()))
        );
    }

    #[test]
    fn invalid_utf8_skips_only_that_command() {
        let mut body =
            br#"{"commands":[{"request_id":"r1","shard_token":"s","jsonrpc":{"m":""#.to_vec();
        body.extend_from_slice(b"\xff\"}},");
        body.extend_from_slice(format!("{}]}}", rpc("")).as_bytes());
        let v = decode_poll(&body, &lim()).unwrap();
        assert_eq!(v.len(), 2);
        assert!(matches!(
            &v[0],
            Decoded::Skipped { request_id: Some(id), reason: SkipReason::Json(JsonError::InvalidUtf8 { .. }) } if id == "r1"
        ));
        assert!(matches!(&v[1], Decoded::Command(_)));
    }

    #[test]
    fn non_object_element_is_skipped() {
        let v = decode_poll(br#"{"commands":[5,"x",null]}"#, &lim()).unwrap();
        assert_eq!(v.len(), 3);
        assert!(v.iter().all(|d| matches!(
            d,
            Decoded::Skipped {
                request_id: None,
                reason: SkipReason::Json(JsonError::NotAnObject)
            }
        )));
    }

    #[test]
    fn whole_body_errors() {
        let l = lim();
        assert_eq!(decode_poll(b"[]", &l), Err(PollError::NotAnObject));
        assert_eq!(decode_poll(b"{}", &l), Err(PollError::MissingCommands));
        assert_eq!(
            decode_poll(br#"{"commands":{}}"#, &l),
            Err(PollError::CommandsNotAnArray)
        );
        assert_eq!(decode_poll(br#"{"commands":[]}"#, &l), Ok(vec![]));
        assert_eq!(decode_poll(br#"{"commands":null}"#, &l), Ok(vec![]));
        assert_eq!(
            decode_poll(br#"{"commands":[{}"#, &l),
            Err(PollError::Json(JsonError::Truncated))
        );
        assert!(matches!(
            decode_poll(br#"{"commands":[]} x"#, &l),
            Err(PollError::Json(JsonError::Syntax { .. }))
        ));
        assert_eq!(
            decode_poll(br#"{"commands":[],"commands":[]}"#, &l),
            Err(PollError::Json(JsonError::DuplicateKey("commands".into())))
        );
        assert_eq!(
            decode_poll(b"", &l),
            Err(PollError::Json(JsonError::Truncated))
        );
        let small = PollLimits {
            max_body: 10,
            ..lim()
        };
        assert_eq!(
            decode_poll(br#"{"commands":[]}"#, &small),
            Err(PollError::TooLarge { len: 15, max: 10 })
        );
        let deep = format!(
            r#"{{"commands":[{{"jsonrpc":{}1{}}}]}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(
            decode_poll(deep.as_bytes(), &l),
            Err(PollError::Json(JsonError::TooDeep))
        );
        let few = PollLimits {
            max_commands: 2,
            ..lim()
        };
        assert_eq!(
            decode_poll(br#"{"commands":[{},{},{}]}"#, &few),
            Err(PollError::TooManyCommands { max: 2 })
        );
        assert_eq!(
            decode_poll(br#"{"commands":[{},{}]}"#, &few).map(|v| v.len()),
            Ok(2)
        );
    }

    #[test]
    fn encode_poll_round_trips() {
        let headers = vec![("Mcp-Session-Id".to_string(), vec!["s\"1".to_string()])];
        let cmds = [
            CommandOut {
                request_id: "r1",
                shard_token: "sh:1",
                command_type: "jsonrpc",
                channel: "main",
                created_at: "2026-01-01T00:00:00Z",
                response_timeout: Some("30000ms"),
                headers: &headers,
                jsonrpc: Some(br#"{"jsonrpc":"2.0","id":1e400,"method":"m"}"#),
            },
            CommandOut {
                request_id: "r2",
                shard_token: "sh:2",
                command_type: "session_termination",
                channel: "ch-2",
                created_at: "t",
                response_timeout: None,
                headers: &[],
                jsonrpc: None,
            },
        ];
        let mut out = b"garbage".to_vec();
        encode_poll(&cmds, &mut out);
        assert_eq!(json::validate(&out, &json::Limits::default()), Ok(()));
        let v = decode_poll(&out, &lim()).unwrap();
        let Decoded::Command(a) = &v[0] else {
            panic!("{v:?}")
        };
        assert_eq!(a.request_id, "r1");
        assert_eq!(a.response_timeout, Some(Duration::from_secs(30)));
        assert_eq!(a.headers, vec![Header::new("Mcp-Session-Id", "s\"1")]);
        assert_eq!(
            a.kind,
            CommandKind::JsonRpc {
                body: br#"{"jsonrpc":"2.0","id":1e400,"method":"m"}"#.to_vec()
            }
        );
        let Decoded::Command(b) = &v[1] else {
            panic!("{v:?}")
        };
        assert_eq!(
            (b.channel.as_str(), &b.kind),
            ("ch-2", &CommandKind::SessionTermination)
        );
        let mut empty = Vec::new();
        encode_poll(&[], &mut empty);
        assert_eq!(empty, br#"{"commands":[]}"#);
    }

    #[test]
    fn debug_output_hides_secrets_and_payloads() {
        let c = command(&rpc(
            r#","headers":{"Authorization":["Bearer sk-secret"],"X-Plain":["ok"]}"#,
        ));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sk-secret"), "{dbg}");
        assert!(
            dbg.contains("<redacted>") && dbg.contains("\"ok\""),
            "{dbg}"
        );
        assert!(!dbg.contains("ping"), "{dbg}");
    }

    /// decode_poll before the one-pass rewrite: the whole body's structure,
    /// then the array, then each command on its own.
    fn reference_decode_poll(body: &[u8], limits: &PollLimits) -> Result<Vec<Decoded>, PollError> {
        if body.len() > limits.max_body {
            return Err(PollError::TooLarge {
                len: body.len(),
                max: limits.max_body,
            });
        }
        let jl = json::Limits {
            max_depth: limits.json.max_depth,
            max_len: limits.max_body,
        };
        let structural = Mode {
            utf8: false,
            unique_keys: true,
        };
        let top = json::members(body, &jl, structural, MAX_FIELDS).map_err(|e| match e {
            JsonError::NotAnObject => PollError::NotAnObject,
            e => PollError::Json(e),
        })?;
        let commands = field(body, &top, "commands").ok_or(PollError::MissingCommands)?;
        if json::is_null(commands) {
            return Ok(Vec::new());
        }
        if commands.first() != Some(&b'[') {
            return Err(PollError::CommandsNotAnArray);
        }
        let elements =
            json::elements(commands, &jl, false, limits.max_commands).map_err(|e| match e {
                JsonError::TooManyItems { max } => PollError::TooManyCommands { max },
                e => PollError::Json(e),
            })?;
        Ok(elements
            .into_iter()
            .map(|r| decode_command(&commands[r], limits))
            .collect())
    }

    #[test]
    fn one_pass_finds_what_the_per_command_path_finds() {
        let good = rpc("");
        let cases: Vec<Vec<u8>> = vec![
            // Duplicate keys found in the single pass: known, unknown, escaped.
            format!(r#"{{"commands":[{{"request_id":"r1","shard_token":"a","request_id":"r2"}},{good}]}}"#).into_bytes(),
            format!(r#"{{"commands":[{{"request_id":"r1","zz":1,"shard_token":"a","zz":2}},{good}]}}"#).into_bytes(),
            br#"{"commands":[{"request_id":"r1","shard_\u0074oken":"a","shard_token":"b"}]}"#.to_vec(),
            // Bad UTF-8 in a key, in an ignored field, then a structural error after it.
            b"{\"commands\":[{\"request_id\":\"r9\",\"k\xff\":1}]}".to_vec(),
            b"{\"commands\":[{\"request_id\":\"r9\",\"x\":\"abcdefghij\xffk\"}]}".to_vec(),
            b"{\"commands\":[{\"request_id\":\"r9\",\"x\":\"\xff\"},{\"a\":tru}]}".to_vec(),
            // More unknown fields than the fast path compares.
            format!(
                r#"{{"commands":[{{{BASE},"jsonrpc":{{}},{}}}]}}"#,
                (0..20).map(|k| format!("\"u{k}\":{k}")).collect::<Vec<_>>().join(",")
            )
            .into_bytes(),
            // Batch shape after a structural check of the whole body.
            format!(r#"{{"commands":[{good},{good},{good}],"x":[}}"#).into_bytes(),
            format!(r#"{{"commands":[{good},{good},{good}]}}"#).into_bytes(),
            format!(r#"{{"commands":[{good}],"commands":null}}"#).into_bytes(),
            br#"{"comm\u0061nds":null}"#.to_vec(),
            // An escaped key is compared after unescaping.
            br#"{"commands":[{"request_\u0069d":"r1","shard_token":"s","jsonrpc":{}}]}"#.to_vec(),
            br#"{"commands":nul}"#.to_vec(),
            br#"{"commands":[[[[[1]]]]]}"#.to_vec(),
        ];
        let limits = PollLimits {
            max_commands: 2,
            ..lim()
        };
        for c in &cases {
            assert_eq!(
                decode_poll(c, &limits),
                reference_decode_poll(c, &limits),
                "{}",
                String::from_utf8_lossy(c)
            );
        }
        let v = decode_poll(&cases[0], &lim()).unwrap();
        assert!(matches!(
            &v[..],
            [Decoded::Skipped { request_id: Some(id), reason: SkipReason::Json(JsonError::DuplicateKey(k)) }, Decoded::Command(_)]
                if id == "r1" && k == "request_id"
        ));
        assert_eq!(
            decode_poll(&cases[3], &lim()),
            Ok(vec![Decoded::Skipped {
                request_id: Some("r9".into()),
                reason: SkipReason::Json(JsonError::InvalidUtf8 { offset: 21 })
            }])
        );
        assert!(matches!(
            decode_poll(&cases[6], &lim()).as_deref(),
            Ok([Decoded::Command(_)])
        ));
        assert!(matches!(
            decode_poll(&cases[11], &lim()).as_deref(),
            Ok([Decoded::Command(c)]) if c.request_id == "r1"
        ));
        // Depth limits count from the body, on the fast path too.
        for depth in 0..6 {
            let l = PollLimits {
                json: json::Limits {
                    max_depth: depth,
                    ..json::Limits::default()
                },
                ..lim()
            };
            let body = format!(r#"{{"commands":[{}]}}"#, rpc(r#","x":[[1]]"#));
            assert_eq!(
                decode_poll(body.as_bytes(), &l),
                reference_decode_poll(body.as_bytes(), &l),
                "depth {depth}"
            );
        }
    }

    #[test]
    fn one_pass_matches_the_two_pass_reference_on_mutations() {
        let samples = [
            format!(
                r#"{{"commands":[{},{{{BASE},"command_type":"session_termination","channel":"a","headers":{{"h":["v"]}}}}]}}"#,
                rpc(r#","response_timeout":"5s","x":{"y":["\u00e9",null]}"#)
            )
            .into_bytes(),
            format!(r#"{{"v":1,"commands":[{},5,{{}}],"z":"é"}}"#, rpc("")).into_bytes(),
        ];
        let limits = PollLimits {
            max_commands: 3,
            max_headers: 4,
            max_header_bytes: 64,
            json: json::Limits {
                max_depth: 5,
                ..json::Limits::default()
            },
            ..lim()
        };
        let mut rng = crate::proto::testutil::XorShift::new(0xdec0de);
        for round in 0..6000 {
            let input = rng.mutate(&samples[round % samples.len()]);
            assert_eq!(
                decode_poll(&input, &limits),
                reference_decode_poll(&input, &limits),
                "{}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn fuzz_smoke_decode_poll() {
        let sample = format!(
            r#"{{"commands":[{},{{{BASE},"command_type":"session_termination","channel":"a","headers":{{"h":["v"]}}}}]}}"#,
            rpc(r#","response_timeout":"5s""#)
        );
        let limits = PollLimits {
            max_commands: 8,
            max_headers: 4,
            max_header_bytes: 64,
            ..lim()
        };
        let mut rng = crate::proto::testutil::XorShift::new(0xc0ffee);
        for _ in 0..3000 {
            let input = rng.mutate(sample.as_bytes());
            if let Ok(v) = decode_poll(&input, &limits) {
                assert!(v.len() <= 8);
                for d in v {
                    if let Decoded::Command(c) = d {
                        assert!(c.headers.len() <= 4);
                        assert!(!c.request_id.is_empty());
                        if let CommandKind::JsonRpc { body } = &c.kind {
                            assert_eq!(json::validate(body, &limits.json), Ok(()));
                        }
                    }
                }
            }
        }
    }
}
