//! A worker process behaves like a normal Rust program and cleans up after its tasks: SIGPIPE is
//! an error value, a stack overflow is reported as one, a flood on stderr costs the caller
//! bounded memory, the processes a task started stop with it, Ctrl-C is the caller's to decide,
//! and the worker marker is neither silent when wrong nor readable from outside.
//!
//! Tests that need a process of their own (its stderr, its death, its signals) start a copy of
//! this test binary running one helper test (named with `--exact`) in the role given by
//! [`ROLE`]; in an ordinary run, with no role set, the helpers return at once. Tests that build
//! a pool in this process take [`SERIAL`], so that the threads and processes they count are
//! their own.

#![cfg(feature = "process")]

mod common;

use common::{kill_9, publish, quietly, stat, HelperProcess, Scratch};

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Pool, TaskError};

/// How long any wait may take before a hang is reported as a failure.
const HANG_LIMIT: Duration = Duration::from_secs(60);
/// How soon the processes a stopped task started must be gone.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// What the copy of this binary does.
const ROLE: &str = "PARALLEL_TEST_WORKER_HYGIENE_ROLE";
/// The scratch directory the copy works in.
const DIR: &str = "PARALLEL_TEST_WORKER_HYGIENE_DIR";
/// How much a task writes to stderr in the flood test.
const FLOOD: usize = 64 << 20;

/// Held by every test that builds a pool in this process.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn pool(workers: usize) -> Pool {
    Pool::builder().backend(Backend::Process).workers(workers).build().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tasks

#[task]
fn pid() -> u32 {
    std::process::id()
}

/// Writes to a pipe whose reader has exited: the error's kind, from the worker that survived it.
#[task]
fn write_to_a_closed_pipe() -> (u32, String) {
    let mut reader = Command::new("true").stdin(Stdio::piped()).spawn().expect("`true` starts");
    let mut pipe = reader.stdin.take().expect("piped stdin");
    reader.wait().expect("`true` ends");
    let written = pipe.write_all(b"nobody reads this").and_then(|()| pipe.flush());
    (std::process::id(), format!("{:?}", written.map_err(|error| error.kind())))
}

/// Recurses until the stack runs out.
#[task]
fn recurse(depth: u64) -> u64 {
    deeper(depth)
}

fn deeper(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 32]);
    if depth == 0 {
        return frame[0];
    }
    deeper(depth - 1).wrapping_add(std::hint::black_box(frame)[1])
}

/// Writes `bytes` to stderr without a newline, then aborts.
#[task]
fn flood_stderr(bytes: usize) {
    let chunk = vec![b'x'; 1 << 16];
    let mut stderr = std::io::stderr().lock();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        // A failing stderr ends the flood early, which the test sees in its byte count.
        if stderr.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n;
    }
    std::process::abort();
}

/// Starts `sleep 300`, publishes "<worker pid> <sleep pid>" in `pid_file`, then waits to be
/// stopped.
#[task]
fn start_a_sleep(pid_file: String) {
    let mut sleep = Command::new("sleep").arg("300").spawn().expect("`sleep` starts");
    publish(&pid_file, &format!("{} {}", std::process::id(), sleep.id()));
    // The task is stopped before either wait ends; reached only if the test gave up on it.
    thread::sleep(HANG_LIMIT);
    let _ = sleep.kill();
    let _ = sleep.wait();
}

/// Publishes the worker's pid in `pid_file`, then waits for `go_file`: returns its pid.
#[task]
fn wait_for_go(pid_file: String, go_file: String) -> u32 {
    publish(&pid_file, &std::process::id().to_string());
    let deadline = Instant::now() + HANG_LIMIT;
    while !Path::new(&go_file).exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    std::process::id()
}

/// The worker's pid and whether its own initial environment still shows the worker marker.
#[task]
fn environ_shows_the_marker() -> (u32, bool) {
    let environ = fs::read("/proc/self/environ").expect("/proc is mounted");
    (std::process::id(), contains(&environ, b"PARALLEL_WORKER"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Whether `pid` still runs: a zombie (`Z`) or dead (`X`) process has stopped, whoever reaps it.
fn is_running(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// The process group of `pid`, from `/proc/<pid>/stat`.
fn process_group(pid: u32) -> Option<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name: state, ppid, pgrp.
    text[text.rfind(')')? + 1..].split_whitespace().nth(2)?.parse().ok()
}

/// Waits until `pid` has stopped running; `false` if it still runs after `limit`.
fn ends_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while is_running(pid) {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Kills `pid` if it is still a `sleep` (cleanup after a failed check; guards against a reused
/// pid).
fn kill_if_sleep(pid: u32) {
    if fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "sleep") {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

/// Waits for `path` and returns its content.
fn wait_for_file(path: &Path, helper: Option<&mut HelperProcess>) -> String {
    let deadline = Instant::now() + HANG_LIMIT;
    let mut helper = helper;
    loop {
        if let Ok(text) = fs::read_to_string(path) {
            return text;
        }
        if let Some(helper) = helper.as_deref_mut() {
            helper.assert_running();
        }
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        thread::sleep(Duration::from_millis(10));
    }
}

/// Reads "<worker pid> <sleep pid>" as published by [`start_a_sleep`].
fn read_pids(path: &Path, helper: Option<&mut HelperProcess>) -> (u32, u32) {
    let text = wait_for_file(path, helper);
    let mut pids = text.split_whitespace().map(|pid| pid.parse::<u32>().expect("a pid"));
    let worker = pids.next().expect("the worker's pid");
    let sleep = pids.next().expect("the sleep's pid");
    (worker, sleep)
}

/// The names of this process's threads that start with `prefix`.
fn threads_named(prefix: &str) -> Vec<String> {
    fs::read_dir("/proc/self/task")
        .expect("/proc is mounted")
        .filter_map(|entry| fs::read_to_string(entry.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim().to_owned())
        .filter(|comm| comm.starts_with(prefix))
        .collect()
}

impl HelperProcess {
    /// Starts the copy running `helper` in `role` through `wrapper` (a command and its arguments,
    /// or nothing), as the leader of its own process group.
    fn start(helper: &str, role: &str, dir: &Path, wrapper: &[&str]) -> HelperProcess {
        use std::os::unix::process::CommandExt;
        HelperProcess::spawn(
            HelperProcess::command(wrapper, helper)
                .env(ROLE, role)
                .env(DIR, dir)
                .stdout(Stdio::null())
                .process_group(0),
        )
    }
}

fn signal_group(group: u32, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{group}")])
        .status()
        .expect("the kill command runs");
    assert!(status.success(), "kill -s {signal} -- -{group}: {status}");
}

/// The kB figure of `field` in `/proc/self/status`.
fn status_kb(field: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").expect("/proc is mounted");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

// ---------------------------------------------------------------------------------------------
// SIGPIPE and stack overflow: what `main` would have set up

#[test]
fn a_write_to_a_closed_pipe_is_an_error_value_and_the_worker_survives() {
    let _serial = serial();
    let pool = pool(1);
    let before = pid::dispatch_on(&pool).join().unwrap();
    let (writer, written) = write_to_a_closed_pipe::dispatch_on(&pool)
        .join_timeout(HANG_LIMIT)
        .expect("the task returns, not its worker dying of SIGPIPE");
    assert_eq!(written, "Err(BrokenPipe)");
    assert_eq!(writer, before);
    assert_eq!(pid::dispatch_on(&pool).join(), Ok(before), "the same worker runs the next task");
    pool.shutdown();
}

#[test]
fn a_stack_overflow_is_reported_as_one() {
    quietly(module_path!(), "a_stack_overflow_is_reported_as_one", || {
        let _serial = serial();
        let pool = pool(1);
        match recurse::dispatch_on(&pool, u64::MAX).join_timeout(HANG_LIMIT) {
            Err(TaskError::WorkerDied { reason, stderr_tail, .. }) => {
                assert!(reason.contains("overflowed its stack"), "{reason}");
                assert!(reason.contains("SIGABRT"), "{reason}");
                assert!(stderr_tail.contains("has overflowed its stack"), "{stderr_tail}");
                assert!(
                    stderr_tail.contains("fatal runtime error: stack overflow"),
                    "{stderr_tail}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A segfault elsewhere is still a segfault, and the pool goes on.
        assert!(pid::dispatch_on(&pool).join().is_ok());
        pool.shutdown();
    });
}

// ---------------------------------------------------------------------------------------------
// stderr: bounded in the caller, still copied through

#[test]
fn a_flood_on_stderr_costs_the_caller_bounded_memory_and_is_copied_through() {
    let scratch = Scratch::new("flood");
    let exe = std::env::current_exe().expect("the test binary has a path");
    let mut copy = Command::new(exe)
        .args(["--exact", "helper_floods_stderr", "--nocapture", "--test-threads=1"])
        .env(ROLE, "flood")
        .env(DIR, &scratch.path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test binary starts again");
    let mut stderr = copy.stderr.take().expect("piped stderr");
    let counter = thread::spawn(move || {
        let (mut floods, mut other) = (0usize, Vec::new());
        let mut buffer = vec![0; 1 << 16];
        while let Ok(n) = stderr.read(&mut buffer) {
            if n == 0 {
                break;
            }
            for &byte in &buffer[..n] {
                if byte == b'x' {
                    floods += 1;
                } else if other.len() < 1 << 16 {
                    other.push(byte);
                }
            }
        }
        (floods, String::from_utf8_lossy(&other).into_owned())
    });
    let deadline = Instant::now() + HANG_LIMIT;
    let status = loop {
        if let Some(status) = copy.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = copy.kill();
            let _ = copy.wait();
            panic!("the flood helper did not end");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let (floods, other) = counter.join().expect("the counter ends with the copy's stderr");
    assert!(status.success(), "the flood helper failed ({status}); its stderr:\n{other}");
    assert!(floods >= FLOOD, "only {floods} of {FLOOD} bytes were copied through:\n{other}");
}

#[test]
fn helper_floods_stderr() {
    if std::env::var(ROLE).as_deref() != Ok("flood") {
        return;
    }
    let pool = pool(1);
    pid::dispatch_on(&pool).join().expect("the worker starts");
    let before = status_kb("VmHWM");
    let flooded = flood_stderr::dispatch_on(&pool, FLOOD).join_timeout(HANG_LIMIT);
    let grown = status_kb("VmHWM").saturating_sub(before);
    assert!(grown <= 32 << 10, "the caller's peak resident memory grew by {grown} kB");
    match flooded {
        Err(TaskError::WorkerDied { reason, stderr_tail, .. }) => {
            assert!(reason.contains("SIGABRT"), "{reason}");
            assert!(
                stderr_tail.len() <= (64 << 10) + 1024,
                "a tail of {} bytes",
                stderr_tail.len()
            );
            assert!(stderr_tail.ends_with("xxxx"), "the tail keeps the last bytes");
        }
        other => panic!("{other:?}"),
    }
    pool.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Processes a task started stop with it

/// How a test stops a task that started `sleep 300`.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Timeout,
    Cancel,
    KillPool,
}

fn a_stopped_task_stops_the_processes_it_started(stop: Stop) {
    let _serial = serial();
    let scratch = Scratch::new(&format!("{stop:?}"));
    let pid_file = scratch.path("pids");
    let pool = pool(1);
    let handle = start_a_sleep::dispatch_on(&pool, pid_file.to_string_lossy().into_owned());
    let (worker, sleep) = read_pids(&pid_file, None);
    assert!(is_running(sleep), "the sleep started");
    match stop {
        Stop::Timeout => {
            assert_eq!(handle.join_timeout(Duration::from_millis(10)), Err(TaskError::TimedOut));
        }
        Stop::Cancel => {
            handle.cancel();
            assert_eq!(handle.join(), Err(TaskError::Cancelled));
        }
        Stop::KillPool => {
            pool.kill();
            assert!(handle.join().is_err());
        }
    }
    let worker_ended = ends_within(worker, STOP_LIMIT);
    let sleep_ended = ends_within(sleep, STOP_LIMIT);
    kill_if_sleep(sleep);
    assert!(worker_ended, "worker {worker} outlived its stopped task");
    assert!(sleep_ended, "`sleep` {sleep} outlived the task that started it ({stop:?})");

    pool.shutdown();
    let deadline = Instant::now() + STOP_LIMIT;
    while !threads_named("parallel-stderr").is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(threads_named("parallel-stderr"), Vec::<String>::new(), "after shutdown");
}

#[test]
fn a_timed_out_task_stops_the_processes_it_started() {
    a_stopped_task_stops_the_processes_it_started(Stop::Timeout);
}

#[test]
fn a_cancelled_task_stops_the_processes_it_started() {
    a_stopped_task_stops_the_processes_it_started(Stop::Cancel);
}

#[test]
fn a_killed_pool_stops_the_processes_its_tasks_started() {
    a_stopped_task_stops_the_processes_it_started(Stop::KillPool);
}

#[test]
fn a_killed_parent_takes_its_workers_processes_with_it() {
    let scratch = Scratch::new("parent");
    let mut copy = HelperProcess::start("helper_starts_a_sleep", "sleep", &scratch.path, &[]);
    let (worker, sleep) = read_pids(&scratch.path("pids"), Some(&mut copy));
    assert_eq!(stat(worker).map(|(_, ppid)| ppid), Some(copy.child.id()));
    kill_9(copy.child.id());
    copy.child.wait().expect("reaping the killed helper");
    let worker_ended = ends_within(worker, STOP_LIMIT);
    let sleep_ended = ends_within(sleep, STOP_LIMIT);
    kill_if_sleep(sleep);
    assert!(worker_ended, "worker {worker} outlived its killed parent");
    assert!(sleep_ended, "`sleep` {sleep} outlived the killed parent of its worker");
}

#[test]
fn helper_starts_a_sleep() {
    if std::env::var(ROLE).as_deref() != Ok("sleep") {
        return;
    }
    let dir = PathBuf::from(std::env::var_os(DIR).expect("the scratch dir is set"));
    let pool = pool(1);
    let _handle = start_a_sleep::dispatch_on(&pool, dir.join("pids").to_string_lossy().into());
    // The test kills this process long before the sleep ends.
    thread::sleep(HANG_LIMIT);
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C: the caller decides

#[test]
fn ctrl_c_to_a_caller_that_handles_it_leaves_its_running_tasks_alone() {
    let scratch = Scratch::new("sigint");
    // `env --block-signal=INT` stands for a caller that handles SIGINT: the copy survives it,
    // and its workers start with SIGINT unblocked (`Command` resets the signal mask).
    let mut copy = HelperProcess::start(
        "helper_waits_for_go",
        "sigint",
        &scratch.path,
        &["env", "--block-signal=INT"],
    );
    let worker: u32 = wait_for_file(&scratch.path("pid"), Some(&mut copy)).parse().unwrap();
    let caller = copy.child.id();
    assert_eq!(process_group(caller), Some(caller), "the caller leads its own group");
    assert_eq!(process_group(worker), Some(worker), "the worker leads a group of its own");

    // What a Ctrl-C in the caller's terminal does: SIGINT to its foreground process group.
    signal_group(caller, "INT");
    common::touch(scratch.path("go"));
    let done = wait_for_file(&scratch.path("done"), Some(&mut copy));
    assert_eq!(done, format!("ran on {worker}"), "the task went on after the caller's Ctrl-C");
    assert!(copy.wait(HANG_LIMIT).success());
}

#[test]
fn helper_waits_for_go() {
    if std::env::var(ROLE).as_deref() != Ok("sigint") {
        return;
    }
    let dir = PathBuf::from(std::env::var_os(DIR).expect("the scratch dir is set"));
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let pool = pool(1);
    let done = match wait_for_go::dispatch_on(&pool, file("pid"), file("go")).join() {
        Ok(pid) => format!("ran on {pid}"),
        Err(error) => format!("{error}"),
    };
    publish(file("done"), &done);
}

#[test]
fn ctrl_c_to_a_caller_without_a_handler_ends_it_and_its_workers_processes() {
    let scratch = Scratch::new("sigint-default");
    // SIGINT at its default action, as in a terminal's foreground: a shell's background job (a
    // test run started with `&`) starts its commands with SIGINT ignored, which an `exec` keeps.
    let mut copy = HelperProcess::start(
        "helper_starts_a_sleep",
        "sleep",
        &scratch.path,
        &["env", "--default-signal=INT"],
    );
    let (worker, sleep) = read_pids(&scratch.path("pids"), Some(&mut copy));
    signal_group(copy.child.id(), "INT");
    let status = copy.wait(HANG_LIMIT);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(2), "the caller dies of SIGINT: {status}");
    let worker_ended = ends_within(worker, STOP_LIMIT);
    let sleep_ended = ends_within(sleep, STOP_LIMIT);
    kill_if_sleep(sleep);
    assert!(worker_ended, "worker {worker} outlived its caller");
    assert!(sleep_ended, "`sleep` {sleep} outlived the caller of its worker");
}

// ---------------------------------------------------------------------------------------------
// The worker marker

#[test]
fn a_marker_naming_another_parent_exits_101_and_says_why() {
    let exe = std::env::current_exe().unwrap();
    // Process 1 lives, but is not the parent of the process started here.
    let wrong = Command::new(&exe).env("PARALLEL_WORKER", "2:0:1:0:1048576:0").output().unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(101), "{stderr}");
    assert!(stderr.contains("cannot serve"), "{stderr}");
    assert!(stderr.contains("process 1"), "{stderr}");
    assert!(wrong.stdout.is_empty(), "the test harness must not run in a worker");

    // A parent that has ended: what a worker sees when its pool dies before it starts serving.
    let mut ended = Command::new("true").spawn().unwrap();
    ended.wait().unwrap();
    let marker = format!("2:0:{}:0:1048576:0", ended.id());
    let orphan = Command::new(&exe).env("PARALLEL_WORKER", marker).output().unwrap();
    let stderr = String::from_utf8_lossy(&orphan.stderr);
    assert_eq!(orphan.status.code(), Some(101), "{stderr}");
    assert!(stderr.contains("has ended"), "{stderr}");
    assert!(orphan.stdout.is_empty());
}

#[test]
fn the_marker_is_gone_from_a_workers_environment_block() {
    let _serial = serial();
    let pool = pool(1);
    let (worker, seen_inside) = environ_shows_the_marker::dispatch_on(&pool).join().unwrap();
    assert!(!seen_inside, "the worker's /proc/self/environ shows the marker");
    let environ = fs::read(format!("/proc/{worker}/environ")).expect("the worker is ours");
    assert!(!contains(&environ, b"PARALLEL_WORKER"), "/proc/{worker}/environ shows the marker");
    // The rest of the environment is intact.
    assert!(contains(&environ, b"PATH="), "{}", String::from_utf8_lossy(&environ));
    pool.shutdown();
}
