//! This node's lease. `<prefix>/nodes/<N>` is attached to it: while the node keeps it
//! alive, its sessions live; when it lapses (the node died, or lost etcd for the TTL),
//! etcd deletes the key and every node releases the sessions the node served.
//!
//! The etcd client's keep-alive stream does not reconnect by itself, so this loop
//! reopens it. A node that could not renew its lease for most of the TTL closes its
//! clients' connections before etcd may expire it: no client goes on believing it holds
//! a lock that the cluster is about to release. They resume on another node.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use serde_json::json;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::log::{Entry, Keys, NodeNumber, Op};
use super::{etcd, ClusterError, Node, ETCD_TIMEOUT};

/// Takes a lease and announces the node under it; returns the lease and the revision of
/// the announcement.
pub async fn register(client: &mut Client, keys: &Keys, node: NodeNumber, name: &str, session_ttl: Duration) -> Result<(i64, i64), ClusterError> {
    let lease = etcd("granting a lease", client.lease_grant(lease_ttl(session_ttl).as_secs() as i64, None)).await?.id();
    let about = json!({ "name": name, "pid": std::process::id() }).to_string();
    let put = etcd("announcing the node", client.put(keys.node(node), about, Some(PutOptions::new().with_lease(lease)))).await?;
    let revision = put.header().map_or(0, |h| h.revision());
    Ok((lease, revision))
}

/// How often the lease is renewed: cheap for etcd (no Raft write), and the lease's TTL
/// is the sessions' plus this, so that a dead node's sessions live at least their TTL
/// (and at most this much longer) whenever it died since its last renewal.
fn renewal_period(session_ttl: Duration) -> Duration {
    (session_ttl / 3).min(Duration::from_secs(1))
}

/// The lease's TTL: whole seconds, as etcd takes them.
fn lease_ttl(session_ttl: Duration) -> Duration {
    Duration::from_secs((session_ttl + renewal_period(session_ttl)).as_secs_f64().ceil() as u64)
}

/// Renews the lease every [`renewal_period`], forever.
pub async fn keep_alive(node: Arc<Node>, mut client: Client, mut lease: i64) {
    let period = renewal_period(node.ttl);
    let lease_ttl = lease_ttl(node.ttl);
    // Connections close once the lease may have only this much left.
    let safety = lease_ttl / 4;
    let mut renewed_at = Instant::now();
    node.sessions.lease_sure_until((renewed_at + lease_ttl - safety).into_std());
    loop {
        // etcd counts the TTL from when it got the renewal, which is after this.
        let sent_at = Instant::now();
        // An attempt that hangs (etcd cut off) must not hold up closing the connections in
        // time: it is given up when that is due (once it is past, attempts get the usual
        // time).
        let close_at = renewed_at + lease_ttl - safety;
        let give_up_at = if close_at > sent_at { close_at } else { sent_at + ETCD_TIMEOUT };
        let attempt = match tokio::time::timeout_at(give_up_at, renew(&mut client, lease)).await {
            Ok(attempt) => attempt,
            Err(_) => Err(ClusterError::Timeout("renewing the lease")),
        };
        match attempt {
            Ok(true) => {
                renewed_at = sent_at;
                node.sessions.lease_sure_until((sent_at + lease_ttl - safety).into_std());
                if !node.lease_ok.swap(true, Ordering::Relaxed) {
                    info!("the node's lease is renewed again; taking requests");
                }
                for (session, epoch) in node.sessions.orphans(node.ttl) {
                    info!(session, "no connection resumed this session within its TTL; releasing its locks");
                    node.submit(Entry::by_node(session, epoch, Op::Close));
                }
                // The next renewal is due a period after this one was sent, not after its
                // answer came: etcd counted this one when it got it, so waiting for the
                // answer first would let a node that dies just before its next renewal
                // leave a lease with less than the sessions' TTL to run.
                tokio::time::sleep_until(sent_at + period).await;
                continue;
            }
            Ok(false) => {
                // Expired: every session of this node is gone. Start over under a new lease.
                error!(lease, "this node's lease expired; its sessions were released");
                node.lease_ok.store(false, Ordering::Relaxed);
                node.sessions.close_all_routes();
                match register(&mut client, &node.keys, node.me, &node.name, node.ttl).await {
                    Ok((new_lease, _)) => {
                        lease = new_lease;
                        renewed_at = Instant::now();
                        node.sessions.lease_sure_until((renewed_at + lease_ttl - safety).into_std());
                        continue;
                    }
                    Err(e) => warn!(error = %e, "cannot take a new lease yet"),
                }
            }
            Err(e) => warn!(error = %e, "cannot renew this node's lease"),
        }
        if renewed_at.elapsed() + safety >= lease_ttl && node.lease_ok.swap(false, Ordering::Relaxed) {
            error!("this node's lease may lapse: closing its clients' connections so they resume elsewhere");
            node.sessions.close_all_routes();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One renewal, on a fresh keep-alive stream: Ok(false) if the lease no longer exists.
/// etcd-client opens the stream with a renewal and waits for its answer, so that is the
/// renewal (a second one on the stream would only cost another round trip).
async fn renew(client: &mut Client, lease: i64) -> Result<bool, ClusterError> {
    match etcd("renewing the lease", client.lease_keep_alive(lease)).await {
        Ok(_) => Ok(true),
        // etcd-client turns etcd's answer for an expired lease (TTL 0) into this error,
        // as it does a failure to send: ask etcd whether the lease is still there.
        Err(ClusterError::Etcd(etcd_client::Error::LeaseKeepAliveError(why))) => {
            let left = etcd("reading the lease's TTL", client.lease_time_to_live(lease, None)).await?.ttl();
            if left > 0 {
                Err(ClusterError::Etcd(etcd_client::Error::LeaseKeepAliveError(why)))
            } else {
                Ok(false)
            }
        }
        Err(e) => Err(e),
    }
}
