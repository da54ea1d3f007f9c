//! What only the thread backend does: tasks nested on one thread by rayon's work stealing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Environment, Pool};

/// Threads inside an `outer` task right now, with that task's environment marker.
static OUTER_ON: Mutex<Option<HashMap<ThreadId, u64>>> = Mutex::new(None);
/// `outer`'s second half runs on another worker: the first one's `join` will wait for it.
static HALF_STOLEN: AtomicBool = AtomicBool::new(false);
/// The `inner` tasks are queued.
static INNERS_QUEUED: AtomicBool = AtomicBool::new(false);
static INNER_RUNS: AtomicUsize = AtomicUsize::new(0);
static NESTED_RUNS: AtomicUsize = AtomicUsize::new(0);
const INNERS: usize = 200;

fn outer_on() -> std::sync::MutexGuard<'static, Option<HashMap<ThreadId, u64>>> {
    OUTER_ON.lock().unwrap()
}

/// Waits until `done` says so, for ten seconds at most (a test that cannot set up what it checks
/// fails on its premise rather than hangs).
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "waited ten seconds for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Marks its environment, then waits inside `rayon::join` whose second half the other worker
/// steals and holds until every `inner` task ran: this thread, waiting in the `join`, is the
/// only one left to run them, nested inside this task.
#[task]
fn outer(env: &mut Environment, marker: u64) -> bool {
    env.set("marker", marker);
    outer_on().get_or_insert_with(HashMap::new).insert(std::thread::current().id(), marker);
    rayon::join(
        || wait_until("the inner tasks to be queued", || INNERS_QUEUED.load(Ordering::SeqCst)),
        || {
            HALF_STOLEN.store(true, Ordering::SeqCst);
            wait_until("the inner tasks to run", || INNER_RUNS.load(Ordering::SeqCst) == INNERS);
        },
    );
    outer_on().as_mut().unwrap().remove(&std::thread::current().id());
    env.get::<u64>("marker") == Some(&marker)
}

/// Reports whether it ran nested inside `outer` on the same thread, and whether it could see
/// `outer`'s environment (it must not).
#[task]
fn inner(env: &mut Environment) -> (bool, bool) {
    let is_nested =
        outer_on().as_ref().is_some_and(|on| on.contains_key(&std::thread::current().id()));
    if is_nested {
        NESTED_RUNS.fetch_add(1, Ordering::SeqCst);
    }
    let sees_outer = env.exists("marker");
    env.set("inner", true);
    INNER_RUNS.fetch_add(1, Ordering::SeqCst);
    (is_nested, sees_outer)
}

#[test]
fn a_task_nested_by_work_stealing_gets_its_own_environment() {
    let pool = Pool::builder().backend(Backend::Thread).workers(2).build().unwrap();
    let outer_handle = outer::dispatch_on(&pool, 42);
    // Queued only once `outer` waits in its `join` with the other worker busy in the stolen
    // half: queued earlier, the other worker could run them all before it steals that half.
    wait_until("outer's second half to be stolen", || HALF_STOLEN.load(Ordering::SeqCst));
    let inners: Vec<_> = (0..INNERS).map(|_| inner::dispatch_on(&pool)).collect();
    INNERS_QUEUED.store(true, Ordering::SeqCst);
    assert_eq!(outer_handle.join(), Ok(true), "outer's environment was left alone");
    let mut nested = 0;
    for handle in inners {
        let (is_nested, sees_outer) = handle.join().unwrap();
        assert!(
            !(is_nested && sees_outer),
            "a nested task saw the environment of the task below it"
        );
        nested += usize::from(is_nested);
    }
    assert_eq!(nested, NESTED_RUNS.load(Ordering::SeqCst));
    assert_eq!(nested, INNERS, "every inner task ran inside outer's `join`, on its thread");
}

#[task]
fn slow_identity(x: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(300));
    x
}

#[test]
fn an_abandoned_task_finishes_in_the_background() {
    let pool = Pool::builder().backend(Backend::Thread).workers(1).build().unwrap();
    let handle = slow_identity::dispatch_on(&pool, 1);
    assert_eq!(handle.join_timeout(Duration::from_millis(10)), Err(parallel::TaskError::TimedOut));
    // The worker is busy with the abandoned task, then serves the next one.
    assert_eq!(slow_identity::dispatch_on(&pool, 2).join(), Ok(2));
}
