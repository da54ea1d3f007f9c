//! Task policies (`timeout`, `retries`, `backoff`, `retry_failed`): what runs again, how often,
//! after how long, and what the handle resolves with. Each task appends a line to a file in a
//! scratch directory at every run (`O_APPEND`, one write), so a test counts the runs on threads
//! and in worker processes alike.

use std::fs::OpenOptions;
use std::io::Write;

use std::time::{Duration, Instant};

use parallel::{task, Backend, Task, TaskError};

use crate::support::{pool, within_limit, Scratch};

/// Records one run in `dir` and returns how many runs there were, this one included.
fn record_run(dir: &str) -> usize {
    let path = format!("{dir}/runs");
    let mut file =
        OpenOptions::new().create(true).append(true).open(&path).expect("scratch is writable");
    file.write_all(b"run\n").expect("scratch is writable");
    drop(file);
    runs(dir)
}

fn runs(dir: &str) -> usize {
    std::fs::read_to_string(format!("{dir}/runs")).map_or(0, |text| text.lines().count())
}

/// Waits long enough for a retry that should not happen to have happened.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

#[task(retries = 3, backoff = "10ms")]
fn panics_until(dir: String, failures: usize) -> usize {
    let run = record_run(&dir);
    assert!(run > failures, "run {run} of at least {failures} failing");
    run
}

#[task(retries = 2, backoff = "10ms")]
fn aborts_until(dir: String, failures: usize) -> usize {
    let run = record_run(&dir);
    if run <= failures {
        std::process::abort();
    }
    run
}

#[task(timeout = "300ms", retries = 2, backoff = "10ms")]
fn hangs_until(dir: String, failures: usize) -> usize {
    let run = record_run(&dir);
    if run <= failures {
        // Long past the timeout: killed with its worker process, or abandoned on its thread.
        std::thread::sleep(Duration::from_secs(2));
    }
    run
}

#[task(timeout = "1s", retries = 1, backoff = "10ms")]
fn answers_late_then_in_time(dir: String) -> usize {
    let run = record_run(&dir);
    // The first attempt answers at 1.5 s, after its timeout, while the second (started at about
    // 1 s) still runs: that late answer must be dropped. The second answers at about 1.7 s.
    let nap = if run == 1 { 1_500 } else { 700 };
    std::thread::sleep(Duration::from_millis(nap));
    run
}

#[task(retries = 2, backoff = "10ms", retry_failed)]
fn errs_until(dir: String, failures: usize) -> Result<usize, String> {
    let run = record_run(&dir);
    if run <= failures {
        return Err(format!("run {run} fails"));
    }
    Ok(run)
}

#[task(retries = 2, backoff = "10ms")]
fn errs_without_retry_failed(dir: String) -> Result<usize, String> {
    Err(format!("run {} fails", record_run(&dir)))
}

#[task]
fn panics_without_retries(dir: String) -> usize {
    let run = record_run(&dir);
    panic!("run {run} panics")
}

#[task(timeout = "200ms")]
fn hangs_without_retries(dir: String) -> usize {
    record_run(&dir);
    std::thread::sleep(Duration::from_secs(2));
    0
}

#[task(retries = 3, backoff = "100ms")]
fn always_panics(dir: String) -> usize {
    let run = record_run(&dir);
    panic!("run {run} panics")
}

#[task(retries = 1, backoff = "1m")]
fn panics_then_waits_long(dir: String) -> usize {
    let run = record_run(&dir);
    assert!(run > 1, "the first run panics");
    run
}

#[task(retries = 1, backoff = "200ms")]
fn panics_once(dir: String) -> usize {
    let run = record_run(&dir);
    assert!(run > 1, "the first run panics");
    run
}

/// Naps `millis`, within a limit of 300 ms.
#[task(timeout = "300ms")]
fn nap_within_a_limit(millis: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    millis
}

/// Found by `examples/retries`: on worker processes, jobs with a timeout were sent ahead in a
/// batch, and the clock of one waiting behind another ran out before it started. Its clock now
/// starts when it starts: two 200 ms naps in a row each stay within their 300 ms.
fn a_time_limit_does_not_run_while_the_task_waits_behind_another(backend: Backend) {
    let pool = pool(backend, 1);
    let naps = (0..50).map(|_| 0).chain([200, 200]).chain((0..10).map(|_| 0));
    let answers: Vec<_> = pool.map(naps.map(nap_within_a_limit::new)).collect();
    let timed_out = answers.iter().filter(|answer| answer.is_err()).count();
    assert_eq!(timed_out, 0, "{answers:?}");
    assert_eq!(pool.stats().restarts, 0, "no worker was killed for a limit");
}

fn a_panicking_attempt_runs_again(backend: Backend) {
    let pool = pool(backend, 2);
    let scratch = Scratch::new("retry-panic");
    let handle = panics_until::dispatch_on(&pool, scratch.string(), 2);
    assert_eq!(handle.join(), Ok(3), "the third attempt's output");
    assert_eq!(runs(&scratch.string()), 3);
    let stats = pool.stats();
    assert_eq!((stats.retries, stats.completed, stats.failed), (2, 1, 0), "{stats:?}");
}

fn retries_end_with_the_last_attempt_s_outcome(backend: Backend) {
    let pool = pool(backend, 2);
    let scratch = Scratch::new("retry-exhausted");
    let error = panics_until::dispatch_on(&pool, scratch.string(), 100).join().unwrap_err();
    match &error {
        TaskError::Panicked { message, .. } => assert!(message.contains("run 4 of"), "{error}"),
        other => panic!("{other:?}"),
    }
    settle();
    assert_eq!(runs(&scratch.string()), 4, "at most retries + 1 runs");
    let stats = pool.stats();
    assert_eq!((stats.retries, stats.failed), (3, 1), "{stats:?}");
}

fn a_timed_out_attempt_runs_again(backend: Backend) {
    let pool = pool(backend, 2);
    let scratch = Scratch::new("retry-timeout");
    let handle = hangs_until::dispatch_on(&pool, scratch.string(), 1);
    // The first attempt's own result (1, after its sleep, on the thread backend) is dropped.
    assert_eq!(within_limit("a retried timeout", move || handle.join()), Ok(2));
    assert_eq!(runs(&scratch.string()), 2);
    assert_eq!(pool.stats().retries, 1);
}

fn the_late_answer_of_a_timed_out_attempt_is_dropped(backend: Backend) {
    let pool = pool(backend, 2);
    let scratch = Scratch::new("late-answer");
    let handle = answers_late_then_in_time::dispatch_on(&pool, scratch.string());
    assert_eq!(within_limit("a late answer", move || handle.join()), Ok(2));
    assert_eq!(runs(&scratch.string()), 2);
}

fn a_failed_attempt_runs_again_with_retry_failed(backend: Backend) {
    let pool = pool(backend, 2);
    let scratch = Scratch::new("retry-failed");
    assert_eq!(errs_until::dispatch_on(&pool, scratch.string(), 2).join(), Ok(3));
    assert_eq!(runs(&scratch.string()), 3);

    let scratch = Scratch::new("retry-failed-exhausted");
    let error = errs_until::dispatch_on(&pool, scratch.string(), 100).join();
    assert_eq!(error, Err(TaskError::Failed("run 3 fails".to_owned())));
    settle();
    assert_eq!(runs(&scratch.string()), 3);
}

fn a_failed_attempt_is_the_answer_without_retry_failed(backend: Backend) {
    let pool = pool(backend, 2);
    let scratch = Scratch::new("no-retry-failed");
    let error = errs_without_retry_failed::dispatch_on(&pool, scratch.string()).join();
    assert_eq!(error, Err(TaskError::Failed("run 1 fails".to_owned())));
    settle();
    assert_eq!(runs(&scratch.string()), 1);
    assert_eq!(pool.stats().retries, 0);
}

fn nothing_runs_twice_without_retries(backend: Backend) {
    let pool = pool(backend, 2);
    let scratch = Scratch::new("no-retries");
    let panicked = panics_without_retries::dispatch_on(&pool, scratch.string()).join();
    assert!(matches!(panicked, Err(TaskError::Panicked { .. })), "{panicked:?}");
    let timed_out = hangs_without_retries::dispatch_on(&pool, scratch.string()).join();
    assert_eq!(timed_out, Err(TaskError::TimedOut));
    settle();
    assert_eq!(runs(&scratch.string()), 2, "one run each");
    assert_eq!(pool.stats().retries, 0);
}

fn a_timeout_leaves_the_pool_serving(backend: Backend) {
    let pool = pool(backend, 1);
    let scratch = Scratch::new("timeout-serving");
    let started = Instant::now();
    let timed_out = hangs_without_retries::dispatch_on(&pool, scratch.string()).join();
    assert_eq!(timed_out, Err(TaskError::TimedOut));
    // On the process backend the hung worker was killed and replaced: the next task runs on a new
    // worker at once. On threads the abandoned attempt keeps its thread until it returns, and the
    // next task waits for it: either way it runs.
    assert_eq!(panics_until::dispatch_on(&pool, scratch.string(), 0).join(), Ok(2));
    if backend == Backend::Process {
        assert!(pool.stats().restarts >= 1, "{:?}", pool.stats());
        assert!(started.elapsed() < Duration::from_secs(2), "the hung worker was killed");
    }
}

fn the_backoff_doubles(backend: Backend) {
    let pool = pool(backend, 2);
    let scratch = Scratch::new("backoff");
    let started = Instant::now();
    let error = always_panics::dispatch_on(&pool, scratch.string()).join();
    let elapsed = started.elapsed();
    assert!(matches!(error, Err(TaskError::Panicked { .. })), "{error:?}");
    assert_eq!(runs(&scratch.string()), 4);
    // 100 ms, then 200 ms, then 400 ms at least (the jitter only adds).
    assert!(elapsed >= Duration::from_millis(700), "{elapsed:?}");
}

fn a_cancel_during_the_backoff_cancels_the_retry(backend: Backend) {
    let pool = pool(backend, 2);
    let scratch = Scratch::new("cancel-backoff");
    let handle = panics_then_waits_long::dispatch_on(&pool, scratch.string());
    wait_for_runs(&scratch.string(), 1);
    wait_for_retries(&pool, 1);
    handle.cancel();
    assert_eq!(handle.join(), Err(TaskError::Cancelled));
    assert_eq!(runs(&scratch.string()), 1);
    let stats = pool.stats();
    assert_eq!((stats.cancelled, stats.queued, stats.running), (1, 0, 0), "{stats:?}");
}

fn a_kill_during_the_backoff_cancels_the_retry(backend: Backend) {
    let pool = pool(backend, 2);
    let scratch = Scratch::new("kill-backoff");
    let handle = panics_then_waits_long::dispatch_on(&pool, scratch.string());
    wait_for_retries(&pool, 1);
    pool.kill();
    assert_eq!(handle.join(), Err(TaskError::Cancelled));
    assert_eq!(runs(&scratch.string()), 1);
}

fn a_shutdown_during_the_backoff_runs_the_retry(backend: Backend) {
    let pool = pool(backend, 2);
    let scratch = Scratch::new("shutdown-backoff");
    let handle = panics_once::dispatch_on(&pool, scratch.string());
    wait_for_retries(&pool, 1);
    pool.shutdown();
    assert!(handle.is_finished(), "shutdown waits for the task's last attempt");
    assert_eq!(handle.join(), Ok(2));
}

fn a_dropped_pool_resolves_a_waiting_task_with_its_last_outcome(backend: Backend) {
    let pool = pool(backend, 2);
    let scratch = Scratch::new("drop-backoff");
    let handle = panics_once::dispatch_on(&pool, scratch.string());
    wait_for_retries(&pool, 1);
    drop(pool);
    // At the end of the backoff there is no pool to run the retry on.
    let outcome = within_limit("a waiting task of a dropped pool", move || handle.join());
    assert!(matches!(outcome, Err(TaskError::Panicked { .. })), "{outcome:?}");
    settle();
    assert_eq!(runs(&scratch.string()), 1);
}

fn the_policy_is_on_the_task_type(_backend: Backend) {
    let policy = hangs_until::Task::POLICY;
    assert_eq!(policy.timeout(), Some(Duration::from_millis(300)));
    assert_eq!((policy.retries(), policy.backoff()), (2, Duration::from_millis(10)));
    assert!(errs_until::Task::POLICY.retries_failed());
    assert_eq!(panics_without_retries::Task::POLICY, parallel::Policy::DEFAULT);
}

fn wait_for_runs(dir: &str, at_least: usize) {
    let started = Instant::now();
    while runs(dir) < at_least {
        assert!(started.elapsed() < crate::support::HANG_LIMIT, "never ran {at_least} times");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_for_retries(pool: &parallel::Pool, at_least: u64) {
    let started = Instant::now();
    while pool.stats().retries < at_least {
        assert!(started.elapsed() < crate::support::HANG_LIMIT, "never retried");
        std::thread::sleep(Duration::from_millis(2));
    }
}

crate::backends!(
    a_time_limit_does_not_run_while_the_task_waits_behind_another,
    a_timed_out_attempt_runs_again,
    the_late_answer_of_a_timed_out_attempt_is_dropped,
    a_failed_attempt_runs_again_with_retry_failed,
    a_failed_attempt_is_the_answer_without_retry_failed,
    the_policy_is_on_the_task_type,
    ;
    quietly:
    a_timeout_leaves_the_pool_serving,
    the_backoff_doubles,
    a_panicking_attempt_runs_again,
    retries_end_with_the_last_attempt_s_outcome,
    nothing_runs_twice_without_retries,
    a_cancel_during_the_backoff_cancels_the_retry,
    a_kill_during_the_backoff_cancels_the_retry,
    a_shutdown_during_the_backoff_runs_the_retry,
    a_dropped_pool_resolves_a_waiting_task_with_its_last_outcome,
);

/// The pool of one thread that `joins_a_retried_task` dispatches to from inside its task.
static ONE_THREAD: std::sync::OnceLock<parallel::Pool> = std::sync::OnceLock::new();

#[task]
fn joins_a_retried_task(dir: String) -> usize {
    let pool = ONE_THREAD.get().expect("the test set the pool");
    panics_until::dispatch_on(pool, dir, 1).join().expect("the retry returns")
}

/// A task that joins a task of its own pool runs it in place when it is queued (a pool of one
/// would deadlock otherwise); it must do so again for each retry, which is queued anew.
#[test]
fn a_task_joining_a_retried_task_on_its_own_pool_of_one_thread() {
    let pool = ONE_THREAD.get_or_init(|| pool(Backend::Thread, 1));
    let scratch = Scratch::new("nested-retry");
    let handle = joins_a_retried_task::dispatch_on(pool, scratch.string());
    assert_eq!(within_limit("a nested retried task", move || handle.join()), Ok(2));
}

/// A worker process that dies under an attempt (here: `abort`) is replaced, and the attempt runs
/// again on the new one; on threads an abort would take the test down, so this is process only.
#[cfg(feature = "process")]
#[test]
fn a_crashed_attempt_runs_again_on_a_new_worker() {
    crashed_attempt_runs_again(Backend::Process);
}

/// As above, on a serving process's worker-process slot.
#[cfg(all(feature = "cluster", feature = "process"))]
#[test]
fn a_crashed_attempt_runs_again_on_a_new_slot_of_the_cluster() {
    crate::cluster::run(concat!(module_path!(), "::cluster"), "crashed_attempt", || {
        crashed_attempt_runs_again(Backend::Cluster);
    });
}

#[cfg(feature = "process")]
fn crashed_attempt_runs_again(backend: Backend) {
    let pool = pool(backend, 1);
    let scratch = Scratch::new("retry-crash");
    assert_eq!(aborts_until::dispatch_on(&pool, scratch.string(), 2).join(), Ok(3));
    assert_eq!(runs(&scratch.string()), 3);
    let stats = pool.stats();
    assert_eq!(stats.retries, 2, "{stats:?}");

    let scratch = Scratch::new("retry-crash-exhausted");
    let died = aborts_until::dispatch_on(&pool, scratch.string(), 100).join();
    assert!(matches!(died, Err(TaskError::WorkerDied { .. })), "{died:?}");
    settle();
    assert_eq!(runs(&scratch.string()), 3, "at most retries + 1 runs");
}
