//! Per-channel network settings of `--mcp.server-url channel=…,url=…`, end
//! to end: a channel's `http-proxy=` (a real tinyproxy) carries that
//! channel's MCP traffic and nothing else; each channel presents its own
//! client certificate (`client-cert=`/`client-key=`, else `--mcp.client-cert`)
//! to its own origin only — never to another channel's, never to the control
//! plane (TLS servers and certificates made by the tests with `openssl`).

mod agent_support;
mod common;

use agent_support::*;
use common::pki::pki;
use common::server::{leaf_der, tls_config as server_tls, tls_config_asking, TestServer, TlsFront};
use common::tinyproxy::{ProxyConf, Tinyproxy};

const USER: &str = "chan-user";
const PASS: &str = "chan.pass";
const RESULT: &str = r#"{"jsonrpc":"2.0","id":5,"result":{"ok":true}}"#;

fn proxy(test: &str, auth: bool) -> Option<Tinyproxy> {
    Tinyproxy::start(
        test,
        &ProxyConf {
            basic_auth: auth.then_some((USER, PASS)),
            connect_ports: &[],
        },
    )
}

/// Runs one command per channel (request id `r-CHANNEL`) and returns the
/// posted answers in the order of `channels`.
fn one_per_channel(cp: &FakeCp, agent_args: &[&str], channels: &[&str]) -> Vec<Posted> {
    let batch: Vec<String> = channels
        .iter()
        .map(|c| on(c, jsonrpc_command(&format!("r-{c}"), &call(5), "")))
        .collect();
    cp.push_batch(&batch);
    let agent = start_agent_with(cp, agent_args);
    let mut posts: Vec<Posted> = cp.wait_posts(channels.len()).iter().map(posted).collect();
    assert_eq!(agent.stop(), 0);
    channels
        .iter()
        .map(|c| {
            let id = format!("r-{c}");
            let i = posts
                .iter()
                .position(|p| p.request_id == id)
                .unwrap_or_else(|| panic!("no answer for {id}"));
            posts.swap_remove(i)
        })
        .collect()
}

fn resp_json(p: &Posted) -> String {
    String::from_utf8(p.resp_json.clone().expect("resp_json")).unwrap()
}

#[test]
fn a_channel_proxy_carries_that_channel_only() {
    let test = "a_channel_proxy_carries_that_channel_only";
    let (Some(cp_proxy), Some(chan_proxy)) = (proxy(test, false), proxy(test, true)) else {
        return;
    };
    let via = TestServer::start_json(None, RESULT);
    let direct = TestServer::start_json(None, RESULT);
    let cp = FakeCp::start();
    let via_entry = format!(
        "channel=via,url={}mcp,http-proxy={}",
        via.url("http"),
        chan_proxy.url_with(&format!("{USER}:{PASS}"))
    );
    let direct_entry = format!("channel=direct,url={}mcp", direct.url("http"));
    let posts = one_per_channel(
        &cp,
        &[
            "--http-proxy",
            &cp_proxy.url(),
            "--mcp.server-url",
            &via_entry,
            "--mcp.server-url",
            &direct_entry,
        ],
        &["via", "direct"],
    );
    for p in &posts {
        assert_eq!(p.resp_code, 200, "{}", p.request_id);
        assert_eq!(resp_json(p), RESULT);
    }
    assert_eq!((via.served(), direct.served()), (1, 1));
    assert_eq!(
        chan_proxy.connects_to(via.addr.port()),
        1,
        "the channel's MCP call went through its proxy"
    );
    assert_eq!(
        chan_proxy.connects_to(direct.addr.port()),
        0,
        "another channel does not use it"
    );
    assert_eq!(
        chan_proxy.connects_to(cp.addr.port()),
        0,
        "nor does the control plane"
    );
    assert!(
        cp_proxy.connects_to(cp.addr.port()) >= 2,
        "the control plane went through --http-proxy"
    );
    assert_eq!(
        cp_proxy.connects_to(via.addr.port()) + cp_proxy.connects_to(direct.addr.port()),
        0,
        "--http-proxy never applies to MCP targets"
    );
}

#[test]
fn a_wrong_channel_proxy_password_is_a_connect_failure_with_the_channel_reason() {
    let test = "a_wrong_channel_proxy_password_is_a_connect_failure_with_the_channel_reason";
    let Some(chan_proxy) = proxy(test, true) else {
        return;
    };
    let behind = TestServer::start_json(None, RESULT);
    let other = TestServer::start_json(None, RESULT);
    let cp = FakeCp::start();
    cp.push_batch(&[
        on("docs", jsonrpc_command("r-docs", &call(5), "")),
        on("wiki", jsonrpc_command("r-wiki", &call(5), "")),
    ]);
    let docs = format!(
        "channel=docs,url={}mcp,http-proxy={}",
        behind.url("http"),
        chan_proxy.url_with(&format!("{USER}:hunter7"))
    );
    let wiki = format!("channel=wiki,url={}mcp", other.url("http"));
    let agent = start_agent_with(&cp, &["--mcp.server-url", &docs, "--mcp.server-url", &wiki]);
    let posts: Vec<Posted> = cp.wait_posts(2).iter().map(posted).collect();
    let docs_post = posts.iter().find(|p| p.request_id == "r-docs").unwrap();
    let wiki_post = posts.iter().find(|p| p.request_id == "r-wiki").unwrap();
    assert_eq!(failure_source(docs_post), "connect");
    assert_eq!(docs_post.resp_code, 502);
    assert_eq!(wiki_post.resp_code, 200, "the other channel is unaffected");
    let reason = wait_reason(&agent, "proxy authentication failed");
    assert!(
        reason.contains("channel docs: MCP server unreachable: proxy authentication failed"),
        "{reason}"
    );
    assert!(!reason.contains("channel wiki"), "{reason}");
    assert!(
        !reason.contains("hunter7"),
        "no password in readiness: {reason}"
    );
    assert!(chan_proxy.connects_to(behind.addr.port()) >= 1);
    assert_eq!(behind.served(), 0);
    assert_eq!(agent.stop(), 0);
}

#[test]
fn each_channel_presents_its_own_client_certificate_to_its_own_origin_only() {
    let test = "each_channel_presents_its_own_client_certificate_to_its_own_origin_only";
    let Some(p) = pki(test) else { return };
    let s = |x: &std::path::Path| x.display().to_string();
    // Two MCP servers that require client certificates from different CAs,
    // a third that asks for one without requiring it (it shows what a
    // client would present), and a control plane behind TLS that asks too.
    let a = TestServer::start_json(
        Some(server_tls(&p.server.0, &p.server.1, Some(&p.ca))),
        RESULT,
    );
    let b = TestServer::start_json(
        Some(server_tls(&p.server.0, &p.server.1, Some(&p.other_ca))),
        RESULT,
    );
    let asking = || tls_config_asking(&p.server.0, &p.server.1, &[&p.ca, &p.other_ca]);
    let c = TestServer::start_json(Some(asking()), RESULT);
    let cp = FakeCp::start();
    let front = TlsFront::start(asking(), cp.addr);
    let cp2 = FakeCp::start();
    let front2 = TlsFront::start(asking(), cp2.addr);
    let (front_url, front2_url) = (front.url(), front2.url());

    let (a_cert, a_key) = (s(&p.client_pkcs8.0), s(&p.client_pkcs8.1));
    let (b_cert, b_key) = (s(&p.client_untrusted.0), s(&p.client_untrusted.1));
    let a_entry = format!(
        "channel=a,url={}mcp,client-cert={a_cert},client-key={a_key}",
        a.url("https")
    );
    let b_entry = format!(
        "channel=b,url={}mcp,client-key={b_key},client-cert={b_cert}",
        b.url("https")
    );
    let c_entry = format!("channel=c,url={}mcp", c.url("https"));
    let ca = s(&p.ca);
    let base: Vec<&str> = vec![
        "--control-plane.base-url",
        &front_url,
        "--ca-bundle",
        &ca,
        "--mcp.server-url",
        &a_entry,
        "--mcp.server-url",
        &b_entry,
        "--mcp.server-url",
        &c_entry,
    ];
    // Which of our certificates a server saw, by name.
    let known = [
        ("a", leaf_der(&p.client_pkcs8.0)),
        ("b", leaf_der(&p.client_untrusted.0)),
        ("global", leaf_der(&p.client_sec1.0)),
    ];
    let who = |seen: Vec<Vec<u8>>| -> Vec<&str> {
        seen.iter()
            .map(|der| {
                known
                    .iter()
                    .find(|(_, k)| k == der)
                    .map_or("unknown", |(n, _)| *n)
            })
            .collect()
    };
    let none: [&str; 0] = [];
    let posts = one_per_channel(&cp, &base, &["a", "b", "c"]);
    for post in &posts {
        assert_eq!(post.resp_code, 200, "{}", post.request_id);
        assert_eq!(resp_json(post), RESULT);
    }
    assert_eq!(who(a.client_certs()), ["a"]);
    assert_eq!(who(b.client_certs()), ["b"]);
    assert_eq!(
        who(c.client_certs()),
        none,
        "a channel without a certificate presents none, not another channel's"
    );
    assert!(front.handshakes() >= 2);
    assert_eq!(
        who(front.client_certs()),
        none,
        "no MCP certificate is presented to the control plane"
    );

    // With --mcp.client-cert, channels without their own present it; the
    // others keep theirs (b's server would refuse the global one), and the
    // control plane still sees none.
    let (g_cert, g_key) = (s(&p.client_sec1.0), s(&p.client_sec1.1));
    let mut with_global = base.clone();
    with_global.extend(["--mcp.client-cert", &g_cert, "--mcp.client-key", &g_key]);
    with_global[1] = &front2_url;
    let posts = one_per_channel(&cp2, &with_global, &["a", "b", "c"]);
    for post in &posts {
        assert_eq!(post.resp_code, 200, "{}", post.request_id);
    }
    assert_eq!(who(a.client_certs()), ["a", "a"]);
    assert_eq!(who(b.client_certs()), ["b", "b"]);
    assert_eq!(who(c.client_certs()), ["global"]);
    assert!(front2.handshakes() >= 2);
    assert_eq!(who(front2.client_certs()), none);
}

#[test]
fn a_channel_ca_bundle_is_trusted_for_that_channel_only() {
    let test = "a_channel_ca_bundle_is_trusted_for_that_channel_only";
    let Some(p) = pki(test) else { return };
    let s = |x: &std::path::Path| x.display().to_string();
    let mine = TestServer::start_json(Some(server_tls(&p.server.0, &p.server.1, None)), RESULT);
    let theirs = TestServer::start_json(Some(server_tls(&p.server.0, &p.server.1, None)), RESULT);
    let cp = FakeCp::start();
    let mine_entry = format!(
        "channel=mine,url={}mcp,ca-bundle={}",
        mine.url("https"),
        s(&p.ca)
    );
    let theirs_entry = format!("channel=theirs,url={}mcp", theirs.url("https"));
    let posts = one_per_channel(
        &cp,
        &[
            "--mcp.server-url",
            &mine_entry,
            "--mcp.server-url",
            &theirs_entry,
        ],
        &["mine", "theirs"],
    );
    assert_eq!(posts[0].resp_code, 200);
    assert_eq!(resp_json(&posts[0]), RESULT);
    assert_eq!(failure_source(&posts[1]), "tls");
    assert_eq!((mine.served(), theirs.served()), (1, 0));
}
