//! The HTTP/1.1 server driver over real loopback sockets: raw request bytes
//! written by the test, and ureq as a client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_io::Async;
use mcp_tunnel::net::http_server::{serve_tcp, Body, Handler, Limits, Request, Response};
use mcp_tunnel::ops::shutdown::Shutdown;
use smol::LocalExecutor;

/// Upper bound for any single wait in these tests: a safety net against a
/// hang, never a figure the test asserts on.
const BOUND: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------ server harness

struct Server {
    addr: SocketAddr,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Stops accepting and waits (bounded) for the drain to finish.
    fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let limit = std::time::Instant::now() + 2 * BOUND;
            while !t.is_finished() && std::time::Instant::now() < limit {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(t.is_finished(), "serve_tcp did not return after shutdown");
            t.join().expect("server thread panicked");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `serve_tcp` on its own thread; `make` builds the (!Send) handler there.
fn start<F>(limits: Limits, make: F) -> Server
where
    F: FnOnce() -> Rc<dyn Handler> + Send + 'static,
{
    let shutdown = Shutdown::new();
    let (tx, rx) = mpsc::channel();
    let server_shutdown = shutdown.clone();
    let thread = std::thread::spawn(move || {
        let ex = Rc::new(LocalExecutor::new());
        let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
        tx.send(listener.get_ref().local_addr().expect("addr"))
            .expect("send addr");
        let handler = make();
        smol::block_on(ex.run(serve_tcp(
            listener,
            handler,
            limits,
            ex.clone(),
            server_shutdown,
        )));
    });
    let addr = rx.recv_timeout(BOUND).expect("server did not start");
    Server {
        addr,
        shutdown,
        thread: Some(thread),
    }
}

/// Answers every request with `method path body-length` and echoes the body
/// in an `x-body` header-free way: the response body is the request body.
fn echo() -> Rc<dyn Handler> {
    Rc::new(|req: Request| async move {
        Response::json(200, req.body)
            .with_header("x-method", req.method.as_str())
            .with_header("x-path", req.uri.path())
            .with_header(
                "x-peer-port",
                &req.peer.map(|p| p.port()).unwrap_or(0).to_string(),
            )
    })
}

fn short_limits() -> Limits {
    Limits {
        max_head_bytes: 1024,
        max_headers: 10,
        max_body_bytes: 64,
        head_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_secs(2),
        max_connections: 16,
        drain: Duration::from_secs(3),
    }
}

// ------------------------------------------------------------------------------ raw client

struct Client {
    r: BufReader<TcpStream>,
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

    fn error_code(&self) -> String {
        let text = String::from_utf8_lossy(&self.body).into_owned();
        let marker = r#""code":""#;
        let start = text.find(marker).map(|i| i + marker.len()).unwrap_or(0);
        let end = text[start..].find('"').map(|i| start + i).unwrap_or(start);
        text[start..end].to_string()
    }
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(BOUND)).expect("timeout");
        Client {
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).expect("write");
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("read line");
        line
    }

    /// Reads one response head (status + headers).
    fn head(&mut self) -> Resp {
        let status_line = self.line();
        assert!(
            status_line.starts_with("HTTP/1.1 "),
            "not a status line: {status_line:?}"
        );
        let status = status_line[9..12].parse().expect("status");
        let mut headers = Vec::new();
        loop {
            let line = self.line();
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').expect("header line");
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        Resp {
            status,
            headers,
            body: Vec::new(),
        }
    }

    /// Reads one whole response (content-length or chunked body).
    fn response(&mut self) -> Resp {
        let mut resp = self.head();
        if let Some(len) = resp.header("content-length") {
            let mut body = vec![0; len.parse().expect("length")];
            self.r.read_exact(&mut body).expect("body");
            resp.body = body;
        } else if resp.header("transfer-encoding") == Some("chunked") {
            while let Some(chunk) = self.chunk() {
                resp.body.extend_from_slice(&chunk);
            }
        }
        resp
    }

    /// Reads one chunk of a chunked body; `None` at the last-chunk.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        let size = self.line();
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        let mut data = vec![0; size];
        self.r.read_exact(&mut data).expect("chunk data");
        let crlf = self.line();
        assert_eq!(crlf, "\r\n");
        (size > 0).then_some(data)
    }

    /// True when the server closed the connection (EOF, or a reset after it).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.r.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

// ------------------------------------------------------------------------------ basics

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = start(Limits::default(), echo);
    let mut c = Client::connect(server.addr);
    for path in ["/a", "/b", "/c"] {
        c.send(&get(path));
        let r = c.response();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-path"), Some(path));
        assert_eq!(r.header("content-length"), Some("0"));
    }
    server.stop();
}

#[test]
fn ureq_client_reuses_its_pooled_connection() {
    let server = start(Limits::default(), echo);
    let agent = ureq::Agent::new_with_defaults();
    let url = format!("http://{}/x", server.addr);
    let mut ports = Vec::new();
    for _ in 0..3 {
        let resp = agent.get(&url).call().expect("call");
        assert_eq!(resp.status(), 200);
        let port = resp.headers()["x-peer-port"]
            .to_str()
            .expect("port")
            .to_string();
        ports.push(port);
        resp.into_body().read_to_vec().expect("body");
    }
    assert!(ports.iter().all(|p| p == &ports[0]), "ports: {ports:?}");

    let resp = agent.post(&url).send(&b"hello ureq"[..]).expect("post");
    assert_eq!(resp.headers()["x-method"], "POST");
    assert_eq!(resp.into_body().read_to_vec().expect("body"), b"hello ureq");
    server.stop();
}

#[test]
fn content_length_and_chunked_bodies_reach_the_handler() {
    let server = start(Limits::default(), echo);
    let mut c = Client::connect(server.addr);
    c.send(b"POST /cl HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(c.response().body, b"hello");

    c.send(b"POST /ch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.send(b"5\r\nhello\r\n");
    c.send(b"6\r\n world\r\n0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world");
    server.stop();
}

#[test]
fn post_without_length_has_an_empty_body() {
    let server = start(Limits::default(), echo);
    let mut c = Client::connect(server.addr);
    c.send(b"POST /empty HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    // The connection is still in sync.
    c.send(&get("/next"));
    assert_eq!(c.response().header("x-path"), Some("/next"));
    server.stop();
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = start(Limits::default(), echo);
    let mut c = Client::connect(server.addr);
    c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    assert_eq!(c.line(), "HTTP/1.1 100 Continue\r\n");
    assert_eq!(c.line(), "\r\n");
    c.send(b"data");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"data");
    server.stop();
}

#[test]
fn expect_100_with_a_too_large_body_is_refused_with_413() {
    let server = start(short_limits(), echo);
    let mut c = Client::connect(server.addr);
    c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "request_body_too_large");
    assert!(c.closed());
    server.stop();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = start(Limits::default(), echo);
    let mut c = Client::connect(server.addr);
    c.send(
        b"POST /one HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
          GET /two HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /three HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n",
    );
    let one = c.response();
    assert_eq!(
        (one.header("x-path"), one.body.as_slice()),
        (Some("/one"), &b"abc"[..])
    );
    let two = c.response();
    assert_eq!(two.header("x-path"), Some("/two"));
    let three = c.response();
    assert_eq!(
        (three.header("x-path"), three.body.as_slice()),
        (Some("/three"), &b"xy"[..])
    );
    server.stop();
}

#[test]
fn head_gets_the_length_but_no_body() {
    let server = start(Limits::default(), || {
        Rc::new(|_req: Request| async { Response::json(200, b"{\"a\":1}".to_vec()) })
    });
    let mut c = Client::connect(server.addr);
    c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = c.head();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("7"));
    // Had body bytes followed the head, this would read them as a status line.
    c.send(&get("/"));
    let r = c.response();
    assert_eq!(r.body, b"{\"a\":1}");
    server.stop();
}

#[test]
fn connection_close_closes_after_the_response() {
    let server = start(Limits::default(), echo);
    let mut c = Client::connect(server.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(c.response().status, 200);
    assert!(c.closed());
    server.stop();
}

#[test]
fn response_helpers_build_the_documented_bodies() {
    let server = start(Limits::default(), || {
        Rc::new(|req: Request| async move {
            match req.uri.path() {
                "/err" => Response::error(404, "not_found", "no \"such\" thing"),
                "/empty" => Response::empty(204).with_header("x-a", "b"),
                _ => Response::empty(200),
            }
        })
    });
    let mut c = Client::connect(server.addr);
    c.send(&get("/err"));
    let r = c.response();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.body,
        br#"{"error":{"code":"not_found","message":"no \"such\" thing","type":"invalid_request_error"}}"#
    );
    c.send(&get("/empty"));
    let r = c.head();
    assert_eq!((r.status, r.header("x-a")), (204, Some("b")));
    c.send(&get("/"));
    assert_eq!(c.response().status, 200);
    server.stop();
}

#[test]
fn large_bodies_cross_buffer_boundaries_both_ways() {
    let server = start(Limits::default(), || {
        Rc::new(|req: Request| async move {
            match req.uri.path() {
                // One stream item far larger than the output buffer.
                "/stream" => Response::stream(200, smol::stream::once(req.body)),
                _ => Response::json(200, req.body),
            }
        })
    });
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut c = Client::connect(server.addr);
    for path in ["/bytes", "/stream"] {
        c.send(
            format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        c.send(&body);
        let r = c.response();
        assert_eq!(r.status, 200);
        assert!(r.body == body, "{path}: body differs");
    }
    server.stop();
}

#[test]
fn a_head_dripping_in_byte_by_byte_is_parsed() {
    let server = start(Limits::default(), echo);
    let mut c = Client::connect(server.addr);
    c.r.get_mut().set_nodelay(true).expect("nodelay");
    for b in b"GET /drip HTTP/1.1\r\nHost: t\r\nX-A: b\r\n\r\n" {
        c.send(&[*b]);
    }
    assert_eq!(c.response().header("x-path"), Some("/drip"));
    server.stop();
}

#[test]
fn practically_infinite_limits_do_not_overflow() {
    let limits = Limits {
        head_timeout: Duration::MAX,
        body_timeout: Duration::MAX,
        idle_timeout: Duration::MAX,
        write_timeout: Duration::MAX,
        max_body_bytes: usize::MAX,
        ..Limits::default()
    };
    let server = start(limits, echo);
    let mut c = Client::connect(server.addr);
    c.send(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(c.response().body, b"abc");
    server.stop();
}

#[test]
fn debug_output_hides_header_values() {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "authorization",
        http::HeaderValue::from_static("Bearer s3cr3t"),
    );
    let req = Request {
        method: http::Method::GET,
        uri: http::Uri::from_static("/x"),
        headers,
        body: b"payload".to_vec(),
        peer: None,
        client_cert: None,
    };
    let shown = format!("{req:?}");
    assert!(shown.contains("authorization"), "{shown}");
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("payload"),
        "{shown}"
    );
    let resp = Response::empty(200).with_header("x-token", "s3cr3t");
    assert!(!format!("{resp:?}").contains("s3cr3t"));
}

#[test]
fn http10_without_keep_alive_is_closed_after_the_response() {
    let server = start(Limits::default(), echo);
    let mut c = Client::connect(server.addr);
    c.send(b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(c.response().header("x-path"), Some("/old"));
    assert!(c.closed());

    let mut c = Client::connect(server.addr);
    for _ in 0..2 {
        c.send(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(c.response().status, 200);
    }
    server.stop();
}

#[test]
fn framing_headers_from_handlers_are_replaced_and_bad_responses_become_500() {
    let server = start(Limits::default(), || {
        Rc::new(|req: Request| async move {
            match req.uri.path() {
                "/lying-length" => Response::json(200, b"four".to_vec())
                    .with_header("content-length", "100")
                    .with_header("transfer-encoding", "chunked"),
                "/informational" => Response::empty(101),
                _ => Response::empty(200).with_header("bad header", "x"),
            }
        })
    });
    let mut c = Client::connect(server.addr);
    c.send(&get("/lying-length"));
    let r = c.response();
    assert_eq!(
        (r.header("content-length"), r.body.as_slice()),
        (Some("4"), &b"four"[..])
    );
    assert_eq!(r.header("transfer-encoding"), None);
    c.send(&get("/informational"));
    let r = c.response();
    assert_eq!((r.status, r.error_code().as_str()), (500, "internal_error"));
    let mut c = Client::connect(server.addr);
    c.send(&get("/bad-header"));
    assert_eq!(c.response().status, 500);
    server.stop();
}

// ------------------------------------------------------------------------------ limits

#[test]
fn head_too_large_is_431() {
    let server = start(short_limits(), echo);
    let mut c = Client::connect(server.addr);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    c.send(big.as_bytes());
    let r = c.response();
    assert_eq!(r.status, 431);
    assert_eq!(r.error_code(), "header_too_large");
    assert!(c.closed());
    server.stop();
}

#[test]
fn too_many_headers_is_431() {
    let limits = Limits {
        max_head_bytes: 16 * 1024,
        ..short_limits()
    };
    let server = start(limits, echo);
    // 11 is over our limit; 200 is over what ureq-proto parses at all.
    for count in [11, 200] {
        let mut c = Client::connect(server.addr);
        let mut req = String::from("GET / HTTP/1.1\r\n");
        for i in 0..count {
            req.push_str(&format!("X-{i}: v\r\n"));
        }
        req.push_str("\r\n");
        assert!(req.len() < limits.max_head_bytes);
        c.send(req.as_bytes());
        let r = c.response();
        assert_eq!(r.status, 431, "{count} headers");
        assert_eq!(r.error_code(), "header_too_large");
    }
    server.stop();
}

#[test]
fn body_too_large_is_413_for_both_framings() {
    let server = start(short_limits(), echo);
    let mut c = Client::connect(server.addr);
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 65\r\n\r\n");
    let r = c.response();
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "request_body_too_large")
    );
    assert!(c.closed());

    let mut c = Client::connect(server.addr);
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..3 {
        c.send(b"20\r\n0123456789abcdef0123456789abcdef\r\n");
    }
    let r = c.response();
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "request_body_too_large")
    );
    assert!(c.closed());

    // Exactly at the limit is fine.
    let mut c = Client::connect(server.addr);
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 64\r\n\r\n");
    c.send(&[b'x'; 64]);
    assert_eq!(c.response().body.len(), 64);
    server.stop();
}

#[test]
fn slow_head_gets_408_and_close() {
    let server = start(short_limits(), echo);
    let mut c = Client::connect(server.addr);
    c.send(b"GET / HTTP/1.1\r\nHost:");
    let r = c.response();
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (408, "request_timeout")
    );
    assert!(c.closed());
    server.stop();
}

#[test]
fn slow_head_on_a_kept_alive_connection_gets_408_before_the_idle_timeout() {
    // The connection's timer is set for the long idle wait first; the head
    // wait that follows must still end at its own, earlier deadline (the
    // client's read would time out long before the idle one).
    let limits = Limits {
        idle_timeout: BOUND * 4,
        ..short_limits()
    };
    let server = start(limits, echo);
    let mut c = Client::connect(server.addr);
    c.send(&get("/"));
    assert_eq!(c.response().status, 200);
    std::thread::sleep(Duration::from_millis(100));
    c.send(b"GET / HTTP/1.1\r\nHost:");
    let r = c.response();
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (408, "request_timeout")
    );
    assert!(c.closed());
    server.stop();
}

#[test]
fn silent_new_connection_gets_408() {
    let server = start(short_limits(), echo);
    let mut c = Client::connect(server.addr);
    assert_eq!(c.response().status, 408);
    assert!(c.closed());
    server.stop();
}

#[test]
fn slow_body_gets_408_and_close() {
    let server = start(short_limits(), echo);
    let mut c = Client::connect(server.addr);
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    let r = c.response();
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (408, "request_timeout")
    );
    assert!(c.closed());
    server.stop();
}

#[test]
fn idle_keep_alive_connection_is_closed_silently() {
    let server = start(short_limits(), echo);
    let mut c = Client::connect(server.addr);
    c.send(&get("/"));
    assert_eq!(c.response().status, 200);
    // No second request: the server closes without sending anything.
    assert!(c.closed());
    server.stop();
}

#[test]
fn connections_beyond_the_cap_get_503() {
    let limits = Limits {
        max_connections: 1,
        idle_timeout: BOUND,
        ..short_limits()
    };
    let server = start(limits, echo);
    let mut first = Client::connect(server.addr);
    first.send(&get("/"));
    assert_eq!(first.response().status, 200);

    let mut second = Client::connect(server.addr);
    let r = second.response();
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "too_many_connections")
    );
    assert!(second.closed());

    // The first connection is still served.
    first.send(&get("/again"));
    assert_eq!(first.response().status, 200);
    server.stop();
}

#[test]
fn malformed_requests_get_400_and_close() {
    let server = start(short_limits(), echo);
    let cases: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/7.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for raw in cases {
        let mut c = Client::connect(server.addr);
        c.send(raw);
        let r = c.response();
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "bad_request"),
            "{}",
            String::from_utf8_lossy(raw)
        );
        assert!(c.closed());
    }
    server.stop();
}

#[test]
fn unknown_transfer_coding_is_501() {
    let server = start(short_limits(), echo);
    let mut c = Client::connect(server.addr);
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    assert_eq!(c.response().status, 501);
    assert!(c.closed());
    server.stop();
}

// ------------------------------------------------------------------------------ cancellation and streaming

/// Reports its drop on a channel.
struct Guard(mpsc::Sender<&'static str>);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.send("dropped");
    }
}

#[test]
fn client_disconnect_drops_the_pending_handler() {
    let (tx, rx) = mpsc::channel();
    let server = start(Limits::default(), move || {
        Rc::new(move |_req: Request| {
            let tx = tx.clone();
            async move {
                let _guard = Guard(tx.clone());
                let _ = tx.send("started");
                std::future::pending::<()>().await;
                Response::empty(200)
            }
        })
    });
    let mut c = Client::connect(server.addr);
    c.send(&get("/wait"));
    assert_eq!(rx.recv_timeout(BOUND), Ok("started"));
    drop(c);
    assert_eq!(rx.recv_timeout(BOUND), Ok("dropped"));
    server.stop();
}

#[test]
fn stream_chunks_arrive_while_the_stream_is_open() {
    let (chunks_tx, chunks_rx) = smol::channel::unbounded::<Vec<u8>>();
    let server = start(Limits::default(), move || {
        Rc::new(move |_req: Request| {
            let rx = chunks_rx.clone();
            async move { Response::stream(200, rx).with_header("content-type", "text/event-stream") }
        })
    });
    let mut c = Client::connect(server.addr);
    c.send(&get("/sse"));
    chunks_tx
        .send_blocking(b"data: one\n\n".to_vec())
        .expect("send");
    let head = c.head();
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    // The handler still holds the rest of the stream.
    assert_eq!(c.chunk().as_deref(), Some(&b"data: one\n\n"[..]));
    chunks_tx.send_blocking(Vec::new()).expect("send");
    chunks_tx
        .send_blocking(b"data: two\n\n".to_vec())
        .expect("send");
    assert_eq!(c.chunk().as_deref(), Some(&b"data: two\n\n"[..]));
    drop(chunks_tx);
    assert_eq!(c.chunk(), None);
    // Keep-alive continues after a streamed response.
    c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.head().status, 200);
    server.stop();
}

/// A stream that never ends and reports its drop.
struct EndlessStream(#[allow(dead_code)] Guard);

impl smol::stream::Stream for EndlessStream {
    type Item = Vec<u8>;
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Vec<u8>>> {
        std::task::Poll::Pending
    }
}

#[test]
fn client_disconnect_drops_the_response_stream() {
    let (tx, rx) = mpsc::channel();
    let server = start(Limits::default(), move || {
        Rc::new(move |_req: Request| {
            let tx = tx.clone();
            async move {
                let _ = tx.send("started");
                Response {
                    status: 200,
                    headers: Vec::new(),
                    body: Body::Stream(Box::pin(EndlessStream(Guard(tx)))),
                }
            }
        })
    });
    let mut c = Client::connect(server.addr);
    c.send(&get("/sse"));
    assert_eq!(rx.recv_timeout(BOUND), Ok("started"));
    assert_eq!(c.head().status, 200);
    drop(c);
    assert_eq!(rx.recv_timeout(BOUND), Ok("dropped"));
    server.stop();
}

// ------------------------------------------------------------------------------ shutdown

#[test]
fn shutdown_lets_the_request_in_flight_finish_and_closes_idle_ones() {
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = smol::channel::bounded::<()>(1);
    let server = start(Limits::default(), move || {
        Rc::new(move |req: Request| {
            let started = started_tx.clone();
            let release = release_rx.clone();
            async move {
                if req.uri.path() == "/slow" {
                    let _ = started.send(());
                    let _ = release.recv().await;
                }
                Response::empty(200)
            }
        })
    });
    let mut idle = Client::connect(server.addr);
    idle.send(&get("/quick"));
    assert_eq!(idle.response().status, 200);

    let mut busy = Client::connect(server.addr);
    busy.send(&get("/slow"));
    started_rx.recv_timeout(BOUND).expect("handler started");

    server.shutdown.trigger();
    assert!(idle.closed(), "idle keep-alive connection stays open");
    release_tx.send_blocking(()).expect("release");
    let r = busy.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(busy.closed());
    let addr = server.addr;
    server.stop();
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
}

#[test]
fn drain_time_over_drops_unfinished_handlers() {
    let (tx, rx) = mpsc::channel();
    let limits = Limits {
        drain: Duration::from_millis(100),
        ..Limits::default()
    };
    let server = start(limits, move || {
        Rc::new(move |_req: Request| {
            let tx = tx.clone();
            async move {
                let _guard = Guard(tx.clone());
                let _ = tx.send("started");
                std::future::pending::<()>().await;
                Response::empty(200)
            }
        })
    });
    let mut c = Client::connect(server.addr);
    c.send(&get("/forever"));
    assert_eq!(rx.recv_timeout(BOUND), Ok("started"));
    server.stop();
    assert_eq!(rx.recv_timeout(BOUND), Ok("dropped"));
    assert!(c.closed());
}

// ------------------------------------------------------------------------------ unix socket

#[cfg(unix)]
#[test]
fn unix_socket_serves_requests() {
    use mcp_tunnel::net::http_server::serve_unix;
    use std::os::unix::net::{UnixListener, UnixStream};

    let dir = std::env::temp_dir().join(format!("mcp-tunnel-http-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("health.sock");
    let shutdown = Shutdown::new();
    let server_shutdown = shutdown.clone();
    let server_path = path.clone();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let ex = Rc::new(LocalExecutor::new());
        let listener = Async::<UnixListener>::bind(&server_path).expect("bind");
        tx.send(()).expect("ready");
        smol::block_on(ex.run(serve_unix(
            listener,
            echo(),
            Limits::default(),
            ex.clone(),
            server_shutdown,
        )));
    });
    rx.recv_timeout(BOUND).expect("server did not start");
    let mut s = UnixStream::connect(&path).expect("connect");
    s.set_read_timeout(Some(BOUND)).expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("x-path: /healthz\r\n"), "{answer}");
    assert!(answer.contains("x-peer-port: 0\r\n"), "{answer}");
    shutdown.trigger();
    thread.join().expect("server thread");
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------------------ TLS

#[cfg(feature = "relay")]
mod tls {
    use super::*;
    use mcp_tunnel::net::tls_listener::{serve_tls, server_config, ClientAuth};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::{Arc, OnceLock};

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl CLI is needed for the TLS tests (apt-get install -y openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn new_ca(dir: &Path, name: &str) {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }

    fn new_leaf(dir: &Path, name: &str, ca: &str, ext: &str) {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext file");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }

    /// A CA with a server and a client certificate, plus a client from a CA the server does not trust.
    fn pki() -> &'static Path {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("mcp-tunnel-tls-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            new_ca(&dir, "ca");
            new_ca(&dir, "rogue-ca");
            let leaf = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n";
            new_leaf(
                &dir,
                "server",
                "ca",
                &format!("{leaf}extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"),
            );
            new_leaf(&dir, "client", "ca", &format!("{leaf}extendedKeyUsage=clientAuth\n"));
            new_leaf(&dir, "rogue", "rogue-ca", &format!("{leaf}extendedKeyUsage=clientAuth\n"));
            dir
        })
    }

    fn start_tls(client_auth: ClientAuth) -> Server {
        let dir = pki();
        let config = server_config(
            &dir.join("server.pem"),
            &dir.join("server.key"),
            &client_auth,
        )
        .expect("server config");
        let shutdown = Shutdown::new();
        let (tx, rx) = mpsc::channel();
        let server_shutdown = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let ex = Rc::new(LocalExecutor::new());
            let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
            tx.send(listener.get_ref().local_addr().expect("addr"))
                .expect("send addr");
            // Answers with the DER of the client certificate it saw (empty: none).
            let handler: Rc<dyn Handler> = Rc::new(|req: Request| async move {
                Response::json(200, req.client_cert.unwrap_or_default())
            });
            smol::block_on(ex.run(serve_tls(
                listener,
                config,
                handler,
                Limits::default(),
                ex.clone(),
                server_shutdown,
            )));
        });
        let addr = rx.recv_timeout(BOUND).expect("server did not start");
        Server {
            addr,
            shutdown,
            thread: Some(thread),
        }
    }

    /// One GET over TLS; `Ok(body)` only for a 200 answer.
    fn tls_get(addr: SocketAddr, client: Option<&str>) -> Result<Vec<u8>, String> {
        let dir = pki();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(dir.join("ca.pem")).expect("ca"))
            .expect("root");
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let cert = CertificateDer::from_pem_file(dir.join(format!("{name}.pem")))
                    .expect("client cert");
                let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key")))
                    .expect("client key");
                builder
                    .with_client_auth_cert(vec![cert], key)
                    .expect("client auth")
            }
        };
        let name = ServerName::try_from("localhost").expect("name");
        let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(BOUND)).expect("timeout");
        let mut tls = StreamOwned::new(conn, tcp);
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).map_err(|e| e.to_string())?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no response head")?;
        if !answer.starts_with(b"HTTP/1.1 200 OK\r\n") {
            return Err(String::from_utf8_lossy(&answer[..split]).into_owned());
        }
        Ok(answer[split + 4..].to_vec())
    }

    fn der_of(name: &str) -> Vec<u8> {
        CertificateDer::from_pem_file(pki().join(format!("{name}.pem")))
            .expect("cert")
            .to_vec()
    }

    #[test]
    fn tls_without_client_auth_serves_requests() {
        let server = start_tls(ClientAuth::Off);
        assert_eq!(tls_get(server.addr, None), Ok(Vec::new()));
        server.stop();
    }

    #[test]
    fn required_client_auth_refuses_clients_without_a_trusted_certificate() {
        let server = start_tls(ClientAuth::Required(pki().join("ca.pem")));
        assert_eq!(tls_get(server.addr, Some("client")), Ok(der_of("client")));
        assert!(
            tls_get(server.addr, None).is_err(),
            "served without a certificate"
        );
        assert!(
            tls_get(server.addr, Some("rogue")).is_err(),
            "served an untrusted certificate"
        );
        server.stop();
    }

    #[test]
    fn optional_client_auth_serves_both_and_reports_the_certificate() {
        let server = start_tls(ClientAuth::Optional(pki().join("ca.pem")));
        assert_eq!(tls_get(server.addr, None), Ok(Vec::new()));
        assert_eq!(tls_get(server.addr, Some("client")), Ok(der_of("client")));
        assert!(
            tls_get(server.addr, Some("rogue")).is_err(),
            "served an untrusted certificate"
        );
        server.stop();
    }

    #[test]
    fn setup_errors_name_the_file() {
        let dir = pki();
        let missing = dir.join("nope.key");
        let err = server_config(&dir.join("server.pem"), &missing, &ClientAuth::Off)
            .expect_err("missing key accepted");
        assert!(err.to_string().contains("nope.key"), "{err}");

        // A file with no key in it (the CA certificate).
        let err = server_config(
            &dir.join("server.pem"),
            &dir.join("ca.pem"),
            &ClientAuth::Off,
        )
        .expect_err("certificate accepted as key");
        assert!(err.to_string().contains("ca.pem"), "{err}");

        // A key that does not belong to the certificate.
        let err = server_config(
            &dir.join("server.pem"),
            &dir.join("client.key"),
            &ClientAuth::Off,
        )
        .expect_err("mismatched key accepted");
        assert!(!err.to_string().is_empty());

        let err = server_config(
            &dir.join("server.pem"),
            &dir.join("server.key"),
            &ClientAuth::Required(dir.join("server.key")),
        )
        .expect_err("key accepted as CA");
        assert!(err.to_string().contains("server.key"), "{err}");
    }
}
