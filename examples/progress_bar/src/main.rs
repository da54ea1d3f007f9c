//! A batch job whose tasks report progress: each task generates a "file" of pseudo-random bytes
//! and hashes it chunk by chunk, sending the bytes done after each chunk through its
//! `&Progress<u64>`; the caller reads every handle's `progress()` and keeps one line on stderr up
//! to date, then prints each file's hash.
//!
//! Runs on worker processes by default (`PARALLEL_BACKEND=thread` for threads). No progress-bar
//! crate: the line is a carriage return and a few numbers.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parallel::{task, Progress};

const CHUNK: u64 = 256 << 10;

/// Hashes `size` bytes generated from `seed` (FNV-1a, 64 bits), reporting the bytes done after
/// every chunk.
#[task]
fn hash_file(progress: &Progress<u64>, seed: u64, size: u64) -> u64 {
    let mut state = seed | 1;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut done = 0;
    while done < size {
        let chunk = CHUNK.min(size - done);
        for _ in 0..chunk {
            // xorshift64: the file's next byte.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            hash = (hash ^ (state & 0xff)).wrapping_mul(0x0100_0000_01b3);
        }
        done += chunk;
        progress.send(chunk);
    }
    hash
}

fn main() {
    let sizes: Vec<u64> = (0..24u64).map(|i| (4 + i % 5) << 20).collect();
    let total: u64 = sizes.iter().sum();
    let handles: Vec<_> =
        sizes.iter().enumerate().map(|(i, &size)| hash_file::dispatch(i as u64, size)).collect();
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        // One reader per task: each blocks on its task's messages and adds them up.
        let readers: Vec<_> = handles
            .iter()
            .map(|handle| {
                let mut progress = handle.progress();
                let done = &done;
                scope.spawn(move || {
                    for bytes in &mut progress {
                        done.fetch_add(bytes, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        while readers.iter().any(|reader| !reader.is_finished()) {
            draw(done.load(Ordering::Relaxed), total);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    draw(done.load(Ordering::Relaxed), total);
    eprintln!(" in {:.1?}", started.elapsed());
    // Every message arrived: the readers ended only once their tasks had ended.
    assert_eq!(done.load(Ordering::Relaxed), total, "every chunk reported once");
    for (i, handle) in handles.into_iter().enumerate() {
        let hash = handle.join().expect("hashing cannot fail");
        println!("file {i:2}: {:3} MiB  {hash:016x}", sizes[i] >> 20);
    }
}

/// Redraws the progress line: a bar, the percentage and the MiB done.
fn draw(done: u64, total: u64) {
    const WIDTH: u64 = 40;
    let filled = (done * WIDTH / total.max(1)) as usize;
    let bar = format!("{}{}", "#".repeat(filled), ".".repeat(WIDTH as usize - filled));
    let percent = done * 100 / total.max(1);
    let mut stderr = std::io::stderr().lock();
    // A closed stderr is no reason to fail the job.
    let _ = write!(stderr, "\r[{bar}] {percent:3}%  {} / {} MiB", done >> 20, total >> 20);
    let _ = stderr.flush();
}
