//! One worker thread: its environments, and running a task on it.
//!
//! rayon runs queued jobs on a thread that waits inside `join` (a task's `par_iter`, say), so a
//! second task can start on a thread whose first task is still on the stack. The environment is
//! therefore never borrowed from the thread-local across user code: a task takes its environment
//! out for the run and puts it back after, and a task nested that way gets the environment of the
//! next depth — the worker keeps one per nesting depth, each persisting across the tasks that run
//! at that depth. No `RefCell` is borrowed twice and no environment is aliased.
//!
//! That nesting is unbounded: with thousands of tasks queued, each waiting in a `par_iter`, one
//! thread's stack holds task in task in task (rayon#854, rayon#1054). The pool's threads get a
//! large stack for it (see `STACK_SIZE` in the module above).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::queue::{Runnable, BATCH};
use super::Shared;
use crate::job::{Job, Outcome};
use crate::{unwind, Environment, Task, TaskError};

struct WorkerThread {
    shared: Arc<Shared>,
    index: usize,
    /// One environment per nesting depth; `None` while a task at that depth has it. Boxed, so
    /// that lending one to a task and taking it back moves a pointer.
    environments: Vec<Option<Box<Environment>>>,
    /// How many tasks are on this thread's stack right now.
    depth: usize,
    /// Tasks run at depth 0 since the environment was last renewed.
    tasks_run: usize,
    /// Where this worker publishes the earliest expiry of its environments for the janitor.
    expiry: Arc<AtomicU64>,
}

impl WorkerThread {
    /// Publishes `depth` for the pool's stats (see `Shared::depths`).
    fn set_depth(&mut self, depth: usize) {
        self.depth = depth;
        if let Some(published) = self.shared.depths.get(self.index) {
            published.store(depth, Ordering::Relaxed);
        }
    }
}

thread_local! {
    static WORKER: RefCell<Option<WorkerThread>> = const { RefCell::new(None) };
}

/// Makes the current thread worker `index` of the pool that owns `shared`.
pub(super) fn enter(shared: &Arc<Shared>, index: usize) {
    WORKER.with_borrow_mut(|worker| {
        *worker = Some(WorkerThread {
            shared: Arc::clone(shared),
            index,
            environments: Vec::new(),
            depth: 0,
            tasks_run: 0,
            expiry: shared.janitor.register(),
        });
    });
}

/// Drops the worker's environments on its own thread, as the thread exits.
pub(super) fn leave() {
    let worker = WORKER.with_borrow_mut(Option::take);
    unwind::drop_values(|| drop(worker));
}

/// The id of the pool whose worker the current thread is.
pub(super) fn current_pool() -> Option<u64> {
    WORKER.with_borrow(|worker| worker.as_ref().map(|worker| worker.shared.ledger.pool_id()))
}

/// A runner of the pool's queue (see [`queue`](super::queue)): runs the queued jobs until the
/// queue is empty, or hands its place to a successor after a batch, or after one job when it
/// runs nested in a task (whose `join` waits for this runner to return).
pub(super) fn run_queue(shared: Arc<Shared>) {
    let is_nested = WORKER.with_borrow(|worker| worker.as_ref().is_some_and(|w| w.depth > 0));
    let batch = if is_nested { 1 } else { BATCH };
    let mut ran = 0;
    loop {
        while let Some(job) = shared.queue.pop() {
            job.run();
            ran += 1;
            if ran == batch {
                // The successor inherits this runner's count; this thread's own rayon work
                // (pieces of a `par_iter`, a waiting `join`) goes first.
                rayon::spawn_fifo(move || run_queue(shared));
                return;
            }
        }
        // A caller that waits for each task before it submits the next (a round trip) submits
        // it within microseconds: looking for it a little costs less than leaving and being
        // started again (an allocation and rayon's injector and stealing). Not nested: the task
        // below waits for this runner to return.
        if !is_nested && shared.queue.linger() {
            continue;
        }
        if !shared.queue.leave() {
            return;
        }
    }
}

impl<T: Task> Runnable for Job<T> {
    fn run(self: Arc<Self>) {
        execute(&self);
    }
}

/// Runs `job` on the current worker thread, unless it was cancelled or claimed meanwhile.
pub(super) fn execute<T: Task>(job: &Arc<Job<T>>) {
    if let Some((task, attempt)) = job.start_attempt(None) {
        // An attempt that timed out meanwhile was abandoned: its outcome is dropped.
        job.finish_attempt(attempt, run(task, job, attempt));
    }
}

/// Called by a handle about to wait (`join`, `join_timeout`, a `poll`): on a worker of the job's
/// own pool, a job still queued is run here, since the worker that would run it may be this very
/// thread. Elsewhere it costs a thread-local read.
///
/// An async task is not run in place from inside another async task: the thread is driving that
/// task's runtime, which cannot be entered twice; it runs on another worker.
///
/// `true` if this thread may run the job in place, whether it did or not: its waits must then
/// come back whenever they find the job queued (see `Job::wait_for_turn`).
pub(crate) fn help<T: Task>(job: &Arc<Job<T>>) -> bool {
    let may_run_here = current_pool() == Some(job.pool_id()) && !(T::ASYNC && in_runtime());
    if may_run_here && job.is_queued() {
        execute(job);
    }
    may_run_here
}

#[cfg(feature = "tokio")]
fn in_runtime() -> bool {
    crate::runtime::is_entered()
}

#[cfg(not(feature = "tokio"))]
fn in_runtime() -> bool {
    false
}

fn run<T: Task>(task: T, job: &Arc<Job<T>>, attempt: u32) -> Outcome<T> {
    let (mut environment, depth) = take_environment();
    let span = tracing::debug_span!(
        "parallel.task",
        task = T::NAME,
        id = job.id(),
        attempt,
        backend = "thread",
        worker = environment.worker_id(),
        outcome = tracing::field::Empty,
        duration_us = tracing::field::Empty,
    );
    let started = (!span.is_disabled()).then(Instant::now);
    let entered = span.enter();
    unwind::drop_values(|| environment.purge_expired());
    let result = unwind::catch(|| job.with_sender(attempt, || task.run(&mut environment)));
    drop(entered);
    put_back(environment, depth);
    let (outcome, name) = match result {
        Ok(Ok(output)) => (Ok(output), "ok"),
        Ok(Err(error)) => (Err(TaskError::Failed(error)), "failed"),
        Err(report) => (Err(TaskError::panicked(T::NAME, report)), "panicked"),
    };
    if let Some(started) = started {
        span.record("outcome", name);
        span.record("duration_us", started.elapsed().as_micros() as u64);
    }
    outcome
}

fn take_environment() -> (Box<Environment>, usize) {
    WORKER.with_borrow_mut(|worker| match worker {
        Some(worker) => {
            let depth = worker.depth;
            worker.set_depth(depth + 1);
            if worker.environments.len() <= depth {
                worker.environments.resize_with(depth + 1, || None);
            }
            let environment = worker.environments[depth]
                .take()
                .unwrap_or_else(|| Box::new(Environment::for_worker(worker.index)));
            (environment, depth)
        }
        // Only worker threads run jobs; a throwaway environment keeps this path total anyway.
        None => (Box::default(), usize::MAX),
    })
}

fn put_back(environment: Box<Environment>, depth: usize) {
    let retired = WORKER.with_borrow_mut(|worker| {
        let worker = worker.as_mut()?;
        if depth == usize::MAX {
            return Some(environment);
        }
        // Before the job completes: once its handle has the result, it is no longer counted.
        worker.set_depth(depth);
        let mut retired = None;
        if depth == 0 {
            worker.tasks_run += 1;
            if worker.shared.max_tasks_per_worker.is_some_and(|max| worker.tasks_run >= max) {
                worker.tasks_run = 0;
                worker.shared.ledger.counts.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(worker = worker.index, "worker renews its environment");
                retired = Some(environment);
            } else {
                worker.environments[0] = Some(environment);
            }
        } else {
            worker.environments[depth] = Some(environment);
        }
        publish_expiry(worker);
        retired
    });
    // Values run their `Drop` outside the borrow: a `Drop` may itself touch the pool.
    unwind::drop_values(|| drop(retired));
}

/// Purges the environments no task of this thread holds; the janitor broadcasts this.
pub(super) fn purge_idle() {
    let Some(mut environments) = WORKER.with_borrow_mut(|worker| {
        worker.as_mut().map(|worker| std::mem::take(&mut worker.environments))
    }) else {
        return;
    };
    unwind::drop_values(|| {
        for environment in environments.iter_mut().flatten() {
            environment.purge_expired();
        }
    });
    WORKER.with_borrow_mut(|worker| {
        if let Some(worker) = worker.as_mut() {
            // Slots taken by tasks meanwhile stay `None` in ours: those tasks put them back.
            for (slot, purged) in worker.environments.iter_mut().zip(&mut environments) {
                if slot.is_none() {
                    *slot = purged.take();
                }
            }
            if environments.len() > worker.environments.len() {
                worker.environments.extend(environments.drain(worker.environments.len()..));
            }
            publish_expiry(worker);
        }
    });
}

fn publish_expiry(worker: &WorkerThread) {
    let earliest = worker
        .environments
        .iter()
        .flatten()
        .filter_map(|environment| environment.next_expiry())
        .min();
    worker.shared.janitor.publish(&worker.expiry, earliest);
}
