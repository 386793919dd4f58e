//! The agent's network edge: outbound proxies, extra trusted CAs and client
//! certificates — their settings, their startup checks (a bad value is a
//! configuration error, exit 2), the ureq pieces they turn into, and the
//! words for what goes wrong on the way out (logs, readiness, `tunnel_failure`).
//!
//! Which proxy a hop uses is `net::proxy`'s rule: the control plane follows
//! `--control-plane.http-proxy`, then `--http-proxy`, then
//! `HTTPS_PROXY`/`HTTP_PROXY` (with `NO_PROXY`); an MCP server is reached
//! directly unless its channel names an `http-proxy=` (environment proxies
//! never apply to it). Trust is the system store plus `--ca-bundle` on both
//! hops (plus a channel's own `ca-bundle=`); each hop presents only its own
//! client certificate, and each HTTP channel its own (`client-cert=`), else
//! `--mcp.client-cert`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ureq::tls::TlsConfig;

use super::config::{ConfigError, Setting};
use crate::net::proxy::{
    control_plane_proxy, mcp_proxy, proxy_failure, ControlPlaneProxies, DirectReason, ProxyChoice,
    ProxyEnv, ProxyUrl,
};
use crate::net::tls_client::{tls_failure, ClientIdentity, TlsError, Trust};
use crate::proto::failure::TunnelFailure;

const fn setting(flag: &'static str, env: &'static str, help: &'static str) -> Setting {
    Setting {
        flag,
        env,
        default: None,
        help,
        repeatable: false,
    }
}

pub const HTTP_PROXY: Setting = setting(
    "http-proxy",
    "TUNNEL_CLIENT_HTTP_PROXY",
    "HTTP CONNECT proxy for the control plane, http://[user:password@]host:port \
     (percent-encode special characters; logged as user:***); NO_PROXY applies",
);
pub const CP_HTTP_PROXY: Setting = setting(
    "control-plane.http-proxy",
    "CONTROL_PLANE_HTTP_PROXY",
    "proxy for the control plane only; wins over --http-proxy, HTTPS_PROXY and NO_PROXY",
);
pub const CA_BUNDLE: Setting = setting(
    "ca-bundle",
    "CA_BUNDLE",
    "PEM file of CA certificates trusted in addition to the system store \
     (SSL_CERT_FILE/SSL_CERT_DIR replace the system store)",
);
pub const CP_CLIENT_CERT: Setting = setting(
    "control-plane.client-cert",
    "CONTROL_PLANE_CLIENT_CERT",
    "PEM certificate chain presented to the control plane (with --control-plane.client-key)",
);
pub const CP_CLIENT_KEY: Setting = setting(
    "control-plane.client-key",
    "CONTROL_PLANE_CLIENT_KEY",
    "PEM private key (PKCS#8, PKCS#1 or SEC1) for --control-plane.client-cert",
);
pub const MCP_CLIENT_CERT: Setting = setting(
    "mcp.client-cert",
    "MCP_CLIENT_CERT",
    "PEM certificate chain presented to the MCP server only (with --mcp.client-key)",
);
pub const MCP_CLIENT_KEY: Setting = setting(
    "mcp.client-key",
    "MCP_CLIENT_KEY",
    "PEM private key (PKCS#8, PKCS#1 or SEC1) for --mcp.client-cert",
);

/// The checked edge settings. `Debug` shows no password or key.
#[derive(Debug)]
pub struct EdgeConfig {
    pub proxies: ControlPlaneProxies,
    /// `--ca-bundle`, already parsed (its certificates only).
    pub ca_bundle: Option<(PathBuf, Trust)>,
    pub cp_identity: Option<ClientIdentity>,
    pub mcp_identity: Option<ClientIdentity>,
    /// `NO_PROXY` entries that were not understood (warned about at start).
    pub ignored_no_proxy: Vec<String>,
}

fn invalid(s: &Setting, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("invalid value for --{} ({}): {why}", s.flag, s.env))
}

/// Reads and checks the edge settings. `get` returns a setting's winning raw
/// value (flag > environment > env-file); `env` looks up other variables
/// (`HTTPS_PROXY`, …); `now` is when client certificates must be valid.
pub fn build(
    get: &dyn Fn(&Setting) -> Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
    now: SystemTime,
) -> Result<EdgeConfig, ConfigError> {
    let value = |s: &Setting| get(s).filter(|v| !v.trim().is_empty());
    let proxy = |s: &Setting| -> Result<Option<ProxyUrl>, ConfigError> {
        value(s)
            .map(|raw| ProxyUrl::parse(&raw).map_err(|e| invalid(s, e)))
            .transpose()
    };
    let (env_proxies, ignored_no_proxy) =
        ProxyEnv::from_lookup(env).map_err(|e| ConfigError(format!("invalid {e}")))?;
    let proxies = ControlPlaneProxies {
        control_plane: proxy(&CP_HTTP_PROXY)?,
        global: proxy(&HTTP_PROXY)?,
        env: env_proxies,
    };
    let ca_bundle = match value(&CA_BUNDLE) {
        None => None,
        Some(path) => {
            let path = PathBuf::from(path);
            let trust = Trust::bundle_only(&path).map_err(|e| invalid(&CA_BUNDLE, e))?;
            Some((path, trust))
        }
    };
    let identity = |cert_s: &Setting, key_s: &Setting| match (value(cert_s), value(key_s)) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError(format!(
            "missing --{} ({}): required with --{}",
            key_s.flag, key_s.env, cert_s.flag
        ))),
        (None, Some(_)) => Err(ConfigError(format!(
            "missing --{} ({}): required with --{}",
            cert_s.flag, cert_s.env, key_s.flag
        ))),
        (Some(cert), Some(key)) => {
            let (cert, key) = (PathBuf::from(cert), PathBuf::from(key));
            ClientIdentity::load(&cert, &key, now)
                .map(Some)
                .map_err(|e| {
                    let s = if about_key(&e, &key) { key_s } else { cert_s };
                    invalid(s, e)
                })
        }
    };
    Ok(EdgeConfig {
        proxies,
        ca_bundle,
        cp_identity: identity(&CP_CLIENT_CERT, &CP_CLIENT_KEY)?,
        mcp_identity: identity(&MCP_CLIENT_CERT, &MCP_CLIENT_KEY)?,
        ignored_no_proxy,
    })
}

/// One HTTP channel's own network settings from its `--mcp.server-url`
/// entry (`http-proxy=`, `client-cert=`/`client-key=`, `ca-bundle=`), checked.
/// `Debug` shows no password or key.
#[derive(Clone, Debug, Default)]
pub struct ChannelEdge {
    pub proxy: Option<ProxyUrl>,
    /// This channel's certificate; `None` falls back to `--mcp.client-cert`.
    pub identity: Option<ClientIdentity>,
    /// Added to the system store and `--ca-bundle` for this channel only.
    pub ca_bundle: Option<(PathBuf, Trust)>,
}

/// The raw `key=value` settings of one channel entry, before checking.
#[derive(Default)]
pub struct RawChannelEdge<'a> {
    pub http_proxy: Option<&'a str>,
    pub client_cert: Option<&'a str>,
    pub client_key: Option<&'a str>,
    pub ca_bundle: Option<&'a str>,
}

/// Checks a channel's settings. The error names the entry key (the caller
/// adds the flag and the channel); it never echoes a proxy password.
pub fn channel_edge(raw: &RawChannelEdge<'_>, now: SystemTime) -> Result<ChannelEdge, String> {
    fn set(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    let proxy = set(raw.http_proxy)
        .map(|v| ProxyUrl::parse(v).map_err(|e| format!("http-proxy: {e}")))
        .transpose()?;
    let identity = match (set(raw.client_cert), set(raw.client_key)) {
        (None, None) => None,
        (Some(_), None) => return Err("client-key=PATH is required with client-cert=".into()),
        (None, Some(_)) => return Err("client-cert=PATH is required with client-key=".into()),
        (Some(cert), Some(key)) => {
            let (cert, key) = (PathBuf::from(cert), PathBuf::from(key));
            let id = ClientIdentity::load(&cert, &key, now).map_err(|e| {
                let which = if about_key(&e, &key) {
                    "client-key"
                } else {
                    "client-cert"
                };
                format!("{which}: {e}")
            })?;
            Some(id)
        }
    };
    let ca_bundle = match set(raw.ca_bundle) {
        None => None,
        Some(path) => {
            let path = PathBuf::from(path);
            let trust = Trust::bundle_only(&path).map_err(|e| format!("ca-bundle: {e}"))?;
            Some((path, trust))
        }
    };
    Ok(ChannelEdge {
        proxy,
        identity,
        ca_bundle,
    })
}

/// Is this error the key file's fault (so the key flag is the one to name)?
fn about_key(e: &TlsError, key: &Path) -> bool {
    match e {
        TlsError::KeyMismatch { .. } | TlsError::UnsupportedKey { .. } => true,
        TlsError::Read { path, .. } | TlsError::NoItems { path, .. } => path == key,
        _ => false,
    }
}

/// What the ureq agents are built with: the control plane's, the default
/// MCP hop's (a bare `--mcp.server-url`), and what each channel needs.
pub struct Clients {
    pub cp_tls: TlsConfig,
    pub mcp_tls: TlsConfig,
    pub cp_proxy: Option<ureq::Proxy>,
    pub mcp_proxy: Option<ureq::Proxy>,
    /// System store plus `--ca-bundle`, loaded once.
    trust: Trust,
    /// `--mcp.client-cert`: the certificate of channels without their own.
    mcp_identity: Option<ClientIdentity>,
}

impl Clients {
    /// TLS and proxy for one HTTP channel: its own `http-proxy=` or none
    /// (never the control plane's or the environment's), its own client
    /// certificate or else `--mcp.client-cert`, and its `ca-bundle=` added to
    /// the shared trust. Logs (redacted) what differs from the default.
    pub fn for_channel(&self, label: &str, ch: &ChannelEdge) -> (TlsConfig, Option<ureq::Proxy>) {
        let choice = mcp_proxy(ch.proxy.as_ref());
        if ch.proxy.is_some() {
            log::info!("channel {label}: MCP connections via {choice}");
        }
        if let Some(id) = &ch.identity {
            log::info!(
                "channel {label}: presenting its own client certificate (valid until {})",
                id.validity.not_after
            );
        }
        let identity = ch.identity.as_ref().or(self.mcp_identity.as_ref());
        let tls = match &ch.ca_bundle {
            None => self.trust.config(identity),
            Some((path, bundle)) => {
                log::info!(
                    "channel {label}: also trusting {} CA certificate(s) from {}",
                    bundle.bundle_count,
                    path.display()
                );
                self.trust.clone().with(bundle).config(identity)
            }
        };
        (tls, to_ureq(&choice))
    }
}

/// Loads the system roots once for both hops (only with `system_roots`: an
/// agent that dials no `https://` URL never needs them) and logs (redacted)
/// what each hop goes through.
pub fn clients(edge: &EdgeConfig, base_url: &str, system_roots: bool) -> Clients {
    let mut trust = if system_roots {
        Trust::os()
    } else {
        log::debug!("no https:// URL configured: the system trust store is not loaded");
        Trust::none()
    };
    if !trust.os_errors.is_empty() {
        log::warn!(
            "{} error(s) while loading the system trust store (first: {}); continuing with {} certificates",
            trust.os_errors.len(),
            trust.os_errors[0],
            trust.os_count
        );
    }
    if let Some((path, bundle)) = &edge.ca_bundle {
        trust = trust.with(bundle);
        log::info!(
            "trusting {} system CA certificates plus {} from --ca-bundle {}",
            trust.os_count,
            trust.bundle_count,
            path.display()
        );
    }
    if trust.is_empty() && system_roots {
        log::warn!(
            "no trusted CA certificates (empty system store, no --ca-bundle): https:// connections will fail certificate checks"
        );
    }
    for entry in &edge.ignored_no_proxy {
        log::warn!("NO_PROXY entry {entry:?} not understood; ignored");
    }
    let cp_choice = match base_url.parse::<http::Uri>() {
        Ok(dest) => control_plane_proxy(&dest, &edge.proxies),
        // The base URL was validated by the configuration; stay direct regardless.
        Err(_) => ProxyChoice::Direct(DirectReason::NotConfigured),
    };
    if cp_choice != ProxyChoice::Direct(DirectReason::NotConfigured) {
        log::info!("control plane connection: {cp_choice}");
    }
    let mcp_choice = mcp_proxy(None);
    for (hop, id) in [
        ("control plane", &edge.cp_identity),
        ("MCP server", &edge.mcp_identity),
    ] {
        if let Some(id) = id {
            log::info!(
                "presenting a client certificate to the {hop} (valid until {})",
                id.validity.not_after
            );
        }
    }
    Clients {
        cp_tls: trust.config(edge.cp_identity.as_ref()),
        mcp_tls: trust.config(edge.mcp_identity.as_ref()),
        // A URL that parsed once converts; if not, fail closed to direct with a warning.
        cp_proxy: to_ureq(&cp_choice),
        mcp_proxy: to_ureq(&mcp_choice),
        trust,
        mcp_identity: edge.mcp_identity.clone(),
    }
}

fn to_ureq(choice: &ProxyChoice) -> Option<ureq::Proxy> {
    match choice.to_ureq() {
        Ok(p) => p,
        Err(e) => {
            log::warn!("proxy {choice} unusable ({e}); connecting directly");
            None
        }
    }
}

/// A failure at the network edge (proxy or TLS), in operator words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeFailure {
    pub reason: String,
    pub code: &'static str,
    pub tunnel: TunnelFailure,
}

/// Proxy (`source: connect`) and TLS (`source: tls`) failures; `None` for
/// anything else.
pub fn failure(e: &ureq::Error) -> Option<EdgeFailure> {
    if let Some(p) = proxy_failure(e) {
        return Some(EdgeFailure {
            reason: p.reason(),
            code: p.code(),
            tunnel: p.tunnel_failure(),
        });
    }
    tls_failure(e).map(|t| EdgeFailure {
        reason: t.reason().to_string(),
        code: t.code(),
        tunnel: t.tunnel_failure(),
    })
}

/// The log text for a transport error: the edge reason when there is one.
pub fn describe(e: &ureq::Error) -> String {
    match failure(e) {
        Some(f) => f.reason,
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::failure::FailureSource;
    use std::collections::HashMap;

    fn build_with(
        flags: &[(&Setting, &str)],
        env: &[(&str, &str)],
    ) -> Result<EdgeConfig, ConfigError> {
        let flags: HashMap<&str, String> =
            flags.iter().map(|(s, v)| (s.flag, v.to_string())).collect();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        build(
            &|s: &Setting| flags.get(s.flag).cloned(),
            &|n: &str| env.get(n).cloned(),
            SystemTime::now(),
        )
    }

    fn err(flags: &[(&Setting, &str)], env: &[(&str, &str)]) -> String {
        build_with(flags, env).unwrap_err().to_string()
    }

    #[test]
    fn nothing_set_is_all_off() {
        let c = build_with(&[], &[]).unwrap();
        assert!(c.ca_bundle.is_none() && c.cp_identity.is_none() && c.mcp_identity.is_none());
        assert_eq!(c.proxies, ControlPlaneProxies::default());
    }

    #[test]
    fn proxies_parse_and_empty_values_are_unset() {
        let c = build_with(
            &[(&HTTP_PROXY, "http://g:1"), (&CP_HTTP_PROXY, "")],
            &[("https_proxy", "e:2"), ("NO_PROXY", "x.corp, ???")],
        )
        .unwrap();
        assert_eq!(c.proxies.global.as_ref().map(|p| p.host()), Some("g"));
        assert!(c.proxies.control_plane.is_none());
        assert_eq!(
            c.proxies.env.https.as_ref().map(|(v, _)| *v),
            Some("https_proxy")
        );
        assert_eq!(c.ignored_no_proxy, ["???"]);
    }

    #[test]
    fn invalid_values_name_the_flag_and_variable_without_secrets() {
        let text = err(&[(&HTTP_PROXY, "socks5://u:hunter2@p")], &[]);
        assert!(
            text.contains("--http-proxy (TUNNEL_CLIENT_HTTP_PROXY)"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let text = err(&[(&CP_HTTP_PROXY, "http://u:hunter2@p:0")], &[]);
        assert!(
            text.contains("--control-plane.http-proxy (CONTROL_PLANE_HTTP_PROXY)"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let text = err(&[], &[("HTTPS_PROXY", "https://u:hunter2@p")]);
        assert!(
            text.contains("HTTPS_PROXY") && !text.contains("hunter2"),
            "{text}"
        );
        let text = err(&[(&CA_BUNDLE, "/nonexistent/ca.pem")], &[]);
        assert!(
            text.starts_with("invalid value for --ca-bundle (CA_BUNDLE):"),
            "{text}"
        );
        assert!(text.contains("/nonexistent/ca.pem"), "{text}");
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn cert_and_key_come_in_pairs() {
        let text = err(&[(&CP_CLIENT_CERT, "/x.pem")], &[]);
        assert!(
            text.contains("missing --control-plane.client-key (CONTROL_PLANE_CLIENT_KEY)"),
            "{text}"
        );
        let text = err(&[(&MCP_CLIENT_KEY, "/x.key")], &[]);
        assert!(
            text.contains("missing --mcp.client-cert (MCP_CLIENT_CERT)"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_file_names_the_flag_it_came_from() {
        let text = err(
            &[
                (&CP_CLIENT_CERT, "/nonexistent/c.pem"),
                (&CP_CLIENT_KEY, "/nonexistent/c.key"),
            ],
            &[],
        );
        assert!(
            text.contains("--control-plane.client-cert (CONTROL_PLANE_CLIENT_CERT)"),
            "{text}"
        );
        assert!(about_key(
            &TlsError::Read {
                path: "/k".into(),
                what: "private key",
                reason: String::new()
            },
            Path::new("/k")
        ));
        assert!(about_key(
            &TlsError::KeyMismatch {
                cert: "/c".into(),
                key: "/k".into()
            },
            Path::new("/k")
        ));
    }

    #[test]
    fn edge_failures_carry_reason_code_and_source() {
        let f = failure(&ureq::Error::ConnectProxyFailed(
            "proxy server responded 407/Proxy Authentication Required".into(),
        ))
        .unwrap();
        assert_eq!(f.tunnel.source, FailureSource::Connect);
        assert_eq!(f.code, "proxy_auth_failed");
        let tls = ureq::Error::Rustls(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        let f = failure(&tls).unwrap();
        assert_eq!(f.tunnel.source, FailureSource::Tls);
        assert!(describe(&tls).contains("unknown CA"));
        assert_eq!(failure(&ureq::Error::HostNotFound), None);
        assert_eq!(
            describe(&ureq::Error::HostNotFound),
            ureq::Error::HostNotFound.to_string()
        );
    }
}
