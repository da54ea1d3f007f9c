//! Helpers shared by the suite: building pools and guarding against hangs.

use std::thread;
use std::time::Duration;

use parallel::{Backend, Pool};

/// How long any single test may take before a hang is reported as a failure.
pub(crate) const HANG_LIMIT: Duration = Duration::from_secs(60);

pub(crate) fn pool(backend: Backend, workers: usize) -> Pool {
    Pool::builder().backend(backend).workers(workers).build().expect("the pool builds")
}

/// Runs `f` on its own thread and fails the test if it has not returned within [`HANG_LIMIT`],
/// so a deadlock fails the test instead of hanging the run.
pub(crate) fn within_limit<R: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
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
