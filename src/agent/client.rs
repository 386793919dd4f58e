//! The outbound HTTP clients (ureq agents): pooled keep-alive connections,
//! rustls with ring, trust, client certificate and proxy from `agent::edge`.

use std::io::Read;
use std::time::Duration;

use http::header::HOST;
use http::{HeaderValue, Uri};
use ureq::tls::TlsConfig;
use ureq::typestate::{WithBody, WithoutBody};
use ureq::unversioned::transport::{ConnectProxyConnector, Connector, RustlsConnector};

use super::edge::{ChannelEdge, Clients};
use super::resolver::CachingResolver;
use super::tcp_transport::TcpConnector;

/// Bytes a connection reads at a time (ureq's default: 128 KiB, and as much
/// again for TLS plaintext). A response head must fit in it; bodies stream
/// through it in pieces.
const INPUT_BUFFER: usize = 16 * 1024;
/// Bytes a connection writes at a time; the longest request head line must
/// fit (the relay accepts at most 16 KiB of request head).
const OUTPUT_BUFFER: usize = 16 * 1024;
/// A longer response head is refused as such (`LargeResponseHeader`) rather
/// than stalling on a full input buffer.
const MAX_RESPONSE_HEAD: usize = INPUT_BUFFER - 1;

pub struct ClientOptions {
    pub user_agent: String,
    pub max_idle: usize,
    pub max_idle_age: Duration,
}

/// A ureq agent that reports every HTTP status as a response (we classify them),
/// follows no redirect (a redirect would resend credentials and bodies to a place
/// nobody configured) and uses exactly the proxy given (`None`: direct; ureq's
/// own environment lookup stays off — `agent::edge` decided).
pub fn agent(opts: &ClientOptions, tls: TlsConfig, proxy: Option<ureq::Proxy>) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(proxy)
        .tls_config(tls)
        .user_agent(opts.user_agent.as_str())
        .accept("")
        .max_idle_connections(opts.max_idle)
        .max_idle_connections_per_host(opts.max_idle)
        .max_idle_age(opts.max_idle_age)
        .input_buffer_size(INPUT_BUFFER)
        .output_buffer_size(OUTPUT_BUFFER)
        .max_response_header_size(MAX_RESPONSE_HEAD)
        .build();
    ureq::Agent::with_parts(config, connector(), CachingResolver::default())
}

/// ureq's default chain (proxy CONNECT, TCP, rustls) with our TCP transport
/// (`agent::tcp_transport`: fewer syscalls per request). SOCKS proxies are
/// refused by `agent::edge` before a client is built.
fn connector() -> impl Connector {
    ().chain(ConnectProxyConnector::default())
        .chain(TcpConnector)
        .chain(RustlsConnector::default())
}

/// The control-plane and MCP agents, each with its hop's TLS and proxy.
pub fn agents(
    cp: &ClientOptions,
    mcp: &ClientOptions,
    edge: Clients,
) -> (ureq::Agent, ureq::Agent) {
    (
        agent(cp, edge.cp_tls, edge.cp_proxy),
        agent(mcp, edge.mcp_tls, edge.mcp_proxy),
    )
}

/// The control-plane agent and one MCP agent per HTTP target (`(label,
/// settings)` each), built with that target's own TLS and proxy
/// (`agent::edge::Clients::for_channel`). Separate agents mean separate
/// connection pools and TLS configurations: a connection, a proxy or a client
/// certificate configured for one channel's origin is never used for another.
pub fn agents_per_target(
    cp: &ClientOptions,
    mcp: &ClientOptions,
    edge: Clients,
    targets: &[(String, &ChannelEdge)],
) -> (ureq::Agent, Vec<ureq::Agent>) {
    let per_target = targets
        .iter()
        .map(|(label, ch)| {
            let (tls, proxy) = edge.for_channel(label, ch);
            agent(mcp, tls, proxy)
        })
        .collect();
    (agent(cp, edge.cp_tls, edge.cp_proxy), per_target)
}

/// Bodies up to this size are read to the end to keep the connection.
const MAX_DRAIN: u64 = 64 * 1024;

/// Reads a small body to the end so the connection can go back to the pool;
/// a bigger one is left unread (ureq then closes the connection).
pub fn drain(resp: &mut ureq::http::Response<ureq::Body>) {
    let mut reader = resp.body_mut().as_reader().take(MAX_DRAIN);
    // Small: it is zeroed on every call, and what is drained is mostly a
    // post's `{"status":"ok"}`. A failed read leaves the connection to
    // ureq, which then closes it.
    let mut sink = [0u8; 512];
    while let Ok(n) = reader.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

/// A request URL parsed once, with the `Host` header ureq would otherwise
/// derive from it on every request (a `format!` and a header value each
/// time): the host, and `:port` when it is not the scheme's default.
#[derive(Debug, Clone)]
pub struct Endpoint {
    url: String,
    /// `None` when the URL does not parse: it then goes to ureq as text and
    /// ureq reports the error on each request, as without this.
    /// Boxed: a target holding an endpoint stays small.
    parsed: Option<Box<(Uri, HeaderValue)>>,
}

impl Endpoint {
    pub fn new(url: String) -> Endpoint {
        let parsed = Uri::try_from(url.as_str())
            .ok()
            .and_then(|uri| host_header(&uri).map(|host| Box::new((uri, host))));
        Endpoint { url, parsed }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn get(&self, agent: &ureq::Agent) -> ureq::RequestBuilder<WithoutBody> {
        match self.parsed.as_deref() {
            Some((uri, host)) => with_host(agent.get(uri.clone()), host),
            None => agent.get(&self.url),
        }
    }

    pub fn post(&self, agent: &ureq::Agent) -> ureq::RequestBuilder<WithBody> {
        match self.parsed.as_deref() {
            Some((uri, host)) => with_host(agent.post(uri.clone()), host),
            None => agent.post(&self.url),
        }
    }

    pub fn delete(&self, agent: &ureq::Agent) -> ureq::RequestBuilder<WithoutBody> {
        match self.parsed.as_deref() {
            Some((uri, host)) => with_host(agent.delete(uri.clone()), host),
            None => agent.delete(&self.url),
        }
    }
}

/// Headers a request has room for before its map grows (and rehashes): a
/// control-plane request's (Host, Authorization, the fixed ones,
/// Content-Type, the shard token) or a forwarded MCP request's usual set.
const HEADER_ROOM: usize = 12;

fn with_host<B>(mut req: ureq::RequestBuilder<B>, host: &HeaderValue) -> ureq::RequestBuilder<B> {
    if let Some(headers) = req.headers_mut() {
        let _ = headers.try_reserve(HEADER_ROOM);
        let _ = headers.try_append(HOST, host.clone());
    }
    req
}

/// The `Host` value for `uri` as ureq-proto writes it (`maybe_with_port`):
/// `None` without a host (ureq then refuses the URL itself).
fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let default_port = match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") | None => Some(80),
        Some(_) => None,
    };
    let value = match uri.port_u16() {
        Some(port) if default_port.is_some_and(|d| d != port) => {
            HeaderValue::try_from(format!("{host}:{port}"))
        }
        _ => HeaderValue::from_str(host),
    };
    value.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(url: &str) -> Option<String> {
        Endpoint::new(url.into())
            .parsed
            .map(|p| p.1.to_str().unwrap().to_string())
    }

    #[test]
    fn host_carries_the_port_only_when_not_the_default() {
        assert_eq!(
            host("http://127.0.0.1:8080/x").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            host("http://relay.test/v1?a=b").as_deref(),
            Some("relay.test")
        );
        assert_eq!(
            host("http://relay.test:80/v1").as_deref(),
            Some("relay.test")
        );
        assert_eq!(
            host("https://relay.test:443/").as_deref(),
            Some("relay.test")
        );
        assert_eq!(
            host("https://relay.test:80/").as_deref(),
            Some("relay.test:80")
        );
        assert_eq!(host("http://[::1]:9/mcp").as_deref(), Some("[::1]:9"));
        assert_eq!(
            host("http://user:pw@relay.test:81/").as_deref(),
            Some("relay.test:81")
        );
    }

    #[test]
    fn an_unparsable_url_is_left_to_ureq() {
        let e = Endpoint::new("not a url".into());
        assert!(e.parsed.is_none());
        assert_eq!(e.url(), "not a url");
    }
}
