//! Deterministic pseudo-random inputs for the fuzz smoke tests (fixed seeds,
//! so a failure reproduces exactly).

pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// Random bytes biased towards JSON/SSE punctuation so mutations hit
    /// interesting parser states rather than only garbage.
    pub(crate) fn byte(&mut self) -> u8 {
        const INTERESTING: &[u8] = b"{}[]\":,\\u0123456789-+.eEtrfalsn \t\r\n:dataevent";
        if self.next() % 3 == 0 {
            self.next() as u8
        } else {
            INTERESTING[self.below(INTERESTING.len())]
        }
    }

    pub(crate) fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let n = self.below(max_len + 1);
        (0..n).map(|_| self.byte()).collect()
    }

    /// One to four random edits (flip, insert, delete, truncate, duplicate a slice)
    /// of `sample`; sometimes fresh random bytes instead.
    pub(crate) fn mutate(&mut self, sample: &[u8]) -> Vec<u8> {
        if self.next() % 8 == 0 {
            return self.bytes(64);
        }
        let mut v = sample.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(v.len() + 1);
            match self.below(5) {
                0 if at < v.len() => v[at] = self.byte(),
                1 => v.insert(at, self.byte()),
                2 if at < v.len() => {
                    v.remove(at);
                }
                3 => v.truncate(at),
                _ => {
                    let end = (at + self.below(16)).min(v.len());
                    let chunk = v[at..end].to_vec();
                    v.splice(at..at, chunk);
                }
            }
        }
        v
    }
}
