//! A global allocator that measures, per thread, how far one call grows the heap.
//!
//! It forwards to the system allocator and keeps two per-thread counters: bytes allocated and
//! not yet freed by this thread, and the highest that count reached. [`peak_growth`] reads the
//! peak above the starting point of one call: what the call needed at most, all at once.
#![allow(unsafe_code)] // a GlobalAlloc impl cannot be written without it

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Tracking;

thread_local! {
    /// Bytes this thread allocated and has not freed (frees of other threads' memory make it
    /// negative; only differences within one call are read).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grow(by: isize) {
    // `try_with`: during thread teardown the counters may be gone; then nothing is counted.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + by;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every method forwards to `System` with the caller's own arguments; the counters are
// const-initialised thread locals without destructors, so touching them never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        grow(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grow(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the most heap it held at once beyond what the thread
/// held when it started (bytes).
pub fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    let outer_peak = PEAK.with(|p| p.replace(start));
    let out = f();
    let peak = PEAK.with(|p| p.replace(outer_peak.max(p.get())));
    (out, (peak - start).max(0) as usize)
}

#[test]
fn measures_what_a_call_holds_at_once() {
    let (_, held) = peak_growth(|| {
        let a = vec![0u8; 10_000];
        drop(a);
        let b = vec![0u8; 4_000];
        b.len()
    });
    assert!((10_000..11_000).contains(&held), "{held}");
    let (_, nothing) = peak_growth(|| 1 + 1);
    assert_eq!(nothing, 0);
}
