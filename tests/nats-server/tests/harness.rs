//! The harness against a real `nats-server`: readiness, restarts that keep the port and the
//! JetStream store, kill and stop, authentication, options and clean-up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use nats_server_harness::NatsServer;

/// A raw NATS protocol connection: enough to read `INFO`, send `CONNECT` and make JetStream
/// requests, without a client library.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    fn connect(server: &NatsServer) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        let writer = stream.try_clone().expect("clone the stream");
        Raw { reader: BufReader::new(stream), writer }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a line");
        line.trim_end().to_owned()
    }

    fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).expect("write");
    }

    /// The first line that is not a PING (answered) or +OK.
    fn reply(&mut self) -> String {
        loop {
            let line = self.line();
            match line.as_str() {
                "PING" => self.send("PONG\r\n"),
                "+OK" => {}
                _ => return line,
            }
        }
    }

    /// Reads INFO, connects with `options` (JSON members) and checks the server answers a PING.
    fn handshake(server: &NatsServer, options: &str) -> Raw {
        let mut raw = Raw::connect(server);
        let info = raw.line();
        assert!(info.starts_with("INFO {"), "{info}");
        raw.send(&format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true{options}}}\r\nPING\r\n"
        ));
        assert_eq!(raw.reply(), "PONG");
        raw
    }

    /// A request to `subject` and the payload of its reply.
    fn request(&mut self, subject: &str, payload: &str) -> String {
        self.send(&format!(
            "SUB reply.inbox 1\r\nUNSUB 1 1\r\nPUB {subject} reply.inbox {}\r\n{payload}\r\n",
            payload.len()
        ));
        let head = self.reply();
        assert!(head.starts_with("MSG reply.inbox 1 "), "{head}");
        let size: usize = head.rsplit(' ').next().unwrap().parse().expect("MSG size");
        let mut body = vec![0; size + 2];
        self.reader.read_exact(&mut body).expect("MSG payload");
        String::from_utf8(body).expect("a JSON payload").trim_end().to_owned()
    }
}

#[test]
fn a_started_server_greets_clients_with_jetstream_on() {
    let server = NatsServer::start().unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    assert_eq!(server.url_with_auth(), server.url());
    let mut raw = Raw::connect(&server);
    let info = raw.line();
    assert!(info.starts_with("INFO {"), "{info}");
    assert!(info.contains("\"jetstream\":true"), "{info}");
    assert!(info.contains(&format!("\"port\":{}", server.port())), "{info}");
    assert!(server.store_dir().is_dir());
}

#[test]
fn a_restart_after_a_kill_keeps_the_port_and_the_streams() {
    let mut server = NatsServer::start().unwrap_or_else(|error| panic!("{error}"));
    let port = server.port();
    let mut raw = Raw::handshake(&server, "");
    let created = raw.request(
        "$JS.API.STREAM.CREATE.KEPT",
        r#"{"name":"KEPT","subjects":["kept.>"],"storage":"file"}"#,
    );
    assert!(created.contains("\"name\":\"KEPT\""), "{created}");
    let stored = raw.request("kept.one", "a message");
    assert!(stored.contains("\"seq\":1"), "{stored}");
    let first_pid = server.pid();

    server.kill();
    assert!(!server.is_running());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    server.restart().unwrap_or_else(|error| panic!("{error}"));

    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), first_pid);
    let mut raw = Raw::handshake(&server, "");
    let info = raw.request("$JS.API.STREAM.INFO.KEPT", "");
    assert!(info.contains("\"messages\":1"), "{info}");
}

#[test]
fn a_graceful_stop_ends_the_server_and_a_restart_brings_it_back() {
    let mut server = NatsServer::start().unwrap_or_else(|error| panic!("{error}"));
    server.stop().unwrap_or_else(|error| panic!("{error}"));
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    assert!(
        server.log_tail(20).contains("Trapped \"terminated\" signal"),
        "{}",
        server.log_tail(20)
    );
    assert!(TcpStream::connect(("127.0.0.1", server.port())).is_err());
    // Stopping what is stopped is nothing; a restart of a running server stops it first.
    server.stop().unwrap_or_else(|error| panic!("{error}"));
    server.restart().unwrap_or_else(|error| panic!("{error}"));
    server.restart().unwrap_or_else(|error| panic!("{error}"));
    assert!(server.is_running());
    Raw::handshake(&server, "");
}

#[test]
fn a_token_server_refuses_a_client_without_the_token() {
    let server =
        NatsServer::builder().token("s3cret").start().unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(server.url_with_auth(), format!("nats://s3cret@127.0.0.1:{}", server.port()));
    let mut raw = Raw::connect(&server);
    let info = raw.line();
    assert!(info.contains("\"auth_required\":true"), "{info}");
    raw.send("CONNECT {\"verbose\":false}\r\nPING\r\n");
    assert_eq!(raw.reply(), "-ERR 'Authorization Violation'");

    Raw::handshake(&server, ",\"auth_token\":\"s3cret\"");
}

#[test]
fn a_user_password_server_refuses_a_wrong_password() {
    let server = NatsServer::builder()
        .user_password("alice", "pa55")
        .start()
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(server.url_with_auth(), format!("nats://alice:pa55@127.0.0.1:{}", server.port()));
    let mut raw = Raw::connect(&server);
    raw.line();
    raw.send("CONNECT {\"verbose\":false,\"user\":\"alice\",\"pass\":\"wrong\"}\r\nPING\r\n");
    assert_eq!(raw.reply(), "-ERR 'Authorization Violation'");

    Raw::handshake(&server, ",\"user\":\"alice\",\"pass\":\"pa55\"");
}

#[test]
fn a_lowered_payload_limit_is_announced_and_enforced() {
    let server = NatsServer::builder()
        .max_payload(64 * 1024)
        .start()
        .unwrap_or_else(|error| panic!("{error}"));
    let mut raw = Raw::connect(&server);
    let info = raw.line();
    assert!(info.contains("\"max_payload\":65536"), "{info}");
    raw.send("CONNECT {\"verbose\":false}\r\n");
    raw.send(&format!("PUB big {}\r\n", 64 * 1024 + 1));
    assert_eq!(raw.reply(), "-ERR 'Maximum Payload Violation'");
}

#[test]
fn a_server_that_cannot_start_reports_its_log() {
    // Above the server's pending-bytes limit (64 MiB): it refuses the configuration and exits.
    let error = NatsServer::builder()
        .max_payload(u32::MAX)
        .start()
        .expect_err("the server refuses this payload limit");
    assert!(error.contains("exited before it was ready"), "{error}");
    assert!(error.contains("max_payload"), "{error}");
}

#[test]
fn dropping_a_server_kills_it_and_removes_its_directory() {
    let mut server = NatsServer::start().unwrap_or_else(|error| panic!("{error}"));
    let port = server.port();
    let dir = server.store_dir().parent().unwrap().to_path_buf();
    assert!(server.is_running());
    drop(server);
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[cfg(feature = "tls")]
#[test]
fn a_tls_server_requires_tls_and_names_its_authority() {
    let server = NatsServer::builder().tls().start().unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(server.url(), format!("tls://127.0.0.1:{}", server.port()));
    let ca = std::fs::read_to_string(server.ca_cert().expect("a CA certificate")).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let mut raw = Raw::connect(&server);
    let info = raw.line();
    assert!(info.contains("\"tls_required\":true"), "{info}");
}
