//! The `lockd` binary: --help, --version, bad flags, a failed start's message, and SIGTERM shutdown.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn lockd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lockd"))
}

#[test]
fn help_describes_the_flags() {
    let out = lockd().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--listen", "--allow", "--max-clients", "--max-locks", "--max-frame", "--keepalive-idle", "--user-timeout", "--lock-delay", "--log-format", "--frame-buffer-budget", "--auth-timeout", "--tls-cert", "--tls-key", "--tls-handshake-timeout", "--state-dir", "--max-memory", "--deadlock-budget", "--elock-listen", "--mediawiki-listen"] {
        assert!(help.contains(flag), "--help mentions {flag}");
    }
}

#[test]
fn version_prints_the_crate_version() {
    let out = lockd().arg("--version").output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), format!("lockd {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn bad_flags_fail_with_a_message() {
    let out = lockd().args(["--lock-delay", "soon"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("not a number of seconds"));
}

#[test]
fn a_failed_start_says_why_once_on_one_line() {
    // 192.0.2.1 (TEST-NET-1) is no address of this host, so the bind fails with its cause.
    let out = lockd().args(["--listen", "127.0.0.1:0", "--metrics-listen", "192.0.2.1:9"]).env("RUST_BACKTRACE", "1").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8(out.stderr).unwrap();
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.starts_with("Error: cannot listen on 192.0.2.1:9: "), "{said}");
    assert_eq!(said.matches("os error").count(), 1, "the cause once: {said}");
}

#[test]
fn sigterm_closes_connections_and_exits_zero() {
    let port = free_port();
    let mut child = lockd()
        .args(["--listen", &format!("127.0.0.1:{port}"), "--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut client = connect_within(port, Duration::from_secs(10));
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let mut buf = [0u8; 1];
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(client.read(&mut buf).unwrap(), 0, "connection closed by the server");
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit}");
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(log.lines().all(|l| l.starts_with('{')), "json log lines: {log}");
    assert!(log.contains("SIGTERM"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn connect_within(port: u16, limit: Duration) -> TcpStream {
    let start = Instant::now();
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(_) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("lockd did not start: {e}"),
        }
    }
}
