//! The suite on the cluster backend: one `nats-server` for the whole binary, and for each test a
//! namespace per pool with a serving process of its own, a copy of this binary with as many slots
//! (worker processes) as the pool has workers.
//!
//! A namespace per pool keeps the tests apart: each has its own stream, consumers and serving
//! process, so a test that kills a slot, counts stats or holds every slot touches no other test's
//! work. The serving processes write to a log in the test's scratch directory, shown only when
//! the test fails, so a green run prints none of the panics and crashes the tests provoke.
//!
//! `support::pool(Backend::Cluster, n)` finds its test through [`current`], which `run` sets on the
//! test's thread and `support::within_limit` carries to the thread it starts.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use parallel::{Backend, Pool};

use crate::common::cluster::{shared_server, Serving};
use crate::common::Scratch;

/// The lease of the serving processes: the default. No suite test loses a serving process.
const LEASE: &str = "10s";

/// One cluster test: its serving processes, stopped when it ends.
pub(crate) struct ClusterTest {
    /// Unique in this binary: names the test's namespaces.
    prefix: String,
    scratch: Scratch,
    servings: Mutex<Vec<Serving>>,
    pools: AtomicUsize,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<ClusterTest>>> = const { RefCell::new(None) };
}

/// The cluster test this thread runs, if any.
pub(crate) fn current() -> Option<Arc<ClusterTest>> {
    CURRENT.with(|current| current.borrow().clone())
}

/// Makes `test` this thread's cluster test (a thread a test starts to run its body).
pub(crate) fn enter(test: Option<Arc<ClusterTest>>) {
    CURRENT.with(|current| *current.borrow_mut() = test);
}

/// Runs test `test` of module `module` (its `module_path!()`) on the cluster: its pools get
/// serving processes of their own, stopped when it returns or fails.
pub(crate) fn run(module: &str, test: &str, body: impl FnOnce()) {
    static TESTS: AtomicUsize = AtomicUsize::new(0);
    let n = TESTS.fetch_add(1, Ordering::Relaxed);
    // Namespaces are at most 64 characters: the test's number makes it unique, its name readable.
    let module = module.rsplit("::").nth(1).unwrap_or(module);
    let name: String = format!("{module}-{test}").chars().take(40).collect();
    let test = Arc::new(ClusterTest {
        prefix: format!("s{n}-{name}"),
        scratch: Scratch::new(&format!("cluster-{n}")),
        servings: Mutex::new(Vec::new()),
        pools: AtomicUsize::new(0),
    });
    let _ends = Ends(Arc::clone(&test));
    enter(Some(test));
    body();
}

/// Stops a test's serving processes when it ends, failed or not (a failing one shows their logs).
struct Ends(Arc<ClusterTest>);

impl Drop for Ends {
    fn drop(&mut self) {
        enter(None);
        let servings =
            std::mem::take(&mut *self.0.servings.lock().unwrap_or_else(PoisonError::into_inner));
        drop(servings);
    }
}

/// A cluster pool of `workers` workers for this thread's test, served by a serving process of its
/// own with `workers` slots in a namespace of its own.
pub(crate) fn pool(workers: usize) -> Pool {
    let test = current().expect(
        "a cluster pool is built on a cluster test's thread (crate::cluster::run; \
         support::within_limit carries it to its thread)",
    );
    let server = shared_server("cluster::cluster_keeper");
    let namespace = format!("{}-{}", test.prefix, test.pools.fetch_add(1, Ordering::Relaxed));
    let serving = Serving::start(&server.url, &namespace, workers, LEASE, false, &test.scratch);
    test.servings.lock().unwrap_or_else(PoisonError::into_inner).push(serving);
    Pool::builder()
        .backend(Backend::Cluster)
        .workers(workers)
        .cluster(&server.url)
        .namespace(&namespace)
        .build()
        .expect("a cluster pool builds")
}

/// The copy of this binary that keeps the shared server (`common::cluster::shared_server`); a
/// no-op in any other run.
#[test]
fn cluster_keeper() {
    crate::common::cluster::keep_server();
}
