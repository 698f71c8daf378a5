//! `release_all`: release everything one owner holds, or every owner on this connection.

use pklock_proto::ReleaseAllParams;
use serde_json::value::RawValue;

use super::{parse_params, CmdResult, Ctx};
use crate::mutation::Mutation;

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let params: ReleaseAllParams = parse_params(raw)?;
    ctx.reply_can_wait = params.defer_reply;
    ctx.mutate(Mutation::ReleaseAll { owner: params.owner })
}
