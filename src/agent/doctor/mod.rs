//! `mcp-tunnel doctor`: walks the path the agent uses, with the agent's own
//! configuration (`agent::config`, same flags, variables and env-file) and
//! its own HTTP clients (`agent::edge`), and prints a checklist with a fix
//! under each failure:
//!
//! configuration → DNS (control plane, or the proxy) → TCP connect → proxy
//! CONNECT → TLS handshake and trust chain → control-plane auth (the
//! metadata GET) → DNS of the MCP host → MCP reachability (an `initialize`
//! probe; a 401/403 from an auth-protected server counts as reachable).
//!
//! Exit codes: 0 every check passed, 1 a check failed, 2 the configuration
//! is invalid. Nothing secret is printed: keys, proxy passwords and header
//! values never appear, URLs lose their query.

mod report;

use std::ffi::OsString;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::client::{agents_per_target, ClientOptions};
use super::config::{self, AgentConfig, Parsed, TargetSpec};
use super::control_plane::{read_error_code, ControlPlane, CLIENT_NAME, CLIENT_VERSION};
use super::edge;
use super::secret::SecretSource;
use crate::net::proxy::{control_plane_proxy, proxy_failure, ProxyChoice};
use crate::net::tls_client::{tls_failure, ClientIdentity, TlsFailure, Trust};
use crate::proto::channel::Channel;
use crate::proto::server_info::{self, ChannelDecl};
pub use report::{Check, Report, Status};

/// Each network step gets this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

const INITIALIZE: &str = concat!(
    r#"{"jsonrpc":"2.0","id":"mcp-tunnel-doctor","method":"initialize","params":{"#,
    r#""protocolVersion":"2025-06-18","capabilities":{},"#,
    r#""clientInfo":{"name":"mcp-tunnel-doctor","version":""#,
    env!("CARGO_PKG_VERSION"),
    r#""}}}"#
);

fn help() -> String {
    format!(
        "Usage: mcp-tunnel doctor [--json] [AGENT OPTIONS]\n\n\
         Checks the path `mcp-tunnel agent` takes with the same options, variables and\n\
         --env-file: configuration, DNS, proxy CONNECT, TLS handshake and trust chain,\n\
         control-plane auth (GET the tunnel's metadata), MCP reachability (an initialize\n\
         probe). Prints one line per check and a fix under each failure; never secrets.\n\n\
         \x20 --json   print one JSON document instead of text\n\n\
         Exit codes: 0 every check passed; 1 a check failed; 2 invalid configuration.\n\n\
         Agent options:\n{}",
        config::help()
            .split_once("Options:\n")
            .map(|(_, opts)| opts)
            .unwrap_or("")
    )
}

/// `mcp-tunnel doctor …`; returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let env = |name: &str| std::env::var(name).ok();
    run(args, &env, &mut std::io::stdout())
}

/// [`main`] with the environment and output injected (tests).
pub fn run(args: Vec<OsString>, env: &dyn Fn(&str) -> Option<String>, out: &mut dyn Write) -> i32 {
    let mut json = false;
    let args: Vec<OsString> = args
        .into_iter()
        .filter(|a| {
            let is_json = a == "--json";
            json |= is_json;
            !is_json
        })
        .collect();
    let (report, code) = match config::parse(args, env) {
        Ok(Parsed::Help) => {
            return match write!(out, "{}", help()) {
                Ok(()) => 0,
                Err(_) => 1,
            }
        }
        Ok(Parsed::Run(cfg)) => {
            let report = diagnose(&cfg);
            let code = if report.ok() { 0 } else { 1 };
            (report, code)
        }
        Err(e) => {
            let mut r = Report::default();
            r.push(Check::fail(
                "configuration",
                e.to_string(),
                "correct the flag or variable named above (mcp-tunnel agent --help lists them)",
            ));
            (r, 2)
        }
    };
    let text = if json { report.json() } else { report.text() };
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => code,
        Err(_) => 1,
    }
}

/// Which hop a step is about: its words in details and fixes.
#[derive(Clone, Copy)]
enum Hop {
    ControlPlane,
    Mcp,
}

impl Hop {
    fn url_flag(self) -> &'static str {
        match self {
            Hop::ControlPlane => "--control-plane.base-url (CONTROL_PLANE_BASE_URL)",
            Hop::Mcp => "--mcp.server-url (MCP_SERVER_URL)",
        }
    }

    fn cert_flags(self) -> &'static str {
        match self {
            Hop::ControlPlane => {
                "--control-plane.client-cert and --control-plane.client-key (CONTROL_PLANE_CLIENT_CERT, CONTROL_PLANE_CLIENT_KEY)"
            }
            Hop::Mcp => {
                "--mcp.client-cert and --mcp.client-key (MCP_CLIENT_CERT, MCP_CLIENT_KEY)"
            }
        }
    }
}

/// Scheme, authority and path: no query (it may carry a token).
fn redacted(url: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        url.scheme_str().unwrap_or("?"),
        url.authority().map(|a| a.as_str()).unwrap_or(""),
        url.path()
    )
}

fn host_port(url: &http::Uri) -> (String, u16) {
    let https = url.scheme_str() == Some("https");
    let host = url
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    (host, url.port_u16().unwrap_or(if https { 443 } else { 80 }))
}

fn identity_text(id: &ClientIdentity) -> String {
    let names: Vec<String> = id.names.iter().map(ToString::to_string).collect();
    format!(
        "client certificate [{}] valid until {}",
        if names.is_empty() {
            "no CN or SAN name".to_string()
        } else {
            names.join(", ")
        },
        id.validity.not_after
    )
}

fn configuration(
    cfg: &AgentConfig,
    cp: &http::Uri,
    targets: &[Target<'_>],
    choice: &ProxyChoice,
) -> Check {
    let key = match &cfg.api_key_source {
        _ if cfg.api_key.expose().is_empty() => "none (client certificate only)".to_string(),
        SecretSource::Literal(_) => "given".to_string(),
        SecretSource::Env(name) => format!("from ${name}"),
        SecretSource::File(p) => format!("from file {}", p.display()),
    };
    let mut parts = vec![
        format!("tunnel {}", cfg.tunnel_id),
        format!(
            "control plane {}{} via {choice}",
            redacted(cp).trim_end_matches('/'),
            cfg.url_path
        ),
        format!("key {key}"),
    ];
    if let Some(id) = &cfg.edge.cp_identity {
        parts.push(format!("control plane {}", identity_text(id)));
    }
    for t in targets {
        parts.push(match t {
            Target::Http {
                label, url, edge, ..
            } => match url.parse::<http::Uri>() {
                Ok(u) => match &edge.proxy {
                    Some(p) => format!("MCP{label} {} via {p}", redacted(&u)),
                    None => format!("MCP{label} {}", redacted(&u)),
                },
                Err(_) => format!("MCP{label} (unparsable URL)"),
            },
            // Arguments may carry credentials: the program only.
            Target::Stdio { label, program } => format!("MCP{label} stdio command {program}"),
        });
    }
    if let Some(id) = &cfg.edge.mcp_identity {
        parts.push(format!("MCP {}", identity_text(id)));
    }
    if let Some((path, _)) = &cfg.edge.ca_bundle {
        parts.push(format!("--ca-bundle {}", path.display()));
    }
    Check::pass("configuration", parts.join("; "))
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let v: Vec<SocketAddr> = addrs.take(8).collect();
            if v.is_empty() {
                Err("no addresses".into())
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

fn dns_check(name: &str, host: &str, port: u16, fix: String) -> (Check, Option<Vec<SocketAddr>>) {
    if host.parse::<std::net::IpAddr>().is_ok() {
        let addrs = resolve(host, port).ok();
        return (
            Check::pass(name, format!("{host} is an IP address (no lookup)")),
            addrs,
        );
    }
    match resolve(host, port) {
        Ok(addrs) => {
            let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            (
                Check::pass(name, format!("{host} → {}", list.join(", "))),
                Some(addrs),
            )
        }
        Err(e) => (
            Check::fail(name, format!("cannot resolve {host}: {e}"), fix),
            None,
        ),
    }
}

fn tcp_check(name: &str, what: &str, addrs: &[SocketAddr], fix: &str) -> Check {
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(a, STEP_TIMEOUT) {
            Ok(_) => return Check::pass(name, format!("connected to {what} at {a}")),
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Check::fail(name, format!("cannot connect to {what} ({last})"), fix)
}

fn tls_fix(f: TlsFailure, hop: Hop) -> String {
    use TlsFailure::*;
    match f {
        UnknownCa => "add the CA that issued the server's certificate with --ca-bundle (CA_BUNDLE); SSL_CERT_FILE replaces the system roots instead of adding".into(),
        ServerCertExpired => "the server's certificate has expired: renew it on the server".into(),
        ServerCertNotYetValid => "check the clocks of this host and the server (NTP)".into(),
        HostnameMismatch => format!(
            "use the host name the certificate names in {}, or reissue the certificate with this host in its subjectAltName",
            hop.url_flag()
        ),
        ClientCertRequired => format!("the server wants a client certificate: set {}", hop.cert_flags()),
        ClientCertRejected => format!(
            "the server refused our client certificate: use one issued by the CA it trusts (relay: serve --client-ca), still valid, in {}",
            hop.cert_flags()
        ),
        Incompatible => "the server must offer TLS 1.2 or 1.3 with modern cipher suites".into(),
        InvalidServerName => format!("the host in {} is not a valid TLS server name", hop.url_flag()),
        ServerCertRevoked | BadServerCert | Handshake => {
            "check the server's TLS setup (openssl s_client -connect HOST:PORT shows the chain)".into()
        }
    }
}

/// A transport error in words, without URLs (ureq's texts may carry them).
fn transport_text(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Protocol(p) => format!("HTTP protocol error: {p}"),
        _ => "request failed".into(),
    }
}

/// How far one request got past the proxy and TLS steps.
#[derive(Debug, PartialEq, Eq)]
enum Past {
    /// An HTTP answer arrived.
    Answered,
    /// A proxy or TLS failure was recorded; the next check is not reached.
    Stopped,
    /// Another transport error, not attributable to the proxy or TLS: the
    /// caller reports it on the next check.
    Transport,
}

/// The proxy and TLS checks of one request through the agent's client.
fn edge_steps(
    r: &mut Report,
    result: &Result<http::Response<ureq::Body>, ureq::Error>,
    proxy: Option<&str>,
    https: bool,
    tls_name: &str,
    tls_ok: String,
    hop: Hop,
) -> Past {
    let err = result.as_ref().err();
    if let Some(origin) = proxy {
        match err {
            Some(e) if proxy_failure(e).is_some() || tls_failure(e).is_none() => {
                let detail = match proxy_failure(e) {
                    Some(f) => f.reason(),
                    None => format!("no answer through the proxy: {}", transport_text(e)),
                };
                r.push(Check::fail(
                    "proxy CONNECT",
                    detail,
                    format!("check the proxy URL, user and password in {origin}, and the proxy's policy for this destination"),
                ));
                if https {
                    r.push(Check::skip(tls_name, "not reached"));
                }
                return Past::Stopped;
            }
            // An answer, or a TLS verdict from the far end: the tunnel was open.
            _ => r.push(Check::pass("proxy CONNECT", "the proxy opened the tunnel")),
        }
    }
    match (err, https) {
        (None, true) => r.push(Check::pass(tls_name, tls_ok)),
        (None, false) => {}
        (Some(e), _) => match tls_failure(e) {
            Some(f) if https => {
                r.push(Check::fail(tls_name, f.reason(), tls_fix(f, hop)));
                return Past::Stopped;
            }
            _ => {
                if https {
                    r.push(Check::skip(
                        tls_name,
                        "no verdict: the connection failed before the handshake finished",
                    ));
                }
                return Past::Transport;
            }
        },
    }
    Past::Answered
}

/// One MCP target as the doctor sees it; `label` names its channels (empty
/// for the reference client's single server on `main`).
enum Target<'a> {
    Http {
        label: String,
        url: &'a str,
        headers: Vec<(&'a str, &'a str)>,
        /// The channel's own proxy, client certificate and CAs.
        edge: &'a edge::ChannelEdge,
    },
    Stdio {
        label: String,
        program: &'a str,
    },
}

/// The configured MCP targets: the one place that reads those settings.
fn targets(cfg: &AgentConfig) -> Vec<Target<'_>> {
    let single_main = cfg.targets.len() == 1
        && cfg.targets[0].channels.len() == 1
        && cfg.targets[0].channels[0] == Channel::main();
    cfg.targets
        .iter()
        .map(|t| {
            let label = if single_main {
                String::new()
            } else {
                let names: Vec<&str> = t.channels.iter().map(|c| c.as_str()).collect();
                format!(" [{}]", names.join(","))
            };
            match &t.spec {
                TargetSpec::Http { url, headers, edge } => Target::Http {
                    label,
                    url,
                    edge,
                    headers: headers
                        .iter()
                        .map(|h| (h.name.as_str(), h.value.expose()))
                        .collect(),
                },
                TargetSpec::Stdio { argv } => Target::Stdio {
                    label,
                    program: argv.first().map(String::as_str).unwrap_or(""),
                },
            }
        })
        .collect()
}

/// Runs every check against the configured control plane and MCP servers.
pub fn diagnose(cfg: &AgentConfig) -> Report {
    let mut r = Report::default();
    let targets = targets(cfg);
    let Ok(cp_url) = cfg.base_url.parse::<http::Uri>() else {
        // The configuration validated it; this cannot happen.
        r.push(Check::fail(
            "configuration",
            "unparsable control plane URL",
            "report this as a bug",
        ));
        return r;
    };
    let choice = control_plane_proxy(&cp_url, &cfg.edge.proxies);
    r.push(configuration(cfg, &cp_url, &targets, &choice));
    let mut trust = Trust::os();
    if let Some((_, bundle)) = &cfg.edge.ca_bundle {
        trust = trust.with(bundle);
    }
    let trust_text = format!(
        "{} system CA certificates + {} from --ca-bundle",
        trust.os_count, trust.bundle_count
    );

    let decls: Vec<ChannelDecl> = cfg
        .channels
        .iter()
        .map(|c| ChannelDecl {
            name: c.clone(),
            proc_affinity: false,
        })
        .collect();
    let user_agent = format!("{CLIENT_NAME}/{CLIENT_VERSION} doctor");
    let opts = ClientOptions {
        user_agent,
        max_idle: 1,
        max_idle_age: Duration::from_secs(5),
    };
    // Each HTTP target with its own proxy and certificate, as the agent does.
    let http_edges: Vec<(String, &edge::ChannelEdge)> = targets
        .iter()
        .filter_map(|t| match t {
            Target::Http { label, edge, .. } => {
                let names = label.trim().trim_start_matches('[').trim_end_matches(']');
                Some((names.to_string(), *edge))
            }
            Target::Stdio { .. } => None,
        })
        .collect();
    let (cp_agent, mcp_agents) = agents_per_target(
        &opts,
        &opts,
        edge::clients(&cfg.edge, &cfg.base_url, cfg.dials_https()),
        &http_edges,
    );

    control_plane_steps(&mut r, cfg, &cp_url, &choice, cp_agent, &decls, &trust_text);
    let mut mcp_agents = mcp_agents.into_iter();
    for t in &targets {
        match t {
            Target::Http {
                label,
                url,
                headers,
                edge,
            } => match (url.parse::<http::Uri>(), mcp_agents.next()) {
                (Ok(u), Some(agent)) => mcp_steps(
                    &mut r,
                    cfg,
                    label,
                    url,
                    headers,
                    edge,
                    &u,
                    agent,
                    &trust_text,
                ),
                _ => r.push(Check::fail(
                    format!("MCP server{label}"),
                    "unparsable URL",
                    "report this as a bug",
                )),
            },
            Target::Stdio { label, program } => r.push(stdio_check(label, program)),
        }
    }
    r
}

/// A stdio target is not started (it would be a second copy of the server);
/// its program must be found and executable.
fn stdio_check(label: &str, program: &str) -> Check {
    let name = format!("MCP command{label}");
    let fix = "install the program, or give its full path in --mcp.command (MCP_COMMAND)";
    match find_program(program) {
        Some(path) => Check::pass(
            name,
            format!("{} is executable (not started by doctor)", path.display()),
        ),
        None => Check::fail(
            name,
            format!("{program:?} not found or not executable"),
            fix,
        ),
    }
}

fn find_program(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| executable(p))
}

fn control_plane_steps(
    r: &mut Report,
    cfg: &AgentConfig,
    url: &http::Uri,
    choice: &ProxyChoice,
    agent: ureq::Agent,
    decls: &[ChannelDecl],
    trust_text: &str,
) {
    let https = url.scheme_str() == Some("https");
    let (host, port) = host_port(url);
    let proxy_origin = match choice {
        ProxyChoice::Via { origin, .. } => Some(origin.to_string()),
        ProxyChoice::Direct(_) => None,
    };
    let later = |r: &mut Report, from: usize| {
        let names = ["proxy CONNECT", "TLS control plane", "control-plane auth"];
        for (i, n) in names.iter().enumerate().skip(from) {
            let applies = match i {
                0 => proxy_origin.is_some(),
                1 => https,
                _ => true,
            };
            if applies {
                r.push(Check::skip(*n, "not reached"));
            }
        }
    };
    let addrs = match choice.proxy() {
        Some(p) => {
            let origin = proxy_origin.clone().unwrap_or_default();
            r.push(Check::skip(
                "DNS control plane",
                format!("{host} is resolved by the proxy"),
            ));
            let (c, addrs) = dns_check(
                "DNS proxy",
                p.host(),
                p.port(),
                format!(
                    "check the proxy host in {origin} and this host's resolver (/etc/resolv.conf)"
                ),
            );
            r.push(c);
            let Some(addrs) = addrs else {
                r.push(Check::skip("TCP proxy", "not reached"));
                return later(r, 0);
            };
            let c = tcp_check(
                "TCP proxy",
                "the proxy",
                &addrs,
                &format!("check that the proxy in {origin} runs and that a firewall lets this host reach it"),
            );
            let ok = c.status == Status::Pass;
            r.push(c);
            if !ok {
                return later(r, 0);
            }
            addrs
        }
        None => {
            let (c, addrs) = dns_check(
                "DNS control plane",
                &host,
                port,
                format!(
                    "check the host in {} and this host's resolver (/etc/resolv.conf); behind a proxy set --http-proxy or HTTPS_PROXY",
                    Hop::ControlPlane.url_flag()
                ),
            );
            r.push(c);
            let Some(addrs) = addrs else {
                r.push(Check::skip("TCP control plane", "not reached"));
                return later(r, 0);
            };
            addrs
        }
    };
    if choice.proxy().is_none() {
        let c = tcp_check(
            "TCP control plane",
            "the control plane",
            &addrs,
            &format!(
                "check the port in {}, that the control plane runs, and egress firewall rules (or use a proxy: --http-proxy)",
                Hop::ControlPlane.url_flag()
            ),
        );
        let ok = c.status == Status::Pass;
        r.push(c);
        if !ok {
            return later(r, 0);
        }
    }

    let server_info = server_info::encode(decls).unwrap_or_default();
    let cp = ControlPlane::new(cfg, agent, "mcp-tunnel-doctor".into(), server_info);
    let result = cp
        .with_headers(cp.agent.get(cp.tunnel_url()))
        .config()
        .timeout_global(Some(STEP_TIMEOUT))
        .build()
        .call();
    let mut tls_ok = format!("verified against {trust_text}");
    if let Some(id) = &cfg.edge.cp_identity {
        tls_ok.push_str(&format!("; presented {}", identity_text(id)));
    }
    let past = edge_steps(
        r,
        &result,
        proxy_origin.as_deref(),
        https,
        "TLS control plane",
        tls_ok,
        Hop::ControlPlane,
    );
    let mut resp = match (result, past) {
        (Ok(resp), Past::Answered) => resp,
        (Err(e), Past::Transport) => {
            r.push(Check::fail(
                "control-plane auth",
                format!(
                    "no answer to GET /v1/tunnels/{}: {}",
                    cfg.tunnel_id,
                    transport_text(&e)
                ),
                "check that the control plane is up and nothing between resets the connection",
            ));
            return;
        }
        _ => {
            r.push(Check::skip("control-plane auth", "not reached"));
            return;
        }
    };
    let status = resp.status().as_u16();
    let code = read_error_code(&mut resp);
    let code_text = code
        .as_deref()
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    let key_flag = "--control-plane.api-key (CONTROL_PLANE_API_KEY)";
    r.push(match (status, code.as_deref()) {
        (200..=299, _) => Check::pass(
            "control-plane auth",
            format!("tunnel {} found; the credentials are accepted", cfg.tunnel_id),
        ),
        (401, Some("client_certificate_required")) => Check::fail(
            "control-plane auth",
            format!("HTTP 401{code_text}: the tunnel admits agents by client certificate"),
            format!("set {} to a certificate from the relay's client CA", Hop::ControlPlane.cert_flags()),
        ),
        (401, _) => Check::fail(
            "control-plane auth",
            format!("HTTP 401{code_text}: the runtime key is missing or not valid"),
            format!("set {key_flag} to a live runtime key (relay: `relay key create --role runtime`; keys are shown once)"),
        ),
        (403, _) => Check::fail(
            "control-plane auth",
            format!("HTTP 403{code_text}: these credentials may not use this tunnel"),
            format!(
                "use a runtime key scoped to tunnel {} in {key_flag}, or (certificate tunnels) bind this certificate's name: `relay tunnel bind-cert {} --name NAME`",
                cfg.tunnel_id, cfg.tunnel_id
            ),
        ),
        (404, _) => Check::fail(
            "control-plane auth",
            format!("HTTP 404{code_text}: no tunnel {} here", cfg.tunnel_id),
            "check --control-plane.tunnel-id (CONTROL_PLANE_TUNNEL_ID), and --control-plane.url-path if the control plane sits under a prefix",
        ),
        _ => Check::fail(
            "control-plane auth",
            format!("HTTP {status}{code_text} to the metadata request"),
            "the control plane is in trouble or something in between answers: check its logs",
        ),
    });
}

#[allow(clippy::too_many_arguments)]
fn mcp_steps(
    r: &mut Report,
    cfg: &AgentConfig,
    label: &str,
    raw_url: &str,
    headers: &[(&str, &str)],
    channel: &edge::ChannelEdge,
    url: &http::Uri,
    agent: ureq::Agent,
    trust_text: &str,
) {
    let dns_name = format!("DNS MCP server{label}");
    let tls_name = format!("TLS MCP server{label}");
    let name = format!("MCP server{label}");
    let https = url.scheme_str() == Some("https");
    let (host, port) = host_port(url);
    // Behind the channel's proxy the proxy resolves the MCP host; the
    // CONNECT step below tells whether it could.
    let (c, addrs) = match &channel.proxy {
        Some(p) => (
            Check::skip(
                dns_name.as_str(),
                format!("resolved by the channel's proxy {p}"),
            ),
            Some(Vec::new()),
        ),
        None => dns_check(
            &dns_name,
            &host,
            port,
            format!(
                "check the host in {} and this host's resolver",
                Hop::Mcp.url_flag()
            ),
        ),
    };
    r.push(c);
    if addrs.is_none() {
        if https {
            r.push(Check::skip(tls_name.as_str(), "not reached"));
        }
        r.push(Check::skip(name.as_str(), "not reached"));
        return;
    }
    let mut req = agent
        .post(raw_url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let result = req
        .config()
        .timeout_global(Some(STEP_TIMEOUT))
        .build()
        .send(INITIALIZE.as_bytes());
    let mut tls_ok = format!("verified against {trust_text}");
    if let Some((path, _)) = &channel.ca_bundle {
        tls_ok.push_str(&format!(" + the channel's ca-bundle= {}", path.display()));
    }
    if let Some(id) = channel.identity.as_ref().or(cfg.edge.mcp_identity.as_ref()) {
        tls_ok.push_str(&format!("; presented {}", identity_text(id)));
    }
    let proxy_origin = channel
        .proxy
        .as_ref()
        .map(|_| "the channel's http-proxy= in --mcp.server-url (MCP_SERVER_URL)");
    let past = edge_steps(r, &result, proxy_origin, https, &tls_name, tls_ok, Hop::Mcp);
    let resp = match (result, past) {
        (Ok(resp), Past::Answered) => resp,
        (Err(e), Past::Transport) => {
            r.push(Check::fail(
                name.as_str(),
                format!("{}: {}", redacted(url), transport_text(&e)),
                format!("start the MCP server, or correct {}", Hop::Mcp.url_flag()),
            ));
            return;
        }
        _ => {
            r.push(Check::skip(name.as_str(), "not reached"));
            return;
        }
    };
    let status = resp.status().as_u16();
    let session = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no content type")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    // The body is not needed; dropping it closes the connection.
    drop(resp);
    if let Some(id) = session {
        // Leave no session behind on the server.
        let _ = agent
            .delete(raw_url)
            .header("Mcp-Session-Id", id.as_str())
            .config()
            .timeout_global(Some(STEP_TIMEOUT))
            .build()
            .call();
    }
    r.push(match status {
        200..=299 => Check::pass(
            name.as_str(),
            format!("initialize answered HTTP {status} ({content_type})"),
        ),
        401 | 403 => Check::pass(
            name.as_str(),
            format!("reachable; answered HTTP {status} (auth-protected: AI clients send their own credentials)"),
        ),
        404 | 405 => Check::fail(
            name.as_str(),
            format!("HTTP {status} to an initialize POST: no MCP endpoint at {}", redacted(url)),
            format!("use the server's Streamable HTTP endpoint (often /mcp) in {}", Hop::Mcp.url_flag()),
        ),
        500..=599 => Check::fail(
            name.as_str(),
            format!("HTTP {status} to initialize"),
            "the MCP server is failing: check its logs",
        ),
        _ => Check::pass(
            name.as_str(),
            format!("reachable; answered HTTP {status} to the initialize probe"),
        ),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(e: ureq::Error, proxy: bool, https: bool) -> (Past, Vec<(String, Status)>) {
        let mut r = Report::default();
        let past = edge_steps(
            &mut r,
            &Err(e),
            proxy.then_some("--http-proxy / TUNNEL_CLIENT_HTTP_PROXY"),
            https,
            "TLS x",
            String::new(),
            Hop::ControlPlane,
        );
        let v = r
            .checks
            .iter()
            .map(|c| (c.name.to_string(), c.status))
            .collect();
        (past, v)
    }

    fn v(list: &[(&str, Status)]) -> Vec<(String, Status)> {
        list.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    #[test]
    fn failures_are_attributed_to_the_step_that_failed() {
        use Status::*;
        let proxy_407 =
            || ureq::Error::ConnectProxyFailed("proxy server responded 407/Proxy Auth".into());
        let unknown_ca = || {
            ureq::Error::Rustls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        };
        let reset = || ureq::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(
            steps(proxy_407(), true, true),
            (
                Past::Stopped,
                v(&[("proxy CONNECT", Fail), ("TLS x", Skip)])
            )
        );
        assert_eq!(
            steps(unknown_ca(), true, true),
            (
                Past::Stopped,
                v(&[("proxy CONNECT", Pass), ("TLS x", Fail)])
            )
        );
        assert_eq!(
            steps(reset(), true, false),
            (Past::Stopped, v(&[("proxy CONNECT", Fail)]))
        );
        assert_eq!(
            steps(reset(), false, true),
            (Past::Transport, v(&[("TLS x", Skip)]))
        );
        assert_eq!(steps(reset(), false, false), (Past::Transport, v(&[])));
    }

    #[test]
    fn fixes_name_the_hop_flags() {
        assert!(tls_fix(TlsFailure::UnknownCa, Hop::Mcp).contains("--ca-bundle"));
        assert!(tls_fix(TlsFailure::ClientCertRequired, Hop::Mcp).contains("--mcp.client-cert"));
        assert!(tls_fix(TlsFailure::HostnameMismatch, Hop::ControlPlane)
            .contains("--control-plane.base-url"));
        let url: http::Uri = "https://h.example:8443/mcp?token=s3cret".parse().unwrap();
        assert_eq!(redacted(&url), "https://h.example:8443/mcp");
        assert_eq!(host_port(&url), ("h.example".to_string(), 8443));
        let v6: http::Uri = "http://[::1]/mcp".parse().unwrap();
        assert_eq!(host_port(&v6), ("::1".to_string(), 80));
    }
}
