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
    /// The server's process id, to report its CPU time per pair.
    pub server_pid: Option<u32>,
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

pub fn run(server: Server, opts: &Options) -> Result<()> {
    let mut case = match opts.keys {
        KeyChoice::Distinct => format!("distinct keys, {} connections", opts.connections),
        KeyChoice::Hot => format!("one hot key, {} connections", opts.connections),
    };
    // Holds the background locks for as long as the run lasts.
    let _holder = if opts.hold > 0 {
        let mut holder = server.locker(Duration::from_secs(3600), opts.retry_delay)?;
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
        let mut locker = server.locker(opts.redis_ttl, opts.retry_delay)?;
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
    let cpu_before = opts.server_pid.map(cpu_time).transpose()?;
    phase.store(MEASURING, Ordering::Relaxed);
    let measuring = Instant::now();
    std::thread::sleep(opts.duration);
    phase.store(STOPPED, Ordering::Relaxed);
    let elapsed = measuring.elapsed();
    let cpu_used = match (opts.server_pid, cpu_before) {
        (Some(pid), Some(before)) => Some(cpu_time(pid)? - before),
        _ => None,
    };
    let mut all = Samples::default();
    for t in threads {
        all.append(&mut t.join().expect("load thread panicked")?);
    }
    let name = server.name();
    let metric = if opts.hold > 0 { "pairs_per_sec_loaded" } else { "pairs_per_sec" };
    Record::emit(name, metric, &case, all.len() as f64 / elapsed.as_secs_f64(), "pairs/s", Better::Higher);
    all.emit_quantiles(name, "pair_latency", &case);
    if let Some(cpu) = cpu_used {
        let per_pair = cpu.as_secs_f64() * 1e6 / all.len().max(1) as f64;
        Record::emit(name, "server_cpu_per_pair", &case, per_pair, "µs", Better::Lower);
    }
    Ok(())
}

/// User plus system CPU time a process has used, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3; utime
    // and stime are fields 14 and 15, in clock ticks.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).context("short /proc/PID/stat")?.iter().map(|f| f.parse::<u64>()).sum::<Result<_, _>>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / USER_HZ))
}

/// 1000000 → "1M", 1000 → "1k".
pub fn count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}
