//! Header policy on hostile header sets: `forward_headers` (agent → MCP
//! server), plus `response_allowlist` and `command_headers_from_client` on the
//! same pairs.
//!
//! Input layout: byte 0 picks the limits and the relay-key flag; the rest is
//! `name:value` lines; the first empty line separates the static (configured)
//! headers from the command's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_tunnel::proto::command::Header;
use mcp_tunnel::proto::headers::{
    command_headers_from_client, forward_headers, is_hop_by_hop, is_valid_name, is_valid_value,
    response_allowlist, HeaderLimits, ACCEPT_MCP, CONTENT_TYPE_JSON, RESPONSE_ALLOWLIST,
};

fn is(h: &Header, name: &str) -> bool {
    h.name.eq_ignore_ascii_case(name)
}

/// Lowercased tokens of every `Connection` header among `hs`.
fn connection_named(hs: &[Header]) -> Vec<String> {
    hs.iter()
        .filter(|h| is(h, "connection"))
        .flat_map(|h| h.value.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| !t.is_empty())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (mut stat, mut cmd) = (Vec::new(), Vec::new());
    let mut in_cmd = false;
    for line in text.split('\n') {
        if line.is_empty() && !in_cmd {
            in_cmd = true;
            continue;
        }
        let (n, v) = line.split_once(':').unwrap_or((line, ""));
        let h = Header::new(n, v);
        if in_cmd {
            cmd.push(h)
        } else {
            stat.push(h)
        }
    }
    let limits = if sel & 1 == 0 {
        HeaderLimits::default()
    } else {
        HeaderLimits {
            max_count: usize::from(sel >> 4),
            max_bytes: usize::from(sel) * 4,
        }
    };

    if let Ok(out) = forward_headers(&stat, &cmd, &limits) {
        assert!(out.len() <= limits.max_count);
        let bytes: usize = out.iter().map(|h| h.name.len() + h.value.len()).sum();
        assert!(bytes <= limits.max_bytes);
        let all: Vec<Header> = stat.iter().chain(&cmd).cloned().collect();
        let conn = connection_named(&all);
        let ct: Vec<_> = out.iter().filter(|h| is(h, "content-type")).collect();
        assert_eq!(ct.len(), 1, "exactly our Content-Type");
        assert_eq!(ct[0].value, CONTENT_TYPE_JSON);
        assert!(out
            .iter()
            .any(|h| is(h, "accept") && !h.value.trim().is_empty()));
        for h in &out {
            assert!(is_valid_name(&h.name) && is_valid_value(&h.value), "{h:?}");
            assert!(!is_hop_by_hop(&h.name), "hop-by-hop {:?} forwarded", h.name);
            let from_cmd = cmd.contains(h);
            let from_static = stat.contains(h) && !cmd.iter().any(|c| is(c, &h.name));
            // Added by the policy itself; Connection names only incoming headers.
            let ours = (is(h, "content-type") && h.value == CONTENT_TYPE_JSON)
                || (is(h, "accept") && h.value == ACCEPT_MCP);
            assert!(
                from_cmd || from_static || ours,
                "{h:?} came from nowhere or lost to the command"
            );
            assert!(
                ours || !conn.contains(&h.name.to_ascii_lowercase()),
                "{:?} named by Connection",
                h.name
            );
        }
        // Nothing the command sent and the policy allows is lost.
        for c in &cmd {
            let dropped = is_hop_by_hop(&c.name)
                || conn.contains(&c.name.to_ascii_lowercase())
                || is(c, "content-type")
                || (is(c, "accept") && c.value.trim().is_empty());
            assert!(dropped || out.contains(c), "{c:?} lost");
        }
    }

    let pairs = || {
        stat.iter()
            .chain(&cmd)
            .map(|h| (h.name.as_str(), h.value.as_str()))
    };
    for (name, values) in response_allowlist(pairs()) {
        assert!(
            RESPONSE_ALLOWLIST.contains(&name.as_str()),
            "{name:?} not allowlisted"
        );
        for v in values {
            assert!(!v.is_empty() && is_valid_value(&v) && v.trim_matches([' ', '\t']) == v);
        }
    }
    let relay_key = sel & 2 != 0;
    let grouped = command_headers_from_client(pairs(), relay_key);
    for (i, (name, values)) in grouped.iter().enumerate() {
        assert!(is_valid_name(name) && !is_hop_by_hop(name));
        assert!(!name.eq_ignore_ascii_case("x-tunnel-authorization"));
        assert!(!(relay_key && name.eq_ignore_ascii_case("authorization")));
        assert!(grouped[..i]
            .iter()
            .all(|(p, _)| !p.eq_ignore_ascii_case(name)));
        assert!(values.iter().all(|v| is_valid_value(v)));
    }
});
