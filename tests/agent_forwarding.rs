//! End-to-end forwarding: a fake control plane and fake MCP servers on loopback.

mod agent_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_support::*;

/// The MCP answer reaches the control plane byte for byte (big integers, key
/// order, escapes), with the allowlisted headers and the real status; the
/// request carries the right headers both ways.
#[test]
fn json_answer_passes_through_byte_for_byte() {
    let answer: &'static [u8] = br#"{"id":7 , "jsonrpc":"2.0","result":{"big":123456789012345678901234567890,"z":1,"a":"\u00e9\ud83d\ude00","f":1.0e+2}}"#;
    let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
    let s2 = seen.clone();
    let mcp = spawn_server(move |req, stream| {
        s2.lock().unwrap().push(req);
        respond(
            stream,
            200,
            &[
                ("Content-Type", "application/json"),
                ("Mcp-Session-Id", "sess-1"),
                ("Set-Cookie", "secret=1"),
            ],
            answer,
        );
    });
    let cp = FakeCp::start();
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}"#;
    cp.push_batch(&[jsonrpc_command(
        "req-1",
        body,
        r#","headers":{"Host":["evil.example"],"Mcp-Session-Id":["sess-1"],"X-Forwarded-For":["1.2.3.4"],"Authorization":["Bearer user-token"],"Accept-Encoding":["gzip"]}"#,
    )]);
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), &[]);
    let posts = cp.wait_posts(1);
    assert_eq!(agent.stop(), 0);

    let p = posted(&posts[0]);
    assert_eq!(p.request_id, "req-1");
    assert_eq!(p.resp_type, "jsonrpc_response");
    assert_eq!(p.resp_code, 200);
    assert_eq!(
        p.resp_json.as_deref(),
        Some(answer),
        "resp_json is the MCP bytes unchanged"
    );
    let raw = String::from_utf8(p.raw.clone()).unwrap();
    assert!(raw.contains("Mcp-Session-Id"), "{raw}");
    assert!(
        !raw.contains("Set-Cookie") && !raw.contains("secret=1"),
        "{raw}"
    );
    assert!(!raw.contains("shard-req-1"), "shard token never in a body");

    // Control-plane headers on the response post.
    let post = &posts[0];
    assert_eq!(post.header("Authorization"), Some("Bearer sk-test-key"));
    assert_eq!(post.header("X-Tunnel-Shard-Token"), Some("shard-req-1"));
    assert_eq!(post.header("Content-Type"), Some("application/json"));
    assert_eq!(post.header("X-Tunnel-Client-Name"), Some("mcp-tunnel"));
    assert!(post.header("X-Tunnel-Client-Version").is_some());
    assert!(post
        .header("User-Agent")
        .unwrap()
        .starts_with("mcp-tunnel/"));
    assert_eq!(
        post.header("X-Tunnel-MCP-Server-Info"),
        Some(r#"{"version":1,"channels":[{"name":"main"}]}"#)
    );
    let instance = post
        .header("X-Tunnel-Client-Instance-Id")
        .unwrap()
        .to_string();
    let polls = cp.with(|s| s.polls.clone());
    assert!(polls
        .iter()
        .all(|p| p.header("X-Tunnel-Client-Instance-Id") == Some(&instance)));
    assert!(
        polls[0].query().contains("limit=20"),
        "{}",
        polls[0].query()
    );
    assert!(polls[0].query().contains("timeout_ms=1000"));

    // The MCP request.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let m = &seen[0];
    assert_eq!(m.method, "POST");
    assert_eq!(m.path(), "/mcp");
    assert_eq!(m.body, body.as_bytes());
    assert_eq!(
        m.header("Host"),
        Some(mcp.to_string().as_str()),
        "Host is the MCP URL's"
    );
    assert_eq!(m.header_count("Host"), 1);
    assert_eq!(
        m.header("Accept"),
        Some("application/json, text/event-stream")
    );
    assert_eq!(m.header("Content-Type"), Some("application/json"));
    assert_eq!(m.header("Mcp-Session-Id"), Some("sess-1"));
    assert_eq!(
        m.header("Authorization"),
        Some("Bearer user-token"),
        "the client's MCP auth passes"
    );
    assert_eq!(m.header("X-Forwarded-For"), None);
    assert_eq!(
        m.header("Accept-Encoding"),
        None,
        "answers must come back uncompressed"
    );
    assert!(m.header("X-Tunnel-Shard-Token").is_none());
}

/// Notifications are posted as `jsonrpc_notify` while the stream is still
/// open, in order, before the final answer. The MCP server waits for the
/// first notification to reach the control plane before it sends the rest:
/// an agent that buffered the stream would never see the final message.
#[test]
fn sse_notifications_posted_as_they_arrive_in_order() {
    let cp = FakeCp::start();
    let cp2 = cp.clone();
    let mcp = spawn_server(move |_req, stream| {
        sse_head(stream, &[("Mcp-Session-Id", "s9")]);
        let _ = std::io::Write::write_all(
            stream,
            b": comment\n\nevent: ping\ndata: {}\n\nid: 1\ndata:\n\n",
        );
        sse_event(
            stream,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#,
        );
        cp2.wait_posts(1);
        sse_event(
            stream,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":2}}"#,
        );
        let _ = std::io::Write::write_all(
            stream,
            b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\ndata: \"params\":{\"n\":3}}\n\n",
        );
        sse_event(
            stream,
            r#"{"jsonrpc":"2.0","id":"abc","result":{"done":true}}"#,
        );
        // Stay open: the final message ends the exchange, not the socket.
        std::thread::sleep(Duration::from_secs(2));
    });
    cp.push_batch(&[jsonrpc_command(
        "r-sse",
        r#"{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{"name":"slow"}}"#,
        "",
    )]);
    let agent = start_agent(&cp, &format!("http://{mcp}/"), &[]);
    let posts = cp.wait_posts(4);
    assert_eq!(agent.stop(), 0);
    let p: Vec<Posted> = posts.iter().map(posted).collect();
    let types: Vec<&str> = p.iter().map(|p| p.resp_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "jsonrpc_notify",
            "jsonrpc_notify",
            "jsonrpc_notify",
            "jsonrpc_response"
        ]
    );
    assert!(String::from_utf8_lossy(p[0].resp_json.as_ref().unwrap()).contains("\"progress\":1"));
    assert!(String::from_utf8_lossy(p[1].resp_json.as_ref().unwrap()).contains("\"progress\":2"));
    assert_eq!(
        p[2].resp_json.as_deref(),
        Some(
            &b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\n\"params\":{\"n\":3}}"[..]
        ),
        "multi-line data joined with \\n"
    );
    assert_eq!(
        p[3].resp_json.as_deref(),
        Some(&br#"{"jsonrpc":"2.0","id":"abc","result":{"done":true}}"#[..])
    );
    assert_eq!(p[3].resp_code, 200);
    assert!(posts
        .iter()
        .all(|r| r.header("X-Tunnel-Shard-Token") == Some("shard-r-sse")));
}

#[test]
fn notification_command_gets_notify_ack_with_server_status() {
    let mcp = spawn_server(|_req, stream| respond(stream, 202, &[], b""));
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command(
        "n-1",
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        "",
    )]);
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), &[]);
    let posts = cp.wait_posts(1);
    assert_eq!(agent.stop(), 0);
    let p = posted(&posts[0]);
    assert_eq!(p.resp_type, "notify_ack");
    assert_eq!(p.resp_code, 202);
    assert!(p.resp_json.is_none());
}

#[test]
fn session_termination_sends_delete_and_reports_status() {
    let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
    let s2 = seen.clone();
    let mcp = spawn_server(move |req, stream| {
        s2.lock().unwrap().push(req);
        respond(stream, 204, &[], b"");
    });
    let cp = FakeCp::start();
    cp.push_batch(&[r#"{"request_id":"del-1","shard_token":"shard-del","command_type":"session_termination","headers":{"Mcp-Session-Id":["sess-42"]}}"#.to_string()]);
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), &[]);
    let posts = cp.wait_posts(1);
    assert_eq!(agent.stop(), 0);
    let p = posted(&posts[0]);
    assert_eq!(p.resp_type, "session_termination_response");
    assert_eq!(p.resp_code, 204);
    assert!(p.resp_json.is_none());
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].method, "DELETE");
    assert_eq!(seen[0].header("Mcp-Session-Id"), Some("sess-42"));
}

/// A JSON-RPC error for the same id keeps its body and HTTP status; any other
/// error body becomes a synthesized target_http failure without leaking it.
#[test]
fn mcp_errors_verbatim_or_target_http() {
    let mcp = spawn_server(|req, stream| {
        if req.body_str().contains("\"id\":1,") {
            respond(
                stream,
                400,
                &[("Content-Type", "application/json")],
                br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32020,"message":"Mcp-Name mismatch"}}"#,
            );
        } else {
            respond(
                stream,
                503,
                &[("Content-Type", "text/html")],
                b"<h1>internal secret page</h1>",
            );
        }
    });
    let cp = FakeCp::start();
    cp.push_batch(&[
        jsonrpc_command("e-1", &call(1), ""),
        jsonrpc_command("e-2", &call(2), ""),
    ]);
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), &[]);
    let posts = cp.wait_posts(2);
    assert_eq!(agent.stop(), 0);
    for req in &posts {
        let p = posted(req);
        match p.request_id.as_str() {
            "e-1" => {
                assert_eq!(p.resp_code, 400);
                assert_eq!(
                    p.resp_json.as_deref(),
                    Some(&br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32020,"message":"Mcp-Name mismatch"}}"#[..])
                );
            }
            "e-2" => {
                assert_eq!(p.resp_code, 502);
                assert_eq!(failure_source(&p), "target_http");
                let json = String::from_utf8(p.resp_json.unwrap()).unwrap();
                assert!(json.contains("\"upstream_status\":503"), "{json}");
                assert!(json.contains("\"id\":2"), "{json}");
                assert!(!json.contains("secret"), "{json}");
            }
            other => panic!("unexpected {other}"),
        }
    }
}

/// Commands complete in any order; a slow one does not hold up a fast one.
#[test]
fn slow_command_does_not_block_others() {
    let mcp = spawn_server(|req, stream| {
        if req.body_str().contains("\"id\":1,") {
            std::thread::sleep(Duration::from_millis(1500));
        }
        let id = if req.body_str().contains("\"id\":1,") {
            1
        } else {
            2
        };
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#);
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
    });
    let cp = FakeCp::start();
    cp.push_batch(&[
        jsonrpc_command("slow", &call(1), ""),
        jsonrpc_command("fast", &call(2), ""),
    ]);
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), &[]);
    let first = cp.wait_posts(1);
    assert_eq!(posted(&first[0]).request_id, "fast");
    cp.wait_posts(2);
    assert_eq!(agent.stop(), 0);
}

/// The runtime key authenticates the agent to the control plane only: a
/// command without its own Authorization reaches the MCP server with none.
#[test]
fn runtime_key_never_reaches_the_mcp_server() {
    let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
    let s2 = seen.clone();
    let mcp = spawn_server(move |req, stream| {
        s2.lock().unwrap().push(req);
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        );
    });
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("no-auth", &call(1), "")]);
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), &[]);
    cp.wait_posts(1);
    assert_eq!(agent.stop(), 0);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header_count("Authorization"), 0);
    assert!(
        seen[0]
            .headers
            .iter()
            .all(|(_, v)| !v.contains("sk-test-key")),
        "{:?}",
        seen[0].headers
    );
}
