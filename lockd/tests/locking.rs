//! Lock semantics over real TCP: grants, try-locks, waits, FIFO, modes, multi-key,
//! deadlock, death of a connection, fencing tokens, introspection.

mod common;

use std::time::Duration;

use common::{Client, TestServer};
use serde_json::json;

#[test]
fn lock_then_unlock() {
    let server = TestServer::start();
    let mut c = server.client();
    let token = c.lock("a", 0);
    assert!(token > 0);
    let r = c.call("unlock", json!({"keys": ["a", "b"]}));
    assert_eq!(r, json!({"released": ["a"], "not_held": ["b"]}));
}

#[test]
fn try_lock_on_a_held_key_answers_not_granted_at_once() {
    let server = TestServer::start();
    let (mut a, mut b) = (server.client(), server.client());
    a.lock("k", 0);
    assert_eq!(b.call("lock", json!({"keys": "k", "wait": 0})), json!({"granted": false}));
}

#[test]
fn a_wait_that_runs_out_answers_not_granted_and_leaves_the_queue() {
    let server = TestServer::start();
    let (mut a, mut b, mut c) = (server.client(), server.client(), server.client());
    a.lock("k", 0);
    let id = b.send("lock", json!({"keys": "k", "wait": 0.2}));
    let patient = c.send("lock", json!({"keys": "k"}));
    let reply = b.recv();
    assert_eq!(reply, json!({"id": id, "result": {"granted": false}}));
    assert_eq!(a.call("stat", json!({}))["timeouts"], json!(1));
    a.call("unlock", json!({"keys": "k"}));
    assert_eq!(c.recv()["id"], json!(patient), "the waiter behind the one that gave up is next");
}

#[test]
fn waiters_are_granted_in_fifo_order_across_connections() {
    let server = TestServer::start();
    let mut holder = server.client();
    holder.lock("k", 0);
    let mut waiters: Vec<Client> = (0..4).map(|_| server.client()).collect();
    for (queued, w) in waiters.iter_mut().enumerate() {
        w.send("lock", json!({"keys": "k"}));
        // Arrival order is certain once the server lists this one in the queue.
        wait_for_waiters(&mut holder, "k", queued + 1);
    }
    holder.call("unlock", json!({"keys": "k"}));
    let mut last_token = 0;
    for (i, w) in waiters.iter_mut().enumerate() {
        let token = w.recv()["result"]["token"].as_u64().expect("granted");
        assert!(token > last_token, "tokens grow in grant order");
        last_token = token;
        assert_eq!(holder.call("locks", json!({"prefix": "k"}))["keys"][0]["waiters"].as_array().unwrap().len(), 3 - i);
        w.call("unlock", json!({"keys": "k"}));
    }
}

/// Polls `locks` until `key` has `n` waiters (bounded).
fn wait_for_waiters(c: &mut Client, key: &str, n: usize) {
    for _ in 0..500 {
        let r = c.call("locks", json!({"prefix": key}));
        let queued = r["keys"].as_array().unwrap().iter().find(|k| k["key"] == key).map_or(0, |k| k["waiters"].as_array().unwrap().len());
        if queued == n {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{key} never had {n} waiters");
}

#[test]
fn shared_holders_coexist_and_a_writer_waits_for_all() {
    let server = TestServer::start();
    let (mut r1, mut r2, mut w) = (server.client(), server.client(), server.client());
    for r in [&mut r1, &mut r2] {
        assert_eq!(r.call("lock", json!({"keys": "doc", "mode": "shared", "wait": 0}))["granted"], json!(true));
    }
    let id = w.send("lock", json!({"keys": "doc", "mode": "exclusive"}));
    r1.call("unlock", json!({"keys": "doc"}));
    assert!(w.try_recv(Duration::from_millis(200)).is_none(), "one reader still holds it");
    r2.call("unlock", json!({"keys": "doc"}));
    assert_eq!(w.recv()["id"], json!(id));
}

#[test]
fn several_keys_are_granted_all_or_nothing() {
    let server = TestServer::start();
    let (mut a, mut b) = (server.client(), server.client());
    a.lock("y", 0);
    assert_eq!(b.call("lock", json!({"keys": ["x", "y"], "wait": 0})), json!({"granted": false}));
    let listing = a.call("locks", json!({}));
    assert_eq!(listing["keys"].as_array().unwrap().len(), 1, "x was not taken: {listing}");
    let id = b.send("lock", json!({"keys": ["x", "y"]}));
    a.call("unlock", json!({"keys": "y"}));
    let granted = b.recv();
    assert_eq!(granted["id"], json!(id));
    let token = granted["result"]["token"].as_u64().unwrap();
    for key in ["x", "y"] {
        assert_eq!(a.call("check", json!({"key": key, "token": token})), json!({"valid": true}));
    }
}

#[test]
fn crossed_waits_get_a_deadlock_error_naming_the_cycle() {
    let server = TestServer::start();
    let (mut a, mut b) = (server.client(), server.client());
    a.lock("first", 1);
    b.lock("second", 2);
    a.send("lock", json!({"keys": "second", "owner": 1}));
    wait_for_waiters(&mut b, "second", 1);
    let reply = b.call_reply("lock", json!({"keys": "first", "owner": 2}));
    assert_eq!(reply["error"]["code"], json!("deadlock"), "{reply}");
    let cycle = reply["error"]["cycle"].as_array().unwrap();
    assert_eq!(cycle.len(), 2);
    assert_eq!(cycle[0]["key"], json!("first"));
    assert_eq!(cycle[1]["key"], json!("second"));
    assert!(reply["error"]["message"].as_str().unwrap().contains("deadlock"));
    // Nobody hangs: b gives up its key and a gets it.
    b.call("unlock", json!({"keys": "second", "owner": 2}));
    assert_eq!(a.recv()["result"]["granted"], json!(true));
}

#[test]
fn closing_a_connection_releases_its_locks_and_grants_the_next_waiter() {
    let server = TestServer::start();
    let (mut holder, mut waiter) = (server.client(), server.client());
    holder.lock("job", 0);
    holder.lock("other", 5);
    let id = waiter.send("lock", json!({"keys": "job"}));
    wait_for_waiters(&mut holder, "job", 1);
    drop(holder);
    let r = waiter.recv();
    assert_eq!(r["id"], json!(id));
    assert_eq!(r["result"]["granted"], json!(true));
    let stat = waiter.call("stat", json!({}));
    assert_eq!(stat["locks"], json!(1), "only the waiter's lock is left: {stat}");
}

#[test]
fn lock_delay_holds_a_dead_clients_lock_for_a_while() {
    if common::cluster_under_test().is_some() {
        eprintln!("SKIPPED in cluster mode: --lock-delay is refused with --cluster");
        return;
    }
    let server = TestServer::with_args(&["--lock-delay", "0.3"]);
    let (mut holder, mut waiter) = (server.client(), server.client());
    holder.lock("job", 0);
    waiter.send("lock", json!({"keys": "job"}));
    wait_for_waiters(&mut holder, "job", 1);
    drop(holder);
    assert!(waiter.try_recv(Duration::from_millis(100)).is_none(), "still within the lock-delay");
    assert_eq!(waiter.recv()["result"]["granted"], json!(true));
}

#[test]
fn every_grant_has_a_larger_token_and_check_follows_the_current_holder() {
    let server = TestServer::start();
    let (mut a, mut b) = (server.client(), server.client());
    let t1 = a.lock("k", 0);
    assert_eq!(b.call("check", json!({"key": "k", "token": t1})), json!({"valid": true}));
    a.call("unlock", json!({"keys": "k"}));
    assert_eq!(b.call("check", json!({"key": "k", "token": t1})), json!({"valid": false}));
    let t2 = b.lock("k", 0);
    let t3 = a.lock("other", 0);
    assert!(t1 < t2 && t2 < t3);
}

#[test]
fn two_owners_on_one_connection_conflict_like_two_processes() {
    let server = TestServer::start();
    let mut c = server.client();
    c.lock("k", 1);
    assert_eq!(c.call("lock", json!({"keys": "k", "owner": 2, "wait": 0})), json!({"granted": false}));
    let r = c.call("unlock", json!({"keys": "k", "owner": 2}));
    assert_eq!(r, json!({"released": [], "not_held": ["k"]}), "an owner cannot release another's lock");
}

#[test]
fn release_all_frees_one_owner_or_the_whole_connection() {
    let server = TestServer::start();
    let mut c = server.client();
    c.lock("a", 1);
    c.lock("b", 1);
    c.lock("c", 2);
    assert_eq!(c.call("release_all", json!({"owner": 1})), json!({"released": 2, "cancelled": 0}));
    assert_eq!(c.call("release_all", json!({})), json!({"released": 1, "cancelled": 0}));
    assert_eq!(c.call("stat", json!({}))["locks"], json!(0));
}

#[test]
fn locks_lists_holders_and_waiters_with_their_peers() {
    let server = TestServer::start();
    let (mut a, mut b) = (server.client(), server.client());
    a.lock("k", 3);
    b.send("lock", json!({"keys": "k", "mode": "shared", "owner": 4, "wait": 60}));
    wait_for_waiters(&mut a, "k", 1);
    let r = a.call("locks", json!({"prefix": "k"}));
    let key = &r["keys"][0];
    assert_eq!(key["holders"][0]["owner"], json!(3));
    assert_eq!(key["holders"][0]["mode"], json!("exclusive"));
    assert!(key["holders"][0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(key["waiters"][0]["owner"], json!(4));
    assert_eq!(key["waiters"][0]["mode"], json!("shared"));
    assert!(key["waiters"][0]["gives_up_in"].as_f64().unwrap() <= 60.0);
}

#[test]
fn limits_answer_with_their_own_error_codes() {
    let server = TestServer::with_args(&["--max-locks", "2", "--max-keys", "2", "--max-key-length", "8"]);
    let mut c = server.client();
    let code = |c: &mut Client, p| c.call_reply("lock", p)["error"]["code"].clone();
    assert_eq!(code(&mut c, json!({"keys": ["a", "b", "c"]})), json!("too_many_keys"));
    assert_eq!(code(&mut c, json!({"keys": "a-very-long-key"})), json!("bad_key"));
    assert_eq!(code(&mut c, json!({"keys": ""})), json!("bad_key"));
    c.lock("a", 0);
    c.lock("b", 0);
    assert_eq!(code(&mut c, json!({"keys": "c"})), json!("too_many_locks"));
}

#[test]
fn stat_reports_counts() {
    let server = TestServer::start();
    let (mut a, mut b) = (server.client(), server.client());
    // A reply proves the server has registered b's connection (accept runs concurrently).
    b.call("ping", json!({}));
    a.lock("k", 0);
    let s = a.call("stat", json!({}));
    assert_eq!(s["connections"], json!(2));
    assert_eq!(s["locks"], json!(1));
    assert_eq!(s["grants"], json!(1));
    assert!(s["memory"].as_u64().unwrap() > 0);
    assert!(s["uptime"].as_f64().unwrap() >= 0.0);
}

#[test]
fn locks_pages_through_every_key_exactly_once() {
    let server = TestServer::start();
    let mut c = server.client();
    for i in 0..25 {
        c.lock(&format!("job-{i:02}"), 0);
    }
    c.lock("other", 0);
    let (mut seen, mut after) = (Vec::new(), None::<String>);
    loop {
        let page = c.call("locks", json!({"prefix": "job-", "limit": 10, "after": after}));
        seen.extend(page["keys"].as_array().unwrap().iter().map(|k| k["key"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(page["truncated"], json!(true));
                after = Some(next.to_string());
            }
            None => break,
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("job-{i:02}")).collect();
    assert_eq!(seen, want);
}
