//! The server: fits the open-file limit to the client limit, binds the listeners, admits
//! clients (allow-list and TLS certificate, both replaceable while running; one client
//! limit across every listener; socket options that find vanished idle hosts), runs the
//! reaper that ends waits whose time ran out, serves metrics when asked to, and shuts
//! down cleanly when told to.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use parking_lot::RwLock;

use pklock_proto::{ErrorBody, ErrorCode};
use serde_json::Value;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::codec::FrameBudget;
use crate::compat::{elock, mediawiki, Protocol};
use crate::config::{allowed, Config, ConfigError};
use crate::connection;
use crate::reply::encode_error;
use crate::state::State;
use crate::telemetry::{self, Telemetry};
use crate::tls::{self, TlsSetupError};
use crate::tokens::TokenStoreError;

/// How long shutdown waits for connections to finish releasing their locks.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Open files lockd needs besides one per client and one per listener: stdio, the
/// runtime's epoll and wakers, the socket of a client being refused.
const SPARE_FILES: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("--frame-buffer-budget ({budget} bytes) is below --max-frame ({max_frame} bytes): a frame that large could never be read")]
    BudgetBelowMaxFrame { budget: usize, max_frame: usize },
    #[error(
        "--max-clients {max_clients} needs {needed} open files, but the hard limit (RLIMIT_NOFILE) is {hard}: \
         lower --max-clients or raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)"
    )]
    OpenFileLimit { max_clients: usize, needed: u64, hard: u64 },
    #[error("cannot read or raise the open-file limit: {0}")]
    Rlimit(io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] TokenStoreError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("cannot start the metrics exporter: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Raises this process's open-file soft limit to fit `--max-clients` (up to the hard
/// limit), so that a client over the limit is told `too_many_clients` instead of
/// waiting unanswered in the backlog while accept fails. Returns the limit now in force.
pub fn fit_open_file_limit(config: &Config) -> Result<u64, StartError> {
    let listeners = config.listen.len() + config.elock_listen.len() + config.mediawiki_listen.len() + usize::from(config.metrics_listen.is_some());
    let needed = (config.max_clients as u64).saturating_add(listeners as u64 + SPARE_FILES);
    let (soft, hard) = rlimit::Resource::NOFILE.get().map_err(StartError::Rlimit)?;
    if soft >= needed {
        return Ok(soft);
    }
    if hard < needed {
        return Err(StartError::OpenFileLimit { max_clients: config.max_clients, needed, hard });
    }
    rlimit::Resource::NOFILE.set(needed, hard).map_err(StartError::Rlimit)?;
    Ok(needed)
}

/// Refuses settings lockd cannot start with; gives the TLS acceptor when TLS is on.
pub fn validate(config: &Config) -> Result<Option<TlsAcceptor>, StartError> {
    config.check_exposure()?;
    let tls = config.tls.acceptor()?;
    if config.frame_buffer_budget < config.max_frame {
        return Err(StartError::BudgetBelowMaxFrame { budget: config.frame_buffer_budget, max_frame: config.max_frame });
    }
    Ok(tls)
}

/// The settings that change while lockd runs (SIGHUP), read at every accept: new
/// connections see the new values, open ones keep going.
pub struct Reloadable {
    allow: RwLock<Vec<IpNet>>,
    /// With `--tls-cert`/`--tls-key`, every native listener speaks TLS.
    tls: RwLock<Option<TlsAcceptor>>,
}

impl Reloadable {
    pub fn set_allow(&self, networks: Vec<IpNet>) {
        *self.allow.write() = networks;
    }

    /// Replaces the certificate and key of a server that speaks TLS; a server started
    /// without TLS keeps speaking plain (its clients expect it).
    pub fn set_tls(&self, acceptor: TlsAcceptor) -> bool {
        let mut tls = self.tls.write();
        let on = tls.is_some();
        if on {
            *tls = Some(acceptor);
        }
        on
    }

    fn allows(&self, ip: std::net::IpAddr) -> bool {
        allowed(&self.allow.read(), ip)
    }

    fn tls(&self) -> Option<TlsAcceptor> {
        self.tls.read().clone()
    }
}

pub struct Server {
    listeners: Vec<(TcpListener, Protocol)>,
    shared: Arc<State>,
    reloadable: Arc<Reloadable>,
    /// `--metrics-listen`.
    metrics: Option<TcpListener>,
}

impl Server {
    /// Binds every listening address: `--listen`, then `--elock-listen`, then
    /// `--mediawiki-listen`; and `--metrics-listen`, installing the metrics recorder
    /// (process-wide: one such server per process).
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let tls = validate(&config)?;
        let reloadable = Arc::new(Reloadable { allow: RwLock::new(config.allow.clone()), tls: RwLock::new(tls) });
        let addrs = (config.listen.iter().map(|&a| (a, Protocol::Native)))
            .chain(config.elock_listen.iter().map(|&a| (a, Protocol::ELock)))
            .chain(config.mediawiki_listen.iter().map(|&a| (a, Protocol::MediaWiki)));
        let mut listeners = Vec::new();
        for (addr, protocol) in addrs {
            let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source })?;
            listeners.push((listener, protocol));
        }
        let metrics = match config.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source })?),
            None => None,
        };
        let shared = Arc::new(State::new(config)?);
        if metrics.is_some() {
            shared.enable_telemetry(Telemetry::install()?);
        }
        if shared.config.cluster.enabled() {
            let node = crate::cluster::Node::join(&shared.config.cluster, shared.config.limits(), shared.clone()).await?;
            shared.join_cluster(node);
        }
        Ok(Server { listeners, shared, reloadable, metrics })
    }

    /// Where SIGHUP puts the settings that change without a restart.
    pub fn reloadable(&self) -> Arc<Reloadable> {
        self.reloadable.clone()
    }

    /// The bound addresses (useful with port 0), in the order [`bind`](Self::bind) binds them.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|(l, _)| l.local_addr().ok()).collect()
    }

    /// Where metrics are served (`--metrics-listen`), as bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn shared(&self) -> Arc<State> {
        self.shared.clone()
    }

    /// Serves until `shutdown` is cancelled, then closes every connection (releasing
    /// their locks) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        for addr in self.local_addrs() {
            info!(%addr, "listening");
        }
        // Connections close only after the table stopped granting: closing a holder's
        // connection first would hand its lock to a waiter that is about to lose it too.
        let closing = CancellationToken::new();
        tracker.spawn(reap_deadlines(self.shared.clone(), closing.clone()));
        if let Some(listener) = self.metrics {
            tracker.spawn(telemetry::serve(listener, self.shared.clone(), closing.clone()));
        }
        let admission = Admission {
            // One semaphore for every listener keeps the limit exact.
            clients: Arc::new(Semaphore::new(self.shared.config.max_clients.min(Semaphore::MAX_PERMITS))),
            budget: FrameBudget::new(self.shared.config.frame_buffer_budget),
            elock_sessions: Arc::default(),
            mediawiki_sessions: Arc::default(),
        };
        for (listener, protocol) in self.listeners {
            tracker.spawn(accept_loop(listener, protocol, self.reloadable.clone(), self.shared.clone(), admission.clone(), tracker.clone(), closing.clone()));
        }
        shutdown.cancelled().await;
        if self.shared.cluster().is_some() {
            // The table is the cluster's: this node only leaves. Its sessions outlive it by
            // their TTL, for their clients to resume on another node.
            info!("shutting down: closing connections; their sessions can resume on another node");
        } else {
            info!("shutting down: granting no more locks, answering waiters with shutting_down");
            self.shared.shut_down();
        }
        info!("shutting down: closing connections");
        closing.cancel();
        tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await.is_err() {
            warn!("some connections did not close within {DRAIN_TIMEOUT:?}");
        }
    }
}

/// What every listener shares to admit clients.
#[derive(Clone)]
struct Admission {
    /// One permit per client, `--max-clients` in all.
    clients: Arc<Semaphore>,
    budget: FrameBudget,
    /// The sessions of the compatibility protocols, which outlive their connections.
    elock_sessions: Arc<elock::Sessions>,
    mediawiki_sessions: Arc<mediawiki::Sessions>,
}

async fn accept_loop(
    listener: TcpListener,
    protocol: Protocol,
    reloadable: Arc<Reloadable>,
    shared: Arc<State>,
    admission: Admission,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !reloadable.allows(peer.ip()) {
            warn!(%peer, "refused: address not in --allow");
            telemetry::count_refused("not_allowed");
            continue;
        }
        let tls = reloadable.tls().filter(|_| protocol == Protocol::Native);
        let Ok(permit) = admission.clients.clone().try_acquire_owned() else {
            warn!(%peer, limit = shared.config.max_clients, "refused: too many clients");
            telemetry::count_refused("too_many_clients");
            // A TLS client could not read the plain error frame: it is only closed.
            if tls.is_none() {
                refuse(&stream, shared.config.max_clients);
            }
            continue;
        };
        if let Err(e) = configure(&stream, &shared.config) {
            warn!(%peer, error = %e, "could not set socket options");
        }
        let shared = shared.clone();
        match protocol {
            Protocol::Native => {
                // Registered here, before the next accept, so that its id exists from the start.
                let conn = shared.connect(peer);
                let budget = admission.budget.clone();
                match &tls {
                    None => {
                        let fd = stream.as_raw_fd();
                        tracker.spawn(connection::serve(shared, conn, permit, stream.into(), fd, peer, budget, shutdown.clone()))
                    }
                    Some(tls) => tracker.spawn(tls::serve(tls.clone(), shared, conn, permit, stream, peer, budget, shutdown.clone())),
                };
            }
            Protocol::ELock => {
                tracker.spawn(elock::serve(shared, admission.elock_sessions.clone(), permit, stream, peer, shutdown.clone()));
            }
            Protocol::MediaWiki => {
                tracker.spawn(mediawiki::serve(shared, admission.mediawiki_sessions.clone(), permit, stream, peer, shutdown.clone()));
            }
        }
    }
}

/// Tells a client over the limit why it is being closed. A new socket's buffer always
/// takes this one small frame, so it is written at once and the socket closed.
fn refuse(stream: &TcpStream, limit: usize) {
    let mut out = Vec::new();
    let err = ErrorBody::new(ErrorCode::TooManyClients, format!("the server is at its limit of {limit} clients"));
    encode_error(&mut out, &Value::Null, &err);
    let _ = SockRef::from(stream).send(&out);
}

/// No Nagle delay (every reply is latency-bound), and idle dead peers found within the
/// keepalive bound. No TCP_USER_TIMEOUT: it would also end live clients that do not read
/// (see [`crate::liveness`], which covers connections with data outstanding).
fn configure(stream: &TcpStream, config: &Config) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(config.keepalive_idle)
        .with_interval(config.keepalive_interval)
        .with_retries(config.keepalive_count);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Ends waits whose time ran out and lock-delays that are over, as they come due.
async fn reap_deadlines(shared: Arc<State>, shutdown: CancellationToken) {
    let mut next = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.deadline_moved() => {}
            _ = sleep_until_or_forever(next) => {}
        }
        next = shared.expire_due();
    }
}

async fn sleep_until_or_forever(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[tokio::test]
    async fn accepted_sockets_get_nodelay_and_keepalive_but_no_user_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        let config = Config::parse_from(["lockd", "--keepalive-idle", "7", "--keepalive-interval", "2", "--keepalive-count", "4", "--user-timeout", "9"]);
        configure(&server_side, &config).unwrap();
        let sock = SockRef::from(&server_side);
        assert!(server_side.nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(sock.keepalive_interval().unwrap(), Duration::from_secs(2));
        assert_eq!(sock.keepalive_retries().unwrap(), 4);
        #[cfg(target_os = "linux")]
        assert_eq!(sock.tcp_user_timeout().unwrap(), None, "a zero window must not end a live client");
        drop(client);
    }
}
