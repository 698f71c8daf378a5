//! The server: binds the listeners, admits clients (allow-list, client limit, socket
//! options that find vanished hosts), runs the reaper that ends waits whose time ran
//! out, and shuts down cleanly when told to.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pklock_proto::{ErrorBody, ErrorCode};
use serde_json::Value;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::connection;
use crate::state::{encode_error, Shared};

/// How long shutdown waits for connections to finish releasing their locks.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Server {
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds every `--listen` address.
    pub async fn bind(config: Config) -> io::Result<Server> {
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            listeners.push(listener);
        }
        Ok(Server { listeners, shared: Arc::new(Shared::new(config)) })
    }

    /// The bound addresses (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` is cancelled, then closes every connection (releasing
    /// their locks) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        for addr in self.local_addrs() {
            info!(%addr, "listening");
        }
        tracker.spawn(reap_deadlines(self.shared.clone(), shutdown.clone()));
        for listener in self.listeners {
            tracker.spawn(accept_loop(listener, self.shared.clone(), tracker.clone(), shutdown.clone()));
        }
        shutdown.cancelled().await;
        info!("shutting down: closing connections");
        tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await.is_err() {
            warn!("some connections did not close within {DRAIN_TIMEOUT:?}");
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tracker: TaskTracker, shutdown: CancellationToken) {
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
        if !shared.config.allows(peer.ip()) {
            warn!(%peer, "refused: address not in --allow");
            continue;
        }
        if shared.connections() >= shared.config.max_clients {
            warn!(%peer, limit = shared.config.max_clients, "refused: too many clients");
            tracker.spawn(refuse(stream, shared.config.max_clients));
            continue;
        }
        if let Err(e) = configure(&stream, &shared.config) {
            warn!(%peer, error = %e, "could not set socket options");
        }
        // Registered here, before the next accept, so a burst cannot overshoot the limit.
        let conn = shared.connect(peer);
        tracker.spawn(connection::serve(shared.clone(), conn, stream, peer, shutdown.clone()));
    }
}

/// Tells a client over the limit why it is being closed.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let mut out = Vec::new();
    let err = ErrorBody::new(ErrorCode::TooManyClients, format!("the server is at its limit of {limit} clients"));
    encode_error(&mut out, &Value::Null, &err);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
}

/// No Nagle delay (every reply is latency-bound), and dead peers found within the
/// keepalive / user-timeout bound.
fn configure(stream: &TcpStream, config: &Config) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = SockRef::from(stream);
    let keepalive = TcpKeepalive::new()
        .with_time(config.keepalive_idle)
        .with_interval(config.keepalive_interval)
        .with_retries(config.keepalive_count);
    sock.set_tcp_keepalive(&keepalive)?;
    #[cfg(target_os = "linux")]
    sock.set_tcp_user_timeout(Some(config.user_timeout))?;
    Ok(())
}

/// Ends waits whose time ran out and lock-delays that are over, as they come due.
async fn reap_deadlines(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let next = shared.table().next_deadline();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.deadline_added.notified() => {}
            _ = sleep_until_or_forever(next) => {}
        }
        let mut woken = Vec::new();
        shared.table().expire(std::time::Instant::now(), &mut woken);
        shared.deliver(woken);
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
    async fn accepted_sockets_get_nodelay_keepalive_and_user_timeout() {
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
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(Duration::from_secs(9)));
        drop(client);
    }
}
