//! The process backend pipelines short tasks: several wait in a worker's socket while it runs
//! one. These tests warm a pool up with short tasks so that it does, then check the two places
//! where pipelining could lose or duplicate work: cancelling a job that was sent but not started,
//! and a worker dying with jobs behind the one it runs.
#![cfg(feature = "process")]

use crate::common;

use common::Scratch;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Pool, TaskError};

#[task]
fn noop(x: u64) -> u64 {
    x
}

#[task]
fn pid() -> u32 {
    std::process::id()
}

/// Appends a line to `path`: run twice, the file has two lines.
#[task]
fn record(path: String) -> u32 {
    let mut file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
    writeln!(file, "{}", std::process::id()).unwrap();
    std::process::id()
}

/// Blocks until `gate` exists.
#[task]
fn gated(gate: String) {
    let started = Instant::now();
    while !Path::new(&gate).exists() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Records its run in `path`, then crashes its worker.
#[task]
fn record_then_crash(path: String) {
    record(path);
    std::process::abort();
}

#[task]
fn crash_after(gate: String) {
    gated(gate);
    std::process::abort();
}

/// Runs enough short tasks that the pool keeps many in flight.
fn warm_up(pool: &Pool) {
    let handles: Vec<_> = (0..2_000).map(|i| noop::dispatch_on(pool, i)).collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

fn lines(path: &str) -> usize {
    fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

#[test]
fn cancelling_a_job_sent_but_not_started_skips_it_without_killing_the_worker() {
    let scratch = Scratch::new("cancel");
    let pool = Pool::builder().backend(Backend::Process).workers(1).build().unwrap();
    warm_up(&pool);
    let worker = pid::dispatch_on(&pool).join().unwrap();
    let gate = scratch.file("gate");
    let blocker = gated::dispatch_on(&pool, gate.clone());
    let victims: Vec<_> =
        (0..20).map(|i| record::dispatch_on(&pool, scratch.file(&format!("victim-{i}")))).collect();
    // Let the slot send the victims behind the blocker.
    std::thread::sleep(Duration::from_millis(100));
    for victim in &victims {
        victim.cancel();
    }
    fs::write(&gate, b"").unwrap();
    assert_eq!(blocker.join(), Ok(()));
    for victim in victims {
        assert_eq!(victim.join(), Err(TaskError::Cancelled));
    }
    assert_eq!(pid::dispatch_on(&pool).join(), Ok(worker), "no worker was killed for queued jobs");
    for i in 0..20 {
        assert_eq!(
            lines(&scratch.file(&format!("victim-{i}"))),
            0,
            "victim {i} ran after its cancel"
        );
    }
}

#[test]
fn jobs_behind_a_crash_run_exactly_once_on_another_worker() {
    let scratch = Scratch::new("crash");
    let pool = Pool::builder().backend(Backend::Process).workers(1).build().unwrap();
    warm_up(&pool);
    let first = pid::dispatch_on(&pool).join().unwrap();
    let gate = scratch.file("gate");
    let crasher = crash_after::dispatch_on(&pool, gate.clone());
    let followers: Vec<_> =
        (0..50).map(|i| record::dispatch_on(&pool, scratch.file(&format!("job-{i}")))).collect();
    std::thread::sleep(Duration::from_millis(100));
    fs::write(&gate, b"").unwrap();
    match crasher.join() {
        Err(TaskError::WorkerDied { pid, reason, .. }) => {
            assert_eq!(pid, first);
            assert!(reason.contains("SIGABRT"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    for (i, follower) in followers.into_iter().enumerate() {
        let ran_on = follower.join().unwrap();
        assert_ne!(ran_on, first, "job {i} ran on the worker that crashed before it");
        assert_eq!(
            lines(&scratch.file(&format!("job-{i}"))),
            1,
            "job {i} ran more or less than once"
        );
    }
}

#[test]
fn a_crash_right_after_short_jobs_blames_only_itself_and_runs_once() {
    // Short jobs pipelined ahead of a crashing one: their replies must reach the pool before the
    // crash, or the pool would blame one of them and send the crashing job to run again.
    let scratch = Scratch::new("crash-after-short");
    let pool = Pool::builder().backend(Backend::Process).workers(2).build().unwrap();
    warm_up(&pool);
    for round in 0..100 {
        let short: Vec<_> = (0..20u64).map(|i| noop::dispatch_on(&pool, i)).collect();
        let crash_file = scratch.file(&format!("crash-{round}"));
        let crasher = record_then_crash::dispatch_on(&pool, crash_file.clone());
        for (i, handle) in short.into_iter().enumerate() {
            assert_eq!(handle.join(), Ok(i as u64), "round {round}: short job {i} was blamed");
        }
        match crasher.join() {
            Err(TaskError::WorkerDied { reason, .. }) => {
                assert!(reason.contains("SIGABRT"), "{reason}")
            }
            other => panic!("round {round}: {other:?}"),
        }
        assert_eq!(lines(&crash_file), 1, "round {round}: the crashing job ran more than once");
    }
}

#[task]
fn hold(started: String, gate: String) {
    fs::write(&started, b"").unwrap();
    gated(gate);
}

#[test]
fn a_job_cancelled_while_its_worker_is_busy_never_starts_even_if_the_worker_frees_up_at_once() {
    // The caller cancels pipelined jobs while the worker is held, then releases the worker at
    // once: the cancel must already be with the worker when `cancel` returns.
    let scratch = Scratch::new("cancel-race");
    let pool = Pool::builder().backend(Backend::Process).workers(1).build().unwrap();
    for round in 0..200 {
        let short: Vec<_> = (0..50).map(|i| noop::dispatch_on(&pool, i)).collect();
        let started = scratch.file(&format!("{round}-started"));
        let gate = scratch.file(&format!("{round}-gate"));
        let holder = hold::dispatch_on(&pool, started.clone(), gate.clone());
        let victims: Vec<_> = (0..8)
            .map(|i| record::dispatch_on(&pool, scratch.file(&format!("{round}-victim-{i}"))))
            .collect();
        for handle in short {
            handle.join().unwrap();
        }
        let waiting = Instant::now();
        while !Path::new(&started).exists() {
            assert!(waiting.elapsed() < Duration::from_secs(60), "the holder never started");
            std::thread::sleep(Duration::from_micros(100));
        }
        for victim in &victims {
            victim.cancel();
        }
        fs::write(&gate, b"").unwrap();
        assert_eq!(holder.join(), Ok(()));
        for victim in victims {
            assert_eq!(victim.join(), Err(TaskError::Cancelled));
        }
        // Anything the worker would still run is done once this answers.
        noop::dispatch_on(&pool, 0).join().unwrap();
        for i in 0..8 {
            let ran = lines(&scratch.file(&format!("{round}-victim-{i}")));
            assert_eq!(ran, 0, "round {round}: victim {i} ran after its cancel returned");
        }
    }
}

// A caller blocked in `join` on the only job in flight of its worker reads the worker's replies
// itself, in the reader thread's place (`process/lead.rs`). The tests below check the hand-offs.

#[task]
fn chatter(progress: &parallel::Progress<u64>, n: u64) -> u64 {
    for i in 0..n {
        progress.send(i);
    }
    n
}

#[test]
fn a_caller_reading_its_own_reply_hands_back_so_that_the_next_reply_is_read_at_once() {
    // One worker: the first caller's job is the only one in flight, so it reads the replies
    // itself while the reader thread sleeps. A second job, submitted while the worker is busy,
    // is joined by a caller that waits the usual way; its reply comes after the first caller
    // handed back, and the reader must be awake for it (its own time limit of 1 s would hide a
    // reader left asleep: the reply must come well before).
    let scratch = Scratch::new("lead-hand-back");
    let pool = Pool::builder().backend(Backend::Process).workers(1).build().unwrap();
    noop::dispatch_on(&pool, 0).join().unwrap();
    for round in 0..20 {
        let started = scratch.file(&format!("{round}-started"));
        let gate = scratch.file(&format!("{round}-gate"));
        std::thread::scope(|scope| {
            let leader = {
                let (started, gate) = (started.clone(), gate.clone());
                let pool = &pool;
                scope.spawn(move || hold::dispatch_on(pool, started, gate).join())
            };
            let waiting = Instant::now();
            while !Path::new(&started).exists() {
                assert!(waiting.elapsed() < Duration::from_secs(60), "the holder never started");
                std::thread::sleep(Duration::from_micros(100));
            }
            let follower = noop::dispatch_on(&pool, round);
            let follower = scope.spawn(move || {
                let result = follower.join();
                (result, Instant::now())
            });
            // Both callers are waiting: the first reads, the second sleeps.
            std::thread::sleep(Duration::from_millis(20));
            fs::write(&gate, b"").unwrap();
            let opened = Instant::now();
            assert_eq!(leader.join().unwrap(), Ok(()), "round {round}");
            let (result, answered) = follower.join().unwrap();
            assert_eq!(result, Ok(round), "round {round}");
            let took = answered.duration_since(opened);
            assert!(
                took < Duration::from_millis(700),
                "round {round}: the next reply took {took:?}"
            );
        });
    }
}

#[test]
fn a_caller_reading_its_own_reply_delivers_its_progress_and_sees_its_worker_die() {
    let scratch = Scratch::new("lead-progress-death");
    let pool = Pool::builder().backend(Backend::Process).workers(1).build().unwrap();
    for round in 0..20u64 {
        // Progress messages come through the ring the caller reads, before the reply.
        let handle = chatter::dispatch_on(&pool, 100 + round);
        let reader = handle.progress();
        assert_eq!(handle.join(), Ok(100 + round));
        assert_eq!(reader.collect::<Vec<_>>(), (0..100 + round).collect::<Vec<_>>());
        // A death while the caller reads: blamed on its job, and the pool serves on.
        let file = scratch.file(&format!("{round}-crash"));
        match record_then_crash::dispatch_on(&pool, file.clone()).join() {
            Err(TaskError::WorkerDied { .. }) => {}
            other => panic!("round {round}: expected the worker's death, got {other:?}"),
        }
        assert_eq!(lines(&file), 1, "round {round}: the crashing job ran more than once");
        // A caller that stops reading at its deadline hands back; the job is stopped.
        let gate = scratch.file(&format!("{round}-gate"));
        let timed_out = gated::dispatch_on(&pool, gate).join_timeout(Duration::from_millis(20));
        assert_eq!(timed_out, Err(TaskError::TimedOut), "round {round}");
        assert_eq!(noop::dispatch_on(&pool, round).join(), Ok(round), "round {round}");
    }
}

// Short tasks of one kind through `map` travel several to a frame (`RunMany`), each with its own
// claim and reply. The tests below check that a frame shared by many jobs changes nothing of
// what a job's own frame guarantees.

/// Records its run in `dir/job-<i>`; the input `special` then crashes its worker (`crash`) or
/// says it started (`dir/started`) and waits for `gate`.
#[task]
fn step(dir: String, i: u64, special: u64, crash: bool, gate: String) -> u32 {
    let pid = record(format!("{dir}/job-{i}"));
    if i == special {
        if crash {
            std::process::abort();
        }
        fs::write(format!("{dir}/started"), b"").unwrap();
        gated(gate);
    }
    pid
}

/// A `map` of short tasks until its worker's average says they are short, so that the next ones
/// share frames.
fn warm_up_map(pool: &Pool) {
    for result in pool.map((0..5_000).map(noop::new)) {
        result.unwrap();
    }
}

#[test]
fn a_crash_in_the_middle_of_a_shared_frame_blames_that_input_and_every_other_runs_once() {
    let scratch = Scratch::new("chunk-crash");
    let pool = Pool::builder().backend(Backend::Process).workers(1).build().unwrap();
    for (round, crash_at) in [1u64, 37, 100, 163, 298].into_iter().enumerate() {
        warm_up_map(&pool);
        let dir = scratch.path(&format!("{round}"));
        fs::create_dir_all(&dir).unwrap();
        let dir = dir.to_str().unwrap().to_owned();
        let gate = scratch.file("never");
        let inputs = (0..300).map(|i| step::new(dir.clone(), i, crash_at, true, gate.clone()));
        let results: Vec<_> = pool.map(inputs).collect();
        let first = results[0].clone().ok();
        for (i, result) in results.into_iter().enumerate() {
            let i = i as u64;
            let ran = lines(&format!("{dir}/job-{i}"));
            assert_eq!(ran, 1, "round {round}: input {i} ran {ran} times");
            if i == crash_at {
                match result {
                    Err(TaskError::WorkerDied { reason, .. }) => {
                        assert!(reason.contains("SIGABRT"), "round {round}: {reason}")
                    }
                    other => panic!("round {round}: input {i} (the crash) gave {other:?}"),
                }
                continue;
            }
            let pid = result.unwrap_or_else(|error| {
                panic!("round {round}: input {i} was blamed for input {crash_at}: {error}")
            });
            if i > crash_at && crash_at > 0 {
                assert_ne!(Some(pid), first, "round {round}: input {i} ran on the dead worker");
            }
        }
    }
}

#[test]
fn dropping_a_map_in_the_middle_of_a_shared_frame_starts_none_of_the_rest() {
    let scratch = Scratch::new("chunk-drop");
    let pool = Pool::builder().backend(Backend::Process).workers(1).build().unwrap();
    for round in 0..5u64 {
        warm_up_map(&pool);
        let dir = scratch.path(&format!("{round}"));
        fs::create_dir_all(&dir).unwrap();
        let dir = dir.to_str().unwrap().to_owned();
        let gate = format!("{dir}/gate");
        let hold_at = 40 + 20 * round;
        let inputs = (0..300).map(|i| step::new(dir.clone(), i, hold_at, false, gate.clone()));
        let mut results = pool.map(inputs);
        for i in 0..hold_at {
            assert!(results.next().unwrap().is_ok(), "round {round}: input {i}");
        }
        let waiting = Instant::now();
        while !Path::new(&format!("{dir}/started")).exists() {
            assert!(waiting.elapsed() < Duration::from_secs(60), "the holder never started");
            std::thread::sleep(Duration::from_micros(100));
        }
        // The worker runs input `hold_at`; the ones after it wait in its frame, or in the pool.
        drop(results);
        fs::write(&gate, b"").unwrap();
        // Anything the worker would still run is done once this answers.
        noop::dispatch_on(&pool, 0).join().unwrap();
        assert_eq!(lines(&format!("{dir}/job-{hold_at}")), 1, "round {round}");
        for i in hold_at + 1..300 {
            let ran = lines(&format!("{dir}/job-{i}"));
            assert_eq!(ran, 0, "round {round}: input {i} ran after the map was dropped");
        }
    }
}
