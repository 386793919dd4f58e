//! The agent's outbound clients over their own TCP transport
//! (`agent::tcp_transport`): a pooled connection the server closed is noticed
//! and replaced, deadlines fire on reads and writes (also on a reused
//! connection whose socket timeout was armed for another request), an early
//! socket wake-up is not a timeout, bodies bigger than the buffers stream, and
//! a request that fits the output buffer goes out in one TCP segment.
//! Proxy CONNECT, TLS and mTLS through the same chain: agent_edge.rs, doctor.rs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use mcp_tunnel::agent::client::{agent, ClientOptions};

fn client() -> ureq::Agent {
    agent(
        &ClientOptions {
            user_agent: "transport-test".into(),
            max_idle: 4,
            max_idle_age: Duration::from_secs(30),
        },
        ureq::tls::TlsConfig::default(),
        None,
    )
}

/// Reads one request (head and `Content-Length` body); `None` at EOF.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(head)
}

fn answer(s: &mut TcpStream, body: &str) {
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).unwrap();
}

/// A server that hands each accepted connection (in order) to `script`,
/// and reports how many it accepted.
fn serve(script: impl Fn(usize, TcpStream) + Send + 'static) -> (String, mpsc::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/x", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { return };
            let _ = tx.send(i + 1);
            script(i, conn);
        }
    });
    (url, rx)
}

fn get(agent: &ureq::Agent, url: &str, timeout: Duration) -> Result<String, ureq::Error> {
    let mut resp = agent
        .get(url)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .call()?;
    resp.body_mut().read_to_string()
}

#[test]
fn a_pooled_connection_the_server_closed_is_replaced_without_a_failure() {
    let (closed_tx, closed_rx) = mpsc::channel();
    let (url, accepted) = serve(move |i, conn| {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut w = conn;
        if i == 0 {
            // One answer with keep-alive, then the server closes the connection.
            read_request(&mut r).unwrap();
            answer(&mut w, "first");
            drop((r, w));
            closed_tx.send(()).unwrap();
        } else {
            while read_request(&mut r).is_some() {
                answer(&mut w, "again");
            }
        }
    });
    let a = client();
    assert_eq!(get(&a, &url, Duration::from_secs(10)).unwrap(), "first");
    closed_rx.recv().unwrap();
    // Let the FIN arrive at the client's socket.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(get(&a, &url, Duration::from_secs(10)).unwrap(), "again");
    assert_eq!(get(&a, &url, Duration::from_secs(10)).unwrap(), "again");
    let count = accepted.try_iter().last();
    assert_eq!(
        count,
        Some(2),
        "the closed connection is replaced once, then reused"
    );
}

#[test]
fn a_pooled_connection_with_unasked_bytes_is_not_reused() {
    let (url, accepted) = serve(move |i, conn| {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut w = conn;
        if i == 0 {
            read_request(&mut r).unwrap();
            answer(&mut w, "ok");
            // Bytes after the response nobody asked for: the connection is
            // not trusted again, though it stays open and would answer. (Later
            // than the answer, so they are not read with it.)
            thread::sleep(Duration::from_millis(50));
            w.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
            while read_request(&mut r).is_some() {
                answer(&mut w, "stale");
            }
        } else {
            while read_request(&mut r).is_some() {
                answer(&mut w, "fresh");
            }
        }
    });
    let a = client();
    assert_eq!(get(&a, &url, Duration::from_secs(10)).unwrap(), "ok");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(get(&a, &url, Duration::from_secs(10)).unwrap(), "fresh");
    assert_eq!(accepted.try_iter().last(), Some(2));
}

/// A server whose connection answers the first request at once and holds each
/// later one for `delay` before answering.
fn slow_after_first(delay: Duration) -> String {
    serve(move |_, conn| {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut w = conn;
        let mut n = 0;
        while read_request(&mut r).is_some() {
            if n > 0 {
                thread::sleep(delay);
            }
            n += 1;
            answer(&mut w, "late");
        }
    })
    .0
}

#[test]
fn a_read_deadline_fires_on_a_slow_server() {
    let (url, _) = serve(|_, conn| {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        read_request(&mut r);
        thread::sleep(Duration::from_secs(20));
        drop(conn);
    });
    let started = Instant::now();
    let err = get(&client(), &url, Duration::from_millis(400)).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, ureq::Error::Timeout(_)), "{err:?}");
    assert!(took >= Duration::from_millis(400), "fired early: {took:?}");
    assert!(took < Duration::from_secs(10), "fired late: {took:?}");
}

#[test]
fn a_shorter_deadline_on_a_reused_connection_fires_on_time() {
    // The first request arms the socket for ~10 s; the second has 400 ms.
    let url = slow_after_first(Duration::from_secs(20));
    let a = client();
    assert_eq!(get(&a, &url, Duration::from_secs(10)).unwrap(), "late");
    let started = Instant::now();
    let err = get(&a, &url, Duration::from_millis(400)).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, ureq::Error::Timeout(_)), "{err:?}");
    assert!(
        took < Duration::from_secs(5),
        "the 10 s socket timeout was kept: {took:?}"
    );
}

#[test]
fn an_answer_after_the_armed_socket_timeout_but_before_the_deadline_arrives() {
    // The first request arms ~1.75 s (7/8 of 2 s); the second (3 s) keeps it,
    // wakes before its deadline, and must read on instead of timing out.
    let url = slow_after_first(Duration::from_millis(2200));
    let a = client();
    assert_eq!(get(&a, &url, Duration::from_secs(2)).unwrap(), "late");
    assert_eq!(get(&a, &url, Duration::from_secs(3)).unwrap(), "late");
}

#[test]
fn a_write_deadline_fires_when_the_server_reads_nothing() {
    let (url, _) = serve(|_, conn| {
        thread::sleep(Duration::from_secs(20));
        drop(conn);
    });
    // Far more than loopback socket buffers hold.
    let body = vec![b'x'; 64 << 20];
    let started = Instant::now();
    let err = client()
        .post(&url)
        .config()
        .timeout_global(Some(Duration::from_millis(500)))
        .build()
        .send(&body[..])
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, ureq::Error::Timeout(_)), "{err:?}");
    assert!(took < Duration::from_secs(10), "fired late: {took:?}");
}

#[test]
fn bodies_larger_than_the_buffers_stream_both_ways() {
    let big: String = (0..(3 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let expect = big.clone();
    let (url, _) = serve(move |_, conn| {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut w = conn;
        while let Some(head) = read_request(&mut r) {
            // Answers with the size of the request body it read, then a big body.
            let len = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .unwrap_or_default();
            answer(&mut w, &format!("{len}:{big}"));
        }
    });
    let a = client();
    let sent = vec![b'y'; 2 << 20];
    for _ in 0..2 {
        let mut resp = a
            .post(&url)
            .config()
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .send(&sent[..])
            .unwrap();
        let text = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .unwrap();
        assert_eq!(text, format!("{}:{expect}", 2 << 20));
    }
}

#[test]
fn a_response_head_larger_than_the_input_buffer_is_refused_as_such() {
    let (url, _) = serve(|_, conn| {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut w = conn;
        read_request(&mut r);
        let filler = "a".repeat(40 * 1024);
        let _ = write!(
            w,
            "HTTP/1.1 200 OK\r\nX-Filler: {filler}\r\nContent-Length: 0\r\n\r\n"
        );
        thread::sleep(Duration::from_secs(2));
    });
    let err = get(&client(), &url, Duration::from_secs(10)).unwrap_err();
    assert!(
        matches!(err, ureq::Error::LargeResponseHeader(..)),
        "{err:?}"
    );
}

/// Data-carrying TCP segments `conn` has received so far (Linux
/// `tcp_info.tcpi_data_segs_in`): how many sends a loopback peer needed.
fn data_segments_in(conn: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn getsockopt(fd: i32, level: i32, name: i32, value: *mut u8, len: *mut u32) -> i32;
    }
    const IPPROTO_TCP: i32 = 6;
    const TCP_INFO: i32 = 11;
    const DATA_SEGS_IN: usize = 152;
    let mut info = [0u8; 256];
    let mut len = info.len() as u32;
    // SAFETY: `info` is writable for `len` bytes; the kernel writes at most that.
    let rc = unsafe {
        getsockopt(
            conn.as_raw_fd(),
            IPPROTO_TCP,
            TCP_INFO,
            info.as_mut_ptr(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    assert!(
        len as usize >= DATA_SEGS_IN + 4,
        "kernel too old for tcpi_data_segs_in"
    );
    u32::from_ne_bytes(info[DATA_SEGS_IN..DATA_SEGS_IN + 4].try_into().unwrap())
}

/// A server that reads each request whole (head and the body `expect_body`)
/// and answers with how many TCP segments with data it took, and whether the
/// body was the one expected.
fn segments_per_request(expect_body: Vec<u8>) -> String {
    let (url, _) = serve(move |_, conn| {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut w = conn;
        // A new connection: the handshake carried no data.
        let mut before = 0;
        loop {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(n) if n > 0 => {}
                    _ => return,
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; expect_body.len()];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            let now = data_segments_in(&w);
            let whole = body == expect_body && head.contains(&format!("{}", body.len()));
            answer(&mut w, &format!("{} {whole}", now - before));
            before = now;
        }
    });
    url
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> String {
    agent
        .post(url)
        .config()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .send(body)
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

#[test]
fn a_request_that_fits_the_buffer_is_one_segment() {
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_vec();
    let url = segments_per_request(body.clone());
    let a = client();
    // A new connection, then pooled ones: head and body in one send each time.
    for _ in 0..3 {
        assert_eq!(post(&a, &url, &body), "1 true");
    }
}

#[test]
fn a_body_larger_than_the_buffer_goes_out_whole() {
    // More than the 16 KiB output buffer, less than the socket buffers.
    let body: Vec<u8> = (0..40 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let url = segments_per_request(body.clone());
    let a = client();
    for _ in 0..2 {
        let said = post(&a, &url, &body);
        assert!(said.ends_with(" true"), "body damaged: {said}");
    }
}

#[test]
fn an_endpoint_sends_the_host_ureq_would() {
    use mcp_tunnel::agent::client::Endpoint;
    let (tx, rx) = mpsc::channel();
    let (url, _) = serve(move |_, conn| {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut w = conn;
        while let Some(head) = read_request(&mut r) {
            let host: Vec<String> = head
                .lines()
                .filter(|l| l.to_ascii_lowercase().starts_with("host:"))
                .map(str::to_string)
                .collect();
            let _ = tx.send(host);
            answer(&mut w, "ok");
        }
    });
    let a = client();
    let url = format!("{url}?q=1");
    let call = |req: ureq::RequestBuilder<ureq::typestate::WithoutBody>| {
        req.call().unwrap().body_mut().read_to_string().unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap()
    };
    let by_ureq = call(a.get(&url));
    let by_endpoint = call(Endpoint::new(url.clone()).get(&a));
    assert_eq!(by_ureq.len(), 1, "{by_ureq:?}");
    assert_eq!(by_endpoint, by_ureq);
}
