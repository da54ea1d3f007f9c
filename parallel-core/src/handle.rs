//! [`TaskHandle`]: the caller's end of one submitted task.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::job::{Job, Outcome, Wait};
use crate::{ProgressReader, Task, TaskError};

/// The caller's end of a submitted task: wait for it, poll it, or cancel it.
///
/// A handle resolves exactly once, to the task's output or to a [`TaskError`]. Dropping a handle
/// does not cancel its task: the task still runs, and its result is dropped.
///
/// It is also a [`Future`] with the same output as [`join`](Self::join), woken by the worker that
/// resolves it: awaiting it never blocks the async runtime and needs no polling thread. One
/// exception, to rule out a deadlock: polled on a worker thread of the task's own thread pool
/// (a task that awaits, or `block_on`s, a task it dispatched to its pool) while the task is still
/// queued, `poll` runs the task in place, as [`join`](Self::join) does, and returns `Ready`.
///
/// # Examples
///
/// ```
/// #[parallel::task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() {
///     let handles: Vec<_> = (0..4).map(square::dispatch).collect();
///     let squares: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
///     assert_eq!(squares, [0, 1, 4, 9]);
/// }
/// ```
#[must_use = "a dropped handle does not cancel its task, but its result is lost"]
pub struct TaskHandle<T: Task> {
    job: Arc<Job<T>>,
}

impl<T: Task> TaskHandle<T> {
    pub(crate) fn new(job: Arc<Job<T>>) -> Self {
        TaskHandle { job }
    }

    /// Blocks until the task is resolved and returns its output or error.
    ///
    /// Called from inside a task of the same thread pool while the awaited task is still queued,
    /// it runs that task right here instead of waiting for a free worker, so a task that
    /// dispatches another task and joins it cannot deadlock even a pool of one.
    ///
    /// # Errors
    ///
    /// [`TaskError::Failed`] with the task's own error, or another [`TaskError`] variant telling
    /// why no output exists (panic, cancellation, worker death, ...).
    ///
    /// # Examples
    ///
    /// ```
    /// #[parallel::task]
    /// fn add(a: i64, b: i64) -> i64 {
    ///     a + b
    /// }
    ///
    /// fn main() {
    ///     assert_eq!(add::dispatch(2, 3).join().unwrap(), 5);
    /// }
    /// ```
    pub fn join(self) -> Result<T::Output, TaskError<T::Error>> {
        loop {
            let may_run_here = Engine::help(&self.job);
            // Queued again for a retry: helped again (it may have to run right here).
            if let Wait::Done(outcome) = self.job.wait_for_turn(None, may_run_here) {
                return outcome;
            }
        }
    }

    /// Like [`join`](Self::join), but gives up after `timeout`: the task is then cancelled and
    /// `Err(TaskError::TimedOut)` returned.
    ///
    /// On the thread backend a task that is already running cannot be stopped: it is abandoned,
    /// runs to its end on its worker thread, and its result is dropped. A task that has not
    /// started yet never starts.
    ///
    /// Called from inside a task of the same thread pool while the awaited task is still queued,
    /// it runs that task right here, as [`join`](Self::join) does, and returns its result even
    /// if that took longer than `timeout`: on a pool whose workers all wait, the task would
    /// otherwise never start and the wait would always time out.
    ///
    /// # Errors
    ///
    /// [`TaskError::TimedOut`] when the time is up, otherwise as [`join`](Self::join).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use parallel::TaskError;
    ///
    /// #[parallel::task]
    /// fn nap(millis: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(millis));
    ///     millis
    /// }
    ///
    /// fn main() {
    ///     assert_eq!(nap::dispatch(1).join_timeout(Duration::from_secs(60)), Ok(1));
    ///     assert_eq!(nap::dispatch(2_000).join_timeout(Duration::from_millis(10)), Err(TaskError::TimedOut));
    /// }
    /// ```
    pub fn join_timeout(self, timeout: Duration) -> Result<T::Output, TaskError<T::Error>> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let may_run_here = Engine::help(&self.job);
            match self.job.wait_for_turn(deadline, may_run_here) {
                Wait::Done(outcome) => return outcome,
                // Queued again for a retry: helped again (it may have to run right here).
                Wait::Requeued => continue,
                Wait::Expired => break,
            }
        }
        self.job.cancel();
        // The task may have resolved between the deadline and the cancel; then its result stands.
        match self.job.wait(Some(Instant::now())) {
            Some(Err(TaskError::Cancelled)) | None => Err(TaskError::TimedOut),
            Some(outcome) => outcome,
        }
    }

    /// Cancels the task: a queued task never runs; a running one resolves as
    /// [`TaskError::Cancelled`] at once (on the thread backend it is abandoned and runs to its
    /// end, its result dropped). Does nothing to a task that is already resolved.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::{Pool, TaskError};
    ///
    /// #[parallel::task]
    /// fn id(x: u32) -> u32 {
    ///     x
    /// }
    ///
    /// fn main() {
    ///     let pool = Pool::builder().workers(1).build().unwrap();
    ///     let handle = id::dispatch_on(&pool, 7);
    ///     handle.cancel();
    ///     match handle.join() {
    ///         Ok(7) | Err(TaskError::Cancelled) => {} // it may have finished before the cancel
    ///         other => panic!("{other:?}"),
    ///     }
    /// }
    /// ```
    pub fn cancel(&self) {
        self.job.cancel();
    }

    /// Cancels the task because nobody wants its result (a dropped `Map`): a task not started
    /// never starts, and a short running one is left to finish instead of killing its worker.
    pub(crate) fn abandon(&self) {
        self.job.abandon();
    }

    /// The messages the task sends through its [`Progress`](crate::Progress) while it runs: a
    /// blocking [`Iterator`] that is also a [`Stream`](futures_core::Stream), and ends once the
    /// task is resolved and every message it sent is yielded. [`join`](Self::join) still returns
    /// the result, before, during or after the reading.
    ///
    /// Messages come in the order sent, from every attempt (a retried task's failed attempts
    /// included; [`ProgressReader::attempt`] tells which). While no reader exists the handle
    /// keeps the newest 65 536 messages and drops older ones ([`ProgressReader::dropped`] counts
    /// them), so a task whose messages nobody reads holds bounded memory; while a reader exists
    /// nothing is dropped. Several readers of one handle share its messages.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::{task, Progress};
    ///
    /// #[task]
    /// fn crawl(progress: &Progress<String>, root: String) -> usize {
    ///     let pages = ["a", "b", "c"];
    ///     for page in pages {
    ///         progress.send(format!("{root}/{page}"));
    ///     }
    ///     pages.len()
    /// }
    ///
    /// fn main() {
    ///     let handle = crawl::dispatch("https://example.org".into());
    ///     let found: Vec<String> = handle.progress().collect();
    ///     assert_eq!(found[0], "https://example.org/a");
    ///     assert_eq!(handle.join(), Ok(3));
    /// }
    /// ```
    pub fn progress(&self) -> ProgressReader<T::Progress> {
        self.job.feed().attach()
    }

    /// Whether the task is resolved, so that [`join`](Self::join) would not block.
    ///
    /// # Examples
    ///
    /// ```
    /// #[parallel::task]
    /// fn one() -> u8 {
    ///     1
    /// }
    ///
    /// fn main() {
    ///     let handle = one::dispatch();
    ///     while !handle.is_finished() {
    ///         std::thread::yield_now();
    ///     }
    ///     assert_eq!(handle.join(), Ok(1));
    /// }
    /// ```
    pub fn is_finished(&self) -> bool {
        self.job.is_finished()
    }
}

impl<T: Task> Future for TaskHandle<T> {
    type Output = Outcome<T>;

    /// Takes the result if the task is resolved, else registers the waker. On a worker thread
    /// of the task's own thread pool, a task still queued is first run in place (the worker
    /// that would run it may be this very thread, blocked in a `block_on`).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A retry queued after this help wakes the waker, which polls (and helps) again.
        let _ = Engine::help(&self.job);
        match self.job.poll(cx.waker()) {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }
}

impl<T: Task> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("task", &T::NAME)
            .field("is_finished", &self.is_finished())
            .finish()
    }
}
