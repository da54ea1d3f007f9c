//! [`Policy`]: how a task is run — the limit of each attempt, how many times it runs again and how
//! long it waits before that — and the copy of the task kept for those later attempts.
//!
//! `#[task(timeout = "2s", retries = 3, backoff = "100ms", retry_failed)]` writes a task's
//! [`Task::POLICY`](crate::Task::POLICY); the job (`job.rs`) applies it, with the process-wide
//! timer (`timer.rs`) for deadlines and backoffs.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire_value;

/// The longest wait before a retry, however many attempts came before.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How a task is run: a limit per attempt, retries, and the wait before each retry.
///
/// Written by `#[task(...)]` from its keys (see [`Task::POLICY`](crate::Task::POLICY)); a
/// hand-written `impl Task` may set it too, with the same meaning.
///
/// - `timeout`: the limit of each attempt. On expiry the attempt ends as
///   [`TaskError::TimedOut`](crate::TaskError::TimedOut): on the process backend the worker
///   running it is killed and replaced; on the thread backend the attempt is abandoned (a thread
///   cannot be stopped: it runs to its end and its result is dropped).
/// - `retries` (default 0): an attempt that did not return — `Panicked`, `WorkerDied`,
///   `TimedOut` — runs again, up to this many more times. `Failed(e)` is the task's own answer and
///   is retried only with `retry_failed`. The handle resolves once, with the last attempt's
///   outcome. Without retries nothing ever runs twice.
/// - `backoff` (default 100 ms): the wait before the first retry, doubled for each later one, with
///   a jitter of at most +25%, and never more than a minute.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use parallel::{task, Policy, Task};
///
/// #[task(timeout = "2s", retries = 3, backoff = "250ms")]
/// fn fetch(url: String) -> Result<String, String> {
///     Ok(url)
/// }
///
/// fn main() {
///     let policy = fetch::Task::POLICY;
///     assert_eq!(policy.timeout(), Some(Duration::from_secs(2)));
///     assert_eq!(policy.retries(), 3);
///     assert_eq!(policy.backoff(), Duration::from_millis(250));
///     assert!(!policy.retries_failed());
///     assert_eq!(Policy::new().retries(), 0);
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    timeout: Option<Duration>,
    retries: u32,
    backoff: Duration,
    retry_failed: bool,
}

impl Policy {
    /// No timeout, no retries: every task's policy unless it says otherwise.
    pub const DEFAULT: Policy = Policy {
        timeout: None,
        retries: 0,
        backoff: Duration::from_millis(100),
        retry_failed: false,
    };

    /// The default policy: no timeout, no retries, a backoff of 100 ms should retries be added.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(parallel::Policy::new(), parallel::Policy::DEFAULT);
    /// ```
    pub const fn new() -> Policy {
        Policy::DEFAULT
    }

    /// This policy with a limit for each attempt.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = parallel::Policy::new().with_timeout(Duration::from_secs(2));
    /// assert_eq!(policy.timeout(), Some(Duration::from_secs(2)));
    /// ```
    pub const fn with_timeout(mut self, timeout: Duration) -> Policy {
        self.timeout = Some(timeout);
        self
    }

    /// This policy with up to `retries` more attempts after the first.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(parallel::Policy::new().with_retries(3).retries(), 3);
    /// ```
    pub const fn with_retries(mut self, retries: u32) -> Policy {
        self.retries = retries;
        self
    }

    /// This policy with `backoff` before the first retry (doubled for each later one).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = parallel::Policy::new().with_backoff(Duration::from_millis(10));
    /// assert_eq!(policy.backoff(), Duration::from_millis(10));
    /// ```
    pub const fn with_backoff(mut self, backoff: Duration) -> Policy {
        self.backoff = backoff;
        self
    }

    /// This policy retrying the task's own `Err(e)` as well.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(parallel::Policy::new().with_retry_failed().retries_failed());
    /// ```
    pub const fn with_retry_failed(mut self) -> Policy {
        self.retry_failed = true;
        self
    }

    /// The limit of each attempt, if any.
    pub const fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// How many times at most the task runs again after its first attempt.
    pub const fn retries(&self) -> u32 {
        self.retries
    }

    /// The wait before the first retry.
    pub const fn backoff(&self) -> Duration {
        self.backoff
    }

    /// Whether the task's own `Err(e)` is retried too.
    pub const fn retries_failed(&self) -> bool {
        self.retry_failed
    }

    /// The shortest wait before retry number `retry` (1 for the first): the backoff doubled
    /// `retry - 1` times, at most [`MAX_BACKOFF`].
    pub(crate) fn min_backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.backoff.saturating_mul(1 << doublings).min(MAX_BACKOFF)
    }

    /// The wait before retry number `retry`: [`min_backoff`](Self::min_backoff) plus a random
    /// jitter of at most a quarter of it, so that tasks failing together do not all come back at
    /// once; still at most [`MAX_BACKOFF`] (but never below the minimum).
    pub(crate) fn backoff_before(&self, retry: u32) -> Duration {
        let least = self.min_backoff(retry);
        // A fresh `RandomState` is randomly keyed (per thread, then incremented): enough for a
        // jitter, with no dependency for it.
        let random = RandomState::new().build_hasher().finish();
        let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
        let jitter = least.mul_f64(0.25 * fraction);
        (least + jitter).min(MAX_BACKOFF.max(least))
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy::DEFAULT
    }
}

/// The task kept, as bytes, for the attempts after the first (the first one consumes the value).
///
/// # Errors
///
/// The serializer's message, when the task does not serialize.
pub(crate) fn keep_copy<T: Serialize + 'static>(task: &T) -> Result<Vec<u8>, String> {
    // The process backend's value format: it carries every serde value unchanged
    // (self-describing, `Some(None)` kept, depth bounded).
    let mut bytes = Vec::new();
    wire_value::encode(task, &mut bytes, usize::MAX).map_err(|error| error.to_string())?;
    Ok(bytes)
}

/// The task back from [`keep_copy`]'s bytes, for another attempt.
///
/// # Errors
///
/// The deserializer's message, when the bytes do not make a `T` again.
pub(crate) fn from_copy<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    wire_value::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_a_minute() {
        let policy = Policy::new().with_backoff(Duration::from_millis(100)).with_retries(20);
        assert_eq!(policy.min_backoff(1), Duration::from_millis(100));
        assert_eq!(policy.min_backoff(2), Duration::from_millis(200));
        assert_eq!(policy.min_backoff(4), Duration::from_millis(800));
        assert_eq!(policy.min_backoff(20), MAX_BACKOFF);
        assert_eq!(policy.min_backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn the_jitter_adds_at_most_a_quarter() {
        let policy = Policy::new().with_backoff(Duration::from_millis(100));
        let mut seen = std::collections::HashSet::new();
        for retry in 1..=12 {
            for _ in 0..50 {
                let least = policy.min_backoff(retry);
                let wait = policy.backoff_before(retry);
                assert!(wait >= least, "retry {retry}: {wait:?} < {least:?}");
                assert!(wait <= least + least / 4, "retry {retry}: {wait:?} too long");
                assert!(wait <= MAX_BACKOFF, "retry {retry}: {wait:?} over the cap");
                seen.insert(wait);
            }
        }
        assert!(seen.len() > 100, "the jitter varies: {} distinct waits", seen.len());
    }

    #[test]
    fn a_copy_comes_back_unchanged() {
        let value = (Some(None::<u8>), vec![1u8, 2], String::from("x"), Some(()));
        let bytes = keep_copy(&value).unwrap();
        assert_eq!(
            from_copy::<(Option<Option<u8>>, Vec<u8>, String, Option<()>)>(&bytes),
            Ok(value)
        );
    }
}
