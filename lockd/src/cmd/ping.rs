//! `ping`: the cheapest round trip, for liveness checks and latency baselines.

use pklock_proto::PingResult;
use serde_json::value::RawValue;

use super::{CmdResult, Ctx};

pub fn run(ctx: &mut Ctx<'_>, _raw: Option<&RawValue>) -> CmdResult {
    ctx.reply(&PingResult { pong: true });
    Ok(())
}
