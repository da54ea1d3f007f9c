//! Progress: messages a running task sends back to its caller while it runs.
//!
//! A task's side is a [`Progress`] sender; the caller's side is the handle's [`ProgressReader`],
//! reading the job's [`Feed`]: one queue per job, in the order sent, which every attempt of the
//! job appends to. On the thread backend a sender pushes straight into the feed; on the process
//! backend it serializes the message into the worker's reply stream, in order with the reply, and
//! the pool's reader thread decodes it into the feed (see `process/slot/reader.rs`), so a worker
//! that crashes after a `send` still delivers what it sent before.
//!
//! The worker lends the running attempt's sender to the task through a thread-local for the time
//! of [`Task::run`](crate::Task::run) ([`scope`]); `#[task]` reads it there with
//! [`Progress::current`], and so may a hand-written task. A task run in place inside another
//! (rayon runs a queued task on a thread that waits in `join`) gets its own and gives the outer
//! one back when it returns.
//!
//! Invariants of a feed: a message is taken only from the attempt that runs now (a send after
//! its attempt ended, from a thread the task left behind, is dropped); once the job is resolved
//! the feed is closed and takes nothing more, so a reader that finds it closed and empty has
//! seen every message the job's attempts sent; without a reader attached it keeps the newest
//! [`KEPT`] messages.

use std::any::{type_name, Any, TypeId};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::Never;

/// How many messages a job keeps while no [`ProgressReader`] of it exists: the newest ones.
pub(crate) const KEPT: usize = 65_536;

/// The sending end of a task's progress messages, lent to the task while it runs.
///
/// A task function receives it by writing a parameter `progress: &Progress<P>` before its
/// arguments (beside `env: &mut Environment`, in either order); `P` is then the task's
/// [`Task::Progress`](crate::Task::Progress), and must be `Serialize + DeserializeOwned + Send +
/// 'static` like the task's other values. A hand-written task reaches its sender with
/// [`Progress::current`]. The caller reads the messages with
/// [`TaskHandle::progress`](crate::TaskHandle::progress).
///
/// [`send`](Self::send) never waits for the caller. A `Progress` is `Clone + Send + Sync`: a
/// task may hand it to threads it starts; what they send after the attempt ended is dropped.
///
/// # Examples
///
/// ```
/// use parallel::{task, Progress};
///
/// #[task]
/// fn count_to(progress: &Progress<u32>, n: u32) -> u32 {
///     for i in 1..=n {
///         progress.send(i);
///     }
///     n
/// }
///
/// fn main() {
///     let handle = count_to::dispatch(3);
///     let seen: Vec<u32> = handle.progress().collect();
///     assert_eq!(seen, [1, 2, 3]);
///     assert_eq!(handle.join(), Ok(3));
/// }
/// ```
pub struct Progress<P> {
    route: Route<P>,
}

enum Route<P> {
    /// Nowhere: the task runs outside a pool (its `run` called directly).
    Detached,
    /// Into the job's feed, in this process (thread backend).
    Local { feed: Arc<Feed<P>>, attempt: u32 },
    /// Into the worker's reply stream (process backend).
    #[cfg_attr(not(process_backend), allow(dead_code))]
    Remote(Arc<dyn Outbox>),
}

/// Where a worker process puts the progress messages of the job it runs: its reply stream.
#[cfg_attr(not(process_backend), allow(dead_code))]
pub(crate) trait Outbox: Send + Sync {
    /// Serializes `message` and sends it in order with the job's reply; dropped if the job's run
    /// has ended, or if it does not serialize or fit in a frame.
    fn post(&self, message: &dyn crate::wire_value::Encode);
}

impl<P: Send + 'static> Progress<P> {
    /// The sender of the task running on this thread, for a hand-written task: call it in
    /// [`Task::run`](crate::Task::run) with the task's own progress type, and move or clone the
    /// result to where it is used. Outside a task run by a pool (a `run` called directly, a
    /// thread the task started) it is a sender whose messages go nowhere.
    ///
    /// # Panics
    ///
    /// If `P` is not the running task's [`Task::Progress`](crate::Task::Progress): write
    /// `Progress::<Self::Progress>::current()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::{task, Environment, Never, Progress, Task};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Steps(u8);
    ///
    /// #[task]
    /// impl Task for Steps {
    ///     type Output = ();
    ///     type Error = Never;
    ///     type Progress = String;
    ///
    ///     fn run(self, _env: &mut Environment) -> Result<(), Never> {
    ///         let progress = Progress::<Self::Progress>::current();
    ///         for step in 0..self.0 {
    ///             progress.send(format!("step {step}"));
    ///         }
    ///         Ok(())
    ///     }
    /// }
    ///
    /// fn main() {
    ///     let handle = parallel::default_pool().submit(Steps(2));
    ///     assert_eq!(handle.progress().collect::<Vec<_>>(), ["step 0", "step 1"]);
    ///     handle.join().unwrap();
    /// }
    /// ```
    pub fn current() -> Progress<P> {
        CURRENT.with_borrow(|current| match current {
            None => Progress::detached(),
            Some(current) if current.type_id != TypeId::of::<P>() => panic!(
                "`Progress::<{}>::current()` in a task whose progress type is `{}`; write \
                 `Progress::<Self::Progress>::current()`",
                type_name::<P>(),
                current.type_name
            ),
            Some(current) => current.lent.sender(),
        })
    }
}

impl<P> Progress<P> {
    pub(crate) fn detached() -> Self {
        Progress { route: Route::Detached }
    }

    pub(crate) fn local(feed: Arc<Feed<P>>, attempt: u32) -> Self {
        Progress { route: Route::Local { feed, attempt } }
    }

    #[cfg_attr(not(process_backend), allow(dead_code))]
    pub(crate) fn remote(outbox: Arc<dyn Outbox>) -> Self {
        Progress { route: Route::Remote(outbox) }
    }
}

impl<P: serde::Serialize + 'static> Progress<P> {
    /// Sends `message` to the caller, without waiting for the caller to read it.
    ///
    /// Messages arrive in the order sent, with the attempt that sent them (see
    /// [`ProgressReader::attempt`]). On the process backend the message is serialized into the
    /// worker's reply stream at once; one that does not serialize, or is over the pool's
    /// `max_message_size`, is dropped. A send after the attempt ended is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::{task, Progress};
    ///
    /// #[task]
    /// fn halves(progress: &Progress<f32>) {
    ///     progress.send(0.5);
    ///     progress.send(1.0);
    /// }
    ///
    /// fn main() {
    ///     let handle = halves::dispatch();
    ///     assert_eq!(handle.progress().collect::<Vec<_>>(), [0.5, 1.0]);
    /// }
    /// ```
    pub fn send(&self, message: P) {
        match &self.route {
            Route::Detached => {}
            Route::Local { feed, attempt } => feed.push(*attempt, message),
            Route::Remote(outbox) => outbox.post(&crate::value::Wire(message)),
        }
    }
}

impl<P> Clone for Progress<P> {
    fn clone(&self) -> Self {
        let route = match &self.route {
            Route::Detached => Route::Detached,
            Route::Local { feed, attempt } => {
                Route::Local { feed: Arc::clone(feed), attempt: *attempt }
            }
            Route::Remote(outbox) => Route::Remote(Arc::clone(outbox)),
        };
        Progress { route }
    }
}

impl<P> fmt::Debug for Progress<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = match &self.route {
            Route::Detached => "detached",
            Route::Local { .. } => "local",
            Route::Remote(_) => "remote",
        };
        f.debug_struct("Progress").field("route", &route).finish()
    }
}

/// Lends a job's sender to the task running it: the sender, and the job's feed, are made only
/// when the task asks for them ([`Progress::current`]), so a task that never does costs no
/// allocation.
pub(crate) trait Lender: Send + Sync {
    /// Puts the sender of attempt `attempt` into `out`, an `Option<Progress<P>>` of the job's
    /// progress type `P` (anything else is left alone).
    fn lend(&self, attempt: u32, out: &mut dyn Any);
}

/// What the sender of the task that runs on this thread now is made from, with its type erased
/// (lent without an allocation: every route is a pointer the job or the worker has already).
enum Lent {
    /// Messages go nowhere: the task cannot send any (its progress type is [`Never`]).
    Nowhere,
    /// A sender made already: an `Arc<Feed<P>>` (thread backend, in tests).
    Feed { feed: Arc<dyn Any + Send + Sync>, attempt: u32 },
    /// A job of this process, which makes its feed when first asked (thread backend).
    Job { job: Arc<dyn Lender>, attempt: u32 },
    /// The worker's reply stream (process backend).
    Remote(Arc<dyn Outbox>),
}

impl Lent {
    /// The sender, for a `P` checked to be the running task's progress type.
    fn sender<P: Send + 'static>(&self) -> Progress<P> {
        match self {
            Lent::Nowhere => Progress::detached(),
            Lent::Feed { feed, attempt } => match Arc::downcast::<Feed<P>>(Arc::clone(feed)) {
                Ok(feed) => Progress::local(feed, *attempt),
                // Not reached: the type was checked.
                Err(_) => Progress::detached(),
            },
            Lent::Job { job, attempt } => {
                let mut out: Option<Progress<P>> = None;
                job.lend(*attempt, &mut out);
                out.unwrap_or_else(Progress::detached)
            }
            Lent::Remote(outbox) => Progress::remote(Arc::clone(outbox)),
        }
    }
}

/// The sender lent to the task that runs on this thread now.
struct Current {
    lent: Lent,
    type_id: TypeId,
    type_name: &'static str,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Whether a task with progress type `P` can send nothing: `P` is [`Never`], which has no value.
pub(crate) fn is_silent<P: 'static>() -> bool {
    TypeId::of::<P>() == TypeId::of::<Never>()
}

/// Runs `f` (a task's `run`) with `progress` as the thread's current sender, then gives the
/// previous one back, also when `f` unwinds.
pub(crate) fn scope<P: Send + 'static, R>(progress: Progress<P>, f: impl FnOnce() -> R) -> R {
    let lent = match progress.route {
        Route::Detached => Lent::Nowhere,
        Route::Local { feed, attempt } => Lent::Feed { feed, attempt },
        Route::Remote(outbox) => Lent::Remote(outbox),
    };
    enter::<P, R>(lent, f)
}

/// Runs `f` (a task's `run`) with the sender of attempt `attempt` of `job` as the thread's
/// current sender (made if the task asks for it; none for a task that cannot send), then gives
/// the previous one back, also when `f` unwinds.
pub(crate) fn scope_job<P: Send + 'static, R>(
    job: Option<Arc<dyn Lender>>,
    attempt: u32,
    f: impl FnOnce() -> R,
) -> R {
    let lent = match job {
        Some(job) => Lent::Job { job, attempt },
        None => Lent::Nowhere,
    };
    enter::<P, R>(lent, f)
}

fn enter<P: 'static, R>(lent: Lent, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Current>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            // Dropped outside the borrow: a sender's drop runs no user code, but stays simple.
            let ours = CURRENT.with_borrow_mut(|current| std::mem::replace(current, previous));
            drop(ours);
        }
    }
    let ours = Current { lent, type_id: TypeId::of::<P>(), type_name: type_name::<P>() };
    let _restore = Restore(CURRENT.with_borrow_mut(|current| current.replace(ours)));
    f()
}

/// A job's progress messages on the caller's side: what its attempts sent, not read yet.
pub(crate) struct Feed<P> {
    state: Mutex<FeedState<P>>,
    /// Signalled when a message arrives or the feed closes, for blocked readers.
    ready: Condvar,
}

struct FeedState<P> {
    queue: VecDeque<(u32, P)>,
    /// Messages dropped so far: the oldest ones, while nobody read.
    dropped: u64,
    /// The attempt whose messages are taken (0: none runs).
    live: u32,
    /// Set once the job is resolved: nothing more arrives.
    is_closed: bool,
    /// The readers alive; while there is one, nothing is dropped.
    readers: usize,
    sleepers: usize,
    wakers: Vec<Waker>,
}

impl<P> Feed<P> {
    /// A feed that takes the messages of attempt `live` (0: none), or a closed one.
    pub(crate) fn new(live: u32, is_closed: bool) -> Self {
        Feed {
            state: Mutex::new(FeedState {
                queue: VecDeque::new(),
                dropped: 0,
                live,
                is_closed,
                readers: 0,
                sleepers: 0,
                wakers: Vec::new(),
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FeedState<P>> {
        // Nothing user-written runs under this lock (messages move, they are not dropped here
        // while readers could observe a half-done state), so a poisoned lock holds a whole state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Attempt `attempt` starts: its messages are taken from now on.
    pub(crate) fn open_attempt(&self, attempt: u32) {
        let mut state = self.lock();
        if !state.is_closed {
            state.live = attempt;
        }
    }

    /// The running attempt ended: what it sends later is dropped.
    pub(crate) fn end_attempt(&self) {
        self.lock().live = 0;
    }

    /// The job is resolved: readers end once they have read what is queued.
    pub(crate) fn close(&self) {
        let (wakers, has_sleepers) = {
            let mut state = self.lock();
            state.live = 0;
            state.is_closed = true;
            (std::mem::take(&mut state.wakers), state.sleepers > 0)
        };
        // Notifying costs a system call even with nobody asleep, and every job closes its feed.
        if has_sleepers {
            self.ready.notify_all();
        }
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Appends a message of attempt `attempt`, unless that attempt is over; without a reader,
    /// drops the oldest message beyond [`KEPT`].
    pub(crate) fn push(&self, attempt: u32, message: P) {
        let (wakers, has_sleepers, old) = {
            let mut state = self.lock();
            if state.live != attempt || attempt == 0 {
                drop(state);
                return;
            }
            let old = if state.readers == 0 && state.queue.len() >= KEPT {
                state.dropped += 1;
                state.queue.pop_front()
            } else {
                None
            };
            state.queue.push_back((attempt, message));
            (std::mem::take(&mut state.wakers), state.sleepers > 0, old)
        };
        // A message's `Drop` is user code: not under the lock.
        drop(old);
        if has_sleepers {
            self.ready.notify_all();
        }
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Counts a message of the running attempt that arrived but could not be read (it did not
    /// deserialize).
    #[cfg_attr(not(process_backend), allow(dead_code))]
    pub(crate) fn count_lost(&self) {
        self.lock().dropped += 1;
    }

    /// A new reader of this feed.
    pub(crate) fn attach(self: &Arc<Self>) -> ProgressReader<P> {
        self.lock().readers += 1;
        ProgressReader { feed: Arc::clone(self), attempt: 0 }
    }

    fn detach(&self) {
        let old: Vec<_> = {
            let mut state = self.lock();
            state.readers -= 1;
            let excess =
                if state.readers == 0 { state.queue.len().saturating_sub(KEPT) } else { 0 };
            state.dropped += excess as u64;
            state.queue.drain(..excess).collect()
        };
        drop(old);
    }
}

/// What `Feed::next` found.
enum Next<P> {
    Message(u32, P),
    End,
    Empty,
}

impl<P> FeedState<P> {
    fn next(&mut self) -> Next<P> {
        match self.queue.pop_front() {
            Some((attempt, message)) => Next::Message(attempt, message),
            None if self.is_closed => Next::End,
            None => Next::Empty,
        }
    }
}

/// The caller's end of a task's progress messages: a blocking [`Iterator`] and a
/// [`Stream`](futures_core::Stream), from [`TaskHandle::progress`](crate::TaskHandle::progress).
///
/// It yields every message the task sends, in the order sent, and ends once the task is resolved
/// and every message it sent is yielded. Messages of an attempt that failed and was retried are
/// yielded too; [`attempt`](Self::attempt) says which attempt sent the last one yielded.
///
/// What is kept: while a reader of the handle exists, every message until it is read (the reader
/// asked for all of them; one that stops reading keeps them all). While none exists (before the
/// first call to `progress()`, after the readers are dropped), the handle keeps the newest 65 536
/// messages and drops older ones, counting them in [`dropped`](Self::dropped); a task that sends
/// millions of messages nobody reads holds 65 536 at most. So many that a reader taken right
/// after `dispatch` misses none of a fast task's first messages. Several readers of one handle share its
/// messages: each message goes to one of them.
///
/// # Examples
///
/// ```
/// use parallel::{task, Progress};
///
/// #[task]
/// fn countdown(progress: &Progress<u8>, from: u8) {
///     for n in (0..from).rev() {
///         progress.send(n);
///     }
/// }
///
/// fn main() {
///     let handle = countdown::dispatch(3);
///     let mut reader = handle.progress();
///     assert_eq!(reader.next(), Some(2));
///     assert_eq!(reader.attempt(), 1);
///     assert_eq!(reader.collect::<Vec<_>>(), [1, 0]);
///     handle.join().unwrap();
/// }
/// ```
pub struct ProgressReader<P> {
    feed: Arc<Feed<P>>,
    attempt: u32,
}

impl<P> ProgressReader<P> {
    /// The attempt (1 for the first, more with `retries`) that sent the message yielded last;
    /// 0 before any was yielded. A retried task's reader sees the failed attempt's messages,
    /// then the next attempt's, each with its number.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::{task, Progress};
    ///
    /// #[task]
    /// fn once(progress: &Progress<String>) {
    ///     progress.send("started".to_owned());
    /// }
    ///
    /// fn main() {
    ///     let handle = once::dispatch();
    ///     let mut reader = handle.progress();
    ///     assert_eq!(reader.attempt(), 0);
    ///     assert_eq!(reader.next().as_deref(), Some("started"));
    ///     assert_eq!(reader.attempt(), 1);
    /// }
    /// ```
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many messages of this task were dropped so far: the oldest ones, while no reader
    /// existed and more than 65 536 waited, and any that arrived but did not deserialize.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::{task, Progress};
    ///
    /// #[task]
    /// fn chatty(progress: &Progress<u32>, n: u32) {
    ///     (0..n).for_each(|i| progress.send(i));
    /// }
    ///
    /// fn main() {
    ///     let handle = chatty::dispatch(100_000);
    ///     while !handle.is_finished() {
    ///         std::thread::yield_now();
    ///     }
    ///     // Nobody read while it ran: the newest 65 536 messages are kept.
    ///     let mut reader = handle.progress();
    ///     assert_eq!(reader.next(), Some(100_000 - 65_536));
    ///     assert_eq!(reader.dropped(), 100_000 - 65_536);
    /// }
    /// ```
    pub fn dropped(&self) -> u64 {
        self.feed.lock().dropped
    }
}

impl<P> Iterator for ProgressReader<P> {
    type Item = P;

    /// Blocks until the task sends a message or is resolved.
    fn next(&mut self) -> Option<P> {
        let mut state = self.feed.lock();
        loop {
            match state.next() {
                Next::Message(attempt, message) => {
                    self.attempt = attempt;
                    return Some(message);
                }
                Next::End => return None,
                Next::Empty => {
                    state.sleepers += 1;
                    state = self.feed.ready.wait(state).unwrap_or_else(PoisonError::into_inner);
                    state.sleepers -= 1;
                }
            }
        }
    }
}

impl<P> futures_core::Stream for ProgressReader<P> {
    type Item = P;

    /// Takes the next message if there is one, else registers the waker, which the next message
    /// or the task's resolution wakes.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<P>> {
        let this = self.get_mut();
        let mut state = this.feed.lock();
        match state.next() {
            Next::Message(attempt, message) => {
                this.attempt = attempt;
                Poll::Ready(Some(message))
            }
            Next::End => Poll::Ready(None),
            Next::Empty => {
                if !state.wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
                    state.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl<P> Drop for ProgressReader<P> {
    fn drop(&mut self) {
        self.feed.detach();
    }
}

impl<P> fmt::Debug for ProgressReader<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.feed.lock();
        f.debug_struct("ProgressReader")
            .field("queued", &state.queue.len())
            .field("dropped", &state.dropped)
            .field("is_closed", &state.is_closed)
            .field("attempt", &self.attempt)
            .finish()
    }
}

/// The feed's input for serialized messages: what the process backend's reader thread decodes
/// a worker's progress frame into (and the cluster backend a serving slot's progress message),
/// for attempt `attempt` of the job.
#[cfg(any(process_backend, feature = "cluster"))]
pub(crate) struct Incoming<P> {
    pub(crate) feed: Arc<Feed<P>>,
    pub(crate) attempt: u32,
}

/// An [`Incoming`] with its message type erased.
#[cfg(any(process_backend, feature = "cluster"))]
pub(crate) trait Decode: Send + Sync {
    /// Decodes `bytes` as a message and appends it; counts it lost if it does not decode.
    fn decode(&self, bytes: &[u8]);
}

#[cfg(any(process_backend, feature = "cluster"))]
impl<P: serde::de::DeserializeOwned + Send + 'static> Decode for Incoming<P> {
    fn decode(&self, bytes: &[u8]) {
        // A user's `Deserialize` may panic; this runs on the pool's reader thread.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::wire_value::decode::<P>(bytes)
        }));
        match decoded {
            Ok(Ok(message)) => self.feed.push(self.attempt, message),
            Ok(Err(error)) => {
                tracing::warn!(%error, "a progress message does not deserialize; dropped");
                self.feed.count_lost();
            }
            Err(_) => self.feed.count_lost(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_core::Stream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    fn open() -> Arc<Feed<u32>> {
        Arc::new(Feed::new(1, false))
    }

    #[test]
    fn messages_come_in_order_and_the_reader_ends_after_the_close() {
        let feed = open();
        let reader = feed.attach();
        for i in 0..10 {
            feed.push(1, i);
        }
        feed.close();
        feed.push(1, 99);
        assert_eq!(reader.collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn only_the_running_attempt_is_heard() {
        let feed = open();
        feed.push(1, 1);
        feed.end_attempt();
        feed.push(1, 2);
        feed.open_attempt(2);
        feed.push(1, 3);
        feed.push(2, 4);
        feed.close();
        let mut reader = feed.attach();
        assert_eq!(reader.next(), Some(1));
        assert_eq!(reader.attempt(), 1);
        assert_eq!(reader.next(), Some(4));
        assert_eq!(reader.attempt(), 2);
        assert_eq!(reader.next(), None);
    }

    #[test]
    fn without_a_reader_the_newest_are_kept() {
        let feed = open();
        let total = KEPT as u32 * 3;
        for i in 0..total {
            feed.push(1, i);
        }
        feed.close();
        let reader = feed.attach();
        assert_eq!(reader.dropped(), u64::from(total) - KEPT as u64);
        assert_eq!(reader.collect::<Vec<_>>(), (total - KEPT as u32..total).collect::<Vec<_>>());
    }

    #[test]
    fn with_a_reader_nothing_is_dropped_until_it_goes() {
        let feed = open();
        let reader = feed.attach();
        let total = KEPT as u32 * 2;
        (0..total).for_each(|i| feed.push(1, i));
        assert_eq!(reader.dropped(), 0);
        drop(reader);
        let reader = feed.attach();
        assert_eq!(reader.dropped(), u64::from(total) - KEPT as u64);
    }

    #[test]
    fn a_blocked_reader_is_woken_by_a_message_and_by_the_close() {
        let feed = open();
        let mut reader = feed.attach();
        let sender = Arc::clone(&feed);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            sender.push(1, 7);
            std::thread::sleep(std::time::Duration::from_millis(20));
            sender.close();
        });
        assert_eq!(reader.next(), Some(7));
        assert_eq!(reader.next(), None);
        thread.join().unwrap();
    }

    #[test]
    fn the_stream_registers_its_waker_and_is_woken() {
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let feed = open();
        let mut reader = feed.attach();
        assert_eq!(Pin::new(&mut reader).poll_next(&mut cx), Poll::Pending);
        feed.push(1, 5);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(Pin::new(&mut reader).poll_next(&mut cx), Poll::Ready(Some(5)));
        assert_eq!(Pin::new(&mut reader).poll_next(&mut cx), Poll::Pending);
        feed.close();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(Pin::new(&mut reader).poll_next(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn the_current_sender_is_scoped_and_nested_runs_restore_it() {
        let outer = open();
        let inner = open();
        scope(Progress::local(Arc::clone(&outer), 1), || {
            Progress::<u32>::current().send(1);
            scope(Progress::local(Arc::clone(&inner), 1), || Progress::<u32>::current().send(2));
            Progress::<u32>::current().send(3);
        });
        // Outside any task: a detached sender.
        Progress::<u32>::current().send(4);
        outer.close();
        inner.close();
        assert_eq!(outer.attach().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(inner.attach().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_wrong_type_is_told() {
        let feed = open();
        let panicked = std::panic::catch_unwind(|| {
            scope(Progress::local(feed, 1), || Progress::<String>::current().send(String::new()))
        });
        let message = panicked.unwrap_err();
        let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("Self::Progress"), "{message}");
        // The scope was left on the unwind.
        CURRENT.with_borrow(|current| assert!(current.is_none()));
    }

    #[test]
    fn a_sender_is_send_sync_and_clone_and_a_reader_is_send() {
        fn send_sync<T: Send + Sync + Clone>() {}
        fn send<T: Send>() {}
        send_sync::<Progress<String>>();
        send::<ProgressReader<String>>();
    }
}
