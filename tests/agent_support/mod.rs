//! Test-only fakes for the agent suites: a control plane and MCP servers
//! written as raw HTTP/1.1 over std TcpListener threads (loopback, port 0).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mcp_tunnel::agent::config::{self, Parsed};
use mcp_tunnel::agent::readiness::Readiness;
use mcp_tunnel::agent::runtime::{self, RunOptions};
use mcp_tunnel::ops::shutdown::Shutdown;

/// Long enough for a loaded CI machine, short enough to fail fast.
pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn read_request(stream: &mut TcpStream) -> Option<Req> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Req {
        method,
        target,
        headers,
        body,
        at: Instant::now(),
    })
}

/// Serves one request per connection; `handler` writes the whole reply.
pub fn spawn_server(handler: impl Fn(Req, &mut TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let handler = handler.clone();
            thread::spawn(move || {
                if let Some(req) = read_request(&mut stream) {
                    handler(req, &mut stream);
                }
            });
        }
    });
    addr
}

pub fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

/// Starts an SSE response (close-delimited body).
pub fn sse_head(stream: &mut TcpStream, extra: &[(&str, &str)]) {
    let mut out =
        String::from("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n");
    for (n, v) in extra {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.flush();
}

pub fn sse_event(stream: &mut TcpStream, data: &str) -> bool {
    let ok = stream
        .write_all(format!("event: message\ndata: {data}\n\n").as_bytes())
        .is_ok();
    let _ = stream.flush();
    ok
}

// ---------------------------------------------------------------- control plane

#[derive(Default)]
pub struct CpState {
    pub batches: VecDeque<Vec<u8>>,
    pub polls: Vec<Req>,
    pub posts: Vec<Req>,
    pub metadata: Vec<Req>,
    /// When set, every poll gets this status and an error body.
    pub poll_status: Option<u16>,
    /// Replies for the next posts (status, headers); then 200.
    pub post_replies: VecDeque<(u16, Vec<(String, String)>)>,
}

#[derive(Clone)]
pub struct FakeCp {
    pub addr: SocketAddr,
    pub state: Arc<(Mutex<CpState>, Condvar)>,
}

impl FakeCp {
    pub fn start() -> FakeCp {
        let state: Arc<(Mutex<CpState>, Condvar)> = Arc::default();
        let st = state.clone();
        let addr = spawn_server(move |req, stream| {
            let (lock, cv) = &*st;
            let path = req.path().to_string();
            if req.method == "GET" && path.ends_with("/poll") {
                let mut s = lock.lock().unwrap();
                s.polls.push(req);
                cv.notify_all();
                if let Some(status) = s.poll_status {
                    drop(s);
                    let body = br#"{"error":{"code":"invalid_api_key","message":"no"}}"#;
                    respond(
                        stream,
                        status,
                        &[("Content-Type", "application/json")],
                        body,
                    );
                    return;
                }
                if s.batches.is_empty() {
                    s = cv.wait_timeout(s, Duration::from_millis(150)).unwrap().0;
                }
                match s.batches.pop_front() {
                    Some(b) => {
                        drop(s);
                        respond(stream, 200, &[("Content-Type", "application/json")], &b);
                    }
                    None => {
                        drop(s);
                        respond(stream, 204, &[], b"");
                    }
                }
            } else if req.method == "POST" && path.ends_with("/response") {
                let mut s = lock.lock().unwrap();
                s.posts.push(req);
                let (status, headers) = s.post_replies.pop_front().unwrap_or((200, Vec::new()));
                cv.notify_all();
                drop(s);
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(a, b)| (a.as_str(), b.as_str()))
                    .collect();
                let body: &[u8] = if status == 200 {
                    br#"{"status":"ok"}"#
                } else {
                    br#"{"error":{"code":"pending_request_not_found","message":"x"}}"#
                };
                respond(stream, status, &h, body);
            } else if req.method == "GET" && path.starts_with("/v1/tunnels/") {
                lock.lock().unwrap().metadata.push(req);
                respond(
                    stream,
                    200,
                    &[],
                    br#"{"id":"tunnel_test","name":"t","description":""}"#,
                );
            } else {
                respond(stream, 404, &[], b"");
            }
        });
        FakeCp { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push_batch(&self, commands: &[String]) {
        let body = format!("{{\"commands\":[{}]}}", commands.join(","));
        self.push_raw(body.into_bytes());
    }

    pub fn push_raw(&self, body: Vec<u8>) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap().batches.push_back(body);
        cv.notify_all();
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut CpState) -> T) -> T {
        f(&mut self.state.0.lock().unwrap())
    }

    pub fn posts(&self) -> Vec<Req> {
        self.with(|s| s.posts.clone())
    }

    pub fn poll_count(&self) -> usize {
        self.with(|s| s.polls.len())
    }

    /// Waits until at least `n` posts arrived; panics after WAIT.
    pub fn wait_posts(&self, n: usize) -> Vec<Req> {
        let (lock, cv) = &*self.state;
        let until = Instant::now() + WAIT;
        let mut s = lock.lock().unwrap();
        while s.posts.len() < n {
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {n} posts, got {}",
                s.posts.len()
            );
            s = cv.wait_timeout(s, left).unwrap().0;
        }
        s.posts.clone()
    }

    pub fn wait_polls(&self, n: usize) {
        let (lock, cv) = &*self.state;
        let until = Instant::now() + WAIT;
        let mut s = lock.lock().unwrap();
        while s.polls.len() < n {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {n} polls");
            s = cv.wait_timeout(s, left).unwrap().0;
        }
    }
}

// ---------------------------------------------------------------- commands

pub fn jsonrpc_command(id: &str, jsonrpc: &str, extra: &str) -> String {
    let headers = if extra.contains("\"headers\"") {
        ""
    } else {
        r#","headers":{}"#
    };
    format!(
        r#"{{"request_id":"{id}","shard_token":"shard-{id}","command_type":"jsonrpc","channel":"main","created_at":"2026-01-01T00:00:00Z","jsonrpc":{jsonrpc}{headers}{extra}}}"#
    )
}

/// The command addressed to `channel` instead of `main`.
pub fn on(channel: &str, command: String) -> String {
    command.replacen(
        "\"channel\":\"main\"",
        &format!("\"channel\":\"{channel}\""),
        1,
    )
}

pub fn call(id: u32) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{}}}}}}"#
    )
}

// ---------------------------------------------------------------- posted bodies

/// The fields of a posted response body the tests look at.
pub struct Posted {
    pub request_id: String,
    pub resp_type: String,
    pub resp_code: u64,
    pub resp_json: Option<Vec<u8>>,
    pub raw: Vec<u8>,
}

pub fn posted(req: &Req) -> Posted {
    use mcp_tunnel::proto::json::{object_members, parse_string, parse_u64, Limits};
    let body = &req.body;
    let members = object_members(body, &Limits::default()).expect("post body is a JSON object");
    let get = |k: &str| {
        members
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, r)| &body[r.clone()])
    };
    Posted {
        request_id: parse_string(get("request_id").expect("request_id")).unwrap(),
        resp_type: get("resp_type")
            .map(|v| parse_string(v).unwrap())
            .unwrap_or_else(|| "jsonrpc_response".into()),
        resp_code: parse_u64(get("resp_code").expect("resp_code")).unwrap(),
        resp_json: get("resp_json").map(<[u8]>::to_vec),
        raw: body.clone(),
    }
}

/// `"source":"…"` of a synthesized failure.
pub fn failure_source(p: &Posted) -> String {
    let json = String::from_utf8(p.resp_json.clone().expect("resp_json")).unwrap();
    assert!(json.contains("\"code\":-32603"), "{json}");
    let i = json.find("\"source\":\"").expect("tunnel_failure.source") + 10;
    json[i..].split('"').next().unwrap().to_string()
}

// ---------------------------------------------------------------- the agent

pub struct RunningAgent {
    pub shutdown: Shutdown,
    pub readiness: Arc<Readiness>,
    exit: mpsc::Receiver<i32>,
}

pub fn init_log() {
    if std::env::var_os("AGENT_TEST_LOG").is_some() {
        mcp_tunnel::ops::log::init(
            log::LevelFilter::Debug,
            mcp_tunnel::ops::log::LogFormat::Text,
        );
    }
}

pub fn start_agent(cp: &FakeCp, mcp_url: &str, extra: &[&str]) -> RunningAgent {
    let mut all = vec!["--mcp.server-url", mcp_url];
    all.extend_from_slice(extra);
    start_agent_with(cp, &all)
}

/// Like `start_agent`, with the MCP targets (`--mcp.server-url` / `--mcp.command`) in `extra`.
pub fn start_agent_with(cp: &FakeCp, extra: &[&str]) -> RunningAgent {
    init_log();
    let mut args: Vec<OsString> = [
        "--control-plane.base-url",
        &cp.url(),
        "--control-plane.tunnel-id",
        "tunnel_test",
        "--control-plane.api-key",
        "sk-test-key",
        "--control-plane.poll-timeout",
        "1s",
        "--health.listen-addr",
        "off",
        "--shutdown.drain-timeout",
        "5s",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.extend(extra.iter().map(OsString::from));
    let cfg = match config::parse(args, &|_| None).expect("valid test config") {
        Parsed::Run(c) => *c,
        Parsed::Help => unreachable!(),
    };
    let shutdown = Shutdown::new();
    let readiness = Arc::new(Readiness::new());
    let (tx, exit) = mpsc::channel();
    let s = shutdown.clone();
    let r = readiness.clone();
    thread::spawn(move || {
        let code = runtime::run(
            cfg,
            s,
            RunOptions {
                signals: false,
                readiness: Some(r),
            },
        );
        let _ = tx.send(code);
    });
    RunningAgent {
        shutdown,
        readiness,
        exit,
    }
}

/// Waits (bounded) until readiness gives a reason containing `want`.
pub fn wait_reason(agent: &RunningAgent, want: &str) -> String {
    let until = Instant::now() + WAIT;
    loop {
        let reason = agent.readiness.not_ready_reason().unwrap_or_default();
        if reason.contains(want) || Instant::now() > until {
            return reason;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

impl RunningAgent {
    /// Triggers the graceful stop and returns the exit code.
    pub fn stop(self) -> i32 {
        self.shutdown.trigger();
        self.exit
            .recv_timeout(WAIT)
            .expect("agent stops after shutdown")
    }

    pub fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        self.exit.recv_timeout(timeout).ok()
    }
}

/// An address nothing listens on (bound then released).
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}
