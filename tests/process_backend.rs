//! What only worker processes can show: a crash kills its worker but not the pool, a timeout or a
//! cancel really stops a running task, workers are renewed and memory-limited, and dead workers
//! leave neither zombies nor file descriptors behind.
//!
//! Tasks run in other processes, so they coordinate with the test through files in a scratch
//! directory, as `tests/suite` does; every wait is bounded by [`HANG_LIMIT`].

#![cfg(feature = "process")]

mod common;

use common::{open_fds, publish, quietly, stat, touch, within, Scratch};

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Environment, Pool, Task, TaskError};
use serde::{Deserialize, Serialize};

/// How long any wait may take before a hang is reported as a failure.
const HANG_LIMIT: Duration = Duration::from_secs(60);
/// How long a killed or retired worker may take to be gone and reaped. Shorter than
/// [`HANG_LIMIT`], so that a worker left running ends the test before its task gives up waiting.
const REAP_LIMIT: Duration = Duration::from_secs(10);

/// Set in the environment of a copy of this test binary that runs one isolated check.
const ISOLATED_ROLE: &str = "PARALLEL_TEST_PROCESS_BACKEND_ISOLATED";

// ---------------------------------------------------------------------------------------------
// Tasks

/// Who ran a task: the worker's process and its slot in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Worker {
    pid: u32,
    id: usize,
}

impl Worker {
    fn current(env: &Environment) -> Worker {
        Worker { pid: std::process::id(), id: env.worker_id() }
    }
}

#[task]
fn whoami(env: &mut Environment) -> Worker {
    Worker::current(env)
}

/// Counts the tasks this worker's Environment has seen.
#[task]
fn count(env: &mut Environment) -> (Worker, u32) {
    let worker = Worker::current(env);
    let n = env.get_or_insert_with("count", || 0u32);
    *n += 1;
    (worker, *n)
}

/// Holds its worker: publishes `pid worker_id` in `started`, then waits until `gate` exists.
#[task]
fn hold(env: &mut Environment, started: String, gate: String) -> Worker {
    let worker = Worker::current(env);
    publish(&started, &format!("{} {}", worker.pid, worker.id));
    wait_for_file(&gate);
    worker
}

#[task]
fn mark(path: String) {
    touch(&path);
}

#[task]
fn panics(message: String) -> u32 {
    panic!("{message}")
}

/// How a `die` task ends its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Death {
    Abort,
    Segfault,
    Exit3,
    /// Waits to be killed from outside.
    Killed,
}

/// Appends a line to `<record>.runs`, publishes `pid worker_id` in `<record>.pid`, writes `token`
/// to stderr, then ends its worker as `how` says.
#[task]
fn die(env: &mut Environment, how: Death, record: String, token: String) -> u32 {
    let worker = Worker::current(env);
    let mut runs = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{record}.runs"))
        .expect("scratch dir is writable");
    writeln!(runs, "{}", worker.pid).expect("scratch dir is writable");
    eprintln!("{token}: about to die by {how:?}");
    publish(format!("{record}.pid"), &format!("{} {}", worker.pid, worker.id));
    match how {
        Death::Abort => std::process::abort(),
        Death::Segfault => {
            // black_box keeps the compiler from reasoning about the null pointer.
            let null = std::hint::black_box(std::ptr::null_mut::<u8>());
            // SAFETY: none, on purpose: the write faults and the worker dies of SIGSEGV, which is
            // what this task exists to do.
            unsafe { null.write_volatile(1) };
            unreachable!("a write through a null pointer returned")
        }
        Death::Exit3 => std::process::exit(3),
        Death::Killed => {
            wait_for_file(&format!("{record}.never"));
            0
        }
    }
}

/// Allocates and touches `bytes` bytes.
#[task]
fn allocate(bytes: u64) -> u64 {
    let block = std::hint::black_box(vec![1u8; usize::try_from(bytes).expect("fits in usize")]);
    block.iter().step_by(4096).map(|&byte| u64::from(byte)).sum()
}

#[task]
fn environment_keys() -> Vec<String> {
    std::env::vars_os().map(|(key, _)| key.to_string_lossy().into_owned()).collect()
}

#[task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[task]
fn worker_pid() -> u32 {
    std::process::id()
}

/// What a task saw when it dispatched tasks of its own on the default pool.
#[derive(Debug, Serialize, Deserialize)]
struct Nested {
    pid: u32,
    nested_pid: u32,
    sum: u64,
    default_backend: String,
}

#[task]
fn nested() -> Nested {
    Nested {
        pid: std::process::id(),
        nested_pid: worker_pid::dispatch().join().expect("nested pid task"),
        sum: add::dispatch(2, 3).join().expect("nested add task"),
        default_backend: format!("{:?}", parallel::default_pool().backend()),
    }
}

/// Tries to start a process pool from inside a worker: the error message and whether it is an
/// I/O error.
#[task]
fn build_process_pool() -> Result<(), (String, bool)> {
    match Pool::builder().backend(Backend::Process).workers(1).build() {
        Ok(_pool) => Ok(()),
        Err(error) => Err((error.to_string(), error.is_io())),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn process_pool(workers: usize) -> Pool {
    Pool::builder()
        .backend(Backend::Process)
        .workers(workers)
        .build()
        .expect("the process pool builds")
}

/// Runs `f` on its own thread and fails if it has not returned within [`HANG_LIMIT`].
fn within_limit<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    within(HANG_LIMIT, what, f)
}

/// Polls `done` until it holds; fails with `what` after [`REAP_LIMIT`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < REAP_LIMIT, "{what}: not within {REAP_LIMIT:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Blocks until `path` exists (in a task, a panic after [`HANG_LIMIT`] ends the task).
fn wait_for_file(path: &str) {
    let started = Instant::now();
    while !Path::new(path).exists() {
        assert!(started.elapsed() < HANG_LIMIT, "{path} never appeared");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Waits for a file that `hold` or `die` published and reads the worker it names.
fn read_worker(path: &str) -> Worker {
    wait_for_file(path);
    let text = fs::read_to_string(path).expect("published file is readable");
    let (pid, id) = text.split_once(' ').expect("`pid worker_id`");
    Worker { pid: pid.parse().expect("a pid"), id: id.parse().expect("a worker id") }
}

/// Runs one `hold` per worker at once, so that every worker of the pool runs exactly one, and
/// returns who ran them. `round` keeps the files of separate calls apart.
fn occupy_all(pool: &Pool, scratch: &Scratch, round: &str) -> Vec<Worker> {
    let gate = scratch.file(&format!("{round}-gate"));
    let handles: Vec<_> = (0..pool.workers())
        .map(|i| {
            hold::dispatch_on(pool, scratch.file(&format!("{round}-started-{i}")), gate.clone())
        })
        .collect();
    for i in 0..pool.workers() {
        read_worker(&scratch.file(&format!("{round}-started-{i}")));
    }
    touch(&gate);
    let workers: Vec<Worker> = within_limit("joining the holds", move || {
        handles.into_iter().map(|handle| handle.join().expect("hold runs")).collect()
    });
    let ids: HashSet<usize> = workers.iter().map(|worker| worker.id).collect();
    assert_eq!(ids, (0..pool.workers()).collect(), "one hold per worker slot: {workers:?}");
    workers
}

fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("the kill command runs");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

/// Waits until process `pid` is gone and reaped: `/proc/<pid>` no longer exists (a zombie that
/// nobody waits for keeps it).
fn wait_until_reaped(pid: u32) {
    let started = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            started.elapsed() < REAP_LIMIT,
            "worker {pid} still exists after {REAP_LIMIT:?}, state {:?}: not killed or not reaped",
            stat(pid).map(|(state, _)| state)
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// The children of this process, with their state letters (`Z` for a zombie).
fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .expect("/proc is mounted")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| match stat(pid) {
            Some((state, ppid)) if ppid == me => Some((pid, state)),
            _ => None,
        })
        .collect()
}

/// Runs the test `helper` alone in a copy of this test binary with [`ISOLATED_ROLE`] set, so that
/// it can count this process's file descriptors and children without other tests' pools in the
/// way, and fails with the helper's stderr if the helper failed.
fn run_isolated(helper: &str) {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let mut child = Command::new(exe)
        .args(["--exact", helper, "--nocapture", "--test-threads=1"])
        .env(ISOLATED_ROLE, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test binary starts again");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        // A read error leaves what was read so far, which is all the report needs.
        let _ = stderr.read_to_string(&mut text);
        // The receiver is gone after a timeout; nothing is left to report to then.
        let _ = sender.send(text);
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the isolated test") {
            break status;
        }
        if started.elapsed() > HANG_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the isolated `{helper}` did not finish within {HANG_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stderr = receiver
        .recv_timeout(HANG_LIMIT)
        .unwrap_or_else(|_| "<its stderr stayed open: a worker outlived it>".to_owned());
    assert!(status.success(), "the isolated `{helper}` failed: {status}; its stderr:\n{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn tasks_run_in_child_processes_of_this_executable() {
    let scratch = Scratch::new("children");
    let pool = process_pool(2);
    let workers = occupy_all(&pool, &scratch, "first");
    let exe = fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    for worker in &workers {
        assert_ne!(worker.pid, std::process::id(), "the task ran in the test process");
        let (_, ppid) = stat(worker.pid).expect("an idle worker is alive");
        assert_eq!(
            ppid,
            std::process::id(),
            "worker {worker:?} is not a child of the pool's process"
        );
        let worker_exe = fs::read_link(format!("/proc/{}/exe", worker.pid)).unwrap();
        assert_eq!(worker_exe, exe, "a worker is this executable started again");
    }
    assert_ne!(workers[0].pid, workers[1].pid);
    // Idle workers stay: the same processes serve the next tasks.
    let again: HashSet<Worker> = occupy_all(&pool, &scratch, "second").into_iter().collect();
    assert_eq!(again, workers.into_iter().collect());
}

/// One worker dies while another holds a task: only the dying worker's task fails, with its pid,
/// the reason and its stderr; the other task finishes; the dead worker's slot gets a new process.
fn a_death_takes_only_its_own_task(how: Death, expected_reason: &str) {
    let scratch = Scratch::new(&format!("death-{how:?}"));
    let pool = process_pool(2);
    let bystander = hold::dispatch_on(&pool, scratch.file("bystander"), scratch.file("gate"));
    let bystander_worker = read_worker(&scratch.file("bystander"));

    let token = format!("death-token-{how:?}-{}", std::process::id());
    let record = scratch.file("victim");
    let victim = die::dispatch_on(&pool, how, record.clone(), token.clone());
    let victim_worker = read_worker(&format!("{record}.pid"));
    assert_ne!(victim_worker.id, bystander_worker.id);
    if how == Death::Killed {
        send_signal(victim_worker.pid, "-9");
    }

    let error = within_limit("the victim's handle", move || victim.join())
        .expect_err("the victim's worker died");
    let shown = error.to_string();
    let TaskError::WorkerDied { task, pid, reason, stderr_tail, .. } = &error else {
        panic!("expected WorkerDied, got {error:?}");
    };
    assert_eq!(task, <die::Task as Task>::NAME);
    assert_eq!(*pid, victim_worker.pid, "{error:?}");
    assert_eq!(reason, expected_reason, "{error:?}");
    assert!(stderr_tail.contains(&token), "stderr tail lost the last line: {error:?}");
    for part in [&victim_worker.pid.to_string(), task, reason] {
        assert!(shown.contains(part.as_str()), "`{shown}` does not mention {part}");
    }
    assert!(!shown.contains('\n'), "one line: {shown}");

    touch(scratch.file("gate"));
    let survivor = within_limit("the bystander", move || bystander.join());
    assert_eq!(survivor, Ok(bystander_worker), "the other worker was not touched");
    wait_until_reaped(victim_worker.pid);

    let after: HashSet<Worker> = occupy_all(&pool, &scratch, "after").into_iter().collect();
    assert!(after.contains(&bystander_worker), "{after:?}");
    let replacement = after
        .iter()
        .find(|worker| worker.id == victim_worker.id)
        .expect("the dead worker's slot serves again");
    assert_ne!(replacement.pid, victim_worker.pid, "the dead worker was replaced");

    let runs = fs::read_to_string(format!("{record}.runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the dead worker's task ran again: {runs}");
}

#[test]
fn an_abort_kills_only_its_worker() {
    quietly(module_path!(), "an_abort_kills_only_its_worker", || {
        a_death_takes_only_its_own_task(Death::Abort, "killed by signal 6 (SIGABRT)");
    });
}

#[test]
fn a_segfault_kills_only_its_worker() {
    quietly(module_path!(), "a_segfault_kills_only_its_worker", || {
        a_death_takes_only_its_own_task(Death::Segfault, "killed by signal 11 (SIGSEGV)");
    });
}

#[test]
fn an_exit_kills_only_its_worker() {
    quietly(module_path!(), "an_exit_kills_only_its_worker", || {
        a_death_takes_only_its_own_task(Death::Exit3, "exited with code 3");
    });
}

#[test]
fn a_sigkill_from_outside_kills_only_its_worker() {
    quietly(module_path!(), "a_sigkill_from_outside_kills_only_its_worker", || {
        a_death_takes_only_its_own_task(Death::Killed, "killed by signal 9 (SIGKILL)");
    });
}

#[test]
fn a_panic_leaves_the_worker_alive() {
    quietly(module_path!(), "a_panic_leaves_the_worker_alive", || {
        let pool = process_pool(1);
        let (before, first) = count::dispatch_on(&pool).join().unwrap();
        let message = format!("panic-token-{}", std::process::id());
        let error = within_limit("the panicking task", {
            let handle = panics::dispatch_on(&pool, message.clone());
            move || handle.join()
        })
        .expect_err("the task panicked");
        let TaskError::Panicked { task, message: reported, .. } = &error else {
            panic!("expected Panicked, got {error:?}");
        };
        assert_eq!(task, <panics::Task as Task>::NAME);
        assert_eq!(reported, &message);
        let (after, second) = count::dispatch_on(&pool).join().unwrap();
        assert_eq!(after, before, "a panic must not cost the worker its process");
        assert_eq!((first, second), (1, 2), "the worker's Environment survived the panic");
    });
}

/// Holds the only worker of a pool until `stop` gives up on it, then checks that the worker
/// process is gone (killed and reaped) and that a new process serves the same slot.
fn stopping_a_running_task_kills_its_worker(
    test: &str,
    stop: impl FnOnce(parallel::TaskHandle<hold::Task>) -> Result<Worker, TaskError<parallel::Never>>
        + Send
        + 'static,
    expected: TaskError<parallel::Never>,
) {
    let scratch = Scratch::new(test);
    let pool = process_pool(1);
    // The gate never opens: only a kill ends this task before HANG_LIMIT.
    let handle = hold::dispatch_on(&pool, scratch.file("started"), scratch.file("never"));
    let held = read_worker(&scratch.file("started"));
    let outcome = within_limit("stopping the task", move || stop(handle));
    assert_eq!(outcome, Err(expected));
    wait_until_reaped(held.pid);
    let next = within_limit("the next task", {
        let handle = whoami::dispatch_on(&pool);
        move || handle.join()
    })
    .expect("the pool keeps serving");
    assert_ne!(next.pid, held.pid, "the stopped task's worker was replaced");
    assert_eq!(next.id, held.id, "the replacement keeps the worker slot");
}

#[test]
fn join_timeout_kills_the_worker_of_a_running_task() {
    stopping_a_running_task_kills_its_worker(
        "timeout",
        |handle| handle.join_timeout(Duration::from_millis(100)),
        TaskError::TimedOut,
    );
}

#[test]
fn cancel_kills_the_worker_of_a_running_task() {
    stopping_a_running_task_kills_its_worker(
        "cancel",
        |handle| {
            handle.cancel();
            handle.join()
        },
        TaskError::Cancelled,
    );
}

#[test]
fn cancel_of_a_queued_task_kills_no_worker_and_the_task_never_runs() {
    let scratch = Scratch::new("cancel-queued");
    let pool = process_pool(1);
    let blocker = hold::dispatch_on(&pool, scratch.file("started"), scratch.file("gate"));
    let held = read_worker(&scratch.file("started"));
    let victims: Vec<_> =
        (0..5).map(|i| mark::dispatch_on(&pool, scratch.file(&format!("ran-{i}")))).collect();
    for victim in &victims {
        victim.cancel();
        assert!(victim.is_finished(), "a cancelled handle resolves at once");
    }
    touch(scratch.file("gate"));
    assert_eq!(within_limit("the blocker", move || blocker.join()), Ok(held));
    let next = within_limit("the next task", {
        let handle = whoami::dispatch_on(&pool);
        move || handle.join()
    });
    assert_eq!(next, Ok(held), "cancelling a queued task must not kill a worker");
    for victim in victims {
        assert_eq!(victim.join(), Err(TaskError::Cancelled));
    }
    assert_eq!(scratch.count("ran-"), 0, "a cancelled queued task ran");
}

#[test]
fn max_tasks_per_worker_renews_the_process() {
    let pool = Pool::builder()
        .backend(Backend::Process)
        .workers(1)
        .max_tasks_per_worker(2)
        .build()
        .expect("the process pool builds");
    let runs: Vec<(Worker, u32)> = within_limit("six tasks", move || {
        (0..6).map(|_| count::dispatch_on(&pool).join().unwrap()).collect()
    });
    let counts: Vec<u32> = runs.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [1, 2, 1, 2, 1, 2], "a renewed worker starts a new Environment");
    let pids: Vec<u32> = runs.iter().map(|(worker, _)| worker.pid).collect();
    for pair in pids.chunks(2) {
        assert_eq!(pair[0], pair[1], "a worker serves two tasks: {pids:?}");
    }
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "every two tasks a new process: {pids:?}");
    assert!(runs.iter().all(|(worker, _)| worker.id == 0), "{runs:?}");
    // Retired workers are reaped, not left as zombies.
    wait_until_reaped(pids[0]);
    wait_until_reaped(pids[2]);
}

#[test]
fn a_worker_over_its_memory_limit_dies_and_is_replaced() {
    quietly(module_path!(), "a_worker_over_its_memory_limit_dies_and_is_replaced", || {
        let pool = Pool::builder()
            .backend(Backend::Process)
            .workers(1)
            .max_memory_per_worker(256 << 20)
            .build()
            .expect("the process pool builds");
        let before = whoami::dispatch_on(&pool).join().unwrap();
        assert_eq!(
            allocate::dispatch_on(&pool, 16 << 20).join(),
            Ok(4096),
            "a task within the limit runs"
        );
        let error = within_limit("the allocating task", {
            let handle = allocate::dispatch_on(&pool, 1 << 30);
            move || handle.join()
        })
        .expect_err("1 GiB does not fit in 256 MiB");
        let TaskError::WorkerDied { pid, reason, stderr_tail, .. } = &error else {
            panic!("expected WorkerDied, got {error:?}");
        };
        assert_eq!(*pid, before.pid, "{error:?}");
        assert!(reason.contains("memory limit"), "{error:?}");
        assert!(stderr_tail.contains("memory allocation of 1073741824 bytes failed"), "{error:?}");
        let after = whoami::dispatch_on(&pool).join().unwrap();
        assert_ne!(after.pid, before.pid);
        assert_eq!(after.id, before.id);
        assert_eq!(allocate::dispatch_on(&pool, 16 << 20).join(), Ok(4096));
    });
}

#[test]
fn the_worker_marker_is_not_in_a_task_environment() {
    let pool = process_pool(1);
    let keys = environment_keys::dispatch_on(&pool).join().unwrap();
    let markers: Vec<&String> =
        keys.iter().filter(|key| key.starts_with("PARALLEL_WORKER")).collect();
    assert!(markers.is_empty(), "a task sees the worker marker: {markers:?}");
    let ours: HashSet<String> =
        std::env::vars_os().map(|(key, _)| key.to_string_lossy().into_owned()).collect();
    let extra: Vec<&String> = keys.iter().filter(|key| !ours.contains(*key)).collect();
    assert!(
        extra.is_empty(),
        "the worker's environment has variables the program's has not: {extra:?}"
    );
    assert!(!keys.is_empty(), "the worker inherits the program's environment");
}

#[test]
fn a_task_dispatches_on_a_thread_pool_inside_its_worker() {
    let pool = process_pool(1);
    let seen = within_limit("the nesting task", {
        let handle = nested::dispatch_on(&pool);
        move || handle.join()
    })
    .unwrap();
    assert_ne!(seen.pid, std::process::id());
    assert_eq!(seen.sum, 5);
    assert_eq!(seen.nested_pid, seen.pid, "nested tasks run in the worker process");
    assert_eq!(seen.default_backend, "Thread");
}

#[test]
fn a_worker_cannot_start_worker_processes() {
    let pool = process_pool(1);
    let outcome = within_limit("building a pool in a worker", {
        let handle = build_process_pool::dispatch_on(&pool);
        move || handle.join()
    });
    let Err(TaskError::Failed((message, is_io))) = outcome else {
        panic!("a process pool was built inside a worker: {outcome:?}");
    };
    assert!(message.contains("worker"), "{message}");
    assert!(!is_io, "a refusal, not an OS failure: {message}");
}

#[test]
fn shutdown_finishes_the_tasks_then_stops_the_workers() {
    let pool = process_pool(1);
    let handles: Vec<_> = (0..3).map(|_| count::dispatch_on(&pool)).collect();
    pool.shutdown();
    let runs: Vec<(Worker, u32)> = within_limit("the queued tasks", move || {
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    });
    assert_eq!(runs.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1, 2, 3]);
    wait_until_reaped(runs[0].0.pid);
    let refused = whoami::dispatch_on(&pool).join();
    assert!(matches!(refused, Err(TaskError::PoolClosed { .. })), "{refused:?}");
}

#[test]
fn kill_stops_running_tasks_cancels_queued_ones_and_ends_the_workers() {
    let scratch = Scratch::new("kill");
    let pool = Arc::new(process_pool(2));
    let running: Vec<_> = (0..2)
        .map(|i| {
            hold::dispatch_on(&pool, scratch.file(&format!("started-{i}")), scratch.file("never"))
        })
        .collect();
    let held: Vec<Worker> =
        (0..2).map(|i| read_worker(&scratch.file(&format!("started-{i}")))).collect();
    let queued: Vec<_> =
        (0..3).map(|i| mark::dispatch_on(&pool, scratch.file(&format!("ran-{i}")))).collect();
    // The running tasks would wait for HANG_LIMIT: a kill that waited for them would time out.
    within(REAP_LIMIT, "kill", {
        let pool = Arc::clone(&pool);
        move || pool.kill()
    });
    let outcomes = within_limit("the killed pool's handles", move || {
        let running: Vec<_> = running.into_iter().map(|handle| handle.join()).collect();
        let queued: Vec<_> = queued.into_iter().map(|handle| handle.join()).collect();
        (running, queued)
    });
    for outcome in &outcomes.0 {
        assert!(
            matches!(outcome, Err(TaskError::WorkerDied { .. } | TaskError::Cancelled)),
            "{outcome:?}"
        );
    }
    for outcome in &outcomes.1 {
        assert_eq!(outcome, &Err(TaskError::Cancelled));
    }
    for worker in &held {
        wait_until_reaped(worker.pid);
    }
    assert_eq!(scratch.count("ran-"), 0, "a queued task ran after kill");
    let refused = whoami::dispatch_on(&pool).join();
    assert!(matches!(refused, Err(TaskError::PoolClosed { .. })), "{refused:?}");
}

#[test]
fn workers_outlive_the_thread_that_started_them() {
    quietly(module_path!(), "workers_outlive_the_thread_that_started_them", || {
        // PR_SET_PDEATHSIG fires when the *thread* that forked the child exits: workers must not be
        // tied to the thread that built the pool or that noticed a death.
        let scratch = Scratch::new("thread-exit");
        let (pool, survivors, scratch) = thread::spawn(move || {
            let pool = process_pool(2);
            occupy_all(&pool, &scratch, "first");
            let victim =
                die::dispatch_on(&pool, Death::Exit3, scratch.file("victim"), String::new());
            assert!(matches!(victim.join(), Err(TaskError::WorkerDied { .. })));
            let survivors: HashSet<Worker> =
                occupy_all(&pool, &scratch, "second").into_iter().collect();
            (pool, survivors, scratch)
        })
        .join()
        .expect("the pool's first thread");
        // This test is about real time: a parent-death signal would land right after the exit.
        thread::sleep(Duration::from_millis(300));
        let after: HashSet<Worker> = occupy_all(&pool, &scratch, "third").into_iter().collect();
        assert_eq!(after, survivors, "a worker died with the thread that started it");
    });
}

#[test]
fn fifty_worker_deaths_leave_no_zombie_and_no_file_descriptor() {
    run_isolated("isolated_fifty_worker_deaths");
}

/// The body of `fifty_worker_deaths_leave_no_zombie_and_no_file_descriptor`, alone in its
/// process; a no-op in an ordinary run.
#[test]
fn isolated_fifty_worker_deaths() {
    if std::env::var_os(ISOLATED_ROLE).is_none() {
        return;
    }
    let scratch = Scratch::new("fifty-deaths");
    assert!(children().is_empty(), "children before the pool: {:?}", children());
    // A first pool, so that what the backend sets up once per program is not counted as a leak.
    let warm_up = process_pool(1);
    whoami::dispatch_on(&warm_up).join().expect("a first task");
    warm_up.shutdown();
    drop(warm_up);
    wait_until("the first pool's worker is reaped", || children().is_empty());
    let fds_before = open_fds();
    let pool = process_pool(2);
    let deaths = [Death::Exit3, Death::Abort, Death::Segfault];
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let record = scratch.file(&format!("victim-{i}"));
            die::dispatch_on(&pool, deaths[i % deaths.len()], record, format!("victim {i}"))
        })
        .collect();
    let pids: Vec<u32> = within_limit("fifty deaths", move || {
        handles
            .into_iter()
            .map(|handle| match handle.join() {
                Err(TaskError::WorkerDied { pid, .. }) => pid,
                other => panic!("expected WorkerDied, got {other:?}"),
            })
            .collect()
    });
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 50, "every death was a different worker: {pids:?}");
    whoami::dispatch_on(&pool).join().expect("the pool serves after fifty deaths");
    // While the pool lives, dead workers are reaped: no zombie piles up.
    wait_until("dead workers reaped while the pool lives", || {
        children().iter().all(|&(_, state)| state != 'Z')
    });
    pool.shutdown();
    drop(pool);
    let settled = Instant::now();
    while !(children().is_empty() && open_fds() == fds_before) && settled.elapsed() < REAP_LIMIT {
        thread::sleep(Duration::from_millis(10));
    }
    let left = children();
    assert!(left.is_empty(), "children left after shutdown and drop: {left:?}");
    assert_eq!(open_fds(), fds_before, "file descriptors leaked");
}
