//! The worker's entry: a constructor that runs before `main` in every process of a program that
//! links `parallel` with the `process` feature.
//!
//! A pool starts a worker as the program's own executable with [`MARKER`] in its environment.
//! The constructor sees the marker, removes it (so that anything the task starts, even this same
//! executable, is a normal program; its bytes in the initial environment block, which
//! `/proc/<pid>/environ` shows, are zeroed too), checks that the pool it names is its parent
//! (exit code 101 and a message if not) and serves tasks until the pool lets it go, then exits: the
//! program's `main`, the test harness or the doc test never runs in a worker. Without the marker
//! the constructor returns at once, having read one environment variable.
//!
//! The constructor sits in the module that [`anchor`] is in, and building any pool calls
//! [`anchor`], so the object file that holds the constructor is always linked in.

use std::sync::atomic::{AtomicBool, Ordering};

use super::protocol::{Marker, MARKER};

static IS_WORKER: AtomicBool = AtomicBool::new(false);

/// Whether this process is a worker of some pool.
pub(crate) fn is_worker() -> bool {
    IS_WORKER.load(Ordering::Relaxed)
}

impl Marker {
    /// Checks that the pool the marker names is this process's parent.
    ///
    /// # Errors
    ///
    /// Says why not: the pool has ended (it died before this worker could serve it: the worker
    /// was then adopted by init or a subreaper), or the marker names a process that lives but is
    /// not our parent (a marker copied into another program's environment by mistake).
    pub(crate) fn check_parent(&self) -> Result<(), String> {
        let parent = std::os::unix::process::parent_id();
        if parent == self.parent {
            Ok(())
        } else if has_ended(self.parent) {
            Err(format!("its pool, process {}, has ended", self.parent))
        } else {
            Err(format!(
                "the marker names process {} as its pool, but its parent is process {parent} \
                 (was {MARKER} copied into the environment of another program?)",
                self.parent
            ))
        }
    }
}

/// Whether process `pid` has ended: gone, or a zombie (`Z`) or dead (`X`) process not reaped yet.
fn has_ended(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the command name, which is in parentheses and may hold anything.
    let state = stat.rfind(')').and_then(|end| stat[end + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X"))
}

/// The worker entry, called by the constructor in [`super::sys`] before `main` in every process
/// of a program that links the process backend: without the marker it returns at once; with it,
/// the process serves tasks and exits, and `main` never runs.
pub(super) fn enter() {
    // Pre-`main`, no other thread exists yet that could read the environment concurrently. The
    // marker goes from the environment and from the initial environment block, which
    // `/proc/<pid>/environ` shows.
    let Some(value) = super::sys::take_env_from_initial_block(MARKER) else {
        return;
    };
    IS_WORKER.store(true, Ordering::Relaxed);
    let code = match Marker::parse(&value) {
        Ok(marker) => super::serve::serve(&marker),
        Err(error) => {
            super::serve::cannot_serve(&error);
            super::serve::EXIT_CANNOT_SERVE
        }
    };
    std::process::exit(code);
}

/// Called when a pool is built, so that the linker keeps this module's object file, and with it
/// the constructor below (tested in release with fat LTO by `tests/registry_link.rs`).
#[inline(never)]
pub(crate) fn anchor() -> bool {
    std::hint::black_box(is_worker())
}

// SAFETY (of running before `main`): the constructor only reads and removes one environment
// variable while the process is still single-threaded, then either returns or serves tasks and
// exits without returning; it relies on nothing that `main` sets up (what the runtime would set
// up, `sys::init_like_main` does).
#[ctor::ctor(unsafe)]
fn parallel_worker_entry() {
    enter();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_normal_process_is_not_a_worker() {
        assert!(!anchor());
        assert!(std::env::var_os(MARKER).is_none());
    }
}
