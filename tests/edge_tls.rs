//! Client-side TLS with real handshakes: certificates made by the `openssl`
//! CLI, a rustls server on loopback, and a ureq agent built from
//! `net::tls_client` as the client.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::pki::pki;
use common::server::{tls_config as server_tls, TestServer};
use mcp_tunnel::net::tls_client::{
    tls_config, tls_failure, ClientIdentity, TlsError, TlsFailure, TlsOptions, Trust,
};
use mcp_tunnel::proto::failure::FailureSource;
use ureq::tls::TlsConfig;

/// The result of one GET: the body, or the classified TLS failure.
fn get(url: &str, tls: TlsConfig) -> Result<String, Option<TlsFailure>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    match agent.get(url).call() {
        Ok(mut r) => Ok(r.body_mut().read_to_string().expect("body")),
        Err(e) => {
            eprintln!("request error: {e}");
            Err(tls_failure(&e))
        }
    }
}

fn trust(bundle: Option<&Path>) -> Trust {
    Trust::load(bundle).expect("trust")
}

fn identity(pair: &(std::path::PathBuf, std::path::PathBuf)) -> ClientIdentity {
    ClientIdentity::load(&pair.0, &pair.1, SystemTime::now()).expect("client identity")
}

#[test]
fn private_ca_fails_without_the_bundle_and_succeeds_with_it() {
    let Some(p) = pki("private_ca_fails_without_the_bundle_and_succeeds_with_it") else {
        return;
    };
    let server = TestServer::start(Some(server_tls(&p.server.0, &p.server.1, None)));
    let url = server.url("https");

    assert_eq!(
        get(&url, trust(None).config(None)),
        Err(Some(TlsFailure::UnknownCa))
    );
    assert_eq!(server.served(), 0);

    let with_bundle = tls_config(&TlsOptions {
        ca_bundle: Some(&p.ca),
        client_cert: None,
        now: SystemTime::now(),
    })
    .expect("tls config");
    assert_eq!(get(&url, with_bundle).as_deref(), Ok("hello"));
    assert_eq!(server.served(), 1);
}

#[test]
fn the_bundle_adds_to_the_os_roots() {
    let Some(p) = pki("the_bundle_adds_to_the_os_roots") else {
        return;
    };
    let os = trust(None);
    let both = trust(Some(&p.ca));
    assert_eq!(both.os_count, os.os_count);
    assert_eq!(both.bundle_count, 1);
    // The agent's route: the bundle checked at startup, joined to the OS roots later.
    let joined = Trust::os().with(&Trust::bundle_only(&p.ca).unwrap());
    assert_eq!((joined.os_count, joined.bundle_count), (os.os_count, 1));
    let server = TestServer::start(Some(server_tls(&p.server.0, &p.server.1, None)));
    assert_eq!(
        get(&server.url("https"), joined.config(None)).as_deref(),
        Ok("hello")
    );
    // A bundle of two CAs: both count, the right one verifies.
    let two = p.dir.join("two-cas.pem");
    let text =
        std::fs::read_to_string(&p.other_ca).unwrap() + &std::fs::read_to_string(&p.ca).unwrap();
    std::fs::write(&two, text).unwrap();
    let server = TestServer::start(Some(server_tls(&p.server.0, &p.server.1, None)));
    let t = Trust::bundle_only(&two).unwrap();
    assert_eq!(t.bundle_count, 2);
    assert_eq!(
        get(&server.url("https"), t.config(None)).as_deref(),
        Ok("hello")
    );
}

#[test]
fn wrong_ca_expired_and_hostname_mismatch_each_say_which() {
    let Some(p) = pki("wrong_ca_expired_and_hostname_mismatch_each_say_which") else {
        return;
    };
    let good = TestServer::start(Some(server_tls(&p.server.0, &p.server.1, None)));
    let expired = TestServer::start(Some(server_tls(
        &p.server_expired.0,
        &p.server_expired.1,
        None,
    )));
    let wrong_host = TestServer::start(Some(server_tls(
        &p.server_wrong_host.0,
        &p.server_wrong_host.1,
        None,
    )));
    let right = trust(Some(&p.ca));

    let wrong_ca = get(&good.url("https"), trust(Some(&p.other_ca)).config(None));
    let expired = get(&expired.url("https"), right.config(None));
    let mismatch = get(&wrong_host.url("https"), right.config(None));
    assert_eq!(wrong_ca, Err(Some(TlsFailure::UnknownCa)));
    assert_eq!(expired, Err(Some(TlsFailure::ServerCertExpired)));
    assert_eq!(mismatch, Err(Some(TlsFailure::HostnameMismatch)));

    let reasons: Vec<&str> = [
        TlsFailure::UnknownCa,
        TlsFailure::ServerCertExpired,
        TlsFailure::HostnameMismatch,
    ]
    .iter()
    .map(|f| f.reason())
    .collect();
    assert!(reasons[0].contains("unknown CA"));
    assert!(reasons[1].contains("expired"));
    assert!(reasons[2].contains("host name"));
    assert_eq!(
        TlsFailure::UnknownCa.tunnel_failure().source,
        FailureSource::Tls
    );
}

#[test]
fn mtls_works_with_each_key_form_and_fails_without_a_certificate() {
    let Some(p) = pki("mtls_works_with_each_key_form_and_fails_without_a_certificate") else {
        return;
    };
    // The key files really are in the forms the test names.
    for (pair, head) in [
        (&p.client_pkcs8, "-----BEGIN PRIVATE KEY-----"),
        (&p.client_pkcs1, "-----BEGIN RSA PRIVATE KEY-----"),
        (&p.client_sec1, "-----BEGIN EC PRIVATE KEY-----"),
    ] {
        let text = std::fs::read_to_string(&pair.1).unwrap();
        assert!(
            text.starts_with(head),
            "{}: {}",
            pair.1.display(),
            &text[..40]
        );
    }
    let server = TestServer::start(Some(server_tls(&p.server.0, &p.server.1, Some(&p.ca))));
    let url = server.url("https");
    let t = trust(Some(&p.ca));

    assert_eq!(
        get(&url, t.config(None)),
        Err(Some(TlsFailure::ClientCertRequired))
    );
    for pair in [&p.client_pkcs8, &p.client_pkcs1, &p.client_sec1] {
        let id = identity(pair);
        assert_eq!(
            get(&url, t.config(Some(&id))).as_deref(),
            Ok("hello client 1"),
            "{}",
            pair.1.display()
        );
    }
    assert_eq!(server.served(), 3);

    let untrusted = identity(&p.client_untrusted);
    assert_eq!(
        get(&url, t.config(Some(&untrusted))),
        Err(Some(TlsFailure::ClientCertRejected))
    );
    assert_eq!(server.served(), 3);
}

#[test]
fn a_server_that_does_not_ask_ignores_a_configured_client_certificate() {
    let Some(p) = pki("a_server_that_does_not_ask_ignores_a_configured_client_certificate") else {
        return;
    };
    // rustls sends the certificate only when asked; the request still works.
    let plain = TestServer::start(Some(server_tls(&p.server.0, &p.server.1, None)));
    let t = trust(Some(&p.ca));
    let id = identity(&p.client_pkcs8);
    assert_eq!(
        get(&plain.url("https"), t.config(Some(&id))).as_deref(),
        Ok("hello")
    );
}

#[test]
fn client_identity_errors_name_the_files() {
    let Some(p) = pki("client_identity_errors_name_the_files") else {
        return;
    };
    let now = SystemTime::now();
    let missing = p.dir.join("nope.pem");
    let e = ClientIdentity::load(&missing, &p.client_pkcs8.1, now).unwrap_err();
    assert!(
        matches!(e, TlsError::Read { .. }) && e.to_string().contains("nope.pem"),
        "{e}"
    );
    let e = ClientIdentity::load(&p.client_pkcs8.0, &missing, now).unwrap_err();
    assert!(
        e.to_string().contains("nope.pem") && e.to_string().contains("private key"),
        "{e}"
    );

    // A key that belongs to another certificate (SEC1 key, PKCS#8 cert).
    let e = ClientIdentity::load(&p.client_pkcs8.0, &p.client_sec1.1, now).unwrap_err();
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("client-sec1.key") && text.contains("client-pkcs8.pem"),
        "{text}"
    );
    // An RSA key for an EC certificate.
    let e = ClientIdentity::load(&p.client_pkcs8.0, &p.client_pkcs1.1, now).unwrap_err();
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");

    // Swapped arguments: a key file where the certificate goes.
    let e = ClientIdentity::load(&p.client_pkcs8.1, &p.client_pkcs8.1, now).unwrap_err();
    assert!(matches!(e, TlsError::NoItems { .. }), "{e}");
    let e = ClientIdentity::load(&p.client_pkcs8.0, &p.client_pkcs8.0, now).unwrap_err();
    assert!(matches!(e, TlsError::NoItems { .. }), "{e}");
}

#[test]
fn client_certificate_validity_window_is_checked_at_now() {
    let Some(p) = pki("client_certificate_validity_window_is_checked_at_now") else {
        return;
    };
    let e = ClientIdentity::load(&p.client_expired.0, &p.client_expired.1, SystemTime::now())
        .unwrap_err();
    assert!(matches!(e, TlsError::Expired { .. }), "{e}");
    assert!(
        e.to_string().contains("expired at 2020-02-01T00:00:00Z"),
        "{e}"
    );

    let id = identity(&p.client_pkcs8);
    let before = UNIX_EPOCH + Duration::from_secs(u64::try_from(id.validity.not_before.0).unwrap())
        - Duration::from_secs(1);
    let e = ClientIdentity::load(&p.client_pkcs8.0, &p.client_pkcs8.1, before).unwrap_err();
    assert!(matches!(e, TlsError::NotYetValid { .. }), "{e}");
    assert!(e.to_string().contains("not valid before"), "{e}");
    let after = UNIX_EPOCH
        + Duration::from_secs(u64::try_from(id.validity.not_after.0).unwrap())
        + Duration::from_secs(1);
    let e = ClientIdentity::load(&p.client_pkcs8.0, &p.client_pkcs8.1, after).unwrap_err();
    assert!(matches!(e, TlsError::Expired { .. }), "{e}");
    // Inside the window (30 days from issue) it loads.
    let inside = UNIX_EPOCH + Duration::from_secs(u64::try_from(id.validity.not_after.0).unwrap());
    assert!(ClientIdentity::load(&p.client_pkcs8.0, &p.client_pkcs8.1, inside).is_ok());
}

#[test]
fn unusable_bundles_name_the_file_and_reason() {
    let Some(p) = pki("unusable_bundles_name_the_file_and_reason") else {
        return;
    };
    // A key file given as CA bundle: no certificate in it.
    let e = Trust::load(Some(&p.client_pkcs8.1)).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("client-pkcs8.key") && text.contains("no PEM CA certificate"),
        "{text}"
    );
    // A truncated bundle.
    let cut = p.dir.join("cut.pem");
    let full = std::fs::read_to_string(&p.ca).unwrap();
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    let e = Trust::load(Some(&cut)).unwrap_err();
    assert!(
        e.to_string().contains("cut.pem") && e.to_string().contains("END line"),
        "{e}"
    );
    // The same errors through the one-call API.
    let e = tls_config(&TlsOptions {
        ca_bundle: Some(&cut),
        client_cert: None,
        now: SystemTime::now(),
    })
    .unwrap_err();
    assert!(e.to_string().contains("cut.pem"));
    let e = tls_config(&TlsOptions {
        ca_bundle: None,
        client_cert: Some((&p.client_pkcs8.0, &p.client_sec1.1)),
        now: SystemTime::now(),
    })
    .unwrap_err();
    assert!(matches!(e, TlsError::KeyMismatch { .. }));
}

/// The relay's own TLS listener (`net::tls_listener::serve_tls`) as the server.
#[cfg(feature = "relay")]
mod relay_listener {
    use super::*;
    use std::net::{SocketAddr, TcpListener};
    use std::rc::Rc;
    use std::sync::mpsc;

    use async_io::Async;
    use mcp_tunnel::net::http_server::{Limits, Request, Response};
    use mcp_tunnel::net::tls_listener::{serve_tls, server_config, ClientAuth};
    use mcp_tunnel::ops::shutdown::Shutdown;
    use smol::LocalExecutor;

    struct Relay {
        addr: SocketAddr,
        shutdown: Shutdown,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            self.shutdown.trigger();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Answers `client cert` or `no client cert` after what the TLS layer saw.
    fn start(cert: &Path, key: &Path, auth: ClientAuth) -> Relay {
        let tls = server_config(cert, key, &auth).expect("server config");
        let shutdown = Shutdown::new();
        let server_shutdown = shutdown.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let ex = Rc::new(LocalExecutor::new());
            let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
            tx.send(listener.get_ref().local_addr().expect("addr"))
                .expect("send");
            let handler = Rc::new(|req: Request| async move {
                let body = match req.client_cert {
                    Some(_) => "client cert",
                    None => "no client cert",
                };
                Response::json(200, body.as_bytes().to_vec())
            });
            smol::block_on(ex.run(serve_tls(
                listener,
                tls,
                handler,
                Limits::default(),
                ex.clone(),
                server_shutdown,
            )));
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("relay did not start");
        Relay {
            addr,
            shutdown,
            thread: Some(thread),
        }
    }

    #[test]
    fn mtls_to_the_relay_listener() {
        let Some(p) = pki("mtls_to_the_relay_listener") else {
            return;
        };
        let t = trust(Some(&p.ca));
        let url = |r: &Relay| format!("https://{}/", r.addr);

        let required = start(&p.server.0, &p.server.1, ClientAuth::Required(p.ca.clone()));
        assert_eq!(
            get(&url(&required), t.config(None)),
            Err(Some(TlsFailure::ClientCertRequired))
        );
        let id = identity(&p.client_pkcs1);
        assert_eq!(
            get(&url(&required), t.config(Some(&id))).as_deref(),
            Ok("client cert")
        );
        let untrusted = identity(&p.client_untrusted);
        assert_eq!(
            get(&url(&required), t.config(Some(&untrusted))),
            Err(Some(TlsFailure::ClientCertRejected))
        );

        let optional = start(&p.server.0, &p.server.1, ClientAuth::Optional(p.ca.clone()));
        assert_eq!(
            get(&url(&optional), t.config(None)).as_deref(),
            Ok("no client cert")
        );
        assert_eq!(
            get(&url(&optional), t.config(Some(&id))).as_deref(),
            Ok("client cert")
        );
    }
}
