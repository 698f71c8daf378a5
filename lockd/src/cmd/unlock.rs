//! `unlock`: release keys of one owner (and withdraw its wait for any of them).
//! Also pkLockServer's `{"command": "unlock", "lockName": ...}`, which has no id and
//! gets that server's `{"attempted": "unlock", ...}` acknowledgement.

use pklock_proto::frame::encode_into;
use pklock_proto::{LegacyUnlockReply, UnlockParams};
use serde_json::value::RawValue;
use serde_json::Value;

use super::{parse_params, CmdResult, Ctx};
use crate::mutation::Mutation;
use crate::table::TableError;

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let params: UnlockParams = parse_params(raw)?;
    let limit = ctx.shared.config.max_keys;
    if params.keys.0.len() > limit {
        return Err(TableError::TooManyKeys { count: params.keys.0.len(), limit }.into());
    }
    ctx.reply_can_wait = params.defer_reply;
    ctx.mutate(Mutation::Unlock { owner: params.owner, keys: params.keys.0, legacy: false })
}

pub fn run_pklockserver(ctx: &mut Ctx<'_>, lock_name: Option<&Value>) -> CmdResult {
    match lock_name {
        Some(Value::String(key)) => ctx.mutate(Mutation::Unlock { owner: 0, keys: vec![key.clone()], legacy: true }),
        _ => {
            let reply = LegacyUnlockReply { attempted: "unlock".into(), result: "invalid".into(), lock_name: None };
            encode_into(ctx.out, &reply).expect("serializable");
            Ok(())
        }
    }
}
