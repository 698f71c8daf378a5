//! eLock's line protocol over raw TCP: lock/unlock replies, FIFO waits that time out or
//! are granted, sessions kept for set_timeout and taken over with conn_id, deadlock 423,
//! stats and debug listings, conflicts with native and MediaWiki clients, bad lines.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::json;

fn server(extra: &[&str]) -> (TestServer, SocketAddr) {
    let mut args = vec!["--elock-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = TestServer::with_args(&args);
    let addr = server.addrs[1];
    (server, addr)
}

struct ELock {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl ELock {
    fn connect(addr: SocketAddr) -> Self {
        let writer = TcpStream::connect(addr).unwrap();
        writer.set_read_timeout(Some(common::REPLY_TIMEOUT)).unwrap();
        ELock { reader: BufReader::new(writer.try_clone().unwrap()), writer }
    }

    fn send(&mut self, line: &str) {
        self.writer.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(line.ends_with("\r\n"), "replies end with CRLF: {line:?}");
        line.trim_end().to_string()
    }

    fn call(&mut self, line: &str) -> String {
        self.send(line);
        self.line()
    }

    /// The reply's status code.
    fn code(&mut self, line: &str) -> u16 {
        self.call(line)[..3].parse().unwrap()
    }

    /// Lines up to and including END.
    fn listing(&mut self, line: &str) -> Vec<String> {
        self.send(line);
        let mut lines = vec![self.line()];
        while lines.last().unwrap() != "END" {
            lines.push(self.line());
        }
        lines
    }

    fn closed(&mut self) -> bool {
        let mut rest = String::new();
        matches!(self.reader.read_line(&mut rest), Ok(0) | Err(_))
    }
}

/// Waits (bounded) until `n` lock requests wait on the server.
fn await_waiters(server: &TestServer, n: u64) {
    let mut observer = server.client();
    let start = Instant::now();
    while observer.call("stat", json!({}))["waiters"] != json!(n) {
        assert!(start.elapsed() < common::REPLY_TIMEOUT, "{n} waiters");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn lock_unlock_and_their_answers() {
    let (_server, addr) = server(&[]);
    let (mut a, mut b) = (ELock::connect(addr), ELock::connect(addr));
    assert_eq!(a.call("lock k"), "200 Lock acquired");
    assert_eq!(a.code("lock k 0"), 200, "a session re-locking its own key");
    assert_eq!(b.code("lock k"), 409);
    assert_eq!(b.code("unlock k"), 403, "not b's");
    assert_eq!(b.code("unlock free"), 403, "not held by anyone (as the Erlang eLock answers)");
    assert_eq!(a.code("unlock k"), 200);
    assert_eq!(b.code("lock k"), 200);
    assert_eq!(b.code("lock other"), 200);
    assert_eq!(b.call("unlock_all"), "200 OK");
    assert_eq!(a.code("lock other"), 200);
    assert_eq!(a.call("quit"), "200 Bye");
    assert!(a.closed());
    assert_eq!(b.code("lock other"), 200, "quit released a's locks at once");
}

#[test]
fn waits_are_fifo_time_out_and_leave_the_queue() {
    let (server, addr) = server(&[]);
    let (mut holder, mut first, mut quitter, mut second) = (ELock::connect(addr), ELock::connect(addr), ELock::connect(addr), ELock::connect(addr));
    holder.call("lock k");
    // One at a time, so that the queue order is the order sent.
    first.send("lock k 10");
    await_waiters(&server, 1);
    let start = Instant::now();
    quitter.send("lock k 0.2");
    await_waiters(&server, 2);
    second.send("lock k 10");
    await_waiters(&server, 3);
    assert_eq!(quitter.line(), "409 Lock is unavailable");
    assert!(start.elapsed() >= Duration::from_millis(150), "it waited its 0.2 s");
    holder.call("unlock k");
    assert_eq!(first.line(), "200 Lock acquired");
    first.call("unlock k");
    assert_eq!(second.line(), "200 Lock acquired", "the one that gave up left the queue");
}

#[test]
fn a_line_sent_during_a_wait_is_answered_after_the_wait() {
    let (_server, addr) = server(&[]);
    let (mut holder, mut waiter) = (ELock::connect(addr), ELock::connect(addr));
    holder.call("lock k");
    waiter.send("lock k 0.2");
    waiter.send("conn_id");
    assert_eq!(waiter.line(), "409 Lock is unavailable");
    assert!(waiter.line().starts_with("200 "));
}

#[test]
fn a_waiter_that_disconnects_is_never_granted() {
    let (server, addr) = server(&[]);
    let mut holder = ELock::connect(addr);
    holder.call("lock k");
    let mut gone = ELock::connect(addr);
    gone.call("set_timeout 60000");
    gone.send("lock k 30");
    await_waiters(&server, 1);
    drop(gone);
    await_waiters(&server, 0);
    holder.call("unlock k");
    let mut native = server.client();
    assert_eq!(native.call("lock", json!({"keys": "k", "wait": 0}))["granted"], json!(true));
}

#[test]
fn a_session_outlives_its_connection_and_can_be_taken_over() {
    let (server, addr) = server(&[]);
    let mut native = server.client();
    let mut a = ELock::connect(addr);
    assert_eq!(a.call("set_timeout 2000"), "200 Timeout set");
    a.call("lock k");
    let id = a.call("conn_id")[4..].to_string();
    drop(a);
    let mut back = ELock::connect(addr);
    // The server notices the close a moment later; until then the session is connected.
    let start = Instant::now();
    while back.code(&format!("conn_id {id}")) != 200 {
        assert!(start.elapsed() < common::REPLY_TIMEOUT, "the session is never released for take-over");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(native.call("lock", json!({"keys": "k", "wait": 0}))["granted"], json!(false), "kept with the session");
    assert_eq!(back.call("conn_id"), format!("200 {id}"));
    assert_eq!(back.code("unlock k"), 200, "the lock came back with the session");
    let mut other = ELock::connect(addr);
    assert_eq!(other.code(&format!("conn_id {id}")), 403, "a connected session cannot be taken");
    assert_eq!(other.code("conn_id 999999"), 403, "never issued");
    assert_eq!(other.code("conn_id x"), 400);
    assert_eq!(other.code("set_timeout soon"), 400);
}

#[test]
fn a_disconnected_session_expires_after_its_timeout() {
    let (server, addr) = server(&[]);
    let mut native = server.client();
    let mut quick = ELock::connect(addr);
    quick.call("set_timeout 0");
    quick.call("lock now");
    let mut slow = ELock::connect(addr);
    slow.call("set_timeout 1500");
    slow.call("lock later");
    drop((quick, slow));
    let start = Instant::now();
    assert_eq!(native.call("lock", json!({"keys": "now", "wait": 1}))["granted"], json!(true), "timeout 0 releases at once");
    assert!(start.elapsed() < Duration::from_millis(500));
    assert_eq!(native.call("lock", json!({"keys": "later", "wait": 0}))["granted"], json!(false), "kept for 1.5 s");
    assert_eq!(native.call("lock", json!({"keys": "later", "wait": 5}))["granted"], json!(true), "then released");
    assert!(start.elapsed() >= Duration::from_millis(1400));
}

#[test]
fn a_wait_that_would_close_a_cycle_is_refused_with_423() {
    let (server, addr) = server(&[]);
    let (mut a, mut b) = (ELock::connect(addr), ELock::connect(addr));
    a.call("lock x");
    b.call("lock y");
    a.send("lock y 10");
    await_waiters(&server, 1);
    let refused = b.call("lock x 10");
    assert!(refused.starts_with("423 Deadlock: "), "{refused}");
    b.call("unlock y");
    assert_eq!(a.line(), "200 Lock acquired");
}

#[test]
fn stats_and_debug_list_lines_that_end_with_end() {
    let (server, addr) = server(&[]);
    let (mut a, mut b) = (ELock::connect(addr), ELock::connect(addr));
    a.call("lock k");
    b.send("lock k 10");
    await_waiters(&server, 1);
    let stats = a.listing("stats");
    assert_eq!(stats, ["200 STATS", "STAT clients 2", "STAT locks 1", "STAT monitoring 2", "END"]);
    let debug = a.listing("debug");
    assert_eq!(debug[0], "200 DEBUG");
    assert_eq!(debug.iter().filter(|l| l.starts_with("SESSION {")).count(), 2, "{debug:?}");
    let a_id = a.call("conn_id")[4..].to_string();
    assert!(debug.contains(&format!("LOCK k #{a_id}")), "{debug:?}");
    assert!(debug.iter().any(|l| l.starts_with("REQUEST #") && l.ends_with(" k")), "{debug:?}");
    a.call("unlock k");
    assert_eq!(b.line(), "200 Lock acquired");
}

#[test]
fn a_key_is_the_same_for_native_and_mediawiki_clients() {
    let (server, addr) = server(&["--mediawiki-listen", "127.0.0.1:0", "--mediawiki-auth-key", "secret"]);
    let mut elock = ELock::connect(addr);
    let mut native = server.client();
    assert_eq!(elock.code("lock 8bn1fvddot61d2cuuqrxrkplwyhmjmq"), 200);
    assert_eq!(native.call("lock", json!({"keys": "8bn1fvddot61d2cuuqrxrkplwyhmjmq", "wait": 0}))["granted"], json!(false));
    let mut mw = TcpStream::connect(server.addrs[2]).unwrap();
    mw.write_all(b"0123456789abcdef0123456789abcdef:1a2351c90561e42b5ea0bc720ecf957e765e3c69:ACQUIRE:EX:8bn1fvddot61d2cuuqrxrkplwyhmjmq\n").unwrap();
    let mut reply = String::new();
    BufReader::new(mw).read_line(&mut reply).unwrap();
    assert_eq!(reply.trim(), "CANT_ACQUIRE");
    native.lock("held-natively", 0);
    assert_eq!(elock.code("lock held-natively 0.1"), 409);
}

#[test]
fn bad_lines_are_400_and_the_server_carries_on() {
    let (_server, addr) = server(&["--max-key-length", "64"]);
    let mut c = ELock::connect(addr);
    assert_eq!(c.code("frobnicate"), 400);
    assert_eq!(c.code("lock"), 400, "missing key");
    assert_eq!(c.code("lock k -1"), 400);
    assert_eq!(c.code("lock k NaN"), 400);
    assert_eq!(c.code("lock k 1 2"), 400);
    assert_eq!(c.code(&format!("lock {}", "k".repeat(65))), 400, "key over --max-key-length");
    assert_eq!(c.code("lock k"), 200);
    let mut flood = ELock::connect(addr);
    flood.writer.write_all(&vec![b'a'; 10_000]).unwrap();
    // Nothing more is sent: the server may already have closed (then a write would fail
    // with EPIPE), but its reply came before the close and is read first.
    assert_eq!(flood.line(), "400 Line too long");
    assert!(flood.closed());
    assert_eq!(ELock::connect(addr).code("lock j"), 200);
}

#[test]
fn value_locks_are_shared_by_one_value_and_refused_to_another() {
    let (server, addr) = server(&[]);
    let (mut a, mut b, mut c) = (ELock::connect(addr), ELock::connect(addr), ELock::connect(addr));
    assert_eq!(a.call("lock_value k red"), "200 Lock acquired");
    assert_eq!(b.call("lock_value k red 0"), "200 Lock acquired", "the same value is shared");
    assert_eq!(c.code("lock_value k blue"), 409, "another value conflicts");
    assert_eq!(c.code("lock k"), 409, "so does an exclusive lock");
    assert_eq!(a.code("lock_value k blue"), 409, "a session cannot hold two values");
    let debug = a.listing("debug");
    assert!(debug.iter().any(|l| l.starts_with("LOCK k #") && l.ends_with("(red)")), "{debug:?}");
    c.send("lock_value k blue 10");
    await_waiters(&server, 1);
    a.call("unlock k");
    b.call("unlock k");
    assert_eq!(c.line(), "200 Lock acquired", "blue once red is gone");
    let mut native = server.client();
    let r = native.call("lock", json!({"keys": "k", "mode": "shared", "value": "blue", "wait": 0}));
    assert_eq!(r["granted"], json!(true), "native clients share the value too: {r}");
}
