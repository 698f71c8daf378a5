//! Results: every measurement is one JSON line on stdout (a [`Record`]); `report` reads
//! such lines back and prints a markdown table with lockd and its peer side by side (redis,
//! or etcd's lock API for a lockd cluster), the targets checked against them (as information: nothing here ever fails on a
//! time), and the criterion table-size comparison when its results are present.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Whether a bigger value is the better one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// One measured number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub server: String,
    /// Stable id of what was measured, e.g. `pairs_per_sec`.
    pub metric: String,
    /// The workload, in words, e.g. `distinct keys, 64 connections`.
    pub case: String,
    pub value: f64,
    pub unit: String,
    pub better: Better,
}

/// The machine's condition during this run (`--condition`), if not idle.
static CONDITION: OnceLock<String> = OnceLock::new();

/// Marks every record this process emits as measured under `condition`.
pub fn set_condition(condition: &str) {
    CONDITION.set(condition.to_owned()).expect("the condition is set once");
}

impl Record {
    /// Prints the record as one JSON line on stdout.
    pub fn emit(server: &str, metric: &str, case: &str, value: f64, unit: &str, better: Better) {
        let case = match CONDITION.get() {
            Some(condition) if !condition.is_empty() => format!("{case}, {condition}"),
            _ => case.to_owned(),
        };
        let r = Record { server: server.into(), metric: metric.into(), case, value, unit: unit.into(), better };
        let case = &r.case;
        tracing::info!("{server}: {metric} ({case}) = {value:.1} {unit}");
        println!("{}", serde_json::to_string(&r).expect("records serialize"));
    }
}

/// Latency samples of one run.
#[derive(Debug, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn append(&mut self, other: &mut Samples) {
        self.0.append(&mut other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q` quantile (0..=1) in microseconds; 0 without samples.
    pub fn quantile_us(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[i].as_secs_f64() * 1e6
    }

    /// Emits p50, p99 and p99.9 as three records named `{metric}_p50` and so on.
    pub fn emit_quantiles(&mut self, server: &str, metric: &str, case: &str) {
        for (suffix, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
            Record::emit(server, &format!("{metric}_{suffix}"), case, self.quantile_us(q), "µs", Better::Lower);
        }
    }
}

/// Prints the report for the records in `results` and, if given, criterion's output
/// directory.
pub fn print(results: &Path, criterion: Option<&Path>) -> Result<()> {
    let text = std::fs::read_to_string(results).with_context(|| format!("reading {}", results.display()))?;
    let records: Vec<Record> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", results.display()))?;
    print!("{}", table(&records));
    print!("{}", targets(&records));
    if let Some(dir) = criterion {
        print!("{}", criterion_table(dir)?);
    }
    Ok(())
}

/// The server lockd is compared with in these records: etcd for a cluster, else redis.
fn peer(records: &[Record]) -> &str {
    records.iter().map(|r| r.server.as_str()).find(|&s| s != "lockd").unwrap_or("redis")
}

/// One row per (metric, case), in the order first measured.
fn table(records: &[Record]) -> String {
    let peer = peer(records);
    let mut rows: Vec<(&str, &str, &str, Better)> = Vec::new();
    for r in records {
        if !rows.iter().any(|(m, c, _, _)| *m == r.metric && *c == r.case) {
            rows.push((&r.metric, &r.case, &r.unit, r.better));
        }
    }
    let mut out = format!("| measurement | workload | lockd | {peer} | lockd better by |\n|---|---|---:|---:|---:|\n");
    for (metric, case, unit, better) in rows {
        let lockd = find(records, "lockd", metric, case);
        let other = find(records, peer, metric, case);
        let ratio = match (lockd, other, better) {
            (Some(l), Some(r), Better::Higher) if r > 0.0 => format!("{:.2}×", l / r),
            (Some(l), Some(r), Better::Lower) if l > 0.0 => format!("{:.2}×", r / l),
            _ => String::new(),
        };
        let show = |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| format!("{} {unit}", human(v)));
        let _ = writeln!(out, "| {metric} | {case} | {} | {} | {ratio} |", show(lockd), show(other));
    }
    out
}

fn find(records: &[Record], server: &str, metric: &str, case: &str) -> Option<f64> {
    records.iter().rev().find(|r| r.server == server && r.metric == metric && r.case == case).map(|r| r.value)
}

/// The first record of `server` for `metric`, any case.
fn first(records: &[Record], server: &str, metric: &str) -> Option<(f64, String)> {
    records.iter().find(|r| r.server == server && r.metric == metric).map(|r| (r.value, r.case.clone()))
}

fn human(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The targets, each with the numbers it was judged on.
fn targets(records: &[Record]) -> String {
    let mut out = String::from("\n| target | measured | |\n|---|---|---|\n");
    let mut line = |name: &str, measured: String, met: bool| {
        let _ = writeln!(out, "| {name} | {measured} | {} |", if met { "met" } else { "**missed**" });
    };
    if peer(records) == "etcd" {
        for r in records.iter().filter(|r| r.server == "lockd" && r.metric == "pairs_per_sec") {
            if let Some(etcd) = find(records, "etcd", &r.metric, &r.case) {
                let ratio = r.value / etcd;
                line(&format!("pairs/s ≥ 3× etcd's lock API ({})", r.case), format!("{ratio:.2}×"), ratio >= 3.0);
            }
        }
        if let (Some((handoff, case)), Some((write, _))) = (first(records, "lockd", "handoff_p50"), first(records, "etcd", "write_p50")) {
            let writes = handoff / write;
            line(&format!("handoff median ≤ 2 etcd writes ({case})"), format!("{handoff:.0} µs = {writes:.2} × put {write:.0} µs"), writes <= 2.0);
        }
        return out;
    }
    // Per case, so an idle run and a run with a core kept busy are judged alike.
    for r in records.iter().filter(|r| r.server == "lockd") {
        let Some(redis) = find(records, "redis", &r.metric, &r.case) else { continue };
        match r.metric.as_str() {
            "pairs_per_sec" => {
                let ratio = r.value / redis;
                line(&format!("pairs/s ≥ 2.5× redis ({})", r.case), format!("{ratio:.2}×"), ratio >= 2.5);
            }
            "pair_latency_p99.9" => {
                line(&format!("pair p99.9 ≤ redis's ({})", r.case), format!("{} vs {} µs", human(r.value), human(redis)), r.value <= redis);
            }
            "server_cpu_per_pair" => {
                line(&format!("server CPU per pair ≤ redis's ({})", r.case), format!("{} vs {} µs", human(r.value), human(redis)), r.value <= redis);
            }
            "bytes_per_lock" => {
                line(&format!("bytes per held lock ≤ redis's ({})", r.case), format!("{:.0} vs {redis:.0} B", r.value), r.value <= redis);
            }
            _ => {}
        }
    }
    if let (Some((handoff, _)), Some((ping, _))) = (first(records, "lockd", "handoff_p50"), first(records, "lockd", "ping_p50")) {
        line("handoff median ≤ one ping round trip", format!("{handoff:.0} µs vs ping {ping:.0} µs"), handoff <= ping);
    }
    if let Some((death, _)) = first(records, "lockd", "death_p50") {
        line("holder's death → waiter granted, median ≤ 5 ms", format!("{:.2} ms", death / 1000.0), death <= 5000.0);
    }
    if let Some((bytes, case)) = first(records, "lockd", "bytes_per_lock") {
        line("≤ 200 bytes per held lock", format!("{bytes:.0} B ({case})"), bytes <= 200.0);
    }
    if let Some((bytes, case)) = first(records, "lockd", "bytes_per_connection") {
        line("≤ 20 KiB per idle connection", format!("{:.1} KiB ({case})", bytes / 1024.0), bytes <= 20.0 * 1024.0);
    }
    if let Some((held, _)) = first(records, "lockd", "connections_held") {
        line("10k connections held", format!("{held:.0}"), held >= 10_000.0);
    }
    if let (Some((base, _)), Some((loaded, case))) = (first(records, "lockd", "pairs_per_sec"), first(records, "lockd", "pairs_per_sec_loaded")) {
        let change = base / loaded - 1.0;
        line("cost per pair flat (≤ 15%) with locks held", format!("{:+.0}% ({case})", change * 100.0), change <= 0.15);
    }
    out
}

/// Criterion's estimates from `dir` (target/criterion): each bench measured on the 1k
/// and on the 1M table, side by side.
fn criterion_table(dir: &Path) -> Result<String> {
    #[derive(Deserialize)]
    struct Bench {
        group_id: String,
        function_id: Option<String>,
        value_str: Option<String>,
    }
    #[derive(Deserialize)]
    struct Estimate {
        point_estimate: f64,
    }
    #[derive(Deserialize)]
    struct Estimates {
        median: Estimate,
    }
    let mut by_op: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "base" && n != "change") {
                stack.push(path);
            } else if path.ends_with("new/benchmark.json") {
                let bench: Bench = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
                let est: Estimates = serde_json::from_str(&std::fs::read_to_string(path.with_file_name("estimates.json"))?)?;
                let op = format!("{}/{}", bench.group_id, bench.function_id.unwrap_or_default());
                by_op.entry(op).or_default().insert(bench.value_str.unwrap_or_default(), est.median.point_estimate);
            }
        }
    }
    let mut out = String::from("\n| lock table operation (criterion, median) | 1k locks held | 1M locks held | 1M / 1k |\n|---|---:|---:|---:|\n");
    for (op, sizes) in &by_op {
        if let (Some(small), Some(big)) = (sizes.get("1k"), sizes.get("1M")) {
            let _ = writeln!(out, "| {op} | {} | {} | {:.2} |", nanos(*small), nanos(*big), big / small);
        }
    }
    Ok(out)
}

fn nanos(ns: f64) -> String {
    if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}
