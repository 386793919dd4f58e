//! A bounded, non-recursive JSON scanner (RFC 8259).
//!
//! Implements protocol.md "resp_json must carry the MCP server's JSON-RPC
//! message unchanged": we never re-encode MCP JSON, we only find the byte
//! ranges of the few fields we interpret and copy everything else verbatim.
//!
//! Decisions:
//! - Nesting is tracked with an explicit stack bounded by [`Limits::max_depth`],
//!   so hostile deep input cannot overflow the call stack.
//! - Strings must be valid UTF-8; an escaped lone surrogate (`"\ud800"`) is
//!   **rejected**: it cannot become a Rust `String` and the MCP peers we
//!   forward to would either reject or silently mangle it.
//! - Objects we interpret reject duplicate keys ([`JsonError::DuplicateKey`]),
//!   because different parsers pick different duplicates and that disagreement
//!   is exploitable.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

/// Bounds applied while scanning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum container nesting; the top-level container counts as 1.
    pub max_depth: usize,
    /// Maximum input length in bytes.
    pub max_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 64,
            max_len: 16 * 1024 * 1024,
        }
    }
}

/// Why a JSON text was rejected. Offsets are byte offsets into the input given
/// to the failing function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON at `offset`; `what` names the expectation.
    Syntax { offset: usize, what: &'static str },
    /// The input ended inside a value.
    Truncated,
    /// Nesting deeper than [`Limits::max_depth`].
    TooDeep,
    /// Input longer than [`Limits::max_len`].
    TooLarge,
    /// A string contains bytes that are not UTF-8.
    InvalidUtf8 { offset: usize },
    /// A `\u` escape names a surrogate without its pair.
    LoneSurrogate { offset: usize },
    /// The same key twice in an object we interpret (the key, possibly truncated).
    DuplicateKey(String),
    /// More members or elements than the caller allows.
    TooManyItems { max: usize },
    /// A top-level object was required.
    NotAnObject,
    /// A top-level array was required.
    NotAnArray,
    /// A string literal was required.
    NotAString,
    /// A non-negative integer literal that fits u64 was required.
    NotAnInteger,
    /// Valid JSON that is not a JSON-RPC 2.0 message; names the missing or bad part.
    NotJsonRpc(&'static str),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Syntax { offset, what } => {
                write!(f, "invalid JSON at byte {offset}: expected {what}")
            }
            JsonError::Truncated => f.write_str("truncated JSON"),
            JsonError::TooDeep => f.write_str("JSON nested too deeply"),
            JsonError::TooLarge => f.write_str("JSON text too large"),
            JsonError::InvalidUtf8 { offset } => write!(f, "invalid UTF-8 at byte {offset}"),
            JsonError::LoneSurrogate { offset } => {
                write!(f, "unpaired UTF-16 surrogate escape at byte {offset}")
            }
            JsonError::DuplicateKey(k) => write!(f, "duplicate key {k:?}"),
            JsonError::TooManyItems { max } => write!(f, "more than {max} items"),
            JsonError::NotAnObject => f.write_str("expected a JSON object"),
            JsonError::NotAnArray => f.write_str("expected a JSON array"),
            JsonError::NotAString => f.write_str("expected a JSON string"),
            JsonError::NotAnInteger => f.write_str("expected a non-negative integer"),
            JsonError::NotJsonRpc(what) => write!(f, "not a JSON-RPC 2.0 message: {what}"),
        }
    }
}

impl std::error::Error for JsonError {}

/// Longest key echoed back inside [`JsonError::DuplicateKey`], so errors stay small.
const MAX_KEY_IN_ERROR: usize = 64;

/// Index of the first non-whitespace byte at or after `i` (or `bytes.len()`).
pub fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(i) {
        i += 1;
    }
    i
}

/// Full RFC 8259 check of one JSON text, plus UTF-8 and depth limits.
pub fn validate(bytes: &[u8], limits: &Limits) -> Result<(), JsonError> {
    if bytes.len() > limits.max_len {
        return Err(JsonError::TooLarge);
    }
    let start = skip_ws(bytes, 0);
    let end = scan_value(bytes, start, limits.max_depth, true)?;
    expect_end(bytes, end)
}

/// Members of the top-level object, with the raw byte range of each value.
/// Rejects duplicate keys. Value ranges are exact (no surrounding whitespace).
pub fn object_members(
    bytes: &[u8],
    limits: &Limits,
) -> Result<Vec<(String, Range<usize>)>, JsonError> {
    members(bytes, limits, Mode::STRICT, usize::MAX)
        .map(|m| m.into_iter().map(|(k, r)| (k.into_owned(), r)).collect())
}

/// Elements of the top-level array, as raw byte ranges.
pub fn array_elements(bytes: &[u8], limits: &Limits) -> Result<Vec<Range<usize>>, JsonError> {
    elements(bytes, limits, true, usize::MAX)
}

/// How strictly the structural helpers check. Lenient scanning exists so one
/// command with a broken string cannot take its whole poll batch down: UTF-8
/// errors never change where values start and end.
#[derive(Clone, Copy)]
pub(crate) struct Mode {
    pub utf8: bool,
    pub unique_keys: bool,
}

impl Mode {
    pub(crate) const STRICT: Mode = Mode {
        utf8: true,
        unique_keys: true,
    };
    pub(crate) const LENIENT: Mode = Mode {
        utf8: false,
        unique_keys: false,
    };
}

/// An object's keys and the raw byte ranges of their values.
pub(crate) type Members<'a> = Vec<(Cow<'a, str>, Range<usize>)>;

/// Members of the object `bytes`, with the raw byte range of each value. A
/// key borrows from `bytes` unless it has escapes (or, lenient, bad UTF-8):
/// the objects on the command path then cost one allocation, not one per key.
pub(crate) fn members<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    mode: Mode,
    max_items: usize,
) -> Result<Members<'a>, JsonError> {
    if bytes.len() > limits.max_len {
        return Err(JsonError::TooLarge);
    }
    let (mut i, inner_depth) = open_object(bytes, limits.max_depth)?;
    let mut out: Members<'a> = Vec::new();
    // Objects here have a handful of keys: comparing with the ones already
    // read is cheaper than hashing; big objects switch to a set.
    let mut seen: Option<HashSet<String>> = None;
    if bytes.get(i) == Some(&b'}') {
        return expect_end(bytes, i + 1).map(|()| out);
    }
    loop {
        if bytes.get(i).is_some_and(|&b| b != b'"') {
            return Err(JsonError::Syntax {
                offset: i,
                what: "an object key",
            });
        }
        let key_end = scan_string(bytes, i, mode.utf8)?;
        // Scanned (and, strict, checked for UTF-8 and escapes) just now.
        let key = scanned_str(&bytes[i + 1..key_end - 1]);
        i = skip_ws(bytes, key_end);
        expect_byte(bytes, i, b':', "':'")?;
        let vstart = skip_ws(bytes, i + 1);
        let vend = scan_value(bytes, vstart, inner_depth, mode.utf8)?;
        if out.len() >= max_items {
            return Err(JsonError::TooManyItems { max: max_items });
        }
        if mode.unique_keys && is_duplicate(&key, &out, &mut seen) {
            return Err(JsonError::DuplicateKey(truncate_key(key.into_owned())));
        }
        out.push((key, vstart..vend));
        match after_value(bytes, vend, b'}')? {
            After::Next(next) => i = next,
            After::Closed(end) => return expect_end(bytes, end).map(|()| out),
        }
    }
}

/// Keys up to this count are checked for duplicates by comparison.
const LINEAR_KEYS: usize = 16;

pub(crate) fn is_duplicate(
    key: &str,
    out: &[(Cow<'_, str>, Range<usize>)],
    seen: &mut Option<HashSet<String>>,
) -> bool {
    if out.len() < LINEAR_KEYS {
        return out.iter().any(|(k, _)| k == key);
    }
    let set = seen.get_or_insert_with(|| out.iter().map(|(k, _)| k.to_string()).collect());
    !set.insert(key.to_string())
}

pub(crate) fn elements(
    bytes: &[u8],
    limits: &Limits,
    utf8: bool,
    max_items: usize,
) -> Result<Vec<Range<usize>>, JsonError> {
    let mut out = Vec::new();
    elements_into(bytes, limits, utf8, max_items, &mut out).map(|()| out)
}

/// [`elements`] into `out` (cleared first), so a caller reading many small
/// arrays reuses one vector.
pub(crate) fn elements_into(
    bytes: &[u8],
    limits: &Limits,
    utf8: bool,
    max_items: usize,
    out: &mut Vec<Range<usize>>,
) -> Result<(), JsonError> {
    out.clear();
    if bytes.len() > limits.max_len {
        return Err(JsonError::TooLarge);
    }
    let mut i = skip_ws(bytes, 0);
    match bytes.get(i) {
        Some(b'[') => {}
        None => return Err(JsonError::Truncated),
        Some(_) => return Err(JsonError::NotAnArray),
    }
    if limits.max_depth == 0 {
        return Err(JsonError::TooDeep);
    }
    let inner_depth = limits.max_depth - 1;
    i = skip_ws(bytes, i + 1);
    if bytes.get(i) == Some(&b']') {
        return expect_end(bytes, i + 1);
    }
    loop {
        let vend = scan_value(bytes, i, inner_depth, utf8)?;
        if out.len() >= max_items {
            return Err(JsonError::TooManyItems { max: max_items });
        }
        out.push(i..vend);
        match after_value(bytes, vend, b']')? {
            After::Next(next) => i = next,
            After::Closed(end) => return expect_end(bytes, end),
        }
    }
}

pub(crate) fn truncate_key(mut key: String) -> String {
    if key.len() > MAX_KEY_IN_ERROR {
        let mut cut = MAX_KEY_IN_ERROR;
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        key.truncate(cut);
    }
    key
}

/// Opens the top-level object of `bytes`: where its first member (or its
/// `}`) starts, and the depth left for member values.
pub(crate) fn open_object(bytes: &[u8], max_depth: usize) -> Result<(usize, usize), JsonError> {
    let i = skip_ws(bytes, 0);
    match bytes.get(i) {
        Some(b'{') => {}
        None => return Err(JsonError::Truncated),
        Some(_) => return Err(JsonError::NotAnObject),
    }
    let inner_depth = max_depth.checked_sub(1).ok_or(JsonError::TooDeep)?;
    Ok((skip_ws(bytes, i + 1), inner_depth))
}

/// What follows a member or element inside an object or array.
pub(crate) enum After {
    /// A comma: the next member or element starts here (whitespace skipped).
    Next(usize),
    /// The closing `}` or `]`: the container ends just before this offset.
    Closed(usize),
}

/// Reads what follows a value that ends at `end` inside a container closed
/// by `close` (`b'}'` or `b']'`).
pub(crate) fn after_value(bytes: &[u8], end: usize, close: u8) -> Result<After, JsonError> {
    let i = skip_ws(bytes, end);
    match bytes.get(i) {
        Some(b',') => Ok(After::Next(skip_ws(bytes, i + 1))),
        Some(&c) if c == close => Ok(After::Closed(i + 1)),
        None => Err(JsonError::Truncated),
        Some(_) => Err(JsonError::Syntax {
            offset: i,
            what: if close == b'}' {
                "',' or '}'"
            } else {
                "',' or ']'"
            },
        }),
    }
}

pub(crate) fn expect_end(bytes: &[u8], i: usize) -> Result<(), JsonError> {
    let j = skip_ws(bytes, i);
    if j == bytes.len() {
        Ok(())
    } else {
        Err(JsonError::Syntax {
            offset: j,
            what: "end of input",
        })
    }
}

pub(crate) fn expect_byte(
    bytes: &[u8],
    i: usize,
    want: u8,
    what: &'static str,
) -> Result<(), JsonError> {
    match bytes.get(i) {
        Some(&b) if b == want => Ok(()),
        None => Err(JsonError::Truncated),
        Some(_) => Err(JsonError::Syntax { offset: i, what }),
    }
}

/// Scan one value starting exactly at `i`; returns the index just past it.
/// `depth_left` is how many more containers may be opened.
pub(crate) fn scan_value(
    bytes: &[u8],
    mut i: usize,
    depth_left: usize,
    utf8: bool,
) -> Result<usize, JsonError> {
    // true = object, false = array; never longer than `depth_left`.
    let mut stack = Nesting::default();
    'value: loop {
        match bytes.get(i) {
            None => return Err(JsonError::Truncated),
            Some(b'{') | Some(b'[') => {
                if stack.len() >= depth_left {
                    return Err(JsonError::TooDeep);
                }
                let is_obj = bytes[i] == b'{';
                stack.push(is_obj);
                i = skip_ws(bytes, i + 1);
                let close = if is_obj { b'}' } else { b']' };
                if bytes.get(i) == Some(&close) {
                    stack.pop();
                    i += 1;
                } else {
                    if is_obj {
                        i = scan_key(bytes, i, utf8)?;
                    }
                    continue 'value;
                }
            }
            Some(b'"') => i = scan_string(bytes, i, utf8)?,
            Some(b'-' | b'0'..=b'9') => i = scan_number(bytes, i)?,
            Some(b't') => i = scan_literal(bytes, i, b"true")?,
            Some(b'f') => i = scan_literal(bytes, i, b"false")?,
            Some(b'n') => i = scan_literal(bytes, i, b"null")?,
            Some(_) => {
                return Err(JsonError::Syntax {
                    offset: i,
                    what: "a JSON value",
                })
            }
        }
        // A value just ended at `i`: close containers or move to the next element.
        loop {
            let Some(is_obj) = stack.last() else {
                return Ok(i);
            };
            i = skip_ws(bytes, i);
            let close = if is_obj { b'}' } else { b']' };
            match bytes.get(i) {
                None => return Err(JsonError::Truncated),
                Some(b',') => {
                    i = skip_ws(bytes, i + 1);
                    if is_obj {
                        i = scan_key(bytes, i, utf8)?;
                    }
                    continue 'value;
                }
                Some(&b) if b == close => {
                    stack.pop();
                    i += 1;
                }
                Some(_) => {
                    return Err(JsonError::Syntax {
                        offset: i,
                        what: if is_obj { "',' or '}'" } else { "',' or ']'" },
                    })
                }
            }
        }
    }
}

/// The open containers of [`scan_value`] (true = object): the first 128
/// levels as bits, so the usual document costs no allocation; deeper ones
/// (bounded by the depth limit) spill to a vector.
#[derive(Default)]
struct Nesting {
    len: usize,
    low: u128,
    deep: Vec<bool>,
}

impl Nesting {
    const INLINE: usize = 128;

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, is_obj: bool) {
        if self.len < Self::INLINE {
            let bit = 1u128 << self.len;
            if is_obj {
                self.low |= bit;
            } else {
                self.low &= !bit;
            }
        } else {
            self.deep.push(is_obj);
        }
        self.len += 1;
    }

    fn pop(&mut self) {
        if self.len > Self::INLINE {
            self.deep.pop();
        }
        self.len = self.len.saturating_sub(1);
    }

    fn last(&self) -> Option<bool> {
        match self.len {
            0 => None,
            n if n <= Self::INLINE => Some(self.low & (1u128 << (n - 1)) != 0),
            _ => self.deep.last().copied(),
        }
    }
}

/// Scan `"key" :` and the whitespace after it; returns the value's start.
fn scan_key(bytes: &[u8], i: usize, utf8: bool) -> Result<usize, JsonError> {
    if bytes.get(i).is_some_and(|&b| b != b'"') {
        return Err(JsonError::Syntax {
            offset: i,
            what: "an object key",
        });
    }
    let end = scan_string(bytes, i, utf8)?;
    let j = skip_ws(bytes, end);
    expect_byte(bytes, j, b':', "':'")?;
    Ok(skip_ws(bytes, j + 1))
}

fn scan_literal(bytes: &[u8], i: usize, lit: &'static [u8]) -> Result<usize, JsonError> {
    let end = i + lit.len();
    match bytes.get(i..end) {
        Some(s) if s == lit => Ok(end),
        Some(_) => Err(JsonError::Syntax {
            offset: i,
            what: "true, false or null",
        }),
        None if lit.starts_with(&bytes[i..]) => Err(JsonError::Truncated),
        None => Err(JsonError::Syntax {
            offset: i,
            what: "true, false or null",
        }),
    }
}

fn scan_digits(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

fn scan_number(bytes: &[u8], mut i: usize) -> Result<usize, JsonError> {
    if bytes.get(i) == Some(&b'-') {
        i += 1;
    }
    match bytes.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = scan_digits(bytes, i + 1),
        None => return Err(JsonError::Truncated),
        Some(_) => {
            return Err(JsonError::Syntax {
                offset: i,
                what: "a digit",
            })
        }
    }
    if bytes.get(i) == Some(&b'.') {
        let j = scan_digits(bytes, i + 1);
        if j == i + 1 {
            return Err(digit_error(bytes, j));
        }
        i = j;
    }
    if let Some(b'e' | b'E') = bytes.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = bytes.get(i) {
            i += 1;
        }
        let j = scan_digits(bytes, i);
        if j == i {
            return Err(digit_error(bytes, j));
        }
        i = j;
    }
    Ok(i)
}

fn digit_error(bytes: &[u8], i: usize) -> JsonError {
    if i >= bytes.len() {
        JsonError::Truncated
    } else {
        JsonError::Syntax {
            offset: i,
            what: "a digit",
        }
    }
}

/// Scan a string literal starting at the opening quote at `i`; returns the
/// index just past the closing quote.
///
/// One pass: runs of plain ASCII are skipped a word at a time, and only the
/// non-ASCII bytes are checked for UTF-8 (one sequence at a time, no second
/// pass). A bad sequence is remembered rather than reported at once, so the
/// error is the one a structural scan followed by a UTF-8 check of the run
/// would give: a raw control character or the end of input still wins.
#[inline]
pub(crate) fn scan_string(bytes: &[u8], i: usize, utf8: bool) -> Result<usize, JsonError> {
    match bytes.get(i) {
        Some(b'"') => {}
        None => return Err(JsonError::Truncated),
        Some(_) => return Err(JsonError::NotAString),
    }
    let j = skip_plain(bytes, i + 1);
    if bytes.get(j) == Some(&b'"') {
        return Ok(j + 1);
    }
    scan_string_rest(bytes, j, utf8)
}

/// The rest of [`scan_string`] once a run of plain ASCII has ended on
/// something other than the closing quote.
fn scan_string_rest(bytes: &[u8], mut j: usize, utf8: bool) -> Result<usize, JsonError> {
    // First byte of an invalid UTF-8 sequence in the current run, if any.
    let mut bad_utf8: Option<usize> = None;
    loop {
        let Some(&b) = bytes.get(j) else {
            return Err(JsonError::Truncated);
        };
        match b {
            b'"' | b'\\' => {
                if let Some(offset) = bad_utf8 {
                    return Err(JsonError::InvalidUtf8 { offset });
                }
                if b == b'"' {
                    return Ok(j + 1);
                }
                j = scan_escape(bytes, j)?;
            }
            0x00..=0x1f => {
                return Err(JsonError::Syntax {
                    offset: j,
                    what: "no raw control characters in strings",
                })
            }
            0x80..=0xff if utf8 && bad_utf8.is_none() => match utf8_len(bytes, j) {
                Some(n) => j += n,
                None => {
                    bad_utf8 = Some(j);
                    j += 1;
                }
            },
            _ => j += 1,
        }
        j = skip_plain(bytes, j);
    }
}

/// Length of the well-formed UTF-8 sequence (RFC 3629: no overlongs, no
/// surrogates, nothing past U+10FFFF) starting at the non-ASCII byte `i`.
fn utf8_len(bytes: &[u8], i: usize) -> Option<usize> {
    let cont = |k: usize| bytes.get(i + k).is_some_and(|&c| c & 0xc0 == 0x80);
    let second = bytes.get(i + 1).copied().unwrap_or(0);
    let (n, second_ok) = match bytes.get(i).copied().unwrap_or(0) {
        0xc2..=0xdf => (2, (0x80..=0xbf).contains(&second)),
        0xe0 => (3, (0xa0..=0xbf).contains(&second)),
        0xe1..=0xec | 0xee..=0xef => (3, (0x80..=0xbf).contains(&second)),
        0xed => (3, (0x80..=0x9f).contains(&second)),
        0xf0 => (4, (0x90..=0xbf).contains(&second)),
        0xf1..=0xf3 => (4, (0x80..=0xbf).contains(&second)),
        0xf4 => (4, (0x80..=0x8f).contains(&second)),
        _ => return None,
    };
    (second_ok && (2..n).all(cont)).then_some(n)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `w` that ends a plain run: a quote, a
/// backslash, a control character or a non-ASCII byte. Exact for the lowest
/// flagged byte (a borrow only spills upward from a byte that is itself
/// flagged), which is all [`skip_plain`] uses.
#[inline]
fn stop_mask(w: u64) -> u64 {
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (control | quote | backslash | w) & HIGHS
}

/// Whether `b` ends a plain run (see [`stop_mask`]).
#[inline]
fn is_stop(b: u8) -> bool {
    b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b)
}

/// Index of the first byte at or after `j` that ends a run of plain ASCII
/// string bytes (see [`stop_mask`]), or `bytes.len()`. Plain bytes are the
/// bulk of every string: eight at a time, then one by one.
#[inline]
fn skip_plain(bytes: &[u8], mut j: usize) -> usize {
    while let Some(chunk) = bytes.get(j..j + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let m = stop_mask(u64::from_le_bytes(word));
        if m != 0 {
            return j + (m.trailing_zeros() / 8) as usize;
        }
        j += 8;
    }
    while let Some(&b) = bytes.get(j) {
        if is_stop(b) {
            break;
        }
        j += 1;
    }
    j
}

/// Scan the escape at `i` (the backslash); returns the index after it.
fn scan_escape(bytes: &[u8], i: usize) -> Result<usize, JsonError> {
    match bytes.get(i + 1) {
        None => Err(JsonError::Truncated),
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
        Some(b'u') => {
            let unit = hex4(bytes, i + 2)?;
            match unit {
                0xD800..=0xDBFF => match (bytes.get(i + 6), bytes.get(i + 7)) {
                    (None, _) | (Some(b'\\'), None) => Err(JsonError::Truncated),
                    (Some(b'\\'), Some(b'u')) => {
                        let low = hex4(bytes, i + 8)?;
                        if (0xDC00..=0xDFFF).contains(&low) {
                            Ok(i + 12)
                        } else {
                            Err(JsonError::LoneSurrogate { offset: i })
                        }
                    }
                    _ => Err(JsonError::LoneSurrogate { offset: i }),
                },
                0xDC00..=0xDFFF => Err(JsonError::LoneSurrogate { offset: i }),
                _ => Ok(i + 6),
            }
        }
        Some(_) => Err(JsonError::Syntax {
            offset: i,
            what: "a valid escape",
        }),
    }
}

fn hex4(bytes: &[u8], i: usize) -> Result<u16, JsonError> {
    let Some(digits) = bytes.get(i..i + 4) else {
        let avail = bytes.get(i..).unwrap_or(&[]);
        return if avail.iter().all(u8::is_ascii_hexdigit) {
            Err(JsonError::Truncated)
        } else {
            Err(JsonError::Syntax {
                offset: i,
                what: "4 hex digits",
            })
        };
    };
    let mut v: u16 = 0;
    for &d in digits {
        let n = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => {
                return Err(JsonError::Syntax {
                    offset: i,
                    what: "4 hex digits",
                })
            }
        };
        v = (v << 4) | u16::from(n);
    }
    Ok(v)
}

/// Decode a JSON string literal (`raw` includes the quotes).
pub fn parse_string(raw: &[u8]) -> Result<String, JsonError> {
    let end = scan_string(raw, 0, true)?;
    if end != raw.len() {
        return Err(JsonError::Syntax {
            offset: end,
            what: "end of string",
        });
    }
    Ok(scanned_str(&raw[1..end - 1]).into_owned())
}

/// The text of a string literal that a strict scan (UTF-8 checked) already
/// accepted, such as a member value from [`members`] in strict mode: no
/// second scan. `None` when `raw` is not a string literal.
pub(crate) fn scanned_string(raw: &[u8]) -> Option<String> {
    scanned_text(raw).map(Cow::into_owned)
}

/// [`scanned_string`], borrowed when the literal has no escapes.
pub(crate) fn scanned_text(raw: &[u8]) -> Option<Cow<'_, str>> {
    match raw {
        [b'"', inner @ .., b'"'] => Some(scanned_str(inner)),
        _ => None,
    }
}

/// The inside of a scanned string literal as text: borrowed when it has no
/// escape and is UTF-8 (the common case), else unescaped, with bytes that
/// are not UTF-8 (lenient scans only) as U+FFFD.
pub(crate) fn scanned_str(inner: &[u8]) -> Cow<'_, str> {
    if inner.contains(&b'\\') {
        return Cow::Owned(unescape(inner));
    }
    match std::str::from_utf8(inner) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(String::from_utf8_lossy(inner).into_owned()),
    }
}

/// Unescape the inside of a scanned string literal.
fn unescape(inner: &[u8]) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        if inner[i] != b'\\' {
            let run = inner[i..]
                .iter()
                .position(|&b| b == b'\\')
                .unwrap_or(inner.len() - i);
            out.extend_from_slice(&inner[i..i + run]);
            i += run;
            continue;
        }
        let esc = inner.get(i + 1).copied().unwrap_or(b'\\');
        let simple = match esc {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
            continue;
        }
        // `\u`: the scanner already proved the digits and pairing are valid.
        let hi = hex4(inner, i + 2).unwrap_or(0xFFFD);
        let (cp, used) = if (0xD800..=0xDBFF).contains(&hi) {
            let lo = hex4(inner, i + 8).unwrap_or(0xDC00);
            (
                0x10000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(lo) - 0xDC00),
                12,
            )
        } else {
            (u32::from(hi), 6)
        };
        let ch = char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER);
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        i += used;
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Parse a non-negative integer literal (no sign, fraction or exponent).
pub fn parse_u64(raw: &[u8]) -> Result<u64, JsonError> {
    if raw.is_empty() || (raw.len() > 1 && raw[0] == b'0') {
        return Err(JsonError::NotAnInteger);
    }
    let mut v: u64 = 0;
    for &d in raw {
        if !d.is_ascii_digit() {
            return Err(JsonError::NotAnInteger);
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(JsonError::NotAnInteger)?;
    }
    Ok(v)
}

/// True when the raw value is the literal `null`.
pub fn is_null(raw: &[u8]) -> bool {
    raw == b"null"
}

/// True when the raw value is a string literal (starts with a quote).
pub fn is_string(raw: &[u8]) -> bool {
    raw.first() == Some(&b'"')
}

/// True when the raw value is an object (starts with `{`).
pub fn is_object(raw: &[u8]) -> bool {
    raw.first() == Some(&b'{')
}

/// Append `s` as a JSON string literal (quotes + escapes) to `out`.
/// Runs that need no escape (everything but quotes, backslashes and control
/// characters; non-ASCII is copied as is) are found a word at a time.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0;
    loop {
        let i = skip_unescaped(bytes, run);
        out.extend_from_slice(&bytes[run..i]);
        let Some(&b) = bytes.get(i) else {
            break;
        };
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => b"",
        };
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        run = i + 1;
    }
    out.push(b'"');
}

/// High bit set in exactly the bytes of `w` that [`write_string`] escapes.
/// Unlike [`stop_mask`] nothing carries between bytes (each byte's low
/// seven bits plus at most 0x7f stays inside the byte), so non-ASCII bytes
/// never flag a neighbour.
#[inline]
fn escape_mask(w: u64) -> u64 {
    const LOW7: u64 = ONES * 0x7f;
    let zero = |x: u64| !(((x & LOW7) + LOW7) | x);
    let control = !(((w & LOW7) + ONES * 0x60) | w);
    (zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | control) & HIGHS
}

/// Index of the first byte at or after `j` that [`write_string`] escapes
/// (a quote, a backslash or a control character), or `bytes.len()`.
fn skip_unescaped(bytes: &[u8], mut j: usize) -> usize {
    while let Some(chunk) = bytes.get(j..j + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let m = escape_mask(w);
        if m != 0 {
            return j + (m.trailing_zeros() / 8) as usize;
        }
        j += 8;
    }
    while let Some(&b) = bytes.get(j) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        j += 1;
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits::default()
    }

    #[test]
    fn accepts_valid_documents() {
        for ok in [
            "0",
            "-0",
            "1.5e10",
            "-12.25E-3",
            "true",
            "false",
            "null",
            "\"\"",
            "\"a\\u00e9\\ud83d\\ude00\\n\\/\"",
            " { \"a\" : [ 1 , {} , [] , \"x\" ] } ",
            "[[[[]]]]",
            "{\"a\":{\"b\":{\"c\":null}}}",
            "\"h\u{e9}llo \u{1F600}\"",
        ] {
            assert_eq!(validate(ok.as_bytes(), &lim()), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_invalid_documents() {
        for bad in [
            "",
            " ",
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "-",
            "tru",
            "nul",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\"}",
            "{a:1}",
            "[1 2]",
            "\"\\x\"",
            "\"\\u12G4\"",
            "\"a\nb\"",
            "{} {}",
            "1 2",
            "'a'",
            "[",
            "{\"a\":",
            "\"abc",
            "NaN",
            "Infinity",
            "[1]]",
        ] {
            assert!(validate(bad.as_bytes(), &lim()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn truncation_is_reported_as_truncated() {
        for t in ["{\"a\":[1,", "\"ab", "[tr", "{\"a\"", "\"\\u00", "-", "1e+"] {
            assert_eq!(
                validate(t.as_bytes(), &lim()),
                Err(JsonError::Truncated),
                "{t:?}"
            );
        }
    }

    #[test]
    fn rejects_invalid_utf8_in_strings_and_outside() {
        assert_eq!(
            validate(b"\"ab\xff\"", &lim()),
            Err(JsonError::InvalidUtf8 { offset: 3 })
        );
        assert!(validate(b"[\xc3]", &lim()).is_err());
        // Overlong encoding and a surrogate encoded directly in UTF-8.
        assert!(validate(b"\"\xc0\xaf\"", &lim()).is_err());
        assert!(validate(b"\"\xed\xa0\x80\"", &lim()).is_err());
    }

    #[test]
    fn lone_surrogates_are_rejected() {
        for s in [
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800x\"",
            "\"\\ud800\\u0041\"",
            "\"\\ude00\\ud83d\"",
        ] {
            assert!(
                matches!(
                    validate(s.as_bytes(), &lim()),
                    Err(JsonError::LoneSurrogate { .. })
                ),
                "{s}"
            );
        }
        assert!(parse_string(b"\"\\ud800\"").is_err());
    }

    #[test]
    fn nesting_kinds_tracked_past_the_inline_levels() {
        let l = Limits {
            max_depth: 400,
            max_len: 1 << 20,
        };
        // Objects and arrays interleaved in an irregular pattern, 300 deep:
        // every closing bracket must match its own level, inline or spilled.
        let kinds: Vec<bool> = (0..300).map(|i| i % 3 == 0 || i % 7 == 0).collect();
        let doc = |swap_at: Option<usize>| {
            let mut d = String::new();
            for &obj in &kinds {
                d.push_str(if obj { "{\"k\":" } else { "[" });
            }
            d.push('1');
            for (i, &obj) in kinds.iter().enumerate().rev() {
                // Closing with the other kind's bracket at one level.
                let obj = if swap_at == Some(i) { !obj } else { obj };
                d.push(if obj { '}' } else { ']' });
            }
            d
        };
        assert_eq!(validate(doc(None).as_bytes(), &l), Ok(()));
        for level in [0, 1, 126, 127, 128, 129, 200, 299] {
            assert!(
                matches!(
                    validate(doc(Some(level)).as_bytes(), &l),
                    Err(JsonError::Syntax { .. })
                ),
                "wrong bracket at level {level} accepted"
            );
        }
    }

    #[test]
    fn depth_limit_without_recursion() {
        let l = Limits {
            max_depth: 3,
            max_len: 1 << 20,
        };
        assert_eq!(validate(b"[[[1]]]", &l), Ok(()));
        assert_eq!(validate(b"[[[[1]]]]", &l), Err(JsonError::TooDeep));
        assert_eq!(
            validate(b"{\"a\":{\"b\":[{}]}}", &l),
            Err(JsonError::TooDeep)
        );
        // Far deeper than any call stack could take if the scanner recursed.
        let deep = "[".repeat(1_000_000);
        assert_eq!(validate(deep.as_bytes(), &lim()), Err(JsonError::TooDeep));
        let l0 = Limits {
            max_depth: 0,
            max_len: 10,
        };
        assert_eq!(validate(b"1", &l0), Ok(()));
        assert_eq!(validate(b"[]", &l0), Err(JsonError::TooDeep));
    }

    #[test]
    fn length_limit() {
        let l = Limits {
            max_depth: 8,
            max_len: 4,
        };
        assert_eq!(validate(b"1234", &l), Ok(()));
        assert_eq!(validate(b"12345", &l), Err(JsonError::TooLarge));
        assert_eq!(object_members(b"{ }  ", &l), Err(JsonError::TooLarge));
    }

    #[test]
    fn object_members_gives_exact_ranges() {
        let doc = br#" { "a" : 1 , "b":{"x":[1,2]} ,"c" : "s" } "#;
        let m = object_members(doc, &lim()).unwrap();
        let got: Vec<(&str, &[u8])> = m
            .iter()
            .map(|(k, r)| (k.as_str(), &doc[r.clone()]))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", &b"1"[..]),
                ("b", &b"{\"x\":[1,2]}"[..]),
                ("c", &b"\"s\""[..])
            ]
        );
        assert_eq!(object_members(b"{}", &lim()).unwrap(), vec![]);
    }

    #[test]
    fn object_members_rejects_duplicates_even_when_escaped() {
        assert_eq!(
            object_members(br#"{"a":1,"a":2}"#, &lim()),
            Err(JsonError::DuplicateKey("a".into()))
        );
        assert_eq!(
            object_members(br#"{"a":1,"\u0061":2}"#, &lim()),
            Err(JsonError::DuplicateKey("a".into()))
        );
        // Nested objects are not interpreted, so their duplicates are the caller's business.
        assert!(object_members(br#"{"a":{"x":1,"x":2}}"#, &lim()).is_ok());
    }

    #[test]
    fn object_members_shape_errors() {
        assert_eq!(object_members(b"[1]", &lim()), Err(JsonError::NotAnObject));
        assert_eq!(object_members(b"", &lim()), Err(JsonError::Truncated));
        assert!(object_members(b"{\"a\":1} x", &lim()).is_err());
        assert_eq!(
            object_members(b"{\"a\":1", &lim()),
            Err(JsonError::Truncated)
        );
    }

    #[test]
    fn array_elements_ranges() {
        let doc = b"[ 1, \"two\" ,{\"t\":3},[ ] ]";
        let r = array_elements(doc, &lim()).unwrap();
        let got: Vec<&[u8]> = r.iter().map(|r| &doc[r.clone()]).collect();
        assert_eq!(got, vec![&b"1"[..], b"\"two\"", b"{\"t\":3}", b"[ ]"]);
        assert_eq!(array_elements(b"{}", &lim()), Err(JsonError::NotAnArray));
        assert_eq!(array_elements(b"[]", &lim()).unwrap().len(), 0);
    }

    #[test]
    fn parse_string_unescapes() {
        assert_eq!(
            parse_string(br#""a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00""#).unwrap(),
            "a\"b\\c/d\u{8}\u{c}\n\r\t\u{e9}\u{1F600}"
        );
        assert!(parse_string(b"\"abc\" ").is_err());
        assert!(parse_string(b"abc").is_err());
        assert!(parse_string(b"\"abc").is_err());
    }

    #[test]
    fn parse_u64_integers_only() {
        assert_eq!(parse_u64(b"0"), Ok(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Ok(u64::MAX));
        for bad in [
            &b"18446744073709551616"[..],
            b"-1",
            b"1.0",
            b"1e3",
            b"01",
            b"",
            b"\"1\"",
        ] {
            assert_eq!(parse_u64(bad), Err(JsonError::NotAnInteger), "{bad:?}");
        }
    }

    #[test]
    fn write_string_escapes_exactly_what_the_byte_loop_would() {
        let slow = |s: &str| {
            let mut out = vec![b'"'];
            for &b in s.as_bytes() {
                match b {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    0x00..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                    _ => out.push(b),
                }
            }
            out.push(b'"');
            out
        };
        // Non-ASCII bytes whose low seven bits look like a quote, a backslash
        // or a control character, next to the ones that really are.
        let pieces = [
            "a",
            "abcdefgh",
            "\"",
            "\\",
            "\n",
            "\u{1}",
            "\u{1f}",
            " ",
            "#",
            "]",
            "\u{7f}",
            "\u{a2}",
            "\u{dc}",
            "\u{80}",
            "\u{e9}",
            "\u{1F600}",
            "\u{9f}",
        ];
        let mut rng = crate::proto::testutil::XorShift::new(0x3a);
        for _ in 0..20_000 {
            let s: String = (0..rng.below(14))
                .map(|_| pieces[rng.below(pieces.len())])
                .collect();
            let mut out = Vec::new();
            write_string(&mut out, &s);
            assert_eq!(out, slow(&s), "{s:?}");
        }
    }

    #[test]
    fn write_string_round_trips() {
        for s in [
            "",
            "plain",
            "q\"b\\",
            "ctl\u{0}\u{1f}\n\r\t",
            "\u{e9}\u{1F600}",
            "</script>",
        ] {
            let mut out = Vec::new();
            write_string(&mut out, s);
            assert_eq!(validate(&out, &lim()), Ok(()));
            assert_eq!(parse_string(&out).unwrap(), s);
        }
        let mut out = Vec::new();
        write_string(&mut out, "a\u{1}");
        assert_eq!(out, b"\"a\\u0001\"");
    }

    #[test]
    fn lenient_members_survive_bad_utf8_and_duplicates() {
        let doc = b"{\"request_id\":\"r1\",\"x\":\"\xff\",\"x\":1}";
        assert!(object_members(doc, &lim()).is_err());
        let m = members(doc, &lim(), Mode::LENIENT, 3).unwrap();
        assert_eq!(
            members(doc, &lim(), Mode::LENIENT, 2),
            Err(JsonError::TooManyItems { max: 2 })
        );
        assert_eq!(
            elements(b"[1,2,3]", &lim(), true, 2),
            Err(JsonError::TooManyItems { max: 2 })
        );
        assert_eq!(m.len(), 3);
        assert_eq!(&doc[m[0].1.clone()], b"\"r1\"");
    }

    #[test]
    fn fuzz_smoke_scanner() {
        let samples: [&[u8]; 4] = [
            br#"{"a":[1,2,{"b":"c\u00e9"}],"d":-1.5e3,"e":null}"#,
            b"[true,false,\"\\ud83d\\ude00\"]",
            b"\"x\"",
            b"{}",
        ];
        let mut rng = crate::proto::testutil::XorShift::new(0x5eed);
        for round in 0..4000 {
            let input = rng.mutate(samples[round % samples.len()]);
            let l = Limits {
                max_depth: 8,
                max_len: 256,
            };
            let v = validate(&input, &l);
            let m = object_members(&input, &l);
            if let Ok(members) = &m {
                assert!(v.is_ok(), "members ok but validate failed: {input:?}");
                for (_, r) in members {
                    assert!(r.end <= input.len());
                    assert_eq!(validate(&input[r.clone()], &l), Ok(()));
                }
            }
            let _ = array_elements(&input, &l);
            let _ = parse_string(&input);
            let _ = parse_u64(&input);
        }
    }

    #[test]
    fn skip_plain_stops_where_the_byte_loop_would() {
        let slow = |b: &[u8], mut j: usize| {
            while j < b.len() && !(b[j] == b'"' || b[j] == b'\\' || b[j] < 0x20 || b[j] >= 0x80) {
                j += 1;
            }
            j
        };
        // Every stop byte (and bytes around the thresholds) at every offset of a word.
        for stop in [
            0u8, 0x1f, b'"', b'\\', 0x20, 0x21, 0x5b, 0x5d, 0x7f, 0x80, 0xff,
        ] {
            for at in 0..20 {
                for start in 0..3 {
                    let mut v = vec![b'a'; 24];
                    v[19] = 0xc3; // non-ASCII ends a plain run too
                    v[at] = stop;
                    assert_eq!(skip_plain(&v, start), slow(&v, start), "{stop:#x} at {at}");
                }
            }
        }
        assert_eq!(skip_plain(b"", 0), 0);
        assert_eq!(skip_plain(b"abc", 3), 3);
    }

    /// The string scanner before the one-pass rewrite: structure first, then
    /// `str::from_utf8` over each run between escapes.
    fn reference_scan_string(bytes: &[u8], i: usize, utf8: bool) -> Result<usize, JsonError> {
        match bytes.get(i) {
            Some(b'"') => {}
            None => return Err(JsonError::Truncated),
            Some(_) => return Err(JsonError::NotAString),
        }
        let (mut j, mut run) = (i + 1, i + 1);
        loop {
            let Some(&b) = bytes.get(j) else {
                return Err(JsonError::Truncated);
            };
            match b {
                b'"' | b'\\' => {
                    if utf8 {
                        std::str::from_utf8(&bytes[run..j]).map_err(|e| {
                            JsonError::InvalidUtf8 {
                                offset: run + e.valid_up_to(),
                            }
                        })?;
                    }
                    if b == b'"' {
                        return Ok(j + 1);
                    }
                    j = scan_escape(bytes, j)?;
                    run = j;
                }
                0x00..=0x1f => {
                    return Err(JsonError::Syntax {
                        offset: j,
                        what: "no raw control characters in strings",
                    })
                }
                _ => j += 1,
            }
        }
    }

    #[test]
    fn string_scan_edge_cases() {
        let plain = "abcdefghij"; // more than one word of plain bytes
        let cases: Vec<Vec<u8>> = vec![
            // Non-ASCII right after 8+ plain bytes, at and around word boundaries.
            format!("\"{plain}\u{e9}\"").into_bytes(),
            "\"12345678\u{20ac}x\"".as_bytes().to_vec(),
            format!("\"1234567\u{1F600}{plain}\"").into_bytes(),
            // Escapes exactly at a word boundary and straddling one.
            b"\"12345678\\n12345678\"".to_vec(),
            b"\"1234567\\u00e9abcdefgh\"".to_vec(),
            b"\"123456\\ud83d\\ude00\"".to_vec(),
            // Invalid UTF-8 inside a long plain run, and then a control byte.
            b"\"abcdefghijkl\xffmnopqrstuvwxyz\"".to_vec(),
            b"\"abcdefghijkl\xffmnop\nqrstuvwxyz\"".to_vec(),
            b"\"abcdefgh\xe2\x82\"".to_vec(),
            b"\"abcdefgh\xe2\x82\\n\"".to_vec(),
            b"\"abcdefgh\xed\xa0\x80\"".to_vec(),
            b"\"abcdefgh\xf4\x90\x80\x80\"".to_vec(),
            b"\"abcdefgh\xc0\xaf\"".to_vec(),
            b"\"abcdefgh\xf0\x9f\x98".to_vec(),
            b"\"\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\"".to_vec(),
            b"\"abcdefgh\x1f\"".to_vec(),
        ];
        for c in &cases {
            for utf8 in [true, false] {
                assert_eq!(
                    scan_string(c, 0, utf8),
                    reference_scan_string(c, 0, utf8),
                    "{c:?} utf8={utf8}"
                );
            }
        }
        assert_eq!(
            scan_string(&cases[0], 0, true),
            Ok(cases[0].len()),
            "é after a full word"
        );
        assert_eq!(
            scan_string(&cases[6], 0, true),
            Err(JsonError::InvalidUtf8 { offset: 13 })
        );
        assert_eq!(scan_string(&cases[6], 0, false), Ok(cases[6].len()));
        // The control byte after the bad sequence is what a structural scan reports.
        assert!(matches!(
            scan_string(&cases[7], 0, true),
            Err(JsonError::Syntax { offset: 18, .. })
        ));
    }

    #[test]
    fn string_scan_matches_the_two_pass_reference() {
        let pieces: [&[u8]; 16] = [
            b"a",
            b"abcdefgh",
            b"\xc3\xa9",
            b"\xe2\x82\xac",
            b"\xf0\x9f\x98\x80",
            b"\xff",
            b"\xc3",
            b"\xed\xa0\x80",
            b"\\n",
            b"\\u00e9",
            b"\\ud83d\\ude00",
            b"\\ud800",
            b"\\q",
            b"\n",
            b"\"",
            b"\x7f ~",
        ];
        let mut rng = crate::proto::testutil::XorShift::new(0x57a1);
        for _ in 0..20_000 {
            let mut s = vec![b'"'];
            let n = rng.below(12);
            for _ in 0..n {
                s.extend_from_slice(pieces[rng.below(pieces.len())]);
            }
            if rng.below(4) != 0 {
                s.push(b'"');
            }
            for utf8 in [true, false] {
                assert_eq!(
                    scan_string(&s, 0, utf8),
                    reference_scan_string(&s, 0, utf8),
                    "{s:?} utf8={utf8}"
                );
            }
        }
    }

    #[test]
    fn duplicate_keys_are_found_past_the_linear_range() {
        let mut obj = String::from("{");
        for k in 0..40 {
            obj.push_str(&format!("\"k{k}\":{k},"));
        }
        let ok = format!("{}}}", obj.trim_end_matches(','));
        assert_eq!(
            object_members(ok.as_bytes(), &Limits::default())
                .unwrap()
                .len(),
            40
        );
        for dup in ["k3", "k39"] {
            let bad = format!("{obj}\"{dup}\":0}}");
            assert!(matches!(
                object_members(bad.as_bytes(), &Limits::default()),
                Err(JsonError::DuplicateKey(k)) if k == dup
            ));
        }
    }
}
