//! `Pool::map`: ordered, streaming, bounded.

use std::cell::Cell;

use parallel::{task, Backend, TaskError};

use crate::support::{pool, volume};

#[task]
fn square(x: u64) -> u64 {
    x * x
}

#[task]
fn checked_half(x: u64) -> Result<u64, String> {
    if x.is_multiple_of(2) {
        Ok(x / 2)
    } else {
        Err(format!("{x} is odd"))
    }
}

fn results_come_in_input_order(backend: Backend) {
    let pool = pool(backend, 2);
    let count = volume(backend, 10_000, 2_000) as u64;
    let squares: Vec<u64> = pool.map((0..count).map(square::new)).map(Result::unwrap).collect();
    assert_eq!(squares, (0..count).map(|x| x * x).collect::<Vec<_>>());
}

fn errors_stay_in_their_place(backend: Backend) {
    let pool = pool(backend, 2);
    let results: Vec<_> = pool.map((0..6).map(checked_half::new)).collect();
    assert_eq!(results[0], Ok(0));
    assert_eq!(results[1], Err(TaskError::Failed("1 is odd".to_owned())));
    assert_eq!(results[4], Ok(2));
    assert_eq!(results.len(), 6);
}

fn input_is_pulled_lazily_with_a_bounded_window(backend: Backend) {
    let pool = pool(backend, 2);
    // A `Cell` is neither `Send` nor `Sync`: the input is pulled on this thread only.
    let pulled = Cell::new(0u64);
    let input = (0..1_000_000u64).inspect(|_| pulled.set(pulled.get() + 1)).map(square::new);
    let mut results = pool.map(input);
    assert_eq!(pulled.get(), 0, "nothing is pulled before the first result is asked for");
    for consumed in 1..=2_000u64 {
        let x = consumed - 1;
        assert_eq!(results.next(), Some(Ok(x * x)));
        let ahead = pulled.get() - consumed;
        assert!(ahead <= 1_024, "{ahead} inputs pulled ahead of the consumer");
    }
    drop(results);
    assert!(pulled.get() < 4_000, "dropping the iterator stops pulling");
}

fn an_empty_input_yields_nothing(backend: Backend) {
    let pool = pool(backend, 1);
    assert_eq!(pool.map(std::iter::empty::<square::Task>()).count(), 0);
}

crate::backends!(
    results_come_in_input_order,
    errors_stay_in_their_place,
    input_is_pulled_lazily_with_a_bounded_window,
    an_empty_input_yields_nothing,
);
