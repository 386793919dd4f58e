//! `NO_PROXY` / `no_proxy`: which destinations bypass the proxy.
//!
//! Grammar (comma-separated, spaces around entries trimmed, case-insensitive):
//! - `*` alone: every destination goes direct.
//! - `example.com`, `.example.com`, `*.example.com`: that host and all its
//!   subdomains (a leading `.` or `*.` is ignored, as curl does).
//! - `10.1.2.3`, `::1`, `[::1]`: that address literal.
//! - `10.0.0.0/8`, `fd00::/8`: an address range; the destination must be an
//!   address literal inside it (names are not resolved to check).
//! - any of the above (`[v6]` in brackets) followed by `:port`: only for that port.
//!
//! Entries that fit none of these are ignored and reported, so that one
//! foreign-looking value (another tool's syntax) does not stop the agent.

use std::net::IpAddr;

use super::url::{parse_port, valid_reg_name};

/// No list is allowed to cost more than this many entries.
const MAX_ENTRIES: usize = 512;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    pattern: Pattern,
    port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    /// A lowercase name without leading or trailing dot; matches it and its subdomains.
    Domain(String),
    Addr(IpAddr),
    Net {
        base: IpAddr,
        prefix: u8,
    },
}

impl NoProxy {
    /// Parses a list; returns it with the entries that were ignored (for a warning).
    pub fn parse(raw: &str) -> (NoProxy, Vec<String>) {
        let mut list = NoProxy::default();
        let mut ignored = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if list.rules.len() >= MAX_ENTRIES {
                ignored.push(format!("(entries beyond the first {MAX_ENTRIES})"));
                break;
            }
            if entry == "*" {
                list.all = true;
                continue;
            }
            match parse_rule(entry) {
                Some(rule) => list.rules.push(rule),
                // Shown in a warning: cap what an outside value can put in a log line.
                None => ignored.push(entry.chars().take(80).collect()),
            }
        }
        (list, ignored)
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.rules.is_empty()
    }

    /// Does the destination `host` (as in a URI: IPv6 may be bracketed) on
    /// `port` bypass the proxy?
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.all {
            return true;
        }
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        let addr: Option<IpAddr> = host.parse().ok();
        let name = host.to_ascii_lowercase();
        self.rules.iter().any(|rule| {
            rule.port.is_none_or(|p| p == port)
                && match (&rule.pattern, addr) {
                    (Pattern::Addr(a), Some(d)) => *a == d,
                    (Pattern::Net { base, prefix }, Some(d)) => in_net(d, *base, *prefix),
                    (Pattern::Domain(suffix), None) => {
                        name == *suffix
                            || name
                                .strip_suffix(suffix.as_str())
                                .is_some_and(|head| head.ends_with('.'))
                    }
                    _ => false,
                }
        })
    }
}

fn parse_rule(entry: &str) -> Option<Rule> {
    let (body, port) = split_port(entry)?;
    let pattern = if let Some((base, len)) = body.split_once('/') {
        let base: IpAddr = base.parse().ok()?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = if len.bytes().all(|b| b.is_ascii_digit()) && !len.is_empty() {
            len.parse().ok()?
        } else {
            return None;
        };
        if prefix > max {
            return None;
        }
        Pattern::Net { base, prefix }
    } else if let Ok(addr) = body.parse::<IpAddr>() {
        Pattern::Addr(addr)
    } else {
        let name = body
            .strip_prefix("*.")
            .or_else(|| body.strip_prefix('.'))
            .unwrap_or(body);
        let name = name.strip_suffix('.').unwrap_or(name);
        if !valid_reg_name(name) {
            return None;
        }
        Pattern::Domain(name.to_ascii_lowercase())
    };
    Some(Rule { pattern, port })
}

/// Splits an optional `:port`. A bare IPv6 literal (several colons, no
/// brackets) has no port; `[v6]:port` and `[v6]` do.
fn split_port(entry: &str) -> Option<(&str, Option<u16>)> {
    if let Some(inner) = entry.strip_prefix('[') {
        let (addr, after) = inner.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':')?)?),
        };
        return Some((addr, port));
    }
    match entry.matches(':').count() {
        0 => Some((entry, None)),
        1 => {
            let (body, p) = entry.split_once(':')?;
            Some((body, Some(parse_port(p)?)))
        }
        _ => Some((entry, None)),
    }
}

fn in_net(addr: IpAddr, base: IpAddr, prefix: u8) -> bool {
    match (addr, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(raw: &str) -> NoProxy {
        let (list, ignored) = NoProxy::parse(raw);
        assert!(ignored.is_empty(), "{raw}: ignored {ignored:?}");
        list
    }

    #[test]
    fn empty_lists_match_nothing() {
        for raw in ["", " ", ",", " , ,"] {
            let l = np(raw);
            assert!(l.is_empty());
            assert!(!l.matches("example.com", 443));
        }
    }

    #[test]
    fn star_matches_everything() {
        let l = np(" * ");
        assert!(!l.is_empty());
        for h in ["example.com", "10.0.0.1", "[::1]", "localhost"] {
            assert!(l.matches(h, 443), "{h}");
        }
    }

    #[test]
    fn bare_name_matches_itself_and_subdomains_only() {
        let l = np("example.com");
        assert!(l.matches("example.com", 443));
        assert!(l.matches("api.example.com", 443));
        assert!(l.matches("a.b.example.com", 80));
        assert!(!l.matches("badexample.com", 443));
        assert!(!l.matches("example.com.evil", 443));
        assert!(!l.matches("com", 443));
    }

    #[test]
    fn leading_dot_and_star_dot_are_suffixes() {
        for raw in [".example.com", "*.example.com"] {
            let l = np(raw);
            assert!(l.matches("api.example.com", 443), "{raw}");
            assert!(l.matches("example.com", 443), "{raw}");
            assert!(!l.matches("notexample.com", 443), "{raw}");
        }
    }

    #[test]
    fn names_are_case_insensitive_and_trailing_dots_ignored() {
        let l = np("Internal.Corp.");
        assert!(l.matches("API.INTERNAL.corp", 443));
        assert!(l.matches("internal.corp.", 443));
    }

    #[test]
    fn spaces_around_entries_are_trimmed() {
        let l = np("  a.com ,\tb.com  ,c.com");
        for h in ["a.com", "b.com", "c.com"] {
            assert!(l.matches(h, 443), "{h}");
        }
        assert!(!l.matches("d.com", 443));
    }

    #[test]
    fn ip_literals_match_exactly() {
        let l = np("127.0.0.1,::1,[fd00::2]");
        assert!(l.matches("127.0.0.1", 8080));
        assert!(!l.matches("127.0.0.2", 8080));
        assert!(l.matches("[::1]", 443));
        assert!(l.matches("::1", 443));
        assert!(l.matches("[fd00:0::2]", 443));
        // A name is not resolved: `localhost` is not 127.0.0.1 here.
        assert!(!l.matches("localhost", 443));
    }

    #[test]
    fn ipv4_cidr() {
        let l = np("10.0.0.0/8, 192.168.1.0/24");
        assert!(l.matches("10.255.3.4", 443));
        assert!(l.matches("192.168.1.200", 443));
        assert!(!l.matches("192.168.2.1", 443));
        assert!(!l.matches("11.0.0.1", 443));
        // Names never match a range.
        assert!(!l.matches("ten.example", 443));
    }

    #[test]
    fn cidr_edges() {
        let l = np("0.0.0.0/0");
        assert!(l.matches("8.8.8.8", 443));
        assert!(!l.matches("[::1]", 443), "a v4 range never matches v6");
        let l = np("10.1.2.3/32");
        assert!(l.matches("10.1.2.3", 1));
        assert!(!l.matches("10.1.2.4", 1));
        // Host bits in the base are masked off.
        let l = np("10.1.2.3/16");
        assert!(l.matches("10.1.200.1", 1));
    }

    #[test]
    fn ipv6_cidr() {
        let l = np("fd00::/8,2001:db8::/32");
        assert!(l.matches("[fd12:3456::1]", 443));
        assert!(l.matches("2001:db8:1::5", 443));
        assert!(!l.matches("[2001:db9::1]", 443));
        assert!(!l.matches("10.0.0.1", 443));
        let l = np("::/0");
        assert!(l.matches("[::1]", 443));
        let l = np("::1/128");
        assert!(l.matches("[::1]", 1));
        assert!(!l.matches("[::2]", 1));
    }

    #[test]
    fn ports_restrict_entries() {
        let l = np("example.com:8443,10.0.0.1:80,[::1]:9000,192.168.0.0/16:443");
        assert!(l.matches("api.example.com", 8443));
        assert!(!l.matches("api.example.com", 443));
        assert!(l.matches("10.0.0.1", 80));
        assert!(!l.matches("10.0.0.1", 443));
        assert!(l.matches("[::1]", 9000));
        assert!(!l.matches("[::1]", 9001));
        assert!(l.matches("192.168.7.7", 443));
        assert!(!l.matches("192.168.7.7", 80));
    }

    #[test]
    fn invalid_entries_are_ignored_and_reported() {
        let (l, ignored) = NoProxy::parse(
            "good.com, bad host, 10.0.0.0/33, ::/129, 1.2.3.4/x, h:0, h:99999, [::1, a..b, <local>",
        );
        assert_eq!(
            ignored,
            [
                "bad host",
                "10.0.0.0/33",
                "::/129",
                "1.2.3.4/x",
                "h:0",
                "h:99999",
                "[::1",
                "a..b",
                "<local>"
            ]
        );
        assert!(l.matches("good.com", 1));
        assert!(!l.matches("h", 1));
    }

    #[test]
    fn huge_lists_are_capped() {
        let raw = "a.com,".repeat(MAX_ENTRIES + 10);
        let (l, ignored) = NoProxy::parse(&raw);
        assert_eq!(l.rules.len(), MAX_ENTRIES);
        assert_eq!(ignored.len(), 1);
    }

    #[test]
    fn ignored_entries_are_truncated_for_logs() {
        let long = "x ".repeat(200);
        let (_, ignored) = NoProxy::parse(&long);
        assert_eq!(ignored[0].chars().count(), 80);
    }
}
