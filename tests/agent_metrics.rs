//! `/metrics` scraped from a running agent after real traffic, and `/readyz`
//! across the states an operator sees.

mod agent_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_support::*;

// ---------------------------------------------------------------- a small scraper

/// (status, content-type, body) of one GET over `stream`.
fn get_over(mut s: impl Read + Write, path: &str) -> Option<(u16, String, String)> {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let ct = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Some((status, ct, body.to_string()))
}

/// GET with retries until the listener is up.
fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let until = Instant::now() + WAIT;
    loop {
        if let Some(r) = TcpStream::connect(addr)
            .ok()
            .and_then(|s| get_over(s, path))
        {
            return r;
        }
        assert!(Instant::now() < until, "health listener never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One parsed exposition: `name{k="v",…}` (labels sorted) → value, plus the
/// declared TYPE of each family. Panics on any line that is not valid text format.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"").expect("label name=\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("unterminated label value") {
                (_, '\\') => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        assert!(
            k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label name {k:?}"
        );
        out.push((k.to_string(), value));
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
    out.sort();
    out
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn parse(doc: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in doc.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                s.types.insert(name.into(), kind.into()).is_none(),
                "dup TYPE {name}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.strip_suffix('}').expect("closing brace"))),
            None => (series, Vec::new()),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| name.strip_suffix(suf))
            .filter(|f| s.types.get(*f).is_some_and(|t| t == "histogram"))
            .unwrap_or(name);
        assert!(
            s.types.contains_key(family),
            "sample before its TYPE: {line}"
        );
        let l: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert!(
            s.samples.insert(key(name, &l), value).is_none(),
            "duplicate series {line}"
        );
    }
    s
}

impl Scrape {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&key(name, labels)).copied()
    }

    fn val(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Buckets of one histogram series are cumulative and end at `_count`.
    fn check_histogram(&self, name: &str, labels: &[(&str, &str)]) {
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}_bucket{{")))
            .filter(|(k, _)| {
                labels
                    .iter()
                    .all(|(lk, lv)| k.contains(&format!("{lk}={lv:?}")))
            })
            .map(|(k, v)| {
                let le = k.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, *v)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() > 2, "{name} has buckets");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name} cumulative"
        );
        let last = buckets.last().unwrap();
        assert!(last.0.is_infinite());
        assert_eq!(last.1, self.val(&format!("{name}_count"), labels));
    }
}

fn scrape(addr: SocketAddr) -> Scrape {
    let (status, ct, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse(&body)
}

/// Scrapes until `done` holds (counters move after the post returns).
fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let until = Instant::now() + WAIT;
    loop {
        let s = scrape(addr);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < until, "{what}: {:#?}", s.samples);
        std::thread::sleep(Duration::from_millis(30));
    }
}

const POLLS: &str = "mcp_tunnel_agent_polls_total";
const COMMANDS: &str = "mcp_tunnel_agent_commands_total";
const LATENCY: &str = "mcp_tunnel_agent_command_duration_seconds";

#[test]
fn parser_rejects_what_prometheus_would() {
    assert!(
        std::panic::catch_unwind(|| parse("x 1\n")).is_err(),
        "no TYPE"
    );
    assert!(std::panic::catch_unwind(|| parse("# TYPE x gauge\nx{a=\"1} 1\n")).is_err());
    assert!(std::panic::catch_unwind(|| parse("# TYPE x gauge\nx one\n")).is_err());
    let s = parse("# TYPE x counter\nx{b=\"2\",a=\"q\\\"\"} 3\n");
    assert_eq!(s.get("x", &[("a", "q\""), ("b", "2")]), Some(3.0));
}

#[test]
fn metrics_move_with_real_traffic() {
    let mcp = spawn_server(|req, stream| {
        let body = req.body_str();
        if body.contains("\"id\"") {
            respond(
                stream,
                200,
                &[("Content-Type", "application/json")],
                br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
            );
        } else {
            respond(stream, 202, &[], b"");
        }
    });
    let cp = FakeCp::start();
    // The first final post is refused once: a retry.
    cp.with(|s| s.post_replies.push_back((503, Vec::new())));
    let health = dead_addr();
    let h = health.to_string();
    let agent = start_agent(
        &cp,
        &format!("http://{mcp}/mcp"),
        &[
            "--health.listen-addr",
            &h,
            "--mcp.max-concurrent-requests",
            "1",
        ],
    );
    let before = scrape(health);
    assert_eq!(
        before.val(
            COMMANDS,
            &[
                ("type", "request"),
                ("channel", "main"),
                ("outcome", "answered")
            ]
        ),
        0.0
    );
    assert_eq!(
        before.get(
            "mcp_tunnel_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("role", "agent")]
        ),
        Some(1.0)
    );
    for kind in [
        "polls_total",
        "retries_total",
        "mcp_failures_total",
        "commands_in_flight",
        "commands_queued",
        "last_successful_poll_timestamp_seconds",
        "child_restarts_total",
        "command_duration_seconds",
        "commands_total",
    ] {
        assert!(
            before
                .types
                .contains_key(&format!("mcp_tunnel_agent_{kind}")),
            "{kind} declared"
        );
    }

    cp.push_batch(&[
        jsonrpc_command("m1", &call(1), ""),
        jsonrpc_command(
            "m2",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "",
        ),
        jsonrpc_command("m3", &call(3), "")
            .replace(r#""channel":"main""#, r#""channel":"elsewhere""#),
    ]);
    cp.wait_posts(4);
    let after = scrape_until(health, "three commands counted", |s| {
        s.val(
            COMMANDS,
            &[
                ("type", "request"),
                ("channel", "main"),
                ("outcome", "answered"),
            ],
        ) == 1.0
            && s.val(
                COMMANDS,
                &[
                    ("type", "notification"),
                    ("channel", "main"),
                    ("outcome", "answered"),
                ],
            ) == 1.0
            && s.val(
                COMMANDS,
                &[
                    ("type", "request"),
                    ("channel", "(unserved)"),
                    ("outcome", "mcp_failure"),
                ],
            ) == 1.0
    });
    assert!(after.val(POLLS, &[("outcome", "commands")]) >= 1.0);
    assert!(
        after.val(POLLS, &[("outcome", "empty")]) + after.val(POLLS, &[("outcome", "commands")])
            > before.val(POLLS, &[("outcome", "empty")])
    );
    assert_eq!(
        after.val("mcp_tunnel_agent_retries_total", &[("kind", "final_post")]),
        1.0
    );
    assert_eq!(
        after.val(
            "mcp_tunnel_agent_mcp_failures_total",
            &[("source", "client_internal")]
        ),
        1.0
    );
    assert_eq!(
        after.val(
            "mcp_tunnel_agent_mcp_failures_total",
            &[("source", "connect")]
        ),
        0.0
    );
    assert_eq!(after.val("mcp_tunnel_agent_commands_in_flight", &[]), 0.0);
    assert_eq!(after.val("mcp_tunnel_agent_commands_queued", &[]), 0.0);
    assert_eq!(
        after.val(&format!("{LATENCY}_count"), &[("channel", "main")]),
        2.0
    );
    assert!(after.val(&format!("{LATENCY}_sum"), &[("channel", "main")]) > 0.0);
    after.check_histogram(LATENCY, &[("channel", "main")]);
    let last = after.val(
        "mcp_tunnel_agent_last_successful_poll_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(last > now - 60.0 && last <= now + 1.0, "{last} vs {now}");
    assert_eq!(
        after.val(
            "mcp_tunnel_agent_child_restarts_total",
            &[("channel", "main")]
        ),
        0.0
    );
    // Only the configured channel and the catch-all appear as channel values.
    for k in after.samples.keys() {
        if let Some(c) = k.split("channel=\"").nth(1) {
            let c = c.split('"').next().unwrap();
            assert!(c == "main" || c == "(unserved)", "{k}");
        }
    }
    assert_eq!(agent.stop(), 0);
}

/// A dead MCP server, then one that answers a forwarded request, then a key
/// the control plane rejects: /readyz follows, with a reason when 503.
#[test]
fn readyz_follows_target_and_key_state() {
    let status = Arc::new(AtomicU16::new(503));
    let st = status.clone();
    let mcp = spawn_server(move |_req, stream| {
        let s = st.load(Ordering::SeqCst);
        let body: &[u8] = if s == 200 {
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#
        } else {
            b"down"
        };
        respond(stream, s, &[("Content-Type", "application/json")], body);
    });
    let cp = FakeCp::start();
    let health = dead_addr();
    let h = health.to_string();
    let agent = start_agent(
        &cp,
        &format!("http://{mcp}/mcp"),
        &["--health.listen-addr", &h],
    );
    cp.wait_polls(1);
    let (code, _, body) = get(health, "/readyz");
    assert_eq!(
        code, 503,
        "an MCP server answering 503 is not ready: {body}"
    );
    assert!(body.contains("MCP server has not answered"), "{body}");
    assert_eq!(get(health, "/healthz").0, 200, "alive while not ready");

    status.store(200, Ordering::SeqCst);
    cp.push_batch(&[jsonrpc_command("r1", &call(1), "")]);
    cp.wait_posts(1);
    let until = Instant::now() + WAIT;
    while get(health, "/readyz").0 != 200 {
        assert!(Instant::now() < until, "never ready");
        std::thread::sleep(Duration::from_millis(30));
    }

    cp.with(|s| s.poll_status = Some(401));
    let until = Instant::now() + WAIT;
    let body = loop {
        let (code, _, body) = get(health, "/readyz");
        if code == 503 {
            break body;
        }
        assert!(
            Instant::now() < until,
            "a rejected key never made /readyz 503"
        );
        std::thread::sleep(Duration::from_millis(30));
    };
    assert!(
        body.contains("401") && body.contains("invalid_api_key"),
        "{body}"
    );
    let s = scrape(health);
    assert!(s.val(POLLS, &[("outcome", "rejected")]) >= 1.0);
    assert!(s.val("mcp_tunnel_agent_retries_total", &[("kind", "poll")]) >= 1.0);
    assert_eq!(agent.stop(), 0);
}

/// `--health.listen-addr unix:/path`: served on the socket, file removed at stop.
#[test]
fn health_on_a_unix_socket() {
    use std::os::unix::net::UnixStream;
    let dir = std::env::temp_dir().join(format!("mcp-tunnel-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("health.sock");
    let mcp = spawn_server(|_req, stream| respond(stream, 401, &[], b""));
    let cp = FakeCp::start();
    let arg = format!("unix:{}", sock.display());
    let agent = start_agent(
        &cp,
        &format!("http://{mcp}/mcp"),
        &["--health.listen-addr", &arg],
    );
    let until = Instant::now() + WAIT;
    let (status, _, body) = loop {
        if let Some(r) = UnixStream::connect(&sock)
            .ok()
            .and_then(|s| get_over(s, "/metrics"))
        {
            break r;
        }
        assert!(Instant::now() < until, "unix health socket never answered");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 200);
    assert!(parse(&body).types.contains_key(POLLS));
    assert_eq!(agent.stop(), 0);
    assert!(!sock.exists(), "socket file removed at stop");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A stdio MCP server that keeps exiting: its restarts are counted per channel.
#[test]
fn stdio_child_restarts_are_counted_per_channel() {
    let mcp = spawn_server(|_req, stream| respond(stream, 401, &[], b""));
    let cp = FakeCp::start();
    let health = dead_addr();
    let h = health.to_string();
    let agent = start_agent(
        &cp,
        &format!("http://{mcp}/mcp"),
        &[
            "--health.listen-addr",
            &h,
            "--mcp.command",
            "channel=tools,command=sh -c 'exit 3'",
        ],
    );
    let s = scrape_until(health, "a restart counted", |s| {
        s.val(
            "mcp_tunnel_agent_child_restarts_total",
            &[("channel", "tools")],
        ) >= 1.0
    });
    assert_eq!(
        s.val(
            "mcp_tunnel_agent_child_restarts_total",
            &[("channel", "main")]
        ),
        0.0,
        "the HTTP channel has no child"
    );
    assert_eq!(agent.stop(), 0);
}
