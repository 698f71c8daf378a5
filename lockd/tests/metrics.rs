//! `--metrics-listen`: a real lockd serves Prometheus text at /metrics, and its figures
//! follow what clients do (locks, waits, timeouts, deadlocks, disconnects, refusals,
//! failed auth, request counts per command).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::process::{free_port, LockdProcess};
use common::Client;
use lockd::telemetry::MAX_SCRAPERS;
use serde_json::json;

const KEY: &str = "metrics-test-key";

/// `GET path` over HTTP/1.1: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let response = raw_get(port, path);
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// The whole response to `GET path`; empty if the server closed without answering.
fn raw_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("metrics listener");
    stream.set_read_timeout(Some(common::REPLY_TIMEOUT)).unwrap();
    // A connection closed at once may refuse the request: then it reads nothing either.
    let _ = write!(stream, "GET {path} HTTP/1.1\r\nHost: lockd\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    match stream.read_to_string(&mut response) {
        Ok(_) => response,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
        Err(e) => panic!("reading the response: {e}"),
    }
}

/// The value of one series (`name` or `name{labels}`) in an exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} in\n{text}"))
        .parse()
        .unwrap()
}

fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    body
}

/// Scrapes until `series` has `value`, for what the server does after answering.
fn wait_for(port: u16, series: &str, value: f64) {
    let start = std::time::Instant::now();
    while sample(&scrape(port), series) != value {
        assert!(start.elapsed() < common::REPLY_TIMEOUT, "{series} never became {value}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn authed(lockd: &LockdProcess) -> Client {
    let mut client = lockd.client();
    let (reply, _, _) = client.authenticate(KEY);
    assert_eq!(reply["result"]["authenticated"], json!(true), "{reply}");
    client
}

#[test]
fn metrics_follow_locks_waits_timeouts_deadlocks_disconnects_refusals_and_failed_auth() {
    let port = free_port();
    let lockd = LockdProcess::spawn(&["--metrics-listen", &format!("127.0.0.1:{port}"), "--auth-key", KEY, "--max-clients", "3"]);

    let mut first = authed(&lockd);
    let mut second = authed(&lockd);
    first.lock("a", 0);
    first.lock("b", 0);
    first.call("unlock", json!({"keys": "b"}));
    let timed_out = second.call("lock", json!({"keys": "a", "wait": 0.05}));
    assert_eq!(timed_out["granted"], json!(false), "{timed_out}");
    second.lock("x", 0);
    // first waits for x, which second holds; second asking for a (first's) would close a cycle.
    first.send("lock", json!({"keys": "x"}));
    first.call("ping", json!({}));
    let deadlock = second.call_reply("lock", json!({"keys": "a"}));
    assert_eq!(deadlock["error"]["code"], json!("deadlock"), "{deadlock}");

    // The harness's readiness probe was a connection too: its slot must be free again.
    wait_for(port, "lockd_connections", 2.0);
    let mut intruder = lockd.client();
    intruder.call("hello", json!({}));
    let failed = intruder.call_reply("auth", json!({"client_nonce": "00".repeat(32), "proof": "00".repeat(32)}));
    assert_eq!(failed["error"]["code"], json!("auth_failed"), "{failed}");
    let mut over_the_limit = lockd.client();
    assert_eq!(over_the_limit.recv()["error"]["code"], json!("too_many_clients"));

    let text = scrape(port);
    assert_eq!(sample(&text, "lockd_locks_held"), 2.0, "a and x");
    assert_eq!(sample(&text, "lockd_lock_waiters"), 1.0);
    assert_eq!(sample(&text, "lockd_grants_total"), 3.0, "a, b, x");
    assert_eq!(sample(&text, "lockd_wait_timeouts_total"), 1.0);
    assert_eq!(sample(&text, "lockd_deadlocks_total"), 1.0);
    assert_eq!(sample(&text, "lockd_connections"), 3.0);
    assert_eq!(sample(&text, "lockd_connections_opened_total"), 4.0, "the probe and three clients");
    assert_eq!(sample(&text, "lockd_refused_connections_total{reason=\"too_many_clients\"}"), 1.0);
    assert_eq!(sample(&text, "lockd_refused_connections_total{reason=\"not_allowed\"}"), 0.0);
    assert_eq!(sample(&text, "lockd_auth_failures_total"), 1.0);
    assert_eq!(sample(&text, "lockd_disconnect_released_locks_total"), 0.0);
    assert_eq!(sample(&text, "lockd_request_duration_seconds_count{command=\"lock\"}"), 6.0);
    assert_eq!(sample(&text, "lockd_request_duration_seconds_count{command=\"unlock\"}"), 1.0);
    assert_eq!(sample(&text, "lockd_request_duration_seconds_bucket{command=\"ping\",le=\"+Inf\"}"), 1.0);

    // second's close releases x, which first was waiting for.
    drop(second);
    assert_eq!(first.recv()["result"]["granted"], json!(true));
    let text = scrape(port);
    assert_eq!(sample(&text, "lockd_disconnect_released_locks_total"), 1.0);
    assert_eq!(sample(&text, "lockd_grants_total"), 4.0);
    assert_eq!(sample(&text, "lockd_lock_waiters"), 0.0);
    assert_eq!(sample(&text, "lockd_locks_held"), 2.0, "a and x, both first's");
}

#[test]
fn only_get_metrics_is_served_and_nothing_listens_without_the_flag() {
    let port = free_port();
    let _lockd = LockdProcess::spawn(&["--metrics-listen", &format!("127.0.0.1:{port}")]);
    assert!(http_get(port, "/other").0.contains(" 404 "));
    assert!(scrape(port).contains("# TYPE lockd_request_duration_seconds histogram"));

    let unused = free_port();
    let _plain = LockdProcess::spawn(&[]);
    assert!(TcpStream::connect(("127.0.0.1", unused)).is_err(), "no metrics listener by default");
}

#[test]
fn scrapers_beyond_the_limit_are_closed_unanswered_until_one_leaves() {
    let port = free_port();
    let _lockd = LockdProcess::spawn(&["--metrics-listen", &format!("127.0.0.1:{port}")]);
    // Accepted in order, so these take every place before the next connection comes.
    let mut idle: Vec<TcpStream> = (0..MAX_SCRAPERS).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    assert_eq!(raw_get(port, "/metrics"), "", "one scraper too many");
    idle.pop();
    let start = std::time::Instant::now();
    while !raw_get(port, "/metrics").contains("lockd_locks_held") {
        assert!(start.elapsed() < common::REPLY_TIMEOUT, "a place never came free");
    }
}
