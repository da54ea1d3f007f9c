//! Reaching the NATS servers: the URL list with its credentials, TLS, and the refusal of a
//! plaintext connection to a host that is not this machine.
//!
//! A URL is `nats://host:port` or `tls://host:port` (TLS required), with credentials in it as
//! `nats://TOKEN@host:port` or `nats://USER:PASSWORD@host:port`; several URLs are separated by
//! commas, and are servers of one cluster. Two variables complete it: `PARALLEL_CLUSTER_CREDS`,
//! a NATS credentials file (JWT and NKey seed), and `PARALLEL_CLUSTER_CA`, a PEM file of the
//! certificate authorities that sign the servers' certificates (the system's roots otherwise).
//! A plaintext URL to a host other than `localhost` or a loopback address is refused unless
//! `PARALLEL_CLUSTER_PLAINTEXT=1`: tasks, results and credentials would cross the network in
//! the clear.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, ServerAddr};
use tokio::sync::Notify;

/// The variable that names a NATS credentials file.
const CREDS_VARIABLE: &str = "PARALLEL_CLUSTER_CREDS";

/// Where a pool or a serving process connects, and under which namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// One URL or several, comma-separated.
    pub(crate) url: String,
    pub(crate) namespace: String,
}

/// Connects a pool's or a serving process's NATS client; `name` is how the server lists it.
///
/// # Errors
///
/// A message that says what was wrong: a malformed URL, plaintext to a remote host, a
/// credentials file that does not read, a server that cannot be reached or refuses the
/// credentials.
///
/// `reconnected` is notified each time the client is connected again after losing its server.
pub(crate) async fn connect(
    target: &Target,
    name: &str,
    reconnected: Arc<Notify>,
) -> Result<Client, String> {
    let servers = check(target)?;
    let mut options = ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        // After the first connection, a lost server is waited for, however long.
        .max_reconnects(None)
        .event_callback(move |event| {
            let reconnected = Arc::clone(&reconnected);
            async move {
                tracing::info!(%event, "cluster connection");
                if matches!(event, async_nats::Event::Connected) {
                    reconnected.notify_one();
                }
            }
        });
    let mut credentials = None;
    for server in &servers {
        if server.credentials.is_some() {
            if credentials.is_some() && credentials != server.credentials {
                return Err("the URLs carry different credentials; give them once".to_owned());
            }
            credentials.clone_from(&server.credentials);
        }
    }
    options = match credentials {
        Some(Credentials::Token(token)) => options.token(token),
        Some(Credentials::User { user, password }) => options.user_and_password(user, password),
        None => options,
    };
    let creds_file = creds_file()?;
    if let Some((_, text)) = &creds_file {
        // `creds_file` parsed it already.
        options = options.credentials(text).map_err(|error| error.to_string())?;
    }
    if let Some(path) = std::env::var_os("PARALLEL_CLUSTER_CA") {
        options = options.add_root_certificates(PathBuf::from(path));
    }
    if servers.iter().any(|server| server.is_tls) {
        options = options.require_tls(true);
    }
    let addresses = servers.iter().map(Server::address).collect::<Result<Vec<_>, _>>()?;
    let shown = servers.iter().map(Server::shown).collect::<Vec<_>>().join(",");
    options.connect(addresses).await.map_err(|error| {
        // Which credentials the server refused, when they came from a file.
        let from = match (&creds_file, error.kind()) {
            (
                Some((path, _)),
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication,
            ) => format!(" (the credentials of {CREDS_VARIABLE}={})", path.display()),
            _ => String::new(),
        };
        format!("cannot connect to the NATS server at {shown}{from}: {error}")
    })
}

/// The credentials file that `PARALLEL_CLUSTER_CREDS` names, if it is set: its path and text,
/// read and parsed.
///
/// # Errors
///
/// The file cannot be read, or is not a credentials file (a user JWT and an NKey seed between
/// their `-----BEGIN` and `------END` lines); the text names the variable and the file, never
/// the file's contents.
fn creds_file() -> Result<Option<(PathBuf, String)>, String> {
    let Some(path) = std::env::var_os(CREDS_VARIABLE) else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    let text =
        read_creds(&path).map_err(|why| format!("{CREDS_VARIABLE}={}: {why}", path.display()))?;
    Ok(Some((path, text)))
}

/// Reads `path` and checks that it is a NATS credentials file.
fn read_creds(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read it: {error}"))?;
    ConnectOptions::new().credentials(&text).map_err(|error| {
        format!(
            "not a NATS credentials file (a user JWT and its NKey seed, as `nsc` writes them): \
             {error}"
        )
    })?;
    Ok(text)
}

/// Checks the URLs of `target` without connecting: well formed, and no plaintext to another
/// machine unless `PARALLEL_CLUSTER_PLAINTEXT=1`; and the credentials file of
/// `PARALLEL_CLUSTER_CREDS`, if set: it reads, and is one.
///
/// # Errors
///
/// What is wrong, without the credentials.
pub(crate) fn check(target: &Target) -> Result<Vec<Server>, String> {
    let servers = parse_urls(&target.url)?;
    creds_file()?;
    let allow_plaintext =
        std::env::var("PARALLEL_CLUSTER_PLAINTEXT").is_ok_and(|value| value == "1");
    for server in &servers {
        if !server.is_tls && !server.is_loopback() && !allow_plaintext {
            return Err(format!(
                "{} is a plaintext URL to another machine: tasks, results and credentials would \
                 cross the network in the clear; use tls://{}:{} (or set \
                 PARALLEL_CLUSTER_PLAINTEXT=1 on a network you trust)",
                server.shown(),
                server.host,
                server.port
            ));
        }
    }
    Ok(servers)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Credentials {
    Token(String),
    User { user: String, password: String },
}

/// One server of the URL list.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Server {
    is_tls: bool,
    host: String,
    port: u16,
    credentials: Option<Credentials>,
}

impl Server {
    fn is_loopback(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|address| address.is_loopback())
    }

    /// The URL without its credentials, for messages.
    fn shown(&self) -> String {
        let scheme = if self.is_tls { "tls" } else { "nats" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    fn address(&self) -> Result<ServerAddr, String> {
        self.shown().parse().map_err(|error| format!("{}: {error}", self.shown()))
    }
}

/// Parses `nats://[cred@]host[:port]` or `tls://…`, comma-separated; a URL without a scheme is
/// `nats://`.
fn parse_urls(urls: &str) -> Result<Vec<Server>, String> {
    let servers = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(parse_url)
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(format!("no server URL in {urls:?}"));
    }
    Ok(servers)
}

fn parse_url(url: &str) -> Result<Server, String> {
    let bad = |why: &str| format!("bad cluster URL (credentials hidden): {why}");
    let (is_tls, rest) = match url.split_once("://") {
        Some(("nats", rest)) => (false, rest),
        Some(("tls", rest)) => (true, rest),
        Some((scheme, _)) => return Err(bad(&format!("scheme {scheme:?} is not nats or tls"))),
        None => (false, url),
    };
    let rest = rest.trim_end_matches('/');
    let (credentials, address) = match rest.rsplit_once('@') {
        Some((credentials, address)) => (Some(credentials), address),
        None => (None, rest),
    };
    let credentials = match credentials {
        None => None,
        Some("") => return Err(bad("empty credentials before `@`")),
        Some(text) => Some(match text.split_once(':') {
            Some((user, password)) => {
                Credentials::User { user: user.to_owned(), password: password.to_owned() }
            }
            None => Credentials::Token(text.to_owned()),
        }),
    };
    let (host, port) = match address.rsplit_once(':') {
        // An IPv6 address without a port: `[::1]`.
        Some((host, port)) if !port.ends_with(']') => {
            let port = port.parse::<u16>().map_err(|_| bad(&format!("bad port {port:?}")))?;
            (host, port)
        }
        _ => (address, 4222),
    };
    if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
        return Err(bad(&format!("bad host {host:?}")));
    }
    Ok(Server { is_tls, host: host.to_owned(), port, credentials })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_credentials_and_schemes() {
        let servers =
            parse_urls("nats://s3cret@127.0.0.1:4333, tls://ann:pw@nats.example:7422,host")
                .unwrap();
        assert_eq!(
            servers,
            [
                Server {
                    is_tls: false,
                    host: "127.0.0.1".into(),
                    port: 4333,
                    credentials: Some(Credentials::Token("s3cret".into())),
                },
                Server {
                    is_tls: true,
                    host: "nats.example".into(),
                    port: 7422,
                    credentials: Some(Credentials::User {
                        user: "ann".into(),
                        password: "pw".into()
                    }),
                },
                Server { is_tls: false, host: "host".into(), port: 4222, credentials: None },
            ]
        );
        assert_eq!(servers[0].shown(), "nats://127.0.0.1:4333");
        assert!(servers[0].is_loopback());
        assert!(!servers[1].is_loopback());
        assert!(parse_url("nats://[::1]:4222").unwrap().is_loopback());
        assert!(parse_url("localhost").unwrap().is_loopback());
    }

    #[test]
    fn bad_urls_are_refused_without_showing_credentials() {
        for bad in
            ["http://h:1", "nats://h:port", "nats://h:99999", "nats://@h", "nats://", "", " , "]
        {
            let error = parse_urls(bad).unwrap_err();
            assert!(!error.contains("s3cret"), "{error}");
        }
        let error = parse_urls("nats://s3cret@h:x").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn a_creds_file_that_is_missing_or_not_one_says_why_without_its_contents() {
        let dir = std::env::temp_dir().join(format!("parallel-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = read_creds(&dir.join("missing.creds")).unwrap_err();
        assert!(missing.starts_with("cannot read it: "), "{missing}");
        let garbled = dir.join("garbled.creds");
        std::fs::write(&garbled, "-----BEGIN NATS USER JWT-----\ns3cret\n").unwrap();
        let error = read_creds(&garbled).unwrap_err();
        assert!(error.starts_with("not a NATS credentials file"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
