//! `jsonrpc::inspect` and `same_id` on hostile messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_tunnel::proto::json;
use mcp_tunnel::proto::jsonrpc::{inspect, same_id, MessageKind};

fuzz_target!(|data: &[u8]| {
    let limits = json::Limits::default();
    let Ok(info) = inspect(data, &limits) else {
        return;
    };
    // Only strict JSON objects are classified.
    assert!(json::validate(data, &limits).is_ok());
    match info.kind {
        MessageKind::Request | MessageKind::Notification => assert!(info.method.is_some()),
        MessageKind::Response | MessageKind::Error => {
            assert!(info.method.is_none() && info.tool_name.is_none());
            assert!(info.id.is_some());
        }
    }
    assert_eq!(info.kind == MessageKind::Notification, info.id.is_none());
    if let Some(id) = info.id_bytes(data) {
        assert!(json::validate(id, &limits).is_ok());
        // An id always correlates with itself (strings, numbers, null).
        assert!(
            same_id(id, id),
            "id {:?} not same as itself",
            String::from_utf8_lossy(id)
        );
        if json::is_string(id) {
            let s = json::parse_string(id).expect("validated string id");
            let mut re = Vec::new();
            json::write_string(&mut re, &s);
            assert!(same_id(id, &re) && same_id(&re, id));
        }
    } else {
        assert!(info.id.is_none(), "id range outside the message");
    }
});
