//! The worker's side: serve tasks from the channel until the pool lets go.
//!
//! One task at a time: read a frame, look the task up in the registry, run it with the worker's
//! [`Environment`], write the reply. Panics are caught and reported like on the thread backend;
//! everything else that goes wrong (the pool gone, a frame that breaks the protocol) ends the
//! worker, whose death the pool observes. While no frame arrives the worker wakes up when its
//! environment has entries due to expire, and drops them.

use std::io::{BufReader, BufWriter};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::entry::Marker;
use super::protocol::{self, FromWorker, ReadError, Reply, ToWorker};
use crate::registry::{self, Outcome};
use crate::{unwind, Environment};

/// The exit code of a process started as a worker that could not serve at all.
pub(crate) const EXIT_CANNOT_SERVE: i32 = 101;

/// Serves tasks for the pool described by `marker`; returns the process's exit code.
pub(crate) fn serve(marker: &Marker) -> i32 {
    // The pool may have died between spawning us and now; then nobody will ever send a task.
    if std::os::unix::process::parent_id() != marker.parent {
        return 0;
    }
    // SAFETY: the pool put its end of a fresh socket pair at this descriptor for this process
    // alone and told us its number in the marker; nothing else in this process owns it.
    let channel = UnixStream::from(unsafe { OwnedFd::from_raw_fd(marker.fd) });
    match serve_channel(channel, marker) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("parallel: worker {} stops: {error}", std::process::id());
            EXIT_CANNOT_SERVE
        }
    }
}

fn serve_channel(channel: UnixStream, marker: &Marker) -> Result<(), String> {
    unwind::install_hook();
    let mut reader =
        BufReader::with_capacity(64 * 1024, channel.try_clone().map_err(|e| e.to_string())?);
    let mut writer = BufWriter::with_capacity(64 * 1024, channel);
    let mut frame = Vec::new();
    let mut out = Vec::new();
    let ready = FromWorker::Ready {
        version: protocol::VERSION,
        build: super::build_id(),
        pid: std::process::id(),
    };
    send(&mut writer, &ready, &mut out, marker.max_frame)?;
    watch_for_hang_up(&writer)?;

    let mut environment = Environment::for_worker(marker.worker_id);
    loop {
        if reader.buffer().is_empty() {
            wait_readable(reader.get_ref(), &mut environment)?;
        }
        let body = match protocol::read_frame(&mut reader, &mut frame, marker.max_frame) {
            Ok(body) => body,
            // The pool is gone or let go of us: a normal end.
            Err(ReadError::Closed) => return Ok(()),
            Err(error) => return Err(error.to_string()),
        };
        match protocol::decode_to_worker(body).map_err(|e| e.to_string())? {
            ToWorker::Exit => return Ok(()),
            ToWorker::Run { job, task, args } => {
                unwind::drop_values(|| environment.purge_expired());
                let ran = run(job, task, args, &mut environment, &mut out);
                let reply = match &ran {
                    // The value's frame is already built in `out`.
                    Ran::Value => match protocol::finish_frame(&mut out, marker.max_frame) {
                        Ok(()) => {
                            protocol::write_frame(&mut writer, &out)
                                .map_err(|error| format!("cannot write to the pool: {error}"))?;
                            continue;
                        }
                        Err(error) => Owned::Unserializable {
                            is_error: false,
                            message: format!("the value is over the frame limit: {error}"),
                        },
                    },
                    Ran::Reply(owned) => owned.clone(),
                    Ran::Panicked(report) => {
                        let reply = Reply::Panicked {
                            message: &report.message,
                            location: report.location.as_deref(),
                            backtrace: report.backtrace.as_deref(),
                        };
                        send(
                            &mut writer,
                            &FromWorker::Done { job, reply },
                            &mut out,
                            marker.max_frame,
                        )?;
                        continue;
                    }
                };
                send(
                    &mut writer,
                    &FromWorker::Done { job, reply: reply.as_reply() },
                    &mut out,
                    marker.max_frame,
                )?;
            }
        }
    }
}

fn send(
    writer: &mut BufWriter<UnixStream>,
    message: &FromWorker<'_>,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), String> {
    if let Err(error) = protocol::encode_from_worker(message, out, max) {
        // Only an output over the frame limit gets here: report that instead of the output.
        let FromWorker::Done { job, .. } = message else {
            return Err(error.to_string());
        };
        let message = format!("the output is over the frame limit: {error}");
        let reply = Reply::Unserializable { is_error: false, message: &message };
        protocol::encode_from_worker(&FromWorker::Done { job: *job, reply }, out, max)
            .map_err(|e| e.to_string())?;
    }
    protocol::write_frame(writer, out).map_err(|error| format!("cannot write to the pool: {error}"))
}

/// Ends the worker as soon as the pool hangs up, even in the middle of a long task: a thread
/// waits for the channel's hang-up (`POLLRDHUP`, which does not consume input) and exits the
/// process. `PR_SET_PDEATHSIG` covers the pool's death; this covers a pool that is gone without
/// its process dying (its slot thread ended, its channel closed).
fn watch_for_hang_up(writer: &BufWriter<UnixStream>) -> Result<(), String> {
    let channel = writer.get_ref().try_clone().map_err(|error| error.to_string())?;
    std::thread::Builder::new()
        .name("parallel-worker-watch".to_owned())
        .spawn(move || loop {
            let hang_up = PollFlags::from_bits_retain(nix::libc::POLLRDHUP);
            let mut fds = [PollFd::new(channel.as_fd(), hang_up)];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => {}
                // Hang-up, error, or a failing poll: the channel is no use any more.
                _ => std::process::exit(0),
            }
        })
        .map(drop)
        .map_err(|error| format!("cannot start the hang-up watcher: {error}"))
}

/// Blocks until the channel is readable, purging expired environment entries when they are due.
fn wait_readable(channel: &UnixStream, environment: &mut Environment) -> Result<(), String> {
    loop {
        let timeout = match environment.next_expiry() {
            None => PollTimeout::NONE,
            Some(at) => {
                let millis = at.saturating_duration_since(Instant::now()).as_millis() + 1;
                PollTimeout::try_from(millis.min(60_000) as u32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => unwind::drop_values(|| environment.purge_expired()),
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(error) => return Err(format!("cannot wait for the pool: {error}")),
        }
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

/// Runs job `job`; an output or error is serialized straight into `out` after its frame header.
fn run(job: u64, task: &str, args: &[u8], environment: &mut Environment, out: &mut Vec<u8>) -> Ran {
    let Some(registration) = registry::lookup(task) else {
        return Ran::Reply(Owned::UnknownTask);
    };
    let caught = unwind::catch(|| {
        let outcome =
            protocol::with_deserializer(args, |input| registration.run(environment, input));
        // Serializing runs user code too (`Serialize` impls), so it stays inside the catch.
        let (value, is_error) = match outcome {
            Outcome::Output(output) => (output, false),
            Outcome::Failed(error) => (error, true),
            Outcome::BadInput(message) => return Ran::Reply(Owned::BadArguments(message)),
        };
        protocol::begin_value_reply(out, job, is_error);
        match protocol::encode_value(&value, out) {
            Ok(()) => Ran::Value,
            Err(message) => Ran::Reply(Owned::Unserializable { is_error, message }),
        }
    });
    caught.unwrap_or_else(Ran::Panicked)
}
