//! `check`: is a fencing token still the current grant of a key? For downstream systems
//! that must refuse writes from a holder that lost its lock (Chubby's CheckSequencer).

use pklock_proto::{CheckParams, CheckResult};
use serde_json::value::RawValue;

use super::{parse_params, CmdResult, Ctx};

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let params: CheckParams = parse_params(raw)?;
    // A node cut off from etcd may hold a stale table: it must not vouch for a token.
    if let Some(node) = ctx.shared.cluster().filter(|node| !node.available()) {
        return Err(node.unavailable());
    }
    let valid = ctx.shared.check(&params.key, params.token);
    ctx.reply(&CheckResult { valid });
    Ok(())
}
