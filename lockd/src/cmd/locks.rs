//! `locks`: who holds what and who waits, in queue order (eLock's `debug`), a page at a
//! time: at most `limit` keys, and at most `limit` holders and waiters per key, with a
//! cursor (`next`, passed back as `after`) for the rest.

use std::time::Instant;

use pklock_proto::{HolderInfo, KeyInfo, LocksParams, LocksResult, WaiterInfo};
use serde_json::value::RawValue;

use super::{parse_params, CmdResult, Ctx};

/// Keys listed when the request sets no limit.
const DEFAULT_LIMIT: usize = 1000;
/// The most a page may list: bounds the work under the table lock and the reply's size.
pub const MAX_LIMIT: usize = 10_000;

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let params: LocksParams = parse_params(raw)?;
    let now = Instant::now();
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let page = ctx.shared.snapshot(params.prefix.as_deref().unwrap_or(""), params.after.as_deref(), limit);
    let keys = page
        .keys
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
                    client: ctx.shared.client(h.owner.conn),
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
                    client: ctx.shared.client(w.owner.conn),
                    mode: w.mode,
                    waited_for: now.saturating_duration_since(w.since).as_secs_f64(),
                    gives_up_in: w.deadline.map(|d| d.saturating_duration_since(now).as_secs_f64()),
                })
                .collect(),
        })
        .collect();
    ctx.reply(&LocksResult { keys, truncated: page.next.is_some(), next: page.next });
    Ok(())
}
