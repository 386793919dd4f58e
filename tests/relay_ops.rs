//! Relay and agent binaries together, as an operator runs them: a real MCP
//! call through the tunnel, then both `/metrics` scraped (over unix sockets)
//! and checked; the relay's `--pid-file`, `--log-file` (reopened on SIGHUP)
//! and SIGTERM drain.
#![cfg(feature = "relay")]

mod agent_support;

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::{respond, spawn_server, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-tunnel");

/// Kills the child if the test fails midway (by its own handle).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    fn wait_exit(&mut self) -> i32 {
        let until = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < until, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < until, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json_field(text: &str, name: &str) -> String {
    let pat = format!("\"{name}\":\"");
    let i = text
        .find(&pat)
        .unwrap_or_else(|| panic!("{name} in {text}"))
        + pat.len();
    text[i..].split('"').next().unwrap().to_string()
}

/// The body of `GET /metrics` over a unix socket (retried until it is up).
fn scrape(sock: &Path) -> String {
    let until = Instant::now() + WAIT;
    loop {
        if let Ok(mut s) = UnixStream::connect(sock) {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            if s.read_to_string(&mut out).is_ok() && out.starts_with("HTTP/1.1 200") {
                if let Some((_, body)) = out.split_once("\r\n\r\n") {
                    return body.to_string();
                }
            }
        }
        assert!(Instant::now() < until, "no /metrics on {}", sock.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of the sample line that starts with `series` (exactly up to the space).
fn sample(doc: &str, series: &str) -> Option<f64> {
    doc.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn mcp_call(addr: &str, tunnel: &str, key: &str) -> (u16, String) {
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "POST /v1/mcp/{tunnel} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, out.split_once("\r\n\r\n").unwrap().1.to_string())
}

fn temp_dir() -> PathBuf {
    // Short: unix socket paths are limited to 107 bytes.
    let d = std::env::temp_dir().join(format!("mto-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn tunnel_call_moves_relay_and_agent_metrics() {
    let dir = temp_dir();
    let state = dir.join("state");
    let out = Command::new(BIN)
        .args(["relay", "init", "--state", state.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let init = String::from_utf8(out.stdout).unwrap();
    let (tunnel, runtime, connector) = (
        json_field(&init, "tunnel_id"),
        json_field(&init, "runtime_key"),
        json_field(&init, "connector_key"),
    );

    let relay_metrics = dir.join("relay.sock");
    let relay_log = dir.join("relay.log");
    let relay_pid = dir.join("relay.pid");
    let mut relay = Command::new(BIN)
        .args([
            "relay",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--state")
        .arg(&state)
        .arg("--metrics-listen")
        .arg(format!("unix:{}", relay_metrics.display()))
        .arg("--log-file")
        .arg(&relay_log)
        .arg("--pid-file")
        .arg(&relay_pid)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = relay.stdout.take().unwrap();
    let mut relay = Proc(relay);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let relay_addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    wait_for("relay pid file", || {
        std::fs::read_to_string(&relay_pid).is_ok()
    });
    assert_eq!(
        std::fs::read_to_string(&relay_pid).unwrap(),
        format!("{}\n", relay.0.id())
    );

    let mcp = spawn_server(|_req, stream| {
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hi"}]}}"#,
        )
    });
    let agent_metrics = dir.join("agent.sock");
    let agent = Command::new(BIN)
        .arg("agent")
        .env_clear()
        .env("CONTROL_PLANE_BASE_URL", format!("http://{relay_addr}"))
        .env("CONTROL_PLANE_TUNNEL_ID", &tunnel)
        .env("CONTROL_PLANE_API_KEY", &runtime)
        .env("MCP_SERVER_URL", format!("http://{mcp}/mcp"))
        .env("CONTROL_PLANE_POLL_TIMEOUT", "1s")
        .env(
            "HEALTH_LISTEN_ADDR",
            format!("unix:{}", agent_metrics.display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut agent = Proc(agent);

    // The agent counts as connected once it polled.
    wait_for("agent connected", || {
        let doc = scrape(&relay_metrics);
        sample(
            &doc,
            &format!("mcp_tunnel_relay_connected_agents{{tunnel=\"{tunnel}\"}}"),
        ) == Some(1.0)
    });
    let (status, body) = mcp_call(&relay_addr, &tunnel, &connector);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"text\":\"hi\""), "{body}");

    let relay_doc = scrape(&relay_metrics);
    assert_eq!(
        sample(
            &relay_doc,
            "mcp_tunnel_relay_requests_total{endpoint=\"connector\",status=\"200\",code=\"\"}"
        ),
        Some(1.0),
        "{relay_doc}"
    );
    assert_eq!(
        sample(
            &relay_doc,
            "mcp_tunnel_relay_request_duration_seconds_count"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&relay_doc, "mcp_tunnel_relay_commands_enqueued_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &relay_doc,
            &format!("mcp_tunnel_relay_queue_depth{{tunnel=\"{tunnel}\"}}")
        ),
        Some(0.0)
    );
    assert!(relay_doc.contains("mcp_tunnel_build_info{version=\""));
    wait_for("agent counted the answered command", || {
        sample(
            &scrape(&agent_metrics),
            "mcp_tunnel_agent_commands_total{type=\"request\",channel=\"main\",outcome=\"answered\"}",
        ) == Some(1.0)
    });

    // logrotate for the relay: rename, SIGHUP, new lines at the old path.
    let rotated = dir.join("relay.log.1");
    std::fs::rename(&relay_log, &rotated).unwrap();
    relay.signal("-HUP");
    wait_for("relay log reopened", || {
        std::fs::read_to_string(&relay_log).is_ok_and(|t| t.contains("log file reopened"))
    });

    agent.signal("-TERM");
    assert_eq!(agent.wait_exit(), 0);
    assert!(!agent_metrics.exists(), "agent removed its health socket");
    relay.signal("-TERM");
    assert_eq!(relay.wait_exit(), 0);
    assert!(
        !relay_pid.exists(),
        "relay pid file removed on a clean exit"
    );
    assert!(!relay_metrics.exists(), "relay removed its metrics socket");
    for f in [&relay_log, &rotated] {
        let text = std::fs::read_to_string(f).unwrap();
        for secret in [&runtime, &connector] {
            assert!(!text.contains(secret.as_str()), "a key in {}", f.display());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
