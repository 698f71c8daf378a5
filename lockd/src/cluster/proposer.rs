//! Writes this node's entries to the log: everything that arrived while the previous
//! write was in flight goes into the next one, one etcd transaction (one Raft entry,
//! one fsync) for many requests. One write at a time keeps each session's requests in
//! the order they came.
//!
//! A write that fails may still have committed. Each batch goes to a key of its own,
//! created only if absent; after a failure the node writes "aborted" to that key the
//! same way once etcd answers again: whichever of the two landed decides. If the batch
//! landed, its replies come as usual when it is applied; if not, its requests are
//! answered `unavailable` and can never take effect later.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use pklock_proto::{ErrorBody, ErrorCode};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use super::log::{Entry, Op, ABORTED};
use super::{etcd, Node};
use crate::mutation::Mutation;
use crate::reply::encode_error;

/// Entries in one transaction at most, and bytes: a batch grows while it stays below
/// MAX_BATCH_BYTES; one entry of up to MAX_ENTRY_BYTES goes alone. Both stay below etcd's
/// default request limit (--max-request-bytes, 1.5 MiB), with room for the batch's key
/// and the transaction around it.
const MAX_BATCH: usize = 256;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// The largest entry a node writes: a client's request whose entry would be larger is
/// refused before it is written (its frame may be smaller: JSON numbers such as `1e15`
/// in an id come out longer than the client wrote them), since etcd would refuse the
/// whole batch that carried it.
pub const MAX_ENTRY_BYTES: usize = 1_310_720;

#[derive(Debug)]
pub struct Proposal {
    pub entry: Entry,
    /// `entry` as the log holds it.
    pub json: Vec<u8>,
    /// Told the revision the entry got in the log (0 if that is not known), or `None` if
    /// it did not make it.
    pub done: Option<oneshot::Sender<Option<i64>>>,
}

impl Proposal {
    pub fn new(entry: Entry, done: Option<oneshot::Sender<Option<i64>>>) -> Self {
        let json = serde_json::to_vec(&entry).expect("entries serialize");
        Proposal { entry, json, done }
    }
}

pub async fn run(node: Arc<Node>, mut client: Client, mut queue: mpsc::UnboundedReceiver<Proposal>) {
    let mut next_batch = 0u64;
    // An entry that did not fit the last batch: it starts the next one, so order holds.
    let mut carried: Option<Proposal> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(proposal) => proposal,
                None => return,
            },
        };
        let mut value = b"[".to_vec();
        value.extend_from_slice(&first.json);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(proposal) = queue.try_recv() else { break };
            if value.len() + proposal.json.len() > MAX_BATCH_BYTES {
                carried = Some(proposal);
                break;
            }
            value.push(b',');
            value.extend_from_slice(&proposal.json);
            batch.push(proposal);
        }
        value.push(b']');
        let key = node.keys.batch(node.me, next_batch);
        next_batch += 1;
        let revision = match write_once(&mut client, &key, value).await {
            Ok(Some(revision)) => Some(revision),
            // The key exists: a batch number was reused, which cannot happen within one run.
            Ok(None) => None,
            Err(e) => {
                error!(error = %e, "writing to the cluster log failed; this node is unavailable until etcd answers");
                node.log_ok.store(false, Ordering::Relaxed);
                settle(&mut client, &key).await.then_some(0)
            }
        };
        let landed = revision.is_some();
        if !node.log_ok.swap(true, Ordering::Relaxed) {
            info!("etcd takes this node's writes again");
        }
        // Sessions this batch would have opened: they do not exist in the cluster, so every
        // later request of theirs would be refused as expired. Their connections end once
        // the replies below are out, and their clients start new sessions.
        let mut never_opened = Vec::new();
        for proposal in batch {
            if !landed && matches!(proposal.entry.op, Op::Open { .. }) {
                never_opened.push(proposal.entry.session);
            }
            // Nobody would ask again for these: a closed connection's release and a wait's
            // end must land eventually, or the locks stay held for as long as this node lives.
            if !landed && matches!(proposal.entry.op, Op::Close | Op::Mutate(Mutation::TimeOut { .. })) {
                let _ = node.proposals.send(proposal);
                continue;
            }
            let from_client = proposal.entry.seq != 0 || proposal.entry.id.is_some();
            if !landed && from_client {
                let mut out = Vec::new();
                let err = ErrorBody::new(ErrorCode::Unavailable, "etcd did not take this request; it was not applied (try again, or another node)");
                encode_error(&mut out, &proposal.entry.reply_id(), &err);
                node.sessions.send_local(proposal.entry.session, &out);
            }
            if let Some(done) = proposal.done {
                let _ = done.send(revision);
            }
        }
        for session in never_opened {
            node.sessions.close_route(session);
        }
    }
}

/// Writes `value` to `key` if the key is new: the revision it got, or `None` if the key
/// existed (the batch's first attempt landed after all).
async fn write_once(client: &mut Client, key: &str, value: Vec<u8>) -> Result<Option<i64>, super::ClusterError> {
    let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(key, value, None)]);
    let response = etcd("writing a batch", client.txn(txn)).await?;
    Ok(response.succeeded().then(|| response.header().map_or(0, |h| h.revision())))
}

/// After a failed write: keeps trying to write "aborted" to the batch's key; whether
/// that found the key already there says whether the batch landed.
async fn settle(client: &mut Client, key: &str) -> bool {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(aborted) = write_once(client, key, ABORTED.to_vec()).await {
            return aborted.is_none();
        }
    }
}
