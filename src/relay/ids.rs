//! Per-command identifiers (request ids, shard tokens) and the hasher of the
//! maps keyed by them.
//!
//! Ids come from a ChaCha20 keystream (ring's ChaCha20-Poly1305 sealing
//! zeros; the tag is dropped) under a key read once per thread from the OS
//! CSPRNG, so an id costs no syscall. Each refill draws 32 bytes more than
//! it hands out and makes them the next key (fast key erasure): the key that
//! produced ids already handed out is gone, so a later memory disclosure does
//! not reveal them, and a key is used for one block only (a fixed nonce is
//! then safe). Bytes are handed out once and wiped as they go.

use std::cell::RefCell;
use std::hash::{BuildHasherDefault, Hasher};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use super::keys::{self, RandomError};

/// Bytes handed out per refill: ~36 commands' ids.
const BLOCK: usize = 1024;
const KEY: usize = 32;

struct Stream {
    /// `None` until the first use reads a key from the OS.
    key: Option<[u8; KEY]>,
    buf: [u8; BLOCK],
    pos: usize,
}

thread_local! {
    static STREAM: RefCell<Stream> =
        const { RefCell::new(Stream { key: None, buf: [0; BLOCK], pos: BLOCK }) };
}

impl Stream {
    fn refill(&mut self) -> Result<(), RandomError> {
        let key = match self.key {
            Some(k) => k,
            None => {
                let mut k = [0u8; KEY];
                keys::fill_random(&mut k)?;
                k
            }
        };
        let sealer =
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|_| RandomError)?);
        let mut out = [0u8; KEY + BLOCK];
        // Every key seals exactly one block, so the all-zero nonce never
        // repeats under a key. The tag authenticates nothing here: dropped.
        let _tag = sealer
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::empty(),
                &mut out,
            )
            .map_err(|_| RandomError)?;
        let mut next = [0u8; KEY];
        next.copy_from_slice(&out[..KEY]);
        self.key = Some(next);
        self.buf.copy_from_slice(&out[KEY..]);
        out.fill(0);
        std::hint::black_box(&out);
        self.pos = 0;
        Ok(())
    }

    fn fill(&mut self, dest: &mut [u8]) -> Result<(), RandomError> {
        if dest.len() > BLOCK {
            return keys::fill_random(dest);
        }
        if BLOCK - self.pos < dest.len() {
            self.refill()?;
        }
        let (start, end) = (self.pos, self.pos + dest.len());
        dest.copy_from_slice(&self.buf[start..end]);
        self.buf[start..end].fill(0);
        self.pos = end;
        Ok(())
    }
}

/// Fills `dest` with unguessable bytes from this thread's stream.
pub fn fill(dest: &mut [u8]) -> Result<(), RandomError> {
    STREAM.with(|s| s.borrow_mut().fill(dest))
}

/// `prefix` + lowercase hex of `N` fresh random bytes, in one allocation.
pub fn random_hex<const N: usize>(prefix: &str) -> Result<String, RandomError> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; N];
    fill(&mut bytes)?;
    let mut s = Vec::with_capacity(prefix.len() + 2 * N);
    s.extend_from_slice(prefix.as_bytes());
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)]);
        s.push(DIGITS[usize::from(b & 15)]);
    }
    // A str prefix and ASCII digits: always UTF-8.
    String::from_utf8(s).map_err(|_| RandomError)
}

/// A multiply-rotate hasher (FxHash's mixing, 8 bytes at a time) for maps
/// whose keys the relay chose itself: request ids (random) and tunnel ids
/// (from the admin's state; a queue is created only for a tunnel that
/// authorized a caller). Requests can look keys up but never insert them,
/// and a lookup cannot degrade a table, so the flooding that SipHash's
/// secret key defends against is not reachable through these maps.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

pub type IdHash = BuildHasherDefault<IdHasher>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn ids_have_their_format_and_do_not_repeat() {
        let mut seen = HashSet::new();
        // Several refills (and key changes) of the stream.
        for _ in 0..2000 {
            let id = random_hex::<12>("req_").unwrap();
            assert_eq!(id.len(), 4 + 24);
            assert!(id.starts_with("req_"));
            assert!(id[4..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert!(seen.insert(id), "an id came twice");
        }
        let t = random_hex::<16>("shard_").unwrap();
        assert_eq!(t.len(), 6 + 32);
        // Wiped bytes are never handed out again, and a request larger than
        // a block goes to the OS.
        assert_ne!(&t[6..], "0".repeat(32));
        let mut big = [0u8; BLOCK + 1];
        fill(&mut big).unwrap();
        assert!(big.iter().any(|&b| b != 0));
    }

    #[test]
    fn the_stream_is_not_constant_and_moves_on_after_a_refill() {
        let mut s = Stream {
            key: Some([7; KEY]),
            buf: [0; BLOCK],
            pos: BLOCK,
        };
        let mut a = [0u8; 64];
        s.fill(&mut a).unwrap();
        // Not the zeros it sealed, and roughly balanced.
        let ones: u32 = a.iter().map(|b| b.count_ones()).sum();
        assert!((128..=384).contains(&ones), "{ones} bits set of 512");
        // Handed-out bytes are wiped from the buffer.
        assert!(s.buf[..64].iter().all(|&b| b == 0));
        let first_key = s.key;
        s.pos = BLOCK;
        let mut b = [0u8; 64];
        s.fill(&mut b).unwrap();
        assert_ne!(a, b, "a refill must not repeat the block");
        assert_ne!(s.key, first_key, "each refill replaces the key");
        // The same key gives the same stream: what makes the key the secret.
        let mut again = Stream {
            key: Some([7; KEY]),
            buf: [0; BLOCK],
            pos: BLOCK,
        };
        let mut c = [0u8; 64];
        again.fill(&mut c).unwrap();
        assert_eq!(a, c);
    }

    #[test]
    fn the_hasher_tells_ids_apart() {
        let h = IdHash::default();
        let a = h.hash_one("req_000000000000000000000001");
        let b = h.hash_one("req_000000000000000000000002");
        let c = h.hash_one("req_00000000000000000000000");
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, h.hash_one("req_000000000000000000000001"));
    }
}
