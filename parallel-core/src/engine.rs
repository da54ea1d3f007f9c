//! The backend contract: the operations every engine offers a pool, and the one place that picks
//! the engine. [`Pool`](crate::Pool) and [`TaskHandle`](crate::TaskHandle) speak only to
//! [`Engine`], never to a backend's module (as crossbeam-channel's `flavors` each offer the same
//! methods and `channel.rs` only dispatches).
//!
//! | operation | thread backend | process backend |
//! | --- | --- | --- |
//! | `submit` | a rayon `spawn_fifo` | the slots' queue, or straight to an idle worker |
//! | `help` a waiting caller | run the job in place if this thread is one of its pool's workers | nothing (callers are never its workers) |
//! | `stop` after a drain | stop the janitor and the rayon pool | retire the workers, join the slots |
//! | `kill` | as `stop` (a running thread cannot be stopped) | kill every worker, join the slots |
//! | `activity` (for stats) | tasks on the threads, threads busy | tasks whose claims say they started |
//! | `is_current_worker` | whether this thread is one of its workers | never |
//!
//! The cluster backend (feature `cluster`) publishes into the server's stream on `submit`, helps
//! no caller, flushes and closes its connection on `stop` and `kill` (the cancels of a killed
//! pool are sent first), and counts as running the tasks a serving slot said it started.

use std::sync::Arc;

#[cfg(feature = "cluster")]
use crate::cluster::ClusterBackend;
use crate::job::Job;
use crate::ledger::Ledger;
use crate::pool::Settings;
#[cfg(process_backend)]
use crate::process::{self, ProcessBackend};
use crate::thread::{self, ThreadBackend};
use crate::{Backend, Error, Task};

/// A pool's engine: one backend, behind the operations every backend offers.
pub(crate) enum Engine {
    Thread(ThreadBackend),
    #[cfg(process_backend)]
    Process(ProcessBackend),
    #[cfg(feature = "cluster")]
    Cluster(ClusterBackend),
}

/// What a pool's workers are doing, for [`PoolStats`](crate::PoolStats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Activity {
    /// Tasks running on a worker.
    pub(crate) running: usize,
    /// Workers with a task.
    pub(crate) busy: usize,
    /// Tasks submitted and not started nor resolved.
    pub(crate) queued: usize,
}

impl Engine {
    /// Starts the engine `settings.backend` names, for the jobs of `ledger`.
    ///
    /// # Errors
    ///
    /// `BackendUnavailable` for a backend this build or platform lacks; what the backend reports
    /// when it cannot start.
    pub(crate) fn start(settings: Settings, ledger: &Arc<Ledger>) -> Result<Engine, Error> {
        match settings.backend {
            Backend::Thread => Ok(Engine::Thread(ThreadBackend::start(
                Arc::clone(ledger),
                settings.workers,
                settings.max_tasks_per_worker,
            )?)),
            #[cfg(process_backend)]
            Backend::Process => Ok(Engine::Process(ProcessBackend::start(
                ledger,
                process::Settings {
                    workers: settings.workers,
                    max_tasks_per_worker: settings.max_tasks_per_worker,
                    max_memory_per_worker: settings.max_memory_per_worker,
                    max_frame: settings.max_message_size,
                },
            )?)),
            #[cfg(not(process_backend))]
            Backend::Process => Err(Error::backend_unavailable(settings.backend)),
            #[cfg(feature = "cluster")]
            Backend::Cluster => match &settings.cluster {
                Some(target) => {
                    Ok(Engine::Cluster(ClusterBackend::start(target, settings.max_message_size)?))
                }
                None => Err(Error::invalid_config(
                    "a cluster pool needs its server: PoolBuilder::cluster(url) or \
                     PARALLEL_CLUSTER=url",
                )),
            },
            #[cfg(not(feature = "cluster"))]
            Backend::Cluster => Err(Error::backend_unavailable(settings.backend)),
        }
    }

    /// Hands `job` to the workers; `false` if the engine is stopping.
    pub(crate) fn submit<T: Task>(&self, job: Arc<Job<T>>) -> bool {
        match self {
            Engine::Thread(engine) => engine.submit(job),
            #[cfg(process_backend)]
            Engine::Process(engine) => engine.submit(job),
            #[cfg(feature = "cluster")]
            Engine::Cluster(engine) => engine.submit(job),
        }
    }

    /// Whether the next tasks of a stream that has `submitted` tasks so far are better handed
    /// over together ([`Engine::submit_all`]): the cluster's always, whose short tasks then
    /// travel several to a message; the process backend's once the stream runs (one lock for the
    /// window, an idle worker's share in one write), but not its first window, whose first task
    /// then reaches an idle worker before the others are even taken from the input, alone, so
    /// that its caller reads its reply itself (`process/lead.rs`): together, the first result
    /// of 200 tasks of up to 1 ms came 2 to 3 times later on a loaded machine. The thread
    /// backend takes each task as it comes.
    #[cfg_attr(
        not(process_backend),
        allow(unused_variables, reason = "only the process backend's answer depends on it")
    )]
    pub(crate) fn submits_together(&self, submitted: usize) -> bool {
        match self {
            Engine::Thread(_) => false,
            #[cfg(process_backend)]
            Engine::Process(_) => submitted > 0,
            #[cfg(feature = "cluster")]
            Engine::Cluster(_) => true,
        }
    }

    /// Hands `jobs` to the workers together; for each, `false` if the engine is stopping.
    pub(crate) fn submit_all<T: Task>(&self, jobs: &[Arc<Job<T>>]) -> Vec<bool> {
        match self {
            #[cfg(process_backend)]
            Engine::Process(engine) => engine.submit_all(jobs),
            #[cfg(feature = "cluster")]
            Engine::Cluster(engine) => engine.submit_all(jobs),
            Engine::Thread(_) => jobs.iter().map(|job| self.submit(Arc::clone(job))).collect(),
        }
    }

    /// Helps a caller about to wait for `job`: where the caller's thread is a worker of the job's
    /// own pool and the job is still queued, runs it in place (waiting for it could deadlock a
    /// pool of one worker). Any backend's job may be waited for from any thread, so this asks
    /// every backend that has workers a caller's thread can be. `true` if the caller may run
    /// the job in place: it must look again whenever it finds the job queued (a retry).
    pub(crate) fn help<T: Task>(job: &Arc<Job<T>>) -> bool {
        thread::help(job)
    }

    /// Whether the calling thread is one of this engine's workers.
    pub(crate) fn is_current_worker(&self) -> bool {
        match self {
            Engine::Thread(engine) => engine.is_current_worker(),
            #[cfg(process_backend)]
            Engine::Process(_) => false,
            #[cfg(feature = "cluster")]
            Engine::Cluster(_) => false,
        }
    }

    /// Stops the workers once the ledger is drained and closed: they finish nothing more.
    pub(crate) fn stop(&self) {
        match self {
            Engine::Thread(engine) => engine.stop(),
            #[cfg(process_backend)]
            Engine::Process(engine) => engine.stop(true),
            #[cfg(feature = "cluster")]
            Engine::Cluster(engine) => engine.stop(),
        }
    }

    /// A kill is coming: the cluster tells every serving process at once, before the jobs'
    /// own cancels, so that a slot freed by the first of them starts none of the others.
    pub(crate) fn announce_kill(&self) {
        #[cfg(feature = "cluster")]
        if let Engine::Cluster(engine) = self {
            engine.announce_kill();
        }
    }

    /// Stops the workers now; every job is resolved already (the ledger was aborted).
    pub(crate) fn kill(&self) {
        match self {
            // A running thread cannot be stopped: its task is abandoned, its result dropped.
            Engine::Thread(engine) => engine.stop(),
            #[cfg(process_backend)]
            Engine::Process(engine) => engine.kill(),
            // Every job's cancel is queued already (the ledger was aborted): sent, then stopped.
            #[cfg(feature = "cluster")]
            Engine::Cluster(engine) => engine.stop(),
        }
    }

    /// What the workers are doing, given the jobs live in the ledger and those claimed by a
    /// worker.
    pub(crate) fn activity(&self, live: usize, claimed: usize) -> Activity {
        match self {
            // A thread keeps running a task abandoned by a cancel or a timeout, and may run tasks
            // nested in another, so the thread backend counts for itself.
            Engine::Thread(engine) => {
                let (running, busy) = engine.activity();
                Activity { running, busy, queued: live.saturating_sub(claimed) }
            }
            // Jobs sent to a worker wait there until it gets to them: they are queued until their
            // claims say they started.
            #[cfg(process_backend)]
            Engine::Process(engine) => {
                let running = engine.running();
                Activity { running, busy: running, queued: live.saturating_sub(running) }
            }
            // Tasks out and not started wait in the server's stream for a serving slot.
            #[cfg(feature = "cluster")]
            Engine::Cluster(engine) => {
                let (running, _) = engine.activity();
                Activity { running, busy: running, queued: live.saturating_sub(running) }
            }
        }
    }
}
