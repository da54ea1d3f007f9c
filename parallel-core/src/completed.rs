//! Results in the order tasks finish: [`as_completed`] and [`AsCompleted`] over any handles, and
//! the completion set that [`MapUnordered`](crate::MapUnordered) shares with them.
//!
//! # The wake-up protocol
//!
//! Each handle in a [`Completion`] gets its own [`Waker`], which pushes the handle's [`Ticket`]
//! onto a shared [`ReadyQueue`] and wakes whoever waits on it (a thread on its condition variable,
//! a task through the registered outer waker). Invariant: every handle in the set is either
//!
//! 1. *ready*: its ticket is in the queue (it was just inserted, or its waker was called), or
//! 2. *watched*: its last poll returned `Pending`, which left its waker in the handle's job.
//!
//! Taking a ticket polls its handle: `Ready` leaves the set, `Pending` makes it watched; a
//! watched handle's job calls the waker exactly once when it resolves, under the same lock it
//! registered the waker with (`Job::poll`), so no resolution between the poll and the wake-up
//! can be missed. Hence, while the set is not empty, the queue is not empty or will not stay
//! so: waiting on it cannot hang, and no handle is polled in a loop. A ticket carries the
//! handle's input index as well as its slab key, so a ticket of a handle that has left the set
//! (its key reused by another) is recognized and skipped.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::iter::FusedIterator;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use crate::sync::Backoff;
use slab::Slab;

use crate::job::Outcome;
use crate::{Task, TaskHandle};

/// Which handle a wake-up is for: its key in the set's slab and its input index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticket {
    key: usize,
    index: usize,
}

/// The tickets of handles to poll, pushed by their wakers and taken by the set's consumer.
#[derive(Debug, Default)]
struct ReadyQueue {
    state: Mutex<QueueState>,
    /// Notified on a push while a thread sleeps in [`ReadyQueue::pop_wait`].
    pushed: Condvar,
    /// Whether the queue may hold a ticket: lets `pop_wait` spin without the lock.
    has_tickets: AtomicBool,
}

#[derive(Debug, Default)]
struct QueueState {
    tickets: VecDeque<Ticket>,
    /// Whether a thread sleeps on `pushed` (notifying costs a system call even with no sleeper).
    has_sleeper: bool,
    /// The waker of a task polling the set as a `Stream`, woken by the next push.
    outer: Option<Waker>,
    /// Set when the set is dropped: the wakers still held by unresolved jobs then push nothing.
    is_closed: bool,
}

impl ReadyQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing panics while the lock is held (waking happens after it is released).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, ticket: Ticket) {
        let (has_sleeper, outer) = {
            let mut state = self.lock();
            if state.is_closed {
                return;
            }
            state.tickets.push_back(ticket);
            self.has_tickets.store(true, Ordering::Release);
            (std::mem::take(&mut state.has_sleeper), state.outer.take())
        };
        if has_sleeper {
            self.pushed.notify_one();
        }
        if let Some(outer) = outer {
            outer.wake();
        }
    }

    fn pop_locked(&self, state: &mut QueueState) -> Option<Ticket> {
        let ticket = state.tickets.pop_front();
        if state.tickets.is_empty() {
            self.has_tickets.store(false, Ordering::Relaxed);
        }
        ticket
    }

    /// Takes the next ticket, or leaves `waker` to be woken by the next push.
    fn pop_or_register(&self, waker: &Waker) -> Option<Ticket> {
        let mut state = self.lock();
        let ticket = self.pop_locked(&mut state);
        if ticket.is_none() {
            match &mut state.outer {
                Some(old) if old.will_wake(waker) => {}
                outer => *outer = Some(waker.clone()),
            }
        }
        ticket
    }

    /// Takes the next ticket, blocking until one is pushed.
    ///
    /// Spins briefly before sleeping, as `Job::wait` does: most tasks are short, and waking a
    /// thread from the condition variable costs more than a short task.
    fn pop_wait(&self) -> Ticket {
        let backoff = Backoff::new();
        while !self.has_tickets.load(Ordering::Acquire) && !backoff.is_completed() {
            backoff.snooze();
        }
        let mut state = self.lock();
        loop {
            if let Some(ticket) = self.pop_locked(&mut state) {
                return ticket;
            }
            state.has_sleeper = true;
            state = self.pushed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn close(&self) {
        let mut state = self.lock();
        state.is_closed = true;
        state.tickets = VecDeque::new();
        state.outer = None;
    }
}

/// One handle's waker: pushes its ticket.
struct TicketWaker {
    ticket: Ticket,
    queue: Arc<ReadyQueue>,
}

impl Wake for TicketWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.push(self.ticket);
    }
}

/// A handle in a [`Completion`], with its input index and its own waker.
struct Entry<T: Task> {
    index: usize,
    handle: TaskHandle<T>,
    waker: Waker,
}

/// A set of handles, each with an input index, whose results are taken as they finish.
pub(crate) struct Completion<T: Task> {
    entries: Slab<Entry<T>>,
    queue: Arc<ReadyQueue>,
}

impl<T: Task> Completion<T> {
    pub(crate) fn new() -> Self {
        Completion { entries: Slab::new(), queue: Arc::default() }
    }

    /// Adds `handle` under `index`; it is polled at the next take, so one already finished is
    /// taken without waiting.
    pub(crate) fn insert(&mut self, index: usize, handle: TaskHandle<T>) {
        let vacant = self.entries.vacant_entry();
        let ticket = Ticket { key: vacant.key(), index };
        let waker = Waker::from(Arc::new(TicketWaker { ticket, queue: Arc::clone(&self.queue) }));
        vacant.insert(Entry { index, handle, waker });
        self.queue.push(ticket);
    }

    /// How many handles have not been taken yet.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The handles not taken yet.
    pub(crate) fn handles(&self) -> impl Iterator<Item = &TaskHandle<T>> {
        self.entries.iter().map(|(_, entry)| &entry.handle)
    }

    /// Polls the handle `ticket` is for: its index and result if it is finished. `None` if it
    /// is not, or if it has left the set (a stale ticket).
    fn take(&mut self, ticket: Ticket) -> Option<(usize, Outcome<T>)> {
        let entry = self.entries.get_mut(ticket.key).filter(|entry| entry.index == ticket.index)?;
        let mut context = Context::from_waker(&entry.waker);
        match Pin::new(&mut entry.handle).poll(&mut context) {
            Poll::Ready(outcome) => {
                self.entries.remove(ticket.key);
                Some((ticket.index, outcome))
            }
            Poll::Pending => None,
        }
    }

    /// The next result to finish, blocking until there is one; `None` once the set is empty.
    pub(crate) fn next_blocking(&mut self) -> Option<(usize, Outcome<T>)> {
        while !self.is_empty() {
            let ticket = self.queue.pop_wait();
            if let Some(next) = self.take(ticket) {
                return Some(next);
            }
        }
        None
    }

    /// The next result to finish if there is one now; otherwise `cx`'s waker is woken when
    /// there may be. `Ready(None)` once the set is empty.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, Outcome<T>)>> {
        while !self.is_empty() {
            match self.queue.pop_or_register(cx.waker()) {
                Some(ticket) => {
                    if let Some(next) = self.take(ticket) {
                        return Poll::Ready(Some(next));
                    }
                }
                None => return Poll::Pending,
            }
        }
        Poll::Ready(None)
    }
}

impl<T: Task> Drop for Completion<T> {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// Yields `(index, result)` for each of `handles` as it finishes, `index` being the handle's
/// position in `handles`.
///
/// The returned [`AsCompleted`] is a blocking [`Iterator`] and also a
/// [`Stream`](futures_core::Stream) for async code. Either way it is woken by the handles' own
/// completion: no polling loop and no thread per handle. Handles already finished come first
/// (in their input order), without waiting.
///
/// Handles from different pools, and of any backend, may be mixed, as long as their tasks have
/// one type.
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
///     let pool = parallel::Pool::builder().workers(3).build().unwrap();
///     let handles: Vec<_> = [300, 1].into_iter().map(|ms| nap::dispatch_on(&pool, ms)).collect();
///     let mut completed = parallel::as_completed(handles);
///     assert_eq!(completed.next(), Some((1, Ok(1)))); // the short nap, index 1, comes first
///     assert_eq!(completed.next(), Some((0, Ok(300))));
///     assert_eq!(completed.next(), None);
/// }
/// ```
pub fn as_completed<T, I>(handles: I) -> AsCompleted<T>
where
    T: Task,
    I: IntoIterator<Item = TaskHandle<T>>,
{
    let mut completion = Completion::new();
    for (index, handle) in handles.into_iter().enumerate() {
        completion.insert(index, handle);
    }
    AsCompleted { completion }
}

/// The results of a set of handles in the order they finish, each with the handle's index: see
/// [`as_completed`].
///
/// Dropping it drops the handles not yet yielded. As for any dropped [`TaskHandle`], that does not
/// cancel their tasks: they still run and their results are lost. Call
/// [`cancel`](Self::cancel) first to stop them.
///
/// # Examples
///
/// As a [`Stream`](futures_core::Stream), with any executor (here a minimal one that parks the
/// thread until the stream wakes it):
///
/// ```
/// use std::pin::Pin;
/// use std::sync::Arc;
/// use std::task::{Context, Poll, Wake, Waker};
/// use futures_core::Stream;
///
/// #[parallel::task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// struct Unpark(std::thread::Thread);
///
/// impl Wake for Unpark {
///     fn wake(self: Arc<Self>) {
///         self.0.unpark();
///     }
/// }
///
/// fn main() {
///     let mut stream = parallel::as_completed((0..4).map(square::dispatch));
///     let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
///     let mut context = Context::from_waker(&waker);
///     let mut seen = Vec::new();
///     loop {
///         match Pin::new(&mut stream).poll_next(&mut context) {
///             Poll::Ready(Some((index, result))) => seen.push((index, result.unwrap())),
///             Poll::Ready(None) => break,
///             Poll::Pending => std::thread::park(),
///         }
///     }
///     seen.sort();
///     assert_eq!(seen, [(0, 0), (1, 1), (2, 4), (3, 9)]);
/// }
/// ```
#[must_use = "dropping it drops the handles, whose results are then lost"]
pub struct AsCompleted<T: Task> {
    completion: Completion<T>,
}

impl<T: Task> AsCompleted<T> {
    /// Cancels every task not yielded yet (see [`TaskHandle::cancel`]); each is then yielded at
    /// once, as [`TaskError::Cancelled`](crate::TaskError::Cancelled) or with the result it had
    /// already.
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
    ///     let pool = parallel::Pool::builder().workers(2).build().unwrap();
    ///     let handles: Vec<_> = [1, 5_000].into_iter().map(|ms| nap::dispatch_on(&pool, ms)).collect();
    ///     let mut completed = parallel::as_completed(handles);
    ///     assert_eq!(completed.next(), Some((0, Ok(1))));
    ///     completed.cancel(); // the long nap is not wanted
    ///     assert_eq!(completed.next(), Some((1, Err(TaskError::Cancelled))));
    /// }
    /// ```
    pub fn cancel(&self) {
        crate::job::stops_together(|| {
            for handle in self.completion.handles() {
                handle.cancel();
            }
        });
    }
}

impl<T: Task> Iterator for AsCompleted<T> {
    type Item = (usize, Result<T::Output, crate::TaskError<T::Error>>);

    fn next(&mut self) -> Option<Self::Item> {
        self.completion.next_blocking()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.completion.len(), Some(self.completion.len()))
    }
}

impl<T: Task> ExactSizeIterator for AsCompleted<T> {}

impl<T: Task> FusedIterator for AsCompleted<T> {}

impl<T: Task> futures_core::Stream for AsCompleted<T> {
    type Item = (usize, Result<T::Output, crate::TaskError<T::Error>>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().completion.poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.completion.len(), Some(self.completion.len()))
    }
}

impl<T: Task> futures_core::FusedStream for AsCompleted<T> {
    fn is_terminated(&self) -> bool {
        self.completion.is_empty()
    }
}

impl<T: Task> fmt::Debug for AsCompleted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("task", &T::NAME)
            .field("pending", &self.completion.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Job;
    use crate::ledger::Ledger;
    use crate::TaskError;
    use std::sync::atomic::AtomicUsize;

    use crate::task::Unit;

    /// `n` queued jobs (run by nobody: the test resolves them) and their handles.
    fn jobs(n: usize) -> (Vec<Arc<Job<Unit>>>, Vec<TaskHandle<Unit>>) {
        let ledger = Arc::new(Ledger::new(7));
        let jobs: Vec<_> =
            (0..n).map(|_| Job::enqueue(Unit, &ledger).ok().expect("the ledger is open")).collect();
        let handles = jobs.iter().map(|job| TaskHandle::new(Arc::clone(job))).collect();
        (jobs, handles)
    }

    fn completion(handles: Vec<TaskHandle<Unit>>) -> Completion<Unit> {
        let mut completion = Completion::new();
        for (index, handle) in handles.into_iter().enumerate() {
            completion.insert(index, handle);
        }
        completion
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        (Arc::clone(&count), Waker::from(count))
    }

    /// Polls every handle once, so that each is watched (its waker left in its job).
    fn watch_all(completion: &mut Completion<Unit>) {
        let (_, waker) = counting_waker();
        assert_eq!(completion.poll_next(&mut Context::from_waker(&waker)), Poll::Pending);
    }

    #[test]
    fn the_set_moves_between_threads_and_tasks() {
        fn is_send<S: Send>() {}
        is_send::<AsCompleted<Unit>>();
        is_send::<Completion<Unit>>();
    }

    #[test]
    fn the_queue_is_first_in_first_out() {
        let queue = ReadyQueue::default();
        for key in [3, 1, 2] {
            queue.push(Ticket { key, index: key * 10 });
        }
        let popped: Vec<_> = (0..3).map(|_| queue.pop_wait().key).collect();
        assert_eq!(popped, [3, 1, 2]);
        assert!(!queue.has_tickets.load(Ordering::SeqCst), "empty again");
    }

    #[test]
    fn a_push_wakes_the_registered_outer_waker_once() {
        let queue = ReadyQueue::default();
        let (count, waker) = counting_waker();
        assert_eq!(queue.pop_or_register(&waker), None);
        assert_eq!(queue.pop_or_register(&waker), None, "registering twice keeps one waker");
        queue.push(Ticket { key: 0, index: 0 });
        queue.push(Ticket { key: 1, index: 1 });
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the waker was taken by the first push");
        assert_eq!(queue.pop_or_register(&waker), Some(Ticket { key: 0, index: 0 }));
    }

    #[test]
    fn a_sleeping_consumer_is_woken_by_a_push_from_another_thread() {
        let queue = Arc::new(ReadyQueue::default());
        let pusher = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || queue.push(Ticket { key: 4, index: 9 }))
        };
        assert_eq!(queue.pop_wait(), Ticket { key: 4, index: 9 });
        pusher.join().unwrap();
    }

    #[test]
    fn a_closed_queue_takes_no_more_tickets() {
        let queue = ReadyQueue::default();
        queue.push(Ticket { key: 0, index: 0 });
        queue.close();
        queue.push(Ticket { key: 1, index: 1 });
        let (_, waker) = counting_waker();
        assert_eq!(queue.pop_or_register(&waker), None);
    }

    #[test]
    fn handles_finished_before_insertion_come_without_waiting_in_input_order() {
        let (jobs, handles) = jobs(3);
        for job in jobs.iter().rev() {
            job.complete(Ok(1));
        }
        let mut completion = completion(handles);
        let indices: Vec<_> = std::iter::from_fn(|| completion.next_blocking())
            .map(|(index, outcome)| {
                assert_eq!(outcome, Ok(1));
                index
            })
            .collect();
        assert_eq!(indices, [0, 1, 2]);
    }

    #[test]
    fn results_come_in_the_order_the_jobs_resolve() {
        let (jobs, handles) = jobs(4);
        let mut completion = completion(handles);
        watch_all(&mut completion);
        jobs[2].complete(Ok(1));
        jobs[0].cancel();
        jobs[3].complete(Ok(1));
        jobs[1].complete(Ok(1));
        let order: Vec<_> = std::iter::from_fn(|| completion.next_blocking()).collect();
        assert_eq!(
            order,
            [(2, Ok(1)), (0, Err(TaskError::Cancelled)), (3, Ok(1)), (1, Ok(1))],
            "each handle once, in the order of resolution"
        );
        assert!(completion.is_empty());
    }

    #[test]
    fn a_resolution_from_another_thread_wakes_the_blocked_consumer() {
        let (jobs, handles) = jobs(2);
        let mut completion = completion(handles);
        watch_all(&mut completion);
        let resolver = std::thread::spawn(move || {
            jobs[1].complete(Ok(1));
            jobs[0].complete(Ok(1));
        });
        assert_eq!(completion.next_blocking(), Some((1, Ok(1))));
        assert_eq!(completion.next_blocking(), Some((0, Ok(1))));
        assert_eq!(completion.next_blocking(), None);
        resolver.join().unwrap();
    }

    #[test]
    fn a_stale_ticket_is_skipped_and_never_yields_twice() {
        let (jobs, handles) = jobs(2);
        let mut handles = handles.into_iter();
        let mut completion = Completion::new();
        completion.insert(0, handles.next().unwrap());
        jobs[0].complete(Ok(1));
        assert_eq!(completion.next_blocking(), Some((0, Ok(1))));
        // A late ticket of the old index 0, then index 5 in the same slab key: the stale ticket
        // is taken first, while the new handle is ready, and must not yield it as index 0.
        completion.queue.push(Ticket { key: 0, index: 0 });
        completion.insert(5, handles.next().unwrap());
        jobs[1].complete(Ok(1));
        assert_eq!(completion.next_blocking(), Some((5, Ok(1))));
        assert_eq!(completion.next_blocking(), None);
    }

    #[test]
    fn as_a_stream_it_is_pending_then_woken_by_a_resolution() {
        let (jobs, handles) = jobs(2);
        let mut completion = completion(handles);
        let (count, waker) = counting_waker();
        let mut context = Context::from_waker(&waker);
        assert_eq!(completion.poll_next(&mut context), Poll::Pending);
        jobs[1].complete(Ok(1));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the resolution woke the stream's waker");
        assert_eq!(completion.poll_next(&mut context), Poll::Ready(Some((1, Ok(1)))));
        assert_eq!(completion.poll_next(&mut context), Poll::Pending);
        jobs[0].complete(Ok(1));
        assert_eq!(completion.poll_next(&mut context), Poll::Ready(Some((0, Ok(1)))));
        assert_eq!(completion.poll_next(&mut context), Poll::Ready(None));
    }

    #[test]
    fn a_dropped_set_ignores_later_resolutions() {
        let (jobs, handles) = jobs(1);
        let mut completion = completion(handles);
        watch_all(&mut completion);
        let queue = Arc::clone(&completion.queue);
        drop(completion);
        jobs[0].complete(Ok(1));
        assert!(queue.lock().tickets.is_empty(), "a late wake-up pushed nothing");
    }
}
