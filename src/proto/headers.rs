//! Header policy: protocol.md "Forwarding to an MCP server" (command headers
//! over static ones, hop-by-hop and routing headers never forwarded, Accept
//! added when absent) and "Response POST / resp_headers" (the allowlist).

use std::fmt;

use super::command::Header;

/// Caps on the header set we build for one MCP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Maximum number of header lines.
    pub max_count: usize,
    /// Maximum sum of name and value lengths.
    pub max_bytes: usize,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        HeaderLimits {
            max_count: 100,
            max_bytes: 64 * 1024,
        }
    }
}

/// Why a header set was refused. Names are echoed (never values: they can be credentials).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    TooMany {
        count: usize,
        max: usize,
    },
    TooLarge {
        bytes: usize,
        max: usize,
    },
    /// Not an RFC 9110 token (the name, escaped for display).
    BadName(String),
    /// The value holds CR, LF, NUL or another control byte.
    BadValue {
        name: String,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::TooMany { count, max } => {
                write!(f, "{count} headers, the limit is {max}")
            }
            HeaderError::TooLarge { bytes, max } => {
                write!(f, "headers take {bytes} bytes, the limit is {max}")
            }
            HeaderError::BadName(n) => write!(f, "invalid header name {:?}", n.escape_debug()),
            HeaderError::BadValue { name } => write!(f, "invalid value for header {name}"),
        }
    }
}

impl std::error::Error for HeaderError {}

pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const ACCEPT_MCP: &str = "application/json, text/event-stream";

/// The `resp_headers` allowlist, in canonical spelling.
pub const RESPONSE_ALLOWLIST: &[&str] = &[
    "Content-Type",
    "Mcp-Session-Id",
    "Mcp-Protocol-Version",
    "Last-Event-ID",
    "Access-Control-Expose-Headers",
    "WWW-Authenticate",
];

/// An RFC 9110 field name (token).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A field value we are willing to put on the wire: visible ASCII, space, tab
/// and obs-text bytes; never CR, LF, NUL or other controls (header injection).
pub fn is_valid_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Hop-by-hop and routing headers that never cross the tunnel.
pub fn is_hop_by_hop(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "forwarded",
        "x-real-ip",
        "via",
    ];
    const PREFIXES: &[&str] = &["proxy-", "x-forwarded-"];
    // Case-insensitive without a lowercase copy: this runs for every header
    // of every command.
    EXACT.iter().any(|e| name.eq_ignore_ascii_case(e))
        || PREFIXES.iter().any(|p| {
            name.as_bytes()
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
        })
}

/// Header names listed in `Connection` values (lowercase).
fn connection_tokens<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let mut out = Vec::new();
    for (n, v) in headers {
        if n.eq_ignore_ascii_case("connection") {
            out.extend(
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty()),
            );
        }
    }
    out
}

fn named_in(tokens: &[String], name: &str) -> bool {
    tokens.iter().any(|t| t.eq_ignore_ascii_case(name))
}

/// Build the MCP request headers: static configured headers, then the
/// command's (the command wins per name, case-insensitively), minus hop-by-hop
/// and routing headers and whatever `Connection` names, plus
/// `Content-Type: application/json` (ours replaces any given) and
/// `Accept: application/json, text/event-stream` when no non-empty Accept is present.
pub fn forward_headers(
    static_headers: &[Header],
    command_headers: &[Header],
    limits: &HeaderLimits,
) -> Result<Vec<Header>, HeaderError> {
    let mut out = Vec::new();
    forward_header_refs(static_headers, command_headers, limits, &mut out)?;
    Ok(out
        .into_iter()
        .map(|(name, value)| Header {
            name: name.to_string(),
            value: value.to_string(),
        })
        .collect())
}

/// [`forward_headers`] without copying a name or value: `out` (cleared
/// first) borrows from the inputs, so a worker reuses one vector for every
/// command.
pub fn forward_header_refs<'a>(
    static_headers: &'a [Header],
    command_headers: &'a [Header],
    limits: &HeaderLimits,
    out: &mut Vec<(&'a str, &'a str)>,
) -> Result<(), HeaderError> {
    out.clear();
    let all = || {
        static_headers
            .iter()
            .chain(command_headers)
            .map(|h| (h.name.as_str(), h.value.as_str()))
    };
    let conn = connection_tokens(all());
    let overridden = |name: &str| {
        command_headers
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(name))
    };
    let keep = |h: &&Header| {
        let empty_accept = h.name.eq_ignore_ascii_case("accept") && h.value.trim().is_empty();
        let ours = h.name.eq_ignore_ascii_case("content-type") || empty_accept;
        !(ours || is_hop_by_hop(&h.name) || named_in(&conn, &h.name))
    };
    out.extend(
        static_headers
            .iter()
            .filter(|h| !overridden(&h.name))
            .chain(command_headers)
            .filter(keep)
            .map(|h| (h.name.as_str(), h.value.as_str())),
    );
    out.push(("Content-Type", CONTENT_TYPE_JSON));
    if !out.iter().any(|(n, _)| n.eq_ignore_ascii_case("accept")) {
        out.push(("Accept", ACCEPT_MCP));
    }
    check(out, limits)
}

fn check(headers: &[(&str, &str)], limits: &HeaderLimits) -> Result<(), HeaderError> {
    if headers.len() > limits.max_count {
        return Err(HeaderError::TooMany {
            count: headers.len(),
            max: limits.max_count,
        });
    }
    let bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    if bytes > limits.max_bytes {
        return Err(HeaderError::TooLarge {
            bytes,
            max: limits.max_bytes,
        });
    }
    for &(name, value) in headers {
        if !is_valid_name(name) {
            return Err(HeaderError::BadName(name.chars().take(64).collect()));
        }
        if !is_valid_value(value) {
            return Err(HeaderError::BadValue {
                name: name.to_string(),
            });
        }
    }
    Ok(())
}

/// Add `value` under `name`, grouping names case-insensitively (first spelling wins).
fn push_grouped(out: &mut Vec<(String, Vec<String>)>, name: &str, value: &str) {
    match out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        Some((_, vs)) => vs.push(value.to_owned()),
        None => out.push((name.to_owned(), vec![value.to_owned()])),
    }
}

/// `resp_headers` from the MCP response: only the allowlist, canonical names,
/// multi-valued, empty values dropped, `Connection` and the headers it names removed.
pub fn response_allowlist<'a>(
    headers: impl Iterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, Vec<String>)> {
    let headers: Vec<(&str, &str)> = headers.collect();
    let conn = connection_tokens(headers.iter().copied());
    let mut out = Vec::new();
    for (name, value) in headers {
        let Some(canonical) = RESPONSE_ALLOWLIST
            .iter()
            .find(|a| a.eq_ignore_ascii_case(name))
        else {
            continue;
        };
        let value = value.trim_matches([' ', '\t']);
        if value.is_empty() || named_in(&conn, name) || !is_valid_value(value) {
            continue;
        }
        push_grouped(&mut out, canonical, value);
    }
    out
}

/// Relay side: which connector request headers go into a command. Drops
/// hop-by-hop/routing headers, what `Connection` names, `X-Tunnel-Authorization`
/// always and `Authorization` when it carried the relay's own credential.
/// Names keep the client's spelling (grouped case-insensitively).
pub fn command_headers_from_client<'a>(
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    authorization_is_relay_key: bool,
) -> Vec<(String, Vec<String>)> {
    let headers: Vec<(&str, &str)> = headers.collect();
    let conn = connection_tokens(headers.iter().copied());
    let mut out = Vec::new();
    for (name, value) in headers {
        let drop = is_hop_by_hop(name)
            || named_in(&conn, name)
            || name.eq_ignore_ascii_case("x-tunnel-authorization")
            || (authorization_is_relay_key && name.eq_ignore_ascii_case("authorization"))
            || !is_valid_name(name)
            || !is_valid_value(value);
        if !drop {
            push_grouped(&mut out, name, value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    fn pairs(hs: &[Header]) -> Vec<(&str, &str)> {
        hs.iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect()
    }

    #[test]
    fn hop_by_hop_names() {
        for n in [
            "Host",
            "connection",
            "Keep-Alive",
            "Proxy-Authorization",
            "proxy-connection",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "Content-Length",
            "Forwarded",
            "X-Forwarded-For",
            "x-forwarded-proto",
            "X-Real-IP",
            "Via",
        ] {
            assert!(is_hop_by_hop(n), "{n}");
        }
        for n in [
            "Authorization",
            "Mcp-Session-Id",
            "MCP-Protocol-Version",
            "Mcp-Method",
            "Mcp-Name",
            "Mcp-Param-X",
            "Last-Event-ID",
            "Accept",
            "X-Forwarded",
        ] {
            assert!(!is_hop_by_hop(n), "{n}");
        }
    }

    #[test]
    fn forward_removes_hop_by_hop_and_connection_named() {
        let cmd = [
            h("Host", "evil.example"),
            h("Connection", "keep-alive, X-Secret-Hop"),
            h("x-secret-hop", "1"),
            h("X-Forwarded-For", "10.0.0.1"),
            h("Content-Length", "999"),
            h("Via", "1.1 proxy"),
            h("Mcp-Session-Id", "s1"),
            h("Authorization", "Bearer t"),
        ];
        let out = forward_headers(&[], &cmd, &HeaderLimits::default()).unwrap();
        assert_eq!(
            pairs(&out),
            vec![
                ("Mcp-Session-Id", "s1"),
                ("Authorization", "Bearer t"),
                ("Content-Type", CONTENT_TYPE_JSON),
                ("Accept", ACCEPT_MCP),
            ]
        );
    }

    #[test]
    fn command_headers_win_case_insensitively() {
        let stat = [
            h("X-Api-Key", "static"),
            h("X-Static", "kept"),
            h("x-multi", "s"),
        ];
        let cmd = [
            h("x-api-key", "cmd"),
            h("X-MULTI", "c1"),
            h("x-multi", "c2"),
        ];
        let out = forward_headers(&stat, &cmd, &HeaderLimits::default()).unwrap();
        assert_eq!(
            pairs(&out),
            vec![
                ("X-Static", "kept"),
                ("x-api-key", "cmd"),
                ("X-MULTI", "c1"),
                ("x-multi", "c2"),
                ("Content-Type", CONTENT_TYPE_JSON),
                ("Accept", ACCEPT_MCP),
            ]
        );
    }

    #[test]
    fn accept_added_only_when_absent_and_content_type_forced() {
        let cmd = [
            h("accept", "application/json"),
            h("Content-Type", "text/plain"),
        ];
        let out = forward_headers(&[], &cmd, &HeaderLimits::default()).unwrap();
        assert_eq!(
            pairs(&out),
            vec![
                ("accept", "application/json"),
                ("Content-Type", CONTENT_TYPE_JSON)
            ]
        );
        let stat = [h("Accept", "text/event-stream, application/json")];
        let out = forward_headers(&stat, &[], &HeaderLimits::default()).unwrap();
        assert_eq!(
            out.iter()
                .filter(|h| h.name.eq_ignore_ascii_case("accept"))
                .count(),
            1
        );
        // An empty Accept is as good as none: servers answer 406 to it.
        let out = forward_headers(&[], &[h("Accept", " ")], &HeaderLimits::default()).unwrap();
        assert_eq!(
            out.iter()
                .filter(|h| h.name.eq_ignore_ascii_case("accept"))
                .map(|h| h.value.as_str())
                .collect::<Vec<_>>(),
            vec![ACCEPT_MCP]
        );
    }

    #[test]
    fn forward_caps_and_validation() {
        let many: Vec<Header> = (0..99).map(|i| h(&format!("x-h{i}"), "v")).collect();
        let lim = HeaderLimits::default();
        // 99 + Content-Type + Accept = 101 > 100.
        assert_eq!(
            forward_headers(&[], &many, &lim),
            Err(HeaderError::TooMany {
                count: 101,
                max: 100
            })
        );
        assert!(forward_headers(&[], &many[..98], &lim).is_ok());
        let big = [h("x-big", &"a".repeat(70_000))];
        assert!(matches!(
            forward_headers(&[], &big, &lim),
            Err(HeaderError::TooLarge { .. })
        ));
        assert_eq!(
            forward_headers(&[h("bad name", "v")], &[], &lim),
            Err(HeaderError::BadName("bad name".into()))
        );
        assert_eq!(
            forward_headers(&[], &[h("x-inject", "a\r\nHost: evil")], &lim),
            Err(HeaderError::BadValue {
                name: "x-inject".into()
            })
        );
    }

    #[test]
    fn response_allowlist_rules() {
        let got = response_allowlist(
            [
                ("content-type", "application/json"),
                ("MCP-SESSION-ID", "abc"),
                ("Set-Cookie", "secret=1"),
                ("Server", "x"),
                ("www-authenticate", "Bearer realm=\"a\""),
                ("WWW-Authenticate", "Basic"),
                ("Mcp-Protocol-Version", ""),
                ("Last-Event-ID", "  "),
                ("access-control-expose-headers", "Mcp-Session-Id"),
            ]
            .into_iter(),
        );
        assert_eq!(
            got,
            vec![
                (
                    "Content-Type".to_string(),
                    vec!["application/json".to_string()]
                ),
                ("Mcp-Session-Id".into(), vec!["abc".into()]),
                (
                    "WWW-Authenticate".into(),
                    vec!["Bearer realm=\"a\"".into(), "Basic".into()]
                ),
                (
                    "Access-Control-Expose-Headers".into(),
                    vec!["Mcp-Session-Id".into()]
                ),
            ]
        );
    }

    #[test]
    fn response_allowlist_drops_connection_named() {
        let got = response_allowlist(
            [
                ("Connection", "close, mcp-session-id"),
                ("Mcp-Session-Id", "abc"),
                ("Content-Type", "text/event-stream"),
            ]
            .into_iter(),
        );
        assert_eq!(
            got,
            vec![(
                "Content-Type".to_string(),
                vec!["text/event-stream".to_string()]
            )]
        );
    }

    /// Each of the six allowlisted names passes with its value, multi-valued
    /// where repeated; a lookalike name does not.
    #[test]
    fn response_allowlist_keeps_every_listed_header() {
        let got = response_allowlist(
            [
                ("Content-Type", "text/event-stream"),
                ("mcp-session-id", "s-1"),
                ("MCP-Protocol-Version", "2026-07-28"),
                ("last-event-id", "ev-9"),
                ("Access-Control-Expose-Headers", "Mcp-Session-Id"),
                ("WWW-Authenticate", "Bearer realm=\"r\""),
                ("Last-Event-Id", "ev-10"),
                ("Mcp-Protocol-Versions", "x"),
            ]
            .into_iter(),
        );
        let want: Vec<(String, Vec<String>)> = [
            ("Content-Type", vec!["text/event-stream"]),
            ("Mcp-Session-Id", vec!["s-1"]),
            ("Mcp-Protocol-Version", vec!["2026-07-28"]),
            ("Last-Event-ID", vec!["ev-9", "ev-10"]),
            ("Access-Control-Expose-Headers", vec!["Mcp-Session-Id"]),
            ("WWW-Authenticate", vec!["Bearer realm=\"r\""]),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn client_headers_for_commands() {
        let input = [
            ("Host", "relay.example"),
            ("Authorization", "Bearer relay-key"),
            ("X-Tunnel-Authorization", "Bearer k"),
            ("Connection", "x-hop"),
            ("X-Hop", "1"),
            ("Mcp-Session-Id", "s"),
            ("mcp-param-a", "1"),
            ("MCP-Param-A", "2"),
            ("Accept", "application/json, text/event-stream"),
        ];
        let got = command_headers_from_client(input.into_iter(), true);
        assert_eq!(
            got,
            vec![
                ("Mcp-Session-Id".to_string(), vec!["s".to_string()]),
                ("mcp-param-a".into(), vec!["1".into(), "2".into()]),
                (
                    "Accept".into(),
                    vec!["application/json, text/event-stream".into()]
                ),
            ]
        );
        let got = command_headers_from_client(input.into_iter(), false);
        assert_eq!(
            got[0],
            ("Authorization".into(), vec!["Bearer relay-key".into()])
        );
    }

    #[test]
    fn name_and_value_validity() {
        assert!(is_valid_name("X-Custom_1.2~"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a:b"));
        assert!(!is_valid_name("caf\u{e9}"));
        assert!(is_valid_value("a b\tc \u{e9}"));
        assert!(is_valid_value(""));
        assert!(!is_valid_value("a\rb"));
        assert!(!is_valid_value("a\nb"));
        assert!(!is_valid_value("a\0b"));
    }
}
