//! Commands: the request envelope is parsed here and routed by name to one file per
//! command. Adding a command is a file with a `run` function plus one line in
//! [`dispatch`].

use std::sync::Arc;

use pklock_proto::{ErrorBody, ErrorCode, RequestIn};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::outbox::Outbox;
use crate::state::{encode_error, encode_result, Shared};
use crate::table::{ConnId, TableError};

mod check;
mod hello;
mod lock;
mod locks;
mod ping;
mod release_all;
mod stat;
mod unlock;

/// What a command may use: the shared state, its connection, and the reply buffer.
pub struct Ctx<'a> {
    pub shared: &'a Arc<Shared>,
    pub conn: ConnId,
    /// This connection's sending side, for replies that come later (waits).
    pub outbox: &'a Arc<Outbox>,
    /// Replies written now; the connection flushes them.
    pub out: &'a mut Vec<u8>,
    /// Whether this connection has sent the auth key (always true without one).
    pub authed: &'a mut bool,
    pub id: &'a Value,
    /// The client will not wait for this reply (`defer_reply`).
    pub reply_can_wait: bool,
}

impl Ctx<'_> {
    /// Writes the successful reply to this request.
    pub fn reply<R: Serialize>(&mut self, result: &R) {
        encode_result(self.out, self.id, result);
    }
}

pub type CmdResult = Result<(), ErrorBody>;

/// Runs one request frame, writing its reply (unless it waits) into `out`. Returns
/// whether the replies in `out` should be sent now: false only when the client said it
/// will not wait for this one (`defer_reply`), which then goes with the next reply.
pub fn handle_frame(shared: &Arc<Shared>, conn: ConnId, outbox: &Arc<Outbox>, authed: &mut bool, out: &mut Vec<u8>, payload: &[u8]) -> bool {
    let req: RequestIn<'_> = match serde_json::from_slice(payload) {
        Ok(req) => req,
        Err(e) => {
            let err = ErrorBody::new(ErrorCode::BadRequest, format!("frame is not a JSON request object: {e}"));
            encode_error(out, &Value::Null, &err);
            return true;
        }
    };
    let mut ctx = Ctx { shared, conn, outbox, out, authed, id: &req.id, reply_can_wait: false };
    match dispatch(&mut ctx, &req) {
        Ok(()) => !ctx.reply_can_wait,
        Err(err) => {
            encode_error(ctx.out, ctx.id, &err);
            true
        }
    }
}

fn dispatch(ctx: &mut Ctx<'_>, req: &RequestIn<'_>) -> CmdResult {
    let Some(command) = req.command.as_deref() else {
        return Err(ErrorBody::new(ErrorCode::BadRequest, "request has no \"command\""));
    };
    if !*ctx.authed && command != "hello" {
        return Err(ErrorBody::new(ErrorCode::AuthRequired, "this server needs the auth key: send it in \"hello\" first"));
    }
    let params = req.parameters;
    match command {
        "hello" => hello::run(ctx, params),
        "lock" => lock::run(ctx, params),
        "unlock" if params.is_none() && req.lock_name.is_some() => unlock::run_pklockserver(ctx, req.lock_name.as_ref()),
        "unlock" => unlock::run(ctx, params),
        "release_all" => release_all::run(ctx, params),
        "ping" => ping::run(ctx, params),
        "stat" => stat::run(ctx, params),
        "locks" => locks::run(ctx, params),
        "check" => check::run(ctx, params),
        other => Err(ErrorBody::new(ErrorCode::UnknownCommand, format!("unknown command {other:?}"))),
    }
}

/// Parses a command's parameters; absent parameters are `{}`.
pub fn parse_params<'de, T: Deserialize<'de>>(raw: Option<&'de RawValue>) -> Result<T, ErrorBody> {
    let text = raw.map_or("{}", RawValue::get);
    serde_json::from_str(text).map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("bad parameters: {e}")))
}

impl From<TableError> for ErrorBody {
    fn from(e: TableError) -> Self {
        let code = match &e {
            TableError::Deadlock(_) => ErrorCode::Deadlock,
            TableError::TooManyLocks { .. } => ErrorCode::TooManyLocks,
            TableError::TooManyWaiters { .. } => ErrorCode::TooManyWaiters,
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
