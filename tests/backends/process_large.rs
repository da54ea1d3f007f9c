//! Large values on the process backend: a frame over a quarter of a ring (256 KiB) travels
//! through its lane's region, a memory file both sides map (its descriptor passed on the socket),
//! announced in the ring. These tests check that such values cross whole both ways, in order with
//! the small frames around them, that a worker dying with one in hand resolves its job and loses
//! nothing queued behind it, that the message limit holds on that path, and that a worker that
//! slips the pool a file it could still cut (a SIGBUS in the pool's reader) is refused as breaking
//! the protocol, while the pool keeps serving.
#![cfg(feature = "process")]

use crate::common;

use common::{quietly, within};

use std::time::Duration;

use parallel::{task, Backend, Pool, Progress, TaskError};

fn pool(workers: usize) -> Pool {
    Pool::builder().backend(Backend::Process).workers(workers).build().expect("a process pool")
}

/// Bytes that differ from one position to the next, so that a shifted or cut copy shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

#[task]
fn echo(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

/// Sends `count` progress messages of `len` bytes, then returns `len`.
#[task]
fn report(progress: &Progress<Vec<u8>>, count: u8, len: usize) -> usize {
    for n in 0..count {
        progress.send(pattern(len, n));
    }
    len
}

#[test]
fn values_of_sixteen_and_one_mebibytes_cross_both_ways_whole() {
    let pool = pool(1);
    // Around the ring's limit too: a frame of 256 KiB goes through the ring, one byte more not.
    for (len, seed) in [(16 << 20, 1), (1 << 20, 2), ((256 << 10) - 13, 3), ((256 << 10) - 12, 4)] {
        let sent = pattern(len, seed);
        let back = echo::dispatch_on(&pool, sent.clone()).join().expect("the echo");
        assert!(back == sent, "{len} bytes came back changed");
    }
}

#[test]
fn large_and_small_frames_keep_their_order() {
    let pool = pool(1);
    // Small frames pipelined around large ones, both ways: each result is its own input.
    let sizes = [3, 600 << 10, 5, 7, 2 << 20, 1, 0, 300 << 10, 9, 4 << 20, 11];
    let handles: Vec<_> = (0..4)
        .flat_map(|round| sizes.iter().map(move |len| (round, *len)))
        .map(|(round, len)| {
            let sent = pattern(len, round as u8 ^ len as u8);
            (sent.clone(), echo::dispatch_on(&pool, sent))
        })
        .collect();
    for (index, (sent, handle)) in handles.into_iter().enumerate() {
        assert!(handle.join().expect("the echo") == sent, "echo {index} is another's value");
    }
    // Progress messages too: large ones before a small reply, in order.
    let handle = report::dispatch_on(&pool, 5, 1 << 20);
    let reader = handle.progress();
    assert_eq!(handle.join(), Ok(1 << 20));
    let messages: Vec<Vec<u8>> = reader.collect();
    assert_eq!(messages.len(), 5);
    for (n, message) in messages.iter().enumerate() {
        assert!(*message == pattern(1 << 20, n as u8), "message {n} changed");
    }
}

/// Aborts its worker once `gate` exists, with its large argument in hand.
#[task]
fn crash_holding(bytes: Vec<u8>, gate: String) -> usize {
    while !std::path::Path::new(&gate).exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    if !bytes.is_empty() {
        std::process::abort();
    }
    bytes.len()
}

#[test]
fn a_worker_dying_with_a_large_argument_resolves_its_job_and_requeues_the_rest() {
    quietly(
        module_path!(),
        "a_worker_dying_with_a_large_argument_resolves_its_job_and_requeues_the_rest",
        || {
            let scratch = common::Scratch::new("large-crash");
            let gate = scratch.file("gate");
            let pool = pool(1);
            let crash = crash_holding::dispatch_on(&pool, pattern(8 << 20, 5), gate.clone());
            // Sent behind it while it runs (the slot keeps one waiting), or still queued.
            let behind: Vec<_> = (0..3u8)
                .map(|n| {
                    let sent = pattern((1 << 20) + usize::from(n), n);
                    (sent.clone(), echo::dispatch_on(&pool, sent))
                })
                .collect();
            std::thread::sleep(Duration::from_millis(100));
            common::touch(&gate);
            match crash.join() {
                Err(TaskError::WorkerDied { reason, .. }) => {
                    assert!(reason.contains("SIGABRT"), "{reason}")
                }
                other => panic!("expected the worker's death, got {other:?}"),
            }
            for (n, (sent, handle)) in behind.into_iter().enumerate() {
                assert!(handle.join().expect("a job behind the crash") == sent, "echo {n}");
            }
        },
    );
}

#[test]
fn the_message_limit_holds_for_values_in_memory_files() {
    let pool = Pool::builder()
        .backend(Backend::Process)
        .workers(1)
        .max_message_size(1 << 20)
        .build()
        .expect("a process pool");
    // Over the ring's share, under the limit: through the region.
    let sent = pattern(900 << 10, 6);
    assert!(echo::dispatch_on(&pool, sent.clone()).join().expect("the echo") == sent);
    match echo::dispatch_on(&pool, vec![0; (1 << 20) + 1]).join() {
        Err(TaskError::Serialization { message, .. }) => {
            assert!(message.contains("over the `max_message_size`"), "{message}")
        }
        other => panic!("expected the arguments refused, got {other:?}"),
    }
    assert!(echo::dispatch_on(&pool, sent.clone()).join().expect("the pool serves on") == sent);
}

/// Slips an unsealed memory file of `len` bytes onto the worker's channel, where the pool takes
/// it for the region of this task's reply, the worker's first large one (the worker's own region
/// comes after it), then returns `len` bytes: a worker whose region could still be cut under the
/// pool's mapping.
#[task]
fn slip_an_unsealed_file(len: usize) -> Vec<u8> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::io::{IoSlice, Write};
    use std::os::fd::AsRawFd;
    let channel = std::fs::read_dir("/proc/self/fd")
        .expect("the worker's descriptors")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            target.to_string_lossy().starts_with("socket:").then_some(entry.file_name())
        })
        .find_map(|name| name.to_str()?.parse::<i32>().ok())
        .expect("the worker's channel");
    let file = memfd_create("unsealed", MFdFlags::MFD_CLOEXEC).expect("a memory file");
    std::fs::File::from(file.try_clone().unwrap()).write_all(&vec![7; len]).unwrap();
    let fds = [file.as_raw_fd()];
    sendmsg::<()>(
        channel,
        &[IoSlice::new(&[0])],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .expect("the channel takes a descriptor");
    vec![7; len]
}

#[test]
fn a_worker_that_sends_an_unsealed_file_is_killed_and_the_pool_serves_on() {
    quietly(
        module_path!(),
        "a_worker_that_sends_an_unsealed_file_is_killed_and_the_pool_serves_on",
        || {
            let pool = pool(1);
            let outcome = within(Duration::from_secs(60), "the slipped file", {
                let handle = slip_an_unsealed_file::dispatch_on(&pool, 1 << 20);
                move || handle.join()
            });
            match outcome {
                Err(TaskError::WorkerDied { reason, .. }) => {
                    assert!(reason.contains("not sealed against shrinking"), "{reason}")
                }
                other => panic!("expected the worker killed for it, got {other:?}"),
            }
            let sent = pattern(2 << 20, 8);
            assert!(echo::dispatch_on(&pool, sent.clone()).join().expect("a new worker") == sent);
        },
    );
}
