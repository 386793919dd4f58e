//! Outbound proxying through a real CONNECT proxy (tinyproxy), with and
//! without Basic auth, chosen by `net::proxy` from flags and environment
//! values, and a ureq agent as the client.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::pki::pki;
use common::server::{tls_config as server_tls, TestServer};
use common::tinyproxy::{ProxyConf, Tinyproxy};
use mcp_tunnel::net::proxy::{
    control_plane_proxy, mcp_proxy, proxy_failure, ControlPlaneProxies, DirectReason, ProxyChoice,
    ProxyEnv, ProxyFailure, ProxyOrigin, ProxyUrl,
};
use mcp_tunnel::net::tls_client::Trust;
use mcp_tunnel::proto::failure::FailureSource;

const USER: &str = "edge-user";
const PASS: &str = "s3cret.pass";
/// `PASS` with one letter percent-encoded: the agent must decode it.
const PASS_ENCODED: &str = "s3cret.p%61ss";

fn env(vars: &[(&str, &str)]) -> ProxyEnv {
    let map: HashMap<&str, &str> = vars.iter().copied().collect();
    ProxyEnv::from_lookup(|n| map.get(n).map(|v| v.to_string()))
        .expect("proxy env")
        .0
}

fn no_auth() -> ProxyConf<'static> {
    ProxyConf {
        basic_auth: None,
        connect_ports: &[],
    }
}

fn with_auth() -> ProxyConf<'static> {
    ProxyConf {
        basic_auth: Some((USER, PASS)),
        connect_ports: &[],
    }
}

/// GET through the chosen proxy; the body or the ureq error.
fn get(url: &str, choice: &ProxyChoice, trust: &Trust) -> Result<String, ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(trust.config(None))
        .proxy(choice.to_ureq().expect("ureq proxy"))
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut r = agent.get(url).call()?;
    Ok(r.body_mut().read_to_string().expect("body"))
}

#[test]
fn https_goes_through_the_env_proxy_with_connect() {
    let test = "https_goes_through_the_env_proxy_with_connect";
    let Some(p) = pki(test) else { return };
    let Some(proxy) = Tinyproxy::start(test, &no_auth()) else {
        return;
    };
    let server = TestServer::start(Some(server_tls(&p.server.0, &p.server.1, None)));
    let dest = server.url("https");

    let proxies = ControlPlaneProxies {
        env: env(&[("HTTPS_PROXY", &proxy.url())]),
        ..Default::default()
    };
    let choice = control_plane_proxy(&dest.parse().unwrap(), &proxies);
    assert!(matches!(
        choice,
        ProxyChoice::Via {
            origin: ProxyOrigin::Env("HTTPS_PROXY"),
            ..
        }
    ));

    let trust = Trust::bundle_only(&p.ca).unwrap();
    assert_eq!(get(&dest, &choice, &trust).unwrap(), "hello");
    assert_eq!(server.served(), 1);
    assert_eq!(proxy.connects_to(server.addr.port()), 1);
}

#[test]
fn basic_auth_credentials_are_decoded_and_wrong_ones_are_a_clear_auth_failure() {
    let test = "basic_auth_credentials_are_decoded_and_wrong_ones_are_a_clear_auth_failure";
    let Some(p) = pki(test) else { return };
    let Some(proxy) = Tinyproxy::start(test, &with_auth()) else {
        return;
    };
    let server = TestServer::start(Some(server_tls(&p.server.0, &p.server.1, None)));
    let dest = server.url("https");
    let trust = Trust::bundle_only(&p.ca).unwrap();
    let via_flag = |userinfo: Option<&str>| {
        let url = match userinfo {
            Some(u) => proxy.url_with(u),
            None => proxy.url(),
        };
        let proxies = ControlPlaneProxies {
            control_plane: Some(ProxyUrl::parse(&url).unwrap()),
            ..Default::default()
        };
        control_plane_proxy(&dest.parse().unwrap(), &proxies)
    };

    let good = via_flag(Some(&format!("{USER}:{PASS_ENCODED}")));
    let shown = good.to_string();
    assert!(shown.contains(&format!("http://{USER}:***@")), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert_eq!(get(&dest, &good, &trust).unwrap(), "hello");
    assert_eq!(server.served(), 1);

    // tinyproxy answers 407 without credentials and 401 to wrong ones.
    for (bad, status) in [(Some(format!("{USER}:wrong")), 401), (None, 407)] {
        let choice = via_flag(bad.as_deref());
        let err = get(&dest, &choice, &trust).unwrap_err();
        let failure = proxy_failure(&err);
        assert_eq!(failure, Some(ProxyFailure::Auth(status)), "{err}");
        let failure = failure.unwrap();
        assert!(failure.reason().contains("proxy authentication failed"));
        assert!(failure.reason().contains(&status.to_string()));
        assert_eq!(failure.tunnel_failure().source, FailureSource::Connect);
    }
    assert_eq!(server.served(), 1, "no request got past the proxy");
    assert_eq!(proxy.connects_to(server.addr.port()), 3);
}

#[test]
fn no_proxy_bypasses_the_proxy() {
    let test = "no_proxy_bypasses_the_proxy";
    let Some(p) = pki(test) else { return };
    // Credentials are not given: anything sent through this proxy gets a 407.
    let Some(proxy) = Tinyproxy::start(test, &with_auth()) else {
        return;
    };
    let server = TestServer::start(Some(server_tls(&p.server.0, &p.server.1, None)));
    let dest = server.url("https");
    let trust = Trust::bundle_only(&p.ca).unwrap();

    let proxied = ControlPlaneProxies {
        global: Some(ProxyUrl::parse(&proxy.url()).unwrap()),
        env: env(&[("HTTPS_PROXY", &proxy.url())]),
        ..Default::default()
    };
    let choice = control_plane_proxy(&dest.parse().unwrap(), &proxied);
    let err = get(&dest, &choice, &trust).unwrap_err();
    assert_eq!(proxy_failure(&err), Some(ProxyFailure::Auth(407)));
    assert_eq!(proxy.connects_to(server.addr.port()), 1);

    for no_proxy in ["127.0.0.0/8", " localhost , 127.0.0.1 ", "*"] {
        let bypassed = ControlPlaneProxies {
            global: proxied.global.clone(),
            env: env(&[("HTTPS_PROXY", &proxy.url()), ("no_proxy", no_proxy)]),
            ..Default::default()
        };
        let choice = control_plane_proxy(&dest.parse().unwrap(), &bypassed);
        assert_eq!(
            choice,
            ProxyChoice::Direct(DirectReason::NoProxy),
            "{no_proxy}"
        );
        assert_eq!(get(&dest, &choice, &trust).unwrap(), "hello");
    }
    assert_eq!(server.served(), 3);
    assert_eq!(
        proxy.connects_to(server.addr.port()),
        1,
        "the bypassed requests never reached the proxy"
    );
}

#[test]
fn plain_http_destinations_are_tunnelled_with_connect_too() {
    let test = "plain_http_destinations_are_tunnelled_with_connect_too";
    let Some(proxy) = Tinyproxy::start(test, &no_auth()) else {
        return;
    };
    let server = TestServer::start(None);
    let dest = server.url("http");
    let proxies = ControlPlaneProxies {
        env: env(&[
            ("HTTPS_PROXY", "http://127.0.0.1:9"),
            ("http_proxy", &proxy.url()),
        ]),
        ..Default::default()
    };
    let choice = control_plane_proxy(&dest.parse().unwrap(), &proxies);
    assert!(matches!(
        choice,
        ProxyChoice::Via {
            origin: ProxyOrigin::Env("http_proxy"),
            ..
        }
    ));
    let trust = Trust::load(None).unwrap();
    assert_eq!(get(&dest, &choice, &trust).unwrap(), "hello");
    assert_eq!(proxy.connects_to(server.addr.port()), 1);
}

#[test]
fn mcp_channel_proxy_is_used_and_env_is_not() {
    let test = "mcp_channel_proxy_is_used_and_env_is_not";
    let Some(proxy) = Tinyproxy::start(test, &no_auth()) else {
        return;
    };
    let server = TestServer::start(None);
    let dest = server.url("http");
    let trust = Trust::load(None).unwrap();

    assert_eq!(
        mcp_proxy(None),
        ProxyChoice::Direct(DirectReason::NotConfigured)
    );
    assert_eq!(get(&dest, &mcp_proxy(None), &trust).unwrap(), "hello");
    assert_eq!(proxy.connects_to(server.addr.port()), 0);

    let chan = ProxyUrl::parse(&proxy.url()).unwrap();
    assert_eq!(
        get(&dest, &mcp_proxy(Some(&chan)), &trust).unwrap(),
        "hello"
    );
    assert_eq!(proxy.connects_to(server.addr.port()), 1);
}

#[test]
fn a_proxy_policy_refusal_is_reported_with_its_status() {
    let test = "a_proxy_policy_refusal_is_reported_with_its_status";
    let conf = ProxyConf {
        basic_auth: None,
        connect_ports: &[443],
    };
    let Some(proxy) = Tinyproxy::start(test, &conf) else {
        return;
    };
    let server = TestServer::start(None);
    let choice = mcp_proxy(Some(&ProxyUrl::parse(&proxy.url()).unwrap()));
    let err = get(&server.url("http"), &choice, &Trust::load(None).unwrap()).unwrap_err();
    let failure = proxy_failure(&err).expect("a proxy failure");
    assert_eq!(failure, ProxyFailure::Refused(403), "{err}");
    assert!(failure.reason().contains("403"));
    assert_eq!(server.served(), 0);
}
