//! `mcp-tunnel agent` configuration: flags > environment > `--env-file` > defaults.
//!
//! Names follow the reference client so a deployment switches by replacing the
//! binary. Every missing or invalid value is one [`ConfigError`] line naming the
//! flag and its environment variable; values are never echoed (some are secrets).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

use super::edge::{self, EdgeConfig};
use super::secret::{Secret, SecretSource};
use crate::net::listen_addr::ListenAddr;
use crate::ops::log::{parse_level, LogFormat};
use crate::proto::channel::Channel;
use crate::proto::timeout::parse_config_duration;
pub use targets::{ChannelTarget, Plan, TargetSpec};

mod targets;

/// One configurable setting: its flag (without `--`), environment variable and default.
pub struct Setting {
    pub flag: &'static str,
    pub env: &'static str,
    pub default: Option<&'static str>,
    pub help: &'static str,
    pub repeatable: bool,
}

const fn s(
    flag: &'static str,
    env: &'static str,
    default: Option<&'static str>,
    help: &'static str,
) -> Setting {
    Setting {
        flag,
        env,
        default,
        help,
        repeatable: false,
    }
}

pub const BASE_URL: Setting = s(
    "control-plane.base-url",
    "CONTROL_PLANE_BASE_URL",
    Some("https://api.openai.com"),
    "control plane root URL (http:// or https://)",
);
pub const URL_PATH: Setting = s(
    "control-plane.url-path",
    "CONTROL_PLANE_URL_PATH",
    None,
    "optional path prefix placed before /v1",
);
pub const TUNNEL_ID: Setting = s(
    "control-plane.tunnel-id",
    "CONTROL_PLANE_TUNNEL_ID",
    None,
    "tunnel id (required)",
);
pub const API_KEY: Setting = s(
    "control-plane.api-key",
    "CONTROL_PLANE_API_KEY",
    None,
    "runtime API key (required unless --control-plane.client-cert is set and the tunnel admits agents by certificate; fallback OPENAI_API_KEY); a value, env:NAME or file:/path (re-read on 401)",
);
/// The reference client's fallback for the API key.
pub const API_KEY_FALLBACK_ENV: &str = "OPENAI_API_KEY";
pub const ORGANIZATION_ID: Setting = s(
    "control-plane.organization-id",
    "CONTROL_PLANE_ORGANIZATION_ID",
    None,
    "sent as OpenAI-Organization when set",
);
pub const MAX_INFLIGHT: Setting = s(
    "control-plane.max-inflight",
    "CONTROL_PLANE_MAX_INFLIGHT",
    Some("20"),
    "commands held locally (queued + running); polling pauses when full",
);
pub const POLL_TIMEOUT: Setting = s(
    "control-plane.poll-timeout",
    "CONTROL_PLANE_POLL_TIMEOUT",
    Some("30s"),
    "long-poll wait requested from the control plane",
);
pub const POLL_CHANNEL: Setting = Setting {
    flag: "control-plane.poll-channel",
    env: "CONTROL_PLANE_POLL_CHANNEL",
    default: None,
    help: "channel to poll and serve (repeatable; env: comma-separated); default main",
    repeatable: true,
};
pub const MCP_SERVER_URL: Setting = Setting {
    flag: "mcp.server-url",
    env: "MCP_SERVER_URL",
    default: None,
    help: "Streamable HTTP URL of an MCP server: a URL (channel main) or \
           channel=NAME,url=URL[,header=Name:value...][,http-proxy=http://[user:password@]host:port]\
           [,client-cert=PATH,client-key=PATH][,ca-bundle=PATH] (repeatable; this or --mcp.command \
           is required); the channel's proxy, certificate and CAs apply to its URL only \
           (no proxy unless http-proxy= is given; logged as user:***)",
    repeatable: true,
};
pub const MCP_COMMAND: Setting = Setting {
    flag: "mcp.command",
    env: "MCP_COMMAND",
    default: None,
    help: "stdio MCP server to run (no shell; quotes and backslashes group words): a command (channel main) or channel=NAME,command=CMD (repeatable)",
    repeatable: true,
};
pub const MCP_EXTRA_HEADERS: Setting = Setting {
    flag: "mcp.extra-headers",
    env: "MCP_EXTRA_HEADERS",
    default: None,
    help: "static headers for MCP requests, 'Name: value' (repeatable; comma or newline separated); value may be env:NAME or file:/path",
    repeatable: true,
};
pub const MCP_MAX_CONCURRENT: Setting = s(
    "mcp.max-concurrent-requests",
    "MCP_MAX_CONCURRENT_REQUESTS",
    Some("10"),
    "MCP requests in progress at once (worker threads)",
);
pub const MCP_CONNECTION_MAX_TTL: Setting = s(
    "mcp.connection-max-ttl",
    "MCP_CONNECTION_MAX_TTL",
    Some("10m"),
    "how long an idle pooled MCP connection is kept",
);
pub const MCP_STARTUP_WAIT: Setting = s(
    "mcp.startup-wait-timeout",
    "MCP_STARTUP_WAIT_TIMEOUT",
    Some("0"),
    "wait up to this long at start for the MCP server to answer a probe (0: do not wait)",
);
pub const MCP_MAX_REQUEST_DURATION: Setting = s(
    "mcp.max-request-duration",
    "MCP_MAX_REQUEST_DURATION",
    Some("10m"),
    "cap on one MCP exchange when the command has no response_timeout (a stream that never ends)",
);
pub const DRAIN_TIMEOUT: Setting = s(
    "shutdown.drain-timeout",
    "SHUTDOWN_DRAIN_TIMEOUT",
    Some("30s"),
    "on SIGTERM/SIGINT, how long in-flight commands may finish",
);
pub const HEALTH_LISTEN_ADDR: Setting = s(
    "health.listen-addr",
    "HEALTH_LISTEN_ADDR",
    Some("127.0.0.1:8080"),
    "address for /healthz, /readyz and /metrics: host:port, unix:/path, or off",
);
pub const LOG_LEVEL: Setting = s(
    "log.level",
    "LOG_LEVEL",
    Some("info"),
    "trace, debug, info, warn, error or off",
);
pub const LOG_FORMAT: Setting = s("log.format", "LOG_FORMAT", Some("text"), "text or json");
pub const LOG_FILE: Setting = s(
    "log.file",
    "LOG_FILE",
    None,
    "append logs to this file instead of stderr; reopened on SIGHUP (logrotate)",
);
pub const PID_FILE: Setting = s(
    "pid-file",
    "PID_FILE",
    None,
    "write the process id here once started; removed on exit",
);

pub const SETTINGS: &[&Setting] = &[
    &BASE_URL,
    &URL_PATH,
    &TUNNEL_ID,
    &API_KEY,
    &ORGANIZATION_ID,
    &MAX_INFLIGHT,
    &POLL_TIMEOUT,
    &POLL_CHANNEL,
    &MCP_SERVER_URL,
    &MCP_COMMAND,
    &MCP_EXTRA_HEADERS,
    &MCP_MAX_CONCURRENT,
    &MCP_CONNECTION_MAX_TTL,
    &MCP_STARTUP_WAIT,
    &MCP_MAX_REQUEST_DURATION,
    &DRAIN_TIMEOUT,
    &HEALTH_LISTEN_ADDR,
    &LOG_LEVEL,
    &LOG_FORMAT,
    &LOG_FILE,
    &PID_FILE,
    // The network edge (agent::edge): proxies, trust, client certificates.
    &edge::HTTP_PROXY,
    &edge::CP_HTTP_PROXY,
    &edge::CA_BUNDLE,
    &edge::CP_CLIENT_CERT,
    &edge::CP_CLIENT_KEY,
    &edge::MCP_CLIENT_CERT,
    &edge::MCP_CLIENT_KEY,
];

/// A header added to every MCP request. The value may hold a credential.
#[derive(Clone, Debug)]
pub struct ExtraHeader {
    pub name: String,
    pub value: Secret,
}

#[derive(Debug)]
pub struct AgentConfig {
    /// Scheme and authority, no trailing slash.
    pub base_url: String,
    /// Empty, or `/prefix` without a trailing slash.
    pub url_path: String,
    pub tunnel_id: String,
    pub api_key_source: SecretSource,
    pub api_key: Secret,
    pub organization_id: Option<String>,
    pub max_inflight: usize,
    pub poll_timeout: Duration,
    /// The channels polled, served and declared; `explicit_channels` tells
    /// whether to name them in the poll.
    pub channels: Vec<Channel>,
    pub explicit_channels: bool,
    /// Each target and the channels it serves.
    pub targets: Vec<ChannelTarget>,
    pub max_concurrent: usize,
    pub connection_max_ttl: Duration,
    pub startup_wait_timeout: Duration,
    pub max_request_duration: Duration,
    pub drain_timeout: Duration,
    pub health_listen: Option<ListenAddr>,
    pub log_level: LevelFilter,
    pub log_format: LogFormat,
    pub log_file: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    /// Proxies, extra trust and client certificates, checked.
    pub edge: EdgeConfig,
}

impl AgentConfig {
    /// Control-plane connections that can be busy at once: the poll and a
    /// response post from every worker thread (the HTTP pool, one per stdio
    /// channel, the pool for unserved channels). The pool keeps that many
    /// idle, so a burst reuses them instead of reconnecting.
    pub fn control_plane_connections(&self) -> usize {
        let stdio = self
            .targets
            .iter()
            .filter(|t| matches!(t.spec, TargetSpec::Stdio { .. }))
            .count();
        let http = self
            .targets
            .iter()
            .any(|t| matches!(t.spec, TargetSpec::Http { .. }));
        1 + if http { self.max_concurrent } else { 0 } + stdio + 1
    }

    /// Whether any connection the agent opens uses TLS: the control plane or
    /// an HTTP target with an `https://` URL (proxies are plain HTTP CONNECT
    /// proxies). Without one the system trust store is never needed, and an
    /// idle agent does not keep its few hundred parsed certificates.
    pub fn dials_https(&self) -> bool {
        let tls = |url: &str| {
            // Anything but a plain http:// URL counts, so a URL that somehow
            // does not parse here still gets the roots.
            url.parse::<http::Uri>()
                .map_or(true, |u| u.scheme_str() != Some("http"))
        };
        tls(&self.base_url)
            || self.targets.iter().any(|t| match &t.spec {
                TargetSpec::Http { url, .. } => tls(url),
                TargetSpec::Stdio { .. } => false,
            })
    }
}

pub enum Parsed {
    Run(Box<AgentConfig>),
    Help,
}

/// A configuration error: one line naming the flag and its variable.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn invalid(setting: &Setting, why: impl fmt::Display) -> ConfigError {
    ConfigError(format!(
        "invalid value for --{} ({}): {why}",
        setting.flag, setting.env
    ))
}

fn missing(setting: &Setting) -> ConfigError {
    ConfigError(format!(
        "missing required --{} ({})",
        setting.flag, setting.env
    ))
}

/// Env-files are small operator files; a cap keeps a wrong path from being slurped.
const MAX_ENV_FILE: u64 = 1024 * 1024;

/// The three layers below the defaults.
struct Layers<'a> {
    flags: HashMap<&'static str, Vec<String>>,
    env: &'a dyn Fn(&str) -> Option<String>,
    file: HashMap<String, String>,
}

impl Layers<'_> {
    fn lookup_env(&self, name: &str) -> Option<String> {
        (self.env)(name).or_else(|| self.file.get(name).cloned())
    }

    /// The winning raw value: flag (last one), environment, env-file, default.
    fn get(&self, setting: &Setting) -> Option<String> {
        if let Some(v) = self.flags.get(setting.flag).and_then(|v| v.last()) {
            return Some(v.clone());
        }
        if let Some(v) = (self.env)(setting.env) {
            return Some(v);
        }
        if let Some(v) = self.file.get(setting.env) {
            return Some(v.clone());
        }
        setting.default.map(str::to_string)
    }

    /// Repeatable settings: every flag occurrence, else the (split) variable.
    fn get_all(&self, setting: &Setting, split: fn(&str) -> Vec<String>) -> Vec<String> {
        if let Some(v) = self.flags.get(setting.flag) {
            return v.iter().flat_map(|x| split(x)).collect();
        }
        match (self.env)(setting.env).or_else(|| self.file.get(setting.env).cloned()) {
            Some(v) => split(&v),
            None => Vec::new(),
        }
    }
}

/// Parses `mcp-tunnel agent` arguments (those after the subcommand).
/// `env` reads the process environment (injected so tests stay hermetic).
pub fn parse(
    args: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, ConfigError> {
    use lexopt::Arg;
    let mut parser = lexopt::Parser::from_args(args);
    let mut flags: HashMap<&'static str, Vec<String>> = HashMap::new();
    let mut env_file: Option<PathBuf> = None;
    loop {
        let arg = match parser.next() {
            Ok(Some(arg)) => arg,
            Ok(None) => break,
            Err(e) => return Err(ConfigError(format!("{e}"))),
        };
        match arg {
            Arg::Short('h') | Arg::Long("help") => return Ok(Parsed::Help),
            Arg::Long("env-file") => {
                let v = parser
                    .value()
                    .map_err(|e| ConfigError(format!("--env-file: {e}")))?;
                env_file = Some(PathBuf::from(v));
            }
            Arg::Long(name) => {
                let Some(setting) = SETTINGS.iter().find(|s| s.flag == name) else {
                    return Err(ConfigError(format!(
                        "unknown flag --{name} (see mcp-tunnel agent --help)"
                    )));
                };
                let value = parser
                    .value()
                    .map_err(|_| invalid(setting, "a value is required"))?
                    .into_string()
                    .map_err(|_| invalid(setting, "not valid UTF-8"))?;
                flags.entry(setting.flag).or_default().push(value);
            }
            Arg::Short(c) => {
                return Err(ConfigError(format!(
                    "unknown flag -{c} (see mcp-tunnel agent --help)"
                )))
            }
            Arg::Value(v) => {
                return Err(ConfigError(format!(
                    "unexpected argument {:?} (see mcp-tunnel agent --help)",
                    v.to_string_lossy()
                )))
            }
        }
    }
    let file = match env_file {
        Some(path) => read_env_file(&path)?,
        None => HashMap::new(),
    };
    let layers = Layers { flags, env, file };
    build(&layers).map(|c| Parsed::Run(Box::new(c)))
}

fn build(l: &Layers<'_>) -> Result<AgentConfig, ConfigError> {
    let base_url = parse_base_url(&l.get(&BASE_URL).ok_or_else(|| missing(&BASE_URL))?)
        .map_err(|why| invalid(&BASE_URL, why))?;
    let url_path = parse_url_path(&l.get(&URL_PATH).unwrap_or_default())
        .map_err(|why| invalid(&URL_PATH, why))?;
    let tunnel_id = l.get(&TUNNEL_ID).ok_or_else(|| missing(&TUNNEL_ID))?;
    check_path_segment(&tunnel_id).map_err(|why| invalid(&TUNNEL_ID, why))?;

    // The key: flag, then CONTROL_PLANE_API_KEY, then OPENAI_API_KEY (env before env-file).
    let raw_key = l
        .flags
        .get(API_KEY.flag)
        .and_then(|v| v.last().cloned())
        .or_else(|| (l.env)(API_KEY.env))
        .or_else(|| (l.env)(API_KEY_FALLBACK_ENV))
        .or_else(|| l.file.get(API_KEY.env).cloned())
        .or_else(|| l.file.get(API_KEY_FALLBACK_ENV).cloned());
    let lookup = |n: &str| l.lookup_env(n);
    // With a control-plane client certificate the key may be left out: a
    // relay tunnel in `cert` mode admits the agent by its certificate alone.
    let keyless = raw_key.is_none()
        && l.get(&edge::CP_CLIENT_CERT)
            .is_some_and(|v| !v.trim().is_empty());
    let (api_key_source, api_key) = match raw_key {
        Some(raw) => {
            let source = SecretSource::parse(&raw);
            let key = source
                .resolve(&lookup)
                .map_err(|why| invalid(&API_KEY, why))?;
            (source, key)
        }
        None if keyless => {
            let none = Secret::new(String::new());
            (SecretSource::Literal(none.clone()), none)
        }
        None => {
            return Err(ConfigError(format!(
            "missing required --{} ({} or {}; may be left out with --control-plane.client-cert)",
            API_KEY.flag, API_KEY.env, API_KEY_FALLBACK_ENV
        )))
        }
    };

    let organization_id = match l.get(&ORGANIZATION_ID) {
        Some(v) if v.is_empty() => None,
        Some(v) => {
            if !v.bytes().all(|b| b.is_ascii_graphic()) || v.len() > 256 {
                return Err(invalid(
                    &ORGANIZATION_ID,
                    "expected visible ASCII, at most 256 bytes",
                ));
            }
            Some(v)
        }
        None => None,
    };
    let max_inflight = parse_count(l, &MAX_INFLIGHT, 1, 10_000)?;
    let poll_timeout = parse_duration(l, &POLL_TIMEOUT)?;
    if poll_timeout < Duration::from_millis(100) || poll_timeout > Duration::from_secs(600) {
        return Err(invalid(&POLL_TIMEOUT, "expected between 100ms and 10m"));
    }

    let Plan {
        targets,
        channels,
        explicit_channels,
    } = build_plan(l, &lookup)?;

    let max_concurrent = parse_count(l, &MCP_MAX_CONCURRENT, 1, 1_000)?;
    let connection_max_ttl = parse_duration(l, &MCP_CONNECTION_MAX_TTL)?;
    let startup_wait_timeout = parse_duration(l, &MCP_STARTUP_WAIT)?;
    let max_request_duration = parse_duration(l, &MCP_MAX_REQUEST_DURATION)?;
    if max_request_duration.is_zero() {
        return Err(invalid(&MCP_MAX_REQUEST_DURATION, "must be greater than 0"));
    }
    let drain_timeout = parse_duration(l, &DRAIN_TIMEOUT)?;

    let health_listen = match l.get(&HEALTH_LISTEN_ADDR) {
        Some(v) if v.eq_ignore_ascii_case("off") || v.is_empty() => None,
        Some(v) => Some(ListenAddr::parse(&v).map_err(|why| invalid(&HEALTH_LISTEN_ADDR, why))?),
        None => None,
    };
    let log_level = parse_level(&l.get(&LOG_LEVEL).unwrap_or_default()).ok_or_else(|| {
        invalid(
            &LOG_LEVEL,
            "expected trace, debug, info, warn, error or off",
        )
    })?;
    let log_format = LogFormat::parse(&l.get(&LOG_FORMAT).unwrap_or_default())
        .ok_or_else(|| invalid(&LOG_FORMAT, "expected text or json"))?;
    let log_file = parse_path(l, &LOG_FILE)?;
    let pid_file = parse_path(l, &PID_FILE)?;
    let edge = edge::build(&|s| l.get(s), &lookup, std::time::SystemTime::now())?;

    Ok(AgentConfig {
        base_url,
        url_path,
        tunnel_id,
        api_key_source,
        api_key,
        organization_id,
        max_inflight,
        poll_timeout,
        channels,
        explicit_channels,
        targets,
        max_concurrent,
        connection_max_ttl,
        startup_wait_timeout,
        max_request_duration,
        drain_timeout,
        health_listen,
        log_level,
        log_format,
        log_file,
        pid_file,
        edge,
    })
}

/// An optional file path; empty means unset.
fn parse_path(l: &Layers<'_>, setting: &Setting) -> Result<Option<PathBuf>, ConfigError> {
    match l.get(setting) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.len() > 4096 || v.contains('\0') => {
            Err(invalid(setting, "expected a file path"))
        }
        Some(v) => Ok(Some(PathBuf::from(v))),
    }
}

/// Channels and their targets (see `targets.rs`).
fn build_plan(
    l: &Layers<'_>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan, ConfigError> {
    let mut poll: Vec<Channel> = Vec::new();
    for raw in l.get_all(&POLL_CHANNEL, split_commas) {
        let c = Channel::parse(&raw)
            .map_err(|_| invalid(&POLL_CHANNEL, "channel names match ^[a-z0-9_-]{1,64}$"))?;
        if !poll.contains(&c) {
            poll.push(c);
        }
    }
    if poll.len() > 32 {
        return Err(invalid(&POLL_CHANNEL, "at most 32 channels"));
    }
    let mut extra_headers = Vec::new();
    for entry in l.get_all(&MCP_EXTRA_HEADERS, split_header_list) {
        extra_headers.push(
            parse_extra_header(&entry, lookup).map_err(|why| invalid(&MCP_EXTRA_HEADERS, why))?,
        );
    }
    if extra_headers.len() > 64 {
        return Err(invalid(&MCP_EXTRA_HEADERS, "at most 64 headers"));
    }
    // Each flag occurrence is one entry; the variables hold a single entry
    // (commas belong to the entry's own syntax).
    let single = |v: &str| vec![v.to_string()];
    targets::resolve(targets::Raw {
        urls: l.get_all(&MCP_SERVER_URL, single),
        commands: l.get_all(&MCP_COMMAND, single),
        extra_headers,
        poll,
        env: lookup,
        now: std::time::SystemTime::now(),
    })
}

fn parse_count(
    l: &Layers<'_>,
    setting: &Setting,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    let raw = l.get(setting).ok_or_else(|| missing(setting))?;
    match raw.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            setting,
            format_args!("expected an integer from {min} to {max}"),
        )),
    }
}

fn parse_duration(l: &Layers<'_>, setting: &Setting) -> Result<Duration, ConfigError> {
    let raw = l.get(setting).ok_or_else(|| missing(setting))?;
    parse_config_duration(raw.trim())
        .map_err(|_| invalid(setting, "expected a duration such as 30s, 1m30s or 250ms"))
}

fn parse_base_url(raw: &str) -> Result<String, &'static str> {
    let uri = parse_http_url(raw)?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("expected a host root such as https://api.openai.com (use --control-plane.url-path for a prefix)");
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// An absolute http(s) URL with a host; parsing with `http` keeps us in line with ureq.
pub fn parse_http_url(raw: &str) -> Result<http::Uri, &'static str> {
    let uri: http::Uri = raw
        .parse()
        .map_err(|_| "expected an absolute http:// or https:// URL")?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("expected an absolute http:// or https:// URL"),
    }
    match uri.host() {
        Some(h) if !h.is_empty() => {}
        _ => return Err("the URL has no host"),
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("credentials in the URL are not supported");
    }
    Ok(uri)
}

fn parse_url_path(raw: &str) -> Result<String, &'static str> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for segment in trimmed.split('/') {
        check_path_segment(segment)?;
    }
    Ok(format!("/{trimmed}"))
}

/// Ids are opaque but go into a URL path: unreserved characters only, so no
/// value can change the request target.
fn check_path_segment(v: &str) -> Result<(), &'static str> {
    if v.is_empty() || v.len() > 256 {
        return Err("expected 1 to 256 characters");
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
    {
        return Err("only letters, digits, '-', '_', '.' and '~' are allowed");
    }
    if v == "." || v == ".." {
        return Err("'.' and '..' are not allowed");
    }
    Ok(())
}

fn split_commas(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Header lists: newline separated, or comma separated where the next piece
/// starts with `Name:`; a comma inside a value (`Accept: a, b`) stays in it.
pub fn split_header_list(v: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in v.split('\n') {
        for piece in line.split(',') {
            let starts_header = piece
                .split_once(':')
                .is_some_and(|(name, _)| is_token(name.trim()) && !name.trim().is_empty());
            match out.last_mut() {
                Some(last) if !starts_header => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ => out.push(piece.to_string()),
            }
        }
        // A newline always ends an entry.
        out.push(String::new());
    }
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_extra_header(
    entry: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ExtraHeader, String> {
    let (name, value) = entry
        .split_once(':')
        .ok_or_else(|| "expected 'Name: value'".to_string())?;
    let name = name.trim();
    if !is_token(name) {
        return Err("a header name is not a valid HTTP token".to_string());
    }
    let value = SecretSource::parse(value.trim())
        .resolve(env)
        .map_err(|e| format!("header {name}: {e}"))?;
    Ok(ExtraHeader {
        name: name.to_string(),
        value,
    })
}

/// `KEY=VALUE` lines; `#` comments, blank lines, an optional `export ` and
/// matching single or double quotes around the value.
pub fn parse_env_file(text: &str) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", i + 1));
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("line {}: invalid variable name", i + 1));
        }
        let value = value.trim();
        let value = match value.as_bytes() {
            [q @ (b'"' | b'\''), .., last] if last == q && value.len() >= 2 => {
                &value[1..value.len() - 1]
            }
            [b'"' | b'\'', ..] => return Err(format!("line {}: unterminated quote", i + 1)),
            _ => value,
        };
        map.insert(key.to_string(), value.to_string());
    }
    Ok(map)
}

fn read_env_file(path: &std::path::Path) -> Result<HashMap<String, String>, ConfigError> {
    let err = |why: String| ConfigError(format!("invalid --env-file {}: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| err(e.kind().to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_ENV_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.kind().to_string()))?;
    if bytes.len() as u64 > MAX_ENV_FILE {
        return Err(err(format!("larger than {MAX_ENV_FILE} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8".to_string()))?;
    parse_env_file(&text).map_err(err)
}

/// `mcp-tunnel agent --help`. Built from the settings table; it shows defaults,
/// never current values, so no secret can reach it.
pub fn help() -> String {
    let mut out = String::from(
        "Usage: mcp-tunnel agent [OPTIONS]   (alias: run)\n\n\
         Long-polls the tunnel control plane for MCP requests, forwards each to the MCP\n\
         server and posts the answers back. Flags win over environment variables, which\n\
         win over --env-file, which wins over defaults.\n\nOptions:\n",
    );
    out.push_str("  --env-file PATH\n      read KEY=VALUE lines (the OpenRC conf.d style)\n");
    for s in SETTINGS {
        out.push_str(&format!("  --{} VALUE  [env: {}]", s.flag, s.env));
        if let Some(d) = s.default {
            out.push_str(&format!(" [default: {d}]"));
        }
        out.push_str(&format!("\n      {}\n", s.help));
    }
    out.push_str("  -h, --help\n      print this help\n");
    out.push_str(
        "\nExit codes: 0 stopped cleanly; 1 runtime failure (tunnel not found, startup check\n\
         failed); 2 invalid configuration.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    const BASE: &[(&str, &str)] = &[
        ("CONTROL_PLANE_TUNNEL_ID", "tunnel_abc"),
        ("CONTROL_PLANE_API_KEY", "sk-env-key"),
        ("MCP_SERVER_URL", "http://127.0.0.1:9/mcp"),
    ];

    fn run(a: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Result<AgentConfig, ConfigError> {
        match parse(args(a), env)? {
            Parsed::Run(c) => Ok(*c),
            Parsed::Help => panic!("unexpected help"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&[], &env_of(BASE)).unwrap();
        assert_eq!(c.base_url, "https://api.openai.com");
        assert_eq!(c.url_path, "");
        assert_eq!(c.max_inflight, 20);
        assert_eq!(c.max_concurrent, 10);
        assert_eq!(c.poll_timeout, Duration::from_secs(30));
        assert_eq!(c.connection_max_ttl, Duration::from_secs(600));
        assert_eq!(c.startup_wait_timeout, Duration::ZERO);
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.channels, vec![Channel::main()]);
        assert!(!c.explicit_channels);
        assert_eq!(
            c.health_listen,
            Some(ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(c.log_file, None);
        assert_eq!(c.pid_file, None);
        assert_eq!(c.log_level, LevelFilter::Info);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.api_key.expose(), "sk-env-key");
    }

    #[test]
    fn flags_beat_env_beat_env_file() {
        let dir = temp_dir("prec");
        let f = dir.join("agent.env");
        std::fs::write(
            &f,
            "# conf.d\nexport CONTROL_PLANE_MAX_INFLIGHT=7\nLOG_LEVEL='debug'\nLOG_FORMAT=\"json\"\nCONTROL_PLANE_POLL_TIMEOUT=5s\n\n",
        )
        .unwrap();
        let env = env_of(&[
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_abc"),
            ("CONTROL_PLANE_API_KEY", "k"),
            ("MCP_SERVER_URL", "http://127.0.0.1:9/mcp"),
            ("LOG_LEVEL", "warn"),
            ("CONTROL_PLANE_POLL_TIMEOUT", "10s"),
        ]);
        let fs = f.to_str().unwrap();
        let c = run(
            &["--env-file", fs, "--control-plane.poll-timeout=1m30s"],
            &env,
        )
        .unwrap();
        assert_eq!(c.max_inflight, 7, "env-file beats default");
        assert_eq!(c.log_level, LevelFilter::Warn, "env beats env-file");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.poll_timeout, Duration::from_secs(90), "flag beats env");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn api_key_fallback_and_sources() {
        let env = env_of(&[
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_abc"),
            ("OPENAI_API_KEY", "sk-openai"),
            ("MCP_SERVER_URL", "http://127.0.0.1:9/mcp"),
            ("MY_KEY", "sk-indirect"),
        ]);
        assert_eq!(run(&[], &env).unwrap().api_key.expose(), "sk-openai");
        let c = run(&["--control-plane.api-key", "env:MY_KEY"], &env).unwrap();
        assert_eq!(c.api_key.expose(), "sk-indirect");
        assert!(!c.api_key_source.is_reloadable());

        let dir = temp_dir("keyfile");
        let kf = dir.join("key");
        std::fs::write(&kf, "sk-from-file\n").unwrap();
        let arg = format!("file:{}", kf.display());
        let c = run(&["--control-plane.api-key", &arg], &env).unwrap();
        assert_eq!(c.api_key.expose(), "sk-from-file");
        assert!(c.api_key_source.is_reloadable());
        assert!(!format!("{c:?}").contains("sk-from-file"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn channels_and_headers() {
        let env = env_of(&[
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_abc"),
            ("CONTROL_PLANE_API_KEY", "k"),
            ("MCP_SERVER_URL", "https://mcp.internal/mcp"),
            ("CONTROL_PLANE_POLL_CHANNEL", "main, tools"),
            (
                "MCP_EXTRA_HEADERS",
                "Authorization: env:TOKEN, Accept-Language: de, en\nX-A: 1",
            ),
            ("TOKEN", "Bearer t0ps3cret"),
        ]);
        let c = run(&[], &env).unwrap();
        assert!(c.explicit_channels);
        assert_eq!(c.channels.len(), 2);
        // The reference client's form: one bare URL serves every polled channel.
        assert_eq!(c.targets.len(), 1);
        assert_eq!(c.targets[0].channels, c.channels);
        let TargetSpec::Http { headers, .. } = &c.targets[0].spec else {
            panic!("an HTTP target");
        };
        let names: Vec<_> = headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Authorization", "Accept-Language", "X-A"]);
        assert_eq!(headers[0].value.expose(), "Bearer t0ps3cret");
        assert_eq!(headers[1].value.expose(), "de, en");
        assert!(!format!("{c:?}").contains("t0ps3cret"));
        let c = run(
            &[
                "--control-plane.poll-channel",
                "a",
                "--control-plane.poll-channel=b",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(
            c.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    fn http_headers(t: &ChannelTarget) -> Vec<(String, String)> {
        match &t.spec {
            TargetSpec::Http { headers, .. } => headers
                .iter()
                .map(|h| (h.name.clone(), h.value.expose().to_string()))
                .collect(),
            TargetSpec::Stdio { .. } => panic!("not HTTP"),
        }
    }

    #[test]
    fn control_plane_connections_cover_every_worker_and_the_poll() {
        let c = run(&[], &env_of(BASE)).unwrap();
        // Poll + 10 HTTP workers (default) + the unserved-channel worker.
        assert_eq!(c.control_plane_connections(), 12);
        let c = run(
            &[
                "--mcp.max-concurrent-requests",
                "3",
                "--mcp.server-url",
                "channel=a,url=http://127.0.0.1:9/mcp",
                "--mcp.command",
                "channel=fs,command=cat",
                "--mcp.command",
                "channel=gh,command=cat",
            ],
            &env_of(BASE),
        )
        .unwrap();
        assert_eq!(c.control_plane_connections(), 1 + 3 + 2 + 1);
        const NO_URL: &[(&str, &str)] = &[
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_abc"),
            ("CONTROL_PLANE_API_KEY", "k"),
        ];
        let c = run(
            &["--mcp.command", "channel=fs,command=cat"],
            &env_of(NO_URL),
        )
        .unwrap();
        assert_eq!(c.control_plane_connections(), 1 + 1 + 1, "no HTTP pool");
    }

    #[test]
    fn dials_https_only_when_a_url_is_https() {
        let plain = |extra: &[&str]| {
            let mut a = vec!["--control-plane.base-url", "http://127.0.0.1:8081"];
            a.extend_from_slice(extra);
            run(&a, &env_of(BASE)).unwrap()
        };
        // Defaults: the control plane is https://api.openai.com.
        assert!(run(&[], &env_of(BASE)).unwrap().dials_https());
        assert!(!plain(&[]).dials_https());
        assert!(plain(&["--mcp.server-url", "https://mcp.internal/mcp"]).dials_https());
        assert!(plain(&[
            "--mcp.server-url",
            "channel=a,url=http://127.0.0.1:9/mcp",
            "--mcp.server-url",
            "channel=b,url=HTTPS://docs.internal/mcp",
        ])
        .dials_https());
        assert!(!plain(&[
            "--mcp.server-url",
            "channel=a,url=http://127.0.0.1:9/mcp",
            "--mcp.command",
            "channel=fs,command=cat",
        ])
        .dials_https());
    }

    #[test]
    fn channel_targets_http_and_stdio() {
        let env = env_of(&[
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_abc"),
            ("CONTROL_PLANE_API_KEY", "k"),
            ("TOK", "s3cr3t-token"),
        ]);
        let c = run(
            &[
                "--mcp.server-url",
                "channel=docs,url=https://docs.internal/mcp,header=Authorization:env:TOK,header=Accept-Language: de, en",
                "--mcp.server-url",
                "http://127.0.0.1:9/mcp",
                "--mcp.command",
                "channel=fs,command=python3 -c 'import a; a.run()' --root \"/srv/my files\" ; x",
            ],
            &env,
        )
        .unwrap();
        let names: Vec<&str> = c.channels.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, ["docs", "main", "fs"]);
        assert!(c.explicit_channels);
        assert_eq!(
            http_headers(&c.targets[0]),
            [
                ("Authorization".to_string(), "s3cr3t-token".to_string()),
                ("Accept-Language".to_string(), "de, en".to_string())
            ]
        );
        assert!(
            http_headers(&c.targets[1]).is_empty(),
            "headers stay with their channel"
        );
        let TargetSpec::Stdio { argv } = &c.targets[2].spec else {
            panic!("stdio");
        };
        assert_eq!(
            argv,
            &[
                "python3",
                "-c",
                "import a; a.run()",
                "--root",
                "/srv/my files",
                ";",
                "x"
            ]
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t") && !dbg.contains("/srv/my"), "{dbg}");

        // Bare command and env forms; poll-channel limits what is served.
        let env2 = env_of(&[
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_abc"),
            ("CONTROL_PLANE_API_KEY", "k"),
            ("MCP_COMMAND", "my-server --stdio"),
            ("MCP_SERVER_URL", "channel=web,url=http://127.0.0.1:9/mcp"),
        ]);
        let c = run(&[], &env2).unwrap();
        assert_eq!(c.targets.len(), 2);
        let c = run(&["--control-plane.poll-channel", "web"], &env2).unwrap();
        assert_eq!(c.targets.len(), 1);
        assert_eq!(c.channels, [Channel::parse("web").unwrap()]);
        assert!(c.explicit_channels);
        // A single stdio main channel polls like before: no channel query.
        let env3 = env_of(&[
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_abc"),
            ("CONTROL_PLANE_API_KEY", "k"),
            ("MCP_COMMAND", "srv"),
        ]);
        let c = run(&[], &env3).unwrap();
        assert!(!c.explicit_channels);
        assert_eq!(c.channels, [Channel::main()]);
    }

    #[test]
    fn channel_network_settings_stay_with_their_channel() {
        let env = env_of(&[
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_abc"),
            ("CONTROL_PLANE_API_KEY", "k"),
            // Environment proxies never apply to MCP targets.
            ("HTTPS_PROXY", "http://env-proxy:3128"),
        ]);
        let c = run(
            &[
                "--mcp.server-url",
                "channel=docs,url=https://docs.internal/mcp,http-proxy=http://u:p%40ss-hunter2@proxy.corp:3128,header=X-A: 1, 2",
                "--mcp.server-url",
                "channel=wiki,url=https://wiki.internal/mcp",
            ],
            &env,
        )
        .unwrap();
        let edge = |i: usize| match &c.targets[i].spec {
            TargetSpec::Http { edge, .. } => edge.clone(),
            TargetSpec::Stdio { .. } => panic!("not HTTP"),
        };
        let docs = edge(0);
        let proxy = docs.proxy.as_ref().expect("the channel's proxy");
        assert_eq!((proxy.host(), proxy.port()), ("proxy.corp", 3128));
        assert_eq!(
            proxy.credentials().map(|c| c.password.as_str()),
            Some("p@ss-hunter2")
        );
        assert_eq!(
            http_headers(&c.targets[0]),
            [("X-A".to_string(), "1, 2".to_string())]
        );
        assert!(edge(1).proxy.is_none(), "no proxy unless told");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("proxy.corp"), "{dbg}");
    }

    #[test]
    fn channel_network_setting_errors_name_the_flag_and_the_channel() {
        let env = env_of(&[
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_abc"),
            ("CONTROL_PLANE_API_KEY", "k"),
        ]);
        let u = "--mcp.server-url";
        for (entry, why) in [
            (
                "channel=docs,url=http://a/,http-proxy=socks5://u:hunter2@p:1",
                "http-proxy: unsupported proxy scheme",
            ),
            (
                "http-proxy=http://u:hunter2@p:0,channel=docs,url=http://a/",
                "http-proxy: proxy URL has an invalid port",
            ),
            (
                "channel=docs,url=http://a/,client-cert=/x/c.pem",
                "client-key=PATH is required",
            ),
            (
                "channel=docs,url=http://a/,client-key=/x/c.key",
                "client-cert=PATH is required",
            ),
            (
                "channel=docs,url=http://a/,client-cert=/nonexistent/c.pem,client-key=/nonexistent/c.key",
                "client-cert: cannot read certificate from /nonexistent/c.pem",
            ),
            (
                "channel=docs,url=http://a/,ca-bundle=/nonexistent/ca.pem",
                "ca-bundle: cannot read CA certificate from /nonexistent/ca.pem",
            ),
            (
                "channel=docs,url=http://a/,http-proxy=http://p:1,http-proxy=http://q:1",
                "http-proxy= given twice",
            ),
        ] {
            let err = run(&[u, entry], &env)
                .err()
                .unwrap_or_else(|| panic!("{entry} accepted"));
            assert!(
                err.0.starts_with(
                    "invalid value for --mcp.server-url (MCP_SERVER_URL): "
                ),
                "{entry} → {err}"
            );
            if !why.ends_with("given twice") {
                assert!(err.0.contains("channel docs: "), "{entry} → {err}");
            }
            assert!(err.0.contains(why), "{entry} → {err}");
            assert!(!err.0.contains("hunter2"), "{err}");
            assert!(!err.0.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn channel_target_errors_name_the_flag() {
        let env = env_of(&[
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_abc"),
            ("CONTROL_PLANE_API_KEY", "k"),
        ]);
        let u = "--mcp.server-url";
        let m = "--mcp.command";
        let cases: &[(&[&str], &Setting)] = &[
            (&[u, "http://a/", u, "http://b/"], &MCP_SERVER_URL),
            (
                &[u, "channel=a,url=http://a/", m, "channel=a,command=x"],
                &MCP_COMMAND,
            ),
            (&[u, "http://a/", m, "x"], &MCP_COMMAND),
            (&[u, "channel=A,url=http://a/"], &MCP_SERVER_URL),
            (&[u, "channel=a"], &MCP_SERVER_URL),
            (&[u, "url=http://a/"], &MCP_SERVER_URL),
            (&[u, "channel=a,url=ftp://a/"], &MCP_SERVER_URL),
            (&[u, "channel=a,url=http://a/,header=bad"], &MCP_SERVER_URL),
            (&[u, "channel=a,url=http://a/,channel=b"], &MCP_SERVER_URL),
            (&[m, "channel=a,command="], &MCP_COMMAND),
            (&[m, "channel=a,command=x 'open"], &MCP_COMMAND),
            (&[m, "channel=a"], &MCP_COMMAND),
            (&[m, "  "], &MCP_COMMAND),
            (
                &[u, "channel=a,url=http://a/", "--mcp.extra-headers", "X: 1"],
                &MCP_EXTRA_HEADERS,
            ),
            (
                &[
                    u,
                    "channel=a,url=http://a/",
                    "--control-plane.poll-channel",
                    "b",
                ],
                &POLL_CHANNEL,
            ),
        ];
        for (a, setting) in cases {
            let err = run(a, &env)
                .err()
                .unwrap_or_else(|| panic!("{a:?} accepted"));
            assert!(
                err.0.contains(&format!("--{}", setting.flag)) && err.0.contains(setting.env),
                "{a:?} → {err}"
            );
            assert!(!err.0.contains('\n'), "one line: {err}");
        }
        let err = run(&[], &env).unwrap_err();
        assert!(
            err.0.contains("--mcp.server-url") && err.0.contains("--mcp.command"),
            "{err}"
        );
    }

    #[test]
    fn health_unix_socket_log_and_pid_files() {
        let env = env_of(&[
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_abc"),
            ("CONTROL_PLANE_API_KEY", "k"),
            ("MCP_SERVER_URL", "http://127.0.0.1:9/mcp"),
            ("LOG_FILE", "/var/log/mcp-tunnel.log"),
        ]);
        let c = run(
            &[
                "--health.listen-addr",
                "unix:/run/mcp-tunnel/health.sock",
                "--pid-file",
                "/run/mcp-tunnel.pid",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(
            c.health_listen,
            Some(ListenAddr::Unix("/run/mcp-tunnel/health.sock".into()))
        );
        assert_eq!(c.log_file, Some(PathBuf::from("/var/log/mcp-tunnel.log")));
        assert_eq!(c.pid_file, Some(PathBuf::from("/run/mcp-tunnel.pid")));
        let c = run(&["--health.listen-addr", "off", "--log.file", ""], &env).unwrap();
        assert_eq!(c.health_listen, None);
        assert_eq!(c.log_file, None, "an empty flag unsets the variable");
    }

    #[test]
    fn url_path_and_base_url_normalised() {
        let env = env_of(BASE);
        let c = run(
            &[
                "--control-plane.base-url",
                "http://127.0.0.1:8081/",
                "--control-plane.url-path",
                "proxy/tunnel/",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(c.base_url, "http://127.0.0.1:8081");
        assert_eq!(c.url_path, "/proxy/tunnel");
    }

    /// Every invalid or missing value: exit-2 message naming the flag and variable.
    #[test]
    fn invalid_values_name_flag_and_env() {
        let env = env_of(BASE);
        let cases: &[(&[&str], &Setting)] = &[
            (&["--control-plane.base-url", "ftp://x"], &BASE_URL),
            (&["--control-plane.base-url", "https://x/v1"], &BASE_URL),
            (&["--control-plane.base-url", "https://u:p@x"], &BASE_URL),
            (&["--control-plane.url-path", "a b"], &URL_PATH),
            (&["--control-plane.tunnel-id", "../x"], &TUNNEL_ID),
            (&["--control-plane.tunnel-id", ""], &TUNNEL_ID),
            (&["--control-plane.api-key", "env:NOPE"], &API_KEY),
            (&["--control-plane.api-key", ""], &API_KEY),
            (
                &["--control-plane.api-key", "file:/nonexistent/key"],
                &API_KEY,
            ),
            (
                &["--control-plane.organization-id", "org x"],
                &ORGANIZATION_ID,
            ),
            (&["--control-plane.max-inflight", "0"], &MAX_INFLIGHT),
            (&["--control-plane.max-inflight", "ten"], &MAX_INFLIGHT),
            (&["--control-plane.poll-timeout", "30"], &POLL_TIMEOUT),
            (&["--control-plane.poll-timeout", "1h"], &POLL_TIMEOUT),
            (&["--control-plane.poll-channel", "Main"], &POLL_CHANNEL),
            (&["--mcp.server-url", "localhost:3000"], &MCP_SERVER_URL),
            (&["--mcp.extra-headers", "no colon"], &MCP_EXTRA_HEADERS),
            (&["--mcp.extra-headers", "Bad Name: v"], &MCP_EXTRA_HEADERS),
            (
                &["--mcp.extra-headers", "X: env:UNSET_VAR"],
                &MCP_EXTRA_HEADERS,
            ),
            (
                &["--mcp.max-concurrent-requests", "-1"],
                &MCP_MAX_CONCURRENT,
            ),
            (
                &["--mcp.connection-max-ttl", "soon"],
                &MCP_CONNECTION_MAX_TTL,
            ),
            (&["--mcp.startup-wait-timeout", "1x"], &MCP_STARTUP_WAIT),
            (
                &["--mcp.max-request-duration", "0"],
                &MCP_MAX_REQUEST_DURATION,
            ),
            (&["--shutdown.drain-timeout", "-3s"], &DRAIN_TIMEOUT),
            (&["--health.listen-addr", "localhost"], &HEALTH_LISTEN_ADDR),
            (&["--log.level", "loud"], &LOG_LEVEL),
            (&["--log.format", "xml"], &LOG_FORMAT),
            (&["--health.listen-addr", "unix:"], &HEALTH_LISTEN_ADDR),
        ];
        for (a, setting) in cases {
            let err = run(a, &env)
                .err()
                .unwrap_or_else(|| panic!("{a:?} accepted"));
            assert!(
                err.0.contains(&format!("--{}", setting.flag)) && err.0.contains(setting.env),
                "{a:?} → {err}"
            );
            assert!(!err.0.contains('\n'), "one line: {err}");
        }
        let no_env = |_: &str| None;
        for s in [&TUNNEL_ID, &API_KEY, &MCP_SERVER_URL] {
            let err = run(&[], &|k: &str| {
                if k == s.env || (s.flag == API_KEY.flag && k == API_KEY_FALLBACK_ENV) {
                    no_env(k)
                } else {
                    env_of(BASE)(k)
                }
            })
            .err()
            .unwrap();
            assert!(err.0.contains(s.flag) && err.0.contains(s.env), "{err}");
        }
    }

    #[test]
    fn the_key_may_be_left_out_only_with_a_control_plane_client_certificate() {
        let no_key = env_of(&[
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_abc"),
            ("MCP_SERVER_URL", "http://127.0.0.1:9/mcp"),
        ]);
        let err = run(&[], &no_key).unwrap_err();
        assert!(
            err.0.contains("missing required --control-plane.api-key"),
            "{err}"
        );
        // The certificate is checked after the key, so a missing file shows
        // that the keyless path was taken (and still validates the files).
        let err = run(
            &[
                "--control-plane.client-cert",
                "/nonexistent/c.pem",
                "--control-plane.client-key",
                "/nonexistent/c.key",
            ],
            &no_key,
        )
        .unwrap_err();
        assert!(err.0.contains("--control-plane.client-cert"), "{err}");
        assert!(!err.0.contains("api-key"), "{err}");
    }

    #[test]
    fn secrets_never_echoed_in_errors() {
        let env = env_of(BASE);
        let err = run(&["--mcp.extra-headers", "X: \u{7}s3cr3t-value"], &env)
            .err()
            .unwrap();
        assert!(!err.0.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn unknown_flags_and_arguments_rejected() {
        let env = env_of(BASE);
        assert!(run(&["--nope", "1"], &env)
            .unwrap_err()
            .0
            .contains("--nope"));
        assert!(run(&["stray"], &env).is_err());
        assert!(run(&["--control-plane.tunnel-id"], &env)
            .unwrap_err()
            .0
            .contains("CONTROL_PLANE_TUNNEL_ID"));
    }

    #[test]
    fn env_file_errors() {
        assert!(parse_env_file("A=1\nnot a pair\n")
            .unwrap_err()
            .contains("line 2"));
        assert!(parse_env_file("A=\"open\n").unwrap_err().contains("line 1"));
        assert!(parse_env_file("BAD-NAME=1").is_err());
        let m = parse_env_file("A = x=y \n#c\nB=''\n").unwrap();
        assert_eq!(m["A"], "x=y");
        assert_eq!(m["B"], "");
        let env = env_of(BASE);
        let err = run(&["--env-file", "/nonexistent/agent.env"], &env).unwrap_err();
        assert!(err.0.contains("--env-file"), "{err}");
    }

    #[test]
    fn help_lists_every_flag_and_no_secret() {
        let env = env_of(BASE);
        assert!(matches!(parse(args(&["--help"]), &env), Ok(Parsed::Help)));
        let h = help();
        for s in SETTINGS {
            assert!(h.contains(s.flag) && h.contains(s.env), "{}", s.flag);
        }
        assert!(!h.contains("sk-env-key"));
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mcp-tunnel-cfg-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
