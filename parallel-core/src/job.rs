//! [`Job`]: the shared state of one submitted task, and the [`Ledger`] of a pool's live jobs.
//!
//! A job moves `Queued(task) -> Running -> Done(result) -> Taken`, or straight from `Queued` or
//! `Running` to `Done` when it is cancelled. Whoever moves it to `Done` first decides the result:
//! that is how every handle resolves exactly once, whatever races between a worker finishing, a
//! caller cancelling and the pool being killed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Waker;
use std::time::Instant;

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
}

/// One submitted task: its state, who waits for it, and the pool it belongs to.
pub(crate) struct Job<T: Task> {
    id: u64,
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
            slot: Mutex::new(Slot { state: State::Queued(task), waker: None }),
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
            slot: Mutex::new(Slot { state: State::Done(outcome), waker: None }),
            done: Condvar::new(),
            ledger: Arc::new(Ledger::new(0)),
        })
    }

    fn into_slot(self) -> Slot<T> {
        self.slot.into_inner().unwrap_or_else(PoisonError::into_inner)
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
        let waker = {
            let mut slot = self.lock();
            if matches!(slot.state, State::Done(_) | State::Taken) {
                return false;
            }
            slot.state = State::Done(outcome);
            slot.waker.take()
        };
        self.done.notify_all();
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
        matches!(self.lock().state, State::Done(_) | State::Taken)
    }

    /// Blocks until the job is resolved or `deadline` passes, then takes the result if any.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Option<Outcome<T>> {
        let mut slot = self.lock();
        loop {
            if let State::Done(_) = slot.state {
                return match std::mem::replace(&mut slot.state, State::Taken) {
                    State::Done(outcome) => Some(outcome),
                    _ => unreachable!("the state was just matched as Done"),
                };
            }
            slot = match deadline {
                None => self.done.wait(slot).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.done.wait_timeout(slot, left).unwrap_or_else(PoisonError::into_inner).0
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

/// The jobs a pool has accepted and not yet resolved.
pub(crate) struct Ledger {
    pool_id: u64,
    live: Mutex<Live>,
    drained: Condvar,
}

struct Live {
    jobs: HashMap<u64, Weak<dyn Abort>>,
    is_closed: bool,
}

impl Ledger {
    pub(crate) fn new(pool_id: u64) -> Self {
        Ledger {
            pool_id,
            live: Mutex::new(Live { jobs: HashMap::new(), is_closed: false }),
            drained: Condvar::new(),
        }
    }

    /// The id of the pool this ledger belongs to.
    pub(crate) fn pool_id(&self) -> u64 {
        self.pool_id
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters a job; refused once the ledger is closed.
    fn enter(&self, id: u64, job: Weak<dyn Abort>) -> bool {
        let mut live = self.lock();
        if live.is_closed {
            return false;
        }
        live.jobs.insert(id, job);
        true
    }

    fn leave(&self, id: u64) {
        let mut live = self.lock();
        if live.jobs.remove(&id).is_some() && live.jobs.is_empty() {
            self.drained.notify_all();
        }
    }

    /// How many jobs are accepted and not resolved.
    pub(crate) fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Refuses new jobs from now on.
    pub(crate) fn close(&self) {
        self.lock().is_closed = true;
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().is_closed
    }

    /// Blocks until every accepted job is resolved.
    pub(crate) fn wait_drained(&self) {
        let mut live = self.lock();
        while !live.jobs.is_empty() {
            live = self.drained.wait(live).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Cancels every live job; returns how many this call resolved.
    pub(crate) fn abort_all(&self) -> usize {
        let jobs = std::mem::take(&mut self.lock().jobs);
        self.drained.notify_all();
        let count = jobs.len();
        for job in jobs.into_values().filter_map(|job| job.upgrade()) {
            job.abort();
        }
        count
    }
}
