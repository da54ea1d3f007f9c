//! Waiting inside a task on a task dispatched to the same thread pool: every way of waiting helps
//! as `join` does, so even a pool of one worker neither deadlocks nor reports a false timeout.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use parallel::{task, Backend, Pool, TaskError};

/// How long the outer task may take: a regression fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(30);

/// A pool of one worker thread for each test, reachable from inside its tasks.
fn one_worker() -> Pool {
    Pool::builder().backend(Backend::Thread).workers(1).build().expect("the pool builds")
}

static FOR_JOIN_TIMEOUT: OnceLock<Pool> = OnceLock::new();
static FOR_BLOCK_ON: OnceLock<Pool> = OnceLock::new();

#[task]
fn leaf(x: u32) -> u32 {
    x + 1
}

/// Dispatches `leaf` to its own pool of one worker and waits for it with a timeout.
#[task]
fn waits_with_timeout(x: u32) -> Result<u32, String> {
    let pool = FOR_JOIN_TIMEOUT.get_or_init(one_worker);
    match leaf::dispatch_on(pool, x).join_timeout(Duration::from_secs(5)) {
        Ok(y) => Ok(y),
        Err(error) => Err(format!("{error:?}")),
    }
}

/// Dispatches `leaf` to its own pool of one worker and awaits the handle with a `block_on`.
#[task]
fn waits_by_block_on(x: u32) -> Result<u32, String> {
    let pool = FOR_BLOCK_ON.get_or_init(one_worker);
    block_on(leaf::dispatch_on(pool, x)).map_err(|error| format!("{error:?}"))
}

/// The smallest executor: polls on this thread, parks until woken.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        thread::park();
    }
}

#[test]
fn join_timeout_inside_a_task_runs_the_queued_task_in_place() {
    let pool = FOR_JOIN_TIMEOUT.get_or_init(one_worker);
    let outcome = waits_with_timeout::dispatch_on(pool, 1).join_timeout(LIMIT);
    // Without help, the inner wait times out: its task queues behind the one waiting for it.
    assert_ne!(outcome, Err(TaskError::Failed(format!("{:?}", TaskError::<String>::TimedOut))));
    assert_eq!(outcome, Ok(2));
}

#[test]
fn block_on_inside_a_task_runs_the_queued_task_in_place() {
    let pool = FOR_BLOCK_ON.get_or_init(one_worker);
    let outcome = waits_by_block_on::dispatch_on(pool, 41).join_timeout(LIMIT);
    assert_ne!(outcome, Err(TaskError::TimedOut), "block_on deadlocked on a pool of one");
    assert_eq!(outcome, Ok(42));
}
