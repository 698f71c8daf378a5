//! One TCP connection to lockd: pklock-proto frames over a blocking std socket with
//! timeouts, request ids, and replies matched by id.
//!
//! Requests are either *waited for* (`send` + `wait_reply`) or *pipelined*
//! (`send_pipelined`): the caller goes on without the reply, which is read and checked
//! whenever the connection next reads (at the start of the next call, or while it waits for
//! its own reply). A problem found in a pipelined reply is kept for the owner that sent
//! the request and handed out by `take_deferred` on that owner's next call, so it
//! surfaces without costing a round trip, and never on another object's call.
//!
//! No PHP types here, so the logic is tested against a scripted server in plain Rust.

use std::collections::VecDeque;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use pklock_proto::frame::{self, FrameError, HEADER_LEN};
use pklock_proto::{ErrorBody, HelloParams, HelloResult, ReplyIn, RequestOut, UnlockResult};
use serde::Serialize;
use serde_json::Value;
use socket2::{SockRef, TcpKeepalive};

use crate::error::{quote_keys, ClientError, Released};

/// Largest reply accepted: `locks` on a busy server can exceed the 1 MiB request limit.
const MAX_REPLY: usize = 64 << 20;

/// Bytes the read buffer grows by before each `recv`.
const READ_CHUNK: usize = 16 << 10;

/// How far a blocking read's socket timeout may be from the time left, so that the timeout set
/// for one call can be reused by the next instead of costing a `setsockopt` each time (the
/// deadline check around each read keeps the total exact within this slack).
const TIMEOUT_SLACK: Duration = Duration::from_millis(50);

/// Keepalive probing of an idle connection (e.g. during a long lock wait): a server host
/// that vanished without closing is noticed after about 10 + 3 × 5 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

/// A reply: the `result` member, or the `error` member.
pub type Reply = Result<Value, ErrorBody>;

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// How long a reply may take beyond any lock wait the server was asked to do.
    pub io: Duration,
}

/// Why a connection cannot be used any more.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("closed by the server")]
    Closed,
    #[error("no reply within {:.3} s, so the client closed the connection", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Nothing was sent: the connection is as good as before.
    #[error("the request is {len} bytes, more than the server's limit of {max} bytes; it was not sent")]
    TooLarge { len: usize, max: usize },
}

/// What to check in the reply of a pipelined request.
#[derive(Debug)]
pub enum PipelinedCheck {
    /// `unlock` of keys this client held: the server must release all of them.
    Unlock(Vec<String>),
    /// `release_all`: only errors matter.
    ReleaseAll,
}

#[derive(Debug)]
struct Pipelined {
    id: u64,
    /// The owner handle whose call sent it: only that owner is told of its problems.
    owner: u64,
    check: PipelinedCheck,
    /// False once the request that sent it has ended: its problems concern nobody now.
    report: bool,
}

pub struct Connection {
    stream: TcpStream,
    /// The connection number the server gave us in `hello`.
    server_connection: u64,
    next_id: u64,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    /// Bytes of `inbuf` already decoded.
    consumed: usize,
    /// The payload of the frame decoded last: after `wait_reply`, its reply as sent.
    last_payload: Vec<u8>,
    /// What SO_RCVTIMEO is set to now (`None`: block indefinitely).
    read_timeout: Option<Duration>,
    pipelined: VecDeque<Pipelined>,
    /// The server's limit on a request frame's payload, from `hello`.
    max_frame: usize,
    /// The first problem found in each owner's pipelined replies, not reported yet.
    deferred: Vec<(u64, ClientError)>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        crate::fork::untrack(self.stream.as_raw_fd());
    }
}

impl Connection {
    /// Connects, configures the socket and says `hello`.
    pub fn open(
        addr: &str,
        host: &str,
        port: u16,
        timeouts: Timeouts,
        hello: &HelloParams,
    ) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect { addr: addr.to_owned(), source };
        let stream = connect(host, port, timeouts.connect).map_err(connect_error)?;
        configure(&stream, timeouts).map_err(connect_error)?;
        let mut conn = Connection {
            stream,
            server_connection: 0,
            next_id: 1,
            out: Vec::with_capacity(256),
            inbuf: Vec::with_capacity(READ_CHUNK),
            consumed: 0,
            last_payload: Vec::with_capacity(256),
            read_timeout: None,
            pipelined: VecDeque::new(),
            max_frame: pklock_proto::DEFAULT_MAX_FRAME,
            deferred: Vec::new(),
        };
        // From here on, dropping `conn` untracks it.
        crate::fork::track(conn.stream.as_raw_fd());
        let lost = |e: ConnError| ClientError::ConnectionLost {
            addr: addr.to_owned(),
            reason: format!("during hello: {e}"),
            released: Released::Nothing,
        };
        let id = conn.send("hello", hello).map_err(lost)?;
        match conn.wait_reply(id, Some(timeouts.io)).map_err(lost)? {
            Ok(result) => {
                let hello: HelloResult = serde_json::from_value(result)
                    .map_err(|e| lost(ConnError::Protocol(format!("unexpected hello result: {e}"))))?;
                conn.server_connection = hello.connection;
                conn.max_frame = hello.max_frame;
                Ok(conn)
            }
            Err(body) => Err(ClientError::Server { request: "hello".into(), body }),
        }
    }

    pub fn server_connection(&self) -> u64 {
        self.server_connection
    }

    /// The reply `wait_reply` returned, as the JSON text the server sent, for callers that
    /// decode it their own way (rpc() keeps the member order the server used).
    pub fn last_reply_payload(&self) -> &[u8] {
        &self.last_payload
    }

    pub fn pipelined_count(&self) -> usize {
        self.pipelined.len()
    }

    /// Sends one request and returns its id.
    pub fn send<P: Serialize + ?Sized>(&mut self, command: &str, parameters: &P) -> Result<u64, ConnError> {
        let id = self.next_id;
        self.next_id += 1;
        self.out.clear();
        frame::encode_into(&mut self.out, &RequestOut { id, command, parameters })?;
        let len = self.out.len() - HEADER_LEN;
        if len > self.max_frame {
            return Err(ConnError::TooLarge { len, max: self.max_frame });
        }
        self.send_out()?;
        Ok(id)
    }

    /// Sends one request whose reply is checked later (see the module comment); `check`
    /// turns the parameters, once sent, into what to check.
    pub fn send_pipelined<P: Serialize>(
        &mut self,
        owner: u64,
        command: &str,
        parameters: P,
        check: impl FnOnce(P) -> PipelinedCheck,
    ) -> Result<(), ConnError> {
        let id = self.send(command, &parameters)?;
        self.pipelined.push_back(Pipelined { id, owner, check: check(parameters), report: true });
        Ok(())
    }

    /// Reads until the reply to `id` arrives, checking pipelined replies on the way.
    /// `timeout: None` waits as long as it takes (a dead server still shows up as EOF or a
    /// keepalive failure).
    pub fn wait_reply(&mut self, id: u64, timeout: Option<Duration>) -> Result<Reply, ConnError> {
        let deadline = timeout.map(|total| (Instant::now() + total, total));
        loop {
            while let Some(reply) = self.next_frame()? {
                if let Some(reply) = self.dispatch(reply, Some(id))? {
                    return Ok(reply);
                }
            }
            let remaining = match deadline {
                Some((at, total)) => Some(
                    at.checked_duration_since(Instant::now())
                        .filter(|left| !left.is_zero())
                        .ok_or(ConnError::Timeout(total))?,
                ),
                None => None,
            };
            self.set_read_timeout(remaining)?;
            match self.fill(0) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(_) => {}
                // A reused socket timeout may end a little early or late; the deadline decides.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads whatever has arrived, without blocking, and checks the pipelined replies in it.
    /// Finds a connection the server closed (EOF) before anything is sent on it.
    pub fn poll(&mut self) -> Result<(), ConnError> {
        loop {
            match self.fill(libc::MSG_DONTWAIT) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        while let Some(reply) = self.next_frame()? {
            self.dispatch(reply, None)?;
        }
        Ok(())
    }

    /// The first problem found in `owner`'s pipelined replies since its last call, if any.
    pub fn take_deferred(&mut self, owner: u64) -> Option<ClientError> {
        let index = self.deferred.iter().position(|(o, _)| *o == owner)?;
        Some(self.deferred.swap_remove(index).1)
    }

    /// Stops reporting problems of the pipelined requests sent so far (their request ended).
    pub fn silence_pipelined(&mut self) {
        self.pipelined.iter_mut().for_each(|p| p.report = false);
        self.deferred.clear();
    }

    fn send_out(&mut self) -> Result<(), ConnError> {
        let fd = self.stream.as_raw_fd();
        let mut sent = 0;
        while sent < self.out.len() {
            let rest = &self.out[sent..];
            // MSG_NOSIGNAL: a dead peer must be an error here, not a SIGPIPE for PHP.
            // SAFETY: `rest` is a valid buffer of `rest.len()` bytes for the whole call.
            let n = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        let timeout = self.stream.write_timeout()?.unwrap_or_default();
                        return Err(ConnError::Timeout(timeout));
                    }
                    _ => return Err(e.into()),
                }
            }
            sent += n as usize;
        }
        Ok(())
    }

    /// One `recv` into the read buffer; `Ok(0)` is end of stream.
    fn fill(&mut self, flags: libc::c_int) -> io::Result<usize> {
        if self.consumed > 0 {
            self.inbuf.drain(..self.consumed);
            self.consumed = 0;
        }
        self.inbuf.reserve(READ_CHUNK);
        let spare = self.inbuf.spare_capacity_mut();
        // SAFETY: `spare` is writable for `spare.len()` bytes; recv writes at most that many.
        let n = unsafe { libc::recv(self.stream.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), flags) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: recv initialised the first `n` spare bytes.
        unsafe { self.inbuf.set_len(self.inbuf.len() + n) };
        Ok(n)
    }

    fn next_frame(&mut self) -> Result<Option<ReplyIn>, ConnError> {
        let buffered = &self.inbuf[self.consumed..];
        let Some(end) = frame::decode(buffered, MAX_REPLY)? else {
            return Ok(None);
        };
        let payload = &buffered[HEADER_LEN..end];
        let reply = serde_json::from_slice(payload)
            .map_err(|e| ConnError::Protocol(format!("reply is not a reply object: {e}")))?;
        self.last_payload.clear();
        self.last_payload.extend_from_slice(payload);
        self.consumed += end;
        if self.consumed == self.inbuf.len() {
            self.inbuf.clear();
            self.consumed = 0;
        }
        Ok(Some(reply))
    }

    /// Returns the reply if it answers `wanted`; checks and drops it if it answers a
    /// pipelined request.
    fn dispatch(&mut self, reply: ReplyIn, wanted: Option<u64>) -> Result<Option<Reply>, ConnError> {
        let id = reply.id.as_u64().ok_or_else(|| ConnError::Protocol(format!("reply with id {}", reply.id)))?;
        let outcome = match (reply.result, reply.error) {
            (Some(result), None) => Ok(result),
            (None, Some(error)) => Err(error),
            _ => return Err(ConnError::Protocol(format!("reply {id} has neither or both of result and error"))),
        };
        if wanted == Some(id) {
            return Ok(Some(outcome));
        }
        let Some(index) = self.pipelined.iter().position(|p| p.id == id) else {
            return Err(ConnError::Protocol(format!("reply to request {id}, which is not outstanding")));
        };
        let pipelined = self.pipelined.remove(index).expect("index from position()");
        if pipelined.report && !self.deferred.iter().any(|(o, _)| *o == pipelined.owner) {
            if let Some(problem) = check_pipelined(pipelined.check, outcome) {
                self.deferred.push((pipelined.owner, problem));
            }
        }
        Ok(None)
    }

    fn set_read_timeout(&mut self, wanted: Option<Duration>) -> io::Result<()> {
        let reusable = match (self.read_timeout, wanted) {
            (None, None) => true,
            (Some(current), Some(wanted)) => current.abs_diff(wanted) <= TIMEOUT_SLACK,
            _ => false,
        };
        if !reusable {
            self.stream.set_read_timeout(wanted)?;
            self.read_timeout = wanted;
        }
        Ok(())
    }
}

fn check_pipelined(check: PipelinedCheck, outcome: Reply) -> Option<ClientError> {
    let request = match &check {
        PipelinedCheck::Unlock(keys) => format!("unlock({})", quote_keys(keys)),
        PipelinedCheck::ReleaseAll => "unlockAll()".to_owned(),
    };
    match (check, outcome) {
        (_, Err(body)) => Some(ClientError::Server { request, body }),
        (PipelinedCheck::Unlock(_), Ok(result)) => match serde_json::from_value::<UnlockResult>(result) {
            Ok(result) if result.not_held.is_empty() => None,
            Ok(result) => Some(ClientError::NotHeld { request, keys: result.not_held }),
            Err(e) => Some(ClientError::Server {
                request,
                body: ErrorBody::new(pklock_proto::ErrorCode::Unknown, format!("unexpected unlock result: {e}")),
            }),
        },
        (PipelinedCheck::ReleaseAll, Ok(_)) => None,
    }
}

fn connect(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the host name resolved to no address");
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

fn configure(stream: &TcpStream, timeouts: Timeouts) -> io::Result<()> {
    // Requests are small and each one is waited for (or is the last before a wait).
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(timeouts.io))?;
    let keepalive =
        TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL).with_retries(KEEPALIVE_PROBES);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pklock_proto::ErrorCode;
    use serde_json::json;
    use std::io::Write;
    use std::net::TcpListener;
    use std::thread;

    /// A server that answers `hello`, then plays `script` (one entry per request read:
    /// the replies to write after reading it), then closes.
    fn scripted_server(script: Vec<Vec<Value>>) -> (u16, thread::JoinHandle<Vec<Value>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut payload = Vec::new();
            let mut read = |stream: &mut TcpStream| {
                frame::read_frame(stream, 1 << 20, &mut payload).unwrap();
                serde_json::from_slice::<Value>(&payload).unwrap()
            };
            let hello = read(&mut stream);
            let hello_result =
                json!({"protocol": 1, "server": "fake", "version": "0", "connection": 7, "features": []});
            frame::write_frame(&mut stream, &json!({"id": hello["id"], "result": hello_result})).unwrap();
            for replies in script {
                let request = read(&mut stream);
                for reply in replies {
                    frame::write_frame(&mut stream, &reply).unwrap();
                }
                seen.push(request);
            }
            stream.flush().unwrap();
            seen
        });
        (port, handle)
    }

    fn open(port: u16) -> Connection {
        let timeouts = Timeouts { connect: Duration::from_secs(2), io: Duration::from_secs(2) };
        Connection::open("test", "127.0.0.1", port, timeouts, &HelloParams::default()).unwrap()
    }

    #[test]
    fn hello_gives_the_server_connection_number_and_replies_match_ids() {
        let (port, server) = scripted_server(vec![vec![json!({"id": 2, "result": {"pong": true}})]]);
        let mut conn = open(port);
        assert_eq!(conn.server_connection(), 7);
        let id = conn.send("ping", &json!({})).unwrap();
        assert_eq!(conn.wait_reply(id, None).unwrap().unwrap(), json!({"pong": true}));
        assert_eq!(conn.last_reply_payload(), br#"{"id":2,"result":{"pong":true}}"#);
        assert_eq!(server.join().unwrap()[0]["command"], "ping");
    }

    #[test]
    fn pipelined_reply_is_checked_while_waiting_for_the_next_one() {
        let (port, server) = scripted_server(vec![
            vec![],
            vec![
                json!({"id": 2, "error": {"code": "bad_key", "message": "no"}}),
                json!({"id": 3, "result": {"pong": true}}),
            ],
        ]);
        let mut conn = open(port);
        conn.send_pipelined(7, "unlock", json!({"keys": "a"}), |_| PipelinedCheck::Unlock(vec!["a".into()])).unwrap();
        assert_eq!(conn.pipelined_count(), 1);
        let id = conn.send("ping", &json!({})).unwrap();
        assert!(conn.wait_reply(id, None).unwrap().is_ok());
        assert_eq!(conn.pipelined_count(), 0);
        match conn.take_deferred(7) {
            Some(ClientError::Server { request, body }) => {
                assert_eq!(request, "unlock('a')");
                assert_eq!(body.code, ErrorCode::BadKey);
            }
            other => panic!("expected the unlock error, got {other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn unlock_reply_naming_keys_not_held_is_a_deferred_problem() {
        let (port, server) = scripted_server(vec![
            vec![json!({"id": 2, "result": {"released": [], "not_held": ["a"]}})],
            vec![json!({"id": 3, "result": {"pong": true}})],
        ]);
        let mut conn = open(port);
        conn.send_pipelined(7, "unlock", json!({"keys": "a"}), |_| PipelinedCheck::Unlock(vec!["a".into()])).unwrap();
        let id = conn.send("ping", &json!({})).unwrap();
        assert!(conn.wait_reply(id, None).unwrap().is_ok());
        assert!(conn.take_deferred(8).is_none(), "another owner is not told");
        assert!(matches!(conn.take_deferred(7), Some(ClientError::NotHeld { keys, .. }) if keys == ["a"]));
        server.join().unwrap();
        // The server has closed: the next poll finds out before anything is sent.
        assert!(matches!(conn.poll(), Err(ConnError::Closed)));
    }

    #[test]
    fn silenced_pipelined_replies_report_nothing() {
        let (port, server) = scripted_server(vec![
            vec![json!({"id": 2, "error": {"code": "bad_request", "message": "x"}})],
            vec![json!({"id": 3, "result": {"pong": true}})],
        ]);
        let mut conn = open(port);
        conn.send_pipelined(7, "release_all", json!({}), |_| PipelinedCheck::ReleaseAll).unwrap();
        conn.silence_pipelined();
        let id = conn.send("ping", &json!({})).unwrap();
        assert!(conn.wait_reply(id, None).unwrap().is_ok());
        assert!(conn.take_deferred(7).is_none());
        server.join().unwrap();
    }

    #[test]
    fn a_reply_that_never_comes_is_a_timeout_and_a_closed_server_is_closed() {
        let (port, server) = scripted_server(vec![vec![]]);
        let mut conn = open(port);
        let id = conn.send("lock", &json!({"keys": "a"})).unwrap();
        server.join().unwrap();
        assert!(matches!(conn.wait_reply(id, Some(Duration::from_millis(100))), Err(ConnError::Closed)));

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            thread::sleep(Duration::from_millis(500));
            drop(stream);
        });
        let timeouts = Timeouts { connect: Duration::from_secs(2), io: Duration::from_millis(100) };
        let err = Connection::open("silent", "127.0.0.1", port, timeouts, &HelloParams::default()).err().unwrap();
        assert!(err.to_string().contains("no reply within 0.100 s"), "{err}");
        silent.join().unwrap();
    }

    #[test]
    fn refused_connection_names_the_address() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let timeouts = Timeouts { connect: Duration::from_secs(1), io: Duration::from_secs(1) };
        let err = Connection::open("127.0.0.1:x", "127.0.0.1", port, timeouts, &HelloParams::default()).err().unwrap();
        assert!(err.to_string().starts_with("cannot connect to lockd at 127.0.0.1:x"), "{err}");
    }
}
