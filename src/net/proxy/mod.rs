//! Which HTTP proxy (if any) a hop goes through — decided once per
//! destination, from configuration values passed in (nothing here reads the
//! environment: the caller hands over what it looked up).
//!
//! Control plane, first match wins:
//! 1. `--control-plane.http-proxy` / `CONTROL_PLANE_HTTP_PROXY` (never
//!    bypassed: it names this hop explicitly);
//! 2. `--http-proxy` / `TUNNEL_CLIENT_HTTP_PROXY`, unless `NO_PROXY` matches;
//! 3. `HTTPS_PROXY`/`https_proxy` for an `https://` destination,
//!    `HTTP_PROXY`/`http_proxy` for `http://` (uppercase first), unless
//!    `NO_PROXY`/`no_proxy` matches. `ALL_PROXY` is not read.
//!
//! MCP targets: the channel's own `http-proxy=` and nothing else. MCP servers
//! usually sit inside the network, where a corporate egress proxy would be
//! the wrong way; the environment and `--http-proxy` never apply to them.
//!
//! Every proxy is spoken to with HTTP CONNECT (ureq tunnels `http://`
//! destinations through CONNECT as well; absolute-form requests are not used),
//! with `Proxy-Authorization: Basic` when the URL carries credentials.

mod failure;
mod no_proxy;
mod url;

use std::fmt;

pub use failure::{proxy_failure, ProxyFailure};
pub use no_proxy::NoProxy;
pub use url::{Credentials, ProxyUrl, ProxyUrlError};

/// The proxy-related environment, as looked up by the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    /// From `HTTPS_PROXY` or `https_proxy`, with the variable's name.
    pub https: Option<(&'static str, ProxyUrl)>,
    /// From `HTTP_PROXY` or `http_proxy`.
    pub http: Option<(&'static str, ProxyUrl)>,
    pub no_proxy: NoProxy,
}

/// An environment variable held a proxy URL we cannot use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvProxyError {
    pub var: &'static str,
    pub error: ProxyUrlError,
}

impl fmt::Display for EnvProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "environment variable {}: {}", self.var, self.error)
    }
}

impl std::error::Error for EnvProxyError {}

impl ProxyEnv {
    /// Reads the variables through `lookup` (e.g. `|n| std::env::var(n).ok()`).
    /// Empty values count as unset. Returns the `NO_PROXY` entries that were
    /// ignored, for a warning.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(ProxyEnv, Vec<String>), EnvProxyError> {
        let first = |names: [&'static str; 2]| {
            names
                .into_iter()
                .find_map(|n| lookup(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v)))
        };
        let url = |found: Option<(&'static str, String)>| match found {
            None => Ok(None),
            Some((var, raw)) => ProxyUrl::parse(&raw)
                .map(|u| Some((var, u)))
                .map_err(|error| EnvProxyError { var, error }),
        };
        let https = url(first(["HTTPS_PROXY", "https_proxy"]))?;
        let http = url(first(["HTTP_PROXY", "http_proxy"]))?;
        let (no_proxy, ignored) = match first(["NO_PROXY", "no_proxy"]) {
            Some((_, raw)) => NoProxy::parse(&raw),
            None => (NoProxy::default(), Vec::new()),
        };
        Ok((
            ProxyEnv {
                https,
                http,
                no_proxy,
            },
            ignored,
        ))
    }
}

/// The proxy settings of the control-plane hop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlPlaneProxies {
    /// `--control-plane.http-proxy` / `CONTROL_PLANE_HTTP_PROXY`.
    pub control_plane: Option<ProxyUrl>,
    /// `--http-proxy` / `TUNNEL_CLIENT_HTTP_PROXY`.
    pub global: Option<ProxyUrl>,
    pub env: ProxyEnv,
}

/// Where a chosen proxy came from (for logs, readiness and `doctor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyOrigin {
    /// `--control-plane.http-proxy` / `CONTROL_PLANE_HTTP_PROXY`.
    ControlPlaneFlag,
    /// `--http-proxy` / `TUNNEL_CLIENT_HTTP_PROXY`.
    GlobalFlag,
    /// The channel's `http-proxy=` in `--mcp.server-url`.
    Channel,
    /// An environment variable (its name).
    Env(&'static str),
}

impl fmt::Display for ProxyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyOrigin::ControlPlaneFlag => {
                f.write_str("--control-plane.http-proxy / CONTROL_PLANE_HTTP_PROXY")
            }
            ProxyOrigin::GlobalFlag => f.write_str("--http-proxy / TUNNEL_CLIENT_HTTP_PROXY"),
            ProxyOrigin::Channel => f.write_str("the channel's http-proxy="),
            ProxyOrigin::Env(var) => f.write_str(var),
        }
    }
}

/// Why a hop goes direct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectReason {
    NotConfigured,
    /// A proxy was configured but `NO_PROXY` matched the destination.
    NoProxy,
}

/// The decision for one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyChoice {
    Direct(DirectReason),
    Via {
        proxy: ProxyUrl,
        origin: ProxyOrigin,
    },
}

impl ProxyChoice {
    /// What to give `ureq::config::ConfigBuilder::proxy` (`None` = direct,
    /// and ureq's own environment lookup stays off).
    pub fn to_ureq(&self) -> Result<Option<ureq::Proxy>, ProxyUrlError> {
        match self {
            ProxyChoice::Direct(_) => Ok(None),
            ProxyChoice::Via { proxy, .. } => proxy.to_ureq().map(Some),
        }
    }

    pub fn proxy(&self) -> Option<&ProxyUrl> {
        match self {
            ProxyChoice::Direct(_) => None,
            ProxyChoice::Via { proxy, .. } => Some(proxy),
        }
    }
}

/// Redacted, for logs: `direct`, `direct (NO_PROXY)` or
/// `http://user:***@host:port (from HTTPS_PROXY)`.
impl fmt::Display for ProxyChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyChoice::Direct(DirectReason::NotConfigured) => f.write_str("direct"),
            ProxyChoice::Direct(DirectReason::NoProxy) => f.write_str("direct (NO_PROXY)"),
            ProxyChoice::Via { proxy, origin } => write!(f, "{proxy} (from {origin})"),
        }
    }
}

/// The proxy for the control plane at `dest` (its base URL).
pub fn control_plane_proxy(dest: &http::Uri, p: &ControlPlaneProxies) -> ProxyChoice {
    if let Some(proxy) = &p.control_plane {
        return ProxyChoice::Via {
            proxy: proxy.clone(),
            origin: ProxyOrigin::ControlPlaneFlag,
        };
    }
    let https = dest
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"));
    let from_env = if https { &p.env.https } else { &p.env.http };
    let candidate = match (&p.global, from_env) {
        (Some(proxy), _) => Some((proxy, ProxyOrigin::GlobalFlag)),
        (None, Some((var, proxy))) => Some((proxy, ProxyOrigin::Env(var))),
        (None, None) => None,
    };
    let Some((proxy, origin)) = candidate else {
        return ProxyChoice::Direct(DirectReason::NotConfigured);
    };
    let host = dest.host().unwrap_or("");
    let port = dest.port_u16().unwrap_or(if https { 443 } else { 80 });
    if p.env.no_proxy.matches(host, port) {
        return ProxyChoice::Direct(DirectReason::NoProxy);
    }
    ProxyChoice::Via {
        proxy: proxy.clone(),
        origin,
    }
}

/// The proxy for an MCP target: only the channel's own setting.
pub fn mcp_proxy(channel_proxy: Option<&ProxyUrl>) -> ProxyChoice {
    match channel_proxy {
        Some(proxy) => ProxyChoice::Via {
            proxy: proxy.clone(),
            origin: ProxyOrigin::Channel,
        },
        None => ProxyChoice::Direct(DirectReason::NotConfigured),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> ProxyEnv {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyEnv::from_lookup(|n| map.get(n).cloned()).unwrap().0
    }

    fn url(raw: &str) -> ProxyUrl {
        ProxyUrl::parse(raw).unwrap()
    }

    fn uri(raw: &str) -> http::Uri {
        raw.parse().unwrap()
    }

    fn via(choice: &ProxyChoice) -> Option<(String, ProxyOrigin)> {
        match choice {
            ProxyChoice::Via { proxy, origin } => Some((proxy.to_string(), *origin)),
            ProxyChoice::Direct(_) => None,
        }
    }

    #[test]
    fn env_uppercase_wins_and_empty_counts_as_unset() {
        let e = env(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:1"),
            ("HTTP_PROXY", " "),
            ("http_proxy", "http://plain:2"),
        ]);
        assert_eq!(
            e.https.as_ref().map(|(v, u)| (*v, u.host())),
            Some(("HTTPS_PROXY", "upper"))
        );
        assert_eq!(
            e.http.as_ref().map(|(v, u)| (*v, u.host())),
            Some(("http_proxy", "plain"))
        );
        let e = env(&[("https_proxy", "lower:3")]);
        assert_eq!(e.https.map(|(v, _)| v), Some("https_proxy"));
    }

    #[test]
    fn invalid_env_proxy_names_the_variable_without_the_secret() {
        let err = ProxyEnv::from_lookup(|n| {
            (n == "https_proxy").then(|| "socks5://u:hunter2@p".to_string())
        })
        .unwrap_err();
        assert_eq!(err.var, "https_proxy");
        let text = err.to_string();
        assert!(
            text.contains("https_proxy") && text.contains("only http://"),
            "{text}"
        );
        assert!(!text.contains("hunter2"));
    }

    #[test]
    fn no_proxy_lowercase_is_read_and_ignored_entries_returned() {
        let (e, ignored) = ProxyEnv::from_lookup(|n| {
            (n == "no_proxy").then(|| "corp.internal, bad entry".to_string())
        })
        .unwrap();
        assert!(e.no_proxy.matches("a.corp.internal", 443));
        assert_eq!(ignored, ["bad entry"]);
    }

    #[test]
    fn nothing_configured_is_direct() {
        let c = control_plane_proxy(
            &uri("https://api.openai.com"),
            &ControlPlaneProxies::default(),
        );
        assert_eq!(c, ProxyChoice::Direct(DirectReason::NotConfigured));
        assert_eq!(c.to_ureq().unwrap(), None);
        assert_eq!(c.to_string(), "direct");
    }

    #[test]
    fn env_proxy_follows_the_destination_scheme() {
        let p = ControlPlaneProxies {
            env: env(&[("HTTPS_PROXY", "http://s:1"), ("HTTP_PROXY", "http://p:2")]),
            ..Default::default()
        };
        let c = control_plane_proxy(&uri("https://cp.example"), &p);
        assert_eq!(
            via(&c),
            Some(("http://s:1".into(), ProxyOrigin::Env("HTTPS_PROXY")))
        );
        let c = control_plane_proxy(&uri("http://relay.lan:8080"), &p);
        assert_eq!(
            via(&c),
            Some(("http://p:2".into(), ProxyOrigin::Env("HTTP_PROXY")))
        );
        // HTTP_PROXY alone does not cover https destinations (curl's rule).
        let p = ControlPlaneProxies {
            env: env(&[("HTTP_PROXY", "http://p:2")]),
            ..Default::default()
        };
        let c = control_plane_proxy(&uri("https://cp.example"), &p);
        assert_eq!(c, ProxyChoice::Direct(DirectReason::NotConfigured));
    }

    #[test]
    fn global_flag_beats_env_and_control_plane_flag_beats_both() {
        let mut p = ControlPlaneProxies {
            global: Some(url("http://global:1")),
            env: env(&[("HTTPS_PROXY", "http://env:1")]),
            ..Default::default()
        };
        let dest = uri("https://cp.example");
        assert_eq!(
            via(&control_plane_proxy(&dest, &p)),
            Some(("http://global:1".into(), ProxyOrigin::GlobalFlag))
        );
        p.control_plane = Some(url("http://u:pw@cp-proxy:3"));
        let c = control_plane_proxy(&dest, &p);
        assert_eq!(
            via(&c),
            Some((
                "http://u:***@cp-proxy:3".into(),
                ProxyOrigin::ControlPlaneFlag
            ))
        );
        assert_eq!(
            c.to_string(),
            "http://u:***@cp-proxy:3 (from --control-plane.http-proxy / CONTROL_PLANE_HTTP_PROXY)"
        );
    }

    #[test]
    fn no_proxy_bypasses_env_and_global_but_not_the_explicit_hop_proxy() {
        let mut p = ControlPlaneProxies {
            env: env(&[
                ("HTTPS_PROXY", "http://env:1"),
                ("NO_PROXY", ".example, 10.0.0.0/8"),
            ]),
            ..Default::default()
        };
        for dest in ["https://cp.example", "https://10.1.1.1:8443"] {
            let c = control_plane_proxy(&uri(dest), &p);
            assert_eq!(c, ProxyChoice::Direct(DirectReason::NoProxy), "{dest}");
            assert_eq!(c.to_string(), "direct (NO_PROXY)");
        }
        assert!(via(&control_plane_proxy(&uri("https://other.test"), &p)).is_some());
        p.global = Some(url("http://global:1"));
        assert_eq!(
            control_plane_proxy(&uri("https://cp.example"), &p),
            ProxyChoice::Direct(DirectReason::NoProxy)
        );
        p.control_plane = Some(url("http://cp-proxy:3"));
        assert!(via(&control_plane_proxy(&uri("https://cp.example"), &p)).is_some());
    }

    #[test]
    fn no_proxy_port_uses_the_scheme_default() {
        let p = ControlPlaneProxies {
            env: env(&[
                ("HTTPS_PROXY", "http://env:1"),
                ("NO_PROXY", "cp.example:443"),
            ]),
            ..Default::default()
        };
        assert_eq!(
            control_plane_proxy(&uri("https://cp.example/prefix"), &p),
            ProxyChoice::Direct(DirectReason::NoProxy)
        );
        assert!(via(&control_plane_proxy(&uri("https://cp.example:8443"), &p)).is_some());
    }

    #[test]
    fn mcp_targets_use_only_their_channel_proxy() {
        assert_eq!(
            mcp_proxy(None),
            ProxyChoice::Direct(DirectReason::NotConfigured)
        );
        let c = mcp_proxy(Some(&url("http://chan:8")));
        assert_eq!(
            via(&c),
            Some(("http://chan:8".into(), ProxyOrigin::Channel))
        );
        let p = c.to_ureq().unwrap().unwrap();
        assert_eq!((p.host(), p.port()), ("chan", 8));
    }
}
