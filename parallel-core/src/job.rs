//! [`Job`]: the shared state of one submitted task, and the [`Ledger`] of a pool's live jobs.
//!
//! A job moves `Queued(task) -> Running -> Done(result) -> Taken`, or straight from `Queued` or
//! `Running` to `Done` when it is cancelled. Whoever moves it to `Done` first decides the result:
//! that is how every handle resolves exactly once, whatever races between a worker finishing, a
//! caller cancelling and the pool being killed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Waker;
use std::time::Instant;

use crossbeam_utils::Backoff;

use crate::{Task, TaskError};

/// What a finished task produced.
pub(crate) type Outcome<T> = Result<<T as Task>::Output, TaskError<<T as Task>::Error>>;

enum State<T: Task> {
    Queued(T),
    Running,
    Done(Outcome<T>),
    Taken,
}

struct Slot<T: Task> {
    state: State<T>,
    waker: Option<Waker>,
    /// Whether a thread sleeps on `Job::done`; notifying a condition variable costs a system
    /// call even with nobody waiting, so it is skipped then.
    has_sleeper: bool,
}

/// One submitted task: its state, who waits for it, and the pool it belongs to.
pub(crate) struct Job<T: Task> {
    id: u64,
    /// Set once the slot holds `Done`: lets a waiter spin on it without taking the lock.
    is_done: AtomicBool,
    slot: Mutex<Slot<T>>,
    done: Condvar,
    ledger: Arc<Ledger>,
}

impl<T: Task> Job<T> {
    /// A queued job, entered in `ledger` (unless the ledger is closed, then it is `None`).
    pub(crate) fn enqueue(task: T, ledger: &Arc<Ledger>) -> Result<Arc<Self>, T> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let job = Arc::new(Job {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            is_done: AtomicBool::new(false),
            slot: Mutex::new(Slot {
                state: State::Queued(task),
                waker: None,
                has_sleeper: false,
            }),
            done: Condvar::new(),
            ledger: Arc::clone(ledger),
        });
        let weak: Weak<dyn Abort> = Arc::downgrade(&job) as Weak<dyn Abort>;
        if ledger.enter(job.id, weak) {
            Ok(job)
        } else {
            match Arc::try_unwrap(job).ok().map(|job| job.into_slot().state) {
                Some(State::Queued(task)) => Err(task),
                // Only this function has seen the job, and nothing moved it out of `Queued`.
                _ => unreachable!("a job refused by the ledger is still queued and unshared"),
            }
        }
    }

    /// A job that is already resolved, entered in no ledger.
    pub(crate) fn resolved(outcome: Outcome<T>) -> Arc<Self> {
        Arc::new(Job {
            id: 0,
            is_done: AtomicBool::new(true),
            slot: Mutex::new(Slot {
                state: State::Done(outcome),
                waker: None,
                has_sleeper: false,
            }),
            done: Condvar::new(),
            ledger: Arc::new(Ledger::new(0)),
        })
    }

    fn into_slot(self) -> Slot<T> {
        self.slot
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, Slot<T>> {
        // A poisoned slot only means a waker panicked while we held the lock; the state is whole.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The id of the pool the job was submitted to.
    pub(crate) fn pool_id(&self) -> u64 {
        self.ledger.pool_id()
    }

    /// Claims the task for running: `Queued -> Running`. `None` if it was cancelled or claimed.
    pub(crate) fn start(&self) -> Option<T> {
        let mut slot = self.lock();
        match std::mem::replace(&mut slot.state, State::Running) {
            State::Queued(task) => Some(task),
            other => {
                slot.state = other;
                None
            }
        }
    }

    /// Whether the task has not been claimed by a worker yet.
    pub(crate) fn is_queued(&self) -> bool {
        matches!(self.lock().state, State::Queued(_))
    }

    /// Resolves the job unless it is resolved already; returns whether this call resolved it.
    pub(crate) fn complete(&self, outcome: Outcome<T>) -> bool {
        let (waker, has_sleeper) = {
            let mut slot = self.lock();
            if matches!(slot.state, State::Done(_) | State::Taken) {
                return false;
            }
            slot.state = State::Done(outcome);
            self.is_done.store(true, Ordering::Release);
            (slot.waker.take(), slot.has_sleeper)
        };
        if has_sleeper {
            self.done.notify_all();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
        self.ledger.leave(self.id);
        true
    }

    /// Resolves the job as cancelled if nothing resolved it yet; the task is dropped if queued.
    pub(crate) fn cancel(&self) -> bool {
        self.complete(Err(TaskError::Cancelled))
    }

    /// Whether the job is resolved.
    pub(crate) fn is_finished(&self) -> bool {
        self.is_done.load(Ordering::Acquire)
    }

    /// Blocks until the job is resolved or `deadline` passes, then takes the result if any.
    ///
    /// Spins briefly before sleeping: most tasks are short, and waking a thread that sleeps on
    /// the condition variable costs several microseconds, more than a short task itself.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Option<Outcome<T>> {
        let backoff = Backoff::new();
        while !self.is_done.load(Ordering::Acquire) && !backoff.is_completed() {
            backoff.snooze();
        }
        let mut slot = self.lock();
        loop {
            if let State::Done(_) = slot.state {
                return match std::mem::replace(&mut slot.state, State::Taken) {
                    State::Done(outcome) => Some(outcome),
                    _ => unreachable!("the state was just matched as Done"),
                };
            }
            slot.has_sleeper = true;
            slot = match deadline {
                None => self.done.wait(slot).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.done
                        .wait_timeout(slot, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Takes the result if resolved; otherwise remembers `waker` to wake on resolution.
    pub(crate) fn poll(&self, waker: &Waker) -> Option<Outcome<T>> {
        let mut slot = self.lock();
        match std::mem::replace(&mut slot.state, State::Taken) {
            State::Done(outcome) => Some(outcome),
            State::Taken => panic!("TaskHandle polled after it returned its result"),
            other => {
                slot.state = other;
                match &mut slot.waker {
                    Some(old) if old.will_wake(waker) => {}
                    stored => *stored = Some(waker.clone()),
                }
                None
            }
        }
    }
}

/// A job seen without its task type: what the pool needs to cancel it.
pub(crate) trait Abort: Send + Sync {
    fn abort(&self);
}

impl<T: Task> Abort for Job<T> {
    fn abort(&self) {
        self.cancel();
    }
}

/// How many shards the ledger splits its jobs into, so that submitters and workers rarely
/// contend for one lock.
const SHARDS: usize = 16;

/// The jobs a pool has accepted and not yet resolved: what `kill` cancels and `shutdown` waits
/// for.
pub(crate) struct Ledger {
    pool_id: u64,
    shards: [Mutex<HashMap<u64, Weak<dyn Abort>>>; SHARDS],
    live: AtomicUsize,
    is_closed: AtomicBool,
    /// Guards the wait for `live` to reach zero; see [`Ledger::leave`].
    drained_lock: Mutex<()>,
    drained: Condvar,
}

impl Ledger {
    pub(crate) fn new(pool_id: u64) -> Self {
        Ledger {
            pool_id,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            live: AtomicUsize::new(0),
            is_closed: AtomicBool::new(false),
            drained_lock: Mutex::new(()),
            drained: Condvar::new(),
        }
    }

    /// The id of the pool this ledger belongs to.
    pub(crate) fn pool_id(&self) -> u64 {
        self.pool_id
    }

    fn shard(&self, id: u64) -> MutexGuard<'_, HashMap<u64, Weak<dyn Abort>>> {
        // Ids are consecutive, so the low bits spread them evenly.
        let shard = &self.shards[(id % SHARDS as u64) as usize];
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters a job; refused once the ledger is closed.
    fn enter(&self, id: u64, job: Weak<dyn Abort>) -> bool {
        let mut shard = self.shard(id);
        // Checked under the shard lock: `abort_all` closes first, then drains every shard, so a
        // job is either refused here or found there.
        if self.is_closed.load(Ordering::SeqCst) {
            return false;
        }
        shard.insert(id, job);
        self.live.fetch_add(1, Ordering::SeqCst);
        true
    }

    fn leave(&self, id: u64) {
        if self.shard(id).remove(&id).is_some() && self.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Taking the lock orders this notification after a waiter's check of `live`.
            let _guard = self
                .drained_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.drained.notify_all();
        }
    }

    /// How many jobs are accepted and not resolved.
    pub(crate) fn len(&self) -> usize {
        self.live.load(Ordering::SeqCst)
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
        let mut guard = self
            .drained_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while self.live.load(Ordering::SeqCst) != 0 {
            guard = self
                .drained
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Closes the ledger and cancels every live job.
    pub(crate) fn abort_all(&self) {
        self.close();
        for id in 0..SHARDS as u64 {
            let jobs = std::mem::take(&mut *self.shard(id));
            // Resolving a job calls `leave`, which finds it gone; settle the count here.
            if !jobs.is_empty() && self.live.fetch_sub(jobs.len(), Ordering::SeqCst) == jobs.len() {
                let _guard = self
                    .drained_lock
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                self.drained.notify_all();
            }
            for job in jobs.into_values().filter_map(|job| job.upgrade()) {
                job.abort();
            }
        }
    }
}
