//! What an operator sees of the `lockd` binary: settings from a `--config` file and the
//! environment (`--check-config`), SIGHUP reloading settings without touching locks, and
//! the log lines of connections (plain text when stderr is a file), the worker threads.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::free_port;
use common::Client;
use serde_json::json;
use socket2::{Domain, Socket, Type};

/// How long lockd may take to start or to write a log line before the test fails.
const LIMIT: Duration = Duration::from_secs(10);

fn lockd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lockd"))
}

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lockd-ops-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// lockd as a child with its stderr in `log`, listening where its settings say.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(args: &[&str], addr: SocketAddr, log: PathBuf) -> Self {
        let stderr = std::fs::File::create(&log).unwrap();
        let child = lockd().args(args).env_remove("RUST_LOG").stdin(Stdio::null()).stderr(stderr).spawn().unwrap();
        let mut running = Running { child, log };
        running.wait_for_log(&format!("listening addr={addr}"));
        running
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Waits until the log contains `text`, failing the test if lockd exits or LIMIT passes.
    fn wait_for_log(&mut self, text: &str) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("lockd exited ({status}) before logging {text:?}:\n{log}");
            }
            assert!(start.elapsed() < LIMIT, "no {text:?} in the log:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        assert!(Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap().success());
    }

    /// SIGTERM, then the whole log once lockd has exited.
    fn stop(mut self) -> String {
        self.signal("TERM");
        assert!(self.child.wait().unwrap().success());
        self.log()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client whose connection comes from `source` (any 127.x address is this host).
fn connect_from(source: &str, to: SocketAddr) -> Client {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&format!("{source}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.connect(&to.into()).unwrap();
    Client::from_stream(TcpStream::from(socket))
}

fn check_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = lockd().arg("--check-config").args(args).envs(env.iter().copied()).env_remove("RUST_LOG").output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn check_config_shows_flags_over_environment_over_file_and_hides_secrets() {
    let dir = Scratch::new("check");
    let file = dir.write("lockd.toml", "max-clients = 500\nmax-locks = 600\nmax-waiters = 700\nauth-key = \"hunter2\"\n");
    let file = file.to_str().unwrap();
    let (ok, out, err) = check_config(&["--config", file, "--max-locks", "61"], &[("LOCKD_MAX_LOCKS", "62"), ("LOCKD_MAX_WAITERS", "71")]);
    assert!(ok, "{err}");
    assert!(out.contains("max-clients = 500  # file"), "{out}");
    assert!(out.contains("max-locks = 61  # flag"), "{out}");
    assert!(out.contains("max-waiters = 71  # environment"), "{out}");
    assert!(out.contains("max-keys = 1024  # default"), "{out}");
    assert!(out.contains("auth-key = \"<redacted>\""), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
    // What it prints is a config file lockd reads back to the same settings.
    let printed = dir.write("printed.toml", &out.replace("\"<redacted>\"", "\"hunter2\""));
    let (ok, again, err) = check_config(&["--config", printed.to_str().unwrap()], &[]);
    assert!(ok, "{err}");
    let values = |s: &str| s.lines().map(|l| l.split("  #").next().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(values(&again), values(&out));
}

#[test]
fn check_config_refuses_unknown_keys_and_unsafe_settings() {
    let dir = Scratch::new("refuse");
    let file = dir.write("lockd.toml", "max-clents = 5\n");
    let (ok, out, err) = check_config(&["--config", file.to_str().unwrap()], &[]);
    assert!(!ok && out.is_empty());
    assert!(err.contains(&format!("{}: unknown key `max-clents`", file.display())), "{err}");
    let (ok, _, err) = check_config(&["--listen", "0.0.0.0:1"], &[]);
    assert!(!ok);
    assert!(err.contains("refusing to listen on 0.0.0.0:1 without an auth key"), "{err}");
    let (ok, _, err) = check_config(&["--max-clients", "lots"], &[]);
    assert!(!ok && err.contains("--max-clients"), "{err}");
}

#[test]
fn logs_name_each_connection_its_client_and_released_locks_without_colour() {
    let dir = Scratch::new("logs");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut lockd = Running::start(&["--listen", &addr.to_string()], addr, dir.0.join("lockd.log"));
    let mut client = Client::connect(addr);
    let conn = client.call("hello", json!({"client": "pklock.so/9.9 pid 4242\n"}))["connection"].as_u64().unwrap();
    client.lock("a", 1);
    client.lock("b", 1);
    drop(client);
    let log = lockd.wait_for_log(&format!("connection closed conn={conn}"));
    assert!(log.contains(&format!("connection opened conn={conn} peer=127.0.0.1:")), "{log}");
    let closed = log.lines().find(|l| l.contains(&format!("connection closed conn={conn}"))).unwrap();
    assert!(closed.contains(r#"client="pklock.so/9.9 pid 4242\n" released=2"#), "{closed}");
    assert!(closed.contains(" INFO "), "{closed}");
    assert!(!log.contains('\x1b'), "no colour codes in a log file: {log:?}");
}

#[test]
fn sighup_reloads_the_file_without_dropping_connections_or_locks() {
    let dir = Scratch::new("sighup");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let settings = |allow: &str, level: &str, max_clients: u32| {
        format!("listen = [\"{addr}\"]\nallow = [{allow}]\nlog-level = \"{level}\"\nmax-clients = {max_clients}\n")
    };
    let file = dir.write("lockd.toml", &settings("\"127.0.0.0/8\"", "info", 100));
    let mut lockd = Running::start(&["--config", file.to_str().unwrap()], addr, dir.0.join("lockd.log"));
    let mut holder = connect_from("127.0.0.2", addr);
    let conn = holder.call("hello", json!({}))["connection"].clone();
    holder.lock("held", 1);

    dir.write("lockd.toml", &settings("\"127.0.0.1/32\"", "warn", 200));
    lockd.signal("HUP");
    let log = lockd.wait_for_log("SIGHUP: settings reloaded");
    let line = log.lines().find(|l| l.contains("SIGHUP: settings reloaded")).unwrap();
    assert!(line.contains("allow=127.0.0.1/32") && line.contains("log_level=warn") && line.contains("needs_restart=max-clients"), "{line}");

    // The holder's connection and lock survived; the new allow-list refuses new clients
    // from 127.0.0.2 only.
    let locks = holder.call("locks", json!({}));
    assert_eq!(locks["keys"][0]["key"], json!("held"), "{locks}");
    assert_eq!(locks["keys"][0]["holders"][0]["connection"], conn, "{locks}");
    let mut refused = connect_from("127.0.0.2", addr);
    assert!(refused.is_closed_by_server(), "127.0.0.2 is no longer allowed");
    let mut allowed = connect_from("127.0.0.1", addr);
    assert_eq!(allowed.call("lock", json!({"keys": "held", "owner": 1, "wait": 0}))["granted"], json!(false), "still held");

    // An invalid file changes nothing, and says why.
    dir.write("lockd.toml", "allow = [\"10.0.0.0/8\"]\nlisten-to = 1\n");
    lockd.signal("HUP");
    let log = lockd.wait_for_log("SIGHUP: invalid settings; keeping the current ones");
    assert!(log.contains("unknown key `listen-to`"), "{log}");
    assert_eq!(allowed.call("ping", json!({}))["pong"], json!(true));

    drop((holder, allowed));
    let log = lockd.stop();
    let after_reload = log.split("SIGHUP: settings reloaded").nth(1).unwrap();
    assert!(log.contains("connection opened"), "info lines before the reload: {log}");
    assert!(!after_reload.contains("connection opened") && !after_reload.contains("connection closed"), "warn level after it: {after_reload}");
    assert!(after_reload.contains("refused: address not in --allow peer=127.0.0.2:"), "{after_reload}");
}


#[test]
fn worker_threads_sets_how_many_threads_serve_connections() {
    let dir = Scratch::new("threads");
    // lockd names its runtime's threads.
    let workers = |lockd: &Running| {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", lockd.child.id())).unwrap();
        tasks.filter(|t| std::fs::read_to_string(t.as_ref().unwrap().path().join("comm")).unwrap().trim() == "lockd-worker").count()
    };
    for threads in [1, 3] {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let lockd = Running::start(&["--listen", &addr.to_string(), "--worker-threads", &threads.to_string()], addr, dir.0.join("lockd.log"));
        let mut client = Client::connect(addr);
        client.lock("k", 1);
        assert_eq!(workers(&lockd), threads);
    }
}
