//! Test support: an in-process lockd on a free loopback port, and a blocking client
//! that speaks the wire format through pklock-proto.

#![allow(dead_code)] // each test file uses a different part

pub mod attack;
pub mod cluster;
pub mod netns;
pub mod process;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use clap::Parser;
use lockd::{Config, Server};
use pklock_proto::auth::{AuthKey, Nonce, Proof, METHOD};
use pklock_proto::frame::{self, FrameError};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// How long a test waits for a reply it expects before failing.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The etcd of `LOCKD_TEST_CLUSTER`, when the suites run against a cluster node.
pub fn cluster_under_test() -> Option<String> {
    std::env::var("LOCKD_TEST_CLUSTER").ok().filter(|url| !url.is_empty())
}

pub struct TestServer {
    /// The first listening address.
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> Self {
        Self::with_args(&[])
    }

    /// With `LOCKD_TEST_CLUSTER=etcd://HOST:PORT` the server is a cluster node on a prefix
    /// of its own (`make test` runs the semantic suites both ways).
    pub fn with_args(args: &[&str]) -> Self {
        let mut argv: Vec<String> = ["lockd", "--listen", "127.0.0.1:0", "--log-level", "warn"].iter().chain(args).map(|a| a.to_string()).collect();
        if let Some(etcd) = cluster_under_test() {
            // Unique within the run: a free port number is not (tests run at once, and two
            // may be handed the same port), and nodes of another test on the same prefix would
            // join its cluster.
            static SERVERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            argv.extend(["--cluster".into(), etcd, "--cluster-prefix".into(), format!("/pklock-test/{}-{n}", std::process::id())]);
        }
        let config = Config::parse_from(argv);
        let shutdown = CancellationToken::new();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let server = Server::bind(config).await.expect("bind");
                addr_tx.send(server.local_addrs()).unwrap();
                server.run(token).await;
            });
        });
        let addrs: Vec<SocketAddr> = addr_rx.recv_timeout(REPLY_TIMEOUT).expect("server started");
        TestServer { addr: addrs[0], addrs, shutdown, thread: Some(thread) }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Client {
    pub stream: TcpStream,
    next_id: u64,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        Self::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// A client on a stream connected some other way (e.g. with socket options set first).
    pub fn from_stream(stream: TcpStream) -> Self {
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        Client { stream, next_id: 0 }
    }

    /// Carries on the request ids of `lost` (a cluster session's ids must increase).
    pub fn continue_ids_of(&mut self, lost: &Client) {
        self.next_id = self.next_id.max(lost.next_id);
    }

    /// Sends a request and returns its id.
    pub fn send(&mut self, command: &str, parameters: Value) -> u64 {
        self.next_id += 1;
        self.send_value(&json!({"id": self.next_id, "command": command, "parameters": parameters}));
        self.next_id
    }

    pub fn send_value(&mut self, msg: &Value) {
        frame::write_frame(&mut self.stream, msg).expect("write");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next reply; fails the test if none comes within REPLY_TIMEOUT.
    pub fn recv(&mut self) -> Value {
        self.try_recv(REPLY_TIMEOUT).expect("a reply")
    }

    /// The next reply, or None if nothing arrives within `wait`.
    pub fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        match self.read_reply(wait) {
            Ok(reply) => reply,
            Err(e) => panic!("reading reply: {e}"),
        }
    }

    /// The next reply, or `None` if the server closed the connection instead; fails the
    /// test if neither happens within REPLY_TIMEOUT.
    pub fn recv_or_closed(&mut self) -> Option<Value> {
        match self.read_reply(REPLY_TIMEOUT) {
            Ok(reply) => Some(reply.expect("a reply or the connection closed")),
            Err(FrameError::Closed) => None,
            Err(FrameError::Io(e)) if e.kind() == ErrorKind::ConnectionReset => None,
            Err(e) => panic!("reading reply: {e}"),
        }
    }

    /// The next reply, `Ok(None)` if nothing arrives within `wait`.
    fn read_reply(&mut self, wait: Duration) -> Result<Option<Value>, FrameError> {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut payload = Vec::new();
        let got = frame::read_frame(&mut self.stream, usize::MAX, &mut payload);
        self.stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        match got {
            Ok(()) => Ok(Some(serde_json::from_slice(&payload).expect("reply is JSON"))),
            Err(FrameError::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends a request and returns its result, failing on an error reply.
    pub fn call(&mut self, command: &str, parameters: Value) -> Value {
        let reply = self.call_reply(command, parameters);
        assert!(reply.get("error").is_none(), "{command} failed: {reply}");
        reply["result"].clone()
    }

    /// Sends a request and returns the whole reply.
    pub fn call_reply(&mut self, command: &str, parameters: Value) -> Value {
        let id = self.send(command, parameters);
        let reply = self.recv();
        assert_eq!(reply["id"], json!(id), "reply matches request");
        reply
    }

    /// `hello`, then `auth` with a proof made with `key` (docs/PROTOCOL.md,
    /// "Authentication"); returns the `auth` reply and the two nonces it was made for.
    pub fn authenticate(&mut self, key: &str) -> (Value, Nonce, Nonce) {
        let hello = self.call("hello", json!({}));
        assert_eq!(hello["auth"]["method"], json!(METHOD), "{hello}");
        let server_nonce = Nonce::parse(hello["auth"]["nonce"].as_str().expect("a nonce")).expect("64 hex digits");
        let client_nonce = Nonce::random().unwrap();
        let proof = Proof::Client.compute(&AuthKey::new(key).unwrap(), &server_nonce, &client_nonce);
        let reply = self.call_reply("auth", json!({"client_nonce": client_nonce.as_str(), "proof": proof}));
        (reply, server_nonce, client_nonce)
    }

    /// Takes `key` for `owner`, failing unless it is granted; returns the token.
    pub fn lock(&mut self, key: &str, owner: u64) -> u64 {
        let r = self.call("lock", json!({"keys": key, "owner": owner, "wait": 0}));
        assert_eq!(r["granted"], json!(true), "lock {key}: {r}");
        r["token"].as_u64().unwrap()
    }

    /// Whether the server closed this connection (reads EOF within the timeout).
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue, // a final error frame may come first
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}
