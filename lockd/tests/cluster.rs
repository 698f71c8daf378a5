//! Cluster mode against real etcd members and real lockd nodes (docs/CLUSTER.md): one
//! lock table across nodes, sessions that survive the loss of their node, sessions of a
//! dead node released within their TTL and not before (also when etcd answers late),
//! tokens that keep increasing across a restart of every node, no lock lost when the etcd
//! leader dies, `unavailable` without quorum, a node cut off from etcd (a freezable proxy)
//! closing its clients, who resume elsewhere; snapshots; TLS to etcd.
//! Skipped, saying so, where etcd is not installed.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{etcd_available, node, node_on, node_refusal, node_via, node_with, prefix, Etcd, FreezableProxy, SlowProxy};
use common::process::free_port;
use common::Client;
use serde_json::{json, Value};

fn hello(c: &mut Client) -> Value {
    c.call("hello", json!({}))["session"].clone()
}

/// Resumes `session` on `c` (a fresh connection to another node) after losing `lost`.
fn resume(c: &mut Client, lost: &Client, session: &Value, pending: &[u64]) -> Value {
    c.continue_ids_of(lost);
    hello(c);
    c.call_reply("resume", json!({"session": session["id"], "secret": session["secret"], "pending": pending}))
}

#[test]
fn one_lock_table_across_nodes() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start(1);
    let p = prefix("table");
    let (n1, n2) = (node(&etcd, &p, 5), node(&etcd, &p, 5));
    let (mut a, mut b) = (n1.client(), n2.client());
    assert!(hello(&mut a)["secret"].as_str().is_some_and(|s| s.len() == 64));
    hello(&mut b);

    let token = a.lock("k", 0);
    assert_eq!(b.call("lock", json!({"keys": "k", "wait": 0})), json!({"granted": false}), "held through the other node");
    // Shared locks are shared across nodes; multi-key requests are all-or-nothing.
    a.call("lock", json!({"keys": ["s1"], "mode": "shared"}));
    assert_eq!(b.call("lock", json!({"keys": ["s1"], "mode": "shared", "owner": 1}))["granted"], json!(true));
    assert_eq!(b.call("lock", json!({"keys": ["free", "k"], "wait": 0, "owner": 2})), json!({"granted": false}));
    assert_eq!(a.call("locks", json!({"prefix": "free"}))["keys"], json!([]), "no partial grant");

    // A waiter on one node is granted when the holder on another unlocks, with a larger token.
    let wait_id = b.send("lock", json!({"keys": "k", "wait": 10}));
    std::thread::sleep(Duration::from_millis(200));
    a.call("unlock", json!({"keys": "k"}));
    let grant = b.recv();
    assert_eq!(grant["id"], json!(wait_id));
    assert!(grant["result"]["token"].as_u64().unwrap() > token, "{grant}");
    assert_eq!(a.call("check", json!({"key": "k", "token": grant["result"]["token"]})), json!({"valid": true}));

    // A wait runs out on time, even though the table never reads a clock.
    let started = Instant::now();
    assert_eq!(a.call("lock", json!({"keys": "k", "wait": 0.3})), json!({"granted": false}));
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A wait that would close a cycle across nodes is refused.
    a.lock("d1", 0);
    b.lock("d2", 0);
    let waiting = a.send("lock", json!({"keys": "d2", "wait": 10}));
    std::thread::sleep(Duration::from_millis(200));
    let refused = b.call_reply("lock", json!({"keys": "d1", "wait": 10}));
    assert_eq!(refused["error"]["code"], json!("deadlock"), "{refused}");
    b.call("unlock", json!({"keys": "d2"}));
    assert_eq!(a.recv()["id"], json!(waiting));

    // Closing a connection releases its session's locks at once.
    drop(b);
    let started = Instant::now();
    while a.call("lock", json!({"keys": "k", "wait": 0}))["granted"] != json!(true) {
        assert!(started.elapsed() < Duration::from_secs(3), "the closed session's lock was not released");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stat = a.call("stat", json!({}));
    assert_eq!(stat["cluster"]["available"], json!(true), "{stat}");
}

#[test]
fn a_holder_resumes_on_another_node_and_keeps_its_lock() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start(1);
    let p = prefix("resume");
    let (mut n1, n2) = (node(&etcd, &p, 5), node(&etcd, &p, 5));
    let mut holder = n1.client();
    let session = hello(&mut holder);
    let token = holder.lock("r", 0);
    let mut waiter = n2.client();
    hello(&mut waiter);
    let wait_id = waiter.send("lock", json!({"keys": "r", "wait": 30}));

    // The holder's node dies with an unlock of another key in flight, unanswered.
    holder.lock("other", 0);
    n1.stop_with("KILL");
    let in_flight = holder.send("unlock", json!({"keys": "other"}));

    let mut resumed = n2.client();
    let reply = resume(&mut resumed, &holder, &session, &[in_flight]);
    assert_eq!(reply["result"], json!({"resumed": true, "resend": [in_flight]}), "{reply}");
    let again = resumed.call_reply("unlock", json!({"keys": "other"}));
    assert_eq!(again["result"]["released"], json!(["other"]), "{again}");
    // Still the holder, with the same token; the waiter was not granted meanwhile.
    assert_eq!(resumed.call("check", json!({"key": "r", "token": token})), json!({"valid": true}));
    assert!(waiter.try_recv(Duration::from_millis(300)).is_none(), "the waiter was granted a lock that is held");
    // A second resume of the same session closes the first connection; a wrong secret fails.
    let mut intruder = n2.client();
    hello(&mut intruder);
    let wrong = intruder.call_reply("resume", json!({"session": session["id"], "secret": "0".repeat(64)}));
    assert_eq!(wrong["error"]["code"], json!("auth_failed"));

    resumed.call("unlock", json!({"keys": "r"}));
    let grant = waiter.recv();
    assert_eq!(grant["id"], json!(wait_id));
    assert_eq!(grant["result"]["granted"], json!(true));
}

#[test]
fn a_dead_nodes_sessions_are_released_after_their_ttl() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start(1);
    let p = prefix("ttl");
    let ttl = 3;
    let (mut n1, n2) = (node(&etcd, &p, ttl), node(&etcd, &p, ttl));
    let mut holder = n1.client();
    let session = hello(&mut holder);
    holder.lock("t", 0);
    let mut waiter = n2.client();
    hello(&mut waiter);
    let wait_id = waiter.send("lock", json!({"keys": "t", "wait": 30}));
    std::thread::sleep(Duration::from_millis(200));
    n1.stop_with("KILL");
    let killed = Instant::now();
    let grant = waiter.try_recv(Duration::from_secs(ttl + 5)).expect("granted once the dead node's lease lapsed");
    let waited = killed.elapsed();
    assert_eq!(grant["id"], json!(wait_id));
    // At least the TTL after the death (the lease outlives the last renewal by the TTL plus
    // the renewal period); a little less only by the time stop_with took to see the exit.
    assert!(waited >= Duration::from_secs(ttl) - Duration::from_millis(100), "released before the TTL ran out: {waited:?}");
    // The session is gone: resuming it now is refused.
    let mut late = n2.client();
    let reply = resume(&mut late, &holder, &session, &[]);
    assert_eq!(reply["error"]["code"], json!("session_expired"), "{reply}");
}

/// A node whose etcd answers late (0.8 s, under the 1 s renewal period of a 3 s TTL) keeps
/// its lease and its clients: a renewal is one round trip, due a period after the last was
/// sent, however long etcd took to answer that one. And when it dies at the worst moment
/// (etcd has gone a full period without a renewal, the next is about to come), its
/// sessions still live their TTL.
#[test]
fn a_node_whose_etcd_answers_late_keeps_its_lease_and_its_sessions_live_their_ttl() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start(1);
    let p = prefix("late-answers");
    let ttl = 3;
    let proxy = SlowProxy::to(&etcd.members[0].client_url, Duration::from_millis(800));
    let mut n1 = node_via(free_port(), &format!("etcd://{}", proxy.addr), &p, ttl, &[]);
    let n2 = node(&etcd, &p, ttl);
    let mut holder = n1.client();
    // The node binds its port before it has joined, which takes a few late answers.
    holder.send("hello", json!({}));
    holder.try_recv(Duration::from_secs(30)).expect("n1 joined the cluster");
    holder.lock("t", 0);
    let me = holder.call("stat", json!({}))["cluster"]["node"].as_u64().unwrap();
    let mut waiter = n2.client();
    hello(&mut waiter);
    let wait_id = waiter.send("lock", json!({"keys": "t", "wait": 30}));

    // etcd reports whole seconds left (rounded down) of the lease's TTL + 1 s: below the
    // TTL once more than a renewal period passed since it counted the last renewal.
    let announced: Value = serde_json::from_str(&etcd.etcdctl(&["get", &format!("{p}/nodes/{me}"), "-w", "json"]).unwrap()).unwrap();
    let lease = format!("{:x}", announced["kvs"][0]["lease"].as_i64().unwrap());
    let overdue = |text: String| text.split("remaining(").nth(1).and_then(|rest| rest.split('s').next()?.parse::<u64>().ok()).is_some_and(|left| left < ttl);
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(8) && !etcd.etcdctl(&["lease", "timetolive", &lease]).is_some_and(overdue) {}
    // Renewals timed from etcd's answers would come 1.8 s apart here: this dies late in such
    // a gap. Renewals a period apart have come by now anyway.
    std::thread::sleep(Duration::from_millis(600));
    let cluster = holder.call("stat", json!({}))["cluster"].clone();
    assert_eq!(cluster["available"], json!(true), "the node lost its lease though etcd answered within a period: {cluster}");
    n1.stop_with("KILL");
    let killed = Instant::now();
    let grant = waiter.try_recv(Duration::from_secs(ttl + 5)).expect("granted once the dead node's lease lapsed");
    let waited = killed.elapsed();
    assert_eq!(grant["id"], json!(wait_id));
    assert!(waited >= Duration::from_secs(ttl) - Duration::from_millis(100), "released before the TTL ran out: {waited:?}");
}

#[test]
fn tokens_keep_increasing_across_a_restart_of_every_node_and_of_etcd() {
    if !etcd_available() {
        return;
    }
    let mut etcd = Etcd::start(1);
    let p = prefix("restart");
    let port = common::process::free_port();
    let mut n1 = node_on(port, &etcd, &p, 3);
    let mut c = n1.client();
    hello(&mut c);
    let before: Vec<u64> = (0..20).map(|i| c.lock(&format!("k{i}"), 0)).collect();
    n1.stop_with("KILL");
    etcd.kill_member(0);
    etcd.start_member(0);
    etcd.wait_writable();
    let n1 = node_on(port, &etcd, &p, 3);
    let mut c = n1.client();
    hello(&mut c);
    // The dead node's session lapses within the TTL; its keys come free then.
    let started = Instant::now();
    let after = loop {
        let r = c.call("lock", json!({"keys": "k0", "wait": 0}));
        if r["granted"] == json!(true) {
            break r["token"].as_u64().unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "k0 never came free");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(after > *before.iter().max().unwrap(), "token {after} after the restart is not above {before:?}");

    // After a restore from a backup that rewound etcd's revisions, one node raises them all.
    let above = after * 1000;
    let raising = node_with(free_port(), &etcd, &p, 3, &["--raise-tokens-above", &above.to_string()]);
    let mut r = raising.client();
    hello(&mut r);
    assert!(r.lock("raised", 0) > above);
    assert!(c.lock("raised-elsewhere", 0) > above, "the other node's tokens are raised too");
}

#[test]
fn losing_the_etcd_leader_loses_no_lock_and_without_quorum_nodes_say_unavailable() {
    if !etcd_available() {
        return;
    }
    let mut etcd = Etcd::start(3);
    let p = prefix("leader");
    // The default TTL: an election must not look like the node losing its lease.
    let n1 = node(&etcd, &p, 15);
    let mut c = n1.client();
    hello(&mut c);
    let token = c.lock("l", 0);
    let leader = etcd.leader();
    etcd.kill_member(leader);
    // Requests go on once a new leader is elected; the lock is still held.
    let started = Instant::now();
    loop {
        // A write caught in the election is settled once there is a new leader.
        c.send("lock", json!({"keys": "l2", "wait": 0}));
        let r = c.try_recv(Duration::from_secs(20)).expect("an answer once etcd has a leader again");
        if r["result"]["granted"] == json!(true) {
            break;
        }
        assert_eq!(r["error"]["code"], json!("unavailable"), "{r}");
        assert!(started.elapsed() < Duration::from_secs(20), "no writes after the leader died");
        std::thread::sleep(Duration::from_millis(200));
    }
    // check is written to the log too: one caught in a further election is refused
    // (`unavailable`), never answered from a guess.
    let started = Instant::now();
    let checked = loop {
        let r = c.call_reply("check", json!({"key": "l", "token": token}));
        if r["error"]["code"] != json!("unavailable") {
            break r;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "check still refused 20 s after the election: {r}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(checked["result"], json!({"valid": true}), "{checked}");
    // The lease's renewals may have stalled in the election too: wait for a fresh one, so
    // that what follows starts with the whole safety margin (12 of the lease's 16 s).
    let started = Instant::now();
    while c.call("stat", json!({}))["cluster"]["lease_sure_for"].as_f64().unwrap() < 10.0 {
        assert!(started.elapsed() < Duration::from_secs(20), "the lease is not renewed after the election");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Two of three members gone: no quorum. The node refuses rather than guesses.
    let second = (0..3).find(|&i| i != leader).unwrap();
    etcd.kill_member(second);
    // A write in flight when quorum went is neither confirmed nor refused until etcd
    // answers again (it may have committed); the node stops taking requests meanwhile.
    c.send("lock", json!({"keys": "l3", "wait": 0, "owner": 1}));
    // lockd gives etcd 5 s to answer.
    std::thread::sleep(Duration::from_secs(6));
    let started = Instant::now();
    let refused = loop {
        let id = c.send("lock", json!({"keys": "l4", "wait": 0, "owner": 2}));
        // Once the lease may lapse the node closes its connections (a slow machine may get
        // there first): a new connection must be refused just the same.
        let Some(r) = c.recv_or_closed() else {
            c = n1.client();
            hello(&mut c);
            continue;
        };
        assert_eq!(r["id"], json!(id), "{r}");
        if r["error"]["code"] == json!("unavailable") {
            break r;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "still taking locks without quorum: {r}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(refused["error"]["message"].as_str().unwrap().contains("etcd"), "{refused}");
    assert_eq!(c.call("stat", json!({}))["cluster"]["available"], json!(false));
}

/// `locks` without what differs between nodes (ages, peers).
fn table_seen_by(c: &mut Client) -> Value {
    let mut keys = c.call("locks", json!({}))["keys"].clone();
    for key in keys.as_array_mut().unwrap() {
        for list in ["holders", "waiters"] {
            for entry in key[list].as_array_mut().unwrap() {
                let entry = entry.as_object_mut().unwrap();
                for varying in ["held_for", "waited_for", "peer", "gives_up_in"] {
                    entry.remove(varying);
                }
            }
        }
    }
    keys
}

#[test]
fn a_node_that_starts_after_a_snapshot_loads_it_and_agrees() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start(1);
    let p = prefix("snapshot");
    let often = ["--snapshot-every", "10"];
    let (n1, n2) = (node_with(free_port(), &etcd, &p, 5, &often), node_with(free_port(), &etcd, &p, 5, &often));
    let (mut a, mut b) = (n1.client(), n2.client());
    hello(&mut a);
    hello(&mut b);
    let held = a.lock("held", 0);
    a.call("lock", json!({"keys": ["s1", "s2"], "mode": "shared", "value": "v", "owner": 1}));
    let waiting = b.send("lock", json!({"keys": ["held", "other"], "wait": 60}));
    // Enough requests for a few snapshots and the deletion of the log behind them.
    for i in 0..40 {
        a.lock(&format!("churn{i}"), 2);
        a.call("unlock", json!({"keys": format!("churn{i}"), "owner": 2}));
    }
    let started = Instant::now();
    let log = format!("{p}/log/");
    loop {
        let pointer = etcd.etcdctl(&["get", &format!("{p}/snapshot/current"), "--print-value-only"]).unwrap_or_default();
        let batches = etcd.etcdctl(&["get", &log, "--prefix", "--keys-only"]).unwrap_or_default().lines().filter(|l| !l.is_empty()).count();
        if !pointer.trim().is_empty() && batches < 40 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no snapshot, or the log was not deleted behind it ({batches} batches)");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A node that starts now rebuilds the same table from the snapshot and the log after it.
    let n3 = node_with(free_port(), &etcd, &p, 5, &often);
    let mut c = n3.client();
    hello(&mut c);
    let expected = table_seen_by(&mut a);
    let started = Instant::now();
    while table_seen_by(&mut c) != expected {
        assert!(started.elapsed() < Duration::from_secs(10), "node 3 sees {} instead of {expected}", table_seen_by(&mut c));
        std::thread::sleep(Duration::from_millis(100));
    }
    // And it decides as the others: the queued request is granted, with a larger token.
    assert_eq!(c.call("lock", json!({"keys": "held", "wait": 0})), json!({"granted": false}));
    a.call("unlock", json!({"keys": "held"}));
    let grant = b.recv();
    assert_eq!(grant["id"], json!(waiting));
    let token = grant["result"]["token"].as_u64().unwrap();
    assert!(token > held);
    let started = Instant::now();
    while c.call("check", json!({"key": "other", "token": token})) != json!({"valid": true}) {
        assert!(started.elapsed() < Duration::from_secs(5), "node 3 does not know the grant");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nodes_speak_tls_to_etcd_with_a_client_certificate() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start_tls();
    let p = prefix("tls");
    let (ca, cert, key) = (etcd.file("ca.crt"), etcd.file("client.crt"), etcd.file("client.key"));
    let tls = ["--etcd-ca-file", ca.as_str(), "--etcd-cert-file", cert.as_str(), "--etcd-key-file", key.as_str()];
    let (n1, n2) = (node_with(free_port(), &etcd, &p, 5, &tls), node_with(free_port(), &etcd, &p, 5, &tls));
    let (mut a, mut b) = (n1.client(), n2.client());
    hello(&mut a);
    hello(&mut b);
    a.lock("k", 0);
    assert_eq!(b.call("lock", json!({"keys": "k", "wait": 0})), json!({"granted": false}));
}

#[test]
fn a_node_cut_off_from_etcd_closes_its_connections_and_its_holder_resumes_elsewhere() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start(1);
    let p = prefix("partition");
    let proxy = FreezableProxy::to(&etcd.members[0].client_url);
    let cut_off = node_via(free_port(), &format!("etcd://{}", proxy.addr), &p, 5, &[]);
    let other = node(&etcd, &p, 5);
    let mut holder = cut_off.client();
    let session = hello(&mut holder);
    let token = holder.lock("p", 0);
    let mut waiter = other.client();
    hello(&mut waiter);
    let wait_id = waiter.send("lock", json!({"keys": "p", "wait": 60}));

    proxy.freeze(true);
    // The node cannot renew its lease: before etcd may expire it, it closes its clients.
    let started = Instant::now();
    // Each look waits up to 5 s; the lease (6 s) lets the node keep it about 4.5 s.
    assert!((0..2).any(|_| holder.is_closed_by_server()), "the cut-off node kept its connection");
    assert!(started.elapsed() < Duration::from_secs(6), "closed only after {:?}", started.elapsed());
    let mut fresh = cut_off.client();
    hello(&mut fresh);
    assert_eq!(fresh.call_reply("lock", json!({"keys": "q", "wait": 0}))["error"]["code"], json!("unavailable"));

    // Its holder resumes on the other node within the TTL, lock and token intact.
    let mut resumed = other.client();
    let reply = resume(&mut resumed, &holder, &session, &[]);
    assert_eq!(reply["result"]["resumed"], json!(true), "{reply}");
    assert_eq!(resumed.call("check", json!({"key": "p", "token": token})), json!({"valid": true}));
    assert!(waiter.try_recv(Duration::from_millis(200)).is_none(), "granted while held");
    proxy.freeze(false);
    resumed.call("unlock", json!({"keys": "p"}));
    assert_eq!(waiter.recv()["id"], json!(wait_id));
}

#[test]
fn a_session_closed_while_its_node_was_in_doubt_is_released_after_its_ttl_if_nobody_resumes_it() {
    if !etcd_available() {
        return;
    }
    // A node that cannot renew its lease closes its connections before the lease may lapse.
    // When etcd answers again in time the lease, and with it the sessions, live on: a client
    // that never resumes (its process is gone) must not keep its locks for as long as the
    // node lives.
    let etcd = Etcd::start(1);
    let p = prefix("orphan");
    let proxy = FreezableProxy::to(&etcd.members[0].client_url);
    let ttl = 8;
    let in_doubt = node_via(free_port(), &format!("etcd://{}", proxy.addr), &p, ttl, &[]);
    let other = node(&etcd, &p, ttl);
    let mut holder = in_doubt.client();
    hello(&mut holder);
    holder.lock("o", 0);
    let mut waiter = other.client();
    hello(&mut waiter);
    let wait_id = waiter.send("lock", json!({"keys": "o", "wait": 120}));

    proxy.freeze(true);
    assert!((0..3).any(|_| holder.is_closed_by_server()), "the node kept its connection");
    proxy.freeze(false);
    drop(holder);
    // The session outlives its connection by its TTL, as after a node's death, so that its
    // client could resume it elsewhere; the lease did not lapse, so nothing ends it sooner.
    assert!(waiter.try_recv(Duration::from_secs(ttl - 2)).is_none(), "released before the session's TTL: did the lease lapse?");
    let granted = waiter.try_recv(Duration::from_secs(10)).expect("the lock of a session nobody resumed was never released");
    assert_eq!(granted["id"], json!(wait_id), "{granted}");
}

#[test]
fn check_through_any_node_sees_every_lock_and_unlock_answered_before_it() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start(1);
    let p = prefix("check");
    let (n1, n2) = (node(&etcd, &p, 5), node(&etcd, &p, 5));
    let (mut a, mut b) = (n1.client(), n2.client());
    hello(&mut a);
    hello(&mut b);
    // Each step is asked only after the one before was answered: a node whose copy of the
    // table lags must not answer from it.
    for round in 0..100 {
        let key = format!("k{round}");
        let token = a.lock(&key, 0);
        assert_eq!(b.call("check", json!({"key": key, "token": token})), json!({"valid": true}), "round {round}: a granted lock is not seen");
        a.call("unlock", json!({"keys": key}));
        assert_eq!(b.call("check", json!({"key": key, "token": token})), json!({"valid": false}), "round {round}: a released lock is vouched for");
    }
}

#[test]
fn a_node_whose_watch_skips_a_batch_exits_rather_than_diverge() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start(1);
    let p = prefix("gap");
    let mut n1 = node(&etcd, &p, 5);
    let mut c = n1.client();
    hello(&mut c);
    c.lock("k", 0);
    // Batches 0 and 2 of a node 999 (numbers no node takes): the node sees 1 missing, as
    // after a watch that dropped an event, and must not go on with a table that may differ.
    let batch = |number: u32| format!("{p}/log/999/{number}");
    etcd.etcdctl(&["put", &batch(0), "[]"]).expect("put batch 0");
    assert!(n1.exit_within(Duration::from_millis(500)).is_none(), "batch 0 of a node is fine");
    // A repeat of batch 0 (a watch that delivers an event twice) is skipped.
    etcd.etcdctl(&["put", &batch(0), "[]"]).expect("put batch 0 again");
    assert!(n1.exit_within(Duration::from_millis(500)).is_none(), "a repeated batch is skipped");
    assert_eq!(c.call("check", json!({"key": "k", "token": 0}))["valid"], json!(false), "the node still serves");
    etcd.etcdctl(&["put", &batch(2), "[]"]).expect("put batch 2");
    let status = n1.exit_within(Duration::from_secs(10)).expect("the node exits on a gap");
    assert_eq!(status.code(), Some(2), "{status:?}");
}

#[test]
fn a_node_with_other_limits_refuses_to_join_naming_them_and_one_that_decides_as_older_nodes_joins() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start(1);
    let p = prefix("limits");
    let first = node_with(free_port(), &etcd, &p, 5, &["--max-locks", "500"]);
    let (status, said) = node_refusal(&etcd, &p, &["--max-locks", "600", "--max-keys", "8"]);
    assert_eq!(status.code(), Some(1), "{status:?}: {said}");
    assert!(said.contains("--max-locks: the cluster's 500, this node's 600"), "{said}");
    assert!(said.contains("--max-keys: the cluster's 1024, this node's 8"), "{said}");
    assert_eq!(first.client().call("ping", json!({})), json!({"pong": true}), "the cluster serves on");

    // A config written by a lockd from before --max-waiters-per-connection: a node that
    // decides as those did (a limit per connection equal to --max-waiters) joins.
    let older = prefix("older-limits");
    let config = r#"{"deadlock_budget":100000,"max_key_len":1024,"max_keys":1024,"max_locks":10000000,"max_memory":4294967296,"max_waiters":1000000}"#;
    etcd.etcdctl(&["put", &format!("{older}/config"), config]).expect("put an older node's config");
    let (status, said) = node_refusal(&etcd, &older, &[]);
    assert_eq!(status.code(), Some(1), "{status:?}: {said}");
    assert!(said.contains("--max-waiters-per-connection: the cluster's 1000000 (its config was written by a lockd without this limit"), "{said}");
    let upgraded = node_with(free_port(), &etcd, &older, 5, &["--max-waiters-per-connection", "1000000"]);
    let mut c = upgraded.client();
    hello(&mut c);
    c.lock("k", 0);
}
