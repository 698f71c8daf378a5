//! `stat`: uptime, connections, locks, waiters, counters and memory.

use pklock_proto::{NoParams, StatResult};
use serde_json::value::RawValue;

use super::{parse_params, CmdResult, Ctx};

pub fn run(ctx: &mut Ctx<'_>, raw: Option<&RawValue>) -> CmdResult {
    let NoParams {} = parse_params(raw)?;
    let t = ctx.shared.stats();
    ctx.reply(&StatResult {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime: ctx.shared.started.elapsed().as_secs_f64(),
        connections: ctx.shared.connections(),
        locks: t.locks,
        keys: t.keys,
        waiters: t.waiters,
        grants: t.grants,
        timeouts: t.timeouts,
        deadlocks: t.deadlocks,
        memory: resident_bytes(),
        table_memory: t.memory as u64,
        cluster: ctx.shared.cluster().map(|node| node.stat()),
    });
    Ok(())
}

/// Resident set size from /proc (Linux); 0 where that is not available.
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
