//! Test builds only: a global allocator that remembers the largest single allocation made by
//! the current thread while a probe is open, so tests can prove that untrusted input never makes
//! the parent allocate more than the frame limit, and how many allocations it made, so tests can
//! prove what a task costs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub(crate) struct Probe;

thread_local! {
    /// The largest allocation since the probe opened, or `None` when no probe is open.
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
    /// The allocations since the probe opened, or `None` when no probe is open.
    static COUNT: Cell<Option<usize>> = const { Cell::new(None) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown find the slot gone, and are not probed.
    let _ = LARGEST.try_with(|largest| {
        if let Some(current) = largest.get() {
            largest.set(Some(current.max(size)));
        }
    });
    let _ = COUNT.try_with(|count| {
        if let Some(current) = count.get() {
            count.set(Some(current + 1));
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the probe only reads sizes.
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc` or `realloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
#[cfg_attr(not(process_backend), allow(dead_code))] // its callers test the process backend
pub(crate) fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|largest| largest.set(Some(0)));
    let result = f();
    let largest = LARGEST.with(|largest| largest.take()).unwrap_or(0);
    (result, largest)
}

/// Runs `f` and returns its result with how many allocations (and reallocations) it made on this
/// thread.
#[cfg_attr(loom, allow(dead_code))] // its callers are not loom models
pub(crate) fn count_allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    COUNT.with(|count| count.set(Some(0)));
    let result = f();
    let count = COUNT.with(|count| count.take()).unwrap_or(0);
    (result, count)
}
