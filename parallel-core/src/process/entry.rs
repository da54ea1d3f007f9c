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

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable that makes a process a worker.
pub(crate) const MARKER: &str = "PARALLEL_WORKER";

/// The marker's layout version; a worker refuses a marker of another layout.
const MARKER_VERSION: &str = "2";

static IS_WORKER: AtomicBool = AtomicBool::new(false);

/// Whether this process is a worker of some pool.
pub(crate) fn is_worker() -> bool {
    IS_WORKER.load(Ordering::Relaxed)
}

/// What the pool tells a new worker through the marker.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The worker's end of the channel, as a file descriptor number.
    pub(crate) fd: i32,
    /// The pool's process, which the worker must outlive by no more than an instant.
    pub(crate) parent: u32,
    /// The worker slot: [`Environment::worker_id`](crate::Environment::worker_id).
    pub(crate) worker_id: usize,
    /// The largest frame either side sends.
    pub(crate) max_frame: usize,
    /// The worker's address space limit in bytes, which it sets itself (0 in the marker: none).
    pub(crate) max_memory: Option<u64>,
}

impl Marker {
    pub(crate) fn to_value(&self) -> String {
        format!(
            "{MARKER_VERSION}:{}:{}:{}:{}:{}",
            self.fd,
            self.parent,
            self.worker_id,
            self.max_frame,
            self.max_memory.unwrap_or(0)
        )
    }

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

    pub(crate) fn parse(value: &OsStr) -> Result<Marker, String> {
        let text = value.to_str().ok_or("the marker is not UTF-8")?;
        let mut parts = text.split(':');
        if parts.next() != Some(MARKER_VERSION) {
            return Err(format!("marker {text:?} is of another layout than {MARKER_VERSION}"));
        }
        let mut field = |what: &str| {
            parts
                .next()
                .and_then(|part| part.parse::<u64>().ok())
                .ok_or(format!("marker {text:?} lacks a valid {what}"))
        };
        let fd = i32::try_from(field("fd")?).map_err(|_| "the fd is out of range")?;
        let parent =
            u32::try_from(field("parent pid")?).map_err(|_| "the parent pid is out of range")?;
        let worker_id =
            usize::try_from(field("worker id")?).map_err(|_| "the worker id is out of range")?;
        let max_frame = usize::try_from(field("frame limit")?)
            .map_err(|_| "the frame limit is out of range")?;
        let max_memory = Some(field("memory limit")?).filter(|bytes| *bytes > 0);
        if parts.next().is_some() {
            return Err(format!("marker {text:?} has more fields than layout {MARKER_VERSION}"));
        }
        Ok(Marker { fd, parent, worker_id, max_frame, max_memory })
    }
}

/// Says on standard error why a process started as a worker cannot serve. A failing standard
/// error (its reader gone) is no reason to panic before `main`.
pub(crate) fn cannot_serve(why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "parallel: this process was started as a worker but cannot serve: {why}"
    );
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

/// Called when a pool is built, so that the linker keeps this module's object file, and with it
/// the constructor below.
#[inline(never)]
pub(crate) fn anchor() -> bool {
    std::hint::black_box(is_worker())
}

// SAFETY (of running before `main`): the constructor only reads and removes one environment
// variable while the process is still single-threaded, then either returns or serves tasks and
// exits without returning; it relies on nothing that `main` sets up.
#[ctor::ctor(unsafe)]
fn parallel_worker_entry() {
    // Pre-`main`, no other thread exists yet that could read the environment concurrently. The
    // marker goes from the environment and from the initial environment block, which
    // `/proc/<pid>/environ` shows.
    let Some(value) = super::sys::take_env_from_initial_block(MARKER) else {
        return;
    };
    IS_WORKER.store(true, Ordering::Relaxed);
    let code = match Marker::parse(&value) {
        Ok(marker) => super::worker::serve(&marker),
        Err(error) => {
            cannot_serve(&error);
            super::worker::EXIT_CANNOT_SERVE
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_round_trips_and_refuses_garbage() {
        for max_memory in [None, Some(1 << 30)] {
            let marker = Marker { fd: 0, parent: 77, worker_id: 2, max_frame: 1 << 20, max_memory };
            assert_eq!(Marker::parse(OsStr::new(&marker.to_value())), Ok(marker));
        }
        for bad in [
            "",
            "1:3:4:77:2:5",
            "2:3:4:77",
            "2:x:4:77:2:5",
            "2:3:4:77:2:5:",
            "2:99999999999:4:1:1:1",
            "2:3:99999999999:1:1:1",
        ] {
            assert!(Marker::parse(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_normal_process_is_not_a_worker() {
        assert!(!anchor());
        assert!(std::env::var_os(MARKER).is_none());
    }
}
