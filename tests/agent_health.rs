//! /healthz and /readyz of a running agent.

mod agent_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use agent_support::*;

/// (status, body) of a GET, retried until the listener is up.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let until = Instant::now() + WAIT;
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut out = String::new();
            if s.read_to_string(&mut out).is_ok() && !out.is_empty() {
                let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
                let body = out
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b.to_string())
                    .unwrap_or_default();
                return (status, body);
            }
        }
        assert!(Instant::now() < until, "health listener never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `path` until it answers `want` with a body containing `needle`
/// (readiness changes asynchronously).
fn wait_status(addr: SocketAddr, path: &str, want: u16, needle: &str) -> String {
    let until = Instant::now() + WAIT;
    loop {
        let (status, body) = get(addr, path);
        if status == want && body.contains(needle) {
            return body;
        }
        assert!(Instant::now() < until, "{path} stayed {status}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn readyz_waits_for_the_mcp_server_and_counts_401_as_ready() {
    let mcp =
        spawn_server(|_req, stream| respond(stream, 401, &[("WWW-Authenticate", "Bearer")], b""));
    let cp = FakeCp::start();
    let health = dead_addr();
    let h = health.to_string();
    let agent = start_agent(
        &cp,
        &format!("http://{mcp}/mcp"),
        &["--health.listen-addr", &h],
    );
    assert_eq!(get(health, "/healthz").0, 200);
    wait_status(health, "/readyz", 200, "ready");
    assert_eq!(agent.stop(), 0);
}

#[test]
fn readyz_503_with_reason_when_unreachable_or_key_rejected() {
    let cp = FakeCp::start();
    let health = dead_addr();
    let h = health.to_string();
    let agent = start_agent(
        &cp,
        &format!("http://{}/mcp", dead_addr()),
        &["--health.listen-addr", &h],
    );
    wait_status(health, "/readyz", 503, "MCP server");
    assert_eq!(agent.stop(), 0);

    let mcp = spawn_server(|_req, stream| {
        respond(stream, 200, &[("Content-Type", "application/json")], b"{}")
    });
    let cp = FakeCp::start();
    cp.with(|s| s.poll_status = Some(403));
    let health = dead_addr();
    let h = health.to_string();
    let agent = start_agent(
        &cp,
        &format!("http://{mcp}/mcp"),
        &["--health.listen-addr", &h],
    );
    cp.wait_polls(1);
    wait_status(health, "/readyz", 503, "403");
    assert_eq!(agent.stop(), 0);
}

/// --mcp.startup-wait-timeout: exit 1 when the server never answers.
#[test]
fn startup_wait_gives_up_with_exit_1() {
    let cp = FakeCp::start();
    let agent = start_agent(
        &cp,
        &format!("http://{}/mcp", dead_addr()),
        &["--mcp.startup-wait-timeout", "300ms"],
    );
    assert_eq!(agent.wait_exit(WAIT), Some(1));
    assert_eq!(cp.poll_count(), 0, "no polling before the MCP server is up");
}

/// An MCP server that can be taken down (its port closed) and brought back
/// on the same port.
struct Flaky {
    addr: SocketAddr,
    up: Option<(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<()>,
    )>,
}

impl Flaky {
    fn start() -> Flaky {
        let mut f = Flaky {
            addr: dead_addr(),
            up: None,
        };
        f.bring_up();
        f
    }

    fn bring_up(&mut self) {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind(self.addr).expect("rebind the MCP port");
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        if let Some(req) = read_request(&mut s) {
                            // Answer with the request's id (probes and calls alike).
                            let body = req.body_str();
                            let id = body
                                .split("\"id\":")
                                .nth(1)
                                .and_then(|r| r.split([',', '}']).next())
                                .unwrap_or("null");
                            let answer = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#);
                            let json = [("Content-Type", "application/json")];
                            respond(&mut s, 200, &json, answer.as_bytes());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        self.up = Some((stop, thread));
    }

    /// Closes the port: later connections are refused.
    fn take_down(&mut self) {
        if let Some((stop, thread)) = self.up.take() {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            thread.join().unwrap();
        }
    }
}

#[test]
fn readyz_goes_back_to_503_when_the_mcp_server_goes_away_and_recovers_with_it() {
    let mut mcp = Flaky::start();
    let cp = FakeCp::start();
    let health = dead_addr();
    let h = health.to_string();
    let agent = start_agent(
        &cp,
        &format!("http://{}/mcp", mcp.addr),
        &["--health.listen-addr", &h],
    );
    wait_status(health, "/readyz", 200, "ready");

    // The server goes away: the next command cannot connect, and readiness says so.
    mcp.take_down();
    cp.push_batch(&[jsonrpc_command("r-1", &call(1), "")]);
    let posts = cp.wait_posts(1);
    assert_eq!(failure_source(&posted(&posts[0])), "connect");
    wait_status(health, "/readyz", 503, "MCP server unreachable");

    // Back on the same port: the next command is served and readiness returns.
    mcp.bring_up();
    cp.push_batch(&[jsonrpc_command("r-2", &call(2), "")]);
    let posts = cp.wait_posts(2);
    let p = posted(&posts[1]);
    assert_eq!(
        p.resp_code,
        200,
        "{:?}",
        String::from_utf8_lossy(p.resp_json.as_deref().unwrap_or_default())
    );
    wait_status(health, "/readyz", 200, "ready");
    assert_eq!(agent.stop(), 0);
}
