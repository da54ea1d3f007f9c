//! The 20-line tour of `parallel`: plain functions become tasks, each worker keeps an
//! Environment, errors come back typed.
//!
//! Run it with `cargo run -p quickstart` (the default pool: worker processes, or threads with
//! `PARALLEL_BACKEND=thread`).

use parallel::{task, Environment, Pool, TaskError};

/// An infallible task: a plain function, still callable as one.
#[task]
fn word_count(text: String) -> usize {
    text.split_whitespace().count()
}

/// A task that keeps a counter in its worker's Environment between tasks.
#[task]
fn tally(env: &mut Environment, word: String) -> (u64, usize) {
    let seen = env.get_or_insert_with(&word, || 0u64);
    *seen += 1;
    (*seen, env.worker_id())
}

/// A fallible task: its error type crosses back to the caller as it is.
#[task]
fn parse_port(text: String) -> Result<u16, String> {
    text.trim().parse().map_err(|error| format!("{text:?} is not a port: {error}"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lines = ["the quick brown fox", "jumps over", "the lazy dog"];

    // On the default pool: one worker per core, on worker processes (this package turns on the
    // `process` feature) unless `PARALLEL_BACKEND=thread`.
    let handles: Vec<_> = lines.iter().map(|line| word_count::dispatch(line.to_string())).collect();
    let words: usize = handles.into_iter().map(|h| h.join()).sum::<Result<usize, _>>()?;
    println!("{words} words in {} lines", lines.len());

    // A pool of one worker: every `tally` sees the same Environment.
    let pool = Pool::builder().workers(1).build()?;
    for word in ["fox", "dog", "fox"] {
        let (seen, worker) = tally::dispatch_on(&pool, word.to_owned()).join()?;
        println!("{word:>4} seen {seen} time(s) by worker {worker}");
    }

    // `map` streams results in input order; the task's own error comes back typed.
    for result in pool.map(["8080", "http"].map(|text| parse_port::new(text.to_owned()))) {
        match result {
            Ok(port) => println!("port {port}"),
            Err(TaskError::Failed(reason)) => println!("refused: {reason}"),
            Err(other) => return Err(other.into()),
        }
    }
    Ok(())
}
