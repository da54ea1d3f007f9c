//! A serving process: this program's registered tasks, taken from the stream and run on its
//! slots, with the replies sent to each task's caller.
//!
//! Each task of the registry has a durable pull consumer named by its fingerprint, shared by
//! every serving process that has it. A puller per consumer asks for as many messages as the
//! process has room for (its free slots, plus a few more queued here when tasks are short, so
//! that a pull's round trip is not paid per task), and the pump hands queued messages to free
//! slots in order. Every message held here, queued or running, has its lease renewed every
//! third of the lease, and each caller hears `alive` for its running tasks as often: a serving
//! process that vanishes stops both, so its tasks are redelivered by the server (those not
//! started) or reported lost by their callers (those started).
//!
//! A message may carry several short tasks (a parcel): each is a part of its own here (its own
//! call, slot, ending and cancel), and the message is acknowledged when its last part is over;
//! it goes back to the stream only whole, before any part of it went to a slot. A message is
//! acknowledged after its endings are published, on the same connection, so the caller has
//! them before the server forgets the message. A message delivered a second time (or a parcel
//! that waited in the stream for longer than cancels are remembered) runs only the calls its
//! caller names (it waits for them and never heard them start). A message that cannot be
//! answered (no call or reply subject) goes to the namespace's dead letters; a task of a parcel
//! whose value is cut short is reported to its caller, and the others run.
//! SIGTERM or SIGINT drains: no more pulls, the queued messages are handed back at once, the
//! running ones finish, then the process exits 0.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};

use super::caller::{open_stream, stream_error};
use super::connect::{self, Target};
use super::payloads::{Payloads, OBJECT};
use super::slots::{Sink, Slots, Ticket, Work};
use super::wire::{self, CallId, Ending, Kind, Names, Report};
use crate::registry::{self, Registration};
use crate::Error;

/// The variable that makes any binary that links `parallel` a serving process before `main`.
pub(crate) const SERVE_VARIABLE: &str = "PARALLEL_SERVE";
/// The lease of the tasks a serving process holds: `10s`, `500ms`, `2m`.
const LEASE_VARIABLE: &str = "PARALLEL_LEASE";
const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// How long a pull waits on the server for messages before it is renewed.
const PULL_EXPIRY: Duration = Duration::from_secs(5);
/// Tasks shorter than this on average are queued here ahead of the slots.
const SHORT_TASK: Duration = Duration::from_millis(20);
/// How many tasks per slot may wait here when tasks are short.
const SHORT_TASK_QUEUE: usize = 32;
/// Tasks shorter than this on average (their wait in a slot's queue included) are handed to the
/// slots ahead of time, [`SLOT_DEPTH`] per slot, so that a worker process finds its next task
/// waiting when it sends a reply instead of one round trip through the serving process per task.
const PIPELINED_TASK: Duration = Duration::from_millis(2);
/// How many tasks a slot holds at most when tasks are very short: the one it runs and those
/// behind it.
const SLOT_DEPTH: usize = 8;
/// How many of the outbox's messages are sent in one round.
const OUTBOX_BATCH: usize = 1024;
/// A slot whose task has run this long is not about to take the next one: when every slot is
/// so busy, nothing more is taken ahead, and what was is handed back for other serving processes.
const LONG_TASK: Duration = Duration::from_millis(250);

/// Serves this program's tasks from the NATS server at `url` until SIGTERM or SIGINT, then
/// drains: takes no more tasks, hands the queued ones back, lets the running ones finish.
///
/// Each serving process has `PARALLEL_WORKERS` slots (the available parallelism by default):
/// worker processes with the `process` feature, threads without it or with
/// `PARALLEL_BACKEND=thread`. `PARALLEL_NAMESPACE` picks the
/// namespace (`parallel` by default), `PARALLEL_LEASE` how long a task may go without word from
/// its serving process before it is given up as lost (`10s` by default). Setting
/// `PARALLEL_SERVE=url` does the same for any binary that links `parallel`, before its `main`.
///
/// # Errors
///
/// An [`Error`] when the server cannot be reached or refuses the credentials
/// ([`Error::is_connection`]), when a `PARALLEL_*` variable is malformed, or when the slots
/// cannot be started.
///
/// # Examples
///
/// ```no_run
/// #[parallel::task]
/// fn add(a: i64, b: i64) -> i64 {
///     a + b
/// }
///
/// fn main() -> Result<(), parallel::Error> {
///     // Runs `add` for callers of this namespace until SIGTERM.
///     parallel::serve("nats://127.0.0.1:4222")
/// }
/// ```
pub fn serve(url: &str) -> Result<(), Error> {
    let settings = Settings::from_env(url)?;
    crate::unwind::install_hook();
    crate::registry::validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("parallel-serve")
        .enable_all()
        .build()
        .map_err(|error| Error::io("start the serving runtime", error))?;
    let served = runtime.block_on(run(settings));
    runtime.shutdown_timeout(Duration::from_secs(1));
    served
}

/// A serving process's settings, from `serve`'s URL and the `PARALLEL_*` variables.
struct Settings {
    target: Target,
    slots: usize,
    /// Whether the slots are worker processes (threads with `PARALLEL_BACKEND=thread`).
    processes: bool,
    lease: Duration,
    max_frame: usize,
}

impl Settings {
    fn from_env(url: &str) -> Result<Settings, Error> {
        let namespace = std::env::var("PARALLEL_NAMESPACE").unwrap_or_else(|_| "parallel".into());
        wire::check_namespace(&namespace).map_err(Error::invalid_config)?;
        let target = Target { url: url.to_owned(), namespace };
        connect::check(&target).map_err(Error::invalid_config)?;
        let lease = match std::env::var(LEASE_VARIABLE) {
            Ok(text) => parse_lease(&text).map_err(Error::invalid_config)?,
            Err(_) => DEFAULT_LEASE,
        };
        let slots = crate::builder::workers_from_env()?;
        let processes = !std::env::var("PARALLEL_BACKEND")
            .is_ok_and(|backend| backend.trim().eq_ignore_ascii_case("thread"));
        Ok(Settings {
            target,
            slots,
            processes,
            lease,
            max_frame: crate::builder::DEFAULT_MESSAGE_SIZE,
        })
    }
}

/// Parses a lease: a whole number of `ms`, `s` or `m`, from 300 ms to an hour.
fn parse_lease(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let lease = match (number.parse::<u64>(), unit) {
        (Ok(n), "ms") => Duration::from_millis(n),
        (Ok(n), "s") => Duration::from_secs(n),
        (Ok(n), "m") => Duration::from_secs(n.saturating_mul(60)),
        _ => {
            return Err(format!(
                "{LEASE_VARIABLE}={text:?} is not a whole number of ms, s or m (like 10s or 500ms)"
            ))
        }
    };
    if !(Duration::from_millis(300)..=Duration::from_secs(3600)).contains(&lease) {
        return Err(format!("{LEASE_VARIABLE}={text:?} is out of range: 300ms to 60m"));
    }
    Ok(lease)
}

/// A call as this process knows it: its caller's reply subject and the call.
type Key = (Arc<str>, CallId);

/// The serving process.
struct Node {
    client: Client,
    names: Names,
    /// `pid@host`, which callers show when a task is lost.
    slot_name: String,
    lease: Duration,
    max_frame: usize,
    slots: Slots,
    state: Mutex<State>,
    /// Room was made: a slot freed or a queued message left.
    room: Notify,
    out: mpsc::UnboundedSender<Out>,
    is_draining: AtomicBool,
    payloads: Payloads,
    /// The connection is back: pulls made before are gone.
    reconnected: Notify,
    /// The endings sent lately, to send again to a caller that reconnects.
    recent: Mutex<VecDeque<Sent>>,
}

/// An ending as it was sent.
struct Sent {
    at: Instant,
    reply: Arc<str>,
    headers: HeaderMap,
    body: Bytes,
}

/// How many endings are kept to send again, at most.
const RECENT: usize = 4096;

struct State {
    queue: VecDeque<Held>,
    running: HashMap<Key, Running>,
    /// How many slots the process has: those without a running task are free.
    slots: usize,
    /// Calls cancelled before their message came here, for a while.
    cancelled: HashMap<Key, Instant>,
    /// Callers whose pool was killed (by reply subject), for a while: none of their tasks runs.
    killed: HashMap<Arc<str>, Instant>,
    /// The average time a task ran here (moving), for the size of the queue; `None` before the
    /// first task ended, when tasks count as long (nothing is queued ahead of the slots).
    average: Option<Duration>,
    /// How many tasks a message carried (moving average, in sixteenths), for the size of pulls.
    per_message: usize,
}

impl State {
    /// How many more tasks the slots take now: one per slot without a task, or, when tasks are
    /// very short, up to [`SLOT_DEPTH`] per slot.
    fn free(&self) -> usize {
        self.in_slots().saturating_sub(self.running.len())
    }

    /// How many tasks the slots hold at most, running or waiting in a slot's queue: more than
    /// one per slot only while tasks are very short and none has run for long (a task waiting
    /// behind a hung one could not be handed back once its worker started it).
    fn in_slots(&self) -> usize {
        let is_very_short = self.average.is_some_and(|average| average < PIPELINED_TASK);
        let is_pipelined = is_very_short
            && self.running.values().all(|running| running.since.elapsed() < LONG_TASK);
        self.slots * if is_pipelined { SLOT_DEPTH } else { 1 }
    }

    /// Takes the queued tasks of the messages no part of which went to a slot here, each message
    /// once: they may go back to the stream whole. Parts of the others stay queued.
    fn take_unbegun(&mut self) -> Vec<Arc<Parcel>> {
        let (back, kept): (VecDeque<Held>, VecDeque<Held>) =
            self.queue.drain(..).partition(|held| !held.parcel.is_begun.load(Ordering::Acquire));
        self.queue = kept;
        distinct(back.into_iter().map(|held| held.parcel))
    }

    /// Whether every slot runs a task that has run for long: none is about to free.
    fn is_stuck(&self) -> bool {
        self.free() == 0
            && !self.running.is_empty()
            && self.running.values().all(|running| running.since.elapsed() >= LONG_TASK)
    }
}

/// How long a cancel or a kill is remembered for messages still on their way. A parcel older than
/// half of it is claimed with its caller before it runs: a cancel of one of its tasks could not
/// delete it (its other tasks still wait), and this process may not have heard it.
const CANCELS_REMEMBERED: Duration = Duration::from_secs(600);

/// A task message as this process holds it: one task, or a parcel of several ([`wire::CALLS`]),
/// each of them a part with its own call, slot, ending and cancel. The message is acknowledged
/// once, when its last part is over (its ending out, or dropped); it goes back to the stream only
/// whole, and only while no part of it went to a slot here (a part that ran here and came again
/// would be claimed with its caller, which may not have read its ending yet).
struct Parcel {
    message: jetstream::Message,
    /// How many tasks it carries.
    parts: usize,
    /// How many of its parts are not over.
    open: AtomicUsize,
    /// Whether a part went to a slot: the message can no longer go back whole.
    is_begun: AtomicBool,
    /// Whether a part's ending was sent: the message is acknowledged, not terminated.
    is_answered: AtomicBool,
}

impl Parcel {
    fn new(message: jetstream::Message, parts: usize) -> Arc<Parcel> {
        Arc::new(Parcel {
            message,
            parts,
            open: AtomicUsize::new(parts),
            is_begun: AtomicBool::new(false),
            is_answered: AtomicBool::new(false),
        })
    }

    /// One part is over: its ending is out (`answered`), or it is dropped. The last one lets the
    /// message go.
    async fn part_over(&self, answered: bool) {
        if answered {
            self.is_answered.store(true, Ordering::Release);
        }
        if self.open.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let kind =
            if self.is_answered.load(Ordering::Acquire) { AckKind::Ack } else { AckKind::Term };
        if let Err(error) = self.message.ack_with(kind).await {
            tracing::warn!(%error, "a finished task's message could not be acknowledged");
        }
    }

    /// The whole message goes back to the stream, for another serving process (after `delay`).
    async fn hand_back(&self, delay: Option<Duration>) {
        let _ = self.message.ack_with(AckKind::Nak(delay)).await;
    }
}

/// Lets parts be over in the background.
fn parts_over(parcels: Vec<Arc<Parcel>>, answered: bool) {
    if parcels.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for parcel in parcels {
            parcel.part_over(answered).await;
        }
    });
}

/// Each parcel once, in order.
fn distinct(parcels: impl IntoIterator<Item = Arc<Parcel>>) -> Vec<Arc<Parcel>> {
    let mut seen = HashSet::new();
    parcels.into_iter().filter(|parcel| seen.insert(Arc::as_ptr(parcel))).collect()
}

/// A task taken from the stream and not started: a part of a message.
struct Held {
    key: Key,
    parcel: Arc<Parcel>,
    /// The task value: the message's payload, or the object it names.
    args: Bytes,
    task: &'static Registration,
    timeout: Option<Duration>,
}

struct Running {
    parcel: Arc<Parcel>,
    ticket: Arc<Ticket>,
    since: Instant,
}

/// What the outbox sends, in order.
enum Out {
    Started(Key),
    /// A progress message as the task sent it (framed with the others of its round when sent).
    Progress(Key, Vec<u8>),
    Ended(Key, Ending),
    /// An ending whose task the node is done with (`Node::finished`), and its message.
    Done(Key, Ending, Arc<Parcel>),
    /// Small endings of one caller's tasks in one reply (`merge_endings`), and their messages,
    /// whose parts are over once it is out.
    Endings(Arc<str>, Vec<u8>, Vec<Arc<Parcel>>),
    Alive(Arc<str>, Vec<CallId>),
    /// A task that cannot run: its ending, then its part of the message is over.
    Refused(Key, Ending, Arc<Parcel>),
    /// Everything before this is out: flush, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Node {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many more messages this process takes now: room for tasks, over the tasks a message
    /// carried on average lately (parcels carry several), at least one if there is room.
    fn room(&self) -> usize {
        let room = self.task_room();
        let per_message = self.lock().per_message.max(16);
        if room == 0 {
            0
        } else {
            (room * 16 / per_message).max(1)
        }
    }

    /// How many more tasks this process takes now.
    fn task_room(&self) -> usize {
        if self.is_draining.load(Ordering::Acquire) {
            return 0;
        }
        let state = self.lock();
        let slots = state.slots;
        let is_short = state.average.is_some_and(|average| average < SHORT_TASK);
        let ahead = if is_short && !state.is_stuck() { slots * SHORT_TASK_QUEUE } else { 0 };
        let capacity = state.in_slots() + ahead;
        let held = state.queue.len() + state.running.len();
        let room = capacity.saturating_sub(held);
        // Pulls refill by halves while work is in hand: a pull per finished task would cost the
        // server a request per task. A serving process with nothing in hand, or with a slot that
        // has nothing to run, always pulls (before, a third slot stayed idle while two ran long
        // tasks: its room was under half).
        if held > 0 && room * 2 < capacity && state.free() == 0 {
            0
        } else {
            room
        }
    }

    /// A message from the stream for `task`: one task, or a parcel of several.
    async fn take(self: &Arc<Self>, message: jetstream::Message, task: &'static Registration) {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let calls = match (header(wire::CALL), header(wire::CALLS)) {
            (Some(call), None) => CallId::parse(&call).map(|call| vec![call]).ok(),
            (None, Some(calls)) => CallId::split(&calls).ok().filter(|calls| {
                let distinct: HashSet<&CallId> = calls.iter().collect();
                !calls.is_empty()
                    && calls.len() <= wire::CANCELS_PER_MESSAGE
                    && distinct.len() == calls.len()
            }),
            _ => None,
        };
        let reply = header(wire::REPLY).filter(|reply| {
            reply
                .strip_prefix(&self.names.reply(""))
                .is_some_and(|caller| !caller.is_empty() && !caller.contains(['.', '*', '>', ' ']))
        });
        let timeout = match header(wire::TIMEOUT).map(|text| wire::parse_millis(&text)) {
            None => Ok(None),
            Some(parsed) => parsed.map(Some),
        };
        let (Some(calls), Some(reply), Ok(timeout)) = (calls, reply, timeout) else {
            self.dead_letter(
                message,
                "no valid call (or distinct calls), reply subject or timeout in its headers",
            )
            .await;
            return;
        };
        let info = message.info().ok();
        let delivered = info.as_ref().map_or(1, |info| info.delivered);
        // A parcel that waited in the stream for longer than cancels are remembered.
        let is_old = calls.len() > 1
            && info.is_some_and(|info| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_secs());
                let published = u64::try_from(info.published.unix_timestamp()).unwrap_or(0);
                now.saturating_sub(published) > CANCELS_REMEMBERED.as_secs() / 2
            });
        let reply: Arc<str> = Arc::from(reply);
        {
            let mut state = self.lock();
            state.per_message = (state.per_message * 7 + calls.len() * 16) / 8;
        }
        let parcel = Parcel::new(message, calls.len());
        let bytes = match header_of(&parcel.message, OBJECT) {
            None => parcel.message.payload.clone(),
            Some(name) => match self.payloads.read(&name, self.max_frame).await {
                Ok(bytes) => Bytes::from(bytes),
                Err(error) => {
                    // Its callers hear why, and the stream forgets it.
                    for call in calls {
                        let ending = Ending::Report(Report::BadArguments(error.clone()));
                        let key = (Arc::clone(&reply), call);
                        let _ = self.out.send(Out::Refused(key, ending, Arc::clone(&parcel)));
                    }
                    return;
                }
            },
        };
        let values = if calls.len() == 1 {
            vec![Ok(0..bytes.len())]
        } else {
            wire::unpack(calls.len(), &bytes)
        };
        let mut parts = Vec::with_capacity(calls.len());
        for (call, value) in calls.into_iter().zip(values) {
            let key: Key = (Arc::clone(&reply), call);
            match value {
                Ok(range) => parts.push(Held {
                    key,
                    parcel: Arc::clone(&parcel),
                    args: bytes.slice(range),
                    task,
                    timeout,
                }),
                // A garbled part: its caller hears why; the others run.
                Err(why) => {
                    let ending = Ending::Report(Report::BadArguments(why));
                    let _ = self.out.send(Out::Refused(key, ending, Arc::clone(&parcel)));
                }
            }
        }
        if parts.is_empty() {
            return;
        }
        if delivered > 1 || is_old {
            // Its first serving process let it go before it started, or vanished (or, a parcel,
            // it waited long): its caller decides whether each part runs.
            let node = Arc::clone(self);
            tokio::spawn(async move { node.claim(parts).await });
            return;
        }
        self.queue(parts);
    }

    /// Queues the parts of one message that may run (every part of it that is not over).
    fn queue(self: &Arc<Self>, parts: Vec<Held>) {
        let Some(parcel) = parts.first().map(|held| Arc::clone(&held.parcel)) else { return };
        if self.is_draining.load(Ordering::Acquire) {
            // Handed back at once, for another serving process: no part of it ran here.
            tokio::spawn(async move { parcel.hand_back(None).await });
            return;
        }
        self.lock().queue.extend(parts);
        self.pump();
    }

    /// Asks the caller of a message delivered again which of its parts it still wants run.
    async fn claim(self: Arc<Self>, parts: Vec<Held>) {
        let Some(first) = parts.first() else { return };
        let parcel = Arc::clone(&first.parcel);
        let caller = first.key.0.strip_prefix(&self.names.reply("")).unwrap_or_default().to_owned();
        let calls: Vec<CallId> = parts.iter().map(|held| held.key.1).collect();
        let mut headers = HeaderMap::new();
        headers.insert(wire::CALLS, CallId::join(&calls).as_str());
        let asked = tokio::time::timeout(
            Duration::from_secs(5),
            self.client.request_with_headers(self.names.claim(&caller), headers, Bytes::new()),
        )
        .await;
        let is_gone = |error: &async_nats::RequestError| {
            error.kind() == async_nats::RequestErrorKind::NoResponders
        };
        let to_run = match asked {
            // The calls its caller still waits for and never heard start.
            Ok(Ok(answer)) => std::str::from_utf8(&answer.payload)
                .map_err(|error| error.to_string())
                .and_then(CallId::split),
            // Its caller is gone.
            Ok(Err(error)) if is_gone(&error) => Ok(Vec::new()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer in 5 s".to_owned()),
        };
        let to_run = match to_run {
            Ok(to_run) => to_run,
            // No answer in time (the caller's connection is down?): ask again later.
            Err(error) => {
                tracing::debug!(%error, "a claim was not answered; asked again later");
                return parcel.hand_back(Some(self.lease / 3)).await;
            }
        };
        let (run, drop): (Vec<Held>, Vec<Held>) =
            parts.into_iter().partition(|held| to_run.contains(&held.key.1));
        // Those its caller has its result of, or gave up.
        for held in drop {
            held.parcel.part_over(false).await;
        }
        if !run.is_empty() {
            self.queue(run);
        }
    }

    /// Hands queued tasks to free slots: as many as there are free slots, whatever number of
    /// cancelled ones it drops from the queue on the way.
    fn pump(self: &Arc<Self>) {
        let mut started = Vec::new();
        let mut dropped = Vec::new();
        {
            let mut state = self.lock();
            // Counted in tasks started, not in tasks taken from the queue: a cancelled task
            // dropped here frees no slot. (Counted per task taken, a slot stayed idle behind
            // each one dropped, with tasks queued and nothing left to pump them: seen from
            // outside as tasks that waited until the caller's next cancel or task came.)
            let mut free = state.free();
            while free > 0 {
                let Some(held) = state.queue.pop_front() else { break };
                if state.cancelled.remove(&held.key).is_some()
                    || state.killed.contains_key(&held.key.0)
                {
                    dropped.push(held.parcel);
                    continue;
                }
                free -= 1;
                held.parcel.is_begun.store(true, Ordering::Release);
                let sink = Arc::new(NodeSink { node: Arc::downgrade(self), key: held.key.clone() });
                let ticket = Ticket::new(sink, self.max_frame);
                state.running.insert(
                    held.key.clone(),
                    Running {
                        parcel: Arc::clone(&held.parcel),
                        ticket: Arc::clone(&ticket),
                        since: Instant::now(),
                    },
                );
                started.push((held, ticket));
            }
        }
        if !dropped.is_empty() {
            // What they held is room again: the pullers may take more.
            self.room.notify_waiters();
        }
        parts_over(dropped, false);
        let mut works = Vec::with_capacity(started.len());
        for (held, ticket) in started {
            let _ = self.out.send(Out::Started(held.key.clone()));
            works.push(Work { task: held.task, args: held.args, timeout: held.timeout, ticket });
        }
        self.slots.run(works);
    }

    /// A task ended on its slot: the slot is free, and the message is done with once its
    /// ending is out.
    /// The caller refills the slots (`refill`), once for all the endings it has.
    fn finished(self: &Arc<Self>, key: &Key) -> Option<Arc<Parcel>> {
        let mut state = self.lock();
        let running = state.running.remove(key)?;
        let took = running.since.elapsed();
        state.average = Some(state.average.map_or(took, |average| (average * 7 + took) / 8));
        Some(running.parcel)
    }

    /// Slots were freed: the pullers may take more, and the queue goes to the slots.
    fn refill(self: &Arc<Self>) {
        self.room.notify_waiters();
        self.pump();
    }

    /// The caller at `reply` cancelled `calls` (or, with `every`, all its tasks: its pool was
    /// killed). All of them leave the queue before any slot they free takes another task, so a
    /// task cancelled with a running one never starts in its place.
    fn cancel(self: &Arc<Self>, reply: &Arc<str>, calls: &[CallId], every: bool) {
        let now = Instant::now();
        let mut tickets = Vec::new();
        let mut messages = Vec::new();
        {
            let mut state = self.lock();
            state.cancelled.retain(|_, at| now.duration_since(*at) < CANCELS_REMEMBERED);
            state.killed.retain(|_, at| now.duration_since(*at) < CANCELS_REMEMBERED);
            let is_named = |key: &Key| *key.0 == **reply && (every || calls.contains(&key.1));
            let mut found = Vec::new();
            let mut kept = VecDeque::with_capacity(state.queue.len());
            for held in state.queue.drain(..) {
                if is_named(&held.key) {
                    found.push(held.key.1);
                    messages.push(held.parcel);
                } else {
                    kept.push_back(held);
                }
            }
            state.queue = kept;
            let mut running: Vec<(Instant, Key)> = state
                .running
                .iter()
                .filter(|(key, _)| is_named(key))
                .map(|(key, running)| (running.since, key.clone()))
                .collect();
            // The last handed to a slot first: those waiting in a worker's queue behind a running
            // one are closed before its worker is killed, which would hand them to the next one.
            running.sort_by_key(|(since, _)| std::cmp::Reverse(*since));
            for (_, key) in running {
                if let Some(running) = state.running.remove(&key) {
                    found.push(key.1);
                    tickets.push(running.ticket);
                    messages.push(running.parcel);
                }
            }
            if every {
                state.killed.insert(Arc::clone(reply), now);
            } else {
                // Those not here yet are dropped when they come.
                for call in calls.iter().filter(|call| !found.contains(call)) {
                    state.cancelled.insert((Arc::clone(reply), *call), now);
                }
            }
        }
        for ticket in tickets {
            ticket.cancel();
        }
        if messages.is_empty() {
            return;
        }
        parts_over(messages, false);
        self.room.notify_waiters();
        self.pump();
    }

    /// Keeps an ending for a while, to send again to its caller if it reconnects.
    fn remember(&self, reply: &Arc<str>, headers: &HeaderMap, body: &Bytes) {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        while recent.front().is_some_and(|sent| {
            recent.len() >= RECENT || now.duration_since(sent.at) > self.lease * 2
        }) {
            recent.pop_front();
        }
        recent.push_back(Sent {
            at: now,
            reply: Arc::clone(reply),
            headers: headers.clone(),
            body: body.clone(),
        });
    }

    /// Keeps the held messages' leases and tells callers their tasks are alive. Queued messages
    /// behind slots that are all stuck in long tasks are handed back, so that they do not wait
    /// behind a hung task while another serving process idles (DESIGN §3).
    async fn renew(&self) {
        let (handed_back, withdrawn) = {
            let mut state = self.lock();
            if state.is_stuck() {
                let back = state.take_unbegun();
                // Those handed to a slot ahead of time that its worker has not started (a part
                // of a parcel stays: its message goes back only whole, and its other parts ran).
                let waiting: Vec<Key> = state
                    .running
                    .iter()
                    .filter(|(_, running)| running.parcel.parts == 1 && running.ticket.withdraw())
                    .map(|(key, _)| key.clone())
                    .collect();
                let withdrawn: Vec<_> = waiting
                    .into_iter()
                    .filter_map(|key| Some((state.running.remove(&key)?.parcel, key)))
                    .collect();
                (back, withdrawn)
            } else {
                (Vec::new(), Vec::new())
            }
        };
        for parcel in handed_back {
            parcel.hand_back(None).await;
        }
        if !withdrawn.is_empty() {
            // On its own: waiting for the callers' answers must not hold back `alive`.
            tokio::spawn(hand_back_started(self.client.clone(), self.names.clone(), withdrawn));
        }
        let (messages, alive) = {
            let state = self.lock();
            let mut alive: HashMap<Arc<str>, Vec<CallId>> = HashMap::new();
            for (reply, call) in state.running.keys() {
                alive.entry(Arc::clone(reply)).or_default().push(*call);
            }
            let messages = distinct(
                state
                    .queue
                    .iter()
                    .map(|held| Arc::clone(&held.parcel))
                    .chain(state.running.values().map(|running| Arc::clone(&running.parcel))),
            );
            (messages, alive)
        };
        for (reply, calls) in alive {
            let _ = self.out.send(Out::Alive(reply, calls));
        }
        for parcel in messages {
            if let Err(error) = parcel.message.ack_with(AckKind::Progress).await {
                tracing::debug!(%error, "a lease was not renewed");
            }
        }
    }

    /// Keeps a message no caller can be told about, and lets the stream forget it.
    async fn dead_letter(&self, message: jetstream::Message, why: &str) {
        tracing::warn!(subject = %message.subject, why, "a task message goes to the dead letters");
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert("Parallel-Dead-Reason", why);
        headers.insert("Parallel-Dead-Subject", message.subject.as_str());
        let jetstream = jetstream::new(self.client.clone());
        let kept = match jetstream
            .publish_with_headers(self.names.dead(), headers, message.payload.clone())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match kept {
            Ok(()) => {
                let _ = message.ack_with(AckKind::Term).await;
            }
            // Left for redelivery, and another try.
            Err(error) => tracing::error!(%error, "a dead letter could not be kept"),
        }
    }
}

/// Where a slot's task reports: the node's outbox.
struct NodeSink {
    node: Weak<Node>,
    key: Key,
}

impl Sink for NodeSink {
    fn progress(&self, message: Vec<u8>) {
        if let Some(node) = self.node.upgrade() {
            let _ = node.out.send(Out::Progress(self.key.clone(), message));
        }
    }

    fn end(&self, ending: Ending) {
        if let Some(node) = self.node.upgrade() {
            let _ = node.out.send(Out::Ended(self.key.clone(), ending));
        }
    }
}

async fn run(settings: Settings) -> Result<(), Error> {
    // Heard from now on: a SIGTERM that comes while the consumers are being opened, when tasks
    // may run already, drains as any other (before, it killed the process). Each step of the
    // start is raced against it: a step may wait for ever for a server that is down, and a
    // signal heard only after the start then never ended the process.
    let stopped = stop_signals();
    tokio::pin!(stopped);
    let (slots, namespace) = (settings.slots, settings.target.namespace.clone());
    let (node, client, stream) = tokio::select! {
        started = start(settings) => started?,
        () = &mut stopped => {
            // Nothing was taken yet: there is nothing to drain.
            tracing::info!("stopped before serving");
            return Ok(());
        }
    };
    // Leases are renewed from the first task on, through a drain too.
    tokio::spawn(renew(Arc::downgrade(&node)));
    let is_stopped = tokio::select! {
        opened = open_consumers(&node, &stream) => {
            opened?;
            false
        }
        () = &mut stopped => true,
    };
    if !is_stopped {
        let (kind, lease) = (node.slots.kind(), node.lease);
        tracing::info!(slots, kind, ?lease, %namespace, "serving");
        stopped.await;
    }
    // Not waited for twice: a server that did not take the last words in time is gone.
    let drained =
        drain(&node).await && tokio::time::timeout(LAST_WORDS, client.flush()).await.is_ok();
    if drained {
        return Ok(());
    }
    Err(Error::connection(format!(
            "stopped on a signal, but the server did not take the last endings and hand-backs within {} s \
             (unreachable?): their callers hear of those tasks as lost after the lease, and the \
             stream gives their messages to another serving process",
            LAST_WORDS.as_secs()
    )))
}

/// Connects, makes sure of the streams, starts the slots and the outbox, and listens for
/// cancels and resends: everything before the first task is taken.
async fn start(
    settings: Settings,
) -> Result<(Arc<Node>, Client, jetstream::stream::Stream), Error> {
    let Settings { target, slots, processes, lease, max_frame } = settings;
    let names = Names::new(&target.namespace);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "?".to_owned());
    let slot_name = format!("{}@{host}", std::process::id());
    let reconnected = Arc::new(Notify::new());
    let client = connect::connect(
        &target,
        &format!("parallel serving {slot_name}"),
        Arc::clone(&reconnected),
    )
    .await
    .map_err(Error::connection)?;
    let jetstream = jetstream::new(client.clone());
    let stream =
        patiently("the task stream", is_transient_stream_error, || open_stream(&jetstream, &names))
            .await
            .map_err(|error| Error::connection(stream_error(&names, &error)))?;
    patiently("the dead letters", is_transient_stream_error, || {
        ensure_dead_letters(&jetstream, &names)
    })
    .await
    .map_err(|error| {
        Error::connection(format!("cannot open the dead letters {}: {error}", names.dead_stream()))
    })?;
    let (out, outbox) = mpsc::unbounded_channel();
    let payloads = Payloads::new(jetstream.clone(), &names, client.server_info().max_payload);
    let node = Arc::new(Node {
        payloads,
        client: client.clone(),
        names: names.clone(),
        slot_name,
        lease,
        max_frame,
        slots: Slots::start(slots, max_frame, processes)?,
        state: Mutex::new(State {
            queue: VecDeque::new(),
            running: HashMap::new(),
            slots,
            cancelled: HashMap::new(),
            killed: HashMap::new(),
            average: None,
            per_message: 16,
        }),
        room: Notify::new(),
        out,
        is_draining: AtomicBool::new(false),
        reconnected: Notify::new(),
        recent: Mutex::new(VecDeque::new()),
    });
    tokio::spawn(send(Arc::clone(&node), outbox));
    // Cancels are heard before the first task is taken.
    let cancels = client
        .subscribe(names.cancel())
        .await
        .map_err(|error| Error::connection(format!("cannot subscribe to cancels: {error}")))?;
    client.flush().await.map_err(|error| Error::connection(error.to_string()))?;
    tokio::spawn(hear_cancels(Arc::downgrade(&node), cancels));
    let resends = client
        .subscribe(names.resend())
        .await
        .map_err(|error| Error::connection(format!("cannot subscribe to resends: {error}")))?;
    tokio::spawn(hear_resends(Arc::downgrade(&node), resends));
    tokio::spawn(repull_on_reconnect(Arc::downgrade(&node), reconnected));
    Ok((node, client, stream))
}

/// Opens the consumer of each registered task, and takes its tasks from then on: the first
/// ones may run before the last consumer is open.
async fn open_consumers(node: &Arc<Node>, stream: &jetstream::stream::Stream) -> Result<(), Error> {
    for task in registry::all() {
        let consumer = open_consumer(stream, &node.names, task, node.lease).await?;
        tokio::spawn(pull(Arc::clone(node), consumer, task));
    }
    Ok(())
}

/// How long a stopping serving process waits for the server to take its last messages (the
/// endings of its last tasks, the tasks it hands back): a server that is down then does not keep
/// it from exiting (it waited for ever).
const LAST_WORDS: Duration = Duration::from_secs(10);

/// Opens the durable consumer of `task`, waiting for a server that does not answer
/// ([`patiently`]).
async fn open_consumer(
    stream: &jetstream::stream::Stream,
    names: &Names,
    task: &'static Registration,
    lease: Duration,
) -> Result<PullConsumer, Error> {
    use async_nats::jetstream::stream::ConsumerErrorKind;
    let fingerprint = task.fingerprint();
    let name = Names::consumer(fingerprint);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("parallel task {}", task.name())),
        filter_subject: names.tasks_of(fingerprint),
        ack_policy: AckPolicy::Explicit,
        ack_wait: lease,
        ..Default::default()
    };
    let is_transient = |error: &jetstream::stream::ConsumerError| match error.kind() {
        ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => true,
        ConsumerErrorKind::JetStream(error) => error.code() == 503,
        _ => false,
    };
    let what = format!("the consumer of {}", task.name());
    patiently(&what, is_transient, || stream.get_or_create_consumer(&name, config.clone()))
        .await
        .map_err(|error| Error::connection(format!("cannot open {what}: {error}")))
}

/// Listens for SIGTERM and SIGINT from the call on; the future ends at the first of them.
fn stop_signals() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered here, not when first polled: a signal between the two is not lost.
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Ok(mut only), Err(_)) | (Err(_), Ok(mut only)) => {
                    only.recv().await;
                }
                (Err(_), Err(_)) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Takes no more tasks, hands the queued ones back, lets the running ones finish; `false` if the
/// server did not take the hand-backs and the last endings within [`LAST_WORDS`].
async fn drain(node: &Arc<Node>) -> bool {
    node.is_draining.store(true, Ordering::Release);
    node.room.notify_waiters();
    let queued = node.lock().take_unbegun();
    tracing::info!(queued = queued.len(), "draining");
    let handed_back = tokio::time::timeout(LAST_WORDS, async {
        for parcel in queued {
            parcel.hand_back(None).await;
        }
    })
    .await;
    // The queued parts of a message whose other parts ran here run here too.
    node.pump();
    while {
        let state = node.lock();
        !state.running.is_empty() || !state.queue.is_empty()
    } {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The last endings are out before the process exits.
    let (done, wait) = tokio::sync::oneshot::channel();
    let _ = node.out.send(Out::Flush(done));
    let flushed = tokio::time::timeout(LAST_WORDS, wait).await;
    node.slots.stop();
    handed_back.is_ok() && flushed.is_ok()
}

/// Takes messages of `task` from its consumer while there is room.
async fn pull(node: Arc<Node>, consumer: PullConsumer, task: &'static Registration) {
    while !node.is_draining.load(Ordering::Acquire) {
        // Listening before looking: room made between the look and the wait still wakes it.
        let made = node.room.notified();
        tokio::pin!(made);
        made.as_mut().enable();
        let room = node.room();
        if room == 0 {
            let _ = tokio::time::timeout(Duration::from_secs(1), made).await;
            continue;
        }
        let batch = consumer.batch().max_messages(room).expires(PULL_EXPIRY).messages().await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(task = task.name(), %error, "cannot pull tasks; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            // A pull request dies with the connection: a reconnection asks again at once.
            let repull = node.reconnected.notified();
            let message = tokio::select! {
                message = batch.next() => message,
                () = repull => break,
            };
            match message {
                Some(Ok(message)) => node.take(message, task).await,
                Some(Err(error)) => {
                    tracing::debug!(task = task.name(), %error, "a pull ended");
                    break;
                }
                None => break,
            }
        }
    }
}

/// Wakes the pullers when the connection is back.
async fn repull_on_reconnect(node: Weak<Node>, reconnected: Arc<Notify>) {
    loop {
        reconnected.notified().await;
        let Some(node) = node.upgrade() else { return };
        node.reconnected.notify_waiters();
    }
}

/// Sends a caller that reconnected what it may have missed: its recent endings, and `started`
/// for its running tasks.
async fn hear_resends(node: Weak<Node>, mut resends: async_nats::Subscriber) {
    while let Some(message) = resends.next().await {
        let Some(node) = node.upgrade() else { return };
        let reply = message.headers.as_ref().and_then(|headers| headers.get(wire::REPLY));
        let Some(reply) = reply.map(|reply| reply.as_str().to_owned()) else { continue };
        let (endings, running) = {
            let recent = node.recent.lock().unwrap_or_else(PoisonError::into_inner);
            let endings: Vec<_> = recent
                .iter()
                .filter(|sent| *sent.reply == reply)
                .map(|sent| (sent.headers.clone(), sent.body.clone()))
                .collect();
            let running: Vec<CallId> = node
                .lock()
                .running
                .keys()
                .filter(|(to, _)| **to == reply)
                .map(|(_, call)| *call)
                .collect();
            (endings, running)
        };
        if !running.is_empty() {
            let _ = node.out.send(Out::Alive(Arc::from(reply.as_str()), running));
        }
        for (headers, body) in endings {
            if let Err(error) = node.client.publish_with_headers(reply.clone(), headers, body).await
            {
                tracing::warn!(%error, "a reply could not be sent again");
            }
        }
    }
}

async fn hear_cancels(node: Weak<Node>, mut cancels: async_nats::Subscriber) {
    while let Some(message) = cancels.next().await {
        let Some(node) = node.upgrade() else { return };
        let header = |name: &str| {
            message.headers.as_ref().and_then(|headers| headers.get(name)).map(|v| v.as_str())
        };
        let Some(reply) = header(wire::REPLY) else {
            tracing::warn!("a cancel without a reply subject; dropped");
            continue;
        };
        let every = header(wire::EVERY) == Some("1");
        let calls = std::str::from_utf8(&message.payload)
            .map_err(|error| error.to_string())
            .and_then(CallId::split);
        match calls {
            Ok(calls) => node.cancel(&Arc::from(reply), &calls, every),
            Err(error) => tracing::warn!(%error, "a cancel with bad calls; dropped"),
        }
    }
}

/// Hands back tasks taken from their slots before their workers started them. Their callers
/// heard that they started (`started` is sent as a slot gets a task) and would not let them
/// run when they come again: each caller is told first, and answers, before the messages go
/// back to the stream, so its answer to their next claim is `run`. A caller that does not
/// answer in time is gone or cut off; its tasks go back all the same.
async fn hand_back_started(client: Client, names: Names, withdrawn: Vec<(Arc<Parcel>, Key)>) {
    let mut by_caller: HashMap<Arc<str>, Vec<CallId>> = HashMap::new();
    for (_, (reply, call)) in &withdrawn {
        by_caller.entry(Arc::clone(reply)).or_default().push(*call);
    }
    let told = by_caller.into_iter().map(|(reply, calls)| {
        let caller = reply.strip_prefix(&names.reply("")).unwrap_or_default().to_owned();
        let mut headers = HeaderMap::new();
        headers.insert(wire::HANDED_BACK, "1");
        let body = Bytes::from(CallId::join(&calls).into_bytes());
        let request = client.request_with_headers(names.claim(&caller), headers, body);
        tokio::time::timeout(Duration::from_secs(5), request)
    });
    futures_util::future::join_all(told).await;
    for (parcel, _) in withdrawn {
        parcel.hand_back(None).await;
    }
}

async fn renew(node: Weak<Node>) {
    let Some(every) = node.upgrade().map(|node| node.lease / 3) else { return };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(node) = node.upgrade() else { return };
        node.renew().await;
    }
}

/// Sends what the slots report, in order; acknowledges a message once its ending is out.
async fn send(node: Arc<Node>, mut outbox: mpsc::UnboundedReceiver<Out>) {
    let lease = wire::millis(node.lease);
    let mut batch = Vec::new();
    let mut unannounced = Unannounced::default();
    loop {
        let received = match unannounced.due() {
            None => outbox.recv_many(&mut batch, OUTBOX_BATCH).await,
            Some(due) => {
                let next = tokio::time::timeout_at(due, outbox.recv_many(&mut batch, OUTBOX_BATCH));
                next.await.unwrap_or(usize::MAX)
            }
        };
        if received == 0 {
            return;
        }
        unannounced.take_round(&batch);
        // The tasks that have run for `ANNOUNCE_AFTER` and go on, one `started` per caller: sent
        // before the rest of the round, which only moves each one earlier than it was queued.
        let announce = {
            let state = node.lock();
            unannounced.take_due(Instant::now(), |key| state.running.contains_key(key))
        };
        for (reply, calls) in announce {
            let mut headers = headers_of(Kind::Started, None);
            headers.insert(wire::SLOT, node.slot_name.as_str());
            headers.insert(wire::LEASE, lease.as_str());
            let body = Bytes::from(CallId::join(&calls).into_bytes());
            if let Err(error) =
                node.client.publish_with_headers(reply.to_string(), headers, body).await
            {
                tracing::warn!(%error, "a reply could not be sent");
            }
        }
        let round = frame_progress(&node, batch.drain(..));
        // The round's endings free their slots first, and the slots are refilled once, before
        // anything is published: a worker gets its next tasks together and at once.
        let mut freed = false;
        let round: Vec<Out> = round
            .into_iter()
            .filter_map(|out| match out {
                Out::Ended(key, ending) => {
                    // Cancelled meanwhile: its caller has resolved already.
                    let parcel = node.finished(&key)?;
                    freed = true;
                    Some(Out::Done(key, ending, parcel))
                }
                other => Some(other),
            })
            .collect();
        if freed {
            node.refill();
        }
        for out in merge_endings(&node, round) {
            send_one(&node, out).await;
        }
    }
}

/// How long a task runs before its caller is told that it started. A task that ends sooner is
/// never announced: its ending says all (a no-op round trip cost two messages more through the
/// server, and `map` a quarter of its messages). What the caller does with `started` — refusing
/// a second delivery, reporting the serving process lost after a silent lease — matters only
/// for a task that runs on; a serving process killed within this time of a task's start leaves
/// a task its caller never heard start, which runs again elsewhere (cluster README, "At most
/// once").
const ANNOUNCE_AFTER: Duration = Duration::from_millis(1);

/// The outbox's tasks that started and are not announced to their callers yet, oldest first.
#[derive(Default)]
struct Unannounced {
    started: VecDeque<(Instant, Key)>,
    /// Announce every one in the next `take_due`, whatever its age.
    is_every_one_due: bool,
}

impl Unannounced {
    /// When the oldest is due.
    fn due(&self) -> Option<tokio::time::Instant> {
        self.started.front().map(|(since, _)| (*since + ANNOUNCE_AFTER).into())
    }

    /// Takes in a round's starts, and forgets the tasks it ends; its progress messages and
    /// `alive`s are about started tasks, so every task is announced before they go out.
    fn take_round(&mut self, round: &[Out]) {
        let now = Instant::now();
        let mut ended = HashSet::new();
        for out in round {
            match out {
                Out::Started(key) => self.started.push_back((now, key.clone())),
                Out::Ended(key, _) | Out::Refused(key, _, _) | Out::Done(key, _, _) => {
                    ended.insert(key);
                }
                Out::Progress(..) | Out::Alive(..) | Out::Flush(_) => self.is_every_one_due = true,
                Out::Endings(..) => {}
            }
        }
        if !ended.is_empty() {
            self.started.retain(|(_, key)| !ended.contains(key));
        }
    }

    /// The tasks due and still running here (one taken back from its slot meanwhile is not),
    /// by caller.
    fn take_due(
        &mut self,
        now: Instant,
        is_running: impl Fn(&Key) -> bool,
    ) -> Vec<(Arc<str>, Vec<CallId>)> {
        let mut by_caller: Vec<(Arc<str>, Vec<CallId>)> = Vec::new();
        let every_one = std::mem::take(&mut self.is_every_one_due);
        while let Some((since, _)) = self.started.front()
            && (every_one || now.duration_since(*since) >= ANNOUNCE_AFTER)
        {
            let Some((_, key)) = self.started.pop_front() else { break };
            if !is_running(&key) {
                continue;
            }
            let (reply, call) = key;
            match by_caller.iter_mut().find(|(to, _)| *to == reply) {
                Some((_, calls)) => calls.push(call),
                None => by_caller.push((reply, vec![call])),
            }
        }
        by_caller
    }
}

/// The outbox's round with each task's progress messages framed together, as many per reply
/// as fit in a message, each group where its first message was: a task's messages keep their
/// order, and its ending still comes after them (a flood of progress messages cost a reply each
/// before: callers fell behind and lost some, and `alive` waited behind them past its lease).
fn frame_progress(node: &Node, round: impl Iterator<Item = Out>) -> Vec<Out> {
    let mut outs: Vec<Out> = Vec::new();
    // The group each task's next message may join.
    let mut open: HashMap<Key, usize> = HashMap::new();
    for out in round {
        match out {
            Out::Progress(key, message) => {
                if let Some(&at) = open.get(&key)
                    && let Out::Progress(_, body) = &mut outs[at]
                    && node.payloads.fits(body.len() + 4 + message.len())
                {
                    wire::push_frame(body, &message);
                    continue;
                }
                let mut body = Vec::with_capacity(4 + message.len());
                wire::push_frame(&mut body, &message);
                open.insert(key.clone(), outs.len());
                outs.push(Out::Progress(key, body));
            }
            Out::Ended(key, ending) => {
                open.remove(&key);
                outs.push(Out::Ended(key, ending));
            }
            other => outs.push(other),
        }
    }
    outs
}

/// The round with the small endings of each caller's tasks in as few replies as fit, each where
/// that caller's last ending of the round was (after every progress message of those tasks). An
/// ending too large to share a reply keeps its own, and a caller with one ending gets it as
/// before.
fn merge_endings(node: &Arc<Node>, round: Vec<Out>) -> Vec<Out> {
    /// An ending shares a reply if it is under this share of the message limit.
    const SHARE: usize = 16;
    let is_small = |ending: &Ending| match ending {
        Ending::Output(bytes) | Ending::Failed(bytes) => {
            node.payloads.fits(bytes.len().saturating_mul(SHARE))
        }
        Ending::Report(_) => true,
    };
    // Each caller's small endings in the round, and where the last one is.
    let mut last: HashMap<Arc<str>, (usize, usize)> = HashMap::new();
    for (at, out) in round.iter().enumerate() {
        if let Out::Done(key, ending, _) = out
            && is_small(ending)
        {
            let entry = last.entry(Arc::clone(&key.0)).or_insert((0, at));
            *entry = (entry.0 + 1, at);
        }
    }
    last.retain(|_, (count, _)| *count > 1);
    if last.is_empty() {
        return round;
    }
    /// A caller's reply being filled, and the messages its endings finish.
    type Reply = (Vec<u8>, Vec<Arc<Parcel>>);
    let mut merged: HashMap<Arc<str>, Reply> = HashMap::new();
    let mut outs = Vec::with_capacity(round.len());
    for (at, out) in round.into_iter().enumerate() {
        let Out::Done(key, ending, message) = out else {
            outs.push(out);
            continue;
        };
        let Some(&(_, last_at)) = last.get(&key.0).filter(|_| is_small(&ending)) else {
            outs.push(Out::Done(key, ending, message));
            continue;
        };
        let (kind, body) = ending.into_message();
        let (reply, messages) = merged.entry(Arc::clone(&key.0)).or_default();
        if !reply.is_empty() && !node.payloads.fits(reply.len() + body.len() + 64) {
            outs.push(Out::Endings(
                Arc::clone(&key.0),
                std::mem::take(reply),
                std::mem::take(messages),
            ));
        }
        wire::push_ending(reply, key.1, kind, &body);
        messages.push(message);
        if at == last_at
            && let Some((reply, messages)) = merged.remove(&key.0)
            && !messages.is_empty()
        {
            outs.push(Out::Endings(key.0, reply, messages));
        }
    }
    outs
}

/// Sends one of the outbox's messages (a `started` is sent already, with others); a progress
/// message is framed already (`frame_progress`).
async fn send_one(node: &Arc<Node>, out: Out) {
    let (reply, mut headers, body, done) = match out {
        Out::Started(_) => return,
        Out::Progress((reply, call), body) => {
            if !node.payloads.fits(body.len()) {
                tracing::warn!(
                    bytes = body.len() - 4,
                    "a progress message over the server's limit; dropped"
                );
                return;
            }
            (reply, headers_of(Kind::Progress, Some(call)), body, None)
        }
        Out::Alive(reply, calls) => {
            let mut headers = headers_of(Kind::Alive, None);
            headers.insert(wire::SLOT, node.slot_name.as_str());
            headers.insert(wire::LEASE, wire::millis(node.lease).as_str());
            (reply, headers, CallId::join(&calls).into_bytes(), None)
        }
        // `send` finishes a round's endings before it sends them (`Out::Done`); an ending that
        // reaches here another way is finished here.
        Out::Ended(key, ending) => {
            // Cancelled meanwhile: its caller has resolved already.
            let Some(parcel) = node.finished(&key) else { return };
            node.refill();
            let (kind, body) = ending.into_message();
            (key.0, headers_of(kind, Some(key.1)), body, Some((parcel, true)))
        }
        Out::Done(key, ending, parcel) => {
            let (kind, body) = ending.into_message();
            (key.0, headers_of(kind, Some(key.1)), body, Some((parcel, true)))
        }
        Out::Endings(reply, body, messages) => {
            let headers = headers_of(Kind::Endings, None);
            let body = Bytes::from(body);
            node.remember(&reply, &headers, &body);
            if let Err(error) =
                node.client.publish_with_headers(reply.to_string(), headers, body).await
            {
                tracing::warn!(%error, "a reply could not be sent");
            }
            for parcel in messages {
                parcel.part_over(true).await;
            }
            return;
        }
        // Its message is terminated once no other part of it is answered.
        Out::Refused(key, ending, parcel) => {
            let (kind, body) = ending.into_message();
            (key.0, headers_of(kind, Some(key.1)), body, Some((parcel, false)))
        }
        Out::Flush(done) => {
            let _ = node.client.flush().await;
            let _ = done.send(());
            return;
        }
    };
    let body = if node.payloads.fits(body.len()) {
        Bytes::from(body)
    } else {
        // An ending beyond the server's message limit goes through the object store.
        match store_ending(node, &reply, &headers, &body).await {
            Ok(name) => {
                headers.insert(OBJECT, name.as_str());
                Bytes::new()
            }
            Err(message) => {
                let is_error =
                    headers.get(wire::KIND).is_some_and(|kind| kind.as_str() == "failed");
                let report = Ending::Report(Report::Unserializable { is_error, message });
                let (kind, report) = report.into_message();
                headers.insert(wire::KIND, kind.name());
                Bytes::from(report)
            }
        }
    };
    if done.is_some() {
        node.remember(&reply, &headers, &body);
    }
    let sent = node.client.publish_with_headers(reply.to_string(), headers, body).await;
    if let Err(error) = sent {
        tracing::warn!(%error, "a reply could not be sent");
    }
    if let Some((parcel, answered)) = done {
        parcel.part_over(answered).await;
    }
}

/// Stores an ending too large for a message; gives its object's name.
async fn store_ending(
    node: &Node,
    reply: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, String> {
    let call = headers.get(wire::CALL).map(|call| call.as_str().to_owned()).unwrap_or_default();
    let caller = reply.rsplit('.').next().unwrap_or_default();
    let name = format!("{caller}/{call}/ending");
    node.payloads.put(&name, body).await.map(|()| name)
}

/// A header of a message, if it has it.
fn header_of(message: &jetstream::Message, name: &str) -> Option<String> {
    message.headers.as_ref().and_then(|headers| headers.get(name)).map(|v| v.as_str().to_owned())
}

fn headers_of(kind: Kind, call: Option<CallId>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(wire::KIND, kind.name());
    if let Some(call) = call {
        headers.insert(wire::CALL, call.to_string().as_str());
    }
    headers
}

async fn ensure_dead_letters(
    jetstream: &jetstream::Context,
    names: &Names,
) -> Result<jetstream::stream::Stream, jetstream::context::CreateStreamError> {
    jetstream
        .get_or_create_stream(jetstream::stream::Config {
            name: names.dead_stream(),
            subjects: vec![names.dead()],
            max_age: Duration::from_secs(7 * 24 * 3600),
            storage: jetstream::stream::StorageType::File,
            description: Some(
                "task messages of parallel that no caller could be told about".into(),
            ),
            ..Default::default()
        })
        .await
}

/// Runs `open` (a stream's or a consumer's creation) until it succeeds or fails for good. A
/// server that does not answer in time (busy, restarting, its JetStream not ready yet:
/// `is_transient`) is waited for, as the connection waits for it, every 500 ms: the tasks of the
/// consumers opened before may be running here already (a serving process exited 1 on such an
/// error, leaving them), and one started beside a busy server exited on "jetstream request timed
/// out" (seen in the tests on a loaded machine) while its caller's tasks waited for it. A stop
/// signal still ends the wait (`run`).
async fn patiently<T, E, Fut>(
    what: &str,
    is_transient: impl Fn(&E) -> bool,
    mut open: impl FnMut() -> Fut,
) -> Result<T, E>
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    loop {
        let error = match open().await {
            Ok(opened) => return Ok(opened),
            Err(error) => error,
        };
        if !is_transient(&error) {
            return Err(error);
        }
        tracing::warn!(%error, "cannot open {what} yet; trying again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether a stream's creation failed for a while only (see [`patiently`]).
fn is_transient_stream_error(error: &jetstream::context::CreateStreamError) -> bool {
    use async_nats::jetstream::context::CreateStreamErrorKind;
    match error.kind() {
        CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => true,
        CreateStreamErrorKind::JetStream(error) => error.code() == 503,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patiently_tries_again_after_transient_errors_only() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let attempts = std::cell::Cell::new(0);
        let is_transient = |error: &String| error.starts_with("busy");
        let open = |results: &'static [Result<u32, &'static str>]| {
            let attempts = &attempts;
            move || {
                let result = results[attempts.get()].map_err(str::to_owned);
                attempts.set(attempts.get() + 1);
                std::future::ready(result)
            }
        };
        // Two answers that the server was busy, then the stream.
        let got = runtime.block_on(patiently(
            "the stream",
            is_transient,
            open(&[Err("busy"), Err("busy again"), Ok(7)]),
        ));
        assert_eq!((got, attempts.get()), (Ok(7), 3));
        // A refusal for good is returned at once, with the server's own words.
        attempts.set(0);
        let got = runtime.block_on(patiently(
            "the stream",
            is_transient,
            open(&[Err("no such account"), Ok(7)]),
        ));
        assert_eq!((got, attempts.get()), (Err("no such account".to_owned()), 1));
    }

    fn key(caller: &str, job: u64) -> Key {
        (Arc::from(caller), CallId { job, attempt: 1 })
    }

    #[test]
    fn a_task_is_announced_only_once_it_has_run_a_while_and_goes_on() {
        let mut unannounced = Unannounced::default();
        let start = Instant::now();
        unannounced.take_round(&[
            Out::Started(key("a", 1)),
            Out::Started(key("a", 2)),
            Out::Started(key("b", 3)),
        ]);
        assert!(unannounced.due().is_some());
        assert!(unannounced.take_due(start, |_| true).is_empty(), "none is due yet");
        // Task 2 ends before it is due: its ending says all.
        unannounced.take_round(&[Out::Ended(key("a", 2), Ending::Output(Vec::new()))]);
        let later = Instant::now() + ANNOUNCE_AFTER;
        let announced = unannounced.take_due(later, |_| true);
        let calls = |caller: &str| {
            announced.iter().find(|(to, _)| &**to == caller).map(|(_, calls)| calls.clone())
        };
        assert_eq!(calls("a"), Some(vec![CallId { job: 1, attempt: 1 }]));
        assert_eq!(calls("b"), Some(vec![CallId { job: 3, attempt: 1 }]));
        assert_eq!(announced.len(), 2, "one `started` per caller");
        assert!(unannounced.due().is_none(), "each is announced once");
    }

    #[test]
    fn progress_and_alive_announce_every_started_task_at_once() {
        for first_word in [
            Out::Progress(key("a", 1), Vec::new()),
            Out::Alive(Arc::from("a"), vec![CallId { job: 1, attempt: 1 }]),
        ] {
            let mut unannounced = Unannounced::default();
            unannounced.take_round(&[Out::Started(key("a", 1)), Out::Started(key("b", 2))]);
            unannounced.take_round(&[first_word]);
            let announced = unannounced.take_due(Instant::now(), |_| true);
            assert_eq!(announced.len(), 2, "announced before the word about them goes out");
        }
    }

    #[test]
    fn a_task_taken_back_from_its_slot_is_never_announced() {
        let mut unannounced = Unannounced::default();
        unannounced.take_round(&[Out::Started(key("a", 1)), Out::Started(key("a", 2))]);
        let later = Instant::now() + ANNOUNCE_AFTER;
        let taken_back = key("a", 1);
        let announced = unannounced.take_due(later, |key| *key != taken_back);
        assert_eq!(announced, vec![(Arc::from("a"), vec![CallId { job: 2, attempt: 1 }])]);
    }

    #[test]
    fn leases() {
        assert_eq!(parse_lease("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_lease("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_lease("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_lease("3"), Ok(Duration::from_secs(3)));
        for bad in ["", "10h", "ten", "100ms", "61m", "-1s", "1.5s", "99999999999999999999s"] {
            assert!(parse_lease(bad).is_err(), "{bad}");
        }
        // The units it takes, named (an hour's lease was refused as "not a duration").
        let refused = parse_lease("1h").expect_err("no hours");
        assert!(refused.contains("ms, s or m"), "{refused}");
    }
}
