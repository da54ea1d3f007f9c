//! A worker's reply reader: the thread that resolves jobs from the replies, in the order sent,
//! through the shared reply ring and the socket, and tells the slot when the worker's channel
//! ends.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{pace, Ended, Shared, State, READER_BACKSTOP, READER_SPINS};
use crate::process::large;
use crate::process::lead::Lead;
use crate::process::protocol::{self, FromWorker, ReadError, Reply};
use crate::process::ring::PoolSide;
use crate::process::sys;
use crate::progress::Decode;

/// What a worker's replies come through.
pub(super) struct Channel {
    /// Where the memory files of large replies come (see [`large`]), and the hang-up.
    pub(super) socket: UnixStream,
    pub(super) ring: Arc<PoolSide>,
    pub(super) max_frame: usize,
}

/// The reading of a worker's replies, by its reader thread or by a caller in its place.
pub(super) type ReplyLead = Lead<Consumer>;

/// Everything it takes to read a worker's replies, held by whoever reads them (see
/// [`super::super::lead`]): the reader thread, or a caller waiting for the only job in flight.
pub(super) struct Consumer {
    channel: Channel,
    frame: Vec<u8>,
    /// The reply lane's region for large replies, and the buffer they are copied into.
    region: large::Receiver,
    large: Vec<u8>,
    /// The worker hung up: the lane is looked at once more, then the channel has ended.
    has_ended: bool,
    /// Where the running job's progress messages go, looked up at its first message.
    progress: Option<(u64, Arc<dyn Decode>)>,
    /// How the channel ended, found by a caller that read in the reader's place: the reader
    /// reports it.
    ended: Option<Ended>,
    /// The reader reported the end: nobody reads any more.
    is_over: bool,
}

impl Consumer {
    pub(super) fn new(channel: Channel) -> Consumer {
        Consumer {
            channel,
            frame: Vec::new(),
            region: large::Receiver::default(),
            large: Vec::new(),
            has_ended: false,
            progress: None,
            ended: None,
            is_over: false,
        }
    }

    /// Whether a caller may read in the reader's place: the channel has not ended.
    pub(super) fn is_open(&self) -> bool {
        !self.is_over && self.ended.is_none() && !self.has_ended
    }

    /// After a wait that timed out: tells the ring if the worker's end of the socket hung up (the
    /// stderr follower, which does it otherwise, may be missing).
    pub(super) fn look_for_hang_up(&self) {
        if sys::has_hung_up(self.channel.socket.as_fd()) {
            self.channel.ring.hang_up();
        }
    }

    /// A caller found the channel's end: the reader reports it.
    pub(super) fn hand_over(&mut self, ended: Ended) {
        self.ended = Some(ended);
    }
}

/// What one look at the replies did.
pub(super) enum Step {
    /// Read a frame (resolved a job, or took a progress message), or saw the hang-up: look again.
    Read,
    /// Nothing to read now.
    Empty,
    /// The channel ended, or broke.
    End(Ended),
}

/// Reads the next frame of slot `id`'s worker (pid `pid`), if any, and resolves its job, or
/// takes its progress message.
pub(super) fn step(consumer: &mut Consumer, shared: &Shared, id: usize, pid: u32) -> Step {
    let Consumer { channel, frame, region, large, has_ended, progress, .. } = consumer;
    let body = match channel.ring.pop_reply(frame, channel.max_frame) {
        Ok(true) => &frame[..],
        Ok(false) if *has_ended => return Step::End(Ended::Closed),
        // Resolve what the ring still holds (looked at once more), then report the end.
        Ok(false) if channel.ring.has_hung_up() => {
            *has_ended = true;
            return Step::Read;
        }
        Ok(false) => return Step::Empty,
        Err(error) => {
            return Step::End(Ended::Broke(format!("the worker broke the protocol: {error}")))
        }
    };
    let decoded = match protocol::decode_from_worker(body) {
        Ok(FromWorker::OnShared { len, fresh }) => {
            // Copied out, the region is the worker's again.
            let release = |taken| channel.ring.release_replies_region(taken);
            let socket = &channel.socket;
            match region.receive(socket, (len, fresh), channel.max_frame, large, release) {
                Ok(()) => protocol::decode_from_worker(large),
                Err(ReadError::Protocol(error)) => {
                    return Step::End(Ended::Broke(format!(
                        "the worker broke the protocol: {error}"
                    )))
                }
                Err(ReadError::Closed | ReadError::Io(_)) => return Step::End(Ended::Closed),
            }
        }
        other => other,
    };
    let (job, reply) = match decoded {
        Ok(FromWorker::Done { job, reply }) => (job, reply),
        Ok(FromWorker::Progress { job, message }) => {
            let sink = match &*progress {
                Some((running, sink)) if *running == job => Arc::clone(sink),
                _ => match progress_of(shared, id, job) {
                    Ok(sink) => {
                        *progress = Some((job, Arc::clone(&sink)));
                        sink
                    }
                    Err(problem) => return Step::End(Ended::Broke(problem)),
                },
            };
            // Decoded out of the pool's lock: a message's `Deserialize` is user code.
            sink.decode(message);
            return Step::Read;
        }
        Ok(other) => {
            return Step::End(Ended::Broke(format!("the worker sent {other:?} out of turn")))
        }
        Err(error) => {
            return Step::End(Ended::Broke(format!("the worker broke the protocol: {error}")))
        }
    };
    // The next job's messages go to the next job.
    *progress = None;
    match resolve(shared, id, pid, job, reply) {
        Ok(()) => Step::Read,
        Err(problem) => Step::End(Ended::Broke(problem)),
    }
}

/// Resolves jobs from a worker's replies until its channel ends, then tells the slot.
///
/// Replies come through the shared reply ring (see [`super::ring`]), on whose futex this thread
/// sleeps when it is empty; memory files passed on the socket bring the replies too large for
/// it. When the worker hangs up (it died or left; the stderr follower sees it and wakes this thread), the
/// replies the worker put in the ring before are still resolved. While a caller waits for the
/// only job in flight, the caller may read in this thread's place (see [`super::super::lead`]):
/// this thread then waits for it to hand back.
pub(super) fn read_replies(shared: &Shared, id: usize, pid: u32, lead: &ReplyLead) {
    let ended = loop {
        let mut consumer = lead.lock();
        // A caller that read in this thread's place found the end.
        if let Some(ended) = consumer.ended.take() {
            consumer.is_over = true;
            break ended;
        }
        match step(&mut consumer, shared, id, pid) {
            Step::Read => continue,
            Step::End(ended) => {
                consumer.is_over = true;
                break ended;
            }
            Step::Empty => {}
        }
        drop(consumer);
        // A reply due within microseconds (a worker busy with short tasks, or a round trip under
        // way) is caught by the spins, without the worker waking this thread on another CPU.
        let timed_out = lead.reader_wait(READER_SPINS, Some(READER_BACKSTOP));
        if timed_out {
            lead.lock().look_for_hang_up();
        }
    };
    let mut state = shared.lock();
    state.slots[id].ended = Some(ended);
    drop(state);
    shared.wake[id].notify_one();
}

/// Where the progress messages of job `job`, which must be the first in flight on slot `id` (the
/// one its worker runs), go.
fn progress_of(shared: &Shared, id: usize, job: u64) -> Result<Arc<dyn Decode>, String> {
    let state = shared.lock();
    match state.slots[id].in_flight.front() {
        Some(first) if first.job == job => match &first.sent {
            Some(sent) => Ok(sent.request.progress()),
            None => Err(format!("the worker sent progress for job {job}, which it skipped")),
        },
        _ => Err(format!("the worker sent progress for job {job}, which it was not running")),
    }
}

/// Resolves job `job`, which must be the first in flight on slot `id`, from its reply.
fn resolve(shared: &Shared, id: usize, pid: u32, job: u64, reply: Reply<'_>) -> Result<(), String> {
    let (flight, should_wake) = {
        let mut state = shared.lock();
        let slot = &mut state.slots[id];
        match slot.in_flight.front() {
            Some(first) if first.job == job => {}
            _ => return Err(format!("the worker answered job {job}, which it was not running")),
        }
        let flight = slot.in_flight.pop_front();
        let now = Instant::now();
        if let Some(flight) = flight.as_ref().filter(|flight| flight.sent.is_some()) {
            let average =
                pace::next_average(slot.task_nanos(), flight.sent_at, slot.last_reply, now);
            slot.task_nanos.store(average, Ordering::Relaxed);
        }
        slot.last_reply = Some(now);
        // With nothing in flight any more, the slot may have to retire its worker, exit, or take
        // back jobs that wait behind a long task on another worker.
        let left = slot.in_flight.len();
        let window = slot.window();
        let has_work = !state.queue.is_empty();
        // Whether jobs wait behind a running one elsewhere is looked up only when this slot has
        // just run dry: a scan of every slot on every reply would cost the busy path.
        let must_look = state.is_stopping
            || shared.settings.max_tasks_per_worker.is_some()
            || (left == 0 && others_wait(&state, id));
        (flight, pace::wakes_after_reply(left, window, has_work, must_look))
    };
    if should_wake {
        shared.wake[id].notify_one();
    }
    // A job taken back for another worker: this one skipped it.
    if let Some(sent) = flight.and_then(|flight| flight.sent) {
        if !sent.span.is_disabled() {
            sent.span.record("pid", pid);
            sent.span.record("outcome", reply.name());
            sent.span.record(
                "duration_us",
                sent.stop.entered_at().map_or(0, |at| at.elapsed().as_micros() as u64),
            );
        }
        sent.request.finish(reply);
        // Its frame's buffer, if large, serves the next large job.
        shared.keep_spare_frame(sent.frame);
    }
    Ok(())
}

/// Whether a slot other than `id` has jobs waiting behind the one its worker runs.
fn others_wait(state: &State, id: usize) -> bool {
    state.slots.iter().enumerate().any(|(other, slot)| other != id && slot.in_flight.len() > 1)
}
