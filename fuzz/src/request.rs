//! Target `request`: arbitrary request payloads through the server's own parsing of the
//! envelope and of each command's parameters (`lockd::cmd::handle_frame`, what a
//! connection runs for every frame), on fresh server state per input, from up to three
//! connections that may close, with time passing for waits and lock-delays. Checks that
//! every request is answered — a reply, or a lock request left waiting — with
//! well-formed frames; that parameters given as a list instead of an object are refused;
//! that the last connection used still answers `ping` afterwards; and that once every
//! connection has closed and the lock-delay is over, the table is empty (no lost or
//! leaked lock).
//!
//! Input: lines. The first line's first byte picks the server setup (bit 0: an auth key
//! is required, bit 1: tiny limits, bit 2: a lock-delay of one second). Every further
//! line is one request payload on the current connection, or, starting with `>`, an
//! action: `>0`..`>2` switch connection (opened when first used), `>x` closes the current
//! one (the next request there opens a new one), `>t` lets as many seconds pass as the
//! digits that follow say (for the reaper's work: waits run out, lock-delays end). Seeds
//! are readable: a setup digit, then one JSON request per line.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use lockd::cmd::auth::AuthState;
use lockd::cmd::handle_frame;
use lockd::outbox::Outbox;
use lockd::state::State;
use lockd::table::ConnId;
use lockd::Config;
use pklock_proto::auth::{AuthKey, Nonce, Proof};
use pklock_proto::frame;
use serde_json::Value;
use tokio::runtime::Runtime;

const AUTH_KEY: &str = "fuzz-key";

/// Connections one input can use at once.
const CONNECTIONS: usize = 3;

/// What `lockd::connection::serve` keeps per client, minus the socket.
struct Client {
    conn: ConnId,
    auth: AuthState,
    /// Replies not sent yet (`defer_reply` keeps them here until the next reply).
    out: Vec<u8>,
}

impl Client {
    fn open(shared: &State, peer: SocketAddr) -> Client {
        Client { conn: shared.connect(peer), auth: AuthState::new(&shared.config, peer), out: Vec::new() }
    }

    /// Runs one request; returns the replies it added.
    fn request(&mut self, shared: &Arc<State>, outbox: &Arc<Outbox>, payload: &[u8]) -> Vec<Value> {
        let checked = self.out.len();
        let send_now = handle_frame(shared, self.conn, outbox, &mut self.auth, &mut None, &mut self.out, payload);
        let replies = check_frames(&self.out[checked..]);
        if send_now {
            self.out.clear();
        }
        replies
    }
}

pub fn run(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let setup = lines.next().and_then(|l| l.first()).copied().unwrap_or(0);
    let wire = wire();
    let shared = Arc::new(State::new(config(setup)).expect("no state dir, nothing to fail"));
    let mut clients: [Option<Client>; CONNECTIONS] = Default::default();
    let mut current = 0;
    // The reaper's clock: real time plus the seconds `>t` let pass.
    let mut skipped = Duration::ZERO;

    for line in lines {
        match line {
            [b'>', b'x', ..] => {
                if let Some(client) = clients[current].take() {
                    shared.disconnect(client.conn);
                }
            }
            [b'>', b't', digits @ ..] => {
                let secs = digits.iter().take_while(|b| b.is_ascii_digit()).fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')));
                skipped = skipped.saturating_add(Duration::from_secs(secs));
                expire(&shared, skipped);
            }
            [b'>', which, ..] => current = usize::from(*which) % CONNECTIONS,
            payload => {
                let client = clients[current].get_or_insert_with(|| Client::open(&shared, wire.peer));
                let waiting_before = shared.stats().waiters;
                let replies = client.request(&shared, &wire.outbox, payload);
                if client.auth.locked_out() {
                    // The server closes a connection after its third failed auth attempt.
                    let client = clients[current].take().expect("just used");
                    shared.disconnect(client.conn);
                }
                if replies.is_empty() {
                    let waiting = shared.stats().waiters;
                    assert_eq!(waiting, waiting_before + 1, "no reply and no new waiter for {:?}", String::from_utf8_lossy(payload));
                }
                if parameters_are_a_list(payload) {
                    assert!(replies.iter().any(|r| r.get("error").is_some()), "parameters as a list accepted: {:?} -> {replies:?}", String::from_utf8_lossy(payload));
                }
            }
        }
    }

    // The connection the input used last still gets answers.
    let client = clients[current].get_or_insert_with(|| Client::open(&shared, wire.peer));
    let hello = client.request(&shared, &wire.outbox, br#"{"id":"fuzz-hello","command":"hello"}"#);
    if let Some(nonce) = hello.first().and_then(|h| h["result"]["auth"]["nonce"].as_str()) {
        // The challenge-response of docs/PROTOCOL.md, as a client that knows the key does it.
        let server_nonce = Nonce::parse(nonce).expect("a well-formed challenge");
        let client_nonce = Nonce::random().expect("random bytes");
        let proof = Proof::Client.compute(&AuthKey::new(AUTH_KEY).expect("a key"), &server_nonce, &client_nonce);
        let auth = serde_json::json!({"id": "fuzz-auth", "command": "auth", "parameters": {"client_nonce": client_nonce.as_str(), "proof": proof}});
        client.request(&shared, &wire.outbox, auth.to_string().as_bytes());
    }
    let replies = client.request(&shared, &wire.outbox, br#"{"id":"fuzz-ping","command":"ping"}"#);
    assert_eq!(replies.len(), 1, "one reply to ping: {replies:?}");
    assert_eq!(replies[0]["id"], "fuzz-ping", "{}", replies[0]);
    assert_eq!(replies[0]["result"]["pong"], true, "{}", replies[0]);

    for client in clients.into_iter().flatten() {
        shared.disconnect(client.conn);
    }
    expire(&shared, skipped.saturating_add(shared.config.lock_delay));
    let stats = shared.stats();
    assert_eq!((stats.locks, stats.waiters, stats.keys), (0, 0, 0), "left behind after every connection closed");
    assert_eq!(shared.connections(), 0);
    wire.drain();
}

/// Does the reaper's work as if `skipped` more time had passed: ends the waits and
/// lock-delays that are over by then, and answers the waiters.
fn expire(shared: &State, skipped: Duration) {
    // Far-future clocks saturate rather than overflow, like a wait too long to represent.
    let now = Instant::now().checked_add(skipped).unwrap_or_else(|| Instant::now() + Duration::from_secs(u32::MAX.into()));
    shared.expire_at(now);
}

/// Whether `payload` is a request whose parameters are a non-empty JSON list. Parameters
/// are an object (docs/PROTOCOL.md); serde would read a list positionally, which must not
/// happen. `[]` is allowed: it is how PHP's json_encode writes an empty array.
fn parameters_are_a_list(payload: &[u8]) -> bool {
    serde_json::from_slice::<Value>(payload).is_ok_and(|request| request.get("parameters").and_then(Value::as_array).is_some_and(|list| !list.is_empty()))
}

/// Every frame in `bytes` (whole frames only) holds one JSON object; returns them.
fn check_frames(mut bytes: &[u8]) -> Vec<Value> {
    let mut replies = Vec::new();
    while !bytes.is_empty() {
        let end = frame::decode(bytes, usize::MAX).expect("no limit").expect("whole frames only");
        let reply: Value = serde_json::from_slice(&bytes[frame::HEADER_LEN..end]).expect("a reply is JSON");
        assert!(reply.is_object(), "reply is not an object: {reply}");
        replies.push(reply);
        bytes = &bytes[end..];
    }
    replies
}

/// The server setup an input asks for.
fn config(setup: u8) -> Config {
    static DEFAULTS: OnceLock<Config> = OnceLock::new();
    let mut config = DEFAULTS.get_or_init(|| Config::parse_from(["lockd"])).clone();
    config.auth_key_arg = (setup & 1 != 0).then(|| AuthKey::new(AUTH_KEY).expect("a key"));
    if setup & 2 != 0 {
        config.max_locks = 8;
        config.max_waiters = 2;
        config.max_keys = 3;
        config.max_key_length = 8;
    }
    if setup & 4 != 0 {
        config.lock_delay = Duration::from_secs(1);
    }
    config
}

/// The socket that grants to waiting requests go out on. Commands write their own
/// replies into `out`, but a grant that ends a wait goes to the waiter's [`Outbox`],
/// which needs a real socket; one loopback pair serves the whole fuzz process (a new
/// one per input would run out of ports).
struct Wire {
    runtime: Runtime,
    outbox: Arc<Outbox>,
    /// The client end, where grants arrive.
    client: TcpStream,
    peer: SocketAddr,
}

fn wire() -> &'static Wire {
    static WIRE: OnceLock<Wire> = OnceLock::new();
    WIRE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (server, peer) = listener.accept().expect("accept");
        client.set_nonblocking(true).expect("nonblocking");
        server.set_nonblocking(true).expect("nonblocking");
        let server = {
            let _tokio = runtime.enter();
            tokio::net::TcpStream::from_std(server).expect("register socket")
        };
        let (_, writer) = lockd::stream::ClientStream::from(server).into_split();
        Wire { runtime, outbox: Arc::new(Outbox::new(writer)), client, peer }
    })
}

impl Wire {
    /// Flushes what the outbox queued and reads it all, checking it is whole frames of
    /// JSON, so the next input starts on an empty socket.
    fn drain(&self) {
        let mut received = Vec::new();
        loop {
            self.read_available(&mut received);
            if !self.outbox.has_queued() {
                break;
            }
            // The current-thread runtime only learns the socket is writable inside
            // block_on; a short timeout lets the loop read what made room.
            let _ = self.runtime.block_on(async { tokio::time::timeout(Duration::from_millis(10), self.outbox.flush()).await });
        }
        check_frames(&received);
    }

    fn read_available(&self, into: &mut Vec<u8>) {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match (&self.client).read(&mut buf) {
                Ok(0) => panic!("the server side of the fuzz socket closed"),
                Ok(n) => into.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("reading the fuzz socket: {e}"),
            }
        }
    }
}
