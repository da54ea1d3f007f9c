//! The `#[task]` attribute of [`parallel`](https://docs.rs/parallel).
//!
//! Users reach it as `parallel::task`; the code it generates stands on `parallel`'s runtime
//! through the hidden `parallel::__private` module. The attribute works in stages: `attr` and
//! `ast` parse the attribute and the item into a typed model, `check` records every mistake in
//! it, `expand` generates the code; `errors` gathers the mistakes so that one build reports them
//! all, and `fallback` stands in for the generated module when there are some.

mod ast;
mod attr;
mod check;
mod errors;
mod expand;
mod fallback;

use proc_macro::TokenStream;
use quote::quote;

use crate::ast::Input;
use crate::errors::Errors;

/// Turns a plain function into a task that a pool runs on its workers, or registers a
/// hand-written `impl Task for X`.
///
/// On `fn NAME(a: A, b: B) -> R`, the function stays as it is and a module `NAME` appears beside
/// it, with the function's visibility:
///
/// | item | meaning |
/// | --- | --- |
/// | `NAME::Task` | `struct Task { pub a: A, pub b: B }`: the arguments, a serde type that implements `Task` |
/// | `NAME::new(a, b)` | builds a `NAME::Task`, for `Pool::submit` and `Pool::map` |
/// | `NAME::dispatch(a, b)` | runs the function on the default pool and returns its `TaskHandle` |
/// | `NAME::dispatch_on(&pool, a, b)` | runs it on `pool` |
///
/// A function returning `Result<T, E>` is a fallible task (`Output = T`, `Error = E`); any other
/// return type `R` makes an infallible one (`Output = R`, `Error = Never`). A first parameter
/// `&mut Environment` (or `&Environment`) receives the worker's environment when the task runs;
/// it is not an argument of `new` or `dispatch` and is never sent.
///
/// An `async fn` is a task too, with the `tokio` feature of `parallel`: each worker runs its
/// async tasks on a current-thread tokio runtime of its own, created by its first async task and
/// kept for the worker's whole life, so that clients and pools kept in its `Environment`, and
/// tasks they `tokio::spawn`, keep working from one task to the next (they wait while the worker
/// runs no async task). The caller's side does not change: `dispatch`, `join`, `.await`. A panic,
/// a crash or a timeout of an async task is reported as for any task. On a thread pool, an async
/// task that waits for another async task of the same pool needs another free worker for it (its
/// own thread drives its runtime and cannot run a second one in place).
///
/// The task is registered under `module_path!()` followed by `::NAME`, or under the name given
/// with `#[task(name = "billing::charge")]`. `#[task(crate = path::to::parallel)]` names the
/// runtime when it is not reachable as `::parallel`, for a crate that re-exports it.
///
/// A `Vec<u8>` argument, output or error crosses to a worker process as one byte string. A large
/// `Vec<u8>` inside a type of your own is written as a byte string too, but serde reads it back
/// one byte at a time (over 20 times slower for 200 MiB): mark such a field
/// `#[serde(with = "serde_bytes")]` (crate `serde_bytes`), or take it as an argument of its own.
///
/// # Policies: timeouts and retries
///
/// `#[task(timeout = "2s", retries = 3, backoff = "100ms", retry_failed)]` sets the task's
/// `Task::POLICY` (see `parallel::Policy`); each key is optional, and the same keys work on an
/// impl block:
///
/// - `timeout = "DURATION"`: the limit of each attempt (`"250ms"`, `"2s"`, `"1.5s"`, `"1m"`,
///   `"1h"`). On expiry the attempt ends as `TimedOut`: on the process backend its worker is
///   killed and replaced; on the thread backend the attempt is abandoned (the thread runs it to
///   its end and its result is dropped). The clock starts when a worker is handed the attempt;
///   on worker processes such a task is handed only to a worker with nothing else to do, so it
///   never waits behind another task on its clock.
/// - `retries = N` (default 0): an attempt that did not return — `Panicked`, `WorkerDied`,
///   `TimedOut` — runs again, up to `N` more times. The handle resolves once, with the last
///   attempt's outcome. Without `retries`, nothing ever runs twice.
/// - `retry_failed`: the task's own `Err(e)` is retried too (without it, `Failed(e)` is the
///   answer). Only on a task that can fail, and with `retries`.
/// - `backoff = "DURATION"` (default `"100ms"`, at most `"1m"`): the wait before the first retry,
///   doubled for each later one, with a jitter of at most +25%, capped at one minute.
///
/// A retried task is kept as bytes for its later attempts, so its arguments must serialize (they
/// must anyway, to cross to a worker process). A cancel, a `join_timeout` or a `kill` during a
/// backoff resolves the handle and no retry runs; `shutdown` waits for the retries of the tasks
/// it finishes; a dropped pool runs no more retries: a task waiting for one resolves with its
/// last attempt's outcome at the end of the backoff. `PoolStats::retries` counts the retries.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use parallel::{task, Pool, TaskError};
///
/// static CALLS: AtomicU32 = AtomicU32::new(0);
///
/// /// Fails twice, then answers (on the thread backend, where a static counts every call).
/// #[task(retries = 2, backoff = "10ms", retry_failed)]
/// fn flaky(n: u32) -> Result<u32, String> {
///     match CALLS.fetch_add(1, Ordering::SeqCst) {
///         0 | 1 => Err("not yet".to_owned()),
///         _ => Ok(n),
///     }
/// }
///
/// #[task(timeout = "100ms")]
/// fn slow() -> u32 {
///     std::thread::sleep(std::time::Duration::from_secs(1));
///     1
/// }
///
/// fn main() {
///     let pool = Pool::builder().backend(parallel::Backend::Thread).build().unwrap();
///     assert_eq!(flaky::dispatch_on(&pool, 7).join(), Ok(7));
///     assert_eq!(pool.stats().retries, 2);
///     assert_eq!(slow::dispatch_on(&pool).join(), Err(TaskError::TimedOut));
/// }
/// ```
///
/// # Compile errors
///
/// Arguments, output and error cross the worker boundary, so each must be
/// `Serialize + DeserializeOwned + Send + 'static`; the compiler reports a type that is not at
/// the type itself. The attribute also rejects, each at the offending token and with what to
/// write instead, all in one build: `unsafe fn`, `extern fn`, `async fn` without the `tokio`
/// feature; generic parameters,
/// lifetimes, `where` clauses and `impl Trait` arguments; a `self` receiver; borrowed arguments
/// or outputs (`&str`: take `String`; `&[T]`: take `Vec<T>`; `&T`: take `T`); an `Environment`
/// that is not the first parameter, a second one, or one taken by value; an argument pattern
/// that is not a plain name; an unknown or repeated attribute key; a malformed duration, a
/// zero `timeout`, a `backoff` over a minute, `retries` that is not a whole number, and
/// `retry_failed` without `retries` or on a task that cannot fail. The function itself is still
/// emitted, and a stub of `mod NAME` beside it, so the rest of the crate keeps compiling while the
/// task is fixed: a mistake is one error, not one more at each `NAME::dispatch`.
///
/// A `#[task]` function may also be declared in a block (a `fn main` body, a test, a doc test):
/// `NAME::dispatch` and the rest work there as well, and its output and error types may be the
/// block's own. Its argument types may not: they travel in `NAME::Task`, a struct of the module
/// `NAME`, which sees the enclosing module's items but not the block's, so an argument type
/// declared in the block is "not found"; declare it in the module. The default name of a task in
/// a block is the enclosing module's path followed by `::NAME`, so two such tasks with one name
/// in one module are refused as duplicates when a pool is built: give one a `name = "..."`.
///
/// # Examples
///
/// ```
/// use parallel::{task, Environment, Task, TaskError};
///
/// #[task]
/// fn add(a: i64, b: i64) -> i64 {
///     a + b
/// }
///
/// #[task]
/// fn visits(env: &mut Environment, user: String) -> u64 {
///     let n = env.get_or_insert_with(&user, || 0u64);
///     *n += 1;
///     *n
/// }
///
/// #[task(name = "text::parse")]
/// fn parse(text: String) -> Result<u32, String> {
///     text.parse().map_err(|_| format!("not a number: {text:?}"))
/// }
///
/// fn main() {
///     assert_eq!(add::dispatch(1, 2).join().unwrap(), 3);
///     assert_eq!(add(1, 2), 3); // the function stays callable
///     assert_eq!(add::new(1, 2).a, 1);
///     assert!(visits::dispatch("ann".into()).join().unwrap() >= 1);
///     assert_eq!(parse::Task::NAME, "text::parse");
///     match parse::dispatch("x".into()).join() {
///         Err(TaskError::Failed(message)) => assert_eq!(message, "not a number: \"x\""),
///         other => panic!("{other:?}"),
///     }
/// }
/// ```
///
/// On an impl block, `#[task]` registers a hand-written task, filling in `NAME` (as
/// `module_path!()` followed by `::` and the type's name) when the impl leaves it out:
///
/// ```
/// use parallel::{task, Environment, Never, Task};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Shout {
///     text: String,
/// }
///
/// #[task]
/// impl Task for Shout {
///     type Output = String;
///     type Error = Never;
///
///     fn run(self, _env: &mut Environment) -> Result<String, Never> {
///         Ok(self.text.to_uppercase())
///     }
/// }
///
/// assert!(Shout::NAME.ends_with("::Shout"));
/// assert!(parallel::registered_tasks().contains(&Shout::NAME));
/// let shout = parallel::default_pool().submit(Shout { text: "hi".into() });
/// assert_eq!(shout.join().unwrap(), "HI");
/// ```
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let mut errors = Errors::default();
    let args = attr::parse(attr.into(), &mut errors);
    let input = match ast::parse(item.clone()) {
        Ok(input) => input,
        Err(error) => {
            errors.push(error);
            return with_errors(item, errors);
        }
    };
    check::input(&args, &input, &mut errors);
    if errors.is_empty() {
        return expand::input(&args, &input).into();
    }
    match &input {
        // A `self` receiver means a method, in an impl or a trait, where no module may stand.
        Input::Fn(task) if !task.has_receiver() => {
            let stub = fallback::task_fn(&args, task);
            with_errors(quote!(#item #stub), errors)
        }
        // The impl block names its own type, which callers use; it needs no stand-in, only the
        // `type Progress` that `#[task]` would write (one mistake is one error).
        Input::Impl(task) => {
            let root = expand::root(&args);
            let mut item = task.item.clone();
            expand::fill_progress(&quote!(#root::__private), &mut item);
            with_errors(quote!(#item), errors)
        }
        Input::Fn(_) => with_errors(item, errors),
    }
}

/// The user's item unchanged (with the stub of its module, for a function), followed by the
/// errors: the rest of the crate (and the IDE) keeps seeing the function and its module while the
/// mistakes are fixed.
fn with_errors(item: proc_macro2::TokenStream, errors: Errors) -> TokenStream {
    let errors = errors.finish().err().map(|error| error.to_compile_error());
    quote!(#item #errors).into()
}
