//! Forked children let go of the process's lockd connections at once.
//!
//! A child made by `fork()` inherits the parent's socket descriptors. As long as any
//! process holds one, lockd sees the connection open, so a parent that closes its
//! connection or dies would keep its locks until every child exits. A `pthread_atfork`
//! child handler therefore puts /dev/null in place of each lockd socket in the child
//! (`dup3`: the descriptor number stays valid, so the child's own clean-up later closes
//! /dev/null, never a file the child opened since). The child never writes to, reads from
//! or shuts down the parent's connection; it opens its own on first use.

use std::ffi::c_void;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Mutex;

/// Descriptors of this process's open lockd connections.
static OPEN_SOCKETS: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// /dev/null, opened at startup (the child handler must not allocate or open files).
static DEV_NULL: AtomicI32 = AtomicI32::new(-1);

/// This process's id, kept current by the child handler, so that the fork check every
/// call makes costs no `getpid` system call. 0 until the handler is installed.
static PID: AtomicU32 = AtomicU32::new(0);

/// This process's id.
pub fn process_id() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => std::process::id(),
        pid => pid,
    }
}

/// Installs the child handler; called once at module startup.
pub fn install() -> io::Result<()> {
    // SAFETY: plain libc calls with valid arguments; `info` is written by dladdr.
    unsafe {
        // The handler cannot be unregistered, so the extension must never be unloaded
        // while the process may still fork: pin it in memory.
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(install as *const c_void, &mut info) != 0 && !info.dli_fname.is_null() {
            libc::dlopen(info.dli_fname, libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return Err(io::Error::last_os_error());
        }
        DEV_NULL.store(null, Ordering::Relaxed);
        match libc::pthread_atfork(None, None, Some(in_child)) {
            0 => {
                PID.store(std::process::id(), Ordering::Relaxed);
                Ok(())
            }
            code => Err(io::Error::from_raw_os_error(code)),
        }
    }
}

/// A connection was opened on `fd`.
pub fn track(fd: RawFd) {
    OPEN_SOCKETS.lock().unwrap_or_else(|p| p.into_inner()).push(fd);
}

/// The connection on `fd` is being closed.
pub fn untrack(fd: RawFd) {
    OPEN_SOCKETS.lock().unwrap_or_else(|p| p.into_inner()).retain(|&open| open != fd);
}

extern "C" fn in_child() {
    // SAFETY: getpid is async-signal-safe and cannot fail.
    PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
    let null = DEV_NULL.load(Ordering::Relaxed);
    if null < 0 {
        return;
    }
    // PHP does not fork while this lock is held; if it somehow were, leave things be
    // rather than block in the child.
    if let Ok(sockets) = OPEN_SOCKETS.try_lock() {
        for &fd in sockets.iter() {
            // SAFETY: dup3 on descriptors this process owns; async-signal-safe.
            unsafe { libc::dup3(null, fd, libc::O_CLOEXEC) };
        }
    }
}
