//! The real `lockd` binary as a child process, for tests that measure it from outside:
//! its resident memory, its exit, its behaviour across a restart.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Client, REPLY_TIMEOUT};

pub struct LockdProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl LockdProcess {
    /// Starts `lockd --listen 127.0.0.1:PORT ARGS...` on a free port and waits until it accepts.
    pub fn spawn(args: &[&str]) -> Self {
        let port = free_port();
        Self::spawn_on(port, args)
    }

    /// Starts lockd on a given port (to restart it where clients expect it).
    pub fn spawn_on(port: u16, args: &[&str]) -> Self {
        Self::start(&[], port, args, "warn", Stdio::inherit())
    }

    /// Like [`spawn`](Self::spawn), logging at `level` into `log` instead of the test's stderr.
    pub fn spawn_logging_to(log: std::fs::File, level: &str, args: &[&str]) -> Self {
        Self::start(&[], free_port(), args, level, log.into())
    }

    /// Starts lockd through `wrapper`, a command that execs the rest of its arguments
    /// (e.g. `["prlimit", "--nofile=1024:4096", "--"]`), so that the pid is lockd's.
    pub fn spawn_wrapped(wrapper: &[&str], port: u16, args: &[&str]) -> Self {
        Self::start(wrapper, port, args, "warn", Stdio::inherit())
    }

    /// The binary is this build's, or `$LOCKD_UNDER_TEST` (to run an attack against an
    /// older build).
    fn start(wrapper: &[&str], port: u16, args: &[&str], log_level: &str, stderr: Stdio) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let lockd = std::env::var("LOCKD_UNDER_TEST").ok().filter(|b| !b.is_empty()).unwrap_or_else(|| env!("CARGO_BIN_EXE_lockd").to_string());
        let (program, before) = wrapper.split_first().map_or((lockd.as_str(), &[][..]), |(p, rest)| (*p, rest));
        let child = Command::new(program)
            .args(before)
            .args(if wrapper.is_empty() { None } else { Some(&lockd) })
            .args(["--listen", &addr.to_string(), "--log-level", log_level])
            .args(args)
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn lockd");
        let mut lockd = LockdProcess { child, addr };
        let start = Instant::now();
        // Listening, and this child is the listener: another test's server may have taken a
        // port that was free when it was picked, and would answer in its place.
        while !(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() && listens_on(lockd.child.id(), port)) {
            if let Some(status) = lockd.child.try_wait().unwrap() {
                panic!("lockd exited ({status}) instead of listening on {addr}: was the port taken?");
            }
            assert!(start.elapsed() < Duration::from_secs(10), "lockd did not start listening on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        lockd
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("lockd is running");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// Sends `signal` (e.g. "TERM", "KILL") and waits for the exit.
    pub fn stop_with(&mut self, signal: &str) -> std::process::ExitStatus {
        let sent = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -{signal}");
        self.exit_within(REPLY_TIMEOUT * 4).unwrap_or_else(|| panic!("lockd did not exit after SIG{signal}"))
    }

    /// How lockd exited, if it did within `limit`.
    pub fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for LockdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` holds the socket listening on loopback TCP `port` (Linux: the
/// socket's inode in /proc/net/tcp among the process's descriptors).
pub fn listens_on(pid: u32, port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let wanted = format!(":{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // local address, state 0A = LISTEN, inode
        .filter(|f| f.len() > 9 && f[1].ends_with(&wanted) && f[3] == "0A")
        .map(|f| format!("socket:[{}]", f[9]))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().filter_map(|fd| std::fs::read_link(fd.path()).ok()).any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
