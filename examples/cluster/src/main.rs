//! `parallel` on many machines, shown on one machine: a NATS JetStream server, two serving copies
//! of this very program, and a caller whose tasks they share.
//!
//! ```sh
//! cargo run -p cluster                                   # starts its own local nats-server
//! PARALLEL_CLUSTER=nats://127.0.0.1:4222 cargo run -p cluster   # or uses yours
//! ```
//!
//! On real machines each of them runs `PARALLEL_SERVE=nats://server:4222 ./cluster` (or calls
//! `parallel::serve`) instead of the two children this example starts: `main` never runs there.

use std::collections::BTreeMap;
use std::error::Error;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use parallel::{task, Backend, Pool};
use serde::{Deserialize, Serialize};

/// How many primes lie in `start..end`, and where that was counted.
#[derive(Debug, Serialize, Deserialize)]
struct Counted {
    primes: u64,
    /// The worker process of the slot that ran the task.
    slot: u32,
    /// The serving process the slot belongs to.
    serving: u32,
}

#[task]
fn count_primes(start: u64, end: u64) -> Counted {
    let primes = (start..end).filter(|&n| is_prime(n)).count() as u64;
    Counted { primes, slot: std::process::id(), serving: std::os::unix::process::parent_id() }
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// The primes below `limit`, by a sieve on this machine: the check of the cluster's answer.
fn primes_below(limit: usize) -> u64 {
    let mut is_composite = vec![false; limit];
    let mut count = 0;
    for n in 2..limit {
        if !is_composite[n] {
            count += 1;
            (n * n..limit).step_by(n).for_each(|m| is_composite[m] = true);
        }
    }
    count
}

/// The job: 16 ranges of 62 500 numbers.
const RANGES: u64 = 16;
const WIDTH: u64 = 62_500;

fn main() -> Result<(), Box<dyn Error>> {
    // A server of our own unless one is named.
    let (_server, url) = match std::env::var("PARALLEL_CLUSTER") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = nats_server_harness::NatsServer::start()?;
            let url = server.url();
            (Some(server), url)
        }
    };
    println!("NATS JetStream server: {url}");

    // Two serving copies of this program, two slots (worker processes) each.
    let mut serving: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe()?)
                .env("PARALLEL_SERVE", &url)
                .env("PARALLEL_WORKERS", "2")
                .stdin(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let pids: Vec<u32> = serving.iter().map(Child::id).collect();
    println!("serving processes: {pids:?}");

    let pool = Pool::builder().backend(Backend::Cluster).cluster(&url).build()?;
    let ranges: Vec<(u64, u64)> = (0..RANGES).map(|i| (i * WIDTH, (i + 1) * WIDTH)).collect();
    let started = Instant::now();
    let mut by_process: BTreeMap<u32, usize> = BTreeMap::new();
    let mut total = 0;
    for ((start, end), counted) in ranges
        .iter()
        .zip(pool.map(ranges.iter().map(|&(start, end)| count_primes::new(start, end))))
    {
        let counted = counted?;
        println!(
            "{start:>9}..{end:<9} {:>6} primes   (slot {} of serving process {})",
            counted.primes, counted.slot, counted.serving
        );
        *by_process.entry(counted.serving).or_default() += 1;
        total += counted.primes;
    }
    let elapsed = started.elapsed();
    let limit = RANGES * WIDTH;
    println!(
        "{total} primes below {limit} in {elapsed:.2?}; tasks per serving process: {by_process:?}"
    );
    assert_eq!(total, primes_below(limit as usize), "the cluster's count is wrong");

    // SIGTERM: a serving process finishes what it runs and exits 0.
    for child in &serving {
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
    }
    for child in &mut serving {
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("serving process {} ended with {status}", child.id()).into());
        }
    }
    println!("both serving processes drained and exited");
    Ok(())
}
