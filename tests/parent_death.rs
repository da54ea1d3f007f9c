//! Worker processes die with the program that started them, and write to its standard output.
//!
//! Each test starts a copy of this test binary that runs one helper test (named with `--exact`)
//! in the role given by [`ROLE`]; the helper builds a process pool. In an ordinary run, with no
//! role set, the helpers return at once.

#![cfg(feature = "process")]

mod common;

use common::{kill_9, publish, stat, HelperProcess, Scratch};

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Pool};

/// How long any wait may take before a hang is reported as a failure.
const HANG_LIMIT: Duration = Duration::from_secs(60);
/// How soon workers must be gone once their parent is killed.
const DEATH_LIMIT: Duration = Duration::from_secs(2);

/// What the copy of this binary does: `sleep` or `compute` (hold two workers), or `print`.
const ROLE: &str = "PARALLEL_TEST_PARENT_DEATH_ROLE";
/// The scratch directory the copy's tasks write into.
const DIR: &str = "PARALLEL_TEST_PARENT_DEATH_DIR";

// ---------------------------------------------------------------------------------------------
// Tasks

/// Publishes its pid in `pid_file`, then stays busy (`compute`) or asleep until [`HANG_LIMIT`].
#[task]
fn block(pid_file: String, compute: bool) -> u64 {
    publish(&pid_file, &std::process::id().to_string());
    let deadline = Instant::now() + HANG_LIMIT;
    let mut state = 1u64;
    while Instant::now() < deadline {
        if compute {
            for _ in 0..100_000 {
                state = std::hint::black_box(
                    state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                );
            }
        } else {
            thread::sleep(Duration::from_millis(10));
        }
    }
    state
}

#[task]
fn say(line: String) {
    println!("{line}");
}

// ---------------------------------------------------------------------------------------------
// Helpers

impl HelperProcess {
    /// Starts the copy running `helper` in `role`, in the scratch directory `dir`.
    fn start(helper: &str, role: &str, dir: &Path, stdout: Stdio) -> HelperProcess {
        HelperProcess::spawn(
            HelperProcess::command(&[], helper).env(ROLE, role).env(DIR, dir).stdout(stdout),
        )
    }
}

/// Whether `pid` still runs: a zombie (`Z`) or dead (`X`) process has stopped, whoever reaps it.
fn is_running(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Whether `pid` is still a process of this executable (guards against killing a reused pid).
fn is_this_executable(pid: u32) -> bool {
    let exe = std::env::current_exe().ok().and_then(|exe| fs::canonicalize(exe).ok());
    exe.is_some() && fs::read_link(format!("/proc/{pid}/exe")).ok() == exe
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Starts a copy holding two workers (asleep or computing), kills the copy with SIGKILL, and
/// expects both workers gone within [`DEATH_LIMIT`].
fn workers_die_with_their_parent(role: &str) {
    let scratch = Scratch::new(role);
    let mut copy =
        HelperProcess::start("helper_holds_two_workers", role, &scratch.path, Stdio::null());
    let pid_files = [0, 1].map(|i| scratch.path.join(format!("worker-{i}")));
    let started = Instant::now();
    while !pid_files.iter().all(|file| file.exists()) {
        copy.assert_running();
        assert!(started.elapsed() < HANG_LIMIT, "the workers never started");
        thread::sleep(Duration::from_millis(10));
    }
    let workers = pid_files.map(|file| {
        let pid: u32 = fs::read_to_string(file).unwrap().parse().unwrap();
        pid
    });
    assert_ne!(workers[0], workers[1]);
    for worker in workers {
        assert_eq!(
            stat(worker).map(|(_, ppid)| ppid),
            Some(copy.child.id()),
            "worker {worker} is not a child of the helper: the test would prove nothing"
        );
    }

    kill_9(copy.child.id());
    copy.child.wait().expect("reaping the killed helper");
    let killed = Instant::now();
    while workers.iter().any(|&worker| is_running(worker)) && killed.elapsed() < DEATH_LIMIT {
        thread::sleep(Duration::from_millis(10));
    }
    let survivors: Vec<u32> = workers.into_iter().filter(|&worker| is_running(worker)).collect();
    for &survivor in &survivors {
        if is_this_executable(survivor) {
            kill_9(survivor);
        }
    }
    assert!(
        survivors.is_empty(),
        "workers {survivors:?} outlived their killed parent by {DEATH_LIMIT:?}"
    );
}

#[test]
fn sleeping_workers_die_with_their_parent() {
    workers_die_with_their_parent("sleep");
}

#[test]
fn computing_workers_die_with_their_parent() {
    workers_die_with_their_parent("compute");
}

#[test]
fn a_task_prints_to_the_programs_stdout() {
    let scratch = Scratch::new("print");
    let mut copy =
        HelperProcess::start("helper_prints_from_a_worker", "print", &scratch.path, Stdio::piped());
    let mut stdout = copy.child.stdout.take().expect("piped stdout");
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let read = stdout.read_to_string(&mut text);
        // The receiver is gone after a timeout; nothing is left to report to then.
        let _ = sender.send(read.map(|_| text));
    });
    let text = receiver
        .recv_timeout(HANG_LIMIT)
        .expect("the helper's stdout closed within the limit")
        .expect("the helper's stdout is UTF-8");
    let status = copy.child.wait().expect("the helper ends");
    assert!(status.success(), "the helper failed: {status}; its stderr is above");
    let line = format!("printed by worker of {}", copy.child.id());
    // The worker's line may share its line of output with the test harness's own report.
    assert!(text.contains(&format!("{line}\n")), "`{line}` is not in:\n{text}");
}

// ---------------------------------------------------------------------------------------------
// Helpers run by the copies; no-ops in an ordinary run

#[test]
fn helper_holds_two_workers() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    if role != "sleep" && role != "compute" {
        return;
    }
    let dir = PathBuf::from(std::env::var_os(DIR).expect("the scratch dir is set"));
    let pool = Pool::builder()
        .backend(Backend::Process)
        .workers(2)
        .build()
        .expect("the process pool builds");
    let files = [0, 1].map(|i| dir.join(format!("worker-{i}")));
    let _handles: Vec<_> = files
        .iter()
        .map(|file| {
            block::dispatch_on(&pool, file.to_string_lossy().into_owned(), role == "compute")
        })
        .collect();
    let started = Instant::now();
    while !files.iter().all(|file| file.exists()) {
        assert!(started.elapsed() < HANG_LIMIT, "the workers never started");
        thread::sleep(Duration::from_millis(10));
    }
    println!("ready");
    // The test kills this process long before the sleep ends.
    thread::sleep(HANG_LIMIT);
}

#[test]
fn helper_prints_from_a_worker() {
    if std::env::var(ROLE).as_deref() != Ok("print") {
        return;
    }
    let pool = Pool::builder()
        .backend(Backend::Process)
        .workers(1)
        .build()
        .expect("the process pool builds");
    say::dispatch_on(&pool, format!("printed by worker of {}", std::process::id()))
        .join()
        .expect("the task runs");
    pool.shutdown();
}
