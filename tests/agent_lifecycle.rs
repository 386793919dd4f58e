//! Poll and post retry rules, backpressure, terminal errors and the graceful stop.

mod agent_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use agent_support::*;

fn ok_mcp() -> std::net::SocketAddr {
    spawn_server(|req, stream| {
        let id = if req.body_str().contains("\"id\":2,") {
            2
        } else {
            1
        };
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#);
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
    })
}

/// 401 on poll: logged once, readiness false, backoff at the maximum — no tight loop.
#[test]
fn poll_401_backs_off_and_reports_not_ready() {
    let cp = FakeCp::start();
    cp.with(|s| s.poll_status = Some(401));
    let agent = start_agent(&cp, &format!("http://{}/mcp", ok_mcp()), &[]);
    cp.wait_polls(1);
    std::thread::sleep(Duration::from_millis(1500));
    let polls = cp.poll_count();
    assert!(polls <= 2, "{polls} polls in 1.5 s after a 401: tight loop");
    let reason = agent
        .readiness
        .not_ready_reason()
        .expect("not ready while the key is rejected");
    assert!(reason.contains("401"), "{reason}");
    // The backoff sleep is cut short by the stop.
    assert_eq!(agent.stop(), 0);
}

/// 403 on poll is an operator problem too: readiness names the status and the
/// error code, and the agent backs off instead of retrying at once.
#[test]
fn poll_403_backs_off_and_reports_the_code() {
    let cp = FakeCp::start();
    cp.with(|s| s.poll_status = Some(403));
    let agent = start_agent(&cp, &format!("http://{}/mcp", ok_mcp()), &[]);
    cp.wait_polls(1);
    std::thread::sleep(Duration::from_millis(1500));
    let polls = cp.poll_count();
    assert!(polls <= 2, "{polls} polls in 1.5 s after a 403: tight loop");
    let reason = agent
        .readiness
        .not_ready_reason()
        .expect("not ready while the key is refused");
    assert!(
        reason.contains("403") && reason.contains("invalid_api_key"),
        "{reason}"
    );
    assert_eq!(agent.stop(), 0);
}

#[test]
fn poll_404_is_terminal_with_non_zero_exit() {
    let cp = FakeCp::start();
    cp.with(|s| s.poll_status = Some(404));
    let agent = start_agent(&cp, &format!("http://{}/mcp", ok_mcp()), &[]);
    assert_eq!(agent.wait_exit(WAIT), Some(1));
    assert_eq!(cp.poll_count(), 1);
}

/// A 503 with Retry-After on the final post: resent (same body and shard
/// token) no sooner than Retry-After allows.
#[test]
fn final_post_retried_after_503_honouring_retry_after() {
    let cp = FakeCp::start();
    cp.with(|s| {
        s.post_replies
            .push_back((503, vec![("Retry-After".into(), "1".into())]))
    });
    cp.push_batch(&[jsonrpc_command(
        "r-1",
        &call(1),
        r#","response_timeout":"30s""#,
    )]);
    let agent = start_agent(&cp, &format!("http://{}/mcp", ok_mcp()), &[]);
    let posts = cp.wait_posts(2);
    assert_eq!(agent.stop(), 0);
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[0].body, posts[1].body);
    assert_eq!(posts[1].header("X-Tunnel-Shard-Token"), Some("shard-r-1"));
    assert!(posts[1].at.duration_since(posts[0].at) >= Duration::from_secs(1));
}

/// 404 on the final post: the command is over; MCP work is never replayed.
#[test]
fn response_404_is_terminal_for_that_command() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let mcp = spawn_server(move |req, stream| {
        h2.fetch_add(1, Ordering::SeqCst);
        let id = if req.body_str().contains("\"id\":2,") {
            2
        } else {
            1
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
    cp.with(|s| s.post_replies.push_back((404, Vec::new())));
    cp.push_batch(&[
        jsonrpc_command("gone", &call(1), ""),
        jsonrpc_command("next", &call(2), ""),
    ]);
    let agent = start_agent(
        &cp,
        &format!("http://{mcp}/mcp"),
        &["--mcp.max-concurrent-requests", "1"],
    );
    let posts = cp.wait_posts(2);
    assert_eq!(agent.stop(), 0);
    let ids: Vec<String> = posts.iter().map(|p| posted(p).request_id).collect();
    assert_eq!(ids, ["gone", "next"]);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// After one notification post fails, the rest are skipped; the final still goes.
#[test]
fn failed_notification_skips_the_rest_but_not_the_final() {
    let mcp = spawn_server(|_req, stream| {
        sse_head(stream, &[]);
        for i in 0..3 {
            sse_event(
                stream,
                &format!(
                    r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progress":{i}}}}}"#
                ),
            );
        }
        sse_event(stream, r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        std::thread::sleep(Duration::from_millis(500));
    });
    let cp = FakeCp::start();
    cp.with(|s| s.post_replies.push_back((400, Vec::new())));
    cp.push_batch(&[jsonrpc_command("n", &call(1), "")]);
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), &[]);
    let posts = cp.wait_posts(2);
    assert_eq!(agent.stop(), 0);
    let types: Vec<String> = cp.posts().iter().map(|p| posted(p).resp_type).collect();
    assert_eq!(types, ["jsonrpc_notify", "jsonrpc_response"]);
    assert!(String::from_utf8_lossy(posts[0].body.as_slice()).contains("\"progress\":0"));
}

/// A full queue pauses polling: with room for two commands and both taken,
/// the next poll waits for one to finish and asks for exactly the free slots.
#[test]
fn full_queue_pauses_polling_and_limit_is_free_slots() {
    let (tx, rx) = mpsc::channel::<()>();
    let tx = Mutex::new(tx);
    let mcp = spawn_server(move |req, stream| {
        let _ = tx.lock().unwrap().send(());
        std::thread::sleep(Duration::from_millis(400));
        let id = if req.body_str().contains("\"id\":2,") {
            2
        } else {
            1
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
        jsonrpc_command("a", &call(1), ""),
        jsonrpc_command("b", &call(2), ""),
    ]);
    let agent = start_agent(
        &cp,
        &format!("http://{mcp}/mcp"),
        &[
            "--control-plane.max-inflight",
            "2",
            "--mcp.max-concurrent-requests",
            "1",
        ],
    );
    rx.recv_timeout(WAIT).unwrap();
    let posts = cp.wait_posts(2);
    cp.wait_polls(3);
    assert_eq!(agent.stop(), 0);
    let polls = cp.with(|s| s.polls.clone());
    assert!(polls[0].query().contains("limit=2"), "{}", polls[0].query());
    assert!(
        polls[1].at > posts[0].at,
        "no poll while the queue was full"
    );
    assert!(polls[1].query().contains("limit=1"), "{}", polls[1].query());
}

/// A stop request lets the in-flight command finish and post, then exits 0.
#[test]
fn graceful_stop_drains_in_flight_work() {
    let (tx, rx) = mpsc::channel::<()>();
    let tx = Mutex::new(tx);
    let mcp = spawn_server(move |_req, stream| {
        let _ = tx.lock().unwrap().send(());
        std::thread::sleep(Duration::from_millis(500));
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        );
    });
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("drain-me", &call(1), "")]);
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), &[]);
    rx.recv_timeout(WAIT).unwrap();
    let polls_at_stop = cp.poll_count();
    assert_eq!(agent.stop(), 0);
    let posts = cp.posts();
    assert_eq!(
        posts.len(),
        1,
        "the in-flight answer was posted before exit"
    );
    assert_eq!(posted(&posts[0]).request_id, "drain-me");
    assert!(
        cp.poll_count() <= polls_at_stop + 1,
        "no new polls after the stop"
    );
}

/// Startup: the tunnel metadata is checked with the control-plane headers.
#[test]
fn startup_checks_tunnel_metadata() {
    let cp = FakeCp::start();
    let agent = start_agent(
        &cp,
        &format!("http://{}/mcp", ok_mcp()),
        &["--control-plane.organization-id", "org-123"],
    );
    cp.wait_polls(1);
    assert_eq!(agent.stop(), 0);
    let meta = cp.with(|s| s.metadata.clone());
    assert_eq!(meta[0].path(), "/v1/tunnels/tunnel_test");
    assert_eq!(meta[0].header("Authorization"), Some("Bearer sk-test-key"));
    assert_eq!(meta[0].header("OpenAI-Organization"), Some("org-123"));
}

/// A batch larger than the limit asked for is processed in full.
#[test]
fn every_command_of_a_batch_runs_even_beyond_the_limit() {
    let cp = FakeCp::start();
    cp.push_batch(&[
        jsonrpc_command("x1", &call(1), ""),
        jsonrpc_command("x2", &call(2), ""),
        jsonrpc_command("x3", &call(1), ""),
    ]);
    let agent = start_agent(
        &cp,
        &format!("http://{}/mcp", ok_mcp()),
        &[
            "--control-plane.max-inflight",
            "1",
            "--mcp.max-concurrent-requests",
            "1",
        ],
    );
    let posts = cp.wait_posts(3);
    assert_eq!(agent.stop(), 0);
    let mut ids: Vec<String> = posts.iter().map(|p| posted(p).request_id).collect();
    ids.sort();
    assert_eq!(ids, ["x1", "x2", "x3"]);
    assert!(cp.with(|s| s.polls[0].query().contains("limit=1")));
}

/// Work that outlives the drain timeout does not hold the process: the stop
/// completes, even with commands still waiting for a queue slot.
#[test]
fn drain_timeout_bounds_the_stop() {
    let (tx, rx) = mpsc::channel::<()>();
    let tx = Mutex::new(tx);
    let mcp = spawn_server(move |_req, _stream| {
        let _ = tx.lock().unwrap().send(());
        std::thread::sleep(Duration::from_secs(20));
    });
    let cp = FakeCp::start();
    cp.push_batch(&[
        jsonrpc_command("stuck", &call(1), ""),
        jsonrpc_command("queued", &call(2), ""),
        jsonrpc_command("waiting", &call(1), ""),
    ]);
    let agent = start_agent(
        &cp,
        &format!("http://{mcp}/mcp"),
        &[
            "--control-plane.max-inflight",
            "2",
            "--mcp.max-concurrent-requests",
            "1",
            "--shutdown.drain-timeout",
            "300ms",
        ],
    );
    rx.recv_timeout(WAIT).unwrap();
    assert_eq!(agent.stop(), 0);
    assert!(cp.posts().is_empty());
}

/// Polls until a post for `request_id` has arrived; returns every post so far.
fn wait_post_for(cp: &FakeCp, request_id: &str) -> Vec<Req> {
    let end = std::time::Instant::now() + WAIT;
    loop {
        let posts = cp.posts();
        if posts.iter().any(|p| posted(p).request_id == request_id) {
            return posts;
        }
        assert!(
            std::time::Instant::now() < end,
            "no post for {request_id}: {:?}",
            posts
                .iter()
                .map(|p| posted(p).request_id)
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll 429 and 5xx are retried (with backoff), not terminal: once the
/// control plane recovers, the queued work is delivered by the same process.
#[test]
fn poll_429_and_5xx_are_retried_until_the_control_plane_recovers() {
    for status in [429, 503] {
        let cp = FakeCp::start();
        cp.with(|s| s.poll_status = Some(status));
        let agent = start_agent(&cp, &format!("http://{}/mcp", ok_mcp()), &[]);
        cp.wait_polls(3);
        assert!(
            agent.wait_exit(Duration::ZERO).is_none(),
            "{status}: exited"
        );
        cp.push_batch(&[jsonrpc_command("after-outage", &call(1), "")]);
        cp.with(|s| s.poll_status = None);
        let posts = wait_post_for(&cp, "after-outage");
        assert_eq!(agent.stop(), 0, "{status}");
        assert_eq!(posted(&posts[0]).resp_code, 200, "{status}");
    }
}

/// A Retry-After that would end past the command deadline is not waited
/// for: the post is abandoned at once and the single worker moves on to the
/// next command (an agent that slept the capped 60 s first would miss WAIT),
/// and the first post is never resent late.
#[test]
fn retry_after_never_waits_past_the_deadline() {
    let cp = FakeCp::start();
    cp.with(|s| {
        s.post_replies
            .push_back((503, vec![("Retry-After".into(), "120".into())]))
    });
    cp.push_batch(&[
        jsonrpc_command("short", &call(1), r#","response_timeout":"2s""#),
        jsonrpc_command("next", &call(2), ""),
    ]);
    let agent = start_agent(
        &cp,
        &format!("http://{}/mcp", ok_mcp()),
        &["--mcp.max-concurrent-requests", "1"],
    );
    let posts = wait_post_for(&cp, "next");
    assert_eq!(agent.stop(), 0);
    let ids: Vec<String> = posts.iter().map(|p| posted(p).request_id).collect();
    assert_eq!(ids, ["short", "next"], "no late resend of the first post");
}

/// The receipt instant is taken when the poll response head arrives, before
/// the body is read: a body that trickles in for longer than a command's
/// `response_timeout` leaves that command already expired (dropped without
/// contacting MCP), while a command of the same batch without a deadline runs.
#[test]
fn deadlines_count_from_the_response_head_not_the_end_of_the_body() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let mcp = spawn_server(move |req, stream| {
        h2.fetch_add(1, Ordering::SeqCst);
        let id = if req.body_str().contains("\"id\":2,") {
            2
        } else {
            1
        };
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#);
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
    });
    let batch = format!(
        r#"{{"commands":[{},{}]}}"#,
        jsonrpc_command("slow-body", &call(1), r#","response_timeout":"1s""#),
        jsonrpc_command("control", &call(2), "")
    );
    let state: Arc<(Mutex<CpState>, std::sync::Condvar)> = Arc::default();
    let st = state.clone();
    let first_poll = Arc::new(AtomicUsize::new(0));
    let addr = spawn_server(move |req, stream| {
        use std::io::Write;
        let path = req.path().to_string();
        if req.method == "GET" && path.ends_with("/poll") {
            if first_poll.fetch_add(1, Ordering::SeqCst) == 0 {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    batch.len()
                );
                let (a, b) = batch.as_bytes().split_at(batch.len() / 2);
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(a);
                let _ = stream.flush();
                // Longer than slow-body's response_timeout.
                std::thread::sleep(Duration::from_millis(1500));
                let _ = stream.write_all(b);
            } else {
                std::thread::sleep(Duration::from_millis(150));
                respond(stream, 204, &[], b"");
            }
        } else if req.method == "POST" && path.ends_with("/response") {
            let (lock, cv) = &*st;
            lock.lock().unwrap().posts.push(req);
            cv.notify_all();
            respond(stream, 200, &[], br#"{"status":"ok"}"#);
        } else {
            respond(
                stream,
                200,
                &[],
                br#"{"id":"tunnel_test","name":"t","description":""}"#,
            );
        }
    });
    let cp = FakeCp { addr, state };
    let agent = start_agent(&cp, &format!("http://{mcp}/mcp"), &[]);
    let posts = wait_post_for(&cp, "control");
    assert_eq!(agent.stop(), 0);
    let ids: Vec<String> = cp.posts().iter().map(|p| posted(p).request_id).collect();
    assert_eq!(ids, ["control"]);
    assert_eq!(posted(&posts[0]).resp_code, 200);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "slow-body never reached MCP"
    );
}

/// The agent's own read deadline on a poll is the requested wait plus a
/// guard: a control plane that never answers does not hang the loop, and
/// the agent does not give up before the wait it asked for (plus most of
/// the 5 s guard) has passed.
#[test]
fn a_hung_poll_is_abandoned_after_the_wait_plus_the_guard() {
    let state: Arc<(Mutex<CpState>, std::sync::Condvar)> = Arc::default();
    let st = state.clone();
    let addr = spawn_server(move |req, stream| {
        let path = req.path().to_string();
        let (lock, cv) = &*st;
        if req.method == "GET" && path.ends_with("/poll") {
            let first = {
                let mut s = lock.lock().unwrap();
                s.polls.push(req);
                cv.notify_all();
                s.polls.len() == 1
            };
            // The first poll never gets an answer while the test runs.
            std::thread::sleep(Duration::from_millis(if first { 30_000 } else { 150 }));
            respond(stream, 204, &[], b"");
        } else {
            respond(
                stream,
                200,
                &[],
                br#"{"id":"tunnel_test","name":"t","description":""}"#,
            );
        }
    });
    let cp = FakeCp { addr, state };
    let agent = start_agent(&cp, &format!("http://{}/mcp", ok_mcp()), &[]);
    cp.wait_polls(2);
    assert_eq!(agent.stop(), 0);
    let polls = cp.with(|s| s.polls.clone());
    assert!(polls[0].query().contains("timeout_ms=1000"));
    let gap = polls[1].at.duration_since(polls[0].at);
    assert!(gap >= Duration::from_secs(5), "gave up after {gap:?}");
}

/// `limit` is the free local capacity capped at 25, whatever max-inflight says.
#[test]
fn poll_limit_is_capped_at_25() {
    let cp = FakeCp::start();
    let agent = start_agent(
        &cp,
        &format!("http://{}/mcp", ok_mcp()),
        &["--control-plane.max-inflight", "40"],
    );
    cp.wait_polls(2);
    assert_eq!(agent.stop(), 0);
    for p in cp.with(|s| s.polls.clone()) {
        assert!(p.query().contains("limit=25&"), "{}", p.query());
    }
}
