//! `parallel` runs plain Rust functions as tasks on a pool of workers — the threads of a rayon
//! pool, or (with the `process` feature) child processes started from your own executable — and
//! gives each worker an [`Environment`] that persists between the tasks it runs.
//!
//! # A tour
//!
//! Put `#[task]` on a function. The function stays callable as it is, and a module of the same
//! name appears beside it with `new`, `dispatch` and `dispatch_on`:
//!
//! ```
//! use parallel::{task, Backend, Environment, Pool, TaskError};
//!
//! #[task]
//! fn add(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//!
//! // The worker's Environment is injected, never serialized; it outlives the task.
//! #[task]
//! fn visits(env: &mut Environment, user: String) -> u64 {
//!     let n = env.get_or_insert_with(&user, || 0u64);
//!     *n += 1;
//!     *n
//! }
//!
//! #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! enum ParseError {
//!     Empty,
//!     Bad(String),
//! }
//!
//! // A `Result` return makes a fallible task with a typed error.
//! #[task]
//! fn parse(text: String) -> Result<u32, ParseError> {
//!     if text.is_empty() {
//!         return Err(ParseError::Empty);
//!     }
//!     text.parse().map_err(|_| ParseError::Bad(text))
//! }
//!
//! fn main() {
//!     // `dispatch` runs on the default pool; `join` waits for the result.
//!     let three = add::dispatch(1, 2).join().unwrap();
//!     assert_eq!(add(1, 2), three);
//!
//!     // A pool of your own: one worker here, so both visits land in the same Environment.
//!     let pool = Pool::builder().backend(Backend::Thread).workers(1).build().unwrap();
//!     assert_eq!(visits::dispatch_on(&pool, "ann".into()).join().unwrap(), 1);
//!     assert_eq!(visits::dispatch_on(&pool, "ann".into()).join().unwrap(), 2);
//!
//!     // The task's own error comes back typed; panics, timeouts and crashes have variants too.
//!     match parse::dispatch_on(&pool, String::new()).join() {
//!         Err(TaskError::Failed(ParseError::Empty)) => {}
//!         other => panic!("{other:?}"),
//!     }
//!
//!     // `map` streams results in input order, with a bounded window in flight.
//!     let sums: Vec<i64> = pool.map((0..1000).map(|i| add::new(i, i))).map(Result::unwrap).collect();
//!     assert_eq!(sums[999], 1998);
//! }
//! ```
//!
//! No `init()` call, no attribute on `main`: tasks are found through a table the linker builds
//! ([`registered_tasks`]), complete before `main` runs. Tasks are module-level items: the module
//! `#[task]` generates names the function through `super::`, so a task cannot be declared inside
//! a function body (a doc test that declares tasks writes its own `fn main`, as above).
//!
//! # What you get back
//!
//! [`TaskHandle::join`] returns `Result<Output, TaskError<Error>>`. A [`TaskHandle`] is also a
//! `Future`, woken by the worker, so async code awaits it without blocking its runtime. Every
//! handle resolves exactly once: to the output, or to the [`TaskError`] that says what happened
//! ([`Failed`](TaskError::Failed), [`Panicked`](TaskError::Panicked),
//! [`TimedOut`](TaskError::TimedOut), [`Cancelled`](TaskError::Cancelled), ...).
//!
//! # Hand-written tasks
//!
//! A task that carries more than a function's arguments implements [`Task`] itself; `#[task]`
//! on the `impl` block registers it. [`RemoteError`] lets `?` work on any error type:
//!
//! ```
//! use parallel::{task, Environment, RemoteError, Task};
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct WordCount {
//!     text: String,
//! }
//! #[task]
//! impl Task for WordCount {
//!     type Output = usize;
//!     type Error = RemoteError;
//!
//!     fn run(self, _env: &mut Environment) -> Result<usize, RemoteError> {
//!         Ok(self.text.split_whitespace().count())
//!     }
//! }
//!
//! fn main() {
//!     let count = parallel::default_pool().submit(WordCount { text: "a b c".into() });
//!     assert_eq!(count.join().unwrap(), 3);
//! }
//! ```
//!
//! # Configuration
//!
//! The default pool has one worker per core and uses the thread backend, or the process backend
//! when `parallel` is built with the `process` feature.
//! `PARALLEL_BACKEND=thread|process` and `PARALLEL_WORKERS=N` override both at run time, for the
//! default pool and for every builder that leaves the setting out ([`PoolBuilder`]).

pub use parallel_core::{
    as_completed, default_pool, registered_tasks, AsCompleted, Backend, Environment, Error, Map,
    MapUnordered, Never, Policy, Pool, PoolBuilder, PoolStats, Progress, ProgressReader,
    RemoteError, Task, TaskError, TaskHandle,
};

pub use parallel_macros::task;

/// The examples of [`task`]'s documentation, which lives in `parallel-macros` (docs.rs shows it
/// here, on `parallel::task`), run as this crate's doc tests: built once, with the facade's other
/// doc tests, rather than for the host as a proc-macro crate's doc tests are.
#[cfg(doctest)]
#[doc = include_str!("../parallel-macros/src/task.md")]
mod task_attribute {}

#[cfg(feature = "cluster")]
pub use parallel_core::serve;

#[doc(hidden)]
pub use parallel_core::__private;
