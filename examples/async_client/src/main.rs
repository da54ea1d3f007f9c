//! `async fn` tasks that keep a tokio TCP connection in their worker's [`Environment`]: hundreds
//! of lookups over a handful of connections.
//!
//! `main` starts a small price service on 127.0.0.1 (a line protocol on a tokio `TcpListener`,
//! answering each request after a little artificial latency), then dispatches a few hundred
//! `lookup` tasks. Each is an `async fn` run on its worker's tokio runtime, which the first async
//! task of the worker creates and every later one reuses: the `TcpStream` a task leaves in the
//! `Environment` is still registered with a live runtime when the worker's next task takes it.
//! The service closes a connection after [`REQUESTS_PER_CONNECTION`] requests, as HTTP servers do
//! with keep-alive; a task that finds its connection closed connects again and asks once more.
//!
//! ```text
//! cargo run -p async_client                                    # the process backend
//! PARALLEL_BACKEND=thread cargo run -p async_client            # threads
//! cargo run -p async_client -- --backend thread --workers 4
//! ```
//!
//! Every answer is checked against the price list, and the example exits with status 1 when one
//! is wrong, or when the workers opened more connections than that closing forces.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Environment, Pool, RemoteError, TaskError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How many lookups `main` dispatches.
const LOOKUPS: u64 = 400;
/// How long the service takes to answer a request.
const LATENCY: Duration = Duration::from_millis(1);
/// How many requests the service answers on one connection before it closes it.
const REQUESTS_PER_CONNECTION: u64 = 100;
/// How long a task waits for the service to answer before it gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The price of `key` in cents, or `None` for an item the service does not list (every 25th).
fn price_cents(key: &str) -> Option<u64> {
    let number: u64 = key.strip_prefix("item-")?.parse().ok()?;
    (!number.is_multiple_of(25)).then(|| 100 + number.wrapping_mul(0x9E37_79B9) % 99_900)
}

/// The key of lookup `i`: a spread of items, some asked more than once, some not listed.
fn key(i: u64) -> String {
    format!("item-{}", i * 7919 % 1000)
}

/// Serves one connection: a `PRICE <key>` line in, a `<connection> <cents>` (or `<connection>
/// unknown`) line out, until the client leaves or [`REQUESTS_PER_CONNECTION`] were answered.
async fn serve_connection(stream: TcpStream, connection: u64) -> io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    for _ in 0..REQUESTS_PER_CONNECTION {
        let Some(line) = lines.next_line().await? else { return Ok(()) };
        tokio::time::sleep(LATENCY).await;
        let reply = match line.strip_prefix("PRICE ").map(price_cents) {
            Some(Some(cents)) => format!("{connection} {cents}\n"),
            Some(None) => format!("{connection} unknown\n"),
            None => format!("{connection} error: not a PRICE request: {line:?}\n"),
        };
        writer.write_all(reply.as_bytes()).await?;
    }
    // Dropping both halves closes the connection: the client has to connect again.
    Ok(())
}

/// Starts the price service on a thread of its own, with its own runtime, and returns its
/// address and the count of connections it accepted.
fn start_service() -> io::Result<(SocketAddr, Arc<AtomicU64>)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let address = listener.local_addr()?;
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        runtime.block_on(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let connection = counter.fetch_add(1, Ordering::Relaxed) + 1;
                // A client that leaves mid-request is its own business.
                tokio::spawn(async move { drop(serve_connection(stream, connection).await) });
            }
        })
    });
    Ok((address, accepted))
}

/// A connection to the price service, kept in a worker's `Environment` between tasks.
struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    async fn open(address: &str) -> io::Result<Connection> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream: BufReader::new(stream) })
    }

    /// Sends one request and reads its reply line.
    async fn ask(&mut self, key: &str) -> io::Result<String> {
        let exchange = async {
            self.stream.get_mut().write_all(format!("PRICE {key}\n").as_bytes()).await?;
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                let closed = "the service closed the connection";
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, closed));
            }
            Ok(line)
        };
        tokio::time::timeout(REPLY_TIMEOUT, exchange).await.unwrap_or_else(|_| {
            Err(io::Error::new(io::ErrorKind::TimedOut, "the service did not answer in time"))
        })
    }
}

/// A lookup's answer, with the connection that carried it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Quote {
    /// The price in cents; `None` when the service does not list the item.
    cents: Option<u64>,
    /// The service's number for the connection that carried the request.
    connection: u64,
    /// Whether this task had to connect (first use on its worker, or a closed connection).
    connected: bool,
}

/// Asks the price service at `address` for `key`, over the worker's connection.
#[task]
async fn lookup(env: &mut Environment, address: String, key: String) -> Result<Quote, RemoteError> {
    let slot = format!("price-service:{address}");
    if let Some(connection) = env.get_mut::<Connection>(&slot) {
        match connection.ask(&key).await {
            Ok(reply) => return parse_reply(&reply, false),
            // Closed by the service since the last task (or broken): connect again below. A
            // lookup is safe to ask twice.
            Err(_) => {
                env.delete(&slot);
            }
        }
    }
    let mut connection = Connection::open(&address).await?;
    let reply = connection.ask(&key).await?;
    env.set(slot, connection);
    parse_reply(&reply, true)
}

/// Reads a `<connection> <cents>` or `<connection> unknown` reply line.
fn parse_reply(reply: &str, connected: bool) -> Result<Quote, RemoteError> {
    let bad = || RemoteError::msg(format!("unexpected reply from the service: {reply:?}"));
    let (connection, price) = reply.trim_end().split_once(' ').ok_or_else(bad)?;
    let connection = connection.parse().map_err(|_| bad())?;
    let cents = match price {
        "unknown" => None,
        cents => Some(cents.parse().map_err(|_| bad())?),
    };
    Ok(Quote { cents, connection, connected })
}

/// Parses `[--backend thread|process] [--workers N]` into a pool.
fn pool_from_args(mut args: impl Iterator<Item = String>) -> Result<Pool, String> {
    let mut builder = Pool::builder();
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        builder = match (arg.as_str(), value.as_str()) {
            ("--backend", "thread") => builder.backend(Backend::Thread),
            ("--backend", "process") => builder.backend(Backend::Process),
            ("--workers", count) => builder.workers(
                count.parse().map_err(|_| format!("--workers takes a number, not {count:?}"))?,
            ),
            _ => {
                return Err(format!(
                "usage: async_client [--backend thread|process] [--workers N]; not {arg} {value}"
            ))
            }
        };
    }
    builder.build().map_err(|error| format!("cannot build the pool: {error}"))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("async_client: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the service, runs the lookups and checks their answers.
fn run() -> Result<(), String> {
    let pool = pool_from_args(std::env::args().skip(1))?;
    let (address, accepted) =
        start_service().map_err(|error| format!("cannot start the price service: {error}"))?;

    let started = Instant::now();
    let handles: Vec<_> = (0..LOOKUPS)
        .map(|i| (key(i), lookup::dispatch_on(&pool, address.to_string(), key(i))))
        .collect();
    let mut served: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut connected, mut unknown) = (0u64, 0u64);
    let mut wrong = Vec::new();
    for (key, handle) in handles {
        let quote = match handle.join() {
            Ok(quote) => quote,
            Err(TaskError::Failed(error)) => return Err(format!("lookup({key}): {error}")),
            Err(other) => return Err(format!("lookup({key}) did not run: {other}")),
        };
        *served.entry(quote.connection).or_default() += 1;
        connected += u64::from(quote.connected);
        unknown += u64::from(quote.cents.is_none());
        if quote.cents != price_cents(&key) {
            wrong.push(format!(
                "lookup({key}) = {:?}, expected {:?}",
                quote.cents,
                price_cents(&key)
            ));
        }
    }
    let elapsed = started.elapsed();

    let backend = if pool.backend() == Backend::Process { "process" } else { "thread" };
    println!(
        "{backend} backend, {} workers: {LOOKUPS} async lookups ({unknown} of unlisted items) in \
         {:.2} s",
        pool.workers(),
        elapsed.as_secs_f64()
    );
    let counts: Vec<String> = served.values().map(u64::to_string).collect();
    println!(
        "{} connections served {LOOKUPS} lookups ({}); the service accepted {} and closes each \
         after {REQUESTS_PER_CONNECTION} requests",
        served.len(),
        counts.join(" + "),
        accepted.load(Ordering::Relaxed),
    );

    if let Some(first) = wrong.first() {
        return Err(format!("{} wrong answer(s), first: {first}", wrong.len()));
    }
    // Each worker connects once, then once more each time the service closed its connection.
    let most = pool.workers() as u64 + LOOKUPS / REQUESTS_PER_CONNECTION;
    if connected != served.len() as u64 || connected > most {
        return Err(format!(
            "{connected} connections opened (at most {most} expected) for {} seen: the \
             Environment or the runtime did not keep them",
            served.len()
        ));
    }
    Ok(())
}
