//! The process backend against the physical limits, in the same run: a raw pipe round trip and a
//! raw socketpair echo between two processes (a few lines of our own, no framework). The ratios
//! are the figures that count (see docs/PERFORMANCE.md).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use parallel::{task, Backend, Pool};

/// Makes this bench binary, started again with it, an echo peer on its stdin and stdout.
const ECHO_ROLE: &str = "PARALLEL_BENCH_ECHO";

#[task]
fn noop(x: u64) -> u64 {
    x
}

#[task]
fn echo_bytes(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

#[task]
fn spin(micros: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_micros(micros);
    let mut n = 0u64;
    while Instant::now() < deadline {
        n = n.wrapping_add(1);
    }
    n
}

fn process_pool(workers: usize) -> Pool {
    Pool::builder().backend(Backend::Process).workers(workers).build().unwrap()
}

/// The echo peer: reads length-prefixed messages and writes them back.
fn echo_peer() {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut header = [0u8; 8];
    let mut buffer = Vec::new();
    while input.read_exact(&mut header).is_ok() {
        let len = u64::from_le_bytes(header) as usize;
        buffer.resize(len, 0);
        if input.read_exact(&mut buffer).is_err() {
            return;
        }
        if output
            .write_all(&header)
            .and_then(|()| output.write_all(&buffer))
            .and_then(|()| output.flush())
            .is_err()
        {
            return;
        }
    }
}

/// A raw echo peer over pipes (stdin/stdout of a child process).
struct PipePeer {
    child: std::process::Child,
}

impl PipePeer {
    fn start() -> PipePeer {
        let child = Command::new(std::env::current_exe().unwrap())
            .env(ECHO_ROLE, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        PipePeer { child }
    }

    fn round_trip(&mut self, message: &[u8], back: &mut Vec<u8>) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(&(message.len() as u64).to_le_bytes()).unwrap();
        stdin.write_all(message).unwrap();
        stdin.flush().unwrap();
        let stdout = self.child.stdout.as_mut().unwrap();
        let mut header = [0u8; 8];
        stdout.read_exact(&mut header).unwrap();
        back.resize(u64::from_le_bytes(header) as usize, 0);
        stdout.read_exact(back).unwrap();
    }
}

impl Drop for PipePeer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A raw echo peer over a socketpair: the same child, with the socket as its stdin and stdout.
fn socketpair_echo(bytes: &[u8]) -> impl FnMut() -> usize + '_ {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let theirs_out = theirs.try_clone().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .env(ECHO_ROLE, "1")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs_out)))
        .spawn()
        .unwrap();
    let mut back = Vec::new();
    let mut child = Some(child);
    move || {
        // Writes and reads overlap, as the pool's own channel lets them.
        let mut writer = ours.try_clone().unwrap();
        let message = bytes.to_vec();
        let sender = std::thread::spawn(move || {
            writer.write_all(&(message.len() as u64).to_le_bytes()).unwrap();
            writer.write_all(&message).unwrap();
        });
        let mut header = [0u8; 8];
        ours.read_exact(&mut header).unwrap();
        back.resize(u64::from_le_bytes(header) as usize, 0);
        ours.read_exact(&mut back).unwrap();
        sender.join().unwrap();
        let _ = &mut child;
        back.len()
    }
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("process round trip (no-op, 2 workers)");
    let pool = process_pool(2);
    noop::dispatch_on(&pool, 0).join().unwrap();
    group.bench_function("parallel process backend", |b| {
        b.iter(|| noop::dispatch_on(&pool, 1).join().unwrap())
    });
    let mut peer = PipePeer::start();
    let mut back = Vec::new();
    group.bench_function("raw pipe round trip, 64 B", |b| {
        b.iter(|| peer.round_trip(&[7; 64], &mut back))
    });
    group.finish();
}

fn bulk(c: &mut Criterion) {
    const BULK: u64 = 10_000;
    let mut group = c.benchmark_group("process bulk 10k no-op tasks (2 workers)");
    group.throughput(Throughput::Elements(BULK));
    group.sample_size(10);
    let pool = process_pool(2);
    noop::dispatch_on(&pool, 0).join().unwrap();
    group.bench_function("submit all, then join", |b| {
        b.iter(|| {
            let handles: Vec<_> = (0..BULK).map(|i| noop::dispatch_on(&pool, i)).collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
        })
    });
    group.bench_function("map", |b| {
        b.iter(|| pool.map((0..BULK).map(noop::new)).map(Result::unwrap).sum::<u64>())
    });
    group.finish();
}

fn bytes(c: &mut Criterion) {
    let mut group = c.benchmark_group("process Vec<u8> round trip");
    group.sample_size(10);
    let pool = process_pool(1);
    for size in [1 << 10, 1 << 20, 16 << 20] {
        let payload = vec![0xa5u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("parallel, {} KiB", size >> 10), |b| {
            b.iter_batched(
                || payload.clone(),
                |p| echo_bytes::dispatch_on(&pool, p).join().unwrap().len(),
                BatchSize::LargeInput,
            )
        });
        let mut echo = socketpair_echo(&payload);
        group.bench_function(format!("raw socketpair echo, {} KiB", size >> 10), |b| {
            b.iter(&mut echo)
        });
    }
    group.finish();
}

fn cold_start(c: &mut Criterion) {
    let mut group = c.benchmark_group("process cold start");
    group.sample_size(20);
    group.bench_function("pool build + first result", |b| {
        b.iter(|| {
            let pool = process_pool(1);
            noop::dispatch_on(&pool, 1).join().unwrap()
        })
    });
    group.finish();
}

fn cpu_bound(c: &mut Criterion) {
    let mut group = c.benchmark_group("process CPU-bound 1 ms tasks (40 tasks)");
    group.sample_size(10);
    for workers in [1, 2] {
        let pool = process_pool(workers);
        spin::dispatch_on(&pool, 1).join().unwrap();
        group.bench_function(format!("{workers} worker(s)"), |b| {
            b.iter(|| pool.map((0..40).map(|_| spin::new(1_000))).count())
        });
    }
    group.finish();
}

criterion_group!(benches, round_trip, bulk, bytes, cold_start, cpu_bound);

fn main() {
    if std::env::var_os(ECHO_ROLE).is_some() {
        echo_peer();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
