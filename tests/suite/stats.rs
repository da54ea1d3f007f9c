//! `Pool::stats`: what the pool is doing and has done.

use parallel::{task, Backend, Pool};

use crate::support::{pool, touch, wait_for_file, Scratch};

#[task]
fn half(x: u64) -> Result<u64, String> {
    if x % 20 == 0 {
        Err(format!("{x} is refused"))
    } else {
        Ok(x / 2)
    }
}

#[task]
fn hold(gate: String, started: String) {
    touch(&started);
    wait_for_file(&gate);
}

fn counts_follow_the_work(backend: Backend) {
    let pool = pool(backend, 1);
    let fresh = pool.stats();
    assert_eq!((fresh.backend, fresh.workers, fresh.idle), (backend, 1, 1));
    assert_eq!((fresh.queued, fresh.running, fresh.completed, fresh.failed), (0, 0, 0, 0));

    let scratch = Scratch::new("stats");
    let gate = scratch.file("gate");
    let holder = hold::dispatch_on(&pool, gate.clone(), scratch.file("started"));
    wait_for_file(&scratch.file("started"));
    let queued: Vec<_> = (0..100).map(|i| half::dispatch_on(&pool, i)).collect();
    let busy = pool.stats();
    assert_eq!((busy.running, busy.idle), (1, 0), "{busy:?}");
    assert_eq!(busy.queued, 100, "{busy:?}");

    touch(&gate);
    holder.join().unwrap();
    let failures = queued.into_iter().map(|handle| handle.join()).filter(Result::is_err).count();
    assert_eq!(failures, 5);
    let done = pool.stats();
    assert_eq!((done.completed, done.failed, done.queued, done.running), (96, 5, 0, 0), "{done:?}");
}

fn restarts_count_renewed_workers(backend: Backend) {
    let pool =
        Pool::builder().backend(backend).workers(1).max_tasks_per_worker(10).build().unwrap();
    for i in 1..=35 {
        half::dispatch_on(&pool, i).join().ok();
    }
    assert_eq!(pool.stats().restarts, 3);
}

crate::backends!(counts_follow_the_work, restarts_count_renewed_workers);
