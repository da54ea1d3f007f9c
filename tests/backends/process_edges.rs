//! The process backend at its edges: workers that cannot start, processes started as workers by
//! mistake, values that will not cross, payloads at and over the limit.
#![cfg(feature = "process")]

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::quietly;
use parallel::{task, Backend, Environment, Never, Pool, Task, TaskError};
use serde::{Deserialize, Serialize, Serializer};

fn pool(workers: usize) -> Pool {
    Pool::builder().backend(Backend::Process).workers(workers).build().unwrap()
}

#[task]
fn echo(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

#[task]
fn reverse(bytes: Vec<u8>) -> Vec<u8> {
    bytes.into_iter().rev().collect()
}

#[test]
fn large_payloads_cross_both_ways_at_once() {
    let pool = pool(2);
    let payload: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    let expected: Vec<u8> = payload.iter().rev().copied().collect();
    // Two workers, each receiving and sending 64 MiB at the same time as the other.
    let first = reverse::dispatch_on(&pool, payload.clone());
    let second = echo::dispatch_on(&pool, payload.clone());
    assert!(first.join().unwrap() == expected);
    assert!(second.join().unwrap() == payload);
}

#[test]
fn arguments_over_the_message_limit_are_refused_without_touching_a_worker() {
    let pool = Pool::builder()
        .backend(Backend::Process)
        .workers(1)
        .max_message_size(1 << 20)
        .build()
        .unwrap();
    match echo::dispatch_on(&pool, vec![0; 2 << 20]).join() {
        Err(error @ TaskError::Serialization { .. }) => assert_eq!(
            error.to_string(),
            "the arguments of task `backends::process_edges::echo` did not cross the worker \
             boundary: the value is over the `max_message_size` of 1048576 bytes; raise it with \
             `Pool::builder().max_message_size(bytes)` or send less (a file's path instead of its \
             contents)"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(echo::dispatch_on(&pool, vec![1; 1000]).join().unwrap().len(), 1000);
    // An output over the limit is refused by the worker, which keeps serving.
    match grow::dispatch_on(&pool, 2 << 20).join() {
        Err(error @ TaskError::Serialization { .. }) => assert_eq!(
            error.to_string(),
            "the output of task `backends::process_edges::grow` did not cross the worker \
             boundary: the value is over the `max_message_size` of 1048576 bytes; raise it with \
             `Pool::builder().max_message_size(bytes)` or send less (a file's path instead of its \
             contents)"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(echo::dispatch_on(&pool, vec![1; 10]).join().unwrap().len(), 10);
}

#[task]
fn grow(len: usize) -> Vec<u8> {
    vec![7; len]
}

/// A value whose `Serialize` always fails.
#[derive(Debug, Deserialize)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value refuses to be serialized"))
    }
}

#[task]
fn takes_unserializable(value: Unserializable) -> String {
    format!("{value:?}")
}

#[task]
fn returns_unserializable() -> Unserializable {
    Unserializable
}

#[test]
fn values_that_do_not_serialize_are_reported_and_the_pool_keeps_serving() {
    let pool = pool(1);
    match takes_unserializable::dispatch_on(&pool, Unserializable).join() {
        Err(TaskError::Serialization { value, message, .. }) => {
            assert_eq!(value, "arguments");
            assert!(message.contains("refuses to be serialized"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match returns_unserializable::dispatch_on(&pool).join() {
        Err(error @ TaskError::Serialization { .. }) => {
            let shown = error.to_string();
            assert!(
                shown.contains("output") && shown.contains("returns_unserializable"),
                "{shown}"
            );
            assert!(shown.contains("refuses to be serialized"), "{shown}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(echo::dispatch_on(&pool, vec![3]).join(), Ok(vec![3]));
}

/// A task the program never registered: no `#[task]` on its impl.
#[derive(Serialize, Deserialize)]
struct Unregistered;

impl Task for Unregistered {
    type Output = u8;
    type Error = Never;
    type Progress = Never;
    const NAME: &'static str = "process_edges::unregistered";

    fn run(self, _: &mut Environment) -> Result<u8, Never> {
        Ok(1)
    }
}

#[test]
fn a_task_the_worker_does_not_know_is_reported_by_name() {
    let pool = pool(1);
    match pool.submit(Unregistered).join() {
        Err(error @ TaskError::UnknownTask { .. }) => {
            assert!(error.to_string().contains("process_edges::unregistered"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(echo::dispatch_on(&pool, vec![]).join(), Ok(vec![]));
}

#[test]
fn a_worker_that_cannot_start_is_reported_after_bounded_retries() {
    quietly(module_path!(), "a_worker_that_cannot_start_is_reported_after_bounded_retries", || {
        // Under a 4 MiB address-space limit the executable cannot even be loaded.
        let pool = Pool::builder()
            .backend(Backend::Process)
            .workers(1)
            .max_memory_per_worker(4 << 20)
            .build()
            .unwrap();
        // The first task gets the error after five attempts with backoff (20 ms to 320 ms); later
        // ones back off longer still, so a broken setup never becomes a crash loop.
        match echo::dispatch_on(&pool, vec![1]).join() {
            Err(error @ TaskError::WorkerUnavailable { .. }) => {
                let shown = error.to_string();
                assert!(shown.contains("no worker could be started for task"), "{shown}");
                assert!(shown.contains("5 attempts failed"), "{shown}");
                assert!(shown.contains("under its memory limit of 4194304 bytes"), "{shown}");
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn a_process_started_as_a_worker_by_mistake_says_why_it_cannot_serve() {
    let exe = std::env::current_exe().unwrap();
    let garbled = Command::new(&exe).env("PARALLEL_WORKER", "not a marker").output().unwrap();
    assert_eq!(garbled.status.code(), Some(101));
    let stderr = String::from_utf8_lossy(&garbled.stderr);
    assert!(stderr.contains("started as a worker but cannot serve"), "{stderr}");
    assert!(garbled.stdout.is_empty(), "the test harness must not run in a worker");

    // A marker of the right shape whose channel is no socket: the worker stops at once.
    let parent = std::process::id();
    let marker = format!("2:0:{parent}:0:1048576:0");
    let no_channel = Command::new(&exe).env("PARALLEL_WORKER", marker).output().unwrap();
    assert_eq!(no_channel.status.code(), Some(101));
    let stderr = String::from_utf8_lossy(&no_channel.stderr);
    assert!(stderr.contains("stops"), "{stderr}");

    // A marker naming another parent: the worker cannot serve, and says why
    // (`worker_hygiene.rs` tells a wrong parent from an ended one).
    let orphan = Command::new(&exe).env("PARALLEL_WORKER", "2:3:1:0:1048576:0").output().unwrap();
    assert_eq!(orphan.status.code(), Some(101));
    let stderr = String::from_utf8_lossy(&orphan.stderr);
    assert!(stderr.contains("started as a worker but cannot serve"), "{stderr}");
    assert!(orphan.stdout.is_empty());
}

#[task]
fn read_all_of_stdin() -> Result<usize, String> {
    use std::io::Read;
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).map_err(|error| error.to_string())?;
    Ok(input.len())
}

#[test]
fn a_task_reading_standard_input_finds_it_empty_not_the_channel() {
    // The pool hands the channel to a new worker as its standard input (so that it can spawn
    // with `posix_spawn`); the worker must have moved it away before any task runs.
    let pool = pool(1);
    for _ in 0..3 {
        // Reading the channel would block (or eat the protocol): bounded, so it fails instead.
        let read = read_all_of_stdin::dispatch_on(&pool).join_timeout(Duration::from_secs(10));
        assert_eq!(read, Ok(0));
        assert_eq!(echo::dispatch_on(&pool, vec![1, 2]).join(), Ok(vec![1, 2]));
    }
}

#[test]
fn jobs_to_an_idle_worker_cross_whatever_their_size() {
    // A job for an idle worker is written by the caller's thread, unless it is large: then the
    // slot thread sends it. Both ways, one after the other, on the same worker.
    let pool = pool(1);
    for size in [0, 1, 64 << 10, (64 << 10) + 1, 1 << 20, 3] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let back = echo::dispatch_on(&pool, payload.clone()).join_timeout(Duration::from_secs(30));
        assert!(back.as_ref().is_ok_and(|back| *back == payload), "{size} bytes: {:?}", back.err());
    }
}
