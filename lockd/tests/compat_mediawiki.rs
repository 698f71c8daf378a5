//! MediaWiki's LockServerDaemon protocol over raw TCP: the signature vectors, sessions that
//! outlive their connections for --mediawiki-lock-timeout, conflicts with native clients,
//! and bad lines.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::TestServer;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha1::Sha1;

const KEY: &str = "secret";

fn server(extra: &[&str]) -> (TestServer, SocketAddr) {
    let mut args = vec!["--mediawiki-listen", "127.0.0.1:0", "--mediawiki-auth-key", KEY];
    args.extend_from_slice(extra);
    let server = TestServer::with_args(&args);
    let addr = server.addrs[1];
    (server, addr)
}

struct Mw {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Mw {
    fn connect(addr: SocketAddr) -> Self {
        let writer = TcpStream::connect(addr).unwrap();
        writer.set_read_timeout(Some(common::REPLY_TIMEOUT)).unwrap();
        Mw { reader: BufReader::new(writer.try_clone().unwrap()), writer }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    /// Signs and sends one request (the HMAC form), returns the reply.
    fn call(&mut self, session: &str, command: &str, kind: &str, values: &[&str]) -> String {
        self.send_raw(request(session, command, kind, values).as_bytes());
        self.line()
    }

    fn closed(&mut self) -> bool {
        let mut rest = String::new();
        matches!(self.reader.read_line(&mut rest), Ok(0) | Err(_))
    }
}

fn request(session: &str, command: &str, kind: &str, values: &[&str]) -> String {
    let values = values.join("|");
    let mut mac = Hmac::<Sha1>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(format!("{session}\n{command}\n{kind}\n{values}").as_bytes());
    let signature: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("{session}:{signature}:{command}:{kind}:{values}\n")
}

/// A 31-character resource value, as MediaWiki makes them (base-36 SHA-1).
fn value(name: &str) -> String {
    format!("{name:0>31}")
}

const S1: &str = "0123456789abcdef0123456789abcdef";
const S2: &str = "fedcba9876543210fedcba9876543210";

#[test]
fn the_documented_vectors_work_byte_for_byte() {
    let (_server, addr) = server(&[]);
    let mut c = Mw::connect(addr);
    c.send_raw(b"0123456789abcdef0123456789abcdef:1a2351c90561e42b5ea0bc720ecf957e765e3c69:ACQUIRE:EX:8bn1fvddot61d2cuuqrxrkplwyhmjmq\n");
    assert_eq!(c.line(), "ACQUIRED");
    c.send_raw(b"0123456789abcdef0123456789abcdef:838eb21a0f6372b8534730e246e024b8d7252e0a:RELEASE_ALL::\r\n");
    assert_eq!(c.line(), "RELEASED_ALL");
    c.send_raw(b"0000000000000000000000000000000:c6a226ee90040db66121abc60bcb79f835ab8fd3:ACQUIRE:EX:8bn1fvddot61d2cuuqrxrkplwyhmjmq\n");
    assert_eq!(c.line(), "ACQUIRED", "the older sha1 form with a 31-character session");
}

#[test]
fn sessions_conflict_share_and_release_all_or_nothing() {
    let (_server, addr) = server(&[]);
    let (mut a, mut b) = (Mw::connect(addr), Mw::connect(addr));
    let (x, y) = (value("x"), value("y"));
    assert_eq!(a.call(S1, "ACQUIRE", "EX", &[&x]), "ACQUIRED");
    assert_eq!(b.call(S2, "ACQUIRE", "EX", &[&y, &x]), "CANT_ACQUIRE");
    assert_eq!(b.call(S2, "ACQUIRE", "EX", &[&y]), "ACQUIRED", "the refused request took nothing");
    assert_eq!(a.call(S1, "RELEASE", "EX", &[&x]), "RELEASED");
    assert_eq!(b.call(S2, "ACQUIRE", "SH", &[&x]), "ACQUIRED");
    assert_eq!(a.call(S1, "ACQUIRE", "SH", &[&x]), "ACQUIRED", "shared locks coexist");
    assert_eq!(a.call(S1, "ACQUIRE", "EX", &[&y]), "CANT_ACQUIRE");
    // The same session on another connection is the same owner.
    assert_eq!(Mw::connect(addr).call(S2, "RELEASE_ALL", "", &[]), "RELEASED_ALL");
    assert_eq!(a.call(S1, "ACQUIRE", "EX", &[&y]), "ACQUIRED");
    let stat = a.call(S1, "STAT", "", &[]);
    let (uptime, memory) = stat.split_once(':').unwrap();
    assert!(uptime.parse::<u64>().is_ok() && memory.parse::<u64>().unwrap() > 0, "{stat}");
}

#[test]
fn several_lines_in_one_packet_each_get_their_reply_in_order() {
    let (_server, addr) = server(&[]);
    let mut c = Mw::connect(addr);
    let (x, y) = (value("x"), value("y"));
    let batch = [request(S1, "ACQUIRE", "EX", &[&x]), request(S2, "ACQUIRE", "EX", &[&x]), request(S1, "RELEASE", "EX", &[&x]), request(S2, "ACQUIRE", "EX", &[&x, &y])].concat();
    c.send_raw(batch.as_bytes());
    assert_eq!([c.line(), c.line(), c.line(), c.line()], ["ACQUIRED", "CANT_ACQUIRE", "RELEASED", "ACQUIRED"]);
}

#[test]
fn a_key_is_the_same_for_native_clients() {
    let (server, addr) = server(&[]);
    let mut mw = Mw::connect(addr);
    let mut native = server.client();
    let x = value("x");
    assert_eq!(mw.call(S1, "ACQUIRE", "EX", &[&x]), "ACQUIRED");
    assert_eq!(native.call("lock", json!({"keys": x, "wait": 0})), json!({"granted": false}));
    assert_eq!(mw.call(S1, "RELEASE", "EX", &[&x]), "RELEASED");
    native.lock(&x, 0);
    assert_eq!(mw.call(S1, "ACQUIRE", "SH", &[&x]), "CANT_ACQUIRE");
}

#[test]
fn a_sessions_locks_outlive_its_connection_for_the_lock_timeout() {
    let (server, addr) = server(&["--mediawiki-lock-timeout", "0.5"]);
    let mut native = server.client();
    let (x, y) = (value("x"), value("y"));
    let mut c = Mw::connect(addr);
    assert_eq!(c.call(S1, "ACQUIRE", "EX", &[&x]), "ACQUIRED");
    assert_eq!(c.call(S2, "ACQUIRE", "EX", &[&y]), "ACQUIRED");
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    // S1 comes back within the timeout: its locks stay. S2 does not.
    let mut back = Mw::connect(addr);
    assert_eq!(back.call(S1, "ACQUIRE", "EX", &[&x]), "ACQUIRED", "still S1's");
    assert_eq!(native.call("lock", json!({"keys": y, "wait": 5}))["granted"], json!(true), "S2 expired");
    assert_eq!(native.call("lock", json!({"keys": x, "wait": 0.6}))["granted"], json!(false), "S1 is connected");
    drop(back);
    let start = std::time::Instant::now();
    assert_eq!(native.call("lock", json!({"keys": x, "wait": 5}))["granted"], json!(true), "S1 expired after its last connection");
    assert!(start.elapsed() >= Duration::from_millis(300), "not before its timeout");
}

#[test]
fn bad_requests_get_their_error_and_the_server_carries_on() {
    let (_server, addr) = server(&[]);
    let mut c = Mw::connect(addr);
    let x = value("x");
    c.send_raw(b"no colons here\n");
    assert_eq!(c.line(), "BAD_FORMAT");
    c.send_raw(b"short:1a2351c90561e42b5ea0bc720ecf957e765e3c69:ACQUIRE:EX:8bn1fvddot61d2cuuqrxrkplwyhmjmq\n");
    assert_eq!(c.line(), "BAD_SESSION");
    c.send_raw(b"0123456789abcdef0123456789abcdef:0000000000000000000000000000000000000000:ACQUIRE:EX:8bn1fvddot61d2cuuqrxrkplwyhmjmq\n");
    assert_eq!(c.line(), "BAD_KEY");
    assert_eq!(c.call(S1, "GRAB", "EX", &[&x]), "BAD_COMMAND");
    assert_eq!(c.call(S1, "ACQUIRE", "XX", &[&x]), "BAD_TYPE");
    assert_eq!(c.call(S1, "ACQUIRE", "EX", &["short"]), "BAD_FORMAT");
    assert_eq!(c.call(S1, "ACQUIRE", "EX", &[]), "BAD_FORMAT");
    assert_eq!(c.call(S1, "ACQUIRE", "EX", &[&x]), "ACQUIRED");
    // A line past the limit closes the connection; the server goes on.
    let (_big, big_addr) = server(&["--max-frame", "1024"]);
    let mut flood = Mw::connect(big_addr);
    flood.send_raw(&vec![b'a'; 4096]);
    assert!(flood.line().starts_with("BAD_FORMAT"));
    assert!(flood.closed());
    let mut after = Mw::connect(big_addr);
    assert_eq!(after.call(S1, "ACQUIRE", "EX", &[&x]), "ACQUIRED");
}

#[test]
fn a_mediawiki_listener_without_its_key_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockd"))
        .args(["--listen", "127.0.0.1:0", "--mediawiki-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mediawiki-listen needs the key"));
}
