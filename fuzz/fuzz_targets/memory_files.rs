//! A hostile worker's large reply, in a region of its own making: the first byte picks the
//! descriptor and its seals, the next the frame limit, the next eight the announced length, the
//! rest the file's bytes. The pool must refuse it or take the frame whole, never panic or fault
//! (SIGBUS: a file cut under the pool's mapping), and the worker must not be able to cut a
//! region the pool mapped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parallel_core::__fuzz::memory_files;

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let (header, bytes) = data.split_at(10);
    let shape = header[0];
    let limit = 16usize << (header[1] % 20);
    let announced = u64::from_le_bytes(header[2..10].try_into().expect("8 bytes"));
    // Lengths anywhere, and lengths within the file (the plausible lie).
    memory_files(bytes, announced, shape, limit);
    memory_files(bytes, announced % (bytes.len() as u64 + 2), shape, limit);
});
