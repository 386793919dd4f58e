//! API keys and other unguessable identifiers.
//!
//! A key secret is `mtk_` + 64 hex digits (256 bits from the OS CSPRNG). Only its
//! SHA-256 is stored; a presented key is hashed and compared in constant time
//! against every stored hash, so neither timing nor early exit tells how close a
//! guess was. Key ids (`key_…`) are separate, public handles for listing and
//! revocation.

use std::fmt;

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

pub const SECRET_PREFIX: &str = "mtk_";
/// Longer presented credentials are rejected before hashing.
pub const MAX_PRESENTED_LEN: usize = 256;

#[derive(Debug)]
pub struct RandomError;

impl fmt::Display for RandomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the system random number generator failed")
    }
}

impl std::error::Error for RandomError {}

pub fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    SystemRandom::new().fill(buf).map_err(|_| RandomError)
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// `prefix` + `len` lowercase alphanumerics, uniformly distributed (rejection
/// sampling, no modulo bias). Used for tunnel and org ids.
pub fn random_alnum(prefix: &str, len: usize) -> Result<String, RandomError> {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    let mut buf = [0u8; 64];
    while out.len() < prefix.len() + len {
        fill_random(&mut buf)?;
        for &b in &buf {
            // 252 = 7 * 36: values above would favour the first letters.
            if b < 252 && out.len() < prefix.len() + len {
                out.push(ALPHABET[usize::from(b % 36)] as char);
            }
        }
    }
    Ok(out)
}

/// `prefix` + hex of `bytes` random bytes: request ids, shard tokens, key ids.
pub fn random_hex(prefix: &str, bytes: usize) -> Result<String, RandomError> {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf)?;
    Ok(format!("{prefix}{}", hex(&buf)))
}

/// A freshly generated key: the secret is shown once, the hash is stored.
pub struct NewKey {
    pub id: String,
    pub secret: String,
    pub sha256: String,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

pub fn generate() -> Result<NewKey, RandomError> {
    let secret = random_hex(SECRET_PREFIX, 32)?;
    let id = random_hex("key_", 8)?;
    let sha256 = hash_hex(&secret);
    Ok(NewKey { id, secret, sha256 })
}

pub fn hash(secret: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub fn hash_hex(secret: &str) -> String {
    hex(&hash(secret))
}

/// Equality whose running time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Index of the stored hash (lowercase hex) matching `presented`, scanning all of
/// them without an early exit.
pub fn find<'a>(presented: &str, stored: impl Iterator<Item = &'a str>) -> Option<usize> {
    if presented.is_empty() || presented.len() > MAX_PRESENTED_LEN {
        return None;
    }
    let h = hash_hex(presented);
    let mut found = None;
    for (i, s) in stored.enumerate() {
        if constant_time_eq(h.as_bytes(), s.as_bytes()) && found.is_none() {
            found = Some(i);
        }
    }
    found
}

/// The credential of an `Authorization`-style value: `Bearer <token>` (scheme
/// case-insensitive, one space). Anything else is no credential.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    if token.is_empty() || has_whitespace(token) {
        return None;
    }
    Some(token)
}

/// `s.contains(char::is_whitespace)`, with a branch-free pass first (this
/// runs on each request): ASCII whitespace is all at or below the space, so
/// a token with no such byte and no non-ASCII byte has none.
fn has_whitespace(s: &str) -> bool {
    let suspect = s
        .bytes()
        .fold(false, |acc, b| acc | (b <= b' ') | (b >= 0x80));
    suspect && s.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_hash_matches() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.id, b.id);
        assert!(a.secret.starts_with("mtk_"));
        assert_eq!(a.secret.len(), 4 + 64);
        assert_eq!(a.sha256, hash_hex(&a.secret));
        assert!(!a.sha256.contains(&a.secret[4..]));
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn find_matches_only_the_right_secret() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        let stored = [a.sha256.as_str(), b.sha256.as_str()];
        assert_eq!(find(&a.secret, stored.iter().copied()), Some(0));
        assert_eq!(find(&b.secret, stored.iter().copied()), Some(1));
        assert_eq!(find("mtk_nope", stored.iter().copied()), None);
        assert_eq!(find("", stored.iter().copied()), None);
        // The stored hash itself is not a credential.
        assert_eq!(find(&a.sha256, stored.iter().copied()), None);
        let long = "x".repeat(MAX_PRESENTED_LEN + 1);
        assert_eq!(find(&long, stored.iter().copied()), None);
    }

    #[test]
    fn constant_time_eq_basics() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn random_alnum_shape() {
        let t = random_alnum("tunnel_", 32).unwrap();
        assert!(crate::relay::state::is_tunnel_id(&t), "{t}");
        assert_ne!(t, random_alnum("tunnel_", 32).unwrap());
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer a b"), None);
        assert_eq!(bearer("Bearerabc"), None);
        for ws in ["\t", "\u{0b}", "\u{0c}", "\r", "\n", "\u{a0}", "\u{2003}"] {
            assert_eq!(bearer(&format!("Bearer a{ws}b")), None, "{ws:?}");
        }
        assert_eq!(bearer("Bearer k\u{e9}y"), Some("k\u{e9}y"));
    }

    #[test]
    fn whitespace_check_matches_char_is_whitespace() {
        for c in (0u32..0x3100).filter_map(char::from_u32) {
            for s in [format!("ab{c}"), format!("\u{e9}{c}"), format!("{c}")] {
                assert_eq!(has_whitespace(&s), s.contains(char::is_whitespace), "{c:?}");
            }
        }
    }
}
