//! Which MCP target serves which channel: `--mcp.server-url` and
//! `--mcp.command`, each repeatable, as a bare value (channel `main`) or as
//! `channel=NAME,url=URL[,header=Name:value…][,http-proxy=URL]
//! [,client-cert=PATH,client-key=PATH][,ca-bundle=PATH]` /
//! `channel=NAME,command=CMD`; and `--control-plane.poll-channel`, which
//! limits what is polled.
//!
//! Entries split at a comma followed by a known key (`channel=`, `url=`,
//! `header=`, `command=`, …), so commas inside a header value stay in it, and
//! `command=` takes the rest of the entry verbatim (a command may hold anything).

use std::fmt;
use std::time::SystemTime;

use super::{
    invalid, parse_extra_header, parse_http_url, ConfigError, ExtraHeader, Setting, MCP_COMMAND,
    MCP_EXTRA_HEADERS, MCP_SERVER_URL, POLL_CHANNEL,
};
use crate::agent::argv;
use crate::agent::edge::{channel_edge, ChannelEdge, RawChannelEdge};
use crate::proto::channel::Channel;
use crate::proto::server_info::MAX_CHANNELS;

/// Per channel URL: more headers than any deployment needs.
const MAX_HEADERS: usize = 64;

/// How one target is reached.
pub enum TargetSpec {
    /// Streamable HTTP; `headers` and `edge` (proxy, client certificate,
    /// extra CAs) apply to this URL only.
    Http {
        url: String,
        headers: Vec<ExtraHeader>,
        edge: Box<ChannelEdge>,
    },
    /// A child process, argv already split (no shell).
    Stdio { argv: Vec<String> },
}

impl fmt::Debug for TargetSpec {
    // Header values and command arguments may carry credentials: names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSpec::Http { headers, edge, .. } => {
                let names: Vec<&str> = headers.iter().map(|h| h.name.as_str()).collect();
                // ProxyUrl and ClientIdentity print no password or key.
                write!(f, "Http {{ headers: {names:?}, edge: {edge:?} }}")
            }
            TargetSpec::Stdio { argv } => write!(f, "Stdio {{ args: {} }}", argv.len()),
        }
    }
}

/// One target and the channels it serves (one, except for the reference
/// client's form: a bare URL serving every `--control-plane.poll-channel`).
#[derive(Debug)]
pub struct ChannelTarget {
    pub channels: Vec<Channel>,
    pub spec: TargetSpec,
}

/// The resolved plan: targets, and the channels polled and declared.
#[derive(Debug)]
pub struct Plan {
    pub targets: Vec<ChannelTarget>,
    pub channels: Vec<Channel>,
    /// Name the channels in the poll query (else the control plane's default, `main`).
    pub explicit_channels: bool,
}

pub struct Raw<'a> {
    pub urls: Vec<String>,
    pub commands: Vec<String>,
    pub extra_headers: Vec<ExtraHeader>,
    /// `--control-plane.poll-channel`, validated, in order, deduplicated.
    pub poll: Vec<Channel>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// When channel client certificates must be valid.
    pub now: SystemTime,
}

const KEYS: &[&str] = &[
    "channel=",
    "url=",
    "header=",
    "command=",
    "http-proxy=",
    "client-cert=",
    "client-key=",
    "ca-bundle=",
];

fn is_keyed(entry: &str) -> bool {
    KEYS.iter().any(|k| entry.starts_with(k))
}

/// `key=value` pieces; `command=` swallows the rest of the entry.
fn pieces(entry: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = entry;
    loop {
        let (key, after) = match rest.split_once('=') {
            Some((k, a)) => (k, a),
            None => {
                out.push((rest, ""));
                return out;
            }
        };
        if key == "command" {
            out.push((key, after));
            return out;
        }
        let cut = after
            .match_indices(',')
            .map(|(i, _)| i)
            .find(|&i| KEYS.iter().any(|k| after[i + 1..].starts_with(k)));
        match cut {
            Some(i) => {
                out.push((key, &after[..i]));
                rest = &after[i + 1..];
            }
            None => {
                out.push((key, after));
                return out;
            }
        }
    }
}

fn channel_of(setting: &Setting, raw: &str) -> Result<Channel, ConfigError> {
    Channel::parse(raw).map_err(|_| invalid(setting, "channel names match ^[a-z0-9_-]{1,64}$"))
}

/// One `--mcp.server-url` entry, checked.
struct UrlEntry {
    channel: Option<Channel>,
    url: String,
    headers: Vec<ExtraHeader>,
    edge: Box<ChannelEdge>,
}

const URL_ENTRY_FORM: &str = "expected channel=NAME,url=URL[,header=Name:value…][,http-proxy=URL][,client-cert=PATH,client-key=PATH][,ca-bundle=PATH]";

fn parse_url_entry(
    entry: &str,
    env: &dyn Fn(&str) -> Option<String>,
    now: SystemTime,
) -> Result<UrlEntry, ConfigError> {
    let s = &MCP_SERVER_URL;
    if !is_keyed(entry) {
        let url = entry.trim().to_string();
        parse_http_url(&url).map_err(|why| invalid(s, why))?;
        return Ok(UrlEntry {
            channel: None,
            url,
            headers: Vec::new(),
            edge: Box::default(),
        });
    }
    let (mut channel, mut url, mut headers) = (None, None, Vec::new());
    let mut raw_edge = RawChannelEdge::default();
    for (key, value) in pieces(entry) {
        let edge_slot = match key {
            "http-proxy" => Some(&mut raw_edge.http_proxy),
            "client-cert" => Some(&mut raw_edge.client_cert),
            "client-key" => Some(&mut raw_edge.client_key),
            "ca-bundle" => Some(&mut raw_edge.ca_bundle),
            _ => None,
        };
        if let Some(slot) = edge_slot {
            if slot.replace(value).is_some() {
                return Err(invalid(s, format_args!("{key}= given twice")));
            }
            continue;
        }
        match key {
            "channel" if channel.is_none() => channel = Some(channel_of(s, value.trim())?),
            "url" if url.is_none() => {
                let v = value.trim();
                parse_http_url(v).map_err(|why| invalid(s, why))?;
                url = Some(v.to_string());
            }
            "header" => {
                headers.push(parse_extra_header(value, env).map_err(|why| invalid(s, why))?);
                if headers.len() > MAX_HEADERS {
                    return Err(invalid(s, "at most 64 headers per channel"));
                }
            }
            "channel" | "url" => return Err(invalid(s, format_args!("{key}= given twice"))),
            _ => return Err(invalid(s, URL_ENTRY_FORM)),
        }
    }
    let channel = channel.ok_or_else(|| invalid(s, "channel=NAME is missing"))?;
    let url = url.ok_or_else(|| invalid(s, "url=URL is missing"))?;
    // Checked once the channel is known, so the line names it.
    let edge = channel_edge(&raw_edge, now)
        .map_err(|why| invalid(s, format_args!("channel {channel}: {why}")))?;
    Ok(UrlEntry {
        channel: Some(channel),
        url,
        headers,
        edge: Box::new(edge),
    })
}

fn parse_command_entry(entry: &str) -> Result<(Option<Channel>, Vec<String>), ConfigError> {
    let s = &MCP_COMMAND;
    let split = |cmd: &str| argv::split(cmd).map_err(|e| invalid(s, e));
    if !is_keyed(entry) {
        return Ok((None, split(entry)?));
    }
    let (mut channel, mut command) = (None, None);
    for (key, value) in pieces(entry) {
        match key {
            "channel" if channel.is_none() => channel = Some(channel_of(s, value.trim())?),
            "command" => command = Some(split(value)?),
            "channel" => return Err(invalid(s, "channel= given twice")),
            _ => return Err(invalid(s, "expected channel=NAME,command=CMD")),
        }
    }
    let channel = channel.ok_or_else(|| invalid(s, "channel=NAME is missing"))?;
    let command = command.ok_or_else(|| invalid(s, "command=CMD is missing"))?;
    Ok((Some(channel), command))
}

pub fn resolve(raw: Raw<'_>) -> Result<Plan, ConfigError> {
    // (channel, was it bare, spec, the setting it came from)
    let mut entries: Vec<(Channel, bool, TargetSpec, &Setting)> = Vec::new();
    let mut push = |channel: Channel,
                    bare: bool,
                    spec: TargetSpec,
                    setting: &'static Setting|
     -> Result<(), ConfigError> {
        if entries.iter().any(|(c, ..)| *c == channel) {
            return Err(invalid(
                setting,
                format_args!("channel {channel} is configured more than once"),
            ));
        }
        entries.push((channel, bare, spec, setting));
        Ok(())
    };
    let mut bare_url = false;
    for entry in &raw.urls {
        let UrlEntry {
            channel,
            url,
            headers,
            edge,
        } = parse_url_entry(entry, raw.env, raw.now)?;
        bare_url |= channel.is_none();
        let bare = channel.is_none();
        push(
            channel.unwrap_or_else(Channel::main),
            bare,
            TargetSpec::Http { url, headers, edge },
            &MCP_SERVER_URL,
        )?;
    }
    for entry in &raw.commands {
        let (channel, argv) = parse_command_entry(entry)?;
        let bare = channel.is_none();
        push(
            channel.unwrap_or_else(Channel::main),
            bare,
            TargetSpec::Stdio { argv },
            &MCP_COMMAND,
        )?;
    }
    if entries.is_empty() {
        return Err(ConfigError(format!(
            "missing required --{} ({}) or --{} ({})",
            MCP_SERVER_URL.flag, MCP_SERVER_URL.env, MCP_COMMAND.flag, MCP_COMMAND.env
        )));
    }
    if entries.len() > MAX_CHANNELS {
        return Err(invalid(&MCP_SERVER_URL, "at most 32 channels"));
    }

    // --mcp.extra-headers belong to the bare URL (the reference client's single
    // server); a channel URL has its own header= entries, so a credential meant
    // for one origin never reaches another.
    if !raw.extra_headers.is_empty() {
        if !bare_url {
            return Err(invalid(
                &MCP_EXTRA_HEADERS,
                "applies to a bare --mcp.server-url; give a channel URL header=Name:value entries",
            ));
        }
        for (_, bare, spec, _) in &mut entries {
            if let (true, TargetSpec::Http { headers, .. }) = (*bare, spec) {
                let mut all = raw.extra_headers.clone();
                all.append(headers);
                *headers = all;
            }
        }
    }

    let explicit = !raw.poll.is_empty();
    // The reference client's form: one bare URL serves every polled channel.
    if explicit && entries.len() == 1 && entries[0].1 {
        let (_, _, spec, _) = entries.remove(0);
        return Ok(Plan {
            targets: vec![ChannelTarget {
                channels: raw.poll.clone(),
                spec,
            }],
            channels: raw.poll,
            explicit_channels: true,
        });
    }
    if let Some(c) = raw
        .poll
        .iter()
        .find(|c| !entries.iter().any(|(e, ..)| e == *c))
    {
        return Err(invalid(
            &POLL_CHANNEL,
            format_args!("channel {c} has no --mcp.server-url or --mcp.command"),
        ));
    }
    let targets: Vec<ChannelTarget> = entries
        .into_iter()
        .filter(|(c, ..)| !explicit || raw.poll.contains(c))
        .map(|(c, _, spec, _)| ChannelTarget {
            channels: vec![c],
            spec,
        })
        .collect();
    let channels: Vec<Channel> = if explicit {
        raw.poll
    } else {
        targets.iter().flat_map(|t| t.channels.clone()).collect()
    };
    let explicit_channels = explicit || channels != [Channel::main()];
    Ok(Plan {
        targets,
        channels,
        explicit_channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_known_keys_only() {
        assert_eq!(
            pieces("channel=a,url=http://h/x?a=1,b=2,header=X-A: 1, 2,header=B:c"),
            [
                ("channel", "a"),
                ("url", "http://h/x?a=1,b=2"),
                ("header", "X-A: 1, 2"),
                ("header", "B:c")
            ]
        );
        assert_eq!(
            pieces("url=http://h/?a=1,b=2,http-proxy=http://u:p%2Cw@p:1,client-cert=/c.pem,client-key=/c.key,ca-bundle=/ca,x.pem,channel=a"),
            [
                ("url", "http://h/?a=1,b=2"),
                ("http-proxy", "http://u:p%2Cw@p:1"),
                ("client-cert", "/c.pem"),
                ("client-key", "/c.key"),
                ("ca-bundle", "/ca,x.pem"),
                ("channel", "a")
            ]
        );
        assert_eq!(
            pieces("channel=fs,command=srv --x 'a,url=b' ,channel=z"),
            [
                ("channel", "fs"),
                ("command", "srv --x 'a,url=b' ,channel=z")
            ]
        );
    }
}
