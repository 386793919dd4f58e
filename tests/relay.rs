//! The relay end to end over real loopback sockets: a fake agent (poll and
//! response posts over HTTP) and connector clients (ureq and raw sockets)
//! against a relay started in-process on 127.0.0.1:0.
//!
//! Waits are bounded by `WAIT` only to turn a hang into a failure; no test
//! asserts a duration.
#![cfg(feature = "relay")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mcp_tunnel::ops::shutdown::Shutdown;
use mcp_tunnel::proto::command::{decode_poll, Command, CommandKind, Decoded, PollLimits};
use mcp_tunnel::relay::cli::{main_to, ServeConfig};
use mcp_tunnel::relay::server::Server;
use miniserde::json::{self, Value};

const WAIT: Duration = Duration::from_secs(15);

fn tmpdir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::env::temp_dir().join(format!(
        "mcp-tunnel-relay-it-{}-{n}-{nanos}",
        std::process::id()
    ))
}

fn cli(args: &[&str]) -> (i32, String) {
    let mut out = Vec::new();
    let code = main_to(args.iter().map(Into::into).collect(), &mut out);
    (code, String::from_utf8(out).unwrap())
}

fn field(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        match cur {
            Value::Object(o) => cur = o.get(*p)?,
            _ => return None,
        }
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn parse(text: &str) -> Value {
    json::from_str(text.trim()).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

struct Relay {
    addr: SocketAddr,
    dir: PathBuf,
    tunnel: String,
    org: String,
    runtime: String,
    connector: String,
    audit: PathBuf,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn start() -> Relay {
        Relay::start_with(|_| {})
    }

    fn start_with(tweak: impl FnOnce(&mut ServeConfig)) -> Relay {
        let dir = tmpdir();
        let d = dir.to_str().unwrap();
        let (code, out) = cli(&["init", "--state", d]);
        assert_eq!(code, 0);
        let v = parse(&out);
        let audit = dir.join("audit.log");
        let mut cfg = ServeConfig::new(dir.clone(), "127.0.0.1:0".parse().unwrap());
        cfg.audit_log = Some(audit.clone());
        cfg.drain_timeout = Duration::from_millis(200);
        tweak(&mut cfg);
        let shutdown = Shutdown::new();
        let (tx, rx) = mpsc::channel();
        let sd = shutdown.clone();
        let thread = thread::spawn(move || {
            let server = Server::bind(cfg).expect("relay binds");
            tx.send(server.local_addr().unwrap()).unwrap();
            server.run(sd, false).expect("relay runs");
        });
        let addr = rx.recv_timeout(WAIT).expect("relay started");
        Relay {
            addr,
            tunnel: field(&v, &["tunnel_id"]).unwrap(),
            org: field(&v, &["org_id"]).unwrap(),
            runtime: field(&v, &["runtime_key"]).unwrap(),
            connector: field(&v, &["connector_key"]).unwrap(),
            dir,
            audit,
            shutdown,
            thread: Some(thread),
        }
    }

    fn state(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn mcp_url(&self) -> String {
        self.url(&format!("/v1/mcp/{}", self.tunnel))
    }

    fn agent(&self) -> FakeAgent {
        FakeAgent {
            base: self.url(""),
            tunnel: self.tunnel.clone(),
            key: self.runtime.clone(),
            instance: "fake-agent-1".into(),
        }
    }

    fn audit_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
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

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn code(&self) -> Option<String> {
        json::from_str::<Value>(&self.text())
            .ok()
            .and_then(|v| field(&v, &["error", "code"]))
    }

    /// (status, error code) — the pair every error test pins.
    fn err(&self) -> (u16, Option<String>) {
        (self.status, self.code())
    }
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT * 2))
        .build()
        .into()
}

fn call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let mut b = http::Request::builder().method(method).uri(url);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let agent = http_agent();
    let mut r = match body {
        Some(body) => agent.run(b.body(body.to_vec()).unwrap()),
        None => agent.run(b.body(()).unwrap()),
    }
    .expect("HTTP exchange");
    let headers = r
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .unwrap_or_default();
    Resp {
        status,
        headers,
        body,
    }
}

/// A connector client's JSON-RPC POST with `key` as `Authorization: Bearer`.
fn mcp_post(url: &str, key: &str, body: &str) -> Resp {
    let auth = format!("Bearer {key}");
    call(
        "POST",
        url,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ],
        Some(body.as_bytes()),
    )
}

/// The same in a thread: the client blocks until the fake agent answers.
fn mcp_post_bg(url: String, key: String, body: String) -> JoinHandle<Resp> {
    thread::spawn(move || mcp_post(&url, &key, &body))
}

struct FakeAgent {
    base: String,
    tunnel: String,
    key: String,
    instance: String,
}

impl FakeAgent {
    fn auth(&self) -> String {
        format!("Bearer {}", self.key)
    }

    fn poll_raw(&self, query: &str) -> Resp {
        let url = format!("{}/v1/tunnels/{}/poll?{query}", self.base, self.tunnel);
        let auth = self.auth();
        call(
            "GET",
            &url,
            &[
                ("Authorization", &auth),
                ("X-Tunnel-Client-Instance-Id", &self.instance),
                (
                    "X-Tunnel-MCP-Server-Info",
                    r#"{"version":1,"channels":[{"name":"main"}]}"#,
                ),
            ],
            None,
        )
    }

    fn poll(&self, query: &str) -> Vec<Command> {
        let r = self.poll_raw(query);
        match r.status {
            204 => Vec::new(),
            200 => decode_poll(&r.body, &PollLimits::default())
                .expect("protocol-conformant poll body")
                .into_iter()
                .map(|d| match d {
                    Decoded::Command(c) => c,
                    Decoded::Skipped { reason, .. } => panic!("relay sent a bad command: {reason}"),
                })
                .collect(),
            s => panic!("poll answered {s}: {}", r.text()),
        }
    }

    /// Marks the agent connected without taking anything.
    fn hello(&self) {
        assert_eq!(self.poll_raw("limit=1&timeout_ms=0").status, 204);
    }

    /// Polls until `n` commands have arrived.
    fn take(&self, n: usize) -> Vec<Command> {
        self.take_by(n, 25)
    }

    /// [`FakeAgent::take`] asking for at most `limit` per poll.
    fn take_by(&self, n: usize, limit: usize) -> Vec<Command> {
        let end = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < n {
            assert!(
                Instant::now() < end,
                "only {} of {n} commands arrived",
                got.len()
            );
            got.extend(self.poll(&format!("limit={limit}&timeout_ms=1000")));
        }
        got
    }

    fn post(&self, token: Option<&str>, body: &str) -> Resp {
        let url = format!("{}/v1/tunnels/{}/response", self.base, self.tunnel);
        let auth = self.auth();
        let mut h = vec![
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        if let Some(t) = token {
            h.push(("X-Tunnel-Shard-Token", t));
        }
        call("POST", &url, &h, Some(body.as_bytes()))
    }

    fn answer(
        &self,
        c: &Command,
        resp_type: &str,
        code: u16,
        resp_json: Option<&str>,
        headers: &str,
    ) -> Resp {
        let body = format!(
            r#"{{"request_id":"{}","channel":"{}","resp_json":{},"resp_headers":{headers},"resp_code":{code},"resp_type":"{resp_type}"}}"#,
            c.request_id,
            c.channel.as_str(),
            resp_json.unwrap_or("null"),
        );
        self.post(Some(c.shard_token.as_str()), &body)
    }
}

fn jsonrpc_body(c: &Command) -> String {
    match &c.kind {
        CommandKind::JsonRpc { body } => String::from_utf8(body.clone()).unwrap(),
        CommandKind::SessionTermination => panic!("not a jsonrpc command"),
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < end, "gave up waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"sekrit-payload \u00e9 12345678901234567890"}}}"#;

#[test]
fn json_answer_round_trip() {
    let relay = Relay::start();
    let agent = relay.agent();
    agent.hello();
    let auth = format!("Bearer {}", relay.connector);
    let url = relay.mcp_url();
    let client = thread::spawn(move || {
        call(
            "POST",
            &url,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
                ("Mcp-Session-Id", "sess-1"),
                ("MCP-Protocol-Version", "2025-11-25"),
                ("X-Forwarded-For", "10.0.0.1"),
            ],
            Some(CALL.as_bytes()),
        )
    });
    let cmds = agent.take(1);
    let c = &cmds[0];
    assert!(c.request_id.starts_with("req_"));
    assert!(c.shard_token.as_str().len() >= 32);
    assert_eq!(c.channel.as_str(), "main");
    assert!(c.created_at.is_some());
    assert!(c.response_timeout.is_some_and(|t| !t.is_zero()));
    assert_eq!(jsonrpc_body(c), CALL, "payload byte for byte");
    assert_eq!(c.header("mcp-session-id"), Some("sess-1"));
    assert_eq!(c.header("mcp-protocol-version"), Some("2025-11-25"));
    assert_eq!(
        c.header("authorization"),
        None,
        "the relay key is not forwarded"
    );
    assert_eq!(c.header("x-forwarded-for"), None);
    assert_eq!(c.header("host"), None);
    let answer = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hi"}],"big":12345678901234567890}}"#;
    let r = agent.answer(
        c,
        "jsonrpc_response",
        200,
        Some(answer),
        r#"{"Content-Type":["application/json"],"Mcp-Session-Id":["sess-1"]}"#,
    );
    assert_eq!(
        (r.status, r.text()),
        (200, r#"{"status":"ok"}"#.to_string())
    );
    let r = client.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("mcp-session-id"), Some("sess-1"));
    assert_eq!(r.text(), answer);
}

#[test]
fn metadata_and_idle_poll() {
    let relay = Relay::start();
    let auth = format!("Bearer {}", relay.runtime);
    let r = call(
        "GET",
        &relay.url(&format!("/v1/tunnels/{}", relay.tunnel)),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 200);
    let v = parse(&r.text());
    assert_eq!(field(&v, &["id"]), Some(relay.tunnel.clone()));
    assert_eq!(field(&v, &["name"]), Some("default".into()));
    assert_eq!(field(&v, &["description"]), Some(String::new()));
    let r = relay.agent().poll_raw("limit=5&timeout_ms=50");
    assert_eq!((r.status, r.body.len()), (204, 0));
}

#[test]
fn poll_limit_and_bad_parameters() {
    let relay = Relay::start();
    let agent = relay.agent();
    agent.hello();
    let clients: Vec<_> = (1..=3)
        .map(|i| {
            mcp_post_bg(
                relay.mcp_url(),
                relay.connector.clone(),
                format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"ping"}}"#),
            )
        })
        .collect();
    // Wait until all three are queued: a limit=25 poll would take them all, so
    // count through limit=2 polls instead.
    let mut got = Vec::new();
    let end = Instant::now() + WAIT;
    while got.len() < 3 {
        assert!(Instant::now() < end);
        let batch = agent.poll("limit=2&timeout_ms=500");
        assert!(batch.len() <= 2, "limit honoured");
        got.extend(batch);
    }
    for c in &got {
        let id = &jsonrpc_body(c)[22..23];
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#);
        assert_eq!(
            agent
                .answer(c, "jsonrpc_response", 200, Some(&body), "{}")
                .status,
            200
        );
    }
    for c in clients {
        assert_eq!(c.join().unwrap().status, 200);
    }
    for (q, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=x", "invalid_limit"),
        ("timeout_ms=-5", "invalid_timeout"),
        ("channel=BAD", "invalid_channel_format"),
    ] {
        assert_eq!(agent.poll_raw(q).err(), (400, Some(code.into())), "{q}");
    }
    let url = relay.url(&format!("/v1/tunnels/{}/poll?timeout_ms=0", relay.tunnel));
    let auth = format!("Bearer {}", relay.runtime);
    for bad in [
        r#"{"version":2,"channels":[]}"#,
        "not json",
        r#"{"version":1,"channels":[{"name":"A"}]}"#,
    ] {
        let r = call(
            "GET",
            &url,
            &[("Authorization", &auth), ("X-Tunnel-MCP-Server-Info", bad)],
            None,
        );
        assert_eq!(r.err(), (400, Some("invalid_server_info".into())), "{bad}");
    }
}

/// Reads from a raw socket until `needle` shows up in everything read so far.
fn read_until(s: &mut TcpStream, acc: &mut Vec<u8>, needle: &str) {
    let end = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(acc).contains(needle) {
        assert!(
            Instant::now() < end,
            "never saw {needle:?} in {:?}",
            String::from_utf8_lossy(acc)
        );
        match s.read(&mut buf) {
            Ok(0) => panic!("EOF before {needle:?}: {:?}", String::from_utf8_lossy(acc)),
            Ok(n) => acc.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn raw_post(relay: &Relay, path: &str, headers: &[(&str, &str)], body: &str) -> TcpStream {
    let mut s = TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
        relay.addr,
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    s
}

#[test]
fn sse_streams_notifications_at_once_and_in_order() {
    let relay = Relay::start();
    let agent = relay.agent();
    agent.hello();
    let auth = format!("Bearer {}", relay.connector);
    let mut s = raw_post(
        &relay,
        &format!("/v1/mcp/{}", relay.tunnel),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        CALL,
    );
    let c = agent.take(1).remove(0);
    let n1 = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#;
    let n2 = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":2}}"#;
    let fin = r#"{"jsonrpc":"2.0","id":7,"result":{"done":true}}"#;
    let sess = r#"{"Content-Type":["text/event-stream"],"Mcp-Session-Id":["s-9"]}"#;
    assert_eq!(
        agent
            .answer(&c, "jsonrpc_notify", 200, Some(n1), sess)
            .status,
        200
    );
    let mut acc = Vec::new();
    // The first event reaches the client while the command is still open.
    read_until(&mut s, &mut acc, n1);
    let head = String::from_utf8_lossy(&acc).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"));
    assert!(head.contains("mcp-session-id: s-9"));
    assert_eq!(
        agent
            .answer(&c, "jsonrpc_notify", 200, Some(n2), sess)
            .status,
        200
    );
    read_until(&mut s, &mut acc, n2);
    assert_eq!(
        agent
            .answer(&c, "jsonrpc_response", 200, Some(fin), sess)
            .status,
        200
    );
    read_until(&mut s, &mut acc, fin);
    // The final ends the (chunked) body.
    read_until(&mut s, &mut acc, "\r\n0\r\n\r\n");
    let text = String::from_utf8_lossy(&acc).into_owned();
    let (p1, p2, p3) = (
        text.find(n1).unwrap(),
        text.find(n2).unwrap(),
        text.find(fin).unwrap(),
    );
    assert!(p1 < p2 && p2 < p3, "events in stream order");
    assert_eq!(text.matches("data: ").count(), 3);
    // Replay after the final.
    assert_eq!(
        agent
            .answer(&c, "jsonrpc_notify", 200, Some(n1), sess)
            .err(),
        (404, Some("pending_request_not_found".into()))
    );
}

#[test]
fn json_only_client_gets_just_the_final() {
    let relay = Relay::start();
    let agent = relay.agent();
    agent.hello();
    let client = mcp_post_bg(relay.mcp_url(), relay.connector.clone(), CALL.into());
    let c = agent.take(1).remove(0);
    let n1 = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#;
    let fin = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
    assert_eq!(
        agent
            .answer(&c, "jsonrpc_notify", 200, Some(n1), "{}")
            .status,
        200
    );
    assert_eq!(
        agent
            .answer(&c, "jsonrpc_response", 200, Some(fin), "{}")
            .status,
        200
    );
    let r = client.join().unwrap();
    assert_eq!((r.status, r.text()), (200, fin.to_string()));
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn notification_gets_202_after_the_ack() {
    let relay = Relay::start();
    let agent = relay.agent();
    agent.hello();
    let client = mcp_post_bg(
        relay.mcp_url(),
        relay.connector.clone(),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.into(),
    );
    let c = agent.take(1).remove(0);
    // A notification has no id: a jsonrpc_notify cannot answer it.
    assert_eq!(
        agent
            .answer(
                &c,
                "jsonrpc_notify",
                200,
                Some(r#"{"jsonrpc":"2.0","method":"x"}"#),
                "{}"
            )
            .err(),
        (400, Some("unexpected_resp_type".into()))
    );
    assert_eq!(agent.answer(&c, "notify_ack", 202, None, "{}").status, 200);
    let r = client.join().unwrap();
    assert_eq!((r.status, r.body.len()), (202, 0));
}

#[test]
fn delete_becomes_session_termination() {
    let relay = Relay::start();
    let agent = relay.agent();
    agent.hello();
    let auth = format!("Bearer {}", relay.connector);
    let url = relay.mcp_url();
    let a2 = auth.clone();
    let client = thread::spawn(move || {
        call(
            "DELETE",
            &url,
            &[("Authorization", &a2), ("Mcp-Session-Id", "sess-42")],
            None,
        )
    });
    let c = agent.take(1).remove(0);
    assert_eq!(c.kind, CommandKind::SessionTermination);
    assert_eq!(c.header("mcp-session-id"), Some("sess-42"));
    assert_eq!(
        agent
            .answer(&c, "session_termination_response", 204, None, "{}")
            .status,
        200
    );
    assert_eq!(client.join().unwrap().status, 204);
    let r = call(
        "DELETE",
        &relay.mcp_url(),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(r.err(), (400, Some("missing_mcp_session_id".into())));
}

#[test]
fn get_is_405_with_allow() {
    let relay = Relay::start();
    let auth = format!("Bearer {}", relay.connector);
    let r = call(
        "GET",
        &relay.mcp_url(),
        &[("Authorization", &auth), ("Accept", "text/event-stream")],
        None,
    );
    assert_eq!(r.err(), (405, Some("method_not_allowed".into())));
    assert_eq!(r.header("allow"), Some("POST, DELETE"));
}

#[test]
fn auth_matrix() {
    let relay = Relay::start();
    let st = relay.state();
    relay.agent().hello();
    let unknown = format!("tunnel_{}", "0".repeat(32));
    // A second org with its own tunnel and connector key.
    let (_, out) = cli(&["org", "create", "--state", st]);
    let org_b = field(&parse(&out), &["org_id"]).unwrap();
    let (_, out) = cli(&["tunnel", "create", "--state", st, "--org", &org_b]);
    let tunnel_b = field(&parse(&out), &["tunnel_id"]).unwrap();
    let (_, out) = cli(&[
        "key",
        "create",
        "--state",
        st,
        "--role",
        "connector",
        "--org",
        &org_b,
    ]);
    let key_b = field(&parse(&out), &["key"]).unwrap();
    let (_, out) = cli(&[
        "key", "create", "--state", st, "--role", "admin", "--org", &relay.org,
    ]);
    let admin = field(&parse(&out), &["key"]).unwrap();
    let (_, out) = cli(&[
        "key",
        "create",
        "--state",
        st,
        "--role",
        "connector",
        "--org",
        &relay.org,
    ]);
    let v = parse(&out);
    let (doomed_id, doomed) = (
        field(&v, &["key_id"]).unwrap(),
        field(&v, &["key"]).unwrap(),
    );
    let mcp = |tunnel: &str| relay.url(&format!("/v1/mcp/{tunnel}"));
    let poll = |tunnel: &str| relay.url(&format!("/v1/tunnels/{tunnel}/poll?timeout_ms=0"));
    // The new keys become usable once the relay has reloaded the state.
    wait_until("new key loaded", || {
        mcp_post(&mcp(&relay.tunnel), &doomed, "{}").status != 401
    });
    let ping = r#"{"jsonrpc":"2.0","method":"notifications/x"}"#;
    let mcp_err = |url: &str, headers: &[(&str, &str)]| {
        call("POST", url, headers, Some(ping.as_bytes())).err()
    };
    let bearer = |k: &str| format!("Bearer {k}");
    let e = |s: u16, c: &str| (s, Some(c.to_string()));
    assert_eq!(mcp_err(&mcp(&relay.tunnel), &[]), e(401, "missing_api_key"));
    assert_eq!(
        mcp_err(&mcp(&relay.tunnel), &[("Authorization", "Bearer mtk_nope")]),
        e(401, "invalid_api_key")
    );
    assert_eq!(
        mcp_err(
            &mcp(&relay.tunnel),
            &[("Authorization", "Basic Zm9vOmJhcg==")]
        ),
        e(401, "missing_api_key")
    );
    assert_eq!(
        mcp_err(
            &mcp(&relay.tunnel),
            &[("Authorization", &bearer(&relay.runtime))]
        ),
        e(403, "tunnel_use_forbidden")
    );
    assert_eq!(
        mcp_err(&mcp(&relay.tunnel), &[("Authorization", &bearer(&admin))]),
        e(403, "tunnel_use_forbidden")
    );
    assert_eq!(
        mcp_err(
            &mcp("tunnel_nope"),
            &[("Authorization", &bearer(&relay.connector))]
        ),
        e(400, "invalid_tunnel_id_format")
    );
    // Org A's key: org B's tunnel and a nonexistent one look exactly the same.
    let other = call(
        "POST",
        &mcp(&tunnel_b),
        &[("Authorization", &bearer(&relay.connector))],
        Some(ping.as_bytes()),
    );
    let none = call(
        "POST",
        &mcp(&unknown),
        &[("Authorization", &bearer(&relay.connector))],
        Some(ping.as_bytes()),
    );
    assert_eq!(other.err(), e(404, "tunnel_not_found"));
    assert_eq!((other.status, other.text()), (none.status, none.text()));
    // And org B's key sees org A's tunnel the same way.
    assert_eq!(
        mcp_err(&mcp(&relay.tunnel), &[("Authorization", &bearer(&key_b))]),
        e(404, "tunnel_not_found")
    );
    // Control plane: connector keys cannot poll, runtime keys can.
    let get = |url: &str, k: &str| call("GET", url, &[("Authorization", &bearer(k))], None).err();
    assert_eq!(
        get(&poll(&relay.tunnel), &relay.connector),
        e(403, "tunnel_use_forbidden")
    );
    assert_eq!(get(&poll(&tunnel_b), &relay.runtime).0, 404);
    assert_eq!(
        get(&poll(&relay.tunnel), "mtk_nope"),
        e(401, "invalid_api_key")
    );
    assert_eq!(get(&poll(&relay.tunnel), &relay.runtime).0, 204);
    // The init runtime key is scoped to the init tunnel only (same org, other tunnel).
    let (_, out) = cli(&["tunnel", "create", "--state", st, "--org", &relay.org]);
    let tunnel_a2 = field(&parse(&out), &["tunnel_id"]).unwrap();
    wait_until("tunnel loaded", || {
        get(&poll(&tunnel_a2), &relay.runtime).0 != 404
    });
    assert_eq!(
        get(&poll(&tunnel_a2), &relay.runtime),
        e(403, "tunnel_use_forbidden")
    );
    // X-Tunnel-Authorization takes precedence over Authorization.
    assert_eq!(
        mcp_err(
            &mcp(&relay.tunnel),
            &[
                ("Authorization", &bearer(&relay.connector)),
                ("X-Tunnel-Authorization", "Bearer mtk_nope")
            ]
        ),
        e(401, "invalid_api_key")
    );
    // Revocation applies without a restart.
    assert_eq!(mcp_post(&mcp(&relay.tunnel), &doomed, "{}").status, 400);
    assert_eq!(cli(&["key", "revoke", "--state", st, &doomed_id]).0, 0);
    wait_until("revocation applied", || {
        mcp_post(&mcp(&relay.tunnel), &doomed, "{}").status == 401
    });
    assert_eq!(
        mcp_err(&mcp(&relay.tunnel), &[("Authorization", &bearer(&doomed))]),
        e(401, "invalid_api_key")
    );
}

#[test]
fn oauth_authorization_travels_to_the_mcp_server() {
    let relay = Relay::start();
    let agent = relay.agent();
    agent.hello();
    let url = relay.mcp_url();
    let relay_auth = format!("Bearer {}", relay.connector);
    let client = thread::spawn(move || {
        call(
            "POST",
            &url,
            &[
                ("Authorization", "Bearer oauth-token-for-mcp"),
                ("X-Tunnel-Authorization", &relay_auth),
                ("Content-Type", "application/json"),
            ],
            Some(CALL.as_bytes()),
        )
    });
    let c = agent.take(1).remove(0);
    assert_eq!(
        c.header("authorization"),
        Some("Bearer oauth-token-for-mcp")
    );
    assert_eq!(c.header("x-tunnel-authorization"), None);
    let err = r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32001,"message":"unauthorized"}}"#;
    let hdrs = r#"{"WWW-Authenticate":["Bearer resource_metadata=\"https://mcp.example/.well-known/oauth-protected-resource\""],"Set-Cookie":["x=1"]}"#;
    assert_eq!(
        agent
            .answer(&c, "jsonrpc_response", 401, Some(err), hdrs)
            .status,
        200
    );
    let r = client.join().unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer resource_metadata="https://mcp.example/.well-known/oauth-protected-resource""#
        )
    );
    assert_eq!(
        r.header("set-cookie"),
        None,
        "only allowlisted headers come back"
    );
    assert_eq!(r.text(), err);
}

#[test]
fn agent_absent_is_503() {
    let relay = Relay::start();
    let r = mcp_post(&relay.mcp_url(), &relay.connector, CALL);
    assert_eq!(r.err(), (503, Some("tunnel_client_not_connected".into())));
    // The OpenAPI APIErrorBody requires message and type.
    let v = parse(&r.text());
    assert_eq!(field(&v, &["error", "type"]), Some("server_error".into()));
    assert!(field(&v, &["error", "message"]).is_some_and(|m| !m.is_empty()));
}

#[test]
fn queue_full_is_503() {
    let relay = Relay::start_with(|c| c.queue_size = 2);
    let agent = relay.agent();
    agent.hello();
    // Three clients, room for two, nobody draining: exactly one is refused at
    // once, whichever arrives last; the other two wait for the agent.
    let mut clients: Vec<_> = (0..3)
        .map(|_| mcp_post_bg(relay.mcp_url(), relay.connector.clone(), CALL.into()))
        .collect();
    let mut refused = None;
    wait_until("one client refused", || {
        refused = clients.iter().position(|c| c.is_finished());
        refused.is_some()
    });
    let r = clients.remove(refused.unwrap()).join().unwrap();
    assert_eq!(r.err(), (503, Some("tunnel_queue_full".into())));
    for c in agent.take(2) {
        let fin = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
        assert_eq!(
            agent
                .answer(&c, "jsonrpc_response", 200, Some(fin), "{}")
                .status,
            200
        );
    }
    for c in clients {
        assert_eq!(c.join().unwrap().status, 200);
    }
}

#[test]
fn timeout_is_504_and_late_answer_is_404() {
    let relay = Relay::start_with(|c| c.response_timeout = Duration::from_millis(300));
    let agent = relay.agent();
    agent.hello();
    let client = mcp_post_bg(relay.mcp_url(), relay.connector.clone(), CALL.into());
    let c = agent.take(1).remove(0);
    let r = client.join().unwrap();
    assert_eq!(r.err(), (504, Some("tunnel_timeout".into())));
    let late = agent.answer(
        &c,
        "jsonrpc_response",
        200,
        Some(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#),
        "{}",
    );
    assert_eq!(late.err(), (404, Some("pending_request_not_found".into())));
}

#[test]
fn client_disconnect_cancels_the_command() {
    let relay = Relay::start();
    let agent = relay.agent();
    agent.hello();
    let auth = format!("Bearer {}", relay.connector);
    let path = format!("/v1/mcp/{}", relay.tunnel);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    // Not yet delivered: the command is dropped and never reaches an agent.
    let s = raw_post(&relay, &path, &headers, CALL);
    drop(s);
    wait_until("the relay noticed the disconnect", || {
        relay
            .audit_lines()
            .iter()
            .any(|l| l.contains("client_closed_request"))
    });
    assert!(agent.poll("limit=25&timeout_ms=0").is_empty());
    // Delivered: the agent's answer finds nothing.
    let s = raw_post(&relay, &path, &headers, CALL);
    let c = agent.take(1).remove(0);
    drop(s);
    wait_until("answers to a departed client are refused", || {
        agent
            .answer(
                &c,
                "jsonrpc_notify",
                200,
                Some(r#"{"jsonrpc":"2.0","method":"p"}"#),
                "{}",
            )
            .status
            == 404
    });
}

#[test]
fn wrong_shard_token_and_replay_are_rejected_without_cross_talk() {
    let relay = Relay::start();
    let agent = relay.agent();
    agent.hello();
    let body = |id: u32| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"t{id}"}}}}"#
        )
    };
    let a = mcp_post_bg(relay.mcp_url(), relay.connector.clone(), body(1));
    let b = mcp_post_bg(relay.mcp_url(), relay.connector.clone(), body(2));
    let cmds = agent.take(2);
    let (ca, cb) = if jsonrpc_body(&cmds[0]) == body(1) {
        (&cmds[0], &cmds[1])
    } else {
        (&cmds[1], &cmds[0])
    };
    let ans = |id: u32| format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"who":{id}}}}}"#);
    let post_body = |c: &Command, id: u32| {
        format!(
            r#"{{"request_id":"{}","resp_json":{},"resp_code":200,"resp_type":"jsonrpc_response"}}"#,
            c.request_id,
            ans(id)
        )
    };
    // A's request id with B's token.
    let r = agent.post(Some(cb.shard_token.as_str()), &post_body(ca, 1));
    assert_eq!(r.err(), (403, Some("shard_token_mismatch".into())));
    // No token at all.
    assert_eq!(
        agent.post(None, &post_body(ca, 1)).err(),
        (400, Some("missing_shard_token".into()))
    );
    // A made-up request id.
    let fake = post_body(ca, 1).replace(&ca.request_id, "req_000000000000000000000000");
    assert_eq!(
        agent.post(Some(ca.shard_token.as_str()), &fake).err(),
        (404, Some("pending_request_not_found".into()))
    );
    // B's answer posted under A's request id and token.
    assert_eq!(
        agent
            .post(Some(ca.shard_token.as_str()), &post_body(ca, 2))
            .err(),
        (400, Some("response_id_mismatch".into()))
    );
    // Answer B first, then A; each client gets its own.
    assert_eq!(
        agent
            .post(Some(cb.shard_token.as_str()), &post_body(cb, 2))
            .status,
        200
    );
    assert_eq!(
        agent
            .post(Some(ca.shard_token.as_str()), &post_body(ca, 1))
            .status,
        200
    );
    // Replays of a finished command.
    assert_eq!(
        agent
            .post(Some(ca.shard_token.as_str()), &post_body(ca, 1))
            .err(),
        (404, Some("pending_request_not_found".into()))
    );
    assert_eq!(a.join().unwrap().text(), ans(1));
    assert_eq!(b.join().unwrap().text(), ans(2));
}

#[test]
fn many_concurrent_requests_each_get_their_own_answer() {
    let relay = Relay::start();
    let agent = relay.agent();
    agent.hello();
    let n = 12;
    let clients: Vec<_> = (0..n)
        .map(|i| {
            mcp_post_bg(
                relay.mcp_url(),
                relay.connector.clone(),
                format!(r#"{{"jsonrpc":"2.0","id":"c{i}","method":"ping"}}"#),
            )
        })
        .collect();
    let mut cmds = agent.take(n);
    cmds.reverse();
    for c in &cmds {
        let body = jsonrpc_body(c);
        let id = body.split('"').nth(7).unwrap().to_string();
        let ans = format!(r#"{{"jsonrpc":"2.0","id":"{id}","result":{{"for":"{id}"}}}}"#);
        assert_eq!(
            agent
                .answer(c, "jsonrpc_response", 200, Some(&ans), "{}")
                .status,
            200
        );
    }
    for (i, c) in clients.into_iter().enumerate() {
        let r = c.join().unwrap();
        assert_eq!(
            r.text(),
            format!(r#"{{"jsonrpc":"2.0","id":"c{i}","result":{{"for":"c{i}"}}}}"#)
        );
    }
}

#[test]
fn malformed_and_oversized_bodies() {
    let relay = Relay::start_with(|c| {
        c.max_body = 64 * 1024;
        c.max_response_body = 64 * 1024;
    });
    let agent = relay.agent();
    agent.hello();
    let url = relay.mcp_url();
    let k = &relay.connector;
    for (body, code) in [
        ("not json", "invalid_json_payload"),
        ("", "invalid_json_payload"),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"a"} trailing"#,
            "invalid_json_payload",
        ),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"a"}]"#,
            "invalid_json_payload",
        ),
        (r#"{"id":1,"method":"a"}"#, "invalid_jsonrpc"),
        (
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"a"}"#,
            "invalid_json_payload",
        ),
    ] {
        assert_eq!(
            mcp_post(&url, k, body).err(),
            (400, Some(code.into())),
            "{body}"
        );
    }
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"a","params":{{"x":"{}"}}}}"#,
        "a".repeat(100 * 1024)
    );
    assert_eq!(
        mcp_post(&url, k, &big).err(),
        (413, Some("request_body_too_large".into()))
    );
    assert_eq!(
        agent.post(Some("x"), &big).err(),
        (413, Some("request_body_too_large".into()))
    );
    for body in [
        "{",
        r#"{"resp_code":200}"#,
        r#"{"request_id":"r","resp_code":"200"}"#,
        r#"{"request_id":"r","resp_code":200,"resp_type":"weird"}"#,
    ] {
        assert_eq!(
            agent.post(Some("x"), body).err(),
            (400, Some("invalid_response_body".into())),
            "{body}"
        );
    }
    // Nothing was queued by the refused requests.
    assert!(agent.poll("limit=25&timeout_ms=0").is_empty());
}

#[test]
fn channels_route_commands() {
    let relay = Relay::start();
    let agent = relay.agent();
    // This agent declares, by its poll filter, that it serves `docs` only.
    assert_eq!(agent.poll_raw("channel=docs&timeout_ms=0").status, 204);
    let r = mcp_post(&relay.mcp_url(), &relay.connector, CALL);
    assert_eq!(
        r.err(),
        (503, Some("tunnel_client_not_connected".into())),
        "nobody serves main"
    );
    let url = format!("{}/docs", relay.mcp_url());
    let client = mcp_post_bg(url, relay.connector.clone(), CALL.into());
    let end = Instant::now() + WAIT;
    let c = loop {
        assert!(Instant::now() < end);
        if let Some(c) = agent.poll("channel=docs&limit=5&timeout_ms=500").pop() {
            break c;
        }
    };
    assert_eq!(c.channel.as_str(), "docs");
    let fin = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
    let wrong = format!(
        r#"{{"request_id":"{}","channel":"main","resp_json":{fin},"resp_code":200}}"#,
        c.request_id
    );
    assert_eq!(
        agent.post(Some(c.shard_token.as_str()), &wrong).err(),
        (400, Some("channel_mismatch".into()))
    );
    assert_eq!(
        agent
            .answer(&c, "jsonrpc_response", 200, Some(fin), "{}")
            .status,
        200
    );
    assert_eq!(client.join().unwrap().status, 200);
    let bad = format!("{}/No!", relay.mcp_url());
    assert_eq!(
        mcp_post(&bad, &relay.connector, CALL).err(),
        (400, Some("invalid_channel_format".into()))
    );
}

#[test]
fn audit_log_has_one_line_per_request_and_no_payload() {
    let relay = Relay::start();
    let agent = relay.agent();
    agent.hello();
    let client = mcp_post_bg(relay.mcp_url(), relay.connector.clone(), CALL.into());
    let c = agent.take(1).remove(0);
    agent.answer(
        &c,
        "jsonrpc_response",
        200,
        Some(r#"{"jsonrpc":"2.0","id":7,"result":{"secret-result":1}}"#),
        "{}",
    );
    assert_eq!(client.join().unwrap().status, 200);
    assert_eq!(mcp_post(&relay.mcp_url(), "mtk_wrong", CALL).status, 401);
    let lines = relay.audit_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let v = parse(&lines[0]);
    assert_eq!(field(&v, &["tunnel"]), Some(relay.tunnel.clone()));
    assert_eq!(field(&v, &["org"]), Some(relay.org.clone()));
    assert_eq!(field(&v, &["method"]), Some("tools/call".into()));
    assert_eq!(field(&v, &["tool"]), Some("echo".into()));
    assert!(field(&v, &["key_id"]).is_some_and(|k| k.starts_with("key_")));
    assert!(lines[0].contains("\"status\":200"));
    assert!(lines[0].contains(&format!("\"bytes_in\":{}", CALL.len())));
    assert!(lines[1].contains("\"status\":401") && lines[1].contains("invalid_api_key"));
    let all = lines.join("\n");
    for secret in [
        "sekrit-payload",
        "secret-result",
        &relay.connector,
        &relay.runtime,
        "mtk_wrong",
    ] {
        assert!(!all.contains(secret), "audit log leaks {secret}");
    }
}

#[test]
fn unknown_routes_and_methods() {
    let relay = Relay::start();
    let auth = format!("Bearer {}", relay.runtime);
    assert_eq!(
        call("GET", &relay.url("/v2/whatever"), &[], None).err(),
        (404, Some("not_found".into()))
    );
    let r = call(
        "POST",
        &relay.url(&format!("/v1/tunnels/{}/poll", relay.tunnel)),
        &[("Authorization", &auth)],
        Some(b"{}"),
    );
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    let r = call(
        "GET",
        &relay.url(&format!("/v1/tunnels/{}/response", relay.tunnel)),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
}

/// A self-signed test certificate for localhost/127.0.0.1 (test-only key).
const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBrjCCAVSgAwIBAgIUWGauxxWKyAKymaV17mQu73KemSgwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNzExMzYyNVoYDzIxMjYxMTAz
MTEzNjI1WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAASixpurUAIquW5xUrArBtYqilN1kEWXCT+zL7/gxhlhIDB/MZjQRfFn
yNt04yKk/5ZAAvsSmDAMNDv+SbRFDoKBo4GBMH8wHQYDVR0OBBYEFOuvt7cfxIEw
iqVrJAsS+47zq7WpMB8GA1UdIwQYMBaAFOuvt7cfxIEwiqVrJAsS+47zq7WpMBoG
A1UdEQQTMBGCCWxvY2FsaG9zdIcEfwAAATAMBgNVHRMBAf8EAjAAMBMGA1UdJQQM
MAoGCCsGAQUFBwMBMAoGCCqGSM49BAMCA0gAMEUCIQDRD6swKkdH2rhOUK2MDO6I
9otLYrzAvGXrG8ed8oN7KwIgS1uGKva21kG/W6Ala8pBxGEuAmSpidaeSA6lHrOG
FP4=
-----END CERTIFICATE-----
";
const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg6Zy06dEWxlvxrMN1
avd11TH7YbXxGcMw5+U54KA11dWhRANCAASixpurUAIquW5xUrArBtYqilN1kEWX
CT+zL7/gxhlhIDB/MZjQRfFnyNt04yKk/5ZAAvsSmDAMNDv+SbRFDoKB
-----END PRIVATE KEY-----
";

fn tls_request(addr: SocketAddr, request: &str) -> std::io::Result<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(WAIT))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // Servers may close without close_notify; what arrived is the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn tls_listener_serves_https() {
    let dir = tmpdir();
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, TEST_CERT).unwrap();
    std::fs::write(&key, TEST_KEY).unwrap();
    let (c2, k2) = (cert.clone(), key.clone());
    let relay = Relay::start_with(move |c| {
        c.tls_cert = Some(c2);
        c.tls_key = Some(k2);
    });
    let req = format!(
        "GET /v1/tunnels/{} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        relay.tunnel, relay.runtime
    );
    let answer = tls_request(relay.addr, &req).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&relay.tunnel));
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut s = TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1 200"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_tls_files_and_non_loopback_plain_http_refuse_to_start() {
    let relay = Relay::start();
    let missing = relay.dir.join("nope.pem");
    let mut cfg = ServeConfig::new(relay.dir.clone(), "127.0.0.1:0".parse().unwrap());
    cfg.tls_cert = Some(missing.clone());
    cfg.tls_key = Some(missing);
    let err = Server::bind(cfg).err().expect("refused");
    assert!(err.to_string().contains("--tls-cert"), "{err}");
    let cfg = ServeConfig::new(relay.dir.clone(), "0.0.0.0:0".parse().unwrap());
    let err = Server::bind(cfg).err().expect("refused");
    assert!(err.to_string().contains("loopback"), "{err}");
    let cfg = ServeConfig::new(relay.dir.join("absent"), "127.0.0.1:0".parse().unwrap());
    let err = Server::bind(cfg).err().expect("refused");
    assert!(err.to_string().contains("--state"), "{err}");
}

// ---------------------------------------------------------------------------
// The built binary: `mcp-tunnel relay …` as operators and other suites run it.

const BIN: &str = env!("CARGO_BIN_EXE_mcp-tunnel");

fn bin(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("run mcp-tunnel")
}

/// A child process of this test, killed by its own handle if the test fails midway.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `relay serve` on a free port; the address comes from its one stdout line.
fn spawn_serve(state: &str, extra: &[&str]) -> (Child, SocketAddr) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut args = vec![
        "relay",
        "serve",
        "--state",
        state,
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut child = std::process::Command::new(BIN)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn relay serve");
    let stdout = child.stdout.take().unwrap();
    let child = Child(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim_end()
        .strip_prefix("listening on 127.0.0.1:")
        .map(|port| format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("first stdout line: {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let end = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < end, "process did not exit");
        thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &child.0.id().to_string()])
        .status()
        .expect("kill(1)");
    assert!(st.success());
}

#[test]
fn binary_init_serve_and_sigterm() {
    let dir = tmpdir();
    let d = dir.to_str().unwrap();
    let out = bin(&["relay", "init", "--state", d]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    let v = parse(&text);
    let tunnel = field(&v, &["tunnel_id"]).unwrap();
    let runtime = field(&v, &["runtime_key"]).unwrap();
    assert!(field(&v, &["connector_key"]).is_some() && field(&v, &["org_id"]).is_some());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let again = bin(&["relay", "init", "--state", d]);
    assert_eq!(again.status.code(), Some(2));
    assert!(again.stdout.is_empty());

    let audit = dir.join("audit.log");
    let (mut child, addr) = spawn_serve(d, &["--audit-log", audit.to_str().unwrap()]);
    let r = call(
        "GET",
        &format!("http://{addr}/v1/tunnels/{tunnel}"),
        &[("Authorization", &format!("Bearer {runtime}"))],
        None,
    );
    assert_eq!(r.status, 200);
    // The CLI changes the state under the running server.
    let out = bin(&[
        "relay", "tunnel", "create", "--state", d, "--name", "second",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let listed = String::from_utf8(bin(&["relay", "tunnel", "list", "--state", d]).stdout).unwrap();
    assert_eq!(listed.lines().count(), 2);
    // SIGHUP reopens the audit log after rotation.
    let url = format!("http://{addr}/v1/mcp/{tunnel}");
    assert_eq!(mcp_post(&url, "mtk_wrong", CALL).status, 401);
    wait_until("audit line", || {
        std::fs::read_to_string(&audit).is_ok_and(|t| t.lines().count() == 1)
    });
    std::fs::rename(&audit, dir.join("audit.log.1")).unwrap();
    signal(&child, "-HUP");
    wait_until("audit log reopened", || {
        assert_eq!(mcp_post(&url, "mtk_wrong", CALL).status, 401);
        audit.exists()
    });
    signal(&child, "-TERM");
    assert_eq!(
        wait_exit(&mut child).code(),
        Some(0),
        "clean exit after the drain"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binary_usage_errors_name_the_flag() {
    for (args, flag) in [
        (
            &[
                "relay",
                "serve",
                "--state",
                "/nonexistent",
                "--listen",
                "nope",
            ][..],
            "--listen",
        ),
        (&["relay", "serve", "--state", "/nonexistent"], "--listen"),
        (
            &[
                "relay",
                "key",
                "create",
                "--state",
                "/nonexistent",
                "--role",
                "root",
            ],
            "--role",
        ),
        (&["relay", "init"], "--state"),
        (
            &[
                "relay",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--state",
                "/x",
                "--max-body",
                "lots",
            ],
            "--max-body",
        ),
    ] {
        let out = bin(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let out = bin(&[
        "relay",
        "serve",
        "--state",
        "/nonexistent/state",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("relay init"));
    for args in [
        &["relay", "--help"][..],
        &["relay", "serve", "--help"],
        &["relay", "key", "--help"],
    ] {
        let out = bin(args);
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8(out.stdout).unwrap().starts_with("usage:"));
    }
}

// ---------------------------------------------------------------------------
// Our own agent between the relay and a small MCP server.
#[cfg(feature = "agent")]
mod with_agent {
    use super::*;

    /// A minimal Streamable HTTP MCP server: `tools/call` answers as an SSE stream
    /// (one progress notification, then the result), other requests as JSON,
    /// notifications 202, DELETE 200.
    fn fake_mcp_server() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                thread::spawn(move || serve_mcp(s));
            }
        });
        addr
    }

    fn serve_mcp(mut s: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = &buf[head_end..head_end + len];
        let reply = |s: &mut TcpStream, status: &str, ctype: &str, body: &str| {
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nMcp-Session-Id: sess-e2e\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        };
        if head.starts_with("DELETE") {
            return reply(&mut s, "200 OK", "text/plain", "");
        }
        let limits = mcp_tunnel::proto::json::Limits::default();
        let Ok(info) = mcp_tunnel::proto::jsonrpc::inspect(body, &limits) else {
            return reply(&mut s, "400 Bad Request", "text/plain", "bad");
        };
        let Some(id) = info
            .id_bytes(body)
            .map(|b| String::from_utf8_lossy(b).to_string())
        else {
            return reply(&mut s, "202 Accepted", "text/plain", "");
        };
        let method = info.method.unwrap_or_default();
        if method == "tools/call" {
            let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#;
            let result = format!(
                r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":"called"}}]}}}}"#
            );
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nMcp-Session-Id: sess-e2e\r\nConnection: close\r\n\r\nevent: message\ndata: {progress}\n\nevent: message\ndata: {result}\n\n"
            );
            return;
        }
        let result = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"method":"{method}"}}}}"#);
        reply(&mut s, "200 OK", "application/json", &result);
    }

    #[test]
    fn real_agent_end_to_end() {
        let relay = Relay::start();
        let mcp = fake_mcp_server();
        let child = std::process::Command::new(BIN)
            .args([
                "agent",
                "--control-plane.base-url",
                &relay.url(""),
                "--control-plane.tunnel-id",
                &relay.tunnel,
                "--control-plane.api-key",
                &relay.runtime,
                "--control-plane.poll-timeout",
                "2s",
                "--mcp.server-url",
                &format!("http://{mcp}/mcp"),
                "--health.listen-addr",
                "off",
                "--log.level",
                "warn",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn agent");
        let _agent = Child(child);
        let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let mut r = mcp_post(&relay.mcp_url(), &relay.connector, ping);
        wait_until("the agent connected", || {
            r = mcp_post(&relay.mcp_url(), &relay.connector, ping);
            r.status != 503
        });
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.text(),
            r#"{"jsonrpc":"2.0","id":1,"result":{"method":"ping"}}"#
        );
        assert_eq!(r.header("mcp-session-id"), Some("sess-e2e"));
        // tools/call streams: progress first, then the result.
        let auth = format!("Bearer {}", relay.connector);
        let call_body = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","_meta":{"progressToken":1}}}"#;
        let r = call(
            "POST",
            &relay.mcp_url(),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
            ],
            Some(call_body.as_bytes()),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        let text = r.text();
        let p = text.find("notifications/progress").expect("progress event");
        let f = text.find(r#""id":2,"result""#).expect("final event");
        assert!(p < f, "{text}");
        // A notification, then the session's end.
        let r = mcp_post(
            &relay.mcp_url(),
            &relay.connector,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        );
        assert_eq!(r.status, 202);
        let r = call(
            "DELETE",
            &relay.mcp_url(),
            &[("Authorization", &auth), ("Mcp-Session-Id", "sess-e2e")],
            None,
        );
        assert_eq!(r.status, 200);
    }
}

#[test]
fn extreme_configured_timeouts_do_not_overflow() {
    let relay = Relay::start_with(|c| {
        c.response_timeout = Duration::MAX;
        c.poll_timeout_max = Duration::MAX;
    });
    let agent = relay.agent();
    agent.hello();
    let client = mcp_post_bg(relay.mcp_url(), relay.connector.clone(), CALL.into());
    let c = agent.take(1).remove(0);
    assert!(c
        .response_timeout
        .is_some_and(|t| t > Duration::from_secs(86_400 * 365)));
    let fin = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
    assert_eq!(
        agent
            .answer(&c, "jsonrpc_response", 200, Some(fin), "{}")
            .status,
        200
    );
    assert_eq!(client.join().unwrap().status, 200);
}

#[test]
fn two_agents_share_a_tunnel_and_one_carries_on() {
    // A short response timeout turns a probe that slips through into a 504, not a hang.
    let relay = Relay::start_with(|c| {
        c.agent_liveness = Duration::from_secs(1);
        c.response_timeout = Duration::from_secs(2);
    });
    let a = relay.agent();
    let b = FakeAgent {
        instance: "fake-agent-2".into(),
        ..relay.agent()
    };
    a.hello();
    b.hello();
    // Both long-poll for one command; each command goes to exactly one of them.
    let (ta, tb) = (
        thread::spawn(move || a.take_by(1, 1)),
        thread::spawn(move || b.take_by(1, 1)),
    );
    let body = |i: u32| format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"ping"}}"#);
    let c1 = mcp_post_bg(relay.mcp_url(), relay.connector.clone(), body(1));
    let c2 = mcp_post_bg(relay.mcp_url(), relay.connector.clone(), body(2));
    let (ga, gb) = (ta.join().unwrap(), tb.join().unwrap());
    assert_eq!((ga.len(), gb.len()), (1, 1), "one command each");
    assert_ne!(ga[0].request_id, gb[0].request_id);
    let agent = relay.agent();
    for c in ga.iter().chain(&gb) {
        let id = &jsonrpc_body(c)[22..23];
        let fin = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#);
        assert_eq!(
            agent
                .answer(c, "jsonrpc_response", 200, Some(&fin), "{}")
                .status,
            200
        );
    }
    assert_eq!(c1.join().unwrap().status, 200);
    assert_eq!(c2.join().unwrap().status, 200);
    // Only one keeps polling: the tunnel stays usable through it.
    let carrying = relay.agent();
    let keep = thread::spawn(move || carrying.take(1));
    let c3 = mcp_post_bg(relay.mcp_url(), relay.connector.clone(), body(3));
    let got = keep.join().unwrap();
    let fin = r#"{"jsonrpc":"2.0","id":3,"result":{}}"#;
    assert_eq!(
        relay
            .agent()
            .answer(&got[0], "jsonrpc_response", 200, Some(fin), "{}")
            .status,
        200
    );
    assert_eq!(c3.join().unwrap().status, 200);
    // With nobody polling past the liveness window, clients learn it at once.
    wait_until("agents gone", || {
        mcp_post(&relay.mcp_url(), &relay.connector, &body(4)).err()
            == (503, Some("tunnel_client_not_connected".into()))
    });
}

#[test]
fn a_parked_poll_that_went_away_does_not_swallow_the_command() {
    let relay = Relay::start();
    let a = relay.agent();
    let b = FakeAgent {
        instance: "fake-agent-2".into(),
        ..relay.agent()
    };
    a.hello();
    b.hello();
    // Agent a parks a poll on a raw connection, then goes away; agent b
    // parks one after it. One command wakes one parked poll: when that is
    // a's (its departure not yet seen), a's poll must pass the command on.
    let mut gone = TcpStream::connect(relay.addr).unwrap();
    let path = format!("/v1/tunnels/{}/poll?limit=1&timeout_ms=10000", relay.tunnel);
    write!(
        gone,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nX-Tunnel-Client-Instance-Id: {}\r\n\r\n",
        relay.addr,
        a.auth(),
        a.instance
    )
    .unwrap();
    thread::sleep(Duration::from_millis(200));
    let waiting = thread::spawn(move || b.poll("limit=1&timeout_ms=10000"));
    thread::sleep(Duration::from_millis(200));
    drop(gone);
    let client = mcp_post_bg(relay.mcp_url(), relay.connector.clone(), CALL.into());
    let got = waiting.join().unwrap();
    assert_eq!(got.len(), 1, "the poll still parked got the command");
    let fin = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
    assert_eq!(
        relay
            .agent()
            .answer(&got[0], "jsonrpc_response", 200, Some(fin), "{}")
            .status,
        200
    );
    assert_eq!(client.join().unwrap().status, 200);
}

#[test]
fn two_megabyte_result_passes_through_unchanged() {
    let relay = Relay::start();
    let agent = relay.agent();
    agent.hello();
    let client = mcp_post_bg(relay.mcp_url(), relay.connector.clone(), CALL.into());
    let c = agent.take(1).remove(0);
    let text: String = (0..2 * 1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let fin = format!(
        r#"{{"jsonrpc":"2.0","id":7,"result":{{"content":[{{"type":"text","text":"{text}"}}]}}}}"#
    );
    assert_eq!(
        agent
            .answer(&c, "jsonrpc_response", 200, Some(&fin), "{}")
            .status,
        200
    );
    let r = client.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == fin.as_bytes(), "2 MB body differs");
}

#[test]
fn agent_answers_have_their_own_larger_body_limit() {
    // Clients stay within --max-body; an agent's answer may be larger (the
    // Python SDK sends a 2 MB string twice, content and structuredContent).
    let relay = Relay::start_with(|c| c.max_body = 64 * 1024);
    let agent = relay.agent();
    agent.hello();
    let url = relay.mcp_url();
    let too_big_for_a_client = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"a","params":{{"x":"{}"}}}}"#,
        "a".repeat(100 * 1024)
    );
    assert_eq!(
        mcp_post(&url, &relay.connector, &too_big_for_a_client).err(),
        (413, Some("request_body_too_large".into()))
    );
    let client = mcp_post_bg(url, relay.connector.clone(), CALL.into());
    let c = agent.take(1).remove(0);
    let fin = format!(
        r#"{{"jsonrpc":"2.0","id":7,"result":{{"content":[{{"type":"text","text":"{}"}}]}}}}"#,
        "b".repeat(6 * 1024 * 1024)
    );
    assert_eq!(
        agent
            .answer(&c, "jsonrpc_response", 200, Some(&fin), "{}")
            .status,
        200
    );
    let r = client.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == fin.as_bytes(), "6 MiB answer differs");
}

#[test]
fn sse_client_leaving_mid_stream_cancels_the_command() {
    let relay = Relay::start();
    let agent = relay.agent();
    agent.hello();
    let auth = format!("Bearer {}", relay.connector);
    let mut s = raw_post(
        &relay,
        &format!("/v1/mcp/{}", relay.tunnel),
        &[
            ("Authorization", &auth),
            ("Accept", "text/event-stream, application/json"),
        ],
        CALL,
    );
    let c = agent.take(1).remove(0);
    let n1 = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#;
    assert_eq!(
        agent
            .answer(&c, "jsonrpc_notify", 200, Some(n1), "{}")
            .status,
        200
    );
    let mut acc = Vec::new();
    read_until(&mut s, &mut acc, n1);
    drop(s);
    wait_until("the agent learns the client left", || {
        agent
            .answer(&c, "jsonrpc_notify", 200, Some(n1), "{}")
            .status
            == 404
    });
    wait_until("audited as closed by the client", || {
        relay
            .audit_lines()
            .iter()
            .any(|l| l.contains("\"status\":499"))
    });
}

/// One request on a kept-alive raw connection: (status, error code).
fn exchange(s: &mut TcpStream, head: &str, body: &str) -> (u16, Option<String>) {
    s.write_all(format!("{head}Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
        .unwrap();
    let mut acc = Vec::new();
    read_until(s, &mut acc, "\r\n\r\n");
    let text = String::from_utf8_lossy(&acc).into_owned();
    let (resp_head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = resp_head[9..12].parse().unwrap();
    let len = resp_head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = rest.as_bytes().to_vec();
    while body.len() < len {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => panic!("EOF in a body"),
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    assert_eq!(body.len(), len, "one response at a time");
    let code = json::from_str::<Value>(&String::from_utf8_lossy(&body))
        .ok()
        .and_then(|v| field(&v, &["error", "code"]));
    (status, code)
}

#[test]
fn a_kept_alive_connection_has_every_key_checked_and_sees_a_revocation() {
    let relay = Relay::start();
    relay.agent().hello();
    let st = relay.state();
    let (_, out) = cli(&[
        "key",
        "create",
        "--state",
        st,
        "--role",
        "connector",
        "--org",
        &relay.org,
    ]);
    let v = parse(&out);
    let (doomed_id, doomed) = (
        field(&v, &["key_id"]).unwrap(),
        field(&v, &["key"]).unwrap(),
    );
    wait_until("new key loaded", || {
        mcp_post(&relay.mcp_url(), &doomed, "{}").status != 401
    });
    let mut s = TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let host = relay.addr;
    let poll = format!("/v1/tunnels/{}/poll?timeout_ms=0", relay.tunnel);
    let get = |s: &mut TcpStream, key: &str| {
        exchange(
            s,
            &format!("GET {poll} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"),
            "",
        )
    };
    let mcp = format!("/v1/mcp/{}", relay.tunnel);
    let post = |s: &mut TcpStream, key: &str| {
        exchange(
            s,
            &format!(
                "POST {mcp} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
                 Accept: application/json, text/event-stream\r\nAuthorization: Bearer {key}\r\n"
            ),
            "{}",
        )
    };
    let unauthorized = (401, Some("invalid_api_key".to_string()));
    // Each request on the connection is checked for what it presents, also
    // right after a success with another key.
    assert_eq!(get(&mut s, &relay.runtime).0, 204);
    assert_eq!(get(&mut s, "mtk_nope"), unauthorized);
    assert_eq!(get(&mut s, &relay.runtime).0, 204);
    let runtime_longer = format!("{}0", relay.runtime);
    assert_eq!(get(&mut s, &runtime_longer), unauthorized);
    assert_eq!(
        get(&mut s, &relay.connector),
        (403, Some("tunnel_use_forbidden".to_string()))
    );
    assert_eq!(post(&mut s, &doomed).0, 400);
    assert_eq!(post(&mut s, &relay.connector).0, 400);
    assert_eq!(
        post(&mut s, &relay.runtime),
        (403, Some("tunnel_use_forbidden".to_string()))
    );
    // A verdict kept for the doomed key does not outlive its revocation.
    assert_eq!(post(&mut s, &doomed).0, 400);
    assert_eq!(cli(&["key", "revoke", "--state", st, &doomed_id]).0, 0);
    wait_until("revocation applied on the kept-alive connection", || {
        post(&mut s, &doomed) == unauthorized
    });
    assert_eq!(post(&mut s, &relay.connector).0, 400);
    assert_eq!(post(&mut s, &doomed), unauthorized);
}
