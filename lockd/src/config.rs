//! Every lockd setting, as clap arguments. `Config::parse_from(["lockd", ...])` gives
//! tests the same defaults the binary has.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;

use crate::table::Limits;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "lockd",
    version,
    about = "The pklock lock server: exclusive and shared locks for PHP, held until released or until the holder's connection dies",
    long_about = "The pklock lock server.\n\nA lock is held until its owner releases it or its owner's connection dies: \
no timeout ever takes a lock from a live holder. Clients speak length-prefixed JSON \
(docs/PROTOCOL.md); PHP uses the pklock.so extension.\n\n\
A client host that vanishes without closing its connection is detected by TCP keepalive \
(--keepalive-idle + --keepalive-interval x --keepalive-count, 25 s by default) or, while \
data is unacknowledged, by --user-timeout (25 s); its locks are then released.\n\n\
SIGTERM or SIGINT: stop accepting, close every connection (releasing its locks), exit 0."
)]
pub struct Config {
    /// Address to listen on; repeat for several (IPv6 as [::1]:11300).
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:11300")]
    pub listen: Vec<SocketAddr>,

    /// Client networks allowed to connect, in CIDR form; repeat for several. Others are
    /// closed at once and logged.
    #[arg(long = "allow", value_name = "CIDR", default_values = ["127.0.0.0/8", "::1/128"])]
    pub allow: Vec<IpNet>,

    /// Most clients connected at once; more are refused with `too_many_clients`.
    #[arg(long, default_value_t = 10_000)]
    pub max_clients: usize,

    /// Most locks held at once (a (key, owner) pair each), counting the new keys queued
    /// requests ask for.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_locks: usize,

    /// Most lock requests waiting at once.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_waiters: usize,

    /// Most keys in one lock request.
    #[arg(long, default_value_t = 1024)]
    pub max_keys: usize,

    /// Longest key, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub max_key_length: usize,

    /// Largest frame a client may send, in bytes; a larger one gets `frame_too_large`
    /// and the connection is closed.
    #[arg(long, default_value_t = pklock_proto::DEFAULT_MAX_FRAME)]
    pub max_frame: usize,

    /// Seconds a client may take to finish sending a frame it started; then it is closed.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    pub frame_timeout: Duration,

    /// Seconds of silence before TCP keepalive probes start.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub keepalive_idle: Duration,

    /// Seconds between TCP keepalive probes.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub keepalive_interval: Duration,

    /// Unanswered keepalive probes before the connection is declared dead.
    #[arg(long, default_value_t = 3)]
    pub keepalive_count: u32,

    /// Seconds sent data may stay unacknowledged before the connection is declared dead
    /// (TCP_USER_TIMEOUT, Linux).
    #[arg(long, value_name = "SECONDS", default_value = "25", value_parser = parse_seconds)]
    pub user_timeout: Duration,

    /// Seconds a dead connection's locks stay unavailable before waiters get them
    /// (explicit unlocks never wait). 0 turns it off.
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = parse_lock_delay)]
    pub lock_delay: Duration,

    /// Shared secret clients must send in `hello` before any other command.
    #[arg(long, env = "LOCKD_AUTH_KEY", hide_env_values = true)]
    pub auth_key: Option<String>,

    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (error, warn, info, debug, trace, or a tracing directive); RUST_LOG
    /// overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    pub fn limits(&self) -> Limits {
        Limits {
            max_locks: self.max_locks,
            max_waiters: self.max_waiters,
            max_keys: self.max_keys,
            max_key_len: self.max_key_length,
            lock_delay: self.lock_delay,
        }
    }

    /// Whether a client at `ip` may connect.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// Chubby bounds its lock-delay at a minute; an hour is already more than any sane setup.
const MAX_LOCK_DELAY: Duration = Duration::from_secs(3600);

fn parse_lock_delay(s: &str) -> Result<Duration, String> {
    let delay = parse_seconds(s)?;
    if delay > MAX_LOCK_DELAY {
        return Err(format!("{s:?} is more than the limit of {} seconds", MAX_LOCK_DELAY.as_secs()));
    }
    Ok(delay)
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a usable number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_loopback_and_allow_only_loopback() {
        let c = Config::parse_from(["lockd"]);
        assert_eq!(c.listen, ["127.0.0.1:11300".parse().unwrap()]);
        assert!(c.allows("127.0.0.1".parse().unwrap()));
        assert!(c.allows("::1".parse().unwrap()));
        assert!(c.allows("::ffff:127.0.0.1".parse().unwrap()), "v4-mapped loopback");
        assert!(!c.allows("10.0.0.1".parse().unwrap()));
        assert!(c.keepalive_idle + c.keepalive_interval * c.keepalive_count <= Duration::from_secs(30));
        assert!(c.user_timeout <= Duration::from_secs(30));
    }

    #[test]
    fn seconds_accept_fractions_and_refuse_junk() {
        let c = Config::parse_from(["lockd", "--lock-delay", "1.5", "--allow", "10.0.0.0/8"]);
        assert_eq!(c.lock_delay, Duration::from_millis(1500));
        assert!(c.allows("10.1.2.3".parse().unwrap()));
        assert!(Config::try_parse_from(["lockd", "--lock-delay", "soon"]).is_err());
        assert!(Config::try_parse_from(["lockd", "--lock-delay", "-1"]).is_err());
        assert!(Config::try_parse_from(["lockd", "--lock-delay", "1e19"]).is_err());
    }
}
