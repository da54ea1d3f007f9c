//! The cluster rows: `Backend::Cluster` on a real nats-server on 127.0.0.1 (the harness finds or
//! provisions it), with serving processes that are this bench binary started again with
//! `PARALLEL_SERVE` (its constructor serves the tasks registered here before `main`, so the
//! arguments cargo passes never matter there), against the raw async-nats peers of
//! [`crate::nats`] on the same server, in the same run.

use std::cell::RefCell;
use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nats_server_harness::NatsServer;
use parallel::{Backend, Pool, TaskError};

use crate::nats::RawNats;
use crate::peers::tasks::{echo_bytes, noop};
use crate::results::Peer;
use crate::{per_op, per_op_timed, Bench, Variant};

/// Serving processes of the throughput rows, and slots in each.
pub(crate) const SERVING: usize = 2;
pub(crate) const SLOTS: usize = 2;
/// The lease of the failover row.
pub(crate) const FAILOVER_LEASE: Duration = Duration::from_secs(1);
/// The namespace of the failover row, apart from the others' so that its serving process with
/// a short lease takes none of their tasks.
const FAILOVER_NAMESPACE: &str = "failover";

/// Holds its slot for `seconds`: the long task a serving process is killed in.
#[parallel::task]
fn hold(seconds: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(seconds));
    seconds
}

/// Serving processes: this binary with `PARALLEL_SERVE`; killed when dropped.
struct Serving(Vec<Child>);

impl Serving {
    fn start(url: &str, count: usize, slots: usize, namespace: &str, lease: Duration) -> Serving {
        let exe = std::env::current_exe().expect("the bench's own path");
        let children = (0..count)
            .map(|_| {
                Command::new(&exe)
                    .env("PARALLEL_SERVE", url)
                    .env("PARALLEL_WORKERS", slots.to_string())
                    .env("PARALLEL_NAMESPACE", namespace)
                    .env("PARALLEL_LEASE", format!("{}ms", lease.as_millis()))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("start a serving process")
            })
            .collect();
        Serving(children)
    }

    /// SIGTERM: each finishes what it runs and exits.
    fn stop(mut self) {
        for child in &self.0 {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
        self.0.clear();
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn cluster_pool(url: &str, namespace: &str) -> Pool {
    Pool::builder()
        .backend(Backend::Cluster)
        .cluster(url)
        .namespace(namespace)
        .build()
        .expect("build a cluster pool")
}

/// The nats-server's version line, for the report.
pub(crate) fn server_version() -> String {
    nats_server_harness::nats_server_binary()
        .ok()
        .and_then(|binary| Command::new(binary).arg("--version").output().ok())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map_or_else(|| "nats-server".to_owned(), |text| text.trim().to_owned())
}

/// Seconds from a SIGKILL of the serving process that runs a long task to its handle's
/// `WorkerDied`, `count` times, each with a fresh serving process of one slot.
fn failover(url: &str, pool: &Pool, count: usize) -> f64 {
    let mut total = Duration::ZERO;
    for _ in 0..count {
        let mut serving = Serving::start(url, 1, 1, FAILOVER_NAMESPACE, FAILOVER_LEASE);
        let handle = hold::dispatch_on(pool, 3600);
        let deadline = Instant::now() + Duration::from_secs(60);
        while pool.stats().running == 0 {
            assert!(Instant::now() < deadline, "the long task never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        let start = Instant::now();
        serving.0[0].kill().expect("kill the serving process");
        let outcome = handle.join();
        total += start.elapsed();
        assert!(
            matches!(outcome, Err(TaskError::WorkerDied { .. })),
            "a task whose serving process was killed ends in WorkerDied, not {outcome:?}"
        );
        drop(serving);
    }
    total.as_secs_f64() / count as f64
}

/// The cluster rows and their raw peers, on a nats-server of their own.
pub(crate) fn cluster(bench: &mut Bench, server: &NatsServer) {
    let url = server.url();
    let namespace = "bench";
    let serving = Serving::start(&url, SERVING, SLOTS, namespace, Duration::from_secs(10));
    let pool = cluster_pool(&url, namespace);
    // Two variants of a scenario take turns with the one responder.
    let raw = RefCell::new(RawNats::start(&url));
    // The serving processes are ready once a task of each kind came back.
    black_box(noop::dispatch_on(&pool, 1).join().expect("a no-op task failed"));

    bench.measure(
        "cluster_round_trip",
        vec![
            Variant::new(Peer::Cluster, 2_000, |n| {
                per_op(n, || {
                    for i in 0..n as u64 {
                        black_box(noop::dispatch_on(&pool, i).join().expect("a no-op task failed"));
                    }
                })
            }),
            Variant::new(Peer::NatsJetStream, 2_000, |n| raw.borrow_mut().jetstream_round_trip(n)),
            Variant::new(Peer::NatsCore, 5_000, |n| raw.borrow_mut().request_round_trip(n)),
        ],
    );
    bench.measure(
        "cluster_map",
        vec![
            Variant::new(Peer::Cluster, 10_000, |n| {
                per_op(n, || {
                    for result in pool.map((0..n as u64).map(noop::new)) {
                        black_box(result.expect("a no-op task failed"));
                    }
                })
            }),
            Variant::new(Peer::NatsJetStream, 10_000, |n| raw.borrow_mut().batched(n)),
        ],
    );
    let payload = vec![0xa5u8; 16 << 20];
    bench.measure(
        "cluster_bytes_16m",
        vec![Variant::new(Peer::Cluster, 10, |n| {
            per_op_timed(
                n,
                || payload.clone(),
                |bytes| echo_bytes::dispatch_on(&pool, bytes).join().expect("an echo task failed"),
            )
        })],
    );
    drop(raw);
    pool.shutdown();
    serving.stop();

    let pool = cluster_pool(&url, FAILOVER_NAMESPACE);
    bench.measure(
        "cluster_failover",
        vec![Variant::new(Peer::Cluster, 1, |n| failover(&url, &pool, n))],
    );
    pool.shutdown();
}
