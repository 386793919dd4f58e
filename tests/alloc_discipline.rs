//! Allocation discipline of the whole tunnel path (issue 7), measured with a
//! counting global allocator: relay, agent, an MCP stand-in and the client
//! all run in this process over loopback.
//!
//! - Steady state: the bytes and allocations per command over a window of
//!   commands do not grow with the number of commands served before it.
//! - Bursts: once warm-up bursts have started every worker thread and pooled
//!   connection (both are created on demand, up to their caps), the heap still
//!   in use after a burst of concurrent commands is no larger than after the
//!   one before: nothing accumulates.
//!
//! A measurement, not a timed test: it asserts counts, never durations.
//! Ignored by default because it wants the machine to itself for a few
//! seconds; `make bench-alloc` runs it and prints the figures.
#![cfg(all(feature = "relay", feature = "agent"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use mcp_tunnel::agent::config::{self, Parsed};
use mcp_tunnel::agent::runtime::{self, RunOptions};
use mcp_tunnel::ops::shutdown::Shutdown;
use mcp_tunnel::relay::cli::{main_to, ServeConfig};
use mcp_tunnel::relay::server::Server;

struct Counting;

static BYTES: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        COUNT.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        BYTES.fetch_add(new as u64, Ordering::Relaxed);
        COUNT.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}}"#;
const RESULT: &str =
    r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}"#;

/// A keep-alive MCP stand-in answering every POST with the same result.
fn mcp_stand_in() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || serve_fixed(conn, RESULT));
        }
    });
    addr
}

fn serve_fixed(conn: TcpStream, body: &str) {
    let _ = conn.set_nodelay(true);
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut line = String::new();
    let mut discard = vec![0u8; 64 * 1024];
    loop {
        let mut len = 0usize;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line
                .to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
            {
                len = v.parse().unwrap_or(0);
            }
        }
        if reader.read_exact(&mut discard[..len]).is_err() {
            return;
        }
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// One keep-alive client connection to the relay's MCP endpoint.
struct Client {
    reader: BufReader<TcpStream>,
    request: Vec<u8>,
    line: String,
    body: Vec<u8>,
}

impl Client {
    fn new(relay: SocketAddr, tunnel: &str, key: &str) -> Client {
        let s = TcpStream::connect(relay).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let request = format!(
            "POST /v1/mcp/{tunnel} HTTP/1.1\r\nHost: {relay}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        Client {
            reader: BufReader::new(s),
            request: request.into_bytes(),
            line: String::with_capacity(256),
            body: vec![0; 4096],
        }
    }

    /// Sends one command; returns the HTTP status.
    fn call(&mut self) -> u16 {
        self.reader.get_mut().write_all(&self.request).unwrap();
        let mut status = 0;
        let mut len = 0usize;
        loop {
            self.line.clear();
            assert!(
                self.reader.read_line(&mut self.line).unwrap() > 0,
                "relay closed"
            );
            if status == 0 {
                status = self.line[9..12].parse().unwrap();
                continue;
            }
            if self.line == "\r\n" {
                break;
            }
            if self.line.len() > 15 && self.line[..15].eq_ignore_ascii_case("content-length:") {
                len = self.line[15..].trim().parse().unwrap();
            }
        }
        self.reader.read_exact(&mut self.body[..len]).unwrap();
        status
    }

    fn calls(&mut self, n: usize) {
        for _ in 0..n {
            assert_eq!(self.call(), 200);
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Counts {
    bytes: u64,
    count: u64,
}

fn counts() -> Counts {
    Counts {
        bytes: BYTES.load(Ordering::SeqCst),
        count: COUNT.load(Ordering::SeqCst),
    }
}

/// Bytes and allocations per command over `n` commands.
fn window(client: &mut Client, n: usize) -> (f64, f64) {
    let a = counts();
    client.calls(n);
    let b = counts();
    (
        (b.bytes - a.bytes) as f64 / n as f64,
        (b.count - a.count) as f64 / n as f64,
    )
}

fn burst(relay: SocketAddr, tunnel: &str, key: &str, clients: usize, each: usize) {
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (tunnel, key) = (tunnel.to_string(), key.to_string());
            thread::spawn(move || Client::new(relay, &tunnel, &key).calls(each))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

fn tmpdir() -> PathBuf {
    std::env::temp_dir().join(format!("mcp-tunnel-alloc-{}", std::process::id()))
}

fn field(json: &str, name: &str) -> String {
    let pat = format!("\"{name}\":\"");
    let start = json.find(&pat).unwrap() + pat.len();
    json[start..].split('"').next().unwrap().to_string()
}

#[test]
#[ignore = "a measurement: run with `make bench-alloc` (--ignored --nocapture)"]
fn bytes_per_command_do_not_grow_and_bursts_leave_nothing_behind() {
    let dir = tmpdir();
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = Vec::new();
    let args = ["init", "--state", dir.to_str().unwrap()];
    assert_eq!(main_to(args.iter().map(Into::into).collect(), &mut out), 0);
    let init = String::from_utf8(out).unwrap();
    let (tunnel, runtime_key, connector_key) = (
        field(&init, "tunnel_id"),
        field(&init, "runtime_key"),
        field(&init, "connector_key"),
    );

    let relay_shutdown = Shutdown::new();
    let (tx, rx) = mpsc::channel();
    let sd = relay_shutdown.clone();
    let cfg = ServeConfig::new(dir.clone(), "127.0.0.1:0".parse().unwrap());
    let relay_thread = thread::spawn(move || {
        let server = Server::bind(cfg).expect("relay binds");
        tx.send(server.local_addr().unwrap()).unwrap();
        server.run(sd, false).expect("relay runs");
    });
    let relay = rx.recv_timeout(Duration::from_secs(15)).unwrap();
    let mcp = mcp_stand_in();

    let args: Vec<OsString> = [
        "--control-plane.base-url",
        &format!("http://{relay}"),
        "--control-plane.tunnel-id",
        &tunnel,
        "--control-plane.api-key",
        &runtime_key,
        "--mcp.server-url",
        &format!("http://{mcp}/mcp"),
        "--health.listen-addr",
        "off",
        "--log.level",
        "warn",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let Parsed::Run(cfg) = config::parse(args, &|_| None).unwrap() else {
        panic!("agent config")
    };
    let agent_shutdown = Shutdown::new();
    let sd = agent_shutdown.clone();
    let agent_thread = thread::spawn(move || {
        runtime::run(
            *cfg,
            sd,
            RunOptions {
                signals: false,
                readiness: None,
            },
        )
    });

    let mut client = Client::new(relay, &tunnel, &connector_key);
    // Until the agent's first poll arrives the relay answers 503.
    let mut tries = 0;
    while client.call() != 200 {
        tries += 1;
        assert!(tries < 500, "the agent never connected");
        thread::sleep(Duration::from_millis(20));
    }
    client.calls(200);

    let (early_bytes, early_count) = window(&mut client, 500);
    client.calls(2000);
    let (late_bytes, late_count) = window(&mut client, 500);
    eprintln!(
        "per command, whole path (client, relay, agent, MCP stand-in): \
         after 200 commands {early_bytes:.0} bytes in {early_count:.1} allocations; \
         after 2,700 commands {late_bytes:.0} bytes in {late_count:.1} allocations"
    );
    // Room for the relay's periodic state check landing in one window only.
    assert!(
        late_bytes <= early_bytes * 1.05 + 256.0,
        "bytes per command grew: {early_bytes:.0} -> {late_bytes:.0}"
    );
    assert!(
        late_count <= early_count * 1.05 + 2.0,
        "allocations per command grew: {early_count:.1} -> {late_count:.1}"
    );

    let idle = LIVE.load(Ordering::SeqCst);
    // Worker threads and pooled connections start on demand: two wide bursts
    // make every one of them exist before the bursts that are compared.
    for _ in 0..2 {
        burst(relay, &tunnel, &connector_key, 32, 50);
    }
    client.calls(20);
    let warmed = LIVE.load(Ordering::SeqCst);
    burst(relay, &tunnel, &connector_key, 16, 100);
    client.calls(20);
    let after_first = LIVE.load(Ordering::SeqCst);
    burst(relay, &tunnel, &connector_key, 16, 100);
    client.calls(20);
    let after_second = LIVE.load(Ordering::SeqCst);
    eprintln!(
        "heap in use: before the bursts {} KiB, after two warm-up bursts of 32x50 {} KiB, \
         after a burst of 16x100 commands {} KiB, after another {} KiB",
        idle / 1024,
        warmed / 1024,
        after_first / 1024,
        after_second / 1024
    );
    assert!(
        after_second <= after_first + 64 * 1024,
        "memory kept growing across bursts: {after_first} -> {after_second} bytes"
    );

    drop(client);
    agent_shutdown.trigger();
    assert_eq!(agent_thread.join().unwrap(), 0);
    relay_shutdown.trigger();
    relay_thread.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
