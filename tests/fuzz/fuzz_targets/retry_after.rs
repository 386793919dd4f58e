//! `retry::parse_retry_after`: hostile header values and clocks never panic,
//! and the answer is capped at `MAX_RETRY_AFTER`.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use mcp_tunnel::proto::retry::{parse_retry_after, MAX_RETRY_AFTER};

fuzz_target!(|data: &[u8]| {
    // Bytes 0..8: the clock (seconds since the epoch, any u64 that SystemTime
    // can hold, so clocks before 1970 are covered too); the rest: the value.
    let Some((clock, value)) = data.split_first_chunk::<8>() else {
        return;
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    let secs = u64::from_le_bytes(*clock);
    let now = if secs & 1 == 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs >> 1))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs >> 1))
    };
    let Some(now) = now else {
        return;
    };
    let Some(d) = parse_retry_after(value, now) else {
        return;
    };
    assert!(d <= MAX_RETRY_AFTER);
    let v = value.trim_matches([' ', '\t']);
    if v.bytes().all(|b| b.is_ascii_digit()) {
        let expect = v.parse::<u64>().map_or(MAX_RETRY_AFTER, |n| {
            Duration::from_secs(n).min(MAX_RETRY_AFTER)
        });
        assert_eq!(d, expect);
    } else {
        // A date in the past or now is no reason to wait.
        assert!(!d.is_zero());
    }
});
