//! The process's state: one session per server address, shared by every `PkLockClient`
//! object of the process (of the thread, under ZTS), kept across requests.
//!
//! A session owns the socket and knows which locks each owner (each object) holds through
//! it. That knowledge is what makes the rules of the process model hold:
//! - an owner whose locks died with a connection gets an exception on its next call, and
//!   only then a new connection (`lost`);
//! - a forked child forgets everything it inherited and never touches the parent's socket
//!   (`adopt_after_fork`);
//! - request end releases whatever is still held, even when a fatal error skipped the
//!   objects' destructors (`end_request`, called from RSHUTDOWN).
//!
//! Against a lockd cluster (docs/CLUSTER.md) the connection is a cluster session. When its
//! node is lost while the process has something at stake (locks held, requests without a
//! reply), the session is *suspended* instead: no owner loses anything, the lost connection
//! is kept with its unanswered requests, and the next call that does I/O has another node
//! take the session over (`resume`). Calls that do no I/O (`token()`, `isHeld()` of a key
//! not held, `isConnected()`) do not resume. Only when the cluster says the session is gone,
//! or its TTL has run out since the loss, are the holders told, as when a single lockd's
//! connection is lost.
//!
//! No PHP types here; `client.rs` converts arguments and results.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use pklock_proto::auth::AuthKey;
use pklock_proto::{
    CheckParams, CheckResult, ErrorBody, ErrorCode, HelloParams, Keys, LockParams, LockResult, Mode, ReleaseAllParams,
    UnlockParams,
};
use serde::Serialize;
use serde_json::Value;

use crate::connection::{ConnError, Connection, PipelinedCheck, Timeouts};
use crate::error::{quote_keys, ClientError, LossCause, Released};
use crate::fork;
use crate::nodes::{connect_order, Node, NodeOrder};
use crate::transport::TlsSettings;

/// An owner handle: one per `PkLockClient` object, unique in the process.
pub type OwnerId = u64;

/// Where a client connects and how (one per object; objects for the same servers share
/// the session).
#[derive(Debug, Clone)]
pub struct Target {
    /// One lockd, or the nodes of a cluster.
    pub nodes: Vec<Node>,
    /// The order in which a cluster's nodes are tried.
    pub node_order: NodeOrder,
    pub timeouts: Timeouts,
    /// Proven (never sent) by whichever object opens the connection.
    pub auth_key: Option<AuthKey>,
    pub tls: TlsSettings,
}

impl Target {
    /// `host:port`, or the nodes' comma-separated: the address shown in messages.
    pub fn addr(&self) -> String {
        self.nodes.iter().map(Node::addr).collect::<Vec<_>>().join(",")
    }

    /// Which session serves this target: one per address list, TLS settings and auth key, since
    /// the key is proven once per connection and an object must not ride on a connection that
    /// another object's key opened, nor on one less secure than it asked for. A list's node
    /// order too: an object that asked for its host's node is not served by a random one.
    pub fn session_key(&self) -> String {
        let addr = match self.tls.describe() {
            None => self.addr(),
            Some(tls) => format!("{} {tls}", self.addr()),
        };
        let addr = match self.nodes.len() {
            1 => addr,
            _ => format!("{addr} order {}", self.node_order.name()),
        };
        match &self.auth_key {
            None => addr,
            Some(key) => {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut hasher);
                format!("{addr} auth {:016x}", hasher.finish())
            }
        }
    }
}

/// Locks of one owner whose connection died, reported on its next call.
struct LostLocks {
    keys: Vec<String>,
    reason: String,
    cause: LossCause,
}

/// A cluster session whose node was lost while something was at stake, waiting for another
/// node to take it over until its TTL runs out.
struct Suspended {
    /// The lost connection, with the session, the request counter and the requests without a
    /// reply. Kept open and unused: closing it would make its node, if it still lives,
    /// release the session's locks.
    conn: Connection,
    /// Its node's index in the target's list (tried last).
    node: usize,
    since: Instant,
    ttl: Duration,
    /// What happened to the connection.
    reason: String,
}

pub struct Session {
    addr: String,
    /// Where to resume when no call names a target (request end): the first object's.
    target: Target,
    /// The process the state belongs to; a different `getpid()` means we are a forked child.
    pid: u32,
    conn: Option<Connection>,
    /// The index of `conn`'s node in the target's list.
    node: usize,
    /// Never at the same time as `conn`.
    suspended: Option<Suspended>,
    /// Locks held through `conn`, by owner: key → fencing token. Non-empty only while
    /// `conn` is open.
    held: HashMap<OwnerId, HashMap<String, u64>>,
    lost: HashMap<OwnerId, LostLocks>,
    /// `rpc()` was used this request: it may have taken locks that `held` does not know.
    raw_rpc_used: bool,
}

#[derive(Default)]
struct Registry {
    sessions: HashMap<String, Session>,
    last_owner: OwnerId,
}

thread_local! {
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
}

/// A fresh owner handle (never 0, the server's default owner that `rpc()` callers get).
pub fn new_owner() -> OwnerId {
    REGISTRY.with_borrow_mut(|registry| {
        registry.last_owner += 1;
        registry.last_owner
    })
}

/// Runs `f` on the session `key` (for `target`), creating it on first use.
///
/// An `unlock()` does not wait for its reply, and the next request on the same connection
/// is served after it; a request on another connection (another server, another cluster
/// node, another auth key) is not. So before anything is done on one session, the releases
/// still in flight on the others are waited for: what this process released, it sees
/// released (`$a->unlock('k'); $b->lock('k')` with `$b` on another node).
pub fn with_session<R>(key: &str, target: &Target, f: impl FnOnce(&mut Session) -> R) -> R {
    REGISTRY.with_borrow_mut(|registry| {
        for (other_key, other) in registry.sessions.iter_mut() {
            if other_key != key {
                other.wait_releases();
            }
        }
        let session = registry.sessions.entry(key.to_owned()).or_insert_with(|| Session::new(target.clone()));
        f(session)
    })
}

/// Like [`with_session`] for destructors: does nothing if the session does not exist or the
/// state is unavailable (thread-local storage being torn down).
pub fn with_existing_session(key: &str, f: impl FnOnce(&mut Session)) {
    let _ = REGISTRY.try_with(|registry| {
        if let Ok(mut registry) = registry.try_borrow_mut() {
            if let Some(session) = registry.sessions.get_mut(key) {
                f(session);
            }
        }
    });
}

/// Request end (RSHUTDOWN): releases, on every connection, whatever this request still holds.
pub fn end_request() {
    let _ = REGISTRY.try_with(|registry| {
        if let Ok(mut registry) = registry.try_borrow_mut() {
            registry.sessions.values_mut().for_each(Session::end_request);
        }
    });
}

/// One line per session, for phpinfo().
pub fn describe_sessions() -> Vec<(String, String)> {
    REGISTRY
        .try_with(|registry| match registry.try_borrow() {
            Ok(registry) => registry.sessions.values().map(|s| (s.addr.clone(), s.describe())).collect(),
            Err(_) => Vec::new(),
        })
        .unwrap_or_default()
}

impl Session {
    fn new(target: Target) -> Self {
        Session {
            addr: target.addr(),
            target,
            pid: fork::process_id(),
            conn: None,
            node: 0,
            suspended: None,
            held: HashMap::new(),
            lost: HashMap::new(),
            raw_rpc_used: false,
        }
    }

    /// Takes `keys` for `owner`. `Some(token)` when granted, `None` when the wait ran out.
    pub fn lock(
        &mut self,
        owner: OwnerId,
        target: &Target,
        keys: Vec<String>,
        mode: Mode,
        wait: Option<f64>,
    ) -> Result<Option<u64>, ClientError> {
        // The server does the waiting; the reply may take that long plus the usual I/O time.
        let timeout = wait.map(|wait| Duration::from_secs_f64(wait) + target.timeouts.io);
        let params = LockParams { keys: Keys(keys), mode, wait, owner, value: None };
        let request = Request { command: "lock", parameters: &params, timeout, lock_keys: Some(&params.keys.0) };
        let result = self.exchange(owner, target, request, || format!("lock({})", quote_keys(&params.keys.0)))?;
        let token = match serde_json::from_value::<LockResult>(result) {
            Ok(LockResult { granted: false, .. }) => return Ok(None),
            Ok(LockResult { granted: true, token: Some(token) }) => token,
            Ok(LockResult { granted: true, token: None }) => {
                return Err(
                    self.connection_failed(Some(owner), ConnError::Protocol("lock granted without a token".into()))
                )
            }
            Err(e) => {
                return Err(
                    self.connection_failed(Some(owner), ConnError::Protocol(format!("unexpected lock result: {e}")))
                )
            }
        };
        let held = self.held.entry(owner).or_default();
        for key in params.keys.0 {
            held.insert(key, token);
        }
        Ok(Some(token))
    }

    /// Releases those of `keys` that `owner` holds, without waiting for the reply (it is
    /// checked at the start of the next call). True when `owner` held every one of them.
    pub fn unlock(&mut self, owner: OwnerId, target: &Target, keys: Vec<String>) -> Result<bool, ClientError> {
        let earlier = self.checkpoint_before_release(owner, target)?;
        let released = self.release_keys(owner, keys)?;
        earlier.map_or(Ok(released), Err)
    }

    fn release_keys(&mut self, owner: OwnerId, keys: Vec<String>) -> Result<bool, ClientError> {
        let Some(held) = self.held.get_mut(&owner) else {
            return Ok(false);
        };
        let requested = keys.len();
        let mut releasing: Vec<String> = Vec::with_capacity(requested);
        for key in keys {
            if held.remove(&key).is_some() {
                releasing.push(key);
            }
        }
        if releasing.is_empty() {
            return Ok(false);
        }
        let all_held = releasing.len() == requested;
        let params = UnlockParams { keys: Keys(releasing), owner, defer_reply: true };
        self.send_pipelined(owner, "unlock", params, |params| PipelinedCheck::Unlock(params.keys.0))?;
        Ok(all_held)
    }

    /// Releases every lock of `owner` (pipelined like `unlock`).
    pub fn unlock_all(&mut self, owner: OwnerId, target: &Target) -> Result<(), ClientError> {
        let earlier = self.checkpoint_before_release(owner, target)?;
        self.release_owner(owner)?;
        earlier.map_or(Ok(()), Err)
    }

    /// [`checkpoint`](Self::checkpoint) for a release: a problem an earlier pipelined
    /// request of `owner` left behind must not keep this release from happening, so it is
    /// returned to report afterwards (a session that could not be resumed is one: the
    /// release waits in it). A lost connection is returned as the error at once: the server
    /// has already released everything.
    fn checkpoint_before_release(&mut self, owner: OwnerId, target: &Target) -> Result<Option<ClientError>, ClientError> {
        match self.checkpoint(owner, Some(target)) {
            Ok(()) => Ok(None),
            Err(lost @ ClientError::ConnectionLost { .. }) => Err(lost),
            Err(earlier) => Ok(Some(earlier)),
        }
    }

    /// The fencing token of `key` if `owner` holds it. Like every call, it first reports
    /// locks lost with a connection (and finds a connection the server closed), so a lost
    /// lock's token is never handed out as if it were still good.
    pub fn token(&mut self, owner: OwnerId, key: &str) -> Result<Option<u64>, ClientError> {
        self.checkpoint(owner, None)?;
        Ok(self.held_token(owner, key))
    }

    /// Whether the server confirms (`check`) that `owner` still holds `key` with the token
    /// it was granted. False without asking when `owner` holds no token for `key`.
    pub fn is_held(&mut self, owner: OwnerId, target: &Target, key: &str) -> Result<bool, ClientError> {
        self.checkpoint(owner, None)?;
        let Some(token) = self.held_token(owner, key) else {
            return Ok(false);
        };
        let params = CheckParams { key: key.to_owned(), token };
        let request = Request { command: "check", parameters: &params, timeout: Some(target.timeouts.io), lock_keys: None };
        let result = self.exchange(owner, target, request, || {
            format!("isHeld({})", quote_keys(std::slice::from_ref(&params.key)))
        })?;
        match serde_json::from_value::<CheckResult>(result) {
            Ok(CheckResult { valid: true }) => Ok(true),
            Ok(CheckResult { valid: false }) => {
                // The server says otherwise: stop handing out its token.
                if let Some(keys) = self.held.get_mut(&owner) {
                    keys.remove(key);
                }
                Ok(false)
            }
            Err(e) => Err(self.connection_failed(Some(owner), ConnError::Protocol(format!("unexpected check result: {e}")))),
        }
    }

    fn held_token(&self, owner: OwnerId, key: &str) -> Option<u64> {
        self.held.get(&owner)?.get(key).copied()
    }

    /// Sends any command. The server's error comes back as `ClientError::Server`; a result
    /// comes back as the reply's JSON text, for the caller to decode once the session is no
    /// longer borrowed (building PHP values can bail out on memory_limit).
    pub fn rpc(
        &mut self,
        owner: OwnerId,
        target: &Target,
        command: &str,
        parameters: &Value,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, ClientError> {
        self.raw_rpc_used = true;
        let request = Request { command, parameters, timeout, lock_keys: None };
        self.exchange(owner, target, request, || format!("rpc('{command}')"))?;
        Ok(self.conn.as_ref().expect("a reply just came through it").last_reply_payload().to_vec())
    }

    /// Whether this process has an open connection for this address; finds a connection
    /// the server closed, without sending anything and without connecting (nor resuming:
    /// a suspended session is not connected).
    pub fn is_connected(&mut self) -> bool {
        self.adopt_after_fork();
        if let Some(conn) = self.conn.as_mut() {
            if let Err(e) = conn.poll() {
                let _ = self.connection_lost(None, e);
            }
        }
        self.conn.is_some()
    }

    /// `close()` of an object: releases its locks, and closes the socket unless other
    /// objects of the process hold locks through it. Reports nothing: there is nobody to
    /// tell about a connection that broke meanwhile. A suspended session is dropped without
    /// resuming: the cluster releases its locks when its TTL runs out.
    pub fn close(&mut self, owner: OwnerId) {
        self.adopt_after_fork();
        let others_hold_locks = self.held.iter().any(|(other, keys)| *other != owner && !keys.is_empty());
        if others_hold_locks {
            self.forget_owner(owner);
        } else {
            // Closing makes the server release everything held through the connection.
            self.lost.remove(&owner);
            self.held.clear();
            self.conn = None;
            self.suspended = None;
        }
    }

    /// An object is going away: release its locks (pipelined) and forget it.
    pub fn forget_owner(&mut self, owner: OwnerId) {
        self.adopt_after_fork();
        self.lost.remove(&owner);
        let _ = self.release_owner(owner);
    }

    pub fn describe(&self) -> String {
        let locks = self.held.values().map(HashMap::len).sum::<usize>();
        match (&self.conn, &self.suspended) {
            _ if self.pid != fork::process_id() && (self.conn.is_some() || self.suspended.is_some()) => {
                "inherited from the parent process, unused".into()
            }
            (Some(conn), _) => format!(
                "connected {}as connection {}, {locks} locks held, {} replies pending",
                match conn.session() {
                    Some(_) if self.target.nodes.len() > 1 => format!("to {} ", conn.addr()),
                    _ => String::new(),
                },
                conn.server_connection(),
                conn.pipelined_count()
            ),
            (None, Some(suspended)) => format!(
                "connection to {} lost {:.1} s ago ({}); its session, with {locks} locks held, waits to be resumed",
                suspended.conn.addr(),
                suspended.since.elapsed().as_secs_f64(),
                suspended.reason
            ),
            (None, None) => "not connected".into(),
        }
    }

    fn end_request(&mut self) {
        self.adopt_after_fork();
        self.expire_suspension();
        let something_held = self.anybody_holds_locks() || self.raw_rpc_used;
        if something_held && self.suspended.is_some() {
            // The release below needs a connection; a resume that fails changes nothing.
            let _ = self.resume(None, &self.target.clone());
        }
        // Nobody will ask for the session now: the cluster releases what it holds when the TTL
        // runs out (at once if the lost node still lives and sees its connection close).
        self.suspended = None;
        if let Some(conn) = self.conn.as_mut() {
            conn.silence_pipelined();
        }
        if something_held {
            let everything = ReleaseAllParams { owner: None, defer_reply: true };
            if let Some(conn) = self.conn.as_mut() {
                // Sent for the whole connection; silenced at once, so no owner hears of it.
                let sent = conn.send_pipelined(0, "release_all", everything, |_| PipelinedCheck::ReleaseAll);
                match sent {
                    Ok(()) => conn.silence_pipelined(),
                    Err(_) => self.conn = None,
                }
            }
        }
        self.held.clear();
        self.lost.clear();
        self.raw_rpc_used = false;
    }

    fn anybody_holds_locks(&self) -> bool {
        self.held.values().any(|keys| !keys.is_empty())
    }

    fn release_owner(&mut self, owner: OwnerId) -> Result<(), ClientError> {
        if self.held.remove(&owner).is_none_or(|keys| keys.is_empty()) {
            return Ok(());
        }
        let params = ReleaseAllParams { owner: Some(owner), defer_reply: true };
        self.send_pipelined(owner, "release_all", params, |_| PipelinedCheck::ReleaseAll)
    }

    /// A forked child must neither use nor shut down the parent's socket, and the parent's
    /// locks are not the child's: drop the inherited state (closing our copy of the
    /// descriptor leaves the parent's connection open) and start afresh on next use.
    fn adopt_after_fork(&mut self) {
        let pid = fork::process_id();
        if self.pid != pid {
            *self = Session { pid, ..Session::new(self.target.clone()) };
        }
    }

    /// What every call does first: fork check, report locks lost earlier, read pipelined
    /// replies that have arrived and report their problems. A call that is going to do I/O
    /// passes its `target`: a suspended session is resumed first.
    fn checkpoint(&mut self, owner: OwnerId, io: Option<&Target>) -> Result<(), ClientError> {
        self.adopt_after_fork();
        self.expire_suspension();
        if let Some(LostLocks { keys, reason, cause }) = self.lost.remove(&owner) {
            return Err(ClientError::ConnectionLost {
                addr: self.addr.clone(),
                reason,
                released: Released::CallersLocks(keys),
                cause,
            });
        }
        if let Some(conn) = self.conn.as_mut() {
            if let Err(e) = conn.poll() {
                excuse_unless_callers(self.connection_lost(Some(owner), e))?;
            }
        }
        if let (Some(target), Some(_)) = (io, &self.suspended) {
            excuse_unless_callers(self.resume(Some(owner), target))?;
        }
        self.release_unwanted_grants();
        match self.conn.as_mut() {
            Some(conn) => conn.take_deferred(owner).map_or(Ok(()), Err),
            None => Ok(()),
        }
    }

    /// Waits until the server applied this session's pipelined releases. A connection that
    /// fails meanwhile is handled as any loss: its holders hear of it on their next call.
    fn wait_releases(&mut self) {
        // A forked child's sessions are the parent's until the child adopts them.
        if self.pid != fork::process_id() {
            return;
        }
        let Some(conn) = self.conn.as_mut().filter(|conn| conn.has_release_in_flight()) else {
            return;
        };
        if let Err(e) = conn.wait_releases(self.target.timeouts.io) {
            let _ = self.connection_lost(None, e);
        }
    }

    fn hello(&self) -> HelloParams {
        HelloParams {
            client: Some(format!("pklock.so/{} pid {}", env!("CARGO_PKG_VERSION"), self.pid)),
            ..HelloParams::default()
        }
    }

    /// The open connection, or a new one (a suspended session was resumed by `checkpoint`).
    fn connection(&mut self, target: &Target) -> Result<&mut Connection, ClientError> {
        debug_assert!(self.suspended.is_none(), "a new connection would abandon the suspended session");
        if self.conn.is_none() {
            self.conn = Some(self.connect(target)?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Connects to one of the target's nodes, trying them in its node order. A single
    /// address's failure is reported as it is; a list's names every node tried. A refused
    /// auth key is reported at once: every node of a cluster has the same key.
    fn connect(&mut self, target: &Target) -> Result<Connection, ClientError> {
        let hello = self.hello();
        let open = |node: &Node| Connection::open(node, 1, target.timeouts, &target.tls, &hello, target.auth_key.as_ref());
        if let [node] = target.nodes.as_slice() {
            self.node = 0;
            return open(node);
        }
        let mut failures = Vec::new();
        for index in connect_order(&target.nodes, target.node_order, None) {
            match open(&target.nodes[index]) {
                Ok(conn) => {
                    self.node = index;
                    return Ok(conn);
                }
                Err(refused) if is_auth_refusal(&refused) => return Err(refused),
                Err(failed) => failures.push(failed.to_string()),
            }
        }
        Err(ClientError::NoNode { failures })
    }

    /// Has another node take the suspended session over: tries every node once, in the
    /// target's node order, the lost one last. `NotResumed` when none could (the session stays suspended
    /// for a later call); `ConnectionLost` when the cluster says the session is gone: its
    /// locks are lost as with a single lockd's connection, and the new connection (with a
    /// session of its own) serves from now on.
    fn resume(&mut self, caller: Option<OwnerId>, target: &Target) -> Result<(), ClientError> {
        let Some(lost_node) = self.suspended.as_ref().map(|suspended| suspended.node) else {
            return Ok(());
        };
        let hello = self.hello();
        let mut failures = Vec::new();
        for index in connect_order(&target.nodes, target.node_order, Some(lost_node)) {
            // A node that took the session over and was lost at once suspends it again.
            let Some(suspended) = self.suspended.as_mut() else {
                return Ok(());
            };
            let node = &target.nodes[index];
            let opened = Connection::open(
                node,
                suspended.conn.next_id(),
                target.timeouts,
                &target.tls,
                &hello,
                target.auth_key.as_ref(),
            );
            let mut conn = match opened {
                Ok(conn) => conn,
                Err(failed) => {
                    failures.push(failed.to_string());
                    continue;
                }
            };
            match conn.take_over(&mut suspended.conn, target.timeouts.io) {
                Ok(resend) => {
                    self.suspended = None;
                    self.node = index;
                    let resent = conn.resend(&resend);
                    let addr = conn.addr().to_owned();
                    self.conn = Some(conn);
                    match resent {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            failures.push(format!("{addr}: lost after resuming ({e})"));
                            self.connection_lost(caller, e)?;
                        }
                    }
                }
                Err(ClientError::Server { body, .. }) if session_is_gone(body.code) => {
                    let suspended = self.suspended.take().expect("suspended above");
                    let reason = format!(
                        "{}; then lockd at {} refused to resume its session: {} ({})",
                        suspended.reason,
                        conn.addr(),
                        body.message,
                        body.code.as_str()
                    );
                    let lost = self.locks_gone(caller, suspended.conn.addr().to_owned(), reason, LossCause::Broken);
                    self.conn = Some(conn);
                    self.node = index;
                    return Err(lost);
                }
                Err(failed) => failures.push(failed.to_string()),
            }
        }
        let suspended = self.suspended.as_ref().expect("a resume that did not return suspends");
        Err(ClientError::NotResumed {
            addr: suspended.conn.addr().to_owned(),
            reason: suspended.reason.clone(),
            failures,
            left: suspended.ttl.saturating_sub(suspended.since.elapsed()).as_secs_f64(),
        })
    }

    /// A suspended session whose TTL has run out since the loss is gone, and its locks with
    /// it: every holder is told on its next call.
    fn expire_suspension(&mut self) {
        if self.suspended.as_ref().is_none_or(|suspended| suspended.since.elapsed() < suspended.ttl) {
            return;
        }
        let suspended = self.suspended.take().expect("checked above");
        let reason = format!(
            "{}; no lockd node took its session over within its TTL of {} s",
            suspended.reason,
            suspended.ttl.as_secs_f64()
        );
        self.locks_gone(None, suspended.conn.addr().to_owned(), reason, LossCause::Broken);
    }

    /// Releases what abandoned `lock` requests were granted after their caller gave up.
    fn release_unwanted_grants(&mut self) {
        let grants = self.conn.as_mut().map(Connection::take_unwanted_grants).unwrap_or_default();
        for (owner, keys) in grants {
            let params = UnlockParams { keys: Keys(keys), owner, defer_reply: true };
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            if let Err(e) = conn.send_pipelined(owner, "unlock", params, |_| PipelinedCheck::Abandoned { lock: None }) {
                let _ = self.connection_lost(None, e);
            }
        }
    }

    /// One request waited for: its result, or the server's error as `ClientError::Server`.
    /// If the connection's cluster node is lost meanwhile, another node takes the session
    /// over and the reply is waited for there.
    fn exchange<P: Serialize + ?Sized>(
        &mut self,
        owner: OwnerId,
        target: &Target,
        request: Request<'_, P>,
        describe_request: impl FnOnce() -> String,
    ) -> Result<Value, ClientError> {
        self.checkpoint(owner, Some(target))?;
        let conn = self.connection(target)?;
        let id = match conn.queue(request.command, request.parameters) {
            Ok(id) => id,
            Err(too_large @ ConnError::TooLarge { .. }) => {
                return Err(ClientError::Server {
                    request: describe_request(),
                    body: ErrorBody::new(ErrorCode::FrameTooLarge, too_large.to_string()),
                })
            }
            Err(e) => return Err(self.connection_failed(Some(owner), e)),
        };
        let deadline = request.timeout.map(|timeout| Instant::now() + timeout);
        let mut outcome = conn.flush().and_then(|()| conn.wait_reply(id, request.timeout));
        loop {
            match outcome {
                Ok(Ok(result)) => {
                    self.release_unwanted_grants();
                    return Ok(result);
                }
                Ok(Err(body)) => return Err(ClientError::Server { request: describe_request(), body }),
                Err(e) => {
                    self.connection_lost(Some(owner), e)?;
                    if let Err(not_resumed) = self.resume(Some(owner), target) {
                        if let Some(suspended) = self.suspended.as_mut() {
                            suspended.conn.abandon(id, owner, request.lock_keys.map(<[String]>::to_vec));
                        }
                        return Err(not_resumed);
                    }
                    // A wait that ran out on the lost node gets the usual time for the reply.
                    let left = deadline.map(|at| at.saturating_duration_since(Instant::now()).max(target.timeouts.io));
                    outcome = self.conn.as_mut().expect("resumed").wait_reply(id, left);
                }
            }
        }
    }

    /// Sends a pipelined request on the open connection (there is one whenever locks are
    /// held, which is the only time this is called), or queues it in the suspended session
    /// for the node that takes it over.
    fn send_pipelined<P: Serialize>(
        &mut self,
        owner: OwnerId,
        command: &str,
        parameters: P,
        check: impl FnOnce(P) -> PipelinedCheck,
    ) -> Result<(), ClientError> {
        if let Some(suspended) = self.suspended.as_mut() {
            return match suspended.conn.queue_pipelined(owner, command, parameters, check) {
                Ok(()) => Ok(()),
                Err(e) => {
                    let suspended = self.suspended.take().expect("suspended above");
                    Err(self.locks_gone(Some(owner), suspended.conn.addr().to_owned(), e.to_string(), e.cause()))
                }
            };
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        match conn.send_pipelined(owner, command, parameters, check) {
            Ok(()) => Ok(()),
            Err(e) => self.connection_lost(Some(owner), e),
        }
    }

    /// The connection broke (I/O error, end of stream, no reply in time). A cluster session
    /// with something at stake (locks held, requests without a reply) is suspended, to be
    /// taken over by another node; otherwise it is as [`Self::connection_failed`].
    fn connection_lost(&mut self, caller: Option<OwnerId>, cause: ConnError) -> Result<(), ClientError> {
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        let at_stake = self.anybody_holds_locks() || self.raw_rpc_used || conn.has_unanswered();
        match conn.session().map(|session| session.ttl) {
            Some(ttl) if at_stake => {
                self.suspended = Some(Suspended {
                    conn,
                    node: self.node,
                    since: Instant::now(),
                    ttl: Duration::try_from_secs_f64(ttl).unwrap_or_default(),
                    reason: cause.to_string(),
                });
                Ok(())
            }
            _ => Err(self.locks_gone(caller, conn.addr().to_owned(), cause.to_string(), cause.cause())),
        }
    }

    /// The connection is unusable: drop it (the server releases everything held through
    /// it) and describe the loss (see [`Self::locks_gone`]).
    fn connection_failed(&mut self, caller: Option<OwnerId>, cause: ConnError) -> ClientError {
        let addr = self.conn.take().map_or_else(|| self.addr.clone(), |conn| conn.addr().to_owned());
        self.locks_gone(caller, addr, cause.to_string(), cause.cause())
    }

    /// Everything held through the connection (or cluster session) is gone: mark the owners
    /// that held locks as lost, and describe the loss for `caller`.
    fn locks_gone(&mut self, caller: Option<OwnerId>, addr: String, reason: String, cause: LossCause) -> ClientError {
        let mut released = if self.anybody_holds_locks() { Released::OthersLocks } else { Released::Nothing };
        for (owner, keys) in self.held.drain() {
            if keys.is_empty() {
                continue;
            }
            let mut keys: Vec<String> = keys.into_keys().collect();
            keys.sort();
            if Some(owner) == caller {
                released = Released::CallersLocks(keys);
            } else {
                self.lost.insert(owner, LostLocks { keys, reason: reason.clone(), cause });
            }
        }
        ClientError::ConnectionLost { addr, reason, released, cause }
    }
}

/// A request waited for: `lock_keys` are the keys of a `lock` (see
/// [`PipelinedCheck::Abandoned`]).
struct Request<'a, P: ?Sized> {
    command: &'a str,
    parameters: &'a P,
    timeout: Option<Duration>,
    lock_keys: Option<&'a [String]>,
}

/// A lost connection is the caller's problem only if the caller held locks through it:
/// otherwise a new connection is as good.
fn excuse_unless_callers(outcome: Result<(), ClientError>) -> Result<(), ClientError> {
    match outcome {
        Err(ClientError::ConnectionLost { released: Released::Nothing | Released::OthersLocks, .. }) => Ok(()),
        other => other,
    }
}

/// The cluster's answers to `resume` that mean the session cannot be resumed anywhere:
/// gone (`session_expired`), or not ours to resume (`auth_failed`: wrong secret;
/// `bad_request`).
fn session_is_gone(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::SessionExpired | ErrorCode::AuthFailed | ErrorCode::BadRequest)
}

/// An auth key refused by the server, or a server that cannot prove it knows ours.
fn is_auth_refusal(error: &ClientError) -> bool {
    match error {
        ClientError::Auth { .. } => true,
        ClientError::Server { body, .. } => matches!(body.code, ErrorCode::AuthRequired | ErrorCode::AuthFailed),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripted::{self, closed_port, cluster_hello, serve, serve_on, Step};
    use serde_json::json;
    use std::net::TcpListener;

    const PLAIN: TlsSettings = TlsSettings { enabled: false, ca: None, verify: true };

    fn target(ports: &[u16]) -> Target {
        Target {
            nodes: ports.iter().map(|&port| Node { host: "127.0.0.1".into(), port }).collect(),
            node_order: NodeOrder::Random,
            timeouts: Timeouts { connect: Duration::from_secs(2), io: Duration::from_secs(2) },
            auth_key: None,
            tls: PLAIN,
        }
    }

    /// A session already connected to the first node of `target` (a fresh connection picks
    /// its node at random; these tests need to know which one it is).
    fn connected(target: &Target) -> Session {
        let mut session = Session::new(target.clone());
        let conn = session.connect(&Target { nodes: target.nodes[..1].to_vec(), ..target.clone() }).unwrap();
        session.conn = Some(conn);
        session
    }

    fn granted(token: u64) -> Step {
        scripted::result(json!({"granted": true, "token": token}))
    }

    /// What the client sends for `resume` of the session `cluster_hello("s1", ..)` offered.
    fn resume_of_s1(request: &Value, pending: &[u64]) {
        assert_eq!(request["command"], "resume");
        assert_eq!(request["parameters"], json!({"session": "s1", "secret": "5e".repeat(32), "pending": pending}));
    }

    #[test]
    fn a_lost_node_s_session_is_resumed_on_another_and_unanswered_requests_go_on_there() {
        // Node A grants 'a' to owner 1, reads owner 1's pipelined unlock and owner 2's lock
        // of 'b', and dies without answering either.
        let (port_a, node_a) =
            serve(cluster_hello("s1", 15.0), vec![granted(10), scripted::replies(vec![]), scripted::replies(vec![])]);
        // Node B: the cluster got the unlock (answered at once) but never the lock, which
        // comes again with its id and is granted; then a new lock.
        let node_b_script: Vec<Step> = vec![
            Box::new(|resume| {
                resume_of_s1(resume, &[3, 4]);
                vec![
                    json!({"id": resume["id"], "result": {"resumed": true, "resend": [4]}}),
                    json!({"id": 3, "result": {"released": ["a"], "not_held": []}}),
                ]
            }),
            granted(11),
            granted(12),
        ];
        let (port_b, node_b) = serve(cluster_hello("s2", 15.0), node_b_script);
        let target = target(&[port_a, port_b]);
        let mut session = connected(&target);

        assert_eq!(session.lock(1, &target, vec!["a".into()], Mode::Exclusive, Some(0.0)).unwrap(), Some(10));
        assert!(session.unlock(1, &target, vec!["a".into()]).unwrap());
        assert_eq!(session.lock(2, &target, vec!["b".into()], Mode::Exclusive, Some(5.0)).unwrap(), Some(11));
        // Checked before the last request: node B's script closes the connection after it.
        assert!(session.conn.as_ref().unwrap().session().is_some_and(|s| s.id == "s1"), "the connection is s1 now");
        assert_eq!(session.lock(1, &target, vec!["c".into()], Mode::Exclusive, Some(0.0)).unwrap(), Some(12));
        assert_eq!(session.token(2, "b").unwrap(), Some(11));

        let on_a = node_a.join().unwrap();
        let on_b = node_b.join().unwrap();
        assert_eq!(on_a[2]["command"], "lock");
        assert_eq!(on_b[1], on_a[2], "the lock is sent again as it was, same id");
        let ids: Vec<u64> = on_a.iter().chain(&on_b).map(|request| request["id"].as_u64().unwrap()).collect();
        // B's hello took id 5, so the session's ids only increase: 2 3 4 | 6 (resume) 4 (resent) 7.
        assert_eq!(ids, [2, 3, 4, 6, 4, 7]);
    }

    #[test]
    fn an_expired_session_loses_every_holder_s_locks_and_the_new_node_serves_on() {
        let (port_a, node_a) = serve(cluster_hello("s1", 15.0), vec![granted(10), granted(11)]);
        let node_b_script: Vec<Step> = vec![
            Box::new(|resume| {
                resume_of_s1(resume, &[]);
                scripted::error("session_expired")(resume)
            }),
            granted(20),
        ];
        let (port_b, node_b) = serve(cluster_hello("s2", 15.0), node_b_script);
        let target = target(&[port_a, port_b]);
        let mut session = connected(&target);
        session.lock(1, &target, vec!["a".into()], Mode::Exclusive, Some(0.0)).unwrap();
        session.lock(2, &target, vec!["b".into()], Mode::Exclusive, Some(0.0)).unwrap();
        node_a.join().unwrap();

        match session.lock(1, &target, vec!["c".into()], Mode::Exclusive, Some(0.0)) {
            Err(ClientError::ConnectionLost { released: Released::CallersLocks(keys), reason, .. }) => {
                assert_eq!(keys, ["a"]);
                assert!(reason.contains("session_expired"), "{reason}");
            }
            other => panic!("owner 1 must hear its locks are lost, got {other:?}"),
        }
        assert!(matches!(session.token(2, "b"), Err(ClientError::ConnectionLost { released: Released::CallersLocks(_), .. })));
        assert_eq!(session.lock(2, &target, vec!["b".into()], Mode::Exclusive, Some(0.0)).unwrap(), Some(20));
        assert!(session.conn.as_ref().unwrap().session().is_some_and(|s| s.id == "s2"));
        node_b.join().unwrap();
    }

    #[test]
    fn while_no_node_can_resume_calls_fail_the_locks_stay_and_a_later_call_resumes() {
        let (port_a, node_a) = serve(cluster_hello("s1", 15.0), vec![granted(10)]);
        let port_b = closed_port();
        let target = target(&[port_a, port_b]);
        let mut session = connected(&target);
        session.lock(1, &target, vec!["a".into()], Mode::Exclusive, Some(0.0)).unwrap();
        node_a.join().unwrap();

        // No I/O: the token is still good while the session waits to be resumed.
        assert_eq!(session.token(1, "a").unwrap(), Some(10));
        assert!(!session.is_connected());
        match session.lock(1, &target, vec!["c".into()], Mode::Exclusive, Some(0.0)) {
            Err(err @ ClientError::NotResumed { .. }) => {
                let message = err.to_string();
                for port in [port_a, port_b] {
                    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
                }
            }
            other => panic!("expected NotResumed, got {other:?}"),
        }
        // The unlock waits in the suspended session and is sent by the node that takes over.
        assert!(matches!(session.unlock(1, &target, vec!["a".into()]), Err(ClientError::NotResumed { .. })));

        let node_b_script: Vec<Step> = vec![
            Box::new(|resume| {
                resume_of_s1(resume, &[3]);
                vec![json!({"id": resume["id"], "result": {"resumed": true, "resend": [3]}})]
            }),
            scripted::result(json!({"released": ["a"], "not_held": []})),
            granted(12),
        ];
        let node_b = serve_on(TcpListener::bind(("127.0.0.1", port_b)).unwrap(), cluster_hello("s2", 15.0), node_b_script);
        assert_eq!(session.lock(1, &target, vec!["c".into()], Mode::Exclusive, Some(0.0)).unwrap(), Some(12));
        let on_b = node_b.join().unwrap();
        assert_eq!((on_b[1]["command"].as_str(), on_b[1]["id"].as_u64()), (Some("unlock"), Some(3)));
    }

    #[test]
    fn a_session_not_resumed_within_its_ttl_is_lost() {
        let (port_a, node_a) = serve(cluster_hello("s1", 0.2), vec![granted(10)]);
        let target = target(&[port_a, closed_port()]);
        let mut session = connected(&target);
        session.lock(1, &target, vec!["a".into()], Mode::Exclusive, Some(0.0)).unwrap();
        node_a.join().unwrap();
        assert_eq!(session.token(1, "a").unwrap(), Some(10));
        std::thread::sleep(Duration::from_millis(300));
        match session.token(1, "a") {
            Err(ClientError::ConnectionLost { released: Released::CallersLocks(keys), reason, .. }) => {
                assert_eq!(keys, ["a"]);
                assert!(reason.contains("within its TTL"), "{reason}");
            }
            other => panic!("expected the locks lost, got {other:?}"),
        }
    }

    #[test]
    fn a_lock_given_up_on_is_released_when_its_grant_comes_after_all() {
        // A dies while owner 1 waits for 'a'; no other node is up, so lock() gives up.
        let (port_a, node_a) = serve(cluster_hello("s1", 15.0), vec![scripted::replies(vec![])]);
        let port_b = closed_port();
        let target = target(&[port_a, port_b]);
        let mut session = connected(&target);
        assert!(matches!(
            session.lock(1, &target, vec!["a".into()], Mode::Exclusive, Some(5.0)),
            Err(ClientError::NotResumed { .. })
        ));
        node_a.join().unwrap();
        // B comes up: the cluster had the lock and grants it once resumed; nobody wants it.
        let node_b_script: Vec<Step> = vec![
            Box::new(|resume| {
                resume_of_s1(resume, &[2]);
                vec![
                    json!({"id": resume["id"], "result": {"resumed": true, "resend": []}}),
                    json!({"id": 2, "result": {"granted": true, "token": 10}}),
                ]
            }),
            granted(11),
            scripted::replies(vec![]),
        ];
        let node_b = serve_on(TcpListener::bind(("127.0.0.1", port_b)).unwrap(), cluster_hello("s2", 15.0), node_b_script);
        assert_eq!(session.lock(1, &target, vec!["c".into()], Mode::Exclusive, Some(0.0)).unwrap(), Some(11));
        assert_eq!(session.token(1, "a").unwrap(), None);
        let on_b = node_b.join().unwrap();
        assert_eq!(on_b[2]["command"], "unlock");
        assert_eq!(on_b[2]["parameters"]["keys"], "a");
        assert_eq!(on_b[2]["parameters"]["owner"], 1);
    }

    #[test]
    fn a_list_connects_to_a_node_that_answers_and_names_every_node_when_none_does() {
        let (port, node) = serve(scripted::single_hello(), vec![scripted::result(json!({"pong": true}))]);
        let dead = closed_port();
        let target = target(&[dead, port]);
        let mut session = Session::new(target.clone());
        assert_eq!(session.rpc(0, &target, "ping", &json!({}), None).unwrap(), br#"{"id":2,"result":{"pong":true}}"#);
        node.join().unwrap();

        let target = super::tests::target(&[closed_port(), closed_port()]);
        let err = Session::new(target.clone()).rpc(0, &target, "ping", &json!({}), None).unwrap_err();
        assert!(matches!(err, ClientError::NoNode { .. }));
        for node in &target.nodes {
            assert!(err.to_string().contains(&node.addr()), "{err}");
        }
    }

    #[test]
    fn without_a_session_a_lost_connection_loses_the_locks_as_always() {
        let (port_a, node_a) = serve(scripted::single_hello(), vec![granted(10)]);
        let target = target(&[port_a]);
        let mut session = connected(&target);
        session.lock(1, &target, vec!["a".into()], Mode::Exclusive, Some(0.0)).unwrap();
        node_a.join().unwrap();
        assert!(matches!(
            session.token(1, "a"),
            Err(ClientError::ConnectionLost { released: Released::CallersLocks(_), .. })
        ));
        assert!(session.suspended.is_none());
    }
}
