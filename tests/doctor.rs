//! `mcp-tunnel doctor` with the built binary against real components on
//! loopback: the relay, the sample MCP server, tinyproxy, certificates made
//! by openssl. A healthy setup passes every check (exit 0); each broken one
//! fails the right check with its fix (exit 1); no secret is printed.
#![cfg(all(feature = "agent", feature = "relay"))]

mod common;

use std::net::SocketAddr;

use common::pki::pki;
use common::procs::{relay_init, run, sample_server, scratch, Init, Proc};
use common::tinyproxy::{ProxyConf, Tinyproxy};

struct World {
    init: Init,
    _relay: Proc,
    relay: SocketAddr,
    _mcp: Proc,
    mcp: SocketAddr,
}

fn world(tag: &str, serve: &[&str]) -> World {
    world_with(tag, serve, &[])
}

/// `admin` commands run before the relay starts; `T` stands for the tunnel id.
fn world_with(tag: &str, serve: &[&str], admin: &[&[&str]]) -> World {
    let init = relay_init(&scratch(tag));
    for a in admin {
        let args: Vec<&str> = a
            .iter()
            .map(|x| if *x == "T" { init.tunnel.as_str() } else { *x })
            .collect();
        init.admin(&args);
    }
    let (relay_proc, relay) = init.serve(serve);
    let (mcp_proc, mcp) = sample_server();
    World {
        init,
        _relay: relay_proc,
        relay,
        _mcp: mcp_proc,
        mcp,
    }
}

impl World {
    /// Doctor flags for this world: base URL, tunnel, key, MCP URL; `extra` last.
    fn doctor(&self, base: &str, key: &str, mcp: &str, extra: &[&str]) -> (i32, String) {
        let mut a = vec![
            "doctor",
            "--control-plane.base-url",
            base,
            "--control-plane.tunnel-id",
            &self.init.tunnel,
            "--control-plane.api-key",
            key,
            "--mcp.server-url",
            mcp,
        ];
        a.extend_from_slice(extra);
        let (code, out, err) = run(&a);
        assert!(err.is_empty(), "doctor wrote to stderr: {err}");
        assert!(
            !out.contains(&self.init.runtime_key),
            "the key was printed:\n{out}"
        );
        (code, out)
    }

    fn http(&self) -> String {
        format!("http://{}", self.relay)
    }

    fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.mcp)
    }
}

/// The line of check `name`, which must exist.
fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(&format!("] {name} ")))
        .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
}

/// The fix printed under check `name`.
fn fix<'a>(out: &'a str, name: &str) -> &'a str {
    let mut lines = out
        .lines()
        .skip_while(|l| !l.contains(&format!("] {name} ")));
    lines.next();
    lines
        .next()
        .filter(|l| l.trim_start().starts_with("fix:"))
        .unwrap_or_else(|| panic!("no fix under {name} in:\n{out}"))
}

#[test]
fn a_healthy_setup_passes_every_check() {
    let w = world("doctor-healthy", &[]);
    let (code, out) = w.doctor(&w.http(), &w.init.runtime_key, &w.mcp_url(), &[]);
    assert_eq!(code, 0, "{out}");
    for name in [
        "configuration",
        "DNS control plane",
        "TCP control plane",
        "control-plane auth",
        "DNS MCP server",
        "MCP server",
    ] {
        assert!(line(&out, name).contains("[ok  ]"), "{name}:\n{out}");
    }
    assert!(
        line(&out, "MCP server").contains("initialize answered HTTP 200"),
        "{out}"
    );
    assert!(out.contains(" 0 failed"), "{out}");
    // The same as one JSON document.
    let (code, json) = w.doctor(&w.http(), &w.init.runtime_key, &w.mcp_url(), &["--json"]);
    assert_eq!(code, 0);
    let v: miniserde::json::Value = miniserde::json::from_str(json.trim()).expect("JSON");
    let miniserde::json::Value::Object(o) = v else {
        panic!("{json}")
    };
    assert!(
        matches!(o.get("ok"), Some(miniserde::json::Value::Bool(true))),
        "{json}"
    );
    // An auth-protected MCP endpoint (the relay's own, without a key) is reachable.
    let protected = format!("http://{}/v1/mcp/{}", w.relay, w.init.tunnel);
    let (code, out) = w.doctor(&w.http(), &w.init.runtime_key, &protected, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "MCP server").contains("answered HTTP 401 (auth-protected"),
        "{out}"
    );
}

#[test]
fn bad_key_unknown_tunnel_and_mcp_down_each_fail_their_check() {
    let w = world("doctor-broken", &[]);
    let (code, out) = w.doctor(&w.http(), "mtk_not_a_key", &w.mcp_url(), &[]);
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "control-plane auth");
    assert!(
        l.contains("[FAIL]") && l.contains("HTTP 401 (invalid_api_key)"),
        "{out}"
    );
    assert!(
        fix(&out, "control-plane auth").contains("--control-plane.api-key"),
        "{out}"
    );
    assert!(!out.contains("mtk_not_a_key"), "{out}");
    // The MCP side is still checked and fine.
    assert!(line(&out, "MCP server").contains("[ok  ]"), "{out}");

    let unknown = format!("tunnel_{}", "0".repeat(32));
    let (code, out, _) = run(&[
        "doctor",
        "--control-plane.base-url",
        &w.http(),
        "--control-plane.tunnel-id",
        &unknown,
        "--control-plane.api-key",
        &w.init.runtime_key,
        "--mcp.server-url",
        &w.mcp_url(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "control-plane auth").contains("HTTP 404 (tunnel_not_found)"),
        "{out}"
    );
    assert!(
        fix(&out, "control-plane auth").contains("--control-plane.tunnel-id"),
        "{out}"
    );
    assert!(!out.contains(&w.init.runtime_key));

    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The listener is gone once the temporary drops: nothing listens there.
    let (code, out) = w.doctor(
        &w.http(),
        &w.init.runtime_key,
        &format!("http://{dead}/mcp?token=s3cr3t-query"),
        &[],
    );
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "MCP server");
    assert!(l.contains("[FAIL]") && l.contains("refused"), "{out}");
    assert!(
        fix(&out, "MCP server").contains("--mcp.server-url"),
        "{out}"
    );
    assert!(
        !out.contains("s3cr3t-query"),
        "the URL's query was printed:\n{out}"
    );
    assert!(line(&out, "control-plane auth").contains("[ok  ]"), "{out}");

    // A wrong path on a live server: reachable, but no MCP endpoint.
    let (code, out) = w.doctor(
        &w.http(),
        &w.init.runtime_key,
        &format!("http://{}/nope", w.mcp),
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "MCP server").contains("no MCP endpoint"),
        "{out}"
    );
}

#[test]
fn an_unresolvable_host_fails_dns_and_skips_what_follows() {
    let w = world("doctor-dns", &[]);
    let (code, out) = w.doctor(
        "https://relay.doctor-test.invalid",
        &w.init.runtime_key,
        "http://mcp.doctor-test.invalid/mcp",
        &[],
    );
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "DNS control plane");
    assert!(
        l.contains("[FAIL]") && l.contains("relay.doctor-test.invalid"),
        "{out}"
    );
    assert!(
        fix(&out, "DNS control plane").contains("--control-plane.base-url"),
        "{out}"
    );
    for skipped in [
        "TCP control plane",
        "TLS control plane",
        "control-plane auth",
        "MCP server",
    ] {
        assert!(line(&out, skipped).contains("[skip]"), "{skipped}:\n{out}");
    }
    assert!(line(&out, "DNS MCP server").contains("[FAIL]"), "{out}");
}

#[test]
fn tls_unknown_ca_and_hostname_mismatch_say_which() {
    let Some(p) = pki("tls_unknown_ca_and_hostname_mismatch_say_which") else {
        return;
    };
    let w = world(
        "doctor-tls",
        &[
            "--tls-cert",
            p.server.0.to_str().unwrap(),
            "--tls-key",
            p.server.1.to_str().unwrap(),
        ],
    );
    let https = format!("https://127.0.0.1:{}", w.relay.port());
    let (code, out) = w.doctor(&https, &w.init.runtime_key, &w.mcp_url(), &[]);
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "TLS control plane");
    assert!(l.contains("[FAIL]") && l.contains("unknown CA"), "{out}");
    assert!(
        fix(&out, "TLS control plane").contains("--ca-bundle"),
        "{out}"
    );
    assert!(line(&out, "control-plane auth").contains("[skip]"), "{out}");
    // With the bundle it verifies and the rest passes.
    let ca = p.ca.to_str().unwrap();
    let (code, out) = w.doctor(
        &https,
        &w.init.runtime_key,
        &w.mcp_url(),
        &["--ca-bundle", ca],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "TLS control plane").contains("1 from --ca-bundle"),
        "{out}"
    );

    let wrong = world(
        "doctor-tls-host",
        &[
            "--tls-cert",
            p.server_wrong_host.0.to_str().unwrap(),
            "--tls-key",
            p.server_wrong_host.1.to_str().unwrap(),
        ],
    );
    let (code, out) = wrong.doctor(
        &format!("https://127.0.0.1:{}", wrong.relay.port()),
        &wrong.init.runtime_key,
        &wrong.mcp_url(),
        &["--ca-bundle", ca],
    );
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "TLS control plane");
    assert!(l.contains("does not match the host name"), "{out}");
    assert!(
        fix(&out, "TLS control plane").contains("subjectAltName"),
        "{out}"
    );
}

#[test]
fn client_certificate_tunnels_explain_what_is_missing() {
    let Some(p) = pki("client_certificate_tunnels_explain_what_is_missing") else {
        return;
    };
    let w = world(
        "doctor-mtls",
        &[
            "--tls-cert",
            p.server.0.to_str().unwrap(),
            "--tls-key",
            p.server.1.to_str().unwrap(),
            "--client-ca",
            p.ca.to_str().unwrap(),
        ],
    );
    w.init.admin(&[
        "relay",
        "tunnel",
        "bind-cert",
        &w.init.tunnel,
        "--name",
        "client-san",
    ]);
    w.init.admin(&[
        "relay",
        "tunnel",
        "set",
        &w.init.tunnel,
        "--agent-auth",
        "cert",
    ]);
    let https = format!("https://127.0.0.1:{}", w.relay.port());
    let ca = p.ca.to_str().unwrap();
    // The relay reloads its state within a second.
    std::thread::sleep(std::time::Duration::from_millis(700));
    let (code, out) = w.doctor(
        &https,
        &w.init.runtime_key,
        &w.mcp_url(),
        &["--ca-bundle", ca],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "control-plane auth").contains("401 (client_certificate_required)"),
        "{out}"
    );
    assert!(
        fix(&out, "control-plane auth").contains("--control-plane.client-cert"),
        "{out}"
    );
    let cert = |pair: &(std::path::PathBuf, std::path::PathBuf)| {
        vec![
            "--ca-bundle".to_string(),
            ca.to_string(),
            "--control-plane.client-cert".to_string(),
            pair.0.to_str().unwrap().to_string(),
            "--control-plane.client-key".to_string(),
            pair.1.to_str().unwrap().to_string(),
        ]
    };
    let args = cert(&p.client_pkcs8);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = w.doctor(&https, &w.init.runtime_key, &w.mcp_url(), &refs);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "control-plane auth").contains("403 (tunnel_use_forbidden)"),
        "{out}"
    );
    assert!(
        fix(&out, "control-plane auth").contains("bind-cert"),
        "{out}"
    );
    // The bound certificate, without any key: all green, and its names shown.
    let args = cert(&p.client_san);
    let mut a = vec![
        "doctor",
        "--control-plane.base-url",
        &https,
        "--control-plane.tunnel-id",
        &w.init.tunnel,
        "--mcp.server-url",
    ];
    let mcp = w.mcp_url();
    a.push(&mcp);
    a.extend(args.iter().map(String::as_str));
    let (code, out, _) = run(&a);
    assert_eq!(code, 0, "{out}");
    let l = line(&out, "configuration");
    assert!(l.contains("key none (client certificate only)"), "{out}");
    assert!(l.contains("DNS=agent-7.corp.example"), "{out}");
}

#[test]
fn a_wrong_proxy_password_fails_the_connect_check_without_printing_it() {
    let test = "a_wrong_proxy_password_fails_the_connect_check_without_printing_it";
    let Some(proxy) = Tinyproxy::start(
        test,
        &ProxyConf {
            basic_auth: Some(("doc-user", "right.pass")),
            connect_ports: &[],
        },
    ) else {
        return;
    };
    let w = world("doctor-proxy", &[]);
    let bad = proxy.url_with("doc-user:wrong.pass");
    let (code, out) = w.doctor(
        &w.http(),
        &w.init.runtime_key,
        &w.mcp_url(),
        &["--http-proxy", &bad],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "DNS control plane").contains("resolved by the proxy"),
        "{out}"
    );
    assert!(line(&out, "TCP proxy").contains("[ok  ]"), "{out}");
    let l = line(&out, "proxy CONNECT");
    assert!(
        l.contains("[FAIL]") && l.contains("proxy authentication failed"),
        "{out}"
    );
    assert!(fix(&out, "proxy CONNECT").contains("--http-proxy"), "{out}");
    assert!(line(&out, "control-plane auth").contains("[skip]"), "{out}");
    assert!(
        !out.contains("wrong.pass"),
        "the proxy password was printed:\n{out}"
    );
    // The right password: through the proxy, every check passes.
    let good = proxy.url_with("doc-user:right.pass");
    let (code, out) = w.doctor(
        &w.http(),
        &w.init.runtime_key,
        &w.mcp_url(),
        &["--http-proxy", &good],
    );
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "proxy CONNECT").contains("[ok  ]"), "{out}");
    assert!(proxy.connects_to(w.relay.port()) >= 2);
    assert!(!out.contains("right.pass"), "{out}");
}

#[test]
fn configuration_errors_exit_2_and_help_lists_the_agent_flags() {
    let (code, out, _) = run(&["doctor", "--control-plane.tunnel-id", "t"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        line(&out, "configuration").contains("--mcp.server-url")
            || out.contains("missing required"),
        "{out}"
    );
    let (code, help, _) = run(&["doctor", "--help"]);
    assert_eq!(code, 0);
    assert!(
        help.contains("--json") && help.contains("--control-plane.client-cert"),
        "{help}"
    );
    let (code, top, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(top.contains("doctor"), "{top}");
}

#[test]
fn each_channel_target_is_checked_and_stdio_programs_are_looked_up() {
    let w = world("doctor-channels", &[]);
    let docs = format!("channel=docs,url={}", w.mcp_url());
    let (code, out) = w.doctor(
        &w.http(),
        &w.init.runtime_key,
        &docs,
        &[
            "--mcp.command",
            "channel=tools,command=/nonexistent/mcp-server --token s3cr3t-arg",
            "--mcp.command",
            "channel=shell,command=sh -c true",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "MCP server [docs]").contains("[ok  ]"), "{out}");
    let l = line(&out, "MCP command [tools]");
    assert!(
        l.contains("[FAIL]") && l.contains("/nonexistent/mcp-server"),
        "{out}"
    );
    assert!(
        fix(&out, "MCP command [tools]").contains("--mcp.command"),
        "{out}"
    );
    assert!(
        line(&out, "MCP command [shell]").contains("[ok  ]"),
        "{out}"
    );
    assert!(
        !out.contains("s3cr3t-arg"),
        "a command argument was printed:\n{out}"
    );
}

#[test]
fn a_channel_behind_its_own_proxy_is_checked_through_it() {
    let test = "a_channel_behind_its_own_proxy_is_checked_through_it";
    let Some(proxy) = Tinyproxy::start(
        test,
        &ProxyConf {
            basic_auth: Some(("chan-user", "right.pass")),
            connect_ports: &[],
        },
    ) else {
        return;
    };
    let w = world("doctor-chan-proxy", &[]);
    let entry = |userinfo: &str| {
        format!(
            "channel=docs,url={},http-proxy={}",
            w.mcp_url(),
            proxy.url_with(userinfo)
        )
    };
    let (code, out) = w.doctor(
        &w.http(),
        &w.init.runtime_key,
        &entry("chan-user:wrong.pass"),
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "DNS MCP server [docs]").contains("[skip]"),
        "{out}"
    );
    let l = line(&out, "proxy CONNECT");
    assert!(
        l.contains("[FAIL]") && l.contains("proxy authentication failed"),
        "{out}"
    );
    assert!(fix(&out, "proxy CONNECT").contains("http-proxy="), "{out}");
    assert!(line(&out, "MCP server [docs]").contains("[skip]"), "{out}");
    assert!(line(&out, "control-plane auth").contains("[ok  ]"), "{out}");
    assert!(!out.contains("wrong.pass"), "{out}");
    assert_eq!(
        proxy.connects_to(w.relay.port()),
        0,
        "the control plane is not behind the channel's proxy"
    );

    let (code, out) = w.doctor(
        &w.http(),
        &w.init.runtime_key,
        &entry("chan-user:right.pass"),
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "proxy CONNECT").contains("[ok  ]"), "{out}");
    assert!(line(&out, "MCP server [docs]").contains("[ok  ]"), "{out}");
    assert!(proxy.connects_to(w.mcp.port()) >= 1);
    assert!(!out.contains("right.pass"), "{out}");
}
