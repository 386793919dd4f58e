//! Proxy URLs: `http://[user[:password]@]host[:port][/]`, the only kind the
//! agent speaks (HTTP CONNECT). Credentials come from the userinfo,
//! percent-decoded once; they are never shown: `Display` and `Debug` print
//! `http://user:***@host:port`.

use std::fmt;
use std::net::Ipv6Addr;

/// Longest proxy URL accepted; a longer value is a configuration error, not
/// something to allocate for.
const MAX_URL_LEN: usize = 2048;
const MAX_HOST_LEN: usize = 253;

/// An HTTP proxy reachable over plain TCP; spoken to with CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// Lowercase DNS name or IPv4 literal, or an IPv6 literal in brackets.
    host: String,
    port: u16,
    credentials: Option<Credentials>,
}

/// Basic credentials for `Proxy-Authorization`. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// Why a proxy URL was refused. Never echoes the URL (it may hold a password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyUrlError {
    Empty,
    TooLong,
    /// `https://`, `socks5://`, …: only `http://` proxies are supported.
    UnsupportedScheme(String),
    MissingHost,
    InvalidHost,
    InvalidPort,
    /// A path other than `/`, a query or a fragment.
    UnexpectedPath,
    /// A `%` not followed by two hex digits, or credentials that are not UTF-8.
    InvalidPercentEncoding,
}

impl fmt::Display for ProxyUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyUrlError::Empty => f.write_str("empty proxy URL"),
            ProxyUrlError::TooLong => write!(f, "proxy URL longer than {MAX_URL_LEN} bytes"),
            ProxyUrlError::UnsupportedScheme(s) => write!(
                f,
                "unsupported proxy scheme {s:?}: only http:// proxies (HTTP CONNECT) are supported"
            ),
            ProxyUrlError::MissingHost => f.write_str("proxy URL has no host"),
            ProxyUrlError::InvalidHost => f.write_str("proxy URL has an invalid host"),
            ProxyUrlError::InvalidPort => f.write_str("proxy URL has an invalid port (1-65535)"),
            ProxyUrlError::UnexpectedPath => {
                f.write_str("proxy URL must not carry a path, query or fragment")
            }
            ProxyUrlError::InvalidPercentEncoding => {
                f.write_str("proxy URL credentials are not valid percent-encoded UTF-8")
            }
        }
    }
}

impl std::error::Error for ProxyUrlError {}

impl ProxyUrl {
    /// Parses a proxy URL. A missing scheme means `http://` (as curl and most
    /// `HTTPS_PROXY` values written as `host:port` expect); the port defaults to 80.
    pub fn parse(raw: &str) -> Result<ProxyUrl, ProxyUrlError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(ProxyUrlError::Empty);
        }
        if raw.len() > MAX_URL_LEN {
            return Err(ProxyUrlError::TooLong);
        }
        let rest = match raw.find("://") {
            Some(i) => {
                let scheme = &raw[..i];
                if !scheme.eq_ignore_ascii_case("http") {
                    // The scheme is short and carries no secret; cap it anyway.
                    let shown: String = scheme.chars().take(16).collect();
                    return Err(ProxyUrlError::UnsupportedScheme(shown));
                }
                &raw[i + 3..]
            }
            None => raw,
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !(path.is_empty() || path == "/") {
            return Err(ProxyUrlError::UnexpectedPath);
        }
        // The password may contain '@' only percent-encoded, but be lenient
        // like curl: the host starts after the last '@'.
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let credentials = match userinfo {
            None => None,
            Some(info) => {
                let (user, password) = match info.find(':') {
                    Some(i) => (&info[..i], &info[i + 1..]),
                    None => (info, ""),
                };
                Some(Credentials {
                    user: percent_decode(user)?,
                    password: percent_decode(password)?,
                })
            }
        };
        let (host, port) = split_host_port(hostport)?;
        Ok(ProxyUrl {
            host,
            port: port.unwrap_or(80),
            credentials,
        })
    }

    /// The host as written in a URL authority (IPv6 in brackets), lowercase.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The ureq proxy for this URL. ureq re-encodes the credentials and sends
    /// them as `Proxy-Authorization: Basic` on the CONNECT request.
    pub fn to_ureq(&self) -> Result<ureq::Proxy, ProxyUrlError> {
        let mut b = ureq::Proxy::builder(ureq::ProxyProtocol::Http)
            .host(&self.host)
            .port(self.port);
        if let Some(c) = &self.credentials {
            b = b.username(&c.user).password(&c.password);
        }
        // Only fails on input parse() already refused.
        b.build().map_err(|_| ProxyUrlError::InvalidHost)
    }
}

/// `http://user:***@host:port`: safe for logs and `--help`.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("http://")?;
        if let Some(c) = &self.credentials {
            write!(f, "{}:***@", Sanitized(&c.user))?;
        }
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

/// A user name printed without control characters (it came from outside and
/// ends up in log lines).
struct Sanitized<'a>(&'a str);

impl fmt::Display for Sanitized<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                f.write_str("?")?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

fn split_host_port(hostport: &str) -> Result<(String, Option<u16>), ProxyUrlError> {
    if hostport.is_empty() {
        return Err(ProxyUrlError::MissingHost);
    }
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let end = inner.find(']').ok_or(ProxyUrlError::InvalidHost)?;
        let addr: Ipv6Addr = inner[..end]
            .parse()
            .map_err(|_| ProxyUrlError::InvalidHost)?;
        let after = &inner[end + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(ProxyUrlError::InvalidHost)?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match hostport.rfind(':') {
            Some(i) => (&hostport[..i], Some(&hostport[i + 1..])),
            None => (hostport, None),
        };
        if host.is_empty() {
            return Err(ProxyUrlError::MissingHost);
        }
        if !valid_reg_name(host) {
            return Err(ProxyUrlError::InvalidHost);
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p).ok_or(ProxyUrlError::InvalidPort)?),
    };
    Ok((host, port))
}

/// A port: 1..=65535, ASCII digits only.
pub(crate) fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

/// DNS names and IPv4 literals: letters, digits, `-`, `_`, `.`; no empty labels.
pub(crate) fn valid_reg_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn percent_decode(s: &str) -> Result<String, ProxyUrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(ProxyUrlError::InvalidPercentEncoding)?;
            let hi = hex_val(hex[0]).ok_or(ProxyUrlError::InvalidPercentEncoding)?;
            let lo = hex_val(hex[1]).ok_or(ProxyUrlError::InvalidPercentEncoding)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ProxyUrlError::InvalidPercentEncoding)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &ProxyUrl) -> Option<(&str, &str)> {
        u.credentials()
            .map(|c| (c.user.as_str(), c.password.as_str()))
    }

    #[test]
    fn plain_host_and_port() {
        let u = ProxyUrl::parse("http://Proxy.Corp:3128").unwrap();
        assert_eq!((u.host(), u.port(), creds(&u)), ("proxy.corp", 3128, None));
        assert_eq!(u.to_string(), "http://proxy.corp:3128");
    }

    #[test]
    fn scheme_is_case_insensitive_optional_and_port_defaults_to_80() {
        for raw in ["HTTP://p", "p", "http://p/", " http://p "] {
            let u = ProxyUrl::parse(raw).unwrap();
            assert_eq!((u.host(), u.port()), ("p", 80), "{raw}");
        }
        assert_eq!(ProxyUrl::parse("p:8080").unwrap().port(), 8080);
    }

    #[test]
    fn only_http_scheme() {
        for (raw, scheme) in [
            ("https://p:443", "https"),
            ("socks5://p:1080", "socks5"),
            ("socks5h://u:pw@p", "socks5h"),
        ] {
            let e = ProxyUrl::parse(raw).unwrap_err();
            assert_eq!(e, ProxyUrlError::UnsupportedScheme(scheme.into()));
            assert!(e.to_string().contains("only http://"));
            assert!(!e.to_string().contains("pw"));
        }
    }

    #[test]
    fn credentials_are_percent_decoded_once() {
        let u = ProxyUrl::parse("http://al%40ice:p%3Ass%25w%2Bord+x@p:1").unwrap();
        assert_eq!(creds(&u), Some(("al@ice", "p:ss%w+ord+x")));
        let u = ProxyUrl::parse("http://%C3%A9t%C3%A9:%E2%82%AC@p").unwrap();
        assert_eq!(creds(&u), Some(("été", "€")));
    }

    #[test]
    fn user_without_password_and_empty_password() {
        let u = ProxyUrl::parse("http://bob@p").unwrap();
        assert_eq!(creds(&u), Some(("bob", "")));
        let u = ProxyUrl::parse("http://bob:@p").unwrap();
        assert_eq!(creds(&u), Some(("bob", "")));
    }

    #[test]
    fn password_may_contain_a_raw_at_sign() {
        let u = ProxyUrl::parse("http://bob:a@b@p:9").unwrap();
        assert_eq!(creds(&u), Some(("bob", "a@b")));
        assert_eq!((u.host(), u.port()), ("p", 9));
    }

    #[test]
    fn bad_percent_encoding() {
        for raw in [
            "http://a%2:b@p",
            "http://a:b%zz@p",
            "http://a:%@p",
            "http://%FF:x@p",
        ] {
            assert_eq!(
                ProxyUrl::parse(raw),
                Err(ProxyUrlError::InvalidPercentEncoding),
                "{raw}"
            );
        }
    }

    #[test]
    fn display_and_debug_redact_the_password() {
        let u = ProxyUrl::parse("http://bob:s3cr%21t@proxy:3128").unwrap();
        assert_eq!(u.to_string(), "http://bob:***@proxy:3128");
        let dbg = format!("{u:?} {:?}", u.credentials());
        assert!(!dbg.contains("s3cr"), "{dbg}");
        assert!(dbg.contains("bob"), "{dbg}");
    }

    #[test]
    fn display_neutralises_control_characters_in_the_user() {
        let u = ProxyUrl::parse("http://a%0Ab:x@p").unwrap();
        assert_eq!(u.to_string(), "http://a?b:***@p:80");
    }

    #[test]
    fn ipv4_and_ipv6_hosts() {
        let u = ProxyUrl::parse("http://10.0.0.1:3128").unwrap();
        assert_eq!(u.host(), "10.0.0.1");
        let u = ProxyUrl::parse("http://[::1]:3128").unwrap();
        assert_eq!((u.host(), u.port()), ("[::1]", 3128));
        let u = ProxyUrl::parse("http://[FD00:0::1]").unwrap();
        assert_eq!((u.host(), u.port()), ("[fd00::1]", 80));
        assert_eq!(u.to_string(), "http://[fd00::1]:80");
    }

    #[test]
    fn invalid_hosts_and_ports() {
        use ProxyUrlError::*;
        let cases = [
            ("", Empty),
            ("   ", Empty),
            ("http://", MissingHost),
            ("http://:3128", MissingHost),
            ("http://u:p@", MissingHost),
            ("http://[::1", InvalidHost),
            ("http://[nope]:1", InvalidHost),
            ("http://[::1]x", InvalidHost),
            ("http://ex ample", InvalidHost),
            ("http://a..b", InvalidHost),
            ("http://::1:80", InvalidHost),
            ("http://p:0", InvalidPort),
            ("http://p:65536", InvalidPort),
            ("http://p:", InvalidPort),
            ("http://p:+80", InvalidPort),
            ("http://p:80/path", UnexpectedPath),
            ("http://p?x=1", UnexpectedPath),
            ("http://p#f", UnexpectedPath),
        ];
        for (raw, want) in cases {
            assert_eq!(ProxyUrl::parse(raw), Err(want), "{raw:?}");
        }
        let long = format!("http://{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(ProxyUrl::parse(&long), Err(TooLong));
    }

    #[test]
    fn errors_never_echo_the_url() {
        let e = ProxyUrl::parse("http://bob:hunter2@p:99999").unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn to_ureq_keeps_host_port_and_decoded_credentials() {
        let u = ProxyUrl::parse("http://al%40ice:p%3Ass@proxy:3128").unwrap();
        let p = u.to_ureq().unwrap();
        assert_eq!(p.protocol(), ureq::ProxyProtocol::Http);
        assert_eq!((p.host(), p.port()), ("proxy", 3128));
        assert_eq!((p.username(), p.password()), (Some("al@ice"), Some("p:ss")));
        let p = ProxyUrl::parse("[::1]:8").unwrap().to_ureq().unwrap();
        assert_eq!(p.port(), 8);
        assert_eq!(p.username(), None);
    }
}
