//! Untrusted bytes on both ends of a worker's channel: the first byte picks the frame limit, the
//! rest is the stream. Decoding must never panic, hang or allocate past the limit (libFuzzer's
//! `-rss_limit_mb` and `-malloc_limit_mb` enforce the latter when run by `scripts/fuzz.sh`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use parallel_core::__fuzz::{pool_side, worker_side};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, stream)) = data.split_first() else { return };
    let limit = 16usize << (limit % 20);
    pool_side(stream, limit);
    worker_side(stream, limit);
});
