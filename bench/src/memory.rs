//! Memory: the server's resident set (lockd: `stat`'s `memory`, read from /proc; Redis:
//! `INFO`'s `used_memory_rss`, also from /proc) before and after taking many locks, or
//! before and after opening many idle connections. Run each on a freshly started server:
//! memory a server freed earlier would be reused and hide the cost.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::client::{Locker, Server};
use crate::pairs::count;
use crate::report::{Better, Record};

/// Connections that share the work of taking the locks (and hold them).
const LOCKING_CONNECTIONS: usize = 8;

pub fn locks(server: &Server, n: usize) -> Result<()> {
    let ttl = Duration::from_secs(3600);
    let mut control = server.locker(0, ttl, Duration::ZERO)?;
    let (before, _) = control.memory_and_clients()?;
    let mut holders = Vec::new();
    for c in 0..LOCKING_CONNECTIONS {
        let keys: Vec<String> = (c..n).step_by(LOCKING_CONNECTIONS).map(|i| format!("user:{i}:checkout")).collect();
        let mut holder = server.locker(c, ttl, Duration::ZERO)?;
        holders.push(std::thread::spawn(move || -> Result<Box<dyn Locker>> {
            holder.lock_many(&keys)?;
            Ok(holder)
        }));
    }
    let holders: Vec<Box<dyn Locker>> =
        holders.into_iter().map(|t| t.join().expect("locking thread panicked")).collect::<Result<_>>().context("taking the locks")?;
    let (after, _) = control.memory_and_clients()?;
    let case = format!("{} locks, keys like user:123456:checkout", count(n));
    Record::emit(server.name(), "bytes_per_lock", &case, after.saturating_sub(before) as f64 / n as f64, "B", Better::Lower);
    drop(holders);
    Ok(())
}

pub fn connections(server: &Server, n: usize) -> Result<()> {
    rlimit::increase_nofile_limit(u64::MAX).context("raising the open file limit")?;
    let mut control = server.locker(0, Duration::from_secs(60), Duration::ZERO)?;
    let (before, clients_before) = control.memory_and_clients()?;
    let mut idle = Vec::with_capacity(n);
    for i in 0..n {
        // A ping makes sure the server has set the connection up, as a client's first
        // request would.
        let mut conn = server.locker(i, Duration::from_secs(60), Duration::ZERO).with_context(|| format!("opening connection {}", i + 1))?;
        conn.ping()?;
        idle.push(conn);
    }
    let (after, clients_after) = control.memory_and_clients()?;
    let held = clients_after.saturating_sub(clients_before);
    if held < n as u64 {
        bail!("{} counts {held} new clients, expected {n}", server.name());
    }
    let case = format!("{} idle connections", count(n));
    Record::emit(server.name(), "connections_held", &case, held as f64, "connections", Better::Higher);
    Record::emit(server.name(), "bytes_per_connection", &case, after.saturating_sub(before) as f64 / n as f64, "B", Better::Lower);
    Ok(())
}
