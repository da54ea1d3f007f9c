//! [`PoolBuilder`]: the settings of a new pool, with the `PARALLEL_*` environment variables as
//! defaults.

use std::num::NonZeroUsize;

use crate::pool::Settings;
use crate::{Backend, Error, Pool};

/// The variable that picks the backend of pools whose builder did not: `thread` or `process`.
const BACKEND_VARIABLE: &str = "PARALLEL_BACKEND";
/// The variable that sets the worker count of pools whose builder did not.
const WORKERS_VARIABLE: &str = "PARALLEL_WORKERS";

/// The settings of a new [`Pool`].
///
/// A setting left out falls back to its environment variable, then to the built-in default:
///
/// | setting | variable | default |
/// | --- | --- | --- |
/// | [`backend`](Self::backend) | `PARALLEL_BACKEND=thread\|process` | `Thread`, or `Process` with the `process` feature |
/// | [`workers`](Self::workers) | `PARALLEL_WORKERS=N` | the available parallelism |
/// | [`max_tasks_per_worker`](Self::max_tasks_per_worker) | — | unlimited |
///
/// # Examples
///
/// ```
/// use parallel::{Backend, Pool};
///
/// let pool = Pool::builder()
///     .backend(Backend::Thread)
///     .workers(4)
///     .max_tasks_per_worker(10_000)
///     .build()
///     .unwrap();
/// assert_eq!(pool.workers(), 4);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    backend: Option<Backend>,
    workers: Option<usize>,
    max_tasks_per_worker: Option<usize>,
    max_memory_per_worker: Option<u64>,
    max_message_size: Option<usize>,
}

impl PoolBuilder {
    /// A builder with every setting left to its default.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parallel::PoolBuilder::new().build().unwrap();
    /// assert!(pool.workers() >= 1);
    /// ```
    pub fn new() -> Self {
        PoolBuilder::default()
    }

    /// Where tasks run: worker threads or worker processes.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::{Backend, Pool};
    ///
    /// let pool = Pool::builder().backend(Backend::Thread).build().unwrap();
    /// assert_eq!(pool.backend(), Backend::Thread);
    /// ```
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// How many tasks run at once, each on its own worker; at least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parallel::Pool::builder().workers(1).build().unwrap();
    /// assert_eq!(pool.workers(), 1);
    /// ```
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Renews a worker after it has run this many tasks; at least 1.
    ///
    /// A process worker is replaced by a new process; a thread worker starts over with a fresh
    /// [`Environment`](crate::Environment), dropping everything the old one held.
    ///
    /// # Examples
    ///
    /// ```
    /// #[parallel::task]
    /// fn count(env: &mut parallel::Environment) -> u32 {
    ///     let n = env.get_or_insert_with("n", || 0u32);
    ///     *n += 1;
    ///     *n
    /// }
    ///
    /// fn main() {
    ///     let pool = parallel::Pool::builder().workers(1).max_tasks_per_worker(2).build().unwrap();
    ///     let counts: Vec<u32> = (0..5).map(|_| count::dispatch_on(&pool).join().unwrap()).collect();
    ///     assert_eq!(counts, [1, 2, 1, 2, 1]);
    /// }
    /// ```
    pub fn max_tasks_per_worker(mut self, tasks: usize) -> Self {
        self.max_tasks_per_worker = Some(tasks);
        self
    }

    /// Limits each worker process's address space to `bytes` (`RLIMIT_AS`); process backend only.
    ///
    /// A task that allocates past the limit ends its worker; its handle resolves as
    /// [`TaskError::WorkerDied`](crate::TaskError::WorkerDied) whose reason says the memory limit
    /// was hit, and a fresh worker takes the next task. Leave room for the program itself: its
    /// threads' stacks and its allocator's arenas count too (a few hundred MiB is a safe floor).
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::{Backend, Pool};
    ///
    /// let builder = Pool::builder().backend(Backend::Thread).max_memory_per_worker(1 << 30);
    /// let error = builder.build().unwrap_err();
    /// assert!(error.to_string().contains("process backend"));
    /// ```
    pub fn max_memory_per_worker(mut self, bytes: u64) -> Self {
        self.max_memory_per_worker = Some(bytes);
        self
    }

    /// The largest message, in bytes, that crosses between the pool and a worker process: a
    /// task's serialized arguments, output or error. Default: 1 GiB. Process backend only.
    ///
    /// Arguments over the limit resolve their handle as
    /// [`TaskError::Serialization`](crate::TaskError::Serialization) without touching a worker;
    /// an output over it likewise, and the worker keeps serving.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = parallel::Pool::builder().max_message_size(64 << 20);
    /// # drop(builder);
    /// ```
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// Builds the pool and starts its workers.
    ///
    /// # Errors
    ///
    /// An [`Error`] when a setting is out of range or a `PARALLEL_*` variable is malformed
    /// ([`Error::is_invalid_config`]), when the backend is not compiled in
    /// ([`Error::is_backend_unavailable`]), when two tasks share a name
    /// ([`Error::is_duplicate_task`]), or when the system refuses a thread ([`Error::is_io`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let error = parallel::Pool::builder().workers(0).build().unwrap_err();
    /// assert_eq!(error.to_string(), "invalid pool configuration: a pool needs at least one worker, not 0");
    /// ```
    pub fn build(&self) -> Result<Pool, Error> {
        let backend = match self.backend {
            Some(backend) => backend,
            None => backend_from(std::env::var(BACKEND_VARIABLE).ok().as_deref())?,
        };
        let workers = match self.workers {
            Some(workers) => workers,
            None => workers_from(std::env::var(WORKERS_VARIABLE).ok().as_deref())?,
        };
        if workers == 0 {
            return Err(Error::invalid_config("a pool needs at least one worker, not 0"));
        }
        if self.max_tasks_per_worker == Some(0) {
            return Err(Error::invalid_config(
                "max_tasks_per_worker must be at least 1; leave it unset for no limit",
            ));
        }
        if backend == Backend::Thread
            && (self.max_memory_per_worker.is_some() || self.max_message_size.is_some())
        {
            return Err(Error::invalid_config(
                "max_memory_per_worker and max_message_size apply to the process backend only",
            ));
        }
        if self.max_message_size.is_some_and(|bytes| bytes < MIN_MESSAGE_SIZE) {
            return Err(Error::invalid_config(format!(
                "max_message_size must be at least {MIN_MESSAGE_SIZE} bytes"
            )));
        }
        Pool::start(Settings {
            backend,
            workers,
            max_tasks_per_worker: self.max_tasks_per_worker,
            max_memory_per_worker: self.max_memory_per_worker,
            max_message_size: self.max_message_size.unwrap_or(DEFAULT_MESSAGE_SIZE),
        })
    }
}

/// The default message limit: 1 GiB.
const DEFAULT_MESSAGE_SIZE: usize = 1 << 30;
/// The smallest message limit that leaves room for a frame's own fields.
const MIN_MESSAGE_SIZE: usize = 4096;

/// The backend named by `PARALLEL_BACKEND`, or the build's default when it is unset.
///
/// Inside a worker process (which inherits the variable) it is always the thread backend: a
/// worker does not start workers of its own.
fn backend_from(variable: Option<&str>) -> Result<Backend, Error> {
    #[cfg(all(feature = "process", unix))]
    if crate::process::is_worker() {
        return Ok(Backend::Thread);
    }
    match variable.map(str::trim) {
        None | Some("") if cfg!(all(feature = "process", unix)) => Ok(Backend::Process),
        None | Some("") => Ok(Backend::Thread),
        Some(value) => Backend::parse(value).ok_or_else(|| {
            Error::invalid_config(format!(
                "{BACKEND_VARIABLE}={value:?} is neither `thread` nor `process`"
            ))
        }),
    }
}

/// The worker count from `PARALLEL_WORKERS`, or the available parallelism when it is unset.
fn workers_from(variable: Option<&str>) -> Result<usize, Error> {
    match variable.map(str::trim) {
        None | Some("") => Ok(std::thread::available_parallelism().map_or(1, NonZeroUsize::get)),
        Some(value) => match value.parse::<usize>() {
            Ok(workers) if workers > 0 => Ok(workers),
            _ => Err(Error::invalid_config(format!(
                "{WORKERS_VARIABLE}={value:?} is not a positive whole number"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_variable() {
        let default = if cfg!(feature = "process") { Backend::Process } else { Backend::Thread };
        assert_eq!(backend_from(None).unwrap(), default);
        assert_eq!(backend_from(Some("")).unwrap(), default);
        assert_eq!(backend_from(Some("Thread")).unwrap(), Backend::Thread);
        assert_eq!(backend_from(Some(" process ")).unwrap(), Backend::Process);
        let error = backend_from(Some("fork")).unwrap_err();
        assert!(error.is_invalid_config());
        assert_eq!(
            error.to_string(),
            "invalid pool configuration: PARALLEL_BACKEND=\"fork\" is neither `thread` nor `process`"
        );
    }

    #[test]
    fn workers_variable() {
        assert_eq!(workers_from(Some("3")).unwrap(), 3);
        assert!(workers_from(None).unwrap() >= 1);
        for bad in ["0", "-1", "two", "1.5"] {
            let error = workers_from(Some(bad)).unwrap_err();
            assert!(error.to_string().contains(&format!("PARALLEL_WORKERS={bad:?}")), "{error}");
        }
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        assert!(PoolBuilder::new().workers(0).build().unwrap_err().is_invalid_config());
        let error = PoolBuilder::new().workers(1).max_tasks_per_worker(0).build().unwrap_err();
        assert!(error.is_invalid_config());
    }

    #[test]
    #[cfg(not(feature = "process"))]
    fn process_backend_needs_its_feature() {
        let error = PoolBuilder::new().backend(Backend::Process).build().unwrap_err();
        assert!(error.is_backend_unavailable());
        assert!(error.to_string().contains("`process` feature"), "{error}");
    }
}
