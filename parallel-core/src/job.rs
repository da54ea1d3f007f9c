//! [`Job`]: the shared state of one submitted task.
//!
//! A job moves `Queued(task) -> Running -> Done(result) -> Taken`, or straight from `Queued` or
//! `Running` to `Done` when it is cancelled. Whoever moves it to `Done` first decides the result:
//! that is how every handle resolves exactly once, whatever races between a worker finishing, a
//! caller cancelling and the pool being killed.
//!
//! A task whose [`Policy`](crate::Policy) asks for retries goes round instead: an attempt that did
//! not return (or failed, with `retry_failed`) moves `Running -> Waiting`, and the timer moves it
//! back to `Queued(copy)` after the backoff and resubmits it. Each claim starts a numbered
//! attempt, and a worker reports its outcome with that number: the outcome of an attempt that is
//! over (timed out, abandoned) finds another number and is dropped, so an attempt ends once, and
//! the job resolves once, with its last attempt's outcome. A timeout is the timer's deadline for
//! the running attempt: it ends the attempt as `TimedOut` and stops it where the backend can.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, OnceLock, PoisonError, Weak};
use std::task::Waker;
use std::time::Instant;

use crate::engine::Engine;
use crate::ledger::{Abort, Ledger};
use crate::progress::{self, Feed, Lender, Progress};
use crate::sync::{AtomicBool, AtomicUsize, Backoff, Condvar, Mutex, MutexGuard, Ordering};
use crate::{policy, timer, Task, TaskError};

/// What a finished task produced.
pub(crate) type Outcome<T> = Result<<T as Task>::Output, TaskError<<T as Task>::Error>>;

enum State<T: Task> {
    Queued(T),
    Running,
    /// Between two attempts, for the backoff; the timer queues the next one.
    Waiting,
    Done(Outcome<T>),
    Taken,
}

struct Inner<T: Task> {
    state: State<T>,
    waker: Option<Waker>,
    /// Whether a thread sleeps on `Job::done`; notifying a condition variable costs a system
    /// call even with nobody waiting, so it is skipped then.
    has_sleeper: bool,
    /// How to stop the task while it runs, where the backend can (a worker process to kill).
    stop: Option<Arc<dyn Stop>>,
    /// The attempts started so far: the running one, or the last one, is this number.
    attempt: u32,
    /// The outcome of the last attempt while the job waits for the next one, which it resolves
    /// with if the next one cannot be run.
    last: Option<Outcome<T>>,
    /// The timer entry pending for the job: the running attempt's deadline or the backoff's end.
    timer: Option<timer::Key>,
    /// The progress messages its attempts send, for the handle's readers; made when a reader or
    /// a sender first asks for it (most tasks never send one). Each attempt opens it when it
    /// starts and ends it when it ends (under this lock, with the state); the resolution closes
    /// it.
    feed: Option<Arc<Feed<T::Progress>>>,
}

impl<T: Task> Inner<T> {
    fn new(state: State<T>) -> Self {
        Inner {
            state,
            waker: None,
            has_sleeper: false,
            stop: None,
            attempt: 0,
            last: None,
            timer: None,
            feed: None,
        }
    }
}

/// What a job with retries needs to run again: the task as bytes and where to resubmit it.
pub(crate) struct Retry {
    pub(crate) copy: Vec<u8>,
    /// The pool's engine; gone once the pool is dropped, and then no retry runs.
    pub(crate) engine: Weak<Engine>,
}

/// Stops a task that a worker holds, for backends that can: one not started never starts, one
/// running is killed with its worker process (or, with [`Halt::IfLong`], only if it is long).
pub(crate) trait Stop: Send + Sync {
    fn stop(&self, halt: Halt);

    /// Takes the task back if its worker has not started it (it then never will): `true` if
    /// taken, `false` if it runs, ran, or this backend cannot tell.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))] // a cluster slot's hand-back only
    fn withdraw(&self) -> bool {
        false
    }

    /// Waits for the running attempt on the caller's thread, where the backend can do it with
    /// fewer wake-ups than by being woken (a process worker's replies read by the caller itself),
    /// until `is_over` says the attempt ended, `deadline` passes, or the backend cannot go on;
    /// the caller then waits as usual. Returns at once where the backend cannot.
    fn lead(&self, _is_over: &dyn Fn() -> bool, _deadline: Option<Instant>) {}
}

/// Runs `f`, which stops several tasks at once (an `AsCompleted` cancelled, a `map` dropped), so
/// that backends whose stops are messages send them together: on the cluster, one cancel message
/// for all of them, which a serving process applies at once (a slot freed by the first never takes
/// one of the others in between). Elsewhere it only runs `f`.
pub(crate) fn stops_together<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "cluster")]
    return crate::cluster::cancels_together(f);
    #[cfg(not(feature = "cluster"))]
    f()
}

/// How far stopping a running task goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Halt {
    /// A cancel, a timeout, a pool being killed: the running task is killed.
    Kill,
    /// Nobody wants the result any more (a dropped `Map`): a short task is left to finish, which
    /// costs less than a new worker and keeps the worker's Environment; a long one is killed.
    IfLong,
}

/// How [`Job::wait_for_turn`] returned.
pub(crate) enum Wait<T: Task> {
    /// The job's result, taken.
    Done(Outcome<T>),
    /// The job was queued again, for a retry.
    Requeued,
    /// The deadline passed.
    Expired,
}

/// One submitted task: its state, who waits for it, and the pool it belongs to.
pub(crate) struct Job<T: Task> {
    /// Picks the ledger shard.
    id: u64,
    /// The job's key in its ledger shard, set once when the ledger accepts it.
    key: AtomicUsize,
    /// Set once the slot holds `Done`: lets a waiter spin on it without taking the lock.
    is_done: AtomicBool,
    /// The attempt started last, readable without the lock (see [`is_attempt_over`]).
    ///
    /// [`is_attempt_over`]: Self::is_attempt_over
    attempt: AtomicU32,
    slot: Mutex<Inner<T>>,
    done: Condvar,
    ledger: Arc<Ledger>,
    /// Set before the job is handed to its engine when the task's policy has retries.
    retry: OnceLock<Retry>,
}

impl<T: Task> Job<T> {
    /// A queued job, entered in `ledger` (unless the ledger is closed, then it is `None`).
    pub(crate) fn enqueue(task: T, ledger: &Arc<Ledger>) -> Result<Arc<Self>, T> {
        // Built in place (`Arc::new` builds the job on the stack, then copies it).
        let job = Arc::new_cyclic(|_| Job {
            id: crate::sync::next_job_id(),
            key: AtomicUsize::new(usize::MAX),
            is_done: AtomicBool::new(false),
            attempt: AtomicU32::new(0),
            slot: Mutex::new(Inner::new(State::Queued(task))),
            done: Condvar::new(),
            ledger: Arc::clone(ledger),
            retry: OnceLock::new(),
        });
        let weak: Weak<dyn Abort> = Arc::downgrade(&job) as Weak<dyn Abort>;
        if let Some(key) = ledger.enter(job.id, weak) {
            // Published to workers with the job itself, through the backend's queue.
            job.key.store(key, Ordering::Relaxed);
            Ok(job)
        } else {
            match Arc::try_unwrap(job).ok().map(|job| job.into_inner().state) {
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
            key: AtomicUsize::new(usize::MAX),
            is_done: AtomicBool::new(true),
            attempt: AtomicU32::new(0),
            slot: Mutex::new(Inner::new(State::Done(outcome))),
            done: Condvar::new(),
            ledger: Arc::new(Ledger::new(0)),
            retry: OnceLock::new(),
        })
    }

    /// Lets the job run again under its task's retry policy; before it is handed to the engine.
    pub(crate) fn allow_retries(&self, retry: Retry) {
        // Set once, by the submit that created the job.
        let _ = self.retry.set(retry);
    }

    fn into_inner(self) -> Inner<T> {
        self.slot.into_inner().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // A poisoned slot only means a waker panicked while we held the lock; the state is whole.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The job's id, unique in the process.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The job's progress messages, made on the first call: it takes the messages of the
    /// attempt that runs now, or is closed if the job is resolved.
    pub(crate) fn feed(&self) -> Arc<Feed<T::Progress>> {
        let mut slot = self.lock();
        let live = if matches!(slot.state, State::Running) { slot.attempt } else { 0 };
        let is_closed = matches!(slot.state, State::Done(_) | State::Taken);
        Arc::clone(slot.feed.get_or_insert_with(|| Arc::new(Feed::new(live, is_closed))))
    }

    /// Runs `f`, the task's run of attempt `attempt`, with the attempt's progress sender lent
    /// to it (see [`progress::scope_job`]).
    pub(crate) fn with_sender<R>(self: &Arc<Self>, attempt: u32, f: impl FnOnce() -> R) -> R {
        // A task that cannot send needs no sender, and its run no reference to the job.
        let lender =
            (!progress::is_silent::<T::Progress>()).then(|| Arc::clone(self) as Arc<dyn Lender>);
        progress::scope_job::<T::Progress, R>(lender, attempt, f)
    }

    /// The id of the pool the job was submitted to.
    pub(crate) fn pool_id(&self) -> u64 {
        self.ledger.pool_id()
    }

    /// Claims the task for running: `Queued -> Running`. `None` if it was cancelled or claimed.
    #[cfg(test)]
    pub(crate) fn start(self: &Arc<Self>) -> Option<T> {
        self.start_attempt(None).map(|(task, _)| task)
    }

    /// Claims the task for its next attempt: `Queued -> Running`, with the attempt's number (1
    /// for the first) to report its outcome with; a cancellation while it runs, or its timeout,
    /// calls `stop`. `None` if it was cancelled or claimed.
    pub(crate) fn start_attempt(self: &Arc<Self>, stop: Option<Arc<dyn Stop>>) -> Option<(T, u32)> {
        self.claim(stop, true)
    }

    /// Claims the task like [`start_attempt`](Self::start_attempt), for a backend whose workers
    /// keep the attempt's time limit themselves (a cluster slot: the task may wait in a queue
    /// far away before its clock starts).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn start_attempt_untimed(self: &Arc<Self>, stop: Arc<dyn Stop>) -> Option<(T, u32)> {
        self.claim(Some(stop), false)
    }

    fn claim(self: &Arc<Self>, stop: Option<Arc<dyn Stop>>, is_timed: bool) -> Option<(T, u32)> {
        // A pool being killed starts nothing more, even a job its abort has not reached yet.
        if self.ledger.is_halted() {
            self.cancel();
            return None;
        }
        let mut slot = self.lock();
        let task = match std::mem::replace(&mut slot.state, State::Running) {
            State::Queued(task) => task,
            other => {
                slot.state = other;
                return None;
            }
        };
        slot.stop = stop;
        slot.attempt += 1;
        let attempt = slot.attempt;
        self.attempt.store(attempt, Ordering::Release);
        if let Some(feed) = &slot.feed {
            feed.open_attempt(attempt);
        }
        self.ledger.claimed(self.id);
        if let Some(timeout) = T::POLICY.timeout().filter(|_| is_timed) {
            let me = Arc::downgrade(self);
            let expire = Box::new(move || {
                if let Some(job) = me.upgrade() {
                    job.expire(attempt);
                }
            });
            match Instant::now().checked_add(timeout).map(|at| timer::schedule(at, expire)) {
                Some(Ok(key)) => slot.timer = Some(key),
                // A timeout beyond the clock's range never expires.
                None => {}
                Some(Err(_)) => {
                    tracing::warn!(
                        task = T::NAME,
                        "no timer thread: the attempt runs without its timeout"
                    )
                }
            }
        }
        Some((task, attempt))
    }

    /// Replaces the stop of attempt `attempt`, when it moves to another worker before it started;
    /// `false` if that attempt is no longer running (cancelled or timed out meanwhile).
    #[cfg_attr(not(process_backend), allow(dead_code))] // the process backend's
    pub(crate) fn restop(&self, attempt: u32, stop: Arc<dyn Stop>) -> bool {
        if self.ledger.is_halted() {
            self.cancel();
            return false;
        }
        let mut slot = self.lock();
        let is_running = matches!(slot.state, State::Running) && slot.attempt == attempt;
        if is_running {
            slot.stop = Some(stop);
        }
        is_running
    }

    /// Whether attempt `attempt` has ended: the job is resolved, or went on to another attempt.
    pub(crate) fn is_attempt_over(&self, attempt: u32) -> bool {
        self.is_finished() || self.attempt.load(Ordering::Acquire) != attempt
    }

    /// Whether the task has not been claimed by a worker yet.
    pub(crate) fn is_queued(&self) -> bool {
        matches!(self.lock().state, State::Queued(_))
    }

    /// Resolves the job unless it is resolved already; returns whether this call resolved it.
    /// For an outcome that did not come from an attempt (the pool is closed, no worker starts):
    /// it is never retried.
    pub(crate) fn complete(&self, outcome: Outcome<T>) -> bool {
        self.resolve(outcome, None)
    }

    /// Ends attempt `attempt` with `outcome`: resolves the job, or, when the task's policy says
    /// so, waits for the backoff and runs it again. `false` if that attempt had ended already
    /// (timed out, cancelled) and `outcome` is dropped.
    pub(crate) fn finish_attempt(self: &Arc<Self>, attempt: u32, outcome: Outcome<T>) -> bool {
        let slot = self.lock();
        if !matches!(slot.state, State::Running) || slot.attempt != attempt {
            return false;
        }
        self.end_attempt(slot, outcome);
        true
    }

    /// The timer's deadline for attempt `attempt`: if it still runs, it ends as `TimedOut` and is
    /// stopped (the process backend kills its worker; a thread is abandoned).
    fn expire(self: &Arc<Self>, attempt: u32) {
        let mut slot = self.lock();
        if !matches!(slot.state, State::Running) || slot.attempt != attempt {
            return;
        }
        // This very entry is running: nothing to cancel.
        slot.timer = None;
        let stop = slot.stop.take();
        tracing::debug!(task = T::NAME, id = self.id, attempt, "attempt timed out");
        self.end_attempt(slot, Err(TaskError::TimedOut));
        if let Some(stop) = stop {
            stop.stop(Halt::Kill);
        }
    }

    /// Ends the running attempt, under the lock: a retry if the policy allows one, else the
    /// job's result.
    fn end_attempt(self: &Arc<Self>, mut slot: MutexGuard<'_, Inner<T>>, outcome: Outcome<T>) {
        if let Some(key) = slot.timer.take() {
            timer::cancel(key);
        }
        if !self.is_retried(slot.attempt, &outcome) {
            self.settle(slot, outcome, None);
            return;
        }
        let attempt = slot.attempt;
        let wait = T::POLICY.backoff_before(attempt);
        let me = Arc::downgrade(self);
        let retry = Box::new(move || {
            if let Some(job) = me.upgrade() {
                job.retry(attempt);
            }
        });
        match Instant::now().checked_add(wait).map(|at| timer::schedule(at, retry)) {
            Some(Ok(key)) => {
                if let Some(feed) = &slot.feed {
                    feed.end_attempt();
                }
                slot.timer = Some(key);
                slot.state = State::Waiting;
                slot.stop = None;
                slot.last = Some(outcome);
                self.ledger.unclaimed(self.id);
                tracing::debug!(task = T::NAME, id = self.id, attempt, ?wait, "attempt to retry");
            }
            _ => self.settle(slot, outcome, None),
        }
    }

    /// Whether attempt `attempt`, which ended with `outcome`, runs again.
    fn is_retried(&self, attempt: u32, outcome: &Outcome<T>) -> bool {
        let policy = T::POLICY;
        let is_retryable = match outcome {
            Err(
                TaskError::Panicked { .. } | TaskError::WorkerDied { .. } | TaskError::TimedOut,
            ) => true,
            Err(TaskError::Failed(_)) => policy.retries_failed(),
            _ => false,
        };
        is_retryable
            && attempt <= policy.retries()
            && self.retry.get().is_some()
            && !self.ledger.is_halted()
    }

    /// The timer, once the backoff after attempt `attempt` is over: queues the next attempt and
    /// hands it to the engine, or resolves the job with the last outcome if it cannot run again
    /// (the pool was dropped, the copy does not deserialize).
    fn retry(self: Arc<Self>, attempt: u32) {
        let mut slot = self.lock();
        if !matches!(slot.state, State::Waiting) || slot.attempt != attempt {
            return;
        }
        slot.timer = None;
        let engine = self.retry.get().and_then(|retry| retry.engine.upgrade());
        let task = self.retry.get().and_then(|retry| {
            // A user's `Deserialize` may panic; the job must resolve all the same.
            match catch_unwind(AssertUnwindSafe(|| policy::from_copy::<T>(&retry.copy))) {
                Ok(Ok(task)) => Some(task),
                Ok(Err(message)) => {
                    tracing::warn!(task = T::NAME, %message, "the task's copy does not deserialize");
                    None
                }
                Err(_) => None,
            }
        });
        let (Some(engine), Some(task)) = (engine, task) else {
            let last = slot.last.take();
            if let Some(last) = last {
                self.settle(slot, last, None);
            }
            return;
        };
        slot.state = State::Queued(task);
        // A waiter that may run it in place looks again (see `wait_for_turn`).
        let (has_sleeper, waker) = (slot.has_sleeper, slot.waker.take());
        drop(slot);
        if has_sleeper {
            self.done.notify_all();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
        if !engine.submit(Arc::clone(&self)) {
            let mut slot = self.lock();
            // Unless a thread of the pool ran it in place meanwhile (see `Engine::help`).
            if matches!(slot.state, State::Queued(_))
                && let Some(last) = slot.last.take()
            {
                self.settle(slot, last, None);
            }
        }
    }

    /// Resolves the job as cancelled if nothing resolved it yet, stopping it if it runs where it
    /// can be stopped; a queued task is dropped.
    pub(crate) fn cancel(&self) -> bool {
        self.resolve(Err(TaskError::Cancelled), Some(Halt::Kill))
    }

    /// Resolves the job as cancelled because nobody wants its result: like [`cancel`](Self::cancel),
    /// but a short running task is left to finish (see [`Halt::IfLong`]).
    pub(crate) fn abandon(&self) -> bool {
        self.resolve(Err(TaskError::Cancelled), Some(Halt::IfLong))
    }

    fn resolve(&self, outcome: Outcome<T>, halt: Option<Halt>) -> bool {
        let slot = self.lock();
        if matches!(slot.state, State::Done(_) | State::Taken) {
            return false;
        }
        self.settle(slot, outcome, halt);
        true
    }

    /// Resolves the job, not resolved yet, with `outcome`, under its lock, then wakes its waiters.
    fn settle(&self, mut slot: MutexGuard<'_, Inner<T>>, outcome: Outcome<T>, halt: Option<Halt>) {
        let (waker, has_sleeper, stop, feed) = {
            let was_running = matches!(slot.state, State::Running);
            let stop = match halt {
                Some(halt) if was_running => slot.stop.take().map(|stop| (stop, halt)),
                _ => None,
            };
            if let Some(key) = slot.timer.take() {
                timer::cancel(key);
            }
            self.ledger.finish(self.id, was_running, &outcome);
            slot.state = State::Done(outcome);
            // Nothing more is taken from here on (see the close below).
            let feed = slot.feed.clone();
            if let Some(feed) = &feed {
                feed.end_attempt();
            }
            slot.stop = None;
            slot.last = None;
            self.is_done.store(true, Ordering::Release);
            // Under the slot's lock, so that a waiter who takes the result (it takes this lock)
            // no longer finds the job live in the pool's stats; after `is_done`, so that a
            // shutdown that sees the ledger empty sees every handle finished.
            self.ledger.leave(self.id, self.key.load(Ordering::Relaxed));
            (slot.waker.take(), slot.has_sleeper, stop, feed)
        };
        drop(slot);
        // What the attempts sent is all in: readers end once they have read it. Out of the
        // slot's lock, since it wakes the readers' wakers.
        if let Some(feed) = feed {
            feed.close();
        }
        if let Some((stop, halt)) = stop {
            stop.stop(halt);
        }
        if has_sleeper {
            self.done.notify_all();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
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
        match self.wait_for_turn(deadline, false) {
            Wait::Done(outcome) => Some(outcome),
            // Not returned without a deadline or once it passed: the loop waits on.
            Wait::Requeued | Wait::Expired => None,
        }
    }

    /// Like [`wait`](Self::wait), but also returns when the job is queued again for a retry,
    /// so that a caller that may run it in place (`may_run_here`: a worker of its own pool, see
    /// `Engine::help`) gets the chance to: the worker that would run it may be the caller itself.
    /// Such a caller hears of the job queued at every look, the first one too: a retry queued
    /// between its help and this wait notifies nobody (before, it slept on, and a pool of one
    /// worker deadlocked with the retry queued behind the sleeping caller).
    pub(crate) fn wait_for_turn(&self, deadline: Option<Instant>, may_run_here: bool) -> Wait<T> {
        // A running attempt's backend may wait for it better than the condition variable.
        if !self.is_done.load(Ordering::Acquire) {
            let running = {
                let slot = self.lock();
                match (&slot.state, &slot.stop) {
                    (State::Running, Some(stop)) => Some((Arc::clone(stop), slot.attempt)),
                    _ => None,
                }
            };
            if let Some((stop, attempt)) = running {
                stop.lead(&|| self.is_attempt_over(attempt), deadline);
            }
        }
        let backoff = Backoff::new();
        while !self.is_done.load(Ordering::Acquire) && !backoff.is_completed() {
            backoff.snooze();
        }
        let mut slot = self.lock();
        let mut was_queued = !may_run_here && matches!(slot.state, State::Queued(_));
        loop {
            if let State::Done(_) = slot.state {
                return match std::mem::replace(&mut slot.state, State::Taken) {
                    State::Done(outcome) => Wait::Done(outcome),
                    _ => unreachable!("the state was just matched as Done"),
                };
            }
            let is_queued = matches!(slot.state, State::Queued(_));
            if is_queued && (may_run_here || !was_queued) {
                return Wait::Requeued;
            }
            was_queued = is_queued;
            slot.has_sleeper = true;
            slot = match deadline {
                None => self.done.wait(slot).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Wait::Expired;
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

impl<T: Task> Lender for Job<T> {
    fn lend(&self, attempt: u32, out: &mut dyn Any) {
        if let Some(out) = out.downcast_mut::<Option<Progress<T::Progress>>>() {
            *out = Some(Progress::local(self.feed(), attempt));
        }
    }
}

impl<T: Task> Abort for Job<T> {
    fn abort(&self) {
        self.cancel();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::task::Unit;

    fn ledger() -> Arc<Ledger> {
        Arc::new(Ledger::new(7))
    }

    fn enqueue(ledger: &Arc<Ledger>) -> Arc<Job<Unit>> {
        Job::enqueue(Unit, ledger).ok().expect("the ledger is open")
    }

    #[test]
    fn the_first_resolution_wins_and_only_once() {
        let ledger = ledger();
        let job = enqueue(&ledger);
        assert_eq!(ledger.len(), 1);
        assert!(job.start().is_some());
        assert!(job.start().is_none(), "a task is claimed once");
        assert!(job.complete(Ok(1)));
        assert!(!job.cancel(), "a resolved job stays resolved");
        assert!(job.is_finished());
        assert_eq!(ledger.len(), 0);
        assert_eq!(job.wait(None), Some(Ok(1)));
    }

    #[test]
    fn a_cancelled_job_is_never_started() {
        let ledger = ledger();
        let job = enqueue(&ledger);
        assert!(job.cancel());
        assert!(job.start().is_none());
        assert!(matches!(job.wait(None), Some(Err(TaskError::Cancelled))));
        assert_eq!(ledger.len(), 0);
    }

    /// Found by the suite under load: a retry queued by the timer between a same-pool joiner's
    /// help and its wait notified nobody, and the joiner (the pool's only worker) slept with
    /// the retry queued behind it. A caller that may run the job in place now hears of it
    /// queued at its first look too; one that may not waits on (it would only spin).
    #[test]
    fn a_caller_that_may_run_the_job_in_place_hears_of_it_queued_at_once() {
        let job = enqueue(&ledger());
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(matches!(job.wait_for_turn(Some(deadline), true), Wait::Requeued));
        let soon = Instant::now() + Duration::from_millis(5);
        assert!(matches!(job.wait_for_turn(Some(soon), false), Wait::Expired));
    }

    #[test]
    fn wait_with_a_deadline_gives_up() {
        let job = enqueue(&ledger());
        let deadline = Instant::now() + Duration::from_millis(5);
        assert!(job.wait(Some(deadline)).is_none());
        assert!(!job.is_finished());
    }

    #[test]
    fn a_closed_ledger_refuses_and_returns_the_task() {
        let ledger = ledger();
        ledger.close();
        assert!(ledger.is_closed());
        assert!(Job::enqueue(Unit, &ledger).is_err());
        assert_eq!(ledger.len(), 0);
    }

    #[test]
    fn abort_all_cancels_every_live_job_and_closes() {
        let ledger = ledger();
        let jobs: Vec<_> = (0..100).map(|_| enqueue(&ledger)).collect();
        assert!(jobs[3].start().is_some());
        assert!(jobs[4].complete(Ok(1)));
        ledger.abort_all();
        assert_eq!(ledger.len(), 0);
        assert!(ledger.is_closed());
        for (index, job) in jobs.iter().enumerate() {
            let expected = if index == 4 { Some(Ok(1)) } else { Some(Err(TaskError::Cancelled)) };
            assert_eq!(job.wait(None), expected, "job {index}");
        }
        // A worker that finishes an aborted job later changes nothing.
        assert!(!jobs[3].complete(Ok(1)));
    }

    #[test]
    fn wait_drained_returns_once_the_last_job_resolves() {
        let ledger = ledger();
        let jobs: Vec<_> = (0..20).map(|_| enqueue(&ledger)).collect();
        ledger.close();
        let finisher = std::thread::spawn(move || {
            for job in jobs {
                std::thread::sleep(Duration::from_millis(1));
                job.complete(Ok(1));
            }
        });
        ledger.wait_drained();
        assert_eq!(ledger.len(), 0);
        finisher.join().unwrap();
    }

    /// A task that may send progress messages.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Talk {
        sends: u32,
    }

    impl Task for Talk {
        type Output = u32;
        type Error = crate::Never;
        type Progress = u32;
        const NAME: &'static str = "parallel_core::job::tests::Talk";

        fn run(self, _: &mut crate::Environment) -> Result<u32, crate::Never> {
            if self.sends > 0 {
                let progress = Progress::<u32>::current();
                (0..self.sends).for_each(|i| progress.send(i));
            }
            Ok(self.sends)
        }
    }

    /// Runs one attempt of `job` on this thread, as a worker does.
    fn run_once<T: Task>(job: &Arc<Job<T>>, task: impl FnOnce() -> Outcome<T>) {
        let (_, attempt) = job.start_attempt(None).expect("queued");
        let outcome = job.with_sender(attempt, task);
        assert!(job.finish_attempt(attempt, outcome));
    }

    /// A task that sends no progress message, with nobody reading, costs one allocation, its
    /// job: no feed, no sender, nothing boxed to lend it one (there were three).
    #[test]
    fn a_task_that_sends_nothing_allocates_only_its_job() {
        let ledger = ledger();
        // Each ledger shard and the thread-locals allocate once, the first time.
        for _ in 0..64 {
            run_once(&enqueue(&ledger), || Ok(1));
        }
        let (job, allocations) = crate::alloc_probe::count_allocations(|| {
            let job = enqueue(&ledger);
            run_once(&job, || Ok(1));
            assert_eq!(job.wait(None), Some(Ok(1)));
            job
        });
        assert_eq!(allocations, 1, "the job's own allocation only");
        assert!(job.lock().feed.is_none(), "nobody asked for the feed");
        // A task that could send but does not: no feed either.
        let talk = Job::enqueue(Talk { sends: 0 }, &ledger).ok().expect("open");
        let mut env = crate::Environment::new();
        let (_, allocations) = crate::alloc_probe::count_allocations(|| {
            run_once(&talk, || Talk { sends: 0 }.run(&mut env).map_err(TaskError::Failed))
        });
        assert_eq!(allocations, 0);
        assert!(talk.lock().feed.is_none());
    }

    /// The feed, made when first asked for, takes the running attempt's messages, and one made
    /// after the resolution is closed.
    #[test]
    fn a_feed_made_late_knows_the_attempt_or_the_end() {
        let ledger = ledger();
        let job = Job::enqueue(Talk { sends: 3 }, &ledger).ok().expect("open");
        let mut env = crate::Environment::new();
        run_once(&job, || Talk { sends: 3 }.run(&mut env).map_err(TaskError::Failed));
        assert_eq!(job.feed().attach().collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(job.wait(None), Some(Ok(3)));
        let resolved = Job::enqueue(Talk { sends: 1 }, &ledger).ok().expect("open");
        resolved.cancel();
        assert_eq!(resolved.feed().attach().count(), 0, "closed at once");
        let (_, attempt) = resolved.start_attempt(None).map_or((None, 0), |(t, a)| (Some(t), a));
        assert_eq!(attempt, 0, "a cancelled job does not start");
    }

    #[test]
    fn poll_registers_the_waker_and_completion_wakes_it() {
        use std::task::Wake;

        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }

        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&flag));
        let job = enqueue(&ledger());
        assert!(job.poll(&waker).is_none());
        assert!(!flag.0.load(Ordering::SeqCst));
        job.complete(Ok(1));
        assert!(flag.0.load(Ordering::SeqCst), "completion wakes the registered waker");
        assert_eq!(job.poll(&waker), Some(Ok(1)));
    }
}

/// Models of a job's states, checked by loom in every interleaving (see `crate::sync`).
#[cfg(all(test, loom))]
mod loom {
    use super::*;
    use ::loom::thread;

    use crate::task::Unit;

    fn enqueue(ledger: &Arc<Ledger>) -> Arc<Job<Unit>> {
        Job::enqueue(Unit, ledger).ok().expect("the ledger is open")
    }

    /// Counts how often a job was stopped.
    #[derive(Default)]
    struct Stops(AtomicUsize);

    impl Stop for Stops {
        fn stop(&self, halt: Halt) {
            assert_eq!(halt, Halt::Kill);
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A worker starts and completes a job while a caller cancels it and another waits for it:
    /// one resolution wins, the waiter gets exactly its outcome and is always woken (a waiter
    /// left asleep is a deadlock, which fails the model), and a running job is stopped only by a
    /// cancel that won.
    #[test]
    fn loom_completion_races_cancel_and_the_waiter_gets_the_one_outcome() {
        ::loom::model(|| {
            let ledger = Arc::new(Ledger::new(1));
            let job = enqueue(&ledger);
            let stops = Arc::new(Stops::default());
            let worker = {
                let (job, stops) = (Arc::clone(&job), Arc::clone(&stops));
                thread::spawn(move || {
                    let stop: Arc<dyn Stop> = stops;
                    match job.start_attempt(Some(stop)) {
                        Some((_, attempt)) => (true, job.finish_attempt(attempt, Ok(1))),
                        None => (false, false),
                    }
                })
            };
            let canceller = {
                let job = Arc::clone(&job);
                thread::spawn(move || job.cancel())
            };
            let outcome = job.wait(None);
            let (is_started, is_completed) = worker.join().unwrap();
            let is_cancelled = canceller.join().unwrap();

            assert!(is_completed != is_cancelled, "exactly one resolution wins");
            match outcome {
                Some(Ok(1)) => assert!(is_completed),
                Some(Err(TaskError::Cancelled)) => assert!(is_cancelled),
                other => panic!("the waiter got {other:?}"),
            }
            let stopped = stops.0.load(Ordering::SeqCst);
            assert_eq!(
                stopped,
                usize::from(is_started && is_cancelled),
                "stopped iff cancelled while running"
            );
            assert!(job.is_finished());
            assert_eq!(ledger.len(), 0, "the job left the ledger");
            assert_eq!(ledger.totals().running, 0);
        });
    }

    /// A task polled as a future while a worker completes it: either the poll finds the result,
    /// or the waker it left is woken and the next poll finds it.
    #[test]
    fn loom_completion_wakes_a_polling_waiter() {
        use std::task::Wake;

        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }

        ::loom::model(|| {
            let job = enqueue(&Arc::new(Ledger::new(1)));
            let worker = {
                let job = Arc::clone(&job);
                thread::spawn(move || assert!(job.complete(Ok(1))))
            };
            let flag = Arc::new(Flag(AtomicBool::new(false)));
            let waker = Waker::from(Arc::clone(&flag));
            let first = job.poll(&waker);
            worker.join().unwrap();
            match first {
                Some(outcome) => assert_eq!(outcome, Ok(1)),
                None => {
                    assert!(flag.0.load(Ordering::SeqCst), "the waker left by the poll is woken");
                    assert_eq!(job.poll(&waker), Some(Ok(1)));
                }
            }
        });
    }
}
