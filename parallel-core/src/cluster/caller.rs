//! The caller's side of the cluster backend: a pool whose tasks run on serving processes.
//!
//! `submit` claims the job's attempt (untimed: the serving slot keeps the time limit, since the
//! task may wait in the stream first), serializes the task and hands it to the publisher, an
//! async task on the pool's own tokio runtime that publishes it into the stream and records its
//! sequence number when the server acknowledges it. Replies come on the caller's own subject:
//! `started` (which slot, and how often it will say it is alive), `alive`, progress messages, and
//! one ending, which resolves the attempt. Each flight (an attempt published and not ended) is in
//! one table, and every path that ends a flight removes it from the table first: an ending, a
//! cancel, the sweep that finds a started flight silent for longer than its lease (its serving
//! process was killed or cut off: `WorkerDied`), a publish the server refused. The job's own
//! state machine then makes sure its handle resolves once (`Job::finish_attempt`).
//!
//! Short tasks (a task whose endings say its tasks end within a millisecond, [`Lengths`]) of one
//! kind, published one after the other, travel up to [`wire::PARCEL_TASKS`] to a message (a
//! parcel): the server stores, acknowledges, delivers and forgets one message for all of them,
//! while each keeps its own flight, ending and cancel.
//!
//! A cancelled flight's message is deleted from the stream (a parcel's once none of its tasks is
//! out), so a task still queued never runs, and every serving process hears the cancel, so a
//! running one has its slot stopped and a queued one is skipped. A task delivered a second time
//! (its first serving process vanished before it could say `started`) runs only if its caller,
//! asked on its claim subject, still waits for it and never saw it start.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::{self, context, stream};
use async_nats::{Client, HeaderMap, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use super::connect::{self, Target};
use super::payloads::{Payloads, OBJECT};
use super::wire::{self, CallId, Ending, Kind, Names, Report};
use crate::job::{Halt, Job, Stop};
use crate::progress::{Decode, Incoming};
use crate::{wire_value, Error, Task, TaskError};

/// How often the caller looks for started flights gone silent.
const SWEEP: Duration = Duration::from_millis(100);

/// The caller's side of a cluster pool.
pub(crate) struct ClusterBackend {
    shared: Arc<Shared>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

/// What the pool's threads and its async tasks share.
struct Shared {
    names: Names,
    /// This pool's id, which names its reply and claim subjects.
    caller: String,
    reply_subject: String,
    flights: Mutex<HashMap<CallId, Flight>>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    max_frame: usize,
    is_stopping: AtomicBool,
    payloads: Payloads,
    /// The server's acknowledgements of the task messages.
    acks: Acks,
    /// How long each task (by fingerprint) ran lately, as its endings tell: whether its tasks
    /// may travel several to a message.
    lengths: Mutex<HashMap<u64, Lengths>>,
}

/// What the endings of one task (by fingerprint) said lately about how long it runs.
#[derive(Default)]
struct Lengths {
    /// How many endings were heard (up to [`Lengths::KNOWN`]).
    endings: u32,
    /// How long its tasks ran after their `started` came, on average (moving, over the last
    /// eight or so): none for a task that ended without one (a serving process says `started`
    /// only of a task that has been on its slot for a millisecond). It counts a task's wait in
    /// its slot's queue too, so it errs on the long side.
    after_start: Duration,
}

impl Lengths {
    /// How many endings make a task's length known.
    const KNOWN: u32 = 32;
    /// Tasks shorter than this on average may travel several to a message (a serving process
    /// takes up to 32 per slot ahead of its slots when they are under 20 ms).
    const SHORT: Duration = Duration::from_millis(5);

    fn heard(&mut self, after_start: Duration) {
        self.endings = (self.endings + 1).min(Lengths::KNOWN);
        self.after_start = (self.after_start * 7 + after_start) / 8;
    }

    /// Whether the task is known to be short. Only such tasks travel several to a message: a
    /// parcel goes to one serving process, and its tasks run one after the other there.
    fn is_short(&self) -> bool {
        self.endings >= Lengths::KNOWN && self.after_start < Lengths::SHORT
    }
}

/// An attempt published and not ended.
struct Flight {
    call: Arc<dyn Call>,
    /// Its message's sequence in the stream, once the server acknowledged it.
    sequence: Option<u64>,
    started: Option<Started>,
    /// Deleted from the stream as soon as its sequence is known (a cancel before the ack).
    is_withdrawn: bool,
    /// The name of its task value in the object store, when it is too large for a message.
    object: Option<String>,
    /// The task's fingerprint (for the lengths of its tasks).
    fingerprint: u64,
    /// The calls its message carries, when it travels in a parcel with others (set as it is
    /// packed): the message is deleted only once none of them is out.
    parcel: Option<Arc<[CallId]>>,
}

/// Which slot runs a flight, and when it last said so.
struct Started {
    slot: String,
    pid: u32,
    lease: Duration,
    heard: Instant,
    /// When it was first heard.
    since: Instant,
}

enum Outgoing {
    Publish {
        call: CallId,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
        /// The name to store the payload under, when it is too large for a message.
        object: Option<String>,
        /// Its task's fingerprint, and whether it may share a message with others of it (a
        /// first attempt of a task without a time limit, small; the task's lengths decide).
        fingerprint: u64,
        may_share: bool,
        task: &'static str,
    },
    /// Tasks submitted together (a `map` window), published in order.
    Together(Vec<Outgoing>),
    /// Stop `call` everywhere: delete its message, tell the serving processes.
    Cancel { call: CallId, sequence: Option<u64>, object: Option<String> },
    /// Delete a message whose flight ended otherwise (lost with its serving process).
    Delete { sequence: Option<u64>, object: Option<String> },
    /// The pool is being killed: every serving process stops all of this caller's tasks.
    KillAll,
    /// Everything before this is sent: flush, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

/// A flight's job with its task type erased.
trait Call: Send + Sync {
    fn task(&self) -> &'static str;
    /// Ends attempt `attempt` with what its slot reported (`Err`: a reply that does not decode).
    fn end(&self, attempt: u32, ending: Result<Ending, String>);
    /// Decodes a progress message of attempt `attempt` into the job's feed.
    fn decode_progress(&self, attempt: u32, bytes: &[u8]);
}

struct Submitted<T: Task> {
    job: Arc<Job<T>>,
}

impl<T: Task> Submitted<T> {
    fn serialization(value: &'static str, message: String) -> TaskError<T::Error> {
        TaskError::Serialization { task: T::NAME.to_owned(), value, message }
    }

    fn outcome(ending: Result<Ending, String>) -> crate::job::Outcome<T> {
        let ending = match ending {
            Ok(ending) => ending,
            Err(message) => {
                return Err(Self::serialization(
                    "output",
                    format!("the serving process's reply does not decode: {message}"),
                ))
            }
        };
        match ending {
            Ending::Output(bytes) => decode::<T::Output>(&bytes)
                .map_err(|message| Self::serialization("output", message)),
            Ending::Failed(bytes) => match decode::<T::Error>(&bytes) {
                Ok(error) => Err(TaskError::Failed(error)),
                Err(message) => Err(Self::serialization("error", message)),
            },
            Ending::Report(report) => Err(match report {
                Report::Panicked { message, location, backtrace } => {
                    TaskError::Panicked { task: T::NAME.to_owned(), message, location, backtrace }
                }
                Report::BadArguments(message) => Self::serialization("arguments", message),
                Report::Unserializable { is_error, message } => {
                    Self::serialization(if is_error { "error" } else { "output" }, message)
                }
                Report::Died { pid, reason, stderr_tail } => {
                    TaskError::WorkerDied { task: T::NAME.to_owned(), pid, reason, stderr_tail }
                }
                Report::Unavailable(reason) => {
                    TaskError::WorkerUnavailable { task: T::NAME.to_owned(), reason }
                }
                Report::TimedOut => TaskError::TimedOut,
            }),
        }
    }
}

/// Decodes a value from a serving process; a user's `Deserialize` that panics is an error too.
fn decode<V: serde::de::DeserializeOwned + 'static>(bytes: &[u8]) -> Result<V, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wire_value::decode::<V>(bytes)))
        .unwrap_or_else(|_| Err("its `Deserialize` panicked".to_owned()))
}

impl<T: Task> Call for Submitted<T> {
    fn task(&self) -> &'static str {
        T::NAME
    }

    fn end(&self, attempt: u32, ending: Result<Ending, String>) {
        self.job.finish_attempt(attempt, Self::outcome(ending));
    }

    fn decode_progress(&self, attempt: u32, bytes: &[u8]) {
        if !self.job.is_attempt_over(attempt) {
            Incoming { feed: self.job.feed(), attempt }.decode(bytes);
        }
    }
}

/// Cancels held for the end of a [`cancels_together`] scope, each with its pool.
type Held = Vec<(Arc<Shared>, Outgoing)>;

thread_local! {
    /// The cancels made on this thread inside [`cancels_together`]; `None` outside one.
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// Runs `f`, holding the cancels it makes on this thread; when it returns (or unwinds), each
/// pool's go to its publisher as one item, so that they are published in one message rather than
/// as the publisher happened to wake. Without it, `AsCompleted::cancel` on four tasks sent the
/// first cancel alone: its serving process killed the running task, its slot took the next
/// cancelled one, which started before the second message came (found by
/// `as_completed_sees_finished_handles_at_once_and_cancel_stops_the_rest`). A scope inside
/// another is part of it.
pub(crate) fn cancels_together<R>(f: impl FnOnce() -> R) -> R {
    /// Sends what the scope held, even if `f` panics.
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            let held = HELD.with(|held| held.borrow_mut().take()).unwrap_or_default();
            let mut pools: Vec<(Arc<Shared>, Vec<Outgoing>)> = Vec::new();
            for (shared, outgoing) in held {
                match pools.iter_mut().find(|(pool, _)| Arc::ptr_eq(pool, &shared)) {
                    Some((_, cancels)) => cancels.push(outgoing),
                    None => pools.push((shared, vec![outgoing])),
                }
            }
            for (shared, mut cancels) in pools {
                let outgoing = match cancels.len() {
                    1 => cancels.remove(0),
                    _ => Outgoing::Together(cancels),
                };
                // A publisher that stopped took its pool's tasks down with it: nothing to cancel.
                let _ = shared.outgoing.send(outgoing);
            }
        }
    }
    let is_outer = HELD.with(|held| {
        let mut held = held.borrow_mut();
        if held.is_some() {
            return false;
        }
        *held = Some(Vec::new());
        true
    });
    if !is_outer {
        return f();
    }
    let _release = Release;
    f()
}

/// Sends `cancel` to `shared`'s publisher, or holds it for the end of the [`cancels_together`]
/// scope this thread is in.
fn hold_or_send(shared: &Arc<Shared>, cancel: Outgoing) {
    let cancel = HELD.with(|held| match held.borrow_mut().as_mut() {
        Some(held) => {
            held.push((Arc::clone(shared), cancel));
            None
        }
        None => Some(cancel),
    });
    if let Some(cancel) = cancel {
        let _ = shared.outgoing.send(cancel);
    }
}

/// Stops one flight when its job is cancelled (or abandoned) while it is out.
struct CallStop {
    shared: Weak<Shared>,
    job: u64,
    /// Set right after the claim; a stop before it finds nothing to stop, and the submit sees
    /// the attempt over and publishes nothing.
    attempt: OnceLock<u32>,
}

impl Stop for CallStop {
    fn stop(&self, halt: Halt) {
        let (Some(shared), Some(&attempt)) = (self.shared.upgrade(), self.attempt.get()) else {
            return;
        };
        shared.withdraw(CallId { job: self.job, attempt }, halt);
    }
}

impl ClusterBackend {
    /// Connects to the cluster and starts the pool's async side.
    ///
    /// # Errors
    ///
    /// `Connection` when the server cannot be reached, refuses the credentials or has no
    /// JetStream; `InvalidConfig` for a malformed URL or namespace.
    pub(crate) fn start(target: &Target, max_frame: usize) -> Result<Self, Error> {
        wire::check_namespace(&target.namespace).map_err(Error::invalid_config)?;
        connect::check(target).map_err(Error::invalid_config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("parallel-cluster")
            .enable_all()
            .build()
            .map_err(|error| Error::io("start the cluster client's runtime", error))?;
        let names = Names::new(&target.namespace);
        let reconnected = Arc::new(tokio::sync::Notify::new());
        let (client, jetstream, stream) = runtime
            .block_on(async {
                let client =
                    connect::connect(target, "parallel caller", Arc::clone(&reconnected)).await?;
                let jetstream = jetstream::new(client.clone());
                let stream = ensure_stream(&jetstream, &names).await?;
                Ok::<_, String>((client, jetstream, stream))
            })
            .map_err(Error::connection)?;
        let caller = client.new_inbox().rsplit('.').next().unwrap_or_default().to_owned();
        let acks = Acks::new(client.new_inbox());
        let (outgoing, queue) = mpsc::unbounded_channel();
        let payloads = Payloads::new(jetstream.clone(), &names, client.server_info().max_payload);
        let shared = Arc::new(Shared {
            payloads,
            reply_subject: names.reply(&caller),
            names,
            caller,
            flights: Mutex::new(HashMap::new()),
            lengths: Mutex::new(HashMap::new()),
            outgoing,
            max_frame,
            is_stopping: AtomicBool::new(false),
            acks,
        });
        let subscriptions = runtime
            .block_on(async {
                let replies = client.subscribe(shared.reply_subject.clone()).await?;
                let claims = client.subscribe(shared.names.claim(&shared.caller)).await?;
                let acks = client.subscribe(format!("{}.>", shared.acks.prefix)).await?;
                // The subscriptions are on the server before the first task can be answered.
                client.flush().await.map_err(|error| error.to_string())?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((replies, claims, acks))
            })
            .map_err(|error| Error::connection(format!("cannot subscribe to replies: {error}")))?;
        let (replies, claims, acks) = subscriptions;
        runtime.spawn(publish(Arc::clone(&shared), client.clone(), stream, queue));
        runtime.spawn(listen_acks(Arc::clone(&shared), acks));
        runtime.spawn(listen(Arc::clone(&shared), replies));
        runtime.spawn(answer_claims(Arc::clone(&shared), client.clone(), claims));
        runtime.spawn(sweep(Arc::downgrade(&shared), client.clone()));
        runtime.spawn(recover(Arc::downgrade(&shared), client, reconnected));
        Ok(ClusterBackend { shared, runtime: Mutex::new(Some(runtime)) })
    }

    /// Publishes `job`'s next attempt; `false` if the pool is stopping.
    pub(crate) fn submit<T: Task>(&self, job: Arc<Job<T>>) -> bool {
        if self.shared.is_stopping.load(Ordering::Acquire) {
            return false;
        }
        if let Some(publish) = self.prepare(job) {
            self.send(publish);
        }
        true
    }

    /// Publishes the next attempts of `jobs` (a `map` window) together: short tasks among them
    /// then travel several to a message. For each, `false` if the pool is stopping.
    pub(crate) fn submit_all<T: Task>(&self, jobs: &[Arc<Job<T>>]) -> Vec<bool> {
        if self.shared.is_stopping.load(Ordering::Acquire) {
            return vec![false; jobs.len()];
        }
        let publishes: Vec<Outgoing> =
            jobs.iter().filter_map(|job| self.prepare(Arc::clone(job))).collect();
        match publishes.len() {
            0 => {}
            1 => publishes.into_iter().for_each(|publish| self.send(publish)),
            _ => self.send(Outgoing::Together(publishes)),
        }
        vec![true; jobs.len()]
    }

    /// Hands `outgoing` to the publisher; if it stopped, the tasks in it end as unavailable.
    fn send(&self, outgoing: Outgoing) {
        let Err(refused) = self.shared.outgoing.send(outgoing) else { return };
        let publishes = match refused.0 {
            Outgoing::Together(publishes) => publishes,
            other => vec![other],
        };
        for publish in publishes {
            if let Outgoing::Publish { call, .. } = publish {
                self.shared.end(
                    call,
                    Ok(Ending::Report(Report::Unavailable("the cluster client stopped".into()))),
                );
            }
        }
    }

    /// Claims `job`'s next attempt and makes its message, with its flight recorded; `None` if the
    /// job resolved meanwhile (cancelled, or its value does not serialize).
    fn prepare<T: Task>(&self, job: Arc<Job<T>>) -> Option<Outgoing> {
        let shared = &self.shared;
        let stop = Arc::new(CallStop {
            shared: Arc::downgrade(shared),
            job: job.id(),
            attempt: OnceLock::new(),
        });
        let Some((task, attempt)) = job.start_attempt_untimed(Arc::clone(&stop) as Arc<dyn Stop>)
        else {
            // Cancelled meanwhile: resolved already.
            return None;
        };
        let _ = stop.attempt.set(attempt);
        let call = CallId { job: job.id(), attempt };
        let submitted: Arc<dyn Call> = Arc::new(Submitted { job: Arc::clone(&job) });
        let mut payload = Vec::new();
        // A user's `Serialize` may panic; the job must resolve all the same.
        let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            encode(&task, &mut payload, shared.max_frame)
        }))
        .unwrap_or_else(|_| Err("its `Serialize` panicked".to_owned()));
        drop(task);
        if let Err(message) = encoded {
            let ending = Ending::Report(Report::BadArguments(message));
            submitted.end(attempt, Ok(ending));
            return None;
        }
        if job.is_attempt_over(attempt) {
            return None;
        }
        let mut headers = HeaderMap::new();
        headers.insert(wire::CALL, call.to_string().as_str());
        headers.insert(wire::REPLY, shared.reply_subject.as_str());
        headers.insert(wire::TASK, T::NAME);
        if let Some(timeout) = T::POLICY.timeout() {
            headers.insert(wire::TIMEOUT, wire::millis(timeout).as_str());
        }
        let fingerprint = crate::registry::fingerprint_of::<T>();
        let object = (!shared.payloads.fits(payload.len()))
            .then(|| format!("{}/{call}/args", shared.caller));
        // A task with a time limit travels alone: it must not wait behind others on its slot.
        let may_share = attempt == 1
            && T::POLICY.timeout().is_none()
            && object.is_none()
            && payload.len() <= SHARED_VALUE;
        shared.lock().insert(
            call,
            Flight {
                call: submitted,
                sequence: None,
                started: None,
                is_withdrawn: false,
                object: object.clone(),
                fingerprint,
                parcel: None,
            },
        );
        Some(Outgoing::Publish {
            call,
            subject: shared.names.task(fingerprint, &shared.caller),
            headers,
            payload: Bytes::from(payload),
            object,
            fingerprint,
            may_share,
            task: T::NAME,
        })
    }

    /// Tasks started on a serving slot, and tasks out and not started.
    pub(crate) fn activity(&self) -> (usize, usize) {
        let flights = self.shared.lock();
        let running = flights.values().filter(|flight| flight.started.is_some()).count();
        (running, flights.len() - running)
    }

    /// Tells every serving process, ahead of the jobs' own cancels, that the pool is killed.
    pub(crate) fn announce_kill(&self) {
        let _ = self.shared.outgoing.send(Outgoing::KillAll);
    }

    /// Stops the client once everything sent is out: the pool is drained (or killed, and its
    /// cancels are queued).
    pub(crate) fn stop(&self) {
        self.shared.is_stopping.store(true, Ordering::Release);
        let Some(runtime) = self.runtime.lock().unwrap_or_else(PoisonError::into_inner).take()
        else {
            return;
        };
        close(&self.shared, Background(Some(runtime)));
    }
}

impl Drop for ClusterBackend {
    /// A dropped pool's tasks finish in the background and their handles resolve (DESIGN §3):
    /// the client runs on, on a thread of its own, until no flight is out (before, it stopped at
    /// once, and the handles of the tasks in flight never resolved).
    fn drop(&mut self) {
        self.shared.is_stopping.store(true, Ordering::Release);
        let Some(runtime) = self.runtime.lock().unwrap_or_else(PoisonError::into_inner).take()
        else {
            return;
        };
        let runtime = Background(Some(runtime));
        if self.shared.lock().is_empty() {
            return close(&self.shared, runtime);
        }
        let shared = Arc::clone(&self.shared);
        let lingering =
            std::thread::Builder::new().name("parallel-cluster-drop".into()).spawn(move || {
                while !shared.lock().is_empty() {
                    std::thread::sleep(SWEEP);
                }
                close(&shared, runtime);
            });
        if let Err(error) = lingering {
            tracing::warn!(%error, "no thread to finish a dropped pool's tasks; stopped now");
        }
    }
}

/// The client's runtime, stopped without waiting when dropped (safe in any context, even
/// inside another runtime).
struct Background(Option<tokio::runtime::Runtime>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Sends everything queued, then stops the client.
fn close(shared: &Shared, runtime: Background) {
    let (flushed, wait) = std::sync::mpsc::channel();
    if shared.outgoing.send(Outgoing::Flush(flushed)).is_ok() {
        let _ = wait.recv_timeout(Duration::from_secs(5));
    }
    drop(runtime);
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallId, Flight>> {
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends flight `call` with `ending`, if it is still out; its value in the object store, if
    /// it had one, is no longer needed.
    fn end(&self, call: CallId, ending: Result<Ending, String>) {
        let flight = self.lock().remove(&call);
        if let Some(flight) = flight {
            self.lengths
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(flight.fingerprint)
                .or_default()
                .heard(flight.started.as_ref().map_or(Duration::ZERO, |s| s.since.elapsed()));
            if flight.object.is_some() {
                let _ =
                    self.outgoing.send(Outgoing::Delete { sequence: None, object: flight.object });
            }
            flight.call.end(call.attempt, ending);
        }
    }

    /// The job of `call` was cancelled or abandoned: forget the flight, delete its message, tell
    /// the serving processes. An abandoned flight that runs already is left to finish.
    fn withdraw(self: &Arc<Self>, call: CallId, halt: Halt) {
        let mut flights = self.lock();
        let Some(flight) = flights.get_mut(&call) else {
            return;
        };
        if halt == Halt::IfLong && flight.started.is_some() {
            // Left to finish; nobody reads its ending, and its value is read already.
            let object = flights.remove(&call).and_then(|flight| flight.object);
            drop(flights);
            if object.is_some() {
                let _ = self.outgoing.send(Outgoing::Delete { sequence: None, object });
            }
            return;
        }
        let (mut sequence, object) = (flight.sequence, flight.object.clone());
        if sequence.is_none() {
            // Not acknowledged yet: the ack deletes it.
            flight.is_withdrawn = true;
        } else if let Some(flight) = flights.remove(&call)
            && let Some(parcel) = &flight.parcel
            && is_any_out(&flights, parcel)
        {
            // Its message carries tasks still out: it stays, and the serving processes, told
            // of the cancel, skip this one.
            sequence = None;
        }
        drop(flights);
        hold_or_send(self, Outgoing::Cancel { call, sequence, object });
    }

    /// The server stored the message of `calls` (one task, or a parcel) as `sequence`. Those
    /// withdrawn meanwhile are forgotten, and the message deleted if none of its tasks is out.
    fn published(&self, calls: &[CallId], sequence: u64) {
        let mut flights = self.lock();
        let mut withdrawn = Vec::new();
        for call in calls {
            match flights.get_mut(call) {
                Some(flight) if flight.is_withdrawn => withdrawn.push(*call),
                Some(flight) => flight.sequence = Some(sequence),
                // Ended before its ack (a very fast slot): its message is acknowledged already.
                None => {}
            }
        }
        if withdrawn.is_empty() {
            return;
        }
        let objects: Vec<Option<String>> = withdrawn
            .iter()
            .filter_map(|call| flights.remove(call))
            .map(|flight| flight.object)
            .collect();
        let is_kept = is_any_out(&flights, calls);
        drop(flights);
        for (at, object) in objects.into_iter().enumerate() {
            let sequence = Some(sequence).filter(|_| at == 0 && !is_kept);
            let _ = self.outgoing.send(Outgoing::Delete { sequence, object });
        }
    }

    /// A reply from a serving process, with its value (read from the object store when the
    /// message was too small for it).
    fn on_reply(&self, message: &Message, payload: Vec<u8>) {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str())
        };
        let Some(kind) = header(wire::KIND).and_then(Kind::parse) else {
            tracing::warn!(subject = %message.subject, "a reply without a known kind; dropped");
            return;
        };
        if kind == Kind::Endings {
            match wire::endings(&payload) {
                Ok(endings) => {
                    for (call, ending) in endings {
                        self.end(call, ending);
                    }
                }
                Err(error) => tracing::warn!(%error, "a bad endings reply; dropped"),
            }
            return;
        }
        // `alive` and `started` name their calls in the body, several at once.
        if matches!(kind, Kind::Alive | Kind::Started) {
            let calls = std::str::from_utf8(&payload)
                .map_err(|error| error.to_string())
                .and_then(CallId::split);
            let calls = match calls {
                Ok(calls) => calls,
                Err(error) => {
                    tracing::warn!(%error, kind = kind.name(), "a bad reply; dropped");
                    return;
                }
            };
            let now = Instant::now();
            let slot = header(wire::SLOT).unwrap_or("?");
            let pid = slot.split('@').next().and_then(|pid| pid.parse().ok()).unwrap_or(0);
            let lease = header(wire::LEASE)
                .and_then(|lease| wire::parse_millis(lease).ok())
                .unwrap_or(Duration::from_secs(10));
            let mut flights = self.lock();
            for call in calls {
                let Some(flight) = flights.get_mut(&call) else { continue };
                // An `alive` for a flight not started says it started: its `started` was lost.
                match &mut flight.started {
                    Some(started) => started.heard = now,
                    None => {
                        flight.started = Some(Started {
                            slot: slot.to_owned(),
                            pid,
                            lease,
                            heard: now,
                            since: now,
                        });
                    }
                }
            }
            return;
        }
        let Some(Ok(call)) = header(wire::CALL).map(CallId::parse) else {
            tracing::warn!(kind = kind.name(), "a reply without a valid call; dropped");
            return;
        };
        match kind {
            Kind::Progress => {
                let call_of = self.lock().get(&call).map(|flight| Arc::clone(&flight.call));
                let Some(target) = call_of else { return };
                match wire::frames(&payload) {
                    Ok(frames) => {
                        for frame in frames {
                            target.decode_progress(call.attempt, frame);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "a bad progress reply; dropped"),
                }
            }
            Kind::Output | Kind::Failed | Kind::Ended => {
                if let Some(ending) = Ending::from_message(kind, payload) {
                    self.end(call, ending);
                }
            }
            Kind::Alive | Kind::Started | Kind::Endings => {}
        }
    }

    /// Ends every started flight whose serving process has been silent for longer than its lease.
    fn sweep(&self) {
        let now = Instant::now();
        // A task whose message the server has not acknowledged in time did not go out, unless
        // a serving process said it started (its acknowledgement was lost on the way).
        for call in self.acks.overdue(now) {
            let is_started = self.lock().get(&call).is_some_and(|flight| flight.started.is_some());
            if !is_started {
                self.end(call, refused(format!("no acknowledgement in {ACK_TIMEOUT:?}")));
            }
        }
        let lost: Vec<(CallId, Flight)> = {
            let mut flights = self.lock();
            let silent: Vec<CallId> = flights
                .iter()
                .filter(|(_, flight)| {
                    flight.started.as_ref().is_some_and(|s| now.duration_since(s.heard) > s.lease)
                })
                .map(|(call, _)| *call)
                .collect();
            silent.into_iter().filter_map(|call| flights.remove(&call).map(|f| (call, f))).collect()
        };
        for (call, flight) in lost {
            let mut sequence = flight.sequence;
            // A parcel's message stays while another of its tasks is out (it may be queued).
            if let Some(parcel) = &flight.parcel
                && is_any_out(&self.lock(), parcel)
            {
                sequence = None;
            }
            let object = flight.object;
            if sequence.is_some() || object.is_some() {
                let _ = self.outgoing.send(Outgoing::Delete { sequence, object });
            }
            let Some(started) = flight.started else { continue };
            tracing::warn!(task = flight.call.task(), slot = %started.slot, "serving slot lost");
            let reason = format!(
                "no word from the serving process {} for {:?} (its lease) while it ran the task: \
                 it was killed or cut off from the server, or its reply was lost while a \
                 connection was down",
                started.slot, started.lease
            );
            let ending = Ending::Report(Report::Died {
                pid: started.pid,
                reason,
                stderr_tail: String::new(),
            });
            flight.call.end(call.attempt, Ok(ending));
        }
    }

    /// A serving process took `calls` back from a slot whose worker had not started them, after
    /// it said they started: they are waiting again, and may run when they come again.
    fn handed_back(&self, calls: &[CallId]) {
        let mut flights = self.lock();
        for call in calls {
            if let Some(flight) = flights.get_mut(call) {
                flight.started = None;
            }
        }
    }

    /// Whether a task delivered again may run: its flight is out and never started.
    fn may_run(&self, call: CallId) -> bool {
        self.lock()
            .get(&call)
            .is_some_and(|flight| flight.started.is_none() && !flight.is_withdrawn)
    }

    /// The tasks of `calls`, a parcel's, may travel together (the lengths of their task say so):
    /// each flight learns the calls its message carries.
    fn pack(&self, calls: &Arc<[CallId]>) {
        let mut flights = self.lock();
        for call in calls.iter() {
            if let Some(flight) = flights.get_mut(call) {
                flight.parcel = Some(Arc::clone(calls));
            }
        }
    }

    /// Whether tasks of `fingerprint` are known to be short.
    fn is_short(&self, fingerprint: u64) -> bool {
        self.lengths
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&fingerprint)
            .is_some_and(Lengths::is_short)
    }
}

/// Whether any of `calls` is out and not withdrawn: its message must stay in the stream.
fn is_any_out(flights: &HashMap<CallId, Flight>, calls: &[CallId]) -> bool {
    calls.iter().any(|call| flights.get(call).is_some_and(|flight| !flight.is_withdrawn))
}

/// A task value this large or smaller may share its message with others of its task.
const SHARED_VALUE: usize = 4096;

/// Serializes the task value within the pool's message limit.
fn encode<T: Task>(task: &T, out: &mut Vec<u8>, max: usize) -> Result<(), String> {
    wire_value::encode(task, out, max).map_err(|error| error.describe(max))
}

/// The namespace's task stream: created by the first caller or serving process that needs it.
pub(super) async fn ensure_stream(
    jetstream: &jetstream::Context,
    names: &Names,
) -> Result<stream::Stream, String> {
    open_stream(jetstream, names).await.map_err(|error| stream_error(names, &error))
}

/// Opens (or creates) the namespace's task stream, with the server's own error.
pub(super) async fn open_stream(
    jetstream: &jetstream::Context,
    names: &Names,
) -> Result<stream::Stream, context::CreateStreamError> {
    jetstream
        .get_or_create_stream(stream::Config {
            name: names.stream(),
            subjects: vec![names.all_tasks()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            description: Some("tasks of parallel waiting for a serving slot".to_owned()),
            ..Default::default()
        })
        .await
}

/// What a failed [`open_stream`] tells the user.
pub(super) fn stream_error(names: &Names, error: &context::CreateStreamError) -> String {
    format!("cannot open the task stream {}: {error}", names.stream())
}

/// How many of the publisher's items it takes in one round.
const PUBLISH_ROUND: usize = 1024;

/// Publishes tasks and cancels in order, and records each task's sequence as its ack arrives.
/// The cancels of one round go out together, in as few messages as fit, so that a serving
/// process drops every queued task they name before a slot they free takes the next one.
async fn publish(
    shared: Arc<Shared>,
    client: Client,
    stream: stream::Stream,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
) {
    let stream = Arc::new(stream);
    let unacked = &shared.acks.unacked;
    let mut round = Vec::with_capacity(PUBLISH_ROUND);
    let mut cancels = Vec::new();
    let mut deletes = Vec::new();
    // Once the pool is killed, its tasks' messages are purged and every serving process told
    // already: cancels and deletions of messages are no longer needed (stored values still are).
    let mut is_killed = false;
    let mut packing = Packing::default();
    // Whether each task is known to be short, looked up once per round.
    let mut short = HashMap::new();
    let mut received = Vec::with_capacity(PUBLISH_ROUND);
    while queue.recv_many(&mut received, PUBLISH_ROUND).await > 0 {
        for outgoing in received.drain(..) {
            match outgoing {
                Outgoing::Together(publishes) => round.extend(publishes),
                other => round.push(other),
            }
        }
        for outgoing in round.drain(..) {
            // Short tasks of the same kind, one after the other, travel together.
            let outgoing = match outgoing {
                Outgoing::Publish {
                    call,
                    subject,
                    headers,
                    payload,
                    object: None,
                    fingerprint,
                    may_share: true,
                    task,
                } if *short.entry(fingerprint).or_insert_with(|| shared.is_short(fingerprint)) => {
                    if !packing.takes(&subject, payload.len(), &shared.payloads) {
                        packing.publish(&shared, &client).await;
                    }
                    packing.push(call, subject, headers, payload, task);
                    continue;
                }
                other => other,
            };
            match outgoing {
                Outgoing::Cancel { call, sequence, object } => {
                    if !is_killed {
                        cancels.push(call);
                    }
                    deletes.push((sequence.filter(|_| !is_killed), object));
                    continue;
                }
                Outgoing::Delete { sequence, object } => {
                    deletes.push((sequence.filter(|_| !is_killed), object));
                    continue;
                }
                _ => {}
            }
            // Whatever else keeps its place after the tasks and the cancels before it.
            packing.publish(&shared, &client).await;
            send_cancels(&shared, &client, &mut cancels).await;
            match outgoing {
                Outgoing::Publish { call, subject, headers, payload, object: None, .. } => {
                    unacked.add();
                    let task = TaskMessage { call, parcel: None, subject, headers, payload };
                    publish_task(&shared, &client, task).await;
                }
                // Stored first, in the background: the tasks behind it need not wait.
                Outgoing::Publish {
                    call,
                    subject,
                    mut headers,
                    payload,
                    object: Some(name),
                    ..
                } => {
                    unacked.add();
                    let (shared, client) = (Arc::clone(&shared), client.clone());
                    tokio::spawn(async move {
                        if let Err(reason) = shared.payloads.put(&name, &payload).await {
                            shared.end(call, Ok(Ending::Report(Report::Unavailable(reason))));
                            shared.acks.unacked.done();
                            return;
                        }
                        headers.insert(OBJECT, name.as_str());
                        let task = TaskMessage {
                            call,
                            parcel: None,
                            subject,
                            headers,
                            payload: Bytes::new(),
                        };
                        publish_task(&shared, &client, task).await;
                    });
                }
                Outgoing::KillAll => {
                    let mut headers = HeaderMap::new();
                    headers.insert(wire::REPLY, shared.reply_subject.as_str());
                    headers.insert(wire::EVERY, "1");
                    let cancel = shared.names.cancel();
                    if let Err(error) =
                        client.publish_with_headers(cancel, headers, Bytes::new()).await
                    {
                        tracing::warn!(%error, "the kill could not be sent");
                    }
                    // One request for all of them (a killed pool's 10 000 deletions were 10 000
                    // requests, which held up every other client's JetStream requests for
                    // seconds), once the server has stored every task published before: one it
                    // stored after the purge would stay, for a serving process that never heard
                    // the kill. No task is published after a kill.
                    if tokio::time::timeout(KILL_SETTLES, unacked.settled()).await.is_err() {
                        tracing::warn!(
                            "the server has not acknowledged every task of a killed pool"
                        );
                    }
                    if let Err(error) =
                        stream.purge().filter(shared.names.caller_tasks(&shared.caller)).await
                    {
                        tracing::warn!(%error, "a killed pool's tasks could not be purged");
                    }
                    is_killed = true;
                }
                Outgoing::Flush(done) => {
                    delete(&shared, &stream, std::mem::take(&mut deletes));
                    let _ = client.flush().await;
                    let _ = done.send(());
                }
                Outgoing::Cancel { .. } | Outgoing::Delete { .. } | Outgoing::Together(_) => {}
            }
        }
        packing.publish(&shared, &client).await;
        short.clear();
        send_cancels(&shared, &client, &mut cancels).await;
        delete(&shared, &stream, std::mem::take(&mut deletes));
    }
}

/// Short tasks of one kind on their way into one message (a parcel, see [`wire::CALLS`]).
#[derive(Default)]
struct Packing {
    subject: String,
    task: &'static str,
    calls: Vec<CallId>,
    /// Each task's own headers (used if it ends up alone) and value.
    tasks: Vec<(HeaderMap, Bytes)>,
    /// The parcel's body so far.
    size: usize,
}

impl Packing {
    /// Whether a task of `subject` with a value of `len` bytes may join.
    fn takes(&self, subject: &str, len: usize, payloads: &Payloads) -> bool {
        self.calls.is_empty()
            || (self.subject == subject
                && self.calls.len() < wire::PARCEL_TASKS
                && payloads.fits(self.size + 4 + len))
    }

    fn push(
        &mut self,
        call: CallId,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
        task: &'static str,
    ) {
        if self.calls.is_empty() {
            self.subject = subject;
            self.task = task;
            self.size = 0;
        }
        self.size += 4 + payload.len();
        self.calls.push(call);
        self.tasks.push((headers, payload));
    }

    /// Publishes what it holds: a task alone as it came, several as one parcel.
    async fn publish(&mut self, shared: &Arc<Shared>, client: &Client) {
        if self.calls.is_empty() {
            return;
        }
        let subject = std::mem::take(&mut self.subject);
        let calls = std::mem::take(&mut self.calls);
        let tasks = std::mem::take(&mut self.tasks);
        shared.acks.unacked.add();
        if let [(headers, payload)] = &tasks[..] {
            let (call, headers, payload) = (calls[0], headers.clone(), payload.clone());
            let task = TaskMessage { call, parcel: None, subject, headers, payload };
            return publish_task(shared, client, task).await;
        }
        let body = wire::pack(tasks.iter().map(|(_, payload)| &payload[..]));
        let parcel: Arc<[CallId]> = Arc::from(calls);
        shared.pack(&parcel);
        let mut headers = HeaderMap::new();
        headers.insert(wire::CALLS, CallId::join(&parcel).as_str());
        headers.insert(wire::REPLY, shared.reply_subject.as_str());
        headers.insert(wire::TASK, self.task);
        let task = TaskMessage {
            call: parcel[0],
            parcel: Some(parcel),
            subject,
            headers,
            payload: Bytes::from(body),
        };
        publish_task(shared, client, task).await;
    }
}

/// Tells every serving process to stop `calls`, in as few messages as fit.
async fn send_cancels(shared: &Shared, client: &Client, calls: &mut Vec<CallId>) {
    for chunk in calls.chunks(wire::CANCELS_PER_MESSAGE) {
        let mut headers = HeaderMap::new();
        headers.insert(wire::REPLY, shared.reply_subject.as_str());
        let body = Bytes::from(CallId::join(chunk).into_bytes());
        if let Err(error) = client.publish_with_headers(shared.names.cancel(), headers, body).await
        {
            tracing::warn!(%error, calls = chunk.len(), "cancels could not be sent");
        }
    }
    calls.clear();
}

/// How long a kill waits for the server to acknowledge the tasks published before it.
const KILL_SETTLES: Duration = Duration::from_secs(5);

/// The publishes whose acks have not come yet (counted from when the publisher takes them).
#[derive(Default)]
struct Unacked {
    count: AtomicUsize,
    none_left: Notify,
}

impl Unacked {
    fn add(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.none_left.notify_waiters();
        }
    }

    /// Returns once every publish counted is acknowledged or refused.
    async fn settled(&self) {
        loop {
            // Created before the count is read: a `notify_waiters` after the read wakes it.
            let none_left = self.none_left.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            none_left.await;
        }
    }
}

/// A task message to publish.
struct TaskMessage {
    /// Its call, or its first call if it is a parcel.
    call: CallId,
    /// Every call of a parcel.
    parcel: Option<Arc<[CallId]>>,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

/// How long the server may take to acknowledge a task message before the task is given up as
/// not taken (async-nats's own default for a JetStream publish).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How many task messages may wait for their acknowledgements at once: the publisher waits for
/// room beyond that, as the server falls behind.
const ACKS_IN_FLIGHT: usize = 4096;

/// The acknowledgements of task messages. Each message names `{prefix}.{call}` as its reply
/// subject and one subscription takes them all: a publish costs no task, timer or channel of
/// its own (async-nats's `publish` awaited in a task of its own was a third of the caller's
/// CPU per task, in the allocator).
struct Acks {
    prefix: String,
    /// The messages whose acknowledgement has not come, by their first call: when each was
    /// published, its room, and the calls of a parcel.
    awaiting: Mutex<HashMap<CallId, Awaited>>,
    room: Arc<Semaphore>,
    unacked: Unacked,
}

impl Acks {
    fn new(prefix: String) -> Self {
        Acks {
            prefix,
            awaiting: Mutex::new(HashMap::new()),
            room: Arc::new(Semaphore::new(ACKS_IN_FLIGHT)),
            unacked: Unacked::default(),
        }
    }

    fn awaiting(&self) -> std::sync::MutexGuard<'_, HashMap<CallId, Awaited>> {
        self.awaiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The acknowledgement of the message whose first call is `call` came, or will never count:
    /// the calls it carries, or `None` if it was settled already.
    fn settle(&self, call: CallId) -> Option<Vec<CallId>> {
        let awaited = self.awaiting().remove(&call)?;
        self.unacked.done();
        Some(awaited.calls(call))
    }

    /// The calls whose message's acknowledgement is overdue, settled.
    fn overdue(&self, now: Instant) -> Vec<CallId> {
        let mut awaiting = self.awaiting();
        let firsts: Vec<CallId> = awaiting
            .iter()
            .filter(|(_, awaited)| now.duration_since(awaited.sent) > ACK_TIMEOUT)
            .map(|(call, _)| *call)
            .collect();
        let mut overdue = Vec::with_capacity(firsts.len());
        for call in &firsts {
            if let Some(awaited) = awaiting.remove(call) {
                overdue.extend(awaited.calls(*call));
            }
        }
        drop(awaiting);
        for _ in &firsts {
            self.unacked.done();
        }
        overdue
    }
}

/// A task message whose acknowledgement has not come.
struct Awaited {
    sent: Instant,
    _room: OwnedSemaphorePermit,
    /// The calls of a parcel (`None`: the message carries its first call alone).
    parcel: Option<Arc<[CallId]>>,
}

impl Awaited {
    fn calls(&self, first: CallId) -> Vec<CallId> {
        self.parcel.as_deref().map_or_else(|| vec![first], <[CallId]>::to_vec)
    }
}

/// What the server answered to a task message: its sequence in the stream, or why it was not
/// stored.
fn read_ack(message: &Message) -> Result<u64, String> {
    if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        return Err(
            "no stream takes the task's subject (was the namespace's stream deleted?)".to_owned()
        );
    }
    match serde_json::from_slice::<Response<PublishAck>>(&message.payload) {
        Ok(Response::Ok(ack)) => Ok(ack.sequence),
        Ok(Response::Err { error }) => Err(error.to_string()),
        Err(error) => Err(format!("an acknowledgement that does not read: {error}")),
    }
}

/// Why a task did not go out.
fn refused(error: impl std::fmt::Display) -> Result<Ending, String> {
    Ok(Ending::Report(Report::Unavailable(format!("the server did not take the task: {error}"))))
}

/// Publishes one task (counted in `unacked` by the publisher); [`listen_acks`] records its
/// sequence when the server's acknowledgement comes.
async fn publish_task(shared: &Arc<Shared>, client: &Client, task: TaskMessage) {
    let TaskMessage { call, parcel, subject, headers, payload } = task;
    let acks = &shared.acks;
    let Ok(room) = Arc::clone(&acks.room).acquire_owned().await else {
        return;
    };
    acks.awaiting().insert(call, Awaited { sent: Instant::now(), _room: room, parcel });
    let reply = format!("{}.{call}", acks.prefix);
    if let Err(error) =
        client.publish_with_reply_and_headers(subject, reply, headers, payload).await
        && let Some(calls) = acks.settle(call)
    {
        for call in calls {
            shared.end(call, refused(&error));
        }
    }
}

/// The server's acknowledgements of this caller's task messages.
async fn listen_acks(shared: Arc<Shared>, mut acks: async_nats::Subscriber) {
    while let Some(message) = acks.next().await {
        let call = message
            .subject
            .strip_prefix(shared.acks.prefix.as_str())
            .and_then(|call| call.strip_prefix('.'))
            .and_then(|call| CallId::parse(call).ok());
        let Some(call) = call else {
            tracing::warn!(subject = %message.subject, "an acknowledgement for no task; dropped");
            continue;
        };
        // Overdue and given up already: its flights ended.
        let Some(calls) = shared.acks.settle(call) else {
            continue;
        };
        match read_ack(&message) {
            Ok(sequence) => shared.published(&calls, sequence),
            Err(error) => {
                for call in calls {
                    shared.end(call, refused(&error));
                }
            }
        }
    }
}

/// How many deletions run at once: a killed pool's 10 000 take ~160 round trips, not 10 000.
const DELETES_AT_ONCE: usize = 64;

/// Deletes tasks' messages from the stream, and their values from the object store, in the
/// background, [`DELETES_AT_ONCE`] at a time: gone already is fine.
fn delete(
    shared: &Arc<Shared>,
    stream: &Arc<stream::Stream>,
    deletes: Vec<(Option<u64>, Option<String>)>,
) {
    let deletes: Vec<_> = deletes
        .into_iter()
        .filter(|(sequence, object)| sequence.is_some() || object.is_some())
        .collect();
    if deletes.is_empty() {
        return;
    }
    let (shared, stream) = (Arc::clone(shared), Arc::clone(stream));
    tokio::spawn(async move {
        let one = |(sequence, object): (Option<u64>, Option<String>)| {
            let (shared, stream) = (&shared, &stream);
            async move {
                if let Some(sequence) = sequence
                    && let Err(error) = stream.delete_message(sequence).await
                {
                    tracing::debug!(sequence, %error, "a task message was not deleted (taken already?)");
                }
                if let Some(name) = object {
                    shared.payloads.delete(&name).await;
                }
            }
        };
        futures_util::stream::iter(deletes).for_each_concurrent(DELETES_AT_ONCE, one).await;
    });
}

async fn listen(shared: Arc<Shared>, mut replies: async_nats::Subscriber) {
    while let Some(message) = replies.next().await {
        let object = message.headers.as_ref().and_then(|headers| headers.get(OBJECT));
        let Some(name) = object.map(|name| name.as_str().to_owned()) else {
            shared.on_reply(&message, message.payload.to_vec());
            continue;
        };
        // A value beyond the message limit: read from the object store in the background.
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            match shared.payloads.take(&name, shared.max_frame).await {
                Ok(payload) => shared.on_reply(&message, payload),
                Err(error) => {
                    let call = message.headers.as_ref().and_then(|headers| headers.get(wire::CALL));
                    if let Some(Ok(call)) = call.map(|call| CallId::parse(call.as_str())) {
                        shared.end(call, Err(error));
                    }
                }
            }
        });
    }
}

async fn answer_claims(shared: Arc<Shared>, client: Client, mut claims: async_nats::Subscriber) {
    while let Some(request) = claims.next().await {
        let headers = request.headers.as_ref();
        let answer = if headers.and_then(|headers| headers.get(wire::HANDED_BACK)).is_some() {
            match std::str::from_utf8(&request.payload)
                .map_err(|error| error.to_string())
                .and_then(CallId::split)
            {
                Ok(calls) => {
                    shared.handed_back(&calls);
                    "ok".to_owned()
                }
                Err(error) => {
                    tracing::warn!(%error, "a bad hand-back; dropped");
                    "bad".to_owned()
                }
            }
        } else {
            // The calls of a message delivered again: the answer names those that may run.
            let calls = headers
                .and_then(|headers| headers.get(wire::CALLS))
                .map(|calls| CallId::split(calls.as_str()));
            match calls {
                Some(Ok(calls)) => {
                    let run: Vec<CallId> =
                        calls.into_iter().filter(|call| shared.may_run(*call)).collect();
                    CallId::join(&run)
                }
                _ => {
                    tracing::warn!("a claim without valid calls; none may run");
                    String::new()
                }
            }
        };
        if let Some(reply) = request.reply {
            let _ = client.publish(reply, Bytes::from(answer.into_bytes())).await;
        }
    }
}

/// Looks for lost serving processes, while connected: the silence of a caller cut off from the
/// server says nothing about the serving processes.
async fn sweep(shared: Weak<Shared>, client: Client) {
    let mut ticks = tokio::time::interval(SWEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        if client.connection_state() == async_nats::connection::State::Connected {
            shared.sweep();
        }
    }
}

/// After each reconnection: every started flight gets a fresh lease (its `alive` messages were
/// lost with the connection), and the serving processes send this caller's recent replies again
/// (an ending sent while the caller was away would be lost otherwise; one it has is ignored).
async fn recover(shared: Weak<Shared>, client: Client, reconnected: Arc<tokio::sync::Notify>) {
    loop {
        reconnected.notified().await;
        let Some(shared) = shared.upgrade() else { return };
        let now = Instant::now();
        let (resend, reply) = {
            let mut flights = shared.lock();
            for started in flights.values_mut().filter_map(|flight| flight.started.as_mut()) {
                started.heard = now;
            }
            (shared.names.resend(), shared.reply_subject.clone())
        };
        let mut headers = HeaderMap::new();
        headers.insert(wire::REPLY, reply.as_str());
        if let Err(error) = client.publish_with_headers(resend, headers, Bytes::new()).await {
            tracing::warn!(%error, "the replies sent while away could not be asked for");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn awaited(acks: &Acks, call: CallId, sent: Instant) {
        let room = Arc::clone(&acks.room).try_acquire_owned().expect("room");
        acks.unacked.add();
        acks.awaiting().insert(call, Awaited { sent, _room: room, parcel: None });
    }

    #[test]
    fn an_acknowledgement_settles_its_call_once_and_gives_its_room_back() {
        let acks = Acks::new("_INBOX.test".to_owned());
        let call = CallId { job: 7, attempt: 1 };
        awaited(&acks, call, Instant::now());
        assert_eq!(acks.room.available_permits(), ACKS_IN_FLIGHT - 1);
        assert_eq!(acks.settle(call), Some(vec![call]));
        assert_eq!(
            acks.settle(call),
            None,
            "a second acknowledgement of the same call counts nothing"
        );
        assert_eq!(acks.room.available_permits(), ACKS_IN_FLIGHT);
        assert_eq!(acks.unacked.count.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_call_unacknowledged_past_the_timeout_is_overdue_once() {
        let acks = Acks::new("_INBOX.test".to_owned());
        let (old, new) = (CallId { job: 1, attempt: 1 }, CallId { job: 2, attempt: 1 });
        let now = Instant::now();
        awaited(&acks, old, now);
        awaited(&acks, new, now + ACK_TIMEOUT);
        let later = now + ACK_TIMEOUT + Duration::from_millis(1);
        assert_eq!(acks.overdue(later), vec![old]);
        assert!(acks.overdue(later).is_empty());
        assert_eq!(acks.settle(old), None, "its late acknowledgement finds it given up");
        assert_eq!(acks.settle(new), Some(vec![new]));
        assert_eq!(acks.unacked.count.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_acknowledgement_reads_as_a_sequence_or_the_server_s_reason() {
        let message = |payload: &'static str| Message {
            subject: "_INBOX.test.1.1".into(),
            reply: None,
            payload: Bytes::from_static(payload.as_bytes()),
            headers: None,
            status: None,
            description: None,
            length: payload.len(),
        };
        assert_eq!(read_ack(&message(r#"{"stream":"ns_tasks","seq":42}"#)), Ok(42));
        let refused = r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"ns_tasks","seq":0}"#;
        let reason = read_ack(&message(refused)).expect_err("an error");
        assert!(reason.contains("maximum messages exceeded"), "{reason}");
        let garbled = read_ack(&message("not json")).expect_err("an error");
        assert!(garbled.starts_with("an acknowledgement that does not read"), "{garbled}");
    }
}
