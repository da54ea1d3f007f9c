//! The process backend: tasks run in worker processes started from the program's own executable.
//!
//! The pool keeps a queue of submitted jobs and one slot (see [`slot`]) per worker: a slot thread
//! that starts the worker process lazily and sends it jobs, pipelined, and a reader thread that
//! resolves jobs from the worker's replies. When the worker dies, the job it was running resolves
//! as [`TaskError::WorkerDied`], the jobs sent after it go back to the queue, and the slot starts
//! a new worker for the next job. See `README.md` beside this file for the life cycle and the
//! wire format.

mod child;
mod claim;
mod entry;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
mod large;
mod lead;
mod pace;
mod protocol;
#[cfg(feature = "cluster")]
mod remote;
mod ring;
mod slot;
// The platform layer: the only module of the backend with `unsafe` code.
mod serve;
#[allow(unsafe_code)]
mod sys;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use child::Death;
use protocol::Reply;

use crate::job::{Job, Stop};
use crate::ledger::Ledger;
use crate::progress::{Decode, Incoming};
use crate::{Error, Task, TaskError};

pub(crate) use entry::is_worker;
#[cfg(feature = "cluster")]
pub(crate) use remote::RemoteSlots;

/// What identifies this build to its workers: the task registry and the executable's identity.
pub(crate) fn build_id() -> u64 {
    static BUILD: OnceLock<u64> = OnceLock::new();
    *BUILD.get_or_init(|| {
        let mut hasher = DefaultHasher::new();
        crate::registry::fingerprint(&mut hasher);
        if let Ok(metadata) = std::fs::metadata("/proc/self/exe") {
            use std::os::unix::fs::MetadataExt;
            (metadata.dev(), metadata.ino(), metadata.len(), metadata.mtime()).hash(&mut hasher);
        }
        hasher.finish()
    })
}

/// The settings of a process pool: the one settings type of the process layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) workers: usize,
    pub(crate) max_tasks_per_worker: Option<usize>,
    pub(crate) max_memory_per_worker: Option<u64>,
    pub(crate) max_frame: usize,
}

/// A job as the slot threads see it, with its task type erased.
trait Request: Send {
    /// Claims the job and appends its serialized task to `frame`; `None` if it was cancelled
    /// meanwhile.
    fn start(&self, stop: Arc<dyn Stop>, frame: &mut Vec<u8>) -> Option<Result<(), String>>;
    /// Hands a job that was sent but never started to another worker; `false` if it was
    /// cancelled meanwhile.
    fn restart(&self, stop: Arc<dyn Stop>) -> bool;
    fn task(&self) -> &'static str;
    fn id(&self) -> u64;
    /// The job's attempt this request carries (1 for the first; 0 before its claim).
    fn attempt(&self) -> u32;
    /// Whether the job's attempt is over: resolved (a cancel may resolve it between its claim and
    /// its send) or timed out.
    fn is_finished(&self) -> bool;
    /// Resolves the job from its reply; `false` if something else resolved it first.
    fn finish(&self, reply: Reply<'_>) -> bool;
    /// Resolves the job with an error not tied to a reply; `false` if already resolved.
    fn fail(&self, error: Failure) -> bool;
    /// Where the progress messages of the job's claimed attempt go, decoded from their bytes.
    fn progress(&self) -> Arc<dyn Decode>;
    /// Whether each attempt of the job has a time limit: such a job is sent only to a worker with
    /// nothing in flight, so that its clock does not run while it waits behind another job.
    fn has_timeout(&self) -> bool;
}

/// Why a job failed outside the task itself.
enum Failure {
    /// The worker running it died.
    Died(Death),
    /// Its arguments did not serialize or fit in a frame.
    Arguments(String),
    /// No worker could be started for it.
    Unavailable(String),
}

struct Submitted<T: Task> {
    job: Arc<Job<T>>,
    /// The attempt claimed by `start`; 0 before.
    attempt: AtomicU32,
    /// The pool's `max_message_size`: the arguments' frame may not be longer.
    max_frame: usize,
}

impl<T: Task> Submitted<T> {
    fn complete(&self, outcome: crate::job::Outcome<T>) -> bool {
        match self.attempt() {
            // Never claimed (no worker could start): not an attempt, never retried.
            0 => self.job.complete(outcome),
            attempt => self.job.finish_attempt(attempt, outcome),
        }
    }

    fn serialization(value: &'static str, message: String) -> TaskError<T::Error> {
        TaskError::Serialization { task: T::NAME.to_owned(), value, message }
    }
}

impl<T: Task> Request for Submitted<T> {
    fn has_timeout(&self) -> bool {
        T::POLICY.timeout().is_some()
    }

    fn start(&self, stop: Arc<dyn Stop>, frame: &mut Vec<u8>) -> Option<Result<(), String>> {
        let (task, attempt) = self.job.start_attempt(Some(stop))?;
        self.attempt.store(attempt, Ordering::Relaxed);
        Some(protocol::encode_value(&task, frame, self.max_frame))
    }

    fn restart(&self, stop: Arc<dyn Stop>) -> bool {
        self.job.restop(self.attempt(), stop)
    }

    fn task(&self) -> &'static str {
        T::NAME
    }

    fn id(&self) -> u64 {
        self.job.id()
    }

    fn attempt(&self) -> u32 {
        self.attempt.load(Ordering::Relaxed)
    }

    fn is_finished(&self) -> bool {
        match self.attempt() {
            0 => self.job.is_finished(),
            attempt => self.job.is_attempt_over(attempt),
        }
    }

    fn finish(&self, reply: Reply<'_>) -> bool {
        let outcome = match reply {
            Reply::Output(bytes) => protocol::decode_value::<T::Output>(bytes)
                .map_err(|message| Self::serialization("output", message)),
            Reply::Failed(bytes) => match protocol::decode_value::<T::Error>(bytes) {
                Ok(error) => Err(TaskError::Failed(error)),
                Err(message) => Err(Self::serialization("error", message)),
            },
            Reply::Panicked { message, location, backtrace } => Err(TaskError::Panicked {
                task: T::NAME.to_owned(),
                message: message.to_owned(),
                location: location.map(str::to_owned),
                backtrace: backtrace.map(str::to_owned),
            }),
            Reply::BadArguments(message) => {
                Err(Self::serialization("arguments", message.to_owned()))
            }
            Reply::UnknownTask => Err(TaskError::UnknownTask { task: T::NAME.to_owned() }),
            // Cancelled before it started: the cancel resolved it already.
            Reply::Skipped => return false,
            Reply::Unserializable { is_error, message } => Err(Self::serialization(
                if is_error { "error" } else { "output" },
                message.to_owned(),
            )),
        };
        self.complete(outcome)
    }

    fn progress(&self) -> Arc<dyn Decode> {
        Arc::new(Incoming { feed: self.job.feed(), attempt: self.attempt() })
    }

    fn fail(&self, failure: Failure) -> bool {
        let error = match failure {
            Failure::Died(death) => TaskError::WorkerDied {
                task: T::NAME.to_owned(),
                pid: death.pid,
                reason: death.reason,
                stderr_tail: death.stderr_tail,
            },
            Failure::Arguments(message) => Self::serialization("arguments", message),
            Failure::Unavailable(reason) => {
                TaskError::WorkerUnavailable { task: T::NAME.to_owned(), reason }
            }
        };
        self.complete(Err(error))
    }
}

/// The parent side of a process pool.
pub(crate) struct ProcessBackend {
    shared: Arc<slot::Shared>,
    max_frame: usize,
}

impl ProcessBackend {
    pub(crate) fn start(ledger: &Arc<Ledger>, settings: Settings) -> Result<Self, Error> {
        if is_worker() {
            return Err(Error::invalid_config(
                "a worker process cannot start worker processes of its own; \
                 tasks dispatched inside a worker run on its threads (the default pool there \
                 uses the thread backend)",
            ));
        }
        entry::anchor();
        crate::unwind::install_hook();
        // Slot threads and workers start as work arrives: nothing per worker before it is needed.
        let shared = slot::Shared::new(settings, build_id(), Arc::clone(ledger));
        Ok(ProcessBackend { shared, max_frame: settings.max_frame })
    }

    /// Queues `job`; `false` if the pool is stopping.
    pub(crate) fn submit<T: Task>(&self, job: Arc<Job<T>>) -> bool {
        self.shared.submit(self.request(job))
    }

    /// What the slots take of `job`: its next attempt, to claim and serialize when it is sent.
    fn request<T: Task>(&self, job: Arc<Job<T>>) -> Box<dyn Request> {
        Box::new(Submitted { job, attempt: AtomicU32::new(0), max_frame: self.max_frame })
    }

    /// Hands `jobs` (a `map` window) to the workers together (see `Shared::submit_all`): one
    /// lock for the window, and an idle worker's share in one write, each share no more than
    /// the worker's window; for each, `false` if the pool is stopping.
    pub(crate) fn submit_all<T: Task>(&self, jobs: &[Arc<Job<T>>]) -> Vec<bool> {
        let requests = jobs.iter().map(|job| self.request(Arc::clone(job))).collect();
        vec![self.shared.submit_all(requests, true); jobs.len()]
    }

    /// Queues requests that are no pool's jobs (a cluster serving process's tasks), together
    /// (see `Shared::submit_all`); `false` (none taken) if the pool is stopping.
    #[cfg(feature = "cluster")]
    fn submit_requests(&self, requests: Vec<Box<dyn Request>>) -> bool {
        self.shared.submit_all(requests, false)
    }

    /// Lets the slots finish the queue, retire their workers and exit; with `wait`, waits for it.
    pub(crate) fn stop(&self, wait: bool) {
        self.shared.stop();
        if wait {
            for slot in self.shared.take_handles() {
                // A slot thread that panicked has nothing left to clean up.
                let _ = slot.join();
            }
        }
    }

    /// Stops now: kills every worker (their jobs are resolved already), then stops the slots.
    pub(crate) fn kill(&self) {
        self.shared.kill_workers();
        self.stop(true);
    }

    /// How many tasks workers are running now (started, not jobs sent and waiting).
    pub(crate) fn running(&self) -> usize {
        self.shared.running()
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        self.stop(false);
    }
}
