//! The timer: one thread for the whole process that runs actions at their time — a task
//! attempt's deadline, the end of a backoff before a retry.
//!
//! A waiting retry or a running attempt with a timeout costs an entry here, never a thread. The
//! thread starts with the first entry and then sleeps until the earliest one; an entry whose job
//! was resolved meanwhile is removed by its job (see [`cancel`]), so entries stay as many as the
//! attempts that may still need them. Actions run on the timer thread, without its lock held, and
//! must not block: they take a job's lock, resubmit a job, or ask a worker to be killed.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

/// What runs at an entry's time.
pub(crate) type Action = Box<dyn FnOnce() + Send>;

/// An entry in the timer: its time and a number that makes it unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    at: Instant,
    seq: u64,
}

struct Entries {
    due: BTreeMap<Key, Action>,
    next_seq: u64,
    /// Whether the thread runs; `false` also after it failed to start (then nothing is due).
    is_started: bool,
}

struct Timer {
    entries: Mutex<Entries>,
    changed: Condvar,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<Timer> = OnceLock::new();
    TIMER.get_or_init(|| Timer {
        entries: Mutex::new(Entries { due: BTreeMap::new(), next_seq: 0, is_started: false }),
        changed: Condvar::new(),
    })
}

impl Timer {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        // Actions run outside the lock; nothing panics while it is held.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs `action` at `at` (at once if that has passed) on the timer thread.
///
/// # Errors
///
/// Gives the action back when the timer thread cannot be started (the system refuses threads).
pub(crate) fn schedule(at: Instant, action: Action) -> Result<Key, Action> {
    let timer = timer();
    let mut entries = timer.lock();
    if !entries.is_started {
        let started = std::thread::Builder::new()
            .name("parallel-timer".to_owned())
            .spawn(|| run(self::timer()));
        if started.is_err() {
            return Err(action);
        }
        entries.is_started = true;
    }
    let key = Key { at, seq: entries.next_seq };
    entries.next_seq += 1;
    let is_first = entries.due.first_key_value().is_none_or(|(first, _)| key < *first);
    entries.due.insert(key, action);
    drop(entries);
    if is_first {
        timer.changed.notify_one();
    }
    Ok(key)
}

/// Removes the entry `key` unless it ran (or is running) already.
pub(crate) fn cancel(key: Key) {
    // Dropped outside the lock: an action owns references whose drop may do anything.
    let action = timer().lock().due.remove(&key);
    drop(action);
}

fn run(timer: &Timer) {
    let mut entries = timer.lock();
    loop {
        let now = Instant::now();
        let wait = match entries.due.first_key_value() {
            Some((key, _)) if key.at <= now => None,
            Some((key, _)) => Some(key.at - now),
            None => {
                entries = timer.changed.wait(entries).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
        };
        if let Some(wait) = wait {
            entries =
                timer.changed.wait_timeout(entries, wait).unwrap_or_else(PoisonError::into_inner).0;
            continue;
        }
        let Some((_, action)) = entries.due.pop_first() else { continue };
        drop(entries);
        // An action resolves its job itself when something in it fails; a panic (a user's
        // `Drop`, say) must not stop the timer for every other job.
        if catch_unwind(AssertUnwindSafe(action)).is_err() {
            tracing::error!("a timer action panicked");
        }
        entries = timer.lock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn actions_run_in_the_order_of_their_times_and_cancelled_ones_never() {
        let (sender, receiver) = mpsc::channel();
        let now = Instant::now();
        for (label, millis) in [(3u8, 60u64), (1, 20), (2, 40), (9, 50)] {
            let sender = sender.clone();
            let key = schedule(
                now + Duration::from_millis(millis),
                Box::new(move || sender.send(label).unwrap()),
            )
            .ok()
            .expect("the timer starts");
            if label == 9 {
                cancel(key);
            }
        }
        drop(sender);
        let order: Vec<u8> = receiver.iter().collect();
        assert_eq!(order, [1, 2, 3]);
        assert!(now.elapsed() >= Duration::from_millis(60));
    }
}
