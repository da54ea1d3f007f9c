//! The side-by-side report: `parallel` on its three backends and their peers — raw rayon,
//! `std::thread::spawn`, procspawn, a raw pipe and socketpair, Python's process pools, and raw
//! async-nats on the same nats-server as the cluster backend — on the same scenarios in the same
//! run, each figure the median of several runs with its min–max.
//!
//! ```text
//! cargo bench -p parallel-bench --bench compare                # writes the docs (~3 min)
//! cargo bench -p parallel-bench --bench compare -- --quick     # smoke run, prints only
//! ```
//!
//! Options after `--`: `--runs N` (samples per figure; 10, or 3 with `--quick`), `--quick` (a tenth
//! of the tasks per sample, and nothing written unless `--write`), `--no-write` (print the report
//! only), `--no-python` (leave the Python peers out), `--no-cluster` (leave the cluster rows out:
//! no nats-server is needed then), `--only SECTION` (run one section of [`SECTIONS`] and print
//! it; nothing is written). The cluster rows need a nats-server 2.10 or later: the one
//! `PARALLEL_NATS_SERVER` names, the first on the `PATH`, or one provisioned under the target
//! directory (see the `nats-server-harness` crate). A run that writes replaces the generated section of
//! docs/PERFORMANCE.md (between `<!-- compare:begin -->` and `<!-- compare:end -->`) and
//! docs/throughput.svg. The report goes to stdout; progress to stderr.
//!
//! The bench binary is also every peer's child: a `parallel` worker or serving process (its
//! constructors take over before `main`), a procspawn worker (`procspawn::init` takes over first
//! thing in `main`), the raw echo peer and the raw NATS responder (next in `main`).

#[path = "compare/cluster.rs"]
mod cluster;
#[path = "compare/nats.rs"]
mod nats;
mod peers;
#[path = "compare/plot.rs"]
mod plot;
#[path = "compare/python.rs"]
mod python;
#[path = "compare/report.rs"]
mod report;
#[path = "compare/results.rs"]
mod results;

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parallel::{Backend, Environment, Pool};
use peers::echo::EchoPeer;
use peers::tasks::{echo_bytes, noop, spin};
use results::{Peer, Results};

/// Workers of the pools that are not about scaling: both cores.
const WORKERS: usize = 2;
/// The CPU-bound scenario: this many tasks of this many µs.
const CPU_TASKS: u64 = 100;
const CPU_MICROS: u64 = 1000;
/// The completion-order scenarios: this many tasks of random length, 1 µs to 1 ms, drawn from a
/// SplitMix64 sequence with this seed (benches/python_peers.py draws the same lengths).
const RANDOM_TASKS: usize = 1000;
const RANDOM_SEED: u64 = 16;
/// Tasks in each stream whose first result is timed, and streams per sample.
const FIRST_BATCH: usize = 200;
const FIRST_STREAMS: usize = 10;
/// Keys in the `Environment` and in its floor.
const ENVIRONMENT_KEYS: usize = 64;

/// A section of a run: the scenarios it measures.
type Section = fn(&mut Bench);

/// The sections of a run, in order, by the name `--only` takes.
const SECTIONS: [(&str, Section); 9] = [
    ("round_trip", round_trip),
    ("bulk", bulk),
    ("progress", progress),
    ("cpu", cpu_bound),
    ("completion", completion_order),
    ("bytes", bytes),
    ("cold_start", cold_start),
    ("environment", environment),
    ("plot", throughput_plot),
];
/// The section that needs a nats-server, last.
const CLUSTER_SECTION: &str = "cluster";

/// The command line after `--`.
struct Options {
    runs: usize,
    is_quick: bool,
    does_write: bool,
    has_python: bool,
    has_cluster: bool,
    /// The one section to run.
    only: Option<String>,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut runs = None;
        let mut does_write = None;
        let mut options = Options {
            runs: 0,
            is_quick: false,
            does_write: true,
            has_python: true,
            has_cluster: true,
            only: None,
        };
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                "--quick" => options.is_quick = true,
                "--write" => does_write = Some(true),
                "--no-write" => does_write = Some(false),
                "--no-python" => options.has_python = false,
                "--no-cluster" => options.has_cluster = false,
                "--only" => {
                    let section = args.next().ok_or("--only needs a section")?;
                    let is_known = section == CLUSTER_SECTION
                        || SECTIONS.iter().any(|(name, _)| *name == section);
                    if !is_known {
                        let names: Vec<&str> = SECTIONS.iter().map(|(name, _)| *name).collect();
                        return Err(format!(
                            "--only {section}: no such section; one of {}, {CLUSTER_SECTION}",
                            names.join(", ")
                        ));
                    }
                    options.only = Some(section);
                }
                "--runs" => {
                    let value = args.next().ok_or("--runs needs a number")?;
                    let value: usize =
                        value.parse().map_err(|_| format!("--runs {value}: not a number"))?;
                    if value == 0 {
                        return Err("--runs must be at least 1".to_owned());
                    }
                    runs = Some(value);
                }
                other => {
                    return Err(format!(
                        "unknown argument {other:?}; use --runs N, --quick, --write, --no-write, \
                         --no-python, --no-cluster, --only SECTION"
                    ))
                }
            }
        }
        if options.only.is_some() {
            if does_write == Some(true) {
                return Err("--only prints one section; --write needs them all".to_owned());
            }
            does_write = Some(false);
            options.has_python = false;
            options.has_cluster &= options.only.as_deref() == Some(CLUSTER_SECTION);
        }
        options.does_write = does_write.unwrap_or(!options.is_quick);
        options.runs = runs.unwrap_or(if options.is_quick { 3 } else { 10 });
        Ok(options)
    }
}

/// One way to run a scenario: a column, and a closure that runs `count` operations and returns
/// the seconds per operation.
struct Variant<'a> {
    peer: Peer,
    count: usize,
    run: Box<dyn FnMut(usize) -> f64 + 'a>,
}

impl<'a> Variant<'a> {
    fn new(peer: Peer, count: usize, run: impl FnMut(usize) -> f64 + 'a) -> Variant<'a> {
        Variant { peer, count, run: Box::new(run) }
    }
}

/// Takes the samples of a run and remembers how each was taken.
struct Bench {
    runs: usize,
    is_quick: bool,
    results: Results,
    /// Operations per sample, by scenario and peer.
    counts: BTreeMap<String, Vec<(Peer, usize)>>,
}

impl Bench {
    /// The count of a full run, or a tenth of it (at least 2) in a quick one.
    fn count(&self, full: usize) -> usize {
        if self.is_quick {
            (full / 10).max(2)
        } else {
            full
        }
    }

    /// Warms every variant up with one sample, then takes `runs` samples of each, the variants in
    /// turn and in a rotating order, so that a slow spell of the machine hits them alike.
    fn measure(&mut self, scenario: &str, mut variants: Vec<Variant<'_>>) {
        eprintln!("compare: {scenario}");
        for variant in &mut variants {
            variant.count = self.count(variant.count);
            (variant.run)(variant.count);
        }
        for run in 0..self.runs {
            for index in 0..variants.len() {
                let count = variants.len();
                let variant = &mut variants[(index + run) % count];
                let sample = (variant.run)(variant.count);
                self.results.push(scenario, variant.peer, sample);
            }
        }
        self.counts.insert(
            scenario.to_owned(),
            variants.iter().map(|variant| (variant.peer, variant.count)).collect(),
        );
    }
}

/// Seconds per operation of `run`, which performs `operations` of them.
fn per_op(operations: usize, run: impl FnOnce()) -> f64 {
    let start = Instant::now();
    run();
    start.elapsed().as_secs_f64() / operations as f64
}

/// Seconds per operation of `operation` run `count` times, timing only the operation itself
/// (what `setup` prepares for it and what it returns are made and dropped off the clock).
fn per_op_timed<T, R>(
    count: usize,
    mut setup: impl FnMut() -> T,
    mut operation: impl FnMut(T) -> R,
) -> f64 {
    let mut total = Duration::ZERO;
    for _ in 0..count {
        let input = setup();
        let start = Instant::now();
        let output = black_box(operation(input));
        total += start.elapsed();
        drop(output);
    }
    total.as_secs_f64() / count as f64
}

fn pool(backend: Backend, workers: usize) -> Pool {
    Pool::builder().backend(backend).workers(workers).build().expect("build a pool")
}

fn rayon_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("build a rayon pool")
}

fn procspawn_pool(size: usize) -> procspawn::Pool {
    procspawn::Pool::new(size).expect("build a procspawn pool")
}

/// Submits `tasks` to `pool`, then joins them all.
fn submit_all<T: parallel::Task>(pool: &Pool, tasks: impl Iterator<Item = T>) {
    let handles: Vec<_> = tasks.map(|task| pool.submit(task)).collect();
    for handle in handles {
        black_box(handle.join().unwrap_or_else(|_| panic!("a {} task failed", T::NAME)));
    }
}

/// Spawns `count` calls of `function` on `pool`, then receives every result.
fn rayon_all<R: Send + 'static>(
    pool: &rayon::ThreadPool,
    count: u64,
    function: impl Fn(u64) -> R + Send + Copy + 'static,
) {
    let (sender, receiver) = crossbeam_channel::unbounded();
    for i in 0..count {
        let sender = sender.clone();
        pool.spawn(move || sender.send(function(i)).expect("the receiver waits"));
    }
    drop(sender);
    for result in receiver.iter() {
        black_box(result);
    }
}

/// Spawns `count` calls of `function` on a procspawn pool, then joins them all.
fn procspawn_all(pool: &procspawn::Pool, count: u64, argument: u64, function: fn(u64) -> u64) {
    let handles: Vec<_> = (0..count).map(|_| pool.spawn(argument, function)).collect();
    for handle in handles {
        black_box(handle.join().expect("a procspawn task failed"));
    }
}

/// Returns its argument from an `async fn`: the no-op of the async round trip. It lives here,
/// not in `peers::tasks`, because the `process_backend` bench shares that module and has no use
/// for it.
#[parallel::task]
async fn noop_async(x: u64) -> u64 {
    x
}

/// Sends `n` progress messages, then returns: the task of the progress row.
#[parallel::task]
fn chatter(progress: &parallel::Progress<u64>, n: u64) -> u64 {
    for i in 0..n {
        progress.send(i);
    }
    n
}

fn round_trip(bench: &mut Bench) {
    let thread = pool(Backend::Thread, WORKERS);
    let process = pool(Backend::Process, WORKERS);
    let rayon = rayon_pool(WORKERS);
    let procspawn = procspawn_pool(WORKERS);
    let mut pipe = EchoPeer::over_pipes();
    let mut socketpair = EchoPeer::over_socketpair();
    let mut back = Vec::new();
    let mut back_too = Vec::new();
    let ours = |pool: &Pool, n: usize| {
        per_op(n, || {
            for i in 0..n as u64 {
                black_box(noop::dispatch_on(pool, i).join().expect("a no-op task failed"));
            }
        })
    };
    bench.measure(
        "round_trip",
        vec![
            Variant::new(Peer::Thread, 20_000, |n| ours(&thread, n)),
            Variant::new(Peer::Process, 2_000, |n| ours(&process, n)),
            Variant::new(Peer::Rayon, 20_000, |n| {
                per_op(n, || {
                    for i in 0..n as u64 {
                        let (sender, receiver) = crossbeam_channel::bounded(1);
                        rayon.spawn(move || sender.send(black_box(i)).expect("the caller waits"));
                        black_box(receiver.recv().expect("the task sends"));
                    }
                })
            }),
            Variant::new(Peer::StdThread, 5_000, |n| {
                per_op(n, || {
                    for i in 0..n as u64 {
                        let thread = std::thread::spawn(move || black_box(i));
                        black_box(thread.join().expect("a no-op thread panicked"));
                    }
                })
            }),
            Variant::new(Peer::Procspawn, 1_000, |n| {
                per_op(n, || {
                    for i in 0..n as u64 {
                        black_box(
                            procspawn.spawn(i, noop).join().expect("a procspawn task failed"),
                        );
                    }
                })
            }),
            Variant::new(Peer::RawPipe, 2_000, |n| {
                per_op(n, || (0..n).for_each(|_| pipe.round_trip(&[7; 64], &mut back)))
            }),
            Variant::new(Peer::RawSocketpair, 2_000, |n| {
                per_op(n, || (0..n).for_each(|_| socketpair.round_trip(&[7; 64], &mut back_too)))
            }),
        ],
    );
    // The same round trip with an `async fn` no-op, on the same pools: the price of running a
    // task on its worker's tokio runtime (made by the warm-up sample) against a plain call.
    let ours_async = |pool: &Pool, n: usize| {
        per_op(n, || {
            for i in 0..n as u64 {
                black_box(noop_async::dispatch_on(pool, i).join().expect("a no-op task failed"));
            }
        })
    };
    bench.measure(
        "round_trip_async",
        vec![
            Variant::new(Peer::Thread, 20_000, |n| ours_async(&thread, n)),
            Variant::new(Peer::Process, 2_000, |n| ours_async(&process, n)),
        ],
    );
}

/// Progress messages from one task, read as they come, against the pool's raw task throughput.
fn progress(bench: &mut Bench) {
    let thread = pool(Backend::Thread, WORKERS);
    let process = pool(Backend::Process, WORKERS);
    let talk = |pool: &Pool, n: usize| {
        per_op(n, || {
            let handle = chatter::dispatch_on(pool, n as u64);
            let read = handle.progress().map(black_box).count();
            assert_eq!(read, n, "every progress message is read");
            black_box(handle.join().expect("the chatter task failed"));
        })
    };
    bench.measure(
        "progress",
        vec![
            // Fewer than the 65 536 a handle keeps before its reader exists: none is dropped.
            Variant::new(Peer::Thread, 50_000, |n| talk(&thread, n)),
            Variant::new(Peer::Process, 50_000, |n| talk(&process, n)),
        ],
    );
}

fn bulk(bench: &mut Bench) {
    let thread = pool(Backend::Thread, WORKERS);
    let process = pool(Backend::Process, WORKERS);
    let rayon = rayon_pool(WORKERS);
    let procspawn = procspawn_pool(WORKERS);
    let submit =
        |pool: &Pool, n: usize| per_op(n, || submit_all(pool, (0..n as u64).map(noop::new)));
    bench.measure(
        "bulk_submit",
        vec![
            Variant::new(Peer::Thread, 100_000, |n| submit(&thread, n)),
            Variant::new(Peer::Process, 100_000, |n| submit(&process, n)),
            Variant::new(Peer::Rayon, 100_000, |n| {
                per_op(n, || rayon_all(&rayon, n as u64, black_box))
            }),
            Variant::new(Peer::StdThread, 10_000, |n| {
                per_op(n, || {
                    let threads: Vec<_> =
                        (0..n as u64).map(|i| std::thread::spawn(move || black_box(i))).collect();
                    for thread in threads {
                        black_box(thread.join().expect("a no-op thread panicked"));
                    }
                })
            }),
            // Each queued procspawn task holds a few file descriptors: a few thousand at once fit
            // under the usual limit of the open files.
            Variant::new(Peer::Procspawn, 2_000, |n| {
                per_op(n, || procspawn_all(&procspawn, n as u64, 1, noop))
            }),
        ],
    );
    let map = |pool: &Pool, n: usize| {
        per_op(n, || {
            for result in pool.map((0..n as u64).map(noop::new)) {
                black_box(result.expect("a no-op task failed"));
            }
        })
    };
    bench.measure(
        "bulk_map",
        vec![
            Variant::new(Peer::Thread, 100_000, |n| map(&thread, n)),
            Variant::new(Peer::Process, 100_000, |n| map(&process, n)),
        ],
    );
    // A machine that does other work: two threads that never sleep, one per core.
    let is_busy = AtomicBool::new(true);
    /// Stops the busy loops however the measure ends (a panic too: the scope waits for them).
    struct Idle<'a>(&'a AtomicBool);
    impl Drop for Idle<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Relaxed);
        }
    }
    std::thread::scope(|scope| {
        let _idle = Idle(&is_busy);
        for _ in 0..WORKERS {
            scope.spawn(|| {
                while is_busy.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        bench.measure(
            "bulk_map_busy",
            vec![
                Variant::new(Peer::Thread, 20_000, |n| map(&thread, n)),
                Variant::new(Peer::Process, 20_000, |n| map(&process, n)),
            ],
        );
    });
}

fn cpu_bound(bench: &mut Bench) {
    for workers in [1, WORKERS] {
        let thread = pool(Backend::Thread, workers);
        let process = pool(Backend::Process, workers);
        let rayon = rayon_pool(workers);
        let procspawn = procspawn_pool(workers);
        let ours = |pool: &Pool| {
            per_op(1, || {
                for result in pool.map((0..CPU_TASKS).map(|_| spin::new(CPU_MICROS))) {
                    black_box(result.expect("a spin task failed"));
                }
            })
        };
        // A sample is one batch of `CPU_TASKS` in a quick run too: the closures ignore the count.
        bench.measure(
            &format!("cpu_{workers}"),
            vec![
                Variant::new(Peer::Thread, 1, |_| ours(&thread)),
                Variant::new(Peer::Process, 1, |_| ours(&process)),
                Variant::new(Peer::Rayon, 1, |_| {
                    per_op(1, || rayon_all(&rayon, CPU_TASKS, |_| spin(CPU_MICROS)))
                }),
                Variant::new(Peer::Procspawn, 1, |_| {
                    per_op(1, || procspawn_all(&procspawn, CPU_TASKS, CPU_MICROS, spin))
                }),
            ],
        );
    }
}

/// `count` task lengths in µs, uniform in 1..=1000, from a SplitMix64 sequence seeded with
/// [`RANDOM_SEED`]: the same every run, and the same as Python's.
fn random_micros(count: usize) -> Vec<u64> {
    let mut state = RANDOM_SEED;
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            1 + z % 1000
        })
        .collect()
}

/// Mean seconds from starting a stream to its first result, over `count` streams; the rest of
/// each stream is drained off the clock, so that the next one starts on idle workers.
fn first_result<S: Iterator>(count: usize, mut start: impl FnMut() -> S) -> f64 {
    let mut total = Duration::ZERO;
    for _ in 0..count {
        let begin = Instant::now();
        let mut stream = start();
        black_box(stream.next().expect("a stream of at least one task"));
        total += begin.elapsed();
        stream.for_each(|result| drop(black_box(result)));
    }
    total.as_secs_f64() / count as f64
}

/// `map` against `map_unordered` on tasks of random length: throughput, and time to the first
/// result.
fn completion_order(bench: &mut Bench) {
    let thread = pool(Backend::Thread, WORKERS);
    let process = pool(Backend::Process, WORKERS);
    let lengths = random_micros(RANDOM_TASKS);
    let tasks = |n: usize| lengths[..n.min(lengths.len())].iter().map(|&micros| spin::new(micros));
    let ordered = |pool: &Pool, n: usize| {
        per_op(n, || {
            for result in pool.map(tasks(n)) {
                black_box(result.expect("a spin task failed"));
            }
        })
    };
    let unordered = |pool: &Pool, n: usize| {
        per_op(n, || {
            for (_, result) in pool.map_unordered(tasks(n)) {
                black_box(result.expect("a spin task failed"));
            }
        })
    };
    bench.measure(
        "random_map",
        vec![
            Variant::new(Peer::Thread, RANDOM_TASKS, |n| ordered(&thread, n)),
            Variant::new(Peer::Process, RANDOM_TASKS, |n| ordered(&process, n)),
        ],
    );
    bench.measure(
        "random_unordered",
        vec![
            Variant::new(Peer::Thread, RANDOM_TASKS, |n| unordered(&thread, n)),
            Variant::new(Peer::Process, RANDOM_TASKS, |n| unordered(&process, n)),
        ],
    );
    let first_ordered = |pool: &Pool, n: usize| first_result(n, || pool.map(tasks(FIRST_BATCH)));
    let first_unordered =
        |pool: &Pool, n: usize| first_result(n, || pool.map_unordered(tasks(FIRST_BATCH)));
    bench.measure(
        "random_first_map",
        vec![
            Variant::new(Peer::Thread, FIRST_STREAMS, |n| first_ordered(&thread, n)),
            Variant::new(Peer::Process, FIRST_STREAMS, |n| first_ordered(&process, n)),
        ],
    );
    bench.measure(
        "random_first_unordered",
        vec![
            Variant::new(Peer::Thread, FIRST_STREAMS, |n| first_unordered(&thread, n)),
            Variant::new(Peer::Process, FIRST_STREAMS, |n| first_unordered(&process, n)),
        ],
    );
}

fn bytes(bench: &mut Bench) {
    let thread = pool(Backend::Thread, 1);
    let process = pool(Backend::Process, 1);
    let rayon = rayon_pool(1);
    let procspawn = procspawn_pool(1);
    let mut pipe = EchoPeer::over_pipes();
    let mut socketpair = EchoPeer::over_socketpair();
    // (scenario, size, count for the thread backends, for the process ones, for procspawn)
    let sizes = [
        ("bytes_1k", 1 << 10, 20_000, 2_000, 1_000),
        ("bytes_1m", 1 << 20, 2_000, 100, 20),
        ("bytes_16m", 16 << 20, 100, 10, 3),
    ];
    for (scenario, size, fast, slow, slowest) in sizes {
        let payload = vec![0xa5u8; size];
        let mut back = Vec::new();
        let mut back_too = Vec::new();
        let ours = |pool: &Pool, n: usize| {
            per_op_timed(
                n,
                || payload.clone(),
                |bytes| echo_bytes::dispatch_on(pool, bytes).join().expect("an echo task failed"),
            )
        };
        bench.measure(
            scenario,
            vec![
                Variant::new(Peer::Thread, fast, |n| ours(&thread, n)),
                Variant::new(Peer::Process, slow, |n| ours(&process, n)),
                Variant::new(Peer::Rayon, fast, |n| {
                    per_op_timed(
                        n,
                        || payload.clone(),
                        |bytes| {
                            let (sender, receiver) = crossbeam_channel::bounded(1);
                            rayon.spawn(move || sender.send(echo_bytes(bytes)).expect("waited"));
                            receiver.recv().expect("the task sends")
                        },
                    )
                }),
                Variant::new(Peer::Procspawn, slowest, |n| {
                    per_op_timed(
                        n,
                        || payload.clone(),
                        |bytes| {
                            procspawn
                                .spawn(bytes, echo_bytes)
                                .join()
                                .expect("a procspawn task failed")
                        },
                    )
                }),
                Variant::new(Peer::RawPipe, slow, |n| {
                    per_op(n, || (0..n).for_each(|_| pipe.round_trip(&payload, &mut back)))
                }),
                Variant::new(Peer::RawSocketpair, slow, |n| {
                    per_op(n, || {
                        (0..n).for_each(|_| socketpair.round_trip(&payload, &mut back_too))
                    })
                }),
            ],
        );
    }
}

fn cold_start(bench: &mut Bench) {
    /// Seconds from nothing to the first result of what `build` makes; `tear_down` (which waits
    /// for the workers to stop, where the pool can) is off the clock, so that no pool is still
    /// stopping while the next one starts.
    fn cold<P>(
        count: usize,
        build: impl Fn() -> P,
        first_result: impl Fn(&mut P),
        tear_down: impl Fn(P),
    ) -> f64 {
        let mut total = Duration::ZERO;
        for _ in 0..count {
            let start = Instant::now();
            let mut pool = build();
            first_result(&mut pool);
            total += start.elapsed();
            tear_down(pool);
        }
        total.as_secs_f64() / count as f64
    }
    let ours = |pool: &mut Pool| {
        black_box(noop::dispatch_on(pool, 1).join().expect("a no-op task failed"));
    };
    // The limit: start this same program as a raw echo peer and get one message back from it.
    let echo = |peer: &mut EchoPeer| {
        let mut back = Vec::new();
        peer.round_trip(&[7; 64], &mut back);
        black_box(back);
    };
    let shutdown = |pool: Pool| pool.shutdown();
    bench.measure(
        "cold_start",
        vec![
            Variant::new(Peer::Thread, 100, |n| {
                cold(n, || pool(Backend::Thread, 1), ours, shutdown)
            }),
            Variant::new(Peer::Process, 20, |n| {
                cold(n, || pool(Backend::Process, 1), ours, shutdown)
            }),
            Variant::new(Peer::Rayon, 100, |n| {
                cold(
                    n,
                    || rayon_pool(1),
                    |rayon: &mut rayon::ThreadPool| {
                        let (sender, receiver) = crossbeam_channel::bounded(1);
                        rayon.spawn(move || sender.send(black_box(1u64)).expect("waited"));
                        black_box(receiver.recv().expect("the task sends"));
                    },
                    drop,
                )
            }),
            Variant::new(Peer::Procspawn, 10, |n| {
                cold(
                    n,
                    || procspawn_pool(1),
                    |procspawn| {
                        black_box(
                            procspawn.spawn(1, noop).join().expect("a procspawn task failed"),
                        );
                    },
                    |procspawn| procspawn.shutdown(),
                )
            }),
            Variant::new(Peer::RawPipe, 20, |n| cold(n, EchoPeer::over_pipes, echo, drop)),
            Variant::new(Peer::RawSocketpair, 20, |n| {
                cold(n, EchoPeer::over_socketpair, echo, drop)
            }),
        ],
    );
}

fn environment(bench: &mut Bench) {
    let keys: Vec<String> = (0..ENVIRONMENT_KEYS).map(|i| format!("key-{i}")).collect();
    let key = |i: usize| keys[i % ENVIRONMENT_KEYS].as_str();
    let mut env = Environment::new();
    let mut floor: HashMap<String, Box<dyn Any>> = HashMap::new();
    for i in 0..ENVIRONMENT_KEYS {
        env.set(key(i), 0u64);
        floor.insert(key(i).to_owned(), Box::new(0u64));
    }
    let ops = 1_000_000;
    bench.measure(
        "env_get",
        vec![
            Variant::new(Peer::Environment, ops, |n| {
                per_op(n, || {
                    (0..n).for_each(|i| {
                        black_box(env.get::<u64>(key(i)));
                    })
                })
            }),
            Variant::new(Peer::HashMapFloor, ops, |n| {
                per_op(n, || {
                    (0..n).for_each(|i| {
                        black_box(floor.get(key(i)).and_then(|v| v.downcast_ref::<u64>()));
                    })
                })
            }),
        ],
    );
    bench.measure(
        "env_set",
        vec![
            Variant::new(Peer::Environment, ops, |n| {
                per_op(n, || (0..n).for_each(|i| env.set(key(i), black_box(i as u64))))
            }),
            Variant::new(Peer::HashMapFloor, ops, |n| {
                per_op(n, || {
                    (0..n).for_each(|i| {
                        floor.insert(key(i).to_owned(), Box::new(black_box(i as u64)));
                    })
                })
            }),
        ],
    );
    bench.measure(
        "env_get_or_insert_with",
        vec![
            Variant::new(Peer::Environment, ops, |n| {
                per_op(n, || (0..n).for_each(|i| *env.get_or_insert_with(key(i), || 0u64) += 1))
            }),
            Variant::new(Peer::HashMapFloor, ops, |n| {
                per_op(n, || {
                    (0..n).for_each(|i| {
                        let value = match floor.get_mut(key(i)) {
                            Some(value) if value.is::<u64>() => value,
                            _ => floor.entry(key(i).to_owned()).or_insert(Box::new(0u64)),
                        };
                        *value.downcast_mut::<u64>().expect("a u64, checked or stored") += 1;
                    })
                })
            }),
        ],
    );
}

/// Tasks in one sample of the plot: about `seconds` of work for two ideal workers, between 40
/// and `most`.
fn plot_count(micros: u64, most: usize, seconds: f64) -> usize {
    ((seconds * WORKERS as f64 * 1e6 / micros as f64).round() as usize).clamp(40, most)
}

fn throughput_plot(bench: &mut Bench) {
    let thread = pool(Backend::Thread, WORKERS);
    let process = pool(Backend::Process, WORKERS);
    let procspawn = procspawn_pool(WORKERS);
    // `measure` scales the counts down for a quick run, so the seconds stay those of a full one.
    let seconds = 0.25;
    for micros in plot::SIZES {
        let ours = |pool: &Pool, n: usize| {
            per_op(n, || submit_all(pool, (0..n).map(|_| spin::new(micros))))
        };
        bench.measure(
            &plot::scenario(micros),
            vec![
                Variant::new(Peer::Thread, plot_count(micros, 100_000, seconds), |n| {
                    ours(&thread, n)
                }),
                Variant::new(Peer::Process, plot_count(micros, 20_000, seconds), |n| {
                    ours(&process, n)
                }),
                Variant::new(Peer::Procspawn, plot_count(micros, 2_000, seconds), |n| {
                    per_op(n, || procspawn_all(&procspawn, n as u64, micros, spin))
                }),
            ],
        );
    }
}

/// The speedup from one worker to two, run by run, of every peer that ran both.
fn speedups(results: &mut Results) {
    for peer in Peer::COLUMNS {
        let (Some(one), Some(two)) = (results.get("cpu_1", peer), results.get("cpu_2", peer))
        else {
            continue;
        };
        let factors: Vec<f64> =
            one.values().iter().zip(two.values()).map(|(one, two)| one / two).collect();
        for factor in factors {
            results.push("speedup", peer, factor);
        }
    }
}

/// One line per scenario on how it is measured and how many operations make a sample.
fn method(bench: &Bench, python: &python::Python) -> Vec<String> {
    let describe = [
        ("round_trip", "round trip: submit one no-op task (a `u64` there and back; 64 bytes for the raw peers), wait for its result, repeat"),
        ("round_trip_async", "async round trip: the same with a no-op `async fn` task, on the same pools, measured right after; each worker's tokio runtime is made during the warm-up; the ratio is the sync round trip's time over this one's"),
        ("progress", "progress: one task sends this many `u64` messages through `&Progress<u64>` while the caller reads them from `handle.progress()`; the ratio is the message rate over the submit-all task rate"),
        ("bulk_submit", "submit all: submit every no-op task, then join every handle (rayon: `spawn` each with a channel sender; Python: `submit`/`apply_async`)"),
        ("bulk_map", "`map`: ours streams through `Pool::map`; Python's `map` with chunksize 1"),
        ("bulk_map_chunk100", "Python's `map` with chunksize 100: a hundred tasks per message"),
        ("bulk_map_busy", "`map` beside two busy loops: the same, while two threads of the bench's process spin without ever sleeping (a machine doing other work); the ratio is this rate over the idle one"),
        ("cpu_1", "CPU-bound: 100 tasks that each spin on the clock for 1 ms, all submitted, then all joined (ours and Python's through `map`); the speedup is the 1-worker time over the 2-worker time, run by run"),
        ("random_map", "random lengths: tasks that spin 1 µs to 1 ms (uniform, seeded: the same lengths every run and in Python), streamed through `map` (Python: `ProcessPoolExecutor.map`, `multiprocessing.Pool.imap`), in input order, on 2 workers"),
        ("random_unordered", "the same tasks through `map_unordered` (Python: `submit` all then `as_completed`, `imap_unordered`), in completion order"),
        ("random_first_map", "first result: start a stream of the first 200 of those tasks and time its first result (the rest is drained off the clock), through `map` (Python: as above)"),
        ("random_first_unordered", "first result through `map_unordered` (Python: `as_completed`, `imap_unordered`)"),
        ("bytes_1k", "bytes: a `Vec<u8>` (Python: `bytes`) sent to a task that returns it; the clone of the payload is off the clock; the raw peers write it with an 8-byte length and read the echo back"),
        ("cold_start", "cold start: build a 1-worker pool and wait for its first no-op result; shutting it down (waiting for its workers to stop, where the pool can) is off the clock; Python's clock starts at the pool's constructor, the interpreter already running; the raw peers start this same program as an echo peer and get one 64-byte message back (the physical limit: an exec of the program and a round trip), killed off the clock"),
        ("plot_1", "plot: submit all, then join all, of tasks that spin 1, 10, 100 or 1000 µs, on 2 workers; the counts below are at 1 µs, longer tasks take about 0.25 s of ideal work per sample (at least 40 tasks)"),
        ("env_get", "`Environment`: a million operations on 64 keys, in one thread"),
        ("cluster_round_trip", "cluster round trip: `dispatch_on(&pool, i).join()` of a no-op task, one after the other, with two serving processes (default lease); raw JetStream: publish a `u64` with the caller's inbox in a header to a work-queue stream on the file store (the server acks the publish), the responder, another process, pulls it (one message per pull), replies to the inbox and acks it; raw core: `request` on a subject the responder answers"),
        ("cluster_map", "cluster `map`: no-op tasks streamed through `Pool::map`, two serving processes of two slots; raw: publish them all (each acked), the responder pulls 100 per pull, replies to each and acks it, until every reply is in"),
        ("cluster_bytes_16m", "cluster bytes: as above, through the serving processes (beyond the server's message limit, so through the namespace's object store both ways)"),
        ("cluster_failover", "failover: a serving process of one slot and a 1 s lease runs a task that sleeps; once the pool counts it running, SIGKILL the serving process and time until `join` returns `WorkerDied` (a fresh serving process each time)"),
    ];
    describe
        .iter()
        .filter_map(|(scenario, text)| {
            let mut groups: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
            for &(peer, count) in bench.counts.get(*scenario).into_iter().flatten() {
                groups.entry(count).or_default().push(peer.short());
            }
            if let Some(&count) = python.counts.get(*scenario) {
                groups.entry(count as usize).or_default().push("Python");
            }
            let counts: Vec<String> = groups
                .iter()
                .rev()
                .map(|(count, peers)| format!("{count} ({})", peers.join(", ")))
                .collect();
            // A scenario that did not run (`--only`, `--no-python`) has no line.
            if counts.is_empty() {
                None
            } else if scenario.starts_with("cpu") {
                Some(format!("{text}."))
            } else {
                Some(format!("{text}. Per sample: {}.", counts.join(", ")))
            }
        })
        .collect()
}

fn main() {
    // procspawn's worker: first thing in `main`, as its docs ask. Our own workers never get here.
    procspawn::init();
    if peers::echo::serve_if_echo_peer() || nats::serve_if_responder() {
        return;
    }
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("compare: {message}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    // Started first, so that a machine without a nats-server says so before the long run.
    let server = options.has_cluster.then(|| {
        nats_server_harness::NatsServer::start().unwrap_or_else(|message| {
            eprintln!(
                "compare: no nats-server for the cluster rows (or use --no-cluster): {message}"
            );
            std::process::exit(2);
        })
    });
    let mut bench = Bench {
        runs: options.runs,
        is_quick: options.is_quick,
        results: Results::default(),
        counts: BTreeMap::new(),
    };
    for (name, section) in SECTIONS {
        if options.only.as_deref().is_none_or(|only| only == name) {
            section(&mut bench);
        }
    }
    let cluster_setup = server.as_ref().map(|server| {
        cluster::cluster(&mut bench, server);
        format!(
            "{}, on 127.0.0.1 with its file store; {} serving processes of {} slots each, this \
             bench binary started with `PARALLEL_SERVE`, all on this machine",
            cluster::server_version(),
            cluster::SERVING,
            cluster::SLOTS
        )
    });
    drop(server);

    // This package is `benches/` of the repository, whose `docs/` the report goes to.
    let benches = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = benches.parent().unwrap_or(benches);
    let python = if options.has_python {
        let script = benches.join("python_peers.py");
        python::run(&script, options.runs, options.is_quick, &mut bench.results)
    } else {
        python::Python {
            description: "no Python (`--no-python`)".to_owned(),
            counts: BTreeMap::new(),
        }
    };
    speedups(&mut bench.results);

    let method = method(&bench, &python);
    let section = report::markdown(
        &bench.results,
        &report::Context {
            runs: options.runs,
            python: &python.description,
            command: "cargo bench -p parallel-bench --bench compare",
            method: &method,
            cluster: cluster_setup.as_deref(),
        },
    );
    println!("{section}");
    eprintln!("compare: measured in {:.0} s", started.elapsed().as_secs_f64());
    if options.does_write {
        let written = plot::draw(&bench.results, WORKERS, &root.join("docs/throughput.svg"))
            .and_then(|()| report::write_into(&root.join("docs/PERFORMANCE.md"), &section));
        match written {
            Ok(()) => eprintln!("compare: wrote docs/PERFORMANCE.md and docs/throughput.svg"),
            Err(message) => {
                eprintln!("compare: {message}");
                std::process::exit(1);
            }
        }
    }
}
