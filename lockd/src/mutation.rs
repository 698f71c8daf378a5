//! The requests that change the lock table, as data: `lock`, `unlock`, `release_all`, and
//! in cluster mode the end of a timed wait; and `check`, which changes nothing but must
//! see every change before it. A single lockd applies one as it arrives; a cluster node
//! writes it to the log in etcd and every node applies it from there ([`crate::cluster`]),
//! so a `check` answered by any node reflects every lock and unlock that was answered
//! before it was asked, on whichever node (linearizable). The same [`Mutation::apply`]
//! serves both, so a cluster answers exactly as a single lockd does.

use std::sync::Arc;
use std::time::Duration;

use pklock_proto::frame::encode_into;
use pklock_proto::{CheckResult, ErrorBody, LegacyUnlockReply, Mode, ReleaseAllResult, UnlockResult};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::outbox::ReplySink;
use crate::reply::{encode_error, encode_lock_outcome, encode_result, LockOutcome, ReplyStyle};
use crate::state::{State, Waiter};
use crate::table::{Acquired, ConnId, LockRequest, Owner, Unlocked};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Mutation {
    Lock {
        owner: u64,
        keys: Vec<String>,
        mode: Mode,
        /// `None` waits as long as it takes; zero tries once.
        wait: Option<Duration>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        style: ReplyStyle,
        /// Cluster mode: when the wait ends, in ms since the Unix epoch on the clock of the
        /// node that took the request; that node (or whichever serves the session then)
        /// ends it with [`Mutation::TimeOut`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ends_at_ms: Option<u64>,
    },
    Unlock {
        owner: u64,
        keys: Vec<String>,
        /// pkLockServer's `{"command": "unlock", "lockName": ...}`, answered its way.
        #[serde(default)]
        legacy: bool,
    },
    /// One owner's locks and wait, or with `None` every owner's of the connection.
    ReleaseAll { owner: Option<u64> },
    /// Cluster mode: the wait of request `request` (its id) of `owner` ran out.
    TimeOut { owner: u64, request: Value },
    /// Whether `token` is the current grant of `key` (Chubby's CheckSequencer).
    Check { key: String, token: u64 },
}

impl Mutation {
    /// Applies this request of connection `conn` and writes its reply into `out`; a lock
    /// that waits is answered through `sink` when the wait ends. With `timed_elsewhere`
    /// (cluster mode) waits get no deadline in the table: replicas read no clock, and the
    /// serving node ends them with [`Mutation::TimeOut`].
    pub fn apply(
        self,
        state: &State,
        conn: ConnId,
        id: &Value,
        sink: &dyn Fn() -> Arc<dyn ReplySink>,
        timed_elsewhere: bool,
        out: &mut Vec<u8>,
    ) {
        if let Err(err) = self.try_apply(state, conn, id, sink, timed_elsewhere, out) {
            encode_error(out, id, &err);
        }
    }

    fn try_apply(
        self,
        state: &State,
        conn: ConnId,
        id: &Value,
        sink: &dyn Fn() -> Arc<dyn ReplySink>,
        timed_elsewhere: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), ErrorBody> {
        match self {
            Mutation::Lock { owner, keys, mode, wait, value, style, ends_at_ms } => {
                let wait = match wait {
                    Some(Duration::ZERO) => Some(Duration::ZERO),
                    _ if timed_elsewhere => None,
                    other => other,
                };
                let request = LockRequest { owner: Owner { conn, handle: owner }, keys: &keys, mode, wait, value: value.as_deref() };
                let waiter = || Waiter { sink: sink(), id: id.clone(), style, answered: None, ends_at_ms };
                let outcome = match state.lock(request, waiter)? {
                    Acquired::Granted { token } => LockOutcome::Granted { token },
                    Acquired::Busy => LockOutcome::Busy,
                    Acquired::Queued => return Ok(()),
                };
                encode_lock_outcome(out, id, style, outcome);
            }
            Mutation::Unlock { owner, keys, legacy: false } => {
                let Unlocked { released, not_held, cancelled } = state.unlock(Owner { conn, handle: owner }, &keys);
                encode_result(out, id, &UnlockResult { released, not_held, cancelled });
            }
            Mutation::Unlock { owner, keys, legacy: true } => {
                let done = state.unlock(Owner { conn, handle: owner }, &keys);
                let found = !done.released.is_empty() || done.cancelled;
                let reply = LegacyUnlockReply {
                    attempted: "unlock".into(),
                    result: if found { "ok" } else { "notFound" }.into(),
                    lock_name: keys.into_iter().next(),
                };
                encode_into(out, &reply).expect("serializable");
            }
            Mutation::ReleaseAll { owner } => {
                let (released, cancelled) = match owner {
                    Some(handle) => state.release_owner(Owner { conn, handle }),
                    None => state.release_connection(conn),
                };
                encode_result(out, id, &ReleaseAllResult { released, cancelled });
            }
            Mutation::TimeOut { owner, request } => {
                // The reply is the timed-out wait's own, sent through its sink.
                state.time_out(Owner { conn, handle: owner }, |w| w.id == request);
            }
            Mutation::Check { key, token } => {
                encode_result(out, id, &CheckResult { valid: state.check(&key, token) });
            }
        }
        Ok(())
    }
}
