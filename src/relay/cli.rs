//! `mcp-tunnel relay …`: init, serve, tunnel and key administration.
//!
//! Exit codes: 0 success; 1 the operation failed (state missing or corrupt,
//! unknown id, I/O); 2 bad usage (one line naming the flag) or `init` over an
//! existing state. Secrets are printed exactly once, by `init` and `key create`.

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use lexopt::prelude::*;
use miniserde::{json, Serialize};

use super::keys;
use super::state::{
    is_tunnel_id, valid_cert_name, AuthMode, KeyRecord, Org, Role, State, StateDir, StateError,
    Tunnel, MAX_CERT_NAMES, MAX_CERT_NAME_LEN,
};
use super::timestamp::rfc3339;
use crate::net::listen_addr::ListenAddr;
use crate::ops::log::{parse_level, LogFormat};

/// Environment fallback for `--state`.
pub const STATE_ENV: &str = "MCP_TUNNEL_RELAY_STATE";

const USAGE: &str = "\
usage: mcp-tunnel relay <command> [options]

commands:
  init     --state DIR                 create a state with one org, tunnel, runtime and connector key
  serve    --state DIR --listen ADDR   run the control plane and the MCP endpoint
  tunnel   create|list|delete|set      manage tunnels
           bind-cert|unbind-cert|certs bind client-certificate names to a tunnel
  key      create|list|revoke          manage API keys
  org      create|list                 manage organisations

`mcp-tunnel relay <command> --help` for a command's options.
--state defaults to $MCP_TUNNEL_RELAY_STATE.";

const INIT_USAGE: &str = "\
usage: mcp-tunnel relay init --state DIR [--org-name NAME] [--tunnel-name NAME]

Creates DIR (mode 0700) with one org, one tunnel, one runtime key (for the agent)
and one connector key (for AI clients), and prints them once as one JSON line:
{\"org_id\":…,\"tunnel_id\":…,\"runtime_key\":…,\"connector_key\":…}
Keys are stored only as hashes: save them now. Refuses an existing state (exit 2).";

const TUNNEL_USAGE: &str = "\
usage: mcp-tunnel relay tunnel create      --state DIR [--name NAME] [--description TEXT] [--org ORG_ID]
                                           [--agent-auth MODE] [--connector-auth MODE]
       mcp-tunnel relay tunnel list        --state DIR
       mcp-tunnel relay tunnel delete      --state DIR TUNNEL_ID
       mcp-tunnel relay tunnel set         --state DIR TUNNEL_ID [--agent-auth MODE] [--connector-auth MODE]
       mcp-tunnel relay tunnel bind-cert   --state DIR TUNNEL_ID --name NAME [--role runtime|connector]
       mcp-tunnel relay tunnel unbind-cert --state DIR TUNNEL_ID --name NAME [--role runtime|connector]
       mcp-tunnel relay tunnel certs       --state DIR [TUNNEL_ID]

create prints {\"tunnel_id\":…}; list and certs print one JSON object per line.
--org may be left out when the state has exactly one org.
Keys scoped to all tunnels of the org may use new tunnels at once.

Client certificates (relay serve --client-ca): MODE is
  key       an API key of the role (the default)
  cert      a client certificate bound to the tunnel, no key (the agent may run
            without --control-plane.api-key)
  key+cert  both
--agent-auth applies to agents (poll, response, metadata), --connector-auth to
/v1/mcp callers. bind-cert binds NAME for --role (default runtime = agents):
a certificate matches when its subject CN or a SAN URI equals NAME, or a SAN
DNS name equals it ignoring case. No certificate where one is required: 401
client_certificate_required; a certificate not bound: 403 tunnel_use_forbidden.
Changes apply within a second, without a restart.";

const KEY_USAGE: &str = "\
usage: mcp-tunnel relay key create --state DIR --role runtime|connector|admin [--tunnel TUNNEL_ID]… [--org ORG_ID]
       mcp-tunnel relay key list   --state DIR
       mcp-tunnel relay key revoke --state DIR KEY_ID

create prints {\"key_id\":…,\"key\":…}; the key is shown only this once.
runtime keys poll and answer, connector keys call /v1/mcp; without --tunnel
they cover every tunnel of the org. Revocation takes effect within a second.";

const ORG_USAGE: &str = "\
usage: mcp-tunnel relay org create --state DIR [--name NAME]
       mcp-tunnel relay org list   --state DIR";

const SERVE_USAGE: &str = "\
usage: mcp-tunnel relay serve --state DIR --listen ADDR [options]

  --listen ADDR              address to listen on, e.g. 127.0.0.1:8443 (port 0 = any free port)
  --tls-cert FILE            PEM certificate chain (with --tls-key: serve HTTPS)
  --tls-key FILE             PEM private key
  --client-ca FILE           PEM CA certificate(s): ask clients for a certificate and verify it
                             against these (needs --tls-cert); tunnels bound to certificate
                             names (`relay tunnel bind-cert`) then admit callers by it
  --require-client-cert      with --client-ca: refuse TLS handshakes without a client certificate
  --insecure-http            allow plain HTTP on a non-loopback address
  --audit-log PATH           append one JSON line per MCP request
  --max-body BYTES           largest client request body (default 4194304)
  --max-response-body BYTES  largest agent response POST (default 41943040)
  --max-connections N        concurrent connections (default 1024)
  --queue-size N             commands waiting per tunnel (default 64)
  --max-pending N            commands waiting or in flight per tunnel (default 1024)
  --response-timeout DUR     how long a client waits for the agent (default 120s)
  --poll-timeout-max DUR     longest long-poll (default 30s)
  --agent-liveness DUR       an agent counts as connected this long after a poll (default 30s)
  --drain-timeout DUR        on SIGTERM, time for in-flight requests (default 10s)
  --log-level LEVEL          trace, debug, info, warn, error, off (default info)
  --log-format FORMAT        text or json (default text)
  --log-file PATH            append logs here instead of stderr (reopened on SIGHUP)
  --metrics-listen ADDR      serve /metrics on a separate listener: IP:PORT or unix:/path
                             (default off; off loopback only with --insecure-http)
  --pid-file PATH            write the process id once listening; removed on exit

Prints `listening on ADDR` once ready. SIGHUP reloads the state at once
(it is also reloaded within 500 ms of any change) and reopens the log and
audit files. SIGTERM/SIGINT drain; a second one exits at once.";

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub state: PathBuf,
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `--client-ca`: request and verify client certificates against this CA file.
    pub client_ca: Option<PathBuf>,
    /// `--require-client-cert`: with `client_ca`, a handshake without one fails.
    pub require_client_cert: bool,
    pub insecure_http: bool,
    pub audit_log: Option<PathBuf>,
    pub max_body: usize,
    pub max_response_body: usize,
    pub max_connections: usize,
    pub queue_size: usize,
    pub max_pending: usize,
    pub response_timeout: Duration,
    pub poll_timeout_max: Duration,
    pub agent_liveness: Duration,
    pub drain_timeout: Duration,
    pub log_level: log::LevelFilter,
    pub log_format: LogFormat,
    pub log_file: Option<PathBuf>,
    /// A separate plain-HTTP listener for `/metrics` (never the public one).
    pub metrics_listen: Option<ListenAddr>,
    pub pid_file: Option<PathBuf>,
}

impl ServeConfig {
    pub fn new(state: PathBuf, listen: SocketAddr) -> ServeConfig {
        ServeConfig {
            state,
            listen,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            require_client_cert: false,
            insecure_http: false,
            audit_log: None,
            max_body: 4 * 1024 * 1024,
            max_response_body: crate::relay::hub::DEFAULT_MAX_RESPONSE_BODY,
            max_connections: 1024,
            queue_size: 64,
            max_pending: 1024,
            response_timeout: Duration::from_secs(120),
            poll_timeout_max: Duration::from_secs(30),
            agent_liveness: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            log_level: log::LevelFilter::Info,
            log_format: LogFormat::Text,
            log_file: None,
            metrics_listen: None,
            pid_file: None,
        }
    }
}

/// A usage error: one line, exit 2.
struct Usage(String);

impl From<lexopt::Error> for Usage {
    fn from(e: lexopt::Error) -> Usage {
        Usage(e.to_string())
    }
}

enum Outcome {
    Done,
    Help(&'static str),
}

/// Runs `mcp-tunnel relay` with the arguments after `relay`; returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    crate::ops::shutdown::hold_hangups();
    main_to(args, &mut std::io::stdout())
}

/// [`main`] writing its results to `out` (tests read them from a buffer).
pub fn main_to(args: Vec<OsString>, out: &mut dyn Write) -> i32 {
    let mut p = lexopt::Parser::from_args(args);
    let command = match p.next() {
        Ok(Some(Value(v))) => v.to_string_lossy().into_owned(),
        Ok(Some(Long("help") | Short('h'))) | Ok(None) => return help(out, USAGE),
        Ok(Some(other)) => return usage(format!("unexpected {}", describe(&other))),
        Err(e) => return usage(e.to_string()),
    };
    let r = match command.as_str() {
        "init" => init(&mut p, out),
        "serve" => serve(&mut p, out),
        "tunnel" | "tunnels" => tunnel(&mut p, out),
        "key" | "keys" => key(&mut p, out),
        "org" | "orgs" => org(&mut p, out),
        "help" => Ok(Ok(Outcome::Help(USAGE))),
        other => Err(Usage(format!(
            "unknown relay command {other:?} (init, serve, tunnel, key, org)"
        ))),
    };
    match r {
        Err(Usage(msg)) => usage(msg),
        Ok(Ok(Outcome::Done)) => 0,
        Ok(Ok(Outcome::Help(text))) => help(out, text),
        Ok(Err(code)) => code,
    }
}

fn help(out: &mut dyn Write, text: &str) -> i32 {
    match writeln!(out, "{text}") {
        Ok(()) => 0,
        Err(e) => fail(format!("cannot write to stdout: {e}")),
    }
}

fn usage(msg: String) -> i32 {
    eprintln!("mcp-tunnel relay: {msg}");
    2
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("mcp-tunnel relay: {msg}");
    1
}

fn describe(arg: &lexopt::Arg<'_>) -> String {
    match arg {
        Long(l) => format!("flag --{l}"),
        Short(s) => format!("flag -{s}"),
        Value(v) => format!("argument {:?}", v.to_string_lossy()),
    }
}

fn string_value(p: &mut lexopt::Parser, flag: &str) -> Result<String, Usage> {
    let v = p
        .value()
        .map_err(|_| Usage(format!("--{flag} needs a value")))?;
    v.into_string()
        .map_err(|_| Usage(format!("--{flag}: value is not valid UTF-8")))
}

/// Names and descriptions: printable, one line, at most 256 characters.
fn text_value(p: &mut lexopt::Parser, flag: &str) -> Result<String, Usage> {
    let v = string_value(p, flag)?;
    if v.chars().count() > 256 || v.chars().any(char::is_control) {
        return Err(Usage(format!(
            "--{flag}: at most 256 characters, no control characters"
        )));
    }
    Ok(v)
}

fn number_value(p: &mut lexopt::Parser, flag: &str) -> Result<usize, Usage> {
    let s = string_value(p, flag)?;
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Usage(format!(
            "--{flag}: expected a positive integer, got {s:?}"
        ))),
    }
}

fn duration_value(p: &mut lexopt::Parser, flag: &str) -> Result<Duration, Usage> {
    let s = string_value(p, flag)?;
    crate::proto::timeout::parse_config_duration(&s)
        .map_err(|e| Usage(format!("--{flag}: {e} in {s:?} (e.g. 30s, 2m, 500ms)")))
}

/// `--state`, falling back to the environment; its absence is a usage error.
fn state_dir(flag: Option<PathBuf>) -> Result<StateDir, Usage> {
    if let Some(p) = flag {
        return Ok(StateDir::new(p));
    }
    match std::env::var_os(STATE_ENV) {
        Some(v) if !v.is_empty() => Ok(StateDir::new(PathBuf::from(v))),
        _ => Err(Usage(format!(
            "--state DIR is required (or set {STATE_ENV})"
        ))),
    }
}

fn state_error(e: StateError) -> i32 {
    match e {
        StateError::AlreadyExists(_) => usage(e.to_string()),
        _ => fail(e),
    }
}

type Run = Result<Result<Outcome, i32>, Usage>;

/// Prints one JSON line; a closed stdout is a failure, since the secret would be lost.
fn print_line(out: &mut dyn Write, line: &str) -> Result<(), i32> {
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|e| fail(format!("cannot write to stdout: {e}")))
}

fn now() -> String {
    rfc3339(SystemTime::now())
}

#[derive(Serialize)]
struct InitOut {
    org_id: String,
    tunnel_id: String,
    runtime_key: String,
    connector_key: String,
}

fn init(p: &mut lexopt::Parser, out: &mut dyn Write) -> Run {
    let mut state = None;
    let mut org_name = "default".to_string();
    let mut tunnel_name = "default".to_string();
    while let Some(arg) = p.next()? {
        match arg {
            Long("state") => state = Some(PathBuf::from(p.value()?)),
            Long("org-name") => org_name = text_value(p, "org-name")?,
            Long("tunnel-name") => tunnel_name = text_value(p, "tunnel-name")?,
            Long("help") | Short('h') => return Ok(Ok(Outcome::Help(INIT_USAGE))),
            other => return Err(Usage(format!("init: unexpected {}", describe(&other)))),
        }
    }
    let dir = state_dir(state)?;
    Ok(run_init(out, &dir, org_name, tunnel_name))
}

fn run_init(
    out: &mut dyn Write,
    dir: &StateDir,
    org_name: String,
    tunnel_name: String,
) -> Result<Outcome, i32> {
    let random = |e: keys::RandomError| fail(e);
    let org_id = keys::random_alnum("org_", 24).map_err(random)?;
    let tunnel_id = keys::random_alnum("tunnel_", 32).map_err(random)?;
    let runtime = keys::generate().map_err(random)?;
    let connector = keys::generate().map_err(random)?;
    let created = now();
    let mut state = State::empty();
    state.orgs.push(Org {
        id: org_id.clone(),
        name: org_name,
    });
    state.tunnels.push(Tunnel {
        id: tunnel_id.clone(),
        org_id: org_id.clone(),
        name: tunnel_name,
        description: String::new(),
        created_at: created.clone(),
        ..Default::default()
    });
    for (k, role) in [(&runtime, Role::Runtime), (&connector, Role::Connector)] {
        state.keys.push(KeyRecord {
            id: k.id.clone(),
            org_id: org_id.clone(),
            role: role.as_str().into(),
            tunnels: vec![tunnel_id.clone()],
            all_tunnels: false,
            sha256: k.sha256.clone(),
            created_at: created.clone(),
            revoked_at: None,
        });
    }
    dir.init(&state).map_err(state_error)?;
    print_line(
        out,
        &json::to_string(&InitOut {
            org_id,
            tunnel_id,
            runtime_key: runtime.secret.clone(),
            connector_key: connector.secret.clone(),
        }),
    )?;
    Ok(Outcome::Done)
}

/// The org a new record goes to: `--org`, or the only one there is.
fn pick_org(state: &State, org: Option<&str>) -> Result<String, String> {
    match org {
        Some(id) => state
            .org(id)
            .map(|o| o.id.clone())
            .ok_or_else(|| format!("--org: no org {id:?}")),
        None => match state.orgs.as_slice() {
            [only] => Ok(only.id.clone()),
            [] => Err("the state has no org; create one with `relay org create`".into()),
            _ => Err("the state has several orgs: name one with --org ORG_ID".into()),
        },
    }
}

/// Applies a change under the state lock; a refused change is exit 1 with its message.
fn change<T>(dir: &StateDir, f: impl FnOnce(&mut State) -> Result<T, String>) -> Result<T, i32> {
    match dir.update(f) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(msg)) => Err(fail(msg)),
        Err(e) => Err(state_error(e)),
    }
}

#[derive(Serialize)]
struct TunnelCreated {
    tunnel_id: String,
}

#[derive(Serialize)]
struct TunnelLine<'a> {
    tunnel_id: &'a str,
    org_id: &'a str,
    name: &'a str,
    description: &'a str,
    created_at: &'a str,
    agent_auth: &'a str,
    connector_auth: &'a str,
}

#[derive(Serialize)]
struct TunnelCertsLine<'a> {
    tunnel_id: &'a str,
    agent_auth: &'a str,
    agent_cert_names: &'a [String],
    connector_auth: &'a str,
    connector_cert_names: &'a [String],
}

fn auth_mode_value(p: &mut lexopt::Parser, flag: &str) -> Result<AuthMode, Usage> {
    let v = string_value(p, flag)?;
    AuthMode::parse(&v).ok_or_else(|| {
        Usage(format!(
            "--{flag}: expected key, cert or key+cert, got {v:?}"
        ))
    })
}

fn tunnel(p: &mut lexopt::Parser, out: &mut dyn Write) -> Run {
    let action =
        match p.next()? {
            Some(Value(v)) => v.to_string_lossy().into_owned(),
            Some(Long("help") | Short('h')) => return Ok(Ok(Outcome::Help(TUNNEL_USAGE))),
            Some(other) => return Err(Usage(format!("tunnel: unexpected {}", describe(&other)))),
            None => return Err(Usage(
                "tunnel: missing action (create, list, delete, set, bind-cert, unbind-cert, certs)"
                    .into(),
            )),
        };
    let (mut state, mut name, mut description, mut org, mut id) = (None, None, None, None, None);
    let cert_action = matches!(action.as_str(), "bind-cert" | "unbind-cert");
    let takes_id = matches!(
        action.as_str(),
        "delete" | "set" | "bind-cert" | "unbind-cert" | "certs"
    );
    let mut role = Role::Runtime;
    let (mut agent_auth, mut connector_auth) = (None, None);
    while let Some(arg) = p.next()? {
        match arg {
            Long("state") => state = Some(PathBuf::from(p.value()?)),
            Long("name") if action == "create" => name = Some(text_value(p, "name")?),
            Long("name") if cert_action => {
                let v = string_value(p, "name")?;
                if !valid_cert_name(&v) {
                    return Err(Usage(format!(
                        "--name: a certificate name is 1 to {MAX_CERT_NAME_LEN} printable characters without spaces"
                    )));
                }
                name = Some(v);
            }
            Long("role") if cert_action => {
                let v = string_value(p, "role")?;
                role = match v.as_str() {
                    "runtime" | "agent" => Role::Runtime,
                    "connector" => Role::Connector,
                    _ => {
                        return Err(Usage(format!(
                            "--role: expected runtime or connector, got {v:?}"
                        )))
                    }
                };
            }
            Long("agent-auth") if matches!(action.as_str(), "set" | "create") => {
                agent_auth = Some(auth_mode_value(p, "agent-auth")?)
            }
            Long("connector-auth") if matches!(action.as_str(), "set" | "create") => {
                connector_auth = Some(auth_mode_value(p, "connector-auth")?)
            }
            Long("description") if action == "create" => {
                description = Some(text_value(p, "description")?)
            }
            Long("org") if action == "create" => org = Some(string_value(p, "org")?),
            Long("help") | Short('h') => return Ok(Ok(Outcome::Help(TUNNEL_USAGE))),
            Value(v) if takes_id && id.is_none() => {
                let v = v.to_string_lossy().into_owned();
                if !is_tunnel_id(&v) {
                    return Err(Usage(format!("tunnel {action}: {v:?} is not a tunnel id")));
                }
                id = Some(v)
            }
            other => {
                return Err(Usage(format!(
                    "tunnel {action}: unexpected {}",
                    describe(&other)
                )))
            }
        }
    }
    let dir = state_dir(state)?;
    Ok(match action.as_str() {
        "create" => {
            let modes = [(Role::Runtime, agent_auth), (Role::Connector, connector_auth)];
            tunnel_create(out, &dir, name, description, org, modes)
        }
        "list" => list(out, &dir, |s| {
            s.tunnels
                .iter()
                .map(|t| {
                    json::to_string(&TunnelLine {
                        tunnel_id: &t.id,
                        org_id: &t.org_id,
                        name: &t.name,
                        description: &t.description,
                        created_at: &t.created_at,
                        agent_auth: t.auth_mode(Role::Runtime).as_str(),
                        connector_auth: t.auth_mode(Role::Connector).as_str(),
                    })
                })
                .collect()
        }),
        "set" => {
            let id = id.ok_or_else(|| Usage("tunnel set: missing TUNNEL_ID".into()))?;
            if agent_auth.is_none() && connector_auth.is_none() {
                return Err(Usage(
                    "tunnel set: give --agent-auth and/or --connector-auth".into(),
                ));
            }
            change(&dir, |s| {
                set_auth_modes(
                    tunnel_mut(s, &id)?,
                    [(Role::Runtime, agent_auth), (Role::Connector, connector_auth)],
                );
                Ok(())
            })
            .map(|()| Outcome::Done)
        }
        "bind-cert" | "unbind-cert" => {
            let id = id.ok_or_else(|| Usage(format!("tunnel {action}: missing TUNNEL_ID")))?;
            let name = name.ok_or_else(|| Usage(format!("tunnel {action}: --name NAME is required")))?;
            let bind = action == "bind-cert";
            change(&dir, |s| {
                let t = tunnel_mut(s, &id)?;
                let names = t
                    .cert_names_mut(role)
                    .ok_or_else(|| "admin keys use no tunnel".to_string())?;
                if bind {
                    if !names.contains(&name) {
                        if names.len() >= MAX_CERT_NAMES {
                            return Err(format!(
                                "{id} already has {MAX_CERT_NAMES} {} certificate names",
                                role.as_str()
                            ));
                        }
                        names.push(name.clone());
                    }
                } else {
                    let before = names.len();
                    names.retain(|n| *n != name);
                    if names.len() == before {
                        return Err(format!(
                            "{name:?} is not bound to {id} for {}",
                            role.as_str()
                        ));
                    }
                }
                Ok(())
            })
            .map(|()| Outcome::Done)
        }
        "certs" => list(out, &dir, |s| {
            s.tunnels
                .iter()
                .filter(|t| id.as_deref().is_none_or(|i| i == t.id))
                .map(|t| {
                    json::to_string(&TunnelCertsLine {
                        tunnel_id: &t.id,
                        agent_auth: t.auth_mode(Role::Runtime).as_str(),
                        agent_cert_names: t.cert_names(Role::Runtime),
                        connector_auth: t.auth_mode(Role::Connector).as_str(),
                        connector_cert_names: t.cert_names(Role::Connector),
                    })
                })
                .collect()
        }),
        "delete" => {
            let id = id.ok_or_else(|| Usage("tunnel delete: missing TUNNEL_ID".into()))?;
            change(&dir, |s| {
                let before = s.tunnels.len();
                s.tunnels.retain(|t| t.id != id);
                if s.tunnels.len() == before {
                    return Err(format!("no tunnel {id}"));
                }
                for k in &mut s.keys {
                    k.tunnels.retain(|t| *t != id);
                }
                Ok(())
            })
            .map(|()| Outcome::Done)
        }
        other => {
            return Err(Usage(format!(
                "tunnel: unknown action {other:?} (create, list, delete, set, bind-cert, unbind-cert, certs)"
            )))
        }
    })
}

/// Sets the modes given; a mode that needs a certificate while none is bound
/// gets a note, since it refuses every such caller until one is.
fn set_auth_modes(t: &mut Tunnel, modes: [(Role, Option<AuthMode>); 2]) {
    for (role, mode) in modes {
        if let Some(mode) = mode {
            t.set_auth_mode(role, mode);
            if mode.needs_cert() && t.cert_names(role).is_empty() {
                eprintln!(
                    "mcp-tunnel relay: note: no certificate names are bound for {} on {} yet: every such caller is refused until `relay tunnel bind-cert`",
                    role.as_str(),
                    t.id
                );
            }
        }
    }
}

fn tunnel_mut<'s>(s: &'s mut State, id: &str) -> Result<&'s mut Tunnel, String> {
    s.tunnels
        .iter_mut()
        .find(|t| t.id == id)
        .ok_or_else(|| format!("no tunnel {id}"))
}

fn tunnel_create(
    out: &mut dyn Write,
    dir: &StateDir,
    name: Option<String>,
    description: Option<String>,
    org: Option<String>,
    modes: [(Role, Option<AuthMode>); 2],
) -> Result<Outcome, i32> {
    let id = keys::random_alnum("tunnel_", 32).map_err(fail)?;
    let created = now();
    let tunnel_id = change(dir, |s| {
        let org_id = pick_org(s, org.as_deref())?;
        let mut t = Tunnel {
            id: id.clone(),
            org_id,
            name: name.unwrap_or_default(),
            description: description.unwrap_or_default(),
            created_at: created,
            ..Default::default()
        };
        set_auth_modes(&mut t, modes);
        s.tunnels.push(t);
        Ok(id)
    })?;
    print_line(out, &json::to_string(&TunnelCreated { tunnel_id }))?;
    Ok(Outcome::Done)
}

fn list(
    out: &mut dyn Write,
    dir: &StateDir,
    lines: impl FnOnce(&State) -> Vec<String>,
) -> Result<Outcome, i32> {
    let state = dir.load().map_err(state_error)?;
    for line in lines(&state) {
        print_line(out, &line)?;
    }
    Ok(Outcome::Done)
}

#[derive(Serialize)]
struct KeyCreated {
    key_id: String,
    key: String,
}

#[derive(Serialize)]
struct KeyLine<'a> {
    key_id: &'a str,
    org_id: &'a str,
    role: &'a str,
    /// `["*"]` when the key covers every tunnel of its org.
    tunnels: Vec<&'a str>,
    created_at: &'a str,
    revoked_at: Option<&'a str>,
}

fn key(p: &mut lexopt::Parser, out: &mut dyn Write) -> Run {
    let action = match p.next()? {
        Some(Value(v)) => v.to_string_lossy().into_owned(),
        Some(Long("help") | Short('h')) => return Ok(Ok(Outcome::Help(KEY_USAGE))),
        Some(other) => return Err(Usage(format!("key: unexpected {}", describe(&other)))),
        None => return Err(Usage("key: missing action (create, list, revoke)".into())),
    };
    let (mut state, mut role, mut org, mut id) = (None, None, None, None);
    let mut tunnels: Vec<String> = Vec::new();
    while let Some(arg) = p.next()? {
        match arg {
            Long("state") => state = Some(PathBuf::from(p.value()?)),
            Long("role") if action == "create" => {
                let v = string_value(p, "role")?;
                role = Some(Role::parse(&v).ok_or_else(|| {
                    Usage(format!(
                        "--role: expected runtime, connector or admin, got {v:?}"
                    ))
                })?);
            }
            Long("tunnel") if action == "create" => {
                let v = string_value(p, "tunnel")?;
                if !is_tunnel_id(&v) {
                    return Err(Usage(format!("--tunnel: {v:?} is not a tunnel id")));
                }
                if tunnels.len() >= 1000 {
                    return Err(Usage("--tunnel: at most 1000 tunnels per key".into()));
                }
                tunnels.push(v);
            }
            Long("org") if action == "create" => org = Some(string_value(p, "org")?),
            Long("help") | Short('h') => return Ok(Ok(Outcome::Help(KEY_USAGE))),
            Value(v) if action == "revoke" && id.is_none() => {
                id = Some(v.to_string_lossy().into_owned())
            }
            other => {
                return Err(Usage(format!(
                    "key {action}: unexpected {}",
                    describe(&other)
                )))
            }
        }
    }
    let dir = state_dir(state)?;
    Ok(match action.as_str() {
        "create" => {
            let role = role.ok_or_else(|| {
                Usage("key create: --role runtime|connector|admin is required".into())
            })?;
            if role == Role::Admin && !tunnels.is_empty() {
                return Err(Usage(
                    "--tunnel: admin keys are not scoped to tunnels".into(),
                ));
            }
            key_create(out, &dir, role, tunnels, org)
        }
        "list" => list(out, &dir, |s| {
            s.keys
                .iter()
                .map(|k| {
                    json::to_string(&KeyLine {
                        key_id: &k.id,
                        org_id: &k.org_id,
                        role: &k.role,
                        tunnels: if k.all_tunnels {
                            vec!["*"]
                        } else {
                            k.tunnels.iter().map(String::as_str).collect()
                        },
                        created_at: &k.created_at,
                        revoked_at: k.revoked_at.as_deref(),
                    })
                })
                .collect()
        }),
        "revoke" => {
            let id = id.ok_or_else(|| Usage("key revoke: missing KEY_ID".into()))?;
            let at = now();
            change(&dir, |s| {
                let k = s
                    .keys
                    .iter_mut()
                    .find(|k| k.id == id)
                    .ok_or_else(|| format!("no key {id}"))?;
                // Revoking twice keeps the first time.
                if k.revoked_at.is_none() {
                    k.revoked_at = Some(at);
                }
                Ok(())
            })
            .map(|()| Outcome::Done)
        }
        other => {
            return Err(Usage(format!(
                "key: unknown action {other:?} (create, list, revoke)"
            )))
        }
    })
}

fn key_create(
    out: &mut dyn Write,
    dir: &StateDir,
    role: Role,
    mut tunnels: Vec<String>,
    org: Option<String>,
) -> Result<Outcome, i32> {
    let k = keys::generate().map_err(fail)?;
    let created = now();
    tunnels.dedup();
    let key_id = change(dir, |s| {
        let org_id = match (&org, tunnels.first()) {
            // Scoped keys take the org of their tunnels.
            (None, Some(t)) => s
                .tunnel(t)
                .map(|t| t.org_id.clone())
                .ok_or_else(|| format!("--tunnel: no tunnel {t}"))?,
            _ => pick_org(s, org.as_deref())?,
        };
        for t in &tunnels {
            match s.tunnel(t) {
                Some(found) if found.org_id == org_id => {}
                Some(_) => return Err(format!("--tunnel: {t} belongs to another org")),
                None => return Err(format!("--tunnel: no tunnel {t}")),
            }
        }
        s.keys.push(KeyRecord {
            id: k.id.clone(),
            org_id,
            role: role.as_str().into(),
            all_tunnels: tunnels.is_empty() && role != Role::Admin,
            tunnels,
            sha256: k.sha256.clone(),
            created_at: created,
            revoked_at: None,
        });
        Ok(k.id.clone())
    })?;
    print_line(
        out,
        &json::to_string(&KeyCreated {
            key_id,
            key: k.secret.clone(),
        }),
    )?;
    Ok(Outcome::Done)
}

#[derive(Serialize)]
struct OrgCreated {
    org_id: String,
}

#[derive(Serialize)]
struct OrgLine<'a> {
    org_id: &'a str,
    name: &'a str,
}

fn org(p: &mut lexopt::Parser, out: &mut dyn Write) -> Run {
    let action = match p.next()? {
        Some(Value(v)) => v.to_string_lossy().into_owned(),
        Some(Long("help") | Short('h')) => return Ok(Ok(Outcome::Help(ORG_USAGE))),
        Some(other) => return Err(Usage(format!("org: unexpected {}", describe(&other)))),
        None => return Err(Usage("org: missing action (create, list)".into())),
    };
    let (mut state, mut name) = (None, None);
    while let Some(arg) = p.next()? {
        match arg {
            Long("state") => state = Some(PathBuf::from(p.value()?)),
            Long("name") if action == "create" => name = Some(text_value(p, "name")?),
            Long("help") | Short('h') => return Ok(Ok(Outcome::Help(ORG_USAGE))),
            other => {
                return Err(Usage(format!(
                    "org {action}: unexpected {}",
                    describe(&other)
                )))
            }
        }
    }
    let dir = state_dir(state)?;
    Ok(match action.as_str() {
        "create" => {
            let id = keys::random_alnum("org_", 24).map_err(fail);
            let id = match id {
                Ok(id) => id,
                Err(code) => return Ok(Err(code)),
            };
            change(&dir, |s| {
                s.orgs.push(Org {
                    id: id.clone(),
                    name: name.unwrap_or_default(),
                });
                Ok(())
            })
            .and_then(|()| print_line(out, &json::to_string(&OrgCreated { org_id: id })))
            .map(|()| Outcome::Done)
        }
        "list" => list(out, &dir, |s| {
            s.orgs
                .iter()
                .map(|o| {
                    json::to_string(&OrgLine {
                        org_id: &o.id,
                        name: &o.name,
                    })
                })
                .collect()
        }),
        other => {
            return Err(Usage(format!(
                "org: unknown action {other:?} (create, list)"
            )))
        }
    })
}

fn serve(p: &mut lexopt::Parser, out: &mut dyn Write) -> Run {
    let mut state = None;
    let mut listen = None;
    let mut cfg = ServeConfig::new(PathBuf::new(), SocketAddr::from(([127, 0, 0, 1], 0)));
    while let Some(arg) = p.next()? {
        match arg {
            Long("state") => state = Some(PathBuf::from(p.value()?)),
            Long("listen") => {
                let v = string_value(p, "listen")?;
                listen = Some(v.parse::<SocketAddr>().map_err(|_| {
                    Usage(format!(
                        "--listen: expected IP:PORT (e.g. 127.0.0.1:8443), got {v:?}"
                    ))
                })?);
            }
            Long("tls-cert") => cfg.tls_cert = Some(PathBuf::from(p.value()?)),
            Long("tls-key") => cfg.tls_key = Some(PathBuf::from(p.value()?)),
            Long("client-ca") => cfg.client_ca = Some(PathBuf::from(p.value()?)),
            Long("require-client-cert") => cfg.require_client_cert = true,
            Long("insecure-http") => cfg.insecure_http = true,
            Long("audit-log") => cfg.audit_log = Some(PathBuf::from(p.value()?)),
            Long("max-body") => cfg.max_body = number_value(p, "max-body")?,
            Long("max-response-body") => {
                cfg.max_response_body = number_value(p, "max-response-body")?
            }
            Long("max-connections") => cfg.max_connections = number_value(p, "max-connections")?,
            Long("queue-size") => cfg.queue_size = number_value(p, "queue-size")?,
            Long("max-pending") => cfg.max_pending = number_value(p, "max-pending")?,
            Long("response-timeout") => {
                cfg.response_timeout = duration_value(p, "response-timeout")?
            }
            Long("poll-timeout-max") => {
                cfg.poll_timeout_max = duration_value(p, "poll-timeout-max")?
            }
            Long("agent-liveness") => cfg.agent_liveness = duration_value(p, "agent-liveness")?,
            Long("drain-timeout") => cfg.drain_timeout = duration_value(p, "drain-timeout")?,
            Long("log-level") => {
                let v = string_value(p, "log-level")?;
                cfg.log_level = parse_level(&v).ok_or_else(|| {
                    Usage(format!(
                        "--log-level: expected trace, debug, info, warn, error or off, got {v:?}"
                    ))
                })?;
            }
            Long("log-format") => {
                let v = string_value(p, "log-format")?;
                cfg.log_format = LogFormat::parse(&v).ok_or_else(|| {
                    Usage(format!("--log-format: expected text or json, got {v:?}"))
                })?;
            }
            Long("log-file") => cfg.log_file = Some(PathBuf::from(p.value()?)),
            Long("pid-file") => cfg.pid_file = Some(PathBuf::from(p.value()?)),
            Long("metrics-listen") => {
                let v = string_value(p, "metrics-listen")?;
                cfg.metrics_listen = Some(
                    ListenAddr::parse(&v)
                        .map_err(|why| Usage(format!("--metrics-listen: {why}, got {v:?}")))?,
                );
            }
            Long("help") | Short('h') => return Ok(Ok(Outcome::Help(SERVE_USAGE))),
            other => return Err(Usage(format!("serve: unexpected {}", describe(&other)))),
        }
    }
    cfg.state = state_dir(state)?.dir().to_path_buf();
    cfg.listen = listen.ok_or_else(|| Usage("--listen ADDR is required".into()))?;
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(_), None) => return Err(Usage("--tls-key is required with --tls-cert".into())),
        (None, Some(_)) => return Err(Usage("--tls-cert is required with --tls-key".into())),
        (None, None) if !cfg.listen.ip().is_loopback() && !cfg.insecure_http => {
            return Err(Usage(format!(
                "--listen {}: plain HTTP only on loopback; give --tls-cert/--tls-key or --insecure-http",
                cfg.listen
            )))
        }
        _ => {}
    }
    if let Some(ListenAddr::Tcp(a)) = &cfg.metrics_listen {
        if !a.ip().is_loopback() && !cfg.insecure_http {
            return Err(Usage(format!(
                "--metrics-listen {a}: metrics only on loopback or a unix socket; add --insecure-http to expose them"
            )));
        }
    }
    if cfg.client_ca.is_some() && cfg.tls_cert.is_none() {
        return Err(Usage(
            "--client-ca needs TLS: give --tls-cert and --tls-key".into(),
        ));
    }
    if cfg.require_client_cert && cfg.client_ca.is_none() {
        return Err(Usage("--require-client-cert needs --client-ca".into()));
    }
    if cfg.response_timeout.is_zero() {
        return Err(Usage("--response-timeout must be above 0".into()));
    }
    Ok(match super::server::run(cfg, out) {
        0 => Ok(Outcome::Done),
        code => Err(code),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(a: &[&str]) -> (i32, String) {
        let mut out = Vec::new();
        let code = main_to(a.iter().map(OsString::from).collect(), &mut out);
        (code, String::from_utf8(out).unwrap())
    }

    fn code(a: &[&str]) -> i32 {
        run(a).0
    }

    fn tmp() -> String {
        std::env::temp_dir()
            .join(format!(
                "mcp-tunnel-cli-{}-{}",
                std::process::id(),
                keys::random_hex("", 8).unwrap()
            ))
            .to_string_lossy()
            .into_owned()
    }

    fn field(line: &str, name: &str) -> String {
        let v: json::Value = json::from_str(line.trim()).unwrap();
        let json::Value::Object(o) = v else {
            panic!("not an object: {line}")
        };
        match o.get(name) {
            Some(json::Value::String(s)) => s.clone(),
            other => panic!("{name}: {other:?} in {line}"),
        }
    }

    #[test]
    fn usage_errors_exit_2() {
        let l = "127.0.0.1:1";
        let long = "n".repeat(257);
        for a in [
            &["bogus"][..],
            &["init"],
            &["init", "--state"],
            &["init", "--state", "/x", "--bogus"],
            &["key", "create", "--state", "/x", "--role", "boss"],
            &["key", "create", "--state", "/x", "--tunnel", "x"],
            &["key", "create", "--state", "/x"],
            &["key", "frobnicate", "--state", "/x"],
            &["serve", "--state", "/x", "--listen", "nope"],
            &["serve", "--state", "/x"],
            &["serve", "--state", "/x", "--listen", "0.0.0.0:1"],
            &["serve", "--state", "/x", "--listen", l, "--max-body", "-1"],
            &["serve", "--state", "/x", "--listen", l, "--tls-cert", "c"],
            &[
                "serve",
                "--state",
                "/x",
                "--listen",
                l,
                "--metrics-listen",
                "0.0.0.0:9",
            ],
            &[
                "serve",
                "--state",
                "/x",
                "--listen",
                l,
                "--metrics-listen",
                "unix:",
            ],
            &[
                "serve",
                "--state",
                "/x",
                "--listen",
                l,
                "--response-timeout",
                "5",
            ],
            &["tunnel", "delete", "--state", "/x", "not-a-tunnel"],
            &["tunnel", "create", "--state", "/x", "--name", "a\nb"],
            &["init", "--state", "/x", "--tunnel-name", &long],
        ] {
            assert_eq!(code(a), 2, "{a:?}");
        }
    }

    #[test]
    fn help_exits_0() {
        for a in [
            &["--help"][..],
            &["init", "--help"],
            &["serve", "--help"],
            &["tunnel", "--help"],
            &["key", "create", "--help"],
            &["org", "--help"],
        ] {
            let (c, text) = run(a);
            assert_eq!(c, 0, "{a:?}");
            assert!(text.starts_with("usage:"), "{a:?}");
        }
    }

    #[test]
    fn init_prints_one_json_line() {
        let d = tmp();
        let (c, out) = run(&["init", "--state", &d]);
        assert_eq!(c, 0);
        assert_eq!(out.lines().count(), 1);
        let tunnel = field(&out, "tunnel_id");
        assert!(is_tunnel_id(&tunnel));
        assert!(field(&out, "org_id").starts_with("org_"));
        let rk = field(&out, "runtime_key");
        let ck = field(&out, "connector_key");
        let s = StateDir::new(&d).load().unwrap();
        let (p, _) = super::super::auth::authorize(&s, Some(&rk), &tunnel, Role::Runtime).unwrap();
        assert_eq!(p.role, Role::Runtime);
        super::super::auth::authorize(&s, Some(&ck), &tunnel, Role::Connector).unwrap();
        let text = std::fs::read_to_string(StateDir::new(&d).file()).unwrap();
        assert!(!text.contains(&rk) && !text.contains(&ck), "secrets stored");
        assert_eq!(run(&["init", "--state", &d]), (2, String::new()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn admin_commands() {
        let d = tmp();
        assert_eq!(code(&["init", "--state", &d]), 0);
        let (c, out) = run(&["tunnel", "create", "--state", &d, "--name", "two"]);
        assert_eq!(c, 0);
        let t2 = field(&out, "tunnel_id");
        let (c, out) = run(&["key", "create", "--state", &d, "--role", "connector"]);
        assert_eq!(c, 0);
        let k1 = field(&out, "key_id");
        assert!(field(&out, "key").starts_with("mtk_"));
        let s = StateDir::new(&d).load().unwrap();
        assert!(s.keys.iter().any(|k| k.id == k1 && k.all_tunnels));
        let (c, out) = run(&[
            "key", "create", "--state", &d, "--role", "runtime", "--tunnel", &t2,
        ]);
        assert_eq!(c, 0);
        let k2 = field(&out, "key_id");
        let (c, out) = run(&["key", "list", "--state", &d]);
        assert_eq!(c, 0);
        assert_eq!(out.lines().count(), 4);
        assert!(!out.contains("mtk_") && !out.contains("sha256"));
        assert_eq!(code(&["key", "revoke", "--state", &d, &k1]), 0);
        assert_eq!(code(&["key", "revoke", "--state", &d, "key_nope"]), 1);
        let (_, out) = run(&["tunnel", "list", "--state", &d]);
        assert_eq!(out.lines().count(), 2);
        assert_eq!(code(&["tunnel", "delete", "--state", &d, &t2]), 0);
        assert_eq!(code(&["tunnel", "delete", "--state", &d, &t2]), 1);
        let s = StateDir::new(&d).load().unwrap();
        assert!(s.keys.iter().find(|k| k.id == k1).unwrap().is_revoked());
        assert!(s
            .keys
            .iter()
            .find(|k| k.id == k2)
            .unwrap()
            .tunnels
            .is_empty());
        assert_eq!(s.tunnels.len(), 1);
        let (c, out) = run(&["org", "create", "--state", &d]);
        assert_eq!(c, 0);
        let org2 = field(&out, "org_id");
        // Two orgs now: an unscoped create must name one.
        assert_eq!(code(&["tunnel", "create", "--state", &d]), 1);
        assert_eq!(
            code(&["tunnel", "create", "--state", &d, "--org", &org2]),
            0
        );
        assert_eq!(
            code(&["tunnel", "create", "--state", &d, "--org", "org_x"]),
            1
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn certificate_binding_commands() {
        let d = tmp();
        assert_eq!(code(&["init", "--state", &d]), 0);
        let t = StateDir::new(&d).load().unwrap().tunnels[0].id.clone();
        let st = ["--state", d.as_str()];
        let with = |a: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = a.iter().map(|x| x.to_string()).collect();
            v.extend(st.iter().map(|x| x.to_string()));
            v
        };
        let run_v = |v: Vec<String>| {
            let refs: Vec<&str> = v.iter().map(String::as_str).collect();
            run(&refs)
        };
        let ok = |a: &[&str]| run_v(with(a)).0;
        assert_eq!(ok(&["tunnel", "bind-cert", &t, "--name", "agent-1"]), 0);
        assert_eq!(
            ok(&["tunnel", "bind-cert", &t, "--name", "agent-1"]),
            0,
            "idempotent"
        );
        assert_eq!(
            ok(&[
                "tunnel",
                "bind-cert",
                &t,
                "--name",
                "spiffe://corp/c",
                "--role",
                "connector"
            ]),
            0
        );
        assert_eq!(ok(&["tunnel", "set", &t, "--agent-auth", "cert"]), 0);
        assert_eq!(
            ok(&["tunnel", "set", &t, "--connector-auth", "key+cert"]),
            0
        );
        let (c, out) = run_v(with(&["tunnel", "certs", &t]));
        assert_eq!(c, 0);
        assert_eq!(out.lines().count(), 1);
        assert!(out.contains(r#""agent_auth":"cert""#), "{out}");
        assert!(out.contains(r#""agent_cert_names":["agent-1"]"#), "{out}");
        assert!(
            out.contains(r#""connector_cert_names":["spiffe://corp/c"]"#),
            "{out}"
        );
        let (_, list) = run_v(with(&["tunnel", "list"]));
        assert!(list.contains(r#""connector_auth":"key+cert""#), "{list}");
        assert_eq!(ok(&["tunnel", "unbind-cert", &t, "--name", "agent-1"]), 0);
        assert_eq!(ok(&["tunnel", "unbind-cert", &t, "--name", "agent-1"]), 1);
        assert_eq!(ok(&["tunnel", "set", &t, "--agent-auth", "key"]), 0);
        let s = StateDir::new(&d).load().unwrap();
        assert_eq!(s.tunnels[0].agent_auth, None, "key is stored as absent");
        // A tunnel can be created with its modes at once.
        let (c, out) = run_v(with(&[
            "tunnel",
            "create",
            "--agent-auth",
            "cert",
            "--connector-auth",
            "key+cert",
        ]));
        assert_eq!(c, 0, "{out}");
        let (_, list) = run_v(with(&["tunnel", "list"]));
        let created = list
            .lines()
            .find(|l| !l.contains(t.as_str()))
            .unwrap_or_default();
        assert!(created.contains(r#""agent_auth":"cert""#), "{list}");
        assert!(created.contains(r#""connector_auth":"key+cert""#), "{list}");
        let unknown = format!("tunnel_{}", "0".repeat(32));
        assert_eq!(ok(&["tunnel", "bind-cert", &unknown, "--name", "x"]), 1);
        for bad in [
            &["tunnel", "bind-cert", &t][..],
            &["tunnel", "bind-cert", &t, "--name", "a b"],
            &["tunnel", "bind-cert", &t, "--name", "x", "--role", "admin"],
            &["tunnel", "bind-cert", "tunnel_x", "--name", "x"],
            &["tunnel", "set", &t],
            &["tunnel", "set", &t, "--agent-auth", "password"],
            &["tunnel", "create", "--connector-auth", "password"],
            &["tunnel", "list", &t],
        ] {
            assert_eq!(ok(bad), 2, "{bad:?}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn client_ca_needs_tls() {
        let l = "127.0.0.1:1";
        assert_eq!(
            code(&[
                "serve",
                "--state",
                "/x",
                "--listen",
                l,
                "--client-ca",
                "/ca.pem"
            ]),
            2
        );
        assert_eq!(
            code(&[
                "serve",
                "--state",
                "/x",
                "--listen",
                l,
                "--require-client-cert"
            ]),
            2
        );
    }

    #[test]
    fn key_scoped_to_another_orgs_tunnel_is_refused() {
        let d = tmp();
        assert_eq!(code(&["init", "--state", &d]), 0);
        let s = StateDir::new(&d).load().unwrap();
        let t1 = s.tunnels[0].id.clone();
        let (_, out) = run(&["org", "create", "--state", &d]);
        let org2 = field(&out, "org_id");
        let args = [
            "key",
            "create",
            "--state",
            &d,
            "--role",
            "connector",
            "--org",
            &org2,
            "--tunnel",
            &t1,
        ];
        assert_eq!(code(&args), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_state_is_exit_1_and_untouched() {
        let d = tmp();
        assert_eq!(code(&["init", "--state", &d]), 0);
        let f = StateDir::new(&d).file();
        std::fs::write(&f, b"{not json").unwrap();
        assert_eq!(code(&["tunnel", "create", "--state", &d]), 1);
        assert_eq!(code(&["key", "list", "--state", &d]), 1);
        assert_eq!(std::fs::read(&f).unwrap(), b"{not json");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
