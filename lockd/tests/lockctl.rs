//! `lockctl` against a real lockd: every subcommand, `kick` closing another client's
//! connection and so releasing its lock, admin refusal, auth, and the exit codes.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Output};

use common::{Client, TestServer};
use serde_json::{json, Value};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn lockctl(server: &TestServer, args: &[&str]) -> Run {
    lockctl_at(server.addr, args)
}

fn lockctl_at(server: SocketAddr, args: &[&str]) -> Run {
    let Output { status, stdout, stderr } =
        Command::new(env!("CARGO_BIN_EXE_lockctl")).args(["--server", &server.to_string()]).args(args).output().expect("run lockctl");
    Run { code: status.code().expect("exited"), stdout: String::from_utf8(stdout).unwrap(), stderr: String::from_utf8(stderr).unwrap() }
}

/// A client that said hello; returns it with its connection id.
fn connected(server: &TestServer) -> (Client, u64) {
    let mut client = server.client();
    let hello = client.call("hello", json!({"client": "lockctl-test"}));
    (client, hello["connection"].as_u64().unwrap())
}

#[test]
fn ping_and_stat_answer() {
    let server = TestServer::start();
    let (mut holder, _) = connected(&server);
    holder.lock("held", 0);
    let ping = lockctl(&server, &["ping"]);
    assert_eq!(ping.code, 0, "{}", ping.stderr);
    assert!(ping.stdout.starts_with(&format!("pong from {}", server.addr)), "{}", ping.stdout);
    let stat = lockctl(&server, &["stat"]);
    assert_eq!(stat.code, 0, "{}", stat.stderr);
    let locks_line = stat.stdout.lines().find(|l| l.starts_with("locks ")).expect("a locks line");
    assert_eq!(locks_line.split_whitespace().collect::<Vec<_>>(), ["locks", "1"], "{}", stat.stdout);
}

#[test]
fn locks_lists_holders_as_a_table_or_json_and_filters_by_prefix() {
    let server = TestServer::start();
    let (mut holder, conn) = connected(&server);
    let token = holder.lock("app/report", 7);
    holder.lock("other", 0);
    let (mut waiter, _) = connected(&server);
    waiter.send("lock", json!({"keys": "app/report"}));
    waiter.call("ping", json!({}));

    let table = lockctl(&server, &["locks", "--prefix", "app/"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one row: {}", table.stdout);
    assert!(lines[0].starts_with("KEY"), "{}", lines[0]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[..4], ["app/report", "exclusive", &conn.to_string(), "7"], "{}", lines[1]);
    assert_eq!(row[5..7], ["lockctl-test", &token.to_string()], "the client's name from hello, then the token: {}", lines[1]);
    assert_eq!(row.last(), Some(&"1"), "one waiter: {}", lines[1]);

    let json = lockctl(&server, &["locks", "--json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let page: Value = serde_json::from_str(json.stdout.trim()).expect("one JSON page");
    let keys: Vec<&str> = page["keys"].as_array().unwrap().iter().map(|k| k["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["app/report", "other"]);
    assert_eq!(page["keys"][0]["holders"][0]["token"], json!(token));

    let none = lockctl(&server, &["locks", "--prefix", "nothing/"]);
    assert_eq!((none.code, none.stdout.trim()), (0, "no locks held, no requests waiting"));
}

#[test]
fn who_names_the_holder_and_the_queue() {
    let server = TestServer::start();
    let (mut holder, holder_conn) = connected(&server);
    holder.lock("report", 0);
    holder.lock("report-2", 0);
    let (mut waiter, waiter_conn) = connected(&server);
    waiter.send("lock", json!({"keys": "report", "mode": "shared"}));
    waiter.call("ping", json!({}));

    let who = lockctl(&server, &["who", "report"]);
    assert_eq!(who.code, 0, "{}", who.stderr);
    let lines: Vec<&str> = who.stdout.lines().collect();
    assert_eq!(lines[0], "report: held by");
    assert!(lines[1].trim_start().starts_with(&format!("connection {holder_conn} owner 0 (")), "{}", who.stdout);
    assert!(lines[1].contains("exclusive") && lines[1].contains(", lockctl-test)"), "{}", who.stdout);
    assert_eq!(lines[2], "waiting, next first:");
    assert!(lines[3].trim_start().starts_with(&format!("1. connection {waiter_conn} owner 0 (")), "{}", who.stdout);
    assert!(lines[3].contains("shared") && lines[3].ends_with("waits as long as it takes"), "{}", who.stdout);
    assert_eq!(lines.len(), 4, "report-2 is another key: {}", who.stdout);

    let free = lockctl(&server, &["who", "repo"]);
    assert_eq!((free.code, free.stdout.trim()), (0, "repo: free, nobody waits"));
}

#[test]
fn kick_closes_another_connection_and_its_lock_goes_to_the_waiter() {
    let server = TestServer::start();
    let (mut holder, holder_conn) = connected(&server);
    holder.lock("job", 0);
    let (mut waiter, _) = connected(&server);
    waiter.send("lock", json!({"keys": "job"}));
    waiter.call("ping", json!({}));

    let kick = lockctl(&server, &["kick", &holder_conn.to_string()]);
    assert_eq!(kick.code, 0, "{}", kick.stderr);
    assert_eq!(kick.stdout.trim(), format!("connection {holder_conn} closed; its locks are released"));
    assert_eq!(waiter.recv()["result"]["granted"], json!(true), "the kicked holder's lock went to the waiter");
    assert!(holder.is_closed_by_server());

    let again = lockctl(&server, &["kick", &holder_conn.to_string()]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains(&format!("no connection {holder_conn}")), "{}", again.stderr);
}

#[test]
fn kick_is_refused_to_clients_outside_admin_from() {
    let server = TestServer::with_args(&["--admin-from", "192.0.2.0/24"]);
    let (mut holder, holder_conn) = connected(&server);
    holder.lock("job", 0);
    let kick = lockctl(&server, &["kick", &holder_conn.to_string()]);
    assert_eq!(kick.code, 1);
    assert!(kick.stderr.contains("not in this server's --admin-from (not_admin)"), "{}", kick.stderr);
    assert_eq!(holder.call("ping", json!({}))["pong"], json!(true), "still connected");
    let (mut other, _) = connected(&server);
    let busy = other.call("lock", json!({"keys": "job", "wait": 0}));
    assert_eq!(busy["granted"], json!(false), "still held: {busy}");
}

#[test]
fn with_an_auth_key_lockctl_needs_the_key_file() {
    let dir = std::env::temp_dir().join(format!("lockctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (right, wrong) = (dir.join("right"), dir.join("wrong"));
    writeln!(std::fs::File::create(&right).unwrap(), "the-key").unwrap();
    writeln!(std::fs::File::create(&wrong).unwrap(), "not-the-key").unwrap();
    let server = TestServer::with_args(&["--auth-key", "the-key"]);

    let without = lockctl(&server, &["ping"]);
    assert_eq!(without.code, 1);
    assert!(without.stderr.contains("needs its auth key: give --auth-key-file PATH"), "{}", without.stderr);
    let refused = lockctl(&server, &["--auth-key-file", wrong.to_str().unwrap(), "ping"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("(auth_failed)"), "{}", refused.stderr);
    let with = lockctl(&server, &["--auth-key-file", right.to_str().unwrap(), "ping"]);
    assert_eq!(with.code, 0, "{}", with.stderr);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn no_server_is_exit_1_and_bad_usage_exit_2() {
    // A bound socket that does not listen: connecting to its port is refused, and no
    // other test can take the port meanwhile.
    let closed = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    closed.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    let nobody = closed.local_addr().unwrap().as_socket().unwrap();
    let gone = lockctl_at(nobody, &["ping"]);
    assert_eq!(gone.code, 1);
    assert!(gone.stderr.contains("cannot connect to lockd at"), "{}", gone.stderr);
    let usage = lockctl_at(nobody, &["kick", "not-a-number"]);
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    let help = lockctl_at(nobody, &["--help"]);
    assert!(help.stdout.contains("Exit status: 0 done; 1"), "{}", help.stdout);
}
