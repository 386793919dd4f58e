//! The `mcp-tunnel` binary: help, version, exit codes, and real signals.

mod agent_support;

use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use agent_support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-tunnel");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env_clear();
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn help_and_version() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("agent"));
    let out = run(&["--version"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("mcp-tunnel "));
}

/// `--help` shows flags and variables but never a configured secret.
#[test]
fn agent_help_never_shows_secrets() {
    for sub in ["agent", "run"] {
        let out = run(
            &[sub, "--help", "--control-plane.api-key", "sk-flag-secret"],
            &[
                ("CONTROL_PLANE_API_KEY", "sk-env-secret"),
                ("OPENAI_API_KEY", "sk-openai-secret"),
            ],
        );
        // --help stops parsing where it appears, so the flag after it is never read.
        assert!(out.status.success(), "{sub}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("--control-plane.api-key") && text.contains("CONTROL_PLANE_API_KEY"));
        assert!(text.contains("--mcp.server-url") && text.contains("HEALTH_LISTEN_ADDR"));
        assert!(!text.contains("secret"), "{text}");
    }
}

#[test]
fn unknown_command_and_bad_config_exit_2_with_one_line() {
    let out = run(&["teleport"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(
        &["agent"],
        &[
            ("CONTROL_PLANE_API_KEY", "sk-x"),
            ("MCP_SERVER_URL", "http://127.0.0.1:1/"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("--control-plane.tunnel-id") && err.contains("CONTROL_PLANE_TUNNEL_ID"),
        "{err}"
    );
    let out = run(
        &["agent", "--control-plane.max-inflight", "lots"],
        &[
            ("CONTROL_PLANE_API_KEY", "sk-not-shown"),
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_x"),
            ("MCP_SERVER_URL", "http://127.0.0.1:1/"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CONTROL_PLANE_MAX_INFLIGHT") && !err.contains("sk-not-shown"),
        "{err}"
    );
}

fn spawn_agent(cp: &FakeCp, mcp: std::net::SocketAddr, extra: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .arg("agent")
        .args(extra)
        .env_clear()
        .env("CONTROL_PLANE_BASE_URL", cp.url())
        .env("CONTROL_PLANE_TUNNEL_ID", "tunnel_test")
        .env("CONTROL_PLANE_API_KEY", "sk-test-key")
        .env("MCP_SERVER_URL", format!("http://{mcp}/mcp"))
        .env("CONTROL_PLANE_POLL_TIMEOUT", "1s")
        .env("HEALTH_LISTEN_ADDR", "off")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_exit(child: &mut std::process::Child) -> i32 {
    let until = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < until, "agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM: the in-flight command finishes and is posted, then exit 0.
#[test]
fn sigterm_drains_then_exits_0() {
    let (tx, rx) = mpsc::channel::<()>();
    let tx = Mutex::new(tx);
    let mcp = spawn_server(move |_req, stream| {
        let _ = tx.lock().unwrap().send(());
        std::thread::sleep(Duration::from_millis(400));
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        );
    });
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("sig", &call(1), "")]);
    let mut child = spawn_agent(&cp, mcp, &[]);
    rx.recv_timeout(WAIT).unwrap();
    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child), 0);
    assert_eq!(cp.posts().len(), 1);
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.lines().all(|l| l.starts_with("{\"ts\":\"")),
        "JSON lines: {stderr}"
    );
    assert!(!stderr.contains("sk-test-key"), "no secret in logs");
}

/// A second signal during the drain exits at once.
#[test]
fn second_signal_exits_at_once() {
    let (tx, rx) = mpsc::channel::<()>();
    let tx = Mutex::new(tx);
    let mcp = spawn_server(move |_req, _stream| {
        let _ = tx.lock().unwrap().send(());
        std::thread::sleep(Duration::from_secs(20));
    });
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("stuck", &call(1), "")]);
    let mut child = spawn_agent(&cp, mcp, &[]);
    rx.recv_timeout(WAIT).unwrap();
    signal(&child, "-TERM");
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child), 143);
    assert!(cp.posts().is_empty());
}

/// A channel's proxy password: never in the exit-2 line, never in a log line
/// (debug level, a call through that proxy failing), shown as `user:***`.
#[test]
fn a_channel_proxy_password_is_never_echoed_nor_logged() {
    let out = run(
        &[
            "agent",
            "--mcp.server-url",
            "channel=docs,url=http://127.0.0.1:1/mcp,http-proxy=socks5://u:hunter2@p:1",
        ],
        &[
            ("CONTROL_PLANE_API_KEY", "sk-x"),
            ("CONTROL_PLANE_TUNNEL_ID", "tunnel_x"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("--mcp.server-url (MCP_SERVER_URL): channel docs: http-proxy:"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let mcp = spawn_server(|_req, stream| {
        respond(stream, 200, &[("Content-Type", "application/json")], b"{}");
    });
    let cp = FakeCp::start();
    cp.push_batch(&[on("docs", jsonrpc_command("via", &call(1), ""))]);
    let entry = format!(
        "channel=docs,url=http://{mcp}/mcp,http-proxy=http://u:hunter2@{}",
        dead_addr()
    );
    let mut child = spawn_agent(
        &cp,
        mcp,
        &["--mcp.server-url", &entry, "--log.level", "debug"],
    );
    let posts = cp.wait_posts(1);
    assert_eq!(failure_source(&posted(&posts[0])), "connect");
    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child), 0);
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("u:***@"),
        "the proxy is logged redacted: {stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// The system trust store is read only when some URL is https: with every
/// URL plain http, a trust store that cannot be read is never even noticed;
/// with an https channel it is (and logged).
#[test]
fn system_trust_store_is_loaded_only_for_https() {
    let stderr_of = |https_channel: bool| {
        let mcp = spawn_server(|_req, stream| {
            respond(
                stream,
                200,
                &[("Content-Type", "application/json")],
                br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            );
        });
        let cp = FakeCp::start();
        cp.push_batch(&[jsonrpc_command("t", &call(1), "")]);
        let main = format!("channel=main,url=http://{mcp}/mcp");
        let mut args = vec!["agent", "--mcp.server-url", main.as_str()];
        if https_channel {
            // Never contacted: no command is for this channel.
            args.extend([
                "--mcp.server-url",
                "channel=docs,url=https://127.0.0.1:1/mcp",
            ]);
        }
        let mut child = Command::new(BIN)
            .args(&args)
            .env_clear()
            .env("CONTROL_PLANE_BASE_URL", cp.url())
            .env("CONTROL_PLANE_TUNNEL_ID", "tunnel_test")
            .env("CONTROL_PLANE_API_KEY", "sk-test-key")
            .env("CONTROL_PLANE_POLL_TIMEOUT", "1s")
            .env("HEALTH_LISTEN_ADDR", "off")
            .env("SSL_CERT_FILE", "/nonexistent/mcp-tunnel-test/ca.pem")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let posts = cp.wait_posts(1);
        assert_eq!(posted(&posts[0]).resp_code, 200);
        signal(&child, "-TERM");
        assert_eq!(wait_exit(&mut child), 0);
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        stderr
    };
    const STORE_WARNING: &str = "while loading the system trust store";
    let plain = stderr_of(false);
    assert!(!plain.contains(STORE_WARNING), "{plain}");
    let tls = stderr_of(true);
    assert!(tls.contains(STORE_WARNING), "{tls}");
}
