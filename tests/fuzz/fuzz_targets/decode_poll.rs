//! `command::decode_poll` on hostile poll bodies: never panics, and what it
//! accepts respects the limits it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_tunnel::proto::command::{decode_poll, CommandKind, Decoded, PollLimits};
use mcp_tunnel::proto::headers::{is_valid_name, is_valid_value};
use mcp_tunnel::proto::json;
use mcp_tunnel::proto::timeout::MAX_DURATION;

fuzz_target!(|data: &[u8]| {
    // Small caps too, so the count and byte limits are reachable by the fuzzer.
    let small = PollLimits {
        max_commands: 3,
        max_headers: 4,
        max_header_bytes: 64,
        ..PollLimits::default()
    };
    for limits in [PollLimits::default(), small] {
        let Ok(batch) = decode_poll(data, &limits) else {
            continue;
        };
        assert!(batch.len() <= limits.max_commands);
        for d in &batch {
            let Decoded::Command(c) = d else { continue };
            assert!(!c.request_id.is_empty());
            assert!(c.headers.len() <= limits.max_headers);
            let bytes: usize = c.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
            assert!(bytes <= limits.max_header_bytes);
            for h in &c.headers {
                assert!(is_valid_name(&h.name) && is_valid_value(&h.value));
            }
            if let Some(t) = c.response_timeout {
                assert!(t <= MAX_DURATION);
            }
            if let CommandKind::JsonRpc { body } = &c.kind {
                // The accepted command was strict JSON, so its jsonrpc object is too.
                assert!(json::is_object(body));
                assert!(json::validate(body, &limits.json).is_ok());
            }
        }
    }
});
