//! The JSON scanner: `validate` must agree with `object_members` and
//! `array_elements`, value ranges must be exact, and strings must survive
//! `parse_string` → `write_string` → `parse_string`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_tunnel::proto::json::{self, JsonError, Limits};

fn check_string(raw: &[u8]) {
    let s = json::parse_string(raw).expect("a valid string literal parses");
    let mut out = Vec::new();
    json::write_string(&mut out, &s);
    assert_eq!(json::parse_string(&out).as_deref(), Ok(s.as_str()));
}

fn check_value(bytes: &[u8], limits: &Limits) {
    // Exact range: no whitespace around, and the slice is valid JSON itself.
    assert_eq!(json::skip_ws(bytes, 0), 0);
    assert!(!matches!(bytes.last(), Some(b' ' | b'\t' | b'\n' | b'\r')));
    assert!(json::validate(bytes, limits).is_ok());
    if json::is_string(bytes) {
        check_string(bytes);
    }
}

fuzz_target!(|data: &[u8]| {
    // A shallow depth as well, so TooDeep is easy to reach.
    for limits in [
        Limits::default(),
        Limits {
            max_depth: 3,
            max_len: 1 << 20,
        },
    ] {
        let valid = json::validate(data, &limits);
        let first = data.get(json::skip_ws(data, 0)).copied();

        match json::object_members(data, &limits) {
            Ok(members) => {
                assert_eq!(
                    valid,
                    Ok(()),
                    "object_members accepted what validate refused"
                );
                assert_eq!(first, Some(b'{'));
                for (i, (k, r)) in members.iter().enumerate() {
                    assert!(
                        members[..i].iter().all(|(p, _)| p != k),
                        "duplicate key {k:?}"
                    );
                    check_value(data.get(r.clone()).expect("range inside input"), &limits);
                }
            }
            // Reported as soon as it is seen, so the rest may be invalid too.
            Err(JsonError::DuplicateKey(_)) => assert_eq!(first, Some(b'{')),
            Err(JsonError::NotAnObject) => assert_ne!(first, Some(b'{')),
            Err(e) => {
                if first == Some(b'{') {
                    assert!(
                        valid.is_err(),
                        "validate accepted an object that object_members refused: {e}"
                    );
                }
            }
        }

        match json::array_elements(data, &limits) {
            Ok(elems) => {
                assert_eq!(
                    valid,
                    Ok(()),
                    "array_elements accepted what validate refused"
                );
                assert_eq!(first, Some(b'['));
                for r in elems {
                    check_value(data.get(r).expect("range inside input"), &limits);
                }
            }
            Err(JsonError::NotAnArray) => assert_ne!(first, Some(b'[')),
            Err(e) => {
                if first == Some(b'[') {
                    assert!(
                        valid.is_err(),
                        "validate accepted an array that array_elements refused: {e}"
                    );
                }
            }
        }

        if valid.is_ok() {
            let trimmed = &data[json::skip_ws(data, 0)..];
            let end = trimmed.len()
                - trimmed
                    .iter()
                    .rev()
                    .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
                    .count();
            let value = &trimmed[..end];
            if json::is_string(value) {
                check_string(value);
            }
            if let Ok(n) = json::parse_u64(value) {
                assert_eq!(n.to_string().as_bytes(), value);
            }
        }
    }
});
