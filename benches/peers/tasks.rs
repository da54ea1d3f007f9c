//! The workloads: a no-op, a byte echo and a CPU-bound spin. Each is a `#[task]` for our pools
//! and stays a plain function, which is what procspawn's `Pool::spawn` takes.

use std::time::{Duration, Instant};

use parallel::task;

/// Returns its argument: a task that costs nothing but its trip.
#[task]
pub(crate) fn noop(x: u64) -> u64 {
    x
}

/// Returns its argument: a `Vec<u8>` there and back.
#[task]
pub(crate) fn echo_bytes(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

/// Keeps a core busy for `micros` microseconds of wall-clock time and returns how many times it
/// looked at the clock (so the loop cannot be optimized away).
#[task]
pub(crate) fn spin(micros: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_micros(micros);
    let mut n = 0u64;
    while Instant::now() < deadline {
        n = n.wrapping_add(1);
    }
    n
}
