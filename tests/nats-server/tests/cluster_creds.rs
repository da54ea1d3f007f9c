//! Credentials files end to end: a nats-server in operator mode (decentralized authentication)
//! accepts a caller and a serving process that present a user's `.creds` file through
//! `PARALLEL_CLUSTER_CREDS`, and refuses, with a clear error, a caller without one, a user its
//! operator did not sign, and a file that is not a credentials file or is not there; a serving
//! process given a bad file exits 1 with one line that says why.
//!
//! `PARALLEL_CLUSTER_CREDS` is read from this process's environment when a pool connects, so the
//! tests that set it take turns ([`serially`]).

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nats_server_harness::{write_stranger_creds, NatsServer};
use parallel::{task, Backend, Pool};

const CREDS: &str = "PARALLEL_CLUSTER_CREDS";

/// How long a serving process that cannot connect may take to exit.
const EXIT_LIMIT: Duration = Duration::from_secs(30);

#[task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[task]
fn reverse(bytes: Vec<u8>) -> Vec<u8> {
    bytes.into_iter().rev().collect()
}

/// Held by every test for its whole run: the environment changes only while no other test runs.
static SERIAL: Mutex<()> = Mutex::new(());

fn serially() -> MutexGuard<'static, ()> {
    // A test that failed while holding it poisoned it; the others still run.
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sets `PARALLEL_CLUSTER_CREDS` for this process's pools, or removes it.
fn set_creds(path: Option<&Path>) {
    // SAFETY: every test of this binary holds `SERIAL` (see `serially`) from before it changes
    // the variable until it has dropped its pools, so no other thread of a test is running; the
    // variable is read by `Pool::build` on this thread, through std.
    unsafe {
        match path {
            Some(path) => std::env::set_var(CREDS, path),
            None => std::env::remove_var(CREDS),
        }
    }
}

fn pool(server: &NatsServer) -> Result<Pool, parallel::Error> {
    Pool::builder().backend(Backend::Cluster).cluster(server.url()).namespace("creds").build()
}

fn operator_server() -> NatsServer {
    NatsServer::builder().operator().start().expect("a nats-server in operator mode starts")
}

/// This test binary started as a serving process of `server` with `creds` (none when `None`).
fn serving(server: &NatsServer, creds: Option<&Path>) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .env("PARALLEL_SERVE", server.url())
        .env("PARALLEL_NAMESPACE", "creds")
        .env("PARALLEL_WORKERS", "1")
        .env_remove(CREDS)
        .stdin(Stdio::null());
    if let Some(creds) = creds {
        command.env(CREDS, creds);
    }
    command
}

/// Runs a serving process that is expected to exit, killing it past [`EXIT_LIMIT`].
fn exits(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("a serving process starts");
    let deadline = Instant::now() + EXIT_LIMIT;
    while child.try_wait().expect("the serving process can be waited for").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("its output")
}

#[test]
fn a_caller_and_a_serving_process_with_the_user_s_creds_file_run_tasks() {
    let _serial = serially();
    let server = operator_server();
    let creds = server.creds().expect("an operator-mode server has a user").to_owned();
    let log = tempfile::NamedTempFile::new().expect("a log file");
    let mut serving = serving(&server, Some(&creds))
        .stdout(log.reopen().expect("the log"))
        .stderr(log.reopen().expect("the log"))
        .spawn()
        .expect("a serving process starts");
    set_creds(Some(&creds));
    let pool = pool(&server);
    set_creds(None);
    let said = || fs::read_to_string(log.path()).unwrap_or_default();
    let pool = pool.unwrap_or_else(|error| {
        panic!("the user's credentials are accepted: {error}; the serving process said: {}", said())
    });
    // Over the server's 1 MiB message limit: through the object store, so the account's
    // JetStream must allow streams, consumers and an object store.
    let big: Vec<u8> = (0..1_100_000u32).map(|i| (i % 251) as u8).collect();
    let mut expected = big.clone();
    expected.reverse();
    let sum = add::dispatch_on(&pool, 2, 3).join();
    let reversed = reverse::dispatch_on(&pool, big).join();
    drop(pool);
    let _ = serving.kill();
    let _ = serving.wait();
    assert_eq!(sum, Ok(5), "the serving process said: {}", said());
    match reversed {
        Ok(reversed) => assert!(reversed == expected, "the large value came back changed"),
        Err(error) => panic!("through the object store: {error}; it said: {}", said()),
    }
}

#[test]
fn a_caller_without_credentials_is_refused_by_the_operator_s_server() {
    let _serial = serially();
    let server = operator_server();
    set_creds(None);
    let error = pool(&server).expect_err("no credentials, no connection");
    let message = error.to_string();
    assert!(error.is_connection(), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{}", server.port())), "{message}");
    assert!(message.to_lowercase().contains("authorization violation"), "{message}");
}

#[test]
fn a_user_the_operator_did_not_sign_is_refused() {
    let _serial = serially();
    let server = operator_server();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stranger = write_stranger_creds(dir.path(), "stranger.creds").expect("a stranger");
    set_creds(Some(&stranger));
    let refused = pool(&server);
    set_creds(None);
    let error = refused.expect_err("a user of another operator is refused");
    let message = error.to_string();
    assert!(error.is_connection(), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{}", server.port())), "{message}");
    assert!(message.to_lowercase().contains("authorization violation"), "{message}");
    assert!(message.contains(&format!("{CREDS}={}", stranger.display())), "{message}");
    let secrets = fs::read_to_string(&stranger).expect("the stranger's file");
    for secret in secrets.lines().filter(|line| line.len() > 40) {
        assert!(!message.contains(secret), "the message shows the JWT or the seed: {message}");
    }
}

#[test]
fn a_creds_file_that_is_missing_or_garbled_is_a_configuration_error_naming_it() {
    let _serial = serially();
    let server = operator_server();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("missing.creds");
    let garbled = dir.path().join("garbled.creds");
    fs::write(&garbled, "-----BEGIN NATS USER JWT-----\nnot a JWT\n").expect("a garbled file");
    for (path, why) in [(&missing, "No such file"), (&garbled, "credentials file")] {
        set_creds(Some(path));
        let refused = pool(&server);
        set_creds(None);
        let error = refused.expect_err("a file that is not credentials is refused");
        let message = error.to_string();
        assert!(error.is_invalid_config(), "{message}");
        assert!(message.contains(&format!("{CREDS}={}", path.display())), "{message}");
        assert!(message.contains(why), "{message}");
        assert!(!message.contains("unreachable"), "the server is not the problem: {message}");
    }
}

#[test]
fn a_serving_process_with_a_bad_creds_file_exits_1_with_one_line_that_says_why() {
    let _serial = serially();
    let server = operator_server();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("missing.creds");
    let garbled = dir.path().join("garbled.creds");
    fs::write(&garbled, "not a credentials file\n").expect("a garbled file");
    let stranger = write_stranger_creds(dir.path(), "stranger.creds").expect("a stranger");
    for (creds, why) in [
        (None, "authorization violation"),
        (Some(&stranger), "authorization violation"),
        (Some(&missing), "no such file"),
        (Some(&garbled), "credentials file"),
    ] {
        let output = exits(serving(&server, creds.map(|path| path.as_path())));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let case = format!("with {creds:?}: {:?}, stderr: {stderr}", output.status);
        assert_eq!(output.status.code(), Some(1), "{case}");
        assert!(output.stdout.is_empty(), "{case}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line {case}");
        assert!(lines[0].starts_with("parallel: this process cannot serve tasks: "), "{case}");
        assert!(lines[0].to_lowercase().contains(why), "{case}");
        if let Some(path) = creds {
            assert!(lines[0].contains(&path.display().to_string()), "names the file {case}");
        }
    }
}
