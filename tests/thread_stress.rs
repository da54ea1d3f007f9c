//! The thread backend under stress: 10 000 tasks on two threads that panic, use rayon inside
//! themselves and dispatch tasks of their own must each resolve to exactly their own result, with
//! no deadlock; and 10 000 queued tasks must all finish on `shutdown`, all be cancelled on `kill`,
//! and all still finish when their pool is dropped — without the drop waiting for them.
//!
//! Tasks run in this process, so they coordinate with the test through [`Board`]s: named,
//! process-wide gates and run counters. Every wait is bounded; `PARALLEL_STRESS_TASKS` changes the
//! number of tasks (`scripts/soak.sh` raises it).

mod common;

use common::within;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Environment, Pool, TaskError, TaskHandle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How long the mixed workload may take before it counts as a deadlock.
const MIXED_LIMIT: Duration = Duration::from_secs(120);
/// How long any other wait may take before a hang is reported as a failure.
const HANG_LIMIT: Duration = Duration::from_secs(60);
/// How long `kill` and dropping a pool may take: far less than a held task waits, so that one
/// that waited for its tasks fails.
const PROMPT_LIMIT: Duration = Duration::from_secs(10);
/// How many tasks each test runs when `PARALLEL_STRESS_TASKS` is not set.
const DEFAULT_TASKS: u64 = 10_000;

fn task_count() -> u64 {
    match std::env::var("PARALLEL_STRESS_TASKS") {
        Ok(value) => value.parse().unwrap_or_else(|_| panic!("PARALLEL_STRESS_TASKS={value:?}")),
        Err(_) => DEFAULT_TASKS,
    }
}

// ---------------------------------------------------------------------------------------------
// The mixed workload

/// What a task of the mixed workload does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Kind {
    /// Arithmetic only.
    Plain,
    /// A `par_iter` sum.
    ParSum,
    /// `rayon::join` of two computations.
    Join,
    /// Dispatches a task to the default pool and joins it.
    Nested,
    /// Panics on its own thread.
    Panic,
    /// Panics inside a `par_iter`, on whichever thread runs that item.
    PanicInRayon,
}

fn panic_message(id: u64) -> String {
    format!("stress panic {id}")
}

/// The length of the range a `ParSum` task sums.
fn par_len(id: u64) -> u64 {
    1_000 + id % 1_000
}

fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// What a task of `kind` returns, computed without rayon or tasks.
fn expected(id: u64, kind: Kind) -> u64 {
    match kind {
        Kind::Plain => id * 3 + 1,
        Kind::ParSum => (0..par_len(id)).map(|x| x ^ id).sum(),
        Kind::Join => fib(10 + id % 8) + id * id,
        Kind::Nested => id * 7,
        Kind::Panic | Kind::PanicInRayon => unreachable!("a panicking task returns nothing"),
    }
}

/// Runs on the default pool, dispatched from inside a `mixed` task.
#[task]
fn seven_times(id: u64) -> u64 {
    id * 7
}

/// Touches its Environment before and after the parallel part: a worker thread that picks up
/// another task while it waits inside rayon must not hand it the same Environment.
#[task]
fn mixed(env: &mut Environment, id: u64, kind: Kind) -> u64 {
    *env.get_or_insert_with("runs", || 0u64) += 1;
    let value = match kind {
        Kind::Plain => id * 3 + 1,
        Kind::ParSum => (0..par_len(id)).into_par_iter().map(|x| x ^ id).sum(),
        Kind::Join => {
            let (left, right) = rayon::join(|| fib(10 + id % 8), || id * id);
            left + right
        }
        Kind::Nested => seven_times::dispatch(id).join().expect("the nested task"),
        Kind::Panic => panic!("{}", panic_message(id)),
        Kind::PanicInRayon => {
            (0..64u64).into_par_iter().for_each(|x| {
                if x == 37 {
                    panic!("{}", panic_message(id));
                }
            });
            unreachable!("the parallel loop panicked")
        }
    };
    env.set("last", value);
    value
}

#[test]
fn mixed_tasks_on_two_threads_resolve_exactly() {
    let tasks = task_count();
    let mut rng = XorShift::new(0x7468_7265_6164);
    let kinds: Vec<Kind> = (0..tasks)
        .map(|_| match rng.below(100) {
            0..=2 => Kind::Panic,
            3..=4 => Kind::PanicInRayon,
            5..=49 => Kind::Plain,
            50..=69 => Kind::ParSum,
            70..=89 => Kind::Join,
            _ => Kind::Nested,
        })
        .collect();
    let started = Instant::now();
    let outcomes = within(MIXED_LIMIT, "the mixed workload", {
        let kinds = kinds.clone();
        move || {
            let pool = thread_pool();
            let handles: Vec<_> = kinds
                .iter()
                .enumerate()
                .map(|(id, &kind)| mixed::dispatch_on(&pool, id as u64, kind))
                .collect();
            handles.into_iter().map(TaskHandle::join).collect::<Vec<_>>()
        }
    });
    let elapsed = started.elapsed();
    assert_eq!(outcomes.len() as u64, tasks, "one result per task");
    let mut wrong = Vec::new();
    let mut counts: BTreeMap<Kind, u64> = BTreeMap::new();
    for (id, (kind, outcome)) in kinds.iter().zip(&outcomes).enumerate() {
        let id = id as u64;
        *counts.entry(*kind).or_default() += 1;
        let is_right = match (kind, outcome) {
            (Kind::Panic | Kind::PanicInRayon, Err(TaskError::Panicked { message, .. })) => {
                *message == panic_message(id)
            }
            (Kind::Panic | Kind::PanicInRayon, _) => false,
            (kind, outcome) => *outcome == Ok(expected(id, *kind)),
        };
        if !is_right {
            wrong.push(format!("task {id} ({kind:?}) resolved {outcome:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {tasks} tasks resolved wrongly; the first ones:\n{}",
        wrong.len(),
        wrong.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    let counts: Vec<String> = counts.iter().map(|(kind, n)| format!("{kind:?} {n}")).collect();
    eprintln!(
        "thread stress: {tasks} mixed tasks on 2 threads in {elapsed:.1?} (nested ones on the \
         {:?} default pool): {}",
        parallel::default_pool().backend(),
        counts.join(", ")
    );
}

// ---------------------------------------------------------------------------------------------
// Queued tasks on shutdown, kill and drop

/// A process-wide meeting point for the tasks of one test: a gate that `hold` tasks wait for, and
/// how many times each `tally` task ran.
struct Board {
    is_open: AtomicBool,
    holding: AtomicUsize,
    released: AtomicUsize,
    runs: Vec<AtomicU32>,
}

impl Board {
    fn total_runs(&self) -> u64 {
        self.runs.iter().map(|runs| u64::from(runs.load(Ordering::SeqCst))).sum()
    }

    fn open(&self) {
        self.is_open.store(true, Ordering::SeqCst);
    }
}

/// The board called `name`, created with room for `tasks` tally ids on first use.
fn board(name: &str, tasks: u64) -> Arc<Board> {
    static BOARDS: OnceLock<Mutex<HashMap<String, Arc<Board>>>> = OnceLock::new();
    let mut boards =
        BOARDS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    let board = boards.entry(name.to_owned()).or_insert_with(|| {
        Arc::new(Board {
            is_open: AtomicBool::new(false),
            holding: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
            runs: (0..tasks).map(|_| AtomicU32::new(0)).collect(),
        })
    });
    Arc::clone(board)
}

/// Holds its worker thread until the board's gate opens.
#[task]
fn hold(name: String) -> u64 {
    let board = board(&name, 0);
    board.holding.fetch_add(1, Ordering::SeqCst);
    let started = Instant::now();
    while !board.is_open.load(Ordering::SeqCst) {
        assert!(started.elapsed() < HANG_LIMIT, "the gate of {name} never opened");
        thread::sleep(Duration::from_millis(1));
    }
    board.released.fetch_add(1, Ordering::SeqCst);
    u64::MAX
}

/// Counts its run on the board.
#[task]
fn tally(name: String, id: u64) -> u64 {
    board(&name, 0).runs[id as usize].fetch_add(1, Ordering::SeqCst);
    id * 2
}

/// A two-thread pool whose threads are both held, with `tasks` tally tasks queued behind them.
struct Jammed {
    pool: Pool,
    board: Arc<Board>,
    holds: Vec<TaskHandle<hold::Task>>,
    queued: Vec<TaskHandle<tally::Task>>,
}

fn jammed(name: &str, tasks: u64) -> Jammed {
    let board = board(name, tasks);
    let pool = thread_pool();
    let holds: Vec<_> = (0..2).map(|_| hold::dispatch_on(&pool, name.to_owned())).collect();
    let started = Instant::now();
    while board.holding.load(Ordering::SeqCst) < 2 {
        assert!(started.elapsed() < HANG_LIMIT, "{name}: the holds did not both start");
        thread::sleep(Duration::from_millis(1));
    }
    let queued: Vec<_> =
        (0..tasks).map(|id| tally::dispatch_on(&pool, name.to_owned(), id)).collect();
    // Both threads are held: nothing queued can have run.
    assert_eq!(board.total_runs(), 0, "{name}: a task ran while both threads were held");
    Jammed { pool, board, holds, queued }
}

/// Every tally task ran exactly once and returned its value.
fn assert_each_ran_once(
    name: &str,
    board: &Board,
    outcomes: &[Result<u64, TaskError<parallel::Never>>],
) {
    for (id, outcome) in outcomes.iter().enumerate() {
        assert_eq!(*outcome, Ok(id as u64 * 2), "{name}: task {id}");
        assert_eq!(board.runs[id].load(Ordering::SeqCst), 1, "{name}: runs of task {id}");
    }
}

#[test]
fn shutdown_finishes_every_queued_task() {
    let tasks = task_count();
    let Jammed { pool, board, holds, queued } = jammed("shutdown", tasks);
    let pool = Arc::new(pool);
    let (done, shut) = mpsc::channel();
    let shutter = thread::spawn({
        let pool = Arc::clone(&pool);
        move || {
            pool.shutdown();
            let _ = done.send(());
        }
    });
    board.open();
    shut.recv_timeout(HANG_LIMIT).expect("shutdown returns once the queued tasks are done");
    shutter.join().expect("the shutdown thread");
    // Shutdown returns only after every task it accepted is finished.
    let unfinished = queued.iter().filter(|handle| !handle.is_finished()).count();
    assert_eq!(unfinished, 0, "tasks still unfinished after shutdown returned");
    for hold in holds {
        assert_eq!(hold.join(), Ok(u64::MAX));
    }
    let outcomes: Vec<_> = queued.into_iter().map(TaskHandle::join).collect();
    assert_each_ran_once("shutdown", &board, &outcomes);
    let refused = tally::dispatch_on(&pool, "shutdown".to_owned(), 0).join();
    assert!(matches!(refused, Err(TaskError::PoolClosed { .. })), "{refused:?}");
}

#[test]
fn kill_cancels_every_queued_task_and_resolves_every_handle() {
    let tasks = task_count();
    let Jammed { pool, board, holds, queued } = jammed("kill", tasks);
    // The held tasks wait for HANG_LIMIT: a kill that waited for them would time out.
    let pool = within(PROMPT_LIMIT, "kill", move || {
        pool.kill();
        pool
    });
    let (holds, queued) = within(HANG_LIMIT, "the killed pool's handles", move || {
        let holds: Vec<_> = holds.into_iter().map(TaskHandle::join).collect();
        let queued: Vec<_> = queued.into_iter().map(TaskHandle::join).collect();
        (holds, queued)
    });
    // Running tasks cannot be stopped on threads: they are abandoned and resolve as cancelled.
    for outcome in &holds {
        assert_eq!(*outcome, Err(TaskError::Cancelled), "a running task after kill");
    }
    let not_cancelled: Vec<_> = queued
        .iter()
        .enumerate()
        .filter(|(_, outcome)| **outcome != Err(TaskError::Cancelled))
        .take(10)
        .collect();
    assert!(not_cancelled.is_empty(), "queued tasks after kill: {not_cancelled:?}");
    assert_eq!(board.total_runs(), 0, "a queued task ran after kill");
    // Let the abandoned tasks end; the queued ones behind them must still never run.
    board.open();
    let started = Instant::now();
    while board.released.load(Ordering::SeqCst) < 2 {
        assert!(started.elapsed() < HANG_LIMIT, "the abandoned holds never ended");
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(board.total_runs(), 0, "a queued task ran after kill, once the threads were free");
    let refused = tally::dispatch_on(&pool, "kill".to_owned(), 0).join();
    assert!(matches!(refused, Err(TaskError::PoolClosed { .. })), "{refused:?}");
}

#[test]
fn dropping_a_busy_pool_does_not_wait_and_its_tasks_still_finish() {
    let tasks = task_count();
    let Jammed { pool, board, holds, queued } = jammed("drop", tasks);
    // Both threads are held until the gate opens, after the drop: a drop that waited for its
    // tasks would never return.
    within(PROMPT_LIMIT, "dropping the pool", move || drop(pool));
    board.open();
    let (holds, queued) = within(HANG_LIMIT, "the dropped pool's handles", move || {
        let holds: Vec<_> = holds.into_iter().map(TaskHandle::join).collect();
        let queued: Vec<_> = queued.into_iter().map(TaskHandle::join).collect();
        (holds, queued)
    });
    assert_eq!(holds, [Ok(u64::MAX), Ok(u64::MAX)]);
    assert_each_ran_once("drop", &board, &queued);
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn thread_pool() -> Pool {
    Pool::builder().backend(Backend::Thread).workers(2).build().expect("the thread pool builds")
}

/// Marsaglia's xorshift64: deterministic, so every run draws the same kinds.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n
    }
}
