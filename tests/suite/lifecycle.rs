//! Shutdown, kill and drop: nothing hangs, every handle resolves once.

use std::time::Duration;

use parallel::{task, Backend, Pool, TaskError};

use crate::support::{pool, touch, volume, wait_for_file, within_limit, Scratch};

#[task]
fn nap(millis: u64, mark: String) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    touch(&mark);
    millis
}

#[task]
fn blocked(gate: String, started: String) {
    touch(&started);
    wait_for_file(&gate);
}

fn shutdown_finishes_queued_and_running_work(backend: Backend) {
    let scratch = Scratch::new("shutdown");
    let pool = pool(backend, 2);
    let handles: Vec<_> =
        (0..40).map(|i| nap::dispatch_on(&pool, 5, scratch.file(&format!("done-{i}")))).collect();
    let pool = within_limit("shutdown", move || {
        pool.shutdown();
        pool
    });
    assert_eq!(scratch.count("done-"), 40, "shutdown returned before the work was done");
    for handle in handles {
        assert!(handle.is_finished());
        assert_eq!(handle.join(), Ok(5));
    }
    match nap::dispatch_on(&pool, 1, scratch.file("late")).join() {
        Err(error @ TaskError::PoolClosed { .. }) => {
            assert!(error.to_string().contains("nap"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    pool.shutdown(); // a second shutdown is harmless
}

fn kill_resolves_every_handle_now(backend: Backend) {
    let scratch = Scratch::new("kill");
    let pool = pool(backend, 2);
    let gate = scratch.file("gate");
    let running: Vec<_> = (0..2)
        .map(|i| blocked::dispatch_on(&pool, gate.clone(), scratch.file(&format!("started-{i}"))))
        .collect();
    wait_for_file(&scratch.file("started-0"));
    wait_for_file(&scratch.file("started-1"));
    let queued: Vec<_> = (0..10_000)
        .map(|i| nap::dispatch_on(&pool, 0, scratch.file(&format!("done-{i}"))))
        .collect();
    let (running, queued) = within_limit("kill", move || {
        pool.kill();
        (running, queued)
    });
    for handle in running {
        assert!(matches!(handle.join(), Err(TaskError::Cancelled | TaskError::WorkerDied { .. })));
    }
    for handle in queued {
        assert_eq!(handle.join(), Err(TaskError::Cancelled));
    }
    touch(&gate);
    assert_eq!(scratch.count("done-"), 0, "no queued task ran after kill");
}

#[task]
fn square(x: u64) -> u64 {
    x * x
}

fn shutdown_under_load_loses_nothing(backend: Backend) {
    let pool = pool(backend, 2);
    let count = volume(backend, 10_000, 2_000) as u64;
    let handles: Vec<_> = (0..count).map(|i| square::dispatch_on(&pool, i)).collect();
    let pool = within_limit("shutdown with 10k queued", move || {
        pool.shutdown();
        pool
    });
    for (i, handle) in handles.into_iter().enumerate() {
        let i = i as u64;
        assert_eq!(handle.join(), Ok(i * i));
    }
    assert!(matches!(square::dispatch_on(&pool, 1).join(), Err(TaskError::PoolClosed { .. })));
}

fn dropping_a_busy_pool_does_not_block_and_work_completes(backend: Backend) {
    let scratch = Scratch::new("drop");
    let gate = scratch.file("gate");
    let pool = pool(backend, 2);
    let handles: Vec<_> =
        (0..20).map(|i| nap::dispatch_on(&pool, 1, scratch.file(&format!("done-{i}")))).collect();
    let blocker = blocked::dispatch_on(&pool, gate.clone(), scratch.file("started"));
    // The blocker cannot finish until the gate opens after the drop: a blocking drop would hang.
    within_limit("drop", move || drop(pool));
    touch(&gate);
    within_limit("handles after drop", move || {
        assert_eq!(blocker.join(), Ok(()));
        for handle in handles {
            assert_eq!(handle.join(), Ok(1));
        }
    });
}

fn a_pool_can_be_shared_between_threads(backend: Backend) {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let pool = pool(backend, 2);
    assert_send_sync(&pool);
    assert_eq!(pool.backend(), backend);
    assert_eq!(pool.workers(), 2);
    let scratch = Scratch::new("share");
    std::thread::scope(|scope| {
        for t in 0..3 {
            let pool = &pool;
            let scratch = &scratch;
            scope.spawn(move || {
                nap::dispatch_on(pool, 0, scratch.file(&format!("done-{t}"))).join().unwrap()
            });
        }
    });
    assert_eq!(scratch.count("done-"), 3);
}

fn builder_errors_are_clear(backend: Backend) {
    let error = Pool::builder().backend(backend).workers(0).build().unwrap_err();
    assert!(error.is_invalid_config());
    assert!(error.to_string().contains("at least one worker"), "{error}");
}

crate::backends!(
    shutdown_finishes_queued_and_running_work,
    dropping_a_busy_pool_does_not_block_and_work_completes,
    shutdown_under_load_loses_nothing,
    a_pool_can_be_shared_between_threads,
    builder_errors_are_clear,
    // On the cluster, found here: the cancels of a slot's running task came before those of
    // the queued ones, and the freed slot started some of them; a kill now goes first, to every
    // serving process at once.
    kill_resolves_every_handle_now,
);
