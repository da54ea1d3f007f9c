//! Awaiting task handles inside a tokio program without blocking its runtime.
//!
//! A tiny "service" handles 200 simulated requests at once, each in its own `tokio::spawn`ed
//! task on a runtime of only two threads. A request is validated and then answered by CPU-bound
//! work that runs on the `parallel` pool; the handler `.await`s the task handles
//! ([`TaskHandle`](parallel::TaskHandle) is a future, woken by the pool), so the runtime's two
//! threads stay free. A ticker on the same runtime proves it: it counts its ticks while the
//! requests are served, and the example fails when the runtime stopped ticking, as it would if a
//! handler called the blocking `join`.
//!
//! ```text
//! cargo run -p async_service                                   # the process backend
//! cargo run -p async_service -- --backend thread --workers 2
//! ```
//!
//! Every 25th request is malformed: its typed validation error comes back through `.await` as
//! [`TaskError::Failed`]. Every answer is checked, and the example exits with status 1 when one
//! is wrong.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Pool, TaskError};
use tokio::time::MissedTickBehavior;

/// How many requests the service handles.
const REQUESTS: u32 = 200;
/// The ticker's period.
const TICK: Duration = Duration::from_millis(5);

/// Validates a request line, `GET /primes?below=N`, and returns `N`.
#[task]
fn parse_request(line: String) -> Result<u64, String> {
    let query = line
        .strip_prefix("GET /primes?below=")
        .ok_or_else(|| format!("unknown route in {line:?}"))?;
    let below: u64 = query.parse().map_err(|_| format!("`below` is not a number in {line:?}"))?;
    if below > 10_000_000 {
        return Err(format!("`below` is too large in {line:?}"));
    }
    Ok(below)
}

/// Counts the primes in `from..to` by trial division: honest CPU work for a worker.
#[task]
fn count_primes(from: u64, to: u64) -> u64 {
    (from..to).filter(|&n| is_prime(n)).count() as u64
}

/// Whether `n` is prime.
fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// What the service answered to one request.
#[derive(Debug)]
enum Response {
    /// `200 OK`: the number of primes below the asked bound.
    Primes {
        /// The bound that was asked for.
        below: u64,
        /// The number of primes below it.
        count: u64,
    },
    /// `400 Bad Request`, with the validation error.
    BadRequest(String),
    /// `500 Internal Server Error`: the pool failed to run a task.
    Internal(String),
}

/// The request line of request `id`: every 25th one is malformed.
fn request_line(id: u32) -> String {
    if id.is_multiple_of(25) {
        format!("GET /primes?below=lots-{id}")
    } else {
        format!("GET /primes?below={}", 2_000 + u64::from(id) * 50)
    }
}

/// Handles one request: validates it in a worker, then counts primes in two halves at once.
async fn handle(pool: Arc<Pool>, line: String) -> Response {
    let below = match parse_request::dispatch_on(&pool, line).await {
        Ok(below) => below,
        Err(TaskError::Failed(reason)) => return Response::BadRequest(reason),
        Err(other) => return Response::Internal(other.to_string()),
    };
    let middle = below / 2;
    let low = count_primes::dispatch_on(&pool, 0, middle);
    let high = count_primes::dispatch_on(&pool, middle, below);
    match tokio::join!(low, high) {
        (Ok(low), Ok(high)) => Response::Primes { below, count: low + high },
        (Err(error), _) | (_, Err(error)) => Response::Internal(error.to_string()),
    }
}

/// The number of primes below each bound up to `limit`, by a sieve: the reference answers.
fn prime_counts(limit: usize) -> Vec<u64> {
    let mut is_composite = vec![false; limit + 1];
    let mut counts = vec![0u64; limit + 1];
    let mut count = 0;
    for n in 2..=limit {
        // counts[n] is the number of primes strictly below n.
        counts[n] = count;
        if !is_composite[n] {
            count += 1;
            for multiple in (n * n..=limit).step_by(n) {
                is_composite[multiple] = true;
            }
        }
    }
    counts
}

/// Parses `[--backend thread|process] [--workers N]` into a pool.
fn pool_from_args(mut args: impl Iterator<Item = String>) -> Result<Pool, String> {
    let mut builder = Pool::builder();
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        builder = match (arg.as_str(), value.as_str()) {
            ("--backend", "thread") => builder.backend(Backend::Thread),
            ("--backend", "process") => builder.backend(Backend::Process),
            ("--workers", count) => builder.workers(
                count.parse().map_err(|_| format!("--workers takes a number, not {count:?}"))?,
            ),
            _ => {
                return Err(format!(
                "usage: async_service [--backend thread|process] [--workers N]; not {arg} {value}"
            ))
            }
        };
    }
    builder.build().map_err(|error| format!("cannot build the pool: {error}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let pool = match pool_from_args(std::env::args().skip(1)) {
        Ok(pool) => Arc::new(pool),
        Err(message) => {
            eprintln!("async_service: {message}");
            return ExitCode::FAILURE;
        }
    };

    // The ticker: counts the ticks it gets while the service runs, and the longest gap.
    let is_done = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let is_done = Arc::clone(&is_done);
        async move {
            let mut interval = tokio::time::interval(TICK);
            // Missed ticks are skipped, not fired in a burst: a blocked runtime would show.
            interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let (mut ticks, mut longest_gap, mut last) = (0u64, Duration::ZERO, Instant::now());
            while !is_done.load(Ordering::Acquire) {
                interval.tick().await;
                ticks += 1;
                longest_gap = longest_gap.max(last.elapsed());
                last = Instant::now();
            }
            (ticks, longest_gap)
        }
    });

    let started = Instant::now();
    let requests: Vec<_> = (1..=REQUESTS)
        .map(|id| (id, tokio::spawn(handle(Arc::clone(&pool), request_line(id)))))
        .collect();
    let mut responses = Vec::new();
    for (id, request) in requests {
        match request.await {
            Ok(response) => responses.push((id, response)),
            Err(error) => {
                eprintln!("async_service: request {id} did not complete: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let elapsed = started.elapsed();
    is_done.store(true, Ordering::Release);
    let (ticks, longest_gap) = ticker.await.expect("the ticker does not panic");

    let reference = prime_counts(2_000 + REQUESTS as usize * 50);
    let mut wrong = Vec::new();
    let (mut served, mut rejected) = (0, 0);
    for (id, response) in &responses {
        match response {
            Response::Primes { below, count }
                if id % 25 != 0 && *count == reference[*below as usize] =>
            {
                served += 1
            }
            Response::BadRequest(_) if id % 25 == 0 => rejected += 1,
            Response::Internal(error) => {
                wrong.push(format!("request {id}: internal error: {error}"))
            }
            other => wrong.push(format!("request {id}: {other:?}")),
        }
    }
    if let Some((_, Response::BadRequest(reason))) = responses.iter().find(|(id, _)| id % 25 == 0) {
        println!("a malformed request was refused: {reason}");
    }

    // A runtime kept free ticks about elapsed / TICK times; one blocked by `join` in handlers
    // would tick a handful of times at most. A quarter leaves room for a busy machine.
    let expected_ticks = (elapsed.as_secs_f64() / TICK.as_secs_f64()) as u64;
    println!(
        "{} requests in {:.2} s on {} {} workers: {served} answered, {rejected} refused, {} wrong",
        responses.len(),
        elapsed.as_secs_f64(),
        pool.workers(),
        if pool.backend() == Backend::Process { "process" } else { "thread" },
        wrong.len(),
    );
    println!(
        "the 2-thread runtime ticked {ticks} times (about {expected_ticks} expected at {TICK:?}), \
         longest gap {longest_gap:.1?}"
    );

    if let Some(first) = wrong.first() {
        eprintln!("async_service: {} wrong response(s), first: {first}", wrong.len());
        return ExitCode::FAILURE;
    }
    if ticks < (expected_ticks / 4).max(2) {
        eprintln!("async_service: the runtime was blocked: {ticks} ticks in {elapsed:.2?}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
