//! Heap accounting for benchmarks: a counting global allocator (live and peak bytes) and the
//! process's peak resident set size. A binary opts in with
//! `#[global_allocator] static A: deq_train::memory::CountingAlloc = deq_train::memory::CountingAlloc;`.

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

/// Live heap bytes (0 unless [`CountingAlloc`] is the global allocator).
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
