//! Faults found by trying the process backend from outside, each pinned by a test: a cancel or a
//! dropped `Map` that killed a later task, a task that never ran reported `WorkerDied`, callers
//! blocked behind a write to a busy worker, tasks stuck behind a hung one while another worker
//! idled, and a panic message over the message limit reported as a death.
#![cfg(feature = "process")]

use crate::common;

use common::{quietly, within, Scratch};

use std::path::Path;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Pool, TaskError};

#[task]
fn square(x: u64) -> u64 {
    x * x
}

#[task]
fn pid() -> u32 {
    std::process::id()
}

/// Blocks until `gate` exists (at most a minute, so that a failing test ends).
#[task]
fn gated(gate: String) -> u32 {
    let started = Instant::now();
    while !Path::new(&gate).exists() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    std::process::id()
}

/// Blocks until `gate` exists, then returns the length of `bytes`.
#[task]
fn gated_len(gate: String, bytes: Vec<u8>) -> usize {
    gated(gate);
    bytes.len()
}

/// Touches `started`, then blocks until `gate` exists, then returns the length of `bytes`.
#[task]
fn hold_len(started: String, gate: String, bytes: Vec<u8>) -> usize {
    common::touch(&started);
    gated(gate);
    bytes.len()
}

/// Touches `started`, then blocks until `gate` exists.
#[task]
fn hold(started: String, gate: String) -> u32 {
    common::touch(&started);
    gated(gate)
}

#[task]
fn nap(millis: u64) {
    std::thread::sleep(Duration::from_millis(millis));
}

#[task]
fn shout(len: usize) -> u32 {
    panic!("{}", "x".repeat(len))
}

fn pool(workers: usize) -> Pool {
    Pool::builder().backend(Backend::Process).workers(workers).build().expect("a process pool")
}

/// Runs enough short tasks that the pool keeps many jobs in flight on each worker.
fn warm_up(pool: &Pool, tasks: u64) {
    let handles: Vec<_> = (0..tasks).map(|i| square::dispatch_on(pool, i)).collect();
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.join(), Ok(i as u64 * i as u64));
    }
}

#[test]
fn cancelling_many_tasks_never_kills_a_later_one() {
    within(Duration::from_secs(120), "cancel rounds", || {
        let pool = pool(2);
        warm_up(&pool, 2_000);
        for round in 0..20 {
            let handles: Vec<_> = (0..50).map(|i| square::dispatch_on(&pool, i)).collect();
            for handle in &handles {
                handle.cancel();
            }
            drop(handles);
            assert_eq!(square::dispatch_on(&pool, 3).join(), Ok(9), "round {round}");
        }
    });
}

#[test]
fn dropping_a_map_of_short_tasks_kills_no_worker_and_no_later_task() {
    within(Duration::from_secs(120), "map rounds", || {
        let pool = pool(2);
        warm_up(&pool, 2_000);
        let restarts = pool.stats().restarts;
        for round in 0..20 {
            assert_eq!(pool.map((0u64..).map(square::new)).take(10).count(), 10);
            assert_eq!(square::dispatch_on(&pool, 3).join(), Ok(9), "round {round}");
        }
        assert_eq!(pool.stats().restarts, restarts, "a dropped map of short tasks killed workers");
    });
}

#[test]
fn a_task_sent_to_a_worker_killed_while_idle_runs_on_a_new_one() {
    within(Duration::from_secs(120), "idle kills", || {
        let pool = pool(1);
        for round in 0..50 {
            let victim = pid::dispatch_on(&pool).join().expect("a worker answers");
            common::kill_9(victim);
            match square::dispatch_on(&pool, 4).join() {
                Ok(16) => {}
                other => panic!("round {round}: a task that never ran came back {other:?}"),
            }
        }
    });
}

#[test]
fn callers_never_wait_for_a_write_to_a_busy_worker() {
    let scratch = Scratch::new("busy-writes");
    let gate = scratch.file("gate");
    let started = scratch.file("started");
    let pool = pool(1);
    // Tasks of 2 ms: the slot keeps one job queued in the worker behind the running one.
    for _ in 0..30 {
        assert!(nap::dispatch_on(&pool, 2).join().is_ok());
    }
    let naps: Vec<_> = (0..2).map(|_| nap::dispatch_on(&pool, 2)).collect();
    // A running task and, sent behind it, frames of 8 MiB each: far more than the socket holds
    // while the worker is busy, so that whoever writes them waits for the gate.
    let running = hold_len::dispatch_on(&pool, started.clone(), gate.clone(), vec![1; 1 << 20]);
    let queued: Vec<_> =
        (0..4).map(|_| gated_len::dispatch_on(&pool, gate.clone(), vec![7; 8 << 20])).collect();
    for nap in naps {
        assert!(nap.join().is_ok());
    }
    while !Path::new(&started).exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
    // Time for the frames to fill the socket: this test is about a write that blocks.
    std::thread::sleep(Duration::from_millis(300));
    let (pool, queued, later) = within(Duration::from_secs(20), "cancel and dispatch", move || {
        queued[0].cancel();
        let later = gated_len::dispatch_on(&pool, String::new(), vec![7; 8 << 20]);
        (pool, queued, later)
    });
    let pool = within(Duration::from_secs(20), "kill", move || {
        pool.kill();
        pool
    });
    assert!(!Path::new(&gate).exists());
    match running.join() {
        Err(TaskError::Cancelled | TaskError::WorkerDied { .. }) => {}
        other => panic!("the running task was not stopped by kill: {other:?}"),
    }
    for handle in queued.into_iter().chain([later]) {
        assert_eq!(handle.join(), Err(TaskError::Cancelled));
    }
    drop(pool);
}

#[test]
fn no_task_waits_behind_a_hung_one_while_a_worker_idles() {
    let scratch = Scratch::new("hung");
    let gate = scratch.file("gate");
    let started = scratch.file("started");
    let pool = pool(2);
    warm_up(&pool, 20_000);
    let closed = gate.clone();
    let (pool, hung) = within(Duration::from_secs(60), "tasks behind a hung one", move || {
        let mut hung = None;
        let mut quick = Vec::new();
        for i in 0..400u64 {
            if i == 200 {
                hung = Some(hold::dispatch_on(&pool, started.clone(), closed.clone()));
            } else {
                quick.push((i, square::dispatch_on(&pool, i)));
            }
        }
        for (i, handle) in quick {
            assert_eq!(handle.join(), Ok(i * i), "task {i}");
        }
        (pool, hung.expect("task 200 was dispatched"))
    });
    let stats = pool.stats();
    assert_eq!(stats.running, 1, "only the hung task runs: {stats:?}");
    common::touch(&gate);
    assert!(hung.join().is_ok());
}

#[test]
fn a_panic_message_over_the_message_limit_is_a_panic_cut_to_fit() {
    quietly(module_path!(), "a_panic_message_over_the_message_limit_is_a_panic_cut_to_fit", || {
        let pool = Pool::builder()
            .backend(Backend::Process)
            .workers(1)
            .max_message_size(64 << 10)
            .build()
            .expect("a process pool");
        let before = pid::dispatch_on(&pool).join().expect("a worker answers");
        match shout::dispatch_on(&pool, 1 << 20).join() {
            Err(TaskError::Panicked { message, .. }) => {
                assert!(message.len() < 64 << 10, "{} bytes", message.len());
                assert!(message.starts_with("xxxx"), "{}", &message[..100]);
                assert!(message.contains("cut to"), "{}", &message[message.len() - 200..]);
            }
            other => panic!("expected a panic, got {other:?}"),
        }
        assert_eq!(pid::dispatch_on(&pool).join(), Ok(before), "the worker survives");
    });
}

#[task]
fn weigh(bytes: Vec<u8>) -> usize {
    bytes.len()
}

#[test]
fn a_job_whose_frame_kills_every_worker_before_it_starts_is_reported_not_resent_forever() {
    quietly(
        module_path!(),
        "a_job_whose_frame_kills_every_worker_before_it_starts_is_reported_not_resent_forever",
        || {
            // 256 MiB of address space is enough to serve, not to take in a frame of 512 MiB.
            let pool = Pool::builder()
                .backend(Backend::Process)
                .workers(1)
                .max_memory_per_worker(256 << 20)
                .build()
                .expect("a process pool");
            let error = within(Duration::from_secs(120), "the oversized job", {
                let handle = weigh::dispatch_on(&pool, vec![0; 512 << 20]);
                move || handle.join()
            });
            match error {
                Err(TaskError::WorkerDied { reason, .. }) => {
                    assert!(reason.contains("before starting it 3 times"), "{reason}")
                }
                other => panic!("expected WorkerDied, got {other:?}"),
            }
            assert_eq!(weigh::dispatch_on(&pool, vec![0; 1 << 20]).join(), Ok(1 << 20));
        },
    );
}

#[task]
fn say_then(words: String, abort: bool) -> u32 {
    eprintln!("{words}");
    if abort {
        std::process::abort();
    }
    std::process::id()
}

#[test]
fn a_dying_task_is_shown_only_its_own_stderr() {
    quietly(module_path!(), "a_dying_task_is_shown_only_its_own_stderr", || {
        let pool = pool(1);
        for round in 0..20 {
            let earlier = format!("earlier task {round} speaking");
            let worker = say_then::dispatch_on(&pool, earlier.clone(), false).join();
            assert!(worker.is_ok(), "{worker:?}");
            match say_then::dispatch_on(&pool, format!("dying task {round}"), true).join() {
                Err(TaskError::WorkerDied { stderr_tail, .. }) => {
                    assert!(stderr_tail.contains(&format!("dying task {round}")), "{stderr_tail}");
                    assert!(!stderr_tail.contains(&earlier), "round {round}: {stderr_tail}");
                }
                other => panic!("expected WorkerDied, got {other:?}"),
            }
        }
    });
}
