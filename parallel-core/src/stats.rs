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
///     assert_eq!((stats.queued, stats.running, stats.failed), (0, 0, 0));
///     assert_eq!(stats.workers, 2);
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// The pool's backend.
    pub backend: Backend,
    /// How many workers the pool runs tasks on at most at once.
    pub workers: usize,
    /// Workers with no task: `workers - running`, at least 0.
    pub idle: usize,
    /// Tasks submitted and not started yet.
    pub queued: usize,
    /// Tasks a worker has taken and that are not resolved yet (on the process backend this
    /// includes short tasks sent ahead to a worker, waiting behind the one it runs).
    pub running: usize,
    /// Tasks resolved with their output.
    pub completed: u64,
    /// Tasks resolved with an error of any kind: their own, a panic, a worker's death, a
    /// timeout, a cancellation.
    pub failed: u64,
    /// Workers renewed or replaced: a new worker process after a death or after
    /// `max_tasks_per_worker` tasks, or a thread worker's fresh Environment after them.
    pub restarts: u64,
}
