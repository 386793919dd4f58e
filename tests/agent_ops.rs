//! The agent binary as an operator runs it: `--log.file` reopened on SIGHUP
//! (logrotate), no secret in the logs, `--pid-file`, SIGTERM drain.

mod agent_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-tunnel");
const KEY: &str = "sk-ops-secret-key-4711";
const MCP_TOKEN: &str = "mcp-bearer-secret-0815";

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mcp-tunnel-ops-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spawn(cp: &FakeCp, mcp: &str, extra: &[&str]) -> Child {
    Command::new(BIN)
        .arg("agent")
        .args(extra)
        .env_clear()
        .env("CONTROL_PLANE_BASE_URL", cp.url())
        .env("CONTROL_PLANE_TUNNEL_ID", "tunnel_test")
        .env("CONTROL_PLANE_API_KEY", KEY)
        .env("MCP_SERVER_URL", mcp)
        .env(
            "MCP_EXTRA_HEADERS",
            format!("Authorization: Bearer {MCP_TOKEN}"),
        )
        .env("CONTROL_PLANE_POLL_TIMEOUT", "1s")
        .env("HEALTH_LISTEN_ADDR", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn kill(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

fn wait_exit(child: &mut Child) -> i32 {
    let until = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < until, "agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < until, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn echo_server() -> String {
    let mcp = spawn_server(|_req, stream| {
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        )
    });
    format!("http://{mcp}/mcp")
}

#[test]
fn log_file_reopens_on_sighup_pid_file_lives_with_the_process() {
    let dir = temp_dir("logs");
    let log = dir.join("agent.log");
    let rotated = dir.join("agent.log.1");
    let pid = dir.join("agent.pid");
    let cp = FakeCp::start();
    let mcp = echo_server();
    let mut child = spawn(
        &cp,
        &mcp,
        &[
            "--log.file",
            log.to_str().unwrap(),
            "--log.format",
            "json",
            "--log.level",
            "trace",
            "--pid-file",
            pid.to_str().unwrap(),
        ],
    );
    wait_for("pid file", || !read(&pid).is_empty());
    assert_eq!(read(&pid), format!("{}\n", child.id()));

    cp.push_batch(&[jsonrpc_command("req-before-rotate", &call(1), "")]);
    cp.wait_posts(1);
    wait_for("first command logged", || {
        read(&log).contains("req-before-rotate")
    });

    // logrotate without copytruncate: rename, then SIGHUP.
    std::fs::rename(&log, &rotated).unwrap();
    kill(&child, "-HUP");
    wait_for("log reopened at the old path", || {
        read(&log).contains("log file reopened")
    });
    cp.push_batch(&[jsonrpc_command("req-after-rotate", &call(2), "")]);
    cp.wait_posts(2);
    wait_for("second command logged", || {
        read(&log).contains("req-after-rotate")
    });

    kill(&child, "-TERM");
    assert_eq!(wait_exit(&mut child), 0);
    assert!(!pid.exists(), "pid file removed on a clean exit");

    let old = read(&rotated);
    let new = read(&log);
    assert!(
        !old.contains("req-after-rotate"),
        "nothing after SIGHUP went to the rotated file"
    );
    assert!(
        new.contains("\"request_id\":\"req-after-rotate\""),
        "JSON lines carry the request id: {new}"
    );
    for line in old.lines().chain(new.lines()) {
        assert!(
            line.starts_with("{\"ts\":\"") && line.ends_with('}'),
            "one JSON object per line: {line}"
        );
    }
    for text in [&old, &new] {
        assert!(!text.contains(KEY), "API key in the log");
        assert!(!text.contains(MCP_TOKEN), "MCP credential in the log");
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.is_empty(),
        "with --log.file nothing goes to stderr: {stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unusable_log_or_pid_file_is_a_clear_error() {
    let cp = FakeCp::start();
    let mcp = echo_server();
    let mut child = spawn(&cp, &mcp, &["--log.file", "/nonexistent-dir/agent.log"]);
    assert_eq!(wait_exit(&mut child), 2);
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("--log.file") && err.contains("LOG_FILE"),
        "{err}"
    );

    let mut child = spawn(&cp, &mcp, &["--pid-file", "/nonexistent-dir/agent.pid"]);
    assert_eq!(wait_exit(&mut child), 1);
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("--pid-file") && err.contains("PID_FILE"),
        "{err}"
    );
}

/// A SIGHUP that arrives while the agent is still reading its configuration
/// (an init system's reload racing the start) is dropped, not fatal. The
/// env file is a FIFO, so the agent is provably inside startup when it
/// gets the signal.
#[test]
fn sighup_during_startup_does_not_kill_the_agent() {
    use std::io::Write;
    let dir = temp_dir("early-hup");
    let fifo = dir.join("agent.env");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if !matches!(made, Ok(s) if s.success()) {
        eprintln!("SKIP sighup_during_startup_does_not_kill_the_agent: mkfifo unavailable");
        return;
    }
    let cp = FakeCp::start();
    let mcp = echo_server();
    let mut child = spawn(&cp, &mcp, &["--env-file", fifo.to_str().unwrap()]);
    // Opening the write end blocks until the agent opens the read end.
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    kill(&child, "-HUP");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent died of a SIGHUP during startup"
    );
    writeln!(w, "LOG_LEVEL=info").unwrap();
    drop(w);

    cp.push_batch(&[jsonrpc_command("after-early-hup", &call(1), "")]);
    assert_eq!(posted(&cp.wait_posts(1)[0]).resp_code, 200);
    // SIGHUP still works once running.
    kill(&child, "-HUP");
    std::thread::sleep(Duration::from_millis(100));
    assert!(child.try_wait().unwrap().is_none());
    kill(&child, "-TERM");
    assert_eq!(wait_exit(&mut child), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
