//! The outbound HTTP clients (ureq agents): pooled keep-alive connections,
//! rustls with ring and the operating system's trust store.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// The OS trust store, loaded once per agent. Unreadable entries are skipped:
/// one bad certificate file must not take every TLS connection down.
fn tls_config() -> TlsConfig {
    let loaded = rustls_native_certs::load_native_certs();
    if !loaded.errors.is_empty() {
        log::warn!(
            "{} error(s) while loading the system trust store; continuing with {} certificates",
            loaded.errors.len(),
            loaded.certs.len()
        );
    }
    if loaded.certs.is_empty() {
        log::warn!(
            "the system trust store is empty: https:// connections will fail certificate checks"
        );
    }
    let certs: Vec<Certificate<'static>> = loaded
        .certs
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .root_certs(RootCerts::new_with_certs(&certs))
        .build()
}

pub struct ClientOptions {
    pub user_agent: String,
    pub max_idle: usize,
    pub max_idle_age: Duration,
}

/// A ureq agent that reports every HTTP status as a response (we classify them),
/// follows no redirect (a redirect would resend credentials and bodies to a place
/// nobody configured) and ignores proxy environment variables until proxies are
/// configured explicitly.
pub fn agent(opts: &ClientOptions, tls: TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .tls_config(tls)
        .user_agent(opts.user_agent.as_str())
        .accept("")
        .max_idle_connections(opts.max_idle)
        .max_idle_connections_per_host(opts.max_idle)
        .max_idle_age(opts.max_idle_age)
        .build()
        .new_agent()
}

/// Both agents share one trust store load.
pub fn agents(cp: &ClientOptions, mcp: &ClientOptions) -> (ureq::Agent, ureq::Agent) {
    let tls = tls_config();
    (agent(cp, tls.clone()), agent(mcp, tls))
}

/// Bodies up to this size are read to the end to keep the connection.
const MAX_DRAIN: u64 = 64 * 1024;

/// Reads a small body to the end so the connection can go back to the pool;
/// a bigger one is left unread (ureq then closes the connection).
pub fn drain(resp: &mut ureq::http::Response<ureq::Body>) {
    let mut sink = [0u8; 4096];
    let mut reader = resp.body_mut().as_reader().take(MAX_DRAIN);
    while let Ok(n) = reader.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}
