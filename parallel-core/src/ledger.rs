//! The [`Ledger`] of a pool's live jobs: what `kill` cancels, what `shutdown` waits for, and the
//! counts behind [`PoolStats`](crate::PoolStats).

// The counts are statistics, no part of the close-and-drain protocol: `std`'s even under loom.
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{PoisonError, Weak};

use crossbeam_utils::CachePadded;
use slab::Slab;

use crate::sync::{AtomicBool, Condvar, Mutex, MutexGuard, Ordering};
use crate::TaskError;

/// A job seen without its task type: what the pool needs to cancel it.
pub(crate) trait Abort: Send + Sync {
    fn abort(&self);
}

/// How many shards the ledger splits its jobs into, so that submitters and workers rarely
/// contend for one lock.
const SHARDS: usize = 16;

/// What a pool has done that is rare, for [`PoolStats`](crate::PoolStats). The per-job counts
/// are kept by each shard (see [`Tally`]).
#[derive(Default)]
pub(crate) struct Counts {
    /// Workers renewed or replaced: a thread worker's fresh Environment, a new worker process.
    pub(crate) restarts: AtomicU64,
    /// Attempts that ended in a retry rather than in their job's result.
    pub(crate) retries: AtomicU64,
}

/// What the jobs of one shard have done: every job's start and end update these, so each shard
/// keeps its own, beside its lock (whose cache line the job's end takes anyway), rather than
/// workers contending for one line of the pool's.
#[derive(Default)]
struct Tally {
    /// Jobs claimed by a worker and not resolved.
    running: AtomicUsize,
    /// Jobs resolved with their output.
    completed: AtomicU64,
    /// Jobs resolved with an error other than a cancellation (failed, panicked, died, ...).
    failed: AtomicU64,
    /// Jobs resolved as cancelled: a cancel, an expired `join_timeout` (which cancels its job),
    /// a kill, a dropped `Map`.
    cancelled: AtomicU64,
}

/// The counts of a whole ledger, summed over its shards (see [`Ledger::totals`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Jobs accepted and not resolved.
    pub(crate) live: usize,
    /// Jobs claimed by a worker and not resolved.
    pub(crate) running: usize,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
}

/// One shard of a ledger: live jobs by key.
type Shard = Slab<Weak<dyn Abort>>;

/// A shard and the counts of its jobs.
struct Cell {
    jobs: Mutex<Shard>,
    tally: Tally,
}

/// The jobs a pool has accepted and not yet resolved: what `kill` cancels and `shutdown` waits
/// for.
pub(crate) struct Ledger {
    pool_id: u64,
    /// Padded so that shards used by different threads share no cache line.
    shards: [CachePadded<Cell>; SHARDS],
    is_closed: AtomicBool,
    /// Set by `abort_all`: no job of this ledger starts any more.
    is_halted: AtomicBool,
    /// Set while `wait_drained` waits, so that only then does a leaving job take
    /// `drained_lock` to wake it.
    is_draining: AtomicBool,
    drained_lock: Mutex<()>,
    drained: Condvar,
    pub(crate) counts: Counts,
}

impl Ledger {
    pub(crate) fn new(pool_id: u64) -> Self {
        Ledger {
            pool_id,
            shards: std::array::from_fn(|_| {
                CachePadded::new(Cell { jobs: Mutex::new(Slab::new()), tally: Tally::default() })
            }),
            is_closed: AtomicBool::new(false),
            is_halted: AtomicBool::new(false),
            is_draining: AtomicBool::new(false),
            drained_lock: Mutex::new(()),
            drained: Condvar::new(),
            counts: Counts::default(),
        }
    }

    /// The id of the pool this ledger belongs to.
    pub(crate) fn pool_id(&self) -> u64 {
        self.pool_id
    }

    fn cell(&self, id: u64) -> &Cell {
        // Ids are consecutive, so the low bits spread them evenly.
        &self.shards[(id % SHARDS as u64) as usize]
    }

    fn shard(&self, id: u64) -> MutexGuard<'_, Shard> {
        self.cell(id).jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts job `id` as claimed by a worker, until it resolves or waits for a retry.
    pub(crate) fn claimed(&self, id: u64) {
        self.cell(id).tally.running.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts job `id`, claimed, as no longer running: its attempt ended in a retry.
    pub(crate) fn unclaimed(&self, id: u64) {
        let counts = &self.cell(id).tally;
        counts.running.fetch_sub(1, Ordering::Relaxed);
        self.counts.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts job `id` as resolved with `outcome` (claimed by a worker if `was_running`).
    pub(crate) fn finish<O, E>(
        &self,
        id: u64,
        was_running: bool,
        outcome: &Result<O, TaskError<E>>,
    ) {
        let tally = &self.cell(id).tally;
        if was_running {
            tally.running.fetch_sub(1, Ordering::Relaxed);
        }
        let counter = match outcome {
            Ok(_) => &tally.completed,
            Err(TaskError::Cancelled) => &tally.cancelled,
            Err(_) => &tally.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts of every shard, summed; a shard's live jobs under its lock.
    pub(crate) fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for (id, cell) in (0..SHARDS as u64).zip(&self.shards) {
            totals.live += self.shard(id).len();
            let tally = &cell.tally;
            totals.running += tally.running.load(Ordering::Relaxed);
            totals.completed += tally.completed.load(Ordering::Relaxed);
            totals.failed += tally.failed.load(Ordering::Relaxed);
            totals.cancelled += tally.cancelled.load(Ordering::Relaxed);
        }
        totals
    }

    /// Enters job `id`, returning its key in the shard; refused once the ledger is closed.
    pub(crate) fn enter(&self, id: u64, job: Weak<dyn Abort>) -> Option<usize> {
        let mut shard = self.shard(id);
        // Checked under the shard lock: `abort_all` closes first, then drains every shard, so a
        // job is either refused here or found there.
        if self.is_closed.load(Ordering::SeqCst) {
            return None;
        }
        Some(shard.insert(job))
    }

    /// Removes job `id`, entered under `key`, unless `abort_all` took it already.
    pub(crate) fn leave(&self, id: u64, key: usize) {
        // A key is reused only after its job left. `abort_all` empties the shards, but it closes
        // the ledger first, so no job enters after it: a key it took finds nothing here.
        let is_removed = self.shard(id).try_remove(key).is_some();
        if is_removed && self.is_draining.load(Ordering::SeqCst) {
            self.wake_drain_waiters();
        }
    }

    fn wake_drain_waiters(&self) {
        // Taking the lock orders this wake-up after a waiter's check of the shards.
        let _guard = self.drained_lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.drained.notify_all();
    }

    /// How many jobs are accepted and not resolved.
    pub(crate) fn len(&self) -> usize {
        (0..SHARDS as u64).map(|id| self.shard(id).len()).sum()
    }

    /// Refuses new jobs from now on.
    pub(crate) fn close(&self) {
        self.is_closed.store(true, Ordering::SeqCst);
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::SeqCst)
    }

    /// Blocks until every accepted job is resolved.
    pub(crate) fn wait_drained(&self) {
        let mut guard = self.drained_lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.is_draining.store(true, Ordering::SeqCst);
        while self.len() != 0 {
            guard = self.drained.wait(guard).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Whether [`abort_all`](Self::abort_all) was called.
    pub(crate) fn is_halted(&self) -> bool {
        self.is_halted.load(Ordering::SeqCst)
    }

    /// Closes the ledger, halts it (no job starts any more) and cancels every live job.
    pub(crate) fn abort_all(&self) {
        self.is_halted.store(true, Ordering::SeqCst);
        self.close();
        for id in 0..SHARDS as u64 {
            let jobs: Vec<Weak<dyn Abort>> = self.shard(id).drain().collect();
            // Resolving a job makes it leave, and it finds itself gone already.
            for job in jobs.iter().filter_map(Weak::upgrade) {
                job.abort();
            }
        }
        if self.is_draining.load(Ordering::SeqCst) {
            self.wake_drain_waiters();
        }
    }
}

/// Models of the ledger's close and drain, checked by loom in every interleaving (see
/// `crate::sync`).
#[cfg(all(test, loom))]
mod loom {
    use std::sync::Arc;

    use ::loom::thread;

    use super::*;
    use crate::job::Job;

    use crate::task::Unit;

    /// A job submitted while the pool is killed: it is refused at `enter`, or `abort_all` finds
    /// it and cancels it; never accepted and forgotten.
    #[test]
    fn loom_a_job_entering_during_a_kill_is_refused_or_cancelled() {
        ::loom::model(|| {
            let ledger = Arc::new(Ledger::new(1));
            let killer = {
                let ledger = Arc::clone(&ledger);
                thread::spawn(move || ledger.abort_all())
            };
            let entered = Job::enqueue(Unit, &ledger);
            killer.join().unwrap();
            if let Ok(job) = entered {
                assert_eq!(job.wait(None), Some(Err(TaskError::Cancelled)), "found by abort_all");
            }
            assert!(ledger.is_closed() && ledger.is_halted());
            assert_eq!(ledger.len(), 0);
        });
    }

    /// `shutdown`'s wait for the last job, while a worker completes it: the waiter is woken
    /// (a waiter left asleep is a deadlock, which fails the model).
    #[test]
    fn loom_wait_drained_is_woken_by_the_last_job_leaving() {
        ::loom::model(|| {
            let ledger = Arc::new(Ledger::new(1));
            let job = Job::enqueue(Unit, &ledger).ok().expect("the ledger is open");
            let worker = thread::spawn(move || {
                if job.start().is_some() {
                    job.complete(Ok(1));
                }
            });
            ledger.close();
            ledger.wait_drained();
            assert_eq!(ledger.len(), 0);
            worker.join().unwrap();
        });
    }

    /// `kill` during `shutdown`'s wait: `abort_all` empties the ledger and wakes the waiter, while
    /// the job's worker may complete it. Three threads and sixteen shards: every interleaving
    /// with up to two preemptions (in a second; three take half a minute).
    #[test]
    fn loom_wait_drained_is_woken_by_a_kill() {
        let mut model = ::loom::model::Builder::new();
        model.preemption_bound = Some(2);
        model.check(|| {
            let ledger = Arc::new(Ledger::new(1));
            let job = Job::enqueue(Unit, &ledger).ok().expect("the ledger is open");
            let killer = {
                let ledger = Arc::clone(&ledger);
                thread::spawn(move || ledger.abort_all())
            };
            let worker = thread::spawn(move || {
                if job.start().is_some() {
                    job.complete(Ok(1));
                }
            });
            ledger.close();
            ledger.wait_drained();
            assert_eq!(ledger.len(), 0);
            killer.join().unwrap();
            worker.join().unwrap();
        });
    }
}
