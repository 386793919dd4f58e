//! `X-Tunnel-MCP-Server-Info`: protocol.md "Headers the agent sends" — compact
//! `{"version":1,"channels":[{"name":"main"}]}`, `"proc_affinity":true` only
//! for process-local channels (never `false`), ≤ 32 channels, ≤ 4096 bytes,
//! unique canonical names. Decoding (relay) accepts only what version 1 allows.

use std::fmt;

use super::channel::Channel;
use super::json::{self, JsonError, Mode};

pub const MAX_CHANNELS: usize = 32;
pub const MAX_HEADER_BYTES: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChannelDecl {
    pub name: Channel,
    pub proc_affinity: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerInfoError {
    TooManyChannels {
        count: usize,
    },
    DuplicateChannel(Channel),
    TooLarge {
        bytes: usize,
    },
    Json(JsonError),
    UnsupportedVersion,
    /// A field version 1 does not allow (clipped).
    UnknownField(String),
    MissingField(&'static str),
    BadField(&'static str),
}

impl fmt::Display for ServerInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerInfoError::TooManyChannels { count } => {
                write!(f, "{count} channels declared, the limit is {MAX_CHANNELS}")
            }
            ServerInfoError::DuplicateChannel(c) => write!(f, "channel {c} declared twice"),
            ServerInfoError::TooLarge { bytes } => write!(
                f,
                "server info is {bytes} bytes, the limit is {MAX_HEADER_BYTES}"
            ),
            ServerInfoError::Json(e) => write!(f, "server info: {e}"),
            ServerInfoError::UnsupportedVersion => f.write_str("server info version is not 1"),
            ServerInfoError::UnknownField(n) => {
                write!(
                    f,
                    "server info field {:?} not allowed",
                    n.escape_debug().to_string()
                )
            }
            ServerInfoError::MissingField(n) => write!(f, "server info lacks {n}"),
            ServerInfoError::BadField(n) => write!(f, "server info field {n} is invalid"),
        }
    }
}

impl std::error::Error for ServerInfoError {}

fn check_unique(channels: &[ChannelDecl]) -> Result<(), ServerInfoError> {
    if channels.len() > MAX_CHANNELS {
        return Err(ServerInfoError::TooManyChannels {
            count: channels.len(),
        });
    }
    for (i, c) in channels.iter().enumerate() {
        if channels[..i].iter().any(|p| p.name == c.name) {
            return Err(ServerInfoError::DuplicateChannel(c.name.clone()));
        }
    }
    Ok(())
}

/// The compact header value; rejects declarations the protocol forbids.
pub fn encode(channels: &[ChannelDecl]) -> Result<String, ServerInfoError> {
    check_unique(channels)?;
    let mut out = String::from("{\"version\":1,\"channels\":[");
    for (i, c) in channels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Channel names are [a-z0-9_-]: no escaping needed.
        out.push_str("{\"name\":\"");
        out.push_str(c.name.as_str());
        out.push('"');
        if c.proc_affinity {
            out.push_str(",\"proc_affinity\":true");
        }
        out.push('}');
    }
    out.push_str("]}");
    if out.len() > MAX_HEADER_BYTES {
        return Err(ServerInfoError::TooLarge { bytes: out.len() });
    }
    Ok(out)
}

/// Relay side: parse a header value sent by an agent.
pub fn decode(header: &str) -> Result<Vec<ChannelDecl>, ServerInfoError> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(ServerInfoError::TooLarge {
            bytes: header.len(),
        });
    }
    let limits = json::Limits {
        max_depth: 3,
        max_len: MAX_HEADER_BYTES,
    };
    let bytes = header.as_bytes();
    let top = json::members(bytes, &limits, Mode::STRICT, 2).map_err(map_json)?;
    let (mut version, mut channels_raw) = (None, None);
    for (k, r) in top {
        match &*k {
            "version" => version = Some(&bytes[r]),
            "channels" => channels_raw = Some(&bytes[r]),
            other => return Err(ServerInfoError::UnknownField(clip(other))),
        }
    }
    match version {
        None => return Err(ServerInfoError::MissingField("version")),
        Some(v) if v == b"1" => {}
        Some(_) => return Err(ServerInfoError::UnsupportedVersion),
    }
    let raw = channels_raw.ok_or(ServerInfoError::MissingField("channels"))?;
    let elems = json::elements(raw, &limits, true, MAX_CHANNELS).map_err(|e| match e {
        JsonError::TooManyItems { .. } => ServerInfoError::TooManyChannels {
            count: MAX_CHANNELS + 1,
        },
        JsonError::NotAnArray => ServerInfoError::BadField("channels"),
        e => ServerInfoError::Json(e),
    })?;
    let mut out = Vec::with_capacity(elems.len());
    for r in elems {
        let item = &raw[r];
        let fields = json::members(item, &limits, Mode::STRICT, 2).map_err(map_json)?;
        let mut decl: Option<Channel> = None;
        let mut proc_affinity = false;
        for (k, vr) in fields {
            let v = &item[vr];
            match &*k {
                "name" => {
                    let s = json::parse_string(v).map_err(|_| ServerInfoError::BadField("name"))?;
                    decl = Some(Channel::parse(&s).map_err(|_| ServerInfoError::BadField("name"))?);
                }
                "proc_affinity" => {
                    proc_affinity = match v {
                        b"true" => true,
                        b"false" => false,
                        _ => return Err(ServerInfoError::BadField("proc_affinity")),
                    }
                }
                other => return Err(ServerInfoError::UnknownField(clip(other))),
            }
        }
        let name = decl.ok_or(ServerInfoError::MissingField("name"))?;
        out.push(ChannelDecl {
            name,
            proc_affinity,
        });
    }
    check_unique(&out)?;
    Ok(out)
}

fn map_json(e: JsonError) -> ServerInfoError {
    match e {
        JsonError::TooManyItems { .. } => ServerInfoError::UnknownField(String::new()),
        e => ServerInfoError::Json(e),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, proc_affinity: bool) -> ChannelDecl {
        ChannelDecl {
            name: Channel::parse(name).unwrap(),
            proc_affinity,
        }
    }

    #[test]
    fn encode_compact_and_omits_false() {
        assert_eq!(
            encode(&[decl("main", false)]).unwrap(),
            r#"{"version":1,"channels":[{"name":"main"}]}"#
        );
        assert_eq!(
            encode(&[decl("main", true), decl("harpoon", true)]).unwrap(),
            r#"{"version":1,"channels":[{"name":"main","proc_affinity":true},{"name":"harpoon","proc_affinity":true}]}"#
        );
        assert_eq!(encode(&[]).unwrap(), r#"{"version":1,"channels":[]}"#);
    }

    #[test]
    fn encode_limits() {
        let many: Vec<ChannelDecl> = (0..33).map(|i| decl(&format!("c{i}"), false)).collect();
        assert_eq!(
            encode(&many),
            Err(ServerInfoError::TooManyChannels { count: 33 })
        );
        assert!(encode(&many[..32]).is_ok());
        assert_eq!(
            encode(&[decl("a", false), decl("b", false), decl("a", true)]),
            Err(ServerInfoError::DuplicateChannel(
                Channel::parse("a").unwrap()
            ))
        );
        // The largest declaration the other caps allow still fits the byte cap,
        // so TooLarge from encode is a guard, not a reachable outcome today.
        let long: Vec<ChannelDecl> = (0..32)
            .map(|i| decl(&format!("{i:02}{}", "x".repeat(62)), true))
            .collect();
        let s = encode(&long).unwrap();
        assert!(s.len() <= MAX_HEADER_BYTES);
    }

    #[test]
    fn decode_round_trip_and_strictness() {
        let decls = vec![decl("main", true), decl("h-2", false)];
        assert_eq!(decode(&encode(&decls).unwrap()).unwrap(), decls);
        assert_eq!(
            decode(r#"{"version":1,"channels":[{"name":"a","proc_affinity":false}]}"#).unwrap(),
            vec![decl("a", false)]
        );
        let cases: &[(&str, ServerInfoError)] = &[
            (
                r#"{"version":2,"channels":[]}"#,
                ServerInfoError::UnsupportedVersion,
            ),
            (
                r#"{"channels":[]}"#,
                ServerInfoError::MissingField("version"),
            ),
            (
                r#"{"version":1}"#,
                ServerInfoError::MissingField("channels"),
            ),
            (
                r#"{"version":1,"channels":[],"url":"x"}"#,
                ServerInfoError::UnknownField(String::new()),
            ),
            (
                r#"{"version":1,"url":"x"}"#,
                ServerInfoError::UnknownField("url".into()),
            ),
            (
                r#"{"version":1,"channels":[{"name":"a","cmd":"x"}]}"#,
                ServerInfoError::UnknownField("cmd".into()),
            ),
            (
                r#"{"version":1,"channels":[{"name":"A"}]}"#,
                ServerInfoError::BadField("name"),
            ),
            (
                r#"{"version":1,"channels":[{"proc_affinity":true}]}"#,
                ServerInfoError::MissingField("name"),
            ),
            (
                r#"{"version":1,"channels":[{"name":"a","proc_affinity":1}]}"#,
                ServerInfoError::BadField("proc_affinity"),
            ),
            (
                r#"{"version":1,"channels":[{"name":"a"},{"name":"a"}]}"#,
                ServerInfoError::DuplicateChannel(Channel::parse("a").unwrap()),
            ),
            (
                r#"{"version":1,"channels":{}}"#,
                ServerInfoError::BadField("channels"),
            ),
            (
                r#"{"version":1,"version":1}"#,
                ServerInfoError::Json(JsonError::DuplicateKey("version".into())),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&decode(input).unwrap_err(), want, "{input}");
        }
        let many: Vec<String> = (0..33).map(|i| format!(r#"{{"name":"c{i}"}}"#)).collect();
        assert!(matches!(
            decode(&format!(
                r#"{{"version":1,"channels":[{}]}}"#,
                many.join(",")
            )),
            Err(ServerInfoError::TooManyChannels { .. })
        ));
        assert!(matches!(
            decode(&" ".repeat(5000)),
            Err(ServerInfoError::TooLarge { .. })
        ));
        assert!(matches!(
            decode("{"),
            Err(ServerInfoError::Json(JsonError::Truncated))
        ));
    }
}
