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
/// | [`max_memory_per_worker`](Self::max_memory_per_worker) | — | unlimited |
/// | [`max_message_size`](Self::max_message_size) | — | 1 GiB |
/// | [`cluster`](Self::cluster) | `PARALLEL_CLUSTER=URL` | — (needed by `Backend::Cluster`) |
/// | [`namespace`](Self::namespace) | `PARALLEL_NAMESPACE=NAME` | `parallel` |
///
/// A setting out of range is an [`Error`] from [`build`](Self::build), never a panic or an abort:
/// a pool has 1 to [`max_workers`](Self::max_workers) workers, a message limit is 4 KiB to
/// 4 GiB − 1 (what a frame's `u32` length can say).
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
    cluster: Option<String>,
    namespace: Option<String>,
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

    /// How many tasks run at once, each on its own worker: 1 to [`max_workers`](Self::max_workers).
    /// On a [`Backend::Cluster`] pool the serving processes have the slots, and this is how many
    /// tasks [`Pool::map`] keeps out for them (64 by default).
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

    /// The most workers a pool may have on this machine: 16 per available core, at least 256 and
    /// at most 4096. [`build`](Self::build) refuses more, from [`workers`](Self::workers) or from
    /// `PARALLEL_WORKERS`.
    ///
    /// Why: the thread backend's rayon threads each look through every other thread's queue when
    /// they run out of work, so starting `n` of them costs about `n²` steps shared by the cores.
    /// Measured on a 2-core VM (debug build): 256 threads start in 0.3 s, 512 in 3 s, 1024 in
    /// 23 s, 4096 in about 7 minutes. Sixteen per core keeps the start near a second on any
    /// machine (a 256-core server gets 4096, sixteen per core), 256 is allowed everywhere so that
    /// a configuration that works on a large machine works on a small one up to there, and 4096
    /// is more than a pool of processes or threads is ever useful with: it also bounds what a
    /// pool reserves per worker (a 64 MiB stack per thread, a slot per process worker).
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::PoolBuilder;
    ///
    /// assert!((256..=4096).contains(&PoolBuilder::max_workers()));
    /// let error = PoolBuilder::new().workers(PoolBuilder::max_workers() + 1).build().unwrap_err();
    /// assert!(error.is_invalid_config());
    /// ```
    pub fn max_workers() -> usize {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        cores.saturating_mul(WORKERS_PER_CORE).clamp(MIN_MAX_WORKERS, MAX_MAX_WORKERS)
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

    /// Limits each worker process's address space to `bytes` (`RLIMIT_AS`), more than 0;
    /// process backend only.
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
    /// task's serialized arguments, output or error: 4 KiB (room for a frame's own fields) to
    /// 4 GiB − 1 (the most a frame's `u32` length can say). Default: 1 GiB. Process backend only.
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

    /// The NATS server of a [`Backend::Cluster`] pool (feature `cluster`): `nats://host:4222`,
    /// `tls://host:4222` (TLS required), with credentials as `nats://TOKEN@host:4222` or
    /// `nats://USER:PASSWORD@host:4222`, several servers of one NATS cluster separated by commas.
    /// `PARALLEL_CLUSTER_CREDS` names a credentials file, `PARALLEL_CLUSTER_CA` the certificate
    /// authorities of TLS servers. A plaintext URL to another machine is refused unless
    /// `PARALLEL_CLUSTER_PLAINTEXT=1`.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::{Backend, Pool};
    ///
    /// let builder = Pool::builder().backend(Backend::Cluster).cluster("nats://127.0.0.1:4222");
    /// # drop(builder);
    /// ```
    pub fn cluster(mut self, url: impl Into<String>) -> Self {
        self.cluster = Some(url.into());
        self
    }

    /// The namespace of a [`Backend::Cluster`] pool: its tasks go to the serving processes of
    /// the same namespace only (`parallel` by default; letters, digits, `-` and `_`).
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = parallel::Pool::builder().namespace("reports");
    /// # drop(builder);
    /// ```
    pub fn namespace(mut self, name: impl Into<String>) -> Self {
        self.namespace = Some(name.into());
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
        let max_workers = Self::max_workers();
        let workers = match self.workers {
            Some(0) => {
                return Err(Error::invalid_config("a pool needs at least one worker, not 0"))
            }
            Some(workers) if workers > max_workers => {
                return Err(Error::invalid_config(format!(
                    "workers({workers}) is out of range: a pool has 1 to {max_workers} workers \
                     on this machine ({WORKERS_PER_CORE} per core, at least {MIN_MAX_WORKERS}, \
                     at most {MAX_MAX_WORKERS})"
                )))
            }
            Some(workers) => workers,
            // A cluster's slots are far away and many: `map` keeps enough tasks out for them.
            None if backend == Backend::Cluster => CLUSTER_WORKERS,
            None => workers_from_env()?,
        };
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
        if backend == Backend::Cluster
            && (self.max_tasks_per_worker.is_some() || self.max_memory_per_worker.is_some())
        {
            return Err(Error::invalid_config(
                "max_tasks_per_worker and max_memory_per_worker limit a pool's own workers; a \
                 cluster's slots belong to its serving processes (PARALLEL_WORKERS there)",
            ));
        }
        if let Some(bytes) = self
            .max_message_size
            .filter(|bytes| !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(bytes))
        {
            return Err(Error::invalid_config(format!(
                "max_message_size({bytes}) is out of range: {MIN_MESSAGE_SIZE} to \
                 {MAX_MESSAGE_SIZE} bytes (a frame's length is a u32)"
            )));
        }
        if self.max_memory_per_worker == Some(0) {
            return Err(Error::invalid_config(
                "max_memory_per_worker must be more than 0 bytes; leave it unset for no limit",
            ));
        }
        Pool::start(Settings {
            backend,
            workers,
            max_tasks_per_worker: self.max_tasks_per_worker,
            max_memory_per_worker: self.max_memory_per_worker,
            max_message_size: self.max_message_size.unwrap_or(DEFAULT_MESSAGE_SIZE),
            #[cfg(feature = "cluster")]
            cluster: self.cluster_target(backend),
        })
    }

    /// The server and namespace of a cluster pool, from the builder or the variables.
    #[cfg(feature = "cluster")]
    fn cluster_target(&self, backend: Backend) -> Option<crate::cluster::Target> {
        if backend != Backend::Cluster {
            return None;
        }
        let url = self.cluster.clone().or_else(|| std::env::var("PARALLEL_CLUSTER").ok())?;
        let namespace = self
            .namespace
            .clone()
            .or_else(|| std::env::var("PARALLEL_NAMESPACE").ok())
            .unwrap_or_else(|| "parallel".to_owned());
        Some(crate::cluster::Target { url, namespace })
    }
}

/// The worker count of a cluster pool whose builder sets none: what it tells `map` to keep in
/// flight, spread over the serving processes (`PARALLEL_WORKERS` is their slot count there).
const CLUSTER_WORKERS: usize = 64;

/// The default message limit: 1 GiB.
pub(crate) const DEFAULT_MESSAGE_SIZE: usize = 1 << 30;
/// The smallest message limit that leaves room for a frame's own fields.
const MIN_MESSAGE_SIZE: usize = 4096;
/// The largest message limit: what a frame's `u32` length can say (see `process/protocol.rs`).
/// Every platform `parallel` builds on has a `usize` of at least 32 bits, so nothing is cut.
const MAX_MESSAGE_SIZE: usize = u32::MAX as usize;

/// Workers allowed per available core; see [`PoolBuilder::max_workers`] for the measurement.
const WORKERS_PER_CORE: usize = 16;
/// The worker limit of machines with 16 cores or fewer.
const MIN_MAX_WORKERS: usize = 256;
/// The worker limit of machines with 256 cores or more.
const MAX_MAX_WORKERS: usize = 4096;

/// The backend named by `PARALLEL_BACKEND`, or the build's default when it is unset.
///
/// Inside a worker process (which inherits the variable) it is always the thread backend: a
/// worker does not start workers of its own.
fn backend_from(variable: Option<&str>) -> Result<Backend, Error> {
    #[cfg(process_backend)]
    if crate::process::is_worker() {
        return Ok(Backend::Thread);
    }
    match variable.map(str::trim) {
        None | Some("") if cfg!(process_backend) => Ok(Backend::Process),
        None | Some("") => Ok(Backend::Thread),
        Some(value) => Backend::parse(value).ok_or_else(|| {
            Error::invalid_config(format!(
                "{BACKEND_VARIABLE}={value:?} is not `thread`, `process` or `cluster`"
            ))
        }),
    }
}

/// The worker count from `PARALLEL_WORKERS`, or the available parallelism when it is unset.
pub(crate) fn workers_from_env() -> Result<usize, Error> {
    workers_from(std::env::var(WORKERS_VARIABLE).ok().as_deref(), PoolBuilder::max_workers())
}

/// The worker count from `PARALLEL_WORKERS`, or the available parallelism when it is unset;
/// `max` is [`PoolBuilder::max_workers`].
fn workers_from(variable: Option<&str>, max: usize) -> Result<usize, Error> {
    match variable.map(str::trim) {
        None | Some("") => {
            Ok(std::thread::available_parallelism().map_or(1, NonZeroUsize::get).min(max))
        }
        Some(value) => match value.parse::<u128>() {
            Ok(workers) if workers > 0 && workers <= max as u128 => {
                // In range, so at most `max`, which is a `usize`.
                Ok(usize::try_from(workers).unwrap_or(max))
            }
            Ok(workers) if workers > 0 => Err(Error::invalid_config(format!(
                "{WORKERS_VARIABLE}={value:?} is out of range: a pool has 1 to {max} workers on \
                 this machine ({WORKERS_PER_CORE} per core, at least {MIN_MAX_WORKERS}, at most \
                 {MAX_MAX_WORKERS})"
            ))),
            _ => Err(Error::invalid_config(format!(
                "{WORKERS_VARIABLE}={value:?} is not a whole number from 1 to {max}"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_variable() {
        let default = if cfg!(process_backend) { Backend::Process } else { Backend::Thread };
        assert_eq!(backend_from(None).unwrap(), default);
        assert_eq!(backend_from(Some("")).unwrap(), default);
        assert_eq!(backend_from(Some("Thread")).unwrap(), Backend::Thread);
        assert_eq!(backend_from(Some(" process ")).unwrap(), Backend::Process);
        assert_eq!(backend_from(Some("CLUSTER")).unwrap(), Backend::Cluster);
        let error = backend_from(Some("fork")).unwrap_err();
        assert!(error.is_invalid_config());
        assert_eq!(
            error.to_string(),
            "invalid pool configuration: PARALLEL_BACKEND=\"fork\" is not `thread`, `process` or \
             `cluster`"
        );
    }

    #[test]
    fn workers_variable() {
        assert_eq!(workers_from(Some("3"), 256).unwrap(), 3);
        assert_eq!(workers_from(Some(" 256 "), 256).unwrap(), 256);
        assert!(workers_from(None, 256).unwrap() >= 1);
        for bad in ["0", "-1", "two", "1.5", "257", "1099511627776", "18446744073709551616"] {
            let error = workers_from(Some(bad), 256).unwrap_err();
            assert!(error.is_invalid_config());
            let message = error.to_string();
            assert!(message.contains(&format!("PARALLEL_WORKERS={bad:?}")), "{message}");
            assert!(message.contains("1 to 256"), "{message}");
        }
    }

    #[test]
    fn the_worker_limit_follows_the_cores_within_bounds() {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let max = PoolBuilder::max_workers();
        assert!((MIN_MAX_WORKERS..=MAX_MAX_WORKERS).contains(&max), "{max}");
        assert!(max >= cores.saturating_mul(WORKERS_PER_CORE).min(MAX_MAX_WORKERS), "{max}");
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn a_cluster_pool_refuses_the_limits_of_its_own_workers() {
        // Refused before any connection: the address is never tried.
        let cluster = || PoolBuilder::new().backend(Backend::Cluster).cluster("nats://127.0.0.1:1");
        for builder in
            [cluster().max_tasks_per_worker(10), cluster().max_memory_per_worker(1 << 30)]
        {
            let error = builder.build().unwrap_err();
            assert!(error.is_invalid_config(), "{error}");
            assert!(error.to_string().contains("serving processes"), "{error}");
        }
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let max = PoolBuilder::max_workers();
        for workers in [0, max + 1, 100_000, 1 << 40, usize::MAX] {
            let error = PoolBuilder::new().workers(workers).build().unwrap_err();
            assert!(error.is_invalid_config(), "{workers}: {error}");
            if workers > 0 {
                let expected = format!("workers({workers}) is out of range: a pool has 1 to {max}");
                assert!(error.to_string().contains(&expected), "{error}");
            }
        }
        let error = PoolBuilder::new().workers(1).max_tasks_per_worker(0).build().unwrap_err();
        assert!(error.is_invalid_config());
    }

    #[test]
    #[cfg(process_backend)]
    fn out_of_range_process_limits_are_refused() {
        let process = || PoolBuilder::new().backend(Backend::Process).workers(1);
        let too_large = u32::MAX as usize + 1;
        for bytes in [0, 4095, too_large, usize::MAX] {
            let error = process().max_message_size(bytes).build().unwrap_err();
            assert!(error.is_invalid_config(), "{bytes}: {error}");
            let expected = format!("max_message_size({bytes}) is out of range: 4096 to 4294967295");
            assert!(error.to_string().contains(&expected), "{error}");
        }
        let error = process().max_memory_per_worker(0).build().unwrap_err();
        assert!(error.is_invalid_config());
        assert!(error.to_string().contains("max_memory_per_worker"), "{error}");
    }

    #[test]
    #[cfg(not(feature = "cluster"))]
    fn cluster_backend_needs_its_feature() {
        let error = PoolBuilder::new().backend(Backend::Cluster).build().unwrap_err();
        assert!(error.is_backend_unavailable());
        assert_eq!(
            error.to_string(),
            "the Cluster backend is not available in this build; enable the `cluster` feature of \
             `parallel`"
        );
    }

    #[test]
    #[cfg(feature = "cluster")]
    fn a_cluster_pool_needs_its_server() {
        // The variable is unset in the test environment.
        if std::env::var_os("PARALLEL_CLUSTER").is_some() {
            return;
        }
        let error = PoolBuilder::new().backend(Backend::Cluster).build().unwrap_err();
        assert!(error.is_invalid_config());
        assert!(error.to_string().contains("PoolBuilder::cluster(url)"), "{error}");
        let error = PoolBuilder::new()
            .backend(Backend::Cluster)
            .cluster("nats://127.0.0.1:1")
            .namespace("no.dots")
            .build()
            .unwrap_err();
        assert!(error.is_invalid_config());
        assert!(error.to_string().contains("namespace \"no.dots\""), "{error}");
        let error = PoolBuilder::new()
            .backend(Backend::Cluster)
            .cluster("nats://10.1.2.3:4222")
            .build()
            .unwrap_err();
        assert!(error.is_invalid_config());
        assert!(error.to_string().contains("plaintext URL to another machine"), "{error}");
    }

    #[test]
    #[cfg(not(process_backend))]
    fn process_backend_needs_its_feature() {
        let error = PoolBuilder::new().backend(Backend::Process).build().unwrap_err();
        assert!(error.is_backend_unavailable());
        assert!(error.to_string().contains("`process` feature"), "{error}");
    }
}
