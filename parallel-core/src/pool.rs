//! [`Pool`]: a set of workers and the tasks submitted to it; [`default_pool`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::engine::Engine;
use crate::job::{Job, Retry};
use crate::ledger::Ledger;
use crate::{
    policy, Backend, Error, Map, MapUnordered, PoolBuilder, PoolStats, Task, TaskError, TaskHandle,
};

/// A set of workers that run submitted tasks.
///
/// Build one with [`Pool::builder`], or use the process-wide [`default_pool`] that
/// `NAME::dispatch` runs on. A pool is `Send + Sync`: share it by reference or in an `Arc`.
/// Dropping it does not block: tasks already submitted still run and their handles still
/// resolve, then the workers stop.
///
/// # Examples
///
/// ```
/// use parallel::{task, Backend, Pool};
///
/// #[task]
/// fn add(a: i64, b: i64) -> i64 {
///     a + b
/// }
///
/// fn main() {
///     let pool = Pool::builder().backend(Backend::Thread).workers(2).build().unwrap();
///     assert_eq!(add::dispatch_on(&pool, 1, 2).join().unwrap(), 3);
///     let sums: Vec<i64> = pool.map((0..100).map(|i| add::new(i, i))).map(Result::unwrap).collect();
///     assert_eq!(sums[99], 198);
/// }
/// ```
pub struct Pool {
    backend: Backend,
    workers: usize,
    ledger: Arc<Ledger>,
    /// Shared only with jobs waiting for a retry, weakly: a dropped pool runs no more retries.
    engine: Arc<Engine>,
}

/// A pool's settings, as the builder resolved them.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) backend: Backend,
    pub(crate) workers: usize,
    pub(crate) max_tasks_per_worker: Option<usize>,
    #[cfg_attr(not(process_backend), allow(dead_code))]
    pub(crate) max_memory_per_worker: Option<u64>,
    #[cfg_attr(not(any(process_backend, feature = "cluster")), allow(dead_code))]
    pub(crate) max_message_size: usize,
    /// The server and namespace of a cluster pool.
    #[cfg(feature = "cluster")]
    pub(crate) cluster: Option<crate::cluster::Target>,
}

impl Pool {
    /// A builder to configure a new pool.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parallel::Pool::builder().workers(3).build().unwrap();
    /// assert_eq!(pool.workers(), 3);
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    pub(crate) fn start(settings: Settings) -> Result<Pool, Error> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        crate::registry::validate()?;
        let ledger = Arc::new(Ledger::new(NEXT_ID.fetch_add(1, Ordering::Relaxed)));
        let Settings { backend, workers, .. } = settings;
        #[cfg(feature = "cluster")]
        crate::cluster::anchor();
        let engine = Arc::new(Engine::start(settings, &ledger)?);
        Ok(Pool { backend, workers, ledger, engine })
    }

    /// Submits a task and returns its handle at once.
    ///
    /// A task submitted after [`shutdown`](Self::shutdown) or [`kill`](Self::kill) resolves as
    /// [`TaskError::PoolClosed`].
    ///
    /// # Examples
    ///
    /// ```
    /// #[parallel::task]
    /// fn shout(text: String) -> String {
    ///     text.to_uppercase()
    /// }
    ///
    /// fn main() {
    ///     let pool = parallel::Pool::builder().workers(1).build().unwrap();
    ///     let handle = pool.submit(shout::new("hi".into()));
    ///     assert_eq!(handle.join().unwrap(), "HI");
    /// }
    /// ```
    pub fn submit<T: Task>(&self, task: T) -> TaskHandle<T> {
        let job = match self.enqueue(task) {
            Ok(job) => job,
            Err(resolved) => return resolved,
        };
        if !self.engine.submit(Arc::clone(&job)) {
            job.complete(Err(TaskError::pool_closed(T::NAME)));
        }
        TaskHandle::new(job)
    }

    /// Whether the engine takes the next window of a stream that has `submitted` tasks so far
    /// better together ([`submit_together`]) than one at a time (see `Engine::submits_together`).
    ///
    /// [`submit_together`]: Self::submit_together
    pub(crate) fn submits_together(&self, submitted: usize) -> bool {
        self.engine.submits_together(submitted)
    }

    /// Submits `tasks` as [`submit`](Self::submit) does each, handing them to the engine in one
    /// go; their handles, in order.
    pub(crate) fn submit_together<T: Task>(&self, tasks: Vec<T>) -> Vec<TaskHandle<T>> {
        let enqueued: Vec<Result<Arc<Job<T>>, TaskHandle<T>>> =
            tasks.into_iter().map(|task| self.enqueue(task)).collect();
        let jobs: Vec<Arc<Job<T>>> =
            enqueued.iter().filter_map(|job| job.as_ref().ok()).cloned().collect();
        for (job, is_taken) in jobs.iter().zip(self.engine.submit_all(&jobs)) {
            if !is_taken {
                job.complete(Err(TaskError::pool_closed(T::NAME)));
            }
        }
        enqueued
            .into_iter()
            .map(|job| job.map_or_else(|resolved| resolved, TaskHandle::new))
            .collect()
    }

    /// A job for `task` in the ledger, ready for the engine; the handle of a task resolved
    /// already (its copy for retries did not serialize, or the pool is closed).
    fn enqueue<T: Task>(&self, task: T) -> Result<Arc<Job<T>>, TaskHandle<T>> {
        // A task that may run again is kept as bytes: its first attempt consumes it.
        let copy = match T::POLICY.retries() {
            0 => None,
            _ => match policy::keep_copy(&task) {
                Ok(copy) => Some(copy),
                Err(message) => {
                    let task = T::NAME.to_owned();
                    let error = TaskError::Serialization { task, value: "arguments", message };
                    return Err(TaskHandle::new(Job::resolved(Err(error))));
                }
            },
        };
        let job = match Job::enqueue(task, &self.ledger) {
            Ok(job) => job,
            Err(_refused) => {
                return Err(TaskHandle::new(Job::resolved(Err(TaskError::pool_closed(T::NAME)))))
            }
        };
        if let Some(copy) = copy {
            job.allow_retries(Retry { copy, engine: Arc::downgrade(&self.engine) });
        }
        Ok(job)
    }

    /// Runs every task of `tasks` and yields their results in input order, as they are consumed.
    ///
    /// `tasks` is pulled on the caller's thread only as results are consumed, with a bounded
    /// window of tasks in flight, so an endless or huge input never sits in memory and the
    /// iterator may borrow from the caller (no `Send` or `'static` bound). Dropping the returned
    /// iterator cancels the tasks still in its window.
    ///
    /// # Examples
    ///
    /// ```
    /// #[parallel::task]
    /// fn len(text: String) -> usize {
    ///     text.len()
    /// }
    ///
    /// fn main() {
    ///     let words = ["a", "bb", "ccc"];
    ///     let pool = parallel::Pool::builder().workers(2).build().unwrap();
    ///     let lengths: Vec<usize> =
    ///         pool.map(words.iter().map(|w| len::new(w.to_string()))).map(Result::unwrap).collect();
    ///     assert_eq!(lengths, [1, 2, 3]);
    /// }
    /// ```
    pub fn map<I>(&self, tasks: I) -> Map<'_, I::IntoIter>
    where
        I: IntoIterator,
        I::Item: Task,
    {
        Map::new(self, tasks.into_iter())
    }

    /// Runs every task of `tasks` and yields `(index, result)` for each as soon as it finishes,
    /// `index` being the task's position in `tasks`.
    ///
    /// Takes what [`map`](Self::map) takes and pulls it the same way (lazily, on the caller's
    /// thread, with a bounded window in flight); only the order differs: a slow task does not
    /// hold back the results behind it. Dropping the returned iterator cancels the tasks still
    /// in its window. Use [`as_completed`](crate::as_completed) for handles already submitted.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// #[parallel::task]
    /// fn nap(millis: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(millis));
    ///     millis
    /// }
    ///
    /// fn main() {
    ///     let naps = [300, 1, 2];
    ///     let pool = parallel::Pool::builder().workers(3).build().unwrap();
    ///     let mut results = pool.map_unordered(naps.iter().map(|&ms| nap::new(ms)));
    ///     let (first, _) = results.next().unwrap();
    ///     assert_ne!(naps[first], 300, "the long nap finishes last");
    ///     assert_eq!(results.count(), 2);
    /// }
    /// ```
    pub fn map_unordered<I>(&self, tasks: I) -> MapUnordered<'_, I::IntoIter>
    where
        I: IntoIterator,
        I::Item: Task,
    {
        MapUnordered::new(self, tasks.into_iter())
    }

    /// Finishes every task already submitted, then stops the workers; tasks submitted from now on
    /// resolve as [`TaskError::PoolClosed`].
    ///
    /// Blocks until the work is done. Called from inside one of this pool's own tasks, it cannot
    /// wait for itself: it closes the pool and returns, and the workers stop once the work is done.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::TaskError;
    ///
    /// #[parallel::task]
    /// fn id(x: u32) -> u32 {
    ///     x
    /// }
    ///
    /// fn main() {
    ///     let pool = parallel::Pool::builder().workers(2).build().unwrap();
    ///     let handles: Vec<_> = (0..10).map(|i| id::dispatch_on(&pool, i)).collect();
    ///     pool.shutdown();
    ///     assert!(handles.iter().all(|h| h.is_finished()));
    ///     assert!(matches!(id::dispatch_on(&pool, 1).join(), Err(TaskError::PoolClosed { .. })));
    /// }
    /// ```
    pub fn shutdown(&self) {
        self.ledger.close();
        // A worker waiting for its own pool to drain would wait for itself.
        if self.engine.is_current_worker() {
            return;
        }
        self.ledger.wait_drained();
        self.engine.stop();
    }

    /// Stops now: tasks not yet finished resolve as [`TaskError::Cancelled`] (or
    /// [`TaskError::WorkerDied`] when a worker process is killed under them), and tasks submitted
    /// from now on as [`TaskError::PoolClosed`].
    ///
    /// On the thread backend a running task cannot be stopped: it is abandoned and finishes on
    /// its thread in the background, its result dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use parallel::TaskError;
    ///
    /// #[parallel::task]
    /// fn nap(millis: u64) {
    ///     std::thread::sleep(Duration::from_millis(millis));
    /// }
    ///
    /// fn main() {
    ///     let pool = parallel::Pool::builder().workers(1).build().unwrap();
    ///     let handles: Vec<_> = (0..5).map(|_| nap::dispatch_on(&pool, 200)).collect();
    ///     pool.kill();
    ///     for handle in handles {
    ///         assert!(matches!(handle.join(), Ok(()) | Err(TaskError::Cancelled)));
    ///     }
    /// }
    /// ```
    pub fn kill(&self) {
        self.engine.announce_kill();
        self.ledger.abort_all();
        self.engine.kill();
    }

    /// The backend this pool runs tasks on.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parallel::Pool::builder().backend(parallel::Backend::Thread).build().unwrap();
    /// assert_eq!(pool.backend(), parallel::Backend::Thread);
    /// ```
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How many workers the pool runs tasks on at most at once.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parallel::Pool::builder().workers(2).build().unwrap();
    /// assert_eq!(pool.workers(), 2);
    /// ```
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// How many submitted tasks are not resolved yet (queued or running).
    pub(crate) fn pending(&self) -> usize {
        self.ledger.len()
    }

    /// A snapshot of the pool's workers and tasks: queued, running, completed, failed,
    /// cancelled, worker restarts (see [`PoolStats`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parallel::Pool::builder().workers(3).build().unwrap();
    /// let stats = pool.stats();
    /// assert_eq!((stats.workers, stats.idle, stats.queued, stats.completed), (3, 3, 0, 0));
    /// ```
    pub fn stats(&self) -> PoolStats {
        use std::sync::atomic::Ordering::Relaxed;
        let counts = &self.ledger.counts;
        let totals = self.ledger.totals();
        // Jobs a worker has claimed and that are not resolved: the live jobs minus these wait.
        let activity = self.engine.activity(totals.live, totals.running);
        PoolStats {
            backend: self.backend,
            workers: self.workers,
            idle: self.workers.saturating_sub(activity.busy),
            queued: activity.queued,
            running: activity.running,
            completed: totals.completed,
            failed: totals.failed,
            cancelled: totals.cancelled,
            restarts: counts.restarts.load(Relaxed),
            retries: counts.retries.load(Relaxed),
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("backend", &self.backend)
            .field("workers", &self.workers)
            .field("pending", &self.pending())
            .field("is_closed", &self.ledger.is_closed())
            .finish()
    }
}

/// The process-wide pool that `NAME::dispatch` runs on, built on first use.
///
/// Its backend is [`Backend::Thread`] (or [`Backend::Process`] when `parallel` is built with the
/// `process` feature) and it has one worker per available core; the environment variables
/// `PARALLEL_BACKEND=thread|process` and `PARALLEL_WORKERS=N` override both at run time.
///
/// # Panics
///
/// If the pool cannot be built (on first use, and on every use after): a malformed `PARALLEL_*`
/// variable, two tasks registered under one name, or a system that refuses threads. The message
/// says which, and the panic is located at the caller (of this function or of `NAME::dispatch`).
///
/// # Examples
///
/// ```
/// let pool = parallel::default_pool();
/// assert!(pool.workers() >= 1);
/// ```
#[track_caller]
pub fn default_pool() -> &'static Pool {
    // The error is kept, so that every call fails alike, each at its caller's location (a
    // `NAME::dispatch` passes its own caller on), not at a line of this library.
    static DEFAULT: OnceLock<Result<Pool, String>> = OnceLock::new();
    match DEFAULT.get_or_init(|| PoolBuilder::new().build().map_err(|error| error.to_string())) {
        Ok(pool) => pool,
        Err(error) => panic!("parallel: cannot build the default pool: {error}"),
    }
}
