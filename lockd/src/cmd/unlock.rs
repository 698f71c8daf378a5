//! `unlock`: release keys of one owner (and withdraw its wait for any of them).
//! Also pkLockServer's `{"command": "unlock", "lockName": ...}`, which has no id and
//! gets that server's `{"attempted": "unlock", ...}` acknowledgement.

use std::time::Instant;

use pklock_proto::frame::encode_into;
use pklock_proto::{LegacyUnlockReply, UnlockParams, UnlockResult};
use serde_json::value::RawValue;
use serde_json::Value;

use super::{parse_params, CmdResult, Ctx};
use crate::table::{Owner, TableError, Unlocked};

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let params: UnlockParams = parse_params(raw)?;
    let limit = ctx.shared.config.max_keys;
    if params.keys.0.len() > limit {
        return Err(TableError::TooManyKeys { count: params.keys.0.len(), limit }.into());
    }
    ctx.reply_can_wait = params.defer_reply;
    let Unlocked { released, not_held, cancelled } = unlock(ctx, params.owner, &params.keys.0);
    ctx.reply(&UnlockResult { released, not_held, cancelled });
    Ok(())
}

pub fn run_pklockserver(ctx: &mut Ctx<'_>, lock_name: Option<&Value>) -> CmdResult {
    let reply = match lock_name {
        Some(Value::String(key)) => {
            let done = unlock(ctx, 0, std::slice::from_ref(key));
            let found = !done.released.is_empty() || done.cancelled;
            LegacyUnlockReply { attempted: "unlock".into(), result: if found { "ok" } else { "notFound" }.into(), lock_name: Some(key.clone()) }
        }
        _ => LegacyUnlockReply { attempted: "unlock".into(), result: "invalid".into(), lock_name: None },
    };
    encode_into(ctx.out, &reply).expect("serializable");
    Ok(())
}

fn unlock(ctx: &mut Ctx<'_>, handle: u64, keys: &[String]) -> Unlocked {
    let mut woken = Vec::new();
    let done = ctx.shared.table().unlock(Owner { conn: ctx.conn, handle }, keys, Instant::now(), &mut woken);
    ctx.shared.deliver(woken);
    done
}
