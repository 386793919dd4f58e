//! Randomness from the OS CSPRNG (ring): backoff jitter and the instance id.

use ring::rand::{SecureRandom, SystemRandom};
use std::fmt::Write as _;

/// A random u64 for jitter. If the OS generator fails (it practically never
/// does), time-derived bits still spread retries; jitter is not a secret.
pub fn u64() -> u64 {
    let mut b = [0u8; 8];
    if SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.subsec_nanos() as u64 ^ t.as_secs().rotate_left(32);
    }
    u64::from_le_bytes(b)
}

/// A random per-process instance id, 32 lowercase hex characters.
pub fn instance_id() -> String {
    let mut b = [0u8; 16];
    if SystemRandom::new().fill(&mut b).is_err() {
        b[..8].copy_from_slice(&u64().to_le_bytes());
        b[8..].copy_from_slice(&(std::process::id() as u64).to_le_bytes());
    }
    let mut s = String::with_capacity(32);
    for byte in b {
        let _ = write!(s, "{byte:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn instance_ids_differ_and_are_hex() {
        let a = super::instance_id();
        let b = super::instance_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
