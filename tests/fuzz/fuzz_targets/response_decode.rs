//! `response::decode` (relay side) on hostile response POST bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_tunnel::proto::channel::Channel;
use mcp_tunnel::proto::json;
use mcp_tunnel::proto::response::{decode, MAX_RESP_HEADER_BYTES, MAX_RESP_HEADER_VALUES};

fuzz_target!(|data: &[u8]| {
    let limits = json::Limits::default();
    let Ok(r) = decode(data, &limits) else {
        return;
    };
    assert!(!r.request_id.is_empty());
    assert!((100..=599).contains(&r.resp_code));
    if let Some(c) = &r.channel {
        assert!(Channel::parse(c).is_ok());
    }
    if let Some(range) = r.resp_json.clone() {
        let raw = data.get(range).expect("resp_json range inside the body");
        assert!(json::is_object(raw));
        assert!(json::validate(raw, &limits).is_ok());
    }
    let values: usize = r.resp_headers.iter().map(|(_, v)| v.len()).sum();
    assert!(values <= MAX_RESP_HEADER_VALUES);
    let bytes: usize = r
        .resp_headers
        .iter()
        .map(|(n, vs)| vs.iter().map(|v| n.len() + v.len()).sum::<usize>())
        .sum();
    assert!(bytes <= MAX_RESP_HEADER_BYTES);
});
