//! Ids of requests the agent gave up on (their deadline passed) while the
//! child kept running: a late answer for one of them is discarded instead of
//! being taken for another request's. Bounded, oldest forgotten first.

use std::collections::VecDeque;

use crate::proto::jsonrpc::same_id;

/// Enough for a long run of timeouts; each entry is one raw id (ids are small).
pub const MAX_RETIRED: usize = 1024;
/// Ids longer than this are not remembered (an id is normally a number or a short string).
pub const MAX_ID_BYTES: usize = 256;

#[derive(Debug)]
pub struct RetiredIds {
    ids: VecDeque<Vec<u8>>,
    cap: usize,
}

impl RetiredIds {
    pub fn new(cap: usize) -> RetiredIds {
        RetiredIds {
            ids: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Remembers `id` (raw JSON); the oldest entry goes when full.
    pub fn retire(&mut self, id: &[u8]) {
        if id.len() > MAX_ID_BYTES || self.contains(id) {
            return;
        }
        if self.ids.len() == self.cap {
            self.ids.pop_front();
        }
        self.ids.push_back(id.to_vec());
    }

    pub fn contains(&self, id: &[u8]) -> bool {
        self.ids.iter().any(|r| same_id(r, id))
    }

    /// Forgets `id`; true when it was retired. A late answer is expected once,
    /// and a new request reusing the id must not lose its own answer.
    pub fn take(&mut self, id: &[u8]) -> bool {
        match self.ids.iter().position(|r| same_id(r, id)) {
            Some(i) => {
                self.ids.remove(i);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retire_take_and_equivalent_spellings() {
        let mut r = RetiredIds::new(4);
        r.retire(b"7");
        r.retire(b"\"abc\"");
        assert!(r.contains(b"7"));
        assert!(r.contains(b"\"\\u0061bc\""), "same id, other spelling");
        assert!(!r.contains(b"\"7\""), "a string is not the number");
        assert!(r.take(b"\"abc\""));
        assert!(!r.take(b"\"abc\""), "taken once");
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn bounded_fifo_eviction() {
        let mut r = RetiredIds::new(3);
        for i in 0..5 {
            r.retire(i.to_string().as_bytes());
        }
        assert_eq!(r.len(), 3);
        assert!(
            !r.contains(b"0") && !r.contains(b"1"),
            "oldest evicted first"
        );
        assert!(r.contains(b"2") && r.contains(b"4"));
        r.retire(b"4");
        assert_eq!(r.len(), 3, "no duplicates");
        r.retire(&vec![b'1'; MAX_ID_BYTES + 1]);
        assert_eq!(r.len(), 3, "oversized ids are not stored");
        let mut full = RetiredIds::new(MAX_RETIRED);
        for i in 0..(MAX_RETIRED + 10) {
            full.retire(i.to_string().as_bytes());
        }
        assert_eq!(full.len(), MAX_RETIRED);
    }
}
