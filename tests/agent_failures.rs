//! Hostile or broken MCP servers and commands: each gets its documented
//! outcome, never a stall or a late post.

mod agent_support;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_support::*;

fn one_failure(mcp: std::net::SocketAddr, extra: &[&str]) -> Posted {
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("f-1", &call(5), "")]);
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), extra);
    let posts = cp.wait_posts(1);
    assert_eq!(agent.stop(), 0);
    assert_eq!(posts.len(), 1);
    let p = posted(&posts[0]);
    assert_eq!(p.request_id, "f-1");
    assert_eq!(p.resp_type, "jsonrpc_response");
    let json = String::from_utf8(p.resp_json.clone().unwrap()).unwrap();
    assert!(
        json.contains("\"id\":5"),
        "synthesized error keeps the request id: {json}"
    );
    assert!(
        !json.contains("127.0.0.1"),
        "no target URL in failures: {json}"
    );
    p
}

#[test]
fn garbage_instead_of_http_is_protocol() {
    let mcp = spawn_server(|_req, stream| {
        let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\nthis is not http\r\n\r\n");
    });
    let p = one_failure(mcp, &[]);
    assert_eq!(failure_source(&p), "protocol");
    assert_eq!(p.resp_code, 502);
}

#[test]
fn malformed_json_body_is_protocol() {
    let mcp = spawn_server(|_req, stream| {
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            b"{\"jsonrpc\":\"2.0\",\"id\":5,\"res",
        );
    });
    let p = one_failure(mcp, &[]);
    assert_eq!(failure_source(&p), "protocol");
    assert!(String::from_utf8(p.resp_json.unwrap())
        .unwrap()
        .contains("malformed_json"));
}

#[test]
fn mismatched_id_is_protocol() {
    let mcp = spawn_server(|_req, stream| {
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            br#"{"jsonrpc":"2.0","id":6,"result":{}}"#,
        );
    });
    assert_eq!(failure_source(&one_failure(mcp, &[])), "protocol");
}

#[test]
fn server_to_client_request_on_stream_is_protocol() {
    let mcp = spawn_server(|_req, stream| {
        sse_head(stream, &[]);
        sse_event(
            stream,
            r#"{"jsonrpc":"2.0","id":"srv-1","method":"sampling/createMessage","params":{}}"#,
        );
        std::thread::sleep(Duration::from_secs(2));
    });
    assert_eq!(failure_source(&one_failure(mcp, &[])), "protocol");
}

#[test]
fn stream_closed_before_the_answer_is_transport_closed() {
    let mcp = spawn_server(|_req, stream| {
        sse_head(stream, &[]);
        sse_event(
            stream,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#,
        );
        let _ = stream.write_all(b"data: {\"jsonrpc\":\"2.0\",\"id\":5,");
        // Dropping the stream closes it mid-event.
    });
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("f-1", &call(5), "")]);
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), &[]);
    let posts = cp.wait_posts(2);
    assert_eq!(agent.stop(), 0);
    assert_eq!(posted(&posts[0]).resp_type, "jsonrpc_notify");
    let last = posted(&posts[1]);
    assert_eq!(last.resp_type, "jsonrpc_response");
    assert_eq!(failure_source(&last), "transport_closed");
}

#[test]
fn json_body_cut_short_is_transport_closed() {
    let mcp = spawn_server(|_req, stream| {
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\":",
        );
    });
    assert_eq!(failure_source(&one_failure(mcp, &[])), "transport_closed");
}

#[test]
fn connection_refused_is_connect() {
    let p = one_failure(dead_addr(), &[]);
    assert_eq!(failure_source(&p), "connect");
    assert!(String::from_utf8(p.resp_json.unwrap())
        .unwrap()
        .contains("\"upstream_response_received\":false"));
}

/// Without a response_timeout, --mcp.max-request-duration caps the exchange.
#[test]
fn server_that_never_answers_is_timeout() {
    let mcp = spawn_server(|_req, _stream| std::thread::sleep(Duration::from_secs(5)));
    let p = one_failure(mcp, &["--mcp.max-request-duration", "300ms"]);
    assert_eq!(failure_source(&p), "timeout");
    assert_eq!(p.resp_code, 504);
}

#[test]
fn stream_that_never_ends_is_timeout() {
    let mcp = spawn_server(|_req, stream| {
        sse_head(stream, &[]);
        for _ in 0..200 {
            if stream
                .write_all(b": keep-alive\n\nevent: ping\ndata: {}\n\n")
                .is_err()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let p = one_failure(mcp, &["--mcp.max-request-duration", "300ms"]);
    assert_eq!(failure_source(&p), "timeout");
}

/// `0s` is already expired: MCP is not contacted and nothing is posted. A
/// second command after it (one worker, so in order) shows the loop went on.
#[test]
fn expired_command_is_dropped_without_contacting_mcp() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let mcp = spawn_server(move |_req, stream| {
        h2.fetch_add(1, Ordering::SeqCst);
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            br#"{"jsonrpc":"2.0","id":2,"result":{}}"#,
        );
    });
    let cp = FakeCp::start();
    cp.push_batch(&[
        jsonrpc_command("expired", &call(1), r#","response_timeout":"0s""#),
        jsonrpc_command("ok", &call(2), r#","response_timeout":"30s""#),
    ]);
    let agent = start_agent(
        &cp,
        &format!("http://{mcp}/mcp"),
        &["--mcp.max-concurrent-requests", "1"],
    );
    let posts = cp.wait_posts(1);
    assert_eq!(agent.stop(), 0);
    assert_eq!(posts.len(), 1);
    assert_eq!(posted(&posts[0]).request_id, "ok");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "only the live command reached MCP"
    );
}

/// The deadline passes while MCP works: the connection is dropped and no
/// (late, synthesized) answer is posted.
#[test]
fn deadline_during_mcp_work_posts_nothing() {
    let mcp = spawn_server(|req, stream| {
        if req.body_str().contains("\"id\":1,") {
            std::thread::sleep(Duration::from_millis(1500));
            respond(
                stream,
                200,
                &[("Content-Type", "application/json")],
                br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            );
        } else {
            respond(
                stream,
                200,
                &[("Content-Type", "application/json")],
                br#"{"jsonrpc":"2.0","id":2,"result":{}}"#,
            );
        }
    });
    let cp = FakeCp::start();
    cp.push_batch(&[
        jsonrpc_command("late", &call(1), r#","response_timeout":"300ms""#),
        jsonrpc_command("after", &call(2), ""),
    ]);
    let agent = start_agent(
        &cp,
        &format!("http://{mcp}/mcp"),
        &["--mcp.max-concurrent-requests", "1"],
    );
    let posts = cp.wait_posts(1);
    // Give a late post every chance to show up before looking.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(agent.stop(), 0);
    let posts_after = cp.posts();
    assert_eq!(
        posts_after.len(),
        1,
        "nothing posted for the expired command"
    );
    assert_eq!(posted(&posts[0]).request_id, "after");
}

/// An unusable poll body is logged and skipped; the next poll is served.
#[test]
fn malformed_poll_body_then_loop_goes_on() {
    let mcp = spawn_server(|_req, stream| {
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            br#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
        );
    });
    let cp = FakeCp::start();
    cp.push_raw(b"{\"commands\":[{\"request_id\":".to_vec());
    cp.push_raw(vec![0xff, 0xfe, b'{']);
    cp.push_batch(&[
        r#"{"request_id":"weird","shard_token":"s","command_type":"teleport"}"#.to_string(),
        jsonrpc_command("good", &call(3), r#","unknown_field":{"x":[1,2,3]}"#),
    ]);
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), &[]);
    let posts = cp.wait_posts(1);
    assert_eq!(agent.stop(), 0);
    assert_eq!(posts.len(), 1);
    assert_eq!(posted(&posts[0]).request_id, "good");
}

/// A 2 MB answer passes; one over the 32 MiB cap is refused without reading it all.
#[test]
fn large_answers_pass_and_oversized_ones_are_refused() {
    let mcp = spawn_server(|req, stream| {
        let size = if req.body_str().contains("\"id\":1,") {
            2 << 20
        } else {
            33 << 20
        };
        let id = if size == 2 << 20 { 1 } else { 2 };
        let mut body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"blob":""#).into_bytes();
        body.resize(body.len() + size, b'x');
        body.extend_from_slice(b"\"}}");
        respond(stream, 200, &[("Content-Type", "application/json")], &body);
    });
    let cp = FakeCp::start();
    cp.push_batch(&[
        jsonrpc_command("big", &call(1), ""),
        jsonrpc_command("huge", &call(2), ""),
    ]);
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), &[]);
    let posts = cp.wait_posts(2);
    assert_eq!(agent.stop(), 0);
    for req in &posts {
        let p = posted(req);
        if p.request_id == "big" {
            assert_eq!(p.resp_code, 200);
            assert!(p.resp_json.unwrap().len() > 2 << 20);
        } else {
            assert_eq!(failure_source(&p), "protocol");
            assert!(String::from_utf8(p.resp_json.unwrap())
                .unwrap()
                .contains("response_body_too_large"));
        }
    }
}

/// Progress does not extend the deadline: a stream that keeps sending
/// notifications past `response_timeout` is cut at the deadline; the
/// notifications sent before it were posted, the late final answer is not,
/// and no synthesized error is posted either.
#[test]
fn progress_does_not_extend_the_deadline() {
    let mcp = spawn_server(|req, stream| {
        if req.body_str().contains("\"id\":1,") {
            sse_head(stream, &[]);
            for i in 0..20 {
                if !sse_event(
                    stream,
                    &format!(
                        r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progress":{i}}}}}"#
                    ),
                ) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            sse_event(stream, r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        } else {
            respond(
                stream,
                200,
                &[("Content-Type", "application/json")],
                br#"{"jsonrpc":"2.0","id":2,"result":{}}"#,
            );
        }
    });
    let cp = FakeCp::start();
    cp.push_batch(&[
        jsonrpc_command("chatty", &call(1), r#","response_timeout":"700ms""#),
        jsonrpc_command("after", &call(2), ""),
    ]);
    let agent = start_agent(
        &cp,
        &format!("http://{mcp}/mcp"),
        &["--mcp.max-concurrent-requests", "1"],
    );
    let end = std::time::Instant::now() + WAIT;
    while !cp.posts().iter().any(|p| posted(p).request_id == "after") {
        assert!(std::time::Instant::now() < end, "no post for after");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(agent.stop(), 0);
    let chatty: Vec<String> = cp
        .posts()
        .iter()
        .map(posted)
        .filter(|p| p.request_id == "chatty")
        .map(|p| p.resp_type)
        .collect();
    assert!(
        !chatty.is_empty(),
        "progress before the deadline was posted"
    );
    assert!(
        chatty.iter().all(|t| t == "jsonrpc_notify"),
        "no final after the deadline: {chatty:?}"
    );
}

/// When the deadline passes during MCP work the agent closes that MCP
/// connection (for 2026-07-28 servers closing the stream is the
/// cancellation): the server's writes on the open SSE stream start failing.
#[test]
fn deadline_closes_the_mcp_connection() {
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    let tx = std::sync::Mutex::new(tx);
    let mcp = spawn_server(move |_req, stream| {
        sse_head(stream, &[]);
        let end = std::time::Instant::now() + WAIT;
        let mut closed = false;
        while std::time::Instant::now() < end {
            if stream.write_all(b": keep-alive\n\n").is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = tx.lock().unwrap().send(closed);
    });
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command(
        "cut",
        &call(1),
        r#","response_timeout":"500ms""#,
    )]);
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), &[]);
    let closed = rx.recv_timeout(WAIT + Duration::from_secs(5)).unwrap();
    assert_eq!(agent.stop(), 0);
    assert!(
        closed,
        "the agent kept the MCP stream open past the deadline"
    );
    assert!(cp.posts().is_empty(), "nothing posted after the deadline");
}
