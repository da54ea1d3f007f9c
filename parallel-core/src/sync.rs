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
pub(crate) use busy::Backoff;

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

/// Waiting by looking again, on a machine that may be busy.
///
/// A thread that waits for another by looking again yields its CPU between looks, since the
/// other may need it. On an idle machine a yield returns in about a microsecond; on a busy one
/// it hands the CPU to another process for that process's whole time slice (milliseconds), where
/// a sleep (a futex, a condition variable) is ended by the other's wake-up at once: a process
/// `map` beside two busy loops ran at 2.4 k tasks/s while its threads yielded up to 16 and 32
/// times per wait, 150 times slower than beside none. So a yield that took long marks the
/// thread's machine busy, and the thread's next [`BUSY_WAITS`] waits sleep without looking again.
#[cfg(not(all(test, loom)))]
pub(crate) mod busy {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    /// How long one yield may take before the machine counts as busy.
    const SLOW_YIELD: Duration = Duration::from_micros(50);

    /// How many waits a thread that found the machine busy sleeps at once in, before it tries
    /// looking again.
    const BUSY_WAITS: u32 = 256;

    thread_local! {
        /// Waits left that this thread sleeps in at once.
        static BUSY_LEFT: Cell<u32> = const { Cell::new(0) };
    }

    /// Whether a wait may look again before it sleeps: not while this thread recently found the
    /// machine busy. Counts the wait.
    pub(crate) fn may_spin() -> bool {
        BUSY_LEFT.with(|left| match left.get() {
            0 => true,
            n => {
                left.set(n - 1);
                false
            }
        })
    }

    /// Yields the CPU; `false` if that took long (the machine is busy): the wait should sleep
    /// now, and this thread's next waits too.
    pub(crate) fn yield_now() -> bool {
        let began = Instant::now();
        std::thread::yield_now();
        if began.elapsed() < SLOW_YIELD {
            return true;
        }
        BUSY_LEFT.with(|left| left.set(BUSY_WAITS));
        false
    }

    /// `crossbeam_utils::Backoff`'s spins and yields, which gives up at the first slow yield,
    /// and does not look again at all while the machine is busy.
    pub(crate) struct Backoff {
        step: Cell<u32>,
        is_given_up: Cell<bool>,
    }

    impl Backoff {
        /// Spins 2, 4, … 64 times, then yields up to 4 times.
        const SPIN_LIMIT: u32 = 6;
        const YIELD_LIMIT: u32 = 10;

        pub(crate) fn new() -> Self {
            Backoff { step: Cell::new(0), is_given_up: Cell::new(!may_spin()) }
        }

        /// Whether the wait should sleep now.
        pub(crate) fn is_completed(&self) -> bool {
            self.is_given_up.get() || self.step.get() > Self::YIELD_LIMIT
        }

        /// Waits a little longer each time.
        pub(crate) fn snooze(&self) {
            let step = self.step.get();
            if step <= Self::SPIN_LIMIT {
                for _ in 0..1u32 << step {
                    std::hint::spin_loop();
                }
            } else if !yield_now() {
                self.is_given_up.set(true);
            }
            self.step.set(step + 1);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_backoff_spins_then_yields_then_gives_up() {
            let backoff = Backoff::new();
            let mut looks = 0;
            while !backoff.is_completed() {
                backoff.snooze();
                looks += 1;
            }
            // 7 spins and 4 yields; fewer only if a yield was slow, which marks the machine busy.
            let is_marked_busy = BUSY_LEFT.with(Cell::get) > 0;
            assert!(looks == 11 || (is_marked_busy && (8..11).contains(&looks)), "{looks}");
        }

        #[test]
        fn a_slow_yield_makes_the_next_waits_sleep_at_once() {
            // A busy machine, as a slow yield leaves it.
            BUSY_LEFT.with(|left| left.set(2));
            assert!(Backoff::new().is_completed());
            assert!(!may_spin());
            assert!(may_spin(), "the busy waits are counted down");
            assert!(!Backoff::new().is_completed());
        }
    }
}
