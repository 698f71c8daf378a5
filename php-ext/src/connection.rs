//! One TCP connection to lockd: pklock-proto frames over a blocking std socket with
//! timeouts (plain or TLS, see `transport.rs`), request ids, and replies matched by id.
//!
//! Requests are either *waited for* (`send` + `wait_reply`) or *pipelined*
//! (`send_pipelined`): the caller goes on without the reply, which is read and checked
//! whenever the connection next reads (at the start of the next call, or while it waits for
//! its own reply). A problem found in a pipelined reply is kept for the owner that sent
//! the request and handed out by `take_deferred` on that owner's next call, so it
//! surfaces without costing a round trip, and never on another object's call.
//!
//! A connection to a lockd cluster node is a *session* (docs/CLUSTER.md): it keeps the bytes
//! of every request it sent without a reply yet, so that when its node is lost, a connection
//! to another node can take the session over (`take_over`) and send again (`resend`) what
//! the cluster never received, with the same ids.
//!
//! No PHP types here, so the logic is tested against a scripted server in plain Rust.

use std::collections::VecDeque;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use pklock_proto::frame::{self, FrameError, HEADER_LEN};
use pklock_proto::auth::{AuthKey, Nonce, Proof, METHOD};
use pklock_proto::{
    AuthChallenge, AuthParams, AuthResult, ErrorBody, HelloParams, HelloResult, LockResult, ReplyIn, RequestOut,
    ResumeParams, ResumeResult, SessionInfo, UnlockResult,
};
use serde::Serialize;
use serde_json::Value;
use socket2::{SockRef, TcpKeepalive};

use crate::error::{quote_keys, ClientError, LossCause, Released};
use crate::nodes::Node;
use crate::transport::{TlsSettings, Transport};

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
    /// The server refused the connection itself (a reply with id null), e.g. a plain
    /// client on a TLS listener.
    #[error("refused by the server: {} ({})", .0.message, .0.code.as_str())]
    Refused(ErrorBody),
    /// Nothing was sent: the connection is as good as before.
    #[error("the request is {len} bytes, more than the server's limit of {max} bytes; it was not sent")]
    TooLarge { len: usize, max: usize },
}

impl ConnError {
    pub fn cause(&self) -> LossCause {
        match self {
            ConnError::Timeout(_) => LossCause::NoReply,
            ConnError::Frame(_) | ConnError::Protocol(_) => LossCause::Protocol,
            ConnError::Closed | ConnError::Io(_) | ConnError::Refused(_) | ConnError::TooLarge { .. } => {
                LossCause::Broken
            }
        }
    }
}

/// What to check in the reply of a pipelined request.
#[derive(Debug)]
pub enum PipelinedCheck {
    /// `unlock` of keys this client held: the server must release all of them.
    Unlock(Vec<String>),
    /// `release_all`: only errors matter.
    ReleaseAll,
    /// A waited-for request whose caller gave up on it (its node was lost and no other
    /// node could take the session over in time): nobody is told of its reply. `lock` is
    /// the keys of an abandoned `lock`, whose grant must be released since nobody knows
    /// it holds them.
    Abandoned { lock: Option<Vec<String>> },
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
    stream: Transport,
    /// The node's `host:port`, for messages.
    addr: String,
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
    /// The cluster session this connection is: offered by `hello`, or taken over from a lost
    /// connection. `None` on a single lockd.
    session: Option<SessionInfo>,
    /// With a session: each request sent and not answered yet, as encoded, in the order sent.
    unanswered: VecDeque<(u64, Vec<u8>)>,
    /// Locks granted to abandoned `lock` requests, by owner: to release.
    unwanted_grants: Vec<(u64, Vec<String>)>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        crate::fork::untrack(self.stream.socket().as_raw_fd());
    }
}

impl Connection {
    /// Connects to `node`, configures the socket, does the TLS handshake if `tls` says so,
    /// says `hello` and, when the server challenges or `auth_key` is given, authenticates
    /// both ways (see [`Self::authenticate`]). Request ids start at `first_id`: a connection
    /// that is to take over a session goes on from the lost connection's ids.
    pub fn open(
        node: &Node,
        first_id: u64,
        timeouts: Timeouts,
        tls: &TlsSettings,
        hello: &HelloParams,
        auth_key: Option<&AuthKey>,
    ) -> Result<Self, ClientError> {
        let addr = &node.addr();
        let connect_error = |source| ClientError::Connect { addr: addr.to_owned(), source };
        let stream = connect(&node.host, node.port, timeouts.connect).map_err(connect_error)?;
        configure(&stream, timeouts).map_err(connect_error)?;
        let stream = match tls.enabled {
            false => Transport::Plain(stream),
            true => Transport::tls(stream, &node.host, tls, timeouts.io)
                .map_err(|source| ClientError::Tls { addr: addr.to_owned(), source })?,
        };
        let mut conn = Connection {
            stream,
            addr: addr.to_owned(),
            server_connection: 0,
            next_id: first_id,
            out: Vec::with_capacity(256),
            inbuf: Vec::with_capacity(READ_CHUNK),
            consumed: 0,
            last_payload: Vec::with_capacity(256),
            read_timeout: None,
            pipelined: VecDeque::new(),
            max_frame: pklock_proto::DEFAULT_MAX_FRAME,
            deferred: Vec::new(),
            session: None,
            unanswered: VecDeque::new(),
            unwanted_grants: Vec::new(),
        };
        // From here on, dropping `conn` untracks it.
        crate::fork::track(conn.stream.socket().as_raw_fd());
        let result = conn.handshake_step(addr, "hello", hello, timeouts.io)?;
        let hello: HelloResult = serde_json::from_value(result)
            .map_err(|e| lost_during(addr, "hello", ConnError::Protocol(format!("unexpected hello result: {e}"))))?;
        conn.server_connection = hello.connection;
        conn.max_frame = hello.max_frame;
        conn.authenticate(addr, hello.auth, auth_key, timeouts.io)?;
        // Set last: the handshake's own requests are never resent.
        conn.session = hello.session;
        Ok(conn)
    }

    /// Makes this fresh connection the session of `lost`, whose node is gone: `resume` with
    /// the ids of `lost`'s unanswered requests, then carries over everything outstanding
    /// (request ids, pipelined requests, unreported problems). Returns the ids to send
    /// again with [`Self::resend`]. Until the cluster agrees, `lost` keeps it all, so that
    /// another node can be tried; the server's refusal comes back as `ClientError::Server`.
    pub fn take_over(&mut self, lost: &mut Connection, io: Duration) -> Result<Vec<u64>, ClientError> {
        let session = lost.session.clone().expect("only a connection with a session is taken over");
        let pending: Vec<u64> = lost.unanswered.iter().map(|(id, _)| *id).collect();
        let params = ResumeParams { session: session.id.clone(), secret: session.secret.clone(), pending };
        let result = self.handshake_step(&self.addr.clone(), "resume", &params, io)?;
        let resend = match serde_json::from_value::<ResumeResult>(result) {
            Ok(ResumeResult { resumed: true, resend }) if resend.iter().all(|id| params.pending.contains(id)) => resend,
            Ok(_) => {
                let problem = ConnError::Protocol("resume neither resumed nor refused as asked".into());
                return Err(lost_during(&self.addr, "resume", problem));
            }
            Err(e) => {
                let problem = ConnError::Protocol(format!("unexpected resume result: {e}"));
                return Err(lost_during(&self.addr, "resume", problem));
            }
        };
        self.session = Some(session);
        self.next_id = self.next_id.max(lost.next_id);
        self.unanswered = std::mem::take(&mut lost.unanswered);
        self.pipelined = std::mem::take(&mut lost.pipelined);
        self.deferred = std::mem::take(&mut lost.deferred);
        self.unwanted_grants = std::mem::take(&mut lost.unwanted_grants);
        Ok(resend)
    }

    /// Sends again, in the order first sent, the unanswered requests named in `ids`.
    pub fn resend(&mut self, ids: &[u64]) -> Result<(), ConnError> {
        self.out.clear();
        for (_, frame) in self.unanswered.iter().filter(|(id, _)| ids.contains(id)) {
            self.out.extend_from_slice(frame);
        }
        if self.out.is_empty() {
            return Ok(());
        }
        self.send_out()
    }

    /// Answers the server's challenge with a proof that we know the key, and checks the
    /// server's proof that it knows it too: a server that does not (an impostor, or one
    /// that skips the challenge) is refused, since its "granted" would mean nothing.
    fn authenticate(
        &mut self,
        addr: &str,
        challenge: Option<AuthChallenge>,
        key: Option<&AuthKey>,
        io: Duration,
    ) -> Result<(), ClientError> {
        let refuse = |problem: &str| ClientError::Auth { addr: addr.to_owned(), problem: problem.to_owned() };
        let (key, challenge) = match (key, challenge) {
            (None, None) => return Ok(()),
            (None, Some(_)) => return Err(refuse("the server needs an auth key: set the auth_key option or pklock.auth_key")),
            (Some(_), None) => {
                return Err(refuse(
                    "the server did not ask for authentication although auth_key is set, so it cannot prove it knows the key; refusing it",
                ))
            }
            (Some(key), Some(challenge)) => (key, challenge),
        };
        if challenge.method != METHOD {
            return Err(refuse(&format!("the server asks for {:?}, this client knows {METHOD:?}", challenge.method)));
        }
        let server_nonce = Nonce::parse(&challenge.nonce).map_err(|e| refuse(&format!("bad challenge: {e}")))?;
        let client_nonce = Nonce::random().map_err(|e| refuse(&e.to_string()))?;
        let proof = Proof::Client.compute(key, &server_nonce, &client_nonce);
        let params = AuthParams { client_nonce: client_nonce.as_str().to_owned(), proof };
        let result = self.handshake_step(addr, "auth", &params, io)?;
        let proven = serde_json::from_value::<AuthResult>(result).is_ok_and(|result| {
            result.authenticated && Proof::Server.verify(key, &server_nonce, &client_nonce, &result.server_proof)
        });
        if !proven {
            return Err(refuse("the server's proof is wrong, so it does not know the auth key; refusing it"));
        }
        Ok(())
    }

    /// One request of the handshake: its result, or the server's refusal.
    fn handshake_step<P: Serialize>(&mut self, addr: &str, command: &str, parameters: &P, io: Duration) -> Result<Value, ClientError> {
        let id = self.send(command, parameters).map_err(|e| lost_during(addr, command, e))?;
        match self.wait_reply(id, Some(io)).map_err(|e| lost_during(addr, command, e))? {
            Ok(result) => Ok(result),
            Err(body) => Err(ClientError::Server { request: command.into(), body }),
        }
    }

    pub fn server_connection(&self) -> u64 {
        self.server_connection
    }

    /// The node's `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The id the next request gets: a connection that takes the session over goes on from it.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The cluster session this connection is, if any.
    pub fn session(&self) -> Option<&SessionInfo> {
        self.session.as_ref()
    }

    /// Whether requests sent on this connection still wait for their reply.
    pub fn has_unanswered(&self) -> bool {
        !self.unanswered.is_empty() || !self.pipelined.is_empty()
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
        let id = self.queue(command, parameters)?;
        self.flush()?;
        Ok(id)
    }

    /// Encodes one request and gives it its id, without sending it yet ([`Self::flush`]
    /// does). With a session the request counts as sent from here on: if sending fails,
    /// the session's resume tells whether the cluster got it.
    pub fn queue<P: Serialize + ?Sized>(&mut self, command: &str, parameters: &P) -> Result<u64, ConnError> {
        let id = self.next_id;
        self.out.clear();
        frame::encode_into(&mut self.out, &RequestOut { id, command, parameters })?;
        let len = self.out.len() - HEADER_LEN;
        if len > self.max_frame {
            return Err(ConnError::TooLarge { len, max: self.max_frame });
        }
        self.next_id += 1;
        if self.session.is_some() {
            self.unanswered.push_back((id, self.out.clone()));
        }
        Ok(id)
    }

    /// Sends the request [`Self::queue`] encoded last.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        self.send_out()
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
        self.queue_pipelined(owner, command, parameters, check)?;
        self.flush()
    }

    /// [`Self::send_pipelined`] without sending: on a connection whose node is lost, the
    /// request waits there to be sent by the connection that takes the session over.
    pub fn queue_pipelined<P: Serialize>(
        &mut self,
        owner: u64,
        command: &str,
        parameters: P,
        check: impl FnOnce(P) -> PipelinedCheck,
    ) -> Result<(), ConnError> {
        let id = self.queue(command, &parameters)?;
        self.pipelined.push_back(Pipelined { id, owner, check: check(parameters), report: true });
        Ok(())
    }

    /// The caller of request `id` (of `owner`) no longer waits for its reply; see
    /// [`PipelinedCheck::Abandoned`].
    pub fn abandon(&mut self, id: u64, owner: u64, lock: Option<Vec<String>>) {
        self.pipelined.push_back(Pipelined { id, owner, check: PipelinedCheck::Abandoned { lock }, report: false });
    }

    /// Locks granted to abandoned `lock` requests since the last call, by owner.
    pub fn take_unwanted_grants(&mut self) -> Vec<(u64, Vec<String>)> {
        std::mem::take(&mut self.unwanted_grants)
    }

    /// Reads until the reply to `id` arrives, checking pipelined replies on the way.
    /// `timeout: None` waits as long as it takes (a dead server still shows up as EOF or a
    /// keepalive failure).
    pub fn wait_reply(&mut self, id: u64, timeout: Option<Duration>) -> Result<Reply, ConnError> {
        self.read_until(timeout, |conn| {
            while let Some(reply) = conn.next_frame()? {
                if let Some(reply) = conn.dispatch(reply, Some(id))? {
                    return Ok(Some(reply));
                }
            }
            Ok(None)
        })
    }

    /// Whether a pipelined `unlock` or `release_all` has no reply yet.
    pub fn has_release_in_flight(&self) -> bool {
        self.pipelined.iter().any(|p| matches!(p.check, PipelinedCheck::Unlock(_) | PipelinedCheck::ReleaseAll))
    }

    /// Reads until every pipelined release has its reply: the server has applied them.
    pub fn wait_releases(&mut self, timeout: Duration) -> Result<(), ConnError> {
        self.read_until(Some(timeout), |conn| {
            while let Some(reply) = conn.next_frame()? {
                conn.dispatch(reply, None)?;
            }
            Ok((!conn.has_release_in_flight()).then_some(()))
        })
    }

    /// Reads replies until `take` has what it waits for, or `timeout` runs out.
    fn read_until<T>(&mut self, timeout: Option<Duration>, mut take: impl FnMut(&mut Self) -> Result<Option<T>, ConnError>) -> Result<T, ConnError> {
        let deadline = timeout.map(|total| (Instant::now() + total, total));
        loop {
            if let Some(done) = take(self)? {
                return Ok(done);
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
        match self.stream.send_all(&self.out) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Err(ConnError::Timeout(self.stream.socket().write_timeout()?.unwrap_or_default()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One `recv` into the read buffer; `Ok(0)` is end of stream.
    fn fill(&mut self, flags: libc::c_int) -> io::Result<usize> {
        if self.consumed > 0 {
            self.inbuf.drain(..self.consumed);
            self.consumed = 0;
        }
        self.inbuf.reserve(READ_CHUNK);
        self.stream.recv(&mut self.inbuf, flags)
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
        let Some(id) = reply.id.as_u64() else {
            return Err(match reply.error {
                Some(body) if reply.id.is_null() => ConnError::Refused(body),
                _ => ConnError::Protocol(format!("reply with id {}", reply.id)),
            });
        };
        let outcome = match (reply.result, reply.error) {
            (Some(result), None) => Ok(result),
            (None, Some(error)) => Err(error),
            _ => return Err(ConnError::Protocol(format!("reply {id} has neither or both of result and error"))),
        };
        if let Some(index) = self.unanswered.iter().position(|(sent, _)| *sent == id) {
            self.unanswered.remove(index);
        }
        if wanted == Some(id) {
            return Ok(Some(outcome));
        }
        let Some(index) = self.pipelined.iter().position(|p| p.id == id) else {
            return Err(ConnError::Protocol(format!("reply to request {id}, which is not outstanding")));
        };
        let pipelined = self.pipelined.remove(index).expect("index from position()");
        if let PipelinedCheck::Abandoned { lock: Some(keys) } = pipelined.check {
            if outcome.is_ok_and(|result| serde_json::from_value::<LockResult>(result).is_ok_and(|lock| lock.granted)) {
                self.unwanted_grants.push((pipelined.owner, keys));
            }
            return Ok(None);
        }
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
            self.stream.socket().set_read_timeout(wanted)?;
            self.read_timeout = wanted;
        }
        Ok(())
    }
}

fn lost_during(addr: &str, command: &str, e: ConnError) -> ClientError {
    ClientError::ConnectionLost {
        addr: addr.to_owned(),
        reason: format!("during {command}: {e}"),
        released: Released::Nothing,
        cause: e.cause(),
    }
}

fn check_pipelined(check: PipelinedCheck, outcome: Reply) -> Option<ClientError> {
    let request = match &check {
        PipelinedCheck::Unlock(keys) => format!("unlock({})", quote_keys(keys)),
        PipelinedCheck::ReleaseAll => "unlockAll()".to_owned(),
        PipelinedCheck::Abandoned { .. } => return None,
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
        (PipelinedCheck::ReleaseAll | PipelinedCheck::Abandoned { .. }, Ok(_)) => None,
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
    use crate::scripted;
    use pklock_proto::ErrorCode;
    use serde_json::json;
    use std::net::TcpListener;
    use std::thread;

    /// A single lockd that answers `hello`, then writes `script`'s replies, one entry per
    /// request read, then closes.
    fn scripted_server(script: Vec<Vec<Value>>) -> (u16, thread::JoinHandle<Vec<Value>>) {
        scripted::serve(scripted::single_hello(), script.into_iter().map(scripted::replies).collect())
    }

    const PLAIN: TlsSettings = TlsSettings { enabled: false, ca: None, verify: true };

    fn local(port: u16) -> Node {
        Node { host: "127.0.0.1".into(), port }
    }

    fn open(port: u16) -> Connection {
        let timeouts = Timeouts { connect: Duration::from_secs(2), io: Duration::from_secs(2) };
        Connection::open(&local(port), 1, timeouts, &PLAIN, &HelloParams::default(), None).unwrap()
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
        let err = Connection::open(&local(port), 1, timeouts, &PLAIN, &HelloParams::default(), None).err().unwrap();
        assert!(err.to_string().contains("no reply within 0.100 s"), "{err}");
        silent.join().unwrap();
    }

    #[test]
    fn refused_connection_names_the_address() {
        let port = scripted::closed_port();
        let timeouts = Timeouts { connect: Duration::from_secs(1), io: Duration::from_secs(1) };
        let err = Connection::open(&local(port), 1, timeouts, &PLAIN, &HelloParams::default(), None).err().unwrap();
        assert!(err.to_string().starts_with(&format!("cannot connect to lockd at 127.0.0.1:{port}:")), "{err}");
    }
}
