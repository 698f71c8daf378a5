//! `check`: is a fencing token still the current grant of a key? For downstream systems
//! that must refuse writes from a holder that lost its lock (Chubby's CheckSequencer).
//! In a cluster it goes through the log like a lock request (see [`Mutation`]): a node's
//! own copy of the table may lag behind what another node already answered, and a check
//! must never vouch for a token that was released before it was asked; a node cut off
//! from etcd answers `unavailable`.

use pklock_proto::CheckParams;
use serde_json::value::RawValue;

use super::{parse_params, CmdResult, Ctx};
use crate::mutation::Mutation;

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let params: CheckParams = parse_params(raw)?;
    ctx.mutate(Mutation::Check { key: params.key, token: params.token })
}
