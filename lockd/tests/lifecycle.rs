//! The server's life across restarts and shutdown, with the real binary: fencing tokens
//! never go backwards, and a shutdown never grants a lock it is about to take away.

mod common;

use std::time::Duration;

use common::process::{free_port, LockdProcess};
use serde_json::json;

#[test]
fn tokens_after_a_restart_are_greater_than_every_token_before() {
    let port = free_port();
    for signal in ["KILL", "TERM"] {
        let mut first = LockdProcess::spawn_on(port, &[]);
        let mut c = first.client();
        let before: Vec<u64> = (0..50).map(|i| c.lock(&format!("k{i}"), 0)).collect();
        first.stop_with(signal);
        let second = LockdProcess::spawn_on(port, &[]);
        let mut c = second.client();
        let after = c.lock("k0", 0);
        assert!(after > *before.iter().max().unwrap(), "after SIG{signal}: {after} must exceed {before:?}");
        for token in before {
            assert_eq!(c.call("check", json!({"key": "k0", "token": token})), json!({"valid": false}));
        }
        assert_eq!(c.call("check", json!({"key": "k0", "token": after})), json!({"valid": true}));
    }
}

#[test]
fn with_a_state_dir_tokens_start_above_the_recorded_ceiling_whatever_the_clock() {
    let dir = std::env::temp_dir().join(format!("lockd-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // As if an earlier run had issued tokens far beyond what the clock would give.
    let ceiling: u64 = 7_000_000_000_000_000_000;
    std::fs::write(dir.join("fencing-ceiling"), format!("{ceiling}\n")).unwrap();
    let state_dir = dir.to_str().unwrap();
    let mut lockd = LockdProcess::spawn(&["--state-dir", state_dir]);
    let token = lockd.client().lock("k", 0);
    assert!(token > ceiling, "{token} > {ceiling}");
    lockd.stop_with("KILL");
    let recorded: u64 = std::fs::read_to_string(dir.join("fencing-ceiling")).unwrap().trim().parse().unwrap();
    assert!(recorded > token, "the ceiling on disk ({recorded}) stays ahead of issued tokens ({token})");
    let again = LockdProcess::spawn(&["--state-dir", state_dir]).client().lock("k", 0);
    assert!(again > recorded);
    std::fs::write(dir.join("fencing-ceiling"), "not a number").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockd"))
        .args(["--listen", "127.0.0.1:0", "--state-dir", state_dir])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not hold a token ceiling"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shutdown_answers_waiters_with_shutting_down_and_never_grants() {
    for round in 0..5 {
        let mut lockd = LockdProcess::spawn(&[]);
        let (mut holder, mut waiter) = (lockd.client(), lockd.client());
        holder.lock("crit", 0);
        let id = waiter.send("lock", json!({"keys": "crit", "wait": 30}));
        assert!(waiter.try_recv(Duration::from_millis(50)).is_none(), "it waits");
        let status = lockd.stop_with("TERM");
        assert!(status.success(), "exit status {status}");
        let reply = waiter.recv();
        assert_eq!(reply["id"], json!(id));
        assert_eq!(reply["error"]["code"], json!("shutting_down"), "round {round}: the waiter must not be granted: {reply}");
        assert!(waiter.is_closed_by_server());
        assert!(holder.is_closed_by_server());
    }
}
