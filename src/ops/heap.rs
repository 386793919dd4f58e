//! The process's global allocator: small blocks reused from sharded free
//! lists in front of the system allocator.
//!
//! Why: the static agent links musl, whose allocator (mallocng) takes one
//! process-wide lock on every `malloc` and `free`. With a dozen worker
//! threads forwarding commands, that lock was the agent's hottest futex
//! (~80 % of its futex calls at c=64) and the static agent spent ~45 % more
//! CPU per request than the glibc build (docs/benchmarks.md, step 16).
//!
//! How: blocks of up to 1 KiB are rounded up to one of seven size classes.
//! Each thread is given one of eight shards; a freed block goes onto its
//! shard's list for that class (up to a small cap per class), and the next
//! allocation of that class on that shard takes it back. A shard is guarded
//! by a try-lock that never waits: when two threads meet on one shard, the
//! loser simply goes to the system allocator. Bigger or over-aligned blocks
//! always go to the system allocator.
//!
//! Every small block, cached or not, is allocated from the system with its
//! class's layout, so a block can be freed to the system at any time: the
//! caches are an optimisation only, bounded at 8 × 7 × 4 KiB = 224 KiB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, UnsafeCell};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Size classes: 16, 32, …, 1024 bytes.
const CLASSES: usize = 7;
const MIN_CLASS_SHIFT: u32 = 4;
const MAX_SMALL: usize = 16 << (CLASSES - 1);
/// Alignment of every small block (what the system allocator gives anyway).
const SMALL_ALIGN: usize = 16;
/// Bytes a shard keeps per class: 256 blocks of 16 bytes, 4 of 1 KiB.
const CACHE_BYTES_PER_CLASS: usize = 4096;
const SHARDS: usize = 8;

/// A cached block's first word points at the next one.
struct Block {
    next: *mut Block,
}

#[repr(align(64))] // one cache line per shard: no false sharing of the locks
struct Shard {
    locked: AtomicBool,
    heads: UnsafeCell<[*mut Block; CLASSES]>,
    counts: UnsafeCell<[u16; CLASSES]>,
}

impl Shard {
    const fn new() -> Shard {
        Shard {
            locked: AtomicBool::new(false),
            heads: UnsafeCell::new([ptr::null_mut(); CLASSES]),
            counts: UnsafeCell::new([0; CLASSES]),
        }
    }

    /// Runs `f` on the lists if no other thread holds them; never waits.
    fn try_with<R>(
        &self,
        f: impl FnOnce(&mut [*mut Block; CLASSES], &mut [u16; CLASSES]) -> R,
    ) -> Option<R> {
        if self.locked.swap(true, Ordering::Acquire) {
            return None;
        }
        // SAFETY: `locked` gives this thread sole access until it is cleared.
        let r = unsafe { f(&mut *self.heads.get(), &mut *self.counts.get()) };
        self.locked.store(false, Ordering::Release);
        Some(r)
    }
}

/// The allocator. One is installed as the binary's `#[global_allocator]`;
/// tests make their own.
pub struct ShardedHeap {
    shards: [Shard; SHARDS],
    next_shard: AtomicUsize,
}

// SAFETY: the lists behind each shard's UnsafeCells are only touched while
// that shard's lock is held (`Shard::try_with`).
unsafe impl Sync for ShardedHeap {}
// SAFETY: the cached blocks belong to the heap, not to any thread.
unsafe impl Send for ShardedHeap {}

thread_local! {
    // Const and without a destructor: reading it never allocates, and it
    // stays readable while a thread is being torn down.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

impl Default for ShardedHeap {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardedHeap {
    pub const fn new() -> ShardedHeap {
        ShardedHeap {
            shards: [const { Shard::new() }; SHARDS],
            next_shard: AtomicUsize::new(0),
        }
    }

    fn shard(&self) -> &Shard {
        let i = SHARD
            .try_with(|s| {
                let mut i = s.get();
                if i == usize::MAX {
                    i = self.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS;
                    s.set(i);
                }
                i
            })
            .unwrap_or(0);
        &self.shards[i]
    }

    /// Blocks cached now, over all shards (for tests and the bench).
    pub fn cached_blocks(&self) -> usize {
        self.shards
            .iter()
            .map(|s| loop {
                if let Some(n) =
                    s.try_with(|_, counts| counts.iter().map(|&c| c as usize).sum::<usize>())
                {
                    break n;
                }
                std::hint::spin_loop();
            })
            .sum()
    }
}

/// The size class of a layout, or `None` when the system allocator takes it.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() > MAX_SMALL || layout.align() > SMALL_ALIGN {
        return None;
    }
    let rounded = layout.size().max(1 << MIN_CLASS_SHIFT).next_power_of_two();
    Some((rounded.trailing_zeros() - MIN_CLASS_SHIFT) as usize)
}

fn class_size(class: usize) -> usize {
    1 << (class as u32 + MIN_CLASS_SHIFT)
}

fn class_layout(class: usize) -> Layout {
    // SAFETY: a power of two from 16 to 1024 with alignment 16 is a valid layout.
    unsafe { Layout::from_size_align_unchecked(class_size(class), SMALL_ALIGN) }
}

fn class_cap(class: usize) -> u16 {
    (CACHE_BYTES_PER_CLASS / class_size(class)) as u16
}

unsafe impl GlobalAlloc for ShardedHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            return unsafe { System.alloc(layout) };
        };
        let cached = self.shard().try_with(|heads, counts| {
            let block = heads[class];
            if !block.is_null() {
                // SAFETY: a listed block is ours and starts with its link.
                heads[class] = unsafe { (*block).next };
                counts[class] -= 1;
            }
            block
        });
        match cached {
            Some(block) if !block.is_null() => block.cast(),
            _ => unsafe { System.alloc(class_layout(class)) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class_of(layout).is_none() {
            // Large: the system can hand out fresh zero pages without writing them.
            return unsafe { System.alloc_zeroed(layout) };
        }
        let p = unsafe { self.alloc(layout) };
        if !p.is_null() {
            unsafe { ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            return unsafe { System.dealloc(p, layout) };
        };
        let block = p.cast::<Block>();
        let kept = self.shard().try_with(|heads, counts| {
            if counts[class] >= class_cap(class) {
                return false;
            }
            // SAFETY: the block is at least 16 bytes, 16-aligned, and no longer in use.
            unsafe { (*block).next = heads[class] };
            heads[class] = block;
            counts[class] += 1;
            true
        });
        if kept != Some(true) {
            unsafe { System.dealloc(p, class_layout(class)) };
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (layout): the caller guarantees `new_size` with this alignment is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            (None, None) => unsafe { System.realloc(p, layout, new_size) },
            (Some(a), Some(b)) if a == b => p,
            _ => {
                let q = unsafe { self.alloc(new_layout) };
                if !q.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                        self.dealloc(p, layout);
                    }
                }
                q
            }
        }
    }
}

impl Drop for ShardedHeap {
    /// Returns cached blocks to the system (a test's heap; the global one is
    /// never dropped).
    fn drop(&mut self) {
        for shard in &mut self.shards {
            let heads = shard.heads.get_mut();
            for (class, head) in heads.iter_mut().enumerate() {
                let mut block = std::mem::replace(head, ptr::null_mut());
                while !block.is_null() {
                    // SAFETY: listed blocks are ours, allocated with the class layout.
                    unsafe {
                        let next = (*block).next;
                        System.dealloc(block.cast(), class_layout(class));
                        block = next;
                    }
                }
            }
            *shard.counts.get_mut() = [0; CLASSES];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn size_classes_cover_up_to_one_kib_at_alignment_sixteen() {
        assert_eq!(class_of(layout(1, 1)), Some(0));
        assert_eq!(class_of(layout(16, 8)), Some(0));
        assert_eq!(class_of(layout(17, 8)), Some(1));
        assert_eq!(class_of(layout(1000, 16)), Some(6));
        assert_eq!(class_of(layout(1024, 1)), Some(6));
        assert_eq!(class_of(layout(1025, 1)), None);
        assert_eq!(class_of(layout(64, 32)), None);
        assert_eq!(class_size(6), MAX_SMALL);
        assert_eq!(class_cap(0), 256);
        assert_eq!(class_cap(6), 4);
    }

    #[test]
    fn a_freed_block_is_reused_by_the_next_allocation_of_its_class() {
        let heap = ShardedHeap::new();
        unsafe {
            let a = heap.alloc(layout(40, 8));
            heap.dealloc(a, layout(40, 8));
            assert_eq!(heap.cached_blocks(), 1);
            // 33..=64 bytes share a class.
            let b = heap.alloc(layout(64, 16));
            assert_eq!(a, b);
            assert_eq!(heap.cached_blocks(), 0);
            heap.dealloc(b, layout(64, 16));
        }
    }

    #[test]
    fn each_class_keeps_at_most_its_cap_and_frees_the_rest() {
        let heap = ShardedHeap::new();
        let l = layout(1024, 8);
        unsafe {
            let blocks: Vec<*mut u8> = (0..10).map(|_| heap.alloc(l)).collect();
            for &b in &blocks {
                heap.dealloc(b, l);
            }
        }
        assert_eq!(heap.cached_blocks(), class_cap(6) as usize);
    }

    #[test]
    fn large_and_over_aligned_blocks_bypass_the_cache() {
        let heap = ShardedHeap::new();
        unsafe {
            for l in [layout(4096, 8), layout(64, 64), layout(2000, 1)] {
                let p = heap.alloc(l);
                assert_eq!(p as usize % l.align(), 0);
                p.write_bytes(0xAB, l.size());
                heap.dealloc(p, l);
            }
        }
        assert_eq!(heap.cached_blocks(), 0);
    }

    #[test]
    fn zeroed_allocations_are_zero_even_from_a_dirty_cached_block() {
        let heap = ShardedHeap::new();
        unsafe {
            let p = heap.alloc(layout(100, 8));
            p.write_bytes(0xFF, 100);
            heap.dealloc(p, layout(100, 8));
            let q = heap.alloc_zeroed(layout(120, 8));
            assert_eq!(p, q);
            assert!(std::slice::from_raw_parts(q, 120).iter().all(|&b| b == 0));
            heap.dealloc(q, layout(120, 8));
        }
    }

    #[test]
    fn realloc_keeps_contents_within_a_class_across_classes_and_to_large() {
        let heap = ShardedHeap::new();
        unsafe {
            let mut size = 10;
            let p = heap.alloc(layout(size, 1));
            for i in 0..size {
                *p.add(i) = i as u8;
            }
            // Same class (10 → 16): the same block.
            let q = heap.realloc(p, layout(size, 1), 16);
            assert_eq!(p, q);
            size = 16;
            let mut cur = q;
            for new_size in [17, 300, 1024, 1025, 5000, 900, 8] {
                cur = heap.realloc(cur, layout(size, 1), new_size);
                let keep = size.min(new_size).min(10);
                for i in 0..keep {
                    assert_eq!(*cur.add(i), i as u8, "byte {i} after realloc to {new_size}");
                }
                size = new_size;
            }
            heap.dealloc(cur, layout(size, 1));
        }
    }

    /// Threads allocate, fill, reallocate, hand blocks to each other and free
    /// them, through one heap; every block keeps its own contents throughout.
    #[test]
    fn concurrent_use_never_hands_one_block_to_two_owners() {
        let heap = Arc::new(ShardedHeap::new());
        struct Owned(usize, usize, u8); // address, size, fill
        unsafe impl Send for Owned {}
        let (tx, rx) = std::sync::mpsc::channel::<Owned>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let threads: Vec<_> = (0..12u8)
            .map(|t| {
                let heap = heap.clone();
                let tx = tx.clone();
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let mut seed = 0x9E37_79B9u32 ^ (t as u32) << 8;
                    let mut next = move || {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        seed as usize
                    };
                    let mut mine: Vec<Owned> = Vec::new();
                    for round in 0..4000 {
                        let size = 1 + next() % 1500;
                        let fill = (next() % 251) as u8;
                        unsafe {
                            let p = heap.alloc(layout(size, 8));
                            assert!(!p.is_null());
                            p.write_bytes(fill, size);
                            mine.push(Owned(p as usize, size, fill));
                        }
                        if round % 3 == 0 {
                            if let Some(Owned(p, size, fill)) = mine.pop() {
                                let new_size = 1 + next() % 1500;
                                unsafe {
                                    let q = heap.realloc(p as *mut u8, layout(size, 8), new_size);
                                    let kept = std::slice::from_raw_parts(q, size.min(new_size));
                                    assert!(kept.iter().all(|&b| b == fill));
                                    q.write_bytes(fill, new_size);
                                    mine.push(Owned(q as usize, new_size, fill));
                                }
                            }
                        }
                        if round % 5 == 0 {
                            if let Some(o) = mine.pop() {
                                let _ = tx.send(o);
                            }
                        }
                        if mine.len() > 20 || round % 7 == 0 {
                            let o = if round % 2 == 0 {
                                rx.lock().unwrap().try_recv().ok()
                            } else {
                                None
                            };
                            if let Some(Owned(p, size, fill)) = o.or_else(|| mine.pop()) {
                                unsafe {
                                    let s = std::slice::from_raw_parts(p as *const u8, size);
                                    assert!(
                                        s.iter().all(|&b| b == fill),
                                        "a block changed under its owner"
                                    );
                                    heap.dealloc(p as *mut u8, layout(size, 8));
                                }
                            }
                        }
                    }
                    for Owned(p, size, fill) in mine {
                        unsafe {
                            let s = std::slice::from_raw_parts(p as *const u8, size);
                            assert!(s.iter().all(|&b| b == fill));
                            heap.dealloc(p as *mut u8, layout(size, 8));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(tx);
        for Owned(p, size, fill) in rx.lock().unwrap().try_iter() {
            unsafe {
                let s = std::slice::from_raw_parts(p as *const u8, size);
                assert!(s.iter().all(|&b| b == fill));
                heap.dealloc(p as *mut u8, layout(size, 8));
            }
        }
        assert!(heap.cached_blocks() <= SHARDS * CLASSES * 256);
    }
}
