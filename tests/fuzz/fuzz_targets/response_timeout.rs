//! The `response_timeout` wire grammar: hostile strings never panic, accepted
//! values stay within `MAX_DURATION`, and format → parse round-trips.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mcp_tunnel::proto::timeout::{
    format_response_timeout, parse_config_duration, parse_response_timeout, MAX_DURATION,
};

fn round_trip(d: Duration) {
    let s = format_response_timeout(d);
    assert_eq!(
        parse_response_timeout(&s),
        Ok(d.min(MAX_DURATION)),
        "{d:?} formatted as {s:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    // Any 12 bytes are also a duration to format.
    if let Some(b) = data.get(..12) {
        let secs = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let nanos = u32::from_le_bytes(b[8..].try_into().expect("4 bytes")) % 1_000_000_000;
        round_trip(Duration::new(secs, nanos));
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let config = parse_config_duration(s);
    if let Ok(d) = config {
        assert!(d <= MAX_DURATION);
    }
    if let Ok(d) = parse_response_timeout(s) {
        assert!(d <= MAX_DURATION);
        round_trip(d);
        // The config grammar is a superset of the wire grammar.
        assert_eq!(config, Ok(d), "{s:?}");
    }
});
