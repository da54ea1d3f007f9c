//! Progress messages (`progress: &Progress<P>`, `TaskHandle::progress`): every message, in order,
//! read as it comes or after the task ended; the newest kept when nobody reads; messages sent
//! just before a crash; messages of a failed attempt; senders on other threads; the reader as a
//! `Stream`. Tasks that must not start before the test reads wait for a file, on threads and in
//! worker processes alike.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_core::Stream;
use parallel::{task, Backend, Environment, Never, Progress, Task, TaskError};

use crate::support::{crashes_are_isolated, pool, touch, wait_for_file, within_limit, Scratch};

/// How many messages a handle keeps while nobody reads (documented on `TaskHandle::progress`).
const KEPT: u64 = 65_536;

#[task]
fn count_after(progress: &Progress<u64>, go: String, n: u64) -> u64 {
    wait_for_file(&go);
    for i in 0..n {
        progress.send(i);
    }
    n
}

#[task]
fn count(progress: &Progress<u64>, n: u64) -> u64 {
    for i in 0..n {
        progress.send(i);
    }
    n
}

fn wait_finished<T: Task>(handle: &parallel::TaskHandle<T>) {
    let started = std::time::Instant::now();
    while !handle.is_finished() {
        assert!(started.elapsed() < crate::support::HANG_LIMIT, "the task never finished");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn hundred_thousand_messages_read_as_they_come(backend: Backend) {
    within_limit("100k messages", move || {
        let scratch = Scratch::new("progress-100k");
        let pool = pool(backend, 1);
        let go = scratch.file("go");
        let handle = count_after::dispatch_on(&pool, go.clone(), 100_000);
        let reader = handle.progress();
        touch(&go);
        let mut expected = 0;
        for message in reader {
            assert_eq!(message, expected, "in order, none missing");
            expected += 1;
        }
        assert_eq!(expected, 100_000);
        assert_eq!(handle.join(), Ok(100_000));
    });
}

fn read_after_the_task_ended(backend: Backend) {
    within_limit("read after the end", move || {
        let pool = pool(backend, 1);
        let handle = count::dispatch_on(&pool, 500);
        wait_finished(&handle);
        let reader = handle.progress();
        assert_eq!(reader.dropped(), 0);
        assert_eq!(reader.collect::<Vec<_>>(), (0..500).collect::<Vec<_>>());
        // A second reader finds the messages taken and ends at once.
        assert_eq!(handle.progress().next(), None);
        assert_eq!(handle.join(), Ok(500));
    });
}

/// Found by the comparison bench: a reader taken just after `dispatch` lost the first messages of
/// a fast task, sent before it existed (only 1024 were kept then). Fewer than `KEPT` are all kept.
fn a_reader_taken_after_dispatch_misses_nothing(backend: Backend) {
    within_limit("reader after dispatch", move || {
        let pool = pool(backend, 2);
        for _ in 0..3 {
            let handle = count::dispatch_on(&pool, 60_000);
            let read: Vec<u64> = handle.progress().collect();
            assert_eq!(read.len(), 60_000);
            assert!(read.iter().copied().eq(0..60_000), "in order");
            assert_eq!(handle.join(), Ok(60_000));
        }
    });
}

fn never_read_keeps_the_newest(backend: Backend) {
    within_limit("never read", move || {
        let pool = pool(backend, 1);
        // Nobody ever reads: the join is unaffected.
        assert_eq!(count::dispatch_on(&pool, 200_000).join(), Ok(200_000));
        // Read only after the end: the newest `KEPT` are there, the rest counted as dropped.
        let total = KEPT + 5_000;
        let handle = count::dispatch_on(&pool, total);
        wait_finished(&handle);
        let reader = handle.progress();
        assert_eq!(reader.dropped(), total - KEPT);
        assert_eq!(reader.collect::<Vec<_>>(), (total - KEPT..total).collect::<Vec<_>>());
        assert_eq!(handle.join(), Ok(total));
    });
}

#[task]
fn sends_then_crashes(progress: &Progress<String>, process: bool) {
    for i in 0..100 {
        progress.send(format!("message {i}"));
    }
    if process {
        std::process::abort();
    }
    panic!("the thread backend's crash");
}

fn messages_sent_just_before_a_crash_are_delivered(backend: Backend) {
    within_limit("crash", move || {
        let pool = pool(backend, 1);
        let is_process = crashes_are_isolated(backend);
        let handle = sends_then_crashes::dispatch_on(&pool, is_process);
        let messages: Vec<String> = handle.progress().collect();
        let expected: Vec<String> = (0..100).map(|i| format!("message {i}")).collect();
        assert_eq!(messages, expected);
        match handle.join() {
            Err(TaskError::WorkerDied { .. }) if is_process => {}
            Err(TaskError::Panicked { .. }) if !is_process => {}
            other => panic!("{other:?}"),
        }
        // The pool serves on.
        assert_eq!(count::dispatch_on(&pool, 3).progress().count(), 3);
    });
}

#[task(retries = 2, backoff = "10ms")]
fn fails_first(progress: &Progress<String>, dir: String, process: bool) -> u32 {
    let first = !std::path::Path::new(&format!("{dir}/ran")).exists();
    progress.send("start".to_owned());
    if first {
        touch(format!("{dir}/ran"));
        progress.send("failing".to_owned());
        if process {
            std::process::abort();
        }
        panic!("the first attempt fails");
    }
    progress.send("done".to_owned());
    2
}

fn messages_of_a_failed_attempt_are_delivered(backend: Backend) {
    within_limit("retries", move || {
        let scratch = Scratch::new("progress-retries");
        let pool = pool(backend, 1);
        let handle =
            fails_first::dispatch_on(&pool, scratch.string(), crashes_are_isolated(backend));
        let mut reader = handle.progress();
        let mut seen = Vec::new();
        while let Some(message) = reader.next() {
            seen.push((reader.attempt(), message));
        }
        let expected = [(1, "start"), (1, "failing"), (2, "start"), (2, "done")];
        let expected: Vec<(u32, String)> =
            expected.iter().map(|(attempt, text)| (*attempt, (*text).to_owned())).collect();
        assert_eq!(seen, expected);
        assert_eq!(handle.join(), Ok(2));
    });
}

#[task]
fn from_threads(progress: &Progress<(u8, u32)>, env: &mut Environment, per_thread: u32) -> usize {
    std::thread::scope(|scope| {
        for thread in 0..4u8 {
            scope.spawn(move || (0..per_thread).for_each(|i| progress.send((thread, i))));
        }
    });
    *env.get_or_insert_with("runs", || 0usize) += 1;
    env.len()
}

#[task]
fn env_first(env: &mut Environment, progress: &Progress<usize>, n: usize) -> usize {
    progress.send(env.len() + n);
    n
}

fn senders_on_other_threads_and_either_order(backend: Backend) {
    within_limit("threads", move || {
        let pool = pool(backend, 1);
        let handle = from_threads::dispatch_on(&pool, 2_000);
        let mut next = [0u32; 4];
        let mut total = 0;
        for (thread, i) in handle.progress() {
            assert_eq!(i, next[usize::from(thread)], "each thread's messages in its order");
            next[usize::from(thread)] += 1;
            total += 1;
        }
        assert_eq!(total, 8_000);
        assert_eq!(handle.join(), Ok(1));
        let handle = env_first::dispatch_on(&pool, 7);
        assert_eq!(handle.progress().collect::<Vec<_>>(), [8]);
        assert_eq!(handle.join(), Ok(7));
    });
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Steps(u32);

#[task]
impl Task for Steps {
    type Output = u32;
    type Error = Never;
    type Progress = String;

    fn run(self, _env: &mut Environment) -> Result<u32, Never> {
        let progress = Progress::<Self::Progress>::current();
        (0..self.0).for_each(|step| progress.send(format!("step {step}")));
        Ok(self.0)
    }
}

/// A hand-written task without progress: `#[task]` writes `type Progress = Never`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Quiet;

#[task]
impl Task for Quiet {
    type Output = ();
    type Error = Never;

    fn run(self, _env: &mut Environment) -> Result<(), Never> {
        Ok(())
    }
}

fn hand_written_tasks(backend: Backend) {
    within_limit("hand-written", move || {
        let pool = pool(backend, 1);
        let handle = pool.submit(Steps(3));
        assert_eq!(handle.progress().collect::<Vec<_>>(), ["step 0", "step 1", "step 2"]);
        assert_eq!(handle.join(), Ok(3));
        let handle = pool.submit(Quiet);
        assert_eq!(handle.progress().count(), 0);
        assert_eq!(handle.join(), Ok(()));
    });
}

/// Wakes by unparking the thread that polls.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn the_reader_is_a_stream_woken_without_polling(backend: Backend) {
    within_limit("stream", move || {
        let scratch = Scratch::new("progress-stream");
        let pool = pool(backend, 1);
        let go = scratch.file("go");
        let handle = count_after::dispatch_on(&pool, go.clone(), 1_000);
        let mut reader = handle.progress();
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        assert_eq!(Pin::new(&mut reader).poll_next(&mut cx), Poll::Pending);
        touch(&go);
        let mut seen = Vec::new();
        loop {
            match Pin::new(&mut reader).poll_next(&mut cx) {
                Poll::Ready(Some(message)) => seen.push(message),
                Poll::Ready(None) => break,
                // Only a wake (a message, the end) brings this thread back.
                Poll::Pending => std::thread::park(),
            }
        }
        assert_eq!(seen, (0..1_000).collect::<Vec<_>>());
        assert_eq!(handle.join(), Ok(1_000));
    });
}

crate::backends!(
    read_after_the_task_ended,
    messages_sent_just_before_a_crash_are_delivered,
    messages_of_a_failed_attempt_are_delivered,
    senders_on_other_threads_and_either_order,
    hand_written_tasks,
    the_reader_is_a_stream_woken_without_polling,
    // On the cluster, found here: progress messages went one reply each, so a flood lost
    // some (the caller's subscription fell behind) and held `alive` back past the lease.
    hundred_thousand_messages_read_as_they_come,
    a_reader_taken_after_dispatch_misses_nothing,
    never_read_keeps_the_newest,
);
