//! Worker slots: the threads that keep one worker process busy each.
//!
//! A slot thread takes jobs from the pool's queue, starts its worker process when it needs one,
//! claims the jobs, serializes them straight into their frames and sends them, several at a time
//! (pipelined: while the worker runs one, the next ones wait in its socket, so that short tasks
//! cost a fraction of a round trip each). A reader thread per worker resolves the jobs from the
//! worker's replies, in order. How many jobs a slot keeps in flight adapts to how long its tasks
//! take: many for tasks of microseconds, one or two for tasks of milliseconds, so that long tasks
//! still spread over every worker. Slot threads start as work arrives, up to one per worker.
//!
//! Which job a worker runs, and whether one may still start, is decided by the job's claim in
//! memory shared with the worker (see [`super::claim`]), never by a message the worker may not read
//! in time: a cancel stops a job that has not started without a word to the worker (it skips the
//! job when it comes to it) and kills the worker only while the job is the one it runs; an idle
//! slot takes back jobs that wait behind a long task on another worker; and when a worker dies,
//! the job it was running resolves as `WorkerDied` while the ones it never started run elsewhere.
//! Nothing a caller calls writes to a worker's socket or waits for a slot that writes to one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::child::{lock, Death, Jobs, KillSwitch, StartError, WorkerProcess};
use super::claim::{self, Claim, Stopped};
use super::pace::{self, MAX_IN_FLIGHT};
use super::protocol;
use super::ring::PoolSide;
use super::{Failure, Request, Settings};

use crate::job::{Halt, Stop};
use crate::ledger::Ledger;

mod reader;
mod supervise;

use reader::{read_replies, step, Channel, Consumer, ReplyLead, Step};
use supervise::{Burial, Child, Ended, Spawn, Supervisor, Waiting};

/// How long a retiring worker may take to exit before it is killed.
const RETIRE_GRACE: Duration = Duration::from_secs(5);
/// The largest job a caller's thread writes to a worker itself; larger ones go through the slot
/// thread, so that `dispatch` never waits for a worker to read megabytes.
const DIRECT_FRAME: usize = 64 << 10;
/// The capacity a `Run` frame starts with, besides its task's name.
const FRAME_START: usize = 64;
/// The largest buffer of a large job's frame kept for the next one (see [`Shared::spare_frame`]).
const SPARE_FRAME_MAX: usize = 64 << 20;
/// How many times a reader finding the reply ring empty yields its CPU and looks again before it
/// sleeps (about 10 to 20 µs on an idle machine): one-at-a-time round trip 50 -> 12-26 µs here.
const READER_SPINS: u32 = 16;
/// How long a reader sleeps on the reply ring at most before it looks at the socket itself: the
/// stderr follower wakes it when the worker hangs up, and this covers a follower that could not
/// watch (no thread, no descriptor left) or a worker that keeps the futex word set.
const READER_BACKSTOP: Duration = Duration::from_secs(1);
/// How long a caller reading its own reply sleeps on the reply ring at most before it looks
/// whether its job was resolved otherwise (a cancel or a timeout from another thread ends its
/// attempt with a reply or the worker's death, which wake it; this covers what does not).
const LEADER_BACKSTOP: Duration = Duration::from_millis(100);

/// A job in the queue: new, or sent to a worker before and given back.
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

/// A job claimed and serialized, with its frame kept in case it must be sent to another worker.
struct Sent {
    request: Box<dyn Request>,
    frame: Frame,
    /// How the job's caller stops it on its current worker.
    stop: Arc<InFlightStop>,
    /// Open from the first send to the reply; the reader records the outcome.
    span: tracing::Span,
    /// Deaths of idle workers this job was waiting in (see [`DEATHS_BEFORE_START`]).
    deaths: u32,
}

/// A job's `Run` frame, kept while the job is in flight.
pub(super) enum Frame {
    /// A frame that fits the job ring: copied into the writer's batch while the slot state is
    /// locked (a copy of a few dozen bytes costs less than the allocation sharing it would).
    Small(Vec<u8>),
    /// A larger one, shared with the write that sends it after the lock, so that keeping it
    /// costs no copy of megabytes.
    Large(Arc<Vec<u8>>),
}

impl Frame {
    fn new(bytes: Vec<u8>) -> Frame {
        if Jobs::fits_ring(bytes.len()) {
            Frame::Small(bytes)
        } else {
            Frame::Large(Arc::new(bytes))
        }
    }

    fn len(&self) -> usize {
        match self {
            Frame::Small(bytes) => bytes.len(),
            Frame::Large(bytes) => bytes.len(),
        }
    }
}

/// A job in flight on a worker, in the order sent: the worker answers in this order.
struct Flight {
    /// The job's number on this worker: its claim's.
    seq: u64,
    job: u64,
    sent_at: Instant,
    /// `None` once taken back for another worker: the worker skips it and answers `Skipped`.
    sent: Option<Sent>,
}

/// What it takes to send jobs to a slot's current worker and to stop them, from any thread.
#[derive(Clone)]
struct Link {
    writer: Arc<Mutex<Jobs>>,
    /// What the stops of this worker's jobs share.
    halter: Arc<Halter>,
    /// Which of the slot's workers this is: a sender that finds another one (or none) in the slot
    /// state knows that its worker is gone.
    epoch: u64,
}

/// What every stop of one worker's jobs needs, shared by them all: one reference per job, not
/// one per field.
struct Halter {
    kill: KillSwitch,
    ring: Arc<PoolSide>,
    /// The reading of the worker's replies, for a caller that reads its own (see `lead.rs`).
    lead: Arc<ReplyLead>,
    /// The pool's slots, to resolve the replies a caller reads (weak: the slots hold this).
    shared: Weak<Shared>,
    /// The worker's slot and pid.
    id: usize,
    pid: u32,
    /// The slot's average task time, for [`Halt::IfLong`].
    task_nanos: Arc<AtomicU64>,
    /// The origin of the jobs' send times in [`InFlightStop::entered`].
    origin: Instant,
}

impl Link {
    fn of(
        shared: &Arc<Shared>,
        id: usize,
        running: &Running,
        epoch: u64,
        task_nanos: &Arc<AtomicU64>,
    ) -> Link {
        let worker = &running.worker;
        let halter = Halter {
            kill: worker.kill_switch(),
            ring: Arc::clone(&worker.ring),
            lead: Arc::clone(&running.lead),
            shared: Arc::downgrade(shared),
            id,
            pid: worker.pid,
            task_nanos: Arc::clone(task_nanos),
            origin: Instant::now(),
        };
        Link { writer: Arc::clone(&worker.writer), halter: Arc::new(halter), epoch }
    }

    fn claim(&self, seq: u64) -> &AtomicU64 {
        claim::slot(self.halter.ring.claims(), seq)
    }
}

struct SlotState {
    in_flight: VecDeque<Flight>,
    /// The running worker, while the slot has one that is not known to be dying or retiring.
    link: Option<Link>,
    /// `Run` frames sent to the current worker: the last job's number, and the count for
    /// `max_tasks_per_worker`.
    sent: u64,
    /// Set by the reader when the worker's channel ended.
    ended: Option<Ended>,
    /// The typical time between two replies of a busy worker, in nanoseconds (0: unknown yet);
    /// shared with the stops of its jobs.
    task_nanos: Arc<AtomicU64>,
    last_reply: Option<Instant>,
}

impl SlotState {
    fn task_nanos(&self) -> u64 {
        self.task_nanos.load(Ordering::Relaxed)
    }

    /// How many jobs this slot should keep in flight, from how long its tasks take.
    fn window(&self) -> usize {
        pace::window(self.task_nanos())
    }

    /// Whether the slot has a worker with nothing in flight that could take a job now.
    fn is_free(&self) -> bool {
        self.in_flight.is_empty() && self.ended.is_none()
    }

    /// The jobs in flight that the worker has started, by their claims.
    fn started(&self) -> usize {
        let Some(link) = &self.link else { return 0 };
        self.in_flight
            .iter()
            .filter(|flight| flight.sent.is_some())
            .filter(|flight| {
                matches!(claim::read(link.claim(flight.seq), flight.seq), Claim::Started)
            })
            .count()
    }
}

struct State {
    queue: VecDeque<Item>,
    /// Slot threads waiting on their condition variable.
    asleep: Vec<usize>,
    is_stopping: bool,
    slots: Vec<SlotState>,
    /// Slot threads started so far: slots `0..threads`.
    threads: usize,
}

/// Whom a job the busy slots leave should go to.
enum Help {
    /// A free slot was woken, or is awake.
    Found,
    /// Start the thread of slot `.0`.
    Start(usize),
    /// Nobody: the caller takes it.
    None,
}

pub(super) struct Shared {
    state: Mutex<State>,
    wake: Vec<Condvar>,
    settings: Settings,
    build: u64,
    /// The pool's ledger, for its counts.
    ledger: Arc<Ledger>,
    /// The slot threads started so far, to join when the pool stops.
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// The buffer of the last large job's frame, once its job was answered, for the next job's
    /// frame: a fresh buffer of megabytes costs a page fault per 4 KiB as it is filled (on the
    /// machine measured, as long as the copy itself), one already filled once does not.
    /// `has_spare_frame` says whether it holds one, so that a pool of small jobs never locks it.
    spare_frame: Mutex<Vec<u8>>,
    has_spare_frame: AtomicBool,
}

impl Shared {
    pub(super) fn new(settings: Settings, build: u64, ledger: Arc<Ledger>) -> Arc<Shared> {
        let slots = (0..settings.workers)
            .map(|_| SlotState {
                in_flight: VecDeque::new(),
                link: None,
                sent: 0,
                ended: None,
                task_nanos: Arc::new(AtomicU64::new(0)),
                last_reply: None,
            })
            .collect();
        Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                asleep: Vec::new(),
                is_stopping: false,
                slots,
                threads: 0,
            }),
            wake: (0..settings.workers).map(|_| Condvar::new()).collect(),
            settings,
            build,
            ledger,
            handles: Mutex::new(Vec::new()),
            spare_frame: Mutex::new(Vec::new()),
            has_spare_frame: AtomicBool::new(false),
        })
    }

    /// The kept buffer of a large frame, if any, emptied.
    fn take_spare_frame(&self) -> Option<Vec<u8>> {
        if !self.has_spare_frame.load(Ordering::Relaxed) {
            return None;
        }
        let spare = std::mem::take(&mut *lock(&self.spare_frame));
        self.has_spare_frame.store(false, Ordering::Relaxed);
        Some(spare).filter(|spare| spare.capacity() > 0)
    }

    /// Keeps `frame`'s buffer for the next job, if it is a large frame's no one else holds any
    /// more (the writer lets go of its share once the frame is sent) and not too large.
    pub(super) fn keep_spare_frame(&self, frame: Frame) {
        let Frame::Large(bytes) = frame else { return };
        let Ok(mut bytes) = Arc::try_unwrap(bytes) else { return };
        if bytes.capacity() > SPARE_FRAME_MAX {
            return;
        }
        bytes.clear();
        let mut spare = lock(&self.spare_frame);
        if spare.capacity() < bytes.capacity() {
            *spare = bytes;
        }
        self.has_spare_frame.store(true, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn max_sent(&self) -> u64 {
        self.settings.max_tasks_per_worker.map_or(u64::MAX, |max| max as u64)
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
        let max_sent = self.max_sent();
        if state.queue.is_empty() {
            let idle = state
                .slots
                .iter()
                .position(|slot| slot.link.is_some() && slot.is_free() && slot.sent < max_sent);
            if let Some(id) = idle {
                let link = state.slots[id].link.clone();
                drop(state);
                if let Some(link) = link {
                    send_jobs(self, id, &link, [Item::Fresh(request)], DIRECT_FRAME);
                }
                return true;
            }
        }
        state.queue.push_back(Item::Fresh(request));
        // Wake a slot whose worker has nothing to do, or start one. A slot with jobs in flight is
        // woken by its reader when half of them are answered, and then sends what queued up in
        // one write: a wake-up per submitted job would cost more than a short task.
        match self.find_help(&mut state, None) {
            Help::Start(id) => {
                drop(state);
                self.start_slot(id);
            }
            Help::Found | Help::None => {}
        }
        true
    }

    /// Submits `requests` together, as `submit` does one: with nothing queued before them, the
    /// workers that wait with nothing to do get them from the caller's thread, shared out evenly
    /// and each share in one write (up to `DIRECT_FRAME` bytes), so a batch costs a worker one
    /// wake-up instead of one per job; the rest queue for the slots, under one lock. With
    /// `paced`, a share is at most what the worker's window takes (`pace::window`: one job while
    /// its tasks' length is unknown), as the slot thread would send it, so that a `map` window
    /// of long tasks does not pile up in one worker while another could run them. A job with a
    /// time limit goes to an idle worker alone, as from the queue (`take_sendable`). `false`
    /// (nothing submitted) once the pool stops.
    pub(super) fn submit_all(
        self: &Arc<Self>,
        requests: Vec<Box<dyn Request>>,
        paced: bool,
    ) -> bool {
        let mut state = self.lock();
        if state.is_stopping {
            return false;
        }
        let max_sent = self.max_sent();
        let count = requests.len();
        let mut batch: VecDeque<Item> = requests.into_iter().map(Item::Fresh).collect();
        let idle: Vec<(usize, Link, usize)> = if state.queue.is_empty() {
            state
                .slots
                .iter()
                .enumerate()
                .filter(|(_, slot)| slot.is_free() && slot.sent < max_sent)
                .filter_map(|(id, slot)| {
                    let room = usize::try_from(max_sent - slot.sent).unwrap_or(usize::MAX);
                    let room = if paced { room.min(slot.window()) } else { room };
                    Some((id, slot.link.clone()?, room))
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut shares = Vec::with_capacity(idle.len());
        let idle_count = idle.len();
        for (at, (id, link, room)) in idle.into_iter().enumerate() {
            // Shares as even as the count allows, each a run of the batch in its order.
            let share = (count / idle_count + usize::from(at < count % idle_count)).min(room);
            let items = take_sendable(&mut batch, share, true);
            if items.is_empty() {
                break;
            }
            shares.push((id, link, items));
        }
        if !shares.is_empty() {
            // The rest queues once the shares are in flight: queued before, it could be taken
            // by a slot thread (its slot still looking free) and sent ahead of its share. No
            // stop comes in between that would leave it queued for slots gone: `shutdown` stops
            // the slots once every job it accepted is resolved (these are), a serving process
            // once every task it handed over has ended.
            drop(state);
            for (id, link, items) in shares {
                send_jobs(self, id, &link, items, DIRECT_FRAME);
            }
            if batch.is_empty() {
                return true;
            }
            state = self.lock();
        }
        state.queue.extend(batch);
        // What queued wakes a free sleeping slot, or starts a slot's thread, per job as `submit`
        // does (one for the batch left the other slots asleep while one worked through it).
        let mut starts = Vec::new();
        for _ in 0..state.queue.len().min(state.slots.len()) {
            match self.find_help(&mut state, None) {
                Help::Found => {}
                Help::Start(id) => starts.push(id),
                Help::None => break,
            }
        }
        drop(state);
        for id in starts {
            self.start_slot(id);
        }
        true
    }

    /// Finds a slot other than `except` to take queued jobs: a free one that sleeps (woken), else
    /// one whose thread is not started yet (counted as started: the caller starts it).
    fn find_help(&self, state: &mut State, except: Option<usize>) -> Help {
        let State { asleep, slots, threads, .. } = state;
        let is_free = |slot: usize| Some(slot) != except && slots[slot].is_free();
        if let Some(at) = asleep.iter().position(|slot| is_free(*slot)) {
            self.wake[asleep.swap_remove(at)].notify_one();
            return Help::Found;
        }
        if *threads < slots.len() {
            *threads += 1;
            return Help::Start(*threads - 1);
        }
        Help::None
    }

    /// Starts the thread of slot `id` (counted in `threads` already). If it cannot start, its
    /// jobs stay queued for the other slots, or fail if there is none.
    fn start_slot(self: &Arc<Self>, id: usize) {
        let shared = Arc::clone(self);
        let started = thread::Builder::new()
            .name(format!("parallel-{}-process-{id}", self.ledger.pool_id()))
            .spawn(move || run(&shared, id));
        match started {
            Ok(handle) => lock(&self.handles).push(handle),
            Err(error) => {
                tracing::warn!(worker = id, %error, "could not start a worker's slot thread");
                let mut state = self.lock();
                state.threads -= 1;
                if state.threads == 0 {
                    let failed: Vec<Item> = state.queue.drain(..).collect();
                    drop(state);
                    for item in failed {
                        let reason = format!("cannot start a thread to run workers: {error}");
                        item.request().fail(Failure::Unavailable(reason));
                    }
                }
            }
        }
    }

    /// Lets every slot finish the queue and its jobs in flight, then retire its worker and exit.
    pub(super) fn stop(&self) {
        self.lock().is_stopping = true;
        for wake in &self.wake {
            wake.notify_one();
        }
    }

    /// Kills every worker now (the pool is being killed: their jobs are resolved already), so that
    /// no slot thread stays blocked writing to one.
    pub(super) fn kill_workers(&self) {
        let state = self.lock();
        for slot in &state.slots {
            if let Some(link) = &slot.link {
                link.halter.kill.kill();
            }
        }
    }

    /// The slot threads started so far, to join.
    pub(super) fn take_handles(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *lock(&self.handles))
    }

    /// Whether job `seq` is the only one in flight on the worker of `halter`, which still serves.
    fn is_only_in_flight(&self, halter: &Halter, seq: u64) -> bool {
        let state = self.lock();
        let slot = &state.slots[halter.id];
        slot.ended.is_none()
            && slot.link.as_ref().is_some_and(|link| Arc::ptr_eq(&link.halter.ring, &halter.ring))
            && slot.in_flight.len() == 1
            && slot.in_flight[0].seq == seq
    }

    /// How many jobs workers are running now, by their claims.
    pub(super) fn running(&self) -> usize {
        self.lock().slots.iter().map(SlotState::started).sum()
    }
}

/// Stops a job in flight through its claim: a job not started never starts (the worker skips
/// it); a running one is killed with its worker, which can start no other job meanwhile.
struct InFlightStop {
    halter: Arc<Halter>,
    /// The job's number on its worker once it is in flight (0 before).
    seq: AtomicU64,
    /// A stop asked before the job was in flight, which the sender applies: 0 none, else
    /// [`halt_code`].
    asked: AtomicU8,
    /// When the job was sent, in nanoseconds after the halter's origin, plus one (0: not yet).
    /// Written before `seq`, so a stop that finds the number finds the time.
    entered: AtomicU64,
    /// Taken back before it started, to run on another worker: a caller reading this worker's
    /// replies for it stops (the worker's `Skipped` for it wakes the caller).
    is_moved: AtomicBool,
}

fn halt_code(halt: Halt) -> u8 {
    match halt {
        Halt::IfLong => 1,
        Halt::Kill => 2,
    }
}

impl InFlightStop {
    fn new(link: &Link) -> Arc<InFlightStop> {
        Arc::new(InFlightStop {
            halter: Arc::clone(&link.halter),
            seq: AtomicU64::new(0),
            asked: AtomicU8::new(0),
            entered: AtomicU64::new(0),
            is_moved: AtomicBool::new(false),
        })
    }

    /// The sender's side, under the writer lock before the job's frame is written, its claim
    /// published: the job is in flight as number `seq`, sent at `now`.
    fn enter(&self, seq: u64, now: Instant) {
        let nanos = now.saturating_duration_since(self.halter.origin).as_nanos();
        let entered = u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1;
        // Entered once: a job sent again to another worker gets a stop of its own.
        self.entered.store(entered, Ordering::Relaxed);
        // Pairs with `stop`: either the stopper sees the number, or this sees its request (both
        // sequentially consistent, so at least one side sees the other's write).
        self.seq.store(seq, Ordering::SeqCst);
        let halt = match self.asked.load(Ordering::SeqCst) {
            0 => return,
            1 => Halt::IfLong,
            _ => Halt::Kill,
        };
        self.apply(seq, halt);
    }

    /// When the job was sent to its worker, once it was.
    fn entered_at(&self) -> Option<Instant> {
        match self.entered.load(Ordering::Relaxed) {
            0 => None,
            entered => self.halter.origin.checked_add(Duration::from_nanos(entered - 1)),
        }
    }

    fn apply(&self, seq: u64, halt: Halt) {
        let kill = match halt {
            Halt::Kill => true,
            Halt::IfLong => self.is_long(),
        };
        if claim::stop(claim::slot(self.halter.ring.claims(), seq), seq, kill) == Stopped::MustKill
        {
            self.halter.kill.kill();
        }
    }

    /// Whether the job is long enough to kill rather than let finish (see [`pace::is_long`]).
    fn is_long(&self) -> bool {
        let in_flight = self.entered_at().map_or(Duration::ZERO, |at| at.elapsed());
        pace::is_long(self.halter.task_nanos.load(Ordering::Relaxed), in_flight)
    }
}

impl Stop for InFlightStop {
    fn stop(&self, halt: Halt) {
        self.asked.fetch_max(halt_code(halt), Ordering::SeqCst);
        match self.seq.load(Ordering::SeqCst) {
            // Not in flight yet: `enter` sees the request.
            0 => {}
            seq => self.apply(seq, halt),
        }
    }

    /// Reads the worker's replies on the caller's thread while the job is the only one in flight
    /// on its worker and the reader thread is not reading (see `lead.rs`), until `is_over`,
    /// `deadline`, the worker's end, or a frame it cannot take.
    fn lead(&self, is_over: &dyn Fn() -> bool, deadline: Option<Instant>) {
        let seq = self.seq.load(Ordering::SeqCst);
        let halter = &self.halter;
        let Some(shared) = halter.shared.upgrade() else { return };
        if seq == 0 {
            return;
        }
        // Its attempt ended, or it went to another worker.
        let is_over = || is_over() || self.is_moved.load(Ordering::SeqCst);
        let admit = |consumer: &mut Consumer| {
            consumer.is_open() && !is_over() && shared.is_only_in_flight(halter, seq)
        };
        let Some(mut leader) = halter.lead.try_lead(admit) else { return };
        while !is_over() {
            match step(leader.consumer(), &shared, halter.id, halter.pid) {
                Step::Read => {}
                Step::End(ended) => {
                    // The reader reports it, as if it had found it.
                    leader.consumer().hand_over(ended);
                    leader.leave_news();
                    return;
                }
                Step::Empty => {
                    let left = match deadline {
                        None => LEADER_BACKSTOP,
                        Some(deadline) => {
                            let left = deadline.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                return;
                            }
                            left.min(LEADER_BACKSTOP)
                        }
                    };
                    // Its spins yield the CPU, which on a busy machine can take milliseconds
                    // each: they end at the deadline too (`join_timeout(5 ms)` returned after
                    // 30 ms under load, found from outside).
                    let is_due = || deadline.is_some_and(|deadline| Instant::now() >= deadline);
                    if leader.wait(READER_SPINS, Some(left), &|| is_over() || is_due()) {
                        leader.consumer().look_for_hang_up();
                    }
                }
            }
        }
    }

    fn withdraw(&self) -> bool {
        match self.seq.load(Ordering::SeqCst) {
            // On its way to the worker: it may start; it stays.
            0 => false,
            seq => {
                let claim = claim::slot(self.halter.ring.claims(), seq);
                let is_taken = claim::stop(claim, seq, false) == Stopped::BeforeStart;
                if is_taken {
                    self.is_moved.store(true, Ordering::SeqCst);
                }
                is_taken
            }
        }
    }
}

/// A running worker with the thread that reads its replies.
struct Running {
    worker: WorkerProcess,
    reader: JoinHandle<()>,
    lead: Arc<ReplyLead>,
}

/// The claims of a reaped worker's jobs, in the shared page, which the pool keeps mapped.
struct KeptClaims(Arc<PoolSide>);

impl std::ops::Deref for KeptClaims {
    type Target = claim::Claims;

    fn deref(&self) -> &claim::Claims {
        self.0.claims()
    }
}

impl Child for Running {
    type Claims = KeptClaims;

    fn pid(&self) -> u32 {
        self.worker.pid
    }

    /// Kills the worker (its channel has ended, or must), reaps it and waits for the reader.
    fn reap(mut self) -> (Death, KeptClaims) {
        self.worker.kill_switch().kill();
        let death = self.worker.reap();
        let _ = self.reader.join();
        (death, KeptClaims(Arc::clone(&self.worker.ring)))
    }

    fn retire(self) {
        let Running { worker, reader, .. } = self;
        worker.retire(RETIRE_GRACE);
        let _ = reader.join();
    }
}

/// Starts slot `id`'s worker processes, each with its reply reader.
struct WorkerSpawn {
    shared: Arc<Shared>,
    id: usize,
}

impl Spawn for WorkerSpawn {
    type Child = Running;

    fn spawn(&mut self) -> Result<Running, StartError> {
        let Self { shared, id } = self;
        let mut worker = WorkerProcess::start(&shared.settings, *id, shared.build)?;
        let not_started = |message: String| StartError { message, death: None };
        let socket = worker
            .take_reader()
            .ok_or_else(|| not_started("the worker's channel is gone".into()))?;
        let channel = Channel {
            socket,
            ring: Arc::clone(&worker.ring),
            max_frame: shared.settings.max_frame,
        };
        let lead = Arc::new(ReplyLead::new(Arc::clone(&worker.ring), Consumer::new(channel)));
        let (for_reader, id, pid) = (Arc::clone(shared), *id, worker.pid);
        let reading = Arc::clone(&lead);
        let reader = thread::Builder::new()
            .name(format!("parallel-reader-{pid}"))
            .spawn(move || read_replies(&for_reader, id, pid, &reading))
            .map_err(|error| not_started(format!("cannot start a reader thread: {error}")))?;
        Ok(Running { worker, reader, lead })
    }

    fn pause(&mut self, delay: Duration) {
        thread::sleep(delay);
    }
}

impl Waiting for Sent {
    fn is_finished(&self) -> bool {
        self.request.is_finished()
    }

    fn deaths(&self) -> u32 {
        self.deaths
    }

    fn set_deaths(&mut self, deaths: u32) {
        self.deaths = deaths;
    }
}

/// What an idle slot found on the other slots.
enum Steal {
    /// Jobs were taken back into the queue.
    Took,
    /// A task elsewhere may become long enough to take jobs from after this long.
    LookAgainIn(Duration),
    Nothing,
}

/// Takes back, into the front of the queue, the jobs not started that wait behind a long task on
/// another slot's worker, so that the idle slot `id` runs them.
fn steal(state: &mut State, id: usize) -> Steal {
    let now = Instant::now();
    let mut soonest: Option<Duration> = None;
    let mut taken = Vec::new();
    for (other, slot) in state.slots.iter_mut().enumerate() {
        let Some(link) = &slot.link else { continue };
        if other == id || slot.in_flight.len() < 2 || slot.ended.is_some() {
            continue;
        }
        let front = &slot.in_flight[0];
        let since = slot.last_reply.map_or(front.sent_at, |last| last.max(front.sent_at));
        let after = pace::steal_after(slot.task_nanos());
        let waited = now.saturating_duration_since(since);
        if waited < after {
            let left = after - waited;
            soonest = Some(soonest.map_or(left, |soonest| soonest.min(left)));
            continue;
        }
        for flight in slot.in_flight.iter_mut() {
            if flight.sent.is_some()
                && claim::take_back(link.claim(flight.seq), flight.seq)
                && let Some(sent) = flight.sent.take()
            {
                sent.stop.is_moved.store(true, Ordering::SeqCst);
                taken.push(sent);
            }
        }
    }
    if taken.is_empty() {
        return soonest.map_or(Steal::Nothing, Steal::LookAgainIn);
    }
    tracing::debug!(worker = id, jobs = taken.len(), "took back jobs waiting behind a long task");
    for sent in taken.into_iter().rev() {
        state.queue.push_front(Item::Sent(sent));
    }
    Steal::Took
}

fn run(shared: &Arc<Shared>, id: usize) {
    let mut supervisor = Supervisor::new(WorkerSpawn { shared: Arc::clone(shared), id });
    let max_sent = shared.max_sent();
    let mut state = shared.lock();
    loop {
        // The worker's channel ended: resolve the job it ran, requeue the others, reap it.
        if let Some(ended) = state.slots[id].ended.take() {
            // In the same critical section as taking the jobs in flight: a caller's thread that
            // claimed a job for this worker then finds it gone and queues the job instead.
            state.slots[id].link = None;
            state.slots[id].sent = 0;
            let in_flight = std::mem::take(&mut state.slots[id].in_flight);
            drop(state);
            // Jobs taken back for another worker are no longer this worker's.
            let in_flight = in_flight
                .into_iter()
                .filter_map(|flight| Some((flight.seq, flight.sent?)))
                .collect();
            let burial = supervisor.bury(ended, in_flight, shared.settings.max_memory_per_worker);
            let requeued = burial.map(|burial| resolve(burial, id)).unwrap_or_default();
            state = shared.lock();
            let has_requeued = !requeued.is_empty();
            for sent in requeued.into_iter().rev() {
                state.queue.push_front(Item::Sent(sent));
            }
            if has_requeued {
                for slot in state.asleep.drain(..) {
                    shared.wake[slot].notify_one();
                }
            }
            continue;
        }
        let sent_so_far = state.slots[id].sent;
        let room = state.slots[id].window().saturating_sub(state.slots[id].in_flight.len());
        let room = room.min(usize::try_from(max_sent - sent_so_far).unwrap_or(usize::MAX));
        // A slot that is busy already leaves queued jobs to slots that are not: pipelining is for
        // when every worker has work.
        let is_busy = !state.slots[id].in_flight.is_empty();
        let leave_to_others = room > 0 && !state.queue.is_empty() && is_busy && {
            match shared.find_help(&mut state, Some(id)) {
                Help::Found => true,
                Help::Start(other) => {
                    drop(state);
                    shared.start_slot(other);
                    state = shared.lock();
                    true
                }
                Help::None => false,
            }
        };
        if !leave_to_others && room > 0 && !state.queue.is_empty() {
            if supervisor.child().is_none() {
                drop(state);
                match supervisor.start() {
                    Ok(started) => {
                        if let Some(running) = supervisor.child() {
                            tracing::debug!(
                                worker = id,
                                pid = running.pid(),
                                "worker process started"
                            );
                            if started.is_restart {
                                shared.ledger.counts.restarts.fetch_add(1, Ordering::Relaxed);
                            }
                            let mut state = shared.lock();
                            let pace = Arc::clone(&state.slots[id].task_nanos);
                            let link = Link::of(shared, id, running, started.epoch, &pace);
                            state.slots[id].link = Some(link);
                            state.slots[id].sent = 0;
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(worker = id, %reason, "giving up starting a worker for now");
                        let item = shared.lock().queue.pop_front();
                        if let Some(item) = item {
                            item.request().fail(Failure::Unavailable(reason));
                        }
                    }
                }
                state = shared.lock();
                continue;
            }
            let take = pace::share(state.queue.len(), shared.settings.workers, room);
            let is_idle = state.slots[id].in_flight.is_empty();
            let items = take_sendable(&mut state.queue, take, is_idle);
            if !items.is_empty() {
                let link = state.slots[id].link.clone();
                drop(state);
                if let Some(link) = link {
                    send_jobs(shared, id, &link, items, usize::MAX);
                }
                state = shared.lock();
                continue;
            }
            // A job with a time limit waits at the front for this worker to be idle (its reader
            // wakes the slot then), or for another slot.
        }
        let is_spent = sent_so_far >= max_sent;
        if is_spent && state.slots[id].in_flight.is_empty() {
            state.slots[id].link = None;
            state.slots[id].sent = 0;
            drop(state);
            if let Some(done) = supervisor.child() {
                tracing::debug!(
                    worker = id,
                    pid = done.pid(),
                    tasks = sent_so_far,
                    "worker process renewed"
                );
            }
            supervisor.retire();
            state = shared.lock();
            continue;
        }
        // Idle with nothing queued: jobs waiting behind a long task elsewhere are ours to run.
        let mut look_again = None;
        if state.queue.is_empty() && state.slots[id].is_free() {
            match steal(&mut state, id) {
                Steal::Took => continue,
                Steal::LookAgainIn(after) => look_again = Some(after),
                Steal::Nothing => {}
            }
        }
        if state.is_stopping && state.queue.is_empty() && state.slots[id].in_flight.is_empty() {
            state.slots[id].link = None;
            break;
        }
        state.asleep.push(id);
        state = match look_again {
            None => shared.wake[id].wait(state).unwrap_or_else(PoisonError::into_inner),
            Some(after) => {
                shared.wake[id].wait_timeout(state, after).unwrap_or_else(PoisonError::into_inner).0
            }
        };
        state.asleep.retain(|slot| *slot != id);
    }
    drop(state);
    supervisor.retire();
}

/// Takes up to `take` jobs from the front of the queue for one worker, in order. A job whose
/// attempts have a time limit goes only to an idle worker and alone, so that its clock starts
/// when it starts rather than while it waits behind another job in the worker.
fn take_sendable(queue: &mut VecDeque<Item>, take: usize, is_idle: bool) -> Vec<Item> {
    let mut items = Vec::with_capacity(take.min(queue.len()));
    while items.len() < take {
        let Some(front) = queue.front() else { break };
        if front.request().has_timeout() {
            if is_idle && items.is_empty() {
                items.extend(queue.pop_front());
            }
            break;
        }
        items.extend(queue.pop_front());
    }
    items
}

/// Resolves the jobs a dead worker ran as `WorkerDied`; returns the ones to requeue.
fn resolve(burial: Burial<Sent>, id: usize) -> Vec<Sent> {
    let Burial { death, died, requeued } = burial;
    let blamed = died.first().map(|(sent, _)| sent.request.id());
    for (sent, death) in died {
        sent.span.record("pid", death.pid);
        sent.span.record("outcome", "worker died");
        sent.request.fail(Failure::Died(death));
    }
    tracing::warn!(
        worker = id,
        pid = death.pid,
        reason = %death.reason,
        job = blamed,
        requeued = requeued.len(),
        "worker process died"
    );
    requeued
}

/// Claims `items`, builds their frames, enters them in flight on slot `id` and writes them to its
/// worker in one go. The frames past `max_direct` bytes in all, every job if the worker is gone
/// meanwhile,
/// and (from a caller's thread) every job if another thread is writing to the worker, go back to
/// the front of the queue for the slot thread, already claimed.
fn send_jobs(
    shared: &Arc<Shared>,
    id: usize,
    link: &Link,
    items: impl IntoIterator<Item = Item>,
    max_direct: usize,
) {
    let max_frame = shared.settings.max_frame;
    let is_caller = max_direct != usize::MAX;
    let items = items.into_iter();
    let mut ready = Vec::with_capacity(items.size_hint().0);
    for item in items {
        let stop = InFlightStop::new(link);
        let sent = match item {
            Item::Fresh(request) => {
                // Room for the header and a small task's arguments: a frame grown from empty
                // cost four reallocations, a fifth of the pool's instructions per no-op task.
                // Or the kept buffer of a large frame, for a job that may be large too.
                let mut frame = shared
                    .take_spare_frame()
                    .unwrap_or_else(|| Vec::with_capacity(FRAME_START + request.task().len()));
                protocol::begin_run(&mut frame, request.id(), request.task());
                match request.start(Arc::clone(&stop) as Arc<dyn Stop>, &mut frame) {
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
                    attempt = request.attempt(),
                    backend = "process",
                    worker = id,
                    pid = tracing::field::Empty,
                    outcome = tracing::field::Empty,
                    duration_us = tracing::field::Empty,
                );
                if Jobs::fits_ring(frame.len()) && frame.capacity() > FRAME_START << 10 {
                    // A small frame in the kept buffer: a copy of its own, and the buffer back.
                    let small = frame.to_vec();
                    shared.keep_spare_frame(Frame::Large(Arc::new(frame)));
                    frame = small;
                }
                Sent { request, frame: Frame::new(frame), stop, span, deaths: 0 }
            }
            Item::Sent(mut sent) => {
                if !sent.request.restart(Arc::clone(&stop) as Arc<dyn Stop>) {
                    continue;
                }
                sent.stop = stop;
                sent
            }
        };
        ready.push(sent);
    }
    if ready.is_empty() {
        return;
    }
    // The writer is taken before the jobs enter the in-flight list and held until they are
    // written, so that the worker gets them in the order of the list (the order of their claims)
    // even when a caller's thread and the slot thread send at once. A failed write means the
    // worker is gone, which the reader reports. A caller's thread never waits for the writer: a
    // slot thread holding it may be writing megabytes to a busy worker.
    let mut writer = match link.writer.try_lock() {
        Ok(writer) => Some(writer),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) if is_caller => None,
        Err(TryLockError::WouldBlock) => Some(lock(&link.writer)),
    };
    // Frames that fit the job ring are staged in the writer, in order, and published together
    // after the lock: one copy, one publication and at most one wake-up of the worker per batch.
    let large: Vec<(usize, Arc<Vec<u8>>)> = {
        let mut state = shared.lock();
        let slot = &state.slots[id];
        let is_current = writer.is_some()
            && slot.link.as_ref().is_some_and(|now| now.epoch == link.epoch)
            && slot.ended.is_none();
        // Callers' threads may race each other to an idle worker: the limits hold all the same.
        let mut room = shared.max_sent().saturating_sub(slot.sent);
        let mut places = MAX_IN_FLIGHT.saturating_sub(slot.in_flight.len());
        // A caller's thread writes no more than `max_direct` bytes in all: a write that fills
        // the socket would hold it until the worker has read.
        let mut budget = max_direct;
        // Most batches are sent whole: no second list of those to send.
        let mut to_queue = Vec::new();
        let slot = &mut state.slots[id];
        let mut large = Vec::new();
        // One reading of the clock for the batch: a job's send time only paces the slot.
        let now = Instant::now();
        for sent in ready {
            let fits = is_current && room > 0 && places > 0 && sent.frame.len() <= budget;
            if !fits {
                // The rest go after it, in order.
                budget = 0;
                to_queue.push(sent);
                continue;
            }
            budget -= sent.frame.len();
            room -= 1;
            places -= 1;
            // Resolved between its claim and now (cancelled): no need to send it.
            if sent.request.is_finished() {
                continue;
            }
            slot.sent += 1;
            let seq = slot.sent;
            claim::publish(link.claim(seq), seq);
            sent.stop.enter(seq, now);
            if let Some(writer) = writer.as_mut() {
                match &sent.frame {
                    Frame::Small(bytes) => writer.stage(bytes),
                    Frame::Large(bytes) => large.push((writer.staged(), Arc::clone(bytes))),
                }
            }
            slot.in_flight.push_back(Flight {
                seq,
                job: sent.request.id(),
                sent_at: now,
                sent: Some(sent),
            });
        }
        if !to_queue.is_empty() {
            for sent in to_queue.into_iter().rev() {
                state.queue.push_front(Item::Sent(sent));
            }
            shared.wake[id].notify_one();
        }
        large
    };
    if let Some(writer) = writer.as_mut() {
        // A full job ring waits for the worker to take frames, or for its hang-up.
        let never = || false;
        if writer.flush(large, &never).is_err() {
            // The worker is gone, and its reader reports it; or it broke the job ring's
            // positions, and is killed for it, which its reader then reports.
            link.halter.kill.kill();
        }
    }
}
