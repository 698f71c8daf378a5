//! Finding clients whose host vanished while data to them was outstanding.
//!
//! TCP_USER_TIMEOUT cannot do it: the kernel applies it to window probes too, so a live
//! client that merely does not read its replies (its receive window is zero, and it
//! answers every probe) would be declared dead and lose its locks. Instead each
//! connection reads its TCP_INFO every eighth of `--user-timeout`: sent data
//! unacknowledged, or two window probes in a row unanswered, with no ACK for longer than
//! `--user-timeout`, means the peer is gone. Idle connections are left to keepalive.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// What TCP_INFO says about a connection's sending side.
#[derive(Debug, Clone, Copy)]
pub struct SendState {
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Window probes sent in a row without an answer.
    pub probes: u8,
    /// Time since the peer's last ACK.
    pub last_ack: Duration,
}

#[derive(Debug)]
pub struct PeerWatch {
    /// The connection's socket; open as long as the connection (and this) lives.
    fd: RawFd,
    user_timeout: Duration,
    /// When a check first saw the connection waiting for the peer; reset when it is not.
    waiting_since: Option<Instant>,
}

impl PeerWatch {
    pub fn new(fd: RawFd, user_timeout: Duration) -> Self {
        PeerWatch { fd, user_timeout, waiting_since: None }
    }

    /// How often to call [`gone`](Self::gone). A peer that stops answering is found
    /// after `--user-timeout` of silence seen by two checks, so within 1.25 x of it.
    pub fn period(&self) -> Duration {
        (self.user_timeout / 8).max(Duration::from_millis(50))
    }

    /// Whether the peer stopped answering for longer than `--user-timeout`.
    pub fn gone(&mut self) -> bool {
        send_state(self.fd).is_ok_and(|state| self.judge(state, Instant::now()))
    }

    fn judge(&mut self, state: SendState, now: Instant) -> bool {
        if state.unacked == 0 {
            self.waiting_since = None;
            // Window probes: a live client answers them. One unanswered probe is not
            // death: probes back off to two minutes apart even while answered, so one
            // lost probe would look like minutes of silence.
            return state.probes >= 2 && state.last_ack > self.user_timeout;
        }
        // A check may land just after a send that follows a long quiet time (the last
        // ACK long ago): count only time the data was seen waiting.
        let since = *self.waiting_since.get_or_insert(now);
        state.last_ack.min(now - since) > self.user_timeout
    }
}

#[cfg(target_os = "linux")]
fn send_state(fd: RawFd) -> io::Result<SendState> {
    // SAFETY: tcp_info is plain integers; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which has that size.
    let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(SendState {
        unacked: info.tcpi_unacked,
        probes: info.tcpi_probes,
        last_ack: Duration::from_millis(info.tcpi_last_ack_recv.into()),
    })
}

#[cfg(not(target_os = "linux"))]
fn send_state(_fd: RawFd) -> io::Result<SendState> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "TCP_INFO is read on Linux only"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn state(unacked: u32, probes: u8, last_ack_secs: u64) -> SendState {
        SendState { unacked, probes, last_ack: Duration::from_secs(last_ack_secs) }
    }

    #[test]
    fn unacknowledged_data_without_acks_for_the_timeout_is_death() {
        let mut watch = PeerWatch::new(-1, TIMEOUT);
        let t0 = Instant::now();
        assert!(!watch.judge(state(1, 0, 60), t0), "just sent after a quiet minute");
        assert!(!watch.judge(state(3, 0, 61), t0 + Duration::from_secs(1)));
        assert!(watch.judge(state(3, 0, 63), t0 + Duration::from_secs(3)));
    }

    #[test]
    fn a_zero_window_whose_probes_are_answered_is_alive() {
        let mut watch = PeerWatch::new(-1, TIMEOUT);
        let t0 = Instant::now();
        for i in 0..100 {
            // Probes answered (0) or one in flight / lost (1); ACKs may be minutes apart.
            let at = t0 + Duration::from_secs(i * 10);
            assert!(!watch.judge(state(0, (i % 2) as u8, 120), at));
        }
    }

    #[test]
    fn two_unanswered_probes_and_the_timeout_is_death() {
        let mut watch = PeerWatch::new(-1, TIMEOUT);
        let now = Instant::now();
        assert!(!watch.judge(state(0, 2, 1), now), "an ACK came recently");
        assert!(watch.judge(state(0, 2, 240), now));
    }

    #[test]
    fn acks_reset_the_wait() {
        let mut watch = PeerWatch::new(-1, TIMEOUT);
        let t0 = Instant::now();
        assert!(!watch.judge(state(1, 0, 0), t0));
        assert!(!watch.judge(state(0, 0, 0), t0 + Duration::from_secs(3)));
        assert!(!watch.judge(state(1, 0, 5), t0 + Duration::from_secs(4)), "waiting again only since now");
        assert!(!watch.judge(state(5, 0, 0), t0 + Duration::from_secs(10)), "a recent ACK: data flowing to a slow reader");
    }
}
