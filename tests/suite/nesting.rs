//! Tasks that use rayon or dispatch tasks themselves.

use parallel::{task, Backend, Environment};
use rayon::prelude::*;

use crate::support::{pool, within_limit};

/// Uses rayon inside the task, and the environment on both sides of the parallel section.
#[task]
fn parallel_sum(env: &mut Environment, n: u64) -> (u64, u64) {
    let runs = {
        let runs = env.get_or_insert_with("runs", || 0u64);
        *runs += 1;
        *runs
    };
    let sum = (0..n).into_par_iter().map(|x| x % 7).sum::<u64>();
    let (left, right) = rayon::join(|| (0..n / 2).sum::<u64>(), || (n / 2..n).sum::<u64>());
    assert_eq!(left + right, n * (n - 1) / 2);
    env.set("last", sum);
    (sum, runs)
}

#[task]
fn fib(n: u32) -> u64 {
    if n < 2 {
        return u64::from(n);
    }
    // Dispatch to the same default pool and join: must not deadlock even with one worker busy.
    let a = fib::dispatch(n - 1);
    let b = fib::dispatch(n - 2);
    a.join().unwrap() + b.join().unwrap()
}

#[task]
fn fib_sum(depth: u32) -> u64 {
    let handles: Vec<_> = (0..depth).map(fib::dispatch).collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

fn rayon_inside_tasks_with_tasks_queued(backend: Backend) {
    let pool = pool(backend, 2);
    let expected: u64 = (0..10_000u64).map(|x| x % 7).sum();
    let results = within_limit("rayon inside 64 queued tasks", move || {
        let handles: Vec<_> = (0..64).map(|_| parallel_sum::dispatch_on(&pool, 10_000)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    assert!(results.iter().all(|&(sum, _)| sum == expected));
    // Every run counted once in some environment: no environment saw two runs at once.
    let runs: u64 = results.iter().map(|&(_, runs)| runs).max().unwrap();
    assert!(runs >= 1);
}

fn a_task_that_dispatches_to_the_default_pool_and_joins(backend: Backend) {
    let pool = pool(backend, 1);
    let outcome = within_limit("nested dispatch", move || {
        let handles: Vec<_> = (0..3).map(|_| fib_sum::dispatch_on(&pool, 12)).collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    let expected: u64 = (0..12).map(fib_plain).sum();
    for result in outcome {
        assert_eq!(result, Ok(expected));
    }
}

fn fib_plain(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fib_plain(n - 1) + fib_plain(n - 2)
    }
}

crate::backends!(
    rayon_inside_tasks_with_tasks_queued,
    a_task_that_dispatches_to_the_default_pool_and_joins
);
