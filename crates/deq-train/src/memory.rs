//! Allocation for training binaries and heap accounting for benchmarks.
//!
//! - [`fast_allocator!`](crate::fast_allocator): jemalloc as the global allocator, configured
//!   so that a training step's large tensors reuse mapped memory. glibc serves allocations
//!   above its mmap threshold with fresh mappings, so every activation of every step is
//!   page-faulted and zeroed again (a tenth to a third of a step's time in the profiles of
//!   deq-inr and deq-lm). Options: no separate eagerly-purged arena for large allocations,
//!   freed pages kept for 30 s, transparent huge pages for the heap.
//! - [`CountingAlloc`] / [`CountingJemalloc`]: a counting global allocator (live and peak
//!   bytes) over the system allocator or over jemalloc, and the process's peak resident set
//!   size. A binary opts in with
//!   `#[global_allocator] static A: deq_train::memory::CountingAlloc = deq_train::memory::CountingAlloc;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes and their peak (candle's CPU tensors live on the
/// heap, so this sees every tensor).
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAlloc;

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

/// jemalloc, counting live bytes and their peak like [`CountingAlloc`] (with
/// [`fast_allocator!`](crate::fast_allocator)'s options when the binary exports them).
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingJemalloc;

unsafe impl GlobalAlloc for CountingJemalloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = tikv_jemallocator::Jemalloc.alloc(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        tikv_jemallocator::Jemalloc.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[doc(hidden)]
pub use tikv_jemallocator;

/// jemalloc's options for training binaries (see the module's documentation).
pub const JEMALLOC_OPTIONS: &str = "oversize_threshold:0,dirty_decay_ms:30000,muzzy_decay_ms:30000,thp:always";

/// Makes jemalloc the binary's global allocator with [`JEMALLOC_OPTIONS`]; `counting` uses
/// [`CountingJemalloc`] instead (for benchmarks that report peak heap). Use once, in a
/// binary's root module.
#[macro_export]
macro_rules! fast_allocator {
    () => {
        #[global_allocator]
        static ALLOC: $crate::memory::tikv_jemallocator::Jemalloc = $crate::memory::tikv_jemallocator::Jemalloc;
        $crate::fast_allocator!(@options);
    };
    (counting) => {
        #[global_allocator]
        static ALLOC: $crate::memory::CountingJemalloc = $crate::memory::CountingJemalloc;
        $crate::fast_allocator!(@options);
    };
    (@options) => {
        /// jemalloc's options (read by jemalloc at start-up).
        #[export_name = "_rjem_malloc_conf"]
        pub static MALLOC_CONF: &u8 = &b"oversize_threshold:0,dirty_decay_ms:30000,muzzy_decay_ms:30000,thp:always\0"[0];
    };
}

/// Live heap bytes (0 unless [`CountingAlloc`] or [`CountingJemalloc`] is the global allocator).
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Runs `f` and returns its result with the peak of live heap bytes above the level at entry.
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

fn status_kb(key: &str) -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse::<usize>().ok().map(|kb| kb * 1024)
}

/// Current resident set size in bytes (`VmRSS`; `None` without `/proc`).
pub fn current_rss_bytes() -> Option<usize> {
    status_kb("VmRSS:")
}

/// Peak resident set size of this process in bytes (`VmHWM` of `/proc/self/status`; `None`
/// where that file does not exist).
pub fn peak_rss_bytes() -> Option<usize> {
    status_kb("VmHWM:")
}
