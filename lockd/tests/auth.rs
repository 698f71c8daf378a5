//! Authentication over raw TCP: the hmac-sha256 challenge-response (docs/PROTOCOL.md),
//! what an eavesdropper, a replayer and a brute-forcer get (nothing), the key sources, the
//! refusal to listen beyond loopback without a key, and logs that never show the key.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::process::{free_port, LockdProcess};
use common::TestServer;
use pklock_proto::auth::{AuthKey, Nonce, Proof};
use pklock_proto::frame;
use serde_json::{json, Value};

const KEY: &str = "s3cret-key-for-tests";

fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("(none)")
}

/// A file in the temp directory with `contents`, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("lockd-auth-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_right_key_authenticates_and_the_server_proves_it_knows_the_key() {
    let server = TestServer::with_args(&["--auth-key", KEY]);
    let mut c = server.client();
    assert_eq!(code(&c.call_reply("lock", json!({"keys": "k"}))), "auth_required");

    let (reply, server_nonce, client_nonce) = c.authenticate(KEY);
    assert_eq!(reply["result"]["authenticated"], json!(true), "{reply}");
    let server_proof = reply["result"]["server_proof"].as_str().unwrap();
    assert!(Proof::Server.verify(&AuthKey::new(KEY).unwrap(), &server_nonce, &client_nonce, server_proof));
    assert!(!Proof::Server.verify(&AuthKey::new("another key").unwrap(), &server_nonce, &client_nonce, server_proof));
    c.lock("k", 1);
}

#[test]
fn a_wrong_key_is_refused_and_the_connection_stays_unauthenticated() {
    let server = TestServer::with_args(&["--auth-key", KEY]);
    let mut c = server.client();
    let (reply, ..) = c.authenticate("not the key");
    assert_eq!(code(&reply), "auth_failed", "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("wrong proof"));
    assert_eq!(code(&c.call_reply("ping", json!({}))), "auth_required");
}

#[test]
fn every_hello_has_a_fresh_nonce_and_each_is_good_for_one_auth() {
    let server = TestServer::with_args(&["--auth-key", KEY]);
    let mut c = server.client();
    let first = c.call("hello", json!({}))["auth"]["nonce"].clone();
    let second = c.call("hello", json!({}))["auth"]["nonce"].clone();
    assert_ne!(first, second);

    // A wrong attempt uses up the challenge: the right proof for it comes too late.
    let server_nonce = Nonce::parse(second.as_str().unwrap()).unwrap();
    let client_nonce = Nonce::random().unwrap();
    let right = Proof::Client.compute(&AuthKey::new(KEY).unwrap(), &server_nonce, &client_nonce);
    let wrong = json!({"client_nonce": client_nonce.as_str(), "proof": "00".repeat(32)});
    assert_eq!(code(&c.call_reply("auth", wrong)), "auth_failed");
    let late = c.call_reply("auth", json!({"client_nonce": client_nonce.as_str(), "proof": right}));
    assert_eq!(code(&late), "auth_failed");
    assert!(late["error"]["message"].as_str().unwrap().contains("send hello first"), "{late}");
}

#[test]
fn replaying_a_captured_handshake_on_a_new_connection_fails() {
    let server = TestServer::with_args(&["--auth-key", KEY]);
    // What an eavesdropper captures: every byte the real client sends.
    let mut captured = Vec::new();
    let mut c = server.client();
    let hello = frame::encode(&json!({"id": 1, "command": "hello", "parameters": {}})).unwrap();
    c.send_raw(&hello);
    captured.extend_from_slice(&hello);
    let nonce = Nonce::parse(c.recv()["result"]["auth"]["nonce"].as_str().unwrap()).unwrap();
    let client_nonce = Nonce::random().unwrap();
    let proof = Proof::Client.compute(&AuthKey::new(KEY).unwrap(), &nonce, &client_nonce);
    let auth = frame::encode(&json!({"id": 2, "command": "auth", "parameters": {"client_nonce": client_nonce.as_str(), "proof": proof}})).unwrap();
    c.send_raw(&auth);
    captured.extend_from_slice(&auth);
    assert_eq!(c.recv()["result"]["authenticated"], json!(true), "the captured handshake was a good one");
    let lock = frame::encode(&json!({"id": 3, "command": "lock", "parameters": {"keys": "k", "wait": 0}})).unwrap();
    captured.extend_from_slice(&lock);

    let mut replayer = server.client();
    replayer.send_raw(&captured);
    let replayed_hello = replayer.recv();
    assert_ne!(replayed_hello["result"]["auth"]["nonce"], json!(nonce.as_str()), "a new connection gets a new challenge");
    assert_eq!(code(&replayer.recv()), "auth_failed");
    assert_eq!(code(&replayer.recv()), "auth_required", "the replayed lock is refused");
}

#[test]
fn brute_force_on_one_connection_is_cut_off_after_three_attempts() {
    let server = TestServer::with_args(&["--auth-key", KEY]);
    let mut c = server.client();
    let mut attempts = Vec::new();
    for guess in 0..10 {
        attempts.extend(frame::encode(&json!({"id": guess * 2, "command": "hello", "parameters": {}})).unwrap());
        let params = json!({"client_nonce": "11".repeat(32), "proof": format!("{guess:064x}")});
        attempts.extend(frame::encode(&json!({"id": guess * 2 + 1, "command": "auth", "parameters": params})).unwrap());
    }
    c.send_raw(&attempts);
    let mut refusals = Vec::new();
    while let Some(reply) = c.try_recv(common::REPLY_TIMEOUT) {
        if reply.get("error").is_some() {
            refusals.push(reply);
        }
        if refusals.len() == 3 {
            break;
        }
    }
    assert_eq!(refusals.len(), 3);
    assert!(refusals.iter().all(|r| code(r) == "auth_failed"));
    assert!(refusals[2]["error"]["message"].as_str().unwrap().contains("closing the connection"), "{}", refusals[2]);
    assert!(c.is_closed_by_server(), "closed after the third wrong proof");
}

#[test]
fn a_plaintext_auth_key_in_hello_is_refused_even_when_right() {
    let server = TestServer::with_args(&["--auth-key", KEY]);
    let mut c = server.client();
    let reply = c.call_reply("hello", json!({"auth_key": KEY}));
    assert_eq!(code(&reply), "auth_failed");
    assert!(reply["error"]["message"].as_str().unwrap().contains("upgrade the client"), "{reply}");
    assert_eq!(code(&c.call_reply("ping", json!({}))), "auth_required");
}

#[test]
fn a_server_without_a_key_sends_no_challenge() {
    let server = TestServer::start();
    let mut c = server.client();
    assert!(c.call("hello", json!({})).get("auth").is_none());
    assert_eq!(code(&c.call_reply("auth", json!({"client_nonce": "", "proof": ""}))), "bad_request");
}

/// Runs the lockd binary with `args`, expecting it to exit at once (a refused start);
/// returns its exit success and stderr.
fn run_lockd(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockd"))
        .args(args)
        .env_remove("LOCKD_AUTH_KEY")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lockd");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > common::REPLY_TIMEOUT {
            let _ = child.kill();
            panic!("lockd {args:?} kept running instead of refusing to start");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.success(), stderr)
}

#[test]
fn the_binary_refuses_a_non_loopback_listener_without_a_key() {
    // 192.0.2.1 (TEST-NET-1) is on no interface here: a start that gets past the check
    // fails to bind it, so nothing is ever exposed beyond loopback by this test.
    let exposed = format!("192.0.2.1:{}", free_port());
    let (ok, stderr) = run_lockd(&["--listen", "127.0.0.1:0", "--listen", &exposed]);
    assert!(!ok);
    assert!(stderr.contains(&format!("refusing to listen on {exposed} without an auth key")), "{stderr}");
    assert!(stderr.contains("--insecure-no-auth"), "the message says how: {stderr}");

    if std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind").is_ok_and(|v| v.trim() == "1") {
        eprintln!("skipped the starts that pass the check: ip_nonlocal_bind would let lockd bind 192.0.2.1");
        return;
    }
    for allowed in [&["--insecure-no-auth"][..], &["--auth-key", KEY]] {
        let args: Vec<&str> = ["--listen", &exposed].iter().copied().chain(allowed.iter().copied()).collect();
        let (ok, stderr) = run_lockd(&args);
        assert!(!ok, "192.0.2.1 cannot be bound here");
        assert!(stderr.contains(&format!("cannot listen on {exposed}")), "past the check with {allowed:?}: {stderr}");
    }
}

#[test]
fn the_key_file_is_read_without_its_trailing_newline_and_must_not_be_empty() {
    let file = TempFile::new("key", format!("{KEY}\n").as_bytes());
    let server = LockdProcess::spawn(&["--auth-key-file", file.path()]);
    let mut c = server.client();
    assert_eq!(c.authenticate(KEY).0["result"]["authenticated"], json!(true));

    let empty = TempFile::new("empty", b"\n");
    let (ok, stderr) = run_lockd(&["--listen", "127.0.0.1:0", "--auth-key-file", empty.path()]);
    assert!(!ok);
    assert!(stderr.contains("the auth key is empty"), "{stderr}");
    let (ok, stderr) = run_lockd(&["--listen", "127.0.0.1:0", "--auth-key-file", file.path(), "--auth-key", KEY]);
    assert!(!ok && stderr.contains("cannot be used with"), "one source at a time: {stderr}");
}

#[test]
fn the_key_and_the_proofs_never_appear_in_the_log() {
    let log_path = TempFile::new("log", b"");
    let key_file = TempFile::new("logkey", KEY.as_bytes());
    let log = std::fs::File::create(&log_path.0).unwrap();
    let mut server = LockdProcess::spawn_logging_to(log, "trace", &["--auth-key-file", key_file.path()]);

    let mut good = server.client();
    let (reply, ..) = good.authenticate(KEY);
    let server_proof = reply["result"]["server_proof"].as_str().unwrap().to_owned();
    let mut proofs = vec![server_proof];
    let mut bad = server.client();
    for _ in 0..3 {
        let hello = bad.call("hello", json!({}));
        let nonce = Nonce::parse(hello["auth"]["nonce"].as_str().unwrap()).unwrap();
        let client_nonce = Nonce::random().unwrap();
        let near_miss = Proof::Client.compute(&AuthKey::new(format!("{KEY}x")).unwrap(), &nonce, &client_nonce);
        proofs.push(near_miss.clone());
        bad.call_reply("auth", json!({"client_nonce": client_nonce.as_str(), "proof": near_miss}));
    }
    let mut plaintext = server.client();
    plaintext.call_reply("hello", json!({"auth_key": KEY}));
    drop((good, bad, plaintext));
    assert!(server.stop_with("TERM").success());

    let log = std::fs::read_to_string(&log_path.0).unwrap();
    assert!(log.contains("authentication failed") && log.contains("127.0.0.1"), "failures are logged with the peer:\n{log}");
    assert!(!log.contains(KEY), "the key is in the log:\n{log}");
    for proof in proofs {
        assert!(!log.contains(&proof), "a proof is in the log:\n{log}");
    }
}

#[test]
fn a_key_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let key_file = TempFile::new("perm-key", KEY.as_bytes());
    let warned = |mode: u32| {
        std::fs::set_permissions(&key_file.0, std::fs::Permissions::from_mode(mode)).unwrap();
        let log_path = TempFile::new(&format!("perm-log-{mode:o}"), b"");
        let log = std::fs::File::create(&log_path.0).unwrap();
        let mut server = LockdProcess::spawn_logging_to(log, "warn", &["--auth-key-file", key_file.path()]);
        assert!(server.stop_with("TERM").success());
        std::fs::read_to_string(&log_path.0).unwrap().contains("other users can read the auth key file")
    };
    assert!(warned(0o644));
    assert!(!warned(0o600));
}

#[test]
fn a_key_on_the_command_line_is_warned_about_without_being_shown() {
    let log_path = TempFile::new("cmdline-log", b"");
    let log = std::fs::File::create(&log_path.0).unwrap();
    let mut server = LockdProcess::spawn_logging_to(log, "warn", &["--auth-key", KEY]);
    assert!(server.stop_with("TERM").success());
    let log = std::fs::read_to_string(&log_path.0).unwrap();
    assert!(log.contains("--auth-key is visible to every local user in the process list"), "{log}");
    assert!(!log.contains(KEY), "{log}");
}
