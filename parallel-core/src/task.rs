//! The [`Task`] trait: what a unit of work is, what it returns and how it fails.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Environment, Policy};

/// A unit of work that a [`Pool`](crate::Pool) runs on one of its workers.
///
/// `#[task]` implements this trait for the arguments of a plain function; write it by hand for a
/// task that carries more than a function's arguments, and put `#[task]` on the `impl` block so the
/// task is registered (the attribute fills in [`NAME`](Task::NAME) when it is left out).
///
/// The task value, its output and its error all cross the process boundary on the process
/// backend, so all three are serde types. The [`Environment`] belongs to the worker that runs the
/// task and never crosses anything.
///
/// # Examples
///
/// ```
/// use parallel::{task, Environment, RemoteError, Task};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Repeat {
///     text: String,
///     times: usize,
/// }
///
/// #[task]
/// impl Task for Repeat {
///     type Output = String;
///     type Error = RemoteError;
///
///     fn run(self, _env: &mut Environment) -> Result<String, RemoteError> {
///         Ok(self.text.repeat(self.times))
///     }
/// }
///
/// fn main() {
///     let handle = parallel::default_pool().submit(Repeat { text: "ab".into(), times: 3 });
///     assert_eq!(handle.join().unwrap(), "ababab");
///     assert!(Repeat::NAME.ends_with("::Repeat"));
/// }
/// ```
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// What the task returns when it succeeds.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// What the task returns when it fails; [`Never`](crate::Never) for a task that cannot fail.
    type Error: Serialize + DeserializeOwned + Send + 'static;
    /// What the task reports while it runs, through its [`Progress`](crate::Progress) sender;
    /// [`Never`](crate::Never) for a task that reports nothing. `#[task]` writes it: from a
    /// function's `progress: &Progress<P>` parameter, and as `Never` on an `impl` block that
    /// leaves it out (a hand-written impl without `#[task]` writes it itself).
    type Progress: Serialize + DeserializeOwned + Send + 'static;
    /// The name the task is registered under; unique in the program.
    const NAME: &'static str;
    /// The task's types as its source writes them: the arguments with their names, the output,
    /// the error and the progress messages. `#[task]` writes it. The cluster backend sends a task
    /// only to serving processes whose task of that name has the same signature (and the same
    /// Rust types), so that code of another build never decodes it.
    const SIGNATURE: &'static str = "";
    /// Whether [`run`](Task::run) drives an `async fn` on its worker's tokio runtime (feature
    /// `tokio`); `#[task]` on an `async fn` sets it. A worker waiting for such a task from inside
    /// another async task leaves it to another worker instead of running it in place.
    const ASYNC: bool = false;
    /// How the task is run: a limit per attempt, retries, the backoff between them (see
    /// [`Policy`]). `#[task(timeout = "2s", retries = 3, backoff = "100ms", retry_failed)]` writes
    /// it, on a function or on an `impl Task` block; by default a task runs once, without limit.
    const POLICY: Policy = Policy::DEFAULT;

    /// Runs the task on a worker, with that worker's [`Environment`].
    ///
    /// # Errors
    ///
    /// Whatever the task itself reports; it reaches the caller as
    /// [`TaskError::Failed`](crate::TaskError::Failed).
    fn run(self, env: &mut Environment) -> Result<Self::Output, Self::Error>;
}

/// The smallest task, for the runtime's own unit tests and loom models: it returns 1.
#[cfg(test)]
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Unit;

#[cfg(test)]
impl Task for Unit {
    type Output = u8;
    type Error = crate::Never;
    type Progress = crate::Never;
    const NAME: &'static str = "parallel_core::task::Unit";

    fn run(self, _: &mut Environment) -> Result<u8, crate::Never> {
        Ok(1)
    }
}
