//! `ping`: the cheapest round trip, for liveness checks and latency baselines.

use pklock_proto::{NoParams, PingResult};
use serde_json::value::RawValue;

use super::{parse_params, CmdResult, Ctx};

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let NoParams {} = parse_params(raw)?;
    ctx.reply(&PingResult { pong: true });
    Ok(())
}
