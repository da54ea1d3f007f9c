//! Worker slots: the threads that keep one worker process busy each.
//!
//! A slot thread takes jobs from the pool's queue, starts its worker process when it needs one,
//! claims the jobs, serializes them straight into their frames and sends them, several at a time
//! (pipelined: while the worker runs one, the next ones wait in its socket, so that short tasks
//! cost a fraction of a round trip each). A reader thread per worker resolves the jobs from the
//! worker's replies, in order. How many jobs a slot keeps in flight adapts to how long its tasks
//! take: many for tasks of microseconds, one or two for tasks of milliseconds, so that long tasks
//! still spread over every worker.
//!
//! The worker runs the jobs in the order sent, so the first job in flight is the one it runs:
//! cancelling it kills the worker; cancelling a later one sends `Cancel`, and the worker answers
//! `Skipped` instead of running it. When the worker dies, the first job in flight resolves as
//! `WorkerDied` and the others, which it never started, go back to the front of the queue.

use std::collections::VecDeque;
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::child::{lock, Death, KillSwitch, Settings, Worker};
use super::protocol::{self, FromWorker, ReadError, Reply, ToWorker};
use super::ring::Ring;
use super::{Config, Failure, Request};
use std::sync::atomic::Ordering;

use crate::job::{Ledger, Stop};
use crate::Error;

/// How long a retiring worker may take to exit before it is killed.
const RETIRE_GRACE: Duration = Duration::from_secs(5);
/// How many times in a row a slot tries to start a worker before it fails the job in hand.
const START_ATTEMPTS: u32 = 5;
/// The most jobs a slot keeps in flight on its worker.
const MAX_IN_FLIGHT: usize = 64;
/// How much work, in time, a slot aims to keep queued inside its worker: enough to hide a round
/// trip, little enough that a long task does not hold back others another worker could run.
const QUEUED_WORK: Duration = Duration::from_micros(200);
/// The largest job a caller's thread writes to a worker itself; larger ones go through the slot
/// thread, so that `dispatch` never waits for a worker to read megabytes.
const DIRECT_FRAME: usize = 64 << 10;
/// How many times a reader finding the reply ring empty yields its CPU and looks again before it
/// sleeps (about 10 to 20 µs on an idle machine): one-at-a-time round trip 50 -> 12-26 µs here.
const READER_SPINS: u32 = 16;
/// Tasks up to this long get a job queued behind the running one even when `QUEUED_WORK` is less.
const SHORT_TASK: Duration = Duration::from_millis(10);

/// A job in the queue: new, or sent to a worker that died before starting it.
enum Item {
    Fresh(Box<dyn Request>),
    Sent(Sent),
}

impl Item {
    fn request(&self) -> &dyn Request {
        match self {
            Item::Fresh(request) => request.as_ref(),
            Item::Sent(sent) => sent.request.as_ref(),
        }
    }
}

/// A job sent to a worker, with its frame kept in case it must be sent to another.
struct Sent {
    request: Box<dyn Request>,
    /// Shared with the write that sends it, so that keeping it costs no copy.
    frame: Arc<Vec<u8>>,
    sent_at: Instant,
    /// Open from the first send to the reply; the reader records the outcome.
    span: tracing::Span,
}

/// What it takes to send jobs to a slot's current worker, from any thread.
#[derive(Clone)]
struct Link {
    writer: Arc<Mutex<BufWriter<UnixStream>>>,
    kill: KillSwitch,
    ring: Arc<Ring>,
    /// Which of the slot's workers this is: a sender that finds another one (or none) in the slot
    /// state knows that its worker is gone.
    epoch: u64,
}

impl Link {
    fn of(worker: &Worker, epoch: u64) -> Link {
        Link {
            writer: Arc::clone(&worker.writer),
            kill: worker.kill_switch(),
            ring: Arc::clone(&worker.ring),
            epoch,
        }
    }
}

struct SlotState {
    in_flight: VecDeque<Sent>,
    /// The running worker, while the slot has one that is not known to be dying or retiring.
    link: Option<Link>,
    /// Jobs sent to the current worker, for `max_tasks_per_worker`.
    sent: usize,
    /// Set by the reader when the worker's channel ended, with the protocol problem if any.
    broken: Option<Option<String>>,
    /// The typical time between two replies of a busy worker, in nanoseconds (0: unknown yet).
    task_nanos: u64,
    last_reply: Option<Instant>,
}

impl SlotState {
    /// How many jobs this slot should keep in flight, from how long its tasks take.
    fn window(&self) -> usize {
        if self.task_nanos == 0 {
            return 1;
        }
        let window = (QUEUED_WORK.as_nanos() as u64 / self.task_nanos) as usize;
        // One job waiting behind the running one spares the worker a round trip of idleness per
        // task (7% of a 1 ms task here); for long tasks it could leave the job waiting while
        // another worker has nothing to do, so only while that costs at most `SHORT_TASK`.
        let least = if self.task_nanos <= SHORT_TASK.as_nanos() as u64 { 2 } else { 1 };
        window.clamp(least, MAX_IN_FLIGHT)
    }
}

struct State {
    queue: VecDeque<Item>,
    /// Slot threads waiting on their condition variable.
    asleep: Vec<usize>,
    is_stopping: bool,
    slots: Vec<SlotState>,
}

pub(super) struct Shared {
    state: Mutex<State>,
    wake: Vec<Condvar>,
    config: Config,
    build: u64,
    /// The pool's ledger, for its counts.
    ledger: Arc<Ledger>,
}

impl Shared {
    pub(super) fn new(config: Config, build: u64, ledger: Arc<Ledger>) -> Arc<Shared> {
        let slots = (0..config.workers)
            .map(|_| SlotState {
                in_flight: VecDeque::new(),
                link: None,
                sent: 0,
                broken: None,
                task_nanos: 0,
                last_reply: None,
            })
            .collect();
        Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                asleep: Vec::new(),
                is_stopping: false,
                slots,
            }),
            wake: (0..config.workers).map(|_| Condvar::new()).collect(),
            config,
            build,
            ledger,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Sends a job to an idle worker from the caller's thread, or queues it; `false` once the
    /// pool stops.
    ///
    /// Sending from the caller's thread spares the hop through the slot thread (a wake-up on
    /// another CPU, 10 to 20 µs here) when a worker waits with nothing to do, which is the case of
    /// one-at-a-time work. Jobs submitted while every worker is busy queue up, and the slots send
    /// them in batches.
    pub(super) fn submit(self: &Arc<Self>, request: Box<dyn Request>) -> bool {
        let mut state = self.lock();
        if state.is_stopping {
            return false;
        }
        let max_sent = self.config.max_tasks_per_worker.unwrap_or(usize::MAX);
        if state.queue.is_empty() {
            let idle = state.slots.iter().position(|slot| {
                slot.link.is_some()
                    && slot.broken.is_none()
                    && slot.in_flight.is_empty()
                    && slot.sent < max_sent
            });
            if let Some(id) = idle {
                let link = state.slots[id].link.clone();
                drop(state);
                if let Some(link) = link {
                    send_jobs(self, id, &link, vec![Item::Fresh(request)], DIRECT_FRAME);
                }
                return true;
            }
        }
        state.queue.push_back(Item::Fresh(request));
        // Wake a slot whose worker has nothing to do. A slot with jobs in flight is woken by its
        // reader when half of them are answered, and then sends what queued up in one write: a
        // wake-up per submitted job would cost more than a short task.
        self.wake_a_free_slot(&mut state);
        true
    }

    /// Wakes a sleeping slot that has no job in flight, if there is one.
    fn wake_a_free_slot(&self, state: &mut State) {
        let State { asleep, slots, .. } = state;
        if let Some(at) = asleep.iter().position(|slot| slots[*slot].in_flight.is_empty()) {
            self.wake[asleep.swap_remove(at)].notify_one();
        }
    }

    /// Lets every slot finish the queue and its jobs in flight, then retire its worker and exit.
    pub(super) fn stop(&self) {
        self.lock().is_stopping = true;
        for wake in &self.wake {
            wake.notify_one();
        }
    }
}

/// Starts one slot thread per worker.
pub(super) fn start_all(shared: &Arc<Shared>, pool_id: u64) -> Result<Vec<JoinHandle<()>>, Error> {
    (0..shared.config.workers)
        .map(|worker_id| {
            let shared = Arc::clone(shared);
            thread::Builder::new()
                .name(format!("parallel-{pool_id}-process-{worker_id}"))
                .spawn(move || run(&shared, worker_id))
                .map_err(|error| Error::io("start a worker's slot thread", error))
        })
        .collect()
}

/// Stops a job in flight: kills the worker if the job is the one it runs, else asks the worker
/// to skip it.
struct InFlightStop {
    shared: Weak<Shared>,
    slot: usize,
    job: u64,
    link: Link,
}

impl Stop for InFlightStop {
    fn stop(&self) {
        let Some(shared) = self.shared.upgrade() else {
            self.link.kill.kill();
            return;
        };
        let mut state = shared.lock();
        let slot = &mut state.slots[self.slot];
        match slot.in_flight.iter().position(|sent| sent.request.id() == self.job) {
            Some(0) => {
                drop(state);
                self.link.kill.kill();
            }
            Some(_) => {
                drop(state);
                // Written before `cancel` returns, so that a job the caller saw cancelled while
                // its worker was busy with another can never start. The worker skips a job it
                // was told to cancel even if the `Cancel` overtakes the job's own frame.
                let mut frame = Vec::new();
                let cancel = ToWorker::Cancel { job: self.job };
                if protocol::encode_to_worker(&cancel, &mut frame, usize::MAX).is_ok() {
                    let mut writer = lock(&self.link.writer);
                    // A failure means the worker is gone, which its reader reports.
                    if protocol::write_frame(&mut *writer, &frame).is_ok() {
                        // Counted once it is in the socket: the worker, seeing the count, reads
                        // up to it before starting its next job.
                        self.link.ring.note_cancel();
                    }
                }
            }
            // Answered already, or back in the queue (where it is skipped, being resolved).
            None => {}
        }
    }
}

/// A running worker with the thread that reads its replies.
struct Running {
    worker: Worker,
    reader: JoinHandle<()>,
}

impl Running {
    /// Waits for the reader (the channel has ended) and reaps the worker.
    fn reap(mut self) -> Death {
        self.worker.kill_switch().kill();
        let death = self.worker.reap();
        let _ = self.reader.join();
        death
    }

    /// Asks the worker to exit, then reaps it.
    fn retire(self) {
        let Running { worker, reader, .. } = self;
        worker.retire(RETIRE_GRACE);
        let _ = reader.join();
    }
}

fn run(shared: &Arc<Shared>, id: usize) {
    let settings = Settings {
        worker_id: id,
        max_frame: shared.config.max_frame,
        max_memory: shared.config.max_memory_per_worker,
    };
    let mut running: Option<Running> = None;
    let mut failed_starts = 0u32;
    let mut has_started = false;
    let mut epoch = 0u64;
    let mut state = shared.lock();
    loop {
        // The worker's channel ended: resolve the job it ran, requeue the others, reap it.
        if let Some(problem) = state.slots[id].broken.take() {
            // In the same critical section as taking the jobs in flight: a caller's thread that
            // claimed a job for this worker then finds it gone and queues the job instead.
            state.slots[id].link = None;
            state.slots[id].sent = 0;
            let mut in_flight = std::mem::take(&mut state.slots[id].in_flight);
            drop(state);
            let death = running.take().map(Running::reap);
            if let Some(mut death) = death {
                explain(&mut death, problem, shared.config.max_memory_per_worker);
                tracing::warn!(
                    worker = id,
                    pid = death.pid,
                    reason = %death.reason,
                    requeued = in_flight.len().saturating_sub(1),
                    "worker process died"
                );
                if let Some(first) = in_flight.pop_front() {
                    first.span.record("pid", death.pid);
                    first.span.record("outcome", "worker died");
                    first.request.fail(Failure::Died(death));
                }
            }
            state = shared.lock();
            let requeued = in_flight.len();
            for sent in in_flight.into_iter().rev() {
                state.queue.push_front(Item::Sent(sent));
            }
            if requeued > 0 {
                for slot in state.asleep.drain(..) {
                    shared.wake[slot].notify_one();
                }
            }
            continue;
        }
        let max_sent = shared.config.max_tasks_per_worker.unwrap_or(usize::MAX);
        let sent_so_far = state.slots[id].sent;
        let room = state.slots[id].window().saturating_sub(state.slots[id].in_flight.len());
        let room = room.min(max_sent - sent_so_far);
        // A slot that is busy already leaves queued jobs to slots that are not: pipelining is for
        // when every worker has work.
        let is_busy = !state.slots[id].in_flight.is_empty();
        let others_idle =
            state.slots.iter().enumerate().any(|(other, slot)| {
                other != id && slot.in_flight.is_empty() && slot.broken.is_none()
            });
        if room > 0 && !state.queue.is_empty() && is_busy && others_idle {
            shared.wake_a_free_slot(&mut state);
        } else if room > 0 && !state.queue.is_empty() {
            if running.is_none() {
                drop(state);
                match start(shared, settings, id, &mut failed_starts) {
                    Ok(started) => {
                        tracing::debug!(
                            worker = id,
                            pid = started.worker.pid,
                            "worker process started"
                        );
                        if has_started {
                            shared.ledger.counts.restarts.fetch_add(1, Ordering::Relaxed);
                        }
                        has_started = true;
                        epoch += 1;
                        let mut state = shared.lock();
                        state.slots[id].link = Some(Link::of(&started.worker, epoch));
                        state.slots[id].sent = 0;
                        drop(state);
                        running = Some(started);
                    }
                    Err(failure) => {
                        let item = shared.lock().queue.pop_front();
                        if let Some(item) = item {
                            item.request().fail(failure);
                        }
                    }
                }
                state = shared.lock();
                continue;
            }
            // Share the queue with the other slots: take no more than an even part of it.
            let share = state.queue.len().div_ceil(shared.config.workers).max(1);
            let take = room.min(share);
            let take = take.min(state.queue.len());
            let items: Vec<Item> = state.queue.drain(..take).collect();
            let link = state.slots[id].link.clone();
            drop(state);
            if let Some(link) = link {
                send_jobs(shared, id, &link, items, usize::MAX);
            }
            state = shared.lock();
            continue;
        }
        let is_spent = sent_so_far >= max_sent;
        if is_spent && state.slots[id].in_flight.is_empty() {
            state.slots[id].link = None;
            state.slots[id].sent = 0;
            drop(state);
            if let Some(done) = running.take() {
                tracing::debug!(
                    worker = id,
                    pid = done.worker.pid,
                    tasks = sent_so_far,
                    "worker process renewed"
                );
                done.retire();
            }
            state = shared.lock();
            continue;
        }
        if state.is_stopping && state.queue.is_empty() && state.slots[id].in_flight.is_empty() {
            state.slots[id].link = None;
            break;
        }
        state.asleep.push(id);
        state = shared.wake[id].wait(state).unwrap_or_else(PoisonError::into_inner);
        state.asleep.retain(|slot| *slot != id);
    }
    drop(state);
    if let Some(running) = running {
        running.retire();
    }
}

/// Claims `items`, builds their frames, enters them in flight on slot `id` and writes them to its
/// worker in one go. Frames over `max_direct` bytes, and every job if the worker is gone
/// meanwhile, go back to the front of the queue for the slot thread, already claimed.
fn send_jobs(shared: &Arc<Shared>, id: usize, link: &Link, items: Vec<Item>, max_direct: usize) {
    let max_frame = shared.config.max_frame;
    let mut ready = Vec::with_capacity(items.len());
    for item in items {
        let (request, frame, span) = match item {
            Item::Fresh(request) => {
                let mut frame = Vec::new();
                protocol::begin_run(&mut frame, request.id(), request.task());
                match request.start(stop(shared, id, request.id(), link), &mut frame) {
                    None => continue,
                    Some(Err(message)) => {
                        request.fail(Failure::Arguments(message));
                        continue;
                    }
                    Some(Ok(())) => {}
                }
                if let Err(error) = protocol::finish_frame(&mut frame, max_frame) {
                    let message = format!("the arguments do not fit in a frame: {error}");
                    request.fail(Failure::Arguments(message));
                    continue;
                }
                let span = tracing::debug_span!(
                    "parallel.task",
                    task = request.task(),
                    id = request.id(),
                    backend = "process",
                    worker = id,
                    pid = tracing::field::Empty,
                    outcome = tracing::field::Empty,
                    duration_us = tracing::field::Empty,
                );
                (request, Arc::new(frame), span)
            }
            Item::Sent(sent) => {
                if !sent.request.restart(stop(shared, id, sent.request.id(), link)) {
                    continue;
                }
                (sent.request, sent.frame, sent.span)
            }
        };
        ready.push(Sent { request, frame, sent_at: Instant::now(), span });
    }
    if ready.is_empty() {
        return;
    }
    // The writer is taken before the jobs enter the in-flight list and held until they are
    // written, so that the worker gets them in the order of the list even when a caller's thread
    // and the slot thread send at once. The reader can then match every reply; a failed write
    // means the worker is gone, which the reader reports.
    let mut writer = lock(&link.writer);
    let frames: Vec<Arc<Vec<u8>>> = {
        let mut state = shared.lock();
        let slot = &state.slots[id];
        let is_current = slot.link.as_ref().is_some_and(|now| now.epoch == link.epoch);
        // Callers' threads may race each other to an idle worker: the limit holds all the same.
        let max_sent = shared.config.max_tasks_per_worker.unwrap_or(usize::MAX);
        let mut room = max_sent.saturating_sub(slot.sent);
        let (to_send, to_queue): (Vec<Sent>, Vec<Sent>) = ready.into_iter().partition(|sent| {
            let fits = is_current && room > 0 && sent.frame.len() <= max_direct;
            room -= usize::from(fits);
            fits
        });
        if !to_queue.is_empty() {
            for sent in to_queue.into_iter().rev() {
                state.queue.push_front(Item::Sent(sent));
            }
            shared.wake[id].notify_one();
        }
        let slot = &mut state.slots[id];
        let mut frames = Vec::with_capacity(to_send.len());
        for sent in to_send {
            // A cancel that came between the claim and now found the job in no list and could
            // not stop it: it must not be sent. A cancel after this point finds it in flight.
            if sent.request.is_finished() {
                continue;
            }
            frames.push(Arc::clone(&sent.frame));
            slot.in_flight.push_back(sent);
        }
        slot.sent += frames.len();
        frames
    };
    let result =
        frames.iter().try_for_each(|frame| writer.write_all(frame)).and_then(|()| writer.flush());
    drop(result);
}

fn stop(shared: &Arc<Shared>, slot: usize, job: u64, link: &Link) -> Arc<dyn Stop> {
    Arc::new(InFlightStop { shared: Arc::downgrade(shared), slot, job, link: link.clone() })
}

/// Starts a worker and its reader, retrying with backoff; after [`START_ATTEMPTS`] failures in a
/// row, reports the last one (the next job tries afresh, still backing off).
fn start(
    shared: &Arc<Shared>,
    settings: Settings,
    id: usize,
    failed_starts: &mut u32,
) -> Result<Running, Failure> {
    loop {
        match Worker::start(settings, shared.build) {
            Ok(mut worker) => {
                *failed_starts = 0;
                let reader = match worker.take_reader() {
                    Some(reader) => reader,
                    None => {
                        return Err(Failure::Unavailable("the worker's channel is gone".into()))
                    }
                };
                let for_reader = Arc::clone(shared);
                let max_frame = shared.config.max_frame;
                let pid = worker.pid;
                let channel = Channel { socket: reader, ring: Arc::clone(&worker.ring), max_frame };
                let reader = thread::Builder::new()
                    .name(format!("parallel-reader-{pid}"))
                    .spawn(move || read_replies(&for_reader, id, pid, channel))
                    .map_err(|error| {
                        Failure::Unavailable(format!("cannot start a reader thread: {error}"))
                    })?;
                return Ok(Running { worker, reader });
            }
            Err(error) => {
                *failed_starts += 1;
                tracing::warn!(worker = id, attempt = *failed_starts, error = %error.message, "could not start a worker process");
                thread::sleep(Duration::from_millis(10 << (*failed_starts).min(8)));
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

/// What a worker's replies come through.
struct Channel {
    socket: BufReader<UnixStream>,
    ring: Arc<Ring>,
    max_frame: usize,
}

impl Channel {
    /// Reads the next frame from the socket that is not a `Wake`.
    fn read_socket<'b>(&mut self, buffer: &'b mut Vec<u8>) -> Result<&'b [u8], ReadError> {
        loop {
            protocol::read_frame(&mut self.socket, buffer, self.max_frame)?;
            if protocol::decode_from_worker(buffer) != Ok(FromWorker::Wake) {
                return Ok(buffer);
            }
        }
    }
}

/// Resolves jobs from a worker's replies until its channel ends, then tells the slot.
///
/// Replies come through the shared ring (see [`super::ring`]); the socket brings a `Wake` when
/// this thread sleeps, and the replies too large for the ring. When the socket ends (the worker
/// died or left), the replies the worker put in the ring before are still resolved.
fn read_replies(shared: &Shared, id: usize, pid: u32, mut channel: Channel) {
    let mut frame = Vec::new();
    let mut large = Vec::new();
    let mut has_ended = false;
    let mut idle_spins = 0u32;
    let problem = loop {
        let body = match channel.ring.pop(&mut frame, channel.max_frame) {
            Ok(true) => {
                idle_spins = 0;
                &frame[..]
            }
            Ok(false) if has_ended => break None,
            Ok(false) => {
                // A reply due within microseconds (a worker busy with short tasks, or a round
                // trip under way) is caught without the worker writing a `Wake` and this thread
                // being woken on another CPU.
                if idle_spins < READER_SPINS {
                    idle_spins += 1;
                    thread::yield_now();
                    continue;
                }
                idle_spins = 0;
                if !channel.ring.sleep() {
                    continue;
                }
                match protocol::read_frame(&mut channel.socket, &mut large, channel.max_frame) {
                    Ok(body) if protocol::decode_from_worker(body) == Ok(FromWorker::Wake) => {
                        continue
                    }
                    Ok(_) => break Some("the worker sent a reply out of turn".to_owned()),
                    Err(ReadError::Protocol(error)) => {
                        break Some(format!("the worker broke the protocol: {error}"))
                    }
                    // Resolve what the ring still holds, then report the end.
                    Err(ReadError::Closed | ReadError::Io(_)) => {
                        has_ended = true;
                        continue;
                    }
                }
            }
            Err(error) => break Some(format!("the worker broke the protocol: {error}")),
        };
        let decoded = match protocol::decode_from_worker(body) {
            Ok(FromWorker::OnSocket) => match channel.read_socket(&mut large) {
                Ok(body) => protocol::decode_from_worker(body),
                Err(ReadError::Protocol(error)) => {
                    break Some(format!("the worker broke the protocol: {error}"))
                }
                Err(ReadError::Closed | ReadError::Io(_)) => break None,
            },
            other => other,
        };
        let (job, reply) = match decoded {
            Ok(FromWorker::Done { job, reply }) => (job, reply),
            Ok(other) => break Some(format!("the worker sent {other:?} out of turn")),
            Err(error) => break Some(format!("the worker broke the protocol: {error}")),
        };
        if let Err(problem) = resolve(shared, id, pid, job, reply) {
            break Some(problem);
        }
    };
    let mut state = shared.lock();
    state.slots[id].broken = Some(problem);
    drop(state);
    shared.wake[id].notify_one();
}

/// Resolves job `job`, which must be the first in flight on slot `id`, from its reply.
fn resolve(shared: &Shared, id: usize, pid: u32, job: u64, reply: Reply<'_>) -> Result<(), String> {
    let (sent, should_wake) = {
        let mut state = shared.lock();
        let slot = &mut state.slots[id];
        match slot.in_flight.front() {
            Some(first) if first.request.id() == job => {}
            _ => return Err(format!("the worker answered job {job}, which it was not running")),
        }
        let sent = slot.in_flight.pop_front();
        let now = Instant::now();
        if let Some(sent) = &sent {
            let since = slot.last_reply.map_or(sent.sent_at, |last| last.max(sent.sent_at));
            let nanos = u64::try_from(now.duration_since(since).as_nanos()).unwrap_or(u64::MAX);
            slot.task_nanos =
                if slot.task_nanos == 0 { nanos.max(1) } else { (slot.task_nanos * 7 + nanos) / 8 };
        }
        slot.last_reply = Some(now);
        // Wake the slot thread when half its window is free and jobs wait (it then sends a
        // batch), not on every reply: a wake-up costs more than a short task. With nothing in
        // flight any more, it may also have to retire its worker or exit.
        let left = slot.in_flight.len();
        let window = slot.window();
        let has_work = !state.queue.is_empty();
        let must_look = state.is_stopping || shared.config.max_tasks_per_worker.is_some();
        (sent, (left == 0 && (has_work || must_look)) || (has_work && left == window / 2))
    };
    if should_wake {
        shared.wake[id].notify_one();
    }
    if let Some(sent) = sent {
        if !sent.span.is_disabled() {
            sent.span.record("pid", pid);
            sent.span.record("outcome", reply.name());
            sent.span.record("duration_us", sent.sent_at.elapsed().as_micros() as u64);
        }
        sent.request.finish(reply);
    }
    Ok(())
}

/// Completes a death's reason with what the slot knows: a protocol problem, a memory limit.
fn explain(death: &mut Death, problem: Option<String>, max_memory: Option<u64>) {
    if let Some(problem) = problem {
        death.reason = format!("{problem}; the worker was killed and {}", death.reason);
    } else if let Some(limit) = max_memory {
        if death.is_out_of_memory {
            death.reason = format!("hit its memory limit of {limit} bytes and {}", death.reason);
        }
    }
}
