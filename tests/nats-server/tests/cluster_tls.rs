//! TLS end to end: a cluster pool and a serving process reach a real nats-server that requires
//! TLS, trusting the authority that signed its certificate through `PARALLEL_CLUSTER_CA`; without
//! it, the connection is refused with the certificate error.
//!
//! The only test of its binary: it sets `PARALLEL_CLUSTER_CA` for the caller in this process.

use std::process::{Command, Stdio};

use nats_server_harness::NatsServer;
use parallel::{task, Backend, Pool};

#[task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn pool(url: &str) -> Result<Pool, parallel::Error> {
    Pool::builder().backend(Backend::Cluster).cluster(url).namespace("tls").build()
}

#[test]
fn a_cluster_speaks_tls_with_the_server_s_authority_and_is_refused_without_it() {
    let server = NatsServer::builder().tls().start().expect("a TLS nats-server starts");
    let url = server.url();
    assert!(url.starts_with("tls://127.0.0.1:"), "{url}");
    let authority = server.ca_cert().expect("a TLS server has its authority").to_owned();

    // The system's roots do not know the test's authority.
    let error = pool(&url).expect_err("an unknown authority is refused");
    assert!(error.is_connection(), "{error}");
    assert!(error.to_string().contains("certificate"), "{error}");

    // SAFETY: this is the only test of this binary and nothing of it runs on another thread
    // yet; the variable is read when a pool connects, below.
    unsafe { std::env::set_var("PARALLEL_CLUSTER_CA", &authority) };
    let log = tempfile::NamedTempFile::new().expect("a log file");
    let mut serving = Command::new(std::env::current_exe().expect("the test binary"))
        .env("PARALLEL_SERVE", &url)
        .env("PARALLEL_NAMESPACE", "tls")
        .env("PARALLEL_WORKERS", "1")
        .env("PARALLEL_CLUSTER_CA", &authority)
        .stdin(Stdio::null())
        .stdout(log.reopen().expect("the log"))
        .stderr(log.reopen().expect("the log"))
        .spawn()
        .expect("a serving process starts");
    let pool = pool(&url).expect("the authority makes the server's certificate valid");
    let sum = add::dispatch_on(&pool, 2, 3).join();
    let _ = serving.kill();
    let _ = serving.wait();
    assert_eq!(
        sum,
        Ok(5),
        "the serving process said: {}",
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
}
