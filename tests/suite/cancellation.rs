//! Cancellation and timeouts: the handle resolves at once, a queued task never runs.

use std::time::Duration;

use parallel::{task, Backend, TaskError};

use crate::support::{pool, touch, wait_for_file, within_limit, Scratch};

/// Leaves `started` behind, waits until `gate` exists, then leaves `mark` as proof that it ran.
#[task]
fn gated(gate: String, started: String, mark: String) -> u32 {
    touch(&started);
    wait_for_file(&gate);
    touch(&mark);
    7
}

#[task]
fn mark(path: String) {
    touch(&path);
}

fn cancel_of_a_queued_task_means_it_never_runs(backend: Backend) {
    let scratch = Scratch::new("cancel-queued");
    let pool = pool(backend, 1);
    let gate = scratch.file("gate");
    let blocker = gated::dispatch_on(
        &pool,
        gate.clone(),
        scratch.file("started"),
        scratch.file("ran-blocker"),
    );
    let victims: Vec<_> =
        (0..5).map(|i| mark::dispatch_on(&pool, scratch.file(&format!("ran-{i}")))).collect();
    for victim in &victims {
        victim.cancel();
        assert!(victim.is_finished(), "a cancelled handle resolves at once");
    }
    touch(&gate);
    within_limit("the blocker", move || assert_eq!(blocker.join(), Ok(7)));
    // Something queued after the cancelled tasks runs, so they had their chance to run wrongly.
    mark::dispatch_on(&pool, scratch.file("after")).join().unwrap();
    for victim in victims {
        assert_eq!(victim.join(), Err(TaskError::Cancelled));
    }
    assert_eq!(scratch.count("ran-"), 1, "only the blocker ran");
}

fn join_timeout_returns_while_the_task_still_runs(backend: Backend) {
    let scratch = Scratch::new("timeout");
    let pool = pool(backend, 1);
    let gate = scratch.file("gate");
    let handle =
        gated::dispatch_on(&pool, gate.clone(), scratch.file("started"), scratch.file("ran"));
    // The task cannot finish before the gate opens, and the gate opens only after the timeout:
    // a join_timeout that waited for the task would hang here.
    let outcome =
        within_limit("join_timeout", move || handle.join_timeout(Duration::from_millis(50)));
    assert_eq!(outcome, Err(TaskError::TimedOut));
    touch(&gate);
    assert_eq!(
        gated::dispatch_on(&pool, gate, scratch.file("started-2"), scratch.file("ran-2")).join(),
        Ok(7),
        "the pool keeps serving"
    );
}

fn join_timeout_of_a_quick_task_gets_its_result(backend: Backend) {
    let pool = pool(backend, 1);
    let scratch = Scratch::new("timeout-quick");
    touch(scratch.file("gate"));
    let handle = gated::dispatch_on(
        &pool,
        scratch.file("gate"),
        scratch.file("started"),
        scratch.file("ran"),
    );
    assert_eq!(handle.join_timeout(Duration::from_secs(60)), Ok(7));
}

fn cancel_of_a_running_task_resolves_at_once(backend: Backend) {
    let scratch = Scratch::new("cancel-running");
    let pool = pool(backend, 1);
    let gate = scratch.file("gate");
    let handle =
        gated::dispatch_on(&pool, gate.clone(), scratch.file("started"), scratch.file("ran"));
    wait_for_file(&scratch.file("started"));
    handle.cancel();
    let outcome = within_limit("join after cancel", move || handle.join());
    assert_eq!(outcome, Err(TaskError::Cancelled));
    touch(&gate);
    mark::dispatch_on(&pool, scratch.file("after")).join().unwrap();
}

fn handles_are_futures_woken_by_the_worker(backend: Backend) {
    let scratch = Scratch::new("future");
    let pool = pool(backend, 1);
    let gate = scratch.file("gate");
    let handle =
        gated::dispatch_on(&pool, gate.clone(), scratch.file("started"), scratch.file("ran"));
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        touch(&gate);
    });
    let (outcome, polls) = within_limit("awaiting a handle", move || block_on(handle));
    opener.join().unwrap();
    assert_eq!(outcome, Ok(7));
    assert!(polls <= 3, "the future was polled {polls} times: it must be woken, not spun");
}

/// A minimal executor: parks the thread until the waker is called, counting polls.
fn block_on<F: std::future::Future>(future: F) -> (F::Output, usize) {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake};

    struct Unparker(std::thread::Thread);
    impl Wake for Unparker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    let waker = Arc::new(Unparker(std::thread::current())).into();
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    let mut polls = 0;
    loop {
        polls += 1;
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return (output, polls);
        }
        std::thread::park();
    }
}

crate::backends!(
    cancel_of_a_queued_task_means_it_never_runs,
    join_timeout_returns_while_the_task_still_runs,
    join_timeout_of_a_quick_task_gets_its_result,
    cancel_of_a_running_task_resolves_at_once,
    handles_are_futures_woken_by_the_worker,
);
