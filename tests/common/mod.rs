//! Helpers shared by the integration tests: scratch files to coordinate with workers, a guard
//! against hangs, and what `/proc` says about processes and descriptors. Each test binary
//! includes this module and uses part of it.
#![allow(dead_code)] // each test binary uses a different part

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Serving processes and a shared server for the cluster backend's tests.
#[cfg(feature = "cluster")]
pub(crate) mod cluster;

/// A scratch directory for one test, removed when dropped; tasks on any backend can see it.
pub(crate) struct Scratch {
    pub(crate) path: PathBuf,
}

impl Scratch {
    pub(crate) fn new(test: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "parallel-test-{}-{test}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos())
        ));
        fs::create_dir_all(&path).expect("temp dir is writable");
        Scratch { path }
    }

    /// The path of `name` inside the directory, as a `String` tasks can take.
    pub(crate) fn file(&self, name: &str) -> String {
        self.path.join(name).to_string_lossy().into_owned()
    }

    /// The path of `name` inside the directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The directory itself, as a `String` tasks can take.
    pub(crate) fn string(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Whether `name` exists in the directory.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// How many files whose name starts with `prefix` exist.
    pub(crate) fn count(&self, prefix: &str) -> usize {
        fs::read_dir(&self.path)
            .expect("scratch dir exists")
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
            })
            .count()
    }

    /// The ids `n` of the files named `<prefix>-<n>`, sorted.
    pub(crate) fn ids(&self, prefix: &str) -> Vec<u64> {
        let prefix = format!("{prefix}-");
        let mut ids: Vec<u64> = fs::read_dir(&self.path)
            .expect("scratch dir exists")
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_prefix(&prefix)?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        ids
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is not worth failing a test over.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Creates an empty file at `path`.
pub(crate) fn touch(path: impl AsRef<Path>) {
    fs::write(path, b"").expect("scratch dir is writable");
}

/// Writes `content` to `path` atomically, so a reader that sees the file sees all of it.
pub(crate) fn publish(path: impl AsRef<Path>, content: &str) {
    let path = path.as_ref();
    let partial = path.with_extension("partial");
    fs::write(&partial, content).expect("scratch dir is writable");
    fs::rename(&partial, path).expect("scratch dir is writable");
}

/// Runs `f` on its own thread and fails if it has not returned within `limit`, so a deadlock
/// fails the test instead of hanging the run; a panic in `f` is the caller's panic.
pub(crate) fn within<R: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let (sender, receiver) = mpsc::channel();
    let body = thread::spawn(move || {
        // The receiver is gone after a timeout; nothing is left to report to then.
        let _ = sender.send(f());
    });
    match receiver.recv_timeout(limit) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Disconnected) => match body.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the body sends its value before it returns"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish within {limit:?}: deadlock or lost task")
        }
    }
}

/// The state letter and parent pid of process `pid`, from `/proc/<pid>/stat`; `None` once the
/// process is gone and reaped.
pub(crate) fn stat(pid: u32) -> Option<(char, u32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces or parentheses itself.
    let fields = &text[text.rfind(')')? + 1..];
    let mut fields = fields.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether process `pid` is gone (or a zombie: killed, not reaped yet).
pub(crate) fn is_gone(pid: u32) -> bool {
    stat(pid).is_none_or(|(state, _)| state == 'Z' || state == 'X')
}

/// How many file descriptors this process has open.
pub(crate) fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").expect("/proc is mounted").count()
}

/// A copy of this test binary running one of its helper tests (a test that does its work only
/// when the copy's environment says so); killed and reaped when dropped.
pub(crate) struct HelperProcess {
    pub(crate) child: std::process::Child,
}

impl HelperProcess {
    /// The command that runs helper test `helper` of this binary alone, its output not captured,
    /// through `wrapper` (a program and its arguments that run the binary, or nothing).
    pub(crate) fn command(wrapper: &[&str], helper: &str) -> std::process::Command {
        let exe = std::env::current_exe().expect("the test binary has a path");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = std::process::Command::new(program);
                command.args(args).arg(exe);
                command
            }
            None => std::process::Command::new(exe),
        };
        command.args(["--exact", helper, "--nocapture", "--test-threads=1"]);
        command
    }

    pub(crate) fn spawn(command: &mut std::process::Command) -> HelperProcess {
        HelperProcess { child: command.spawn().expect("the test binary starts again") }
    }

    /// Fails if the copy has ended: it was meant to wait for the test.
    pub(crate) fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("the helper ended early with {status}; its stderr is above");
        }
    }

    /// Waits for the copy to end, failing after `limit`.
    pub(crate) fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the helper did not end");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        // Cleanup on every path; the copy may be dead already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set in the copy of a test binary that [`quietly`] starts, to the name of the test it runs.
const QUIET_COPY: &str = "PARALLEL_TEST_QUIET_COPY";

/// How long a test run by [`quietly`] may take in its copy; the tests have tighter limits inside.
const QUIET_LIMIT: Duration = Duration::from_secs(300);

/// How the lines of figures that a quiet test prints begin: they are passed on from its copy.
const FIGURES: &[&str] = &["chaos soak"];

/// Runs `body`, the whole of test `test` (`module` is the test's `module_path!()`), in a copy of
/// this test binary whose output is captured and shown only if the test fails there.
///
/// For tests whose workers write to standard error on purpose (a provoked panic, a crash, a
/// flood): the pool copies a worker's standard error to its own, which the test harness does not
/// capture, so a green run would print it. In the copy it goes to a pipe instead.
pub(crate) fn quietly(module: &str, test: &str, body: impl FnOnce()) {
    // The test's name as the harness knows it: its module path without the crate's name.
    let name = match module.split_once("::") {
        Some((_, path)) => format!("{path}::{test}"),
        None => test.to_owned(),
    };
    if std::env::var_os(QUIET_COPY).is_some_and(|running| running == *name) {
        return body();
    }
    let mut command = HelperProcess::command(&[], &name);
    command
        .env(QUIET_COPY, &name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut copy = HelperProcess::spawn(&mut command);
    let stdout = read_all(copy.child.stdout.take());
    let stderr = read_all(copy.child.stderr.take());
    let deadline = std::time::Instant::now() + QUIET_LIMIT;
    let status = loop {
        if let Some(status) = copy.child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    // The pipes end when the copy and its workers are gone (killed by `drop` on a timeout).
    drop(copy);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let ran = stdout.contains("test result: ok. 1 passed");
    if status.is_some_and(|status| status.success()) && ran {
        // The figures a green copy reports (the chaos soak's summary, which `scripts/soak.sh`
        // reads) pass through the harness: shown with `--nocapture`, captured otherwise.
        for line in stderr.lines().filter(|line| FIGURES.iter().any(|at| line.starts_with(at))) {
            eprintln!("{line}");
        }
        return;
    }
    // Printed through the harness's capture, so it shows with this test's failure.
    println!("--- the copy's stdout:\n{stdout}\n--- the copy's stderr:\n{stderr}");
    match status {
        None => panic!("`{name}` did not finish within {QUIET_LIMIT:?} in its copy"),
        Some(status) if status.success() => panic!("`{name}` did not run in its copy"),
        Some(status) => panic!("`{name}` failed in its copy ({status}); its output is above"),
    }
}

/// Reads `pipe` to its end on a thread of its own, so that two pipes cannot block each other.
fn read_all(pipe: Option<impl std::io::Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error ends what we can show; the exit status still decides.
            let _ = pipe.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

/// Sends SIGKILL to `pid` with the `kill` command, and fails if it cannot.
pub(crate) fn kill_9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("the kill command runs");
    assert!(status.success(), "kill -9 {pid}: {status}");
}

/// A value that nests one level per `Node`, for tests of deep values.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Nest {
    Leaf,
    Node(Box<Nest>),
}

impl Nest {
    pub(crate) fn of_depth(depth: u32) -> Nest {
        (0..depth).fold(Nest::Leaf, |inner, _| Nest::Node(Box::new(inner)))
    }

    pub(crate) fn depth(&self) -> u32 {
        let mut depth = 0;
        let mut at = self;
        while let Nest::Node(inner) = at {
            depth += 1;
            at = inner;
        }
        depth
    }
}

/// Dropped without recursion: these tests are about what the pool does with deep values, not
/// about Rust's drop glue, which recurses once per level.
impl Drop for Nest {
    fn drop(&mut self) {
        // Detach the chain link by link; each link is dropped holding a `Leaf`.
        let Nest::Node(inner) = self else { return };
        let mut next = std::mem::replace(&mut **inner, Nest::Leaf);
        while let Nest::Node(inner) = &mut next {
            next = std::mem::replace(&mut **inner, Nest::Leaf);
        }
    }
}
