//! The outbound HTTP clients (ureq agents): pooled keep-alive connections,
//! rustls with ring, trust, client certificate and proxy from `agent::edge`.

use std::io::Read;
use std::time::Duration;

use ureq::tls::TlsConfig;
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
    let mut sink = [0u8; 4096];
    let mut reader = resp.body_mut().as_reader().take(MAX_DRAIN);
    while let Ok(n) = reader.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}
