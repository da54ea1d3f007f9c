//! [`PoolStats`]: a snapshot of what a pool is doing and has done.

use crate::Backend;

/// A snapshot of a pool's workers and tasks, from [`Pool::stats`](crate::Pool::stats).
///
/// The numbers are read one after another while the pool works, so they are consistent each on
/// its own, not with each other to the task.
///
/// # Examples
///
/// ```
/// use parallel::{task, Pool};
///
/// #[task]
/// fn double(x: u64) -> u64 {
///     x * 2
/// }
///
/// fn main() {
///     let pool = Pool::builder().workers(2).build().unwrap();
///     let sum: u64 = pool.map((0..100).map(double::new)).map(Result::unwrap).sum();
///     assert_eq!(sum, 9900);
///     let stats = pool.stats();
///     assert_eq!(stats.completed, 100);
///     assert_eq!((stats.queued, stats.running, stats.failed, stats.cancelled), (0, 0, 0, 0));
///     assert_eq!(stats.workers, 2);
///
///     let handle = double::dispatch_on(&pool, 1);
///     handle.cancel();
///     let stats = pool.stats();
///     // Cancelled, unless it was done before the cancel reached it.
///     assert_eq!(stats.cancelled + stats.completed, 101);
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// The pool's backend.
    pub backend: Backend,
    /// How many workers the pool runs tasks on at most at once.
    pub workers: usize,
    /// Workers with no task: on the thread backend the threads with no task on their stack, on
    /// the process backend `workers - running`; at least 0.
    pub idle: usize,
    /// Tasks submitted and not started by a worker yet, nor resolved (a task cancelled while
    /// queued is no longer counted; on the process backend, a task sent ahead to a worker and
    /// waiting there behind the one it runs is queued).
    pub queued: usize,
    /// Tasks running on a worker. On the thread backend: tasks whose code runs on the pool's
    /// threads, including tasks nested inside another on one thread and tasks abandoned by a
    /// cancel or an expired `join_timeout` (a thread cannot be stopped: they keep it until they
    /// return), so it can exceed the tasks a handle still waits for. On the process backend:
    /// tasks a worker process has started (by its claim in shared memory) and not finished.
    pub running: usize,
    /// Tasks resolved with their output.
    pub completed: u64,
    /// Tasks resolved with an error other than a cancellation: their own error, a panic, a
    /// worker's death, a value that did not serialize, ...
    pub failed: u64,
    /// Tasks resolved as cancelled: by [`TaskHandle::cancel`](crate::TaskHandle::cancel),
    /// [`Pool::kill`](crate::Pool::kill), a dropped [`Map`](crate::Map), or an expired
    /// [`TaskHandle::join_timeout`](crate::TaskHandle::join_timeout) — a timeout cancels its
    /// task, so it counts here although its handle returns
    /// [`TaskError::TimedOut`](crate::TaskError::TimedOut). A task that finished before the
    /// cancel reached it counts as completed or failed.
    pub cancelled: u64,
    /// Workers renewed or replaced: a new worker process after a death or after
    /// `max_tasks_per_worker` tasks, or a thread worker's fresh Environment after them.
    pub restarts: u64,
    /// Attempts run again under a task's [`Policy`](crate::Policy): attempts that panicked, died,
    /// timed out (or failed, with `retry_failed`) and were followed by another. A task counts
    /// once in `completed`, `failed` or `cancelled`, with its last attempt's outcome, and here
    /// once per retry.
    pub retries: u64,
}
