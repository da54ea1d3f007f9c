//! Flaky work made reliable with the policies of `#[task]`: a limit per attempt, retries with a
//! doubling backoff, and `retry_failed` for the task's own errors.
//!
//! Forty "downloads" run on a pool of two workers. Most succeed at once; some fail on their first
//! attempt the ways real work does: a panic (a bug hit by one input), a hang (a server that never
//! answers: the attempt's `timeout` stops it — on worker processes by killing the worker), a crash
//! of the whole worker (worker processes only: on threads it would take the program down), a
//! transient `Err` (a busy server); and some fail every time (`404`), which the retries cannot
//! fix: the handle resolves with the last attempt's error. Each attempt is counted in a file, so
//! the example checks from outside the workers that every item ran exactly as often as planned.
//!
//! ```text
//! cargo run -p retries                            # worker processes
//! PARALLEL_BACKEND=thread cargo run -p retries    # threads
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Pool, TaskError};

/// How many items are downloaded.
const ITEMS: u32 = 40;
/// How many retries the task allows: a permanent failure runs `RETRIES + 1` times.
const RETRIES: u32 = 3;

/// What an item does on its first attempt (and a `NotFound` one on every attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Plan {
    Succeed,
    Panic,
    Hang,
    Crash,
    Busy,
    NotFound,
}

impl Plan {
    fn of(item: u32, can_crash: bool) -> Plan {
        match item % 10 {
            1 => Plan::Panic,
            3 => Plan::Hang,
            7 if can_crash => Plan::Crash,
            9 => Plan::Busy,
            5 => Plan::NotFound,
            _ => Plan::Succeed,
        }
    }

    /// How many attempts the item takes with the task's policy.
    fn attempts(self) -> u32 {
        match self {
            Plan::Succeed => 1,
            Plan::Panic | Plan::Hang | Plan::Crash | Plan::Busy => 2,
            Plan::NotFound => RETRIES + 1,
        }
    }
}

/// Downloads `item`: a stand-in for a request to a flaky server. Each attempt first appends a
/// byte to the item's file in `ledger`, which tells it (and the caller) which attempt it is.
#[task(timeout = "500ms", retries = 3, backoff = "20ms", retry_failed)]
fn download(ledger: String, item: u32, can_crash: bool) -> Result<u64, String> {
    let attempt = count_attempt(&Path::new(&ledger).join(item.to_string()));
    let plan = Plan::of(item, can_crash);
    if plan == Plan::NotFound {
        return Err(format!("404: item {item} does not exist"));
    }
    if attempt == 1 {
        match plan {
            Plan::Panic => panic!("connection reset while reading item {item}"),
            // Past the timeout: the pool stops the attempt and tries again.
            Plan::Hang => std::thread::sleep(Duration::from_millis(1_500)),
            Plan::Crash => std::process::abort(),
            Plan::Busy => return Err(format!("503: busy, try item {item} again")),
            Plan::Succeed | Plan::NotFound => {}
        }
    }
    Ok(u64::from(item) * 1_000)
}

/// Appends one byte to `path` and returns how many it holds: the number of this attempt.
fn count_attempt(path: &Path) -> u32 {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()));
    file.write_all(b"x").unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
    let len = std::fs::metadata(path).map_or(0, |meta| meta.len());
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// A fresh directory for the attempt counts, removed when dropped.
struct Ledger(PathBuf);

impl Ledger {
    fn new() -> std::io::Result<Ledger> {
        let path = std::env::temp_dir().join(format!("parallel-retries-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Ledger(path))
    }

    fn attempts(&self, item: u32) -> u32 {
        std::fs::metadata(self.0.join(item.to_string()))
            .map_or(0, |meta| u32::try_from(meta.len()).unwrap_or(u32::MAX))
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("retries: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let pool = Pool::builder().workers(2).build().map_err(|error| error.to_string())?;
    let can_crash = pool.backend() == Backend::Process;
    let ledger =
        Ledger::new().map_err(|error| format!("cannot make a ledger directory: {error}"))?;
    let dir = ledger.0.to_string_lossy().into_owned();

    let started = Instant::now();
    let results: Vec<_> =
        pool.map((0..ITEMS).map(|item| download::new(dir.clone(), item, can_crash))).collect();
    let elapsed = started.elapsed();

    let mut wrong = Vec::new();
    let mut by_plan: BTreeMap<Plan, (u32, u32)> = BTreeMap::new();
    for (item, result) in (0..ITEMS).zip(results) {
        let plan = Plan::of(item, can_crash);
        let attempts = ledger.attempts(item);
        let entry = by_plan.entry(plan).or_default();
        entry.0 += 1;
        entry.1 += attempts;
        let is_right = match (&result, plan) {
            (Err(TaskError::Failed(message)), Plan::NotFound) => message.starts_with("404"),
            (Ok(value), _) => *value == u64::from(item) * 1_000 && plan != Plan::NotFound,
            _ => false,
        };
        if !is_right || attempts != plan.attempts() {
            wrong.push(format!(
                "item {item} ({plan:?}): {result:?} after {attempts} attempts, expected {}",
                plan.attempts()
            ));
        }
    }
    let stats = pool.stats();
    println!(
        "{:?} backend, {} workers: {ITEMS} downloads in {:.2} s; {} retries, {} workers replaced",
        pool.backend(),
        pool.workers(),
        elapsed.as_secs_f64(),
        stats.retries,
        stats.restarts,
    );
    for (plan, (items, attempts)) in &by_plan {
        println!("  {plan:?}: {items} items, {attempts} attempts");
    }
    if let Some(first) = wrong.first() {
        return Err(format!("{} item(s) went wrong, first: {first}", wrong.len()));
    }
    println!("every item answered as planned, and ran no more often than its policy allows");
    Ok(())
}
