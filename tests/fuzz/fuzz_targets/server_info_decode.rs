//! `server_info::decode` (relay side): hostile header values never panic and
//! whatever decodes re-encodes within the limits and decodes to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_tunnel::proto::server_info::{decode, encode, MAX_CHANNELS, MAX_HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(decls) = decode(header) else {
        return;
    };
    assert!(decls.len() <= MAX_CHANNELS);
    let encoded = encode(&decls).expect("a decoded declaration re-encodes");
    assert!(encoded.len() <= MAX_HEADER_BYTES);
    assert_eq!(decode(&encoded).as_ref(), Ok(&decls), "{encoded}");
    // The compact form is canonical: encoding it again changes nothing.
    assert_eq!(
        encode(&decode(&encoded).expect("decodes")).as_deref(),
        Ok(encoded.as_str())
    );
});
