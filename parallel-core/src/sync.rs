//! The synchronization primitives of the concurrency protocols: `std`'s, or `loom`'s when the
//! crate's tests are built with `RUSTFLAGS="--cfg loom"` to model-check the protocols.
//!
//! A job's states (`job.rs`), the ledger's close and drain (`ledger.rs`), the claims
//! (`process/claim.rs`) and the rings' control words (`process/ring.rs`) take their mutexes,
//! condition variables and atomics from here, so that the same code runs in the pool and under
//! loom, which runs each model (a `loom` test module beside the protocol) in every interleaving
//! its threads allow and fails on a lost wake-up (a deadlock), a data race or a broken assertion.
//! `process/README.md` says which protocols are checked and how to run the models.
//!
//! What stays `std` even under loom, because it is no part of a protocol: reference counts
//! (`Arc`/`Weak`: loom's `Arc` has neither `Weak` nor coercion to `dyn`) and the ledger's
//! statistics (relaxed counters that decide nothing). Under loom the process backend itself is not built (`build.rs`);
//! its shared memory is modelled by [`SharedMemory`] on the heap.

#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Condvar, Mutex, MutexGuard,
};

#[cfg(not(all(test, loom)))]
pub(crate) use crossbeam_utils::Backoff;

// The claims and the ring's words, of the process backend.
#[cfg(process_backend)]
pub(crate) use std::sync::atomic::AtomicU64;

#[cfg(all(test, loom))]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Condvar, Mutex, MutexGuard,
};

#[cfg(all(test, loom))]
pub(crate) use model::Backoff;

// What the protocols of the process backend's shared memory use (see `lib.rs`).
#[cfg(all(test, loom, unix, feature = "process"))]
pub(crate) use {loom::sync::atomic::AtomicU64, model::SharedMemory};

/// A new job id, unique in the process.
#[cfg(not(all(test, loom)))]
pub(crate) fn next_job_id() -> u64 {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A new job id, unique in one execution of a model, and the same in every execution: loom
/// replays executions, which must be alike up to its choices (the id picks the ledger's shard).
#[cfg(all(test, loom))]
pub(crate) fn next_job_id() -> u64 {
    loom::lazy_static! {
        static ref NEXT_ID: loom::sync::atomic::AtomicU64 = loom::sync::atomic::AtomicU64::new(1);
    }
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Between a `SeqCst` store of one word and a `SeqCst` load of another (a store-buffering
/// handshake, such as the reader's sleep in `process/ring.rs`): nothing outside loom, where the
/// single total order of `SeqCst` operations already orders the two. Loom models `SeqCst` loads
/// and stores as `AcqRel` (its README, "Unsupported features"), under which both loads of such
/// a handshake may miss the other side's store: a false alarm. It models a `SeqCst` fence
/// exactly, and a fence between the store and the load forbids the same outcomes as the total
/// order does, so the models check the handshake as the program runs it.
#[cfg(process_backend)]
#[inline(always)]
pub(crate) fn seq_cst_handshake() {}

/// See the other `seq_cst_handshake`.
#[cfg(all(test, loom, unix, feature = "process"))]
pub(crate) fn seq_cst_handshake() {
    loom::sync::atomic::fence(Ordering::SeqCst);
}

/// Stand-ins for what loom cannot run as it is: a spinning wait and memory shared with another
/// process.
#[cfg(all(test, loom))]
mod model {
    use std::cell::Cell;

    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{AtomicU64, Ordering};
    use loom::sync::{Arc, Condvar, Mutex};

    /// `crossbeam_utils::Backoff` with one look before giving up: spinning only saves time, and
    /// every look is one more point where loom interleaves the other threads.
    pub(crate) struct Backoff {
        has_looked: Cell<bool>,
    }

    impl Backoff {
        pub(crate) fn new() -> Self {
            Backoff { has_looked: Cell::new(false) }
        }

        pub(crate) fn is_completed(&self) -> bool {
            self.has_looked.get()
        }

        pub(crate) fn snooze(&self) {
            self.has_looked.set(true);
            loom::thread::yield_now();
        }
    }

    /// `sys::SharedMemory` on the heap, for the models of the reply ring: the words are loom's
    /// atomics, and each data byte is a loom cell, so that loom fails a model in which one side
    /// copies bytes the other side owns. Both halves of a ring hold a clone.
    #[derive(Clone)]
    #[cfg_attr(not(all(unix, feature = "process")), allow(dead_code))]
    pub(crate) struct SharedMemory(Arc<Heap>);

    struct Heap {
        words: Box<[AtomicU64]>,
        bytes: Box<[UnsafeCell<u8>]>,
        /// The kernel's futex queue, for every word at once: a wait checks the word under the
        /// lock, a wake takes the lock, so a wake after the word changed cannot pass a waiter
        /// between its check and its sleep (as the kernel's hash-bucket lock ensures). It holds
        /// how many wakes each word had, so that a wake ends only the waits on its own word (a
        /// waiter woken for another word sleeps on): no wake-up is modelled that the kernel
        /// would not give.
        futex: Mutex<Vec<u64>>,
        woken: Condvar,
    }

    #[cfg_attr(not(all(unix, feature = "process")), allow(dead_code))]
    impl SharedMemory {
        /// Zeroed memory of `words` words and `bytes` bytes of data.
        pub(crate) fn new(words: usize, bytes: usize) -> Self {
            SharedMemory(Arc::new(Heap {
                words: (0..words).map(|_| AtomicU64::new(0)).collect(),
                bytes: (0..bytes).map(|_| UnsafeCell::new(0)).collect(),
                futex: Mutex::new(vec![0; words]),
                woken: Condvar::new(),
            }))
        }

        /// `sys::SharedMemory::wait`: blocks while word `index` holds `expected`, until a wake.
        /// Time limits are not modelled: a wait that nothing ends is a deadlock, which fails the
        /// model. Returns `false` (not timed out).
        pub(crate) fn wait(
            &self,
            index: usize,
            expected: u32,
            _timeout: Option<std::time::Duration>,
        ) -> bool {
            let mut queue = self.0.futex.lock().unwrap();
            if self.0.words[index].load(Ordering::SeqCst) == u64::from(expected) {
                // One wake-up of this word is all a futex wait gets; the caller looks again, as
                // in the pool.
                let wakes = queue[index];
                while queue[index] == wakes {
                    queue = self.0.woken.wait(queue).unwrap();
                }
            }
            false
        }

        /// `sys::SharedMemory::wake`: wakes every waiter.
        pub(crate) fn wake(&self, index: usize) {
            self.0.futex.lock().unwrap()[index] += 1;
            self.0.woken.notify_all();
        }

        pub(crate) fn words(&self) -> &[AtomicU64] {
            &self.0.words
        }

        #[allow(unsafe_code)]
        pub(crate) fn copy_in(&self, offset: usize, from: &[u8]) {
            for (cell, byte) in self.0.bytes[offset..offset + from.len()].iter().zip(from) {
                // SAFETY: loom checks that no other thread accesses the cell meanwhile (it fails
                // the model if one does); the pointer is to a live `u8`.
                cell.with_mut(|at| unsafe { *at = *byte });
            }
        }

        #[allow(unsafe_code)]
        pub(crate) fn copy_out(&self, offset: usize, to: &mut [u8]) {
            for (cell, byte) in self.0.bytes[offset..offset + to.len()].iter().zip(to) {
                // SAFETY: as in `copy_in`: loom checks the access, the pointer is to a live `u8`.
                *byte = cell.with(|at| unsafe { *at });
            }
        }
    }
}
