//! The built binary as operators run it: `relay init`, `relay serve` and
//! `sample-server` on free loopback ports, and one-shot commands. Children
//! are killed by their own handle on drop.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use miniserde::json::{self, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_mcp-tunnel");

/// Variables an operator's shell may carry that would change what the
/// binary does; every child starts without them.
const CLEARED: &[&str] = &[
    "CONTROL_PLANE_API_KEY",
    "OPENAI_API_KEY",
    "CONTROL_PLANE_BASE_URL",
    "CONTROL_PLANE_TUNNEL_ID",
    "MCP_SERVER_URL",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "TUNNEL_CLIENT_HTTP_PROXY",
    "CONTROL_PLANE_HTTP_PROXY",
    "CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "MCP_TUNNEL_RELAY_STATE",
];

pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args);
    for v in CLEARED {
        c.env_remove(v);
    }
    c
}

/// Runs to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out: Output = command(args).output().expect("run mcp-tunnel");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns a command that prints `listening on ADDR` first; returns it and ADDR.
pub fn spawn_listening(args: &[&str]) -> (Proc, SocketAddr) {
    let mut child = command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mcp-tunnel");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the first line");
    let addr = line
        .trim_end()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("first stdout line of {args:?}: {line:?}"));
    (proc, addr)
}

/// A fresh scratch directory under cargo's `CARGO_TARGET_TMPDIR`.
pub fn scratch(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}-{nanos}", std::process::id()))
}

/// What `relay init` printed.
pub struct Init {
    pub state: PathBuf,
    pub tunnel: String,
    pub runtime_key: String,
    pub connector_key: String,
}

fn field(v: &Value, name: &str) -> String {
    match v {
        Value::Object(o) => match o.get(name) {
            Some(Value::String(s)) => s.clone(),
            other => panic!("{name}: {other:?}"),
        },
        other => panic!("not an object: {other:?}"),
    }
}

pub fn relay_init(state: &Path) -> Init {
    let (code, out, err) = run(&["relay", "init", "--state", state.to_str().unwrap()]);
    assert_eq!(code, 0, "relay init: {err}");
    let v: Value = json::from_str(out.trim()).expect("init JSON");
    Init {
        state: state.to_path_buf(),
        tunnel: field(&v, "tunnel_id"),
        runtime_key: field(&v, "runtime_key"),
        connector_key: field(&v, "connector_key"),
    }
}

impl Init {
    /// `relay <args…> --state DIR`, which must succeed.
    pub fn admin(&self, args: &[&str]) {
        let mut a = args.to_vec();
        a.extend(["--state", self.state.to_str().unwrap()]);
        let (code, _, err) = run(&a);
        assert_eq!(code, 0, "relay {args:?}: {err}");
    }

    /// `relay serve` on a free loopback port with `extra` flags.
    pub fn serve(&self, extra: &[&str]) -> (Proc, SocketAddr) {
        let mut a = vec![
            "relay",
            "serve",
            "--state",
            self.state.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ];
        a.extend_from_slice(extra);
        spawn_listening(&a)
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// The sample MCP server (`/mcp`, tools echo, add, progress).
pub fn sample_server() -> (Proc, SocketAddr) {
    spawn_listening(&["sample-server", "--listen", "127.0.0.1:0", "--quiet"])
}
