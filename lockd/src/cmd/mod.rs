//! Commands: the request envelope is parsed here and routed by name to one file per
//! command. Adding a command is a file with a `run` function plus one line in
//! [`dispatch`].

use std::sync::Arc;
use std::time::Instant;

use pklock_proto::{ErrorBody, ErrorCode, RequestIn};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use self::auth::AuthState;
use crate::cluster::ClientSession;
use crate::mutation::Mutation;
use crate::outbox::{Outbox, ReplySink};
use crate::reply::{encode_error, encode_result};
use crate::state::State;
use crate::table::{ConnId, TableError};

pub mod auth;
pub use stat::resident_bytes;

mod check;
mod hello;
mod kick;
mod lock;
mod locks;
mod ping;
mod release_all;
mod resume;
mod stat;
mod unlock;

/// What a command may use: the shared state, its connection, and the reply buffer.
pub struct Ctx<'a> {
    pub shared: &'a Arc<State>,
    pub conn: ConnId,
    /// This connection's sending side, for replies that come later (waits).
    pub outbox: &'a Arc<Outbox>,
    /// Replies written now; the connection flushes them.
    pub out: &'a mut Vec<u8>,
    /// Whether this connection has authenticated, and its challenge.
    pub auth: &'a mut AuthState,
    pub id: &'a Value,
    /// The client will not wait for this reply (`defer_reply`).
    pub reply_can_wait: bool,
    /// Cluster mode: the session this connection is.
    pub session: &'a mut Option<ClientSession>,
}

impl Ctx<'_> {
    /// Writes the successful reply to this request.
    pub fn reply<R: Serialize>(&mut self, result: &R) {
        encode_result(self.out, self.id, result);
    }

    /// Changes the table: here and now on a single lockd; in cluster mode through the
    /// log, whose reply comes when this node applies it.
    pub fn mutate(&mut self, mutation: Mutation) -> CmdResult {
        if let (Some(node), Some(session)) = (self.shared.cluster(), self.session.as_mut()) {
            return node.submit_request(session, self.outbox, self.id, mutation);
        }
        let outbox = self.outbox;
        let sink = || outbox.clone() as Arc<dyn ReplySink>;
        mutation.apply(self.shared, self.conn, self.id, &sink, false, self.out);
        Ok(())
    }
}

pub type CmdResult = Result<(), ErrorBody>;

/// Runs one request frame, writing its reply (unless it waits) into `out`. Returns
/// whether the replies in `out` should be sent now: false only when the client said it
/// will not wait for this one (`defer_reply`), which then goes with the next reply.
#[allow(clippy::too_many_arguments)]
pub fn handle_frame(
    shared: &Arc<State>,
    conn: ConnId,
    outbox: &Arc<Outbox>,
    auth: &mut AuthState,
    session: &mut Option<ClientSession>,
    out: &mut Vec<u8>,
    payload: &[u8],
) -> bool {
    let req: RequestIn<'_> = match serde_json::from_slice(payload) {
        Ok(req) => req,
        Err(e) => {
            let err = ErrorBody::new(ErrorCode::BadRequest, format!("frame is not a JSON request object: {e}"));
            encode_error(out, &Value::Null, &err);
            return true;
        }
    };
    let started = shared.telemetry().map(|telemetry| (telemetry, Instant::now()));
    let mut ctx = Ctx { shared, conn, outbox, out, auth, id: &req.id, reply_can_wait: false, session };
    let send_now = match dispatch(&mut ctx, &req) {
        Ok(()) => !ctx.reply_can_wait,
        Err(err) => {
            encode_error(ctx.out, ctx.id, &err);
            true
        }
    };
    if let Some((telemetry, started)) = started {
        telemetry.request_done(req.command.as_deref(), started.elapsed());
    }
    send_now
}

fn dispatch(ctx: &mut Ctx<'_>, req: &RequestIn<'_>) -> CmdResult {
    let Some(command) = req.command.as_deref() else {
        return Err(ErrorBody::new(ErrorCode::BadRequest, "request has no \"command\""));
    };
    if !ctx.auth.is_authenticated() && command != "hello" && command != "auth" {
        return Err(ErrorBody::new(ErrorCode::AuthRequired, "this server needs authentication first: hello, then auth (docs/PROTOCOL.md)"));
    }
    let params = req.parameters;
    match command {
        "hello" => hello::run(ctx, params),
        "auth" => auth::run(ctx, params),
        "lock" => lock::run(ctx, params),
        "unlock" if params.is_none() && req.lock_name.is_some() => unlock::run_pklockserver(ctx, req.lock_name.as_ref()),
        "unlock" => unlock::run(ctx, params),
        "release_all" => release_all::run(ctx, params),
        "ping" => ping::run(ctx, params),
        "stat" => stat::run(ctx, params),
        "locks" => locks::run(ctx, params),
        "check" => check::run(ctx, params),
        "resume" => resume::run(ctx, params),
        "kick" => kick::run(ctx, params),
        other => Err(ErrorBody::new(ErrorCode::UnknownCommand, format!("unknown command {other:?}"))),
    }
}

/// Parses a command's parameters; absent parameters are `{}`, and so is `[]` (PHP's
/// json_encode writes an empty array so). Anything else but an object is refused: serde
/// would read a list positionally, so `["k"]` would lock "k".
pub fn parse_params<'de, T: Deserialize<'de>>(raw: Option<&'de RawValue>) -> Result<T, ErrorBody> {
    let text = match raw.map(RawValue::get) {
        None => "{}",
        Some(list) if list.starts_with('[') && list[1..list.len() - 1].trim().is_empty() => "{}",
        Some(object) if object.starts_with('{') => object,
        Some(_) => return Err(ErrorBody::new(ErrorCode::BadRequest, "bad parameters: \"parameters\" must be an object")),
    };
    serde_json::from_str(text).map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("bad parameters: {e}")))
}

impl From<TableError> for ErrorBody {
    fn from(e: TableError) -> Self {
        let code = match &e {
            TableError::Deadlock(_) => ErrorCode::Deadlock,
            TableError::DeadlockSearchLimit { .. } => ErrorCode::DeadlockSearchLimit,
            TableError::TooManyLocks { .. } => ErrorCode::TooManyLocks,
            TableError::MemoryLimit { .. } => ErrorCode::MemoryLimit,
            TableError::ShuttingDown => ErrorCode::ShuttingDown,
            TableError::ValueConflict => ErrorCode::BadRequest,
            TableError::TooManyWaiters { .. } | TableError::TooManyWaitersOnConnection { .. } => ErrorCode::TooManyWaiters,
            TableError::TooManyKeys { .. } => ErrorCode::TooManyKeys,
            TableError::BadKey(_) => ErrorCode::BadKey,
            TableError::OwnerBusy { .. } => ErrorCode::OwnerBusy,
        };
        let mut body = ErrorBody::new(code, e.to_string());
        if let TableError::Deadlock(cycle) = e {
            body.cycle = Some(cycle);
        }
        body
    }
}
