//! Name resolution for the outbound clients.
//!
//! ureq resolves the host of every request, also when a pooled keep-alive
//! connection is then reused, and with a timeout set (every request of ours has
//! one) its default resolver spawns a thread per lookup: three thread spawns per
//! command (poll, MCP call, response post). An IP literal needs no lookup; a
//! name's addresses are kept for a short while, so a lookup (and its thread)
//! happens at most once per host per [`TTL`], and a DNS change still reaches new
//! connections within it. Lookup failures are not kept.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::config::{Config, IpFamily};
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long a name's addresses are reused.
pub const TTL: Duration = Duration::from_secs(10);
/// Hosts remembered: the configuration names two or three.
const MAX_HOSTS: usize = 8;

struct Cached {
    host_port: String,
    addrs: ResolvedSocketAddrs,
    at: Instant,
}

#[derive(Default)]
pub struct CachingResolver {
    inner: DefaultResolver,
    cache: Mutex<Vec<Cached>>,
}

impl std::fmt::Debug for CachingResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CachingResolver")
    }
}

/// The address of an `http(s)://<ip literal>[:port]` URI, which needs no lookup.
fn literal(uri: &Uri) -> Option<SocketAddr> {
    let authority = uri.authority()?;
    let port = authority.port_u16().or(match uri.scheme_str()? {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })?;
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        // Only the default family is handled here; anything else keeps ureq's path.
        if config.ip_family() != IpFamily::Any {
            return self.inner.resolve(uri, config, timeout);
        }
        if let Some(addr) = literal(uri) {
            let mut out = self.empty();
            out.push(addr);
            return Ok(out);
        }
        let Some(authority) = uri.authority() else {
            return self.inner.resolve(uri, config, timeout);
        };
        let host_port = authority.as_str();
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache
                .iter()
                .find(|c| c.host_port == host_port && now.duration_since(c.at) < TTL)
            {
                return Ok(c.addrs.clone());
            }
        }
        // The lookup runs without the lock: a slow DNS server must not block
        // requests to other hosts.
        let addrs = self.inner.resolve(uri, config, timeout)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|c| c.host_port != host_port);
        if cache.len() >= MAX_HOSTS {
            cache.remove(0);
        }
        cache.push(Cached {
            host_port: host_port.to_string(),
            addrs: addrs.clone(),
            at: now,
        });
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn ip_literals_need_no_lookup() {
        assert_eq!(
            literal(&uri("http://127.0.0.1:8080/mcp")),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            literal(&uri("https://[::1]/x")),
            Some("[::1]:443".parse().unwrap())
        );
        assert_eq!(
            literal(&uri("http://10.0.0.1/")),
            Some("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(literal(&uri("http://localhost:80/")), None);
        assert_eq!(literal(&uri("ftp://127.0.0.1/")), None);
    }

    #[test]
    fn names_are_resolved_and_kept() {
        let r = CachingResolver::default();
        let cfg = ureq::Agent::config_builder().build();
        let u = uri("http://localhost:4321/");
        let first = r.resolve(&u, &cfg, NextTimeout::default()).unwrap();
        assert!(first
            .iter()
            .all(|a| a.port() == 4321 && a.ip().is_loopback()));
        assert_eq!(r.cache.lock().unwrap().len(), 1);
        let again = r.resolve(&u, &cfg, NextTimeout::default()).unwrap();
        assert_eq!(&first[..], &again[..]);
        assert_eq!(r.cache.lock().unwrap().len(), 1);
        // A literal never enters the cache.
        r.resolve(&uri("http://127.0.0.1:1/"), &cfg, NextTimeout::default())
            .unwrap();
        assert_eq!(r.cache.lock().unwrap().len(), 1);
    }
}
