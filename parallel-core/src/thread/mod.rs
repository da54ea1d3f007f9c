//! The thread backend: tasks run on the threads of a rayon pool owned by the [`Pool`](crate::Pool).
//!
//! Each worker thread owns its [`Environment`](crate::Environment)s (see [`worker`]); a job is
//! pushed on the backend's [`queue`], which runners (rayon jobs, one per worker thread at most)
//! drain: each claims the task from its [`Job`] and runs it, so a job that was cancelled while
//! queued costs its worker one lock and nothing else. A janitor thread (see
//! [`janitor`]) drops expired environment entries while workers idle.

mod janitor;
mod queue;
mod worker;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crossbeam_utils::CachePadded;

use crate::job::Job;
use crate::ledger::Ledger;
use crate::{Error, Task};

use janitor::Janitor;
use queue::Queue;
pub(crate) use worker::help;

/// The stack of a worker thread. rayon runs queued tasks on a thread that waits inside a task's
/// `par_iter` or `join`, so with many tasks queued one stack can hold dozens of tasks, each with
/// its own parallel section (in a debug build, 2 MiB overflowed at 3000 queued tasks). Only the
/// pages a thread touches are committed.
const STACK_SIZE: usize = 64 << 20;

/// What a pool's workers share with the pool.
pub(crate) struct Shared {
    pub(crate) ledger: Arc<Ledger>,
    /// After this many tasks a worker starts over with a fresh environment.
    pub(crate) max_tasks_per_worker: Option<usize>,
    pub(crate) janitor: Janitor,
    /// Per worker thread, by its index: how many tasks are on its stack right now, including
    /// tasks nested on it and tasks abandoned by a cancel or a timeout, which keep their thread
    /// until they return. Written only by its own thread (a load and a store, no locked
    /// instruction), each on its own cache line: the workers never contend for it.
    pub(crate) depths: Box<[CachePadded<AtomicUsize>]>,
    /// The jobs submitted and not taken by a runner yet.
    pub(crate) queue: Queue,
}

/// A rayon pool and the state its workers share.
pub(crate) struct ThreadBackend {
    shared: Arc<Shared>,
    /// `None` once the pool is shut down or killed: dropping rayon's pool lets its threads exit.
    /// The janitor holds only a weak reference, so dropping the backend drops the pool.
    rayon: Arc<RwLock<Option<rayon::ThreadPool>>>,
}

impl ThreadBackend {
    pub(crate) fn start(
        ledger: Arc<Ledger>,
        workers: usize,
        max_tasks_per_worker: Option<usize>,
    ) -> Result<Self, Error> {
        crate::unwind::install_hook();
        let shared = Arc::new(Shared {
            ledger,
            max_tasks_per_worker,
            janitor: Janitor::new(),
            depths: (0..workers).map(|_| CachePadded::new(AtomicUsize::new(0))).collect(),
            queue: Queue::new(workers),
        });
        let pool_id = shared.ledger_pool_id();
        let for_start = Arc::clone(&shared);
        let rayon = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .stack_size(STACK_SIZE)
            .thread_name(move |index| format!("parallel-{pool_id}-worker-{index}"))
            .start_handler(move |index| worker::enter(&for_start, index))
            .exit_handler(|_| worker::leave())
            .build()
            .map_err(|error| {
                Error::io("start the worker threads", std::io::Error::other(error.to_string()))
            })?;
        let rayon = Arc::new(RwLock::new(Some(rayon)));
        shared.janitor.start(&shared, Arc::downgrade(&rayon))?;
        Ok(ThreadBackend { shared, rayon })
    }

    /// Queues `job` on a worker; `false` if the pool no longer has workers.
    pub(crate) fn submit<T: Task>(&self, job: Arc<Job<T>>) -> bool {
        let rayon = self.rayon.read().unwrap_or_else(PoisonError::into_inner);
        let Some(rayon) = rayon.as_ref() else {
            return false;
        };
        if self.shared.queue.push(job) {
            let shared = Arc::clone(&self.shared);
            rayon.spawn_fifo(move || worker::run_queue(shared));
        }
        true
    }

    /// Lets the threads exit once the work already queued is done.
    pub(crate) fn stop(&self) {
        let rayon = self.rayon.write().unwrap_or_else(PoisonError::into_inner).take();
        self.shared.janitor.stop();
        drop(rayon);
    }

    /// How many tasks run on the pool's threads, and on how many threads: what the threads do,
    /// whether or not a handle still waits for the task.
    pub(crate) fn activity(&self) -> (usize, usize) {
        let depths = self.shared.depths.iter().map(|depth| depth.load(Ordering::Relaxed));
        depths
            .fold((0, 0), |(running, busy), depth| (running + depth, busy + usize::from(depth > 0)))
    }

    /// Whether the calling thread is one of this pool's workers.
    pub(crate) fn is_current_worker(&self) -> bool {
        worker::current_pool() == Some(self.shared.ledger_pool_id())
    }
}

impl Shared {
    fn ledger_pool_id(&self) -> u64 {
        self.ledger.pool_id()
    }
}

impl Drop for ThreadBackend {
    fn drop(&mut self) {
        self.shared.janitor.stop();
    }
}
