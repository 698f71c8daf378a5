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
//! No PHP types here; `client.rs` converts arguments and results.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use pklock_proto::{ErrorBody, ErrorCode, HelloParams, Keys, LockParams, LockResult, Mode, ReleaseAllParams, UnlockParams};
use serde::Serialize;
use serde_json::Value;

use crate::connection::{ConnError, Connection, PipelinedCheck, Timeouts};
use crate::error::{quote_keys, ClientError, Released};

/// An owner handle: one per `PkLockClient` object, unique in the process.
pub type OwnerId = u64;

/// Where a client connects and how (one per object; objects for the same address share
/// the session).
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub timeouts: Timeouts,
    /// Sent in `hello` by whichever object opens the connection.
    pub auth_key: Option<String>,
}

impl Target {
    /// `host:port`, the address shown in messages.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Which session serves this target: one per address and auth key, since the key is
    /// sent once per connection and an object must not ride on a connection that another
    /// object's key opened.
    pub fn session_key(&self) -> String {
        match &self.auth_key {
            None => self.addr(),
            Some(key) => {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut hasher);
                format!("{} auth {:016x}", self.addr(), hasher.finish())
            }
        }
    }
}

/// Locks of one owner whose connection died, reported on its next call.
struct LostLocks {
    keys: Vec<String>,
    reason: String,
}

pub struct Session {
    addr: String,
    /// The process the state belongs to; a different `getpid()` means we are a forked child.
    pid: u32,
    conn: Option<Connection>,
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

/// Runs `f` on the session `key` (for server `addr`), creating it on first use.
pub fn with_session<R>(key: &str, addr: &str, f: impl FnOnce(&mut Session) -> R) -> R {
    REGISTRY.with_borrow_mut(|registry| {
        let session = registry.sessions.entry(key.to_owned()).or_insert_with(|| Session::new(addr));
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
    fn new(addr: &str) -> Self {
        Session {
            addr: addr.to_owned(),
            pid: std::process::id(),
            conn: None,
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
        let params = LockParams { keys: Keys(keys), mode, wait, owner };
        let result =
            self.exchange(owner, target, "lock", &params, timeout, || format!("lock({})", quote_keys(&params.keys.0)))?;
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
    pub fn unlock(&mut self, owner: OwnerId, keys: Vec<String>) -> Result<bool, ClientError> {
        let earlier = self.checkpoint_before_release(owner)?;
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
    pub fn unlock_all(&mut self, owner: OwnerId) -> Result<(), ClientError> {
        let earlier = self.checkpoint_before_release(owner)?;
        self.release_owner(owner)?;
        earlier.map_or(Ok(()), Err)
    }

    /// [`checkpoint`](Self::checkpoint) for a release: a problem an earlier pipelined
    /// request of `owner` left behind must not keep this release from happening, so it is
    /// returned to report afterwards. A lost connection is returned as the error at once:
    /// the server has already released everything.
    fn checkpoint_before_release(&mut self, owner: OwnerId) -> Result<Option<ClientError>, ClientError> {
        match self.checkpoint(owner) {
            Ok(()) => Ok(None),
            Err(lost @ ClientError::ConnectionLost { .. }) => Err(lost),
            Err(earlier) => Ok(Some(earlier)),
        }
    }

    /// The fencing token of `key` if `owner` holds it.
    pub fn token(&mut self, owner: OwnerId, key: &str) -> Option<u64> {
        self.adopt_after_fork();
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
        self.exchange(owner, target, command, parameters, timeout, || format!("rpc('{command}')"))?;
        Ok(self.conn.as_ref().expect("a reply just came through it").last_reply_payload().to_vec())
    }

    /// Whether this process has an open connection for this address; finds a connection
    /// the server closed, without sending anything and without connecting.
    pub fn is_connected(&mut self) -> bool {
        self.adopt_after_fork();
        if let Some(conn) = self.conn.as_mut() {
            if let Err(e) = conn.poll() {
                self.connection_failed(None, e);
            }
        }
        self.conn.is_some()
    }

    /// `close()` of an object: releases its locks, and closes the socket unless other
    /// objects of the process hold locks through it. Reports nothing: there is nobody to
    /// tell about a connection that broke meanwhile.
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
        }
    }

    /// An object is going away: release its locks (pipelined) and forget it.
    pub fn forget_owner(&mut self, owner: OwnerId) {
        self.adopt_after_fork();
        self.lost.remove(&owner);
        let _ = self.release_owner(owner);
    }

    pub fn describe(&self) -> String {
        match &self.conn {
            Some(_) if self.pid != std::process::id() => "inherited from the parent process, unused".into(),
            Some(conn) => format!(
                "connected as connection {}, {} locks held, {} replies pending",
                conn.server_connection(),
                self.held.values().map(HashMap::len).sum::<usize>(),
                conn.pipelined_count()
            ),
            None => "not connected".into(),
        }
    }

    fn end_request(&mut self) {
        self.adopt_after_fork();
        if let Some(conn) = self.conn.as_mut() {
            conn.silence_pipelined();
        }
        if self.anybody_holds_locks() || self.raw_rpc_used {
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
        let pid = std::process::id();
        if self.pid != pid {
            *self = Session { pid, ..Session::new(&self.addr) };
        }
    }

    /// What every call does first: fork check, report locks lost earlier, read pipelined
    /// replies that have arrived and report their problems.
    fn checkpoint(&mut self, owner: OwnerId) -> Result<(), ClientError> {
        self.adopt_after_fork();
        if let Some(LostLocks { keys, reason }) = self.lost.remove(&owner) {
            return Err(ClientError::ConnectionLost {
                addr: self.addr.clone(),
                reason,
                released: Released::CallersLocks(keys),
            });
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        match conn.poll() {
            Ok(()) => conn.take_deferred(owner).map_or(Ok(()), Err),
            Err(e) => match self.connection_failed(Some(owner), e) {
                // The caller held nothing through the dead connection: a new one is as good.
                ClientError::ConnectionLost { released: Released::Nothing | Released::OthersLocks, .. } => Ok(()),
                lost => Err(lost),
            },
        }
    }

    fn connection(&mut self, target: &Target) -> Result<&mut Connection, ClientError> {
        if self.conn.is_none() {
            let hello = HelloParams {
                client: Some(format!("pklock.so/{} pid {}", env!("CARGO_PKG_VERSION"), self.pid)),
                auth_key: target.auth_key.clone(),
            };
            self.conn = Some(Connection::open(&self.addr, &target.host, target.port, target.timeouts, &hello)?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// One request waited for: its result, or the server's error as `ClientError::Server`.
    fn exchange<P: Serialize + ?Sized>(
        &mut self,
        owner: OwnerId,
        target: &Target,
        command: &str,
        parameters: &P,
        timeout: Option<Duration>,
        describe_request: impl FnOnce() -> String,
    ) -> Result<Value, ClientError> {
        self.checkpoint(owner)?;
        let conn = self.connection(target)?;
        let outcome = conn.send(command, parameters).and_then(|id| conn.wait_reply(id, timeout));
        match outcome {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(body)) => Err(ClientError::Server { request: describe_request(), body }),
            Err(too_large @ ConnError::TooLarge { .. }) => Err(ClientError::Server {
                request: describe_request(),
                body: ErrorBody::new(ErrorCode::FrameTooLarge, too_large.to_string()),
            }),
            Err(e) => Err(self.connection_failed(Some(owner), e)),
        }
    }

    /// Sends a pipelined request on the open connection (there is one whenever locks are
    /// held, which is the only time this is called).
    fn send_pipelined<P: Serialize>(
        &mut self,
        owner: OwnerId,
        command: &str,
        parameters: P,
        check: impl FnOnce(P) -> PipelinedCheck,
    ) -> Result<(), ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        conn.send_pipelined(owner, command, parameters, check).map_err(|e| self.connection_failed(Some(owner), e))
    }

    /// The connection is unusable: drop it (the server releases everything held through
    /// it), mark the other owners that held locks as lost, and describe the loss for
    /// `caller`.
    fn connection_failed(&mut self, caller: Option<OwnerId>, cause: ConnError) -> ClientError {
        self.conn = None;
        let reason = cause.to_string();
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
                self.lost.insert(owner, LostLocks { keys, reason: reason.clone() });
            }
        }
        ClientError::ConnectionLost { addr: self.addr.clone(), reason, released }
    }
}
