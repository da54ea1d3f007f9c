//! Serving processes and servers for the cluster backend's tests (`tests/cluster.rs`, the suite's
//! cluster variant): a serving process is a copy of the test binary started with
//! `PARALLEL_SERVE`, so that the binary's tasks are registered there.

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nats_server_harness::NatsServer;

use super::Scratch;

/// How long a serving process may take to end when waited for.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// A serving process: a copy of this test binary with `PARALLEL_SERVE`, killed when dropped. Its
/// output goes to a file, shown when the test fails: the panics and crashes its tasks provoke on
/// purpose never reach a green run's output.
pub(crate) struct Serving {
    pub(crate) child: Child,
    log: PathBuf,
}

impl Serving {
    /// Serves namespace `namespace` of the server at `url` on `slots` slots (worker processes, or
    /// threads when `threads`) with a lease of `lease`; its log goes in `scratch`.
    pub(crate) fn start(
        url: &str,
        namespace: &str,
        slots: usize,
        lease: &str,
        threads: bool,
        scratch: &Scratch,
    ) -> Serving {
        let exe = std::env::current_exe().expect("the test binary has a path");
        let log = scratch.path(&format!("serving-{}.log", scratch.count("serving-")));
        let output = fs::File::create(&log).expect("scratch dir is writable");
        let mut command = Command::new(exe);
        command
            .env("PARALLEL_SERVE", url)
            .env("PARALLEL_NAMESPACE", namespace)
            .env("PARALLEL_WORKERS", slots.to_string())
            .env("PARALLEL_LEASE", lease)
            .env_remove("PARALLEL_BACKEND")
            .env_remove("PARALLEL_CLUSTER_PLAINTEXT")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("a file handle"))
            .stderr(output);
        if threads {
            command.env("PARALLEL_BACKEND", "thread");
        }
        let child = command.spawn().expect("the test binary starts again");
        children::add(Some(child.id()));
        Serving { child, log }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("the kill command runs");
        assert!(status.success(), "kill -TERM {}: {status}", self.pid());
    }

    /// Waits for the process to end, failing after a minute.
    pub(crate) fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the serving process did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub(crate) fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("the serving process ended with {status}:\n{}", self.output());
        }
    }

    pub(crate) fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Captured by the harness and shown with the failure.
            println!(
                "--- serving process {} ({}):\n{}",
                self.pid(),
                self.log.display(),
                self.output()
            );
        }
        // It may be gone already; its worker processes die with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        children::remove(Some(self.pid()));
    }
}

/// The pids of the servers and serving processes the tests run, each added while it is a child
/// not reaped yet (so its pid cannot be another process's): a test that hangs is abandoned on its
/// thread with them, and [`children::kill_all`] kills them, so that they do not outlive the test
/// binary.
pub(crate) mod children {
    use std::sync::{Mutex, PoisonError};

    static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

    pub(crate) fn add(pid: Option<u32>) {
        PIDS.lock().unwrap_or_else(PoisonError::into_inner).extend(pid);
    }

    pub(crate) fn remove(pid: Option<u32>) {
        PIDS.lock().unwrap_or_else(PoisonError::into_inner).retain(|&known| Some(known) != pid);
    }

    /// Kills them all (SIGKILL), for a run that is failing anyway.
    pub(crate) fn kill_all() {
        for pid in PIDS.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One server for a whole test binary

/// Set in the copy of the test binary that keeps the binary's shared server: the file to write
/// the server's URL (or why it did not start) to.
const KEEPER_VARIABLE: &str = "PARALLEL_TEST_NATS_KEEPER";

/// What the keeper writes before the URL, or before why the server did not start.
const URL_LINE: &str = "url ";
const ERROR_LINE: &str = "error ";

/// The server all the tests of this binary share, as [`shared_server`] started it.
pub(crate) struct SharedServer {
    /// `nats://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// The keeper's standard input: it ends, and the keeper stops the server, when this binary's
    /// process ends, however it ends. Never written.
    _lifeline: Mutex<ChildStdin>,
}

/// The nats-server this test binary's tests share, started on first use.
///
/// A server held in a `static` would never be dropped, and so never stopped: it is kept instead
/// by a copy of this binary running helper test `keeper` (which calls [`keep_server`]), whose
/// standard input is a pipe from this process. When this process ends, even killed, the pipe
/// closes, and the keeper stops the server and removes its store.
pub(crate) fn shared_server(keeper: &str) -> &'static SharedServer {
    static SERVER: OnceLock<SharedServer> = OnceLock::new();
    SERVER.get_or_init(|| start_keeper(keeper))
}

fn start_keeper(keeper: &str) -> SharedServer {
    let scratch = Scratch::new("nats-keeper");
    let report = scratch.path("url");
    let mut command = super::HelperProcess::command(&[], keeper);
    command
        .env(KEEPER_VARIABLE, &report)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = command.spawn().expect("the test binary starts again");
    let lifeline = child.stdin.take().expect("a piped stdin");
    let deadline = Instant::now() + WAIT_LIMIT;
    let text = loop {
        if let Ok(text) = fs::read_to_string(&report) {
            break text;
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "the nats-server keeper `{keeper}` ended with {status} before its server started"
            );
        }
        assert!(Instant::now() < deadline, "the nats-server keeper did not start its server");
        std::thread::sleep(Duration::from_millis(5));
    };
    // Not waited for: it runs until this process ends, and is reaped by whoever inherits it.
    drop(child);
    match text.strip_prefix(URL_LINE) {
        Some(url) => SharedServer { url: url.trim().to_owned(), _lifeline: Mutex::new(lifeline) },
        None => panic!(
            "the shared nats-server did not start: {}",
            text.strip_prefix(ERROR_LINE).unwrap_or(&text)
        ),
    }
}

/// The body of a test binary's helper test `keeper`: in the copy [`shared_server`] starts, runs a
/// server until standard input ends; elsewhere returns at once.
pub(crate) fn keep_server() {
    let Some(report) = std::env::var_os(KEEPER_VARIABLE) else {
        return;
    };
    let server = NatsServer::start();
    let text = match &server {
        Ok(server) => format!("{URL_LINE}{}", server.url_with_auth()),
        Err(error) => format!("{ERROR_LINE}{error}"),
    };
    super::publish(&report, &text);
    if server.is_ok() {
        // Ends when the test binary's process does: nothing is ever written.
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }
    // Dropping the server stops it and removes its store.
}
