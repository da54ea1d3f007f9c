//! A segfault, an abort, a panic and a hang, each in a task beside ordinary ones, on the process
//! backend: every failure comes back precisely as a [`TaskError`], and the pool goes on serving.
//!
//! ```text
//! cargo run -p crash_isolation
//! ```
//!
//! - the segfault and the abort kill their worker process: [`TaskError::WorkerDied`] with its pid
//!   and the signal, and a fresh worker takes the next task;
//! - the panic is caught inside the worker, which survives: [`TaskError::Panicked`];
//! - the hang never returns: `join_timeout` gives up after 500 ms with [`TaskError::TimedOut`]
//!   and kills its worker, which this example checks through `/proc`.
//!
//! On the thread backend any of the first two would have taken this whole program down, and the
//! hang would have kept a thread busy forever. The example prints each outcome with its
//! `Display` and exits with status 1 when one is not what it should be.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Never, Pool, Task, TaskError, TaskHandle};

/// How long the caller waits for the hanging task.
const HANG_TIMEOUT: Duration = Duration::from_millis(500);

/// An ordinary task: squares `x` and says which worker process did it.
#[task]
fn square(x: u64) -> (u64, u32) {
    (x * x, std::process::id())
}

/// Dereferences a null pointer: the worker process dies of `SIGSEGV`.
#[task]
fn segfault() -> u8 {
    let address = std::hint::black_box(std::ptr::null_mut::<u8>());
    // SAFETY: none — writing through a null pointer is undefined behaviour, on purpose: the
    // point is to crash this worker process with SIGSEGV, which the pool must survive.
    // `black_box` hides the null from the optimizer, so the store is really emitted.
    unsafe { address.write_volatile(1) };
    1
}

/// Aborts: the worker process dies of `SIGABRT`.
#[task]
fn abort() -> u8 {
    std::process::abort()
}

/// Panics: the panic is caught in the worker, which goes on serving.
#[task]
fn panics(reason: String) -> u8 {
    panic!("{reason}")
}

/// Writes its worker's pid to `pid_file`, then never returns.
#[task]
fn hang(pid_file: String) -> u8 {
    // The example reads the pid to check that the timeout really killed this process.
    std::fs::write(&pid_file, std::process::id().to_string()).expect("the pid file is writable");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Whether process `pid` is gone (or a zombie waiting to be reaped), waiting up to `patience`.
fn is_gone(pid: u32, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        // The state is the first field after the parenthesised command name.
        let is_zombie = stat
            .as_deref()
            .ok()
            .and_then(|s| s.rsplit(") ").next())
            .is_some_and(|s| s.starts_with('Z'));
        if stat.is_err() || is_zombie {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Records one outcome: prints it, and remembers a failure when it is not the expected one.
struct Report {
    /// What did not go as expected.
    failures: Vec<String>,
}

impl Report {
    /// Prints `what` with `outcome`, and records a failure unless `is_expected`.
    fn check(&mut self, what: &str, outcome: &str, is_expected: bool) {
        let mark = if is_expected { "ok " } else { "BAD" };
        println!("{mark} {what:<10} {outcome}");
        if !is_expected {
            self.failures.push(format!("{what}: {outcome}"));
        }
    }
}

impl Report {
    /// Joins a task that must kill its worker with `signal`; returns the dead worker's pid.
    fn check_death<T>(&mut self, what: &str, handle: TaskHandle<T>, signal: &str) -> Option<u32>
    where
        T: Task<Output = u8, Error = Never>,
    {
        match handle.join() {
            Err(error @ TaskError::WorkerDied { .. }) => {
                let TaskError::WorkerDied { pid, reason, .. } = &error else {
                    unreachable!("matched just above")
                };
                self.check(what, &error.to_string(), *pid != 0 && reason.contains(signal));
                Some(*pid)
            }
            other => {
                self.check(what, &format!("{other:?}"), false);
                None
            }
        }
    }
}

fn main() -> ExitCode {
    let pool = match Pool::builder().backend(Backend::Process).workers(2).build() {
        Ok(pool) => pool,
        Err(error) => {
            eprintln!("crash_isolation: cannot build the pool: {error}");
            return ExitCode::FAILURE;
        }
    };
    let directory = match tempfile::tempdir() {
        Ok(directory) => directory,
        Err(error) => {
            eprintln!("crash_isolation: cannot make a temporary directory: {error}");
            return ExitCode::FAILURE;
        }
    };
    let pid_file = directory.path().join("hang.pid");
    let mut report = Report { failures: Vec::new() };

    // The bad tasks go in first, ordinary work right behind them: both workers crash at once,
    // and replacements take the ordinary work.
    let segfaulting = segfault::dispatch_on(&pool);
    let aborting = abort::dispatch_on(&pool);
    let panicking = panics::dispatch_on(&pool, "out of cheese".to_owned());
    let mut ordinary: Vec<_> = (0..50).map(|x| square::dispatch_on(&pool, x)).collect();
    let mut dead = Vec::new();

    dead.extend(report.check_death("segfault", segfaulting, "SIGSEGV"));
    dead.extend(report.check_death("abort", aborting, "SIGABRT"));

    match panicking.join() {
        Err(error @ TaskError::Panicked { .. }) => {
            let is_precise = error.to_string().contains("out of cheese");
            report.check("panic", &error.to_string(), is_precise);
        }
        other => report.check("panic", &format!("{other:?}"), false),
    }

    // The hang blocks one worker; the other keeps serving ordinary work meanwhile.
    let hanging = hang::dispatch_on(&pool, pid_file.to_string_lossy().into_owned());
    ordinary.extend((50..100).map(|x| square::dispatch_on(&pool, x)));
    let started = Instant::now();
    let outcome = hanging.join_timeout(HANG_TIMEOUT);
    let waited = started.elapsed();
    match outcome {
        Err(error @ TaskError::TimedOut) => {
            let pid =
                std::fs::read_to_string(&pid_file).ok().and_then(|text| text.parse::<u32>().ok());
            let is_killed = pid.is_some_and(|pid| is_gone(pid, Duration::from_secs(5)));
            let outcome = match pid {
                Some(pid) if is_killed => {
                    format!("{error} after {waited:.2?}; worker {pid} was killed")
                }
                Some(pid) => {
                    format!("{error} after {waited:.2?}; but worker {pid} is still running")
                }
                None => format!("{error} after {waited:.2?}; the task never wrote its pid"),
            };
            dead.extend(pid);
            report.check("hang", &outcome, is_killed);
        }
        other => report.check("hang", &format!("{other:?}"), false),
    }

    // Every ordinary task submitted beside the failures was answered, and the pool still serves
    // a fresh batch, on workers that are not the dead ones.
    let served = (0..)
        .zip(ordinary)
        .map(|(x, handle)| matches!(handle.join(), Ok((value, _)) if value == x * x))
        .filter(|is_right| *is_right)
        .count();
    report.check("beside", &format!("{served} of 100 ordinary tasks answered"), served == 100);

    let mut workers = Vec::new();
    let mut fresh = 0;
    for (x, result) in (100..300).zip(pool.map((100..300).map(square::new))) {
        if let Ok((value, pid)) = result {
            fresh += usize::from(value == x * x);
            if !workers.contains(&pid) {
                workers.push(pid);
            }
        }
    }
    workers.sort_unstable();
    let is_renewed = workers.iter().all(|pid| !dead.contains(pid));
    let outcome =
        format!("{fresh} of 200 answered by workers {workers:?}, none of the dead {dead:?}");
    report.check("after", &outcome, fresh == 200 && is_renewed);

    if report.failures.is_empty() {
        println!("the pool survived every failure and kept serving");
        ExitCode::SUCCESS
    } else {
        eprintln!("crash_isolation: {} unexpected outcome(s)", report.failures.len());
        ExitCode::FAILURE
    }
}
