//! The process backend: tasks run in worker processes started from the program's own executable.
//!
//! The pool keeps a queue of submitted jobs and one slot thread per worker. A slot thread takes a
//! job, starts its worker process if it has none (lazily, so a pool that is never used starts no
//! process), sends the job, waits for the reply and resolves the job; it is the only thread that
//! reaps its worker, and it outlives it, which `PR_SET_PDEATHSIG` needs. When the worker dies,
//! the slot reports the job it was running as [`TaskError::WorkerDied`] and starts a new worker
//! for the next job. See `README.md` beside this file for the life cycle and the wire format.

mod child;
mod entry;
mod protocol;
mod worker;

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use child::{Death, KillSwitch, Settings, Worker};
use protocol::{FromWorker, ReadError, Reply};

use crate::job::{Job, Ledger, Stop};
use crate::{Error, Task, TaskError};

pub(crate) use entry::is_worker;

/// How long a retiring worker may take to exit before it is killed.
const RETIRE_GRACE: Duration = Duration::from_secs(5);
/// How many times in a row a slot tries to start a worker before it fails the job in hand.
const START_ATTEMPTS: u32 = 5;

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

/// The settings of a process pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
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
    fn task(&self) -> &'static str;
    fn id(&self) -> u64;
    /// Resolves the job from its reply; `false` if something else resolved it first.
    fn finish(&self, reply: Reply<'_>) -> bool;
    /// Resolves the job with an error not tied to a reply; `false` if already resolved.
    fn fail(&self, error: Failure) -> bool;
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
}

impl<T: Task> Submitted<T> {
    fn complete(&self, outcome: crate::job::Outcome<T>) -> bool {
        self.job.complete(outcome)
    }

    fn serialization(value: &'static str, message: String) -> TaskError<T::Error> {
        TaskError::Serialization { task: T::NAME.to_owned(), value, message }
    }
}

impl<T: Task> Request for Submitted<T> {
    fn start(&self, stop: Arc<dyn Stop>, frame: &mut Vec<u8>) -> Option<Result<(), String>> {
        let task = self.job.start_stoppable(Some(stop))?;
        Some(protocol::encode_value(&task, frame))
    }

    fn task(&self) -> &'static str {
        T::NAME
    }

    fn id(&self) -> u64 {
        self.job.id()
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
            Reply::Unserializable { is_error, message } => Err(Self::serialization(
                if is_error { "error" } else { "output" },
                message.to_owned(),
            )),
        };
        self.complete(outcome)
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

/// The queue the slot threads take jobs from.
struct Queue {
    jobs: VecDeque<Box<dyn Request>>,
    /// No more jobs come: slots finish the queue, retire their workers and exit.
    is_stopping: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    available: Condvar,
    config: Config,
    build: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next job, or `None` once the pool stops and the queue is empty.
    fn next(&self) -> Option<Box<dyn Request>> {
        let mut queue = self.lock();
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                return Some(job);
            }
            if queue.is_stopping {
                return None;
            }
            queue = self.available.wait(queue).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The parent side of a process pool.
pub(crate) struct ProcessBackend {
    shared: Arc<Shared>,
    slots: Mutex<Vec<JoinHandle<()>>>,
}

impl ProcessBackend {
    pub(crate) fn start(ledger: &Arc<Ledger>, config: Config) -> Result<Self, Error> {
        if is_worker() {
            return Err(Error::invalid_config(
                "a worker process cannot start worker processes of its own; \
                 tasks dispatched inside a worker run on its threads (the default pool there \
                 uses the thread backend)",
            ));
        }
        entry::anchor();
        crate::unwind::install_hook();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { jobs: VecDeque::new(), is_stopping: false }),
            available: Condvar::new(),
            config,
            build: build_id(),
        });
        let pool_id = ledger.pool_id();
        let mut slots = Vec::with_capacity(config.workers);
        for worker_id in 0..config.workers {
            let shared = Arc::clone(&shared);
            let slot = thread::Builder::new()
                .name(format!("parallel-{pool_id}-process-{worker_id}"))
                .spawn(move || run_slot(&shared, worker_id))
                .map_err(|error| Error::io("start a worker's slot thread", error))?;
            slots.push(slot);
        }
        Ok(ProcessBackend { shared, slots: Mutex::new(slots) })
    }

    /// Queues `job`; `false` if the pool is stopping.
    pub(crate) fn submit<T: Task>(&self, job: Arc<Job<T>>) -> bool {
        {
            let mut queue = self.shared.lock();
            if queue.is_stopping {
                return false;
            }
            queue.jobs.push_back(Box::new(Submitted { job }));
        }
        self.shared.available.notify_one();
        true
    }

    /// Lets the slots finish the queue, retire their workers and exit; with `wait`, waits for it.
    pub(crate) fn stop(&self, wait: bool) {
        self.shared.lock().is_stopping = true;
        self.shared.available.notify_all();
        if wait {
            let slots =
                std::mem::take(&mut *self.slots.lock().unwrap_or_else(PoisonError::into_inner));
            for slot in slots {
                // A slot thread that panicked has nothing left to clean up.
                let _ = slot.join();
            }
        }
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        self.stop(false);
    }
}

impl Stop for KillSwitch {
    fn stop(&self) {
        self.kill();
    }
}

/// One worker slot: takes jobs, runs them on its worker process, replaces the process when it
/// dies or has run its share of tasks.
fn run_slot(shared: &Shared, worker_id: usize) {
    let settings = Settings {
        worker_id,
        max_frame: shared.config.max_frame,
        max_memory: shared.config.max_memory_per_worker,
    };
    let mut worker: Option<Worker> = None;
    let mut tasks_run = 0usize;
    let mut failed_starts = 0u32;
    let mut frame = Vec::new();
    while let Some(request) = shared.next() {
        // Start a worker before claiming the job, so that a job cancelled meanwhile is not run.
        if worker.is_none() {
            match start_worker(settings, shared.build, &mut failed_starts) {
                Ok(started) => {
                    worker = Some(started);
                    tasks_run = 0;
                }
                Err(failure) => {
                    request.fail(failure);
                    continue;
                }
            }
        }
        let Some(current) = worker.as_mut() else {
            continue;
        };
        let stop: Arc<dyn Stop> = Arc::new(current.kill_switch());
        protocol::begin_run(&mut frame, request.id(), request.task());
        match request.start(stop, &mut frame) {
            None => continue,
            Some(Err(message)) => {
                request.fail(Failure::Arguments(message));
                continue;
            }
            Some(Ok(())) => {}
        }
        match exchange(current, request.as_ref(), &mut frame, shared.config.max_frame) {
            Exchange::Replied { is_ours } => {
                tasks_run += 1;
                if !is_ours {
                    // Resolved from outside while running: cancelled, and its worker killed.
                    if let Some(mut killed) = worker.take() {
                        killed.kill_switch().kill();
                        killed.reap();
                    }
                } else if shared.config.max_tasks_per_worker.is_some_and(|max| tasks_run >= max) {
                    if let Some(done) = worker.take() {
                        done.retire(RETIRE_GRACE);
                    }
                }
            }
            Exchange::TooLarge(message) => {
                request.fail(Failure::Arguments(message));
            }
            Exchange::Broken(problem) => {
                let Some(mut broken) = worker.take() else {
                    continue;
                };
                broken.kill_switch().kill();
                let mut death = broken.reap();
                if let Some(problem) = problem {
                    death.reason = format!("{problem}; the worker was killed and {}", death.reason);
                } else if let Some(limit) = shared.config.max_memory_per_worker {
                    if death.is_out_of_memory {
                        death.reason =
                            format!("hit its memory limit of {limit} bytes and {}", death.reason);
                    }
                }
                request.fail(Failure::Died(death));
            }
        }
    }
    if let Some(worker) = worker {
        worker.retire(RETIRE_GRACE);
    }
}

/// Starts a worker, retrying with backoff; after [`START_ATTEMPTS`] failures in a row, reports
/// the last one (and the next job tries afresh, still backing off).
fn start_worker(
    settings: Settings,
    build: u64,
    failed_starts: &mut u32,
) -> Result<Worker, Failure> {
    loop {
        match Worker::start(settings, build) {
            Ok(worker) => {
                *failed_starts = 0;
                return Ok(worker);
            }
            Err(error) => {
                *failed_starts += 1;
                let backoff = Duration::from_millis(10 << (*failed_starts).min(8));
                thread::sleep(backoff);
                if *failed_starts % START_ATTEMPTS == 0 {
                    let mut reason =
                        format!("{START_ATTEMPTS} attempts failed; the last: {}", error.message);
                    if let Some(death) = error.death {
                        reason.push_str(&format!("; worker {} {}", death.pid, death.reason));
                        if !death.stderr_tail.is_empty() {
                            reason.push_str(&format!(
                                "; its stderr ended with: {}",
                                death.stderr_tail
                            ));
                        }
                    }
                    return Err(Failure::Unavailable(reason));
                }
            }
        }
    }
}

enum Exchange {
    /// The worker replied; `is_ours` says whether the reply resolved the job.
    Replied { is_ours: bool },
    /// The arguments are over the frame limit; the worker is fine.
    TooLarge(String),
    /// The worker died or broke the protocol (the problem, if it was the protocol).
    Broken(Option<String>),
}

/// Sends the run frame built in `frame` to `worker` and waits for the reply, read into `frame`.
fn exchange(
    worker: &mut Worker,
    request: &dyn Request,
    frame: &mut Vec<u8>,
    max_frame: usize,
) -> Exchange {
    if let Err(error) = protocol::finish_frame(frame, max_frame) {
        return Exchange::TooLarge(format!("the arguments do not fit in a frame: {error}"));
    }
    if protocol::write_frame(&mut worker.writer, frame).is_err() {
        return Exchange::Broken(None);
    }
    let body = match protocol::read_frame(&mut worker.reader, frame, max_frame) {
        Ok(body) => body,
        Err(ReadError::Protocol(error)) => return Exchange::Broken(Some(error.to_string())),
        Err(ReadError::Closed | ReadError::Io(_)) => return Exchange::Broken(None),
    };
    match protocol::decode_from_worker(body) {
        Ok(FromWorker::Done { job, reply }) if job == request.id() => {
            Exchange::Replied { is_ours: request.finish(reply) }
        }
        Ok(other) => Exchange::Broken(Some(format!("the worker sent {other:?} out of turn"))),
        Err(error) => Exchange::Broken(Some(format!("the worker broke the protocol: {error}"))),
    }
}
