//! [`Map`]: the streaming, ordered results of [`Pool::map`](crate::Pool::map).

use std::collections::VecDeque;
use std::fmt;
use std::iter::FusedIterator;

use crate::job::Outcome;
use crate::{Pool, Task, TaskHandle};

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
    pool: &'pool Pool,
    tasks: I,
    is_input_done: bool,
    window: usize,
    in_flight: VecDeque<TaskHandle<I::Item>>,
}

impl<'pool, I> Map<'pool, I>
where
    I: Iterator,
    I::Item: Task,
{
    pub(crate) fn new(pool: &'pool Pool, tasks: I) -> Self {
        let window = pool.workers().saturating_mul(WINDOW_PER_WORKER).max(WINDOW_PER_WORKER);
        Map { pool, tasks, is_input_done: false, window, in_flight: VecDeque::new() }
    }

    /// Tops the window up once half of it is consumed: tasks then reach the workers in batches
    /// (a process worker gets them in one write), not one at a time as results are consumed.
    fn fill(&mut self) {
        if self.in_flight.len() > self.window / 2 {
            return;
        }
        while !self.is_input_done && self.in_flight.len() < self.window {
            match self.tasks.next() {
                Some(task) => self.in_flight.push_back(self.pool.submit(task)),
                None => self.is_input_done = true,
            }
        }
    }
}

impl<I> Iterator for Map<'_, I>
where
    I: Iterator,
    I::Item: Task,
{
    type Item = Outcome<I::Item>;

    fn next(&mut self) -> Option<Self::Item> {
        self.fill();
        let next = self.in_flight.pop_front()?.join();
        Some(next)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.is_input_done {
            return (self.in_flight.len(), Some(self.in_flight.len()));
        }
        let (low, high) = self.tasks.size_hint();
        let len = self.in_flight.len();
        (low.saturating_add(len), high.and_then(|high| high.checked_add(len)))
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
        for handle in &self.in_flight {
            handle.abandon();
        }
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
            .field("is_input_done", &self.is_input_done)
            .finish()
    }
}
