//! Chaos soak of the process backend: many tasks on two worker processes with about one task in
//! a hundred misbehaving — it returns `Err`, panics, aborts, exits, has its worker SIGKILLed from
//! outside, times out, or is cancelled before or while it runs — and every handle must resolve
//! exactly once to the outcome its kind allows, no task may run twice, and afterwards the pool
//! must still have both workers and, once shut down and dropped, leave no child process, zombie or
//! file descriptor behind.
//!
//! Each task creates `ran-<id>` in a scratch directory with `create_new`, so a second run of the
//! same task panics with "ran twice" (and leaves `twice-<id>`). The faults come from a seeded
//! xorshift generator: `PARALLEL_SOAK_TASKS` (default 10 000) sets how many tasks run and
//! `PARALLEL_SOAK_SEED` picks another fault pattern; `scripts/soak.sh` runs 100 000 in release.
//!
//! This file holds a single test, so no other pool of this process disturbs the counts of
//! children and file descriptors.

#![cfg(feature = "process")]

mod common;

use common::{open_fds, publish, touch, within, Scratch};

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Pool, TaskError, TaskHandle};
use serde::{Deserialize, Serialize};

/// How long any single wait may take before a hang is reported as a failure.
const HANG_LIMIT: Duration = Duration::from_secs(60);
/// How long dead workers may take to be gone and reaped.
const REAP_LIMIT: Duration = Duration::from_secs(5);
/// How many tasks run when `PARALLEL_SOAK_TASKS` is not set.
const DEFAULT_TASKS: u64 = 10_000;
/// Tasks are submitted and joined in batches of this many.
const BATCH: u64 = 500;
/// One task in this many is a fault.
const FAULT_EVERY: u64 = 100;
/// The `join_timeout` of a task that sleeps for [`SLEEP`].
const TIMEOUT: Duration = Duration::from_millis(50);
/// How long a task that is meant to be stopped (timed out or cancelled while running) sleeps:
/// if it is not stopped, it ends its sleep and leaves `overslept-<id>`.
const SLEEP: Duration = Duration::from_secs(3);
/// The reason of a worker death by SIGABRT, as `WorkerDied` reports it.
const ABORT_REASON: &str = "killed by signal 6 (SIGABRT)";

// ---------------------------------------------------------------------------------------------
// Tasks

/// What a task does, beyond recording that it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Kind {
    /// Returns `Ok(id)`.
    Normal,
    /// Returns `Err(failure_message(id))`.
    Fail,
    /// Panics with `panic_message(id)`.
    Panic,
    /// `std::process::abort()`.
    Abort,
    /// `std::process::exit(exit_code(id))`.
    Exit,
    /// A normal task, submitted together with a request to SIGKILL some live worker.
    Kill,
    /// Sleeps; joined with a `join_timeout` shorter than the sleep.
    Timeout,
    /// A normal task, cancelled right after it was submitted.
    CancelEarly,
    /// Sleeps; cancelled once it is seen running.
    CancelRunning,
    /// A normal task, cancelled while both workers are held by other tasks: it must never run.
    CancelQueued,
}

/// The faults, drawn uniformly when a task is a fault.
const FAULTS: [Kind; 9] = [
    Kind::Fail,
    Kind::Panic,
    Kind::Abort,
    Kind::Exit,
    Kind::Kill,
    Kind::Timeout,
    Kind::CancelEarly,
    Kind::CancelRunning,
    Kind::CancelQueued,
];

fn failure_message(id: u64) -> String {
    format!("chaos failure {id}")
}

fn panic_message(id: u64) -> String {
    format!("chaos panic {id}")
}

/// 1 to 100: never 0 (a clean exit) nor the backend's own 101.
fn exit_code(id: u64) -> i32 {
    1 + (id % 100) as i32
}

/// Records its run in `dir/ran-<id>` (panicking if the file exists: the task ran before), then
/// does what `kind` says.
#[task]
fn work(id: u64, kind: Kind, dir: String) -> Result<u64, String> {
    let dir = Path::new(&dir);
    let recorded =
        fs::OpenOptions::new().write(true).create_new(true).open(dir.join(format!("ran-{id}")));
    match recorded {
        Ok(_) => {}
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {
            // The panic may go unseen if nobody waits for this run any more; the file does not.
            let _ = fs::write(dir.join(format!("twice-{id}")), b"");
            panic!("ran twice: task {id} ({kind:?})");
        }
        Err(error) => panic!("cannot record task {id}: {error}"),
    }
    match kind {
        Kind::Normal | Kind::Kill | Kind::CancelEarly | Kind::CancelQueued => Ok(id),
        Kind::Fail => Err(failure_message(id)),
        Kind::Panic => panic!("{}", panic_message(id)),
        Kind::Abort => std::process::abort(),
        Kind::Exit => std::process::exit(exit_code(id)),
        Kind::Timeout | Kind::CancelRunning => {
            touch(dir.join(format!("started-{id}")));
            // This test is about real time: the sleep is what a timeout or a cancel must cut.
            thread::sleep(SLEEP);
            touch(dir.join(format!("overslept-{id}")));
            Ok(id)
        }
    }
}

/// Publishes its worker's pid in `started`, then waits until `gate` exists.
#[task]
fn hold(started: String, gate: String) -> u32 {
    publish(Path::new(&started), &std::process::id().to_string());
    wait_for_file(Path::new(&gate));
    std::process::id()
}

/// Arrives at a rendezvous of `of` tasks in `dir` and waits until all have arrived; returns its
/// worker's pid. The tasks of one rendezvous can only all return if they run at once.
#[task]
fn rendezvous(dir: String, index: u32, of: u32) -> u32 {
    let dir = Path::new(&dir);
    touch(dir.join(format!("arrived-{index}")));
    let started = Instant::now();
    while (0..of).any(|other| !dir.join(format!("arrived-{other}")).exists()) {
        assert!(started.elapsed() < HANG_LIMIT, "the rendezvous in {dir:?} never completed");
        thread::sleep(Duration::from_millis(1));
    }
    std::process::id()
}

// ---------------------------------------------------------------------------------------------
// Files

/// Blocks until `path` exists (in a task, a panic after [`HANG_LIMIT`] ends the task).
fn wait_for_file(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(started.elapsed() < HANG_LIMIT, "{path:?} never appeared");
        thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process of this one, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
struct Child {
    pid: u32,
    state: char,
    /// A SIGKILL is pending: the process is about to die.
    is_killed: bool,
}

impl Child {
    /// Dead or about to die: a zombie, or killed and not yet gone.
    fn is_dying(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x') || self.is_killed
    }
}

fn read_child(pid: u32, parent: u32) -> Option<Child> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces or parentheses itself.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid: u32 = fields.next()?.parse().ok()?;
    if ppid != parent {
        return None;
    }
    // Signal masks are hexadecimal; SIGKILL (9) is bit 8.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let is_killed = status.lines().any(|line| {
        let Some((key, mask)) = line.split_once(':') else { return false };
        matches!(key, "SigPnd" | "ShdPnd")
            && u64::from_str_radix(mask.trim(), 16).is_ok_and(|mask| mask & (1 << 8) != 0)
    });
    Some(Child { pid, state, is_killed })
}

/// The children of this process.
fn children() -> Vec<Child> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .expect("/proc is mounted")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| read_child(pid, me))
        .collect()
}

/// The live worker processes of this process: children running this executable.
fn live_workers(exe: &Path) -> Vec<u32> {
    children()
        .into_iter()
        .filter(|child| !child.is_dying())
        .filter(|child| fs::read_link(format!("/proc/{}/exe", child.pid)).is_ok_and(|e| e == exe))
        .map(|child| child.pid)
        .collect()
}

/// Polls `done` until it holds or `limit` passes; returns whether it held.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if done() {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until no child is dead or dying, so that every worker death has been noticed and
/// reaped by the pool (its slot is free again).
fn settle(what: &str) {
    let settled = wait_until(REAP_LIMIT, || children().iter().all(|child| !child.is_dying()));
    assert!(settled, "{what}: children still dying after {REAP_LIMIT:?}: {:?}", children());
}

// ---------------------------------------------------------------------------------------------
// Randomness and the chaos thread

/// Marsaglia's xorshift64: deterministic, so a seed replays the same faults.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

enum ChaosRequest {
    /// SIGKILL one live worker, if there is one.
    Kill,
    /// Answer once every earlier request is done.
    Flush(mpsc::Sender<()>),
}

/// Serves kill requests: after a random delay of up to 2 ms, picks a live worker from `/proc`
/// and runs `kill -9` on it. Returns how many kills were sent.
fn chaos(requests: mpsc::Receiver<ChaosRequest>, seed: u64, exe: PathBuf) -> u64 {
    let mut rng = XorShift::new(seed);
    let mut sent = 0;
    for request in requests {
        match request {
            ChaosRequest::Kill => {
                // This thread is about real time: a kill lands at a random point of a task.
                thread::sleep(Duration::from_micros(rng.below(2_000)));
                let workers = live_workers(&exe);
                if workers.is_empty() {
                    continue;
                }
                let pid = workers[rng.below(workers.len() as u64) as usize];
                let status = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()
                    .expect("the kill command runs");
                if status.success() {
                    sent += 1;
                }
            }
            ChaosRequest::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
    sent
}

// ---------------------------------------------------------------------------------------------
// Judging outcomes

type Outcome = Result<u64, TaskError<String>>;

/// A task in flight, as the soak submitted it.
struct Pending {
    id: u64,
    kind: Kind,
    handle: TaskHandle<work::Task>,
    /// For a cancelled task: whether it had resolved before `cancel` was called.
    resolved_before_cancel: Option<bool>,
}

/// A task as it resolved.
struct Resolved {
    id: u64,
    kind: Kind,
    outcome: Outcome,
    resolved_before_cancel: Option<bool>,
    /// For a timed task: whether it was seen running before `join_timeout` was called.
    started_before_timeout: bool,
}

/// What a resolved task counts as in the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Ok,
    Failed,
    Panicked,
    Aborted,
    Exited,
    /// Its worker was SIGKILLed from outside (by the chaos thread) while it ran.
    Killed,
    TimedOut,
    Cancelled,
}

fn is_sigkill(outcome: &Outcome) -> bool {
    matches!(outcome, Err(TaskError::WorkerDied { reason, pid, .. })
        if reason.contains("SIGKILL") && *pid != std::process::id())
}

/// Checks `task` against what its kind allows; `Err` says what is wrong.
fn judge(task: &Resolved, scratch: &Scratch) -> Result<Class, String> {
    let id = task.id;
    let ran = scratch.has(&format!("ran-{id}"));
    let overslept = scratch.has(&format!("overslept-{id}"));
    let resolved_first = task.resolved_before_cancel == Some(true);
    let class = match (task.kind, &task.outcome) {
        (_, Err(TaskError::Panicked { message, .. })) if message.contains("ran twice") => None,
        // The chaos thread may kill the worker of any task that runs (not of a task cancelled
        // before it resolved: cancelling resolves it at once).
        (Kind::CancelEarly | Kind::CancelRunning, outcome) if is_sigkill(outcome) => {
            resolved_first.then_some(Class::Killed)
        }
        (Kind::CancelQueued, _) => {
            (task.outcome == Err(TaskError::Cancelled) && !ran).then_some(Class::Cancelled)
        }
        (_, outcome) if is_sigkill(outcome) => Some(Class::Killed),
        (Kind::Normal | Kind::Kill, Ok(value)) => (*value == id && ran).then_some(Class::Ok),
        (Kind::CancelEarly, Ok(value)) => {
            (resolved_first && *value == id && ran).then_some(Class::Ok)
        }
        (Kind::Fail, Err(TaskError::Failed(message))) => {
            (*message == failure_message(id) && ran).then_some(Class::Failed)
        }
        (Kind::Panic, Err(TaskError::Panicked { message, .. })) => {
            (*message == panic_message(id) && ran).then_some(Class::Panicked)
        }
        (Kind::Abort, Err(TaskError::WorkerDied { reason, .. })) => {
            (reason == ABORT_REASON && ran).then_some(Class::Aborted)
        }
        (Kind::Exit, Err(TaskError::WorkerDied { reason, .. })) => {
            (*reason == format!("exited with code {}", exit_code(id)) && ran)
                .then_some(Class::Exited)
        }
        // A task seen running when its timeout began was running when it expired: its worker
        // must have been killed. One not seen running may have started just as it expired,
        // which lets it run on, its result dropped.
        (Kind::Timeout, Err(TaskError::TimedOut)) => {
            (!(task.started_before_timeout && overslept)).then_some(Class::TimedOut)
        }
        (Kind::CancelEarly, Err(TaskError::Cancelled)) => {
            (!resolved_first).then_some(Class::Cancelled)
        }
        // Cancelled while seen running: its worker must have been killed.
        (Kind::CancelRunning, Err(TaskError::Cancelled)) => {
            (!resolved_first && !overslept).then_some(Class::Cancelled)
        }
        _ => None,
    };
    class.ok_or_else(|| {
        format!(
            "task {id} ({:?}, resolved before cancel: {:?}, seen started before timeout: {}, \
             ran: {ran}, overslept: {overslept}) resolved {:?}",
            task.kind, task.resolved_before_cancel, task.started_before_timeout, task.outcome
        )
    })
}

// ---------------------------------------------------------------------------------------------
// The soak

struct Soak<'a> {
    pool: &'a Pool,
    scratch: &'a Scratch,
    dir: String,
    chaos: mpsc::Sender<ChaosRequest>,
    resolved: Vec<Resolved>,
    /// Tasks of each kind submitted.
    submitted: BTreeMap<Kind, u64>,
    /// Rounds that held both workers to cancel queued tasks.
    rounds: u64,
}

impl Soak<'_> {
    fn submit(&mut self, id: u64, kind: Kind) -> Pending {
        *self.submitted.entry(kind).or_default() += 1;
        let handle = work::dispatch_on(self.pool, id, kind, self.dir.clone());
        Pending { id, kind, handle, resolved_before_cancel: None }
    }

    fn cancel(pending: &mut Pending) {
        pending.resolved_before_cancel = Some(pending.handle.is_finished());
        pending.handle.cancel();
        assert!(pending.handle.is_finished(), "task {}: cancel did not resolve it", pending.id);
    }

    /// Waits until every kill asked of the chaos thread is done and every dead worker reaped.
    fn quiesce(&self, what: &str) {
        let (done, flushed) = mpsc::channel();
        self.chaos.send(ChaosRequest::Flush(done)).expect("the chaos thread runs");
        flushed.recv_timeout(HANG_LIMIT).expect("the chaos thread answers");
        settle(what);
    }

    /// Holds both workers with `hold` tasks, submits `victims` and cancels them, then lets the
    /// workers go: the victims were cancelled before they could start, so they must never run.
    fn cancel_while_held(&mut self, victims: &[u64]) -> Vec<Pending> {
        self.quiesce("before holding the workers");
        self.rounds += 1;
        let round = self.rounds;
        let gate = self.scratch.path(&format!("gate-{round}"));
        let started = |index: usize| self.scratch.path(&format!("held-{round}-{index}"));
        let holds: Vec<_> = (0..2)
            .map(|index| {
                hold::dispatch_on(
                    self.pool,
                    started(index).to_string_lossy().into_owned(),
                    gate.to_string_lossy().into_owned(),
                )
            })
            .collect();
        for (index, hold) in holds.iter().enumerate() {
            let is_held = wait_until(HANG_LIMIT, || started(index).exists() || hold.is_finished());
            assert!(is_held && !hold.is_finished(), "round {round}: hold {index} did not start");
        }
        let mut pending: Vec<Pending> =
            victims.iter().map(|&id| self.submit(id, Kind::CancelQueued)).collect();
        for victim in &mut pending {
            Self::cancel(victim);
        }
        touch(&gate);
        let pids: Vec<u32> = holds
            .into_iter()
            .map(|hold| match hold.join_timeout(HANG_LIMIT) {
                Ok(pid) => pid,
                other => panic!("round {round}: a hold resolved {other:?}"),
            })
            .collect();
        assert_ne!(pids[0], pids[1], "round {round}: both holds ran on one worker");
        pending
    }

    /// Submits tasks `ids` (whose kinds are `kinds`) and joins them in order.
    fn batch(&mut self, ids: std::ops::Range<u64>, kinds: &[Kind]) {
        let victims: Vec<u64> = ids
            .clone()
            .filter(|&id| kinds[(id - ids.start) as usize] == Kind::CancelQueued)
            .collect();
        let mut pending =
            if victims.is_empty() { Vec::new() } else { self.cancel_while_held(&victims) };
        for id in ids.clone() {
            let kind = kinds[(id - ids.start) as usize];
            if kind == Kind::CancelQueued {
                continue;
            }
            let mut task = self.submit(id, kind);
            match kind {
                Kind::Kill => self.chaos.send(ChaosRequest::Kill).expect("the chaos thread runs"),
                Kind::CancelEarly => Self::cancel(&mut task),
                _ => {}
            }
            pending.push(task);
        }
        for mut task in pending {
            let mut started_before_timeout = false;
            let outcome = match task.kind {
                Kind::Timeout => {
                    started_before_timeout = self.scratch.has(&format!("started-{}", task.id));
                    task.handle.join_timeout(TIMEOUT)
                }
                Kind::CancelRunning => {
                    let started = self.scratch.path(&format!("started-{}", task.id));
                    let is_seen =
                        wait_until(HANG_LIMIT, || started.exists() || task.handle.is_finished());
                    assert!(is_seen, "task {} neither started nor resolved", task.id);
                    Self::cancel(&mut task);
                    task.handle.join()
                }
                _ => task.handle.join(),
            };
            self.resolved.push(Resolved {
                id: task.id,
                kind: task.kind,
                outcome,
                resolved_before_cancel: task.resolved_before_cancel,
                started_before_timeout,
            });
        }
    }
}

/// Figures of one soak, for the summary line.
struct Summary<'a> {
    tasks: u64,
    seed: u64,
    submitted: &'a BTreeMap<Kind, u64>,
    classes: &'a BTreeMap<Class, u64>,
    /// Tasks that resolved as `WorkerDied`, whatever the reason.
    deaths: u64,
    kills_sent: u64,
    rounds: u64,
    wrong: usize,
    twice: usize,
    elapsed: Duration,
}

impl Summary<'_> {
    fn print(&self) {
        let faults: Vec<String> = FAULTS
            .iter()
            .map(|kind| format!("{kind:?} {}", count(self.submitted, *kind)))
            .collect();
        let outcomes: Vec<String> =
            self.classes.iter().map(|(class, n)| format!("{class:?} {n}")).collect();
        eprintln!(
            "chaos soak: {} tasks, seed {:#x}, {:.1?}; faults: {}; kills sent {}, hold rounds \
             {}; outcomes: {}; worker deaths {}; wrong {}, ran twice {}",
            self.tasks,
            self.seed,
            self.elapsed,
            faults.join(", "),
            self.kills_sent,
            self.rounds,
            outcomes.join(", "),
            self.deaths,
            self.wrong,
            self.twice,
        );
    }
}

fn count<K: Ord>(map: &BTreeMap<K, u64>, key: K) -> u64 {
    map.get(&key).copied().unwrap_or(0)
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value.parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

fn soak(tasks: u64, seed: u64) {
    let exe = fs::canonicalize(std::env::current_exe().expect("the test binary has a path"))
        .expect("the test binary exists");
    let scratch = Scratch::new("chaos");
    assert!(children().is_empty(), "children before the pool: {:?}", children());
    // A first pool, so that what the backend sets up once per program is not counted as a leak.
    let warm_up = Pool::builder().backend(Backend::Process).workers(1).build().expect("builds");
    rendezvous::dispatch_on(&warm_up, scratch.string(), 0, 1).join().expect("a first task");
    warm_up.shutdown();
    drop(warm_up);
    fs::remove_file(scratch.path("arrived-0")).expect("the warm-up task arrived");
    assert!(wait_until(REAP_LIMIT, || children().is_empty()), "the warm-up worker is not reaped");
    let fds_before = open_fds();

    let started = Instant::now();
    let pool = Pool::builder().backend(Backend::Process).workers(2).build().expect("builds");
    let (chaos_sender, chaos_requests) = mpsc::channel();
    let chaos_thread = thread::spawn({
        let exe = exe.clone();
        move || chaos(chaos_requests, seed ^ 0x9e37_79b9_7f4a_7c15, exe)
    });
    let mut soak = Soak {
        pool: &pool,
        scratch: &scratch,
        dir: scratch.string(),
        chaos: chaos_sender,
        resolved: Vec::with_capacity(tasks as usize),
        submitted: BTreeMap::new(),
        rounds: 0,
    };
    let mut rng = XorShift::new(seed);
    let mut start = 0;
    while start < tasks {
        let end = (start + BATCH).min(tasks);
        let kinds: Vec<Kind> = (start..end)
            .map(|_| {
                if rng.below(FAULT_EVERY) == 0 {
                    FAULTS[rng.below(FAULTS.len() as u64) as usize]
                } else {
                    Kind::Normal
                }
            })
            .collect();
        soak.batch(start..end, &kinds);
        start = end;
    }
    soak.quiesce("after the soak");
    let Soak { resolved, submitted, rounds, chaos: chaos_sender, .. } = soak;
    drop(chaos_sender);
    let kills_sent = chaos_thread.join().expect("the chaos thread");

    // The pool is whole again: two tasks that can only finish together run on two workers.
    let meeting = scratch.path("meeting");
    fs::create_dir(&meeting).expect("scratch dir is writable");
    let meeting = meeting.to_string_lossy().into_owned();
    let pair: Vec<_> =
        (0..2).map(|index| rendezvous::dispatch_on(&pool, meeting.clone(), index, 2)).collect();
    let pids: Vec<u32> = pair
        .into_iter()
        .map(|handle| handle.join().expect("a rendezvous task after the soak"))
        .collect();
    assert_ne!(pids[0], pids[1], "after the soak the pool runs on one worker only");
    let workers: HashSet<u32> = live_workers(&exe).into_iter().collect();
    assert_eq!(workers, pids.iter().copied().collect(), "the pool's workers after the soak");
    for id in 0..4 {
        let outcome = work::dispatch_on(&pool, tasks + id, Kind::Normal, scratch.string()).join();
        assert_eq!(outcome, Ok(tasks + id), "a plain task after the soak");
    }

    pool.shutdown();
    drop(pool);
    let elapsed = started.elapsed();

    // Every handle resolved once, as its kind allows; nothing ran twice.
    assert_eq!(resolved.len() as u64, tasks, "results");
    let mut classes: BTreeMap<Class, u64> = BTreeMap::new();
    let mut wrong = Vec::new();
    for task in &resolved {
        match judge(task, &scratch) {
            Ok(class) => *classes.entry(class).or_default() += 1,
            Err(problem) => wrong.push(problem),
        }
    }
    // A second run whose result nobody waited for shows only in its file.
    let twice = scratch.ids("twice");
    let deaths = resolved
        .iter()
        .filter(|task| matches!(task.outcome, Err(TaskError::WorkerDied { .. })))
        .count() as u64;
    Summary {
        tasks,
        seed,
        submitted: &submitted,
        classes: &classes,
        deaths,
        kills_sent,
        rounds,
        wrong: wrong.len(),
        twice: twice.len(),
        elapsed,
    }
    .print();
    assert!(
        wrong.is_empty() && twice.is_empty(),
        "seed {seed:#x}: tasks that ran twice: {twice:?}; {} of {tasks} tasks resolved \
         wrongly, the first ones:\n{}",
        wrong.len(),
        wrong.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    let killed = classes.get(&Class::Killed).copied().unwrap_or(0);
    assert!(
        killed <= kills_sent,
        "{killed} tasks died of SIGKILL, but {kills_sent} kills were sent"
    );

    // Nothing is left behind: no child, no zombie, no file descriptor.
    let is_clean = wait_until(REAP_LIMIT, || children().is_empty() && open_fds() == fds_before);
    let left = children();
    assert!(left.is_empty(), "children left after shutdown and drop: {left:?}");
    assert!(is_clean, "file descriptors leaked: {} open, {fds_before} before", open_fds());
}

#[test]
fn chaos_soak_on_two_worker_processes() {
    let tasks = env_u64("PARALLEL_SOAK_TASKS", DEFAULT_TASKS);
    let seed = env_u64("PARALLEL_SOAK_SEED", 0x5eed_c4a0_5eed);
    // Generous: a debug build on two cores runs the default 10 000 tasks in a fraction of this.
    let limit = Duration::from_secs(60) + Duration::from_millis(3) * tasks as u32;
    within(limit, "the chaos soak", move || soak(tasks, seed));
}
