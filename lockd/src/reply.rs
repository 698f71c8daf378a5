//! Reply encoding, in one place: the envelope of every reply, and how the outcome of a
//! lock request is told to each kind of client, whether it is known at once or when a
//! wait ends on another connection's task.

use pklock_proto::frame::encode_into;
use pklock_proto::{ErrorBody, ErrorCode, ErrorReply, LegacyLockResult, LockResult, ResultReply};
use serde::Serialize;
use serde_json::Value;

/// How a client expects to hear about its lock: pkLockServer's clients expect
/// `{"status": "ok"}` for a grant, eLock's a status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStyle {
    Native,
    PkLockServer,
    ELock,
}

/// How a lock request came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOutcome {
    Granted { token: u64 },
    /// A try-lock found the keys taken.
    Busy,
    TimedOut,
    /// Withdrawn by its own owner's unlock or release.
    Cancelled,
    /// The server stopped granting before the wait ended.
    ShuttingDown,
}

/// Appends the reply to lock request `id` in `style`. Some outcomes get no reply
/// (pkLockServer never answered a withdrawn request; its clients stop listening first).
pub fn encode_lock_outcome(out: &mut Vec<u8>, id: &Value, style: ReplyStyle, outcome: LockOutcome) {
    use LockOutcome::*;
    match (style, outcome) {
        (ReplyStyle::ELock, Granted { .. }) => out.extend_from_slice(b"200 Lock acquired\r\n"),
        (ReplyStyle::ELock, Busy | TimedOut) => out.extend_from_slice(b"409 Lock is unavailable\r\n"),
        (ReplyStyle::ELock, ShuttingDown) => out.extend_from_slice(b"503 The server is shutting down\r\n"),
        // Only a connection that went away withdraws an eLock wait: nobody to tell.
        (ReplyStyle::ELock, Cancelled) => {}
        (_, ShuttingDown) => encode_error(
            out,
            id,
            &ErrorBody::new(ErrorCode::ShuttingDown, "the server is shutting down; the lock was not granted"),
        ),
        (ReplyStyle::Native, Granted { token }) => encode_result(out, id, &LockResult { granted: true, token: Some(token) }),
        (ReplyStyle::Native, Busy | TimedOut | Cancelled) => encode_result(out, id, &LockResult { granted: false, token: None }),
        (ReplyStyle::PkLockServer, Granted { .. }) => legacy(out, id, "ok"),
        (ReplyStyle::PkLockServer, Busy) => legacy(out, id, "busy"),
        // pkLockServer had no server-side wait; a lockName request that adds one is told
        // when it runs out.
        (ReplyStyle::PkLockServer, TimedOut) => legacy(out, id, "timeout"),
        (ReplyStyle::PkLockServer, Cancelled) => {}
    }
}

fn legacy(out: &mut Vec<u8>, id: &Value, status: &str) {
    encode_result(out, id, &LegacyLockResult { status: status.into() });
}

/// Appends `{"id": id, "result": result}` as a frame.
pub fn encode_result<R: Serialize>(out: &mut Vec<u8>, id: &Value, result: &R) {
    encode_into(out, &ResultReply { id, result }).expect("replies are always serializable");
}

/// Appends `{"id": id, "error": error}` as a frame.
pub fn encode_error(out: &mut Vec<u8>, id: &Value, error: &ErrorBody) {
    encode_into(out, &ErrorReply { id, error }).expect("errors are always serializable");
}
