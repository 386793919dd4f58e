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

use std::alloc::{GlobalAlloc, Layout};
use std::cell::{Cell, UnsafeCell};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Where blocks come from. Tests swap in an allocator that checks every
/// block goes back with exactly the layout it was allocated with (`System`
/// ignores the layout on free, so a mismatch would go unnoticed).
#[cfg(not(test))]
const BACKEND: std::alloc::System = std::alloc::System;
#[cfg(test)]
const BACKEND: layout_check::Checked = layout_check::Checked;

/// Size classes: 16, 32, …, 1024 bytes.
const CLASSES: usize = 7;
const MIN_CLASS_SHIFT: u32 = 4;
const MAX_SMALL: usize = 16 << (CLASSES - 1);
/// Alignment of every small block: what malloc gives on 64-bit targets (on
/// armv7 a class block from the system goes through `posix_memalign`).
const SMALL_ALIGN: usize = 16;
/// Bytes a shard keeps per class: 256 blocks of 16 bytes, 4 of 1 KiB.
const CACHE_BYTES_PER_CLASS: usize = 4096;
const SHARDS: usize = 8;
// `counts` are u16: a class's cap (up to 4096 / 16 = 256 blocks) must fit.
const _: () = assert!(CACHE_BYTES_PER_CLASS / (1 << MIN_CLASS_SHIFT) <= u16::MAX as usize);

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
        // A plain load first: a held lock is not written to (and its cache
        // line not taken from the holder) by a thread that will go elsewhere.
        if self.locked.load(Ordering::Relaxed) || self.locked.swap(true, Ordering::Acquire) {
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

    /// Blocks cached now, over all shards.
    #[cfg(test)]
    fn cached_blocks(&self) -> usize {
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
            return unsafe { BACKEND.alloc(layout) };
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
            _ => unsafe { BACKEND.alloc(class_layout(class)) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class_of(layout).is_none() {
            // Large: the system can hand out fresh zero pages without writing them.
            return unsafe { BACKEND.alloc_zeroed(layout) };
        }
        let p = unsafe { self.alloc(layout) };
        if !p.is_null() {
            unsafe { ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            return unsafe { BACKEND.dealloc(p, layout) };
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
            unsafe { BACKEND.dealloc(p, class_layout(class)) };
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (layout): the caller guarantees `new_size` with this alignment is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            (None, None) => unsafe { BACKEND.realloc(p, layout, new_size) },
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
                        BACKEND.dealloc(block.cast(), class_layout(class));
                        block = next;
                    }
                }
            }
            *shard.counts.get_mut() = [0; CLASSES];
        }
    }
}

#[cfg(test)]
mod layout_check {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// `System`, remembering the layout of each live block and panicking if
    /// one is freed or reallocated with another.
    pub struct Checked;

    static LIVE: Mutex<Option<HashMap<usize, Layout>>> = Mutex::new(None);

    /// Set in a forked child, which may inherit `LIVE` locked by a thread
    /// that does not exist there: it then skips the bookkeeping.
    pub static IN_FORK_CHILD: AtomicBool = AtomicBool::new(false);

    fn with<R>(f: impl FnOnce(&mut HashMap<usize, Layout>) -> R) -> Option<R> {
        let mut g = if IN_FORK_CHILD.load(Ordering::Relaxed) {
            LIVE.try_lock().ok()?
        } else {
            LIVE.lock().unwrap_or_else(|e| e.into_inner())
        };
        Some(f(g.get_or_insert_with(HashMap::new)))
    }

    fn freeing(p: *mut u8, l: Layout) {
        match with(|m| m.remove(&(p as usize))) {
            Some(Some(was)) => {
                assert_eq!(
                    was, l,
                    "block {p:?} allocated as {was:?} but freed as {l:?}"
                )
            }
            Some(None) => panic!("block {p:?} ({l:?}) was never allocated from the backend"),
            None => {} // a fork child that could not take the lock
        }
    }

    unsafe impl GlobalAlloc for Checked {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(l) };
            with(|m| m.insert(p as usize, l));
            p
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            let p = unsafe { System.alloc_zeroed(l) };
            with(|m| m.insert(p as usize, l));
            p
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            freeing(p, l);
            unsafe { System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            freeing(p, l);
            let q = unsafe { System.realloc(p, l, n) };
            with(|m| m.insert(q as usize, Layout::from_size_align(n, l.align()).unwrap()));
            q
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
        let cap: usize = (0..CLASSES).map(|c| class_cap(c) as usize).sum();
        assert!(heap.cached_blocks() <= SHARDS * cap);
    }
}

/// Adversarial tests (review of step 16): alignment of every small layout,
/// the realloc matrix, zeroing from dirty caches, contended and forked shards,
/// thread exit, and a shard shared by many threads.
#[cfg(test)]
mod adversarial_tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    extern "C" {
        // glibc and musl both have it; the lib tests run on `System`.
        fn malloc_usable_size(p: *mut u8) -> usize;
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    fn byte(i: usize, salt: u8) -> u8 {
        (i as u8).wrapping_mul(31) ^ salt
    }

    unsafe fn fill(p: *mut u8, n: usize, salt: u8) {
        for i in 0..n {
            unsafe { *p.add(i) = byte(i, salt) };
        }
    }

    unsafe fn intact(p: *const u8, n: usize, salt: u8) -> bool {
        (0..n).all(|i| unsafe { *p.add(i) } == byte(i, salt))
    }

    /// A block that will later be freed as class `c` must really be a class-`c`
    /// block from the system (else it is freed with a layout it was not
    /// allocated with).
    unsafe fn assert_backing(p: *mut u8, l: Layout) {
        assert_eq!(p as usize % l.align(), 0, "misaligned for {l:?}");
        let usable = unsafe { malloc_usable_size(p) };
        assert!(usable >= l.size(), "{usable} usable bytes for {l:?}");
        if let Some(c) = class_of(l) {
            assert!(
                usable >= class_size(c),
                "{usable} usable bytes for class {c} ({l:?})"
            );
        }
    }

    const ALIGNS: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, 4096];

    #[test]
    fn every_small_layout_is_aligned_and_backed_by_a_whole_class_block() {
        let heap = ShardedHeap::new();
        for _pass in 0..2 {
            // The second pass takes its blocks from the caches the first filled.
            for align in ALIGNS {
                for size in (1..=1100).chain([2048, 4096, 65536]) {
                    let l = layout(size, align);
                    unsafe {
                        let p = heap.alloc(l);
                        assert!(!p.is_null());
                        assert_backing(p, l);
                        p.write_bytes(0x5A, size);
                        heap.dealloc(p, l);
                    }
                }
            }
        }
        assert!(heap.cached_blocks() <= (0..CLASSES).map(|c| class_cap(c) as usize).sum());
    }

    /// Fills every class's cache (on this thread's shard) with blocks
    /// written all over with `byte`.
    fn fill_caches_with_dirty_blocks(heap: &ShardedHeap, byte: u8) {
        for c in 0..CLASSES {
            let ps: Vec<_> = (0..class_cap(c))
                .map(|_| unsafe { heap.alloc(class_layout(c)) })
                .collect();
            for p in ps {
                unsafe {
                    p.write_bytes(byte, class_size(c));
                    heap.dealloc(p, class_layout(c));
                }
            }
        }
    }

    #[test]
    fn realloc_matrix_keeps_alignment_contents_and_class_backing() {
        let sizes = [
            1, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100, 128, 129, 512, 513, 1000, 1023, 1024, 1025,
            2000, 4096, 70_000,
        ];
        let heap = ShardedHeap::new();
        for warm in [false, true] {
            if warm {
                fill_caches_with_dirty_blocks(&heap, 0xEE);
            }
            for align in ALIGNS {
                for &old in &sizes {
                    for &new in &sizes {
                        let (lo, ln) = (layout(old, align), layout(new, align));
                        let salt = (old ^ new ^ align) as u8;
                        unsafe {
                            let p = heap.alloc(lo);
                            assert_backing(p, lo);
                            fill(p, old, salt);
                            let q = heap.realloc(p, lo, new);
                            assert!(!q.is_null());
                            assert_backing(q, ln);
                            assert!(intact(q, old.min(new), salt), "{lo:?} -> {new}");
                            if class_of(lo).is_some() && class_of(lo) == class_of(ln) {
                                assert_eq!(p, q, "same class must stay in place");
                            }
                            q.write_bytes(0x11, new);
                            // A second realloc straight back.
                            let r = heap.realloc(q, ln, old);
                            assert_backing(r, lo);
                            assert!(std::slice::from_raw_parts(r, old.min(new))
                                .iter()
                                .all(|&b| b == 0x11));
                            heap.dealloc(r, lo);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn alloc_zeroed_is_zero_for_every_size_from_dirty_caches() {
        let heap = ShardedHeap::new();
        let dirty = |heap: &ShardedHeap| fill_caches_with_dirty_blocks(heap, 0xFF);
        for align in [1, 8, 16, 32] {
            dirty(&heap);
            for size in (1..=1100).chain([4096, 100_000]) {
                let l = layout(size, align);
                unsafe {
                    let p = heap.alloc_zeroed(l);
                    assert_backing(p, l);
                    assert!(
                        std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0),
                        "{l:?}"
                    );
                    p.write_bytes(0xFF, size);
                    heap.dealloc(p, l);
                }
            }
        }
    }

    #[test]
    fn every_class_caches_exactly_its_cap_and_hands_them_back_lifo() {
        let heap = ShardedHeap::new();
        let mut expect = 0;
        for c in 0..CLASSES {
            let l = layout(class_size(c) - 1, 8);
            let ps: Vec<_> = (0..class_cap(c) as usize + 3)
                .map(|_| unsafe { heap.alloc(l) })
                .collect();
            for &p in &ps {
                unsafe { heap.dealloc(p, l) };
            }
            expect += class_cap(c) as usize;
            assert_eq!(heap.cached_blocks(), expect, "class {c}");
            // The last `cap` freed are the cached ones, newest first.
            let again: Vec<_> = (0..class_cap(c))
                .map(|_| unsafe { heap.alloc(l) })
                .collect();
            let cached: Vec<_> = ps[..class_cap(c) as usize].iter().rev().copied().collect();
            assert_eq!(again, cached, "class {c}");
            for p in again {
                unsafe { heap.dealloc(p, l) };
            }
        }
    }

    /// A shard whose lock is held (by another thread, or by a thread that no
    /// longer exists after a fork) is bypassed, never waited for.
    #[test]
    fn a_held_shard_is_bypassed_and_nothing_is_cached_through_it() {
        let heap = ShardedHeap::new();
        let l = layout(48, 8);
        let cached = unsafe { heap.alloc(l) };
        unsafe { heap.dealloc(cached, l) };
        assert_eq!(heap.cached_blocks(), 1);
        for s in &heap.shards {
            s.locked.store(true, Ordering::Relaxed);
        }
        unsafe {
            let mut live = Vec::new();
            for i in 0..2000usize {
                let l = layout(1 + i % 1100, 8);
                let p = heap.alloc(l);
                assert_ne!(p, cached, "took a block from a held shard");
                live.push((p, l));
                if i % 3 == 0 {
                    let (p, l) = live.swap_remove(i % live.len());
                    let q = heap.realloc(p, l, 1 + (i * 7) % 1100);
                    live.push((q, layout(1 + (i * 7) % 1100, 8)));
                }
            }
            for (p, l) in live {
                heap.dealloc(p, l);
            }
        }
        for s in &heap.shards {
            s.locked.store(false, Ordering::Relaxed);
        }
        assert_eq!(heap.cached_blocks(), 1);
    }

    static FORK_HEAP: ShardedHeap = ShardedHeap::new();

    /// `Command` with `pre_exec` forks: the child inherits shard locks held by
    /// threads that do not exist in it, and must still allocate.
    #[test]
    fn a_forked_child_allocates_while_the_parent_holds_every_shard() {
        use std::os::unix::process::CommandExt;
        // Another thread hammering the heap at the moment of the forks, too.
        let stop = Arc::new(AtomicBool::new(false));
        let hammer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    unsafe {
                        let p = FORK_HEAP.alloc(layout(24, 8));
                        FORK_HEAP.dealloc(p, layout(24, 8));
                    }
                }
            })
        };
        for round in 0..20 {
            let hold = round % 2 == 0;
            if hold {
                for s in &FORK_HEAP.shards {
                    while s.locked.swap(true, Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                }
            }
            let mut cmd = std::process::Command::new("true");
            unsafe {
                cmd.pre_exec(|| {
                    super::layout_check::IN_FORK_CHILD.store(true, Ordering::Relaxed);
                    for size in [8, 100, 1000, 5000] {
                        let p = FORK_HEAP.alloc(layout(size, 8));
                        if p.is_null() {
                            return Err(std::io::Error::other("null"));
                        }
                        p.write_bytes(1, size);
                        FORK_HEAP.dealloc(p, layout(size, 8));
                    }
                    Ok(())
                });
            }
            let mut child = cmd.spawn().expect("spawn");
            if hold {
                for s in &FORK_HEAP.shards {
                    s.locked.store(false, Ordering::Release);
                }
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                if let Some(st) = child.try_wait().unwrap() {
                    assert!(st.success(), "child failed: {st:?}");
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("forked child hung in the allocator");
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        stop.store(true, Ordering::Relaxed);
        hammer.join().unwrap();
    }

    static EXIT_HEAP: ShardedHeap = ShardedHeap::new();

    struct FreeOnExit(Vec<(usize, Layout)>);
    impl Drop for FreeOnExit {
        fn drop(&mut self) {
            for &(p, l) in &self.0 {
                unsafe {
                    // Allocating and freeing during TLS teardown.
                    let q = EXIT_HEAP.alloc(l);
                    EXIT_HEAP.dealloc(q, l);
                    EXIT_HEAP.dealloc(p as *mut u8, l);
                }
            }
        }
    }
    thread_local! {
        static ON_EXIT: std::cell::RefCell<FreeOnExit> = const { std::cell::RefCell::new(FreeOnExit(Vec::new())) };
    }

    #[test]
    fn short_lived_threads_allocate_and_free_during_thread_exit() {
        for wave in 0..8 {
            let ts: Vec<_> = (0..32)
                .map(|t| {
                    std::thread::spawn(move || {
                        for i in 0..50usize {
                            let l = layout(1 + (i * 37 + t * 11 + wave) % 1300, 8);
                            let p = unsafe { EXIT_HEAP.alloc(l) };
                            unsafe { p.write_bytes(7, l.size()) };
                            ON_EXIT.with(|v| v.borrow_mut().0.push((p as usize, l)));
                        }
                    })
                })
                .collect();
            for t in ts {
                t.join().unwrap();
            }
        }
        let max: usize = (0..CLASSES).map(|c| class_cap(c) as usize).sum::<usize>() * SHARDS;
        assert!(EXIT_HEAP.cached_blocks() <= max);
    }

    /// Many threads forced onto ONE shard: the try-lock alone keeps owners apart.
    #[test]
    fn threads_sharing_one_shard_never_share_a_block() {
        let heap = Arc::new(ShardedHeap::new());
        let ts: Vec<_> = (0..8u8)
            .map(|t| {
                let heap = heap.clone();
                std::thread::spawn(move || {
                    SHARD.with(|s| s.set(3));
                    let mut mine: Vec<(*mut u8, Layout, u8)> = Vec::new();
                    for i in 0..100_000usize {
                        let l = layout(if i % 2 == 0 { 16 } else { 64 }, 8);
                        let tag = t.wrapping_mul(29).wrapping_add(i as u8);
                        unsafe {
                            let p = heap.alloc(l);
                            p.write_bytes(tag, l.size());
                            mine.push((p, l, tag));
                            if mine.len() > 4 {
                                let (p, l, tag) = mine.swap_remove(i % mine.len());
                                assert!(
                                    std::slice::from_raw_parts(p, l.size())
                                        .iter()
                                        .all(|&b| b == tag),
                                    "a block changed under its owner"
                                );
                                heap.dealloc(p, l);
                            }
                        }
                    }
                    for (p, l, _) in mine {
                        unsafe { heap.dealloc(p, l) };
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        assert!(heap.cached_blocks() <= (0..CLASSES).map(|c| class_cap(c) as usize).sum());
    }
}
