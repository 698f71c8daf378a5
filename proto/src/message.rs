//! Messages: the request and reply envelopes, each command's parameters and results,
//! lock modes and error codes.
//!
//! A request is `{"id": ..., "command": "...", "parameters": {...}}`; its reply is
//! `{"id": ..., "result": {...}}` or `{"id": ..., "error": {"code", "message"}}`. The
//! server echoes `id` verbatim (any JSON value), so clients match replies by it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// How a lock is held: many shared holders at once, or one exclusive holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Exclusive,
    Shared,
}

impl Mode {
    /// Whether a holder in `self` mode can coexist with one in `other` mode.
    pub fn compatible_with(self, other: Mode) -> bool {
        self == Mode::Shared && other == Mode::Shared
    }
}

/// One key or a list of keys; on the wire either a string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "OneOrMany", into = "OneOrMany")]
pub struct Keys(pub Vec<String>);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for Keys {
    fn from(v: OneOrMany) -> Self {
        match v {
            OneOrMany::One(key) => Keys(vec![key]),
            OneOrMany::Many(keys) => Keys(keys),
        }
    }
}

impl From<Keys> for OneOrMany {
    fn from(keys: Keys) -> Self {
        match <[String; 1]>::try_from(keys.0) {
            Ok([key]) => OneOrMany::One(key),
            Err(keys) => OneOrMany::Many(keys),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Envelopes

/// A request as the server reads it. `parameters` stays raw until the command is known.
#[derive(Debug, Deserialize)]
pub struct RequestIn<'a> {
    #[serde(default)]
    pub id: Value,
    pub command: Option<String>,
    #[serde(borrow, default)]
    pub parameters: Option<&'a RawValue>,
    /// pkLockServer's `unlock` carries its key at the top level and no id.
    #[serde(rename = "lockName", default)]
    pub lock_name: Option<Value>,
}

/// A request as a client writes it.
#[derive(Debug, Serialize)]
pub struct RequestOut<'a, P: Serialize> {
    pub id: u64,
    pub command: &'a str,
    pub parameters: P,
}

/// A successful reply as the server writes it.
#[derive(Debug, Serialize)]
pub struct ResultReply<'a, R: Serialize> {
    pub id: &'a Value,
    pub result: R,
}

/// A failed reply as the server writes it.
#[derive(Debug, Serialize)]
pub struct ErrorReply<'a> {
    pub id: &'a Value,
    pub error: &'a ErrorBody,
}

/// A reply as a client reads it: exactly one of `result` and `error` is set, except for
/// pkLockServer-style unlock acknowledgements, which carry `attempted` instead.
#[derive(Debug, Deserialize)]
pub struct ReplyIn {
    #[serde(default)]
    pub id: Value,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<ErrorBody>,
    #[serde(default)]
    pub attempted: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Errors

/// Machine-readable error codes. Clients map each to an exception class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not a JSON object of the right shape, or a parameter was wrong.
    BadRequest,
    UnknownCommand,
    /// The frame's declared length exceeded the server's `--max-frame`; the server closes.
    FrameTooLarge,
    /// The server has an auth key and this connection has not authenticated (`auth`).
    AuthRequired,
    /// A wrong proof, no challenge outstanding, or a plaintext `auth_key` in `hello`; after
    /// three on one connection the server closes it.
    AuthFailed,
    /// Waiting would close a cycle in the wait-for graph; `cycle` names it.
    Deadlock,
    TooManyLocks,
    TooManyWaiters,
    TooManyKeys,
    /// Empty key, or longer than the server's key length limit.
    BadKey,
    /// This owner already has a lock request waiting on this connection.
    OwnerBusy,
    TooManyClients,
    ShuttingDown,
    /// The lock table is at its memory limit (`--max-memory`): the bytes-based twin of
    /// `too_many_locks`.
    MemoryLimit,
    /// The deadlock search for this wait went over its budget, so the server cannot say
    /// that waiting is safe; the wait is refused (try again, or with `wait` 0).
    DeadlockSearchLimit,
    /// Cluster mode: this node cannot reach a quorum of etcd, so it cannot decide; try
    /// another node.
    Unavailable,
    /// Cluster mode: `resume` of a session that expired or was closed; its locks are gone.
    SessionExpired,
    /// An admin command (`kick`) from a client outside the server's `--admin-from`.
    NotAdmin,
    /// A code this client does not know yet (newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::AuthRequired => "auth_required",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::Deadlock => "deadlock",
            ErrorCode::TooManyLocks => "too_many_locks",
            ErrorCode::TooManyWaiters => "too_many_waiters",
            ErrorCode::TooManyKeys => "too_many_keys",
            ErrorCode::BadKey => "bad_key",
            ErrorCode::OwnerBusy => "owner_busy",
            ErrorCode::TooManyClients => "too_many_clients",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::MemoryLimit => "memory_limit",
            ErrorCode::DeadlockSearchLimit => "deadlock_search_limit",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::SessionExpired => "session_expired",
            ErrorCode::NotAdmin => "not_admin",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// The `error` member of a failed reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// For `deadlock`: each step is an owner and the key it waits for; the owner of the
    /// next step (wrapping around) is in its way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<Vec<CycleStep>>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody { code, message: message.into(), cycle: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleStep {
    pub connection: u64,
    pub owner: u64,
    pub key: String,
}

// ---------------------------------------------------------------------------------------
// Commands: parameters and results

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Where clients before the challenge-response sent the key in plaintext. Only read, to
    /// refuse it with a message that says to upgrade; its value is never kept.
    #[serde(rename = "auth_key", default, skip_serializing)]
    pub plaintext_auth_key: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HelloResult {
    pub protocol: u32,
    pub server: String,
    pub version: String,
    pub connection: u64,
    pub features: Vec<String>,
    /// The largest request frame this server accepts (its `--max-frame`); a client can
    /// refuse a larger request itself instead of losing the connection over it.
    #[serde(default = "default_max_frame")]
    pub max_frame: usize,
    /// Present when this connection must authenticate before anything else: the challenge
    /// to answer with `auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthChallenge>,
    /// Cluster mode: the session this connection is, to `resume` on another node after
    /// losing this one (docs/CLUSTER.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionInfo>,
}

/// A cluster session, as `hello` offers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    /// Proves the right to resume the session: 64 lowercase hex digits.
    pub secret: String,
    /// Seconds the session outlives the loss of its node.
    pub ttl: f64,
}

/// The challenge in `hello`'s result (see [`crate::auth`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthChallenge {
    /// [`crate::auth::METHOD`].
    pub method: String,
    /// Fresh for every `hello`, valid for one `auth`.
    pub nonce: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthParams {
    pub client_nonce: String,
    /// [`crate::auth::Proof::Client`] over the server's and the client's nonce.
    pub proof: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AuthResult {
    pub authenticated: bool,
    /// [`crate::auth::Proof::Server`]: the client checks it, so a server that does not
    /// know the key cannot pass for lockd.
    pub server_proof: String,
}

fn default_max_frame() -> usize {
    crate::DEFAULT_MAX_FRAME
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockParams {
    /// `lockName` is pkLockServer's spelling; a request that uses it gets that server's
    /// reply shape (`{"status": "ok"}`).
    #[serde(alias = "lockName")]
    pub keys: Keys,
    #[serde(default)]
    pub mode: Mode,
    /// Seconds to wait: 0 tries once, absent or null waits as long as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<f64>,
    #[serde(default)]
    pub owner: u64,
    /// A lock value, for shared requests: shared holders of a key all hold the same value
    /// and another value conflicts (eLock's value locks). Absent: plain shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LockResult {
    /// False when the wait ran out (or was cancelled by an `unlock` of the same owner).
    pub granted: bool,
    /// The fencing token of this grant, present when granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlockParams {
    #[serde(alias = "lockName")]
    pub keys: Keys,
    #[serde(default)]
    pub owner: u64,
    /// The client will not wait for this reply: the server may hold it back and send it
    /// with this connection's next reply, saving a send and a wake-up (pklock.so sets it
    /// for the unlock it pipelines).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub defer_reply: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct UnlockResult {
    /// Keys this owner held and no longer holds.
    pub released: Vec<String>,
    /// Keys this owner did not hold (nothing happened to them).
    pub not_held: Vec<String>,
    /// Whether a waiting lock request of this owner on one of the keys was withdrawn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseAllParams {
    /// Absent: every owner on this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u64>,
    /// The client will not wait for this reply: the server may hold it back and send it
    /// with this connection's next reply, saving a send and a wake-up (pklock.so sets it
    /// for the unlock it pipelines).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub defer_reply: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReleaseAllResult {
    /// How many (key, owner) locks were released.
    pub released: usize,
    /// How many waiting requests were withdrawn.
    pub cancelled: usize,
}

/// Parameters of commands that take none (`ping`, `stat`): only `{}` is accepted, like
/// every command refuses parameters it does not know.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

#[derive(Debug, Serialize, Deserialize)]
pub struct PingResult {
    pub pong: bool,
}

/// `resume`: take over a cluster session whose node was lost (docs/CLUSTER.md).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeParams {
    pub session: String,
    pub secret: String,
    /// Ids of the requests sent on the lost connection that got no reply.
    #[serde(default)]
    pub pending: Vec<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ResumeResult {
    pub resumed: bool,
    /// The ids of `pending` the cluster never received: send them again, same ids, same order.
    pub resend: Vec<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckParams {
    pub key: String,
    pub token: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CheckResult {
    /// True while `token` is the token of a current holder of `key`.
    pub valid: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StatResult {
    pub version: String,
    /// Seconds since the server started.
    pub uptime: f64,
    pub connections: usize,
    /// (key, owner) pairs held.
    pub locks: usize,
    /// Distinct keys with a holder or a waiter.
    pub keys: usize,
    pub waiters: usize,
    pub grants: u64,
    pub timeouts: u64,
    pub deadlocks: u64,
    /// Resident memory of the server process, in bytes (0 where unknown).
    pub memory: u64,
    /// Estimated bytes of the lock table, what `--max-memory` bounds.
    #[serde(default)]
    pub table_memory: u64,
    /// Cluster mode: this node, whether it can reach etcd, what it applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<serde_json::Value>,
}

/// `kick` (admin only): close another connection, releasing its locks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KickParams {
    /// The connection's id, as `locks` and `hello` report it.
    pub connection: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KickResult {
    /// False when no connection that can be kicked has that id (it may have closed).
    pub kicked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocksParams {
    /// Only keys that start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// At most this many keys, and at most this many holders and waiters per key (default
    /// 1000; larger values are lowered to the server's cap, 10 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Start after this key: the `next` of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LocksResult {
    pub keys: Vec<KeyInfo>,
    /// True when `limit` cut the list short.
    pub truncated: bool,
    /// When truncated: pass this as `after` to get the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KeyInfo {
    pub key: String,
    pub holders: Vec<HolderInfo>,
    /// In queue order: the first is next.
    pub waiters: Vec<WaiterInfo>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HolderInfo {
    pub owner: u64,
    pub connection: u64,
    pub peer: String,
    /// The name the holding connection gave in `hello` (pklock.so: "pklock.so/VERSION pid
    /// PID"); absent if it gave none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub mode: Mode,
    /// Seconds since the grant.
    pub held_for: f64,
    pub token: u64,
    /// True for a dead connection's lock kept until `--lock-delay` runs out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lingering: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WaiterInfo {
    pub owner: u64,
    pub connection: u64,
    pub peer: String,
    /// The name the holding connection gave in `hello` (pklock.so: "pklock.so/VERSION pid
    /// PID"); absent if it gave none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub mode: Mode,
    /// Seconds since the request arrived.
    pub waited_for: f64,
    /// Seconds left before it gives up; absent when it waits as long as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gives_up_in: Option<f64>,
}

/// pkLockServer's reply to a granted `lock` that used `lockName`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LegacyLockResult {
    pub status: String,
}

/// pkLockServer's acknowledgement of `{"command":"unlock","lockName":...}` (no id).
#[derive(Debug, Serialize, Deserialize)]
pub struct LegacyUnlockReply {
    pub attempted: String,
    /// `ok`, `notFound` or `invalid`.
    pub result: String,
    #[serde(rename = "lockName", default, skip_serializing_if = "Option::is_none")]
    pub lock_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_accept_a_string_or_a_list() {
        let one: LockParams = serde_json::from_value(json!({"keys": "a"})).unwrap();
        assert_eq!(one.keys.0, ["a"]);
        let many: LockParams = serde_json::from_value(json!({"keys": ["a", "b"], "mode": "shared", "wait": 0})).unwrap();
        assert_eq!(many.keys.0, ["a", "b"]);
        assert_eq!(many.mode, Mode::Shared);
        assert_eq!(many.wait, Some(0.0));
        assert_eq!(serde_json::to_value(&one.keys).unwrap(), json!("a"));
    }

    #[test]
    fn lock_params_take_pklockserver_spelling() {
        let p: LockParams = serde_json::from_value(json!({"lockName": "test"})).unwrap();
        assert_eq!(p.keys.0, ["test"]);
        assert_eq!(p.wait, None);
        assert_eq!(p.mode, Mode::Exclusive);
    }

    #[test]
    fn unknown_parameters_are_refused() {
        assert!(serde_json::from_value::<LockParams>(json!({"keys": "a", "wiat": 1})).is_err());
    }

    #[test]
    fn unknown_error_codes_are_tolerated_by_clients() {
        let e: ErrorBody = serde_json::from_value(json!({"code": "from_the_future", "message": "m"})).unwrap();
        assert_eq!(e.code, ErrorCode::Unknown);
        assert_eq!(serde_json::to_value(ErrorCode::TooManyLocks).unwrap(), json!(ErrorCode::TooManyLocks.as_str()));
    }

    #[test]
    fn modes_conflict_unless_both_shared() {
        assert!(Mode::Shared.compatible_with(Mode::Shared));
        assert!(!Mode::Shared.compatible_with(Mode::Exclusive));
        assert!(!Mode::Exclusive.compatible_with(Mode::Exclusive));
    }
}
