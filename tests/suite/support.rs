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

/// A scratch directory for one test, removed when dropped; tasks on any backend can see it.
pub(crate) struct Scratch {
    path: std::path::PathBuf,
}

impl Scratch {
    pub(crate) fn new(test: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "parallel-suite-{}-{test}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos())
        ));
        std::fs::create_dir_all(&path).expect("temp dir is writable");
        Scratch { path }
    }

    /// The path of `name` inside the scratch directory, as a `String` tasks can take.
    pub(crate) fn file(&self, name: &str) -> String {
        self.path.join(name).to_string_lossy().into_owned()
    }

    /// How many files whose name starts with `prefix` exist.
    pub(crate) fn count(&self, prefix: &str) -> usize {
        std::fs::read_dir(&self.path)
            .expect("scratch dir exists")
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
            })
            .count()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is not worth failing a test over.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Blocks until `path` exists: lets a test hold a worker busy, on threads or processes alike.
pub(crate) fn wait_for_file(path: &str) {
    let started = std::time::Instant::now();
    while !std::path::Path::new(path).exists() {
        assert!(started.elapsed() < HANG_LIMIT, "{path} never appeared");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Creates `path`, releasing every task waiting for it.
pub(crate) fn touch(path: &str) {
    std::fs::write(path, b"").expect("scratch dir is writable");
}
