//! `lockd-bench`: the load generator. Drives lockd, and redis-server doing the usual Redis
//! lock recipe with the same workload (or, for a lockd cluster, etcd's own lock API), and
//! prints one JSON line per measured number; `report` turns those lines into the tables of
//! BENCHMARKS.md. `bench/run` starts the servers and runs everything; see BENCHMARKS.md.

mod client;
mod etcd;
mod latency;
mod memory;
mod pairs;
mod report;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::client::Server;
use crate::pairs::KeyChoice;

#[derive(Debug, Parser)]
#[command(
    name = "lockd-bench",
    version,
    about = "Load generator for lockd, with redis-server doing the same work for comparison",
    long_about = "Load generator for lockd. Every measuring command runs against lockd (--lockd) and, \
when --redis is given, against redis-server doing the usual Redis lock recipe (SET key token NX PX ttl, \
released by a compare-and-delete Lua script), so the two are compared in one run.\n\n\
A lockd cluster (--lockd with several nodes) is compared with etcd's lock API (--etcd) on the \
etcd cluster it runs on.\n\n\
Each number is printed on stdout as one JSON line; `lockd-bench report FILE` prints them as a \
table. Progress goes to stderr. bench/run starts the servers on loopback and runs everything.",
    after_help = "Examples:\n  lockd-bench --lockd 127.0.0.1:11300 --redis 127.0.0.1:6379 pairs --connections 64 --keys hot\n  \
lockd-bench --lockd 127.0.0.1:11301,127.0.0.1:11302 --etcd 127.0.0.1:2379 latency"
)]
struct Cli {
    /// lockd's address, or the addresses of a cluster's nodes (comma-separated):
    /// connections are spread over the nodes in turn.
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',', global = true)]
    lockd: Vec<SocketAddr>,

    /// redis-server's address; without it only lockd is measured.
    #[arg(long, value_name = "ADDR", global = true)]
    redis: Option<SocketAddr>,

    /// etcd's client addresses (HOST:PORT, comma-separated), to measure its lock API
    /// (Lock/Unlock, what `etcdctl lock` uses); connections are spread over the members.
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',', global = true)]
    etcd: Vec<String>,

    /// lockd's process id: `pairs` then also reports the server CPU time per pair, read
    /// from /proc (needs the same machine). A steadier number than pairs/s on a busy host.
    /// Several (comma-separated) are summed: for a cluster, its nodes and etcd members.
    #[arg(long, value_name = "PID[,PID...]", value_delimiter = ',', global = true)]
    lockd_pid: Vec<u32>,

    /// redis-server's process id, for the same.
    #[arg(long, value_name = "PID", value_delimiter = ',', global = true)]
    redis_pid: Vec<u32>,

    /// etcd's process ids, for the same.
    #[arg(long, value_name = "PID[,PID...]", value_delimiter = ',', global = true)]
    etcd_pid: Vec<u32>,

    /// TTL of Redis locks, in milliseconds. Also how long a dead holder's Redis lock
    /// blocks its waiters.
    #[arg(long, value_name = "MS", default_value_t = 30_000, global = true)]
    redis_ttl_ms: u64,

    /// Pause between a Redis waiter's SET NX attempts, in milliseconds (0 polls flat out,
    /// the fastest a Redis waiter can notice a release).
    #[arg(long, value_name = "MS", default_value_t = 0, global = true)]
    retry_delay_ms: u64,

    /// The machine's condition during the run, in words (e.g. "one core busy"): added to
    /// the case of every record, so runs under different conditions sit side by side.
    #[arg(long, value_name = "TEXT", global = true)]
    condition: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lock+unlock pairs per second and the latency of a pair (p50/p99/p99.9).
    Pairs {
        /// Client connections, one thread each, one request in flight each.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Which keys the connections lock.
        #[arg(long, value_enum, default_value_t = KeyChoice::Distinct)]
        keys: KeyChoice,
        /// Seconds of load before measuring starts.
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
        warmup: f64,
        /// Seconds measured.
        #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
        seconds: f64,
        /// Locks another connection takes and holds during the run (cost must not grow
        /// with the number of locks held).
        #[arg(long, value_name = "N", default_value_t = 0)]
        hold: usize,
    },
    /// Ping round trip, handoff latency (release → next waiter granted) and death latency
    /// (holder's connection closed → waiter granted), one event at a time.
    Latency {
        /// Events timed of each kind.
        #[arg(long, default_value_t = 1000)]
        samples: usize,
        /// Deaths timed on Redis, each lasting a whole TTL (--redis-ttl-ms).
        #[arg(long, default_value_t = 3)]
        redis_death_samples: usize,
    },
    /// Resident memory per held lock: take N locks and compare RSS. Use a fresh server.
    MemoryLocks {
        #[arg(long, default_value_t = 1_000_000)]
        locks: usize,
    },
    /// Resident memory per idle connection: open N connections (one ping each) and
    /// compare RSS. Use a fresh server that accepts N + 1 clients and enough open files.
    MemoryConnections {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
    /// Prints the JSON lines in FILE as a markdown table, with the targets.
    Report {
        /// Results: the JSON lines the other commands printed.
        file: PathBuf,
        /// Criterion's output directory (target/criterion), to add the lock table's
        /// 1k-vs-1M comparison.
        #[arg(long, value_name = "DIR")]
        criterion: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    if let Command::Report { file, criterion } = &cli.command {
        return report::print(file, criterion.as_deref());
    }
    if let Some(condition) = &cli.condition {
        report::set_condition(condition);
    }
    let redis_ttl = Duration::from_millis(cli.redis_ttl_ms);
    let retry_delay = Duration::from_millis(cli.retry_delay_ms);
    let mut servers: Vec<(Server, Vec<u32>)> = Vec::new();
    if !cli.lockd.is_empty() {
        servers.push((Server::Lockd(cli.lockd.clone()), cli.lockd_pid.clone()));
    }
    if let Some(addr) = cli.redis {
        servers.push((Server::Redis(addr), cli.redis_pid.clone()));
    }
    if !cli.etcd.is_empty() {
        let urls = cli.etcd.iter().map(|a| format!("http://{a}")).collect();
        servers.push((Server::Etcd(urls), cli.etcd_pid.clone()));
    }
    if servers.is_empty() {
        anyhow::bail!("nothing to measure: give --lockd ADDR, --redis ADDR and/or --etcd ADDR");
    }
    for (server, pids) in &servers {
        match &cli.command {
            Command::Pairs { connections, keys, warmup, seconds, hold } => {
                let opts = pairs::Options {
                    connections: *connections,
                    keys: *keys,
                    warmup: Duration::from_secs_f64(*warmup),
                    duration: Duration::from_secs_f64(*seconds),
                    hold: *hold,
                    server_pids: pids.clone(),
                    redis_ttl,
                    retry_delay,
                };
                pairs::run(server, &opts)?;
            }
            Command::Latency { samples, redis_death_samples } => {
                let opts = latency::Options { samples: *samples, redis_death_samples: *redis_death_samples, redis_ttl, retry_delay };
                latency::run(server, &opts)?;
            }
            Command::MemoryLocks { locks } => memory::locks(server, *locks)?,
            Command::MemoryConnections { connections } => memory::connections(server, *connections)?,
            Command::Report { .. } => unreachable!("handled above"),
        }
    }
    Ok(())
}
