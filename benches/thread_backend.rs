//! The thread backend against raw rayon, in the same run: one-at-a-time round trip and bulk
//! submit-all-then-join. The ratios are the figures that count (see docs/PERFORMANCE.md).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use parallel::{task, Backend, Pool};

#[task]
fn noop(x: u64) -> u64 {
    x
}

const BULK: u64 = 10_000;

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round trip (no-op, 2 workers)");
    let pool = Pool::builder().backend(Backend::Thread).workers(2).build().unwrap();
    group.bench_function("parallel thread backend", |b| {
        b.iter(|| noop::dispatch_on(&pool, 1).join().unwrap())
    });
    let rayon = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    group.bench_function("raw rayon spawn + crossbeam channel", |b| {
        b.iter(|| {
            let (sender, receiver) = crossbeam_channel::bounded(1);
            rayon.spawn(move || sender.send(std::hint::black_box(1u64)).unwrap());
            receiver.recv().unwrap()
        })
    });
    group.finish();
}

fn bulk(c: &mut Criterion) {
    let mut group = c.benchmark_group("bulk 10k no-op tasks (2 workers)");
    group.throughput(Throughput::Elements(BULK));
    group.sample_size(20);
    let pool = Pool::builder().backend(Backend::Thread).workers(2).build().unwrap();
    group.bench_function("parallel submit all, then join", |b| {
        b.iter(|| {
            let handles: Vec<_> = (0..BULK).map(|i| noop::dispatch_on(&pool, i)).collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
        })
    });
    group.bench_function("parallel map", |b| {
        b.iter(|| pool.map((0..BULK).map(noop::new)).map(Result::unwrap).sum::<u64>())
    });
    let rayon = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    group.bench_function("raw rayon spawn, then recv all", |b| {
        b.iter_batched(
            crossbeam_channel::unbounded,
            |(sender, receiver)| {
                for i in 0..BULK {
                    let sender = sender.clone();
                    rayon.spawn(move || sender.send(std::hint::black_box(i)).unwrap());
                }
                drop(sender);
                receiver.iter().sum::<u64>()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, round_trip, bulk);
criterion_main!(benches);
