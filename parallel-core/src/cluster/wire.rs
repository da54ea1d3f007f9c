//! What callers and serving processes say to each other through NATS: the subjects, the headers
//! and the bodies. The only code of the cluster backend that knows bytes.
//!
//! | subject | from → to | what |
//! | --- | --- | --- |
//! | `NS.task.FP.CALLER` (stream `NS_tasks`) | caller → a serving slot | a task: the task value as [`wire_value`] writes it; or a parcel of several short tasks ([`CALLS`]), their values framed one after the other ([`pack`]) |
//! | `NS.reply.CALLER` | serving process → that caller | `started`, `alive`, `progress`, then one ending |
//! | `NS.claim.CALLER` (request) | serving process → that caller | which calls of a message delivered again may run? |
//! | `NS.cancel` | caller → every serving process | stop tasks (the calls in the body, or all of the caller's): never start them, or kill their slots |
//! | `NS.resend` | a caller that reconnected → every serving process | send my recent replies again |
//!
//! `FP` is the task's fingerprint (its name, signature and Rust types, see
//! [`Registration::fingerprint`](crate::registry::Registration::fingerprint)): a serving process
//! consumes the subjects of its own tasks only, so a task is never run by code of another
//! signature. Task messages carry the call (`job.attempt`), the caller's reply subject, the
//! task's name and its time limit in headers; a reply carries its kind and call in headers, and
//! a value or a [`wire_value`] report in its body. Everything that arrives is untrusted: a header
//! or body that does not parse is an error for that message, never a panic.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::wire_value;

/// The call a message is about: a job and its attempt.
pub(crate) const CALL: &str = "Parallel-Call";
/// Where the serving process sends a task's replies.
pub(crate) const REPLY: &str = "Parallel-Reply";
/// The task's name (for messages and dead letters; routing is by subject).
pub(crate) const TASK: &str = "Parallel-Task";
/// The attempt's time limit in milliseconds, if the task has one.
pub(crate) const TIMEOUT: &str = "Parallel-Timeout";
/// A reply's kind: one of [`Kind`]'s names.
pub(crate) const KIND: &str = "Parallel-Kind";
/// Which slot took a task: `pid@host`.
pub(crate) const SLOT: &str = "Parallel-Slot";
/// How often a serving process says its tasks are alive, in milliseconds.
pub(crate) const LEASE: &str = "Parallel-Lease";
/// On a cancel: every task of the caller (its pool was killed), not the calls in the body.
pub(crate) const EVERY: &str = "Parallel-Every";
/// On a claim request: the calls in the body were said to have started but their worker never
/// started them, and they go back to the stream (the caller forgets that they started).
pub(crate) const HANDED_BACK: &str = "Parallel-Handed-Back";
/// On a task message that carries several tasks (a parcel): their calls, in the order of their
/// values in the body (in place of [`CALL`]). On a claim request: the calls asked about, and the
/// answer names those that may run.
pub(crate) const CALLS: &str = "Parallel-Calls";
/// The version of the task messages, in their subjects and their consumers' names: a serving
/// process of a build that reads another version never takes them (one before parcels would
/// dead-letter a parcel as garbled, and its callers would wait for ever), and a task waits in the
/// stream for a serving process that reads it, as a task of another signature does. `w2`:
/// parcels ([`CALLS`]); `w1`, which had no token, single tasks only.
pub(crate) const TASK_WIRE: &str = "w2";
/// How many tasks one parcel carries at most.
pub(crate) const PARCEL_TASKS: usize = 16;
/// How many calls one cancel message names at most (each at most 31 bytes: far below any
/// server's message limit).
pub(crate) const CANCELS_PER_MESSAGE: usize = 1024;

/// The subjects of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    namespace: String,
}

impl Names {
    /// The subjects of `namespace`, which [`check_namespace`] accepted.
    pub(crate) fn new(namespace: &str) -> Self {
        Names { namespace: namespace.to_owned() }
    }

    /// The object store of values beyond the server's message limit.
    pub(crate) fn bucket(&self) -> String {
        format!("{}_payloads", self.namespace)
    }

    /// The stream that holds the tasks waiting for a slot.
    pub(crate) fn stream(&self) -> String {
        format!("{}_tasks", self.namespace)
    }

    /// Every task subject, for the stream.
    pub(crate) fn all_tasks(&self) -> String {
        format!("{}.task.>", self.namespace)
    }

    /// The subject of a task with fingerprint `fingerprint` that `caller` sends: the caller is
    /// part of it so that a killed pool's queued tasks go in one purge (`caller_tasks`), and the
    /// version of the task messages ([`TASK_WIRE`]) beside the fingerprint.
    pub(crate) fn task(&self, fingerprint: u64, caller: &str) -> String {
        format!("{}.task.{fingerprint:016x}-{TASK_WIRE}.{caller}", self.namespace)
    }

    /// Every subject of the tasks with fingerprint `fingerprint`, whoever sends them.
    pub(crate) fn tasks_of(&self, fingerprint: u64) -> String {
        format!("{}.task.{fingerprint:016x}-{TASK_WIRE}.*", self.namespace)
    }

    /// Every subject of the tasks that `caller` sends.
    pub(crate) fn caller_tasks(&self, caller: &str) -> String {
        format!("{}.task.*.{caller}", self.namespace)
    }

    /// The durable consumer that the serving processes of one task share. (Named `tasks-`
    /// since task subjects name their caller: a consumer of an older build, named `task-`, with
    /// a filter no task matches now, is not taken for it.)
    pub(crate) fn consumer(fingerprint: u64) -> String {
        format!("tasks-{fingerprint:016x}-{TASK_WIRE}")
    }

    pub(crate) fn reply(&self, caller: &str) -> String {
        format!("{}.reply.{caller}", self.namespace)
    }

    pub(crate) fn claim(&self, caller: &str) -> String {
        format!("{}.claim.{caller}", self.namespace)
    }

    /// Where a caller that reconnected asks the serving processes for its recent replies.
    pub(crate) fn resend(&self) -> String {
        format!("{}.resend", self.namespace)
    }

    pub(crate) fn cancel(&self) -> String {
        format!("{}.cancel", self.namespace)
    }

    /// Where task messages that no caller can be told about are kept.
    pub(crate) fn dead(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    pub(crate) fn dead_stream(&self) -> String {
        format!("{}_dead", self.namespace)
    }
}

/// Checks a namespace: it names subjects, a stream and a bucket, so letters, digits, `-` and `_`.
pub(crate) fn check_namespace(namespace: &str) -> Result<(), String> {
    let is_valid = !namespace.is_empty()
        && namespace.len() <= 64
        && namespace
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_'));
    if is_valid {
        Ok(())
    } else {
        Err(format!(
            "namespace {namespace:?} must be 1 to 64 letters, digits, `-` or `_` (it names NATS \
             subjects and a stream)"
        ))
    }
}

/// One attempt of one job of one caller: `job.attempt` in headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CallId {
    pub(crate) job: u64,
    pub(crate) attempt: u32,
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.job, self.attempt)
    }
}

impl CallId {
    pub(crate) fn parse(text: &str) -> Result<CallId, String> {
        let (job, attempt) = text.split_once('.').ok_or_else(|| format!("bad call {text:?}"))?;
        match (job.parse(), attempt.parse()) {
            (Ok(job), Ok(attempt)) => Ok(CallId { job, attempt }),
            _ => Err(format!("bad call {text:?}")),
        }
    }

    /// A list of calls, for `alive`: `1.1,7.2`.
    pub(crate) fn join(calls: &[CallId]) -> String {
        calls.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }

    pub(crate) fn split(text: &str) -> Result<Vec<CallId>, String> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        text.split(',').map(CallId::parse).collect()
    }
}

/// Appends one framed message to a progress reply's body.
pub(crate) fn push_frame(body: &mut Vec<u8>, message: &[u8]) {
    // A progress message is within the server's message limit, far below 4 GiB.
    body.extend_from_slice(&(message.len() as u32).to_le_bytes());
    body.extend_from_slice(message);
}

/// The framed messages of a progress reply's body, in order; an error for a body cut short.
pub(crate) fn frames(mut body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut frames = Vec::new();
    while !body.is_empty() {
        let Some((length, rest)) = body.split_first_chunk::<4>() else {
            return Err("a progress frame's length is cut short".to_owned());
        };
        let length = u32::from_le_bytes(*length) as usize;
        if rest.len() < length {
            return Err(format!("a progress frame of {length} bytes has {} left", rest.len()));
        }
        let (frame, rest) = rest.split_at(length);
        frames.push(frame);
        body = rest;
    }
    Ok(frames)
}

/// A parcel's body: each task's value framed (see [`push_frame`]), in the order of its calls.
pub(crate) fn pack<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    for value in values {
        push_frame(&mut body, value);
    }
    body
}

/// Where each of a parcel's `calls` values is in `body` (a byte range, so that each task's value
/// is a slice of the message's own bytes), or why it has none. The body is untrusted: a frame cut
/// short spoils its call and every call after it (where they start cannot be told), the calls
/// before it keep their values; a body with more values than calls names no call it could belong
/// to, so every call has that error. Nothing is allocated by a length read from the body.
pub(crate) fn unpack(calls: usize, body: &[u8]) -> Vec<Result<std::ops::Range<usize>, String>> {
    let mut values = Vec::with_capacity(calls);
    let mut at = 0;
    while values.len() < calls {
        let rest = &body[at..];
        let Some((length, _)) = rest.split_first_chunk::<4>() else {
            let why = if rest.is_empty() {
                format!("the parcel carries {} values for {calls} calls", values.len())
            } else {
                "the parcel's body is cut short in a value's length".to_owned()
            };
            values.resize_with(calls, || Err(why.clone()));
            return values;
        };
        let length = u32::from_le_bytes(*length) as usize;
        if rest.len() - 4 < length {
            let why = format!(
                "a value of {length} bytes in the parcel's body has {} left",
                rest.len() - 4
            );
            values.resize_with(calls, || Err(why.clone()));
            return values;
        }
        values.push(Ok(at + 4..at + 4 + length));
        at += 4 + length;
    }
    if at < body.len() {
        let why = format!("the parcel carries more values than its {calls} calls");
        return (0..calls).map(|_| Err(why.clone())).collect();
    }
    values
}

/// Appends one task's ending to the body of an `endings` reply.
pub(crate) fn push_ending(body: &mut Vec<u8>, call: CallId, kind: Kind, ending: &[u8]) {
    push_frame(body, call.to_string().as_bytes());
    push_frame(body, kind.name().as_bytes());
    push_frame(body, ending);
}

/// A call and its ending as an `endings` reply carries it (`Err`: it does not decode).
pub(crate) type CallEnding = (CallId, Result<Ending, String>);

/// The endings an `endings` reply carries, each with its call (an ending that does not parse is
/// an error for its call alone); an error for a body whose frames do not parse, where no call
/// can be told apart (those tasks are reported lost when their lease passes without word).
pub(crate) fn endings(body: &[u8]) -> Result<Vec<CallEnding>, String> {
    let frames = frames(body)?;
    if frames.len() % 3 != 0 {
        return Err(format!("{} frames are not whole endings", frames.len()));
    }
    let mut endings = Vec::with_capacity(frames.len() / 3);
    for triple in frames.chunks_exact(3) {
        let call = std::str::from_utf8(triple[0])
            .map_err(|error| error.to_string())
            .and_then(CallId::parse)?;
        let kind = std::str::from_utf8(triple[1]).ok().and_then(Kind::parse);
        let ending = kind
            .and_then(|kind| Ending::from_message(kind, triple[2].to_vec()))
            .unwrap_or_else(|| Err("an ending of no known kind".to_owned()));
        endings.push((call, ending));
    }
    Ok(endings)
}

/// A duration in whole milliseconds, as headers carry it.
pub(crate) fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

pub(crate) fn parse_millis(text: &str) -> Result<Duration, String> {
    text.parse::<u64>().map(Duration::from_millis).map_err(|_| format!("bad duration {text:?}"))
}

/// What a serving process says about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Slots took the tasks whose calls are in the body; [`SLOT`] and [`LEASE`] say whose, and
    /// how often it reports.
    Started,
    /// The calls in the body run still.
    Alive,
    /// Progress messages of the running task, in order: each a little-endian `u32` length and
    /// the message (one reply carries those the outbox had at once).
    Progress,
    /// The task returned `Ok`; the body is its output.
    Output,
    /// The task returned `Err`; the body is its error.
    Failed,
    /// The task ended otherwise; the body is a [`Report`].
    Ended,
    /// Several tasks ended: for each, three frames (see [`push_frame`]): its call, the kind of
    /// its ending (`output`, `failed` or `ended`) and that ending's body.
    Endings,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Started,
        Kind::Alive,
        Kind::Progress,
        Kind::Output,
        Kind::Failed,
        Kind::Ended,
        Kind::Endings,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Started => "started",
            Kind::Alive => "alive",
            Kind::Progress => "progress",
            Kind::Output => "output",
            Kind::Failed => "failed",
            Kind::Ended => "ended",
            Kind::Endings => "endings",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == text)
    }
}

/// How a task ended on a serving slot, as its caller learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The task returned `Ok`: its output, serialized.
    Output(Vec<u8>),
    /// The task returned `Err`: its error, serialized.
    Failed(Vec<u8>),
    /// Any other end.
    Report(Report),
}

/// How a task ended when it returned nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Report {
    Panicked {
        message: String,
        location: Option<String>,
        backtrace: Option<String>,
    },
    /// The task value did not deserialize on the slot.
    BadArguments(String),
    /// The output or error did not serialize on the slot.
    Unserializable {
        is_error: bool,
        message: String,
    },
    /// The slot's worker process died running it.
    Died {
        pid: u32,
        reason: String,
        stderr_tail: String,
    },
    /// No worker process could be started for it.
    Unavailable(String),
    /// The attempt ran past its time limit and its slot was stopped.
    TimedOut,
}

impl Ending {
    /// The ending as a reply's kind and body.
    pub(crate) fn into_message(self) -> (Kind, Vec<u8>) {
        match self {
            Ending::Output(bytes) => (Kind::Output, bytes),
            Ending::Failed(bytes) => (Kind::Failed, bytes),
            Ending::Report(report) => {
                let mut body = Vec::new();
                // A report is strings and integers: it always serializes, within any limit.
                wire_value::encode(&report, &mut body, usize::MAX)
                    .unwrap_or_else(|_| unreachable!("a report always serializes"));
                (Kind::Ended, body)
            }
        }
    }

    /// The ending a reply of `kind` with `body` says; `None` for a kind that is no ending.
    pub(crate) fn from_message(kind: Kind, body: Vec<u8>) -> Option<Result<Ending, String>> {
        match kind {
            Kind::Output => Some(Ok(Ending::Output(body))),
            Kind::Failed => Some(Ok(Ending::Failed(body))),
            Kind::Ended => Some(wire_value::decode(&body).map(Ending::Report)),
            Kind::Started | Kind::Alive | Kind::Progress | Kind::Endings => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_round_trip_and_garbage_is_an_error() {
        let call = CallId { job: 42, attempt: 3 };
        assert_eq!(call.to_string(), "42.3");
        assert_eq!(CallId::parse("42.3"), Ok(call));
        for bad in ["", "42", "42.", ".3", "a.b", "1.99999999999", "-1.2", "1.2.3"] {
            assert!(CallId::parse(bad).is_err(), "{bad}");
        }
        let calls = [call, CallId { job: 7, attempt: 1 }];
        assert_eq!(CallId::split(&CallId::join(&calls)), Ok(calls.to_vec()));
        assert_eq!(CallId::split(""), Ok(Vec::new()));
        assert!(CallId::split("1.1,,2.2").is_err());
    }

    #[test]
    fn endings_round_trip_and_garbage_is_an_error() {
        let endings = [
            Ending::Output(vec![1, 2, 3]),
            Ending::Failed(Vec::new()),
            Ending::Report(Report::Panicked {
                message: "boom".into(),
                location: Some("src/main.rs:1:1".into()),
                backtrace: None,
            }),
            Ending::Report(Report::BadArguments("missing field `a`".into())),
            Ending::Report(Report::Unserializable { is_error: true, message: "no".into() }),
            Ending::Report(Report::Died {
                pid: 7,
                reason: "killed by signal 9".into(),
                stderr_tail: "x".into(),
            }),
            Ending::Report(Report::Unavailable("cannot start".into())),
            Ending::Report(Report::TimedOut),
        ];
        for ending in endings {
            let (kind, body) = ending.clone().into_message();
            assert_eq!(Ending::from_message(kind, body), Some(Ok(ending)));
        }
        for garbage in [&b""[..], b"\xc1", b"\x92\x01\x02", &[0xff; 64]] {
            assert!(Ending::from_message(Kind::Ended, garbage.to_vec()).unwrap().is_err());
        }
        assert_eq!(Ending::from_message(Kind::Alive, Vec::new()), None);
    }

    #[test]
    fn progress_frames_round_trip_and_a_cut_body_is_an_error() {
        let mut body = Vec::new();
        for message in [&b"one"[..], b"", &[7; 300]] {
            push_frame(&mut body, message);
        }
        assert_eq!(frames(&body), Ok(vec![&b"one"[..], b"", &[7; 300]]));
        assert_eq!(frames(&[]), Ok(Vec::new()));
        for cut in 1..body.len() {
            let parsed = frames(&body[..cut]);
            // A cut at a frame's end is a shorter list; anywhere else, an error.
            assert!(parsed.is_err() || [7, 11].contains(&cut), "{cut}: {parsed:?}");
        }
        assert!(frames(&[0xff, 0xff, 0xff, 0xff, 1]).is_err());
    }

    #[test]
    fn endings_travel_together_and_a_bad_one_spoils_the_reply() {
        let first = CallId { job: 1, attempt: 1 };
        let second = CallId { job: 9, attempt: 2 };
        let report = Ending::Report(Report::TimedOut);
        let mut body = Vec::new();
        push_ending(&mut body, first, Kind::Output, &[1, 2]);
        let (kind, bytes) = report.clone().into_message();
        push_ending(&mut body, second, kind, &bytes);
        assert_eq!(
            endings(&body),
            Ok(vec![(first, Ok(Ending::Output(vec![1, 2]))), (second, Ok(report))])
        );
        let mut bad = Vec::new();
        push_ending(&mut bad, first, Kind::Alive, &[]);
        assert!(matches!(&endings(&bad).unwrap()[..], [(call, Err(_))] if *call == first));
        assert!(endings(&body[..body.len() - 1]).is_err());
        let mut short = Vec::new();
        push_frame(&mut short, b"1.1");
        assert!(endings(&short).is_err());
    }

    #[test]
    fn a_parcel_unpacks_into_its_values_and_a_hostile_body_is_an_error_per_call() {
        let values: [&[u8]; 3] = [b"one", b"", &[7; 300]];
        let body = pack(values);
        let unpacked = unpack(3, &body);
        let slices: Vec<&[u8]> =
            unpacked.iter().map(|range| &body[range.clone().expect("whole")]).collect();
        assert_eq!(slices, values);
        assert!(unpack(0, &[]).is_empty());
        // Fewer values than calls: those without one have an error, the others keep theirs.
        let short = unpack(4, &body);
        assert!(short[..3].iter().all(Result::is_ok), "{short:?}");
        assert!(short[3].as_ref().is_err_and(|why| why.contains("3 values for 4 calls")));
        // More values than calls: which call is which cannot be told.
        assert!(unpack(2, &body).iter().all(Result::is_err));
        // A body cut anywhere inside a frame: the calls before the cut keep their values.
        for cut in 0..body.len() {
            let unpacked = unpack(3, &body[..cut]);
            assert_eq!(unpacked.len(), 3);
            let whole = match cut {
                0..7 => 0,
                7..11 => 1,
                _ => 2,
            };
            assert!(unpacked[..whole].iter().all(Result::is_ok), "{cut}: {unpacked:?}");
            assert!(unpacked[whole..].iter().all(Result::is_err), "{cut}: {unpacked:?}");
        }
        // A length past the end (4 GiB) allocates nothing and is an error for its call on.
        let mut hostile = pack([&b"ok"[..]]);
        hostile.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 1]);
        let unpacked = unpack(usize::from(u16::MAX), &hostile);
        assert!(unpacked[0].is_ok());
        assert!(unpacked[1].as_ref().is_err_and(|why| why.contains("4294967295 bytes")));
        assert!(unpacked[2..].iter().all(Result::is_err));
    }

    #[test]
    fn names_and_namespaces() {
        let names = Names::new("jobs");
        assert_eq!(names.task(0xab, "c1"), "jobs.task.00000000000000ab-w2.c1");
        assert_eq!(names.tasks_of(0xab), "jobs.task.00000000000000ab-w2.*");
        assert_eq!(names.caller_tasks("c1"), "jobs.task.*.c1");
        assert_eq!(Names::consumer(0xab), "tasks-00000000000000ab-w2");
        assert_eq!(names.stream(), "jobs_tasks");
        assert_eq!(names.reply("c1"), "jobs.reply.c1");
        assert!(check_namespace("parallel").is_ok());
        assert!(check_namespace("a-b_C9").is_ok());
        for bad in ["", "a.b", "a b", "a*", ">", &"x".repeat(65)] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
        assert_eq!(Kind::parse("ended"), Some(Kind::Ended));
        assert_eq!(Kind::parse("nope"), None);
        assert_eq!(parse_millis("1500"), Ok(Duration::from_millis(1500)));
        assert!(parse_millis("-1").is_err());
    }
}
