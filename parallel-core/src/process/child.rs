//! One worker process seen from the pool: starting it, talking to it, ending and reaping it.
//!
//! The worker is this program's own executable (`/proc/self/exe`, the very file this process
//! runs even if it was replaced on disk since), started with the entry marker. It gets its end of
//! a socket pair as descriptor 3 and dies with the thread that started it (`PR_SET_PDEATHSIG`),
//! which is the pool's long-lived slot thread, and with its channel's end-of-file. Its standard
//! output is ours; its standard error goes through a thread that copies it to ours and keeps the
//! last lines for the report of a death.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::entry::{Marker, MARKER};
use super::protocol::{self, FromWorker, ReadError};
use super::ring::Ring;

/// The descriptor number the worker finds its channel at: its standard input, the one descriptor
/// `Command` hands over without a `pre_exec` hook (which would make it `fork` a copy of the pool's
/// whole address space instead of spawning with `posix_spawn`). The worker moves the channel
/// away and puts `/dev/null` in its place before any task runs.
const CHANNEL_FD: i32 = 0;
/// How many lines of a worker's standard error a death report keeps.
const STDERR_LINES: usize = 20;
/// How long a new worker may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a worker needs to know at start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) worker_id: usize,
    pub(crate) max_frame: usize,
    pub(crate) max_memory: Option<u64>,
}

/// A running worker process and the pool's end of its channel.
pub(crate) struct Worker {
    child: Child,
    pub(crate) pid: u32,
    /// The reading half, until a reader thread takes it.
    reader: Option<BufReader<UnixStream>>,
    /// The writing half, shared: the slot writes jobs, a canceller writes `Cancel` frames.
    pub(crate) writer: Arc<Mutex<BufWriter<UnixStream>>>,
    /// The worker's replies in shared memory, and the count of `Cancel` frames written.
    pub(crate) ring: Arc<Ring>,
    stderr: StderrTail,
    /// Held while signalling, and set once reaped: a reaped pid may belong to another process.
    is_reaped: Arc<Mutex<bool>>,
}

/// Lets another thread kill a worker safely while the slot thread waits on it.
#[derive(Clone)]
pub(crate) struct KillSwitch {
    pid: u32,
    is_reaped: Arc<Mutex<bool>>,
}

impl KillSwitch {
    /// Sends SIGKILL, unless the worker is already reaped.
    pub(crate) fn kill(&self) {
        let is_reaped = lock(&self.is_reaped);
        if !*is_reaped {
            // A failure means the process is already gone, which is what we wanted.
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
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
}

/// Why a worker could not be started.
#[derive(Debug)]
pub(crate) struct StartError {
    pub(crate) message: String,
    pub(crate) death: Option<Death>,
}

impl Worker {
    /// Starts a worker and waits for its handshake.
    pub(crate) fn start(settings: Settings, build: u64) -> Result<Worker, StartError> {
        let (ours, theirs) = UnixStream::pair().map_err(|error| StartError {
            message: format!("cannot create a socket pair: {error}"),
            death: None,
        })?;
        let (ring, ring_fd) =
            Ring::create().map_err(|message| StartError { message, death: None })?;
        let marker = Marker {
            fd: CHANNEL_FD,
            parent: std::process::id(),
            worker_id: settings.worker_id,
            max_frame: settings.max_frame,
            max_memory: settings.max_memory,
        };
        let mut command = Command::new("/proc/self/exe");
        // Operators see which program and which slot a worker is, not `/proc/self/exe`.
        command
            .arg0(format!("{} [parallel worker {}]", program_name(), settings.worker_id))
            .env(MARKER, marker.to_value())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|error| StartError {
            message: format!("cannot start {}: {error}", describe_exe()),
            death: None,
        })?;
        // The command holds our copy of the worker's end of the channel: close it, or the
        // channel would never report the worker's exit.
        drop(command);
        // The worker's first read on its channel takes the ring's memory file.
        let sent = send_fd(&ours, &ring_fd);
        drop(ring_fd);
        if let Err(error) = sent {
            // The worker is then stuck before its handshake: end it.
            let _ = child.kill();
            let _ = child.wait();
            let message = format!("cannot hand the reply ring to the worker: {error}");
            return Err(StartError { message, death: None });
        }
        let pid = child.id();
        let stderr = StderrTail::follow(child.stderr.take(), pid);
        let reader = BufReader::with_capacity(
            64 * 1024,
            ours.try_clone().map_err(|error| StartError {
                message: format!("cannot clone the channel: {error}"),
                death: None,
            })?,
        );
        let writer = BufWriter::with_capacity(64 * 1024, ours);
        let mut worker = Worker {
            child,
            pid,
            reader: Some(reader),
            writer: Arc::new(Mutex::new(writer)),
            ring: Arc::new(ring),
            stderr,
            is_reaped: Arc::new(Mutex::new(false)),
        };
        match worker.handshake(build, settings.max_frame) {
            Ok(()) => Ok(worker),
            Err(message) => {
                worker.kill_switch().kill();
                let death = worker.reap();
                Err(StartError { message, death: Some(death) })
            }
        }
    }

    fn handshake(&mut self, build: u64, max_frame: usize) -> Result<(), String> {
        let Some(reader) = self.reader.as_mut() else {
            return Err("the worker's channel was already taken".to_owned());
        };
        reader.get_ref().set_read_timeout(Some(READY_TIMEOUT)).map_err(|e| e.to_string())?;
        let result = check_ready(reader, build, self.pid, max_frame);
        reader.get_ref().set_read_timeout(None).map_err(|e| e.to_string())?;
        result
    }

    /// The reading half of the channel, for the thread that reads the worker's replies.
    pub(crate) fn take_reader(&mut self) -> Option<BufReader<UnixStream>> {
        self.reader.take()
    }

    pub(crate) fn kill_switch(&self) -> KillSwitch {
        KillSwitch { pid: self.pid, is_reaped: Arc::clone(&self.is_reaped) }
    }

    /// Asks the worker to exit and waits for it, killing it if it does not within `grace`.
    pub(crate) fn retire(mut self, grace: Duration) -> Death {
        let mut frame = Vec::new();
        let sent = protocol::encode_to_worker(&protocol::ToWorker::Exit, &mut frame, usize::MAX)
            .is_ok()
            && protocol::write_frame(&mut *lock(&self.writer), &frame).is_ok();
        if sent {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
        }
        self.kill_switch().kill();
        self.reap()
    }

    /// Waits for the worker to end (it must be ending: killed, or its channel broken) and says
    /// how it ended.
    pub(crate) fn reap(&mut self) -> Death {
        let status = {
            let mut is_reaped = lock(&self.is_reaped);
            let status = self.child.wait();
            *is_reaped = true;
            status
        };
        let reason = match status {
            Ok(status) => describe_status(status),
            Err(error) => format!("could not be waited for: {error}"),
        };
        let stderr_tail = self.stderr.tail();
        let is_out_of_memory = self.stderr.saw_allocation_failure();
        Death { pid: self.pid, reason, stderr_tail, is_out_of_memory }
    }
}

impl Drop for Worker {
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
        Err(ReadError::Closed) => Err("the worker exited before it was ready".to_owned()),
        Err(error) => Err(format!("the worker never said it was ready: {error}")),
    }
}

/// Sends descriptor `fd` over `channel`, with one byte to carry it.
fn send_fd(channel: &UnixStream, fd: &OwnedFd) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let payload = [0u8];
    let iov = [io::IoSlice::new(&payload)];
    let control = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(channel.as_raw_fd(), &iov, &control, MsgFlags::MSG_NOSIGNAL, None).map(drop)
}

/// The worker's side of [`send_fd`]: receives the descriptor sent first on `channel`.
pub(crate) fn receive_fd(channel: &UnixStream) -> Result<OwnedFd, String> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut payload = [0u8];
    let mut iov = [io::IoSliceMut::new(&mut payload)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let message =
        recvmsg::<()>(channel.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|error| format!("cannot receive the reply ring: {error}"))?;
    let mut received = None;
    for control in message.cmsgs().map_err(|error| error.to_string())? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in this process for this message; no
                // one else owns it. Extra descriptors, if any, are closed by dropping them.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(fd);
            }
        }
    }
    received.ok_or_else(|| "the pool sent no reply ring".to_owned())
}

/// The file name of this program's executable, for the names of its workers.
pub(crate) fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.file_name().map(|name| name.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "parallel".to_owned())
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

/// The last lines a worker wrote to its standard error, copied through to ours.
struct StderrTail {
    lines: Arc<Mutex<Lines>>,
    follower: Option<JoinHandle<()>>,
}

/// What the follower keeps of a worker's standard error.
#[derive(Default)]
struct Lines {
    last: VecDeque<String>,
    /// Rust's report of a failed allocation, kept even after it scrolls out of `last` (a
    /// backtrace printed after it would push it out), since it says why the worker died.
    allocation_failure: Option<String>,
}

impl StderrTail {
    fn follow(stderr: Option<ChildStderr>, pid: u32) -> StderrTail {
        let lines = Arc::new(Mutex::new(Lines::default()));
        let follower = stderr.and_then(|stderr| {
            let lines = Arc::clone(&lines);
            thread::Builder::new()
                .name(format!("parallel-stderr-{pid}"))
                .spawn(move || copy_lines(stderr, &lines))
                .ok()
        });
        StderrTail { lines, follower }
    }

    /// The kept lines, once the worker's standard error is closed (or a short wait is over: a
    /// process the task started may still hold it open).
    fn tail(&mut self) -> String {
        if let Some(follower) = self.follower.take() {
            let deadline = Instant::now() + Duration::from_millis(500);
            while !follower.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if follower.is_finished() {
                let _ = follower.join();
            }
        }
        let lines = lock(&self.lines);
        let pinned = lines.allocation_failure.as_ref().filter(|line| !lines.last.contains(line));
        let kept: Vec<&str> = pinned.into_iter().chain(&lines.last).map(String::as_str).collect();
        kept.join("\n")
    }

    fn saw_allocation_failure(&self) -> bool {
        lock(&self.lines).allocation_failure.is_some()
    }
}

fn copy_lines(stderr: ChildStderr, lines: &Mutex<Lines>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut ours = io::stderr();
    while let Ok(n) = reader.read_until(b'\n', &mut line) {
        if n == 0 {
            break;
        }
        // Our own stderr failing must not stop the collection of the tail.
        let _ = ours.write_all(&line);
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        let mut lines = lock(lines);
        if text.starts_with("memory allocation of ") && text.ends_with(" failed") {
            lines.allocation_failure = Some(text.clone());
        }
        if lines.last.len() == STDERR_LINES {
            lines.last.pop_front();
        }
        lines.last.push_back(text);
        line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::protocol::Reply;

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

    #[test]
    fn exits_are_described_with_the_signal_name() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe_status(ExitStatus::from_raw(3 << 8)), "exited with code 3");
        assert_eq!(describe_status(ExitStatus::from_raw(11)), "killed by signal 11 (SIGSEGV)");
        assert_eq!(describe_status(ExitStatus::from_raw(9)), "killed by signal 9 (SIGKILL)");
    }
}
