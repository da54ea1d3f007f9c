//! The wire protocol between a pool and its worker processes: the only code that knows bytes —
//! the marker a worker is started with, the frames, and the values in them.
//!
//! Every message is one frame: a little-endian `u32` length, then that many bytes, the first of
//! which is the message tag. Integers are little-endian; strings are a `u32` length and UTF-8.
//! Task arguments, outputs and errors are MessagePack as [`wire_value`] writes it (structs as
//! maps), a self-describing format, so every serde shape crosses: `#[serde(flatten)]`, untagged
//! enums, `serde_json::Value`, `Some(None)`; a value nested deeper than
//! [`wire_value::MAX_DEPTH`] levels is refused on both sides. The protocol version travels in
//! the worker's first frame.
//!
//! Bytes from a worker are untrusted: a frame over the limit, a truncated frame, an unknown tag
//! or a malformed body is a [`ProtocolError`] for that worker, never a panic, and a frame's buffer
//! grows only as its bytes actually arrive, so a lying length cannot make the parent allocate.

use std::fmt;
use std::io::{self, Read};

use serde::de::DeserializeOwned;

use crate::wire_value::{self, Encode};

/// The version of this protocol; a worker that speaks another one is refused. 3: no `Cancel`
/// frame (claims in shared memory instead); 4: task values carry `Some` markers (see
/// [`wire_value`]); 5: `Progress` frames, a running job's messages, before its reply; 6: jobs in
/// a ring of the shared memory too (`OnSocket` both ways), futex wake-ups instead of `Wake`; 7: the worker's reply also wakes a
/// caller asleep on the reply lane's `leader` word (a caller reading its own reply); 8: a frame
/// too large for a ring travels in its lane's region, a memory file passed on the socket
/// (`OnShared`), no longer through the socket's bytes (`OnSocket`); 9: `RunMany`, several jobs
/// of one task in one frame.
pub(crate) const VERSION: u16 = 9;

const RUN: u8 = 1;
const EXIT: u8 = 2;
const READY: u8 = 10;
const OUTPUT: u8 = 11;
const FAILED: u8 = 12;
const PANICKED: u8 = 13;
const BAD_ARGUMENTS: u8 = 14;
const UNKNOWN_TASK: u8 = 15;
const UNSERIALIZABLE: u8 = 16;
const SKIPPED: u8 = 17;
// 18 was `Wake`, written on the socket to a sleeping reader until the futexes of protocol 6.
// 19 was `OnSocket`, a frame written on the socket after its announcement, until protocol 8.
const PROGRESS: u8 = 20;
const ON_SHARED: u8 = 21;
const RUN_MANY: u8 = 22;
/// The bytes of a `RunMany` entry before its arguments: the job and the arguments' length.
pub(crate) const ENTRY_HEADER: usize = 12;

/// The environment variable that makes a process a worker, holding a [`Marker`].
pub(crate) const MARKER: &str = "PARALLEL_WORKER";

/// The marker's layout version; a worker refuses a marker of another layout.
const MARKER_VERSION: &str = "2";

/// What the pool tells a new worker through the marker, before any frame: the value of
/// [`MARKER`] is `2:<fd>:<parent pid>:<worker id>:<frame limit>:<memory limit or 0>`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The worker's end of the channel, as a file descriptor number (always 0: standard input).
    pub(crate) fd: i32,
    /// The pool's process, which the worker must outlive by no more than an instant.
    pub(crate) parent: u32,
    /// The worker slot: [`Environment::worker_id`](crate::Environment::worker_id).
    pub(crate) worker_id: usize,
    /// The largest frame either side sends.
    pub(crate) max_frame: usize,
    /// The worker's address space limit in bytes, which it sets itself (0 in the marker: none).
    pub(crate) max_memory: Option<u64>,
}

impl Marker {
    /// The marker's value, for the worker's environment.
    pub(crate) fn to_value(&self) -> String {
        format!(
            "{MARKER_VERSION}:{}:{}:{}:{}:{}",
            self.fd,
            self.parent,
            self.worker_id,
            self.max_frame,
            self.max_memory.unwrap_or(0)
        )
    }

    /// Reads a marker's value.
    ///
    /// # Errors
    ///
    /// Says what is wrong with a value that is not a marker of this layout.
    pub(crate) fn parse(value: &std::ffi::OsStr) -> Result<Marker, String> {
        let text = value.to_str().ok_or("the marker is not UTF-8")?;
        let mut parts = text.split(':');
        if parts.next() != Some(MARKER_VERSION) {
            return Err(format!("marker {text:?} is of another layout than {MARKER_VERSION}"));
        }
        let mut field = |what: &str| {
            parts
                .next()
                .and_then(|part| part.parse::<u64>().ok())
                .ok_or(format!("marker {text:?} lacks a valid {what}"))
        };
        let fd = i32::try_from(field("fd")?).map_err(|_| "the fd is out of range")?;
        let parent =
            u32::try_from(field("parent pid")?).map_err(|_| "the parent pid is out of range")?;
        let worker_id =
            usize::try_from(field("worker id")?).map_err(|_| "the worker id is out of range")?;
        let max_frame = usize::try_from(field("frame limit")?)
            .map_err(|_| "the frame limit is out of range")?;
        let max_memory = Some(field("memory limit")?).filter(|bytes| *bytes > 0);
        if parts.next().is_some() {
            return Err(format!("marker {text:?} has more fields than layout {MARKER_VERSION}"));
        }
        Ok(Marker { fd, parent, worker_id, max_frame, max_memory })
    }
}

/// What the pool tells a worker.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ToWorker<'a> {
    /// Run task `task` with serialized `args`, as job `job`.
    Run { job: u64, task: &'a str, args: &'a [u8] },
    /// Run `count` jobs of task `task`, in order, each taking a job number (and its claim) of its
    /// own as if it came in a `Run` frame of its own: `entries` holds them back to back, each a
    /// job `u64`, its arguments' length `u32` and the arguments (see [`run_entries`]).
    RunMany { task: &'a str, count: usize, entries: &'a [u8] },
    /// Finish: the worker exits after this.
    Exit,
    /// In the job ring: the next frame is too large for the ring; its `len` bytes (after the
    /// length) are at the start of the lane's region, a memory file whose descriptor is on the
    /// socket if `fresh` (a new region, replacing the last one).
    OnShared { len: u64, fresh: bool },
}

/// What a worker tells the pool.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FromWorker<'a> {
    /// The worker is up; sent once, first.
    Ready { version: u16, build: u64, pid: u32 },
    /// Job `job` finished with this reply.
    Done { job: u64, reply: Reply<'a> },
    /// Job `job`, running, sent a progress message (serialized like a task value); it comes
    /// before the job's `Done`, in the order sent.
    Progress { job: u64, message: &'a [u8] },
    /// In the reply ring: the next frame is too large for the ring; its `len` bytes (after the
    /// length) are at the start of the lane's region, a memory file whose descriptor is on the
    /// socket if `fresh` (a new region, replacing the last one).
    OnShared { len: u64, fresh: bool },
}

/// How a job ended in the worker.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply<'a> {
    /// The task returned `Ok`: its serialized output.
    Output(&'a [u8]),
    /// The task returned `Err`: its serialized error.
    Failed(&'a [u8]),
    /// The task panicked.
    Panicked { message: &'a str, location: Option<&'a str>, backtrace: Option<&'a str> },
    /// The arguments did not deserialize as the task's type.
    BadArguments(&'a str),
    /// The worker has no task of that name.
    UnknownTask,
    /// The output (`is_error == false`) or error did not serialize.
    Unserializable { is_error: bool, message: &'a str },
    /// The job was cancelled before it started; it did not run.
    Skipped,
}

impl Reply<'_> {
    /// A short name of the outcome, for traces.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Reply::Output(_) => "ok",
            Reply::Failed(_) => "failed",
            Reply::Panicked { .. } => "panicked",
            Reply::BadArguments(_) => "bad arguments",
            Reply::UnknownTask => "unknown task",
            Reply::Unserializable { .. } => "unserializable",
            Reply::Skipped => "skipped",
        }
    }
}

/// Bytes from a worker that break the protocol.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProtocolError {
    /// A frame longer than the limit.
    Oversized { len: usize, max: usize },
    /// A frame with no tag.
    Empty,
    /// A tag this side does not know.
    UnknownTag(u8),
    /// A body that ends early or holds invalid data.
    Malformed(&'static str),
    /// A frame announced in a lane's region that did not come, or cannot be read safely.
    MemoryFile(String),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Oversized { len, max } => {
                write!(f, "a frame of {len} bytes is over the `max_message_size` of {max} bytes")
            }
            ProtocolError::Empty => f.write_str("an empty frame"),
            ProtocolError::UnknownTag(tag) => write!(f, "a frame with unknown tag {tag}"),
            ProtocolError::Malformed(what) => write!(f, "a malformed frame: {what}"),
            ProtocolError::MemoryFile(what) => write!(f, "a frame in a region: {what}"),
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The other side closed the channel between frames.
    Closed,
    /// The channel failed, or closed in the middle of a frame.
    Io(io::Error),
    /// The bytes break the protocol.
    Protocol(ProtocolError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Closed => f.write_str("the channel was closed"),
            ReadError::Io(error) => write!(f, "the channel failed: {error}"),
            ReadError::Protocol(error) => write!(f, "the worker broke the protocol: {error}"),
        }
    }
}

impl From<ProtocolError> for ReadError {
    fn from(error: ProtocolError) -> Self {
        ReadError::Protocol(error)
    }
}

/// Reads one frame into `buffer` (cleared first), returning its bytes after the length.
pub(crate) fn read_frame<'b>(
    reader: &mut impl Read,
    buffer: &'b mut Vec<u8>,
    max: usize,
) -> Result<&'b [u8], ReadError> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(ReadError::Io(error)),
        }
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(ProtocolError::Oversized { len, max }.into());
    }
    buffer.clear();
    // `take` + `read_to_end` grows the buffer as bytes arrive, not to the announced length.
    let read = reader.take(len as u64).read_to_end(buffer).map_err(ReadError::Io)?;
    if read < len {
        return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(buffer)
}

/// Starts a frame with `tag` in `out` (cleared first); [`finish_frame`] fills in the length.
fn start_frame(out: &mut Vec<u8>, tag: u8) {
    out.clear();
    out.extend_from_slice(&[0, 0, 0, 0, tag]);
}

/// Starts a frame that runs `task` as job `job`; the caller appends the serialized arguments
/// straight after (no copy of them through another buffer), then calls [`finish_frame`].
pub(crate) fn begin_run(out: &mut Vec<u8>, job: u64, task: &str) {
    start_frame(out, RUN);
    out.extend_from_slice(&job.to_le_bytes());
    put_str(out, task);
}

/// Starts a frame that answers job `job` with its output (or, with `is_error`, its error); the
/// caller appends the serialized value, then calls [`finish_frame`].
pub(crate) fn begin_value_reply(out: &mut Vec<u8>, job: u64, is_error: bool) {
    start_frame(out, if is_error { FAILED } else { OUTPUT });
    out.extend_from_slice(&job.to_le_bytes());
}

/// Starts a frame that carries a progress message of job `job`; the caller appends the
/// serialized message, then calls [`finish_frame`].
pub(crate) fn begin_progress(out: &mut Vec<u8>, job: u64) {
    start_frame(out, PROGRESS);
    out.extend_from_slice(&job.to_le_bytes());
}

/// Starts a frame that runs several jobs of `task` (`RunMany`); each is added by
/// [`begin_entry`], its serialized arguments, and [`finish_entry`]; then [`finish_frame`].
pub(crate) fn begin_run_many(out: &mut Vec<u8>, task: &str) {
    start_frame(out, RUN_MANY);
    put_str(out, task);
}

/// Where a `Run` frame of task `task` built by [`begin_run`] has its arguments.
pub(crate) fn run_args_at(task: &str) -> usize {
    4 + 1 + 8 + 4 + task.len()
}

/// How long a `RunMany` frame of task `task` is before its first entry, with its length.
pub(crate) fn run_many_start(task: &str) -> usize {
    4 + 1 + 4 + task.len()
}

/// The `Run` frame (with its length) of the job of `entry`, an entry of a `RunMany` frame of task
/// `task` that this side built.
pub(crate) fn run_of_entry(entry: &[u8], task: &str) -> Vec<u8> {
    let (job, args) = split_entry(entry).map_or((0, &[][..]), |(job, args, _)| (job, args));
    let mut out = Vec::with_capacity(run_args_at(task) + args.len());
    begin_run(&mut out, job, task);
    out.extend_from_slice(args);
    // The job fitted the frame limit in a frame of this length before it shared one.
    let _ = finish_frame(&mut out, usize::MAX);
    out
}

/// Starts the entry of job `job` in a `RunMany` frame; the caller appends its serialized
/// arguments, then calls [`finish_entry`] with what this returned.
pub(crate) fn begin_entry(out: &mut Vec<u8>, job: u64) -> usize {
    out.extend_from_slice(&job.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.len()
}

/// Writes the arguments' length of the entry whose arguments started at `args_at`.
pub(crate) fn finish_entry(out: &mut [u8], args_at: usize) -> Result<(), ProtocolError> {
    let len = out.len() - args_at;
    // Arguments over 4 GiB are over any frame limit: `finish_frame` would refuse the frame.
    let header =
        u32::try_from(len).map_err(|_| ProtocolError::Oversized { len, max: u32::MAX as usize })?;
    out[args_at - 4..args_at].copy_from_slice(&header.to_le_bytes());
    Ok(())
}

/// The jobs of a `RunMany` frame's entries, as `(job, arguments)`, in order: those of a frame
/// [`decode_to_worker`] accepted, which checked every one (an entry that does not fit ends it).
pub(crate) fn run_entries(mut entries: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    std::iter::from_fn(move || {
        let (job, args, rest) = split_entry(entries).ok()?;
        entries = rest;
        Some((job, args))
    })
}

/// The first entry of `entries`, and the rest.
fn split_entry(entries: &[u8]) -> Result<(u64, &[u8], &[u8]), ProtocolError> {
    let mut fields = Fields { rest: entries };
    let job = fields.u64("run many: job id")?;
    let len = u32::from_le_bytes(fields.array("run many: arguments' length")?) as usize;
    let args = fields.bytes(len, "run many: arguments")?;
    Ok((job, args, fields.rest()))
}

/// Writes the length of the frame built in `out`.
pub(crate) fn finish_frame(out: &mut [u8], max: usize) -> Result<(), ProtocolError> {
    let len = out.len() - 4;
    let header = u32::try_from(len)
        .ok()
        .filter(|_| len <= max)
        .ok_or(ProtocolError::Oversized { len, max })?;
    out[..4].copy_from_slice(&header.to_le_bytes());
    Ok(())
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    // Strings we write are task names, panic messages and serde errors; a string over 4 GiB
    // would already be over any frame limit, which `finish_frame` reports.
    out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_optional_str(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.push(0),
        Some(text) => {
            out.push(1);
            put_str(out, text);
        }
    }
}

/// Encodes `message` as one frame into `out`.
pub(crate) fn encode_to_worker(
    message: &ToWorker<'_>,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), ProtocolError> {
    match message {
        ToWorker::Run { job, task, args } => {
            begin_run(out, *job, task);
            out.extend_from_slice(args);
        }
        ToWorker::RunMany { task, entries, .. } => {
            begin_run_many(out, task);
            out.extend_from_slice(entries);
        }
        ToWorker::Exit => start_frame(out, EXIT),
        ToWorker::OnShared { len, fresh } => {
            start_frame(out, ON_SHARED);
            out.extend_from_slice(&len.to_le_bytes());
            out.push(u8::from(*fresh));
        }
    }
    finish_frame(out, max)
}

/// Encodes `message` as one frame into `out`.
pub(crate) fn encode_from_worker(
    message: &FromWorker<'_>,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), ProtocolError> {
    match message {
        FromWorker::Ready { version, build, pid } => {
            start_frame(out, READY);
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(&build.to_le_bytes());
            out.extend_from_slice(&pid.to_le_bytes());
        }
        FromWorker::OnShared { len, fresh } => {
            start_frame(out, ON_SHARED);
            out.extend_from_slice(&len.to_le_bytes());
            out.push(u8::from(*fresh));
        }
        FromWorker::Progress { job, message } => {
            begin_progress(out, *job);
            out.extend_from_slice(message);
        }
        FromWorker::Done { job, reply } => {
            let tag = match reply {
                Reply::Output(_) => OUTPUT,
                Reply::Failed(_) => FAILED,
                Reply::Panicked { .. } => PANICKED,
                Reply::BadArguments(_) => BAD_ARGUMENTS,
                Reply::UnknownTask => UNKNOWN_TASK,
                Reply::Unserializable { .. } => UNSERIALIZABLE,
                Reply::Skipped => SKIPPED,
            };
            start_frame(out, tag);
            out.extend_from_slice(&job.to_le_bytes());
            match reply {
                Reply::Output(bytes) | Reply::Failed(bytes) => out.extend_from_slice(bytes),
                Reply::Panicked { message, location, backtrace } => {
                    put_str(out, message);
                    put_optional_str(out, *location);
                    put_optional_str(out, *backtrace);
                }
                Reply::BadArguments(message) => put_str(out, message),
                Reply::UnknownTask | Reply::Skipped => {}
                Reply::Unserializable { is_error, message } => {
                    out.push(u8::from(*is_error));
                    put_str(out, message);
                }
            }
        }
    }
    finish_frame(out, max)
}

/// Reads fields off a frame body, failing instead of panicking when it ends early.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.rest.len() < n {
            return Err(ProtocolError::Malformed(what));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtocolError> {
        let mut array = [0; N];
        array.copy_from_slice(self.bytes(N, what)?);
        Ok(array)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, ProtocolError> {
        let len = u32::from_le_bytes(self.array(what)?) as usize;
        std::str::from_utf8(self.bytes(len, what)?).map_err(|_| ProtocolError::Malformed(what))
    }

    fn optional_str(&mut self, what: &'static str) -> Result<Option<&'a str>, ProtocolError> {
        match self.bytes(1, what)? {
            [0] => Ok(None),
            [1] => self.str(what).map(Some),
            _ => Err(ProtocolError::Malformed(what)),
        }
    }

    /// An `OnShared` body: the frame's length and whether its region is new.
    fn on_shared(mut self) -> Result<(u64, bool), ProtocolError> {
        let len = self.u64("on shared: length")?;
        let fresh = match self.bytes(1, "on shared: fresh")? {
            [0] => false,
            [1] => true,
            _ => return Err(ProtocolError::Malformed("on shared: fresh")),
        };
        self.end("on shared: trailing bytes")?;
        Ok((len, fresh))
    }

    fn rest(self) -> &'a [u8] {
        self.rest
    }

    fn end(self, what: &'static str) -> Result<(), ProtocolError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Malformed(what))
        }
    }
}

fn split_tag(frame: &[u8]) -> Result<(u8, Fields<'_>), ProtocolError> {
    match frame.split_first() {
        Some((tag, rest)) => Ok((*tag, Fields { rest })),
        None => Err(ProtocolError::Empty),
    }
}

/// Whether a frame body sent to a worker is a `Run` frame, from its tag alone: the worker queues
/// it so and decodes it with [`decode_to_worker`] when it runs it, which rejects it then if its
/// fields are malformed.
pub(crate) fn is_run(frame: &[u8]) -> bool {
    frame.first() == Some(&RUN)
}

/// Whether a frame body sent to a worker is a `RunMany` frame, from its tag alone.
pub(crate) fn is_run_many(frame: &[u8]) -> bool {
    frame.first() == Some(&RUN_MANY)
}

/// Decodes a frame body (as returned by [`read_frame`]) sent to a worker.
pub(crate) fn decode_to_worker(frame: &[u8]) -> Result<ToWorker<'_>, ProtocolError> {
    let (tag, mut fields) = split_tag(frame)?;
    match tag {
        RUN => {
            let job = fields.u64("run: job id")?;
            let task = fields.str("run: task name")?;
            Ok(ToWorker::Run { job, task, args: fields.rest() })
        }
        RUN_MANY => {
            let task = fields.str("run many: task name")?;
            let entries = fields.rest();
            // Every entry is checked here, so that the worker knows how many job numbers the
            // frame takes before it runs any of them.
            let mut rest = entries;
            let mut count = 0;
            while !rest.is_empty() {
                rest = split_entry(rest)?.2;
                count += 1;
            }
            Ok(ToWorker::RunMany { task, count, entries })
        }
        EXIT => fields.end("exit: trailing bytes").map(|()| ToWorker::Exit),
        ON_SHARED => {
            let (len, fresh) = fields.on_shared()?;
            Ok(ToWorker::OnShared { len, fresh })
        }
        other => Err(ProtocolError::UnknownTag(other)),
    }
}

/// Decodes a frame body (as returned by [`read_frame`]) sent by a worker.
pub(crate) fn decode_from_worker(frame: &[u8]) -> Result<FromWorker<'_>, ProtocolError> {
    let (tag, mut fields) = split_tag(frame)?;
    if tag == READY {
        let version = u16::from_le_bytes(fields.array("ready: version")?);
        let build = fields.u64("ready: build")?;
        let pid = u32::from_le_bytes(fields.array("ready: pid")?);
        fields.end("ready: trailing bytes")?;
        return Ok(FromWorker::Ready { version, build, pid });
    }
    if tag == ON_SHARED {
        let (len, fresh) = fields.on_shared()?;
        return Ok(FromWorker::OnShared { len, fresh });
    }
    if tag == PROGRESS {
        let job = fields.u64("progress: job id")?;
        return Ok(FromWorker::Progress { job, message: fields.rest() });
    }
    let job = match tag {
        OUTPUT | FAILED | PANICKED | BAD_ARGUMENTS | UNKNOWN_TASK | UNSERIALIZABLE | SKIPPED => {
            fields.u64("done: job id")?
        }
        other => return Err(ProtocolError::UnknownTag(other)),
    };
    let reply = match tag {
        OUTPUT => Reply::Output(fields.rest()),
        FAILED => Reply::Failed(fields.rest()),
        PANICKED => {
            let message = fields.str("panicked: message")?;
            let location = fields.optional_str("panicked: location")?;
            let backtrace = fields.optional_str("panicked: backtrace")?;
            fields.end("panicked: trailing bytes")?;
            Reply::Panicked { message, location, backtrace }
        }
        BAD_ARGUMENTS => {
            let message = fields.str("bad arguments: message")?;
            fields.end("bad arguments: trailing bytes")?;
            Reply::BadArguments(message)
        }
        UNKNOWN_TASK => {
            fields.end("unknown task: trailing bytes")?;
            Reply::UnknownTask
        }
        SKIPPED => {
            fields.end("skipped: trailing bytes")?;
            Reply::Skipped
        }
        _ => {
            let is_error = match fields.bytes(1, "unserializable: which")? {
                [0] => false,
                [1] => true,
                _ => return Err(ProtocolError::Malformed("unserializable: which")),
            };
            let message = fields.str("unserializable: message")?;
            fields.end("unserializable: trailing bytes")?;
            Reply::Unserializable { is_error, message }
        }
    };
    Ok(FromWorker::Done { job, reply })
}

/// Serializes a task value (arguments, output or error), appending to the frame that `out` holds
/// (begun by [`begin_run`] or [`begin_value_reply`]), which may not grow longer than `max`.
///
/// A value over the limit is refused as soon as writing it crosses the limit, so that a value of
/// gigabytes costs no more than `max` bytes of work before it is refused.
pub(crate) fn encode_value<T: Encode + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), String> {
    // The frame's length header is not part of its length.
    value.encode(out, max.saturating_add(4)).map_err(|error| error.describe(max))
}

/// Deserializes a task value (a `Vec<u8>` from one byte string, see [`crate::value`]).
pub(crate) fn decode_value<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    wire_value::decode(bytes)
}

/// Runs `f` with a type-erased deserializer over `bytes`.
#[cfg(test)]
pub(crate) fn with_deserializer<R>(
    bytes: &[u8],
    f: impl FnOnce(&mut dyn erased_serde::Deserializer<'_>) -> R,
) -> R {
    let mut deserializer = wire_value::Deserializer::new(bytes);
    f(&mut <dyn erased_serde::Deserializer<'_>>::erase(&mut deserializer))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_MAX_FRAME: usize = 1 << 30;

    fn frame_of_to_worker(message: &ToWorker<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_to_worker(message, &mut out, DEFAULT_MAX_FRAME).unwrap();
        out
    }

    fn frame_of_from_worker(message: &FromWorker<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_from_worker(message, &mut out, DEFAULT_MAX_FRAME).unwrap();
        out
    }

    fn read_one(bytes: &[u8], max: usize) -> Result<Vec<u8>, ReadError> {
        let mut buffer = Vec::new();
        read_frame(&mut &bytes[..], &mut buffer, max).map(<[u8]>::to_vec)
    }

    #[test]
    fn the_marker_round_trips_and_refuses_garbage() {
        use std::ffi::OsStr;
        for max_memory in [None, Some(1 << 30)] {
            let marker = Marker { fd: 0, parent: 77, worker_id: 2, max_frame: 1 << 20, max_memory };
            assert_eq!(Marker::parse(OsStr::new(&marker.to_value())), Ok(marker));
        }
        for bad in [
            "",
            "1:3:4:77:2:5",
            "2:3:4:77",
            "2:x:4:77:2:5",
            "2:3:4:77:2:5:",
            "2:99999999999:4:1:1:1",
            "2:3:99999999999:1:1:1",
        ] {
            assert!(Marker::parse(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn messages_to_a_worker_round_trip() {
        for message in [
            ToWorker::Run { job: 7, task: "a::b", args: &[1, 2, 3] },
            ToWorker::Run { job: u64::MAX, task: "", args: &[] },
            ToWorker::Exit,
            ToWorker::OnShared { len: 1 << 30, fresh: true },
            ToWorker::OnShared { len: 5, fresh: false },
        ] {
            let frame = frame_of_to_worker(&message);
            let body = read_one(&frame, DEFAULT_MAX_FRAME).unwrap();
            assert_eq!(decode_to_worker(&body).unwrap(), message);
        }
    }

    /// A `RunMany` frame of `task` with `jobs`, built as the pool's slots build it.
    fn run_many(task: &str, jobs: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        begin_run_many(&mut out, task);
        for (job, args) in jobs {
            let args_at = begin_entry(&mut out, *job);
            out.extend_from_slice(args);
            finish_entry(&mut out, args_at).unwrap();
        }
        finish_frame(&mut out, DEFAULT_MAX_FRAME).unwrap();
        out
    }

    #[test]
    fn several_jobs_share_a_frame_and_each_comes_out_as_sent() {
        let jobs: [(u64, &[u8]); 3] = [(7, &[1, 2, 3]), (u64::MAX, &[]), (9, &[0xc0])];
        let frame = run_many("a::b", &jobs);
        let body = read_one(&frame, DEFAULT_MAX_FRAME).unwrap();
        assert!(is_run_many(&body) && !is_run(&body));
        let Ok(ToWorker::RunMany { task, count, entries }) = decode_to_worker(&body) else {
            panic!("{:?}", decode_to_worker(&body));
        };
        assert_eq!((task, count), ("a::b", 3));
        assert_eq!(run_entries(entries).collect::<Vec<_>>(), jobs);
        // The encoder writes the same frame from the decoded message.
        let message = ToWorker::RunMany { task, count, entries };
        assert_eq!(frame_of_to_worker(&message), frame);
        // Each entry, sent again alone, is the `Run` frame of its job.
        let mut rest = entries;
        for (job, args) in jobs {
            let entry_len = ENTRY_HEADER + args.len();
            let alone = run_of_entry(&rest[..entry_len], task);
            assert_eq!(alone, frame_of_to_worker(&ToWorker::Run { job, task, args }));
            assert_eq!(alone.len(), run_args_at(task) + args.len());
            rest = &rest[entry_len..];
        }
        assert_eq!(run_many_start(task), frame.len() - entries.len());
    }

    #[test]
    fn a_run_many_frame_with_a_broken_entry_is_refused_whole() {
        let frame = run_many("t", &[(1, &[5; 10]), (2, &[6; 3])]);
        let body = &frame[4..];
        for cut in 1..body.len() {
            let decoded = decode_to_worker(&body[..cut]);
            // A cut between two entries leaves a shorter valid frame; anywhere else, an error.
            let at_boundary = cut == 6 || cut == 6 + ENTRY_HEADER + 10;
            assert_eq!(decoded.is_ok(), at_boundary, "cut at {cut}: {decoded:?}");
        }
        // An entry whose length runs past the frame: refused, nothing allocated for it.
        let mut lying = body.to_vec();
        lying[6 + 8..6 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_to_worker(&lying), Err(ProtocolError::Malformed("run many: arguments")));
    }

    #[test]
    fn messages_from_a_worker_round_trip() {
        let replies = [
            Reply::Output(&[9, 9]),
            Reply::Failed(&[]),
            Reply::Panicked { message: "boom", location: Some("src/x.rs:1:2"), backtrace: None },
            Reply::Panicked { message: "", location: None, backtrace: Some("bt") },
            Reply::BadArguments("missing field `x`"),
            Reply::UnknownTask,
            Reply::Unserializable { is_error: true, message: "nope" },
            Reply::Skipped,
        ];
        let mut messages = vec![
            FromWorker::Ready { version: VERSION, build: 42, pid: 1234 },
            FromWorker::OnShared { len: 300 << 10, fresh: false },
            FromWorker::OnShared { len: 0, fresh: true },
            FromWorker::Progress { job: 9, message: &[1, 2, 3] },
            FromWorker::Progress { job: 0, message: &[] },
        ];
        messages.extend(replies.into_iter().map(|reply| FromWorker::Done { job: 3, reply }));
        for message in messages {
            let frame = frame_of_from_worker(&message);
            let body = read_one(&frame, DEFAULT_MAX_FRAME).unwrap();
            assert_eq!(decode_from_worker(&body).unwrap(), message);
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_before_reading_its_body() {
        let frame = frame_of_to_worker(&ToWorker::Run { job: 1, task: "t", args: &[0; 100] });
        match read_one(&frame, 50) {
            Err(ReadError::Protocol(ProtocolError::Oversized { len, max: 50 })) => {
                assert_eq!(len, frame.len() - 4);
            }
            other => panic!("{other:?}"),
        }
        // A length of 4 GiB with no bytes behind it allocates nothing and fails cleanly.
        let lying = u32::MAX.to_le_bytes();
        assert!(matches!(read_one(&lying, usize::MAX), Err(ReadError::Io(_))));
        let mut out = Vec::new();
        let message = ToWorker::Run { job: 1, task: "t", args: &[0; 100] };
        assert!(matches!(
            encode_to_worker(&message, &mut out, 50),
            Err(ProtocolError::Oversized { .. })
        ));
    }

    #[test]
    fn truncated_and_empty_input() {
        assert!(matches!(read_one(&[], 100), Err(ReadError::Closed)));
        assert!(matches!(read_one(&[5, 0], 100), Err(ReadError::Io(_))));
        assert!(matches!(read_one(&[5, 0, 0, 0, READY, 1], 100), Err(ReadError::Io(_))));
        assert_eq!(decode_from_worker(&[]), Err(ProtocolError::Empty));
        assert_eq!(decode_from_worker(&[99]), Err(ProtocolError::UnknownTag(99)));
        assert_eq!(
            decode_from_worker(&[READY, 1]),
            Err(ProtocolError::Malformed("ready: version"))
        );
        let frame = frame_of_from_worker(&FromWorker::Done {
            job: 1,
            reply: Reply::Panicked { message: "m", location: None, backtrace: None },
        });
        for cut in 5..frame.len() - 1 {
            assert!(decode_from_worker(&frame[4..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_string_length_beyond_the_frame_is_malformed() {
        let mut body = vec![BAD_ARGUMENTS];
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_from_worker(&body),
            Err(ProtocolError::Malformed("bad arguments: message"))
        );
    }

    mod untrusted {
        //! Random, truncated and mutated bytes from a worker, fed to the pool's side: never a
        //! panic, never an allocation beyond the frame limit, never a hang (input is finite, and
        //! every read either consumes bytes or ends).

        use super::*;
        use crate::alloc_probe::largest_allocation;
        use proptest::prelude::*;

        const LIMIT: usize = 4096;

        /// Reads frames from `bytes` until they end or break the protocol, decoding each.
        fn consume(bytes: &[u8]) -> usize {
            let mut reader = bytes;
            let mut buffer = Vec::new();
            let mut frames = 0;
            while let Ok(body) = read_frame(&mut reader, &mut buffer, LIMIT) {
                let _ = decode_from_worker(body);
                frames += 1;
            }
            frames
        }

        fn valid_frames() -> impl Strategy<Value = Vec<u8>> {
            let reply = prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| (0u8, b, String::new())),
                ".{0,40}".prop_map(|m| (1u8, Vec::new(), m)),
                Just((2u8, Vec::new(), String::new())),
            ];
            proptest::collection::vec((any::<u64>(), reply), 0..8).prop_map(|replies| {
                let mut stream = Vec::new();
                let mut frame = Vec::new();
                for (job, (kind, bytes, message)) in replies {
                    let reply = match kind {
                        0 => Reply::Output(&bytes),
                        1 => Reply::Panicked {
                            message: &message,
                            location: Some("a.rs:1:1"),
                            backtrace: None,
                        },
                        _ => Reply::Skipped,
                    };
                    encode_from_worker(&FromWorker::Done { job, reply }, &mut frame, LIMIT)
                        .unwrap();
                    stream.extend_from_slice(&frame);
                }
                stream
            })
        }

        proptest! {
            #[test]
            fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let (_, largest) = largest_allocation(|| consume(&bytes));
                prop_assert!(largest <= 2 * LIMIT, "allocated {largest} bytes");
            }

            #[test]
            fn mutated_frames(
                stream in valid_frames(),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut stream = stream;
                if !stream.is_empty() {
                    for (index, byte) in flips {
                        let at = index.index(stream.len());
                        stream[at] ^= byte;
                    }
                    stream.truncate(cut.index(stream.len() + 1));
                }
                let (_, largest) = largest_allocation(|| consume(&stream));
                prop_assert!(largest <= 2 * LIMIT, "allocated {largest} bytes");
            }

            /// The worker queues a frame as a job by its tag alone (`is_run`) and decodes it when
            /// it runs it: a frame `is_run` passes must be a `Run` or an error, never an `Exit`
            /// or `OnShared`, and one it refuses never a `Run`.
            #[test]
            fn a_frame_queued_by_its_tag_decodes_as_a_run_or_fails(
                tag in prop_oneof![Just(RUN), Just(RUN_MANY), Just(EXIT), Just(ON_SHARED), any::<u8>()],
                rest in proptest::collection::vec(any::<u8>(), 0..32),
            ) {
                let body = [&[tag][..], &rest].concat();
                let decoded = decode_to_worker(&body);
                if is_run(&body) {
                    prop_assert!(matches!(decoded, Ok(ToWorker::Run { .. }) | Err(_)), "{decoded:?}");
                } else {
                    prop_assert!(!matches!(decoded, Ok(ToWorker::Run { .. })), "{decoded:?}");
                }
                if is_run_many(&body) {
                    prop_assert!(
                        matches!(decoded, Ok(ToWorker::RunMany { .. }) | Err(_)),
                        "{decoded:?}"
                    );
                } else {
                    prop_assert!(!matches!(decoded, Ok(ToWorker::RunMany { .. })), "{decoded:?}");
                }
                // A frame accepted counts exactly the entries the worker then takes out of it.
                if let Ok(ToWorker::RunMany { count, entries, .. }) = decoded {
                    prop_assert_eq!(run_entries(entries).count(), count);
                }
            }

            /// Any jobs sharing a frame come out as they went in; any bytes flipped in such a
            /// frame give an error or a frame whose count is what its entries hold, never a panic.
            #[test]
            fn run_many_frames_round_trip_and_survive_mutation(
                jobs in proptest::collection::vec(
                    (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..24)),
                    0..12,
                ),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            ) {
                let borrowed: Vec<(u64, &[u8])> =
                    jobs.iter().map(|(job, args)| (*job, &args[..])).collect();
                let frame = super::run_many("t::u", &borrowed);
                let body = &frame[4..];
                let Ok(ToWorker::RunMany { task, count, entries }) = decode_to_worker(body) else {
                    panic!("a frame we built does not decode");
                };
                prop_assert_eq!((task, count), ("t::u", jobs.len()));
                prop_assert_eq!(run_entries(entries).collect::<Vec<_>>(), borrowed);
                let mut mutated = body.to_vec();
                for (at, byte) in flips {
                    let at = at.index(mutated.len());
                    mutated[at] = byte;
                }
                if let Ok(ToWorker::RunMany { count, entries, .. }) = decode_to_worker(&mutated) {
                    prop_assert_eq!(run_entries(entries).count(), count);
                }
            }

            #[test]
            fn lying_lengths(len in any::<u32>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
                let mut stream = len.to_le_bytes().to_vec();
                stream.extend_from_slice(&tail);
                let (_, largest) = largest_allocation(|| consume(&stream));
                prop_assert!(largest <= 2 * LIMIT, "a length of {len} allocated {largest} bytes");
            }
        }

        #[test]
        fn valid_frames_survive_the_round_trip() {
            let mut frame = Vec::new();
            let reply = Reply::Output(b"abc");
            encode_from_worker(&FromWorker::Done { job: 5, reply }, &mut frame, LIMIT).unwrap();
            let stream = [frame.clone(), frame].concat();
            assert_eq!(consume(&stream), 2);
        }
    }

    #[test]
    fn too_deep_arguments_are_an_error_in_the_worker() {
        // What the worker's registry does with a job's arguments (`registry::run_erased`): the
        // error becomes its `BadArguments` reply, and the worker lives on.
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)] // only ever read, never looked at
        enum Nest {
            Leaf,
            Node(Box<Nest>),
        }
        let mut bytes = [0x81, 0xa4, b'N', b'o', b'd', b'e'].repeat(50_000);
        bytes.push(0xa4);
        bytes.extend_from_slice(b"Leaf");
        let error =
            with_deserializer(&bytes, |input| erased_serde::deserialize::<Nest>(input).map(|_| ()))
                .unwrap_err()
                .to_string();
        assert!(error.contains(&format!("limit of {} levels", wire_value::MAX_DEPTH)), "{error}");
    }

    #[test]
    fn values_round_trip_in_every_serde_shape() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Inner {
            a: u8,
            #[serde(skip_serializing_if = "Option::is_none", default)]
            b: Option<String>,
        }
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Outer {
            #[serde(flatten)]
            inner: Inner,
            extra: serde_json::Value,
        }
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(i64),
            Text(String),
        }
        let outer =
            Outer { inner: Inner { a: 1, b: None }, extra: serde_json::json!({"k": [1, "x"]}) };
        let mut bytes = Vec::new();
        encode_value(&outer, &mut bytes, usize::MAX).unwrap();
        assert_eq!(decode_value::<Outer>(&bytes).unwrap(), outer);
        for either in [Either::Number(-3), Either::Text("t".into())] {
            let mut bytes = Vec::new();
            encode_value(&either, &mut bytes, usize::MAX).unwrap();
            assert_eq!(decode_value::<Either>(&bytes).unwrap(), either);
        }
        assert!(decode_value::<Outer>(&[0xc1]).is_err());
    }
}
