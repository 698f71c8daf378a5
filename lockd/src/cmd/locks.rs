//! `locks`: who holds what and who waits, in queue order (eLock's `debug`).

use std::time::Instant;

use pklock_proto::{HolderInfo, KeyInfo, LocksParams, LocksResult, WaiterInfo};
use serde_json::value::RawValue;

use super::{parse_params, CmdResult, Ctx};

/// Keys listed when the request sets no limit; the reply must stay a sane size.
const DEFAULT_LIMIT: usize = 1000;

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let params: LocksParams = parse_params(raw)?;
    let now = Instant::now();
    let (views, truncated) = ctx.shared.table().snapshot(params.prefix.as_deref().unwrap_or(""), params.limit.unwrap_or(DEFAULT_LIMIT));
    let keys = views
        .into_iter()
        .map(|v| KeyInfo {
            key: v.key,
            holders: v
                .holders
                .into_iter()
                .map(|h| HolderInfo {
                    owner: h.owner.handle,
                    connection: h.owner.conn,
                    peer: ctx.shared.peer(h.owner.conn),
                    mode: h.mode,
                    held_for: now.saturating_duration_since(h.since).as_secs_f64(),
                    token: h.token,
                    lingering: h.lingering,
                })
                .collect(),
            waiters: v
                .waiters
                .into_iter()
                .map(|w| WaiterInfo {
                    owner: w.owner.handle,
                    connection: w.owner.conn,
                    peer: ctx.shared.peer(w.owner.conn),
                    mode: w.mode,
                    waited_for: now.saturating_duration_since(w.since).as_secs_f64(),
                    gives_up_in: w.deadline.map(|d| d.saturating_duration_since(now).as_secs_f64()),
                })
                .collect(),
        })
        .collect();
    ctx.reply(&LocksResult { keys, truncated });
    Ok(())
}
