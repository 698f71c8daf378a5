//! Network namespaces for tests that cut links (`vanished_host.rs`, `cluster_partition.rs`):
//! running `ip`, and opening sockets inside a namespace. Needs root and iproute2.

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

/// Whether this machine lets the tests make namespaces, or why not.
pub fn usable() -> Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespaces need root".into());
    }
    if Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        return Err("`ip` (iproute2) is not installed".into());
    }
    Ok(())
}

/// Runs `ip` with `args`; its error output if it failed.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`: sockets it creates
/// belong to that namespace for good, whichever thread uses them afterwards.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in the namespace panicked")
}
