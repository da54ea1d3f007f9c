//! The pool and one worker share a mapping that carries, with no system call on the busy path,
//! the jobs one way and the replies the other: two single-producer, single-consumer rings of
//! frames (lanes), and the claims of the jobs in flight. Its two halves' types say who does what:
//! the pool's [`PoolSide`] pushes jobs, pops replies and stops jobs through their claims; the
//! worker's [`WorkerSide`] pops jobs, pushes replies and starts jobs through their claims.
//!
//! A reply must leave the worker before the worker starts its next job: a reply still inside a
//! worker that the next job crashes is lost, and the pool would blame the job that finished and
//! run the crashing one again elsewhere. A reply copied into memory shared with the pool is out
//! of the worker as surely as one written to the socket (the pool's mapping outlives the worker),
//! for the cost of a copy: the producer writes the frame, then publishes it by moving `head`; the
//! consumer copies it out, then moves `tail`. Jobs go the same way in the other lane.
//!
//! A consumer that finds its lane empty looks again a few times, then sleeps on the lane's
//! `asleep` word, a futex shared by both processes; the producer's next push sees the flag and
//! wakes it (`FUTEX_WAKE`): a busy pair moves frames with no system call at all, and an idle one
//! costs one wake-up per frame. The socket carries only what the rings cannot: the descriptors of
//! memory files (`SCM_RIGHTS`): the rings' own, and the regions through which frames over a
//! quarter of a ring travel, announced in the ring by an `OnShared` frame so that frames stay
//! in order (see `large.rs`); and end-of-file, which says a worker died:
//! the pool's stderr follower watches the socket and wakes the reader (see
//! [`PoolSide::hang_up`]), and the worker's own watcher kills it when the pool hangs up.
//!
//! Each side distrusts the other: positions, lengths and bytes from the other side are checked
//! like any frame from a socket, and a ring that breaks the rules is a protocol error, never a
//! panic or an allocation larger than the frame limit.

#[cfg(not(all(test, loom)))]
use std::os::fd::{AsFd, OwnedFd};
#[cfg(not(all(test, loom)))]
use std::time::Duration;

use super::claim::{Claims, CLAIM_WORDS};
use super::protocol::ProtocolError;
#[cfg(not(all(test, loom)))]
use super::sys::SharedMemory;
#[cfg(all(test, loom))]
use crate::sync::SharedMemory;
use crate::sync::{seq_cst_handshake, AtomicBool, AtomicU64, Ordering};

#[cfg(all(test, loom))]
type Duration = std::time::Duration;

/// The bytes of frames each lane holds; frames over a quarter of it go through the lane's region
/// (see `large.rs`).
#[cfg(not(all(test, loom)))]
pub(crate) const CAPACITY: usize = 1 << 20;
/// Under loom, room for four frames of 6 bytes, so that a model of a few frames wraps around and
/// waits for room.
#[cfg(all(test, loom))]
pub(crate) const CAPACITY: usize = 24;

/// One direction of the mapping: the indices of its control words (each on a cache line of its
/// own, eight words apart, where both sides write them often) and where its bytes start.
#[derive(Debug, Clone, Copy)]
struct Lane {
    /// Bytes of frames published by the producer, ever (wraps at `u64::MAX`, never in practice).
    head: usize,
    /// Bytes of frames consumed, ever.
    tail: usize,
    /// 1 while the consumer sleeps on this word (a futex) or is about to.
    asleep: usize,
    /// 1 while a second consumer, standing in for the first, sleeps on this word: a caller
    /// waiting for its own reply (see `lead.rs`); the producer wakes it like `asleep`.
    leader: Option<usize>,
    /// The offset of the lane's bytes in the mapping's data.
    data: usize,
}

/// The worker's replies, worker to pool.
const REPLIES: Lane = Lane { head: 0, tail: 8, asleep: 16, leader: Some(LEADER), data: 0 };
/// How many jobs the worker has started, ever: what its standard error was written during.
const STARTED: usize = 24;
/// The jobs, pool to worker.
const JOBS: Lane = Lane { head: 32, tail: 40, asleep: 48, leader: None, data: CAPACITY };
/// One word per job in flight: whether it may start, started, or was stopped.
const CLAIMS_AT: usize = 64;
/// A futex word's value after [`Mapping::interrupt`]: neither 1 (asleep, wake me) nor 0.
const INTERRUPTED: u64 = 2;
/// The reader's `asleep` word while a caller reads in its place and the reader sleeps on: the
/// worker's pushes, which wake only a word at 1, leave it alone (see `lead.rs`).
const DEAFENED: u64 = 3;
/// The word a caller reading the replies in the reader's place sleeps on (see `lead.rs`).
const LEADER: usize = 56;
/// How many large frames of the job lane the worker has copied out of the pool's region (see
/// `large.rs`): the pool writes the next one only when it has them all.
const JOBS_REGION_TAKEN: usize = 2032;
/// The same for the reply lane: large replies the pool has copied out of the worker's region.
const REPLIES_REGION_TAKEN: usize = 2040;
/// The words the control area holds: four pages.
const WORDS: usize = 2048;
const _: () = assert!(CLAIMS_AT + CLAIM_WORDS <= JOBS_REGION_TAKEN);
/// The data: the two lanes' bytes.
const BYTES: usize = 2 * CAPACITY;

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The consumer is gone (the caller's `is_gone` said so) while the lane was full.
    Gone,
    /// The consumer set positions no well-behaved consumer sets.
    Broken,
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Gone => f.write_str("the other side is gone"),
            PushError::Broken => f.write_str("the other side broke the ring's positions"),
        }
    }
}

/// The mapping both halves share: control words, then the lanes' bytes.
struct Mapping {
    memory: SharedMemory,
}

impl Mapping {
    fn word(&self, index: usize) -> &AtomicU64 {
        &self.memory.words()[index]
    }

    /// The claims of the jobs sent to the worker, shared by both sides.
    fn claims(&self) -> &Claims {
        let claims = &self.memory.words()[CLAIMS_AT..CLAIMS_AT + CLAIM_WORDS];
        claims.try_into().expect("the claims are `CLAIM_WORDS` words: a constant range")
    }

    /// How many jobs the worker has started: it bumps the count as it starts each one.
    fn started(&self) -> &AtomicU64 {
        self.word(STARTED)
    }

    /// Whether a frame of `len` bytes goes through a lane (else through its region).
    fn fits(len: usize) -> bool {
        len <= CAPACITY / 4
    }

    /// The consumer's side: copies the next frame's body (after its length) into `body`; `false`
    /// if the lane is empty.
    fn pop(&self, lane: Lane, body: &mut Vec<u8>, max_frame: usize) -> Result<bool, ProtocolError> {
        let tail = self.word(lane.tail).load(Ordering::Relaxed);
        let head = self.word(lane.head).load(Ordering::Acquire);
        let published = head.wrapping_sub(tail);
        if published == 0 {
            return Ok(false);
        }
        if published > CAPACITY as u64 || published < 4 {
            return Err(ProtocolError::Malformed("ring: a position out of bounds"));
        }
        let mut header = [0u8; 4];
        self.copy_out(lane, tail, &mut header);
        let len = u32::from_le_bytes(header) as usize;
        if len > max_frame {
            return Err(ProtocolError::Oversized { len, max: max_frame });
        }
        if (4 + len) as u64 > published {
            return Err(ProtocolError::Malformed("ring: a frame beyond the published bytes"));
        }
        body.clear();
        body.resize(len, 0);
        self.copy_out(lane, tail.wrapping_add(4), body);
        self.word(lane.tail).store(tail.wrapping_add(4 + len as u64), Ordering::Release);
        Ok(true)
    }

    /// Copies `out.len()` bytes from position `at` of `lane` (within the published bytes).
    fn copy_out(&self, lane: Lane, at: u64, out: &mut [u8]) {
        // The bytes are published and belong to this side until `tail` moves past them; a
        // producer that writes them anyway can only garble this copy, which is then checked like
        // any bytes from the other side.
        let start = at as usize % CAPACITY;
        let first = out.len().min(CAPACITY - start);
        let (wrapped, rest) = out.split_at_mut(first);
        self.memory.copy_out(lane.data + start, wrapped);
        self.memory.copy_out(lane.data, rest);
    }

    /// The producer's side: copies `frame` (a whole frame, length included, that
    /// [`Mapping::fits`]) into `lane`, waiting for room until `is_gone` says the consumer is
    /// gone, publishes it, and wakes the consumer if it sleeps.
    fn push(&self, lane: Lane, frame: &[u8], is_gone: &dyn Fn() -> bool) -> Result<(), PushError> {
        debug_assert!(Self::fits(frame.len()));
        let (head, tail) = (self.word(lane.head), self.word(lane.tail));
        let at = head.load(Ordering::Relaxed);
        let mut waited = 0u32;
        // Room comes back as the consumer consumes.
        loop {
            let used = at.wrapping_sub(tail.load(Ordering::Acquire));
            if used > CAPACITY as u64 {
                return Err(PushError::Broken);
            }
            if CAPACITY - used as usize >= frame.len() {
                break;
            }
            if is_gone() {
                return Err(PushError::Gone);
            }
            back_off(&mut waited);
        }
        // The bytes from `head` on are free (checked above) and belong to this side until
        // `head` moves past them.
        let start = at as usize % CAPACITY;
        let first = frame.len().min(CAPACITY - start);
        self.memory.copy_in(lane.data + start, &frame[..first]);
        self.memory.copy_in(lane.data, &frame[first..]);
        head.store(at.wrapping_add(frame.len() as u64), Ordering::SeqCst);
        seq_cst_handshake();
        // Pairs with `wait`: either the consumer sees the new head, or this sees it asleep. The
        // pool's reader and a caller leading in its place each sleep on a word of their own.
        for sleeper in lane.leader.into_iter().chain([lane.asleep]) {
            let word = self.word(sleeper);
            if word.load(Ordering::SeqCst) == 1 && word.swap(0, Ordering::SeqCst) == 1 {
                self.memory.wake(sleeper);
            }
        }
        Ok(())
    }

    /// The producer's side of a lane's large-frame region: waits until the consumer has taken
    /// (copied out) all `sent` frames written there, until `is_gone` says it is gone.
    fn wait_region(
        &self,
        taken: usize,
        sent: u64,
        is_gone: &dyn Fn() -> bool,
    ) -> Result<(), PushError> {
        let mut waited = 0u32;
        loop {
            // Pairs with the consumer's store after its copy: the region is free again.
            let done = self.word(taken).load(Ordering::Acquire);
            if done == sent {
                return Ok(());
            }
            if done > sent {
                return Err(PushError::Broken);
            }
            if is_gone() {
                return Err(PushError::Gone);
            }
            back_off(&mut waited);
        }
    }

    /// Whether `lane` has published bytes the consumer has not taken.
    fn has_frame(&self, lane: Lane) -> bool {
        let tail = self.word(lane.tail).load(Ordering::Relaxed);
        self.word(lane.head).load(Ordering::SeqCst) != tail
    }

    /// The consumer's side, with `lane` found empty: looks again `spins` times (yielding its CPU
    /// in between), then sleeps on word `sleeper` (the lane's `asleep`, or its `leader`) until
    /// the producer's next push, a [`Mapping::interrupt`] (when `is_interrupted` says so), or
    /// `timeout`. Returns whether it slept until the time ran out; may return early, and the
    /// caller then looks again.
    fn wait(
        &self,
        lane: Lane,
        sleeper: usize,
        spins: u32,
        timeout: Option<Duration>,
        is_interrupted: &dyn Fn() -> bool,
    ) -> bool {
        let spins = if may_spin() { spins } else { 0 };
        for _ in 0..spins {
            if self.has_frame(lane) || is_interrupted() {
                return false;
            }
            if !spin() {
                break;
            }
        }
        let asleep = self.word(sleeper);
        asleep.store(1, Ordering::SeqCst);
        seq_cst_handshake();
        // Pairs with `push` (and `interrupt`): either this sees the frame, or the producer sees
        // the flag and wakes this side.
        if self.has_frame(lane) || is_interrupted() {
            asleep.store(0, Ordering::SeqCst);
            return false;
        }
        let timed_out = self.memory.wait(sleeper, 1, timeout);
        // Woken, the producer cleared the flag; otherwise clear it here (a producer that finds it
        // still set wakes nobody, harmlessly).
        asleep.store(0, Ordering::SeqCst);
        timed_out
    }

    /// Wakes the consumer asleep on word `sleeper` out of `wait` (or keeps it from sleeping):
    /// call after making its `is_interrupted` true, with a `SeqCst` store. The word is left at
    /// [`INTERRUPTED`], which neither kind of sleep expects (the pool's reader also sleeps with
    /// its word at [`DEAFENED`], see [`PoolSide::sleep_deafened`]): a sleeper not queued yet does
    /// not sleep.
    fn interrupt(&self, sleeper: usize) {
        self.word(sleeper).store(INTERRUPTED, Ordering::SeqCst);
        self.memory.wake(sleeper);
    }
}

/// The pool's half: it pushes jobs, pops replies, and moves claims to stop jobs.
pub(crate) struct PoolSide {
    mapping: Mapping,
    /// Set (in the pool only) when the worker's end of the socket hung up: the worker is gone,
    /// and nothing it has not published yet ever will be.
    is_hung_up: AtomicBool,
}

/// The worker's half: it pops jobs, pushes replies, and moves claims to start jobs.
pub(crate) struct WorkerSide {
    mapping: Mapping,
}

impl PoolSide {
    /// Creates the shared mapping in a fresh memory file; the descriptor is for the worker.
    #[cfg(not(all(test, loom)))]
    pub(crate) fn create() -> Result<(PoolSide, OwnedFd), String> {
        let (memory, fd) = SharedMemory::create("parallel-rings", WORDS, BYTES)?;
        Ok((PoolSide::of(memory), fd))
    }

    fn of(memory: SharedMemory) -> PoolSide {
        PoolSide { mapping: Mapping { memory }, is_hung_up: AtomicBool::new(false) }
    }

    /// Whether a job frame of `len` bytes goes through the job lane (else through its region).
    pub(crate) fn fits(&self, len: usize) -> bool {
        Mapping::fits(len)
    }

    /// [`PoolSide::fits`] without a ring at hand: the same for every ring.
    pub(crate) fn fits_lane(len: usize) -> bool {
        Mapping::fits(len)
    }

    /// Copies job frame `frame` (that [`PoolSide::fits`]) into the job lane and wakes the
    /// worker if it sleeps; waits for room while the lane is full, until the worker hangs up or
    /// `is_gone` says to give up.
    pub(crate) fn push_job(
        &self,
        frame: &[u8],
        is_gone: &dyn Fn() -> bool,
    ) -> Result<(), PushError> {
        self.mapping.push(JOBS, frame, &|| self.has_hung_up() || is_gone())
    }

    /// Waits until the worker has copied out all `sent` large jobs written to the pool's region,
    /// until it hangs up or `is_gone` says to give up.
    pub(crate) fn wait_jobs_region(
        &self,
        sent: u64,
        is_gone: &dyn Fn() -> bool,
    ) -> Result<(), PushError> {
        self.mapping.wait_region(JOBS_REGION_TAKEN, sent, &|| self.has_hung_up() || is_gone())
    }

    /// Tells the worker that the pool has copied out `taken` large replies from its region.
    pub(crate) fn release_replies_region(&self, taken: u64) {
        self.mapping.word(REPLIES_REGION_TAKEN).store(taken, Ordering::Release);
    }

    /// Copies the next reply's body (after its length) into `body`; `false` if there is none.
    pub(crate) fn pop_reply(
        &self,
        body: &mut Vec<u8>,
        max_frame: usize,
    ) -> Result<bool, ProtocolError> {
        self.mapping.pop(REPLIES, body, max_frame)
    }

    /// With no reply found: looks again `spins` times, then sleeps until the worker's next
    /// reply, its hang-up, `timeout`, or (looked at with the rest, and woken by
    /// [`PoolSide::wake_reader`]) `is_interrupted`; returns whether the time ran out.
    pub(crate) fn wait_reply(
        &self,
        spins: u32,
        timeout: Option<Duration>,
        is_interrupted: &dyn Fn() -> bool,
    ) -> bool {
        self.wait_reply_on(REPLIES.asleep, spins, timeout, is_interrupted)
    }

    /// `wait_reply` for a caller that reads the replies in the reader's place (see `lead.rs`):
    /// it sleeps on a word of its own, which the worker's push wakes too.
    pub(crate) fn wait_reply_leading(
        &self,
        spins: u32,
        timeout: Option<Duration>,
        is_interrupted: &dyn Fn() -> bool,
    ) -> bool {
        self.wait_reply_on(LEADER, spins, timeout, is_interrupted)
    }

    /// The wait of both readers, on word `sleeper`; the worker's hang-up interrupts it too.
    fn wait_reply_on(
        &self,
        sleeper: usize,
        spins: u32,
        timeout: Option<Duration>,
        is_interrupted: &dyn Fn() -> bool,
    ) -> bool {
        let is_interrupted = || self.has_hung_up() || is_interrupted();
        self.mapping.wait(REPLIES, sleeper, spins, timeout, &is_interrupted)
    }

    /// Moves the reader's `asleep` word from 1 (asleep, wake me) to [`DEAFENED`] (asleep, but a
    /// caller reads in its place): the worker's pushes leave such a sleeper alone.
    pub(crate) fn deafen_reader(&self) {
        let asleep = self.mapping.word(REPLIES.asleep);
        let _ = asleep.compare_exchange(1, DEAFENED, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Moves the reader's `asleep` word from [`DEAFENED`] back to 1: the worker's next push wakes
    /// the reader.
    pub(crate) fn rearm_reader(&self) {
        let asleep = self.mapping.word(REPLIES.asleep);
        let _ = asleep.compare_exchange(DEAFENED, 1, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The reader's sleep while a caller reads in its place (`is_leading` says so): sets its word
    /// from 0 to [`DEAFENED`], looks at `is_leading` again, and sleeps while the word stays
    /// deafened, until [`PoolSide::rearm_reader`] and the next push, a
    /// [`PoolSide::wake_reader`], the hang-up, or `timeout`. Returns whether the time ran out.
    pub(crate) fn sleep_deafened(
        &self,
        timeout: Option<Duration>,
        is_leading: &dyn Fn() -> bool,
    ) -> bool {
        let asleep = self.mapping.word(REPLIES.asleep);
        let _ = asleep.compare_exchange(0, DEAFENED, Ordering::SeqCst, Ordering::SeqCst);
        seq_cst_handshake();
        // Pairs with the hand-back: either this sees that no caller leads any more, or the
        // hand-back's `rearm_reader` comes after the word was deafened here.
        if !is_leading() {
            let _ = asleep.compare_exchange(DEAFENED, 0, Ordering::SeqCst, Ordering::SeqCst);
            return false;
        }
        let timed_out = self.mapping.memory.wait(REPLIES.asleep, DEAFENED as u32, timeout);
        // The interruption is taken; a re-armed word stays set for the next push.
        let _ = asleep.compare_exchange(INTERRUPTED, 0, Ordering::SeqCst, Ordering::SeqCst);
        timed_out
    }

    /// Wakes the reader out of `wait_reply`: call after making its `is_interrupted` true, or with
    /// a reply in the lane, with a `SeqCst` store.
    pub(crate) fn wake_reader(&self) {
        self.mapping.interrupt(REPLIES.asleep);
    }

    /// Whether the reply lane holds a reply not taken yet.
    pub(crate) fn has_reply(&self) -> bool {
        self.mapping.has_frame(REPLIES)
    }

    /// The worker's end of the socket hung up: wakes the reply reader (and a caller reading in its
    /// place), which then resolves what the lane holds and reports the end, and any push waiting
    /// for room, which gives up.
    pub(crate) fn hang_up(&self) {
        self.is_hung_up.store(true, Ordering::SeqCst);
        // Pairs with the reader's `wait`: either it sees the flag, or this clears its `asleep`
        // after it set it (see the README: the store order makes the wake reach it).
        seq_cst_handshake();
        self.mapping.interrupt(LEADER);
        self.mapping.interrupt(REPLIES.asleep);
    }

    /// Whether [`PoolSide::hang_up`] was called.
    pub(crate) fn has_hung_up(&self) -> bool {
        self.is_hung_up.load(Ordering::SeqCst)
    }

    /// The claims of the jobs sent to the worker.
    pub(crate) fn claims(&self) -> &Claims {
        self.mapping.claims()
    }

    /// How many jobs the worker has started.
    pub(crate) fn started(&self) -> &AtomicU64 {
        self.mapping.started()
    }
}

impl WorkerSide {
    /// Maps the memory the pool created (the worker's side), from its descriptor.
    #[cfg(not(all(test, loom)))]
    pub(crate) fn map(fd: impl AsFd) -> Result<WorkerSide, String> {
        Ok(WorkerSide { mapping: Mapping { memory: SharedMemory::map(fd, WORDS, BYTES)? } })
    }

    /// Whether a reply frame of `len` bytes goes through the reply lane (else through its region).
    pub(crate) fn fits(&self, len: usize) -> bool {
        Mapping::fits(len)
    }

    /// Copies reply frame `frame` (that [`WorkerSide::fits`]) into the reply lane, waiting for
    /// room (a pool that stops consuming kills this worker), and wakes the pool's reader if it
    /// sleeps.
    pub(crate) fn push_reply(&self, frame: &[u8]) -> Result<(), PushError> {
        self.mapping.push(REPLIES, frame, &|| false)
    }

    /// Waits until the pool has copied out all `sent` large replies written to this worker's
    /// region (a pool that stops reading kills this worker).
    pub(crate) fn wait_replies_region(&self, sent: u64) -> Result<(), PushError> {
        self.mapping.wait_region(REPLIES_REGION_TAKEN, sent, &|| false)
    }

    /// Tells the pool that this worker has copied out `taken` large jobs from its region.
    pub(crate) fn release_jobs_region(&self, taken: u64) {
        self.mapping.word(JOBS_REGION_TAKEN).store(taken, Ordering::Release);
    }

    /// Copies the next job frame's body (after its length) into `body`; `false` if there is none.
    pub(crate) fn pop_job(
        &self,
        body: &mut Vec<u8>,
        max_frame: usize,
    ) -> Result<bool, ProtocolError> {
        self.mapping.pop(JOBS, body, max_frame)
    }

    /// With no job found: looks again `spins` times, then sleeps until the pool's next job or
    /// `timeout`; returns whether the time ran out.
    pub(crate) fn wait_job(&self, spins: u32, timeout: Option<Duration>) -> bool {
        self.mapping.wait(JOBS, JOBS.asleep, spins, timeout, &|| false)
    }

    /// The claims of the jobs sent to this worker.
    pub(crate) fn claims(&self) -> &Claims {
        self.mapping.claims()
    }

    /// How many jobs this worker has started: it bumps the count as it starts each one.
    pub(crate) fn started(&self) -> &AtomicU64 {
        self.mapping.started()
    }
}

/// For the fuzz target `rings`: leaves both lanes as a hostile peer could (positions `head`
/// and `tail`, `bytes` from `tail` on), then takes frames out of each as the pool and the worker
/// do, under frame limit `limit`, and pushes one into each as they do (giving up at once on a
/// full lane). Returns how many frames were taken. Must never panic nor allocate past `limit`.
#[cfg(feature = "fuzzing")]
pub(crate) fn hostile(head: u64, tail: u64, bytes: &[u8], limit: usize) -> usize {
    thread_local! {
        static PAIR: (PoolSide, WorkerSide) = {
            let (pool, fd) = PoolSide::create().expect("a memory file for the fuzz target");
            let worker = WorkerSide::map(&fd).expect("a second mapping for the fuzz target");
            (pool, worker)
        };
    }
    PAIR.with(|(pool, worker)| {
        let mut taken = 0;
        let mut body = Vec::new();
        for (mapping, lane) in [(&pool.mapping, REPLIES), (&worker.mapping, JOBS)] {
            mapping.word(lane.head).store(head, Ordering::SeqCst);
            mapping.word(lane.tail).store(tail, Ordering::SeqCst);
            let start = tail as usize % CAPACITY;
            let n = bytes.len().min(CAPACITY - start);
            mapping.memory.copy_in(lane.data + start, &bytes[..n]);
            while taken < 64 && matches!(mapping.pop(lane, &mut body, limit), Ok(true)) {
                taken += 1;
            }
        }
        // The other way round: the pool pushes a job, the worker a reply, into lanes whose
        // consumer left these positions.
        for (mapping, lane) in [(&pool.mapping, JOBS), (&worker.mapping, REPLIES)] {
            mapping.word(lane.head).store(head, Ordering::SeqCst);
            mapping.word(lane.tail).store(tail, Ordering::SeqCst);
            let frame = [1, 0, 0, 0, 2];
            let _ = mapping.push(lane, &frame, &|| true);
        }
        taken
    })
}

/// Waits a little longer each time: spins, then yields, then sleeps.
#[cfg(not(all(test, loom)))]
fn back_off(waited: &mut u32) {
    *waited += 1;
    match *waited {
        0..=64 => std::hint::spin_loop(),
        65..=128 => std::thread::yield_now(),
        _ => std::thread::sleep(Duration::from_micros(50)),
    }
}

/// Under loom, waiting lets the other side run.
#[cfg(all(test, loom))]
fn back_off(_: &mut u32) {
    ::loom::thread::yield_now();
}

/// Whether a consumer should look again before it sleeps (see [`crate::sync::busy`]).
#[cfg(not(all(test, loom)))]
fn may_spin() -> bool {
    crate::sync::busy::may_spin()
}

#[cfg(all(test, loom))]
fn may_spin() -> bool {
    true
}

/// One look's pause while a consumer spins before it sleeps: the CPU is given up, since on a
/// busy machine the producer may need it. `false` if the machine turned out busy: the consumer
/// should sleep now.
#[cfg(not(all(test, loom)))]
fn spin() -> bool {
    crate::sync::busy::yield_now()
}

#[cfg(all(test, loom))]
fn spin() -> bool {
    ::loom::thread::yield_now();
    true
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::alloc_probe::largest_allocation;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(body);
        frame
    }

    /// Two mappings of one memory file, as the pool and its worker have.
    fn pair() -> (PoolSide, WorkerSide) {
        let (pool, fd) = PoolSide::create().unwrap();
        let worker = WorkerSide::map(&fd).unwrap();
        (pool, worker)
    }

    const NEVER: &dyn Fn() -> bool = &|| false;

    #[test]
    fn frames_cross_in_order_and_wrap_around_both_ways() {
        let (pool, worker) = pair();
        let mut body = Vec::new();
        // 1000 frames of up to 100 KiB each way: the positions wrap around the 1 MiB lanes many
        // times, and neither lane's bytes step on the other's.
        for round in 0..1000usize {
            let payload: Vec<u8> =
                (0..(round * 7919) % (100 << 10)).map(|i| (i + round) as u8).collect();
            let job: Vec<u8> = payload.iter().map(|byte| !byte).collect();
            worker.push_reply(&frame(&payload)).unwrap();
            pool.push_job(&frame(&job), NEVER).unwrap();
            assert!(pool.pop_reply(&mut body, 1 << 20).unwrap());
            assert_eq!(body, payload, "reply {round}");
            assert!(worker.pop_job(&mut body, 1 << 20).unwrap());
            assert_eq!(body, job, "job {round}");
        }
        assert!(!pool.pop_reply(&mut body, 1 << 20).unwrap());
        assert!(!worker.pop_job(&mut body, 1 << 20).unwrap());
    }

    #[test]
    fn a_sleeping_consumer_is_woken_by_the_next_frame_on_either_side() {
        let (pool, worker) = pair();
        let (pool, worker) = (Arc::new(pool), Arc::new(worker));
        // The worker sleeps on its job lane until the pool pushes; the pool's reader sleeps on
        // the reply lane until the worker answers. Long timeouts: only a wake-up ends the waits
        // in time.
        for round in 0..50u8 {
            let sleeper = {
                let worker = Arc::clone(&worker);
                std::thread::spawn(move || {
                    let mut body = Vec::new();
                    while !worker.pop_job(&mut body, 64).unwrap() {
                        assert!(!worker.wait_job(0, Some(Duration::from_secs(30))), "woken");
                    }
                    worker.push_reply(&frame(&body)).unwrap();
                })
            };
            if round % 2 == 0 {
                // Let it fall asleep first, on some rounds.
                std::thread::sleep(Duration::from_millis(2));
            }
            pool.push_job(&frame(&[round]), NEVER).unwrap();
            let mut body = Vec::new();
            while !pool.pop_reply(&mut body, 64).unwrap() {
                assert!(!pool.wait_reply(0, Some(Duration::from_secs(30)), NEVER), "woken");
            }
            assert_eq!(body, [round]);
            sleeper.join().unwrap();
        }
    }

    #[test]
    fn a_consumer_with_nothing_to_read_sleeps_until_its_timeout() {
        let (pool, worker) = pair();
        let started = Instant::now();
        assert!(worker.wait_job(4, Some(Duration::from_millis(20))), "timed out");
        assert!(pool.wait_reply(4, Some(Duration::from_millis(20)), NEVER), "timed out");
        assert!(started.elapsed() >= Duration::from_millis(40));
        // The flags are down again: a push wakes nobody.
        assert_eq!(worker.mapping.word(JOBS.asleep).load(Ordering::SeqCst), 0);
        assert_eq!(pool.mapping.word(REPLIES.asleep).load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_hang_up_wakes_the_reader_and_stops_a_push_waiting_for_room() {
        let (pool, _worker) = pair();
        let pool = Arc::new(pool);
        let reader = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || pool.wait_reply(0, None, NEVER))
        };
        // The job lane full, with a worker that never takes a job.
        let big = frame(&vec![7u8; CAPACITY / 4 - 4]);
        for _ in 0..4 {
            pool.push_job(&big, NEVER).unwrap();
        }
        let pusher = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || pool.push_job(&frame(b"more"), NEVER))
        };
        std::thread::sleep(Duration::from_millis(50));
        pool.hang_up();
        assert!(!reader.join().unwrap(), "woken, not timed out");
        assert_eq!(pusher.join().unwrap(), Err(PushError::Gone));
        // And a reader that comes later does not sleep at all.
        assert!(!pool.wait_reply(0, None, NEVER));
    }

    #[test]
    fn a_full_lane_makes_the_producer_wait_for_the_consumer() {
        let (pool, worker) = pair();
        let big = frame(&vec![7u8; CAPACITY / 4 - 4]);
        for _ in 0..4 {
            worker.push_reply(&big).unwrap();
        }
        let consumer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut body = Vec::new();
            let mut frames = 0;
            while frames < 5 {
                if pool.pop_reply(&mut body, 1 << 20).unwrap() {
                    frames += 1;
                }
            }
            body
        });
        // Blocks until the consumer frees a quarter of the lane.
        worker.push_reply(&frame(b"last")).unwrap();
        assert_eq!(consumer.join().unwrap(), b"last");
    }

    #[test]
    fn claims_are_shared_across_the_mappings() {
        use crate::process::claim::{self, Claim};
        let (pool, worker) = pair();
        claim::publish(claim::slot(pool.claims(), 300), 300);
        assert_eq!(claim::start(claim::slot(worker.claims(), 300), 300), Ok(true));
        assert_eq!(claim::read(claim::slot(pool.claims(), 300), 300), Claim::Started);
    }

    /// Sets the raw state of `lane` as a hostile other side could.
    fn forge(mapping: &Mapping, lane: Lane, head: u64, tail: u64, bytes: &[u8]) {
        mapping.word(lane.head).store(head, Ordering::SeqCst);
        mapping.word(lane.tail).store(tail, Ordering::SeqCst);
        let start = tail as usize % CAPACITY;
        let n = bytes.len().min(CAPACITY - start);
        mapping.memory.copy_in(lane.data + start, &bytes[..n]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Positions and bytes anywhere, as a hostile worker leaves the reply lane or a hostile
        /// pool the job lane: the reading side gets frames or a protocol error, never a panic or
        /// an allocation over its frame limit.
        #[test]
        fn a_hostile_producer_cannot_make_the_consumer_panic_or_overallocate(
            head in any::<u64>(),
            tail in any::<u64>(),
            near in 0u64..64,
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            const LIMIT: usize = 4096;
            let (pool, worker) = pair();
            // Positions anywhere, and positions close together (a plausible but lying state).
            for head in [head, tail.wrapping_add(near)] {
                forge(&pool.mapping, REPLIES, head, tail, &bytes);
                forge(&worker.mapping, JOBS, head, tail, &bytes);
                let mut body = Vec::new();
                let (_, largest) = largest_allocation(|| {
                    for _ in 0..4 {
                        if !matches!(pool.pop_reply(&mut body, LIMIT), Ok(true)) {
                            break;
                        }
                    }
                    for _ in 0..4 {
                        if !matches!(worker.pop_job(&mut body, LIMIT), Ok(true)) {
                            break;
                        }
                    }
                });
                prop_assert!(largest <= LIMIT, "allocated {largest} bytes");
            }
        }

        /// Positions anywhere, as a hostile consumer leaves them: the producer's push writes its
        /// frame, waits for room or says the positions are broken, never panics, and never waits
        /// for a consumer that is gone.
        #[test]
        fn a_hostile_consumer_cannot_make_the_producer_panic(
            head in any::<u64>(),
            tail in any::<u64>(),
            near in 0u64..(CAPACITY as u64 + 64),
            len in 0usize..(CAPACITY / 4 - 4),
        ) {
            let (pool, worker) = pair();
            let body = vec![5u8; len];
            for tail in [tail, head.wrapping_sub(near)] {
                forge(&pool.mapping, JOBS, head, tail, &[]);
                forge(&worker.mapping, REPLIES, head, tail, &[]);
                // The pool's push gives up on a full lane once the worker is gone.
                let pushed = pool.push_job(&frame(&body), &|| true);
                let used = head.wrapping_sub(tail);
                let expected = if used > CAPACITY as u64 {
                    Err(PushError::Broken)
                } else if (CAPACITY as u64 - used) < (len + 4) as u64 {
                    Err(PushError::Gone)
                } else {
                    Ok(())
                };
                prop_assert_eq!(pushed, expected);
                if used > CAPACITY as u64 {
                    prop_assert_eq!(worker.push_reply(&frame(&body)), Err(PushError::Broken));
                }
            }
        }
    }
}

/// What the models of `lead.rs` build on: a mapping's two halves, the pool's shared by threads.
#[cfg(all(test, loom))]
pub(crate) mod models {
    use super::*;

    /// Both halves of one mapping, positions at 0.
    pub(crate) fn pool_and_worker() -> (std::sync::Arc<PoolSide>, WorkerSide) {
        let memory = SharedMemory::new(WORDS, BYTES);
        let pool = PoolSide::of(memory.clone());
        (std::sync::Arc::new(pool), WorkerSide { mapping: Mapping { memory } })
    }

    /// Frame `n`: a body of one byte.
    pub(crate) fn frame(n: u8) -> Vec<u8> {
        vec![1, 0, 0, 0, n]
    }
}

/// Models of a lane's positions and of the consumer's sleep on its futex word, checked by loom
/// in every interleaving over heap memory (see `crate::sync`, which models the futex too).
#[cfg(all(test, loom))]
mod loom {
    use super::*;
    use ::loom::sync::Arc;
    use ::loom::thread;

    /// Both halves of one mapping whose lanes' positions start at `at` (bytes that went through
    /// them before).
    fn pair(at: u64) -> (Arc<PoolSide>, WorkerSide) {
        let memory = SharedMemory::new(WORDS, BYTES);
        for lane in [REPLIES, JOBS] {
            memory.words()[lane.head].store(at, Ordering::Relaxed);
            memory.words()[lane.tail].store(at, Ordering::Relaxed);
        }
        let pool = PoolSide::of(memory.clone());
        (Arc::new(pool), WorkerSide { mapping: Mapping { memory } })
    }

    /// Frame `n`: 6 bytes, the most a lane of `CAPACITY` bytes takes (a quarter).
    fn frame(n: u8) -> Vec<u8> {
        vec![2, 0, 0, 0, n, !n]
    }

    fn bodies(frames: std::ops::Range<u8>) -> Vec<Vec<u8>> {
        frames.map(|n| frame(n)[4..].to_vec()).collect()
    }

    /// The pool's reader, as `read_replies` runs it: pops while there are frames, sleeps on the
    /// lane's futex when it is empty, until it has `count` frames or the worker hung up.
    fn read_replies(pool: &PoolSide, count: usize) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut body = Vec::new();
        while frames.len() < count {
            if pool.pop_reply(&mut body, 64).expect("a well-behaved worker's lane") {
                frames.push(body.clone());
            } else if pool.has_hung_up() {
                break;
            } else {
                pool.wait_reply(0, None, &|| false);
            }
        }
        frames
    }

    /// One worker pushing three replies (the second wraps around the end of the lane) while the
    /// reader pops and sleeps: every frame arrives once, in order, and a sleeping reader is
    /// always woken (a reader left asleep is a deadlock, which fails the model). Loom also fails
    /// the model if either side copies a byte while the other owns it.
    #[test]
    fn loom_the_reader_sleeps_and_is_woken_without_losing_a_frame() {
        let mut model = ::loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let (pool, worker) = pair(CAPACITY as u64 - 8);
            let producer = thread::spawn(move || {
                for n in 0..3 {
                    worker.push_reply(&frame(n)).unwrap();
                }
            });
            assert_eq!(read_replies(&pool, 3), bodies(0..3));
            producer.join().unwrap();
            assert!(!pool.pop_reply(&mut Vec::new(), 64).unwrap(), "no frame twice");
        });
    }

    /// The other way: the pool pushes jobs, the worker pops them and sleeps on its lane; with a
    /// full lane the pool waits for room (its fifth frame needs the first one's bytes).
    #[test]
    fn loom_the_worker_sleeps_on_its_jobs_and_a_full_lane_makes_the_pool_wait() {
        let mut model = ::loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let (pool, worker) = pair(CAPACITY as u64 - 8);
            for n in 0..3 {
                pool.push_job(&frame(n), &|| false).unwrap();
            }
            let producer = {
                let pool = Arc::clone(&pool);
                thread::spawn(move || {
                    for n in 3..5 {
                        pool.push_job(&frame(n), &|| false).unwrap();
                    }
                })
            };
            let mut frames = Vec::new();
            let mut body = Vec::new();
            while frames.len() < 5 {
                if worker.pop_job(&mut body, 64).unwrap() {
                    frames.push(body.clone());
                } else {
                    worker.wait_job(0, None);
                }
            }
            assert_eq!(frames, bodies(0..5));
            producer.join().unwrap();
            assert!(!worker.pop_job(&mut Vec::new(), 64).unwrap(), "no frame twice");
        });
    }

    /// The region of large frames (`large.rs`): the pool writes three large jobs through one
    /// region (its bytes here the cells of a second memory), announcing each in the job lane
    /// after it waited for the worker's count of frames taken; the worker pops each
    /// announcement, copies the region out, then stores its new count. Loom fails the model if
    /// the pool writes the region while the worker copies it (a race on its cells), and the
    /// frames must come out whole and in order, nobody left waiting.
    #[test]
    fn loom_a_region_is_written_only_once_the_last_frame_is_taken_out() {
        let mut model = ::loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let (pool, worker) = pair(0);
            let region = SharedMemory::new(0, 3);
            let theirs = region.clone();
            let producer = thread::spawn(move || {
                for n in 0..3u8 {
                    pool.wait_jobs_region(u64::from(n), &|| false).unwrap();
                    region.copy_in(0, &[n; 3]);
                    pool.push_job(&frame(n), &|| false).unwrap();
                }
            });
            let mut body = Vec::new();
            for n in 0..3u8 {
                while !worker.pop_job(&mut body, 64).unwrap() {
                    worker.wait_job(0, None);
                }
                assert_eq!(body, frame(n)[4..], "announcements in order");
                let mut copy = [0u8; 3];
                theirs.copy_out(0, &mut copy);
                assert_eq!(copy, [n; 3], "frame {n} whole");
                worker.release_jobs_region(u64::from(n) + 1);
            }
            producer.join().unwrap();
        });
    }

    /// A worker that dies after one reply: the hang-up watcher wakes the sleeping reader, which
    /// still gets the reply the worker published before (a reader left asleep fails the model).
    #[test]
    fn loom_a_hang_up_wakes_the_sleeping_reader() {
        let mut model = ::loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let (pool, worker) = pair(0);
            let watcher = {
                let pool = Arc::clone(&pool);
                thread::spawn(move || {
                    worker.push_reply(&frame(1)).unwrap();
                    // The worker is gone: its socket hung up.
                    pool.hang_up();
                })
            };
            let frames = read_replies(&pool, 2);
            watcher.join().unwrap();
            let mut rest = Vec::new();
            while pool.pop_reply(&mut rest, 64).unwrap() {}
            // Read before the hang-up was seen, or drained after it: never lost.
            assert!(frames == bodies(1..2) || rest == bodies(1..2)[0]);
        });
    }
}
