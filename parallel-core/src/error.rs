//! Errors: [`TaskError`] for what happened to one task, [`Error`] for building a pool.

use std::fmt;

use crate::Backend;

/// Why a task did not produce its output.
///
/// Every [`TaskHandle`](crate::TaskHandle) resolves exactly once, to the task's output or to one
/// of these. `Display` tells the whole story in one line: what failed, which task and why.
///
/// # Examples
///
/// ```
/// use parallel::{task, TaskError};
///
/// #[task]
/// fn parse(text: String) -> Result<u32, String> {
///     text.parse().map_err(|_| format!("not a number: {text:?}"))
/// }
///
/// #[task]
/// fn boom() -> u32 {
///     panic!("out of cheese")
/// }
///
/// fn main() {
///     match parse::dispatch("x".into()).join() {
///         Err(TaskError::Failed(message)) => assert_eq!(message, "not a number: \"x\""),
///         other => panic!("{other:?}"),
///     }
///     match boom::dispatch().join() {
///         Err(error @ TaskError::Panicked { .. }) => {
///             assert!(error.to_string().contains("out of cheese"));
///         }
///         other => panic!("{other:?}"),
///     }
/// }
/// ```
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq)]
pub enum TaskError<E> {
    /// The task ran and returned `Err(e)`: the task's own, typed error.
    Failed(E),
    /// The task panicked; the worker survived.
    #[non_exhaustive]
    Panicked {
        /// The name of the task that panicked.
        task: String,
        /// The panic message (`"Box<dyn Any>"` when the payload was not a string).
        message: String,
        /// `file:line:column` of the panic, when the panic hook of `parallel` saw it.
        location: Option<String>,
        /// The worker's backtrace, captured when `RUST_BACKTRACE` is set.
        backtrace: Option<String>,
    },
    /// The worker process running the task exited or was killed.
    #[non_exhaustive]
    WorkerDied {
        /// The name of the task that was running.
        task: String,
        /// The worker's process id.
        pid: u32,
        /// How the worker ended: an exit code, a signal, a limit that was hit.
        reason: String,
        /// The last lines the worker wrote to its standard error.
        stderr_tail: String,
    },
    /// No worker process could be started to run the task (after retries with backoff): the
    /// executable cannot be started, or every worker died before it was ready.
    #[non_exhaustive]
    WorkerUnavailable {
        /// The name of the task that found no worker.
        task: String,
        /// Why the last attempt failed, with the worker's stderr when it had any.
        reason: String,
    },
    /// [`TaskHandle::join_timeout`](crate::TaskHandle::join_timeout) expired; the task was
    /// cancelled.
    TimedOut,
    /// The task was cancelled through [`TaskHandle::cancel`](crate::TaskHandle::cancel) or
    /// [`Pool::kill`](crate::Pool::kill) before it produced a result.
    Cancelled,
    /// A value did not serialize or deserialize on its way between caller and worker.
    #[non_exhaustive]
    Serialization {
        /// The name of the task.
        task: String,
        /// Which value: `"arguments"`, `"output"` or `"error"`.
        value: &'static str,
        /// What serde reported.
        message: String,
    },
    /// The worker has no task registered under this name.
    #[non_exhaustive]
    UnknownTask {
        /// The name that was asked for.
        task: String,
    },
    /// The pool was shut down or killed before the task was submitted.
    #[non_exhaustive]
    PoolClosed {
        /// The name of the task that was refused.
        task: String,
    },
}

impl<E> TaskError<E> {
    /// Maps the task's own error, keeping every other variant as it is.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::TaskError;
    ///
    /// let error: TaskError<u8> = TaskError::Failed(7);
    /// assert_eq!(error.map_failed(u32::from), TaskError::Failed(7u32));
    /// ```
    pub fn map_failed<F>(self, f: impl FnOnce(E) -> F) -> TaskError<F> {
        match self {
            TaskError::Failed(error) => TaskError::Failed(f(error)),
            TaskError::Panicked { task, message, location, backtrace } => {
                TaskError::Panicked { task, message, location, backtrace }
            }
            TaskError::WorkerDied { task, pid, reason, stderr_tail } => {
                TaskError::WorkerDied { task, pid, reason, stderr_tail }
            }
            TaskError::WorkerUnavailable { task, reason } => {
                TaskError::WorkerUnavailable { task, reason }
            }
            TaskError::TimedOut => TaskError::TimedOut,
            TaskError::Cancelled => TaskError::Cancelled,
            TaskError::Serialization { task, value, message } => {
                TaskError::Serialization { task, value, message }
            }
            TaskError::UnknownTask { task } => TaskError::UnknownTask { task },
            TaskError::PoolClosed { task } => TaskError::PoolClosed { task },
        }
    }

    /// Whether the task ran and returned its own error.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::TaskError;
    ///
    /// assert!(TaskError::Failed("no").is_failed());
    /// assert!(!TaskError::<&str>::Cancelled.is_failed());
    /// ```
    pub fn is_failed(&self) -> bool {
        matches!(self, TaskError::Failed(_))
    }

    pub(crate) fn panicked(task: &str, report: crate::unwind::PanicReport) -> Self {
        TaskError::Panicked {
            task: task.to_owned(),
            message: report.message,
            location: report.location,
            backtrace: report.backtrace,
        }
    }

    pub(crate) fn pool_closed(task: &str) -> Self {
        TaskError::PoolClosed { task: task.to_owned() }
    }
}

impl<E: fmt::Debug> fmt::Debug for TaskError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed(error) => f.debug_tuple("Failed").field(error).finish(),
            TaskError::Panicked { task, message, location, backtrace } => f
                .debug_struct("Panicked")
                .field("task", task)
                .field("message", message)
                .field("location", location)
                .field("backtrace", &backtrace.as_ref().map(|_| "<captured>"))
                .finish(),
            TaskError::WorkerDied { task, pid, reason, stderr_tail } => f
                .debug_struct("WorkerDied")
                .field("task", task)
                .field("pid", pid)
                .field("reason", reason)
                .field("stderr_tail", stderr_tail)
                .finish(),
            TaskError::WorkerUnavailable { task, reason } => f
                .debug_struct("WorkerUnavailable")
                .field("task", task)
                .field("reason", reason)
                .finish(),
            TaskError::TimedOut => f.write_str("TimedOut"),
            TaskError::Cancelled => f.write_str("Cancelled"),
            TaskError::Serialization { task, value, message } => f
                .debug_struct("Serialization")
                .field("task", task)
                .field("value", value)
                .field("message", message)
                .finish(),
            TaskError::UnknownTask { task } => {
                f.debug_struct("UnknownTask").field("task", task).finish()
            }
            TaskError::PoolClosed { task } => {
                f.debug_struct("PoolClosed").field("task", task).finish()
            }
        }
    }
}

impl<E: fmt::Display> fmt::Display for TaskError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed(error) => write!(f, "task failed: {error}"),
            TaskError::Panicked { task, message, location, .. } => {
                write!(f, "task `{task}` panicked")?;
                if let Some(location) = location {
                    write!(f, " at {location}")?;
                }
                write!(f, ": {message}")
            }
            TaskError::WorkerDied { task, pid, reason, stderr_tail } => {
                write!(f, "worker {pid} died while running task `{task}`: {reason}")?;
                let tail = stderr_tail.trim_end();
                if !tail.is_empty() {
                    write!(f, "; its stderr ended with: {}", tail.replace('\n', " | "))?;
                }
                Ok(())
            }
            TaskError::WorkerUnavailable { task, reason } => {
                write!(f, "no worker could be started for task `{task}`: {}", reason.replace('\n', " | "))
            }
            TaskError::TimedOut => f.write_str("task timed out and was cancelled"),
            TaskError::Cancelled => f.write_str("task was cancelled before it produced a result"),
            TaskError::Serialization { task, value, message } => {
                write!(f, "the {value} of task `{task}` did not cross the worker boundary: {message}")
            }
            TaskError::UnknownTask { task } => write!(
                f,
                "no task named `{task}` is registered in the worker; is it built from the same program?"
            ),
            TaskError::PoolClosed { task } => {
                write!(f, "task `{task}` was submitted to a pool that is shut down")
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for TaskError<E> {}

/// Why a pool could not be built.
///
/// # Examples
///
/// ```
/// use parallel::{Pool};
///
/// let error = Pool::builder().workers(0).build().unwrap_err();
/// assert!(error.is_invalid_config());
/// assert!(error.to_string().contains("at least one worker"));
/// // `Debug`, which `unwrap` prints, carries the same message.
/// assert!(format!("{error:?}").contains("message: \"invalid pool configuration: a pool needs"));
/// ```
pub struct Error {
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    DuplicateTask {
        name: &'static str,
        first: &'static str,
        second: &'static str,
    },
    // Only a build without the process or the cluster backend refuses a backend.
    #[cfg_attr(all(process_backend, feature = "cluster"), allow(dead_code))]
    BackendUnavailable(Backend),
    InvalidConfig(String),
    // Only the cluster backend connects to anything.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    Connection(String),
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn duplicate_task(
        name: &'static str,
        first: &'static str,
        second: &'static str,
    ) -> Self {
        Error { kind: ErrorKind::DuplicateTask { name, first, second } }
    }

    #[cfg_attr(all(process_backend, feature = "cluster"), allow(dead_code))]
    pub(crate) fn backend_unavailable(backend: Backend) -> Self {
        Error { kind: ErrorKind::BackendUnavailable(backend) }
    }

    pub(crate) fn invalid_config(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::InvalidConfig(message.into()) }
    }

    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn connection(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Connection(message.into()) }
    }

    pub(crate) fn io(what: &'static str, source: std::io::Error) -> Self {
        Error { kind: ErrorKind::Io { what, source } }
    }

    /// Two tasks in the program are registered under the same name.
    ///
    /// # Examples
    ///
    /// The message names both Rust types and the shared name, so the fix is one `name = "..."`
    /// away:
    ///
    /// ```
    /// match parallel::Pool::builder().build() {
    ///     Ok(pool) => drop(pool), // this program gives every task its own name
    ///     Err(error) if error.is_duplicate_task() => panic!("rename a task: {error}"),
    ///     Err(error) => panic!("{error}"),
    /// }
    /// ```
    pub fn is_duplicate_task(&self) -> bool {
        matches!(self.kind, ErrorKind::DuplicateTask { .. })
    }

    /// The chosen backend is not compiled into this build.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::{Backend, Pool};
    ///
    /// if let Err(error) = Pool::builder().backend(Backend::Process).build() {
    ///     assert!(error.is_backend_unavailable());
    /// }
    /// ```
    pub fn is_backend_unavailable(&self) -> bool {
        matches!(self.kind, ErrorKind::BackendUnavailable(_))
    }

    /// A setting (in the builder or a `PARALLEL_*` variable) is out of range or malformed.
    ///
    /// # Examples
    ///
    /// ```
    /// let error = parallel::Pool::builder().workers(0).build().unwrap_err();
    /// assert!(error.is_invalid_config());
    /// ```
    pub fn is_invalid_config(&self) -> bool {
        matches!(self.kind, ErrorKind::InvalidConfig(_))
    }

    /// A cluster pool could not reach its NATS server, or the server refused its credentials
    /// (feature `cluster`).
    ///
    /// # Examples
    ///
    /// ```
    /// let error = parallel::Pool::builder().workers(0).build().unwrap_err();
    /// assert!(!error.is_connection());
    /// ```
    pub fn is_connection(&self) -> bool {
        matches!(self.kind, ErrorKind::Connection(_))
    }

    /// The operating system refused something the pool needs (a thread, a process, a pipe).
    ///
    /// # Examples
    ///
    /// ```
    /// let error = parallel::Pool::builder().workers(0).build().unwrap_err();
    /// assert!(!error.is_io());
    /// ```
    pub fn is_io(&self) -> bool {
        matches!(self.kind, ErrorKind::Io { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::DuplicateTask { name, first, second } => write!(
                f,
                "task name `{name}` is registered twice, by `{first}` and by `{second}`; \
                 give one of them another name with #[task(name = \"...\")]"
            ),
            ErrorKind::BackendUnavailable(Backend::Cluster) => write!(
                f,
                "the Cluster backend is not available in this build; enable the `cluster` \
                 feature of `parallel`"
            ),
            ErrorKind::BackendUnavailable(backend) if cfg!(feature = "process") => write!(
                f,
                "the {backend:?} backend runs on Linux only; on this platform use the Thread \
                 backend"
            ),
            ErrorKind::BackendUnavailable(backend) => write!(
                f,
                "the {backend:?} backend is not available in this build; \
                 enable the `process` feature of `parallel`"
            ),
            ErrorKind::InvalidConfig(message) => write!(f, "invalid pool configuration: {message}"),
            ErrorKind::Connection(message) => write!(f, "cluster unreachable: {message}"),
            ErrorKind::Io { what, source } => write!(f, "could not {what}: {source}"),
        }
    }
}

/// The kind, then the message that `Display` writes: `unwrap()` on a `Result<_, Error>` prints
/// this, and a bare kind (`BackendUnavailable(Process)`) would not say what to do about it.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.to_string())
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_an_error_carries_its_message() {
        let error = Error::invalid_config("a pool needs at least one worker, not 0");
        assert_eq!(
            format!("{error:?}"),
            "Error { kind: InvalidConfig(\"a pool needs at least one worker, not 0\"), \
             message: \"invalid pool configuration: a pool needs at least one worker, not 0\" }"
        );
        let error = Error::backend_unavailable(Backend::Process);
        let expected = if cfg!(feature = "process") {
            "Error { kind: BackendUnavailable(Process), message: \"the Process backend runs on \
             Linux only; on this platform use the Thread backend\" }"
        } else {
            "Error { kind: BackendUnavailable(Process), message: \"the Process backend is not \
             available in this build; enable the `process` feature of `parallel`\" }"
        };
        assert_eq!(format!("{error:?}"), expected);
    }
}
