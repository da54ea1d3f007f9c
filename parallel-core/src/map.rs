//! [`Map`] and [`MapUnordered`]: the streaming results of [`Pool::map`](crate::Pool::map), in
//! input order, and of [`Pool::map_unordered`](crate::Pool::map_unordered), in completion order.

use std::collections::VecDeque;
use std::fmt;
use std::iter::FusedIterator;

use crate::completed::Completion;
use crate::job::Outcome;
use crate::{Pool, Task, TaskError, TaskHandle};

/// How many tasks per worker [`Map`] keeps in flight: enough that workers never wait for the
/// caller to submit more (16 per worker left them idle for a quarter of a no-op bulk run), few
/// enough that memory stays bounded. See docs/PERFORMANCE.md.
const WINDOW_PER_WORKER: usize = 128;

/// The results of [`Pool::map`], in input order.
///
/// Pulls the next tasks from its input only as results are consumed, keeping a bounded window
/// of them in flight. Dropping it cancels the tasks still in the window: those not started never
/// start; on the process backend a running task that is short (its worker's tasks average up to
/// 10 ms, and it has been sent less than a second ago) is left to finish, its result dropped, so
/// that a `take(n)` of an endless stream costs no worker and no Environment; a longer one is
/// killed.
///
/// # Examples
///
/// ```
/// #[parallel::task]
/// fn double(x: u64) -> u64 {
///     x * 2
/// }
///
/// fn main() {
///     let pool = parallel::Pool::builder().workers(2).build().unwrap();
///     let mut results = pool.map((1..=3).map(double::new));
///     assert_eq!(results.next(), Some(Ok(2)));
///     assert_eq!(results.collect::<Vec<_>>(), [Ok(4), Ok(6)]);
/// }
/// ```
pub struct Map<'pool, I>
where
    I: Iterator,
    I::Item: Task,
{
    window: Window<'pool, I>,
    in_flight: VecDeque<TaskHandle<I::Item>>,
}

impl<'pool, I> Map<'pool, I>
where
    I: Iterator,
    I::Item: Task,
{
    pub(crate) fn new(pool: &'pool Pool, tasks: I) -> Self {
        Map { window: Window::new(pool, tasks), in_flight: VecDeque::new() }
    }
}

/// The input side of [`Map`] and [`MapUnordered`]: pulls tasks from the caller's iterator only
/// as results are consumed, and keeps at most a window of them in flight.
struct Window<'pool, I> {
    pool: &'pool Pool,
    tasks: I,
    is_input_done: bool,
    /// How many tasks may be in flight at once.
    size: usize,
    /// How many tasks were submitted so far: the input index of the next one.
    submitted: usize,
}

impl<'pool, I> Window<'pool, I>
where
    I: Iterator,
    I::Item: Task,
{
    fn new(pool: &'pool Pool, tasks: I) -> Self {
        let size = pool.workers().saturating_mul(WINDOW_PER_WORKER).max(WINDOW_PER_WORKER);
        Window { pool, tasks, is_input_done: false, size, submitted: 0 }
    }

    /// Tops the window up once half of it is consumed, handing each new task's handle and input
    /// index to `push`: tasks then reach the workers in batches (a process worker gets them in
    /// one write), not one at a time as results are consumed. `in_flight` is how many tasks are
    /// in flight now.
    fn fill(&mut self, mut in_flight: usize, mut push: impl FnMut(usize, TaskHandle<I::Item>)) {
        if in_flight > self.size / 2 {
            return;
        }
        if self.pool.submits_together(self.submitted) {
            // The input's next tasks are taken first, then submitted in one go (the input's own
            // code runs before any of them is submitted, so it may submit and wait for others).
            let mut tasks = Vec::new();
            while !self.is_input_done && in_flight + tasks.len() < self.size {
                match self.tasks.next() {
                    Some(task) => tasks.push(task),
                    None => self.is_input_done = true,
                }
            }
            for handle in self.pool.submit_together(tasks) {
                push(self.submitted, handle);
                self.submitted += 1;
            }
            return;
        }
        while !self.is_input_done && in_flight < self.size {
            match self.tasks.next() {
                Some(task) => {
                    push(self.submitted, self.pool.submit(task));
                    self.submitted += 1;
                    in_flight += 1;
                }
                None => self.is_input_done = true,
            }
        }
    }

    /// The bounds on the results still to come, with `in_flight` tasks in flight.
    fn size_hint(&self, in_flight: usize) -> (usize, Option<usize>) {
        if self.is_input_done {
            return (in_flight, Some(in_flight));
        }
        let (low, high) = self.tasks.size_hint();
        (low.saturating_add(in_flight), high.and_then(|high| high.checked_add(in_flight)))
    }
}

impl<I> Iterator for Map<'_, I>
where
    I: Iterator,
    I::Item: Task,
{
    type Item = Outcome<I::Item>;

    fn next(&mut self) -> Option<Self::Item> {
        let in_flight = &mut self.in_flight;
        self.window.fill(in_flight.len(), |_, handle| in_flight.push_back(handle));
        let next = self.in_flight.pop_front()?.join();
        Some(next)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.window.size_hint(self.in_flight.len())
    }
}

impl<I> FusedIterator for Map<'_, I>
where
    I: Iterator,
    I::Item: Task,
{
}

impl<I> Drop for Map<'_, I>
where
    I: Iterator,
    I::Item: Task,
{
    fn drop(&mut self) {
        crate::job::stops_together(|| {
            for handle in &self.in_flight {
                handle.abandon();
            }
        });
    }
}

impl<I> fmt::Debug for Map<'_, I>
where
    I: Iterator,
    I::Item: Task,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map")
            .field("task", &<I::Item as Task>::NAME)
            .field("in_flight", &self.in_flight.len())
            .field("is_input_done", &self.window.is_input_done)
            .finish()
    }
}

/// The results of [`Pool::map_unordered`], in the order the tasks finish, each with its task's
/// index in the input.
///
/// Pulls its input lazily with the same bounded window as [`Map`], and yields each result as
/// soon as it is ready, woken by the task's completion. Dropping it cancels the tasks still in
/// the window, as dropping a [`Map`] does: those not started never start; a short running one is
/// left to finish, its result dropped, a longer one is killed (process backend).
///
/// # Examples
///
/// ```
/// #[parallel::task]
/// fn double(x: u64) -> u64 {
///     x * 2
/// }
///
/// fn main() {
///     let pool = parallel::Pool::builder().workers(2).build().unwrap();
///     let mut results: Vec<(usize, u64)> = pool
///         .map_unordered([5, 6, 7].map(double::new))
///         .map(|(index, result)| (index, result.unwrap()))
///         .collect();
///     results.sort();
///     assert_eq!(results, [(0, 10), (1, 12), (2, 14)]);
/// }
/// ```
pub struct MapUnordered<'pool, I>
where
    I: Iterator,
    I::Item: Task,
{
    window: Window<'pool, I>,
    in_flight: Completion<I::Item>,
}

impl<'pool, I> MapUnordered<'pool, I>
where
    I: Iterator,
    I::Item: Task,
{
    pub(crate) fn new(pool: &'pool Pool, tasks: I) -> Self {
        MapUnordered { window: Window::new(pool, tasks), in_flight: Completion::new() }
    }
}

impl<I> Iterator for MapUnordered<'_, I>
where
    I: Iterator,
    I::Item: Task,
{
    type Item = (usize, Result<<I::Item as Task>::Output, TaskError<<I::Item as Task>::Error>>);

    fn next(&mut self) -> Option<Self::Item> {
        let in_flight = &mut self.in_flight;
        self.window.fill(in_flight.len(), |index, handle| in_flight.insert(index, handle));
        in_flight.next_blocking()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.window.size_hint(self.in_flight.len())
    }
}

impl<I> FusedIterator for MapUnordered<'_, I>
where
    I: Iterator,
    I::Item: Task,
{
}

impl<I> Drop for MapUnordered<'_, I>
where
    I: Iterator,
    I::Item: Task,
{
    fn drop(&mut self) {
        crate::job::stops_together(|| {
            for handle in self.in_flight.handles() {
                handle.abandon();
            }
        });
    }
}

impl<I> fmt::Debug for MapUnordered<'_, I>
where
    I: Iterator,
    I::Item: Task,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapUnordered")
            .field("task", &<I::Item as Task>::NAME)
            .field("in_flight", &self.in_flight.len())
            .field("is_input_done", &self.window.is_input_done)
            .finish()
    }
}
