//! The worker's Environment: injected, persistent across tasks, expiring on time.

use std::collections::BTreeSet;
use std::time::Duration;

use parallel::{task, Backend, Environment, Pool};

use crate::support::{pool, touch, wait_for_file, within_limit, Scratch};

#[task]
fn visits(env: &mut Environment, user: String) -> u64 {
    let n = env.get_or_insert_with(&user, || 0u64);
    *n += 1;
    *n
}

#[task]
fn whoami(env: &Environment) -> usize {
    env.worker_id()
}

/// Writes a file when dropped, so a test on any backend can see the drop happen.
struct DropMarker(String);

impl Drop for DropMarker {
    fn drop(&mut self) {
        // A value kept to the end is dropped when its worker exits, maybe after the test removed
        // its scratch directory: then there is nobody left to tell.
        let _ = std::fs::write(&self.0, b"");
    }
}

#[task]
fn keep_for(env: &mut Environment, key: String, marker: String, ttl_millis: u64) {
    env.set_with_ttl(key, DropMarker(marker), Duration::from_millis(ttl_millis));
}

#[task]
fn holds(env: &Environment, key: String) -> bool {
    env.exists(&key)
}

fn environment_persists_between_tasks_of_a_worker(backend: Backend) {
    let pool = pool(backend, 1);
    let counts: Vec<u64> =
        (0..3).map(|_| visits::dispatch_on(&pool, "ann".into()).join().unwrap()).collect();
    assert_eq!(counts, [1, 2, 3]);
    assert_eq!(visits::dispatch_on(&pool, "bob".into()).join(), Ok(1));
    assert_eq!(
        visits(&mut Environment::new(), "ann".into()),
        1,
        "the plain fn takes any Environment"
    );
}

fn each_worker_has_its_own_environment(backend: Backend) {
    let pool = pool(backend, 2);
    let scratch = Scratch::new("worker-ids");
    // Hold both workers at once so that both must answer.
    let gate = scratch.file("gate");
    let ids: Vec<_> = (0..2)
        .map(|i| blocked_whoami::dispatch_on(&pool, gate.clone(), scratch.file(&format!("in-{i}"))))
        .collect();
    wait_for_file(&scratch.file("in-0"));
    wait_for_file(&scratch.file("in-1"));
    touch(&gate);
    let ids: BTreeSet<usize> = ids.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from([0, 1]));
    assert!(whoami::dispatch_on(&pool).join().unwrap() < 2);
}

#[task]
fn blocked_whoami(env: &Environment, gate: String, arrived: String) -> usize {
    touch(&arrived);
    wait_for_file(&gate);
    env.worker_id()
}

fn expired_values_are_dropped_while_the_worker_idles(backend: Backend) {
    let pool = pool(backend, 1);
    let scratch = Scratch::new("ttl-idle");
    let marker = scratch.file("dropped");
    keep_for::dispatch_on(&pool, "conn".into(), marker.clone(), 100).join().unwrap();
    // No further task runs: only the idle sweep can drop the value. "About a second" after expiry.
    within_limit("the idle purge", move || wait_for_file(&marker));
    assert_eq!(holds::dispatch_on(&pool, "conn".into()).join(), Ok(false));
}

fn a_live_value_is_kept(backend: Backend) {
    let pool = pool(backend, 1);
    let scratch = Scratch::new("ttl-live");
    keep_for::dispatch_on(&pool, "conn".into(), scratch.file("dropped"), 600_000).join().unwrap();
    assert_eq!(holds::dispatch_on(&pool, "conn".into()).join(), Ok(true));
    assert_eq!(scratch.count("dropped"), 0);
}

/// Panics when dropped.
struct Grenade;

impl Drop for Grenade {
    fn drop(&mut self) {
        panic!("a value's Drop panicked");
    }
}

#[task]
fn keep_grenade(env: &mut Environment) {
    env.set_with_ttl("grenade", Grenade, Duration::from_millis(1));
}

fn a_panicking_drop_of_a_value_spares_the_worker(backend: Backend) {
    let pool = pool(backend, 1);
    keep_grenade::dispatch_on(&pool).join().unwrap();
    std::thread::sleep(Duration::from_millis(5));
    // The next task purges the expired grenade first; the task and the worker are unharmed.
    assert_eq!(visits::dispatch_on(&pool, "ann".into()).join(), Ok(1));
    keep_grenade::dispatch_on(&pool).join().unwrap();
    // Now the idle sweep drops it; then the worker still serves.
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(visits::dispatch_on(&pool, "ann".into()).join(), Ok(2));
}

fn recycled_workers_start_with_a_fresh_environment(backend: Backend) {
    let pool = Pool::builder().backend(backend).workers(1).max_tasks_per_worker(3).build().unwrap();
    let counts: Vec<u64> =
        (0..7).map(|_| visits::dispatch_on(&pool, "ann".into()).join().unwrap()).collect();
    assert_eq!(counts, [1, 2, 3, 1, 2, 3, 1]);
}

crate::backends!(
    environment_persists_between_tasks_of_a_worker,
    each_worker_has_its_own_environment,
    expired_values_are_dropped_while_the_worker_idles,
    a_live_value_is_kept;
    quietly: a_panicking_drop_of_a_value_spares_the_worker;
    not_on_cluster:
    recycled_workers_start_with_a_fresh_environment: "max_tasks_per_worker is a setting of the \
        pool's own workers; a cluster's slots belong to its serving processes, which have no \
        such setting (DESIGN §9: PARALLEL_WORKERS and PARALLEL_LEASE)",
);
