//! Helpers shared by the suite: building pools and guarding against hangs.

use std::thread;
use std::time::Duration;

use parallel::{Backend, Pool};

/// How long any single test may take before a hang is reported as a failure.
pub(crate) const HANG_LIMIT: Duration = Duration::from_secs(60);

/// A pool of `workers` workers on `backend`; on the cluster, with a serving process of its own
/// that has `workers` slots (`crate::cluster::pool`).
pub(crate) fn pool(backend: Backend, workers: usize) -> Pool {
    #[cfg(all(feature = "cluster", feature = "process"))]
    if backend == Backend::Cluster {
        return crate::cluster::pool(workers);
    }
    Pool::builder().backend(backend).workers(workers).build().expect("the pool builds")
}

/// How many tasks a test of volume runs on `backend`: `n`, or `on_cluster` on the cluster, whose
/// round trip is a NATS server's (README, "Limits": a millisecond or two a task in a debug build),
/// so that the same paths are taken in seconds rather than minutes.
pub(crate) fn volume(backend: Backend, n: usize, on_cluster: usize) -> usize {
    if backend == Backend::Cluster {
        on_cluster
    } else {
        n
    }
}

/// Whether a task may crash its worker's process (`abort`): on worker processes, and on the
/// cluster, whose slots are worker processes of the serving process. On threads it would take
/// the test binary down.
pub(crate) fn crashes_are_isolated(backend: Backend) -> bool {
    backend != Backend::Thread
}

/// Runs `f` on its own thread and fails the test if it has not returned within [`HANG_LIMIT`],
/// so a deadlock fails the test instead of hanging the run.
pub(crate) fn within_limit<R: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    // A cluster test's pools are found through its thread: the body's thread is the test's too.
    #[cfg(all(feature = "cluster", feature = "process"))]
    let f = {
        let test = crate::cluster::current();
        move || {
            crate::cluster::enter(test);
            f()
        }
    };
    crate::common::within(HANG_LIMIT, what, f)
}

pub(crate) use crate::common::{touch, Scratch};

/// Blocks until `path` exists: lets a test hold a worker busy, on threads or processes alike.
pub(crate) fn wait_for_file(path: &str) {
    let started = std::time::Instant::now();
    while !std::path::Path::new(path).exists() {
        assert!(started.elapsed() < HANG_LIMIT, "{path} never appeared");
        thread::sleep(Duration::from_millis(2));
    }
}
