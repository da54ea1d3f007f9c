//! The process backend against the physical limits, in the same run: a raw pipe round trip and a
//! raw socketpair echo between two processes (a few lines of our own, no framework). The ratios
//! are the figures that count (see docs/PERFORMANCE.md).

mod peers;

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use parallel::{Backend, Pool};
use peers::echo::EchoPeer;
use peers::tasks::{echo_bytes, noop, spin};

fn process_pool(workers: usize) -> Pool {
    Pool::builder().backend(Backend::Process).workers(workers).build().unwrap()
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("process round trip (no-op, 2 workers)");
    let pool = process_pool(2);
    noop::dispatch_on(&pool, 0).join().unwrap();
    group.bench_function("parallel process backend", |b| {
        b.iter(|| noop::dispatch_on(&pool, 1).join().unwrap())
    });
    let mut peer = EchoPeer::over_pipes();
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
        let mut peer = EchoPeer::over_socketpair();
        let mut back = Vec::new();
        group.bench_function(format!("raw socketpair echo, {} KiB", size >> 10), |b| {
            b.iter(|| peer.round_trip(&payload, &mut back))
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
    if peers::echo::serve_if_echo_peer() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
