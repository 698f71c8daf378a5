//! Every lockd setting, as clap arguments. `Config::parse_from(["lockd", ...])` gives
//! tests the same defaults the binary has.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;
use pklock_proto::auth::AuthKey;

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
data sent to it is unacknowledged, within 1.25 x --user-timeout (about 32 s); if it \
vanished while not reading (its receive window closed), once two of the kernel's window \
probes in a row went unanswered and no ACK came for --user-timeout (probes back off to 2 \
minutes apart: about 4 minutes at worst). Its locks are then released. A client that is \
alive but does not read its replies keeps its locks: lockd stops reading its requests.\n\n\
Every flag also reads LOCKD_<FLAG> from the environment (LOCKD_MAX_CLIENTS) and \
<flag> from the --config file; flags win over the environment, which wins over the file.\n\n\
SIGTERM or SIGINT: stop accepting, close every connection (releasing its locks), exit 0. \
SIGHUP: re-read the settings and apply --allow, --log-level and the TLS certificate and key \
without closing any connection."
)]
pub struct Config {
    /// TOML file of settings, keyed by these flags' long names (max-clients = 500);
    /// flags and LOCKD_* environment variables override it. Re-read on SIGHUP
    /// (docs/operations.md).
    #[arg(long, value_name = "FILE", env = "LOCKD_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// Print the effective settings as TOML (secrets redacted) and exit: 0 if they are
    /// valid, 1 with the reason if not.
    #[arg(long)]
    pub check_config: bool,

    /// Address to listen on; repeat for several (IPv6 as [::1]:11300).
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:11300")]
    pub listen: Vec<SocketAddr>,

    /// Client networks allowed to connect, in CIDR form; repeat for several. Others are
    /// closed at once and logged.
    #[arg(long = "allow", value_name = "CIDR", default_values = ["127.0.0.0/8", "::1/128"])]
    pub allow: Vec<IpNet>,

    /// Most clients connected at once, across all listeners; more are refused with
    /// `too_many_clients`. lockd raises its open-file limit to fit this (plus 64) or
    /// refuses to start.
    #[arg(long, default_value_t = 10_000)]
    pub max_clients: usize,

    /// Threads serving connections (default: one per CPU core). 1 spends the least CPU
    /// per request when one core is plenty (docs/operations.md, "Threads").
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Most locks held at once (a (key, owner) pair each), counting the new keys queued
    /// requests ask for.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_locks: usize,

    /// Most bytes the lock table may use (keys, holders, waiters; an estimate that
    /// tracks the real allocation closely). Requests past it get `memory_limit`. Accepts
    /// a plain number of bytes or a suffix: 512M, 4G.
    #[arg(long, value_name = "BYTES", default_value = "4G", value_parser = parse_bytes)]
    pub max_memory: usize,

    /// Steps one deadlock check may take (owners and edges of the wait-for graph it
    /// visits). A wait whose check needs more is refused with `deadlock_search_limit`
    /// instead of stalling every client while the server walks a huge graph.
    #[arg(long, value_name = "STEPS", default_value_t = 100_000)]
    pub deadlock_budget: usize,

    /// Most lock requests waiting at once.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_waiters: usize,

    /// Most lock requests waiting at once on one connection (a PHP process waits for one
    /// at a time). When a connection goes, its waits all end in one step under the table
    /// lock: this bounds that step (10 000 waits: about 10 ms).
    #[arg(long, default_value_t = 10_000)]
    pub max_waiters_per_connection: usize,

    /// Most keys in one lock request.
    #[arg(long, default_value_t = 1024)]
    pub max_keys: usize,

    /// Longest key, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub max_key_length: usize,

    /// Largest frame a client may send, in bytes; a larger one gets `frame_too_large`
    /// and the connection is closed. Before authentication the limit is 4096 bytes.
    #[arg(long, default_value_t = pklock_proto::DEFAULT_MAX_FRAME)]
    pub max_frame: usize,

    /// Bytes all connections together may hold of frames larger than 4096 bytes while
    /// those arrive. A connection whose frame does not fit waits, reading nothing more,
    /// until others' frames are complete or closed by --frame-timeout. At least
    /// --max-frame.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub frame_buffer_budget: usize,

    /// Seconds a client may take to finish sending a frame it started (not counting time
    /// lockd was not reading from it); then it is closed.
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

    /// Seconds sent data (or the kernel's window probes, twice in a row) may stay
    /// unacknowledged before the connection is declared dead; checked in TCP_INFO every
    /// eighth of this. A client that acknowledges but does not read is alive.
    #[arg(long, value_name = "SECONDS", default_value = "25", value_parser = parse_seconds)]
    pub user_timeout: Duration,

    /// Seconds a dead connection's locks stay unavailable before waiters get them
    /// (explicit unlocks never wait). 0 turns it off.
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = parse_lock_delay)]
    pub lock_delay: Duration,

    /// Directory for state kept across restarts: the ceiling below which every fencing
    /// token stays, so that tokens never go backwards even if the clock does. Without
    /// it, tokens start above the wall-clock time in microseconds (see docs/PROTOCOL.md).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,

    /// Shared secret clients must prove they know (challenge-response: it never travels)
    /// before any other command. On the command line it is visible to every local user
    /// in the process list: prefer --auth-key-file or the environment.
    #[arg(long = "auth-key", id = "auth_key", value_name = "KEY", env = "LOCKD_AUTH_KEY", hide_env_values = true, value_parser = parse_auth_key, conflicts_with = "auth_key_file")]
    pub auth_key_arg: Option<AuthKey>,

    /// File holding the shared secret (one trailing newline is ignored); keep it mode 0600.
    #[arg(long = "auth-key-file", id = "auth_key_file", value_name = "PATH", value_parser = read_auth_key_file)]
    pub auth_key_from_file: Option<AuthKey>,

    /// Listen on addresses other than loopback without an auth key (anyone who can reach
    /// the port may then take and release locks).
    #[arg(long)]
    pub insecure_no_auth: bool,

    /// Also speak eLock's line protocol on this address (its clients use port 11400);
    /// repeatable. Off by default.
    #[arg(long = "elock-listen", value_name = "ADDR")]
    pub elock_listen: Vec<SocketAddr>,

    /// Also speak MediaWiki's LockServerDaemon protocol on this address (LSLockManager's
    /// servers); repeatable. Needs --mediawiki-auth-key-file or --mediawiki-auth-key.
    #[arg(long = "mediawiki-listen", value_name = "ADDR")]
    pub mediawiki_listen: Vec<SocketAddr>,

    /// The key MediaWiki's clients sign their requests with ($wgLockManagers' authKey).
    /// Visible in the process list: prefer --mediawiki-auth-key-file.
    #[arg(long = "mediawiki-auth-key", id = "mediawiki_auth_key", value_name = "KEY", env = "LOCKD_MEDIAWIKI_AUTH_KEY", hide_env_values = true, value_parser = parse_auth_key, conflicts_with = "mediawiki_auth_key_file")]
    pub mediawiki_auth_key_arg: Option<AuthKey>,

    /// File holding the MediaWiki key (one trailing newline is ignored).
    #[arg(long = "mediawiki-auth-key-file", id = "mediawiki_auth_key_file", value_name = "PATH", value_parser = read_auth_key_file)]
    pub mediawiki_auth_key_from_file: Option<AuthKey>,

    /// Seconds a MediaWiki session's locks outlive its last connection; a request from
    /// the session within that time keeps them.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub mediawiki_lock_timeout: Duration,

    /// With an auth key: seconds a new connection has to authenticate before it is closed
    /// (freeing its --max-clients slot).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub auth_timeout: Duration,

    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,

    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,

    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics
    /// (docs/metrics-and-lockctl.md). Off by default. The allow-list does not apply: bind
    /// it to loopback or a network only the scraper reaches.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Client networks whose connections may use admin commands (`kick`, as `lockctl`
    /// sends); repeat for several. With an auth key they must have authenticated first,
    /// as for every command.
    #[arg(long = "admin-from", value_name = "CIDR", default_values = ["127.0.0.0/8", "::1/128"])]
    pub admin_from: Vec<IpNet>,

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
            max_memory: self.max_memory,
            max_waiters: self.max_waiters,
            max_waiters_per_connection: self.max_waiters_per_connection,
            deadlock_budget: self.deadlock_budget,
            max_keys: self.max_keys,
            max_key_len: self.max_key_length,
            lock_delay: self.lock_delay,
        }
    }

    /// The shared secret clients must prove they know, from whichever source gave it.
    pub fn auth_key(&self) -> Option<&AuthKey> {
        self.auth_key_arg.as_ref().or(self.auth_key_from_file.as_ref())
    }

    /// The key of MediaWiki's clients, from whichever source gave it.
    pub fn mediawiki_auth_key(&self) -> Option<&AuthKey> {
        self.mediawiki_auth_key_arg.as_ref().or(self.mediawiki_auth_key_from_file.as_ref())
    }

    /// Refuses a setup that would let anyone on the network use the server: a listener
    /// beyond loopback with no auth key, unless --insecure-no-auth says so on purpose.
    /// MediaWiki's protocol signs every request, so its listeners always need its key.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.cluster.enabled() {
            let unsupported = [
                (!self.lock_delay.is_zero(), "--lock-delay"),
                (self.state_dir.is_some(), "--state-dir (tokens come from etcd's revisions)"),
                (!self.elock_listen.is_empty(), "--elock-listen"),
                (!self.mediawiki_listen.is_empty(), "--mediawiki-listen"),
            ];
            if let Some((_, flag)) = unsupported.iter().find(|(set, _)| *set) {
                return Err(ConfigError::NotInCluster(flag));
            }
        }
        if !self.mediawiki_listen.is_empty() && self.mediawiki_auth_key().is_none() {
            return Err(ConfigError::MediaWikiWithoutKey);
        }
        let exposed: Vec<SocketAddr> = self.listen.iter().chain(&self.elock_listen).filter(|a| !a.ip().to_canonical().is_loopback()).copied().collect();
        if exposed.is_empty() || self.auth_key().is_some() || self.insecure_no_auth {
            return Ok(());
        }
        Err(ConfigError::ExposedWithoutAuth(exposed))
    }

    /// Whether a client at `ip` may connect.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        allowed(&self.allow, ip)
    }
}

/// Whether `ip` is in one of the `--allow` networks (IPv4-mapped IPv6 counts as IPv4).
pub fn allowed(networks: &[IpNet], ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    networks.iter().any(|net| net.contains(&ip))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "refusing to listen on {} without an auth key: anyone who can reach it could take and release locks. \
         Give --auth-key-file PATH (or LOCKD_AUTH_KEY), or --insecure-no-auth if the network is trusted",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    ExposedWithoutAuth(Vec<SocketAddr>),
    #[error("{0} cannot be used with --cluster (docs/CLUSTER.md)")]
    NotInCluster(&'static str),
    #[error("--mediawiki-listen needs the key MediaWiki signs its requests with: --mediawiki-auth-key-file PATH (or --mediawiki-auth-key)")]
    MediaWikiWithoutKey,
}

fn parse_auth_key(s: &str) -> Result<AuthKey, String> {
    AuthKey::new(s).map_err(|e| e.to_string())
}

/// Reads a key file as `--auth-key-file` does (lockctl reads its key the same way).
pub fn read_auth_key_file(path: &str) -> Result<AuthKey, String> {
    let mut key = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    // Editors and `echo` end the file with a newline that is not part of the key.
    if key.ends_with(b"\n") {
        key.pop();
        if key.ends_with(b"\r") {
            key.pop();
        }
    }
    AuthKey::new(key).map_err(|e| format!("{path}: {e}"))
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

/// Bytes as a number with an optional K, M or G suffix (powers of 1024).
fn parse_bytes(s: &str) -> Result<usize, String> {
    let (digits, unit) = match s.trim().char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s.trim()[..i], c.to_ascii_uppercase()),
        _ => (s.trim(), 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return Err(format!("{s:?}: the unit must be K, M or G")),
    };
    let n: usize = digits.parse().map_err(|_| format!("{s:?} is not a number of bytes"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

pub(crate) fn parse_seconds(s: &str) -> Result<Duration, String> {
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
        assert!(c.auth_timeout <= Duration::from_secs(10));
        assert!(c.frame_buffer_budget >= c.max_frame);
    }

    #[test]
    fn listening_beyond_loopback_needs_a_key_or_an_explicit_opt_out() {
        let check = |args: &[&str]| Config::parse_from(["lockd"].iter().chain(args)).check_exposure();
        assert!(check(&[]).is_ok());
        assert!(check(&["--listen", "[::1]:1", "--listen", "127.0.0.2:1"]).is_ok());
        let refused = check(&["--listen", "127.0.0.1:1", "--listen", "0.0.0.0:1"]).unwrap_err().to_string();
        assert!(refused.starts_with("refusing to listen on 0.0.0.0:1 without an auth key"), "{refused}");
        assert!(check(&["--listen", "0.0.0.0:1", "--auth-key", "k"]).is_ok());
        assert!(check(&["--listen", "0.0.0.0:1", "--insecure-no-auth"]).is_ok());
    }

    #[test]
    fn one_key_source_at_a_time_and_never_an_empty_key() {
        assert!(Config::try_parse_from(["lockd", "--auth-key", ""]).is_err());
        assert!(Config::try_parse_from(["lockd", "--auth-key", "a", "--auth-key-file", "/dev/null"]).is_err());
        let empty = Config::try_parse_from(["lockd", "--auth-key-file", "/dev/null"]).unwrap_err().to_string();
        assert!(empty.contains("/dev/null: the auth key is empty"), "{empty}");
        assert_eq!(Config::parse_from(["lockd", "--auth-key", "k"]).auth_key(), Some(&AuthKey::new("k").unwrap()));
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

    #[test]
    fn byte_sizes_take_suffixes() {
        assert_eq!(Config::parse_from(["lockd"]).max_memory, 4 << 30);
        assert_eq!(Config::parse_from(["lockd", "--max-memory", "512M"]).max_memory, 512 << 20);
        assert_eq!(Config::parse_from(["lockd", "--max-memory", "1000"]).max_memory, 1000);
        assert!(Config::try_parse_from(["lockd", "--max-memory", "12Q"]).is_err());
        assert!(Config::try_parse_from(["lockd", "--max-memory", "lots"]).is_err());
    }
}
