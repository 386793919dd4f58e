//! The agent's network edge end to end: the control plane reached through a
//! real CONNECT proxy (tinyproxy), MCP servers behind TLS with a private CA
//! and client certificates (certificates made by the `openssl` CLI), and the
//! startup checks of the edge flags.

mod agent_support;
mod common;

use std::ffi::OsString;

use agent_support::*;
use common::pki::pki;
use common::server::{tls_config as server_tls, TestServer};
use common::tinyproxy::{ProxyConf, Tinyproxy};
use mcp_tunnel::agent::config::{self, Parsed};

const USER: &str = "edge-user";
const PASS: &str = "s3cret.pass";
const RESULT: &str = r#"{"jsonrpc":"2.0","id":5,"result":{"ok":true}}"#;

fn auth_proxy(test: &str) -> Option<Tinyproxy> {
    Tinyproxy::start(
        test,
        &ProxyConf {
            basic_auth: Some((USER, PASS)),
            connect_ports: &[],
        },
    )
}

/// Runs one command against `mcp_url` and returns the posted answer.
fn one_command(mcp_url: &str, extra: &[&str]) -> Posted {
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("e-1", &call(5), "")]);
    let agent = start_agent(&cp, mcp_url, extra);
    let posts = cp.wait_posts(1);
    assert_eq!(agent.stop(), 0);
    assert_eq!(posts.len(), 1);
    posted(&posts[0])
}

fn resp_json(p: &Posted) -> String {
    String::from_utf8(p.resp_json.clone().expect("resp_json")).unwrap()
}

#[test]
fn control_plane_goes_through_the_proxy_with_credentials_and_mcp_does_not() {
    let test = "control_plane_goes_through_the_proxy_with_credentials_and_mcp_does_not";
    let Some(proxy) = auth_proxy(test) else {
        return;
    };
    let mcp = TestServer::start_json(None, RESULT);
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("e-1", &call(5), "")]);
    let proxy_url = proxy.url_with(&format!("{USER}:s3cret.p%61ss"));
    let agent = start_agent(
        &cp,
        &format!("{}mcp", mcp.url("http")),
        &["--control-plane.http-proxy", &proxy_url],
    );
    let posts = cp.wait_posts(1);
    assert_eq!(agent.stop(), 0);
    let p = posted(&posts[0]);
    assert_eq!(p.resp_code, 200);
    assert_eq!(resp_json(&p), RESULT);
    assert!(
        proxy.connects_to(cp.addr.port()) >= 2,
        "metadata, polls and the post went through the proxy"
    );
    assert_eq!(
        proxy.connects_to(mcp.addr.port()),
        0,
        "MCP targets use no proxy unless told"
    );
    assert_eq!(mcp.served(), 1);
}

#[test]
fn a_wrong_proxy_password_is_a_readiness_reason_and_nothing_reaches_the_control_plane() {
    let test = "a_wrong_proxy_password_is_a_readiness_reason_and_nothing_reaches_the_control_plane";
    let Some(proxy) = auth_proxy(test) else {
        return;
    };
    let mcp = TestServer::start_json(None, RESULT);
    let cp = FakeCp::start();
    let agent = start_agent(
        &cp,
        &format!("{}mcp", mcp.url("http")),
        &["--http-proxy", &proxy.url_with(&format!("{USER}:hunter7"))],
    );
    let reason = wait_reason(&agent, "proxy authentication failed");
    assert!(
        reason.starts_with("control plane unreachable: proxy authentication failed"),
        "{reason}"
    );
    assert!(
        !reason.contains("hunter7"),
        "no password in readiness: {reason}"
    );
    assert_eq!(cp.poll_count(), 0);
    assert!(proxy.connects_to(cp.addr.port()) >= 1);
    assert_eq!(agent.stop(), 0);
}

#[test]
fn mcp_behind_a_private_ca_fails_as_tls_without_the_bundle_and_works_with_it() {
    let test = "mcp_behind_a_private_ca_fails_as_tls_without_the_bundle_and_works_with_it";
    let Some(p) = pki(test) else { return };
    let mcp = TestServer::start_json(Some(server_tls(&p.server.0, &p.server.1, None)), RESULT);
    let url = format!("{}mcp", mcp.url("https"));

    let failed = one_command(&url, &[]);
    assert_eq!(failure_source(&failed), "tls");
    assert_eq!(failed.resp_code, 502);
    assert_eq!(mcp.served(), 0);

    let ca = p.ca.display().to_string();
    let ok = one_command(&url, &["--ca-bundle", &ca]);
    assert_eq!(ok.resp_code, 200);
    assert_eq!(resp_json(&ok), RESULT);
    assert_eq!(mcp.served(), 1);
}

#[test]
fn mcp_mtls_presents_the_mcp_certificate_and_reports_a_missing_one() {
    let test = "mcp_mtls_presents_the_mcp_certificate_and_reports_a_missing_one";
    let Some(p) = pki(test) else { return };
    let mcp = TestServer::start_json(
        Some(server_tls(&p.server.0, &p.server.1, Some(&p.ca))),
        RESULT,
    );
    let url = format!("{}mcp", mcp.url("https"));
    let ca = p.ca.display().to_string();

    // No client certificate: the MCP server refuses the handshake.
    let cp = FakeCp::start();
    cp.push_batch(&[jsonrpc_command("e-1", &call(5), "")]);
    let agent = start_agent(&cp, &url, &["--ca-bundle", &ca]);
    let posts = cp.wait_posts(1);
    assert_eq!(failure_source(&posted(&posts[0])), "tls");
    let reason = wait_reason(&agent, "client certificate");
    assert!(reason.contains("requires a client certificate"), "{reason}");
    assert_eq!(agent.stop(), 0);

    // A control-plane certificate is not sent to the MCP server.
    let cert = p.client_sec1.0.display().to_string();
    let key = p.client_sec1.1.display().to_string();
    let only_cp = one_command(
        &url,
        &[
            "--ca-bundle",
            &ca,
            "--control-plane.client-cert",
            &cert,
            "--control-plane.client-key",
            &key,
        ],
    );
    assert_eq!(failure_source(&only_cp), "tls");
    assert_eq!(mcp.served(), 0);

    let ok = one_command(
        &url,
        &[
            "--ca-bundle",
            &ca,
            "--mcp.client-cert",
            &cert,
            "--mcp.client-key",
            &key,
        ],
    );
    assert_eq!(ok.resp_code, 200, "{}", resp_json(&ok));
    assert_eq!(resp_json(&ok), RESULT);
    assert_eq!(mcp.served(), 1);
}

fn parse_err(extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut args: Vec<OsString> = [
        "--control-plane.tunnel-id",
        "tunnel_test",
        "--control-plane.api-key",
        "sk-test",
        "--mcp.server-url",
        "http://127.0.0.1:9/mcp",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.extend(extra.iter().map(OsString::from));
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    match config::parse(args, &lookup) {
        Err(e) => e.to_string(),
        Ok(Parsed::Run(_)) => panic!("{extra:?} accepted"),
        Ok(Parsed::Help) => panic!("help"),
    }
}

#[test]
fn bad_certificates_are_one_line_naming_flag_variable_and_file() {
    let test = "bad_certificates_are_one_line_naming_flag_variable_and_file";
    let Some(p) = pki(test) else { return };
    let s = |x: &std::path::Path| x.display().to_string();

    let e = parse_err(
        &[
            "--mcp.client-cert",
            &s(&p.client_pkcs8.0),
            "--mcp.client-key",
            &s(&p.client_pkcs1.1),
        ],
        &[],
    );
    assert!(
        e.starts_with("invalid value for --mcp.client-key (MCP_CLIENT_KEY): private key in"),
        "{e}"
    );
    assert!(e.contains("does not belong to the certificate"), "{e}");

    // The same through the environment.
    let e = parse_err(
        &[],
        &[
            ("CONTROL_PLANE_CLIENT_CERT", &s(&p.client_expired.0)),
            ("CONTROL_PLANE_CLIENT_KEY", &s(&p.client_expired.1)),
        ],
    );
    assert!(
        e.starts_with("invalid value for --control-plane.client-cert (CONTROL_PLANE_CLIENT_CERT): certificate in"),
        "{e}"
    );
    assert!(e.contains("expired at 2020-02-01T00:00:00Z"), "{e}");

    let missing = p.dir.join("missing.key");
    let e = parse_err(
        &[
            "--mcp.client-cert",
            &s(&p.client_sec1.0),
            "--mcp.client-key",
            &s(&missing),
        ],
        &[],
    );
    assert!(
        e.starts_with("invalid value for --mcp.client-key (MCP_CLIENT_KEY)"),
        "{e}"
    );
    assert!(e.contains("missing.key"), "{e}");

    let e = parse_err(&[], &[("CA_BUNDLE", &s(&p.client_pkcs8.1))]);
    assert!(
        e.starts_with("invalid value for --ca-bundle (CA_BUNDLE)"),
        "{e}"
    );
    assert!(
        e.contains("client-pkcs8.key holds no PEM CA certificate"),
        "{e}"
    );

    for e in [
        parse_err(&["--http-proxy", "https://u:hunter2@proxy:3128"], &[]),
        parse_err(
            &[],
            &[("CONTROL_PLANE_HTTP_PROXY", "http://u:hunter2@proxy:99999")],
        ),
        parse_err(&[], &[("HTTPS_PROXY", "socks5://u:hunter2@proxy")]),
    ] {
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn bad_channel_certificates_name_the_flag_the_channel_and_the_file() {
    let test = "bad_channel_certificates_name_the_flag_the_channel_and_the_file";
    let Some(p) = pki(test) else { return };
    let s = |x: &std::path::Path| x.display().to_string();
    let prefix = "invalid value for --mcp.server-url (MCP_SERVER_URL): channel docs: ";
    let entry = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "channel=docs,url=https://127.0.0.1:9/mcp,client-cert={},client-key={}",
            s(cert),
            s(key)
        )
    };
    let e = parse_err(
        &[
            "--mcp.server-url",
            &entry(&p.client_pkcs8.0, &p.client_pkcs1.1),
        ],
        &[],
    );
    assert!(
        e.starts_with(&format!("{prefix}client-key: private key in")),
        "{e}"
    );
    assert!(e.contains("does not belong to the certificate"), "{e}");
    let e = parse_err(
        &[
            "--mcp.server-url",
            &entry(&p.client_expired.0, &p.client_expired.1),
        ],
        &[],
    );
    assert!(
        e.starts_with(&format!("{prefix}client-cert: certificate in")),
        "{e}"
    );
    assert!(
        e.contains("client-expired.pem expired at 2020-02-01T00:00:00Z"),
        "{e}"
    );
    let e = parse_err(
        &[
            "--mcp.server-url",
            &format!(
                "channel=docs,url=https://127.0.0.1:9/mcp,ca-bundle={}",
                s(&p.client_pkcs8.1)
            ),
        ],
        &[],
    );
    assert!(
        e.starts_with(&format!("{prefix}ca-bundle: ")) && e.contains("holds no PEM CA certificate"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn valid_edge_settings_load_from_flags_and_environment() {
    let test = "valid_edge_settings_load_from_flags_and_environment";
    let Some(p) = pki(test) else { return };
    let s = |x: &std::path::Path| x.display().to_string();
    let args: Vec<OsString> = [
        "--control-plane.tunnel-id",
        "tunnel_test",
        "--control-plane.api-key",
        "sk-test",
        "--mcp.server-url",
        "https://127.0.0.1:9/mcp",
        "--ca-bundle",
        &s(&p.ca),
        "--mcp.client-cert",
        &s(&p.client_pkcs1.0),
        "--mcp.client-key",
        &s(&p.client_pkcs1.1),
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let env = |n: &str| match n {
        "TUNNEL_CLIENT_HTTP_PROXY" => Some("http://u:hunter2@proxy.corp:3128".to_string()),
        "NO_PROXY" => Some(".corp, 10.0.0.0/8".to_string()),
        _ => None,
    };
    let Ok(Parsed::Run(cfg)) = config::parse(args, &env) else {
        panic!("valid settings rejected")
    };
    let edge = &cfg.edge;
    assert_eq!(
        edge.ca_bundle.as_ref().map(|(_, t)| t.bundle_count),
        Some(1)
    );
    assert!(edge.mcp_identity.is_some() && edge.cp_identity.is_none());
    assert_eq!(
        edge.proxies
            .global
            .as_ref()
            .map(|u| u.to_string())
            .as_deref(),
        Some("http://u:***@proxy.corp:3128")
    );
    let dbg = format!("{cfg:?}");
    assert!(
        !dbg.contains("hunter2"),
        "Debug of the config leaks the proxy password"
    );
}

#[test]
fn help_lists_the_edge_flags_with_their_variables() {
    let help = config::help();
    for (flag, env) in [
        ("--http-proxy", "TUNNEL_CLIENT_HTTP_PROXY"),
        ("--control-plane.http-proxy", "CONTROL_PLANE_HTTP_PROXY"),
        ("--ca-bundle", "CA_BUNDLE"),
        ("--control-plane.client-cert", "CONTROL_PLANE_CLIENT_CERT"),
        ("--control-plane.client-key", "CONTROL_PLANE_CLIENT_KEY"),
        ("--mcp.client-cert", "MCP_CLIENT_CERT"),
        ("--mcp.client-key", "MCP_CLIENT_KEY"),
    ] {
        assert!(
            help.contains(&format!("{flag} VALUE  [env: {env}]")),
            "{flag}"
        );
    }
    assert!(help.contains("user:***"));
    // The per-channel network keys of --mcp.server-url.
    for key in [
        "http-proxy=",
        "client-cert=PATH",
        "client-key=PATH",
        "ca-bundle=PATH",
    ] {
        assert!(help.contains(key), "{key}");
    }
}
