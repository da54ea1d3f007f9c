//! A worker's reply reader: the thread that resolves jobs from the replies, in the order sent,
//! through the shared reply ring and the socket, and tells the slot when the worker's channel
//! ends.

use std::io::BufReader;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{pace, Ended, Shared, State, READER_BACKSTOP, READER_SPINS};
use crate::process::protocol::{self, FromWorker, ReadError, Reply};
use crate::process::ring::PoolSide;
use crate::process::sys;
use crate::progress::Decode;

/// What a worker's replies come through.
pub(super) struct Channel {
    pub(super) socket: BufReader<UnixStream>,
    pub(super) ring: Arc<PoolSide>,
    pub(super) max_frame: usize,
}

impl Channel {
    /// Reads the next frame from the socket (announced in the ring by an `OnSocket`).
    fn read_socket<'b>(&mut self, buffer: &'b mut Vec<u8>) -> Result<&'b [u8], ReadError> {
        protocol::read_frame(&mut self.socket, buffer, self.max_frame)
    }
}

/// Resolves jobs from a worker's replies until its channel ends, then tells the slot.
///
/// Replies come through the shared reply ring (see [`super::ring`]), on whose futex this thread
/// sleeps when it is empty; the socket brings the replies too large for the ring. When the
/// worker hangs up (it died or left; the stderr follower sees it and wakes this thread), the
/// replies the worker put in the ring before are still resolved.
pub(super) fn read_replies(shared: &Shared, id: usize, pid: u32, mut channel: Channel) {
    let mut frame = Vec::new();
    let mut large = Vec::new();
    let mut has_ended = false;
    // Where the running job's progress messages go, looked up at its first message.
    let mut progress: Option<(u64, Arc<dyn Decode>)> = None;
    let ended = loop {
        let body = match channel.ring.pop_reply(&mut frame, channel.max_frame) {
            Ok(true) => &frame[..],
            Ok(false) if has_ended => break Ended::Closed,
            // Resolve what the ring still holds (looked at once more above), then report the end.
            Ok(false) if channel.ring.has_hung_up() => {
                has_ended = true;
                continue;
            }
            Ok(false) => {
                // A reply due within microseconds (a worker busy with short tasks, or a round
                // trip under way) is caught by the spins, without the worker waking this thread
                // on another CPU.
                let timed_out = channel.ring.wait_reply(READER_SPINS, Some(READER_BACKSTOP));
                if timed_out && sys::has_hung_up(channel.socket.get_ref().as_fd()) {
                    channel.ring.hang_up();
                }
                continue;
            }
            Err(error) => break Ended::Broke(format!("the worker broke the protocol: {error}")),
        };
        let decoded = match protocol::decode_from_worker(body) {
            Ok(FromWorker::OnSocket) => match channel.read_socket(&mut large) {
                Ok(body) => protocol::decode_from_worker(body),
                Err(ReadError::Protocol(error)) => {
                    break Ended::Broke(format!("the worker broke the protocol: {error}"))
                }
                Err(ReadError::Closed | ReadError::Io(_)) => break Ended::Closed,
            },
            other => other,
        };
        let (job, reply) = match decoded {
            Ok(FromWorker::Done { job, reply }) => (job, reply),
            Ok(FromWorker::Progress { job, message }) => {
                let sink = match &progress {
                    Some((running, sink)) if *running == job => Arc::clone(sink),
                    _ => match progress_of(shared, id, job) {
                        Ok(sink) => {
                            progress = Some((job, Arc::clone(&sink)));
                            sink
                        }
                        Err(problem) => break Ended::Broke(problem),
                    },
                };
                // Decoded out of the pool's lock: a message's `Deserialize` is user code.
                sink.decode(message);
                continue;
            }
            Ok(other) => break Ended::Broke(format!("the worker sent {other:?} out of turn")),
            Err(error) => break Ended::Broke(format!("the worker broke the protocol: {error}")),
        };
        // The next job's messages go to the next job.
        progress = None;
        if let Err(problem) = resolve(shared, id, pid, job, reply) {
            break Ended::Broke(problem);
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
    }
    Ok(())
}

/// Whether a slot other than `id` has jobs waiting behind the one its worker runs.
fn others_wait(state: &State, id: usize) -> bool {
    state.slots.iter().enumerate().any(|(other, slot)| other != id && slot.in_flight.len() > 1)
}
