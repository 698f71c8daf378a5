//! Throughput: N connections, one thread each (like N PHP workers), each taking a lock
//! and releasing it in a loop with one request in flight. Reports lock+unlock pairs per
//! second and the latency of a pair, on distinct keys (no contention) or on one hot key
//! (every pair waits its turn: lockd queues the waiters, Redis clients poll).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::client::Server;
use crate::report::{Better, Record, Samples};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyChoice {
    /// Each connection cycles through keys of its own: nobody ever waits.
    Distinct,
    /// Every connection locks the same key.
    Hot,
}

pub struct Options {
    pub connections: usize,
    pub keys: KeyChoice,
    pub warmup: Duration,
    pub duration: Duration,
    /// Locks another connection takes (and holds) before the run starts.
    pub hold: usize,
    /// The server's process ids (a cluster's nodes, and what they run on), to report
    /// their CPU time per pair.
    pub server_pids: Vec<u32>,
    pub redis_ttl: Duration,
    pub retry_delay: Duration,
}

const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPED: u8 = 2;

/// Clock ticks per second in /proc/PID/stat (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// Keys per connection in the distinct-keys workload.
const KEYS_PER_CONNECTION: usize = 64;

pub fn run(server: &Server, opts: &Options) -> Result<()> {
    let mut case = match opts.keys {
        KeyChoice::Distinct => format!("distinct keys, {} connections", opts.connections),
        KeyChoice::Hot => format!("one hot key, {} connections", opts.connections),
    };
    // Holds the background locks for as long as the run lasts.
    let _holder = if opts.hold > 0 {
        let mut holder = server.locker(0, Duration::from_secs(3600), opts.retry_delay)?;
        let keys: Vec<String> = (0..opts.hold).map(|i| format!("held:{i}:invoice")).collect();
        holder.lock_many(&keys).context("taking the background locks")?;
        case.push_str(&format!(", {} locks held", count(opts.hold)));
        Some(holder)
    } else {
        None
    };

    let phase = Arc::new(AtomicU8::new(WARMING));
    let start = Arc::new(Barrier::new(opts.connections + 1));
    let mut threads = Vec::new();
    for t in 0..opts.connections {
        let mut locker = server.locker(t, opts.redis_ttl, opts.retry_delay)?;
        let keys: Vec<String> = match opts.keys {
            KeyChoice::Distinct => (0..KEYS_PER_CONNECTION).map(|i| format!("bench:{t}:{i}")).collect(),
            KeyChoice::Hot => vec!["bench:hot".to_string()],
        };
        let (phase, start) = (phase.clone(), start.clone());
        threads.push(std::thread::spawn(move || -> Result<Samples> {
            let mut samples = Samples::default();
            start.wait();
            for key in keys.iter().cycle() {
                let began = Instant::now();
                let phase_at_start = phase.load(Ordering::Relaxed);
                if phase_at_start == STOPPED {
                    break;
                }
                locker.lock(key)?;
                locker.unlock(key)?;
                if phase_at_start == MEASURING {
                    samples.push(began.elapsed());
                }
            }
            Ok(samples)
        }));
    }
    start.wait();
    std::thread::sleep(opts.warmup);
    let cpu_before = cpu_time(&opts.server_pids)?;
    phase.store(MEASURING, Ordering::Relaxed);
    let measuring = Instant::now();
    std::thread::sleep(opts.duration);
    phase.store(STOPPED, Ordering::Relaxed);
    let elapsed = measuring.elapsed();
    let cpu_used = cpu_time(&opts.server_pids)? - cpu_before;
    let mut all = Samples::default();
    for t in threads {
        all.append(&mut t.join().expect("load thread panicked")?);
    }
    let name = server.name();
    let metric = if opts.hold > 0 { "pairs_per_sec_loaded" } else { "pairs_per_sec" };
    Record::emit(name, metric, &case, all.len() as f64 / elapsed.as_secs_f64(), "pairs/s", Better::Higher);
    all.emit_quantiles(name, "pair_latency", &case);
    if !opts.server_pids.is_empty() {
        if cpu_used.is_zero() && !all.is_empty() {
            anyhow::bail!("processes {:?} used no CPU while serving {} pairs: are they the server?", opts.server_pids, all.len());
        }
        let per_pair = cpu_used.as_secs_f64() * 1e6 / all.len().max(1) as f64;
        Record::emit(name, "server_cpu_per_pair", &case, per_pair, "µs", Better::Lower);
    }
    Ok(())
}

/// User plus system CPU time the processes and their descendants have used, from
/// /proc/PID/stat: a pid given may be a wrapper (`timeout`, a shell, `cargo run`) whose
/// server is a child, and a child's time reaches its parent's only when it exits.
fn cpu_time(pids: &[u32]) -> Result<Duration> {
    let table = process_table()?;
    let mut ticks = 0;
    let mut todo: Vec<u32> = pids.to_vec();
    while let Some(pid) = todo.pop() {
        // The load generator's own work is not the server's.
        if pid == std::process::id() {
            continue;
        }
        let Some(&(_, own)) = table.get(&pid) else {
            anyhow::bail!("no process {pid} (a --*-pid given to lockd-bench)");
        };
        ticks += own;
        todo.extend(table.iter().filter(|(_, (parent, _))| *parent == pid).map(|(&child, _)| child));
    }
    Ok(Duration::from_secs_f64(ticks as f64 / USER_HZ))
}

/// Every process's parent and user plus system clock ticks.
fn process_table() -> Result<std::collections::HashMap<u32, (u32, u64)>> {
    let mut table = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // A process that exits meanwhile is simply not counted.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            table.insert(pid, parse_stat(&stat)?);
        }
    }
    Ok(table)
}

/// (parent pid, utime + stime) of one /proc/PID/stat line.
fn parse_stat(stat: &str) -> Result<(u32, u64)> {
    // Fields after the command name (which may hold spaces) start at field 3; the parent
    // is field 4, utime and stime are fields 14 and 15, in clock ticks.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let parent = fields.get(1).context("short /proc/PID/stat")?.parse()?;
    let ticks = fields.get(11..13).context("short /proc/PID/stat")?.iter().map(|f| f.parse::<u64>()).sum::<Result<_, _>>()?;
    Ok((parent, ticks))
}

/// 1000000 → "1M", 1000 → "1k".
pub fn count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_stat;

    #[test]
    fn a_stat_line_gives_the_parent_and_the_cpu_ticks_whatever_the_command_name() {
        let line = "4242 (lockd (worker) x) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat(line).unwrap(), (17, 281));
    }
}
