//! `async fn` tasks (feature `tokio`): each worker runs them on a tokio runtime of its own, kept
//! from one task to the next.

use std::time::Duration;

use parallel::{task, Backend, Environment, TaskError};
use tokio::sync::{mpsc, oneshot};

use crate::support::{pool, touch, within_limit, Scratch};

#[task]
async fn nap_then_double(millis: u64, x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(millis)).await;
    x * 2
}

#[task]
async fn checked_half(x: u64) -> Result<u64, String> {
    tokio::task::yield_now().await;
    if x.is_multiple_of(2) {
        Ok(x / 2)
    } else {
        Err(format!("{x} is odd"))
    }
}

#[task]
async fn async_visits(env: &mut Environment, user: String) -> u64 {
    tokio::task::yield_now().await;
    let n = env.get_or_insert_with(&user, || 0u64);
    *n += 1;
    *n
}

type Echo = mpsc::UnboundedSender<(u64, oneshot::Sender<u64>)>;

/// Starts a server on the worker's runtime, reachable through the worker's Environment.
#[task]
async fn start_echo(env: &mut Environment) {
    let (requests, mut inbox) = mpsc::unbounded_channel::<(u64, oneshot::Sender<u64>)>();
    tokio::spawn(async move {
        while let Some((n, reply)) = inbox.recv().await {
            let _ = reply.send(n + 1);
        }
    });
    env.set("echo", requests);
}

/// Asks the server a task before this one started; `None` if it is gone.
#[task]
async fn ask_echo(env: &mut Environment, n: u64) -> Option<u64> {
    let echo = env.get::<Echo>("echo")?.clone();
    let (reply, answer) = oneshot::channel();
    echo.send((n, reply)).ok()?;
    tokio::time::timeout(Duration::from_secs(30), answer).await.ok()?.ok()
}

#[task]
async fn async_boom(message: String) -> u64 {
    tokio::task::yield_now().await;
    panic!("{message}")
}

/// Sleeps on the runtime's timer until `release` exists.
#[task]
async fn hold_until(release: String) -> u64 {
    while !std::path::Path::new(&release).exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    1
}

fn async_tasks_await_tokio_timers_and_return_values(backend: Backend) {
    let pool = pool(backend, 2);
    let handles: Vec<_> =
        (0..6).map(|x| nap_then_double::dispatch_on(&pool, 10 + 5 * x, x)).collect();
    let outputs: Vec<u64> = handles.into_iter().map(|handle| handle.join().unwrap()).collect();
    assert_eq!(outputs, [0, 2, 4, 6, 8, 10]);
    assert_eq!(checked_half::dispatch_on(&pool, 8).join(), Ok(4));
    assert_eq!(
        checked_half::dispatch_on(&pool, 7).join(),
        Err(TaskError::Failed("7 is odd".to_owned()))
    );
}

fn async_tasks_get_the_workers_environment(backend: Backend) {
    let pool = pool(backend, 1);
    let counts: Vec<u64> =
        (0..3).map(|_| async_visits::dispatch_on(&pool, "ann".into()).join().unwrap()).collect();
    assert_eq!(counts, [1, 2, 3]);
}

fn a_spawned_task_keeps_serving_between_async_tasks(backend: Backend) {
    let pool = pool(backend, 1);
    within_limit("echo", move || {
        start_echo::dispatch_on(&pool).join().unwrap();
        for n in 0..5 {
            assert_eq!(ask_echo::dispatch_on(&pool, n).join(), Ok(Some(n + 1)), "request {n}");
        }
    });
}

fn an_async_panic_is_reported_and_the_runtime_serves_the_next_task(backend: Backend) {
    let pool = pool(backend, 1);
    match async_boom::dispatch_on(&pool, "async kaboom".into()).join() {
        Err(TaskError::Panicked { message, .. }) => assert_eq!(message, "async kaboom"),
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_eq!(nap_then_double::dispatch_on(&pool, 1, 21).join(), Ok(42));
}

fn an_async_task_that_times_out_is_stopped_and_the_next_one_runs(backend: Backend) {
    let scratch = Scratch::new("async-timeout");
    let release = scratch.path("release").to_string_lossy().into_owned();
    let pool = pool(backend, 2);
    let held = hold_until::dispatch_on(&pool, release.clone());
    assert_eq!(held.join_timeout(Duration::from_millis(100)), Err(TaskError::TimedOut));
    // On threads the attempt is abandoned, still running: let it end.
    touch(&release);
    let outputs: Vec<u64> = (0..4)
        .map(|x| nap_then_double::dispatch_on(&pool, 1, x))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect();
    assert_eq!(outputs, [0, 2, 4, 6]);
}

crate::backends!(
    async_tasks_await_tokio_timers_and_return_values,
    async_tasks_get_the_workers_environment,
    a_spawned_task_keeps_serving_between_async_tasks,
    an_async_task_that_times_out_is_stopped_and_the_next_one_runs,
    ;
    quietly:
    an_async_panic_is_reported_and_the_runtime_serves_the_next_task,
);

/// The pool of the nested test, reachable from inside its tasks.
static NESTED: std::sync::OnceLock<parallel::Pool> = std::sync::OnceLock::new();

#[task]
async fn await_nested(x: u64) -> u64 {
    let pool = NESTED.get().expect("the test set the pool");
    nap_then_double::dispatch_on(pool, 1, x).await.unwrap() + 1
}

/// On a thread pool, an async task awaiting another async task of the same pool leaves it to
/// another worker: its own thread drives its runtime, which cannot run a second task in place.
#[test]
fn an_async_task_awaiting_another_on_its_thread_pool_gets_its_result() {
    let pool = NESTED.get_or_init(|| pool(Backend::Thread, 2));
    let outer = await_nested::dispatch_on(pool, 20);
    assert_eq!(within_limit("nested", move || outer.join()), Ok(41));
}
