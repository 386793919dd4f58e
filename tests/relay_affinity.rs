//! Process affinity through the relay with real agents: two agent processes
//! poll one tunnel and both run a stdio MCP server on channel `fs`; every call
//! to `/v1/mcp/{tunnel}/fs` must reach the same child process, while an HTTP
//! channel on the same tunnel is served alongside. When the owning agent
//! stops, the other one takes the channel over.
#![cfg(all(feature = "relay", feature = "agent"))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mcp_tunnel::ops::shutdown::Shutdown;
use mcp_tunnel::relay::cli::{main_to, ServeConfig};
use mcp_tunnel::relay::server::Server;
use miniserde::json::{self, Value};

const WAIT: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_mcp-tunnel");
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/fake_stdio_server.py"
);

struct Relay {
    addr: SocketAddr,
    dir: PathBuf,
    tunnel: String,
    runtime: String,
    connector: String,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
}

fn field(v: &Value, key: &str) -> String {
    match v {
        Value::Object(o) => match o.get(key) {
            Some(Value::String(s)) => s.clone(),
            _ => panic!("no {key}"),
        },
        _ => panic!("not an object"),
    }
}

impl Relay {
    fn start(liveness: Duration) -> Relay {
        let dir = std::env::temp_dir().join(format!(
            "mcp-tunnel-affinity-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        let mut out = Vec::new();
        let code = main_to(
            vec!["init".into(), "--state".into(), dir.clone().into()],
            &mut out,
        );
        assert_eq!(code, 0);
        let v: Value = json::from_str(String::from_utf8(out).unwrap().trim()).unwrap();
        let mut cfg = ServeConfig::new(dir.clone(), "127.0.0.1:0".parse().unwrap());
        cfg.drain_timeout = Duration::from_millis(200);
        cfg.agent_liveness = liveness;
        let shutdown = Shutdown::new();
        let (tx, rx) = mpsc::channel();
        let sd = shutdown.clone();
        let thread = thread::spawn(move || {
            let server = Server::bind(cfg).expect("relay binds");
            tx.send(server.local_addr().unwrap()).unwrap();
            server.run(sd, false).expect("relay runs");
        });
        Relay {
            addr: rx.recv_timeout(WAIT).unwrap(),
            tunnel: field(&v, "tunnel_id"),
            runtime: field(&v, "runtime_key"),
            connector: field(&v, "connector_key"),
            dir,
            shutdown,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An agent process; SIGTERM-free stop: kill and reap (its children are
/// killed by their own process group below).
struct Agent(std::process::Child);

impl Agent {
    fn start(relay: &Relay, http_mcp: SocketAddr) -> Agent {
        let child = std::process::Command::new(BIN)
            .args([
                "agent",
                "--control-plane.base-url",
                &relay.url(),
                "--control-plane.tunnel-id",
                &relay.tunnel,
                "--control-plane.api-key",
                &relay.runtime,
                "--control-plane.poll-timeout",
                "1s",
                "--mcp.command",
                &format!("channel=fs,command=python3 -u '{SCRIPT}' normal"),
                "--mcp.server-url",
                &format!("channel=web,url=http://{http_mcp}/mcp"),
                "--health.listen-addr",
                "off",
                "--log.level",
                "warn",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn agent");
        Agent(child)
    }

    /// SIGTERM (the agent stops its stdio child), then wait.
    fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let until = Instant::now() + WAIT;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("agent did not stop");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let _ = self.0.wait();
        }
    }
}

/// A JSON MCP server for the HTTP channel.
fn http_mcp() -> SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&buf[head_end..]).to_string();
                let id = req
                    .split("\"id\":")
                    .nth(1)
                    .and_then(|r| r.split(',').next())
                    .unwrap_or("null")
                    .to_string();
                let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"from":"http"}}}}"#);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(body.as_bytes());
            });
        }
    });
    addr
}

fn post(relay: &Relay, channel: &str, body: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .into();
    let url = format!("{}/v1/mcp/{}/{channel}", relay.url(), relay.tunnel);
    let mut r = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {}", relay.connector))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .send(body.as_bytes())
        .expect("HTTP exchange");
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

fn echo(id: u32) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{}}}}}}"#
    )
}

fn pid_in(text: &str) -> u32 {
    let i = text
        .find("\"pid\": ")
        .unwrap_or_else(|| panic!("no pid: {text}"))
        + 7;
    text[i..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_stdio_channel_stays_on_one_agent_and_moves_when_it_stops() {
    let relay = Relay::start(Duration::from_secs(2));
    let web = http_mcp();
    let a = Agent::start(&relay, web);
    let b = Agent::start(&relay, web);
    // Both connected: wait until each answered an HTTP-channel call at least
    // once is not observable, so wait for the stdio channel to answer.
    let until = Instant::now() + WAIT;
    let first = loop {
        let (status, text) = post(&relay, "fs", &echo(1));
        if status == 200 {
            break pid_in(&text);
        }
        assert!(
            Instant::now() < until,
            "no agent connected: {status} {text}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    // Let the second agent's polls be parked at the relay too.
    thread::sleep(Duration::from_millis(1500));
    for i in 2..12 {
        let (status, text) = post(&relay, "fs", &echo(i));
        assert_eq!(status, 200, "{text}");
        assert_eq!(
            pid_in(&text),
            first,
            "call {i} reached another stdio process"
        );
        let (status, text) = post(&relay, "web", &echo(i));
        assert_eq!(
            (status, text.contains("\"from\":\"http\"")),
            (200, true),
            "{text}"
        );
    }
    // Calls in parallel on both channels.
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let url = relay.url();
            let (tunnel, key) = (relay.tunnel.clone(), relay.connector.clone());
            let channel = if i % 2 == 0 { "fs" } else { "web" };
            thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(WAIT))
                    .build()
                    .into();
                let mut r = agent
                    .post(&format!("{url}/v1/mcp/{tunnel}/{channel}"))
                    .header("Authorization", &format!("Bearer {key}"))
                    .header("Content-Type", "application/json")
                    .header("Accept", "application/json")
                    .send(echo(100 + i).as_bytes())
                    .unwrap();
                (
                    channel,
                    r.status().as_u16(),
                    r.body_mut().read_to_string().unwrap(),
                )
            })
        })
        .collect();
    for h in handles {
        let (channel, status, text) = h.join().unwrap();
        assert_eq!(status, 200, "{channel}: {text}");
        if channel == "fs" {
            assert_eq!(pid_in(&text), first);
        }
    }

    // Stop whichever agent owns fs; the other takes over once it is gone.
    let (owner, other) = if is_child_of(first, &a) {
        (a, b)
    } else {
        (b, a)
    };
    owner.stop();
    let until = Instant::now() + WAIT;
    let next = loop {
        let (status, text) = post(&relay, "fs", &echo(50));
        if status == 200 {
            break pid_in(&text);
        }
        assert!(Instant::now() < until, "no handover: {status} {text}");
        thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(next, first);
    assert!(is_child_of(next, &other));
    other.stop();
}

fn is_child_of(pid: u32, agent: &Agent) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ppid = stat
        .rfind(')')
        .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    ppid == Some(agent.0.id())
}
