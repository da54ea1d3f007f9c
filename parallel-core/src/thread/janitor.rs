//! The janitor: drops expired [`Environment`](crate::Environment) entries while workers idle.
//!
//! A worker purges its environment before every task, but an idle rayon thread runs no code of
//! ours. So each worker publishes the earliest expiry of its environments after every task, and a
//! janitor thread sleeps until the earliest published one, then broadcasts a purge to the workers.
//! Pools whose environments hold no TTL entries never wake the janitor.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::{worker, Shared};
use crate::Error;

/// No expiry published.
const NONE: u64 = u64::MAX;

/// The shortest time between two purges, so that a busy worker that cannot purge yet does not
/// make the janitor spin.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(250);

pub(crate) struct Janitor {
    base: Instant,
    /// Per worker thread: the earliest expiry of its environments, in nanoseconds after `base`.
    /// A worker registers its own as its thread starts, so nothing is set aside per worker
    /// before a thread exists to use it.
    expiries: Mutex<Vec<Arc<AtomicU64>>>,
    thread: Mutex<Option<Thread>>,
    is_stopped: AtomicBool,
}

impl Janitor {
    pub(crate) fn new() -> Self {
        Janitor {
            base: Instant::now(),
            expiries: Mutex::new(Vec::new()),
            thread: Mutex::new(None),
            is_stopped: AtomicBool::new(false),
        }
    }

    /// A new worker thread's place to publish its earliest expiry.
    pub(crate) fn register(&self) -> Arc<AtomicU64> {
        let expiry = Arc::new(AtomicU64::new(NONE));
        self.expiries.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(&expiry));
        expiry
    }

    /// Starts the janitor thread for the pool that owns `shared` and `rayon`.
    pub(crate) fn start(
        &self,
        shared: &Arc<Shared>,
        rayon: Weak<RwLock<Option<rayon::ThreadPool>>>,
    ) -> Result<(), Error> {
        let shared = Arc::downgrade(shared);
        let handle = thread::Builder::new()
            .name("parallel-janitor".to_owned())
            .spawn(move || sweep_until_stopped(&shared, &rayon))
            .map_err(|error| Error::io("start the janitor thread", error))?;
        *self.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle.thread().clone());
        Ok(())
    }

    /// Records in `slot` (from [`register`](Self::register)) the earliest expiry of a worker's
    /// environments, waking the janitor if it is now due sooner than it planned.
    pub(crate) fn publish(&self, slot: &AtomicU64, expiry: Option<Instant>) {
        let nanos = expiry.map_or(NONE, |at| {
            u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(NONE - 1)
        });
        // Only the worker that owns `slot` writes it: a load, and a store only on a change,
        // which is rare (most environments hold no TTL entry: `NONE` after every task).
        let previous = slot.load(Ordering::Relaxed);
        if nanos == previous {
            return;
        }
        slot.store(nanos, Ordering::Release);
        if nanos < previous {
            self.wake();
        }
    }

    pub(crate) fn stop(&self) {
        self.is_stopped.store(true, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        if let Some(thread) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            thread.unpark();
        }
    }

    fn earliest(&self) -> Option<Instant> {
        let expiries = self.expiries.lock().unwrap_or_else(PoisonError::into_inner);
        let nanos = expiries.iter().map(|slot| slot.load(Ordering::Acquire)).min()?;
        (nanos != NONE).then(|| self.base + Duration::from_nanos(nanos))
    }
}

fn sweep_until_stopped(shared: &Weak<Shared>, rayon: &Weak<RwLock<Option<rayon::ThreadPool>>>) {
    let mut last_sweep: Option<Instant> = None;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if strong.janitor.is_stopped.load(Ordering::Acquire) {
            return;
        }
        let due = strong.janitor.earliest();
        drop(strong);
        let now = Instant::now();
        match due {
            None => thread::park(),
            Some(due) if due > now => thread::park_timeout(due - now),
            Some(_) => {
                let ready = last_sweep.map_or(now, |last| last + MIN_SWEEP_INTERVAL);
                if ready > now {
                    thread::park_timeout(ready - now);
                    continue;
                }
                last_sweep = Some(now);
                let Some(rayon) = rayon.upgrade() else { return };
                let rayon = rayon.read().unwrap_or_else(PoisonError::into_inner);
                match rayon.as_ref() {
                    Some(pool) => pool.spawn_broadcast(|_| worker::purge_idle()),
                    None => return,
                }
            }
        }
    }
}
