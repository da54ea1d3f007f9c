//! The tokio runtime that `async fn` tasks run on: one current-thread runtime per worker thread,
//! created by the first async task the thread runs and kept for the thread's whole life, so that
//! clients, pools and background tasks an async task keeps in its `Environment` (or starts with
//! `tokio::spawn`) are still served by the same runtime when the worker's next async task runs.
//!
//! A worker is a thread of the pool's rayon pool on the thread backend and the main thread of a
//! worker process on the process backend: both run tasks one at a time, so a runtime per thread is
//! a runtime per worker. Between two async tasks the runtime is not driven: what was spawned on it
//! waits, and goes on during the next one.

use std::cell::OnceCell;
use std::future::Future;

thread_local! {
    static RUNTIME: OnceCell<tokio::runtime::Runtime> = const { OnceCell::new() };
}

/// Runs `future` to completion on this worker's runtime.
///
/// # Panics
///
/// If this thread is already driving a runtime (an async task cannot run nested inside another
/// one on the same thread: `.await` the inner task's handle, which the pool then runs on another
/// worker), or if the runtime cannot be built (the system refused its I/O driver). Either panic is
/// the task's, reported as `Panicked`.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    assert!(
        !is_entered(),
        "an async task cannot run inside another async task on the same worker thread"
    );
    RUNTIME.with(|runtime| {
        let runtime = runtime.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("parallel-async")
                .build()
                .unwrap_or_else(|error| panic!("cannot build the worker's tokio runtime: {error}"))
        });
        runtime.block_on(future)
    })
}

/// Whether this thread is inside a tokio runtime now (running an async task, say), where another
/// async task cannot be run in place.
pub(crate) fn is_entered() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_runtime_outlives_a_task_and_serves_what_it_spawned() {
        let (requests, mut inbox) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let (answers, mut replies) = tokio::sync::mpsc::unbounded_channel::<u32>();
        // The first "task" leaves a server behind.
        block_on(async move {
            tokio::spawn(async move {
                while let Some(n) = inbox.recv().await {
                    let _ = answers.send(n * 2);
                }
            });
        });
        // The second finds it still there.
        let answer = block_on(async move {
            requests.send(21).unwrap();
            tokio::time::timeout(Duration::from_secs(5), replies.recv()).await
        });
        assert_eq!(answer, Ok(Some(42)));
    }

    #[test]
    fn a_panic_in_a_task_leaves_the_runtime_usable() {
        let panicked = std::panic::catch_unwind(|| block_on(async { panic!("boom") }));
        assert!(panicked.is_err());
        let slept = block_on(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            7
        });
        assert_eq!(slept, 7);
    }

    #[test]
    fn a_nested_run_is_refused_with_a_reason() {
        let nested = std::panic::catch_unwind(|| block_on(async { block_on(async { 1 }) }));
        let message = nested.unwrap_err();
        let message = message.downcast_ref::<&str>().copied().unwrap_or_default();
        assert!(message.contains("inside another async task"), "{message}");
        assert!(!is_entered(), "the runtime is left after the refusal");
    }
}
