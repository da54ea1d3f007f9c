//! Helpers shared by the suite: building pools and guarding against hangs.

use std::sync::mpsc;
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
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        // The receiver may be gone after a timeout; nothing is left to report to then.
        let _ = sender.send(f());
    });
    match receiver.recv_timeout(HANG_LIMIT) {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {HANG_LIMIT:?}: deadlock or lost task"),
    }
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
