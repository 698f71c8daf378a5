//! `release_all`: release everything one owner holds, or every owner on this connection.

use std::time::Instant;

use pklock_proto::{ReleaseAllParams, ReleaseAllResult};
use serde_json::value::RawValue;

use super::{parse_params, CmdResult, Ctx};
use crate::table::Owner;

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let params: ReleaseAllParams = parse_params(raw)?;
    ctx.reply_can_wait = params.defer_reply;
    let mut woken = Vec::new();
    let (released, cancelled) = {
        let mut table = ctx.shared.table();
        match params.owner {
            Some(handle) => table.release_owner(Owner { conn: ctx.conn, handle }, Instant::now(), &mut woken),
            None => table.release_connection(ctx.conn, false, Instant::now(), &mut woken),
        }
    };
    ctx.shared.deliver(woken);
    ctx.reply(&ReleaseAllResult { released, cancelled });
    Ok(())
}
