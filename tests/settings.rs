//! Settings out of range: an `Error` from `build`, and a clean panic naming the variable from the
//! default pool, never an abort or an attempt to start an absurd number of workers.
//!
//! The default pool reads `PARALLEL_WORKERS` once per process, so each case runs in a child copy
//! of this test binary (`child_builds_the_default_pool`, ignored in a normal run) with the
//! variables set for it.

use std::process::Command;
use std::time::Duration;

use parallel::{task, Backend, Pool, PoolBuilder};

#[path = "common/mod.rs"]
mod common;

/// Marks the child: the ignored test below only does its work when this is set.
const CHILD: &str = "PARALLEL_SETTINGS_TEST_CHILD";

#[task]
fn one() -> u8 {
    1
}

/// Run in a child only: builds the default pool through `dispatch`, as a user's program would.
#[test]
#[ignore = "run in a child process by `absurd_worker_variables_panic_cleanly`"]
fn child_builds_the_default_pool() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    assert_eq!(one::dispatch().join(), Ok(1));
}

/// The backends this build can run the default pool on.
fn backends() -> Vec<&'static str> {
    if cfg!(feature = "process") {
        vec!["thread", "process"]
    } else {
        vec!["thread"]
    }
}

#[test]
fn absurd_worker_variables_panic_cleanly() {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    for backend in backends() {
        for workers in ["1099511627776", "100000", "18446744073709551615"] {
            let output = common::within(Duration::from_secs(60), "the child", {
                let exe = exe.clone();
                move || {
                    Command::new(exe)
                        .args(["--exact", "child_builds_the_default_pool", "--ignored"])
                        .args(["--nocapture", "--test-threads=1"])
                        .env(CHILD, "1")
                        .env("PARALLEL_BACKEND", backend)
                        .env("PARALLEL_WORKERS", workers)
                        .output()
                        .expect("the test binary starts again")
                }
            });
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            // 101 is the test harness's exit code for a failed (here: panicked) test; an abort
            // would end the child by SIGABRT and leave no exit code.
            assert_eq!(
                output.status.code(),
                Some(101),
                "PARALLEL_BACKEND={backend} PARALLEL_WORKERS={workers}: {:?}\n{text}",
                output.status
            );
            assert!(
                text.contains(&format!("PARALLEL_WORKERS=\"{workers}\"")),
                "the panic names the variable: {text}"
            );
            let range = format!("1 to {}", PoolBuilder::max_workers());
            assert!(text.contains(&range), "the panic names the allowed range: {text}");
            // Located at the user's `dispatch`, not at a line of the library.
            assert!(
                text.contains("panicked at tests/settings.rs:"),
                "the panic is located at the caller: {text}"
            );
        }
    }
}

#[test]
fn a_sane_worker_variable_still_works_in_a_child() {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let output = common::within(Duration::from_secs(60), "the child", move || {
        Command::new(exe)
            .args(["--exact", "child_builds_the_default_pool", "--ignored", "--test-threads=1"])
            .env(CHILD, "1")
            .env("PARALLEL_BACKEND", "thread")
            .env("PARALLEL_WORKERS", "3")
            .output()
            .expect("the test binary starts again")
    });
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn absurd_worker_counts_are_an_error_from_build() {
    for backend in backends() {
        let backend = if backend == "thread" { Backend::Thread } else { Backend::Process };
        let max = PoolBuilder::max_workers();
        for workers in [usize::MAX, 1 << 40, 100_000, max + 1] {
            let error = Pool::builder().backend(backend).workers(workers).build().unwrap_err();
            assert!(error.is_invalid_config(), "{workers}: {error}");
            let message = error.to_string();
            assert!(message.contains(&format!("workers({workers})")), "{message}");
            assert!(message.contains(&format!("1 to {max}")), "{message}");
        }
    }
}

#[test]
fn the_largest_worker_count_starts() {
    let max = PoolBuilder::max_workers();
    let pool = common::within(Duration::from_secs(120), "starting the largest pool", move || {
        Pool::builder().backend(Backend::Thread).workers(max).build().unwrap()
    });
    assert_eq!(pool.workers(), max);
    assert_eq!(one::dispatch_on(&pool).join(), Ok(1));
}
