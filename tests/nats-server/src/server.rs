//! A running `nats-server` with JetStream on 127.0.0.1: its options, its start and readiness,
//! restarts on the same port and store, and its end.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::binary::{last_lines, nats_server_binary};

/// How long a server may take to be ready before [`NatsServerBuilder::start`] gives up. Generous:
/// CI machines run many test binaries on few cores.
const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a graceful [`NatsServer::stop`] may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Free ports are picked by binding port 0 and letting it go, so another process can take the
/// port before the server binds it: start retries on a new port this many times.
const PORT_ATTEMPTS: usize = 5;

/// The line a server logs once it listens for clients, JetStream included.
const READY_LINE: &str = "Server is ready";

/// Lines of the server's log that an error or a panicking test shows.
const LOG_TAIL_LINES: usize = 30;

/// How clients must authenticate.
#[derive(Clone)]
enum Auth {
    None,
    Token(String),
    UserPassword { user: String, password: String },
}

/// Options of a test server; [`NatsServer::builder`] makes one.
///
/// ```
/// use nats_server_harness::NatsServer;
///
/// let server = NatsServer::builder().token("s3cret").max_payload(64 * 1024).start()?;
/// assert_eq!(server.url_with_auth(), format!("nats://s3cret@127.0.0.1:{}", server.port()));
/// # Ok::<(), String>(())
/// ```
#[must_use]
#[derive(Clone)]
pub struct NatsServerBuilder {
    auth: Auth,
    max_payload: Option<u32>,
    #[cfg(feature = "tls")]
    tls: bool,
    #[cfg(feature = "creds")]
    operator: bool,
    startup_timeout: Duration,
}

impl fmt::Debug for NatsServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match self.auth {
            Auth::None => "none",
            Auth::Token(_) => "token",
            Auth::UserPassword { .. } => "user and password",
        };
        let mut debug = f.debug_struct("NatsServerBuilder");
        debug.field("auth", &auth).field("max_payload", &self.max_payload);
        #[cfg(feature = "tls")]
        debug.field("tls", &self.tls);
        #[cfg(feature = "creds")]
        debug.field("operator", &self.operator);
        debug.field("startup_timeout", &self.startup_timeout).finish()
    }
}

impl NatsServerBuilder {
    /// Clients must present this token (`--auth TOKEN`): `nats://TOKEN@127.0.0.1:PORT`.
    pub fn token(mut self, token: &str) -> Self {
        self.auth = Auth::Token(token.to_owned());
        self
    }

    /// Clients must present this user and password (`--user`, `--pass`):
    /// `nats://USER:PASSWORD@127.0.0.1:PORT`.
    pub fn user_password(mut self, user: &str, password: &str) -> Self {
        self.auth = Auth::UserPassword { user: user.to_owned(), password: password.to_owned() };
        self
    }

    /// The largest message the server accepts, in bytes (default 1 MiB; at most 64 MiB), for
    /// tests of payloads beyond the server's limit.
    pub fn max_payload(mut self, bytes: u32) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// Clients must speak TLS; the server's certificate is signed by a certificate authority made
    /// for this server, whose certificate [`NatsServer::ca_cert`] gives. The certificate names
    /// `127.0.0.1` and `localhost`.
    #[cfg(feature = "tls")]
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Decentralized authentication (operator mode): the server trusts an operator made for it,
    /// whose account `tasks` has JetStream without limits, and accepts the users that account
    /// signs; [`NatsServer::creds`] gives the `.creds` file of one (its JWT and NKey seed), and
    /// [`write_stranger_creds`](crate::write_stranger_creds) makes one that it refuses. The keys
    /// and JWTs live in the server's temporary directory.
    #[cfg(feature = "creds")]
    pub fn operator(mut self) -> Self {
        self.operator = true;
        self
    }

    /// How long the server may take to be ready (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts the server on a free port of 127.0.0.1 with JetStream in a temporary store, and
    /// returns once it is ready: it logged "Server is ready" and sent its `INFO` line to a client.
    ///
    /// # Errors
    ///
    /// No `nats-server` (see [`nats_server_binary`](crate::nats_server_binary)), a temporary
    /// directory that cannot be made, or a server that exits or is not ready in time; the text
    /// ends with the server's last log lines.
    pub fn start(self) -> Result<NatsServer, String> {
        let binary = nats_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("nats-server-")
            .tempdir()
            .map_err(|error| format!("cannot create a temporary directory: {error}"))?;
        let store = dir.path().join("store");
        fs::create_dir(&store)
            .map_err(|error| format!("cannot create {}: {error}", store.display()))?;
        let config = self.write_config(dir.path())?;
        #[cfg(feature = "creds")]
        let creds = self.operator.then(|| dir.path().join("creds").join(crate::creds::USER_CREDS));
        let mut server = NatsServer {
            binary,
            port: 0,
            log: dir.path().join("nats-server.log"),
            store,
            config,
            auth: self.auth,
            #[cfg(feature = "tls")]
            ca_cert: self.tls.then(|| dir.path().join("tls").join("ca.pem")),
            #[cfg(feature = "creds")]
            creds,
            startup_timeout: self.startup_timeout,
            child: None,
            dir,
        };
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port()?;
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(Launch::PortTaken(error)) => last_error = error,
                Err(Launch::Failed(error)) => return Err(error),
            }
        }
        Err(format!("no free port after {PORT_ATTEMPTS} attempts: {last_error}"))
    }

    /// The configuration file of the options that have no command-line flag, if any.
    fn write_config(&self, dir: &Path) -> Result<Option<PathBuf>, String> {
        let mut text = String::new();
        if let Some(bytes) = self.max_payload {
            text.push_str(&format!("max_payload: {bytes}\n"));
        }
        #[cfg(feature = "tls")]
        if self.tls {
            let files = crate::tls::generate(&dir.join("tls"))?;
            text.push_str(&format!(
                "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
                files.server_cert, files.server_key
            ));
        }
        #[cfg(feature = "creds")]
        if self.operator {
            text.push_str(&crate::creds::generate(&dir.join("creds"))?);
        }
        if text.is_empty() {
            return Ok(None);
        }
        let path = dir.join("nats-server.conf");
        fs::write(&path, text)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        Ok(Some(path))
    }
}

/// A `nats-server` with JetStream, listening on 127.0.0.1, for one test. Dropping it kills the
/// server and removes its temporary directory (store, log, configuration, certificates); a test
/// that panics while holding it prints the server's last log lines first.
///
/// ```
/// use std::io::{BufRead, BufReader};
/// use std::net::TcpStream;
///
/// let server = nats_server_harness::NatsServer::start()?;
/// let mut info = String::new();
/// BufReader::new(TcpStream::connect(("127.0.0.1", server.port())).unwrap())
///     .read_line(&mut info)
///     .unwrap();
/// assert!(info.starts_with("INFO {"), "{info}");
/// # Ok::<(), String>(())
/// ```
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    log: PathBuf,
    store: PathBuf,
    config: Option<PathBuf>,
    auth: Auth,
    #[cfg(feature = "tls")]
    ca_cert: Option<PathBuf>,
    #[cfg(feature = "creds")]
    creds: Option<PathBuf>,
    startup_timeout: Duration,
    /// `None` once killed or stopped, until a restart.
    child: Option<Child>,
    /// Last, so that the directory goes after the server when dropped.
    dir: TempDir,
}

/// Why a launch failed: the port was taken by another process (try another), or anything else.
enum Launch {
    PortTaken(String),
    Failed(String),
}

impl NatsServer {
    /// A server without authentication, TLS or a lowered payload limit:
    /// `NatsServer::builder().start()`.
    ///
    /// # Errors
    ///
    /// As [`NatsServerBuilder::start`].
    pub fn start() -> Result<Self, String> {
        Self::builder().start()
    }

    /// Options for a server, to start with [`NatsServerBuilder::start`].
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder {
            auth: Auth::None,
            max_payload: None,
            #[cfg(feature = "tls")]
            tls: false,
            #[cfg(feature = "creds")]
            operator: false,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }

    /// The server's address for clients without credentials: `nats://127.0.0.1:PORT`, or
    /// `tls://127.0.0.1:PORT` when it requires TLS.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.port)
    }

    /// The address with the credentials that the server requires in it, as the cluster backend
    /// takes them: `nats://TOKEN@127.0.0.1:PORT` or `nats://USER:PASSWORD@127.0.0.1:PORT` (no
    /// escaping: tests choose credentials that need none); [`url`](Self::url) without
    /// authentication.
    pub fn url_with_auth(&self) -> String {
        let credentials = match &self.auth {
            Auth::None => String::new(),
            Auth::Token(token) => format!("{token}@"),
            Auth::UserPassword { user, password } => format!("{user}:{password}@"),
        };
        format!("{}://{credentials}127.0.0.1:{}", self.scheme(), self.port)
    }

    fn scheme(&self) -> &'static str {
        #[cfg(feature = "tls")]
        if self.ca_cert.is_some() {
            return "tls";
        }
        "nats"
    }

    /// The port the server listens on; a restart keeps it.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory; a restart keeps it and its streams.
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// The file that receives the server's standard output and error, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The certificate (PEM) of the authority that signed the server's certificate, for clients
    /// to trust; `None` without [`tls`](NatsServerBuilder::tls).
    #[cfg(feature = "tls")]
    pub fn ca_cert(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// The `.creds` file of a user that the server accepts, for `PARALLEL_CLUSTER_CREDS`; `None`
    /// without [`operator`](NatsServerBuilder::operator).
    #[cfg(feature = "creds")]
    pub fn creds(&self) -> Option<&Path> {
        self.creds.as_deref()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server's process is running (it has not exited, been killed or stopped).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would; [`restart`](Self::restart) starts it
    /// again. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Either fails only when the child has already exited and been reaped.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server gracefully (SIGTERM: it closes its clients and flushes JetStream), killing
    /// it if it has not exited within 10 s. Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// The signal could not be sent, or the server had to be killed.
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        // std sends no signal but SIGKILL; the server's own `--signal` sends SIGTERM by pid.
        let signalled = Command::new(&self.binary)
            .arg("--signal")
            .arg(format!("term={}", child.id()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while signalled.as_ref().is_ok_and(|status| status.success()) && Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        match signalled {
            Ok(status) if status.success() => Err(format!(
                "nats-server did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed; {}",
                self.describe_log()
            )),
            Ok(status) => Err(format!(
                "`nats-server --signal term=PID` failed ({status}); the server was killed"
            )),
            Err(error) => {
                Err(format!("cannot run `nats-server --signal`: {error}; the server was killed"))
            }
        }
    }

    /// Starts the server again, on the same port with the same store, options and log: JetStream
    /// streams and their messages survive. A running server is stopped gracefully first; call
    /// [`kill`](Self::kill) before for a restart after a crash.
    ///
    /// # Errors
    ///
    /// As [`stop`](Self::stop), or the server does not come back (the port was taken meanwhile,
    /// or it is not ready in time), with its last log lines.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop()?;
        match self.launch() {
            Ok(()) => Ok(()),
            Err(Launch::PortTaken(error) | Launch::Failed(error)) => Err(error),
        }
    }

    /// Spawns the server on `self.port` and waits until it is ready.
    fn launch(&mut self) -> Result<(), Launch> {
        let failed = |what: String| Launch::Failed(what);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|error| failed(format!("cannot open {}: {error}", self.log.display())))?;
        // Readiness is read from what this launch appends, not from an earlier run's lines.
        let from = log.metadata().map(|meta| meta.len()).unwrap_or(0);
        let stderr = log
            .try_clone()
            .map_err(|error| failed(format!("cannot share {}: {error}", self.log.display())))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--jetstream")
            .arg("--store_dir")
            .arg(&self.store)
            .args(["--addr", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            // The same name across restarts: the server keeps its JetStream identity.
            .args(["--server_name", "parallel-test"]);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        match &self.auth {
            Auth::None => {}
            Auth::Token(token) => {
                command.arg("--auth").arg(token);
            }
            Auth::UserPassword { user, password } => {
                command.arg("--user").arg(user).arg("--pass").arg(password);
            }
        }
        let child =
            command.stdin(Stdio::null()).stdout(log).stderr(stderr).spawn().map_err(|error| {
                failed(format!("cannot run {}: {error}", self.binary.display()))
            })?;
        self.child = Some(child);
        match self.wait_ready(from) {
            Ok(()) => Ok(()),
            Err(error) => {
                self.kill();
                let since = self.log_since(from);
                let why = format!("{error}; {}", self.describe_log());
                if since.contains("address already in use") {
                    Err(Launch::PortTaken(why))
                } else {
                    Err(Launch::Failed(why))
                }
            }
        }
    }

    /// Waits until the log, past `from`, says the server is ready and the server greets a client
    /// with `INFO`; fails if the process exits or the startup timeout passes.
    fn wait_ready(&mut self, from: u64) -> Result<(), String> {
        let deadline = Instant::now() + self.startup_timeout;
        let mut logged_ready = false;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "nats-server on port {} exited before it was ready ({status})",
                    self.port
                ));
            }
            logged_ready = logged_ready || self.log_since(from).contains(READY_LINE);
            if logged_ready && greets_with_info(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nats-server on port {} was not ready within {:?}",
                    self.port, self.startup_timeout
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The log's text from byte `from` on.
    fn log_since(&self, from: u64) -> String {
        let mut text = Vec::new();
        if let Ok(mut file) = File::open(&self.log)
            && file.seek(SeekFrom::Start(from)).is_ok()
        {
            let _ = file.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// "its log (PATH) ends: ..." for error texts.
    fn describe_log(&self) -> String {
        format!(
            "its log ({}) ends: {}",
            self.log.display(),
            last_lines(&self.log_tail(LOG_TAIL_LINES), 10)
        )
    }
}

impl fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url())
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "nats-server on port {} ({}), last lines of its log:\n{}",
                self.port,
                self.binary.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        self.kill();
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| format!("cannot find a free port on 127.0.0.1: {error}"))
}

/// Whether a server on `port` accepts a connection and sends its `INFO` line.
fn greets_with_info(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    if stream.set_read_timeout(Some(Duration::from_secs(2))).is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO ")
}
