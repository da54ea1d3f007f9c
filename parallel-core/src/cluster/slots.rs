//! A serving process's slots: where the tasks it takes from the stream run. Worker processes
//! with the `process` feature (a crash kills one worker, a timeout or a cancel kills it), threads
//! otherwise (a panic is caught; a timed-out or cancelled task is abandoned to finish).
//!
//! Each task a slot runs has a [`Ticket`]: the first of its ending, its timeout and its cancel
//! wins, and only an ending or a timeout reaches the caller (a cancelled task's caller has
//! resolved already).

#[cfg(test)]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::wire::{Ending, Report};
use crate::job::{Halt, Stop};
use crate::progress::Outbox;
use crate::registry::{Outcome, Registration};
use crate::wire_value::{self, Encode};
use crate::{timer, unwind, Environment, Error};

/// Where a task's progress messages and its ending go: the serving process's outbox.
pub(crate) trait Sink: Send + Sync {
    fn progress(&self, message: Vec<u8>);
    fn end(&self, ending: Ending);
}

/// Where a task is: waiting for a slot, handed to a worker (or a slot thread), being taken back
/// from it, or over.
const WAITING: u8 = 0;
const BEGUN: u8 = 1;
const WITHDRAWING: u8 = 2;
const OVER: u8 = 3;

/// One task on a slot: whoever ends it first decides what its caller hears.
pub(crate) struct Ticket {
    /// [`WAITING`], [`BEGUN`], [`WITHDRAWING`] or [`OVER`].
    state: AtomicU8,
    sink: Arc<dyn Sink>,
    /// How to stop the task where it runs (a worker process to kill).
    stop: Mutex<Option<Arc<dyn Stop>>>,
    deadline: Mutex<Option<timer::Key>>,
    /// The largest value it may send.
    max_frame: usize,
}

impl Ticket {
    pub(crate) fn new(sink: Arc<dyn Sink>, max_frame: usize) -> Arc<Ticket> {
        Arc::new(Ticket {
            state: AtomicU8::new(WAITING),
            sink,
            stop: Mutex::new(None),
            deadline: Mutex::new(None),
            max_frame,
        })
    }

    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame
    }

    pub(crate) fn is_over(&self) -> bool {
        self.state.load(Ordering::Acquire) == OVER
    }

    /// A slot takes the task: `false` if it is over (cancelled or withdrawn) and must not run.
    pub(crate) fn begin(&self) -> bool {
        loop {
            match self.state.compare_exchange(WAITING, BEGUN, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                // Being taken back: a moment (a claim word and a lock), then it is over or not.
                Err(WITHDRAWING) => std::hint::spin_loop(),
                // Handed to another worker of the same slots, after its first one gave it back.
                Err(state) => return state == BEGUN,
            }
        }
    }

    /// Takes the task back from the slots if it has not started (a worker that holds it skips
    /// it): `true` if it never runs here and reports nothing, so that its message can be handed
    /// back for another serving process.
    pub(crate) fn withdraw(&self) -> bool {
        if self.state.compare_exchange(WAITING, OVER, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return true;
        }
        // Held in between, so that a worker that gave it back unstarted (and died) cannot hand
        // it to another one meanwhile: `begin` waits for the answer.
        let held =
            self.state.compare_exchange(BEGUN, WITHDRAWING, Ordering::AcqRel, Ordering::Acquire);
        if held.is_err() {
            return false;
        }
        let stop = self.stop.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if !stop.is_some_and(|stop| stop.withdraw()) {
            // It runs. An ending that came meanwhile made it over, which stands.
            let _ = self.state.compare_exchange(
                WITHDRAWING,
                BEGUN,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            return false;
        }
        // Its worker skips it. A report that came meanwhile (its worker died) went to the caller,
        // which then answers `drop` when the message handed back is delivered again.
        self.state.store(OVER, Ordering::Release);
        if let Some(key) = self.deadline.lock().unwrap_or_else(PoisonError::into_inner).take() {
            timer::cancel(key);
        }
        true
    }

    /// Marks the task over; `false` if it was already.
    fn close(&self) -> bool {
        self.state.swap(OVER, Ordering::AcqRel) != OVER
    }

    /// Ends the task with `ending`, unless something ended it first; `false` then.
    pub(crate) fn end(&self, ending: Ending) -> bool {
        if !self.close() {
            return false;
        }
        if let Some(key) = self.deadline.lock().unwrap_or_else(PoisonError::into_inner).take() {
            timer::cancel(key);
        }
        self.sink.end(ending);
        true
    }

    pub(crate) fn progress(&self, message: Vec<u8>) {
        if !self.is_over() {
            self.sink.progress(message);
        }
    }

    /// The caller cancelled: nothing more is reported, and the task is stopped where it can be.
    pub(crate) fn cancel(&self) {
        if !self.close() {
            return;
        }
        if let Some(key) = self.deadline.lock().unwrap_or_else(PoisonError::into_inner).take() {
            timer::cancel(key);
        }
        let stop = self.stop.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(stop) = stop {
            stop.stop(Halt::Kill);
        }
    }

    /// How to stop the task now that a worker holds it.
    #[cfg_attr(not(process_backend), allow(dead_code))] // worker processes only
    pub(crate) fn set_stop(&self, stop: Arc<dyn Stop>) {
        *self.stop.lock().unwrap_or_else(PoisonError::into_inner) = Some(stop);
        // A cancel that came before the worker took it stops it now.
        if self.is_over()
            && let Some(stop) = self.stop.lock().unwrap_or_else(PoisonError::into_inner).take()
        {
            stop.stop(Halt::Kill);
        }
    }

    /// Starts the task's clock: past `timeout` it ends as timed out, and is stopped.
    pub(crate) fn arm(self: &Arc<Self>, timeout: Option<Duration>) {
        let Some(at) = timeout.and_then(|timeout| Instant::now().checked_add(timeout)) else {
            return;
        };
        let ticket = Arc::downgrade(self);
        let expire = Box::new(move || {
            let Some(ticket) = ticket.upgrade() else { return };
            *ticket.deadline.lock().unwrap_or_else(PoisonError::into_inner) = None;
            if ticket.end(Ending::Report(Report::TimedOut)) {
                let stop = ticket.stop.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(stop) = stop {
                    stop.stop(Halt::Kill);
                }
            }
        });
        match timer::schedule(at, expire) {
            Ok(key) => *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = Some(key),
            Err(_) => tracing::warn!("no timer thread: the task runs without its timeout"),
        }
    }
}

/// A task for a slot.
pub(crate) struct Work {
    pub(crate) task: &'static Registration,
    /// The task value, as the caller serialized it.
    pub(crate) args: Bytes,
    pub(crate) timeout: Option<Duration>,
    pub(crate) ticket: Arc<Ticket>,
}

/// The slots of a serving process.
pub(crate) enum Slots {
    Threads(ThreadSlots),
    #[cfg(process_backend)]
    Processes(crate::process::RemoteSlots),
}

impl Slots {
    /// `count` slots: worker processes if `processes` and the process backend is built,
    /// threads otherwise.
    pub(crate) fn start(count: usize, max_frame: usize, processes: bool) -> Result<Slots, Error> {
        #[cfg(process_backend)]
        if processes {
            return crate::process::RemoteSlots::start(count, max_frame).map(Slots::Processes);
        }
        let _ = (processes, max_frame);
        ThreadSlots::start(count).map(Slots::Threads)
    }

    /// What the slots are, for the log.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Slots::Threads(_) => "threads",
            #[cfg(process_backend)]
            Slots::Processes(_) => "worker processes",
        }
    }

    /// Hands `works` to free slots (the serving process hands them no more tasks than they
    /// have room for), together: worker processes get them in one write each.
    pub(crate) fn run(&self, works: Vec<Work>) {
        match self {
            Slots::Threads(slots) => works.into_iter().for_each(|work| slots.run(work)),
            #[cfg(process_backend)]
            Slots::Processes(slots) => slots.run(works),
        }
    }

    /// Lets the slots finish and stop.
    pub(crate) fn stop(&self) {
        match self {
            Slots::Threads(slots) => slots.stop(),
            #[cfg(process_backend)]
            Slots::Processes(slots) => slots.stop(),
        }
    }
}

/// Slots that are threads of the serving process, each with its own [`Environment`].
pub(crate) struct ThreadSlots {
    queue: Mutex<Option<mpsc::Sender<Work>>>,
}

impl ThreadSlots {
    pub(crate) fn start(count: usize) -> Result<ThreadSlots, Error> {
        let (sender, receiver) = mpsc::channel::<Work>();
        let receiver = Arc::new(Mutex::new(receiver));
        for worker_id in 0..count {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("parallel-slot-{worker_id}"))
                .spawn(move || {
                    let mut environment = Environment::for_worker(worker_id);
                    loop {
                        let work = receiver.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(work) = work else { break };
                        run_here(&mut environment, work);
                    }
                    unwind::drop_values(|| drop(environment));
                })
                .map_err(|error| Error::io("start a slot thread", error))?;
        }
        Ok(ThreadSlots { queue: Mutex::new(Some(sender)) })
    }

    fn run(&self, work: Work) {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let refused = match queue.as_ref() {
            Some(queue) => queue.send(work).err().map(|error| error.0),
            None => Some(work),
        };
        if let Some(work) = refused {
            work.ticket.end(Ending::Report(Report::Unavailable("the slots stopped".to_owned())));
        }
    }

    fn stop(&self) {
        // The threads finish the queue, then find it closed.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// Sends a thread slot's progress messages, serialized, to its ticket.
struct TicketOutbox(Arc<Ticket>);

impl Outbox for TicketOutbox {
    fn post(&self, message: &dyn Encode) {
        let mut bytes = Vec::new();
        match message.encode(&mut bytes, self.0.max_frame()) {
            Ok(()) => self.0.progress(bytes),
            Err(_) => tracing::warn!("a progress message does not serialize or fit; dropped"),
        }
    }
}

/// Runs `work` on this thread with `environment`.
fn run_here(environment: &mut Environment, work: Work) {
    let Work { task, args, timeout, ticket } = work;
    if !ticket.begin() {
        return;
    }
    ticket.arm(timeout);
    let outbox: Arc<dyn Outbox> = Arc::new(TicketOutbox(Arc::clone(&ticket)));
    let max = ticket.max_frame();
    let caught = unwind::catch(|| {
        let outcome = task.run(environment, &args, Some(outbox));
        // Serializing runs user code too (`Serialize` impls), so it stays inside the catch.
        let (value, is_error) = match outcome {
            Outcome::Output(output) => (output, false),
            Outcome::Failed(error) => (error, true),
            Outcome::BadInput(message) => return Ending::Report(Report::BadArguments(message)),
        };
        let mut bytes = Vec::new();
        match value.encode(&mut bytes, max) {
            Ok(()) if is_error => Ending::Failed(bytes),
            Ok(()) => Ending::Output(bytes),
            Err(error) => Ending::Report(Report::Unserializable {
                is_error,
                message: match error {
                    wire_value::EncodeError::OverLimit => {
                        format!("the value is over the serving process's limit of {max} bytes")
                    }
                    wire_value::EncodeError::Refused(error) => error.to_string(),
                },
            }),
        }
    });
    let ending = caught.unwrap_or_else(|report| {
        Ending::Report(Report::Panicked {
            message: report.message,
            location: report.location,
            backtrace: report.backtrace,
        })
    });
    ticket.end(ending);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what reaches the caller.
    #[derive(Default)]
    struct Count(Mutex<Vec<String>>);

    impl Sink for Count {
        fn progress(&self, _: Vec<u8>) {
            self.0.lock().unwrap().push("progress".into());
        }

        fn end(&self, ending: Ending) {
            self.0.lock().unwrap().push(format!("{ending:?}"));
        }
    }

    /// A worker's claim: takes the task back only before it started.
    struct Claim {
        started: AtomicBool,
        stopped: Mutex<Vec<Halt>>,
    }

    impl Stop for Claim {
        fn stop(&self, halt: Halt) {
            self.stopped.lock().unwrap().push(halt);
        }

        fn withdraw(&self) -> bool {
            !self.started.load(Ordering::SeqCst)
        }
    }

    fn new_ticket() -> (Arc<Count>, Arc<Ticket>) {
        let sink = Arc::new(Count::default());
        (Arc::clone(&sink), Ticket::new(sink, 1 << 20))
    }

    /// A claim that takes a while to answer.
    struct SlowClaim(bool);

    impl Stop for SlowClaim {
        fn stop(&self, _: Halt) {}

        fn withdraw(&self) -> bool {
            std::thread::sleep(Duration::from_millis(50));
            self.0
        }
    }

    /// A worker that gave the task back unstarted (and died) may hand it to another while it is
    /// being withdrawn: that one waits for the answer, and runs it only if the withdraw failed.
    #[test]
    fn a_task_handed_again_while_it_is_withdrawn_waits_for_the_answer() {
        for taken in [true, false] {
            let (_, ticket) = new_ticket();
            assert!(ticket.begin());
            ticket.set_stop(Arc::new(SlowClaim(taken)));
            let other = Arc::clone(&ticket);
            let withdraw = std::thread::spawn(move || other.withdraw());
            std::thread::sleep(Duration::from_millis(10));
            assert_eq!(ticket.begin(), !taken, "taken back: {taken}");
            assert_eq!(withdraw.join().unwrap(), taken);
        }
    }

    #[test]
    fn a_waiting_task_withdrawn_never_begins_and_reports_nothing() {
        let (sink, ticket) = new_ticket();
        assert!(ticket.withdraw());
        assert!(!ticket.begin(), "a slot that reaches it skips it");
        assert!(!ticket.end(Ending::Output(vec![1])));
        ticket.cancel();
        assert!(sink.0.lock().unwrap().is_empty());
    }

    #[test]
    fn a_begun_task_is_withdrawn_only_if_its_worker_has_not_started_it() {
        let (sink, ticket) = new_ticket();
        assert!(ticket.begin());
        assert!(ticket.begin(), "handed again to another worker of the same slots");
        assert!(!ticket.withdraw(), "no worker holds it yet: it may start");
        let claim =
            Arc::new(Claim { started: AtomicBool::new(true), stopped: Mutex::new(Vec::new()) });
        ticket.set_stop(Arc::clone(&claim) as Arc<dyn Stop>);
        assert!(!ticket.withdraw(), "its worker runs it");
        assert!(ticket.begin(), "a withdraw that failed leaves it begun");
        assert!(!ticket.is_over());
        assert!(ticket.end(Ending::Output(vec![7])));
        assert_eq!(sink.0.lock().unwrap().len(), 1);

        let (sink, ticket) = new_ticket();
        assert!(ticket.begin());
        let claim =
            Arc::new(Claim { started: AtomicBool::new(false), stopped: Mutex::new(Vec::new()) });
        ticket.set_stop(Arc::clone(&claim) as Arc<dyn Stop>);
        assert!(ticket.withdraw());
        assert!(ticket.is_over());
        assert!(!ticket.end(Ending::Report(Report::TimedOut)), "its worker skips it");
        ticket.cancel();
        assert!(claim.stopped.lock().unwrap().is_empty(), "nothing to kill");
        assert!(sink.0.lock().unwrap().is_empty());
    }
}
