//! The worker's side: serve tasks from the channel until the pool lets go (the pool's side of a
//! worker process is `child.rs`; the two meet only in `protocol`, `ring`, `claim` and `sys`).
//!
//! One task at a time: read a frame, look the task up in the registry, run it with the worker's
//! [`Environment`], write the reply. Panics are caught and reported like on the thread backend;
//! everything else that goes wrong (the pool gone, a frame that breaks the protocol) ends the
//! worker, whose death the pool observes. While no frame arrives the worker wakes up when its
//! environment has entries due to expire, and drops them.

use std::collections::VecDeque;
use std::io::Write;
use std::ops::Range;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::id;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{setrlimit, Resource};

use super::claim;
use super::large;
use super::protocol::Marker;
use super::protocol::{self, FromWorker, ReadError, Reply, ToWorker};
use super::ring::WorkerSide;
use super::sys;
use crate::progress::Outbox;
use crate::registry::{self, Outcome};
use crate::wire_value::Encode;
use crate::{unwind, Environment};

/// How long a job waits at most for the pool to read what the job before it wrote to stderr.
const STDERR_DRAIN_LIMIT: Duration = Duration::from_millis(100);
/// How many times the worker, with no job left, yields its CPU and looks again before it sleeps
/// on the job ring's futex: the next job of a caller that dispatches one at a time comes within
/// microseconds of the reply, and is then caught without a wake-up.
const JOB_SPINS: u32 = 32;

/// The exit code of a process started as a worker that could not serve at all.
pub(crate) const EXIT_CANNOT_SERVE: i32 = 101;

/// Serves tasks for the pool described by `marker`; returns the process's exit code.
pub(crate) fn serve(marker: &Marker) -> i32 {
    // A failing standard error (its reader gone) is no reason to panic on top.
    let stop = |error: &dyn std::fmt::Display| {
        let _ = writeln!(std::io::stderr(), "parallel: worker {} stops: {error}", id());
        EXIT_CANNOT_SERVE
    };
    // What the Rust runtime does before `main`, which never runs here: SIGPIPE ignored, a stack
    // overflow reported as one.
    if let Err(error) = sys::init_like_main() {
        return stop(&error);
    }
    // Die with the pool's thread that started us, and take the processes our tasks started (our
    // process group) along. Set here, not between `fork` and `exec`, so that the pool can spawn
    // workers with `posix_spawn`: a `fork` copies the pool's page tables, which costs
    // milliseconds in a large program.
    if let Err(error) = sys::die_with_parent() {
        return stop(&format!("cannot ask to die with the pool: {error}"));
    }
    // The pool may have died before the line above (then nobody will ever send a task), or the
    // marker is not ours.
    if let Err(error) = marker.check_parent() {
        cannot_serve(&error);
        return EXIT_CANNOT_SERVE;
    }
    match prepare(marker).and_then(|(channel, ring)| serve_channel(channel, ring, marker)) {
        Ok(()) => 0,
        Err(error) => stop(&error),
    }
}

/// Says on standard error why a process started as a worker cannot serve. A failing standard
/// error (its reader gone) is no reason to panic before `main`.
pub(crate) fn cannot_serve(why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "parallel: this process was started as a worker but cannot serve: {why}"
    );
}

/// Sets the worker up: memory limit, name, channel (moved off standard input) and rings.
fn prepare(marker: &Marker) -> Result<(UnixStream, WorkerSide), String> {
    if let Some(bytes) = marker.max_memory {
        setrlimit(Resource::RLIMIT_AS, bytes, bytes)
            .map_err(|error| format!("cannot set the memory limit of {bytes} bytes: {error}"))?;
    }
    sys::name_this_process();
    // The pool always puts the channel at standard input (see `child::CHANNEL_FD`).
    if marker.fd != 0 {
        return Err(format!("the marker puts the channel at descriptor {}, not 0", marker.fd));
    }
    let channel = sys::take_channel_from_stdin()?;
    let channel = UnixStream::from(channel);
    let ring = WorkerSide::map(sys::receive_fd(&channel)?)?;
    Ok((channel, ring))
}

fn serve_channel(channel: UnixStream, ring: WorkerSide, marker: &Marker) -> Result<(), String> {
    unwind::install_hook();
    watch_for_hang_up(&channel)?;
    let encode = |message: &FromWorker<'_>| {
        let mut frame = Vec::new();
        protocol::encode_from_worker(message, &mut frame, marker.max_frame)
            .map(|()| frame)
            .map_err(|e| e.to_string())
    };
    let replies = Arc::new(Replies {
        stream: channel,
        ring,
        max_frame: marker.max_frame,
        large: Mutex::new(large::Sender::default()),
        posting: Mutex::new(Posting { job: None, frame: Vec::new() }),
    });
    let ready = FromWorker::Ready {
        version: protocol::VERSION,
        build: super::build_id(),
        pid: std::process::id(),
    };
    // The handshake goes on the socket, where the pool waits for it.
    replies.write_socket(&encode(&ready)?)?;
    let mut out = Vec::new();
    // The running job's progress sender, reused from job to job unless a thread a task left
    // behind still holds the last one (then that one keeps its job, whose messages are dropped).
    let mut outbox = Arc::new(JobOutbox { replies: Arc::clone(&replies), job: 0 });

    let mut environment = Environment::for_worker(marker.worker_id);
    // Jobs read ahead of time, with their place in the order the pool sent them.
    let mut pending: VecDeque<(u64, Queued)> = VecDeque::new();
    // The job lane's region, where the pool puts jobs too large for the ring.
    let mut region = large::Receiver::default();
    // Jobs read so far (a `Run` frame, or each entry of a `RunMany` one): the pool counts the same
    // way, and a job's claim is its number's.
    let mut runs_read = 0u64;
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut is_exit_asked = false;
    loop {
        // Take in every frame that has arrived; block only when there is nothing else to do.
        // Reading ahead is never needed to learn of a cancel: cancels are in the claims.
        loop {
            let is_idle = pending.is_empty() && !is_exit_asked;
            let mut frame = spare.pop().unwrap_or_default();
            let has_frame = replies
                .ring
                .pop_job(&mut frame, marker.max_frame)
                .map_err(|error| format!("the pool broke the job ring: {error}"))?;
            if !has_frame {
                spare.push(frame);
                if !is_idle {
                    break;
                }
                wait_for_jobs(&replies.ring, &mut environment);
                continue;
            }
            // A `Run` frame is known by its tag here and decoded when it runs: decoding it twice
            // (its task's name checked as UTF-8 each time) cost a tenth of a no-op job.
            let announced = if protocol::is_run(&frame) {
                None
            } else if let Ok(ToWorker::OnShared { len, fresh }) = protocol::decode_to_worker(&frame)
            {
                Some((len, fresh))
            } else {
                None
            };
            if let Some(announced) = announced {
                // Copied out, the region is the pool's again.
                let release = |taken| replies.ring.release_jobs_region(taken);
                let channel = &replies.stream;
                match region.receive(channel, announced, marker.max_frame, &mut frame, release) {
                    Ok(()) => {}
                    // The pool is gone or let go of us: a normal end.
                    Err(ReadError::Closed) => return Ok(()),
                    Err(error) => return Err(error.to_string()),
                }
            }
            if protocol::is_run(&frame) {
                runs_read += 1;
                pending.push_back((runs_read, Queued::Run(frame)));
                continue;
            }
            if protocol::is_run_many(&frame) {
                // Checked whole now: each of its jobs takes a number, as a `Run` frame does.
                let chunk = Chunk::new(frame).map_err(|e| e.to_string())?;
                for (index, job) in chunk.jobs.iter().enumerate() {
                    runs_read += 1;
                    let part = Queued::Part { chunk: Rc::clone(&chunk), index, job: job.0 };
                    pending.push_back((runs_read, part));
                }
                continue;
            }
            match protocol::decode_to_worker(&frame).map_err(|e| e.to_string())? {
                ToWorker::Run { .. } | ToWorker::RunMany { .. } => {
                    unreachable!("a run frame is queued above")
                }
                ToWorker::Exit => is_exit_asked = true,
                ToWorker::OnShared { .. } => {
                    return Err("the pool announced a region's frame in a region".to_owned())
                }
            }
            spare.push(frame);
        }
        let Some((seq, queued)) = pending.pop_front() else {
            if is_exit_asked {
                return Ok(());
            }
            continue;
        };
        let (job, task, args) = match &queued {
            Queued::Run(frame) => {
                let ToWorker::Run { job, task, args } =
                    protocol::decode_to_worker(frame).map_err(|e| e.to_string())?
                else {
                    unreachable!("only run frames are queued");
                };
                (job, task, args)
            }
            Queued::Part { chunk, index, job } => (*job, chunk.task(), chunk.args(*index)),
        };
        let claim = claim::slot(replies.ring.claims(), seq);
        let is_started = claim::start(claim, seq).map_err(|found| {
            format!("job {job} is the pool's job {seq} here, but its claim says {found:?}")
        })?;
        if !is_started {
            let done = FromWorker::Done { job, reply: Reply::Skipped };
            replies.send(&done, &mut out)?;
        } else {
            // What the job before wrote to stderr is read before the count moves: the pool's
            // follower blames each chunk on the job counted when it read it.
            sys::wait_stderr_drained(STDERR_DRAIN_LIMIT);
            replies.ring.started().fetch_add(1, Ordering::SeqCst);
            unwind::drop_values(|| environment.purge_expired());
            replies.open_progress(job);
            match Arc::get_mut(&mut outbox) {
                Some(only) => only.job = job,
                None => outbox = Arc::new(JobOutbox { replies: Arc::clone(&replies), job }),
            }
            let sender = Arc::clone(&outbox) as Arc<dyn Outbox>;
            let ran = run(job, task, args, &mut environment, &mut out, marker.max_frame, sender);
            // Its messages are all out, before its reply; later ones (from threads it left
            // running) are dropped.
            replies.close_progress();
            let owned = match ran {
                // The value's frame is already built in `out`.
                Ran::Value => match protocol::finish_frame(&mut out, marker.max_frame) {
                    Ok(()) => None,
                    Err(error) => Some(Owned::Unserializable {
                        is_error: false,
                        message: format!("the value is over the frame limit: {error}"),
                    }),
                },
                Ran::Reply(owned) => Some(owned),
                Ran::Panicked(report) => {
                    encode_panic(job, &report, &mut out, marker.max_frame)?;
                    None
                }
            };
            match owned {
                None => replies.send_frame(&out)?,
                Some(owned) => {
                    let done = FromWorker::Done { job, reply: owned.as_reply() };
                    replies.send(&done, &mut out)?;
                }
            }
            if !claim::finish(claim, seq) {
                // The pool stopped this job while it ran and is killing this process for it: no
                // other job may start before the signal lands, or it would die in this one's place.
                loop {
                    std::thread::park();
                }
            }
        }
        match queued {
            Queued::Run(frame) => spare.push(frame),
            // The chunk's last job gives its frame back.
            Queued::Part { chunk, .. } => spare.extend(Rc::into_inner(chunk).map(|c| c.frame)),
        }
        spare.truncate(16);
    }
}

/// A job read ahead, waiting for its turn.
enum Queued {
    /// A `Run` frame, decoded when it runs.
    Run(Vec<u8>),
    /// The job at `index` of a `RunMany` frame.
    Part { chunk: Rc<Chunk>, index: usize, job: u64 },
}

/// A `RunMany` frame, checked, with where each of its jobs' arguments lie.
struct Chunk {
    frame: Vec<u8>,
    /// Where the task's name lies in `frame`.
    task: Range<usize>,
    /// Each job's number and where its arguments lie in `frame`.
    jobs: Vec<(u64, Range<usize>)>,
}

impl Chunk {
    fn new(frame: Vec<u8>) -> Result<Rc<Chunk>, protocol::ProtocolError> {
        let ToWorker::RunMany { task, count, entries } = protocol::decode_to_worker(&frame)? else {
            unreachable!("only a run-many frame is made a chunk");
        };
        let at = |part: &[u8]| part.as_ptr() as usize - frame.as_ptr() as usize;
        let range = |part: &[u8]| at(part)..at(part) + part.len();
        let task = range(task.as_bytes());
        let mut jobs = Vec::with_capacity(count);
        jobs.extend(protocol::run_entries(entries).map(|(job, args)| (job, range(args))));
        Ok(Rc::new(Chunk { frame, task, jobs }))
    }

    fn task(&self) -> &str {
        // Checked as UTF-8 when the frame was decoded: a failure here is impossible, and an
        // empty name would only find no task.
        std::str::from_utf8(&self.frame[self.task.clone()]).unwrap_or_default()
    }

    fn args(&self, index: usize) -> &[u8] {
        self.jobs.get(index).map_or(&[], |(_, args)| &self.frame[args.clone()])
    }
}

/// Encodes the reply of a job that panicked, cutting the message and backtrace to fit in a frame
/// (saying so in the message): a panic is reported as one, however long its message.
fn encode_panic(
    job: u64,
    report: &unwind::PanicReport,
    out: &mut Vec<u8>,
    max_frame: usize,
) -> Result<(), String> {
    let encode = |message: &str, backtrace: Option<&str>, out: &mut Vec<u8>| {
        let reply = Reply::Panicked { message, location: report.location.as_deref(), backtrace };
        protocol::encode_from_worker(&FromWorker::Done { job, reply }, out, max_frame)
    };
    if encode(&report.message, report.backtrace.as_deref(), out).is_ok() {
        return Ok(());
    }
    // What the frame holds besides the message: header, job, location, backtrace length.
    let overhead = 64 + report.location.as_ref().map_or(0, String::len);
    let room = max_frame.saturating_sub(overhead).saturating_sub(200);
    let mut cut = room.min(report.message.len());
    while !report.message.is_char_boundary(cut) {
        cut -= 1;
    }
    let message = format!(
        "{}… (cut to {cut} of {} bytes to fit the message limit of {max_frame} bytes; the backtrace \
         is left out)",
        &report.message[..cut],
        report.message.len()
    );
    encode(&message, None, out).map_err(|error| error.to_string())
}

/// The worker's replies, each out of this process before the worker starts its next job, and
/// the running job's progress messages, each out of this process before `send` returns.
///
/// Batching replies in the worker would be cheaper still, but a reply still in this process when
/// the next job crashes it is lost: the pool would blame the job that finished and send the job
/// that crashed to another worker, to run twice. A reply in the shared ring (or in a memory file
/// on the socket) survives the worker.
struct Replies {
    stream: UnixStream,
    ring: WorkerSide,
    max_frame: usize,
    /// The reply lane's region for large replies (one sender at a time: see `posting`).
    large: Mutex<large::Sender>,
    /// Which job's progress messages are taken now. Held while one is sent, so that messages
    /// sent from several threads go out one at a time, and none after the job's run ended: the
    /// main thread sends replies only while no job's messages are taken.
    posting: Mutex<Posting>,
}

struct Posting {
    /// The job that runs now; `None` between runs.
    job: Option<u64>,
    /// Where a message's frame is built.
    frame: Vec<u8>,
}

/// The progress sender of one job: its messages go into the reply stream while it runs.
struct JobOutbox {
    replies: Arc<Replies>,
    job: u64,
}

impl Outbox for JobOutbox {
    fn post(&self, message: &dyn Encode) {
        let mut posting = self.replies.posting.lock().unwrap_or_else(PoisonError::into_inner);
        if posting.job != Some(self.job) {
            return;
        }
        let Posting { frame, .. } = &mut *posting;
        protocol::begin_progress(frame, self.job);
        let max = self.replies.max_frame;
        let encoded = protocol::encode_value(message, frame, max)
            .and_then(|()| protocol::finish_frame(frame, max).map_err(|e| e.to_string()));
        let sent = encoded.and_then(|()| self.replies.send_frame(frame));
        if let Err(error) = sent {
            tracing::warn!(job = self.job, %error, "a progress message is dropped");
        }
    }
}

impl Replies {
    /// Job `job` starts: its progress messages are taken.
    fn open_progress(&self, job: u64) {
        self.posting.lock().unwrap_or_else(PoisonError::into_inner).job = Some(job);
    }

    /// The running job's run ended: its later messages are dropped. Waits for a message being
    /// sent to be out.
    fn close_progress(&self) {
        self.posting.lock().unwrap_or_else(PoisonError::into_inner).job = None;
    }

    /// Encodes `message` into `out` and sends it.
    fn send(&self, message: &FromWorker<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        protocol::encode_from_worker(message, out, self.max_frame).map_err(|e| e.to_string())?;
        self.send_frame(out)
    }

    /// Sends a finished frame: through the reply ring if it fits, else in a memory file of its
    /// own, sent on the socket and then announced in the ring (see [`large`]); the ring wakes
    /// the pool's reader if it sleeps.
    fn send_frame(&self, frame: &[u8]) -> Result<(), String> {
        let push = |frame: &[u8]| {
            self.ring.push_reply(frame).map_err(|error| format!("cannot reply: {error}"))
        };
        if self.ring.fits(frame.len()) {
            return push(frame);
        }
        // Once the pool has taken the last large reply out of the region, the frame goes there,
        // and a new region's descriptor on the socket before its announcement.
        let wait = |sent| {
            let waited = self.ring.wait_replies_region(sent);
            waited.map_err(|error| std::io::Error::other(error.to_string()))
        };
        let (len, fresh) = self
            .large
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(&self.stream, frame, wait)
            .map_err(|error| format!("cannot send a large reply: {error}"))?;
        let mut announcement = Vec::with_capacity(16);
        let message = FromWorker::OnShared { len, fresh };
        protocol::encode_from_worker(&message, &mut announcement, usize::MAX)
            .map_err(|error| error.to_string())?;
        push(&announcement)
    }

    fn write_socket(&self, frame: &[u8]) -> Result<(), String> {
        (&self.stream)
            .write_all(frame)
            .map_err(|error| format!("cannot write to the pool: {error}"))
    }
}

/// Ends the worker as soon as the pool hangs up, even in the middle of a long task: a thread
/// waits for the channel's hang-up (`POLLRDHUP`, which does not consume input) and kills the
/// worker's process group, the worker and the processes its tasks started. The death signal
/// covers the pool's death; this covers a pool that is gone without its process dying (its slot
/// thread ended, its channel closed), and a task that took over the death signal.
fn watch_for_hang_up(channel: &UnixStream) -> Result<(), String> {
    let channel = channel.try_clone().map_err(|error| error.to_string())?;
    std::thread::Builder::new()
        .name("parallel-worker-watch".to_owned())
        .spawn(move || loop {
            let hang_up = PollFlags::from_bits_retain(nix::libc::POLLRDHUP);
            let mut fds = [PollFd::new(channel.as_fd(), hang_up)];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => {}
                // Hang-up, error, or a failing poll: the channel is no use any more.
                _ => {
                    sys::kill_own_group();
                    // Not reached: the line above killed this process.
                    std::process::exit(0)
                }
            }
        })
        .map(drop)
        .map_err(|error| format!("cannot start the hang-up watcher: {error}"))
}

/// With no job to run: spins a little, then sleeps on the job ring until the pool pushes a job
/// (or may have), purging expired environment entries when they are due. The pool's death ends
/// the process meanwhile (the death signal, the hang-up watcher), so no wait here watches it.
fn wait_for_jobs(ring: &WorkerSide, environment: &mut Environment) {
    let due = environment.next_expiry();
    let timeout =
        due.map(|at| at.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
    ring.wait_job(JOB_SPINS, timeout);
    if due.is_some_and(|at| at <= Instant::now()) {
        unwind::drop_values(|| environment.purge_expired());
    }
}

/// What running one task produced.
enum Ran {
    /// Its output or error, serialized into the reply frame under construction.
    Value,
    Reply(Owned),
    Panicked(unwind::PanicReport),
}

/// A reply that carries no serialized value.
#[derive(Clone)]
enum Owned {
    BadArguments(String),
    UnknownTask,
    Unserializable { is_error: bool, message: String },
}

impl Owned {
    fn as_reply(&self) -> Reply<'_> {
        match self {
            Owned::BadArguments(message) => Reply::BadArguments(message),
            Owned::UnknownTask => Reply::UnknownTask,
            Owned::Unserializable { is_error, message } => {
                Reply::Unserializable { is_error: *is_error, message }
            }
        }
    }
}

/// Runs job `job`, its progress messages sent through `outbox`; an output or error is serialized
/// straight into `out` after its frame header.
fn run(
    job: u64,
    task: &str,
    args: &[u8],
    environment: &mut Environment,
    out: &mut Vec<u8>,
    max_frame: usize,
    outbox: Arc<dyn Outbox>,
) -> Ran {
    let Some(registration) = registry::lookup(task) else {
        return Ran::Reply(Owned::UnknownTask);
    };
    let caught = unwind::catch(|| {
        let outcome = registration.run(environment, args, Some(outbox));
        // Serializing runs user code too (`Serialize` impls), so it stays inside the catch.
        let (value, is_error) = match outcome {
            Outcome::Output(output) => (output, false),
            Outcome::Failed(error) => (error, true),
            Outcome::BadInput(message) => return Ran::Reply(Owned::BadArguments(message)),
        };
        protocol::begin_value_reply(out, job, is_error);
        match protocol::encode_value(&*value, out, max_frame) {
            Ok(()) => Ran::Value,
            Err(message) => Ran::Reply(Owned::Unserializable { is_error, message }),
        }
    });
    caught.unwrap_or_else(Ran::Panicked)
}
