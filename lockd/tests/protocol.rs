//! The wire protocol over real TCP: envelopes, errors, pkLockServer's original messages,
//! and bad input (malformed, oversized, half-sent frames, floods) that must never crash
//! the server, lose or leak a lock, or disturb other clients.

mod common;

use std::time::Duration;

use common::{Client, TestServer};
use serde_json::json;

#[test]
fn hello_reports_versions_and_features() {
    let server = TestServer::start();
    let r = server.client().call("hello", json!({"client": "test"}));
    assert_eq!(r["protocol"], json!(1));
    assert_eq!(r["server"], json!("lockd"));
    assert!(r["features"].as_array().unwrap().contains(&json!("shared")));
    assert!(r["connection"].as_u64().unwrap() > 0);
}

#[test]
fn ids_of_any_json_type_are_echoed_and_parameters_may_be_omitted() {
    let server = TestServer::start();
    let mut c = server.client();
    for id in [json!("abc"), json!(7), json!(null), json!({"n": 1})] {
        c.send_value(&json!({"id": id, "command": "ping"}));
        assert_eq!(c.recv(), json!({"id": id, "result": {"pong": true}}));
    }
}

#[test]
fn pipelined_requests_are_all_answered_and_a_granted_wait_may_answer_later() {
    let server = TestServer::start();
    let (mut holder, mut c) = (server.client(), server.client());
    holder.lock("k", 0);
    let waiting = c.send("lock", json!({"keys": "k", "owner": 1}));
    let pings: Vec<u64> = (0..50).map(|_| c.send("ping", json!({}))).collect();
    for id in pings {
        assert_eq!(c.recv()["id"], json!(id), "pings answered in order while the lock waits");
    }
    holder.call("unlock", json!({"keys": "k"}));
    assert_eq!(c.recv()["id"], json!(waiting));
}

#[test]
fn pklockserver_lock_and_unlock_messages_keep_working() {
    let server = TestServer::start();
    let (mut old, mut other) = (server.client(), server.client());
    // pkLockClient::lock sends an rpc with parameters.lockName and waits for status ok.
    old.send_value(&json!({"command": "lock", "parameters": {"lockName": "test"}, "id": 1}));
    assert_eq!(old.recv(), json!({"id": 1, "result": {"status": "ok"}}));
    other.send_value(&json!({"command": "lock", "parameters": {"lockName": "test"}, "id": 1}));
    assert!(other.try_recv(Duration::from_millis(100)).is_none(), "waits in FIFO order");
    // pkLockClient::unlock writes a message with no id and a top-level lockName.
    old.send_value(&json!({"command": "unlock", "lockName": "test"}));
    assert_eq!(old.recv(), json!({"attempted": "unlock", "result": "ok", "lockName": "test"}));
    assert_eq!(other.recv(), json!({"id": 1, "result": {"status": "ok"}}));
    old.send_value(&json!({"command": "unlock", "lockName": "test"}));
    assert_eq!(old.recv(), json!({"attempted": "unlock", "result": "notFound", "lockName": "test"}));
    old.send_value(&json!({"command": "unlock", "lockName": 5}));
    assert_eq!(old.recv(), json!({"attempted": "unlock", "result": "invalid"}));
}

#[test]
fn native_requests_for_a_key_named_lockname_get_native_replies() {
    let server = TestServer::start();
    let mut c = server.client();
    assert_eq!(c.call("lock", json!({"keys": "lockName"}))["granted"], json!(true));
}

#[test]
fn malformed_requests_get_errors_and_the_connection_carries_on() {
    let server = TestServer::start();
    let mut c = server.client();
    for (payload, code) in [
        (&b"not json"[..], "bad_request"),
        (b"[1,2,3]", "bad_request"),
        (br#"{"id":1}"#, "bad_request"),
        (br#"{"id":1,"command":"fly"}"#, "unknown_command"),
        (br#"{"id":1,"command":"lock","parameters":{"keys":5}}"#, "bad_request"),
        (br#"{"id":1,"command":"lock","parameters":{"keys":"a","mode":"sideways"}}"#, "bad_request"),
        (br#"{"id":1,"command":"lock","parameters":{"keys":"a","wait":-1}}"#, "bad_request"),
        (br#"{"id":1,"command":"lock","parameters":{"keys":"a","owner":-3}}"#, "bad_request"),
        (br#"{"id":1,"command":"lock","parameters":{"keys":"a","colour":"red"}}"#, "bad_request"),
        (br#"{"id":1,"command":"check","parameters":{}}"#, "bad_request"),
        (b"\xff\xfe", "bad_request"),
    ] {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        c.send_raw(&frame);
        let reply = c.recv();
        assert_eq!(reply["error"]["code"], json!(code), "for {:?}: {reply}", String::from_utf8_lossy(payload));
        assert!(!reply["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(c.call("ping", json!({})), json!({"pong": true}));
}

#[test]
fn an_oversized_frame_is_refused_and_closed_without_harming_others() {
    let server = TestServer::with_args(&["--max-frame", "1024"]);
    let (mut bad, mut good) = (server.client(), server.client());
    let kept = good.lock("kept", 0);
    bad.lock("lost", 0);
    bad.send_raw(&100_000u32.to_be_bytes());
    assert_eq!(bad.recv()["error"]["code"], json!("frame_too_large"));
    assert!(bad.is_closed_by_server());
    let stat = good.call("stat", json!({}));
    assert_eq!(stat["locks"], json!(1), "the closed client's lock is released, the other kept: {stat}");
    assert_eq!(good.call("check", json!({"key": "kept", "token": kept})), json!({"valid": true}));
}

#[test]
fn a_half_sent_frame_is_closed_after_the_frame_timeout() {
    let server = TestServer::with_args(&["--frame-timeout", "0.2"]);
    let (mut slow, mut good) = (server.client(), server.client());
    slow.lock("held", 0);
    slow.send_raw(&[0, 0, 0, 50, b'{']);
    assert!(good.call("ping", json!({}))["pong"].as_bool().unwrap(), "others are served meanwhile");
    assert!(slow.is_closed_by_server());
    assert_eq!(good.call("stat", json!({}))["locks"], json!(0), "its lock went with it");
}

#[test]
fn a_client_that_never_reads_does_not_stall_others() {
    let server = TestServer::start();
    let flooder = server.client();
    // Many requests whose replies are never read: the flooder's own socket fills up.
    let mut frames = Vec::new();
    for i in 0..200_000u32 {
        pklock_proto::frame::encode_into(&mut frames, &json!({"id": i, "command": "ping"})).unwrap();
    }
    let mut writer = flooder.stream.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        use std::io::Write;
        let _ = writer.write_all(&frames); // blocks once both socket buffers are full
    });
    let mut good = server.client();
    for _ in 0..100 {
        assert_eq!(good.call("ping", json!({})), json!({"pong": true}));
    }
    good.lock("k", 0);
    flooder.stream.shutdown(std::net::Shutdown::Both).unwrap();
    flood.join().unwrap();
    assert_eq!(good.call("stat", json!({}))["locks"], json!(1));
}

#[test]
fn many_connections_coming_and_going_leave_nothing_behind() {
    let server = TestServer::start();
    for i in 0..200 {
        let mut c = server.client();
        // The previous holder of this key may still be closing: wait for it.
        let r = c.call("lock", json!({"keys": format!("k{}", i % 7), "wait": 5}));
        assert_eq!(r["granted"], json!(true));
        if i % 2 == 0 {
            c.send_raw(&[0, 0]); // and some leave mid-frame
        }
    }
    let mut c = server.client();
    let mut stat = c.call("stat", json!({}));
    for _ in 0..200 {
        if stat["connections"] == json!(1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        stat = c.call("stat", json!({}));
    }
    assert_eq!(stat["connections"], json!(1), "{stat}");
    assert_eq!(stat["locks"], json!(0));
    assert_eq!(stat["waiters"], json!(0));
}

#[test]
fn addresses_outside_the_allow_list_are_closed_at_once() {
    let server = TestServer::with_args(&["--allow", "10.0.0.0/8"]);
    let mut c = Client::connect(server.addr);
    assert!(c.is_closed_by_server());
}

#[test]
fn clients_over_the_limit_are_told_and_closed() {
    let server = TestServer::with_args(&["--max-clients", "1"]);
    let mut first = server.client();
    first.call("ping", json!({}));
    let mut second = server.client();
    assert_eq!(second.recv()["error"]["code"], json!("too_many_clients"));
    assert!(second.is_closed_by_server());
    assert_eq!(first.call("ping", json!({})), json!({"pong": true}));
}

#[test]
fn the_client_limit_counts_every_listener() {
    let server = TestServer::with_args(&["--listen", "127.0.0.1:0", "--max-clients", "2"]);
    let mut on_first = Client::connect(server.addrs[0]);
    let mut on_second = Client::connect(server.addrs[1]);
    on_first.call("ping", json!({}));
    on_second.call("ping", json!({}));
    for addr in &server.addrs {
        let mut over = Client::connect(*addr);
        assert_eq!(over.recv()["error"]["code"], json!("too_many_clients"), "on {addr}");
    }
}

#[test]
fn listens_on_several_addresses_including_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let server = TestServer::with_args(&["--listen", "[::1]:0"]);
    // The first --listen (IPv4, from the harness) and the IPv6 one both serve, and
    // IPv6 loopback is in the default allow-list.
    let mut v4 = server.client();
    v4.lock("shared-table", 0);
    let v6_addr = server.addrs.iter().find(|a| a.is_ipv6()).copied().expect("an IPv6 listener");
    let mut v6 = Client::connect(v6_addr);
    assert_eq!(v6.call("lock", json!({"keys": "shared-table", "wait": 0})), json!({"granted": false}), "one table behind both");
}

#[test]
fn granting_to_a_waiter_that_never_reads_does_not_block_the_releaser() {
    let server = TestServer::start();
    let mut holder = server.client();
    holder.lock("k", 0);
    let mut stuck = server.client();
    stuck.send("lock", json!({"keys": "k", "owner": 1}));
    // Then it floods without reading, until its socket buffers are full both ways.
    let mut frames = Vec::new();
    for i in 0..200_000u32 {
        pklock_proto::frame::encode_into(&mut frames, &json!({"id": i, "command": "ping"})).unwrap();
    }
    let mut writer = stuck.stream.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        use std::io::Write;
        let _ = writer.write_all(&frames);
    });
    std::thread::sleep(Duration::from_millis(300));
    // The grant to `stuck` cannot be written now; the releaser must not wait for it.
    assert_eq!(holder.call("unlock", json!({"keys": "k"}))["released"], json!(["k"]));
    assert_eq!(holder.call("lock", json!({"keys": "k", "wait": 0})), json!({"granted": false}), "stuck holds it now");
    // Its process dies: the socket is closed with unread data (the kernel resets it).
    stuck.stream.shutdown(std::net::Shutdown::Both).unwrap();
    flood.join().unwrap();
    drop(stuck);
    assert_eq!(holder.call("lock", json!({"keys": "k", "wait": 5}))["granted"], json!(true), "released when stuck went away");
}

#[test]
fn a_deferred_unlock_reply_goes_out_with_the_next_reply() {
    if common::cluster_under_test().is_some() {
        eprintln!("SKIPPED in cluster mode: replies come as the log is applied, never held back (defer_reply is a may)");
        return;
    }
    let server = TestServer::start();
    let mut c = server.client();
    c.lock("k", 0);
    let unlock = c.send("unlock", json!({"keys": "k", "defer_reply": true}));
    assert!(c.try_recv(Duration::from_millis(200)).is_none(), "held back: the client said it would not wait");
    let ping = c.send("ping", json!({}));
    assert_eq!(c.recv(), json!({"id": unlock, "result": {"released": ["k"], "not_held": []}}), "sent first, in order");
    assert_eq!(c.recv()["id"], json!(ping));
    // Without the flag an unlock is answered at once, and a deferred one never delays
    // the release itself.
    let mut other = server.client();
    c.lock("k", 0);
    c.send("unlock", json!({"keys": "k", "defer_reply": true}));
    assert_eq!(other.call("lock", json!({"keys": "k", "wait": 5}))["granted"], json!(true));
    assert_eq!(other.call("unlock", json!({"keys": "k"}))["released"], json!(["k"]));
}

#[test]
fn deferred_replies_go_out_once_64_kib_of_them_wait() {
    if common::cluster_under_test().is_some() {
        eprintln!("SKIPPED in cluster mode: replies come as the log is applied, never held back (defer_reply is a may)");
        return;
    }
    let server = TestServer::start();
    let mut c = server.client();
    let id = "x".repeat(20 * 1024);
    for _ in 0..3 {
        c.send_value(&json!({"id": id, "command": "unlock", "parameters": {"keys": "k", "defer_reply": true}}));
    }
    assert!(c.try_recv(Duration::from_millis(200)).is_none(), "60 KiB held back");
    c.send_value(&json!({"id": id, "command": "unlock", "parameters": {"keys": "k", "defer_reply": true}}));
    for _ in 0..4 {
        assert_eq!(c.recv()["result"]["not_held"], json!(["k"]), "sent without a request to carry them");
    }
}

#[test]
fn a_wait_too_long_for_a_deadline_waits_and_breaks_nothing() {
    let server = TestServer::start();
    let (mut holder, mut patient) = (server.client(), server.client());
    holder.lock("k", 0);
    let last = holder.lock("other", 0);
    let id = patient.send("lock", json!({"keys": "k", "wait": 1e19}));
    assert!(patient.try_recv(Duration::from_millis(100)).is_none(), "it waits");
    assert_eq!(holder.call("unlock", json!({"keys": ["k", "other"]}))["released"], json!(["k", "other"]));
    let grant = patient.recv();
    assert_eq!(grant["id"], json!(id));
    assert!(grant["result"]["token"].as_u64().unwrap() > last, "{grant}");
}

#[test]
fn pklockserver_lock_with_a_wait_is_told_when_it_runs_out() {
    let server = TestServer::start();
    let (mut holder, mut old) = (server.client(), server.client());
    holder.lock("test", 0);
    old.send_value(&json!({"command": "lock", "parameters": {"lockName": "test", "wait": 0.1}, "id": 4}));
    assert_eq!(old.recv(), json!({"id": 4, "result": {"status": "timeout"}}));
}

#[test]
fn commands_without_parameters_refuse_unknown_ones_and_unlock_has_a_key_limit() {
    let server = TestServer::with_args(&["--max-keys", "2"]);
    let mut c = server.client();
    for command in ["ping", "stat"] {
        assert_eq!(c.call_reply(command, json!({"verbose": true}))["error"]["code"], json!("bad_request"), "{command}");
    }
    assert_eq!(c.call_reply("unlock", json!({"keys": ["a", "b", "c"]}))["error"]["code"], json!("too_many_keys"));
}

#[test]
fn parameters_given_as_a_list_are_refused_but_an_empty_php_array_is_no_parameters() {
    let server = TestServer::start();
    let mut c = server.client();
    // serde would read a list positionally: ["k"] as {"keys": "k"}, a granted lock (found
    // by the `request` fuzz target, fuzz/corpus/request/regression-parameters-list).
    c.send_value(&json!({"id": 1, "command": "lock", "parameters": ["k"]}));
    let r = c.recv();
    assert_eq!(r["error"]["code"], json!("bad_request"), "{r}");
    for params in [json!("o"), json!(1)] {
        let reply = c.call_reply("lock", params.clone());
        assert_eq!(reply["error"]["code"], json!("bad_request"), "{params}: {reply}");
    }
    assert_eq!(c.call("stat", json!({}))["locks"], json!(0), "nothing was granted");
    // PHP's json_encode writes an empty array as [].
    c.send_value(&json!({"id": 2, "command": "ping", "parameters": []}));
    assert_eq!(c.recv(), json!({"id": 2, "result": {"pong": true}}));
}

#[test]
fn locks_names_each_holder_and_waiter_by_the_client_it_gave_in_hello() {
    let server = TestServer::start();
    let mut holder = server.client();
    holder.call("hello", json!({"client": "pklock.so/1.0 pid 4242"}));
    holder.lock("k", 1);
    let mut waiter = server.client();
    waiter.call("hello", json!({"client": "pklock.so/1.0 pid 5151"}));
    waiter.send("lock", json!({"keys": "k", "owner": 1, "wait": 30}));
    let mut anonymous = server.client();
    // The wait is queued once the waiter's request was read; ask until it shows.
    let start = std::time::Instant::now();
    let key = loop {
        assert!(start.elapsed() < Duration::from_secs(10), "the wait never showed in locks");
        let page = anonymous.call("locks", json!({}));
        if page["keys"][0]["waiters"].as_array().is_some_and(|w| !w.is_empty()) {
            break page["keys"][0].clone();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(key["holders"][0]["client"], json!("pklock.so/1.0 pid 4242"), "{key}");
    assert_eq!(key["waiters"][0]["client"], json!("pklock.so/1.0 pid 5151"), "{key}");
    anonymous.lock("mine", 1);
    let mine = anonymous.call("locks", json!({"prefix": "mine"}));
    assert!(mine["keys"][0]["holders"][0].get("client").is_none(), "no hello name, no field: {mine}");
}

#[test]
fn a_client_name_is_kept_to_200_bytes_however_long_the_hello_sends_it() {
    // Every connection's name is held as long as it lives: a client must not make lockd
    // keep (and list in every `locks`) as much as a frame can carry.
    let server = TestServer::start();
    let mut holder = server.client();
    holder.call("hello", json!({"client": "é".repeat(100 * 1024)}));
    holder.lock("named", 1);
    let page = holder.call("locks", json!({"prefix": "named"}));
    let kept = page["keys"][0]["holders"][0]["client"].as_str().expect("a client name").to_owned();
    assert!(kept.len() <= 200 && kept.len() >= 198, "kept {} bytes", kept.len());
    assert!(kept.chars().all(|c| c == 'é'), "cut on a character boundary");
}
