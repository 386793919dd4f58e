//! Client-certificate identity at the relay, end to end with the built
//! binary: `relay serve --client-ca`, tunnels bound to certificate names,
//! our agent presenting a certificate (keyless), a real MCP call through to
//! the sample server, and the refusals (unbound name, missing certificate,
//! a certificate from another CA). Certificates are made by openssl.
#![cfg(all(feature = "agent", feature = "relay"))]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use common::pki::{pki, Pki};
use common::procs::{command, relay_init, sample_server, scratch, Init, Proc};
use mcp_tunnel::net::tls_client::{tls_failure, ClientIdentity, Trust};

const ECHO: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"through mTLS"}}}"#;

struct Setup {
    init: Init,
    _relay: Proc,
    addr: SocketAddr,
    log: PathBuf,
}

/// A relay over TLS (server certificate for 127.0.0.1) asking for client
/// certificates from the test CA; `admin` runs before it starts.
fn setup(p: &Pki, tag: &str, admin: &[&[&str]]) -> Setup {
    let dir = scratch(tag);
    let log = dir.join("relay.log");
    let init = relay_init(&dir);
    let t = init.tunnel.clone();
    for a in admin {
        let args: Vec<&str> = a
            .iter()
            .map(|x| if *x == "T" { t.as_str() } else { *x })
            .collect();
        init.admin(&args);
    }
    let (relay, addr) = init.serve(&[
        "--tls-cert",
        p.server.0.to_str().unwrap(),
        "--tls-key",
        p.server.1.to_str().unwrap(),
        "--client-ca",
        p.ca.to_str().unwrap(),
        "--log-file",
        log.to_str().unwrap(),
    ]);
    Setup {
        init,
        _relay: relay,
        addr,
        log,
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn code(&self) -> String {
        let v: miniserde::json::Value =
            miniserde::json::from_str(&self.body).unwrap_or(miniserde::json::Value::Null);
        let miniserde::json::Value::Object(o) = v else {
            return String::new();
        };
        match o.get("error") {
            Some(miniserde::json::Value::Object(e)) => match e.get("code") {
                Some(miniserde::json::Value::String(c)) => c.clone(),
                _ => String::new(),
            },
            _ => String::new(),
        }
    }
}

/// One HTTPS request trusting the test CA, presenting `cert` if given.
fn https(
    p: &Pki,
    cert: Option<&(PathBuf, PathBuf)>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Answer, ureq::Error> {
    let trust = Trust::bundle_only(&p.ca).expect("CA");
    let id = cert.map(|c| ClientIdentity::load(&c.0, &c.1, SystemTime::now()).expect("cert"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(trust.config(id.as_ref()))
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(url);
            for (n, v) in headers {
                r = r.header(*n, *v);
            }
            r.call()?
        }
        (_, b) => {
            let mut r = agent.post(url);
            for (n, v) in headers {
                r = r.header(*n, *v);
            }
            r.send(b.unwrap_or(""))?
        }
    };
    Ok(Answer {
        status: resp.status().as_u16(),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    })
}

fn metadata(s: &Setup, p: &Pki, cert: Option<&(PathBuf, PathBuf)>, key: Option<&str>) -> Answer {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    https(
        p,
        cert,
        "GET",
        &format!("https://{}/v1/tunnels/{}", s.addr, s.init.tunnel),
        &headers,
        None,
    )
    .expect("an HTTP answer")
}

#[test]
fn keyless_agent_serves_a_real_mcp_call_through_an_mtls_relay() {
    let Some(p) = pki("keyless_agent_serves_a_real_mcp_call_through_an_mtls_relay") else {
        return;
    };
    // A DNS SAN bound with other case: DNS names compare without case.
    let s = setup(
        p,
        "mtls-keyless",
        &[
            &[
                "relay",
                "tunnel",
                "bind-cert",
                "T",
                "--name",
                "Agent-7.corp.example",
            ],
            &["relay", "tunnel", "set", "T", "--agent-auth", "cert"],
        ],
    );
    let (_mcp, mcp_addr) = sample_server();
    let mut agent = Proc(
        command(&[
            "agent",
            "--control-plane.base-url",
            &format!("https://{}", s.addr),
            "--control-plane.tunnel-id",
            &s.init.tunnel,
            "--ca-bundle",
            p.ca.to_str().unwrap(),
            "--control-plane.client-cert",
            p.client_san.0.to_str().unwrap(),
            "--control-plane.client-key",
            p.client_san.1.to_str().unwrap(),
            "--mcp.server-url",
            &format!("http://{mcp_addr}/mcp"),
            "--health.listen-addr",
            "off",
            "--log.level",
            "warn",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn agent"),
    );
    // Until the agent's first poll arrives the relay answers 503.
    let url = format!("https://{}/v1/mcp/{}", s.addr, s.init.tunnel);
    let bearer = format!("Bearer {}", s.init.connector_key);
    let until = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let a = https(
            p,
            None,
            "POST",
            &url,
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
            ],
            Some(ECHO),
        )
        .expect("connector answer");
        if a.status != 503 || Instant::now() > until {
            break a;
        }
        assert!(
            agent.0.try_wait().unwrap().is_none(),
            "the keyless agent exited"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer.body.contains(r#""text":"through mTLS""#),
        "{answer:?}"
    );
    assert!(answer.body.contains(r#""id":7"#), "{answer:?}");
    // Keyless means exactly that: the runtime key is not what admitted it.
    let no_key = metadata(&s, p, Some(&p.client_san), None);
    assert_eq!(no_key.status, 200, "{no_key:?}");
}

#[test]
fn certificates_not_bound_missing_or_from_another_ca_are_refused() {
    let Some(p) = pki("certificates_not_bound_missing_or_from_another_ca_are_refused") else {
        return;
    };
    let s = setup(
        p,
        "mtls-refusals",
        &[
            &[
                "relay",
                "tunnel",
                "bind-cert",
                "T",
                "--name",
                "spiffe://corp/agent-7",
            ],
            &["relay", "tunnel", "set", "T", "--agent-auth", "cert"],
        ],
    );
    // The URI SAN is bound: admitted without a key.
    assert_eq!(metadata(&s, p, Some(&p.client_san), None).status, 200);
    // A certificate of the right CA whose names are not bound: 403.
    let a = metadata(&s, p, Some(&p.client_pkcs8), Some(&s.init.runtime_key));
    assert_eq!(
        (a.status, a.code().as_str()),
        (403, "tunnel_use_forbidden"),
        "{a:?}"
    );
    // No certificate: 401 with a code that says so, a valid key notwithstanding.
    let a = metadata(&s, p, None, Some(&s.init.runtime_key));
    assert_eq!(
        (a.status, a.code().as_str()),
        (401, "client_certificate_required"),
        "{a:?}"
    );
    // A certificate from another CA never gets past the handshake.
    let e = https(
        p,
        Some(&p.client_untrusted),
        "GET",
        &format!("https://{}/v1/tunnels/{}", s.addr, s.init.tunnel),
        &[],
        None,
    )
    .expect_err("handshake refused");
    eprintln!("untrusted client certificate: {e} ({:?})", tls_failure(&e));
    // The operator sees why (a warning, not a debug line).
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&s.log).unwrap_or_default();
        if log.contains("refused: client certificate") {
            assert!(log.contains("WARN"), "{log}");
            break;
        }
        assert!(Instant::now() < until, "no warning in {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The binding is live: unbinding refuses the next request, no restart.
    s.init.admin(&[
        "relay",
        "tunnel",
        "unbind-cert",
        &s.init.tunnel,
        "--name",
        "spiffe://corp/agent-7",
    ]);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let a = metadata(&s, p, Some(&p.client_san), None);
        if a.status == 403 {
            break;
        }
        assert!(Instant::now() < until, "unbinding not applied: {a:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn key_and_cert_needs_both_and_connectors_can_be_bound_too() {
    let Some(p) = pki("key_and_cert_needs_both_and_connectors_can_be_bound_too") else {
        return;
    };
    let s = setup(
        p,
        "mtls-both",
        &[
            &["relay", "tunnel", "bind-cert", "T", "--name", "client-san"],
            &["relay", "tunnel", "set", "T", "--agent-auth", "key+cert"],
            &[
                "relay",
                "tunnel",
                "bind-cert",
                "T",
                "--name",
                "client-pkcs8",
                "--role",
                "connector",
            ],
            &["relay", "tunnel", "set", "T", "--connector-auth", "cert"],
        ],
    );
    let both = metadata(&s, p, Some(&p.client_san), Some(&s.init.runtime_key));
    assert_eq!(both.status, 200, "{both:?}");
    let a = metadata(&s, p, Some(&p.client_san), None);
    assert_eq!((a.status, a.code().as_str()), (401, "missing_api_key"));
    let a = metadata(&s, p, None, Some(&s.init.runtime_key));
    assert_eq!(
        (a.status, a.code().as_str()),
        (401, "client_certificate_required")
    );
    // The agent's name is not a connector's name.
    let url = format!("https://{}/v1/mcp/{}", s.addr, s.init.tunnel);
    let post = |cert| {
        https(
            p,
            cert,
            "POST",
            &url,
            &[("Content-Type", "application/json")],
            Some(ECHO),
        )
        .expect("answer")
    };
    let a = post(Some(&p.client_san));
    assert_eq!((a.status, a.code().as_str()), (403, "tunnel_use_forbidden"));
    let a = post(None);
    assert_eq!(
        (a.status, a.code().as_str()),
        (401, "client_certificate_required")
    );
    // The bound connector certificate passes auth without a key; no agent
    // polls this tunnel, so what it meets next is the queue's 503.
    let a = post(Some(&p.client_pkcs8));
    assert_eq!(
        (a.status, a.code().as_str()),
        (503, "tunnel_client_not_connected"),
        "{a:?}"
    );
}

#[test]
fn client_ca_flags_are_checked_at_startup() {
    let Some(p) = pki("client_ca_flags_are_checked_at_startup") else {
        return;
    };
    let init = relay_init(&scratch("mtls-flags"));
    let st = init.state.to_str().unwrap();
    let (code, _, err) = common::procs::run(&[
        "relay",
        "serve",
        "--state",
        st,
        "--listen",
        "127.0.0.1:0",
        "--client-ca",
        p.ca.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--client-ca needs TLS"), "{err}");
    let (code, _, err) = common::procs::run(&[
        "relay",
        "serve",
        "--state",
        st,
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        p.server.0.to_str().unwrap(),
        "--tls-key",
        p.server.1.to_str().unwrap(),
        "--client-ca",
        "/nonexistent/ca.pem",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let (code, help, _) = common::procs::run(&["relay", "serve", "--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("--client-ca") && help.contains("--require-client-cert"));
    let (code, help, _) = common::procs::run(&["relay", "tunnel", "--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("bind-cert") && help.contains("client_certificate_required"));
}

#[test]
fn require_client_cert_refuses_handshakes_without_one() {
    let Some(p) = pki("require_client_cert_refuses_handshakes_without_one") else {
        return;
    };
    let init = relay_init(&scratch("mtls-required"));
    let (_relay, addr) = init.serve(&[
        "--tls-cert",
        p.server.0.to_str().unwrap(),
        "--tls-key",
        p.server.1.to_str().unwrap(),
        "--client-ca",
        p.ca.to_str().unwrap(),
        "--require-client-cert",
    ]);
    let url = format!("https://{addr}/v1/tunnels/{}", init.tunnel);
    let bearer = format!("Bearer {}", init.runtime_key);
    let headers = [("Authorization", bearer.as_str())];
    let e = https(p, None, "GET", &url, &headers, None).expect_err("no certificate, no TLS");
    eprintln!("without a certificate: {e} ({:?})", tls_failure(&e));
    // A key tunnel with a certificate presented: the key decides, as before.
    let a = https(p, Some(&p.client_pkcs8), "GET", &url, &headers, None).expect("answer");
    assert_eq!(a.status, 200, "{a:?}");
}
