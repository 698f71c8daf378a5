//! Tools for attack tests: a bystander that keeps pinging the server and reports how
//! long its pings took while an attack ran, and pipelined floods of requests.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pklock_proto::frame;
use serde_json::{json, Value};

use super::Client;

/// A client on its own thread that pings back to back until stopped. `ping` shows
/// whether the server still serves connections; `table` probes use `check`, which also
/// needs the lock table, so they show how long the table's mutex is held by others.
pub struct PingProbe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Duration>>,
}

impl PingProbe {
    pub fn start(addr: SocketAddr) -> Self {
        Self::start_with(addr, "ping", json!({}))
    }

    pub fn table(addr: SocketAddr) -> Self {
        Self::start_with(addr, "check", json!({"key": "probe", "token": 1}))
    }

    fn start_with(addr: SocketAddr, command: &'static str, parameters: Value) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut client = Client::connect(addr);
            let mut times = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let start = Instant::now();
                client.call(command, parameters.clone());
                times.push(start.elapsed());
                std::thread::sleep(Duration::from_millis(2));
            }
            times
        });
        PingProbe { stop, thread }
    }

    /// Stops and returns the ping times, sorted.
    pub fn finish(self) -> PingTimes {
        self.stop.store(true, Ordering::Relaxed);
        let mut times = self.thread.join().expect("probe thread");
        times.sort();
        PingTimes(times)
    }
}

pub struct PingTimes(pub Vec<Duration>);

impl PingTimes {
    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    /// The `p`-quantile (0.5 = median).
    pub fn quantile(&self, p: f64) -> Duration {
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0.get(i).copied().unwrap_or_default()
    }
}

impl std::fmt::Display for PingTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pings, median {:?}, p90 {:?}, max {:?}", self.0.len(), self.quantile(0.5), self.quantile(0.9), self.max())
    }
}

/// Writes all `requests` (each `{"command", "parameters"}`) as frames in large writes,
/// from another thread so that the caller can read replies meanwhile (a server stops
/// reading a client that does not read its replies). Join the handle to know all went.
pub fn flood(client: &mut Client, requests: impl Iterator<Item = Value>) -> JoinHandle<()> {
    let mut buf = Vec::new();
    for (i, request) in requests.enumerate() {
        frame::encode_into(&mut buf, &json!({"id": i, "command": request["command"], "parameters": request["parameters"]})).unwrap();
    }
    let mut stream = client.stream.try_clone().unwrap();
    std::thread::spawn(move || {
        for chunk in buf.chunks(1 << 20) {
            stream.write_all(chunk).unwrap();
        }
    })
}

/// Waits until `stat` shows `field` at `want` (requests sent in a flood are being worked
/// through), failing after `limit`.
pub fn await_stat(client: &mut Client, field: &str, want: u64, limit: Duration) {
    let start = Instant::now();
    loop {
        let stat = client.call("stat", json!({}));
        if stat[field].as_u64() == Some(want) {
            return;
        }
        assert!(start.elapsed() < limit, "stat {field} did not reach {want}: {stat}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
