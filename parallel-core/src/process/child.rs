//! One worker process seen from the pool: starting it, talking to it, ending and reaping it.
//!
//! The worker is this program's own executable (`/proc/self/exe`, the very file this process
//! runs even if it was replaced on disk since), started with the entry marker as the leader of a
//! process group of its own, which the processes its tasks start join. It gets its end of a
//! socket pair as descriptor 0 and dies with the thread that started it (`PR_SET_PDEATHSIG`),
//! which is the pool's long-lived slot thread, and with its channel's end-of-file, taking its
//! group along. Its standard output is ours; its standard error goes through a thread that copies
//! it to ours and keeps a bounded tail for the report of a death. Ending a worker ends its group.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::large;
use super::protocol::{self, FromWorker, ReadError, ToWorker};
use super::protocol::{Marker, MARKER};
use super::ring::{PoolSide, PushError};
use super::sys;
use super::Settings;

/// The descriptor number the worker finds its channel at: its standard input, the one descriptor
/// `Command` hands over without a `pre_exec` hook (which would make it `fork` a copy of the pool's
/// whole address space instead of spawning with `posix_spawn`). The worker moves the channel
/// away and puts `/dev/null` in its place before any task runs.
const CHANNEL_FD: i32 = 0;
/// How many lines of a worker's standard error a death report keeps, at most.
const STDERR_LINES: usize = 40;
/// How many bytes of a worker's standard error the pool keeps, at most: the rest is copied
/// through and dropped as it arrives.
const STDERR_BYTES: usize = 64 << 10;
/// How much of a line the follower looks at for the messages it recognizes.
const PATTERN_LINE: usize = 512;
/// How much a follower still copies once its worker is reaped: what is in the pipe then, unless
/// a process that left the worker's group keeps writing.
const DRAIN_LIMIT: usize = 1 << 20;
/// How long a reap waits for the follower to finish (it only waits longer if our own standard
/// error blocks).
const FOLLOWER_GRACE: Duration = Duration::from_secs(1);
/// How long a new worker may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running worker process and the pool's end of its channel.
pub(crate) struct WorkerProcess {
    child: Child,
    pub(crate) pid: u32,
    /// The reading half, until a reader thread takes it. Unbuffered: the socket carries the
    /// descriptors of the regions of large frames (see [`large`]), which a read ahead would
    /// drop.
    reader: Option<UnixStream>,
    /// Where jobs are sent, shared by the slot thread and callers' threads that send jobs.
    pub(crate) writer: Arc<Mutex<Jobs>>,
    /// The rings in shared memory (jobs one way, replies the other), the claims of its jobs, and
    /// how many jobs it has started (for the stderr follower to tell one job's output from the
    /// next).
    pub(crate) ring: Arc<PoolSide>,
    stderr: StderrTail,
    /// Held while signalling, and set once reaped: a reaped pid may belong to another process.
    is_reaped: Arc<Mutex<bool>>,
}

/// The sending half of a worker's channel: jobs go into the job ring, and a frame too large for
/// it goes into the lane's region and is announced in the ring, so that the worker takes frames
/// in order (see [`large`]). One sender at a time (the ring has one producer): it sits behind a
/// mutex.
pub(crate) struct Jobs {
    socket: UnixStream,
    ring: Arc<PoolSide>,
    /// The job lane's region for large frames.
    large: large::Sender,
    /// Whole frames staged by [`Jobs::stage`], in order, for [`Jobs::flush`] (empty between
    /// batches; its capacity is kept).
    batch: Vec<u8>,
}

impl Jobs {
    fn new(socket: UnixStream, ring: Arc<PoolSide>) -> Jobs {
        Jobs { socket, ring, large: large::Sender::default(), batch: Vec::new() }
    }

    /// Whether a frame of `len` bytes goes through the job ring (else through the lane's region).
    pub(crate) fn fits_ring(len: usize) -> bool {
        PoolSide::fits_lane(len)
    }

    /// Copies whole frame `frame`, which [`Jobs::fits_ring`], after the frames staged so far.
    /// Nothing reaches the worker before [`Jobs::flush`].
    pub(crate) fn stage(&mut self, frame: &[u8]) {
        debug_assert!(Self::fits_ring(frame.len()));
        self.batch.extend_from_slice(frame);
    }

    /// How many bytes are staged: where a large frame sent by [`Jobs::flush`] goes among them.
    pub(crate) fn staged(&self) -> usize {
        self.batch.len()
    }

    /// Sends the staged frames, with each of `large` (frames too large for the ring) at its
    /// staged position, in order: the staged ones a run of up to a quarter ring at a time, each
    /// run one copy into the job ring, one publication and at most one wake-up of the worker,
    /// whichever jobs it holds. Waits while the ring is full, as [`Jobs::send`] does. The
    /// staged frames are dropped whether or not they were sent (a failure means the worker is
    /// gone or broke the ring).
    pub(crate) fn flush(
        &mut self,
        large: Vec<(usize, Arc<Vec<u8>>)>,
        is_gone: &dyn Fn() -> bool,
    ) -> io::Result<()> {
        let batch = std::mem::take(&mut self.batch);
        let sent = self.send_staged(&batch, large, is_gone);
        self.batch = batch;
        self.batch.clear();
        // A batch of megabytes of small frames leaves no buffer of that size behind.
        self.batch.shrink_to(BATCH_KEPT);
        sent
    }

    fn send_staged(
        &mut self,
        batch: &[u8],
        large: Vec<(usize, Arc<Vec<u8>>)>,
        is_gone: &dyn Fn() -> bool,
    ) -> io::Result<()> {
        let mut at = 0;
        for (until, frame) in large {
            self.send_run(&batch[at..until], is_gone)?;
            self.send(&frame, is_gone)?;
            at = until;
        }
        self.send_run(&batch[at..], is_gone)
    }

    /// Sends `frames`, whole frames that each fit the ring, in runs that fit it.
    fn send_run(&mut self, mut frames: &[u8], is_gone: &dyn Fn() -> bool) -> io::Result<()> {
        while !frames.is_empty() {
            let mut run = 0;
            // Our own frames: each starts with its body's length.
            while let Some(header) = frames.get(run..run + 4) {
                let header: [u8; 4] = header.try_into().expect("a slice of four bytes");
                let next = run + 4 + u32::from_le_bytes(header) as usize;
                if run > 0 && !Self::fits_ring(next) {
                    break;
                }
                run = next;
            }
            let run = run.min(frames.len());
            self.send(&frames[..run], is_gone)?;
            frames = &frames[run..];
        }
        Ok(())
    }

    /// Sends frame `frame`, waiting while the job ring is full until the worker takes frames,
    /// hangs up, or `is_gone` says to give up.
    pub(crate) fn send(&mut self, frame: &[u8], is_gone: &dyn Fn() -> bool) -> io::Result<()> {
        let Jobs { socket, ring, large, .. } = self;
        if !ring.fits(frame.len()) {
            // Once the worker has taken the last large job out of the region (or the worker
            // hangs up, or `is_gone`), the frame goes there, and a new region's descriptor on
            // the socket before its announcement.
            let wait = |sent| ring.wait_jobs_region(sent, is_gone).map_err(io_error);
            let (len, fresh) = large.send(socket, frame, wait)?;
            let mut announcement = Vec::with_capacity(16);
            let message = ToWorker::OnShared { len, fresh };
            // An announcement is 14 bytes: it fits any limit.
            let _ = protocol::encode_to_worker(&message, &mut announcement, usize::MAX);
            return ring.push_job(&announcement, is_gone).map_err(io_error);
        }
        ring.push_job(frame, is_gone).map_err(io_error)
    }
}

/// A failed push as the error of a write to the worker.
fn io_error(error: PushError) -> io::Error {
    match error {
        PushError::Gone => io::Error::new(io::ErrorKind::BrokenPipe, error.to_string()),
        PushError::Broken => io::Error::new(io::ErrorKind::InvalidData, error.to_string()),
    }
}

/// The capacity of the staging buffer kept between batches: 64 no-op jobs need about 4 KiB.
const BATCH_KEPT: usize = 64 << 10;

/// Lets another thread kill a worker safely while the slot thread waits on it.
#[derive(Clone)]
pub(crate) struct KillSwitch {
    pid: u32,
    is_reaped: Arc<Mutex<bool>>,
}

impl KillSwitch {
    /// SIGKILLs the worker and its process group (what its tasks started), unless the worker is
    /// already reaped: its pid, which is the group's id, is then no longer ours.
    pub(crate) fn kill(&self) {
        let is_reaped = lock(&self.is_reaped);
        if !*is_reaped {
            sys::kill_process_group(self.pid);
        }
    }
}

/// How a worker ended.
#[derive(Debug, Clone)]
pub(crate) struct Death {
    pub(crate) pid: u32,
    pub(crate) reason: String,
    pub(crate) stderr_tail: String,
    /// Whether the worker reported a failed allocation (Rust's `handle_alloc_error` message) on
    /// its standard error: with a memory limit set, that is the limit being hit.
    pub(crate) is_out_of_memory: bool,
    /// Whether the worker reported a stack overflow (`thread '…' has overflowed its stack`);
    /// `reason` says so already.
    #[allow(dead_code, reason = "for the slot, which may trace it")]
    pub(crate) is_stack_overflow: bool,
}

/// Why a worker could not be started.
#[derive(Debug)]
pub(crate) struct StartError {
    pub(crate) message: String,
    pub(crate) death: Option<Death>,
}

impl WorkerProcess {
    /// Starts a worker and waits for its handshake.
    pub(crate) fn start(
        settings: &Settings,
        worker_id: usize,
        build: u64,
    ) -> Result<WorkerProcess, StartError> {
        let (ours, theirs) = UnixStream::pair().map_err(|error| StartError {
            message: format!("cannot create a socket pair: {error}"),
            death: None,
        })?;
        let (ring, ring_fd) =
            PoolSide::create().map_err(|message| StartError { message, death: None })?;
        let marker = Marker {
            fd: CHANNEL_FD,
            parent: std::process::id(),
            worker_id,
            max_frame: settings.max_frame,
            max_memory: settings.max_memory_per_worker,
        };
        let mut command = Command::new("/proc/self/exe");
        // Operators see which program and which slot a worker is, not `/proc/self/exe`.
        command
            .arg0(format!("{} [parallel worker {}]", sys::program_name(), worker_id))
            .env(MARKER, marker.to_value())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            // A group of its own: stopping the worker stops what its tasks started, and a
            // Ctrl-C in our terminal reaches us alone. `posix_spawn` can do this.
            .process_group(0);
        let mut child = command.spawn().map_err(|error| StartError {
            message: format!("cannot start {}: {error}", describe_exe()),
            death: None,
        })?;
        // The command holds our copy of the worker's end of the channel: close it, or the
        // channel would never report the worker's exit.
        drop(command);
        // The worker's first read on its channel takes the ring's memory file.
        let sent = sys::send_fd(&ours, &ring_fd);
        drop(ring_fd);
        if let Err(error) = sent {
            // The worker is then stuck before its handshake: end it (and its group, while its
            // pid is still ours).
            sys::kill_process_group(child.id());
            let _ = child.wait();
            let message = format!("cannot hand the rings to the worker: {error}");
            return Err(StartError { message, death: None });
        }
        let pid = child.id();
        let ring = Arc::new(ring);
        let counted = Arc::clone(&ring);
        let hung_up = Arc::clone(&ring);
        // The follower also watches the channel: the worker's hang-up (its death) wakes the
        // reply reader, which otherwise sleeps on the reply ring's futex.
        let watch = ours.try_clone().ok().map(|socket| Watch {
            socket: OwnedFd::from(socket),
            on_hang_up: Box::new(move || hung_up.hang_up()),
        });
        let stderr = StderrTail::follow(
            child.stderr.take().map(OwnedFd::from),
            pid,
            move || counted.started().load(Ordering::Acquire),
            watch,
        );
        let reader = ours.try_clone().map_err(|error| StartError {
            message: format!("cannot clone the channel: {error}"),
            death: None,
        })?;
        let writer = Jobs::new(ours, Arc::clone(&ring));
        let mut worker = WorkerProcess {
            child,
            pid,
            reader: Some(reader),
            writer: Arc::new(Mutex::new(writer)),
            ring,
            stderr,
            is_reaped: Arc::new(Mutex::new(false)),
        };
        match worker.handshake(build, settings.max_frame) {
            Ok(()) => Ok(worker),
            Err(mut message) => {
                worker.kill_switch().kill();
                let death = worker.reap();
                // Under a tight `RLIMIT_AS` the program cannot even load or map its rings, and
                // dies without a word on its standard error.
                if let Some(limit) = settings.max_memory_per_worker
                    && (message.starts_with(EXITED_UNREADY) || message.starts_with(NEVER_READY))
                {
                    message.push_str(&format!(
                        " (under its memory limit of {limit} bytes, `max_memory_per_worker`, \
                         which may be too low for the program to start)"
                    ));
                }
                Err(StartError { message, death: Some(death) })
            }
        }
    }

    fn handshake(&mut self, build: u64, max_frame: usize) -> Result<(), String> {
        let Some(reader) = self.reader.as_mut() else {
            return Err("the worker's channel was already taken".to_owned());
        };
        reader.set_read_timeout(Some(READY_TIMEOUT)).map_err(|e| e.to_string())?;
        let result = check_ready(reader, build, self.pid, max_frame);
        reader.set_read_timeout(None).map_err(|e| e.to_string())?;
        result
    }

    /// The reading half of the channel, for the thread that reads the worker's replies.
    pub(crate) fn take_reader(&mut self) -> Option<UnixStream> {
        self.reader.take()
    }

    pub(crate) fn kill_switch(&self) -> KillSwitch {
        KillSwitch { pid: self.pid, is_reaped: Arc::clone(&self.is_reaped) }
    }

    /// Asks the worker to exit and waits for it, killing it if it does not within `grace`.
    pub(crate) fn retire(mut self, grace: Duration) -> Death {
        let mut frame = Vec::new();
        let deadline = Instant::now() + grace;
        let sent = protocol::encode_to_worker(&ToWorker::Exit, &mut frame, usize::MAX).is_ok()
            && lock(&self.writer).send(&frame, &|| Instant::now() >= deadline).is_ok();
        if sent {
            // Waits without reaping: until `reap`, the pid (and the group) stay ours to signal.
            while Instant::now() < deadline && !sys::has_exited(self.pid).unwrap_or(true) {
                thread::sleep(Duration::from_millis(1));
            }
        }
        self.kill_switch().kill();
        self.reap()
    }

    /// Waits for the worker to end (it must be ending: killed, or its channel broken) and says
    /// how it ended.
    ///
    /// What the worker's tasks started and left in its process group is killed first, while the
    /// worker's pid (the group's id) is still ours: once the worker is reaped, its pid may be
    /// another process's, or another group's, and the pool never signals it again. So nothing a
    /// task started outlives its worker, unless it left the group on purpose (`setsid`).
    pub(crate) fn reap(&mut self) -> Death {
        let status = {
            let mut is_reaped = lock(&self.is_reaped);
            sys::kill_process_group(self.pid);
            let status = self.child.wait();
            *is_reaped = true;
            status
        };
        let tail = self.stderr.finish();
        let mut reason = match status {
            Ok(status) => describe_status(status),
            Err(error) => format!("could not be waited for: {error}"),
        };
        if tail.is_stack_overflow {
            reason = format!("overflowed its stack and was {reason}");
        }
        Death {
            pid: self.pid,
            reason,
            stderr_tail: tail.text,
            is_out_of_memory: tail.is_out_of_memory,
            is_stack_overflow: tail.is_stack_overflow,
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let is_reaped = *lock(&self.is_reaped);
        if !is_reaped {
            self.kill_switch().kill();
            let _ = self.reap();
        }
    }
}

/// Locks a mutex whose data stays whole even if a holder panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a start failed when the worker ended before its handshake.
const EXITED_UNREADY: &str = "the worker exited before it was ready";
/// Why a start failed when the worker's handshake never came.
const NEVER_READY: &str = "the worker never said it was ready";

/// Reads a new worker's first frame and checks that it is a `Ready` from the worker we started,
/// of our build and protocol.
fn check_ready(
    reader: &mut impl std::io::Read,
    build: u64,
    pid: u32,
    max_frame: usize,
) -> Result<(), String> {
    let mut frame = Vec::new();
    match protocol::read_frame(reader, &mut frame, max_frame) {
        Ok(body) => match protocol::decode_from_worker(body) {
            Ok(FromWorker::Ready { version, build: theirs, pid: said }) => {
                if version != protocol::VERSION {
                    Err(format!(
                        "the worker speaks protocol {version}, this pool {}",
                        protocol::VERSION
                    ))
                } else if theirs != build {
                    Err("the worker is another build of the program than the pool \
                         (its task registry or executable differs)"
                        .to_owned())
                } else if said != pid {
                    Err(format!("the worker says it is pid {said}, but it is {pid}"))
                } else {
                    Ok(())
                }
            }
            Ok(other) => Err(format!("the worker sent {other:?} before saying it is ready")),
            Err(error) => Err(format!("the worker broke the protocol: {error}")),
        },
        Err(ReadError::Closed) => Err(EXITED_UNREADY.to_owned()),
        Err(error) => Err(format!("{NEVER_READY}: {error}")),
    }
}

fn describe_exe() -> String {
    std::env::current_exe()
        .map(|path| path.display().to_string())
        .unwrap_or_else(|_| "the program's executable".to_owned())
}

/// `"exited with code 3"`, `"killed by signal 11 (SIGSEGV)"`.
pub(crate) fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(number) => match Signal::try_from(number) {
            Ok(signal) => format!("killed by signal {number} ({})", signal.as_str()),
            Err(_) => format!("killed by signal {number}"),
        },
        None => format!("ended with status {status}"),
    }
}

/// The end of what a worker wrote to its standard error, kept while a thread (the follower)
/// copies everything through to ours.
///
/// Memory is bounded: the tail keeps the last [`STDERR_BYTES`] and a report shows at most its
/// last [`STDERR_LINES`] lines. It holds only what the worker wrote since its current job
/// started: when the count of jobs started (`started`) moved since the last chunk, the tail is
/// cleared and a report says that earlier output was left out. The count is read after the pipe
/// is found readable and before it is read; the worker waits for the pipe to be drained before
/// it moves the count ([`sys::wait_stderr_drained`]), so a chunk's count is the count of the
/// job that wrote it.
///
/// Once the worker is reaped, [`StderrTail::finish`] stops the follower: it copies what is in
/// the pipe then and ends, closing the pipe, even if a process the worker started (and that left
/// its group) still holds the pipe's other end.
struct StderrTail {
    tail: Arc<Mutex<Tail>>,
    started: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Dropping it tells the follower to stop.
    stop: Option<OwnedFd>,
    follower: Option<JoinHandle<()>>,
}

/// What a death report takes from a worker's standard error.
struct TailReport {
    text: String,
    is_out_of_memory: bool,
    is_stack_overflow: bool,
}

/// What the follower keeps of a worker's standard error.
#[derive(Default)]
struct Tail {
    /// The last [`STDERR_BYTES`] bytes the worker wrote since its current job started.
    bytes: VecDeque<u8>,
    /// The count of jobs started that the kept bytes belong to.
    job: Option<u64>,
    /// Whether output of earlier jobs was cleared.
    has_left_out: bool,
    /// The start of the line being written, for the messages the follower recognizes.
    line: Vec<u8>,
    is_line_long: bool,
    /// Rust's report of a failed allocation, kept even after it scrolls out of the tail (a
    /// backtrace printed after it would push it out), since it says why the worker died.
    allocation_failure: Option<String>,
    /// Whether a line said a thread overflowed its stack.
    is_stack_overflow: bool,
}

impl Tail {
    /// Takes in a chunk written while the count of jobs started was `job`.
    fn push(&mut self, job: u64, chunk: &[u8]) {
        self.settle(job);
        self.job = Some(job);
        let keep = chunk.len().min(STDERR_BYTES);
        self.bytes.extend(&chunk[chunk.len() - keep..]);
        let excess = self.bytes.len().saturating_sub(STDERR_BYTES);
        self.bytes.drain(..excess);
        for piece in chunk.split_inclusive(|byte| *byte == b'\n') {
            let room = PATTERN_LINE.saturating_sub(self.line.len());
            self.is_line_long |= piece.len() > room;
            self.line.extend_from_slice(&piece[..piece.len().min(room)]);
            if piece.ends_with(b"\n") {
                self.recognize_line();
                self.line.clear();
                self.is_line_long = false;
            }
        }
    }

    /// Forgets what earlier jobs wrote if the count of jobs started is no longer the kept one's.
    fn settle(&mut self, job: u64) {
        if self.job.is_some_and(|kept| kept != job) {
            *self = Tail { has_left_out: true, job: Some(job), ..Tail::default() };
        }
    }

    fn recognize_line(&mut self) {
        if self.is_line_long {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end();
        if text.starts_with("memory allocation of ") && text.ends_with(" failed") {
            self.allocation_failure = Some(text.to_owned());
        }
        if text.starts_with("thread '") && text.ends_with(" has overflowed its stack") {
            self.is_stack_overflow = true;
        }
    }

    fn report(&self) -> TailReport {
        let (front, back) = self.bytes.as_slices();
        let text = String::from_utf8_lossy(&[front, back].concat()).into_owned();
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        let kept = &lines[lines.len().saturating_sub(STDERR_LINES)..];
        let pinned = self.allocation_failure.as_deref().filter(|line| !kept.contains(line));
        let note = self.has_left_out.then_some("(earlier output of this worker left out)");
        let shown: Vec<&str> = note.into_iter().chain(pinned).chain(kept.iter().copied()).collect();
        TailReport {
            text: shown.join("\n"),
            is_out_of_memory: self.allocation_failure.is_some(),
            is_stack_overflow: self.is_stack_overflow,
        }
    }
}

/// The worker's channel, watched by its stderr follower for the worker's hang-up.
struct Watch {
    socket: OwnedFd,
    /// Called once, when the worker's end of the channel hangs up.
    on_hang_up: Box<dyn FnOnce() + Send>,
}

impl StderrTail {
    /// Follows `stderr`, the reading end of worker `pid`'s standard error, copying it to ours;
    /// `started` reads the count of jobs the worker has started. With a `watch`, the follower
    /// also calls its `on_hang_up` when the worker's end of the channel hangs up.
    fn follow(
        stderr: Option<OwnedFd>,
        pid: u32,
        started: impl Fn() -> u64 + Send + Sync + 'static,
        watch: Option<Watch>,
    ) -> StderrTail {
        StderrTail::follow_into(stderr, pid, Arc::new(started), io::stderr(), watch)
    }

    /// [`StderrTail::follow`], copying to `sink`.
    fn follow_into(
        stderr: Option<OwnedFd>,
        pid: u32,
        started: Arc<dyn Fn() -> u64 + Send + Sync>,
        sink: impl Write + Send + 'static,
        watch: Option<Watch>,
    ) -> StderrTail {
        let tail = Arc::new(Mutex::new(Tail::default()));
        let mut follower = StderrTail { tail, started, stop: None, follower: None };
        let Some(stderr) = stderr else {
            return follower;
        };
        // Without a stop pipe (out of descriptors) the follower still runs, until end-of-file.
        let (stop_reader, stop_writer) = sys::pipe().ok().unzip();
        follower.stop = stop_writer;
        let tail = Arc::clone(&follower.tail);
        let started = Arc::clone(&follower.started);
        follower.follower = thread::Builder::new()
            .name(format!("parallel-stderr-{pid}"))
            .spawn(move || {
                let stderr = File::from(stderr);
                copy_through(stderr, stop_reader, &*started, sink, &tail, watch);
            })
            .ok();
        follower
    }

    /// Stops the follower, once the worker is reaped (all it wrote is in the pipe), and says
    /// what the tail holds of the current job.
    fn finish(&mut self) -> TailReport {
        self.stop = None;
        if let Some(follower) = self.follower.take() {
            let deadline = Instant::now() + FOLLOWER_GRACE;
            while !follower.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if follower.is_finished() {
                let _ = follower.join();
            }
        }
        let mut tail = lock(&self.tail);
        // A job that wrote nothing leaves the output of the job before in the tail.
        tail.settle((self.started)());
        tail.report()
    }
}

/// The follower: copies `stderr` to `sink` in chunks, keeping the tail, until end-of-file, or
/// until `stop` is closed and what the pipe holds then is copied; meanwhile, until `stop`,
/// watches the channel in `watch` for the worker's hang-up.
fn copy_through(
    mut stderr: File,
    stop: Option<OwnedFd>,
    started: &(dyn Fn() -> u64 + Send + Sync),
    mut sink: impl Write,
    tail: &Mutex<Tail>,
    mut watch: Option<Watch>,
) {
    let mut buffer = vec![0; 64 << 10];
    let mut drained: Option<usize> = None;
    loop {
        match (&stop, drained) {
            (_, Some(bytes)) => {
                let input = sys::wait_for_input(stderr.as_fd(), None, None, Some(Duration::ZERO));
                if bytes >= DRAIN_LIMIT || !input.is_ok_and(|input| input.is_readable) {
                    break;
                }
            }
            (Some(stop), None) => {
                let socket = watch.as_ref().map(|watch| watch.socket.as_fd());
                match sys::wait_for_input(stderr.as_fd(), Some(stop.as_fd()), socket, None) {
                    Ok(input) => {
                        if input.is_hung_up
                            && let Some(watch) = watch.take()
                        {
                            (watch.on_hang_up)();
                        }
                        if input.is_stopped {
                            drained = Some(0);
                            continue;
                        }
                        if !input.is_readable {
                            continue;
                        }
                    }
                    Err(_) => break,
                }
            }
            // No stop pipe: a blocking read, until end-of-file.
            (None, None) => {}
        }
        // Read after the pipe was found readable: the bytes there are the current job's.
        let job = started();
        let n = match stderr.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if let Some(bytes) = drained.as_mut() {
            *bytes += n;
        }
        // Our own stderr failing must not stop the collection of the tail.
        let _ = sink.write_all(&buffer[..n]);
        lock(tail).push(job, &buffer[..n]);
    }
    // The worker closed its standard error (a task may) but may live on: keep watching its
    // channel until it hangs up or the follower is stopped.
    if let (Some(watch), Some(stop), None) = (watch, &stop, drained) {
        loop {
            let socket = Some(watch.socket.as_fd());
            match sys::wait_for_input(stop.as_fd(), None, socket, None) {
                Ok(input) if input.is_hung_up => {
                    (watch.on_hang_up)();
                    return;
                }
                Ok(input) if input.is_readable => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::protocol::Reply;
    use std::sync::atomic::AtomicU64;

    /// A `Run` frame of job `job` whose arguments are `len` bytes.
    fn run_frame(job: u64, len: usize) -> Vec<u8> {
        let mut frame = Vec::new();
        let args = vec![job as u8; len];
        let message = ToWorker::Run { job, task: "t", args: &args };
        protocol::encode_to_worker(&message, &mut frame, usize::MAX).unwrap();
        frame
    }

    #[test]
    fn staged_frames_reach_the_worker_in_order_with_large_ones_in_place() {
        let (ring, fd) = PoolSide::create().unwrap();
        let worker = crate::process::ring::WorkerSide::map(fd).unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut jobs = Jobs::new(ours, Arc::new(ring));
        // 160 frames of 4 KiB: more than a quarter ring, so the batch goes in several runs.
        let large_at = 100;
        let mut large = Vec::new();
        for job in 0..160u64 {
            if job == large_at {
                large.push((jobs.staged(), Arc::new(run_frame(job, 300 << 10))));
            } else {
                jobs.stage(&run_frame(job, 4 << 10));
            }
        }
        assert!(!Jobs::fits_ring(300 << 10) && Jobs::fits_ring(4 << 10));
        let flushing = thread::spawn(move || {
            jobs.flush(large, &|| false).unwrap();
            jobs.staged()
        });
        let mut body = Vec::new();
        let mut region = large::Receiver::default();
        for job in 0..160u64 {
            while !worker.pop_job(&mut body, usize::MAX).unwrap() {
                thread::yield_now();
            }
            if let ToWorker::OnShared { len, fresh } = protocol::decode_to_worker(&body).unwrap() {
                let mut large = Vec::new();
                let release = |taken| worker.release_jobs_region(taken);
                region.receive(&theirs, (len, fresh), usize::MAX, &mut large, release).unwrap();
                body = large;
            }
            let ToWorker::Run { job: got, args, .. } = protocol::decode_to_worker(&body).unwrap()
            else {
                panic!("job {job} is not a run frame");
            };
            assert_eq!(got, job, "out of order");
            let len = if job == large_at { 300 << 10 } else { 4 << 10 };
            assert_eq!(args, vec![job as u8; len], "job {job}'s arguments");
        }
        assert_eq!(flushing.join().unwrap(), 0, "nothing stays staged");
        assert!(!worker.pop_job(&mut body, usize::MAX).unwrap(), "nothing more");
    }

    fn ready(version: u16, build: u64, pid: u32) -> Vec<u8> {
        let mut frame = Vec::new();
        let message = FromWorker::Ready { version, build, pid };
        protocol::encode_from_worker(&message, &mut frame, 1 << 20).unwrap();
        frame
    }

    fn check(frame: &[u8]) -> Result<(), String> {
        check_ready(&mut &frame[..], 42, 7, 1 << 20)
    }

    #[test]
    fn a_worker_of_this_build_is_accepted() {
        assert_eq!(check(&ready(protocol::VERSION, 42, 7)), Ok(()));
    }

    #[test]
    fn a_worker_of_another_build_or_protocol_is_refused() {
        let error = check(&ready(protocol::VERSION, 43, 7)).unwrap_err();
        assert!(error.contains("another build"), "{error}");
        let error = check(&ready(protocol::VERSION + 1, 42, 7)).unwrap_err();
        assert!(error.contains("speaks protocol"), "{error}");
        let error = check(&ready(protocol::VERSION, 42, 8)).unwrap_err();
        assert!(error.contains("says it is pid 8"), "{error}");
    }

    #[test]
    fn anything_but_a_ready_first_is_refused() {
        let mut frame = Vec::new();
        let done = FromWorker::Done { job: 1, reply: Reply::UnknownTask };
        protocol::encode_from_worker(&done, &mut frame, 1 << 20).unwrap();
        assert!(check(&frame).unwrap_err().contains("before saying it is ready"));
        assert!(check(&[]).unwrap_err().contains("exited before it was ready"));
        assert!(check(&[3, 0, 0, 0, 99, 1, 2]).unwrap_err().contains("broke the protocol"));
        assert!(check(&[9, 0, 0, 0, 10]).unwrap_err().contains("never said it was ready"));
    }

    /// Follows a real pipe whose job count is `started`; the writing end is returned.
    fn follow_pipe(started: &Arc<AtomicU64>) -> (StderrTail, File) {
        let (reader, writer) = sys::pipe().unwrap();
        let count = Arc::clone(started);
        let started = Arc::new(move || count.load(Ordering::Acquire));
        (StderrTail::follow_into(Some(reader), 0, started, io::sink(), None), File::from(writer))
    }

    /// What the worker does before it starts a job: waits until the pool has read its output,
    /// then counts the job.
    fn start_job(writer: &File, started: &AtomicU64) {
        sys::wait_drained(writer.as_fd(), Duration::from_secs(30));
        started.fetch_add(1, Ordering::Release);
    }

    #[test]
    fn the_tail_holds_only_what_the_current_job_wrote() {
        let started = Arc::new(AtomicU64::new(1));
        let (mut tail, mut writer) = follow_pipe(&started);
        writer.write_all(b"written by the first job\n").unwrap();
        start_job(&writer, &started);
        writer.write_all(b"written by the second job\n").unwrap();
        drop(writer);
        let report = tail.finish();
        assert_eq!(
            report.text,
            "(earlier output of this worker left out)\nwritten by the second job"
        );
    }

    #[test]
    fn a_job_that_wrote_nothing_is_not_blamed_for_the_output_before_it() {
        let started = Arc::new(AtomicU64::new(1));
        let (mut tail, mut writer) = follow_pipe(&started);
        writer.write_all(b"memory allocation of 8 bytes failed\n").unwrap();
        start_job(&writer, &started);
        drop(writer);
        let report = tail.finish();
        assert_eq!(report.text, "(earlier output of this worker left out)");
        assert!(!report.is_out_of_memory);
    }

    #[test]
    fn the_tail_is_bounded_in_bytes_and_lines() {
        let started = Arc::new(AtomicU64::new(0));
        let (mut tail, mut writer) = follow_pipe(&started);
        // 4 MiB without a newline, then many short lines.
        let flood = vec![b'y'; 1 << 16];
        for _ in 0..64 {
            writer.write_all(&flood).unwrap();
        }
        for line in 0..100 {
            writer.write_all(format!("\nline {line}").as_bytes()).unwrap();
        }
        drop(writer);
        let report = tail.finish();
        let lines: Vec<&str> = report.text.lines().collect();
        assert_eq!(lines.len(), STDERR_LINES);
        assert_eq!(lines.first(), Some(&"line 60"));
        assert_eq!(lines.last(), Some(&"line 99"));

        let (mut tail, mut writer) = follow_pipe(&started);
        for _ in 0..64 {
            writer.write_all(&flood).unwrap();
        }
        drop(writer);
        let report = tail.finish();
        assert_eq!(report.text.len(), STDERR_BYTES);
        assert!(report.text.bytes().all(|byte| byte == b'y'));
    }

    #[test]
    fn the_follower_stops_when_told_even_if_the_pipe_stays_open() {
        // The writing end stays open, as when a process that left the worker's group holds it.
        let started = Arc::new(AtomicU64::new(0));
        let (mut tail, mut writer) = follow_pipe(&started);
        writer.write_all(b"before the reap\n").unwrap();
        let report = tail.finish();
        assert_eq!(report.text, "before the reap");
        assert!(tail.follower.is_none());
        // The follower closed its end: nobody reads the pipe any more.
        let error = writer.write_all(b"after").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn messages_that_explain_a_death_are_recognized_across_chunks() {
        let mut tail = Tail::default();
        tail.push(0, b"memory allocation of 64 by");
        tail.push(0, b"tes failed\nthread 'main' (77) has over");
        tail.push(0, b"flowed its stack\nfatal runtime error: stack overflow, aborting\n");
        let report = tail.report();
        assert!(report.is_out_of_memory);
        assert!(report.is_stack_overflow);
        // A long line is copied, not inspected.
        let mut tail = Tail::default();
        tail.push(0, &[b'z'; PATTERN_LINE]);
        tail.push(0, b"thread 'main' (77) has overflowed its stack\n");
        assert!(!tail.report().is_stack_overflow);
    }

    #[test]
    fn exits_are_described_with_the_signal_name() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe_status(ExitStatus::from_raw(3 << 8)), "exited with code 3");
        assert_eq!(describe_status(ExitStatus::from_raw(11)), "killed by signal 11 (SIGSEGV)");
        assert_eq!(describe_status(ExitStatus::from_raw(9)), "killed by signal 9 (SIGKILL)");
    }
}
