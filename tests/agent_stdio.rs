//! stdio MCP targets and several channels on one tunnel: the agent against a
//! fake control plane and small stdio servers (tests/fixtures/fake_stdio_server.py).

mod agent_support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_support::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/fake_stdio_server.py"
);

fn stdio(channel: &str, mode: &str) -> String {
    format!("channel={channel},command=python3 -u '{SCRIPT}' {mode}")
}

fn tool(id: u32, name: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{{}}}}}}"#
    )
}

fn tool_args(id: u32, name: &str, args: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{args}}}}}"#
    )
}

fn initialize(id: u32) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"2025-11-25","capabilities":{{}},"clientInfo":{{"name":"t","version":"1"}}}}}}"#
    )
}

fn json_of(p: &Posted) -> String {
    String::from_utf8(p.resp_json.clone().expect("resp_json")).unwrap()
}

fn pid_of(p: &Posted) -> u32 {
    let j = json_of(p);
    let i = j
        .find("\"pid\": ")
        .unwrap_or_else(|| panic!("no pid in {j}"))
        + 7;
    j[i..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// All posts for `request_id`, in arrival order.
fn posts_for(cp: &FakeCp, request_id: &str) -> Vec<Posted> {
    cp.posts()
        .iter()
        .map(posted)
        .filter(|p| p.request_id == request_id)
        .collect()
}

/// Waits for the final post of `request_id`; returns every post for it.
fn wait_final(cp: &FakeCp, request_id: &str) -> Vec<Posted> {
    let until = Instant::now() + WAIT;
    loop {
        let ps = posts_for(cp, request_id);
        if ps.iter().any(|p| p.resp_type != "jsonrpc_notify") {
            return ps;
        }
        assert!(
            Instant::now() < until,
            "no final post for {request_id}; posts: {:?}",
            cp.posts().iter().map(|r| r.body_str()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn last(ps: &[Posted]) -> &Posted {
    ps.last().unwrap()
}

fn alive(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid …": the state follows the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    after.chars().next()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn notifications_posted_in_order_before_the_final() {
    let cp = FakeCp::start();
    cp.push_batch(&[
        jsonrpc_command("init-1", &initialize(1), ""),
        jsonrpc_command("n-1", &tool(2, "notify3"), ""),
    ]);
    let agent = start_agent_with(&cp, &["--mcp.command", &stdio("main", "normal")]);
    let init = wait_final(&cp, "init-1");
    assert_eq!(init.len(), 2, "list_changed, then the answer");
    assert_eq!(init[0].resp_type, "jsonrpc_notify");
    assert!(json_of(&init[0]).contains("notifications/tools/list_changed"));
    assert_eq!(init[1].resp_type, "jsonrpc_response");
    assert_eq!(init[1].resp_code, 200);
    assert!(
        String::from_utf8_lossy(&init[1].raw).contains(r#""Content-Type":["application/json"]"#)
    );

    let ps = wait_final(&cp, "n-1");
    let kinds: Vec<&str> = ps.iter().map(|p| p.resp_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "jsonrpc_notify",
            "jsonrpc_notify",
            "jsonrpc_notify",
            "jsonrpc_response"
        ]
    );
    for (k, p) in ps[..3].iter().enumerate() {
        assert!(
            json_of(p).contains(&format!("\"progress\": {k}")),
            "{}",
            json_of(p)
        );
    }
    let fin = json_of(&ps[3]);
    assert!(
        fin.starts_with(r#"{"jsonrpc": "2.0", "id": 2, "result""#),
        "bytes as written: {fin}"
    );

    // A single stdio `main` declares process affinity and polls without a channel list.
    let polls = cp.with(|s| s.polls.clone());
    assert_eq!(
        polls[0].header("X-Tunnel-MCP-Server-Info"),
        Some(r#"{"version":1,"channels":[{"name":"main","proc_affinity":true}]}"#)
    );
    assert!(!polls[0].query().contains("channel="));
    assert_eq!(agent.stop(), 0);
}

#[test]
fn crash_mid_call_is_transport_closed_then_restarted() {
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("c-1", &tool(1, "echo"), "")]);
    let agent = start_agent_with(&cp, &["--mcp.command", &stdio("main", "normal")]);
    let first = pid_of(last(&wait_final(&cp, "c-1")));

    cp.push_batch(&[jsonrpc_command("c-2", &tool(2, "crash"), "")]);
    let ps = wait_final(&cp, "c-2");
    let fin = last(&ps);
    assert_eq!(fin.resp_code, 502);
    assert_eq!(failure_source(fin), "transport_closed");
    assert!(json_of(fin).contains("\"id\":2"));

    cp.push_batch(&[jsonrpc_command("c-3", &tool(3, "echo"), "")]);
    let ps = wait_final(&cp, "c-3");
    let next = last(&ps);
    assert_eq!(next.resp_code, 200, "{}", json_of(next));
    let second = pid_of(next);
    assert_ne!(first, second, "a new child answers after the crash");
    assert_ne!(alive(first), Some('Z'), "the crashed child was reaped");
    assert_eq!(agent.stop(), 0);
}

#[test]
fn deadline_retires_the_id_and_the_same_child_answers_next() {
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("h-0", &tool(1, "echo"), "")]);
    let agent = start_agent_with(&cp, &["--mcp.command", &stdio("main", "normal")]);
    let pid = pid_of(last(&wait_final(&cp, "h-0")));
    // The hang's answer arrives late, just before the echo's: it must be discarded.
    cp.push_batch(&[
        jsonrpc_command("h-1", &tool(7, "hang"), r#","response_timeout":"1s""#),
        jsonrpc_command("h-2", &tool(8, "echo"), ""),
    ]);
    let ps = wait_final(&cp, "h-2");
    assert_eq!(ps.len(), 1);
    let j = json_of(&ps[0]);
    assert!(j.contains("\"args\"") && !j.contains("late"), "{j}");
    assert_eq!(pid_of(&ps[0]), pid, "the same child, pipes kept open");
    assert!(
        posts_for(&cp, "h-1").is_empty(),
        "nothing posted past the deadline"
    );
    assert_eq!(agent.stop(), 0);
}

/// Two clients of one channel may both use id 7: the second must get its own
/// answer, never the late answer to the first (which timed out).
#[test]
fn a_late_answer_never_answers_a_later_request_with_the_same_id() {
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("s-0", &tool(1, "echo"), "")]);
    let agent = start_agent_with(&cp, &["--mcp.command", &stdio("main", "normal")]);
    wait_final(&cp, "s-0");
    cp.push_batch(&[
        jsonrpc_command("s-1", &tool(7, "hang"), r#","response_timeout":"1s""#),
        jsonrpc_command("s-2", &tool(7, "echo"), ""),
    ]);
    let ps = wait_final(&cp, "s-2");
    assert_eq!(ps.len(), 1);
    let j = json_of(&ps[0]);
    assert!(j.contains("\"args\"") && !j.contains("late"), "{j}");
    assert!(
        j.replace(' ', "").contains("\"id\":7"),
        "the client's own id comes back: {j}"
    );
    assert!(posts_for(&cp, "s-1").is_empty());
    assert_eq!(agent.stop(), 0);
}

/// A restarted child has lost the client's session: the agent gives it the
/// client's initialize (and initialized notification) again before the next
/// call, and that call gets its own answer.
#[test]
fn a_restarted_child_is_initialized_again_before_the_next_call() {
    let cp = FakeCp::start();
    let agent = start_agent_with(&cp, &["--mcp.command", &stdio("main", "strict")]);
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    cp.push_batch(&[jsonrpc_command("i-1", &initialize(1), "")]);
    wait_final(&cp, "i-1");
    cp.push_batch(&[jsonrpc_command("i-2", initialized, "")]);
    wait_final(&cp, "i-2");
    cp.push_batch(&[jsonrpc_command("i-3", &tool(3, "echo"), "")]);
    let first = pid_of(last(&wait_final(&cp, "i-3")));

    cp.push_batch(&[jsonrpc_command("i-4", &tool(4, "crash"), "")]);
    assert_eq!(
        failure_source(last(&wait_final(&cp, "i-4"))),
        "transport_closed"
    );

    cp.push_batch(&[jsonrpc_command("i-5", &tool(5, "echo"), "")]);
    let ps = wait_final(&cp, "i-5");
    assert_eq!(ps.len(), 1, "the replay's answer is posted to nobody");
    let j = json_of(&ps[0]);
    assert_eq!(ps[0].resp_code, 200, "{j}");
    let compact = j.replace(' ', "");
    assert!(
        compact.contains("\"id\":5") && compact.contains("\"inits\":1"),
        "{j}"
    );
    assert_ne!(pid_of(&ps[0]), first, "a new child answered");
    assert_eq!(agent.stop(), 0);
}

#[test]
fn garbage_lines_are_skipped() {
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("g-1", &tool(1, "garbage"), "")]);
    let agent = start_agent_with(&cp, &["--mcp.command", &stdio("main", "normal")]);
    let ps = wait_final(&cp, "g-1");
    assert_eq!(ps.len(), 1);
    assert!(json_of(&ps[0]).contains("\"after\": \"garbage\""));
    assert_eq!(agent.stop(), 0);
}

#[test]
fn endless_line_is_a_protocol_failure_without_memory_growth() {
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("e-0", &tool(1, "echo"), "")]);
    let agent = start_agent_with(&cp, &["--mcp.command", &stdio("main", "normal")]);
    let pid = pid_of(last(&wait_final(&cp, "e-0")));
    let before = peak_rss_kib();
    // 128 MiB on one line, four times the 32 MiB cap.
    cp.push_batch(&[jsonrpc_command(
        "e-1",
        &tool_args(2, "endless", r#"{"mib":128}"#),
        "",
    )]);
    let ps = wait_final(&cp, "e-1");
    let fin = last(&ps);
    assert_eq!(failure_source(fin), "protocol");
    assert!(json_of(fin).contains("response_body_too_large"));
    cp.push_batch(&[jsonrpc_command("e-2", &tool(3, "echo"), "")]);
    let next = wait_final(&cp, "e-2");
    assert_eq!(
        next.len(),
        1,
        "the rest of the long line and its answer were skipped"
    );
    assert_eq!(pid_of(&next[0]), pid, "resynchronised on the same child");
    let grown_mib = peak_rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 96,
        "peak memory grew by {grown_mib} MiB for a 128 MiB line"
    );
    assert_eq!(agent.stop(), 0);
}

#[test]
fn initialize_timeout_kills_the_child() {
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("i-0", &tool(1, "echo"), "")]);
    let agent = start_agent_with(&cp, &["--mcp.command", &stdio("main", "init_hang")]);
    let first = pid_of(last(&wait_final(&cp, "i-0")));
    cp.push_batch(&[
        jsonrpc_command("i-1", &initialize(2), r#","response_timeout":"1s""#),
        jsonrpc_command("i-2", &tool(3, "echo"), ""),
    ]);
    let next = wait_final(&cp, "i-2");
    assert_ne!(
        pid_of(last(&next)),
        first,
        "a fresh child after the initialize timeout"
    );
    assert!(posts_for(&cp, "i-1").is_empty());
    assert_ne!(alive(first), Some('Z'));
    assert_eq!(agent.stop(), 0);
}

#[test]
fn session_termination_is_405_and_serving_goes_on() {
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("s-0", &tool(1, "echo"), "")]);
    let agent = start_agent_with(&cp, &["--mcp.command", &stdio("main", "normal")]);
    let pid = pid_of(last(&wait_final(&cp, "s-0")));
    cp.push_batch(&[
        r#"{"request_id":"s-1","shard_token":"shard-s-1","command_type":"session_termination","headers":{"Mcp-Session-Id":["abc"]}}"#.to_string(),
        jsonrpc_command("s-2", &tool(2, "echo"), ""),
    ]);
    let t = wait_final(&cp, "s-1");
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].resp_type, "session_termination_response");
    assert_eq!(t[0].resp_code, 405);
    assert!(t[0].resp_json.is_none());
    assert_eq!(pid_of(last(&wait_final(&cp, "s-2"))), pid);
    assert_eq!(agent.stop(), 0);
}

#[test]
fn server_requests_are_answered_and_the_call_completes() {
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("q-1", &tool(1, "ask_client"), "")]);
    let agent = start_agent_with(&cp, &["--mcp.command", &stdio("main", "normal")]);
    let ps = wait_final(&cp, "q-1");
    assert_eq!(ps.len(), 1);
    let j = json_of(&ps[0]);
    assert!(
        j.contains(r#"{"jsonrpc": "2.0", "id": "srv-1", "error": {"code": -32601"#),
        "{j}"
    );
    assert!(
        j.contains(r#"{"jsonrpc": "2.0", "id": "srv-2", "result": {}}"#),
        "{j}"
    );
    assert_eq!(agent.stop(), 0);
}

#[test]
fn stop_leaves_no_zombie() {
    let cp = FakeCp::start();
    cp.push_batch(&[
        on("polite", jsonrpc_command("z-1", &tool(1, "echo"), "")),
        on("stubborn", jsonrpc_command("z-2", &tool(1, "echo"), "")),
    ]);
    let agent = start_agent_with(
        &cp,
        &[
            "--mcp.command",
            &stdio("polite", "normal"),
            "--mcp.command",
            &stdio("stubborn", "ignore_term"),
        ],
    );
    let polite = pid_of(last(&wait_final(&cp, "z-1")));
    let stubborn = pid_of(last(&wait_final(&cp, "z-2")));
    let me = std::process::id();
    assert_eq!(parent_of(polite), Some(me));
    assert_eq!(parent_of(stubborn), Some(me));
    assert_eq!(agent.stop(), 0);
    for pid in [polite, stubborn] {
        assert_eq!(
            alive(pid),
            None,
            "child {pid} is gone and reaped (state {:?})",
            alive(pid)
        );
    }
}

#[test]
fn unknown_channel_gets_an_error_and_the_loop_goes_on() {
    let cp = FakeCp::start();
    cp.push_batch(&[
        on("nope", jsonrpc_command("u-1", &tool(1, "echo"), "")),
        jsonrpc_command("u-2", &tool(2, "echo"), ""),
    ]);
    let agent = start_agent_with(&cp, &["--mcp.command", &stdio("main", "normal")]);
    let u = wait_final(&cp, "u-1");
    assert_eq!(u.len(), 1);
    assert_eq!(failure_source(&u[0]), "client_internal");
    assert!(json_of(&u[0]).contains(r#""transport_error_kind":"unknown""#));
    assert!(String::from_utf8_lossy(&u[0].raw).contains(r#""channel":"nope""#));
    assert_eq!(last(&wait_final(&cp, "u-2")).resp_code, 200);
    assert_eq!(agent.stop(), 0);
}

#[test]
fn http_and_stdio_channels_run_in_parallel() {
    let cp = FakeCp::start();
    // The HTTP server answers only after the stdio answer was posted: if the
    // channels shared one lane, this would never complete.
    let cp2 = cp.clone();
    let mcp = spawn_server(move |_req, stream| {
        let until = Instant::now() + WAIT;
        while posts_for(&cp2, "p-stdio").is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            br#"{"jsonrpc":"2.0","id":1,"result":{"from":"http"}}"#,
        );
    });
    let url = format!("channel=web,url=http://{mcp}/mcp");
    cp.push_batch(&[
        on("web", jsonrpc_command("p-http", &tool(1, "echo"), "")),
        on("fs", jsonrpc_command("p-stdio", &tool(1, "echo"), "")),
    ]);
    let agent = start_agent_with(
        &cp,
        &[
            "--mcp.server-url",
            &url,
            "--mcp.command",
            &stdio("fs", "normal"),
            "--mcp.max-concurrent-requests",
            "1",
        ],
    );
    let h = wait_final(&cp, "p-http");
    assert!(json_of(last(&h)).contains("\"from\":\"http\""));
    assert!(String::from_utf8_lossy(&last(&h).raw).contains(r#""channel":"web""#));
    let s = wait_final(&cp, "p-stdio");
    assert!(String::from_utf8_lossy(&last(&s).raw).contains(r#""channel":"fs""#));
    let polls = cp.with(|s| s.polls.clone());
    assert_eq!(
        polls[0].header("X-Tunnel-MCP-Server-Info"),
        Some(r#"{"version":1,"channels":[{"name":"web"},{"name":"fs","proc_affinity":true}]}"#)
    );
    assert!(
        polls[0].query().contains("channel=web&channel=fs"),
        "{}",
        polls[0].query()
    );
    assert_eq!(agent.stop(), 0);
}

#[test]
fn a_channel_header_never_reaches_another_origin() {
    type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;
    let serve = |seen: Seen| {
        spawn_server(move |req, stream| {
            seen.lock().unwrap().push(req.headers.clone());
            respond(
                stream,
                200,
                &[("Content-Type", "application/json")],
                br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            );
        })
    };
    let (seen_a, seen_b): (Seen, Seen) = Default::default();
    let a = serve(seen_a.clone());
    let b = serve(seen_b.clone());
    let cp = FakeCp::start();
    cp.push_batch(&[
        on("alpha", jsonrpc_command("x-a", &tool(1, "echo"), "")),
        on("beta", jsonrpc_command("x-b", &tool(1, "echo"), "")),
    ]);
    let agent = start_agent_with(
        &cp,
        &[
            "--mcp.server-url",
            &format!("channel=alpha,url=http://{a}/mcp,header=X-Alpha-Token: alpha-secret"),
            "--mcp.server-url",
            &format!("channel=beta,url=http://{b}/mcp,header=X-Beta: 1"),
        ],
    );
    wait_final(&cp, "x-a");
    wait_final(&cp, "x-b");
    assert_eq!(agent.stop(), 0);
    let has = |seen: &Seen, name: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .flatten()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    assert!(has(&seen_a, "X-Alpha-Token") && !has(&seen_a, "X-Beta"));
    assert!(has(&seen_b, "X-Beta"));
    assert!(
        !has(&seen_b, "X-Alpha-Token"),
        "alpha's header went to beta's origin"
    );
    let all_b = format!("{:?}", seen_b.lock().unwrap());
    assert!(!all_b.contains("alpha-secret"));
}

#[test]
fn a_child_that_keeps_dying_makes_readiness_name_the_channel() {
    let cp = FakeCp::start();
    let agent = start_agent_with(
        &cp,
        &[
            "--mcp.server-url",
            "channel=web,url=http://127.0.0.1:9/mcp",
            "--mcp.command",
            &stdio("fs", "exit_at_start"),
        ],
    );
    let until = Instant::now() + WAIT;
    let mut reason = String::new();
    while Instant::now() < until {
        reason = agent.readiness.not_ready_reason().unwrap_or_default();
        if reason.contains("channel fs: stdio MCP server exited") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        reason.contains("channel fs: stdio MCP server exited"),
        "{reason}"
    );
    assert!(!agent.readiness.target_ready());
    assert_eq!(agent.stop(), 0);
}

#[test]
fn stdio_main_then_channel_flags_validate() {
    // A stdio server's stdout junk at start (before any request) is harmless:
    // the first request still gets its answer.
    let dir = std::env::temp_dir().join(format!("mcp-stdio-banner-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("banner.sh");
    let mut f = std::fs::File::create(&script).unwrap();
    writeln!(
        f,
        "echo 'banner on stdout'; echo '{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/hello\"}}'; exec python3 -u '{SCRIPT}' normal"
    )
    .unwrap();
    drop(f);
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("b-1", &tool(1, "echo"), "")]);
    let cmd = format!("sh {}", script.display());
    let agent = start_agent_with(&cp, &["--mcp.command", &cmd]);
    let ps = wait_final(&cp, "b-1");
    assert_eq!(last(&ps).resp_code, 200);
    assert_eq!(agent.stop(), 0);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A notification holds the stdio slot only while it is written: it gets its
/// `notify_ack` (202, no body) and the next request of the batch is answered
/// by the same child without waiting for a reply that never comes.
#[test]
fn notification_releases_the_slot_after_the_write() {
    let cp = FakeCp::start();
    cp.push_batch(&[
        jsonrpc_command(
            "n-0",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "",
        ),
        jsonrpc_command("n-1", &tool(3, "echo"), ""),
    ]);
    let agent = start_agent_with(
        &cp,
        &[
            "--mcp.command",
            &stdio("main", "normal"),
            "--mcp.max-request-duration",
            "60s",
        ],
    );
    let ack = wait_final(&cp, "n-0");
    assert_eq!(ack.len(), 1);
    assert_eq!(
        (ack[0].resp_type.as_str(), ack[0].resp_code),
        ("notify_ack", 202)
    );
    assert!(ack[0].resp_json.is_none());
    let fin = wait_final(&cp, "n-1");
    assert_eq!(last(&fin).resp_code, 200, "{}", json_of(last(&fin)));
    assert_eq!(agent.stop(), 0);
}
