//! The cluster backend against a real `nats-server` (DESIGN §9): serving processes are copies of
//! this test binary started with `PARALLEL_SERVE`, callers are `Backend::Cluster` pools. Typed
//! results and errors on process and thread slots, a serving process killed mid-task, cancels,
//! timeouts, progress, retries, each slot's `Environment`, `map` at 10 000 tasks, credentials, an
//! unreachable server, plaintext to another machine, a server restart, SIGTERM's drain, a
//! poison message, and short tasks several to a message (parcels: `map` in order, a cancel, a
//! killed serving process, a drain and a garbled task inside one).
//!
//! Each test has its own server (the harness's servers are killed when dropped, and a server kept
//! in a `static` would never be: it would outlive the test binary) and its own namespace. Serving
//! processes write to files in the test's scratch directory, shown when the test fails, so the
//! panics and crashes they run on purpose never reach a green run's output. The few direct looks
//! at the server (consumers, acks pending, dead letters) speak the NATS protocol over a socket
//! ([`raw`]), so that they do not go through the client under test.
#![cfg(all(feature = "cluster", feature = "process"))]

mod common;

use common::cluster::{children, Serving};
use common::{is_gone, kill_9, touch, within, Scratch};

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nats_server_harness::NatsServer;
use parallel::{as_completed, task, Backend, Environment, Pool, Progress, TaskError};

/// How long a test may take before it is failed as hung.
const HANG_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Tasks

#[task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[task]
fn parse(text: String) -> Result<u32, String> {
    text.parse().map_err(|_| format!("not a number: {text:?}"))
}

#[task]
fn boom(message: String) -> u32 {
    panic!("{message}")
}

#[task]
fn abort_slot() -> u32 {
    std::process::abort()
}

/// The serving process that runs it: the parent of a worker process, or itself on thread slots.
#[task]
fn serving_pid(is_thread: bool) -> u32 {
    if is_thread {
        std::process::id()
    } else {
        std::os::unix::process::parent_id()
    }
}

/// Writes `started-NAME` (`PID PPID`) in `dir`, waits for `gate-NAME` there, returns the
/// serving process's pid.
#[task]
fn hold(dir: String, name: String) -> u32 {
    hold_here(&dir, &name)
}

/// As [`hold`], retried once when its attempt does not return.
#[task(retries = 1, backoff = "10ms")]
fn hold_retried(dir: String, name: String) -> u32 {
    hold_here(&dir, &name)
}

/// As [`hold`], for at most 300 ms an attempt.
#[task(timeout = "300ms")]
fn hold_timed(dir: String, name: String) -> u32 {
    hold_here(&dir, &name)
}

fn hold_here(dir: &str, name: &str) -> u32 {
    let dir = Path::new(dir);
    let ppid = std::os::unix::process::parent_id();
    // One file per attempt: `started-NAME`, then `started-NAME.2`, ...
    let mut at = dir.join(format!("started-{name}"));
    let mut attempt = 1;
    while at.exists() {
        attempt += 1;
        at = dir.join(format!("started-{name}.{attempt}"));
    }
    common::publish(&at, &format!("{} {ppid}", std::process::id()));
    wait_for(&dir.join(format!("gate-{name}")));
    touch(dir.join(format!("done-{name}")));
    ppid
}

/// Writes `path`: proof that it ran (which worker, of which serving process).
#[task]
fn mark(path: String) {
    let ppid = std::os::unix::process::parent_id();
    common::publish(path, &format!("{} {ppid}", std::process::id()));
}

/// Sleeps, then returns the serving process's pid.
#[task]
fn reverse(bytes: Vec<u8>) -> Vec<u8> {
    bytes.into_iter().rev().collect()
}

/// Takes a while to drop.
struct SlowDrop(Duration);

impl Drop for SlowDrop {
    fn drop(&mut self) {
        std::thread::sleep(self.0);
    }
}

/// Leaves a value in the slot's `Environment` that expires at once and takes `millis` to drop:
/// the worker drops it while it idles, and reads no task meanwhile.
#[task]
fn leave_slow_drop(env: &mut Environment, millis: u64) {
    env.set_with_ttl("slow", SlowDrop(Duration::from_millis(millis)), Duration::from_millis(1));
}

#[task]
fn nap(millis: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(millis));
    std::os::unix::process::parent_id()
}

#[task]
fn count(progress: &Progress<u64>, n: u64) -> u64 {
    for i in 0..n {
        progress.send(i);
    }
    n
}

/// Panics on its first `failures` attempts, counted in the file `counter`; returns the attempt.
#[task(retries = 3, backoff = "20ms")]
fn flaky(counter: String, failures: u32) -> u32 {
    let attempt = fs::read_to_string(&counter).map_or(0, |text| text.len() as u32) + 1;
    fs::write(&counter, "x".repeat(attempt as usize)).expect("scratch dir is writable");
    assert!(attempt > failures, "attempt {attempt} fails on purpose");
    attempt
}

/// Returns the slot and how many times this slot was visited for `key`.
#[task]
fn visits(env: &mut Environment, key: String) -> (usize, u64) {
    let slot = env.worker_id();
    let n = env.get_or_insert_with(&key, || 0u64);
    *n += 1;
    (slot, *n)
}

#[task]
fn square(x: u64) -> u64 {
    x * x
}

/// Adds a line to `ran-NAME` in `dir` (one per run), then, if `wait`, holds as [`hold`] does;
/// returns the serving process's pid.
#[task]
fn tally(dir: String, name: String, wait: bool) -> u32 {
    use std::io::Write as _;
    let path = Path::new(&dir).join(format!("ran-{name}"));
    let mut file = fs::OpenOptions::new().create(true).append(true).open(path).expect("scratch");
    writeln!(file, "{}", std::process::id()).expect("scratch dir is writable");
    drop(file);
    if wait {
        hold_here(&dir, &name)
    } else {
        std::os::unix::process::parent_id()
    }
}

/// Blocks until `path` exists (at most a minute, so that a failing test ends).
fn wait_for(path: &Path) {
    let started = Instant::now();
    while !path.exists() && started.elapsed() < HANG_LIMIT {
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------------
// Servers, serving processes, callers

/// A test's server and the serving processes it starts; `name` is its namespace.
struct Cluster {
    server: NatsServer,
    namespace: String,
    scratch: Scratch,
}

impl Cluster {
    fn start(name: &str) -> Cluster {
        Cluster::with_server(name, NatsServer::start().expect("a nats-server starts"))
    }

    fn with_server(name: &str, server: NatsServer) -> Cluster {
        children::add(server.pid());
        Cluster { server, namespace: format!("t-{name}"), scratch: Scratch::new(name) }
    }

    /// Restarts the server, keeping its pid known to [`children`].
    fn restart_server(&mut self) {
        children::remove(self.server.pid());
        let restarted = self.server.restart();
        children::add(self.server.pid());
        restarted.expect("the server restarts");
    }

    /// A caller's pool on this cluster.
    fn pool(&self) -> Pool {
        Pool::builder()
            .backend(Backend::Cluster)
            .cluster(self.server.url_with_auth())
            .namespace(&self.namespace)
            .build()
            .expect("a cluster pool builds")
    }

    /// A serving process with `slots` worker processes and a lease of `lease`.
    fn serve(&self, slots: usize, lease: &str) -> Serving {
        self.serve_with(slots, lease, false)
    }

    fn serve_with(&self, slots: usize, lease: &str, threads: bool) -> Serving {
        Serving::start(
            &self.server.url_with_auth(),
            &self.namespace,
            slots,
            lease,
            threads,
            &self.scratch,
        )
    }

    /// Waits for `started-NAME` and returns the task's pid and its serving process's pid.
    fn started(&self, name: &str) -> (u32, u32) {
        let path = self.scratch.path(&format!("started-{name}"));
        wait_until(&format!("task {name} to start"), || path.exists());
        let text = fs::read_to_string(&path).expect("published whole");
        let mut pids = text.split(' ').map(|pid| pid.parse::<u32>().expect("a pid"));
        (pids.next().expect("a pid"), pids.next().expect("a ppid"))
    }

    fn open(&self, name: &str) {
        touch(self.scratch.path(&format!("gate-{name}")));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The server is killed and reaped when the field drops, right after.
        children::remove(self.server.pid());
    }
}

/// Polls `condition` until it holds, failing after the hang limit.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_LIMIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a test's body with a limit, so that a lost task fails the test instead of hanging it.
fn run(name: &str, body: impl FnOnce() + Send + 'static) {
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| within(HANG_LIMIT, name, body)));
    if let Err(panic) = outcome {
        let message = panic.downcast_ref::<String>().map_or("", String::as_str);
        if message.contains("did not finish within") {
            // A hung body keeps its servers and serving processes: they go now, not after the
            // run (another test's too: the run is failing anyway).
            children::kill_all();
        }
        std::panic::resume_unwind(panic);
    }
}

// ---------------------------------------------------------------------------------------------
// A few words of the NATS protocol, to look at the server without the client under test.

mod raw {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    /// Sends `payload` to `subject` on the server at 127.0.0.1:`port` and returns the reply.
    pub(crate) fn request(port: u16, subject: &str, payload: &[u8]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the server listens");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("a socket handle"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("the server's INFO");
        assert!(line.starts_with("INFO "), "{line}");
        let head = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false}}\r\nSUB \
             _INBOX.raw 1\r\nPUB {subject} _INBOX.raw {}\r\n",
            payload.len()
        );
        stream.write_all(head.as_bytes()).expect("the server reads");
        stream.write_all(payload).expect("the server reads");
        stream.write_all(b"\r\n").expect("the server reads");
        loop {
            line.clear();
            reader.read_line(&mut line).expect("a reply within 10 s");
            if line.starts_with("PING") {
                stream.write_all(b"PONG\r\n").expect("the server reads");
            } else if line.starts_with("MSG ") {
                let len: usize = line
                    .split_whitespace()
                    .last()
                    .and_then(|n| n.parse().ok())
                    .expect("MSG length");
                let mut body = vec![0; len + 2];
                reader.read_exact(&mut body).expect("the message's body");
                body.truncate(len);
                return String::from_utf8(body).expect("JSON");
            } else {
                assert!(!line.starts_with("-ERR"), "{subject}: {line}");
            }
        }
    }

    /// Subscribes to `listen` and publishes `payload` with `headers` (`Name: value` lines) to
    /// `subject`; returns the messages on `listen`, each its headers' text and its body, once
    /// `enough` says they are.
    pub(crate) fn publish_and_listen(
        port: u16,
        subject: &str,
        headers: &str,
        payload: &[u8],
        listen: &str,
        enough: impl Fn(&[(String, Vec<u8>)]) -> bool,
    ) -> Vec<(String, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the server listens");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("a timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("a socket handle"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("the server's INFO");
        let head = format!("NATS/1.0\r\n{headers}\r\n");
        let connect = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true}}\r\nSUB \
             {listen} 1\r\nHPUB {subject} {} {}\r\n{head}",
            head.len(),
            head.len() + payload.len()
        );
        stream.write_all(connect.as_bytes()).expect("the server reads");
        stream.write_all(payload).expect("the server reads");
        stream.write_all(b"\r\n").expect("the server reads");
        let mut messages = Vec::new();
        while !enough(&messages) {
            line.clear();
            reader.read_line(&mut line).expect("a message within 30 s");
            if line.starts_with("PING") {
                stream.write_all(b"PONG\r\n").expect("the server reads");
            } else if let Some(message) = read_message(&mut reader, &line) {
                let (head, body) = message.expect("the message");
                messages.push((String::from_utf8_lossy(&head).into_owned(), body));
            } else {
                assert!(!line.starts_with("-ERR"), "{subject}: {line}");
            }
        }
        messages
    }

    /// The messages heard on a subject since [`listen`] returned (subscribed by then).
    pub(crate) struct Listener {
        heard: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Listener {
        /// The bodies of the messages heard so far.
        pub(crate) fn heard(&self) -> Vec<Vec<u8>> {
            self.heard.lock().unwrap_or_else(PoisonError::into_inner).clone()
        }
    }

    /// Subscribes to `subject` and, once the server confirmed it, collects what comes on a thread
    /// of its own (ended with the server, or at the end of the test binary).
    pub(crate) fn listen(port: u16, subject: &str) -> Listener {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the server listens");
        let mut reader = BufReader::new(stream.try_clone().expect("a socket handle"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("the server's INFO");
        let head = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true}}\r\nSUB \
             {subject} 1\r\nPING\r\n"
        );
        stream.write_all(head.as_bytes()).expect("the server reads");
        // The PONG comes after the subscription is in place.
        loop {
            line.clear();
            reader.read_line(&mut line).expect("the server's PONG");
            assert!(!line.starts_with("-ERR"), "{subject}: {line}");
            if line.starts_with("PONG") {
                break;
            }
        }
        let heard = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&heard);
        std::thread::spawn(move || loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line.starts_with("PING") {
                let _ = stream.write_all(b"PONG\r\n");
            } else if let Some(message) = read_message(&mut reader, &line) {
                let Ok((_, body)) = message else { return };
                collected.lock().unwrap_or_else(PoisonError::into_inner).push(body);
            }
        });
        Listener { heard }
    }

    /// The message a `MSG` or `HMSG` line announces, read from `reader`: its headers' bytes
    /// (empty for `MSG`) and its body. `None` if `line` announces no message.
    fn read_message(
        reader: &mut impl Read,
        line: &str,
    ) -> Option<std::io::Result<(Vec<u8>, Vec<u8>)>> {
        let has_headers = line.starts_with("HMSG ");
        if !has_headers && !line.starts_with("MSG ") {
            return None;
        }
        let mut sizes = line.split_whitespace().rev().map(|n| n.parse::<usize>().expect("a size"));
        let total = sizes.next().expect("the message's size");
        let head = if has_headers { sizes.next().expect("the headers' size") } else { 0 };
        let mut bytes = vec![0; total + 2];
        Some(reader.read_exact(&mut bytes).map(|()| {
            bytes.truncate(total);
            let body = bytes.split_off(head);
            (bytes, body)
        }))
    }

    /// A JetStream API request, its JSON reply parsed.
    pub(crate) fn api(port: u16, subject: &str, payload: &str) -> serde_json::Value {
        let reply = request(port, subject, payload.as_bytes());
        let value: serde_json::Value = serde_json::from_str(&reply).expect("JSON");
        assert!(value.get("error").is_none(), "{subject}: {reply}");
        value
    }

    /// The consumers of stream `stream`: (name, description, filter subject).
    pub(crate) fn consumers(port: u16, stream: &str) -> Vec<(String, String, String)> {
        let reply = request(port, &format!("$JS.API.CONSUMER.LIST.{stream}"), b"{\"offset\":0}");
        let value: serde_json::Value = serde_json::from_str(&reply).expect("JSON");
        let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
        value["consumers"]
            .as_array()
            .map(|consumers| {
                consumers
                    .iter()
                    .map(|consumer| {
                        (
                            text(&consumer["name"]),
                            text(&consumer["config"]["description"]),
                            text(&consumer["config"]["filter_subject"]),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Decodes standard base64 (as the JetStream API sends headers and bodies).
    pub(crate) fn base64(text: &str) -> Vec<u8> {
        let digit = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        };
        let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(digit).collect();
        let mut out = Vec::new();
        for chunk in digits.chunks(4) {
            let bits = chunk
                .iter()
                .enumerate()
                .fold(0u32, |bits, (i, &d)| bits | u32::from(d) << (18 - 6 * i));
            out.extend_from_slice(&bits.to_be_bytes()[1..chunk.len()]);
        }
        out
    }
}

/// The name of the durable consumer and the subject of task `name` (`cluster::NAME`), once a
/// serving process has opened it.
fn consumer_of(cluster: &Cluster, name: &str) -> (String, String) {
    let stream = format!("{}_tasks", cluster.namespace);
    let description = format!("parallel task cluster::{name}");
    let mut found = None;
    wait_until(&format!("the consumer of {name}"), || {
        found = raw::consumers(cluster.server.port(), &stream)
            .into_iter()
            .find(|(_, text, _)| *text == description)
            .map(|(consumer, _, subject)| (consumer, subject));
        found.is_some()
    });
    found.expect("found above")
}

// ---------------------------------------------------------------------------------------------
// 1. Typed endings on process slots and thread slots

#[test]
fn typed_results_errors_panics_and_a_slot_s_abort_on_process_slots() {
    run("typed endings on process slots", || {
        let cluster = Cluster::start("typed");
        let mut serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        assert_eq!(add::dispatch_on(&pool, 1, 2).join(), Ok(3));
        assert_eq!(parse::dispatch_on(&pool, "42".into()).join(), Ok(42));
        assert_eq!(
            parse::dispatch_on(&pool, "x".into()).join(),
            Err(TaskError::Failed("not a number: \"x\"".to_owned()))
        );
        match boom::dispatch_on(&pool, "out of cheese".into()).join() {
            Err(TaskError::Panicked { task, message, location, .. }) => {
                assert_eq!(task, "cluster::boom");
                assert_eq!(message, "out of cheese");
                let location = location.expect("the hook saw the panic");
                assert!(location.starts_with("tests/cluster.rs:"), "{location}");
            }
            other => panic!("{other:?}"),
        }
        let before = serving_pid::dispatch_on(&pool, false).join().expect("a pid");
        assert_eq!(before, serving.pid(), "the task ran in a worker of the serving process");
        match abort_slot::dispatch_on(&pool).join() {
            Err(error @ TaskError::WorkerDied { .. }) => {
                let TaskError::WorkerDied { ref task, ref reason, .. } = error else {
                    unreachable!()
                };
                assert_eq!(task, "cluster::abort_slot");
                assert!(reason.contains("signal 6") || reason.contains("SIGABRT"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        // The serving process survived its slot's abort and serves on.
        serving.assert_running();
        assert_eq!(add::dispatch_on(&pool, 20, 22).join(), Ok(42));
        assert_eq!(serving_pid::dispatch_on(&pool, false).join(), Ok(serving.pid()));
    });
}

#[test]
fn typed_results_errors_and_panics_on_thread_slots() {
    run("typed endings on thread slots", || {
        let cluster = Cluster::start("threads");
        let mut serving = cluster.serve_with(1, "2s", true);
        let pool = cluster.pool();
        assert_eq!(add::dispatch_on(&pool, 1, 2).join(), Ok(3));
        assert_eq!(
            parse::dispatch_on(&pool, "x".into()).join(),
            Err(TaskError::Failed("not a number: \"x\"".to_owned()))
        );
        match boom::dispatch_on(&pool, "thread boom".into()).join() {
            Err(TaskError::Panicked { message, location, .. }) => {
                assert_eq!(message, "thread boom");
                assert!(location.is_some_and(|at| at.starts_with("tests/cluster.rs:")));
            }
            other => panic!("{other:?}"),
        }
        // The slot is a thread of the serving process itself.
        assert_eq!(serving_pid::dispatch_on(&pool, true).join(), Ok(serving.pid()));
        serving.assert_running();
    });
}

// ---------------------------------------------------------------------------------------------
// 2. A serving process killed mid-task

#[test]
fn a_serving_process_killed_mid_task_is_reported_within_the_lease_and_a_second() {
    run("kill -9 of a serving process", || {
        let cluster = Cluster::start("kill9");
        let serving = cluster.serve(1, "1s");
        let pool = cluster.pool();
        let handle = hold::dispatch_on(&pool, cluster.scratch.string(), "a".into());
        let (_, ppid) = cluster.started("a");
        assert_eq!(ppid, serving.pid());
        kill_9(serving.pid());
        let killed = Instant::now();
        let ended = handle.join();
        let took = killed.elapsed();
        match ended {
            Err(error @ TaskError::WorkerDied { .. }) => {
                let TaskError::WorkerDied { ref task, pid, .. } = error else { unreachable!() };
                assert_eq!(task, "cluster::hold");
                assert_eq!(pid, serving.pid(), "{error}");
            }
            other => panic!("{other:?}"),
        }
        // DESIGN §9: reported within the lease plus a second.
        assert!(took <= Duration::from_secs(2), "WorkerDied after {took:?} (lease 1 s)");
        eprintln!("cluster kill -9: WorkerDied after {took:?} (lease 1 s)");
    });
}

#[test]
fn a_task_with_retries_reruns_on_another_serving_process_after_a_kill() {
    run("retry after kill -9", || {
        let cluster = Cluster::start("kill9retry");
        let first = cluster.serve(1, "1s");
        let pool = cluster.pool();
        let handle = hold_retried::dispatch_on(&pool, cluster.scratch.string(), "r".into());
        let (_, ppid) = cluster.started("r");
        assert_eq!(ppid, first.pid());
        // The second serving process comes once the first holds the task, so that it is the
        // only one that can rerun it.
        let second = cluster.serve(1, "1s");
        kill_9(first.pid());
        cluster.open("r");
        assert_eq!(handle.join(), Ok(second.pid()), "the retry ran on the other serving process");
        assert!(cluster.scratch.has("started-r.2"), "a second attempt ran");
        assert!(!cluster.scratch.has("started-r.3"), "and no third");
        let stats = pool.stats();
        assert_eq!((stats.retries, stats.completed, stats.failed), (1, 1, 0), "{stats:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Cancels

#[test]
fn a_cancelled_queued_task_never_runs() {
    run("cancel of a queued task", || {
        let cluster = Cluster::start("cancelqueued");
        let mut serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let busy = hold::dispatch_on(&pool, cluster.scratch.string(), "busy".into());
        cluster.started("busy");
        let marker = cluster.scratch.file("ran");
        let queued = mark::dispatch_on(&pool, marker.clone());
        queued.cancel();
        assert_eq!(queued.join(), Err(TaskError::Cancelled));
        // A cancel travels on its own: the gate opens once the serving process let the task go
        // (a slot freed before that may still start it, see the ignored test below).
        let (consumer, _) = consumer_of(&cluster, "mark");
        let info = format!("$JS.API.CONSUMER.INFO.{}_tasks.{consumer}", cluster.namespace);
        wait_until("the serving process to let the cancelled task go", || {
            raw::api(cluster.server.port(), &info, "")["num_ack_pending"] == 0
        });
        cluster.open("busy");
        assert_eq!(busy.join(), Ok(serving.pid()));
        // A later task of the same kind ran, on the only slot: the cancelled one had its turn.
        let later = cluster.scratch.file("later");
        assert_eq!(mark::dispatch_on(&pool, later.clone()).join(), Ok(()));
        assert!(Path::new(&later).exists());
        let ran = fs::read_to_string(&marker);
        assert!(ran.is_err(), "the cancelled task ran: {ran:?}, serving process {}", serving.pid());
        serving.assert_running();
    });
}

#[test]
fn tasks_queued_behind_cancelled_ones_all_run() {
    // Every other one of many short tasks cancelled as soon as it is submitted: the cancels of
    // those still on their way reach the serving processes first, which drop the messages when
    // they come. A slot used to stay idle behind each one dropped, with the rest queued and
    // nothing to hand them over until the caller's next cancel or task (found from outside:
    // tasks waiting 20 s and more, in 2 of 3 runs of 30 rounds; none in 120 rounds after).
    run("tasks behind cancelled ones", || {
        let cluster = Cluster::start("behindcancelled");
        let _serving = [cluster.serve(2, "2s"), cluster.serve(2, "2s")];
        let pool = cluster.pool();
        assert_eq!(square::dispatch_on(&pool, 3).join(), Ok(9));
        // The race is the cancels' against the messages: each round loses it often without
        // the fix (a run of 30 rounds failed 3 of 4 times), never with it.
        for round in 0..30 {
            let handles: Vec<_> = (0..300).map(|x| square::dispatch_on(&pool, x)).collect();
            for handle in handles.iter().skip(1).step_by(2) {
                handle.cancel();
            }
            for (x, handle) in (0u64..).zip(handles) {
                let outcome = handle.join_timeout(Duration::from_secs(10));
                if x % 2 == 1 {
                    // Cancelled, unless it had finished before its cancel.
                    assert!(
                        matches!(outcome, Err(TaskError::Cancelled)) || outcome == Ok(x * x),
                        "round {round}, task {x}: {outcome:?}"
                    );
                } else {
                    assert_eq!(outcome, Ok(x * x), "round {round}, task {x}");
                }
            }
        }
    });
}

#[test]
fn tasks_cancelled_together_are_cancelled_in_one_message_and_none_of_them_starts() {
    // A running task and a thousand queued behind it on the only slot, all cancelled by one
    // `AsCompleted::cancel` (a thousand so that the publisher, woken by the first, takes some
    // before the loop is through: with a hundred, 1 run in 6 on a quiet machine saw it). Sent
    // one by one as the publisher woke, the first cancel could come alone: the serving process
    // killed the running task and its slot took the next cancelled one before the rest of the
    // cancels came (the suite's `as_completed_sees_finished_handles_at_once_and_cancel_stops_
    // the_rest`, 1 run in 20).
    run("cancels together", || {
        let cluster = Cluster::start("canceltogether");
        let _serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let dir = cluster.scratch.string();
        let busy = hold::dispatch_on(&pool, dir.clone(), "busy".into());
        let (worker, _) = cluster.started("busy");
        let mut handles = vec![busy];
        handles.extend((0..1000).map(|i| hold::dispatch_on(&pool, dir.clone(), format!("q{i}"))));
        // All stored (the serving process holds some of the queued ones, as its room
        // allows, and the cancel drops them there; the others it deletes from the stream).
        let (consumer, _) = consumer_of(&cluster, "hold");
        let info = format!("$JS.API.CONSUMER.INFO.{}_tasks.{consumer}", cluster.namespace);
        wait_until("the tasks to be stored", || {
            let info = raw::api(cluster.server.port(), &info, "");
            info["num_ack_pending"].as_u64().unwrap_or(0)
                + info["num_pending"].as_u64().unwrap_or(0)
                == 1001
        });
        let cancels = raw::listen(cluster.server.port(), &format!("{}.cancel", cluster.namespace));
        let completed = as_completed(handles);
        completed.cancel();
        let outcomes: Vec<_> = completed.map(|(_, outcome)| outcome).collect();
        assert_eq!(outcomes, vec![Err(TaskError::Cancelled); 1001]);
        wait_until("the running task's worker to be killed", || is_gone(worker));
        // Time for any other cancel message to come, and for a queued task to start on the
        // slot freed by the kill.
        std::thread::sleep(Duration::from_millis(300));
        let heard: Vec<_> =
            cancels.heard().iter().map(|body| String::from_utf8_lossy(body).into_owned()).collect();
        assert_eq!(heard.len(), 1, "cancel messages (the calls each names): {heard:?}");
        for i in 0..1000 {
            assert!(!cluster.scratch.has(&format!("started-q{i}")), "queued task q{i} started");
        }
    });
}

#[test]
#[ignore = "limit: a cancel reaches the serving process on its own; a slot that frees first starts \
            the cancelled task (most runs since very short tasks wait in the slot's own queue and \
            start the instant it frees; closing it needs a confirmation per start)"]
fn a_task_cancelled_just_before_its_slot_frees_never_runs() {
    run("cancel just before the slot frees", || {
        let cluster = Cluster::start("cancelrace");
        let serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        for round in 0..20 {
            let name = format!("busy{round}");
            let busy = hold::dispatch_on(&pool, cluster.scratch.string(), name.clone());
            cluster.started(&name);
            let marker = cluster.scratch.file(&format!("ran{round}"));
            let queued = mark::dispatch_on(&pool, marker.clone());
            queued.cancel();
            cluster.open(&name);
            assert_eq!(busy.join(), Ok(serving.pid()));
            let later = cluster.scratch.file(&format!("later{round}"));
            assert_eq!(mark::dispatch_on(&pool, later).join(), Ok(()));
            assert!(!Path::new(&marker).exists(), "round {round}: the cancelled task ran");
        }
    });
}

#[test]
fn a_cancelled_running_task_has_its_slot_killed_and_the_serving_process_serves_on() {
    run("cancel of a running task", || {
        let cluster = Cluster::start("cancelrunning");
        let mut serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let handle = hold::dispatch_on(&pool, cluster.scratch.string(), "c".into());
        let (worker, _) = cluster.started("c");
        handle.cancel();
        assert_eq!(handle.join(), Err(TaskError::Cancelled));
        wait_until("the cancelled task's worker to be killed", || is_gone(worker));
        serving.assert_running();
        assert_eq!(add::dispatch_on(&pool, 2, 3).join(), Ok(5));
        let next = serving_pid::dispatch_on(&pool, false).join();
        assert_eq!(next, Ok(serving.pid()));
    });
}

// ---------------------------------------------------------------------------------------------
// 4. Timeouts

#[test]
fn join_timeout_kills_the_slot_and_the_next_task_runs() {
    run("join_timeout", || {
        let cluster = Cluster::start("jointimeout");
        let mut serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let handle = hold::dispatch_on(&pool, cluster.scratch.string(), "j".into());
        let (worker, _) = cluster.started("j");
        assert_eq!(handle.join_timeout(Duration::from_millis(300)), Err(TaskError::TimedOut));
        wait_until("the timed-out task's worker to be killed", || is_gone(worker));
        serving.assert_running();
        assert_eq!(add::dispatch_on(&pool, 3, 4).join(), Ok(7));
    });
}

#[test]
fn a_task_timeout_kills_the_slot_and_the_next_task_runs() {
    run("#[task(timeout)]", || {
        let cluster = Cluster::start("tasktimeout");
        let mut serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let handle = hold_timed::dispatch_on(&pool, cluster.scratch.string(), "t".into());
        assert_eq!(handle.join(), Err(TaskError::TimedOut));
        let (worker, _) = cluster.started("t");
        wait_until("the timed-out task's worker to be killed", || is_gone(worker));
        serving.assert_running();
        assert_eq!(add::dispatch_on(&pool, 4, 5).join(), Ok(9));
        assert!(!cluster.scratch.has("started-t.2"), "no retry was asked for");
    });
}

// ---------------------------------------------------------------------------------------------
// 5. Progress

#[test]
fn a_thousand_progress_messages_arrive_in_order() {
    run("progress", || {
        let cluster = Cluster::start("progress");
        let _serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let handle = count::dispatch_on(&pool, 1000);
        let messages: Vec<u64> = handle.progress().collect();
        assert_eq!(messages, (0..1000).collect::<Vec<_>>());
        assert_eq!(handle.join(), Ok(1000));
    });
}

// ---------------------------------------------------------------------------------------------
// 6. Retries

#[test]
fn a_flaky_task_is_retried_with_backoff_until_it_succeeds() {
    run("retries", || {
        let cluster = Cluster::start("retries");
        let _serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let counter = cluster.scratch.file("attempts");
        assert_eq!(flaky::dispatch_on(&pool, counter.clone(), 2).join(), Ok(3));
        assert_eq!(fs::read_to_string(&counter).map(|text| text.len()).ok(), Some(3));
        let stats = pool.stats();
        assert_eq!((stats.retries, stats.completed, stats.failed), (2, 1, 0), "{stats:?}");
        // More failures than retries: the last attempt's panic.
        let counter = cluster.scratch.file("attempts-2");
        match flaky::dispatch_on(&pool, counter.clone(), 9).join() {
            Err(TaskError::Panicked { message, .. }) => {
                assert_eq!(message, "attempt 4 fails on purpose");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read_to_string(&counter).map(|text| text.len()).ok(), Some(4));
        assert_eq!(pool.stats().retries, 5);
    });
}

// ---------------------------------------------------------------------------------------------
// 7. Each slot's Environment

#[test]
fn each_slot_keeps_its_environment_across_tasks() {
    run("environment", || {
        let cluster = Cluster::start("environment");
        let _serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let seen: Vec<_> = (0..5)
            .map(|_| visits::dispatch_on(&pool, "ann".into()).join().expect("visits"))
            .collect();
        let slot = seen[0].0;
        assert_eq!(seen, (1..=5).map(|n| (slot, n)).collect::<Vec<_>>());
        assert_eq!(visits::dispatch_on(&pool, "bob".into()).join(), Ok((slot, 1)));
    });
}

// ---------------------------------------------------------------------------------------------
// 8. map, map_unordered, as_completed

#[test]
fn sixteen_mib_cross_both_ways_beyond_the_server_s_message_limit() {
    run("16 MiB both ways", || {
        let cluster = Cluster::start("bigvalues");
        let _serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        // The server's default message limit is 1 MiB: this goes through the object store.
        let bytes: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expected: Vec<u8> = bytes.iter().rev().copied().collect();
        assert!(reverse::dispatch_on(&pool, bytes).join() == Ok(expected));
        // Read objects are deleted: the bucket holds nothing once the value is back.
        let info = format!("$JS.API.STREAM.INFO.OBJ_{}_payloads", cluster.namespace);
        let port = cluster.server.port();
        wait_until("the objects to be deleted", || {
            raw::api(port, &info, "")["state"]["messages"].as_u64().is_some_and(|n| n <= 2)
        });
        // And small values still travel in their messages.
        assert_eq!(add::dispatch_on(&pool, 2, 3).join(), Ok(5));
    });
}

#[test]
fn a_value_beyond_a_message_limit_under_the_object_store_s_chunk_crosses_both_ways() {
    run("a 64 KiB message limit", || {
        // The object store's chunks are 128 KiB unless told otherwise: a server that takes no
        // message that large refused every chunk.
        let server =
            NatsServer::builder().max_payload(64 * 1024).start().expect("a nats-server starts");
        let cluster = Cluster::with_server("smallpayload", server);
        let _serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected: Vec<u8> = bytes.iter().rev().copied().collect();
        match reverse::dispatch_on(&pool, bytes).join() {
            Ok(reversed) => assert!(reversed == expected, "the value came back changed"),
            Err(error) => panic!("{error}"),
        }
    });
}

#[test]
fn ten_thousand_tasks_through_map_come_back_in_order() {
    run("map", || {
        let cluster = Cluster::start("map");
        let _one = cluster.serve(2, "2s");
        let _two = cluster.serve(2, "2s");
        let pool = cluster.pool();
        let started = Instant::now();
        let squares: Vec<u64> = pool
            .map((0..10_000u64).map(square::new))
            .map(|result| result.expect("a square"))
            .collect();
        let took = started.elapsed();
        assert_eq!(squares, (0..10_000u64).map(|x| x * x).collect::<Vec<_>>());
        eprintln!("cluster map: 10 000 tasks in {took:?}");

        let mut seen = [false; 500];
        for (i, result) in pool.map_unordered((0..500u64).map(square::new)) {
            assert_eq!(result, Ok(i as u64 * i as u64));
            assert!(!std::mem::replace(&mut seen[i], true), "index {i} twice");
        }
        assert!(seen.iter().all(|&seen| seen));

        let handles: Vec<_> = (0..200u64).map(|x| square::dispatch_on(&pool, x)).collect();
        let mut seen = [false; 200];
        for (i, result) in as_completed(handles) {
            assert_eq!(result, Ok(i as u64 * i as u64));
            assert!(!std::mem::replace(&mut seen[i], true), "index {i} twice");
        }
        assert!(seen.iter().all(|&seen| seen));
    });
}

/// The server acknowledges each task message; one it does not store (here, its stream was
/// deleted under the pool) resolves its handle with the server's reason, and nothing hangs.
#[test]
fn a_task_the_server_does_not_store_resolves_with_the_reason() {
    run("a refused task", || {
        let cluster = Cluster::start("refused");
        let pool = cluster.pool();
        let stream = format!("{}_tasks", cluster.namespace);
        raw::api(cluster.server.port(), &format!("$JS.API.STREAM.DELETE.{stream}"), "");
        for _ in 0..2 {
            match add::dispatch_on(&pool, 1, 2).join() {
                Err(TaskError::WorkerUnavailable { task, reason, .. }) => {
                    assert_eq!(task, "cluster::add");
                    assert_eq!(
                        reason,
                        "the server did not take the task: no stream takes the task's subject \
                         (was the namespace's stream deleted?)"
                    );
                }
                other => panic!("a task with nowhere to go: {other:?}"),
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 9–11. Connecting: credentials, an unreachable server, plaintext to another machine

#[test]
fn a_wrong_token_is_a_connection_error_that_names_the_server() {
    run("credentials", || {
        let server = NatsServer::builder().token("s3cret").start().expect("a nats-server starts");
        let wrong = format!("nats://wrong-token@127.0.0.1:{}", server.port());
        let error = Pool::builder()
            .backend(Backend::Cluster)
            .cluster(wrong)
            .namespace("t-auth")
            .build()
            .expect_err("a wrong token is refused");
        let message = error.to_string();
        assert!(error.is_connection(), "{message}");
        assert!(message.contains(&format!("127.0.0.1:{}", server.port())), "{message}");
        assert!(!message.contains("wrong-token"), "the message shows the token: {message}");
        let cluster = Cluster::with_server("auth", server);
        let _serving = cluster.serve(1, "2s");
        assert_eq!(add::dispatch_on(&cluster.pool(), 5, 6).join(), Ok(11));
    });
}

#[test]
fn an_unreachable_server_is_a_connection_error() {
    run("unreachable server", || {
        // A port nothing listens on: bound, then let go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let error = Pool::builder()
            .backend(Backend::Cluster)
            .cluster(format!("nats://127.0.0.1:{port}"))
            .build()
            .expect_err("nothing listens");
        let message = error.to_string();
        assert!(error.is_connection(), "{message}");
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    });
}

#[test]
fn plaintext_to_another_machine_is_refused_before_connecting() {
    run("plaintext to another machine", || {
        // The test's own environment must not allow it.
        assert!(std::env::var_os("PARALLEL_CLUSTER_PLAINTEXT").is_none());
        let error = Pool::builder()
            .backend(Backend::Cluster)
            .cluster("nats://10.1.2.3:4222")
            .build()
            .expect_err("plaintext to 10.1.2.3 is refused");
        let message = error.to_string();
        assert!(message.contains("plaintext"), "{message}");
        assert!(message.contains("tls://10.1.2.3:4222"), "says what to write instead: {message}");
        assert!(!message.contains("cannot connect"), "it tried to connect: {message}");
    });
}

// ---------------------------------------------------------------------------------------------
// 12. A server restart

#[test]
fn a_server_restart_mid_run_resolves_every_handle_and_later_tasks_succeed() {
    run("server restart", || {
        let mut cluster = Cluster::start("restart");
        let mut serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let running = hold::dispatch_on(&pool, cluster.scratch.string(), "x".into());
        cluster.started("x");
        let queued: Vec<_> = (0..5u64).map(|x| square::dispatch_on(&pool, x)).collect();
        cluster.restart_server();
        cluster.open("x");
        // Its ending can be lost in the restart (see the ignored test below): then the lease
        // reports it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !running.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            running.is_finished(),
            "the running task never resolved: {:?}; the serving process: {:?}",
            pool.stats(),
            serving.child.try_wait()
        );
        let running = running.join();
        assert!(
            running == Ok(serving.pid()) || matches!(running, Err(TaskError::WorkerDied { .. })),
            "{running:?}"
        );
        // A deadline that is not a speed limit: what is stuck gets described, not just hung on.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !queued.iter().all(|handle| handle.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !queued.iter().all(|handle| handle.is_finished()) {
            let (consumer, _) = consumer_of(&cluster, "square");
            let info = format!("$JS.API.CONSUMER.INFO.{}_tasks.{consumer}", cluster.namespace);
            let info = raw::api(cluster.server.port(), &info, "");
            panic!(
                "queued tasks stuck after the restart: {:?}; their consumer: {info}; the serving \
                 process: {:?}",
                pool.stats(),
                serving.child.try_wait()
            );
        }
        for (x, handle) in (0..5u64).zip(queued) {
            assert_eq!(handle.join(), Ok(x * x), "queued through the restart");
        }
        serving.assert_running();
        for x in 0..5u64 {
            assert_eq!(square::dispatch_on(&pool, x).join(), Ok(x * x), "after the restart");
        }
    });
}

#[test]
fn a_task_that_ends_while_the_server_is_down_reports_its_result() {
    run("an ending across a server restart", || {
        let mut cluster = Cluster::start("restartending");
        let mut serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let running = hold::dispatch_on(&pool, cluster.scratch.string(), "e".into());
        cluster.started("e");
        children::remove(cluster.server.pid());
        cluster.server.kill();
        cluster.open("e");
        wait_until("the task to end", || cluster.scratch.has("done-e"));
        cluster.restart_server();
        assert_eq!(running.join(), Ok(serving.pid()));
        serving.assert_running();
    });
}

// ---------------------------------------------------------------------------------------------
// 13. SIGTERM drains

#[test]
fn sigterm_with_the_server_gone_ends_the_serving_process_with_the_reason() {
    // Before, the drain waited for ever for the server to take its last messages: a serving
    // process stopped while its server was down (a restart, an outage) never exited.
    run("SIGTERM, server gone", || {
        let mut cluster = Cluster::start("sigtermgone");
        let mut serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        assert_eq!(square::dispatch_on(&pool, 4).join(), Ok(16));
        cluster.server.kill();
        stops_with_the_server_gone(&mut serving);
        drop(pool);
    });
}

#[test]
fn sigterm_while_the_consumers_are_opened_with_the_server_gone_ends_the_serving_process() {
    // A serving process takes tasks from the first consumer it opens while it opens the others.
    // Before, a signal was only waited for once they were all open, and opening one retries for
    // as long as the server does not answer: killed meanwhile, it never exited (1 run in 5 of
    // the test above).
    run("SIGTERM while opening consumers", || {
        let mut cluster = Cluster::start("sigtermopening");
        let mut serving = cluster.serve(1, "2s");
        let stream = format!("{}_tasks", cluster.namespace);
        wait_until("the first consumer", || {
            !raw::consumers(cluster.server.port(), &stream).is_empty()
        });
        cluster.server.kill();
        stops_with_the_server_gone(&mut serving);
    });
}

#[test]
fn sigterm_before_the_first_task_is_taken_exits_0_at_once() {
    // The server is frozen (SIGSTOP): the connection waits for its greeting. Before, the signal
    // was heard only once serving had started, and the process exited 1 after the connection's
    // timeout instead.
    run("SIGTERM before serving", || {
        let cluster = Cluster::start("sigtermearly");
        let server = cluster.server.pid().expect("the server runs");
        signal(server, "-STOP");
        let mut serving = cluster.serve(1, "2s");
        wait_until("the serving process to handle SIGTERM", || handles_sigterm(serving.pid()));
        serving.sigterm();
        let stopped = Instant::now();
        let status = serving.wait();
        signal(server, "-CONT");
        assert!(stopped.elapsed() < Duration::from_secs(3), "took {:?}", stopped.elapsed());
        assert_eq!(status.code(), Some(0), "{}", serving.output());
    });
}

/// Stops `serving`, whose server is gone, and checks that it exits 1 within 30 s saying why.
fn stops_with_the_server_gone(serving: &mut Serving) {
    serving.sigterm();
    let stopped = Instant::now();
    let status = serving.wait();
    assert!(stopped.elapsed() < Duration::from_secs(30), "took {:?}", stopped.elapsed());
    assert_eq!(status.code(), Some(1), "{}", serving.output());
    let output = serving.output();
    assert!(
        output.contains("did not take the last endings and hand-backs within 10 s"),
        "{output}"
    );
}

/// Sends `signal` (`-STOP`, `-CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("the kill command runs");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

/// Whether process `pid` has a handler for SIGTERM (signal 15: bit 14 of `SigCgt`).
fn handles_sigterm(pid: u32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << 14) != 0)
}

#[test]
fn sigterm_finishes_the_running_task_hands_back_the_queued_ones_and_exits_0() {
    run("SIGTERM", || {
        let cluster = Cluster::start("sigterm");
        let mut first = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let long = hold::dispatch_on(&pool, cluster.scratch.string(), "long".into());
        cluster.started("long");
        let queued: Vec<_> = (0..5).map(|_| nap::dispatch_on(&pool, 0)).collect();
        // The first serving process holds all six (it takes short tasks ahead of its slots, for
        // as long as its slot's task is short).
        wait_held(&cluster, "nap", 5);
        let second = cluster.serve(1, "2s");
        first.sigterm();
        // The queued ones run on the second serving process while the long one still runs.
        for handle in queued {
            assert_eq!(handle.join(), Ok(second.pid()), "a handed-back task runs elsewhere");
        }
        first.assert_running();
        cluster.open("long");
        assert_eq!(long.join(), Ok(first.pid()), "the running task finished where it was");
        let status = first.wait();
        assert_eq!(status.code(), Some(0), "{}", first.output());
    });
}

// ---------------------------------------------------------------------------------------------
// 14. A poison message

#[test]
fn a_message_without_headers_goes_to_the_dead_letters_and_serving_goes_on() {
    run("poison message", || {
        let cluster = Cluster::start("poison");
        let mut serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let (_, subject) = consumer_of(&cluster, "square");
        let port = cluster.server.port();
        let ack = raw::request(port, &subject, b"poison");
        assert!(ack.contains(&format!("\"stream\":\"{}_tasks\"", cluster.namespace)), "{ack}");
        let dead = format!("$JS.API.STREAM.INFO.{}_dead", cluster.namespace);
        wait_until("the dead letter", || raw::api(port, &dead, "")["state"]["messages"] == 1);
        let get = format!("$JS.API.STREAM.MSG.GET.{}_dead", cluster.namespace);
        let kept = raw::api(port, &get, "{\"seq\":1}");
        let data = raw::base64(kept["message"]["data"].as_str().expect("a body"));
        assert_eq!(data, b"poison");
        let headers = raw::base64(kept["message"]["hdrs"].as_str().expect("headers"));
        let headers = String::from_utf8_lossy(&headers);
        assert!(headers.contains("Parallel-Dead-Reason"), "{headers}");
        assert!(headers.contains(&format!("Parallel-Dead-Subject: {subject}")), "{headers}");
        // The task stream let it go, and the serving process serves on.
        let tasks = format!("$JS.API.STREAM.INFO.{}_tasks", cluster.namespace);
        wait_until("the task stream to let it go", || {
            raw::api(port, &tasks, "")["state"]["messages"] == 0
        });
        serving.assert_running();
        assert_eq!(square::dispatch_on(&pool, 12).join(), Ok(144));
    });
}

// ---------------------------------------------------------------------------------------------
// Faults found beyond the brief's list

/// Waits until the first serving process holds the `count` tasks of `name` just submitted
/// (taken from the stream, not acknowledged) — or has let them be: it takes no task ahead of a
/// slot whose task runs long, and hands back what it took once it does.
fn wait_held(cluster: &Cluster, name: &str, count: u64) {
    let (consumer, _) = consumer_of(cluster, name);
    let info = format!("$JS.API.CONSUMER.INFO.{}_tasks.{consumer}", cluster.namespace);
    wait_until(&format!("{count} tasks of {name} to be held"), || {
        let info = raw::api(cluster.server.port(), &info, "");
        info["num_ack_pending"] == count || info["num_pending"] == count
    });
}

#[test]
fn tasks_held_by_a_killed_serving_process_run_on_another() {
    run("held tasks of a killed serving process", || {
        let cluster = Cluster::start("killheld");
        let first = cluster.serve(1, "1s");
        let pool = cluster.pool();
        let running = hold::dispatch_on(&pool, cluster.scratch.string(), "k".into());
        cluster.started("k");
        let queued: Vec<_> = (0..3).map(|_| nap::dispatch_on(&pool, 0)).collect();
        wait_held(&cluster, "nap", 3);
        let second = cluster.serve(1, "1s");
        kill_9(first.pid());
        assert!(matches!(running.join(), Err(TaskError::WorkerDied { .. })));
        // Redelivered once the lease ran out, and run: their caller never heard them start.
        for handle in queued {
            assert_eq!(handle.join(), Ok(second.pid()));
        }
        assert!(!cluster.scratch.has("started-k.2"), "the started task was not rerun");
    });
}

/// Found here: tasks a serving process took ahead of its slots waited behind a hung task while
/// another serving process idled.
#[test]
fn tasks_taken_ahead_do_not_wait_behind_a_hung_task() {
    run("tasks taken ahead of a hung task", || {
        let cluster = Cluster::start("ahead");
        let first = cluster.serve(1, "1s");
        let pool = cluster.pool();
        // A short task first: the serving process then knows its tasks are short and takes the
        // next ones ahead of its slot.
        assert_eq!(add::dispatch_on(&pool, 1, 1).join(), Ok(2));
        let hung = hold::dispatch_on(&pool, cluster.scratch.string(), "h".into());
        cluster.started("h");
        let queued: Vec<_> = (0..3).map(|_| nap::dispatch_on(&pool, 0)).collect();
        // A value beyond the server's message limit, taken ahead and handed back with the rest:
        // the second serving process reads it from the object store again.
        let bytes: Vec<u8> = (0..2 << 20).map(|i: u32| (i % 253) as u8).collect();
        let expected: Vec<u8> = bytes.iter().rev().copied().collect();
        let big = reverse::dispatch_on(&pool, bytes);
        wait_held(&cluster, "nap", 3);
        let second = cluster.serve(1, "1s");
        // Not a speed limit: ten leases with an idle slot elsewhere is a task stuck behind `h`.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !queued.iter().all(|handle| handle.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let finished = queued.iter().filter(|handle| handle.is_finished()).count();
        cluster.open("h");
        assert_eq!(hung.join(), Ok(first.pid()));
        assert_eq!(finished, 3, "tasks waited behind the hung one");
        for handle in queued {
            assert_eq!(handle.join(), Ok(second.pid()));
        }
        assert!(big.join() == Ok(expected), "the value handed back came back whole");
    });
}

/// Found here: a task handed to a slot whose worker was busy dropping an expired value was
/// taken back once the slot looked stuck (its `started` already sent), and when it came again
/// its caller, which had heard it start, said not to run it: it never ran, and its handle said
/// `WorkerDied` after the lease.
#[test]
fn a_task_taken_back_before_its_worker_started_it_still_runs() {
    run("a task taken back before it started", || {
        let cluster = Cluster::start("taken-back");
        let serving = cluster.serve(1, "1s");
        let pool = cluster.pool();
        leave_slow_drop::dispatch_on(&pool, 1_500).join().expect("the value is left");
        // The worker is dropping the value now, for longer than the slot may look stuck.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(nap::dispatch_on(&pool, 0).join(), Ok(serving.pid()));
    });
}

/// Found here: dropping a cluster pool stopped its client at once, and the handles of its tasks in
/// flight never resolved.
#[test]
fn a_dropped_pool_s_tasks_still_resolve() {
    run("a dropped cluster pool", || {
        let cluster = Cluster::start("dropped");
        let serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let running = hold::dispatch_on(&pool, cluster.scratch.string(), "d".into());
        let queued = add::dispatch_on(&pool, 1, 1);
        cluster.started("d");
        drop(pool);
        cluster.open("d");
        // DESIGN §3: dropping a pool does not block; its tasks finish and their handles resolve.
        assert_eq!(running.join(), Ok(serving.pid()));
        assert_eq!(queued.join(), Ok(2));
    });
}

#[test]
fn kill_resolves_every_handle_stops_the_running_task_and_runs_nothing_queued() {
    run("Pool::kill", || {
        let cluster = Cluster::start("kill");
        let mut serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let running = hold::dispatch_on(&pool, cluster.scratch.string(), "p".into());
        let (worker, _) = cluster.started("p");
        let marker = cluster.scratch.file("queued-ran");
        let queued = mark::dispatch_on(&pool, marker.clone());
        pool.kill();
        assert_eq!(running.join(), Err(TaskError::Cancelled));
        assert_eq!(queued.join(), Err(TaskError::Cancelled));
        wait_until("the killed pool's running task to be stopped", || is_gone(worker));
        // The serving process serves a new caller, and the killed pool's queued task never ran.
        let later = cluster.scratch.file("later");
        assert_eq!(mark::dispatch_on(&cluster.pool(), later.clone()).join(), Ok(()));
        assert!(Path::new(&later).exists());
        assert!(!Path::new(&marker).exists(), "a killed pool's queued task ran");
        serving.assert_running();
    });
}

/// Found here: a killed pool's queued tasks were deleted from the stream one request each, in
/// the background: 2 000 of them held up every client's JetStream requests for seconds, and a
/// serving process started meanwhile, which had not heard the kill, ran those not deleted yet.
#[test]
fn a_killed_pool_s_queued_tasks_leave_the_stream_before_its_close_returns() {
    run("a killed pool's queued tasks", || {
        let cluster = Cluster::start("kill-purge");
        let pool = cluster.pool();
        // No serving process yet: every task waits in the stream.
        let queued: Vec<_> = (0..2_000)
            .map(|i| mark::dispatch_on(&pool, cluster.scratch.file(&format!("killed-{i}"))))
            .collect();
        pool.kill();
        for handle in queued {
            assert_eq!(handle.join(), Err(TaskError::Cancelled));
        }
        drop(pool);
        // A serving process that never heard the kill finds none of them.
        let mut serving = cluster.serve(1, "2s");
        let later = cluster.scratch.file("later");
        assert_eq!(mark::dispatch_on(&cluster.pool(), later.clone()).join(), Ok(()));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(cluster.scratch.count("killed-"), 0, "a killed pool's queued tasks ran");
        serving.assert_running();
    });
}

#[test]
fn shutdown_finishes_the_running_and_queued_tasks() {
    run("Pool::shutdown", || {
        let cluster = Cluster::start("shutdown");
        let serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let running = hold::dispatch_on(&pool, cluster.scratch.string(), "s".into());
        cluster.started("s");
        let queued: Vec<_> = (0..3u64).map(|x| square::dispatch_on(&pool, x)).collect();
        let opener = {
            let gate = cluster.scratch.path("gate-s");
            std::thread::spawn(move || touch(gate))
        };
        pool.shutdown();
        opener.join().expect("the gate opens");
        assert_eq!(running.join(), Ok(serving.pid()));
        for (x, handle) in (0..3u64).zip(queued) {
            assert_eq!(handle.join(), Ok(x * x));
        }
        let refused = square::dispatch_on(&pool, 9).join();
        assert!(matches!(refused, Err(TaskError::PoolClosed { .. })), "{refused:?}");
    });
}

#[test]
fn a_task_given_up_while_no_serving_process_exists_never_runs() {
    run("a task given up in the stream", || {
        let cluster = Cluster::start("givenup");
        let pool = cluster.pool();
        let marker = cluster.scratch.file("ran");
        let waiting = mark::dispatch_on(&pool, marker.clone());
        assert_eq!(waiting.join_timeout(Duration::from_millis(200)), Err(TaskError::TimedOut));
        let tasks = format!("$JS.API.STREAM.INFO.{}_tasks", cluster.namespace);
        wait_until("its message to be deleted", || {
            raw::api(cluster.server.port(), &tasks, "")["state"]["messages"] == 0
        });
        let _serving = cluster.serve(1, "2s");
        let later = cluster.scratch.file("later");
        assert_eq!(mark::dispatch_on(&pool, later.clone()).join(), Ok(()));
        assert!(!Path::new(&marker).exists(), "the task given up ran");
    });
}

// ---------------------------------------------------------------------------------------------
// 15. Several tasks per message (parcels)

/// Runs 100 `tally` tasks, so that the pool knows the task is short: its next tasks travel
/// several to a message.
fn warm_up(pool: &Pool, dir: &str) {
    let tasks = (0..100).map(|i| tally::new(dir.to_owned(), format!("warm{i}"), false));
    assert!(pool.map(tasks).all(|result| result.is_ok()));
}

/// The results of a `map_unordered` of `tally` tasks, as its thread returns them.
type Tallies = Vec<(usize, Result<u32, TaskError<parallel::Never>>)>;

/// Runs `count` `tally` tasks through `map_unordered` on a thread of `scope`, the one at `gated`
/// holding its slot until the test opens its gate, and returns their names and that thread once
/// the gated task started and all of them travelled in one message (a parcel).
///
/// Only tasks the pool knows to be short travel together, and the average it judges by counts a
/// task's wait in its slot's queue: on a loaded machine (load 6 on 2 cores) a warm-up's tasks can
/// average over the mark and the parcel splits, so the premise is checked, and the map let finish
/// and tried again with fresh names, rather than assumed.
fn run_held_parcel<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    cluster: &'scope Cluster,
    pool: &'scope Pool,
    prefix: &str,
    count: usize,
    gated: usize,
) -> (Vec<String>, std::thread::ScopedJoinHandle<'scope, Tallies>) {
    for attempt in 0..PARCEL_TRIES {
        let (names, tasks, published) = parcel_try(cluster, pool, prefix, attempt, count, gated);
        let results = scope.spawn(move || pool.map_unordered(tasks).collect::<Tallies>());
        cluster.started(&names[gated]);
        if published.travelled_together(cluster) {
            return (names, results);
        }
        cluster.open(&names[gated]);
        assert!(results.join().expect("the map").iter().all(|(_, result)| result.is_ok()));
    }
    panic!("{count} short tasks never travelled in one message in {PARCEL_TRIES} tries");
}

/// How many times a parcel test tries for its tasks to travel in one message.
const PARCEL_TRIES: usize = 10;

/// The task stream's message count before a try's tasks were published.
struct Published(u64);

impl Published {
    /// Whether the try's tasks took one message (a parcel).
    fn travelled_together(&self, cluster: &Cluster) -> bool {
        messages_published(cluster) - self.0 == 1
    }
}

/// One try at a parcel (see [`run_held_parcel`]): warms the pool up, then returns the names and
/// the `tally` tasks of `count` tasks (the one at `gated` holding its slot), fresh for `attempt`,
/// and the stream's count before them.
fn parcel_try(
    cluster: &Cluster,
    pool: &Pool,
    prefix: &str,
    attempt: usize,
    count: usize,
    gated: usize,
) -> (Vec<String>, Vec<tally::Task>, Published) {
    let dir = cluster.scratch.string();
    warm_up(pool, &dir);
    let published = Published(messages_published(cluster));
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}{attempt}-{i}")).collect();
    let tasks = (0..count).map(|i| tally::new(dir.clone(), names[i].clone(), i == gated)).collect();
    (names, tasks, published)
}

/// How many messages the namespace's task stream has taken so far.
fn messages_published(cluster: &Cluster) -> u64 {
    let info = format!("$JS.API.STREAM.INFO.{}_tasks", cluster.namespace);
    raw::api(cluster.server.port(), &info, "")["state"]["last_seq"].as_u64().expect("a sequence")
}

/// How many times task `name` ran (lines of `ran-NAME`).
fn runs(cluster: &Cluster, name: &str) -> usize {
    fs::read_to_string(cluster.scratch.path(&format!("ran-{name}")))
        .map_or(0, |text| text.lines().count())
}

#[test]
fn short_tasks_through_map_travel_several_to_a_message_and_come_back_in_order() {
    run("map in parcels", || {
        let cluster = Cluster::start("parcels");
        let _one = cluster.serve(2, "2s");
        let _two = cluster.serve(2, "2s");
        let pool = cluster.pool();
        // The first tasks go one to a message, until the pool knows the task is short.
        assert_eq!(pool.map((0..100u64).map(square::new)).count(), 100);
        let before = messages_published(&cluster);
        let squares: Vec<u64> = pool
            .map((0..10_000u64).map(square::new))
            .map(|result| result.expect("a square"))
            .collect();
        assert_eq!(squares, (0..10_000u64).map(|x| x * x).collect::<Vec<_>>());
        let published = messages_published(&cluster) - before;
        assert!(published <= 10_000 / 8, "{published} messages for 10 000 tasks");
        eprintln!("cluster map: 10 000 tasks in {published} messages");
    });
}

/// A parcel (a `map` window of short tasks) whose second task holds the only slot: dropping the
/// `map` cancels the tasks its caller never heard start, which never run, and leaves those it
/// heard start (waiting behind the second in the worker's queue) to finish, once each.
#[test]
fn a_map_dropped_while_its_parcel_runs_cancels_the_tasks_not_started() {
    run("cancel in a parcel", || {
        let cluster = Cluster::start("parcelcancel");
        let mut serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let dir = cluster.scratch.string();
        let cancels = raw::listen(cluster.server.port(), &format!("{}.cancel", cluster.namespace));
        // As in `run_held_parcel`, tried again until the tasks travel in one message.
        let mut attempt = 0;
        let names = loop {
            assert!(attempt < PARCEL_TRIES, "12 short tasks never travelled in one message");
            let (names, tasks, published) = parcel_try(&cluster, &pool, "p", attempt, 12, 1);
            attempt += 1;
            let mut results = pool.map_unordered(tasks);
            let first = results.next().map(|(index, result)| (index, result.is_ok()));
            assert_eq!(first, Some((0, true)));
            cluster.started(&names[1]);
            // Its caller has heard the tasks in the worker's queue start.
            std::thread::sleep(Duration::from_millis(100));
            if !published.travelled_together(&cluster) {
                cluster.open(&names[1]);
                assert!(results.all(|(_, result)| result.is_ok()));
                continue;
            }
            let cancels_before = cancels.heard().len();
            drop(results);
            // The handles resolved at once; the cancel reaches the serving process a moment
            // later. The gate opens once the server has passed it on (to this test's
            // subscription too), and a moment more: otherwise, on a loaded machine, the queued
            // tasks could all run before their cancel came (the cluster's documented race).
            wait_until("the cancel message", || cancels.heard().len() > cancels_before);
            std::thread::sleep(Duration::from_millis(100));
            cluster.open(&names[1]);
            break names;
        };
        // A later task ran on the only slot: every part of the parcel had its turn.
        let later = tally::dispatch_on(&pool, dir.clone(), "later".into(), false);
        assert_eq!(later.join(), Ok(serving.pid()));
        let ran: Vec<usize> = names.iter().map(|name| runs(&cluster, name)).collect();
        assert!(ran.iter().all(|&runs| runs <= 1), "a task ran twice: {ran:?}");
        assert!(ran.contains(&0), "every task ran: none was cancelled ({ran:?})");
        // In order: those that ran were handed to the slot before the cancel, the rest not.
        assert!(ran.windows(2).all(|pair| pair[0] >= pair[1]), "{ran:?}");
        serving.assert_running();
    });
}

#[test]
fn a_serving_process_killed_holding_a_parcel_leaves_its_tasks_to_the_at_most_once_rule() {
    run("a killed serving process's parcel", || {
        let cluster = Cluster::start("parcelkill");
        let first = cluster.serve(1, "1s");
        let pool = cluster.pool();
        std::thread::scope(|scope| {
            let (names, results) = run_held_parcel(scope, &cluster, &pool, "n", 8, 0);
            let second = cluster.serve(1, "1s");
            kill_9(first.pid());
            let mut results = results.join().expect("the map");
            results.sort_by_key(|(index, _)| *index);
            let (_, held) = &results[0];
            assert!(matches!(held, Err(TaskError::WorkerDied { .. })), "{held:?}");
            assert_eq!(runs(&cluster, &names[0]), 1, "the started task was not rerun");
            // Redelivered once the lease ran out: those their caller never heard start run on
            // the other serving process, once; those it heard start (waiting behind the first in
            // its worker's queue) are reported lost, and never ran.
            for (index, result) in &results[1..] {
                let name = &names[*index];
                match result {
                    Ok(pid) => {
                        assert_eq!(*pid, second.pid(), "{name}");
                        assert_eq!(runs(&cluster, name), 1, "{name}");
                    }
                    Err(TaskError::WorkerDied { .. }) => {
                        assert_eq!(runs(&cluster, name), 0, "{name}");
                    }
                    Err(error) => panic!("{name}: {error}"),
                }
            }
        });
    });
}
/// The MessagePack of `square { x }` (a map of its one argument) and of its output.
fn square_value(x: u8) -> Vec<u8> {
    vec![0x81, 0xa1, b'x', x]
}

/// The endings of a raw caller's tasks, each call with its kind and body (single replies, or
/// several in one `endings` reply: three frames each).
fn endings_of(replies: &[(String, Vec<u8>)]) -> Vec<(String, String, Vec<u8>)> {
    let header = |head: &str, name: &str| {
        head.lines().find_map(|line| line.strip_prefix(&format!("{name}: ")).map(str::to_owned))
    };
    let mut endings = Vec::new();
    for (head, body) in replies {
        let kind = header(head, "Parallel-Kind").expect("a kind");
        if ["started", "alive", "progress"].contains(&kind.as_str()) {
            continue;
        }
        if kind != "endings" {
            endings.push((header(head, "Parallel-Call").expect("a call"), kind, body.clone()));
            continue;
        }
        let mut frames = Vec::new();
        let mut rest = &body[..];
        while let Some((length, tail)) = rest.split_first_chunk::<4>() {
            let length = u32::from_le_bytes(*length) as usize;
            frames.push(tail[..length].to_vec());
            rest = &tail[length..];
        }
        for triple in frames.chunks(3) {
            let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).expect("text");
            endings.push((text(&triple[0]), text(&triple[1]), triple[2].clone()));
        }
    }
    endings.sort();
    endings
}

/// A parcel with a task whose value does not read, and one whose body is cut short in its last
/// task: each garbled task's caller hears why, and the others run.
#[test]
fn a_garbled_task_in_a_parcel_is_reported_to_its_caller_and_the_others_run() {
    run("a garbled task in a parcel", || {
        let cluster = Cluster::start("parcelgarbled");
        let mut serving = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let (_, subject) = consumer_of(&cluster, "square");
        let subject = subject.replace('*', "raw");
        let reply = format!("{}.reply.raw", cluster.namespace);
        let frame = |value: &[u8]| {
            let mut framed = (value.len() as u32).to_le_bytes().to_vec();
            framed.extend_from_slice(value);
            framed
        };
        let headers = |calls: &str| {
            format!(
                "Parallel-Calls: {calls}\r\nParallel-Reply: {reply}\r\nParallel-Task: square\r\n"
            )
        };
        let body =
            [frame(&square_value(3)), frame(&[0xc1, 0xc1]), frame(&square_value(4))].concat();
        let port = cluster.server.port();
        let replies = raw::publish_and_listen(
            port,
            &subject,
            &headers("1.1,2.1,3.1"),
            &body,
            &reply,
            |got| endings_of(got).len() >= 3,
        );
        let endings = endings_of(&replies);
        assert_eq!(endings.len(), 3, "{endings:?}");
        assert_eq!(
            (&endings[0].0[..], &endings[0].1[..], &endings[0].2[..]),
            ("1.1", "output", &[9][..])
        );
        assert_eq!((&endings[1].0[..], &endings[1].1[..]), ("2.1", "ended"), "{endings:?}");
        assert_eq!(
            (&endings[2].0[..], &endings[2].1[..], &endings[2].2[..]),
            ("3.1", "output", &[16][..])
        );
        // The last value's length runs past the body's end: the task before it runs.
        let mut cut = [frame(&square_value(5)), frame(&square_value(6))].concat();
        cut.truncate(cut.len() - 1);
        let replies =
            raw::publish_and_listen(port, &subject, &headers("4.1,5.1"), &cut, &reply, |got| {
                endings_of(got).len() >= 2
            });
        let endings = endings_of(&replies);
        assert_eq!(
            (&endings[0].0[..], &endings[0].1[..], &endings[0].2[..]),
            ("4.1", "output", &[25][..])
        );
        assert_eq!((&endings[1].0[..], &endings[1].1[..]), ("5.1", "ended"), "{endings:?}");
        let why = String::from_utf8_lossy(&endings[1].2);
        assert!(why.contains("has 3 left"), "{why}");
        // Nothing went to the dead letters, the stream let both go, and serving goes on.
        let tasks = format!("$JS.API.STREAM.INFO.{}_tasks", cluster.namespace);
        wait_until("the task stream to let them go", || {
            raw::api(port, &tasks, "")["state"]["messages"] == 0
        });
        let dead = format!("$JS.API.STREAM.INFO.{}_dead", cluster.namespace);
        assert_eq!(raw::api(port, &dead, "")["state"]["messages"], 0);
        serving.assert_running();
        assert_eq!(square::dispatch_on(&pool, 12).join(), Ok(144));
    });
}

/// SIGTERM while a parcel's first task holds the only slot: the parcel cannot go back whole (a
/// part of it went to the slot), so its other tasks run here, then the process exits 0.
#[test]
fn sigterm_while_a_parcel_runs_finishes_its_tasks_here_and_exits_0() {
    run("drain with a parcel", || {
        let cluster = Cluster::start("parceldrain");
        let mut first = cluster.serve(1, "2s");
        let pool = cluster.pool();
        let names = std::thread::scope(|scope| {
            let (names, results) = run_held_parcel(scope, &cluster, &pool, "d", 12, 0);
            first.sigterm();
            // The drain has begun while the first task holds the slot.
            std::thread::sleep(Duration::from_millis(200));
            cluster.open(&names[0]);
            let results = results.join().expect("the map");
            assert_eq!(results.len(), 12);
            for (index, result) in results {
                assert_eq!(result, Ok(first.pid()), "{}", names[index]);
            }
            names
        });
        let status = first.wait();
        assert_eq!(status.code(), Some(0), "{}", first.output());
        for name in &names {
            assert_eq!(runs(&cluster, name), 1, "{name}");
        }
    });
}
