//! The shared rings (jobs to the worker, replies to the pool) left in any state by a hostile
//! peer: positions anywhere or close together, any bytes. Taking frames out must never panic,
//! hang or allocate past the frame limit (libFuzzer's `-rss_limit_mb` and `-malloc_limit_mb`
//! enforce the latter when run by `scripts/fuzz.sh`); pushing must never panic nor write out of
//! bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parallel_core::__fuzz::rings;

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let (header, bytes) = data.split_at(17);
    let limit = 16usize << (header[0] % 20);
    let head = u64::from_le_bytes(header[1..9].try_into().expect("8 bytes"));
    let tail = u64::from_le_bytes(header[9..17].try_into().expect("8 bytes"));
    // Positions anywhere, and positions close together (a plausible but lying state).
    rings(head, tail, bytes, limit);
    rings(tail.wrapping_add(head % 4096), tail, bytes, limit);
});
